//! The PostgreSQL store: a deadpool of diesel-async connections and embedded migrations run
//! under an advisory lock. The queries of each role live beside it (orders, outbox,
//! processing) as `impl PgStore` blocks.

use std::time::Duration;

use diesel::{QueryableByName, sql_types::BigInt};
use diesel_async::{
    AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl,
    pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod, deadpool::Pool},
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::{StoreError, group_commit::GroupCommit};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
/// Key of the advisory lock that serialises migrations across pods starting together.
const MIGRATION_LOCK: i64 = 0x0063_6f6e_746f_736f;

impl From<deadpool::managed::PoolError<diesel_async::pooled_connection::PoolError>> for StoreError {
    fn from(err: deadpool::managed::PoolError<diesel_async::pooled_connection::PoolError>) -> Self {
        StoreError::Unavailable(err.to_string())
    }
}

/// A pool of PostgreSQL connections. Cheap to clone. Connections open lazily, so building a
/// store never fails because the database is down; the first query tells.
#[derive(Clone)]
pub struct PgStore {
    pub(super) pool: Pool<AsyncPgConnection>,
    url: std::sync::Arc<str>,
    pub(super) group: GroupCommit,
}

impl PgStore {
    pub fn new(url: &str, size: usize) -> anyhow::Result<Self> {
        let mut config = ManagerConfig::default();
        // A broken connection fails its first query and is discarded; no ping per checkout.
        config.recycling_method = RecyclingMethod::Fast;
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
        let pool = Pool::builder(manager)
            .max_size(size)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(2)))
            .create_timeout(Some(Duration::from_secs(2)))
            .build()?;
        // A quarter of the pool writes new orders: the rest stays for reads, the relay and processing.
        Ok(Self { pool, url: url.into(), group: GroupCommit::new(size / 4) })
    }

    /// Runs pending migrations on a dedicated connection holding a session advisory lock, so
    /// that several pods starting together migrate once. Needs the multi-thread runtime
    /// (the harness uses block_in_place).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = AsyncPgConnection::establish(&self.url).await.map_err(|e| StoreError::Unavailable(e.to_string()))?;
        diesel::sql_query("SELECT pg_advisory_lock($1)").bind::<BigInt, _>(MIGRATION_LOCK).execute(&mut conn).await?;
        let mut harness = AsyncMigrationHarness::new(conn);
        let res =
            harness.run_pending_migrations(MIGRATIONS).map(|_| ()).map_err(|e| StoreError::Unavailable(format!("migrations failed: {e}")));
        let mut conn = harness.into_inner();
        diesel::sql_query("SELECT pg_advisory_unlock($1)").bind::<BigInt, _>(MIGRATION_LOCK).execute(&mut conn).await?;
        res
    }

    /// One round trip; readiness uses it.
    pub async fn ping(&self) -> Result<(), StoreError> {
        #[derive(QueryableByName)]
        struct One {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            #[allow(dead_code)]
            one: i32,
        }
        let mut conn = self.pool.get().await?;
        diesel::sql_query("SELECT 1 AS one").get_result::<One>(&mut *conn).await?;
        Ok(())
    }

    pub(crate) async fn conn(&self) -> Result<deadpool::managed::Object<AsyncDieselConnectionManager<AsyncPgConnection>>, StoreError> {
        Ok(self.pool.get().await?)
    }
}
