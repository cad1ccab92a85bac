//! Keeping a waker behind a lock the way DESIGN.md's invariant 5 asks: the waker to keep is
//! cloned before the lock is taken, and the waker it replaces is dropped after the lock is
//! released. A waker's clone and drop may run arbitrary code (its executor's, or a user's
//! that drops another handle waiting on the same lock), so neither may run under the lock.

use std::task::{Poll, Waker};

use crate::sync::{Mutex, lock};

/// Polls the state behind `mutex` for something to wait for, keeping `waker` if it must wait.
///
/// `ready` runs under the lock. `Some(value)` ends the wait: the lock is released and
/// `Ready(value)` returned (a value that holds a waker, such as one taken out of the state,
/// is dropped by the caller, after the lock). `None` means wait: `waker` is kept in the slot
/// that `slot` picks, unless the waker there already wakes the same task, and `Pending` is
/// returned.
///
/// A clone is made only when the slot's waker is missing or different, and then outside the
/// lock: the lock is released, the waker cloned and everything looked at again, so `ready`
/// may run twice in one call and must change the state only when it returns `Some`.
pub(crate) fn poll_or_keep<S, R>(
    mutex: &Mutex<S>,
    waker: &Waker,
    mut ready: impl FnMut(&mut S) -> Option<R>,
    slot: impl Fn(&mut S) -> &mut Option<Waker>,
) -> Poll<R> {
    let mut spare: Option<Waker> = None;
    loop {
        let mut state = lock(mutex);
        if let Some(value) = ready(&mut state) {
            drop(state);
            drop(spare);
            return Poll::Ready(value);
        }
        let kept = slot(&mut state);
        let stale = if kept.as_ref().is_some_and(|kept| kept.will_wake(waker)) {
            spare.take()
        } else if let Some(new) = spare.take() {
            kept.replace(new)
        } else {
            drop(state);
            spare = Some(waker.clone());
            continue;
        };
        drop(state);
        drop(stale);
        return Poll::Pending;
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{RawWaker, RawWakerVTable};

    #[derive(Default)]
    struct State {
        done: bool,
        waker: Option<Waker>,
    }

    /// A waker's owner: counts the waker's clones and drops and checks at each that the lock
    /// it is kept behind is free (what invariant 5 promises); its clone may make the state
    /// ready, as another thread could while the lock is released for the clone.
    struct Probe {
        lock: Arc<Mutex<State>>,
        ready_on_clone: bool,
        clones: AtomicUsize,
        drops: AtomicUsize,
    }

    impl Probe {
        fn new(lock: &Arc<Mutex<State>>, ready_on_clone: bool) -> Arc<Probe> {
            Arc::new(Probe {
                lock: Arc::clone(lock),
                ready_on_clone,
                clones: AtomicUsize::new(0),
                drops: AtomicUsize::new(0),
            })
        }

        fn assert_unlocked(&self) {
            assert!(
                self.lock.try_lock().is_ok(),
                "a waker's code ran under the lock"
            );
        }

        fn waker(self: &Arc<Self>) -> Waker {
            unsafe fn clone(data: *const ()) -> RawWaker {
                // SAFETY: `data` came from `Arc::into_raw` in `Probe::waker` or here, and the
                // waker it belongs to is alive, so the count is at least one.
                let probe = unsafe {
                    Arc::increment_strong_count(data.cast::<Probe>());
                    &*data.cast::<Probe>()
                };
                probe.clones.fetch_add(1, Ordering::SeqCst);
                probe.assert_unlocked();
                if probe.ready_on_clone {
                    probe.lock.try_lock().unwrap().done = true;
                }
                RawWaker::new(data, &VTABLE)
            }
            unsafe fn noop(_: *const ()) {}
            unsafe fn drop(data: *const ()) {
                // SAFETY: each waker owns one count, taken by `Arc::into_raw` or `clone`.
                let probe = unsafe { Arc::from_raw(data.cast::<Probe>()) };
                probe.drops.fetch_add(1, Ordering::SeqCst);
                probe.assert_unlocked();
            }
            static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, noop, noop, drop);
            let data = Arc::into_raw(Arc::clone(self)).cast::<()>();
            // SAFETY: the vtable's functions keep `Arc`'s counting contract (above).
            unsafe { Waker::from_raw(RawWaker::new(data, &VTABLE)) }
        }

        fn clones(&self) -> usize {
            self.clones.load(Ordering::SeqCst)
        }

        fn drops(&self) -> usize {
            self.drops.load(Ordering::SeqCst)
        }
    }

    fn poll(lock: &Mutex<State>, waker: &Waker) -> Poll<()> {
        poll_or_keep(
            lock,
            waker,
            |state| state.done.then_some(()),
            |state| &mut state.waker,
        )
    }

    #[test]
    fn a_kept_waker_is_cloned_and_a_replaced_one_dropped_outside_the_lock() {
        let lock = Arc::new(Mutex::new(State::default()));
        let (first, second) = (Probe::new(&lock, false), Probe::new(&lock, false));
        let (one, two) = (first.waker(), second.waker());
        assert!(poll(&lock, &one).is_pending());
        assert_eq!(first.clones(), 1);
        // The same waker again: nothing cloned.
        assert!(poll(&lock, &one).is_pending());
        assert_eq!(first.clones(), 1);
        // Another task's waker replaces it; the old one is dropped, after the lock.
        assert!(poll(&lock, &two).is_pending());
        assert_eq!((second.clones(), first.drops()), (1, 1));
        assert!(
            lock.try_lock()
                .unwrap()
                .waker
                .as_ref()
                .unwrap()
                .will_wake(&two)
        );
        let kept = lock.try_lock().unwrap().waker.take();
        drop((one, two, kept));
    }

    #[test]
    fn ready_keeps_nothing_and_clones_nothing() {
        let lock = Arc::new(Mutex::new(State::default()));
        lock.try_lock().unwrap().done = true;
        let probe = Probe::new(&lock, false);
        let waker = probe.waker();
        assert!(poll(&lock, &waker).is_ready());
        assert_eq!(probe.clones(), 0);
        assert!(lock.try_lock().unwrap().waker.is_none());
    }

    #[test]
    fn readiness_that_comes_while_the_waker_is_cloned_is_seen() {
        let lock = Arc::new(Mutex::new(State::default()));
        let probe = Probe::new(&lock, true);
        let waker = probe.waker();
        assert!(poll(&lock, &waker).is_ready());
        // The clone was made, then dropped (after the lock) instead of kept.
        assert_eq!((probe.clones(), probe.drops()), (1, 1));
        assert!(lock.try_lock().unwrap().waker.is_none());
    }
}
