//! Role `notify`: the SignalR hub at `/hubs/order-status` (the generic `hub` with the order
//! methods of `order_hub`) and the consumer of `contoso.order-notification` that logs each
//! notification for its user and fans it out through the backplane.

mod consumer;
mod order_hub;

use std::{sync::Arc, time::Duration};

use actix_web::web;
use anyhow::Context;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::{Deps, Endpoints};
use crate::{
    backplane::Channels,
    health::Readiness,
    hub::{
        HubContext, HubLifetime,
        endpoint::{self, HubEndpoint},
        negotiate::TokenSigner,
        resume::Resume,
    },
    shutdown::Shutdown,
};

/// Where the hub is served (CONTRACT §5).
pub const HUB_PATH: &str = "/hubs/order-status";

pub fn start(deps: &Deps, shutdown: &Shutdown, readiness: &mut Readiness, endpoints: &mut Endpoints) -> anyhow::Result<()> {
    let store = deps.background_store.clone().context("role notify needs a database")?;
    let cache = deps.cache.clone().context("role notify needs redis")?;
    let log = deps.notifications.clone().context("role notify needs a notification log")?;
    let bus = deps.bus.clone().context("role notify needs a bus")?;
    let backplane = deps.backplane.clone().context("role notify needs a backplane")?;
    super::add_dependency_probes(readiness, &cache, &bus);
    {
        let backplane = backplane.clone();
        readiness.add("backplane", move || {
            let backplane = backplane.clone();
            async move { backplane.ping().await.map_err(|e| e.to_string()) }
        });
    }
    let settings = &deps.settings;
    let lifetime = HubLifetime::start(Channels::new(&settings.channel_prefix, &settings.hub_name), backplane);
    let hub = Arc::new(order_hub::OrderStatusHub { store: store.clone(), cache: cache.clone(), log: log.clone() });
    let mut ctx = HubContext::new(lifetime.clone(), hub, settings.hub.clone());
    if let (Some(store), Some(limits)) = (deps.resume.clone(), settings.hub.stateful_reconnect) {
        ctx = ctx.with_resume(Arc::new(Resume::new(store, limits)));
    }
    let ctx = Arc::new(ctx);
    let endpoint = web::Data::new(HubEndpoint {
        ctx,
        auth: deps.auth.clone(),
        shutdown: shutdown.clone(),
        signer: TokenSigner::new(negotiate_key(deps), settings.hub.negotiate_token_ttl),
    });
    drain_on_shutdown(&lifetime, settings, shutdown);
    consumer::start(deps, shutdown, consumer::Notifier { store, cache, log, lifetime })?;
    endpoints.upgrades.add(HUB_PATH, endpoint::upgrade_handler(endpoint.clone().into_inner()));
    endpoints.routes.push(Arc::new(move |cfg: &mut web::ServiceConfig| endpoint::configure(cfg, HUB_PATH, endpoint.clone())));
    Ok(())
}

/// Phase 3 of the shutdown (see `shutdown`): the consumer has stopped; close every connection
/// over `--drain-spread`, keeping a second of the shutdown timeout for what follows.
fn drain_on_shutdown(lifetime: &Arc<HubLifetime>, settings: &crate::config::Settings, shutdown: &Shutdown) {
    const AFTER_SPREAD: Duration = Duration::from_secs(1);
    if settings.drain_spread + AFTER_SPREAD > settings.shutdown_timeout {
        tracing::warn!(
            drain_spread_s = settings.drain_spread.as_secs(),
            shutdown_timeout_s = settings.shutdown_timeout.as_secs(),
            "--drain-spread does not fit in --shutdown-timeout: the spread will be shortened"
        );
    }
    let lifetime = lifetime.clone();
    let spread = settings.drain_spread;
    shutdown.on_drain(Box::new(move |deadline| {
        Box::pin(async move {
            let budget = deadline.saturating_duration_since(tokio::time::Instant::now()).saturating_sub(AFTER_SPREAD);
            lifetime.drain(spread.min(budget)).await;
        })
    }));
}

/// The negotiate token key: configured, else derived from the JWT secret (both shared by
/// every notify pod), else random per process (negotiate then works only within one pod).
fn negotiate_key(deps: &Deps) -> [u8; 32] {
    let source = deps.settings.negotiate_secret.as_ref().or(deps.settings.jwt.secret.as_ref());
    match source {
        Some(secret) => {
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose().as_bytes()).expect("any key length");
            mac.update(b"contoso negotiate token key");
            mac.finalize().into_bytes().into()
        }
        None => {
            tracing::warn!("no --negotiate-secret or --jwt-secret: negotiate tokens are valid on this process only");
            rand::random()
        }
    }
}
