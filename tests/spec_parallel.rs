//! SPEC B2: parallel borrowing scopes, on tokio's multi-thread runtime.
//!
//! No real sleeps and no timing thresholds: children that must run at the same time meet at
//! a spinning barrier that fails past the hang bound instead of hanging; conditions are
//! awaited with a hang bound.
#![cfg(feature = "rt-multi-thread")]

mod common;

use std::any::Any;
use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use common::{HANG_BOUND, LiveFutures, settle_tasks, spin_until, spin_until_that, wait_until};
use tokio_nursery::*;

/// Blocks the calling thread until `count` callers have arrived: a barrier that only
/// children running at the same time on different threads can pass. Fails past the hang
/// bound instead of hanging.
fn meet(arrived: &AtomicUsize, count: usize) {
    arrived.fetch_add(1, SeqCst);
    spin_until_that("the children to meet (they do not run in parallel)", || {
        arrived.load(SeqCst) >= count
    });
}

fn cancelled_of<E: std::fmt::Debug>(error: NurseryError<E>) -> Cancelled {
    match error {
        NurseryError::Cancelled(cancelled) => cancelled,
        other => panic!("expected a propagated cancellation, got {other:?}"),
    }
}

#[derive(Debug, PartialEq)]
struct Payload(u32);

/// Two children that meet at a barrier, borrowing stack data; returns the sum and the
/// threads they ran on.
fn two_children_meet() -> (Option<u64>, usize) {
    let arrived = AtomicUsize::new(0); // plain stack data, borrowed by both children
    let threads: Mutex<HashSet<ThreadId>> = Mutex::new(HashSet::new());
    let data: Vec<u64> = (1..=100).collect();
    let body_only = Rc::new(0); // the body runs on the calling thread: it need not be Send
    let out = parallel_scope(async |s| {
        let (low, high) = data.split_at(50);
        let halves: Vec<_> = [low, high]
            .into_iter()
            .map(|half| {
                let (arrived, threads) = (&arrived, &threads);
                s.spawn(async move {
                    meet(arrived, 2);
                    threads.lock().unwrap().insert(std::thread::current().id());
                    Ok::<_, Cancelled>(half.iter().sum::<u64>())
                })
            })
            .collect();
        let mut total = *body_only;
        for half in halves {
            total += half.await.unwrap();
        }
        Ok::<_, Cancelled>(total)
    })
    .expect("a multi-thread runtime");
    (out.unwrap(), threads.into_inner().unwrap().len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_children_borrow_from_the_stack_and_run_in_parallel() {
    common::leak_checked(async move {
        // From the runtime's `block_on` thread...
        assert_eq!(two_children_meet(), (Some(5050), 2));
        // ...and from a worker, which hands its queue to another thread while it blocks.
        let from_worker = tokio::spawn(async { two_children_meet() }).await.unwrap();
        assert_eq!(from_worker, (Some(5050), 2));
        // ...and from a blocking thread of the runtime.
        let from_blocking = tokio::task::spawn_blocking(two_children_meet)
            .await
            .unwrap();
        assert_eq!(from_blocking, (Some(5050), 2));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_the_unsafe_entry_runs_children_in_parallel_without_blocking() {
    common::leak_checked(async move {
        let arrived = AtomicUsize::new(0);
        let data = [3u64, 4];
        let (arrived, data) = (&arrived, &data);
        // SAFETY: awaited to completion here; never leaked; the test's runtime outlives it.
        let out = unsafe {
            parallel_scope_async(|s| async move {
                let a = s.spawn(async move {
                    meet(arrived, 2);
                    Ok::<_, Cancelled>(data[0])
                });
                let b = s.spawn(async move {
                    meet(arrived, 2);
                    Ok::<_, Cancelled>(data[1])
                });
                Ok::<_, Cancelled>(a.await.unwrap() * b.await.unwrap())
            })
        }
        .await
        .expect("a multi-thread runtime");
        assert_eq!(out.unwrap(), Some(12));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_children_may_return_borrows_and_unjoined_values_die_with_the_scope() {
    common::leak_checked(async move {
        struct Counted<'a>(&'a AtomicUsize, &'a str);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.fetch_add(1, SeqCst);
            }
        }
        let words = [String::from("alpha"), String::from("beta")];
        let dropped = AtomicUsize::new(0);
        let out = parallel_scope(async |s| {
            let kept = s.spawn(async { Ok::<_, Cancelled>(Counted(&dropped, &words[0])) });
            // Never joined: its value is dropped before the scope ends.
            drop(s.spawn(async { Ok::<_, Cancelled>(Counted(&dropped, &words[1])) }));
            let kept = kept.await.unwrap();
            Ok::<_, Cancelled>(kept.1)
        })
        .unwrap();
        assert_eq!(out.unwrap(), Some("alpha"));
        assert_eq!(
            dropped.load(SeqCst),
            2,
            "both values dropped inside the scope"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_the_first_failure_cancels_the_siblings_and_every_failure_is_returned() {
    common::leak_checked(async move {
        let cleaned = AtomicUsize::new(0);
        let out = parallel_scope(async |s| {
            for _ in 0..3 {
                s.spawn(async {
                    let cancelled = cancelled().await;
                    assert!(matches!(cancelled.reason(), CancelReason::SiblingFailed));
                    cleaned.fetch_add(1, SeqCst);
                    Err::<(), std::io::Error>(cancelled.into())
                });
            }
            s.spawn(async { Err::<(), _>(std::io::Error::other("first")) });
            Ok::<_, std::io::Error>(())
        })
        .expect("a multi-thread runtime");
        let error = out.unwrap_err();
        let failures = error.failures();
        assert_eq!(
            failures.len(),
            1,
            "the echoes are not failures: {failures:?}"
        );
        assert_eq!(failures[0].error().to_string(), "first");
        assert!(matches!(failures[0].origin(), Origin::Child { .. }));
        assert_eq!(
            cleaned.load(SeqCst),
            3,
            "every sibling stopped before the scope returned"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_a_child_panic_is_resumed_with_its_payload_after_the_others_stopped() {
    common::leak_checked(async move {
        let stopped = AtomicUsize::new(0);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            parallel_scope(async |s| {
                for _ in 0..2 {
                    s.spawn(async {
                        let cancelled = cancelled().await;
                        stopped.fetch_add(1, SeqCst);
                        Err::<(), _>(cancelled)
                    });
                }
                s.spawn(async {
                    std::panic::panic_any(Payload(7));
                    #[allow(unreachable_code)]
                    Ok::<(), Cancelled>(())
                });
                Ok::<_, Cancelled>(())
            })
        }));
        let payload: Box<dyn Any + Send> = caught.unwrap_err();
        assert_eq!(payload.downcast_ref::<Payload>(), Some(&Payload(7)));
        assert_eq!(stopped.load(SeqCst), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_a_body_panic_stops_and_waits_for_the_children_before_unwinding() {
    common::leak_checked(async move {
        let live = LiveFutures::new();
        let cleaned = AtomicUsize::new(0);
        let started = AtomicUsize::new(0);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            parallel_scope(async |s| {
                for _ in 0..4 {
                    s.spawn(live.track(async {
                        started.fetch_add(1, SeqCst);
                        let cancelled = cancelled().await;
                        // Cleanup that still uses the borrowed frame.
                        cleaned.fetch_add(1, SeqCst);
                        Err::<(), _>(cancelled)
                    }));
                }
                wait_until("the children to start", || started.load(SeqCst) == 4).await;
                panic!("body boom");
                #[allow(unreachable_code)]
                Ok::<_, Cancelled>(())
            })
        }));
        let payload = caught.unwrap_err();
        assert_eq!(panic_message(&*payload), Some("body boom"));
        assert_eq!(
            cleaned.load(SeqCst),
            4,
            "cleaned up before the panic reached us"
        );
        assert_eq!(live.live(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_cancellation_of_the_callers_scope_reaches_the_children() {
    common::leak_checked(async move {
        let outer = CancelScope::new();
        let outer_id = outer.handle().id();
        let outer_handle = outer.handle();
        let seen = Mutex::new(Vec::new());
        let out = outer
            .run(async {
                parallel_scope(async |s| {
                    for _ in 0..2 {
                        s.spawn(async {
                            let cancelled = cancelled().await;
                            seen.lock().unwrap().push(cancelled.scope());
                            Err::<(), _>(cancelled)
                        });
                    }
                    // Cancelled from another thread, while the caller's thread is blocked.
                    s.spawn(async {
                        outer_handle.cancel();
                        Ok::<_, Cancelled>(())
                    });
                    Err::<(), _>(cancelled().await)
                })
                .expect("a multi-thread runtime")
                .map_err(cancelled_of)
            })
            .await;
        assert!(matches!(out, Ok(None)), "the outer scope absorbs: {out:?}");
        assert_eq!(*seen.lock().unwrap(), vec![outer_id, outer_id]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_deadlines_of_the_callers_scopes_reach_the_children() {
    common::leak_checked(async move {
        let reasons = Mutex::new(Vec::new());
        let deadlines = Mutex::new(Vec::new());
        let out = move_on_after(Duration::from_millis(20), async {
            parallel_scope(async |s| {
                let expected = current_deadline();
                assert!(matches!(expected, EffectiveDeadline::At(_)));
                for _ in 0..2 {
                    s.spawn(async {
                        deadlines.lock().unwrap().push(current_deadline());
                        let cancelled = cancelled().await;
                        let deadline = matches!(cancelled.reason(), CancelReason::Deadline);
                        reasons.lock().unwrap().push(deadline);
                        Err::<(), _>(cancelled)
                    });
                }
                deadlines.lock().unwrap().push(expected);
                Err::<(), _>(cancelled().await)
            })
            .expect("a multi-thread runtime")
            .map_err(cancelled_of)
        })
        .await;
        assert!(matches!(out, Ok(None)), "the timeout absorbs: {out:?}");
        let reasons = reasons.into_inner().unwrap();
        assert_eq!(
            reasons,
            vec![true, true],
            "both saw the deadline as the reason"
        );
        let deadlines = deadlines.into_inner().unwrap();
        assert_eq!(deadlines.len(), 3);
        assert!(deadlines.windows(2).all(|pair| pair[0] == pair[1]));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_the_scopes_own_cancellation_is_absorbed() {
    common::leak_checked(async move {
        let scope_id = Mutex::new(None);
        let seen = Mutex::new(None);
        let out = parallel_scope(async |s| {
            *scope_id.lock().unwrap() = Some(s.scope().id());
            s.spawn(async {
                let cancelled = cancelled().await;
                *seen.lock().unwrap() = Some(cancelled.scope());
                Err::<(), _>(cancelled)
            });
            s.scope().cancel();
            Err::<(), _>(cancelled().await)
        })
        .unwrap();
        assert!(matches!(out, Ok(None)), "absorbed: {out:?}");
        let scope_id = scope_id.into_inner().unwrap();
        assert!(scope_id.is_some());
        assert_eq!(
            seen.into_inner().unwrap(),
            scope_id,
            "the child saw the scope's own cancel"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_a_handle_cancels_or_aborts_its_child_alone() {
    common::leak_checked(async move {
        let live = LiveFutures::new();
        let out = parallel_scope(async |s| {
            let cancelled_child = s.spawn(async { Err::<u32, _>(cancelled().await) });
            let aborted_child = s.spawn(live.track(async {
                std::future::pending::<()>().await;
                Ok::<u32, Cancelled>(0)
            }));
            let sibling = s.spawn(async { Ok::<u32, Cancelled>(42) });
            cancelled_child.cancel();
            aborted_child.abort();
            assert!(matches!(
                cancelled_child.await,
                Err(JoinError::ChildCancelled)
            ));
            assert!(matches!(aborted_child.await, Err(JoinError::ChildAborted)));
            assert_eq!(live.live(), 0, "the aborted child's future is gone");
            Ok::<_, Cancelled>(sibling.await.unwrap())
        })
        .unwrap();
        assert_eq!(out.unwrap(), Some(42), "neither is a failure");
    })
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn b2_current_thread_is_a_clear_error_not_a_panic_or_a_hang() {
    common::leak_checked(async move {
        let ran = AtomicBool::new(false);
        let error = parallel_scope(async |_s| {
            ran.store(true, SeqCst);
            Ok::<_, Cancelled>(())
        })
        .unwrap_err();
        let message = error.to_string();
        assert!(message.contains("current_thread"), "{message}");
        assert!(message.contains("use local_scope"), "{message}");
        let ran_too = &ran;
        // SAFETY: awaited to completion here.
        let error = unsafe {
            parallel_scope_async(|_s| async move {
                ran_too.store(true, SeqCst);
                Ok::<_, Cancelled>(())
            })
        }
        .await
        .unwrap_err();
        assert!(error.to_string().contains("use local_scope"));
        assert!(!ran.load(SeqCst), "nothing ran");
    })
    .await
}

#[test]
fn b2_outside_a_runtime_is_a_clear_error() {
    // No leak check (SPEC R3): no runtime, by design.
    let error = parallel_scope(async |_s| Ok::<_, Cancelled>(())).unwrap_err();
    assert!(error.to_string().contains("no tokio runtime"), "{error}");
}

/// The unsafe entry's future dropped mid-flight (breaking its contract on purpose): its drop
/// returns only once no child future is alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_dropping_the_unsafe_future_leaves_no_child_future_alive() {
    common::leak_checked(async move {
        let live = LiveFutures::new();
        let started = AtomicUsize::new(0);
        let data = vec![7u8; 64];
        {
            let (live, started, data) = (&live, &started, &data);
            // SAFETY: this test breaks the "not dropped before completion" clause on purpose to
            // check the backstop; the future is never leaked and the runtime outlives it.
            let scope = unsafe {
                parallel_scope_async(|s| async move {
                    for _ in 0..16 {
                        s.spawn(live.track(async move {
                            started.fetch_add(1, SeqCst);
                            let _borrowed = data;
                            std::future::pending::<()>().await;
                            Ok::<_, Cancelled>(())
                        }));
                    }
                    std::future::pending::<()>().await;
                    Ok::<_, Cancelled>(())
                })
            };
            let mut scope = Box::pin(scope);
            let hang = std::time::Instant::now() + HANG_BOUND;
            while started.load(SeqCst) < 16 {
                assert!(
                    std::time::Instant::now() < hang,
                    "hang: children not started"
                );
                assert!(futures::poll!(scope.as_mut()).is_pending());
                tokio::task::yield_now().await;
            }
            drop(scope);
            assert_eq!(live.created(), 16);
            assert_eq!(
                live.live(),
                0,
                "no child future alive once the drop returned"
            );
        }
        drop(data);
    })
    .await
}

/// A child being polled on a worker while the future is dropped: the drop waits for that
/// poll to return, then drops the child. (The test's own polling runs on the runtime's
/// `block_on` thread: on a worker, its `yield_now` would defer it behind the spinning child.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_the_drop_waits_for_a_child_being_polled_on_a_worker() {
    common::leak_checked(async move {
        let live = LiveFutures::new();
        let polling = AtomicBool::new(false);
        let dropping = Arc::new(AtomicBool::new(false));
        let release = Arc::new(AtomicBool::new(false));
        let releaser = {
            let (dropping, release) = (dropping.clone(), release.clone());
            std::thread::spawn(move || {
                spin_until(&dropping, "the drop to start");
                release.store(true, SeqCst);
            })
        };
        let data = vec![1u8; 8];
        {
            let (live, polling, release, data) = (&live, &polling, &*release, &data);
            // SAFETY: dropped early on purpose (the backstop under test); never leaked; the
            // runtime outlives it.
            let scope = unsafe {
                parallel_scope_async(|s| async move {
                    s.spawn(live.track(async move {
                        polling.store(true, SeqCst);
                        // Busy in one poll, on its worker, until the drop has started.
                        spin_until(release, "the release");
                        let _borrowed = data;
                        std::future::pending::<()>().await;
                        Ok::<_, Cancelled>(())
                    }));
                    std::future::pending::<()>().await;
                    Ok::<_, Cancelled>(())
                })
            };
            let mut scope = Box::pin(scope);
            let hang = std::time::Instant::now() + HANG_BOUND;
            while !polling.load(SeqCst) {
                assert!(std::time::Instant::now() < hang, "hang: child not started");
                assert!(futures::poll!(scope.as_mut()).is_pending());
                tokio::task::yield_now().await;
            }
            dropping.store(true, SeqCst);
            drop(scope);
            assert_eq!((live.created(), live.live()), (1, 0));
        }
        releaser.join().unwrap();
    })
    .await
}

/// Runtime shutdown (outside the contract too) with a scope running in a task: the task's
/// drop runs the backstop, so no child future outlives the runtime's drop.
#[test]
fn b2_a_runtime_shutting_down_under_a_running_scope_leaves_no_child_alive() {
    // No leak check (SPEC R3): the test shuts the runtime down under its task by design; what
    // it checks is that no child future is left alive after that (counted).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let live = LiveFutures::new();
    let started = Arc::new(AtomicUsize::new(0));
    {
        let (live, started) = (live.clone(), started.clone());
        runtime.spawn(async move {
            let data = vec![5u8; 32]; // on this task's stack
            let (live, started, data) = (&live, &started, &data);
            // SAFETY: this test breaks the "runtime not shut down" clause on purpose to check
            // the backstop; never leaked.
            let scope = unsafe {
                parallel_scope_async(|s| async move {
                    for _ in 0..4 {
                        s.spawn(live.track(async move {
                            started.fetch_add(1, SeqCst);
                            let _borrowed = data;
                            std::future::pending::<()>().await;
                            Ok::<_, Cancelled>(())
                        }));
                    }
                    std::future::pending::<()>().await;
                    Ok::<_, Cancelled>(())
                })
            };
            let _ = scope.await;
        });
    }
    let hang = std::time::Instant::now() + HANG_BOUND;
    while started.load(SeqCst) < 4 {
        assert!(
            std::time::Instant::now() < hang,
            "hang: children not started"
        );
        std::thread::yield_now();
    }
    drop(runtime);
    assert_eq!(live.created(), 4);
    assert_eq!(live.live(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_twenty_thousand_children_that_checkpoint_complete() {
    common::leak_checked(async move {
        let data: Vec<u64> = (0..20_000).collect();
        let out = parallel_scope(async |s| {
            let handles: Vec<_> = data
                .iter()
                .map(|x| {
                    s.spawn(async move {
                        for _ in 0..3 {
                            checkpoint().await?;
                        }
                        Ok::<_, Cancelled>(*x)
                    })
                })
                .collect();
            let mut total = 0;
            for handle in handles {
                total += handle.await.unwrap();
            }
            Ok::<_, Cancelled>(total)
        })
        .unwrap();
        assert_eq!(out.unwrap(), Some(data.iter().sum()));
        settle_tasks(0).await; // SPEC R3: nothing left on the runtime
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_scopes_nest_inside_children() {
    common::leak_checked(async move {
        let rows: Vec<Vec<u64>> = (0..4)
            .map(|r| (0..8).map(|c| r * 8 + c).collect())
            .collect();
        let out = parallel_scope(async |s| {
            let sums: Vec<_> = rows
                .iter()
                .map(|row| {
                    s.spawn(async move {
                        // A blocking scope inside a child: its worker hands its queue over.
                        let inner = parallel_scope(async |inner| {
                            let halves: Vec<_> = row
                                .chunks(4)
                                .map(|half| {
                                    inner.spawn(async move {
                                        Ok::<_, Cancelled>(half.iter().sum::<u64>())
                                    })
                                })
                                .collect();
                            let mut total = 0;
                            for half in halves {
                                total += half.await.unwrap();
                            }
                            Ok::<_, Cancelled>(total)
                        })
                        .expect("a multi-thread runtime");
                        Ok::<_, Cancelled>(inner.unwrap().unwrap())
                    })
                })
                .collect();
            let mut total = 0;
            for sum in sums {
                total += sum.await.unwrap();
            }
            Ok::<_, Cancelled>(total)
        })
        .unwrap();
        assert_eq!(out.unwrap(), Some((0..32).sum()));
    })
    .await
}

/// The handle is a plain future: it can be polled by hand (and is `Unpin`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_handles_report_their_child() {
    common::leak_checked(async move {
        let out = parallel_scope(async |s| {
            let handle = s.spawn(async { Ok::<_, Cancelled>(1) });
            let id = handle.id();
            assert!(format!("{handle:?}").contains("ParallelHandle"));
            let mut handle = handle;
            let value = std::future::poll_fn(|cx| Pin::new(&mut handle).poll(cx)).await;
            assert!(handle.is_finished());
            Ok::<_, Cancelled>((id, value.unwrap()))
        })
        .unwrap();
        assert_eq!(out.unwrap().unwrap().1, 1);
    })
    .await
}

/// What happened, for the exemption tests: the parallel child saw a cancellation (the task
/// running the parallel scope is told rather than aborted), was released and ran to its end
/// (a task aborted under it would have had it dropped by the backstop); the code after the
/// scope did not run (the put-off abort came then).
struct Seen {
    told: AtomicBool,
    release: tokio::sync::Notify,
    completed: AtomicBool,
    after_scope: AtomicBool,
    child_dropped: AtomicBool,
}

impl Seen {
    fn new() -> Arc<Self> {
        Arc::new(Seen {
            told: AtomicBool::new(false),
            release: tokio::sync::Notify::new(),
            completed: AtomicBool::new(false),
            after_scope: AtomicBool::new(false),
            child_dropped: AtomicBool::new(false),
        })
    }
}

/// Sets `child_dropped` when the nursery child running the parallel scope is dropped.
struct DropFlag(Arc<Seen>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.child_dropped.store(true, SeqCst);
    }
}

/// A nursery child that runs a parallel scope whose one child waits for a cancellation,
/// then for the test's release; then yields and records that the code after the scope ran.
async fn runs_a_parallel_scope(seen: Arc<Seen>, started: tokio::sync::oneshot::Sender<()>) {
    let _flag = DropFlag(seen.clone());
    let local = 7u64;
    let borrowed = &local;
    let seen_inner = seen.clone();
    // SAFETY: awaited to completion here; the runtime outlives the test.
    let _ = unsafe {
        parallel_scope_async(|s| async move {
            s.spawn(async move {
                let _ = started.send(());
                let cancelled = cancelled().await;
                seen_inner.told.store(true, SeqCst);
                seen_inner.release.notified().await;
                assert_eq!(*borrowed, 7, "the borrow is still valid");
                seen_inner.completed.store(true, SeqCst);
                Err::<(), _>(cancelled)
            });
            Ok::<_, Cancelled>(())
        })
    }
    .await;
    tokio::task::yield_now().await;
    seen.after_scope.store(true, SeqCst);
}

/// SPEC B2: the task running a parallel scope is exempt from its nursery's abort drop (N8):
/// it is told "grace expired" through its scope, and aborted once the scope ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_a_task_running_a_parallel_scope_is_told_not_aborted_by_an_abort_drop() {
    common::leak_checked(async move {
        let seen = Seen::new();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let child_seen = seen.clone();
        let outer = tokio::spawn(Nursery::new().drop_mode(DropMode::Abort).run(
            move |n| async move {
                n.spawn(async move {
                    runs_a_parallel_scope(child_seen, started_tx).await;
                    Ok::<_, Cancelled>(())
                });
                std::future::pending::<Result<(), Cancelled>>().await
            },
        ));
        started_rx.await.unwrap();
        outer.abort();
        assert!(outer.await.unwrap_err().is_cancelled());
        wait_until("the parallel child is told", || seen.told.load(SeqCst)).await;
        seen.release.notify_one();
        wait_until("the child running the scope is dropped", || {
            seen.child_dropped.load(SeqCst)
        })
        .await;
        assert!(
            seen.completed.load(SeqCst),
            "the parallel child ran to its end"
        );
        assert!(
            !seen.after_scope.load(SeqCst),
            "aborted once the scope ended"
        );
        settle_tasks(0).await;
    })
    .await
}

/// SPEC B2: a handle's `abort` is put off the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_a_handles_abort_is_put_off_until_the_parallel_scope_ends() {
    common::leak_checked(async move {
        let seen = Seen::new();
        let (child_seen, seen_body) = (seen.clone(), seen.clone());
        let out = nursery(move |n| async move {
            let (started_tx, started_rx) = tokio::sync::oneshot::channel();
            let child = n.spawn(async move {
                runs_a_parallel_scope(child_seen, started_tx).await;
                Ok::<_, Cancelled>(())
            });
            started_rx.await.unwrap();
            child.abort();
            wait_until("the parallel child is told", || seen_body.told.load(SeqCst)).await;
            seen_body.release.notify_one();
            assert!(matches!(child.await, Err(JoinError::ChildAborted)));
            Ok::<_, Cancelled>(())
        })
        .await;
        assert!(out.is_ok());
        assert!(
            seen.completed.load(SeqCst),
            "the parallel child ran to its end"
        );
        assert!(!seen.after_scope.load(SeqCst));
        assert!(seen.child_dropped.load(SeqCst));
    })
    .await
}

/// SPEC B2 and S12: a hard scope around a parallel scope does not drop it when cancelled;
/// it drops its body once the parallel scope ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_a_hard_scope_puts_off_dropping_a_running_parallel_scope() {
    common::leak_checked(async move {
        let release = Arc::new(tokio::sync::Notify::new());
        let finished = Arc::new(AtomicBool::new(false));
        let after_scope = Arc::new(AtomicBool::new(false));
        let scope = CancelScope::new().hard();
        let handle = scope.handle();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (release2, finished2, after2) =
            (release.clone(), finished.clone(), after_scope.clone());
        let task = tokio::spawn(scope.run(async move {
            let local = 3u64;
            let borrowed = &local;
            // SAFETY: awaited to completion here (the hard scope puts off its drop).
            let _ = unsafe {
                parallel_scope_async(|s| async move {
                    s.spawn(async move {
                        let _ = started_tx.send(());
                        release2.notified().await; // not a cancellation point
                        assert_eq!(*borrowed, 3);
                        finished2.store(true, SeqCst);
                        Ok::<_, Cancelled>(())
                    });
                    Ok::<_, Cancelled>(())
                })
            }
            .await;
            std::future::pending::<()>().await; // dropped here by the hard scope
            after2.store(true, SeqCst);
            Ok::<_, Cancelled>(())
        }));
        started_rx.await.unwrap();
        handle.cancel();
        release.notify_one();
        assert!(matches!(task.await.unwrap(), Ok(None)), "absorbed");
        assert!(finished.load(SeqCst), "the parallel child ran to its end");
        assert!(!after_scope.load(SeqCst));
    })
    .await
}
