//! The bare relay: the floor every fan-out figure is compared with. The smallest WebSocket
//! relay on the same Redis pub/sub: no authentication, no hub protocol, no queues. A client
//! connects to `/?user=<id>`; the relay subscribes to that user's backplane channel on one
//! shared subscriber connection and forwards every payload unchanged as a binary frame. It lives
//! for one benchmark run: nothing is ever unsubscribed or cleaned up. Its buffers are minimal,
//! so it is the floor for the memory of an idle connection as well.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use deadpool_redis::redis;
use futures_util::{SinkExt, StreamExt};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_tungstenite::tungstenite::{Message, handshake::server::Request, protocol::WebSocketConfig};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: String,
    /// User u's channel is the hub's: `{channel_prefix}{hub_name}:user:{u}`
    #[command(flatten)]
    backplane: crate::hub::BackplaneArgs,
    /// Send a WebSocket Ping after this long without a message (0: never), as a hub's keep-alive
    #[arg(long, default_value_t = 0)]
    keep_alive_ms: u64,
}

/// The floor for memory too: a 512-byte read buffer (tungstenite's default reserves 128 KiB)
/// and no write buffer, so an idle relayed socket costs what the crate needs and no more.
fn minimal_buffers() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(512).write_buffer_size(0)
}

type Sockets = Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Bytes>>>>>;

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = redis::Client::open(args.backplane.redis_url.as_str())?;
    let (mut sink, mut stream) = client.get_async_pubsub().await?.split();
    let sockets: Sockets = Arc::default();
    let (subscribe_tx, mut subscribe_rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(channel) = subscribe_rx.recv().await {
            let _ = sink.subscribe(channel).await;
        }
    });
    let routes = sockets.clone();
    tokio::spawn(async move {
        while let Some(msg) = stream.next().await {
            let payload = Bytes::from(msg.get_payload_bytes().to_vec());
            if let Some(targets) = routes.lock().expect("lock").get(msg.get_channel_name()) {
                targets.iter().for_each(|t| drop(t.send(payload.clone())));
            }
        }
    });
    let listener = TcpListener::bind(&args.listen).await?;
    eprintln!("bare relay listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let (sockets, subscribe_tx) = (sockets.clone(), subscribe_tx.clone());
        let channels = args.backplane.channels();
        let keep_alive = (args.keep_alive_ms > 0).then(|| std::time::Duration::from_millis(args.keep_alive_ms));
        tokio::spawn(async move {
            let mut user = String::new();
            // The callback's error type is tungstenite's, large or not.
            #[allow(clippy::result_large_err)]
            let ws = tokio_tungstenite::accept_hdr_async_with_config(
                tcp,
                |req: &Request, res| {
                    user = req.uri().query().and_then(|q| q.strip_prefix("user=")).unwrap_or_default().to_owned();
                    Ok(res)
                },
                Some(minimal_buffers()),
            )
            .await;
            let Ok(ws) = ws else { return };
            let channel = channels.user(&user);
            let (tx, mut rx) = mpsc::unbounded_channel();
            let first = {
                let mut map = sockets.lock().expect("lock");
                let entry = map.entry(channel.clone()).or_default();
                entry.push(tx);
                entry.len() == 1
            };
            if first {
                let _ = subscribe_tx.send(channel);
            }
            let (mut write, mut read) = ws.split();
            tokio::spawn(async move { while let Some(Ok(_)) = read.next().await {} });
            loop {
                let next = match keep_alive {
                    Some(interval) => tokio::time::timeout(interval, rx.recv()).await,
                    None => Ok(rx.recv().await),
                };
                let msg = match next {
                    Ok(Some(payload)) => Message::binary(payload),
                    Ok(None) => break,
                    Err(_) => Message::Ping(Bytes::new()),
                };
                if write.send(msg).await.is_err() {
                    break;
                }
            }
        });
    }
}
