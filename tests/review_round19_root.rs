//! Review round 19 (a helper's review of parallel scopes and the root): a grace running out
//! after `main` returned, a panicking waker at a parallel scope's end, the runtime's bounded
//! shutdown when `main` panics. Each test failed before its fix.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::nursery::within_hang_bound;
use tokio_nursery::*;

/// One root at a time in this process (signals reach every root).
static ONE_ROOT: Mutex<()> = Mutex::new(());

/// The grace after a first signal ran out after `main` had returned by itself (protected
/// work still held the root up): the root still counted `main` as cut short and named it
/// in its `ShutdownCutShort` report (and logged "dropping main"), although nothing was cut
/// short at all: `main` returned, the protected work ended by itself.
#[cfg(all(unix, feature = "signal"))]
#[test]
fn n13_main_that_returned_is_not_reported_cut_short_when_the_grace_runs_out() {
    use common::nursery::signal_self;
    let _one = ONE_ROOT.lock().unwrap_or_else(|e| e.into_inner());
    let reports = Arc::new(Mutex::new(Vec::new()));
    let seen = reports.clone();
    let returned = Arc::new(AtomicBool::new(false));
    let main_returned = returned.clone();
    let out = within_hang_bound(move || {
        Root::new()
            .current_thread()
            .handle_signals(true)
            .grace(Duration::from_millis(50))
            .on_report(move |report| {
                if let Report::ShutdownCutShort { aborted, .. } = report {
                    seen.lock().unwrap().push(aborted.to_vec());
                }
            })
            .run(move |_root: NurseryHandle<Cancelled>| async move {
                // Protected work that outlasts the grace, then ends by itself.
                drop(protect(async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }));
                tokio::task::yield_now().await;
                signal_self("TERM");
                let cancelled = cancelled().await;
                assert!(matches!(cancelled.reason(), CancelReason::Shutdown));
                // `main` obeys the shutdown at once.
                main_returned.store(true, Ordering::SeqCst);
                Ok::<_, Cancelled>(())
            })
    });
    assert!(returned.load(Ordering::SeqCst));
    assert!(out.is_ok(), "{out:?}");
    assert_eq!(
        *reports.lock().unwrap(),
        Vec::<Vec<String>>::new(),
        "nothing was cut short: main returned, the protected work ended by itself"
    );
}

/// A parallel scope first polled with a waker that panics (a combinator's, kept stale) and
/// then awaited normally, inside a hard scope cancelled while it runs (the hard scope puts
/// off dropping its body, SPEC B2). When the parallel scope ends, the exemption's end wakes
/// the waker of the scope's first poll, a wake the crate does on its own, and its panic came
/// out of the parallel scope's poll: the scope's outcome (here a value; a child's failure
/// the same way) was lost and the task panicked, instead of the wake's panic being caught
/// (`catch_waker_panic`) and the outcome returned.
#[cfg(feature = "rt-multi-thread")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_a_panicking_waker_at_the_exemptions_end_does_not_lose_the_scopes_outcome() {
    let release = Arc::new(tokio::sync::Notify::new());
    let outcome = Arc::new(Mutex::new(None));
    let scope = CancelScope::new().hard();
    let handle = scope.handle();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (release2, outcome2) = (release.clone(), outcome.clone());
    let task = tokio::spawn(scope.run(async move {
        let local = 3u64;
        let borrowed = &local;
        // SAFETY: awaited to completion here (the hard scope puts off its drop).
        let scope = unsafe {
            parallel_scope_async(|s| async move {
                s.spawn(async move {
                    let _ = started_tx.send(());
                    release2.notified().await; // not a cancellation point
                    Ok::<_, Cancelled>(*borrowed)
                });
                Ok::<_, Cancelled>(*borrowed + 2)
            })
        };
        let scope = common::wakers::wait_with_panicking_waker(scope);
        let out = scope.await;
        *outcome2.lock().unwrap() = Some(format!("{out:?}"));
        std::future::pending::<()>().await; // dropped here by the hard scope
        Ok::<_, Cancelled>(())
    }));
    started_rx.await.unwrap();
    handle.cancel();
    tokio::task::yield_now().await;
    release.notify_one();
    let joined = tokio::time::timeout(common::HANG_BOUND, task)
        .await
        .expect("hang");
    assert_eq!(
        outcome.lock().unwrap().as_deref(),
        Some("Ok(Ok(Some(5)))"),
        "the parallel scope's outcome was lost"
    );
    assert!(matches!(joined, Ok(Ok(None))), "{joined:?}");
}

/// SPEC N13: the root "shuts the runtime down with a bound" (`shutdown_bound`). When `main`
/// panicked, the panic unwound out of `Runtime::block_on` past `shutdown_timeout`, and the
/// runtime was dropped instead: tokio's drop waits for the blocking pool without any bound,
/// so a plain `spawn_blocking` that does not end kept `Root::run` from resuming the panic
/// (the program hung on its way down instead of exiting with the panic).
#[test]
fn n13_the_runtime_shutdown_is_bounded_also_when_main_panics() {
    let _one = ONE_ROOT.lock().unwrap_or_else(|e| e.into_inner());
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let out = within_hang_bound(move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            Root::new()
                .handle_signals(false)
                .grace(Duration::from_millis(10))
                .shutdown_bound(Duration::from_millis(100))
                .run(|_n: NurseryHandle<Cancelled>| async move {
                    // Outside any nursery: only the runtime's bounded shutdown ends the wait.
                    tokio::task::spawn_blocking(move || {
                        let _ = rx.recv_timeout(Duration::from_secs(30));
                    });
                    tokio::task::yield_now().await;
                    panic!("main panics");
                    #[allow(unreachable_code)]
                    Ok::<_, Cancelled>(())
                })
        }))
    });
    drop(tx);
    // Without the bound, the blocking task holds the runtime's drop for 30 s: past the
    // hang bound.
    assert!(out.is_err(), "main's panic is resumed");
}

/// Was (a review of the fix above, which skipped the cut once `main` had returned): the grace
/// after a first signal runs out while a parallel borrowing scope runs in `main`
/// (SPEC B2): the root puts off cutting `main` (`cut_put_off`). The scope ends, and `main`
/// then returns by itself in the same poll of the root, before the root's loop looks at
/// its put-off cut; protected work still holds the root nursery up. The new
/// `main_returned` check `continue`s without clearing `cut_put_off`, and `grace_over` (main
/// no longer exempt) is ready again at once: the loop goes round without ever returning
/// `Pending`: it spun on `block_on`'s thread as long as the protected work ran (measured,
/// with a debug print, at over 300 000 turns of the loop in 200 ms). The thread's CPU time
/// over the protected work's 1.2 s tells a spin (most of it) from a wait (next to none).
#[cfg(all(target_os = "linux", feature = "signal", feature = "rt-multi-thread"))]
#[test]
fn r19e_main_returning_after_a_put_off_cut_does_not_spin_the_root() {
    use common::nursery::signal_self;
    let _one = ONE_ROOT.lock().unwrap_or_else(|e| e.into_inner());
    /// CPU time of the calling thread.
    fn thread_cpu() -> Duration {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
        Duration::from_nanos(stat.split_whitespace().next().unwrap().parse().unwrap())
    }
    let (out, cpu) = within_hang_bound(move || {
        let before = thread_cpu();
        let out = Root::new()
            .handle_signals(true)
            .grace(Duration::from_millis(50))
            .run(move |_root: NurseryHandle<Cancelled>| async move {
                // Protected work that outlasts the parallel scope, then ends by itself.
                drop(protect(async {
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                }));
                let local = 3u64;
                let borrowed = &local;
                // SAFETY: awaited to completion here.
                let scope = unsafe {
                    parallel_scope_async(|s| async move {
                        s.spawn(async move {
                            // Not a cancellation point: outlasts the grace.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            Ok::<_, Cancelled>(*borrowed)
                        });
                        signal_self("TERM");
                        Ok::<_, Cancelled>(())
                    })
                };
                let _ = scope.await;
                // `main` returns by itself once the scope ended.
                Ok::<_, Cancelled>(())
            });
        (out, thread_cpu() - before)
    });
    assert!(out.is_ok(), "{out:?}");
    // `block_on`'s thread waits for the protected work (1.2 s): it should sleep, not spin.
    assert!(
        cpu < Duration::from_millis(500),
        "the root's thread spun: {cpu:?} of CPU"
    );
}

/// Was (a review of the bounded shutdown after a panic): `Root::run` inside a runtime (a
/// documented panic) resumed not tokio's panic saying why but a second one, from the
/// runtime's shutdown inside another runtime ("Cannot drop a runtime in a context where
/// blocking is not allowed"). `run` now says it itself, before it builds a runtime.
#[tokio::test]
async fn root_run_inside_a_runtime_says_why() {
    let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Root::new()
            .handle_signals(false)
            .current_thread()
            .run(|_n: NurseryHandle<Cancelled>| async move { Ok::<_, Cancelled>(()) })
    }))
    .expect_err("Root::run inside a runtime panics");
    let text = panic_message(&*payload).unwrap_or_default();
    assert!(
        text.contains("Root::run was called inside a tokio runtime"),
        "{text}"
    );
}
