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
use crate::telemetry::names;

pub async fn observe(req: ServiceRequest, next: Next<impl MessageBody + 'static>) -> Result<ServiceResponse<BoxBody>, Error> {
    let started = Instant::now();
    let method = req.method().to_string();
    let path = req.path().to_owned();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!("http", %method, %route, status = tracing::field::Empty);
    let res = next.call(req).instrument(span.clone()).await?;
    let res = problem_fallback(res.map_into_boxed_body());
    let status = res.status().as_u16();
    let elapsed = started.elapsed();
    span.record("status", status);
    // Health probes and scrapes are frequent and boring; they are counted but not logged.
    if !route.starts_with("/health") && route != "/metrics" {
        span.in_scope(|| tracing::info!(%method, %route, %path, status, latency_ms = elapsed.as_secs_f64() * 1e3, "request"));
    }
    let labels = [("method", method), ("route", route), ("status", status.to_string())];
    metrics::counter!(names::HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(names::HTTP_DURATION, &labels).record(elapsed.as_secs_f64());
    Ok(res)
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
