//! The two HTTP listeners `App::build` binds: the public one (the roles' routes, the hub's
//! upgrades, the SPA, and the probes unless an admin port takes them) and the internal admin
//! one of `--admin-listen` (probes and scrapes only, on a port the Ingress never routes to).

use std::{net::TcpListener, path::PathBuf, sync::Arc};

use actix_web::{HttpResponse, dev::Server, middleware::from_fn, web};
use anyhow::Context;

use crate::{
    health::{self, Readiness},
    http::{self, Authenticator, middleware::observe},
    roles::Endpoints,
    shutdown::Shutdown,
    telemetry,
};

/// What both listeners read from a request's app data.
#[derive(Clone)]
pub(super) struct Shared {
    pub readiness: web::Data<Readiness>,
    pub shutdown: web::Data<Shutdown>,
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

/// The internal listener: probes and scrapes only.
pub(super) fn admin(addr: std::net::SocketAddr, shared: Shared) -> anyhow::Result<(Server, u16)> {
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on --admin-listen {addr}"))?;
    let port = listener.local_addr()?.port();
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .wrap(from_fn(observe))
            .app_data(shared.readiness.clone())
            .app_data(shared.shutdown.clone())
            .configure(admin_routes)
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok((server, port))
}

/// What the public listener serves besides the roles' endpoints.
pub(super) struct Public {
    pub endpoints: Endpoints,
    pub auth: Arc<Authenticator>,
    pub spa: Option<PathBuf>,
    /// The probes and `/metrics` here too: no admin port takes them.
    pub with_admin_routes: bool,
    pub body_timeout: std::time::Duration,
    pub options: http::server::Options,
}

/// The public listener, serving on `listener`.
pub(super) fn public(listener: TcpListener, public: Public, shared: Shared) -> anyhow::Result<Server> {
    let Public { endpoints: Endpoints { routes, upgrades }, auth, spa, with_admin_routes, body_timeout, options } = public;
    let auth = web::Data::from(auth);
    let app = move || {
        let mut app = actix_web::App::new()
            .wrap(from_fn(move |req, next| http::body_deadline::body_deadline(body_timeout, req, next)))
            .wrap(from_fn(http::security_headers::security_headers))
            .wrap(from_fn(observe))
            .app_data(shared.readiness.clone())
            .app_data(shared.shutdown.clone())
            .app_data(auth.clone());
        if with_admin_routes {
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
    Ok(http::server::serve(listener, options, app, upgrades)?)
}
