//! The scope tree: one [`Node`] per entered cancel scope (Trio's `CancelStatus`).
//!
//! A node is the plumbing behind a scope: its place in the tree, its cancellation state,
//! its deadline and the wakers to call when it becomes cancelled. The user-facing origin of a
//! cancellation is the scope handle ([`crate::ScopeHandle`]); this module knows nothing of
//! tokio and uses only [`crate::sync`], so it can be model-checked with loom.
//!
//! Invariants (DESIGN.md, "The scope tree", cites them by number):
//!
//! 1. A node's state bits change only while its own `inner` lock is held.
//! 2. A node's `INHERITED` bit equals `!SHIELD && parent.is_cancelled()` once every
//!    propagation in flight has finished: every change of a node's effective state is
//!    followed by a recomputation of each child, and a recomputation reads the parent's
//!    state while holding the child's lock, so the last one to run sees the newest state.
//! 3. A node is in its parent's `children` exactly while it is linked (entered and not
//!    ended); linking takes the parent's lock, so a propagation either sees the new child or
//!    the child reads the new parent state when it recomputes.
//! 4. Locks are taken one at a time, or node before deadline timer; never parent while
//!    holding a child, never a node while holding the timer.
//! 5. Wakers are woken after every lock is released.
//! 6. Dropping a chain of nodes releases parents iteratively (no recursion in depth).
//! 7. An ended scope is frozen: it has left the tree, keeps the cancellation it had (and
//!    the origin of one it only inherited) and no longer follows its former ancestors.

use std::any::Any;
use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};
use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::task::Waker;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::reason::CancelReason;
use crate::sync::{Arc, AtomicU8, AtomicU32, AtomicU64, Mutex, MutexGuard, Ordering, lock};

/// Identifies a cancel scope for as long as the process runs.
///
/// [`Cancelled::scope`](crate::Cancelled::scope) names the scope a cancellation was raised
/// for; compare it with [`ScopeHandle::id`](crate::ScopeHandle::id).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeId(NonZeroU64);

impl ScopeId {
    /// A new id. Each thread takes ids from a block of its own, reserved from one global
    /// counter: scopes made on several workers at once (helper scopes timing out together,
    /// children spawned from two threads) do not contend on one cache line. Ids made on one
    /// thread increase; across threads they are unique but not in the order they were made.
    #[cfg(not(loom))]
    pub(crate) fn next() -> ScopeId {
        use std::cell::Cell;
        /// Ids a thread reserves at a time.
        const BLOCK: u64 = 1024;
        static NEXT_BLOCK: AtomicU64 = AtomicU64::new(1);
        thread_local! {
            /// The next id of this thread's block and the end of the block.
            static BLOCK_LEFT: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
        }
        let id = BLOCK_LEFT.with(|left| {
            let (mut next, mut end) = left.get();
            if next == end {
                next = NEXT_BLOCK.fetch_add(BLOCK, Ordering::Relaxed);
                end = next + BLOCK;
            }
            left.set((next + 1, end));
            next
        });
        ScopeId(NonZeroU64::new(id).expect("scope id counter wrapped"))
    }

    #[cfg(loom)]
    pub(crate) fn next() -> ScopeId {
        loom::lazy_static! { static ref NEXT: AtomicU64 = AtomicU64::new(1); }
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        ScopeId(NonZeroU64::new(id).expect("scope id counter wrapped"))
    }

    /// The id as a number (unique within the process).
    pub fn as_u64(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Debug for ScopeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScopeId({})", self.0)
    }
}

impl fmt::Display for ScopeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scope#{}", self.0)
    }
}

/// The clock and alarm a node's deadline is kept by (the runtime's deadline service).
pub(crate) trait DeadlineTimer: Send + Sync {
    /// Now, on the clock the deadlines of this timer are measured on.
    fn now(&self) -> Instant;
    /// Arms an alarm that calls [`Node::fire_deadline`] with the returned key at `at`.
    fn arm(&self, node: &Arc<Node>, at: Instant) -> TimerKey;
    /// Disarms an alarm; a key that already fired is ignored.
    fn disarm(&self, key: TimerKey);
}

/// An armed alarm, as the timer knows it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) struct TimerKey {
    pub(crate) at: Instant,
    pub(crate) seq: u64,
}

/// The scope itself was cancelled (`cancel_called`).
const OWN: u8 = 1;
/// An ancestor is cancelled and no shield is in between.
const INHERITED: u8 = 2;
/// The scope ignores its ancestors' cancellation and deadlines.
const SHIELD: u8 = 4;
/// The scope absorbed a cancellation when it ended (`cancelled_caught`).
const CAUGHT: u8 = 8;
/// The scope has been entered (its future polled once).
const ENTERED: u8 = 16;
/// The scope has ended (its future completed or was dropped).
const ENDED: u8 = 32;
/// Code in the scope reached a cancellation point while it was cancelled (SPEC N7's
/// unobserved-cancellation warning).
const OBSERVED: u8 = 64;
/// The nursery owning the scope is past its grace period (SPEC N7): a nursery made below it
/// afterwards starts past it too. Kept once the scope ends (see `Node::is_past_grace`).
const PAST_GRACE: u8 = 128;

const CANCELLED: u8 = OWN | INHERITED;

/// A node of the scope tree. See the module docs for its invariants.
pub(crate) struct Node {
    id: ScopeId,
    state: AtomicU8,
    /// How many times a cancellation took every waiter out to wake it: a [`WaiterKey`] of
    /// an earlier round is gone. Changes under the lock; read without it by
    /// [`Node::remove_waiter`], so a woken waiter leaves without taking the lock.
    wake_rounds: AtomicU32,
    inner: Mutex<Inner>,
}

struct Inner {
    parent: Option<Arc<Node>>,
    /// Our index in the parent's `children` while linked (invariant 3).
    slot: Option<usize>,
    children: Slab<Arc<Node>>,
    waiters: Waiters,
    timer: Option<Arc<dyn DeadlineTimer>>,
    /// What owns this scope besides its future, e.g. the nursery whose scope it is.
    attachment: Option<Arc<dyn Attachment>>,
    /// What few scopes need, out of line so that a child's scope stays small: made the
    /// first time the scope is cancelled itself or given a deadline.
    cold: Option<Box<Cold>>,
}

#[derive(Default)]
struct Cold {
    reason: Option<CancelReason>,
    /// When `cancel` was first called (on the timer's clock when there is one).
    cancelled_at: Option<Instant>,
    deadline: Option<Instant>,
    /// A relative deadline, turned absolute at entry (SPEC S5).
    timeout: Option<Duration>,
    armed: Option<TimerKey>,
    /// The scope an inherited cancellation came from, kept when the scope ended (it then
    /// leaves its parent, so `origin` cannot walk there any more).
    frozen_origin: Option<Arc<Node>>,
    /// The earliest `cancelled_at` of the cancelled scopes it inherited from, kept when it
    /// ended (as `frozen_origin`): when an enclosing scope first cut it. Only the hard
    /// `DeadlineLayer` reads it (503 or 504), so only its feature pays for it.
    #[cfg(all(not(loom), feature = "tower"))]
    frozen_cut_at: Option<Instant>,
    /// The scope ended while an ancestor it inherited from was past its nursery's grace
    /// period (SPEC N7), kept for `is_past_grace` as `frozen_origin` is for `origin`. Not
    /// the `PAST_GRACE` bit, which says that the scope's own nursery's grace ran out.
    frozen_past_grace: bool,
    /// Parallel borrowing scopes running under this scope in its task (SPEC B2): while
    /// non-zero, the crate neither aborts the task nor lets a hard scope drop its body.
    exempt: usize,
    /// An abort or a hard drop was put off while exempt.
    deferred: bool,
}

impl Inner {
    fn cold(&mut self) -> &mut Cold {
        self.cold.get_or_insert_with(Box::default)
    }

    fn reason(&self) -> Option<&CancelReason> {
        self.cold.as_ref()?.reason.as_ref()
    }

    fn deadline(&self) -> Option<Instant> {
        self.cold.as_ref()?.deadline
    }

    fn armed(&self) -> Option<TimerKey> {
        self.cold.as_ref()?.armed
    }

    fn take_armed(&mut self) -> Option<TimerKey> {
        self.cold.as_mut()?.armed.take()
    }
}

/// What owns a scope besides its future (a nursery, a child task), as the tree sees it.
pub(crate) trait Attachment: Send + Sync {
    /// For adoption, which looks for nurseries.
    fn as_any(&self) -> &dyn Any;
    /// How the task-tree snapshot shows the scope (SPEC O2).
    fn describe(&self) -> Description;
    /// Scopes that left the tree but are owned here (a nursery's adopted nurseries), shown
    /// under this one in the snapshot.
    fn adopted(&self) -> Vec<Arc<Node>> {
        Vec::new()
    }
    /// How the snapshot shows a child scope that has no attachment of its own (a nursery
    /// knows its children's names and tasks without a per-child allocation).
    fn describe_child(&self, child: ScopeId) -> Option<Description> {
        let _ = child;
        None
    }
    /// Children that run in this scope without one of their own (a nursery's children
    /// until they need one), shown under it in the snapshot with the id their scope will
    /// have.
    fn children_without_scope(&self) -> Vec<(ScopeId, Description)> {
        Vec::new()
    }
    /// An ancestor nursery's grace period ran out and its cascade reached this scope
    /// (SPEC N7): a nursery aborts its children (and cascades into what runs inside it) and
    /// returns their names. `None` where the scope owns no children: the cascade looks at
    /// the scopes below it instead.
    fn grace_expired_above(&self) -> Option<Vec<String>> {
        None
    }
}

/// A scope's owner, as the task-tree snapshot shows it.
pub(crate) struct Description {
    pub(crate) kind: &'static str,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) detail: Option<String>,
}

/// One scope as the task-tree snapshot sees it.
pub(crate) struct NodeView {
    pub(crate) id: ScopeId,
    pub(crate) cancelled: bool,
    pub(crate) cancel_called: bool,
    pub(crate) shielded: bool,
    pub(crate) reason: Option<CancelReason>,
    pub(crate) cancelled_at: Option<Instant>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) description: Option<Description>,
    pub(crate) children: Vec<Arc<Node>>,
    /// Scopes adopted here (they left the tree when their nursery was dropped).
    pub(crate) adopted: Vec<Arc<Node>>,
    /// The owner, to describe children without an attachment of their own.
    pub(crate) attachment: Option<Arc<dyn Attachment>>,
}

/// What changed in one node, to be acted on once its lock is released (invariant 5).
#[derive(Default)]
struct Fallout {
    wake: Wakers,
    children: Vec<Arc<Node>>,
    /// Scopes that meet an expired grace period late (SPEC N7): a nursery past its grace
    /// cancelled again (its own shield had lifted its cancellation), or a scope exposed by
    /// a lowered shield to a nursery past its grace above it. The cascade runs from each.
    late_grace: Vec<Arc<Node>>,
}

impl Fallout {
    /// Propagates first, then runs the cascades of expired grace periods met late, then
    /// wakes: a panicking waker cannot leave descendants stale (invariant 2) nor a cascade
    /// undone; the first panic is resumed once every waker was called.
    #[inline]
    fn finish(self) {
        // The common case, a change that concerns no one else, costs nothing.
        if self.children.is_empty() && self.wake.is_empty() && self.late_grace.is_empty() {
            return;
        }
        let (below, mut late_grace) = propagate(self.children);
        late_grace.extend(self.late_grace);
        if !late_grace.is_empty() {
            catch_up_with_grace(late_grace);
        }
        wake_all(self.wake.into_iter().chain(below.into_iter().flatten()));
    }
}

/// SPEC N7 for scopes that meet an expired grace period late (see `Fallout::late_grace`):
/// the cascade runs from each, the scope itself included even if shielded (a shield keeps
/// out its ancestors, not its own nursery's expiry), and a warn-level event names the
/// children it aborts.
#[cold]
fn catch_up_with_grace(scopes: Vec<Arc<Node>>) {
    for scope in scopes {
        let attachment = scope.attachment();
        let aborted = match attachment.and_then(|owner| owner.grace_expired_above()) {
            Some(names) => names,
            None => Node::cascade_past_grace(scope.children()),
        };
        #[cfg(feature = "tracing")]
        if !aborted.is_empty() {
            tracing::warn!(
                scope = %scope.id,
                children = %aborted.join(", "),
                late = true,
                "grace period expired: children aborted"
            );
        }
        #[cfg(not(feature = "tracing"))]
        drop(aborted);
    }
}

/// What a change of a scope leaves to do below it, put off until the caller's own lock is
/// released ([`Node::reparent_deferred`]).
#[must_use = "the scopes below stay stale and their waiters unwoken until `finish` is called"]
pub(crate) struct Deferred(Option<Fallout>);

impl Deferred {
    /// Propagates the change below the scope, then wakes who must know.
    pub(crate) fn finish(self) {
        if let Some(fallout) = self.0 {
            fallout.finish();
        }
    }
}

/// A scope's waiters, under keys that stay valid until removed or until a cancellation
/// takes them all out to wake them (see [`WaiterKey`]): the first inline (most scopes have
/// at most one, and then need no allocation), the others in a slab.
#[derive(Default)]
struct Waiters {
    first: Option<Waiting>,
    rest: Slab<Waiting>,
}

/// One registered waker.
struct Waiting {
    waker: Waker,
    /// The child scope it waits for, when it waits here because that child has no node of
    /// its own ([`Node::register_child_waiter`]).
    child: Option<ScopeId>,
}

impl Waiters {
    fn get(&self, index: WaiterIndex) -> Option<&Waiting> {
        match index.slab() {
            None => self.first.as_ref(),
            Some(index) => self.rest.get(index),
        }
    }

    fn get_mut(&mut self, index: WaiterIndex) -> Option<&mut Waiting> {
        match index.slab() {
            None => self.first.as_mut(),
            Some(index) => self.rest.get_mut(index),
        }
    }

    fn insert(&mut self, waiting: Waiting) -> WaiterIndex {
        match self.first {
            None => {
                self.first = Some(waiting);
                WaiterIndex::FIRST
            }
            Some(_) => WaiterIndex::of_slab(self.rest.insert(waiting)),
        }
    }

    fn try_remove(&mut self, index: WaiterIndex) -> Option<Waiting> {
        match index.slab() {
            None => self.first.take(),
            Some(index) => self.rest.try_remove(index),
        }
    }

    /// Keeps `waker` registered for `child`: refreshed in place if `index` holds this
    /// child's waiter, else whatever `index` held is taken out and the waker inserted anew,
    /// unless `may_insert` refuses. Returns where it is registered, and a waker to drop once
    /// the lock is released (invariant 5). A waker to keep is taken from `spare`, cloned by
    /// the caller outside the lock (a clone may run arbitrary code too): `None`, with nothing
    /// changed, when one is needed and `spare` holds none.
    fn put(
        &mut self,
        index: Option<WaiterIndex>,
        waker: &Waker,
        spare: &mut Option<Waker>,
        child: Option<ScopeId>,
        may_insert: impl FnOnce(&Self) -> bool,
    ) -> Option<(Option<WaiterIndex>, Option<Waker>)> {
        if let Some(existing) = index
            .and_then(|k| self.get_mut(k))
            .filter(|existing| existing.child == child)
        {
            if existing.waker.will_wake(waker) {
                return Some((index, None));
            }
            let stale = std::mem::replace(&mut existing.waker, spare.take()?);
            return Some((index, Some(stale)));
        }
        spare.as_ref()?;
        let stale = index.and_then(|k| self.try_remove(k)).map(|w| w.waker);
        if !may_insert(self) {
            return Some((None, stale));
        }
        let waker = spare.take().expect("a spare waker, checked above");
        Some((Some(self.insert(Waiting { waker, child })), stale))
    }

    /// Takes every waiter out, to be woken.
    fn take_all(&mut self) -> Wakers {
        let mut all = Wakers {
            first: self.first.take().map(|waiting| waiting.waker),
            rest: Vec::new(),
        };
        if !self.rest.is_empty() {
            all.rest = self.rest.drain().map(|waiting| waiting.waker).collect();
            if all.first.is_none() {
                all.first = all.rest.pop();
            }
        }
        all
    }
}

/// A waiter's registration with a node: its place among the node's waiters, valid in the
/// round it was made in. A cancellation takes every waiter out to wake it and starts a new
/// round; a woken waiter that still needs to wait registers again.
///
/// Eight bytes, so that `Option<WaiterKey>` is too: every future with a cancellation point
/// holds one. Rounds wrap at 2^32: a key could only be mistaken for a newer one if its
/// waiter stayed registered, unpolled, through 2^32 cancellations of its scope (each after
/// a shield had hidden the previous one).
#[derive(Clone, Copy, Debug)]
pub(crate) struct WaiterKey {
    index: WaiterIndex,
    round: u32,
}

/// A waiter's place among a node's waiters, in 32 bits (never zero: a child keeps it in
/// its padding, zero meaning none): the inline first waiter, or a slab index.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct WaiterIndex(NonZeroU32);

impl WaiterIndex {
    const FIRST: WaiterIndex = WaiterIndex(NonZeroU32::MAX);

    /// # Panics
    ///
    /// With 2^32 - 2 waiters on one scope (64 GiB of wakers).
    fn of_slab(index: usize) -> WaiterIndex {
        u32::try_from(index)
            .ok()
            .and_then(|index| index.checked_add(1))
            .and_then(NonZeroU32::new)
            .filter(|&index| index != NonZeroU32::MAX)
            .map(WaiterIndex)
            .expect("fewer than 2^32 - 2 waiters on one cancel scope")
    }

    fn slab(self) -> Option<usize> {
        (self != WaiterIndex::FIRST).then(|| self.0.get() as usize - 1)
    }

    /// The 32 bits to keep; never zero.
    pub(crate) fn bits(self) -> u32 {
        self.0.get()
    }

    /// `None` for zero.
    pub(crate) fn from_bits(bits: u32) -> Option<WaiterIndex> {
        NonZeroU32::new(bits).map(WaiterIndex)
    }
}

/// A child scope whose node is made only when needed (a nursery child's
/// [`ChildScope`](crate::nursery::ChildScope)): until then its waiters wait on its parent's
/// node ([`Node::register_child_waiter`]), and making the node wakes them so they move
/// there.
pub(crate) trait UnmadeChild {
    /// The id the child's node has or will have.
    fn id(&self) -> ScopeId;
    /// Records that a waiter of the child waits on its parent's node; false if the child's
    /// own node was published meanwhile (the waiter then waits there). One
    /// read-modify-write of the child's state, against the one that publishes its node:
    /// one of the two sees the other, so a waiter never parks unseen on the parent.
    fn park(&self) -> bool;
    /// Where the child's waiter is among the parent's waiters, if it has one there. Read
    /// and written only under the parent's lock.
    fn parked_key(&self) -> Option<WaiterIndex>;
    fn set_parked_key(&self, key: WaiterIndex);
}

/// The wakers a change must wake: usually one (a scope's own waiter), which then needs no
/// allocation.
#[derive(Default)]
struct Wakers {
    first: Option<Waker>,
    rest: Vec<Waker>,
}

impl Wakers {
    fn is_empty(&self) -> bool {
        self.first.is_none()
    }
}

impl IntoIterator for Wakers {
    type Item = Waker;
    type IntoIter = std::iter::Chain<std::option::IntoIter<Waker>, std::vec::IntoIter<Waker>>;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

/// Wakes every waker, each under `catch_unwind`, and resumes the first panic after the last.
fn wake_all(wakers: impl IntoIterator<Item = Waker>) {
    let mut panic = None;
    for waker in wakers {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| waker.wake())) {
            panic.get_or_insert(payload);
        }
    }
    if let Some(payload) = panic {
        resume_unwind(payload);
    }
}

impl Node {
    /// A node not yet in the tree.
    pub(crate) fn new(id: ScopeId, shield: bool, deadline: Option<Instant>) -> Node {
        Node {
            id,
            state: AtomicU8::new(if shield { SHIELD } else { 0 }),
            wake_rounds: AtomicU32::new(0),
            inner: Mutex::new(Inner {
                parent: None,
                slot: None,
                children: Slab::new(),
                waiters: Waiters::default(),
                timer: None,
                attachment: None,
                cold: deadline.map(|deadline| {
                    Box::new(Cold {
                        deadline: Some(deadline),
                        ..Cold::default()
                    })
                }),
            }),
        }
    }

    pub(crate) fn id(&self) -> ScopeId {
        self.id
    }

    #[inline]
    fn bits(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// Whether the scope has ended.
    pub(crate) fn is_ended(&self) -> bool {
        self.bits() & ENDED != 0
    }

    /// Effectively cancelled: its own cancellation or a visible ancestor's. One atomic load.
    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.bits() & CANCELLED != 0
    }

    pub(crate) fn cancel_called(&self) -> bool {
        self.bits() & OWN != 0
    }

    pub(crate) fn cancelled_caught(&self) -> bool {
        self.bits() & CAUGHT != 0
    }

    pub(crate) fn is_shielded(&self) -> bool {
        self.bits() & SHIELD != 0
    }

    /// Whether code in this scope (or a scope inside it) has reached a cancellation point
    /// since it was cancelled.
    pub(crate) fn observed(&self) -> bool {
        self.bits() & OBSERVED != 0
    }

    /// Code reached a cancellation point here while cancelled: marks this scope and the
    /// ancestors whose cancellation it saw, up to the one cancelled itself. Only on the
    /// cancelled path.
    pub(crate) fn mark_observed(self: &Arc<Self>) {
        // Many children observing one cancellation mark their nursery's scope: after the
        // first, a load instead of a contended read-modify-write.
        if self.observed() {
            return;
        }
        let mut node = self.clone();
        loop {
            let bits = node.state.fetch_or(OBSERVED, Ordering::AcqRel);
            if bits & INHERITED == 0 || bits & OBSERVED != 0 {
                return;
            }
            match node.parent() {
                Some(parent) => node = parent,
                None => return,
            }
        }
    }

    /// Marks the scope of a nursery whose grace period has run out (SPEC N7). True if this
    /// call marked it, false if it was marked already.
    pub(crate) fn mark_past_grace(self: &Arc<Self>) -> bool {
        let mut inner = lock(&self.inner);
        if self.bits() & PAST_GRACE != 0 {
            return false;
        }
        let fallout = self.set_bits(&mut inner, |bits| bits | PAST_GRACE);
        drop(inner);
        fallout.finish(); // nothing: no cancellation changes
        true
    }

    /// Whether the scope runs past a nursery's grace period (SPEC N7: past an ancestor's
    /// grace, abort cascades to every descendant): its own nursery's grace ran out, or that
    /// of a nursery whose cancellation it inherits. Looks up only those ancestors, and so
    /// stops at a shield, as the cascade does (a shield keeps out the ancestors'
    /// cancellation, not the scope's own). One atomic load when the scope is not cancelled,
    /// one per scope looked up otherwise. An ended scope answers as it did when it ended.
    ///
    /// No scope linked while an ancestor's grace expires is missed: the expiry marks its
    /// nursery's scope (`mark_past_grace`) before its cascade (`cascade_past_grace`) looks
    /// at the scopes below, each under the lock of the scope it reads, and a scope is linked
    /// under its parent's lock: either the cascade finds it, or a look-up after its link
    /// finds the mark.
    pub(crate) fn is_past_grace(self: &Arc<Self>) -> bool {
        let mut scope = self.clone();
        loop {
            let bits = scope.bits();
            if bits & CANCELLED == 0 {
                return false;
            }
            if bits & PAST_GRACE != 0 {
                return true;
            }
            if bits & INHERITED == 0 {
                return false; // shielded, or cancelled itself and nothing above is seen
            }
            let inner = lock(&scope.inner);
            match inner.parent.clone() {
                Some(parent) => {
                    drop(inner);
                    scope = parent;
                }
                // An ended scope answers as it did when it ended.
                None => {
                    return inner
                        .cold
                        .as_ref()
                        .is_some_and(|cold| cold.frozen_past_grace);
                }
            }
        }
    }

    /// SPEC N7's cascade, from the scopes in `start` down: each nursery met has its grace
    /// expire (`Attachment::grace_expired_above`), which goes on inside it; other scopes
    /// are passed through; shielded ones are left alone (S8: a cleanup or protected work
    /// runs to completion; protected work is told "grace expired" as an adoptee). Returns
    /// the names of the children aborted.
    pub(crate) fn cascade_past_grace(mut below: Vec<Arc<Node>>) -> Vec<String> {
        let mut aborted = Vec::new();
        while let Some(node) = below.pop() {
            // The shield is read under the scope's lock, against a shield lowered at this
            // moment: either this read sees it lowered, or the lowering's look-up, after its
            // change under this lock, sees the mark made before the cascade began.
            let inner = lock(&node.inner);
            let shielded = node.is_shielded();
            let attachment = inner.attachment.clone();
            drop(inner);
            if shielded {
                continue;
            }
            match attachment.and_then(|owner| owner.grace_expired_above()) {
                Some(names) => aborted.extend(names),
                None => below.extend(node.children()),
            }
        }
        aborted
    }

    /// The scopes linked under this one now.
    pub(crate) fn children(&self) -> Vec<Arc<Node>> {
        let inner = lock(&self.inner);
        inner
            .children
            .iter()
            .map(|(_, child)| child.clone())
            .collect()
    }

    pub(crate) fn is_entered(&self) -> bool {
        self.bits() & ENTERED != 0
    }

    /// SPEC S9: the scope would absorb a returned `Cancelled` now: it is cancelled itself and
    /// no cancelled ancestor is visible to it.
    pub(crate) fn absorbs(&self) -> bool {
        self.bits() & CANCELLED == OWN
    }

    pub(crate) fn parent(&self) -> Option<Arc<Node>> {
        lock(&self.inner).parent.clone()
    }

    pub(crate) fn reason(&self) -> Option<CancelReason> {
        lock(&self.inner).reason().cloned()
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        lock(&self.inner).deadline()
    }

    /// When the scope itself was cancelled: the deadline's instant for a deadline fired by
    /// the service, else the clock at the cancel.
    pub(crate) fn cancelled_at(&self) -> Option<Instant> {
        lock(&self.inner).cold.as_ref()?.cancelled_at
    }

    /// When an enclosing scope it inherited a cancellation from was first cancelled: the
    /// earliest `cancelled_at` in the cancelled chain above it (kept when it ended), if any.
    #[cfg(all(not(loom), feature = "tower"))]
    pub(crate) fn inherited_cut_at(&self) -> Option<Instant> {
        let inner = lock(&self.inner);
        match inner.parent.clone() {
            Some(parent) => {
                drop(inner);
                parent.earliest_cut()
            }
            None => inner.cold.as_ref()?.frozen_cut_at,
        }
    }

    /// The earliest `cancelled_at` of the scopes in the unshielded cancelled chain above
    /// (and including) this one that were cancelled themselves.
    #[cfg(all(not(loom), feature = "tower"))]
    fn earliest_cut(self: &Arc<Self>) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        let mut node = self.clone();
        loop {
            let bits = node.bits();
            if bits & CANCELLED == 0 {
                return earliest;
            }
            let inner = lock(&node.inner);
            if bits & OWN != 0 {
                if let Some(at) = inner.cold.as_ref().and_then(|cold| cold.cancelled_at) {
                    earliest = Some(earliest.map_or(at, |e| e.min(at)));
                }
            }
            if bits & INHERITED == 0 {
                return earliest;
            }
            let Some(parent) = inner.parent.clone() else {
                let frozen = inner.cold.as_ref().and_then(|cold| cold.frozen_cut_at);
                return match (earliest, frozen) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            };
            drop(inner);
            node = parent;
        }
    }

    /// The reason and the deadline, under one lock (a scope's exit reads both).
    pub(crate) fn reason_and_deadline(&self) -> (Option<CancelReason>, Option<Instant>) {
        let inner = lock(&self.inner);
        (inner.reason().cloned(), inner.deadline())
    }

    /// Attaches what owns this scope besides its future (a nursery).
    pub(crate) fn attach(&self, attachment: Arc<dyn Attachment>) {
        lock(&self.inner).attachment = Some(attachment);
    }

    pub(crate) fn attachment(&self) -> Option<Arc<dyn Attachment>> {
        lock(&self.inner).attachment.clone()
    }

    /// The scope as the task-tree snapshot sees it (SPEC O2). The owner's description is
    /// taken after the lock is released (it may lock the owner).
    pub(crate) fn view(&self) -> NodeView {
        let bits = self.bits();
        let inner = lock(&self.inner);
        let attachment = inner.attachment.clone();
        let mut view = NodeView {
            id: self.id,
            cancelled: bits & CANCELLED != 0,
            cancel_called: bits & OWN != 0,
            shielded: bits & SHIELD != 0,
            reason: inner.reason().cloned(),
            cancelled_at: inner.cold.as_ref().and_then(|cold| cold.cancelled_at),
            deadline: inner.deadline(),
            description: None,
            children: inner
                .children
                .iter()
                .map(|(_, child)| child.clone())
                .collect(),
            adopted: Vec::new(),
            attachment: None,
        };
        drop(inner);
        if let Some(attachment) = attachment {
            view.description = Some(attachment.describe());
            view.adopted = attachment.adopted();
            view.attachment = Some(attachment);
        }
        view
    }

    /// The deadline timer this scope was entered with, for its children to share.
    pub(crate) fn timer(&self) -> Option<Arc<dyn DeadlineTimer>> {
        lock(&self.inner).timer.clone()
    }

    /// Marks the scope cancelled with `reason` (the first reason wins) and propagates.
    pub(crate) fn cancel(self: &Arc<Self>, reason: CancelReason) {
        let inner = lock(&self.inner);
        self.cancel_locked(inner, reason, None);
    }

    /// Cancelled by its own deadline `at` before the service fired it (expired early, SPEC
    /// S5), recorded as cancelled at that instant, as when the service fires it.
    pub(crate) fn cancel_at_deadline(self: &Arc<Self>, at: Instant) {
        let inner = lock(&self.inner);
        self.cancel_at_deadline_locked(inner, at);
    }

    fn cancel_at_deadline_locked(self: &Arc<Self>, inner: MutexGuard<'_, Inner>, at: Instant) {
        // SPEC O1: the event `cancel_locked` leaves to the service when given an instant.
        #[cfg(feature = "tracing")]
        if inner.reason().is_none() {
            tracing::debug!(scope = %self.id, reason = %CancelReason::Deadline, "cancel");
        }
        self.cancel_locked(inner, CancelReason::Deadline, Some(at));
    }

    /// Cancels with `reason`, recording `at` (else now) as the time of the cancellation.
    fn cancel_locked(
        self: &Arc<Self>,
        mut inner: MutexGuard<'_, Inner>,
        reason: CancelReason,
        at: Option<Instant>,
    ) {
        if inner.reason().is_none() {
            // SPEC O1: every cancellation, with its reason, whoever asked for it (a handle,
            // a sibling's failure, a drop, a grace period). A deadline fired by the service
            // (`at` given) has the service's own event.
            #[cfg(feature = "tracing")]
            if at.is_none() {
                tracing::debug!(scope = %self.id, reason = %reason, "cancel");
            }
            let now = at.unwrap_or_else(|| {
                inner
                    .timer
                    .as_ref()
                    .map_or_else(Instant::now, |timer| timer.now())
            });
            let cold = inner.cold();
            cold.reason = Some(reason);
            cold.cancelled_at = Some(now);
        }
        let fallout = self.set_bits(&mut inner, |bits| bits | OWN);
        drop(inner);
        fallout.finish();
    }

    /// Raises or lowers the shield (SPEC S8) and propagates the change. Lowering it under a
    /// nursery past its grace period (or on such a nursery's own scope) exposes the scope
    /// to that expiry as well (N7): the nurseries in it have their grace expire now, as the
    /// cascade would have done had the shield been down then.
    pub(crate) fn set_shield(self: &Arc<Self>, shield: bool) {
        let mut inner = lock(&self.inner);
        let inherited_before = self.bits() & INHERITED != 0;
        let mut fallout = self.set_bits(&mut inner, |bits| {
            if shield {
                bits | SHIELD
            } else {
                bits & !SHIELD
            }
        });
        let exposed = !inherited_before && self.bits() & INHERITED != 0;
        drop(inner);
        // Exposed to a nursery past its grace above (one that is past its own grace itself
        // is in the fallout already, see `set_bits`).
        if exposed && self.bits() & PAST_GRACE == 0 && self.is_past_grace() {
            fallout.late_grace.push(self.clone());
        }
        fallout.finish();
    }

    /// Applies `change` to the state bits, recomputes `INHERITED` from the parent
    /// (invariant 2) and returns what must be woken and revisited. Caller holds the lock.
    fn set_bits(self: &Arc<Self>, inner: &mut Inner, change: impl FnOnce(u8) -> u8) -> Fallout {
        let old = self.bits();
        let mut new = change(old);
        // An ended scope has no parent any more and keeps the cancellation it had.
        if old & ENDED == 0 {
            let exposed = new & SHIELD == 0
                && inner
                    .parent
                    .as_ref()
                    .is_some_and(|parent| parent.is_cancelled());
            new = if exposed {
                new | INHERITED
            } else {
                new & !INHERITED
            };
        }
        // Every bit but `OBSERVED` changes under the lock; `mark_observed` sets that one
        // without it, so a plain store of `new` could erase a mark made since `old` was read.
        let _ = self
            .state
            .fetch_update(Ordering::Release, Ordering::Relaxed, |current| {
                Some((new & !OBSERVED) | (current & OBSERVED))
            });
        let mut fallout = Fallout::default();
        if (old & CANCELLED != 0) != (new & CANCELLED != 0) {
            if new & CANCELLED != 0 {
                fallout.wake = inner.waiters.take_all();
                let round = self.wake_rounds.load(Ordering::Relaxed);
                self.wake_rounds
                    .store(round.wrapping_add(1), Ordering::Release);
                if new & PAST_GRACE != 0 {
                    // A nursery past its grace, cancelled again however (its own cancel, a
                    // deadline, a shield lowered above it): what was made in it while its
                    // cancellation was lifted is past that grace (SPEC N7).
                    fallout.late_grace.push(self.clone());
                }
            }
            fallout.children = inner.children.iter().map(|(_, c)| c.clone()).collect();
        }
        fallout
    }

    /// Enters the scope: links it under `parent` and starts its deadline on `timer`.
    ///
    /// A deadline already past cancels the scope at once (SPEC S5).
    pub(crate) fn enter(
        self: &Arc<Self>,
        parent: Option<&Arc<Node>>,
        timer: Option<Arc<dyn DeadlineTimer>>,
    ) {
        let mut inner = lock(&self.inner);
        debug_assert!(inner.parent.is_none() && !self.is_entered());
        inner.parent = parent.cloned();
        if let Some(timeout) = inner.cold.as_mut().and_then(|cold| cold.timeout.take()) {
            let now = timer
                .as_ref()
                .map_or_else(Instant::now, |timer| timer.now());
            inner.cold().deadline = Some(later(now, timeout));
        }
        inner.timer = timer;
        let fallout = self.set_bits(&mut inner, |bits| bits | ENTERED);
        // Arming may panic (no runtime, no time driver): do it before the parent links us,
        // so a panic leaves nothing behind in the tree.
        let expired = self.arm(&mut inner);
        drop(inner);
        if let Some(parent) = parent {
            let slot = lock(&parent.inner).children.insert(self.clone());
            let mut inner = lock(&self.inner);
            inner.slot = Some(slot);
            // Invariant 3: the parent may have changed before it listed us.
            let late = self.set_bits(&mut inner, |bits| bits);
            drop(inner);
            late.finish();
        }
        fallout.finish();
        if expired {
            self.cancel(CancelReason::Deadline);
        }
    }

    /// Moves an entered scope under `parent` (a started child joining its nursery, SPEC N3)
    /// and recomputes what it inherits.
    pub(crate) fn reparent(self: &Arc<Self>, parent: &Arc<Node>) {
        self.reparent_deferred(parent).finish();
    }

    /// [`reparent`](Self::reparent), for a caller holding a lock of its own: the move is made
    /// now, and what it changes below the scope (propagation, then the wakers, which may run
    /// any code) when the caller calls [`Deferred::finish`] once its lock is released
    /// (invariant 5).
    pub(crate) fn reparent_deferred(self: &Arc<Self>, parent: &Arc<Node>) -> Deferred {
        let (old_parent, old_slot) = {
            let mut inner = lock(&self.inner);
            if self.bits() & ENDED != 0 {
                return Deferred(None); // an ended scope stays out of the tree (invariant 7)
            }
            (inner.parent.take(), inner.slot.take())
        };
        if let (Some(old_parent), Some(slot)) = (old_parent, old_slot) {
            let removed = lock(&old_parent.inner).children.try_remove(slot);
            drop(removed);
        }
        let slot = lock(&parent.inner).children.insert(self.clone());
        let mut inner = lock(&self.inner);
        if self.bits() & ENDED != 0 {
            // Ended meanwhile: take ourselves out again.
            drop(inner);
            let removed = lock(&parent.inner).children.try_remove(slot);
            drop(removed);
            return Deferred(None);
        }
        inner.parent = Some(parent.clone());
        inner.slot = Some(slot);
        // Invariant 3: recompute after the new parent lists us.
        let fallout = self.set_bits(&mut inner, |bits| bits);
        drop(inner);
        Deferred(Some(fallout))
    }

    /// Arms the deadline alarm if the scope runs, is not cancelled and has a deadline.
    /// Returns true if the deadline has already passed. Caller holds the lock.
    fn arm(self: &Arc<Self>, inner: &mut Inner) -> bool {
        if let Some(key) = inner.take_armed() {
            if let Some(timer) = &inner.timer {
                timer.disarm(key);
            }
        }
        let bits = self.bits();
        if bits & ENTERED == 0 || bits & (ENDED | OWN) != 0 {
            return false;
        }
        let Some(at) = inner.deadline() else {
            return false;
        };
        let Some(timer) = inner.timer.clone() else {
            panic!(
                "tokio-nursery: a cancel scope with a deadline must run inside a tokio runtime \
                 (nothing could fire its deadline otherwise)"
            )
        };
        if at <= timer.now() {
            return true;
        }
        inner.cold().armed = Some(timer.arm(self, at));
        false
    }

    /// Sets a deadline `timeout` after entry; before entry only (a later `set_deadline`
    /// replaces it, as in Trio).
    pub(crate) fn set_timeout(&self, timeout: Duration) {
        let mut inner = lock(&self.inner);
        let cold = inner.cold();
        cold.deadline = None;
        cold.timeout = Some(timeout);
    }

    /// Moves the deadline (SPEC S6): earlier may cancel at once; later postpones unless the
    /// scope is already cancelled. Returns the previous deadline. Before entry it replaces a
    /// pending relative timeout.
    pub(crate) fn set_deadline(self: &Arc<Self>, deadline: Option<Instant>) -> Option<Instant> {
        let mut inner = lock(&self.inner);
        let cold = inner.cold();
        cold.timeout = None;
        let previous = std::mem::replace(&mut cold.deadline, deadline);
        let expired = self.arm(&mut inner);
        drop(inner);
        if expired {
            self.cancel(CancelReason::Deadline);
        }
        previous
    }

    /// Called by the timer when the alarm `key` goes off; stale keys are ignored.
    pub(crate) fn fire_deadline(self: &Arc<Self>, key: TimerKey) {
        let mut inner = lock(&self.inner);
        if inner.armed() != Some(key) || self.bits() & ENDED != 0 {
            return;
        }
        inner.take_armed();
        // Under the same lock as the check: a scope that ended meanwhile stays uncancelled.
        // Cancelled at its deadline: no clock read per scope when many share one deadline.
        self.cancel_locked(inner, CancelReason::Deadline, Some(key.at));
    }

    /// Fires the deadlines of this scope and of its ancestors up to the nearest shield that
    /// have passed on the timer's clock but whose alarm has not gone off yet (SPEC S2). A
    /// helper scope without a node, whose own timer fired, asks this before it names the
    /// scope a `Cancelled` is for or absorbs one (S4, S9): the deadline service may not have
    /// run yet for a deadline that passed in the same tick, or earlier, and every deadline
    /// passed by then counts (as Trio expires them all in one batch before anything runs).
    pub(crate) fn fire_passed_deadlines(self: &Arc<Self>) {
        self.visit_unshielded(|node, mut inner| {
            let passed = inner.armed().filter(|key| {
                let now = inner
                    .timer
                    .as_ref()
                    .map_or_else(Instant::now, |timer| timer.now());
                key.at <= now && node.bits() & ENDED == 0
            });
            if let Some(key) = passed {
                inner.take_armed();
                if let Some(timer) = &inner.timer {
                    timer.disarm(key);
                }
                #[cfg(feature = "tracing")]
                tracing::debug!(scope = %node.id, "deadline passed");
                node.cancel_locked(inner, CancelReason::Deadline, Some(key.at));
            }
            ControlFlow::Continue(())
        });
    }

    /// Cancels, with reason `Deadline`, the scopes in the unshielded chain above (and
    /// including) this one whose own deadline is `at`: code that cannot go on before `at`
    /// (a request whose remaining time its headers cannot carry) expires it now, so what it
    /// returns is an echo of that cancellation (SPEC S15, D1). Every scope sharing that
    /// instant expires, as when the deadline service fires them in one batch: the
    /// outermost absorbs (S9).
    #[cfg(all(not(loom), feature = "http"))]
    pub(crate) fn expire_deadline(self: &Arc<Self>, at: Instant) {
        self.visit_unshielded(|node, inner| {
            if inner.deadline() == Some(at) {
                node.cancel_at_deadline_locked(inner, at);
            }
            ControlFlow::Continue(())
        });
    }

    /// Ends the scope: records whether it absorbed a cancellation, unlinks it from its
    /// parent and disarms its deadline. Idempotent.
    pub(crate) fn end(&self, caught: bool) {
        // `ENDED` is set under the lock and never cleared: seen without it, it is final (a
        // scope's future ends its node when it finishes and again, idempotently, when dropped).
        if self.bits() & ENDED != 0 {
            return;
        }
        // An inherited cancellation is kept (invariant 7): so is the scope it names, and
        // whether it runs past a nursery's grace period (a nursery carried out of the scope
        // starts past it, `is_past_grace`).
        let inherited = (self.bits() & INHERITED != 0)
            .then(|| self.parent())
            .flatten();
        let frozen = inherited.as_ref().and_then(|parent| parent.origin());
        #[cfg(all(not(loom), feature = "tower"))]
        let cut_at = inherited.as_ref().and_then(|parent| parent.earliest_cut());
        let past_grace = inherited.is_some_and(|parent| parent.is_past_grace());
        let mut inner = lock(&self.inner);
        if self.bits() & ENDED != 0 {
            return;
        }
        if frozen.is_some() {
            inner.cold().frozen_origin = frozen;
        }
        #[cfg(all(not(loom), feature = "tower"))]
        if cut_at.is_some() {
            inner.cold().frozen_cut_at = cut_at;
        }
        if past_grace {
            inner.cold().frozen_past_grace = true;
        }
        let extra = if caught { ENDED | CAUGHT } else { ENDED };
        self.state.fetch_or(extra, Ordering::AcqRel);
        let armed = inner.take_armed();
        if let (Some(timer), Some(key)) = (inner.timer.take(), armed) {
            timer.disarm(key);
        }
        let parent = inner.parent.take();
        let slot = inner.slot.take();
        drop(inner);
        if let (Some(parent), Some(slot)) = (parent, slot) {
            let removed = lock(&parent.inner).children.try_remove(slot);
            drop(removed);
            // Dropping `parent` may release a long chain: see `Drop` (invariant 6).
        }
    }

    /// Registers (or refreshes) a waker to be woken when the scope becomes cancelled.
    pub(crate) fn register_waiter(&self, key: &mut Option<WaiterKey>, waker: &Waker) {
        // Cloned only when a waiter is new or its waker changed (a poll that refreshes the
        // same waker clones nothing), and then outside the lock: the lookup is done again.
        let mut spare = None;
        loop {
            let mut inner = lock(&self.inner);
            let round = self.wake_rounds.load(Ordering::Relaxed);
            let index = key.filter(|k| k.round == round).map(|k| k.index);
            let Some((index, stale)) = inner.waiters.put(index, waker, &mut spare, None, |_| true)
            else {
                drop(inner);
                // Invariant 5: a waker's clone and drop may run arbitrary code; never under
                // our lock.
                spare = Some(waker.clone());
                continue;
            };
            *key = index.map(|index| WaiterKey { index, round });
            drop(inner);
            drop(stale);
            drop(spare);
            return;
        }
    }

    /// Registers (or refreshes) a waker of `child`, a child scope of this one with no node
    /// of its own, to be woken when this scope becomes cancelled: the child is cancelled
    /// exactly when its parent is until its node is made. One waiter per child waits here
    /// (its key kept by the child, for [`Node::wake_child_waiter`]). False, with nothing
    /// registered and `key` cleared, when the child's node was made meanwhile or another of
    /// its waiters waits here: this one then waits on the child's own node.
    pub(crate) fn register_child_waiter(
        &self,
        key: &mut Option<WaiterKey>,
        waker: &Waker,
        child: &dyn UnmadeChild,
    ) -> bool {
        // Cloned before the lock (invariant 5), whether or not it is kept.
        let mut spare = Some(waker.clone());
        let mut inner = lock(&self.inner);
        let round = self.wake_rounds.load(Ordering::Relaxed);
        let index = key.take().filter(|k| k.round == round).map(|k| k.index);
        let (index, stale) = if child.park() {
            let id = Some(child.id());
            let placed = inner
                .waiters
                .put(index, waker, &mut spare, id, |waiters| {
                    let parked = child.parked_key().and_then(|k| waiters.get(k));
                    parked.is_none_or(|other| other.child != id)
                })
                .expect("a spare waker is given");
            if let Some(index) = placed.0 {
                child.set_parked_key(index);
            }
            placed
        } else {
            let stale = index.and_then(|k| inner.waiters.try_remove(k));
            (None, stale.map(|waiting| waiting.waker))
        };
        drop(inner);
        drop((stale, spare)); // after the lock is released (invariant 5)
        *key = index.map(|index| WaiterKey { index, round });
        key.is_some()
    }

    /// Wakes the waiter `child` has here, if any: the child's own node was just made, and
    /// the waiter must move there (it re-registers when polled).
    pub(crate) fn wake_child_waiter(&self, child: &dyn UnmadeChild) {
        let mut inner = lock(&self.inner);
        // Taken out, not cloned (invariant 5: no waker's code under the lock); the entry keeps
        // a waker that does nothing until its waiter, woken here, registers again.
        let waker = child
            .parked_key()
            .and_then(|k| inner.waiters.get_mut(k))
            .filter(|waiting| waiting.child == Some(child.id()))
            .map(|waiting| std::mem::replace(&mut waiting.waker, Waker::noop().clone()));
        drop(inner);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// A parallel borrowing scope starts running under this scope (SPEC B2).
    pub(crate) fn exempt(&self) {
        lock(&self.inner).cold().exempt += 1;
    }

    /// A parallel borrowing scope under this scope ended; true if it was the last and an
    /// abort or a hard drop was put off meanwhile (the caller carries it out now).
    pub(crate) fn unexempt(&self) -> bool {
        let mut inner = lock(&self.inner);
        let cold = inner.cold();
        cold.exempt -= 1;
        cold.exempt == 0 && std::mem::take(&mut cold.deferred)
    }

    /// Whether a parallel borrowing scope runs under this scope (SPEC B2).
    pub(crate) fn is_exempt(&self) -> bool {
        lock(&self.inner)
            .cold
            .as_ref()
            .is_some_and(|cold| cold.exempt > 0)
    }

    /// Puts off an abort or a hard drop if a parallel borrowing scope runs under this scope
    /// (true: the caller must not carry it out now).
    pub(crate) fn defer_if_exempt(&self) -> bool {
        let mut inner = lock(&self.inner);
        match inner.cold.as_mut() {
            Some(cold) if cold.exempt > 0 => {
                cold.deferred = true;
                true
            }
            _ => false,
        }
    }

    /// Takes a waiter's registration off, unless a cancellation already took it out to
    /// wake it (then without the lock).
    pub(crate) fn remove_waiter(&self, key: &mut Option<WaiterKey>) {
        let Some(key) = key.take() else { return };
        if self.wake_rounds.load(Ordering::Acquire) != key.round {
            return;
        }
        let mut inner = lock(&self.inner);
        let removed = (self.wake_rounds.load(Ordering::Relaxed) == key.round)
            .then(|| inner.waiters.try_remove(key.index))
            .flatten();
        drop(inner);
        drop(removed); // after the lock is released (invariant 5)
    }

    /// The scope a `Cancelled` raised here is for: the outermost scope in the unshielded
    /// chain above (and including) this one that was cancelled itself (SPEC S4).
    pub(crate) fn origin(self: &Arc<Self>) -> Option<Arc<Node>> {
        let mut origin = None;
        let mut node = self.clone();
        loop {
            let bits = node.bits();
            if bits & CANCELLED == 0 {
                return origin;
            }
            if bits & OWN != 0 {
                origin = Some(node.clone());
            }
            if bits & INHERITED == 0 {
                return origin;
            }
            let inner = lock(&node.inner);
            let Some(parent) = inner.parent.clone() else {
                // The chain ends at an ended scope (it left the tree): its own cancellation is
                // the outermost visible; else the one it inherited and kept.
                let frozen = inner
                    .cold
                    .as_ref()
                    .and_then(|cold| cold.frozen_origin.clone());
                return origin.or(frozen);
            };
            drop(inner);
            node = parent;
        }
    }

    /// The earliest deadline of this scope and its ancestors up to and including the
    /// nearest shielded one (SPEC S7).
    pub(crate) fn effective_deadline(self: &Arc<Self>) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        self.visit_unshielded(|_, inner| {
            earliest = match (earliest, inner.deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            ControlFlow::Continue(())
        });
        earliest
    }

    /// Visits this scope and its ancestors up to and including the nearest shielded one,
    /// each with its lock held (`visit` may release it), until `visit` breaks.
    fn visit_unshielded(
        self: &Arc<Self>,
        mut visit: impl FnMut(&Arc<Node>, MutexGuard<'_, Inner>) -> ControlFlow<()>,
    ) {
        let mut node = self.clone();
        loop {
            let inner = lock(&node.inner);
            let parent = inner.parent.clone();
            if visit(&node, inner).is_break() || node.is_shielded() {
                return;
            }
            match parent {
                Some(parent) => node = parent,
                None => return,
            }
        }
    }
}

/// `at + after`, or about thirty years after `at` when that overflows (`Duration::MAX` means
/// "no limit", as tokio reads it).
pub(crate) fn later(at: Instant, after: Duration) -> Instant {
    at.checked_add(after)
        .unwrap_or_else(|| at + Duration::from_secs(86_400 * 365 * 30))
}

/// Recomputes the given nodes and, where their effective state changed, their descendants
/// (invariant 2). Iterative, so depth costs no stack.
/// Returns the wakers of every scope whose state changed, for the caller to wake once the
/// whole subtree is up to date (invariant 5: a waker that panics, woken during the walk, left
/// the scopes below it stale until review round 17).
fn propagate(mut pending: Vec<Arc<Node>>) -> (Vec<Wakers>, Vec<Arc<Node>>) {
    let (mut wake, mut late_grace) = (Vec::new(), Vec::new());
    while let Some(node) = pending.pop() {
        let mut inner = lock(&node.inner);
        let fallout = node.set_bits(&mut inner, |bits| bits);
        drop(inner);
        if !fallout.wake.is_empty() {
            wake.push(fallout.wake);
        }
        late_grace.extend(fallout.late_grace);
        pending.extend(fallout.children);
    }
    (wake, late_grace)
}

impl Drop for Node {
    fn drop(&mut self) {
        // Invariant 6: release the ancestors one by one instead of recursively.
        let inner = match self.inner.get_mut() {
            Ok(inner) => inner,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut parent = inner.parent.take();
        while let Some(node) = parent {
            parent = match Arc::try_unwrap(node) {
                Ok(mut last) => {
                    let inner = match last.inner.get_mut() {
                        Ok(inner) => inner,
                        Err(poisoned) => poisoned.into_inner(),
                    };
                    inner.parent.take()
                }
                Err(_) => None,
            };
        }
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.bits();
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("cancel_called", &(bits & OWN != 0))
            .field("inherited", &(bits & INHERITED != 0))
            .field("shield", &(bits & SHIELD != 0))
            .finish_non_exhaustive()
    }
}

/// Model checks of the tree's propagation (SPEC R1):
/// `RUSTFLAGS="--cfg loom" cargo test --lib --release loom_`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::AtomicUsize;
    use loom::thread;

    fn node(shield: bool) -> Arc<Node> {
        Arc::new(Node::new(ScopeId::next(), shield, None))
    }

    /// A chain of three entered scopes, outermost first; `shield` for the middle one.
    fn chain(shield: bool) -> [Arc<Node>; 3] {
        let (root, middle, leaf) = (node(false), node(shield), node(false));
        root.enter(None, None);
        middle.enter(Some(&root), None);
        leaf.enter(Some(&middle), None);
        [root, middle, leaf]
    }

    #[test]
    fn loom_cancel_races_with_entering_a_child() {
        loom::model(|| {
            let parent = node(false);
            parent.enter(None, None);
            let child = node(false);
            let entering = {
                let (parent, child) = (parent.clone(), child.clone());
                thread::spawn(move || child.enter(Some(&parent), None))
            };
            parent.cancel(CancelReason::Explicit(None));
            entering.join().unwrap();
            assert!(
                child.is_cancelled(),
                "invariant 2/3: the child sees the cancellation"
            );
            child.end(false);
        });
    }

    /// N7: code observing a cancellation (marking its scope without the lock) races with a
    /// shield toggle rewriting the state bits under the lock: the mark is never lost, so the
    /// "cancellation went unobserved" warning never fires for an observed scope.
    #[test]
    fn loom_observing_races_with_a_state_change() {
        loom::model(|| {
            let root = node(false);
            root.enter(None, None);
            let leaf = node(false);
            leaf.enter(Some(&root), None);
            root.cancel(CancelReason::Deadline);
            let toggling = {
                let leaf = leaf.clone();
                thread::spawn(move || leaf.set_shield(false))
            };
            leaf.mark_observed();
            toggling.join().unwrap();
            assert!(leaf.observed() && root.observed());
            leaf.end(false);
        });
    }

    /// Stands for a nursery: counts the grace expiries that reach it.
    struct Reached(AtomicUsize);

    impl Attachment for Reached {
        fn as_any(&self) -> &dyn Any {
            self
        }

        fn describe(&self) -> Description {
            Description {
                kind: "test",
                name: None,
                detail: None,
            }
        }

        fn grace_expired_above(&self) -> Option<Vec<String>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Some(Vec::new())
        }
    }

    /// N7: a shield lowered while a nursery's grace expires. Whichever runs first, the
    /// nursery in the shielded scope is reached: by the cascade (it reads the shield under
    /// the scope's lock) or by the lowering (it looks up the mark made before the cascade).
    #[test]
    fn loom_shield_lowered_races_with_a_grace_expiry() {
        loom::model(|| {
            let [root, middle, leaf] = chain(true);
            let reached = Arc::new(Reached(AtomicUsize::new(0)));
            leaf.attach(reached.clone());
            root.cancel(CancelReason::Explicit(None));
            let lowering = {
                let middle = middle.clone();
                thread::spawn(move || middle.set_shield(false))
            };
            assert!(root.mark_past_grace());
            Node::cascade_past_grace(root.children());
            lowering.join().unwrap();
            assert!(
                reached.0.load(Ordering::SeqCst) >= 1,
                "the nursery was missed"
            );
            leaf.end(false);
            middle.end(false);
        });
    }

    #[test]
    fn loom_shield_toggle_races_with_ancestor_cancel() {
        loom::model(|| {
            let [root, middle, leaf] = chain(true);
            let lowering = {
                let middle = middle.clone();
                thread::spawn(move || middle.set_shield(false))
            };
            root.cancel(CancelReason::Deadline);
            lowering.join().unwrap();
            assert!(middle.is_cancelled() && leaf.is_cancelled());
            assert!(!middle.cancel_called() && !leaf.cancel_called());
            leaf.end(false);
            middle.end(false);
        });
    }

    /// S3/S8: raising a shield races with an ancestor's cancel. Whichever runs last, the
    /// shielded scope and the leaf below it end up not cancelled (invariant 2), and a
    /// waiter on the leaf is woken at most once (it may see a transient cancellation).
    #[test]
    fn loom_raising_a_shield_races_with_ancestor_cancel() {
        loom::model(|| {
            let [root, middle, leaf] = chain(false);
            let wakes = waiter_on(&leaf);
            let raising = {
                let middle = middle.clone();
                thread::spawn(move || middle.set_shield(true))
            };
            root.cancel(CancelReason::Explicit(None));
            raising.join().unwrap();
            assert!(root.is_cancelled());
            assert!(!middle.is_cancelled() && !leaf.is_cancelled());
            assert!(leaf.origin().is_none());
            assert!(wakes.0.load(Ordering::SeqCst) <= 1);
            leaf.end(false);
            middle.end(false);
        });
    }

    /// Invariants 3 and 7: a started child's scope is moved under its nursery's
    /// (`reparent`, SPEC N3) while the child ends. Afterwards the scope is in no one's
    /// children (an ended scope has left the tree), whichever ran first.
    #[test]
    fn loom_reparenting_races_with_the_scope_ending() {
        loom::model(|| {
            let nursery = node(false);
            nursery.enter(None, None);
            let caller = node(false);
            caller.enter(None, None);
            let child = node(false);
            child.enter(Some(&caller), None);
            let ending = {
                let child = child.clone();
                thread::spawn(move || child.end(false))
            };
            child.reparent(&nursery);
            ending.join().unwrap();
            assert_eq!(lock(&caller.inner).children.len(), 0);
            assert_eq!(
                lock(&nursery.inner).children.len(),
                0,
                "no ended scope stays linked"
            );
            let inner = lock(&child.inner);
            assert!(inner.slot.is_none());
        });
    }

    /// Invariant 7: a deadline alarm goes off while its scope ends. Either the alarm came
    /// first (the scope ended cancelled by its deadline) or the end did (the alarm is
    /// ignored: the scope stays uncancelled); no alarm is left armed either way.
    #[test]
    fn loom_a_deadline_alarm_races_with_the_scope_ending() {
        loom::model(|| {
            let timer = Timer::new();
            let scope = Arc::new(Node::new(ScopeId::next(), false, Some(timer.at(10))));
            scope.enter(None, timer_of(&timer));
            let key = timer.armed()[0];
            let firing = {
                let (scope, timer) = (scope.clone(), timer.clone());
                thread::spawn(move || {
                    timer.disarm(key);
                    scope.fire_deadline(key);
                })
            };
            scope.end(false);
            firing.join().unwrap();
            if scope.is_cancelled() {
                assert!(scope.cancel_called());
                assert!(scope.reason().is_some_and(|r| r.is_deadline()));
            } else {
                assert!(scope.reason().is_none());
            }
            assert!(timer.armed().is_empty());
        });
    }

    /// A deadline timer for the models: a fixed "now" and the set of armed alarms.
    struct Timer {
        now: Instant,
        armed: Mutex<Vec<TimerKey>>,
        seq: AtomicU64,
    }

    impl Timer {
        fn new() -> Arc<Timer> {
            Arc::new(Timer {
                now: Instant::now(),
                armed: Mutex::new(Vec::new()),
                seq: AtomicU64::new(0),
            })
        }

        fn at(&self, secs: i64) -> Instant {
            if secs >= 0 {
                self.now + Duration::from_secs(secs as u64)
            } else {
                self.now - Duration::from_secs(secs.unsigned_abs())
            }
        }

        fn armed(&self) -> Vec<TimerKey> {
            lock(&self.armed).clone()
        }
    }

    impl DeadlineTimer for Timer {
        fn now(&self) -> Instant {
            self.now
        }
        fn arm(&self, _: &Arc<Node>, at: Instant) -> TimerKey {
            let key = TimerKey {
                at,
                seq: self.seq.fetch_add(1, Ordering::Relaxed),
            };
            lock(&self.armed).push(key);
            key
        }
        fn disarm(&self, key: TimerKey) {
            lock(&self.armed).retain(|armed| *armed != key);
        }
    }

    fn timer_of(timer: &Arc<Timer>) -> Option<Arc<dyn DeadlineTimer>> {
        Some(timer.clone() as Arc<dyn DeadlineTimer>)
    }

    /// Counts the wakes of a waiter registered on a node.
    struct Wakes(AtomicU64);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waiter_on(node: &Node) -> Arc<Wakes> {
        let wakes = Arc::new(Wakes(AtomicU64::new(0)));
        let waker = Waker::from(wakes.clone());
        node.register_waiter(&mut None, &waker);
        wakes
    }

    fn same(a: &Arc<Node>, b: &Arc<Node>) -> bool {
        Arc::ptr_eq(a, b)
    }

    /// S6 and invariant 7's alarm rule: moving a deadline later races with the old alarm
    /// going off. Either the alarm won (the scope is cancelled by its deadline and no alarm
    /// is left armed) or the move won (not cancelled, the stale alarm was ignored, exactly
    /// one alarm armed, for the new deadline).
    #[test]
    fn loom_extending_a_deadline_races_with_its_alarm() {
        loom::model(|| {
            let timer = Timer::new();
            let scope = Arc::new(Node::new(ScopeId::next(), false, Some(timer.at(10))));
            scope.enter(None, timer_of(&timer));
            let old = timer.armed();
            assert_eq!(old.len(), 1);
            let firing = {
                let scope = scope.clone();
                let timer = timer.clone();
                // The service takes a due alarm out of its map, then fires it.
                thread::spawn(move || {
                    timer.disarm(old[0]);
                    scope.fire_deadline(old[0]);
                })
            };
            let previous = scope.set_deadline(Some(timer.at(20)));
            firing.join().unwrap();
            assert_eq!(previous, Some(timer.at(10)));
            assert_eq!(scope.deadline(), Some(timer.at(20)));
            if scope.cancel_called() {
                assert!(scope.reason().is_some_and(|r| r.is_deadline()));
                assert!(timer.armed().is_empty(), "a cancelled scope keeps no alarm");
            } else {
                assert!(!scope.is_cancelled());
                let armed = timer.armed();
                assert_eq!(armed.len(), 1, "exactly the new alarm is armed");
                assert_eq!(armed[0].at, timer.at(20));
            }
            scope.end(false);
            assert!(timer.armed().is_empty(), "ending disarms");
        });
    }

    /// S6 racing with S2: a scope's deadline is moved into the past while an ancestor is
    /// cancelled. The scope ends up cancelled itself with reason `Deadline`, the ancestor keeps
    /// its explicit reason, a grandchild sees the cancellation, the outermost cancelled scope
    /// (S4) is the ancestor, and no alarm is left armed.
    #[test]
    fn loom_shortening_a_deadline_races_with_an_ancestor_cancel() {
        loom::model(|| {
            let timer = Timer::new();
            let root = node(false);
            root.enter(None, timer_of(&timer));
            let scope = Arc::new(Node::new(ScopeId::next(), false, Some(timer.at(10))));
            scope.enter(Some(&root), timer_of(&timer));
            let leaf = node(false);
            leaf.enter(Some(&scope), timer_of(&timer));
            let cancelling = {
                let root = root.clone();
                thread::spawn(move || root.cancel(CancelReason::Explicit(None)))
            };
            scope.set_deadline(Some(timer.at(-1)));
            cancelling.join().unwrap();
            assert!(scope.cancel_called() && scope.is_cancelled() && leaf.is_cancelled());
            assert!(!leaf.cancel_called());
            assert!(scope.reason().is_some_and(|r| r.is_deadline()));
            assert!(root.reason().is_some_and(|r| !r.is_deadline()));
            assert!(leaf.origin().is_some_and(|o| same(&o, &root)));
            assert!(!scope.absorbs(), "an ancestor's cancellation is visible");
            assert!(timer.armed().is_empty());
            leaf.end(false);
            scope.end(false);
        });
    }

    /// S6 racing with S2: a scope's deadline is moved later while an ancestor is cancelled.
    /// The scope is cancelled by inheritance only (not `cancel_called`), keeps the new
    /// deadline with exactly one alarm armed for it (a later shield would expose it), and
    /// its effective deadline is the new one.
    #[test]
    fn loom_extending_a_deadline_races_with_an_ancestor_cancel() {
        loom::model(|| {
            let timer = Timer::new();
            let root = node(false);
            root.enter(None, timer_of(&timer));
            let scope = Arc::new(Node::new(ScopeId::next(), false, Some(timer.at(10))));
            scope.enter(Some(&root), timer_of(&timer));
            let cancelling = {
                let root = root.clone();
                thread::spawn(move || root.cancel(CancelReason::Explicit(None)))
            };
            scope.set_deadline(Some(timer.at(20)));
            cancelling.join().unwrap();
            assert!(scope.is_cancelled() && !scope.cancel_called());
            assert_eq!(scope.deadline(), Some(timer.at(20)));
            assert_eq!(scope.effective_deadline(), Some(timer.at(20)));
            let armed = timer.armed();
            assert_eq!(armed.len(), 1);
            assert_eq!(armed[0].at, timer.at(20));
            assert!(scope.origin().is_some_and(|o| same(&o, &root)));
            scope.end(false);
            assert!(timer.armed().is_empty());
        });
    }

    /// S6 racing with entering (invariant 3): a parent's deadline is moved into the past
    /// while a child enters under it. The child sees the cancellation (inherited), names the
    /// parent as the origin with reason `Deadline`, and its effective deadline is the
    /// parent's new one.
    #[test]
    fn loom_a_deadline_moved_into_the_past_races_with_entering_a_child() {
        loom::model(|| {
            let timer = Timer::new();
            let parent = Arc::new(Node::new(ScopeId::next(), false, Some(timer.at(10))));
            parent.enter(None, timer_of(&timer));
            let child = node(false);
            let entering = {
                let (parent, child, timer) = (parent.clone(), child.clone(), timer.clone());
                thread::spawn(move || child.enter(Some(&parent), timer_of(&timer)))
            };
            parent.set_deadline(Some(timer.at(-1)));
            entering.join().unwrap();
            assert!(child.is_cancelled() && !child.cancel_called());
            let origin = child
                .origin()
                .expect("the child is cancelled by its parent");
            assert!(same(&origin, &parent));
            assert!(origin.reason().is_some_and(|r| r.is_deadline()));
            assert_eq!(child.effective_deadline(), Some(timer.at(-1)));
            assert!(timer.armed().is_empty());
            child.end(false);
        });
    }

    /// S2/S4: two cancels of the same scope with different reasons race. Exactly one reason
    /// wins: both cancellers read the same one afterwards, every descendant names the scope
    /// as the origin, and a waiter on a descendant is woken exactly once.
    #[test]
    fn loom_cancel_races_with_cancel() {
        loom::model(|| {
            let [scope, child, leaf] = chain(false);
            let wakes = waiter_on(&leaf);
            let other = {
                let scope = scope.clone();
                thread::spawn(move || {
                    scope.cancel(CancelReason::SiblingFailed);
                    format!("{:?}", scope.reason().expect("cancelled"))
                })
            };
            scope.cancel(CancelReason::Deadline);
            let mine = format!("{:?}", scope.reason().expect("cancelled"));
            let theirs = other.join().unwrap();
            assert_eq!(mine, theirs, "one reason wins and stays");
            for descendant in [&child, &leaf] {
                assert!(descendant.is_cancelled() && !descendant.cancel_called());
                assert!(descendant.origin().is_some_and(|o| same(&o, &scope)));
            }
            assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "woken exactly once");
            leaf.end(false);
            child.end(false);
        });
    }

    /// S2/S4: an ancestor and a descendant scope are cancelled at once with different
    /// reasons. Each keeps its own reason, the leaf below both names the outermost one, and
    /// its waiter is woken exactly once.
    #[test]
    fn loom_nested_cancels_race() {
        loom::model(|| {
            let [root, middle, leaf] = chain(false);
            let wakes = waiter_on(&leaf);
            let inner = {
                let middle = middle.clone();
                thread::spawn(move || middle.cancel(CancelReason::SiblingFailed))
            };
            root.cancel(CancelReason::Deadline);
            inner.join().unwrap();
            assert!(root.reason().is_some_and(|r| r.is_deadline()));
            assert!(middle.reason().is_some_and(|r| !r.is_deadline()));
            assert!(middle.cancel_called() && !middle.absorbs());
            assert!(leaf.origin().is_some_and(|o| same(&o, &root)));
            assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "woken exactly once");
            leaf.end(false);
            middle.end(false);
        });
    }

    /// A child scope made lazily, as `nursery::ChildScope` makes it: parking a waiter on
    /// the parent and publishing the node are one read-modify-write each of one state byte.
    struct LazyChild {
        id: ScopeId,
        state: AtomicU8,
        parked: Mutex<Option<WaiterIndex>>,
        node: Mutex<Option<Arc<Node>>>,
    }

    const MADE: u8 = 1;
    const PARKED: u8 = 2;

    impl LazyChild {
        fn new() -> Self {
            LazyChild {
                id: ScopeId::next(),
                state: AtomicU8::new(0),
                parked: Mutex::new(None),
                node: Mutex::new(None),
            }
        }

        /// As `ChildScope::make_node`: link, publish, then move a parked waiter.
        fn make(&self, parent: &Arc<Node>) -> Arc<Node> {
            let node = Arc::new(Node::new(self.id, false, None));
            node.enter(Some(parent), None);
            *lock(&self.node) = Some(node.clone());
            if self.state.fetch_or(MADE, Ordering::AcqRel) & PARKED != 0 {
                parent.wake_child_waiter(self);
            }
            node
        }

        fn own(&self) -> Option<Arc<Node>> {
            lock(&self.node).clone()
        }
    }

    impl UnmadeChild for LazyChild {
        fn id(&self) -> ScopeId {
            self.id
        }
        fn park(&self) -> bool {
            self.state.fetch_or(PARKED, Ordering::AcqRel) & MADE == 0
        }
        fn parked_key(&self) -> Option<WaiterIndex> {
            *lock(&self.parked)
        }
        fn set_parked_key(&self, key: WaiterIndex) {
            *lock(&self.parked) = Some(key);
        }
    }

    /// A nursery child without a scope of its own parks its waiter on the nursery's node
    /// while a handle makes the child's scope and cancels it alone: the waiter either sees
    /// the cancellation when it checks after registering, or is woken (to move to the
    /// child's own scope, or by the cancellation itself).
    #[test]
    fn loom_a_child_waiter_parking_on_its_parent_races_with_its_scope_being_made() {
        loom::model(|| {
            let parent = node(false);
            parent.enter(None, None);
            let child = Arc::new(LazyChild::new());
            let handle = {
                let (parent, child) = (parent.clone(), child.clone());
                thread::spawn(move || {
                    let own = child.make(&parent);
                    own.cancel(CancelReason::Explicit(None));
                    own
                })
            };
            let wakes = Arc::new(Wakes(AtomicU64::new(0)));
            let waker = Waker::from(wakes.clone());
            let mut key = None;
            let waits_on = if parent.register_child_waiter(&mut key, &waker, &*child) {
                parent.clone()
            } else {
                let own = child.own().expect("made: the parent refused the waiter");
                own.register_waiter(&mut key, &waker);
                own
            };
            // The waiter's check after registering: the scope it runs in now.
            let seen = child.own().unwrap_or_else(|| parent.clone()).is_cancelled();
            let own = handle.join().unwrap();
            assert!(
                seen || wakes.0.load(Ordering::SeqCst) > 0,
                "the waiter is neither told nor woken"
            );
            waits_on.remove_waiter(&mut key);
            own.end(false);
        });
    }

    /// A cancellation takes every waiter out to wake it while one of them leaves and a new
    /// one registers (and may get the same key): the leaving waiter never takes the new
    /// one's registration, and the new one is either woken or still registered.
    #[test]
    fn loom_waking_every_waiter_races_with_one_leaving_and_another_registering() {
        loom::model(|| {
            let scope = node(false);
            scope.enter(None, None);
            // The leaving waiter registers first: its key is the one the new waiter gets
            // once the cancellation emptied the list.
            let first = Arc::new(Wakes(AtomicU64::new(0)));
            let mut first_key = None;
            scope.register_waiter(&mut first_key, &Waker::from(first.clone()));
            let second = waiter_on(&scope);
            let cancel = {
                let scope = scope.clone();
                thread::spawn(move || scope.cancel(CancelReason::Explicit(None)))
            };
            let leave = {
                let scope = scope.clone();
                thread::spawn(move || scope.remove_waiter(&mut first_key))
            };
            let third = Arc::new(Wakes(AtomicU64::new(0)));
            let mut third_key = None;
            scope.register_waiter(&mut third_key, &Waker::from(third.clone()));
            cancel.join().unwrap();
            leave.join().unwrap();
            assert_eq!(
                second.0.load(Ordering::SeqCst),
                1,
                "the one that stayed is woken"
            );
            let third_woken = third.0.load(Ordering::SeqCst) == 1;
            let third_registered = lock(&scope.inner).waiters.first.is_some()
                || !lock(&scope.inner).waiters.rest.is_empty();
            assert!(
                third_woken != third_registered,
                "woken, or still registered"
            );
            scope.remove_waiter(&mut third_key);
            assert!(lock(&scope.inner).waiters.first.is_none());
            assert!(lock(&scope.inner).waiters.rest.is_empty());
            scope.end(false);
        });
    }
}
