//! A value handed over once, from one writer to one taker that may wait for it
//! ([`OutputSlot`]): a nursery child's outcome on its way to the child's
//! [`ChildHandle`](crate::ChildHandle), written once by the child's task as the child ends,
//! taken once by the handle, which leaves its waker there meanwhile.
//!
//! Why not tokio's `JoinHandle`: reading a child's outcome through it (the task's end
//! storing the output in the task and notifying the handle, the handle copying it out and
//! letting go of the task) cost about 200 instructions per child more than this slot
//! (DESIGN.md, "Nursery budgets"), the largest share of what a nursery child cost beyond a
//! bare spawn. With the outcome here the child's task has output `()` and its `JoinHandle`
//! is dropped at the spawn.
//!
//! This is the crate's fifth `unsafe` (DESIGN.md, "Who knows what"): a `Mutex` around the
//! waker and the outcome would take 8 bytes more per child than the budget leaves. Every
//! access to the two cells is behind the state byte's protocol, stated at each block; the
//! loom model and the Miri tests are at the bottom.

use std::mem::MaybeUninit;
use std::task::{Context, Poll, Waker};

use crate::sync::{AtomicU8, Ordering, UnsafeCell};

/// `output` holds the child's outcome: set once, by the child's task, after writing it.
const OUTPUT_SET: u8 = 1;
/// `waker` holds the handle's waker: set by the handle after writing it, cleared by the
/// handle before writing it again. While it is clear the writer does not touch `waker`.
const WAKER_SET: u8 = 2;
/// The handle took the outcome: it is not dropped again with the slot.
const TAKEN: u8 = 4;

/// A value on its way (a child's outcome) and its taker's waker (24 bytes for a one-byte
/// value).
pub(crate) struct OutputSlot<V> {
    state: AtomicU8,
    waker: UnsafeCell<Option<Waker>>,
    output: UnsafeCell<MaybeUninit<V>>,
}

// SAFETY: the outcome is written by one thread and read by one other, handed over by the
// `Release`/`Acquire` pair on `OUTPUT_SET`; the waker is written only by the handle while
// `WAKER_SET` is clear and `OUTPUT_SET` is not set (the writer reads it only after seeing
// `WAKER_SET` in the same atomic operation that sets `OUTPUT_SET`), and read by both sides
// otherwise. `V: Send` is what moving the value between threads needs; nobody gets a `&V`.
unsafe impl<V: Send> Send for OutputSlot<V> {}
// SAFETY: as above.
unsafe impl<V: Send> Sync for OutputSlot<V> {}

impl<V> Default for OutputSlot<V> {
    fn default() -> Self {
        OutputSlot {
            state: AtomicU8::new(0),
            waker: UnsafeCell::new(None),
            output: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }
}

impl<V> OutputSlot<V> {
    /// Stores the child's outcome and wakes its handle. Called by the child's task only,
    /// at most once (its end: the poll that finished it, or its drop after an abort).
    pub(crate) fn fill(&self, output: V) {
        // SAFETY: only the writer writes the value, once (`OUTPUT_SET` is not set
        // yet), and nobody reads it before `OUTPUT_SET` is published below.
        self.output
            .with_mut(|slot| unsafe { (*slot).write(output) });
        let state = self.state.fetch_or(OUTPUT_SET, Ordering::AcqRel);
        debug_assert_eq!(state & OUTPUT_SET, 0, "a value is written once");
        if state & WAKER_SET != 0 {
            // SAFETY: `WAKER_SET` was seen (`Acquire`): the handle's write of the waker
            // happened before, and the handle writes it again only after clearing the bit
            // while `OUTPUT_SET` is not set, which it now is. Both sides only read it now.
            self.waker.with(|waker| {
                if let Some(waker) = unsafe { &*waker } {
                    waker.wake_by_ref();
                }
            });
        }
    }

    /// Whether the outcome is there (taken or not).
    pub(crate) fn is_filled(&self) -> bool {
        self.state.load(Ordering::Acquire) & OUTPUT_SET != 0
    }

    /// The outcome, or `Pending` with `cx`'s waker left to be woken when it comes. Called
    /// by the child's handle only (one at a time: it takes `&mut self`).
    ///
    /// # Panics
    ///
    /// If the outcome was already taken (a handle polled after it returned).
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<V> {
        let state = self.state.load(Ordering::Acquire);
        if state & OUTPUT_SET != 0 {
            return Poll::Ready(self.take());
        }
        if state & WAKER_SET != 0 {
            // SAFETY: `WAKER_SET` is set, so the handle (this code) is not writing it, and
            // the writer only reads it.
            let same = self.waker.with(|waker| unsafe {
                (*waker)
                    .as_ref()
                    .is_some_and(|waker| waker.will_wake(cx.waker()))
            });
            if same {
                return Poll::Pending;
            }
            if self.state.fetch_and(!WAKER_SET, Ordering::AcqRel) & OUTPUT_SET != 0 {
                return Poll::Ready(self.take());
            }
        }
        // SAFETY: `WAKER_SET` is clear and `OUTPUT_SET` was not set when it was last seen
        // clear by this handle, so the writer, which reads the waker only if its `fetch_or`
        // sees `WAKER_SET`, does not read it until the `fetch_or` below publishes it.
        self.waker
            .with_mut(|waker| unsafe { *waker = Some(cx.waker().clone()) });
        if self.state.fetch_or(WAKER_SET, Ordering::AcqRel) & OUTPUT_SET != 0 {
            return Poll::Ready(self.take());
        }
        Poll::Pending
    }

    fn take(&self) -> V {
        let state = self.state.fetch_or(TAKEN, Ordering::Relaxed);
        assert_eq!(state & TAKEN, 0, "a ChildHandle polled after it returned");
        // SAFETY: `OUTPUT_SET` was seen with `Acquire`, so the outcome was written before;
        // `TAKEN` makes this the only read, and keeps `drop` from dropping it again.
        self.output
            .with(|slot| unsafe { (*slot).assume_init_read() })
    }
}

impl<V> Drop for OutputSlot<V> {
    fn drop(&mut self) {
        let state = self.state.load(Ordering::Acquire);
        if state & OUTPUT_SET != 0 && state & TAKEN == 0 {
            // SAFETY: written (`OUTPUT_SET`) and never read (`TAKEN` clear); `&mut self`
            // means no other access.
            self.output
                .with_mut(|slot| unsafe { (*slot).assume_init_drop() });
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    //! Run under Miri too (`.ci/run`): its data-race detector checks the handover.

    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn output_before_the_handle_polls() {
        let slot = OutputSlot::default();
        slot.fill("done".to_string());
        assert!(slot.is_filled());
        let (count, waker) = waker();
        let Poll::Ready(output) = slot.poll_take(&mut Context::from_waker(&waker)) else {
            panic!("the outcome is there");
        };
        assert_eq!(output, "done");
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn the_waker_left_is_woken_once_and_the_latest_one_counts() {
        let slot = OutputSlot::default();
        let (first, first_waker) = waker();
        let (second, second_waker) = waker();
        assert!(
            slot.poll_take(&mut Context::from_waker(&first_waker))
                .is_pending()
        );
        assert!(
            slot.poll_take(&mut Context::from_waker(&first_waker))
                .is_pending()
        );
        assert!(
            slot.poll_take(&mut Context::from_waker(&second_waker))
                .is_pending()
        );
        slot.fill("late".to_string());
        assert_eq!(first.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(second.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        let Poll::Ready(output) = slot.poll_take(&mut Context::from_waker(&second_waker)) else {
            panic!("the outcome is there");
        };
        assert_eq!(output, "late");
    }

    #[test]
    fn an_outcome_never_taken_is_dropped_with_the_slot() {
        let slot = OutputSlot::default();
        slot.fill("kept".to_string());
        drop(slot); // Miri's leak check: the string is freed.
        let empty = OutputSlot::<String>::default();
        let (_count, waker) = waker();
        assert!(
            empty
                .poll_take(&mut Context::from_waker(&waker))
                .is_pending()
        );
        drop(empty); // the waker left there is dropped too
    }

    #[test]
    #[should_panic(expected = "polled after it returned")]
    fn taking_twice_is_a_clear_panic() {
        let slot = OutputSlot::default();
        slot.fill("once".to_string());
        let (_count, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        let _ = slot.poll_take(&mut cx);
        let _ = slot.poll_take(&mut cx);
    }

    #[test]
    fn a_writer_on_another_thread_hands_over() {
        for _ in 0..20 {
            let slot = Arc::new(OutputSlot::default());
            let writer = {
                let slot = slot.clone();
                std::thread::spawn(move || slot.fill("sent".to_string()))
            };
            let (count, waker) = waker();
            let mut cx = Context::from_waker(&waker);
            let output = loop {
                if let Poll::Ready(output) = slot.poll_take(&mut cx) {
                    break output;
                }
                // A pending poll left the waker: the writer wakes it, or the output came.
                while count.0.load(std::sync::atomic::Ordering::SeqCst) == 0 && !slot.is_filled() {
                    std::thread::yield_now();
                }
            };
            assert_eq!(output, "sent");
            writer.join().unwrap();
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::Arc;

    /// The handle, polling with two different wakers in turn, always gets the outcome, and
    /// a pending poll is always followed by a wake-up (a lost one deadlocks the model).
    #[test]
    fn loom_output_slot_handover() {
        loom::model(|| {
            let slot = Arc::new(OutputSlot::<u32>::default());
            let writer = {
                let slot = slot.clone();
                loom::thread::spawn(move || slot.fill(7))
            };
            let first = crate::sync::block_on(std::future::poll_fn(|cx| {
                // Registers one waker, then replaces it with the model's own.
                let noop = Waker::noop();
                if slot.poll_take(&mut Context::from_waker(noop)).is_ready() {
                    return Poll::Ready(true);
                }
                slot.poll_take(cx).map(|_| false)
            }));
            let _ = first;
            writer.join().unwrap();
        });
    }
}
