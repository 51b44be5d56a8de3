//! The dependencies `App::build` wires from settings, each `None` where no role of the process
//! needs it: the stores (and their migrations), the Redis cache and notification log or their
//! in-memory stand-ins, the backplane, the resume store and the bus.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use tokio::sync::watch;

use crate::{
    backplane::{
        Backplane, Channels,
        canary::CanarySettings,
        memory::{MemoryBackplane, MemoryHub},
        redis::RedisBackplane,
    },
    bus::{EventBus, MemoryBus, RabbitBus, Topology},
    cache::{MemoryCache, NotificationLog, RedisCache, StatusCache},
    config::{RedisMode, Role, Settings},
    health::Readiness,
    hub::resume::{MemoryResumeStore, RedisResumeStore, ResumeStore},
    shutdown::Shutdown,
    store::Store,
};

/// The store for request handlers and the one for background loops.
pub(super) fn stores(settings: &Settings) -> anyhow::Result<(Option<Store>, Option<Store>)> {
    let Some(url) = &settings.database_url else { return Ok((None, None)) };
    let store = Store::new(url.expose(), settings.db_pool_size).context("invalid --database-url")?;
    let background = if store.is_embedded() {
        tracing::info!(url = url.expose(), "using the embedded database");
        // One SQLite file has one writer: every part of the process shares the store.
        store.clone()
    } else {
        // Small on purpose: on a 2-core box a larger background pool measured slower (bench/process.sh).
        Store::new(url.expose(), 4).context("invalid --database-url")?
    };
    Ok((Some(store), Some(background)))
}

/// Starts the migrations on `store` and adds the database to readiness; the receiver turns true
/// once they are applied (never without a store).
pub(super) fn migrate(store: Option<&Store>, settings: &Settings, shutdown: &Shutdown, readiness: &mut Readiness) -> watch::Receiver<bool> {
    let (done, migrated) = watch::channel(false);
    let Some(store) = store else { return migrated };
    // The in-process bus forgets what it held when the process stops: send it again.
    let requeue = settings.amqp_url.is_none();
    start_migrations(store.clone(), done, requeue, shutdown);
    let (store, ready) = (store.clone(), migrated.clone());
    readiness.add("database", move || {
        let store = store.clone();
        let migrated = *ready.borrow();
        async move {
            if !migrated {
                return Err("migrations not applied yet".to_owned());
            }
            store.ping().await.map_err(|e| e.to_string())
        }
    });
    migrated
}

/// Applies migrations in the background, retrying with backoff while the database is away.
/// With `requeue`, also writes `order.accepted` again for every unfinished order, before the
/// relay and the consumers start.
fn start_migrations(store: Store, done: watch::Sender<bool>, requeue: bool, shutdown: &Shutdown) {
    let token = shutdown.token.clone();
    shutdown.spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            let migrated = store.migrate().await;
            let requeued = match (&migrated, requeue) {
                (Ok(()), true) => store.requeue_unfinished().await.map(Some),
                _ => Ok(None),
            };
            match migrated.and(requeued) {
                Ok(requeued) => {
                    if let Some(n) = requeued.filter(|n| *n > 0) {
                        tracing::info!(orders = n, "unfinished orders sent to processing again");
                    }
                    done.send_replace(true);
                    tracing::info!("database migrations applied");
                    return;
                }
                Err(err) => tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "database not ready"),
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = token.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}

/// The Redis client every Redis-backed seam shares, with `--redis-url`.
pub(super) fn redis(settings: &Settings) -> anyhow::Result<Option<Arc<RedisCache>>> {
    let Some(url) = &settings.redis_url else { return Ok(None) };
    let cache = RedisCache::new(settings.redis_mode, url.expose(), settings.db_pool_size, settings.retention);
    Ok(Some(Arc::new(cache.context("invalid --redis-url")?)))
}

/// The status cache and the notification log, one object behind both seams.
type Caches = (Option<Arc<dyn StatusCache>>, Option<Arc<dyn NotificationLog>>);

/// The status cache and the notification log: Redis, or (`all` without Redis) memory.
pub(super) fn caches(settings: &Settings, redis: Option<&Arc<RedisCache>>) -> Caches {
    if let Some(r) = redis {
        return (Some(r.clone()), Some(r.clone()));
    }
    if !settings.roles.all {
        return (None, None);
    }
    tracing::info!("no --redis-url: status cache, notification log and backplane are in-process");
    let memory = Arc::new(MemoryCache::new(settings.retention));
    (Some(memory.clone()), Some(memory))
}

/// Notify pods of one deployment meet on Redis; without Redis (`all` on a laptop) the process is
/// its own, in-memory backplane.
pub(super) fn backplane(
    settings: &Settings,
    redis: Option<&RedisCache>,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<Arc<dyn Backplane>>> {
    if !settings.roles.contains(Role::Notify) {
        return Ok(None);
    }
    let (Some(url), Some(redis)) = (&settings.redis_url, redis) else {
        return Ok(Some(Arc::new(MemoryBackplane::new(Arc::new(MemoryHub::default())))));
    };
    let channels = Channels::new(&settings.channel_prefix, &settings.hub_name);
    let canary = settings
        .backplane_check_interval
        .map(|interval| CanarySettings { channel: channels.internal(&format!("canary:{}", uuid::Uuid::new_v4().simple())), interval });
    let (client, always, token) = (redis.client().clone(), vec![channels.all()], shutdown.connections.clone());
    let backplane = match settings.redis_mode {
        RedisMode::Standalone => RedisBackplane::start(url.expose(), client, always, canary, token),
        RedisMode::Cluster => {
            let seeds = crate::redis_client::seeds(url.expose());
            RedisBackplane::start_cluster(seeds, settings.backplane_pubsub, client, always, canary, token)
        }
    };
    Ok(Some(backplane.context("invalid --redis-url")?))
}

/// Where notify keeps stateful-reconnect connections: Redis, shared by every notify process,
/// or this process's memory (`all` without Redis).
pub(super) fn resume_store(settings: &Settings, redis: Option<&RedisCache>) -> Option<Arc<dyn ResumeStore>> {
    if !settings.roles.contains(Role::Notify) || settings.hub.stateful_reconnect.is_none() {
        return None;
    }
    Some(match redis {
        Some(redis) => {
            let prefix = format!("{}{}:resume:", settings.channel_prefix, settings.hub_name);
            Arc::new(RedisResumeStore::new(redis.client().clone(), prefix))
        }
        None => Arc::new(MemoryResumeStore::default()),
    })
}

/// RabbitMQ with `--amqp-url`; the in-process bus for `all` without it.
pub(super) fn bus(settings: &Settings, shutdown: &Shutdown) -> Option<Arc<dyn EventBus>> {
    let topology =
        Topology { prefix: settings.bus_prefix.clone(), delivery_limit: settings.delivery_limit, queue_type: settings.queue_type };
    match &settings.amqp_url {
        Some(url) => Some(RabbitBus::start(url.clone(), topology, &format!("contoso-{}", settings.roles), shutdown)),
        None if settings.roles.all => {
            tracing::info!("no --amqp-url: events go through the in-process bus");
            Some(Arc::new(MemoryBus::new(topology.broker_delivery_limit())))
        }
        None => None,
    }
}
