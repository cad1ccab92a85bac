//! SPEC N13 with real signals, from session 10's review of the root: the grace after a
//! signal ends `main` too, a signal ends the wait for orphans, and a second signal's report
//! names what the grace aborted before it. A signal reaches every root in the process, so
//! these tests run one at a time (a lock), in their own binary. Real time, bounded only
//! against hangs (`common::HANG_BOUND`), as the signals are real.
#![cfg(all(unix, feature = "signal"))]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Unfinished;
use common::nursery::{signal_self, within_hang_bound};
use tokio_nursery::*;

/// One root at a time in this process.
static ONE_ROOT: Mutex<()> = Mutex::new(());

/// A root on a current-thread runtime that handles signals, with this grace.
fn signalled_root(grace: Duration) -> Root {
    Root::new()
        .current_thread()
        .handle_signals(true)
        .grace(grace)
}

fn reports_of(reports: Arc<Mutex<Vec<Vec<String>>>>) -> impl Fn(&Report<'_>) + Send + Sync {
    move |report| {
        if let Report::ShutdownCutShort { aborted, .. } = report {
            reports.lock().unwrap().push(aborted.to_vec());
        }
    }
}

#[test]
fn n13_the_grace_after_a_signal_ends_main_too() {
    let _one = ONE_ROOT.lock().unwrap_or_else(|e| e.into_inner());
    let seen = Arc::new(AtomicBool::new(false));
    let saw = seen.clone();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let hook = reports_of(reports.clone());
    let out = within_hang_bound(move || {
        signalled_root(Duration::from_millis(50))
            .on_report(hook)
            .run(|_root: NurseryHandle<Cancelled>| async move {
                tokio::task::yield_now().await;
                signal_self("TERM");
                let cancelled = cancelled().await;
                assert!(matches!(cancelled.reason(), CancelReason::Shutdown));
                saw.store(true, Ordering::SeqCst);
                // Ignores the shutdown: not a cancellation point.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, Cancelled>(())
            })
    });
    assert!(seen.load(Ordering::SeqCst));
    assert!(matches!(out, Ok(None)), "{out:?}");
    assert_eq!(*reports.lock().unwrap(), [vec!["main".to_string()]]);
}

/// Session 21: when the grace after a signal runs out with `main` still running, the root
/// takes the tree before it drops `main`: its report shows the root nursery waiting on its
/// body (`main`), and the child stuck with it.
#[test]
fn n13_the_report_of_a_cut_main_shows_the_tree_before_main_was_dropped() {
    let _one = ONE_ROOT.lock().unwrap_or_else(|e| e.into_inner());
    let trees = Arc::new(Mutex::new(Vec::new()));
    let seen = trees.clone();
    let out = within_hang_bound(move || {
        signalled_root(Duration::from_millis(50))
            .on_report(move |report| {
                if let Report::ShutdownCutShort { aborted, tree, .. } = report {
                    let tree = tree.map(ToString::to_string);
                    seen.lock().unwrap().push((aborted.to_vec(), tree));
                }
            })
            .run(|root: NurseryHandle<Cancelled>| async move {
                root.spawn_named("stuck", async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok::<_, Cancelled>(())
                });
                tokio::task::yield_now().await;
                signal_self("TERM");
                let _ = cancelled().await;
                // Ignores the shutdown: not a cancellation point.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, Cancelled>(())
            })
    });
    assert!(matches!(out, Ok(None)), "{out:?}");
    let trees = trees.lock().unwrap();
    assert_eq!(trees.len(), 1, "{trees:?}");
    let (aborted, tree) = &trees[0];
    assert_eq!(aborted[0], "main", "{aborted:?}");
    assert!(aborted[1].starts_with("\"stuck\""), "{aborted:?}");
    let tree = tree.as_deref().expect("the tree");
    let first = tree.lines().next().unwrap();
    assert!(
        first.starts_with("nursery \"root\"")
            && first.contains("cancelling, waiting on the body and 1 child"),
        "{tree}"
    );
    assert!(tree.contains("child \"stuck\""), "{tree}");
}

#[test]
fn n13_a_signal_ends_the_wait_for_orphans() {
    let _one = ONE_ROOT.lock().unwrap_or_else(|e| e.into_inner());
    static SENT: AtomicBool = AtomicBool::new(false);
    let out = within_hang_bound(move || {
        signalled_root(Duration::from_secs(3600))
            .shutdown_bound(Duration::ZERO)
            .run(|root: NurseryHandle<Cancelled>| async move {
                let (parked_tx, parked_rx) = tokio::sync::oneshot::channel();
                // A nursery dropped in wait mode in a plain task: its child is an orphan.
                tokio::spawn(async move {
                    let inner = Nursery::new().drop_mode(DropMode::Wait).run(
                        move |m: NurseryHandle<Cancelled>| async move {
                            m.spawn_named("orphan", async move {
                                parked_tx.send(()).unwrap();
                                // Once the root nursery has closed (the root then waits
                                // for orphans, an hour at most), Ctrl-C.
                                while root.is_open() {
                                    tokio::task::yield_now().await;
                                }
                                signal_self("INT");
                                SENT.store(true, Ordering::SeqCst);
                                std::future::pending::<()>().await;
                                Ok(())
                            });
                            std::future::pending::<Result<(), Cancelled>>().await
                        },
                    );
                    let mut inner = Box::pin(inner);
                    tokio::select! {
                        _ = &mut inner => unreachable!(),
                        _ = parked_rx => {}
                    }
                });
                while orphan_count() == 0 {
                    tokio::task::yield_now().await;
                }
                Ok::<_, Cancelled>(())
            })
    });
    assert!(SENT.load(Ordering::SeqCst));
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

#[test]
fn n13_a_second_signals_report_names_the_children_the_grace_aborted() {
    let _one = ONE_ROOT.lock().unwrap_or_else(|e| e.into_inner());
    let reports = Arc::new(Mutex::new(Vec::new()));
    let hook = reports_of(reports.clone());
    let out = within_hang_bound(move || {
        signalled_root(Duration::from_millis(20))
            .on_report(hook)
            .run(|n: NurseryHandle<Cancelled>| async move {
                n.spawn_named("stubborn", std::future::pending::<Result<(), Cancelled>>());
                let root = n.clone();
                // Protected work that never ends: the root waits for it past its grace; once
                // the grace aborted "stubborn", Ctrl-C again.
                drop(protect(async move {
                    while root.aborted_children().is_empty() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    signal_self("INT");
                    std::future::pending::<()>().await
                }));
                tokio::task::yield_now().await;
                signal_self("TERM");
                Err::<(), _>(cancelled().await)
            })
    });
    let reports = reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(
        reports[0].iter().any(|name| name.contains("stubborn")),
        "{reports:?}"
    );
    match out {
        Err(NurseryError::Cancelled(c)) => assert!(
            c.aborted_children()
                .iter()
                .any(|name| name.contains("stubborn")),
            "{c:?}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn n13_after_main_returns_one_signal_stops_the_wait_for_protected_work() {
    // `main` returned: the shutdown has begun without a signal. Protected work that never
    // ends holds the root up past its grace; the first Ctrl-C is the one that cuts the
    // shutdown short (it used to only cancel again, so a second press was needed).
    let _one = ONE_ROOT.lock().unwrap_or_else(|e| e.into_inner());
    let reports = Arc::new(Mutex::new(Vec::new()));
    let seen = reports.clone();
    let out = within_hang_bound(move || {
        signalled_root(Duration::from_millis(20))
            .on_report(move |report| {
                if let Report::ShutdownCutShort {
                    abandoned,
                    second_signal,
                    ..
                } = report
                {
                    seen.lock().unwrap().push((*abandoned, *second_signal));
                }
            })
            .run(|_root: NurseryHandle<Cancelled>| async move {
                drop(protect(async move {
                    // Told when the root's grace ran out, then Ctrl-C once.
                    let told = cancelled().await;
                    assert!(matches!(told.reason(), CancelReason::GraceExpired));
                    signal_self("INT");
                    std::future::pending::<()>().await
                }));
                Ok::<_, Cancelled>(())
            })
    });
    assert!(matches!(out, Err(NurseryError::Cancelled(_))), "{out:?}");
    assert_eq!(*reports.lock().unwrap(), [(1, true)]);
}

/// Session 11's review of parallel scopes (SPEC B2, N13): when the grace after a signal ran
/// out, the root dropped `main` although a parallel borrowing scope ran in it (the crate
/// never drops one: its children were cut short by the backstop). `main` is now dropped
/// only once that scope has ended (here its body ignores the shutdown). Since session 12
/// the grace's end also cascades into the scope's children (SPEC N7: past an ancestor's
/// grace, every descendant), so the child that ignores the shutdown is aborted then.
#[cfg(feature = "rt-multi-thread")]
#[test]
fn n13_the_root_does_not_drop_main_while_a_parallel_scope_runs_in_it() {
    let _one = ONE_ROOT.lock().unwrap_or_else(|e| e.into_inner());
    let main_dropped = Arc::new(AtomicBool::new(false));
    let child_cut = Arc::new(AtomicBool::new(false));
    let (dropped, cut) = (main_dropped.clone(), child_cut.clone());
    let _ = within_hang_bound(move || {
        Root::new()
            .handle_signals(true)
            .grace(Duration::from_millis(50))
            .run(move |_root: NurseryHandle<Cancelled>| async move {
                let mut main = Unfinished {
                    flag: &dropped,
                    finished: false,
                };
                let local = 7u64;
                let borrowed = &local;
                let c = &*cut;
                // SAFETY: awaited to completion here; the root's runtime outlives main.
                let _ = unsafe {
                    parallel_scope_async(|s| async move {
                        s.spawn(async move {
                            let mut guard = Unfinished {
                                flag: c,
                                finished: false,
                            };
                            signal_self("TERM");
                            // Ignores the shutdown for ten times the grace (tokio's sleep:
                            // not a cancellation point).
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            assert_eq!(*borrowed, 7);
                            guard.finished = true;
                            Ok::<_, Cancelled>(())
                        });
                        // The scope's body ignores the shutdown too: the root puts off
                        // dropping main until it ends.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        assert_eq!(*borrowed, 7);
                        Ok::<_, Cancelled>(())
                    })
                }
                .await;
                // Polled on after the scope ended: not dropped while it ran.
                main.finished = true;
                Ok::<_, Cancelled>(())
            })
    });
    assert!(
        !main_dropped.load(Ordering::SeqCst),
        "the root dropped main while a parallel scope ran in it"
    );
    assert!(
        child_cut.load(Ordering::SeqCst),
        "the child still running past the root's grace was not aborted (SPEC N7's cascade)"
    );
}

/// Was (review round 18): a waker panicking at the shutdown's cancellation (re-raised by
/// the cancellation once every waker was called) unwound the root's signal handling: no
/// grace, and the panic came out of `Root::run` instead of the shutdown's outcome. The
/// signal's work now goes on (a line on stderr says a waker panicked).
#[test]
fn n13_a_waker_panicking_at_the_shutdowns_cancellation_does_not_cut_the_shutdown() {
    let _one = ONE_ROOT.lock().unwrap_or_else(|e| e.into_inner());
    let reports = Arc::new(Mutex::new(Vec::new()));
    let hook = reports_of(reports.clone());
    let out = within_hang_bound(move || {
        signalled_root(Duration::from_millis(50))
            .on_report(hook)
            .run(|_root: NurseryHandle<Cancelled>| async move {
                // Registered with the root's scope, never polled again.
                let wait = common::wakers::wait_with_panicking_waker(cancelled());
                tokio::task::yield_now().await;
                signal_self("TERM");
                let cancelled = cancelled().await;
                assert!(matches!(cancelled.reason(), CancelReason::Shutdown));
                drop(wait);
                // Ignores the shutdown: not a cancellation point.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, Cancelled>(())
            })
    });
    assert!(matches!(out, Ok(None)), "{out:?}");
    assert_eq!(*reports.lock().unwrap(), [vec!["main".to_string()]]);
}
