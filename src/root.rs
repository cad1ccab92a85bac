//! The root of a program ([`Root`], SPEC N13): the runtime's owner, its shutdown sequence
//! (documented on [`Root`]) and its signal handling.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures::future::{Either, select};
use tokio::sync::Notify;

use crate::cancelled::CancelError;
use crate::nursery::{
    Nursery, NurseryError, NurseryHandle, Report, ReportHook, orphan_count, orphans_finished,
    stop_orphans,
};
use crate::reason::CancelReason;
use crate::sync::lock;
use crate::tree::TaskTree;

/// The root of a program (SPEC N13): it owns the runtime, runs `main` (or a server) in a
/// nursery, and on return or on Ctrl-C / SIGTERM cancels everything with reason
/// [`Shutdown`](crate::CancelReason::Shutdown), waits up to a grace period, aborts the rest
/// (after a signal, `main` too) except protected work ([`protect`](crate::protect)), which
/// it waits for until that work ends by itself (its own deadline) or a signal during the
/// shutdown (a second one, or the first after `main` returned), reports what it had to cut
/// short ([`Report::ShutdownCutShort`]), and shuts the runtime down with a bound. The
/// runtime's orphans (nurseries dropped in wait mode outside any nursery, protected work
/// started outside any nursery) are then waited for in the same way: up to a grace period,
/// after which what can be aborted is, and protected work is waited for until it ends or a
/// signal comes.
///
/// What it cannot protect: tasks started with a plain `tokio::spawn` (they belong to no
/// nursery; tokio drops them at runtime shutdown), and anything `std::process::exit` or an
/// abort ends. A panic it resumes (`main`'s, a child's) still gets the bounded shutdown.
///
/// The signals, the grace period and the reports are handled in the task that runs `main`:
/// code that blocks that thread in `main` itself (a blocking
/// [`parallel_scope`](crate::parallel_scope), a synchronous wait) puts them off until it
/// returns. Run such work in a child ([`spawn`](crate::NurseryHandle::spawn), or
/// [`spawn_blocking`](crate::NurseryHandle::spawn_blocking)).
///
/// ```no_run
/// use std::time::Duration;
/// use tokio_nursery::{Cancelled, Root};
///
/// fn main() {
///     let outcome = Root::new()
///         .grace(Duration::from_secs(5))
///         .run(|n| async move {
///             n.spawn(async {
///                 // serve until Ctrl-C / SIGTERM cancels the root
///                 let cancelled = tokio_nursery::cancelled().await;
///                 Err::<(), _>(cancelled)
///             });
///             tokio_nursery::cancelled().await; // main waits for the shutdown too
///             Ok::<_, Cancelled>(())
///         });
///     std::process::exit(if outcome.is_ok() { 0 } else { 1 });
/// }
/// ```
#[derive(Clone)]
pub struct Root {
    grace: Duration,
    shutdown_bound: Duration,
    multi_thread: bool,
    signals: bool,
    hook: Option<ReportHook>,
}

impl fmt::Debug for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Root")
            .field("grace", &self.grace)
            .field("shutdown_bound", &self.shutdown_bound)
            .field("multi_thread", &self.multi_thread)
            .field("signals", &self.signals)
            .field("on_report", &self.hook.is_some())
            .finish()
    }
}

impl Root {
    /// A root with a multi-thread runtime (when the `rt-multi-thread` feature is on), a
    /// 10 s grace period, a 1 s runtime-shutdown bound, and Ctrl-C / SIGTERM handling (with
    /// the `signal` feature).
    pub fn new() -> Self {
        Root {
            grace: Duration::from_secs(10),
            shutdown_bound: Duration::from_secs(1),
            multi_thread: cfg!(feature = "rt-multi-thread"),
            signals: cfg!(feature = "signal"),
            hook: None,
        }
    }

    /// How long children may take to stop after the shutdown began before they are aborted.
    /// After a signal, `main` itself is dropped when it runs longer (it ends with the
    /// shutdown's cancellation, and the report names it); protected work is still waited for,
    /// until it ends or a signal cuts the shutdown short. The runtime's orphans get the same
    /// grace once the root nursery has ended.
    pub fn grace(self, grace: Duration) -> Self {
        Root { grace, ..self }
    }

    /// How long the runtime's shutdown may block at the very end (tasks outside any nursery).
    pub fn shutdown_bound(self, bound: Duration) -> Self {
        Root {
            shutdown_bound: bound,
            ..self
        }
    }

    /// Uses a current-thread runtime.
    pub fn current_thread(self) -> Self {
        Root {
            multi_thread: false,
            ..self
        }
    }

    /// Whether Ctrl-C and SIGTERM start the shutdown (default: with the `signal` feature).
    /// A signal during the shutdown (a second one, or the first after `main` returned)
    /// aborts what is still running and stops waiting for protected work; a signal while the
    /// root waits for orphans (nurseries dropped in wait mode with nowhere else to go,
    /// protected work outside any nursery) stops that wait.
    pub fn handle_signals(self, signals: bool) -> Self {
        Root { signals, ..self }
    }

    /// Where the root's [`Report`]s go: what its nursery reports (SPEC N6, N9) and, at the
    /// end, what the shutdown had to cut short ([`Report::ShutdownCutShort`]: the children
    /// it aborted, orphans it stopped waiting for). By default: a `tracing` event with the
    /// `tracing` feature (error-level; warn-level for the shutdown), a line on stderr
    /// without it.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// use tokio_nursery::{Cancelled, Report, Root};
    ///
    /// let aborted = Arc::new(Mutex::new(Vec::new()));
    /// let seen = aborted.clone();
    /// let outcome = Root::new()
    ///     .current_thread()
    ///     .handle_signals(false)
    ///     .grace(Duration::from_millis(10))
    ///     .on_report(move |report| {
    ///         if let Report::ShutdownCutShort { aborted, .. } = report {
    ///             seen.lock().unwrap().extend_from_slice(aborted);
    ///         }
    ///     })
    ///     .run(|n| async move {
    ///         // Never reaches a cancellation point: aborted when the grace runs out.
    ///         n.spawn_named("stuck", std::future::pending::<Result<(), Cancelled>>());
    ///         Ok::<_, Cancelled>("main done")
    ///     });
    /// assert_eq!(outcome.unwrap(), Some("main done"));
    /// assert_eq!(aborted.lock().unwrap().len(), 1);
    /// assert!(aborted.lock().unwrap()[0].starts_with("\"stuck\""));
    /// ```
    pub fn on_report(self, hook: impl Fn(&Report<'_>) + Send + Sync + 'static) -> Self {
        Root {
            hook: Some(Arc::new(hook)),
            ..self
        }
    }

    /// Builds the runtime and runs `body` in the root nursery until it and every child
    /// finished, following the shutdown sequence of [`Root`]. Returns the nursery's outcome.
    ///
    /// # Panics
    ///
    /// If the runtime cannot be built, if called from inside a tokio runtime (it builds its
    /// own and blocks on it), or if the `signal` feature is on and the signal handlers
    /// cannot be installed.
    pub fn run<B, Fut, T, E>(self, body: B) -> Result<Option<T>, NurseryError<E>>
    where
        B: FnOnce(NurseryHandle<E>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: CancelError + fmt::Debug + Send + 'static,
    {
        // Said here, before a runtime exists: tokio's own panic would come from `block_on`,
        // and the runtime's shutdown inside another runtime would panic anew over it.
        assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "tokio-nursery: Root::run was called inside a tokio runtime; it builds and owns \
             its own: call it from a plain `fn main` (not `#[tokio::main]`, not a task)"
        );
        let mut builder = if self.multi_thread {
            #[cfg(feature = "rt-multi-thread")]
            {
                tokio::runtime::Builder::new_multi_thread()
            }
            #[cfg(not(feature = "rt-multi-thread"))]
            unreachable!("multi_thread is only set with the rt-multi-thread feature")
        } else {
            tokio::runtime::Builder::new_current_thread()
        };
        let runtime = builder
            .enable_all()
            .build()
            .expect("tokio-nursery: building the root's runtime failed");
        // A panic resumed by the root nursery (`main`'s, a child's) still gets the bounded
        // shutdown: dropping the runtime instead waits for its blocking pool without a bound.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(self.serve(body))
        }));
        runtime.shutdown_timeout(self.shutdown_bound);
        outcome.unwrap_or_else(|payload| std::panic::resume_unwind(payload))
    }

    /// The root nursery and its shutdown sequence, inside the runtime.
    async fn serve<B, Fut, T, E>(&self, body: B) -> Result<Option<T>, NurseryError<E>>
    where
        B: FnOnce(NurseryHandle<E>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: CancelError + fmt::Debug + Send + 'static,
    {
        let root: Arc<Mutex<Option<NurseryHandle<E>>>> = Arc::default();
        let slot = root.clone();
        // Told when the grace after a shutdown signal ran out with `main` still running.
        let cut_main = Arc::new(Notify::new());
        let cut = cut_main.clone();
        // Set when `main` returned by itself: the shutdown has begun, and the next signal
        // is the one that cuts it short.
        let main_returned = Arc::new(AtomicBool::new(false));
        let returned = main_returned.clone();
        let nursery = Nursery::new()
            .name("root")
            .grace(self.grace)
            .keep_tree_at_grace_expiry()
            .report_hook(self.hook.clone())
            .run(move |n: NurseryHandle<E>| {
                *lock(&slot) = Some(n.clone());
                async move {
                    let outcome = match select(pin!(body(n.clone())), pin!(cut.notified())).await {
                        Either::Left((outcome, _)) => {
                            returned.store(true, Ordering::Release);
                            outcome
                        }
                        // Dropped, as the root's children are aborted (SPEC N13): `main`
                        // ends with the shutdown's cancellation.
                        Either::Right(((), _)) => {
                            Err(E::from(crate::scope::cancelled_here(&n.scope().node)))
                        }
                    };
                    // `main` returned: everything else is cancelled (SPEC N13).
                    n.scope().cancel_because(CancelReason::Shutdown);
                    outcome
                }
            });
        let mut nursery = pin!(nursery);
        let mut received = 0;
        // Reports what was aborted also when a panic is resumed through here.
        let mut cut_short = CutShort {
            root: &root,
            main_cut: false,
            second_signal: None,
            orphans_aborted: Vec::new(),
            orphans_left: 0,
            tree: None,
            reported: false,
        };
        // Installed once: a signal arriving while the loop goes round is not missed.
        let mut signals = Signals::install(self.signals);
        // Runs from the first signal: when it ends, `main` is dropped if it still runs.
        let mut grace = None;
        // The grace ran out while a parallel borrowing scope ran in `main` (SPEC B2): `main`
        // is dropped once that scope has ended (its end wakes this task).
        let mut cut_put_off = false;
        let outcome = loop {
            let signal = pin!(signals.next());
            let grace_over = pin!(async {
                match &mut grace {
                    Some(sleep) => sleep.await,
                    None if cut_put_off => {
                        std::future::poll_fn(|_| match main_exempt(&root) {
                            true => Poll::Pending,
                            false => Poll::Ready(()),
                        })
                        .await
                    }
                    None => std::future::pending().await,
                }
            });
            match select(nursery.as_mut(), select(signal, grace_over)).await {
                Either::Left((outcome, _)) => break outcome,
                Either::Right((Either::Right(((), _)), _)) => {
                    // The grace ran out: the nursery aborted its children; `main` goes too,
                    // unless a parallel borrowing scope runs in it (SPEC B2: the crate never
                    // drops one), then once it ended. Protected work is still waited for,
                    // until a signal.
                    grace = None;
                    // `main` returned by itself meanwhile: nothing to cut (nor to report),
                    // nor a put-off cut left to wait for (`grace_over` would be ready again
                    // at once, and the loop spin).
                    if main_returned.load(Ordering::Acquire) {
                        cut_put_off = false;
                        continue;
                    }
                    cut_put_off = defer_cut(&root);
                    if cut_put_off {
                        continue;
                    }
                    #[cfg(feature = "tracing")]
                    tracing::warn!("the shutdown's grace period ran out: dropping main");
                    if let Some(handle) = lock(&root).clone() {
                        cut_short.keep_tree(&handle);
                    }
                    cut_short.main_cut = true;
                    cut_main.notify_one();
                }
                Either::Right((Either::Left(((), _)), _)) => {
                    received += 1;
                    let Some(handle) = lock(&root).clone() else {
                        continue;
                    };
                    if received == 1 && !main_returned.load(Ordering::Acquire) {
                        #[cfg(feature = "tracing")]
                        tracing::info!("shutdown signal: cancelling everything");
                        // The signal's work, on nobody's behalf: a waker's panic at this
                        // cancellation must not cost the grace and the reports.
                        crate::nursery::catch_waker_panic(
                            || "when a shutdown signal cancelled everything".into(),
                            || handle.scope().cancel_because(CancelReason::Shutdown),
                        );
                        grace = Some(Box::pin(tokio::time::sleep(self.grace)));
                    } else {
                        // A second signal, or one after `main` returned (the shutdown had
                        // begun): stop waiting, even for protected work (C1).
                        #[cfg(feature = "tracing")]
                        tracing::warn!(
                            "shutdown signal during the shutdown: aborting what is still \
                             running and abandoning protected work"
                        );
                        cut_short.keep_tree(&handle);
                        // Those the grace aborted already, then those aborted now.
                        let mut aborted = handle.aborted_children().to_vec();
                        for name in handle.abort_named() {
                            if !aborted.contains(&name) {
                                aborted.push(name);
                            }
                        }
                        handle.report_incidents();
                        // `main` goes with the nursery's future if it still runs: named as
                        // the grace's end names it (it was not named, and with no child a
                        // report was not made at all).
                        cut_short.main_cut |= !main_returned.load(Ordering::Acquire);
                        let abandoned = handle.adoptees();
                        let cancelled = crate::scope::cancelled_here(&handle.scope().node)
                            .with_aborted(aborted.clone());
                        cut_short.second_signal = Some((aborted, abandoned));
                        break Err(NurseryError::Cancelled(cancelled));
                    }
                }
            }
        };
        // Nurseries dropped in wait mode with nowhere else to go, protected work outside any
        // nursery: waited for as the root nursery waits for its children (up to the grace
        // period, then what can be aborted is, and protected work is waited for until it
        // ends), a wait a signal ends; none after a second signal.
        let finished = match cut_short.second_signal {
            None => {
                let graced = pin!(async {
                    if tokio::time::timeout(self.grace, orphans_finished())
                        .await
                        .is_err()
                    {
                        cut_short.orphans_aborted = stop_orphans();
                        orphans_finished().await;
                    }
                });
                match select(graced, pin!(signals.next())).await {
                    Either::Left(((), _)) => true,
                    Either::Right(((), _)) => {
                        #[cfg(feature = "tracing")]
                        tracing::warn!("shutdown signal: no longer waiting for orphans");
                        false
                    }
                }
            }
            Some(_) => tokio::time::timeout(Duration::ZERO, orphans_finished())
                .await
                .is_ok(),
        };
        if !finished {
            cut_short.orphans_left = orphan_count();
        }
        cut_short.report();
        outcome
    }
}

/// Whether a parallel borrowing scope runs in `main` (it exempts the root's scope).
fn main_exempt<E>(root: &Mutex<Option<NurseryHandle<E>>>) -> bool {
    root_scope(root).is_some_and(|node| node.is_exempt())
}

/// Puts off cutting `main` if a parallel borrowing scope runs in it (true).
fn defer_cut<E>(root: &Mutex<Option<NurseryHandle<E>>>) -> bool {
    root_scope(root).is_some_and(|node| node.defer_if_exempt())
}

fn root_scope<E>(root: &Mutex<Option<NurseryHandle<E>>>) -> Option<Arc<crate::node::Node>> {
    lock(root).as_ref().map(|handle| handle.scope().node)
}

impl Default for Root {
    fn default() -> Self {
        Self::new()
    }
}

/// What the root's shutdown cut short, reported once at its end ([`Report::ShutdownCutShort`]),
/// or while a panic resumed by the root nursery unwinds through it.
struct CutShort<'a, E> {
    root: &'a Mutex<Option<NurseryHandle<E>>>,
    /// The grace after a shutdown signal ran out with `main` still running: it was dropped.
    main_cut: bool,
    /// At a signal during the shutdown: what it aborted, how many adoptees it abandoned.
    second_signal: Option<(Vec<String>, usize)>,
    /// What the grace for the orphans aborted when it ran out.
    orphans_aborted: Vec<String>,
    orphans_left: usize,
    /// The root's tree, taken by the root itself when it cut the shutdown short before the
    /// root nursery's grace ran out (which keeps its own: `tree_at_grace_expiry`).
    tree: Option<TaskTree>,
    reported: bool,
}

impl<E> CutShort<'_, E> {
    /// Reports once, if anything was cut short.
    fn report(&mut self) {
        if std::mem::replace(&mut self.reported, true) {
            return;
        }
        let Some(handle) = lock(self.root).clone() else {
            return;
        };
        let (aborted, abandoned) = match &self.second_signal {
            Some((aborted, abandoned)) => (aborted.as_slice(), *abandoned),
            None => (handle.aborted_children(), 0),
        };
        let root_cut = self.main_cut || !aborted.is_empty() || abandoned > 0;
        let mut named = Vec::new();
        if self.main_cut {
            named.push("main".to_string());
        }
        named.extend_from_slice(aborted);
        named.extend_from_slice(&self.orphans_aborted);
        if named.is_empty() && abandoned == 0 && self.orphans_left == 0 {
            return;
        }
        // The first taken: the root's own, or the nursery's at its grace's end; none when
        // only the orphans were cut short (the root's tree does not hold them).
        let tree = match root_cut {
            true => self.tree.as_ref().or_else(|| handle.tree_at_grace_expiry()),
            false => None,
        };
        handle.report(&Report::ShutdownCutShort {
            aborted: &named,
            abandoned,
            orphans_left: self.orphans_left,
            second_signal: self.second_signal.is_some(),
            tree,
        });
    }

    /// Keeps the root's tree as it stands now, before the root cuts anything, unless one
    /// was taken already (the first cut is the one the report shows).
    fn keep_tree(&mut self, handle: &NurseryHandle<E>) {
        if self.tree.is_none() && handle.tree_at_grace_expiry().is_none() {
            self.tree = Some(TaskTree::of(&handle.scope()));
        }
    }
}

impl<E> Drop for CutShort<'_, E> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.report();
        }
    }
}

/// Ctrl-C and SIGTERM, listened to from when the root starts.
struct Signals {
    #[cfg(all(feature = "signal", unix))]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
    #[cfg(not(all(feature = "signal", unix)))]
    enabled: bool,
}

impl Signals {
    fn install(enabled: bool) -> Signals {
        #[cfg(all(feature = "signal", unix))]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let install = |kind: SignalKind| {
                signal(kind).expect("tokio-nursery: installing a signal handler failed")
            };
            Signals {
                unix: enabled.then(|| {
                    (
                        install(SignalKind::interrupt()),
                        install(SignalKind::terminate()),
                    )
                }),
            }
        }
        #[cfg(not(all(feature = "signal", unix)))]
        Signals { enabled }
    }

    /// Completes on the next Ctrl-C or SIGTERM; never when signals are not handled.
    async fn next(&mut self) {
        #[cfg(all(feature = "signal", unix))]
        if let Some((interrupt, terminate)) = &mut self.unix {
            let _ = select(pin!(interrupt.recv()), pin!(terminate.recv())).await;
            return;
        }
        #[cfg(all(feature = "signal", not(unix)))]
        if self.enabled {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
        #[cfg(not(feature = "signal"))]
        let _ = self.enabled;
        std::future::pending::<()>().await
    }
}
