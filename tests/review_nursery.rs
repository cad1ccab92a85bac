//! Regression tests for session 11's review of `start`, the concurrency limit, the outlet,
//! blocking children and the task tree (SPEC N3, N5, N7, N11, N16, O2): each fails on the
//! code before its fix.

mod common;

use std::time::Duration;

use common::nursery::*;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Context;

use tokio_nursery::*;

/// N11: a child of a full nursery that `start`s a child into it waits for ever: the
/// started child waits for the slot its starter holds, and the starter waits for the signal.
#[tokio::test(start_paused = true)]
async fn n11_start_from_a_child_of_its_own_full_nursery_does_not_deadlock() {
    let out = tokio::time::timeout(
        Duration::from_secs(3600),
        Nursery::new()
            .limit(1)
            .run(|n: NurseryHandle<Cancelled>| async move {
                let own = n.clone();
                let child = n.spawn(async move {
                    let started = own
                        .start(|ready: Ready<u8>| async move {
                            ready.signal(1);
                            Ok::<_, Cancelled>(())
                        })
                        .await;
                    Ok::<_, Cancelled>(matches!(started, Err(StartError::Spawn(SpawnError::Full))))
                });
                Ok::<_, Cancelled>(child.await.unwrap())
            }),
    )
    .await;
    let out = out.expect("hang: a child starting a child into its own full nursery deadlocks");
    assert_eq!(out.unwrap(), Some(true), "the start fails with Full");
}

/// N5: two tasks waiting on the outlet at once: the outlet keeps one waker, so the first
/// waiter is never woken, not even once the nursery has ended and `None` is due.
#[tokio::test(start_paused = true)]
async fn n5_two_outlet_waiters_are_both_woken() {
    let (handle_tx, handle_rx) = tokio::sync::oneshot::channel();
    let nursery = tokio::spawn(Nursery::new().supervisor().run(
        move |n: NurseryHandle<std::io::Error>| async move {
            handle_tx.send(n.clone()).unwrap();
            n.spawn(async {
                tokio::time::sleep(ms(10)).await;
                Err::<(), _>(std::io::Error::other("boom"))
            });
            Ok::<_, std::io::Error>(())
        },
    ));
    let n = handle_rx.await.unwrap();
    let (n1, n2) = (n.clone(), n.clone());
    let first = tokio::spawn(async move { n1.next_incident().await.is_some() });
    tokio::task::yield_now().await;
    let second = tokio::spawn(async move { n2.next_incident().await.is_some() });
    drop(n);
    let _ = nursery.await.unwrap();
    // One waiter got the failure; the other must get `None` now that the nursery ended.
    let both = tokio::time::timeout(Duration::from_secs(3600), async {
        (first.await.unwrap(), second.await.unwrap())
    })
    .await;
    let (a, b) = both.expect("hang: an outlet waiter was never woken (lost wakeup)");
    assert!(a ^ b, "exactly one got the incident: {a} {b}");
}

/// O2: a named started child that has not signalled yet, started from inside a scope of
/// the body, is shown as an anonymous "scope": its name is nowhere in the tree.
#[tokio::test(start_paused = true)]
async fn o2_a_pending_named_start_under_a_body_scope_is_named_in_the_tree() {
    let out = Nursery::new()
        .run(|n: NurseryHandle<Cancelled>| async move {
            let n2 = n.clone();
            let probe = tokio::spawn(async move {
                tokio::time::sleep(ms(5)).await;
                let tree = TaskTree::of(&n2.scope()).to_string();
                n2.cancel();
                tree
            });
            let _ = move_on_after(secs(60), async {
                let started = n
                    .start_named("listener", |_ready: Ready<()>| async move {
                        cancelled().await;
                        Ok::<_, Cancelled>(())
                    })
                    .await;
                Ok::<_, Cancelled>(started.is_ok())
            })
            .await;
            let tree = probe.await.unwrap();
            assert!(
                tree.contains("\"listener\""),
                "the started child is unnamed:\n{tree}"
            );
            Ok::<_, Cancelled>(())
        })
        .await;
    out.unwrap();
}

/// N11/N16: a blocking child queued for a slot waits for it *on a blocking-pool thread*
/// (`Slot::take` -> `block_on`). Queued blocking children thus hold the pool's threads
/// while the children that hold the slots may need one (tokio::fs, spawn_blocking, DNS):
/// with a bounded pool this deadlocks. Real-time hang bound only.
#[test]
fn n11_queued_blocking_children_do_not_starve_the_blocking_pool() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let out = runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            Nursery::new()
                .limit(1)
                .run(|n: NurseryHandle<Cancelled>| async move {
                    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
                    // Holds the only slot; needs the blocking pool once to finish (as tokio::fs does).
                    n.spawn(async move {
                        go_rx.await.unwrap();
                        tokio::task::spawn_blocking(|| ()).await.unwrap();
                        Ok::<_, Cancelled>(())
                    });
                    // Queued for the slot: each takes a blocking thread to wait on.
                    for _ in 0..2 {
                        n.spawn_blocking(|_ctx| Ok::<_, Cancelled>(()));
                    }
                    go_tx.send(()).unwrap();
                    Ok::<_, Cancelled>(())
                }),
        )
        .await
    });
    let finished = out.is_ok();
    runtime.shutdown_background();
    assert!(
        finished,
        "hang: blocking children waiting for a slot hold every blocking thread"
    );
}

/// N7/N16: a blocking child registered after its nursery's grace period ran out is not told
/// "grace expired" (an async child registered then is aborted at once, registry N-3): the
/// `aborted` flag `register` returns is ignored in `spawn_blocking_inner`.
#[tokio::test(start_paused = true)]
async fn n16_a_blocking_child_spawned_after_the_grace_expired_is_told_so() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let out = Nursery::new()
        .grace(ms(20))
        .run(|n: NurseryHandle<Cancelled>| async move {
            let own = n.clone();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            n.spawn_blocking(move |ctx| {
                ready_tx.send(()).unwrap();
                while !ctx.grace_expired() {
                    std::thread::yield_now();
                }
                let (seen_tx, seen_rx) = std::sync::mpsc::channel();
                let _late = own.spawn_blocking(move |late| {
                    seen_tx
                        .send((late.is_cancelled(), late.grace_expired()))
                        .unwrap();
                    Ok::<_, Cancelled>(())
                });
                tx.send(seen_rx.recv().unwrap()).unwrap();
                Ok::<_, Cancelled>(())
            });
            while ready_rx.try_recv().is_err() {
                tokio::task::yield_now().await;
            }
            n.cancel();
            tokio::spawn(async {
                tokio::task::yield_now().await;
                tokio::time::advance(ms(20)).await;
            });
            check_cancelled()
        })
        .await;
    assert!(out.is_ok());
    let (cancelled, grace_expired) = rx.await.unwrap();
    assert!(cancelled);
    assert!(
        grace_expired,
        "a blocking child spawned past the grace runs on, not told the grace expired"
    );
}

/// O2: the snapshot's root inherits its cancellation from an ancestor the walk does not
/// visit, so its line says "[cancelled]" with no reason nor time, though `TreeEntry`
/// promises "the reason and time of its own cancellation, else of the nearest cancelled
/// ancestor's".
#[tokio::test(start_paused = true)]
async fn o2_a_tree_of_a_scope_cancelled_by_an_ancestor_names_the_reason() {
    let out = Nursery::new()
        .run(|n: NurseryHandle<Cancelled>| async move {
            let child = n.spawn_named("worker", async {
                let scope = current_scope().expect("in a scope");
                let _ = cancelled().await;
                tokio::time::sleep(ms(5)).await;
                Ok::<_, Cancelled>(TaskTree::of(&scope).to_string())
            });
            tokio::time::sleep(ms(1)).await;
            n.scope().cancel_with("shutting down");
            let tree = tokio::spawn(child).await.unwrap().unwrap();
            assert!(
                tree.contains("child \"worker\""),
                "the child is unnamed:\n{tree}"
            );
            assert!(
                tree.contains("shutting down"),
                "no reason for the cancellation:\n{tree}"
            );
            Ok::<_, Cancelled>(())
        })
        .await;
    out.unwrap();
}

/// N11: a started child that has not signalled yet holds a slot of the nursery; when its
/// starter runs in a scope of the body (any `CancelScope`, `move_on_after`, ...), the
/// started child's scope is not directly under the nursery's, `is_own_child` does not
/// recognise it, and its `spawn_when_free` waits for the slot it holds itself.
#[tokio::test(start_paused = true)]
async fn n11_a_started_child_waiting_for_its_own_slot_gets_full() {
    let out = tokio::time::timeout(
        Duration::from_secs(3600),
        Nursery::new()
            .limit(1)
            .run(|n: NurseryHandle<Cancelled>| async move {
                let own = n.clone();
                let started = CancelScope::new()
                    .run(async {
                        let r = n
                            .start(|ready: Ready<bool>| async move {
                                let r = own.spawn_when_free(async { Ok(()) }).await;
                                ready.signal(matches!(r, Err(SpawnError::Full)));
                                Ok::<_, Cancelled>(())
                            })
                            .await;
                        Ok::<_, Cancelled>(r.is_ok_and(|full| full))
                    })
                    .await;
                Ok::<_, Cancelled>(started)
            }),
    )
    .await;
    let out = out.expect("hang: a started child waits for the slot it holds (N11)");
    assert_eq!(out.unwrap().unwrap().unwrap(), Some(true));
}

/// N11 + N15 (session 11's review): a collector in a limited nursery refuses with `Full` as
/// the nursery's handle does, and waits for a slot with `spawn_when_free`.
#[tokio::test(start_paused = true)]
async fn n15_a_collector_honours_the_concurrency_limit() {
    common::leak_checked(async move {
        let out = Nursery::new()
            .limit(1)
            .run(|n: NurseryHandle<Cancelled>| async move {
                let mut collector = n.collector::<u32>();
                collector.spawn(async {
                    tokio::time::sleep(ms(10)).await;
                    Ok(1)
                });
                assert!(matches!(
                    collector.try_spawn(async { Ok(2) }),
                    Err(SpawnError::Full)
                ));
                // Waits for the first child's slot (10 ms), then runs.
                let start = tokio::time::Instant::now();
                collector.spawn_when_free(async { Ok(3) }).await.unwrap();
                assert_eq!(start.elapsed(), ms(10));
                let mut values = Vec::new();
                while let Some((_, value)) = collector.join_next().await {
                    values.push(value.unwrap());
                }
                assert_eq!(values, [1, 3]);
                Ok(())
            })
            .await;
        assert!(matches!(out, Ok(Some(()))), "{out:?}");
    })
    .await
}

struct Tracked(Arc<AtomicUsize>);
impl futures::task::ArcWake for Tracked {
    fn wake_by_ref(_: &Arc<Self>) {}
}
impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// N5 (review of the session's own changes): the outlet kept every waker that ever waited
/// on it and gave up (a timeout, a lost `select!`) until the next incident: unbounded growth
/// in a quiet supervisor. A waiter now takes its entry off when it stops waiting.
#[tokio::test(start_paused = true)]
async fn n5_abandoned_outlet_waiters_are_not_kept() {
    let live = Arc::new(AtomicUsize::new(0));
    let live2 = live.clone();
    Nursery::new()
        .supervisor()
        .run(|n: NurseryHandle<std::io::Error>| async move {
            n.spawn(async {
                let _ = cancelled().await;
                Ok::<_, std::io::Error>(())
            });
            for _ in 0..1000 {
                live2.fetch_add(1, Ordering::SeqCst);
                let waker = futures::task::waker(Arc::new(Tracked(live2.clone())));
                let mut cx = Context::from_waker(&waker);
                let mut wait = std::pin::pin!(n.next_incident());
                assert!(wait.as_mut().poll(&mut cx).is_pending());
                // The waiter gives up (a timeout fired, its task ended).
            }
            let kept = live2.load(Ordering::SeqCst);
            n.cancel();
            assert!(kept <= 1, "{kept} abandoned outlet wakers are still held");
            Ok::<_, std::io::Error>(())
        })
        .await
        .unwrap();
    let _ = live;
}
