//! Nurseries: scopes that own child tasks (SPEC N).
//!
//! A [`Nursery`] runs a body that may spawn children; it finishes only when the body and
//! every child have finished, so no child outlives it (N1). Its scope is the children's
//! parent scope, so cancelling the nursery (explicitly, by deadline, or through an ancestor)
//! reaches every child (S1, N7). The first failure cancels the rest (fail-fast, N4); every
//! failure is returned and the earliest panic is resumed once all have stopped (N6).
//!
//! This module owns the builder, the nursery future and its handle; [`child`] owns the child
//! task wrapper and its handle, [`report`] what a nursery reports; the shared bookkeeping is
//! [`crate::registry`], kept apart (and free of tokio) so that loom can check it.

mod blocking;
mod child;
mod child_scope;
mod collector;
mod orphans;
mod protect;
mod report;
mod start;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project::{pin_project, pinned_drop};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use blocking::BlockingChild;
pub use blocking::BlockingContext;
pub use child::{ChildHandle, JoinError};
pub use collector::{ChildControl, Collector};
pub use orphans::{orphan_count, orphans_finished};
pub use protect::{Protected, protect};
pub use report::{Failure, Incident, NurseryError, Origin, Report, ReportHook, panic_message};
pub use start::{Ready, Start, StartError};

use crate::cancelled::{CancelError, Cancelled};
use crate::context::{self, FrameKind};
use crate::node::{Attachment, Description, Node, ScopeId};
use crate::reason::CancelReason;
use crate::registry::{self, Adopter, Closed, OrphanReport, Recorded, Registry, StopAll};
use crate::scope::{ScopeHandle, cancelled_here, enter_preset};
use crate::tree::TaskTree;
use child::{ChildCell, ChildTask, Route, ToHandle, ToJoinHandle};
pub(crate) use child::{ChildScope, TaskScope};
use orphans::Orphans;

/// What happens to running children when a nursery's future is dropped before it finished
/// (a `select!` lost, a timeout, a request future dropped because its client went away).
///
/// Awaiting a nursery to the end never drops a child mid-await in either mode; the modes
/// differ only when the nursery's own future is dropped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DropMode {
    /// The default. The nursery's scope is cancelled and no child is dropped mid-await: the
    /// drop returns at once and the children are adopted by the nearest live enclosing
    /// nursery, which waits for them, else by the runtime's orphan registry
    /// ([`orphans_finished`]) with a warning event (SPEC N9). They keep their cancelled scope
    /// and the grace period, which then aborts them as it would have. Their failures reach
    /// the adopter's report hook and never trigger its fail-fast.
    ///
    /// The orphan registry lives as long as its runtime: a runtime shut down outside a
    /// [`Root`](crate::Root) (a `#[tokio::main]` returning, say) drops every task, orphans
    /// included, wherever they are parked. Await [`orphans_finished`] before letting the
    /// runtime go, or run under a `Root`, which waits for them.
    #[default]
    Wait,
    /// Abort every child at once (SPEC N8): abort is requested before the drop returns and
    /// tokio drops their futures at their next scheduling.
    Abort,
    /// Block the dropping thread until the children have stopped (SPEC N9b), at most for the grace
    /// period in wall-clock time, after which they are aborted; requires a finite
    /// [`grace`](Nursery::grace) ([`Nursery::run`] panics without one). Hazards: it holds a runtime
    /// worker (`tokio::task::block_in_place`) and works only on a multi-thread runtime. For a
    /// nursery on a current-thread or local runtime (wherever its future is dropped, even outside
    /// the runtime: only that runtime's `block_on` runs its children), for one with `!Send`
    /// children ([`spawn_local`](NurseryHandle::spawn_local): only their `LocalSet`'s thread runs
    /// them), on a current-thread runtime's thread, during runtime shutdown, inside one of its own
    /// children, or inside a `LocalSet` it falls back to [`Wait`](DropMode::Wait): never a deadlock
    /// or a panic in `Drop`. Inside a `LocalSet` the fallback is found by catching the panic
    /// `block_in_place` raises there (tokio offers no other test): the panic hook still prints that
    /// message, and under `panic = "abort"` the process aborts; use [`Wait`](DropMode::Wait) there.
    /// Past an enclosing nursery's grace, the children are aborted at once instead of waited for
    /// (SPEC N7's cascade). An explicit [`cancel_and_join`](NurseryFuture::cancel_and_join) is the
    /// recommended way to wait for a nursery that is being cancelled.
    BlockingWait,
}

/// A nursery not yet running: its configuration. Run a body in it with [`Nursery::run`].
///
/// ```
/// use tokio_nursery::{Cancelled, Nursery, NurseryError};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let total = Nursery::new()
///     .run(|n| async move {
///         let a = n.spawn(async { Ok::<_, Cancelled>(20) });
///         let b = n.spawn(async { Ok(22) });
///         Ok::<_, Cancelled>(a.await.unwrap() + b.await.unwrap())
///     })
///     .await;
/// assert_eq!(total.unwrap(), Some(42));
/// # }
/// ```
#[derive(Clone)]
pub struct Nursery {
    deadline: Option<Deadline>,
    warn_unobserved: Option<Duration>,
    supervisor: bool,
    limit: Option<usize>,
    name: Option<Arc<str>>,
    grace: Option<Duration>,
    drop_mode: DropMode,
    hook: Option<ReportHook>,
    /// Keep the task tree as it stood when the grace period ran out (the root's report).
    keep_tree: bool,
}

impl Nursery {
    /// A nursery with fail-fast policy, no grace period and the wait drop mode.
    pub fn new() -> Self {
        Nursery {
            deadline: None,
            warn_unobserved: Some(Duration::from_secs(10)),
            supervisor: false,
            limit: None,
            name: None,
            grace: None,
            drop_mode: DropMode::Wait,
            hook: None,
            keep_tree: false,
        }
    }

    /// Keeps a snapshot of the nursery's task tree (SPEC O2) taken when its grace period
    /// runs out, before its children are aborted: what was still running, and since when it
    /// had been asked to stop. Read it with [`NurseryHandle::tree_at_grace_expiry`]; a
    /// [`Root`](crate::Root) keeps it for its report. Off by default: the snapshot costs
    /// time and memory in proportion to the nursery's children.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio_nursery::{Cancelled, Nursery};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let mut kept = None;
    /// Nursery::new()
    ///     .grace(Duration::from_secs(1))
    ///     .keep_tree_at_grace_expiry()
    ///     .run(|n| {
    ///         kept = Some(n.clone());
    ///         async move {
    ///             // A plain tokio await: no cancellation point, so aborted at the grace's end.
    ///             n.spawn_named("legacy", async {
    ///                 tokio::time::sleep(Duration::from_secs(60)).await;
    ///                 Ok::<_, Cancelled>(())
    ///             });
    ///             n.cancel();
    ///             Ok::<_, Cancelled>(())
    ///         }
    ///     })
    ///     .await
    ///     .unwrap();
    /// let tree = kept.unwrap().tree_at_grace_expiry().unwrap().to_string();
    /// assert!(tree.contains("child \"legacy\""), "{tree}");
    /// assert!(tree.contains("cancelled 1000ms ago"), "{tree}");
    /// # }
    /// ```
    pub fn keep_tree_at_grace_expiry(self) -> Self {
        Nursery {
            keep_tree: true,
            ..self
        }
    }

    /// Supervisor policy (SPEC N5, Kotlin's `supervisorScope`): a child's failure or panic
    /// cancels no one; it goes to the outlet ([`NurseryHandle::next_incident`]) as it
    /// happens. A failure of the body still cancels every child. Incidents nobody took are
    /// returned (failures) or resumed (the first panic) when the nursery ends.
    pub fn supervisor(self) -> Self {
        Nursery {
            supervisor: true,
            ..self
        }
    }

    /// Cancels the nursery's scope at `deadline` (reason `Deadline`): body and children see
    /// it, and the nursery absorbs it: `Ok(None)` if the body returned the cancellation,
    /// `Ok(Some(value))` if it returned a value anyway, an error if something failed.
    /// Request-scoped fan-out in one line.
    pub fn deadline(self, deadline: tokio::time::Instant) -> Self {
        Nursery {
            deadline: Some(Deadline::At(deadline)),
            ..self
        }
    }

    /// Cancels the nursery's scope `timeout` after it starts (its first poll). See
    /// [`deadline`](Self::deadline).
    pub fn timeout(self, timeout: Duration) -> Self {
        Nursery {
            deadline: Some(Deadline::After(timeout)),
            ..self
        }
    }

    /// At most `children` children run at once (SPEC N11). [`spawn`](NurseryHandle::spawn)
    /// never waits: a child spawned while the nursery is full waits for a slot in its own
    /// task before it first runs. [`spawn_when_free`](NurseryHandle::spawn_when_free) waits
    /// for a slot before spawning (back-pressure), [`try_spawn`](NurseryHandle::try_spawn)
    /// fails fast.
    ///
    /// A child that [`spawn`](NurseryHandle::spawn)s into its own full nursery and then
    /// awaits the new child waits for a slot it holds itself: a deadlock. From children, use
    /// [`try_spawn`](NurseryHandle::try_spawn) or
    /// [`spawn_when_free`](NurseryHandle::spawn_when_free), which return
    /// [`SpawnError::Full`] in that case; [`start`](NurseryHandle::start) from a child into
    /// its own full nursery fails with [`StartError::Spawn`]`(`[`SpawnError::Full`]`)` rather
    /// than wait for a signal that may never come. The same holds for a child that awaits
    /// a sibling still waiting for a slot (spawned by the body while the nursery was full)
    /// when no other child will end: the sibling waits for the slot the waiting child holds.
    ///
    /// A limit above [`Semaphore::MAX_PERMITS`](tokio::sync::Semaphore::MAX_PERMITS)
    /// (`usize::MAX` included) means no limit: that many children could not be alive at
    /// once anyway.
    ///
    /// # Panics
    ///
    /// If `children` is zero (nothing could ever run).
    pub fn limit(self, children: usize) -> Self {
        assert!(
            children > 0,
            "tokio-nursery: a nursery's limit must allow at least one child"
        );
        Nursery {
            // tokio's semaphore panics above its maximum (at the nursery's first poll).
            limit: (children <= Semaphore::MAX_PERMITS).then_some(children),
            ..self
        }
    }

    /// Names the nursery (for reports and tracing).
    pub fn name(self, name: impl Into<Cow<'static, str>>) -> Self {
        Nursery {
            name: Some(Arc::from(name.into().as_ref())),
            ..self
        }
    }

    /// How long children may take to stop once the nursery is cancelled before they are
    /// aborted (SPEC N7). Aborting them is not a failure. Without a grace period the nursery
    /// waits for its children as long as they take.
    pub fn grace(self, grace: Duration) -> Self {
        Nursery {
            grace: Some(grace),
            ..self
        }
    }

    /// Warns (a `tracing` warn event, or stderr without the feature) when the nursery's
    /// cancellation has not been observed by some children `after` it happened, naming the
    /// children that have not reached a cancellation point since (SPEC N7). 10 s by
    /// default; `None` turns it off.
    pub fn warn_unobserved_after(self, after: Option<Duration>) -> Self {
        Nursery {
            warn_unobserved: after,
            ..self
        }
    }

    /// What happens to running children if the nursery's future is dropped early.
    pub fn drop_mode(self, drop_mode: DropMode) -> Self {
        Nursery { drop_mode, ..self }
    }

    /// Where panics that are not resumed, and failures that cannot be returned because a
    /// panic is resumed, are reported (SPEC N6). By default: an error-level `tracing` event
    /// with the `tracing` feature when a subscriber is installed, else a line on stderr.
    /// (The warnings, an unobserved cancellation or a grace period running out, are
    /// `tracing` events only: without a subscriber nobody sees them.) A panic in the hook,
    /// or in the `Debug` of an error it formats, is caught: a line on stderr says which
    /// report it cost, and the nursery goes on (a panic it resumes keeps its payload).
    pub fn on_report(self, hook: impl Fn(&Report<'_>) + Send + Sync + 'static) -> Self {
        Nursery {
            hook: Some(Arc::new(hook)),
            ..self
        }
    }

    /// Sets the report hook as [`on_report`](Self::on_report) does, from one already shared.
    pub(crate) fn report_hook(self, hook: Option<ReportHook>) -> Self {
        Nursery { hook, ..self }
    }

    /// Runs `body` with a handle to spawn children, and waits for the body and every child.
    ///
    /// The future yields:
    /// - `Ok(Some(value))`: the body returned a value and no child or body failed;
    /// - `Ok(None)`: the nursery's own scope was cancelled (through
    ///   [`NurseryHandle::cancel`], [`NurseryHandle::scope`], [`NurseryFuture::cancel`],
    ///   its [`deadline`](Nursery::deadline) or [`timeout`](Nursery::timeout)), the body
    ///   returned that cancellation, and the nursery absorbed it (a body that returned a
    ///   value anyway gives `Ok(Some(value))`);
    /// - `Err(NurseryError::Failed(failures))`: every failure, the first one first (N4);
    /// - `Err(NurseryError::Cancelled(_))`: an enclosing scope was cancelled (and the body
    ///   returned that cancellation); pass it on.
    ///
    /// A body that returned a value wins over any cancellation, its own or an enclosing
    /// one's, that came after it returned, also one that then cut short children it left
    /// running: the nursery returns `Ok(Some(value))`, as any future that completed returns
    /// its output, and an enclosing cancellation meets the caller at its next cancellation
    /// point. To know whether children were cut short, ask the scope
    /// ([`ScopeHandle::cancel_called`] on [`NurseryHandle::scope`]), or have the children
    /// report it (a collector, or handles awaited in the body).
    ///
    /// If a child or the body panicked, the earliest panic is resumed once everything has
    /// stopped, and the rest goes to the report hook (N6).
    ///
    /// # Panics
    ///
    /// At once, if the drop mode is [`DropMode::BlockingWait`] and no
    /// [`grace`](Nursery::grace) was set; when first polled outside a tokio runtime.
    pub fn run<B, Fut, T, E>(self, body: B) -> NurseryFuture<B, Fut, T, E>
    where
        B: FnOnce(NurseryHandle<E>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: CancelError + fmt::Debug + Send + 'static,
    {
        assert!(
            self.drop_mode != DropMode::BlockingWait || self.grace.is_some(),
            "tokio-nursery: DropMode::BlockingWait needs a finite grace period (Nursery::grace)"
        );
        NurseryFuture {
            config: self,
            make_body: Some(body),
            body: None,
            shared: None,
            value: None,
            grace: None,
            unobserved: None,
            warned: false,
            waiter: None,
            cancel_requested: false,
            state: State::Unentered,
            orphan: orphan::<E>,
            grace_task: grace_task::<E>,
        }
    }
}

impl Default for Nursery {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Nursery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nursery")
            .field("name", &self.name)
            .field("grace", &self.grace)
            .field("drop_mode", &self.drop_mode)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug)]
enum Deadline {
    At(tokio::time::Instant),
    After(Duration),
}

/// Runs `body` in a new [`Nursery`] with the default configuration.
pub fn nursery<B, Fut, T, E>(body: B) -> NurseryFuture<B, Fut, T, E>
where
    B: FnOnce(NurseryHandle<E>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: CancelError + fmt::Debug + Send + 'static,
{
    Nursery::new().run(body)
}

/// What a nursery's grace period cut short, kept once it ran out.
struct Expiry {
    /// The children it aborted, by name or scope id.
    aborted: Vec<String>,
    /// The tree as it stood just before (only when asked to keep it).
    tree: Option<Box<TaskTree>>,
}

/// What a nursery and its children share.
pub(crate) struct Shared<E> {
    node: Arc<Node>,
    runtime: Handle,
    registry: Registry<Stopper<E>, Failure<E>, Origin>,
    hook: Option<ReportHook>,
    supervisor: bool,
    name: Option<Arc<str>>,
    /// The nursery's span, parent of its children's (SPEC O1).
    #[cfg(feature = "tracing")]
    span: tracing::Span,
    /// At most this many children run at once (SPEC N11).
    pub(crate) limit: Option<Arc<Semaphore>>,
    /// What the grace period cut short (SPEC N7), once it ran out.
    expiry: std::sync::OnceLock<Expiry>,
    /// The body has not returned (nor been dropped): the task tree says the nursery still
    /// waits on it (SPEC O2).
    body_running: std::sync::atomic::AtomicBool,
    /// Keep the task tree as it stood when the grace period ran out (the root's report).
    keep_tree: bool,
    /// A `!Send` child was spawned (SPEC N12): only its `LocalSet`'s thread can run it, so a
    /// blocking wait (N9b) could not help it finish.
    has_local: std::sync::atomic::AtomicBool,
    /// The wakers of the children's handles that wait for their outcome
    /// ([`crate::output_slot`]): kept here, not in every child's cell.
    wakers: crate::output_slot::Wakers,
}

impl<E> Shared<E> {
    fn fail_fast(&self) {
        fail_fast(&self.node, "nursery");
    }
}

/// The fail-fast cancellation of a nursery's or a local scope's `node` (SPEC N4), done on
/// nobody's behalf: a waker's panic there (a cancellation wakes every waiter, then
/// re-raises the first panic) is caught, so it neither unwinds the poll that recorded the
/// failure nor takes the failure with it.
pub(crate) fn fail_fast(node: &Arc<Node>, scope: &'static str) {
    catch_waker_panic(
        || format!("when a failure cancelled its {scope}"),
        || node.cancel(CancelReason::SiblingFailed),
    );
}

impl<E: fmt::Debug> Shared<E> {
    /// Fail-fast (SPEC N4): the first failure cancels the nursery's scope. An orphaned
    /// nursery hands it to its adopter instead (N9).
    fn fail(&self, failure: Failure<E>) {
        #[cfg(feature = "tracing")]
        tracing::debug!(origin = %failure.origin(), stray = failure.is_stray(), "failure");
        let cancels = !self.supervisor || *failure.origin() == Origin::Body;
        match self.registry.fail(failure) {
            Recorded::First if cancels => self.fail_fast(),
            Recorded::First => {}
            Recorded::Later if cancels && self.supervisor => self.fail_fast(),
            Recorded::Later => {}
            Recorded::Orphaned(failure, adopter) => adopter.orphan_report(orphan_failure(failure)),
            Recorded::Unclaimed(failure) => self.report_failure(&failure),
        }
    }
}

/// An adopted child's failure as text for its adopter. Made inside the child's task, so a
/// panic in the error's `Debug` or destructor is caught: the adopter still hears of the
/// failure.
fn orphan_failure<E: fmt::Debug>(failure: Failure<E>) -> OrphanReport<Origin> {
    let error = catch_unwind(AssertUnwindSafe(|| format!("{:?}", failure.error()))).unwrap_or_else(
        |payload| {
            let why = report::panic_message(&*payload)
                .unwrap_or("a payload that is not a string")
                .to_string();
            report::drop_quietly(payload);
            format!("<the error's Debug panicked: {why}>")
        },
    );
    let label = failure.origin().clone();
    report::drop_quietly(failure);
    OrphanReport::Failure { error, label }
}

/// A nursery adopts the children of nurseries dropped in wait mode inside it (SPEC N9).
impl<E: Send + 'static> Adopter<Origin> for Shared<E> {
    fn adopt(&self, stop: Arc<dyn StopAll>) -> Result<(usize, bool), Closed> {
        self.registry.adopt(stop)
    }

    fn adoptee_finished(&self, key: usize) {
        self.registry.finished(Some(key));
    }

    fn successor(&self) -> Option<Arc<dyn Adopter<Origin>>> {
        self.registry.successor()
    }

    fn adopted_scopes(&self) -> Vec<Arc<Node>> {
        self.registry.adopted_scopes()
    }

    fn describe_child(&self, child: ScopeId) -> Option<Description> {
        self.registry.find(|stopper| match stopper {
            Stopper::Task(cell) if cell.scope.id() == child => Some(child_description(&cell.scope)),
            _ => None,
        })
    }

    fn children_without_scope(&self) -> Vec<(ScopeId, Description)> {
        self.registry.collect(|stopper| match stopper {
            Stopper::Task(cell) if cell.scope.own().is_none() => {
                Some((cell.scope.id(), child_description(&cell.scope)))
            }
            _ => None,
        })
    }

    fn describe(&self) -> Description {
        let registry::Counts {
            running,
            unlisted,
            adopted,
            open,
            incidents,
        } = self.registry.counts();
        // What the nursery waits for: its body too, until it returns (a stuck body holds up
        // a shutdown as a stuck child does).
        let waits_for = match self.body_running.load(Ordering::Relaxed) {
            true if running == 0 => "the body".to_string(),
            true => format!("the body and {}", children(running)),
            false => children(running),
        };
        let mut detail = match (open, self.node.is_cancelled()) {
            // Closed with children still running: its future was dropped and they are
            // finishing under the adopter whose tree shows this (SPEC O2, N9).
            (false, _) if running > 0 => {
                format!("dropped, adopted: {} still finishing", children(running))
            }
            (false, _) => "closed".to_string(),
            (true, true) => format!("cancelling, waiting on {waits_for}"),
            (true, false) => format!("running, {waits_for}"),
        };
        if unlisted > 0 {
            // Listed once they wait (registry invariant N-3).
            detail.push_str(&format!(", {unlisted} of them starting"));
        }
        if adopted > 0 {
            // Nurseries dropped in wait mode, protected work, executor tasks.
            detail.push_str(&format!(", {adopted} adopted"));
        }
        if incidents > 0 {
            detail.push_str(&format!(", {incidents} failures not yet reported"));
        }
        Description {
            kind: "nursery",
            name: self.name.clone(),
            detail: Some(detail),
        }
    }

    fn orphan_report(&self, report: OrphanReport<Origin>) {
        report::adopted(&report, |r| report::deliver(self.hook.as_ref(), r));
    }
}

/// Aborts what the current runtime's orphans still run (the root, when its grace for them
/// ran out); returns the names of what was aborted.
pub(crate) fn stop_orphans() -> Vec<String> {
    Orphans::of_current()
        .map(|orphans| orphans.stop_all())
        .unwrap_or_default()
}

/// The scopes held by the current runtime's orphan registry (for `TaskTree::orphans`).
pub(crate) fn orphan_scopes() -> Vec<Arc<Node>> {
    Orphans::of_current()
        .map(|orphans| orphans.scopes())
        .unwrap_or_default()
}

/// The default report hook, for scopes without a nursery's configuration.
pub(crate) fn report_default(report: &Report<'_>) {
    report::deliver(None, report);
}

pub(crate) use report::{catch_waker_panic, drop_quietly};

/// Spawns a child's task, under a `child` span parented to its nursery's span when a
/// subscriber listens (SPEC O1); otherwise the task is the bare wrapper, with no span stored.
fn spawn_traced<E, Fut>(
    shared: &Shared<E>,
    scope: ScopeId,
    name: Option<&str>,
    task: Fut,
) -> JoinHandle<Fut::Output>
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    #[cfg(feature = "tracing")]
    {
        use tracing::Instrument;
        if !shared.span.is_disabled() {
            let span = tracing::debug_span!(
                parent: &shared.span,
                "child",
                name = name.unwrap_or(""),
                scope = %scope,
            );
            if !span.is_disabled() {
                return shared.runtime.spawn(task.instrument(span));
            }
        }
    }
    let _ = (scope, name);
    shared.runtime.spawn(task)
}

/// "1 child", "2 children".
fn children(count: usize) -> String {
    match count {
        1 => "1 child".to_string(),
        n => format!("{n} children"),
    }
}

/// A spawned child's task (its output is the route's business: drop it at will) and its
/// cell.
pub(crate) type Spawned<E, O> = (JoinHandle<()>, Arc<ChildCell<E, O>>);

/// How the task tree shows a child (SPEC O2).
fn child_description(scope: &TaskScope) -> Description {
    Description {
        kind: "child",
        name: scope.name().cloned(),
        detail: Some(match scope.abort_handle() {
            Some(abort) => format!("task {}", abort.id()),
            None => "being spawned".to_string(),
        }),
    }
}

/// What a child's scope node carries, for the task-tree snapshot (SPEC O2), and for its
/// nursery to recognise it before it has a slot in the registry (SPEC N11).
pub(crate) struct ChildLabel {
    pub(crate) kind: &'static str,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) task: tokio::task::Id,
    /// The scope of the nursery whose child it is.
    pub(crate) nursery: ScopeId,
}

impl Attachment for ChildLabel {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn describe(&self) -> Description {
        Description {
            kind: self.kind,
            name: self.name.clone(),
            detail: Some(format!("task {}", self.task)),
        }
    }
}

/// An orphaned nursery's children are aborted when its adopter's are (SPEC N7's cascade).
impl<E: Send + 'static> StopAll for Shared<E> {
    /// The adopter's grace ran out (SPEC N7's cascade): these children are aborted and
    /// named as if this nursery's own grace had, and the adopter is told their names (the
    /// adopter's warn-level event names them; this nursery emits none of its own). The
    /// adopter was dropped in abort mode (N8): they are aborted as by this nursery's own
    /// abort-mode drop.
    fn stop_all(&self, grace_expired: bool) -> Vec<String> {
        match grace_expired {
            true => self.expire_grace(false),
            false => self.abort_named(false),
        }
    }

    fn scope(&self) -> Option<Arc<Node>> {
        Some(self.node.clone())
    }
}

/// What a nursery's scope node carries so that nurseries dropped inside it can find it, and
/// the task-tree snapshot can describe it.
struct AdopterRef {
    nursery: std::sync::Weak<dyn Adopter<Origin>>,
    /// The same nursery, for an enclosing nursery's grace expiry (SPEC N7's cascade into
    /// the nurseries running in its body: `cascade_into_body`).
    stop: std::sync::Weak<dyn StopAll>,
}

impl Attachment for AdopterRef {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn adopted(&self) -> Vec<Arc<Node>> {
        self.nursery
            .upgrade()
            .map(|nursery| nursery.adopted_scopes())
            .unwrap_or_default()
    }

    fn describe_child(&self, child: ScopeId) -> Option<Description> {
        self.nursery.upgrade()?.describe_child(child)
    }

    fn grace_expired_above(&self) -> Option<Vec<String>> {
        Some(self.stop.upgrade()?.stop_all(true))
    }

    fn children_without_scope(&self) -> Vec<(ScopeId, Description)> {
        self.nursery
            .upgrade()
            .map(|nursery| nursery.children_without_scope())
            .unwrap_or_default()
    }

    fn describe(&self) -> Description {
        match self.nursery.upgrade() {
            Some(nursery) => nursery.describe(),
            None => Description {
                kind: "nursery",
                name: None,
                detail: Some("finished".into()),
            },
        }
    }
}

/// The nearest live enclosing nursery of `node` that accepts an adoptee, else the runtime's
/// orphan registry (SPEC N9). A nursery closing meanwhile refuses; the handoff falls through.
fn adopter_of(
    node: &Node,
    runtime: &Handle,
    stop: Arc<dyn StopAll>,
) -> (Arc<dyn Adopter<Origin>>, usize, bool) {
    nearest_adopter(node.parent(), runtime, stop)
}

/// The first live nursery at or above `scope` that accepts an adoptee, else the runtime's
/// orphan registry.
pub(crate) fn nearest_adopter(
    scope: Option<Arc<Node>>,
    runtime: &Handle,
    stop: Arc<dyn StopAll>,
) -> (Arc<dyn Adopter<Origin>>, usize, bool) {
    let mut ancestor = scope;
    while let Some(scope) = ancestor {
        // Read before this scope's nursery is asked: one that refuses may be orphaning right
        // now, and its scope forgets its parent once ended (its successor is set by then).
        ancestor = scope.parent();
        let adopter = scope.attachment().and_then(|attachment| {
            let link = attachment.as_any().downcast_ref::<AdopterRef>()?;
            link.nursery.upgrade()
        });
        // A nursery that refuses (it is closing) may itself have been orphaned: the handoff
        // goes on to whoever adopted it (its scope has left the tree).
        let mut candidate = adopter;
        while let Some(adopter) = candidate {
            match adopter.adopt(stop.clone()) {
                Ok((key, aborted)) => return (adopter, key, aborted),
                Err(_) => candidate = adopter.successor(),
            }
        }
    }
    let orphans: Arc<dyn Adopter<Origin>> = Orphans::of(runtime);
    let (key, aborted) = orphans
        .adopt(stop)
        .expect("the orphan registry always adopts");
    (orphans, key, aborted)
}

/// Waits for a slot of a nursery's concurrency limit (SPEC N11), unless the current scope
/// is cancelled first.
pub(crate) async fn acquire_slot(limit: Arc<Semaphore>) -> Result<OwnedSemaphorePermit, Cancelled> {
    let acquire = std::pin::pin!(limit.acquire_owned());
    let cancelled = std::pin::pin!(crate::point::cancelled());
    match futures::future::select(acquire, cancelled).await {
        futures::future::Either::Left((slot, _)) => {
            Ok(slot.expect("a nursery's limit is never closed"))
        }
        futures::future::Either::Right((cancelled, _)) => Err(cancelled),
    }
}

/// How a child is stopped hard: an async child is aborted; a blocking one cannot be (tokio
/// cannot abort it) and is told through its scope instead (SPEC N16).
pub(crate) enum Stopper<E> {
    /// An async child: its cell holds its abort handle (which knows its task id), its name
    /// and its scope, for the task tree and the warnings.
    Task(Arc<ChildCell<E>>),
    Blocking(Arc<BlockingChild>),
}

impl<E> Clone for Stopper<E> {
    fn clone(&self) -> Self {
        match self {
            Stopper::Task(cell) => Stopper::Task(cell.clone()),
            Stopper::Blocking(child) => Stopper::Blocking(child.clone()),
        }
    }
}

impl<E> Stopper<E> {
    /// Aborts an async child (true; one still being spawned is aborted by its spawner,
    /// registry invariant N-3); a blocking one needs [`tell`](Self::tell), outside any
    /// lock (it runs wakers).
    ///
    /// Neither this (`ChildCell::abort_in_cascade`) nor `tell` unwinds: a waker panicking
    /// at the cancellation either makes must not leave the children after this one running
    /// (`catch_waker_panic`).
    fn abort(&self) -> bool {
        match self {
            // One running a parallel borrowing scope is told "grace expired" instead, and
            // aborted when that scope ends (SPEC B2): `ChildCell::abort`.
            Stopper::Task(cell) => {
                cell.abort_in_cascade();
                true
            }
            Stopper::Blocking(_) => false,
        }
    }

    /// Tells a blocking child, which cannot be aborted, to stop (SPEC N16).
    fn tell(&self, reason: CancelReason) {
        match self {
            Stopper::Blocking(child) => {
                child::Teller::Cascade.tell("a blocking child", || child.node.cancel(reason))
            }
            // Already told "grace expired" when its abort was put off.
            Stopper::Task(_) => {}
        }
    }
}

impl<E> Shared<E> {
    /// Whether the code being polled runs in one of this nursery's children.
    fn is_own_child(&self) -> bool {
        let (mut scope, task_child) = context::with_current(|frame| {
            // The outermost frame of a nursery child's task is its own: a child that has
            // not parked yet has no slot to be found by below.
            let mut task_child = None;
            let mut outer = frame;
            while let Some(current) = outer {
                task_child = current.child_task().map(|task| task.id()).or(task_child);
                outer = current.parent();
            }
            (frame.map(|frame| frame.node().clone()), task_child)
        });
        // A child with a slot (named, started): found by its task's own scope, wherever its
        // scope hangs (a started child's is under its caller's until it signals).
        if let Some(id) = task_child {
            let found = self.registry.find(|stopper| match stopper {
                Stopper::Task(cell) if cell.scope.id() == id => Some(()),
                _ => None,
            });
            if found.is_some() {
                return true;
            }
        }
        while let Some(node) = scope {
            let parent = node.parent();
            if parent.as_ref().is_some_and(|p| Arc::ptr_eq(p, &self.node)) {
                // Under the nursery's scope: a child's scope, or one of the body's own. A
                // child's scope made before it had a slot (busy in its first poll) is
                // labelled as the nursery's child.
                let id = node.id();
                let labelled = || {
                    node.attachment().is_some_and(|attachment| {
                        attachment
                            .as_any()
                            .downcast_ref::<ChildLabel>()
                            .is_some_and(|label| label.nursery == self.node.id())
                    })
                };
                return task_child == Some(id)
                    || labelled()
                    || self.registry.find(|stopper| match stopper {
                        Stopper::Task(cell) if cell.scope.id() == id => Some(()),
                        Stopper::Blocking(child) if child.node.id() == id => Some(()),
                        _ => None,
                    }) == Some(());
            }
            scope = parent;
        }
        false
    }

    fn report(&self, report: &Report<'_>) {
        report::deliver(self.hook.as_ref(), report);
    }

    /// A panic nobody else will see, to the report hook.
    fn report_panic(&self, panic: &registry::Panic<Origin>) {
        self.report(&Report::Panic {
            origin: &panic.label,
            payload: &*panic.payload,
            adopted: false,
        });
    }

    /// A failure nobody else will see, to the report hook.
    fn report_failure(&self, failure: &Failure<E>)
    where
        E: fmt::Debug,
    {
        self.report(&Report::Failure {
            origin: failure.origin(),
            error: failure.error(),
            adopted: false,
        });
    }

    fn panicked(&self, origin: Origin, payload: Box<dyn std::any::Any + Send>) {
        #[cfg(feature = "tracing")]
        tracing::debug!(origin = %origin, "panic");
        let cancels = !self.supervisor || origin == Origin::Body;
        match self.registry.panicked(origin, payload) {
            Recorded::First if cancels => self.fail_fast(),
            Recorded::First => {}
            Recorded::Later if cancels && self.supervisor => self.fail_fast(),
            Recorded::Later => {}
            Recorded::Orphaned(panic, adopter) => adopter.orphan_report(OrphanReport::Panic(panic)),
            Recorded::Unclaimed(panic) => self.report_panic(&panic),
        }
    }

    /// The children the grace period aborted, once it ran out (`aborted_children`).
    fn aborted(&self) -> &[String] {
        self.expiry
            .get()
            .map_or(&[], |expiry| expiry.aborted.as_slice())
    }

    /// The grace period ran out (SPEC N7): aborts the children still running and names them,
    /// with those of adopted nurseries aborted in the cascade, for `aborted_children`, the
    /// `Cancelled` the nursery passes on and a warn-level event. Nothing if the nursery is
    /// past its grace already (an ancestor's cascade reached it, or it was made past one):
    /// its children were aborted (or told) and named then, and later ones abort as they
    /// start; a second event would name the same children again.
    fn grace_expired(&self) {
        self.expire_grace(true);
    }

    /// As [`grace_expired`](Self::grace_expired); `warn: false` for a nursery reached by an
    /// ancestor's cascade, whose own event names these children already.
    fn expire_grace(&self, warn: bool) -> Vec<String> {
        // Marked first, before the cascade looks below (see `Node::is_past_grace`); once
        // only: a nursery reached twice (by an ancestor's cascade, then its own grace, or as
        // an adoptee and through its scope in one cascade) names its children once.
        if !self.node.mark_past_grace() {
            // Named once; but what was shielded at the first expiry may be exposed now.
            return self.cascade_into_body();
        }
        // Taken before anything is aborted: what was still running, and since when it was
        // asked to stop.
        let tree = self
            .keep_tree
            .then(|| Box::new(TaskTree::from_node(&self.node)));
        let mut aborted = self.abort_named(true);
        aborted.extend(self.cascade_into_body());
        // Kept only when something was cut short: a tree of what the grace left alone would
        // stand for a cut that did not happen (the root then takes its own at its cut).
        let tree = tree.filter(|_| !aborted.is_empty());
        #[cfg(feature = "tracing")]
        if warn && !aborted.is_empty() {
            tracing::warn!(
                scope = %self.node.id(),
                children = %aborted.join(", "),
                "grace period expired: children aborted"
            );
        }
        #[cfg(not(feature = "tracing"))]
        let _ = warn;
        let _ = self.expiry.set(Expiry {
            aborted: aborted.clone(),
            tree,
        });
        aborted
    }

    /// The grace period ran out: the nurseries running inside this one's scope without
    /// being its children or adoptees (in its body, or in a scope there) have their grace
    /// expire too, whatever their drop mode (SPEC N7: past an ancestor's grace, abort
    /// cascades to every descendant). Their children's names are returned. Each nursery
    /// found cascades into what runs inside it; nurseries in this one's children are reached
    /// too (those children's aborts would reach them a moment later, through adoption);
    /// shielded scopes are passed over (S8; protected work, C1, is told "grace expired" as
    /// an adoptee).
    fn cascade_into_body(&self) -> Vec<String> {
        // A shielded scope of the body (a cleanup, protected work) is left alone: the
        // nursery waits for the body anyway, and protected work is told as an adoptee.
        Node::cascade_past_grace(self.node.children())
    }

    /// Aborts every running child and what the nursery adopted, as an expired grace period
    /// (or an abort-mode drop) does, and returns their names.
    fn abort_named(&self, grace_expired: bool) -> Vec<String> {
        // Those counted as starting abort themselves before (or instead of) waiting
        // (registry invariant N-3).
        let mut aborted = child_names(self, |_, _| true);
        aborted.extend(self.abort_children(grace_expired));
        aborted
    }

    /// Aborts every child and, in turn, what this nursery adopted (the cascade), and returns
    /// the names of what the cascade aborted. Blocking children are told, with
    /// `GraceExpired` when the grace period ran out (S4).
    fn abort_children(&self, grace_expired: bool) -> Vec<String> {
        let reason = if grace_expired {
            CancelReason::GraceExpired
        } else {
            CancelReason::Explicit(None)
        };
        self.registry
            .abort_all(grace_expired, Stopper::abort, |stopper| {
                stopper.tell(reason.clone())
            })
    }
}

/// A handle to spawn into a nursery, from any task or thread while it is open (SPEC N10).
/// Cheap to clone.
pub struct NurseryHandle<E> {
    shared: Arc<Shared<E>>,
}

impl<E> Clone for NurseryHandle<E> {
    fn clone(&self) -> Self {
        NurseryHandle {
            shared: self.shared.clone(),
        }
    }
}

/// Spawning failed; the child was not started.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SpawnError {
    /// The nursery has closed: its body and all its children finished, or its future was
    /// dropped.
    Closed,
    /// The nursery's concurrency limit is reached ([`NurseryHandle::try_spawn`]), or a
    /// child of the nursery asked to wait for a slot of its own full nursery, which could
    /// deadlock ([`NurseryHandle::spawn_when_free`]).
    Full,
    /// The caller's scope was cancelled while it waited for a slot.
    Cancelled(Cancelled),
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::Closed => f.write_str("cannot spawn into a nursery that has closed"),
            SpawnError::Full => f.write_str("the nursery's concurrency limit is reached"),
            SpawnError::Cancelled(cancelled) => {
                write!(f, "stopped waiting for a slot: {cancelled}")
            }
        }
    }
}

impl std::error::Error for SpawnError {
    /// The cancellation, so [`CancelError`] finds it inside boxed errors.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpawnError::Cancelled(cancelled) => Some(cancelled),
            _ => None,
        }
    }
}

impl From<Closed> for SpawnError {
    fn from(_: Closed) -> Self {
        SpawnError::Closed
    }
}

impl From<Cancelled> for SpawnError {
    fn from(cancelled: Cancelled) -> Self {
        SpawnError::Cancelled(cancelled)
    }
}

impl CancelError for SpawnError {
    fn as_cancelled(&self) -> Option<&Cancelled> {
        match self {
            SpawnError::Cancelled(cancelled) => Some(cancelled),
            _ => None,
        }
    }
}

impl<E> NurseryHandle<E>
where
    E: CancelError + fmt::Debug + Send + 'static,
{
    /// Spawns a child on the nursery's runtime, in a scope that is a child of the nursery's
    /// (S1). Into a cancelled nursery the child starts already cancelled (N10).
    ///
    /// # Panics
    ///
    /// If the nursery has closed; use [`try_spawn`](Self::try_spawn) where that can happen
    /// (a handle kept after the nursery finished).
    pub fn spawn<F, T>(&self, future: F) -> ChildHandle<T>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
    {
        self.spawn_inner(None, future)
            .unwrap_or_else(|error| panic!("tokio-nursery: {error}"))
    }

    /// Like [`spawn`](Self::spawn), with a name for reports, the warnings and the task tree,
    /// which lists a named child from its spawn (an unnamed one once it has waited for the
    /// first time: a spawn that costs no lock of the nursery).
    pub fn spawn_named<F, T>(&self, name: &str, future: F) -> ChildHandle<T>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
    {
        self.spawn_inner(Some(Arc::from(name)), future)
            .unwrap_or_else(|error| panic!("tokio-nursery: {error}"))
    }

    /// Spawns a child, or returns [`SpawnError::Closed`] if the nursery has closed, or
    /// [`SpawnError::Full`] if its concurrency limit is reached (never waits).
    pub fn try_spawn<F, T>(&self, future: F) -> Result<ChildHandle<T>, SpawnError>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
    {
        let slot = self.free_slot()?;
        let (_, child) = self.spawn_task(None, None, slot, future, |_| ToHandle::new())?;
        Ok(ChildHandle::new(child))
    }

    /// A free slot of the concurrency limit (`None` without a limit), or `Full` (SPEC N11).
    pub(crate) fn free_slot(&self) -> Result<Option<OwnedSemaphorePermit>, SpawnError> {
        match &self.shared.limit {
            Some(limit) => match limit.clone().try_acquire_owned() {
                Ok(slot) => Ok(Some(slot)),
                // A nursery that ended may still hold slots for a moment: say it is closed.
                Err(_) if !self.shared.registry.is_open() => Err(SpawnError::Closed),
                Err(_) => Err(SpawnError::Full),
            },
            None => Ok(None),
        }
    }

    /// Waits for a slot of the concurrency limit (`None` without a limit): `Full` for a
    /// child of this nursery, which might wait for its own slot (SPEC N11).
    pub(crate) async fn slot_when_free(&self) -> Result<Option<OwnedSemaphorePermit>, SpawnError> {
        match (self.free_slot(), &self.shared.limit) {
            (Err(SpawnError::Full), Some(limit)) if !self.is_own_child() => {
                Ok(Some(acquire_slot(limit.clone()).await?))
            }
            (slot, _) => slot,
        }
    }

    /// Waits until the nursery's concurrency limit leaves a slot, then spawns (SPEC N11).
    /// Without a limit it spawns at once. A cancellation point: if the caller's scope is
    /// cancelled first, returns [`SpawnError::Cancelled`]. Cancel-safe: nothing is spawned
    /// unless it returns `Ok`.
    ///
    /// A child of this nursery calling it while the nursery is full gets
    /// [`SpawnError::Full`] at once instead of waiting for itself: if every running child
    /// waited so, none would ever finish. Children can use [`spawn`](Self::spawn), which
    /// queues the new child without waiting.
    pub async fn spawn_when_free<F, T>(&self, future: F) -> Result<ChildHandle<T>, SpawnError>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
    {
        let slot = self.slot_when_free().await?;
        let (_, child) = self.spawn_task(None, None, slot, future, |_| ToHandle::new())?;
        Ok(ChildHandle::new(child))
    }

    /// Whether the code being polled runs in one of this nursery's children.
    fn is_own_child(&self) -> bool {
        self.shared.is_own_child()
    }

    fn spawn_inner<F, T>(
        &self,
        name: Option<Arc<str>>,
        future: F,
    ) -> Result<ChildHandle<T>, SpawnError>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
    {
        let (_, child) = self.spawn_task(name, None, None, future, |_| ToHandle::new())?;
        Ok(ChildHandle::new(child))
    }

    /// Registers and spawns a child, in a scope made when needed under the nursery's, or
    /// at once under `parent`; `route` says where its end goes besides the nursery.
    ///
    /// In a nursery with a concurrency limit, a child spawned without a `slot` waits for one
    /// in its own task before its future first runs (SPEC N11); if it is cancelled while it
    /// waits, it ends as cancelled without having run.
    pub(crate) fn spawn_task<F, T, R>(
        &self,
        name: Option<Arc<str>>,
        parent: Option<&Arc<Node>>,
        slot: Option<OwnedSemaphorePermit>,
        future: F,
        route: impl FnOnce(&Arc<ChildCell<E, R::Out>>) -> R,
    ) -> Result<Spawned<E, R::Out>, SpawnError>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        R: Route<T, E, Output = ()>,
    {
        match (&self.shared.limit, slot) {
            (None, _) => self.spawn_raw(name, parent, future, route),
            (Some(limit), slot) => {
                let limit = limit.clone();
                let slot = slot.or_else(|| limit.clone().try_acquire_owned().ok());
                let limited = async move {
                    let _slot = match slot {
                        Some(slot) => slot,
                        None => acquire_slot(limit).await.map_err(E::from)?,
                    };
                    future.await
                };
                self.spawn_raw(name, parent, limited, route)
            }
        }
    }

    fn spawn_raw<F, T, R>(
        &self,
        name: Option<Arc<str>>,
        parent: Option<&Arc<Node>>,
        future: F,
        route: impl FnOnce(&Arc<ChildCell<E, R::Out>>) -> R,
    ) -> Result<Spawned<E, R::Out>, SpawnError>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        R: Route<T, E, Output = ()>,
    {
        let cell = self.prepare(name, parent)?;
        let route = route(&cell);
        let name = cell.name().cloned();
        let task = ChildTask::new(future, cell.clone(), route);
        let join = spawn_traced(&self.shared, cell.scope.id(), name.as_deref(), task);
        Ok(self.started(cell, join))
    }

    /// Registers a child with its nursery: what it shares with its task.
    fn prepare<O: Default + Send + Sync + 'static>(
        &self,
        name: Option<Arc<str>>,
        parent: Option<&Arc<Node>>,
    ) -> Result<Arc<ChildCell<E, O>>, SpawnError> {
        let shared = &self.shared;
        let listed = name.is_some() || parent.is_some();
        let cell = Arc::new(ChildCell::<E, O>::new(shared.clone(), name));
        if listed {
            // A named child is in the task tree from its spawn, and a started one runs under
            // its starter's scopes from the start (SPEC N3, O2): both hold a slot at once.
            let order = cell.scope.id().as_u64();
            let (key, aborted) = shared
                .registry
                .register(order, |_| Stopper::Task(cell.clone()))?;
            cell.scope.set_slot(key);
            if aborted {
                // Registered after the nursery aborted its children (N-3).
                cell.abort_in_cascade();
            }
        } else {
            // Counted, with no slot until it parks; if the nursery aborted its children, the
            // child aborts itself at its first poll (registry invariant N-3).
            shared.registry.enter()?;
        }
        if let Some(parent) = parent {
            cell.scope.node(parent);
        }
        Ok(cell)
    }

    /// Records a spawned child's task: its abort handle, for the nursery to abort it.
    fn started<O, T>(
        &self,
        cell: Arc<ChildCell<E, O>>,
        join: JoinHandle<T>,
    ) -> (JoinHandle<T>, Arc<ChildCell<E, O>>) {
        if cell.scope.set_abort(join.abort_handle()) {
            // Spawned while the nursery aborted its children (SPEC N8, N7): this one too.
            join.abort();
        }
        (join, cell)
    }

    /// Spawns a `!Send` child on the current [`LocalSet`](tokio::task::LocalSet) or local
    /// runtime (SPEC N12), like [`spawn`](Self::spawn) otherwise. The nursery's concurrency
    /// limit does not apply to local children.
    ///
    /// # Panics
    ///
    /// Outside a `LocalSet` or local runtime (tokio's message says so), or if the nursery
    /// has closed.
    pub fn spawn_local<F, T>(&self, future: F) -> ChildHandle<T>
    where
        F: Future<Output = Result<T, E>> + 'static,
        T: 'static,
    {
        let cell = self
            .prepare(None, None)
            .unwrap_or_else(|error| panic!("tokio-nursery: {error}"));
        self.shared
            .has_local
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // Outside a LocalSet this panics; the task is dropped on the way out and tells the
        // registry, so nothing is left behind.
        let task = ChildTask::new(future, cell.clone(), ToJoinHandle::new());
        let (join, child) = self.started(cell, tokio::task::spawn_local(task));
        ChildHandle::of_task(join, child)
    }
}

impl<E> NurseryHandle<E> {
    /// Cancels the nursery's scope: its body and children see it at their cancellation
    /// points, and the nursery absorbs it: `Ok(None)` if the body returned the
    /// cancellation, `Ok(Some(value))` if it returned a value anyway, an error if something
    /// failed.
    pub fn cancel(&self) {
        self.shared.node.cancel(CancelReason::Explicit(None));
    }

    /// The children this nursery aborted because its grace period ran out before they
    /// stopped (SPEC N7), one line each: a named child as its quoted name and scope id
    /// (`"stuck" (scope#7)`), an unnamed one as its scope id (`scope#8`), and children
    /// aborted before their first poll counted (`2 children starting`); empty if it did
    /// not. Also after the nursery ended, through a handle kept past its run: the way to
    /// learn them when the nursery absorbed its own cancellation (its run returned `Ok`),
    /// since otherwise they travel in the `Cancelled` it passes on
    /// ([`Cancelled::aborted_children`](crate::Cancelled::aborted_children)) and in a
    /// warn-level event.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio_nursery::{Cancelled, Nursery};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let mut kept = None;
    /// let out = Nursery::new()
    ///     .grace(Duration::from_millis(50))
    ///     .run(|n| {
    ///         kept = Some(n.clone());
    ///         async move {
    ///             // Never reaches a cancellation point: aborted when the grace runs out.
    ///             n.spawn_named("stuck", std::future::pending::<Result<(), Cancelled>>());
    ///             n.cancel();
    ///             Ok::<_, Cancelled>(())
    ///         }
    ///     })
    ///     .await;
    /// assert!(out.is_ok(), "absorbed: an abort after the grace is not a failure");
    /// let aborted = kept.unwrap().aborted_children().to_vec();
    /// assert_eq!(aborted.len(), 1);
    /// assert!(aborted[0].starts_with("\"stuck\" (scope#"), "{aborted:?}");
    /// # }
    /// ```
    pub fn aborted_children(&self) -> &[String] {
        self.shared.aborted()
    }

    /// The task tree as it stood when the grace period ran out, before the children were
    /// aborted, if the nursery was asked to keep it
    /// ([`keep_tree_at_grace_expiry`](Nursery::keep_tree_at_grace_expiry)) and its grace
    /// period ran out with something to abort (an ancestor's grace running out counts: the
    /// abort cascades). Also after the nursery ended, through a handle kept past its run.
    pub fn tree_at_grace_expiry(&self) -> Option<&TaskTree> {
        self.shared.expiry.get()?.tree.as_deref()
    }

    /// The nursery's cancel scope: cancel it with a reason, move its deadline, raise its
    /// shield.
    pub fn scope(&self) -> ScopeHandle {
        ScopeHandle {
            node: self.shared.node.clone(),
        }
    }

    /// The outlet (SPEC N5): the next failure or panic not yet taken, in the order they
    /// happened; `None` once no child is alive and none is left. A taken incident is yours:
    /// the nursery no longer returns or resumes it. Meant for supervisor nurseries; in a
    /// fail-fast one the first failure still cancels the rest. Several tasks may wait here
    /// at once (each incident goes to one of them). A child of the nursery waiting here
    /// never sees `None`, as it is alive itself: read the outlet from the body or from
    /// outside the nursery. `None` says no child is alive *now*, not that none will be: a
    /// monitor task reading the outlet from outside while the body still spawns may see
    /// `None` between two children and stop too early (nothing is lost: incidents nobody
    /// took come back in the nursery's result). Not a cancellation point; cancel-safe.
    pub async fn next_incident(&self) -> Option<Incident<E>> {
        /// Takes the waiter's entry off the outlet when the wait ends or is dropped.
        struct Waiting<'a, E> {
            registry: &'a Registry<Stopper<E>, Failure<E>, Origin>,
            key: Option<(u64, usize)>,
        }
        impl<E> Drop for Waiting<'_, E> {
            fn drop(&mut self) {
                self.registry.leave_outlet(&mut self.key);
            }
        }
        let mut waiting = Waiting {
            registry: &self.shared.registry,
            key: None,
        };
        let incident =
            std::future::poll_fn(|cx| waiting.registry.poll_incident(cx.waker(), &mut waiting.key))
                .await?;
        Some(match incident {
            registry::Incident::Failure(failure) => Incident::Failed(failure),
            registry::Incident::Panic(panic) => Incident::Panicked {
                origin: panic.label,
                payload: panic.payload,
            },
        })
    }

    /// Aborts every running child now, as an expired grace period would (blocking children
    /// are told through their scope). Not a failure. Every child is stopped even if a waker
    /// woken by telling one of them panics: that panic is written on stderr, not raised
    /// here (a single child's [`ChildHandle::abort`] or `cancel` raises it to its caller).
    pub fn abort_all(&self) {
        let _ = self.shared.abort_children(true);
    }

    /// Aborts every running child and what the nursery adopted (the cascade) as an expired
    /// grace period does, and returns their names (the root's second signal).
    pub(crate) fn abort_named(&self) -> Vec<String> {
        self.shared.abort_named(true)
    }

    /// Hands the failures and panics recorded so far to the report hook (the root stops
    /// waiting at a second signal: nobody will return them). Later ones go there directly.
    pub(crate) fn report_incidents(&self)
    where
        E: fmt::Debug,
    {
        let (failures, panics) = self.shared.registry.take_reports();
        failures.iter().for_each(|f| self.shared.report_failure(f));
        panics.iter().for_each(|p| self.shared.report_panic(p));
    }

    /// How many adopted nurseries and protected works the nursery still holds.
    pub(crate) fn adoptees(&self) -> usize {
        self.shared.registry.adopted_scopes().len()
    }

    /// The report hook this nursery was given, if any.
    pub(crate) fn report(&self, report: &Report<'_>) {
        self.shared.report(report);
    }

    /// Whether the nursery still accepts children.
    pub fn is_open(&self) -> bool {
        self.shared.registry.is_open()
    }

    /// How many children are alive.
    pub fn live_children(&self) -> usize {
        self.shared.registry.live()
    }
}

impl<E> fmt::Debug for NurseryHandle<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NurseryHandle")
            .field("scope", &self.shared.node.id())
            .field("live_children", &self.live_children())
            .finish()
    }
}

enum State {
    Unentered,
    /// The body runs (or has returned) and children may be alive.
    Running,
    /// The grace period ran out and the children were aborted.
    GraceExpired,
}

/// The future of a running nursery: see [`Nursery::run`].
#[pin_project(PinnedDrop)]
#[must_use = "a nursery does nothing unless awaited"]
pub struct NurseryFuture<B, Fut, T, E> {
    config: Nursery,
    make_body: Option<B>,
    #[pin]
    body: Option<Fut>,
    shared: Option<Arc<Shared<E>>>,
    value: Option<T>,
    #[pin]
    grace: Option<tokio::time::Sleep>,
    #[pin]
    unobserved: Option<tokio::time::Sleep>,
    warned: bool,
    waiter: Option<crate::node::WaiterKey>,
    /// `cancel` was called before the first poll: the scope starts cancelled.
    cancel_requested: bool,
    state: State,
    /// The wait-mode drop, monomorphised where `E`'s bounds are known.
    orphan: fn(&Arc<Shared<E>>, DropMode, Option<tokio::time::Instant>),
    /// Runs a grace period in a task of its own (the bounds the drop lacks, as above).
    grace_task: fn(&Arc<Shared<E>>, tokio::time::Instant),
}

impl<B, Fut, T, E> NurseryFuture<B, Fut, T, E>
where
    B: FnOnce(NurseryHandle<E>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: CancelError + fmt::Debug + Send + 'static,
{
    /// Cancels the nursery (starting it first if it has not run yet) and waits until its body
    /// and every child have stopped, with the nursery's usual outcome (SPEC N9b): the
    /// recommended way to stop a nursery and wait for it, instead of dropping its future.
    ///
    /// It takes the future by value, so it suits a nursery that was not polled yet; for one
    /// that is pinned and may be running (raced in a `select!`, say), call
    /// [`cancel`](Self::cancel) and keep awaiting it.
    pub async fn cancel_and_join(self) -> Result<Option<T>, NurseryError<E>> {
        let mut nursery = std::pin::pin!(self);
        let mut cancelled = false;
        std::future::poll_fn(move |cx| {
            let poll = nursery.as_mut().poll(cx);
            if poll.is_pending() && !cancelled {
                cancelled = true;
                nursery.as_mut().cancel();
                cx.waker().wake_by_ref();
            }
            poll
        })
        .await
    }

    /// Cancels the nursery (SPEC N7): its body and children see the cancellation at their
    /// next cancellation points; keep awaiting the future to join them. Works on a pinned
    /// nursery that is already running; before the first poll, the nursery starts
    /// cancelled. Its own cancellation is absorbed: the outcome is `Ok(None)` unless
    /// something failed or the body returned a value anyway.
    ///
    /// ```
    /// use std::pin::pin;
    /// use std::time::Duration;
    /// use tokio_nursery::{nursery, cancelled, Cancelled};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let mut server = pin!(nursery(|n| async move {
    ///     n.spawn(async { Err::<(), _>(cancelled().await) });
    ///     Err::<(), _>(cancelled().await)
    /// }));
    /// tokio::select! {
    ///     _ = server.as_mut() => unreachable!("it serves until cancelled"),
    ///     _ = tokio::time::sleep(Duration::from_secs(1)) => {}
    /// }
    /// server.as_mut().cancel();
    /// assert!(matches!(server.await, Ok(None)));
    /// # }
    /// ```
    pub fn cancel(self: Pin<&mut Self>) {
        let this = self.project();
        match this.shared.as_ref() {
            Some(shared) => shared.node.cancel(cancel_reason()),
            None => *this.cancel_requested = true,
        }
    }
}

/// Why [`NurseryFuture::cancel`] cancels.
fn cancel_reason() -> CancelReason {
    CancelReason::explicit_with("the nursery was cancelled through its future")
}

impl<B, Fut, T, E> Future for NurseryFuture<B, Fut, T, E>
where
    B: FnOnce(NurseryHandle<E>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: CancelError + fmt::Debug + Send + 'static,
{
    type Output = Result<Option<T>, NurseryError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let State::Unentered = this.state {
            let runtime = Handle::try_current()
                .expect("tokio-nursery: a nursery must run inside a tokio runtime");
            let node = Arc::new(Node::new(ScopeId::next(), false, None));
            match this.config.deadline {
                Some(Deadline::At(at)) => drop(node.set_deadline(Some(at.into_std()))),
                Some(Deadline::After(timeout)) => node.set_timeout(timeout),
                None => {}
            }
            let shared = Arc::new(Shared {
                node: node.clone(),
                runtime,
                registry: Registry::new(),
                hook: this.config.hook.clone(),
                supervisor: this.config.supervisor,
                name: this.config.name.clone(),
                #[cfg(feature = "tracing")]
                span: tracing::debug_span!(
                    "nursery",
                    name = this.config.name.as_deref().unwrap_or(""),
                    scope = %node.id(),
                ),
                limit: this.config.limit.map(|k| Arc::new(Semaphore::new(k))),
                expiry: std::sync::OnceLock::new(),
                body_running: std::sync::atomic::AtomicBool::new(true),
                keep_tree: this.config.keep_tree,
                has_local: std::sync::atomic::AtomicBool::new(false),
                wakers: Default::default(),
            });
            let adopter: Arc<dyn Adopter<Origin>> = shared.clone();
            let stop: Arc<dyn StopAll> = shared.clone();
            let link = AdopterRef {
                nursery: Arc::downgrade(&adopter),
                stop: Arc::downgrade(&stop),
            };
            // Attached before the scope is linked: a cascade that finds the scope below an
            // ancestor past its grace finds the nursery too (`Node::is_past_grace`).
            shared.node.attach(Arc::new(link));
            enter_preset(&shared.node);
            let handle = NurseryHandle {
                shared: shared.clone(),
            };
            // Stored first: if the closure panics, the drop still ends the nursery's scope.
            *this.shared = Some(shared.clone());
            *this.state = State::Running;
            if *this.cancel_requested {
                shared.node.cancel(cancel_reason());
            }
            if shared.node.is_past_grace() {
                // Its children are aborted as they start (registry N-3), named by nobody:
                // the ancestor's event was emitted before they existed.
                *this.state = State::GraceExpired;
                shared.expire_grace(false);
            }
            let make_body = this.make_body.take().expect("body present");
            let body = context::enter(FrameKind::Linked(&shared.node), || make_body(handle));
            this.body.set(Some(body));
        }
        let shared = this
            .shared
            .as_ref()
            .expect("a running nursery has shared state");
        let node = &shared.node;
        #[cfg(feature = "tracing")]
        let _span = shared.span.enter();

        // The body, in the nursery's scope.
        if let Some(body) = this.body.as_mut().as_pin_mut() {
            let polled = catch_unwind(AssertUnwindSafe(|| {
                context::enter(FrameKind::Linked(node), || body.poll(cx))
            }));
            if !matches!(polled, Ok(Poll::Pending)) {
                shared.body_running.store(false, Ordering::Relaxed);
            }
            match polled {
                Ok(Poll::Pending) => {}
                Ok(Poll::Ready(Ok(value))) => {
                    *this.value = Some(value);
                    this.body.set(None);
                }
                Ok(Poll::Ready(Err(error))) => {
                    let cancellation = error.as_cancelled().is_some();
                    if !(cancellation && node.is_cancelled()) {
                        shared.fail(Failure::new(Origin::Body, error, cancellation));
                    }
                    this.body.set(None);
                }
                Err(payload) => {
                    shared.panicked(Origin::Body, payload);
                    this.body.set(None);
                }
            }
        }

        // Two timers start when the nursery's scope is cancelled (N7): the grace period and
        // the unobserved-cancellation warning.
        let (grace, warn_after) = (this.config.grace, this.config.warn_unobserved);
        if grace.is_some() || warn_after.is_some() {
            if node.is_cancelled() {
                if let (None, Some(grace)) = (this.grace.as_ref().as_pin_ref(), grace) {
                    this.grace.set(Some(tokio::time::sleep(grace)));
                }
                if let (None, Some(after)) = (this.unobserved.as_ref().as_pin_ref(), warn_after) {
                    this.unobserved.set(Some(tokio::time::sleep(after)));
                }
            } else {
                // Be woken when the scope is cancelled, to start them.
                node.register_waiter(this.waiter, cx.waker());
                if node.is_cancelled() {
                    cx.waker().wake_by_ref();
                }
            }
            if let Some(sleep) = this.grace.as_mut().as_pin_mut() {
                if !matches!(this.state, State::GraceExpired) && sleep.poll(cx).is_ready() {
                    *this.state = State::GraceExpired;
                    shared.grace_expired();
                }
            }
            if let Some(sleep) = this.unobserved.as_mut().as_pin_mut() {
                if !*this.warned && sleep.poll(cx).is_ready() {
                    *this.warned = true;
                    warn_unobserved(shared, warn_after.unwrap_or_default());
                }
            }
        }

        // Asked through `as_mut`: a shared reference to the whole `Option` would retag every
        // byte of a body that borrows from itself across its `.await` (Miri, Stacked Borrows).
        if this.body.as_mut().as_pin_mut().is_some() || !shared.registry.try_close(cx.waker()) {
            return Poll::Pending;
        }

        // Everything has stopped (N1): report.
        node.remove_waiter(this.waiter);
        let (failures, mut panics) = shared.registry.take_reports();
        if !panics.is_empty() {
            let first = panics.remove(0);
            panics.iter().for_each(|p| shared.report_panic(p));
            failures.iter().for_each(|f| shared.report_failure(f));
            node.end(false);
            // Dropped here, where a panicking destructor is caught, not while unwinding.
            report::drop_quietly((panics, failures, first.label));
            resume_unwind(first.payload);
        }
        if !failures.is_empty() {
            node.end(false);
            return Poll::Ready(Err(NurseryError::Failed(failures)));
        }
        if let Some(value) = this.value.take() {
            node.end(false);
            return Poll::Ready(Ok(Some(value)));
        }
        // The body returned a cancellation echo.
        if node.absorbs() {
            node.end(true);
            Poll::Ready(Ok(None))
        } else {
            let cancelled = cancelled_here(node).with_aborted(shared.aborted().to_vec());
            node.end(false);
            Poll::Ready(Err(NurseryError::Cancelled(cancelled)))
        }
    }
}

#[pinned_drop]
impl<B, Fut, T, E> PinnedDrop for NurseryFuture<B, Fut, T, E> {
    fn drop(self: Pin<&mut Self>) {
        let mut this = self.project();
        let Some(shared) = this.shared.as_ref() else {
            return;
        };
        shared.node.remove_waiter(this.waiter);
        let mut body_panic = None;
        if shared.registry.is_open() {
            let wait = this.config.drop_mode == DropMode::Wait;
            // Dropped before it finished: no new children (in wait mode, once the body is
            // gone, below), and every child is told (in abort mode, after the aborts were
            // requested: an aborted child is dropped without first seeing the
            // cancellation, as far as tokio allows).
            if !wait {
                shared.registry.close();
            }
            if this.config.drop_mode == DropMode::Abort {
                let _ = shared.abort_children(false);
            }
            shared.node.cancel(CancelReason::explicit_with(
                "the nursery's future was dropped",
            ));
            // The body goes before the children are handed over: what dropping it reports
            // (a held `start` whose child failed before its signal) is then among the reports
            // the adopter receives. In wait mode the nurseries inside it are adopted here,
            // so this nursery's grace reaches them (SPEC N7, N9); otherwise they find their
            // adopters through this scope's ancestors (this one is closed).
            body_panic = drop_body(shared, this.body.as_mut()).err();
            if wait {
                shared.registry.close();
            }
            // The grace period runs from the nursery's cancellation: one already running
            // goes on to its end, it does not start again at the drop.
            let grace_until = match this.grace.as_ref().as_pin_ref() {
                Some(running) => Some(running.deadline()),
                None => this.config.grace.map(|grace| {
                    let now = tokio::time::Instant::now();
                    tokio::time::Instant::from_std(crate::node::later(now.into_std(), grace))
                }),
            };
            match this.config.drop_mode {
                DropMode::Abort => {
                    // What is still alive (async children until tokio drops them, blocking
                    // ones until they stop) is accounted for by an adopter, as in N9.
                    (this.orphan)(shared, DropMode::Abort, None);
                }
                DropMode::Wait => (this.orphan)(shared, DropMode::Wait, grace_until),
                DropMode::BlockingWait => {
                    // Adopted before the wait: past an enclosing nursery's grace, or once
                    // one runs out during the wait, the abort cascades into these children
                    // (the adopter aborts what it adopted, SPEC N7), and the wait ends with
                    // them instead of running its own grace out.
                    (this.orphan)(shared, DropMode::BlockingWait, None);
                    let grace = grace_until.map_or(Duration::ZERO, |until| {
                        until.saturating_duration_since(tokio::time::Instant::now())
                    });
                    match blocking_wait(shared, grace) {
                        Waited::Stopped => {}
                        // Past the grace period: abort; the adopter accounts for the rest.
                        Waited::TimedOut => {
                            shared.grace_expired();
                        }
                        // Blocking is impossible here: the wait mode's grace, in a task (N9b).
                        Waited::CannotBlock => {
                            if let Some(until) = grace_until {
                                (this.grace_task)(shared, until);
                            }
                        }
                    }
                }
            }
        }
        // A body still here (the nursery was closed already) goes before the scope ends.
        let late_panic = drop_body(shared, this.body.as_mut()).err();
        // From now on a report with no adopter goes to the report hook (registry N-6).
        shared.registry.retire();
        shared.node.end(false);
        // A panic of the body's drop code goes on once the children are accounted for (not
        // while already unwinding: that would abort the process).
        if let Some(payload) = body_panic.or(late_panic) {
            if !std::thread::panicking() {
                resume_unwind(payload);
            }
        }
    }
}

/// Drops a nursery's body in the nursery's scope, catching a panic of its drop code.
fn drop_body<E, Fut>(
    shared: &Shared<E>,
    mut body: Pin<&mut Option<Fut>>,
) -> Result<(), Box<dyn std::any::Any + Send>> {
    if body.as_mut().as_pin_mut().is_none() {
        return Ok(());
    }
    let node = &shared.node;
    let dropped = catch_unwind(AssertUnwindSafe(|| {
        context::enter(FrameKind::Linked(node), || body.set(None))
    }));
    shared.body_running.store(false, Ordering::Relaxed);
    dropped
}

/// How a blocking-wait drop went.
enum Waited {
    Stopped,
    TimedOut,
    CannotBlock,
}

/// SPEC N9b: blocks this thread until the children stopped or `grace` (wall clock) passed.
/// Only where blocking can help and is possible: the nursery's runtime is a multi-thread one
/// (its workers run the children meanwhile), and this thread is a worker of a multi-thread
/// runtime (through `block_in_place`) or outside any runtime; never during runtime shutdown
/// (a probe task tokio finishes at once tells), never inside one of its own children.
/// Elsewhere it returns `CannotBlock` at once
/// and the caller falls back to adoption.
fn blocking_wait<E>(shared: &Shared<E>, grace: Duration) -> Waited {
    use std::task::Wake;

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    let wait = || {
        let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
        let deadline = std::time::Instant::now() + grace;
        loop {
            if shared.registry.try_close(&waker) {
                return Waited::Stopped;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Waited::TimedOut;
            }
            std::thread::park_timeout(deadline - now);
        }
    };
    // Only a multi-thread runtime's workers run the children while this thread blocks: a
    // current-thread (or local) runtime runs them only inside its `block_on`, which may be
    // this very thread's, even when the drop happens outside it.
    let multi_thread = |runtime: &Handle| {
        matches!(
            runtime.runtime_flavor(),
            tokio::runtime::RuntimeFlavor::MultiThread
        )
    };
    // Local children (SPEC N12) run only on their `LocalSet`'s thread, which this may be,
    // outside the set: blocking it would only make them wait out the grace.
    let has_local = shared.has_local.load(std::sync::atomic::Ordering::Relaxed);
    if !multi_thread(&shared.runtime) || has_local {
        return Waited::CannotBlock;
    }
    // During shutdown tokio cancels new tasks at once; blocking then could deadlock. The
    // probe never finishes by itself (an idle worker could otherwise run it to completion
    // before the check), so only a shutting-down runtime finishes it.
    let shutting_down = |runtime: &Handle| {
        let probe = runtime.spawn(std::future::pending::<()>());
        let finished = probe.is_finished();
        probe.abort();
        finished
    };
    match Handle::try_current() {
        // Not on a runtime thread: blocking it holds up no runtime, unless the children's
        // runtime is shutting down (waiting then only holds up this thread for the grace).
        Err(_) if shutting_down(&shared.runtime) => Waited::CannotBlock,
        Err(_) => wait(),
        Ok(current) => {
            // Both runtimes are asked: the children's, and the one this drop runs on (a
            // nursery first polled under another runtime's `enter` guard).
            // Dropped by one of its own children, it would wait for that child, which
            // waits for the drop: only the grace would end it.
            if !multi_thread(&current)
                || shutting_down(&shared.runtime)
                || (current.id() != shared.runtime.id() && shutting_down(&current))
                || shared.is_own_child()
            {
                return Waited::CannotBlock;
            }
            // Inside a LocalSet blocking is impossible: `block_in_place` panics; fall back.
            #[cfg(feature = "rt-multi-thread")]
            {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    tokio::task::block_in_place(wait)
                }))
                .unwrap_or(Waited::CannotBlock)
            }
            #[cfg(not(feature = "rt-multi-thread"))]
            {
                let _ = wait;
                Waited::CannotBlock
            }
        }
    }
}

/// The names (or scope ids) of the running children with a slot in the registry that
/// `filter` accepts, given each child's own scope (if it has one) and whether it observed a
/// cancellation before it had one; then, read under the same lock, how many run without a
/// slot (not polled yet, or busy in their first poll: registry invariant N-3), which cannot
/// be named: "3 children starting".
fn child_names<E>(shared: &Shared<E>, filter: impl Fn(Option<&Node>, bool) -> bool) -> Vec<String> {
    let (mut names, unlisted) = shared.registry.collect_counting(|stopper| {
        let (scope, name) = match stopper {
            Stopper::Task(cell)
                if filter(cell.scope.own().map(|node| &**node), cell.scope.observed()) =>
            {
                (cell.scope.id(), cell.name())
            }
            Stopper::Blocking(child) if filter(Some(&child.node), false) => {
                (child.node.id(), child.name.as_ref())
            }
            _ => return None,
        };
        Some(match name {
            Some(name) => format!("{name:?} ({scope})"),
            None => scope.to_string(),
        })
    });
    match unlisted {
        0 => {}
        1 => names.push("1 child starting".to_string()),
        n => names.push(format!("{n} children starting")),
    }
    names
}

/// The unobserved-cancellation warning (SPEC N7): names the children still running that
/// have not reached a cancellation point since the cancellation, and counts those that
/// have not waited once since they were spawned (they have not returned from their first
/// poll, so they have not stopped for it either).
fn warn_unobserved<E>(shared: &Shared<E>, after: Duration) {
    let node = &shared.node;
    // A child without a scope of its own is cancelled with the nursery, and marks its own
    // state when it observes a cancellation.
    let cancelled = node.is_cancelled();
    let names = child_names(shared, |child, observed_before| match child {
        Some(child) => child.is_cancelled() && !child.observed() && !observed_before,
        None => cancelled && !observed_before,
    });

    if names.is_empty() {
        return;
    }
    let names = names.join(", ");
    #[cfg(feature = "tracing")]
    tracing::warn!(
        scope = %node.id(),
        children = %names,
        "cancellation not observed after {after:?}: these children have not reached a \
         cancellation point"
    );
    #[cfg(not(feature = "tracing"))]
    eprintln!(
        "tokio-nursery: {}: cancellation not observed after {after:?} by {names}",
        node.id()
    );
}

/// Wait-mode drop (SPEC N9): hands the live children and every report kept so far to the
/// nearest live enclosing nursery (or the orphan registry). A grace period keeps running in
/// a task of its own, which exits when the children do.
fn orphan<E: fmt::Debug + Send + 'static>(
    shared: &Arc<Shared<E>>,
    mode: DropMode,
    grace_until: Option<tokio::time::Instant>,
) {
    // Nothing alive and nothing to report: nothing to hand over. Reports kept with no child
    // alive still go to an adopter (never lost, SPEC N4, N6).
    if shared.registry.live() == 0 && !shared.registry.has_incidents() {
        return;
    }
    let stop: Arc<dyn StopAll> = shared.clone();
    let (adopter, key, adopter_aborted) = adopter_of(&shared.node, &shared.runtime, stop);
    if adopter_aborted {
        // The adopter is past its grace: abort cascades to what it adopts (SPEC N7), as if
        // this nursery's own grace had run out (its names, its kept tree, and past its grace
        // for children that start later), as the cascade does for an adoptee already there.
        // With its own warning: the adopter's named only what it had when its grace ran out.
        let _ = shared.expire_grace(true);
    }
    #[cfg(feature = "tracing")]
    {
        let to = adopter.describe();
        let live = shared.registry.live();
        match (mode, to.kind) {
            (DropMode::Wait, "orphans") => tracing::warn!(
                scope = %shared.node.id(),
                children = live,
                "a nursery dropped in wait mode has no live enclosing nursery: its children \
                 are now orphans of the runtime (await tokio_nursery::orphans_finished())"
            ),
            (DropMode::Wait, _) => tracing::debug!(
                scope = %shared.node.id(),
                children = live,
                adopter = to.name.as_deref().unwrap_or(""),
                "nursery dropped in wait mode: children adopted"
            ),
            (DropMode::BlockingWait, _) => tracing::debug!(
                scope = %shared.node.id(),
                children = live,
                "nursery dropped in blocking-wait mode: children adopted while it waits for them"
            ),
            _ => tracing::debug!(
                scope = %shared.node.id(),
                children = live,
                "nursery dropped in abort mode: aborted children accounted for until dropped"
            ),
        }
    }
    let _ = mode;
    let (incidents, done) = shared.registry.orphan(adopter.clone(), key);
    for incident in incidents {
        adopter.orphan_report(match incident {
            registry::Incident::Failure(failure) => orphan_failure(failure),
            registry::Incident::Panic(panic) => OrphanReport::Panic(panic),
        });
    }
    if done {
        adopter.adoptee_finished(key);
        return;
    }
    if let Some(grace_until) = grace_until {
        grace_task(shared, grace_until);
    }
}

/// The grace period of a nursery whose future is gone (N9), in a task of its own: aborts
/// the children still running when it ends, and names them as the nursery future would
/// have (SPEC N7: `NurseryHandle::aborted_children` and a warn-level event).
fn grace_task<E: fmt::Debug + Send + 'static>(
    shared: &Arc<Shared<E>>,
    grace_until: tokio::time::Instant,
) {
    let shared = shared.clone();
    drop(shared.runtime.clone().spawn(async move {
        let finished = std::future::poll_fn(|cx| {
            if shared.registry.try_close(cx.waker()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let expired = tokio::time::sleep_until(grace_until);
        if let futures::future::Either::Right(_) =
            futures::future::select(std::pin::pin!(finished), std::pin::pin!(expired)).await
        {
            shared.grace_expired();
        }
    }));
}

impl<B, Fut, T, E> fmt::Debug for NurseryFuture<B, Fut, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NurseryFuture")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
