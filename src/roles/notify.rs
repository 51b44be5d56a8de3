//! Role `notify`: the SignalR hub at `/hubs/order-status` and the notification consumer.
//! Not implemented yet: the role is accepted and says so.

use crate::{health::Readiness, shutdown::Shutdown};

use super::{Deps, Routes};

pub fn start(_deps: &Deps, _shutdown: &Shutdown, _readiness: &mut Readiness) -> anyhow::Result<Option<Routes>> {
    tracing::warn!(role = "notify", "role not implemented yet");
    Ok(None)
}
