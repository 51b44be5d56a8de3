//! Conformance suites: the same behaviour tests run against the production implementation
//! of each seam (PostgreSQL, Redis for the cache and the backplane, RabbitMQ) and the embedded
//! one of `--role all` (SQLite, memory), so the two cannot drift. Each case becomes `case::real` and `case::embedded`.

pub mod backplane;
mod bus;
mod cache;
mod hub_lifetime;
mod resume;
mod store;

/// For every `case` (an `async fn case(subject: &T)` in the calling module), one test per
/// implementation, each building its subject with the named function (returning a fixture
/// that derefs to `T`): `real` and `embedded`, and `cluster` (the Redis Cluster) when given.
macro_rules! conformance {
    ($real:ident, $embedded:ident; $($case:ident),+ $(,)?) => {$(
        mod $case {
            $crate::conformance::conformance!(@test real, $real, $case);
            $crate::conformance::conformance!(@test embedded, $embedded, $case);
        }
    )+};
    ($real:ident, $embedded:ident, $cluster:ident; $($case:ident),+ $(,)?) => {$(
        mod $case {
            $crate::conformance::conformance!(@test real, $real, $case);
            $crate::conformance::conformance!(@test embedded, $embedded, $case);
            $crate::conformance::conformance!(@test cluster, $cluster, $case);
        }
    )+};
    (@test $name:ident, $build:ident, $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let fixture = super::$build().await;
            super::$case(&*fixture).await;
            fixture.cleanup().await;
        }
    };
}
pub(crate) use conformance;
