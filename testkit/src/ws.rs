//! A protocol client over a real WebSocket; every receive has a deadline. A failure fails
//! the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{ClientRequestBuilder, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::wait::DEADLINE;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
    pub peer_id: String,
    pub welcome: Value,
}

impl Client {
    /// Connects with the `heliograph.v1` subprotocol and reads the `welcome`.
    pub async fn connect(url: &str) -> Client {
        let request =
            ClientRequestBuilder::new(url.parse().unwrap()).with_sub_protocol("heliograph.v1");
        let (ws, resp) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect timed out")
            .expect("connect");
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap()),
            Some("heliograph.v1")
        );
        let mut c = Client {
            ws,
            peer_id: String::new(),
            welcome: Value::Null,
        };
        let welcome = c.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        c.peer_id = welcome["peer_id"].as_str().unwrap().to_owned();
        c.welcome = welcome;
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// The next JSON frame (control frames skipped).
    pub async fn recv(&mut self) -> Value {
        match self.next_message().await {
            Message::Text(t) => serde_json::from_str(&t).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    pub async fn next_message(&mut self) -> Message {
        loop {
            let m = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("no message before the deadline")
                .expect("socket ended")
                .expect("socket error");
            match m {
                Message::Ping(_) | Message::Pong(_) => continue,
                m => return m,
            }
        }
    }

    /// The next frame, which must be of type `ty`.
    pub async fn expect(&mut self, ty: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], ty, "expected {ty}, got {v}");
        v
    }

    /// The close code the server ends the socket with (frames before it are skipped).
    pub async fn expect_close(&mut self) -> CloseCode {
        loop {
            match self.next_message().await {
                Message::Close(Some(f)) => return f.code,
                Message::Close(None) => panic!("closed without a code"),
                _ => continue,
            }
        }
    }

    pub async fn join(&mut self, room: &str) -> Value {
        self.send(json!({"type": "join", "room": room})).await;
        self.expect("joined").await
    }

    /// Asserts that the server answers a ping, skipping whatever answers came before it.
    pub async fn assert_usable_after_noise(&mut self) {
        self.send(json!({"type": "ping", "ref": "after-noise"}))
            .await;
        loop {
            let v = self.recv().await;
            if v["type"] == "pong" && v["ref"] == "after-noise" {
                return;
            }
        }
    }

    /// Asserts that the server answers a ping (the connection is usable).
    pub async fn assert_usable(&mut self) {
        self.assert_pong("alive").await;
    }

    /// The next frame is the pong for `tag`: nothing else (e.g. a duplicate) was queued first.
    pub async fn assert_pong(&mut self, tag: &str) {
        self.send(json!({"type": "ping", "ref": tag})).await;
        let pong = self.expect("pong").await;
        assert_eq!(pong["ref"], tag);
    }
}
