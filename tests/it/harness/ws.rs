//! A bare SignalR JSON client for the Rust tests: a WebSocket with the Authorization header,
//! handshake done. Where the official client cannot go (stopped readers, raw frames).

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to the hub at `url` (`ws://...`) as the bearer of `token`; the JSON handshake is answered.
pub async fn connect(url: &str, token: &str) -> Ws {
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    ws.send(Message::text("{\"protocol\":\"json\",\"version\":1}\u{1e}")).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "{}\u{1e}"),
        other => panic!("no handshake reply: {other:?}"),
    }
    ws
}
