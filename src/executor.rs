//! Spawning other libraries' tasks into a nursery (SPEC S14): [`NurseryExecutor`], which
//! implements hyper's `Executor` (feature `hyper`) so that hyper's connection and request
//! tasks belong to a nursery instead of running loose on the runtime.
//!
//! tower has no executor trait of its own: its middleware that needs a background task
//! (`tower::buffer::Buffer::pair`, for instance) hands the task back to be spawned, and
//! [`NurseryExecutor::spawn`] spawns it into the nursery.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::runtime::Handle;
use tokio::task::AbortHandle;

use crate::cancelled::CancelError;
use crate::context::{self, FrameKind};
use crate::node::{Attachment, Description, Node, ScopeId};
use crate::nursery::{NurseryHandle, Origin, SpawnError, catch_waker_panic, nearest_adopter};
use crate::reason::CancelReason;
use crate::registry::{Adopter, OrphanReport, Panic, StopAll};
use crate::scope::timer_for;
use crate::sync::{Arc, AtomicBool, Mutex, Ordering, lock};

/// What the executor runs: any `'static + Send` future with no output.
type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A task handed to a nursery: taken out when it first runs, so that a spawn that fails
/// gives it back instead of dropping it.
type Slot = Arc<Mutex<Option<Task>>>;

/// Spawns futures into a nursery, so they belong to it (SPEC S14): the nursery waits for
/// them, its cancellation and deadlines reach them (their cancellation points, and
/// [`DeadlineLayer`](crate::DeadlineLayer) request scopes opened inside them), and its
/// grace period and abort-mode drop abort them. With the `hyper` feature it is a
/// `hyper::rt::Executor`, for hyper's HTTP/2 connection and stream tasks and hyper-util's
/// servers and clients.
///
/// Built two ways:
///
/// - [`NurseryExecutor::new`] from a [`NurseryHandle`]: each future is spawned as a child
///   of that nursery (its concurrency limit applies: when it is full the future waits for a
///   slot without blocking the caller). A child that panics is a failure of the nursery as
///   any child's panic is (SPEC N6): use a [`supervisor`](crate::Nursery::supervisor)
///   nursery for a server, so one failing connection does not cancel the others.
/// - [`NurseryExecutor::current`] from the scope current when it is built: each future runs
///   in a scope under that one, accounted for by the nearest live nursery at or above it
///   (adopted, as [`protect`](crate::protect)ed work is), else by the runtime's orphan
///   registry with a warning event. A panic goes to that nursery's report hook and does not
///   fail it.
///
/// A future handed over after the nursery has closed is never dropped and never makes
/// `execute` panic: it runs adopted by the nearest live enclosing nursery of the nursery's
/// scope as it was when the executor was built, else by the orphan registry, with a warning
/// event. The only future ever dropped is one handed over when no tokio runtime can be
/// found at all (the executor built outside a runtime, used outside one, after its nursery
/// closed); an error event says so.
///
/// ```
/// use tokio_nursery::{nursery, Cancelled, NurseryExecutor};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (tx, rx) = tokio::sync::oneshot::channel();
/// nursery(|n| async move {
///     let executor = NurseryExecutor::new(&n);
///     // e.g. hyper::server::conn::http2::Builder::new(executor.clone())
///     executor.spawn(async move { tx.send("ran in the nursery").unwrap() });
///     Ok::<_, Cancelled>(())
/// })
/// .await // waits for the spawned future too
/// .unwrap();
/// assert_eq!(rx.await.unwrap(), "ran in the nursery");
/// # }
/// ```
#[derive(Clone)]
pub struct NurseryExecutor {
    target: Arc<dyn Target>,
}

impl NurseryExecutor {
    /// Spawns into `nursery` (see the type's docs). Build it on the nursery's runtime (in
    /// its body, say): the runtime is remembered for futures handed over after the nursery
    /// closed.
    pub fn new<E>(nursery: &NurseryHandle<E>) -> Self
    where
        E: CancelError + fmt::Debug + Send + 'static,
    {
        let node = nursery.scope().node;
        NurseryExecutor {
            target: Arc::new(IntoNursery {
                nursery: nursery.clone(),
                around: ancestry(node.parent()),
                node,
                runtime: Handle::try_current().ok(),
            }),
        }
    }

    /// Spawns into the nearest nursery at or above the scope current at this call (see the
    /// type's docs). Fails outside a tokio runtime or outside any scope.
    ///
    /// ```
    /// use tokio_nursery::{nursery, Cancelled, ExecutorError, NurseryExecutor};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// assert_eq!(NurseryExecutor::current().unwrap_err(), ExecutorError::NoScope);
    /// nursery(|_| async {
    ///     let executor = NurseryExecutor::current().unwrap();
    ///     executor.spawn(async { /* belongs to the nursery */ });
    ///     Ok::<_, Cancelled>(())
    /// })
    /// .await
    /// .unwrap();
    /// # }
    /// ```
    pub fn current() -> Result<Self, ExecutorError> {
        let runtime = Handle::try_current().map_err(|_| ExecutorError::NoRuntime)?;
        let scope = context::with_current(|frame| frame.map(|frame| frame.node().clone()))
            .ok_or(ExecutorError::NoScope)?;
        Ok(NurseryExecutor {
            target: Arc::new(IntoScope {
                scopes: ancestry(Some(scope)),
                runtime,
            }),
        })
    }

    /// Spawns `future` into the nursery. Never blocks, never panics, never drops the
    /// future (see the type's docs for where it goes when the nursery has closed).
    pub fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.target.execute(Box::pin(future));
    }
}

impl fmt::Debug for NurseryExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NurseryExecutor")
            .field("scope", &self.target.scope())
            .finish()
    }
}

#[cfg(feature = "hyper")]
impl<F> hyper::rt::Executor<F> for NurseryExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    /// Spawns hyper's task into the nursery: [`NurseryExecutor::spawn`].
    fn execute(&self, future: F) {
        self.spawn(future);
    }
}

/// [`NurseryExecutor::current`] could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExecutorError {
    /// Not called inside a tokio runtime: nothing could run the futures.
    NoRuntime,
    /// Not called inside any scope: there is no nursery to spawn into (use
    /// [`NurseryExecutor::new`] with a nursery's handle).
    NoScope,
}

impl fmt::Display for ExecutorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecutorError::NoRuntime => {
                f.write_str("NurseryExecutor::current must be called inside a tokio runtime")
            }
            ExecutorError::NoScope => f.write_str(
                "NurseryExecutor::current must be called inside a nursery (or a scope in one)",
            ),
        }
    }
}

impl std::error::Error for ExecutorError {}

/// Where an executor's futures go.
trait Target: Send + Sync {
    fn execute(&self, task: Task);
    fn scope(&self) -> ScopeId;
}

/// Children of a nursery, through its handle.
struct IntoNursery<E> {
    nursery: NurseryHandle<E>,
    /// The nursery's scope.
    node: Arc<Node>,
    /// The scopes around the nursery when the executor was built, nearest first: a future
    /// handed over after the nursery closed runs under the nearest that has not ended (an
    /// ended scope forgets its parent, so the walk up cannot start from an ended one).
    around: Vec<Arc<Node>>,
    runtime: Option<Handle>,
}

/// `scope` and the scopes around it, nearest first.
fn ancestry(scope: Option<Arc<Node>>) -> Vec<Arc<Node>> {
    std::iter::successors(scope, |scope| scope.parent()).collect()
}

/// The nearest of `scopes` that has not ended.
fn nearest_live(scopes: &[Arc<Node>]) -> Option<Arc<Node>> {
    scopes.iter().find(|scope| !scope.is_ended()).cloned()
}

impl<E> Target for IntoNursery<E>
where
    E: CancelError + fmt::Debug + Send + 'static,
{
    fn execute(&self, task: Task) {
        let slot: Slot = Arc::new(Mutex::new(Some(task)));
        match self.nursery.try_spawn(child::<E>(slot.clone())) {
            Ok(_detached) => {}
            Err(SpawnError::Full) => {
                // Wait for a slot in a task of the nursery's own, not in the caller.
                let nursery = self.nursery.clone();
                let waiting = async move {
                    if nursery
                        .spawn_when_free(child::<E>(slot.clone()))
                        .await
                        .is_err()
                    {
                        // Closed, or cancelled while waiting: run it here, adopted.
                        run_from(&slot).await;
                    }
                };
                self.adopt(Some(self.node.clone()), Box::pin(waiting), false);
            }
            Err(_) => {
                let Some(task) = lock(&slot).take() else {
                    return;
                };
                self.adopt(nearest_live(&self.around), task, true);
            }
        }
    }

    fn scope(&self) -> ScopeId {
        self.node.id()
    }
}

impl<E> IntoNursery<E> {
    fn adopt(&self, scope: Option<Arc<Node>>, task: Task, closed: bool) {
        match self.runtime.clone().or_else(|| Handle::try_current().ok()) {
            Some(runtime) => adopt(scope, &runtime, task, closed),
            None => {
                #[cfg(feature = "tracing")]
                tracing::error!(
                    scope = %self.node.id(),
                    "NurseryExecutor: the nursery has closed and no tokio runtime is available \
                     to run the future handed over: it is dropped (build the executor on the \
                     nursery's runtime)"
                );
                drop(task);
            }
        }
    }
}

/// Adoptees of the nearest nursery at or above a scope.
struct IntoScope {
    /// The scope current when the executor was built, then those around it: a future runs
    /// under the nearest that has not ended.
    scopes: Vec<Arc<Node>>,
    runtime: Handle,
}

impl Target for IntoScope {
    fn execute(&self, task: Task) {
        adopt(nearest_live(&self.scopes), &self.runtime, task, false);
    }

    fn scope(&self) -> ScopeId {
        self.scopes[0].id()
    }
}

/// A nursery child that runs the task in `slot`.
async fn child<E>(slot: Slot) -> Result<(), E> {
    run_from(&slot).await;
    Ok(())
}

/// Runs the task in `slot`, if it is still there.
async fn run_from(slot: &Slot) {
    let task = lock(slot).take();
    if let Some(task) = task {
        task.await;
    }
}

/// Runs `task` in a new scope under `scope`, adopted by the nearest live nursery at or
/// above `scope`, else by the runtime's orphan registry (SPEC N9, S14).
fn adopt(scope: Option<Arc<Node>>, runtime: &Handle, task: Task, closed: bool) {
    let node = Arc::new(Node::new(ScopeId::next(), false, None));
    node.enter(scope.as_ref(), timer_for(scope.as_ref()));
    let stopper = Arc::new(Stopper {
        node: node.clone(),
        abort: Mutex::new(Abort::NotStarted),
        put_off: AtomicBool::new(false),
    });
    let (adopter, key, aborted) = nearest_adopter(scope, runtime, stopper.clone());
    #[cfg(feature = "tracing")]
    {
        let to = adopter.describe();
        if closed || to.kind == "orphans" {
            tracing::warn!(
                scope = %node.id(),
                adopter = to.kind,
                adopter_name = to.name.as_deref().unwrap_or(""),
                "NurseryExecutor: {}; the future runs adopted by the {}",
                if closed {
                    "the nursery has closed"
                } else {
                    "no live nursery at or above the executor's scope"
                },
                if to.kind == "orphans" {
                    "runtime's orphan registry (await tokio_nursery::orphans_finished())"
                } else {
                    "nearest live enclosing nursery"
                },
            );
        }
    }
    let _ = closed;
    let done = Done { adopter, key, node };
    let label_node = done.node.clone();
    let join = runtime.spawn(Adopted {
        task,
        done,
        stopper: stopper.clone(),
    });
    label_node.attach(Arc::new(TaskLabel {
        kind: "executor task",
        task: join.id(),
        protected: false,
    }));
    stopper.started(join.abort_handle(), aborted);
}

/// An adopted task: the task, polled in its scope, and what tells its adopter it ended.
struct Adopted {
    task: Task,
    done: Done,
    /// Where an abort put off by a parallel borrowing scope is marked (SPEC B2).
    stopper: Arc<Stopper>,
}

impl Future for Adopted {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let node = &this.done.node;
        let task = &mut this.task;
        match catch_unwind(AssertUnwindSafe(|| {
            context::enter(FrameKind::Linked(node), || task.as_mut().poll(cx))
        })) {
            // An abort put off while a parallel borrowing scope ran in the task: carried out
            // once it ended (its end wakes the task), by ending here, which drops the task.
            Ok(Poll::Pending)
                if this.stopper.put_off.load(Ordering::Acquire) && !node.is_exempt() =>
            {
                Poll::Ready(())
            }
            Ok(poll) => poll,
            Err(payload) => {
                // Reported to the adopter, which never resumes it (as for protected work).
                this.done.report_panic(payload);
                Poll::Ready(())
            }
        }
    }
}

impl Drop for Adopted {
    /// The task is dropped here, however it ended (finished, aborted by its adopter, dropped
    /// by the runtime's shutdown): a panic in its drop is reported as one in its poll is
    /// (SPEC N6), not left in a join handle nobody holds.
    fn drop(&mut self) {
        let task = std::mem::replace(&mut self.task, Box::pin(std::future::ready(())));
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| drop(task))) {
            self.done.report_panic(payload);
        }
    }
}

/// Tells the adopter the task ended, however it ends (finished, panicked, aborted, dropped
/// before it ever ran), and ends its scope.
struct Done {
    adopter: Arc<dyn Adopter<Origin>>,
    key: usize,
    node: Arc<Node>,
}

impl Done {
    /// A panic of the task, for its adopter, which never resumes it.
    fn report_panic(&self, payload: Box<dyn std::any::Any + Send>) {
        let name = Some(std::sync::Arc::from("executor task"));
        let label = match tokio::task::try_id() {
            Some(id) => Origin::Child { id, name },
            None => Origin::Local {
                scope: self.node.id(),
            },
        };
        self.adopter
            .orphan_report(OrphanReport::Panic(Panic { label, payload }));
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.node.end(false);
        // Telling the adopter may wake its nursery's future, whose waker may panic: not out
        // of this drop (it may run while the task unwinds, where a second panic aborts).
        catch_waker_panic(
            || "when an adopted task's end was told to its adopter".to_string(),
            || self.adopter.adoptee_finished(self.key),
        );
    }
}

/// How the adopter aborts the task (grace expired, abort-mode drop, the cascade).
struct Stopper {
    node: Arc<Node>,
    abort: Mutex<Abort>,
    /// An abort was put off because a parallel borrowing scope runs in the task (SPEC B2).
    put_off: AtomicBool,
}

enum Abort {
    NotStarted,
    /// Asked to abort before the task was spawned.
    Requested,
    Started(AbortHandle),
}

impl Stopper {
    fn started(&self, handle: AbortHandle, aborted: bool) {
        let mut abort = lock(&self.abort);
        let requested = aborted || matches!(*abort, Abort::Requested);
        *abort = Abort::Started(handle.clone());
        drop(abort);
        if requested {
            handle.abort();
        }
    }
}

impl StopAll for Stopper {
    /// Aborts the executor's task; names it by its scope. While a parallel borrowing scope
    /// runs in the task (SPEC B2), it is told "grace expired" instead, and ends when that
    /// scope has ended (`Adopted::poll`).
    fn stop_all(&self, _grace_expired: bool) -> Vec<String> {
        // Marked before the exemption is asked, so that whoever ends the exemption right
        // after finds the mark (a mark left when the abort goes ahead is harmless).
        self.put_off.store(true, Ordering::Release);
        if self.node.defer_if_exempt() {
            // Part of a cascade: a waker's panic must not stop it (`catch_waker_panic`).
            catch_waker_panic(
                || "when an executor's task running a parallel scope was told to stop".into(),
                || self.node.cancel(CancelReason::GraceExpired),
            );
            return Vec::new();
        }
        let mut abort = lock(&self.abort);
        let handle = match &*abort {
            Abort::Started(handle) => Some(handle.clone()),
            _ => {
                *abort = Abort::Requested;
                None
            }
        };
        drop(abort);
        // Outside the lock: tokio may drop the task inline.
        if let Some(handle) = handle {
            handle.abort();
        }
        vec![format!("an executor's task ({})", self.node.id())]
    }

    fn scope(&self) -> Option<Arc<Node>> {
        Some(self.node.clone())
    }
}

/// How the task tree shows a task adopted by a nursery without being its child (an
/// executor's task, protected work): its kind and its task.
pub(crate) struct TaskLabel {
    pub(crate) kind: &'static str,
    pub(crate) task: tokio::task::Id,
    /// Protected work (SPEC C1): the abort cascade past a grace period stops at its scope,
    /// even with its shield lowered (it is told as an adoptee; what runs inside it is not
    /// cut short).
    pub(crate) protected: bool,
}

impl Attachment for TaskLabel {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn describe(&self) -> Description {
        Description {
            kind: self.kind,
            name: None,
            detail: Some(format!("task {}", self.task)),
        }
    }

    fn grace_expired_above(&self) -> Option<Vec<String>> {
        self.protected.then(Vec::new)
    }
}
