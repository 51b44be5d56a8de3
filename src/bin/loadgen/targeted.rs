//! The `targeted` scenario: cross-process fan-out. Users with tabs on every notify process get
//! per-user notifications at rising fixed rates, published straight onto the Redis backplane
//! (fan-out alone, as another pod or a .NET server would) or as `order.processed` events that go
//! through the notify consumer (user lookup, log, fan-out), or through RabbitMQ alone to this
//! tool (the consumer path's floor). Per rate: latency from the scheduled send to receipt on
//! every tab, loss and duplicates, the notify processes' CPU per delivery, Redis PUBLISH commands
//! per notification, and the CPU each process of the host spent per notification.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::shop::Minter;
use contoso::{
    bus::QueueType,
    cache::map_key,
    domain::{CorrelationId, Event, EventKind},
    hub::{lifetime::envelope, protocol::HubMessage},
};
use deadpool_redis::redis;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    hub::{BackplaneArgs, ClientArgs, Tab, connect_bare, connect_with, correlation_ids},
    procfs::{cpu_ticks, rss_kib},
    redis_nodes::{self, NodeStep, Nodes},
    report::{Latency, histogram},
};

/// The knee: the highest rate whose p99 stays within this, with nothing lost.
const KNEE_P99_MS: f64 = 20.0;

fn within_knee(step: &StepResult) -> bool {
    step.latency.p99_ms <= KNEE_P99_MS && step.lost == 0
}

/// Tab k (user k / tabs) is slow when the running fraction passes a whole tab there: an even
/// spread of exactly round(fraction * all tabs) slow tabs.
fn slow_tab(fraction: f64, k: usize) -> bool {
    ((k + 1) as f64 * fraction).floor() > (k as f64 * fraction).floor()
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Driver {
    /// PUBLISH ASP.NET envelopes to the users' backplane channels
    Backplane,
    /// Publish `order.processed` to RabbitMQ for orders whose `order:map:*` this tool seeded
    Consumer,
    /// Publish the same events to a queue of this tool's own and consume it: RabbitMQ alone,
    /// no tabs
    Broker,
}

#[derive(clap::Args)]
pub struct Args {
    /// Comma list of hub URLs; every user gets tabs on each in turn
    #[arg(long, value_delimiter = ',')]
    hub_urls: Vec<String>,
    #[arg(long, env = "CONTOSO_JWT_SECRET")]
    jwt_secret: String,
    #[arg(long, default_value_t = 5000)]
    users: usize,
    #[arg(long, default_value_t = 2)]
    tabs: usize,
    #[arg(long, value_enum, default_value = "backplane")]
    driver: Driver,
    /// Comma list of delivery rates (notifications/s times tabs per user), one step each; the
    /// run stops after the first step past the knee (p99 over 20 ms, or anything lost)
    #[arg(long, value_delimiter = ',', default_value = "5000,10000,20000,30000")]
    rates: Vec<f64>,
    /// Seconds per step
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[command(flatten)]
    backplane: BackplaneArgs,
    #[command(flatten)]
    client: ClientArgs,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// The notify processes' --bus-prefix
    #[arg(long, default_value = "")]
    bus_prefix: String,
    /// Pids of the notify processes, for their CPU time per delivery
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Pids of the broker's processes (RabbitMQ's beam.smp), for its CPU per notification
    #[arg(long, value_delimiter = ',')]
    broker_pids: Vec<u32>,
    /// The type of the broker floor's queue: the notify processes' --queue-type
    #[arg(long, value_enum, default_value = "quorum")]
    queue_type: QueueType,
    /// The broker floor's prefetch: the notify processes' --prefetch
    #[arg(long, default_value_t = 32)]
    prefetch: u16,
    /// Fraction of tabs that never read (slow consumers); they are left out of the expected
    /// deliveries and the latency
    #[arg(long, default_value_t = 0.0)]
    slow_fraction: f64,
    /// The hub URLs are bare relays (`contoso-loadgen relay`): no token, no handshake
    #[arg(long)]
    bare: bool,
    /// Seconds to wait for every (user, process) subscription before sending
    #[arg(long, default_value_t = 15)]
    subscription_wait: u64,
    /// Seconds a step waits for late deliveries before counting what is missing as lost
    #[arg(long, default_value_t = 10)]
    settle: u64,
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Every notification of the run, by slot: its correlation id, when it was due, and how many
/// tabs received it.
struct Book {
    ids: Vec<String>,
    /// Reading tabs per user (slow tabs are not counted).
    readers: Vec<u32>,
    slot_of: HashMap<String, usize>,
    due_nanos: Vec<AtomicU64>,
    received: Vec<AtomicU32>,
    /// Slot ranges per step, and one latency histogram each.
    steps: Vec<std::ops::Range<usize>>,
    latency: Vec<Mutex<Histogram<u64>>>,
    epoch: Instant,
}

impl Book {
    fn record(&self, correlation_id: &str) {
        let Some(&slot) = self.slot_of.get(correlation_id) else { return };
        self.received[slot].fetch_add(1, Ordering::Relaxed);
        let due = self.due_nanos[slot].load(Ordering::Relaxed);
        let now = self.epoch.elapsed().as_nanos() as u64;
        if let Some(step) = self.steps.iter().position(|r| r.contains(&slot)) {
            let micros = (now.saturating_sub(due) / 1000).max(1);
            let _ = self.latency[step].lock().expect("lock").record(micros);
        }
    }
}

#[derive(Serialize)]
struct StepResult {
    driver: &'static str,
    offered_deliveries_per_s: f64,
    achieved_deliveries_per_s: f64,
    notifications: usize,
    expected: u64,
    received: u64,
    lost: u64,
    duplicates: u64,
    latency: Latency,
    server_cpu_us_per_delivery: Option<f64>,
    /// Largest sum of the servers' RSS sampled during the step.
    server_rss_mib_max: f64,
    slow_tabs: usize,
    redis_publish_per_notification: f64,
    /// Per Redis master (one on a single server): its PUBLISH / SPUBLISH calls and CPU.
    redis_nodes: Vec<NodeStep>,
    /// What each process of the host spent per notification sent (µs of CPU).
    host_cpu_us_per_notification: HostCpu,
}

/// CPU per notification sent, by process: the notify processes, the broker, Redis (all
/// masters) and this tool, and their sum (what one notification costs the host).
#[derive(Serialize)]
struct HostCpu {
    notify: Option<f64>,
    broker: Option<f64>,
    redis: f64,
    load_generator: Option<f64>,
    total: f64,
}

/// CPU ticks of the broker's processes (none when no pid is given) and of this tool.
#[derive(Clone, Copy)]
struct HostTicks {
    broker: Option<u64>,
    load_generator: u64,
}

fn host_ticks(broker_pids: &[u32]) -> Option<HostTicks> {
    let broker = if broker_pids.is_empty() { None } else { broker_pids.iter().map(|p| cpu_ticks(*p)).sum() };
    Some(HostTicks { broker, load_generator: cpu_ticks(std::process::id())? })
}

impl HostCpu {
    /// From the notify processes' ticks and the host's before and after a step.
    fn of(notify_ticks: Option<u64>, host: Option<(HostTicks, HostTicks)>, redis: &[NodeStep], notifications: usize) -> Self {
        let per = |ticks: u64| ticks as f64 / TICKS_PER_S * 1e6 / notifications.max(1) as f64;
        let notify = notify_ticks.map(per);
        let broker = host.and_then(|(b, a)| Some(per(a.broker? - b.broker?)));
        let load_generator = host.map(|(b, a)| per(a.load_generator - b.load_generator));
        let redis = redis.iter().map(|n| n.cpu_us_per_notification).sum();
        let total = notify.unwrap_or(0.0) + broker.unwrap_or(0.0) + redis + load_generator.unwrap_or(0.0);
        Self { notify, broker, redis, load_generator, total }
    }
}

const TICKS_PER_S: f64 = 100.0; // USER_HZ on Linux

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(!args.hub_urls.is_empty(), "--hub-urls needs at least one URL");
    let minter = Minter::new(&args.jwt_secret);
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let users: Vec<String> = (0..args.users).map(|u| format!("fan-{run_id}-{u}")).collect();
    let tabs = args.tabs.max(1);

    // Every notification of the run, decided up front.
    let mut ids = Vec::new();
    let mut steps = Vec::new();
    for rate in &args.rates {
        let n = (rate / tabs as f64 * args.duration as f64) as usize;
        steps.push(ids.len()..ids.len() + n);
        ids.extend((0..n).map(|_| CorrelationId::new().to_string()));
    }
    // The broker floor has no tabs: this tool is each notification's one reader.
    let broker = matches!(args.driver, Driver::Broker);
    let slow = |k: usize| slow_tab(args.slow_fraction, k);
    let readers: Vec<u32> = match broker {
        true => vec![1; users.len()],
        false => (0..users.len()).map(|u| (0..tabs).filter(|t| !slow(u * tabs + t)).count() as u32).collect(),
    };
    let book = Arc::new(Book {
        readers,
        slot_of: ids.iter().enumerate().map(|(i, id)| (id.clone(), i)).collect(),
        due_nanos: (0..ids.len()).map(|_| AtomicU64::new(0)).collect(),
        received: (0..ids.len()).map(|_| AtomicU32::new(0)).collect(),
        latency: steps.iter().map(|_| Mutex::new(histogram())).collect(),
        steps,
        ids,
        epoch: Instant::now(),
    });

    let (redis_mode, redis_url) = (args.backplane.redis_mode, args.backplane.redis_url.as_str());
    let (publisher, publish_command) = redis_nodes::publisher(redis_mode, redis_url)?;
    let nodes = Nodes::discover(redis_mode, redis_url).await?;
    if let Driver::Consumer = args.driver {
        // The consumer finds each order's user through order:map:*, as accept writes it.
        for (chunk_start, chunk) in book.ids.chunks(1000).enumerate() {
            let mut sets = Vec::with_capacity(chunk.len());
            for (i, id) in chunk.iter().enumerate() {
                let user = &users[(chunk_start * 1000 + i) % users.len()];
                let mut set = redis::cmd("SET");
                set.arg(map_key(CorrelationId::parse(id).map_err(anyhow::Error::msg)?)).arg(user).arg("EX").arg(3600);
                sets.push(set);
            }
            publisher.query_all::<()>(sets).await?;
        }
    }

    let handles = if broker { Vec::new() } else { open_tabs(&args, &users, &minter, &book, &nodes).await? };

    let channels = args.backplane.channels();
    let exchange = format!("{}contoso.orders", args.bus_prefix);
    let amqp = match args.driver {
        Driver::Consumer | Driver::Broker => {
            let conn = lapin::Connection::connect(&args.amqp_url, lapin::ConnectionProperties::default()).await?;
            Some((conn.create_channel().await?, conn))
        }
        Driver::Backplane => None,
    };
    let routing_key = if broker { crate::broker::ROUTING_KEY } else { "order.processed" };
    let floor = match (broker, &amqp) {
        (true, Some((_, conn))) => {
            let (channel, book) = (conn.create_channel().await?, book.clone());
            let queue = format!("{}contoso.bench-broker", args.bus_prefix);
            crate::broker::consume(&channel, &exchange, &queue, args.queue_type, args.prefetch, move |id| book.record(id)).await?;
            Some(channel)
        }
        _ => None,
    };
    let mut results = Vec::new();
    for (step, rate) in args.rates.iter().enumerate() {
        let range = book.steps[step].clone();
        let notifications_per_s = rate / tabs as f64;
        let cpu_before: Option<u64> = args.pids.iter().map(|p| cpu_ticks(*p)).sum();
        let host_before = host_ticks(&args.broker_pids);
        let redis_before = nodes.counters().await?;
        let started = Instant::now();
        let mut next = range.start;
        let mut rss_max_kib = 0u64;
        let mut rss_sampled = started;
        while next < range.end {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if rss_sampled.elapsed() >= Duration::from_millis(200) {
                rss_sampled = Instant::now();
                rss_max_kib = rss_max_kib.max(args.pids.iter().filter_map(|p| rss_kib(*p)).sum());
            }
            let due_until = range.start + ((started.elapsed().as_secs_f64() * notifications_per_s) as usize).min(range.len());
            let mut publishes = Vec::new();
            for slot in next..due_until {
                let due = started + Duration::from_secs_f64((slot - range.start) as f64 / notifications_per_s);
                book.due_nanos[slot].store(due.duration_since(book.epoch).as_nanos() as u64, Ordering::Relaxed);
                let user = &users[slot % users.len()];
                match &amqp {
                    None => {
                        let payload = json!({ "notificationId": "0-1", "correlationId": book.ids[slot], "orderId": "CS-000001", "status": "COMPLETED", "occurredAt": "2026-01-01T00:00:00.000Z" });
                        let env = envelope(&HubMessage::push("OrderCompleted", vec![payload]));
                        let mut publish = redis::cmd(publish_command);
                        publish.arg(channels.user(user)).arg(env.encode().as_ref());
                        publishes.push(publish);
                    }
                    Some((channel, _)) => {
                        let id = CorrelationId::parse(&book.ids[slot]).map_err(anyhow::Error::msg)?;
                        let event = Event::new(EventKind::Processed { order_id: "CS-000001".into() }, id, chrono::Utc::now());
                        channel
                            .basic_publish(
                                exchange.clone().into(),
                                routing_key.into(),
                                lapin::options::BasicPublishOptions::default(),
                                &event.to_json(),
                                lapin::BasicProperties::default().with_message_id(event.event_id.to_string().into()),
                            )
                            .await?;
                    }
                }
            }
            next = due_until;
            if !publishes.is_empty() {
                let publisher = publisher.clone();
                tokio::spawn(async move {
                    let _ = publisher.query_all::<()>(publishes).await;
                });
            }
        }
        let sent_for = started.elapsed();
        // Wait for the stragglers (bounded), then count.
        let readers_of = |slot: usize| book.readers[slot % users.len()] as u64;
        let expected: u64 = range.clone().map(readers_of).sum();
        let settle = Instant::now() + Duration::from_secs(args.settle);
        let count = |range: std::ops::Range<usize>| -> (u64, u64) {
            range.fold((0, 0), |(got, dup), slot| {
                let n = book.received[slot].load(Ordering::Relaxed) as u64;
                (got + n.min(readers_of(slot)), dup + n.saturating_sub(readers_of(slot)))
            })
        };
        while count(range.clone()).0 < expected && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (received, duplicates) = count(range.clone());
        let cpu_after: Option<u64> = args.pids.iter().map(|p| cpu_ticks(*p)).sum();
        let host = host_before.zip(host_ticks(&args.broker_pids));
        let redis_after = nodes.counters().await?;
        let redis_nodes = nodes.step(&redis_before, &redis_after, range.len());
        let notify_ticks = cpu_before.zip(cpu_after).map(|(b, a)| a - b);
        let result = StepResult {
            driver: match (args.bare, args.driver, args.client.stateful) {
                (true, _, _) => "relay",
                (false, Driver::Backplane, _) if nodes.masters().len() > 1 => "backplane on a cluster",
                (false, Driver::Backplane, true) => "backplane, stateful reconnect",
                (false, Driver::Backplane, false) => "backplane",
                (false, Driver::Consumer, true) => "consumer, stateful reconnect",
                (false, Driver::Consumer, false) => "consumer",
                (false, Driver::Broker, _) => "broker",
            },
            offered_deliveries_per_s: *rate,
            achieved_deliveries_per_s: received as f64 / sent_for.as_secs_f64(),
            notifications: range.len(),
            expected,
            received,
            lost: expected - received,
            duplicates,
            latency: Latency::of(&book.latency[step].lock().expect("lock")),
            server_cpu_us_per_delivery: notify_ticks.filter(|_| received > 0).map(|t| t as f64 / TICKS_PER_S * 1e6 / received as f64),
            server_rss_mib_max: rss_max_kib as f64 / 1024.0,
            slow_tabs: users.len() * tabs - book.readers.iter().map(|r| *r as usize).sum::<usize>(),
            redis_publish_per_notification: redis_nodes.iter().map(|n| n.publishes_per_notification).sum(),
            host_cpu_us_per_notification: HostCpu::of(notify_ticks, host, &redis_nodes, range.len()),
            redis_nodes,
        };
        println!(
            "{:<9} offered {:>7.0}/s  achieved {:>8.1}/s  lost {:>6}  dup {:>4}  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  cpu {:>6} µs/delivery  rss {:>6.1} MiB  PUBLISH/notification {:.2}",
            result.driver,
            result.offered_deliveries_per_s,
            result.achieved_deliveries_per_s,
            result.lost,
            result.duplicates,
            result.latency.p50_ms,
            result.latency.p99_ms,
            result.latency.p999_ms,
            result.server_cpu_us_per_delivery.map(|c| format!("{c:.1}")).unwrap_or_else(|| "-".into()),
            result.server_rss_mib_max,
            result.redis_publish_per_notification
        );
        for n in &result.redis_nodes {
            println!(
                "          redis {:<21} {:>7} publishes ({:.3} per notification); per notification: cpu {:.1} µs, {:.2} commands, {:.0} bytes in, {:.0} bytes out",
                n.node,
                n.publishes,
                n.publishes_per_notification,
                n.cpu_us_per_notification,
                n.commands_per_notification,
                n.bytes_in_per_notification,
                n.bytes_out_per_notification
            );
        }
        let h = &result.host_cpu_us_per_notification;
        let us = |v: Option<f64>| v.map(|c| format!("{c:.1} µs")).unwrap_or_else(|| "-".into());
        println!(
            "          host per notification: notify {}, broker {}, redis {:.1} µs, load generator {}; {:.1} µs in all, {:.2} cores at {:.0} notifications/s",
            us(h.notify),
            us(h.broker),
            h.redis,
            us(h.load_generator),
            h.total,
            h.total * notifications_per_s / 1e6,
            notifications_per_s
        );
        let past_knee = !within_knee(&result);
        results.push(result);
        if past_knee {
            break;
        }
    }
    let passed = results.last().is_some_and(|r| !within_knee(r));
    match results.iter().take_while(|r| within_knee(r)).last() {
        Some(r) if passed => {
            println!(
                "knee: {:.0} deliveries/s is the highest rate with p99 <= {KNEE_P99_MS} ms and nothing lost",
                r.offered_deliveries_per_s
            )
        }
        Some(r) => println!(
            "knee not reached: {:.0} deliveries/s, the highest rate offered, kept p99 <= {KNEE_P99_MS} ms and lost nothing",
            r.offered_deliveries_per_s
        ),
        None => println!("knee: already passed at the first rate"),
    }
    if let Some(out) = &args.out {
        crate::report::write_json(out, &results)?;
    }
    for h in handles {
        h.abort();
    }
    if let Some(channel) = floor {
        let queue = format!("{}contoso.bench-broker", args.bus_prefix);
        channel.queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default()).await?;
    }
    Ok(())
}

/// Opens every user's tabs, each reading into `book`, and waits for the (user, process)
/// subscriptions the backplane makes for them.
async fn open_tabs(
    args: &Args,
    users: &[String],
    minter: &Minter,
    book: &Arc<Book>,
    nodes: &Nodes,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    let tabs = args.tabs.max(1);
    let slow = |k: usize| slow_tab(args.slow_fraction, k);
    // Tabs: user u's tab t goes to hub URL (u * tabs + t) mod n, so every user spans the processes.
    let connected = Instant::now();
    let limit = Arc::new(Semaphore::new(200));
    let mut handles = Vec::new();
    for (u, user) in users.iter().enumerate() {
        let token = minter.token(user)?;
        for t in 0..tabs {
            let url = args.hub_urls[(u * tabs + t) % args.hub_urls.len()].clone();
            let (token, book, permit) = (token.clone(), book.clone(), limit.clone().acquire_owned().await?);
            let (bare, slow, user, client, k) = (args.bare, slow(u * tabs + t), user.clone(), args.client.clone(), u * tabs + t);
            handles.push(tokio::spawn(async move {
                let ws = if bare { connect_bare(&url, &user, &client, k).await } else { connect_with(&url, &token, &client, k).await };
                drop(permit);
                let mut ws = if client.stateful { Tab::stateful(ws?, &client.protocol) } else { Tab::new(ws?, &client.protocol) };
                if slow {
                    // A tab that stopped reading: the socket stays open, nothing is read.
                    ws.never_read().await;
                    return Ok(());
                }
                while let Some(Ok(msg)) = ws.next().await {
                    let frame: &[u8] = match &msg {
                        Message::Text(text) => text.as_bytes(),
                        Message::Binary(bytes) => bytes,
                        _ => continue,
                    };
                    let mut ids = correlation_ids(frame);
                    if bare {
                        // The relayed envelope carries each message in both encodings.
                        ids.dedup();
                    }
                    ids.into_iter().for_each(|id| book.record(id));
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
    }
    let _ = limit.acquire_many(200).await?;
    let failed = handles.iter().filter(|h| h.is_finished()).count();
    anyhow::ensure!(failed == 0, "{failed} connections failed to open");
    // One SUBSCRIBE per (user, process): each user channel has exactly as many subscribers as
    // processes holding that user's tabs.
    let processes = args.hub_urls.len().min(tabs);
    let channels = args.backplane.channels();
    let expected_subscriptions = (users.len() * processes) as u64;
    let mut subscriptions = 0u64;
    // Subscriptions are coalesced and asynchronous: give the last ones a moment to land.
    let deadline = Instant::now() + Duration::from_secs(args.subscription_wait);
    let user_channels: Vec<String> = users.iter().map(|u| channels.user(u)).collect();
    while subscriptions != expected_subscriptions && Instant::now() < deadline {
        subscriptions = nodes.subscribers(&user_channels).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{} tabs of {} users open in {:.1} s; {subscriptions} user-channel subscriptions for {} (user, process) pairs",
        users.len() * tabs,
        users.len(),
        connected.elapsed().as_secs_f64(),
        expected_subscriptions
    );
    Ok(handles)
}
