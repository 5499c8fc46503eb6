//! Long CPU-bound work (encoding and writing a snapshot) on a thread of its own, at the
//! lowest CPU priority, so that it takes what the replica's runtime leaves: at a million
//! members an encode is seconds of CPU, and on a runtime worker (or at the runtime's
//! priority) it delays the joins applied and answered meanwhile.

use tokio::sync::oneshot;

/// The thread could not be started, or ended without an answer.
#[derive(Debug, thiserror::Error)]
pub enum BackgroundError {
    #[error("starting the {0} thread: {1}")]
    Spawn(&'static str, #[source] std::io::Error),
    #[error("the {0} thread ended without an answer")]
    Lost(&'static str),
}

/// Runs `work` on a new thread named `name` at the lowest CPU priority and waits for its
/// result without blocking the runtime.
pub async fn run<T, F>(name: &'static str, work: F) -> Result<T, BackgroundError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_priority(name);
            // The receiver is gone only if the build was abandoned; nothing to tell.
            let _ = tx.send(work());
        })
        .map_err(|e| BackgroundError::Spawn(name, e))?;
    rx.await.map_err(|_| BackgroundError::Lost(name))
}

/// Gives the calling thread the lowest priority (nice 19). On Linux the nice value is a
/// thread's own, so the rest of the process keeps its priority. A failure only costs the
/// priority: the work still runs.
fn lower_priority(name: &str) {
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), LOWEST_PRIORITY)
    {
        tracing::debug!(thread = name, error = %e, "could not lower the thread's priority");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = name;
}

/// The highest nice value: the least CPU when others want it.
#[cfg(target_os = "linux")]
const LOWEST_PRIORITY: i32 = 19;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_the_work_off_the_runtime_and_returns_its_result() {
        let runtime_thread = std::thread::current().id();
        let (value, thread) = run("test-build", move || (41 + 1, std::thread::current().id()))
            .await
            .unwrap();
        assert_eq!(value, 42);
        assert_ne!(thread, runtime_thread);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_thread_runs_at_the_lowest_priority_and_the_caller_keeps_its_own() {
        let before = rustix::process::getpriority_process(None).unwrap();
        let inside = run("test-build", || {
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
        })
        .await
        .unwrap();
        assert_eq!(inside, LOWEST_PRIORITY);
        let after = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        assert_eq!(after, before);
    }
}
