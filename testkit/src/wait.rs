//! Waiting on a condition with a deadline: the only way tests synchronise with processes.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// How long any single expected event may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// How long a process may take to print its address line, or a cluster to agree on something.
pub const STARTUP: Duration = Duration::from_secs(20);
/// Between two looks at a condition.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `f` until it returns `Some`, or fails after `within`.
pub async fn until<T, F, Fut>(within: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`until`] for blocking conditions, off any async runtime.
pub fn until_blocking<T>(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match f() {
            Some(v) => return Ok(v),
            None => std::thread::park_timeout(POLL),
        }
    }
    f().ok_or_else(|| anyhow::anyhow!("timed out after {within:?} waiting for {what}"))
}

/// [`until`] with the test deadline; a timeout fails the test.
#[allow(clippy::panic)]
pub async fn wait_for<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    until(DEADLINE, what, f)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}
