//! contoso: real-time order notifications for Contoso Shop. One binary, several roles
//! (accept, process, notify). Start at `ARCHITECTURE.md` for the map of this crate.

pub mod app;
pub mod backplane;
pub mod bus;
pub mod cache;
pub mod config;
pub mod domain;
pub mod health;
pub mod http;
pub mod hub;
pub mod metrics_help;
pub mod redis_client;
pub mod roles;
pub mod secret;
pub mod shutdown;
pub mod spa;
pub mod store;
pub mod telemetry;
