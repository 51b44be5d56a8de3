//! `/health/live` and `/health/ready` (CONTRACT §6). Roles register one probe per dependency;
//! readiness runs them concurrently, each with a short timeout, and reports why it fails.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::shutdown::Shutdown;

/// How long one dependency may take to answer a readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type ProbeFn = Arc<dyn Fn() -> ProbeFuture + Send + Sync>;

/// The dependencies this process must reach to be ready, by name ("database", "redis", "rabbitmq").
#[derive(Clone, Default)]
pub struct Readiness {
    probes: Vec<(&'static str, ProbeFn)>,
}

impl Readiness {
    pub fn add<F, Fut>(&mut self, name: &'static str, probe: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        if self.probes.iter().any(|(n, _)| *n == name) {
            return;
        }
        self.probes.push((name, Arc::new(move || Box::pin(probe()))));
    }

    /// The reasons the process is not ready; empty when ready.
    pub async fn check(&self, shutdown: &Shutdown) -> Vec<String> {
        let mut reasons = Vec::new();
        if shutdown.is_draining() {
            reasons.push("draining".to_owned());
        }
        let results = futures_util::future::join_all(self.probes.iter().map(|(name, probe)| {
            let fut = probe();
            async move {
                match tokio::time::timeout(PROBE_TIMEOUT, fut).await {
                    Ok(Ok(())) => None,
                    Ok(Err(why)) => Some(format!("{name}: {why}")),
                    Err(_) => Some(format!("{name}: no answer within {} ms", PROBE_TIMEOUT.as_millis())),
                }
            }
        }))
        .await;
        reasons.extend(results.into_iter().flatten());
        reasons
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/health/live", web::get().to(live)).route("/health/ready", web::get().to(ready));
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "live" }))
}

async fn ready(readiness: web::Data<Readiness>, shutdown: web::Data<Shutdown>) -> HttpResponse {
    let reasons = readiness.check(&shutdown).await;
    if reasons.is_empty() {
        HttpResponse::Ok().json(json!({ "status": "ready" }))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({ "status": "not-ready", "reasons": reasons }))
    }
}
