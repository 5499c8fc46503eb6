//! `heliograph-coordinator` replicas started through `serve`, and its admin subcommands
//! (`bootstrap`, `add`, `remove`, `status`, `snapshot`), which print JSON.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::process::{Launch, Launchable, Proc};
use crate::wait::{self, STARTUP};

/// How to start one replica; every listener binds port 0 unless told otherwise.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    pub launch: Launch,
    pub id: u64,
    pub region: String,
    pub data_dir: PathBuf,
    pub raft_listen: String,
    pub api_listen: String,
    pub metrics_listen: String,
    pub secret: String,
    /// `RUST_LOG` of the replica.
    pub rust_log: String,
}

impl Launchable for ReplicaOptions {
    fn launch(&mut self) -> &mut Launch {
        &mut self.launch
    }
}

impl ReplicaOptions {
    pub fn new(id: u64, region: &str, data_dir: &Path) -> ReplicaOptions {
        ReplicaOptions {
            launch: Launch::default(),
            id,
            region: region.to_owned(),
            data_dir: data_dir.to_owned(),
            raft_listen: "127.0.0.1:0".into(),
            api_listen: "127.0.0.1:0".into(),
            metrics_listen: "127.0.0.1:0".into(),
            secret: crate::CLUSTER_SECRET.into(),
            rust_log: "info,openraft=warn".into(),
        }
    }

    /// The `serve` command line, stdio untouched.
    pub fn command(&self) -> Result<Command> {
        let mut cmd = self.launch.command(crate::bin::COORDINATOR)?;
        cmd.args([
            "serve",
            "--id",
            &self.id.to_string(),
            "--region",
            &self.region,
        ])
        .args(["--raft-listen", &self.raft_listen])
        .args(["--api-listen", &self.api_listen])
        .args(["--metrics-listen", &self.metrics_listen])
        .arg("--data-dir")
        .arg(&self.data_dir)
        .args(&self.launch.args)
        .env("HELIOGRAPH_CLUSTER_SECRET", &self.secret)
        .env("RUST_LOG", &self.rust_log);
        Ok(cmd)
    }
}

/// A replica process and the addresses it reported; killed on drop.
pub struct Replica {
    pub id: u64,
    pub region: String,
    pub raft: String,
    pub api: String,
    pub metrics: String,
    options: ReplicaOptions,
    proc: Option<Proc>,
}

impl Replica {
    /// Starts the replica and reads its addresses.
    pub fn spawn(options: ReplicaOptions) -> Result<Replica> {
        let mut r = Replica {
            id: options.id,
            region: options.region.clone(),
            raft: String::new(),
            api: String::new(),
            metrics: String::new(),
            options,
            proc: None,
        };
        r.start_again()?;
        Ok(r)
    }

    /// [`Replica::spawn`] in a test: a failure fails the test.
    #[allow(clippy::panic)]
    pub fn start(options: ReplicaOptions) -> Replica {
        Replica::spawn(options).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts the process again on the same data directory and the same Raft and API
    /// addresses (its peers know it by them); the metrics listener is new.
    pub fn start_again(&mut self) -> Result<()> {
        // A first start chooses its ports a moment before the process binds them, and another
        // test may take one meanwhile: then it chooses again (a restart keeps its ports).
        let first_start = self.raft.is_empty();
        let mut attempt = 1;
        loop {
            match self.start_once() {
                Err(e) if first_start && attempt < PORT_ATTEMPTS && port_taken(&e) => {
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    fn start_once(&mut self) -> Result<()> {
        let mut options = self.options.clone();
        if self.raft.is_empty() {
            // Kept across restarts: taken outside the ephemeral range (see `ports`).
            for listen in [&mut options.raft_listen, &mut options.api_listen] {
                if let Some(ip) = listen.strip_suffix(":0")
                    && let Ok(ip) = ip.parse::<std::net::IpAddr>()
                {
                    *listen = format!("{ip}:{}", crate::ports::restartable_port_on(ip)?);
                }
            }
        } else {
            options.raft_listen.clone_from(&self.raft);
            options.api_listen.clone_from(&self.api);
        }
        let name = format!("replica {}", self.id);
        let mut proc = Proc::spawn(options.command()?, &name, options.launch.log.as_deref())?;
        let v = proc.address_line(STARTUP)?;
        let field = |k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("{name}: no {k} in {v}"))
        };
        self.raft = field("raft")?;
        self.api = field("api")?;
        self.metrics = field("metrics")?;
        self.proc = Some(proc);
        Ok(())
    }

    /// [`Replica::start_again`] in a test.
    #[allow(clippy::panic)]
    pub fn restart(&mut self) {
        self.start_again().unwrap_or_else(|e| panic!("{e:#}"));
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    pub fn alive(&self) -> bool {
        self.proc.as_ref().is_some_and(Proc::is_running)
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    /// kill -9, and reap.
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// SIGTERM, and a bounded wait for a clean exit (status 0); fails the test otherwise.
    #[allow(clippy::panic)]
    pub fn terminate(&mut self) {
        let Some(mut proc) = self.proc.take() else {
            return;
        };
        match proc.terminate(STARTUP) {
            Ok(status) => assert!(status.success(), "replica {} exited with {status}", self.id),
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Its Prometheus text.
    pub async fn scrape(&self) -> String {
        crate::http::get(&self.metrics, "/metrics").await.1
    }
}

/// The admin subcommands of one coordinator binary, authenticated with one secret.
#[derive(Debug, Clone)]
pub struct Admin {
    bin: PathBuf,
    secret: String,
}

impl Admin {
    /// The workspace's coordinator with the test clusters' secret.
    #[allow(clippy::panic)]
    pub fn new() -> Admin {
        Admin::with_secret(crate::CLUSTER_SECRET).unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn with_secret(secret: &str) -> Result<Admin> {
        Ok(Admin::of(
            crate::bin::path(crate::bin::COORDINATOR)?,
            secret,
        ))
    }

    pub fn of(bin: PathBuf, secret: &str) -> Admin {
        Admin {
            bin,
            secret: secret.to_owned(),
        }
    }

    /// Runs a subcommand: its JSON output, or an error with what it printed on stderr.
    pub fn run(&self, args: &[&str]) -> Result<Value> {
        let out = Command::new(&self.bin)
            .args(args)
            .env("HELIOGRAPH_CLUSTER_SECRET", &self.secret)
            .output()
            .with_context(|| format!("running {}", self.bin.display()))?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim_end());
        }
        serde_json::from_slice(&out.stdout).context("admin output is not JSON")
    }

    pub fn status(&self, api: &str) -> Result<Value> {
        self.run(&["status", "--api", api])
    }

    /// Has the replica at `api` build a snapshot now: `{"index", "bytes", "build_ms"}`.
    pub fn snapshot(&self, api: &str) -> Result<Value> {
        self.run(&["snapshot", "--api", api])
    }

    pub fn bootstrap(&self, api: &str) -> Result<Value> {
        self.run(&["bootstrap", "--api", api])
    }

    /// Adds `r` as a voter through the replica at `via` (the CLI follows the leader).
    pub fn add(&self, via: &str, r: &Replica) -> Result<Value> {
        let id = r.id.to_string();
        self.run(&[
            "add",
            "--api",
            via,
            "--id",
            &id,
            "--raft",
            &r.raft,
            "--node-api",
            &r.api,
            "--region",
            &r.region,
        ])
        .with_context(|| format!("add {id}"))
    }

    /// Tells the group of the replica at `via` where `region`'s gateways are.
    pub fn set_region(&self, via: &str, region: &str, gateways: &[&str]) -> Result<Value> {
        let gateways = gateways.join(",");
        self.run(&[
            "region",
            "--api",
            via,
            "--region",
            region,
            "--gateways",
            &gateways,
        ])
        .with_context(|| format!("region {region}"))
    }

    /// Bootstraps `replicas[leader]` and adds the others through it.
    pub fn form(&self, replicas: &[Replica], leader: usize) -> Result<()> {
        let via = &replicas
            .get(leader)
            .ok_or_else(|| anyhow!("no replica {leader}"))?
            .api;
        self.bootstrap(via)?;
        for (_, r) in replicas.iter().enumerate().filter(|(i, _)| *i != leader) {
            self.add(via, r)?;
        }
        Ok(())
    }

    /// Polls the status of every replica at `apis` until `pred` holds for all of them
    /// together; returns the statuses (`null` for a replica that did not answer).
    pub fn wait_statuses(
        &self,
        apis: &[&str],
        within: Duration,
        what: &str,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>> {
        let mut last = Vec::new();
        wait::until_blocking(within, what, || {
            last = apis
                .iter()
                .map(|a| self.status(a).unwrap_or(Value::Null))
                .collect();
            pred(&last).then(|| last.clone())
        })
        .with_context(|| format!("last statuses: {last:#?}"))
    }

    /// Waits until every replica at `apis` follows `leader` with `apis.len()` voters.
    pub fn wait_formed(&self, apis: &[&str], leader: u64, within: Duration) -> Result<()> {
        let all = apis.len();
        self.wait_statuses(
            apis,
            within,
            "every replica to see the whole cluster",
            |s| {
                s.iter()
                    .all(|v| v["leader"] == leader && voters(v).len() == all)
            },
        )
        .map(|_| ())
    }
}

impl Default for Admin {
    fn default() -> Self {
        Admin::new()
    }
}

/// The voters' ids in a `status` output.
pub fn voters(status: &Value) -> Vec<u64> {
    status["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|m| m["voter"] == true)
                .filter_map(|m| m["id"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

/// Tries of a first start whose chosen port another process took first.
const PORT_ATTEMPTS: u32 = 3;

/// Whether a start failed because a chosen port was taken.
fn port_taken(e: &anyhow::Error) -> bool {
    format!("{e:#}").contains("Address already in use")
}
