//! Stateful reconnect's store and its one claim rule, on memory, one Redis and the Redis
//! Cluster: a record is resumable once its holder lets go or dies, never while it holds it, and
//! never past its window or buffer or for another user; Acks trim what would be sent again; a
//! process that was taken over from cannot write any more.

use std::{ops::Deref, sync::Arc, time::Duration};

use bytes::Bytes;
use contoso::{
    hub::{
        protocol::Protocol,
        resume::{Claimed, Limits, MemoryResumeStore, NewRecord, RedisResumeStore, Refusal, Resume, ResumeStore, Synced, Update},
    },
    redis_client::{RedisClient, RedisMode},
};

use super::conformance;
use crate::harness::{env, eventually, unique_user};

pub struct Fixture(Arc<dyn ResumeStore>);

impl Deref for Fixture {
    type Target = Arc<dyn ResumeStore>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Fixture {
    async fn cleanup(self) {}
}

fn prefix() -> String {
    format!("t-resume-{}:", uuid::Uuid::new_v4().simple())
}

async fn redis() -> Fixture {
    let client = RedisClient::new(RedisMode::Standalone, &env::redis_url(), 2).unwrap();
    Fixture(Arc::new(RedisResumeStore::new(client, prefix())))
}

async fn cluster() -> Fixture {
    let client = RedisClient::new(RedisMode::Cluster, &env::redis_cluster_urls(), 2).unwrap();
    Fixture(Arc::new(RedisResumeStore::new(client, prefix())))
}

async fn memory() -> Fixture {
    Fixture(Arc::new(MemoryResumeStore::default()))
}

conformance!(redis, memory, cluster;
    a_released_connection_is_taken_with_its_unacknowledged_messages,
    acks_trim_what_would_be_sent_again,
    past_the_buffer_a_connection_cannot_be_resumed,
    the_process_taken_over_from_can_no_longer_write,
    an_id_is_created_once_and_forgotten_only_by_its_holder,
    a_record_lives_for_its_window_unless_refreshed,
    beats_say_who_is_alive,
    a_claim_waits_for_the_holder_and_refuses_while_it_is_alive,
    a_claim_takes_over_from_a_dead_holder,
    a_claim_refuses_another_user_and_a_record_past_its_window,
);

const LIMITS: Limits = Limits { window: Duration::from_secs(30), max_bytes: 1000 };

fn new_record<'a>(id: &'a str, user: &'a str, owner: &'a str) -> NewRecord<'a> {
    NewRecord { id, user, protocol: Protocol::MessagePack, owner, created_ms: 42 }
}

fn bytes(items: &[&'static str]) -> Vec<Bytes> {
    items.iter().map(|s| Bytes::from_static(s.as_bytes())).collect()
}

fn id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn a_released_connection_is_taken_with_its_unacknowledged_messages(store: &Arc<dyn ResumeStore>) {
    let (id, user) = (id(), unique_user("resume"));
    assert!(store.create(new_record(&id, &user, "p1"), LIMITS).await.unwrap());
    let sent = bytes(&["one", "two"]);
    let update = Update { entries: &sent, in_done: 3, acked: 0, cursor: Some("c2"), detach: false };
    assert_eq!(store.sync(&id, "p1", update, LIMITS).await.unwrap(), Synced::Kept);
    let record = store.record(&id).await.unwrap().unwrap();
    assert!(record.attached && !record.overflowed);
    assert_eq!((record.user.as_str(), record.owner.as_str()), (user.as_str(), "p1"));
    let update = Update { detach: true, in_done: 3, ..Default::default() };
    assert_eq!(store.sync(&id, "p1", update, LIMITS).await.unwrap(), Synced::Kept);
    assert!(!store.record(&id).await.unwrap().unwrap().attached);
    let claimed = store.take(&id, "p1", "p2", LIMITS).await.unwrap().expect("taken");
    let expected =
        Claimed { protocol: Protocol::MessagePack, acked: 0, journal: sent, in_done: 3, cursor: Some("c2".into()), created_ms: 42 };
    assert_eq!(claimed, expected);
    let record = store.record(&id).await.unwrap().unwrap();
    assert!(record.attached);
    assert_eq!(record.owner, "p2");
    assert_eq!(store.take(&id, "p1", "p3", LIMITS).await.unwrap(), None, "only from its holder");
}

async fn acks_trim_what_would_be_sent_again(store: &Arc<dyn ResumeStore>) {
    let (id, user) = (id(), unique_user("resume"));
    store.create(new_record(&id, &user, "p1"), LIMITS).await.unwrap();
    let sent = bytes(&["1", "2", "3"]);
    store.sync(&id, "p1", Update { entries: &sent, ..Default::default() }, LIMITS).await.unwrap();
    let more = bytes(&["4"]);
    store.sync(&id, "p1", Update { entries: &more, acked: 2, ..Default::default() }, LIMITS).await.unwrap();
    // An Ack beyond what was kept (it cannot happen) trims no more than there is.
    let claimed = store.take(&id, "p1", "p2", LIMITS).await.unwrap().unwrap();
    assert_eq!((claimed.acked, claimed.journal), (2, bytes(&["3", "4"])));
    store.sync(&id, "p2", Update { acked: 99, ..Default::default() }, LIMITS).await.unwrap();
    let claimed = store.take(&id, "p2", "p3", LIMITS).await.unwrap().unwrap();
    assert_eq!((claimed.acked, claimed.journal.len()), (4, 0));
}

async fn past_the_buffer_a_connection_cannot_be_resumed(store: &Arc<dyn ResumeStore>) {
    let (id, user) = (id(), unique_user("resume"));
    store.create(new_record(&id, &user, "p1"), LIMITS).await.unwrap();
    let half = vec![Bytes::from(vec![b'x'; 600])];
    assert_eq!(store.sync(&id, "p1", Update { entries: &half, ..Default::default() }, LIMITS).await.unwrap(), Synced::Kept);
    // Acknowledged bytes no longer count...
    let update = Update { entries: &half, acked: 1, ..Default::default() };
    assert_eq!(store.sync(&id, "p1", update, LIMITS).await.unwrap(), Synced::Kept);
    // ...unacknowledged ones do.
    assert_eq!(store.sync(&id, "p1", Update { entries: &half, ..Default::default() }, LIMITS).await.unwrap(), Synced::Overflowed);
    assert!(store.record(&id).await.unwrap().unwrap().overflowed);
    store.sync(&id, "p1", Update { detach: true, ..Default::default() }, LIMITS).await.unwrap();
    assert_eq!(store.take(&id, "p1", "p2", LIMITS).await.unwrap(), None);
}

async fn the_process_taken_over_from_can_no_longer_write(store: &Arc<dyn ResumeStore>) {
    let (id, user) = (id(), unique_user("resume"));
    store.create(new_record(&id, &user, "p1"), LIMITS).await.unwrap();
    store.take(&id, "p1", "p2", LIMITS).await.unwrap().unwrap();
    let late = bytes(&["late"]);
    assert_eq!(store.sync(&id, "p1", Update { entries: &late, ..Default::default() }, LIMITS).await.unwrap(), Synced::Lost);
    store.forget(&id, "p1").await.unwrap();
    let record = store.record(&id).await.unwrap().expect("not forgotten by a former holder");
    assert_eq!(record.owner, "p2");
    assert!(store.take(&id, "p2", "p3", LIMITS).await.unwrap().unwrap().journal.is_empty(), "the late message was not kept");
}

async fn an_id_is_created_once_and_forgotten_only_by_its_holder(store: &Arc<dyn ResumeStore>) {
    let (id, user) = (id(), unique_user("resume"));
    assert!(store.create(new_record(&id, &user, "p1"), LIMITS).await.unwrap());
    assert!(!store.create(new_record(&id, &user, "p9"), LIMITS).await.unwrap());
    assert_eq!(store.record(&id).await.unwrap().unwrap().owner, "p1");
    store.forget(&id, "p1").await.unwrap();
    assert_eq!(store.record(&id).await.unwrap(), None);
    assert!(store.seen(&id).await.unwrap(), "the id is remembered after its record is gone");
    assert!(!store.create(new_record(&id, &user, "p1"), LIMITS).await.unwrap(), "so its token cannot open another connection");
    assert!(!store.seen(&self::id()).await.unwrap());
    let sent = bytes(&["x"]);
    assert_eq!(store.sync(&id, "p1", Update { entries: &sent, ..Default::default() }, LIMITS).await.unwrap(), Synced::Lost);
}

async fn a_record_lives_for_its_window_unless_refreshed(store: &Arc<dyn ResumeStore>) {
    // An open connection's record outlives several refresh periods only if refreshed; a
    // released one lives for the window.
    let short = Limits { window: Duration::from_millis(300), max_bytes: 1000 };
    let (kept, released, lapsed, user) = (id(), id(), id(), unique_user("resume"));
    for id in [&kept, &released, &lapsed] {
        store.create(new_record(id, &user, "p1"), short).await.unwrap();
        let sent = bytes(&["m"]);
        store.sync(id, "p1", Update { entries: &sent, ..Default::default() }, short).await.unwrap();
    }
    store.sync(&released, "p1", Update { detach: true, ..Default::default() }, short).await.unwrap();
    let started = tokio::time::Instant::now();
    let ids: Vec<Arc<str>> = vec![kept.as_str().into()];
    while started.elapsed() < short.open_ttl() + Duration::from_millis(500) {
        store.refresh(&ids, short).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        if started.elapsed() > Duration::from_millis(800) {
            assert_eq!(store.record(&released).await.unwrap(), None, "a released record expires with its window");
        }
    }
    assert_eq!(store.record(&lapsed).await.unwrap(), None, "an open record nobody refreshes expires");
    assert_eq!(store.take(&kept, "p1", "p2", short).await.unwrap().expect("refreshed").journal, bytes(&["m"]));
}

async fn beats_say_who_is_alive(store: &Arc<dyn ResumeStore>) {
    let instance = id();
    assert!(!store.alive(&instance).await.unwrap());
    store.beat(&instance, Duration::from_millis(500)).await.unwrap();
    assert!(store.alive(&instance).await.unwrap());
    eventually(Duration::from_secs(5), "the beat to lapse", || async { (!store.alive(&instance).await.unwrap()).then_some(()) }).await;
}

fn resume(store: &Arc<dyn ResumeStore>, window: Duration) -> Arc<Resume> {
    Arc::new(Resume::new(store.clone(), Limits { window, max_bytes: 1000 }))
}

async fn a_claim_waits_for_the_holder_and_refuses_while_it_is_alive(store: &Arc<dyn ResumeStore>) {
    let (holder, claimer) = (resume(store, Duration::from_secs(30)), resume(store, Duration::from_secs(30)));
    let (id, user) = (id(), unique_user("resume"));
    store.create(new_record(&id, &user, &holder.instance), holder.limits).await.unwrap();
    store.beat(&holder.instance, Duration::from_secs(30)).await.unwrap();
    assert_eq!(claimer.claim(&id, &user).await.unwrap_err(), Refusal::InUse);
    // Released while the claim waits: taken.
    let claim = tokio::spawn({
        let (claimer, id, user) = (claimer.clone(), id.clone(), user.clone());
        async move { claimer.claim(&id, &user).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let update = Update { detach: true, ..Default::default() };
    store.sync(&id, &holder.instance, update, holder.limits).await.unwrap();
    assert!(claim.await.unwrap().is_ok());
    assert_eq!(store.record(&id).await.unwrap().unwrap().owner, &*claimer.instance);
}

async fn a_claim_takes_over_from_a_dead_holder(store: &Arc<dyn ResumeStore>) {
    let (holder, claimer) = (resume(store, Duration::from_secs(30)), resume(store, Duration::from_secs(30)));
    let (id, user) = (id(), unique_user("resume"));
    store.create(new_record(&id, &user, &holder.instance), holder.limits).await.unwrap();
    let sent = bytes(&["kept"]);
    store.sync(&id, &holder.instance, Update { entries: &sent, ..Default::default() }, holder.limits).await.unwrap();
    // The holder beat once and died: its record is taken once the beat lapses.
    store.beat(&holder.instance, Duration::from_millis(800)).await.unwrap();
    let claimed = claimer.claim(&id, &user).await.expect("taken from a dead holder");
    assert_eq!(claimed.journal, sent);
}

async fn a_claim_refuses_another_user_and_a_record_past_its_window(store: &Arc<dyn ResumeStore>) {
    let claimer = resume(store, Duration::from_secs(1));
    let (id, user) = (id(), unique_user("resume"));
    store.create(new_record(&id, &user, "gone"), Limits { window: Duration::from_secs(30), max_bytes: 1000 }).await.unwrap();
    assert_eq!(claimer.claim(&id, "someone-else").await.unwrap_err(), Refusal::Unknown);
    assert_eq!(claimer.claim("no-such-connection", &user).await.unwrap_err(), Refusal::Unknown);
    let update = Update { detach: true, ..Default::default() };
    store.sync(&id, "gone", update, Limits { window: Duration::from_secs(30), max_bytes: 1000 }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(claimer.claim(&id, &user).await.unwrap_err(), Refusal::Unknown, "detached longer ago than the window");
}
