//! The `targeted` scenario: cross-process fan-out. Users with tabs on every notify process get
//! per-user notifications at rising fixed rates, published straight onto the Redis backplane
//! (fan-out alone, as another pod or a .NET server would) or as `order.processed` events that go
//! through the notify consumer (user lookup, log, fan-out), or through RabbitMQ alone to this
//! tool (the consumer path's floor). Per rate: latency from the scheduled send to receipt on
//! every tab, loss and duplicates, the notify processes' CPU per delivery, Redis PUBLISH commands
//! per notification, and the CPU each process of the host spent per notification.

mod book;
mod step;

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use contoso::{
    bus::QueueType,
    cache::map_key,
    domain::{CorrelationId, Event, EventKind},
    hub::{lifetime::envelope, protocol::HubMessage},
};
use deadpool_redis::redis;
use serde_json::json;

use self::{
    book::{Book, open_tabs, slow_tab},
    step::{HostCpu, StepResult, TICKS_PER_S, host_ticks, print_knee, within_knee},
};
use crate::{
    hub::{BackplaneArgs, ClientArgs},
    procfs::{cpu_ticks, rss_kib},
    redis_nodes::{self, Nodes},
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
    let book = Arc::new(Book::new(ids, steps, readers));

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
    let floor_queue = format!("{}contoso.bench-broker", args.bus_prefix);
    let floor = match (broker, &amqp) {
        (true, Some((_, conn))) => {
            let (channel, book) = (conn.create_channel().await?, book.clone());
            crate::broker::consume(&channel, &exchange, &floor_queue, args.queue_type, args.prefetch, move |id| book.record(id)).await?;
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
        result.print(notifications_per_s);
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
    if let Some(channel) = floor {
        channel.queue_delete(floor_queue.into(), lapin::options::QueueDeleteOptions::default()).await?;
    }
    Ok(())
}
