//! The embedded store of `--role all`: one SQLite file through diesel's connection wrapped
//! for async use. One connection behind a mutex, because SQLite has one writer anyway and a
//! laptop shop needs no more. The queries sit beside it as the PostgreSQL ones do (orders,
//! outbox, processing) and mean what those mean.

mod orders;
mod outbox;
mod processing;

use std::sync::Arc;

use chrono::{SecondsFormat, Utc};
use diesel::{Connection, QueryableByName, SqliteConnection, connection::SimpleConnection, sql_types::BigInt};
use diesel_async::{SimpleAsyncConnection, sync_connection_wrapper::SyncConnectionWrapper};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

use super::StoreError;

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
struct NumberRow {
    #[diesel(sql_type = BigInt)]
    value: i64,
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
}
