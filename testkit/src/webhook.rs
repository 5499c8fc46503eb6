//! A webhook receiver on a real socket: an HTTP/1.1 server (keep-alive, `Content-Length`
//! bodies) that records every request and answers by a policy: 200, 500 for the first N
//! requests, or never (it reads and holds the connection).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// 200 to everything.
    Accept,
    /// 500 to the first `n` requests, then 200.
    FailFirst(usize),
    /// Reads requests and never answers.
    Never,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: String,
    /// Whether it was answered 2xx.
    pub accepted: bool,
}

pub struct Receiver {
    pub addr: String,
    received: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Receiver {
    pub async fn start(policy: Policy) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let received = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let log = Arc::clone(&received);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = Arc::clone(&log);
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut read = BufReader::new(read);
                    loop {
                        let mut headers = HashMap::new();
                        let mut line = String::new();
                        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        loop {
                            line.clear();
                            if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let l = line.trim_end();
                            if l.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = l.split_once(':') {
                                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                            }
                        }
                        let len: usize = headers
                            .get("content-length")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        let mut body = vec![0; len];
                        if read.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        let status = match policy {
                            Policy::Never => None,
                            Policy::FailFirst(k) if n < k => Some(500),
                            _ => Some(200),
                        };
                        log.lock().unwrap().push(Received {
                            headers,
                            body: String::from_utf8_lossy(&body).into_owned(),
                            accepted: status == Some(200),
                        });
                        let Some(status) = status else {
                            // Hold the connection: keep reading until the client gives up.
                            let mut sink = Vec::new();
                            let _ = read.read_to_end(&mut sink).await;
                            return;
                        };
                        let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                        if write.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Receiver {
            addr,
            received,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
