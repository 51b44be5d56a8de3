//! Role `accept`: the order API of CONTRACT §2 (`/api/...`). Orders are written with their
//! `order.accepted` outbox row in one transaction; the relay publishes them.

mod dev_token;
mod openapi;
mod orders;

use std::{sync::Arc, time::Duration};

use actix_web::web;
use anyhow::Context;
use tokio::sync::Notify;

use super::{Deps, Routes};
use crate::{cache::StatusCache, health::Readiness, http::rate_limit::PerUserLimit, shutdown::Shutdown, store::Store};

/// Largest accepted request body (CONTRACT §2: 413 above).
pub const MAX_BODY: usize = 64 * 1024;

/// What the accept handlers share.
pub struct AcceptState {
    pub store: Store,
    pub cache: Arc<dyn StatusCache>,
    pub status_ttl: Duration,
    /// Wakes the outbox relay after a commit.
    pub relay_wake: Arc<Notify>,
    /// Orders per user (`None`: no limit).
    pub order_limit: Option<Arc<PerUserLimit>>,
}

/// A burst of orders one user may place at once, in multiples of the per-second rate.
const ORDER_BURST_FACTOR: u32 = 4;

pub fn start(deps: &Deps, shutdown: &Shutdown, readiness: &mut Readiness, relay_wake: Arc<Notify>) -> anyhow::Result<Routes> {
    let store = deps.store.clone().context("role accept needs a database")?;
    let cache = deps.cache.clone().context("role accept needs redis")?;
    let bus = deps.bus.clone().context("role accept needs a bus")?;
    super::add_dependency_probes(readiness, &cache, &bus);
    let rate = deps.settings.orders_per_second_per_user;
    let order_limit = PerUserLimit::new(rate, rate.saturating_mul(ORDER_BURST_FACTOR));
    if let Some(limit) = &order_limit {
        limit.spawn_cleanup(shutdown.token.clone());
    }
    let state = web::Data::new(AcceptState { store, cache, status_ttl: deps.settings.status_ttl, relay_wake, order_limit });
    let dev_auth = deps.settings.dev_auth;
    Ok(Arc::new(move |cfg: &mut web::ServiceConfig| {
        let mut api = web::scope("/api")
            .route("/products", web::get().to(orders::list_products))
            .service(web::resource("/orders").route(web::post().to(orders::place_order)).route(web::get().to(orders::list_orders)))
            .route("/orders/{correlation_id}", web::get().to(orders::get_order))
            .route("/openapi.json", web::get().to(openapi::serve));
        if dev_auth {
            api = api.route("/dev/token", web::post().to(dev_token::mint));
        }
        cfg.app_data(state.clone()).app_data(web::PayloadConfig::new(MAX_BODY)).service(api);
    }))
}
