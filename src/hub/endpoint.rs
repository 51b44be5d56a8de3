//! The HTTP side of a hub: the WebSocket upgrade at the hub path (authenticated before the
//! upgrade; no subprotocol in the 101) and `POST {path}/negotiate`. A draining process refuses
//! both with 503, so a load balancer that has not noticed yet sends the client elsewhere.

use std::{collections::HashMap, sync::Arc};

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use serde_json::json;

use super::{HubContext, metrics_names as m, negotiate::TokenSigner, session};
use crate::{
    http::{Authenticator, Caller, problem::Problem},
    shutdown::Shutdown,
};

pub struct HubEndpoint {
    pub ctx: Arc<HubContext>,
    pub auth: Arc<Authenticator>,
    pub shutdown: Shutdown,
    pub signer: TokenSigner,
}

/// Routes for a hub at `path` (e.g. `/hubs/order-status`).
pub fn configure(cfg: &mut web::ServiceConfig, path: &str, endpoint: web::Data<HubEndpoint>) {
    cfg.service(web::resource(path).app_data(endpoint.clone()).route(web::get().to(upgrade)).default_service(web::to(|| async {
        Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this resource").response()
    })))
    .service(web::resource(format!("{path}/negotiate")).app_data(endpoint).route(web::post().to(negotiate)));
}

/// The caller, or the 401 problem (its detail) to answer with.
fn authenticate(req: &HttpRequest, auth: &Authenticator) -> Result<Caller, String> {
    let token = Authenticator::token_from_request(req).ok_or_else(|| "missing bearer token".to_owned())?;
    auth.authenticate(&token).map_err(|e| e.to_string())
}

fn unauthorized(why: &str) -> HttpResponse {
    Problem::new(StatusCode::UNAUTHORIZED, why).response()
}

fn draining() -> HttpResponse {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "this server is draining, connect to another one").response()
}

async fn upgrade(req: HttpRequest, body: web::Payload, ep: web::Data<HubEndpoint>) -> Result<HttpResponse, actix_web::Error> {
    if ep.shutdown.is_draining() {
        return Ok(draining());
    }
    let caller = match authenticate(&req, &ep.auth) {
        Ok(c) => c,
        Err(why) => {
            metrics::counter!(m::HANDSHAKE_FAILURES).increment(1);
            return Ok(unauthorized(&why));
        }
    };
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string()).map(|q| q.into_inner()).unwrap_or_default();
    let connection_id = match query.get("id") {
        // Negotiated: any process can verify the token; a bad or stale one is unknown here, as in ASP.NET.
        Some(token) => match ep.signer.verify(token, caller.user_id.as_str()) {
            Some(id) => id,
            None => return Ok(Problem::new(StatusCode::NOT_FOUND, "No Connection with that ID").response()),
        },
        None => super::negotiate::new_connection_id(),
    };
    let (res, ws, stream) = actix_ws::handle(&req, body)?;
    let max = ep.ctx.settings.max_message_size;
    // Frames may exceed the message limit (several records per frame); the parser enforces the
    // per-message limit and answers with a Close instead of a dropped socket.
    let stream = stream.max_frame_size(max * 4 + 64 * 1024).aggregate_continuations().max_continuation_size(max * 4 + 64 * 1024);
    actix_web::rt::spawn(session::run(ep.ctx.clone(), connection_id.into(), caller.user_id.as_str().into(), ws, stream));
    Ok(res)
}

async fn negotiate(req: HttpRequest, ep: web::Data<HubEndpoint>) -> HttpResponse {
    if ep.shutdown.is_draining() {
        return draining();
    }
    let caller = match authenticate(&req, &ep.auth) {
        Ok(c) => c,
        Err(why) => return unauthorized(&why),
    };
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string()).map(|q| q.into_inner()).unwrap_or_default();
    let requested = query.iter().find(|(k, _)| k.eq_ignore_ascii_case("negotiateVersion")).map(|(_, v)| v.as_str());
    let version = match requested {
        None => 0,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n < 0 => {
                return HttpResponse::Ok().json(
                    json!({ "error": format!("The client requested version '{n}', but the server does not support this version.") }),
                );
            }
            Ok(n) => n.min(1),
            Err(_) => return HttpResponse::Ok().json(json!({ "error": "The client requested a non-integer protocol version." })),
        },
    };
    let (id, token) = ep.signer.issue(caller.user_id.as_str());
    let transports = json!([{ "transport": "WebSockets", "transferFormats": ["Text", "Binary"] }]);
    let body = if version >= 1 {
        json!({ "negotiateVersion": 1, "connectionId": id, "connectionToken": token, "availableTransports": transports })
    } else {
        // Version 0: the client uses the connection id as its token, so the id is the signed token.
        json!({ "negotiateVersion": 0, "connectionId": token, "availableTransports": transports })
    };
    HttpResponse::Ok().json(body)
}
