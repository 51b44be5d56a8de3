//! A client's hub message run for its connection: an invocation becomes the future the
//! connection's loop polls until it has queued its completion; one over the rate limit
//! completes with an error at once.

use std::{future::Future, pin::Pin, sync::Arc};

use crate::hub::{
    Caller, ConnectionHandle, HubContext, HubError, metrics_names as m,
    protocol::{Completion, HubMessage},
};

pub(super) type Invocation = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Answers an invocation over the rate limit with an error completion; the connection stays.
/// A non-blocking invocation (no id) is dropped, as it would get no answer anyway.
pub(super) fn refuse(conn: &ConnectionHandle, msg: HubMessage) {
    metrics::counter!(m::INVOCATIONS_LIMITED).increment(1);
    let (Some(invocation_id), target) = (match msg {
        HubMessage::Invocation { invocation_id, target, .. } => (invocation_id, target),
        HubMessage::StreamInvocation { invocation_id, target, .. } => (Some(invocation_id), target),
        _ => return,
    }) else {
        return;
    };
    let error = format!("Failed to invoke '{target}': too many invocations, retry later.");
    let protocol = conn.protocol();
    conn.send_reply(protocol.encode_to_bytes(&HubMessage::Completion { invocation_id, outcome: Completion::Error(error) }));
}

/// Starts one message from the client: an invocation becomes the future the loop polls until
/// it has queued its completion. Invocations run one at a time, in arrival order.
pub(super) fn dispatch(ctx: &Arc<HubContext>, conn: &ConnectionHandle, msg: HubMessage) -> Option<Invocation> {
    let protocol = conn.protocol();
    match msg {
        HubMessage::Invocation { invocation_id, target, arguments, .. } => {
            let (ctx, conn) = (ctx.clone(), conn.clone());
            Some(Box::pin(async move {
                let started = std::time::Instant::now();
                let caller = Caller { connection: conn.clone() };
                let res = ctx.hub.invoke(&caller, &target, arguments).await;
                let label = if ctx.hub.has_method(&target) { target.to_ascii_lowercase() } else { "unknown".to_owned() };
                metrics::histogram!(m::INVOCATION_DURATION, "method" => label).record(started.elapsed().as_secs_f64());
                if let Err(HubError::Unexpected(why)) = &res {
                    tracing::error!(method = %target, error = %why, "hub method failed");
                }
                // A non-blocking invocation (no id) never gets an answer, not even an error.
                let Some(invocation_id) = invocation_id else { return };
                let outcome = match res {
                    Ok(value) => Completion::Result(value),
                    Err(err) => Completion::Error(err.client_message(&target)),
                };
                conn.send_reply(protocol.encode_to_bytes(&HubMessage::Completion { invocation_id, outcome }));
            }))
        }
        HubMessage::StreamInvocation { invocation_id, target, .. } => {
            let error = if ctx.hub.has_method(&target) {
                format!("The client attempted to invoke the non-streaming '{target}' method with a streaming invocation.")
            } else {
                HubError::MethodNotFound.client_message(&target)
            };
            conn.send_reply(protocol.encode_to_bytes(&HubMessage::Completion { invocation_id, outcome: Completion::Error(error) }));
            None
        }
        // No streams and no client results here: nothing to cancel or complete.
        HubMessage::CancelInvocation { .. } | HubMessage::Completion { .. } | HubMessage::StreamItem { .. } | HubMessage::Other(_) => None,
        // Handled by the loop before dispatch.
        HubMessage::Ping | HubMessage::Close { .. } | HubMessage::Ack { .. } | HubMessage::Sequence { .. } => None,
    }
}
