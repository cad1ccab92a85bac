//! Review of session 21's change: `Collector::join_next` / `try_join_next` follow the
//! handles' waiter rule, the task tree shows a nursery's body while it runs, a nursery can
//! keep its tree at its grace's expiry, the root's `ShutdownCutShort` carries a tree, and
//! the tree prints a passed deadline once.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::nursery::{BoxError, settle, sleep_forever};
use tokio_nursery::{
    CancelScope, Cancelled, DropMode, JoinError, Nursery, NurseryError, NurseryHandle, cancelled,
};

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// A child that never reaches a cancellation point.
async fn legacy() -> Result<(), Cancelled> {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}

#[derive(Debug)]
struct Boom;
impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}
impl std::error::Error for Boom {}

// ---------------------------------------------------------------------------------------
// Collector

/// Outside any scope there is no waiter's cancellation: the marker comes as it is, also
/// when the nursery's scope is cancelled.
#[tokio::test(start_paused = true)]
async fn try_join_next_outside_any_scope_keeps_the_marker() {
    common::leak_checked(async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let out = Nursery::new()
            .run(|n: NurseryHandle<BoxError>| async move {
                let collector = n.collector::<u32>();
                collector.spawn(async { Err::<u32, BoxError>(Box::new(Boom)) });
                settle().await;
                assert!(n.scope().is_cancelled(), "fail-fast");
                let _ = tx.send(collector);
                Ok(())
            })
            .await;
        assert!(
            matches!(out, Err(NurseryError::Failed(ref f)) if f.len() == 1),
            "{out:?}"
        );
        let mut collector = rx.await.unwrap();
        let (_, outcome) = collector.try_join_next().expect("queued");
        assert!(
            matches!(outcome, Err(JoinError::ChildFailed)),
            "{outcome:?}"
        );
        assert!(collector.try_join_next().is_none());
    })
    .await
}

/// join_next in a cancelled scope: a value still comes; a failure comes as the waiter's own
/// cancellation; in a shield the marker comes.
#[tokio::test(start_paused = true)]
async fn join_next_in_a_cancelled_scope_values_and_markers() {
    common::leak_checked(async move {
        let out = Nursery::new()
            .supervisor()
            .run(|n: NurseryHandle<BoxError>| async move {
                let mut collector = n.collector::<u32>();
                collector.spawn(async { Ok::<u32, BoxError>(7) });
                collector.spawn(async {
                    tokio::time::sleep(ms(5)).await;
                    Err::<u32, BoxError>(Box::new(Boom))
                });
                collector.spawn(async {
                    tokio::time::sleep(ms(10)).await;
                    Err::<u32, BoxError>(Box::new(Boom))
                });
                tokio::time::sleep(ms(20)).await;
                n.cancel();
                let (_, a) = collector.join_next().await.unwrap();
                assert_eq!(a.unwrap(), 7);
                let (_, b) = collector.join_next().await.unwrap();
                match b {
                    Err(JoinError::Cancelled(c)) => assert_eq!(c.scope(), n.scope().id()),
                    other => panic!("{other:?}"),
                }
                let (_, c) = common::nursery::shielded(collector.join_next())
                    .await
                    .unwrap();
                assert!(matches!(c, Err(JoinError::ChildFailed)), "{c:?}");
                assert!(collector.join_next().await.is_none());
                Ok(())
            })
            .await;
        assert!(
            matches!(out, Err(NurseryError::Failed(ref f)) if f.len() == 2),
            "{out:?}"
        );
    })
    .await
}

/// A collector moved into a child of another nursery: the waiter is that child; its scope
/// (the other nursery's) decides.
#[tokio::test(start_paused = true)]
async fn a_collector_waited_on_from_another_nursery_uses_the_waiters_scope() {
    common::leak_checked(async move {
        let out = Nursery::new()
            .supervisor()
            .run(|a: NurseryHandle<BoxError>| async move {
                let mut collector = a.collector::<u32>();
                collector.spawn(async {
                    tokio::time::sleep(ms(10)).await;
                    Err::<u32, BoxError>(Box::new(Boom))
                });
                let a_scope = a.scope();
                let b_out = Nursery::new()
                    .run(|b: NurseryHandle<BoxError>| async move {
                        let b_scope = b.scope();
                        b.spawn(async move {
                            b_scope.cancel();
                            let (_, outcome) = collector.join_next().await.unwrap();
                            match outcome {
                                Err(JoinError::Cancelled(c)) => {
                                    assert_eq!(c.scope(), b_scope.id());
                                    assert!(!a_scope.is_cancelled());
                                }
                                other => panic!("{other:?}"),
                            }
                            Ok(())
                        });
                        Ok(())
                    })
                    .await;
                assert!(matches!(b_out, Ok(Some(()))), "{b_out:?}");
                Ok(())
            })
            .await;
        assert!(
            matches!(out, Err(NurseryError::Failed(ref f)) if f.len() == 1),
            "{out:?}"
        );
    })
    .await
}

/// multi_thread: a child's failure and the body's `outcome?` under fail-fast: the body
/// never reports the child's failure a second time (its marker is replaced by the
/// fail-fast cancellation, which is recorded before the outcome is queued).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_and_outcome_question_mark_report_the_failure_once() {
    common::nursery::bounded(async {
        for round in 0..300 {
            let out = Nursery::new()
                .run(|n: NurseryHandle<BoxError>| async move {
                    let mut collector = n.collector::<u32>();
                    for i in 0..4u32 {
                        collector.spawn(async move {
                            tokio::task::yield_now().await;
                            if i == 2 {
                                return Err::<u32, BoxError>(Box::new(Boom));
                            }
                            Ok(i)
                        });
                    }
                    let mut sum = 0;
                    while let Some((_, outcome)) = collector.join_next().await {
                        sum += outcome?;
                    }
                    Ok(sum)
                })
                .await;
            match out {
                Err(NurseryError::Failed(f)) => assert_eq!(f.len(), 1, "round {round}: {f:?}"),
                other => panic!("round {round}: {other:?}"),
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// The body flag

/// A body that panicked no longer holds the nursery up: the tree kept at the grace's
/// expiry does not say it waits on the body.
#[tokio::test(start_paused = true)]
async fn after_the_body_panicked_the_tree_does_not_wait_on_it() {
    common::leak_checked(async move {
        let kept = Arc::new(Mutex::new(None));
        let keep = kept.clone();
        let out = common::nursery::catch(
            Nursery::new()
                .grace(ms(100))
                .keep_tree_at_grace_expiry()
                .run(|n: NurseryHandle<Cancelled>| async move {
                    *keep.lock().unwrap() = Some(n.clone());
                    n.spawn_named("legacy", legacy());
                    settle().await;
                    panic!("the body panics");
                    #[allow(unreachable_code)]
                    Ok::<(), Cancelled>(())
                }),
        )
        .await;
        assert!(out.is_err(), "the body's panic is resumed");
        let kept = kept.lock().unwrap().take().unwrap();
        let tree = kept.tree_at_grace_expiry().expect("kept").to_string();
        assert!(!tree.contains("the body"), "{tree}");
        assert!(tree.contains("cancelling, waiting on 1 child"), "{tree}");
    })
    .await
}

/// A body that returned an error (fail-fast) does not hold the nursery up either.
#[tokio::test(start_paused = true)]
async fn after_the_body_failed_the_tree_does_not_wait_on_it() {
    common::leak_checked(async move {
        let mut kept = None;
        let out = Nursery::new()
            .grace(ms(100))
            .keep_tree_at_grace_expiry()
            .run(|n: NurseryHandle<BoxError>| {
                kept = Some(n.clone());
                async move {
                    n.spawn_named("legacy", async {
                        legacy().await?;
                        Ok(())
                    });
                    settle().await;
                    Err::<(), BoxError>(Box::new(Boom))
                }
            })
            .await;
        assert!(matches!(out, Err(NurseryError::Failed(_))), "{out:?}");
        let tree = kept
            .unwrap()
            .tree_at_grace_expiry()
            .expect("kept")
            .to_string();
        assert!(tree.contains("cancelling, waiting on 1 child,"), "{tree}");
        assert!(!tree.contains("the body"), "{tree}");
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Tree at grace expiry

/// A nursery in a child, reached by its ancestor's cascade (its `expire_grace(false)`),
/// keeps the tree too: its child still running then.
#[tokio::test(start_paused = true)]
async fn a_nursery_reached_by_the_cascade_keeps_its_tree() {
    common::leak_checked(async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let out = Nursery::new()
            .grace(ms(100))
            .run(|n: NurseryHandle<Cancelled>| async move {
                n.spawn_named("worker", async move {
                    let inner = Nursery::new()
                        .name("inner")
                        .grace(Duration::from_secs(3600))
                        .keep_tree_at_grace_expiry()
                        .run(|m: NurseryHandle<Cancelled>| {
                            let _ = tx.send(m.clone());
                            async move {
                                m.spawn_named("deep", legacy());
                                sleep_forever::<Cancelled>().await
                            }
                        })
                        .await;
                    let _ = inner;
                    Ok(())
                });
                settle().await;
                n.cancel();
                Ok(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        let inner = rx.await.unwrap();
        let tree = inner.tree_at_grace_expiry().expect("kept").to_string();
        assert!(tree.contains("child \"deep\""), "{tree}");
        assert!(tree.contains("[cancelled 100ms ago"), "{tree}");
        assert!(!tree.contains("the body"), "the body had returned:\n{tree}");
    })
    .await
}

/// Nothing is kept alive by the kept tree: the children's futures are dropped, and the
/// nursery's shared state goes with its last handle.
#[tokio::test(start_paused = true)]
async fn the_kept_tree_keeps_no_child_alive() {
    common::leak_checked(async move {
        let live = common::LiveFutures::new();
        let mut kept = None;
        let l = &live;
        Nursery::new()
            .grace(ms(10))
            .keep_tree_at_grace_expiry()
            .run(|n: NurseryHandle<Cancelled>| {
                kept = Some(n.clone());
                async move {
                    for _ in 0..5 {
                        n.spawn(l.track(legacy()));
                    }
                    n.cancel();
                    Ok(())
                }
            })
            .await
            .unwrap();
        let kept = kept.unwrap();
        assert!(kept.tree_at_grace_expiry().is_some());
        assert_eq!(live.live(), 0);
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Deadlocks: the snapshot taken in `expire_grace` while cascades run

/// multi_thread: a grace expiring over nested nurseries that all keep their trees (in the
/// body, in children, dropped and adopted, with blocking children and collectors), many
/// rounds: it ends, and every nursery kept a tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascade_of_nurseries_keeping_trees_does_not_deadlock() {
    common::nursery::bounded(async {
        for _ in 0..30 {
            let kept: Arc<Mutex<Vec<NurseryHandle<Cancelled>>>> = Arc::default();
            let k = kept.clone();
            let out = Nursery::new()
                .grace(ms(30))
                .keep_tree_at_grace_expiry()
                .run(|n: NurseryHandle<Cancelled>| async move {
                    k.lock().unwrap().push(n.clone());
                    let nested =
                        |k: Arc<Mutex<Vec<NurseryHandle<Cancelled>>>>, mode, name: &'static str| {
                            Nursery::new()
                                .name(name)
                                .grace(Duration::from_secs(3600))
                                .drop_mode(mode)
                                .keep_tree_at_grace_expiry()
                                .run(move |m: NurseryHandle<Cancelled>| {
                                    k.lock().unwrap().push(m.clone());
                                    async move {
                                        for _ in 0..20 {
                                            m.spawn(legacy());
                                        }
                                        let c = m.collector::<()>();
                                        for _ in 0..5 {
                                            c.spawn(legacy());
                                        }
                                        m.spawn_blocking(|_ctx| {
                                            std::thread::sleep(ms(50));
                                            Ok::<_, Cancelled>(())
                                        });
                                        drop(c);
                                        sleep_forever::<Cancelled>().await
                                    }
                                })
                        };
                    for _ in 0..3 {
                        let k = k.clone();
                        n.spawn(async move {
                            let _ = nested(k, DropMode::Wait, "in-child").await;
                            Ok(())
                        });
                    }
                    // Dropped in wait mode: adopted by `n`.
                    let dropped = nested(k.clone(), DropMode::Wait, "dropped");
                    let _ = tokio::time::timeout(ms(5), dropped).await;
                    n.cancel();
                    // In the body, stuck past the grace.
                    let _ = nested(k.clone(), DropMode::Abort, "in-body").await;
                    Ok(())
                })
                .await;
            assert!(matches!(out, Ok(Some(()))), "{out:?}");
            // A nursery in a child may be dropped (its child aborted on the other worker)
            // before the cascade reaches it: it then expires its own grace as the cascade
            // would (it kept no tree until session 21: see
            // `a_nursery_dropped_under_an_adopter_past_its_grace_keeps_its_tree`).
            let kept = kept.lock().unwrap();
            assert_eq!(kept.len(), 6);
            for nursery in kept.iter() {
                assert!(nursery.tree_at_grace_expiry().is_some());
            }
        }
    })
    .await
}

/// A nursery with `keep_tree_at_grace_expiry`, dropped in wait mode after its adopter's
/// grace ran out (it ran in a shielded scope of the adopter's body, which the cascade
/// passes over): its children are aborted at once "as if this nursery's own grace had"
/// run out (N7's cascade).
// Found by this review, fixed in session 21. Expected the dropped nursery to keep its tree (and
// name its aborted children), as it does when the cascade reaches it through
// `StopAll::stop_all(true)` -> `expire_grace(false)`; actual: `tree_at_grace_expiry()` is None
// and `aborted_children()` is empty. `orphan` (src/nursery/mod.rs:2030-2033) handles an adopter
// past its grace with a bare `shared.abort_children(true)`, bypassing `expire_grace` (no
// snapshot, no names, no `mark_past_grace`). On multi_thread the same happens by race to a
// nursery in a child that the grace expiry aborts: if the child's task is dropped on another
// worker before the cascade reaches the nursery, it goes through `orphan` (seen in
// `a_cascade_of_nurseries_keeping_trees_does_not_deadlock` before its assertion was dropped).
#[tokio::test(start_paused = true)]
async fn a_nursery_dropped_under_an_adopter_past_its_grace_keeps_its_tree() {
    common::leak_checked(async move {
        let mut inner_handle = None;
        let outer = Nursery::new()
            .grace(ms(100))
            .run(|n: NurseryHandle<Cancelled>| {
                let keep = &mut inner_handle;
                async move {
                    n.cancel();
                    let kept = CancelScope::new()
                        .shielded()
                        .run(async move {
                            let (tx, rx) = tokio::sync::oneshot::channel();
                            let inner = Nursery::new()
                                .name("inner")
                                .grace(Duration::from_secs(3600))
                                .keep_tree_at_grace_expiry()
                                .run(|m: NurseryHandle<Cancelled>| {
                                    let _ = tx.send(m.clone());
                                    async move {
                                        m.spawn_named("legacy", legacy());
                                        sleep_forever::<Cancelled>().await
                                    }
                                });
                            // Dropped at 200 ms, past the outer grace (100 ms).
                            let _ = tokio::time::timeout(ms(200), inner).await;
                            Ok::<_, Cancelled>(rx.await.unwrap())
                        })
                        .await
                        .unwrap()
                        .unwrap();
                    *keep = Some(kept);
                    Ok(())
                }
            })
            .await;
        assert_eq!(outer.unwrap(), Some(()));
        let inner = inner_handle.unwrap();
        let tree = inner.tree_at_grace_expiry().expect("kept").to_string();
        assert!(tree.contains("child \"legacy\""), "{tree}");
        assert!(
            inner
                .aborted_children()
                .iter()
                .any(|a| a.contains("legacy")),
            "names: {:?}",
            inner.aborted_children()
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Root

type Trees = Arc<Mutex<Vec<(Vec<String>, bool, Option<String>, String)>>>;

fn trees_of(trees: &Trees) -> impl Fn(&tokio_nursery::Report<'_>) + Send + Sync + 'static {
    let trees = trees.clone();
    move |report| {
        if let tokio_nursery::Report::ShutdownCutShort {
            aborted,
            second_signal,
            tree,
            ..
        } = report
        {
            trees.lock().unwrap().push((
                aborted.to_vec(),
                *second_signal,
                tree.map(ToString::to_string),
                report.to_string(),
            ));
        }
    }
}

/// A report hook that panics on the tree: the root still ends.
#[test]
fn a_report_hook_panicking_on_the_tree_does_not_stop_the_root() {
    let out = common::nursery::within_hang_bound(|| {
        tokio_nursery::Root::new()
            .current_thread()
            .handle_signals(false)
            .grace(ms(30))
            .shutdown_bound(Duration::ZERO)
            .on_report(|report| {
                if let tokio_nursery::Report::ShutdownCutShort { tree, .. } = report {
                    let _ = tree.expect("a tree").to_string();
                    panic!("the hook panics on the tree");
                }
            })
            .run(|n: NurseryHandle<Cancelled>| async move {
                n.spawn_named("stuck", legacy());
                Ok(())
            })
    });
    assert_eq!(out.unwrap(), Some(()));
}

/// `main` returned before the grace: the tree shows the children, and no body.
#[test]
fn a_root_whose_main_returned_shows_no_body_in_its_tree() {
    let trees = Trees::default();
    let hook = trees_of(&trees);
    let out = common::nursery::within_hang_bound(move || {
        tokio_nursery::Root::new()
            .current_thread()
            .handle_signals(false)
            .grace(ms(30))
            .shutdown_bound(Duration::ZERO)
            .on_report(hook)
            .run(|n: NurseryHandle<Cancelled>| async move {
                n.spawn_named("a", legacy());
                n.spawn_named("b", async { Err::<(), _>(cancelled().await) });
                Ok(())
            })
    });
    assert_eq!(out.unwrap(), Some(()));
    let trees = trees.lock().unwrap();
    assert_eq!(trees.len(), 1, "{trees:?}");
    let tree = trees[0].2.as_deref().expect("a tree");
    assert!(!tree.contains("the body"), "{tree}");
    assert!(tree.contains("child \"a\""), "{tree}");
    assert!(!tree.contains("child \"b\""), "{tree}");
}

#[cfg(all(unix, feature = "signal"))]
static ONE_ROOT: Mutex<()> = Mutex::new(());

/// A second signal while `main` still runs (ignoring the shutdown): the root drops `main`
/// with its nursery. Its report carries the root's own tree (taken at the second signal,
/// showing the body), and names `main` among what was cut, as the grace's end does.
// Found by this review, fixed in session 21. Expected `aborted` to contain "main" (the report's
// own tree says the root was "waiting on the body", and the grace's end names "main" when it
// drops it); actual: aborted is only ["\"stuck\" (scope#..)"]. The second-signal path
// (src/root.rs:324-350) never sets `cut_short.main_cut` although `main` is dropped with the
// nursery future, so `CutShort::report` (src/root.rs:444-450) does not name it. The naming
// predates this change; the tree added today makes the report contradict itself.
#[cfg(all(unix, feature = "signal"))]
#[test]
fn a_second_signal_with_main_still_running_reports_main() {
    let _one = ONE_ROOT.lock().unwrap_or_else(|e| e.into_inner());
    let trees = Trees::default();
    let hook = trees_of(&trees);
    let out = common::nursery::within_hang_bound(move || {
        tokio_nursery::Root::new()
            .current_thread()
            .handle_signals(true)
            .grace(Duration::from_secs(30))
            .shutdown_bound(Duration::ZERO)
            .on_report(hook)
            .run(|n: NurseryHandle<Cancelled>| async move {
                n.spawn_named("stuck", legacy());
                tokio::task::yield_now().await;
                common::nursery::signal_self("TERM");
                let _ = cancelled().await;
                tokio::time::sleep(ms(20)).await;
                common::nursery::signal_self("INT");
                // Ignores the shutdown.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, Cancelled>(())
            })
    });
    assert!(matches!(out, Err(NurseryError::Cancelled(_))), "{out:?}");
    let trees = trees.lock().unwrap();
    assert_eq!(trees.len(), 1, "{trees:?}");
    let (aborted, second, tree, text) = &trees[0];
    assert!(*second, "{text}");
    let tree = tree.as_deref().expect("a tree");
    assert!(
        tree.lines()
            .next()
            .unwrap()
            .contains("cancelling, waiting on the body and 1 child"),
        "{tree}"
    );
    assert!(aborted.iter().any(|a| a.contains("stuck")), "{aborted:?}");
    assert!(
        aborted.iter().any(|a| a == "main"),
        "main was dropped: {text}"
    );
}

/// The same with no child: `main` alone is cut short by the second signal; a report
/// (with the tree showing the body) is expected.
// Found by this review, fixed in session 21. Expected one `ShutdownCutShort` report carrying
// the tree the root took at the second signal ("cancelling, waiting on the body"); actual: no
// report at all. The root takes the snapshot (`cut_short.keep_tree`, src/root.rs:340) but
// `main_cut` stays false on this path, so `named` is empty, `abandoned` 0, and
// `CutShort::report` returns early (src/root.rs:451-453): the shutdown was cut short (main
// dropped) and nothing says so, and the tree taken is thrown away.
#[cfg(all(unix, feature = "signal"))]
#[test]
fn a_second_signal_cutting_main_alone_is_reported() {
    let _one = ONE_ROOT.lock().unwrap_or_else(|e| e.into_inner());
    let trees = Trees::default();
    let hook = trees_of(&trees);
    let out = common::nursery::within_hang_bound(move || {
        tokio_nursery::Root::new()
            .current_thread()
            .handle_signals(true)
            .grace(Duration::from_secs(30))
            .shutdown_bound(Duration::ZERO)
            .on_report(hook)
            .run(|_n: NurseryHandle<Cancelled>| async move {
                tokio::task::yield_now().await;
                common::nursery::signal_self("TERM");
                let _ = cancelled().await;
                tokio::time::sleep(ms(20)).await;
                common::nursery::signal_self("INT");
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, Cancelled>(())
            })
    });
    assert!(matches!(out, Err(NurseryError::Cancelled(_))), "{out:?}");
    let trees = trees.lock().unwrap();
    assert_eq!(
        trees.len(),
        1,
        "main was dropped by the second signal, unreported"
    );
    let tree = trees[0].2.as_deref().expect("a tree");
    assert!(tree.contains("waiting on the body"), "{tree}");
}
