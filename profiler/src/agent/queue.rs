//! A bounded queue that never blocks the producer: when it is full, the oldest item is
//! dropped and counted. The agent's sampling loop puts windows in; the push thread takes them
//! out, and leaves an item at the front while the server is down, so that the drops fall on
//! the oldest windows.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The queue.
#[derive(Debug)]
pub struct DropOldest<T> {
    state: Mutex<State<T>>,
    changed: Condvar,
    capacity: usize,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    dropped: u64,
    closed: bool,
}

impl<T: Clone> DropOldest<T> {
    /// A queue that holds at most `capacity` items (at least one).
    pub fn new(capacity: usize) -> DropOldest<T> {
        DropOldest {
            state: Mutex::new(State {
                items: VecDeque::new(),
                dropped: 0,
                closed: false,
            }),
            changed: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `item` at the back; returns whether the oldest item was dropped to make room.
    pub fn push(&self, item: T) -> bool {
        let mut state = self.lock();
        let dropped = state.items.len() >= self.capacity;
        if dropped {
            state.items.pop_front();
            state.dropped += 1;
        }
        state.items.push_back(item);
        drop(state);
        self.changed.notify_all();
        dropped
    }

    /// The oldest item, without removing it; waits up to `timeout` for one. `None` on
    /// timeout, or when the queue is closed and empty.
    pub fn front(&self, timeout: Duration) -> Option<T> {
        let state = self.lock();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| s.items.is_empty() && !s.closed)
            .unwrap_or_else(|p| p.into_inner());
        state.items.front().cloned()
    }

    /// Removes the oldest item if `is_it` says it is the one the caller handled (it may have
    /// been dropped meanwhile).
    pub fn remove_front_if(&self, is_it: impl FnOnce(&T) -> bool) {
        let mut state = self.lock();
        if state.items.front().is_some_and(is_it) {
            state.items.pop_front();
        }
    }

    /// Waits up to `timeout` for the queue to be closed; returns whether it is.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| !s.closed)
            .unwrap_or_else(|p| p.into_inner());
        state.closed
    }

    /// Marks the queue closed: no more items come; waiters wake.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Whether [`DropOldest::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full queue drops its oldest items, counts them, and keeps the newest in order.
    #[test]
    fn drops_oldest_when_full() {
        let queue = DropOldest::new(2);
        assert!(!queue.push(1));
        assert!(!queue.push(2));
        assert!(queue.push(3));
        assert!(queue.push(4));
        assert_eq!(queue.dropped(), 2);
        assert_eq!(queue.front(Duration::ZERO), Some(3));
        queue.remove_front_if(|&x| x == 3);
        assert_eq!(queue.front(Duration::ZERO), Some(4));
        // An item dropped meanwhile is not confused with the new front.
        queue.remove_front_if(|&x| x == 3);
        assert_eq!(queue.len(), 1);
    }

    /// Closing wakes a waiting consumer, which then sees what is left.
    #[test]
    fn close_wakes_consumers() {
        let queue = std::sync::Arc::new(DropOldest::<u32>::new(4));
        let consumer = {
            let queue = std::sync::Arc::clone(&queue);
            std::thread::spawn(move || queue.front(Duration::from_secs(60)))
        };
        queue.close();
        assert_eq!(consumer.join().unwrap(), None);
        assert!(queue.is_closed() && queue.wait_closed(Duration::ZERO));
    }
}
