//! The load generator's own SignalR client: an authenticated WebSocket to a hub URL with the
//! JSON handshake done, shared by the scenarios that hold hub connections; and the backplane
//! settings the scenarios that touch Redis pub/sub share.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects with the token in the Authorization header and completes the JSON handshake.
pub async fn connect(url: &str, token: &str) -> anyhow::Result<Ws> {
    let mut request = url.into_client_request()?;
    request.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {token}"))?);
    let (mut ws, _) = tokio::time::timeout(Duration::from_secs(20), tokio_tungstenite::connect_async(request)).await??;
    ws.send(Message::text("{\"protocol\":\"json\",\"version\":1}\u{1e}")).await?;
    match tokio::time::timeout(Duration::from_secs(20), ws.next()).await? {
        Some(Ok(Message::Text(t))) if t.as_str().starts_with("{}\u{1e}") => Ok(ws),
        other => anyhow::bail!("unexpected handshake reply: {other:?}"),
    }
}

/// Where the hub's Redis backplane lives and how its channels are named.
#[derive(clap::Args)]
pub struct BackplaneArgs {
    #[arg(long, default_value = "redis://127.0.0.1:6379/0")]
    pub redis_url: String,
    /// The notify processes' --channel-prefix
    #[arg(long, default_value = "")]
    pub channel_prefix: String,
    /// The notify processes' --hub-name
    #[arg(long, default_value = "Contoso.OrderNotification.Hubs.OrderStatusHub")]
    pub hub_name: String,
}

impl BackplaneArgs {
    pub fn channels(&self) -> contoso::backplane::Channels {
        contoso::backplane::Channels::new(&self.channel_prefix, &self.hub_name)
    }
}
