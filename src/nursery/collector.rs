//! Collecting children: [`Collector`], `JoinSet` parity on top of a nursery (SPEC N15).
//!
//! Children spawned through a collector belong to the nursery like any other (it waits for
//! them, fail-fast applies), but their outcomes are queued in completion order for
//! [`Collector::join_next`] instead of going to individual handles; spawning returns a
//! [`ChildControl`] with an id, a name, `cancel` and `abort`, and no value.

use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, poll_fn};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use slab::Slab;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::{AbortHandle, Id};

use super::child::{ChildCell, ChildInfo, ChildOutput, OnAbort, Route, Teller, joined};
use super::{JoinError, NurseryHandle, SpawnError};
use crate::cancelled::CancelError;
use crate::keep_waker::poll_or_keep;
use crate::reason::CancelReason;
use crate::sync::lock;

/// The queue a collector's children deliver their outcomes to.
pub(crate) struct Queue<T> {
    state: Mutex<QueueState<T>>,
}

struct QueueState<T> {
    /// Children spawned whose outcome was not taken yet.
    members: Slab<Member>,
    /// Delivered outcomes in completion order, by member key.
    outcomes: VecDeque<(usize, Result<T, JoinError>)>,
    waiter: Option<Waker>,
    /// The collector was dropped: outcomes delivered from now on are dropped at once.
    dropped: bool,
}

struct Member {
    /// Set by the spawner right after spawning: always before `join_next` can take the
    /// outcome, since that needs `&mut Collector` and spawning `&Collector`.
    id: Option<Id>,
    child: Arc<dyn ChildInfo>,
    abort: Option<AbortHandle>,
    /// `abort_all` ran before the spawner stored the abort handle: it aborts on storing.
    abort_requested: bool,
    delivered: bool,
}

/// A child's way into its collector's queue: its outcome goes there, once.
struct Sink<T> {
    queue: Arc<Queue<T>>,
    key: usize,
}

/// The route of a collected child: the sink until the outcome was delivered.
struct ToCollector<T>(Option<Sink<T>>);

impl<T: Send + 'static, E> Route<T, E> for ToCollector<T> {
    type Output = ();

    fn deliver(&mut self, _: &ChildCell<E, ()>, output: ChildOutput<T>) {
        if let Some(sink) = self.0.take() {
            sink.deliver(output);
        }
    }
}

impl<T: Send + 'static, E> OnAbort<E> for ToCollector<T> {
    type Out = ();
    const BEFORE_FINISH: bool = true;

    fn aborted(&mut self, _: &ChildCell<E, ()>) {
        // Dropped before it finished: aborted (SPEC N15 queues every outcome).
        if let Some(sink) = self.0.take() {
            sink.deliver(ChildOutput::Aborted);
        }
    }
}

impl<T> Sink<T> {
    /// Queues the child's outcome.
    fn deliver(self, output: ChildOutput<T>) {
        let mut state = lock(&self.queue.state);
        if state.dropped {
            drop(state);
            return; // nobody will take it: `output` is dropped here, outside the lock
        }
        if let Some(member) = state.members.get_mut(self.key) {
            member.delivered = true;
        }
        state.outcomes.push_back((self.key, joined(output)));
        let waiter = state.waiter.take();
        drop(state);
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }
}

/// Spawns children of a nursery and collects their outcomes in completion order, like
/// tokio's `JoinSet` (SPEC N15). Made by [`NurseryHandle::collector`].
///
/// Unlike a `JoinSet`, dropping it aborts nothing: its children belong to the nursery,
/// which waits for them; their outcomes are dropped as they come (call
/// [`abort_all`](Self::abort_all) or [`cancel_all`](Self::cancel_all) first to stop them).
///
/// ```
/// use tokio_nursery::{nursery, Cancelled};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let sum = nursery(|n| async move {
///     let mut set = n.collector::<u32>();
///     for i in 1..=3 {
///         set.spawn(async move { Ok::<_, Cancelled>(i * 10) });
///     }
///     let mut sum = 0;
///     while let Some((_id, outcome)) = set.join_next().await {
///         sum += outcome.unwrap();
///     }
///     Ok::<_, Cancelled>(sum)
/// })
/// .await;
/// assert_eq!(sum.unwrap(), Some(60));
/// # }
/// ```
pub struct Collector<T, E> {
    nursery: NurseryHandle<E>,
    queue: Arc<Queue<T>>,
}

/// The control of a collected child: no value (it goes to the collector), like tokio's
/// `AbortHandle`.
#[derive(Clone)]
pub struct ChildControl {
    id: Id,
    child: Arc<dyn ChildInfo>,
    abort: AbortHandle,
}

impl ChildControl {
    /// The child's tokio task id.
    pub fn id(&self) -> Id {
        self.id
    }

    /// The name given at spawn, if any.
    pub fn name(&self) -> Option<&str> {
        self.child.name().map(|name| &**name)
    }

    /// Cancels this child alone, cooperatively. Not a failure.
    pub fn cancel(&self) {
        self.child.cancel(CancelReason::Explicit(None));
    }

    /// As [`cancel`](Self::cancel), with user data the child reads from its `Cancelled`
    /// (as [`ChildHandle::cancel_with`](crate::ChildHandle::cancel_with)).
    pub fn cancel_with<D: std::any::Any + Send + Sync>(&self, data: D) {
        self.child.cancel(CancelReason::explicit_with(data));
    }

    /// Aborts this child alone. Not a failure. Put off while the child runs a parallel
    /// borrowing scope, as [`ChildHandle::abort`](crate::ChildHandle::abort) says.
    pub fn abort(&self) {
        if !self.child.abort_put_off(Teller::Caller) {
            self.abort.abort();
        }
    }
}

impl fmt::Debug for ChildControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildControl")
            .field("id", &self.id)
            .field("name", &self.name())
            .finish_non_exhaustive()
    }
}

impl<E> NurseryHandle<E>
where
    E: CancelError + fmt::Debug + Send + 'static,
{
    /// A collector of children whose outcomes are `Result<T, JoinError>` (SPEC N15).
    pub fn collector<T: Send + 'static>(&self) -> Collector<T, E> {
        Collector {
            nursery: self.clone(),
            queue: Arc::new(Queue {
                state: Mutex::new(QueueState {
                    members: Slab::new(),
                    outcomes: VecDeque::new(),
                    waiter: None,
                    dropped: false,
                }),
            }),
        }
    }
}

impl<T, E> Collector<T, E>
where
    T: Send + 'static,
    E: CancelError + fmt::Debug + Send + 'static,
{
    /// Spawns a child whose outcome is queued here.
    ///
    /// # Panics
    ///
    /// If the nursery has closed; see [`try_spawn`](Self::try_spawn).
    pub fn spawn<F>(&self, future: F) -> ChildControl
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        self.spawn_inner(None, None, future)
            .unwrap_or_else(|error| panic!("tokio-nursery: {error}"))
    }

    /// Like [`spawn`](Self::spawn), with a name for reports.
    pub fn spawn_named<F>(&self, name: &str, future: F) -> ChildControl
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        self.spawn_inner(Some(Arc::from(name)), None, future)
            .unwrap_or_else(|error| panic!("tokio-nursery: {error}"))
    }

    /// Spawns a child, or returns [`SpawnError::Closed`] if the nursery has closed, or
    /// [`SpawnError::Full`] if its concurrency limit is reached (never waits), as
    /// [`NurseryHandle::try_spawn`] does.
    pub fn try_spawn<F>(&self, future: F) -> Result<ChildControl, SpawnError>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        let slot = self.nursery.free_slot()?;
        self.spawn_inner(None, slot, future)
    }

    /// Waits until the nursery's concurrency limit leaves a slot, then spawns, as
    /// [`NurseryHandle::spawn_when_free`] does (a cancellation point; cancel-safe; `Full`
    /// for a child of the nursery, which might wait for its own slot).
    pub async fn spawn_when_free<F>(&self, future: F) -> Result<ChildControl, SpawnError>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        let slot = self.nursery.slot_when_free().await?;
        self.spawn_inner(None, slot, future)
    }

    fn spawn_inner<F>(
        &self,
        name: Option<Arc<str>>,
        slot: Option<OwnedSemaphorePermit>,
        future: F,
    ) -> Result<ChildControl, SpawnError>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        let queue = &self.queue;
        let mut sink_key = None;
        let (join, child) = self.nursery.spawn_task(name, None, slot, future, |child| {
            let key = lock(&queue.state).members.insert(Member {
                id: None,
                child: child.clone(),
                abort: None,
                abort_requested: false,
                delivered: false,
            });
            sink_key = Some(key);
            ToCollector(Some(Sink {
                queue: queue.clone(),
                key,
            }))
        })?;
        let abort = join.abort_handle();
        let id = join.id();
        let requested = if let Some(key) = sink_key {
            if let Some(member) = lock(&queue.state).members.get_mut(key) {
                member.id = Some(id);
                member.abort = Some(abort.clone());
                member.abort_requested
            } else {
                false
            }
        } else {
            false
        };
        if requested {
            abort.abort(); // outside the lock, as in `abort_all`
        }
        Ok(ChildControl { id, child, abort })
    }
}

impl<T, E> Collector<T, E> {
    /// The next outcome in completion order; `None` when no child of this collector is
    /// running and every outcome was taken. Cancel-safe (an outcome stays queued until it
    /// is returned).
    ///
    /// Not a cancellation point: in a cancelled scope it still waits for the children and
    /// returns their outcomes, so a loop draining the collector ends. But as for a
    /// [`ChildHandle`](crate::ChildHandle), an outcome without a value (a child that
    /// failed, panicked, was cancelled or aborted) comes to a waiter whose scope is
    /// cancelled as that waiter's own cancellation, [`JoinError::Cancelled`], instead of
    /// its marker: so `outcome?` in a nursery body under a deadline passes the deadline on,
    /// where the marker would fail the body (the nursery reports the child's failure or
    /// panic itself either way). A value still comes as it is. The marker is not kept:
    /// drain the collector in a shield to read markers in a cancelled scope.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio_nursery::{Nursery, NurseryHandle};
    ///
    /// type BoxError = Box<dyn std::error::Error + Send + Sync>;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let out = Nursery::new()
    ///     .timeout(Duration::from_millis(100))
    ///     .run(|n: NurseryHandle<BoxError>| async move {
    ///         let mut collector = n.collector::<u64>();
    ///         for ms in [10, 50, 1_000] {
    ///             collector.spawn(async move {
    ///                 tokio_nursery::sleep(Duration::from_millis(ms)).await?;
    ///                 Ok(ms)
    ///             });
    ///         }
    ///         let mut sum = 0;
    ///         while let Some((_, outcome)) = collector.join_next().await {
    ///             sum += outcome?; // the third child is cut by the deadline
    ///         }
    ///         Ok(sum)
    ///     })
    ///     .await;
    /// assert!(matches!(out, Ok(None)), "the nursery absorbed its deadline: {out:?}");
    /// # }
    /// ```
    pub async fn join_next(&mut self) -> Option<(Id, Result<T, JoinError>)> {
        let next = poll_fn(|cx| {
            poll_or_keep(
                &self.queue.state,
                cx.waker(),
                |state| match take(state) {
                    Some(outcome) => Some(Some(outcome)),
                    None => state.members.is_empty().then_some(None),
                },
                |state| &mut state.waiter,
            )
        })
        .await;
        next.map(for_waiter)
    }

    /// The next outcome if one is queued, without waiting; an outcome without a value comes
    /// to a waiter whose scope is cancelled as its own cancellation, as in
    /// [`join_next`](Self::join_next).
    pub fn try_join_next(&mut self) -> Option<(Id, Result<T, JoinError>)> {
        let next = take(&mut lock(&self.queue.state));
        next.map(for_waiter)
    }

    /// Children spawned here whose outcome has not been taken yet (running or queued).
    pub fn len(&self) -> usize {
        lock(&self.queue.state).members.len()
    }

    /// Whether [`len`](Self::len) is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cancels every running child of this collector, cooperatively.
    pub fn cancel_all(&self) {
        let children: Vec<Arc<dyn ChildInfo>> = lock(&self.queue.state)
            .members
            .iter()
            .filter(|(_, member)| !member.delivered)
            .map(|(_, member)| member.child.clone())
            .collect();
        for child in children {
            child.cancel(CancelReason::Explicit(None));
        }
    }

    /// Aborts every running child of this collector; their outcomes are queued as
    /// [`JoinError::ChildAborted`]. Every child is stopped even if a waker woken by telling
    /// one of them panics (that panic is written on stderr, not raised here).
    pub fn abort_all(&self) {
        let aborts: Vec<(AbortHandle, Arc<dyn ChildInfo>)> = {
            let mut state = lock(&self.queue.state);
            let mut aborts = Vec::new();
            for (_, member) in state.members.iter_mut() {
                match (&member.abort, member.delivered) {
                    (_, true) => {}
                    (Some(abort), false) => aborts.push((abort.clone(), member.child.clone())),
                    // Being spawned on another thread: its spawner aborts it on storing.
                    (None, false) => member.abort_requested = true,
                }
            }
            aborts
        };
        // Outside the lock: tokio may drop an aborted child inline, which delivers here. A
        // child running a parallel borrowing scope is told instead (SPEC B2).
        // Every child is stopped even if a waker woken by telling one panics (stderr).
        for (abort, child) in aborts {
            if !child.abort_put_off(Teller::Cascade) {
                abort.abort();
            }
        }
    }
}

/// What the waiter gets of a taken outcome (the rule of [`JoinError::for_waiter`]); a
/// marker not given is dropped: the outcome was taken, and the nursery reports failures and
/// panics itself.
fn for_waiter<T>((id, outcome): (Id, Result<T, JoinError>)) -> (Id, Result<T, JoinError>) {
    (id, JoinError::for_waiter(outcome, drop))
}

/// Takes the oldest delivered outcome with its child's id.
fn take<T>(state: &mut QueueState<T>) -> Option<(Id, Result<T, JoinError>)> {
    let (key, outcome) = state.outcomes.pop_front()?;
    let member = state.members.remove(key);
    let id = member
        .id
        .expect("the spawner set the id before join_next could run");
    Some((id, outcome))
}

impl<T, E> Drop for Collector<T, E> {
    /// The children keep running in the nursery (they are its own); their outcomes, queued
    /// or to come, are dropped, since nobody can take them any more.
    fn drop(&mut self) {
        let mut state = lock(&self.queue.state);
        state.dropped = true;
        let outcomes = std::mem::take(&mut state.outcomes);
        let members = std::mem::take(&mut state.members);
        drop(state);
        drop((outcomes, members));
    }
}

impl<T, E> fmt::Debug for Collector<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collector")
            .field("len", &self.len())
            .finish()
    }
}
