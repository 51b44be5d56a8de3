//! Orders: the catalogue, placing an order (order, lines, idempotency record and outbox row
//! in one transaction) and reading a user's orders. Ownership is part of every read query.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, Queryable, Selectable, SelectableHelper};
use diesel_async::RunQueryDsl;
use futures_util::future::BoxFuture;
use serde::Serialize;
use uuid::Uuid;

use super::{PgStore, StoreError, schema::*};
use crate::domain::{CorrelationId, IdempotencyKey, NewOrder, OrderNumber, OrderStatus, UserId};

#[derive(Debug, Clone, Serialize, Queryable, Selectable, utoipa::ToSchema)]
#[diesel(table_name = products)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    pub id: String,
    pub name: String,
    pub price_cents: i64,
    pub currency: String,
    /// false: orderable, but always fails at processing (the demo's failure path).
    pub available: bool,
}

/// What the accept role answers for a new order.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacedOrder {
    #[schema(value_type = String, format = Uuid)]
    pub correlation_id: CorrelationId,
    pub status: OrderStatus,
    pub total_cents: i64,
    pub currency: String,
}

#[derive(Debug)]
pub enum PlaceOutcome {
    Created(PlacedOrder),
    /// The Idempotency-Key was seen before with the same request: the first answer, verbatim.
    Replayed {
        correlation_id: CorrelationId,
        body: String,
    },
}

/// An order as its owner sees it (`GET /api/orders/{id}`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    #[schema(value_type = String, format = Uuid)]
    pub correlation_id: CorrelationId,
    pub status: OrderStatus,
    pub order_id: Option<String>,
    pub total_cents: i64,
    pub currency: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = orders)]
struct OrderRow {
    correlation_id: Uuid,
    status: String,
    order_number: Option<i64>,
    total_cents: i64,
    currency: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<OrderRow> for OrderView {
    fn from(row: OrderRow) -> Self {
        Self {
            correlation_id: CorrelationId(row.correlation_id),
            status: OrderStatus::parse(&row.status).unwrap_or(OrderStatus::Accepted),
            order_id: row.order_number.map(|n| OrderNumber(n).to_string()),
            total_cents: row.total_cents,
            currency: row.currency,
            created_at: row.created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            updated_at: row.updated_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        }
    }
}

/// Runs after every row is written and before COMMIT: its failure rolls the order back.
pub type BeforeCommit = Box<dyn FnOnce(PlacedOrder) -> BoxFuture<'static, Result<(), String>> + Send>;

/// The idempotency record of a request: key and the fingerprint of the normalised order.
pub struct Idempotency {
    pub key: IdempotencyKey,
    pub request_hash: String,
}

pub(super) enum Attempt {
    Done(PlaceOutcome),
    /// A concurrent request with the same key committed first; read its answer.
    LostRace,
}

impl PgStore {
    pub async fn products(&self) -> Result<Vec<Product>, StoreError> {
        let mut conn = self.conn().await?;
        // The one that always fails last, so a first order in the shop is not a failure.
        Ok(products::table.select(Product::as_select()).order((products::available.desc(), products::id)).load(&mut *conn).await?)
    }

    pub(super) async fn replay(&self, user: &UserId, idem: &Idempotency) -> Result<Option<PlaceOutcome>, StoreError> {
        let mut conn = self.conn().await?;
        let found: Option<(String, Uuid, String)> = idempotency_keys::table
            .filter(idempotency_keys::user_id.eq(user.as_str()))
            .filter(idempotency_keys::key.eq(idem.key.as_str()))
            .select((idempotency_keys::request_hash, idempotency_keys::correlation_id, idempotency_keys::response_body))
            .first(&mut *conn)
            .await
            .optional()?;
        found.map(|(hash, id, body)| replayed(idem, hash, CorrelationId(id), body)).transpose()
    }

    /// Writes the order through the group commit (see `group_commit.rs`).
    pub(super) async fn try_place(
        &self,
        user: &UserId,
        order: &NewOrder,
        idem: Option<&Idempotency>,
        before_commit: BeforeCommit,
    ) -> Result<Attempt, StoreError> {
        self.group.place(&self.pool, user, order, idem, before_commit).await
    }

    /// The order if `user` owns it; `None` both when it does not exist and when it is someone else's.
    pub async fn order_for_user(&self, user: &UserId, id: CorrelationId) -> Result<Option<OrderView>, StoreError> {
        let mut conn = self.conn().await?;
        let row = orders::table
            .filter(orders::correlation_id.eq(id.0))
            .filter(orders::user_id.eq(user.as_str()))
            .select(OrderRow::as_select())
            .first(&mut *conn)
            .await
            .optional()?;
        Ok(row.map(OrderView::from))
    }

    /// The user's most recent orders, newest first.
    pub async fn orders_for_user(&self, user: &UserId, limit: i64) -> Result<Vec<OrderView>, StoreError> {
        let mut conn = self.conn().await?;
        let rows = orders::table
            .filter(orders::user_id.eq(user.as_str()))
            .order((orders::created_at.desc(), orders::correlation_id.desc()))
            .limit(limit)
            .select(OrderRow::as_select())
            .load(&mut *conn)
            .await?;
        Ok(rows.into_iter().map(OrderView::from).collect())
    }
}

/// A request's answer from the idempotency record stored for its key: the first answer,
/// verbatim, or a mismatch when the key came with another order. Both stores call it.
pub(super) fn replayed(
    idem: &Idempotency,
    request_hash: String,
    correlation_id: CorrelationId,
    body: String,
) -> Result<PlaceOutcome, StoreError> {
    if request_hash != idem.request_hash {
        return Err(StoreError::IdempotencyMismatch);
    }
    Ok(PlaceOutcome::Replayed { correlation_id, body })
}

pub(super) const LOST_RACE: &str = "idempotency key taken by a concurrent request";

/// A concurrent request with the same Idempotency-Key committed first: not an error.
pub(super) fn lost_race(err: StoreError) -> Result<Attempt, StoreError> {
    match err {
        StoreError::Aborted(msg) if msg == LOST_RACE => Ok(Attempt::LostRace),
        other => Err(other),
    }
}

impl PlacedOrder {
    /// The answer as stored with the idempotency record and replayed verbatim.
    pub(super) fn body(&self) -> String {
        serde_json::to_string(self).expect("answers serialize")
    }
}

/// One order line priced from the catalogue.
pub(super) struct PricedLine {
    pub line_no: i32,
    pub product_id: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

pub(super) struct Priced {
    pub lines: Vec<PricedLine>,
    pub total: i64,
    pub currency: String,
}

/// Prices `order` from `catalogue` (the products it names): every product must exist and
/// share one currency. Both stores call it inside their transaction.
pub(super) fn price(order: &NewOrder, catalogue: &HashMap<String, Product>) -> Result<Priced, StoreError> {
    let mut currency: Option<String> = None;
    let mut total: i64 = 0;
    let mut lines = Vec::with_capacity(order.lines.len());
    for (index, line) in order.lines.iter().enumerate() {
        let product =
            catalogue.get(&line.product_id).ok_or_else(|| StoreError::UnknownProduct { index, product_id: line.product_id.clone() })?;
        match &currency {
            None => currency = Some(product.currency.clone()),
            Some(c) if *c != product.currency => return Err(StoreError::MixedCurrencies(c.clone(), product.currency.clone())),
            Some(_) => {}
        }
        total += product.price_cents * line.quantity.get();
        lines.push(PricedLine {
            line_no: index as i32,
            product_id: line.product_id.clone(),
            quantity: line.quantity.get() as i32,
            unit_price_cents: product.price_cents,
        });
    }
    let currency = currency.expect("an order has at least one line");
    Ok(Priced { lines, total, currency })
}
