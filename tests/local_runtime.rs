//! SPEC N12 on tokio's `LocalRuntime` (`Builder::new_current_thread().build_local(..)`):
//! `!Send` children spawned with `NurseryHandle::spawn_local` run, return through their
//! handles and are waited for; fail-fast reaches them; deadlines fire under the paused clock;
//! each `DropMode` does on a local runtime what its docs promise for a current-thread runtime
//! (`BlockingWait` cannot block there and falls back to `Wait`, never a hang or a panic), and
//! no child future is lost; `local_scope` works there too.
//!
//! `LocalRuntime` is stable since tokio 1.51 (this crate needs 1.52). Every runtime is built
//! with `start_paused(true)`, so timings are asserted exactly. The drop-mode tests, where a
//! wrong fallback would hang, run on a thread of their own with a bound of real time
//! ([`bounded`]).

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use tokio::runtime::{Builder, LocalOptions, LocalRuntime};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_nursery::*;

use common::{AppError, HANG_BOUND, LiveFutures};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const HOUR: Duration = Duration::from_secs(3600);

/// A `LocalRuntime` with every driver and tokio's paused clock.
fn local_runtime() -> LocalRuntime {
    Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build_local(LocalOptions::default())
        .expect("a LocalRuntime")
}

/// Runs `test` on a thread of its own (where it builds its `!Send` runtime) and returns its
/// result, resuming its panic; panics if it has not finished within [`HANG_BOUND`] of real
/// time (the thread is then left behind: a hang cannot be interrupted).
fn bounded<R: Send + 'static>(what: &'static str, test: impl FnOnce() -> R + Send + 'static) -> R {
    let (done, finished) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(what.into())
        .spawn(move || {
            let _ = done.send(test());
        })
        .expect("spawn the test thread");
    match finished.recv_timeout(HANG_BOUND) {
        Ok(value) => {
            thread.join().expect("the test thread finished");
            value
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the test thread ended without a result or a panic"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("hang (SPEC N12): {what} did not finish within {HANG_BOUND:?} of real time")
        }
    }
}

thread_local! {
    /// Panics raised on this thread, caught or not (counted by [`count_panics`]'s hook).
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

/// Installs (once per process) a panic hook that counts each thread's panics, then runs the
/// default hook. A panic caught inside the library (as `BlockingWait` does with
/// `block_in_place`'s inside a `LocalSet`) still goes through the hook, so a thread's count
/// staying at 0 proves nothing panicked on it.
fn count_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|panics| panics.set(panics.get() + 1));
            default(info);
        }));
    });
}

fn panics_on_this_thread() -> usize {
    PANICS.with(Cell::get)
}

// 1. `!Send` children run, return through their handles, and are waited for.

#[test]
fn not_send_children_run_return_values_and_are_waited_for() {
    let runtime = local_runtime();
    runtime.block_on(common::leak_checked(async {
        let start = Instant::now();
        let here = std::thread::current().id();
        let late_done = Rc::new(Cell::new(false));
        let late_flag = late_done.clone();
        let out = nursery(|n| async move {
            let counter = Rc::new(Cell::new(0));
            let handles: Vec<_> = (1..=3u64)
                .map(|i| {
                    let counter = counter.clone(); // held across awaits: the child is `!Send`
                    n.spawn_local(async move {
                        sleep(ms(10 * i)).await?;
                        counter.set(counter.get() + 1);
                        assert_eq!(std::thread::current().id(), here);
                        Ok::<_, Cancelled>((i, counter))
                    })
                })
                .collect();
            // Never awaited: the nursery itself must wait for it.
            n.spawn_local(async move {
                sleep(ms(50)).await?;
                late_flag.set(true);
                Ok::<_, Cancelled>(())
            });
            // A `Send` child in the same nursery, on the same runtime.
            let send_child = n.spawn(async {
                sleep(ms(5)).await?;
                Ok::<_, Cancelled>(100u64)
            });
            let mut sum = send_child.await.unwrap();
            for handle in handles {
                let (i, shared) = handle.await.unwrap();
                assert!(Rc::ptr_eq(&shared, &counter));
                sum += i;
            }
            assert_eq!(
                start.elapsed(),
                ms(30),
                "the handles returned as the children ended"
            );
            Ok::<_, Cancelled>((sum, counter.get()))
        })
        .await;
        assert_eq!(out.unwrap(), Some((106, 3)));
        assert!(
            late_done.get(),
            "the nursery waited for the child nobody awaited"
        );
        assert_eq!(start.elapsed(), ms(50));
    }));
}

#[test]
fn a_nursery_in_a_spawned_local_task_spawns_local_children() {
    let runtime = local_runtime();
    // The nursery runs in a task of the runtime (`LocalRuntime::spawn_local`), not in the
    // future `block_on` drives: its own future is `!Send` too (it holds an `Rc`).
    let task = runtime.spawn_local(async {
        let start = Instant::now();
        let log = Rc::new(RefCell::new(Vec::new()));
        let in_body = log.clone();
        let out = nursery(|n| async move {
            for i in 0..3u64 {
                let log = in_body.clone();
                n.spawn_local(async move {
                    sleep(ms(10 * (3 - i))).await?;
                    log.borrow_mut().push(i);
                    Ok::<_, Cancelled>(())
                });
            }
            Ok::<_, Cancelled>(Rc::strong_count(&in_body))
        })
        .await;
        assert_eq!(
            out.unwrap(),
            Some(5),
            "the body saw 3 children + itself + the test"
        );
        assert_eq!(*log.borrow(), [2, 1, 0]);
        assert_eq!(start.elapsed(), ms(30));
    });
    runtime.block_on(common::leak_checked(async {
        task.await.unwrap();
    }));
}

#[test]
fn a_nursery_in_a_send_task_of_a_local_runtime_may_spawn_local_children() {
    let runtime = local_runtime();
    runtime.block_on(common::leak_checked(async {
        // `tokio::spawn` on a LocalRuntime runs on its one thread: `spawn_local` works there.
        let out = tokio::spawn(nursery(|n| async move {
            let child = n.spawn_local(async {
                let not_send = Rc::new(7u32);
                sleep(ms(5)).await?;
                Ok::<_, Cancelled>(*not_send)
            });
            Ok::<_, Cancelled>(child.await.unwrap())
        }))
        .await
        .unwrap();
        assert_eq!(out.unwrap(), Some(7));
    }));
}

// 2. Fail-fast.

/// What the cancelled code saw: who, when it stopped, the reason it was given.
type Seen = Rc<RefCell<Vec<(&'static str, Duration, CancelReason)>>>;

#[test]
fn a_failing_not_send_child_cancels_its_siblings_and_the_nursery_fails() {
    let runtime = local_runtime();
    runtime.block_on(common::leak_checked(async {
        let start = Instant::now();
        let seen: Seen = Rc::default();
        let handles = RefCell::new(Vec::new());
        let failing = Cell::new(None);
        let out = nursery(|n: NurseryHandle<AppError>| {
            let (seen, handles, failing) = (seen.clone(), &handles, &failing);
            async move {
                let at_sleep = seen.clone();
                handles.borrow_mut().push(n.spawn_local(async move {
                    let why = sleep(HOUR).await.unwrap_err();
                    at_sleep
                        .borrow_mut()
                        .push(("sleep", start.elapsed(), why.reason().clone()));
                    Err(AppError::Cancelled(why))
                }));
                let at_cancellable = seen.clone();
                handles.borrow_mut().push(n.spawn_local(async move {
                    // A channel nobody sends on, made a cancellation point.
                    let (_keep, never) = oneshot::channel::<()>();
                    let why = never.cancellable().await.unwrap_err();
                    at_cancellable.borrow_mut().push((
                        "cancellable",
                        start.elapsed(),
                        why.reason().clone(),
                    ));
                    Err(AppError::Cancelled(why))
                }));
                let fails = n.spawn_local(async move {
                    let _not_send = Rc::new(());
                    tokio::time::sleep(ms(20)).await;
                    Err::<(), _>(AppError::Other("boom"))
                });
                failing.set(Some(fails.id()));
                handles.borrow_mut().push(fails);
                let why = cancelled().await;
                seen.borrow_mut()
                    .push(("body", start.elapsed(), why.reason().clone()));
                Err::<(), _>(AppError::Cancelled(why))
            }
        })
        .await;
        assert_eq!(
            start.elapsed(),
            ms(20),
            "the siblings stopped at the failure"
        );
        let failures = match out {
            Err(NurseryError::Failed(failures)) => failures,
            other => panic!("expected the child's failure, got {other:?}"),
        };
        assert_eq!(
            failures.len(),
            1,
            "the echoes are not failures: {failures:?}"
        );
        assert!(matches!(failures[0].error(), AppError::Other("boom")));
        match failures[0].origin() {
            Origin::Child { id, .. } => assert_eq!(Some(*id), failing.get()),
            other => panic!("the failure's origin is the child, not {other:?}"),
        }
        let mut seen = seen.borrow().clone();
        seen.sort_by_key(|(who, ..)| *who);
        assert_eq!(seen.len(), 3);
        for (who, when, reason) in seen {
            assert_eq!(when, ms(20), "{who}");
            assert!(
                matches!(reason, CancelReason::SiblingFailed),
                "{who}: {reason:?}"
            );
        }
        let mut outcomes = Vec::new();
        for handle in handles.into_inner() {
            outcomes.push(handle.await);
        }
        assert!(matches!(outcomes[0], Err(JoinError::ChildCancelled)));
        assert!(matches!(outcomes[1], Err(JoinError::ChildCancelled)));
        assert!(matches!(outcomes[2], Err(JoinError::ChildFailed)));
    }));
}

// 3. Deadlines under the paused clock.

#[test]
fn move_on_after_cancels_a_nursery_of_not_send_children_exactly_on_time() {
    let runtime = local_runtime();
    runtime.block_on(common::leak_checked(async {
        let start = Instant::now();
        let stopped = Rc::new(RefCell::new(Vec::new()));
        let log = stopped.clone();
        let out = move_on_after(ms(100), async move {
            let inner = nursery(|n| async move {
                for i in 0..2 {
                    let log = log.clone();
                    n.spawn_local(async move {
                        let why = sleep(HOUR).await.unwrap_err();
                        log.borrow_mut()
                            .push((i, start.elapsed(), why.reason().is_deadline()));
                        Err::<(), _>(why)
                    });
                }
                let (_keep, never) = oneshot::channel::<()>();
                let _ = never.cancellable().await?;
                Ok::<_, Cancelled>(())
            })
            .await;
            match inner {
                Err(NurseryError::Cancelled(cancelled)) => Err::<(), _>(cancelled),
                other => panic!("the deadline passes through the nursery: {other:?}"),
            }
        })
        .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(start.elapsed(), ms(100));
        let mut stopped = stopped.borrow().clone();
        stopped.sort();
        assert_eq!(stopped, [(0, ms(100), true), (1, ms(100), true)]);
    }));
}

#[test]
fn fail_after_times_out_a_nursery_of_not_send_children_exactly_on_time() {
    let runtime = local_runtime();
    runtime.block_on(common::leak_checked(async {
        let start = Instant::now();
        let out: Result<(), AppError> = fail_after(ms(30), async {
            let inner = nursery(|n: NurseryHandle<AppError>| async move {
                n.spawn_local(async {
                    let _not_send = Rc::new(());
                    sleep(HOUR).await?;
                    Ok(())
                });
                // Waits too: a body that returned a value would win over the deadline.
                Err::<(), _>(AppError::Cancelled(cancelled().await))
            })
            .await;
            match inner {
                Err(NurseryError::Cancelled(cancelled)) => Err(AppError::Cancelled(cancelled)),
                other => panic!("the deadline passes through the nursery: {other:?}"),
            }
        })
        .await;
        assert_eq!(start.elapsed(), ms(30));
        match out {
            Err(AppError::TimedOut(timed_out)) => {
                assert!(timed_out.reason().is_deadline(), "{timed_out:?}");
                assert_eq!(timed_out.deadline(), Some(start + ms(30)));
            }
            other => panic!("expected TimedOut, got {other:?}"),
        }
    }));
}

#[test]
fn deadlines_inside_not_send_children_and_on_the_nursery_fire_on_time() {
    let runtime = local_runtime();
    runtime.block_on(common::leak_checked(async {
        let start = Instant::now();
        let out = Nursery::new()
            .timeout(ms(80))
            .run(|n| async move {
                // A child's own deadline, while it is parked in a cancel-safe await that is
                // not a timer (only the deadline service can wake it).
                let own = n.spawn_local(async move {
                    let (_keep, never) = oneshot::channel::<()>();
                    let not_send = Rc::new(Cell::new(0));
                    let inner = not_send.clone();
                    let moved_on = move_on_after(ms(25), async move {
                        inner.set(1);
                        never.cancellable().await.map(drop)
                    })
                    .await?;
                    assert_eq!(moved_on, None);
                    Ok::<_, Cancelled>((not_send.get(), start.elapsed()))
                });
                let timed_out = n.spawn_local(async move {
                    let out: Result<(), AppError> = fail_after(ms(40), async {
                        sleep(HOUR).await?;
                        Ok(())
                    })
                    .await;
                    assert!(matches!(out, Err(AppError::TimedOut(_))), "{out:?}");
                    Ok::<_, Cancelled>(start.elapsed())
                });
                // The nursery's own deadline reaches a child still parked; nobody awaits
                // it, the nursery waits for it.
                let cut = n.spawn_local(async move {
                    let why = sleep(HOUR).await.unwrap_err();
                    assert!(why.reason().is_deadline());
                    assert_eq!(start.elapsed(), ms(80));
                    Err::<(), _>(why)
                });
                assert_eq!(own.await.unwrap(), (1, ms(25)));
                assert_eq!(timed_out.await.unwrap(), ms(40));
                Ok::<_, Cancelled>(cut)
            })
            .await;
        // The body returned a value before the nursery's deadline: it wins (the echo of the
        // cancelled child is not a failure).
        let cut = out.unwrap().expect("the body's value");
        assert_eq!(start.elapsed(), ms(80));
        assert!(matches!(cut.await, Err(JoinError::ChildCancelled)));
    }));
}

// 4. Drop modes, with the nursery's future dropped on the local runtime.

/// A `!Send` child that cleans up for 5 ms once cancelled. `live` counts its future.
fn cleaning_child(
    live: &LiveFutures,
    cleaned: &Rc<Cell<bool>>,
) -> impl Future<Output = Result<(), Cancelled>> + 'static {
    let guard = live.guard();
    let cleaned = cleaned.clone();
    async move {
        let _guard = guard;
        let why = cancelled().await;
        tokio::time::sleep(ms(5)).await; // cleanup may await
        cleaned.set(true);
        Err(why)
    }
}

/// Builds the nursery under test: one `!Send` child made by `child`, whose handle goes to
/// `handle`; the body returns at once (the nursery then waits for the child).
fn one_child_nursery<F>(
    config: Nursery,
    child: F,
    handle: Rc<RefCell<Option<ChildHandle<()>>>>,
) -> impl Future<Output = Result<Option<()>, NurseryError<Cancelled>>>
where
    F: Future<Output = Result<(), Cancelled>> + 'static,
{
    config.run(move |n| async move {
        *handle.borrow_mut() = Some(n.spawn_local(child));
        Ok::<_, Cancelled>(())
    })
}

#[test]
fn wait_mode_drop_on_a_local_runtime_adopts_and_waits_for_the_children() {
    bounded("wait mode, enclosing nursery", || {
        adopted_by_the_enclosing_nursery(Nursery::new())
    });
}

/// A nursery (`config`) with one child that cleans up for 5 ms once cancelled, dropped at
/// 10 ms inside an enclosing nursery: the drop returns at once (had it blocked the
/// runtime's only thread, the child could not have run meanwhile: it would have been
/// aborted at the end of the grace period, in real time, never cleaning up), and the
/// enclosing nursery adopts the child and waits for its cleanup.
fn adopted_by_the_enclosing_nursery(config: Nursery) {
    count_panics();
    let runtime = local_runtime();
    runtime.block_on(common::leak_checked(async {
        let start = Instant::now();
        let live = LiveFutures::new();
        let cleaned = Rc::new(Cell::new(false));
        let handle = Rc::new(RefCell::new(None));
        let outer = nursery(|_| async {
            let inner = one_child_nursery(config, cleaning_child(&live, &cleaned), handle.clone());
            assert!(tokio::time::timeout(ms(10), inner).await.is_err());
            assert_eq!(start.elapsed(), ms(10));
            assert!(!cleaned.get(), "the drop returned before the cleanup");
            assert_eq!(live.live(), 1, "no child is dropped mid-await");
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(outer.unwrap(), Some(()));
        assert_eq!(
            start.elapsed(),
            ms(15),
            "the enclosing nursery adopted the child"
        );
        assert!(cleaned.get());
        assert_eq!((live.created(), live.live()), (1, 0));
        let handle = handle.borrow_mut().take().unwrap();
        assert!(matches!(handle.await, Err(JoinError::ChildCancelled)));
    }));
    assert_eq!(
        panics_on_this_thread(),
        0,
        "no panic, not even a caught one"
    );
}

#[test]
fn wait_mode_drop_with_no_enclosing_nursery_leaves_accounted_orphans() {
    bounded("wait mode, orphans", || left_to_the_orphans(Nursery::new()));
}

/// As [`adopted_by_the_enclosing_nursery`], with no enclosing nursery: the child goes to
/// the runtime's orphans, which `orphans_finished` waits for.
fn left_to_the_orphans(config: Nursery) {
    count_panics();
    let runtime = local_runtime();
    runtime.block_on(common::leak_checked(async {
        let start = Instant::now();
        let live = LiveFutures::new();
        let cleaned = Rc::new(Cell::new(false));
        let handle = Rc::new(RefCell::new(None));
        let inner = one_child_nursery(config, cleaning_child(&live, &cleaned), handle.clone());
        assert!(tokio::time::timeout(ms(10), inner).await.is_err());
        assert_eq!(orphan_count(), 1);
        assert_eq!(live.live(), 1);
        orphans_finished().await;
        assert_eq!(orphan_count(), 0);
        assert_eq!(start.elapsed(), ms(15));
        assert!(cleaned.get());
        assert_eq!((live.created(), live.live()), (1, 0));
    }));
    assert_eq!(panics_on_this_thread(), 0);
}

#[test]
fn wait_mode_drop_keeps_the_grace_period_and_aborts_a_child_that_ignores_cancellation() {
    bounded("wait mode, grace", || {
        grace_kept_after_the_drop(DropMode::Wait)
    });
}

/// A nursery in `mode` with a 50 ms grace, dropped at 10 ms: the drop returns at once (no
/// blocking on a local runtime), and its child, which ignores the cancellation, is aborted
/// at the end of the grace period by whoever adopted it.
fn grace_kept_after_the_drop(mode: DropMode) {
    count_panics();
    let runtime = local_runtime();
    runtime.block_on(common::leak_checked(async {
        let start = Instant::now();
        let live = LiveFutures::new();
        let handle = Rc::new(RefCell::new(None));
        let guard = live.guard();
        let stubborn = async move {
            let _guard = guard;
            let _not_send = Rc::new(());
            tokio::time::sleep(HOUR).await; // not a cancellation point
            Ok::<_, Cancelled>(())
        };
        let outer = nursery(|_| async {
            let inner = one_child_nursery(
                Nursery::new().drop_mode(mode).grace(ms(50)),
                stubborn,
                handle.clone(),
            );
            assert!(tokio::time::timeout(ms(10), inner).await.is_err());
            assert_eq!(start.elapsed(), ms(10), "the drop did not block");
            assert_eq!(live.live(), 1);
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(outer.unwrap(), Some(()));
        assert_eq!(
            start.elapsed(),
            ms(60),
            "aborted at the end of the grace period"
        );
        assert_eq!((live.created(), live.live()), (1, 0));
        let handle = handle.borrow_mut().take().unwrap();
        assert!(matches!(handle.await, Err(JoinError::ChildAborted)));
    }));
    assert_eq!(panics_on_this_thread(), 0);
}

#[test]
fn abort_mode_drop_on_a_local_runtime_drops_the_children_at_once() {
    bounded("abort mode", || {
        count_panics();
        let runtime = local_runtime();
        runtime.block_on(common::leak_checked(async {
            let start = Instant::now();
            let live = LiveFutures::new();
            let cleaned = Rc::new(Cell::new(false));
            let handle = Rc::new(RefCell::new(None));
            let (alive, gone) = oneshot::channel::<()>();
            let guard = live.guard();
            let flag = cleaned.clone();
            let child = async move {
                let _guard = guard;
                let _alive = alive;
                let why = cancelled().await; // never returns: dropped first
                flag.set(true);
                Err(why)
            };
            let outer = nursery(|_| async {
                let inner = one_child_nursery(
                    Nursery::new().drop_mode(DropMode::Abort),
                    child,
                    handle.clone(),
                );
                assert!(tokio::time::timeout(ms(10), inner).await.is_err());
                assert!(gone.await.is_err(), "the child's future was dropped");
                assert_eq!(start.elapsed(), ms(10), "at once");
                assert_eq!(live.live(), 0);
                Ok::<_, Cancelled>(())
            })
            .await;
            assert_eq!(outer.unwrap(), Some(()));
            assert_eq!(start.elapsed(), ms(10));
            assert!(!cleaned.get(), "aborted, not cancelled");
            assert_eq!((live.created(), live.live()), (1, 0));
            let handle = handle.borrow_mut().take().unwrap();
            assert!(matches!(handle.await, Err(JoinError::ChildAborted)));
        }));
        assert_eq!(panics_on_this_thread(), 0);
    });
}

#[test]
fn blocking_wait_drop_on_a_local_runtime_falls_back_to_wait_without_blocking_or_panicking() {
    bounded("blocking-wait mode, enclosing nursery", || {
        adopted_by_the_enclosing_nursery(
            Nursery::new()
                .drop_mode(DropMode::BlockingWait)
                .grace(ms(500)),
        )
    });
}

#[test]
fn blocking_wait_drop_with_no_enclosing_nursery_falls_back_to_orphans() {
    bounded("blocking-wait mode, orphans", || {
        left_to_the_orphans(
            Nursery::new()
                .drop_mode(DropMode::BlockingWait)
                .grace(ms(500)),
        )
    });
}

#[test]
fn blocking_wait_fallback_keeps_the_grace_period_on_a_local_runtime() {
    bounded("blocking-wait mode, grace", || {
        grace_kept_after_the_drop(DropMode::BlockingWait)
    });
}

/// The nursery's future, polled (its child started) inside `block_on`, then dropped
/// *outside* it, on the runtime's own thread: a future kept in a struct that outlives a
/// `block_on` call. The local runtime's tasks run only inside its `block_on`, on this thread.
/// Returns how long the drop took in real time (for failure messages only).
fn drop_outside_block_on(
    runtime: &LocalRuntime,
    mode: DropMode,
    child: impl Future<Output = Result<(), Cancelled>> + 'static,
    handle: Rc<RefCell<Option<ChildHandle<()>>>>,
) -> Duration {
    let mut inner = Box::pin(one_child_nursery(
        Nursery::new().drop_mode(mode).grace(ms(300)),
        child,
        handle,
    ));
    runtime.block_on(async {
        assert!(futures::poll!(inner.as_mut()).is_pending());
        tokio::task::yield_now().await; // the child runs to its cancellation point
    });
    let real = std::time::Instant::now();
    drop(inner);
    real.elapsed()
}

#[test]
fn wait_mode_drop_outside_block_on_leaves_orphans_that_finish_at_the_next_block_on() {
    bounded("wait mode, dropped outside block_on", || {
        count_panics();
        let runtime = local_runtime();
        let live = LiveFutures::new();
        let cleaned = Rc::new(Cell::new(false));
        let handle = Rc::new(RefCell::new(None));
        let child = cleaning_child(&live, &cleaned);
        drop_outside_block_on(&runtime, DropMode::Wait, child, handle.clone());
        assert_eq!((live.live(), cleaned.get()), (1, false));
        runtime.block_on(common::leak_checked(async {
            let start = Instant::now();
            assert_eq!(orphan_count(), 1);
            orphans_finished().await;
            assert_eq!(start.elapsed(), ms(5), "the child cleaned up");
            assert!(cleaned.get());
            assert_eq!(live.live(), 0);
            let handle = handle.borrow_mut().take().unwrap();
            assert!(matches!(handle.await, Err(JoinError::ChildCancelled)));
        }));
        assert_eq!(panics_on_this_thread(), 0);
    });
}

#[test]
fn abort_mode_drop_outside_block_on_drops_the_children_at_the_next_block_on() {
    bounded("abort mode, dropped outside block_on", || {
        count_panics();
        let runtime = local_runtime();
        let live = LiveFutures::new();
        let cleaned = Rc::new(Cell::new(false));
        let handle = Rc::new(RefCell::new(None));
        let child = cleaning_child(&live, &cleaned);
        drop_outside_block_on(&runtime, DropMode::Abort, child, handle.clone());
        runtime.block_on(common::leak_checked(async {
            let start = Instant::now();
            orphans_finished().await;
            assert_eq!(start.elapsed(), ms(0));
            assert!(!cleaned.get(), "aborted, not cancelled");
            assert_eq!(live.live(), 0);
            let handle = handle.borrow_mut().take().unwrap();
            assert!(matches!(handle.await, Err(JoinError::ChildAborted)));
        }));
        assert_eq!(panics_on_this_thread(), 0);
    });
}

/// `DropMode::BlockingWait` promises to fall back to `Wait` on a current-thread runtime. A
/// drop outside `block_on` on the local runtime's own thread is still a drop whose children
/// can only run on this thread: blocking it cannot let them stop, so the fallback is the only
/// outcome that keeps the mode's promise (no child dropped mid-await while it could clean
/// up).
#[test]
fn blocking_wait_drop_outside_block_on_falls_back_to_wait() {
    bounded("blocking-wait mode, dropped outside block_on", || {
        count_panics();
        let runtime = local_runtime();
        let live = LiveFutures::new();
        let cleaned = Rc::new(Cell::new(false));
        let handle = Rc::new(RefCell::new(None));
        let child = cleaning_child(&live, &cleaned);
        let blocked =
            drop_outside_block_on(&runtime, DropMode::BlockingWait, child, handle.clone());
        runtime.block_on(common::leak_checked(async {
            let start = Instant::now();
            orphans_finished().await;
            let handle = handle.borrow_mut().take().unwrap();
            let handle = handle.await;
            assert!(
                cleaned.get() && matches!(handle, Err(JoinError::ChildCancelled)),
                "the child could not clean up: {handle:?}; the drop blocked the local \
                 runtime's only thread for {blocked:?} of real time (its grace period is \
                 300 ms), then aborted the child"
            );
            assert_eq!(start.elapsed(), ms(5));
            assert_eq!(live.live(), 0);
        }));
        assert_eq!(panics_on_this_thread(), 0);
    });
}

/// The local runtime dropped while a task of its own runs a nursery with `!Send` children:
/// the shutdown drops the nursery's future (in each mode) and every child's, with no hang
/// and no panic.
#[test]
fn shutting_down_a_local_runtime_drops_every_nursery_and_child_in_every_mode() {
    for mode in [DropMode::Wait, DropMode::Abort, DropMode::BlockingWait] {
        bounded("runtime shutdown", move || {
            count_panics();
            let live = LiveFutures::new();
            let cleaned = Rc::new(Cell::new(false));
            let runtime = local_runtime();
            let guard = live.guard();
            let child = cleaning_child(&live, &cleaned);
            let task = runtime.spawn_local(async move {
                let _guard = guard;
                Nursery::new()
                    .drop_mode(mode)
                    .grace(ms(300))
                    .run(|n| async move {
                        n.spawn_local(child);
                        Err::<(), _>(cancelled().await)
                    })
                    .await
            });
            runtime.block_on(async {
                tokio::time::sleep(ms(10)).await;
                assert!(!task.is_finished());
            });
            assert_eq!(live.live(), 2, "{mode:?}: the nursery's task and its child");
            drop(runtime);
            assert_eq!((live.created(), live.live()), (2, 0), "{mode:?}");
            assert!(!cleaned.get());
            assert_eq!(panics_on_this_thread(), 0, "{mode:?}");
        });
    }
}

// 5. `local_scope` on a LocalRuntime.

#[test]
fn local_scope_children_borrow_and_return_values() {
    let runtime = local_runtime();
    runtime.block_on(common::leak_checked(async {
        let start = Instant::now();
        let words = ["borrowed", "from", "the", "stack"];
        let not_send = Rc::new(Cell::new(0));
        let out = local_scope(async |s| {
            let handles: Vec<_> = words
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let not_send = &not_send;
                    s.spawn(async move {
                        sleep(ms(10 * (i as u64 + 1))).await?;
                        not_send.set(not_send.get() + 1);
                        Ok::<_, Cancelled>(w.len())
                    })
                })
                .collect();
            let mut total = 0;
            for handle in handles {
                total += handle.await.unwrap();
            }
            Ok::<_, Cancelled>(total)
        })
        .await;
        assert_eq!(out.unwrap(), Some(20));
        assert_eq!(not_send.get(), 4);
        assert_eq!(start.elapsed(), ms(40));
    }));
}

#[test]
fn local_scope_fail_fast_and_deadline() {
    let runtime = local_runtime();
    runtime.block_on(common::leak_checked(async {
        let start = Instant::now();
        let stopped = RefCell::new(Vec::new());
        let out = local_scope(async |s: &LocalScope<'_, AppError>| {
            s.spawn(async {
                let why = sleep(HOUR).await.unwrap_err();
                stopped
                    .borrow_mut()
                    .push((start.elapsed(), why.reason().clone()));
                Err::<(), _>(AppError::Cancelled(why))
            });
            s.spawn(async {
                tokio::time::sleep(ms(20)).await;
                Err::<(), _>(AppError::Other("boom"))
            });
            Ok(())
        })
        .await;
        assert_eq!(start.elapsed(), ms(20));
        match out {
            Err(NurseryError::Failed(failures)) => {
                assert_eq!(failures.len(), 1, "{failures:?}");
                assert!(matches!(failures[0].error(), AppError::Other("boom")));
            }
            other => panic!("expected the child's failure, got {other:?}"),
        }
        let stopped = stopped.into_inner();
        assert_eq!(stopped.len(), 1);
        assert_eq!(stopped[0].0, ms(20));
        assert!(matches!(stopped[0].1, CancelReason::SiblingFailed));

        // A deadline around a local scope reaches its parked children.
        let start = Instant::now();
        let out = move_on_after(ms(35), async {
            local_scope(async |s| {
                for _ in 0..3 {
                    s.spawn(async {
                        let (_keep, never) = oneshot::channel::<()>();
                        let _ = never.cancellable().await?;
                        Ok::<_, Cancelled>(())
                    });
                }
                Err::<(), _>(cancelled().await)
            })
            .await
            .map_err(|error| match error {
                NurseryError::Cancelled(cancelled) => cancelled,
                other => panic!("{other:?}"),
            })
        })
        .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(start.elapsed(), ms(35));
    }));
}

#[test]
fn local_scope_inside_a_not_send_nursery_child_and_dropped_early() {
    let runtime = local_runtime();
    runtime.block_on(common::leak_checked(async {
        let start = Instant::now();
        let live = LiveFutures::new();
        let kept = live.clone();
        let out = nursery(|n| async move {
            let child = n.spawn_local(async move {
                let total = Rc::new(Cell::new(0));
                // A local scope in a `!Send` nursery child, its children borrowing `total`.
                local_scope(async |s| {
                    for i in 1..=3 {
                        let total = &total;
                        s.spawn(async move {
                            sleep(ms(i)).await?;
                            total.set(total.get() + i);
                            Ok::<_, Cancelled>(())
                        });
                    }
                    Ok::<_, Cancelled>(())
                })
                .await
                .unwrap();
                // Dropping a local scope's future drops its children at once.
                let parked = local_scope(async |s| {
                    for _ in 0..2 {
                        s.spawn(kept.track(std::future::pending::<Result<(), Cancelled>>()));
                    }
                    std::future::pending::<()>().await;
                    Ok::<_, Cancelled>(())
                });
                assert!(tokio::time::timeout(ms(5), parked).await.is_err());
                assert_eq!((kept.created(), kept.live()), (2, 0));
                Ok::<_, Cancelled>(total.get())
            });
            Ok::<_, Cancelled>(child.await.unwrap())
        })
        .await;
        assert_eq!(out.unwrap(), Some(6));
        assert_eq!(start.elapsed(), ms(8));
        assert_eq!(live.live(), 0);
    }));
}
