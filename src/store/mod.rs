//! The database seam: one `Store` for every role, backed by PostgreSQL (production, split
//! roles) or by an embedded SQLite file (`--role all` on a laptop), chosen by the URL's
//! scheme. Only this module knows diesel; rows become domain types here.

mod group_commit;
mod orders;
mod outbox;
mod postgres;
mod processing;
pub mod schema;
mod sqlite;

pub use orders::{BeforeCommit, Idempotency, OrderView, PlaceOutcome, PlacedOrder, Product};
pub use outbox::{OutboxRow, Publish};
pub use postgres::PgStore;
pub use processing::{Begun, OrderState};
pub use sqlite::SqliteStore;

use std::collections::{HashMap, HashSet};

use crate::domain::{CorrelationId, Event, EventKind, NewOrder, OrderNumber, UserId};
use orders::Attempt;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or failed mid-way; the transaction was rolled back.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("unknown product '{product_id}' at items[{index}]")]
    UnknownProduct { index: usize, product_id: String },
    #[error("items mix currencies {0} and {1}")]
    MixedCurrencies(String, String),
    #[error("Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    /// A step outside the database failed before commit (e.g. the Redis write); rolled back.
    #[error("{0}")]
    Aborted(String),
}

impl From<diesel::result::Error> for StoreError {
    fn from(err: diesel::result::Error) -> Self {
        StoreError::Unavailable(err.to_string())
    }
}

/// The store of one process. Cheap to clone. Building it never fails because the database
/// is down; the first query tells.
#[derive(Clone)]
pub struct Store(Backend);

#[derive(Clone)]
enum Backend {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

/// The URL scheme of the embedded database (`sqlite://PATH`, CONTRACT §1).
pub const SQLITE_SCHEME: &str = "sqlite://";

/// Runs the same call on whichever backend this store has.
macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match &$self.0 {
            Backend::Postgres($store) => $call,
            Backend::Sqlite($store) => $call,
        }
    };
}

impl Store {
    /// `postgres://...` opens a pool of `size`; `sqlite://PATH` opens (creating) the file.
    pub fn new(url: &str, size: usize) -> anyhow::Result<Self> {
        match url.strip_prefix(SQLITE_SCHEME) {
            Some(path) => Ok(Store(Backend::Sqlite(SqliteStore::new(path)?))),
            None => Ok(Store(Backend::Postgres(PgStore::new(url, size)?))),
        }
    }

    /// Whether this is the embedded single-file database (one writer: share one `Store`).
    pub fn is_embedded(&self) -> bool {
        matches!(self.0, Backend::Sqlite(_))
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.migrate().await)
    }

    /// One round trip; readiness uses it.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping().await)
    }

    pub async fn products(&self) -> Result<Vec<Product>, StoreError> {
        dispatch!(self, s => s.products().await)
    }

    /// Places an order for `user`: prices it from the catalogue, writes the order, its lines,
    /// the idempotency record and the `order.accepted` outbox row in one transaction, runs
    /// `before_commit` (the status cache write) and commits. Returns the stored answer on a replay.
    pub async fn place_order(
        &self,
        user: &UserId,
        order: &NewOrder,
        idempotency: Option<Idempotency>,
        before_commit: BeforeCommit,
    ) -> Result<PlaceOutcome, StoreError> {
        if let Some(idem) = &idempotency
            && let Some(outcome) = dispatch!(self, s => s.replay(user, idem).await)?
        {
            return Ok(outcome);
        }
        match dispatch!(self, s => s.try_place(user, order, idempotency.as_ref(), before_commit).await)? {
            Attempt::Done(outcome) => Ok(outcome),
            Attempt::LostRace => {
                let idem = idempotency.expect("a race needs a key");
                dispatch!(self, s => s.replay(user, &idem).await)?
                    .ok_or_else(|| StoreError::Unavailable("idempotency record vanished".into()))
            }
        }
    }

    /// The order if `user` owns it; `None` both when it does not exist and when it is someone else's.
    pub async fn order_for_user(&self, user: &UserId, id: CorrelationId) -> Result<Option<OrderView>, StoreError> {
        dispatch!(self, s => s.order_for_user(user, id).await)
    }

    /// The user's most recent orders, newest first.
    pub async fn orders_for_user(&self, user: &UserId, limit: i64) -> Result<Vec<OrderView>, StoreError> {
        dispatch!(self, s => s.orders_for_user(user, limit).await)
    }

    pub async fn order_state(&self, id: CorrelationId) -> Result<Option<OrderState>, StoreError> {
        dispatch!(self, s => s.order_state(id).await)
    }

    /// For each order: ACCEPTED -> PROCESSING, the first product that cannot be sold and, when
    /// the order can complete, a fresh order number (never reused). One round trip on
    /// PostgreSQL for the whole batch. Unknown orders are absent from the answer.
    pub async fn begin_processing_many(&self, ids: &[CorrelationId]) -> Result<HashMap<CorrelationId, Begun>, StoreError> {
        dispatch!(self, s => s.begin_processing_many(ids).await)
    }

    /// -> COMPLETED with its number and an `order.processed` outbox row, for each order, atomically
    /// (one statement and one commit on PostgreSQL). Returns the orders that moved; the others
    /// were already final (nothing written for them). The third item: the `traceparent` the
    /// outbox row carries on, if the work is traced.
    pub async fn complete_many(&self, done: &[(CorrelationId, OrderNumber, Option<String>)]) -> Result<HashSet<CorrelationId>, StoreError> {
        dispatch!(self, s => s.complete_many(done).await)
    }

    /// -> FAILED with `reason` and an `order.failed` outbox row, atomically. False when the
    /// order was already final.
    pub async fn fail(&self, id: CorrelationId, reason: &str, trace: Option<String>) -> Result<bool, StoreError> {
        dispatch!(self, s => s.fail(id, reason, trace).await)
    }

    /// Takes up to `limit` unsent rows, hands them to `publish` and deletes the confirmed
    /// ones. Returns (rows taken, rows confirmed).
    pub async fn relay_outbox(&self, limit: i64, publish: Publish) -> Result<(usize, usize), StoreError> {
        dispatch!(self, s => s.relay_outbox(limit, publish).await)
    }

    /// Writes a fresh `order.accepted` outbox row for every order that is not final yet, and
    /// returns how many. For an event bus that forgets on restart (the in-process one): what it
    /// held is sent again, and processing, being idempotent, finishes each order once.
    pub async fn requeue_unfinished(&self) -> Result<usize, StoreError> {
        dispatch!(self, s => s.requeue_unfinished().await)
    }

    /// Rows not yet confirmed by the broker (the outbox backlog gauge).
    pub async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        dispatch!(self, s => s.outbox_backlog().await)
    }
}

/// An `order.accepted` for an order that was accepted earlier (a new event id: a new message).
pub(in crate::store) fn accepted_again(id: uuid::Uuid) -> Event {
    Event::new(EventKind::Accepted, CorrelationId(id), chrono::Utc::now())
}
