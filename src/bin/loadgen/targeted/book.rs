//! The receiving side of the `targeted` scenario: every notification of the run by slot (when
//! it was due, how many tabs got it and how late), and the tabs that read into it.

use std::{
    collections::HashMap,
    ops::Range,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use super::Args;
use crate::{
    hub::{Tab, connect_bare, connect_with, correlation_ids},
    redis_nodes::Nodes,
    report::histogram,
    shop::Minter,
};

/// Every notification of the run, by slot: its correlation id, when it was due, and how many
/// tabs received it.
pub struct Book {
    pub ids: Vec<String>,
    /// Reading tabs per user (slow tabs are not counted).
    pub readers: Vec<u32>,
    pub slot_of: HashMap<String, usize>,
    pub due_nanos: Vec<AtomicU64>,
    pub received: Vec<AtomicU32>,
    /// Slot ranges per step, and one latency histogram each.
    pub steps: Vec<Range<usize>>,
    pub latency: Vec<Mutex<Histogram<u64>>>,
    pub epoch: Instant,
}

impl Book {
    /// The book of `ids`, cut into `steps`, for users with `readers` reading tabs each.
    pub fn new(ids: Vec<String>, steps: Vec<Range<usize>>, readers: Vec<u32>) -> Self {
        Self {
            readers,
            slot_of: ids.iter().enumerate().map(|(i, id)| (id.clone(), i)).collect(),
            due_nanos: (0..ids.len()).map(|_| AtomicU64::new(0)).collect(),
            received: (0..ids.len()).map(|_| AtomicU32::new(0)).collect(),
            latency: steps.iter().map(|_| Mutex::new(histogram())).collect(),
            steps,
            ids,
            epoch: Instant::now(),
        }
    }

    pub fn record(&self, correlation_id: &str) {
        let Some(&slot) = self.slot_of.get(correlation_id) else { return };
        self.received[slot].fetch_add(1, Ordering::Relaxed);
        let due = self.due_nanos[slot].load(Ordering::Relaxed);
        let now = self.epoch.elapsed().as_nanos() as u64;
        if let Some(step) = self.steps.iter().position(|r| r.contains(&slot)) {
            let micros = (now.saturating_sub(due) / 1000).max(1);
            let _ = self.latency[step].lock().expect("lock").record(micros);
        }
    }
}

/// Tab k (user k / tabs) is slow when the running fraction passes a whole tab there: an even
/// spread of exactly round(fraction * all tabs) slow tabs.
pub fn slow_tab(fraction: f64, k: usize) -> bool {
    ((k + 1) as f64 * fraction).floor() > (k as f64 * fraction).floor()
}

/// Opens every user's tabs, each reading into `book`, and waits for the (user, process)
/// subscriptions the backplane makes for them.
pub async fn open_tabs(
    args: &Args,
    users: &[String],
    minter: &Minter,
    book: &Arc<Book>,
    nodes: &Nodes,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    let tabs = args.tabs.max(1);
    let slow = |k: usize| slow_tab(args.slow_fraction, k);
    // Tabs: user u's tab t goes to hub URL (u * tabs + t) mod n, so every user spans the processes.
    let connected = Instant::now();
    let limit = Arc::new(Semaphore::new(200));
    let mut handles = Vec::new();
    for (u, user) in users.iter().enumerate() {
        let token = minter.token(user)?;
        for t in 0..tabs {
            let url = args.hub_urls[(u * tabs + t) % args.hub_urls.len()].clone();
            let (token, book, permit) = (token.clone(), book.clone(), limit.clone().acquire_owned().await?);
            let (bare, slow, user, client, k) = (args.bare, slow(u * tabs + t), user.clone(), args.client.clone(), u * tabs + t);
            handles.push(tokio::spawn(async move {
                let ws = if bare { connect_bare(&url, &user, &client, k).await } else { connect_with(&url, &token, &client, k).await };
                drop(permit);
                let mut ws = if client.stateful { Tab::stateful(ws?, &client.protocol) } else { Tab::new(ws?, &client.protocol) };
                if slow {
                    // A tab that stopped reading: the socket stays open, nothing is read.
                    ws.never_read().await;
                    return Ok(());
                }
                while let Some(Ok(msg)) = ws.next().await {
                    let frame: &[u8] = match &msg {
                        Message::Text(text) => text.as_bytes(),
                        Message::Binary(bytes) => bytes,
                        _ => continue,
                    };
                    let mut ids = correlation_ids(frame);
                    if bare {
                        // The relayed envelope carries each message in both encodings.
                        ids.dedup();
                    }
                    ids.into_iter().for_each(|id| book.record(id));
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
    }
    let _ = limit.acquire_many(200).await?;
    let failed = handles.iter().filter(|h| h.is_finished()).count();
    anyhow::ensure!(failed == 0, "{failed} connections failed to open");
    // One SUBSCRIBE per (user, process): each user channel has exactly as many subscribers as
    // processes holding that user's tabs.
    let processes = args.hub_urls.len().min(tabs);
    let channels = args.backplane.channels();
    let expected_subscriptions = (users.len() * processes) as u64;
    let mut subscriptions = 0u64;
    // Subscriptions are coalesced and asynchronous: give the last ones a moment to land.
    let deadline = Instant::now() + Duration::from_secs(args.subscription_wait);
    let user_channels: Vec<String> = users.iter().map(|u| channels.user(u)).collect();
    while subscriptions != expected_subscriptions && Instant::now() < deadline {
        subscriptions = nodes.subscribers(&user_channels).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{} tabs of {} users open in {:.1} s; {subscriptions} user-channel subscriptions for {} (user, process) pairs",
        users.len() * tabs,
        users.len(),
        connected.elapsed().as_secs_f64(),
        expected_subscriptions
    );
    Ok(handles)
}
