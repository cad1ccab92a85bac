//! SPEC O2 at the moment it matters (session 21, from a usability review): the task tree
//! shows a nursery's body while it runs, a nursery can keep the tree as it stood when its
//! grace period ran out, and the root's `ShutdownCutShort` report carries that tree. The
//! nursery tests run on the paused clock; the root's on real time, bounded against hangs.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::nursery::{settle, sleep_forever};
use tokio_nursery::{
    Cancelled, DropMode, Nursery, NurseryHandle, Report, Root, TaskTree, cancelled, protect,
};

/// A child that never reaches a cancellation point (a plain tokio await of an hour).
async fn legacy() -> Result<(), Cancelled> {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

#[tokio::test(start_paused = true)]
async fn the_tree_says_the_nursery_waits_on_its_body_until_it_returns() {
    common::leak_checked(async move {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let saw = seen.clone();
        let out = Nursery::new()
            .name("n")
            .run(|n: NurseryHandle<Cancelled>| async move {
                let detail = |n: &NurseryHandle<Cancelled>| {
                    TaskTree::of(&n.scope()).entries()[0]
                        .detail
                        .clone()
                        .unwrap()
                };
                saw.lock().unwrap().push(detail(&n));
                n.spawn_named("worker", sleep_forever::<Cancelled>());
                saw.lock().unwrap().push(detail(&n));
                // Seen by a child once the body returned.
                let m = n.clone();
                let saw = saw.clone();
                n.spawn_named("watcher", async move {
                    tokio::time::sleep(ms(10)).await;
                    saw.lock().unwrap().push(detail(&m));
                    m.cancel();
                    tokio::time::sleep(ms(10)).await;
                    saw.lock().unwrap().push(detail(&m));
                    Ok(())
                });
                Ok(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "running, the body",
                "running, the body and 1 child",
                "running, 2 children",
                "cancelling, waiting on 1 child",
            ]
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_nursery_held_up_by_its_body_alone_says_so() {
    common::leak_checked(async move {
        let out = Nursery::new()
            .grace(ms(100))
            .run(|n: NurseryHandle<Cancelled>| async move {
                n.cancel();
                let tree = TaskTree::of(&n.scope()).to_string();
                assert!(tree.contains("cancelling, waiting on the body ["), "{tree}");
                Ok(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn the_tree_is_kept_as_it_stood_when_the_grace_ran_out() {
    common::leak_checked(async move {
        let mut kept = None;
        let out = Nursery::new()
            .name("server")
            .grace(ms(1000))
            .keep_tree_at_grace_expiry()
            .run(|n: NurseryHandle<Cancelled>| {
                kept = Some(n.clone());
                async move {
                    n.spawn_named("polite", async { Err::<(), _>(cancelled().await) });
                    n.spawn_named("legacy", legacy());
                    // A nursery in a child, its own child stuck too: the cascade aborts it.
                    n.spawn_named("worker", async {
                        Nursery::new()
                            .name("inner")
                            .run(|m: NurseryHandle<Cancelled>| async move {
                                m.spawn_named("deep", legacy());
                                Ok(())
                            })
                            .await
                            .map(drop)
                            .map_err(|_| unreachable!("aborted, not failed"))
                    });
                    settle().await;
                    assert!(n.tree_at_grace_expiry().is_none(), "not yet");
                    tokio::time::sleep(ms(500)).await;
                    n.cancel();
                    Ok(())
                }
            })
            .await;
        assert_eq!(out.unwrap(), Some(()), "absorbed");
        let kept = kept.unwrap();
        let tree = kept.tree_at_grace_expiry().expect("kept").to_string();
        let lines: Vec<&str> = tree.lines().collect();
        // Taken before anything was aborted: every child still running then, with how long
        // it had been asked to stop; "polite" had stopped.
        assert!(
            lines[0].starts_with("nursery \"server\" (")
                && lines[0].contains("cancelling, waiting on 2 children")
                && lines[0].ends_with("[cancelled 1000ms ago: explicit cancel]"),
            "{tree}"
        );
        for name in ["legacy", "worker", "inner", "deep"] {
            let line = lines
                .iter()
                .find(|line| line.contains(&format!("\"{name}\"")))
                .unwrap_or_else(|| panic!("{name} is in the tree:\n{tree}"));
            assert!(line.contains("[cancelled 1000ms ago"), "{tree}");
        }
        assert!(!tree.contains("polite"), "{tree}");
        // And the same children were aborted.
        let aborted = kept.aborted_children().join(", ");
        for name in ["legacy", "worker", "deep"] {
            assert!(aborted.contains(&format!("\"{name}\"")), "{aborted}");
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn no_tree_is_kept_unless_asked_or_unless_the_grace_ran_out() {
    common::leak_checked(async move {
        // Not asked: the grace runs out, no tree.
        let mut kept = None;
        Nursery::new()
            .grace(ms(10))
            .run(|n: NurseryHandle<Cancelled>| {
                kept = Some(n.clone());
                async move {
                    n.spawn(legacy());
                    n.cancel();
                    Ok(())
                }
            })
            .await
            .unwrap();
        let kept = kept.unwrap();
        assert_eq!(kept.aborted_children().len(), 1);
        assert!(kept.tree_at_grace_expiry().is_none());

        // Asked, but everyone stopped inside the grace: no tree.
        let mut kept = None;
        Nursery::new()
            .grace(ms(10))
            .keep_tree_at_grace_expiry()
            .run(|n: NurseryHandle<Cancelled>| {
                kept = Some(n.clone());
                async move {
                    n.spawn(async { Err::<(), _>(cancelled().await) });
                    n.cancel();
                    Ok(())
                }
            })
            .await
            .unwrap();
        assert!(kept.unwrap().tree_at_grace_expiry().is_none());

        // Asked, and the grace ran out with nothing to abort (the body alone held the nursery
        // up): no tree, since nothing was cut short.
        let mut kept = None;
        Nursery::new()
            .grace(ms(10))
            .keep_tree_at_grace_expiry()
            .run(|n: NurseryHandle<Cancelled>| {
                kept = Some(n.clone());
                async move {
                    n.cancel();
                    tokio::time::sleep(ms(50)).await; // not a cancellation point
                    Ok(())
                }
            })
            .await
            .unwrap();
        let kept = kept.unwrap();
        assert!(kept.aborted_children().is_empty());
        assert!(kept.tree_at_grace_expiry().is_none());
    })
    .await
}

/// A nursery dropped in wait mode with `keep_tree_at_grace_expiry`: its grace runs out in a
/// task of its own, which keeps the tree too.
#[tokio::test(start_paused = true)]
async fn a_dropped_nursery_keeps_its_tree_when_its_grace_runs_out() {
    common::leak_checked(async move {
        let (kept_tx, kept_rx) = tokio::sync::oneshot::channel();
        let outer = Nursery::new()
            .run(|_outer: NurseryHandle<Cancelled>| async move {
                let inner = Nursery::new()
                    .name("dropped")
                    .drop_mode(DropMode::Wait)
                    .grace(ms(200))
                    .keep_tree_at_grace_expiry()
                    .run(|m: NurseryHandle<Cancelled>| async move {
                        let _ = kept_tx.send(m.clone());
                        m.spawn_named("legacy", legacy());
                        sleep_forever::<Cancelled>().await
                    });
                // Dropped after 10 ms: its child passes to the outer nursery (N9), which
                // waits until the grace aborts it.
                let _ = tokio::time::timeout(ms(10), inner).await;
                Ok(())
            })
            .await;
        assert_eq!(outer.unwrap(), Some(()));
        let kept = kept_rx.await.unwrap();
        let tree = kept.tree_at_grace_expiry().expect("kept").to_string();
        assert!(tree.contains("child \"legacy\""), "{tree}");
        assert!(tree.contains("[cancelled 200ms ago"), "{tree}");
    })
    .await
}

/// The root's reports, as (text, the tree's text).
type Reports = Arc<Mutex<Vec<(String, Option<String>)>>>;

fn recording(reports: &Reports) -> impl Fn(&Report<'_>) + Send + Sync + 'static {
    let reports = reports.clone();
    move |report| {
        if let Report::ShutdownCutShort { tree, .. } = report {
            let tree = tree.map(ToString::to_string);
            reports.lock().unwrap().push((report.to_string(), tree));
        }
    }
}

/// A root on the current thread, without signals, with a 50 ms grace, recording its
/// `ShutdownCutShort` reports.
fn recording_root(reports: &Reports) -> Root {
    Root::new()
        .current_thread()
        .handle_signals(false)
        .grace(ms(50))
        .shutdown_bound(Duration::ZERO)
        .on_report(recording(reports))
}

#[test]
fn n13_the_roots_report_shows_the_tree_when_its_grace_ran_out() {
    let reports = Reports::default();
    let root = recording_root(&reports);
    let out = common::nursery::within_hang_bound(move || {
        root.run(|n: NurseryHandle<Cancelled>| async move {
            n.spawn_named("polite", async { Err::<(), _>(cancelled().await) });
            n.spawn_named("stuck", legacy());
            tokio::task::yield_now().await;
            Ok(())
        })
    });
    assert_eq!(out.unwrap(), Some(()));
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let (text, tree) = &reports[0];
    let tree = tree.as_deref().expect("the tree");
    let lines: Vec<&str> = tree.lines().collect();
    assert!(
        lines[0].starts_with("nursery \"root\" (")
            && lines[0].contains("cancelling, waiting on 1 child [cancelled "),
        "{tree}"
    );
    assert!(lines[0].ends_with("ago: shutting down]"), "{tree}");
    assert!(
        lines[1].trim_start().starts_with("child \"stuck\" ("),
        "{tree}"
    );
    assert_eq!(lines.len(), 2, "polite had stopped:\n{tree}");
    // The default report prints it, indented, under what was aborted.
    assert!(
        text.starts_with(
            "the root's shutdown was cut short: the grace period ran out; aborted: \"stuck\""
        ),
        "{text}"
    );
    let printed = format!("; the task tree then:\n  {}", lines.join("\n  "));
    assert!(text.ends_with(&printed), "{text}");
}

#[test]
fn n13_a_report_of_orphans_alone_has_no_tree() {
    let reports = Reports::default();
    let root = recording_root(&reports);
    let out = common::nursery::within_hang_bound(move || {
        root.run(|_n: NurseryHandle<Cancelled>| async move {
            // A nursery dropped in wait mode in a plain task: its child is an orphan,
            // which the root's grace for orphans aborts.
            tokio::spawn(async {
                let inner = Nursery::new().run(|m: NurseryHandle<Cancelled>| async move {
                    m.spawn_named("orphan", legacy());
                    sleep_forever::<Cancelled>().await
                });
                let _ = tokio::time::timeout(ms(1), inner).await;
            })
            .await
            .unwrap();
            Ok(())
        })
    });
    assert_eq!(out.unwrap(), Some(()));
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let (text, tree) = &reports[0];
    assert!(text.contains("\"orphan\""), "{text}");
    assert!(
        tree.is_none(),
        "the root's tree does not hold orphans: {tree:?}"
    );
    assert!(!text.contains("task tree"), "{text}");
}

/// Protected work the root waits for past its grace: the tree taken when the grace ran out
/// shows it, and the child that was aborted.
#[test]
fn n13_the_roots_tree_shows_protected_work_still_running() {
    let reports = Reports::default();
    let root = recording_root(&reports);
    let out = common::nursery::within_hang_bound(move || {
        root.run(|n: NurseryHandle<Cancelled>| async move {
            n.spawn_named("stuck", legacy());
            drop(protect(tokio::time::sleep(ms(300))));
            Ok(())
        })
    });
    assert_eq!(out.unwrap(), Some(()));
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let tree = reports[0].1.as_deref().expect("the tree");
    assert!(tree.contains("child \"stuck\""), "{tree}");
    assert!(
        tree.contains("[shielded]"),
        "the protected work's scope:\n{tree}"
    );
}
