//! The client's WebSocket, which gives its buffers back while the client is quiet.
//!
//! A live WebSocket keeps a read buffer (`--socket-buffer-bytes`, 4 KiB by default), a write
//! buffer as large as the largest batch it wrote, and the protocol's state: about 5 KiB per
//! socket, for the whole life of a socket that is idle almost all of the time. A *parked*
//! socket keeps only the connection itself; the WebSocket is made again, with fresh buffers,
//! when the client sends something or the edge writes to it.
//!
//! A socket is parked only when nothing can be lost with the WebSocket's buffers: every byte
//! read from the connection was part of a message already handed out (counted on the wire:
//! see [`wire_len`]), and everything written has been flushed. The keepalive ping of a parked
//! socket is written as its two raw bytes, and the client's pong that answers it parks the
//! socket again at once, so that keepalive does not keep idle sockets live.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{FutureExt, SinkExt, StreamExt};
use metrics::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error, Message};

use crate::context::EdgeContext;

/// An unmasked ping frame without payload, as a server writes it (RFC 6455 §5.5.2).
const RAW_PING: [u8; 2] = [0x89, 0x00];
/// Bytes read at once from a parked socket when the client speaks again: what one read
/// returns becomes the start of the new WebSocket's read buffer.
const WAKE_READ: usize = 2048;

/// The connection under the WebSocket, counting the bytes read from it.
pub struct Counted<S> {
    io: S,
    read: u64,
    /// Bytes owed to the client before any frame: the handshake's `101`, when the edge
    /// answered the handshake itself. They go out with the first write (the `welcome`), in
    /// one `writev`: one system call, and one segment for the client, fewer per connection.
    preface: Vec<u8>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.read += (buf.filled().len() - before) as u64;
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> Counted<S> {
    /// Writes what is left of the preface, with as much of `buf` as the connection takes in
    /// the same call: how many bytes of `buf` were written.
    fn poll_preface(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        while !self.preface.is_empty() {
            let parts = [io::IoSlice::new(&self.preface), io::IoSlice::new(buf)];
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &parts))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n < self.preface.len() {
                self.preface.drain(..n);
            } else {
                let of_buf = n - self.preface.len();
                self.preface = Vec::new();
                return Poll::Ready(Ok(of_buf));
            }
        }
        Poll::Ready(Ok(0))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !self.preface.is_empty() {
            let written = std::task::ready!(self.poll_preface(cx, buf))?;
            if written > 0 || buf.is_empty() {
                return Poll::Ready(Ok(written));
            }
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.preface.is_empty() {
            std::task::ready!(self.poll_preface(cx, &[]))?;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !self.preface.is_empty() {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

type Io = Counted<TcpStream>;

enum State {
    /// Boxed: a parked socket's task then holds only the connection.
    Live(Box<WebSocketStream<Io>>),
    Parked(Io),
    /// Only between taking a parked connection and making its WebSocket, which completes at
    /// once; left only if it did not (the socket then reads as ended).
    Gone,
}

/// One client's WebSocket (see the module's comment).
pub struct Socket {
    state: State,
    /// Sockets parked now, on the edge.
    parked_gauge: Gauge,
    config: WebSocketConfig,
    /// Wire bytes of every message handed out so far: when it equals the bytes read, the
    /// WebSocket holds no partial frame.
    consumed: u64,
    /// A data message was read or written since the last [`Socket::tick`].
    active: bool,
    /// The WebSocket was made again for a control frame alone (the pong that answers a
    /// parked socket's ping): it parks again once that frame is read.
    woken_for_control: bool,
}

impl Socket {
    /// A WebSocket on a connection whose handshake has been answered; `read` are the bytes
    /// already read past the handshake (the client's first frames, if it sent them at once).
    ///
    /// `preface`: bytes the client is owed before the first frame (the `101` of a handshake
    /// the edge answered itself), written together with it.
    pub fn new(stream: TcpStream, read: Vec<u8>, preface: Vec<u8>, ctx: &EdgeContext) -> Self {
        let io = Counted {
            io: stream,
            // Counted as read: they are handed out as messages like any other bytes.
            read: read.len() as u64,
            preface,
        };
        let mut socket = Self {
            state: State::Parked(io),
            parked_gauge: ctx.metrics.sockets_parked.clone(),
            config: config(ctx),
            consumed: 0,
            active: true,
            woken_for_control: false,
        };
        socket.parked_gauge.increment(1.0);
        socket.unpark(read);
        socket
    }

    /// Whether the socket is parked now.
    pub fn is_parked(&self) -> bool {
        matches!(self.state, State::Parked(_))
    }

    /// The next message from the client; `None` once the connection has ended.
    ///
    /// Every method returns a small future built in place: no WebSocket is made inside a
    /// future, which would store one in every session's task.
    pub fn recv(&mut self) -> impl Future<Output = Option<Result<Message, Error>>> + '_ {
        std::future::poll_fn(move |cx| self.poll_recv(cx))
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        if let State::Parked(io) = &mut self.state {
            let mut buf = [0u8; WAKE_READ];
            let mut read = ReadBuf::new(&mut buf);
            match Pin::new(io).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(Error::Io(e)))),
                Poll::Ready(Ok(())) => {
                    // An end of stream is read again by the WebSocket, which reports it.
                    let part = read.filled().to_vec();
                    self.unpark(part);
                    self.woken_for_control = true;
                }
            }
        }
        let State::Live(ws) = &mut self.state else {
            return Poll::Ready(None);
        };
        let msg = std::task::ready!(ws.poll_next_unpin(cx));
        match &msg {
            Some(Ok(m)) => {
                self.consumed += wire_len(m);
                if matches!(m, Message::Text(_) | Message::Binary(_)) {
                    self.active = true;
                    self.woken_for_control = false;
                } else if self.woken_for_control && matches!(m, Message::Pong(_)) {
                    self.park();
                }
            }
            _ => self.woken_for_control = false,
        }
        Poll::Ready(msg)
    }

    /// Queues `msg` without flushing.
    pub fn feed(&mut self, msg: Message) -> impl Future<Output = Result<(), Error>> + '_ {
        if matches!(msg, Message::Text(_) | Message::Binary(_)) {
            self.active = true;
            self.woken_for_control = false;
        }
        let live = self.live();
        async move { live?.feed(msg).await }
    }

    /// Writes out what was queued.
    pub fn flush(&mut self) -> impl Future<Output = Result<(), Error>> + '_ {
        std::future::poll_fn(move |cx| match &mut self.state {
            State::Live(ws) => ws.poll_flush_unpin(cx),
            State::Parked(io) => Pin::new(io).poll_flush(cx).map_err(Error::Io),
            State::Gone => Poll::Ready(Err(Error::AlreadyClosed)),
        })
    }

    /// Queues `msg` and flushes.
    pub async fn send(&mut self, msg: Message) -> Result<(), Error> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// A keepalive ping. A parked socket stays parked: the ping is written as raw bytes.
    pub async fn ping(&mut self) -> Result<(), Error> {
        if self.is_parked() {
            self.write_raw_ping().await
        } else {
            self.send(Message::Ping(Default::default())).await
        }
    }

    fn write_raw_ping(&mut self) -> impl Future<Output = Result<(), Error>> + '_ {
        let mut written = 0;
        std::future::poll_fn(move |cx| {
            let State::Parked(io) = &mut self.state else {
                return Poll::Ready(Err(Error::AlreadyClosed));
            };
            while written < RAW_PING.len() {
                match std::task::ready!(Pin::new(&mut *io).poll_write(cx, &RAW_PING[written..])) {
                    Ok(0) => return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into()))),
                    Ok(n) => written += n,
                    Err(e) => return Poll::Ready(Err(Error::Io(e))),
                }
            }
            Poll::Ready(Ok(()))
        })
    }

    /// Called at each keepalive tick: a socket that carried no message since the last tick
    /// is parked, if nothing is left in its buffers.
    pub fn tick(&mut self) {
        if !std::mem::take(&mut self.active) {
            self.park();
        }
    }

    /// Parks the socket if its WebSocket holds nothing: no byte read but not yet handed out,
    /// nothing waiting to be written. A flush that cannot complete at once leaves it live.
    fn park(&mut self) {
        let State::Live(ws) = &mut self.state else {
            return;
        };
        if ws.get_ref().read != self.consumed {
            return;
        }
        // A pong the WebSocket owes the client is written by this flush.
        if !matches!(ws.flush().now_or_never(), Some(Ok(()))) {
            return;
        }
        if let State::Live(ws) = std::mem::replace(&mut self.state, State::Gone) {
            self.state = State::Parked(ws.into_inner());
            self.parked_gauge.increment(1.0);
        }
        self.woken_for_control = false;
    }

    /// The live WebSocket, made again if the socket was parked.
    fn live(&mut self) -> Result<&mut WebSocketStream<Io>, Error> {
        self.unpark(Vec::new());
        match &mut self.state {
            State::Live(ws) => Ok(ws),
            _ => Err(Error::AlreadyClosed),
        }
    }

    /// Makes the WebSocket again, with `part` already read from the connection.
    fn unpark(&mut self, part: Vec<u8>) {
        if !self.is_parked() {
            return;
        }
        if let State::Parked(io) = std::mem::replace(&mut self.state, State::Gone) {
            self.parked_gauge.decrement(1.0);
            // Making a WebSocket without a handshake completes on its first poll (it only
            // wraps the connection); a context set now is replaced by the first real poll.
            let made =
                WebSocketStream::from_partially_read(io, part, Role::Server, Some(self.config))
                    .now_or_never();
            if let Some(ws) = made {
                self.state = State::Live(Box::new(ws));
            }
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if self.is_parked() {
            self.parked_gauge.decrement(1.0);
        }
    }
}

/// The WebSocket limits and buffers of a client socket.
fn config(ctx: &EdgeContext) -> WebSocketConfig {
    let limits = ctx.config.limits;
    let buffer = ctx.config.socket_buffer_bytes;
    WebSocketConfig::default()
        .read_buffer_size(buffer)
        .write_buffer_size(buffer)
        .max_write_buffer_size(limits.max_frame_bytes.saturating_mul(4).max(buffer * 2))
        .max_frame_size(Some(limits.max_frame_bytes))
        .max_message_size(Some(limits.max_frame_bytes))
}

/// The bytes a client's message took on the wire as one frame: the header (2 bytes, the
/// extended length, the 4-byte mask) and the payload. A message sent in several frames, or
/// with a longer length field than needed, took more: the count then stays below the bytes
/// read, and the socket is never parked (safe, only not lighter).
fn wire_len(msg: &Message) -> u64 {
    let payload = match msg {
        Message::Text(t) => t.len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(Some(frame)) => 2 + frame.reason.len(),
        Message::Close(None) => 0,
        Message::Frame(f) => f.payload().len(),
    };
    let length_field = match payload {
        0..=125 => 0,
        126..=65_535 => 2,
        _ => 8,
    };
    (2 + length_field + 4 + payload) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (client, listener.accept().await.unwrap().0)
    }

    #[tokio::test]
    async fn the_preface_goes_out_before_the_first_write_and_only_once() {
        let (mut client, server) = pair().await;
        let mut io = Counted {
            io: server,
            read: 0,
            preface: b"HTTP/1.1 101\r\n\r\n".to_vec(),
        };
        io.write_all(b"first").await.unwrap();
        io.write_all(b"second").await.unwrap();
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"HTTP/1.1 101\r\n\r\nfirstsecond");

        // A flush alone writes it too (a close that follows nothing else).
        let (mut client, server) = pair().await;
        let mut io = Counted {
            io: server,
            read: 0,
            preface: b"101".to_vec(),
        };
        io.flush().await.unwrap();
        let mut got = [0u8; 3];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"101");
        assert!(io.preface.is_empty());
    }

    #[test]
    fn wire_len_counts_header_mask_and_payload() {
        assert_eq!(wire_len(&Message::Text("".into())), 6);
        assert_eq!(wire_len(&Message::Text("x".repeat(125).into())), 131);
        assert_eq!(wire_len(&Message::Text("x".repeat(126).into())), 134);
        assert_eq!(wire_len(&Message::Binary(vec![0; 70_000].into())), 70_014);
        assert_eq!(wire_len(&Message::Pong(Default::default())), 6);
        assert_eq!(wire_len(&Message::Close(None)), 6);
    }
}
