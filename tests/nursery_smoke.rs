mod common;

use std::time::Duration;
use tokio::time::Instant;
use tokio_nursery::*;

#[tokio::test(start_paused = true)]
async fn children_values_and_fail_fast() {
    common::leak_checked(async move {
        let out = nursery(|n| async move {
            let a = n.spawn(async { Ok::<_, Cancelled>(1) });
            let b = n.spawn(async {
                sleep(Duration::from_secs(10)).await?;
                Ok(2)
            });
            assert_eq!(a.await.unwrap(), 1);
            b.cancel();
            assert!(matches!(b.await, Err(JoinError::ChildCancelled)));
            Ok::<_, Cancelled>(5)
        })
        .await;
        assert_eq!(out.unwrap(), Some(5));
    })
    .await
}

#[derive(Debug)]
enum E {
    C(Cancelled),
    Boom(u32),
}
impl From<Cancelled> for E {
    fn from(c: Cancelled) -> Self {
        E::C(c)
    }
}
impl CancelError for E {
    fn as_cancelled(&self) -> Option<&Cancelled> {
        match self {
            E::C(c) => Some(c),
            _ => None,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn failure_cancels_siblings() {
    common::leak_checked(async move {
        let start = Instant::now();
        let out = nursery(|n| async move {
            n.spawn(async {
                sleep(Duration::from_millis(10)).await?;
                Err::<(), _>(E::Boom(1))
            });
            let sib = n.spawn(async {
                let c = cancelled().await;
                assert!(matches!(c.reason(), CancelReason::SiblingFailed));
                Err::<(), _>(E::C(c))
            });
            // The body's scope is the nursery's, cancelled by the failure: awaiting the
            // cancelled sibling reports that cancellation (`?` passes it on).
            match sib.await {
                Err(JoinError::Cancelled(c)) => {
                    assert!(matches!(c.reason(), CancelReason::SiblingFailed))
                }
                other => panic!("{other:?}"),
            }
            sleep(Duration::from_secs(100)).await?;
            Ok::<_, E>(())
        })
        .await;
        let err = out.unwrap_err();
        assert_eq!(err.failures().len(), 1);
        assert!(matches!(err.failures()[0].error(), E::Boom(1)));
        assert_eq!(start.elapsed(), Duration::from_millis(10));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn panic_is_resumed() {
    common::leak_checked(async move {
        let r = tokio::spawn(async {
            nursery(|n| async move {
                n.spawn(async {
                    panic!("child boom");
                    #[allow(unreachable_code)]
                    Ok::<(), Cancelled>(())
                });
                sleep(Duration::from_secs(1)).await?;
                Ok::<_, Cancelled>(())
            })
            .await
        })
        .await;
        let p = r.unwrap_err().into_panic();
        assert_eq!(panic_message(&*p), Some("child boom"));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn grace_aborts_stuck_children() {
    common::leak_checked(async move {
        let start = Instant::now();
        let mut stuck = None;
        let slot = &mut stuck;
        let out = Nursery::new()
            .grace(Duration::from_millis(50))
            .run(|n| async move {
                *slot = Some(n.spawn(async {
                    tokio::time::sleep(Duration::from_secs(100)).await;
                    Ok::<_, Cancelled>(())
                }));
                n.cancel();
                check_cancelled()
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        assert!(matches!(stuck.unwrap().await, Err(JoinError::ChildAborted)));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn abort_drop_and_closed_spawn() {
    common::leak_checked(async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let fut = Nursery::new().drop_mode(DropMode::Abort).run(
            |n: NurseryHandle<Cancelled>| async move {
                tx.send(n.clone()).unwrap();
                n.spawn(async {
                    tokio::time::sleep(Duration::from_secs(100)).await;
                    Ok(())
                });
                std::future::pending::<()>().await;
                Ok(())
            },
        );
        let _ = tokio::time::timeout(Duration::from_millis(5), fut).await;
        let n = rx.await.unwrap();
        assert!(!n.is_open());
        assert!(n.try_spawn(async { Ok(()) }).is_err());
        tokio::task::yield_now().await;
        assert_eq!(n.live_children(), 0);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn wait_drop_hands_children_to_the_enclosing_nursery() {
    common::leak_checked(async move {
        let start = Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let out = nursery(|_outer| async move {
            let inner = nursery(|n: NurseryHandle<Cancelled>| async move {
                let tx = tx.clone();
                n.spawn(async move {
                    // Cooperative: sees the cancellation, then cleans up for 30 ms.
                    let c = cancelled().await;
                    tx.send(format!("cancelled at {:?}", start.elapsed()))
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    tx.send(format!("cleaned up at {:?}", start.elapsed()))
                        .unwrap();
                    Err::<(), _>(c)
                });
                std::future::pending::<()>().await;
                Ok(())
            });
            // Dropped at 10 ms: the drop returns at once, the child is adopted by the outer one.
            assert!(
                tokio::time::timeout(Duration::from_millis(10), inner)
                    .await
                    .is_err()
            );
            assert_eq!(start.elapsed(), Duration::from_millis(10));
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        // The outer nursery waited for the adopted child.
        assert_eq!(start.elapsed(), Duration::from_millis(40));
        assert_eq!(rx.recv().await.unwrap(), "cancelled at 10ms");
        assert_eq!(rx.recv().await.unwrap(), "cleaned up at 40ms");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn wait_drop_without_enclosing_nursery_goes_to_the_orphan_registry() {
    common::leak_checked(async move {
        let start = Instant::now();
        let inner = nursery(|n: NurseryHandle<Cancelled>| async move {
            n.spawn(async move {
                let c = cancelled().await;
                tokio::time::sleep(Duration::from_millis(30)).await;
                Err::<(), _>(c)
            });
            std::future::pending::<()>().await;
            Ok(())
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(10), inner)
                .await
                .is_err()
        );
        assert_eq!(orphan_count(), 1);
        orphans_finished().await;
        assert_eq!(orphan_count(), 0);
        assert_eq!(start.elapsed(), Duration::from_millis(40));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn supervisor_streams_failures_and_returns_the_rest() {
    common::leak_checked(async move {
        let out = Nursery::new()
            .supervisor()
            .run(|n| async move {
                n.spawn_named("a", async {
                    sleep(Duration::from_millis(10)).await?;
                    Err::<(), _>(E::Boom(1))
                });
                let b = n.spawn(async {
                    sleep(Duration::from_millis(50)).await?;
                    Ok::<_, E>(7)
                });
                n.spawn(async {
                    sleep(Duration::from_millis(20)).await?;
                    Err::<(), _>(E::Boom(2))
                });
                match n.next_incident().await {
                    Some(Incident::Failed(f)) => {
                        assert!(matches!(f.error(), E::Boom(1)));
                        assert!(f.origin().to_string().contains("\"a\""));
                    }
                    other => panic!("{other:?}"),
                }
                // The failure cancelled no one.
                assert_eq!(b.await.unwrap(), 7);
                Ok::<_, E>(())
            })
            .await;
        // The second failure was not taken: it is returned.
        let err = out.unwrap_err();
        assert_eq!(err.failures().len(), 1);
        assert!(matches!(err.failures()[0].error(), E::Boom(2)));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn collector_queues_outcomes_in_completion_order() {
    common::leak_checked(async move {
        let out = nursery(|n| async move {
            let mut set = n.collector::<u64>();
            let slow = set.spawn(async {
                sleep(Duration::from_millis(30)).await?;
                Ok::<_, Cancelled>(30)
            });
            let fast = set.spawn_named("fast", async {
                sleep(Duration::from_millis(10)).await?;
                Ok(10)
            });
            let stuck = set.spawn(async {
                tokio::time::sleep(Duration::from_secs(100)).await;
                Ok(0)
            });
            assert_eq!(fast.name(), Some("fast"));
            assert_eq!(set.len(), 3);
            let (id, first) = set.join_next().await.unwrap();
            assert_eq!((id, first.unwrap()), (fast.id(), 10));
            let (id, second) = set.join_next().await.unwrap();
            assert_eq!((id, second.unwrap()), (slow.id(), 30));
            assert!(set.try_join_next().is_none());
            set.abort_all();
            let (id, third) = set.join_next().await.unwrap();
            assert_eq!(id, stuck.id());
            assert!(matches!(third, Err(JoinError::ChildAborted)));
            assert!(set.join_next().await.is_none());
            assert!(set.is_empty());
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn start_waits_for_readiness_then_the_child_runs_in_the_nursery() {
    common::leak_checked(async move {
        let start = Instant::now();
        let out = nursery(|n| async move {
            let caller_scope = current_scope().unwrap().id();
            let nursery_scope = n.scope().id();
            let value = n
                .start(move |ready: Ready<&'static str>| async move {
                    // Before the signal: under the caller's scopes (the body's = the nursery's here,
                    // so check the parent chain through a deadline instead).
                    let _ = caller_scope;
                    sleep(Duration::from_millis(10)).await?;
                    ready.signal("listening");
                    sleep(Duration::from_millis(20)).await?;
                    let _ = nursery_scope;
                    Ok::<_, Cancelled>(())
                })
                .await
                .unwrap();
            assert_eq!(value, "listening");
            assert_eq!(start.elapsed(), Duration::from_millis(10));
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(start.elapsed(), Duration::from_millis(30));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn start_failure_goes_to_the_caller_alone_and_no_signal_is_an_error() {
    common::leak_checked(async move {
        let out = nursery(|n| async move {
            let failed = n
                .start(|_ready: Ready<()>| async move { Err::<(), _>(E::Boom(3)) })
                .await;
            assert!(matches!(failed, Err(StartError::Failed(E::Boom(3)))));
            let silent = n
                .start(|_ready: Ready<()>| async move { Ok::<(), E>(()) })
                .await;
            assert!(matches!(silent, Err(StartError::NoSignal)));
            Ok::<_, E>(())
        })
        .await;
        assert!(matches!(out, Ok(Some(()))), "the nursery saw no failure");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn start_runs_under_the_callers_scope_until_the_signal() {
    common::leak_checked(async move {
        let start = Instant::now();
        let out = nursery(|n| async move {
            // The caller is inside a 10 ms timeout: the child sees that deadline before it signals.
            let r = move_on_after(Duration::from_millis(10), async {
                n.start(|ready: Ready<()>| async move {
                    sleep(Duration::from_millis(50)).await?;
                    ready.signal(());
                    Ok::<_, Cancelled>(())
                })
                .await
                .map_err(|e| match e {
                    StartError::Cancelled(c) => c,
                    other => panic!("{other:?}"),
                })
            })
            .await;
            assert_eq!(
                r.unwrap(),
                None,
                "the timeout absorbed the child's echo via the caller"
            );
            assert_eq!(start.elapsed(), Duration::from_millis(10));
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn limit_runs_at_most_k_children_at_once() {
    common::leak_checked(async move {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let start = Instant::now();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let out = Nursery::new()
            .limit(2)
            .run(|n| {
                let (running, peak) = (running.clone(), peak.clone());
                async move {
                    for _ in 0..5 {
                        let (running, peak) = (running.clone(), peak.clone());
                        n.spawn(async move {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            sleep(Duration::from_millis(10)).await?;
                            running.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, Cancelled>(())
                        });
                    }
                    assert!(matches!(
                        n.try_spawn(async { Ok(()) }),
                        Err(SpawnError::Full)
                    ));
                    let inner = n.clone();
                    let child = n.spawn(async move {
                        // A child waiting for a slot of its own full nursery would wait for itself.
                        let r = inner.spawn_when_free(async { Ok(()) }).await;
                        assert!(matches!(r, Err(SpawnError::Full)));
                        Ok::<_, Cancelled>(())
                    });
                    child.await.unwrap();
                    let late = n
                        .spawn_when_free(async { Ok::<_, Cancelled>(7) })
                        .await
                        .unwrap();
                    assert_eq!(late.await.unwrap(), 7);
                    Ok::<_, Cancelled>(())
                }
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!(start.elapsed(), Duration::from_millis(30));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_children_see_cancellation_and_are_never_aborted() {
    common::leak_checked(async move {
        let out = Nursery::new()
            .grace(Duration::from_millis(20))
            .run(|n: NurseryHandle<Cancelled>| async move {
                let child = n.spawn_blocking(|ctx| {
                    while !ctx.is_cancelled() {
                        std::hint::spin_loop();
                    }
                    // Cancelled: keep working past the grace period, then return.
                    while !ctx.grace_expired() {
                        std::hint::spin_loop();
                    }
                    assert!(
                        is_cancelled(),
                        "the free functions work in the blocking thread"
                    );
                    ctx.check()?;
                    Ok(1)
                });
                n.cancel();
                drop(child);
                check_cancelled()
            })
            .await;
        assert_eq!(out.unwrap(), None);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn the_task_tree_shows_who_holds_up_a_shutdown() {
    common::leak_checked(async move {
        let out = Nursery::new()
            .name("server")
            .run(|n| async move {
                n.spawn_named("polite", async {
                    let c = cancelled().await;
                    Err::<(), _>(c)
                });
                n.spawn_named("stuck", async {
                    tokio::time::sleep(Duration::from_secs(60)).await; // not a cancellation point
                    Ok::<_, Cancelled>(())
                });
                tokio::task::yield_now().await;
                n.cancel();
                tokio::time::sleep(Duration::from_millis(2500)).await;
                let tree = TaskTree::of(&n.scope());
                let text = tree.to_string();
                println!("{text}");
                assert!(text.contains("nursery \"server\""), "{text}");
                assert!(
                    text.contains("cancelling, waiting on the body and 1 child"),
                    "{text}"
                );
                assert!(text.contains("child \"stuck\""), "{text}");
                assert!(!text.contains("\"polite\""), "{text}");
                assert!(
                    text.contains("[cancelled 2500ms ago: explicit cancel]"),
                    "{text}"
                );
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn local_children_may_be_not_send() {
    common::leak_checked(async move {
        let local = tokio::task::LocalSet::new();
        let out = local
            .run_until(nursery(|n| async move {
                let shared = std::rc::Rc::new(std::cell::Cell::new(0));
                let seen = shared.clone();
                let child = n.spawn_local(async move {
                    sleep(Duration::from_millis(5)).await?;
                    seen.set(seen.get() + 1);
                    Ok::<_, Cancelled>(seen.get())
                });
                assert_eq!(child.await.unwrap(), 1);
                assert_eq!(shared.get(), 1);
                Ok::<_, Cancelled>(())
            }))
            .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await
}

#[test]
fn spawn_local_outside_a_local_set_panics_clearly() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let payload = runtime
        .block_on(common::leak_checked(async {
            tokio::spawn(nursery(|n| async move {
                n.spawn_local(async { Ok::<_, Cancelled>(()) });
                Ok::<_, Cancelled>(())
            }))
            .await
        }))
        .unwrap_err()
        .into_panic();
    let message = panic_message(&*payload).unwrap_or_default().to_owned();
    assert!(message.contains("LocalSet"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn abort_cascades_past_an_ancestors_grace_whatever_the_drop_mode() {
    common::leak_checked(async move {
        let start = Instant::now();
        // A wait-mode nursery inside a child, with a grandchild that ignores cancellation.
        let out = outer_cancelled_around(Nursery::new()).await;
        assert_eq!(out.unwrap(), None);
        // The grandchild was aborted at the outer grace's end, not waited for.
        assert_eq!(start.elapsed(), Duration::from_millis(50));
    })
    .await
}

/// An outer nursery (grace 50 ms) cancelled while its child awaits `inner`, a nursery whose
/// grandchild never reaches a cancellation point.
async fn outer_cancelled_around(inner: Nursery) -> Result<Option<()>, NurseryError<Cancelled>> {
    Nursery::new()
        .grace(Duration::from_millis(50))
        .run(|n| async move {
            n.spawn(async move {
                inner
                    .run(|inner: NurseryHandle<Cancelled>| async move {
                        inner.spawn_named("stuck", async {
                            std::future::pending::<()>().await;
                            Ok(())
                        });
                        std::future::pending::<()>().await;
                        Ok(())
                    })
                    .await
                    .map(|_| ())
                    .map_err(|e| match e {
                        NurseryError::Cancelled(c) => c,
                        other => panic!("{other}"),
                    })
            });
            tokio::task::yield_now().await;
            n.cancel();
            check_cancelled()
        })
        .await
}

#[tokio::test(start_paused = true)]
async fn aborted_childrens_names_travel_in_the_propagated_cancelled() {
    common::leak_checked(async move {
        let outer = CancelScope::new();
        let handle = outer.handle();
        let out = outer
            .run(async move {
                let inner = Nursery::new()
                    .grace(Duration::from_millis(20))
                    .run(|n| async move {
                        n.spawn_named("legacy", async {
                            tokio::time::sleep(Duration::from_secs(100)).await;
                            Ok::<_, Cancelled>(())
                        });
                        handle.cancel();
                        check_cancelled()
                    })
                    .await;
                let cancelled = match inner {
                    Err(NurseryError::Cancelled(c)) => c,
                    other => panic!("{other:?}"),
                };
                assert_eq!(cancelled.aborted_children().len(), 1);
                assert!(cancelled.aborted_children()[0].starts_with("\"legacy\""));
                Err::<(), _>(cancelled)
            })
            .await;
        assert!(matches!(out, Ok(None)));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn cancel_and_join_stops_and_waits() {
    common::leak_checked(async move {
        let fut = nursery(|n| async move {
            n.spawn(async {
                let c = cancelled().await;
                tokio::time::sleep(Duration::from_millis(5)).await; // cleanup
                Err::<(), _>(c)
            });
            Err::<(), _>(cancelled().await)
        });
        let start = Instant::now();
        assert_eq!(fut.cancel_and_join().await.unwrap(), None);
        assert_eq!(start.elapsed(), Duration::from_millis(5));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_wait_drop_blocks_until_the_children_stopped() {
    common::leak_checked(async move {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let cleaned = Arc::new(AtomicBool::new(false));
        let flag = cleaned.clone();
        let fut = Nursery::new()
            .drop_mode(DropMode::BlockingWait)
            .grace(Duration::from_secs(30)) // a hang bound only
            .run(|n| async move {
                n.spawn(async move {
                    let c = cancelled().await;
                    tokio::task::yield_now().await; // cleanup across an await
                    flag.store(true, Ordering::SeqCst);
                    Err::<(), _>(c)
                });
                std::future::pending::<()>().await;
                Ok::<_, Cancelled>(())
            });
        let mut fut = Box::pin(fut);
        // Start it, then drop it: the drop returns only once the child cleaned up.
        assert!(futures::poll!(fut.as_mut()).is_pending());
        tokio::task::yield_now().await;
        drop(fut);
        assert!(cleaned.load(Ordering::SeqCst));
    })
    .await
}

/// N7's cascade reaches a blocking-wait nursery too: when the outer grace runs out, the
/// inner nursery (dropped with the aborted child that awaited it) does not block for its own
/// grace (an hour), it aborts its stuck grandchild at once. On multi_thread (a blocking wait
/// needs it), so no paused clock: the runtime runs on a thread of its own and the test only
/// bounds a hang, which is what the old behaviour was.
#[test]
fn abort_cascades_into_a_blocking_wait_nursery_past_an_ancestors_grace() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let out = runtime.block_on(common::leak_checked(async {
            let inner = Nursery::new()
                .drop_mode(DropMode::BlockingWait)
                .grace(Duration::from_secs(3600));
            let out = outer_cancelled_around(inner).await;
            orphans_finished().await;
            out.map_err(|error| error.to_string())
        }));
        done_tx.send(out).unwrap();
    });
    let out = done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the inner nursery blocked for its own grace: the cascade did not reach it");
    assert_eq!(out.unwrap(), None);
}

/// A nursery dropped in wait mode keeps its grace in a task of its own; when it runs out,
/// the children it aborts are named as an awaited nursery's would be (SPEC N7).
#[tokio::test(start_paused = true)]
async fn an_orphaned_nurserys_grace_names_the_children_it_aborts() {
    common::leak_checked(async move {
        let mut kept = None;
        let slot = &mut kept;
        let fut =
            Nursery::new()
                .grace(Duration::from_millis(20))
                .run(|n: NurseryHandle<Cancelled>| {
                    *slot = Some(n.clone());
                    async move {
                        n.spawn_named("stuck", async {
                            std::future::pending::<()>().await;
                            Ok(())
                        });
                        std::future::pending::<()>().await;
                        Ok(())
                    }
                });
        let mut fut = Box::pin(fut);
        assert!(futures::poll!(fut.as_mut()).is_pending());
        drop(fut); // wait mode: the stuck child is adopted, its grace runs on
        let kept = kept.unwrap();
        assert!(kept.aborted_children().is_empty());
        orphans_finished().await;
        assert_eq!(
            kept.aborted_children().len(),
            1,
            "{:?}",
            kept.aborted_children()
        );
        assert!(kept.aborted_children()[0].starts_with("\"stuck\""));
    })
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_wait_falls_back_to_adoption_on_current_thread() {
    common::leak_checked(async move {
        let fut = Nursery::new()
            .drop_mode(DropMode::BlockingWait)
            .grace(Duration::from_secs(30))
            .run(|n: NurseryHandle<Cancelled>| async move {
                n.spawn(async { Err::<(), _>(cancelled().await) });
                std::future::pending::<()>().await;
                Ok(())
            });
        let mut fut = Box::pin(fut);
        assert!(futures::poll!(fut.as_mut()).is_pending());
        drop(fut); // returns at once: no deadlock on a current-thread runtime
        orphans_finished().await;
    })
    .await
}

/// N9b: a blocking-wait nursery of a current-thread runtime dropped *outside* its `block_on`
/// (the drop sees no runtime): only that runtime's `block_on` runs the children, so blocking
/// could not let them stop; it falls back to adoption. It blocked for its whole grace (an
/// hour here: the hang bound fails) and then aborted the child until session 7.
#[test]
fn blocking_wait_of_a_current_thread_runtime_dropped_outside_its_block_on_falls_back() {
    common::nursery::within_hang_bound(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (stopped_tx, stopped_rx) = std::sync::mpsc::channel();
        let mut nursery = Box::pin(
            Nursery::new()
                .drop_mode(DropMode::BlockingWait)
                .grace(Duration::from_secs(3600))
                .run(|n: NurseryHandle<Cancelled>| async move {
                    n.spawn(async move {
                        let cancelled = cancelled().await;
                        stopped_tx.send(()).unwrap();
                        Err::<(), _>(cancelled)
                    });
                    std::future::pending::<()>().await;
                    Ok(())
                }),
        );
        runtime.block_on(async {
            assert!(futures::poll!(nursery.as_mut()).is_pending());
            tokio::task::yield_now().await; // the child parks on `cancelled()`
        });
        drop(nursery); // outside the runtime
        runtime.block_on(orphans_finished());
        stopped_rx
            .try_recv()
            .expect("the child stopped at its cancellation point (not aborted)");
    })
}

#[tokio::test(start_paused = true)]
async fn orphans_are_visible_in_the_task_tree() {
    common::leak_checked(async move {
        let inner = Nursery::new()
            .name("dropped")
            .run(|n: NurseryHandle<Cancelled>| async move {
                n.spawn_named("cleaning-up", async {
                    let c = cancelled().await;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Err::<(), _>(c)
                });
                std::future::pending::<()>().await;
                Ok(())
            });
        assert!(
            tokio::time::timeout(Duration::from_millis(10), inner)
                .await
                .is_err()
        );
        let text = TaskTree::orphans().to_string();
        assert!(text.contains("nursery \"dropped\""), "{text}");
        assert!(text.contains("child \"cleaning-up\""), "{text}");
        orphans_finished().await;
        assert_eq!(TaskTree::orphans().entries().len(), 0);
    })
    .await
}

/// `start_named`: the name reaches the task tree while the child runs, and the report of a
/// failure after its signal.
#[tokio::test(start_paused = true)]
async fn start_named_child_carries_its_name() {
    common::leak_checked(async move {
        let out = Nursery::new()
            .run(|n| async move {
                let port = n
                    .start_named("listener", |ready: Ready<u16>| async move {
                        ready.signal(80);
                        sleep(Duration::from_millis(10)).await?;
                        Err::<(), _>(E::Boom(3))
                    })
                    .await
                    .unwrap();
                assert_eq!(port, 80);
                let tree = TaskTree::of(&n.scope()).to_string();
                assert!(tree.contains("listener"), "{tree}");
                Ok::<_, E>(())
            })
            .await;
        let err = out.unwrap_err();
        assert_eq!(err.failures().len(), 1);
        assert!(matches!(err.failures()[0].error(), E::Boom(3)));
        let origin = err.failures()[0].origin().to_string();
        assert!(origin.contains("\"listener\""), "{origin}");
    })
    .await
}

/// N9b at runtime shutdown: tokio drops the tasks one by one, so a blocking wait there could
/// wait for a child that only this very shutdown would drop. Whichever way the drop learns
/// it must not block (here it passes with the shutdown probe disabled too, so it does not
/// single out the probe), dropping the runtime returns: the 60 s grace and the 30 s bound
/// below only bound a hang.
#[test]
fn blocking_wait_at_runtime_shutdown_does_not_block_the_shutdown() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (running_tx, running_rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = Nursery::new()
            .drop_mode(DropMode::BlockingWait)
            .grace(Duration::from_secs(60))
            .run(|n: NurseryHandle<Cancelled>| async move {
                n.spawn(async move {
                    running_tx.send(()).unwrap();
                    std::future::pending::<()>().await; // never a cancellation point
                    Ok(())
                });
                std::future::pending::<()>().await;
                Ok(())
            })
            .await;
    });
    running_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the child started");
    let (dropped_tx, dropped_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(runtime);
        dropped_tx.send(()).unwrap();
    });
    dropped_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("dropping the runtime returned: the blocking wait did not hold up the shutdown");
}
