//! The one integration-test binary: real PostgreSQL, Redis and RabbitMQ (URLs from
//! TEST_DATABASE_URL, TEST_REDIS_URL, TEST_AMQP_URL, defaulting to this machine's services).
//! A service that cannot be reached fails the tests; nothing is skipped.

mod harness;

mod auth;
mod cluster;
mod conformance;
mod embedded;
mod hub;
mod hub_bounds;
mod jwks;
mod lifecycle;
#[cfg(feature = "loadgen")] // the binary under test exists only with this feature (`make test` sets it)
mod loadgen;
mod notify;
mod orders_api;
mod outages;
mod processing;
mod stateful;
mod traces;
