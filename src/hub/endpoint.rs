//! The HTTP side of a hub: the WebSocket upgrade at the hub path (authenticated before the
//! upgrade; no subprotocol in the 101; served beside actix-web so the hub owns the socket) and
//! `POST {path}/negotiate`. A draining process refuses both with 503, so a load balancer that
//! has not noticed yet sends the client elsewhere.

use std::{collections::HashMap, sync::Arc, time::Instant};

use actix_http::Request;
use actix_web::{
    HttpRequest, HttpResponse,
    http::{StatusCode, header::HeaderMap},
    web,
};
use bytes::BytesMut;
use futures_util::FutureExt;
use serde_json::json;
use tokio::net::TcpStream;

use super::{
    HubContext,
    limits::{Refusal, Slot},
    metrics_names as m,
    negotiate::TokenSigner,
    resume,
    session::{self, Mode},
};
use crate::{
    http::{
        AuthError, Authenticator, Caller, middleware,
        problem::Problem,
        upgrade::{self, Framed, UpgradeFn},
    },
    shutdown::Shutdown,
};

pub struct HubEndpoint {
    pub ctx: Arc<HubContext>,
    pub auth: Arc<Authenticator>,
    pub shutdown: Shutdown,
    pub signer: TokenSigner,
}

/// Routes for a hub at `path` (e.g. `/hubs/order-status`) other than the upgrade itself,
/// which `upgrade_handler` serves: negotiate, and a problem for a GET that is no upgrade.
pub fn configure(cfg: &mut web::ServiceConfig, path: &str, endpoint: web::Data<HubEndpoint>) {
    cfg.service(web::resource(path).app_data(endpoint.clone()).route(web::get().to(not_an_upgrade)).default_service(web::to(|| async {
        Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this resource").response()
    })))
    .service(web::resource(format!("{path}/negotiate")).app_data(endpoint).route(web::post().to(negotiate)));
}

/// The caller, or the problem to answer with: 401, or 503 when the signing keys cannot be fetched.
async fn authenticate(headers: &HeaderMap, query: &str, auth: &Authenticator) -> Result<Caller, Problem> {
    let token = Authenticator::token_for_hub(headers, query).ok_or_else(|| unauthorized(&AuthError::Missing.public_detail()))?;
    auth.authenticate(&token).await.map_err(|e| match e {
        AuthError::KeysUnavailable(_) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.public_detail()).with_retry_after(5),
        _ => unauthorized(&e.public_detail()),
    })
}

/// A connection's place in the process's limits, or the answer that refuses it: 503 sends the
/// client to another process, 429 tells it this user has enough tabs open here.
fn reserve(ep: &HubEndpoint, user: &str) -> Result<Slot, Problem> {
    ep.ctx.limits.reserve(&Arc::from(user)).map_err(|refusal| {
        let (status, reason, detail) = match refusal {
            Refusal::Process => {
                (StatusCode::SERVICE_UNAVAILABLE, "process", "this server holds its maximum of connections, connect to another one")
            }
            Refusal::User => (StatusCode::TOO_MANY_REQUESTS, "user", "too many connections for this user"),
        };
        metrics::counter!(m::REFUSED, "limit" => reason).increment(1);
        Problem::new(status, detail).with_retry_after(5)
    })
}

fn unauthorized(why: &str) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, why)
}

fn draining() -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "this server is draining, connect to another one")
}

/// How an admitted connection starts.
enum Start {
    Plain,
    /// A stateful token whose connection may exist: a resume, unless nothing is known of it.
    Resume {
        expired: bool,
    },
}

/// Whether a connection may open: (connection id, caller, how it starts), or the answer that refuses it.
async fn admit(ep: &HubEndpoint, headers: &HeaderMap, query: &str) -> Result<(String, Caller, Start), Problem> {
    if ep.shutdown.is_draining() {
        return Err(draining());
    }
    let caller = authenticate(headers, query, &ep.auth).await.inspect_err(|_| {
        metrics::counter!(m::HANDSHAKE_FAILURES).increment(1);
    })?;
    let query = web::Query::<HashMap<String, String>>::from_query(query).map(|q| q.into_inner()).unwrap_or_default();
    let Some(token) = query.get("id") else { return Ok((super::negotiate::new_connection_id(), caller, Start::Plain)) };
    // Negotiated: any process can verify the token; a bad or stale one is unknown here, as in ASP.NET.
    let verified = ep.signer.inspect(token, caller.user_id.as_str()).ok_or_else(no_connection)?;
    let start = match (verified.stateful && ep.ctx.resume.is_some(), verified.expired) {
        (true, expired) => Start::Resume { expired },
        (false, false) => Start::Plain,
        (false, true) => return Err(no_connection()),
    };
    Ok((verified.id, caller, start))
}

fn no_connection() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "No Connection with that ID")
}

/// A stateful token's connection: taken over for a resume (waiting, bounded, for its last
/// holder to let go), or new when nothing is known of it and the token is fresh.
async fn resume_or_start(ep: &HubEndpoint, id: &str, user: &str, expired: bool) -> Result<Mode, Problem> {
    let resume = ep.ctx.resume.as_ref().expect("a stateful start needs stateful reconnect on");
    let refused = match resume.claim(id, user).await {
        Ok(claimed) => return Ok(Mode::Resume(Box::new(claimed))),
        // Nothing known: a fresh token opens its connection, a token that opened one (whose
        // record is gone: past its window, or ended) cannot open another.
        Err(resume::Refusal::Unknown) if !expired => match resume.store.seen(id).await {
            Ok(false) => return Ok(Mode::Stateful),
            Ok(true) => resume::Refusal::Unknown,
            Err(err) => resume::Refusal::Unavailable(err.to_string()),
        },
        Err(refusal) => refusal,
    };
    metrics::counter!(m::STATEFUL_RESUMES, "outcome" => refused.outcome()).increment(1);
    tracing::debug!(reason = %refused, "resume refused");
    Err(match refused {
        resume::Refusal::InUse => Problem::new(StatusCode::CONFLICT, "the connection is still open"),
        resume::Refusal::Unavailable(_) => {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "connection state unavailable, connect again").with_retry_after(1)
        }
        resume::Refusal::Unknown | resume::Refusal::Overflowed => no_connection(),
    })
}

async fn not_an_upgrade(req: HttpRequest, ep: web::Data<HubEndpoint>) -> HttpResponse {
    match admit(&ep, req.headers(), req.query_string()).await {
        Err(problem) => problem.response(),
        Ok(_) => Problem::new(StatusCode::BAD_REQUEST, "a websocket upgrade is expected here").response(),
    }
}

/// The WebSocket upgrade at the hub path: admitted (draining, token, negotiate id) before the
/// 101, then the connection runs on the socket itself (`session`).
pub fn upgrade_handler(ep: Arc<HubEndpoint>) -> UpgradeFn {
    // Two allocations in turn: the upgrade's (request, codec, answer) is freed before the
    // connection's own, much smaller, loop starts, instead of living as long as it does.
    Arc::new(move |req, framed| {
        let ctx = ep.ctx.clone();
        upgrade(ep.clone(), req, framed)
            .boxed_local()
            .then(move |admitted| match admitted {
                Some((admitted, io, leftover)) => session::run(ctx, admitted, io, leftover).boxed(),
                None => std::future::ready(()).boxed(),
            })
            .boxed_local()
    })
}

/// Answers the upgrade request: the 101 and what the connection needs, or a refusal (`None`).
async fn upgrade(ep: Arc<HubEndpoint>, req: Request, mut framed: Framed) -> Option<(session::Admitted, TcpStream, BytesMut)> {
    let started = Instant::now();
    let head = req.head();
    let admitted = match admit(&ep, &head.headers, req.uri().query().unwrap_or_default()).await {
        Ok((id, caller, start)) => {
            let mode = match start {
                Start::Plain => Ok(Mode::Plain),
                Start::Resume { expired } => resume_or_start(&ep, &id, caller.user_id.as_str(), expired).await,
            };
            mode.map(|mode| (id, caller, mode))
        }
        Err(problem) => Err(problem),
    };
    let answer = admitted
        .and_then(|(id, caller, mode)| Ok((id, caller.expires_at, reserve(&ep, caller.user_id.as_str())?, mode)))
        .and_then(|admitted| match actix_http::ws::handshake(head) {
            Ok(mut switching) => Ok((admitted, switching.finish().drop_body())),
            Err(err) => Err(Problem::new(StatusCode::BAD_REQUEST, format!("invalid websocket upgrade: {err}"))),
        });
    let status = match &answer {
        Ok(_) => StatusCode::SWITCHING_PROTOCOLS.as_u16(),
        Err(problem) => problem.status,
    };
    middleware::record(req.method().as_str(), req.path(), req.path(), status, started.elapsed());
    // The request is not needed past this point; an idle connection must not keep its headers.
    drop(req);
    let ((id, expires_at, slot, mode), switching) = match answer {
        Ok(ok) => ok,
        Err(problem) => {
            let _ = upgrade::respond(&mut framed, problem.response()).await;
            return None;
        }
    };
    upgrade::switch(&mut framed, switching).await.ok()?;
    // Only the stream and what was read past the request stay: the codec and the write
    // buffer (8 KiB) go now, not when the connection ends.
    let (io, leftover) = upgrade::into_stream(framed);
    let expires = ep.ctx.settings.close_on_token_expiry.then(|| session::instant_of(expires_at));
    Some((session::Admitted { id: id.into(), slot, expires, mode }, io, leftover))
}

async fn negotiate(req: HttpRequest, ep: web::Data<HubEndpoint>) -> HttpResponse {
    if ep.shutdown.is_draining() {
        return draining().response();
    }
    let caller = match authenticate(req.headers(), req.query_string(), &ep.auth).await {
        Ok(c) => c,
        Err(problem) => return problem.response(),
    };
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string()).map(|q| q.into_inner()).unwrap_or_default();
    let requested = query.iter().find(|(k, _)| k.eq_ignore_ascii_case("negotiateVersion")).map(|(_, v)| v.as_str());
    let version = match super::negotiate::requested_version(requested) {
        Ok(v) => v,
        Err(error) => return HttpResponse::Ok().json(json!({ "error": error })),
    };
    // Offered only when asked (an unasked offer is an error to the client) and only in version 1.
    let stateful = version >= 1
        && ep.ctx.resume.is_some()
        && query.iter().any(|(k, v)| k.eq_ignore_ascii_case("useStatefulReconnect") && v.eq_ignore_ascii_case("true"));
    let (id, token) = ep.signer.issue(caller.user_id.as_str(), stateful);
    let transports = json!([{ "transport": "WebSockets", "transferFormats": ["Text", "Binary"] }]);
    let body = if version >= 1 {
        let mut body = json!({ "negotiateVersion": 1, "connectionId": id, "connectionToken": token, "availableTransports": transports });
        if stateful {
            body["useStatefulReconnect"] = json!(true);
        }
        body
    } else {
        // Version 0: the client uses the connection id as its token, so the id is the signed token.
        json!({ "negotiateVersion": 0, "connectionId": token, "availableTransports": transports })
    };
    HttpResponse::Ok().json(body)
}
