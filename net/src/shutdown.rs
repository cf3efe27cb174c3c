//! A shutdown signal local to one thread (one shard): triggered once,
//! awaited by any number of tasks.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A signal that is triggered once and stays triggered. Clones share it.
///
/// `!Send`: it lives on the shard whose tasks wait on it. Each waiting task
/// holds a [`ShutdownListener`], which keeps its own waker slot, so
/// triggering wakes every listener once and re-polling a listener costs no
/// search.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Rc<Inner>,
}

#[derive(Default)]
struct Inner {
    triggered: Cell<bool>,
    slots: RefCell<Slots>,
}

#[derive(Default)]
struct Slots {
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Shutdown {
    /// A signal not yet triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Triggers the signal and wakes every listener; later calls do
    /// nothing.
    pub fn trigger(&self) {
        if self.inner.triggered.replace(true) {
            return;
        }
        let wakers: Vec<Waker> = self
            .inner
            .slots
            .borrow_mut()
            .wakers
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        // Woken outside the borrow: a waker may poll a listener at once.
        for waker in wakers {
            waker.wake();
        }
    }

    /// True once [`trigger`](Self::trigger) was called.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.get()
    }

    /// A future that completes once the signal is triggered (at once if it
    /// already is). It can be polled again after completing.
    pub fn listen(&self) -> ShutdownListener {
        let mut slots = self.inner.slots.borrow_mut();
        let slot = match slots.free.pop() {
            Some(slot) => slot,
            None => {
                slots.wakers.push(None);
                slots.wakers.len() - 1
            }
        };
        ShutdownListener {
            inner: self.inner.clone(),
            slot,
        }
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

/// Completes when its [`Shutdown`] is triggered.
pub struct ShutdownListener {
    inner: Rc<Inner>,
    slot: usize,
}

impl ShutdownListener {
    /// True once the signal is triggered.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.get()
    }
}

impl Future for ShutdownListener {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.triggered.get() {
            return Poll::Ready(());
        }
        let mut slots = self.inner.slots.borrow_mut();
        if let Some(entry) = slots.wakers.get_mut(self.slot) {
            match entry {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => *entry = Some(cx.waker().clone()),
            }
        }
        Poll::Pending
    }
}

impl Drop for ShutdownListener {
    fn drop(&mut self) {
        let mut slots = self.inner.slots.borrow_mut();
        if let Some(entry) = slots.wakers.get_mut(self.slot) {
            *entry = None;
            slots.free.push(self.slot);
        }
    }
}

impl fmt::Debug for ShutdownListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownListener")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn trigger_wakes_every_listener_once() {
        let shutdown = Shutdown::new();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut first = shutdown.listen();
        let mut second = shutdown.clone().listen();
        let dropped = shutdown.listen();
        assert!(Pin::new(&mut first).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut first).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut second).poll(&mut cx).is_pending());
        drop(dropped);
        shutdown.trigger();
        shutdown.trigger();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert!(Pin::new(&mut first).poll(&mut cx).is_ready());
        assert!(Pin::new(&mut second).poll(&mut cx).is_ready());
        assert!(Pin::new(&mut shutdown.listen()).poll(&mut cx).is_ready());
    }

    #[test]
    fn slots_are_reused() {
        let shutdown = Shutdown::new();
        for _ in 0..10 {
            drop(shutdown.listen());
        }
        let _a = shutdown.listen();
        let _b = shutdown.listen();
        assert_eq!(shutdown.inner.slots.borrow().wakers.len(), 2);
    }
}
