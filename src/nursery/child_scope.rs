//! A child's scope, made the first time something needs it ([`ChildScope`]), and, for a
//! nursery child, its task's abort handle ([`TaskScope`]): the part of a child's shared
//! state that is written once after the spawn, with the child's name and registry slot.
//! Local children ([`crate::local_scope`]) have no task, so they keep the scope alone (24
//! bytes; 48 with the task's fields).
//!
//! Every child pays for these fields whether or not it ever needs a scope, so they are
//! packed: write-once slots and one state byte, where two `OnceLock`s took 32 bytes and a
//! `Once` call each on every spawn and every end. This module holds the crate's third
//! `unsafe` (DESIGN.md, "A child's scope is made when needed"): reading and writing the two
//! slots, whose initialisation the state byte publishes. Its Miri tests are at the bottom.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::{AbortHandle, Id};

use super::ChildLabel;
use crate::node::{Attachment, Node, ScopeId, UnmadeChild, WaiterIndex};
use crate::output_slot::SlotState;
use crate::sync::lock;

/// `node` holds an initialised `Arc<Node>`.
const NODE_SET: u8 = 1;
/// The child ended: no node is made after this.
const ENDED: u8 = 2;
/// `abort` holds an initialised `AbortHandle`.
const ABORT_SET: u8 = 4;
/// The nursery asked to abort the child (registry invariant N-3): whichever of this bit and
/// `ABORT_SET` is set second aborts the task.
const ABORT_REQUESTED: u8 = 8;
/// A waiter of the child waited on its parent's node while the child had no node of its
/// own (`UnmadeChild::park`): making the node must wake it.
const PARKED: u8 = 16;
/// Code in the child reached a cancellation point while cancelled, before it had a node
/// (SPEC N7's unobserved-cancellation warning).
const OBSERVED: u8 = 32;
/// An abort of the child was put off while a parallel borrowing scope ran in it (SPEC B2):
/// the child's task carries it out at its next poll once no such scope runs (the scope's
/// exemption wakes the task when it ends).
const ABORT_PUT_OFF: u8 = 64;

/// `TaskScope::slot` of a child that has not parked.
const NO_SLOT: u32 = u32::MAX;

/// Serialises the making of child scopes (rare: at most once per child, when a handle's
/// `cancel`, a scope or a waiter inside the child first needs one), striped by cell address
/// so unrelated children seldom share a lock.
static MAKING: [Mutex<()>; 8] = [const { Mutex::new(()) }; 8];

/// A child's scope (SPEC S1), made the first time something needs one: a handle's
/// `cancel`, a scope or a waiter inside the child, a query of its scope. Until then the
/// child runs in its nursery's scope, which is all a child that never meets a cancellation
/// point needs (its cancellation is its nursery's), and costs no node.
pub(crate) struct ChildScope {
    id: ScopeId,
    /// `NODE_SET | ENDED | ABORT_SET | ABORT_REQUESTED | PARKED | OBSERVED | ABORT_PUT_OFF`,
    /// never cleared. A slot's bit is set (`Release`) once the slot is written; a slot is written
    /// at most once. The abort bits are [`TaskScope`]'s.
    state: AtomicU8,
    /// The place of the child's waiter among its parent's node's waiters while it has no
    /// node of its own (`WaiterIndex::bits`, zero if none): read and written only under
    /// the parent's lock.
    parked: AtomicU32,
    node: UnsafeCell<MaybeUninit<Arc<Node>>>,
}

/// A nursery child's scope with its task's slots: its key in the registry, its name and
/// the abort handle. Dereferences to its [`ChildScope`].
pub(crate) struct TaskScope {
    scope: ChildScope,
    /// The child's slot in its nursery's registry, as 32 bits (a nursery never holds 2^32
    /// children at once); `NO_SLOT` until the child parks (registry invariant N-3). Written
    /// once, by the spawner before the spawn (a named or started child) or by the child's
    /// task when it first parks; read by the child's task (its polls, its end), after
    /// either write in tokio's order of the task's runs, and by whoever makes the child's
    /// scope (only to skip a label the registry makes unneeded).
    slot: AtomicU32,
    /// The name given at spawn. Boxed: a name is rare, and a thin pointer keeps every
    /// unnamed child 8 bytes smaller.
    name: Option<Box<Arc<str>>>,
    /// The task's abort handle, stored right after the spawn (registry invariant N-3).
    abort: UnsafeCell<MaybeUninit<AbortHandle>>,
    /// The state of the slot the child's outcome goes to (`ChildCell::out`), kept here,
    /// where the fields above leave a byte of padding.
    pub(crate) outcome: SlotState,
}

// SAFETY: the slots are plain `Send + Sync` values (`Arc<Node>`, `AbortHandle`) written at
// most once, each before its bit is published with `Release`, and read only after the bit
// was seen with `Acquire`; no `&mut` to a slot exists once it was published (see `set_abort`
// and `make_node` for why the writes do not race).
unsafe impl Send for ChildScope {}
// SAFETY: as above.
unsafe impl Sync for ChildScope {}
// SAFETY: as above.
unsafe impl Send for TaskScope {}
// SAFETY: as above.
unsafe impl Sync for TaskScope {}

impl std::ops::Deref for TaskScope {
    type Target = ChildScope;

    fn deref(&self) -> &ChildScope {
        &self.scope
    }
}

impl TaskScope {
    /// The scope of a child about to be spawned: no slot in its registry yet.
    pub(crate) fn new(name: Option<Arc<str>>) -> Self {
        TaskScope {
            scope: ChildScope::new(),
            slot: AtomicU32::new(NO_SLOT),
            name: name.map(Box::new),
            abort: UnsafeCell::new(MaybeUninit::uninit()),
            outcome: SlotState::default(),
        }
    }

    /// The name given at spawn, if any.
    pub(crate) fn name(&self) -> Option<&Arc<str>> {
        self.name.as_deref()
    }

    /// Its own scope, made now under `parent` if needed: asked by the child's own code
    /// (its frame), so while it runs, in its own task.
    pub(crate) fn node(&self, parent: &Arc<Node>) -> &Arc<Node> {
        self.scope
            .labelled_node(parent, || self.label(parent, tokio::task::try_id))
            .expect("a child's scope is only asked for while the child runs")
    }

    /// Its own scope, made now under `parent` if needed, unless the child has ended: asked
    /// from anywhere (a handle's `cancel`).
    pub(crate) fn node_unless_ended(&self, parent: &Arc<Node>) -> Option<&Arc<Node>> {
        self.scope
            .labelled_node(parent, || self.label(parent, || None))
    }

    /// What a scope made for a child without a slot in its registry carries, since the
    /// task tree cannot find the child there (SPEC O2): its name and its task, from its
    /// abort handle, else from `own_task` (the current task's id, when the scope is made
    /// by the child's own code); no label if neither knows the task.
    fn label(
        &self,
        nursery: &Node,
        own_task: impl FnOnce() -> Option<Id>,
    ) -> Option<Arc<dyn Attachment>> {
        if self.slot().is_some() {
            return None;
        }
        let task = self.abort_handle().map(AbortHandle::id).or_else(own_task)?;
        Some(Arc::new(ChildLabel {
            kind: "child",
            name: self.name().cloned(),
            task,
            nursery: nursery.id(),
        }))
    }

    /// The child's slot in its nursery's registry, once it parked.
    #[inline]
    pub(crate) fn slot(&self) -> Option<usize> {
        match self.slot.load(Ordering::Relaxed) {
            NO_SLOT => None,
            key => Some(key as usize),
        }
    }

    /// Records the slot the child took when it parked.
    pub(crate) fn set_slot(&self, key: usize) {
        let key = u32::try_from(key)
            .ok()
            .filter(|&key| key != NO_SLOT)
            .expect("a nursery holds fewer than 2^32 - 1 parked children");
        self.slot.store(key, Ordering::Relaxed);
    }

    /// The task's abort handle, once it was spawned.
    pub(crate) fn abort_handle(&self) -> Option<&AbortHandle> {
        if self.scope.state.load(Ordering::Acquire) & ABORT_SET == 0 {
            return None;
        }
        // SAFETY: `ABORT_SET` was seen with `Acquire`: the slot was written before it was
        // published with `Release`, and is never written again.
        Some(unsafe { (*self.abort.get()).assume_init_ref() })
    }

    /// Stores the task's abort handle. Called once, by the spawner, right after the spawn.
    /// Returns true if the nursery asked to abort the child before (registry invariant N-3):
    /// the spawner then aborts it.
    ///
    /// # Panics
    ///
    /// If called twice (a bug of this crate).
    pub(crate) fn set_abort(&self, abort: AbortHandle) -> bool {
        assert_eq!(
            self.scope.state.load(Ordering::Relaxed) & ABORT_SET,
            0,
            "a child's abort handle is stored once"
        );
        // SAFETY: only the spawner calls this, once (checked above), and nobody reads the
        // slot before `ABORT_SET` is published below: no other access to it exists now.
        unsafe { (*self.abort.get()).write(abort) };
        self.scope.state.fetch_or(ABORT_SET, Ordering::AcqRel) & ABORT_REQUESTED != 0
    }

    /// Records that an abort of the child was put off (see `ABORT_PUT_OFF`).
    pub(crate) fn put_off_abort(&self) {
        self.scope.state.fetch_or(ABORT_PUT_OFF, Ordering::Release);
    }

    /// Whether an abort of the child was ever put off (see `ABORT_PUT_OFF`).
    #[inline]
    pub(crate) fn abort_was_put_off(&self) -> bool {
        self.scope.state.load(Ordering::Acquire) & ABORT_PUT_OFF != 0
    }

    /// Whether an abort of the child was requested ([`request_abort`](Self::request_abort)):
    /// its task is then aborted, by the asker or by its spawner once it stores the handle.
    #[inline]
    pub(crate) fn abort_requested(&self) -> bool {
        self.scope.state.load(Ordering::Acquire) & ABORT_REQUESTED != 0
    }

    /// The nursery asks to abort the child: its abort handle if it was stored (the caller
    /// aborts the task), else `None` and the spawner aborts it once it stores the handle
    /// (registry invariant N-3). One read-modify-write on each side: one of the two sees
    /// the other, and only one aborts.
    pub(crate) fn request_abort(&self) -> Option<&AbortHandle> {
        if self.scope.state.fetch_or(ABORT_REQUESTED, Ordering::AcqRel) & ABORT_SET == 0 {
            return None;
        }
        // SAFETY: `ABORT_SET` was seen with `Acquire`: the slot was written before it was
        // published with `Release`, and is never written again.
        Some(unsafe { (*self.abort.get()).assume_init_ref() })
    }
}

impl ChildScope {
    /// A scope for a child: made when something needs it.
    pub(crate) fn new() -> Self {
        ChildScope {
            id: ScopeId::next(),
            state: AtomicU8::new(0),
            parked: AtomicU32::new(0),
            node: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    pub(crate) fn id(&self) -> ScopeId {
        self.id
    }

    /// Its own scope, if it was made.
    #[inline]
    pub(crate) fn own(&self) -> Option<&Arc<Node>> {
        if self.state.load(Ordering::Acquire) & NODE_SET == 0 {
            return None;
        }
        // SAFETY: `NODE_SET` was seen with `Acquire`: the slot was written before it was
        // published with `Release`, and is never written again.
        Some(unsafe { (*self.node.get()).assume_init_ref() })
    }

    /// The scope the child runs in now: its own, else `parent`'s.
    #[inline]
    pub(crate) fn settled<'a>(&'a self, parent: &'a Arc<Node>) -> &'a Arc<Node> {
        self.own().unwrap_or(parent)
    }

    /// Its own scope, made now under `parent` if needed. Only while the child runs.
    pub(crate) fn node(&self, parent: &Arc<Node>) -> &Arc<Node> {
        self.node_unless_ended(parent)
            .expect("a child's scope is only asked for while the child runs")
    }

    /// Its own scope, made now under `parent` if needed, unless the child has ended.
    pub(crate) fn node_unless_ended(&self, parent: &Arc<Node>) -> Option<&Arc<Node>> {
        self.labelled_node(parent, || None)
    }

    /// Its own scope, made now under `parent` with the attachment `label` returns if
    /// needed, unless the child has ended.
    fn labelled_node(
        &self,
        parent: &Arc<Node>,
        label: impl FnOnce() -> Option<Arc<dyn Attachment>>,
    ) -> Option<&Arc<Node>> {
        match self.own() {
            Some(node) => Some(node),
            None => self.make_node(parent, label),
        }
    }

    /// Makes the scope, with the attachment `label` returns, unless it was made or the
    /// child ended meanwhile.
    #[cold]
    fn make_node(
        &self,
        parent: &Arc<Node>,
        label: impl FnOnce() -> Option<Arc<dyn Attachment>>,
    ) -> Option<&Arc<Node>> {
        let stripe = (self as *const Self as usize / 64) % MAKING.len();
        let _making = lock(&MAKING[stripe]);
        // Under the stripe's lock: no other `make_node` of this child runs. `end` does not
        // take the lock, so `ENDED` is set with `fetch_or` and checked after the node was
        // published (below), where one of the two sees the other.
        let state = self.state.load(Ordering::Acquire);
        if state & NODE_SET != 0 {
            return self.own();
        }
        if state & ENDED != 0 {
            return None;
        }
        let node = Arc::new(Node::new(self.id, false, None));
        if let Some(label) = label() {
            node.attach(label);
        }
        node.enter(Some(parent), parent.timer());
        // SAFETY: `NODE_SET` is not set and only a `make_node` holding the stripe's lock
        // writes the slot, so nothing reads or writes it now.
        unsafe { (*self.node.get()).write(node) };
        let state = self.state.fetch_or(NODE_SET, Ordering::AcqRel);
        drop(_making);
        let node = self.own().expect("just published");
        if state & ENDED != 0 {
            // The child ended meanwhile and did not see the node: end it here.
            node.end(false);
        }
        if state & PARKED != 0 {
            // A waiter may wait on the parent's node: it moves to this one.
            parent.wake_child_waiter(self);
        }
        Some(node)
    }

    /// Code in the child reached a cancellation point while cancelled, before it had a
    /// node of its own (SPEC N7).
    pub(crate) fn mark_observed(&self) {
        if self.state.load(Ordering::Relaxed) & OBSERVED == 0 {
            self.state.fetch_or(OBSERVED, Ordering::Relaxed);
        }
    }

    /// Whether [`mark_observed`](Self::mark_observed) was called.
    pub(crate) fn observed(&self) -> bool {
        self.state.load(Ordering::Relaxed) & OBSERVED != 0
    }

    /// Whether [`end`](Self::end) was called (by the child's own task: read there).
    pub(crate) fn has_ended(&self) -> bool {
        self.state.load(Ordering::Acquire) & ENDED != 0
    }

    /// The child ended: its scope ends, or none will ever be made. True the first time.
    pub(crate) fn end(&self) -> bool {
        let state = self.state.fetch_or(ENDED, Ordering::AcqRel);
        if state & NODE_SET != 0 {
            // `Node::end` is idempotent: a `make_node` racing with this may end it too.
            self.own().expect("published").end(false);
        }
        state & ENDED == 0
    }
}

/// Until its node is made, a child's waiters wait on its parent's node (`Node::register_child_waiter`).
impl UnmadeChild for ChildScope {
    fn id(&self) -> ScopeId {
        self.id
    }

    fn park(&self) -> bool {
        self.state.fetch_or(PARKED, Ordering::AcqRel) & NODE_SET == 0
    }

    fn parked_key(&self) -> Option<WaiterIndex> {
        WaiterIndex::from_bits(self.parked.load(Ordering::Relaxed))
    }

    fn set_parked_key(&self, key: WaiterIndex) {
        self.parked.store(key.bits(), Ordering::Relaxed);
    }
}

impl Drop for ChildScope {
    fn drop(&mut self) {
        if *self.state.get_mut() & NODE_SET != 0 {
            // SAFETY: published, and `&mut self` means no reference to it is left.
            unsafe { self.node.get_mut().assume_init_drop() };
        }
    }
}

impl Drop for TaskScope {
    fn drop(&mut self) {
        if *self.scope.state.get_mut() & ABORT_SET != 0 {
            // SAFETY: published, and `&mut self` means no reference to it is left.
            unsafe { self.abort.get_mut().assume_init_drop() };
        }
    }
}

/// The slots' `unsafe` under Miri (`cargo +nightly miri test --lib -- child_scope`): no
/// tokio runtime here, so the abort handle is exercised only by the runtime tests.
#[cfg(test)]
mod tests {
    use super::*;

    fn parent() -> Arc<Node> {
        Arc::new(Node::new(ScopeId::next(), false, None))
    }

    #[test]
    fn child_scope_made_once_and_dropped() {
        let parent = parent();
        let scope = TaskScope::new(None);
        assert!(scope.own().is_none());
        let first = Arc::as_ptr(scope.node(&parent));
        assert_eq!(Arc::as_ptr(scope.node(&parent)), first);
        assert_eq!(scope.own().map(Arc::as_ptr), Some(first));
        assert_eq!(scope.own().unwrap().id(), scope.id());
        scope.end();
        drop(scope);
    }

    #[test]
    fn child_scope_never_made_after_the_end() {
        let parent = parent();
        let scope = ChildScope::new();
        scope.end();
        assert!(scope.node_unless_ended(&parent).is_none());
        assert!(Arc::ptr_eq(scope.settled(&parent), &parent));
    }

    #[test]
    fn child_scope_made_from_two_threads() {
        let parent = parent();
        let scope = Arc::new(ChildScope::new());
        let made: Vec<usize> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..2)
                .map(|_| s.spawn(|| Arc::as_ptr(scope.node(&parent)) as usize))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(made[0], made[1]);
        scope.end();
    }

    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waiter_parked_on_the_parent_is_woken_when_the_scope_is_made() {
        let parent = parent();
        let scope = ChildScope::new();
        let wakes = Arc::new(Wakes(Default::default()));
        let waker = std::task::Waker::from(wakes.clone());
        let mut key = None;
        assert!(parent.register_child_waiter(&mut key, &waker, &scope));
        assert_eq!(
            scope.parked_key().map(WaiterIndex::bits),
            Some(u32::MAX),
            "the first waiter, kept inline"
        );
        // A second waiter of the same child waits on the child's own scope instead.
        assert!(!parent.register_child_waiter(&mut None, &waker, &scope));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        let node = scope.node(&parent).clone();
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "moved to the child's scope"
        );
        // Once the scope exists, the parent refuses the child's waiters.
        assert!(!parent.register_child_waiter(&mut key, &waker, &scope));
        assert!(key.is_none());
        node.register_waiter(&mut key, &waker);
        node.remove_waiter(&mut key);
        scope.end();
    }

    #[test]
    fn child_scope_end_races_with_making() {
        let parent = parent();
        let scope = Arc::new(ChildScope::new());
        std::thread::scope(|s| {
            s.spawn(|| scope.node_unless_ended(&parent).map(|node| node.id()));
            s.spawn(|| scope.end());
        });
        if let Some(node) = scope.own() {
            assert!(
                node.is_ended(),
                "a scope made while the child ended is ended"
            );
        }
    }
}
