//! A protocol client that keeps its session across sockets: it tracks `seq`, and resumes
//! on a new socket with its token and the last `seq` it read.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{Client, DEADLINE};

pub struct Session {
    pub client: Client,
    pub peer_id: String,
    pub token: String,
    pub last_seq: u64,
    /// Frames whose `seq` was not above the last one read (must stay 0).
    pub stale_frames: u64,
}

impl Session {
    pub async fn connect(url: &str) -> Session {
        Session::from_client(Client::connect(url).await)
    }

    pub fn from_client(client: Client) -> Session {
        let w = client.welcome.clone();
        Session {
            peer_id: client.peer_id.clone(),
            token: w["resume_token"].as_str().unwrap().to_owned(),
            last_seq: w["seq"].as_u64().expect("welcome carries seq"),
            stale_frames: 0,
            client,
        }
    }

    /// The next JSON frame, `None` when the socket ended. Frames must be numbered one after
    /// the other.
    pub async fn recv_within(&mut self, within: Duration) -> Option<Value> {
        loop {
            let m = tokio::time::timeout(within, self.client.ws.next())
                .await
                .ok()??;
            let Ok(m) = m else { return None };
            let text = match m {
                Message::Text(t) => t,
                Message::Close(_) => return None,
                _ => continue,
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            let seq = v["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {v}"));
            if seq <= self.last_seq {
                self.stale_frames += 1;
                continue;
            }
            assert_eq!(seq, self.last_seq + 1, "a frame was skipped before {v}");
            self.last_seq = seq;
            if v["type"] == "resumed" {
                self.token = v["resume_token"].as_str().unwrap().to_owned();
            }
            return Some(v);
        }
    }

    pub async fn recv(&mut self) -> Value {
        self.recv_within(DEADLINE).await.expect("socket ended")
    }

    pub async fn expect(&mut self, ty: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], ty, "expected {ty}, got {v}");
        v
    }

    pub async fn send(&mut self, v: Value) -> bool {
        self.client
            .ws
            .send(Message::text(v.to_string()))
            .await
            .is_ok()
    }

    /// Drops the TCP connection without a close frame (a lost network).
    #[allow(dead_code)]
    pub fn drop_connection(self) -> (String, String, u64) {
        #[allow(deprecated)]
        if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = self.client.ws.get_ref() {
            tcp.set_linger(Some(Duration::ZERO)).unwrap();
        }
        (self.peer_id, self.token, self.last_seq)
    }

    /// Opens a new socket at `url` and asks to resume; the frames that come before
    /// `resumed` (the replay) are returned with it. Panics on `resume-failed`.
    pub async fn resume(
        url: &str,
        peer_id: String,
        token: String,
        last_seq: u64,
    ) -> (Session, Vec<Value>, Value) {
        let client = Client::connect(url).await;
        let fresh = client.peer_id.clone();
        let mut s = Session::from_client(client);
        assert_ne!(fresh, peer_id);
        s.send(json!({"type": "resume", "token": token, "last_seq": last_seq, "ref": "r"}))
            .await;
        // From here on the frames are the resumed session's.
        s.last_seq = last_seq;
        s.peer_id = peer_id;
        let mut replay = Vec::new();
        loop {
            let v = s.recv().await;
            match v["type"].as_str() {
                Some("resumed") => {
                    assert_eq!(v["peer_id"], s.peer_id.as_str());
                    assert_eq!(v["ref"], "r");
                    return (s, replay, v);
                }
                Some("error") => panic!("resume refused: {v}"),
                _ => replay.push(v),
            }
        }
    }
}
