//! How a consumer cuts its deliveries into batches: what is ready at once, or what arrives
//! within a short linger after the first delivery. A batch pays its round trips and thread
//! wake-ups once, so at moderate rates a linger of a millisecond buys fewer, fuller batches.

use std::time::Duration;

use futures_util::{FutureExt, Stream, StreamExt};

/// A consumer's batching policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Batches handled at once. Few, so that under load each batch carries what arrived
    /// meanwhile instead of each delivery becoming a batch of its own.
    pub in_flight: usize,
    /// How long a batch waits for more deliveries after its first (zero: only what is ready).
    pub linger: Duration,
}

impl Batching {
    /// What the broker has ready, two batches at a time: for handlers whose batch is one
    /// database statement, where a second batch in flight keeps the database busy.
    pub const READY: Batching = Batching { in_flight: 2, linger: Duration::ZERO };
}

/// Batches of at most `max` items: the first item, then whatever `linger` brings after it (or
/// what is ready at once, for a zero linger). The last batch carries what was left when the
/// stream ended.
pub fn batches<S>(stream: S, max: usize, linger: Duration) -> impl Stream<Item = Vec<S::Item>>
where
    S: Stream + Send + 'static,
    S::Item: Send,
{
    let max = max.max(1);
    futures_util::stream::unfold(Box::pin(stream), move |mut stream| async move {
        let first = stream.next().await?;
        let mut batch = Vec::with_capacity(max.min(64));
        batch.push(first);
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < max {
            let next =
                if linger.is_zero() { stream.next().now_or_never() } else { tokio::time::timeout_at(deadline, stream.next()).await.ok() };
            match next {
                Some(Some(item)) => batch.push(item),
                // Nothing more within the linger (or ready), or the stream ended.
                Some(None) | None => break,
            }
        }
        Some((batch, stream))
    })
}

#[cfg(test)]
mod tests {
    use futures_util::stream;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use super::*;

    fn channel() -> (mpsc::UnboundedSender<u32>, impl Stream<Item = u32> + Send + 'static) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        (tx, stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    #[tokio::test]
    async fn without_a_linger_a_batch_is_what_is_ready() {
        let (tx, rx) = channel();
        let mut batches = Box::pin(batches(rx, 10, Duration::ZERO));
        for i in 0..3 {
            tx.send(i).unwrap();
        }
        assert_eq!(batches.next().await, Some(vec![0, 1, 2]));
        tx.send(3).unwrap();
        assert_eq!(batches.next().await, Some(vec![3]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_linger_gathers_what_arrives_within_it_and_no_more() {
        let (tx, rx) = channel();
        let mut batches = Box::pin(batches(rx, 10, Duration::from_millis(5)));
        tx.send(1).unwrap();
        let feeder = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            tx.send(2).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send(3).unwrap();
            tx
        });
        let started = tokio::time::Instant::now();
        assert_eq!(batches.next().await, Some(vec![1, 2]));
        assert_eq!(started.elapsed(), Duration::from_millis(5), "the batch waited for its linger, counted from its first item");
        assert_eq!(batches.next().await, Some(vec![3]), "what came after the linger starts the next batch");
        drop(feeder.await.unwrap());
        assert_eq!(batches.next().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_does_not_wait_for_its_linger() {
        let (tx, rx) = channel();
        let mut batches = Box::pin(batches(rx, 3, Duration::from_secs(60)));
        for i in 0..5 {
            tx.send(i).unwrap();
        }
        let started = tokio::time::Instant::now();
        assert_eq!(batches.next().await, Some(vec![0, 1, 2]));
        assert_eq!(started.elapsed(), Duration::ZERO);
        drop(tx);
        assert_eq!(batches.next().await, Some(vec![3, 4]), "the end of the stream ends the last batch");
        assert_eq!(batches.next().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_cut_while_a_batch_lingers_hands_over_what_it_has() {
        // The consumer cuts its stream at shutdown (take_until): a lingering batch must not be
        // lost or wait out its linger.
        let (tx, rx) = channel();
        let token = CancellationToken::new();
        let mut batches = Box::pin(batches(rx.take_until(token.clone().cancelled_owned()), 10, Duration::from_secs(60)));
        tx.send(7).unwrap();
        let cut = tokio::spawn({
            let token = token.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(3)).await;
                token.cancel();
            }
        });
        let started = tokio::time::Instant::now();
        assert_eq!(batches.next().await, Some(vec![7]));
        assert_eq!(started.elapsed(), Duration::from_millis(3));
        assert_eq!(batches.next().await, None);
        cut.await.unwrap();
    }
}
