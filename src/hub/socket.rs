//! The WebSocket of one hub connection over its upgraded TCP stream, framed by actix-http's
//! WebSocket codec (`ws::Parser`). An idle socket holds no buffer: reads land in a scratch
//! buffer of the worker thread and only an incomplete frame is kept; bytes the kernel would
//! not take yet are the only thing ever buffered for writing.

use std::{
    cell::RefCell,
    io,
    task::{Context, Poll, ready},
};

use actix_http::ws::{CloseCode, CloseReason, OpCode, Parser};
use bytes::{Buf, BytesMut};
use tokio::net::TcpStream;

/// Bytes read from the kernel in one go; a larger frame is assembled in the socket's own buffer.
const SCRATCH: usize = 16 * 1024;

thread_local! {
    /// Shared by every socket of this worker thread: used only inside one synchronous poll.
    static READ_SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
    static WRITE_SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// What one read brought, besides the data appended to the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Some frames arrived (data, pings or pongs); the connection is alive.
    Frames,
    /// The peer sent a Close frame or ended the stream.
    Closed,
}

pub struct WsSocket {
    io: TcpStream,
    /// An incomplete frame, kept between reads; empty (no allocation) otherwise.
    partial: BytesMut,
    /// Bytes the kernel has not taken yet; empty (no allocation) otherwise.
    out: BytesMut,
    max_frame: usize,
}

impl WsSocket {
    /// `leftover`: what the HTTP layer had read past the upgrade request.
    pub fn new(io: TcpStream, leftover: BytesMut, max_frame: usize) -> Self {
        let partial = if leftover.is_empty() { BytesMut::new() } else { BytesMut::from(&leftover[..]) };
        Self { io, partial, out: BytesMut::new(), max_frame }
    }

    /// Reads what the socket has and appends the payloads of its data frames (text, binary,
    /// continuation: hub records do not care about frame boundaries) to `data`. Answers Pings.
    pub fn poll_read(&mut self, cx: &mut Context<'_>, data: &mut BytesMut) -> Poll<io::Result<Read>> {
        loop {
            ready!(self.io.poll_read_ready(cx))?;
            let got = if self.partial.is_empty() {
                READ_SCRATCH.with(|s| {
                    let mut scratch = s.borrow_mut();
                    scratch.clear();
                    scratch.reserve(SCRATCH);
                    let n = self.io.try_read_buf(&mut *scratch)?;
                    let res = self.frames(&mut scratch, data, n);
                    if !scratch.is_empty() {
                        // An incomplete frame: it becomes this socket's own.
                        self.partial.extend_from_slice(&scratch);
                        scratch.clear();
                    }
                    res
                })
            } else {
                self.partial.reserve(SCRATCH.min(self.max_frame));
                let n = self.io.try_read_buf(&mut self.partial);
                n.and_then(|n| {
                    let mut partial = std::mem::take(&mut self.partial);
                    let res = self.frames(&mut partial, data, n);
                    if !partial.is_empty() {
                        self.partial = partial;
                    }
                    res
                })
            };
            match got {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    /// Parses every complete frame of `buf` (`n` bytes were just read; 0 is the end of the stream).
    fn frames(&mut self, buf: &mut BytesMut, data: &mut BytesMut, n: usize) -> io::Result<Read> {
        if n == 0 {
            return Ok(Read::Closed);
        }
        while let Some((_, op, payload)) = Parser::parse(buf, true, self.max_frame).map_err(io::Error::other)? {
            match op {
                OpCode::Text | OpCode::Binary | OpCode::Continue => {
                    if let Some(p) = payload {
                        data.extend_from_slice(&p);
                    }
                }
                OpCode::Ping => {
                    let p = payload.unwrap_or_default();
                    self.write(|out| Parser::write_message(out, &p[..], OpCode::Pong, true, false))?;
                }
                OpCode::Pong => {}
                OpCode::Close => return Ok(Read::Closed),
                OpCode::Bad => return Err(io::Error::other("bad websocket opcode")),
            }
        }
        Ok(Read::Frames)
    }

    /// Builds frames with `build` and writes as much as the kernel takes now; only the rest is
    /// kept, for `poll_flush`. Behind bytes already waiting, the frames just queue up.
    pub fn write(&mut self, build: impl FnOnce(&mut BytesMut)) -> io::Result<()> {
        if !self.out.is_empty() {
            build(&mut self.out);
            return Ok(());
        }
        WRITE_SCRATCH.with(|s| {
            let mut scratch = s.borrow_mut();
            scratch.clear();
            build(&mut scratch);
            let mut written = 0;
            while written < scratch.len() {
                match self.io.try_write(&scratch[written..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if written < scratch.len() {
                self.out.extend_from_slice(&scratch[written..]);
            }
            if scratch.capacity() > 16 * SCRATCH {
                // One large burst should not pin its memory on the thread forever.
                *scratch = BytesMut::new();
            }
            Ok(())
        })
    }

    /// A data frame holding `payload` (text for JSON, binary for MessagePack).
    pub fn write_data(&mut self, payload: &[u8], binary: bool) -> io::Result<()> {
        let op = if binary { OpCode::Binary } else { OpCode::Text };
        self.write(|out| Parser::write_message(out, payload, op, true, false))
    }

    /// The WebSocket Close frame (normal closure).
    pub fn write_close(&mut self) -> io::Result<()> {
        self.write(|out| Parser::write_close(out, Some(CloseReason { code: CloseCode::Normal, description: None }), false))
    }

    pub fn has_pending(&self) -> bool {
        !self.out.is_empty()
    }

    /// Writes what the kernel did not take before; frees the buffer once it is all out.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            ready!(self.io.poll_write_ready(cx))?;
            match self.io.try_write(&self.out) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.out = BytesMut::new();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn pair() -> (WsSocket, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (WsSocket::new(server, BytesMut::new(), 1024), client)
    }

    fn masked(op: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        Parser::write_message(&mut b, payload, op, fin, true);
        b.to_vec()
    }

    #[tokio::test]
    async fn frames_split_across_reads_are_joined_and_an_idle_socket_keeps_no_buffer() {
        let (mut ws, mut client) = pair().await;
        let mut frames = masked(OpCode::Text, false, b"hello ");
        frames.extend(masked(OpCode::Continue, true, b"world"));
        client.write_all(&frames[..5]).await.unwrap();
        let mut data = BytesMut::new();
        assert_eq!(poll_fn(|cx| ws.poll_read(cx, &mut data)).await.unwrap(), Read::Frames);
        assert!(data.is_empty());
        assert_eq!(ws.partial.len(), 5, "only the incomplete frame is kept");
        client.write_all(&frames[5..]).await.unwrap();
        while data.len() < 11 {
            poll_fn(|cx| ws.poll_read(cx, &mut data)).await.unwrap();
        }
        assert_eq!(&data[..], b"hello world");
        assert_eq!(ws.partial.capacity(), 0);
        assert_eq!(ws.out.capacity(), 0);
    }

    #[tokio::test]
    async fn a_ping_is_answered_and_a_close_ends_the_read_side() {
        let (mut ws, mut client) = pair().await;
        let mut frames = masked(OpCode::Ping, true, b"p");
        frames.extend(masked(OpCode::Close, true, b""));
        client.write_all(&frames).await.unwrap();
        let mut data = BytesMut::new();
        assert_eq!(poll_fn(|cx| ws.poll_read(cx, &mut data)).await.unwrap(), Read::Closed);
        let mut pong = [0u8; 3];
        client.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, [0x8a, 0x01, b'p']);
    }

    #[tokio::test]
    async fn an_oversized_frame_is_an_error() {
        let (mut ws, mut client) = pair().await;
        client.write_all(&masked(OpCode::Binary, true, &[0u8; 2000])).await.unwrap();
        let mut data = BytesMut::new();
        assert!(poll_fn(|cx| ws.poll_read(cx, &mut data)).await.is_err());
    }

    #[tokio::test]
    async fn what_the_kernel_does_not_take_waits_in_the_socket_and_is_freed_once_written() {
        let (mut ws, mut client) = pair().await;
        let big = vec![b'x'; 8 << 20];
        ws.write_data(&big, false).unwrap();
        assert!(ws.has_pending(), "8 MiB cannot fit in the socket buffers of an unread connection");
        let reader = tokio::spawn(async move {
            let mut sink = vec![0u8; 1 << 16];
            let mut total = 0;
            while total < (8 << 20) + 10 {
                total += client.read(&mut sink).await.unwrap();
            }
            total
        });
        poll_fn(|cx| ws.poll_flush(cx)).await.unwrap();
        assert_eq!(ws.out.capacity(), 0);
        assert_eq!(reader.await.unwrap(), (8 << 20) + 10);
    }
}
