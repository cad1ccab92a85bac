//! Wakers that run a test's code inside the crate: [`runs_at_clone`] runs it when the
//! waker is cloned, which the crate does while it keeps a waker (DESIGN invariant 5: never
//! under one of its locks). tests/review_round16_slots.rs, tests/review_round17_wakers.rs.
//! [`wait_with_panicking_waker`] leaves a waker that panics when woken with a future that
//! waits for a cancellation (tests/review_round18.rs, tests/root_signals.rs).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, RawWaker, RawWakerVTable, Wake, Waker};

/// A waker's shared state: runs its code at its `at`th clone; its wakes do nothing.
pub struct RunsAtClone {
    at: usize,
    clones: AtomicUsize,
    code: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    ran: AtomicBool,
}

impl RunsAtClone {
    /// Whether the code has run (and returned).
    pub fn ran(&self) -> bool {
        self.ran.load(Ordering::SeqCst)
    }
}

static RUNS_AT_CLONE: RawWakerVTable =
    RawWakerVTable::new(rac_clone, rac_wake, rac_wake_by_ref, rac_drop);

unsafe fn rac_clone(data: *const ()) -> RawWaker {
    // SAFETY: `data` came from `Arc::into_raw` and the waker being cloned holds a count.
    let this = unsafe {
        Arc::increment_strong_count(data.cast::<RunsAtClone>());
        &*data.cast::<RunsAtClone>()
    };
    if this.clones.fetch_add(1, Ordering::SeqCst) + 1 == this.at {
        let code = this.code.lock().unwrap().take();
        if let Some(code) = code {
            code();
            this.ran.store(true, Ordering::SeqCst);
        }
    }
    RawWaker::new(data, &RUNS_AT_CLONE)
}

unsafe fn rac_wake(data: *const ()) {
    // SAFETY: the waker woken by value gives up its count.
    unsafe { rac_drop(data) }
}

unsafe fn rac_wake_by_ref(_: *const ()) {}

unsafe fn rac_drop(data: *const ()) {
    // SAFETY: every waker holds one count, given up here.
    drop(unsafe { Arc::from_raw(data.cast::<RunsAtClone>()) });
}

/// A waker that runs `code` at its `at`th clone (counting from 1), and its shared state.
pub fn runs_at_clone(at: usize, code: impl FnOnce() + Send + 'static) -> (Arc<RunsAtClone>, Waker) {
    let this = Arc::new(RunsAtClone {
        at,
        clones: AtomicUsize::new(0),
        code: Mutex::new(Some(Box::new(code))),
        ran: AtomicBool::new(false),
    });
    let data = Arc::into_raw(this.clone()).cast::<()>();
    // SAFETY: the vtable treats `data` as one count of an `Arc<RunsAtClone>`, as made here.
    let waker = unsafe { Waker::from_raw(RawWaker::new(data, &RUNS_AT_CLONE)) };
    (this, waker)
}

/// A waker whose wake panics.
struct PanicsOnWake;

impl Wake for PanicsOnWake {
    fn wake(self: Arc<Self>) {
        panic!("this waker panics when woken");
    }
}

/// Polls `wait` once with a waker that panics when woken, asserts that it is pending, and
/// returns it: keep it (unpolled) for as long as the waker must stay registered.
pub fn wait_with_panicking_waker<F: Future>(wait: F) -> Pin<Box<F>> {
    let mut wait = Box::pin(wait);
    let waker = Waker::from(Arc::new(PanicsOnWake));
    let polled = wait.as_mut().poll(&mut Context::from_waker(&waker));
    assert!(polled.is_pending(), "the wait is pending");
    wait
}
