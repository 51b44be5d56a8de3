//! WebSocket upgrades beside actix-web's request pipeline: the HTTP/1 dispatcher hands an
//! upgrade request with its connection to the handler registered for its path, which answers
//! it and then owns the TCP stream, with none of the dispatcher's buffers left behind. Every
//! other request goes to the actix-web app.

use std::{convert::Infallible, io, sync::Arc, time::Instant};

use actix_http::{
    ConnectionType, Request, Response,
    body::{BodySize, BoxBody, MessageBody},
    h1,
};
use actix_web::{HttpResponse, http::StatusCode};
use futures_util::{FutureExt, SinkExt, future::LocalBoxFuture};
use tokio::net::TcpStream;

use super::{middleware, problem::Problem};

/// An upgrade request's connection: the request's codec and whatever was read past it.
pub type Framed = actix_codec::Framed<TcpStream, h1::Codec>;

/// Serves one upgrade request at its path, for as long as the connection lives.
pub type UpgradeFn = Arc<dyn Fn(Request, Framed) -> LocalBoxFuture<'static, ()> + Send + Sync>;

/// The upgrade handlers, by exact path.
#[derive(Clone, Default)]
pub struct Upgrades {
    routes: Vec<(String, UpgradeFn)>,
}

impl Upgrades {
    pub fn add(&mut self, path: &str, handler: UpgradeFn) {
        self.routes.push((path.to_owned(), handler));
    }

    /// The future that serves `req` for as long as its connection lives.
    pub fn handle(&self, req: Request, framed: Framed) -> LocalBoxFuture<'static, Result<(), Infallible>> {
        let handler = self.routes.iter().find(|(p, _)| p == req.path()).map(|(_, h)| h.clone());
        match handler {
            Some(handler) => handler(req, framed).map(Ok).boxed_local(),
            None => not_found(req, framed).map(Ok).boxed_local(),
        }
    }
}

async fn not_found(req: Request, mut framed: Framed) {
    let started = Instant::now();
    let _ = respond(&mut framed, Problem::new(StatusCode::NOT_FOUND, "no such resource").response()).await;
    middleware::record(req.method().as_str(), "unmatched", req.path(), 404, started.elapsed());
}

/// Answers an upgrade request with a complete HTTP response, then the connection closes.
pub async fn respond(framed: &mut Framed, res: HttpResponse) -> io::Result<()> {
    let res: Response<BoxBody> = res.into();
    let (mut head, body) = res.into_parts();
    let bytes = body.try_into_bytes().unwrap_or_default();
    head.head_mut().set_connection_type(ConnectionType::Close);
    framed.send(h1::Message::Item((head, BodySize::Sized(bytes.len() as u64)))).await?;
    if !bytes.is_empty() {
        framed.send(h1::Message::Chunk(Some(bytes))).await?;
    }
    framed.send(h1::Message::Chunk(None)).await
}

/// Sends the 101 (or any bodiless head) and keeps the connection.
pub async fn switch(framed: &mut Framed, head: Response<()>) -> io::Result<()> {
    framed.send(h1::Message::Item((head, BodySize::None))).await
}

/// The TCP stream and the bytes read past the request; the rest of the connection's HTTP state
/// (codec, write buffer) is freed here.
pub fn into_stream(framed: Framed) -> (TcpStream, bytes::BytesMut) {
    let parts = framed.into_parts();
    (parts.io, parts.read_buf)
}
