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
//! This is the crate's fifth `unsafe` (DESIGN.md, "Who knows what"). It is small where a
//! `Mutex` around the waker and the outcome would not be: its state byte ([`SlotState`])
//! is kept by the slot's owner where a byte is free (a child's `TaskScope` has padding),
//! markers without a value ("aborted", "failed", ...) live in that byte, and whoever is last
//! to let go of the value (the taker dropped unread, or the writer finding the taker gone)
//! drops it, so the slot needs no `Drop` of its own: a waker and the bare value, 16 bytes
//! for a unit value where a `Mutex` took 32. Every access to the two cells is behind the
//! state byte's protocol, stated at each block; the loom models and the Miri tests are at
//! the bottom.

use std::mem::MaybeUninit;
use std::task::{Context, Poll, Waker};

use crate::sync::{AtomicU8, Ordering, UnsafeCell};

/// The value is there (or a marker is): set once, by the writer, after writing it.
const FILLED: u8 = 1;
/// `waker` holds the taker's waker: set by the taker after writing it, cleared by the
/// taker before writing it again. While it is clear the writer does not touch `waker`.
const WAKER_SET: u8 = 2;
/// The taker took the value, or let go of the slot ([`OutputSlot::release`]): it will not
/// read the value. Whichever of `FILLED` and `RELEASED` comes second drops an untaken value.
const RELEASED: u8 = 4;
/// The marker written instead of a value (1 to 7), above the three bits; 0 for a value.
const MARK_SHIFT: u32 = 3;

/// An [`OutputSlot`]'s state, kept by its owner (one byte: `FILLED | WAKER_SET | RELEASED`
/// and the marker).
#[derive(Debug, Default)]
pub(crate) struct SlotState(AtomicU8);

/// A value or a marker on its way, and its taker's waker. Used through a [`SlotHolder`],
/// which pairs it with its [`SlotState`]: the methods below take the state and rely on
/// always getting the same one.
pub(crate) struct OutputSlot<V> {
    waker: UnsafeCell<Option<Waker>>,
    value: UnsafeCell<MaybeUninit<V>>,
}

// SAFETY: the value is written by one thread and read (or dropped) by one other, handed over
// by the `Release`/`Acquire` pairs on the state byte; the waker is written only by the taker
// while `WAKER_SET` is clear and `FILLED` is not set (the writer reads it only after seeing
// `WAKER_SET` in the same atomic operation that sets `FILLED`), and read by both sides
// otherwise. `V: Send` is what moving the value between threads needs; nobody gets a `&V`.
unsafe impl<V: Send> Send for OutputSlot<V> {}
// SAFETY: as above.
unsafe impl<V: Send> Sync for OutputSlot<V> {}

/// Keeps an [`OutputSlot`] with its [`SlotState`], and hands values over through them.
///
/// # Safety
///
/// `output_state` and `output_slot` return the same pair for as long as `self` lives: the
/// slot's protocol reads and writes its cells by what that one state byte says.
pub(crate) unsafe trait SlotHolder<V> {
    fn output_state(&self) -> &SlotState;
    fn output_slot(&self) -> &OutputSlot<V>;

    /// Stores `output` (a value, or a marker from 1 to 7) and wakes the taker; drops the
    /// value at once if the taker let go. Called by the writer only, at most once.
    fn slot_fill(&self, output: Result<V, u8>) {
        self.output_slot().fill(self.output_state(), output);
    }

    /// Whether the slot was filled (taken or not).
    fn slot_is_filled(&self) -> bool {
        self.output_slot().is_filled(self.output_state())
    }

    /// The value or marker, or `Pending` with `cx`'s waker left to be woken when it comes.
    /// Called by the taker only (one at a time).
    ///
    /// # Panics
    ///
    /// If the taker already took it or let go.
    fn slot_poll_take(&self, cx: &mut Context<'_>) -> Poll<Result<V, u8>> {
        self.output_slot().poll_take(self.output_state(), cx)
    }

    /// The taker lets go without taking: see [`OutputSlot::release`].
    fn slot_release(&self) {
        self.output_slot().release(self.output_state());
    }
}

impl<V> Default for OutputSlot<V> {
    fn default() -> Self {
        OutputSlot {
            waker: UnsafeCell::new(None),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }
}

impl<V> OutputSlot<V> {
    /// Stores `output` (a value, or a marker from 1 to 7) and wakes the taker; drops the
    /// value at once if the taker let go. Called by the writer only, at most once.
    fn fill(&self, state: &SlotState, output: Result<V, u8>) {
        if state.0.load(Ordering::Relaxed) & RELEASED != 0 {
            // The taker let go (`RELEASED` is never cleared): nobody will read it. The
            // common case of children whose handles were dropped costs no write here.
            drop(output);
            return;
        }
        let mark = match output {
            Ok(value) => {
                // SAFETY: only the writer writes the value, once (`FILLED` is not set yet),
                // and nobody reads it before `FILLED` is published below.
                self.value.with_mut(|slot| unsafe { (*slot).write(value) });
                0
            }
            Err(mark) => {
                assert!((1..=7).contains(&mark), "a marker is 1 to 7");
                mark
            }
        };
        let before = state
            .0
            .fetch_or(FILLED | mark << MARK_SHIFT, Ordering::AcqRel);
        debug_assert_eq!(before & FILLED, 0, "a slot is filled once");
        if before & RELEASED != 0 {
            if mark == 0 {
                // SAFETY: written above; the taker let go before this `fetch_or` (`RELEASED`
                // seen), so it never reads the value: this is the only access.
                self.value
                    .with_mut(|slot| unsafe { (*slot).assume_init_drop() });
            }
            return;
        }
        if before & WAKER_SET != 0 {
            // SAFETY: `WAKER_SET` was seen (`Acquire`): the taker's write of the waker
            // happened before, and the taker writes it again only after clearing the bit
            // while `FILLED` is not set, which it now is. Both sides only read it now.
            self.waker.with(|waker| {
                if let Some(waker) = unsafe { &*waker } {
                    waker.wake_by_ref();
                }
            });
        }
    }

    /// Whether the slot was filled (taken or not).
    fn is_filled(&self, state: &SlotState) -> bool {
        state.0.load(Ordering::Acquire) & FILLED != 0
    }

    /// The value or marker, or `Pending` with `cx`'s waker left to be woken when it comes.
    /// Called by the taker only (one at a time).
    ///
    /// # Panics
    ///
    /// If the taker already took it or let go.
    fn poll_take(&self, state: &SlotState, cx: &mut Context<'_>) -> Poll<Result<V, u8>> {
        let now = state.0.load(Ordering::Acquire);
        if now & FILLED != 0 {
            return Poll::Ready(self.take(state));
        }
        if now & WAKER_SET != 0 {
            // SAFETY: `WAKER_SET` is set, so the taker (this code) is not writing it, and
            // the writer only reads it.
            let same = self.waker.with(|waker| unsafe {
                (*waker)
                    .as_ref()
                    .is_some_and(|waker| waker.will_wake(cx.waker()))
            });
            if same {
                return Poll::Pending;
            }
            if state.0.fetch_and(!WAKER_SET, Ordering::AcqRel) & FILLED != 0 {
                return Poll::Ready(self.take(state));
            }
        }
        // SAFETY: `WAKER_SET` is clear and `FILLED` was not set when this taker last saw
        // the state, so the writer, which reads the waker only if its `fetch_or` sees
        // `WAKER_SET`, does not read it until the `fetch_or` below publishes it.
        self.waker
            .with_mut(|waker| unsafe { *waker = Some(cx.waker().clone()) });
        if state.0.fetch_or(WAKER_SET, Ordering::AcqRel) & FILLED != 0 {
            return Poll::Ready(self.take(state));
        }
        Poll::Pending
    }

    fn take(&self, state: &SlotState) -> Result<V, u8> {
        let before = state.0.fetch_or(RELEASED, Ordering::Acquire);
        assert_eq!(
            before & RELEASED,
            0,
            "a ChildHandle polled after it returned"
        );
        match before >> MARK_SHIFT {
            // SAFETY: `FILLED` was seen with `Acquire`, so the value was written before;
            // `RELEASED` makes this the only read (the writer drops nothing once `FILLED`
            // is set, and `release` nothing once `RELEASED` is).
            0 => Ok(self
                .value
                .with(|slot| unsafe { (*slot).assume_init_read() })),
            mark => Err(mark),
        }
    }

    /// The taker lets go without taking (a handle dropped): drops the value if it is
    /// there, else leaves that to the writer, and drops its waker if the writer will not
    /// read it. A no-op after a take.
    fn release(&self, state: &SlotState) {
        // Only the taker sets `RELEASED`: after a take it sees its own write, and the
        // common case (a handle dropped after it returned) costs no read-modify-write.
        if state.0.load(Ordering::Relaxed) & RELEASED != 0 {
            return;
        }
        let before = state.0.fetch_or(RELEASED, Ordering::AcqRel);
        if before & RELEASED != 0 {
            return;
        }
        if before & FILLED == 0 {
            if before & WAKER_SET != 0 {
                // SAFETY: not filled yet, so the writer's `fetch_or` will see `RELEASED` and
                // return without reading the waker; the taker (this code) is the only
                // other party.
                self.waker.with_mut(|waker| unsafe { *waker = None });
            }
        } else if before >> MARK_SHIFT == 0 {
            // SAFETY: filled (`Acquire` on `FILLED`) and neither taken nor released before
            // (`RELEASED` was clear): the writer, which saw no `RELEASED` when it filled,
            // leaves the value to this call, the only access.
            self.value
                .with_mut(|slot| unsafe { (*slot).assume_init_drop() });
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    //! Run under Miri too (`.ci/run`): its data-race detector checks the handover, its leak
    //! check that every value is dropped once.

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

    fn woken(count: &Count) -> usize {
        count.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn fresh() -> (SlotState, OutputSlot<String>) {
        (SlotState::default(), OutputSlot::default())
    }

    #[test]
    fn a_value_filled_before_the_taker_polls() {
        let (state, slot) = fresh();
        slot.fill(&state, Ok("done".to_string()));
        assert!(slot.is_filled(&state));
        let (count, waker) = waker();
        let output = slot.poll_take(&state, &mut Context::from_waker(&waker));
        assert_eq!(output, Poll::Ready(Ok("done".to_string())));
        assert_eq!(woken(&count), 0);
    }

    #[test]
    fn a_marker_comes_back_as_written() {
        let (state, slot) = fresh();
        slot.fill(&state, Err(5));
        let (_count, waker) = waker();
        let output = slot.poll_take(&state, &mut Context::from_waker(&waker));
        assert_eq!(output, Poll::Ready(Err(5)));
    }

    #[test]
    #[should_panic(expected = "a marker is 1 to 7")]
    fn a_marker_out_of_range_is_a_clear_panic() {
        let (state, slot) = fresh();
        slot.fill(&state, Err(8));
    }

    #[test]
    fn the_waker_left_is_woken_once_and_the_latest_one_counts() {
        let (state, slot) = fresh();
        let (first, first_waker) = waker();
        let (second, second_waker) = waker();
        let mut first_cx = Context::from_waker(&first_waker);
        assert!(slot.poll_take(&state, &mut first_cx).is_pending());
        assert!(slot.poll_take(&state, &mut first_cx).is_pending());
        let mut second_cx = Context::from_waker(&second_waker);
        assert!(slot.poll_take(&state, &mut second_cx).is_pending());
        slot.fill(&state, Ok("late".to_string()));
        assert_eq!(woken(&first), 0);
        assert_eq!(woken(&second), 1);
        let output = slot.poll_take(&state, &mut second_cx);
        assert_eq!(output, Poll::Ready(Ok("late".to_string())));
    }

    #[test]
    fn a_value_nobody_takes_is_dropped_once_whoever_comes_last() {
        // Released after the fill: `release` drops it.
        let (state, slot) = fresh();
        slot.fill(&state, Ok("kept".to_string()));
        slot.release(&state);
        slot.release(&state); // a second release drops nothing
        // Released before the fill: `fill` drops it.
        let (state, slot) = fresh();
        let (_count, waker) = waker();
        assert!(
            slot.poll_take(&state, &mut Context::from_waker(&waker))
                .is_pending()
        );
        slot.release(&state);
        slot.fill(&state, Ok("late".to_string()));
        // Taken, then released: nothing left to drop.
        let (state, slot) = fresh();
        slot.fill(&state, Ok("taken".to_string()));
        let output = slot.poll_take(&state, &mut Context::from_waker(&waker));
        assert_eq!(output, Poll::Ready(Ok("taken".to_string())));
        slot.release(&state);
        // Miri's leak check (and its double-free check) holds the rest.
    }

    #[test]
    #[should_panic(expected = "polled after it returned")]
    fn taking_twice_is_a_clear_panic() {
        let (state, slot) = fresh();
        slot.fill(&state, Ok("once".to_string()));
        let (_count, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        let _ = slot.poll_take(&state, &mut cx);
        let _ = slot.poll_take(&state, &mut cx);
    }

    #[test]
    fn a_writer_on_another_thread_hands_over() {
        for _ in 0..20 {
            let shared = Arc::new(fresh());
            let writer = {
                let shared = shared.clone();
                std::thread::spawn(move || shared.1.fill(&shared.0, Ok("sent".to_string())))
            };
            let (state, slot) = &*shared;
            let (count, waker) = waker();
            let mut cx = Context::from_waker(&waker);
            let output = loop {
                if let Poll::Ready(output) = slot.poll_take(state, &mut cx) {
                    break output;
                }
                // A pending poll left the waker: the writer wakes it, or the value came.
                while woken(&count) == 0 && !slot.is_filled(state) {
                    std::thread::yield_now();
                }
            };
            assert_eq!(output, Ok("sent".to_string()));
            writer.join().unwrap();
        }
    }

    #[test]
    fn a_writer_on_another_thread_racing_a_release() {
        for _ in 0..20 {
            let shared = Arc::new(fresh());
            let writer = {
                let shared = shared.clone();
                std::thread::spawn(move || shared.1.fill(&shared.0, Ok("raced".to_string())))
            };
            shared.1.release(&shared.0);
            writer.join().unwrap();
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::Arc;

    /// The taker, polling with two different wakers in turn, always gets the value, and a
    /// pending poll is always followed by a wake-up (a lost one deadlocks the model).
    #[test]
    fn loom_output_slot_handover() {
        loom::model(|| {
            let shared = Arc::new((SlotState::default(), OutputSlot::<u32>::default()));
            let writer = {
                let shared = shared.clone();
                loom::thread::spawn(move || shared.1.fill(&shared.0, Ok(7)))
            };
            let (state, slot) = &*shared;
            let output = crate::sync::block_on(std::future::poll_fn(|cx| {
                // Registers one waker, then replaces it with the model's own.
                let noop = Waker::noop();
                if let Poll::Ready(output) = slot.poll_take(state, &mut Context::from_waker(noop)) {
                    return Poll::Ready(output);
                }
                slot.poll_take(state, cx)
            }));
            assert_eq!(output, Ok(7));
            writer.join().unwrap();
        });
    }

    /// A taker that polled (leaving its waker) and then lets go races the writer: the
    /// waker and the value are each dropped once, by one side.
    #[test]
    fn loom_output_slot_poll_then_release_races_the_fill() {
        loom::model(|| {
            let (shared, writer) = racing_writer();
            let (state, slot) = &*shared;
            let _ = slot.poll_take(state, &mut Context::from_waker(Waker::noop()));
            slot.release(state);
            writer.join().unwrap();
        });
    }

    /// A taker letting go races the writer: the value is dropped exactly once (loom reports
    /// a leaked or twice-dropped `loom::sync::Arc`).
    #[test]
    fn loom_output_slot_release_races_the_fill() {
        loom::model(|| {
            let (shared, writer) = racing_writer();
            shared.1.release(&shared.0);
            writer.join().unwrap();
        });
    }

    type Shared = Arc<(SlotState, OutputSlot<loom::sync::Arc<u32>>)>;

    /// A slot whose value is a `loom::sync::Arc` (loom reports one leaked or dropped twice),
    /// and a thread filling it.
    fn racing_writer() -> (Shared, loom::thread::JoinHandle<()>) {
        let shared: Shared = Arc::new((SlotState::default(), OutputSlot::default()));
        let writer = {
            let shared = shared.clone();
            loom::thread::spawn(move || shared.1.fill(&shared.0, Ok(loom::sync::Arc::new(7))))
        };
        (shared, writer)
    }
}
