//! Cancel scopes: [`CancelScope`] (a scope not yet entered), [`ScopeHandle`] (the controls of
//! a scope, from anywhere) and [`Scoped`] (the future that runs a body in a scope).
//!
//! This is Trio's `CancelScope`, the origin of a cancellation, split in two so that entering
//! a scope twice is impossible by type: [`CancelScope::run`] consumes the scope, while any
//! number of [`ScopeHandle`]s cancel it, move its deadline, raise its shield and read its
//! state. The plumbing, the node each entered scope has in the tree, is [`crate::node`].

use std::any::Any;
use std::cell::{Cell, OnceCell};
use std::fmt;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project::{pin_project, pinned_drop};
use sync_wrapper::SyncWrapper;
use tokio::time::Instant;

use crate::cancelled::{CancelError, Cancelled};
use crate::context::{self, FrameKind, Unlinked};
use crate::deadline_service::DeadlineService;
use crate::node::{DeadlineTimer, Node, ScopeId, WaiterKey, later};
use crate::point::Waiter;
use crate::reason::CancelReason;
use crate::sync::Arc;

/// A cancel scope that has not been entered yet.
///
/// Build it, keep a [`handle`](CancelScope::handle) if you want to control it, then run a
/// body in it with [`run`](CancelScope::run). The body's cancellation points report
/// [`Cancelled`] while the scope is cancelled; when the body returns that `Cancelled`, the
/// scope absorbs it and `run` yields `Ok(None)`.
///
/// ```
/// use tokio_nursery::{CancelScope, Cancelled, sleep};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let scope = CancelScope::new();
/// let handle = scope.handle();
/// tokio::spawn(async move {
///     tokio::time::sleep(Duration::from_millis(5)).await;
///     handle.cancel_with("operator said stop");
/// });
/// let out = scope
///     .run(async {
///         sleep(Duration::from_secs(60)).await?;
///         Ok::<_, Cancelled>("done")
///     })
///     .await;
/// assert_eq!(out.unwrap(), None);
/// # }
/// ```
pub struct CancelScope {
    node: Arc<Node>,
    hard: bool,
}

impl CancelScope {
    /// A scope with no deadline, not shielded, with cooperative delivery.
    pub fn new() -> Self {
        CancelScope {
            node: Arc::new(Node::new(ScopeId::next(), false, None)),
            hard: false,
        }
    }

    /// Sets an absolute deadline on tokio's clock (SPEC S5), replacing a timeout set before.
    pub fn with_deadline(self, deadline: Instant) -> Self {
        self.node.set_deadline(Some(deadline.into_std()));
        self
    }

    /// Sets a deadline `timeout` after the scope is entered (its future first polled),
    /// replacing a deadline set before. A deadline set through a handle before entry
    /// replaces the timeout in turn (the last one set wins, as in Trio).
    pub fn with_timeout(self, timeout: Duration) -> Self {
        self.node.set_timeout(timeout);
        self
    }

    /// Shields the scope from its ancestors' cancellation and deadlines (SPEC S8). The shield
    /// can be switched later with [`ScopeHandle::set_shield`].
    pub fn shielded(self) -> Self {
        self.node.set_shield(true);
        self
    }

    /// Hard delivery (SPEC S12): when the scope becomes effectively cancelled, the body is
    /// polled once more and then dropped, wherever it is parked.
    ///
    /// Dropping a future can break invariants half-way (the reason this crate exists): use
    /// it for bodies that are cancel-safe.
    pub fn hard(self) -> Self {
        CancelScope { hard: true, ..self }
    }

    /// A handle to control the scope from anywhere, before, while and after it runs.
    pub fn handle(&self) -> ScopeHandle {
        ScopeHandle {
            node: self.node.clone(),
        }
    }

    /// Runs `body` in this scope.
    ///
    /// The future yields `Ok(Some(value))` when the body returns a value, `Ok(None)` when the
    /// scope absorbed a cancellation (the body returned a [`Cancelled`] while this scope was
    /// the one cancelled, SPEC S9), and `Err(error)` for any other error, including a
    /// cancellation of an enclosing scope passing outwards.
    ///
    /// # Panics
    ///
    /// When entered outside a tokio runtime with a deadline or timeout set (it could never
    /// fire).
    pub fn run<F, T, E>(self, body: F) -> Scoped<F>
    where
        F: Future<Output = Result<T, E>>,
        E: CancelError,
    {
        Scoped {
            core: ScopeCore::new(body, Plan::Preset { node: self.node }, self.hard),
        }
    }
}

impl Default for CancelScope {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CancelScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelScope")
            .field("id", &self.node.id())
            .field("hard", &self.hard)
            .finish_non_exhaustive()
    }
}

/// The controls of a cancel scope, usable from any task or thread, before the scope is
/// entered, while it runs and after it ended. Cheap to clone.
#[derive(Clone)]
pub struct ScopeHandle {
    pub(crate) node: Arc<Node>,
}

impl ScopeHandle {
    /// The scope's id, as named by the [`Cancelled`] raised for it.
    pub fn id(&self) -> ScopeId {
        self.node.id()
    }

    /// Cancels the scope (SPEC S2). Idempotent; the first reason given wins (SPEC S4).
    pub fn cancel(&self) {
        self.cancel_because(CancelReason::Explicit(None));
    }

    /// Cancels the scope with user data, readable from the [`Cancelled`] the body sees
    /// (`reason().payload()`, or `reason().message()` for a string).
    pub fn cancel_with<T: Any + Send + Sync>(&self, data: T) {
        self.cancel_because(CancelReason::explicit_with(data));
    }

    pub(crate) fn cancel_because(&self, reason: CancelReason) {
        // The node emits the O1 event.
        self.node.cancel(reason);
    }

    /// The scope itself was cancelled, explicitly or by its own deadline. Never reverts.
    pub fn cancel_called(&self) -> bool {
        self.node.cancel_called()
    }

    /// The scope absorbed a cancellation when it ended (SPEC S9).
    pub fn cancelled_caught(&self) -> bool {
        self.node.cancelled_caught()
    }

    /// The scope is effectively cancelled: by itself or by an ancestor it is exposed to.
    pub fn is_cancelled(&self) -> bool {
        self.node.is_cancelled()
    }

    /// Why the scope itself was cancelled, if it was.
    pub fn reason(&self) -> Option<CancelReason> {
        self.node.reason()
    }

    /// The scope's own deadline (not the effective one: see
    /// [`current_deadline`](crate::current_deadline)).
    pub fn deadline(&self) -> Option<Instant> {
        self.node.deadline().map(Instant::from_std)
    }

    /// Moves the deadline, from any thread (SPEC S6). An earlier deadline takes effect at
    /// once, cancelling the scope if it has passed on the scope's runtime clock; a later one
    /// postpones the cancellation unless the scope is already cancelled; `None` removes it.
    /// Before entry it only records the deadline.
    ///
    /// # Panics
    ///
    /// If the scope runs outside a tokio runtime (a deadline there could never fire).
    pub fn set_deadline(&self, deadline: Option<Instant>) {
        self.node.set_deadline(deadline.map(Instant::into_std));
    }

    /// Whether the shield is raised.
    pub fn is_shielded(&self) -> bool {
        self.node.is_shielded()
    }

    /// Raises or lowers the shield while the scope runs (SPEC S8). Lowering it inside a
    /// cancelled ancestor exposes that cancellation at once; `cancel_called` stays false.
    /// Lowering it inside a nursery whose grace period has run out exposes the scope to
    /// that too (SPEC N7): the nurseries running in it have their children aborted at once,
    /// as if the shield had been down when the grace ran out (a warn-level event names
    /// them when the `tracing` feature is on).
    pub fn set_shield(&self, shield: bool) {
        self.node.set_shield(shield);
    }
}

impl fmt::Debug for ScopeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ScopeHandle").field(&self.node).finish()
    }
}

/// A handle to the innermost scope of the code being polled, or `None` outside any scope.
///
/// Cancelling it cancels that scope, as Trio's `current cancel scope` would.
pub fn current_scope() -> Option<ScopeHandle> {
    context::with_current(|frame| {
        frame.map(|frame| ScopeHandle {
            node: frame.node().clone(),
        })
    })
}

/// Runs a body in a cancel scope: the future returned by [`CancelScope::run`].
///
/// Output: `Ok(Some(value))`, `Ok(None)` when the scope absorbed a cancellation, or the
/// body's error.
#[pin_project]
#[must_use = "a scope does nothing unless its future is awaited"]
pub struct Scoped<F> {
    #[pin]
    pub(crate) core: ScopeCore<F>,
}

impl<F, T, E> Future for Scoped<F>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError,
{
    type Output = Result<Option<T>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().core.poll_exit(cx).map(|exit| match exit {
            Exit::Value(value) => Ok(Some(value)),
            Exit::Absorbed(..) => Ok(None),
            Exit::Error(error) => Err(error),
        })
    }
}

impl<F> fmt::Debug for Scoped<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoped").finish_non_exhaustive()
    }
}

/// How a scope ended.
pub(crate) enum Exit<T, E> {
    Value(T),
    Error(E),
    /// The scope absorbed a cancellation. One pointer: a small `Exit` comes back in
    /// registers (the `5-ready` benchmark), and a deadline scope that timed out allocates
    /// nothing to say so (`5-timing-out`).
    Absorbed(Absorbed),
}

/// Where to read what a scope absorbed ([`ScopeCore::absorbed`]).
pub(crate) enum Absorbed {
    /// The scope's node knows the reason and the deadline.
    Node(Arc<Node>),
    /// A helper scope without a node absorbed its own deadline.
    OwnDeadline,
}

/// How a scope gets its node.
pub(crate) enum Plan {
    /// A [`CancelScope`] the user built: the node exists, linked at entry.
    Preset { node: Arc<Node> },
    /// A helper scope: no node unless one is needed after the first poll.
    Lazy {
        deadline: DeadlineSpec,
        shield: bool,
    },
}

/// The deadline of a helper scope.
#[derive(Clone, Copy, Debug)]
pub(crate) enum DeadlineSpec {
    At(Instant),
    After(Duration),
}

enum Phase {
    Unentered,
    /// A helper scope without a node, waiting after its first poll (see [`InlineWait`]).
    Inline,
    /// The scope has a node.
    Running,
    Done,
}

/// The state machine shared by every scope future: entry, polls in the scope's frame,
/// hard delivery and the end of the scope.
#[pin_project(PinnedDrop, project = ScopeCoreProj)]
pub(crate) struct ScopeCore<F> {
    #[pin]
    body: Option<F>,
    plan: Plan,
    node: Option<Arc<Node>>,
    hard: bool,
    phase: Phase,
    waiter: Option<WaiterKey>,
    /// A helper scope waiting without a node (`Phase::Inline`). Taken by the drop, so the
    /// scope future has no drop glue of its own for it (`5-ready`). Reached only through
    /// `&mut` (its `Cell`s would make the future `!Sync` otherwise).
    wait: ManuallyDrop<SyncWrapper<Option<Pin<Box<InlineWait>>>>>,
}

/// A helper scope whose body went pending without asking for a node keeps none, as
/// `tokio::time::timeout` keeps a timer entry and nothing else: its own `Sleep` wakes it at
/// the deadline, its registration with the enclosing scope wakes it when that one is
/// cancelled, and each poll of the scope polls its body, so a waiting point polled with the
/// scope's waker ([`context::Frame::wakes`]) needs no registration of its own. Anything
/// that needs the scope from elsewhere (a handle, a nursery or scope inside it, a waiting
/// point behind a combinator with wakers of its own, a busy `is_cancelled()`) gives it a
/// node during a poll, and it links at the end of that poll.
///
/// Boxed, and made only when the body first waits: most helper scopes never do, and a
/// small scope future is cheap to build and move (`5-ready`).
#[pin_project]
struct InlineWait {
    inline: Unlinked,
    #[pin]
    alarm: tokio::time::Sleep,
    /// The registration with the enclosing scope.
    enclosing: Waiter,
}

impl<F> ScopeCore<F> {
    /// The instant of the deadline that cancelled what the scope absorbed (`None` if it was
    /// not a deadline).
    pub(crate) fn fired_at(&self, absorbed: &Absorbed) -> Option<Instant> {
        match absorbed {
            Absorbed::Node(node) => matches!(node.reason(), Some(CancelReason::Deadline))
                .then(|| node.cancelled_at().map(Instant::from_std))
                .flatten(),
            Absorbed::OwnDeadline => self.entry_deadline(),
        }
    }

    /// A helper scope's deadline as fixed at entry (once entered).
    pub(crate) fn entry_deadline(&self) -> Option<Instant> {
        match self.plan {
            Plan::Lazy {
                deadline: DeadlineSpec::At(at),
                ..
            } => Some(at),
            _ => None,
        }
    }

    /// The reason and the deadline of what the scope absorbed.
    pub(crate) fn absorbed(&self, absorbed: Absorbed) -> (CancelReason, Option<Instant>) {
        match absorbed {
            Absorbed::Node(node) => {
                let (reason, deadline) = node.reason_and_deadline();
                (
                    reason.unwrap_or(CancelReason::Deadline),
                    deadline.map(Instant::from_std),
                )
            }
            // Made absolute at entry.
            Absorbed::OwnDeadline => (CancelReason::Deadline, self.entry_deadline()),
        }
    }

    pub(crate) fn new(body: F, plan: Plan, hard: bool) -> Self {
        ScopeCore {
            body: Some(body),
            plan,
            node: None,
            hard,
            phase: Phase::Unentered,
            waiter: None,
            wait: ManuallyDrop::new(SyncWrapper::new(None)),
        }
    }
}

impl<F, T, E> ScopeCore<F>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError,
{
    /// Polls the body in the scope's frame. Only the body's poll sits on the stack of deeply
    /// nested scopes: entry and exit work is out of line in cold functions.
    pub(crate) fn poll_exit(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Exit<T, E>> {
        let mut this = self.project();
        match this.phase {
            Phase::Running => {}
            Phase::Inline => return poll_waiting(&mut this, cx),
            Phase::Done => polled_after_completion(),
            Phase::Unentered => match this.plan {
                Plan::Preset { node } => {
                    *this.phase = Phase::Running;
                    *this.node = Some(enter_preset(node));
                }
                Plan::Lazy { deadline, shield } => {
                    // The first poll keeps the inline state on the stack.
                    let inline = enter_lazy(*deadline, *shield);
                    return match poll_unlinked(this.body.as_mut(), &inline, cx) {
                        Poll::Ready(exit) => {
                            *this.phase = Phase::Done;
                            if let Exit::Absorbed(_) = exit {
                                remember_deadline(this.plan, &inline);
                            }
                            Poll::Ready(exit)
                        }
                        Poll::Pending => {
                            remember_deadline(this.plan, &inline);
                            start_waiting(&mut this, inline, cx);
                            Poll::Pending
                        }
                    };
                }
            },
        }

        let node = this.node.as_ref().expect("a running scope has a node");
        let last_poll = *this.hard && node.is_cancelled();
        let body = this.body.as_mut().as_pin_mut().expect("body present");
        let poll = context::enter(FrameKind::Linked(node), || body.poll(cx));
        match poll {
            Poll::Ready(out) => {
                *this.phase = Phase::Done;
                Poll::Ready(finish_linked(out, node, this.waiter))
            }
            // A parallel borrowing scope runs in the body (SPEC B2): the drop is put off
            // until it ends, which wakes this task (`Exemption`'s drop). Waking it now, as
            // `wait_hard` does for a cancelled node, would re-poll the body in a busy loop.
            Poll::Pending if last_poll && node.defer_if_exempt() => {
                node.register_waiter(this.waiter, cx.waker());
                Poll::Pending
            }
            Poll::Pending if last_poll => match dropped_exit(node) {
                // SPEC S12: polled once more after the cancellation; now drop the body, in
                // its scope (its drop code may ask), before the scope ends.
                Some(exit) => {
                    context::enter(FrameKind::Linked(node), || this.body.set(None));
                    *this.phase = Phase::Done;
                    node.remove_waiter(this.waiter);
                    node.end(matches!(exit, Exit::Absorbed(..)));
                    Poll::Ready(exit)
                }
                // A shield went up meanwhile: the scope is no longer cancelled.
                None => {
                    wait_hard(node, this.waiter, cx);
                    Poll::Pending
                }
            },
            Poll::Pending => {
                if *this.hard {
                    wait_hard(node, this.waiter, cx);
                }
                Poll::Pending
            }
        }
    }
}

/// A poll of a helper scope's body in an unlinked frame, with the scope's state inline.
/// Pending: the body may have asked for a node meanwhile (`inline.node`).
#[inline(always)]
fn poll_unlinked<F, T, E>(
    body: Pin<&mut Option<F>>,
    inline: &Unlinked,
    cx: &mut Context<'_>,
) -> Poll<Exit<T, E>>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError,
{
    // Ends a node made during this poll if the body or the user's `CancelError` panics: it
    // lives only in `inline` until linked.
    let mut unwind = EndOnUnwind(Some(inline));
    let body = body.as_pin_mut().expect("body present");
    let poll = context::enter(FrameKind::Unlinked(inline, cx.waker()), || body.poll(cx));
    let result = poll.map(|out| match out {
        // The fast path: ready at once, nothing linked.
        Ok(value) if inline.node.get().is_none() => Exit::Value(value),
        out => finish_lazy(out, inline),
    });
    unwind.0 = None;
    result
}

/// Keeps a helper scope's absolute deadline, fixed at entry, in its plan: what it absorbed
/// may be its own deadline ([`ScopeCore::absorbed`]) once its inline state is gone.
#[cold]
fn remember_deadline(plan: &mut Plan, inline: &Unlinked) {
    if let (Plan::Lazy { deadline, .. }, Some(at)) = (plan, inline.deadline) {
        *deadline = DeadlineSpec::At(Instant::from_std(at));
    }
}

/// A helper scope's body went pending in its first poll: it waits without a node (see
/// [`InlineWait`]) unless the body asked for one or there is no runtime to keep its timer.
#[inline(never)]
fn start_waiting<F>(this: &mut ScopeCoreProj<'_, F>, inline: Unlinked, cx: &mut Context<'_>) {
    let deadline = inline
        .deadline
        .filter(|_| inline.node.get().is_none() && tokio::runtime::Handle::try_current().is_ok());
    let Some(deadline) = deadline else {
        let relied_on = inline.relied_on.get();
        return link_now(this, link_lazy(&inline), relied_on, cx);
    };
    let mut wait = Box::pin(InlineWait {
        inline,
        alarm: tokio::time::sleep_until(Instant::from_std(deadline)),
        enclosing: Waiter::default(),
    });
    let waiting = wait.as_mut().project();
    if waiting.alarm.poll(cx).is_ready() {
        // Passed while the body ran: poll again to tell it.
        waiting.inline.expired.set(Some(true));
        cx.waker().wake_by_ref();
    }
    // Not asked before the first poll (`5-ready` pays nothing): an enclosing cancellation
    // that was already there costs one more poll, after which `poll_waiting` knows.
    enclose(waiting.inline, waiting.enclosing, false, cx);
    *this.wait.get_mut() = Some(wait);
    *this.phase = Phase::Inline;
}

/// A poll of a helper scope waiting without a node.
fn poll_waiting<F, T, E>(this: &mut ScopeCoreProj<'_, F>, cx: &mut Context<'_>) -> Poll<Exit<T, E>>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError,
{
    let wait = this
        .wait
        .get_mut()
        .as_mut()
        .expect("a waiting helper scope");
    let waiting = wait.as_mut().project();
    if waiting.alarm.poll(cx).is_ready() {
        waiting.inline.expired.set(Some(true));
    }
    let was_cancelled = !waiting.inline.shield && enclosing_is_cancelled();
    match poll_unlinked(this.body.as_mut(), waiting.inline, cx) {
        Poll::Ready(exit) => {
            *this.phase = Phase::Done;
            *this.wait.get_mut() = None;
            Poll::Ready(exit)
        }
        Poll::Pending if waiting.inline.node.get().is_none() => {
            enclose(waiting.inline, waiting.enclosing, was_cancelled, cx);
            Poll::Pending
        }
        Poll::Pending => {
            let (node, relied_on) = (link_lazy(waiting.inline), waiting.inline.relied_on.get());
            link_now(this, node, relied_on, cx);
            Poll::Pending
        }
    }
}

/// Registers a helper scope waiting without a node with the enclosing scope, unless it is
/// shielded. This runs in the enclosing scope's frame (the body's has been left). A
/// cancellation that came after the poll started (`was_cancelled`) and before the
/// registration woke nobody: poll again. One that was there already was seen by every point
/// the body reached (level-triggered): waking for it again would spin while the body waits
/// on something else (cleanup that is not a cancellation point).
fn enclose(inline: &Unlinked, enclosing: &mut Waiter, was_cancelled: bool, cx: &mut Context<'_>) {
    if !inline.shield && enclosing.register(cx) && !was_cancelled && enclosing_is_cancelled() {
        cx.waker().wake_by_ref();
    }
}

/// A helper scope gets its node: it was asked for one, or cannot wait without. A waiting
/// point in its body that relied on the scope's own poll registered nowhere: then the
/// scope is polled again at once, and the point registers with the node.
#[inline(never)]
fn link_now<F>(
    this: &mut ScopeCoreProj<'_, F>,
    node: Arc<Node>,
    relied_on: bool,
    cx: &mut Context<'_>,
) {
    *this.node = Some(node);
    *this.phase = Phase::Running;
    *this.wait.get_mut() = None;
    if relied_on {
        cx.waker().wake_by_ref();
    }
}

#[cold]
#[inline(never)]
fn polled_after_completion() -> ! {
    panic!("a cancel scope future was polled after it completed")
}

/// Links a [`CancelScope`]'s node under the current scope (SPEC S1) and starts its deadline.
#[inline(never)]
pub(crate) fn enter_preset(node: &Arc<Node>) -> Arc<Node> {
    let parent = context::with_current(|f| f.map(|f| f.node().clone()));
    node.enter(parent.as_ref(), timer_for(parent.as_ref()));
    node.clone()
}

/// The inline state of a helper scope's first poll. A deadline already past at entry cancels
/// it at once (SPEC S5); for an absolute deadline the clock is read only if someone asks.
#[inline]
fn enter_lazy(deadline: DeadlineSpec, shield: bool) -> Unlinked {
    let (deadline, expired) = match deadline {
        DeadlineSpec::At(at) => (at, None),
        DeadlineSpec::After(after) => (
            Instant::from_std(later(Instant::now().into_std(), after)),
            Some(after.is_zero()),
        ),
    };
    Unlinked {
        expired: Cell::new(expired),
        shield,
        deadline: Some(deadline.into_std()),
        id: Cell::new(None),
        node: OnceCell::new(),
        relied_on: Cell::new(false),
    }
}

/// The end of a helper scope whose body finished in its first poll.
#[inline(never)]
fn finish_lazy<T, E: CancelError>(out: Result<T, E>, inline: &Unlinked) -> Exit<T, E> {
    let absorbs = || match inline.node.get() {
        Some(node) => node.absorbs(),
        None => inline.expired() && (inline.shield || !enclosing_deadline_or_cancellation()),
    };
    let exit = exit_of(out, absorbs, || match inline.node.get() {
        Some(node) => Absorbed::Node(node.clone()),
        None => Absorbed::OwnDeadline,
    });
    if let Some(node) = inline.node.get() {
        node.end(matches!(exit, Exit::Absorbed(..)));
    }
    exit
}

/// A helper scope's body went pending: it needs a node to be reached from elsewhere.
#[inline(never)]
fn link_lazy(inline: &Unlinked) -> Arc<Node> {
    match inline.node.get() {
        Some(node) => node.clone(),
        None => {
            let parent = context::with_current(|f| f.map(|f| f.node().clone()));
            materialize(inline, parent.as_ref())
        }
    }
}

/// The end of a linked scope whose body returned.
#[inline(never)]
fn finish_linked<T, E: CancelError>(
    out: Result<T, E>,
    node: &Arc<Node>,
    waiter: &mut Option<WaiterKey>,
) -> Exit<T, E> {
    node.remove_waiter(waiter);
    let exit = exit_of(out, || node.absorbs(), || Absorbed::Node(node.clone()));
    node.end(matches!(exit, Exit::Absorbed(..)));
    exit
}

/// How a hard scope whose body is being dropped ends (SPEC S12): absorbed, or a `Cancelled`
/// naming the outer scope passed outward; `None` if it is no longer cancelled. The origin is
/// taken before anything is dropped, so a shield raised meanwhile cannot make it name a
/// scope that was not cancelled.
#[inline(never)]
fn dropped_exit<T, E: CancelError>(node: &Arc<Node>) -> Option<Exit<T, E>> {
    if node.absorbs() {
        return Some(Exit::Absorbed(Absorbed::Node(node.clone())));
    }
    let origin = node.origin()?;
    let reason = origin.reason().unwrap_or(CancelReason::Explicit(None));
    Some(Exit::Error(E::from(Cancelled::new(origin.id(), reason))))
}

/// A hard scope waits on its own node, so a cancellation from elsewhere wakes it.
#[inline(never)]
fn wait_hard(node: &Node, waiter: &mut Option<WaiterKey>, cx: &mut Context<'_>) {
    node.register_waiter(waiter, cx.waker());
    if node.is_cancelled() {
        cx.waker().wake_by_ref();
    }
}

#[pinned_drop]
impl<F> PinnedDrop for ScopeCore<F> {
    fn drop(self: Pin<&mut Self>) {
        let this = self.project();
        // A helper scope that finished without a node (`5-ready`) has nothing to end.
        if this.node.is_some() || matches!(this.phase, Phase::Inline) {
            end_on_drop(this);
        }
    }
}

/// The end of a scope whose future is dropped: the body is dropped in its scope (its drop
/// code may ask), before the scope ends.
#[inline(never)]
fn end_on_drop<F>(mut this: ScopeCoreProj<'_, F>) {
    if let Some(wait) = this.wait.get_mut().take() {
        // Dropped while waiting without a node: under the scope it waits in (the drop may
        // run outside any frame, e.g. an aborted nursery child's), as a linked scope would.
        let inline = &wait.inline;
        if this.body.as_mut().as_pin_mut().is_some() {
            let frame = FrameKind::Unlinked(inline, std::task::Waker::noop());
            let drop_body = || context::enter(frame, || this.body.set(None));
            match wait.enclosing.node() {
                Some(enclosing) => context::enter(FrameKind::Linked(enclosing), drop_body),
                None => drop_body(),
            }
        }
        if let Some(node) = inline.node.get() {
            node.end(false); // its drop code asked for one
        }
        return;
    }
    if let Some(node) = this.node.as_ref() {
        // Ends the node even if the body's drop code panics (SPEC R3).
        let end = EndsNode(node);
        if this.body.as_mut().as_pin_mut().is_some() {
            context::enter(FrameKind::Linked(node), || this.body.set(None));
        }
        node.remove_waiter(this.waiter);
        drop(end); // idempotent: a scope that finished has ended already
    }
}

/// Ends its node when dropped: after the body's drop, or while that drop unwinds.
struct EndsNode<'a>(&'a Arc<Node>);

impl Drop for EndsNode<'_> {
    fn drop(&mut self) {
        self.0.end(false);
    }
}

/// Ends the node an unlinked scope made during its first poll, if that poll unwinds.
struct EndOnUnwind<'a>(Option<&'a Unlinked>);

impl Drop for EndOnUnwind<'_> {
    fn drop(&mut self) {
        if let Some(node) = self.0.and_then(|inline| inline.node.get()) {
            node.end(false);
        }
    }
}

/// Classifies a body's output (SPEC S9, S15): a `Cancelled` is absorbed only by a scope that
/// is cancelled itself with no cancelled ancestor visible.
fn exit_of<T, E: CancelError>(
    out: Result<T, E>,
    absorbs: impl FnOnce() -> bool,
    absorbed: impl FnOnce() -> Absorbed,
) -> Exit<T, E> {
    match out {
        Ok(value) => Exit::Value(value),
        Err(error) if error.as_cancelled().is_some() && absorbs() => Exit::Absorbed(absorbed()),
        Err(error) => Exit::Error(error),
    }
}

/// The `Cancelled` a cancellation point in `node` would report.
pub(crate) fn cancelled_here(node: &Arc<Node>) -> Cancelled {
    let origin = node.origin().unwrap_or_else(|| node.clone());
    let reason = origin.reason().unwrap_or(CancelReason::Explicit(None));
    Cancelled::new(origin.id(), reason)
}

/// Whether the scope around a helper scope is cancelled, asked without linking it.
fn enclosing_is_cancelled() -> bool {
    context::with_current(|frame| frame.is_some_and(|frame| frame.is_cancelled_here()))
}

/// Whether the enclosing scope is cancelled, once the deadlines above that have passed are
/// fired: a helper scope without a node whose own timer fired must not absorb a cancellation
/// that an enclosing scope's deadline, passed as well, makes that scope's (SPEC S9).
#[cold]
fn enclosing_deadline_or_cancellation() -> bool {
    context::with_current(|frame| {
        let Some(frame) = frame else {
            return false;
        };
        if let Some(node) = frame.nearest_node() {
            node.fire_passed_deadlines();
        }
        frame.is_cancelled_here()
    })
}

/// The deadline timer for a scope entered under `parent`: the parent's, else the current
/// runtime's. Sharing the parent's keeps entering a scope off the global service registry; a
/// scope entered in another runtime than its parent's therefore keeps its deadlines on the
/// parent's runtime.
pub(crate) fn timer_for(parent: Option<&Arc<Node>>) -> Option<Arc<dyn DeadlineTimer>> {
    parent
        .and_then(|parent| parent.timer())
        .or_else(|| DeadlineService::current().map(|service| service as Arc<dyn DeadlineTimer>))
}

/// Gives an unlinked scope its node and links it under `parent` (see [`crate::context`]).
pub(crate) fn materialize(inline: &Unlinked, parent: Option<&Arc<Node>>) -> Arc<Node> {
    let node = Arc::new(Node::new(inline.id(), inline.shield, inline.deadline));
    // Expired before its node was made (its own timer fired, `Frame::expire_deadline`
    // expired it early, or it passed meanwhile): its node keeps that, cancelled at the
    // deadline's instant as the service fires one. Before entering, which would record the
    // clock for a deadline already past (`TimedOut` compares that with its entry deadline).
    if let Some(at) = inline.deadline.filter(|_| inline.expired_now()) {
        node.cancel_at_deadline(at);
    }
    node.enter(parent, timer_for(parent));
    if inline.expired.get() == Some(true) && !node.cancel_called() {
        node.cancel(CancelReason::Deadline);
    }
    node
}
