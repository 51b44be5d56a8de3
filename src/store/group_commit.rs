//! Group commit for placing orders on PostgreSQL: orders that arrive while every writer is busy
//! share one transaction (one catalogue read, one multi-row INSERT per table, one COMMIT). An
//! order that arrives alone is written alone, as before; under load the round trips and commits
//! per order fall with the size of the batch, and each order's outcome is the one it would get alone.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, OnceLock},
    time::Duration,
};

use chrono::Utc;
use diesel::{ExpressionMethods, QueryDsl, SelectableHelper, upsert::on_constraint};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, pooled_connection::deadpool::Pool};
use futures_util::future::join_all;
use tokio::{
    runtime::Handle,
    sync::{Semaphore, mpsc, oneshot},
};

use super::{
    StoreError,
    orders::{Attempt, BeforeCommit, Idempotency, PlaceOutcome, PlacedOrder, Priced, Product, price},
    schema::*,
};
use crate::{
    domain::{CorrelationId, Event, EventKind, NewOrder, OrderStatus, UserId},
    telemetry::names,
};

/// Orders per transaction at most: enough to amortise a commit, few enough to keep it short.
const MAX_BATCH: usize = 64;
/// Orders waiting for a writer at most; past it a POST waits `QUEUE_WAIT`, then is refused.
const QUEUE: usize = 1024;
/// As long as a request would wait for a pooled connection before answering 503.
const QUEUE_WAIT: Duration = Duration::from_secs(2);

struct Job {
    work: Work,
    before_commit: BeforeCommit,
    reply: oneshot::Sender<Result<Attempt, StoreError>>,
}

struct Work {
    user: UserId,
    order: NewOrder,
    idem: Option<Idempotency>,
    /// The request's trace, continued by the order's `order.accepted` message.
    trace: Option<String>,
}

/// What one order of a committed batch came to.
enum Outcome {
    Created(PlacedOrder),
    /// Refused before anything was written for it (unknown product, mixed currencies).
    Refused(StoreError),
    /// Its Idempotency-Key was taken first (by another request, or earlier in this batch).
    LostRace,
}

/// The writer tasks of one store. Started on first use; they stop when the last handle of the
/// store is dropped.
#[derive(Clone)]
pub(super) struct GroupCommit {
    jobs: Arc<OnceLock<mpsc::Sender<Job>>>,
    writers: usize,
    /// The runtime the store was built in (the main one), rather than the first caller's: HTTP
    /// workers run runtimes of their own, and one worker should not carry every write.
    runtime: Option<Handle>,
}

impl GroupCommit {
    /// `writers` transactions at most run at once; what arrives meanwhile forms the next batch.
    pub fn new(writers: usize) -> Self {
        Self { jobs: Arc::new(OnceLock::new()), writers: writers.max(1), runtime: Handle::try_current().ok() }
    }

    pub async fn place(
        &self,
        pool: &Pool<AsyncPgConnection>,
        user: &UserId,
        order: &NewOrder,
        idem: Option<&Idempotency>,
        before_commit: BeforeCommit,
    ) -> Result<Attempt, StoreError> {
        let jobs = self.jobs.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let dispatcher = dispatch(pool.clone(), rx, self.writers);
            match &self.runtime {
                Some(runtime) => drop(runtime.spawn(dispatcher)),
                None => drop(tokio::spawn(dispatcher)),
            }
            tx
        });
        let idem = idem.map(|i| Idempotency { key: i.key.clone(), request_hash: i.request_hash.clone() });
        let (reply, answer) = oneshot::channel();
        let work = Work { user: user.clone(), order: order.clone(), idem, trace: crate::telemetry::otel::current() };
        jobs.send_timeout(Job { work, before_commit, reply }, QUEUE_WAIT)
            .await
            .map_err(|_| StoreError::Unavailable("too many orders are waiting for the database".into()))?;
        answer.await.unwrap_or_else(|_| Err(StoreError::Unavailable("the order writer stopped".into())))
    }
}

async fn dispatch(pool: Pool<AsyncPgConnection>, mut jobs: mpsc::Receiver<Job>, writers: usize) {
    let permits = Arc::new(Semaphore::new(writers));
    while let Some(first) = jobs.recv().await {
        // A free writer first, then the batch: what arrives while all are busy joins it.
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH
            && let Ok(job) = jobs.try_recv()
        {
            batch.push(job);
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            write(&pool, batch).await;
            drop(permit);
        });
    }
}

/// Writes one batch and answers each of its orders.
async fn write(pool: &Pool<AsyncPgConnection>, jobs: Vec<Job>) {
    metrics::histogram!(names::ORDER_BATCH_SIZE).record(jobs.len() as f64);
    let mut replies = Vec::with_capacity(jobs.len());
    let mut work = Vec::with_capacity(jobs.len());
    let mut hooks = Vec::with_capacity(jobs.len());
    for job in jobs {
        replies.push(job.reply);
        work.push(job.work);
        hooks.push(Some(job.before_commit));
    }
    let outcomes = match pool.get().await {
        Ok(mut conn) => conn.transaction::<_, StoreError, _>(async move |conn| place_all(conn, work, hooks).await).await,
        Err(err) => Err(err.into()),
    };
    match outcomes {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(match outcome {
                    Outcome::Created(placed) => Ok(Attempt::Done(PlaceOutcome::Created(placed))),
                    Outcome::Refused(err) => Err(err),
                    Outcome::LostRace => Ok(Attempt::LostRace),
                });
            }
        }
        // Nothing of the batch was committed: every order gets the error.
        Err(err) => {
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

/// An order of the batch that is to be written: its place in the batch, what was asked, its
/// pricing and its new id.
struct Row {
    index: usize,
    work: Work,
    priced: Priced,
    id: CorrelationId,
}

impl Row {
    fn placed(&self) -> PlacedOrder {
        PlacedOrder {
            correlation_id: self.id,
            status: OrderStatus::Accepted,
            total_cents: self.priced.total,
            currency: self.priced.currency.clone(),
        }
    }

    fn key(&self) -> (&str, Option<&str>) {
        (self.work.user.as_str(), self.work.idem.as_ref().map(|i| i.key.as_str()))
    }
}

/// The batch's statements, inside its transaction; one outcome per order, in order. A failed
/// `before_commit` (`hooks`, one per order) of any order rolls the whole batch back.
async fn place_all(conn: &mut AsyncPgConnection, work: Vec<Work>, hooks: Vec<Option<BeforeCommit>>) -> Result<Vec<Outcome>, StoreError> {
    let catalogue = catalogue(conn, &work).await?;
    let (mut outcomes, rows) = plan(work, &catalogue);
    if rows.is_empty() {
        return Ok(outcomes);
    }
    // Orders first: an idempotency record refers to its order.
    insert_orders(conn, &rows).await?;
    let rows = claim_keys(conn, rows).await?;
    if rows.is_empty() {
        return Ok(outcomes);
    }
    insert_lines(conn, &rows).await?;
    insert_events(conn, &rows).await?;
    run_hooks(&rows, hooks, &mut outcomes).await?;
    Ok(outcomes)
}

/// The products the batch's orders name, by id, in one read.
async fn catalogue(conn: &mut AsyncPgConnection, work: &[Work]) -> Result<HashMap<String, Product>, StoreError> {
    let wanted: Vec<&str> = work.iter().flat_map(|w| w.order.lines.iter().map(|l| l.product_id.as_str())).collect();
    let products = products::table.filter(products::id.eq_any(&wanted)).select(Product::as_select()).load(conn).await?;
    Ok(products.into_iter().map(|p| (p.id.clone(), p)).collect())
}

/// Each order's outcome should nothing more happen to it, and the rows to write.
fn plan(work: Vec<Work>, catalogue: &HashMap<String, Product>) -> (Vec<Outcome>, Vec<Row>) {
    let mut outcomes = Vec::with_capacity(work.len());
    let mut rows = Vec::with_capacity(work.len());
    let mut keys = HashSet::new();
    for (index, w) in work.into_iter().enumerate() {
        outcomes.push(match price(&w.order, catalogue) {
            Err(err) => Outcome::Refused(err),
            // A key twice in one batch: the first one wins, the second replays its answer.
            Ok(_) if w.idem.as_ref().is_some_and(|i| !keys.insert((w.user.clone(), i.key.clone()))) => Outcome::LostRace,
            Ok(priced) => {
                rows.push(Row { index, work: w, priced, id: CorrelationId::new() });
                // Until it is written: its key may still turn out to be taken.
                Outcome::LostRace
            }
        });
    }
    (outcomes, rows)
}

async fn insert_orders(conn: &mut AsyncPgConnection, rows: &[Row]) -> Result<(), StoreError> {
    let orders: Vec<_> = rows
        .iter()
        .map(|row| {
            (
                orders::correlation_id.eq(row.id.0),
                orders::user_id.eq(row.work.user.as_str().to_owned()),
                orders::status.eq(OrderStatus::Accepted.as_str()),
                orders::total_cents.eq(row.priced.total),
                orders::currency.eq(row.priced.currency.clone()),
            )
        })
        .collect();
    diesel::insert_into(orders::table).values(&orders).execute(conn).await?;
    Ok(())
}

/// Records the rows' Idempotency-Keys; the rows whose keys requests that committed first hold
/// are taken out, their orders deleted again.
async fn claim_keys(conn: &mut AsyncPgConnection, rows: Vec<Row>) -> Result<Vec<Row>, StoreError> {
    // Keys in one order in every batch, so two batches that share keys cannot deadlock.
    let mut keyed: Vec<&Row> = rows.iter().filter(|row| row.work.idem.is_some()).collect();
    if keyed.is_empty() {
        return Ok(rows);
    }
    keyed.sort_by(|a, b| a.key().cmp(&b.key()));
    let records: Vec<_> = keyed
        .into_iter()
        .filter_map(|row| {
            let idem = row.work.idem.as_ref()?;
            Some((
                idempotency_keys::user_id.eq(row.work.user.as_str().to_owned()),
                idempotency_keys::key.eq(idem.key.as_str().to_owned()),
                idempotency_keys::request_hash.eq(idem.request_hash.clone()),
                idempotency_keys::correlation_id.eq(row.id.0),
                idempotency_keys::response_body.eq(row.placed().body()),
            ))
        })
        .collect();
    // A key a concurrent request holds makes this wait for its commit, then skip the row.
    let taken: HashSet<(String, String)> = diesel::insert_into(idempotency_keys::table)
        .values(&records)
        .on_conflict(on_constraint("idempotency_keys_pkey"))
        .do_nothing()
        .returning((idempotency_keys::user_id, idempotency_keys::key))
        .get_results::<(String, String)>(conn)
        .await?
        .into_iter()
        .collect();
    let (kept, lost): (Vec<_>, Vec<_>) = rows.into_iter().partition(|row| {
        row.work.idem.as_ref().is_none_or(|i| taken.contains(&(row.work.user.as_str().to_owned(), i.key.as_str().to_owned())))
    });
    if !lost.is_empty() {
        // Their keys were taken by requests that committed first: their orders go again.
        let ids: Vec<uuid::Uuid> = lost.iter().map(|row| row.id.0).collect();
        diesel::delete(orders::table.filter(orders::correlation_id.eq_any(&ids))).execute(conn).await?;
    }
    Ok(kept)
}

async fn insert_lines(conn: &mut AsyncPgConnection, rows: &[Row]) -> Result<(), StoreError> {
    let lines: Vec<_> = rows
        .iter()
        .flat_map(|row| {
            row.priced.lines.iter().map(move |l| {
                (
                    order_lines::correlation_id.eq(row.id.0),
                    order_lines::line_no.eq(l.line_no),
                    order_lines::product_id.eq(l.product_id.clone()),
                    order_lines::quantity.eq(l.quantity),
                    order_lines::unit_price_cents.eq(l.unit_price_cents),
                )
            })
        })
        .collect();
    diesel::insert_into(order_lines::table).values(&lines).execute(conn).await?;
    Ok(())
}

/// Each order's `order.accepted`, in the outbox with the request's trace.
async fn insert_events(conn: &mut AsyncPgConnection, rows: &[Row]) -> Result<(), StoreError> {
    let now = Utc::now();
    let events: Vec<_> = rows
        .iter()
        .map(|row| {
            let event = Event::new(EventKind::Accepted, row.id, now);
            (
                outbox::event_id.eq(event.event_id.0),
                outbox::routing_key.eq(event.kind.routing_key()),
                outbox::payload.eq(String::from_utf8(event.to_json()).expect("json is utf-8")),
                outbox::traceparent.eq(row.work.trace.clone()),
            )
        })
        .collect();
    diesel::insert_into(outbox::table).values(&events).execute(conn).await?;
    Ok(())
}

/// Every written order's `before_commit`, at once; the first failure aborts the batch.
async fn run_hooks(rows: &[Row], mut hooks: Vec<Option<BeforeCommit>>, outcomes: &mut [Outcome]) -> Result<(), StoreError> {
    let mut pending = Vec::with_capacity(rows.len());
    for row in rows {
        let order = row.placed();
        let hook = hooks[row.index].take().expect("one hook per order");
        outcomes[row.index] = Outcome::Created(order.clone());
        pending.push(hook(order));
    }
    match join_all(pending).await.into_iter().find_map(Result::err) {
        Some(err) => Err(StoreError::Aborted(err)),
        None => Ok(()),
    }
}
