//! The load generator's own SignalR client: an authenticated WebSocket to a hub URL with the
//! handshake done (JSON or MessagePack; skipNegotiation or through negotiate; optionally from a
//! chosen local address, since one source address reaches only ~28,000 sockets to one server
//! address), how it finds the correlation ids in what it receives, and the backplane settings
//! the scenarios that touch Redis pub/sub share.

use std::{net::IpAddr, time::Duration};

use contoso::hub::protocol::{HubMessage, Protocol};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig};

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const TIMEOUT: Duration = Duration::from_secs(20);

/// Small buffers, so one process holds many connections: tungstenite's defaults reserve 128 KiB
/// to read into; hub messages here are a few hundred bytes. Writes go out at once.
fn small_buffers() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4 * 1024).write_buffer_size(0)
}

/// How a connection is made.
#[derive(Clone, clap::Args)]
pub struct ClientArgs {
    /// Hub protocol: json or messagepack
    #[arg(long, default_value = "json", value_parser = ["json", "messagepack"])]
    pub protocol: String,
    /// POST {hub}/negotiate first and connect with its connectionToken (instead of skipNegotiation)
    #[arg(long)]
    pub negotiate: bool,
    /// Comma list of local addresses to connect from, round-robin (e.g. 127.0.0.1,127.0.0.2)
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// Stateful reconnect, as the official client's withStatefulReconnect(): negotiate asks for
    /// it, the handshake is version 2, and the tab acknowledges what it receives every second
    #[arg(long)]
    pub stateful: bool,
}

impl Default for ClientArgs {
    fn default() -> Self {
        Self { protocol: "json".into(), negotiate: false, source_ips: Vec::new(), stateful: false }
    }
}

/// How often a stateful tab acknowledges what it received (the official client: about 1 s).
const ACK_EVERY: Duration = Duration::from_secs(1);

/// How often a tab sends its keep-alive Ping: the official client's default interval. The hub
/// closes a connection that sends nothing for its client timeout (30 s), from the handshake on.
const PING_EVERY: Duration = Duration::from_secs(15);

/// A connection held like a browser tab: while it is read, it also sends the client's Ping
/// every `PING_EVERY`, as the official client does.
pub struct Tab {
    ws: Ws,
    ping: Message,
    interval: tokio::time::Interval,
    /// Stateful reconnect: counted messages received, the last acknowledged, the Ack timer.
    acks: Option<Acks>,
}

struct Acks {
    protocol: Protocol,
    received: u64,
    acked: u64,
    interval: tokio::time::Interval,
}

impl Tab {
    /// `protocol`: the hub protocol's name (json, messagepack); a bare relay gets JSON Pings.
    pub fn new(ws: Ws, protocol: &str) -> Self {
        let ping = if protocol == "messagepack" {
            Message::binary(Protocol::MessagePack.encode_to_bytes(&HubMessage::Ping))
        } else {
            Message::text("{\"type\":6}\u{1e}")
        };
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { ws, ping, interval, acks: None }
    }

    /// A tab of a stateful connection: it also acknowledges the counted messages it receives.
    pub fn stateful(ws: Ws, protocol: &str) -> Self {
        let mut tab = Self::new(ws, protocol);
        let protocol = Protocol::from_name(protocol).unwrap_or(Protocol::Json);
        let mut interval = tokio::time::interval(ACK_EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tab.acks = Some(Acks { protocol, received: 0, acked: 0, interval });
        tab
    }

    /// The next message from the server; Pings (and Acks) go out meanwhile. `None` when the connection ends.
    pub async fn next(&mut self) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
        loop {
            let ack_tick = async {
                match &mut self.acks {
                    Some(acks) => acks.interval.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = self.ws.next() => {
                    if let (Some(acks), Some(Ok(msg))) = (&mut self.acks, &msg) {
                        acks.count(msg);
                    }
                    return msg;
                }
                _ = self.interval.tick() => {
                    if let Err(err) = self.ws.send(self.ping.clone()).await {
                        return Some(Err(err));
                    }
                }
                _ = ack_tick => {
                    if let Some(ack) = self.acks.as_mut().and_then(Acks::due)
                        && let Err(err) = self.ws.send(ack).await
                    {
                        return Some(Err(err));
                    }
                }
            }
        }
    }

    pub async fn send(&mut self, msg: Message) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(msg).await
    }

    /// A tab whose page stopped reading but still runs: Pings, and nothing read, until the
    /// server gives up on it.
    pub async fn never_read(mut self) {
        loop {
            self.interval.tick().await;
            if self.ws.send(self.ping.clone()).await.is_err() {
                return;
            }
        }
    }
}

impl Acks {
    /// Counts the messages of a frame that stateful reconnect numbers.
    fn count(&mut self, msg: &Message) {
        let mut buf = bytes::BytesMut::from(match msg {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => &b[..],
            _ => return,
        });
        while let Ok(Some(m)) = self.protocol.parse(&mut buf, usize::MAX) {
            let counted = matches!(
                m,
                HubMessage::Invocation { .. }
                    | HubMessage::StreamItem { .. }
                    | HubMessage::Completion { .. }
                    | HubMessage::StreamInvocation { .. }
                    | HubMessage::CancelInvocation { .. }
            );
            self.received += u64::from(counted);
        }
    }

    fn due(&mut self) -> Option<Message> {
        (self.received > self.acked).then(|| {
            self.acked = self.received;
            let ack = self.protocol.encode_to_bytes(&HubMessage::Ack { sequence_id: self.acked });
            if self.protocol.is_binary() { Message::binary(ack) } else { Message::text(String::from_utf8_lossy(&ack).into_owned()) }
        })
    }
}

/// Connects as a JSON client with skipNegotiation, the token in the Authorization header.
pub async fn connect(url: &str, token: &str) -> anyhow::Result<Ws> {
    connect_with(url, token, &ClientArgs::default(), 0).await
}

/// Connects the `n`th connection as `client` says and completes the handshake.
pub async fn connect_with(url: &str, token: &str, client: &ClientArgs, n: usize) -> anyhow::Result<Ws> {
    let negotiated = client.negotiate || client.stateful;
    let url = if negotiated { format!("{url}?id={}", negotiate(url, token, client.stateful).await?) } else { url.to_owned() };
    let mut request = url.as_str().into_client_request()?;
    request.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {token}"))?);
    let mut ws = open(request, client, n).await?;
    let version = if client.stateful { 2 } else { 1 };
    ws.send(Message::text(format!("{{\"protocol\":\"{}\",\"version\":{version}}}\u{1e}", client.protocol))).await?;
    // The handshake reply is JSON in both protocols; a binary protocol gets it in a binary frame.
    match tokio::time::timeout(TIMEOUT, ws.next()).await? {
        Some(Ok(Message::Text(t))) if t.as_str().starts_with("{}\u{1e}") => Ok(ws),
        Some(Ok(Message::Binary(b))) if b.starts_with(b"{}\x1e") => Ok(ws),
        other => anyhow::bail!("unexpected handshake reply: {other:?}"),
    }
}

/// Connects the `n`th connection to a bare relay (`contoso-loadgen relay`) as `user`: no token, no handshake.
pub async fn connect_bare(url: &str, user: &str, client: &ClientArgs, n: usize) -> anyhow::Result<Ws> {
    open(format!("{url}?user={user}").as_str().into_client_request()?, client, n).await
}

/// The WebSocket upgrade, from the source address `client` gives the `n`th connection.
async fn open(request: tokio_tungstenite::tungstenite::handshake::client::Request, client: &ClientArgs, n: usize) -> anyhow::Result<Ws> {
    Ok(match client.source_ips.get(n % client.source_ips.len().max(1)) {
        None => {
            tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async_with_config(request, Some(small_buffers()), false)).await??.0
        }
        Some(ip) => {
            let host = request.uri().host().unwrap_or("127.0.0.1").to_owned();
            let port = request.uri().port_u16().unwrap_or(80);
            let server =
                tokio::net::lookup_host((host.as_str(), port)).await?.next().ok_or_else(|| anyhow::anyhow!("cannot resolve {host}"))?;
            let socket = if ip.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
            socket.bind((*ip, 0).into())?;
            let stream = tokio::time::timeout(TIMEOUT, socket.connect(server)).await??;
            let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
            tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async_with_config(request, stream, Some(small_buffers()))).await??.0
        }
    })
}

/// `POST {hub}/negotiate?negotiateVersion=1` (asking for stateful reconnect when `stateful`);
/// returns the connection token.
async fn negotiate(url: &str, token: &str, stateful: bool) -> anyhow::Result<String> {
    let http = url.replacen("ws://", "http://", 1).replacen("wss://", "https://", 1);
    let query = if stateful { "negotiateVersion=1&useStatefulReconnect=true" } else { "negotiateVersion=1" };
    let res = reqwest::Client::new().post(format!("{http}/negotiate?{query}")).bearer_auth(token).timeout(TIMEOUT).send().await?;
    anyhow::ensure!(res.status().is_success(), "negotiate answered {}", res.status());
    let body: serde_json::Value = res.json().await?;
    anyhow::ensure!(!stateful || body["useStatefulReconnect"] == true, "negotiate did not offer stateful reconnect: {body}");
    body["connectionToken"].as_str().map(str::to_owned).ok_or_else(|| anyhow::anyhow!("negotiate gave no connectionToken: {body}"))
}

/// Every correlation id in a frame: `"correlationId":"…"` in JSON records (from a JSON hub
/// connection, or inside the envelope the bare relay forwards), or the MessagePack map entry
/// (`correlationId` as a fixstr key, then a str value) from a MessagePack hub connection.
pub fn correlation_ids(frame: &[u8]) -> Vec<&str> {
    const JSON_KEY: &[u8] = b"\"correlationId\":\"";
    const MSGPACK_KEY: &[u8] = b"\xadcorrelationId";
    let find = |hay: &[u8], key: &[u8]| hay.windows(key.len()).position(|w| w == key);
    let mut found = Vec::new();
    let mut rest = frame;
    while let Some(at) = find(rest, JSON_KEY) {
        rest = &rest[at + JSON_KEY.len()..];
        let Some(len) = rest.iter().position(|b| *b == b'"') else { break };
        found.extend(std::str::from_utf8(&rest[..len]).ok());
        rest = &rest[len..];
    }
    let mut rest = frame;
    while let Some(at) = find(rest, MSGPACK_KEY) {
        rest = &rest[at + MSGPACK_KEY.len()..];
        let (len, header) = match rest.first() {
            Some(b) if b & 0xe0 == 0xa0 => ((b & 0x1f) as usize, 1),
            Some(0xd9) if rest.len() > 1 => (rest[1] as usize, 2),
            _ => continue,
        };
        let Some(value) = rest.get(header..header + len) else { break };
        found.extend(std::str::from_utf8(value).ok());
        rest = &rest[header + len..];
    }
    found
}

/// Where the hub's Redis backplane lives and how its channels are named.
#[derive(clap::Args)]
pub struct BackplaneArgs {
    /// The notify processes' --redis-url (a seed list with --redis-mode cluster)
    #[arg(long, default_value = "redis://127.0.0.1:6379/0")]
    pub redis_url: String,
    /// standalone, or cluster: publish with SPUBLISH and report each master's share
    #[arg(long, value_enum, default_value = "standalone")]
    pub redis_mode: contoso::redis_client::RedisMode,
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

#[cfg(test)]
mod tests {
    use super::*;
    use contoso::hub::{
        lifetime::envelope,
        protocol::{HubMessage, Protocol},
    };
    use serde_json::json;

    #[test]
    fn finds_the_correlation_ids_of_both_protocols_and_of_the_relayed_envelope() {
        let msg = |id: &str| HubMessage::push("OrderCompleted", vec![json!({ "notificationId": "1-0", "correlationId": id })]);
        let long = "0190b6a0-5e1c-7c3e-9a57-3c2b7a6f1d20";
        for protocol in Protocol::ALL {
            let mut frame = protocol.encode_to_bytes(&msg("short")).to_vec();
            frame.extend_from_slice(&protocol.encode_to_bytes(&msg(long)));
            assert_eq!(correlation_ids(&frame), ["short", long], "{}", protocol.name());
        }
        // The relay forwards the whole envelope (both encodings): each id is found in each.
        let relayed = envelope(&msg(long)).encode();
        assert_eq!(correlation_ids(&relayed), [long, long]);
    }
}
