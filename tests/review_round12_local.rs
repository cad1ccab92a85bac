//! Review round 12 (session 12): local scopes (B1), the collector (N15) and `start` (N3).
//! Each test asserts the promised behaviour; those that name a cause describe the code
//! before session 12's fix.

use std::cell::Cell;
use std::time::Duration;

use tokio::time::Instant;
use tokio_nursery::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// B1 ("the same rules" as a nursery, children make progress while the scope is polled):
/// a body that waits for a child by checkpointing in a loop (Trio's `await checkpoint()`
/// idiom) must let the child run. Each checkpoint spends tokio's budget, so the body ends
/// every poll with the budget exhausted, and `poll_children` then polled no child at all
/// (until session 12).
#[tokio::test(start_paused = true)]
async fn b1_a_body_that_spends_the_whole_budget_does_not_starve_its_children() {
    let flag = Cell::new(false);
    let rounds = Cell::new(0u32);
    let out = local_scope(async |s| {
        s.spawn(async {
            flag.set(true);
            Ok::<_, Cancelled>(())
        });
        // Bounded, so that a starved child shows as a failure rather than a hang (the
        // paused clock never advances while the task keeps waking itself).
        while !flag.get() && rounds.get() < 100_000 {
            rounds.set(rounds.get() + 1);
            checkpoint().await?;
        }
        Ok::<_, Cancelled>(flag.get())
    })
    .await;
    assert_eq!(
        out.unwrap(),
        Some(true),
        "the child never ran while the body checkpointed {} times",
        rounds.get()
    );
}

/// B1, the same with a child that needs tokio's budget too (a checkpoint spends a unit):
/// the children the body left no budget for are polled first at the next poll, so both
/// make progress.
#[tokio::test(start_paused = true)]
async fn b1_a_child_that_spends_budget_too_progresses_beside_a_body_that_spends_it_all() {
    let done = Cell::new(0u32);
    let rounds = Cell::new(0u32);
    let out = local_scope(async |s| {
        s.spawn(async {
            for _ in 0..1_000 {
                checkpoint().await?;
                done.set(done.get() + 1);
            }
            Ok::<_, Cancelled>(())
        });
        while done.get() < 1_000 && rounds.get() < 1_000_000 {
            rounds.set(rounds.get() + 1);
            checkpoint().await?;
        }
        Ok::<_, Cancelled>(done.get())
    })
    .await;
    assert_eq!(
        out.unwrap(),
        Some(1_000),
        "after {} body rounds",
        rounds.get()
    );
}

/// S9 through B1 ("the same cancellation rules"): a local scope that absorbs its own
/// cancellation must say so through its handle's `cancelled_caught`, as a nursery's and a
/// plain scope's do. Until session 12 `local_scope` ended its node with `end(false)` before
/// `finish` decided the absorption, so `CAUGHT` was never set.
#[tokio::test(start_paused = true)]
async fn s9_a_local_scope_that_absorbs_its_cancellation_reports_cancelled_caught() {
    let handle = Cell::new(None);
    let out = local_scope(async |s| {
        handle.set(Some(s.scope()));
        s.spawn(async {
            sleep(Duration::from_secs(10)).await?;
            Ok::<_, Cancelled>(())
        });
        s.scope().cancel();
        checkpoint().await?;
        Ok::<_, Cancelled>(())
    })
    .await;
    assert_eq!(out.unwrap(), None, "absorbed");
    let handle = handle.take().unwrap();
    assert!(handle.cancel_called());
    assert!(
        handle.cancelled_caught(),
        "the local scope absorbed its own cancellation, yet cancelled_caught is false"
    );
}

/// Control for the test above: the same program with a nursery says `cancelled_caught`.
#[tokio::test(start_paused = true)]
async fn control_a_nursery_that_absorbs_reports_cancelled_caught() {
    let handle = std::sync::Mutex::new(None);
    let out = nursery(|n| {
        let handle = &handle;
        async move {
            *handle.lock().unwrap() = Some(n.scope());
            n.cancel();
            checkpoint().await?;
            Ok::<_, Cancelled>(())
        }
    })
    .await;
    assert_eq!(out.unwrap(), None);
    assert!(handle.lock().unwrap().take().unwrap().cancelled_caught());
}

/// N3: after the signal the child runs under the nursery's scope only; the caller's deadline
/// passing afterwards must not reach it.
#[tokio::test(start_paused = true)]
async fn n3_after_the_signal_the_callers_deadline_no_longer_reaches_the_child() {
    let start = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        nursery(|n| async move {
            let child_end = std::sync::Arc::new(std::sync::Mutex::new(None));
            let seen = child_end.clone();
            let r = move_on_after(ms(10), async {
                n.start(move |ready: Ready<()>| async move {
                    ready.signal(());
                    let slept = sleep(ms(50)).await;
                    *seen.lock().unwrap() = Some((slept.is_ok(), start.elapsed()));
                    slept
                })
                .await
                .map_err(|e| match e {
                    StartError::Cancelled(c) => c,
                    other => panic!("{other:?}"),
                })?;
                sleep(ms(100)).await?;
                Ok::<_, Cancelled>(())
            })
            .await;
            assert_eq!(r.unwrap(), None, "the caller's timeout fired");
            Ok::<_, Cancelled>(child_end)
        }),
    )
    .await
    .expect("no hang");
    let child_end = out.unwrap().unwrap();
    assert_eq!(*child_end.lock().unwrap(), Some((true, ms(50))));
}

/// N9 through B1: a wait-mode nursery inside a local child, dropped with the local scope's
/// future, must hand its children to the nearest live enclosing nursery (here `outer`, which
/// encloses the local scope), not to the runtime's orphan registry. Until session 12
/// `local_scope` declared its `EndScope` guard after `scope`, so the local scope's node was
/// ended (and forgot its parent) *before* `LocalScope::drop` dropped the children: the
/// inner nursery's walk up the scope tree stopped at the ended local node.
#[tokio::test(start_paused = true)]
async fn n9_a_nursery_in_a_local_child_dropped_with_the_local_scope_is_adopted_by_the_enclosing_nursery()
 {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let cleaned = Arc::new(AtomicBool::new(false));
    let orphaned_after_drop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        nursery(|_outer| {
            let cleaned = cleaned.clone();
            let orphaned_after_drop = orphaned_after_drop.clone();
            async move {
                let local = local_scope(async |s| {
                    let cleaned = cleaned.clone();
                    s.spawn(async move {
                        let _ = Nursery::new()
                            .drop_mode(DropMode::Wait)
                            .run(|inner| async move {
                                inner.spawn(async move {
                                    // Cleanup that takes 10 ms after the cancellation.
                                    let _ = cancelled().await;
                                    tokio::time::sleep(ms(10)).await;
                                    cleaned.store(true, Ordering::SeqCst);
                                    Ok::<_, Cancelled>(())
                                });
                                std::future::pending::<()>().await;
                                Ok::<_, Cancelled>(())
                            })
                            .await;
                        Ok::<_, Cancelled>(())
                    });
                    std::future::pending::<()>().await;
                    Ok::<_, Cancelled>(())
                });
                // Drops the local scope (and the nursery in its child) after 1 ms.
                assert!(tokio::time::timeout(ms(1), local).await.is_err());
                orphaned_after_drop.store(orphan_count() > 0, Ordering::SeqCst);
                Ok::<_, Cancelled>(())
            }
        }),
    )
    .await
    .expect("no hang");
    assert_eq!(out.unwrap(), Some(()));
    assert!(
        !orphaned_after_drop.load(Ordering::SeqCst),
        "the inner nursery's children went to the orphan registry although `outer` is live"
    );
    assert!(
        cleaned.load(Ordering::SeqCst),
        "`outer` returned before the adopted child finished its cleanup (it never adopted it)"
    );
    assert_eq!(start.elapsed(), ms(11));
    orphans_finished().await;
}

/// N3 + S5/S1: `move_on_after(d, n.start(f))` is the natural way to bound a start. The
/// caller's scopes are those the `Start` future runs in (a scope is entered by running a
/// future in it). Until session 12 `start` spawned the child eagerly, when `n.start(f)` was
/// evaluated, under the scopes current *then* (outside the timeout): the timeout did nothing
/// and the start ran until the child signalled 100 ms later.
#[tokio::test(start_paused = true)]
async fn n3_a_start_future_awaited_inside_a_timeout_runs_under_the_timeouts_scope() {
    let start = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        nursery(|n| async move {
            let r = move_on_after(
                ms(10),
                n.start(|ready: Ready<()>| async move {
                    sleep(ms(100)).await?;
                    ready.signal(());
                    Ok::<_, Cancelled>(())
                }),
            )
            .await;
            Ok::<_, Cancelled>((format!("{r:?}"), start.elapsed()))
        }),
    )
    .await
    .expect("no hang");
    let (r, elapsed) = out.unwrap().unwrap();
    assert_eq!(
        elapsed,
        ms(10),
        "the 10 ms timeout around the start did not bound it (outcome {r})"
    );
}

/// The `#[must_use]` message of `Start` says "a start does nothing unless awaited": the child
/// does not run before the `Start` is polled (it did until session 12).
#[tokio::test(start_paused = true)]
async fn n3_a_start_does_nothing_unless_awaited_as_its_must_use_says() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let ran = Arc::new(AtomicBool::new(false));
    let seen = ran.clone();
    let out = nursery(|n| async move {
        let st = n.start(move |ready: Ready<()>| async move {
            seen.store(true, Ordering::SeqCst);
            ready.signal(());
            Ok::<_, Cancelled>(())
        });
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let ran_before_await = ran.load(Ordering::SeqCst);
        st.await.unwrap();
        Ok::<_, Cancelled>(ran_before_await)
    })
    .await;
    assert_eq!(
        out.unwrap(),
        Some(false),
        "the started child ran although its Start was not awaited yet"
    );
}

/// N15 + N11 + N5: a supervisor's collector with a limit of one; a failing child, children
/// queued for the slot, `abort_all`, `cancel_all`; every outcome in the collector, the
/// failure in the outlet, nothing hangs.
#[tokio::test(start_paused = true)]
async fn n15_collector_supervisor_limit_abort_all() {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Nursery::new().supervisor().limit(1).run(|n| async move {
            let mut set = n.collector::<u32>();
            set.spawn(async {
                sleep(ms(5)).await?;
                Err::<u32, _>(std::io::Error::other("boom"))
            });
            for i in 0..3 {
                set.spawn(async move {
                    sleep(ms(5)).await?;
                    Ok::<_, std::io::Error>(i)
                });
            }
            assert!(matches!(
                set.try_spawn(async { Ok(9) }),
                Err(SpawnError::Full)
            ));
            let mut seen = Vec::new();
            let (_, first) = set.join_next().await.unwrap();
            seen.push(format!("{first:?}"));
            let incident = n.next_incident().await;
            assert!(matches!(incident, Some(Incident::Failed(_))));
            set.abort_all();
            while let Some((_, outcome)) = set.join_next().await {
                seen.push(format!("{outcome:?}"));
            }
            assert_eq!(set.len(), 0);
            Ok::<_, std::io::Error>(seen)
        }),
    )
    .await
    .expect("no hang");
    let seen = out.unwrap().unwrap();
    assert_eq!(seen[0], "Err(ChildFailed)");
    assert_eq!(seen.len(), 4, "{seen:?}");
}

/// N15: a collector dropped while some of its children run keeps nothing for them: the
/// outcomes delivered after the drop are dropped at once (until session 12 they piled up
/// in a queue nobody could read, kept alive by the children still running).
#[tokio::test(start_paused = true)]
async fn n15_a_dropped_collector_drops_the_outcomes_delivered_after_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    struct Token(Arc<AtomicUsize>);
    impl Drop for Token {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicUsize::new(0));
    let counter = dropped.clone();
    let out = nursery(|n| async move {
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let set = n.collector::<Token>();
        let quick = counter.clone();
        set.spawn(async move { Ok::<_, Cancelled>(Token(quick)) });
        let slow = counter.clone();
        set.spawn(async move {
            let _ = release_rx.await;
            Ok::<_, Cancelled>(Token(slow))
        });
        drop(set);
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        // The quick child delivered after the drop; the slow one still runs.
        let seen = counter.load(Ordering::SeqCst);
        release_tx.send(()).unwrap();
        Ok::<_, Cancelled>(seen)
    })
    .await;
    assert_eq!(out.unwrap(), Some(1), "the quick child's outcome was kept");
    assert_eq!(dropped.load(Ordering::SeqCst), 2);
}
