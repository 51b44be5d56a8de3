//! The transactional outbox: rows are inserted in the transaction of the state they describe
//! and removed by the relay only after the broker confirmed them. `FOR UPDATE SKIP LOCKED`
//! lets several relays (one per pod) share the table without publishing a row twice at once.

use diesel::{ExpressionMethods, QueryDsl, Queryable, Selectable, SelectableHelper};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::future::BoxFuture;
use uuid::Uuid;

use super::{PgStore, StoreError, schema::outbox};
use crate::domain::Event;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = outbox)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: Uuid,
    pub routing_key: String,
    pub payload: String,
    pub traceparent: Option<String>,
}

pub(super) async fn insert(conn: &mut AsyncPgConnection, event: &Event) -> Result<(), StoreError> {
    diesel::insert_into(outbox::table)
        .values((
            outbox::event_id.eq(event.event_id.0),
            outbox::routing_key.eq(event.kind.routing_key()),
            outbox::payload.eq(String::from_utf8(event.to_json()).expect("json is utf-8")),
            outbox::traceparent.eq(event.trace.as_deref()),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Publishes a batch and returns the ids of the rows the broker confirmed.
pub type Publish = Box<dyn FnOnce(Vec<OutboxRow>) -> BoxFuture<'static, Vec<i64>> + Send>;

impl PgStore {
    /// Locks up to `limit` unsent rows, hands them to `publish` and deletes the confirmed ones,
    /// all in one transaction. Returns (rows locked, rows confirmed).
    pub async fn relay_outbox(&self, limit: i64, publish: Publish) -> Result<(usize, usize), StoreError> {
        let mut conn = self.conn().await?;
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let rows: Vec<OutboxRow> =
                outbox::table.order(outbox::id).limit(limit).for_update().skip_locked().select(OutboxRow::as_select()).load(conn).await?;
            let locked = rows.len();
            if locked == 0 {
                return Ok((0, 0));
            }
            let confirmed = publish(rows).await;
            if !confirmed.is_empty() {
                diesel::delete(outbox::table.filter(outbox::id.eq_any(&confirmed))).execute(conn).await?;
            }
            Ok((locked, confirmed.len()))
        })
        .await
    }

    /// Writes an `order.accepted` outbox row for every order not yet final, in one transaction.
    pub async fn requeue_unfinished(&self) -> Result<usize, StoreError> {
        use super::schema::orders;
        let mut conn = self.conn().await?;
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let ids: Vec<Uuid> =
                orders::table.filter(orders::status.eq_any(["ACCEPTED", "PROCESSING"])).select(orders::correlation_id).load(conn).await?;
            for id in &ids {
                insert(conn, &super::accepted_again(*id)).await?;
            }
            Ok(ids.len())
        })
        .await
    }

    /// Rows not yet confirmed by the broker (the outbox backlog gauge).
    pub async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        let mut conn = self.conn().await?;
        Ok(outbox::table.count().get_result(&mut *conn).await?)
    }
}
