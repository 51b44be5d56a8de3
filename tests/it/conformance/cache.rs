//! The status cache and the notification log: Redis against `MemoryCache`. The log's
//! `complete` flag is what a reconnecting tab relies on to know whether it must fall back to
//! `GetCurrentStatus`, so trimming by count and by age is checked on both.

use std::{ops::Deref, sync::Arc, time::Duration};

use contoso::{
    cache::{Append, CacheError, MemoryCache, NotificationLog, RedisCache, Retention, StatusCache},
    domain::{CorrelationId, OrderStatus, UserId},
    redis_client::RedisMode,
};
use serde_json::json;

use super::conformance;
use crate::harness::{env, eventually, unique_user};

/// Both traits of one implementation.
pub trait Cache: StatusCache + NotificationLog {}
impl<T: StatusCache + NotificationLog> Cache for T {}

pub struct Fixture(Arc<dyn Cache>);

impl Deref for Fixture {
    type Target = dyn Cache;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl Fixture {
    async fn cleanup(self) {}
}

/// Small retention so trimming is reachable: 3 notifications, 3 seconds.
const RETENTION: Retention = Retention { max_count: 3, max_age: Duration::from_secs(3) };

async fn redis() -> Fixture {
    Fixture(Arc::new(RedisCache::new(RedisMode::Standalone, &env::redis_url(), 2, RETENTION).unwrap()))
}

async fn cluster() -> Fixture {
    Fixture(Arc::new(RedisCache::new(RedisMode::Cluster, &env::redis_cluster_urls(), 2, RETENTION).unwrap()))
}

async fn memory() -> Fixture {
    Fixture(Arc::new(MemoryCache::new(RETENTION)))
}

conformance!(redis, memory, cluster;
    a_new_order_maps_to_its_user_and_status,
    status_only_moves_forward,
    a_batch_of_statuses_moves_each_order_forward_only,
    keys_expire_with_their_ttl,
    notifications_replay_after_an_id_in_order,
    a_duplicate_event_keeps_its_notification_id,
    trimming_by_count_makes_an_older_resume_point_incomplete,
    ageing_out_makes_an_older_resume_point_incomplete,
    a_resume_point_just_before_a_whole_log_is_complete,
    ageing_out_within_a_live_log_is_seen_too,
    a_malformed_notification_id_is_refused,
    users_never_see_each_others_notifications,
    a_batch_of_appends_is_like_appending_one_by_one,
    users_of_many_orders_come_back_in_order,
);

fn user(name: &str) -> UserId {
    UserId::parse(&unique_user(name)).unwrap()
}

const DAY: Duration = Duration::from_secs(86_400);

async fn a_new_order_maps_to_its_user_and_status(c: &dyn Cache) {
    let (id, alice) = (CorrelationId::new(), user("alice"));
    assert_eq!(c.user_of(id).await.unwrap(), None);
    c.put_new_order(id, &alice, OrderStatus::Accepted, DAY).await.unwrap();
    assert_eq!(c.user_of(id).await.unwrap(), Some(alice));
    assert_eq!(c.status(id).await.unwrap(), Some(OrderStatus::Accepted));
    c.ping().await.unwrap();
}

async fn status_only_moves_forward(c: &dyn Cache) {
    let id = CorrelationId::new();
    c.put_new_order(id, &user("bob"), OrderStatus::Accepted, DAY).await.unwrap();
    c.set_status(id, OrderStatus::Processing, DAY).await.unwrap();
    assert_eq!(c.status(id).await.unwrap(), Some(OrderStatus::Processing));
    c.set_status(id, OrderStatus::Completed, DAY).await.unwrap();
    // A redelivered event must not move the order backwards, nor sideways to another final state.
    c.set_status(id, OrderStatus::Processing, DAY).await.unwrap();
    c.set_status(id, OrderStatus::Failed, DAY).await.unwrap();
    assert_eq!(c.status(id).await.unwrap(), Some(OrderStatus::Completed));
}

async fn a_batch_of_statuses_moves_each_order_forward_only(c: &dyn Cache) {
    let (fresh, done, unknown) = (CorrelationId::new(), CorrelationId::new(), CorrelationId::new());
    for id in [fresh, done] {
        c.put_new_order(id, &user("dora"), OrderStatus::Accepted, DAY).await.unwrap();
    }
    c.set_status(done, OrderStatus::Completed, DAY).await.unwrap();
    c.set_statuses(&[], DAY).await.unwrap();
    c.set_statuses(&[(fresh, OrderStatus::Processing), (done, OrderStatus::Processing), (unknown, OrderStatus::Failed)], DAY)
        .await
        .unwrap();
    assert_eq!(c.status(fresh).await.unwrap(), Some(OrderStatus::Processing));
    assert_eq!(c.status(done).await.unwrap(), Some(OrderStatus::Completed), "a final status never moves back");
    assert_eq!(c.status(unknown).await.unwrap(), Some(OrderStatus::Failed));
    c.set_statuses(&[(fresh, OrderStatus::Completed), (fresh, OrderStatus::Processing)], DAY).await.unwrap();
    assert_eq!(c.status(fresh).await.unwrap(), Some(OrderStatus::Completed), "applied in order, forward only");
}

async fn keys_expire_with_their_ttl(c: &dyn Cache) {
    let id = CorrelationId::new();
    c.put_new_order(id, &user("carol"), OrderStatus::Accepted, Duration::from_secs(1)).await.unwrap();
    assert!(c.user_of(id).await.unwrap().is_some());
    eventually(Duration::from_secs(5), "the map and status keys to expire", || async {
        (c.user_of(id).await.unwrap().is_none() && c.status(id).await.unwrap().is_none()).then_some(())
    })
    .await;
}

async fn append(c: &dyn Cache, user: &UserId, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(c.append(user, &uuid::Uuid::new_v4().to_string(), "OrderCompleted", &json!({ "i": i })).await.unwrap().id);
    }
    ids
}

async fn notifications_replay_after_an_id_in_order(c: &dyn Cache) {
    let dave = user("dave");
    let ids = append(c, &dave, 3).await;
    let all = c.since(&dave, None).await.unwrap();
    assert!(all.complete);
    assert_eq!(all.notifications.iter().map(|n| n.id.clone()).collect::<Vec<_>>(), ids);
    assert_eq!(all.notifications[1].payload, json!({ "i": 1 }));
    assert_eq!(all.notifications[1].target, "OrderCompleted");
    assert_eq!(all.notifications[1].argument()["notificationId"], json!(ids[1]));
    let after_first = c.since(&dave, Some(&ids[0])).await.unwrap();
    assert!(after_first.complete);
    assert_eq!(after_first.notifications.iter().map(|n| n.id.clone()).collect::<Vec<_>>(), ids[1..].to_vec());
    let latest = c.since(&dave, Some(&ids[2])).await.unwrap();
    assert!(latest.complete && latest.notifications.is_empty());
}

async fn a_duplicate_event_keeps_its_notification_id(c: &dyn Cache) {
    let erin = user("erin");
    let first = c.append(&erin, "event-1", "OrderCompleted", &json!({})).await.unwrap();
    let again = c.append(&erin, "event-1", "OrderCompleted", &json!({})).await.unwrap();
    assert_eq!(first.id, again.id);
    assert_eq!(c.since(&erin, None).await.unwrap().notifications.len(), 1);
}

async fn trimming_by_count_makes_an_older_resume_point_incomplete(c: &dyn Cache) {
    let frank = user("frank");
    let ids = append(c, &frank, 5).await; // retention keeps 3
    let from_first = c.since(&frank, Some(&ids[0])).await.unwrap();
    assert!(!from_first.complete, "ids[1] was trimmed before this client saw it");
    assert_eq!(from_first.notifications.iter().map(|n| n.id.clone()).collect::<Vec<_>>(), ids[2..].to_vec());
    assert!(c.since(&frank, Some(&ids[1])).await.unwrap().complete, "nothing after ids[1] was trimmed");
    assert!(!c.since(&frank, None).await.unwrap().complete, "a client that saw nothing missed the trimmed ones");
}

async fn ageing_out_makes_an_older_resume_point_incomplete(c: &dyn Cache) {
    let grace = user("grace");
    let old = append(c, &grace, 1).await;
    // Retention is wall-clock time: the stream, refreshed by nothing, expires as a whole.
    eventually(Duration::from_secs(10), "the log to expire", || async {
        (!c.since(&grace, Some(&old[0])).await.unwrap().complete).then_some(())
    })
    .await;
    let fresh = append(c, &grace, 1).await;
    let replay = c.since(&grace, Some(&old[0])).await.unwrap();
    assert!(!replay.complete, "what followed old[0] is unknown");
    assert_eq!(replay.notifications.iter().map(|n| n.id.clone()).collect::<Vec<_>>(), fresh);
    assert!(c.since(&grace, Some(&fresh[0])).await.unwrap().complete, "a resume point in the new log is complete");
}

/// A client that rewinds a little before its last id, which is the first entry of its log,
/// missed nothing: no earlier log can have held anything that recent.
async fn a_resume_point_just_before_a_whole_log_is_complete(c: &dyn Cache) {
    let ivy = user("ivy");
    let ids = append(c, &ivy, 2).await;
    let (ms, _) = ids[0].split_once('-').unwrap();
    let rewound = format!("{}-0", ms.parse::<u64>().unwrap() - 1_000); // retention here is 3 s
    let replay = c.since(&ivy, Some(&rewound)).await.unwrap();
    assert!(replay.complete, "nothing was lost after a point 1 s before the first entry");
    assert_eq!(replay.notifications.iter().map(|n| n.id.clone()).collect::<Vec<_>>(), ids);
}

async fn ageing_out_within_a_live_log_is_seen_too(c: &dyn Cache) {
    let start = tokio::time::Instant::now();
    let mallory = user("mallory");
    let first = append(c, &mallory, 1).await;
    // The point is the passage of wall-clock time against a 3 s retention: there is no
    // condition to await, only the clock. The second append keeps the log alive; each step
    // has over a second of slack for a busy machine.
    tokio::time::sleep_until(start + Duration::from_millis(1500)).await;
    let second = append(c, &mallory, 1).await;
    tokio::time::sleep_until(start + Duration::from_millis(3300)).await;
    let third = append(c, &mallory, 1).await;
    let replay = c.since(&mallory, None).await.unwrap();
    assert!(!replay.complete, "first aged out");
    assert_eq!(replay.notifications.iter().map(|n| n.id.clone()).collect::<Vec<_>>(), [second[0].clone(), third[0].clone()]);
    assert!(c.since(&mallory, Some(&first[0])).await.unwrap().complete, "nothing after first was lost");
}

async fn a_malformed_notification_id_is_refused(c: &dyn Cache) {
    let err = c.since(&user("heidi"), Some("not-an-id")).await.unwrap_err();
    assert!(matches!(err, CacheError::InvalidNotificationId(ref id) if id == "not-an-id"), "{err:?}");
}

async fn users_never_see_each_others_notifications(c: &dyn Cache) {
    let (ivan, judy) = (user("ivan"), user("judy"));
    append(c, &ivan, 2).await;
    let replay = c.since(&judy, None).await.unwrap();
    assert!(replay.notifications.is_empty() && replay.complete);
}

/// Redis forgets its scripts on a restart without persistence (or `SCRIPT FLUSH`): every call
/// that runs one, alone or in a pipeline, must load it again rather than fail with NOSCRIPT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_scripts_are_loaded_again_after_redis_forgets_them() {
    scripts_are_loaded_again(redis().await, vec![env::redis_url()]).await;
}

/// The same on the cluster, every node forgetting (as a node that joins knows no script).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scripts_are_loaded_again_after_the_nodes_forget_them() {
    let nodes = (7301..=7306).map(|port| format!("redis://127.0.0.1:{port}")).collect();
    scripts_are_loaded_again(cluster().await, nodes).await;
}

async fn scripts_are_loaded_again(c: Fixture, nodes: Vec<String>) {
    let (one, two) = (CorrelationId::new(), CorrelationId::new());
    let carl = user("carl");
    c.put_new_order(one, &carl, OrderStatus::Accepted, DAY).await.unwrap();
    c.put_new_order(two, &carl, OrderStatus::Accepted, DAY).await.unwrap();
    let flush = || async {
        for node in &nodes {
            let client = deadpool_redis::redis::Client::open(node.as_str()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let () = deadpool_redis::redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
        }
    };
    flush().await;
    c.set_statuses(&[(one, OrderStatus::Processing), (two, OrderStatus::Processing)], DAY).await.unwrap();
    flush().await;
    c.set_status(one, OrderStatus::Completed, DAY).await.unwrap();
    assert_eq!(c.status(one).await.unwrap(), Some(OrderStatus::Completed));
    assert_eq!(c.status(two).await.unwrap(), Some(OrderStatus::Processing));
    flush().await;
    let logged = c.append(&carl, "event-1", "OrderCompleted", &json!({ "correlationId": one.to_string() })).await.unwrap();
    flush().await;
    let replay = c.since(&carl, None).await.unwrap();
    assert_eq!(replay.notifications, vec![logged.clone()]);
    flush().await;
    let payload = json!({ "correlationId": two.to_string() });
    let batch = c.append_many(&[Append { user: &carl, event_id: "event-2", target: "OrderCompleted", payload: &payload }]).await.unwrap();
    assert_eq!(c.since(&carl, Some(&logged.id)).await.unwrap().notifications, batch);
}

async fn a_batch_of_appends_is_like_appending_one_by_one(c: &dyn Cache) {
    let (gina, hank) = (user("gina"), user("hank"));
    let earlier = c.append(&gina, "ev-0", "OrderCompleted", &json!({ "i": 0 })).await.unwrap();
    let (p1, p2, p3) = (json!({ "i": 1 }), json!({ "i": 2 }), json!({ "i": 3 }));
    let items = [
        Append { user: &gina, event_id: "ev-1", target: "OrderCompleted", payload: &p1 },
        Append { user: &hank, event_id: "ev-2", target: "OrderFailed", payload: &p2 },
        // A redelivery of an event logged before, and one repeated within the batch.
        Append { user: &gina, event_id: "ev-0", target: "OrderCompleted", payload: &p3 },
        Append { user: &gina, event_id: "ev-1", target: "OrderCompleted", payload: &p1 },
    ];
    let logged = c.append_many(&items).await.unwrap();
    assert_eq!(logged.len(), 4, "one answer per item, in order");
    assert_eq!(logged[2].id, earlier.id, "a redelivered event keeps its notification id");
    assert_eq!(logged[3].id, logged[0].id, "an event repeated in the batch is logged once");
    assert_eq!((logged[1].target.as_str(), &logged[1].payload), ("OrderFailed", &p2));
    let gina_log: Vec<String> = c.since(&gina, None).await.unwrap().notifications.into_iter().map(|n| n.id).collect();
    assert_eq!(gina_log, vec![earlier.id, logged[0].id.clone()]);
    let hank_log = c.since(&hank, None).await.unwrap().notifications;
    assert_eq!((hank_log.len(), hank_log[0].id.as_str()), (1, logged[1].id.as_str()));
    assert!(c.append_many(&[]).await.unwrap().is_empty());
}

async fn users_of_many_orders_come_back_in_order(c: &dyn Cache) {
    let (a, b, unknown) = (CorrelationId::new(), CorrelationId::new(), CorrelationId::new());
    let (ivy, jack) = (user("ivy"), user("jack"));
    c.put_new_order(a, &ivy, OrderStatus::Accepted, DAY).await.unwrap();
    c.put_new_order(b, &jack, OrderStatus::Accepted, DAY).await.unwrap();
    assert_eq!(c.users_of(&[b, unknown, a]).await.unwrap(), vec![Some(jack), None, Some(ivy)]);
    assert!(c.users_of(&[]).await.unwrap().is_empty());
}
