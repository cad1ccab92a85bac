//! Starting a child with readiness, Trio's `nursery.start` (SPEC N3).
//!
//! [`NurseryHandle::start`] returns a [`Start`] future; its first poll spawns a child that
//! runs under the scopes that poll runs in (the caller's) until it calls [`Ready::signal`];
//! then it moves under the nursery's scope and the caller gets the signalled value while
//! the child keeps running. Before the signal the child is the caller's business: its
//! failure goes to the caller alone. A pending start keeps the nursery open, since the
//! child is registered with the nursery from its spawn.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use super::child::{EarlyEnd, Starting, ToStarter};
use super::report::{Failure, Origin};
use super::{ChildLabel, NurseryHandle, SpawnError};
use crate::cancelled::{CancelError, Cancelled};
use crate::context;
use crate::handoff::{Handoff, Outcome};

/// What a started child and its starter share: the handoff's state machine (`handoff.rs`,
/// model-checked with loom), with the child's early end as the nursery knows it.
type StartState<V, E> = Handoff<V, EarlyEnd<E>>;

impl<V: Send, E: Send> Starting<E> for StartState<V, E> {
    fn ended_early(&self, end: EarlyEnd<E>) -> Result<(), EarlyEnd<E>> {
        let returned = matches!(end, EarlyEnd::Returned);
        Handoff::ended_early(self, end, returned)
    }
}

/// The readiness signal of a started child (SPEC N3): call [`signal`](Ready::signal) once,
/// when the child is ready. Signalling twice is impossible: `signal` consumes it. Dropping
/// it without signalling makes the start fail with [`StartError::NoSignal`] once the child
/// returns.
pub struct Ready<V> {
    state: Arc<dyn Signal<V>>,
}

trait Signal<V>: Send + Sync {
    fn signal(&self, value: V);
}

impl<V: Send, E: Send> Signal<V> for StartState<V, E> {
    fn signal(&self, value: V) {
        Handoff::signal(self, value);
    }
}

impl<V> Ready<V> {
    /// Tells the starter the child is ready, with a value for it; the child moves under the
    /// nursery's scope and keeps running. Unless the starter's scope is cancelled at that
    /// moment (SPEC N3, as in Trio): then the child stays under the starter's scopes, and so
    /// keeps seeing that cancellation, until it exits, and the starter waits for the exit.
    pub fn signal(self, value: V) {
        self.state.signal(value);
    }
}

impl<V> fmt::Debug for Ready<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ready").finish_non_exhaustive()
    }
}

/// Why a start gave no value.
#[derive(Debug)]
pub enum StartError<E> {
    /// The child failed before signalling, or after a signal that left it under the
    /// caller's cancelled scopes (see [`Ready::signal`]); its error is yours alone (not the
    /// nursery's).
    Failed(E),
    /// The child stopped because the caller's scope was cancelled, before signalling or
    /// after a signal that left it under that scope; pass the cancellation on.
    Cancelled(Cancelled),
    /// The child returned without signalling readiness.
    NoSignal,
    /// The child was aborted before signalling.
    Aborted,
    /// Nothing was started: the nursery had closed, or it is full and the caller is one of
    /// its children ([`SpawnError::Full`]: waiting for a slot the caller may hold itself
    /// could deadlock, SPEC N11).
    Spawn(SpawnError),
}

impl<E> From<Cancelled> for StartError<E> {
    fn from(cancelled: Cancelled) -> Self {
        StartError::Cancelled(cancelled)
    }
}

impl<E> CancelError for StartError<E> {
    fn as_cancelled(&self) -> Option<&Cancelled> {
        match self {
            StartError::Cancelled(cancelled) => Some(cancelled),
            _ => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for StartError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Failed(error) => {
                write!(f, "the started child failed before it was ready: {error}")
            }
            StartError::Cancelled(cancelled) => write!(f, "start cancelled: {cancelled}"),
            StartError::NoSignal => {
                f.write_str("the started child returned without signalling readiness")
            }
            StartError::Aborted => f.write_str("the started child was aborted before it was ready"),
            StartError::Spawn(error) => error.fmt(f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for StartError<E> {
    /// The cancellation, so [`CancelError`] finds it inside boxed errors.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Cancelled(cancelled) => Some(cancelled),
            _ => None,
        }
    }
}

/// The future of [`NurseryHandle::start`]: resolves with the signalled value.
///
/// Lazy, like any future: its first poll spawns the child, under the scopes that poll runs
/// in, so `move_on_after(d, n.start(f))` bounds the start (SPEC N3, S1), and the nursery's
/// concurrency limit and closing are checked then.
///
/// Not a cancellation point: if the caller's scope is cancelled, the child sees it (it runs
/// under those scopes) and this keeps waiting until the child signals or exits. A signal
/// given while the caller's scope is cancelled does not move the child (SPEC N3, as in
/// Trio): it stays under the caller's scopes, and this resolves only when it exits, with the
/// signalled value if it returned `Ok`, else with its failure or cancellation as a
/// [`StartError`] (its panic is resumed here). Dropping it
/// before the signal moves the child to the nursery with its own scope cancelled; a failure
/// or panic that already ended the child, and that this future never returned, goes to the
/// nursery then (or to its report hook once the nursery is gone): none is lost. Dropping
/// it before its first poll starts nothing.
#[must_use = "a start does nothing unless awaited; dropping it once polled cancels the child"]
pub struct Start<V, E> {
    state: Option<Arc<StartState<V, E>>>,
    /// Spawns the child, at the first poll. In a `Mutex` only so that `Start` is `Sync`
    /// whatever the child's future is (it is taken once, through `&mut self`).
    launch: Mutex<Option<Launch<V, E>>>,
    closed: Option<SpawnError>,
    /// Reports to the nursery an early end the caller never took (see `Drop`).
    orphaned_end: Option<OrphanedEnd<E>>,
}

/// Spawns a started child, given the state it shares with its starter: what reports its
/// unclaimed early end, or why nothing was spawned.
type Launch<V, E> =
    Box<dyn FnOnce(&Arc<StartState<V, E>>) -> Result<OrphanedEnd<E>, SpawnError> + Send>;

/// Hands a failure or panic that ended a started child before its signal, and that its
/// caller never took, to the nursery (SPEC N3, N4, N6: never a lost failure).
type OrphanedEnd<E> = Box<dyn FnOnce(EarlyEnd<E>) + Send + Sync>;

impl<V, E> Future for Start<V, E>
where
    E: CancelError,
{
    type Output = Result<V, StartError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let launch = this
            .launch
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let (Some(launch), Some(state)) = (launch, this.state.as_ref()) {
            match launch(state) {
                Ok(report) => this.orphaned_end = Some(report),
                Err(error) => {
                    this.state = None;
                    this.closed = Some(error);
                }
            }
        }
        let Some(state) = this.state.as_ref() else {
            let closed = this.closed.take().expect("polled after completion");
            return Poll::Ready(Err(StartError::Spawn(closed)));
        };
        let outcome = match state.poll(cx.waker()) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Outcome::Value(value)) => Ok(value),
            Poll::Ready(Outcome::Early(end)) => Err(match end {
                EarlyEnd::Returned => StartError::NoSignal,
                EarlyEnd::Failed(error) => StartError::Failed(error),
                EarlyEnd::Cancelled(error) => match error.as_cancelled() {
                    Some(cancelled) => StartError::Cancelled(cancelled.clone()),
                    None => StartError::Failed(error),
                },
                EarlyEnd::Aborted => StartError::Aborted,
                EarlyEnd::Panicked(payload) => {
                    this.state = None;
                    std::panic::resume_unwind(payload);
                }
            }),
        };
        this.state = None;
        Poll::Ready(outcome)
    }
}

impl<V, E> Drop for Start<V, E> {
    fn drop(&mut self) {
        let Some(state) = self.state.take() else {
            return;
        };
        let launched = self
            .launch
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_none();
        if !launched {
            return; // never polled: nothing was started
        }
        // SPEC N3: the caller gave up before the signal; the child joins the nursery with
        // its own scope cancelled, and its end is the nursery's. An early end the caller
        // never took (the child ended before the signal, the caller gave up before polling
        // again) goes to the nursery too when it is a failure or a panic: nobody else will
        // ever see it.
        if let (Some(end), Some(report)) = (state.abandon(), self.orphaned_end.take()) {
            report(end);
        }
    }
}

impl<V, E> fmt::Debug for Start<V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Start").finish_non_exhaustive()
    }
}

impl<E> NurseryHandle<E>
where
    E: CancelError + fmt::Debug + Send + 'static,
{
    /// Starts a child and waits until it signals readiness (SPEC N3, Trio's
    /// `nursery.start`); the child keeps running in the nursery afterwards.
    ///
    /// ```
    /// use tokio_nursery::{nursery, Cancelled, Ready};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// nursery(|n| async move {
    ///     let port = n
    ///         .start(|ready: Ready<u16>| async move {
    ///             // bind a listener, then tell the caller where it is
    ///             ready.signal(8080);
    ///             // ... serve until cancelled
    ///             Ok::<_, Cancelled>(())
    ///         })
    ///         .await
    ///         .unwrap();
    ///     assert_eq!(port, 8080);
    ///     Ok::<_, Cancelled>(())
    /// })
    /// .await
    /// .unwrap();
    /// # }
    /// ```
    pub fn start<F, Fut, V, T>(&self, child: F) -> Start<V, E>
    where
        F: FnOnce(Ready<V>) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        V: Send + 'static,
        T: Send + 'static,
    {
        self.start_inner(None, child)
    }

    /// Like [`start`](Self::start), with a name for reports, the task tree and tracing
    /// (as [`spawn_named`](Self::spawn_named) gives one).
    ///
    /// ```
    /// use tokio_nursery::{nursery, Cancelled, Ready};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// nursery(|n| async move {
    ///     let ready = n
    ///         .start_named("listener", |ready: Ready<()>| async move {
    ///             ready.signal(());
    ///             Ok::<_, Cancelled>(())
    ///         })
    ///         .await;
    ///     assert!(ready.is_ok());
    ///     Ok::<_, Cancelled>(())
    /// })
    /// .await
    /// .unwrap();
    /// # }
    /// ```
    pub fn start_named<F, Fut, V, T>(&self, name: &str, child: F) -> Start<V, E>
    where
        F: FnOnce(Ready<V>) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        V: Send + 'static,
        T: Send + 'static,
    {
        self.start_inner(Some(Arc::from(name)), child)
    }

    fn start_inner<F, Fut, V, T>(&self, name: Option<Arc<str>>, child: F) -> Start<V, E>
    where
        F: FnOnce(Ready<V>) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        V: Send + 'static,
        T: Send + 'static,
    {
        let state = Arc::new(StartState::new(self.shared.node.clone()));
        let future = child(Ready {
            state: state.clone(),
        });
        let handle = self.clone();
        let launch: Launch<V, E> = Box::new(move |state| handle.launch(name, future, state));
        Start {
            state: Some(state),
            launch: Mutex::new(Some(launch)),
            closed: None,
            orphaned_end: None,
        }
    }

    /// Spawns a started child, at its `Start`'s first poll (so in the caller's context).
    fn launch<Fut, V, T>(
        &self,
        name: Option<Arc<str>>,
        future: Fut,
        state: &Arc<StartState<V, E>>,
    ) -> Result<OrphanedEnd<E>, SpawnError>
    where
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        V: Send + 'static,
        T: Send + 'static,
    {
        // A child starting a child into its own full nursery would wait for the signal while
        // the started child waits for a slot, maybe the caller's own (SPEC N11): `Full`.
        // Otherwise a full nursery's child waits for a slot in its own task, and a closed
        // nursery refuses the spawn below.
        let slot = match self.free_slot() {
            Ok(slot) => slot,
            Err(SpawnError::Full) if self.is_own_child() => return Err(SpawnError::Full),
            Err(_) => None,
        };
        // Until it signals, the child runs under the caller's scopes.
        let caller = context::with_current(|frame| frame.map(|frame| frame.node().clone()));
        let parent = caller.as_ref().unwrap_or(&self.shared.node);
        let route_state = state.clone();
        let mut started = None;
        let scope = &mut started;
        let (join, _) =
            self.spawn_task(name.clone(), Some(parent), slot, future, move |child| {
                let node = child
                    .scope
                    .own()
                    .expect("a started child's scope is made at once");
                route_state.link(node);
                *scope = Some(node.clone());
                ToStarter(Some(route_state))
            })?;
        // Until it signals, its scope hangs under the caller's, whose owner does not know
        // it: the scope names the child itself for the task tree (SPEC O2).
        if let Some(node) = started {
            node.attach(Arc::new(ChildLabel {
                kind: "child",
                name: name.clone(),
                task: join.id(),
                nursery: self.shared.node.id(),
            }));
        }
        let shared = self.shared.clone();
        let origin = Origin::Child {
            id: join.id(),
            name,
        };
        Ok(Box::new(move |end| match end {
            EarlyEnd::Failed(error) => {
                let stray = error.as_cancelled().is_some();
                shared.fail(Failure::new(origin, error, stray));
            }
            EarlyEnd::Panicked(payload) => shared.panicked(origin, payload),
            // An echo of the caller's cancellation, a return without a signal or an
            // abort: no failure of anyone's.
            EarlyEnd::Cancelled(_) | EarlyEnd::Returned | EarlyEnd::Aborted => {}
        }))
    }
}
