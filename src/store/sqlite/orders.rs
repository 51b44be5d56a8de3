//! Orders in the embedded store: the catalogue, placing an order (order, lines, idempotency
//! record and outbox row in one transaction) and reading a user's orders.

use std::collections::HashMap;

use chrono::Utc;
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Bool, Nullable, Text},
};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{SqliteStore, now, outbox::insert_event, uuid};
use crate::{
    domain::{CorrelationId, Event, EventKind, NewOrder, OrderNumber, OrderStatus, UserId},
    store::{
        BeforeCommit, Idempotency, OrderView, PlaceOutcome, PlacedOrder, Product, StoreError,
        orders::{Attempt, LOST_RACE, lost_race, price, replayed},
    },
};

#[derive(QueryableByName)]
struct ProductRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = BigInt)]
    price_cents: i64,
    #[diesel(sql_type = Text)]
    currency: String,
    #[diesel(sql_type = Bool)]
    available: bool,
}

impl From<ProductRow> for Product {
    fn from(r: ProductRow) -> Self {
        Product { id: r.id, name: r.name, price_cents: r.price_cents, currency: r.currency, available: r.available }
    }
}

#[derive(QueryableByName)]
struct OrderRow {
    #[diesel(sql_type = Text)]
    correlation_id: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    order_number: Option<i64>,
    #[diesel(sql_type = BigInt)]
    total_cents: i64,
    #[diesel(sql_type = Text)]
    currency: String,
    #[diesel(sql_type = Text)]
    created_at: String,
    #[diesel(sql_type = Text)]
    updated_at: String,
}

impl OrderRow {
    fn view(self) -> Result<OrderView, StoreError> {
        Ok(OrderView {
            correlation_id: CorrelationId(uuid(&self.correlation_id)?),
            status: OrderStatus::parse(&self.status).unwrap_or(OrderStatus::Accepted),
            order_id: self.order_number.map(|n| OrderNumber(n).to_string()),
            total_cents: self.total_cents,
            currency: self.currency,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

const ORDER_COLUMNS: &str = "correlation_id, status, order_number, total_cents, currency, created_at, updated_at";

#[derive(QueryableByName)]
struct IdempotencyRow {
    #[diesel(sql_type = Text)]
    request_hash: String,
    #[diesel(sql_type = Text)]
    correlation_id: String,
    #[diesel(sql_type = Text)]
    response_body: String,
}

impl SqliteStore {
    pub async fn products(&self) -> Result<Vec<Product>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<ProductRow> =
            diesel::sql_query("SELECT id, name, price_cents, currency, available FROM products ORDER BY available DESC, id")
                .load(&mut *conn)
                .await?;
        Ok(rows.into_iter().map(Product::from).collect())
    }

    pub(in crate::store) async fn replay(&self, user: &UserId, idem: &Idempotency) -> Result<Option<PlaceOutcome>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<IdempotencyRow> =
            diesel::sql_query("SELECT request_hash, correlation_id, response_body FROM idempotency_keys WHERE user_id = ? AND key = ?")
                .bind::<Text, _>(user.as_str())
                .bind::<Text, _>(idem.key.as_str())
                .load(&mut *conn)
                .await?;
        let Some(r) = rows.into_iter().next() else { return Ok(None) };
        replayed(idem, r.request_hash, CorrelationId(uuid(&r.correlation_id)?), r.response_body).map(Some)
    }

    pub(in crate::store) async fn try_place(
        &self,
        user: &UserId,
        order: &NewOrder,
        idem: Option<&Idempotency>,
        before_commit: BeforeCommit,
    ) -> Result<Attempt, StoreError> {
        let mut conn = self.conn().await?;
        let user = user.clone();
        let order = order.clone();
        let trace = crate::telemetry::otel::current();
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let mut catalogue = HashMap::new();
            for line in &order.lines {
                let rows: Vec<ProductRow> =
                    diesel::sql_query("SELECT id, name, price_cents, currency, available FROM products WHERE id = ?")
                        .bind::<Text, _>(&line.product_id)
                        .load(conn)
                        .await?;
                catalogue.extend(rows.into_iter().map(|r| (r.id.clone(), Product::from(r))));
            }
            let priced = price(&order, &catalogue)?;
            let correlation_id = CorrelationId::new();
            let id = correlation_id.0.to_string();
            let at = now();
            diesel::sql_query(
                "INSERT INTO orders (correlation_id, user_id, status, total_cents, currency, created_at, updated_at) \
                 VALUES (?, ?, 'ACCEPTED', ?, ?, ?, ?)",
            )
            .bind::<Text, _>(&id)
            .bind::<Text, _>(user.as_str())
            .bind::<BigInt, _>(priced.total)
            .bind::<Text, _>(&priced.currency)
            .bind::<Text, _>(&at)
            .bind::<Text, _>(&at)
            .execute(conn)
            .await?;
            for l in &priced.lines {
                diesel::sql_query(
                    "INSERT INTO order_lines (correlation_id, line_no, product_id, quantity, unit_price_cents) VALUES (?, ?, ?, ?, ?)",
                )
                .bind::<Text, _>(&id)
                .bind::<diesel::sql_types::Integer, _>(l.line_no)
                .bind::<Text, _>(&l.product_id)
                .bind::<diesel::sql_types::Integer, _>(l.quantity)
                .bind::<BigInt, _>(l.unit_price_cents)
                .execute(conn)
                .await?;
            }
            let placed =
                PlacedOrder { correlation_id, status: OrderStatus::Accepted, total_cents: priced.total, currency: priced.currency };
            if let Some(idem) = idem {
                let inserted = diesel::sql_query(
                    "INSERT INTO idempotency_keys (user_id, key, request_hash, correlation_id, response_body, created_at) \
                     VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                )
                .bind::<Text, _>(user.as_str())
                .bind::<Text, _>(idem.key.as_str())
                .bind::<Text, _>(&idem.request_hash)
                .bind::<Text, _>(&id)
                .bind::<Text, _>(placed.body())
                .bind::<Text, _>(&at)
                .execute(conn)
                .await?;
                if inserted == 0 {
                    return Err(StoreError::Aborted(LOST_RACE.into()));
                }
            }
            insert_event(conn, &Event::new(EventKind::Accepted, correlation_id, Utc::now()).traced(trace)).await?;
            before_commit(placed.clone()).await.map_err(StoreError::Aborted)?;
            Ok(Attempt::Done(PlaceOutcome::Created(placed)))
        })
        .await
        .or_else(lost_race)
    }

    pub async fn order_for_user(&self, user: &UserId, id: CorrelationId) -> Result<Option<OrderView>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<OrderRow> = diesel::sql_query(format!("SELECT {ORDER_COLUMNS} FROM orders WHERE correlation_id = ? AND user_id = ?"))
            .bind::<Text, _>(id.0.to_string())
            .bind::<Text, _>(user.as_str())
            .load(&mut *conn)
            .await?;
        rows.into_iter().next().map(OrderRow::view).transpose()
    }

    pub async fn orders_for_user(&self, user: &UserId, limit: i64) -> Result<Vec<OrderView>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<OrderRow> = diesel::sql_query(format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = ? ORDER BY created_at DESC, correlation_id DESC LIMIT ?"
        ))
        .bind::<Text, _>(user.as_str())
        .bind::<BigInt, _>(limit)
        .load(&mut *conn)
        .await?;
        rows.into_iter().map(OrderRow::view).collect()
    }
}
