//! The bounded queue behind one session's outbox: many senders (the sessions and routers that
//! deliver to it), one receiver (the session's task).
//!
//! Not a `tokio::sync::mpsc` channel: that one allocates its first block of 32 slots when it
//! is created, about 1.6 KiB for every connected client even when nothing is ever queued for
//! it. Here the slots are allocated on the first frame and given back once the session has
//! been idle for a while ([`Receiver::release_idle`]), so an idle socket holds no slot at all.
//! On the hot path a send is one uncontended lock and a wake-up.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use futures_util::task::AtomicWaker;

/// What [`Sender::try_send`] could not queue, given back.
#[derive(Debug)]
pub enum TrySendError<T> {
    /// The queue holds its capacity already.
    Full(T),
    /// The receiver has closed the queue (the session ended).
    Closed(T),
}

/// Nothing is queued right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Empty;

struct Shared<T> {
    state: Mutex<State<T>>,
    /// How many items are queued, written under the lock: the receiver reads it without
    /// the lock, so that looking into an empty queue (every time its session waits) locks
    /// nothing.
    queued: AtomicUsize,
    /// The receiver's task, woken by each send.
    waker: AtomicWaker,
    capacity: usize,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A sender or receiver that panicked while holding the lock left the queue itself
        // consistent (every operation is a single push, pop or flag): keep serving it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A queue of at most `capacity` items (at least one).
pub fn queue<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            closed: false,
        }),
        queued: AtomicUsize::new(0),
        waker: AtomicWaker::new(),
        capacity: capacity.max(1),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver {
            shared,
            closed: false,
        },
    )
}

/// The sending side; clones send into the same queue.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

impl<T> Sender<T> {
    /// Queues `item` unless the queue is full or closed; never waits.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(TrySendError::Closed(item));
            }
            if state.items.len() >= self.shared.capacity {
                return Err(TrySendError::Full(item));
            }
            state.items.push_back(item);
            self.shared
                .queued
                .store(state.items.len(), Ordering::Release);
        }
        self.shared.waker.wake();
        Ok(())
    }

    /// Whether both senders feed the same queue.
    pub fn same_channel(&self, other: &Sender<T>) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// The receiving side, owned by one task. Dropping it closes the queue.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// Only the receiver closes the queue: it knows without the lock.
    closed: bool,
}

impl<T> Receiver<T> {
    /// The next item; `None` once the queue is closed and empty.
    pub fn recv(&mut self) -> impl Future<Output = Option<T>> + '_ {
        std::future::poll_fn(move |cx| {
            if let Some(item) = self.pop_or_closed() {
                return Poll::Ready(item);
            }
            self.shared.waker.register(cx.waker());
            // Sent between the look and the registration: its wake-up may have been missed.
            match self.pop_or_closed() {
                Some(item) => Poll::Ready(item),
                None => Poll::Pending,
            }
        })
    }

    /// `Some(Some(item))`, `Some(None)` when closed and empty, `None` when merely empty.
    fn pop_or_closed(&self) -> Option<Option<T>> {
        match self.pop() {
            Some(item) => Some(Some(item)),
            None if self.closed => Some(None),
            None => None,
        }
    }

    fn pop(&self) -> Option<T> {
        // Seen empty: a send under way wakes the receiver after it (see `recv`).
        if self.shared.queued.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut state = self.shared.lock();
        let item = state.items.pop_front();
        self.shared
            .queued
            .store(state.items.len(), Ordering::Release);
        item
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Result<T, Empty> {
        self.pop().ok_or(Empty)
    }

    /// Refuses further sends; what is queued can still be received.
    pub fn close(&mut self) {
        self.closed = true;
        self.shared.lock().closed = true;
    }

    /// Gives the slots back when nothing is queued: called when the session has been quiet
    /// for a while, so that a burst long past does not keep its slots for the socket's life.
    pub fn release_idle(&mut self) {
        let mut state = self.shared.lock();
        if state.items.is_empty() && state.items.capacity() > 0 {
            state.items = VecDeque::new();
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_beyond_capacity_and_after_close() {
        let (tx, mut rx) = queue(2);
        assert!(tx.try_send(1).is_ok());
        assert!(tx.try_send(2).is_ok());
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(rx.try_recv(), Ok(1));
        assert!(tx.try_send(4).is_ok());
        rx.close();
        assert!(matches!(tx.try_send(5), Err(TrySendError::Closed(5))));
        // What was queued before the close is still delivered, in order.
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Ok(4));
        assert_eq!(rx.try_recv(), Err(Empty));
    }

    #[test]
    fn dropping_the_receiver_closes_the_queue() {
        let (tx, rx) = queue(4);
        drop(rx);
        assert!(matches!(tx.try_send(1), Err(TrySendError::Closed(1))));
    }

    #[test]
    fn slots_are_allocated_on_first_use_and_released_when_idle() {
        let (tx, mut rx) = queue::<u64>(8);
        assert_eq!(rx.shared.lock().items.capacity(), 0);
        tx.try_send(1).unwrap();
        assert!(rx.shared.lock().items.capacity() > 0);
        // Not released while something is queued.
        rx.release_idle();
        assert_eq!(rx.try_recv(), Ok(1));
        rx.release_idle();
        assert_eq!(rx.shared.lock().items.capacity(), 0);
    }

    #[test]
    fn same_channel_tells_queues_apart() {
        let (a, _ra) = queue::<u8>(1);
        let (b, _rb) = queue::<u8>(1);
        assert!(a.same_channel(&a.clone()));
        assert!(!a.same_channel(&b));
    }

    #[tokio::test]
    async fn recv_wakes_on_a_send_from_another_task() {
        let (tx, mut rx) = queue(4);
        let sender = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.try_send(7u32).unwrap();
            tx
        });
        assert_eq!(rx.recv().await, Some(7));
        drop(sender.await.unwrap());
        rx.close();
        assert_eq!(rx.recv().await, None);
    }
}
