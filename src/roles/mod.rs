//! The one place that lists every role (a closed set). Each role's `start` spawns its
//! background work on `Shutdown::tasks`, registers its readiness probes and returns the
//! routes it serves. Roles never call each other: they meet through the bus, cache and store.

pub mod accept;
pub mod consumer;
pub mod notify;
pub mod process;
pub mod relay;

use std::sync::Arc;

use actix_web::web;

use crate::{
    backplane::Backplane,
    bus::EventBus,
    cache::{NotificationLog, StatusCache},
    config::{Role, Settings},
    health::Readiness,
    http::{Authenticator, upgrade::Upgrades},
    hub::resume::ResumeStore,
    shutdown::Shutdown,
    store::Store,
};

/// Routes a role adds to the HTTP server; called once per actix worker.
pub type Routes = Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

/// What the enabled roles serve over HTTP: actix-web routes and WebSocket upgrades.
#[derive(Default)]
pub struct Endpoints {
    pub routes: Vec<Routes>,
    pub upgrades: Upgrades,
}

/// The connections to the outside world, built once by `App::build` from the settings.
/// A field is `None` when no enabled role needs it.
pub struct Deps {
    pub settings: Settings,
    pub auth: Arc<Authenticator>,
    /// For request handlers (actix worker threads).
    pub store: Option<Store>,
    /// For background loops (relay, consumers) on the main runtime, so shutting the HTTP
    /// workers down never strands a connection they need.
    pub background_store: Option<Store>,
    pub cache: Option<Arc<dyn StatusCache>>,
    pub bus: Option<Arc<dyn EventBus>>,
    pub notifications: Option<Arc<dyn NotificationLog>>,
    /// The hub backplane (notify only).
    pub backplane: Option<Arc<dyn Backplane>>,
    /// Where stateful-reconnect connections are kept for a resume (notify only).
    pub resume: Option<Arc<dyn ResumeStore>>,
    /// Becomes true once migrations are applied; background loops wait for it.
    pub db_ready: tokio::sync::watch::Receiver<bool>,
}

pub fn start(deps: &Deps, shutdown: &Shutdown, readiness: &mut Readiness) -> anyhow::Result<Endpoints> {
    let roles = &deps.settings.roles;
    let mut endpoints = Endpoints::default();
    let relay_wake = if roles.contains(Role::Accept) || roles.contains(Role::Process) { Some(relay::start(deps, shutdown)?) } else { None };
    if roles.contains(Role::Accept) {
        endpoints.routes.push(accept::start(deps, shutdown, readiness, relay_wake.clone().expect("relay runs for accept"))?);
    }
    if roles.contains(Role::Process) {
        process::start(deps, shutdown, readiness, relay_wake.clone().expect("relay runs for process"))?;
    }
    if roles.contains(Role::Notify) {
        notify::start(deps, shutdown, readiness, &mut endpoints)?;
    }
    Ok(endpoints)
}

/// Readiness probes for Redis and RabbitMQ (the database probe is registered by `App`).
pub fn add_dependency_probes(readiness: &mut Readiness, cache: &Arc<dyn StatusCache>, bus: &Arc<dyn EventBus>) {
    let cache = cache.clone();
    let bus = bus.clone();
    readiness.add("redis", move || {
        let cache = cache.clone();
        async move { cache.ping().await.map_err(|e| e.to_string()) }
    });
    readiness.add("rabbitmq", move || {
        let bus = bus.clone();
        async move { bus.ping().await.map_err(|e| e.to_string()) }
    });
}
