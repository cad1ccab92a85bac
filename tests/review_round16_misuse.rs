//! Review round 16: misuse and bad input.
//!
//! The standard: misuse and bad input get a clear error (or a documented panic with a clear
//! message where the API contract makes it a bug), never a hang, a silent loss of a child, an
//! error or a panic payload. Each probe names the misuse it tries. Hangs are bounded: under
//! the paused clock by a tokio timeout far beyond anything the probe needs (it auto-advances
//! to it only when everything is stuck), on real threads by a generous wall-clock bound.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;
use tokio_nursery::{
    CancelError, CancelScope, Cancelled, ChildHandle, DropMode, JoinError, Nursery, NurseryError,
    NurseryHandle, Ready, Root, SpawnError, StartError, cancelled, checkpoint, current_deadline,
    current_scope, local_scope, move_on_after, nursery, panic_message, sleep,
};

const HOUR: Duration = Duration::from_secs(3600);
/// Wall-clock hang bound for probes on real threads.
const HANG_BOUND: Duration = Duration::from_secs(20);

/// Under the paused clock: fails the test if `future` is still pending after a day (the
/// clock only gets there when everything is stuck).
async fn no_hang<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(24 * HOUR, future)
        .await
        .unwrap_or_else(|_| panic!("hang: {what}"))
}

/// Runs `test` on a thread of its own, failing past [`HANG_BOUND`] of real time.
fn on_thread_bounded<R: Send + 'static>(
    what: &str,
    test: impl FnOnce() -> R + Send + 'static,
) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(test)));
    });
    match rx.recv_timeout(HANG_BOUND) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("hang: {what} (still running after {HANG_BOUND:?})"),
    }
}

fn message(payload: &(dyn Any + Send)) -> String {
    panic_message(payload)
        .map(str::to_string)
        .unwrap_or_else(|| "<not a string>".to_string())
}

/// A panic payload that is not a string, to tell the original panic from any other.
#[derive(Debug, PartialEq)]
struct Original(u32);

/// An error type whose `Debug` panics for one variant (a user bug the crate must survive:
/// the crate formats errors it reports).
enum DebugBomb {
    Cancelled(Cancelled),
    Bomb,
}

impl fmt::Debug for DebugBomb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DebugBomb::Cancelled(c) => f.debug_tuple("Cancelled").field(c).finish(),
            DebugBomb::Bomb => panic!("the error's Debug panicked"),
        }
    }
}

impl From<Cancelled> for DebugBomb {
    fn from(c: Cancelled) -> Self {
        DebugBomb::Cancelled(c)
    }
}

impl CancelError for DebugBomb {
    fn as_cancelled(&self) -> Option<&Cancelled> {
        match self {
            DebugBomb::Cancelled(c) => Some(c),
            DebugBomb::Bomb => None,
        }
    }
}

/// An error type whose value panics when dropped (a naive user type: it does not look at
/// `std::thread::panicking`).
#[derive(Debug)]
enum DropBomb {
    Cancelled(Cancelled),
    Bomb(Armed),
}

#[derive(Debug)]
struct Armed;

impl Drop for Armed {
    fn drop(&mut self) {
        panic!("the error's Drop panicked");
    }
}

impl From<Cancelled> for DropBomb {
    fn from(c: Cancelled) -> Self {
        DropBomb::Cancelled(c)
    }
}

impl CancelError for DropBomb {
    fn as_cancelled(&self) -> Option<&Cancelled> {
        match self {
            DropBomb::Cancelled(c) => Some(c),
            DropBomb::Bomb(_) => None,
        }
    }
}

/// A cancellation reason whose drop panics (unless already unwinding: this probe looks for
/// hangs and lost outcomes, not for aborts).
struct ReasonBomb(Arc<AtomicBool>);

impl Drop for ReasonBomb {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
        if !std::thread::panicking() {
            panic!("the reason's Drop panicked");
        }
    }
}

/// Lets every other ready task run (current_thread).
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

// ---------------------------------------------------------------------------------------
// Handles awaited from the wrong place.
// ---------------------------------------------------------------------------------------

/// Misuse: a nursery child awaits its own `ChildHandle` (passed to it through a channel). It
/// could never finish. `local_scope` panics with "awaited its own handle" for the same
/// misuse (`LocalHandle`, src/local.rs); a nursery child should get a clear panic or error
/// too, not wait for ever.
#[tokio::test(start_paused = true)]
async fn n02_a_child_awaiting_its_own_handle_is_told_not_left_waiting_for_ever() {
    let (tx, rx) = tokio::sync::oneshot::channel::<ChildHandle<u32>>();
    let run = nursery(|n: NurseryHandle<Cancelled>| async move {
        let handle = n.spawn(async move {
            let me = rx.await.expect("its own handle");
            Ok::<_, Cancelled>(me.await.unwrap_or(0))
        });
        tx.send(handle).expect("the child waits for it");
        Ok(())
    });
    let outcome = tokio::time::timeout(HOUR, AssertUnwindSafe(run).catch_unwind()).await;
    let outcome = outcome.expect(
        "hang: a nursery child awaiting its own ChildHandle waits for ever (local_scope panics \
         with a clear message for the same misuse)",
    );
    if let Err(payload) = outcome {
        let text = message(&*payload);
        assert!(text.contains("own handle"), "unclear panic: {text}");
    }
}

/// Misuse: a local child awaits a sibling's handle that the body handed it, and the body
/// then drops that sibling's handle: no hang, the sibling's value is still delivered.
/// (Control for the probe above: awaiting another child's handle is fine.)
#[tokio::test(start_paused = true)]
async fn b1_a_local_child_awaiting_a_siblings_handle_gets_its_value() {
    let out = no_hang(
        "local sibling join",
        local_scope(async |s| {
            let first = s.spawn(async {
                sleep(Duration::from_millis(5)).await?;
                Ok::<_, Cancelled>(7)
            });
            let second = s.spawn(async move { Ok::<_, Cancelled>(first.await.unwrap() + 1) });
            Ok::<_, Cancelled>(second.await.unwrap())
        }),
    )
    .await;
    assert_eq!(out.unwrap(), Some(8));
}

// ---------------------------------------------------------------------------------------
// Errors whose Debug or Drop panics, reasons whose Drop panics.
// ---------------------------------------------------------------------------------------

/// Misuse: a child fails with an error whose `Debug` panics while a sibling's panic is the
/// one the nursery resumes. The failure goes to the default report hook, which formats it.
/// SPEC N6: "the earliest panic is resumed in the parent with its original payload"; a panic
/// in the user's `Debug` must not replace that payload.
#[tokio::test(start_paused = true)]
async fn n06_an_error_whose_debug_panics_does_not_replace_the_resumed_panic() {
    let run = nursery(|n: NurseryHandle<DebugBomb>| async move {
        n.spawn(async { std::panic::panic_any(Original(1)) as Result<(), DebugBomb> });
        n.spawn(async {
            // Fails once the sibling's panic cancelled it: not an echo, a failure.
            let _ = cancelled().await;
            Err::<(), _>(DebugBomb::Bomb)
        });
        Ok::<_, DebugBomb>(())
    });
    let outcome = no_hang("nursery", AssertUnwindSafe(run).catch_unwind()).await;
    let Err(payload) = outcome else {
        panic!("the child's panic was not resumed");
    };
    assert_eq!(
        payload.downcast_ref::<Original>(),
        Some(&Original(1)),
        "the original panic payload was replaced by {:?}",
        message(&*payload)
    );
}

/// The same misuse in a `local_scope` (its own report path).
#[tokio::test(start_paused = true)]
async fn b1_an_error_whose_debug_panics_does_not_replace_the_resumed_panic_in_a_local_scope() {
    let run = local_scope(async |s| {
        s.spawn(async { std::panic::panic_any(Original(2)) as Result<(), DebugBomb> });
        s.spawn(async {
            let _ = cancelled().await;
            Err::<(), _>(DebugBomb::Bomb)
        });
        Ok::<_, DebugBomb>(())
    });
    let outcome = no_hang("local scope", AssertUnwindSafe(run).catch_unwind()).await;
    let Err(payload) = outcome else {
        panic!("the child's panic was not resumed");
    };
    assert_eq!(
        payload.downcast_ref::<Original>(),
        Some(&Original(2)),
        "the original panic payload was replaced by {:?}",
        message(&*payload)
    );
}

/// Control: without a panic to resume, a failure whose `Debug` panics is returned (never
/// formatted by the crate): no panic at all.
#[tokio::test(start_paused = true)]
async fn n04_an_error_whose_debug_panics_is_returned_untouched() {
    let out = no_hang(
        "nursery",
        nursery(|n: NurseryHandle<DebugBomb>| async move {
            n.spawn(async { Err::<(), _>(DebugBomb::Bomb) });
            Ok::<_, DebugBomb>(())
        }),
    )
    .await;
    match out {
        Err(NurseryError::Failed(failures)) => {
            assert_eq!(failures.len(), 1);
            assert!(matches!(failures[0].error(), DebugBomb::Bomb));
        }
        Err(NurseryError::Cancelled(_)) => panic!("cancelled"),
        Ok(_) => panic!("the failure was lost"),
    }
}

/// Environment variable that makes the subprocess probes run their body.
const SUBPROCESS: &str = "TOKIO_NURSERY_R16_SUBPROCESS";

/// Runs the test `name` of this binary in a subprocess (its body may abort the process) and
/// returns whether it exited successfully, with its stderr.
fn run_in_subprocess(name: &str) -> (bool, String) {
    let exe = std::env::current_exe().expect("the test binary");
    let output = std::process::Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(SUBPROCESS, "1")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run the test binary");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The body of the probe below, run in a subprocess: a child panics, a sibling fails with an
/// error whose drop panics. The nursery resumes the panic; the failures it holds must not be
/// dropped while that panic unwinds (a panic during unwinding aborts the process).
#[tokio::test(start_paused = true)]
async fn subprocess_body_failure_with_a_panicking_drop_beside_a_resumed_panic() {
    if std::env::var_os(SUBPROCESS).is_none() {
        return;
    }
    let run = Nursery::new()
        .on_report(|_| {}) // the failure reaches the hook; nothing to print
        .run(|n: NurseryHandle<DropBomb>| async move {
            n.spawn(async { std::panic::panic_any(Original(3)) as Result<(), DropBomb> });
            n.spawn(async {
                let _ = cancelled().await;
                Err::<(), _>(DropBomb::Bomb(Armed))
            });
            Ok::<_, DropBomb>(())
        });
    let outcome = no_hang("nursery", AssertUnwindSafe(run).catch_unwind()).await;
    let Err(payload) = outcome else {
        panic!("the child's panic was not resumed");
    };
    assert_eq!(payload.downcast_ref::<Original>(), Some(&Original(3)));
}

/// Misuse: an error whose `Drop` panics, held by the nursery when it resumes a sibling's
/// panic (SPEC N6). Expected: the original payload reaches the parent and the process lives
/// on. The crate drops its list of failures while unwinding from `resume_unwind`, so the
/// user's panicking drop aborts the process.
#[test]
fn n06_an_error_whose_drop_panics_does_not_abort_the_process_when_a_panic_is_resumed() {
    if std::env::var_os(SUBPROCESS).is_some() {
        return;
    }
    let (ok, stderr) =
        run_in_subprocess("subprocess_body_failure_with_a_panicking_drop_beside_a_resumed_panic");
    assert!(
        ok,
        "the process died (a panic while unwinding aborts): {}",
        stderr
            .lines()
            .filter(|l| {
                !l.is_empty()
                    && !l.starts_with(' ')
                    && !l.starts_with("thread ")
                    && !l.starts_with("note:")
                    && !l.starts_with("stack backtrace")
            })
            .collect::<Vec<_>>()
            .join(" | ")
    );
}

/// Misuse: a nursery's scope cancelled with user data whose `Drop` panics. The payload lives
/// in the scope's node and in every `Cancelled` raised for it, and its last copy goes
/// wherever the crate drops it. Expected: no hang, no lost child; the nursery absorbs its
/// cancellation (or the user's panic surfaces, clearly the user's).
#[tokio::test(start_paused = true)]
async fn s04_a_reason_whose_drop_panics_does_not_hang_or_lose_a_child() {
    let dropped = Arc::new(AtomicBool::new(false));
    let seen = dropped.clone();
    let ended = Arc::new(AtomicUsize::new(0));
    let counted = ended.clone();
    let run = nursery(move |n: NurseryHandle<Cancelled>| async move {
        for _ in 0..3 {
            let counted = counted.clone();
            // Handles dropped at once: the children's cells are the crate's alone.
            drop(n.spawn(async move {
                let cancelled = cancelled().await;
                counted.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(cancelled)
            }));
        }
        settle().await;
        n.scope().cancel_with(ReasonBomb(seen));
        Err::<(), _>(cancelled().await)
    });
    let mut run = Box::pin(run);
    let outcome = no_hang("nursery", AssertUnwindSafe(run.as_mut()).catch_unwind()).await;
    match outcome {
        Ok(out) => assert!(matches!(out, Ok(None)), "{out:?}"),
        Err(payload) => {
            let text = message(&*payload);
            assert!(text.contains("reason's Drop"), "unexpected panic: {text}");
        }
    }
    assert_eq!(ended.load(Ordering::SeqCst), 3, "a child was lost");
    // The last copy of the reason may go with the nursery's future: the user's panic then
    // surfaces where the user drops it, which is fine.
    if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(|| drop(run))) {
        let text = message(&*payload);
        assert!(text.contains("reason's Drop"), "unexpected panic: {text}");
    }
    settle().await;
    assert!(
        dropped.load(Ordering::SeqCst),
        "the reason was never dropped"
    );
}

/// The same, for a child cancelling its own scope with such data and returning the echo.
#[tokio::test(start_paused = true)]
async fn s04_a_child_cancelling_its_own_scope_with_a_reason_whose_drop_panics() {
    let dropped = Arc::new(AtomicBool::new(false));
    let seen = dropped.clone();
    let run = nursery(move |n: NurseryHandle<Cancelled>| async move {
        let child = n.spawn(async move {
            current_scope()
                .expect("a child runs in a scope")
                .cancel_with(ReasonBomb(seen));
            checkpoint().await?;
            Ok::<_, Cancelled>(())
        });
        let joined = child.await;
        assert!(
            matches!(joined, Err(JoinError::ChildCancelled)),
            "{joined:?}"
        );
        Ok::<_, Cancelled>(())
    });
    let mut run = Box::pin(run);
    let outcome = no_hang("nursery", AssertUnwindSafe(run.as_mut()).catch_unwind()).await;
    match outcome {
        Ok(out) => assert!(matches!(out, Ok(Some(()))), "{out:?}"),
        Err(payload) => {
            let text = message(&*payload);
            assert!(text.contains("reason's Drop"), "unexpected panic: {text}");
        }
    }
    if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(|| drop(run))) {
        let text = message(&*payload);
        assert!(text.contains("reason's Drop"), "unexpected panic: {text}");
    }
    settle().await;
    assert!(
        dropped.load(Ordering::SeqCst),
        "the reason was never dropped"
    );
}

// ---------------------------------------------------------------------------------------
// Scopes moved to another task.
// ---------------------------------------------------------------------------------------

type Moved = Pin<Box<dyn Future<Output = Result<Option<()>, Cancelled>> + Send>>;

/// Polls `scope_future` once inside a nursery's body (so it is entered under the nursery's
/// scope), hands it to a plain tokio task, cancels the nursery and returns what the moved
/// future gave and when.
async fn enter_here_then_move(scope_future: Moved) -> (Result<Option<()>, Cancelled>, Instant) {
    let (tx, rx) = tokio::sync::oneshot::channel::<Moved>();
    let mover = tokio::spawn(async move {
        let moved = rx.await.expect("the scope future");
        (moved.await, Instant::now())
    });
    let out = nursery(|n: NurseryHandle<Cancelled>| async move {
        let mut entered = scope_future;
        assert!(futures::poll!(entered.as_mut()).is_pending());
        tx.send(entered).ok().expect("the mover waits");
        n.cancel();
        // A plain JoinHandle: not a cancellation point; the nursery stays open meanwhile.
        let moved = mover.await.expect("the mover task");
        Ok::<_, Cancelled>(moved)
    })
    .await;
    out.expect("the nursery's outcome")
        .expect("the body returned a value")
}

/// Misuse: a `CancelScope`'s future entered under a nursery's scope, then moved to another
/// task (boxed) and polled there. SPEC S1: a scope entered while another is current is its
/// child; the nursery's cancellation reaches its body at once and passes outwards.
#[tokio::test(start_paused = true)]
async fn s01_a_cancel_scope_moved_to_another_task_stays_under_the_scope_it_was_entered_in() {
    let start = Instant::now();
    let scope = CancelScope::new().run(async {
        sleep(2 * HOUR).await?;
        Ok::<_, Cancelled>(())
    });
    let (moved, at) = no_hang("moved scope", enter_here_then_move(Box::pin(scope))).await;
    assert!(
        moved.is_err(),
        "not reached by the nursery's cancellation: {moved:?}"
    );
    assert_eq!(at, start, "the cancellation reached it only later");
}

/// The same move with a helper scope (`move_on_after`). A helper scope that waits without a
/// node of its own looks for its enclosing scope in whatever task polls it, so once moved it
/// no longer sees the scope it was entered in: the nursery's cancellation does not reach its
/// body, which runs until its own deadline an hour later. Unlike the `CancelScope` above;
/// documented in `timeout.rs` and DESIGN ("Helper scopes that wait without a node").
#[tokio::test(start_paused = true)]
async fn s01_a_helper_scope_moved_to_another_task_keeps_only_its_own_deadline_as_documented() {
    let start = Instant::now();
    let scope = move_on_after(HOUR, async {
        sleep(2 * HOUR).await?;
        Ok::<_, Cancelled>(())
    });
    let (moved, at) = no_hang("moved helper scope", enter_here_then_move(Box::pin(scope))).await;
    // A documented limitation (timeout.rs): a helper scope that waits without a node hears
    // the scope current where it is polled, here the mover task's (none). If this starts
    // failing because the nursery's cancellation now reaches it, update the docs and DESIGN.
    assert_eq!(moved.unwrap(), None, "ended by its own deadline");
    assert_eq!(at, start + HOUR);
}

// ---------------------------------------------------------------------------------------
// Concurrency limits.
// ---------------------------------------------------------------------------------------

/// Misuse: a concurrency limit of zero (nothing could ever run). Documented panic, at
/// configuration, with a message saying what is wrong.
#[test]
fn n11_a_limit_of_zero_panics_at_once_with_a_clear_message() {
    let payload = std::panic::catch_unwind(|| Nursery::new().limit(0)).expect_err("limit(0)");
    let text = message(&*payload);
    assert!(
        text.contains("limit") && text.contains("at least one"),
        "{text}"
    );
}

/// Misuse: a blocking child of a full nursery (limit 1, the slot is its own) waits for a slot
/// of that nursery through `Handle::block_on(spawn_when_free)`. SPEC N11: an error or
/// documented behaviour, not a silent deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n11_a_blocking_child_waiting_for_a_slot_of_its_own_full_nursery_gets_full() {
    let out = tokio::time::timeout(
        HANG_BOUND,
        Nursery::new()
            .limit(1)
            .run(|n: NurseryHandle<Cancelled>| async move {
                let inner = n.clone();
                let runtime = tokio::runtime::Handle::current();
                let child = n.spawn_blocking(move |_| {
                    let asked = runtime.block_on(inner.spawn_when_free(async { Ok(()) }));
                    Ok::<_, Cancelled>(asked.map(drop))
                });
                Ok::<_, Cancelled>(child.await.expect("the blocking child's value"))
            }),
    )
    .await
    .expect("hang: a blocking child waits for its own slot");
    let asked = out.unwrap().unwrap();
    assert!(matches!(asked, Err(SpawnError::Full)), "{asked:?}");
}

// ---------------------------------------------------------------------------------------
// Grace periods and deadlines at the edges.
// ---------------------------------------------------------------------------------------

/// Bad input: a grace period of zero. Cancelling the nursery aborts its children at once
/// (not a failure), names them, and never hangs, even for a child that would take a while.
#[tokio::test(start_paused = true)]
async fn n07_a_zero_grace_aborts_at_once_without_a_failure_or_a_hang() {
    let mut kept = None;
    let slot = &mut kept;
    let start = Instant::now();
    let out = no_hang(
        "zero grace",
        Nursery::new()
            .grace(Duration::ZERO)
            .run(|n: NurseryHandle<Cancelled>| {
                *slot = Some(n.clone());
                async move {
                    n.spawn_named("slow", async {
                        let cancelled = cancelled().await;
                        tokio::time::sleep(HOUR).await; // cleanup that is not a cancellation point
                        Err::<(), _>(cancelled)
                    });
                    settle().await;
                    n.cancel();
                    Err::<(), _>(cancelled().await)
                }
            }),
    )
    .await;
    assert!(matches!(out, Ok(None)), "{out:?}");
    assert_eq!(Instant::now(), start, "a zero grace waited");
    let aborted = kept.unwrap().aborted_children().to_vec();
    assert_eq!(aborted.len(), 1, "{aborted:?}");
    assert!(aborted[0].contains("slow"), "{aborted:?}");
}

/// Bad input: `Duration::MAX` as a grace, a timeout, and an instant a century away as a
/// deadline: no overflow panic; the nursery works as without them.
#[tokio::test(start_paused = true)]
async fn n07_duration_max_grace_and_far_deadlines_do_not_overflow() {
    let far = Instant::now() + Duration::from_secs(100 * 365 * 86_400);
    for config in [
        Nursery::new().grace(Duration::MAX),
        Nursery::new().timeout(Duration::MAX),
        Nursery::new().deadline(far),
        Nursery::new()
            .grace(Duration::MAX)
            .timeout(Duration::MAX)
            .warn_unobserved_after(Some(Duration::MAX)),
    ] {
        let out = no_hang(
            "far limits",
            config.run(|n: NurseryHandle<Cancelled>| async move {
                let child = n.spawn(async {
                    assert!(!current_deadline().has_passed());
                    Err::<(), _>(cancelled().await)
                });
                settle().await;
                n.cancel();
                let _ = child.await;
                Err::<(), _>(cancelled().await)
            }),
        )
        .await;
        assert!(matches!(out, Ok(None)), "{out:?}");
    }
    // A scope whose deadline is a century away reads it back; one in the past is cancelled
    // at once.
    let scope = CancelScope::new().with_deadline(far);
    let handle = scope.handle();
    let out = scope
        .run(async { Ok::<_, Cancelled>(current_deadline().remaining()) })
        .await;
    assert!(out.unwrap().unwrap().unwrap() > Duration::from_secs(99 * 365 * 86_400));
    assert_eq!(handle.deadline(), Some(far));
    let past = Instant::now() - Duration::from_secs(1);
    let out = Nursery::new()
        .deadline(past)
        .run(|n: NurseryHandle<Cancelled>| async move {
            let child = n.spawn(async { checkpoint().await });
            // The body's own scope is cancelled too: joining may report that instead.
            let joined = child.await;
            assert!(
                matches!(
                    joined,
                    Err(JoinError::ChildCancelled | JoinError::Cancelled(_))
                ),
                "{joined:?}"
            );
            checkpoint().await?;
            Ok::<_, Cancelled>(())
        })
        .await;
    assert!(matches!(out, Ok(None)), "{out:?}");
}

/// Bad input: `DropMode::BlockingWait` with `Duration::MAX` as its grace, dropped on a
/// multi-thread runtime while a child is still stopping: no overflow in the wall-clock bound;
/// the drop waits for the child and returns.
#[test]
fn n9b_blocking_wait_with_a_duration_max_grace_does_not_overflow() {
    on_thread_bounded("blocking-wait drop with Duration::MAX", || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let stopped = Arc::new(AtomicBool::new(false));
        let flag = stopped.clone();
        runtime.block_on(async move {
            let (running_tx, running_rx) = tokio::sync::oneshot::channel();
            let mut fut = Box::pin(
                Nursery::new()
                    .drop_mode(DropMode::BlockingWait)
                    .grace(Duration::MAX)
                    .run(|n: NurseryHandle<Cancelled>| async move {
                        n.spawn(async move {
                            let _ = running_tx.send(());
                            let cancelled = cancelled().await;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            flag.store(true, Ordering::SeqCst);
                            Err::<(), _>(cancelled)
                        });
                        Err::<(), _>(cancelled().await)
                    }),
            );
            tokio::select! {
                _ = fut.as_mut() => unreachable!(),
                _ = running_rx => {}
            }
            drop(fut);
        });
        assert!(
            stopped.load(Ordering::SeqCst),
            "the drop did not wait for the child"
        );
    });
}

/// Misuse: a `DropMode::BlockingWait` nursery's future dropped by code running in one of its
/// own children (the future kept in a shared slot, taken and dropped by a child). The drop
/// waits for every child to stop, the dropping one included, which cannot stop while it
/// blocks: a self-wait only the grace period ends (then the child that dropped it is
/// aborted). Blocking cannot help here, so N9b's fallback to wait mode applies: the drop
/// should return at once. (`parallel_scope_async` detects the same situation.)
#[test]
fn n9b_blocking_wait_dropped_inside_its_own_child_does_not_wait_out_the_grace() {
    const GRACE: Duration = Duration::from_secs(6);
    type Slot = Arc<Mutex<Option<Pin<Box<dyn Future<Output = ()> + Send>>>>>;
    let took = on_thread_bounded("blocking-wait drop inside its own child", || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let slot: Slot = Arc::default();
            let (took_tx, took_rx) = tokio::sync::oneshot::channel();
            let in_child = slot.clone();
            let fut = Nursery::new()
                .drop_mode(DropMode::BlockingWait)
                .grace(GRACE)
                .run(move |n: NurseryHandle<Cancelled>| async move {
                    n.spawn(async move {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let taken = in_child.lock().unwrap().take();
                        let start = std::time::Instant::now();
                        drop(taken);
                        let _ = took_tx.send(start.elapsed());
                        Ok::<_, Cancelled>(())
                    });
                    Err::<(), _>(cancelled().await)
                });
            *slot.lock().unwrap() = Some(Box::pin(fut.map(drop)));
            // Polls the nursery through the slot until a child took it away and dropped it.
            let mut took_rx = took_rx;
            std::future::poll_fn(|cx| {
                if let std::task::Poll::Ready(took) = Pin::new(&mut took_rx).poll(cx) {
                    return std::task::Poll::Ready(took.expect("the child reports the drop"));
                }
                if let Some(fut) = slot.lock().unwrap().as_mut() {
                    let _ = fut.as_mut().poll(cx);
                }
                std::task::Poll::Pending
            })
            .await
        })
    });
    assert!(
        took < GRACE / 2,
        "the drop inside its own child blocked for {took:?} (grace {GRACE:?}): it waited for \
         itself"
    );
}

// ---------------------------------------------------------------------------------------
// Start.
// ---------------------------------------------------------------------------------------

/// Misuse: the started child hands its `Ready` to another task and returns at once; that task
/// signals afterwards. The start fails with `NoSignal` (the child returned without its
/// signal), the late `signal` is harmless (no panic, nothing moves), and the nursery ends.
#[tokio::test(start_paused = true)]
async fn n03_a_signal_after_the_started_child_returned_is_harmless() {
    let signalled = Arc::new(AtomicBool::new(false));
    let flag = signalled.clone();
    let out = no_hang(
        "start",
        nursery(|n: NurseryHandle<Cancelled>| async move {
            let late = tokio::spawn(async move {
                // Runs after the child returned (the child does not wait for it).
                tokio::time::sleep(Duration::from_millis(10)).await;
                flag.store(true, Ordering::SeqCst);
            });
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Ready<u32>>();
            let started = n
                .start(|ready: Ready<u32>| async move {
                    ready_tx.send(ready).expect("kept");
                    Ok::<_, Cancelled>(())
                })
                .await;
            let error = started.expect_err("returned without a signal");
            assert!(matches!(error, StartError::NoSignal), "{error:?}");
            assert!(error.to_string().contains("without signalling"), "{error}");
            late.await.unwrap();
            ready_rx.await.expect("the Ready").signal(5); // after the end: harmless
            Ok::<_, Cancelled>(())
        }),
    )
    .await;
    assert_eq!(out.unwrap(), Some(()));
    assert!(signalled.load(Ordering::SeqCst));
}

/// Misuse: the started child drops its `Ready` without signalling and keeps working. As
/// documented ("dropping it without signalling makes the start fail with `NoSignal` once the
/// child returns"), the caller waits for the child's return, then gets `NoSignal`; the
/// child's value is nobody's and nothing is reported as a failure.
#[tokio::test(start_paused = true)]
async fn n03_a_ready_dropped_unsignalled_fails_the_start_when_the_child_returns() {
    let start = Instant::now();
    let out = no_hang(
        "start",
        nursery(|n: NurseryHandle<Cancelled>| async move {
            let started = n
                .start(|ready: Ready<()>| async move {
                    drop(ready);
                    sleep(Duration::from_secs(5)).await?;
                    Ok::<_, Cancelled>(())
                })
                .await;
            assert!(matches!(started, Err(StartError::NoSignal)), "{started:?}");
            Ok::<_, Cancelled>(Instant::now())
        }),
    )
    .await;
    assert_eq!(out.unwrap().unwrap() - start, Duration::from_secs(5));
}

/// Misuse: a `Start` polled again after it completed: a panic that says so (not a hang).
#[tokio::test(start_paused = true)]
async fn n03_a_start_polled_after_completion_panics_clearly() {
    let out = nursery(|n: NurseryHandle<Cancelled>| async move {
        let mut start = Box::pin(n.start(|ready: Ready<u8>| async move {
            ready.signal(1);
            Ok::<_, Cancelled>(())
        }));
        assert_eq!(start.as_mut().await.unwrap(), 1);
        let again = AssertUnwindSafe(start.as_mut()).catch_unwind().await;
        let payload = again.expect_err("polled after completion");
        let text = message(&*payload);
        assert!(text.contains("after completion"), "{text}");
        Ok::<_, Cancelled>(())
    })
    .await;
    assert_eq!(out.unwrap(), Some(()));
}

// ---------------------------------------------------------------------------------------
// Handles kept after the nursery ended.
// ---------------------------------------------------------------------------------------

/// Misuse: `spawn_local` through a handle kept after the nursery ended, inside a `LocalSet`:
/// the documented panic, saying the nursery has closed; the future is dropped, never run.
#[tokio::test(start_paused = true)]
async fn n10_spawn_local_into_a_closed_nursery_panics_clearly() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let mut kept = None;
            let slot = &mut kept;
            nursery(|n: NurseryHandle<Cancelled>| {
                *slot = Some(n.clone());
                async { Ok(()) }
            })
            .await
            .unwrap();
            let n = kept.unwrap();
            let ran = std::rc::Rc::new(std::cell::Cell::new(false));
            let flag = ran.clone();
            let payload = std::panic::catch_unwind(AssertUnwindSafe(|| {
                drop(n.spawn_local(async move {
                    flag.set(true);
                    Ok::<_, Cancelled>(())
                }))
            }))
            .expect_err("spawn_local into a closed nursery");
            let text = message(&*payload);
            assert!(text.contains("closed"), "{text}");
            settle().await;
            assert!(!ran.get(), "the refused child ran");
            assert_eq!(n.live_children(), 0);
        })
        .await;
}

/// What a child's drop got when it spawned into its nursery.
type LateSpawn = Arc<Mutex<Option<Result<ChildHandle<()>, SpawnError>>>>;

/// Misuse: a child spawns into its nursery from its own `Drop` while the nursery aborts it
/// (`abort_all`). Whatever the crate decides (refused as closed, or accepted and then
/// aborted as registered late), the new child is never lost: its handle resolves and the
/// nursery ends.
#[tokio::test(start_paused = true)]
async fn n08_a_child_spawning_from_its_drop_while_aborted_loses_nothing() {
    struct SpawnOnDrop {
        n: NurseryHandle<Cancelled>,
        out: LateSpawn,
    }
    impl Drop for SpawnOnDrop {
        fn drop(&mut self) {
            self.n.cancel(); // cancelling from a child's own drop, too
            let late = self.n.try_spawn(async { Ok(()) });
            *self.out.lock().unwrap() = Some(late);
        }
    }
    let out_slot = Arc::new(Mutex::new(None));
    let seen = out_slot.clone();
    let out = no_hang(
        "abort_all with a spawn in a drop",
        nursery(move |n: NurseryHandle<Cancelled>| async move {
            let guard = SpawnOnDrop {
                n: n.clone(),
                out: seen,
            };
            let child = n.spawn(async move {
                let _guard = guard;
                std::future::pending::<Result<(), Cancelled>>().await
            });
            settle().await;
            n.abort_all();
            // The child's drop cancelled the nursery: its waiter, the body, gets that
            // cancellation rather than the child's marker.
            assert!(matches!(child.await, Err(JoinError::Cancelled(_))));
            Err::<(), _>(cancelled().await)
        }),
    )
    .await;
    assert!(matches!(out, Ok(None)), "{out:?}");
    let late = out_slot.lock().unwrap().take().expect("the drop ran");
    match late {
        Err(SpawnError::Closed) => {}
        Ok(handle) => {
            let joined = no_hang("the late child's handle", handle).await;
            assert!(
                matches!(
                    joined,
                    Ok(()) | Err(JoinError::ChildAborted | JoinError::ChildCancelled)
                ),
                "{joined:?}"
            );
        }
        Err(other) => panic!("unexpected: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Roots in the wrong place.
// ---------------------------------------------------------------------------------------

/// Misuse: `Root::run` called from inside a tokio runtime. Documented panic ("if called from
/// inside a tokio runtime"); the message must say so, and `main` must not have run.
#[tokio::test]
async fn n13_a_root_run_inside_a_runtime_panics_clearly() {
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let payload = std::panic::catch_unwind(AssertUnwindSafe(|| {
        Root::new().handle_signals(false).current_thread().run(
            |_n: NurseryHandle<Cancelled>| async move {
                flag.store(true, Ordering::SeqCst);
                Ok::<_, Cancelled>(())
            },
        )
    }))
    .expect_err("Root::run inside a runtime");
    let text = message(&*payload);
    assert!(text.contains("runtime"), "unclear: {text}");
    assert!(!ran.load(Ordering::SeqCst), "main ran anyway");
}

/// Misuse: a `Root` nested in another root's `main`. The inner one panics clearly; the outer
/// root resumes that panic (N6) and shuts down: no hang.
#[test]
fn n13_a_root_nested_in_a_roots_main_panics_clearly() {
    let payload = on_thread_bounded("nested roots", || {
        std::panic::catch_unwind(|| {
            Root::new()
                .handle_signals(false)
                .current_thread()
                .grace(Duration::from_secs(1))
                .run(|_n: NurseryHandle<Cancelled>| async move {
                    let inner = Root::new()
                        .handle_signals(false)
                        .current_thread()
                        .run(|_n: NurseryHandle<Cancelled>| async { Ok::<_, Cancelled>(()) });
                    Ok::<_, Cancelled>(inner.is_ok())
                })
        })
        .expect_err("the inner root panics")
    });
    let text = message(&*payload);
    assert!(text.contains("runtime"), "unclear: {text}");
}

// ---------------------------------------------------------------------------------------
// Leaking.
// ---------------------------------------------------------------------------------------

/// Misuse: a `local_scope` whose children borrow from the stack is leaked (`mem::forget`)
/// after its first poll. Its children are never polled or dropped again (safe: they live in
/// the leaked memory), the enclosing nursery still ends, and later cancellations and
/// deadlines do not touch the leaked children.
#[tokio::test(start_paused = true)]
async fn b1_a_leaked_local_scope_leaves_its_children_unpolled_and_the_nursery_ends() {
    let progress = AtomicUsize::new(0);
    let out = no_hang(
        "nursery around a leaked local scope",
        nursery(|n: NurseryHandle<Cancelled>| {
            let progress = &progress;
            async move {
                let mut scope = Box::pin(local_scope(async |s| {
                    for _ in 0..3 {
                        s.spawn(async {
                            loop {
                                sleep(Duration::from_millis(10)).await?;
                                progress.fetch_add(1, Ordering::SeqCst);
                            }
                            #[allow(unreachable_code)]
                            Ok::<_, Cancelled>(())
                        });
                    }
                    Err::<(), _>(cancelled().await)
                }));
                assert!(futures::poll!(scope.as_mut()).is_pending());
                std::mem::forget(scope);
                tokio::time::sleep(Duration::from_secs(1)).await;
                n.cancel();
                Err::<(), _>(cancelled().await)
            }
        }),
    )
    .await;
    assert!(matches!(out, Ok(None)), "{out:?}");
    assert_eq!(progress.load(Ordering::SeqCst), 0, "a leaked child ran");
}

// ---------------------------------------------------------------------------------------
// More formatting of user errors, configuration and runtime misuse.
// ---------------------------------------------------------------------------------------

/// Misuse: a child of a nursery dropped in wait mode (so adopted, SPEC N9) fails with an error
/// whose `Debug` panics. An adopted child's failure travels as `Debug` text to the adopter's
/// report hook; the user's panic while making that text must not make the failure vanish:
/// the adopter's hook should hear of it (as a failure or a panic of that child).
#[tokio::test(start_paused = true)]
async fn n09_an_adopted_failure_whose_debug_panics_still_reaches_the_adopter() {
    let reports = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = reports.clone();
    let out = no_hang(
        "outer nursery",
        Nursery::new()
            .on_report(move |report| log.lock().unwrap().push(report.to_string()))
            .run(|_outer: NurseryHandle<Cancelled>| async move {
                let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
                let mut inner = Box::pin(Nursery::new().run(
                    |n: NurseryHandle<DebugBomb>| async move {
                        n.spawn(async move {
                            let _ = go_rx.await; // not a cancellation point
                            Err::<(), _>(DebugBomb::Bomb)
                        });
                        Err::<(), _>(DebugBomb::from(cancelled().await))
                    },
                ));
                assert!(futures::poll!(inner.as_mut()).is_pending());
                drop(inner); // wait mode: the child is adopted by the outer nursery
                go_tx.send(()).expect("the adopted child waits");
                Ok::<_, Cancelled>(())
            }),
    )
    .await;
    assert_eq!(out.unwrap(), Some(()));
    let reports = reports.lock().unwrap().clone();
    assert!(
        !reports.is_empty(),
        "the adopted child's failure vanished: the adopter's report hook got nothing"
    );
}

/// Misuse: `DropMode::BlockingWait` without a grace period. Documented panic at `run`, with a
/// message naming the missing setting.
#[test]
fn n9b_blocking_wait_without_a_grace_panics_at_run_with_a_clear_message() {
    let payload = std::panic::catch_unwind(|| {
        drop(
            Nursery::new()
                .drop_mode(DropMode::BlockingWait)
                .run(|_n: NurseryHandle<Cancelled>| async { Ok(()) }),
        )
    })
    .expect_err("BlockingWait without a grace");
    let text = message(&*payload);
    assert!(
        text.contains("BlockingWait") && text.contains("grace"),
        "{text}"
    );
}

/// Misuse: the crate's futures polled outside any tokio runtime (a plain executor). Documented
/// panics with messages that say a tokio runtime is needed; never a future that silently
/// never completes (a deadline nothing could fire).
#[test]
fn n12_futures_polled_outside_a_runtime_panic_clearly_instead_of_hanging() {
    fn expect_runtime_panic(what: &str, run: impl FnOnce() + Send + 'static) {
        let payload = on_thread_bounded(what, move || {
            std::panic::catch_unwind(AssertUnwindSafe(run)).expect_err("a documented panic")
        });
        let text = message(&*payload);
        assert!(text.contains("runtime"), "{what}: unclear panic: {text}");
    }
    expect_runtime_panic("nursery outside a runtime", || {
        let _ =
            futures::executor::block_on(nursery(|_n: NurseryHandle<Cancelled>| async { Ok(()) }));
    });
    expect_runtime_panic("move_on_after outside a runtime", || {
        let _ = futures::executor::block_on(move_on_after(
            Duration::from_millis(10),
            std::future::pending::<Result<(), Cancelled>>(),
        ));
    });
    expect_runtime_panic("a scope with a timeout outside a runtime", || {
        let _ = futures::executor::block_on(
            CancelScope::new()
                .with_timeout(Duration::from_millis(10))
                .run(std::future::pending::<Result<(), Cancelled>>()),
        );
    });
}
