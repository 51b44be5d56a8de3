//! The embedded store of `--role all`: one SQLite file through diesel's connection wrapped
//! for async use. One connection behind a mutex, because SQLite has one writer anyway and a
//! laptop shop needs no more; the transitions mean what the PostgreSQL queries mean.

use std::{collections::HashMap, sync::Arc};

use chrono::{SecondsFormat, Utc};
use diesel::{
    Connection, QueryableByName, SqliteConnection,
    connection::SimpleConnection,
    sql_types::{BigInt, Bool, Nullable, Text},
};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection, sync_connection_wrapper::SyncConnectionWrapper};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

use super::{
    BeforeCommit, Begun, Idempotency, OrderState, OrderView, OutboxRow, PlaceOutcome, PlacedOrder, Product, Publish, StoreError,
    orders::{Attempt, LOST_RACE, lost_race, price},
    processing::StatusRow,
};
use crate::domain::{CorrelationId, Event, EventKind, NewOrder, OrderNumber, OrderStatus, UserId};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

type Conn = SyncConnectionWrapper<SqliteConnection>;

/// The embedded database file. Cheap to clone: clones share the one connection.
#[derive(Clone)]
pub struct SqliteStore {
    path: Arc<str>,
    /// Opened on first use, so building the store never fails.
    conn: Arc<Mutex<Option<Conn>>>,
    /// Held by the outbox relay from reading rows to deleting the confirmed ones, so two
    /// relays of this process never publish a row twice at once (PostgreSQL's SKIP LOCKED).
    relay: Arc<Mutex<()>>,
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn uuid(raw: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(raw).map_err(|e| StoreError::Unavailable(format!("corrupt uuid '{raw}' in the database: {e}")))
}

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

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = Text)]
    correlation_id: String,
}

#[derive(QueryableByName)]
struct NameRow {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct NumberRow {
    #[diesel(sql_type = BigInt)]
    value: i64,
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
}

async fn insert_event(conn: &mut Conn, event: &Event) -> Result<(), StoreError> {
    diesel::sql_query("INSERT INTO outbox (event_id, routing_key, payload, created_at) VALUES (?, ?, ?, ?)")
        .bind::<Text, _>(event.event_id.0.to_string())
        .bind::<Text, _>(event.kind.routing_key())
        .bind::<Text, _>(String::from_utf8(event.to_json()).expect("json is utf-8"))
        .bind::<Text, _>(now())
        .execute(conn)
        .await?;
    Ok(())
}

/// The store's connection, known to be open.
struct Opened<'a>(MutexGuard<'a, Option<Conn>>);

impl std::ops::Deref for Opened<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.0.as_ref().expect("opened by SqliteStore::conn")
    }
}

impl std::ops::DerefMut for Opened<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.0.as_mut().expect("opened by SqliteStore::conn")
    }
}

impl SqliteStore {
    /// `path` is a file name (created when missing) or `:memory:`.
    pub fn new(path: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(!path.is_empty(), "sqlite:// needs a file path, e.g. sqlite://contoso.db");
        Ok(Self { path: path.into(), conn: Arc::new(Mutex::new(None)), relay: Arc::new(Mutex::new(())) })
    }

    /// The one connection, opened on first use; held until the guard drops.
    async fn conn(&self) -> Result<Opened<'_>, StoreError> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            let path = self.path.to_string();
            let conn = tokio::task::spawn_blocking(move || -> Result<SqliteConnection, String> {
                let mut conn = SqliteConnection::establish(&path).map_err(|e| e.to_string())?;
                // WAL: readers (the sqlite3 shell, a backup) never block the shop; the busy
                // timeout covers them taking the write lock briefly.
                conn.batch_execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                )
                .map_err(|e| e.to_string())?;
                Ok(conn)
            })
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", self.path)))?;
            *guard = Some(SyncConnectionWrapper::new(conn));
        }
        Ok(Opened(guard))
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        conn.spawn_blocking(|c| c.run_pending_migrations(MIGRATIONS).map(drop).map_err(diesel::result::Error::QueryBuilderError))
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrations failed: {e}")))
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        conn.batch_execute("SELECT 1").await?;
        Ok(())
    }

    pub async fn products(&self) -> Result<Vec<Product>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<ProductRow> =
            diesel::sql_query("SELECT id, name, price_cents, currency, available FROM products ORDER BY id").load(&mut *conn).await?;
        Ok(rows.into_iter().map(Product::from).collect())
    }

    pub(super) async fn replay(&self, user: &UserId, idem: &Idempotency) -> Result<Option<PlaceOutcome>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<IdempotencyRow> =
            diesel::sql_query("SELECT request_hash, correlation_id, response_body FROM idempotency_keys WHERE user_id = ? AND key = ?")
                .bind::<Text, _>(user.as_str())
                .bind::<Text, _>(idem.key.as_str())
                .load(&mut *conn)
                .await?;
        match rows.into_iter().next() {
            None => Ok(None),
            Some(r) if r.request_hash != idem.request_hash => Err(StoreError::IdempotencyMismatch),
            Some(r) => Ok(Some(PlaceOutcome::Replayed { correlation_id: CorrelationId(uuid(&r.correlation_id)?), body: r.response_body })),
        }
    }

    pub(super) async fn try_place(
        &self,
        user: &UserId,
        order: &NewOrder,
        idem: Option<&Idempotency>,
        before_commit: BeforeCommit,
    ) -> Result<Attempt, StoreError> {
        let mut conn = self.conn().await?;
        let user = user.clone();
        let order = order.clone();
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
            insert_event(conn, &Event::new(EventKind::Accepted, correlation_id, Utc::now())).await?;
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

    pub async fn order_state(&self, id: CorrelationId) -> Result<Option<OrderState>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<StatusRow> = diesel::sql_query("SELECT status, user_id, order_number FROM orders WHERE correlation_id = ?")
            .bind::<Text, _>(id.0.to_string())
            .load(&mut *conn)
            .await?;
        Ok(rows.into_iter().next().map(OrderState::from))
    }

    pub async fn begin_processing(&self, id: CorrelationId) -> Result<Option<Begun>, StoreError> {
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

    pub async fn complete(&self, id: CorrelationId, number: OrderNumber) -> Result<bool, StoreError> {
        let event = Event::new(EventKind::Processed { order_id: number.to_string() }, id, Utc::now());
        self.finish(id, OrderStatus::Completed, Some(number.0), None, event).await
    }

    pub async fn fail(&self, id: CorrelationId, reason: &str) -> Result<bool, StoreError> {
        let event = Event::new(EventKind::Failed { reason: reason.to_owned() }, id, Utc::now());
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

    /// Reads a batch, publishes it without holding the connection (a broker can take seconds
    /// to confirm; requests must not wait for it), then deletes the confirmed rows.
    pub async fn relay_outbox(&self, limit: i64, publish: Publish) -> Result<(usize, usize), StoreError> {
        let _relay = self.relay.lock().await;
        let rows: Vec<OutboxSqlRow> = {
            let mut conn = self.conn().await?;
            diesel::sql_query("SELECT id, event_id, routing_key, payload FROM outbox ORDER BY id LIMIT ?")
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
            .map(|r| Ok(OutboxRow { id: r.id, event_id: uuid(&r.event_id)?, routing_key: r.routing_key, payload: r.payload }))
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
                insert_event(conn, &super::accepted_again(uuid(&row.correlation_id)?)).await?;
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
