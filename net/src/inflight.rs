//! Requests in flight on one connection, by correlation id, for the side
//! that sends requests (the SDK, the inter-broker transport).
//!
//! [`InFlight`] knows no runtime: it is a map with a bound and a list of
//! wakers. Wrap it as the runtime wants (`RefCell` on a glommio shard,
//! `Mutex` in tokio), and wait for room with
//! `std::future::poll_fn(|cx| in_flight.poll_ready(cx))`.

use std::collections::HashMap;
use std::task::{Context, Poll, Waker};

/// Why [`InFlight::try_insert`] refused a request; the value comes back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InsertError<T> {
    /// `in_flight_max` requests are in flight already.
    #[error("too many requests in flight")]
    Full(T),
    /// A request with this correlation id is in flight already.
    #[error("correlation id already in flight")]
    Duplicate(T),
    /// Correlation id 0 is reserved: the broker answers with it when it
    /// could not read a request's header.
    #[error("correlation id 0 is reserved")]
    Reserved(T),
    /// The connection is closed ([`InFlight::close`]).
    #[error("connection closed")]
    Closed(T),
}

impl<T> InsertError<T> {
    /// The value that was not inserted.
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(value)
            | Self::Duplicate(value)
            | Self::Reserved(value)
            | Self::Closed(value) => value,
        }
    }
}

/// The connection is closed; nothing more can be sent on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection closed")]
pub struct Closed;

/// Requests sent on one connection and not yet answered, each with the
/// caller's `T` (typically where to deliver the response), at most
/// `in_flight_max` of them.
///
/// * Sending: [`poll_ready`](Self::poll_ready) waits for room,
///   [`try_insert`](Self::try_insert) or
///   [`try_insert_next`](Self::try_insert_next) records the request.
/// * Receiving: [`complete`](Self::complete) takes the request a response
///   answers, by its correlation id, in whatever order responses come.
/// * Connection lost: [`close`](Self::close) hands back every pending
///   request to fail, and refuses new ones.
///
/// Correlation id 0 is never used for a request: the broker answers with
/// it a frame whose header it could not read, which then matches no
/// request; treat such a response as an error of the connection.
#[derive(Debug)]
pub struct InFlight<T> {
    pending: HashMap<u64, T>,
    in_flight_max: usize,
    next_id: u64,
    closed: bool,
    /// Tasks waiting for room or for the close.
    waiters: Vec<Waker>,
}

impl<T> InFlight<T> {
    /// An empty, open table allowing `in_flight_max` requests in flight (at
    /// least 1).
    pub fn new(in_flight_max: usize) -> Self {
        Self {
            pending: HashMap::new(),
            in_flight_max: in_flight_max.max(1),
            next_id: 1,
            closed: false,
            waiters: Vec::new(),
        }
    }

    /// Most requests in flight at once.
    pub fn in_flight_max(&self) -> usize {
        self.in_flight_max
    }

    /// Requests in flight.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when no request is in flight.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// True when another request must wait for a response first.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.in_flight_max
    }

    /// True once [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// True if a request with this correlation id is in flight.
    pub fn contains(&self, correlation_id: u64) -> bool {
        self.pending.contains_key(&correlation_id)
    }

    /// Records a request sent with `correlation_id`. Refused when full, when
    /// the id is in flight already or is 0, or once closed.
    pub fn try_insert(&mut self, correlation_id: u64, value: T) -> Result<(), InsertError<T>> {
        if self.closed {
            return Err(InsertError::Closed(value));
        }
        if correlation_id == 0 {
            return Err(InsertError::Reserved(value));
        }
        if self.is_full() {
            return Err(InsertError::Full(value));
        }
        if self.pending.contains_key(&correlation_id) {
            return Err(InsertError::Duplicate(value));
        }
        self.pending.insert(correlation_id, value);
        Ok(())
    }

    /// Records a request under a fresh correlation id and returns the id:
    /// ids count up from 1, wrap around, and skip 0 and ids in flight.
    /// Refused when full or closed.
    pub fn try_insert_next(&mut self, value: T) -> Result<u64, InsertError<T>> {
        if self.closed {
            return Err(InsertError::Closed(value));
        }
        if self.is_full() {
            return Err(InsertError::Full(value));
        }
        // Fewer than in_flight_max ids are taken, so this ends within
        // in_flight_max + 1 steps.
        let mut id = self.next_id;
        while id == 0 || self.pending.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_id = id.wrapping_add(1);
        self.pending.insert(id, value);
        Ok(id)
    }

    /// `Ready(Ok(()))` when a request can be inserted now (the next insert
    /// by this caller, with no await in between, is not refused as full),
    /// `Ready(Err(Closed))` once closed; otherwise `Pending`, and the task
    /// is woken when a request completes or the table closes.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        if self.closed {
            return Poll::Ready(Err(Closed));
        }
        if !self.is_full() {
            return Poll::Ready(Ok(()));
        }
        if !self.waiters.iter().any(|waker| waker.will_wake(cx.waker())) {
            self.waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Takes the request a response with `correlation_id` answers; `None`
    /// if none is in flight with that id (a late or duplicate response, or
    /// id 0).
    pub fn complete(&mut self, correlation_id: u64) -> Option<T> {
        let value = self.pending.remove(&correlation_id)?;
        self.wake_waiters();
        Some(value)
    }

    /// Closes the table on connection loss: returns every request still in
    /// flight, by correlation id in increasing order, for the caller to
    /// fail; later inserts are refused and waiters get [`Closed`].
    pub fn close(&mut self) -> Vec<(u64, T)> {
        self.closed = true;
        self.wake_waiters();
        let mut failed: Vec<(u64, T)> = self.pending.drain().collect();
        failed.sort_unstable_by_key(|&(id, _)| id);
        failed
    }

    fn wake_waiters(&mut self) {
        // Every waiter checks again; one that lost the race waits again.
        for waker in self.waiters.drain(..) {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker::default());
        (counter.clone(), Waker::from(counter))
    }

    #[test]
    fn responses_match_requests_in_any_order() {
        let mut in_flight = InFlight::new(8);
        for id in 1..=5 {
            in_flight.try_insert(id, format!("request {id}")).unwrap();
        }
        assert_eq!(in_flight.len(), 5);
        for id in [4, 1, 5, 3, 2] {
            assert_eq!(in_flight.complete(id), Some(format!("request {id}")));
        }
        assert!(in_flight.is_empty());
        assert_eq!(in_flight.complete(3), None, "answered twice");
        assert_eq!(in_flight.complete(0), None, "unreadable request");
    }

    #[test]
    fn inserts_are_refused_when_full_duplicate_reserved_or_closed() {
        let mut in_flight = InFlight::new(2);
        in_flight.try_insert(1, 'a').unwrap();
        assert_eq!(
            in_flight.try_insert(1, 'b'),
            Err(InsertError::Duplicate('b'))
        );
        assert_eq!(
            in_flight.try_insert(0, 'c'),
            Err(InsertError::Reserved('c'))
        );
        in_flight.try_insert(2, 'd').unwrap();
        assert!(in_flight.is_full());
        assert_eq!(in_flight.try_insert(3, 'e'), Err(InsertError::Full('e')));
        assert_eq!(in_flight.try_insert_next('f'), Err(InsertError::Full('f')));
        assert_eq!(in_flight.complete(1), Some('a'));
        in_flight.try_insert(3, 'g').unwrap();
        assert_eq!(in_flight.close(), vec![(2, 'd'), (3, 'g')]);
        assert_eq!(in_flight.try_insert(4, 'h'), Err(InsertError::Closed('h')));
        assert_eq!(
            in_flight.try_insert_next('i').unwrap_err().into_inner(),
            'i'
        );
        assert!(in_flight.is_empty());
    }

    #[test]
    fn zero_bound_means_one() {
        let mut in_flight = InFlight::new(0);
        assert_eq!(in_flight.in_flight_max(), 1);
        in_flight.try_insert(9, ()).unwrap();
        assert!(in_flight.is_full());
    }

    #[test]
    fn fresh_ids_skip_zero_and_ids_in_flight() {
        let mut in_flight = InFlight::new(4);
        assert_eq!(in_flight.try_insert_next(()), Ok(1));
        in_flight.try_insert(2, ()).unwrap();
        assert_eq!(in_flight.try_insert_next(()), Ok(3));
        in_flight.next_id = u64::MAX;
        assert_eq!(in_flight.try_insert_next(()), Ok(u64::MAX));
        // Wraps past 0 and the ids 1 and 2 still in flight.
        in_flight.complete(3);
        assert_eq!(in_flight.try_insert_next(()), Ok(3));
    }

    #[test]
    fn waiter_for_room_is_woken_by_a_completion() {
        let mut in_flight = InFlight::new(1);
        let (count, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(in_flight.poll_ready(&mut cx), Poll::Ready(Ok(())));
        in_flight.try_insert(1, ()).unwrap();
        assert_eq!(in_flight.poll_ready(&mut cx), Poll::Pending);
        assert_eq!(in_flight.poll_ready(&mut cx), Poll::Pending);
        assert_eq!(in_flight.waiters.len(), 1, "the same task registers once");
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        in_flight.complete(1);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(in_flight.poll_ready(&mut cx), Poll::Ready(Ok(())));
    }

    #[test]
    fn close_fails_everything_and_wakes_waiters() {
        let mut in_flight = InFlight::new(2);
        let (count, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        in_flight.try_insert_next("x").unwrap();
        in_flight.try_insert_next("y").unwrap();
        assert_eq!(in_flight.poll_ready(&mut cx), Poll::Pending);
        assert_eq!(in_flight.close(), vec![(1, "x"), (2, "y")]);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(in_flight.is_closed());
        assert_eq!(in_flight.poll_ready(&mut cx), Poll::Ready(Err(Closed)));
        assert_eq!(in_flight.complete(1), None);
    }
}
