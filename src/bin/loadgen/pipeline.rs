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

type Pending = Arc<Mutex<HashMap<String, Instant>>>;

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
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let hist = Arc::new(Mutex::new(report::histogram()));
    {
        let (pending, hist) = (pending.clone(), hist.clone());
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let Ok(body) = serde_json::from_slice::<Value>(&delivery.data) else { continue };
                let Some(id) = body["correlationId"].as_str() else { continue };
                if let Some(sent) = pending.lock().unwrap().remove(id) {
                    let _ = hist.lock().unwrap().record(sent.elapsed().as_micros().max(1) as u64);
                }
            }
        });
    }
    let tokens = Minter::new(&args.jwt_secret).tokens("pipe", 500)?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(512).timeout(Duration::from_secs(30)).build()?;
    let url = format!("{}/api/orders", args.url.trim_end_matches('/'));
    let mut results = Vec::new();
    for rate in &args.rates {
        pending.lock().unwrap().clear();
        hist.lock().unwrap().reset();
        let interval = Duration::from_secs_f64(1.0 / rate);
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let mut n = 0u64;
        let errors = Arc::new(Mutex::new(0u64));
        while start.elapsed() < Duration::from_secs(args.duration) {
            let scheduled = start + interval.mul_f64(n as f64);
            tokio::time::sleep_until(scheduled.into()).await;
            let (client, url, token, pending, errors) =
                (client.clone(), url.clone(), tokens[n as usize % tokens.len()].clone(), pending.clone(), errors.clone());
            tasks.spawn(async move {
                let res =
                    client.post(&url).bearer_auth(token).json(&json!({ "items": [{ "productId": "mug", "quantity": 1 }] })).send().await;
                match res {
                    Ok(r) if r.status() == 202 => {
                        if let Ok(v) = r.json::<Value>().await
                            && let Some(id) = v["correlationId"].as_str()
                        {
                            pending.lock().unwrap().insert(id.to_owned(), scheduled);
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
        while !pending.lock().unwrap().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let missing = pending.lock().unwrap().len() as u64;
        let elapsed = start.elapsed();
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
