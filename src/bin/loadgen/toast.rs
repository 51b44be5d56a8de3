//! The `toast` scenario: the whole pipeline as a shopper sees it. One tab per user on the notify
//! processes; orders POSTed at fixed open-loop rates; latency from each order's scheduled POST to
//! its `OrderCompleted` on the user's tab (accept, outbox, RabbitMQ, process, outbox, RabbitMQ,
//! notify, Redis backplane, WebSocket). Orders without a toast are reported as lost.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::shop::{Minter, place_mug_order};
use serde::Serialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    hub::{Tab, connect},
    report::{Latency, histogram},
};

#[derive(clap::Args)]
pub struct Args {
    /// Base URL of an accept process
    #[arg(long)]
    accept_url: String,
    /// Comma list of hub URLs; tabs are spread over them
    #[arg(long, value_delimiter = ',')]
    hub_urls: Vec<String>,
    #[arg(long, env = "CONTOSO_JWT_SECRET")]
    jwt_secret: String,
    #[arg(long, default_value_t = 500)]
    users: usize,
    /// Comma list of order rates (orders/s), one step each
    #[arg(long, value_delimiter = ',', default_value = "100,300")]
    rates: Vec<f64>,
    /// Seconds per step
    #[arg(long, default_value_t = 15)]
    duration: u64,
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Serialize)]
struct StepResult {
    scenario: &'static str,
    offered_orders_per_s: f64,
    accepted: usize,
    refused: usize,
    toasts: usize,
    lost: usize,
    latency: Latency,
}

fn toasted_ids(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split('\u{1e}').filter_map(|record| {
        let v: Value = serde_json::from_str(record).ok()?;
        (v["type"] == 1 && (v["target"] == "OrderCompleted" || v["target"] == "OrderFailed"))
            .then(|| v["arguments"][0]["correlationId"].as_str().map(str::to_owned))
            .flatten()
    })
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(!args.hub_urls.is_empty(), "--hub-urls needs at least one URL");
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let tokens = Minter::new(&args.jwt_secret).tokens(&format!("toast-{run_id}"), args.users)?;
    // When each toast arrived, by correlation id: a toast can beat its POST's response.
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut tabs = Vec::new();
    for (u, token) in tokens.iter().enumerate() {
        let mut ws = Tab::new(connect(&args.hub_urls[u % args.hub_urls.len()], token).await?, "json");
        let arrived = arrived.clone();
        tabs.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(text) = msg {
                    let now = Instant::now();
                    let mut arrived = arrived.lock().expect("lock");
                    for id in toasted_ids(text.as_str()) {
                        arrived.insert(id, now);
                    }
                }
            }
        }));
    }
    eprintln!("{} tabs open", tokens.len());

    let client = reqwest::Client::new();
    let url = format!("{}/api/orders", args.accept_url);
    let mut results = Vec::new();
    for rate in &args.rates {
        let scheduled: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let interval = Duration::from_secs_f64(1.0 / rate.max(0.1));
        let total = (rate * args.duration as f64) as usize;
        let mut requests = Vec::with_capacity(total);
        for n in 0..total {
            let due = started + interval.mul_f64(n as f64);
            tokio::time::sleep_until(due.into()).await;
            let (client, url, token, scheduled, refused) =
                (client.clone(), url.clone(), tokens[n % tokens.len()].clone(), scheduled.clone(), refused.clone());
            requests.push(tokio::spawn(async move {
                match place_mug_order(&client, &url, &token).await {
                    Some(id) => scheduled.lock().expect("lock").push((id, due)),
                    None => drop(refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
                }
            }));
        }
        for r in requests {
            let _ = r.await;
        }
        let scheduled = std::mem::take(&mut *scheduled.lock().expect("lock"));
        let settle = Instant::now() + Duration::from_secs(15);
        while Instant::now() < settle && scheduled.iter().any(|(id, _)| !arrived.lock().expect("lock").contains_key(id)) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut hist = histogram();
        let arrived = arrived.lock().expect("lock");
        let mut toasts = 0;
        for (id, due) in &scheduled {
            if let Some(at) = arrived.get(id) {
                toasts += 1;
                let _ = hist.record((at.saturating_duration_since(*due).as_micros() as u64).max(1));
            }
        }
        let result = StepResult {
            scenario: "toast",
            offered_orders_per_s: *rate,
            accepted: scheduled.len(),
            refused: refused.load(std::sync::atomic::Ordering::Relaxed),
            toasts,
            lost: scheduled.len() - toasts,
            latency: Latency::of(&hist),
        };
        println!(
            "toast  offered {:>5.0} orders/s  accepted {:>6}  refused {:>4}  lost {:>4}  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>7.2} ms",
            result.offered_orders_per_s,
            result.accepted,
            result.refused,
            result.lost,
            result.latency.p50_ms,
            result.latency.p99_ms,
            result.latency.p999_ms,
            result.latency.max_ms
        );
        results.push(result);
    }
    if let Some(out) = &args.out {
        crate::report::write_json(out, &results)?;
    }
    tabs.iter().for_each(|t| t.abort());
    Ok(())
}
