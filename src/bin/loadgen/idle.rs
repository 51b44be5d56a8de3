//! The `idle` driver: opens authenticated SignalR connections (JSON, skipNegotiation) at a
//! fixed rate, completes the handshake and keeps them open, reading and discarding the server's
//! keep-alive pings. Counts handshake failures. One process stays under the ~20,000 open-file
//! limit; run several for more connections.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

use crate::hub::connect;

#[derive(clap::Args)]
pub struct Args {
    /// Hub URL, e.g. ws://127.0.0.1:8080/hubs/order-status
    #[arg(long)]
    url: String,
    #[arg(long, env = "CONTOSO_JWT_SECRET")]
    jwt_secret: String,
    /// Connections this process opens
    #[arg(long, default_value_t = 1000)]
    connections: u64,
    /// New connections per second
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds to hold the connections once all are open
    #[arg(long, default_value_t = 30)]
    hold: u64,
    /// Tabs per user (connections share a user id in groups of this size)
    #[arg(long, default_value_t = 2)]
    tabs: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let key = EncodingKey::from_secret(args.jwt_secret.as_bytes());
    let exp = chrono::Utc::now().timestamp() + 7200;
    let open = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let pid = std::process::id();
    for i in 0..args.connections {
        tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
        let token = encode(&Header::default(), &json!({ "sub": format!("idle-{pid}-{}", i / args.tabs.max(1)), "exp": exp }), &key)?;
        let (url, open, failed, closed) = (args.url.clone(), open.clone(), failed.clone(), closed.clone());
        tokio::spawn(async move {
            match connect(&url, &token).await {
                Ok(mut ws) => {
                    open.fetch_add(1, Ordering::Relaxed);
                    while let Some(Ok(_)) = ws.next().await {}
                    closed.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("handshake failed: {err}");
                    }
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while open.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < args.connections && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{{\"event\":\"ramped\",\"open\":{},\"failed\":{},\"seconds\":{:.2}}}",
        open.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    println!(
        "{{\"event\":\"done\",\"open\":{},\"failed\":{},\"closed_by_server\":{}}}",
        open.load(Ordering::Relaxed) - closed.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        closed.load(Ordering::Relaxed)
    );
    Ok(())
}
