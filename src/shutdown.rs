//! Process lifecycle: one cancellation token and task tracker for background work, and the
//! draining flag that readiness reads. Shutdown order (see `App::run_until_stopped`):
//! 1. draining: readiness fails at once; 2. HTTP stops accepting and finishes in-flight requests;
//! 3. background loops are cancelled and settle their work; 4. wait for them; 5. close the broker
//!    connection they used. All bounded by the shutdown timeout.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

#[derive(Clone)]
pub struct Shutdown {
    /// Cancelled when background loops must stop taking new work.
    pub token: CancellationToken,
    /// Every background task is spawned here so shutdown can wait for it.
    pub tasks: TaskTracker,
    /// Cancelled last, after `tasks` finished: connections to the outside world (the broker)
    /// stay open while the background loops settle their last work through them.
    pub connections: CancellationToken,
    /// The tasks that own those connections.
    pub connection_tasks: TaskTracker,
    draining: Arc<AtomicBool>,
    drain_file: Arc<PathBuf>,
}

impl Shutdown {
    pub fn new(drain_file: PathBuf) -> Self {
        Self {
            token: CancellationToken::new(),
            tasks: TaskTracker::new(),
            connections: CancellationToken::new(),
            connection_tasks: TaskTracker::new(),
            draining: Arc::new(AtomicBool::new(false)),
            drain_file: Arc::new(drain_file),
        }
    }

    /// Marks the process as draining (SIGTERM): readiness fails from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Draining because of a signal or because the drain file exists (the chart's preStop creates it).
    /// Checked on every readiness probe, so the file takes effect at the next probe.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst) || self.drain_file.exists()
    }

    pub fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(fut);
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("can install a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("can install a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, draining"),
        _ = int.recv() => tracing::info!("SIGINT received, draining"),
    }
}
