//! Round 20 review of commit 67f12bd: a child's handle awaited where the awaiting scope is
//! cancelled gives that cancellation for a child that ended without a value
//! (`JoinError::for_waiter`), for `ChildHandle`, `LocalHandle` and `ParallelHandle`; the
//! handle keeps the marker for a later await (the `reawait` tests failed before that).

mod common;

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use common::nursery::{AppError, how_it_ended, ms};
use futures::FutureExt;
use tokio_nursery::{
    CancelReason, CancelScope, Cancelled, JoinError, Nursery, NurseryError, NurseryHandle, Ready,
    StartError, cancelled, local_scope, move_on_after, nursery,
};

/// A child that has ended without a value: aborted, and its outcome in the handle.
async fn ended_aborted<T: Send + 'static>(
    n: &NurseryHandle<AppError>,
) -> tokio_nursery::ChildHandle<T> {
    let h = n.spawn(async {
        std::future::pending::<()>().await;
        unreachable!()
    });
    h.abort();
    while !h.is_finished() {
        tokio::task::yield_now().await;
    }
    h
}

// ---------------------------------------------------------------------------------------
// Re-awaiting a handle after `JoinError::Cancelled` (was: "loses nothing").
// ---------------------------------------------------------------------------------------

/// `JoinError::Cancelled` used to mean "the child keeps running; await the handle again".
/// Now it is also returned for a child that ended, and the handle's outcome is taken: the
/// same handle awaited again (in a shield, as the docs suggest to learn how a child ended)
/// must still give the marker, or at least not panic.
#[tokio::test]
async fn r20j_reawait_in_a_shield_after_cancelled_for_an_ended_child() {
    let out = nursery(|n: NurseryHandle<AppError>| async move {
        let mut h = ended_aborted::<u32>(&n).await;
        let cut = CancelScope::new();
        cut.handle().cancel();
        let first = cut.run(async { Ok::<_, AppError>((&mut h).await) }).await;
        let first = first.unwrap().unwrap();
        assert!(matches!(first, Err(JoinError::Cancelled(_))), "{first:?}");
        // is_finished says the outcome is waiting (awaiting returns at once) ...
        assert!(
            h.is_finished(),
            "is_finished after a Cancelled for an ended child"
        );
        // ... and the handle awaited again, where nothing is cancelled:
        let again = AssertUnwindSafe(how_it_ended(&mut h)).catch_unwind().await;
        match again {
            Ok(Err(JoinError::ChildAborted)) => {}
            Ok(other) => panic!("second await: {other:?}"),
            Err(p) => panic!(
                "second await panicked: {:?}",
                tokio_nursery::panic_message(&*p)
            ),
        }
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// The same with a local scope's handle.
#[tokio::test]
async fn r20j_local_reawait_in_a_shield_after_cancelled_for_an_ended_child() {
    let out = local_scope(async |s| {
        let mut h = s.spawn(async { Err::<u32, _>(AppError::Boom(1)) });
        // The failure cancels the scope: the body's first await gets that cancellation.
        let first = (&mut h).await;
        assert!(matches!(first, Err(JoinError::Cancelled(_))), "{first:?}");
        let again = AssertUnwindSafe(how_it_ended(&mut h)).catch_unwind().await;
        match again {
            Ok(Err(JoinError::ChildFailed)) => {}
            Ok(other) => panic!("second await: {other:?}"),
            Err(p) => panic!(
                "second await panicked: {:?}",
                tokio_nursery::panic_message(&*p)
            ),
        }
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Err(NurseryError::Failed(_))), "{out:?}");
}

/// The same with a blocking child (`Joined::Task`, tokio's `JoinHandle`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r20j_blocking_reawait_in_a_shield_after_cancelled_for_an_ended_child() {
    let out = nursery(|n: NurseryHandle<AppError>| async move {
        let mut h = n.spawn_blocking(|_cx| Err::<u32, _>(AppError::Boom(2)));
        while !h.is_finished() {
            tokio::task::yield_now().await;
        }
        let first = (&mut h).await;
        assert!(matches!(first, Err(JoinError::Cancelled(_))), "{first:?}");
        let again = AssertUnwindSafe(how_it_ended(&mut h)).catch_unwind().await;
        match again {
            Ok(Err(JoinError::ChildFailed)) => {}
            Ok(other) => panic!("second await: {other:?}"),
            Err(p) => panic!(
                "second await panicked: {:?}",
                tokio_nursery::panic_message(&*p)
            ),
        }
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Err(NurseryError::Failed(_))), "{out:?}");
}

/// A `select!` loop over `&mut handle` that goes on after the awaiting scope's
/// cancellation (a cleanup phase that still wants the child's end, the pre-67f12bd idiom:
/// "Cancelled: the child keeps running, await again"): must not panic.
#[tokio::test(start_paused = true)]
async fn r20j_a_select_loop_over_the_handle_survives_a_cancelled_for_an_ended_child() {
    let out = nursery(|n: NurseryHandle<AppError>| async move {
        let mut h = n.spawn(async {
            tokio_nursery::sleep(Duration::from_secs(1)).await?;
            Ok::<u32, AppError>(5)
        });
        // The child runs (it is not under this deadline): Cancelled, the handle is kept.
        let seen = move_on_after(ms(10), async {
            tokio::time::sleep(ms(20)).await;
            Ok::<_, AppError>((&mut h).await)
        })
        .await;
        assert!(
            matches!(seen, Ok(Some(Err(JoinError::Cancelled(_))))),
            "{seen:?}"
        );
        assert!(!h.is_finished());
        h.cancel();
        let cut = CancelScope::new();
        let handle = cut.handle();
        let res = cut
            .run(async {
                tokio::time::sleep(ms(5)).await; // the child stops first
                handle.cancel();
                Ok::<_, AppError>((&mut h).await)
            })
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(res, Err(JoinError::Cancelled(_))), "{res:?}");
        let again = AssertUnwindSafe(how_it_ended(&mut h)).catch_unwind().await;
        assert!(
            matches!(again, Ok(Err(JoinError::ChildCancelled))),
            "{:?}",
            again.map_err(|p| tokio_nursery::panic_message(&*p).map(str::to_owned))
        );
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

// ---------------------------------------------------------------------------------------
// Where the rule applies and where it does not.
// ---------------------------------------------------------------------------------------

/// Outside any scope (a plain `tokio::spawn`): markers.
#[tokio::test]
async fn r20j_outside_any_scope_a_plain_task_gets_the_marker() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let out = nursery(|n: NurseryHandle<AppError>| async move {
        let h = n.spawn(async { Err::<u32, _>(AppError::Boom(3)) });
        let _ = tx.send(h);
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Err(NurseryError::Failed(_))), "{out:?}");
    let h = rx.await.unwrap();
    let joined = tokio::spawn(h).await.unwrap();
    assert!(matches!(joined, Err(JoinError::ChildFailed)), "{joined:?}");
}

/// Outside any scope, directly in the test's task: markers.
#[tokio::test]
async fn r20j_outside_any_scope_in_main_gets_the_marker() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let out = nursery(|n: NurseryHandle<AppError>| async move {
        let h = n.spawn(async {
            cancelled().await;
            Ok::<u32, AppError>(1) // a value despite the cancellation
        });
        let g = n.spawn(async { Err::<u32, AppError>(AppError::Cancelled(cancelled().await)) });
        let _ = tx.send((h, g));
        n.cancel();
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
    let (h, g) = rx.await.unwrap();
    assert_eq!(h.await.unwrap(), 1);
    let g = g.await;
    assert!(matches!(g, Err(JoinError::ChildCancelled)), "{g:?}");
}

/// From a child of another nursery: marker while that nursery is not cancelled, its own
/// cancellation (its scope, its reason) once it is.
#[tokio::test(start_paused = true)]
async fn r20j_from_a_child_of_another_nursery() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (tx2, rx2) = tokio::sync::oneshot::channel();
    let _ = nursery(|n: NurseryHandle<AppError>| async move {
        let a = n.spawn(async { Err::<u32, _>(AppError::Boom(4)) });
        let b = n.spawn(async { Err::<u32, _>(AppError::Boom(5)) });
        let _ = tx.send(a);
        let _ = tx2.send(b);
        Ok::<_, AppError>(())
    })
    .await;
    let a = rx.await.unwrap();
    let b = rx2.await.unwrap();
    let out = nursery(|m: NurseryHandle<AppError>| async move {
        let id = m.scope().id();
        let first = m.spawn(async move { Ok::<_, AppError>(a.await) });
        let first = first.await.unwrap();
        assert!(matches!(first, Err(JoinError::ChildFailed)), "{first:?}");
        m.cancel();
        let second = m.spawn(async move { Ok::<_, AppError>(b.await) });
        let second = how_it_ended(second).await.unwrap();
        match second {
            Err(JoinError::Cancelled(c)) => {
                assert_eq!(c.scope(), id);
                assert!(matches!(c.reason(), CancelReason::Explicit(_)), "{c:?}");
            }
            other => panic!("{other:?}"),
        }
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// In a shielded scope inside a cancelled one: the marker; in a hard cancelled scope: the
/// cancellation.
#[tokio::test(start_paused = true)]
async fn r20j_shielded_gets_the_marker_hard_gets_the_cancellation() {
    let out = nursery(|n: NurseryHandle<AppError>| async move {
        let a = ended_aborted::<u32>(&n).await;
        let b = ended_aborted::<u32>(&n).await;
        let outer = CancelScope::new();
        outer.handle().cancel();
        let seen = outer
            .run(async {
                let shielded = CancelScope::new()
                    .shielded()
                    .run(async { Ok::<_, AppError>(a.await) })
                    .await
                    .unwrap()
                    .unwrap();
                assert!(
                    matches!(shielded, Err(JoinError::ChildAborted)),
                    "{shielded:?}"
                );
                Ok::<_, AppError>(())
            })
            .await;
        assert!(matches!(seen, Ok(Some(()))), "{seen:?}");
        let hard = CancelScope::new().hard();
        let hard_handle = hard.handle();
        hard_handle.cancel();
        let seen = hard.run(async { Ok::<_, AppError>(b.await) }).await;
        match seen {
            Ok(Some(Err(JoinError::Cancelled(c)))) => assert_eq!(c.scope(), hard_handle.id()),
            Ok(None) => {} // absorbed: fine too
            other => panic!("hard: {other:?}"),
        }
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// A scope cancelled after the child ended but before the await: the cancellation (the
/// rule), with the scope that was cancelled; a value still comes first.
#[tokio::test(start_paused = true)]
async fn r20j_cancelled_after_the_child_ended_before_the_await() {
    let out = nursery(|n: NurseryHandle<AppError>| async move {
        let failed = n.spawn_named("f", async {
            tokio::time::sleep(ms(1)).await;
            Ok::<u32, AppError>(9)
        });
        let aborted = ended_aborted::<u32>(&n).await;
        tokio::time::sleep(ms(5)).await;
        assert!(failed.is_finished());
        let scope = CancelScope::new();
        let sh = scope.handle();
        let got = scope
            .run(async {
                sh.cancel();
                let v = failed.await;
                let a = aborted.await;
                Ok::<_, AppError>((v, a))
            })
            .await;
        let (v, a) = got.unwrap().unwrap();
        assert_eq!(v.unwrap(), 9);
        match a {
            Err(JoinError::Cancelled(c)) => {
                assert_eq!(c.scope(), sh.id());
                assert!(matches!(c.reason(), CancelReason::Explicit(_)));
            }
            other => panic!("{other:?}"),
        }
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// A sibling awaiting a cancelled child's handle when the nursery is cancelled: gets the
/// nursery's cancellation; `?` passes it on and the nursery absorbs it.
#[tokio::test(start_paused = true)]
async fn r20j_a_sibling_awaiting_with_question_mark_when_the_nursery_is_cancelled() {
    let out = nursery(|n: NurseryHandle<AppError>| async move {
        let id = n.scope().id();
        let a = n.spawn(async {
            tokio_nursery::sleep(Duration::from_secs(10)).await?;
            Ok::<u32, AppError>(1)
        });
        let b = n.spawn(async move {
            tokio::time::sleep(ms(50)).await; // not a point: `a` stops first
            let v = a.await?;
            Ok::<u32, AppError>(v)
        });
        tokio::time::sleep(ms(10)).await;
        n.cancel();
        match how_it_ended(b).await {
            Err(JoinError::ChildCancelled) => {}
            other => panic!("b: {other:?}"),
        }
        let _ = id;
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// A blocking child (`Joined::Task`): failure → the body (cancelled by it) gets the
/// cancellation, a shield gets `ChildFailed`; a value comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r20j_blocking_children_follow_the_rule() {
    let out = nursery(|n: NurseryHandle<AppError>| async move {
        let good = n.spawn_blocking(|_cx| Ok::<u32, AppError>(11));
        let bad = n.spawn_blocking(|_cx| Err::<u32, _>(AppError::Boom(6)));
        let bad2 = n.spawn_blocking(|_cx| Err::<u32, _>(AppError::Boom(7)));
        while !(good.is_finished() && bad.is_finished() && bad2.is_finished()) {
            tokio::task::yield_now().await;
        }
        assert!(n.scope().is_cancelled());
        assert_eq!(good.await.unwrap(), 11);
        let b = bad.await;
        match &b {
            Err(JoinError::Cancelled(c)) => {
                assert!(matches!(c.reason(), CancelReason::SiblingFailed), "{c:?}")
            }
            other => panic!("{other:?}"),
        }
        let b2 = how_it_ended(bad2).await;
        assert!(matches!(b2, Err(JoinError::ChildFailed)), "{b2:?}");
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Err(NurseryError::Failed(_))), "{out:?}");
}

/// `spawn_local` children (`Joined::Task`): the same rule.
#[tokio::test]
async fn r20j_spawn_local_children_follow_the_rule() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let out = nursery(|n: NurseryHandle<AppError>| async move {
                let good = n.spawn_local(async {
                    let _rc = std::rc::Rc::new(());
                    Ok::<u32, AppError>(12)
                });
                let bad = n.spawn_local(async { Err::<u32, _>(AppError::Boom(8)) });
                let bad2 = n.spawn_local(async { Err::<u32, _>(AppError::Boom(9)) });
                while !(good.is_finished() && bad.is_finished() && bad2.is_finished()) {
                    tokio::task::yield_now().await;
                }
                assert_eq!(good.await.unwrap(), 12);
                let b = bad.await;
                assert!(matches!(b, Err(JoinError::Cancelled(_))), "{b:?}");
                let b2 = how_it_ended(bad2).await;
                assert!(matches!(b2, Err(JoinError::ChildFailed)), "{b2:?}");
                Ok::<_, AppError>(())
            })
            .await;
            assert!(matches!(out, Err(NurseryError::Failed(_))), "{out:?}");
        })
        .await;
}

/// `ParallelHandle` in a parallel scope: a value first, the cancellation for a failed
/// child in the (cancelled) body, the marker in a shield.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r20j_parallel_handles_follow_the_rule() {
    let out = tokio_nursery::parallel_scope(async |s| {
        let good = s.spawn(async { Ok::<u32, AppError>(13) });
        let bad = s.spawn(async { Err::<u32, _>(AppError::Boom(10)) });
        let bad2 = s.spawn(async { Err::<u32, _>(AppError::Boom(11)) });
        while !(good.is_finished() && bad.is_finished() && bad2.is_finished()) {
            tokio::task::yield_now().await;
        }
        assert_eq!(good.await.unwrap(), 13);
        let b = bad.await;
        assert!(matches!(b, Err(JoinError::Cancelled(_))), "{b:?}");
        let b2 = how_it_ended(bad2).await;
        assert!(matches!(b2, Err(JoinError::ChildFailed)), "{b2:?}");
        Ok::<_, AppError>(())
    })
    .expect("multi-thread");
    assert!(matches!(out, Err(NurseryError::Failed(_))), "{out:?}");
}

/// `Collector::join_next` is not a cancellation point (the drain ends in a cancelled scope),
/// but since session 21 it follows the handles' rule: a child that ended without a value
/// comes to a cancelled waiter as the waiter's own cancellation; a value as it is. (This
/// test pinned the markers until a usability review's service found `outcome?` failing
/// its body under a deadline.)
#[tokio::test(start_paused = true)]
async fn r20j_collector_join_next_gives_a_cancelled_waiter_its_cancellation() {
    let out = nursery(|n: NurseryHandle<AppError>| async move {
        let mut c = n.collector::<u32>();
        c.spawn(async {
            tokio_nursery::sleep(Duration::from_secs(10)).await?;
            Ok(1)
        });
        c.spawn(async { Ok(2) });
        tokio::time::sleep(ms(1)).await;
        n.cancel();
        let mut got = Vec::new();
        while let Some((_, r)) = c.join_next().await {
            got.push(match r {
                Ok(v) => format!("ok {v}"),
                Err(JoinError::Cancelled(c)) => format!("cancelled: {}", c.reason()),
                Err(e) => format!("{e:?}"),
            });
        }
        got.sort();
        assert_eq!(got, ["cancelled: explicit cancel", "ok 2"]);
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// In a shield the same drain gives the marker.
#[tokio::test(start_paused = true)]
async fn r20j_collector_join_next_in_a_shield_gives_markers() {
    let out = nursery(|n: NurseryHandle<AppError>| async move {
        let mut c = n.collector::<u32>();
        c.spawn(async {
            tokio_nursery::sleep(Duration::from_secs(10)).await?;
            Ok(1)
        });
        tokio::time::sleep(ms(1)).await;
        n.cancel();
        let got = CancelScope::new()
            .shielded()
            .run(async move {
                let mut got = Vec::new();
                while let Some((_, r)) = c.join_next().await {
                    got.push(r);
                }
                Ok::<_, AppError>(got)
            })
            .await
            .expect("shielded")
            .expect("not cancelled");
        assert_eq!(got.len(), 1);
        assert!(matches!(got[0], Err(JoinError::ChildCancelled)), "{got:?}");
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// `start` and `StartError` are unaffected: a failure before the signal goes to the caller
/// even when the caller's scope is cancelled.
#[tokio::test(start_paused = true)]
async fn r20j_start_failure_in_a_cancelled_caller_is_unchanged() {
    let out = nursery(|n: NurseryHandle<AppError>| async move {
        let scope = CancelScope::new();
        let sh = scope.handle();
        let got = scope
            .run(async {
                sh.cancel();
                let r = n
                    .start(|_ready: Ready<u32>| async { Err::<(), _>(AppError::Boom(12)) })
                    .await;
                Ok::<_, AppError>(r)
            })
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(got, Err(StartError::Failed(AppError::Boom(12)))),
            "{got:?}"
        );
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// `Display` of what a cancelled waiter now sees for an ended child.
#[tokio::test(start_paused = true)]
async fn r20j_display_of_the_cancelled_waiter() {
    let out = nursery(|n: NurseryHandle<AppError>| async move {
        let h = ended_aborted::<u32>(&n).await;
        let seen = move_on_after(ms(1), async {
            tokio::time::sleep(ms(2)).await;
            Ok::<_, AppError>(h.await.unwrap_err().to_string())
        })
        .await
        .unwrap()
        .unwrap();
        println!("display: {seen}");
        assert!(seen.starts_with("stopped waiting for the child"), "{seen}");
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

// ---------------------------------------------------------------------------------------
// The waiter's registration and wakeups.
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A handle pending in a scope, its child then aborted: woken once, gives the marker (the
/// scope is not cancelled), and a later cancellation of the scope wakes nothing (the waiter
/// was cleared). Then the converse: pending, the scope cancelled, the child ends: the
/// cancellation (not a marker), and no stray wake from the child's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r20j_waiter_registration_is_cleared_on_both_paths() {
    let out = nursery(|n: NurseryHandle<AppError>| async move {
        let mut h = n.spawn(async {
            std::future::pending::<()>().await;
            Ok::<u32, AppError>(0)
        });
        let scope = CancelScope::new();
        let sh = scope.handle();
        let r = scope
            .run(async {
                let count = Arc::new(Count::default());
                let waker = Waker::from(count.clone());
                let mut cx = Context::from_waker(&waker);
                assert!(Pin::new(&mut h).poll(&mut cx).is_pending());
                h.abort();
                common::wait_until("woken by the child's end", || {
                    count.0.load(Ordering::SeqCst) > 0
                })
                .await;
                let r = Pin::new(&mut h).poll(&mut cx);
                let r = match r {
                    Poll::Ready(r) => r,
                    Poll::Pending => panic!("pending after the child's end woke it"),
                };
                let before = count.0.load(Ordering::SeqCst);
                sh.cancel();
                tokio::time::sleep(ms(20)).await;
                assert_eq!(count.0.load(Ordering::SeqCst), before, "a leftover waker");
                Ok::<_, AppError>(r)
            })
            .await;
        let r = r.unwrap();
        assert!(matches!(r, Some(Err(JoinError::ChildAborted))), "{r:?}");

        let mut h = n.spawn(async {
            std::future::pending::<()>().await;
            Ok::<u32, AppError>(0)
        });
        let scope = CancelScope::new();
        let sh = scope.handle();
        let r = scope
            .run(async {
                let count = Arc::new(Count::default());
                let waker = Waker::from(count.clone());
                let mut cx = Context::from_waker(&waker);
                assert!(Pin::new(&mut h).poll(&mut cx).is_pending());
                sh.cancel();
                common::wait_until("woken by the cancellation", || {
                    count.0.load(Ordering::SeqCst) > 0
                })
                .await;
                let r = Pin::new(&mut h).poll(&mut cx);
                assert!(
                    matches!(r, Poll::Ready(Err(JoinError::Cancelled(_)))),
                    "{r:?}"
                );
                Ok::<_, AppError>(h)
            })
            .await;
        // Absorbed? the body returned Ok(h): the handle comes out.
        let h = r.unwrap().unwrap();
        h.abort();
        let after = how_it_ended(h).await;
        assert!(matches!(after, Err(JoinError::ChildAborted)), "{after:?}");
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// Race on multi_thread: the child ends (its own scope cancelled from another task) while
/// the awaiting scope is cancelled from a third; the waiter never hangs, and gets either
/// its own cancellation or the child's marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r20j_race_end_and_cancel_multi_thread() {
    common::nursery::bounded(async {
        let mut counts = [0u32; 2];
        for round in 0..300u32 {
            let out = nursery(|n: NurseryHandle<AppError>| async move {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let h = n.spawn(async move {
                    let _ = tx.send(tokio_nursery::current_scope().unwrap());
                    Err::<u32, AppError>(AppError::Cancelled(cancelled().await))
                });
                let child_scope = rx.await.unwrap();
                let scope = CancelScope::new();
                let sh = scope.handle();
                let t1 = tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    child_scope.cancel()
                });
                let sh2 = sh.clone();
                let t2 = tokio::spawn(async move {
                    if round % 2 == 0 {
                        tokio::task::yield_now().await;
                    }
                    sh2.cancel()
                });
                let r = scope.run(async { Ok::<_, AppError>(h.await) }).await;
                t1.await.unwrap();
                t2.await.unwrap();
                let which = match r {
                    Ok(Some(Err(JoinError::Cancelled(c)))) => {
                        assert_eq!(c.scope(), sh.id());
                        0
                    }
                    Ok(Some(Err(JoinError::ChildCancelled))) => 1,
                    other => panic!("round {round}: {other:?}"),
                };
                Ok::<_, AppError>(which)
            })
            .await;
            match out {
                Ok(Some(which)) => counts[which] += 1,
                other => panic!("round {round}: {other:?}"),
            }
        }
        println!("cancelled / marker: {counts:?}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// N7: the unobserved-cancellation warning.
// ---------------------------------------------------------------------------------------

mod n7 {
    use super::*;
    use common::events::recording;

    /// A child that reached a cancellation point (its sibling's handle, the sibling ended
    /// without a value) and got the cancellation is observed: not named by the warning.
    /// One that got a sibling's *value* from its handle was told nothing: named.
    #[test]
    fn r20j_n7_a_handle_reporting_the_cancellation_marks_the_scope_observed() {
        let events = recording(async {
            let out = Nursery::new()
                .warn_unobserved_after(Some(Duration::from_secs(1)))
                .run(|n: NurseryHandle<Cancelled>| async move {
                    let ends = n.spawn(async { Err::<u32, _>(cancelled().await) });
                    let gives = n.spawn(async {
                        let _ = cancelled().await;
                        Ok::<u32, Cancelled>(1)
                    });
                    n.spawn_named("joiner", async move {
                        tokio::time::sleep(ms(10)).await; // not a point: `ends` stops first
                        let seen = ends.await;
                        assert!(matches!(seen, Err(JoinError::Cancelled(_))), "{seen:?}");
                        tokio::time::sleep(Duration::from_secs(5)).await; // cleanup
                        Ok::<_, Cancelled>(())
                    });
                    n.spawn_named("valuer", async move {
                        tokio::time::sleep(ms(10)).await;
                        assert_eq!(gives.await.unwrap(), 1);
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        Ok::<_, Cancelled>(())
                    });
                    tokio::task::yield_now().await;
                    n.cancel();
                    Ok::<_, Cancelled>(())
                })
                .await;
            assert_eq!(out.unwrap(), Some(()));
        });
        let warnings: Vec<_> = events
            .iter()
            .filter(|e| e.contains("not observed"))
            .collect();
        println!("{warnings:#?}");
        assert_eq!(warnings.len(), 1, "{events:#?}");
        assert!(!warnings[0].contains("joiner"), "{}", warnings[0]);
        assert!(warnings[0].contains("valuer"), "{}", warnings[0]);
    }
}

/// The idiom "wait a while for the child, else abort it and wait for its end", where the
/// child happens to stop (its own scope cut by a watchdog) at the same instant as the
/// waiting deadline: `move_on_after` absorbs the cancellation (`Ok(None)`, which reads "the
/// child keeps running"), and the follow-up `h.await` must give the child's end, not panic.
#[tokio::test(start_paused = true)]
async fn r20j_wait_a_while_then_abort_and_join_at_the_same_instant() {
    let out = nursery(|n: NurseryHandle<AppError>| async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut h = n.spawn(async move {
            let _ = tx.send(tokio_nursery::current_scope().unwrap());
            Err::<u32, AppError>(AppError::Cancelled(cancelled().await))
        });
        let child_scope = rx.await.unwrap();
        let watchdog = tokio::spawn(async move {
            tokio::time::sleep(ms(10)).await;
            child_scope.cancel();
        });
        let waited = move_on_after(ms(10), async {
            tokio::time::sleep(ms(10)).await; // busy until the deadline (not a point)
            tokio::task::yield_now().await; // the child runs its end first
            Ok::<_, AppError>((&mut h).await?)
        })
        .await;
        watchdog.await.unwrap();
        let end = match waited {
            Ok(Some(value)) => Ok(value),
            Ok(None) => {
                h.abort();
                match AssertUnwindSafe(&mut h).catch_unwind().await {
                    Ok(end) => end,
                    Err(p) => panic!(
                        "joining after the wait was cut panicked: {:?}",
                        tokio_nursery::panic_message(&*p)
                    ),
                }
            }
            Err(e) => panic!("{e:?}"),
        };
        assert!(
            matches!(
                end,
                Err(JoinError::ChildCancelled | JoinError::ChildAborted)
            ),
            "{end:?}"
        );
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}
