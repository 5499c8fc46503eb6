//! A TCP connection with bytes already read from it put back in front.
//!
//! The main listener reads a connection's first bytes itself, to answer a WebSocket handshake
//! without going through HTTP machinery the session never uses again ([`crate::front`]). Any
//! other request is handed to hyper with those bytes in front, as if nothing had been read;
//! an upgrade hyper answered gives the connection back with whatever is left of them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub struct Prefixed {
    /// Bytes read before; `head[at..]` are still to be read.
    head: Vec<u8>,
    at: usize,
    stream: TcpStream,
}

impl Prefixed {
    pub fn new(head: Vec<u8>, stream: TcpStream) -> Self {
        Self {
            head,
            at: 0,
            stream,
        }
    }

    /// The connection, and what of the bytes in front has not been read.
    pub fn into_parts(mut self) -> (TcpStream, Vec<u8>) {
        let rest = if self.at == 0 {
            self.head
        } else {
            self.head.split_off(self.at)
        };
        (self.stream, rest)
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.at);
            buf.put_slice(&this.head[this.at..this.at + n]);
            this.at += n;
            if this.at == this.head.len() {
                // Read through: the allocation is not kept for the connection's life.
                this.head = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn the_bytes_in_front_are_read_first_then_the_connection() {
        let (mut client, server) = pair().await;
        client.write_all(b" world").await.unwrap();
        client.shutdown().await.unwrap();
        let mut io = Prefixed::new(b"hello".to_vec(), server);
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello world");
    }

    #[tokio::test]
    async fn what_was_not_read_is_given_back() {
        let (_client, server) = pair().await;
        let mut io = Prefixed::new(b"abcdef".to_vec(), server);
        let mut two = [0u8; 2];
        io.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"ab");
        let (_, rest) = io.into_parts();
        assert_eq!(rest, b"cdef");

        let (_client, server) = pair().await;
        let mut io = Prefixed::new(b"ab".to_vec(), server);
        io.read_exact(&mut two).await.unwrap();
        assert!(io.into_parts().1.is_empty());
    }
}
