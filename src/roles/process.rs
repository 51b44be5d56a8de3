//! Role `process`: consumes `order.accepted` and moves orders to COMPLETED or FAILED.
//! Not implemented yet: the role is accepted and says so.

use crate::{health::Readiness, shutdown::Shutdown};

use super::Deps;

pub fn start(_deps: &Deps, _shutdown: &Shutdown, _readiness: &mut Readiness) -> anyhow::Result<()> {
    tracing::warn!(role = "process", "role not implemented yet");
    Ok(())
}
