//! A TCP proxy in front of a real service. `cut` drops every open connection and refuses
//! new ones (the service looks down to the app); `restore` lets traffic through again;
//! `freeze` silences the open connections without closing them (a failover that kept the TCP
//! connection), while new ones pass; `stall` silences the open ones and takes new ones without
//! ever answering (a service that hangs), until `cut` or `restore`.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

pub struct ChaosProxy {
    pub addr: String,
    down: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    /// Bumped on every cut: connection tasks of an older generation close themselves.
    generation: watch::Sender<u64>,
    /// Bumped on every freeze: connection tasks of an older one stop forwarding.
    frozen: watch::Sender<u64>,
}

impl ChaosProxy {
    pub async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let down = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let (frozen, _) = watch::channel(0u64);
        let proxy = Self { addr, down: down.clone(), stalled: stalled.clone(), generation: generation.clone(), frozen: frozen.clone() };
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if down.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                if stalled.load(Ordering::SeqCst) {
                    // Held open, never answered, until the proxy is restored or cut.
                    let (stalled, gen_rx) = (stalled.clone(), generation.subscribe());
                    tokio::spawn(async move {
                        let born = *gen_rx.borrow();
                        while stalled.load(Ordering::SeqCst) && *gen_rx.borrow() == born {
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                        drop(inbound);
                    });
                    continue;
                }
                let target = target.clone();
                let mut gen_rx = generation.subscribe();
                let born = *gen_rx.borrow();
                let mut frozen_rx = frozen.subscribe();
                let thawed = *frozen_rx.borrow();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = async { let _ = gen_rx.wait_for(|g| *g != born).await; } => {}
                        () = async { let _ = frozen_rx.wait_for(|f| *f != thawed).await; } => {
                            // Both sockets stay open and nothing passes, until a cut.
                            let _ = gen_rx.wait_for(|g| *g != born).await.map(drop);
                        }
                    }
                });
            }
        });
        proxy
    }

    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn freeze(&self) {
        self.frozen.send_modify(|f| *f += 1);
    }

    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
        self.freeze();
    }

    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
        self.stalled.store(false, Ordering::SeqCst);
    }
}
