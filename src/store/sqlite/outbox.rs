//! The outbox in the embedded store: rows written with the state they describe, published by
//! the relay and deleted once confirmed, and re-sent for unfinished orders at start.

use diesel::{
    QueryableByName,
    sql_types::{BigInt, Nullable, Text},
};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};

use super::{Conn, NumberRow, SqliteStore, now, uuid};
use crate::{
    domain::Event,
    store::{OutboxRow, Publish, StoreError},
};

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = Text)]
    correlation_id: String,
}

#[derive(QueryableByName)]
struct OutboxSqlRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    event_id: String,
    #[diesel(sql_type = Text)]
    routing_key: String,
    #[diesel(sql_type = Text)]
    payload: String,
    #[diesel(sql_type = Nullable<Text>)]
    traceparent: Option<String>,
}

pub(super) async fn insert_event(conn: &mut Conn, event: &Event) -> Result<(), StoreError> {
    diesel::sql_query("INSERT INTO outbox (event_id, routing_key, payload, created_at, traceparent) VALUES (?, ?, ?, ?, ?)")
        .bind::<Text, _>(event.event_id.0.to_string())
        .bind::<Text, _>(event.kind.routing_key())
        .bind::<Text, _>(String::from_utf8(event.to_json()).expect("json is utf-8"))
        .bind::<Text, _>(now())
        .bind::<Nullable<Text>, _>(event.trace.as_deref())
        .execute(conn)
        .await?;
    Ok(())
}

impl SqliteStore {
    /// Reads a batch, publishes it without holding the connection (a broker can take seconds
    /// to confirm; requests must not wait for it), then deletes the confirmed rows.
    pub async fn relay_outbox(&self, limit: i64, publish: Publish) -> Result<(usize, usize), StoreError> {
        let _relay = self.relay.lock().await;
        let rows: Vec<OutboxSqlRow> = {
            let mut conn = self.conn().await?;
            diesel::sql_query("SELECT id, event_id, routing_key, payload, traceparent FROM outbox ORDER BY id LIMIT ?")
                .bind::<BigInt, _>(limit)
                .load(&mut *conn)
                .await?
        };
        let taken = rows.len();
        if taken == 0 {
            return Ok((0, 0));
        }
        let rows = rows
            .into_iter()
            .map(|r| {
                let event_id = uuid(&r.event_id)?;
                Ok(OutboxRow { id: r.id, event_id, routing_key: r.routing_key, payload: r.payload, traceparent: r.traceparent })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let confirmed = publish(rows).await;
        if !confirmed.is_empty() {
            let ids = confirmed.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            let mut conn = self.conn().await?;
            // Integers formatted by us, so the list is safe to inline.
            conn.batch_execute(&format!("DELETE FROM outbox WHERE id IN ({ids})")).await?;
        }
        Ok((taken, confirmed.len()))
    }

    pub async fn requeue_unfinished(&self) -> Result<usize, StoreError> {
        let mut conn = self.conn().await?;
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let rows: Vec<IdRow> =
                diesel::sql_query("SELECT correlation_id FROM orders WHERE status IN ('ACCEPTED', 'PROCESSING')").load(conn).await?;
            for row in &rows {
                insert_event(conn, &crate::store::accepted_again(uuid(&row.correlation_id)?)).await?;
            }
            Ok(rows.len())
        })
        .await
    }

    pub async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        let mut conn = self.conn().await?;
        let n: NumberRow = diesel::sql_query("SELECT count(*) AS value FROM outbox").get_result(&mut *conn).await?;
        Ok(n.value)
    }
}
