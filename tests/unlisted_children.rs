//! Children that have not waited yet: an unnamed child holds no slot in its nursery's
//! registry until its first poll returns `Pending` (registry invariant N-3, DESIGN.md
//! "Nurseries"). These tests pin what that must not change: such a child is aborted with
//! its nursery (it never runs, or aborts itself when it parks), it is counted by the task
//! tree and by a grace expiry's report, and it is recognised as the nursery's own child
//! during its first poll.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio_nursery::*;

/// SPEC N8: children spawned and aborted before they were ever polled never run, their
/// handles say `ChildAborted`, and no future is left.
#[tokio::test(start_paused = true)]
async fn children_aborted_before_their_first_poll_never_run() {
    common::leak_checked(async move {
        let ran = Arc::new(AtomicUsize::new(0));
        let live = common::LiveFutures::new();
        let out = nursery(|n| {
            let (ran, live) = (ran.clone(), live.clone());
            async move {
                let handles: Vec<_> = (0..10)
                    .map(|_| {
                        let ran = ran.clone();
                        n.spawn(live.track(async move {
                            ran.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, Cancelled>(())
                        }))
                    })
                    .collect();
                n.abort_all();
                for handle in handles {
                    assert!(matches!(handle.await, Err(JoinError::ChildAborted)));
                }
                Ok::<_, Cancelled>(())
            }
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(ran.load(Ordering::SeqCst), 0, "no aborted child ran");
        assert_eq!(live.live(), 0);
        assert_eq!(live.dropped(), 10);
    })
    .await
}

/// SPEC N8, N9: a nursery dropped in abort mode before its children first ran: none of
/// them runs, none is left.
#[tokio::test(start_paused = true)]
async fn an_abort_drop_before_the_first_poll_leaves_nothing_running() {
    common::leak_checked(async move {
        let ran = Arc::new(AtomicUsize::new(0));
        let live = common::LiveFutures::new();
        {
            let (ran, live) = (ran.clone(), live.clone());
            let mut nursery = std::pin::pin!(Nursery::new().drop_mode(DropMode::Abort).run(
                |n| async move {
                    for _ in 0..10 {
                        let ran = ran.clone();
                        n.spawn(live.track(async move {
                            ran.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, Cancelled>(())
                        }));
                    }
                    std::future::pending::<Result<(), Cancelled>>().await
                }
            ));
            // One poll: the body spawns and waits; the children have not run yet.
            assert!(futures::poll!(nursery.as_mut()).is_pending());
        }
        live.wait_live(0).await;
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        assert_eq!(live.dropped(), 10);
    })
    .await
}

/// SPEC N7 on a multi-thread runtime: the grace period runs out while a child is still in
/// its first poll (it spins there until the grace expired, then waits). It has no slot to
/// be named from: the report counts it after the named ones, and it aborts itself when it
/// parks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grace_expiry_counts_the_children_that_had_not_started() {
    common::nursery::bounded(async {
        let started = Arc::new(AtomicBool::new(false));
        let kept = Arc::new(std::sync::Mutex::new(None));
        let out = Nursery::new()
            .grace(Duration::from_millis(10))
            .run(|n| {
                let (started, kept) = (started.clone(), kept.clone());
                async move {
                    *kept.lock().unwrap() = Some(n.clone());
                    n.spawn_named("legacy", common::nursery::stuck::<Cancelled>());
                    let (inner, running) = (n.clone(), started.clone());
                    n.spawn(async move {
                        running.store(true, Ordering::SeqCst);
                        // Busy in its first poll (on one worker; the grace runs on the other).
                        while inner.aborted_children().is_empty() {
                            std::hint::spin_loop();
                        }
                        std::future::pending::<()>().await;
                        Ok::<_, Cancelled>(())
                    });
                    common::wait_until("the child runs", || started.load(Ordering::SeqCst)).await;
                    n.cancel();
                    Ok::<_, Cancelled>(())
                }
            })
            .await;
        assert!(out.is_ok(), "{out:?}");
        let handle = kept.lock().unwrap().take().unwrap();
        let aborted = handle.aborted_children();
        assert_eq!(aborted.len(), 2, "{aborted:?}");
        assert!(aborted[0].starts_with("\"legacy\""), "{aborted:?}");
        assert_eq!(aborted[1], "1 child starting");
    })
    .await
}

/// SPEC O2: a named child is in the tree from its spawn; unnamed ones are counted in their
/// nursery's line until they wait, then listed.
#[tokio::test(start_paused = true)]
async fn the_tree_counts_unnamed_children_until_they_wait() {
    common::leak_checked(async move {
        let out = nursery(|n| async move {
            n.spawn_named("named", common::nursery::sleep_forever::<Cancelled>());
            n.spawn(common::nursery::sleep_forever::<Cancelled>());
            n.spawn(common::nursery::sleep_forever::<Cancelled>());
            let before = TaskTree::of(&n.scope());
            let nursery_line = &before.entries()[0];
            assert_eq!(
                nursery_line.detail.as_deref(),
                Some("running, the body and 3 children, 2 of them starting")
            );
            let listed: Vec<_> = before.entries()[1..]
                .iter()
                .map(|e| (e.kind, e.name.as_deref()))
                .collect();
            assert_eq!(listed, [("child", Some("named"))]);

            common::nursery::settle().await;
            let after = TaskTree::of(&n.scope());
            assert_eq!(
                after.entries()[0].detail.as_deref(),
                Some("running, the body and 3 children")
            );
            assert_eq!(after.entries().len(), 4, "{after}");
            n.cancel();
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await
}

/// N-3 on a multi-thread runtime: children in their first poll while the nursery aborts
/// its children (they spin until the abort happened, then wait): each aborts itself when
/// it parks, and the nursery ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_in_their_first_poll_during_an_abort_abort_themselves_when_they_park() {
    common::nursery::bounded(async {
        let aborted = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicUsize::new(0));
        let out = nursery(|n| {
            let (aborted, started) = (aborted.clone(), started.clone());
            async move {
                let handles: Vec<_> = (0..2)
                    .map(|_| {
                        let (aborted, started) = (aborted.clone(), started.clone());
                        n.spawn(async move {
                            started.fetch_add(1, Ordering::SeqCst);
                            while !aborted.load(Ordering::SeqCst) {
                                std::hint::spin_loop();
                            }
                            std::future::pending::<()>().await;
                            Ok::<_, Cancelled>(())
                        })
                    })
                    .collect();
                // The body runs on one worker; the children take turns on the other.
                common::wait_until("a child is in its first poll", || {
                    started.load(Ordering::SeqCst) >= 1
                })
                .await;
                n.abort_all();
                aborted.store(true, Ordering::SeqCst);
                for handle in handles {
                    assert!(matches!(handle.await, Err(JoinError::ChildAborted)));
                }
                Ok::<_, Cancelled>(())
            }
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await
}

/// SPEC N11: a child of a full nursery asking for a slot of its own nursery during its
/// first poll (before it holds a registry slot) is told `Full`, not left waiting for
/// itself.
#[tokio::test(start_paused = true)]
async fn a_child_in_its_first_poll_is_known_as_the_nurserys_own() {
    common::leak_checked(async move {
        let out = Nursery::new()
            .limit(1)
            .run(|n| async move {
                let inner = n.clone();
                let child = n.spawn(async move {
                    // In a scope of its own inside the child: found through its frames.
                    let scoped = move_on_after(Duration::from_secs(1), async {
                        Ok::<_, Cancelled>(
                            inner
                                .spawn_when_free(async { Ok::<_, Cancelled>(()) })
                                .await,
                        )
                    })
                    .await;
                    assert!(matches!(scoped, Ok(Some(Err(SpawnError::Full)))));
                    Ok::<_, Cancelled>(())
                });
                child.await.unwrap();
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await
}

/// SPEC O2: a child cancelled through its handle before its first poll has a scope of its
/// own and no slot yet: the tree still shows it as a child, with its name.
#[tokio::test(start_paused = true)]
async fn the_tree_shows_a_child_cancelled_before_its_first_poll_as_a_child() {
    common::leak_checked(async move {
        let out = nursery(|n| async move {
            let child = n.spawn(common::nursery::sleep_forever::<Cancelled>());
            child.cancel();
            let tree = TaskTree::of(&n.scope());
            let kinds: Vec<_> = tree.entries().iter().map(|e| e.kind).collect();
            assert_eq!(kinds, ["nursery", "child"], "{tree}");
            let detail = tree.entries()[1].detail.clone().unwrap_or_default();
            assert_eq!(detail, format!("task {}", child.id()), "{tree}");
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await
}

/// SPEC O2 on a multi-thread runtime: a collector's `cancel_all` makes the scope of children
/// that another thread is still spawning (no slot, abort handle not stored yet): their
/// tree entries never carry the canceller's task id, only their own (a scope made from
/// outside a child without its abort handle gets no label; the registry describes the
/// child once it parks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_made_from_another_task_never_carries_that_tasks_id() {
    common::nursery::bounded(async {
        let out = nursery(|n| async move {
            let collector = Arc::new(n.collector::<()>());
            let stop = Arc::new(AtomicBool::new(false));
            let canceller = {
                let (collector, stop) = (collector.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        collector.cancel_all();
                        tokio::task::yield_now().await;
                    }
                })
            };
            let mut ids = std::collections::HashSet::new();
            for _ in 0..5_000 {
                let control = collector.spawn(async {
                    std::future::pending::<()>().await;
                    Ok::<_, Cancelled>(())
                });
                ids.insert(format!("task {}", control.id()));
            }
            stop.store(true, Ordering::Relaxed);
            canceller.await.unwrap();
            let tree = TaskTree::of(&n.scope());
            let wrong: Vec<_> = tree
                .entries()
                .iter()
                .filter(|e| e.kind == "child")
                .filter(|e| !e.detail.as_ref().is_some_and(|d| ids.contains(d)))
                .map(|e| e.detail.clone())
                .collect();
            collector.abort_all();
            assert!(wrong.is_empty(), "labelled with another task: {wrong:?}");
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await
}
