//! `App::build` turns settings into a bound, ready-to-run server with its background tasks;
//! `run_until_stopped` serves until the stop future resolves, then shuts down in order.
//! `main` and the integration tests both go through here.

use std::{future::Future, net::TcpListener, sync::Arc, time::Duration};

use actix_web::{HttpResponse, dev::Server, middleware::from_fn, web};
use anyhow::Context;

use crate::{
    backplane::{
        Backplane,
        canary::CanarySettings,
        memory::{MemoryBackplane, MemoryHub},
        redis::RedisBackplane,
    },
    bus::{EventBus, MemoryBus, RabbitBus, Topology},
    cache::{MemoryCache, NotificationLog, RedisCache, StatusCache},
    config::{RedisMode, Settings},
    health::{self, Readiness},
    http::{self, Authenticator, middleware::observe},
    hub::resume::{MemoryResumeStore, RedisResumeStore, ResumeStore},
    roles::{self, Deps},
    shutdown::Shutdown,
    store::Store,
    telemetry,
};

pub struct App {
    server: Server,
    port: u16,
    /// The internal listener of `--admin-listen` and its port.
    admin: Option<(Server, u16)>,
    shutdown: Shutdown,
    shutdown_timeout: Duration,
}

/// `/health/*` and `/metrics`: what probes and Prometheus read, and nobody else needs.
fn admin_routes(cfg: &mut web::ServiceConfig) {
    health::configure(cfg);
    cfg.route("/metrics", web::get().to(metrics_page));
}

async fn metrics_page() -> HttpResponse {
    crate::metrics_help::refresh_process_metrics();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(telemetry::prometheus().render())
}

/// The internal listener: probes and scrapes only, on a port the Ingress never routes to.
fn admin_server(
    addr: std::net::SocketAddr,
    readiness: web::Data<Readiness>,
    shutdown: web::Data<Shutdown>,
) -> anyhow::Result<(Server, u16)> {
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on --admin-listen {addr}"))?;
    let port = listener.local_addr()?.port();
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new().wrap(from_fn(observe)).app_data(readiness.clone()).app_data(shutdown.clone()).configure(admin_routes)
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok((server, port))
}

impl App {
    /// Binds the listener and starts background work. Never fails because a dependency is
    /// down: connections open lazily and retry, and readiness says what is missing.
    pub async fn build(settings: Settings, shutdown: Shutdown) -> anyhow::Result<App> {
        let auth = Arc::new(Authenticator::from_settings(&settings.jwt, settings.dev_auth)?);
        tokio::spawn({
            let auth = auth.clone();
            async move { auth.warm().await }
        });
        let roles_label = settings.roles.to_string();
        let mut readiness = Readiness::default();

        let (store, background_store) = match &settings.database_url {
            Some(url) => {
                let store = Store::new(url.expose(), settings.db_pool_size).context("invalid --database-url")?;
                let background = if store.is_embedded() {
                    tracing::info!(url = url.expose(), "using the embedded database");
                    // One SQLite file has one writer: every part of the process shares the store.
                    store.clone()
                } else {
                    // Small on purpose: on a 2-core box a larger background pool measured slower (bench/process.sh).
                    Store::new(url.expose(), 4).context("invalid --database-url")?
                };
                (Some(store), Some(background))
            }
            None => (None, None),
        };
        let (db_ready_tx, db_ready) = tokio::sync::watch::channel(false);
        if let Some(store) = &background_store {
            // The in-process bus forgets what it held when the process stops: send it again.
            let requeue = settings.amqp_url.is_none();
            start_migrations(store.clone(), db_ready_tx, requeue, &shutdown);
            let store = store.clone();
            let migrated = db_ready.clone();
            readiness.add("database", move || {
                let store = store.clone();
                let migrated = *migrated.borrow();
                async move {
                    if !migrated {
                        return Err("migrations not applied yet".to_owned());
                    }
                    store.ping().await.map_err(|e| e.to_string())
                }
            });
        }
        let redis = match &settings.redis_url {
            Some(url) => {
                let cache = RedisCache::new(settings.redis_mode, url.expose(), settings.db_pool_size, settings.retention);
                Some(Arc::new(cache.context("invalid --redis-url")?))
            }
            None => None,
        };
        // `all` without Redis keeps the status cache and the notification log in memory.
        let memory = (redis.is_none() && settings.roles.all).then(|| {
            tracing::info!("no --redis-url: status cache, notification log and backplane are in-process");
            Arc::new(MemoryCache::new(settings.retention))
        });
        let (cache, notifications) = match (&redis, memory) {
            (Some(r), _) => (Some(r.clone() as Arc<dyn StatusCache>), Some(r.clone() as Arc<dyn NotificationLog>)),
            (None, Some(m)) => (Some(m.clone() as Arc<dyn StatusCache>), Some(m as Arc<dyn NotificationLog>)),
            (None, None) => (None, None),
        };
        // Notify pods of one deployment meet on Redis; without Redis (`all` on a laptop) the
        // process is its own, in-memory backplane.
        let backplane: Option<Arc<dyn Backplane>> =
            match (settings.roles.contains(crate::config::Role::Notify), &settings.redis_url, &redis) {
                (false, _, _) => None,
                (true, Some(url), Some(redis)) => {
                    let channels = crate::backplane::Channels::new(&settings.channel_prefix, &settings.hub_name);
                    let canary = settings.backplane_check_interval.map(|interval| CanarySettings {
                        channel: channels.internal(&format!("canary:{}", uuid::Uuid::new_v4().simple())),
                        interval,
                    });
                    let (client, always, token) = (redis.client().clone(), vec![channels.all()], shutdown.connections.clone());
                    let backplane = match settings.redis_mode {
                        RedisMode::Standalone => RedisBackplane::start(url.expose(), client, always, canary, token),
                        RedisMode::Cluster => {
                            let seeds = crate::redis_client::seeds(url.expose());
                            RedisBackplane::start_cluster(seeds, settings.backplane_pubsub, client, always, canary, token)
                        }
                    };
                    Some(backplane.context("invalid --redis-url")? as Arc<dyn Backplane>)
                }
                (true, _, _) => Some(Arc::new(MemoryBackplane::new(Arc::new(MemoryHub::default()))) as Arc<dyn Backplane>),
            };
        let resume = resume_store(&settings, redis.as_deref());
        let topology =
            Topology { prefix: settings.bus_prefix.clone(), delivery_limit: settings.delivery_limit, queue_type: settings.queue_type };
        let bus: Option<Arc<dyn EventBus>> = match &settings.amqp_url {
            Some(url) => Some(RabbitBus::start(url.clone(), topology, &format!("contoso-{roles_label}"), &shutdown) as Arc<dyn EventBus>),
            None if settings.roles.all => {
                tracing::info!("no --amqp-url: events go through the in-process bus");
                Some(Arc::new(MemoryBus::new(topology.broker_delivery_limit())) as Arc<dyn EventBus>)
            }
            None => None,
        };

        let shutdown_timeout = settings.shutdown_timeout;
        let listen = settings.listen;
        let workers = settings.http_workers;
        let deps = Deps { settings, auth: auth.clone(), store, background_store, cache, bus, notifications, backplane, resume, db_ready };
        let roles::Endpoints { routes, upgrades } = roles::start(&deps, &shutdown, &mut readiness)?;
        let spa = if deps.settings.roles.contains(crate::config::Role::Accept) { crate::spa::find() } else { None };
        if let Some(dir) = &spa {
            tracing::info!(dir = %dir.display(), "serving the SPA at /");
        }

        let listener = TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
        let port = listener.local_addr()?.port();
        let readiness = web::Data::new(readiness);
        let shutdown_data = web::Data::new(shutdown.clone());
        let auth_data = web::Data::from(auth);
        telemetry::prometheus();
        crate::metrics_help::describe();
        let admin = match deps.settings.admin_listen {
            Some(addr) => Some(admin_server(addr, readiness.clone(), shutdown_data.clone())?),
            None => None,
        };
        let public_admin = admin.is_none();
        let body_timeout = deps.settings.request_body_timeout;
        let app = move || {
            let mut app = actix_web::App::new()
                .wrap(from_fn(move |req, next| http::body_deadline::body_deadline(body_timeout, req, next)))
                .wrap(from_fn(http::security_headers::security_headers))
                .wrap(from_fn(observe))
                .app_data(readiness.clone())
                .app_data(shutdown_data.clone())
                .app_data(auth_data.clone());
            if public_admin {
                app = app.configure(admin_routes);
            }
            for r in &routes {
                app = app.configure(|cfg| r(cfg));
            }
            if let Some(dir) = &spa {
                app = app.configure(|cfg| crate::spa::configure(cfg, dir));
            }
            app.default_service(web::to(HttpResponse::NotFound))
        };
        let options = http::server::Options { workers, shutdown_timeout };
        let server = http::server::serve(listener, options, app, upgrades)?;
        tracing::info!(roles = %roles_label, %port, admin_port = admin.as_ref().map(|(_, p)| *p), "contoso listening");
        Ok(App { server, port, admin, shutdown, shutdown_timeout })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of `--admin-listen`, when set.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin.as_ref().map(|(_, port)| *port)
    }

    /// Serves until `stop` resolves, then: readiness fails; HTTP stops accepting and finishes
    /// in-flight requests; background loops are cancelled and settle; all within the timeout.
    pub async fn run_until_stopped(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let mut server = tokio::spawn(self.server);
        // Probes keep their answers (503 while draining) until the very end.
        let admin = self.admin.map(|(admin, _)| (admin.handle(), tokio::spawn(admin)));
        tokio::select! {
            res = &mut server => {
                // The server ended on its own (it should not): still stop background work.
                self.shutdown.intake.cancel();
                self.shutdown.token.cancel();
                self.shutdown.connections.cancel();
                res??;
                return Ok(());
            }
            () = stop => {}
        }
        // The budget starts with the stop signal, not with the process.
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        // The phases of `shutdown`'s header, in order.
        self.shutdown.start_draining();
        self.shutdown.intake.cancel();
        self.shutdown.intake_tasks.close();
        if tokio::time::timeout_at(deadline, self.shutdown.intake_tasks.wait()).await.is_err() {
            tracing::warn!("consumers did not settle within the shutdown timeout");
        }
        let hooks = futures_util::future::join_all(self.shutdown.take_drain_hooks().into_iter().map(|hook| hook(deadline)));
        // HTTP keeps answering while the hooks run (the hub closes its connections over the
        // spread): probes and late clients get a 503 at once rather than a connection left in a
        // listener nobody accepts from until the process exits.
        let _ = tokio::time::timeout_at(deadline, async {
            hooks.await;
            handle.stop(true).await;
        })
        .await;
        self.shutdown.token.cancel();
        self.shutdown.tasks.close();
        if tokio::time::timeout_at(deadline, self.shutdown.tasks.wait()).await.is_err() {
            tracing::warn!("background tasks did not finish within the shutdown timeout");
        }
        self.shutdown.connections.cancel();
        self.shutdown.connection_tasks.close();
        let _ = tokio::time::timeout_at(deadline, self.shutdown.connection_tasks.wait()).await;
        let _ = tokio::time::timeout_at(deadline, server).await;
        if let Some((handle, admin)) = admin {
            handle.stop(true).await;
            let _ = tokio::time::timeout_at(deadline, admin).await;
        }
        tracing::info!("contoso stopped");
        Ok(())
    }
}

/// Applies migrations in the background, retrying with backoff while the database is away.
/// With `requeue`, also writes `order.accepted` again for every unfinished order, before the
/// relay and the consumers start.
/// Where notify keeps stateful-reconnect connections: Redis, shared by every notify process,
/// or this process's memory (`all` without Redis).
fn resume_store(settings: &Settings, redis: Option<&RedisCache>) -> Option<Arc<dyn ResumeStore>> {
    if !settings.roles.contains(crate::config::Role::Notify) || settings.hub.stateful_reconnect.is_none() {
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

fn start_migrations(store: Store, done: tokio::sync::watch::Sender<bool>, requeue: bool, shutdown: &Shutdown) {
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
