//! Conformance suites: the same behaviour tests run against the production implementation
//! of each seam (PostgreSQL, Redis for the cache and the backplane, RabbitMQ) and the embedded
//! one of `--role all` (SQLite, memory), so the two cannot drift. Each case becomes `case::real` and `case::embedded`.

mod backplane;
mod bus;
mod cache;
mod store;

/// For every `case` (an `async fn case(subject: &T)` in the calling module), two tests that
/// build their subject with `$real` / `$embedded` (each returning a fixture that derefs to `T`).
macro_rules! conformance {
    ($real:ident, $embedded:ident; $($case:ident),+ $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn real() {
                let fixture = super::$real().await;
                super::$case(&*fixture).await;
                fixture.cleanup().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                let fixture = super::$embedded().await;
                super::$case(&*fixture).await;
                fixture.cleanup().await;
            }
        }
    )+};
}
pub(crate) use conformance;
