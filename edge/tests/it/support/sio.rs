//! An official Socket.IO client (npm `socket.io-client`, pinned in edge/web/package.json) in
//! a Node process, scripted over its stdin and stdout (edge/web/test/socketio/driver.mjs).
//! `./test.sh` installs the npm packages before the Rust suites run.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::DEADLINE;

fn web_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web")
}

/// The Node script that runs a dialect application (edge/web/test/socketio/`name`).
pub fn script(name: &str) -> PathBuf {
    let dir = web_dir();
    assert!(
        dir.join("node_modules/socket.io-client").is_dir(),
        "socket.io-client is not installed: run `npm ci` in edge/web (./test.sh does)"
    );
    dir.join("test/socketio").join(name)
}

/// The edge's base URL for Socket.IO clients (`http://addr`), from its WebSocket URL.
pub fn base_url(ws_url: &str) -> String {
    ws_url
        .replacen("ws://", "http://", 1)
        .trim_end_matches("/ws")
        .to_owned()
}

pub struct SioClient {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Lines read while looking for another one, in order.
    held: VecDeque<Value>,
    /// The client's `socket.id`: its peer id.
    pub id: String,
    pub transport: String,
    next_ack: u64,
}

impl SioClient {
    /// Connects with these socket.io-client options; panics unless connected.
    pub async fn connect(base: &str, options: Value) -> SioClient {
        let (mut c, first) = Self::start(base, options).await;
        let Some(id) = first["connected"].as_str() else {
            panic!("not connected: {first}");
        };
        c.id = id.to_owned();
        c.transport = first["transport"].as_str().unwrap_or_default().to_owned();
        c
    }

    /// Starts a client; its first line (`connected` or `connect_error`).
    pub async fn start(base: &str, options: Value) -> (SioClient, Value) {
        let mut child = Command::new("node")
            .arg(script("driver.mjs"))
            .arg(base)
            .arg(options.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start node (is Node.js installed?)");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut c = SioClient {
            child,
            stdin,
            lines,
            held: VecDeque::new(),
            id: String::new(),
            transport: String::new(),
            next_ack: 0,
        };
        let first = c.read().await;
        (c, first)
    }

    async fn read(&mut self) -> Value {
        let line = tokio::time::timeout(DEADLINE, self.lines.next_line())
            .await
            .expect("no line from the Socket.IO client before the deadline")
            .expect("read the Socket.IO client")
            .expect("the Socket.IO client exited");
        serde_json::from_str(&line).unwrap()
    }

    /// The next line that `matches`; the others are kept, in order, for later.
    async fn find(&mut self, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.held.iter().position(&matches) {
            return self.held.remove(i).unwrap();
        }
        loop {
            let v = self.read().await;
            if matches(&v) {
                return v;
            }
            self.held.push_back(v);
        }
    }

    async fn send(&mut self, cmd: Value) {
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Emits `event` with one argument, asking for no acknowledgement.
    pub async fn emit(&mut self, event: &str, arg: Value) {
        self.send(json!({"op": "emit", "event": event, "args": [arg]}))
            .await;
    }

    /// Emits `event` with one argument and returns the acknowledgement's first argument.
    pub async fn emit_ack(&mut self, event: &str, arg: Value) -> Value {
        self.next_ack += 1;
        let n = self.next_ack;
        self.send(json!({"op": "emit", "event": event, "args": [arg], "ack": n}))
            .await;
        let v = self.find(|v| v["ack"] == n).await;
        v["args"][0].clone()
    }

    /// The first argument of the next `event` (other events stay for later).
    pub async fn expect(&mut self, event: &str) -> Value {
        let v = self.find(|v| v["event"] == event).await;
        v["args"][0].clone()
    }

    /// Events received and not yet expected, of this name.
    pub fn held(&self, event: &str) -> Vec<Value> {
        self.held
            .iter()
            .filter(|v| v["event"] == event)
            .map(|v| v["args"][0].clone())
            .collect()
    }

    /// The reason of the disconnection, once it comes.
    pub async fn disconnected(&mut self) -> String {
        let v = self.find(|v| v.get("disconnected").is_some()).await;
        v["disconnected"].as_str().unwrap_or_default().to_owned()
    }

    /// Disconnects and waits for the process to exit.
    pub async fn disconnect(mut self) {
        self.send(json!({"op": "disconnect"})).await;
        let _ = tokio::time::timeout(DEADLINE, self.child.wait()).await;
    }
}
