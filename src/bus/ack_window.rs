//! Which deliveries of one consumer channel are settled, so that a batch of acks can go out as
//! one `multiple` ack: AMQP's `multiple` acks every outstanding delivery up to a tag, so it is
//! only safe up to the highest tag below which everything is settled. Pure bookkeeping; the
//! caller sends the frames, in the order planned, before planning again.

use std::collections::BTreeSet;

/// Delivery tags of one channel (they start at 1 and count up).
#[derive(Debug, Default)]
pub struct AckWindow {
    /// Every tag up to this one is settled.
    floor: u64,
    /// Settled tags above the floor.
    settled: BTreeSet<u64>,
}

/// The frames that ack a batch: one `multiple` ack, then single acks for the tags that an
/// earlier, unsettled delivery keeps out of it.
#[derive(Debug, PartialEq, Eq)]
pub struct AckPlan {
    pub multiple: Option<u64>,
    pub singles: Vec<u64>,
}

impl AckWindow {
    /// Records a tag settled on its own (acked, requeued or dead-lettered by itself).
    pub fn settled(&mut self, tag: u64) {
        self.settled.insert(tag);
        self.advance();
    }

    /// Plans the acks of `tags` and records them settled.
    pub fn plan(&mut self, tags: &[u64]) -> AckPlan {
        self.settled.extend(tags.iter().copied());
        self.advance();
        let (covered, singles): (Vec<u64>, Vec<u64>) = tags.iter().partition(|&&t| t <= self.floor);
        let multiple = covered.into_iter().max();
        let mut singles = singles;
        singles.sort_unstable();
        AckPlan { multiple, singles }
    }

    fn advance(&mut self) {
        while self.settled.first() == Some(&(self.floor + 1)) {
            self.settled.pop_first();
            self.floor += 1;
        }
        // A tag at or below the floor can only be a duplicate; it must not pin memory.
        while self.settled.first().is_some_and(|&t| t <= self.floor) {
            self.settled.pop_first();
        }
    }

    /// Settled tags held above the floor (bounded by the prefetch).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.settled.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_after_everything_settled_is_one_multiple_ack() {
        let mut w = AckWindow::default();
        assert_eq!(w.plan(&[1, 2, 3]), AckPlan { multiple: Some(3), singles: vec![] });
        assert_eq!(w.plan(&[5, 4]), AckPlan { multiple: Some(5), singles: vec![] });
        assert_eq!(w.held(), 0);
    }

    #[test]
    fn a_batch_behind_an_unsettled_delivery_is_acked_one_by_one() {
        let mut w = AckWindow::default();
        // Tag 1 is still being handled (or held for a retry): acking 2..3 with `multiple`
        // would ack it too.
        assert_eq!(w.plan(&[2, 3]), AckPlan { multiple: None, singles: vec![2, 3] });
        w.settled(1);
        assert_eq!(w.held(), 0);
        assert_eq!(w.plan(&[4]), AckPlan { multiple: Some(4), singles: vec![] });
    }

    #[test]
    fn a_batch_partly_behind_a_gap_is_split() {
        let mut w = AckWindow::default();
        w.settled(2); // requeued on its own
        assert_eq!(w.plan(&[1, 3, 5, 6]), AckPlan { multiple: Some(3), singles: vec![5, 6] });
        w.settled(4);
        assert_eq!(w.plan(&[7]), AckPlan { multiple: Some(7), singles: vec![] });
    }

    #[test]
    fn a_multiple_ack_never_ends_on_a_tag_settled_another_way() {
        let mut w = AckWindow::default();
        w.settled(3); // dead-lettered
        let plan = w.plan(&[1, 2]);
        assert_eq!(plan, AckPlan { multiple: Some(2), singles: vec![] });
    }
}
