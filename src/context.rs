//! The current scope: which cancel scope the code being polled runs in.
//!
//! The current scope belongs to the future being polled, not to the task (SPEC S1): a scope
//! future installs a [`Frame`] in a thread-local for the length of one `poll` of its body and
//! restores the previous one afterwards, even on unwind. Frames nest as the polls nest, so
//! each branch of a `join!` sees its own scope.
//!
//! A frame is either *linked*, pointing at a node of the scope tree, or *unlinked*: a scope
//! made by [`move_on_after`](crate::move_on_after) and friends runs with its state inline,
//! allocating and linking nothing, so a scope around a future that is ready at once costs no
//! more than `tokio::time::timeout`; one whose body only waits at points polled with the
//! scope's own waker goes on that way (`scope::InlineWait`). An unlinked frame is
//! materialised into a node the moment something needs one (a handle, a scope or nursery
//! inside, a waiting point with a waker of its own, a busy cancellation query).
//!
//! This module holds one of the crate's four places with `unsafe` (the others erase the
//! lifetime of parallel borrowing children, in `parallel`, publish a child's write-once
//! slots, in `nursery::child_scope`, and keep a local child's future and then its outcome in
//! one union, in `local::stage`): the thread-local points at a frame on the stack of an
//! enclosing `poll` call.

use std::cell::{Cell, OnceCell};
use std::ptr;
use std::task::Waker;
use std::time::Instant;

use crate::node::{Node, ScopeId};
use crate::nursery::{ChildScope, TaskScope};
use crate::sync::Arc;

/// One entry of the current-scope stack, alive for one `poll` of a scope's body.
pub(crate) struct Frame<'a> {
    /// The enclosing frame, or `None` outside any scope.
    parent: Option<&'a Frame<'a>>,
    kind: FrameKind<'a>,
}

pub(crate) enum FrameKind<'a> {
    /// The scope has a node in the tree.
    Linked(&'a Arc<Node>),
    /// Another task's scope, carried into this one ([`carry_scope`](crate::carry_scope)):
    /// a linked scope for every question, but not one of the polled task's own (a parallel
    /// borrowing scope inside does not exempt it, SPEC B2).
    Carried(&'a Arc<Node>),
    /// A helper scope without a node (see [`Unlinked`]), polled with this waker.
    Unlinked(&'a Unlinked, &'a Waker),
    /// A nursery child: it runs in the nursery's scope (`parent`) until something needs a
    /// scope of its own (see [`ChildScope`]).
    Child {
        parent: &'a Arc<Node>,
        scope: &'a ChildScope,
    },
    /// A nursery child, whose scope also holds its task's slots (its abort handle). A
    /// variant of its own rather than a third field of `Child`: a frame stays three words
    /// (a larger one made `is_cancelled()` measurably slower, 0.7 to 1.1 ns).
    TaskChild {
        parent: &'a Arc<Node>,
        scope: &'a TaskScope,
    },
}

/// The inline state of a helper scope that has no node (see the module docs): during its
/// first poll, and afterwards for as long as its body only waits at cancellation points
/// polled with the scope's own waker (`scope::InlineWait`).
pub(crate) struct Unlinked {
    /// Whether the deadline has passed: at entry (SPEC S5), read from the clock only when
    /// someone asks (a body that returns a value at once never reads it); later, when the
    /// scope's own timer fired.
    pub(crate) expired: Cell<Option<bool>>,
    pub(crate) shield: bool,
    pub(crate) deadline: Option<Instant>,
    pub(crate) id: Cell<Option<ScopeId>>,
    /// Set when something needed a node; the scope future takes it after the poll.
    pub(crate) node: OnceCell<Arc<Node>>,
    /// A waiting point relied on the scope's own poll to be polled again
    /// ([`Frame::wakes`]): if the scope links instead, it must poll again at once.
    pub(crate) relied_on: Cell<bool>,
}

impl Unlinked {
    /// Cancelled by its own deadline: it had passed at entry (or by the first query).
    pub(crate) fn expired(&self) -> bool {
        match self.expired.get() {
            Some(expired) => expired,
            None => {
                let now = tokio::time::Instant::now().into_std();
                let expired = self.deadline.is_some_and(|deadline| deadline <= now);
                self.expired.set(Some(expired));
                expired
            }
        }
    }

    /// Cancelled by its own deadline now: like [`expired`](Self::expired), but a deadline
    /// not passed when last asked is compared with the clock again. Waiting points of a scope
    /// without a node ask this, so a loop of points that are ready at once (which never
    /// leaves the scope's poll for its timer to fire) still meets the deadline (SPEC S6).
    pub(crate) fn expired_now(&self) -> bool {
        match self.expired.get() {
            Some(true) => true,
            _ => {
                self.expired.set(None);
                self.expired()
            }
        }
    }

    pub(crate) fn id(&self) -> ScopeId {
        match self.node.get() {
            Some(node) => node.id(),
            None => {
                let id = self.id.get().unwrap_or_else(ScopeId::next);
                self.id.set(Some(id));
                id
            }
        }
    }
}

thread_local! {
    static CURRENT: Cell<*const ()> = const { Cell::new(ptr::null()) };
}

/// Restores the previous frame when a poll returns or unwinds.
struct Restore(*const ());

impl Drop for Restore {
    fn drop(&mut self) {
        CURRENT.with(|current| current.set(self.0));
    }
}

/// Runs `poll` with a frame of `kind` installed as the current scope, nested in the frame
/// that was current.
pub(crate) fn enter<R>(kind: FrameKind<'_>, poll: impl FnOnce() -> R) -> R {
    with_current(|parent| {
        let frame = Frame { parent, kind };
        let previous = CURRENT.with(|current| current.replace(ptr::from_ref(&frame).cast()));
        let _restore = Restore(previous);
        poll()
    })
}

/// Calls `f` with the current frame, or `None` outside any scope.
#[inline]
pub(crate) fn with_current<R>(f: impl for<'a> FnOnce(Option<&'a Frame<'a>>) -> R) -> R {
    let current = CURRENT.with(Cell::get);
    // SAFETY: `CURRENT` is either null or points at a `Frame` installed by `enter`, which
    // lives on the stack of an `enter` call that is still running on this thread: `enter`
    // installs the pointer only for the duration of `poll` and the `Restore` guard puts the
    // previous value back before the frame goes out of scope, on return and on unwind. The
    // frames installed while `f` runs are nested inside this one and restored before `f`
    // returns, so the reference cannot outlive its frame; the higher-ranked lifetime keeps
    // `f` from smuggling it out. Frames are only read through shared references.
    let frame = unsafe { current.cast::<Frame<'_>>().as_ref() };
    f(frame)
}

impl<'a> Frame<'a> {
    /// Effectively cancelled (SPEC S2, S3). One atomic load for a linked frame; an unlinked
    /// one asks its parent unless it is shielded, then links itself.
    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        match self.kind {
            FrameKind::Linked(node) | FrameKind::Carried(node) => node.is_cancelled(),
            FrameKind::Unlinked(inline, _) => self.is_cancelled_unlinked(inline),
            FrameKind::Child { parent, scope } => scope.settled(parent).is_cancelled(),
            FrameKind::TaskChild { parent, scope } => scope.settled(parent).is_cancelled(),
        }
    }

    /// Out of line, so the linked path above inlines into `is_cancelled()`.
    #[cold]
    #[inline(never)]
    fn is_cancelled_unlinked(&self, inline: &Unlinked) -> bool {
        match inline.node.get() {
            Some(node) => node.is_cancelled(),
            // Not cancelled at entry nor through a visible ancestor: link the scope so its
            // own deadline is armed before code starts polling for it (a busy loop on
            // `is_cancelled` must see the deadline on a multi-thread runtime, SPEC S6).
            None => {
                inline.expired()
                    || (!inline.shield && self.parent.is_some_and(Frame::is_cancelled))
                    || self.node().is_cancelled()
            }
        }
    }

    /// Effectively cancelled, as a cancellation point asks it: like
    /// [`is_cancelled`](Self::is_cancelled), but a helper scope without a node is not linked
    /// for the question. Its deadline reaches its waiting points through its own timer
    /// (`scope::InlineWait`), so only `is_cancelled()` and `check_cancelled()`, which
    /// busy code calls without ever waiting, need its deadline armed (SPEC S6).
    pub(crate) fn is_cancelled_here(&self) -> bool {
        match self.kind {
            FrameKind::Unlinked(inline, _) => match inline.node.get() {
                Some(node) => node.is_cancelled(),
                None => {
                    inline.expired_now()
                        || (!inline.shield && self.parent.is_some_and(Frame::is_cancelled_here))
                }
            },
            _ => self.is_cancelled(),
        }
    }

    /// Whether this frame is a helper scope without a node whose own poll uses a waker
    /// that wakes `waker`'s task the same way: a point polled with `waker` inside it is
    /// then polled again whenever the scope is (its timer fires, the enclosing scope is
    /// cancelled), and needs no registration of its own.
    pub(crate) fn wakes(&self, waker: &Waker) -> bool {
        match self.kind {
            FrameKind::Unlinked(inline, own) => {
                let wakes = inline.node.get().is_none() && own.will_wake(waker);
                if wakes {
                    inline.relied_on.set(true);
                }
                wakes
            }
            _ => false,
        }
    }

    /// The enclosing frame, if any (all of them belong to the task being polled, though a
    /// carried frame's scope is another task's).
    pub(crate) fn parent(&self) -> Option<&'a Frame<'a>> {
        self.parent
    }

    /// Whether this frame is another task's scope carried into this one.
    pub(crate) fn is_carried(&self) -> bool {
        matches!(self.kind, FrameKind::Carried(_))
    }

    /// The scope of a nursery child's frame (its task's outermost).
    pub(crate) fn child_scope(&self) -> Option<&'a ChildScope> {
        match self.kind {
            FrameKind::Child { scope, .. } => Some(scope),
            FrameKind::TaskChild { scope, .. } => Some(scope),
            _ => None,
        }
    }

    /// The task slots of a nursery child's frame (a local child has none).
    pub(crate) fn child_task(&self) -> Option<&'a TaskScope> {
        match self.kind {
            FrameKind::TaskChild { scope, .. } => Some(scope),
            _ => None,
        }
    }

    /// A nursery child running in its nursery's scope, without a node of its own yet: the
    /// nursery's node and the child's scope.
    #[inline]
    pub(crate) fn unmade_child(&self) -> Option<(&'a Arc<Node>, &'a ChildScope)> {
        match self.kind {
            FrameKind::Child { parent, scope } if scope.own().is_none() => Some((parent, scope)),
            FrameKind::TaskChild { parent, scope } if scope.own().is_none() => {
                Some((parent, std::ops::Deref::deref(scope)))
            }
            _ => None,
        }
    }

    /// The node of this frame, linking it into the tree first if it was unlinked.
    pub(crate) fn node(&self) -> &Arc<Node> {
        match self.kind {
            FrameKind::Linked(node) | FrameKind::Carried(node) => node,
            FrameKind::Unlinked(inline, _) => inline.node.get_or_init(|| {
                let parent = self.parent.map(Frame::node);
                crate::scope::materialize(inline, parent)
            }),
            FrameKind::Child { parent, scope } => scope.node(parent),
            FrameKind::TaskChild { parent, scope } => scope.node(parent),
        }
    }

    /// The nearest node at or above this frame whose cancellation reaches it (none past a
    /// shielded helper scope without a node), without making one: a nursery child without a
    /// scope of its own answers its nursery's.
    pub(crate) fn nearest_node(&self) -> Option<&Arc<Node>> {
        let mut frame = self;
        while let Some(inline) = frame.unlinked() {
            match frame.parent {
                Some(parent) if !inline.shield => frame = parent,
                _ => return None,
            }
        }
        Some(match frame.unmade_child() {
            Some((parent, _)) => parent,
            None => frame.node(),
        })
    }

    /// Expires the deadline `at` wherever it is set, in the unshielded chain above (and
    /// including) this frame: a helper scope without a node counts as expired, a scope with
    /// one is cancelled (see [`Node::expire_deadline`]); every scope sharing that instant,
    /// so the outermost absorbs (SPEC S9).
    #[cfg(all(not(loom), feature = "http"))]
    pub(crate) fn expire_deadline(&self, at: Instant) {
        let mut frame = self;
        while let Some(inline) = frame.unlinked() {
            if inline.deadline == Some(at) {
                inline.expired.set(Some(true));
            }
            match frame.parent {
                Some(parent) if !inline.shield => frame = parent,
                _ => return,
            }
        }
        if let Some(node) = frame.nearest_node() {
            node.expire_deadline(at);
        }
    }

    /// The unlinked state, if this frame has no node yet.
    fn unlinked(&self) -> Option<&'a Unlinked> {
        match self.kind {
            FrameKind::Unlinked(inline, _) if inline.node.get().is_none() => Some(inline),
            _ => None,
        }
    }

    /// The scope a `Cancelled` raised here is for, with its reason (SPEC S4). Walks the
    /// unshielded chain; only called on the cancelled path.
    pub(crate) fn origin(&self) -> Option<Origin> {
        let mut origin = None;
        let mut frame = self;
        while let Some(inline) = frame.unlinked() {
            if inline.expired_now() {
                origin = Some(Origin::Inline(inline.id()));
            }
            match frame.parent {
                Some(parent) if !inline.shield => frame = parent,
                _ => return origin,
            }
        }
        // A child without a node of its own is cancelled only through its nursery's.
        let node = match frame.unmade_child() {
            Some((parent, _)) => parent,
            None => frame.node(),
        };
        if origin.is_some() {
            // A helper scope's own timer fired: deadlines above it that passed by now are
            // fired too, so the outermost of them is named (SPEC S4).
            node.fire_passed_deadlines();
        }
        match node.origin() {
            Some(node) => Some(Origin::Node(node)),
            None => origin,
        }
    }

    /// Records that a cancellation point reported a cancellation here (SPEC N7), on the
    /// nearest scope with a node (an unlinked one only asks its parent).
    pub(crate) fn mark_observed(&self) {
        let mut frame = self;
        while frame.unlinked().is_some() {
            match frame.parent {
                Some(parent) => frame = parent,
                None => return,
            }
        }
        match frame.unmade_child() {
            Some((parent, child)) => {
                child.mark_observed();
                parent.mark_observed();
            }
            None => frame.node().mark_observed(),
        }
    }

    /// The effective deadline (SPEC S7), ignoring cancellation.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        let mut frame = self;
        while let Some(inline) = frame.unlinked() {
            earliest = min_deadline(earliest, inline.deadline);
            match frame.parent {
                Some(parent) if !inline.shield => frame = parent,
                _ => return earliest,
            }
        }
        let node = match frame.kind {
            // No need to give a child a scope of its own to answer this.
            FrameKind::Child { parent, scope } => scope.settled(parent),
            FrameKind::TaskChild { parent, scope } => scope.settled(parent),
            _ => frame.node(),
        };
        min_deadline(earliest, node.effective_deadline())
    }
}

fn min_deadline(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Where a cancellation comes from.
pub(crate) enum Origin {
    /// An unlinked scope whose deadline had passed at entry.
    Inline(ScopeId),
    Node(Arc<Node>),
}

/// The frame stack's `unsafe` is exercised here without a runtime, so Miri can run it:
/// `cargo +nightly miri test --lib context`.
#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::time::Duration;

    use futures::executor::block_on;

    use crate::{
        CancelScope, Cancelled, check_cancelled, current_scope, is_cancelled, move_on_after,
        move_on_at,
    };

    #[test]
    fn frames_nest_and_unwind() {
        let outer = CancelScope::new();
        let outer_handle = outer.handle();
        let out = block_on(outer.run(async {
            let inner = CancelScope::new();
            let inner_id = inner.handle().id();
            let seen = inner
                .run(async {
                    assert_eq!(current_scope().unwrap().id(), inner_id);
                    assert!(!is_cancelled());
                    outer_handle.cancel();
                    assert!(is_cancelled());
                    check_cancelled()
                })
                .await;
            assert_eq!(current_scope().unwrap().id(), outer_handle.id());
            seen
        }));
        assert!(matches!(out, Ok(None)));
        assert!(current_scope().is_none());
        assert!(!is_cancelled());
    }

    #[test]
    fn each_join_branch_sees_its_own_scope() {
        let (a, b) = (CancelScope::new(), CancelScope::new());
        a.handle().cancel();
        let (ra, rb) = block_on(async {
            futures::join!(
                a.run(async { check_cancelled() }),
                b.run(async { check_cancelled() })
            )
        });
        assert!(matches!(ra, Ok(None)));
        assert!(matches!(rb, Ok(Some(()))));
    }

    #[test]
    fn a_panicking_body_restores_the_previous_frame() {
        let scope = CancelScope::new();
        scope.handle().cancel();
        let result = catch_unwind(AssertUnwindSafe(|| {
            block_on(scope.run(async {
                assert!(is_cancelled());
                panic!("boom");
                #[allow(unreachable_code)]
                Ok::<(), Cancelled>(())
            }))
        }));
        assert!(result.is_err());
        assert!(current_scope().is_none());
        assert!(!is_cancelled());
    }

    #[test]
    fn unlinked_frames_walk_their_parents() {
        let past = tokio::time::Instant::now();
        let out = block_on(move_on_at(past, async {
            assert!(is_cancelled());
            let inner = move_on_after(Duration::from_secs(5), async {
                assert!(is_cancelled(), "inherited from the unlinked parent");
                check_cancelled()
            })
            .await;
            assert!(inner.is_err(), "the outer scope absorbs, not the inner");
            inner
        }));
        assert!(matches!(out, Ok(None)));
    }
}
