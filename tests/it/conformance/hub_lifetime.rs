//! The hub's lifetime manager over each backplane (in-process, single Redis, sharded pub/sub on
//! the Redis Cluster): two notify processes, a user's connections on them. A process delivers
//! its own publishes; a user's channel is wanted from their first connection on a process to
//! their last (ref-counted: one leaving keeps the other receiving, and a user who comes back is
//! subscribed again); connection ids an envelope excludes get nothing.

use std::{ops::Deref, sync::Arc, time::Duration};

use bytes::Bytes;
use contoso::{
    backplane::{
        Backplane, Channels, Envelope,
        cluster::PubSub,
        memory::{MemoryBackplane, MemoryHub},
    },
    hub::{
        ConnectionHandle, HubLifetime, Origin,
        connection::{Frame, Outgoing},
        protocol::Protocol,
    },
    shutdown::Shutdown,
};
use serde_json::json;

use super::{
    backplane::{nodes, sharded_with, single},
    conformance,
};
use crate::harness::unique_user;

pub struct Processes {
    lifetimes: [Arc<HubLifetime>; 2],
    backplanes: [Arc<dyn Backplane>; 2],
    channels: Channels,
}

pub struct Fixture {
    processes: Processes,
    shutdown: Option<Shutdown>,
}

impl Deref for Fixture {
    type Target = Processes;
    fn deref(&self) -> &Processes {
        &self.processes
    }
}

impl Fixture {
    async fn cleanup(self) {
        if let Some(shutdown) = self.shutdown {
            shutdown.connections.cancel();
        }
    }
}

fn processes(backplanes: [Arc<dyn Backplane>; 2], shutdown: Option<Shutdown>) -> Fixture {
    // Channels of a namespace of their own, as a deployment's --channel-prefix gives.
    let channels = Channels::new(&format!("t-lt-{}-", uuid::Uuid::new_v4().simple()), "Hub");
    let lifetimes = [0, 1].map(|i| HubLifetime::start(channels.clone(), backplanes[i].clone()));
    Fixture { processes: Processes { lifetimes, backplanes, channels }, shutdown }
}

async fn redis() -> Fixture {
    let (backplanes, shutdown) = nodes(single).await;
    processes(backplanes, Some(shutdown))
}

async fn memory() -> Fixture {
    let hub = Arc::new(MemoryHub::default());
    processes([0, 1].map(|_| Arc::new(MemoryBackplane::new(hub.clone())) as Arc<dyn Backplane>), None)
}

async fn cluster() -> Fixture {
    let (backplanes, shutdown) = nodes(|token| sharded_with(PubSub::Sharded, token)).await;
    processes(backplanes, Some(shutdown))
}

conformance!(redis, memory, cluster;
    a_process_delivers_its_own_publish_and_the_other_process_s,
    a_user_stays_subscribed_until_their_last_connection_leaves,
    excluded_connection_ids_get_nothing,
);

fn connection(user: &str) -> ConnectionHandle {
    ConnectionHandle::new(uuid::Uuid::new_v4().simple().to_string().into(), user.into(), Protocol::Json, 16)
}

/// The next frame queued for `conn`, within 5 s.
async fn next(conn: &ConnectionHandle) -> Bytes {
    let outgoing = tokio::time::timeout(Duration::from_secs(5), std::future::poll_fn(|cx| conn.poll_outgoing(cx)))
        .await
        .expect("a message within 5 s");
    match outgoing {
        Outgoing::Bytes(frames) => frames.into_iter().next().map(|f: Frame| f.bytes).expect("a frame"),
        Outgoing::Close(..) => panic!("closed instead"),
    }
}

/// Nothing queued for `conn` within `window` (absence can only be bounded).
async fn nothing_within(conn: &ConnectionHandle, window: Duration) -> bool {
    tokio::time::timeout(window, std::future::poll_fn(|cx| conn.poll_outgoing(cx))).await.is_err()
}

fn says(frame: &Bytes, text: &str) -> bool {
    std::str::from_utf8(frame).is_ok_and(|f| f.contains(text))
}

async fn send(p: &Processes, from: usize, user: &str, text: &str) {
    p.lifetimes[from].send_user(user, "OrderCompleted", vec![json!({ "text": text })], Origin::default()).await.expect("published");
}

async fn a_process_delivers_its_own_publish_and_the_other_process_s(p: &Processes) {
    let user = unique_user("own");
    let here = connection(&user);
    p.lifetimes[0].add(&here).await;
    send(p, 0, &user, "from this process").await;
    assert!(says(&next(&here).await, "from this process"));
    send(p, 1, &user, "from the other process").await;
    assert!(says(&next(&here).await, "from the other process"));
}

async fn a_user_stays_subscribed_until_their_last_connection_leaves(p: &Processes) {
    let user = unique_user("tabs");
    let (first, second) = (connection(&user), connection(&user));
    p.lifetimes[0].add(&first).await;
    p.lifetimes[0].add(&second).await;
    p.lifetimes[0].remove(&first);
    send(p, 1, &user, "one tab left").await;
    assert!(says(&next(&second).await, "one tab left"), "the user's channel stays while a tab is open");
    p.lifetimes[0].remove(&second);
    // Back after the last tab left: the channel is subscribed again, not left unsubscribed.
    let back = connection(&user);
    p.lifetimes[0].add(&back).await;
    send(p, 1, &user, "back again").await;
    assert!(says(&next(&back).await, "back again"));
    assert!(nothing_within(&first, Duration::from_millis(200)).await, "a removed connection gets nothing");
}

async fn excluded_connection_ids_get_nothing(p: &Processes) {
    let user = unique_user("excluded");
    let (skipped, reached) = (connection(&user), connection(&user));
    p.lifetimes[0].add(&skipped).await;
    p.lifetimes[0].add(&reached).await;
    // As an ASP.NET pod publishes a send that excludes connection ids.
    let mut envelope: Envelope =
        contoso::hub::lifetime::envelope(&contoso::hub::protocol::HubMessage::push("OrderCompleted", vec![json!("x")]));
    envelope.excluded = vec![skipped.id().to_string()];
    p.backplanes[1].publish(&p.channels.user(&user), envelope.encode()).await.expect("published");
    assert!(says(&next(&reached).await, "OrderCompleted"));
    assert!(nothing_within(&skipped, Duration::from_millis(300)).await, "the excluded connection got it");
}
