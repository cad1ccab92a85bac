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
