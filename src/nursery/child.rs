//! A nursery's children: the task wrapper that runs a child in its scope and reports its
//! end ([`ChildTask`]), and the handle its spawner gets ([`ChildHandle`], [`JoinError`]).

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project::{pin_project, pinned_drop};
use tokio::task::JoinHandle;

use super::Shared;
use super::collector::Sink;
use super::report::{Failure, Origin};
use crate::cancelled::{CancelError, Cancelled};
use crate::context::{self, FrameKind};
use crate::node::Node;
use crate::point::Waiter;
use crate::reason::CancelReason;

/// How a child ended, as its handle learns it. The nursery keeps failures and panics.
pub(crate) enum ChildOutput<T> {
    Value(T),
    Failed,
    Panicked,
    Cancelled,
    Aborted,
}

/// The future tokio runs for a child: the user's future, polled in the child's scope.
///
/// Its output goes to the child's [`ChildHandle`] through tokio's join handle, or, for a
/// child of a [`Collector`](crate::Collector), into the collector's queue; a started child
/// (SPEC N3) reports to its starter until it signals readiness.
#[pin_project(PinnedDrop)]
pub(crate) struct ChildTask<F, E, T> {
    #[pin]
    future: Option<F>,
    node: Arc<Node>,
    nursery: Arc<Shared<E>>,
    key: usize,
    name: Option<Arc<str>>,
    route: Route<T, E>,
}

/// Where a child's end goes besides the nursery.
pub(crate) enum Route<T, E> {
    /// To its handle, as the task's output.
    Handle,
    /// To a collector's queue.
    Collect(Sink<T>),
    /// To the code awaiting `start`, while the child has not signalled readiness.
    Start(Arc<dyn Starting<E>>),
}

/// A started child's link to its starter (SPEC N3).
pub(crate) trait Starting<E>: Send + Sync {
    /// If the child has not signalled yet, takes its early end for the starter; after the
    /// signal (or once moved to the nursery) gives it back.
    fn ended_early(&self, end: EarlyEnd<E>) -> Result<(), EarlyEnd<E>>;
}

/// How a started child ended before signalling readiness.
pub(crate) enum EarlyEnd<E> {
    Returned,
    Failed(E),
    /// An echo of a cancellation of the starter's scopes.
    Cancelled(E),
    Panicked(Box<dyn std::any::Any + Send>),
    Aborted,
}

impl<F, E, T> ChildTask<F, E, T> {
    pub(crate) fn new(
        future: F,
        node: Arc<Node>,
        nursery: Arc<Shared<E>>,
        key: usize,
        name: Option<Arc<str>>,
        route: Route<T, E>,
    ) -> Self {
        ChildTask {
            future: Some(future),
            node,
            nursery,
            key,
            name,
            route,
        }
    }
}

impl<F, T, E> Future for ChildTask<F, E, T>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError + fmt::Debug,
{
    type Output = ChildOutput<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ChildOutput<T>> {
        let mut this = self.project();
        let future = this
            .future
            .as_mut()
            .as_pin_mut()
            .expect("polled after completion");
        let node = &*this.node;
        let polled = catch_unwind(AssertUnwindSafe(|| {
            context::enter(FrameKind::Linked(node), || future.poll(cx))
        }));
        let ready = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(result)) => Ok(result),
            Err(payload) => Err(payload),
        };
        // Drop the future now, in the child's task, before anyone learns it finished. A
        // panic in its drop is the child's panic too (SPEC N6).
        let mut ready = ready;
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| this.future.set(None))) {
            match ready {
                Err(_) => this.nursery.panicked(origin(this.name, node), payload),
                Ok(_) => ready = Err(payload),
            }
        }
        let ready = match (&*this.route, ready) {
            (Route::Start(starting), ready) => match starting_end(starting.as_ref(), node, ready) {
                Some(ready) => ready,
                None => return Poll::Ready(ChildOutput::Cancelled),
            },
            (_, ready) => ready,
        };
        let output = settle(ready, node, this.nursery, this.name);
        Poll::Ready(match std::mem::replace(this.route, Route::Handle) {
            Route::Collect(sink) => {
                sink.deliver(output);
                ChildOutput::Cancelled // nobody joins a collected child's task
            }
            _ => output,
        })
    }
}

/// How a child's code ended: returned (`Ok`), or panicked with this payload.
pub(crate) type Ended<T, E> = Result<Result<T, E>, Box<dyn std::any::Any + Send>>;

/// Settles a child's end with its nursery (SPEC N4, N6, S15): an echo of a cancellation is
/// not a failure; any other error is one (stray if it holds a `Cancelled` while the child's
/// scope is not cancelled); a panic is one too.
pub(crate) fn settle<T, E: CancelError + fmt::Debug>(
    ended: Ended<T, E>,
    node: &Node,
    nursery: &Shared<E>,
    name: &Option<Arc<str>>,
) -> ChildOutput<T> {
    match ended {
        Ok(Ok(value)) => ChildOutput::Value(value),
        Ok(Err(error)) => {
            let cancellation = error.as_cancelled().is_some();
            if cancellation && node.is_cancelled() {
                ChildOutput::Cancelled
            } else {
                nursery.fail(Failure::new(origin(name, node), error, cancellation));
                ChildOutput::Failed
            }
        }
        Err(payload) => {
            nursery.panicked(origin(name, node), payload);
            ChildOutput::Panicked
        }
    }
}

/// A started child that ends before signalling: its end goes to the starter alone (SPEC N3).
/// Returns the end back if the child had signalled (it is then the nursery's).
fn starting_end<T, E: CancelError>(
    starting: &dyn Starting<E>,
    node: &Node,
    ended: Ended<T, E>,
) -> Option<Ended<T, E>> {
    let (early, value) = match ended {
        Ok(Ok(value)) => (EarlyEnd::Returned, Some(value)),
        Ok(Err(error)) if error.as_cancelled().is_some() && node.is_cancelled() => {
            (EarlyEnd::Cancelled(error), None)
        }
        Ok(Err(error)) => (EarlyEnd::Failed(error), None),
        Err(payload) => (EarlyEnd::Panicked(payload), None),
    };
    // Decided under the starter's lock: a signal and an early end cannot both win.
    match starting.ended_early(early) {
        Ok(()) => None,
        Err(early) => Some(match early {
            EarlyEnd::Returned => Ok(Ok(value.expect("a child that returned has its value"))),
            EarlyEnd::Cancelled(error) | EarlyEnd::Failed(error) => Ok(Err(error)),
            EarlyEnd::Panicked(payload) => Err(payload),
            EarlyEnd::Aborted => unreachable!("an abort is only reported from the drop path"),
        }),
    }
}

/// Who a child is, for reports: its task, or its scope where tokio gives no task id (a
/// drop outside the task's context).
fn origin(name: &Option<Arc<str>>, node: &Node) -> Origin {
    match tokio::task::try_id() {
        Some(id) => Origin::Child {
            id,
            name: name.clone(),
        },
        None => Origin::Local { scope: node.id() },
    }
}

#[pinned_drop]
impl<F, E, T> PinnedDrop for ChildTask<F, E, T> {
    fn drop(self: Pin<&mut Self>) {
        let mut this = self.project();
        // SPEC N1: the child's future is gone before the nursery counts it finished. A panic
        // in its drop (an aborted child) is reported, and the nursery still hears of the end.
        let dropped = catch_unwind(AssertUnwindSafe(|| this.future.set(None)));
        if let Err(payload) = dropped {
            this.nursery.panicked(origin(this.name, this.node), payload);
        }
        match std::mem::replace(this.route, Route::Handle) {
            // Dropped before it finished: aborted (SPEC N15 queues every outcome).
            Route::Collect(sink) => sink.deliver(ChildOutput::Aborted),
            // Aborted before signalling: the starter must not wait for ever.
            Route::Start(starting) => drop(starting.ended_early(EarlyEnd::Aborted)),
            Route::Handle => {}
        }
        this.node.end(false);
        this.nursery.registry.finished(*this.key);
    }
}

/// How a child's outcome reads for the code that joins it (SPEC N2).
pub(crate) fn joined<T>(output: ChildOutput<T>) -> Result<T, JoinError> {
    match output {
        ChildOutput::Value(value) => Ok(value),
        ChildOutput::Failed => Err(JoinError::ChildFailed),
        ChildOutput::Panicked => Err(JoinError::ChildPanicked),
        ChildOutput::Cancelled => Err(JoinError::ChildCancelled),
        ChildOutput::Aborted => Err(JoinError::ChildAborted),
    }
}

/// The handle of a child task: await it for the child's value; cancel or abort that child
/// alone.
///
/// Awaiting it is a cancellation point (SPEC S11): if the awaiting code's scope is
/// cancelled, it returns [`JoinError::Cancelled`] and the child keeps running in its
/// nursery. Dropping the handle detaches nothing: the child still belongs to its nursery.
pub struct ChildHandle<T> {
    join: JoinHandle<ChildOutput<T>>,
    node: Arc<Node>,
    name: Option<Arc<str>>,
    waiter: Waiter,
}

impl<T> ChildHandle<T> {
    pub(crate) fn new(
        join: JoinHandle<ChildOutput<T>>,
        node: Arc<Node>,
        name: Option<Arc<str>>,
    ) -> Self {
        ChildHandle {
            join,
            node,
            name,
            waiter: Waiter::default(),
        }
    }

    /// The child's tokio task id.
    pub fn id(&self) -> tokio::task::Id {
        self.join.id()
    }

    /// The name given at spawn, if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Cancels this child alone, cooperatively: its cancellation points report it. Not a
    /// failure; the handle then yields [`JoinError::ChildCancelled`] unless the child
    /// finishes with a value anyway.
    pub fn cancel(&self) {
        self.node.cancel(CancelReason::Explicit(None));
    }

    /// Aborts this child alone: tokio drops its future at its next scheduling. Not a failure;
    /// the handle then yields [`JoinError::ChildAborted`] unless the child already finished.
    pub fn abort(&self) {
        self.join.abort();
    }

    /// Whether the child has finished.
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }
}

impl<T> Future for ChildHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(result) = Pin::new(&mut this.join).poll(cx) {
            return Poll::Ready(match result {
                Ok(output) => joined(output),
                Err(error) if error.is_cancelled() => Err(JoinError::ChildAborted),
                Err(_) => Err(JoinError::ChildPanicked),
            });
        }
        this.waiter
            .poll_cancelled(cx)
            .map(|c| Err(JoinError::Cancelled(c)))
    }
}

impl<T> fmt::Debug for ChildHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildHandle")
            .field("id", &self.id())
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Why awaiting a [`ChildHandle`] gave no value (SPEC N2).
#[derive(Debug, Clone)]
pub enum JoinError {
    /// The child failed; its error went to the nursery, which reports it.
    ChildFailed,
    /// The child panicked; the nursery resumes or reports the panic.
    ChildPanicked,
    /// The child was cancelled and stopped at a cancellation point.
    ChildCancelled,
    /// The child was aborted (its handle's `abort`, a grace period running out, or its
    /// nursery dropped in abort mode).
    ChildAborted,
    /// The *awaiting* code's scope was cancelled while it waited; the child keeps running.
    Cancelled(Cancelled),
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::ChildFailed => {
                f.write_str("the child failed (its nursery reports the error)")
            }
            JoinError::ChildPanicked => {
                f.write_str("the child panicked (its nursery reports the panic)")
            }
            JoinError::ChildCancelled => f.write_str("the child was cancelled"),
            JoinError::ChildAborted => f.write_str("the child was aborted"),
            JoinError::Cancelled(cancelled) => {
                write!(f, "stopped waiting for the child: {cancelled}")
            }
        }
    }
}

impl std::error::Error for JoinError {
    /// The waiter's cancellation, so [`CancelError`] finds it inside boxed errors.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JoinError::Cancelled(cancelled) => Some(cancelled),
            _ => None,
        }
    }
}

impl From<Cancelled> for JoinError {
    fn from(cancelled: Cancelled) -> Self {
        JoinError::Cancelled(cancelled)
    }
}

impl CancelError for JoinError {
    fn as_cancelled(&self) -> Option<&Cancelled> {
        match self {
            JoinError::Cancelled(cancelled) => Some(cancelled),
            _ => None,
        }
    }
}
