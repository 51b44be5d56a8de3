//! Traces over OpenTelemetry: the OTLP exporter behind `--otlp-endpoint`, and W3C trace
//! context in and out of the places a notification travels through (HTTP, the outbox row, AMQP
//! headers, the backplane envelope), so one order is one trace from the POST to each tab.
//! Without an endpoint no span has a trace context, and nothing is carried.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
};

use opentelemetry::{
    KeyValue,
    propagation::TextMapPropagator,
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const TRACEPARENT: &str = "traceparent";

/// Whether spans are exported: without it nothing below does any work on a hot path.
static ENABLED: AtomicBool = AtomicBool::new(false);

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The exporter and the layer that feeds it, for the subscriber. Keep the provider: dropping
/// or shutting it down flushes the spans not yet sent.
pub fn layer<S>(
    endpoint: &str,
    roles: &str,
) -> anyhow::Result<(SdkTracerProvider, tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>)>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpJson)
        .with_endpoint(url)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the OTLP exporter for --otlp-endpoint: {e}"))?;
    let resource = Resource::builder()
        .with_service_name("contoso")
        .with_attributes([KeyValue::new("contoso.roles", roles.to_owned()), KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))])
        .build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let tracer = provider.tracer("contoso");
    ENABLED.store(true, Ordering::Relaxed);
    Ok((provider, tracing_opentelemetry::layer().with_tracer(tracer)))
}

/// The W3C `traceparent` of `span`, or `None` when it belongs to no trace (tracing is off).
pub fn traceparent(span: &Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The `traceparent` of the current span.
pub fn current() -> Option<String> {
    traceparent(&Span::current())
}

/// Makes `span` a child of the remote span a `traceparent` names; a missing or malformed one
/// leaves `span` where it was (a root, or a child of the current span).
pub fn follow(span: &Span, traceparent: Option<&str>) {
    let Some(value) = traceparent.filter(|v| enabled() && v.len() <= 128) else { return };
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), value.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}
