//! Local scopes (SPEC B1): children that may borrow from the caller's stack.
//!
//! [`local_scope`] runs a body and its children *inside* the caller's task: they are polled
//! by the scope's own future (concurrent, not parallel), so they need not be `'static` nor
//! `Send`, and may borrow anything that outlives the scope. The rules are the nursery's:
//! each child runs in a scope under the local scope's (cancellation and deadlines reach
//! it), the first failure cancels the rest, every failure is returned and the earliest panic
//! resumed once everything stopped. Dropping the scope's future drops its children at once.
//!
//! The inline-polling trap: children make progress only while the scope's future is polled.
//! A body that blocks the thread, or a scope future parked in a `select!` that is not being
//! polled, stalls them; use a [`Nursery`](crate::Nursery) for children that must run on
//! their own.
//!
//! Linear in the number of children: only children that were woken are polled (a ready
//! queue), and when tokio's cooperative budget runs out the scope yields instead of
//! polling the rest, so children that checkpoint do not turn each poll into a sweep of
//! every child (the `FuturesUnordered` cliff).
//!
//! A child is one allocation, shared by the scope and the handle: its lazily made scope,
//! its future then its outcome (sharing their bytes: [`stage`], the module's `unsafe`), in
//! an `Rc` it is pinned in. Its waker is made at its first poll, or is the waker of a child
//! that finished without lending its waker out, so a child that never parks costs no
//! waker. Children not yet polled wait in a FIFO linked through the children themselves;
//! only a child that parks enters the [`Pages`] (where its waker finds it by index), so a
//! child that finishes at its first poll never does. Nothing grows a buffer the size of the
//! scope, which the allocator would map and unmap, or trim and fault back in, at every
//! scope, and nothing else is allocated beside the children (see [`Fresh`]).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures::task::{ArcWake, waker_ref};
use pin_project::pin_project;

use self::stage::{Stage, State};

use crate::cancelled::CancelError;
use crate::context::{self, FrameKind};
use crate::node::{Node, ScopeId};
use crate::nursery::ChildScope;
use crate::nursery::{Failure, JoinError, NurseryError, Origin, Report, catch_waker_panic};
use crate::pages::Pages;
use crate::point::Waiter;
use crate::reason::CancelReason;
use crate::scope::{ScopeHandle, cancelled_here, enter_preset};
use crate::sync::lock;

mod stage;

/// The spawner of a [`local_scope`]: children spawned here may borrow from the stack
/// (`'env`) and need not be `Send`.
pub struct LocalScope<'env, E> {
    node: Arc<Node>,
    /// The node again, for the handles: an `Rc` clone per handle costs no atomic operation.
    for_handles: Rc<Parent>,
    /// The children that were polled and are parked, in pages, where their wakers find them
    /// by index: no contiguous buffer grows with their number (a big one would be mapped
    /// and unmapped by the allocator at each doubling).
    children: RefCell<Pages<Child<'env, E>>>,
    /// Children spawned and not yet polled, in spawn order (only the scope's own thread
    /// spawns, so no lock). A child that finishes at its first poll never enters the pages.
    fresh: RefCell<Fresh<'env, E>>,
    /// Children woken by their wakers, from any thread.
    ready: Arc<ReadyQueue>,
    /// The waker of a child that finished without its waker being cloned, kept for the
    /// next child polled for the first time: a child that never parks costs no waker.
    spare: Cell<Option<Arc<ChildWaker>>>,
    failures: RefCell<Vec<Failure<E>>>,
    panics: RefCell<Vec<(Origin, Box<dyn std::any::Any + Send>)>>,
    /// The last poll of the children found tokio's budget spent before it polled any (the
    /// body spent it): the next poll polls them before the body.
    starved: Cell<bool>,
}

/// The children not yet polled, in spawn order: a FIFO linked through the children (each
/// holds the next), so queuing one allocates nothing. Measured against a queue of small
/// chunks beside the children, with one million children: every other scope took 135 ns
/// per child instead of 80 (the chunks, allocated and freed in between the children, change
/// the order in which glibc hands freed memory back, and the children, read back in spawn
/// order, were laid out out of order); linked through the children, 55 ns every time (a
/// `FuturesUnordered`, 50 to 130). A contiguous buffer is worse still: each of its
/// reallocations, a "large" request, makes glibc consolidate its fast bins first.
struct Fresh<'env, E> {
    head: Option<Task<'env, E>>,
    tail: Option<Task<'env, E>>,
    len: usize,
}

/// A local child as its scope holds it.
type Task<'env, E> = Pin<Rc<dyn Run<'env, E> + 'env>>;

impl<'env, E> Fresh<'env, E> {
    fn new() -> Self {
        Fresh {
            head: None,
            tail: None,
            len: 0,
        }
    }

    fn push_back(&mut self, value: Task<'env, E>) {
        self.len += 1;
        match &self.tail {
            Some(tail) => tail.next().set(Some(value.clone())),
            None => self.head = Some(value.clone()),
        }
        self.tail = Some(value);
    }

    fn pop_front(&mut self) -> Option<Task<'env, E>> {
        let head = self.head.take()?;
        self.head = head.next().take();
        if self.head.is_none() {
            self.tail = None;
        }
        self.len -= 1;
        Some(head)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<E> Drop for Fresh<'_, E> {
    /// One child at a time: dropping the head would drop the whole chain recursively.
    fn drop(&mut self) {
        while self.pop_front().is_some() {}
    }
}

impl<E> Default for Fresh<'_, E> {
    fn default() -> Self {
        Self::new()
    }
}

/// A parked child.
struct Child<'env, E> {
    task: Task<'env, E>,
    /// Made at the child's first poll (or taken from the spare); taken while it is polled.
    waker: Option<Arc<ChildWaker>>,
}

/// A local child in one allocation, shared by its scope and its handle: its scope (made
/// under the local scope's only when something needs it, as a nursery child's: SPEC S1, so
/// a child that meets no cancellation point costs no node), its place in the queue of
/// children not yet polled, its handle's waker, its future then its outcome. Kept small: a
/// child is often little more than this allocation (88 bytes and the `Rc`'s counts for a
/// future of 24 bytes: glibc's 112-byte chunk, as a `FuturesUnordered` task).
#[pin_project]
struct LocalTask<'env, F, T, E> {
    scope: ChildScope,
    /// The next child not yet polled, while this one waits for its first poll.
    next: Cell<Option<Task<'env, E>>>,
    /// The handle's waker, while it waits for the outcome.
    waiter: Cell<Option<Waker>>,
    #[pin]
    stage: Stage<F, T>,
}

/// A local child as its scope sees it, whatever its future and output.
trait Run<'env, E> {
    /// The next child not yet polled (see [`Fresh`]).
    fn next(&self) -> &Cell<Option<Task<'env, E>>>;
    fn scope(&self) -> &ChildScope;
    /// Polls the child; once it finished, delivers its outcome to the handle and returns
    /// its failure and the panic of its future's drop, if any.
    fn poll_run(self: Pin<&Self>, cx: &mut Context<'_>) -> Poll<RunEnd<E>>;
    /// Drops the child's future in place, unless it finished, and tells the handle
    /// `outcome` (`ChildAborted`: the local scope was dropped; `ChildPanicked`) unless it
    /// was told already. A panic in the future's drop propagates, after the handle was told.
    fn drop_future(&self, outcome: JoinError);
}

/// How a local child's poll ended it: its failure, and a panic of its future's drop (the
/// child's panic too, SPEC N6; it replaces a value, not a failure, which is reported as
/// well, N4).
struct RunEnd<E> {
    failure: Option<Failure<E>>,
    drop_panic: Option<Box<dyn std::any::Any + Send>>,
}

/// A local child as its handle sees it.
trait Outcome<T> {
    fn scope(&self) -> &ChildScope;
    /// Takes the outcome, or leaves `waker` to be woken when it comes.
    fn take(&self, waker: &Waker) -> Option<Result<T, JoinError>>;
}

impl<F, T, E> LocalTask<'_, F, T, E> {
    fn new(future: F) -> Self {
        LocalTask {
            scope: ChildScope::new(),
            next: Cell::new(None),
            waiter: Cell::new(None),
            stage: Stage::new(future),
        }
    }

    fn deliver(&self, outcome: Result<T, JoinError>) {
        self.stage.finish(outcome);
        if let Some(waiter) = self.waiter.take() {
            // The handle's waiter is foreign to the child: a panic of its waker must neither
            // take the child's failure or drop panic from the scope (SPEC N4, N6) nor stop a
            // drop of many children half-way.
            catch_waker_panic(
                || "when a local child's outcome was given to its handle".to_string(),
                || waiter.wake(),
            );
        }
    }
}

impl<'env, F, T, E> Run<'env, E> for LocalTask<'env, F, T, E>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError,
{
    fn next(&self) -> &Cell<Option<Task<'env, E>>> {
        &self.next
    }

    fn scope(&self) -> &ChildScope {
        &self.scope
    }

    fn poll_run(self: Pin<&Self>, cx: &mut Context<'_>) -> Poll<RunEnd<E>> {
        let Poll::Ready(output) = self.project_ref().stage.poll(cx) else {
            return Poll::Pending;
        };
        let Some((output, drop_panic)) = output else {
            return Poll::Ready(RunEnd {
                failure: None,
                drop_panic: None,
            });
        };
        let (outcome, failure) = match output {
            Ok(value) => (Ok(value), None),
            // An echo of a cancellation: not a failure (SPEC S15). Polled in the child's
            // frame, so `is_cancelled` asks the child's scope.
            Err(error) if error.as_cancelled().is_some() && crate::point::is_cancelled() => {
                (Err(JoinError::ChildCancelled), None)
            }
            Err(error) => {
                let stray = error.as_cancelled().is_some();
                let origin = local_origin(self.scope.id());
                (
                    Err(JoinError::ChildFailed),
                    Some(Failure::new(origin, error, stray)),
                )
            }
        };
        // A panic in the future's drop replaces a value (as in a nursery's child task).
        let outcome = match (&drop_panic, outcome) {
            (Some(_), Ok(_)) => Err(JoinError::ChildPanicked),
            (_, outcome) => outcome,
        };
        self.deliver(outcome);
        Poll::Ready(RunEnd {
            failure,
            drop_panic,
        })
    }

    fn drop_future(&self, outcome: JoinError) {
        /// Tells the handle even when the future's drop panics.
        struct Tell<'a, 'env, F, T, E>(&'a LocalTask<'env, F, T, E>, Option<JoinError>);
        impl<F, T, E> Drop for Tell<'_, '_, F, T, E> {
            fn drop(&mut self) {
                if let Some(outcome) = self.1.take() {
                    self.0.deliver(Err(outcome));
                }
            }
        }
        match self.stage.state() {
            State::Running => {
                let _tell = Tell(self, Some(outcome));
                self.stage.drop_future();
            }
            // Called by the scope's poll loop after a child's poll returned or unwound, and
            // by the scope's drop: never within the child's poll.
            State::Polling => unreachable!("a local child's future dropped within its own poll"),
            // Its poll returned and `poll_run` unwound before telling.
            State::Ended => self.deliver(Err(outcome)),
            State::Finished | State::Taken => {}
        }
    }
}

impl<F, T, E> Outcome<T> for LocalTask<'_, F, T, E> {
    fn scope(&self) -> &ChildScope {
        &self.scope
    }

    fn take(&self, waker: &Waker) -> Option<Result<T, JoinError>> {
        if let Some(outcome) = self.stage.take() {
            return Some(outcome);
        }
        if polled_by(&self.scope) {
            panic!("tokio-nursery: a local child awaited its own handle (it would never finish)");
        }
        let old = self.waiter.take();
        let keep = old.as_ref().is_some_and(|old| old.will_wake(waker));
        self.waiter.set(old);
        if !keep {
            // The new waker is stored before the old one is dropped: a waker's clone or drop
            // may panic, and the handle must not be left with none.
            self.waiter.set(Some(waker.clone()));
        }
        None
    }
}

/// Whether the code running is (within) the poll of the local child whose scope is `scope`.
fn polled_by(scope: &ChildScope) -> bool {
    context::with_current(|mut frame| {
        while let Some(current) = frame {
            if current
                .child_scope()
                .is_some_and(|polled| std::ptr::eq(polled, scope))
            {
                return true;
            }
            frame = current.parent();
        }
        false
    })
}

/// The indices of woken children, and the scope's own waker.
struct ReadyQueue {
    queue: Mutex<VecDeque<usize>>,
    parent: Mutex<Option<Waker>>,
}

struct ChildWaker {
    /// The child's index in the slab; rewritten only while no clone of the waker exists.
    index: AtomicUsize,
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl ArcWake for ChildWaker {
    fn wake_by_ref(this: &Arc<Self>) {
        if !this.queued.swap(true, Ordering::AcqRel) {
            lock(&this.ready.queue).push_back(this.index.load(Ordering::Relaxed));
            // Taken out and woken after the lock (DESIGN invariant 5: a waker may run code
            // that wakes another child, here, on this thread); the scope's next poll puts
            // its waker back, and until then it has been woken already.
            let parent = lock(&this.ready.parent).take();
            if let Some(parent) = parent {
                parent.wake();
            }
        }
    }
}

/// The local scope's node, as its children's handles hold it.
struct Parent(Arc<Node>);

/// The handle of a local child: await it for the child's value. Awaiting it is a
/// cancellation point of the awaiting code's scope, as for [`ChildHandle`](crate::ChildHandle).
/// A child dropped with its scope's future answers [`JoinError::ChildAborted`] (to a waiter
/// whose scope is not cancelled).
///
/// # Panics
///
/// Polled by its own child (which could then never finish): a panic, the child's. Polled
/// again after it gave the child's outcome; a [`JoinError::Cancelled`] is not the outcome,
/// so awaiting again after one is fine.
pub struct LocalHandle<'env, T> {
    child: Pin<Rc<dyn Outcome<T> + 'env>>,
    /// The local scope's node, under which the child's scope is made if needed.
    parent: Rc<Parent>,
    waiter: Waiter,
    /// The marker of a child that ended without a value, kept when a waiter whose scope
    /// was cancelled got that cancellation instead (see [`ChildHandle`](crate::ChildHandle)).
    kept: Option<JoinError>,
}

impl<T> LocalHandle<'_, T> {
    /// Cancels this child alone, cooperatively. Not a failure.
    pub fn cancel(&self) {
        self.cancel_because(CancelReason::Explicit(None));
    }

    /// As [`cancel`](Self::cancel), with user data the child reads from its `Cancelled`
    /// (as [`ChildHandle::cancel_with`](crate::ChildHandle::cancel_with)).
    pub fn cancel_with<D: std::any::Any + Send + Sync>(&self, data: D) {
        self.cancel_because(CancelReason::explicit_with(data));
    }

    fn cancel_because(&self, reason: CancelReason) {
        if let Some(node) = self.child.scope().node_unless_ended(&self.parent.0) {
            node.cancel(reason);
        }
    }
}

impl<T> Future for LocalHandle<'_, T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let outcome = match this.kept.take() {
            Some(marker) => Some(Err(marker)),
            None => this.child.take(cx.waker()),
        };
        if let Some(outcome) = outcome {
            // Waits no more: the awaiting scope need not wake this task for a cancellation.
            this.waiter.clear();
            let kept = &mut this.kept;
            return Poll::Ready(JoinError::for_waiter(outcome, |marker| {
                *kept = Some(marker)
            }));
        }
        this.waiter
            .poll_cancelled(cx)
            .map(|c| Err(JoinError::Cancelled(c)))
    }
}

impl<T> fmt::Debug for LocalHandle<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalHandle")
            .field("scope", &self.child.scope().id())
            .finish()
    }
}

impl<'env, E> LocalScope<'env, E>
where
    E: CancelError + fmt::Debug + 'env,
{
    /// Spawns a child that may borrow from the caller's stack. It starts at the scope's next
    /// poll, in a scope under the local scope's.
    pub fn spawn<F, T>(&self, future: F) -> LocalHandle<'env, T>
    where
        F: Future<Output = Result<T, E>> + 'env,
        T: 'env,
    {
        let task = Rc::pin(LocalTask::new(future));
        // Queued without waking the scope's task: `spawn` runs only while the scope's
        // future is being polled (in its body), and that poll goes on to poll the children.
        self.fresh.borrow_mut().push_back(task.clone());
        LocalHandle {
            child: task,
            parent: self.for_handles.clone(),
            waiter: Waiter::default(),
            kept: None,
        }
    }

    /// The local scope's cancel scope.
    pub fn scope(&self) -> ScopeHandle {
        ScopeHandle {
            node: self.node.clone(),
        }
    }
}

/// A local child has no task: it is named by its scope.
fn local_origin(scope: ScopeId) -> Origin {
    Origin::Local { scope }
}

/// Runs `body` with a [`LocalScope`] to spawn children that may borrow from the caller's
/// stack (SPEC B1), and waits for the body and every child. The outcome is a nursery's:
/// `Ok(Some(value))`, `Ok(None)` (the local scope's own cancellation absorbed),
/// `Err(NurseryError::Failed(..))` with every failure, or `Err(NurseryError::Cancelled(..))`
/// passing an enclosing cancellation on; the earliest panic is resumed.
///
/// Its children run only inside its future's polls: a local scope's future leaked with
/// `mem::forget` after a poll leaves them unpolled and undropped for good, so nothing of
/// theirs runs after the leak (their borrows stay sound).
///
/// The future is never `Send`, even when every child is: the scope keeps its children in
/// single-threaded shared state (`Rc`, `RefCell`), which is what makes a child cost one
/// allocation. Await it where a `!Send` future may run: `#[tokio::main]`'s or
/// `block_on`'s body, [`tokio::task::spawn_local`] on a `LocalSet` or a `LocalRuntime`,
/// or a nursery's [`spawn_local`](crate::NurseryHandle::spawn_local) child. Inside a task
/// that must be `Send` (`tokio::spawn`, a nursery's `spawn`, most servers' request
/// handlers) use [`parallel_scope`](crate::parallel_scope), which blocks a worker thread,
/// or `'static` children of a [`Nursery`](crate::Nursery) sharing data through an `Arc`.
///
/// ```
/// use tokio_nursery::{local_scope, Cancelled};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let words = vec!["borrowed", "from", "the", "stack"];
/// let lengths = local_scope(async |s| {
///     let handles: Vec<_> = words
///         .iter()
///         .map(|w| s.spawn(async move { Ok::<_, Cancelled>(w.len()) }))
///         .collect();
///     let mut total = 0;
///     for h in handles {
///         total += h.await.unwrap();
///     }
///     Ok::<_, Cancelled>(total)
/// })
/// .await;
/// assert_eq!(lengths.unwrap(), Some(20));
/// # }
/// ```
pub async fn local_scope<'env, B, T, E>(body: B) -> Result<Option<T>, NurseryError<E>>
where
    B: AsyncFnOnce(&LocalScope<'env, E>) -> Result<T, E>,
    E: CancelError + fmt::Debug + 'env,
{
    let node = enter_preset(&Arc::new(Node::new(ScopeId::next(), false, None)));
    // Declared before the scope, so dropped after it: a dropped scope drops its children
    // while its node is still linked, and a wait-mode nursery in a child finds the nursery
    // around the scope to adopt its children (SPEC N9).
    let mut ended = EndScope {
        node: node.clone(),
        caught: false,
    };
    let scope = LocalScope {
        for_handles: Rc::new(Parent(node.clone())),
        node,
        children: RefCell::new(Pages::new()),
        fresh: RefCell::new(Fresh::new()),
        spare: Cell::new(None),
        ready: Arc::new(ReadyQueue {
            queue: Mutex::new(VecDeque::new()),
            parent: Mutex::new(None),
        }),
        failures: RefCell::new(Vec::new()),
        panics: RefCell::new(Vec::new()),
        starved: Cell::new(false),
    };
    let mut body = pin!(body(&scope));
    let mut body_done = false;
    let mut value = None;
    poll_fn(|cx| {
        // Cloned before the lock, the old waker dropped after it (DESIGN invariant 5).
        let waker = cx.waker().clone();
        let old = lock(&scope.ready.parent).replace(waker);
        drop(old);
        // Children the body left no budget for last time go first: a body that spends
        // tokio's whole budget at every poll (a loop of checkpoints) must not starve them.
        let children_first = scope.starved.take();
        let mut children_ready = children_first && scope.poll_children();
        if !body_done {
            let node = &scope.node;
            let polled = catch_unwind(AssertUnwindSafe(|| {
                context::enter(FrameKind::Linked(node), || body.as_mut().poll(cx))
            }));
            match polled {
                Ok(Poll::Pending) => {}
                Ok(Poll::Ready(Ok(v))) => {
                    value = Some(v);
                    body_done = true;
                }
                Ok(Poll::Ready(Err(error))) => {
                    body_done = true;
                    let cancellation = error.as_cancelled().is_some();
                    if !(cancellation && node.is_cancelled()) {
                        scope.fail(Failure::new(Origin::Body, error, cancellation));
                    }
                }
                Err(payload) => {
                    body_done = true;
                    scope.panicked(Origin::Body, payload);
                }
            }
        }
        // After the body too, unless the children just ran: and then still if the body
        // spawned some (a spawn does not wake the task, this poll must go on to them).
        if !children_first || (!children_ready && !scope.fresh.borrow().is_empty()) {
            children_ready = scope.poll_children();
        }
        if children_ready {
            // The budget ran out with children still ready: yield, then go on.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if body_done && scope.children.borrow().is_empty() && scope.fresh.borrow().is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    let out = scope.finish(value);
    // Absorbed its own cancellation (SPEC S9): decided before the node ends, as a
    // nursery's is.
    ended.caught = matches!(out, Ok(None));
    out
}

impl<E> Drop for LocalScope<'_, E> {
    /// Dropping the scope drops its children at once (SPEC B1), each ended in turn. A
    /// child's future that panics in its drop does not keep the others from being dropped:
    /// the first such panic is resumed after all were (reported instead if the scope is
    /// dropped during a panic already), the others reported.
    fn drop(&mut self) {
        let children = std::mem::take(self.children.get_mut());
        let mut fresh = std::mem::take(self.fresh.get_mut());
        let mut resumed = None;
        let parked = children.iter().map(|(_, child)| child.task.clone());
        let fresh = std::iter::from_fn(|| fresh.pop_front());
        for task in parked.chain(fresh) {
            let dropped = catch_unwind(AssertUnwindSafe(|| {
                task.drop_future(JoinError::ChildAborted)
            }));
            task.scope().end();
            if let Err(payload) = dropped {
                let origin = local_origin(task.scope().id());
                if resumed.is_none() && !std::thread::panicking() {
                    resumed = Some(payload);
                } else {
                    crate::nursery::report_default(&Report::Panic {
                        origin: &origin,
                        payload: &*payload,
                        adopted: false,
                    });
                }
            }
        }
        drop(children);
        if let Some(payload) = resumed {
            resume_unwind(payload);
        }
    }
}

/// Ends the local scope's node when its future completes or is dropped, after its children
/// were dropped.
struct EndScope {
    node: Arc<Node>,
    /// The scope absorbed its own cancellation (SPEC S9).
    caught: bool,
}

impl Drop for EndScope {
    fn drop(&mut self) {
        self.node.end(self.caught);
    }
}

impl<E: CancelError + fmt::Debug> LocalScope<'_, E> {
    /// Polls the new and the woken children; true if it stopped with children still ready
    /// (tokio's cooperative budget ran out, or every child was polled once already).
    fn poll_children(&self) -> bool {
        // At most one poll per child a call, like `FuturesUnordered`: a child that wakes
        // itself without spending tokio's budget (or a scope polled outside tokio, where the
        // budget never runs out) must not keep the scope's task, and its body, to itself.
        let polls = self.children.borrow().len() + self.fresh.borrow().len();
        let mut polls_left = polls;
        loop {
            if polls_left == 0 || !tokio::task::coop::has_budget_remaining() {
                if self.children.borrow().is_empty() && self.fresh.borrow().is_empty() {
                    // Only stale wakes can be queued: no child is left to wake.
                    lock(&self.ready.queue).clear();
                    return false;
                }
                let ready = !self.fresh.borrow().is_empty() || !lock(&self.ready.queue).is_empty();
                self.starved.set(ready && polls_left == polls);
                return ready;
            }
            let mut children = self.children.borrow_mut();
            // The first child not yet polled, else the next woken one.
            let fresh = self.fresh.borrow_mut().pop_front();
            let parked = fresh.is_none();
            let (index, task, waker) = match fresh {
                Some(task) => {
                    // Its waker names the slot it takes if it parks: nothing else enters
                    // the pages while it is polled (only the body spawns).
                    let index = children.next_key();
                    (index, task, self.waker_for(index))
                }
                None => {
                    let Some(index) = lock(&self.ready.queue).pop_front() else {
                        return false;
                    };
                    // A stale waker may name a child that has finished since.
                    let Some(child) = children.get_mut(index) else {
                        continue;
                    };
                    let waker = child.waker.take().expect("a parked child keeps its waker");
                    // Re-armed before the poll: a wake during the poll re-queues.
                    waker.queued.store(false, Ordering::Release);
                    (index, child.task.clone(), waker)
                }
            };
            polls_left -= 1;
            let frame = FrameKind::Child {
                parent: &self.node,
                scope: task.scope(),
            };
            let polled = catch_unwind(AssertUnwindSafe(|| {
                let waker = waker_ref(&waker);
                let mut cx = Context::from_waker(&waker);
                context::enter(frame, || task.as_ref().poll_run(&mut cx))
            }));
            let finished = match polled {
                Ok(Poll::Pending) => {
                    if parked {
                        let child = children.get_mut(index).expect("a parked child stays");
                        child.waker = Some(waker);
                    } else {
                        let key = children.insert(Child {
                            task,
                            waker: Some(waker),
                        });
                        debug_assert_eq!(key, index, "the slot its waker names");
                    }
                    continue;
                }
                Ok(Poll::Ready(failure)) => Ok(failure),
                Err(payload) => Err(payload),
            };
            if parked {
                children.try_remove(index);
            }
            drop(children);
            self.recycle(waker);
            // A panicked child's future is dropped now; its drop may panic too (the same
            // child's second panic, recorded after the first).
            let again = match finished {
                Err(_) => catch_unwind(AssertUnwindSafe(|| {
                    task.drop_future(JoinError::ChildPanicked);
                }))
                .err(),
                Ok(_) => None,
            };
            task.scope().end();
            match finished {
                Ok(end) => {
                    if let Some(failure) = end.failure {
                        self.fail(failure);
                    }
                    if let Some(payload) = end.drop_panic {
                        self.panicked(local_origin(task.scope().id()), payload);
                    }
                }
                Err(payload) => {
                    self.panicked(local_origin(task.scope().id()), payload);
                }
            }
            if let Some(payload) = again {
                self.panicked(local_origin(task.scope().id()), payload);
            }
        }
    }

    /// A waker for the child at `index`, polled for the first time: the spare, if any.
    fn waker_for(&self, index: usize) -> Arc<ChildWaker> {
        match self.spare.take() {
            Some(spare) => {
                // Unshared since `recycle`: no clone can wake it or read the index.
                spare.index.store(index, Ordering::Relaxed);
                spare.queued.store(false, Ordering::Relaxed);
                spare
            }
            None => Arc::new(ChildWaker {
                index: AtomicUsize::new(index),
                queued: AtomicBool::new(false),
                ready: self.ready.clone(),
            }),
        }
    }

    /// Keeps the waker of a finished child for the next one, unless a clone of it is still
    /// out (it may wake it, naming the old index). No clone can be made once the count is
    /// one: only a holder of a clone makes one, and the scope makes no `Weak`.
    fn recycle(&self, waker: Arc<ChildWaker>) {
        if Arc::strong_count(&waker) == 1 {
            // Pairs with the `Release` decrement of the last clone dropped elsewhere: its
            // uses of the waker happen before the spare's index is rewritten.
            fence(Ordering::Acquire);
            self.spare.set(Some(waker));
        }
    }

    /// Fail-fast (SPEC N4): the first failure cancels the local scope.
    fn fail(&self, failure: Failure<E>) {
        let first = self.failures.borrow().is_empty() && self.panics.borrow().is_empty();
        self.failures.borrow_mut().push(failure);
        if first {
            self.cancel_siblings();
        }
    }

    fn panicked(&self, origin: Origin, payload: Box<dyn std::any::Any + Send>) {
        let first = self.failures.borrow().is_empty() && self.panics.borrow().is_empty();
        self.panics.borrow_mut().push((origin, payload));
        if first {
            self.cancel_siblings();
        }
    }

    fn cancel_siblings(&self) {
        crate::nursery::fail_fast(&self.node, "local scope");
    }

    /// Everything has stopped: the outcome, as a nursery's (SPEC N4, N6).
    fn finish<T>(&self, value: Option<T>) -> Result<Option<T>, NurseryError<E>> {
        let failures = std::mem::take(&mut *self.failures.borrow_mut());
        let mut panics = std::mem::take(&mut *self.panics.borrow_mut());
        if !panics.is_empty() {
            let (_, first) = panics.remove(0);
            for (origin, payload) in &panics {
                crate::nursery::report_default(&Report::Panic {
                    origin,
                    payload: &**payload,
                    adopted: false,
                });
            }
            for failure in &failures {
                crate::nursery::report_default(&Report::Failure {
                    origin: failure.origin(),
                    error: failure.error(),
                    adopted: false,
                });
            }
            // Dropped here, where a panicking destructor is caught, not while unwinding.
            crate::nursery::drop_quietly((panics, failures));
            resume_unwind(first);
        }
        if !failures.is_empty() {
            return Err(NurseryError::Failed(failures));
        }
        if let Some(value) = value {
            return Ok(Some(value));
        }
        if self.node.absorbs() {
            Ok(None)
        } else {
            Err(NurseryError::Cancelled(cancelled_here(&self.node)))
        }
    }
}
/// The one `unsafe` of this module (a child's future pinned inside its `Rc`) under Miri
/// (`cargo +nightly miri test --lib -- local`): self-referential children polled in place,
/// woken from another thread, finished, recycled, and dropped with their scope while they
/// borrow from the stack.
#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::future::Future;
    use std::pin::{Pin, pin};
    use std::task::{Context, Poll, Waker};

    use super::local_scope;
    use crate::{Cancelled, JoinError};

    /// Reads the borrowed data when dropped: a use after the borrow ended is what Miri flags.
    struct ReadsOnDrop<'a>(&'a [u64], &'a Cell<u32>);

    impl Drop for ReadsOnDrop<'_> {
        fn drop(&mut self) {
            assert_eq!(self.0.iter().sum::<u64>(), 6);
            self.1.set(self.1.get() + 1);
        }
    }

    /// Parks once, woken from another thread; ready after.
    async fn park_once() {
        let mut parked = false;
        std::future::poll_fn(|cx| {
            if parked {
                return Poll::Ready(());
            }
            parked = true;
            let waker = cx.waker().clone();
            std::thread::spawn(move || waker.wake());
            Poll::Pending
        })
        .await
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn children_are_polled_in_place_and_finish() {
        let data = vec![1u64, 2, 3];
        let dropped = Cell::new(0);
        let out = runtime().block_on(local_scope(async |s| {
            let mut handles = Vec::new();
            for i in 0..4u64 {
                let (data, dropped) = (&data, &dropped);
                handles.push(s.spawn(async move {
                    // A local borrowed across an await: the future refers to itself.
                    let guard = ReadsOnDrop(data, dropped);
                    let own = [i; 4];
                    let view = &own;
                    if i % 2 == 0 {
                        park_once().await;
                    }
                    Ok::<_, Cancelled>(view.iter().sum::<u64>() + guard.0.len() as u64)
                }));
            }
            let mut sum = 0;
            for handle in handles {
                sum += handle.await.unwrap();
            }
            Ok::<_, Cancelled>(sum)
        }));
        assert_eq!(out.unwrap(), Some(4 * (1 + 2 + 3) + 4 * 3));
        assert_eq!(dropped.get(), 4);
    }

    /// Records where it was polled; flags a drop anywhere else (a move after pinning).
    struct Pinned<'a> {
        at: Cell<usize>,
        moved: &'a Cell<bool>,
        _pin: std::marker::PhantomPinned,
    }

    impl Future for Pinned<'_> {
        type Output = Result<(), Cancelled>;

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
            self.at.set(&*self as *const Self as usize);
            Poll::Pending
        }
    }

    impl Drop for Pinned<'_> {
        fn drop(&mut self) {
            if self.at.get() != 0 && self.at.get() != self as *const Self as usize {
                self.moved.set(true);
            }
        }
    }

    /// Polls a scope once (its children once each), then drops it.
    fn poll_once_then_drop<F: Future>(scope: F) {
        let mut scope = pin!(scope);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(scope.as_mut().poll(&mut cx).is_pending());
    }

    #[test]
    fn a_child_dropped_with_its_scope_is_dropped_where_it_was_polled() {
        let moved = Cell::new(false);
        poll_once_then_drop(local_scope(async |s| {
            let _handle = s.spawn(Pinned {
                at: Cell::new(0),
                moved: &moved,
                _pin: std::marker::PhantomPinned,
            });
            std::future::pending::<()>().await;
            Ok::<_, Cancelled>(())
        }));
        assert!(!moved.get(), "the child's future moved after it was pinned");
    }

    /// tokio's `Notified` links itself into the `Notify` by address: a move after pinning
    /// leaves the list pointing at freed memory (Miri reports the use after free).
    #[test]
    fn a_child_parked_on_a_notify_and_dropped_with_its_scope_unlinks_itself() {
        let notify = tokio::sync::Notify::new();
        poll_once_then_drop(local_scope(async |s| {
            let _handle = s.spawn(async {
                notify.notified().await;
                Ok::<_, Cancelled>(())
            });
            std::future::pending::<()>().await;
            Ok::<_, Cancelled>(())
        }));
        notify.notify_waiters();
    }

    #[test]
    fn children_dropped_with_their_scope_leave_their_handles_an_abort() {
        let data = vec![1u64, 2, 3];
        let dropped = Cell::new(0);
        let handles = Cell::new(Vec::new());
        {
            let mut scope = pin!(local_scope(async |s| {
                let mut spawned = handles.take();
                for _ in 0..3 {
                    let (data, dropped) = (&data, &dropped);
                    spawned.push(s.spawn(async move {
                        let _guard = ReadsOnDrop(data, dropped);
                        std::future::pending::<()>().await;
                        Ok::<_, Cancelled>(())
                    }));
                }
                handles.set(spawned);
                std::future::pending::<()>().await;
                Ok::<_, Cancelled>(())
            }));
            let mut cx = Context::from_waker(Waker::noop());
            assert!(scope.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            dropped.get(),
            3,
            "dropped with the scope, reading the stack"
        );
        let mut cx = Context::from_waker(Waker::noop());
        for handle in handles.take() {
            let polled = pin!(handle).poll(&mut cx);
            assert!(matches!(polled, Poll::Ready(Err(JoinError::ChildAborted))));
        }
    }

    /// Children spawned in the scope's last poll and never polled (tokio's budget ran out
    /// first) are dropped with it as well, and their handles told: they are in no slot yet.
    #[test]
    fn children_never_polled_are_dropped_with_their_scope() {
        const CHILDREN: usize = 200; // more than tokio's budget of 128 per poll
        let data = vec![1u64, 2, 3];
        let dropped = Cell::new(0);
        let polled = Cell::new(0);
        let handles = Cell::new(Vec::new());
        runtime().block_on(async {
            poll_once_then_drop(local_scope(async |s| {
                let mut spawned = Vec::new();
                for _ in 0..CHILDREN {
                    let (data, dropped, polled) = (&data, &dropped, &polled);
                    let guard = ReadsOnDrop(data, dropped);
                    spawned.push(s.spawn(async move {
                        let _guard = guard;
                        polled.set(polled.get() + 1);
                        tokio::task::consume_budget().await;
                        std::future::pending::<()>().await;
                        Ok::<_, Cancelled>(())
                    }));
                }
                handles.set(spawned);
                std::future::pending::<()>().await;
                Ok::<_, Cancelled>(())
            }));
        });
        assert!(
            (1..CHILDREN).contains(&polled.get()),
            "some children were polled, some were not: {}",
            polled.get()
        );
        assert_eq!(dropped.get(), CHILDREN as u32);
        let mut cx = Context::from_waker(Waker::noop());
        for handle in handles.take() {
            let outcome = pin!(handle).poll(&mut cx);
            assert!(matches!(outcome, Poll::Ready(Err(JoinError::ChildAborted))));
        }
    }
}
