//! The request middleware: one span and one log line per request (method, route, status,
//! latency; never the query string or the Authorization header), HTTP metrics, and the
//! fallback that turns actix's plain-text errors (404, 405, 413, ...) into problem+json.

use std::time::Instant;

use actix_web::{
    Error,
    body::{BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::header::CONTENT_TYPE,
    middleware::Next,
};
use tracing::Instrument;

use super::problem::{PROBLEM_JSON, Problem};
use crate::telemetry::{names, otel};

pub async fn observe(req: ServiceRequest, next: Next<impl MessageBody + 'static>) -> Result<ServiceResponse<BoxBody>, Error> {
    let started = Instant::now();
    let method = method_label(req.method().as_str());
    let path = req.path().to_owned();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!(
        "http",
        method,
        %route,
        status = tracing::field::Empty,
        otel.name = tracing::field::Empty,
        otel.kind = "server"
    );
    if otel::enabled() {
        span.record("otel.name", format_args!("{method} {route}"));
        // A caller's trace (W3C `traceparent`) continues here.
        otel::follow(&span, req.headers().get("traceparent").and_then(|v| v.to_str().ok()));
    }
    let res = next.call(req).instrument(span.clone()).await?;
    let res = problem_fallback(res.map_into_boxed_body());
    let status = res.status().as_u16();
    span.record("status", status);
    span.in_scope(|| record(method, &route, &path, status, started.elapsed()));
    Ok(res)
}

/// The log line and metrics of one request; also used for requests answered outside the
/// middleware (WebSocket upgrades).
pub fn record(method: &str, route: &str, path: &str, status: u16, elapsed: std::time::Duration) {
    let method = method_label(method);
    let path = truncate(path, MAX_LOGGED_PATH);
    // Health probes and scrapes are frequent and boring; they are counted but not logged.
    if !route.starts_with("/health") && route != "/metrics" {
        tracing::info!(method, route, path = %path, status, latency_ms = elapsed.as_secs_f64() * 1e3, "request");
    }
    let labels = [("method", method.to_owned()), ("route", route.to_owned()), ("status", status.to_string())];
    metrics::counter!(names::HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(names::HTTP_DURATION, &labels).record(elapsed.as_secs_f64());
}

/// Longest request path written to a log line, in bytes (a longer one is cut, marked with `…`).
const MAX_LOGGED_PATH: usize = 256;

fn truncate(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let end = (0..=max).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
    format!("{}…", &s[..end]).into()
}

/// A request's method as a metric label and log field: one of a fixed set, because a client
/// can invent any number of methods and each would be a new time series.
pub fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"];
    KNOWN.into_iter().find(|m| *m == method).unwrap_or("OTHER")
}

fn problem_fallback(res: ServiceResponse<BoxBody>) -> ServiceResponse<BoxBody> {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_problem = res.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with(PROBLEM_JSON));
    let is_readiness = res.request().path() == "/health/ready";
    if is_problem || is_readiness {
        return res;
    }
    let detail = match status.as_u16() {
        404 => "no such resource".to_owned(),
        405 => "method not allowed on this resource".to_owned(),
        413 => "request body is too large".to_owned(),
        415 => "unsupported media type".to_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let (req, old) = res.into_parts();
    let mut new = Problem::new(status, detail).response();
    for (name, value) in old.headers() {
        if name != CONTENT_TYPE && name != actix_web::http::header::CONTENT_LENGTH {
            new.headers_mut().insert(name.clone(), value.clone());
        }
    }
    ServiceResponse::new(req, new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_share_one_label_and_long_paths_are_cut() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("FOOBAR"), "OTHER");
        assert_eq!(method_label("get"), "OTHER");
        let long = "é".repeat(300);
        let cut = truncate(&long, MAX_LOGGED_PATH);
        assert!(cut.len() <= MAX_LOGGED_PATH + '…'.len_utf8());
        assert!(cut.ends_with('…'));
        assert_eq!(truncate("/api/orders", MAX_LOGGED_PATH), "/api/orders");
    }
}
