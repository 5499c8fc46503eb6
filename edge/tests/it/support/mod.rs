//! Test harness: real `heliograph-edge` processes and real WebSocket clients.
//!
//! Everything waits on a condition with a deadline; nothing sleeps to synchronise.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{ClientRequestBuilder, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected event may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A running edge process. Killed when dropped.
pub struct Node {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
    stderr_log: PathBuf,
    args: Vec<String>,
}

impl Node {
    /// Starts an edge on a free loopback port with its own data directory.
    pub fn start(dir: &Path, extra: &[&str]) -> Node {
        let data_dir = dir.join("data");
        Self::start_on(dir, &data_dir, "127.0.0.1:0", extra)
    }

    pub fn start_on(dir: &Path, data_dir: &Path, listen: &str, extra: &[&str]) -> Node {
        let mut args: Vec<String> = vec![
            "--listen".into(),
            listen.into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--log".into(),
            "info,heliograph_edge=debug".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let stderr_log = dir.join(format!("edge-{}.log", rand_suffix()));
        let stderr = std::fs::File::create(&stderr_log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_heliograph-edge"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn heliograph-edge");
        let stdout = child.stdout.take().unwrap();
        // Read the one JSON line with the bound address; a thread bounds the wait.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(DEADLINE) {
            Ok(l) if !l.is_empty() => l,
            _ => {
                let _ = child.kill();
                panic!(
                    "edge did not report its address; stderr:\n{}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                );
            }
        };
        let v: Value = serde_json::from_str(&line).unwrap();
        Node {
            child: Some(child),
            addr: v["listening"].as_str().unwrap().to_owned(),
            data_dir: data_dir.to_owned(),
            stderr_log,
            args,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// kill -9, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            std::thread::park_timeout(Duration::from_millis(20));
        }
        panic!("edge did not exit within {within:?}");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.addr, path).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// A minimal HTTP/1.1 GET, enough for health, readiness and metrics.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol client over a real WebSocket.
pub struct Client {
    pub ws: Ws,
    pub peer_id: String,
    pub welcome: Value,
}

impl Client {
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

    /// Receives until a frame of `ty` arrives; fails on anything else of interest.
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
        self.send(json!({"type": "ping", "ref": "alive"})).await;
        let pong = self.expect("pong").await;
        assert_eq!(pong["ref"], "alive");
    }
}

/// Polls `f` until it returns `Some`, or fails at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of one Prometheus sample, e.g. `name{label="x"}`.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub const CLUSTER_SECRET: &str = "edge-test-cluster-secret-0123";

/// A coordinator replica served in the test process: an embedded single replica behind the
/// edge-facing gRPC service on 127.0.0.1:0 (until the coordinator binary exists).
pub struct TestCoordinator {
    pub url: String,
    addr: std::net::SocketAddr,
    dir: PathBuf,
    grace: Duration,
    pub replica: heliograph_coordinator::EmbeddedCoordinator,
    stop: tokio_util::sync::CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl TestCoordinator {
    /// `grace`: how long detached peers keep their place.
    pub async fn start(dir: &Path, grace: Duration) -> TestCoordinator {
        Self::start_on(dir, grace, "127.0.0.1:0").await
    }

    /// Stops the service and the replica, and starts them again on the same port and data.
    /// `while_down` runs in between.
    pub async fn restart<F: std::future::Future<Output = ()>>(
        self,
        while_down: impl FnOnce() -> F,
    ) -> TestCoordinator {
        let (dir, grace, addr) = (self.dir.clone(), self.grace, self.addr);
        self.stop().await;
        while_down().await;
        Self::start_on(&dir, grace, &addr.to_string()).await
    }

    async fn start_on(dir: &Path, grace: Duration, listen: &str) -> TestCoordinator {
        use heliograph_coordinator::grpc::auth::ClusterSecret;
        use heliograph_coordinator::grpc::proto::registry_server::RegistryServer;
        use heliograph_coordinator::grpc::registry_service::RegistryService;
        let mut config = heliograph_coordinator::EmbeddedConfig::new(dir.join("replica"));
        config.grace = grace;
        let replica = heliograph_coordinator::EmbeddedCoordinator::open(config)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let stop = tokio_util::sync::CancellationToken::new();
        // The service's token closes the edges' links, which graceful shutdown waits for.
        let service = RegistryServer::new(RegistryService::new(
            replica.clone(),
            ClusterSecret::new(CLUSTER_SECRET).unwrap(),
            stop.clone(),
        ));
        let shutdown = stop.clone();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    shutdown.cancelled_owned(),
                )
                .await
                .unwrap();
        });
        TestCoordinator {
            url,
            addr,
            dir: dir.to_owned(),
            grace,
            replica,
            stop,
            server: Some(server),
        }
    }

    /// Flags that point an edge at this coordinator.
    pub fn edge_args(&self) -> Vec<String> {
        vec![
            "--coordinator".into(),
            self.url.clone(),
            "--cluster-secret".into(),
            CLUSTER_SECRET.into(),
        ]
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
        self.replica.shutdown().await;
    }
}

/// Waits until the edge reports ready.
pub async fn wait_ready(node: &Node) {
    wait_for("the edge to be ready", || async {
        (node.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
}
