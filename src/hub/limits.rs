//! How many connections a process takes, in all and per user. A connection holds its slot from
//! the moment it is admitted (before the 101) until its loop ends, so a burst of upgrades
//! cannot pass the check together and a half-open handshake counts as much as a live tab.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The process holds its maximum: another process should take it (503).
    Process,
    /// The user holds their maximum here (429).
    User,
}

/// The limits and the counts (0 = no limit).
pub struct ConnectionLimits {
    max_total: usize,
    max_per_user: usize,
    total: AtomicUsize,
    /// Only users with a connection have an entry.
    per_user: Mutex<HashMap<Arc<str>, u32>>,
}

/// A connection's place; dropping it gives the place back.
pub struct Slot {
    limits: Arc<ConnectionLimits>,
    user: Arc<str>,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_user: usize) -> Arc<Self> {
        Arc::new(Self { max_total, max_per_user, total: AtomicUsize::new(0), per_user: Mutex::new(HashMap::new()) })
    }

    /// Takes a place for one connection of `user`, or says which limit is reached.
    pub fn reserve(self: &Arc<Self>, user: &Arc<str>) -> Result<Slot, Refusal> {
        let total = self.total.fetch_add(1, Ordering::AcqRel);
        if self.max_total > 0 && total >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Process);
        }
        if self.max_per_user > 0 {
            let mut per_user = self.per_user.lock().expect("limits lock");
            let count = per_user.entry(user.clone()).or_insert(0);
            if *count as usize >= self.max_per_user {
                drop(per_user);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::User);
            }
            *count += 1;
        }
        Ok(Slot { limits: self.clone(), user: user.clone() })
    }

    /// Connections holding a place now.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    fn release(&self, user: &str) {
        if self.max_per_user > 0 {
            let mut per_user = self.per_user.lock().expect("limits lock");
            if let Some(count) = per_user.get_mut(user) {
                *count -= 1;
                if *count == 0 {
                    per_user.remove(user);
                }
            }
        }
        self.total.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slot {
    pub fn user(&self) -> &Arc<str> {
        &self.user
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.release(&self.user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Arc<str> {
        name.into()
    }

    #[test]
    fn the_process_limit_counts_every_user_and_a_dropped_slot_frees_its_place() {
        let limits = ConnectionLimits::new(2, 0);
        let a = limits.reserve(&user("a")).unwrap();
        let _b = limits.reserve(&user("b")).unwrap();
        assert_eq!(limits.reserve(&user("c")).err(), Some(Refusal::Process));
        assert_eq!(limits.total(), 2, "a refusal takes no place");
        drop(a);
        assert!(limits.reserve(&user("c")).is_ok());
    }

    #[test]
    fn the_user_limit_counts_one_user_and_forgets_users_that_left() {
        let limits = ConnectionLimits::new(0, 2);
        let slots: Vec<Slot> = (0..2).map(|_| limits.reserve(&user("a")).unwrap()).collect();
        assert_eq!(limits.reserve(&user("a")).err(), Some(Refusal::User));
        assert!(limits.reserve(&user("b")).is_ok(), "another user is not affected");
        assert_eq!(limits.total(), 2, "the refused and the dropped one hold nothing");
        drop(slots);
        assert_eq!(limits.total(), 0);
        assert!(limits.per_user.lock().unwrap().is_empty(), "no entry outlives a user's last connection");
    }

    #[test]
    fn zero_means_no_limit() {
        let limits = ConnectionLimits::new(0, 0);
        let slots: Vec<Slot> = (0..1000).map(|_| limits.reserve(&user("a")).unwrap()).collect();
        assert_eq!(limits.total(), 1000);
        assert!(limits.per_user.lock().unwrap().is_empty(), "without a per-user limit nothing is kept per user");
        drop(slots);
    }
}
