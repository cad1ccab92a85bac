//! A nursery's child registry: how many children are alive, whether the nursery still
//! accepts children, which children can be reached to abort them, the failures and panics
//! they reported, and the adoption handoff (SPEC N9).
//!
//! Written against [`crate::sync`] and generic over the abort handle, so the close/spawn
//! handoff can be model-checked with loom like the scope tree.
//!
//! An unnamed child that finishes in its first poll (most of them, in a fan-out of short
//! tasks) takes no lock unless it is the last one alive: spawning it and ending it are one
//! atomic read-modify-write each on the registry's word, which counts the children without
//! a slot. Only a child that
//! parks (its first poll returned `Pending`: it moves from the word to a slot), a named or
//! started child (from its spawn), a blocking child and an adopted nursery hold a slot, the
//! way for `abort_all` and the task tree to reach them; their ends take the lock and leave
//! the word alone.
//!
//! Invariants (DESIGN.md, "Nurseries"):
//!
//! N-1. `live` is the slots (running children and adopted nurseries not yet done) plus the
//!      children counted in the word (entered, no slot, not finished); a child is finished
//!      once its future has been dropped (completed or aborted), so `live == 0` means no
//!      child future is alive (SPEC N1). A child moves from the word to a slot under the
//!      lock, so under the lock `live` is exact.
//! N-2. The nursery closes only when `live == 0`: under the lock, with no slot, closing is
//!      a compare-and-swap from "open, none counted" to "closed" and entering one from
//!      "open, k counted" to "open, k + 1", on the same word; a registration with a slot
//!      checks "open" under the lock. No child can be added to a closed nursery, none is
//!      lost by a close.
//! N-3. `abort_all` sets `ABORTED` under the lock and then aborts every child holding a
//!      slot. A child takes its slot when it parks, under the lock, and reads `ABORTED`
//!      there: set, it aborts itself; not set, `abort_all` finds its slot. A child that has
//!      not parked reads `ABORTED` at its first poll and, if set, aborts itself instead of
//!      running (one already in its first poll runs on until it parks, as tokio's abort
//!      lets a running task finish its poll). A child registered with a slot learns the
//!      bit at registration, under the lock. So each `abort_all` asks each child to abort
//!      exactly once (a second `abort_all` asks again: asking is idempotent).
//!      Its abort handle is stored by its spawner after the spawn, without this lock; the
//!      asker and the spawner meet on one read-modify-write each of the child's own state
//!      (the spawner's "handle stored", the asker's "abort requested"), so exactly one of
//!      them sees the other and aborts the task.
//! N-4. Once orphaned (wait-mode drop), a registry keeps no report: the ones it had and every
//!      later one go to its adopter, under the lock that decides it, and the adopter learns
//!      exactly once that the last child finished: a child's end that may be the last
//!      (a slot removed, or the word's count brought to zero) checks `live == 0` under the
//!      lock and only then takes the adopter; `orphan` closes under the lock and reads
//!      `live` there, so it either sees the last child gone (and tells the adopter itself)
//!      or leaves the adopter where the end of the last child alive then finds it. The
//!      nursery's waker and the outlet's are stored and taken the same way.
//! N-5. Nothing that may run a child's drop (aborting a task, which tokio may carry out
//!      inline during runtime shutdown) or user code (waking) happens under the lock: a
//!      child's end takes this lock.
//! N-6. No report is kept where nobody will take it: once the nursery took its last
//!      reports (`take_reports`) or its future is gone (`retire`), a failure or panic with
//!      no adopter to go to is handed back `Unclaimed`, for the report hook.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::task::{Poll, Waker};

use crate::keep_waker::poll_or_keep;
#[cfg(not(loom))]
use crate::nursery::catch_waker_panic;
use crate::pages::Pages;

use crate::sync::{AtomicUsize, Mutex, MutexGuard, Ordering, lock};

/// Under loom only the core is built (no nursery, no stderr line): the models' wakers do
/// not panic.
#[cfg(loom)]
fn catch_waker_panic<R>(_: impl FnOnce() -> String, step: impl FnOnce() -> R) -> Option<R> {
    Some(step())
}

/// A nursery (or the orphan registry) that takes over the children of a nursery whose
/// future was dropped in wait mode (SPEC N9).
pub(crate) trait Adopter<L>: Send + Sync {
    /// Registers an orphaned nursery's remaining children as one adoptee, with the way to
    /// abort them; `Closed` if this adopter is closing (the handoff then falls through to the
    /// next one). `true` with the key when this adopter has already aborted its own children
    /// (its grace ran out): the adoptee must abort too (SPEC N7's cascade).
    fn adopt(&self, stop: Arc<dyn StopAll>) -> Result<(usize, bool), Closed>;
    /// The adoptee's last child finished.
    fn adoptee_finished(&self, key: usize);
    /// A failure (its `Debug` text) or panic of an adopted child: reported, never a trigger
    /// for the adopter's fail-fast.
    fn orphan_report(&self, report: OrphanReport<L>);
    /// How the task-tree snapshot shows this adopter (SPEC O2).
    fn describe(&self) -> crate::node::Description;
    /// The adopter this one hands its children to if it was itself orphaned: a handoff
    /// refused by a closed nursery goes on there (SPEC N9).
    fn successor(&self) -> Option<Arc<dyn Adopter<L>>>;
    /// The scopes of the nurseries adopted here, for the task tree (SPEC O2).
    fn adopted_scopes(&self) -> Vec<Arc<crate::node::Node>> {
        Vec::new()
    }
    /// How the task tree shows one of this nursery's children (SPEC O2).
    fn describe_child(&self, child: crate::node::ScopeId) -> Option<crate::node::Description> {
        let _ = child;
        None
    }
    /// The children running without a scope of their own (in this nursery's), for the
    /// task tree (SPEC O2).
    fn children_without_scope(&self) -> Vec<(crate::node::ScopeId, crate::node::Description)> {
        Vec::new()
    }
}

/// Aborts every child of an orphaned nursery and, in turn, of what it adopted (SPEC N7:
/// past an ancestor's grace, abort cascades to every descendant whatever its drop mode).
pub(crate) trait StopAll: Send + Sync {
    /// Aborts; returns the names (or scope ids) of what it aborted, for its adopter's report.
    /// `grace_expired`: the adopter's grace ran out (SPEC N7's cascade), rather than its
    /// future being dropped in abort mode (N8), which protected work is not told about (C1).
    fn stop_all(&self, grace_expired: bool) -> Vec<String>;
    /// The adopted nursery's scope, for the task tree.
    fn scope(&self) -> Option<Arc<crate::node::Node>>;
}

/// What an adopted child reports to its adopter.
pub(crate) enum OrphanReport<L> {
    Failure { label: L, error: String },
    Panic(Panic<L>),
}

/// Where a failure or panic went.
pub(crate) enum Recorded<T, L> {
    /// Kept, and it is the first: it triggers the cancellation (fail-fast).
    First,
    /// Kept.
    Later,
    /// The nursery is orphaned: forward it to this adopter (N-4).
    Orphaned(T, Arc<dyn Adopter<L>>),
    /// The nursery took its last reports (it returned, or its future was dropped with no
    /// one to adopt its children): nobody would take this one from here, so the caller
    /// reports it now (N-6).
    Unclaimed(T),
}

/// A failure or a panic, in the order they happened.
pub(crate) enum Incident<F, L> {
    Failure(F),
    Panic(Panic<L>),
}

/// A panic payload and who panicked.
pub(crate) struct Panic<L> {
    pub(crate) label: L,
    pub(crate) payload: Box<dyn Any + Send>,
}

pub(crate) struct Registry<A, F, L> {
    /// `counted << 2 | ABORTED | CLOSED`: the children alive without a slot, and the
    /// nursery's two bits (N-1, N-2, N-3).
    word: AtomicUsize,
    state: Mutex<State<A, F, L>>,
}

/// The nursery accepts no more children.
const CLOSED: usize = 1;
/// Its children were aborted (grace expired, abort drop): so is whatever enters or parks
/// later (N-3).
const ABORTED: usize = 2;
/// One child counted in the word.
const ONE: usize = 4;

struct State<A, F, L> {
    /// One per parked child, blocking child or adopted nursery (N-3).
    slots: Pages<Slot<A>>,
    /// Failures and panics not yet taken, oldest first.
    incidents: VecDeque<Incident<F, L>>,
    /// How many were ever reported (the first one triggers fail-fast).
    reported: usize,
    /// The nursery's task, waiting for `live` to reach zero.
    waiter: Option<Waker>,
    /// The tasks waiting on the outlet for the next incident (SPEC N5): any clone of the
    /// nursery's handle may wait there, all are woken. A waiter removes its entry when it
    /// stops waiting, so abandoned waits leave nothing behind.
    outlet: slab::Slab<Waker>,
    /// Bumped each time every outlet waiter is woken (their entries taken): a registration
    /// from an earlier epoch is gone, and its key may have been reused.
    outlet_epoch: u64,
    /// Set when the nursery's future was dropped in wait mode (N-4).
    adopter: Option<(Arc<dyn Adopter<L>>, usize)>,
    /// The nursery took its last reports, or its future is gone (N-6).
    retired: bool,
}

enum Slot<A> {
    /// A child that can be reached, and its place in spawn order (see `spawn_order`): the
    /// low 32 bits of its `order`, which keep the slot, tag included, at three words.
    Running(A, u32),
    /// An orphaned nursery this one adopted (N-4), and how to abort its children.
    Adoptee(Arc<dyn StopAll>),
}

/// The nursery no longer accepts children.
#[derive(Debug)]
pub(crate) struct Closed;

/// A registry's numbers, for the task tree (SPEC O2).
pub(crate) struct Counts {
    /// Children alive (N-1).
    pub(crate) running: usize,
    /// Of those, the ones without a slot: not polled yet, or in their first poll.
    pub(crate) unlisted: usize,
    /// Adopted nurseries not yet done.
    pub(crate) adopted: usize,
    pub(crate) open: bool,
    /// Failures and panics not yet taken.
    pub(crate) incidents: usize,
}

/// Takes every outlet waiter out, to be woken once the lock is released.
fn take_outlet<A, F, L>(state: &mut State<A, F, L>) -> Vec<Waker> {
    state.outlet_epoch += 1;
    state.outlet.drain().collect()
}

/// Who waits for the last child to finish (N-4), to be told once the lock is released.
struct Last<L> {
    waiter: Option<Waker>,
    outlet: Vec<Waker>,
    adopter: Option<(Arc<dyn Adopter<L>>, usize)>,
}

impl<L> Last<L> {
    /// Tells each of them even if a waker panics (the adopter's count must drop, or it
    /// waits for ever), then resumes the first panic.
    fn tell(self) {
        let mut first = None;
        let mut step = |tell: &mut dyn FnMut()| {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(tell)) {
                first.get_or_insert(payload);
            }
        };
        let mut waiter = self.waiter;
        step(&mut || waiter.take().into_iter().for_each(Waker::wake));
        let mut outlet = self.outlet.into_iter();
        while outlet.len() > 0 {
            step(&mut || outlet.by_ref().for_each(Waker::wake));
        }
        let mut adopter = self.adopter;
        step(&mut || {
            if let Some((adopter, key)) = adopter.take() {
                adopter.adoptee_finished(key);
            }
        });
        if let Some(payload) = first {
            resume_unwind(payload);
        }
    }
}

impl<A, F, L> Registry<A, F, L> {
    pub(crate) fn new() -> Self {
        Registry {
            word: AtomicUsize::new(0),
            state: Mutex::new(State {
                slots: Pages::new(),
                incidents: VecDeque::new(),
                reported: 0,
                waiter: None,
                outlet: slab::Slab::new(),
                outlet_epoch: 0,
                adopter: None,
                retired: false,
            }),
        }
    }

    /// Counts a child about to be spawned, unless the nursery has closed (N-2). The child
    /// has no slot until it parks ([`park`](Self::park)), and reads at its first poll
    /// whether the nursery aborted its children ([`is_aborted`](Self::is_aborted)).
    pub(crate) fn enter(&self) -> Result<(), Closed> {
        let mut word = self.word.load(Ordering::Relaxed);
        loop {
            if word & CLOSED != 0 {
                return Err(Closed);
            }
            match self.word.compare_exchange_weak(
                word,
                word + ONE,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => word = now,
            }
        }
    }

    /// Registers a child about to be spawned with a slot from the start (a named or started
    /// child, which the task tree shows at once, or a blocking child, which never parks),
    /// holding the stopper `make` returns for its key (N-2). `true` with the key when the
    /// nursery has already aborted its children: the spawner then stops this one itself
    /// (N-3).
    ///
    /// `order` is the child's place in spawn order (its scope id: ids increase as a thread
    /// makes them), by which `abort_all` aborts.
    pub(crate) fn register(
        &self,
        order: u64,
        make: impl FnOnce(usize) -> A,
    ) -> Result<(usize, bool), Closed> {
        let mut state = lock(&self.state);
        // CLOSED and ABORTED are set under the lock: read here, they hold until it is released.
        let word = self.word.load(Ordering::Relaxed);
        if word & CLOSED != 0 {
            return Err(Closed);
        }
        let key = state.slots.next_key();
        let inserted = state.slots.insert(Slot::Running(make(key), order as u32));
        debug_assert_eq!(inserted, key);
        Ok((key, word & ABORTED != 0))
    }

    /// A child entered with [`enter`](Self::enter) parked for the first time: it moves from
    /// the word's count to a slot holding `stopper`, so `abort_all` reaches it. `true` with
    /// the key when the nursery has already aborted its children: the child then aborts
    /// itself (N-3). `order` is as for [`register`](Self::register).
    pub(crate) fn park(&self, order: u64, stopper: A) -> (usize, bool) {
        let mut state = lock(&self.state);
        let key = state.slots.insert(Slot::Running(stopper, order as u32));
        let word = self.word.fetch_sub(ONE, Ordering::AcqRel);
        (key, word & ABORTED != 0)
    }

    /// Whether the nursery aborted its children: a child that has not parked yet reads it
    /// at its first poll, and aborts itself instead of running (N-3).
    #[inline]
    pub(crate) fn is_aborted(&self) -> bool {
        self.word.load(Ordering::Acquire) & ABORTED != 0
    }

    /// The first running child's stopper for which `f` says something (among those with a
    /// slot: a child that has not parked yet has none).
    pub(crate) fn find<R>(&self, f: impl Fn(&A) -> Option<R>) -> Option<R> {
        lock(&self.state)
            .slots
            .iter()
            .find_map(|(_, slot)| match slot {
                Slot::Running(stopper, _) => f(stopper),
                _ => None,
            })
    }

    /// What `f` says of each running child with a slot.
    pub(crate) fn collect<R>(&self, f: impl Fn(&A) -> Option<R>) -> Vec<R> {
        self.collect_counting(f).0
    }

    /// What `f` says of each running child with a slot, and how many run without one,
    /// read together under the lock (a child moves from one to the other under it).
    pub(crate) fn collect_counting<R>(&self, f: impl Fn(&A) -> Option<R>) -> (Vec<R>, usize) {
        let state = lock(&self.state);
        let listed = state
            .slots
            .iter()
            .filter_map(|(_, slot)| match slot {
                Slot::Running(stopper, _) => f(stopper),
                _ => None,
            })
            .collect();
        (listed, Self::counted(self.word.load(Ordering::Acquire)))
    }

    /// Whether failures or panics are waiting to be reported.
    pub(crate) fn has_incidents(&self) -> bool {
        !lock(&self.state).incidents.is_empty()
    }

    /// The adopter this orphaned registry hands its children to, if it was orphaned.
    pub(crate) fn successor(&self) -> Option<Arc<dyn Adopter<L>>> {
        lock(&self.state)
            .adopter
            .as_ref()
            .map(|(adopter, _)| adopter.clone())
    }

    /// The scopes of the orphaned nurseries adopted here (SPEC O2 shows them).
    pub(crate) fn adopted_scopes(&self) -> Vec<Arc<crate::node::Node>> {
        lock(&self.state)
            .slots
            .iter()
            .filter_map(|(_, slot)| match slot {
                Slot::Adoptee(stop) => stop.scope(),
                _ => None,
            })
            .collect()
    }

    /// A child's future has been dropped (N-1), or an adoptee's last child finished: `slot`
    /// is its key if it held one. Wakes the nursery, or tells the adopter, when it was the
    /// last. A child without a slot takes no lock unless the word's count reached zero.
    pub(crate) fn finished(&self, slot: Option<usize>) {
        let (last, removed) = match slot {
            None => {
                if Self::counted(self.word.fetch_sub(ONE, Ordering::AcqRel)) != 1 {
                    return;
                }
                (self.take_last(&mut lock(&self.state)), None)
            }
            Some(key) => {
                let mut state = lock(&self.state);
                let removed = state
                    .slots
                    .try_remove(key)
                    .expect("a child slot finishes once");
                (self.take_last(&mut state), Some(removed))
            }
        };
        // Dropped once the lock is released: a stopper may hold the last reference to
        // anything (N-5).
        drop(removed);
        if let Some(last) = last {
            last.tell();
        }
    }

    /// If no child is alive, who waits for that, taken under the lock to be told after it:
    /// a spawn may have entered since the caller's decrement, and an orphaning then left
    /// the adopter for that child (N-4).
    fn take_last(&self, state: &mut State<A, F, L>) -> Option<Last<L>> {
        if !self.none_alive(state) {
            return None;
        }
        Some(Last {
            waiter: state.waiter.take(),
            outlet: take_outlet(state),
            adopter: state.adopter.take(),
        })
    }

    /// `live == 0`, exact under the lock (N-1).
    fn none_alive(&self, state: &State<A, F, L>) -> bool {
        state.slots.is_empty() && Self::counted(self.word.load(Ordering::Acquire)) == 0
    }

    /// The children without a slot, in a value of the word.
    fn counted(word: usize) -> usize {
        word >> 2
    }

    /// Records a failure (N4), or hands it back for the adopter (N-4).
    pub(crate) fn fail(&self, failure: F) -> Recorded<F, L> {
        let state = lock(&self.state);
        if let Some((adopter, _)) = &state.adopter {
            return Recorded::Orphaned(failure, adopter.clone());
        }
        if state.retired {
            return Recorded::Unclaimed(failure);
        }
        Self::record(state, Incident::Failure(failure))
    }

    /// Records a panic (N6), or hands it back for the adopter (N-4).
    pub(crate) fn panicked(&self, label: L, payload: Box<dyn Any + Send>) -> Recorded<Panic<L>, L> {
        let state = lock(&self.state);
        let panic = Panic { label, payload };
        if let Some((adopter, _)) = &state.adopter {
            return Recorded::Orphaned(panic, adopter.clone());
        }
        if state.retired {
            return Recorded::Unclaimed(panic);
        }
        Self::record(state, Incident::Panic(panic))
    }

    fn record<T>(
        mut state: MutexGuard<'_, State<A, F, L>>,
        incident: Incident<F, L>,
    ) -> Recorded<T, L> {
        state.incidents.push_back(incident);
        state.reported += 1;
        let first = state.reported == 1;
        let outlet = take_outlet(&mut state);
        drop(state);
        // A child's end on nobody's behalf: a waker's panic must neither skip the other
        // waiters nor take `First` (the fail-fast) from the caller.
        for waker in outlet {
            catch_waker_panic(
                || "when a failure was told to the outlet's waiters".to_string(),
                || waker.wake(),
            );
        }
        if first {
            Recorded::First
        } else {
            Recorded::Later
        }
    }

    /// The outlet (SPEC N5): the oldest incident not yet taken; `None` once no child is
    /// alive and none is left; otherwise waits.
    /// `waiting` is the caller's registration, kept between polls and given to
    /// [`leave_outlet`](Self::leave_outlet) when it stops waiting.
    pub(crate) fn poll_incident(
        &self,
        waker: &Waker,
        waiting: &mut Option<(u64, usize)>,
    ) -> Poll<Option<Incident<F, L>>> {
        // The waker is cloned outside the lock (invariant 5): when it must be kept and no
        // clone is at hand, the lock is released for the clone and everything looked at again.
        let mut spare = None;
        loop {
            let mut state = lock(&self.state);
            let ready = match state.incidents.pop_front() {
                Some(incident) => Some(Some(incident)),
                // Read under the lock, after which the last child's end takes it (N-4).
                None if self.none_alive(&state) => Some(None),
                None => None,
            };
            if let Some(ready) = ready {
                let left = Self::unregister(&mut state, waiting);
                drop(state);
                drop((left, spare));
                return Poll::Ready(ready);
            }
            let epoch = state.outlet_epoch;
            // An entry of this epoch is removed only by its waiter (or by waking them all,
            // which starts a new epoch).
            let entry = match *waiting {
                Some((at, key)) if at == epoch => state.outlet.get_mut(key),
                _ => None,
            };
            let stale = match (entry, spare.take()) {
                (Some(entry), spare) if entry.will_wake(waker) => spare,
                (Some(entry), Some(new)) => Some(std::mem::replace(entry, new)),
                (None, Some(new)) => {
                    *waiting = Some((epoch, state.outlet.insert(new)));
                    None
                }
                (_, None) => {
                    drop(state);
                    spare = Some(waker.clone());
                    continue;
                }
            };
            drop(state);
            drop(stale);
            return Poll::Pending;
        }
    }

    /// A waiter on the outlet stops waiting: its entry, if still there, goes.
    pub(crate) fn leave_outlet(&self, waiting: &mut Option<(u64, usize)>) {
        if waiting.is_none() {
            return;
        }
        let left = Self::unregister(&mut lock(&self.state), waiting);
        drop(left);
    }

    fn unregister(state: &mut State<A, F, L>, waiting: &mut Option<(u64, usize)>) -> Option<Waker> {
        match waiting.take() {
            Some((epoch, key)) if epoch == state.outlet_epoch => state.outlet.try_remove(key),
            _ => None,
        }
    }

    /// Registers an orphaned nursery as one adoptee of this one (N9).
    pub(crate) fn adopt(&self, stop: Arc<dyn StopAll>) -> Result<(usize, bool), Closed> {
        let mut state = lock(&self.state);
        // CLOSED and ABORTED are set under the lock: read here, they hold until it is released.
        let word = self.word.load(Ordering::Relaxed);
        if word & CLOSED != 0 {
            return Err(Closed);
        }
        Ok((state.slots.insert(Slot::Adoptee(stop)), word & ABORTED != 0))
    }

    /// Hands the live children to `adopter` (N-4). Returns the incidents kept so far, for
    /// the adopter, and whether the children had all finished already (then the adopter must
    /// be told at once).
    pub(crate) fn orphan(
        &self,
        adopter: Arc<dyn Adopter<L>>,
        key: usize,
    ) -> (Vec<Incident<F, L>>, bool) {
        let mut state = lock(&self.state);
        self.word.fetch_or(CLOSED, Ordering::AcqRel);
        let incidents = state.incidents.drain(..).collect();
        let done = self.none_alive(&state);
        if !done {
            state.adopter = Some((adopter, key));
        }
        (incidents, done)
    }

    /// Closes the nursery if no child is alive; otherwise remembers `waker` to be woken
    /// when the last one finishes (N-2).
    pub(crate) fn try_close(&self, waker: &Waker) -> bool {
        let closed = poll_or_keep(
            &self.state,
            waker,
            |state| {
                let mut word = self.word.load(Ordering::Acquire);
                while state.slots.is_empty() && Self::counted(word) == 0 {
                    match self.word.compare_exchange_weak(
                        word,
                        word | CLOSED,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Some(state.waiter.take()),
                        Err(now) => word = now,
                    }
                }
                None
            },
            // Kept under the lock, after which the last child's end takes it (N-4).
            |state| &mut state.waiter,
        );
        // The waker the closed nursery no longer needs is dropped here, after the lock: a
        // waker may run its executor's code when dropped (N-5).
        closed.is_ready()
    }

    /// The nursery's future is gone: a report arriving from now on, with no adopter to
    /// forward it to, is `Unclaimed` (N-6).
    pub(crate) fn retire(&self) {
        lock(&self.state).retired = true;
    }

    /// Closes the nursery to new children whatever is alive (the nursery's future is gone).
    pub(crate) fn close(&self) {
        let _state = lock(&self.state);
        self.word.fetch_or(CLOSED, Ordering::AcqRel);
    }

    pub(crate) fn is_open(&self) -> bool {
        self.word.load(Ordering::Acquire) & CLOSED == 0
    }

    /// Children (and adopted nurseries) alive (N-1).
    pub(crate) fn live(&self) -> usize {
        let state = lock(&self.state);
        state.slots.len() + Self::counted(self.word.load(Ordering::Acquire))
    }

    /// What the task tree says of the nursery.
    pub(crate) fn counts(&self) -> Counts {
        let state = lock(&self.state);
        let adopted = state
            .slots
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Adoptee(_)))
            .count();
        let word = self.word.load(Ordering::Acquire);
        let unlisted = Self::counted(word);
        Counts {
            running: state.slots.len() + unlisted - adopted,
            unlisted,
            adopted,
            open: word & CLOSED == 0,
            incidents: state.incidents.len(),
        }
    }

    /// Calls `abort` on every running child's stopper, and `later` on those it declines (a
    /// blocking child is told rather than aborted), all after the lock is released: on a
    /// runtime that is shutting down, tokio may drop an aborted task's future inline, and
    /// the child's end takes this lock. Then aborts every adopted nursery's children in turn
    /// (the cascade), and returns what those named. Children that have not parked, later
    /// adoptions and later spawns abort themselves (N-3).
    pub(crate) fn abort_all(
        &self,
        grace_expired: bool,
        abort: impl Fn(&A) -> bool,
        later: impl Fn(&A),
    ) -> Vec<String>
    where
        A: Clone,
    {
        let (stoppers, adopted) = {
            let state = lock(&self.state);
            // Under the lock, so a child parking now either sees it or is found below (N-3).
            self.word.fetch_or(ABORTED, Ordering::AcqRel);
            let (mut stoppers, mut adopted) = (Vec::with_capacity(state.slots.len()), Vec::new());
            for (_, slot) in state.slots.iter() {
                match slot {
                    Slot::Running(stopper, order) => {
                        stoppers.push((*order, Some(stopper.clone())));
                    }
                    Slot::Adoptee(stop) => adopted.push(stop.clone()),
                }
            }
            (stoppers, adopted)
        };
        // Each stopper is dropped right after its use, while its cell is still in cache: a
        // separate pass to drop them costs a cache miss per child in a large nursery.
        let stop = |stopper: A| {
            if !abort(&stopper) {
                later(&stopper);
            }
        };
        match spawn_order(&stoppers) {
            None => stoppers
                .into_iter()
                .flat_map(|(_, stopper)| stopper)
                .for_each(stop),
            Some(order) => {
                let mut stoppers = stoppers;
                for i in order {
                    stop(
                        stoppers[i as usize]
                            .1
                            .take()
                            .expect("each child is aborted once"),
                    );
                }
            }
        }
        adopted
            .iter()
            .flat_map(|stop| stop.stop_all(grace_expired))
            .collect()
    }

    /// The failures and the panics not taken from the outlet, each in the order they
    /// happened.
    pub(crate) fn take_reports(&self) -> (Vec<F>, Vec<Panic<L>>) {
        let mut state = lock(&self.state);
        state.retired = true;
        let (mut failures, mut panics) = (Vec::new(), Vec::new());
        for incident in state.incidents.drain(..) {
            match incident {
                Incident::Failure(failure) => failures.push(failure),
                Incident::Panic(panic) => panics.push(panic),
            }
        }
        (failures, panics)
    }
}
/// The order in which `abort_all` aborts `stoppers`: spawn order (by their `order`), as
/// indices, or `None` if they are in that order already (one thread polled them). tokio
/// drops each aborted task in the order it was aborted and unlinks it from its task list,
/// which is in spawn order, touching its two neighbours there. Children take their slots in
/// the order they park, which two workers interleave; aborting in that order made a million
/// parked children on multi_thread 1.3x slower to abort (DESIGN.md, "Nursery budgets").
/// Dense orders (a nursery's children spawned from one thread) are placed in one pass over
/// a table of `u32` indices; sparse ones are sorted.
///
/// An order is the low 32 bits of a scope id: a hint, not an identity. Two children whose
/// ids are 2^32 apart share one, and ids that wrap past 2^32 sort out of spawn order; either
/// costs speed only: a shared order sends the placement to the sort, and every index is
/// returned once whatever the orders are.
fn spawn_order<A>(stoppers: &[(u32, Option<A>)]) -> Option<Vec<u32>> {
    if stoppers.is_sorted_by_key(|(order, _)| *order) {
        return None;
    }
    let index = |i: usize| u32::try_from(i).expect("fewer than 2^32 children with a slot");
    let sorted = || {
        let mut sorted: Vec<u32> = (0..stoppers.len()).map(index).collect();
        sorted.sort_unstable_by_key(|&i| stoppers[i as usize].0);
        Some(sorted)
    };
    let (min, max) = stoppers
        .iter()
        .fold((u32::MAX, 0), |(min, max), (order, _)| {
            (min.min(*order), max.max(*order))
        });
    let span = (max - min) as usize;
    if span / 4 > stoppers.len() {
        return sorted();
    }
    let mut at = vec![u32::MAX; span + 1];
    for (i, (order, _)) in stoppers.iter().enumerate() {
        let place = &mut at[(order - min) as usize];
        if *place != u32::MAX {
            return sorted(); // two children share an order
        }
        *place = index(i);
    }
    Some(at.into_iter().filter(|&i| i != u32::MAX).collect())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::spawn_order;

    fn stoppers(orders: &[u32]) -> Vec<(u32, Option<()>)> {
        orders.iter().map(|&order| (order, Some(()))).collect()
    }

    fn ordered(orders: &[u32]) -> Vec<u32> {
        let stoppers = stoppers(orders);
        match spawn_order(&stoppers) {
            None => orders.to_vec(),
            Some(order) => order.iter().map(|&i| stoppers[i as usize].0).collect(),
        }
    }

    #[test]
    fn spawn_order_keeps_ordered_stoppers_as_they_are() {
        assert!(spawn_order(&stoppers(&[3, 5, 9, 10])).is_none());
        assert!(spawn_order::<()>(&[]).is_none());
    }

    #[test]
    fn spawn_order_places_dense_orders_and_sorts_sparse_ones() {
        // Dense: two workers' interleaving of one spawner's children.
        assert_eq!(ordered(&[7, 3, 8, 4, 5, 9, 6]), [3, 4, 5, 6, 7, 8, 9]);
        // Sparse: children spawned from threads far apart in scope ids.
        assert_eq!(
            ordered(&[1_000_000, 2, 50_000, 1]),
            [1, 2, 50_000, 1_000_000]
        );
    }

    #[test]
    fn spawn_order_returns_every_stopper_once_when_orders_are_shared() {
        // Scope ids 2^32 apart share an order (the low 32 bits): all are still aborted.
        let orders = [5, 3, 5, 4, 3];
        let stoppers = stoppers(&orders);
        let mut order = spawn_order(&stoppers).expect("out of order");
        assert_eq!(
            order
                .iter()
                .map(|&i| orders[i as usize])
                .collect::<Vec<_>>(),
            [3, 3, 4, 5, 5]
        );
        order.sort_unstable();
        assert_eq!(order, [0, 1, 2, 3, 4]);
    }
}

/// Model checks of the registry's handoffs (SPEC R1):
/// `RUSTFLAGS="--cfg loom" cargo test --lib --release loom_`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::{AtomicBool, AtomicU8, AtomicU64, Ordering};
    use loom::thread;

    type Plain = Registry<(), (), ()>;

    /// The nursery's end: waits (parked on a loom `Notify`) until no child is alive and
    /// closes. A lost wake-up deadlocks the model.
    fn close_when_empty<A, F, L>(registry: &Registry<A, F, L>) {
        crate::sync::block_on(std::future::poll_fn(|cx| {
            if registry.try_close(cx.waker()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }));
    }

    /// N-2: a spawn entering (no slot) or registering (a slot) while the nursery closes
    /// either lands before the close (and is waited for) or is refused; never a child alive
    /// in a closed nursery.
    #[test]
    fn loom_registering_races_with_closing() {
        for with_slot in [false, true] {
            loom::model(move || {
                let registry = Arc::new(Plain::new());
                let spawner = {
                    let registry = registry.clone();
                    thread::spawn(move || {
                        let entered = if with_slot {
                            registry.register(0, |_| ()).map(|(key, _)| Some(key))
                        } else {
                            registry.enter().map(|()| None)
                        };
                        match entered {
                            Ok(slot) => {
                                registry.finished(slot);
                                true
                            }
                            Err(Closed) => false,
                        }
                    })
                };
                let closed = registry.try_close(futures::task::noop_waker_ref());
                let registered = spawner.join().unwrap();
                if closed {
                    assert_eq!(registry.live(), 0);
                }
                assert!(
                    registered || closed,
                    "a refusal means the nursery had closed"
                );
                assert_eq!(registry.live(), 0);
            });
        }
    }

    /// N-4: a child without a slot ends (its decrement, then the lock) while another one is
    /// spawned and the nursery is orphaned in between: the adopter is told only when the
    /// second one ends, never while it runs.
    #[test]
    fn loom_an_end_racing_with_a_spawn_and_the_orphaning_does_not_tell_early() {
        loom::model(|| {
            let registry = Arc::new(Plain::new());
            registry.enter().unwrap();
            let ending = {
                let registry = registry.clone();
                thread::spawn(move || registry.finished(None))
            };
            let spawned = registry.enter().is_ok();
            let adopter = Arc::new(Counting(AtomicU64::new(0)));
            let (_, done) = registry.orphan(adopter.clone(), 7);
            if done {
                adopter.adoptee_finished(7);
            }
            ending.join().unwrap();
            if spawned {
                assert_eq!(
                    adopter.0.load(Ordering::SeqCst),
                    0,
                    "told while a child is alive"
                );
                registry.finished(None);
            }
            assert_eq!(adopter.0.load(Ordering::SeqCst), 1);
        });
    }

    /// N-1, N-4: one child parks (it moves from the word to a slot) and ends, another ends
    /// without a slot, while the nursery waits for both: it is woken once neither is alive
    /// (a lost wake-up deadlocks the model), never before.
    #[test]
    fn loom_a_child_parking_and_another_ending_race_with_the_closing_nursery() {
        loom::model(|| {
            let registry = Arc::new(Plain::new());
            registry.enter().unwrap();
            registry.enter().unwrap();
            let ended = Arc::new(AtomicU64::new(0));
            let parking = {
                let (registry, ended) = (registry.clone(), ended.clone());
                thread::spawn(move || {
                    let (key, _) = registry.park(0, ());
                    ended.fetch_add(1, Ordering::SeqCst);
                    registry.finished(Some(key));
                })
            };
            let ending = {
                let (registry, ended) = (registry.clone(), ended.clone());
                thread::spawn(move || {
                    ended.fetch_add(1, Ordering::SeqCst);
                    registry.finished(None);
                })
            };
            close_when_empty(&registry);
            assert_eq!(
                ended.load(Ordering::SeqCst),
                2,
                "closed while a child lived"
            );
            parking.join().unwrap();
            ending.join().unwrap();
            assert_eq!(registry.live(), 0);
        });
    }

    /// N-2, N-4: the last child ends without a slot (no lock unless it is the last) while
    /// the nursery waits for it: the nursery is woken (a lost wake-up deadlocks the model)
    /// and closes.
    #[test]
    fn loom_the_last_child_without_a_slot_wakes_the_closing_nursery() {
        loom::model(|| {
            let registry = Arc::new(Plain::new());
            registry.enter().unwrap();
            let child = {
                let registry = registry.clone();
                thread::spawn(move || registry.finished(None))
            };
            close_when_empty(&registry);
            child.join().unwrap();
            assert!(!registry.is_open());
            assert!(registry.enter().is_err());
        });
    }

    struct Counting(AtomicU64);

    impl Adopter<()> for Counting {
        fn adopt(&self, _: Arc<dyn StopAll>) -> Result<(usize, bool), Closed> {
            Ok((0, false))
        }
        fn adoptee_finished(&self, _: usize) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn orphan_report(&self, _: OrphanReport<()>) {}
        fn describe(&self) -> crate::node::Description {
            crate::node::Description {
                kind: "test",
                name: None,
                detail: None,
            }
        }
        fn successor(&self) -> Option<Arc<dyn Adopter<()>>> {
            None
        }
    }

    /// N-4: the last child finishing (with a slot, or without one and so without the lock)
    /// races with the orphaning; the adopter hears exactly once that the adoptee is done.
    #[test]
    fn loom_last_child_finishing_races_with_orphaning() {
        for with_slot in [false, true] {
            loom::model(move || {
                let registry = Arc::new(Plain::new());
                let slot = if with_slot {
                    Some(registry.register(0, |_| ()).unwrap().0)
                } else {
                    registry.enter().unwrap();
                    None
                };
                let child = {
                    let registry = registry.clone();
                    thread::spawn(move || registry.finished(slot))
                };
                let adopter = Arc::new(Counting(AtomicU64::new(0)));
                let (_, done) = registry.orphan(adopter.clone(), 7);
                if done {
                    adopter.adoptee_finished(7);
                }
                child.join().unwrap();
                assert_eq!(adopter.0.load(Ordering::SeqCst), 1);
            });
        }
    }
    /// A child as its stopper sees it: the two bits of `ChildScope`'s state the abort
    /// handshake uses, and how often it was aborted.
    #[derive(Default)]
    struct Task {
        state: AtomicU8,
        aborts: AtomicU64,
    }

    const HANDLE_STORED: u8 = 1;
    const ABORT_REQUESTED: u8 = 2;

    impl Task {
        fn abort(&self) {
            self.aborts.fetch_add(1, Ordering::SeqCst);
        }

        /// The spawner, as `NurseryHandle::prepare` and `started` do it: a child registered
        /// after the abort is marked "abort requested" at once; storing the handle then
        /// aborts the child itself if the request came first.
        fn spawned(&self, aborted_at_registration: bool) {
            if aborted_at_registration {
                self.state.fetch_or(ABORT_REQUESTED, Ordering::AcqRel);
            }
            let state = self.state.fetch_or(HANDLE_STORED, Ordering::AcqRel);
            if state & ABORT_REQUESTED != 0 {
                self.abort();
            }
        }

        /// `Stopper::abort`: a child whose handle is not stored yet is its spawner's job.
        fn stop(&self) -> bool {
            let state = self.state.fetch_or(ABORT_REQUESTED, Ordering::AcqRel);
            if state & HANDLE_STORED != 0 {
                self.abort();
            }
            true
        }
    }

    /// The child's first poll, as `ChildTask::poll` does it: a nursery that aborted its
    /// children already is seen at once; otherwise the child runs, parks, and takes a slot,
    /// seeing the abort there if it came meanwhile (N-3). Returns its slot.
    fn first_poll(registry: &Registry<Arc<Task>, (), ()>, task: &Arc<Task>) -> Option<usize> {
        if registry.is_aborted() {
            task.stop();
            return None;
        }
        let (key, aborted) = registry.park(0, task.clone());
        if aborted {
            task.stop();
        }
        Some(key)
    }

    /// N-3, the abort drop path: a spawn counts its child (no slot) and stores the abort
    /// handle outside the lock, while the child's first poll runs on another thread and
    /// the nursery aborts all its children (`abort_all` asks each one it finds with a slot,
    /// after the lock). The child is asked to abort exactly once (by itself at its first
    /// poll or when it parks, or by `abort_all`), and aborted exactly once (by whoever of
    /// the asker and the spawner comes second).
    #[test]
    fn loom_abort_all_races_with_a_spawn_and_its_first_poll() {
        loom::model(|| {
            let registry = Arc::new(Registry::<Arc<Task>, (), ()>::new());
            let spawner = {
                let registry = registry.clone();
                thread::spawn(move || {
                    let task = Arc::new(Task::default());
                    registry.enter().expect("abort_all does not close");
                    let polling = {
                        let (registry, task) = (registry.clone(), task.clone());
                        thread::spawn(move || first_poll(&registry, &task))
                    };
                    task.spawned(false);
                    let slot = polling.join().unwrap();
                    (task, slot)
                })
            };
            registry.abort_all(
                true,
                |task| task.stop(),
                |_| unreachable!("async children are aborted, not told"),
            );
            let (task, slot) = spawner.join().unwrap();
            assert_eq!(
                task.aborts.load(Ordering::SeqCst),
                1,
                "N-3: a child spawned while its nursery aborts is aborted, once"
            );
            registry.finished(slot);
            assert_eq!(registry.live(), 0);
        });
    }

    /// N-3 for a child registered with a slot at once (a named or started one): a spawn
    /// registers it and stores the abort handle outside the lock, while the nursery aborts
    /// all its children. The child is aborted exactly once.
    #[test]
    fn loom_abort_all_races_with_a_spawn_storing_its_abort_handle() {
        loom::model(|| {
            let registry = Arc::new(Registry::<Arc<Task>, (), ()>::new());
            let spawner = {
                let registry = registry.clone();
                thread::spawn(move || {
                    let task = Arc::new(Task::default());
                    let (_, aborted) = registry
                        .register(0, |_| task.clone())
                        .expect("abort_all does not close");
                    task.spawned(aborted);
                    task
                })
            };
            registry.abort_all(
                true,
                |task| task.stop(),
                |_| unreachable!("async children are aborted, not told"),
            );
            let task = spawner.join().unwrap();
            assert_eq!(
                task.aborts.load(Ordering::SeqCst),
                1,
                "N-3: a child spawned while its nursery aborts is aborted, once"
            );
        });
    }

    /// The abort drop path as a whole (SPEC N8, N9): the nursery's future is dropped in
    /// abort mode (`abort_all`, then the handoff of what is still alive to an adopter, as
    /// `nursery::orphan` does) while a running child ends once aborted and a spawn races
    /// with both. Every registered child is aborted (N-3), a spawn after the handoff is
    /// refused, the adopter hears exactly once that the adoptee is done, and nothing is
    /// left alive.
    #[test]
    fn loom_abort_drop_races_with_a_child_ending_and_a_spawn() {
        loom::model(|| {
            let registry = Arc::new(Registry::<Arc<Task>, (), ()>::new());
            let running = Arc::new(Task::default());
            let (key, _) = registry.register(0, |_| running.clone()).unwrap();
            running.spawned(false);
            let ending = {
                let registry = registry.clone();
                // The running child ends (it returned, or tokio dropped it once aborted).
                thread::spawn(move || registry.finished(Some(key)))
            };
            let spawner = {
                let registry = registry.clone();
                thread::spawn(move || {
                    let task = Arc::new(Task::default());
                    registry.enter().ok()?;
                    // Its first poll (here before its handle is stored; the other order is
                    // the model above).
                    let slot = first_poll(&registry, &task);
                    task.spawned(false);
                    // Its end (once tokio dropped it) is reported after the joins.
                    Some((task, slot))
                })
            };
            registry.abort_all(true, |task| task.stop(), |_| unreachable!());
            let adopter = Arc::new(Recording::default());
            let (_, done) = registry.orphan(adopter.clone(), 7);
            if done {
                adopter.adoptee_finished(7);
            }
            ending.join().unwrap();
            if let Some((task, slot)) = spawner.join().unwrap() {
                assert_eq!(task.aborts.load(Ordering::SeqCst), 1, "N-3");
                registry.finished(slot);
            }
            assert!(registry.register(0, |_| Arc::new(Task::default())).is_err());
            assert_eq!(registry.live(), 0);
            assert_eq!(
                adopter.finished.load(Ordering::SeqCst),
                1,
                "told exactly once"
            );
        });
    }

    /// An adopter that counts what it hears.
    #[derive(Default)]
    struct Recording {
        reports: AtomicU64,
        finished: AtomicU64,
    }

    impl Adopter<()> for Recording {
        fn adopt(&self, _: Arc<dyn StopAll>) -> Result<(usize, bool), Closed> {
            Ok((0, false))
        }
        fn adoptee_finished(&self, _: usize) {
            self.finished.fetch_add(1, Ordering::SeqCst);
        }
        fn orphan_report(&self, _: OrphanReport<()>) {
            self.reports.fetch_add(1, Ordering::SeqCst);
        }
        fn describe(&self) -> crate::node::Description {
            crate::node::Description {
                kind: "test",
                name: None,
                detail: None,
            }
        }
        fn successor(&self) -> Option<Arc<dyn Adopter<()>>> {
            None
        }
    }

    fn report(incident: Incident<(), ()>) -> OrphanReport<()> {
        match incident {
            Incident::Failure(()) => OrphanReport::Failure {
                label: (),
                error: String::new(),
            },
            Incident::Panic(panic) => OrphanReport::Panic(panic),
        }
    }

    /// N-4, the wait drop path: one child fails and another panics while the nursery is
    /// orphaned (its future dropped in wait mode; `orphan` forwards what was kept, as
    /// `nursery::orphan` does). Each report reaches the adopter exactly once (kept then
    /// forwarded, or handed back as `Orphaned` and forwarded by the child), nothing stays
    /// behind in the orphaned registry, and the adopter hears once that its adoptee is done.
    #[test]
    fn loom_failures_racing_with_orphaning_are_reported_once() {
        loom::model(|| {
            let registry = Arc::new(Registry::<(), (), ()>::new());
            registry.enter().unwrap();
            let (panicking, _) = registry.register(0, |_| ()).unwrap();
            let failer = {
                let registry = registry.clone();
                thread::spawn(move || {
                    match registry.fail(()) {
                        Recorded::Orphaned((), adopter) => {
                            adopter.orphan_report(report(Incident::Failure(())))
                        }
                        Recorded::First | Recorded::Later => {}
                        Recorded::Unclaimed(()) => unreachable!("not retired in this model"),
                    }
                    registry.finished(None);
                })
            };
            let panicker = {
                let registry = registry.clone();
                thread::spawn(move || {
                    match registry.panicked((), Box::new("boom")) {
                        Recorded::Orphaned(panic, adopter) => {
                            adopter.orphan_report(OrphanReport::Panic(panic))
                        }
                        Recorded::First | Recorded::Later => {}
                        Recorded::Unclaimed(_) => unreachable!("not retired in this model"),
                    }
                    registry.finished(Some(panicking));
                })
            };
            let adopter = Arc::new(Recording::default());
            let (kept, done) = registry.orphan(adopter.clone(), 7);
            for incident in kept {
                adopter.orphan_report(report(incident));
            }
            if done {
                adopter.adoptee_finished(7);
            }
            failer.join().unwrap();
            panicker.join().unwrap();
            assert_eq!(
                adopter.reports.load(Ordering::SeqCst),
                2,
                "each report once"
            );
            let (failures, panics) = registry.take_reports();
            assert!(
                failures.is_empty() && panics.is_empty(),
                "nothing stays behind"
            );
            assert_eq!(adopter.finished.load(Ordering::SeqCst), 1);
            assert_eq!(registry.live(), 0);
        });
    }

    /// N-6: a failure racing with the nursery taking its last reports is taken with them or
    /// handed back `Unclaimed` (for the report hook): exactly one of the two, and nothing is
    /// kept after the last reports were taken.
    #[test]
    fn loom_a_late_report_races_with_taking_the_last_reports() {
        loom::model(|| {
            let registry = Arc::new(Registry::<(), (), ()>::new());
            let failer = {
                let registry = registry.clone();
                thread::spawn(move || matches!(registry.fail(()), Recorded::Unclaimed(())))
            };
            let (failures, _) = registry.take_reports();
            let unclaimed = failer.join().unwrap();
            assert_eq!(failures.len() + usize::from(unclaimed), 1, "reported once");
            let (late, _) = registry.take_reports();
            assert!(
                late.is_empty(),
                "nothing kept once the last reports were taken"
            );
        });
    }

    /// How to abort an adopted nursery's children: counts the calls.
    #[derive(Default)]
    struct Stop(AtomicU64);

    impl StopAll for Stop {
        fn stop_all(&self, _: bool) -> Vec<String> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Vec::new()
        }
        fn scope(&self) -> Option<Arc<crate::node::Node>> {
            None
        }
    }

    /// N9: a nursery dropped in wait mode hands its children to an enclosing nursery that is
    /// closing at the same moment (its end: `try_close` until no child is alive). Either the
    /// adopter took the adoptee before closing, and then its close waited until the
    /// adoptee's children finished; or it refused (`Closed`) and the handoff fell through to
    /// the next adopter. Never lost, never adopted by a closed nursery.
    #[test]
    fn loom_adoption_races_with_the_adopters_close() {
        loom::model(|| {
            let adopter = Arc::new(Registry::<(), (), ()>::new());
            let work_done = Arc::new(AtomicBool::new(false));
            let orphaned = {
                let (adopter, work_done) = (adopter.clone(), work_done.clone());
                thread::spawn(move || match adopter.adopt(Arc::new(Stop::default())) {
                    Ok((key, aborted)) => {
                        assert!(!aborted);
                        // The adoptee's children run to their end, then the last one tells.
                        work_done.store(true, Ordering::SeqCst);
                        adopter.finished(Some(key));
                        true
                    }
                    // Falls through to the next adopter (the orphan registry).
                    Err(Closed) => false,
                })
            };
            close_when_empty(&adopter);
            let done_at_close = work_done.load(Ordering::SeqCst);
            assert!(!adopter.is_open());
            let adopted = orphaned.join().unwrap();
            if adopted {
                assert!(done_at_close, "the adopter waited for its adoptee");
            } else {
                assert!(!done_at_close);
            }
            assert_eq!(adopter.live(), 0);
        });
    }

    /// N7's cascade: a nursery adopts an orphaned one while its grace runs out
    /// (`abort_all`). The adoptee's children are aborted by one of the two: `abort_all`
    /// found the adoptee slot and called `stop_all`, or `adopt` returned `aborted` and the
    /// adoptee aborts itself.
    #[test]
    fn loom_adoption_races_with_the_adopters_abort() {
        loom::model(|| {
            let adopter = Arc::new(Registry::<(), (), ()>::new());
            let stop = Arc::new(Stop::default());
            let orphaned = {
                let (adopter, stop) = (adopter.clone(), stop.clone());
                thread::spawn(move || {
                    let (key, aborted) = adopter.adopt(stop.clone()).expect("open");
                    if aborted {
                        let _ = stop.stop_all(true);
                    }
                    key
                })
            };
            adopter.abort_all(true, |_| true, |_| {});
            orphaned.join().unwrap();
            assert_eq!(stop.0.load(Ordering::SeqCst), 1, "stopped exactly once");
        });
    }
}
