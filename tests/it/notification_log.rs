//! The per-user notification log on the real Redis: replay after an id, and the `complete`
//! flag a client relies on to know whether it must fall back to `GetCurrentStatus` once
//! retention (by count or by age) has dropped something it never saw.

use std::time::Duration;

use contoso::{
    cache::{NotificationLog, RedisCache, Retention},
    domain::UserId,
};
use serde_json::json;

use crate::harness::{env, unique_user};

fn log(max_count: u64, max_age: Duration) -> RedisCache {
    RedisCache::new(&env::redis_url(), 2, Retention { max_count, max_age }).unwrap()
}

async fn append_n(log: &RedisCache, user: &UserId, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let logged = log.append(user, &uuid::Uuid::new_v4().to_string(), "OrderCompleted", &json!({ "i": i })).await.unwrap();
        ids.push(logged.id);
    }
    ids
}

#[tokio::test]
async fn trimming_by_count_makes_an_older_resume_point_incomplete() {
    let log = log(2, Duration::from_secs(3600));
    let user = UserId::parse(&unique_user("trim")).unwrap();
    let ids = append_n(&log, &user, 5).await;

    let from_first = log.since(&user, Some(&ids[0])).await.unwrap();
    assert!(!from_first.complete, "ids[1] and ids[2] were trimmed before this client saw them");
    let replayed: Vec<_> = from_first.notifications.iter().map(|n| n.id.clone()).collect();
    assert_eq!(replayed, ids[3..].to_vec(), "what is retained is replayed, oldest first");

    let from_third = log.since(&user, Some(&ids[2])).await.unwrap();
    assert!(from_third.complete, "nothing after ids[2] was trimmed");
    assert_eq!(from_third.notifications.len(), 2);

    assert!(!log.since(&user, None).await.unwrap().complete, "a client that saw nothing missed the trimmed ones");
    let latest = log.since(&user, Some(&ids[4])).await.unwrap();
    assert!(latest.complete && latest.notifications.is_empty());
}

#[tokio::test]
async fn a_duplicate_event_keeps_its_id_and_an_untrimmed_log_is_complete() {
    let log = log(10, Duration::from_secs(3600));
    let user = UserId::parse(&unique_user("dup")).unwrap();
    let first = log.append(&user, "event-1", "OrderCompleted", &json!({})).await.unwrap();
    let again = log.append(&user, "event-1", "OrderCompleted", &json!({})).await.unwrap();
    assert_eq!(first.id, again.id);
    let all = log.since(&user, None).await.unwrap();
    assert!(all.complete);
    assert_eq!(all.notifications.len(), 1);
}

#[tokio::test]
async fn ageing_out_makes_an_older_resume_point_incomplete() {
    let log = log(100, Duration::from_secs(1));
    let user = UserId::parse(&unique_user("age")).unwrap();
    let old = append_n(&log, &user, 2).await;
    // Retention is wall-clock time: the first two age out (the whole stream expires with them).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = append_n(&log, &user, 1).await;
    let replay = log.since(&user, Some(&old[0])).await.unwrap();
    assert!(!replay.complete, "old[1] aged out before this client saw it");
    assert_eq!(replay.notifications.iter().map(|n| n.id.clone()).collect::<Vec<_>>(), fresh);
    assert!(log.since(&user, Some(&fresh[0])).await.unwrap().complete, "a resume point in the new stream is complete");
}

#[tokio::test]
async fn ageing_out_within_a_live_stream_is_seen_too() {
    let log = log(100, Duration::from_secs(2));
    let user = UserId::parse(&unique_user("age-live")).unwrap();
    let old = append_n(&log, &user, 2).await;
    // Appends keep the stream alive while the first entries age out one by one.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let middle = append_n(&log, &user, 1).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let fresh = append_n(&log, &user, 1).await;
    let replay = log.since(&user, Some(&old[0])).await.unwrap();
    assert!(!replay.complete, "old[1] aged out before this client saw it");
    assert_eq!(replay.notifications.iter().map(|n| n.id.clone()).collect::<Vec<_>>(), [middle, fresh].concat());
}

#[tokio::test]
async fn a_malformed_resume_point_is_an_error_not_a_replay() {
    let log = log(10, Duration::from_secs(3600));
    let user = UserId::parse(&unique_user("bad")).unwrap();
    append_n(&log, &user, 1).await;
    assert!(log.since(&user, Some("not-an-id")).await.is_err());
}
