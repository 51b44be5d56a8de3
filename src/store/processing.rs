//! The process role's writes. Every transition is a conditional UPDATE on the current status,
//! so a redelivered or duplicated event can neither move an order backwards nor assign a
//! second order number nor write a second outbox row.

use std::collections::{HashMap, HashSet};

use diesel::{
    QueryableByName,
    sql_types::{Array, BigInt, Nullable, Text, Uuid as SqlUuid},
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
    #[diesel(sql_type = SqlUuid)]
    correlation_id: uuid::Uuid,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<Text>)]
    unavailable: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    order_number: Option<i64>,
}

#[derive(QueryableByName)]
struct MovedRow {
    #[diesel(sql_type = SqlUuid)]
    correlation_id: uuid::Uuid,
}

/// What `begin_processing_many` found for one order: the status before it, the product that
/// cannot be sold (if any), and the order number to complete with (when the order can complete).
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

    /// One statement at the start of processing a batch: reads each order's status, moves
    /// those still ACCEPTED to PROCESSING (the `moved` CTE runs whether or not it is read), finds
    /// each order's first product that cannot be sold and, for every order that can complete,
    /// takes an order number from the sequence (a number taken by an attempt that does not
    /// complete is skipped, never reused). Unknown orders are absent from the answer.
    pub async fn begin_processing_many(&self, ids: &[CorrelationId]) -> Result<HashMap<CorrelationId, Begun>, StoreError> {
        let mut conn = self.conn().await?;
        let ids: Vec<uuid::Uuid> = ids.iter().map(|id| id.0).collect();
        let rows: Vec<BegunRow> = diesel::sql_query(
            "WITH cur AS (SELECT correlation_id, status FROM orders WHERE correlation_id = ANY($1)), \
                  moved AS (UPDATE orders SET status = 'PROCESSING', updated_at = now() \
                            WHERE correlation_id = ANY($1) AND status = 'ACCEPTED' RETURNING 1), \
                  blocked AS (SELECT DISTINCT ON (l.correlation_id) l.correlation_id, p.name \
                              FROM order_lines l JOIN products p ON p.id = l.product_id \
                              WHERE l.correlation_id = ANY($1) AND NOT p.available \
                              ORDER BY l.correlation_id, l.line_no) \
             SELECT cur.correlation_id, cur.status, blocked.name AS unavailable, \
                    CASE WHEN cur.status IN ('ACCEPTED', 'PROCESSING') AND blocked.name IS NULL \
                         THEN nextval('order_number_seq') END AS order_number \
             FROM cur LEFT JOIN blocked USING (correlation_id)",
        )
        .bind::<Array<SqlUuid>, _>(&ids)
        .load(&mut *conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let begun = Begun {
                    status: OrderStatus::parse(&r.status).unwrap_or(OrderStatus::Accepted),
                    unavailable: r.unavailable,
                    order_number: r.order_number.map(OrderNumber),
                };
                (CorrelationId(r.correlation_id), begun)
            })
            .collect())
    }

    /// -> COMPLETED with the order numbers `begin_processing_many` took, and one
    /// `order.processed` outbox row per order that moved, in one statement (one round trip, one
    /// commit for the batch). Returns the orders that moved; the others were already final.
    pub async fn complete_many(&self, done: &[(CorrelationId, OrderNumber, Option<String>)]) -> Result<HashSet<CorrelationId>, StoreError> {
        if done.is_empty() {
            // A batch whose orders all failed or were finished elsewhere: no round trip.
            return Ok(HashSet::new());
        }
        let mut conn = self.conn().await?;
        let now = chrono::Utc::now();
        let (mut ids, mut numbers, mut event_ids, mut payloads, mut traces) = (vec![], vec![], vec![], vec![], vec![]);
        let mut seen = HashSet::with_capacity(done.len());
        // A second row for one order would join `done` twice and write two outbox rows.
        for (id, number, trace) in done.iter().filter(|(id, ..)| seen.insert(*id)) {
            let event = Event::new(EventKind::Processed { order_id: number.to_string() }, *id, now);
            ids.push(id.0);
            numbers.push(number.0);
            event_ids.push(event.event_id.0);
            payloads.push(String::from_utf8(event.to_json()).expect("json is utf-8"));
            traces.push(trace.clone());
        }
        let moved: Vec<MovedRow> = diesel::sql_query(
            "WITH input AS (SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::text[], $6::text[]) \
                            AS t(correlation_id, order_number, event_id, payload, traceparent)), \
                  done AS (UPDATE orders o SET status = 'COMPLETED', order_number = i.order_number, updated_at = now() \
                           FROM input i WHERE o.correlation_id = i.correlation_id \
                           AND o.status IN ('ACCEPTED', 'PROCESSING') RETURNING o.correlation_id), \
                  events AS (INSERT INTO outbox (event_id, routing_key, payload, traceparent) \
                             SELECT i.event_id, $5, i.payload, i.traceparent FROM input i JOIN done USING (correlation_id)) \
             SELECT correlation_id FROM done",
        )
        .bind::<Array<SqlUuid>, _>(&ids)
        .bind::<Array<BigInt>, _>(&numbers)
        .bind::<Array<SqlUuid>, _>(&event_ids)
        .bind::<Array<Text>, _>(&payloads)
        .bind::<Text, _>(EventKind::Processed { order_id: String::new() }.routing_key())
        .bind::<Array<Nullable<Text>>, _>(&traces)
        .load(&mut *conn)
        .await?;
        Ok(moved.into_iter().map(|r| CorrelationId(r.correlation_id)).collect())
    }

    /// -> FAILED with `reason` and an `order.failed` outbox row, in one transaction. False when
    /// the order was already final.
    pub async fn fail(&self, id: CorrelationId, reason: &str, trace: Option<String>) -> Result<bool, StoreError> {
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
            let event = Event::new(EventKind::Failed { reason: reason.clone() }, id, chrono::Utc::now()).traced(trace);
            super::outbox::insert(conn, &event).await?;
            Ok(true)
        })
        .await
    }
}
