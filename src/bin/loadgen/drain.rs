//! The `drain` scenario: tabs on one notify process, orders flowing through the full pipeline,
//! then SIGTERM to that process. Each tab reconnects (to the other hub URLs, as a load balancer
//! without the drained pod would send it) and calls `ResumeNotifications` with its last id.
//! Measures how long until every tab is back, the reconnect rate the receiving processes see,
//! and the notifications each tab missed before and after the replay.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::shop::{Minter, place_mug_order};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::hub::{self, connect};

#[derive(clap::Args)]
pub struct Args {
    /// Hub URL of the process that will be drained
    #[arg(long)]
    drain_url: String,
    /// Its pid: this tool sends it SIGTERM `--drain-after` seconds into the order stream
    #[arg(long)]
    drain_pid: u32,
    /// Comma list of the hub URLs of the remaining processes (reconnects go round-robin)
    #[arg(long, value_delimiter = ',')]
    to_urls: Vec<String>,
    /// Base URL of an accept process
    #[arg(long)]
    accept_url: String,
    #[arg(long, env = "CONTOSO_JWT_SECRET")]
    jwt_secret: String,
    #[arg(long, default_value_t = 5000)]
    connections: usize,
    /// Tabs per user
    #[arg(long, default_value_t = 2)]
    tabs: usize,
    /// Orders per second during the run
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Seconds of orders in total
    #[arg(long, default_value_t = 12)]
    duration: u64,
    #[arg(long, default_value_t = 3)]
    drain_after: u64,
    /// Each tab waits a random time up to this before reconnecting, as the client module's
    /// full-jitter first retry does (its default base delay is 1 s)
    #[arg(long, default_value_t = 1000)]
    reconnect_jitter_ms: u64,
    #[arg(long)]
    out: Option<PathBuf>,
}

/// What one tab saw.
#[derive(Default)]
struct Tab {
    live: HashSet<String>,
    replayed: HashSet<String>,
    duplicates: u64,
    closed_at: Option<Duration>,
    back_at: Option<Duration>,
    resume_complete: Option<bool>,
}

#[derive(Serialize)]
struct DrainResult {
    scenario: &'static str,
    connections: usize,
    orders: usize,
    expected_deliveries: usize,
    reconnected: usize,
    first_close_after_sigterm_s: f64,
    last_close_after_sigterm_s: f64,
    all_back_after_sigterm_s: f64,
    peak_reconnects_per_s: usize,
    missed_before_replay: usize,
    missed_after_replay: usize,
    duplicates: u64,
    incomplete_replays: usize,
}

/// What a record means to a tab.
enum Record {
    Notification { correlation_id: String, notification_id: String },
    ResumeDone { complete: bool },
    Close,
    Other,
}

fn records(text: &str) -> Vec<Record> {
    text.split('\u{1e}')
        .filter(|r| !r.is_empty())
        .map(|r| {
            let Ok(v) = serde_json::from_str::<Value>(r) else { return Record::Other };
            match v["type"].as_u64() {
                Some(1) if v["target"] == "OrderCompleted" || v["target"] == "OrderFailed" => {
                    let n = &v["arguments"][0];
                    Record::Notification {
                        correlation_id: n["correlationId"].as_str().unwrap_or_default().to_owned(),
                        notification_id: n["notificationId"].as_str().unwrap_or_default().to_owned(),
                    }
                }
                Some(3) if v["invocationId"] == "resume" => Record::ResumeDone { complete: v["result"]["complete"] == true },
                Some(7) => Record::Close,
                _ => Record::Other,
            }
        })
        .collect()
}

/// One tab: connected to the drained process until it says goodbye, then to `to_url`, where it
/// resumes from its last notification id and stays until `stop`.
struct TabPlan {
    to_url: String,
    token: String,
    jitter: Duration,
}

async fn run_tab(
    ws: hub::Tab,
    plan: TabPlan,
    tab: Arc<Mutex<Tab>>,
    sigterm: Arc<Mutex<Option<Instant>>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_id: Option<String> = None;
    let mut ws = ws;
    let mut replaying = false;
    let mut moved = false;
    loop {
        let mut stop_rx = stop.clone();
        let msg = tokio::select! {
            msg = ws.next() => msg,
            _ = stop_rx.wait_for(|s| *s) => return,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(_)) => continue,
            // The second connection ending is not part of the scenario.
            Some(Err(_)) | None if moved => return,
            // The first one ending without a Close record is treated like one (reconnect).
            Some(Err(_)) | None => String::from("{\"type\":7}\u{1e}"),
        };
        for record in records(&text) {
            match record {
                Record::Notification { correlation_id, notification_id } => {
                    let mut t = tab.lock().expect("lock");
                    let fresh = if replaying {
                        t.replayed.insert(correlation_id.clone()) && !t.live.contains(&correlation_id)
                    } else {
                        t.live.insert(correlation_id.clone())
                    };
                    if !fresh {
                        t.duplicates += 1;
                    }
                    last_id = Some(notification_id);
                }
                Record::ResumeDone { complete } => {
                    replaying = false;
                    tab.lock().expect("lock").resume_complete = Some(complete);
                }
                Record::Close if !moved => {
                    let since = sigterm.lock().expect("lock").map(|t| t.elapsed());
                    let closed = Instant::now();
                    tab.lock().expect("lock").closed_at = since;
                    tokio::time::sleep(plan.jitter.mul_f64(rand::random::<f64>())).await;
                    let mut next = None;
                    for _ in 0..20 {
                        match connect(&plan.to_url, &plan.token).await {
                            Ok(ws) => {
                                next = Some(hub::Tab::new(ws, "json"));
                                break;
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                        }
                    }
                    let Some(mut next) = next else { return };
                    tab.lock().expect("lock").back_at = since.map(|s| s + closed.elapsed());
                    let resume = json!({ "type": 1, "invocationId": "resume", "target": "ResumeNotifications", "arguments": [last_id] });
                    replaying = true;
                    if next.send(Message::text(format!("{resume}\u{1e}"))).await.is_err() {
                        return;
                    }
                    ws = next;
                    moved = true;
                    break;
                }
                Record::Close | Record::Other => {}
            }
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(!args.to_urls.is_empty(), "--to-urls needs at least one hub URL");
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let users = args.connections.div_ceil(args.tabs.max(1));
    let tokens = Minter::new(&args.jwt_secret).tokens(&format!("drain-{run_id}"), users)?;
    let sigterm = Arc::new(Mutex::new(None::<Instant>));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (tabs, handles) = open_tabs(&args, &tokens, &sigterm, stop_rx).await?;
    let placed = place_orders(&args, &tokens, &sigterm).await?;
    // Let the last orders through the pipeline and every replay finish.
    let settle = Instant::now() + Duration::from_secs(30);
    while missing(&tabs, &placed) && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop_tx.send(true);
    for h in handles {
        let _ = h.await;
    }
    let result = tally(&args, &tabs, &placed);
    result.print();
    if let Some(out) = &args.out {
        crate::report::write_json(out, &result)?;
    }
    Ok(())
}

/// Every tab with its user's index.
type Tabs = Vec<(usize, Arc<Mutex<Tab>>)>;

/// Opens every tab on the process to be drained, each run by its own task until `stop`.
async fn open_tabs(
    args: &Args,
    tokens: &[String],
    sigterm: &Arc<Mutex<Option<Instant>>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(Tabs, Vec<tokio::task::JoinHandle<()>>)> {
    let mut tabs = Vec::with_capacity(args.connections);
    let mut handles = Vec::with_capacity(args.connections);
    let ramp = Instant::now();
    for i in 0..args.connections {
        let user = i % tokens.len();
        let ws = hub::Tab::new(connect(&args.drain_url, &tokens[user]).await?, "json");
        let tab = Arc::new(Mutex::new(Tab::default()));
        tabs.push((user, tab.clone()));
        let plan = TabPlan {
            to_url: args.to_urls[i % args.to_urls.len()].clone(),
            token: tokens[user].clone(),
            jitter: Duration::from_millis(args.reconnect_jitter_ms),
        };
        handles.push(tokio::spawn(run_tab(ws, plan, tab, sigterm.clone(), stop.clone())));
    }
    eprintln!("{} tabs of {} users connected in {:.1} s", args.connections, tokens.len(), ramp.elapsed().as_secs_f64());
    Ok((tabs, handles))
}

/// Orders through the whole pipeline at `--rate`, each for the next user in turn, with the
/// SIGTERM sent `--drain-after` seconds in: (user, correlation id) of every order accepted.
async fn place_orders(args: &Args, tokens: &[String], sigterm: &Mutex<Option<Instant>>) -> anyhow::Result<Vec<(usize, String)>> {
    let client = reqwest::Client::new();
    let placed: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
    let total = (args.rate * args.duration as f64) as usize;
    let mut drained = false;
    let mut requests = Vec::with_capacity(total);
    for n in 0..total {
        tokio::time::sleep_until((started + interval.mul_f64(n as f64)).into()).await;
        if !drained && started.elapsed() >= Duration::from_secs(args.drain_after) {
            drained = true;
            *sigterm.lock().expect("lock") = Some(Instant::now());
            std::process::Command::new("kill").arg("-TERM").arg(args.drain_pid.to_string()).status()?;
        }
        let user = n % tokens.len();
        let (client, placed, url, token) =
            (client.clone(), placed.clone(), format!("{}/api/orders", args.accept_url), tokens[user].clone());
        requests.push(tokio::spawn(async move {
            if let Some(id) = place_mug_order(&client, &url, &token).await {
                placed.lock().expect("lock").push((user, id));
            }
        }));
    }
    for r in requests {
        let _ = r.await;
    }
    Ok(placed.lock().expect("lock").clone())
}

/// Whether a tab still lacks one of its user's orders, live or replayed.
fn missing(tabs: &Tabs, placed: &[(usize, String)]) -> bool {
    tabs.iter().any(|(user, tab)| {
        let t = tab.lock().expect("lock");
        placed.iter().any(|(u, id)| u == user && !t.live.contains(id) && !t.replayed.contains(id))
    })
}

/// What every tab saw of its user's orders, and when it was closed and came back.
fn tally(args: &Args, tabs: &Tabs, placed: &[(usize, String)]) -> DrainResult {
    let mut result = DrainResult {
        scenario: "drain",
        connections: args.connections,
        orders: placed.len(),
        expected_deliveries: 0,
        reconnected: 0,
        first_close_after_sigterm_s: f64::MAX,
        last_close_after_sigterm_s: 0.0,
        all_back_after_sigterm_s: 0.0,
        peak_reconnects_per_s: 0,
        missed_before_replay: 0,
        missed_after_replay: 0,
        duplicates: 0,
        incomplete_replays: 0,
    };
    let mut per_bucket = std::collections::BTreeMap::<u64, usize>::new();
    for (user, tab) in tabs {
        let t = tab.lock().expect("lock");
        for (_, id) in placed.iter().filter(|(u, _)| u == user) {
            result.expected_deliveries += 1;
            if !t.live.contains(id) {
                result.missed_before_replay += 1;
                if !t.replayed.contains(id) {
                    result.missed_after_replay += 1;
                }
            }
        }
        result.duplicates += t.duplicates;
        if t.resume_complete == Some(false) {
            result.incomplete_replays += 1;
        }
        if let Some(c) = t.closed_at {
            result.first_close_after_sigterm_s = result.first_close_after_sigterm_s.min(c.as_secs_f64());
            result.last_close_after_sigterm_s = result.last_close_after_sigterm_s.max(c.as_secs_f64());
        }
        if let Some(b) = t.back_at {
            result.reconnected += 1;
            result.all_back_after_sigterm_s = result.all_back_after_sigterm_s.max(b.as_secs_f64());
            *per_bucket.entry(b.as_millis() as u64 / 1000).or_default() += 1;
        }
    }
    result.peak_reconnects_per_s = per_bucket.values().copied().max().unwrap_or(0);
    result
}

impl DrainResult {
    fn print(&self) {
        println!(
            "drain: {} tabs, {} orders ({} deliveries expected); reconnected {} ; Close from {:.2} s to {:.2} s after SIGTERM, all back at {:.2} s; peak {} reconnects/s; missed before replay {}, after replay {}; duplicates {}; incomplete replays {}",
            self.connections,
            self.orders,
            self.expected_deliveries,
            self.reconnected,
            self.first_close_after_sigterm_s,
            self.last_close_after_sigterm_s,
            self.all_back_after_sigterm_s,
            self.peak_reconnects_per_s,
            self.missed_before_replay,
            self.missed_after_replay,
            self.duplicates,
            self.incomplete_replays
        );
    }
}
