//! Delivery counts for classic queues, which keep none: this process counts the redeliveries
//! it sees of each message id, so backoff grows and the delivery limit applies as on quorum
//! queues (per process: a message redelivered to another process starts over there).

use std::collections::{HashMap, VecDeque};

/// Message ids remembered at most; the oldest is forgotten first.
const CAPACITY: usize = 10_000;

#[derive(Default)]
pub(super) struct Redeliveries {
    counts: HashMap<String, u32>,
    order: VecDeque<String>,
}

impl Redeliveries {
    /// How many times the message was delivered before this delivery, as far as this process
    /// knows: 0 for a first delivery, and one more for each redelivery seen.
    pub fn count(&mut self, message_id: Option<&str>, redelivered: bool) -> u32 {
        let (Some(id), true) = (message_id, redelivered) else { return u32::from(redelivered) };
        if let Some(n) = self.counts.get_mut(id) {
            *n += 1;
            return *n;
        }
        if self.order.len() >= CAPACITY
            && let Some(oldest) = self.order.pop_front()
        {
            self.counts.remove(&oldest);
        }
        self.counts.insert(id.to_owned(), 1);
        self.order.push_back(id.to_owned());
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redeliveries_of_one_message_count_up() {
        let mut r = Redeliveries::default();
        assert_eq!(r.count(Some("m"), false), 0);
        assert_eq!((r.count(Some("m"), true), r.count(Some("m"), true), r.count(Some("other"), true)), (1, 2, 1));
        assert_eq!(r.count(None, true), 1, "without an id, only the broker's flag");
    }

    #[test]
    fn it_remembers_a_bounded_number_of_messages() {
        let mut r = Redeliveries::default();
        for i in 0..=CAPACITY {
            r.count(Some(&i.to_string()), true);
        }
        assert_eq!(r.counts.len(), CAPACITY);
        assert_eq!(r.count(Some("0"), true), 1, "the oldest was forgotten");
    }
}
