//! A value handed over once, from one writer to one taker that may wait for it
//! ([`OutputSlot`]): a nursery child's outcome on its way to the child's
//! [`ChildHandle`](crate::ChildHandle), written once by the child's task as the child ends,
//! taken once by the handle. A taker that has to wait leaves its waker in a table shared by
//! many slots ([`Wakers`]: one per nursery), not in the slot.
//!
//! Why not tokio's `JoinHandle`: reading a child's outcome through it (the task's end
//! storing the output in the task and notifying the handle, the handle copying it out and
//! letting go of the task) cost about 200 instructions per child more than this slot
//! (DESIGN.md, "Nursery budgets"), the largest share of what a nursery child cost beyond a
//! bare spawn. With the outcome here the child's task has output `()` and its `JoinHandle`
//! is dropped at the spawn.
//!
//! This is the crate's fifth `unsafe` (DESIGN.md, "Who knows what"). It is small where a
//! `Mutex` around a waker and the outcome would not be: its state byte ([`SlotState`]) is
//! kept by the slot's owner where a byte is free (a child's `TaskScope` has padding),
//! markers without a value ("aborted", "failed", ...) live in that byte, the waker of a
//! taker that waits lives in the shared table (most takers never wait: their child ended
//! first, or nobody awaits them), and whoever is last to let go of the value (the taker
//! dropped unread, or the writer finding the taker gone) drops it, so the slot needs no
//! `Drop` of its own: the bare value, nothing at all for a unit value. Every access to the
//! value is behind the state byte's protocol, stated at each block; the loom models and the
//! Miri tests are at the bottom.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::task::{Context, Poll, Waker};

use crate::sync::{AtomicU8, Mutex, Ordering, UnsafeCell, lock};

/// The value is there (or a marker is): set once, by the writer, after writing it.
const FILLED: u8 = 1;
/// The taker left a waker in the [`Wakers`] table: set once, by the taker, under the
/// table's lock, after inserting it. Whichever of `FILLED` and `WAKER_SET` comes second
/// takes the waker out of the table again (the writer to wake it).
const WAKER_SET: u8 = 2;
/// The taker took the value, or let go of the slot (`slot_release`): it will not read the
/// value. Whichever of `FILLED` and `RELEASED` comes second drops an untaken value.
const RELEASED: u8 = 4;
/// The marker written instead of a value (1 to 7), above the three bits; 0 for a value.
const MARK_SHIFT: u32 = 3;

/// An [`OutputSlot`]'s state, kept by its owner (one byte: `FILLED | WAKER_SET | RELEASED`
/// and the marker).
#[derive(Debug, Default)]
pub(crate) struct SlotState(AtomicU8);

/// The wakers of the takers waiting on a group of slots (a nursery's children), by slot.
///
/// A taker's waker sits here only while it waits for a slot not yet filled: on
/// current_thread, a body awaiting its handles one by one leaves one at a time. Wakers are
/// cloned before the lock is taken, and dropped and woken after it is released: a waker
/// may run any code, even drop or poll another taker, which takes this lock.
#[derive(Default)]
pub(crate) struct Wakers(Mutex<HashMap<usize, Waker>>);

/// A table with room for more wakers than this gives memory back as it empties (a fan-in
/// of many waiting handles grew it); at most this much room is kept for as long as the
/// nursery lives.
const KEPT_ROOM: usize = 64;

impl Wakers {
    /// Takes out the waker left for `key`.
    fn take(&self, key: usize) -> Option<Waker> {
        remove(&mut lock(&self.0), key)
    }
}

/// Takes out the waker left for `key`, and shrinks a table three quarters empty (to twice
/// what it holds: a table that grows again pays for each rehash with as many inserts).
fn remove(wakers: &mut HashMap<usize, Waker>, key: usize) -> Option<Waker> {
    let waker = wakers.remove(&key);
    if wakers.capacity() > KEPT_ROOM && wakers.len() * 4 < wakers.capacity() {
        wakers.shrink_to(wakers.len() * 2);
    }
    waker
}

impl std::fmt::Debug for Wakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wakers").finish_non_exhaustive()
    }
}

/// A value or a marker on its way. Used through a [`SlotHolder`], which pairs it with its
/// [`SlotState`] and its [`Wakers`].
pub(crate) struct OutputSlot<V> {
    value: UnsafeCell<MaybeUninit<V>>,
}

// SAFETY: the value is written by one thread and read (or dropped) by one other, handed over
// by the `Release`/`Acquire` pairs on the state byte. `V: Send` is what moving the value
// between threads needs; nobody gets a `&V`.
unsafe impl<V: Send> Send for OutputSlot<V> {}
// SAFETY: as above.
unsafe impl<V: Send> Sync for OutputSlot<V> {}

impl<V> Default for OutputSlot<V> {
    fn default() -> Self {
        OutputSlot {
            value: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }
}

/// Keeps an [`OutputSlot`] with its [`SlotState`] and the [`Wakers`] table its taker waits
/// in, and hands values over through them (the protocol is here, in the provided methods).
///
/// # Safety
///
/// `output_state`, `output_slot` and `output_wakers` return the same three, at the same
/// addresses, for as long as `self` lives (a holder is pinned or behind an `Arc`: it is not
/// moved while a taker's waker may be in the table), and no two live holders sharing a
/// table return the same state (the state's address is the holder's key in the table): the
/// protocol reads and writes the value by what that one state byte says. One writer fills
/// at most once, and one taker at a time takes or lets go.
pub(crate) unsafe trait SlotHolder<V> {
    fn output_state(&self) -> &SlotState;
    fn output_slot(&self) -> &OutputSlot<V>;
    fn output_wakers(&self) -> &Wakers;

    /// Stores `output` (a value, or a marker from 1 to 7) and wakes the taker; drops the
    /// value at once if the taker let go. Called by the writer only, at most once (a second
    /// fill of a slot the taker still holds panics).
    fn slot_fill(&self, output: Result<V, u8>) {
        let state = &self.output_state().0;
        let now = state.load(Ordering::Relaxed);
        // Only the writer sets `FILLED`, so it sees its own: a second fill is a clear panic
        // before it could write over a value the taker may be reading.
        assert_eq!(now & FILLED, 0, "an output slot is filled once");
        if now & RELEASED != 0 {
            // The taker let go (`RELEASED` is never cleared): nobody will read it. The
            // common case of children whose handles were dropped costs no write here.
            drop(output);
            return;
        }
        let value = &self.output_slot().value;
        let mark = match output {
            Ok(output) => {
                // SAFETY: only the writer writes the value, once (`FILLED` is not set yet),
                // and nobody reads it before `FILLED` is published below.
                value.with_mut(|slot| unsafe { (*slot).write(output) });
                0
            }
            Err(mark) => {
                assert!((1..=7).contains(&mark), "a marker is 1 to 7");
                mark
            }
        };
        let before = state.fetch_or(FILLED | mark << MARK_SHIFT, Ordering::AcqRel);
        debug_assert_eq!(before & FILLED, 0, "a slot is filled once");
        if before & RELEASED != 0 {
            if mark == 0 {
                // SAFETY: written above; the taker let go before this `fetch_or` (`RELEASED`
                // seen), so it never reads the value: this is the only access.
                value.with_mut(|slot| unsafe { (*slot).assume_init_drop() });
            }
            // A taker that let go took its waker out of the table itself.
            return;
        }
        if before & WAKER_SET != 0 {
            // `WAKER_SET` came first: the taker's waker is in the table (inserted before the
            // bit, under the lock), and from now on the taker leaves it to this call.
            let waker = self.output_wakers().take(key(self));
            debug_assert!(waker.is_some(), "a waker set is in the table");
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// Whether the slot was filled (taken or not).
    fn slot_is_filled(&self) -> bool {
        self.output_state().0.load(Ordering::Acquire) & FILLED != 0
    }

    /// The value or marker, or `Pending` with `cx`'s waker left to be woken when it comes.
    /// Called by the taker only (one at a time).
    ///
    /// # Panics
    ///
    /// If the taker already took it or let go.
    fn slot_poll_take(&self, cx: &mut Context<'_>) -> Poll<Result<V, u8>> {
        let state = &self.output_state().0;
        let now = state.load(Ordering::Acquire);
        if now & FILLED != 0 {
            return Poll::Ready(take(self));
        }
        let key = key(self);
        let table = &self.output_wakers().0;
        if now & WAKER_SET != 0 {
            // Only the taker (this code) sets `WAKER_SET`, so it is still set.
            match lock(table).get(&key) {
                // The writer took the waker out: it filled the slot first (and its
                // `fetch_or` is ordered before its lock, ours after).
                None => return Poll::Ready(take(self)),
                Some(left) if left.will_wake(cx.waker()) => return Poll::Pending,
                Some(_) => {}
            }
            // Cloning a waker may run any code (even drop another taker of this table,
            // which takes the lock): not under the lock.
            let new = cx.waker().clone();
            let mut wakers = lock(table);
            let Some(left) = wakers.get_mut(&key) else {
                drop(wakers);
                drop(new);
                return Poll::Ready(take(self));
            };
            // Under the lock, so the writer wakes either waker whole; the old one is
            // dropped after the lock is released.
            let old = std::mem::replace(left, new);
            drop(wakers);
            drop(old);
            return Poll::Pending;
        }
        let new = cx.waker().clone();
        let mut wakers = lock(table);
        let replaced = wakers.insert(key, new);
        // If `FILLED` came first, the writer saw no waker, so the taker takes it out.
        let filled_first = state.fetch_or(WAKER_SET, Ordering::AcqRel) & FILLED != 0;
        let taken = filled_first.then(|| remove(&mut wakers, key)).flatten();
        drop(wakers);
        debug_assert!(replaced.is_none(), "one waker per live holder");
        drop((replaced, taken));
        if filled_first {
            return Poll::Ready(take(self));
        }
        Poll::Pending
    }

    /// The taker lets go without taking (a handle dropped): drops the value if it is
    /// there, else leaves that to the writer, and takes its waker out of the table if the
    /// writer will not. A no-op after a take.
    fn slot_release(&self) {
        let state = &self.output_state().0;
        // Only the taker sets `RELEASED`: after a take it sees its own write, and the
        // common case (a handle dropped after it returned) costs no read-modify-write.
        if state.load(Ordering::Relaxed) & RELEASED != 0 {
            return;
        }
        let before = state.fetch_or(RELEASED, Ordering::AcqRel);
        if before & RELEASED != 0 {
            return;
        }
        if before & FILLED == 0 {
            if before & WAKER_SET != 0 {
                // Not filled yet, so the writer's `fetch_or` will see `RELEASED` and leave
                // the table alone.
                drop(self.output_wakers().take(key(self)));
            }
        } else if before >> MARK_SHIFT == 0 {
            // SAFETY: filled (`Acquire` on `FILLED`) and neither taken nor released before
            // (`RELEASED` was clear): the writer, which saw no `RELEASED` when it filled,
            // leaves the value to this call, the only access.
            self.output_slot()
                .value
                .with_mut(|slot| unsafe { (*slot).assume_init_drop() });
        }
    }
}

/// The taker takes the filled slot's value or marker.
fn take<V, H: SlotHolder<V> + ?Sized>(holder: &H) -> Result<V, u8> {
    let before = holder
        .output_state()
        .0
        .fetch_or(RELEASED, Ordering::Acquire);
    assert_eq!(
        before & RELEASED,
        0,
        "a ChildHandle polled after it returned"
    );
    debug_assert_ne!(before & FILLED, 0, "taken once filled");
    match before >> MARK_SHIFT {
        // SAFETY: `FILLED` is seen with `Acquire` (this `fetch_or`), so the value was
        // written before; `RELEASED` makes this the only read (the writer drops nothing
        // once `FILLED` is set, and `slot_release` nothing once `RELEASED` is).
        0 => Ok(holder
            .output_slot()
            .value
            .with(|slot| unsafe { (*slot).assume_init_read() })),
        mark => Err(mark),
    }
}

/// A holder's key in its table: its state's address, unique among live holders.
fn key<V, H: SlotHolder<V> + ?Sized>(holder: &H) -> usize {
    std::ptr::from_ref(holder.output_state()).addr()
}

#[cfg(test)]
/// A slot with its own state and table (a child's cell shares its nursery's table).
#[derive(Default)]
struct Holder<V> {
    state: SlotState,
    slot: OutputSlot<V>,
    wakers: crate::sync::Arc<Wakers>,
}

#[cfg(test)]
impl<V> Holder<V> {
    /// Another slot waiting in the same table.
    fn sharing(&self) -> Self {
        Holder {
            state: SlotState::default(),
            slot: OutputSlot::default(),
            wakers: self.wakers.clone(),
        }
    }
}

#[cfg(test)]
// SAFETY: its own three fields, never replaced; the tests neither move a holder after a
// poll that returned `Pending` nor fill one twice.
unsafe impl<V> SlotHolder<V> for Holder<V> {
    fn output_state(&self) -> &SlotState {
        &self.state
    }

    fn output_slot(&self) -> &OutputSlot<V> {
        &self.slot
    }

    fn output_wakers(&self) -> &Wakers {
        &self.wakers
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

    fn fresh() -> Holder<String> {
        Holder::default()
    }

    #[test]
    fn a_value_filled_before_the_taker_polls() {
        let slot = fresh();
        slot.slot_fill(Ok("done".to_string()));
        assert!(slot.slot_is_filled());
        let (count, waker) = waker();
        let output = slot.slot_poll_take(&mut Context::from_waker(&waker));
        assert_eq!(output, Poll::Ready(Ok("done".to_string())));
        assert_eq!(woken(&count), 0);
    }

    #[test]
    fn a_marker_comes_back_as_written() {
        let slot = fresh();
        slot.slot_fill(Err(5));
        let (_count, waker) = waker();
        let output = slot.slot_poll_take(&mut Context::from_waker(&waker));
        assert_eq!(output, Poll::Ready(Err(5)));
    }

    #[test]
    #[should_panic(expected = "a marker is 1 to 7")]
    fn a_marker_out_of_range_is_a_clear_panic() {
        let slot = fresh();
        slot.slot_fill(Err(8));
    }

    #[test]
    fn the_waker_left_is_woken_once_and_the_latest_one_counts() {
        let slot = fresh();
        let (first, first_waker) = waker();
        let (second, second_waker) = waker();
        let mut first_cx = Context::from_waker(&first_waker);
        assert!(slot.slot_poll_take(&mut first_cx).is_pending());
        assert!(slot.slot_poll_take(&mut first_cx).is_pending());
        let mut second_cx = Context::from_waker(&second_waker);
        assert!(slot.slot_poll_take(&mut second_cx).is_pending());
        slot.slot_fill(Ok("late".to_string()));
        assert_eq!(woken(&first), 0);
        assert_eq!(woken(&second), 1);
        let output = slot.slot_poll_take(&mut second_cx);
        assert_eq!(output, Poll::Ready(Ok("late".to_string())));
    }

    #[test]
    fn a_value_nobody_takes_is_dropped_once_whoever_comes_last() {
        // Released after the fill: `release` drops it.
        let slot = fresh();
        slot.slot_fill(Ok("kept".to_string()));
        slot.slot_release();
        slot.slot_release(); // a second release drops nothing
        // Released before the fill: `fill` drops it.
        let slot = fresh();
        let (_count, waker) = waker();
        assert!(
            slot.slot_poll_take(&mut Context::from_waker(&waker))
                .is_pending()
        );
        slot.slot_release();
        slot.slot_fill(Ok("late".to_string()));
        // Taken, then released: nothing left to drop.
        let slot = fresh();
        slot.slot_fill(Ok("taken".to_string()));
        let output = slot.slot_poll_take(&mut Context::from_waker(&waker));
        assert_eq!(output, Poll::Ready(Ok("taken".to_string())));
        slot.slot_release();
        // Miri's leak check (and its double-free check) holds the rest.
    }

    #[test]
    fn slots_sharing_a_table_wake_their_own_takers() {
        let first = fresh();
        let second = first.sharing();
        let (first_count, first_waker) = waker();
        let (second_count, second_waker) = waker();
        let mut first_cx = Context::from_waker(&first_waker);
        let mut second_cx = Context::from_waker(&second_waker);
        assert!(first.slot_poll_take(&mut first_cx).is_pending());
        assert!(second.slot_poll_take(&mut second_cx).is_pending());
        second.slot_fill(Ok("second".to_string()));
        assert_eq!((woken(&first_count), woken(&second_count)), (0, 1));
        let output = second.slot_poll_take(&mut second_cx);
        assert_eq!(output, Poll::Ready(Ok("second".to_string())));
        first.slot_fill(Ok("first".to_string()));
        assert_eq!((woken(&first_count), woken(&second_count)), (1, 1));
        let output = first.slot_poll_take(&mut first_cx);
        assert_eq!(output, Poll::Ready(Ok("first".to_string())));
        assert!(lock(&first.wakers.0).is_empty(), "no waker left behind");
    }

    /// A waker whose drop lets go of another slot in the same table (a task holding a
    /// handle, dropped with its last waker): the table is not locked while it drops.
    #[test]
    fn a_waker_dropped_by_a_replacement_may_release_a_slot_sharing_the_table() {
        struct ReleaseOnDrop(Option<Arc<Holder<String>>>);

        impl Wake for ReleaseOnDrop {
            fn wake(self: Arc<Self>) {}
        }

        impl Drop for ReleaseOnDrop {
            fn drop(&mut self) {
                if let Some(other) = self.0.take() {
                    other.slot_release();
                }
            }
        }

        let waiting = Arc::new(fresh());
        let (_count, other_waker) = waker();
        let pending = waiting.slot_poll_take(&mut Context::from_waker(&other_waker));
        assert!(pending.is_pending());
        let slot = waiting.sharing();
        let releasing = Waker::from(Arc::new(ReleaseOnDrop(Some(waiting.clone()))));
        assert!(
            slot.slot_poll_take(&mut Context::from_waker(&releasing))
                .is_pending()
        );
        drop(releasing);
        // The table holds the last clone: replacing it releases `waiting`, whose waker
        // leaves the table.
        let (_count, replacement) = waker();
        assert!(
            slot.slot_poll_take(&mut Context::from_waker(&replacement))
                .is_pending()
        );
        assert_eq!(
            lock(&slot.wakers.0).len(),
            1,
            "only the replacement is left"
        );
        slot.slot_release();
        assert!(lock(&slot.wakers.0).is_empty());
    }

    /// A waker whose clone lets go of another slot in the same table (a waker that drops a
    /// handle when cloned, odd but allowed): the table is not locked while a waker is
    /// cloned, neither for a first wait nor for a replacement.
    #[test]
    fn a_waker_whose_clone_releases_a_slot_sharing_the_table() {
        use std::task::{RawWaker, RawWakerVTable};

        /// Releases its holder the first time it is cloned.
        struct ReleaseOnClone(std::sync::Mutex<Option<Arc<Holder<String>>>>);

        static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, noop, noop, noop);

        unsafe fn clone(data: *const ()) -> RawWaker {
            // SAFETY: `data` is a `ReleaseOnClone` the test keeps alive past every waker.
            let this = unsafe { &*data.cast::<ReleaseOnClone>() };
            let other = this.0.lock().unwrap().take();
            if let Some(other) = other {
                other.slot_release();
            }
            RawWaker::new(data, &VTABLE)
        }

        unsafe fn noop(_: *const ()) {}

        fn releasing(this: &ReleaseOnClone) -> Waker {
            let data = std::ptr::from_ref(this).cast::<()>();
            // SAFETY: the vtable's functions take `data` as a `&ReleaseOnClone`, which
            // outlives every clone (the test drops the table before it).
            unsafe { Waker::from_raw(RawWaker::new(data, &VTABLE)) }
        }

        let slot = fresh();
        let (first, second) = (Arc::new(slot.sharing()), Arc::new(slot.sharing()));
        let (_count, waker) = waker();
        for waiting in [&first, &second] {
            let pending = waiting.slot_poll_take(&mut Context::from_waker(&waker));
            assert!(pending.is_pending());
        }
        let first_wait = ReleaseOnClone(std::sync::Mutex::new(Some(first)));
        let replacement = ReleaseOnClone(std::sync::Mutex::new(Some(second)));
        {
            let first_wait = releasing(&first_wait);
            let pending = slot.slot_poll_take(&mut Context::from_waker(&first_wait));
            assert!(pending.is_pending());
            assert_eq!(lock(&slot.wakers.0).len(), 2, "`first` let go of its wait");
            let replacement = releasing(&replacement);
            let pending = slot.slot_poll_take(&mut Context::from_waker(&replacement));
            assert!(pending.is_pending());
            assert_eq!(lock(&slot.wakers.0).len(), 1, "`second` let go of its wait");
        }
        slot.slot_fill(Ok("filled".to_string()));
        assert!(
            lock(&slot.wakers.0).is_empty(),
            "the fill took the waker out"
        );
        slot.slot_release(); // drops the value nobody took
    }

    /// A fan-in of many waiting takers grows the table; it gives the room back as they are
    /// woken, whether their slots are filled or let go.
    #[test]
    fn a_table_gives_back_the_room_of_a_fan_in() {
        let first = fresh();
        let slots: Vec<_> = (0..300).map(|_| first.sharing()).collect();
        let (_count, waker) = waker();
        for slot in &slots {
            assert!(
                slot.slot_poll_take(&mut Context::from_waker(&waker))
                    .is_pending()
            );
        }
        assert!(lock(&first.wakers.0).capacity() >= 300);
        for (i, slot) in slots.iter().enumerate() {
            if i % 2 == 0 {
                slot.slot_fill(Ok(i.to_string()));
            }
            slot.slot_release();
        }
        let table = lock(&first.wakers.0);
        assert!(table.is_empty());
        assert!(
            table.capacity() <= KEPT_ROOM,
            "room for {} wakers kept",
            table.capacity()
        );
    }

    #[test]
    #[should_panic(expected = "an output slot is filled once")]
    fn filling_twice_is_a_clear_panic() {
        let slot = fresh();
        slot.slot_fill(Ok("once".to_string()));
        slot.slot_release(); // drops the value: nothing leaks when the second fill panics
        let slot = fresh();
        slot.slot_fill(Err(3));
        slot.slot_fill(Ok("twice".to_string()));
    }

    #[test]
    #[should_panic(expected = "polled after it returned")]
    fn taking_twice_is_a_clear_panic() {
        let slot = fresh();
        slot.slot_fill(Ok("once".to_string()));
        let (_count, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        let _ = slot.slot_poll_take(&mut cx);
        let _ = slot.slot_poll_take(&mut cx);
    }

    #[test]
    fn a_writer_on_another_thread_hands_over() {
        for _ in 0..20 {
            let slot = Arc::new(fresh());
            let writer = {
                let slot = slot.clone();
                std::thread::spawn(move || slot.slot_fill(Ok("sent".to_string())))
            };
            let (count, waker) = waker();
            let mut cx = Context::from_waker(&waker);
            let output = loop {
                if let Poll::Ready(output) = slot.slot_poll_take(&mut cx) {
                    break output;
                }
                // A pending poll left the waker: the writer wakes it, or the value came.
                while woken(&count) == 0 && !slot.slot_is_filled() {
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
            let slot = Arc::new(fresh());
            let writer = {
                let slot = slot.clone();
                std::thread::spawn(move || slot.slot_fill(Ok("raced".to_string())))
            };
            slot.slot_release();
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
            let slot = Arc::new(Holder::<u32>::default());
            let writer = {
                let slot = slot.clone();
                loom::thread::spawn(move || slot.slot_fill(Ok(7)))
            };
            let output = crate::sync::block_on(std::future::poll_fn(|cx| {
                // Registers one waker, then replaces it with the model's own.
                let noop = Waker::noop();
                if let Poll::Ready(output) = slot.slot_poll_take(&mut Context::from_waker(noop)) {
                    return Poll::Ready(output);
                }
                slot.slot_poll_take(cx)
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
            let (slot, writer) = racing_writer();
            let _ = slot.slot_poll_take(&mut Context::from_waker(Waker::noop()));
            slot.slot_release();
            writer.join().unwrap();
        });
    }

    /// A taker letting go races the writer: the value is dropped exactly once (loom reports
    /// a leaked or twice-dropped `loom::sync::Arc`).
    #[test]
    fn loom_output_slot_release_races_the_fill() {
        loom::model(|| {
            let (slot, writer) = racing_writer();
            slot.slot_release();
            writer.join().unwrap();
        });
    }

    type Shared = Arc<Holder<loom::sync::Arc<u32>>>;

    /// A slot whose value is a `loom::sync::Arc` (loom reports one leaked or dropped twice),
    /// and a thread filling it.
    fn racing_writer() -> (Shared, loom::thread::JoinHandle<()>) {
        let slot: Shared = Arc::new(Holder::default());
        let writer = {
            let slot = slot.clone();
            loom::thread::spawn(move || slot.slot_fill(Ok(loom::sync::Arc::new(7))))
        };
        (slot, writer)
    }
}

#[cfg(all(test, not(loom)))]
mod wakers_running_code {
    //! Wakers whose clone, wake or drop run code (a writer filling mid-poll, a panic) at each
    //! point of the protocol (review 15). Run under Miri too.

    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::task::{RawWaker, RawWakerVTable};

    use super::*;

    const SC: std::sync::atomic::Ordering = std::sync::atomic::Ordering::SeqCst;

    type Hook = Box<dyn FnOnce() + Send>;

    /// A waker whose clone runs a hook once (or panics once), whose drop of a clone may
    /// panic once, and that counts its wakes and live clones.
    #[derive(Default)]
    struct Script {
        on_clone: std::sync::Mutex<Option<Hook>>,
        panic_on_clone: AtomicBool,
        panic_on_drop: AtomicBool,
        wakes: AtomicUsize,
        live: AtomicUsize,
    }

    static VTABLE: RawWakerVTable = RawWakerVTable::new(s_clone, s_wake, s_wake_by_ref, s_drop);

    fn script(data: *const ()) -> &'static Script {
        // SAFETY: `data` is an `Arc<Script>` kept alive by the test past every waker.
        unsafe { &*data.cast::<Script>() }
    }

    unsafe fn s_clone(data: *const ()) -> RawWaker {
        let this = script(data);
        if this.panic_on_clone.swap(false, SC) {
            panic!("clone panics");
        }
        let hook = this.on_clone.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        this.live.fetch_add(1, SC);
        RawWaker::new(data, &VTABLE)
    }

    unsafe fn s_wake(data: *const ()) {
        script(data).wakes.fetch_add(1, SC);
        unsafe { s_drop(data) }
    }

    unsafe fn s_wake_by_ref(data: *const ()) {
        script(data).wakes.fetch_add(1, SC);
    }

    unsafe fn s_drop(data: *const ()) {
        let this = script(data);
        this.live.fetch_sub(1, SC);
        if this.panic_on_drop.swap(false, SC) {
            panic!("drop panics");
        }
    }

    /// The test's own waker of `s`: counted as one live waker.
    fn waker_of(s: &Arc<Script>) -> Waker {
        s.live.fetch_add(1, SC);
        let data = Arc::as_ptr(s).cast::<()>();
        // SAFETY: the vtable only reads `data` as a `&Script`, which outlives every waker.
        unsafe { Waker::from_raw(RawWaker::new(data, &VTABLE)) }
    }

    fn table_len(h: &Holder<String>) -> usize {
        lock(&h.wakers.0).len()
    }

    /// A slot whose taker waits with `old`'s waker (`wo`), and `new`'s waker (`wn`) for the
    /// next poll.
    fn waiting_with_old() -> (Arc<Holder<String>>, Arc<Script>, Arc<Script>, Waker, Waker) {
        let slot = Arc::new(Holder::<String>::default());
        let (old, new) = (Arc::new(Script::default()), Arc::new(Script::default()));
        let (wo, wn) = (waker_of(&old), waker_of(&new));
        assert!(
            slot.slot_poll_take(&mut Context::from_waker(&wo))
                .is_pending()
        );
        (slot, old, new, wo, wn)
    }

    #[test]
    fn a_clone_that_panics_on_a_first_wait_changes_nothing() {
        let slot = Arc::new(Holder::<String>::default());
        let s = Arc::new(Script::default());
        let w = waker_of(&s);
        s.panic_on_clone.store(true, SC);
        let r = catch_unwind(AssertUnwindSafe(|| {
            slot.slot_poll_take(&mut Context::from_waker(&w))
        }));
        assert!(r.is_err());
        assert_eq!(table_len(&slot), 0);
        assert!(
            slot.slot_poll_take(&mut Context::from_waker(&w))
                .is_pending()
        );
        slot.slot_fill(Ok("v".into()));
        assert_eq!(s.wakes.load(SC), 1);
        assert_eq!(
            slot.slot_poll_take(&mut Context::from_waker(&w)),
            Poll::Ready(Ok("v".into()))
        );
        assert_eq!(table_len(&slot), 0);
        drop(w);
        assert_eq!(s.live.load(SC), 0, "every clone dropped");
    }

    #[test]
    fn a_clone_that_panics_on_a_replacement_keeps_the_old_waker() {
        let (slot, old, new, wo, wn) = waiting_with_old();
        new.panic_on_clone.store(true, SC);
        let r = catch_unwind(AssertUnwindSafe(|| {
            slot.slot_poll_take(&mut Context::from_waker(&wn))
        }));
        assert!(r.is_err());
        assert_eq!(table_len(&slot), 1);
        slot.slot_fill(Ok("v".into()));
        assert_eq!((old.wakes.load(SC), new.wakes.load(SC)), (1, 0));
        assert_eq!(
            slot.slot_poll_take(&mut Context::from_waker(&wn)),
            Poll::Ready(Ok("v".into()))
        );
        drop((wo, wn));
        assert_eq!((old.live.load(SC), new.live.load(SC)), (0, 0));
    }

    #[test]
    fn an_old_waker_whose_drop_panics_leaves_the_new_one_in_place() {
        let (slot, old, new, wo, wn) = waiting_with_old();
        drop(wo);
        old.panic_on_drop.store(true, SC); // the table's clone is the last one
        let r = catch_unwind(AssertUnwindSafe(|| {
            slot.slot_poll_take(&mut Context::from_waker(&wn))
        }));
        assert!(r.is_err(), "the old waker's drop panicked out of the poll");
        assert_eq!(table_len(&slot), 1);
        slot.slot_fill(Ok("v".into()));
        assert_eq!((old.wakes.load(SC), new.wakes.load(SC)), (0, 1));
        assert_eq!(
            slot.slot_poll_take(&mut Context::from_waker(&wn)),
            Poll::Ready(Ok("v".into()))
        );
        drop(wn);
        assert_eq!((old.live.load(SC), new.live.load(SC)), (0, 0));
    }

    /// The writer fills while the taker clones its waker for a first wait (the lock is not
    /// held): the taker sees `FILLED` after its insert and takes the waker out itself.
    #[test]
    fn a_writer_filling_during_a_first_wait_clone() {
        let slot = Arc::new(Holder::<String>::default());
        let s = Arc::new(Script::default());
        let w = waker_of(&s);
        let writer = slot.clone();
        *s.on_clone.lock().unwrap() = Some(Box::new(move || writer.slot_fill(Ok("v".into()))));
        let r = slot.slot_poll_take(&mut Context::from_waker(&w));
        assert_eq!(r, Poll::Ready(Ok("v".into())));
        assert_eq!(table_len(&slot), 0);
        assert_eq!(s.wakes.load(SC), 0);
        drop(w);
        assert_eq!(s.live.load(SC), 0);
    }

    /// As above, and the clone (taken straight back out of the table) panics when dropped:
    /// the value stays for the next poll, or for the release.
    #[test]
    fn a_writer_filling_during_a_first_wait_clone_whose_drop_panics() {
        for then_release in [false, true] {
            let slot = Arc::new(Holder::<String>::default());
            let s = Arc::new(Script::default());
            let w = waker_of(&s);
            let (writer, s2) = (slot.clone(), s.clone());
            *s.on_clone.lock().unwrap() = Some(Box::new(move || {
                writer.slot_fill(Ok("v".into()));
                s2.panic_on_drop.store(true, SC);
            }));
            let r = catch_unwind(AssertUnwindSafe(|| {
                slot.slot_poll_take(&mut Context::from_waker(&w))
            }));
            assert!(r.is_err());
            assert_eq!(table_len(&slot), 0);
            if then_release {
                slot.slot_release(); // Miri: the value is dropped here, once
            } else {
                let r = slot.slot_poll_take(&mut Context::from_waker(&w));
                assert_eq!(r, Poll::Ready(Ok("v".into())));
            }
            drop(w);
            assert_eq!(s.live.load(SC), 0);
        }
    }

    /// The writer fills while the taker clones a replacement: it wakes the old waker; the
    /// taker finds the table empty for its key and takes the value.
    #[test]
    fn a_writer_filling_during_a_replacement_clone() {
        let (slot, old, new, wo, wn) = waiting_with_old();
        let writer = slot.clone();
        *new.on_clone.lock().unwrap() = Some(Box::new(move || writer.slot_fill(Ok("v".into()))));
        let r = slot.slot_poll_take(&mut Context::from_waker(&wn));
        assert_eq!(r, Poll::Ready(Ok("v".into())));
        assert_eq!((old.wakes.load(SC), new.wakes.load(SC)), (1, 0));
        assert_eq!(table_len(&slot), 0);
        drop((wo, wn));
        assert_eq!((old.live.load(SC), new.live.load(SC)), (0, 0));
    }

    /// A wake that polls the woken taker at once (an executor polling inline), and one that
    /// makes another slot of the table wait: the writer holds no lock while it wakes.
    #[test]
    fn a_wake_that_polls_takers_of_the_table() {
        struct Inline {
            slot: Arc<Holder<String>>,
            other: Arc<Holder<String>>,
            got: std::sync::Mutex<Option<Poll<Result<String, u8>>>>,
        }
        impl std::task::Wake for Inline {
            fn wake(self: Arc<Self>) {
                let noop = Waker::noop();
                let got = self.slot.slot_poll_take(&mut Context::from_waker(noop));
                *self.got.lock().unwrap() = Some(got);
                assert!(
                    self.other
                        .slot_poll_take(&mut Context::from_waker(noop))
                        .is_pending()
                );
            }
        }
        let slot = Arc::new(Holder::<String>::default());
        let other = Arc::new(slot.sharing());
        let inline = Arc::new(Inline {
            slot: slot.clone(),
            other: other.clone(),
            got: Default::default(),
        });
        let w = Waker::from(inline.clone());
        assert!(
            slot.slot_poll_take(&mut Context::from_waker(&w))
                .is_pending()
        );
        drop(w);
        let (done, finished) = std::sync::mpsc::channel();
        let filler = slot.clone();
        std::thread::spawn(move || {
            filler.slot_fill(Ok("v".into()));
            done.send(()).unwrap();
        });
        finished
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("hang: the fill did not return");
        assert_eq!(
            *inline.got.lock().unwrap(),
            Some(Poll::Ready(Ok("v".into())))
        );
        assert_eq!(table_len(&slot), 1, "only `other`'s waker");
        other.slot_release();
        assert_eq!(table_len(&slot), 0);
    }
}
