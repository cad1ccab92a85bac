//! Round 20 review of commit 780f818: a handle keeps the marker it did not give a cancelled
//! waiter (`Joined::Kept` in `ChildHandle`, `LocalHandle::kept`). Probes what a handle in
//! that state still references (the output slot, the nursery's `Wakers` table, tokio's
//! `JoinHandle`), what its methods answer, and how it behaves when awaited again.

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
    CancelScope, ChildHandle, JoinError, NurseryError, NurseryHandle, local_scope, move_on_after,
    nursery,
};

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

fn pending_child(n: &NurseryHandle<AppError>) -> ChildHandle<u32> {
    n.spawn(async {
        std::future::pending::<()>().await;
        Ok::<u32, AppError>(0)
    })
}

/// Polls every handle once with `waker` (in the current scope's context).
fn poll_all(handles: &mut [ChildHandle<u32>], waker: &Waker) -> Vec<Poll<Result<u32, JoinError>>> {
    let mut cx = Context::from_waker(waker);
    handles
        .iter_mut()
        .map(|h| Pin::new(h).poll(&mut cx))
        .collect()
}

async fn wait_finished(handles: &[ChildHandle<u32>]) {
    common::wait_until("every child finished", || {
        handles.iter().all(|h| h.is_finished())
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Nothing left behind: the Wakers table, the waiter's registration.
// ---------------------------------------------------------------------------------------

/// Many handles wait (their wakers in the nursery's table), their children are aborted
/// (the writer takes the wakers out and wakes them), then each is polled in a cancelled
/// scope (switches to Kept) and dropped: no clone of the waker is left anywhere, and the
/// children's outcomes are read once (a shield after the switch gives the marker).
#[tokio::test(start_paused = true)]
async fn r20k_many_handles_kept_after_a_wait_leave_no_waker() {
    const N: usize = 200;
    let count = Arc::new(Count::default());
    let out = nursery(|n: NurseryHandle<AppError>| {
        let count = count.clone();
        async move {
            let mut handles: Vec<_> = (0..N).map(|_| pending_child(&n)).collect();
            tokio::task::yield_now().await;
            let waker = Waker::from(count.clone());
            // Wait in a scope that is not cancelled.
            let polled = CancelScope::new()
                .run(async { Ok::<_, AppError>(poll_all(&mut handles, &waker)) })
                .await
                .unwrap()
                .unwrap();
            assert!(polled.iter().all(Poll::is_pending));
            for h in &handles {
                h.abort();
            }
            wait_finished(&handles).await;
            assert_eq!(
                count.0.load(Ordering::SeqCst),
                N,
                "each waiting handle woken once"
            );
            // Poll in a cancelled scope: Cancelled, marker kept.
            let cut = CancelScope::new();
            cut.handle().cancel();
            let polled = cut
                .run(async { Ok::<_, AppError>(poll_all(&mut handles, &waker)) })
                .await
                .unwrap()
                .unwrap();
            for p in &polled {
                assert!(
                    matches!(p, Poll::Ready(Err(JoinError::Cancelled(_)))),
                    "{p:?}"
                );
            }
            drop(waker);
            // Half are read in a shield (the marker), half dropped as they are.
            let rest = handles.split_off(N / 2);
            for h in handles {
                let got = how_it_ended(h).await;
                assert!(matches!(got, Err(JoinError::ChildAborted)), "{got:?}");
            }
            drop(rest);
            assert_eq!(
                Arc::strong_count(&count),
                2,
                "a waker clone is left (in the Wakers table or a waiter) after Kept handles \
                 were dropped"
            );
            Ok::<_, AppError>(())
        }
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
    assert_eq!(Arc::strong_count(&count), 1);
}

/// The same, but the first wait is in the cancelled scope itself (the handle returns
/// Cancelled from the waiter path with its waker left in the table), the children end
/// afterwards, and the next poll (cancelled again) switches to Kept.
#[tokio::test(start_paused = true)]
async fn r20k_handles_cancelled_while_waiting_then_kept_leave_no_waker() {
    const N: usize = 200;
    let count = Arc::new(Count::default());
    let out = nursery(|n: NurseryHandle<AppError>| {
        let count = count.clone();
        async move {
            let mut handles: Vec<_> = (0..N).map(|_| pending_child(&n)).collect();
            tokio::task::yield_now().await;
            let waker = Waker::from(count.clone());
            let cut = CancelScope::new();
            let ch = cut.handle();
            let got = cut
                .run(async {
                    ch.cancel();
                    let first = poll_all(&mut handles, &waker);
                    for p in &first {
                        assert!(
                            matches!(p, Poll::Ready(Err(JoinError::Cancelled(_)))),
                            "{p:?}"
                        );
                    }
                    // The slot's waker stays in the table until the child ends.
                    for h in &handles {
                        h.abort();
                    }
                    wait_finished(&handles).await;
                    let second = poll_all(&mut handles, &waker);
                    for p in &second {
                        assert!(
                            matches!(p, Poll::Ready(Err(JoinError::Cancelled(_)))),
                            "{p:?}"
                        );
                    }
                    // A third poll: Kept answers again, still Cancelled.
                    let third = poll_all(&mut handles, &waker);
                    for p in &third {
                        assert!(
                            matches!(p, Poll::Ready(Err(JoinError::Cancelled(_)))),
                            "{p:?}"
                        );
                    }
                    Ok::<_, AppError>(())
                })
                .await;
            assert!(matches!(got, Ok(Some(()))), "{got:?}");
            drop(waker);
            for h in handles.drain(..N / 2) {
                let got = how_it_ended(h).await;
                assert!(matches!(got, Err(JoinError::ChildAborted)), "{got:?}");
            }
            drop(handles);
            assert_eq!(Arc::strong_count(&count), 2, "a waker clone is left");
            Ok::<_, AppError>(())
        }
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
    assert_eq!(Arc::strong_count(&count), 1);
}

/// A handle switched to Kept and dropped does not touch the slot again: its nursery goes on
/// spawning and joining many children through the same table (a double release or a
/// reused key would show as a wrong outcome, a lost wakeup or a debug assertion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r20k_kept_handles_dropped_while_the_nursery_goes_on() {
    common::nursery::bounded(async {
        let out = nursery(|n: NurseryHandle<AppError>| async move {
            for round in 0..20u32 {
                let mut kept = Vec::new();
                for i in 0..20u32 {
                    let h = n.spawn(async move {
                        if i % 2 == 0 {
                            Err::<u32, _>(AppError::Cancelled(tokio_nursery::cancelled().await))
                        } else {
                            Ok(i)
                        }
                    });
                    kept.push(h);
                }
                // Fresh waiters on the same table while the kept ones are dropped.
                let fresh: Vec<_> = (0..20u32)
                    .map(|i| n.spawn(async move { Ok::<u32, AppError>(i + 100 * round) }))
                    .collect();
                let cut = CancelScope::new();
                let ch = cut.handle();
                let kept = cut
                    .run(async {
                        ch.cancel();
                        for h in kept.iter().step_by(2) {
                            h.cancel();
                        }
                        let mut out = Vec::new();
                        for mut h in kept {
                            let r = (&mut h).await;
                            out.push((h, r));
                        }
                        Ok::<_, AppError>(out)
                    })
                    .await
                    .unwrap()
                    .unwrap();
                for (i, (h, r)) in kept.into_iter().enumerate() {
                    if i % 2 == 0 {
                        assert!(matches!(r, Err(JoinError::Cancelled(_))), "{r:?}");
                        if i % 4 == 0 {
                            drop(h);
                        } else {
                            let m = how_it_ended(h).await;
                            assert!(matches!(m, Err(JoinError::ChildCancelled)), "{m:?}");
                        }
                    } else {
                        match r {
                            Ok(v) => assert_eq!(v, i as u32),
                            // Not ended yet when the cancelled waiter looked.
                            Err(JoinError::Cancelled(_)) => {
                                assert_eq!(how_it_ended(h).await.unwrap(), i as u32)
                            }
                            other => panic!("{other:?}"),
                        }
                    }
                }
                for (i, h) in fresh.into_iter().enumerate() {
                    assert_eq!(h.await.unwrap(), i as u32 + 100 * round);
                }
            }
            Ok::<_, AppError>(())
        })
        .await;
        assert!(matches!(out, Ok(Some(()))), "{out:?}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// The methods of a Kept handle.
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn r20k_methods_of_a_kept_handle() {
    let out = nursery(|n: NurseryHandle<AppError>| async move {
        let mut h = n.spawn_named("kept-one", async {
            std::future::pending::<()>().await;
            Ok::<u32, AppError>(0)
        });
        let id = h.id();
        h.abort();
        while !h.is_finished() {
            tokio::task::yield_now().await;
        }
        let first = move_on_after(ms(1), async {
            tokio::time::sleep(ms(2)).await;
            Ok::<_, AppError>((&mut h).await)
        })
        .await
        .unwrap()
        .unwrap();
        assert!(matches!(first, Err(JoinError::Cancelled(_))), "{first:?}");
        // Now Kept.
        assert_eq!(h.id(), id);
        assert_eq!(h.name(), Some("kept-one"));
        assert!(h.is_finished());
        h.cancel();
        h.abort();
        let dbg = format!("{h:?}");
        assert!(dbg.contains("kept-one"), "{dbg}");
        // Awaited again where nothing is cancelled: the marker, once (the outcome, taken);
        // a poll after that panics, as after any outcome.
        let again = how_it_ended(&mut h).await;
        assert!(matches!(again, Err(JoinError::ChildAborted)), "{again:?}");
        let third = AssertUnwindSafe(how_it_ended(&mut h)).catch_unwind().await;
        match third {
            Err(payload) => assert_eq!(
                tokio_nursery::panic_message(&*payload),
                Some("tokio-nursery: a ChildHandle polled after it returned")
            ),
            Ok(other) => panic!("third: {other:?}"),
        }
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// A Kept handle awaited in a second cancelled scope gives that scope's cancellation (not
/// the first one's).
#[tokio::test(start_paused = true)]
async fn r20k_a_kept_handle_names_the_current_cancelled_scope() {
    let out = nursery(|n: NurseryHandle<AppError>| async move {
        let mut h = pending_child(&n);
        h.abort();
        while !h.is_finished() {
            tokio::task::yield_now().await;
        }
        let mut ids = Vec::new();
        for _ in 0..3 {
            let cut = CancelScope::new();
            let ch = cut.handle();
            ch.cancel();
            let r = cut
                .run(async { Ok::<_, AppError>((&mut h).await) })
                .await
                .unwrap()
                .unwrap();
            match r {
                Err(JoinError::Cancelled(c)) => {
                    assert_eq!(c.scope(), ch.id());
                    ids.push(c.scope());
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(ids[0] != ids[1] && ids[1] != ids[2]);
        let m = how_it_ended(h).await;
        assert!(matches!(m, Err(JoinError::ChildAborted)), "{m:?}");
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// The nursery returns while a handle is Kept; awaited afterwards (outside any scope): the
/// marker. Its child's failure is the nursery's, once.
#[tokio::test(start_paused = true)]
async fn r20k_a_kept_handle_outlives_its_nursery() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let out = nursery(|n: NurseryHandle<AppError>| async move {
        let mut h = n.spawn(async { Err::<u32, _>(AppError::Boom(1)) });
        while !h.is_finished() {
            tokio::task::yield_now().await;
        }
        // The failure cancelled the body: Cancelled, Kept.
        let r = (&mut h).await;
        assert!(matches!(r, Err(JoinError::Cancelled(_))), "{r:?}");
        let _ = tx.send(h);
        Ok::<_, AppError>(())
    })
    .await;
    match &out {
        Err(NurseryError::Failed(f)) => assert_eq!(f.len(), 1, "{out:?}"),
        other => panic!("{other:?}"),
    }
    let h = rx.await.unwrap();
    assert!(h.is_finished());
    h.cancel();
    h.abort();
    let r = h.await;
    assert!(matches!(r, Err(JoinError::ChildFailed)), "{r:?}");
}

// ---------------------------------------------------------------------------------------
// select! while the scope is cancelled.
// ---------------------------------------------------------------------------------------

/// `select!` over `&mut handle` in a loop while the scope is cancelled: Ready each time, at
/// once (no Pending, no busy wait on the clock), Cancelled every time.
#[tokio::test(start_paused = true)]
async fn r20k_select_loop_in_a_cancelled_scope_is_ready_each_time() {
    let out = nursery(|n: NurseryHandle<AppError>| async move {
        let mut h = pending_child(&n);
        h.abort();
        while !h.is_finished() {
            tokio::task::yield_now().await;
        }
        let cut = CancelScope::new();
        cut.handle().cancel();
        let start = tokio::time::Instant::now();
        let seen = cut
            .run(async {
                let mut seen = 0;
                for _ in 0..1000 {
                    tokio::select! {
                        biased;
                        r = &mut h => {
                            assert!(matches!(r, Err(JoinError::Cancelled(_))), "{r:?}");
                            seen += 1;
                        }
                        _ = tokio::time::sleep(Duration::from_secs(1)) => panic!("pending"),
                    }
                }
                Ok::<_, AppError>(seen)
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen, 1000);
        assert_eq!(tokio::time::Instant::now(), start, "the clock moved");
        // Still the marker afterwards.
        let m = how_it_ended(h).await;
        assert!(matches!(m, Err(JoinError::ChildAborted)), "{m:?}");
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

// ---------------------------------------------------------------------------------------
// Joined::Task: blocking and spawn_local children.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r20k_blocking_kept_handle_drops_its_join_handle_harmlessly() {
    common::nursery::bounded(async {
        let out = nursery(|n: NurseryHandle<AppError>| async move {
            let mut hs: Vec<_> = (0..16u32)
                .map(|i| {
                    n.spawn_blocking_named(&format!("b{i}"), move |_cx| {
                        Err::<u32, _>(AppError::Boom(i))
                    })
                })
                .collect();
            common::wait_until("blocking children finished", || {
                hs.iter().all(|h| h.is_finished())
            })
            .await;
            let ids: Vec<_> = hs.iter().map(|h| h.id()).collect();
            for h in &mut hs {
                let r = h.await;
                assert!(matches!(r, Err(JoinError::Cancelled(_))), "{r:?}");
            }
            for (i, h) in hs.iter().enumerate() {
                assert_eq!(h.id(), ids[i]);
                assert_eq!(h.name(), Some(format!("b{i}").as_str()));
                assert!(h.is_finished());
                h.abort();
                h.cancel();
            }
            let mut markers = 0;
            for (i, h) in hs.into_iter().enumerate() {
                if i % 2 == 0 {
                    drop(h);
                } else {
                    let m = how_it_ended(h).await;
                    assert!(matches!(m, Err(JoinError::ChildFailed)), "{m:?}");
                    markers += 1;
                }
            }
            assert_eq!(markers, 8);
            Ok::<_, AppError>(())
        })
        .await;
        match &out {
            Err(NurseryError::Failed(f)) => assert_eq!(f.len(), 16, "{out:?}"),
            other => panic!("{other:?}"),
        }
        common::assert_no_tasks_left().await;
    })
    .await;
}

#[tokio::test]
async fn r20k_spawn_local_kept_handle() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let out = nursery(|n: NurseryHandle<AppError>| async move {
                let mut h = n.spawn_local(async {
                    let _rc = std::rc::Rc::new(());
                    std::future::pending::<()>().await;
                    Ok::<std::rc::Rc<u32>, AppError>(std::rc::Rc::new(1))
                });
                let id = h.id();
                h.abort();
                while !h.is_finished() {
                    tokio::task::yield_now().await;
                }
                let cut = CancelScope::new();
                cut.handle().cancel();
                let r = cut
                    .run(async { Ok::<_, AppError>((&mut h).await.map(|v| *v)) })
                    .await
                    .unwrap()
                    .unwrap();
                assert!(matches!(r, Err(JoinError::Cancelled(_))), "{r:?}");
                assert_eq!(h.id(), id);
                assert!(h.is_finished());
                h.abort();
                let m = how_it_ended(&mut h).await;
                assert!(matches!(m, Err(JoinError::ChildAborted)), "{m:?}");
                Ok::<_, AppError>(())
            })
            .await;
            assert!(matches!(out, Ok(Some(()))), "{out:?}");
        })
        .await;
}

// ---------------------------------------------------------------------------------------
// ParallelHandle.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r20k_parallel_handle_cancelled_then_shield_then_again() {
    let out = tokio_nursery::parallel_scope(async |s| {
        let mut bad = s.spawn(async { Err::<String, _>(AppError::Boom(3)) });
        let mut good = s.spawn(async { Ok::<String, AppError>("v".to_string()) });
        let dropped = s.spawn(async { Err::<String, _>(AppError::Boom(4)) });
        common::wait_until("parallel children finished", || {
            bad.is_finished() && good.is_finished() && dropped.is_finished()
        })
        .await;
        let id = bad.id();
        // The body is cancelled by the failures.
        let r = (&mut bad).await;
        assert!(matches!(r, Err(JoinError::Cancelled(_))), "{r:?}");
        let r = (&mut bad).await;
        assert!(matches!(r, Err(JoinError::Cancelled(_))), "{r:?}");
        assert_eq!(bad.id(), id);
        assert!(bad.is_finished());
        bad.abort();
        bad.cancel();
        let m = how_it_ended(&mut bad).await;
        assert!(matches!(m, Err(JoinError::ChildFailed)), "{m:?}");
        // A value still comes first, in the cancelled body.
        assert_eq!((&mut good).await.unwrap(), "v");
        // A Kept parallel handle dropped (its ChildHandle kept with the cell).
        let mut dropped = dropped;
        let r = (&mut dropped).await;
        assert!(matches!(r, Err(JoinError::Cancelled(_))), "{r:?}");
        drop(dropped);
        drop(bad);
        Ok::<_, AppError>(())
    })
    .expect("multi-thread");
    match &out {
        Err(NurseryError::Failed(f)) => assert_eq!(f.len(), 2, "{out:?}"),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// LocalHandle.
// ---------------------------------------------------------------------------------------

/// Cancelled, cancelled again (the marker stays kept), then a shield (the marker).
#[tokio::test]
async fn r20k_local_kept_twice_then_shield() {
    let out = local_scope(async |s| {
        let mut h = s.spawn(async { Err::<u32, _>(AppError::Boom(5)) });
        for _ in 0..3 {
            let r = (&mut h).await;
            assert!(matches!(r, Err(JoinError::Cancelled(_))), "{r:?}");
        }
        h.cancel();
        let m = how_it_ended(&mut h).await;
        assert!(matches!(m, Err(JoinError::ChildFailed)), "{m:?}");
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Err(NurseryError::Failed(_))), "{out:?}");
}

/// After the shield gave the marker, awaited again (in a shield): `ChildHandle` in the
/// Kept state gives the marker again; what does a `LocalHandle` do?
#[tokio::test]
async fn r20k_local_marker_given_then_awaited_again() {
    let out = local_scope(async |s| {
        let mut h = s.spawn(async { Err::<u32, _>(AppError::Boom(6)) });
        let r = (&mut h).await;
        assert!(matches!(r, Err(JoinError::Cancelled(_))), "{r:?}");
        let m = how_it_ended(&mut h).await;
        assert!(matches!(m, Err(JoinError::ChildFailed)), "{m:?}");
        let again = AssertUnwindSafe(how_it_ended(&mut h)).catch_unwind().await;
        let again = again.map_err(|p| tokio_nursery::panic_message(&*p).map(str::to_owned));
        println!("local handle awaited after it gave its kept marker: {again:?}");
        Ok::<_, AppError>(again)
    })
    .await;
    println!("{out:?}");
    // As ChildHandle's: the outcome given once, then a documented panic.
    match out {
        Err(NurseryError::Failed(_)) => {}
        other => panic!("{other:?}"),
    }
}

/// A `ChildHandle` that went through Kept and one that never did: the marker given in a
/// shield, then awaited again: both panic alike (was: the kept one gave the marker again).
#[tokio::test(start_paused = true)]
async fn r20k_child_handle_reawait_after_marker_with_and_without_kept() {
    let out = nursery(|n: NurseryHandle<AppError>| async move {
        // Through Kept.
        let mut a = pending_child(&n);
        // Never Kept.
        let mut b = pending_child(&n);
        a.abort();
        b.abort();
        while !(a.is_finished() && b.is_finished()) {
            tokio::task::yield_now().await;
        }
        let cut = CancelScope::new();
        cut.handle().cancel();
        let _ = cut.run(async { Ok::<_, AppError>((&mut a).await) }).await;
        let ma = how_it_ended(&mut a).await;
        let mb = how_it_ended(&mut b).await;
        assert!(matches!(ma, Err(JoinError::ChildAborted)), "{ma:?}");
        assert!(matches!(mb, Err(JoinError::ChildAborted)), "{mb:?}");
        let a2 = AssertUnwindSafe(how_it_ended(&mut a)).catch_unwind().await;
        let b2 = AssertUnwindSafe(how_it_ended(&mut b)).catch_unwind().await;
        let show = |r: Result<Result<u32, JoinError>, Box<dyn std::any::Any + Send>>| {
            r.map_err(|p| tokio_nursery::panic_message(&*p).map(str::to_owned))
        };
        // Both gave their outcome: a poll after that panics, the same way for both.
        for again in [show(a2), show(b2)] {
            match again {
                Err(Some(message)) => assert!(
                    message.contains("a ChildHandle polled after it returned"),
                    "{message}"
                ),
                other => panic!("{other:?}"),
            }
        }
        Ok::<_, AppError>(())
    })
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

// ---------------------------------------------------------------------------------------
// A race on multi_thread: children ending while the awaiting scope is cancelled.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r20k_race_many_children_end_while_waiters_are_cancelled() {
    common::nursery::bounded(async {
        for round in 0..30u32 {
            let out = nursery(|n: NurseryHandle<AppError>| async move {
                let mut hs: Vec<_> = (0..16u32)
                    .map(|i| {
                        n.spawn(async move {
                            for _ in 0..(i % 4) {
                                tokio::task::yield_now().await;
                            }
                            if i % 3 == 0 {
                                Ok::<u32, AppError>(i)
                            } else {
                                std::future::pending::<()>().await;
                                unreachable!()
                            }
                        })
                    })
                    .collect();
                let cut = CancelScope::new();
                let ch = cut.handle();
                let canceller = tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    ch.cancel();
                });
                for (i, h) in hs.iter().enumerate() {
                    // Abort the stuck ones from here: they end now or soon.
                    if round % 2 == 0 && i % 3 != 0 {
                        h.abort();
                    }
                }
                let firsts = cut
                    .run(async {
                        let mut v = Vec::new();
                        for h in &mut hs {
                            v.push(h.await);
                        }
                        Ok::<_, AppError>(v)
                    })
                    .await;
                canceller.await.unwrap();
                let firsts = match firsts {
                    Ok(Some(v)) => v,
                    other => panic!("{other:?}"),
                };
                for (i, h) in hs.iter().enumerate() {
                    if i % 3 != 0 {
                        h.abort();
                    }
                }
                for (i, (h, first)) in hs.into_iter().zip(firsts).enumerate() {
                    let i = i as u32;
                    match first {
                        Ok(v) => assert_eq!(v, i),
                        Err(JoinError::Cancelled(_)) => {
                            let m = how_it_ended(h).await;
                            match m {
                                Ok(v) => assert_eq!(v, i),
                                Err(JoinError::ChildAborted) => assert!(i % 3 != 0),
                                other => panic!("{i}: {other:?}"),
                            }
                        }
                        Err(JoinError::ChildAborted) => assert!(i % 3 != 0),
                        other => panic!("{i}: {other:?}"),
                    }
                }
                Ok::<_, AppError>(())
            })
            .await;
            assert!(matches!(out, Ok(Some(()))), "{out:?}");
        }
    })
    .await;
}

/// A `LocalHandle` that waited (its waiter registered with the awaiting scope) and then
/// returned: a later cancellation of that scope should not wake the task for it
/// (`ChildHandle` clears its waiter on `Ready`; not a change of 780f818, checked alongside).
#[tokio::test]
async fn r20k_local_handle_ready_leaves_no_cancellation_waker() {
    let out = local_scope(async |s| {
        let go = Arc::new(tokio::sync::Notify::new());
        let go2 = go.clone();
        let mut h = s.spawn(async move {
            go2.notified().await;
            Err::<u32, _>(AppError::Cancelled(tokio_nursery::cancelled().await))
        });
        tokio::task::yield_now().await;
        let scope = CancelScope::new();
        let sh = scope.handle();
        let count = Arc::new(Count::default());
        let r = scope
            .run(async {
                let waker = Waker::from(count.clone());
                let mut cx = Context::from_waker(&waker);
                assert!(Pin::new(&mut h).poll(&mut cx).is_pending());
                go.notify_one();
                h.cancel();
                common::wait_until("woken by the child's end", || {
                    count.0.load(Ordering::SeqCst) > 0
                })
                .await;
                let r = Pin::new(&mut h).poll(&mut cx);
                assert!(
                    matches!(r, Poll::Ready(Err(JoinError::ChildCancelled))),
                    "{r:?}"
                );
                let before = count.0.load(Ordering::SeqCst);
                sh.cancel();
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                Ok::<_, AppError>(count.0.load(Ordering::SeqCst) - before)
            })
            .await;
        Ok::<_, AppError>(r)
    })
    .await;
    let extra = out.unwrap().unwrap().unwrap().unwrap();
    assert_eq!(
        extra, 0,
        "the scope's cancellation woke a LocalHandle that had returned"
    );
}
