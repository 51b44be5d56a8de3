//! The `idle` driver: opens authenticated SignalR connections at a fixed rate, completes the
//! handshake and keeps them open, reading and discarding the server's keep-alive pings. Counts
//! handshake failures. One process stays under the ~20,000 open-file limit: `--workers N`
//! shards the connections over N copies of this tool and adds up what they report.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::shop::Minter;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::hub::{ClientArgs, Tab, connect_bare, connect_with};

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
    /// Worker processes to shard the connections over
    #[arg(long, default_value_t = 1)]
    workers: u64,
    /// The URL is a bare relay (`contoso-loadgen relay`): no token, no handshake (the floor)
    #[arg(long)]
    bare: bool,
    /// Index of the first connection (set by the parent for each worker)
    #[arg(long, default_value_t = 0, hide = true)]
    first: u64,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.workers > 1 {
        return shard(args).await;
    }
    let minter = Minter::new(&args.jwt_secret);
    let open = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    for i in 0..args.connections {
        tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
        let n = args.first + i;
        let user = format!("idle-{run_id}-{}", n / args.tabs.max(1));
        let token = minter.token(&user)?;
        let (url, open, failed, closed, client) = (args.url.clone(), open.clone(), failed.clone(), closed.clone(), args.client.clone());
        let bare = args.bare;
        tokio::spawn(async move {
            let ws = if bare {
                connect_bare(&url, &user, &client, n as usize).await
            } else {
                connect_with(&url, &token, &client, n as usize).await
            };
            match ws {
                Ok(ws) => {
                    open.fetch_add(1, Ordering::Relaxed);
                    let mut tab = Tab::new(ws, &client.protocol);
                    while let Some(Ok(_)) = tab.next().await {}
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
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"event\":\"ramped\",\"open\":{},\"failed\":{},\"seconds\":{seconds:.2},\"connects_per_s\":{:.0}}}",
        open.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        open.load(Ordering::Relaxed) as f64 / seconds.max(0.001)
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

/// Runs `workers` copies of this driver, each with its share of the connections, and prints
/// the sums of their `ramped` and `done` reports once every worker has sent its own.
async fn shard(args: Args) -> anyhow::Result<()> {
    let per = args.connections.div_ceil(args.workers);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let mut children = Vec::new();
    for w in 0..args.workers {
        let count = per.min(args.connections.saturating_sub(w * per));
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.args(["idle", "--url", &args.url, "--workers", "1"])
            .args(["--connections", &count.to_string(), "--first", &(w * per).to_string()])
            .args(["--rate", &(args.rate / args.workers).max(1).to_string(), "--hold", &args.hold.to_string()])
            .args(["--tabs", &args.tabs.to_string(), "--protocol", &args.client.protocol])
            // The secret goes through the environment, not the command line other users can read.
            .env("CONTOSO_JWT_SECRET", &args.jwt_secret)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        if args.client.negotiate {
            cmd.arg("--negotiate");
        }
        if args.bare {
            cmd.arg("--bare");
        }
        if !args.client.source_ips.is_empty() {
            cmd.arg("--source-ips").arg(args.client.source_ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(","));
        }
        let mut child = cmd.spawn()?;
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(event) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(event);
                }
            }
        });
        children.push(child);
    }
    drop(tx);
    let mut reports: std::collections::HashMap<String, Vec<Value>> = Default::default();
    while let Some(event) = rx.recv().await {
        let kind = event["event"].as_str().unwrap_or_default().to_owned();
        let group = reports.entry(kind.clone()).or_default();
        group.push(event);
        if group.len() as u64 == args.workers {
            let sum = |field: &str| group.iter().filter_map(|e| e[field].as_u64()).sum::<u64>();
            let mut total = json!({ "event": kind, "open": sum("open"), "failed": sum("failed"), "workers": args.workers });
            if kind == "ramped" {
                // The workers ramp side by side: their rates add up.
                total["connects_per_s"] = group.iter().filter_map(|e| e["connects_per_s"].as_f64()).sum::<f64>().round().into();
            }
            if kind == "done" {
                total["closed_by_server"] = sum("closed_by_server").into();
            }
            println!("{total}");
        }
    }
    for mut child in children {
        child.wait().await?;
    }
    Ok(())
}
