//! The HTTP server: actix-web's app on actix-http's HTTP/1 service, built by hand instead of
//! with `HttpServer` for one reason: `HttpServer` cannot register an upgrade handler, and the
//! hub must own its upgraded sockets (see `upgrade`). Timeouts are actix-web's defaults.

use std::{fmt, net::TcpListener, time::Duration};

use actix_http::{HttpService, KeepAlive, Request, Response, body::MessageBody};
use actix_service::{IntoServiceFactory, ServiceFactory, ServiceFactoryExt, fn_factory, fn_service, map_config};
use actix_web::{
    Error,
    dev::{AppConfig, Server},
};

use super::upgrade::{Framed, Upgrades};

pub struct Options {
    pub workers: Option<usize>,
    pub shutdown_timeout: Duration,
}

/// Serves `factory`'s app (built once per worker) and `upgrades` on `listener`.
pub fn serve<F, I, S, B>(listener: TcpListener, options: Options, factory: F, upgrades: Upgrades) -> std::io::Result<Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let mut builder = Server::build().disable_signals().shutdown_timeout(options.shutdown_timeout.as_secs().max(1));
    // As `HttpServer` does: once a graceful stop begins, idle keep-alive connections close
    // after their current response instead of holding the stop until its timeout.
    let stopping = builder.graceful_shutdown_signal();
    if let Some(n) = options.workers {
        builder = builder.workers(n.max(1));
    }
    let builder = builder.listen("contoso-http", listener, move || {
        let upgrades = upgrades.clone();
        let stopping = stopping.clone();
        let app = factory().into_factory().map_err(|err| err.into().error_response());
        HttpService::build()
            .graceful_shutdown_signal(move || {
                let stopping = stopping.clone();
                async move { stopping.notified().await }
            })
            .keep_alive(KeepAlive::Timeout(Duration::from_secs(5)))
            .client_request_timeout(Duration::from_secs(5))
            .client_disconnect_timeout(Duration::from_secs(1))
            .local_addr(addr)
            .upgrade(fn_factory(move || {
                let upgrades = upgrades.clone();
                async move {
                    // The handler's future is boxed: the dispatcher holds a pointer for the life of
                    // the connection, not a future sized for the request and its codec.
                    Ok::<_, ()>(fn_service(move |(req, framed): (Request, Framed)| upgrades.handle(req, framed)))
                }
            }))
            .finish(map_config(app, |()| AppConfig::default()))
            .tcp()
    })?;
    Ok(builder.run())
}
