//! Review round 16: how a child's outcome reaches its handle (`output_slot`, `ChildHandle`,
//! `ParallelHandle::drop`). A waker, a value's `Drop`, and the wakers the child's end wakes
//! on its way (the nursery's, the awaiting scope's) may run any code, and panic: none of it
//! may lose an outcome, leave a handle waiting for ever, run under a lock it takes again, or
//! keep a waker once nobody waits.
//!
//! Tests that failed on the code they were written against say what was wrong ("Was:"; each
//! was fixed in the same round); the others are regression tests of risky points that held.

mod common;

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use common::hang::{in_a_nursery, within};
use common::wakers::runs_at_clone;
use futures::FutureExt;
use tokio::sync::oneshot;
use tokio_nursery::{
    Cancelled, ChildHandle, JoinError, NurseryError, NurseryHandle, cancelled, move_on_after,
    nursery,
};

const SC: Ordering = Ordering::SeqCst;

/// Longer than any test here waits on the paused clock: reaching it means a hang.
const HOUR: Duration = Duration::from_secs(3600);

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A child that returns `value` once told to.
fn until_told(n: &NurseryHandle<Cancelled>, value: u32) -> (ChildHandle<u32>, oneshot::Sender<()>) {
    let (tell, told) = oneshot::channel();
    let handle = n.spawn(async move {
        let _ = told.await;
        Ok::<_, Cancelled>(value)
    });
    (handle, tell)
}

/// Counts its wakes; the `Arc`'s strong count tells whether a clone is kept somewhere.
#[derive(Default)]
struct Counting(AtomicUsize);

impl Wake for Counting {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SC);
    }
}

/// Clones of `waker` kept anywhere but by the test.
fn kept(waker: &Arc<Counting>) -> usize {
    Arc::strong_count(waker) - 1
}

/// Polls `future` once with a clone of `waker`.
fn poll_with<F: Future + Unpin>(future: &mut F, waker: &Arc<Counting>) -> Poll<F::Output> {
    let waker = Waker::from(waker.clone());
    Pin::new(future).poll(&mut Context::from_waker(&waker))
}

/// Panics when woken.
struct PanicsOnWake;

impl Wake for PanicsOnWake {
    fn wake(self: Arc<Self>) {
        panic!("a waker that panics when woken");
    }
}

/// Panics with `code` as the payload.
fn explode(code: u32) -> u32 {
    std::panic::panic_any(code)
}

fn panics_on_wake() -> Waker {
    Waker::from(Arc::new(PanicsOnWake))
}

// ---------------------------------------------------------------------------------------
// A wake that panics on the way from the child's end to its handle.
// ---------------------------------------------------------------------------------------

/// Was: the child's task counts the child finished (`finish`, which wakes the nursery
/// future when the last child ends) before it fills the handle's slot (`ToHandle`:
/// `BEFORE_FINISH = false`, child.rs `ChildTask::poll`). When that wake panics (the nursery
/// future polled with a waker that panics, as a custom executor's may), the unwinding skips
/// the fill, and the task's `PinnedDrop` returns at once because the scope has ended: the
/// slot is never filled and the handle waits for ever for a child that returned 5.
#[tokio::test(start_paused = true)]
async fn a_nursery_waker_panicking_at_the_last_childs_end_still_gives_its_handle_the_value() {
    let (give, given) = oneshot::channel();
    let (tell, told) = oneshot::channel::<()>();
    let mut run = Box::pin(nursery(move |n: NurseryHandle<Cancelled>| async move {
        let handle = n.spawn(async move {
            let _ = told.await;
            Ok::<_, Cancelled>(5u32)
        });
        let _ = give.send(handle);
        Ok::<_, Cancelled>(())
    }));
    // The body runs, spawns and returns; the nursery waits for its child with this waker.
    let waker = panics_on_wake();
    assert!(
        run.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    drop(waker);
    let handle = given.await.unwrap();
    let waiting = tokio::spawn(handle);
    tell.send(()).unwrap();
    let got = tokio::time::timeout(HOUR, waiting).await;
    let ended = run
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
        .map(|outcome| outcome.map_err(|error| format!("{error:?}")));
    assert!(
        matches!(ended, Poll::Ready(Ok(Some(())))),
        "the nursery saw its child end"
    );
    match got {
        Ok(joined) => assert_eq!(joined.unwrap().unwrap(), 5),
        Err(_) => panic!("hang: the child returned 5, its handle still waits an hour later"),
    }
}

/// Was: as above on the abort path: the aborted child's task (`PinnedDrop`) counts the
/// child finished before `ToHandle::aborted` fills the slot with "aborted"; the nursery's
/// waker panicking in `finish` skips the fill, and the handle waits for ever.
#[tokio::test(start_paused = true)]
async fn a_nursery_waker_panicking_at_the_last_childs_abort_still_tells_its_handle() {
    let (give, given) = oneshot::channel();
    let mut run = Box::pin(nursery(move |n: NurseryHandle<Cancelled>| async move {
        let handle = n.spawn(std::future::pending::<Result<u32, Cancelled>>());
        let _ = give.send(handle);
        Ok::<_, Cancelled>(())
    }));
    let waker = panics_on_wake();
    assert!(
        run.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    drop(waker);
    let handle = given.await.unwrap();
    tokio::task::yield_now().await; // the child parks
    handle.abort();
    let waiting = tokio::spawn(handle);
    let got = tokio::time::timeout(HOUR, waiting).await;
    let ended = run
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
        .map(|outcome| outcome.map_err(|error| format!("{error:?}")));
    assert!(
        matches!(ended, Poll::Ready(Ok(Some(())))),
        "the nursery saw its child end"
    );
    match got {
        Ok(joined) => assert!(matches!(joined.unwrap(), Err(JoinError::ChildAborted))),
        Err(_) => panic!("hang: the child was aborted, its handle still waits an hour later"),
    }
}

/// A failing child (fail-fast) whose handle waits in the body with `waker`: the failure
/// cancels the body's scope, whose waiters include the handle's. Returns the nursery's
/// failures and what the handle gave.
async fn failing_child_awaited_with(waker: Waker) -> (usize, String) {
    let (report, reported) = oneshot::channel();
    let outcome = nursery(|n: NurseryHandle<std::io::Error>| async move {
        let (tell, told) = oneshot::channel::<()>();
        let mut handle = n.spawn(async move {
            let _ = told.await;
            Err::<u32, _>(std::io::Error::other("boom"))
        });
        // The waker goes into the slot's table and onto the body's scope (the nursery's),
        // which the failure cancels.
        let first = Pin::new(&mut handle).poll(&mut Context::from_waker(&waker));
        assert!(first.is_pending());
        drop(waker);
        tell.send(()).unwrap();
        while !handle.is_finished() {
            tokio::task::yield_now().await;
        }
        // Read as a waiter whose scope is not cancelled (the failure cancelled the body's).
        let joined = common::nursery::how_it_ended(handle).await;
        let _ = report.send(format!("{joined:?}"));
        Ok(())
    })
    .await;
    let failures = match outcome {
        Err(NurseryError::Failed(failures)) => failures.len(),
        other => panic!("the child's failure is the nursery's: {other:?}"),
    };
    (failures, reported.await.unwrap())
}

/// Panics the first time it is woken only.
#[derive(Default)]
struct PanicsOnce(std::sync::atomic::AtomicBool);

impl Wake for PanicsOnce {
    fn wake(self: Arc<Self>) {
        if !self.0.swap(true, SC) {
            panic!("a waker that panics when first woken");
        }
    }
}

/// Was: a failing child's end is settled (`settle`: the failure recorded, then the
/// nursery's scope cancelled, `Node::cancel` waking every waiter of that scope and resuming
/// the first panic) before the child's task counts it finished and fills its handle's slot
/// (child.rs `ChildTask::poll`). A waiter whose wake panics there (the handle's own
/// `Waiter`, registered with the awaiting body's scope) unwinds the child's task before the
/// fill; tokio drops the task while unwinding and its `PinnedDrop` fills "aborted": the
/// handle says `ChildAborted` for a child that failed (SPEC N2: a handle of a failed child
/// yields a marker of that).
#[tokio::test(start_paused = true)]
async fn a_waiter_panicking_at_the_fail_fast_cancellation_leaves_the_handle_child_failed() {
    let waker = Waker::from(Arc::new(PanicsOnce::default()));
    let (failures, joined) = failing_child_awaited_with(waker).await;
    assert_eq!(failures, 1);
    assert_eq!(joined, "Err(ChildFailed)");
}

/// The name of the environment variable that tells a test it runs in its own process.
const IN_OWN_PROCESS: &str = "REVIEW_ROUND16_IN_OWN_PROCESS";

/// Runs `test` in a process of its own (this test binary again, running only the test
/// `name`), for a test whose failure aborts the process; fails if that process does not
/// end successfully within 60 s.
fn in_own_process(name: &str, test: impl FnOnce()) {
    if std::env::var_os(IN_OWN_PROCESS).is_some() {
        test();
        return;
    }
    let (exe, name) = (std::env::current_exe().unwrap(), name.to_owned());
    let (sent, got) = mpsc::channel();
    within(60, move || {
        let output = std::process::Command::new(exe)
            .args([&*name, "--exact", "--test-threads=1", "--nocapture"])
            .env(IN_OWN_PROCESS, "1")
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        sent.send(output).unwrap();
    });
    let output = got.recv().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The panic messages, without the backtrace a panic during unwinding prints.
    let panics: Vec<&str> = stderr
        .lines()
        .filter(|line| {
            let line = line.trim_start();
            !line.starts_with(|c: char| c.is_ascii_digit()) && !line.starts_with("at ")
        })
        .filter(|line| {
            !line.is_empty() && !line.starts_with("running") && !line.starts_with("test ")
        })
        .collect();
    assert!(
        output.status.success(),
        "the test's own process ended with {}: {panics:#?}",
        output.status
    );
}

/// Was (the process aborted): as above with a waker that panics at every wake. The first
/// panic (from `settle`'s cancellation) unwinds the child's task; tokio drops the task while
/// unwinding, and `ChildTask`'s `PinnedDrop` (child.rs) fills "aborted" into the slot, which
/// wakes the handle's waker in the table (`slot_fill`): a second panic during unwinding,
/// "panic in a destructor during cleanup", aborts the process. Nothing in the drop path
/// (`finish`'s wakes, the slot's wake) is guarded, while the poll path relies on tokio to
/// catch such panics.
#[test]
fn a_waker_panicking_at_every_wake_with_a_failing_child_does_not_abort() {
    in_own_process(
        "a_waker_panicking_at_every_wake_with_a_failing_child_does_not_abort",
        || {
            let (failures, _) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap()
                .block_on(failing_child_awaited_with(panics_on_wake()));
            assert_eq!(failures, 1);
        },
    );
}

/// A waker that panics when woken, on a handle awaited by the body, while the child ends with
/// a value: the nursery's scope is not cancelled, so only the slot's fill wakes it (after
/// `finish`): the child's end is counted and the handle gets the value (round 14 holds).
/// And a child that panics: its payload is resumed by the nursery whatever the handle's
/// waker does.
#[tokio::test(start_paused = true)]
async fn a_panicking_child_with_a_panicking_handle_waker_keeps_its_payload() {
    let outcome = AssertUnwindSafe(nursery(|n: NurseryHandle<Cancelled>| async move {
        let (tell, told) = oneshot::channel::<()>();
        let mut handle = n.spawn(async move {
            let _ = told.await;
            Ok::<u32, Cancelled>(explode(41))
        });
        // Polled in a plain task: the waker goes into the slot's table only.
        let waker = panics_on_wake();
        let polled = tokio::spawn(async move {
            let first = Pin::new(&mut handle).poll(&mut Context::from_waker(&waker));
            assert!(first.is_pending());
            Some(handle) // not the handle itself, a future the block would seem to await
        })
        .await
        .unwrap()
        .unwrap();
        tell.send(()).unwrap();
        // Not awaited before the child ended: the panicking waker is the one woken.
        while !polled.is_finished() {
            tokio::task::yield_now().await;
        }
        let joined = polled.await;
        assert!(
            matches!(joined, Err(JoinError::ChildPanicked)),
            "{joined:?}"
        );
        Ok::<_, Cancelled>(())
    }))
    .catch_unwind()
    .await;
    let payload = outcome.expect_err("the child's panic is resumed");
    assert_eq!(payload.downcast_ref::<u32>(), Some(&41));
}

// ---------------------------------------------------------------------------------------
// Wakers kept once nobody waits.
// ---------------------------------------------------------------------------------------

/// Was: `ParallelHandle::drop` calls `ChildHandle::release`, which lets go of the waker
/// in the nursery's table but not of the handle's `Waiter`, the registration of the same
/// waker with the awaiting code's scope (child.rs `release`; parallel.rs `Drop for
/// ParallelHandle`). The inner `ChildHandle` is kept with the child's cell until the scope
/// frees it, so the waker stays registered (and the scope's node alive), and the scope's
/// cancellation wakes it although nothing waits any more. Round 14's test of this drop
/// polls in a plain task, outside any scope, where there is no `Waiter` registration.
#[test]
fn a_dropped_parallel_handle_leaves_no_waker_with_the_awaiting_scope() {
    within(30, || {
        let (kept, woken) = multi_thread()
            .block_on(async {
                tokio_nursery::parallel_scope(async |s| {
                    let (tell, told) = oneshot::channel::<()>();
                    let mut handle = s.spawn(async move {
                        let _ = told.await;
                        Ok::<_, Cancelled>(7u32)
                    });
                    let waker = Arc::new(Counting::default());
                    // Polled in the scope's body: the waker also waits on the body's scope.
                    assert!(poll_with(&mut handle, &waker).is_pending());
                    drop(handle);
                    let kept = kept(&waker);
                    s.scope().cancel();
                    let woken = waker.0.load(SC);
                    tell.send(()).unwrap();
                    Ok::<_, Cancelled>((kept, woken))
                })
                .unwrap()
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            (kept, woken),
            (0, 0),
            "(clones kept after the handle's drop, wakes after it)"
        );
    });
}

/// Was: a `ChildHandle` that returned its child's value (polled through `&mut`, as in
/// `select!` or `(&mut handle).await`) keeps its `Waiter` registered with the awaiting scope
/// until it is dropped: `ChildHandle::poll` returns `Ready` without taking the registration
/// off (child.rs `poll`). The waker (and the task it belongs to) stays there, and the scope's
/// cancellation wakes it for nothing.
#[test]
fn a_handle_that_returned_keeps_no_waker_with_the_awaiting_scope() {
    let (kept, woken, value) = in_a_nursery(|n| async move {
        let (mut handle, tell) = until_told(&n, 1);
        let waker = Arc::new(Counting::default());
        assert!(poll_with(&mut handle, &waker).is_pending());
        tell.send(()).unwrap();
        while !handle.is_finished() {
            tokio::task::yield_now().await;
        }
        let value = match poll_with(&mut handle, &waker) {
            Poll::Ready(value) => value.unwrap(),
            Poll::Pending => panic!("a finished child's handle is ready"),
        };
        let kept = kept(&waker);
        let before = waker.0.load(SC);
        n.cancel();
        let woken = waker.0.load(SC) - before;
        Ok::<_, Cancelled>((kept, woken, value))
    });
    assert_eq!(value, 1);
    assert_eq!(
        (kept, woken),
        (0, 0),
        "(clones kept by a handle that returned, wakes by its scope's cancellation)"
    );
}

/// A wait ended by the awaiting scope's cancellation (`JoinError::Cancelled`, a deadline on
/// the paused clock) loses nothing: the handle awaited again gets the value, and a handle
/// dropped after such a wait lets its waker go.
#[tokio::test(start_paused = true)]
async fn a_wait_cut_short_by_the_awaiting_scope_loses_nothing() {
    let outcome = nursery(|n: NurseryHandle<Cancelled>| async move {
        let mut later = n.spawn(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, Cancelled>(3u32)
        });
        let cut = move_on_after(Duration::from_millis(10), async { (&mut later).await }).await;
        assert!(matches!(cut, Ok(None)), "{cut:?}");
        assert!(!later.is_finished());
        let value = later.await.unwrap();

        let (mut dropped, tell) = until_told(&n, 4);
        let waker = Arc::new(Counting::default());
        let waited = move_on_after(Duration::from_millis(10), {
            let waker = waker.clone();
            let dropped = &mut dropped;
            async move {
                // Polls once with the counting waker, then waits for the deadline.
                assert!(poll_with(dropped, &waker).is_pending());
                Err::<(), JoinError>(cancelled().await.into())
            }
        })
        .await;
        assert!(matches!(waited, Ok(None)));
        assert!(kept(&waker) >= 1, "the table keeps it while the child runs");
        drop(dropped);
        assert_eq!(kept(&waker), 0, "let go with the handle");
        tell.send(()).unwrap();
        Ok::<_, Cancelled>(value)
    })
    .await;
    assert_eq!(outcome.unwrap(), Some(3));
}

// ---------------------------------------------------------------------------------------
// User code run by a waker's clone, inside the handle's poll.
// ---------------------------------------------------------------------------------------

/// Was (a hang): DESIGN says a waiting handle's waker may drop another handle of the nursery
/// when cloned, and round 14 checks that for the clone the slot makes (its first). But
/// `ChildHandle::poll` clones the waker a second time to register it with the awaiting
/// scope (`Waiter::poll_cancelled`), and `Node::register_waiter` makes that clone under the
/// node's lock (node.rs `Waiters::put`). A clone that drops another waiting handle of the
/// same body takes that lock again (`Waiter::clear` -> `Node::remove_waiter`): the thread
/// deadlocks.
#[test]
fn a_waker_whose_second_clone_drops_another_waiting_handle() {
    let value = in_a_nursery(|n| async move {
        let (mut waiting, tell_waiting) = until_told(&n, 1);
        let (mut polled, tell_polled) = until_told(&n, 2);
        // Waits in the body: registered in the table and with the body's scope.
        assert!(futures::poll!(&mut waiting).is_pending());
        let (dropper, waker) = runs_at_clone(2, move || drop(waiting));
        let first = Pin::new(&mut polled).poll(&mut Context::from_waker(&waker));
        assert!(first.is_pending());
        assert!(dropper.ran(), "dropped at clone 2");
        drop(waker);
        tell_waiting.send(()).unwrap(); // its handle is gone; the child still runs
        tell_polled.send(()).unwrap();
        Ok::<_, Cancelled>(polled.await.unwrap())
    });
    assert_eq!(value, 2);
}

/// The same waker dropping the other handle at its first clone (the slot's, made before the
/// table is locked), while both handles wait in the body: holds.
#[test]
fn a_waker_whose_first_clone_drops_another_waiting_handle() {
    let value = in_a_nursery(|n| async move {
        let (mut waiting, _tell_waiting) = until_told(&n, 1);
        let (mut polled, tell_polled) = until_told(&n, 2);
        assert!(futures::poll!(&mut waiting).is_pending());
        let (dropper, waker) = runs_at_clone(1, move || drop(waiting));
        let first = Pin::new(&mut polled).poll(&mut Context::from_waker(&waker));
        assert!(first.is_pending());
        assert!(dropper.ran());
        drop(waker);
        tell_polled.send(()).unwrap();
        Ok::<_, Cancelled>(polled.await.unwrap())
    });
    assert_eq!(value, 2);
}

// ---------------------------------------------------------------------------------------
// Misuse.
// ---------------------------------------------------------------------------------------

/// Was (a hang): a child awaiting its own handle waited for ever, and so did its nursery,
/// with nothing to say why. `ChildHandle::poll` now panics with a clear message when its
/// own child polls it (`tokio::task::try_id()`), which the nursery resumes.
#[tokio::test(start_paused = true)]
async fn a_child_awaiting_its_own_handle_is_a_clear_error() {
    let run = nursery(|n: NurseryHandle<Cancelled>| async move {
        let (give, given) = oneshot::channel::<ChildHandle<u32>>();
        let handle = n.spawn(async move {
            let own = given.await.expect("its own handle");
            let _ = own.await;
            Ok::<_, Cancelled>(1u32)
        });
        give.send(handle).unwrap();
        Ok::<_, Cancelled>(())
    });
    let outcome = tokio::time::timeout(HOUR, AssertUnwindSafe(run).catch_unwind()).await;
    assert!(
        outcome.is_ok(),
        "hang: a child awaiting its own handle, and its nursery, still wait an hour later"
    );
}

/// A handle polled again after it returned is a clear panic (and so is a `ParallelHandle`'s,
/// whose message names the inner `ChildHandle`).
#[tokio::test(start_paused = true)]
async fn a_handle_polled_after_it_returned_is_a_clear_panic() {
    let outcome = nursery(|n: NurseryHandle<Cancelled>| async move {
        let mut handle = n.spawn(async { Ok::<_, Cancelled>(1u32) });
        assert_eq!((&mut handle).await.unwrap(), 1);
        let again = catch_unwind(AssertUnwindSafe(|| {
            let _ = Pin::new(&mut handle).poll(&mut Context::from_waker(Waker::noop()));
        }));
        let payload = again.expect_err("a clear panic");
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default()
            .to_owned();
        Ok::<_, Cancelled>(message)
    })
    .await;
    let message = outcome.unwrap().unwrap();
    assert!(message.contains("polled after it returned"), "{message}");
}

// ---------------------------------------------------------------------------------------
// A value's `Drop` that panics.
// ---------------------------------------------------------------------------------------

/// Counts its drops; panics in `Drop` if `panics`.
struct Noisy {
    drops: Arc<AtomicUsize>,
    panics: bool,
}

impl Drop for Noisy {
    fn drop(&mut self) {
        self.drops.fetch_add(1, SC);
        if self.panics {
            panic!("a value whose drop panics");
        }
    }
}

/// A value whose `Drop` panics is dropped once whoever drops it: the handle dropped after
/// the child ended (its `release` keeps the panic, as tokio's `JoinHandle` does), or the
/// child's task when the handle was dropped first (the panic unwinds the child's task after
/// the nursery counted it finished). The nursery is not disturbed either way.
#[tokio::test(start_paused = true)]
async fn a_value_whose_drop_panics_is_dropped_once_by_either_side() {
    let drops = Arc::new(AtomicUsize::new(0));
    let outcome = nursery({
        let drops = drops.clone();
        |n: NurseryHandle<Cancelled>| async move {
            // Dropped by the handle, after the child ended.
            let ended = n.spawn({
                let drops = drops.clone();
                async move {
                    Ok::<_, Cancelled>(Noisy {
                        drops,
                        panics: true,
                    })
                }
            });
            while !ended.is_finished() {
                tokio::task::yield_now().await;
            }
            let dropped = catch_unwind(AssertUnwindSafe(|| drop(ended)));
            assert!(dropped.is_ok(), "the handle's drop keeps the value's panic");
            assert_eq!(drops.load(SC), 1);
            // Dropped by the child's task: the handle went first.
            let (tell, told) = oneshot::channel::<()>();
            let first = n.spawn({
                let drops = drops.clone();
                async move {
                    let _ = told.await;
                    Ok::<_, Cancelled>(Noisy {
                        drops,
                        panics: true,
                    })
                }
            });
            tokio::task::yield_now().await;
            drop(first);
            tell.send(()).unwrap();
            Ok::<_, Cancelled>(())
        }
    })
    .await;
    assert!(matches!(outcome, Ok(Some(()))), "{outcome:?}");
    tokio::task::yield_now().await;
    assert_eq!(drops.load(SC), 2, "each value dropped once");
}

/// Was: a `ChildHandle` dropped with a value whose `Drop` panics keeps the panic (its
/// `release` catches it, as tokio's `JoinHandle` does, test above), but a `ParallelHandle`
/// does not: `ParallelHandle::drop` hands the value to `Value::abandon`, which drops it
/// unguarded (parallel.rs `Cell::abandon`), so the panic leaves the handle's `drop`, and a
/// handle dropped while its owner unwinds aborts the process.
#[test]
fn a_parallel_handle_dropped_with_a_value_whose_drop_panics() {
    within(30, || {
        let drops = Arc::new(AtomicUsize::new(0));
        let unwound = multi_thread()
            .block_on(async {
                tokio_nursery::parallel_scope(async |s| {
                    let handle = s.spawn({
                        let drops = drops.clone();
                        async move {
                            Ok::<_, Cancelled>(Noisy {
                                drops,
                                panics: true,
                            })
                        }
                    });
                    while !handle.is_finished() {
                        tokio::task::yield_now().await;
                    }
                    Ok::<_, Cancelled>(catch_unwind(AssertUnwindSafe(|| drop(handle))).is_err())
                })
                .unwrap()
            })
            .unwrap()
            .unwrap();
        assert_eq!(drops.load(SC), 1);
        assert!(
            !unwound,
            "the value's panic left ParallelHandle::drop (ChildHandle::drop keeps it)"
        );
    });
}

// ---------------------------------------------------------------------------------------
// Races on a multi-thread runtime.
// ---------------------------------------------------------------------------------------

/// Counts values made and dropped.
struct Counted {
    value: usize,
    drops: Arc<AtomicUsize>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops.fetch_add(1, SC);
    }
}

/// Children ending at varied times on two workers while their handles are dropped at once,
/// polled once from another task and then dropped (the release racing the fill, the waker
/// in the table), awaited from other tasks, or aborted and awaited: every value that was
/// made is dropped exactly once, every awaited handle gets its child's end, nothing hangs.
#[test]
fn handles_released_polled_awaited_and_aborted_while_children_end() {
    const CHILDREN: usize = 600;
    within(60, || {
        let made = Arc::new(AtomicUsize::new(0));
        let drops = Arc::new(AtomicUsize::new(0));
        let rt = multi_thread();
        let (values, aborted) = rt
            .block_on(nursery({
                let (made, drops) = (made.clone(), drops.clone());
                move |n: NurseryHandle<Cancelled>| async move {
                    let mut awaited = Vec::new();
                    let mut pollers = Vec::new();
                    for i in 0..CHILDREN {
                        let (made, drops) = (made.clone(), drops.clone());
                        let mut handle = n.spawn(async move {
                            for _ in 0..i % 7 {
                                tokio::task::yield_now().await;
                            }
                            made.fetch_add(1, SC);
                            Ok::<_, Cancelled>(Counted { value: i, drops })
                        });
                        match i % 5 {
                            0 => drop(handle),
                            1 => pollers.push(tokio::spawn(async move {
                                let waker = Arc::new(Counting::default());
                                let _ = poll_with(&mut handle, &waker);
                                tokio::task::yield_now().await;
                                drop(handle);
                                kept(&waker)
                            })),
                            2 => {
                                handle.abort();
                                awaited.push((i, tokio::spawn(handle)));
                            }
                            _ => awaited.push((i, tokio::spawn(handle))),
                        }
                    }
                    let mut values = 0;
                    let mut aborted = 0;
                    for (i, joined) in awaited {
                        match joined.await.unwrap() {
                            Ok(counted) => {
                                assert_eq!(counted.value, i);
                                values += 1;
                            }
                            Err(JoinError::ChildAborted) => aborted += 1,
                            Err(other) => panic!("child {i}: {other:?}"),
                        }
                    }
                    for poller in pollers {
                        assert_eq!(poller.await.unwrap(), 0, "a dropped handle keeps no waker");
                    }
                    Ok::<_, Cancelled>((values, aborted))
                }
            }))
            .unwrap()
            .unwrap();
        assert!(
            values >= CHILDREN * 2 / 5,
            "every plainly awaited child's value"
        );
        assert_eq!(values + aborted, CHILDREN * 3 / 5);
        drop(rt); // every task gone: every value that was made has been dropped
        assert_eq!(
            drops.load(SC),
            made.load(SC),
            "each value made dropped once"
        );
    });
}

/// A fan-in: many handles awaited at once from one task (the table grows to hold all
/// their wakers), their children ending together on two workers, then the same again in the
/// same nursery (the table shrank as it emptied): every value arrives, twice over.
#[test]
fn a_fan_in_twice_in_one_nursery() {
    const CHILDREN: u32 = 1500;
    within(60, || {
        let sums = multi_thread()
            .block_on(nursery(|n: NurseryHandle<Cancelled>| async move {
                let mut sums = Vec::new();
                for _ in 0..2 {
                    let (go, _) = tokio::sync::broadcast::channel::<()>(1);
                    let handles: Vec<_> = (0..CHILDREN)
                        .map(|i| {
                            let mut started = go.subscribe();
                            n.spawn(async move {
                                let _ = started.recv().await;
                                Ok::<_, Cancelled>(u64::from(i))
                            })
                        })
                        .collect();
                    let (polled, all_polled) = oneshot::channel();
                    let fan_in = tokio::spawn(async move {
                        let mut handles = handles;
                        // Every handle waits at once, with this task's waker.
                        std::future::poll_fn(|cx| {
                            for handle in &mut handles {
                                assert!(Pin::new(handle).poll(cx).is_pending());
                            }
                            Poll::Ready(())
                        })
                        .await;
                        let _ = polled.send(());
                        let mut sum = 0;
                        for handle in handles {
                            sum += handle.await.unwrap();
                        }
                        sum
                    });
                    all_polled.await.unwrap();
                    go.send(()).unwrap();
                    sums.push(fan_in.await.unwrap());
                }
                Ok::<_, Cancelled>(sums)
            }))
            .unwrap()
            .unwrap();
        let expected = u64::from(CHILDREN) * u64::from(CHILDREN - 1) / 2;
        assert_eq!(sums, vec![expected, expected]);
    });
}
