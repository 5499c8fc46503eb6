//! The edge's allocator, and the one thing it is told to do beyond allocating: give the
//! memory it holds freed back to the system when a runtime thread goes idle.
//!
//! mimalloc returns the pages of freed memory to the system only after a short delay (10 ms),
//! and the delay is not a timer: it is checked when the thread that owns them next allocates
//! or frees a page. An edge's work comes in bursts (a storm of connections, thousands of idle
//! sockets parking and dropping their buffers at once) and then it is quiet: a thread that
//! goes idle right after a burst kept what it freed, and 15,000 parked connections cost 5.3 KiB
//! each in one run and 6.5 KiB in the next, depending on whether anything happened to allocate
//! afterwards (docs/BENCHMARKS.md, "Idle connections"). Giving pages back at once on every
//! free (mimalloc's `purge_delay` 0) fixes that but costs a connection storm about 13 % more
//! CPU per connection, refaulting pages that a burst frees and takes again; collecting when a
//! thread is about to sleep, at most once a second, costs neither (measured with the relay
//! and storm benchmarks). A collection does at once the work the allocator would otherwise
//! spread over later frees (one `madvise` per freed span): after a burst that freed a lot, the
//! first one takes milliseconds; with nothing to return, it visits the heap's pages and
//! takes microseconds.
//!
//! This is the workspace's only `unsafe` code, in its own crate so that every other crate
//! keeps `unsafe_code = "forbid"`.

use std::cell::Cell;
use std::time::{Duration, Instant};

pub use mimalloc::MiMalloc;

/// How often, at most, one thread collects: a busy runtime parks thousands of times a
/// second, and a collection visits every page of the thread's heap.
const AT_MOST_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static LAST_COLLECTED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// For a runtime's `on_thread_park`: the calling thread is about to sleep, so it gives back
/// the memory it freed (at most once per [`AT_MOST_EVERY`]). Returns whether it collected.
pub fn on_idle() -> bool {
    let now = Instant::now();
    let due = LAST_COLLECTED.with(|last| {
        let due = last
            .get()
            .is_none_or(|at| now.saturating_duration_since(at) >= AT_MOST_EVERY);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        collect();
    }
    due
}

/// Frees the calling thread's empty pages and returns the freed memory to the system. Forced:
/// an unforced collection returns only the pages it empties itself, not those emptied
/// earlier whose delay is still counting, which is the memory a quiet thread holds.
#[allow(unsafe_code)]
fn collect() {
    // SAFETY: `mi_collect` takes no pointers; it works on the calling thread's own heap and
    // on the allocator's shared structures under the allocator's own synchronisation, and
    // mimalloc documents it as callable at any time from any thread.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_collects_at_most_once_a_second() {
        // A fresh thread: its first idle moment collects, the ones right after it do not.
        let first = std::thread::spawn(|| [on_idle(), on_idle(), on_idle()]);
        assert_eq!(first.join().unwrap(), [true, false, false]);
        // Each thread keeps its own time: another thread's collection does not hold this one's.
        assert!(std::thread::spawn(on_idle).join().unwrap());
    }
}
