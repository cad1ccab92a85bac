//! Blocking children (SPEC N16): synchronous code on tokio's blocking pool that sees its
//! scope's cancellation and deadline through the [`BlockingContext`] it is given.
//!
//! tokio cannot abort a blocking task, so such a child is never aborted: a grace period
//! running out, or its nursery dropped in abort mode, cancels it through its context and
//! leaves it to an adopter until it returns (SPEC N7, N8, N9).

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::child::{ChildHandle, ChildInfo, ChildOutput, Teller, origin_of, settle};
use super::{
    ChildLabel, NurseryHandle, Shared, SpawnError, Stopper, acquire_slot, catch_waker_panic,
};
use crate::cancelled::{CancelError, Cancelled};
use crate::context::{self, FrameKind};
use crate::deadline::EffectiveDeadline;
use crate::node::{Node, ScopeId};
use crate::reason::CancelReason;
use crate::scope::{ScopeHandle, cancelled_here};

/// What a blocking child knows of its scope. The crate's free functions
/// ([`is_cancelled`](crate::is_cancelled), [`check_cancelled`](crate::check_cancelled),
/// [`current_deadline`](crate::current_deadline)) work in the child's thread too.
#[derive(Clone)]
pub struct BlockingContext {
    node: Arc<Node>,
}

impl BlockingContext {
    /// Whether the child's scope is cancelled (its own, its nursery's, or an ancestor's).
    pub fn is_cancelled(&self) -> bool {
        let cancelled = self.node.is_cancelled();
        if cancelled {
            self.node.mark_observed();
        }
        cancelled
    }

    /// A cancellation point for blocking code: `Err(Cancelled)` once cancelled.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(cancelled_here(&self.node))
        } else {
            Ok(())
        }
    }

    /// The effective deadline of the child's scope (SPEC S7).
    pub fn deadline(&self) -> EffectiveDeadline {
        if self.node.is_cancelled() {
            return EffectiveDeadline::Passed;
        }
        match self.node.effective_deadline() {
            Some(at) => EffectiveDeadline::At(Instant::from_std(at)),
            None => EffectiveDeadline::Unbounded,
        }
    }

    /// The nursery's grace period ran out while this child was still running: it could not
    /// be aborted and is asked to return now (SPEC N7, S4).
    pub fn grace_expired(&self) -> bool {
        matches!(self.node.reason(), Some(CancelReason::GraceExpired))
    }

    /// The child's own scope.
    pub fn scope(&self) -> ScopeHandle {
        ScopeHandle {
            node: self.node.clone(),
        }
    }
}

impl fmt::Debug for BlockingContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingContext")
            .field("scope", &self.node.id())
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// A blocking child's slot under the nursery's concurrency limit.
enum Slot {
    Free,
    Held(OwnedSemaphorePermit),
    /// None free: the child waits for one in an async task, holding no blocking thread
    /// meanwhile (waiting in a blocking thread could take the pool's every thread, and the
    /// children holding the slots may need one to finish).
    Wait(Arc<Semaphore>),
}

/// A blocking child as its nursery's registry and its handle see it: its scope (it always
/// has one) and the name given at spawn.
pub(crate) struct BlockingChild {
    pub(crate) node: Arc<Node>,
    pub(crate) name: Option<Arc<str>>,
}

impl ChildInfo for BlockingChild {
    fn name(&self) -> Option<&Arc<str>> {
        self.name.as_ref()
    }

    fn cancel(&self, reason: CancelReason) {
        self.node.cancel(reason);
    }

    /// A running blocking child cannot be aborted: it is told through its scope (and tokio's
    /// abort keeps one that has not started from starting).
    fn abort_put_off(&self, teller: Teller) -> bool {
        teller.tell("a blocking child", || {
            self.node.cancel(CancelReason::Explicit(None))
        });
        false
    }

    fn has_ended(&self) -> bool {
        self.node.is_ended()
    }
}

/// A blocking child that waited for a slot: the state its async task and its handle's
/// `abort` agree on, so that an abort either keeps it from starting or, once it started,
/// only cancels it (a blocking closure cannot be aborted).
struct Queued {
    child: Arc<BlockingChild>,
    /// `WAITING`, `STARTED` or `ABORTED`.
    state: AtomicU8,
}

const WAITING: u8 = 0;
const STARTED: u8 = 1;
const ABORTED: u8 = 2;

impl ChildInfo for Queued {
    fn name(&self) -> Option<&Arc<str>> {
        self.child.name()
    }

    fn cancel(&self, reason: CancelReason) {
        self.child.cancel(reason);
    }

    /// Told, and aborted only if it has not started (then it never does).
    fn abort_put_off(&self, teller: Teller) -> bool {
        teller.tell("a blocking child", || {
            self.child.node.cancel(CancelReason::Explicit(None))
        });
        self.state
            .compare_exchange(WAITING, ABORTED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    }

    fn has_ended(&self) -> bool {
        self.child.has_ended()
    }
}

/// Polls `future` in `node`'s scope (its cancellation points see that scope).
async fn in_scope<F: Future>(node: &Arc<Node>, future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| context::enter(FrameKind::Linked(node), || future.as_mut().poll(cx)))
        .await
}

/// Runs a blocking child's closure in its scope (not at all without its slot: cancelled
/// while it waited) and settles its end. The slot is released before `finished` tells the
/// registry, so a spawn after the nursery ended gets `Closed`.
fn run<F, T, E>(
    slot: Result<Option<OwnedSemaphorePermit>, Cancelled>,
    finished: Finished<E>,
    child: F,
) -> ChildOutput<T>
where
    F: FnOnce(BlockingContext) -> Result<T, E>,
    E: CancelError + fmt::Debug + Send + 'static,
{
    let context = BlockingContext {
        node: finished.child.node.clone(),
    };
    let node = &finished.child.node;
    let ended = catch_unwind(AssertUnwindSafe(|| {
        context::enter(FrameKind::Linked(node), || {
            let _slot = match slot {
                Ok(slot) => slot,
                Err(cancelled) => return Err(E::from(cancelled)),
            };
            child(context)
        })
    }));
    let origin = || origin_of(finished.child.name.clone(), node.id());
    settle(ended, node.is_cancelled(), &finished.nursery, origin)
}

/// Ends a blocking child's scope and tells its nursery, however the closure ends.
struct Finished<E> {
    nursery: Arc<Shared<E>>,
    child: Arc<BlockingChild>,
    key: usize,
}

impl<E> Drop for Finished<E> {
    /// The last child's end wakes the nursery's future, whose waker may panic: caught, so
    /// the closure's outcome still reaches the handle (a panic out of the blocking task
    /// would read as the child's).
    fn drop(&mut self) {
        self.child.node.end(false);
        catch_waker_panic(
            || "when a blocking child's end was told to its nursery".to_string(),
            || self.nursery.registry.finished(Some(self.key)),
        );
    }
}

impl<E> NurseryHandle<E>
where
    E: CancelError + fmt::Debug + Send + 'static,
{
    /// Spawns a blocking child on tokio's blocking pool (SPEC N16). It is waited for like any
    /// child, and never aborted: it learns of cancellation, deadlines and an expired grace
    /// period through its [`BlockingContext`].
    ///
    /// Under tokio's paused clock on a current-thread runtime, time does not auto-advance
    /// while a blocking task runs: tests move it with `tokio::time::advance`.
    ///
    /// # Panics
    ///
    /// If the nursery has closed; see [`try_spawn_blocking`](Self::try_spawn_blocking).
    pub fn spawn_blocking<F, T>(&self, child: F) -> ChildHandle<T>
    where
        F: FnOnce(BlockingContext) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
    {
        self.spawn_blocking_inner(None, child, true)
            .unwrap_or_else(|error| panic!("tokio-nursery: {error}"))
    }

    /// Like [`spawn_blocking`](Self::spawn_blocking), with a name for reports, the
    /// warnings and the task tree.
    ///
    /// ```
    /// use tokio_nursery::{Cancelled, Nursery};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let sum = Nursery::new()
    ///     .run(|nursery| async move {
    ///         let sum = nursery.spawn_blocking_named("checksum", |context| {
    ///             let mut sum = 0u64;
    ///             for chunk in 0..1_000u64 {
    ///                 context.check()?; // stops early once cancelled
    ///                 sum += chunk;
    ///             }
    ///             Ok::<_, Cancelled>(sum)
    ///         });
    ///         Ok::<_, Cancelled>(sum.await.expect("the child's value"))
    ///     })
    ///     .await
    ///     .expect("no failure");
    /// assert_eq!(sum, Some(499_500));
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// If the nursery has closed; see [`try_spawn_blocking`](Self::try_spawn_blocking).
    pub fn spawn_blocking_named<F, T>(&self, name: &str, child: F) -> ChildHandle<T>
    where
        F: FnOnce(BlockingContext) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
    {
        self.spawn_blocking_inner(Some(Arc::from(name)), child, true)
            .unwrap_or_else(|error| panic!("tokio-nursery: {error}"))
    }

    /// Like [`spawn_blocking`](Self::spawn_blocking), or [`SpawnError::Closed`], or
    /// [`SpawnError::Full`] when the nursery's concurrency limit is reached.
    pub fn try_spawn_blocking<F, T>(&self, child: F) -> Result<ChildHandle<T>, SpawnError>
    where
        F: FnOnce(BlockingContext) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
    {
        self.spawn_blocking_inner(None, child, false)
    }

    /// Blocking children count against the concurrency limit (SPEC N11): without a free
    /// slot, `queue` makes the child wait for one in an async task of its own (and end as
    /// cancelled without running if cancelled meanwhile); otherwise it is `Full`.
    fn spawn_blocking_inner<F, T>(
        &self,
        name: Option<Arc<str>>,
        child: F,
        queue: bool,
    ) -> Result<ChildHandle<T>, SpawnError>
    where
        F: FnOnce(BlockingContext) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
    {
        let shared = self.shared.clone();
        let slot = match &shared.limit {
            None => Slot::Free,
            Some(limit) => match limit.clone().try_acquire_owned() {
                Ok(permit) => Slot::Held(permit),
                Err(_) if queue => Slot::Wait(limit.clone()),
                Err(_) if !shared.registry.is_open() => return Err(SpawnError::Closed),
                Err(_) => return Err(SpawnError::Full),
            },
        };
        let node = Arc::new(Node::new(ScopeId::next(), false, None));
        let blocking = Arc::new(BlockingChild {
            node: node.clone(),
            name,
        });
        let (key, aborted) = shared
            .registry
            .register(node.id().as_u64(), |_| Stopper::Blocking(blocking.clone()))?;
        node.enter(Some(&shared.node), shared.node.timer());
        if aborted {
            // Registered after the nursery's children were aborted (a grace that ran out,
            // `abort_all`): told as they were (registry invariant N-3, SPEC N7).
            node.cancel(CancelReason::GraceExpired);
        }
        let finished = Finished {
            nursery: shared.clone(),
            child: blocking.clone(),
            key,
        };
        let runtime = shared.runtime.clone();
        let (join, info): (_, Arc<dyn ChildInfo>) = match slot {
            Slot::Wait(limit) => {
                let queued = Arc::new(Queued {
                    child: blocking.clone(),
                    state: AtomicU8::new(WAITING),
                });
                let gate = queued.clone();
                let join = shared.runtime.spawn(async move {
                    let slot = in_scope(&finished.child.node, acquire_slot(limit)).await;
                    let Ok(slot) = slot else {
                        return run(slot.map(Some), finished, child);
                    };
                    if gate
                        .state
                        .compare_exchange(WAITING, STARTED, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        return ChildOutput::Aborted;
                    }
                    runtime
                        .spawn_blocking(move || run(Ok(Some(slot)), finished, child))
                        .await
                        // The closure catches its panics: only a runtime shutting down
                        // drops it unrun.
                        .unwrap_or(ChildOutput::Aborted)
                });
                (join, queued)
            }
            slot => {
                let slot = match slot {
                    Slot::Held(permit) => Some(permit),
                    _ => None,
                };
                // One capture: if tokio drops the closure unrun (a child aborted before it
                // started), the slot is released before `finished` tells the registry.
                let parts = (slot, finished);
                let join = runtime.spawn_blocking(move || {
                    let (slot, finished) = parts;
                    run(Ok(slot), finished, child)
                });
                (join, blocking.clone())
            }
        };
        node.attach(Arc::new(ChildLabel {
            kind: "blocking child",
            name: blocking.name.clone(),
            task: join.id(),
            nursery: shared.node.id(),
        }));
        Ok(ChildHandle::of_task(join, info))
    }
}
