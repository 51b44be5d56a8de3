//! The HELP text of every metric the process exports, `contoso_build_info`, and the process
//! metrics (CPU, memory, open files) refreshed on each scrape. Here, above every layer, because
//! the names come from each module that records them.

use std::sync::OnceLock;

use crate::{
    backplane::{canary::names as canary, redis::names as redis},
    hub::metrics_names as hub,
    telemetry::names as app,
};

const HELP: &[(&str, &str)] = &[
    (app::HTTP_REQUESTS, "HTTP requests by method, route pattern and status."),
    (app::HTTP_DURATION, "HTTP request latency in seconds."),
    (app::ORDERS_ACCEPTED, "Orders accepted by the API."),
    (app::OUTBOX_BACKLOG, "Outbox rows not yet published to RabbitMQ."),
    (app::OUTBOX_PUBLISHED, "Outbox rows published with a broker confirm."),
    (app::PUBLISH_CONFIRMS, "Publisher confirms received from RabbitMQ."),
    (app::PUBLISH_FAILURES, "Publishes RabbitMQ refused or did not confirm."),
    (app::BUS_RECONNECTS, "Reconnects to RabbitMQ."),
    (app::EVENTS_CONSUMED, "Deliveries taken from a queue."),
    (app::EVENTS_ACKED, "Deliveries acknowledged after handling."),
    (app::EVENTS_REQUEUED, "Deliveries sent back to their queue after a failure."),
    (app::EVENTS_DEAD_LETTERED, "Deliveries sent to a dead-letter queue, by reason."),
    (app::EVENTS_IN_FLIGHT, "Deliveries being handled now."),
    (app::PROCESSING_DURATION, "Time to handle a delivery (in a batch, the batch's time), in seconds."),
    (app::CONSUMER_BATCH_SIZE, "Deliveries handled together."),
    (app::ORDER_BATCH_SIZE, "New orders written in one transaction."),
    (hub::CONNECTIONS, "Open hub connections, by hub protocol."),
    (
        hub::NOTIFICATION_LATENCY,
        "Seconds from an order's acceptance to its notification written to a tab's socket, per tab (the SLO's metric).",
    ),
    (hub::CONNECTS, "Hub connections opened (handshake done), by hub protocol."),
    (hub::DISCONNECTS, "Hub connections closed, by reason."),
    (hub::HANDSHAKE_FAILURES, "Failed SignalR handshakes and refused WebSocket upgrades."),
    (hub::MESSAGES_IN, "Hub messages received from clients."),
    (hub::MESSAGES_OUT, "Notifications written to client sockets."),
    (hub::QUEUE_FULL_CLOSES, "Connections closed because their send queue was full."),
    (hub::REFUSED, "WebSocket upgrades refused by a connection limit, by limit."),
    (hub::INVOCATIONS_LIMITED, "Hub invocations refused by the per-connection rate limit."),
    (hub::STATEFUL_RESUMES, "Stateful reconnect resumes by outcome: resumed, or refused (unknown, overflowed, in-use, unavailable)."),
    (hub::STATEFUL_OVERFLOWS, "Stateful connections whose unacknowledged messages went past the buffer: no longer resumable."),
    (hub::INVOCATION_DURATION, "Time to run a client invocation, by method, in seconds."),
    (hub::BACKPLANE_PUBLISHED, "Messages published to the backplane."),
    (hub::BACKPLANE_RECEIVED, "Messages received from the backplane."),
    (redis::CONNECTED, "1 while the Redis backplane's pub/sub connection is up."),
    (redis::RECONNECTS, "Reconnects of the Redis backplane's pub/sub connection."),
    (redis::PUBLISH_BATCH, "PUBLISHes sent to Redis in one pipeline."),
    (canary::OK, "1 while the backplane's canaries to itself come back."),
    (canary::FAILURES, "Times the backplane's canaries stopped coming back and its subscription was renewed."),
    (BUILD_INFO, "The running build: version and revision as labels, value 1."),
];

pub const BUILD_INFO: &str = "contoso_build_info";

fn collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Registers every HELP text and the build info; once per process is enough, more is harmless.
pub fn describe() {
    for (name, help) in HELP {
        metrics::describe_counter!(*name, *help);
    }
    collector().describe();
    let revision = option_env!("CONTOSO_REVISION").unwrap_or("unknown");
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "revision" => revision).set(1.0);
}

/// Refreshes the process metrics; called before each scrape is rendered.
pub fn refresh_process_metrics() {
    collector().collect();
}
