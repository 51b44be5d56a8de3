//! The process role's writes. Every transition is a conditional UPDATE on the current status,
//! so a redelivered or duplicated event can neither move an order backwards nor assign a
//! second order number nor write a second outbox row.

use diesel::{
    QueryableByName,
    sql_types::{BigInt, Nullable, Text, Uuid as SqlUuid},
};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{PgStore, StoreError};
use crate::domain::{CorrelationId, Event, EventKind, OrderNumber, OrderStatus, UserId};

/// `SELECT status, user_id, order_number` in either backend's SQL.
#[derive(QueryableByName)]
pub(super) struct StatusRow {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Text)]
    user_id: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    order_number: Option<i64>,
}

impl From<StatusRow> for OrderState {
    fn from(r: StatusRow) -> Self {
        OrderState {
            status: OrderStatus::parse(&r.status).unwrap_or(OrderStatus::Accepted),
            user_id: UserId::parse(&r.user_id).ok(),
            order_number: r.order_number.map(OrderNumber),
        }
    }
}

#[derive(QueryableByName)]
struct BegunRow {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<Text>)]
    unavailable: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    order_number: Option<i64>,
}

/// What `begin_processing` found: the status before it, the product that cannot be sold (if
/// any), and the order number to complete with (when the order can complete).
#[derive(Debug, Clone)]
pub struct Begun {
    pub status: OrderStatus,
    pub unavailable: Option<String>,
    pub order_number: Option<OrderNumber>,
}

/// What the database says about one order.
#[derive(Debug, Clone)]
pub struct OrderState {
    pub status: OrderStatus,
    pub user_id: Option<UserId>,
    pub order_number: Option<OrderNumber>,
}

impl PgStore {
    pub async fn order_state(&self, id: CorrelationId) -> Result<Option<OrderState>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<StatusRow> = diesel::sql_query("SELECT status, user_id, order_number FROM orders WHERE correlation_id = $1")
            .bind::<SqlUuid, _>(id.0)
            .load(&mut *conn)
            .await?;
        Ok(rows.into_iter().next().map(OrderState::from))
    }

    /// One statement at the start of processing: reads the order's status, moves it
    /// ACCEPTED -> PROCESSING (the `moved` CTE runs whether or not it is read), finds the first product that cannot be sold and, when the order
    /// can complete, takes its order number from the sequence (a number taken by an attempt
    /// that does not complete is skipped, never reused). `None` for an unknown order.
    pub async fn begin_processing(&self, id: CorrelationId) -> Result<Option<Begun>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<BegunRow> = diesel::sql_query(
            "WITH cur AS (SELECT status FROM orders WHERE correlation_id = $1), \
                  moved AS (UPDATE orders SET status = 'PROCESSING', updated_at = now() \
                            WHERE correlation_id = $1 AND status = 'ACCEPTED' RETURNING 1), \
                  blocked AS (SELECT p.name FROM order_lines l JOIN products p ON p.id = l.product_id \
                              WHERE l.correlation_id = $1 AND NOT p.available ORDER BY l.line_no LIMIT 1) \
             SELECT cur.status, (SELECT name FROM blocked) AS unavailable, \
                    CASE WHEN cur.status IN ('ACCEPTED', 'PROCESSING') AND NOT EXISTS (SELECT 1 FROM blocked) \
                         THEN nextval('order_number_seq') END AS order_number \
             FROM cur",
        )
        .bind::<SqlUuid, _>(id.0)
        .load(&mut *conn)
        .await?;
        Ok(rows.into_iter().next().map(|r| Begun {
            status: OrderStatus::parse(&r.status).unwrap_or(OrderStatus::Accepted),
            unavailable: r.unavailable,
            order_number: r.order_number.map(OrderNumber),
        }))
    }

    /// -> COMPLETED with the order number `begin_processing` took and an `order.processed`
    /// outbox row, in one statement (so one round trip and one commit). False when the order
    /// was already final (nothing written).
    pub async fn complete(&self, id: CorrelationId, number: OrderNumber) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let event = Event::new(EventKind::Processed { order_id: number.to_string() }, id, chrono::Utc::now());
        let inserted = diesel::sql_query(
            "WITH done AS (UPDATE orders SET status = 'COMPLETED', order_number = $2, updated_at = now() \
                           WHERE correlation_id = $1 AND status IN ('ACCEPTED', 'PROCESSING') RETURNING 1) \
             INSERT INTO outbox (event_id, routing_key, payload) SELECT $3, $4, $5 FROM done",
        )
        .bind::<SqlUuid, _>(id.0)
        .bind::<BigInt, _>(number.0)
        .bind::<SqlUuid, _>(event.event_id.0)
        .bind::<Text, _>(event.kind.routing_key())
        .bind::<Text, _>(String::from_utf8(event.to_json()).expect("json is utf-8"))
        .execute(&mut *conn)
        .await?;
        Ok(inserted == 1)
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
