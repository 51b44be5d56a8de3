//! The `pipeline` driver: POST /api/orders at a fixed open-loop rate and time each order until
//! its `order.processed` is on the bus (seen through a private queue bound to the deployment's
//! exchange). Reports throughput through accept and process, latency, and orders never seen.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::shop::Minter;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde_json::{Value, json};

use crate::report::{self, Latency, RunResult};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, env = "CONTOSO_JWT_SECRET")]
    jwt_secret: String,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// The deployment's --bus-prefix
    #[arg(long, default_value = "")]
    bus_prefix: String,
    #[arg(long, value_delimiter = ',', default_value = "300")]
    rates: Vec<f64>,
    #[arg(long, default_value_t = 20)]
    duration: u64,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// Orders in flight, matched from whichever side comes second: under load the broker can
/// deliver an order's `order.processed` before the client has read the answer to its POST.
#[derive(Default)]
struct Tracker {
    /// Accepted (answer read), event not seen yet: when each was scheduled.
    pending: HashMap<String, Instant>,
    /// Event seen before the answer was read: when it was seen.
    early: HashMap<String, Instant>,
    /// When the last order of the step completed (throughput counts up to it).
    last: Option<Instant>,
}

impl Tracker {
    fn accepted(&mut self, hist: &Mutex<Histogram<u64>>, id: String, scheduled: Instant) {
        match self.early.remove(&id) {
            Some(seen) => record(hist, seen.saturating_duration_since(scheduled)),
            None => {
                self.pending.insert(id, scheduled);
            }
        }
    }

    fn processed(&mut self, hist: &Mutex<Histogram<u64>>, id: &str) {
        let now = Instant::now();
        self.last = Some(now);
        match self.pending.remove(id) {
            Some(scheduled) => record(hist, now.saturating_duration_since(scheduled)),
            None => {
                self.early.insert(id.to_owned(), now);
            }
        }
    }
}

fn record(hist: &Mutex<Histogram<u64>>, latency: Duration) {
    let _ = hist.lock().unwrap().record(latency.as_micros().max(1) as u64);
}

type Pending = Arc<Mutex<Tracker>>;

pub async fn run(args: Args) -> anyhow::Result<()> {
    let conn = Connection::connect(&args.amqp_url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let queue = channel
        .queue_declare("".into(), QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() }, FieldTable::default())
        .await?;
    let exchange = format!("{}contoso.orders", args.bus_prefix);
    channel
        .queue_bind(queue.name().clone(), exchange.into(), "order.processed".into(), QueueBindOptions::default(), FieldTable::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "pipeline-bench".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    let pending: Pending = Arc::new(Mutex::new(Tracker::default()));
    let hist = Arc::new(Mutex::new(report::histogram()));
    {
        let (pending, hist) = (pending.clone(), hist.clone());
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let Ok(body) = serde_json::from_slice::<Value>(&delivery.data) else { continue };
                let Some(id) = body["correlationId"].as_str() else { continue };
                pending.lock().unwrap().processed(&hist, id);
            }
        });
    }
    let tokens = Minter::new(&args.jwt_secret).tokens("pipe", 500)?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(512).timeout(Duration::from_secs(30)).build()?;
    let url = format!("{}/api/orders", args.url.trim_end_matches('/'));
    let mut results = Vec::new();
    for rate in &args.rates {
        *pending.lock().unwrap() = Tracker::default();
        hist.lock().unwrap().reset();
        let interval = Duration::from_secs_f64(1.0 / rate);
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let mut n = 0u64;
        let errors = Arc::new(Mutex::new(0u64));
        while start.elapsed() < Duration::from_secs(args.duration) {
            let scheduled = start + interval.mul_f64(n as f64);
            tokio::time::sleep_until(scheduled.into()).await;
            let (client, url, token, pending, errors, hist) =
                (client.clone(), url.clone(), tokens[n as usize % tokens.len()].clone(), pending.clone(), errors.clone(), hist.clone());
            tasks.spawn(async move {
                let res =
                    client.post(&url).bearer_auth(token).json(&json!({ "items": [{ "productId": "mug", "quantity": 1 }] })).send().await;
                match res {
                    Ok(r) if r.status() == 202 => {
                        if let Ok(v) = r.json::<Value>().await
                            && let Some(id) = v["correlationId"].as_str()
                        {
                            pending.lock().unwrap().accepted(&hist, id.to_owned(), scheduled);
                        }
                    }
                    _ => *errors.lock().unwrap() += 1,
                }
            });
            n += 1;
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        // Orders still in flight get a few seconds to come through; the rest count as missing.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pending.lock().unwrap().pending.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (missing, last) = {
            let tracker = pending.lock().unwrap();
            (tracker.pending.len() as u64, tracker.last)
        };
        // Throughput up to the last completion: orders that queued up and completed after the
        // sending window count, the wait for missing ones does not.
        let elapsed = last.map_or_else(|| start.elapsed(), |last| last.saturating_duration_since(start));
        let h = hist.lock().unwrap();
        let result = RunResult {
            scenario: "pipeline".into(),
            offered_rate: Some(*rate),
            duration_s: report::secs(elapsed),
            ok: h.len(),
            errors: *errors.lock().unwrap() + missing,
            achieved_rate: h.len() as f64 / elapsed.as_secs_f64(),
            latency: Latency::of(&h),
        };
        result.print();
        if missing > 0 {
            println!("pipeline   {missing} accepted orders had no order.processed within 10 s of the end");
        }
        results.push(result);
    }
    if let Some(out) = &args.out {
        report::write_json(out, &results)?;
    }
    Ok(())
}
