//! The process role's transitions in the embedded store: each a transaction that moves an
//! order only forward, so a redelivered event changes nothing twice.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Nullable, Text},
};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{NumberRow, SqliteStore, now, outbox::insert_event};
use crate::{
    domain::{CorrelationId, Event, EventKind, OrderNumber, OrderStatus},
    store::{Begun, OrderState, StoreError, processing::StatusRow},
};

#[derive(QueryableByName)]
struct NameRow {
    #[diesel(sql_type = Text)]
    name: String,
}

impl SqliteStore {
    pub async fn order_state(&self, id: CorrelationId) -> Result<Option<OrderState>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<StatusRow> = diesel::sql_query("SELECT status, user_id, order_number FROM orders WHERE correlation_id = ?")
            .bind::<Text, _>(id.0.to_string())
            .load(&mut *conn)
            .await?;
        Ok(rows.into_iter().next().map(OrderState::from))
    }

    /// One transaction per order: the embedded store has one writer, so a batch gains nothing
    /// from a single statement.
    pub async fn begin_processing_many(&self, ids: &[CorrelationId]) -> Result<HashMap<CorrelationId, Begun>, StoreError> {
        let mut found = HashMap::with_capacity(ids.len());
        for &id in ids {
            if !found.contains_key(&id)
                && let Some(begun) = self.begin_processing(id).await?
            {
                found.insert(id, begun);
            }
        }
        Ok(found)
    }

    pub async fn complete_many(&self, done: &[(CorrelationId, OrderNumber, Option<String>)]) -> Result<HashSet<CorrelationId>, StoreError> {
        let mut moved = HashSet::with_capacity(done.len());
        for (id, number, trace) in done {
            if self.complete(*id, *number, trace.clone()).await? {
                moved.insert(*id);
            }
        }
        Ok(moved)
    }

    async fn begin_processing(&self, id: CorrelationId) -> Result<Option<Begun>, StoreError> {
        let mut conn = self.conn().await?;
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let key = id.0.to_string();
            let rows: Vec<StatusRow> = diesel::sql_query("SELECT status, user_id, order_number FROM orders WHERE correlation_id = ?")
                .bind::<Text, _>(&key)
                .load(conn)
                .await?;
            let Some(row) = rows.into_iter().next() else { return Ok(None) };
            let status = OrderState::from(row).status;
            diesel::sql_query("UPDATE orders SET status = 'PROCESSING', updated_at = ? WHERE correlation_id = ? AND status = 'ACCEPTED'")
                .bind::<Text, _>(now())
                .bind::<Text, _>(&key)
                .execute(conn)
                .await?;
            let blocked: Vec<NameRow> = diesel::sql_query(
                "SELECT p.name FROM order_lines l JOIN products p ON p.id = l.product_id \
                 WHERE l.correlation_id = ? AND NOT p.available ORDER BY l.line_no LIMIT 1",
            )
            .bind::<Text, _>(&key)
            .load(conn)
            .await?;
            let unavailable = blocked.into_iter().next().map(|r| r.name);
            let order_number = if !status.is_final() && unavailable.is_none() {
                let n: NumberRow =
                    diesel::sql_query("UPDATE order_number_seq SET last_value = last_value + 1 RETURNING last_value AS value")
                        .get_result(conn)
                        .await?;
                Some(OrderNumber(n.value))
            } else {
                None
            };
            Ok(Some(Begun { status, unavailable, order_number }))
        })
        .await
    }

    async fn complete(&self, id: CorrelationId, number: OrderNumber, trace: Option<String>) -> Result<bool, StoreError> {
        let event = Event::new(EventKind::Processed { order_id: number.to_string() }, id, Utc::now()).traced(trace);
        self.finish(id, OrderStatus::Completed, Some(number.0), None, event).await
    }

    pub async fn fail(&self, id: CorrelationId, reason: &str, trace: Option<String>) -> Result<bool, StoreError> {
        let event = Event::new(EventKind::Failed { reason: reason.to_owned() }, id, Utc::now()).traced(trace);
        self.finish(id, OrderStatus::Failed, None, Some(reason.to_owned()), event).await
    }

    /// Moves a non-final order to the final `status` and writes its event, in one
    /// transaction; false (nothing written) when the order was already final.
    async fn finish(
        &self,
        id: CorrelationId,
        status: OrderStatus,
        number: Option<i64>,
        reason: Option<String>,
        event: Event,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let moved = diesel::sql_query(
                "UPDATE orders SET status = ?, order_number = coalesce(?, order_number), \
                 failure_reason = coalesce(?, failure_reason), updated_at = ? \
                 WHERE correlation_id = ? AND status IN ('ACCEPTED', 'PROCESSING')",
            )
            .bind::<Text, _>(status.as_str())
            .bind::<Nullable<BigInt>, _>(number)
            .bind::<Nullable<Text>, _>(reason)
            .bind::<Text, _>(now())
            .bind::<Text, _>(id.0.to_string())
            .execute(conn)
            .await?;
            if moved == 0 {
                return Ok(false);
            }
            insert_event(conn, &event).await?;
            Ok(true)
        })
        .await
    }
}
