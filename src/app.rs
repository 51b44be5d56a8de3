//! `App::build` turns settings into a bound, ready-to-run server with its background tasks;
//! `run_until_stopped` serves until the stop future resolves, then shuts down in order.
//! `main` and the integration tests both go through here.

mod deps;
mod servers;

use std::{future::Future, net::TcpListener, sync::Arc, time::Duration};

use actix_web::{dev::Server, web};
use anyhow::Context;

use crate::{
    config::Settings,
    health::Readiness,
    http::{self, Authenticator},
    roles::{self, Deps},
    shutdown::Shutdown,
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

impl App {
    /// Binds the listener and starts background work. Never fails because a dependency is
    /// down: connections open lazily and retry, and readiness says what is missing.
    pub async fn build(settings: Settings, shutdown: Shutdown) -> anyhow::Result<App> {
        let auth = authenticator(&settings)?;
        let mut readiness = Readiness::default();
        let (store, background_store) = deps::stores(&settings)?;
        let db_ready = deps::migrate(background_store.as_ref(), &settings, &shutdown, &mut readiness);
        let redis = deps::redis(&settings)?;
        let (cache, notifications) = deps::caches(&settings, redis.as_ref());
        let backplane = deps::backplane(&settings, redis.as_deref(), &shutdown)?;
        let resume = deps::resume_store(&settings, redis.as_deref());
        let bus = deps::bus(&settings, &shutdown);
        let deps = Deps { settings, auth: auth.clone(), store, background_store, cache, bus, notifications, backplane, resume, db_ready };
        let endpoints = roles::start(&deps, &shutdown, &mut readiness)?;
        let settings = deps.settings;

        telemetry::prometheus();
        crate::metrics_help::describe();
        let shared = servers::Shared { readiness: web::Data::new(readiness), shutdown: web::Data::new(shutdown.clone()) };
        let listener = TcpListener::bind(settings.listen).with_context(|| format!("cannot listen on {}", settings.listen))?;
        let port = listener.local_addr()?.port();
        let admin = settings.admin_listen.map(|addr| servers::admin(addr, shared.clone())).transpose()?;
        let public = servers::Public {
            endpoints,
            auth,
            spa: spa(&settings),
            with_admin_routes: admin.is_none(),
            body_timeout: settings.request_body_timeout,
            options: http::server::Options { workers: settings.http_workers, shutdown_timeout: settings.shutdown_timeout },
        };
        let server = servers::public(listener, public, shared)?;
        tracing::info!(roles = %settings.roles, %port, admin_port = admin.as_ref().map(|(_, p)| *p), "contoso listening");
        Ok(App { server, port, admin, shutdown, shutdown_timeout: settings.shutdown_timeout })
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

/// The token checker, its keys fetched in the background (a JWKS endpoint may be slow to answer).
fn authenticator(settings: &Settings) -> anyhow::Result<Arc<Authenticator>> {
    let auth = Arc::new(Authenticator::from_settings(&settings.jwt, settings.dev_auth)?);
    tokio::spawn({
        let auth = auth.clone();
        async move { auth.warm().await }
    });
    Ok(auth)
}

/// The SPA's files, served at `/` by a process that accepts orders.
fn spa(settings: &Settings) -> Option<std::path::PathBuf> {
    let dir = settings.roles.contains(crate::config::Role::Accept).then(crate::spa::find).flatten()?;
    tracing::info!(dir = %dir.display(), "serving the SPA at /");
    Some(dir)
}
