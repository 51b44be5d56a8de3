//! The `orders` driver: POST /api/orders with a JWT per simulated user. Open-loop at a fixed
//! rate (latency counted from each request's scheduled time, so a stalled server cannot hide
//! its queueing), or closed-loop with N workers for saturation.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::shop::Minter;
use serde_json::json;

use crate::report::{self, Latency, RunResult};

#[derive(clap::Args)]
pub struct Args {
    /// Base URL of an accept process
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// HS256 secret the server validates with
    #[arg(long, env = "CONTOSO_JWT_SECRET")]
    jwt_secret: String,
    /// Comma list of fixed rates (orders/s) to run one after the other; 0 means saturation
    #[arg(long, value_delimiter = ',', default_value = "500")]
    rates: Vec<f64>,
    /// Seconds per rate
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds of warm-up at the first rate, not measured
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Workers for the saturation run
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Distinct users the orders are spread over
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Where to write the JSON result
    #[arg(long)]
    out: Option<PathBuf>,
}

struct Shared {
    client: reqwest::Client,
    url: String,
    tokens: Vec<String>,
    ok: AtomicU64,
    errors: AtomicU64,
    hist: Mutex<hdrhistogram::Histogram<u64>>,
}

impl Shared {
    async fn one(&self, n: u64, scheduled: Instant) {
        let token = &self.tokens[n as usize % self.tokens.len()];
        let body = json!({ "items": [{ "productId": "mug", "quantity": 1 + (n % 3) }, { "productId": "filter", "quantity": 1 }] });
        let res = self.client.post(&self.url).bearer_auth(token).json(&body).send().await;
        let elapsed = scheduled.elapsed();
        match res {
            Ok(r) if r.status() == 202 => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                let _ = self.hist.lock().unwrap().record(elapsed.as_micros().max(1) as u64);
            }
            _ => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn reset(&self) {
        self.ok.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
        self.hist.lock().unwrap().reset();
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let tokens = Minter::new(&args.jwt_secret).tokens("load", args.users)?;
    let shared = Arc::new(Shared {
        client: reqwest::Client::builder().pool_max_idle_per_host(512).timeout(Duration::from_secs(30)).build()?,
        url: format!("{}/api/orders", args.url.trim_end_matches('/')),
        tokens,
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        hist: Mutex::new(report::histogram()),
    });
    if args.warmup > 0 {
        let first = args.rates.first().copied().unwrap_or(100.0).max(50.0);
        open_loop(&shared, first, Duration::from_secs(args.warmup)).await;
    }
    let mut results = Vec::new();
    for rate in &args.rates {
        shared.reset();
        let duration = Duration::from_secs(args.duration);
        let started = Instant::now();
        if *rate > 0.0 {
            open_loop(&shared, *rate, duration).await;
        } else {
            closed_loop(&shared, args.workers, duration).await;
        }
        let elapsed = started.elapsed();
        let ok = shared.ok.load(Ordering::Relaxed);
        let result = RunResult {
            scenario: "orders".into(),
            offered_rate: (*rate > 0.0).then_some(*rate),
            duration_s: report::secs(elapsed),
            ok,
            errors: shared.errors.load(Ordering::Relaxed),
            achieved_rate: ok as f64 / elapsed.as_secs_f64(),
            latency: Latency::of(&shared.hist.lock().unwrap()),
        };
        result.print();
        results.push(result);
    }
    if let Some(out) = &args.out {
        report::write_json(out, &results)?;
    }
    Ok(())
}

/// Starts one request every 1/rate seconds regardless of how the previous ones fare.
async fn open_loop(shared: &Arc<Shared>, rate: f64, duration: Duration) {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut n: u64 = 0;
    loop {
        let scheduled = start + interval.mul_f64(n as f64);
        if scheduled >= start + duration {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        let s = shared.clone();
        tasks.spawn(async move { s.one(n, scheduled).await });
        n += 1;
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn closed_loop(shared: &Arc<Shared>, workers: usize, duration: Duration) {
    let deadline = Instant::now() + duration;
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let s = shared.clone();
        let counter = counter.clone();
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                s.one(n, Instant::now()).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
