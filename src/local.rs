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

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use slab::Slab;

use crate::cancelled::CancelError;
use crate::context::{self, FrameKind};
use crate::node::{Node, ScopeId};
use crate::nursery::ChildScope;
use crate::nursery::{Failure, JoinError, NurseryError, Origin, Report};
use crate::point::Waiter;
use crate::reason::CancelReason;
use crate::scope::{ScopeHandle, cancelled_here, enter_preset};
use crate::sync::lock;

/// The spawner of a [`local_scope`]: children spawned here may borrow from the stack
/// (`'env`) and need not be `Send`.
pub struct LocalScope<'env, E> {
    node: Arc<Node>,
    children: RefCell<Slab<Child<'env, E>>>,
    ready: Arc<ReadyQueue>,
    failures: RefCell<Vec<Failure<E>>>,
    panics: RefCell<Vec<(Origin, Box<dyn std::any::Any + Send>)>>,
}

struct Child<'env, E> {
    /// The child, delivering its outcome to its handle; returns its failure, if any.
    future: Pin<Box<dyn Future<Output = Option<Failure<E>>> + 'env>>,
    /// Its scope and its handle's slot, shared with the handle.
    shared: Rc<dyn Outlet + 'env>,
    waker: Waker,
    woken: Arc<ChildWaker>,
}

/// What a local child shares with its handle (one allocation): where its outcome waits,
/// and its scope, made under the local scope's only when something needs it (as a nursery
/// child's: SPEC S1), so a child that meets no cancellation point costs no node.
struct LocalChild<T> {
    slot: RefCell<Slot<T>>,
    scope: ChildScope,
}

/// A local child as its scope sees it, whatever its output type.
trait Outlet {
    fn scope(&self) -> &ChildScope;
    /// Tells the handle the child panicked.
    fn panicked(&self);
}

impl<T> Outlet for LocalChild<T> {
    fn scope(&self) -> &ChildScope {
        &self.scope
    }

    fn panicked(&self) {
        deliver(&self.slot, Err(JoinError::ChildPanicked));
    }
}

/// The indices of woken children, and the scope's own waker.
struct ReadyQueue {
    queue: Mutex<VecDeque<usize>>,
    parent: Mutex<Option<Waker>>,
}

struct ChildWaker {
    index: usize,
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl Wake for ChildWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.enqueue() {
            if let Some(parent) = lock(&self.ready.parent).as_ref() {
                parent.wake_by_ref();
            }
        }
    }
}

impl ChildWaker {
    /// Puts the child on the ready queue unless it is there already; true if it was not.
    fn enqueue(&self) -> bool {
        let queued = !self.queued.swap(true, Ordering::AcqRel);
        if queued {
            lock(&self.ready.queue).push_back(self.index);
        }
        queued
    }
}

/// Where a local child's outcome waits for its handle.
struct Slot<T> {
    outcome: Option<Result<T, JoinError>>,
    waiter: Option<Waker>,
}

/// The handle of a local child: await it for the child's value. Awaiting it is a
/// cancellation point of the awaiting code's scope, as for [`ChildHandle`](crate::ChildHandle).
pub struct LocalHandle<T> {
    child: Rc<LocalChild<T>>,
    /// The local scope's node, under which the child's scope is made if needed.
    parent: Arc<Node>,
    waiter: Waiter,
}

impl<T> LocalHandle<T> {
    /// Cancels this child alone, cooperatively. Not a failure.
    pub fn cancel(&self) {
        if let Some(node) = self.child.scope.node_unless_ended(&self.parent) {
            node.cancel(CancelReason::Explicit(None));
        }
    }
}

impl<T> Future for LocalHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        {
            let mut slot = this.child.slot.borrow_mut();
            if let Some(outcome) = slot.outcome.take() {
                return Poll::Ready(outcome);
            }
            slot.waiter = Some(cx.waker().clone());
        }
        this.waiter
            .poll_cancelled(cx)
            .map(|c| Err(JoinError::Cancelled(c)))
    }
}

impl<T> fmt::Debug for LocalHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalHandle")
            .field("scope", &self.child.scope.id())
            .finish()
    }
}

impl<'env, E> LocalScope<'env, E>
where
    E: CancelError + fmt::Debug + 'env,
{
    /// Spawns a child that may borrow from the caller's stack. It starts at the scope's next
    /// poll, in a scope under the local scope's.
    pub fn spawn<F, T>(&self, future: F) -> LocalHandle<T>
    where
        F: Future<Output = Result<T, E>> + 'env,
        T: 'env,
    {
        let mut children = self.children.borrow_mut();
        let entry = children.vacant_entry();
        let child = Rc::new(LocalChild {
            slot: RefCell::new(Slot {
                outcome: None,
                waiter: None,
            }),
            scope: ChildScope::new(entry.key()),
        });
        let delivered = child.clone();
        let wrapped = async move {
            let (outcome, failure) = match future.await {
                Ok(value) => (Ok(value), None),
                // An echo of a cancellation: not a failure (SPEC S15). Polled in the child's
                // frame, so `is_cancelled` asks the child's scope.
                Err(error) if error.as_cancelled().is_some() && crate::point::is_cancelled() => {
                    (Err(JoinError::ChildCancelled), None)
                }
                Err(error) => {
                    let stray = error.as_cancelled().is_some();
                    let origin = local_origin(delivered.scope.id());
                    (
                        Err(JoinError::ChildFailed),
                        Some(Failure::new(origin, error, stray)),
                    )
                }
            };
            deliver(&delivered.slot, outcome);
            failure
        };
        let waker = Arc::new(ChildWaker {
            index: entry.key(),
            queued: AtomicBool::new(false),
            ready: self.ready.clone(),
        });
        entry.insert(Child {
            future: Box::pin(wrapped),
            shared: child.clone(),
            waker: Waker::from(waker.clone()),
            woken: waker.clone(),
        });
        drop(children);
        // Queued without waking the scope's task: `spawn` runs only while the scope's
        // future is being polled (in its body or a child), and that poll goes on to poll
        // the ready children.
        waker.enqueue();
        LocalHandle {
            child,
            parent: self.node.clone(),
            waiter: Waiter::default(),
        }
    }

    /// The local scope's cancel scope.
    pub fn scope(&self) -> ScopeHandle {
        ScopeHandle {
            node: self.node.clone(),
        }
    }
}

fn deliver<T>(slot: &RefCell<Slot<T>>, outcome: Result<T, JoinError>) {
    let mut slot = slot.borrow_mut();
    slot.outcome = Some(outcome);
    if let Some(waiter) = slot.waiter.take() {
        waiter.wake();
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
    let scope = LocalScope {
        node,
        children: RefCell::new(Slab::new()),
        ready: Arc::new(ReadyQueue {
            queue: Mutex::new(VecDeque::new()),
            parent: Mutex::new(None),
        }),
        failures: RefCell::new(Vec::new()),
        panics: RefCell::new(Vec::new()),
    };
    let ended = EndScope(&scope.node);
    let mut body = pin!(body(&scope));
    let mut body_done = false;
    let mut value = None;
    poll_fn(|cx| {
        *lock(&scope.ready.parent) = Some(cx.waker().clone());
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
        if scope.poll_children() {
            // The budget ran out with children still ready: yield, then go on.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if body_done && scope.children.borrow().is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    drop(ended);
    scope.finish(value)
}

impl<E> Drop for LocalScope<'_, E> {
    /// Dropping the scope drops its children at once (SPEC B1), each ended in turn.
    fn drop(&mut self) {
        for (_, child) in std::mem::take(self.children.get_mut()) {
            let Child { future, shared, .. } = child;
            drop(future);
            shared.scope().end();
        }
    }
}

/// Ends the local scope's node when its future completes or is dropped.
struct EndScope<'a>(&'a Arc<Node>);

impl Drop for EndScope<'_> {
    fn drop(&mut self) {
        self.0.end(false);
    }
}

impl<E: CancelError + fmt::Debug> LocalScope<'_, E> {
    /// Polls the woken children; true if tokio's cooperative budget ran out first.
    fn poll_children(&self) -> bool {
        loop {
            if !tokio::task::coop::has_budget_remaining() {
                return !lock(&self.ready.queue).is_empty();
            }
            let Some(index) = lock(&self.ready.queue).pop_front() else {
                return false;
            };
            let mut children = self.children.borrow_mut();
            let Some(child) = children.get_mut(index) else {
                continue;
            };
            // Re-arm the child's waker before polling it (a wake during the poll re-queues).
            child.woken.queued.store(false, Ordering::Release);
            let mut cx = Context::from_waker(&child.waker);
            let frame = FrameKind::Child {
                parent: &self.node,
                scope: child.shared.scope(),
            };
            let future = &mut child.future;
            let polled = catch_unwind(AssertUnwindSafe(|| {
                context::enter(frame, || future.as_mut().poll(&mut cx))
            }));
            let finished = match polled {
                Ok(Poll::Pending) => continue,
                Ok(Poll::Ready(failure)) => Ok(failure),
                Err(payload) => Err(payload),
            };
            let child = children.remove(index);
            drop(children);
            let Child { future, shared, .. } = child;
            drop(future);
            shared.scope().end();
            match finished {
                Ok(Some(failure)) => self.fail(failure),
                Ok(None) => {}
                Err(payload) => {
                    shared.panicked();
                    self.panicked(local_origin(shared.scope().id()), payload);
                }
            }
        }
    }

    /// Fail-fast (SPEC N4): the first failure cancels the local scope.
    fn fail(&self, failure: Failure<E>) {
        let first = self.failures.borrow().is_empty() && self.panics.borrow().is_empty();
        self.failures.borrow_mut().push(failure);
        if first {
            self.node.cancel(CancelReason::SiblingFailed);
        }
    }

    fn panicked(&self, origin: Origin, payload: Box<dyn std::any::Any + Send>) {
        let first = self.failures.borrow().is_empty() && self.panics.borrow().is_empty();
        self.panics.borrow_mut().push((origin, payload));
        if first {
            self.node.cancel(CancelReason::SiblingFailed);
        }
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
