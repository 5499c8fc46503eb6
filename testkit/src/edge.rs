//! `heliograph-edge` processes: started on a port-0 listener, known by the address line they
//! print, killed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

use crate::http;
use crate::process::{Launch, Launchable, Proc};
use crate::wait::{self, DEADLINE};

/// How to start one edge.
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    pub launch: Launch,
    pub listen: String,
    pub data_dir: PathBuf,
    /// The edge's `--log` filter.
    pub log_filter: String,
}

impl Launchable for EdgeOptions {
    fn launch(&mut self) -> &mut Launch {
        &mut self.launch
    }
}

impl EdgeOptions {
    pub fn new(data_dir: &Path) -> EdgeOptions {
        EdgeOptions {
            launch: Launch::default(),
            listen: "127.0.0.1:0".into(),
            data_dir: data_dir.to_owned(),
            log_filter: "info,heliograph_edge=debug".into(),
        }
    }

    pub fn log_filter(mut self, filter: &str) -> Self {
        filter.clone_into(&mut self.log_filter);
        self
    }

    pub fn listen(mut self, listen: &str) -> Self {
        listen.clone_into(&mut self.listen);
        self
    }

    /// The command line, stdio untouched.
    pub fn command(&self) -> Result<Command> {
        let mut cmd = self.launch.command(crate::bin::EDGE)?;
        cmd.args(["--listen", &self.listen])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--log", &self.log_filter])
            .args(&self.launch.args);
        Ok(cmd)
    }
}

/// A running edge process. Killed when dropped.
pub struct Node {
    proc: Proc,
    pub addr: String,
    pub data_dir: PathBuf,
}

impl Node {
    /// Starts the edge and reads the address it bound.
    pub fn spawn(options: &EdgeOptions) -> Result<Node> {
        let mut proc = Proc::spawn(options.command()?, "edge", options.launch.log.as_deref())?;
        let v = proc.address_line(DEADLINE)?;
        let addr = v["listening"]
            .as_str()
            .ok_or_else(|| anyhow!("no listening address in {v}"))?
            .to_owned();
        Ok(Node {
            proc,
            addr,
            data_dir: options.data_dir.clone(),
        })
    }

    /// Starts an edge on a free loopback port with its own data directory in `dir`; `extra`
    /// are more flags. A failure fails the test.
    pub fn start(dir: &Path, extra: &[&str]) -> Node {
        Node::start_on(dir, &dir.join("data"), "127.0.0.1:0", extra)
    }

    /// [`Node::start`] on a given data directory and listen address.
    #[allow(clippy::panic)]
    pub fn start_on(dir: &Path, data_dir: &Path, listen: &str, extra: &[&str]) -> Node {
        let options = EdgeOptions::new(data_dir)
            .listen(listen)
            .log(&dir.join(format!("edge-{}.log", unique())))
            .args(extra);
        Node::spawn(&options).unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    #[allow(clippy::expect_used)]
    pub fn pid(&self) -> u32 {
        self.proc.pid().expect("the edge is running")
    }

    /// Sends `sig` (e.g. `TERM`).
    #[allow(clippy::panic)]
    pub fn signal(&self, sig: &str) {
        self.proc.signal(sig).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// kill -9, and reap.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Waits for the process to exit; returns its exit code.
    #[allow(clippy::panic)]
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        match self.proc.wait_exit(within) {
            Ok(status) => status.code(),
            Err(e) => panic!("{e:#}"),
        }
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http::get(&self.addr, path).await
    }

    /// One metric sample (0 when absent).
    pub async fn metric(&self, sample: &str) -> f64 {
        http::metric(&self.get("/metrics").await.1, sample).unwrap_or(0.0)
    }

    /// Waits until `pred` holds for one metric sample; returns its value.
    pub async fn wait_metric(&self, sample: &str, pred: impl Fn(f64) -> bool) -> f64 {
        wait::wait_for(sample, || async {
            let v = self.metric(sample).await;
            pred(v).then_some(v)
        })
        .await
    }

    /// Waits until the edge reports ready.
    pub async fn wait_ready(&self) {
        wait::wait_for("the edge to be ready", || async {
            (self.get("/readyz").await.0 == 200).then_some(())
        })
        .await;
    }
}

/// Waits (at most `within`) until the edge at `addr` answers `/readyz` with 200.
pub async fn wait_ready(addr: &str, within: Duration) -> Result<()> {
    http::wait_until(addr, "/readyz", within, |code, _| code == 200).await
}

/// Waits (at most `within`) until the edge at `addr` reports its Redis bus up.
pub async fn wait_redis_up(addr: &str, within: Duration) -> Result<()> {
    http::wait_until(addr, "/metrics", within, |_, body| {
        http::metric(body, "heliograph_edge_redis_up") == Some(1.0)
    })
    .await
}

/// A distinct suffix for log file names.
fn unique() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}
