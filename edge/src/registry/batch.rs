//! Registry calls on many items: the calls that many sessions make at the same moment go to
//! the replica as one call.
//!
//! When an edge dies, its clients resume on the others within a second, and each resume
//! reads its rooms and rebinds its peer. One call per resume (and one Raft entry per rebind)
//! was most of the region's CPU in that storm (docs/BENCHMARKS.md, failover). Here a worker
//! takes the first item queued, waits for a place among the calls in flight, and sends it
//! together with whatever else queued meanwhile: a lone call goes out at once, and under
//! load the batches grow by themselves (group commit), without a timer.

use std::future::Future;
use std::sync::Arc;

use heliograph_coordinator::CoordinatorError;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type Answer<O> = oneshot::Sender<Result<O, CoordinatorError>>;

/// How a batcher sends: the most items per call, calls in flight at once, items queued
/// before callers wait for room.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_items: usize,
    pub in_flight: usize,
    pub queue: usize,
}

/// Where sessions hand their items in; answered one by one.
pub struct Batcher<I, O> {
    tx: mpsc::Sender<(I, Answer<O>)>,
}

/// The worker's end, run by [`Queue::run`].
pub struct Queue<I, O> {
    rx: mpsc::Receiver<(I, Answer<O>)>,
    limits: Limits,
}

pub fn batcher<I, O>(limits: Limits) -> (Batcher<I, O>, Queue<I, O>) {
    let (tx, rx) = mpsc::channel(limits.queue.max(1));
    (Batcher { tx }, Queue { rx, limits })
}

impl<I, O> Batcher<I, O> {
    /// Queues `item` and waits for its answer.
    pub async fn call(&self, item: I) -> Result<O, CoordinatorError> {
        let (answer, answered) = oneshot::channel();
        self.tx
            .send((item, answer))
            .await
            .map_err(|_| CoordinatorError::ShuttingDown)?;
        answered.await.map_err(|_| CoordinatorError::ShuttingDown)?
    }
}

impl<I: Send + 'static, O: Send + 'static> Queue<I, O> {
    /// Sends the queued items with `call` (which answers one output per item, in order) until
    /// `stop`. Items still queued then are answered `ShuttingDown`.
    pub async fn run<F, Fut>(mut self, stop: CancellationToken, tasks: TaskTracker, call: F)
    where
        F: Fn(Vec<I>) -> Fut,
        Fut: Future<Output = Result<Vec<O>, CoordinatorError>> + Send + 'static,
    {
        let places = Arc::new(Semaphore::new(self.limits.in_flight.max(1)));
        loop {
            let first = tokio::select! {
                () = stop.cancelled() => return,
                first = self.rx.recv() => match first {
                    Some(first) => first,
                    None => return,
                },
            };
            // The place first: what queues while every call is in flight joins this batch.
            let place = tokio::select! {
                () = stop.cancelled() => return,
                place = Arc::clone(&places).acquire_owned() => match place {
                    Ok(place) => place,
                    Err(_) => return,
                },
            };
            let mut items = Vec::with_capacity(self.limits.max_items.min(64));
            let mut answers = Vec::with_capacity(items.capacity());
            let (item, answer) = first;
            items.push(item);
            answers.push(answer);
            while items.len() < self.limits.max_items {
                let Ok((item, answer)) = self.rx.try_recv() else {
                    break;
                };
                items.push(item);
                answers.push(answer);
            }
            let sent = call(items);
            tasks.spawn(async move {
                let _place = place;
                deliver(sent.await, answers);
            });
        }
    }
}

/// Hands each caller its output, or the call's failure.
fn deliver<O>(result: Result<Vec<O>, CoordinatorError>, answers: Vec<Answer<O>>) {
    match result {
        Ok(outputs) if outputs.len() == answers.len() => {
            for (answer, output) in answers.into_iter().zip(outputs) {
                let _ = answer.send(Ok(output));
            }
        }
        Ok(outputs) => {
            let why = format!(
                "the registry answered {} items for {}",
                outputs.len(),
                answers.len()
            );
            for answer in answers {
                let _ = answer.send(Err(CoordinatorError::Unavailable(why.clone())));
            }
        }
        Err(e) => {
            let why = e.to_string();
            for answer in answers {
                let _ = answer.send(Err(CoordinatorError::Unavailable(why.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    const LIMITS: Limits = Limits {
        max_items: 4,
        in_flight: 1,
        queue: 64,
    };

    type Calls = Arc<Mutex<Vec<Vec<u32>>>>;

    /// A worker whose calls are recorded, double each item, and wait for `release` to be
    /// raised: the next batch forms while one is in flight.
    fn start(
        release: Arc<tokio::sync::Notify>,
        fail: bool,
    ) -> (Batcher<u32, u32>, Calls, CancellationToken) {
        let (batcher, queue) = batcher(LIMITS);
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let seen = Arc::clone(&calls);
        tokio::spawn(
            queue.run(stop.clone(), TaskTracker::new(), move |items: Vec<u32>| {
                seen.lock().unwrap().push(items.clone());
                let release = Arc::clone(&release);
                async move {
                    release.notified().await;
                    if fail {
                        Err(CoordinatorError::Unavailable("down".into()))
                    } else {
                        Ok(items.iter().map(|i| i * 2).collect())
                    }
                }
            }),
        );
        (batcher, calls, stop)
    }

    async fn until(what: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while !what() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("condition not met before the deadline");
    }

    #[tokio::test]
    async fn items_queued_during_a_call_go_together_and_each_gets_its_own_answer() {
        let release = Arc::new(tokio::sync::Notify::new());
        let (batcher, calls, stop) = start(Arc::clone(&release), false);
        let batcher = Arc::new(batcher);
        let first = tokio::spawn({
            let b = Arc::clone(&batcher);
            async move { b.call(1).await.unwrap() }
        });
        until(|| calls.lock().unwrap().len() == 1).await;
        // Six more while the first call is in flight: the next two calls carry 4 and 2.
        let rest: Vec<_> = (2..=7)
            .map(|i| {
                let b = Arc::clone(&batcher);
                tokio::spawn(async move { (i, b.call(i).await.unwrap()) })
            })
            .collect();
        // (One runtime thread: the six send before the worker runs again; it then takes the
        // first of them and waits for the place the first call holds.)
        until(|| batcher.tx.capacity() == LIMITS.queue - 5).await;
        release.notify_one();
        assert_eq!(first.await.unwrap(), 2);
        until(|| calls.lock().unwrap().len() == 2).await;
        release.notify_one();
        until(|| calls.lock().unwrap().len() == 3).await;
        release.notify_one();
        for r in rest {
            let (i, doubled) = r.await.unwrap();
            assert_eq!(doubled, i * 2);
        }
        assert_eq!(
            *calls.lock().unwrap(),
            vec![vec![1], vec![2, 3, 4, 5], vec![6, 7]]
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn a_failed_call_fails_every_item_in_it() {
        let release = Arc::new(tokio::sync::Notify::new());
        let (batcher, _calls, stop) = start(Arc::clone(&release), true);
        let call = tokio::spawn(async move { batcher.call(1).await });
        release.notify_one();
        let err = call.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("down"), "{err}");
        stop.cancel();
    }

    #[tokio::test]
    async fn after_stop_calls_fail_instead_of_waiting() {
        let (batcher, queue) = batcher::<u32, u32>(LIMITS);
        let stop = CancellationToken::new();
        stop.cancel();
        queue
            .run(stop, TaskTracker::new(), |items: Vec<u32>| async move {
                Ok(items)
            })
            .await;
        assert!(matches!(
            batcher.call(1).await,
            Err(CoordinatorError::ShuttingDown)
        ));
    }
}
