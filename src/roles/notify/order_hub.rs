//! The order hub's methods (CONTRACT §5): `GetCurrentStatus(correlationId)` and
//! `ResumeNotifications(lastNotificationId | null)`. Another user's order and an unknown one
//! give the same error, so nothing leaks.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::{
    cache::{CacheError, NotificationLog, StatusCache},
    domain::{CorrelationId, OrderStatus, UserId},
    hub::{Caller, Hub, HubError, protocol::HubMessage},
    store::Store,
};

pub struct OrderStatusHub {
    pub store: Store,
    pub cache: Arc<dyn StatusCache>,
    pub log: Arc<dyn NotificationLog>,
}

const METHODS: [&str; 2] = ["getcurrentstatus", "resumenotifications"];

fn unexpected(err: impl std::fmt::Display) -> HubError {
    HubError::Unexpected(err.to_string())
}

fn not_found() -> HubError {
    HubError::Exception("order not found".into())
}

#[async_trait]
impl Hub for OrderStatusHub {
    fn has_method(&self, name: &str) -> bool {
        METHODS.contains(&name.to_ascii_lowercase().as_str())
    }

    async fn invoke(&self, caller: &Caller, method: &str, arguments: Vec<Value>) -> Result<Value, HubError> {
        let user = UserId::parse(caller.user_id()).map_err(unexpected)?;
        match method.to_ascii_lowercase().as_str() {
            "getcurrentstatus" => {
                let [id] = exactly::<1>(arguments)?;
                let id = id.as_str().ok_or(HubError::Binding)?;
                self.current_status(&user, id).await
            }
            "resumenotifications" => {
                let [last] = exactly::<1>(arguments)?;
                let last = match &last {
                    Value::Null => None,
                    Value::String(s) => Some(s.as_str()),
                    _ => return Err(HubError::Binding),
                };
                self.resume(caller, &user, last).await
            }
            _ => Err(HubError::MethodNotFound),
        }
    }

    /// A notification's cursor is its id (increasing per user, CONTRACT §5).
    fn cursor(&self, msg: &HubMessage) -> Option<String> {
        match msg {
            HubMessage::Invocation { invocation_id: None, arguments, .. } => {
                arguments.first()?.get("notificationId")?.as_str().map(str::to_owned)
            }
            _ => None,
        }
    }

    /// The user's notifications after `cursor`: the log `ResumeNotifications` reads, without
    /// the client asking. With no cursor, those logged since the connection began.
    async fn missed(&self, caller: &Caller, cursor: Option<&str>, since_ms: u64) -> Result<Vec<(HubMessage, String)>, HubError> {
        let user = UserId::parse(caller.user_id()).map_err(unexpected)?;
        let from = cursor.map_or_else(|| format!("{}-{}", since_ms.saturating_sub(1), u64::MAX), str::to_owned);
        let replay = self.log.since(&user, Some(&from)).await.map_err(unexpected)?;
        let mut missed: Vec<(HubMessage, String)> =
            replay.notifications.into_iter().map(|n| (HubMessage::push(n.target.clone(), vec![n.argument()]), n.id)).collect();
        if !replay.complete && cursor.is_some() {
            // Some fell out of the log: clients that know `ResumeNeeded` fall back to status queries.
            missed.insert(0, (HubMessage::push(crate::hub::lifetime::RESUME_NEEDED, Vec::new()), String::new()));
        }
        Ok(missed)
    }
}

fn exactly<const N: usize>(arguments: Vec<Value>) -> Result<[Value; N], HubError> {
    let given = arguments.len();
    arguments.try_into().map_err(|_| HubError::ArgumentCount { expected: N, given })
}

impl OrderStatusHub {
    async fn current_status(&self, user: &UserId, raw_id: &str) -> Result<Value, HubError> {
        let id = CorrelationId::parse(raw_id).map_err(|_| not_found())?;
        let mut state = None;
        let owner = match self.cache.user_of(id).await.map_err(unexpected)? {
            Some(owner) => owner,
            None => {
                // The map entry expired: the database is the truth.
                let found = self.store.order_state(id).await.map_err(unexpected)?.ok_or_else(not_found)?;
                let owner = found.user_id.clone().ok_or_else(not_found)?;
                state = Some(found);
                owner
            }
        };
        if &owner != user {
            return Err(not_found());
        }
        let status = match self.cache.status(id).await.map_err(unexpected)? {
            Some(status) => status,
            None => {
                if state.is_none() {
                    state = self.store.order_state(id).await.map_err(unexpected)?;
                }
                state.as_ref().map(|s| s.status).ok_or_else(not_found)?
            }
        };
        // The order number lives only in the database.
        let order_id = if status == OrderStatus::Completed {
            if state.is_none() {
                state = self.store.order_state(id).await.map_err(unexpected)?;
            }
            state.and_then(|s| s.order_number).map(|n| n.to_string())
        } else {
            None
        };
        Ok(json!({ "correlationId": id, "status": status, "orderId": order_id }))
    }

    async fn resume(&self, caller: &Caller, user: &UserId, last: Option<&str>) -> Result<Value, HubError> {
        let replay = match self.log.since(user, last).await {
            Ok(replay) => replay,
            Err(CacheError::InvalidNotificationId(id)) => return Err(HubError::Exception(format!("invalid notification id '{id}'"))),
            Err(err) => return Err(unexpected(err)),
        };
        let protocol = caller.connection.protocol();
        for notification in &replay.notifications {
            // To the calling connection only, before the completion, with the original ids.
            let msg = HubMessage::push(notification.target.clone(), vec![notification.argument()]);
            caller.connection.send_reply(protocol.encode_to_bytes(&msg));
        }
        Ok(json!({ "replayed": replay.notifications.len(), "complete": replay.complete }))
    }
}
