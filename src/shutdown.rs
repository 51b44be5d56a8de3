//! Process lifecycle: the draining flag readiness reads, and the cancellation tokens and task
//! trackers of each shutdown phase, run in this order by `App::run_until_stopped` and all
//! bounded by the shutdown timeout:
//! 1. draining: readiness fails at once, the hub refuses new connections;
//! 2. `intake`: consumers stop taking deliveries and settle the ones in flight;
//! 3. the drain hooks run (the hub closes its connections gradually) while HTTP still answers
//!    (503 from readiness and the hub), then HTTP stops accepting and finishes in-flight requests;
//! 4. `token`: the remaining background loops finish (the outbox relay's last drain);
//! 5. `connections`: the broker and the backplane close last.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use futures_util::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// A drain hook: given the shutdown deadline, winds its part down before it.
pub type DrainHook = Box<dyn FnOnce(Instant) -> BoxFuture<'static, ()> + Send>;

#[derive(Clone)]
pub struct Shutdown {
    /// Cancelled first: consumers stop taking deliveries.
    pub intake: CancellationToken,
    /// The consume loops, awaited before anything else stops.
    pub intake_tasks: TaskTracker,
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
    hooks: Arc<Mutex<Vec<DrainHook>>>,
}

impl Shutdown {
    pub fn new(drain_file: PathBuf) -> Self {
        Self {
            intake: CancellationToken::new(),
            intake_tasks: TaskTracker::new(),
            token: CancellationToken::new(),
            tasks: TaskTracker::new(),
            connections: CancellationToken::new(),
            connection_tasks: TaskTracker::new(),
            draining: Arc::new(AtomicBool::new(false)),
            drain_file: Arc::new(drain_file),
            hooks: Arc::default(),
        }
    }

    /// Registers work to run in phase 3, alongside the HTTP server's graceful stop.
    pub fn on_drain(&self, hook: DrainHook) {
        self.hooks.lock().expect("lock").push(hook);
    }

    pub(crate) fn take_drain_hooks(&self) -> Vec<DrainHook> {
        std::mem::take(&mut *self.hooks.lock().expect("lock"))
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
