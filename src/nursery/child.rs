//! A nursery's children: the task wrapper that runs a child in its scope and reports its
//! end ([`ChildTask`]), and the handle its spawner gets ([`ChildHandle`], [`JoinError`]),
//! which reads the child's outcome from the child's cell ([`OutputSlot`]), not from tokio's
//! `JoinHandle`.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project::{pin_project, pinned_drop};

pub(crate) use super::child_scope::{ChildScope, TaskScope};
use super::report::{Failure, Origin};
use super::{Shared, Stopper};
use crate::cancelled::{CancelError, Cancelled};
use crate::context::{self, FrameKind};
use crate::node::{Node, ScopeId};
use crate::output_slot::{OutputSlot, SlotHolder, SlotState, Wakers};
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

/// What a child shares with its task, its handle and its nursery's registry: one
/// allocation per child, next to tokio's task cell (which then holds the user's future and
/// one pointer: tokio's smallest cell for small futures).
///
/// `out` is where the child's end goes for whoever awaits it: an [`OutputSlot`] for a child
/// with a [`ChildHandle`], nothing for one whose end goes elsewhere (a collector, a starter).
/// The registry and the task tree see every child's cell alike, with `out` erased.
pub(crate) struct ChildCell<E, O: ?Sized = dyn Send + Sync> {
    pub(crate) nursery: Arc<Shared<E>>,
    pub(crate) scope: TaskScope,
    pub(crate) out: O,
}

impl<E, O: Default> ChildCell<E, O> {
    /// A child whose scope is made under its nursery's when needed.
    pub(crate) fn new(nursery: Arc<Shared<E>>, name: Option<Arc<str>>) -> Self {
        ChildCell {
            nursery,
            scope: TaskScope::new(name),
            out: O::default(),
        }
    }
}

/// Who stops a child: whoever called (and gets a waker's panic), or the crate's own abort of
/// many, or an abort on nobody's behalf (which goes on past it: `catch_waker_panic`).
#[derive(Clone, Copy)]
pub(crate) enum Teller {
    Caller,
    Cascade,
}

impl Teller {
    /// Runs `tell`, which may wake wakers: a waker's panic goes to a caller, and is caught
    /// (a line on stderr) in a cascade.
    pub(crate) fn tell(self, what: &'static str, tell: impl FnOnce()) {
        match self {
            Teller::Caller => tell(),
            Teller::Cascade => {
                super::catch_waker_panic(|| format!("when {what} was told to stop"), tell);
            }
        }
    }
}

impl<E, O: ?Sized> ChildCell<E, O> {
    /// Aborts the child's task (one whose handle is not stored yet is aborted by its
    /// spawner, registry invariant N-3), unless a parallel borrowing scope runs in it: that
    /// one is told "grace expired" and aborted when the scope ends (SPEC B2).
    pub(crate) fn abort(&self) {
        self.abort_as(Teller::Caller);
    }

    /// As [`abort`](Self::abort), for one child of many stopped on nobody's behalf (a
    /// nursery's abort or grace expiry, a cascade): a waker panicking when a put-off abort
    /// is told is caught (`catch_waker_panic`), so the children after this one are stopped
    /// too. A caller's own abort gets that panic.
    pub(crate) fn abort_in_cascade(&self) {
        self.abort_as(Teller::Cascade);
    }

    fn abort_as(&self, teller: Teller) {
        if self.put_off_abort_as(teller) {
            return;
        }
        if let Some(abort) = self.scope.request_abort() {
            abort.abort();
        }
    }

    /// If a parallel borrowing scope runs in this child (SPEC B2), tells it "grace expired"
    /// instead of aborting it, and returns true: the abort happens when the scope ends (by
    /// the scope's exemption, or by the child's task at its next poll, see `ChildTask::poll`).
    pub(crate) fn put_off_abort_as(&self, teller: Teller) -> bool {
        let Some(node) = self.scope.own() else {
            return false;
        };
        // Marked before the exemption is asked, so that whoever ends the exemption right
        // after sees the mark (a mark left when the abort goes ahead is harmless).
        self.scope.put_off_abort();
        if !node.defer_if_exempt() {
            return false;
        }
        teller.tell("a child running a parallel scope", || {
            node.cancel(CancelReason::GraceExpired)
        });
        true
    }

    pub(crate) fn name(&self) -> Option<&Arc<str>> {
        self.scope.name()
    }

    /// The child's own scope, made now if it had none (under its nursery's); `None` once
    /// the child ended without one.
    pub(crate) fn node(&self) -> Option<&Arc<Node>> {
        self.scope.node_unless_ended(&self.nursery.node)
    }

    /// The scope the child runs in now: its own, else its nursery's.
    fn settled(&self) -> &Arc<Node> {
        self.scope.settled(&self.nursery.node)
    }
}

/// A child as its handle, its nursery's registry and the task tree see it (SPEC N2, O2).
pub(crate) trait ChildInfo: Send + Sync {
    fn name(&self) -> Option<&Arc<str>>;
    /// Cancels this child alone (a no-op once it ended).
    fn cancel(&self, reason: CancelReason);
    /// Tells the child to stop where an abort cannot stop it, and true if the abort is put
    /// off (see [`ChildCell::abort_put_off`]). `teller`: who gets a waker's panic.
    fn abort_put_off(&self, teller: Teller) -> bool {
        let _ = teller;
        false
    }
    /// Whether the child has ended (its nursery counts it finished, or is about to): its
    /// outcome is on its way to its handle, if not there yet.
    fn has_ended(&self) -> bool;
}

impl<E: Send + 'static, O: ?Sized + Send + Sync> ChildInfo for ChildCell<E, O> {
    fn name(&self) -> Option<&Arc<str>> {
        self.scope.name()
    }

    fn cancel(&self, reason: CancelReason) {
        if let Some(node) = self.node() {
            node.cancel(reason);
        }
    }

    fn abort_put_off(&self, teller: Teller) -> bool {
        self.put_off_abort_as(teller)
    }

    fn has_ended(&self) -> bool {
        self.scope.has_ended()
    }
}

/// The future tokio runs for a child: the user's future, polled in the child's scope.
///
/// Its outcome goes where its [`Route`] says: to the child's [`ChildHandle`] through the
/// [`OutputSlot`] in its cell, or into a collector's queue; a started child (SPEC N3)
/// reports to its starter until it signals readiness. The task's own output is the
/// route's: `()` but for a `!Send` outcome, so the `JoinHandle` is mostly dropped at the
/// spawn.
#[pin_project(PinnedDrop)]
pub(crate) struct ChildTask<F, E, R: OnAbort<E>> {
    #[pin]
    future: Option<F>,
    cell: Arc<ChildCell<E, R::Out>>,
    route: R,
}

/// What a route keeps in the child's cell, and does when the child's task is dropped.
pub(crate) trait OnAbort<E>: Send + 'static {
    /// What the route keeps in the child's cell ([`ChildCell::out`]).
    type Out: Default + Send + Sync + 'static;

    /// Whether the child's end goes to the route before the nursery counts the child
    /// finished (a collector's queue, a starter: what the nursery's end promises is there
    /// by then) or after (a handle: a joined child is no longer counted live).
    const BEFORE_FINISH: bool;

    /// The task was dropped: news only if it had not finished (aborted).
    fn aborted(&mut self, cell: &ChildCell<E, Self::Out>) {
        let _ = cell;
    }
}

/// Where a child's end goes besides the nursery.
pub(crate) trait Route<T, E>: OnAbort<E> {
    /// The output of the child's task.
    type Output;

    /// A started child ending before its signal: the end goes to the starter alone and
    /// this returns the task's output (SPEC N3); otherwise it returns the end, for the
    /// nursery.
    fn early_end(&mut self, node: &Node, ended: Ended<T, E>) -> Result<Ended<T, E>, Self::Output> {
        let _ = node;
        Ok(ended)
    }

    /// Sends the child's outcome on; returns the task's output.
    fn deliver(&mut self, cell: &ChildCell<E, Self::Out>, output: ChildOutput<T>) -> Self::Output;
}

/// To the child's handle, through the [`OutputSlot`] in its cell.
pub(crate) struct ToHandle<T>(std::marker::PhantomData<fn() -> T>);

impl<T> ToHandle<T> {
    pub(crate) fn new() -> Self {
        ToHandle(std::marker::PhantomData)
    }
}

impl<T: Send + 'static, E: 'static> OnAbort<E> for ToHandle<T> {
    type Out = OutputSlot<T>;
    const BEFORE_FINISH: bool = false;

    fn aborted(&mut self, cell: &ChildCell<E, OutputSlot<T>>) {
        if !cell.slot_is_filled() {
            cell.put(ChildOutput::Aborted);
        }
    }
}

impl<T: Send + 'static, E: 'static> Route<T, E> for ToHandle<T> {
    type Output = ();

    fn deliver(&mut self, cell: &ChildCell<E, OutputSlot<T>>, output: ChildOutput<T>) {
        cell.put(output);
    }
}

/// How a child's outcome sits in its [`OutputSlot`]: a value as such, the others as
/// markers.
impl<T> ChildOutput<T> {
    const FAILED: u8 = 1;
    const PANICKED: u8 = 2;
    const CANCELLED: u8 = 3;
    const ABORTED: u8 = 4;

    fn into_slot(self) -> Result<T, u8> {
        match self {
            ChildOutput::Value(value) => Ok(value),
            ChildOutput::Failed => Err(Self::FAILED),
            ChildOutput::Panicked => Err(Self::PANICKED),
            ChildOutput::Cancelled => Err(Self::CANCELLED),
            ChildOutput::Aborted => Err(Self::ABORTED),
        }
    }

    fn from_slot(slot: Result<T, u8>) -> Self {
        match slot {
            Ok(value) => ChildOutput::Value(value),
            Err(Self::FAILED) => ChildOutput::Failed,
            Err(Self::PANICKED) => ChildOutput::Panicked,
            Err(Self::CANCELLED) => ChildOutput::Cancelled,
            Err(_) => ChildOutput::Aborted,
        }
    }
}

// SAFETY: a cell pairs its own `TaskScope`'s `outcome` with its own `out`, both fields it
// never replaces, and its nursery's table, which it keeps as long as it lives; a cell lives
// in an `Arc` (never moved), so its state's address is its own, unlike any other live
// cell's. Only the child's task fills it (once, as the child ends: `ToHandle`), only the
// child's one `ChildHandle` takes or lets go.
unsafe impl<E, T> SlotHolder<T> for ChildCell<E, OutputSlot<T>> {
    fn output_state(&self) -> &SlotState {
        &self.scope.outcome
    }

    fn output_slot(&self) -> &OutputSlot<T> {
        &self.out
    }

    fn output_wakers(&self) -> &Wakers {
        &self.nursery.wakers
    }
}

impl<E, T> ChildCell<E, OutputSlot<T>> {
    /// Hands the child's outcome to its handle.
    fn put(&self, output: ChildOutput<T>) {
        self.slot_fill(output.into_slot());
    }
}

/// To the child's handle as its task's output, through tokio's `JoinHandle`: for a `!Send`
/// outcome (SPEC N12), which the cell, shared with the registry, cannot hold.
pub(crate) struct ToJoinHandle<T>(std::marker::PhantomData<fn() -> T>);

impl<T> ToJoinHandle<T> {
    pub(crate) fn new() -> Self {
        ToJoinHandle(std::marker::PhantomData)
    }
}

impl<T: 'static, E> OnAbort<E> for ToJoinHandle<T> {
    type Out = ();
    // tokio publishes the task's output after the poll, which finished the child.
    const BEFORE_FINISH: bool = true;
}

impl<T: 'static, E> Route<T, E> for ToJoinHandle<T> {
    type Output = ChildOutput<T>;

    fn deliver(&mut self, _: &ChildCell<E, ()>, output: ChildOutput<T>) -> ChildOutput<T> {
        output
    }
}

/// To the code awaiting `start`, while the child has not signalled readiness (SPEC N3).
pub(crate) struct ToStarter<E>(pub(crate) Option<Arc<dyn Starting<E>>>);

impl<T, E: CancelError + Send + 'static> Route<T, E> for ToStarter<E> {
    type Output = ();

    /// After its signal, a started child's value is nobody's: its caller has its readiness
    /// value, the nursery its failures.
    fn deliver(&mut self, _: &ChildCell<E, ()>, _: ChildOutput<T>) {}

    fn early_end(&mut self, node: &Node, ended: Ended<T, E>) -> Result<Ended<T, E>, ()> {
        match self.0.take() {
            Some(starting) => starting_end(starting.as_ref(), node, ended).ok_or(()),
            None => Ok(ended),
        }
    }
}

impl<E: Send + 'static> OnAbort<E> for ToStarter<E> {
    type Out = ();
    const BEFORE_FINISH: bool = true;

    fn aborted(&mut self, _: &ChildCell<E, ()>) {
        // Aborted before signalling: the starter must not wait for ever.
        if let Some(starting) = self.0.take() {
            drop(starting.ended_early(EarlyEnd::Aborted));
        }
    }
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

impl<F, E, R: OnAbort<E>> ChildTask<F, E, R> {
    pub(crate) fn new(future: F, cell: Arc<ChildCell<E, R::Out>>, route: R) -> Self {
        ChildTask {
            future: Some(future),
            cell,
            route,
        }
    }
}

impl<F, T, E, R> Future for ChildTask<F, E, R>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError + fmt::Debug,
    R: Route<T, E>,
{
    type Output = R::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<R::Output> {
        let mut this = self.project();
        let future = this
            .future
            .as_mut()
            .as_pin_mut()
            .expect("polled after completion");
        let cell = &**this.cell;
        // Only a child that parked holds a slot: without one, this is its first poll.
        let first = cell.scope.slot().is_none();
        if first && cell.nursery.registry.is_aborted() {
            // Its nursery aborted its children after it was spawned (N8, N7).
            cell.abort_in_cascade();
        }
        if cell.scope.abort_requested() {
            // Aborted, perhaps before its spawner stored the abort handle (registry
            // invariant N-3): whoever holds the handle aborts the task; it never runs again.
            return Poll::Pending;
        }
        let frame = FrameKind::TaskChild {
            parent: &cell.nursery.node,
            scope: &cell.scope,
        };
        let polled = catch_unwind(AssertUnwindSafe(|| {
            context::enter(frame, || future.poll(cx))
        }));
        let ready = match polled {
            Ok(Poll::Pending) => {
                if first {
                    park(this.cell);
                }
                if cell.scope.abort_was_put_off() {
                    // An abort put off while a parallel scope ran in it (B2), carried out
                    // once none runs (`abort` puts it off again otherwise): the scope's
                    // exemption leaves it to this task when it ends in this poll (another
                    // scope may have begun since), or when it could not abort the task
                    // itself and woke it.
                    cell.abort_in_cascade();
                }
                return Poll::Pending;
            }
            Ok(Poll::Ready(result)) => Ok(result),
            Err(payload) => Err(payload),
        };
        // Drop the future now, in the child's task, before anyone learns it finished. A
        // panic in its drop is the child's panic too (SPEC N6); it replaces a value, but
        // not a failure, which is reported as well (N4: none lost; it was dropped unseen).
        let mut ready = ready;
        let mut drop_panic = None;
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| this.future.set(None))) {
            match ready {
                Ok(Ok(_)) => ready = Err(payload),
                // Recorded after the end is settled: recording a panic cancels the nursery
                // (fail-fast), which would make a stray `Cancelled` read as an echo, and its
                // wakers may panic.
                Ok(Err(_)) | Err(_) => drop_panic = Some(payload),
            }
        }
        let settle_end = || {
            this.route.early_end(cell.settled(), ready).map(|ready| {
                let cancelled = cell.settled().is_cancelled();
                settle(ready, cancelled, &cell.nursery, || origin(cell))
            })
        };
        let output = match drop_panic {
            None => settle_end(),
            // Recorded even if the settling unwinds (a starter's waker woken by a started
            // child's early end may panic).
            Some(payload) => {
                let settled = catch_unwind(AssertUnwindSafe(settle_end));
                told(|| cell.nursery.panicked(origin(cell), payload));
                settled.unwrap_or_else(|payload| resume_unwind(payload))
            }
        };
        // The route says whether its end goes before the nursery counts the child finished
        // (a collector's queue holds it once the nursery returned) or after (a joined child
        // is no longer among the nursery's live children).
        if R::BEFORE_FINISH {
            let output = output.map(|output| this.route.deliver(cell, output));
            // The task's output may be the handle's (`ToJoinHandle`): a waker's panic at the
            // last child's end must not replace it.
            super::catch_waker_panic(
                || "when a child's end was told to its nursery".to_string(),
                || finish(cell),
            );
            Poll::Ready(output.unwrap_or_else(|output| output))
        } else {
            // The last child's end wakes the nursery's future, whose waker may panic: the
            // handle still gets the outcome (the task's drop would find the scope ended and
            // fill nothing), and then the panic goes on.
            let finished = catch_unwind(AssertUnwindSafe(|| finish(cell)));
            let output = match output {
                Ok(output) => this.route.deliver(cell, output),
                Err(output) => output,
            };
            if let Err(payload) = finished {
                resume_unwind(payload);
            }
            Poll::Ready(output)
        }
    }
}

/// A child parked for the first time: it takes a slot in its nursery's registry, where the
/// nursery's abort and the task tree reach it, and aborts itself if the nursery aborted its
/// children meanwhile (registry invariant N-3).
#[cold]
fn park<E, O: Send + Sync + 'static>(cell: &Arc<ChildCell<E, O>>) {
    let order = cell.scope.id().as_u64();
    let (key, aborted) = cell
        .nursery
        .registry
        .park(order, Stopper::Task(cell.clone()));
    cell.scope.set_slot(key);
    if aborted {
        cell.abort_in_cascade();
    }
}

/// How a child's code ended: returned (`Ok`), or panicked with this payload.
pub(crate) type Ended<T, E> = Result<Result<T, E>, Box<dyn std::any::Any + Send>>;

/// Settles a child's end with its nursery (SPEC N4, N6, S15): an echo of a cancellation is
/// not a failure; any other error is one (stray if it holds a `Cancelled` while the child's
/// scope is not `cancelled`); a panic is one too.
pub(crate) fn settle<T, E: CancelError + fmt::Debug>(
    ended: Ended<T, E>,
    cancelled: bool,
    nursery: &Shared<E>,
    origin: impl FnOnce() -> Origin,
) -> ChildOutput<T> {
    match ended {
        Ok(Ok(value)) => ChildOutput::Value(value),
        Ok(Err(error)) => {
            let cancellation = error.as_cancelled().is_some();
            if cancellation && cancelled {
                ChildOutput::Cancelled
            } else {
                let origin = origin();
                told(|| nursery.fail(Failure::new(origin, error, cancellation)));
                ChildOutput::Failed
            }
        }
        Err(payload) => {
            let origin = origin();
            told(|| nursery.panicked(origin, payload));
            ChildOutput::Panicked
        }
    }
}

/// Tells the nursery of a failure or panic. The fail-fast cancellation that may follow wakes
/// the nursery's waiters, and `Node::cancel` resumes the first panic of their wakers once all
/// are woken: the failure is recorded by then, and that panic (the panic hook has printed
/// it) must not take the child's end from its handle, so it stops here.
fn told(tell: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(tell)) {
        super::drop_quietly(payload);
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

/// Who a child is, for reports.
fn origin<E, O: ?Sized>(cell: &ChildCell<E, O>) -> Origin {
    origin_of(cell.name().cloned(), cell.scope.id())
}

/// Who a child is, for reports: its task with `name`, or its `scope` where tokio gives no
/// task id (a drop outside the task's context).
pub(crate) fn origin_of(name: Option<Arc<str>>, scope: ScopeId) -> Origin {
    match tokio::task::try_id() {
        Some(id) => Origin::Child { id, name },
        None => Origin::Local { scope },
    }
}

#[pinned_drop]
impl<F, E, R: OnAbort<E>> PinnedDrop for ChildTask<F, E, R> {
    fn drop(self: Pin<&mut Self>) {
        let mut this = self.project();
        let cell = &**this.cell;
        if this.future.is_none() && cell.scope.has_ended() {
            return; // finished in its last poll, which told everyone
        }
        // SPEC N1: the child's future is gone before the nursery counts it finished. A panic
        // in its drop (an aborted child) is reported, and the nursery still hears of the end.
        if this.future.is_some() {
            let dropped = catch_unwind(AssertUnwindSafe(|| this.future.set(None)));
            if let Err(payload) = dropped {
                // A waker's panic at the fail-fast cancellation must not skip the steps below
                // (the nursery would never hear of the child's end).
                told(|| cell.nursery.panicked(origin(cell), payload));
            }
        }
        // In the route's order, as in `poll` (whose `finish` a panic may have cut short).
        // Each step runs even if a waker woken by the other panics; such a panic goes on
        // only when this drop is not already part of an unwinding (tokio drops an aborted
        // or panicked task's future inside its own guard: a second panic would abort).
        let (first, second) = if R::BEFORE_FINISH {
            (
                catch_unwind(AssertUnwindSafe(|| this.route.aborted(cell))),
                catch_unwind(AssertUnwindSafe(|| finish(cell))),
            )
        } else {
            (
                catch_unwind(AssertUnwindSafe(|| finish(cell))),
                catch_unwind(AssertUnwindSafe(|| this.route.aborted(cell))),
            )
        };
        if let Err(payload) = first.and(second) {
            if std::thread::panicking() {
                super::drop_quietly(payload);
            } else {
                resume_unwind(payload);
            }
        }
    }
}

/// The child's future is gone: its scope ends, and its nursery counts it finished. Once.
fn finish<E, O: ?Sized>(cell: &ChildCell<E, O>) {
    if cell.scope.end() {
        cell.nursery.registry.finished(cell.scope.slot());
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
/// cancelled, it returns [`JoinError::Cancelled`] with that cancellation, and a child that
/// has not ended keeps running in its nursery. A child's value comes first: a child that
/// returned a value gives it even to a cancelled waiter. A child that ended without one
/// (failed, panicked, cancelled, aborted) gives its marker only to a waiter whose scope is
/// not cancelled; a cancelled waiter gets its own cancellation instead, so that
/// `handle.await?` in a body passes the cancellation on (the nursery absorbs its own)
/// rather than failing with a marker when the child stopped at the same cancellation (the
/// nursery reports a failure or panic itself either way). Dropping the handle detaches
/// nothing: the child still belongs to its nursery.
///
/// # Panics
///
/// Awaited by its own child (handed its handle through a channel, say), it panics instead
/// of waiting for ever: that child can never end while it waits for itself. Polled again
/// after it gave the child's outcome (as a tokio `JoinHandle` does); a
/// [`JoinError::Cancelled`] is not the outcome, so awaiting again after one is fine.
pub struct ChildHandle<T> {
    child: Joined<T>,
    waiter: Waiter,
}

/// Where a handle finds its child's outcome.
enum Joined<T> {
    /// In the child's cell (a nursery's async child).
    Cell(Arc<dyn Joinable<T> + Send + Sync>),
    /// As its task's output: a `!Send` child's (SPEC N12) or a blocking child's (N16).
    Task(tokio::task::JoinHandle<ChildOutput<T>>, Arc<dyn ChildInfo>),
    /// Taken: the child ended without a value, and a waiter whose scope was cancelled got
    /// that cancellation instead of the marker, kept here for a later await.
    Kept(Box<Kept>),
}

/// A marker a cancelled waiter was not given, with what the handle still answers for.
struct Kept {
    /// Until a waiter whose scope is not cancelled took it.
    marker: Option<JoinError>,
    id: tokio::task::Id,
    info: Arc<dyn ChildInfo>,
}

/// A child as its [`ChildHandle`] sees it: its outcome besides what [`ChildInfo`] gives.
pub(crate) trait Joinable<T>: ChildInfo {
    /// The child's outcome, or `Pending` with `cx`'s waker left for it.
    fn poll_output(&self, cx: &mut Context<'_>) -> Poll<ChildOutput<T>>;
    /// Aborts the child (see [`ChildHandle::abort`]).
    fn abort(&self);
    /// Whether the child's outcome is known.
    fn is_finished(&self) -> bool;
    /// The child's tokio task.
    fn id(&self) -> tokio::task::Id;
    /// The handle is dropped: it will not take the outcome.
    fn release(&self);
}

impl<E: Send + 'static, T: Send + 'static> Joinable<T> for ChildCell<E, OutputSlot<T>> {
    fn poll_output(&self, cx: &mut Context<'_>) -> Poll<ChildOutput<T>> {
        self.slot_poll_take(cx).map(ChildOutput::from_slot)
    }

    fn abort(&self) {
        ChildCell::abort(self);
    }

    fn is_finished(&self) -> bool {
        self.slot_is_filled()
    }

    fn release(&self) {
        self.slot_release();
    }

    fn id(&self) -> tokio::task::Id {
        self.scope
            .abort_handle()
            .expect("a child's abort handle is stored before its handle is made")
            .id()
    }
}

impl<T> ChildHandle<T> {
    /// The handle of a child whose outcome comes through its cell.
    pub(crate) fn new(child: Arc<dyn Joinable<T> + Send + Sync>) -> Self {
        ChildHandle {
            child: Joined::Cell(child),
            waiter: Waiter::default(),
        }
    }

    /// The handle of a child whose outcome is its task's output.
    pub(crate) fn of_task(
        join: tokio::task::JoinHandle<ChildOutput<T>>,
        child: Arc<dyn ChildInfo>,
    ) -> Self {
        ChildHandle {
            child: Joined::Task(join, child),
            waiter: Waiter::default(),
        }
    }

    fn info(&self) -> &dyn ChildInfo {
        match &self.child {
            Joined::Cell(cell) => &**cell,
            Joined::Task(_, child) => &**child,
            Joined::Kept(kept) => &*kept.info,
        }
    }

    /// The child's tokio task id.
    pub fn id(&self) -> tokio::task::Id {
        match &self.child {
            Joined::Cell(cell) => cell.id(),
            Joined::Task(join, _) => join.id(),
            Joined::Kept(kept) => kept.id,
        }
    }

    /// The name given at spawn, if any.
    pub fn name(&self) -> Option<&str> {
        self.info().name().map(|name| &**name)
    }

    /// Cancels this child alone, cooperatively: its cancellation points report it. Not a
    /// failure; the handle then yields [`JoinError::ChildCancelled`] (to a waiter whose
    /// scope is not cancelled) unless the child finishes with a value anyway.
    pub fn cancel(&self) {
        self.info().cancel(CancelReason::Explicit(None));
    }

    /// As [`cancel`](Self::cancel), with user data the child reads from the [`Cancelled`]
    /// its cancellation points report (`reason().payload()`, or `reason().message()` for a
    /// string), as [`ScopeHandle::cancel_with`](crate::ScopeHandle::cancel_with) gives. The
    /// first reason wins (a later one changes nothing). A child still waiting for its slot
    /// ([`Nursery::limit`](crate::Nursery::limit)) ends without running, so it never reads
    /// it.
    ///
    /// ```
    /// use tokio_nursery::{cancelled, nursery, Cancelled};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let out = nursery(|n| async move {
    ///     let worker = n.spawn(async {
    ///         let why = cancelled().await;
    ///         Ok::<_, Cancelled>(why.reason().message().unwrap_or_default().to_string())
    ///     });
    ///     worker.cancel_with("rebalancing");
    ///     Ok::<_, Cancelled>(worker.await.ok()) // its value: it caught the cancellation
    /// })
    /// .await;
    /// assert_eq!(out.unwrap(), Some(Some("rebalancing".to_string())));
    /// # }
    /// ```
    pub fn cancel_with<D: std::any::Any + Send + Sync>(&self, data: D) {
        self.info().cancel(CancelReason::explicit_with(data));
    }

    /// Aborts this child alone: tokio drops its future at its next scheduling. Not a failure;
    /// the handle then yields [`JoinError::ChildAborted`] (to a waiter whose scope is not
    /// cancelled) unless the child already finished.
    ///
    /// While the child runs a parallel borrowing scope (SPEC B2), the abort is put off until
    /// that scope ends, and the child is told "grace expired" meanwhile. A blocking child
    /// (SPEC N16) cannot be aborted once it runs: it is cancelled instead, through its
    /// [`BlockingContext`](crate::BlockingContext); one that has not started yet never starts.
    pub fn abort(&self) {
        match &self.child {
            Joined::Cell(cell) => cell.abort(),
            Joined::Task(join, child) => {
                if !child.abort_put_off(Teller::Caller) {
                    join.abort();
                }
            }
            Joined::Kept(_) => {} // it has ended
        }
    }

    /// Whether the child has finished: its outcome is waiting for this handle (awaiting it
    /// then returns at once). The nursery counts a child as ended a moment before, when its
    /// future is gone, so just after the nursery (or scope) returned this may still be
    /// `false` for a short while; awaiting the handle gives the child's outcome either way
    /// (an outcome without a value only to a waiter whose scope is not cancelled).
    pub fn is_finished(&self) -> bool {
        match &self.child {
            Joined::Cell(cell) => cell.is_finished(),
            Joined::Task(join, _) => join.is_finished(),
            Joined::Kept(_) => true,
        }
    }
}

impl<T> ChildHandle<T> {
    /// Keeps the marker a cancelled waiter did not get, for an await where the scope is not
    /// cancelled (a shield, or after the scope ended).
    fn keep(&mut self, marker: JoinError) {
        let info: Arc<dyn ChildInfo> = match &mut self.child {
            Joined::Kept(kept) => {
                kept.marker = Some(marker);
                return;
            }
            Joined::Cell(cell) => cell.clone(),
            Joined::Task(_, child) => child.clone(),
        };
        let id = self.id();
        self.child = Joined::Kept(Box::new(Kept {
            marker: Some(marker),
            id,
            info,
        }));
    }

    /// Lets go of the child's outcome, and of the wakers left waiting for it and for the
    /// awaiting scope's cancellation, as a drop does; for a handle kept after that (a
    /// parallel scope keeps it with the child's cell).
    pub(crate) fn release(&mut self) {
        self.waiter.clear();
        if let Joined::Cell(cell) = &self.child {
            // An outcome already there is dropped now (else by the child's task, as it
            // comes). A panic in the value's drop stays here, as tokio's `JoinHandle` keeps
            // it: the child's end was reported already.
            let _ = catch_unwind(AssertUnwindSafe(|| cell.release()));
        }
    }
}

impl<T> Drop for ChildHandle<T> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<T> Future for ChildHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let output = match &mut this.child {
            Joined::Cell(cell) => cell.poll_output(cx).map(joined),
            Joined::Task(join, _) => Pin::new(join).poll(cx).map(|result| match result {
                Ok(output) => joined(output),
                Err(error) if error.is_cancelled() => Err(JoinError::ChildAborted),
                Err(_) => Err(JoinError::ChildPanicked),
            }),
            // Taken, as a value would be, unless given back below.
            Joined::Kept(kept) => Poll::Ready(Err(kept
                .marker
                .take()
                .expect("tokio-nursery: a ChildHandle polled after it returned"))),
        };
        if let Poll::Ready(output) = output {
            // Waits no more: the awaiting scope need not wake this task for a cancellation.
            this.waiter.clear();
            return Poll::Ready(JoinError::for_waiter(output, |marker| this.keep(marker)));
        }
        // Only on the way to waiting: a child waiting for itself would never wake.
        if tokio::task::try_id() == Some(this.id()) {
            panic!("tokio-nursery: a child awaited its own handle (it would never finish)");
        }
        // A child that has ended has its outcome on the way (its nursery counts it finished
        // just before the outcome reaches the handle; on another worker the nursery may have
        // returned in between): that wait is not a cancellation point, or the awaiting code
        // would lose the outcome to a `Cancelled` saying the child keeps running. The
        // outcome's arrival wakes `cx`, left by the poll above.
        if this.info().has_ended() {
            return Poll::Pending;
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
            .field("name", &self.name())
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
    /// The child was aborted (its handle's `abort`, a grace period running out, its
    /// nursery dropped in abort mode, or its local scope's future dropped).
    ChildAborted,
    /// The *awaiting* code's scope is cancelled: a child that had not ended keeps running;
    /// one that ended without a value gives its waiter this rather than its marker (the
    /// markers above go to waiters whose scope is not cancelled). Either way the handle can
    /// be awaited again: where the scope is not cancelled (a shield, or once the scope
    /// ended) it gives the child's outcome.
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

impl JoinError {
    /// What a handle's waiter gets of its child's `outcome` (a cancellation point): a value
    /// as it is; a marker of an end without one only if the waiter's scope is not
    /// cancelled, else its own cancellation, so that `?` passes it on (the marker adds
    /// nothing the nursery does not report, and a `ChildCancelled` is most often the same
    /// cancellation, seen by the child first), the marker then given to `keep` for a
    /// later await.
    pub(crate) fn for_waiter<T>(
        outcome: Result<T, JoinError>,
        keep: impl FnOnce(JoinError),
    ) -> Result<T, JoinError> {
        let Err(error) = outcome else {
            return outcome;
        };
        Err(error.seen_by_waiter(keep))
    }

    /// [`for_waiter`](Self::for_waiter)'s end without a value, out of the value's way.
    #[cold]
    fn seen_by_waiter(self, keep: impl FnOnce(JoinError)) -> JoinError {
        if matches!(self, JoinError::Cancelled(_)) {
            return self;
        }
        match crate::point::current_cancellation() {
            Some(cancelled) => {
                keep(self);
                JoinError::Cancelled(cancelled)
            }
            None => self,
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
