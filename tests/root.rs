//! SPEC N13: the root owns the runtime, runs main in a nursery, and shuts everything down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_nursery::*;

#[test]
fn n13_root_cancels_everything_with_shutdown_when_main_returns() {
    // No leak check (SPEC R3): the root owns and shuts down its runtime; nothing to count after.
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = Root::new().handle_signals(false).run(|n| async move {
        n.spawn(async move {
            let cancelled = cancelled().await;
            tx.send(cancelled.reason().clone()).unwrap();
            Err::<(), _>(cancelled)
        });
        Ok::<_, Cancelled>(5)
    });
    assert_eq!(outcome.unwrap(), Some(5));
    assert!(matches!(rx.recv().unwrap(), CancelReason::Shutdown));
}

#[test]
fn n13_root_aborts_what_outlives_the_grace_period_and_reports_it() {
    // No leak check (SPEC R3): the root owns and shuts down its runtime; nothing to count after.
    let reports = Reports::default();
    let (polite_tx, polite_rx) = std::sync::mpsc::channel();
    let outcome = Root::new()
        .current_thread()
        .handle_signals(false)
        .grace(Duration::ZERO)
        .on_report(reports.hook())
        .run(|n| async move {
            drop(n.spawn_named("stuck", async {
                std::future::pending::<()>().await; // never a cancellation point
                Ok::<_, Cancelled>(())
            }));
            drop(n.spawn_named("polite", async move {
                let c = cancelled().await;
                polite_tx.send(()).unwrap();
                Err::<(), _>(c)
            }));
            Ok::<_, Cancelled>("main done")
        });
    assert_eq!(outcome.unwrap(), Some("main done"));
    polite_rx
        .recv()
        .expect("the polite child stopped by itself");
    let reports = reports.take();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let (aborted, orphans_left, second_signal) = &reports[0];
    assert_eq!(
        aborted.len(),
        1,
        "only the stuck child was aborted: {aborted:?}"
    );
    assert!(aborted[0].starts_with("\"stuck\""), "{aborted:?}");
    assert_eq!((*orphans_left, *second_signal), (0, false));
}

/// The root's grace cascades into a nursery it adopted (dropped in wait mode in `main`):
/// that nursery's stuck child is named in the root's report too.
#[test]
fn n13_the_root_names_the_children_of_adopted_nurseries_it_aborted() {
    let reports = Reports::default();
    let outcome = Root::new()
        .current_thread()
        .handle_signals(false)
        .grace(Duration::from_millis(10))
        .on_report(reports.hook())
        .run(|_n| async move {
            let inner = Nursery::new().drop_mode(DropMode::Wait).run(
                |m: NurseryHandle<Cancelled>| async move {
                    m.spawn_named("deep", std::future::pending::<Result<(), Cancelled>>());
                    std::future::pending::<Result<(), Cancelled>>().await
                },
            );
            // Dropped after its child started: the root adopts the child.
            let timed_out = tokio::time::timeout(Duration::from_millis(1), inner).await;
            assert!(timed_out.is_err());
            Ok::<_, Cancelled>(())
        });
    assert_eq!(outcome.unwrap(), Some(()));
    let reports = reports.take();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let (aborted, orphans_left, second_signal) = &reports[0];
    assert_eq!(aborted.len(), 1, "{aborted:?}");
    assert!(aborted[0].starts_with("\"deep\""), "{aborted:?}");
    assert_eq!((*orphans_left, *second_signal), (0, false));
}

/// A panic resumed by the root still reports what its grace aborted on the way.
#[test]
fn n13_the_root_reports_what_it_aborted_even_when_it_resumes_a_panic() {
    let reports = Reports::default();
    let hook = reports.hook();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Root::new()
            .current_thread()
            .handle_signals(false)
            .grace(Duration::from_millis(10))
            .on_report(hook)
            .run(|n| async move {
                n.spawn_named("stuck", std::future::pending::<Result<(), Cancelled>>());
                n.spawn(async {
                    // The root resumes this panic once everything stopped: after its grace
                    // aborted the stuck child.
                    let _ = cancelled().await;
                    panic!("a child panics as the shutdown begins");
                    #[allow(unreachable_code)]
                    Ok::<_, Cancelled>(())
                });
                Ok::<_, Cancelled>(())
            })
    }));
    assert!(panicked.is_err(), "the panic is resumed");
    let reports = reports.take();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(
        reports[0]
            .0
            .iter()
            .any(|name| name.starts_with("\"stuck\""))
    );
}

#[test]
fn n13_a_clean_shutdown_reports_nothing() {
    let reports = Reports::default();
    let outcome = Root::new()
        .current_thread()
        .handle_signals(false)
        .on_report(reports.hook())
        .run(|n| async move {
            n.spawn(async { Err::<(), _>(cancelled().await) });
            Ok::<_, Cancelled>(1)
        });
    assert_eq!(outcome.unwrap(), Some(1));
    assert!(reports.take().is_empty());
}

#[test]
fn n13_the_root_aborts_orphans_that_outlive_its_grace_and_reports_them() {
    // A nursery dropped in wait mode in a plain task (no enclosing nursery): its child goes to
    // the runtime's orphans. It never stops; the root waits for it up to its grace, then
    // aborts it as it aborts its own children.
    let reports = Reports::default();
    let (dropped_tx, dropped_rx) = std::sync::mpsc::channel::<()>();
    let outcome = Root::new()
        .current_thread()
        .handle_signals(false)
        .grace(Duration::from_millis(20))
        .shutdown_bound(Duration::ZERO)
        .on_report(reports.hook())
        .run(|_n| async move {
            let (parked_tx, parked_rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let inner = Nursery::new().drop_mode(DropMode::Wait).run(
                    |m: NurseryHandle<Cancelled>| async move {
                        m.spawn_named("ignores everything", async move {
                            let _dropped = DropSignal(dropped_tx);
                            parked_tx.send(()).unwrap();
                            std::future::pending::<()>().await;
                            Ok(())
                        });
                        std::future::pending::<Result<(), Cancelled>>().await
                    },
                );
                let mut inner = Box::pin(inner);
                // Poll until the child runs, then drop the nursery: its child is orphaned.
                tokio::select! {
                    _ = &mut inner => unreachable!("the nursery never ends"),
                    _ = parked_rx => {}
                }
            });
            while orphan_count() == 0 {
                tokio::task::yield_now().await;
            }
            Ok::<_, Cancelled>(())
        });
    assert_eq!(outcome.unwrap(), Some(()));
    assert!(dropped_rx.recv().is_err(), "the orphan was dropped");
    let reports = reports.take();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let (aborted, orphans_left, second_signal) = &reports[0];
    assert_eq!(aborted.len(), 1, "{aborted:?}");
    assert!(
        aborted[0].starts_with("\"ignores everything\""),
        "{aborted:?}"
    );
    assert_eq!((*orphans_left, *second_signal), (0, false));
}

#[test]
fn n13_the_root_waits_for_protected_work_outside_any_nursery_past_its_grace() {
    // Protected work started in a plain task belongs to the runtime's orphans. The root's
    // grace runs out long before it ends; protected work is not aborted, so the root waits
    // for it (SPEC N13, C1) instead of leaving it to the runtime's shutdown.
    let reports = Reports::default();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let outcome = Root::new()
        .current_thread()
        .handle_signals(false)
        .grace(Duration::from_millis(10))
        .shutdown_bound(Duration::ZERO)
        .on_report(reports.hook())
        .run(|_n| async move {
            tokio::spawn(async move {
                drop(protect(async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    done_tx.send("done").unwrap();
                }));
            })
            .await
            .unwrap();
            assert_eq!(orphan_count(), 1);
            Ok::<_, Cancelled>(())
        });
    assert_eq!(outcome.unwrap(), Some(()));
    assert_eq!(done_rx.recv(), Ok("done"));
    assert!(reports.take().is_empty(), "nothing was cut short");
}

/// Sends nothing: its drop closes the channel, which the test sees.
struct DropSignal(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

/// A `ShutdownCutShort` report: (aborted, orphans left, second signal).
type CutShort = (Vec<String>, usize, bool);
// (`abandoned` is asserted where a second signal can come: spec_nursery_more.rs.)

/// The root's `ShutdownCutShort` reports.
#[derive(Clone, Default)]
struct Reports(Arc<Mutex<Vec<CutShort>>>);

impl Reports {
    fn hook(&self) -> impl Fn(&Report<'_>) + Send + Sync + 'static {
        let reports = self.0.clone();
        move |report| match report {
            Report::ShutdownCutShort {
                aborted,
                orphans_left,
                second_signal,
                ..
            } => reports
                .lock()
                .unwrap()
                .push((aborted.to_vec(), *orphans_left, *second_signal)),
            other => panic!("unexpected report: {other}"),
        }
    }

    fn take(&self) -> Vec<CutShort> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Session 11's review of its own changes: the root's wait for orphans outlives its grace
/// while protected work runs; an abortable orphan arriving then (a nursery dropped in wait
/// mode in a plain task) was never aborted, and the root waited for it for ever. The orphan
/// registry now remembers it was stopped and stops later orphans at their adoption (N-3).
#[test]
fn n13_an_orphan_arriving_after_the_orphans_grace_is_aborted_too() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let outcome = Root::new()
            .current_thread()
            .handle_signals(false)
            .grace(Duration::from_millis(50))
            .run(|_n| async move {
                let (go_tx, go_rx) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    // Protected work outside any nursery: waited for until it ends (t=300ms).
                    drop(protect(tokio::time::sleep(Duration::from_millis(300))));
                    go_tx.send(()).unwrap();
                    // At t=150ms (the orphans' grace ran out at ~50ms): a nursery dropped in
                    // wait mode with nowhere else to go, its child never ending by itself.
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    let late = Nursery::new().run(|m: NurseryHandle<Cancelled>| async move {
                        m.spawn_named("late", std::future::pending::<Result<(), Cancelled>>());
                        std::future::pending::<Result<(), Cancelled>>().await
                    });
                    let _ = tokio::time::timeout(Duration::from_millis(1), late).await;
                });
                go_rx.await.unwrap();
                Ok::<_, Cancelled>(())
            });
        let _ = done_tx.send(outcome.is_ok());
    });
    let finished = done_rx.recv_timeout(Duration::from_secs(10));
    assert!(
        finished.is_ok(),
        "hang: the root waits for ever for an abortable orphan that came after its grace"
    );
}
