//! The process role's writes. Every transition is a conditional UPDATE on the current status,
//! so a redelivered or duplicated event can neither move an order backwards nor assign a
//! second order number nor write a second outbox row.

use diesel::{
    QueryableByName,
    sql_types::{BigInt, Nullable, Text, Uuid as SqlUuid},
};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{Store, StoreError};
use crate::domain::{CorrelationId, Event, EventKind, OrderNumber, OrderStatus, UserId};

#[derive(QueryableByName)]
struct StatusRow {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Text)]
    user_id: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    order_number: Option<i64>,
}

#[derive(QueryableByName)]
struct NumberRow {
    #[diesel(sql_type = BigInt)]
    order_number: i64,
}

#[derive(QueryableByName)]
struct NameRow {
    #[diesel(sql_type = Text)]
    name: String,
}

/// What the database says about one order.
#[derive(Debug, Clone)]
pub struct OrderState {
    pub status: OrderStatus,
    pub user_id: Option<UserId>,
    pub order_number: Option<OrderNumber>,
}

impl Store {
    pub async fn order_state(&self, id: CorrelationId) -> Result<Option<OrderState>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<StatusRow> = diesel::sql_query("SELECT status, user_id, order_number FROM orders WHERE correlation_id = $1")
            .bind::<SqlUuid, _>(id.0)
            .load(&mut *conn)
            .await?;
        Ok(rows.into_iter().next().map(|r| OrderState {
            status: OrderStatus::parse(&r.status).unwrap_or(OrderStatus::Accepted),
            user_id: UserId::parse(&r.user_id).ok(),
            order_number: r.order_number.map(OrderNumber),
        }))
    }

    /// ACCEPTED -> PROCESSING; false when the order was not ACCEPTED any more.
    pub async fn mark_processing(&self, id: CorrelationId) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let n = diesel::sql_query(
            "UPDATE orders SET status = 'PROCESSING', updated_at = now() WHERE correlation_id = $1 AND status = 'ACCEPTED'",
        )
        .bind::<SqlUuid, _>(id.0)
        .execute(&mut *conn)
        .await?;
        Ok(n == 1)
    }

    /// The name of the first product of the order that cannot be sold, if any.
    pub async fn unavailable_product(&self, id: CorrelationId) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<NameRow> = diesel::sql_query(
            "SELECT p.name FROM order_lines l JOIN products p ON p.id = l.product_id \
             WHERE l.correlation_id = $1 AND NOT p.available ORDER BY l.line_no LIMIT 1",
        )
        .bind::<SqlUuid, _>(id.0)
        .load(&mut *conn)
        .await?;
        Ok(rows.into_iter().next().map(|r| r.name))
    }

    /// -> COMPLETED with a new order number and an `order.processed` outbox row, in one
    /// transaction. `None` when the order was already final (nothing written).
    pub async fn complete(&self, id: CorrelationId) -> Result<Option<OrderNumber>, StoreError> {
        let mut conn = self.conn().await?;
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let rows: Vec<NumberRow> = diesel::sql_query(
                "UPDATE orders SET status = 'COMPLETED', order_number = nextval('order_number_seq'), updated_at = now() \
                 WHERE correlation_id = $1 AND status IN ('ACCEPTED', 'PROCESSING') RETURNING order_number",
            )
            .bind::<SqlUuid, _>(id.0)
            .load(conn)
            .await?;
            let Some(row) = rows.into_iter().next() else { return Ok(None) };
            let number = OrderNumber(row.order_number);
            let event = Event::new(EventKind::Processed { order_id: number.to_string() }, id, chrono::Utc::now());
            super::outbox::insert(conn, &event).await?;
            Ok(Some(number))
        })
        .await
    }

    /// -> FAILED with `reason` and an `order.failed` outbox row, in one transaction. False when
    /// the order was already final.
    pub async fn fail(&self, id: CorrelationId, reason: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let reason = reason.to_owned();
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let n = diesel::sql_query(
                "UPDATE orders SET status = 'FAILED', failure_reason = $2, updated_at = now() \
                 WHERE correlation_id = $1 AND status IN ('ACCEPTED', 'PROCESSING')",
            )
            .bind::<SqlUuid, _>(id.0)
            .bind::<Text, _>(&reason)
            .execute(conn)
            .await?;
            if n == 0 {
                return Ok(false);
            }
            let event = Event::new(EventKind::Failed { reason: reason.clone() }, id, chrono::Utc::now());
            super::outbox::insert(conn, &event).await?;
            Ok(true)
        })
        .await
    }
}
