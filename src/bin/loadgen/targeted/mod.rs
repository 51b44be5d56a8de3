//! The `targeted` scenario: cross-process fan-out. Users with tabs on every notify process get
//! per-user notifications at rising fixed rates, published straight onto the Redis backplane
//! (fan-out alone, as another pod or a .NET server would) or as `order.processed` events that go
//! through the notify consumer (user lookup, log, fan-out), or through RabbitMQ alone to this
//! tool (the consumer path's floor). Per rate: latency from the scheduled send to receipt on
//! every tab, loss and duplicates, the notify processes' CPU per delivery, Redis PUBLISH commands
//! per notification, and the CPU each process of the host spent per notification.

mod book;
mod source;
mod step;

use std::{
    ops::Range,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use contoso::{bus::QueueType, domain::CorrelationId};

use self::{
    book::{Book, open_tabs, slow_tab},
    source::Source,
    step::{HostCpu, StepResult, TICKS_PER_S, host_ticks, print_knee, within_knee},
};
use crate::{
    hub::{BackplaneArgs, ClientArgs},
    procfs::{cpu_ticks, rss_kib},
    redis_nodes::Nodes,
    report::Latency,
    shop::Minter,
};

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

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(!args.hub_urls.is_empty(), "--hub-urls needs at least one URL");
    let minter = Minter::new(&args.jwt_secret);
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let users: Vec<String> = (0..args.users).map(|u| format!("fan-{run_id}-{u}")).collect();
    let book = Arc::new(plan(&args, users.len()));
    let nodes = Nodes::discover(args.backplane.redis_mode, &args.backplane.redis_url).await?;
    let source = Source::connect(&args, &book).await?;
    if let Driver::Consumer = args.driver {
        source.map_users(&book, &users).await?;
    }
    // The broker floor has no tabs: this tool is each notification's one reader.
    let handles = match args.driver {
        Driver::Broker => Vec::new(),
        _ => open_tabs(&args, &users, &minter, &book, &nodes).await?,
    };
    let mut results = Vec::new();
    for step in 0..args.rates.len() {
        let result = run_step(&args, &book, &users, &nodes, &source, step).await?;
        result.print(args.rates[step] / tabs(&args) as f64);
        let past_knee = !within_knee(&result);
        results.push(result);
        if past_knee {
            break;
        }
    }
    print_knee(&results);
    if let Some(out) = &args.out {
        crate::report::write_json(out, &results)?;
    }
    for h in handles {
        h.abort();
    }
    source.close().await
}

fn tabs(args: &Args) -> usize {
    args.tabs.max(1)
}

/// Every notification of the run, decided up front, and how many tabs read each user's.
fn plan(args: &Args, users: usize) -> Book {
    let tabs = tabs(args);
    let mut ids = Vec::new();
    let mut steps = Vec::new();
    for rate in &args.rates {
        let n = (rate / tabs as f64 * args.duration as f64) as usize;
        steps.push(ids.len()..ids.len() + n);
        ids.extend((0..n).map(|_| CorrelationId::new().to_string()));
    }
    let slow = |k: usize| slow_tab(args.slow_fraction, k);
    let readers: Vec<u32> = match args.driver {
        Driver::Broker => vec![1; users],
        _ => (0..users).map(|u| (0..tabs).filter(|t| !slow(u * tabs + t)).count() as u32).collect(),
    };
    Book::new(ids, steps, readers)
}

/// One rate: its notifications sent on schedule, the late ones awaited (bounded), then counted
/// beside what every process of the host spent meanwhile.
async fn run_step(args: &Args, book: &Book, users: &[String], nodes: &Nodes, source: &Source, step: usize) -> anyhow::Result<StepResult> {
    let range = book.steps[step].clone();
    let cpu_before: Option<u64> = args.pids.iter().map(|p| cpu_ticks(*p)).sum();
    let host_before = host_ticks(&args.broker_pids);
    let redis_before = nodes.counters().await?;
    let (sent_for, rss_max_kib) = offer(args, book, users, source, step).await?;
    let (expected, received, duplicates) = settle(book, range.clone(), users.len(), Duration::from_secs(args.settle)).await;
    let cpu_after: Option<u64> = args.pids.iter().map(|p| cpu_ticks(*p)).sum();
    let host = host_before.zip(host_ticks(&args.broker_pids));
    let redis_nodes = nodes.step(&redis_before, &nodes.counters().await?, range.len());
    let notify_ticks = cpu_before.zip(cpu_after).map(|(b, a)| a - b);
    Ok(StepResult {
        driver: driver_name(args, nodes),
        offered_deliveries_per_s: args.rates[step],
        achieved_deliveries_per_s: received as f64 / sent_for.as_secs_f64(),
        notifications: range.len(),
        expected,
        received,
        lost: expected - received,
        duplicates,
        latency: Latency::of(&book.latency[step].lock().expect("lock")),
        server_cpu_us_per_delivery: notify_ticks.filter(|_| received > 0).map(|t| t as f64 / TICKS_PER_S * 1e6 / received as f64),
        server_rss_mib_max: rss_max_kib as f64 / 1024.0,
        slow_tabs: users.len() * tabs(args) - book.readers.iter().map(|r| *r as usize).sum::<usize>(),
        redis_publish_per_notification: redis_nodes.iter().map(|n| n.publishes_per_notification).sum(),
        host_cpu_us_per_notification: HostCpu::of(notify_ticks, host, &redis_nodes, range.len()),
        redis_nodes,
    })
}

/// Sends the step's notifications, each at its due time (which its latency counts from): how
/// long the sending took, and the notify processes' largest RSS meanwhile (KiB).
async fn offer(args: &Args, book: &Book, users: &[String], source: &Source, step: usize) -> anyhow::Result<(Duration, u64)> {
    let range = book.steps[step].clone();
    let per_s = args.rates[step] / tabs(args) as f64;
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
        let due_until = range.start + ((started.elapsed().as_secs_f64() * per_s) as usize).min(range.len());
        for slot in next..due_until {
            let due = started + Duration::from_secs_f64((slot - range.start) as f64 / per_s);
            book.due_nanos[slot].store(due.duration_since(book.epoch).as_nanos() as u64, Ordering::Relaxed);
        }
        source.send(book, users, next..due_until).await?;
        next = due_until;
    }
    Ok((started.elapsed(), rss_max_kib))
}

/// Waits, at most `wait`, for every reading tab to get each notification of `range`:
/// (deliveries expected, received, received more than once).
async fn settle(book: &Book, range: Range<usize>, users: usize, wait: Duration) -> (u64, u64, u64) {
    let readers_of = |slot: usize| book.readers[slot % users] as u64;
    let expected: u64 = range.clone().map(readers_of).sum();
    let count = || -> (u64, u64) {
        range.clone().fold((0, 0), |(got, dup), slot| {
            let n = book.received[slot].load(Ordering::Relaxed) as u64;
            (got + n.min(readers_of(slot)), dup + n.saturating_sub(readers_of(slot)))
        })
    };
    let deadline = Instant::now() + wait;
    while count().0 < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (received, duplicates) = count();
    (expected, received, duplicates)
}

fn driver_name(args: &Args, nodes: &Nodes) -> &'static str {
    match (args.bare, args.driver, args.client.stateful) {
        (true, _, _) => "relay",
        (false, Driver::Backplane, _) if nodes.masters().len() > 1 => "backplane on a cluster",
        (false, Driver::Backplane, true) => "backplane, stateful reconnect",
        (false, Driver::Backplane, false) => "backplane",
        (false, Driver::Consumer, true) => "consumer, stateful reconnect",
        (false, Driver::Consumer, false) => "consumer",
        (false, Driver::Broker, _) => "broker",
    }
}
