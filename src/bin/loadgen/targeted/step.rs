//! One step of the `targeted` scenario as it is reported: what the tabs got at one rate, what
//! each process of the host spent per notification, and the knee (the highest rate with p99
//! within 20 ms and nothing lost).

use serde::Serialize;

use crate::{procfs::cpu_ticks, redis_nodes::NodeStep, report::Latency};

/// The knee: the highest rate whose p99 stays within this, with nothing lost.
const KNEE_P99_MS: f64 = 20.0;

pub fn within_knee(step: &StepResult) -> bool {
    step.latency.p99_ms <= KNEE_P99_MS && step.lost == 0
}

#[derive(Serialize)]
pub struct StepResult {
    pub driver: &'static str,
    pub offered_deliveries_per_s: f64,
    pub achieved_deliveries_per_s: f64,
    pub notifications: usize,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub latency: Latency,
    pub server_cpu_us_per_delivery: Option<f64>,
    /// Largest sum of the servers' RSS sampled during the step.
    pub server_rss_mib_max: f64,
    pub slow_tabs: usize,
    pub redis_publish_per_notification: f64,
    /// Per Redis master (one on a single server): its PUBLISH / SPUBLISH calls and CPU.
    pub redis_nodes: Vec<NodeStep>,
    /// What each process of the host spent per notification sent (µs of CPU).
    pub host_cpu_us_per_notification: HostCpu,
}

/// CPU per notification sent, by process: the notify processes, the broker, Redis (all
/// masters) and this tool, and their sum (what one notification costs the host).
#[derive(Serialize)]
pub struct HostCpu {
    notify: Option<f64>,
    broker: Option<f64>,
    redis: f64,
    load_generator: Option<f64>,
    total: f64,
}

/// CPU ticks of the broker's processes (none when no pid is given) and of this tool.
#[derive(Clone, Copy)]
pub struct HostTicks {
    broker: Option<u64>,
    load_generator: u64,
}

pub fn host_ticks(broker_pids: &[u32]) -> Option<HostTicks> {
    let broker = if broker_pids.is_empty() { None } else { broker_pids.iter().map(|p| cpu_ticks(*p)).sum() };
    Some(HostTicks { broker, load_generator: cpu_ticks(std::process::id())? })
}

impl HostCpu {
    /// From the notify processes' ticks and the host's before and after a step.
    pub fn of(notify_ticks: Option<u64>, host: Option<(HostTicks, HostTicks)>, redis: &[NodeStep], notifications: usize) -> Self {
        let per = |ticks: u64| ticks as f64 / TICKS_PER_S * 1e6 / notifications.max(1) as f64;
        let notify = notify_ticks.map(per);
        let broker = host.and_then(|(b, a)| Some(per(a.broker? - b.broker?)));
        let load_generator = host.map(|(b, a)| per(a.load_generator - b.load_generator));
        let redis = redis.iter().map(|n| n.cpu_us_per_notification).sum();
        let total = notify.unwrap_or(0.0) + broker.unwrap_or(0.0) + redis + load_generator.unwrap_or(0.0);
        Self { notify, broker, redis, load_generator, total }
    }
}

pub const TICKS_PER_S: f64 = 100.0; // USER_HZ on Linux

impl StepResult {
    /// The step's lines: the rate and its outcome, each Redis master, and the host's CPU.
    pub fn print(&self, notifications_per_s: f64) {
        println!(
            "{:<9} offered {:>7.0}/s  achieved {:>8.1}/s  lost {:>6}  dup {:>4}  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  cpu {:>6} µs/delivery  rss {:>6.1} MiB  PUBLISH/notification {:.2}",
            self.driver,
            self.offered_deliveries_per_s,
            self.achieved_deliveries_per_s,
            self.lost,
            self.duplicates,
            self.latency.p50_ms,
            self.latency.p99_ms,
            self.latency.p999_ms,
            self.server_cpu_us_per_delivery.map(|c| format!("{c:.1}")).unwrap_or_else(|| "-".into()),
            self.server_rss_mib_max,
            self.redis_publish_per_notification
        );
        for n in &self.redis_nodes {
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
        let h = &self.host_cpu_us_per_notification;
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
    }
}

/// Where the knee lies among the steps run: the last within it, if the run went past it.
pub fn print_knee(results: &[StepResult]) {
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
}
