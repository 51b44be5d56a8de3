//! The in-process `ResumeStore` of `--role all` (one process, so a connection resumes on the
//! process that held it) and of fast tests. Same rules as the Redis one, expiry included.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use super::{Claimed, Limits, NewRecord, Record, ResumeError, ResumeStore, Synced, Update, now_ms};
use crate::hub::protocol::Protocol;

#[derive(Default)]
pub struct MemoryResumeStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    records: HashMap<String, Entry>,
    alive: HashMap<String, Instant>,
    /// Ids of records started, until when they are remembered.
    seen: HashMap<String, Instant>,
}

struct Entry {
    user: String,
    protocol: Protocol,
    owner: String,
    attached: bool,
    overflowed: bool,
    detached_ms: u64,
    acked: u64,
    in_done: u64,
    cursor: Option<String>,
    created_ms: u64,
    bytes: usize,
    journal: VecDeque<Bytes>,
    expires: Instant,
}

impl MemoryResumeStore {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// The live entry of `id` (an expired one is dropped).
    fn entry(&mut self, id: &str) -> Option<&mut Entry> {
        if self.records.get(id).is_some_and(|e| e.expires <= Instant::now()) {
            self.records.remove(id);
        }
        self.records.get_mut(id)
    }

    fn owned(&mut self, id: &str, owner: &str) -> Option<&mut Entry> {
        self.entry(id).filter(|e| e.owner == owner)
    }
}

#[async_trait]
impl ResumeStore for MemoryResumeStore {
    async fn create(&self, r: NewRecord<'_>, limits: Limits) -> Result<bool, ResumeError> {
        let mut inner = self.inner();
        let now = Instant::now();
        if inner.entry(r.id).is_some() || inner.seen.get(r.id).is_some_and(|until| *until > now) {
            return Ok(false);
        }
        inner.seen.insert(r.id.to_owned(), now + super::SEEN_FOR);
        let entry = Entry {
            user: r.user.to_owned(),
            protocol: r.protocol,
            owner: r.owner.to_owned(),
            attached: true,
            overflowed: false,
            detached_ms: 0,
            acked: 0,
            in_done: 0,
            cursor: None,
            created_ms: r.created_ms,
            bytes: 0,
            journal: VecDeque::new(),
            expires: Instant::now() + limits.open_ttl(),
        };
        inner.records.insert(r.id.to_owned(), entry);
        Ok(true)
    }

    async fn seen(&self, id: &str) -> Result<bool, ResumeError> {
        Ok(self.inner().seen.get(id).is_some_and(|until| *until > Instant::now()))
    }

    async fn sync(&self, id: &str, owner: &str, s: Update<'_>, limits: Limits) -> Result<Synced, ResumeError> {
        let mut inner = self.inner();
        let Some(e) = inner.owned(id, owner) else { return Ok(Synced::Lost) };
        if !e.overflowed {
            let n = s.acked.saturating_sub(e.acked).min(e.journal.len() as u64);
            for trimmed in e.journal.drain(..n as usize) {
                e.bytes -= trimmed.len();
            }
            e.acked += n;
            e.bytes += s.entries.iter().map(Bytes::len).sum::<usize>();
            if e.bytes > limits.max_bytes {
                e.overflowed = true;
                e.journal = VecDeque::new();
            } else {
                e.journal.extend(s.entries.iter().cloned());
            }
        }
        e.in_done = e.in_done.max(s.in_done);
        if let Some(cursor) = s.cursor {
            e.cursor = Some(cursor.to_owned());
        }
        if s.detach {
            e.attached = false;
            e.detached_ms = now_ms();
        }
        e.expires = Instant::now() + if s.detach { limits.window } else { limits.open_ttl() };
        Ok(if e.overflowed { Synced::Overflowed } else { Synced::Kept })
    }

    async fn forget(&self, id: &str, owner: &str) -> Result<(), ResumeError> {
        let mut inner = self.inner();
        if inner.owned(id, owner).is_some() {
            inner.records.remove(id);
        }
        Ok(())
    }

    async fn record(&self, id: &str) -> Result<Option<Record>, ResumeError> {
        Ok(self.inner().entry(id).map(|e| Record {
            user: e.user.clone(),
            owner: e.owner.clone(),
            attached: e.attached,
            overflowed: e.overflowed,
            detached_ms: e.detached_ms,
        }))
    }

    async fn take(&self, id: &str, from: &str, owner: &str, limits: Limits) -> Result<Option<Claimed>, ResumeError> {
        let mut inner = self.inner();
        let Some(e) = inner.owned(id, from).filter(|e| !e.overflowed) else { return Ok(None) };
        e.owner = owner.to_owned();
        e.attached = true;
        e.expires = Instant::now() + limits.open_ttl();
        Ok(Some(Claimed {
            protocol: e.protocol,
            acked: e.acked,
            journal: e.journal.iter().cloned().collect(),
            in_done: e.in_done,
            cursor: e.cursor.clone(),
            created_ms: e.created_ms,
        }))
    }

    async fn refresh(&self, ids: &[Arc<str>], limits: Limits) -> Result<(), ResumeError> {
        let mut inner = self.inner();
        for id in ids {
            if let Some(e) = inner.entry(id) {
                e.expires = Instant::now() + limits.open_ttl();
            }
        }
        Ok(())
    }

    async fn beat(&self, instance: &str, ttl: Duration) -> Result<(), ResumeError> {
        let mut inner = self.inner();
        let now = Instant::now();
        // Beats come every second: the moment to forget what expired and was never asked for again.
        inner.alive.retain(|_, until| *until > now);
        inner.records.retain(|_, e| e.expires > now);
        inner.seen.retain(|_, until| *until > now);
        inner.alive.insert(instance.to_owned(), now + ttl);
        Ok(())
    }

    async fn alive(&self, instance: &str) -> Result<bool, ResumeError> {
        Ok(self.inner().alive.get(instance).is_some_and(|until| *until > Instant::now()))
    }
}
