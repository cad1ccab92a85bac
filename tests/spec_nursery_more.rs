//! Tests per SPEC line for the nursery features not covered by tests/spec_nursery.rs: start
//! with readiness (N3), the supervisor policy (N5), the wait drop mode and adoption (N9), the
//! abort drop mode leaving nothing unaccounted for (N8), the concurrency limit (N11), the root
//! (N13), flat memory (N14), collecting nurseries (N15), blocking children (N16), tracing (O1)
//! and the task-tree snapshot (O2); and ports of Trio's `start` tests from
//! `src/trio/_core/_tests/test_run.py` (named `trio_*`).
//!
//! Timing tests run on current_thread under tokio's paused clock and assert exact instants
//! (millisecond-aligned). While a blocking child runs, tokio does not auto-advance the paused
//! clock, so those tests move it with `tokio::time::advance`. Multi-thread tests check the same
//! semantics without timing, waiting for conditions only with a hang bound. Tests count child
//! futures with `LiveFutures` and end with none alive and no task left on the runtime (R3).
//! The root's tests (N13) are plain `#[test]`s: the root builds its own runtime; the ones that
//! need exact time pause that runtime's clock from inside.
//!
//! Adaptations for the Trio ports:
//! - `nursery.start(fn)` is `n.start(|ready: Ready<V>| async move { .. })`, `task_status.started(v)`
//!   is `ready.signal(v)`; a `RuntimeError`/`KeyError` out of `start()` is a `StartError`.
//! - `autojump_clock` is tokio's paused clock; `async with open_nursery()` is `nursery(..)`.
//!
//! Trio cases not ported, and why:
//! - test_nursery_start's calling-convention `TypeError` and `TASK_STATUS_IGNORED`: Python
//!   calling conventions (Rust checks the closure's type at compile time).
//! - calling `started()` twice: impossible by type here (`Ready::signal` consumes the signal and
//!   `Ready` is neither `Clone` nor `Copy`); checked at compile time in `trio_test_nursery_start`.
//! - test_trio_run_strict_before_started: exception-group strictness, no Rust counterpart.
//! - test_internal_error_old_nursery_multiple_tasks: needs the "old nursery" of a starting task
//!   as an object; here the caller's scopes are not a nursery a child can spawn into.
//!
//! Not tested here: N17's `#[must_use]` (a compile-fail doc test);
//! O1's "no cost beyond a branch when no subscriber listens" (a benchmark's business). N9's
//! "orphans visible in O2" is tested in `nursery_smoke.rs` (`orphans_are_visible_in_the_task_tree`).

mod common;

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::nursery::*;
use common::{LiveFutures, settle_tasks, wait_until};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
#[cfg(all(unix, feature = "signal"))]
use tokio_nursery::NurseryError;
use tokio_nursery::{
    CancelReason, CancelScope, Cancelled, DropMode, EffectiveDeadline, Incident, JoinError,
    Nursery, NurseryHandle, Origin, Ready, Report, Root, SpawnError, StartError, TaskTree,
    cancelled, carry_scope, check_cancelled, checkpoint, current_deadline, current_scope,
    is_cancelled, move_on_after, nursery, orphan_count, orphans_finished, panic_message, sleep,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// What the report hook received, with payloads inspected while they were intact.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Panic {
        origin: String,
        code: Option<u32>,
        adopted: bool,
    },
    Failure {
        origin: String,
        error: String,
        adopted: bool,
    },
}

#[derive(Clone, Default)]
struct Reports(Arc<Mutex<Vec<Seen>>>);

impl Reports {
    fn hook(&self) -> impl Fn(&Report<'_>) + Send + Sync + 'static {
        let reports = self.0.clone();
        move |report: &Report<'_>| {
            let seen = match report {
                Report::Panic {
                    origin,
                    payload,
                    adopted,
                    ..
                } => Seen::Panic {
                    origin: origin_name(origin),
                    code: code(*payload),
                    adopted: *adopted,
                },
                Report::Failure {
                    origin,
                    error,
                    adopted,
                    ..
                } => Seen::Failure {
                    origin: origin_name(origin),
                    error: format!("{error:?}"),
                    adopted: *adopted,
                },
                other => panic!("unexpected report: {other}"),
            };
            reports.lock().unwrap().push(seen);
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
}

/// Compile-time probe: whether `T: Clone` (inherent associated items win over the trait's
/// fallback when their bound holds).
struct Probe<T>(std::marker::PhantomData<T>);

trait NotClone {
    const CLONE: bool = false;
}

impl<T> NotClone for Probe<T> {}

#[allow(dead_code)]
impl<T: Clone> Probe<T> {
    const CLONE: bool = true;
}

// ---------------------------------------------------------------------------------------------
// N3. Start with readiness.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn n03_start_returns_the_signalled_value_and_the_child_keeps_running_in_the_nursery() {
    common::leak_checked(async move {
        let live = LiveFutures::new();
        let tracker = live.clone();
        let log = Log::default();
        let l = log.clone();
        let start = Instant::now();
        let out = nursery(|n| async move {
            assert_eq!(n.live_children(), 0);
            let value = n
                .start(|ready: Ready<u32>| {
                    tracker.track(async move {
                        sleep(ms(10)).await?;
                        ready.signal(42);
                        sleep(ms(20)).await?;
                        l.push(format!("child done at {}", since(start)));
                        Ok::<_, Cancelled>(())
                    })
                })
                .await
                .unwrap();
            assert_eq!(value, 42);
            assert_eq!(since(start), 10, "start returns at the signal");
            assert_eq!(n.live_children(), 1, "the child keeps running");
            Ok::<_, Cancelled>(value)
        })
        .await;
        assert_eq!(out.unwrap(), Some(42));
        assert_eq!(since(start), 30, "the nursery waited for the started child");
        assert_eq!(log.events(), ["child done at 30"]);
        assert_eq!(live.live(), 0);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n03_the_child_runs_under_the_callers_scopes_until_the_signal_then_under_the_nurserys() {
    common::leak_checked(async move {
        let log = Log::default();
        let l = log.clone();
        let start = Instant::now();
        let out = nursery(|n| async move {
            let nursery_id = n.scope().id();
            let caller = CancelScope::new().with_deadline(start + ms(100));
            let caller_scope = caller.handle();
            let got = caller
                .run(async {
                    let value = n
                        .start(move |ready: Ready<&'static str>| async move {
                            // Before the signal: the caller's deadline applies.
                            assert_eq!(current_deadline(), EffectiveDeadline::At(start + ms(100)));
                            sleep(ms(10)).await?;
                            ready.signal("ready");
                            // After: only the nursery's scopes.
                            assert_eq!(current_deadline(), EffectiveDeadline::Unbounded);
                            // The caller's scope is cancelled at 10: not this child's business.
                            sleep(ms(20)).await?;
                            l.push(format!("slept until {}", since(start)));
                            // The nursery's cancellation reaches it.
                            let c = cancelled().await;
                            assert_eq!(c.scope(), nursery_id);
                            l.push(format!("nursery cancel seen at {}", since(start)));
                            Err::<(), _>(c)
                        })
                        .await
                        .unwrap();
                    assert_eq!(value, "ready");
                    assert_eq!(since(start), 10);
                    caller_scope.cancel();
                    checkpoint().await?;
                    Ok::<(), Cancelled>(())
                })
                .await;
            assert!(
                matches!(got, Ok(None)),
                "the caller's scope absorbed: {got:?}"
            );
            tokio::time::sleep(ms(30)).await;
            n.cancel();
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(
            log.events(),
            ["slept until 30", "nursery cancel seen at 40"]
        );
        assert_eq!(since(start), 40);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n03_a_cancelled_caller_keeps_waiting_and_the_child_sees_the_cancellation() {
    common::leak_checked(async move {
        let start = Instant::now();
        let out = nursery(|n| async move {
            let caller = CancelScope::new();
            let caller_scope = caller.handle();
            let caller_id = caller_scope.id();
            let canceller = caller_scope.clone();
            let _timer = at(start + ms(5), move || canceller.cancel());
            let got = caller
                .run(async {
                    let outcome = n
                        .start(move |ready: Ready<u32>| async move {
                            tokio::time::sleep(ms(20)).await; // not a cancellation point
                            assert!(is_cancelled(), "the child runs under the caller's scope");
                            let c = check_cancelled().unwrap_err();
                            assert_eq!(c.scope(), caller_id);
                            drop(ready);
                            Err::<(), _>(c)
                        })
                        .await;
                    assert_eq!(since(start), 20, "start is not a cancellation point");
                    match outcome {
                        Err(StartError::Cancelled(c)) => {
                            assert_eq!(c.scope(), caller_id);
                            Err::<(), _>(c)
                        }
                        other => panic!("expected StartError::Cancelled, got {other:?}"),
                    }
                })
                .await;
            assert!(matches!(got, Ok(None)), "{got:?}");
            assert!(caller_scope.cancelled_caught());
            assert_eq!(n.live_children(), 0);
            assert!(!n.scope().is_cancelled(), "the nursery saw nothing");
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(since(start), 20);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n03_a_signal_while_the_callers_scope_is_cancelled_does_not_move_the_child() {
    common::leak_checked(async move {
        let start = Instant::now();
        let log = Log::default();
        let l = log.clone();
        let out = nursery(|n| async move {
            let caller = CancelScope::new();
            let caller_scope = caller.handle();
            let caller_id = caller_scope.id();
            let canceller = caller_scope.clone();
            let _timer = at(start + ms(5), move || canceller.cancel());
            let got = caller
                .run(async {
                    let value = n
                        .start(move |ready: Ready<u32>| async move {
                            tokio::time::sleep(ms(10)).await;
                            ready.signal(7);
                            // Not moved: still under the cancelled caller's scope.
                            let c = check_cancelled().unwrap_err();
                            assert_eq!(c.scope(), caller_id);
                            tokio::time::sleep(ms(10)).await; // cleanup, then a normal exit
                            l.push(format!("child exits at {}", since(start)));
                            Ok::<_, Cancelled>(())
                        })
                        .await
                        .unwrap();
                    assert_eq!(value, 7);
                    assert_eq!(since(start), 20, "the caller waited until the child exited");
                    check_cancelled()?;
                    Ok::<(), Cancelled>(())
                })
                .await;
            assert!(matches!(got, Ok(None)), "{got:?}");
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(log.events(), ["child exits at 20"]);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n03_a_failure_before_the_signal_goes_to_the_caller_alone() {
    common::leak_checked(async move {
        let reports = Reports::default();
        let start = Instant::now();
        let out = Nursery::new()
            .on_report(reports.hook())
            .run(|n| async move {
                let sibling = n.spawn(async {
                    sleep(ms(50)).await?;
                    Ok::<_, AppError>(5)
                });
                let failed = n
                    .start(|_ready: Ready<()>| async move {
                        sleep(ms(10)).await?;
                        Err::<(), _>(AppError::Boom(3))
                    })
                    .await;
                assert!(matches!(failed, Err(StartError::Failed(AppError::Boom(3)))));
                assert_eq!(since(start), 10);
                let silent = n
                    .start(|_ready: Ready<()>| async move { Ok::<(), AppError>(()) })
                    .await;
                assert!(matches!(silent, Err(StartError::NoSignal)), "{silent:?}");
                assert!(
                    StartError::<AppError>::NoSignal
                        .to_string()
                        .contains("without signalling"),
                );
                // Not a failure of the nursery: no one was cancelled.
                assert_eq!(sibling.await.unwrap(), 5);
                Ok::<_, AppError>(())
            })
            .await;
        assert!(matches!(out, Ok(Some(()))), "{out:?}");
        assert_eq!(reports.seen(), []);
        assert_eq!(since(start), 50);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n03_a_panic_before_the_signal_is_resumed_in_the_caller_alone() {
    common::leak_checked(async move {
        let reports = Reports::default();
        let out = Nursery::new()
            .on_report(reports.hook())
            .run(|n| async move {
                let outcome = catch(n.start(|_ready: Ready<()>| async move {
                    sleep(ms(5)).await?;
                    explode::<Result<(), Cancelled>>(Code(3))
                }))
                .await;
                let payload = outcome.expect_err("the panic is resumed in the caller");
                assert_eq!(code(&*payload), Some(3));
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()), "the nursery saw no panic");
        assert_eq!(reports.seen(), []);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n03_a_child_aborted_before_the_signal_is_a_start_error() {
    common::leak_checked(async move {
        let live = LiveFutures::new();
        let tracker = live.clone();
        let start = Instant::now();
        let out = nursery(|n| async move {
            let aborter = n.clone();
            let _timer = at(start + ms(10), move || aborter.abort_all());
            let outcome = n
                .start(|_ready: Ready<()>| tracker.track(stuck::<Cancelled>()))
                .await;
            assert!(matches!(outcome, Err(StartError::Aborted)), "{outcome:?}");
            assert_eq!(since(start), 10);
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(live.live(), 0);
        assert_eq!(live.completed(), 0);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n03_a_dropped_start_moves_the_child_to_the_nursery_cancelled_and_its_failure_is_the_nurserys()
 {
    common::leak_checked(async move {
        let live = LiveFutures::new();
        let tracker = live.clone();
        let log = Log::default();
        let l = log.clone();
        let start = Instant::now();
        let out = nursery(|n| async move {
            let (id_tx, id_rx) = oneshot::channel();
            let caller = CancelScope::new();
            let caller_scope = caller.handle();
            let starter = n.clone();
            let child_id = caller
                .run(async move {
                    let mut starting = starter.start(move |_ready: Ready<()>| {
                        tracker.track(async move {
                            let own = current_scope().unwrap().id();
                            id_tx.send(own).unwrap();
                            let c = cancelled().await;
                            l.push(format!(
                                "cancelled at {}: own scope {}, explicit {}",
                                since(start),
                                c.scope() == own,
                                is_explicit(c.reason())
                            ));
                            tokio::time::sleep(ms(5)).await;
                            Err::<(), _>(AppError::Boom(1))
                        })
                    });
                    // A start is lazy: its first poll spawns the child.
                    assert!(futures::poll!(&mut starting).is_pending());
                    settle().await;
                    let child_id = id_rx.await.unwrap();
                    // Before the drop: under the caller's scope.
                    let tree = TaskTree::of(&current_scope().unwrap());
                    assert!(
                        tree.entries()
                            .iter()
                            .any(|e| e.scope == child_id && e.depth == 1),
                        "{tree}"
                    );
                    assert!(tokio::time::timeout(ms(10), starting).await.is_err());
                    Ok::<_, AppError>(child_id)
                })
                .await
                .unwrap()
                .unwrap();
            assert!(!caller_scope.is_cancelled());
            // After the drop: a child of the nursery, with its own scope cancelled.
            let tree = TaskTree::of(&n.scope());
            let entry = tree
                .entries()
                .iter()
                .find(|e| e.scope == child_id)
                .unwrap_or_else(|| panic!("the child is not in the nursery's tree:\n{tree}"));
            assert_eq!(entry.depth, 1);
            assert!(entry.cancelled);
            assert_eq!(n.live_children(), 1);
            sleep_forever::<AppError>().await
        })
        .await;
        let failures = failed(out);
        assert_eq!(booms(&failures), [1]);
        assert!(matches!(failures[0].origin(), Origin::Child { .. }));
        assert_eq!(
            log.events(),
            ["cancelled at 10: own scope true, explicit true"]
        );
        assert_eq!(
            since(start),
            15,
            "the abandoned child's failure cancelled the nursery"
        );
        assert_eq!(live.live(), 0);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n03_a_dropped_starts_outcome_goes_to_a_supervisors_outlet() {
    common::leak_checked(async move {
        let start = Instant::now();
        let out = Nursery::new()
            .supervisor()
            .run(|n| async move {
                let starting = n.start(|_ready: Ready<()>| async move {
                    let _ = cancelled().await;
                    Err::<(), _>(AppError::Boom(2))
                });
                assert!(tokio::time::timeout(ms(10), starting).await.is_err());
                match n.next_incident().await {
                    Some(Incident::Failed(failure)) => {
                        assert!(matches!(failure.error(), AppError::Boom(2)));
                        assert!(matches!(failure.origin(), Origin::Child { .. }));
                    }
                    other => panic!("expected the abandoned child's failure, got {other:?}"),
                }
                assert_eq!(since(start), 10);
                Ok::<_, AppError>(())
            })
            .await;
        assert!(matches!(out, Ok(Some(()))), "{out:?}");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n03_a_pending_start_keeps_the_nursery_open() {
    common::leak_checked(async move {
        let start = Instant::now();
        let (value_tx, value_rx) = oneshot::channel();
        let out = nursery(|n| async move {
            // A start is lazy: its first poll registers the child; its future is then
            // awaited elsewhere.
            let mut starting = n.start(|ready: Ready<u32>| async move {
                sleep(ms(10)).await?;
                ready.signal(3);
                sleep(ms(10)).await?;
                Ok::<_, Cancelled>(())
            });
            assert_eq!(n.live_children(), 0);
            assert!(futures::poll!(&mut starting).is_pending());
            assert_eq!(n.live_children(), 1);
            tokio::spawn(async move {
                let value = starting.await.unwrap();
                value_tx.send((value, since(start))).unwrap();
            });
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(
            since(start),
            20,
            "the body returned at 0; the started child held it open"
        );
        assert_eq!(value_rx.await.unwrap(), (3, 10));
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n03_start_multi_thread() {
    common::leak_checked(async move {
        bounded(async {
            const N: u32 = 16;
            let live = LiveFutures::new();
            let tracker = live.clone();
            let observer = live.clone();
            let out = nursery(|n| async move {
                let callers: Vec<_> = (0..N)
                    .map(|i| {
                        let starter = n.clone();
                        let tracker = tracker.clone();
                        n.spawn(async move {
                            let outcome = starter
                                .start(move |ready: Ready<u32>| {
                                    tracker.track(async move {
                                        tokio::task::yield_now().await;
                                        ready.signal(i * 10);
                                        let c = cancelled().await;
                                        Err::<(), _>(c)
                                    })
                                })
                                .await;
                            started(outcome)
                        })
                    })
                    .collect();
                let mut values = Vec::new();
                for caller in callers {
                    values.push(caller.await.unwrap());
                }
                values.sort_unstable();
                assert_eq!(values, (0..N).map(|i| i * 10).collect::<Vec<_>>());
                assert_eq!(n.live_children(), N as usize, "the started children run on");
                assert_eq!(observer.live(), N as usize);
                n.cancel();
                Ok::<_, Cancelled>(())
            })
            .await;
            assert_eq!(out.unwrap(), Some(()));
            assert_eq!(live.live(), 0);
            settle_tasks(0).await;
        })
        .await;
    })
    .await
}

// Trio: test_nursery_start (the cases that hold; the cancelled-caller cases follow).
#[tokio::test(start_paused = true)]
async fn trio_test_nursery_start() {
    common::leak_checked(async move {
        async fn sleep_then_start(seconds: u64, ready: Ready<u64>) -> Result<(), Cancelled> {
            sleep(secs(seconds)).await?;
            ready.signal(seconds);
            sleep(secs(seconds)).await?;
            Ok(())
        }

        // Basic happy path: start waits for the signal, returns the value, and the nursery then
        // waits for the child to exit.
        for seconds in [1, 2] {
            let t0 = Instant::now();
            let out = nursery(|n| async move {
                assert_eq!(n.live_children(), 0);
                let value = n
                    .start(|ready: Ready<u64>| sleep_then_start(seconds, ready))
                    .await
                    .unwrap();
                assert_eq!(value, seconds);
                assert_eq!(t0.elapsed(), secs(seconds));
                assert_eq!(n.live_children(), 1);
                Ok::<_, Cancelled>(())
            })
            .await;
            assert_eq!(out.unwrap(), Some(()));
            assert_eq!(t0.elapsed(), secs(2 * seconds));
        }

        // Calling started twice: impossible by type. `signal` takes the signal by value, and
        // `Ready` can be neither cloned nor copied.
        let _consumes: fn(Ready<u64>, u64) = Ready::<u64>::signal;
        assert!(!std::hint::black_box(<Probe<Ready<u64>>>::CLONE));
        assert!(std::hint::black_box(<Probe<u64>>::CLONE), "the probe works");

        // The child crashes before calling started: the error comes out of start.
        let out = nursery(|n| async move {
            let outcome = n
                .start(|_ready: Ready<()>| async move { Err::<(), _>(AppError::Boom(1)) })
                .await;
            assert!(matches!(
                outcome,
                Err(StartError::Failed(AppError::Boom(1)))
            ));
            Ok::<_, AppError>(())
        })
        .await;
        assert!(matches!(out, Ok(Some(()))), "{out:?}");

        // The child exits cleanly before calling started: an error.
        let out = nursery(|n| async move {
            let outcome = n
                .start(|_ready: Ready<()>| async move { Ok::<_, Cancelled>(()) })
                .await;
            match outcome {
                Err(error @ StartError::NoSignal) => {
                    assert!(error.to_string().contains("without signalling"))
                }
                other => panic!("expected NoSignal, got {other:?}"),
            }
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));

        // In a cancelled caller, a child that signals and exits without a checkpoint completed
        // successfully: start does not raise Cancelled, and the scope catches nothing.
        let out = nursery(|n| async move {
            let cs = CancelScope::new();
            let handle = cs.handle();
            handle.cancel();
            let got = cs
                .run(async {
                    let outcome = n
                        .start(|ready: Ready<()>| async move {
                            ready.signal(());
                            Ok::<_, Cancelled>(())
                        })
                        .await;
                    started(outcome)
                })
                .await;
            assert!(matches!(got, Ok(Some(()))), "{got:?}");
            assert!(!handle.cancelled_caught());
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));

        // Starting in a closed nursery fails at once.
        let closed = nursery(|n| async move { Ok::<_, Cancelled>(n.clone()) })
            .await
            .unwrap()
            .unwrap();
        let t0 = Instant::now();
        let outcome = closed
            .start(|ready: Ready<u64>| sleep_then_start(7, ready))
            .await;
        assert!(
            matches!(outcome, Err(StartError::Spawn(SpawnError::Closed))),
            "{outcome:?}"
        );
        assert_eq!(t0.elapsed(), Duration::ZERO);
        settle_tasks(0).await;
    })
    .await
}

// Trio: test_nursery_start, "if the call to start() is cancelled, then the call to started()
// does nothing -- the child keeps executing under start(). The value it passed is ignored;
// start() raises Cancelled."
#[tokio::test(start_paused = true)]
async fn trio_test_nursery_start_cancelled_caller_signal_then_checkpoint_raises_cancelled() {
    common::leak_checked(async move {
        let out = nursery(|n| async move {
            let cs = CancelScope::new();
            let handle = cs.handle();
            handle.cancel();
            let got = cs
                .run(async {
                    let outcome = n
                        .start(|ready: Ready<&'static str>| async move {
                            ready.signal("hi");
                            checkpoint().await?;
                            Ok::<_, Cancelled>(())
                        })
                        .await;
                    match outcome {
                        Err(StartError::Cancelled(c)) => Err::<(), _>(c),
                        other => panic!("start() should raise Cancelled, got {other:?}"),
                    }
                })
                .await;
            assert!(matches!(got, Ok(None)), "{got:?}");
            assert!(handle.cancelled_caught());
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await
}

// Trio: test_nursery_start, "since starting in a cancelled context makes started() a no-op,
// if the child crashes after calling started(), the error can *still* come out of start()".
#[tokio::test(start_paused = true)]
async fn trio_test_nursery_start_cancelled_caller_crash_after_signal_comes_out_of_start() {
    common::leak_checked(async move {
        let out = nursery(|n| async move {
            let cs = CancelScope::new();
            cs.handle().cancel();
            let got = cs
                .run(async {
                    let outcome = n
                        .start(|ready: Ready<()>| async move {
                            ready.signal(());
                            Err::<(), _>(AppError::Boom(7))
                        })
                        .await;
                    match outcome {
                        Err(StartError::Failed(AppError::Boom(7))) => Ok::<(), AppError>(()),
                        other => {
                            panic!("the child's error should come out of start(), got {other:?}")
                        }
                    }
                })
                .await;
            assert!(matches!(got, Ok(Some(()))), "{got:?}");
            Ok::<_, AppError>(())
        })
        .await;
        assert!(
            matches!(out, Ok(Some(()))),
            "the failure is the caller's, not the nursery's: {out:?}"
        );
    })
    .await
}

// Trio: test_nursery_start_keeps_nursery_open.
#[tokio::test(start_paused = true)]
async fn trio_test_nursery_start_keeps_nursery_open() {
    common::leak_checked(async move {
        async fn sleep_a_bit(ready: Ready<()>) -> Result<(), Cancelled> {
            sleep(secs(2)).await?;
            ready.signal(());
            sleep(secs(3)).await?;
            Ok(())
        }

        let t0 = Instant::now();
        let out = nursery(|n1| async move {
            let inner = nursery(|n2: NurseryHandle<Cancelled>| async move {
                // Start the 'start' call running in the background.
                let target = n2.clone();
                n1.spawn(async move { started(target.start(sleep_a_bit).await) });
                sleep(secs(1)).await?;
                // Start another one, then leave the body: only the pending start (and the first
                // child) keep this nursery open.
                let target = n2.clone();
                n1.spawn(async move { started(target.start(sleep_a_bit).await) });
                Ok(())
            })
            .await;
            assert_eq!(flat(inner).unwrap(), Some(()));
            assert_eq!(t0.elapsed(), secs(6));
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        settle_tasks(0).await;
    })
    .await
}

// Trio: test_nursery_start_with_cancelled_nursery. A started child moved into a cancelled
// nursery: its sleeping descendants must notice.
#[tokio::test(start_paused = true)]
async fn trio_test_nursery_start_with_cancelled_nursery() {
    common::leak_checked(async move {
        /// Starts a nursery and hands its handle out.
        async fn setup_nursery(ready: Ready<NurseryHandle<Cancelled>>) -> Result<(), Cancelled> {
            let out = nursery(|n| async move {
                ready.signal(n.clone());
                sleep_forever::<Cancelled>().await
            })
            .await;
            flat(out).map(|_| ())
        }

        /// Signals while its children sleep, after calling `before_signal`.
        async fn sleeping_children(
            before_signal: Box<dyn FnOnce() + Send>,
            ready: Ready<()>,
        ) -> Result<(), Cancelled> {
            let out = nursery(|n| async move {
                n.spawn(sleep_forever::<Cancelled>());
                n.spawn(sleep_forever::<Cancelled>());
                settle().await;
                before_signal();
                ready.signal(());
                Ok::<_, Cancelled>(())
            })
            .await;
            flat(out).map(|_| ())
        }

        let live = LiveFutures::new();
        // Cancelling the target nursery just *before* calling started().
        let tracker = live.clone();
        let out = no_hang(nursery(|n| async move {
            let target = n.start(setup_nursery).await.unwrap();
            let cancel_target = target.clone();
            target
                .start(|ready| {
                    tracker.track(sleeping_children(
                        Box::new(move || cancel_target.cancel()),
                        ready,
                    ))
                })
                .await
                .unwrap();
            Ok::<_, Cancelled>(())
        }))
        .await;
        assert_eq!(out.unwrap(), Some(()));

        // Cancelling the target nursery just *after* calling started().
        let tracker = live.clone();
        let out = no_hang(nursery(|n| async move {
            let target = n.start(setup_nursery).await.unwrap();
            target
                .start(|ready| tracker.track(sleeping_children(Box::new(|| {}), ready)))
                .await
                .unwrap();
            target.cancel();
            Ok::<_, Cancelled>(())
        }))
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(live.live(), 0);
        assert_eq!(live.completed(), 2);
        settle_tasks(0).await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// N5. Supervisor policy.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn n05_child_failures_and_panics_cancel_no_one_and_stream_as_they_happen() {
    common::leak_checked(async move {
        let reports = Reports::default();
        let start = Instant::now();
        let out = Nursery::new()
            .supervisor()
            .on_report(reports.hook())
            .run(|n| async move {
                let a = n.spawn_named("a", async {
                    sleep(ms(10)).await?;
                    Err::<u32, _>(AppError::Boom(1))
                });
                let b = n.spawn_named("b", async {
                    sleep(ms(20)).await?;
                    explode::<Result<u32, AppError>>(Code(2))
                });
                n.spawn_named("c", async {
                    sleep(ms(30)).await?;
                    Err::<u32, _>(AppError::Boom(3))
                });
                let d = n.spawn_named("d", async {
                    sleep(ms(50)).await?; // a cancellation point: no one cancels it
                    Ok::<u32, AppError>(4)
                });
                let mut seen = Vec::new();
                while let Some(incident) = n.next_incident().await {
                    seen.push(match incident {
                        Incident::Failed(f) => format!(
                            "{} failed ({}) at {}",
                            origin_name(f.origin()),
                            f.error(),
                            since(start)
                        ),
                        Incident::Panicked { origin, payload } => format!(
                            "{} panicked ({:?}) at {}",
                            origin_name(&origin),
                            code(&*payload),
                            since(start)
                        ),
                    });
                }
                assert_eq!(since(start), 50, "the outlet ends once no child is alive");
                assert_eq!(
                    seen,
                    [
                        "a failed (boom 1) at 10",
                        "b panicked (Some(2)) at 20",
                        "c failed (boom 3) at 30"
                    ]
                );
                assert!(!n.scope().is_cancelled());
                assert!(matches!(a.await, Err(JoinError::ChildFailed)));
                assert!(matches!(b.await, Err(JoinError::ChildPanicked)));
                assert_eq!(d.await.unwrap(), 4);
                Ok::<_, AppError>(())
            })
            .await;
        assert!(matches!(out, Ok(Some(()))), "everything was taken: {out:?}");
        assert_eq!(reports.seen(), []);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n05_a_body_failure_cancels_every_child() {
    common::leak_checked(async move {
        let log = Log::default();
        let start = Instant::now();
        let l = log.clone();
        let out = Nursery::new()
            .supervisor()
            .run(|n| async move {
                for i in 0..3 {
                    let l = l.clone();
                    n.spawn(async move {
                        let c = cancelled().await;
                        l.push(format!("{i}: {:?} at {}", c.reason(), since(start)));
                        Err::<(), _>(AppError::from(c))
                    });
                }
                sleep(ms(10)).await?;
                Err::<(), _>(AppError::Boom(9))
            })
            .await;
        let failures = failed(out);
        assert_eq!(booms(&failures), [9]);
        assert_eq!(failures[0].origin(), &Origin::Body);
        assert_eq!(
            log.set(),
            set(&[
                "0: SiblingFailed at 10",
                "1: SiblingFailed at 10",
                "2: SiblingFailed at 10"
            ])
        );
        assert_eq!(since(start), 10);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n05_untaken_reports_are_returned_or_resumed_when_the_nursery_ends() {
    common::leak_checked(async move {
        // Failures nobody took are returned.
        let out = Nursery::new()
            .supervisor()
            .run(|n| async move {
                n.spawn_named("taken", async {
                    sleep(ms(10)).await?;
                    Err::<(), _>(AppError::Boom(1))
                });
                n.spawn_named("left", async {
                    sleep(ms(20)).await?;
                    Err::<(), _>(AppError::Boom(2))
                });
                match n.next_incident().await {
                    Some(Incident::Failed(f)) => assert!(matches!(f.error(), AppError::Boom(1))),
                    other => panic!("{other:?}"),
                }
                Ok::<_, AppError>(())
            })
            .await;
        let failures = failed(out);
        assert_eq!(booms(&failures), [2]);
        assert_eq!(origin_name(failures[0].origin()), "left");

        // The first panic nobody took is resumed; the rest goes to the report hook.
        let reports = Reports::default();
        let out = catch(Nursery::new().supervisor().on_report(reports.hook()).run(
            |n| async move {
                n.spawn_named("p1", async {
                    sleep(ms(10)).await?;
                    explode::<Result<(), AppError>>(Code(1))
                });
                n.spawn_named("f2", async {
                    sleep(ms(20)).await?;
                    Err::<(), _>(AppError::Boom(2))
                });
                n.spawn_named("p3", async {
                    sleep(ms(30)).await?;
                    explode::<Result<(), AppError>>(Code(3))
                });
                n.spawn_named("p4", async {
                    sleep(ms(40)).await?;
                    explode::<Result<(), AppError>>(Code(4))
                });
                match n.next_incident().await {
                    Some(Incident::Panicked { origin, payload }) => {
                        assert_eq!(origin_name(&origin), "p1");
                        assert_eq!(code(&*payload), Some(1));
                    }
                    other => panic!("{other:?}"),
                }
                Ok::<_, AppError>(())
            },
        ))
        .await;
        let payload = out.expect_err("the first untaken panic is resumed");
        assert_eq!(code(&*payload), Some(3));
        assert_eq!(
            reports.seen(),
            [
                Seen::Panic {
                    origin: "p4".into(),
                    code: Some(4),
                    adopted: false
                },
                Seen::Failure {
                    origin: "f2".into(),
                    error: "Boom(2)".into(),
                    adopted: false
                },
            ]
        );
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n05_supervisor_multi_thread() {
    common::leak_checked(async move {
        bounded(async {
            const N: u32 = 200;
            let live = LiveFutures::new();
            let tracker = live.clone();
            let out = Nursery::new()
                .supervisor()
                .run(|n| async move {
                    let handles: Vec<_> = (0..N)
                        .map(|i| {
                            n.spawn(tracker.track(async move {
                                tokio::task::yield_now().await;
                                if i % 2 == 0 {
                                    Err(AppError::Boom(i))
                                } else {
                                    Ok(i)
                                }
                            }))
                        })
                        .collect();
                    let mut failed = Vec::new();
                    while let Some(incident) = n.next_incident().await {
                        match incident {
                            Incident::Failed(f) => failed.push(booms(&[f])[0]),
                            Incident::Panicked { .. } => panic!("no child panics"),
                        }
                    }
                    failed.sort_unstable();
                    assert_eq!(failed, (0..N).step_by(2).collect::<Vec<_>>());
                    for (i, handle) in handles.into_iter().enumerate() {
                        let i = i as u32;
                        match handle.await {
                            Ok(value) => assert_eq!(value, i),
                            Err(JoinError::ChildFailed) => assert_eq!(i % 2, 0),
                            Err(other) => panic!("child {i}: {other:?}"),
                        }
                    }
                    Ok::<_, AppError>(())
                })
                .await;
            assert!(matches!(out, Ok(Some(()))), "{out:?}");
            assert_eq!(live.live(), 0);
            settle_tasks(0).await;
        })
        .await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// N9. Drop mode wait: adoption by the nearest live enclosing nursery, else the orphans.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn n09_the_drop_returns_at_once_and_the_enclosing_nursery_adopts_and_waits() {
    common::leak_checked(async move {
        let live = LiveFutures::new();
        let tracker = live.clone();
        let observer = live.clone();
        let log = Log::default();
        let l = log.clone();
        let reports = Reports::default();
        let start = Instant::now();
        let out = Nursery::new()
            .name("outer")
            .on_report(reports.hook())
            .run(|outer| async move {
                let (tx, rx) = oneshot::channel();
                let inner =
                    Nursery::new()
                        .name("inner")
                        .run(|n: NurseryHandle<AppError>| async move {
                            let inner_id = n.scope().id();
                            for i in 1..=3u64 {
                                let l = l.clone();
                                n.spawn(tracker.track(async move {
                                    let c = cancelled().await;
                                    assert_eq!(c.scope(), inner_id);
                                    assert!(is_explicit(c.reason()));
                                    // Cleanup that is not a cancellation point: never interrupted.
                                    tokio::time::sleep(ms(10 * i)).await;
                                    l.push(format!("{i} cleaned up at {}", since(start)));
                                    Err::<(), _>(AppError::from(c))
                                }));
                            }
                            tx.send(n.clone()).unwrap();
                            sleep_forever().await
                        });
                assert!(tokio::time::timeout(ms(10), inner).await.is_err());
                assert_eq!(since(start), 10, "the drop returned at once");
                let n = rx.await.unwrap();
                assert!(!n.is_open());
                assert!(n.scope().is_cancelled());
                assert_eq!(n.live_children(), 3);
                assert_eq!(observer.live(), 3, "no child was dropped");
                assert_eq!(outer.live_children(), 1, "one adopted nursery");
                assert_eq!(orphan_count(), 0);
                let tree = TaskTree::of(&outer.scope()).to_string();
                assert!(tree.contains(", 1 adopted"), "{tree}");
                Ok::<_, AppError>(())
            })
            .await;
        assert!(matches!(out, Ok(Some(()))), "{out:?}");
        assert_eq!(
            since(start),
            40,
            "the adopter waited for the adopted children"
        );
        assert_eq!(
            log.events(),
            [
                "1 cleaned up at 20",
                "2 cleaned up at 30",
                "3 cleaned up at 40"
            ]
        );
        assert_eq!(live.live(), 0);
        assert_eq!(live.completed(), 3);
        assert_eq!(reports.seen(), [], "echoes are not failures");
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n09_adopted_children_keep_their_cancelled_scope_and_their_grace() {
    common::leak_checked(async move {
        let live = LiveFutures::new();
        let tracker = live.clone();
        let reports = Reports::default();
        let start = Instant::now();
        let (tx, rx) = oneshot::channel();
        let out = Nursery::new()
            .on_report(reports.hook())
            .run(|outer| async move {
                let inner =
                    Nursery::new()
                        .grace(ms(50))
                        .run(|n: NurseryHandle<Cancelled>| async move {
                            let polite = n.spawn(tracker.track(async {
                                let c = cancelled().await;
                                tokio::time::sleep(ms(20)).await;
                                assert!(
                                    is_cancelled(),
                                    "the adopted child's scope stays cancelled"
                                );
                                Err::<u32, _>(c)
                            }));
                            let stuck = n.spawn(tracker.track(stuck::<Cancelled>()));
                            tx.send((polite, stuck)).unwrap();
                            sleep_forever().await
                        });
                assert!(tokio::time::timeout(ms(10), inner).await.is_err());
                assert_eq!(outer.live_children(), 1);
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(
            since(start),
            60,
            "the grace (50 ms from the drop at 10) aborted the stuck child"
        );
        let (polite, stuck) = rx.await.unwrap();
        assert!(matches!(polite.await, Err(JoinError::ChildCancelled)));
        assert!(matches!(stuck.await, Err(JoinError::ChildAborted)));
        assert_eq!(live.live(), 0);
        assert_eq!(live.completed(), 1);
        assert_eq!(reports.seen(), [], "an abort is not a failure");
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n09_adopted_failures_and_panics_reach_the_adopters_report_hook_and_never_trigger_its_fail_fast()
 {
    common::leak_checked(async move {
        let reports = Reports::default();
        let start = Instant::now();
        let out = Nursery::new()
            .on_report(reports.hook())
            .run(|outer| async move {
                let sibling = outer.spawn(async {
                    sleep(ms(100)).await?; // a cancellation point: the outer must not cancel it
                    Ok::<_, AppError>(7)
                });
                let inner = nursery(|n: NurseryHandle<AppError>| async move {
                    // Fails before the drop: kept by the inner nursery, then handed over.
                    n.spawn_named("early", async {
                        sleep(ms(5)).await?;
                        Err::<(), _>(AppError::Boom(1))
                    });
                    // Fail after the drop, while adopted.
                    n.spawn_named("late", async {
                        let _ = cancelled().await;
                        tokio::time::sleep(ms(10)).await;
                        Err::<(), _>(AppError::Boom(2))
                    });
                    n.spawn_named("panicky", async {
                        let _ = cancelled().await;
                        tokio::time::sleep(ms(20)).await;
                        explode::<Result<(), AppError>>(Code(3))
                    });
                    sleep_forever().await
                });
                assert!(tokio::time::timeout(ms(10), inner).await.is_err());
                assert_eq!(sibling.await.unwrap(), 7);
                assert_eq!(since(start), 100);
                assert!(!outer.scope().is_cancelled());
                Ok::<_, AppError>(())
            })
            .await;
        assert!(matches!(out, Ok(Some(()))), "{out:?}");
        assert_eq!(
            reports.seen(),
            [
                Seen::Failure {
                    origin: "early".into(),
                    error: "Boom(1)".into(),
                    adopted: true
                },
                Seen::Failure {
                    origin: "late".into(),
                    error: "Boom(2)".into(),
                    adopted: true
                },
                Seen::Panic {
                    origin: "panicky".into(),
                    code: Some(3),
                    adopted: true
                },
            ]
        );
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n09_a_nursery_in_a_carried_task_is_adopted_by_the_carrying_nursery() {
    common::leak_checked(async move {
        let live = LiveFutures::new();
        let tracker = live.clone();
        let start = Instant::now();
        let out = nursery(|outer| async move {
            let task = tokio::spawn(carry_scope(async move {
                let inner = nursery(|n: NurseryHandle<Cancelled>| async move {
                    n.spawn(tracker.track(async {
                        let c = cancelled().await;
                        tokio::time::sleep(ms(20)).await;
                        Err::<(), _>(c)
                    }));
                    sleep_forever().await
                });
                assert!(tokio::time::timeout(ms(10), inner).await.is_err());
            }));
            task.await.unwrap();
            assert_eq!(outer.live_children(), 1);
            assert_eq!(orphan_count(), 0);
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(since(start), 30);
        assert_eq!(live.live(), 0);
        assert_eq!(live.completed(), 1);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n09_without_an_enclosing_nursery_the_children_are_orphans_counted_and_awaitable() {
    common::leak_checked(async move {
        let live = LiveFutures::new();
        let start = Instant::now();
        let out = nursery(|outer| {
            let tracker = live.clone();
            async move {
                // A plain tokio task runs outside every scope: no enclosing nursery.
                let task = tokio::spawn(async move {
                    for cleanup in [20, 30] {
                        let tracker = tracker.clone();
                        let inner = nursery(move |n: NurseryHandle<Cancelled>| async move {
                            n.spawn(tracker.track(async move {
                                let c = cancelled().await;
                                tokio::time::sleep(ms(cleanup)).await;
                                Err::<(), _>(c)
                            }));
                            sleep_forever().await
                        });
                        assert!(tokio::time::timeout(ms(5), inner).await.is_err());
                    }
                });
                task.await.unwrap();
                assert_eq!(since(start), 10);
                assert_eq!(
                    outer.live_children(),
                    0,
                    "the outer nursery adopted nothing"
                );
                Ok::<_, Cancelled>(())
            }
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(
            since(start),
            10,
            "the outer nursery did not wait for the orphans"
        );
        assert_eq!(orphan_count(), 2);
        assert_eq!(live.live(), 2, "the orphans run on");
        orphans_finished().await;
        assert_eq!(since(start), 40);
        assert_eq!(orphan_count(), 0);
        assert_eq!(live.live(), 0);
        assert_eq!(live.completed(), 2);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n09_a_handoff_to_a_closing_nursery_falls_through_to_the_next_ancestor() {
    common::leak_checked(async move {
        // grand { parent { inner { child } } }: dropping `parent` closes it, then drops its body,
        // and with it `inner`, whose child must go to `grand`, past the closing `parent`.
        let live = LiveFutures::new();
        let tracker = live.clone();
        let start = Instant::now();
        let out = Nursery::new()
            .name("grand")
            .run(|grand| async move {
                let (tx, rx) = oneshot::channel();
                let parent = Nursery::new().name("parent").run(
                    |_parent: NurseryHandle<Cancelled>| async move {
                        let inner = nursery(|n: NurseryHandle<Cancelled>| async move {
                            n.spawn(tracker.track(async {
                                let c = cancelled().await;
                                tokio::time::sleep(ms(20)).await;
                                Err::<(), _>(c)
                            }));
                            tx.send(n.clone()).unwrap();
                            sleep_forever().await
                        })
                        .await;
                        flat(inner).map(|_| ())
                    },
                );
                assert!(tokio::time::timeout(ms(10), parent).await.is_err());
                let inner = rx.await.unwrap();
                assert!(!inner.is_open());
                assert_eq!(inner.live_children(), 1);
                assert_eq!(grand.live_children(), 1, "grand adopted the inner nursery");
                assert_eq!(orphan_count(), 0);
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(since(start), 30);
        assert_eq!(live.live(), 0);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n09_a_nursery_dropped_in_an_adopted_child_is_adopted_by_the_next_live_ancestor() {
    common::leak_checked(async move {
        // grand { parent { child C: select!(inner { grandchild }, cancelled()) } }. Dropping
        // `parent` hands C to `grand`; C then sees the cancellation and drops `inner` (the taught
        // `select!` on `cancelled()` idiom). `parent` is closed, so `inner`'s grandchild must go to
        // the next live ancestor, `grand`, which waits for it: not to the orphan registry.
        let live = LiveFutures::new();
        let tracker = live.clone();
        let log = Log::default();
        let l = log.clone();
        let start = Instant::now();
        let out = Nursery::new()
            .name("grand")
            .run(|_grand| async move {
                let parent =
                    Nursery::new()
                        .name("parent")
                        .run(|p: NurseryHandle<Cancelled>| async move {
                            p.spawn(async move {
                                let inner = nursery(|n: NurseryHandle<Cancelled>| async move {
                                    n.spawn(tracker.track(async move {
                                        let c = cancelled().await;
                                        tokio::time::sleep(ms(20)).await;
                                        l.push(format!(
                                            "grandchild cleaned up at {}",
                                            since(start)
                                        ));
                                        Err::<(), _>(c)
                                    }));
                                    sleep_forever().await
                                });
                                tokio::select! {
                                    biased;
                                    c = cancelled() => Err::<(), _>(c),
                                    out = inner => flat(out).map(|_| ()),
                                }
                            });
                            sleep_forever().await
                        });
                assert!(tokio::time::timeout(ms(10), parent).await.is_err());
                settle().await;
                assert_eq!(
                    orphan_count(),
                    0,
                    "the grandchild was orphaned although `grand` is alive"
                );
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(since(start), 30, "grand waits for the grandchild");
        assert_eq!(log.events(), ["grandchild cleaned up at 30"]);
        assert_eq!(live.live(), 0);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n09_wait_drop_multi_thread() {
    common::leak_checked(async move {
        bounded(async {
            const N: usize = 4;
            let live = LiveFutures::new();
            let tracker = live.clone();
            let observer = live.clone();
            let seen = Arc::new(AtomicUsize::new(0));
            let (release_tx, release_rx) = watch::channel(false);
            let out = nursery(|outer| async move {
                let (tx, rx) = oneshot::channel();
                let counter = seen.clone();
                let inner = nursery(move |n: NurseryHandle<Cancelled>| async move {
                    for _ in 0..N {
                        let counter = counter.clone();
                        let mut release = release_rx.clone();
                        n.spawn(tracker.track(async move {
                            let c = cancelled().await;
                            counter.fetch_add(1, Ordering::SeqCst);
                            // Cleanup, not a cancellation point: waits for the test.
                            release.wait_for(|released| *released).await.unwrap();
                            Err::<(), _>(c)
                        }));
                    }
                    tx.send(n.clone()).unwrap();
                    sleep_forever().await
                });
                let n = tokio::select! {
                    biased;
                    out = inner => panic!("the inner nursery finished: {out:?}"),
                    n = rx => n.unwrap(),
                };
                // Dropped: every child is told, none is dropped, the outer nursery adopts them.
                assert!(!n.is_open());
                wait_until("every child saw the cancellation", || {
                    seen.load(Ordering::SeqCst) == N
                })
                .await;
                assert_eq!(observer.live(), N);
                assert_eq!(outer.live_children(), 1);
                assert_eq!(orphan_count(), 0);
                release_tx.send(true).unwrap();
                Ok::<_, Cancelled>(())
            })
            .await;
            assert_eq!(out.unwrap(), Some(()));
            assert_eq!(
                live.live(),
                0,
                "the outer nursery returned after the adopted children"
            );
            assert_eq!(live.completed(), N);
            settle_tasks(0).await;
        })
        .await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// N8. Drop mode abort: nothing is left unaccounted for.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn n08_aborted_children_are_accounted_for_until_tokio_drops_them() {
    common::leak_checked(async move {
        const N: usize = 3;
        let live = LiveFutures::new();
        let tracker = live.clone();
        let observer = live.clone();
        let start = Instant::now();
        let (tx, rx) = oneshot::channel();
        let out = nursery(|outer| async move {
            let inner = Nursery::new().drop_mode(DropMode::Abort).run(
                |n: NurseryHandle<Cancelled>| async move {
                    let handles: Vec<_> = (0..N)
                        .map(|_| n.spawn(tracker.track(stuck::<Cancelled>())))
                        .collect();
                    tx.send(handles).unwrap();
                    sleep_forever().await
                },
            );
            assert!(tokio::time::timeout(ms(10), inner).await.is_err());
            // Abort was requested; tokio drops the futures at their next scheduling. Until then
            // they are accounted for by the enclosing nursery.
            assert_eq!(observer.live(), N);
            assert_eq!(outer.live_children(), 1);
            settle().await;
            assert_eq!(observer.live(), 0);
            assert_eq!(outer.live_children(), 0);
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(since(start), 10);
        for handle in rx.await.unwrap() {
            assert!(matches!(handle.await, Err(JoinError::ChildAborted)));
        }
        assert_eq!(live.completed(), 0);

        // Without an enclosing nursery: the orphan registry counts them until they are dropped.
        let tracker = live.clone();
        let inner = Nursery::new().drop_mode(DropMode::Abort).run(
            |n: NurseryHandle<Cancelled>| async move {
                n.spawn(tracker.track(stuck::<Cancelled>()));
                sleep_forever().await
            },
        );
        assert!(tokio::time::timeout(ms(10), inner).await.is_err());
        assert_eq!(orphan_count(), 1);
        orphans_finished().await;
        assert_eq!(orphan_count(), 0);
        assert_eq!(live.live(), 0);
        assert_eq!(since(start), 20);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n08_an_abort_drop_cancels_blocking_children_and_they_are_adopted() {
    common::leak_checked(async move {
        bounded(async {
            let live = LiveFutures::new();
            let tracker = live.clone();
            let started = Arc::new(AtomicBool::new(false));
            let saw_cancel = Arc::new(AtomicBool::new(false));
            let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
            let (started2, saw_cancel2) = (started.clone(), saw_cancel.clone());
            let out = nursery(|outer| async move {
                let (tx, rx) = oneshot::channel();
                let inner = Nursery::new().drop_mode(DropMode::Abort).run(
                    move |n: NurseryHandle<Cancelled>| async move {
                        let blocking = n.spawn_blocking(move |ctx| {
                            started2.store(true, Ordering::SeqCst);
                            while !ctx.is_cancelled() {
                                std::thread::yield_now();
                            }
                            assert!(!ctx.grace_expired());
                            saw_cancel2.store(true, Ordering::SeqCst);
                            release_rx.recv().unwrap();
                            Ok(1)
                        });
                        let aborted = n.spawn(tracker.track(stuck::<Cancelled>()));
                        tx.send((blocking, aborted)).unwrap();
                        sleep_forever().await
                    },
                );
                let (blocking, aborted) = tokio::select! {
                    biased;
                    out = inner => panic!("the inner nursery finished: {out:?}"),
                    handles = async {
                        let handles = rx.await.unwrap();
                        wait_until("the blocking child started", || started.load(Ordering::SeqCst))
                            .await;
                        handles
                    } => handles,
                };
                // The async child is aborted; the blocking one is told and adopted.
                assert_eq!(outer.live_children(), 1);
                wait_until("the blocking child saw the cancellation", || {
                    saw_cancel.load(Ordering::SeqCst)
                })
                .await;
                live.wait_live(0).await;
                assert!(matches!(aborted.await, Err(JoinError::ChildAborted)));
                assert_eq!(
                    outer.live_children(),
                    1,
                    "the blocking child is still accounted for"
                );
                release_tx.send(()).unwrap();
                assert_eq!(
                    blocking.await.unwrap(),
                    1,
                    "a blocking child is never aborted"
                );
                wait_until("the adopted blocking child finished", || {
                    outer.live_children() == 0
                })
                .await;
                Ok::<_, Cancelled>(())
            })
            .await;
            assert_eq!(out.unwrap(), Some(()));
            settle_tasks(0).await;
        })
        .await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// N11. Concurrency limit.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn n11_spawn_never_waits_and_queued_children_start_as_slots_free() {
    common::leak_checked(async move {
        let start = Instant::now();
        let starts = Log::default();
        let s = starts.clone();
        let out = Nursery::new()
            .limit(2)
            .run(|n| async move {
                let handles: Vec<_> = (0..5u32)
                    .map(|i| {
                        let s = s.clone();
                        n.spawn(async move {
                            s.push(format!("{}", since(start)));
                            sleep(ms(10)).await?;
                            Ok::<_, Cancelled>(i)
                        })
                    })
                    .collect();
                assert_eq!(since(start), 0, "spawn never waits");
                assert_eq!(n.live_children(), 5, "queued children are the nursery's");
                for (i, handle) in handles.into_iter().enumerate() {
                    assert_eq!(handle.await.unwrap(), i as u32);
                }
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(since(start), 30);
        let mut times = starts.events();
        times.sort();
        assert_eq!(times, ["0", "0", "10", "10", "20"]);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n11_spawn_when_free_waits_for_a_slot_is_a_cancellation_point_and_cancel_safe() {
    common::leak_checked(async move {
        let live = LiveFutures::new();
        let start = Instant::now();
        let out = Nursery::new()
            .limit(1)
            .run(|n| {
                let live = live.clone();
                async move {
                    let holder = n.spawn(async {
                        tokio::time::sleep(ms(30)).await; // not a cancellation point
                        Ok::<_, Cancelled>(1)
                    });
                    // Dropped while waiting (a lost `select!`): nothing spawned.
                    let raced =
                        tokio::time::timeout(ms(5), n.spawn_when_free(live.track(async { Ok(2) })))
                            .await;
                    assert!(raced.is_err());
                    assert_eq!(since(start), 5);
                    assert_eq!(n.live_children(), 1);
                    assert_eq!((live.live(), live.completed()), (0, 0));

                    // From a plain task, outside every scope: waits until the slot frees.
                    let spawner = n.clone();
                    let tracker = live.clone();
                    let from_outside = tokio::spawn(async move {
                        let late = spawner
                            .spawn_when_free(tracker.track(async { Ok(3) }))
                            .await
                            .unwrap();
                        (since(start), late.await.unwrap())
                    });

                    // Cancelled while waiting: an error naming the cancelled scope (the
                    // nursery's, the body's own); nothing spawned.
                    let canceller = n.clone();
                    let _timer = at(start + ms(10), move || canceller.cancel());
                    match n.spawn_when_free(live.track(async { Ok(4) })).await {
                        Err(SpawnError::Cancelled(c)) => assert_eq!(c.scope(), n.scope().id()),
                        other => panic!("expected SpawnError::Cancelled, got {other:?}"),
                    }
                    assert_eq!(since(start), 10);
                    assert_eq!(n.live_children(), 1);
                    assert_eq!(live.completed(), 0);

                    assert_eq!(from_outside.await.unwrap(), (30, 3));
                    // The body is cancelled: watch the holder rather than join it.
                    assert!(holder.is_finished());
                    check_cancelled()
                }
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(since(start), 30);
        assert_eq!(live.live(), 0);
        assert_eq!(live.completed(), 1);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n11_spawn_when_free_in_a_scope_inside_the_body_waits_and_is_a_cancellation_point() {
    common::leak_checked(async move {
        // The body's own scopes are not children of the nursery: waiting there cannot deadlock.
        let start = Instant::now();
        let out = Nursery::new()
            .limit(1)
            .run(|n| async move {
                n.spawn(async {
                    tokio::time::sleep(ms(30)).await;
                    Ok::<_, Cancelled>(())
                });
                let caller = CancelScope::new();
                let caller_scope = caller.handle();
                let caller_id = caller_scope.id();
                let _timer = at(start + ms(10), move || caller_scope.cancel());
                let got = caller
                    .run(async {
                        match n.spawn_when_free(async { Ok(2) }).await {
                            Err(SpawnError::Cancelled(c)) => {
                                assert_eq!(c.scope(), caller_id);
                                Err::<(), _>(c)
                            }
                            other => {
                                panic!("expected SpawnError::Cancelled at 10 ms, got {other:?}")
                            }
                        }
                    })
                    .await;
                assert!(matches!(got, Ok(None)), "{got:?}");
                assert_eq!(since(start), 10);
                let waited = move_on_after(ms(100), async {
                    let spawned = match n.spawn_when_free(async { Ok(3) }).await {
                        Ok(spawned) => spawned,
                        Err(e) => panic!("expected a slot at 30 ms, got {e:?}"),
                    };
                    Ok::<_, Cancelled>((since(start), spawned))
                })
                .await
                .unwrap()
                .unwrap();
                assert_eq!(waited.0, 30);
                assert_eq!(waited.1.await.unwrap(), 3);
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n11_a_descendant_waiting_for_a_slot_of_its_own_full_nursery_gets_full() {
    common::leak_checked(async move {
        let start = Instant::now();
        let out = Nursery::new()
            .limit(1)
            .run(|n| async move {
                let own = n.clone();
                let child = n.spawn(async move {
                    // The child itself.
                    let r = own.spawn_when_free(async { Ok(()) }).await;
                    assert!(matches!(r, Err(SpawnError::Full)), "{r:?}");
                    // A child of a nursery inside the child.
                    let inner = nursery(|m: NurseryHandle<Cancelled>| {
                        let own = own.clone();
                        async move {
                            let grandchild = m.spawn(async move {
                                let r = own.spawn_when_free(async { Ok(()) }).await;
                                assert!(matches!(r, Err(SpawnError::Full)), "{r:?}");
                                Ok::<_, Cancelled>(())
                            });
                            grandchild.await.unwrap();
                            Ok(())
                        }
                    })
                    .await;
                    flat(inner)?;
                    // `spawn` queues the new child without waiting.
                    let queued = own.spawn(async move { Ok::<_, Cancelled>(since(start)) });
                    Ok::<_, Cancelled>(queued)
                });
                let queued = child.await.unwrap();
                assert_eq!(
                    queued.await.unwrap(),
                    0,
                    "queued, it ran once the slot was free"
                );
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));

        // With a free slot, a child gets it at once.
        let out = Nursery::new()
            .limit(2)
            .run(|n| async move {
                let own = n.clone();
                let child = n.spawn(async move {
                    let spawned = own.spawn_when_free(async { Ok(5) }).await.unwrap();
                    spawned.await.map_err(|e| panic!("{e}"))
                });
                assert_eq!(child.await.unwrap(), 5);
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n11_a_queued_child_cancelled_before_it_runs_never_runs() {
    common::leak_checked(async move {
        let live = LiveFutures::new();
        let start = Instant::now();
        let out = Nursery::new()
            .limit(1)
            .run(|n| {
                let live = live.clone();
                async move {
                    let holder = n.spawn(async {
                        tokio::time::sleep(ms(30)).await; // not a cancellation point
                        Ok::<_, Cancelled>(())
                    });
                    let queued = n.spawn(live.track(async { Ok(()) }));
                    queued.cancel();
                    assert!(matches!(queued.await, Err(JoinError::ChildCancelled)));
                    assert_eq!(since(start), 0);
                    // The nursery's cancellation reaches queued children too.
                    let queued = n.spawn(live.track(async { Ok(()) }));
                    tokio::time::sleep(ms(5)).await;
                    n.cancel();
                    // Joining is a cancellation point of the (cancelled) body: watch instead.
                    wait_until("the queued child ended", || queued.is_finished()).await;
                    assert_eq!(since(start), 5);
                    let joined = tokio::spawn(queued).await.unwrap();
                    assert!(
                        matches!(joined, Err(JoinError::ChildCancelled)),
                        "{joined:?}"
                    );
                    drop(holder);
                    check_cancelled()
                }
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(since(start), 30);
        assert_eq!(live.live(), 0);
        assert_eq!(live.completed(), 0, "no queued child ever ran");
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n11_at_most_k_children_run_at_once_multi_thread() {
    common::leak_checked(async move {
        bounded(async {
            const K: usize = 3;
            const N: usize = 200;
            let running = Arc::new(AtomicUsize::new(0));
            let peak = Arc::new(AtomicUsize::new(0));
            let live = LiveFutures::new();
            let tracker = live.clone();
            let (r, p) = (running.clone(), peak.clone());
            let out = Nursery::new()
                .limit(K)
                .run(|n| async move {
                    for i in 0..N {
                        let (r, p) = (r.clone(), p.clone());
                        let child = tracker.track(async move {
                            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                            p.fetch_max(now, Ordering::SeqCst);
                            for _ in 0..3 {
                                tokio::task::yield_now().await;
                            }
                            r.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, Cancelled>(())
                        });
                        if i % 2 == 0 {
                            drop(n.spawn(child));
                        } else {
                            drop(n.spawn_when_free(child).await.unwrap());
                        }
                    }
                    Ok::<_, Cancelled>(())
                })
                .await;
            assert_eq!(out.unwrap(), Some(()));
            assert!(
                peak.load(Ordering::SeqCst) <= K,
                "peak {}",
                peak.load(Ordering::SeqCst)
            );
            assert_eq!(live.completed(), N);
            assert_eq!(live.live(), 0);
            settle_tasks(0).await;
        })
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n11_blocking_children_count_against_the_limit() {
    common::leak_checked(async move {
        bounded(async {
            let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
            let out = Nursery::new()
                .limit(1)
                .run(|n| async move {
                    let blocking = n.spawn_blocking(move |_ctx| {
                        release_rx.recv().unwrap();
                        Ok::<_, Cancelled>(1)
                    });
                    // The only slot is held by the running blocking child.
                    let second = n.try_spawn(async { Ok::<_, Cancelled>(2) });
                    release_tx.send(()).unwrap();
                    assert_eq!(blocking.await.unwrap(), 1);
                    assert!(
                        matches!(second, Err(SpawnError::Full)),
                        "two children ran at once in a nursery limited to one: {second:?}"
                    );
                    Ok::<_, Cancelled>(())
                })
                .await;
            assert_eq!(out.unwrap(), Some(()));
        })
        .await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// N13. The root.
// ---------------------------------------------------------------------------------------------

#[test]
fn n13_the_root_cancels_with_shutdown_when_main_returns_waits_the_grace_then_aborts() {
    // No leak check (SPEC R3): the root owns and shuts down its runtime; nothing to count after.
    let live = LiveFutures::new();
    let tracker = live.clone();
    let log = Log::default();
    let l = log.clone();
    let (late_tx, late_rx) = std::sync::mpsc::channel();
    let out = within_hang_bound(move || {
        Root::new()
            .current_thread()
            .handle_signals(false)
            .grace(ms(100))
            .run(|n| async move {
                late_tx.send(pause_and_measure_lateness().await).unwrap();
                let start = Instant::now();
                let polite = l.clone();
                n.spawn_named("polite", async move {
                    let c = cancelled().await;
                    polite.push(format!(
                        "polite cancelled at {} ({:?})",
                        since(start),
                        c.reason()
                    ));
                    tokio::time::sleep(ms(30)).await;
                    polite.push(format!("polite done at {}", since(start)));
                    Err::<(), _>(c)
                });
                let dropped = l.clone();
                n.spawn_named(
                    "stuck",
                    tracker.track(async move {
                        let _on_drop = OnDrop(Some(move || {
                            dropped.push(format!("stuck dropped at {}", since(start)))
                        }));
                        stuck::<Cancelled>().await
                    }),
                );
                tokio::time::sleep(ms(10)).await;
                l.push(format!("main returns at {}", since(start)));
                Ok::<_, Cancelled>(5)
            })
    });
    assert_eq!(out.unwrap(), Some(5));
    // Each timer fires `late` ms after its deadline (see `pause_and_measure_lateness`).
    let late = late_rx.recv().unwrap();
    assert_eq!(
        log.events(),
        [
            format!("main returns at {}", 10 + late),
            format!("polite cancelled at {} (Shutdown)", 10 + late),
            format!("polite done at {}", 40 + 2 * late),
            format!("stuck dropped at {}", 110 + 2 * late),
        ]
    );
    assert_eq!(live.live(), 0);
    assert_eq!(live.completed(), 0);
}

#[test]
fn n13_the_root_waits_for_orphans_within_its_grace() {
    // No leak check (SPEC R3): the root owns and shuts down its runtime; nothing to count after.
    let log = Log::default();
    let l = log.clone();
    let (late_tx, late_rx) = std::sync::mpsc::channel();
    let out = within_hang_bound(move || {
        Root::new()
            .current_thread()
            .handle_signals(false)
            .grace(ms(100))
            .run(|_n| async move {
                late_tx.send(pause_and_measure_lateness().await).unwrap();
                let start = Instant::now();
                let orphan = l.clone();
                // A plain task, outside every scope: its dropped nursery has no adopter.
                tokio::spawn(async move {
                    let inner = nursery(|m: NurseryHandle<Cancelled>| async move {
                        m.spawn(async move {
                            let c = cancelled().await;
                            tokio::time::sleep(ms(30)).await;
                            orphan.push(format!("orphan done at {}", since(start)));
                            Err::<(), _>(c)
                        });
                        sleep_forever().await
                    });
                    assert!(tokio::time::timeout(ms(5), inner).await.is_err());
                });
                tokio::time::sleep(ms(10)).await;
                l.push(format!("orphans at {}: {}", since(start), orphan_count()));
                Ok::<_, Cancelled>(())
            })
    });
    assert_eq!(out.unwrap(), Some(()));
    let late = late_rx.recv().unwrap();
    assert_eq!(
        log.events(),
        [
            format!("orphans at {}: 1", 10 + late),
            format!("orphan done at {}", 35 + 2 * late),
        ]
    );
}

/// N13 with C1: when main returns, the root cancels everything, aborts what outlives the
/// grace, but waits for protected work until that work ends by itself.
#[test]
fn n13_the_root_waits_for_protected_work_past_its_grace() {
    // No leak check (SPEC R3): the root owns and shuts down its runtime; nothing to count after.
    let log = Log::default();
    let l = log.clone();
    let out = within_hang_bound(move || {
        Root::new()
            .current_thread()
            .handle_signals(false)
            .grace(ms(100))
            .run(|n| async move {
                tokio::time::pause();
                let dropped = l.clone();
                n.spawn_named("stuck", async move {
                    let _on_drop = OnDrop(Some(move || dropped.push("stuck dropped")));
                    stuck::<Cancelled>().await
                });
                let finished = l.clone();
                drop(tokio_nursery::protect(async move {
                    tokio::time::sleep(ms(300)).await; // past the grace: its own end
                    finished.push("protected work done");
                }));
                l.push("main returns");
                Ok::<_, Cancelled>(7)
            })
    });
    assert_eq!(out.unwrap(), Some(7));
    assert_eq!(
        log.events(),
        ["main returns", "stuck dropped", "protected work done"],
        "the root returned only after the protected work ended"
    );
}

#[cfg(feature = "rt-multi-thread")]
#[test]
fn n13_the_root_on_a_multi_thread_runtime() {
    // No leak check (SPEC R3): the root owns and shuts down its runtime; nothing to count after.
    const N: usize = 8;
    let (tx, rx) = std::sync::mpsc::channel();
    let out = within_hang_bound(move || {
        Root::new().handle_signals(false).run(|n| async move {
            assert_eq!(
                tokio::runtime::Handle::current().runtime_flavor(),
                tokio::runtime::RuntimeFlavor::MultiThread
            );
            for _ in 0..N {
                let tx = tx.clone();
                n.spawn(async move {
                    let c = cancelled().await;
                    tx.send(c.reason().clone()).unwrap();
                    Err::<(), _>(c)
                });
            }
            Ok::<_, Cancelled>("main done")
        })
    });
    assert_eq!(out.unwrap(), Some("main done"));
    let reasons: Vec<CancelReason> = rx.iter().collect();
    assert_eq!(reasons.len(), N);
    assert!(
        reasons.iter().all(|r| matches!(r, CancelReason::Shutdown)),
        "{reasons:?}"
    );
}

#[test]
fn n13_the_root_returns_failures_and_resumes_panics() {
    // No leak check (SPEC R3): the root owns and shuts down its runtime; nothing to count after.
    let out = within_hang_bound(|| {
        Root::new()
            .current_thread()
            .handle_signals(false)
            .run(|n| async move {
                n.spawn(async { Err::<(), _>(AppError::Boom(1)) });
                sleep_forever::<AppError>().await
            })
    });
    assert_eq!(booms(&failed(out)), [1]);

    let out = within_hang_bound(|| {
        std::panic::catch_unwind(|| {
            Root::new()
                .current_thread()
                .handle_signals(false)
                .run(|n| async move {
                    n.spawn(async { explode::<Result<(), Cancelled>>(Code(2)) });
                    sleep_forever::<Cancelled>().await
                })
        })
    });
    let payload = out.expect_err("the panic is resumed");
    assert_eq!(code(&*payload), Some(2));
}

#[test]
fn n13_the_root_shuts_the_runtime_down_with_a_bound() {
    // No leak check (SPEC R3): the root owns and shuts down its runtime; nothing to count after.
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let out = within_hang_bound(move || {
        Root::new()
            .current_thread()
            .handle_signals(false)
            .shutdown_bound(Duration::ZERO)
            .run(|_n| async move {
                // Outside every nursery, and stuck: the root does not wait for it for ever.
                drop(tokio::task::spawn_blocking(move || {
                    let _ = release_rx.recv();
                }));
                Ok::<_, Cancelled>(1)
            })
    });
    assert_eq!(out.unwrap(), Some(1));
    release_tx.send(()).unwrap();
}

/// Pauses the clock of a runtime that is already running (the root builds its own, so it
/// cannot start paused) and returns how late its timers fire, 0 or 1 ms: `now` then sits
/// between two ticks of tokio's millisecond timer wheel, auto-advance keeps that offset, and so
/// every timer fires on the tick after its deadline. Measured with a probe timer.
async fn pause_and_measure_lateness() -> u128 {
    tokio::time::pause();
    let probe = Instant::now();
    tokio::time::sleep(ms(1)).await;
    since(probe) - 1
}

#[cfg(all(unix, feature = "signal"))]
use common::nursery::signal_self;

#[cfg(all(unix, feature = "signal"))]
#[test]
fn n13_sigterm_starts_the_shutdown_and_a_second_signal_aborts_what_is_left() {
    // No leak check (SPEC R3): the root owns and shuts down its runtime; nothing to count after.
    let live = LiveFutures::new();
    let tracker = live.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let (id_tx, id_rx) = std::sync::mpsc::channel();
    let reports = Log::default();
    let r = reports.clone();
    let out = within_hang_bound(move || {
        Root::new()
            .current_thread()
            .handle_signals(true)
            .grace(HOUR)
            .on_report(move |report| r.push(report.to_string()))
            .run(|n| async move {
                id_tx.send(n.scope().id()).unwrap();
                n.spawn_named("polite", async move {
                    let c = cancelled().await;
                    tx.send(c.reason().clone()).unwrap();
                    Err::<(), _>(c)
                });
                // Ignores the cancellation; the grace is an hour: only an abort ends it.
                n.spawn_named("stubborn", tracker.track(stuck::<Cancelled>()));
                // Protected work never ends by itself: the second signal abandons it.
                drop(tokio_nursery::protect(std::future::pending::<()>()));
                // Let the root install its signal handlers (it listens once the body waits).
                tokio::task::yield_now().await;
                signal_self("TERM");
                let c = cancelled().await;
                assert!(matches!(c.reason(), CancelReason::Shutdown), "{c:?}");
                assert_eq!(c.scope(), n.scope().id());
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                signal_self("INT");
                Err::<(), _>(c)
            })
    });
    // The second signal stopped the waiting: the root reports the shutdown as its outcome,
    // naming what it aborted, and reports the abort to its hook.
    match out {
        Err(NurseryError::Cancelled(c)) => {
            assert!(matches!(c.reason(), CancelReason::Shutdown), "{c:?}");
            let root = id_rx.recv().unwrap();
            assert_eq!(c.scope(), root);
            assert_eq!(c.aborted_children().len(), 1, "{c:?}");
            assert!(c.aborted_children()[0].starts_with("\"stubborn\""), "{c:?}");
            let events = reports.events();
            assert_eq!(events.len(), 1, "{events:?}");
            // The report, then the tree taken before the second signal aborted anything.
            let (report, tree) = events[0]
                .split_once("; the task tree then:\n")
                .expect("the report carries the tree");
            assert_eq!(
                report,
                format!(
                    "the root's shutdown was cut short: a shutdown signal came during the shutdown; \
                     aborted: \
                     {}; 1 adopted nurseries or protected works still running are dropped with \
                     the runtime",
                    c.aborted_children()[0]
                )
            );
            let lines: Vec<&str> = tree.lines().map(str::trim_start).collect();
            assert_eq!(lines.len(), 3, "{tree}");
            assert!(lines[0].starts_with("nursery \"root\""), "{tree}");
            assert!(lines[1].starts_with("child \"stubborn\""), "{tree}");
            assert!(lines[2].starts_with("protected work ("), "{tree}");
        }
        other => panic!("expected the shutdown as the outcome, got {other:?}"),
    }
    assert!(matches!(rx.recv().unwrap(), CancelReason::Shutdown));
    assert_eq!(live.live(), 0);
    assert_eq!(live.completed(), 0, "the stubborn child was aborted");
}

// ---------------------------------------------------------------------------------------------
// N14. Flat memory.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n14_a_hundred_thousand_short_children_pass_through_one_nursery() {
    common::leak_checked(async move {
        bounded(async {
            const N: usize = 100_000;
            let live = LiveFutures::new();
            let tracker = live.clone();
            let out = nursery(|n| async move {
                for i in 0..N {
                    drop(n.spawn(tracker.track(async move { Ok::<_, Cancelled>(i) })));
                    if i % 1000 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                wait_until("every child finished", || n.live_children() == 0).await;
                // A finished child whose handle was dropped keeps nothing: no scope, no slot.
                let tree = TaskTree::of(&n.scope());
                assert_eq!(tree.entries().len(), 1, "{tree}");
                assert_eq!(
                    tree.entries()[0].detail.as_deref(),
                    Some("running, the body")
                );
                Ok::<_, Cancelled>(())
            })
            .await;
            assert_eq!(out.unwrap(), Some(()));
            assert_eq!(live.created(), N);
            assert_eq!(live.completed(), N);
            assert_eq!(live.live(), 0);
            settle_tasks(0).await;
        })
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n14_a_supervisor_keeps_nothing_once_its_outlet_is_drained() {
    common::leak_checked(async move {
        bounded(async {
            const N: u32 = 10_000;
            let out = Nursery::new()
                .supervisor()
                .run(|n| async move {
                    let spawner = n.clone();
                    n.spawn(async move {
                        for i in 0..N {
                            drop(spawner.spawn(async move { Err::<(), _>(AppError::Boom(i)) }));
                            if i % 500 == 0 {
                                tokio::task::yield_now().await;
                            }
                        }
                        Ok::<_, AppError>(())
                    });
                    let mut taken = 0;
                    while let Some(incident) = n.next_incident().await {
                        assert!(matches!(incident, Incident::Failed(_)));
                        taken += 1;
                    }
                    assert_eq!(taken, N);
                    let tree = TaskTree::of(&n.scope());
                    assert_eq!(tree.entries().len(), 1, "{tree}");
                    assert_eq!(
                        tree.entries()[0].detail.as_deref(),
                        Some("running, the body")
                    );
                    Ok::<_, AppError>(())
                })
                .await;
            assert!(matches!(out, Ok(Some(()))), "nothing left to return");
            settle_tasks(0).await;
        })
        .await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n14_a_fail_fast_nursery_keeps_only_the_failures() {
    common::leak_checked(async move {
        let out = nursery(|n| async move {
            for i in 0..1000u32 {
                drop(n.spawn(async move {
                    if i % 100 == 0 {
                        Err(AppError::Boom(i))
                    } else {
                        Ok(i)
                    }
                }));
            }
            settle().await;
            wait_until("every child finished", || n.live_children() == 0).await;
            let tree = TaskTree::of(&n.scope());
            assert_eq!(tree.entries().len(), 1, "{tree}");
            let detail = tree.entries()[0].detail.clone().unwrap();
            assert!(detail.ends_with("10 failures not yet reported"), "{detail}");
            check_cancelled().map_err(AppError::from)
        })
        .await;
        let mut numbers = booms(&failed(out));
        numbers.sort_unstable();
        assert_eq!(numbers, (0..1000).step_by(100).collect::<Vec<_>>());
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// N15. Collecting nurseries (JoinSet parity).
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn n15_outcomes_come_in_completion_order_with_ids_and_names() {
    common::leak_checked(async move {
        let start = Instant::now();
        let out = nursery(|n| async move {
            let mut set = n.collector::<u32>();
            assert!(set.join_next().await.is_none(), "empty: None at once");
            let thirty = set.spawn_named("thirty", async {
                sleep(ms(30)).await?;
                Ok::<_, Cancelled>(30)
            });
            let ten = set.spawn(async {
                sleep(ms(10)).await?;
                Ok(10)
            });
            let twenty = set.spawn(async {
                sleep(ms(20)).await?;
                Ok(20)
            });
            assert_eq!(thirty.name(), Some("thirty"));
            assert_eq!(ten.name(), None);
            let ids: HashSet<_> = [thirty.id(), ten.id(), twenty.id()].into_iter().collect();
            assert_eq!(ids.len(), 3);
            assert_eq!(set.len(), 3);
            assert!(!set.is_empty());
            assert!(set.try_join_next().is_none());

            let (id, outcome) = set.join_next().await.unwrap();
            assert_eq!((id, outcome.unwrap(), since(start)), (ten.id(), 10, 10));
            assert_eq!(set.len(), 2);
            let (id, outcome) = set.join_next().await.unwrap();
            assert_eq!((id, outcome.unwrap(), since(start)), (twenty.id(), 20, 20));

            // An outcome stays queued until taken.
            tokio::time::sleep(ms(15)).await;
            assert_eq!(set.len(), 1);
            let (id, outcome) = set.try_join_next().unwrap();
            assert_eq!((id, outcome.unwrap()), (thirty.id(), 30));
            assert!(set.is_empty());
            assert!(set.join_next().await.is_none());
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n15_cancel_all_abort_and_cancel_are_not_failures() {
    common::leak_checked(async move {
        let live = LiveFutures::new();
        let tracker = live.clone();
        let start = Instant::now();
        let out = nursery(|n| async move {
            let mut set = n.collector::<u32>();
            let done = set.spawn(async {
                sleep(ms(10)).await?;
                Ok::<_, Cancelled>(1)
            });
            let polite = set.spawn(async {
                let c = cancelled().await;
                Err(c)
            });
            let finishes = set.spawn(async {
                let _ = cancelled().await;
                tokio::time::sleep(ms(5)).await;
                Ok(4) // finishes with a value anyway
            });
            let stuck_one = set.spawn(tracker.track(async {
                stuck::<Cancelled>().await?;
                Ok(0)
            }));
            let (id, outcome) = set.join_next().await.unwrap();
            assert_eq!((id, outcome.unwrap()), (done.id(), 1));
            set.cancel_all();
            let (id, outcome) = set.join_next().await.unwrap();
            assert_eq!(id, polite.id());
            assert!(
                matches!(outcome, Err(JoinError::ChildCancelled)),
                "{outcome:?}"
            );
            stuck_one.abort();
            let (id, outcome) = set.join_next().await.unwrap();
            assert_eq!(id, stuck_one.id());
            assert!(
                matches!(outcome, Err(JoinError::ChildAborted)),
                "{outcome:?}"
            );
            assert_eq!(since(start), 10);
            let (id, outcome) = set.join_next().await.unwrap();
            assert_eq!((id, outcome.unwrap(), since(start)), (finishes.id(), 4, 15));
            assert!(set.join_next().await.is_none());

            // Cancelling one child alone; abort_all on the rest.
            let one = set.spawn(async {
                let c = cancelled().await;
                Err(c)
            });
            for _ in 0..3 {
                set.spawn(tracker.track(async {
                    stuck::<Cancelled>().await?;
                    Ok(0)
                }));
            }
            one.cancel();
            let (id, outcome) = set.join_next().await.unwrap();
            assert_eq!(id, one.id());
            assert!(matches!(outcome, Err(JoinError::ChildCancelled)));
            set.abort_all();
            for _ in 0..3 {
                let (_, outcome) = set.join_next().await.unwrap();
                assert!(
                    matches!(outcome, Err(JoinError::ChildAborted)),
                    "{outcome:?}"
                );
            }
            assert!(set.join_next().await.is_none());
            assert!(!n.scope().is_cancelled(), "none of this is a failure");
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(live.live(), 0);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n15_a_collected_childs_failure_and_panic_are_the_nurserys() {
    common::leak_checked(async move {
        let start = Instant::now();
        let out = nursery(|n| async move {
            let mut set = n.collector::<u32>();
            let failing = set.spawn(async {
                sleep(ms(10)).await?;
                Err(AppError::Boom(1))
            });
            let sibling = set.spawn(async {
                let c = cancelled().await;
                assert!(matches!(c.reason(), CancelReason::SiblingFailed));
                Err(c.into())
            });
            // Read in a shield: the failure cancelled this body, and a cancelled waiter gets
            // its own cancellation instead of a marker (next test).
            let (id, outcome) = common::nursery::shielded(set.join_next()).await.unwrap();
            assert_eq!(id, failing.id());
            assert!(
                matches!(outcome, Err(JoinError::ChildFailed)),
                "{outcome:?}"
            );
            let (id, outcome) = common::nursery::shielded(set.join_next()).await.unwrap();
            assert_eq!(id, sibling.id());
            assert!(
                matches!(outcome, Err(JoinError::ChildCancelled)),
                "{outcome:?}"
            );
            check_cancelled().map_err(AppError::from)
        })
        .await;
        assert_eq!(booms(&failed(out)), [1]);
        assert_eq!(since(start), 10);

        let out = catch(nursery(|n| async move {
            let mut set = n.collector::<u32>();
            let panicking = set.spawn(async { explode::<Result<u32, Cancelled>>(Code(5)) });
            let (id, outcome) = set.join_next().await.unwrap();
            assert_eq!(id, panicking.id());
            assert!(
                matches!(outcome, Err(JoinError::ChildPanicked)),
                "{outcome:?}"
            );
            Ok::<_, Cancelled>(())
        }))
        .await;
        assert_eq!(
            code(&*out.expect_err("the nursery resumes the panic")),
            Some(5)
        );
        settle_tasks(0).await;
    })
    .await
}

/// The same failure, its outcomes taken where the body's scope is cancelled (session 21):
/// each comes as the body's own cancellation, so `outcome?` passes it on and the nursery
/// reports the one failure (it reported the body's "the child failed" too).
#[tokio::test(start_paused = true)]
async fn n15_a_cancelled_body_gets_its_own_cancellation_for_a_collected_end_without_value() {
    common::leak_checked(async move {
        let out = nursery(|n| async move {
            let mut set = n.collector::<u32>();
            set.spawn(async {
                sleep(ms(10)).await?;
                Err(AppError::Boom(1))
            });
            set.spawn(async { Ok(7) });
            let mut values = Vec::new();
            let mut cancellations = Vec::new();
            while let Some((_, outcome)) = set.join_next().await {
                match outcome {
                    Ok(value) => values.push(value),
                    Err(JoinError::Cancelled(c)) => cancellations.push(c.reason().clone()),
                    Err(marker) => panic!("a marker in a cancelled body: {marker:?}"),
                }
            }
            assert_eq!(values, [7], "a value still comes");
            assert_eq!(cancellations.len(), 1);
            assert!(matches!(cancellations[0], CancelReason::SiblingFailed));
            Err::<(), _>(AppError::from(check_cancelled().unwrap_err()))
        })
        .await;
        assert_eq!(booms(&failed(out)), [1], "the child's failure alone");
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n15_join_next_is_cancel_safe_and_a_closed_nursery_refuses_new_children() {
    common::leak_checked(async move {
        let start = Instant::now();
        let out = nursery(|n| async move {
            let mut set = n.collector::<u32>();
            set.spawn(async {
                sleep(ms(10)).await?;
                Ok::<_, Cancelled>(10)
            });
            assert!(tokio::time::timeout(ms(5), set.join_next()).await.is_err());
            let (_, outcome) = set.join_next().await.unwrap();
            assert_eq!((outcome.unwrap(), since(start)), (10, 10));
            Ok::<_, Cancelled>(set)
        })
        .await;
        let set = out.unwrap().unwrap();
        assert!(matches!(
            set.try_spawn(async { Ok(1) }),
            Err(SpawnError::Closed)
        ));
        let panicked = std::panic::catch_unwind(AssertUnwindSafe(|| {
            set.spawn(async { Ok(1) });
        }))
        .expect_err("spawning into a closed nursery panics");
        let message = panic_message(&*panicked).unwrap_or_default().to_string();
        assert!(message.contains("closed"), "{message}");
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n15_collector_multi_thread() {
    common::leak_checked(async move {
        bounded(async {
            const N: u64 = 1000;
            let live = LiveFutures::new();
            let tracker = live.clone();
            let out = nursery(|n| async move {
                let mut set = n.collector::<u64>();
                let mut spawned = HashSet::new();
                for i in 0..N {
                    let control = set.spawn(tracker.track(async move {
                        tokio::task::yield_now().await;
                        Ok::<_, Cancelled>(i)
                    }));
                    spawned.insert(control.id());
                }
                let (mut sum, mut joined) = (0, HashSet::new());
                while let Some((id, outcome)) = set.join_next().await {
                    sum += outcome.unwrap();
                    assert!(joined.insert(id), "an outcome came twice");
                }
                assert_eq!(joined, spawned);
                Ok::<_, Cancelled>(sum)
            })
            .await;
            assert_eq!(out.unwrap(), Some(N * (N - 1) / 2));
            assert_eq!(live.live(), 0);
            settle_tasks(0).await;
        })
        .await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n14_a_collecting_nursery_keeps_outcomes_until_taken() {
    common::leak_checked(async move {
        const N: usize = 1000;
        let out = nursery(|n| async move {
            let mut set = n.collector::<usize>();
            for i in 0..N {
                set.spawn(async move { Ok::<_, Cancelled>(i) });
            }
            wait_until("every child finished", || n.live_children() == 0).await;
            assert_eq!(set.len(), N, "the outcomes are kept");
            let mut taken = 0;
            while let Some((_, outcome)) = set.try_join_next() {
                outcome.unwrap();
                taken += 1;
            }
            assert_eq!(taken, N);
            assert!(set.is_empty());
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// N16. Blocking children.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n16_a_named_blocking_child_is_named_by_its_handle_the_tree_and_its_failure() {
    common::leak_checked(async move {
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let out = Nursery::new()
            .run(|n: NurseryHandle<AppError>| async move {
                let (ready_tx, ready_rx) = oneshot::channel();
                let child = n.spawn_blocking_named("crunch", move |_ctx| {
                    ready_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    Err::<(), _>(AppError::Boom(7))
                });
                assert_eq!(child.name(), Some("crunch"));
                ready_rx.await.unwrap();
                let tree = TaskTree::of(&n.scope());
                let entry = tree
                    .entries()
                    .iter()
                    .find(|e| e.kind == "blocking child")
                    .unwrap_or_else(|| panic!("no blocking child in the tree:\n{tree}"));
                assert_eq!(entry.name.as_deref(), Some("crunch"), "{tree}");
                assert!(tree.to_string().contains("\"crunch\""), "{tree}");
                release_tx.send(()).unwrap();
                // The failure cancels the nursery, so awaiting the handle here could report
                // that instead: the nursery waits for the child.
                drop(child);
                Ok::<_, AppError>(())
            })
            .await;
        let failures = failed(out);
        assert_eq!(booms(&failures), [7]);
        match failures[0].origin() {
            Origin::Child { name, .. } => assert_eq!(name.as_deref(), Some("crunch")),
            other => panic!("expected the child as the origin, got {other:?}"),
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n16_a_blocking_child_sees_its_nurserys_deadline_through_its_context() {
    common::leak_checked(async move {
        let start = Instant::now();
        let (report_tx, report_rx) = std::sync::mpsc::channel();
        let out = Nursery::new()
            .deadline(start + ms(50))
            .run(|n| async move {
                let nursery_id = n.scope().id();
                let (ready_tx, ready_rx) = std::sync::mpsc::channel();
                let child = n.spawn_blocking(move |ctx| {
                    assert_eq!(ctx.deadline(), EffectiveDeadline::At(start + ms(50)));
                    assert_eq!(current_deadline(), EffectiveDeadline::At(start + ms(50)));
                    assert_eq!(current_scope().unwrap().id(), ctx.scope().id());
                    assert!(!ctx.is_cancelled() && !is_cancelled());
                    ctx.check()?;
                    ready_tx.send(()).unwrap();
                    while !ctx.is_cancelled() {
                        std::thread::yield_now();
                    }
                    assert_eq!(ctx.deadline(), EffectiveDeadline::Passed);
                    let c = ctx.check().unwrap_err();
                    assert_eq!(c.scope(), nursery_id);
                    assert!(c.reason().is_deadline());
                    assert!(!ctx.grace_expired());
                    report_tx.send("saw the deadline").unwrap();
                    Err::<u32, _>(c)
                });
                wait_until("the blocking child is ready", || {
                    ready_rx.try_recv().is_ok()
                })
                .await;
                // The paused clock does not auto-advance while a blocking task runs.
                tokio::time::advance(ms(50)).await;
                wait_until("the deadline fired", || n.scope().is_cancelled()).await;
                assert_eq!(since(start), 50);
                // Joining is a cancellation point of the (cancelled) body: join from outside.
                let joined = tokio::spawn(child);
                let body = check_cancelled();
                Ok::<_, Cancelled>((body, joined))
            })
            .await;
        let (body, joined) = out.unwrap().unwrap();
        assert!(body.is_err());
        assert!(matches!(
            joined.await.unwrap(),
            Err(JoinError::ChildCancelled)
        ));
        assert_eq!(report_rx.recv().unwrap(), "saw the deadline");
        assert_eq!(since(start), 50);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n16_grace_expiry_tells_a_blocking_child_which_is_never_aborted() {
    common::leak_checked(async move {
        let live = LiveFutures::new();
        let tracker = live.clone();
        let start = Instant::now();
        let (tx, rx) = oneshot::channel();
        let out = Nursery::new()
            .grace(ms(20))
            .run(|n| async move {
                let (ready_tx, ready_rx) = std::sync::mpsc::channel();
                let saw_cancel = Arc::new(AtomicBool::new(false));
                let saw = saw_cancel.clone();
                let blocking = n.spawn_blocking(move |ctx| {
                    ready_tx.send(()).unwrap();
                    while !ctx.is_cancelled() {
                        std::thread::yield_now();
                    }
                    assert!(!ctx.grace_expired());
                    saw.store(true, Ordering::SeqCst);
                    // Cancelled: keeps working past the grace period, then returns a value.
                    while !ctx.grace_expired() {
                        std::thread::yield_now();
                    }
                    assert!(matches!(
                        ctx.scope().reason(),
                        Some(CancelReason::GraceExpired)
                    ));
                    Ok::<_, Cancelled>(7)
                });
                let stuck_async = n.spawn(tracker.track(stuck::<Cancelled>()));
                tx.send((blocking, stuck_async)).unwrap();
                wait_until("the blocking child is ready", || {
                    ready_rx.try_recv().is_ok()
                })
                .await;
                n.cancel();
                // The grace period starts now; move the clock for it (no auto-advance while the
                // blocking child runs).
                tokio::spawn(async move {
                    wait_until("the blocking child saw the cancellation", || {
                        saw_cancel.load(Ordering::SeqCst)
                    })
                    .await;
                    tokio::time::advance(ms(20)).await;
                });
                check_cancelled()
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(since(start), 20);
        let (blocking, stuck_async) = rx.await.unwrap();
        assert_eq!(
            blocking.await.unwrap(),
            7,
            "the blocking child returned its value"
        );
        assert!(matches!(stuck_async.await, Err(JoinError::ChildAborted)));
        assert_eq!(live.live(), 0);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n16_blocking_children_are_orphans_after_an_abort_drop_with_no_enclosing_nursery() {
    common::leak_checked(async move {
        bounded(async {
        let started = Arc::new(AtomicBool::new(false));
        let s = started.clone();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (tx, rx) = oneshot::channel();
        let inner = Nursery::new().drop_mode(DropMode::Abort).run(
            move |n: NurseryHandle<Cancelled>| async move {
                let blocking = n.spawn_blocking(move |ctx| {
                    s.store(true, Ordering::SeqCst);
                    while !ctx.is_cancelled() {
                        std::thread::yield_now();
                    }
                    release_rx.recv().unwrap();
                    ctx.check()?;
                    Ok(1)
                });
                tx.send(blocking).unwrap();
                sleep_forever().await
            },
        );
        tokio::select! {
            biased;
            out = inner => panic!("the nursery finished: {out:?}"),
            () = wait_until("the blocking child started", || started.load(Ordering::SeqCst)) => {}
        }
        let blocking = rx.await.unwrap();
        assert_eq!(orphan_count(), 1);
        release_tx.send(()).unwrap();
        orphans_finished().await;
        assert_eq!(orphan_count(), 0);
        assert!(matches!(blocking.await, Err(JoinError::ChildCancelled)));
        settle_tasks(0).await;
    })
    .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n16_a_blocking_childs_failure_and_panic_are_the_nurserys() {
    common::leak_checked(async move {
        bounded(async {
            let (tx, rx) = oneshot::channel();
            let out = nursery(|n| async move {
                let failing = n.spawn_blocking(|_ctx| Err::<(), _>(AppError::Boom(1)));
                let origin = child_origin(&failing);
                let sibling = n.spawn(async {
                    let c = cancelled().await;
                    assert!(matches!(c.reason(), CancelReason::SiblingFailed));
                    Err::<(), _>(AppError::from(c))
                });
                tx.send((origin, failing, sibling)).unwrap();
                sleep_forever().await
            })
            .await;
            let failures = failed(out);
            assert_eq!(booms(&failures), [1]);
            let (origin, failing, sibling) = rx.await.unwrap();
            assert_eq!(failures[0].origin(), &origin);
            assert!(matches!(failing.await, Err(JoinError::ChildFailed)));
            assert!(matches!(sibling.await, Err(JoinError::ChildCancelled)));

            let out = catch(nursery(|n| async move {
                n.spawn_blocking(|_ctx| explode::<Result<(), Cancelled>>(Code(5)));
                sleep_forever::<Cancelled>().await
            }))
            .await;
            assert_eq!(code(&*out.expect_err("the panic is resumed")), Some(5));
            settle_tasks(0).await;
        })
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n16_a_blocking_child_cancelled_alone_and_a_closed_nursery() {
    common::leak_checked(async move {
        bounded(async {
            let out = nursery(|n| async move {
                let blocking = n.spawn_blocking(|ctx| {
                    while !ctx.is_cancelled() {
                        std::thread::yield_now();
                    }
                    assert_eq!(ctx.check().unwrap_err().scope(), ctx.scope().id());
                    ctx.check()?;
                    Ok(())
                });
                let sibling = n.spawn_blocking(|ctx| {
                    assert!(!ctx.is_cancelled());
                    Ok(2)
                });
                blocking.cancel();
                assert!(matches!(blocking.await, Err(JoinError::ChildCancelled)));
                assert_eq!(sibling.await.unwrap(), 2);
                assert!(!n.scope().is_cancelled());
                Ok::<_, Cancelled>(n.clone())
            })
            .await;
            let closed = out.unwrap().unwrap();
            assert!(matches!(
                closed.try_spawn_blocking(|_ctx| Ok(())),
                Err(SpawnError::Closed)
            ));
            settle_tasks(0).await;
        })
        .await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// O1. tracing.
// ---------------------------------------------------------------------------------------------

/// A `tracing` layer recording spans (name, fields, parent) and events (level, fields, span).
#[cfg(feature = "tracing")]
mod traces {
    use std::collections::{BTreeMap, HashMap};
    use std::fmt;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id};
    use tracing::{Event, Level, Subscriber};
    use tracing_subscriber::layer::{Context, Layer};
    use tracing_subscriber::registry::LookupSpan;

    #[derive(Clone, Debug)]
    pub struct SpanRec {
        pub name: &'static str,
        /// Index of the parent span in [`Traces::spans`].
        pub parent: Option<usize>,
        pub fields: BTreeMap<String, String>,
    }

    impl SpanRec {
        pub fn field(&self, name: &str) -> Option<&str> {
            self.fields.get(name).map(String::as_str)
        }
    }

    #[derive(Clone, Debug)]
    pub struct EventRec {
        pub level: Level,
        /// Index of the event's span in [`Traces::spans`].
        pub span: Option<usize>,
        pub fields: BTreeMap<String, String>,
    }

    impl EventRec {
        pub fn message(&self) -> &str {
            self.field("message").unwrap_or("")
        }

        pub fn field(&self, name: &str) -> Option<&str> {
            self.fields.get(name).map(String::as_str)
        }
    }

    #[derive(Default)]
    struct State {
        spans: Vec<SpanRec>,
        /// Live span id to its record (ids are reused once a span closes).
        live: HashMap<u64, usize>,
        events: Vec<EventRec>,
    }

    #[derive(Clone, Default)]
    pub struct Traces(Arc<Mutex<State>>);

    impl Traces {
        pub fn spans(&self) -> Vec<SpanRec> {
            self.0.lock().unwrap().spans.clone()
        }

        pub fn events(&self) -> Vec<EventRec> {
            self.0.lock().unwrap().events.clone()
        }
    }

    struct Fields<'a>(&'a mut BTreeMap<String, String>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            self.0
                .insert(field.name().to_string(), format!("{value:?}"));
        }

        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_string(), value.to_string());
        }
    }

    impl<S> Layer<S> for Traces
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            let mut fields = BTreeMap::new();
            attrs.record(&mut Fields(&mut fields));
            let parent_id = ctx
                .span(id)
                .and_then(|span| span.parent())
                .map(|parent| parent.id().into_u64());
            let mut state = self.0.lock().unwrap();
            let parent = parent_id.and_then(|parent| state.live.get(&parent).copied());
            let index = state.spans.len();
            state.spans.push(SpanRec {
                name: attrs.metadata().name(),
                parent,
                fields,
            });
            state.live.insert(id.into_u64(), index);
        }

        fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
            let mut fields = BTreeMap::new();
            event.record(&mut Fields(&mut fields));
            let span_id = ctx.event_span(event).map(|span| span.id().into_u64());
            let mut state = self.0.lock().unwrap();
            let span = span_id.and_then(|id| state.live.get(&id).copied());
            state.events.push(EventRec {
                level: *event.metadata().level(),
                span,
                fields,
            });
        }
    }

    /// Installs a subscriber recording into a new [`Traces`] on this thread.
    pub fn record() -> (Traces, tracing::subscriber::DefaultGuard) {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let traces = Traces::default();
        let guard = tracing_subscriber::registry()
            .with(traces.clone())
            .set_default();
        (traces, guard)
    }
}

#[cfg(feature = "tracing")]
fn scope_text(id: tokio_nursery::ScopeId) -> String {
    id.to_string()
}

#[cfg(feature = "tracing")]
#[tokio::test(start_paused = true)]
async fn o01_a_span_per_nursery_and_per_child_parented_to_its_nursery() {
    common::leak_checked(async move {
        let (traces, _guard) = traces::record();
        let ids = Arc::new(Mutex::new(Vec::new()));
        let record = ids.clone();
        let out = Nursery::new()
            .name("outer")
            .run(|n| async move {
                record.lock().unwrap().push(("outer", n.scope().id()));
                let inner_record = record.clone();
                let a = n.spawn_named("a", async move {
                    inner_record
                        .lock()
                        .unwrap()
                        .push(("a", current_scope().unwrap().id()));
                    let inner = Nursery::new()
                        .name("inner")
                        .run(|m| async move {
                            inner_record.lock().unwrap().push(("inner", m.scope().id()));
                            let b_record = inner_record.clone();
                            let b = m.spawn_named("b", async move {
                                b_record
                                    .lock()
                                    .unwrap()
                                    .push(("b", current_scope().unwrap().id()));
                                checkpoint().await
                            });
                            b.await.unwrap();
                            Ok::<_, Cancelled>(())
                        })
                        .await;
                    flat(inner).map(|_| ())
                });
                n.spawn(async { Ok::<_, Cancelled>(()) });
                a.await.unwrap();
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        let ids = ids.lock().unwrap().clone();
        let id_of = |name: &str| scope_text(ids.iter().find(|(n, _)| *n == name).unwrap().1);

        let spans = traces.spans();
        let find = |kind: &str, name: &str| {
            let found: Vec<usize> = spans
                .iter()
                .enumerate()
                .filter(|(_, s)| s.name == kind && s.field("name") == Some(name))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(found.len(), 1, "one {kind} span named {name:?}: {spans:#?}");
            found[0]
        };
        let outer = find("nursery", "outer");
        let a = find("child", "a");
        let unnamed = find("child", "");
        let inner = find("nursery", "inner");
        let b = find("child", "b");
        assert_eq!(spans.iter().filter(|s| s.name == "nursery").count(), 2);
        assert_eq!(spans.iter().filter(|s| s.name == "child").count(), 3);
        assert_eq!(spans[a].parent, Some(outer));
        assert_eq!(spans[unnamed].parent, Some(outer));
        assert_eq!(spans[inner].parent, Some(a), "a nursery inside a child");
        assert_eq!(spans[b].parent, Some(inner));
        for (span, name) in [(outer, "outer"), (a, "a"), (inner, "inner"), (b, "b")] {
            assert_eq!(
                spans[span].field("scope"),
                Some(id_of(name).as_str()),
                "{name}"
            );
        }
    })
    .await
}

#[cfg(feature = "tracing")]
#[tokio::test(start_paused = true)]
async fn o01_events_for_cancellation_deadline_expiry_and_grace_expiry() {
    common::leak_checked(async move {
        use tracing::Level;

        let (traces, _guard) = traces::record();
        // An explicit cancel with a reason, then a grace period running out.
        let (id_tx, id_rx) = oneshot::channel();
        let out = Nursery::new()
            .name("graceful")
            .grace(ms(5))
            .run(|n| async move {
                id_tx.send(n.scope().id()).unwrap();
                n.spawn_named("stuck", stuck::<Cancelled>());
                settle().await;
                n.scope().cancel_with("bye");
                check_cancelled()
            })
            .await;
        assert_eq!(out.unwrap(), None);
        let graceful = scope_text(id_rx.await.unwrap());

        // The nursery's own deadline; and `NurseryHandle::cancel`.
        let (id_tx, id_rx) = oneshot::channel();
        let out = Nursery::new()
            .timeout(ms(10))
            .run(|n| async move {
                id_tx.send(n.scope().id()).unwrap();
                sleep_forever::<Cancelled>().await
            })
            .await;
        assert_eq!(out.unwrap(), None);
        let timed = scope_text(id_rx.await.unwrap());
        let (id_tx, id_rx) = oneshot::channel();
        let out = nursery(|n| async move {
            id_tx.send(n.scope().id()).unwrap();
            n.cancel();
            check_cancelled()
        })
        .await;
        assert_eq!(out.unwrap(), None);
        let cancelled_one = scope_text(id_rx.await.unwrap());

        let events = traces.events();
        let spans = traces.spans();
        let about = |scope: &str| -> Vec<traces::EventRec> {
            events
                .iter()
                .filter(|e| e.field("scope") == Some(scope))
                .cloned()
                .collect()
        };

        let graceful_events = about(&graceful);
        let cancel = graceful_events
            .iter()
            .find(|e| e.message().contains("cancel") && e.field("reason").is_some())
            .unwrap_or_else(|| panic!("no cancel event: {graceful_events:#?}"));
        assert_eq!(cancel.level, Level::DEBUG);
        assert_eq!(cancel.field("reason"), Some("explicit cancel: bye"));
        let grace = graceful_events
            .iter()
            .find(|e| e.level == Level::WARN)
            .unwrap_or_else(|| panic!("no grace-expiry warning: {graceful_events:#?}"));
        assert!(grace.message().contains("grace"), "{grace:?}");
        let span = grace
            .span
            .expect("the warning is inside the nursery's span");
        assert_eq!(spans[span].name, "nursery");
        assert_eq!(spans[span].field("name"), Some("graceful"));

        let timed_events = about(&timed);
        let deadline = timed_events
            .iter()
            .find(|e| e.message().contains("deadline"))
            .unwrap_or_else(|| panic!("no deadline event: {timed_events:#?}"));
        assert_eq!(deadline.level, Level::DEBUG);

        let cancelled_events = about(&cancelled_one);
        assert!(
            cancelled_events
                .iter()
                .any(|e| e.level == Level::DEBUG && e.message().contains("cancel")),
            "{cancelled_events:#?}"
        );
    })
    .await
}

/// O1: cancellations other than a nursery's or a scope handle's emit their event with
/// their reason too: a child's own through its handle, fail-fast's.
#[cfg(feature = "tracing")]
#[tokio::test(start_paused = true)]
async fn o01_every_cancellation_emits_its_reason() {
    common::leak_checked(async move {
        let (traces, _guard) = traces::record();
        let (ids_tx, ids_rx) = oneshot::channel();
        let out = Nursery::new()
            .run(|n: NurseryHandle<AppError>| async move {
                let (child_tx, child_rx) = oneshot::channel();
                let parked = n.spawn(async move {
                    child_tx
                        .send(tokio_nursery::current_scope().unwrap().id())
                        .unwrap();
                    sleep_forever::<AppError>().await?;
                    Ok(())
                });
                let child = child_rx.await.unwrap();
                parked.cancel();
                ids_tx.send((n.scope().id(), child)).unwrap();
                n.spawn(async { Err::<(), _>(AppError::Boom(7)) });
                sleep_forever::<AppError>().await
            })
            .await;
        assert!(matches!(out, Err(NurseryError::Failed(_))), "{out:?}");
        let (nursery_id, child_id) = ids_rx.await.unwrap();
        let events = traces.events();
        let reason_of = |scope: tokio_nursery::ScopeId| {
            let scope = scope_text(scope);
            events
                .iter()
                .find(|e| e.field("scope") == Some(&*scope) && e.message().contains("cancel"))
                .and_then(|e| e.field("reason").map(str::to_owned))
                .unwrap_or_else(|| panic!("no cancel event for {scope}: {events:#?}"))
        };
        assert_eq!(
            reason_of(child_id),
            CancelReason::Explicit(None).to_string()
        );
        assert_eq!(
            reason_of(nursery_id),
            CancelReason::SiblingFailed.to_string()
        );
    })
    .await
}

#[cfg(feature = "tracing")]
#[tokio::test(start_paused = true)]
async fn o01_grace_expiry_warning_names_the_aborted_children() {
    common::leak_checked(async move {
        use tracing::Level;

        let (traces, _guard) = traces::record();
        let out = Nursery::new()
            .grace(ms(5))
            .run(|n| async move {
                n.spawn_named("stuck-worker", stuck::<Cancelled>());
                settle().await;
                n.cancel();
                check_cancelled()
            })
            .await;
        assert_eq!(out.unwrap(), None);
        let events = traces.events();
        let warning = events
            .iter()
            .find(|e| e.level == Level::WARN && e.message().contains("grace"))
            .unwrap_or_else(|| panic!("no grace-expiry warning: {events:#?}"));
        assert!(
            warning.fields.values().any(|v| v.contains("stuck-worker")),
            "the warning does not name the aborted child: {warning:?}"
        );
    })
    .await
}

#[cfg(feature = "tracing")]
#[tokio::test(start_paused = true)]
async fn o01_events_for_adoption_failures_and_panics() {
    common::leak_checked(async move {
        use tracing::Level;

        let (traces, _guard) = traces::record();
        // Adopted by an enclosing nursery.
        let (id_tx, id_rx) = oneshot::channel();
        let out = Nursery::new()
            .name("adopter")
            .run(|_outer| async move {
                let inner = nursery(|n: NurseryHandle<Cancelled>| async move {
                    id_tx.send(n.scope().id()).unwrap();
                    n.spawn(async {
                        let c = cancelled().await;
                        tokio::time::sleep(ms(5)).await;
                        Err::<(), _>(c)
                    });
                    sleep_forever().await
                });
                assert!(tokio::time::timeout(ms(10), inner).await.is_err());
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        let adopted = scope_text(id_rx.await.unwrap());

        // Orphaned, and an orphan's failure.
        let (id_tx, id_rx) = oneshot::channel();
        let inner = nursery(|n: NurseryHandle<AppError>| async move {
            id_tx.send(n.scope().id()).unwrap();
            n.spawn_named("orphan", async {
                let _ = cancelled().await;
                Err::<(), _>(AppError::Boom(4))
            });
            sleep_forever().await
        });
        assert!(tokio::time::timeout(ms(10), inner).await.is_err());
        orphans_finished().await;
        let orphaned = scope_text(id_rx.await.unwrap());

        // A failure and a panic.
        let out = catch(nursery(|n| async move {
            n.spawn_named("failing", async { Err::<(), _>(AppError::Boom(5)) });
            n.spawn_named("panicking", async {
                explode::<Result<(), AppError>>("kaboom")
            });
            sleep_forever::<AppError>().await
        }))
        .await;
        assert!(out.is_err());

        let events = traces.events();
        let adoption = events
            .iter()
            .find(|e| e.field("scope") == Some(adopted.as_str()) && e.message().contains("adopt"))
            .unwrap_or_else(|| panic!("no adoption event: {events:#?}"));
        assert_eq!(adoption.level, Level::DEBUG);
        assert_eq!(adoption.field("adopter"), Some("adopter"));
        assert_eq!(adoption.field("children"), Some("1"));

        let orphan = events
            .iter()
            .find(|e| e.field("scope") == Some(orphaned.as_str()) && e.message().contains("orphan"))
            .unwrap_or_else(|| panic!("no orphan warning: {events:#?}"));
        assert_eq!(orphan.level, Level::WARN);
        let orphan_failure = events
            .iter()
            .find(|e| e.level == Level::ERROR && e.message().contains("Boom(4)"))
            .unwrap_or_else(|| panic!("the orphan's failure was not reported: {events:#?}"));
        assert!(
            orphan_failure.message().contains("adopted"),
            "{orphan_failure:?}"
        );
        assert!(
            orphan_failure.message().contains("orphan"),
            "{orphan_failure:?}"
        );

        assert!(
            events.iter().any(|e| e.level == Level::DEBUG
                && e.message().contains("failure")
                && e.field("origin").is_some_and(|o| o.contains("failing"))),
            "no failure event: {events:#?}"
        );
        assert!(
            events.iter().any(|e| e.level == Level::DEBUG
                && e.message().contains("panic")
                && e.field("origin").is_some_and(|o| o.contains("panicking"))),
            "no panic event: {events:#?}"
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// O2. The task-tree snapshot.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn o02_entries_and_text_show_kinds_names_states_cancellations_deadlines_and_shields() {
    common::leak_checked(async move {
        let start = Instant::now();
        let out = Nursery::new()
            .name("server")
            .run(|n| async move {
                let (shield_tx, shield_rx) = oneshot::channel();
                let worker = n.spawn_named("worker", async move {
                    // Seen from inside: the whole tree, from the outermost scope.
                    let tree = TaskTree::current();
                    assert_eq!(tree.entries()[0].kind, "nursery");
                    assert_eq!(tree.entries()[0].name.as_deref(), Some("server"));
                    let deadlined = CancelScope::new().with_deadline(start + ms(5000));
                    let out = deadlined
                        .run(async move {
                            let shielded = CancelScope::new().shielded();
                            shield_tx.send(shielded.handle()).unwrap();
                            shielded
                                .run(async { Err::<(), _>(cancelled().await) })
                                .await
                        })
                        .await;
                    out.map(|_| ())
                });
                let (ready_tx, ready_rx) = std::sync::mpsc::channel();
                let blocking = n.spawn_blocking(move |ctx| {
                    ready_tx.send(()).unwrap();
                    while !ctx.is_cancelled() {
                        std::thread::yield_now();
                    }
                    ctx.check()?;
                    Ok(())
                });
                let shield = shield_rx.await.unwrap();
                wait_until("the blocking child runs", || ready_rx.try_recv().is_ok()).await;

                // Running.
                let tree = TaskTree::of(&n.scope());
                let summary: Vec<(usize, &str, Option<&str>)> = tree
                    .entries()
                    .iter()
                    .map(|e| (e.depth, e.kind, e.name.as_deref()))
                    .collect();
                assert_eq!(
                    summary,
                    [
                        (0, "nursery", Some("server")),
                        (1, "child", Some("worker")),
                        (2, "scope", None),
                        (3, "scope", None),
                        (1, "blocking child", None),
                    ],
                    "{tree}"
                );
                let e = tree.entries();
                assert_eq!(e[0].scope, n.scope().id());
                assert_eq!(
                    e[0].detail.as_deref(),
                    Some("running, the body and 2 children")
                );
                assert_eq!(e[1].detail, Some(format!("task {}", worker.id())));
                assert_eq!(e[4].detail, Some(format!("task {}", blocking.id())));
                assert_eq!(e[2].deadline, Some(start + ms(5000)));
                assert_eq!(e[3].scope, shield.id());
                assert!(e[3].shielded && !e[2].shielded);
                assert!(e.iter().all(|e| !e.cancelled && e.cancellation.is_none()));
                let text = tree.to_string();
                let lines: Vec<&str> = text.lines().collect();
                assert_eq!(lines.len(), 5, "{text}");
                assert_eq!(
                    lines[0],
                    format!(
                        "nursery \"server\" ({}): running, the body and 2 children",
                        n.scope().id()
                    )
                );
                assert_eq!(
                    lines[1],
                    format!("  child \"worker\" ({}): task {}", e[1].scope, worker.id())
                );
                assert_eq!(
                    lines[2],
                    format!("    scope ({}) [deadline in 5000ms]", e[2].scope)
                );
                assert_eq!(lines[3], format!("      scope ({}) [shielded]", e[3].scope));
                assert_eq!(
                    lines[4],
                    format!("  blocking child ({}): task {}", e[4].scope, blocking.id())
                );

                // Cancelling: the reason and how long ago, inherited by the children.
                tokio::time::advance(ms(1000)).await;
                n.scope().cancel_with("maintenance");
                wait_until("the blocking child stopped", || n.live_children() == 1).await;
                tokio::time::advance(ms(2500)).await;
                let tree = TaskTree::of(&n.scope());
                let e = tree.entries();
                assert_eq!(e.len(), 4, "{tree}");
                assert_eq!(
                    e[0].detail.as_deref(),
                    Some("cancelling, waiting on the body and 1 child")
                );
                for entry in &e[..3] {
                    assert!(entry.cancelled, "{tree}");
                    let (reason, since_when) = entry.cancellation.clone().unwrap();
                    assert_eq!(reason.message(), Some("maintenance"));
                    assert_eq!(since_when, start + ms(1000));
                }
                assert!(!e[3].cancelled && e[3].cancellation.is_none(), "shielded");
                let text = tree.to_string();
                let lines: Vec<&str> = text.lines().collect();
                assert!(
                    lines[0].ends_with(
                        "cancelling, waiting on the body and 1 child \
                     [cancelled 2500ms ago: explicit cancel: maintenance]"
                    ),
                    "{text}"
                );
                assert!(
                    lines[1].ends_with("[cancelled 2500ms ago: explicit cancel: maintenance]"),
                    "{text}"
                );
                assert!(
                    lines[2].ends_with(
                        "[cancelled 2500ms ago: explicit cancel: maintenance] [deadline in 1500ms]"
                    ),
                    "{text}"
                );
                assert!(lines[3].ends_with("[shielded]"), "{text}");

                // Later: the inner scope's own deadline passed; long waits print in seconds.
                tokio::time::sleep(ms(10_000)).await;
                let tree = TaskTree::of(&n.scope());
                let text = tree.to_string();
                let lines: Vec<&str> = text.lines().collect();
                assert!(
                    lines[0].ends_with("[cancelled 12s ago: explicit cancel: maintenance]"),
                    "{text}"
                );
                // Said once: the deadline that passed is what cancelled the scope (a usability
                // review found "[deadline passed]" printed twice).
                assert!(
                    lines[2].ends_with("[cancelled 8500ms ago: deadline passed]"),
                    "{text}"
                );
                assert_eq!(lines[2].matches("deadline passed").count(), 1, "{text}");
                let (reason, _) = tree.entries()[2].cancellation.clone().unwrap();
                assert!(reason.is_deadline());

                shield.cancel();
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        assert!(
            TaskTree::current().entries().is_empty(),
            "outside any scope"
        );
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn o02_adopted_children_are_visible_in_the_adopters_tree() {
    common::leak_checked(async move {
        let out = Nursery::new()
            .name("outer")
            .run(|outer| async move {
                let inner =
                    Nursery::new()
                        .name("dropped")
                        .run(|n: NurseryHandle<Cancelled>| async move {
                            n.spawn_named("slow-cleanup", async {
                                let c = cancelled().await;
                                tokio::time::sleep(ms(20)).await;
                                Err::<(), _>(c)
                            });
                            sleep_forever().await
                        });
                assert!(tokio::time::timeout(ms(10), inner).await.is_err());
                let tree = TaskTree::of(&outer.scope());
                let text = tree.to_string();
                assert!(
                    text.contains("\"slow-cleanup\""),
                    "the adopted child holding up the outer nursery is not in its tree:\n{text}"
                );
                assert!(
                    text.contains("\"dropped\"")
                        && text.contains("dropped, adopted: 1 child still finishing"),
                    "the dropped nursery does not say its children were adopted:\n{text}"
                );
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn o02_the_current_tree_from_a_nested_child_starts_at_the_outermost_scope() {
    common::leak_checked(async move {
        let out = Nursery::new()
            .name("top")
            .run(|n| async move {
                let child = n.spawn_named("middle", async {
                    let inner = Nursery::new()
                        .name("nested")
                        .run(|m| async move {
                            let leaf = m.spawn_named("leaf", async {
                                let tree = TaskTree::current();
                                let names: Vec<(usize, &str, Option<String>)> = tree
                                    .entries()
                                    .iter()
                                    .map(|e| (e.depth, e.kind, e.name.clone()))
                                    .collect();
                                Ok::<_, Cancelled>(names)
                            });
                            leaf.await.map_err(|e| panic!("{e}"))
                        })
                        .await;
                    flat(inner).map(Option::unwrap)
                });
                let names = child.await.unwrap();
                assert_eq!(
                    names,
                    [
                        (0, "nursery", Some("top".to_string())),
                        (1, "child", Some("middle".to_string())),
                        (2, "nursery", Some("nested".to_string())),
                        (3, "child", Some("leaf".to_string())),
                    ]
                );
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await
}
