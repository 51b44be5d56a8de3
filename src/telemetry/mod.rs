//! Logs, traces and metrics: the tracing subscriber (JSON by default, and OTLP traces when an
//! endpoint is set) and the one Prometheus recorder of the process. Metric names live in
//! `names` so dashboards have one source.

pub mod otel;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// How log lines are written: one JSON object per line (the default), or for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Every metric name the process exports. Labels are documented where they are recorded.
pub mod names {
    pub const HTTP_REQUESTS: &str = "contoso_http_requests_total";
    pub const HTTP_DURATION: &str = "contoso_http_request_duration_seconds";
    pub const ORDERS_ACCEPTED: &str = "contoso_orders_accepted_total";
    pub const OUTBOX_BACKLOG: &str = "contoso_outbox_backlog";
    pub const OUTBOX_PUBLISHED: &str = "contoso_outbox_published_total";
    pub const PUBLISH_CONFIRMS: &str = "contoso_bus_publish_confirms_total";
    pub const PUBLISH_FAILURES: &str = "contoso_bus_publish_failures_total";
    pub const BUS_RECONNECTS: &str = "contoso_bus_reconnects_total";
    pub const EVENTS_CONSUMED: &str = "contoso_events_consumed_total";
    pub const EVENTS_ACKED: &str = "contoso_events_acked_total";
    pub const EVENTS_REQUEUED: &str = "contoso_events_requeued_total";
    pub const EVENTS_DEAD_LETTERED: &str = "contoso_events_dead_lettered_total";
    pub const EVENTS_IN_FLIGHT: &str = "contoso_events_in_flight";
    pub const PROCESSING_DURATION: &str = "contoso_processing_duration_seconds";
    /// Deliveries handed to a handler at once (the process role writes each batch in one go).
    pub const CONSUMER_BATCH_SIZE: &str = "contoso_consumer_batch_size";
    /// New orders written in one transaction (the accept role's group commit).
    pub const ORDER_BATCH_SIZE: &str = "contoso_order_batch_size";
}

/// Installs the global subscriber. Safe to call more than once (tests): later calls are no-ops.
pub fn init_logging(format: LogFormat, filter: &str) {
    drop(init(format, filter, None));
}

/// Where traces go: the OTLP/HTTP endpoint (`http://collector:4318`) and the roles this
/// process runs, for the resource.
pub struct Otlp<'a> {
    pub endpoint: &'a str,
    pub roles: &'a str,
}

/// Flushes the spans not yet exported when the process ends.
#[must_use]
pub struct TelemetryGuard(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            // The exporter's HTTP client blocks; it must not do so on a runtime thread.
            let _ = std::thread::spawn(move || provider.shutdown()).join();
        }
    }
}

/// Installs the global subscriber: logs, and traces to `otlp` when given.
pub fn init(format: LogFormat, filter: &str, otlp: Option<Otlp<'_>>) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let (provider, traces) = match otlp {
        None => (None, None),
        Some(Otlp { endpoint, roles }) => {
            // The exporter's blocking HTTP client is built off the runtime, for the same reason.
            let (endpoint, roles) = (endpoint.to_owned(), roles.to_owned());
            let (provider, layer) = std::thread::spawn(move || otel::layer(&endpoint, &roles))
                .join()
                .map_err(|_| anyhow::anyhow!("building the OTLP exporter panicked"))??;
            (Some(provider), Some(layer))
        }
    };
    let registry = registry.with(traces);
    let res = match format {
        LogFormat::Json => registry.with(fmt::layer().json().flatten_event(true).with_current_span(false).with_span_list(false)).try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().compact()).try_init(),
    };
    drop(res);
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    }
    Ok(TelemetryGuard(provider))
}

/// The process-wide Prometheus recorder, installed on first use. Apps built in one test
/// process share it, as metrics are process-global by design.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .expect("buckets are not empty")
            .set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0])
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness); ours still renders what we record through it only
        // when it is the global one, so prefer installing and ignore a second attempt.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}
