//! The order handlers: place (`POST /api/orders`), read one, list mine, and the catalogue.
//! Input is parsed into domain types here; nothing past this file sees raw JSON.

use actix_web::{HttpRequest, HttpResponse, http::header, web};
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::AcceptState;
use crate::{
    domain::{CorrelationId, IdempotencyKey, NewOrder, OrderRequest, OrderStatus},
    http::{ApiError, Caller},
    store::{Idempotency, PlaceOutcome, StoreError},
    telemetry::names,
};

/// Parses a JSON body: syntax errors are 400, shape errors 422 naming the JSON path.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(value) => Ok(value),
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                Err(ApiError::BadRequest(format!("body is not valid JSON: {inner}")))
            } else {
                let field = if path == "." { "body".to_owned() } else { path };
                Err(ApiError::Invalid { field, message: strip_position(&inner.to_string()) })
            }
        }
    }
}

fn strip_position(msg: &str) -> String {
    msg.split(" at line ").next().unwrap_or(msg).to_owned()
}

fn store_error(err: StoreError) -> ApiError {
    match err {
        StoreError::UnknownProduct { index, product_id } => {
            ApiError::Invalid { field: format!("items[{index}].productId"), message: format!("unknown product '{product_id}'") }
        }
        StoreError::MixedCurrencies(a, b) => {
            ApiError::Invalid { field: "items".into(), message: format!("items mix currencies {a} and {b}") }
        }
        StoreError::IdempotencyMismatch => ApiError::Conflict("Idempotency-Key was already used with a different request".into()),
        StoreError::Unavailable(why) | StoreError::Aborted(why) => ApiError::Unavailable(why),
    }
}

fn accepted(id: CorrelationId, body: String) -> HttpResponse {
    HttpResponse::Accepted().insert_header((header::LOCATION, format!("/api/orders/{id}"))).content_type("application/json").body(body)
}

/// Fingerprint of the normalised order: the same order with other whitespace is the same request.
fn request_hash(order: &NewOrder) -> String {
    let mut hasher = Sha256::new();
    for line in &order.lines {
        hasher.update(line.product_id.as_bytes());
        hasher.update([0]);
        hasher.update(line.quantity.get().to_le_bytes());
    }
    hex::encode(hasher.finalize())
}

#[utoipa::path(post, path = "/api/orders", tag = "orders", request_body = OrderRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key return the first answer")),
    responses((status = 202, body = crate::store::PlacedOrder, description = "Accepted; Location names the order"),
        (status = 400, body = crate::http::problem::Problem), (status = 401, body = crate::http::problem::Problem),
        (status = 413, body = crate::http::problem::Problem), (status = 422, body = crate::http::problem::Problem),
        (status = 429, body = crate::http::problem::Problem, description = "Too many orders from this user; Retry-After says when to retry"),
        (status = 503, body = crate::http::problem::Problem)),
    security(("bearer" = [])))]
pub async fn place_order(
    state: web::Data<AcceptState>,
    caller: Caller,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    if let Some(limit) = &state.order_limit {
        limit.check(caller.user_id.as_str()).map_err(ApiError::TooManyRequests)?;
    }
    let request: OrderRequest = parse_json(&body)?;
    let order = NewOrder::try_from(request).map_err(|e| ApiError::Invalid { field: e.field, message: e.message })?;
    let idempotency = match req.headers().get("Idempotency-Key") {
        None => None,
        Some(raw) => {
            let raw = raw.to_str().map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?;
            let key = IdempotencyKey::parse(raw).map_err(ApiError::BadRequest)?;
            Some(Idempotency { key, request_hash: request_hash(&order) })
        }
    };
    let cache = state.cache.clone();
    let ttl = state.status_ttl;
    let user = caller.user_id.clone();
    // Before COMMIT: the map entry exists before any event for this order can be emitted.
    let before_commit = Box::new(move |placed: crate::store::PlacedOrder| {
        async move { cache.put_new_order(placed.correlation_id, &user, OrderStatus::Accepted, ttl).await.map_err(|e| e.to_string()) }
            .boxed()
    });
    match state.store.place_order(&caller.user_id, &order, idempotency, before_commit).await.map_err(store_error)? {
        PlaceOutcome::Created(placed) => {
            state.relay_wake.notify_one();
            metrics::counter!(names::ORDERS_ACCEPTED).increment(1);
            tracing::info!(correlation_id = %placed.correlation_id, lines = order.lines.len(), "order accepted");
            Ok(accepted(placed.correlation_id, serde_json::to_string(&placed).expect("answers serialize")))
        }
        PlaceOutcome::Replayed { correlation_id, body } => Ok(accepted(correlation_id, body)),
    }
}

#[utoipa::path(get, path = "/api/orders/{correlationId}", tag = "orders",
    params(("correlationId" = String, Path, description = "The id returned by POST /api/orders")),
    responses((status = 200, body = crate::store::OrderView), (status = 401, body = crate::http::problem::Problem),
        (status = 404, body = crate::http::problem::Problem, description = "No such order, or not yours")),
    security(("bearer" = [])))]
pub async fn get_order(state: web::Data<AcceptState>, caller: Caller, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    // A malformed id is as unknown as someone else's: 404 either way, no existence leak.
    let id = CorrelationId::parse(&path.into_inner()).map_err(|_| ApiError::NotFound)?;
    match state.store.order_for_user(&caller.user_id, id).await.map_err(store_error)? {
        Some(view) => Ok(HttpResponse::Ok().json(view)),
        None => Err(ApiError::NotFound),
    }
}

#[utoipa::path(get, path = "/api/orders", tag = "orders",
    responses((status = 200, body = Vec<crate::store::OrderView>, description = "The caller's orders, newest first (at most 100)"),
        (status = 401, body = crate::http::problem::Problem)),
    security(("bearer" = [])))]
pub async fn list_orders(state: web::Data<AcceptState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let orders = state.store.orders_for_user(&caller.user_id, 100).await.map_err(store_error)?;
    Ok(HttpResponse::Ok().json(orders))
}

#[utoipa::path(get, path = "/api/products", tag = "catalogue",
    responses((status = 200, body = Vec<crate::store::Product>)))]
pub async fn list_products(state: web::Data<AcceptState>) -> Result<HttpResponse, ApiError> {
    let products = state.store.products().await.map_err(store_error)?;
    Ok(HttpResponse::Ok().json(products))
}
