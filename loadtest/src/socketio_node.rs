//! The Node.js Socket.IO signaling server (`loadtest/socketio-node/server.mjs`) that the
//! edge's Socket.IO endpoint is measured against: started here, with its npm packages
//! installed from the pinned lock file when missing.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Longest wait for `npm ci` (a first run downloads the packages).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for the server's address line.
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("socketio-node")
}

pub struct NodeSocketIo {
    child: tokio::process::Child,
    /// The base URL for `--wire socketio` clients (`ws://127.0.0.1:PORT`).
    pub url: String,
    pub pid: u32,
}

impl NodeSocketIo {
    /// Installs the packages if needed, then starts `node server.mjs` (under `taskset -c CPUS`
    /// when given) and reads its address line.
    pub async fn spawn(taskset: Option<&str>) -> Result<Self> {
        let dir = dir();
        if !dir.join("node_modules/socket.io").is_dir() {
            eprintln!("installing the Node.js reference server's packages (npm ci)");
            let status = tokio::time::timeout(
                INSTALL_TIMEOUT,
                tokio::process::Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund"])
                    .current_dir(&dir)
                    .status(),
            )
            .await
            .map_err(|_| anyhow!("npm ci took longer than {INSTALL_TIMEOUT:?}"))?
            .context("running npm ci (is Node.js installed?)")?;
            if !status.success() {
                bail!("npm ci in {} failed: {status}", dir.display());
            }
        }
        let mut cmd = match taskset {
            Some(cpus) => {
                let mut c = tokio::process::Command::new("taskset");
                c.arg("-c").arg(cpus).arg("node");
                c
            }
            None => tokio::process::Command::new("node"),
        };
        cmd.arg(dir.join("server.mjs"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("spawning node")?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("the Node.js server exited at once"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout from the Node.js server"))?;
        let mut line = String::new();
        tokio::time::timeout(START_TIMEOUT, BufReader::new(stdout).read_line(&mut line))
            .await
            .map_err(|_| {
                anyhow!("the Node.js server printed no address within {START_TIMEOUT:?}")
            })??;
        let v: serde_json::Value = serde_json::from_str(line.trim())
            .with_context(|| format!("the Node.js server said {line:?}"))?;
        let addr = v
            .get("listening")
            .and_then(|a| a.as_str())
            .ok_or_else(|| anyhow!("the Node.js server said {line:?}"))?;
        Ok(Self {
            child,
            url: format!("ws://{addr}"),
            pid,
        })
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
