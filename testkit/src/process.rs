//! A child process killed (SIGKILL) when its guard drops. Servers print one JSON line with
//! their bound addresses on stdout; the guard keeps that line and drains the rest, so that a
//! child never blocks on a full pipe.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::wait::POLL;

/// What the options of every server share: which binary, where its stderr goes, more flags.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// The binary; the workspace's own when `None`.
    pub bin: Option<PathBuf>,
    /// Where stderr goes (appended; inherited without one).
    pub log: Option<PathBuf>,
    /// More flags, after the ones the options set.
    pub args: Vec<String>,
    /// Environment variables set for the process (besides the ones the options set).
    pub env: Vec<(String, String)>,
}

impl Launch {
    /// A command running `bin` (or the workspace binary `default`) with `env` set.
    pub fn command(&self, default: &str) -> Result<Command> {
        let mut cmd = Command::new(match &self.bin {
            Some(b) => b.clone(),
            None => crate::bin::path(default)?,
        });
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        Ok(cmd)
    }
}

/// Builder methods for options that carry a [`Launch`].
pub trait Launchable: Sized {
    fn launch(&mut self) -> &mut Launch;

    fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        let launch = self.launch();
        launch
            .args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    fn env(mut self, key: &str, value: &str) -> Self {
        self.launch().env.push((key.to_owned(), value.to_owned()));
        self
    }

    fn log(mut self, path: &Path) -> Self {
        self.launch().log = Some(path.to_owned());
        self
    }

    fn bin(mut self, path: &Path) -> Self {
        self.launch().bin = Some(path.to_owned());
        self
    }
}

/// A running child; killed when dropped.
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: Option<PathBuf>,
    first_line: Option<mpsc::Receiver<String>>,
}

impl Proc {
    /// Starts `cmd` with stdout captured and stderr appended to `log` (inherited without one).
    pub fn spawn(mut cmd: Command, name: &str, log: Option<&Path>) -> Result<Proc> {
        let stderr = match log {
            Some(path) => Stdio::from(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?,
            ),
            None => Stdio::inherit(),
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        // Ends with the child's stdout, so the thread never outlives the child.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        Ok(Proc {
            name: name.to_owned(),
            child: Some(child),
            log: log.map(Path::to_owned),
            first_line: Some(rx),
        })
    }

    /// The first line the child printed, waiting at most `within` (once per child).
    pub fn first_line(&mut self, within: Duration) -> Result<String> {
        let rx = self
            .first_line
            .take()
            .ok_or_else(|| anyhow!("{}: first line already read", self.name))?;
        match rx.recv_timeout(within) {
            Ok(line) if !line.trim().is_empty() => Ok(line),
            _ => {
                self.kill();
                bail!(
                    "{} printed no address line within {within:?}; log:\n{}",
                    self.name,
                    self.log()
                )
            }
        }
    }

    /// The first line as JSON: the addresses a server bound.
    pub fn address_line(&mut self, within: Duration) -> Result<Value> {
        let line = self.first_line(within)?;
        serde_json::from_str(line.trim())
            .with_context(|| format!("{}: bad address line {line:?}", self.name))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the child has not been killed or reaped yet.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends `sig` (a name such as `TERM`, `STOP`, `CONT`) with kill(1).
    pub fn signal(&self, sig: &str) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        let status = Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -{sig} {pid} ({}) failed", self.name);
        }
        Ok(())
    }

    /// kill -9, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits (bounded) for the child to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            std::thread::park_timeout(POLL);
        }
        bail!("{} did not exit within {within:?}", self.name)
    }

    /// SIGTERM, then a bounded wait for the exit; SIGKILL when it does not come.
    pub fn terminate(&mut self, within: Duration) -> Result<ExitStatus> {
        if self.child.is_none() {
            bail!("{} is not running", self.name);
        }
        self.signal("TERM")?;
        let status = self.wait_exit(within);
        if status.is_err() {
            self.kill();
        }
        status.with_context(|| format!("{} did not stop on SIGTERM", self.name))
    }

    /// What the child wrote to its log so far.
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `cmd` to its end, at most `within` (then kills it, and the error carries the end of
/// what it wrote to stderr by then), and returns its status and both outputs.
pub fn run(mut cmd: Command, within: Duration) -> Result<Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting a command")?;
    // Read as it comes, so that a command killed at the deadline still shows what it said
    // (a grandchild may hold the pipe open after it, so the readers are not waited for then).
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        let read = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&read);
        let done = std::thread::spawn(move || {
            if let Some(mut p) = pipe {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = p.read(&mut chunk) {
                    into.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend_from_slice(&chunk[..n]);
                }
            }
        });
        (read, done)
    };
    let (stdout, stdout_done) = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let (stderr, stderr_done) = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let taken = |b: &Arc<Mutex<Vec<u8>>>| {
        std::mem::take(&mut *b.lock().unwrap_or_else(PoisonError::into_inner))
    };
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let said = taken(&stderr);
            let tail = String::from_utf8_lossy(&said[said.len().saturating_sub(4_000)..]);
            bail!("{cmd:?} did not finish within {within:?}; the end of its stderr:\n{tail}");
        }
        std::thread::park_timeout(POLL);
    };
    let _ = stdout_done.join();
    let _ = stderr_done.join();
    Ok(Output {
        status,
        stdout: taken(&stdout),
        stderr: taken(&stderr),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_its_deadline_is_killed_and_its_stderr_shown() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo stuck-in-phase-two >&2; exec sleep 30"]);
        let started = Instant::now();
        let err = run(cmd, Duration::from_secs(2)).unwrap_err().to_string();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not killed in time"
        );
        assert!(err.contains("did not finish"), "{err}");
        assert!(err.contains("stuck-in-phase-two"), "{err}");
    }

    #[test]
    fn a_command_that_ends_gives_both_outputs_whole() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "seq 1 20000; echo err >&2"]);
        let out = run(cmd, Duration::from_secs(30)).unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 20_000);
        assert_eq!(out.stderr, b"err\n");
    }
}
