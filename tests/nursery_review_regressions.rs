//! Regression tests for the code review of the nursery (each names its finding).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_nursery::*;

fn counting_hook(count: Arc<AtomicUsize>) -> impl Fn(&Report<'_>) + Send + Sync + 'static {
    move |r: &Report<'_>| {
        let _ = r;
        count.fetch_add(1, Ordering::SeqCst);
    }
}

// 1. A failure recorded before a wait-mode drop with no live child is lost.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r1_failure_lost_on_drop_with_no_live_child() {
    common::leak_checked(async move {
        let reports = Arc::new(AtomicUsize::new(0));
        let out = Nursery::new()
            .on_report(counting_hook(reports.clone()))
            .run(|_outer| async move {
                let inner = nursery(|n| async move {
                    n.spawn(async { Err::<(), _>(std::io::Error::other("boom")) });
                    // body ignores cancellation (a plain tokio sleep)
                    tokio::time::sleep(Duration::from_secs(100)).await;
                    Ok::<_, std::io::Error>(())
                });
                let r = tokio::time::timeout(Duration::from_secs(1), inner).await;
                assert!(r.is_err(), "inner was dropped by the timeout");
                Ok::<_, Cancelled>(())
            })
            .await;
        assert!(out.is_ok());
        assert_eq!(
            reports.load(Ordering::SeqCst),
            1,
            "the child's failure must reach someone"
        );
    })
    .await
}

// 1b. Same with a panic: a panic is swallowed.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r1b_panic_lost_on_drop_with_no_live_child() {
    common::leak_checked(async move {
        let reports = Arc::new(AtomicUsize::new(0));
        let out = Nursery::new()
            .on_report(counting_hook(reports.clone()))
            .run(|_outer| async move {
                let inner = nursery(|n| async move {
                    n.spawn(async {
                        panic!("child panicked");
                        #[allow(unreachable_code)]
                        Ok::<(), Cancelled>(())
                    });
                    tokio::time::sleep(Duration::from_secs(100)).await;
                    Ok::<_, Cancelled>(())
                });
                let _ = tokio::time::timeout(Duration::from_secs(1), inner).await;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert!(out.is_ok());
        assert_eq!(
            reports.load(Ordering::SeqCst),
            1,
            "the child's panic must reach someone"
        );
    })
    .await
}

// 1c. BlockingWait: children finish within the grace, their failures are lost.
#[test]
fn r1c_blocking_wait_loses_failures() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let reports = Arc::new(AtomicUsize::new(0));
    let r2 = reports.clone();
    rt.block_on(common::leak_checked(async move {
        let out = Nursery::new()
            .on_report(counting_hook(r2))
            .run(|_outer| async move {
                let inner = Nursery::new()
                    .grace(Duration::from_secs(5))
                    .drop_mode(DropMode::BlockingWait)
                    .run(|n| async move {
                        n.spawn(async {
                            let _ = cancelled().await;
                            // cleanup fails: a real failure, not an echo
                            Err::<(), _>(std::io::Error::other("cleanup failed"))
                        });
                        std::future::pending::<()>().await;
                        Ok::<_, std::io::Error>(())
                    });
                let _ = tokio::time::timeout(Duration::from_millis(50), inner).await;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert!(out.is_ok());
    }));
    assert_eq!(
        reports.load(Ordering::SeqCst),
        1,
        "cleanup failure must be reported"
    );
}

// 2. BlockingWait on current_thread "falls back to Wait" but aborts at once.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r2_blocking_wait_fallback_aborts() {
    common::leak_checked(async move {
        let cleaned = Arc::new(AtomicBool::new(false));
        let c = cleaned.clone();
        let out = nursery(|_outer| async move {
            let inner = Nursery::new()
                .grace(Duration::from_secs(5))
                .drop_mode(DropMode::BlockingWait)
                .run(move |n| async move {
                    n.spawn(async move {
                        let _ = cancelled().await;
                        tokio::time::sleep(Duration::from_millis(100)).await; // cleanup
                        c.store(true, Ordering::SeqCst);
                        Ok::<(), Cancelled>(())
                    });
                    std::future::pending::<()>().await;
                    Ok::<_, Cancelled>(())
                });
            let _ = tokio::time::timeout(Duration::from_secs(1), inner).await;
            Ok::<_, Cancelled>(())
        })
        .await;
        assert!(out.is_ok());
        assert!(
            cleaned.load(Ordering::SeqCst),
            "fallback to N9 must let the child finish its cleanup"
        );
    })
    .await
}

// 3. A child future whose Drop panics while aborted: the nursery never finishes.
struct PanicOnDrop;
impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("drop panicked");
        }
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r3_panicking_drop_hangs_nursery() {
    common::leak_checked(async move {
        let fut = nursery(|n| async move {
            let h = n.spawn(async {
                let _g = PanicOnDrop;
                std::future::pending::<()>().await;
                Ok::<(), Cancelled>(())
            });
            tokio::task::yield_now().await;
            h.abort();
            Ok::<_, Cancelled>(())
        });
        let r = tokio::time::timeout(
            Duration::from_secs(3600),
            std::panic::AssertUnwindSafe(fut).catch_unwind_compat(),
        )
        .await;
        assert!(r.is_ok(), "nursery hung after a child's Drop panicked");
    })
    .await
}

trait CatchCompat: std::future::Future + Sized {
    fn catch_unwind_compat(self) -> futures::future::CatchUnwind<Self>
    where
        Self: std::panic::UnwindSafe,
    {
        futures::FutureExt::catch_unwind(self)
    }
}
impl<F: std::future::Future> CatchCompat for F {}

// 3b. A child future that completes but whose Drop panics: the panic is lost.
struct ReadyThenPanicOnDrop;
impl std::future::Future for ReadyThenPanicOnDrop {
    type Output = Result<(), Cancelled>;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::task::Poll::Ready(Ok(()))
    }
}
impl Drop for ReadyThenPanicOnDrop {
    fn drop(&mut self) {
        panic!("drop after completion");
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r3b_panic_in_drop_after_completion_is_lost() {
    common::leak_checked(async move {
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        let fut = nursery(|n| async move {
            let h = n.spawn(ReadyThenPanicOnDrop);
            *s.lock().unwrap() = Some(format!("{:?}", h.await));
            Ok::<_, Cancelled>(())
        });
        let r = tokio::time::timeout(
            Duration::from_secs(3600),
            std::panic::AssertUnwindSafe(fut).catch_unwind_compat(),
        )
        .await;
        eprintln!("handle saw: {:?}", seen.lock().unwrap());
        let r = r.expect("no hang");
        assert!(
            r.is_err(),
            "the child's panic should be resumed by the nursery (N6); got {:?}",
            r.map(|x| x.is_ok())
        );
    })
    .await
}

// 4. Start dropped after a signalled-but-not-moved child exited: the ended child node is
// re-linked under the nursery (stale in the tree, Arc cycle).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r4_start_drop_relinks_ended_child() {
    common::leak_checked(async move {
        let out = nursery(|n| async move {
            let n2 = n.clone();
            let start = CancelScope::new()
                .run(async move {
                    let s = n2.start(|ready: Ready<u8>| async move {
                        ready.signal(1);
                        Ok::<_, Cancelled>(())
                    });
                    current_scope().unwrap().cancel(); // caller cancelled before the signal
                    tokio::time::sleep(Duration::from_millis(10)).await; // child signals (not moved) and exits
                    drop(s); // caller gives up before polling
                    Ok::<_, Cancelled>(())
                })
                .await;
            let _ = start;
            assert_eq!(n.live_children(), 0);
            let tree = TaskTree::of(&n.scope());
            println!("{tree}");
            assert_eq!(
                tree.entries().len(),
                1,
                "no child should be listed under the nursery:\n{tree}"
            );
            Ok::<_, Cancelled>(())
        })
        .await;
        assert!(out.is_ok());
    })
    .await
}

// 5. A child spawned after the grace period expired is never aborted.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r5_spawn_after_grace_not_aborted() {
    common::leak_checked(async move {
        let t0 = tokio::time::Instant::now();
        let out = Nursery::new()
            .grace(Duration::from_secs(1))
            .run(|n| async move {
                n.cancel();
                tokio::time::sleep(Duration::from_secs(2)).await; // grace expires meanwhile
                n.spawn(async {
                    tokio::time::sleep(Duration::from_secs(1000)).await; // ignores cancellation
                    Ok::<(), Cancelled>(())
                });
                Ok::<_, Cancelled>(())
            })
            .await;
        assert!(out.is_ok());
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(2),
            "the child spawned after the grace period expired was aborted at once"
        );
    })
    .await
}

// 6. O2: children adopted from a wait-mode drop are invisible in the adopter's tree.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r6_adopted_children_invisible_in_tree() {
    common::leak_checked(async move {
        let out = nursery(|outer| async move {
            let inner = nursery(|n| async move {
                n.spawn_named("stuck-cleanup", async {
                    let _ = cancelled().await;
                    tokio::time::sleep(Duration::from_secs(100)).await;
                    Ok::<(), Cancelled>(())
                });
                std::future::pending::<()>().await;
                Ok::<_, Cancelled>(())
            });
            let _ = tokio::time::timeout(Duration::from_secs(1), inner).await;
            let tree = TaskTree::of(&outer.scope());
            println!("{tree}");
            assert!(
                tree.to_string().contains("stuck-cleanup"),
                "adopted child not shown:\n{tree}"
            );
            Ok::<_, Cancelled>(())
        })
        .await;
        assert!(out.is_ok());
    })
    .await
}

// 7. Signalling synchronously in the start closure panics with an internal message.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r7_signal_before_spawn_panics() {
    common::leak_checked(async move {
        let out = nursery(|n| async move {
            let v = n
                .start(|ready: Ready<u8>| {
                    ready.signal(7);
                    async { Ok::<_, Cancelled>(()) }
                })
                .await;
            println!("{v:?}");
            Ok::<_, Cancelled>(())
        })
        .await;
        assert!(out.is_ok());
    })
    .await
}

// 8. A panic in the body closure (before the first await) leaves the nursery's node linked
// under the enclosing scope.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r8_make_body_panic_leaves_node_linked() {
    common::leak_checked(async move {
        let out = CancelScope::new()
            .run(async {
                let scope = current_scope().unwrap();
                let r = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(nursery(
                    |_n| -> std::future::Ready<Result<(), Cancelled>> { panic!("body closure") },
                )))
                .await;
                assert!(r.is_err());
                let tree = TaskTree::of(&scope);
                println!("{tree}");
                assert_eq!(tree.entries().len(), 1, "stale nursery node:\n{tree}");
                Ok::<_, Cancelled>(())
            })
            .await;
        assert!(out.is_ok());
    })
    .await
}

// 10. Abort-mode drop racing a spawn from another thread: a child registered (Starting)
// but not yet `started` is skipped by abort_all and never aborted.
#[test]
fn r10_abort_drop_races_spawn() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let live = Arc::new(AtomicUsize::new(0));
    struct Count(Arc<AtomicUsize>);
    impl Drop for Count {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let mut escaped_runs = 0;
    for _ in 0..300 {
        let live2 = live.clone();
        rt.block_on(async {
            let (tx, rx) = std::sync::mpsc::channel::<NurseryHandle<Cancelled>>();
            let live3 = live2.clone();
            let spawner = std::thread::spawn(move || {
                let h = rx.recv().unwrap();
                loop {
                    live3.fetch_add(1, Ordering::SeqCst);
                    let c = Count(live3.clone());
                    let r = h.try_spawn(async move {
                        let _c = c;
                        // ignores cancellation
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok::<(), Cancelled>(())
                    });
                    if r.is_err() {
                        break;
                    }
                }
            });
            let fut = Nursery::new()
                .drop_mode(DropMode::Abort)
                .run(move |n| async move {
                    tx.send(n.clone()).unwrap();
                    std::future::pending::<()>().await;
                    Ok::<_, Cancelled>(())
                });
            let _ = tokio::time::timeout(Duration::from_micros(200), fut).await;
            spawner.join().unwrap();
            // A hang bound only: aborted tasks are dropped at their next scheduling.
            let hang = std::time::Instant::now() + Duration::from_secs(10);
            while live2.load(Ordering::SeqCst) != 0 && std::time::Instant::now() < hang {
                tokio::task::yield_now().await;
            }
        });
        if live.load(Ordering::SeqCst) != 0 {
            escaped_runs += 1;
            live.store(0, Ordering::SeqCst);
        }
    }
    assert_eq!(
        escaped_runs, 0,
        "children escaped the abort drop in {escaped_runs} runs"
    );
    // SPEC R3, checked once for the 300 runs (after the count, which names the bug better).
    rt.block_on(common::assert_no_tasks_left());
}

// 11. A child of a full nursery cannot wait for a slot of its own nursery: `try_spawn`
// and `spawn_when_free` say `Full` (documented on `Nursery::limit`), instead of the silent
// deadlock of spawning and then joining a child that waits for the slot it holds.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r11_a_child_of_a_full_nursery_gets_full_instead_of_a_deadlock() {
    common::leak_checked(async move {
        let out = Nursery::new()
            .limit(1)
            .run(|n| async move {
                let n2 = n.clone();
                let child = n.spawn(async move {
                    assert!(matches!(
                        n2.try_spawn(async { Ok::<_, Cancelled>(1) }),
                        Err(SpawnError::Full)
                    ));
                    assert!(matches!(
                        n2.spawn_when_free(async { Ok::<_, Cancelled>(1) }).await,
                        Err(SpawnError::Full)
                    ));
                    Ok::<(), Cancelled>(())
                });
                child.await.unwrap();
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await
}

// 12. `cancel_and_join` takes the future by value, so a nursery already polled (pinned,
// raced in a `select!`) could not be stopped and joined: `NurseryFuture::cancel` works on
// the pinned future, and before the first poll the nursery starts cancelled.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r12_a_pinned_running_nursery_can_be_cancelled_and_joined() {
    common::leak_checked(async move {
        let stopped = Arc::new(AtomicUsize::new(0));
        let seen = stopped.clone();
        let mut server = std::pin::pin!(nursery(move |n| async move {
            for _ in 0..3 {
                let seen = seen.clone();
                n.spawn(async move {
                    let cancelled = cancelled().await;
                    seen.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>(cancelled)
                });
            }
            Err::<(), _>(cancelled().await)
        }));
        tokio::select! {
            _ = server.as_mut() => unreachable!("it runs until cancelled"),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        server.as_mut().cancel();
        assert!(matches!(server.await, Ok(None)));
        assert_eq!(
            stopped.load(Ordering::SeqCst),
            3,
            "every child saw the cancellation"
        );
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r12_a_nursery_cancelled_before_its_first_poll_starts_cancelled() {
    common::leak_checked(async move {
        let mut fut = std::pin::pin!(nursery(|n| async move {
            assert!(is_cancelled(), "the body starts cancelled");
            // Joining is a cancellation point of the (cancelled) body: it says so at once.
            let child = n.spawn(async { check_cancelled() });
            assert!(matches!(child.await, Err(JoinError::Cancelled(_))));
            check_cancelled()
        }));
        fut.as_mut().cancel();
        assert!(matches!(fut.await, Ok(None)));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// R3: the tasks the crate runs for itself exist only while they have work. Each test ends
// with the leak check (no task left on the runtime, the paused clock not advanced).
// ---------------------------------------------------------------------------------------------

const HOUR: Duration = Duration::from_secs(3600);

/// A child that waits for its cancellation, cleans up across an await point and returns it.
async fn polite_child() -> Result<(), Cancelled> {
    let c = cancelled().await;
    tokio::task::yield_now().await;
    Err(c)
}

/// Polls `fut` once, then drops it (a wait-mode or abort-mode drop mid-flight).
async fn poll_once_then_drop<F: std::future::Future>(fut: F) {
    let mut fut = Box::pin(fut);
    let first = futures::poll!(fut.as_mut());
    assert!(first.is_pending(), "the nursery must still be running");
    drop(fut);
}

/// A wait-mode nursery with a grace period, dropped: its children are adopted by the
/// enclosing nursery and end at their cancellation point at once; the small task that runs
/// the grace period must exit with them, not sleep out the hour.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r3_grace_task_of_an_adopted_nursery_exits_with_its_children() {
    common::leak_checked(async move {
        let live = common::LiveFutures::new();
        let tracker = live.clone();
        let out = nursery(|_outer| async move {
            poll_once_then_drop(Nursery::new().grace(HOUR).run(|n| async move {
                n.spawn(tracker.track(polite_child()));
                n.spawn(tracker.track(polite_child()));
                std::future::pending::<()>().await;
                Ok::<_, Cancelled>(())
            }))
            .await;
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!((live.created(), live.completed(), live.live()), (2, 2, 0));
    })
    .await
}

/// The same with no enclosing nursery: the children go to the runtime's orphan registry.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r3_grace_task_of_an_orphaned_nursery_exits_with_its_children() {
    common::leak_checked(async move {
        let live = common::LiveFutures::new();
        let tracker = live.clone();
        poll_once_then_drop(Nursery::new().grace(HOUR).run(|n| async move {
            n.spawn(tracker.track(polite_child()));
            std::future::pending::<()>().await;
            Ok::<_, Cancelled>(())
        }))
        .await;
        orphans_finished().await;
        assert_eq!(orphan_count(), 0);
        assert_eq!((live.created(), live.completed(), live.live()), (1, 1, 0));
    })
    .await
}

/// An abort-mode nursery with a grace period, dropped: its children are aborted (and what
/// is not yet dropped is adopted); nothing of the nursery's is left once they are gone.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r3_abort_drop_with_grace_leaves_no_task() {
    common::leak_checked(async move {
        let live = common::LiveFutures::new();
        let tracker = live.clone();
        let out = nursery(|_outer| async move {
            poll_once_then_drop(Nursery::new().grace(HOUR).drop_mode(DropMode::Abort).run(
                |n| async move {
                    n.spawn(tracker.track(polite_child()));
                    n.spawn(tracker.track(async {
                        std::future::pending::<()>().await;
                        Ok::<_, Cancelled>(())
                    }));
                    std::future::pending::<()>().await;
                    Ok::<_, Cancelled>(())
                },
            ))
            .await;
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(live.live(), 0);
    })
    .await
}

/// Deadlines armed and then left behind in every way a scope can leave them: ended early,
/// cancelled explicitly, postponed, moved on a scope that ended, a nursery's timeout. The
/// deadline service must exit once no alarm is left.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r3_deadline_service_exits_when_no_alarm_is_left() {
    common::leak_checked(async move {
        let t0 = tokio::time::Instant::now();
        // Ended before its deadline, after going pending.
        let out = move_on_after(HOUR, async {
            sleep(Duration::from_secs(1)).await?;
            Ok::<_, Cancelled>(1)
        })
        .await;
        assert_eq!(out.unwrap(), Some(1));
        common::settle_tasks(0).await;
        // Cancelled explicitly while its deadline is armed, then postponed, then ended.
        let scope = CancelScope::new().with_deadline(t0 + HOUR);
        let handle = scope.handle();
        let out = scope
            .run(async {
                tokio::task::yield_now().await;
                let h = current_scope().unwrap();
                h.set_deadline(Some(t0 + 2 * HOUR));
                h.cancel();
                h.set_deadline(Some(t0 + 3 * HOUR));
                checkpoint().await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), None);
        // Moved after the scope ended.
        handle.set_deadline(Some(t0 + 4 * HOUR));
        common::settle_tasks(0).await;
        // A nursery's timeout, with a child that goes pending and ends early.
        let out = Nursery::new()
            .timeout(HOUR)
            .run(|n| async move {
                n.spawn(async {
                    sleep(Duration::from_secs(1)).await?;
                    Ok::<_, Cancelled>(())
                });
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        // A scope dropped while parked with its deadline armed.
        poll_once_then_drop(move_on_after(HOUR, async {
            std::future::pending::<()>().await;
            Ok::<_, Cancelled>(())
        }))
        .await;
        assert!(tokio::time::Instant::now() < t0 + HOUR, "no deadline fired");
    })
    .await
}

// 14. A started child that fails before its signal while its caller, having given up, never
// polls the start again: the failure is the nursery's (found by the loom models of the
// start handoff; before, it reached no report at all).
#[derive(Debug)]
enum StartFailure {
    Boom,
    Cancelled(Cancelled),
}

impl From<Cancelled> for StartFailure {
    fn from(cancelled: Cancelled) -> Self {
        StartFailure::Cancelled(cancelled)
    }
}

impl CancelError for StartFailure {
    fn as_cancelled(&self) -> Option<&Cancelled> {
        match self {
            StartFailure::Cancelled(cancelled) => Some(cancelled),
            StartFailure::Boom => None,
        }
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r14_a_failure_before_the_signal_of_an_abandoned_start_is_the_nurserys() {
    common::leak_checked(async move {
        let out = Nursery::new()
            .run(|n: NurseryHandle<StartFailure>| async move {
                let mut start =
                    n.start(|_ready: Ready<u32>| async move { Err::<(), _>(StartFailure::Boom) });
                // Polled once (a start is lazy: this spawns the child), then the child fails;
                // the caller gives up without polling again.
                assert!(futures::poll!(&mut start).is_pending());
                tokio::time::sleep(Duration::from_millis(1)).await;
                drop(start);
                Ok(())
            })
            .await;
        let error = out.expect_err("the failure is reported");
        let failures = error.failures();
        assert_eq!(failures.len(), 1, "{error:?}");
        assert!(matches!(failures[0].error(), StartFailure::Boom));
        assert!(!failures[0].is_stray());
        assert!(matches!(failures[0].origin(), Origin::Child { .. }));
    })
    .await
}

#[cfg(panic = "unwind")]
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r14_a_panic_before_the_signal_of_an_abandoned_start_is_resumed_by_the_nursery() {
    common::leak_checked(async move {
        let out = tokio::spawn(async {
            Nursery::new()
                .run(|n: NurseryHandle<Cancelled>| async move {
                    let mut start = n.start(|_ready: Ready<u32>| async move {
                        panic!("before the signal");
                        #[allow(unreachable_code)]
                        Ok::<(), Cancelled>(())
                    });
                    // Polled once: a start is lazy, this spawns the child.
                    assert!(futures::poll!(&mut start).is_pending());
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    drop(start);
                    Ok(())
                })
                .await
        })
        .await;
        let payload = out.expect_err("the panic is resumed").into_panic();
        assert_eq!(panic_message(&*payload), Some("before the signal"));
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r14_an_abandoned_start_whose_child_returned_without_signalling_fails_nothing() {
    common::leak_checked(async move {
        let out = Nursery::new()
            .run(|n: NurseryHandle<StartFailure>| async move {
                let mut start =
                    n.start(|_ready: Ready<u32>| async move { Ok::<(), StartFailure>(()) });
                // Polled once: a start is lazy, this spawns the child.
                assert!(futures::poll!(&mut start).is_pending());
                tokio::time::sleep(Duration::from_millis(1)).await;
                drop(start);
                Ok(())
            })
            .await;
        assert_eq!(out.expect("nothing failed"), Some(()));
    })
    .await
}

// 15. A wait-mode nursery cancelled with a grace period, then dropped half-way through it,
// restarted the grace at the drop: its children were aborted a full grace after the drop.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r15_the_grace_period_runs_from_the_cancellation_not_from_the_drop() {
    common::leak_checked(async move {
        let start = tokio::time::Instant::now();
        let aborted_at = Arc::new(Mutex::new(None));
        let record = aborted_at.clone();
        let out = nursery(|_outer| async move {
            let inner = Nursery::new()
                .grace(Duration::from_secs(10))
                .run(|n| async move {
                    struct AbortedAt(Arc<Mutex<Option<tokio::time::Instant>>>);
                    impl Drop for AbortedAt {
                        fn drop(&mut self) {
                            *self.0.lock().unwrap() = Some(tokio::time::Instant::now());
                        }
                    }
                    n.spawn(async move {
                        let _aborted = AbortedAt(record);
                        // Ignores cancellation: only the grace's abort ends it.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok::<_, Cancelled>(())
                    });
                    n.cancel();
                    Ok::<_, Cancelled>(())
                });
            // Dropped 4 s into its 10 s grace: the outer nursery adopts the child.
            let dropped = tokio::time::timeout(Duration::from_secs(4), inner).await;
            assert!(dropped.is_err(), "still waiting for its child at 4 s");
            Ok::<_, Cancelled>(())
        })
        .await;
        assert!(out.is_ok(), "{out:?}");
        assert_eq!(
            *aborted_at.lock().unwrap(),
            Some(start + Duration::from_secs(10)),
            "aborted when the grace that began at the cancellation ran out"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    })
    .await;
}
