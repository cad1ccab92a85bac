//! Review round 20: the docs' claims about behaviour, each checked against the code
//! (`claim_*`: a claim of the rustdoc, the guide or README, quoted or paraphrased above
//! each test).

#![allow(clippy::bool_assert_comparison)]

mod common;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;
use tokio_nursery::{
    CancelReason, CancelScope, CancellableExt, Cancelled, DropMode, EffectiveDeadline, JoinError,
    Mutex, Nursery, NurseryError, Ready, SpawnError, StartError, TimedOut, check_cancelled,
    checkpoint, current_deadline, current_scope, fail_after, move_on_after, move_on_at, nursery,
    orphan_count, orphans_finished, protect, sleep,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn timed_out(e: std::io::Error) -> TimedOut {
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<TimedOut>())
        .expect("a TimedOut inside")
        .clone()
}

/// Waits until cancelled (a cancellation point), then passes the cancellation on.
async fn forever() -> Result<u32, Cancelled> {
    Err(tokio_nursery::cancelled().await)
}

// ---------------------------------------------------------------------------------------
// Collector (src/nursery/collector.rs)
// ---------------------------------------------------------------------------------------

/// collector.rs: `abort_all` "Aborts every running child of this collector; their outcomes
/// are queued as [`JoinError::ChildAborted`]"; `join_next` is `None` once every outcome was
/// taken.
#[tokio::test(start_paused = true)]
async fn claim_collector_abort_all_queues_child_aborted() {
    let out = nursery(|n| async move {
        let mut set = n.collector::<u32>();
        set.spawn(forever());
        set.spawn(forever());
        tokio::task::yield_now().await;
        assert_eq!(set.len(), 2);
        set.abort_all();
        let mut aborted = 0;
        while let Some((_id, outcome)) = set.join_next().await {
            assert!(
                matches!(outcome, Err(JoinError::ChildAborted)),
                "{outcome:?}"
            );
            aborted += 1;
        }
        assert_eq!(aborted, 2);
        assert!(set.is_empty());
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// collector.rs: abort_all before the children were ever polled (aborted before they ran).
#[tokio::test(start_paused = true)]
async fn claim_collector_abort_all_before_first_poll_queues_child_aborted() {
    let out = nursery(|n| async move {
        let mut set = n.collector::<u32>();
        set.spawn(forever());
        set.abort_all();
        let first = set.join_next().await;
        assert!(
            matches!(first, Some((_, Err(JoinError::ChildAborted)))),
            "{first:?}"
        );
        assert!(set.join_next().await.is_none());
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// collector.rs: `join_next` is `None` when no child of this collector is running (an empty
/// collector answers at once).
#[tokio::test(start_paused = true)]
async fn claim_empty_collector_join_next_is_none_at_once() {
    let out = nursery(|n| async move {
        let mut set = n.collector::<u32>();
        assert!(set.join_next().now_or_never().expect("at once").is_none());
        assert!(set.try_join_next().is_none());
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))));
}

/// collector.rs: outcomes in completion order, `len` counts running or queued, `cancel_all`
/// gives `ChildCancelled`.
#[tokio::test(start_paused = true)]
async fn claim_collector_completion_order_len_and_cancel_all() {
    let out = nursery(|n| async move {
        let mut set = n.collector::<u32>();
        let slow = set.spawn(async {
            sleep(ms(30)).await?;
            Ok(30)
        });
        let fast = set.spawn(async {
            sleep(ms(10)).await?;
            Ok(10)
        });
        set.spawn(forever());
        assert_eq!(set.len(), 3);
        let (id, v) = set.join_next().await.unwrap();
        assert_eq!(id, fast.id());
        assert_eq!(v.unwrap(), 10);
        assert_eq!(set.len(), 2);
        let (id, v) = set.join_next().await.unwrap();
        assert_eq!(id, slow.id());
        assert_eq!(v.unwrap(), 30);
        set.cancel_all();
        let (_, v) = set.join_next().await.unwrap();
        assert!(matches!(v, Err(JoinError::ChildCancelled)), "{v:?}");
        assert!(set.join_next().await.is_none());
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// collector.rs: "Unlike a `JoinSet`, dropping it aborts nothing: its children belong to
/// the nursery, which waits for them".
#[tokio::test(start_paused = true)]
async fn claim_dropping_a_collector_aborts_nothing() {
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let d = done.clone();
    let out = nursery(|n| async move {
        let set = n.collector::<u32>();
        set.spawn(async move {
            sleep(ms(50)).await?;
            d.store(true, Ordering::SeqCst);
            Ok(1)
        });
        drop(set);
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))));
    assert!(done.load(Ordering::SeqCst));
    assert_eq!(start.elapsed(), ms(50));
}

// ---------------------------------------------------------------------------------------
// ChildHandle (src/nursery/child.rs)
// ---------------------------------------------------------------------------------------

/// child.rs:663: "a child that ended gives its end even to a cancelled waiter".
#[tokio::test(start_paused = true)]
async fn claim_ended_child_gives_value_to_cancelled_waiter() {
    let out = nursery(|n| async move {
        let h = n.spawn(async { Ok::<_, Cancelled>(5) });
        while !h.is_finished() {
            tokio::task::yield_now().await;
        }
        n.cancel();
        assert!(check_cancelled().is_err());
        assert_eq!(h.await.unwrap(), 5);
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// child.rs:661: awaiting is a cancellation point of the awaiting code; the child keeps
/// running.
#[tokio::test(start_paused = true)]
async fn claim_waiter_cancelled_child_keeps_running() {
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let out = nursery(|n| async move {
        let h = n.spawn(async move {
            tokio::time::sleep(ms(50)).await; // not a cancellation point
            d.store(true, Ordering::SeqCst);
            Ok::<_, Cancelled>(5)
        });
        let waited = move_on_after(ms(10), async {
            let r = (&mut { h }).await;
            match r {
                Err(JoinError::Cancelled(c)) => Err(c),
                other => panic!("{other:?}"),
            }
        })
        .await;
        assert!(matches!(waited, Ok(None::<()>)));
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))));
    assert!(done.load(Ordering::SeqCst));
}

/// child.rs:767: cancel gives `ChildCancelled` "unless the child finishes with a value
/// anyway"; abort after the child finished gives its value.
#[tokio::test(start_paused = true)]
async fn claim_handle_cancel_and_abort_outcomes() {
    let out = nursery(|n| async move {
        let cancelled = n.spawn(async {
            sleep(Duration::from_secs(5)).await?;
            Ok::<_, Cancelled>(1)
        });
        let stubborn = n.spawn(async {
            let _ = sleep(Duration::from_secs(5)).await;
            Ok::<_, Cancelled>(2)
        });
        let finished = n.spawn(async { Ok::<_, Cancelled>(3) });
        tokio::task::yield_now().await;
        cancelled.cancel();
        stubborn.cancel();
        while !finished.is_finished() {
            tokio::task::yield_now().await;
        }
        finished.abort();
        assert!(matches!(cancelled.await, Err(JoinError::ChildCancelled)));
        assert_eq!(stubborn.await.unwrap(), 2);
        assert_eq!(finished.await.unwrap(), 3);
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// guide ch03 / child.rs: the handle is `Send`: awaited from a plain task outside the
/// nursery's scopes, it gives the value.
#[tokio::test(start_paused = true)]
async fn claim_handle_awaited_from_another_task() {
    let out = nursery(|n| async move {
        let h = n.spawn(async {
            sleep(ms(10)).await?;
            Ok::<_, Cancelled>(7)
        });
        let v = tokio::spawn(async move { h.await.unwrap() }).await.unwrap();
        Ok::<_, Cancelled>(v)
    })
    .await;
    assert_eq!(out.unwrap(), Some(7));
}

/// child.rs:671: "Awaited by its own child ... it panics instead of waiting for ever".
#[tokio::test(start_paused = true)]
async fn claim_handle_awaited_by_its_own_child_panics() {
    let out = AssertUnwindSafe(nursery(|n| async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let h = n.spawn(async move {
            let me: tokio_nursery::ChildHandle<()> = rx.await.unwrap();
            let _ = me.await;
            Ok::<_, Cancelled>(())
        });
        tx.send(h).ok().unwrap();
        Ok::<_, Cancelled>(())
    }))
    .catch_unwind()
    .await;
    assert!(out.is_err(), "panics: {:?}", out.map(|_| ()));
}

// ---------------------------------------------------------------------------------------
// Limits (src/nursery/mod.rs:171-194)
// ---------------------------------------------------------------------------------------

/// mod.rs:191: `limit(0)` panics.
#[test]
fn claim_limit_zero_panics() {
    assert!(std::panic::catch_unwind(|| Nursery::new().limit(0)).is_err());
}

/// mod.rs:187: "A limit above MAX_PERMITS (usize::MAX included) means no limit".
#[tokio::test(start_paused = true)]
async fn claim_limit_usize_max_is_no_limit() {
    let out = Nursery::new()
        .limit(usize::MAX)
        .run(|n| async move {
            for _ in 0..5 {
                n.try_spawn(forever()).expect("no limit");
            }
            n.cancel();
            Ok::<_, Cancelled>(())
        })
        .await;
    assert!(out.is_ok(), "{out:?}");
}

/// mod.rs:177-185: from a child into its own full nursery: try_spawn and spawn_when_free
/// give `Full`, start gives `StartError::Spawn(Full)`.
#[tokio::test(start_paused = true)]
async fn claim_child_into_own_full_nursery_gets_full() {
    let out = Nursery::new()
        .limit(1)
        .run(|n| async move {
            let n2 = n.clone();
            let h = n.spawn(async move {
                assert!(matches!(n2.try_spawn(forever()), Err(SpawnError::Full)));
                assert!(matches!(
                    n2.spawn_when_free(forever()).await,
                    Err(SpawnError::Full)
                ));
                let started = n2
                    .start(|ready: Ready<()>| async move {
                        ready.signal(());
                        Ok::<_, Cancelled>(0u32)
                    })
                    .await;
                assert!(
                    matches!(started, Err(StartError::Spawn(SpawnError::Full))),
                    "{started:?}"
                );
                Ok::<_, Cancelled>(1)
            });
            assert_eq!(h.await.unwrap(), 1);
            Ok::<_, Cancelled>(())
        })
        .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// mod.rs:171: `spawn` never waits: a child spawned while the nursery is full waits for a
/// slot in its own task before it first runs; `spawn_when_free` from the body waits.
#[tokio::test(start_paused = true)]
async fn claim_limit_spawn_queues_and_spawn_when_free_waits() {
    let start = Instant::now();
    let out = Nursery::new()
        .limit(1)
        .run(|n| async move {
            let ran = Arc::new(AtomicBool::new(false));
            let a = n.spawn(async {
                sleep(ms(10)).await?;
                Ok::<_, Cancelled>(1)
            });
            let r = ran.clone();
            let b = n.spawn(async move {
                r.store(true, Ordering::SeqCst);
                Ok::<_, Cancelled>(2)
            });
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            assert!(!ran.load(Ordering::SeqCst), "b waits for a slot");
            let c = n
                .spawn_when_free(async { Ok::<_, Cancelled>(3) })
                .await
                .unwrap();
            let total = a.await.unwrap() + b.await.unwrap() + c.await.unwrap();
            Ok::<_, Cancelled>(total)
        })
        .await;
    assert_eq!(out.unwrap(), Some(6));
    assert_eq!(start.elapsed(), ms(10));
}

/// mod.rs:1065: spawn_when_free is a cancellation point: cancelled first -> `SpawnError::Cancelled`
/// and nothing is spawned.
#[tokio::test(start_paused = true)]
async fn claim_spawn_when_free_cancelled_spawns_nothing() {
    let spawned = Arc::new(AtomicUsize::new(0));
    let s = spawned.clone();
    let out = Nursery::new()
        .limit(1)
        .run(|n| async move {
            n.spawn(async {
                sleep(ms(100)).await?;
                Ok::<_, Cancelled>(0u32)
            });
            let r = move_on_after(ms(10), async {
                match n
                    .spawn_when_free(async move {
                        s.fetch_add(1, Ordering::SeqCst);
                        Ok(1u32)
                    })
                    .await
                {
                    Err(SpawnError::Cancelled(c)) => Err(c),
                    other => panic!("{:?}", other.map(|_| ())),
                }
            })
            .await;
            assert!(matches!(r, Ok(None::<()>)));
            Ok::<_, Cancelled>(())
        })
        .await;
    assert!(matches!(out, Ok(Some(()))));
    assert_eq!(spawned.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------
// start (src/nursery/start.rs)
// ---------------------------------------------------------------------------------------

/// start.rs:136: "Dropping it before its first poll starts nothing."
#[tokio::test(start_paused = true)]
async fn claim_start_dropped_before_first_poll_starts_nothing() {
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let out = nursery(|n| async move {
        let start = n.start(move |ready: Ready<()>| async move {
            r.store(true, Ordering::SeqCst);
            ready.signal(());
            Ok::<_, Cancelled>(())
        });
        drop(start);
        assert_eq!(n.live_children(), 0);
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))));
    assert!(!ran.load(Ordering::SeqCst));
}

/// start.rs:35: dropping `Ready` without signalling makes the start fail with `NoSignal`
/// "once the child returns" (not when `Ready` is dropped).
#[tokio::test(start_paused = true)]
async fn claim_start_no_signal_once_the_child_returns() {
    let begin = Instant::now();
    let out = nursery(|n| async move {
        let r = n
            .start(|ready: Ready<u8>| async move {
                drop(ready);
                sleep(ms(20)).await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert!(matches!(r, Err(StartError::NoSignal)), "{r:?}");
        assert_eq!(begin.elapsed(), ms(20));
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// start.rs:69: "The child failed before signalling; its error is yours alone (not the
/// nursery's)."
#[tokio::test(start_paused = true)]
async fn claim_start_failure_before_signal_is_the_callers_alone() {
    let out = nursery(|n| async move {
        let r = n
            .start(|_ready: Ready<u8>| async move { Err::<(), _>(std::io::Error::other("bind")) })
            .await;
        assert!(
            matches!(&r, Err(StartError::Failed(e)) if e.to_string() == "bind"),
            "{r:?}"
        );
        Ok::<_, std::io::Error>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// start.rs:131: "if the caller's scope is cancelled, the child sees it (it runs under
/// those scopes) and this keeps waiting until the child signals or exits"; the child's echo
/// gives `StartError::Cancelled`, which the caller's scope absorbs.
#[tokio::test(start_paused = true)]
async fn claim_start_caller_cancelled_before_signal() {
    let begin = Instant::now();
    let out = nursery(|n| async move {
        let r = move_on_after(ms(10), async {
            match n
                .start(|ready: Ready<u8>| async move {
                    sleep(Duration::from_secs(5)).await?;
                    ready.signal(1);
                    Ok::<_, Cancelled>(())
                })
                .await
            {
                Ok(v) => Ok(v),
                Err(StartError::Cancelled(c)) => Err(c),
                Err(other) => panic!("{other:?}"),
            }
        })
        .await;
        assert!(matches!(r, Ok(None)), "{r:?}");
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
    assert_eq!(begin.elapsed(), ms(10));
}

/// start.rs:133: dropping the start future before the signal "moves the child to the
/// nursery with its own scope cancelled".
#[tokio::test(start_paused = true)]
async fn claim_start_dropped_after_first_poll_moves_child_cancelled() {
    let saw = Arc::new(AtomicBool::new(false));
    let s = saw.clone();
    let out = nursery(|n| async move {
        let mut start = Box::pin(n.start(move |ready: Ready<u8>| async move {
            let c = tokio_nursery::cancelled().await;
            s.store(true, Ordering::SeqCst);
            drop(ready);
            Err::<(), _>(c)
        }));
        assert!(futures::poll!(start.as_mut()).is_pending());
        drop(start);
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
    assert!(saw.load(Ordering::SeqCst));
}

// ---------------------------------------------------------------------------------------
// Outlet (src/nursery/mod.rs:1279)
// ---------------------------------------------------------------------------------------

/// mod.rs:140-143 / SPEC N5: a supervisor's child failure cancels no one; incidents nobody
/// took are returned at the end.
#[tokio::test(start_paused = true)]
async fn claim_supervisor_untaken_failures_returned() {
    let out = Nursery::new()
        .supervisor()
        .run(|n| async move {
            n.spawn(async { Err::<(), _>(std::io::Error::other("a")) });
            n.spawn(async { Err::<(), _>(std::io::Error::other("b")) });
            let survivor = n.spawn(async {
                sleep(ms(10)).await.map_err(std::io::Error::other)?;
                Ok(9)
            });
            Ok::<_, std::io::Error>(survivor.await.unwrap())
        })
        .await;
    match out {
        Err(NurseryError::Failed(f)) => assert_eq!(f.len(), 2),
        other => panic!("{other:?}"),
    }
}

/// mod.rs:1279: the outlet gives incidents in order, `None` once no child is alive and none
/// is left; a taken incident is no longer returned.
#[tokio::test(start_paused = true)]
async fn claim_outlet_in_order_then_none_and_taken_not_returned() {
    let out = Nursery::new()
        .supervisor()
        .run(|n| async move {
            n.spawn(async {
                sleep(ms(20)).await.map_err(std::io::Error::other)?;
                Err::<(), _>(std::io::Error::other("second"))
            });
            n.spawn(async {
                sleep(ms(10)).await.map_err(std::io::Error::other)?;
                Err::<(), _>(std::io::Error::other("first"))
            });
            let mut seen = Vec::new();
            while let Some(incident) = n.next_incident().await {
                match incident {
                    tokio_nursery::Incident::Failed(f) => seen.push(f.error().to_string()),
                    _ => panic!("a panic?"),
                }
            }
            assert_eq!(seen, ["first", "second"]);
            Ok::<_, std::io::Error>(())
        })
        .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// mod.rs:1281: "Meant for supervisor nurseries; in a fail-fast one the first failure
/// still cancels the rest." A taken incident is not returned.
#[tokio::test(start_paused = true)]
async fn claim_outlet_in_fail_fast_nursery() {
    let sibling_saw = Arc::new(std::sync::Mutex::new(None));
    let s = sibling_saw.clone();
    let out = nursery(|n| async move {
        n.spawn(async move {
            let c = tokio_nursery::cancelled().await;
            *s.lock().unwrap() = Some(c.reason().clone());
            Err::<(), _>(std::io::Error::other(c))
        });
        n.spawn(async {
            sleep(ms(10)).await.map_err(std::io::Error::other)?;
            Err::<(), _>(std::io::Error::other("boom"))
        });
        let incident = n.next_incident().await;
        assert!(matches!(incident, Some(tokio_nursery::Incident::Failed(_))));
        Ok::<_, std::io::Error>(())
    })
    .await;
    assert!(
        matches!(
            *sibling_saw.lock().unwrap(),
            Some(CancelReason::SiblingFailed)
        ),
        "{sibling_saw:?}"
    );
    assert!(out.is_ok(), "the taken failure is not returned: {out:?}");
}

// ---------------------------------------------------------------------------------------
// Nursery deadlines, timeouts, grace, cancel (src/nursery/mod.rs)
// ---------------------------------------------------------------------------------------

/// SPEC S5 / mod.rs:151: a deadline already past at entry cancels at once; absorbed.
#[tokio::test(start_paused = true)]
async fn claim_nursery_past_deadline_cancels_at_once() {
    let past = Instant::now();
    tokio::time::advance(ms(5)).await;
    let out = Nursery::new()
        .deadline(past)
        .run(|n| async move {
            let h = n.spawn(async { check_cancelled().map(|_| 1) });
            check_cancelled()?;
            Ok::<_, Cancelled>(h.await.unwrap())
        })
        .await;
    assert!(matches!(out, Ok(None)), "{out:?}");
}

/// mod.rs:151-153: a body that returned a value anyway gives `Ok(Some(value))`.
#[tokio::test(start_paused = true)]
async fn claim_nursery_zero_timeout_value_anyway() {
    let out = Nursery::new()
        .timeout(Duration::ZERO)
        .run(|_n| async move {
            assert!(check_cancelled().is_err());
            Ok::<_, Cancelled>(4)
        })
        .await;
    assert_eq!(out.unwrap(), Some(4));
}

/// mod.rs:1429: cancel before the first poll: "the nursery starts cancelled", `Ok(None)`.
#[tokio::test(start_paused = true)]
async fn claim_nursery_future_cancel_before_first_poll() {
    let mut fut = Box::pin(nursery(|n| async move {
        let h = n.spawn(async { Err::<u8, _>(tokio_nursery::cancelled().await) });
        let c = tokio_nursery::cancelled().await;
        let _ = h.await;
        Err::<(), _>(c)
    }));
    fut.as_mut().cancel();
    assert!(matches!(fut.await, Ok(None)));
}

/// mod.rs:1407: cancel_and_join on an unpolled nursery.
#[tokio::test(start_paused = true)]
async fn claim_cancel_and_join_unpolled() {
    let out = nursery(|n| async move {
        n.spawn(async { Err::<(), _>(tokio_nursery::cancelled().await) });
        Err::<(), _>(tokio_nursery::cancelled().await)
    })
    .cancel_and_join()
    .await;
    assert!(matches!(out, Ok(None)), "{out:?}");
}

/// mod.rs:1000: "Into a cancelled nursery the child starts already cancelled (N10)".
#[tokio::test(start_paused = true)]
async fn claim_spawn_into_cancelled_nursery_starts_cancelled() {
    let out = nursery(|n| async move {
        n.cancel();
        let h = n.spawn(async { Ok::<_, Cancelled>(check_cancelled().is_err()) });
        while !h.is_finished() {
            tokio::task::yield_now().await;
        }
        Ok::<_, Cancelled>(h.await.unwrap())
    })
    .await;
    assert_eq!(out.unwrap(), Some(true));
}

/// mod.rs:1003 and 1028: spawn into a closed nursery panics; try_spawn says `Closed`.
#[tokio::test(start_paused = true)]
async fn claim_spawn_into_closed_nursery() {
    let mut kept = None;
    nursery(|n| {
        kept = Some(n.clone());
        async move { Ok::<_, Cancelled>(()) }
    })
    .await
    .unwrap();
    let n = kept.unwrap();
    assert!(!n.is_open());
    assert!(matches!(
        n.try_spawn(async { Ok::<_, Cancelled>(()) }),
        Err(SpawnError::Closed)
    ));
    let panicked = std::panic::catch_unwind(AssertUnwindSafe(|| {
        n.spawn(async { Ok::<_, Cancelled>(()) });
    }));
    assert!(panicked.is_err());
    let started = n
        .start(|r: Ready<()>| async move {
            r.signal(());
            Ok::<_, Cancelled>(())
        })
        .await;
    assert!(
        matches!(started, Err(StartError::Spawn(SpawnError::Closed))),
        "{started:?}"
    );
}

/// mod.rs:214: grace of zero: stuck children are aborted at once; not a failure; named.
#[tokio::test(start_paused = true)]
async fn claim_zero_grace_aborts_stuck_children_at_once() {
    let mut kept = None;
    let begin = Instant::now();
    let out = Nursery::new()
        .grace(Duration::ZERO)
        .run(|n| {
            kept = Some(n.clone());
            async move {
                n.spawn_named("stuck", async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok::<_, Cancelled>(())
                });
                n.cancel();
                Ok::<_, Cancelled>(())
            }
        })
        .await;
    assert!(out.is_ok(), "{out:?}");
    assert_eq!(begin.elapsed(), Duration::ZERO);
    let aborted = kept.unwrap().aborted_children().to_vec();
    assert_eq!(aborted.len(), 1);
    assert!(aborted[0].contains("stuck"), "{aborted:?}");
}

/// mod.rs:274-277: "At once, if the drop mode is BlockingWait and no grace was set".
#[test]
fn claim_blocking_wait_without_grace_panics_at_run() {
    let r = std::panic::catch_unwind(|| {
        drop(
            Nursery::new()
                .drop_mode(DropMode::BlockingWait)
                .run(|_n| async { Ok::<_, Cancelled>(()) }),
        );
    });
    assert!(r.is_err());
}

/// DropMode::Wait (mod.rs:63-73): with no enclosing nursery the children go to the orphan
/// registry; `orphans_finished` waits for them.
#[tokio::test(start_paused = true)]
async fn claim_wait_drop_orphans_then_orphans_finished() {
    let cleaned = Arc::new(AtomicBool::new(false));
    let c = cleaned.clone();
    let fut = nursery(|n| async move {
        n.spawn(async move {
            let cancelled = tokio_nursery::cancelled().await;
            tokio::time::sleep(ms(20)).await; // cleanup
            c.store(true, Ordering::SeqCst);
            Err::<(), _>(cancelled)
        });
        std::future::pending::<Result<(), Cancelled>>().await
    });
    let r = tokio::time::timeout(ms(5), fut).await;
    assert!(r.is_err());
    assert_eq!(orphan_count(), 1);
    orphans_finished().await;
    assert!(cleaned.load(Ordering::SeqCst));
    assert_eq!(orphan_count(), 0);
}

// ---------------------------------------------------------------------------------------
// Scopes, timeouts and deadlines (src/scope.rs, src/timeout.rs, src/deadline.rs)
// ---------------------------------------------------------------------------------------

/// SPEC S10 / timeout.rs: a body that finishes before it observes the cancellation returns
/// its value, even with a zero timeout (which cancels at once, S5).
#[tokio::test(start_paused = true)]
async fn claim_zero_timeouts_value_anyway() {
    let a = move_on_after(Duration::ZERO, async {
        assert!(check_cancelled().is_err());
        Ok::<_, Cancelled>(1)
    })
    .await;
    assert_eq!(a.unwrap(), Some(1));
    let b: Result<u8, std::io::Error> = fail_after(Duration::ZERO, async { Ok(2) }).await;
    assert_eq!(b.unwrap(), 2);
    let c: Result<u8, std::io::Error> = fail_after(Duration::ZERO, async {
        checkpoint().await?;
        Ok(3)
    })
    .await;
    let e = timed_out(c.unwrap_err());
    assert!(e.reason().is_deadline());
    assert_eq!(e.timeout(), Some(Duration::ZERO));
}

/// timeout.rs:89: an explicit cancel of the fail scope yields `TimedOut` whose reason says
/// it was explicit.
#[tokio::test(start_paused = true)]
async fn claim_fail_after_explicit_cancel_is_timed_out_explicit() {
    let r: Result<(), std::io::Error> = fail_after(Duration::from_secs(5), async {
        current_scope().unwrap().cancel_with("stop");
        checkpoint().await?;
        Ok(())
    })
    .await;
    let e = timed_out(r.unwrap_err());
    assert!(matches!(e.reason(), CancelReason::Explicit(_)), "{e:?}");
    assert_eq!(e.reason().message(), Some("stop"));
}

/// timeout.rs:199: `timeout()` is `None` "when the body moved its scope's deadline".
#[tokio::test(start_paused = true)]
async fn claim_timed_out_timeout_none_when_deadline_moved() {
    let r: Result<(), std::io::Error> = fail_after(Duration::from_secs(5), async {
        current_scope()
            .unwrap()
            .set_deadline(Some(Instant::now() + ms(10)));
        sleep(Duration::from_secs(60)).await?;
        Ok(())
    })
    .await;
    let e = timed_out(r.unwrap_err());
    assert_eq!(e.timeout(), None, "{e:?}");
}

/// scope.rs:77-79: "A deadline set through a handle before entry replaces the timeout in
/// turn (the last one set wins)".
#[tokio::test(start_paused = true)]
async fn claim_handle_deadline_before_entry_replaces_timeout() {
    let begin = Instant::now();
    let scope = CancelScope::new().with_timeout(ms(100));
    scope.handle().set_deadline(Some(begin + ms(30)));
    let out = scope
        .run(async {
            sleep(Duration::from_secs(10)).await?;
            Ok::<_, Cancelled>(())
        })
        .await;
    assert!(matches!(out, Ok(None)));
    assert_eq!(begin.elapsed(), ms(30));

    // And `set_deadline(None)` before entry removes the timeout.
    let scope = CancelScope::new().with_timeout(ms(100));
    scope.handle().set_deadline(None);
    let begin = Instant::now();
    let out = scope
        .run(async {
            sleep(ms(500)).await?;
            Ok::<_, Cancelled>(())
        })
        .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
    assert_eq!(begin.elapsed(), ms(500));
}

/// scope.rs:200-202: later postpones "unless the scope is already cancelled".
#[tokio::test(start_paused = true)]
async fn claim_later_deadline_does_not_uncancel() {
    let scope = CancelScope::new().with_timeout(ms(10));
    let h = scope.handle();
    let out = scope
        .run(async {
            sleep(ms(20)).await.unwrap_err();
            h.set_deadline(Some(Instant::now() + Duration::from_secs(5)));
            assert!(check_cancelled().is_err());
            assert_eq!(current_deadline(), EffectiveDeadline::Passed);
            check_cancelled()?;
            Ok::<_, Cancelled>(())
        })
        .await;
    assert!(matches!(out, Ok(None)));
}

/// deadline.rs / SPEC S7: nested shields: the effective deadline stops at the nearest
/// shielded scope; lowering the shield inside a cancelled ancestor exposes it and
/// cancel_called stays false.
#[tokio::test(start_paused = true)]
async fn claim_nested_shields_deadlines_and_lowering() {
    let begin = Instant::now();
    let outer = CancelScope::new().with_deadline(begin + ms(10));
    let out = outer
        .run(async {
            assert_eq!(current_deadline(), EffectiveDeadline::At(begin + ms(10)));
            let shield = CancelScope::new().shielded();
            let sh = shield.handle();
            let inner = shield
                .run(async {
                    assert_eq!(current_deadline(), EffectiveDeadline::Unbounded);
                    let r = move_on_at(begin + ms(50), async {
                        assert_eq!(current_deadline(), EffectiveDeadline::At(begin + ms(50)));
                        let nested = CancelScope::new().shielded().run(async {
                            assert_eq!(current_deadline(), EffectiveDeadline::Unbounded);
                            sleep(ms(20)).await?; // past the outer deadline
                            Ok::<_, Cancelled>(())
                        });
                        nested.await?;
                        assert_eq!(current_deadline(), EffectiveDeadline::At(begin + ms(50)));
                        Ok::<_, Cancelled>(())
                    })
                    .await?;
                    assert_eq!(r, Some(()));
                    assert!(check_cancelled().is_ok());
                    sh.set_shield(false);
                    assert_eq!(current_deadline(), EffectiveDeadline::Passed);
                    let err = check_cancelled().unwrap_err();
                    Err::<(), _>(err)
                })
                .await;
            assert!(!sh.cancel_called());
            assert!(!sh.cancelled_caught());
            inner
        })
        .await;
    assert!(matches!(out, Ok(None)), "{out:?}");
    assert_eq!(begin.elapsed(), ms(20));
}

/// deadline.rs:22-38: `Passed.instant()` is now, remaining zero, has_passed; Unbounded none.
#[tokio::test(start_paused = true)]
async fn claim_effective_deadline_accessors() {
    assert_eq!(current_deadline(), EffectiveDeadline::Unbounded);
    assert_eq!(EffectiveDeadline::Unbounded.remaining(), None);
    assert!(!EffectiveDeadline::Unbounded.has_passed());
    assert_eq!(EffectiveDeadline::Passed.instant(), Some(Instant::now()));
    assert_eq!(EffectiveDeadline::Passed.remaining(), Some(Duration::ZERO));
    assert!(EffectiveDeadline::Passed.has_passed());
    let at = Instant::now() + ms(5);
    assert_eq!(EffectiveDeadline::At(at).remaining(), Some(ms(5)));
    assert!(!EffectiveDeadline::At(at).has_passed());
    let past = Instant::now();
    tokio::time::advance(ms(1)).await;
    assert!(EffectiveDeadline::At(past).has_passed());
    assert_eq!(
        EffectiveDeadline::At(past).remaining(),
        Some(Duration::ZERO)
    );
}

/// scope.rs:158: first reason wins; cancel_called never reverts; cancelled_caught after.
#[tokio::test(start_paused = true)]
async fn claim_first_reason_wins_and_caught() {
    let scope = CancelScope::new();
    let h = scope.handle();
    h.cancel_with("first");
    h.cancel_with("second");
    h.cancel();
    let out = scope
        .run(async {
            let c = check_cancelled().unwrap_err();
            assert_eq!(c.reason().message(), Some("first"));
            Err::<(), _>(c)
        })
        .await;
    assert!(matches!(out, Ok(None)));
    assert!(h.cancel_called());
    assert!(h.cancelled_caught());
    assert_eq!(h.reason().unwrap().message(), Some("first"));
}

// ---------------------------------------------------------------------------------------
// Cancellation points (src/point.rs)
// ---------------------------------------------------------------------------------------

/// point.rs / SPEC S3: sleep(0), checkpoint, cancelled() report, every time.
#[tokio::test(start_paused = true)]
async fn claim_points_level_triggered_including_zero_sleep() {
    let scope = CancelScope::new();
    scope.handle().cancel();
    let out = scope
        .run(async {
            for _ in 0..3 {
                assert!(sleep(Duration::ZERO).await.is_err());
                assert!(tokio_nursery::sleep_until(Instant::now()).await.is_err());
                assert!(checkpoint().await.is_err());
                assert!(check_cancelled().is_err());
                let _ = tokio_nursery::cancelled().await;
            }
            Ok::<_, Cancelled>(())
        })
        .await;
    assert!(matches!(out, Ok(Some(()))));
}

/// point.rs:187: "If the scope is already cancelled, the future is not polled at all (a
/// `recv()` made cancellable takes no message then)".
#[tokio::test(start_paused = true)]
async fn claim_cancellable_not_polled_when_already_cancelled() {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(1);
    tx.send(1).await.unwrap();
    let scope = CancelScope::new();
    scope.handle().cancel();
    let out = scope
        .run(async {
            let m = rx.recv().cancellable().await?;
            Ok::<_, Cancelled>(m)
        })
        .await;
    assert!(matches!(out, Ok(None)));
    assert_eq!(rx.recv().await, Some(1));
}

/// point.rs:80: "Outside any scope it never completes."
#[tokio::test(start_paused = true)]
async fn claim_cancelled_outside_scope_never_completes() {
    assert!(
        tokio::time::timeout(Duration::from_secs(3600), tokio_nursery::cancelled())
            .await
            .is_err()
    );
    assert!(!tokio_nursery::is_cancelled());
    assert!(check_cancelled().is_ok());
}

// ---------------------------------------------------------------------------------------
// Mutex (src/mutex.rs)
// ---------------------------------------------------------------------------------------

/// mutex.rs: a section that returns an error never poisons; a panicking one does; Poisoned
/// gives access and clears.
#[tokio::test(start_paused = true)]
async fn claim_mutex_poison_rules() {
    let m = Mutex::new(0u32);
    let r = m
        .lock(async |n: &mut u32| -> Result<(), &'static str> {
            *n += 1;
            Err("nope")?;
            Ok(())
        })
        .await
        .unwrap();
    assert!(r.is_err());
    assert!(!m.is_poisoned());
    let p = AssertUnwindSafe(m.lock(async |n: &mut u32| {
        *n += 1;
        panic!("cut");
    }))
    .catch_unwind()
    .await;
    assert!(p.is_err());
    assert!(m.is_poisoned());
    match m.lock(async |n: &mut u32| *n).await {
        Err(poisoned) => poisoned.clear_poison(),
        Ok(_) => panic!("poisoned"),
    }
    assert!(!m.is_poisoned());
    assert_eq!(m.lock(async |n: &mut u32| *n).await.unwrap(), 2);
}

/// mutex.rs: try_lock gives `None` while the lock is held; lock_cancellable in a cancelled
/// scope runs nothing even when the lock is free.
#[tokio::test(start_paused = true)]
async fn claim_mutex_try_lock_and_lock_cancellable() {
    let m = Arc::new(Mutex::new(0u32));
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let m2 = m.clone();
    let holder = tokio::spawn(async move {
        m2.lock(async |_n: &mut u32| {
            held_tx.send(()).unwrap();
            release_rx.await.unwrap();
        })
        .await
        .unwrap();
    });
    held_rx.await.unwrap();
    assert!(m.try_lock(async |n: &mut u32| *n).await.is_none());
    let scope = CancelScope::new();
    let h = scope.handle();
    let waiting = tokio::spawn({
        let m = m.clone();
        async move {
            scope
                .run(async {
                    let r = m.lock_cancellable(async |n: &mut u32| *n += 1).await?;
                    Ok::<_, Cancelled>(r.is_ok())
                })
                .await
        }
    });
    tokio::task::yield_now().await;
    h.cancel();
    assert!(matches!(waiting.await.unwrap(), Ok(None)));
    release_tx.send(()).unwrap();
    holder.await.unwrap();
    assert_eq!(
        m.try_lock(async |n: &mut u32| *n).await.unwrap().unwrap(),
        0
    );
}

// ---------------------------------------------------------------------------------------
// protect (src/nursery/protect.rs)
// ---------------------------------------------------------------------------------------

/// protect.rs:82: awaiting resumes the work's panic, original payload included.
#[tokio::test(start_paused = true)]
async fn claim_protected_resumes_panic_payload() {
    let p = protect(async {
        tokio::time::sleep(ms(5)).await;
        std::panic::panic_any(42u32);
    });
    let r = AssertUnwindSafe(p).catch_unwind().await;
    assert_eq!(*r.unwrap_err().downcast::<u32>().unwrap(), 42);
}

/// protect.rs:132-141: the work runs in a shielded scope: its caller's cancellation does
/// not reach it; the enclosing nursery waits for it even when its handle was dropped.
#[tokio::test(start_paused = true)]
async fn claim_protect_shielded_and_waited_for() {
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let begin = Instant::now();
    let out = nursery(|n| async move {
        n.cancel();
        drop(protect(async move {
            assert!(!tokio_nursery::is_cancelled());
            sleep(ms(30)).await.unwrap();
            d.store(true, Ordering::SeqCst);
        }));
        check_cancelled()?;
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(matches!(out, Ok(None)));
    assert!(done.load(Ordering::SeqCst));
    assert_eq!(begin.elapsed(), ms(30));
}

// ---------------------------------------------------------------------------------------
// Drop modes and grace (src/nursery/mod.rs:55-94, guide ch04, ch06)
// ---------------------------------------------------------------------------------------

/// mod.rs:67 / guide ch04: wait-mode drop: adopted children "keep their cancelled scope and
/// the grace period, which then aborts them as it would have"; the adopter waits for them.
#[tokio::test(start_paused = true)]
async fn claim_wait_drop_adopted_child_aborted_after_grace() {
    let begin = Instant::now();
    let aborted = Arc::new(AtomicBool::new(false));
    let a = aborted.clone();
    let out = nursery(|_outer| async move {
        let inner = Nursery::new().grace(ms(20)).run(|n| async move {
            n.spawn(async move {
                struct Flag(Arc<AtomicBool>);
                impl Drop for Flag {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::SeqCst);
                    }
                }
                let _flag = Flag(a);
                tokio::time::sleep(Duration::from_secs(60)).await; // no cancellation point
                Ok::<_, Cancelled>(())
            });
            std::future::pending::<Result<(), Cancelled>>().await
        });
        assert!(tokio::time::timeout(ms(5), inner).await.is_err());
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
    assert!(aborted.load(Ordering::SeqCst));
    assert_eq!(begin.elapsed(), ms(25));
}

/// ch06 / protect.rs:137: "No one may abort it: it is excluded from grace-period aborts,
/// abort-mode drops" and `abort_all`.
#[tokio::test(start_paused = true)]
async fn claim_protected_work_survives_abort_all_and_abort_drop() {
    let done = Arc::new(AtomicUsize::new(0));
    let d1 = done.clone();
    let d2 = done.clone();
    let out = nursery(|_outer| async move {
        // abort_all in the nursery that accounts for the protected work.
        let r = Nursery::new()
            .run(|n| async move {
                drop(protect(async move {
                    tokio::time::sleep(ms(30)).await;
                    d1.fetch_add(1, Ordering::SeqCst);
                }));
                n.abort_all();
                Ok::<_, Cancelled>(())
            })
            .await;
        assert!(r.is_ok(), "{r:?}");
        // An abort-mode drop.
        let dropped = Nursery::new()
            .drop_mode(DropMode::Abort)
            .run(|_n| async move {
                drop(protect(async move {
                    tokio::time::sleep(ms(30)).await;
                    d2.fetch_add(1, Ordering::SeqCst);
                }));
                std::future::pending::<Result<(), Cancelled>>().await
            });
        assert!(tokio::time::timeout(ms(5), dropped).await.is_err());
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(out.is_ok(), "{out:?}");
    assert_eq!(done.load(Ordering::SeqCst), 2);
}

/// mod.rs:76: abort-mode drop: a child's handle held elsewhere yields `ChildAborted`.
#[tokio::test(start_paused = true)]
async fn claim_abort_drop_handle_yields_child_aborted() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let fut = Nursery::new()
        .drop_mode(DropMode::Abort)
        .run(|n| async move {
            let h = n.spawn(async {
                sleep(Duration::from_secs(60)).await?;
                Ok::<_, Cancelled>(1)
            });
            tx.send(h).ok().unwrap();
            std::future::pending::<Result<(), Cancelled>>().await
        });
    assert!(tokio::time::timeout(ms(5), fut).await.is_err());
    let h = rx.await.unwrap();
    assert!(matches!(h.await, Err(JoinError::ChildAborted)));
}

// ---------------------------------------------------------------------------------------
// Executor (src/executor.rs)
// ---------------------------------------------------------------------------------------

/// executor.rs:54: a future handed over after the nursery has closed runs adopted by the
/// nearest live enclosing nursery, which waits for it.
#[tokio::test(start_paused = true)]
async fn claim_executor_after_close_goes_to_enclosing_nursery() {
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let begin = Instant::now();
    let out = nursery(|_outer| async move {
        let mut exec = None;
        nursery(|n| {
            exec = Some(tokio_nursery::NurseryExecutor::new(&n));
            async { Ok::<_, Cancelled>(()) }
        })
        .await
        .unwrap();
        exec.unwrap().spawn(async move {
            tokio::time::sleep(ms(10)).await;
            r.store(true, Ordering::SeqCst);
        });
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(out.is_ok(), "{out:?}");
    assert!(ran.load(Ordering::SeqCst));
    assert_eq!(begin.elapsed(), ms(10));
}

/// executor.rs:43-45: built from a handle, its concurrency limit applies and a full nursery
/// makes the future wait for a slot "without blocking the caller".
#[tokio::test(start_paused = true)]
async fn claim_executor_respects_limit_without_blocking() {
    let begin = Instant::now();
    let finished_at = Arc::new(std::sync::Mutex::new(Vec::new()));
    let f = finished_at.clone();
    let out = Nursery::new()
        .limit(1)
        .run(|n| async move {
            let exec = tokio_nursery::NurseryExecutor::new(&n);
            for _ in 0..2 {
                let f = f.clone();
                exec.spawn(async move {
                    tokio::time::sleep(ms(10)).await;
                    f.lock().unwrap().push(Instant::now());
                });
            }
            Ok::<_, Cancelled>(())
        })
        .await;
    assert!(out.is_ok());
    let at = finished_at.lock().unwrap().clone();
    assert_eq!(at, [begin + ms(10), begin + ms(20)]);
}

// ---------------------------------------------------------------------------------------
// Local scopes (src/local.rs)
// ---------------------------------------------------------------------------------------

/// local.rs:390: LocalHandle::cancel "Cancels this child alone, cooperatively. Not a
/// failure."; the local scope's outcome is a nursery's.
#[tokio::test(start_paused = true)]
async fn claim_local_handle_cancel_not_a_failure() {
    let data = [1, 2, 3];
    let out = tokio_nursery::local_scope(async |s| {
        let h = s.spawn(async {
            sleep(Duration::from_secs(60)).await?;
            Ok::<_, Cancelled>(data.len())
        });
        let other = s.spawn(async { Ok::<_, Cancelled>(data[0]) });
        tokio::task::yield_now().await;
        h.cancel();
        assert!(matches!((&mut { h }).await, Err(JoinError::ChildCancelled)));
        Ok::<_, Cancelled>(other.await.unwrap())
    })
    .await;
    assert_eq!(out.unwrap(), Some(1));
}

/// local.rs:379-381: "Polled by its own child (which could then never finish): a panic, the
/// child's." The scope resumes it.
#[tokio::test(start_paused = true)]
async fn claim_local_handle_polled_by_its_own_child_panics() {
    let out = AssertUnwindSafe(tokio_nursery::local_scope(async |s| {
        let slot = std::rc::Rc::new(std::cell::RefCell::new(None));
        let s2 = slot.clone();
        let h = s.spawn(async move {
            tokio::task::yield_now().await;
            let me: tokio_nursery::LocalHandle<'_, ()> = s2.borrow_mut().take().unwrap();
            let _ = me.await;
            Ok::<_, Cancelled>(())
        });
        *slot.borrow_mut() = Some(h);
        Ok::<_, Cancelled>(())
    }))
    .catch_unwind()
    .await;
    assert!(out.is_err());
}

/// local.rs:455-459: a child failure cancels the siblings (fail-fast) and every failure is
/// returned; an enclosing scope's cancellation passes as `NurseryError::Cancelled`.
#[tokio::test(start_paused = true)]
async fn claim_local_scope_fail_fast_and_outer_cancel() {
    let out = tokio_nursery::local_scope(async |s| {
        let sib = s.spawn(async {
            let c = tokio_nursery::cancelled().await;
            assert!(matches!(c.reason(), CancelReason::SiblingFailed));
            Err::<(), _>(std::io::Error::other(c))
        });
        s.spawn(async { Err::<(), _>(std::io::Error::other("boom")) });
        let _ = sib.await;
        Ok::<_, std::io::Error>(())
    })
    .await;
    match out {
        Err(NurseryError::Failed(f)) => {
            assert_eq!(f.len(), 1, "{f:?}");
            assert_eq!(f[0].error().to_string(), "boom");
        }
        other => panic!("{other:?}"),
    }
    let outer = CancelScope::new();
    let h = outer.handle();
    let res = outer
        .run(async {
            let inner = tokio_nursery::local_scope(async |s| {
                s.spawn(async { Err::<(), _>(tokio_nursery::cancelled().await) });
                h.cancel();
                Err::<(), _>(tokio_nursery::cancelled().await)
            })
            .await;
            match inner {
                Err(NurseryError::Cancelled(c)) => Err::<(), _>(c),
                other => panic!("{other:?}"),
            }
        })
        .await;
    assert!(matches!(res, Ok(None)));
}

// ---------------------------------------------------------------------------------------
// shutdown_signal / cancelled_owned (src/shutdown.rs)
// ---------------------------------------------------------------------------------------

/// shutdown.rs:21-24: completes when the scope current at the call is cancelled, also
/// through an ancestor; 'static + Send.
#[tokio::test(start_paused = true)]
async fn claim_cancelled_owned_reports_its_scope_through_an_ancestor() {
    let outer = CancelScope::new();
    let oh = outer.handle();
    let out = outer
        .run(async {
            CancelScope::new()
                .run(async {
                    let fut = tokio_nursery::cancelled_owned();
                    let waiter = tokio::spawn(fut);
                    tokio::time::sleep(ms(5)).await;
                    oh.cancel_with("outer");
                    let c = waiter.await.unwrap();
                    assert_eq!(c.reason().message(), Some("outer"));
                    Err::<(), _>(c)
                })
                .await
        })
        .await;
    assert!(matches!(out, Ok(None)), "{out:?}");
}

// ---------------------------------------------------------------------------------------
// Panics and the report hook (mod.rs:240-272, SPEC N6)
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Code(u32);

/// mod.rs:271 / SPEC N6: the earliest panic is resumed "even when an Err triggered the
/// cancellation"; the rest (another panic, the failure) goes to the report hook.
#[tokio::test(start_paused = true)]
async fn claim_earliest_panic_resumed_rest_to_hook() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let s = seen.clone();
    let out = AssertUnwindSafe(
        Nursery::new()
            .on_report(move |r| {
                let line = match r {
                    tokio_nursery::Report::Panic { payload, .. } => {
                        format!("panic {:?}", payload.downcast_ref::<Code>().map(|c| c.0))
                    }
                    tokio_nursery::Report::Failure { error, .. } => format!("failure {error:?}"),
                    _ => "other".into(),
                };
                s.lock().unwrap().push(line);
            })
            .run(|n| async move {
                n.spawn(async {
                    let _ = tokio_nursery::cancelled().await;
                    tokio::time::sleep(ms(5)).await;
                    std::panic::panic_any(Code(1));
                    #[allow(unreachable_code)]
                    Ok::<(), std::io::Error>(())
                });
                n.spawn(async {
                    let _ = tokio_nursery::cancelled().await;
                    tokio::time::sleep(ms(10)).await;
                    std::panic::panic_any(Code(2));
                    #[allow(unreachable_code)]
                    Ok::<(), std::io::Error>(())
                });
                n.spawn(async { Err::<(), _>(std::io::Error::other("first")) });
                Ok::<_, std::io::Error>(())
            }),
    )
    .catch_unwind()
    .await;
    let payload = out.expect_err("a panic is resumed");
    assert_eq!(payload.downcast_ref::<Code>().map(|c| c.0), Some(1));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().any(|l| l == "panic Some(2)"), "{seen:?}");
    assert!(
        seen.iter()
            .any(|l| l.starts_with("failure") && l.contains("first")),
        "{seen:?}"
    );
}

/// mod.rs:140-143: a supervisor resumes the first untaken panic; its untaken failure goes to
/// the hook (it cannot be returned).
#[tokio::test(start_paused = true)]
async fn claim_supervisor_untaken_panic_resumed_failure_to_hook() {
    let failures = Arc::new(AtomicUsize::new(0));
    let f = failures.clone();
    let out = AssertUnwindSafe(
        Nursery::new()
            .supervisor()
            .on_report(move |r| {
                if let tokio_nursery::Report::Failure { .. } = r {
                    f.fetch_add(1, Ordering::SeqCst);
                }
            })
            .run(|n| async move {
                n.spawn(async { Err::<(), _>(std::io::Error::other("x")) });
                n.spawn(async {
                    tokio::time::sleep(ms(1)).await;
                    std::panic::panic_any(Code(7));
                    #[allow(unreachable_code)]
                    Ok::<(), std::io::Error>(())
                });
                Ok::<_, std::io::Error>(())
            }),
    )
    .catch_unwind()
    .await;
    let payload = out.expect_err("resumed");
    assert_eq!(payload.downcast_ref::<Code>().map(|c| c.0), Some(7));
    assert_eq!(failures.load(Ordering::SeqCst), 1);
}

/// mod.rs:245: "A panic in the hook ... is caught: ... the nursery goes on (a panic it
/// resumes keeps its payload)".
#[tokio::test(start_paused = true)]
async fn claim_panicking_hook_is_caught() {
    let out = AssertUnwindSafe(
        Nursery::new()
            .on_report(|_| panic!("hook"))
            .run(|n| async move {
                n.spawn(async { Err::<(), _>(std::io::Error::other("f")) });
                n.spawn(async {
                    tokio::time::sleep(ms(1)).await;
                    std::panic::panic_any(Code(3));
                    #[allow(unreachable_code)]
                    Ok::<(), std::io::Error>(())
                });
                Ok::<_, std::io::Error>(())
            }),
    )
    .catch_unwind()
    .await;
    let payload = out.expect_err("resumed");
    assert_eq!(payload.downcast_ref::<Code>().map(|c| c.0), Some(3));
}

// ---------------------------------------------------------------------------------------
// Outside a runtime (scope.rs:115-118, mod.rs:277)
// ---------------------------------------------------------------------------------------

/// scope.rs:117: panics "When entered outside a tokio runtime with a deadline or timeout
/// set"; without one a scope works outside a runtime.
#[test]
fn claim_scope_outside_runtime() {
    let out = futures::executor::block_on(CancelScope::new().run(async {
        check_cancelled()?;
        Ok::<_, Cancelled>(1)
    }));
    assert_eq!(out.unwrap(), Some(1));
    let scope = CancelScope::new();
    scope.handle().cancel();
    let out = futures::executor::block_on(scope.run(async {
        check_cancelled()?;
        Ok::<_, Cancelled>(1)
    }));
    assert!(matches!(out, Ok(None)));
    let r = std::panic::catch_unwind(|| {
        futures::executor::block_on(
            CancelScope::new()
                .with_timeout(ms(5))
                .run(async { Ok::<_, Cancelled>(1) }),
        )
    });
    assert!(r.is_err(), "panics with a timeout outside a runtime");
}

/// mod.rs:277: `Nursery::run` panics "when first polled outside a tokio runtime" (not when
/// built).
#[test]
fn claim_nursery_outside_runtime_panics_at_first_poll() {
    let fut = nursery(|_n| async { Ok::<_, Cancelled>(()) });
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| futures::executor::block_on(fut)));
    assert!(r.is_err());
}

// ---------------------------------------------------------------------------------------
// Absorption (SPEC S9) and hard delivery (S12)
// ---------------------------------------------------------------------------------------

/// SPEC S9 / scope.rs:110-113: outer and inner both cancelled: the outer absorbs, the inner
/// reports caught = false and `run` passes the cancellation outwards.
#[tokio::test(start_paused = true)]
async fn claim_outermost_cancelled_scope_absorbs() {
    let outer = CancelScope::new();
    let oh = outer.handle();
    let inner = CancelScope::new();
    let ih = inner.handle();
    let out = outer
        .run(async {
            let r = inner
                .run(async {
                    ih.cancel();
                    oh.cancel();
                    let c = check_cancelled().unwrap_err();
                    assert_eq!(c.scope(), oh.id(), "names the outermost");
                    Err::<(), _>(c)
                })
                .await;
            assert!(r.is_err(), "{r:?}");
            r
        })
        .await;
    assert!(matches!(out, Ok(None)));
    assert!(oh.cancelled_caught());
    assert!(!ih.cancelled_caught());
    assert!(ih.cancel_called());
}

/// scope.rs:92 / SPEC S12: a hard scope whose body waits on a non-cancellation point is
/// dropped when cancelled from another task, at that wake-up.
#[tokio::test(start_paused = true)]
async fn claim_hard_scope_drops_parked_body() {
    let begin = Instant::now();
    let scope = CancelScope::new().hard();
    let h = scope.handle();
    tokio::spawn(async move {
        tokio::time::sleep(ms(5)).await;
        h.cancel();
    });
    let out = scope
        .run(async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Cancelled>(())
        })
        .await;
    assert!(matches!(out, Ok(None)), "{out:?}");
    assert_eq!(begin.elapsed(), ms(5));
}

/// SPEC S12: a hard scope inside a cancelled outer scope passes the outer cancellation on
/// (its output can propagate an outer cancellation).
#[tokio::test(start_paused = true)]
async fn claim_hard_scope_passes_outer_cancellation() {
    let outer = CancelScope::new();
    let oh = outer.handle();
    let out = outer
        .run(async {
            let r = CancelScope::new()
                .hard()
                .run(async {
                    oh.cancel();
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok::<_, Cancelled>(())
                })
                .await;
            let c = r.expect_err("the outer cancellation passes");
            assert_eq!(c.scope(), oh.id());
            Err::<(), _>(c)
        })
        .await;
    assert!(matches!(out, Ok(None)));
}

// ---------------------------------------------------------------------------------------
// Grace names travel in the Cancelled (mod.rs:1238-1243, SPEC N7)
// ---------------------------------------------------------------------------------------

/// mod.rs:1242: aborted children's names travel in the `Cancelled` the nursery passes on.
#[tokio::test(start_paused = true)]
async fn claim_aborted_children_travel_in_propagated_cancelled() {
    let outer = CancelScope::new();
    let oh = outer.handle();
    let out = outer
        .run(async {
            let r = Nursery::new()
                .grace(ms(10))
                .run(|n| async move {
                    n.spawn_named("stuck", async {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Ok::<_, Cancelled>(())
                    });
                    oh.cancel();
                    Err::<(), _>(tokio_nursery::cancelled().await)
                })
                .await;
            match r {
                Err(NurseryError::Cancelled(c)) => {
                    assert_eq!(c.aborted_children().len(), 1, "{c:?}");
                    assert!(c.aborted_children()[0].contains("stuck"));
                    Err::<(), _>(c)
                }
                other => panic!("{other:?}"),
            }
        })
        .await;
    assert!(matches!(out, Ok(None)));
}

// ---------------------------------------------------------------------------------------
// Blocking children (src/nursery/blocking.rs)
// ---------------------------------------------------------------------------------------

/// child.rs:778-780: a blocking child "that has not started yet never starts" once aborted.
#[tokio::test(start_paused = true)]
async fn claim_aborted_queued_blocking_child_never_starts() {
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let out = Nursery::new()
        .limit(1)
        .run(|n| async move {
            let (release, released) = tokio::sync::oneshot::channel::<()>();
            let holder = n.spawn(async move {
                let _ = released.await;
                Ok::<_, Cancelled>(())
            });
            let b = n.spawn_blocking(move |_ctx| {
                r.store(true, Ordering::SeqCst);
                Ok::<_, Cancelled>(1)
            });
            tokio::task::yield_now().await;
            b.abort();
            release.send(()).unwrap();
            holder.await.unwrap();
            let got = b.await;
            assert!(matches!(got, Err(JoinError::ChildAborted)), "{got:?}");
            Ok::<_, Cancelled>(())
        })
        .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
    assert!(!ran.load(Ordering::SeqCst));
}

/// blocking.rs:28-30: the crate's free functions work in the blocking child's thread.
#[tokio::test(start_paused = true)]
async fn claim_free_functions_work_in_blocking_child() {
    let begin = Instant::now();
    let out = Nursery::new()
        .deadline(begin + Duration::from_secs(5))
        .run(|n| async move {
            let h = n.spawn_blocking(move |ctx| {
                let d = current_deadline();
                assert_eq!(d, ctx.deadline());
                Ok::<_, Cancelled>((d, tokio_nursery::is_cancelled(), current_scope().is_some()))
            });
            Ok::<_, Cancelled>(h.await.unwrap())
        })
        .await;
    let (d, cancelled, has_scope) = out.unwrap().unwrap();
    assert_eq!(d, EffectiveDeadline::At(begin + Duration::from_secs(5)));
    assert!(!cancelled);
    assert!(has_scope);
}

// ---------------------------------------------------------------------------------------
// carry_scope (src/carry.rs)
// ---------------------------------------------------------------------------------------

/// carry.rs:20-21: "Outside every scope there is nothing to carry: the future then runs in
/// whatever scope polls it".
#[tokio::test(start_paused = true)]
async fn claim_carry_outside_scope_runs_in_the_polling_scope() {
    let carried = tokio_nursery::carry_scope(async { check_cancelled() });
    let scope = CancelScope::new();
    scope.handle().cancel();
    let out = scope
        .run(async {
            carried.await?;
            Ok::<_, Cancelled>(())
        })
        .await;
    assert!(matches!(out, Ok(None)), "{out:?}");
}

/// carry.rs:23-24: "Once the carried scope has ended it no longer follows its ancestors
/// (it keeps any cancellation it already had)".
#[tokio::test(start_paused = true)]
async fn claim_carried_ended_scope_stops_following_ancestors() {
    let outer = CancelScope::new();
    let oh = outer.handle();
    let out = outer
        .run(async {
            let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
            let task = CancelScope::new()
                .run(async {
                    Ok::<_, Cancelled>(tokio::spawn(tokio_nursery::carry_scope(async move {
                        let _ = go_rx.await;
                        tokio_nursery::is_cancelled()
                    })))
                })
                .await
                .unwrap()
                .unwrap();
            oh.cancel();
            go_tx.send(()).unwrap();
            let seen = task.await.unwrap();
            assert!(!seen, "the ended scope no longer follows the outer one");
            Err::<(), _>(check_cancelled().unwrap_err())
        })
        .await;
    assert!(matches!(out, Ok(None)));
}

// ---------------------------------------------------------------------------------------
// tokio-util tokens (src/token.rs)
// ---------------------------------------------------------------------------------------

/// token.rs:85-87: "A token already cancelled cancels the scope at once"; dropping the link
/// unlinks; reason is TOKEN_REASON.
#[tokio::test(start_paused = true)]
async fn claim_cancel_when_link_rules() {
    let token = tokio_util::sync::CancellationToken::new();
    token.cancel();
    let scope = CancelScope::new();
    let h = scope.handle();
    let _link = h.cancel_when(&token);
    assert!(h.cancel_called());
    assert_eq!(
        h.reason().unwrap().message(),
        Some(tokio_nursery::TOKEN_REASON)
    );
    drop(scope);

    let token = tokio_util::sync::CancellationToken::new();
    let scope = CancelScope::new();
    let h = scope.handle();
    let link = h.cancel_when(&token);
    drop(link);
    token.cancel();
    assert!(!h.cancel_called(), "unlinked");
}

/// token.rs:62-65: one way; "A token never reverts, so it stays cancelled if a shield
/// later hides an inherited cancellation."
#[tokio::test(start_paused = true)]
async fn claim_scope_token_one_way_and_never_reverts() {
    let outer = CancelScope::new();
    let oh = outer.handle();
    let out = outer
        .run(async {
            let inner = CancelScope::new();
            let ih = inner.handle();
            let token = ih.cancellation_token();
            let r = inner
                .run(async {
                    oh.cancel();
                    assert!(token.is_cancelled());
                    ih.set_shield(true);
                    assert!(check_cancelled().is_ok());
                    assert!(token.is_cancelled(), "never reverts");
                    Ok::<_, Cancelled>(())
                })
                .await;
            assert!(matches!(r, Ok(Some(()))));
            let t2 = tokio_nursery::cancellation_token();
            let s = CancelScope::new();
            let sh = s.handle();
            let t3 = sh.cancellation_token();
            t3.cancel();
            assert!(!sh.cancel_called(), "one way");
            assert!(t2.is_cancelled());
            Err::<(), _>(check_cancelled().unwrap_err())
        })
        .await;
    assert!(matches!(out, Ok(None)));
}

// ---------------------------------------------------------------------------------------
// More timeouts (src/timeout.rs, SPEC S9/S10)
// ---------------------------------------------------------------------------------------

/// timeout.rs:86 + SPEC S9: an outer deadline at the same instant as the fail scope's: the
/// outer one absorbs, the fail scope passes the cancellation on (not `TimedOut`).
#[tokio::test(start_paused = true)]
async fn claim_fail_after_same_instant_as_outer_passes_outer_cancellation() {
    let out = move_on_after(ms(10), async {
        let r: Result<(), std::io::Error> = fail_after(ms(10), async {
            sleep(Duration::from_secs(60)).await?;
            Ok(())
        })
        .await;
        let e = r.unwrap_err();
        assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "{e:?}");
        Err::<(), _>(check_cancelled().unwrap_err())
    })
    .await;
    assert!(matches!(out, Ok(None)));
}

/// timeout.rs:185-210: TimedOut's deadline, timeout and message for fail_after and fail_at.
#[tokio::test(start_paused = true)]
async fn claim_timed_out_fields_and_message() {
    let begin = Instant::now();
    let r: Result<(), std::io::Error> = fail_after(ms(20), async {
        sleep(Duration::from_secs(5)).await?;
        Ok(())
    })
    .await;
    let e = timed_out(r.unwrap_err());
    assert_eq!(e.deadline(), Some(begin + ms(20)));
    assert_eq!(e.timeout(), Some(ms(20)));
    assert_eq!(e.to_string(), "timed out after 20ms");
    let at = Instant::now() + ms(5);
    let r: Result<(), std::io::Error> = tokio_nursery::fail_at(at, async {
        sleep(Duration::from_secs(5)).await?;
        Ok(())
    })
    .await;
    let e = timed_out(r.unwrap_err());
    assert_eq!(e.deadline(), Some(at));
    assert_eq!(e.timeout(), None);
}

/// nursery start from the body into a full nursery waits for a slot (only a child's start
/// fails with Full, mod.rs:181).
#[tokio::test(start_paused = true)]
async fn claim_start_from_body_waits_for_a_slot() {
    let begin = Instant::now();
    let out = Nursery::new()
        .limit(1)
        .run(|n| async move {
            n.spawn(async {
                sleep(ms(10)).await?;
                Ok::<_, Cancelled>(())
            });
            let v = n
                .start(|ready: Ready<u8>| async move {
                    ready.signal(5);
                    Ok::<_, Cancelled>(())
                })
                .await
                .unwrap();
            assert_eq!(begin.elapsed(), ms(10));
            Ok::<_, Cancelled>(v)
        })
        .await;
    assert_eq!(out.unwrap(), Some(5));
}

/// mod.rs:1283: "Several tasks may wait here at once (each incident goes to one of them)".
#[tokio::test(start_paused = true)]
async fn claim_outlet_several_waiters_each_incident_once() {
    let out = Nursery::new()
        .supervisor()
        .run(|n| async move {
            let a = n.clone();
            let b = n.clone();
            n.spawn(async {
                sleep(ms(5)).await.map_err(std::io::Error::other)?;
                Err::<(), _>(std::io::Error::other("one"))
            });
            let w1 = tokio::spawn(async move { a.next_incident().await.is_some() });
            let w2 = tokio::spawn(async move { b.next_incident().await.is_some() });
            let got = [w1.await.unwrap(), w2.await.unwrap()];
            assert_eq!(got.iter().filter(|g| **g).count(), 1, "{got:?}");
            Ok::<_, std::io::Error>(())
        })
        .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

// ---------------------------------------------------------------------------------------
// More nursery claims
// ---------------------------------------------------------------------------------------

/// Collector outcomes for a failed and a panicked child (SPEC N2/N15): markers, the
/// nursery owns the failure and panic.
#[tokio::test(start_paused = true)]
async fn claim_collector_failed_and_panicked_markers() {
    let out = AssertUnwindSafe(Nursery::new().supervisor().run(|n| async move {
        let mut set = n.collector::<u32>();
        set.spawn(async { Err(std::io::Error::other("bad")) });
        set.spawn(async {
            tokio::time::sleep(ms(1)).await;
            std::panic::panic_any(Code(9));
        });
        let (_, first) = set.join_next().await.unwrap();
        assert!(matches!(first, Err(JoinError::ChildFailed)), "{first:?}");
        let (_, second) = set.join_next().await.unwrap();
        assert!(
            matches!(second, Err(JoinError::ChildPanicked)),
            "{second:?}"
        );
        Ok::<_, std::io::Error>(())
    }))
    .catch_unwind()
    .await;
    let payload = out.expect_err("the panic is resumed");
    assert_eq!(payload.downcast_ref::<Code>().map(|c| c.0), Some(9));
}

/// SPEC N10 / mod.rs:924: the handle spawns while the nursery is open, also after the body
/// returned (children still alive); the nursery waits for the new child.
#[tokio::test(start_paused = true)]
async fn claim_spawn_from_child_after_body_returned() {
    let begin = Instant::now();
    let late = Arc::new(AtomicBool::new(false));
    let l = late.clone();
    let out = nursery(|n| async move {
        let n2 = n.clone();
        n.spawn(async move {
            sleep(ms(10)).await?;
            n2.spawn(async move {
                sleep(ms(10)).await?;
                l.store(true, Ordering::SeqCst);
                Ok::<_, Cancelled>(())
            });
            Ok::<_, Cancelled>(())
        });
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))));
    assert!(late.load(Ordering::SeqCst));
    assert_eq!(begin.elapsed(), ms(20));
}

/// mod.rs:1104-1106: a child waiting for a slot that is cancelled "ends as cancelled
/// without having run".
#[tokio::test(start_paused = true)]
async fn claim_queued_child_cancelled_never_runs() {
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let out = Nursery::new()
        .limit(1)
        .run(|n| async move {
            n.spawn(async {
                sleep(ms(10)).await?;
                Ok::<_, Cancelled>(())
            });
            let queued = n.spawn(async move {
                r.store(true, Ordering::SeqCst);
                Ok::<_, Cancelled>(())
            });
            tokio::task::yield_now().await;
            queued.cancel();
            let got = queued.await;
            assert!(matches!(got, Err(JoinError::ChildCancelled)), "{got:?}");
            Ok::<_, Cancelled>(())
        })
        .await;
    assert!(matches!(out, Ok(Some(()))));
    assert!(!ran.load(Ordering::SeqCst));
}

/// mod.rs:142: in a supervisor "A failure of the body still cancels every child."
#[tokio::test(start_paused = true)]
async fn claim_supervisor_body_failure_cancels_children() {
    let reason = Arc::new(std::sync::Mutex::new(None));
    let r = reason.clone();
    let out = Nursery::new()
        .supervisor()
        .run(|n| async move {
            n.spawn(async move {
                let c = tokio_nursery::cancelled().await;
                *r.lock().unwrap() = Some(c.reason().clone());
                Err::<(), _>(std::io::Error::other(c))
            });
            tokio::task::yield_now().await;
            Err::<(), _>(std::io::Error::other("body"))
        })
        .await;
    match out {
        Err(NurseryError::Failed(f)) => {
            assert_eq!(f.len(), 1, "{f:?}");
            assert!(matches!(f[0].origin(), tokio_nursery::Origin::Body));
        }
        other => panic!("{other:?}"),
    }
    assert!(reason.lock().unwrap().is_some());
}

/// SPEC N2: handles of failed and panicked children yield markers.
#[tokio::test(start_paused = true)]
async fn claim_handle_markers_for_failed_and_panicked() {
    let out = AssertUnwindSafe(Nursery::new().supervisor().run(|n| async move {
        let failed = n.spawn(async { Err::<u8, _>(std::io::Error::other("x")) });
        let panicked = n.spawn(async {
            std::panic::panic_any(Code(4));
            #[allow(unreachable_code)]
            Ok::<u8, std::io::Error>(0)
        });
        assert!(matches!(failed.await, Err(JoinError::ChildFailed)));
        assert!(matches!(panicked.await, Err(JoinError::ChildPanicked)));
        Ok::<_, std::io::Error>(())
    }))
    .catch_unwind()
    .await;
    assert!(out.is_err());
}

/// mod.rs:1230-1233: NurseryHandle::cancel is absorbed: `Ok(Some(value))` if the body
/// returned a value anyway; children's echoes are not failures.
#[tokio::test(start_paused = true)]
async fn claim_handle_cancel_value_anyway() {
    let out = nursery(|n| async move {
        n.spawn(async { Err::<(), _>(tokio_nursery::cancelled().await) });
        n.spawn(async {
            sleep(Duration::from_secs(1)).await?;
            Ok::<_, Cancelled>(())
        });
        n.cancel();
        Ok::<_, Cancelled>(8)
    })
    .await;
    assert_eq!(out.unwrap(), Some(8));
}

// ---------------------------------------------------------------------------------------
// Which scopes a child runs under (SPEC S1, N3)
// ---------------------------------------------------------------------------------------

/// SPEC S1 / guide ch03: a child runs under the scopes around the nursery, "not around the
/// spawn call": an inner scope of the body, with an earlier deadline and cancelled, does
/// not reach it.
#[tokio::test(start_paused = true)]
async fn claim_child_runs_under_nursery_not_spawn_site() {
    let begin = Instant::now();
    let out = move_on_at(begin + Duration::from_secs(10), async {
        nursery(|n| async move {
            let h = move_on_at(begin + ms(5), async {
                let h = n.spawn(async {
                    let d = current_deadline();
                    sleep(ms(20)).await?; // past the spawn site's deadline
                    Ok::<_, Cancelled>(d)
                });
                current_scope().unwrap().cancel();
                Ok::<_, Cancelled>(h)
            })
            .await
            .unwrap()
            .unwrap();
            Ok::<_, Cancelled>(h.await.unwrap())
        })
        .await
        .map_err(|e| match e {
            NurseryError::Cancelled(c) => c,
            other => panic!("{other:?}"),
        })
    })
    .await;
    assert_eq!(
        out.unwrap().unwrap().unwrap(),
        EffectiveDeadline::At(begin + Duration::from_secs(10))
    );
}

/// SPEC N3 / start.rs: "Until then the child runs under the caller's scopes; after, under
/// the nursery's": before its signal a started child sees the caller's deadline, after it
/// the nursery's.
#[tokio::test(start_paused = true)]
async fn claim_started_child_moves_under_the_nursery_after_signal() {
    let begin = Instant::now();
    let out = nursery(|n| async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let r = move_on_at(begin + ms(50), async {
            let before = n
                .start(|ready: Ready<EffectiveDeadline>| async move {
                    ready.signal(current_deadline());
                    tokio::task::yield_now().await;
                    let _ = tx.send(current_deadline());
                    sleep(ms(100)).await?; // outlives the caller's scope
                    Ok::<_, Cancelled>(())
                })
                .await
                .unwrap();
            Ok::<_, Cancelled>(before)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(r, EffectiveDeadline::At(begin + ms(50)));
        assert_eq!(rx.await.unwrap(), EffectiveDeadline::Unbounded);
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
    assert_eq!(begin.elapsed(), ms(100));
}

/// SPEC S15 / child.rs:517-519: a stray `Cancelled` (from another scope, the child's own not
/// cancelled) is a failure marked stray; the handle says ChildFailed.
#[tokio::test(start_paused = true)]
async fn claim_stray_cancelled_is_a_stray_failure() {
    let other = CancelScope::new();
    other.handle().cancel();
    let kept = other
        .run(async { Err::<(), _>(check_cancelled().unwrap_err()) })
        .await;
    assert!(matches!(kept, Ok(None)));
    let scope = CancelScope::new();
    scope.handle().cancel();
    let stray = scope
        .run(async { Ok::<_, Cancelled>(check_cancelled().unwrap_err()) })
        .await
        .unwrap()
        .unwrap();
    let out = nursery(|n| async move {
        let h = n.spawn(async move { Err::<(), _>(stray) });
        // Read as a waiter whose scope is not cancelled (fail-fast cancelled the body's).
        let got = common::nursery::how_it_ended(h).await;
        assert!(matches!(got, Err(JoinError::ChildFailed)), "{got:?}");
        Ok::<_, Cancelled>(())
    })
    .await;
    match out {
        Err(NurseryError::Failed(f)) => {
            assert_eq!(f.len(), 1);
            assert!(f[0].is_stray());
        }
        other => panic!("{other:?}"),
    }
}

/// SPEC S15: a `Cancelled` boxed in a std error is recognised as an echo, not a failure.
#[tokio::test(start_paused = true)]
async fn claim_boxed_cancelled_echo_is_not_a_failure() {
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    let out = nursery(|n| async move {
        n.spawn(async {
            sleep(Duration::from_secs(5)).await?;
            Ok::<(), BoxError>(())
        });
        n.spawn(async {
            let c = tokio_nursery::cancelled().await;
            Err::<(), BoxError>(Box::new(std::io::Error::other(c)))
        });
        n.cancel();
        Ok::<_, BoxError>(())
    })
    .await;
    assert!(
        matches!(out, Ok(Some(()))),
        "{:?}",
        out.map_err(|e| format!("{e:?}"))
    );
}

// ---------------------------------------------------------------------------------------
// Cancel safety table entries (src/lib.rs:85-110) and more
// ---------------------------------------------------------------------------------------

/// lib.rs cancel-safety table: `Collector::join_next` dropped: "the outcome stays queued".
#[tokio::test(start_paused = true)]
async fn claim_join_next_dropped_outcome_stays_queued() {
    let out = nursery(|n| async move {
        let mut set = n.collector::<u32>();
        set.spawn(async {
            sleep(ms(5)).await?;
            Ok(1)
        });
        {
            let mut waiting = Box::pin(set.join_next());
            assert!(futures::poll!(waiting.as_mut()).is_pending());
            tokio::time::sleep(ms(10)).await; // the child ends meanwhile
        }
        assert_eq!(set.len(), 1);
        let got = set.try_join_next();
        assert!(matches!(got, Some((_, Ok(1)))), "{got:?}");
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// child.rs:792: `is_finished` true means "awaiting it then returns at once".
#[tokio::test(start_paused = true)]
async fn claim_is_finished_then_await_is_immediate() {
    let out = nursery(|n| async move {
        let h = n.spawn(async {
            sleep(ms(3)).await?;
            Ok::<_, Cancelled>(2)
        });
        while !h.is_finished() {
            tokio::time::sleep(ms(1)).await;
        }
        let v = h.now_or_never().expect("at once").unwrap();
        Ok::<_, Cancelled>(v)
    })
    .await;
    assert_eq!(out.unwrap(), Some(2));
}

/// protect.rs:33-34: a panic of protected work whose handle was dropped goes to the
/// adopting nursery's report hook, payload intact; the nursery does not resume it.
#[tokio::test(start_paused = true)]
async fn claim_protected_panic_without_handle_goes_to_hook() {
    let seen = Arc::new(std::sync::Mutex::new(None));
    let s = seen.clone();
    let out = AssertUnwindSafe(
        Nursery::new()
            .on_report(move |r| {
                if let tokio_nursery::Report::Panic { payload, .. } = r {
                    *s.lock().unwrap() = payload.downcast_ref::<Code>().map(|c| c.0);
                }
            })
            .run(|_n| async move {
                drop(protect(async {
                    tokio::time::sleep(ms(1)).await;
                    std::panic::panic_any(Code(11));
                }));
                Ok::<_, Cancelled>(())
            }),
    )
    .catch_unwind()
    .await;
    let out = out.expect("not resumed");
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
    assert_eq!(*seen.lock().unwrap(), Some(11));
}

/// executor.rs:48-52: `NurseryExecutor::current`: "A panic goes to that nursery's report
/// hook and does not fail it."
#[tokio::test(start_paused = true)]
async fn claim_executor_current_panic_to_hook_not_failure() {
    let hooked = Arc::new(AtomicUsize::new(0));
    let h = hooked.clone();
    let out = AssertUnwindSafe(
        Nursery::new()
            .on_report(move |_| {
                h.fetch_add(1, Ordering::SeqCst);
            })
            .run(|_n| async move {
                let exec = tokio_nursery::NurseryExecutor::current().unwrap();
                exec.spawn(async {
                    tokio::time::sleep(ms(1)).await;
                    std::panic::panic_any(Code(12));
                });
                Ok::<_, Cancelled>(())
            }),
    )
    .catch_unwind()
    .await;
    let out = out.expect("not resumed");
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
    assert_eq!(hooked.load(Ordering::SeqCst), 1);
}

/// executor.rs:43-47: `NurseryExecutor::new`: "A child that panics is a failure of the
/// nursery as any child's panic is" (resumed).
#[tokio::test(start_paused = true)]
async fn claim_executor_new_panic_is_a_failure() {
    let out = AssertUnwindSafe(nursery(|n| async move {
        let exec = tokio_nursery::NurseryExecutor::new(&n);
        exec.spawn(async {
            std::panic::panic_any(Code(13));
        });
        Ok::<_, Cancelled>(())
    }))
    .catch_unwind()
    .await;
    let payload = out.expect_err("resumed");
    assert_eq!(payload.downcast_ref::<Code>().map(|c| c.0), Some(13));
}

/// mod.rs:1313: abort_all "Aborts every running child now ... Not a failure."
#[tokio::test(start_paused = true)]
async fn claim_abort_all_not_a_failure() {
    let out = nursery(|n| async move {
        let a = n.spawn(async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Cancelled>(1)
        });
        tokio::task::yield_now().await;
        n.abort_all();
        assert!(matches!(a.await, Err(JoinError::ChildAborted)));
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// mod.rs:79-90: BlockingWait on a current-thread runtime falls back to Wait: the children
/// are adopted by the enclosing nursery, which waits for their cleanup; no deadlock.
#[tokio::test(start_paused = true)]
async fn claim_blocking_wait_on_current_thread_falls_back_to_wait() {
    let cleaned = Arc::new(AtomicBool::new(false));
    let c = cleaned.clone();
    let begin = Instant::now();
    let out = nursery(|_outer| async move {
        let inner = Nursery::new()
            .drop_mode(DropMode::BlockingWait)
            .grace(Duration::from_secs(1))
            .run(|n| async move {
                n.spawn(async move {
                    let cancelled = tokio_nursery::cancelled().await;
                    tokio::time::sleep(ms(20)).await;
                    c.store(true, Ordering::SeqCst);
                    Err::<(), _>(cancelled)
                });
                std::future::pending::<Result<(), Cancelled>>().await
            });
        assert!(tokio::time::timeout(ms(5), inner).await.is_err());
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(out.is_ok(), "{out:?}");
    assert!(cleaned.load(Ordering::SeqCst));
    assert_eq!(begin.elapsed(), ms(25));
}

// ---------------------------------------------------------------------------------------
// "Grace expired" for what cannot be aborted (SPEC N7, S4; protect.rs:137-138)
// ---------------------------------------------------------------------------------------

/// protect.rs:137-138: protected work "is told 'grace expired' through its scope instead,
/// and may ignore it".
#[tokio::test(start_paused = true)]
async fn claim_protected_work_told_grace_expired() {
    let begin = Instant::now();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let out = Nursery::new()
        .grace(ms(10))
        .run(|n| async move {
            drop(protect(async move {
                let err = sleep(Duration::from_secs(60)).await.unwrap_err();
                let _ = tx.send((err.reason().clone(), Instant::now()));
            }));
            n.cancel();
            Err::<(), _>(tokio_nursery::cancelled().await)
        })
        .await;
    assert!(matches!(out, Ok(None)), "{out:?}");
    let (reason, at) = rx.await.unwrap();
    assert!(matches!(reason, CancelReason::GraceExpired), "{reason:?}");
    assert_eq!(at, begin + ms(10));
}

/// blocking.rs:66-68: a blocking child still running when the grace ran out "is asked to
/// return now": `grace_expired()`.
#[tokio::test(start_paused = true)]
async fn claim_blocking_child_told_grace_expired() {
    let out = tokio::join!(
        Nursery::new().grace(ms(10)).run(|n| async move {
            let h = n.spawn_blocking(|ctx| {
                // Ignores the cancellation; stops only when told the grace ran out.
                let mut spins = 0u64;
                while !ctx.grace_expired() {
                    std::thread::yield_now();
                    spins += 1;
                    assert!(spins < 2_000_000_000, "never told");
                }
                Ok::<_, Cancelled>(ctx.is_cancelled())
            });
            n.cancel();
            let r = h.await;
            Ok::<_, Cancelled>(format!("{r:?}"))
        }),
        async {
            tokio::task::yield_now().await;
            tokio::time::advance(ms(10)).await;
        }
    )
    .0;
    assert!(out.is_ok(), "{out:?}");
}

/// scope.rs:200-202 / SPEC S6: "now" is the scope's runtime clock, never the caller's: a
/// deadline set from a plain thread, passed on the real clock but not on the paused one,
/// does not cancel.
#[tokio::test(start_paused = true)]
async fn claim_set_deadline_from_thread_uses_runtime_clock() {
    let scope = CancelScope::new();
    let h = scope.handle();
    let out = scope
        .run(async {
            let t0 = Instant::now();
            let target = t0 + Duration::from_nanos(1);
            let h2 = h.clone();
            std::thread::spawn(move || {
                // Passed on the real clock by now (the thread took longer than 1 ns to start).
                h2.set_deadline(Some(target));
            })
            .join()
            .unwrap();
            assert!(
                !h.cancel_called(),
                "not passed on the runtime's paused clock"
            );
            assert!(check_cancelled().is_ok());
            sleep(ms(1)).await?;
            Ok::<_, Cancelled>(())
        })
        .await;
    assert!(matches!(out, Ok(None)), "{out:?}");
}

/// scope.rs:217-222: lowering a shield inside a nursery whose grace period has run out
/// "exposes the scope to that too: the nurseries running in it have their children aborted
/// at once".
#[tokio::test(start_paused = true)]
async fn claim_lowering_shield_after_grace_aborts_inner_children() {
    let begin = Instant::now();
    let out = Nursery::new()
        .grace(ms(10))
        .run(|n| async move {
            let shield = CancelScope::new().shielded();
            let sh = shield.handle();
            tokio::spawn(async move {
                tokio::time::sleep(ms(20)).await;
                sh.set_shield(false);
            });
            n.cancel();
            let r = shield
                .run(async {
                    let inner = nursery(|m| async move {
                        m.spawn_named("stuck-inner", async {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            Ok::<_, Cancelled>(())
                        });
                        Err::<(), _>(tokio_nursery::cancelled().await)
                    })
                    .await;
                    match inner {
                        Err(NurseryError::Cancelled(c)) => Err::<(), _>(c),
                        other => panic!("{other:?}"),
                    }
                })
                .await;
            assert!(r.is_err(), "{r:?}");
            assert_eq!(begin.elapsed(), ms(20));
            r
        })
        .await;
    assert!(matches!(out, Ok(None)), "{out:?}");
}

/// `Ready::signal` (SPEC N3, Trio): a signal given while the caller's scope is cancelled
/// does not move the child: it stays under the caller's scopes and keeps seeing that
/// cancellation.
#[tokio::test(start_paused = true)]
async fn claim_a_signal_in_a_cancelled_caller_leaves_the_child_there() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let out = nursery(|n| async move {
        let started = move_on_after(ms(10), async {
            let r = n
                .start(|ready: Ready<u8>| async move {
                    // The caller's timeout fires while the child prepares.
                    let _ = sleep(ms(20)).await;
                    ready.signal(1);
                    tokio::task::yield_now().await;
                    let _ = tx.send(check_cancelled().is_err());
                    Ok::<_, Cancelled>(())
                })
                .await;
            Ok::<_, Cancelled>(r.ok())
        })
        .await;
        assert!(matches!(started, Ok(Some(Some(1)))), "{started:?}");
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
    assert!(
        rx.await.unwrap(),
        "the child stayed under its caller's cancelled scope"
    );
}

/// `Start`: after a signal given while the caller's scope is cancelled, `start` resolves
/// when the child exits (cancelled at 10 ms, the child signals at 20 ms and runs on for
/// 50 ms: 70 ms).
#[tokio::test(start_paused = true)]
async fn claim_start_after_a_stayed_signal_waits_for_the_childs_exit() {
    let begin = Instant::now();
    let (at_tx, at_rx) = tokio::sync::oneshot::channel();
    let out = nursery(|n| async move {
        let _ = move_on_after(ms(10), async {
            let r = n
                .start(|ready: Ready<u8>| async move {
                    let _ = sleep(ms(20)).await; // cancelled at 10 ms, keeps preparing
                    tokio::time::sleep(ms(10)).await;
                    ready.signal(1);
                    tokio::time::sleep(ms(50)).await; // "serves" on
                    Ok::<_, Cancelled>(())
                })
                .await;
            let _ = at_tx.send((Instant::now(), r.ok()));
            Ok::<_, Cancelled>(())
        })
        .await;
        Ok::<_, Cancelled>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
    let (at, r) = at_rx.await.unwrap();
    assert_eq!(r, Some(1));
    assert_eq!(at - begin, ms(70));
}

/// `StartError::Failed`: a child that failed after a signal that left it under its
/// caller's cancelled scope gives its failure to `start` (the caller's alone: the nursery
/// never sees it).
#[tokio::test(start_paused = true)]
async fn claim_a_failure_after_a_stayed_signal_is_the_callers() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let out = nursery(|n| async move {
        let _ = move_on_after(ms(10), async {
            let r = n
                .start(|ready: Ready<u8>| async move {
                    let _ = sleep(ms(20)).await;
                    ready.signal(1);
                    Err::<(), _>(std::io::Error::other("after the signal"))
                })
                .await;
            let _ = tx.send(format!("{r:?}"));
            Ok::<_, std::io::Error>(())
        })
        .await;
        Ok::<_, std::io::Error>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
    let r = rx.await.unwrap();
    assert!(
        r.starts_with("Err(Failed(") && r.contains("after the signal"),
        "{r}"
    );
}
