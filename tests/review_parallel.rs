//! Regression tests for session 11's review of parallel borrowing scopes (SPEC B2, S12,
//! S14): each fails on the code before its fix.
#![cfg(feature = "rt-multi-thread")]

mod common;

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use common::{Unfinished, wait_until};
use tokio_nursery::*;

/// SPEC S12 + B2: a hard scope that puts off dropping its body while a parallel scope runs
/// in it must wait for the exemption's end (which wakes it), not re-poll its body in a busy
/// loop: `wait_hard` wakes the task at once whenever the node is cancelled, and the
/// deferred branch calls it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_p_a_hard_scope_waiting_for_a_parallel_scope_does_not_spin() {
    let polls = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let scope = CancelScope::new().hard();
    let handle = scope.handle();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (polls2, release2) = (polls.clone(), release.clone());
    let task = tokio::spawn(scope.run(async move {
        let local = 3u64;
        let borrowed = &local;
        let release2 = &*release2;
        // SAFETY: awaited to completion here (the hard scope puts off its drop).
        let mut parallel = pin!(unsafe {
            parallel_scope_async(|s| async move {
                s.spawn(async move {
                    let _ = started_tx.send(());
                    release2.notified().await; // not a cancellation point
                    assert_eq!(*borrowed, 3);
                    Ok::<_, Cancelled>(())
                });
                Ok::<_, Cancelled>(())
            })
        });
        let _ = std::future::poll_fn(|cx| {
            polls2.fetch_add(1, SeqCst);
            parallel.as_mut().poll(cx)
        })
        .await;
        std::future::pending::<()>().await;
        Ok::<_, Cancelled>(())
    }));
    started_rx.await.unwrap();
    let before = polls.load(SeqCst);
    handle.cancel();
    // Correct code polls the body once more (S12), then waits: the count stays put however
    // long this waits. A busy loop passes 1000 polls quickly; 200 ms real time at most.
    let until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < until && polls.load(SeqCst) - before < 1000 {
        tokio::task::yield_now().await;
    }
    let during = polls.load(SeqCst) - before;
    release.notify_one();
    assert!(matches!(task.await.unwrap(), Ok(None)));
    assert!(
        during < 50,
        "the hard scope re-polled its body {during} times while the parallel scope ran"
    );
}

/// SPEC B2 ("the crate never drops it itself ... exempt from aborts (N7 cascade, N8)") and
/// S14: a task handed to a `NurseryExecutor` is aborted by its adopter's abort-mode drop
/// through `executor::Stopper::stop_all`, which does not consult the exemption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_p_an_executor_task_running_a_parallel_scope_is_not_aborted() {
    let cut_short = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let release = Arc::new(tokio::sync::Notify::new());
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (c, f, r) = (cut_short.clone(), finished.clone(), release.clone());
    let outer = tokio::spawn(Nursery::new().drop_mode(DropMode::Abort).run(
        move |_n: NurseryHandle<Cancelled>| async move {
            let executor = NurseryExecutor::current().unwrap();
            executor.spawn(async move {
                let local = 7u64;
                let borrowed = &local;
                let (c, f, r) = (&*c, &*f, &*r);
                // SAFETY: awaited to completion here; the runtime outlives the test.
                let _ = unsafe {
                    parallel_scope_async(|s| async move {
                        s.spawn(async move {
                            let mut guard = Unfinished {
                                flag: c,
                                finished: false,
                            };
                            let _ = started_tx.send(());
                            r.notified().await; // not a cancellation point
                            assert_eq!(*borrowed, 7);
                            guard.finished = true;
                            f.store(true, SeqCst);
                            Ok::<_, Cancelled>(())
                        });
                        Ok::<_, Cancelled>(())
                    })
                }
                .await;
            });
            std::future::pending::<Result<(), Cancelled>>().await
        },
    ));
    started_rx.await.unwrap();
    outer.abort(); // the nursery's abort-mode drop (N8) stops its adoptees
    let _ = outer.await;
    // Give tokio the time to carry out an abort, if one is coming (as the crate's own
    // put-off tests do).
    for _ in 0..1000 {
        if cut_short.load(SeqCst) {
            break;
        }
        tokio::task::yield_now().await;
    }
    release.notify_one();
    wait_until("the parallel child ends or is dropped", || {
        finished.load(SeqCst) || cut_short.load(SeqCst)
    })
    .await;
    assert!(
        !cut_short.load(SeqCst),
        "the crate aborted an executor task while a parallel scope ran in it: the child \
         was dropped mid-await by the backstop"
    );
}

/// A parallel scope whose one child borrows a local, sets `started`, and waits for
/// `release` (not a cancellation point).
async fn a_parallel_scope_until(release: Arc<tokio::sync::Notify>, started: Arc<AtomicBool>) {
    let local = 1u64;
    let borrowed = &local;
    let (release, started) = (&*release, &*started);
    // SAFETY: awaited to completion here; the runtime outlives the test.
    let _ = unsafe {
        parallel_scope_async(|s| async move {
            s.spawn(async move {
                started.store(true, SeqCst);
                release.notified().await;
                assert_eq!(*borrowed, 1);
                Ok::<_, Cancelled>(())
            });
            Ok::<_, Cancelled>(())
        })
    }
    .await;
}

/// `carry_scope` runs another task's future in a nursery child's own scope node; a
/// parallel scope there exempts that node. The child's abort (grace expired) is then put
/// off although no parallel scope runs in the child, and when the other task's scope ends
/// the exemption wakes the other task, not the child: the abort is never carried out and the
/// nursery waits for ever for a child that ignores its cancellation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_p_a_parallel_scope_in_a_carried_task_does_not_lose_the_carriers_abort() {
    let release = Arc::new(tokio::sync::Notify::new());
    let started = Arc::new(AtomicBool::new(false));
    let (r, st) = (release.clone(), started.clone());
    let nursery_task = tokio::spawn(Nursery::new().grace(Duration::from_millis(20)).run(
        move |n: NurseryHandle<Cancelled>| async move {
            let (r2, st2) = (r.clone(), st.clone());
            n.spawn(async move {
                // A plain task that carries this child's scope and runs a parallel scope.
                drop(tokio::spawn(carry_scope(a_parallel_scope_until(r2, st2))));
                // Ignores its cancellation: only the grace's abort ends it.
                std::future::pending::<()>().await;
                Ok::<_, Cancelled>(())
            });
            while !st.load(SeqCst) {
                tokio::task::yield_now().await;
            }
            n.scope().cancel();
            Ok::<_, Cancelled>(())
        },
    ));
    wait_until("the carried parallel child starts", || started.load(SeqCst)).await;
    // Well past the 20 ms grace (real time; a slower run only makes the test pass vacuously).
    tokio::time::sleep(Duration::from_millis(300)).await;
    release.notify_one();
    wait_until(
        "the nursery ends (its child aborted after the grace)",
        || nursery_task.is_finished(),
    )
    .await;
}

/// The same root cause seen from a hard scope (S12): a parallel scope in another task that
/// carries the hard scope (`carry_scope`) exempts the hard scope's node, so the hard scope
/// puts off dropping its own body, which runs no parallel scope, until that other task's
/// scope ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_p_a_carried_parallel_scope_does_not_put_off_the_carriers_hard_drop() {
    let release = Arc::new(tokio::sync::Notify::new());
    let started = Arc::new(AtomicBool::new(false));
    let scope = CancelScope::new().hard();
    let handle = scope.handle();
    let (r, st) = (release.clone(), started.clone());
    let task = tokio::spawn(scope.run(async move {
        drop(tokio::spawn(carry_scope(a_parallel_scope_until(r, st))));
        std::future::pending::<()>().await; // dropped here by the hard scope
        Ok::<_, Cancelled>(())
    }));
    wait_until("the carried parallel child starts", || started.load(SeqCst)).await;
    handle.cancel();
    wait_until(
        "the hard scope drops its body (no parallel scope runs in it)",
        || task.is_finished(),
    )
    .await;
    release.notify_one();
    assert!(matches!(task.await.unwrap(), Ok(None)));
}

/// A runtime dropped while a thread blocks in the safe `parallel_scope`, whose body waits
/// for its scope's cancellation ("serve until cancelled"): tokio drops the children but
/// cannot drop the blocked thread's future, and its shutdown waited for that thread for
/// ever. The scope is now cancelled (reason `Shutdown`) when its runtime shuts down.
#[test]
fn review_p_a_runtime_dropped_under_a_blocking_parallel_scope_does_not_hang() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let started = Arc::new(AtomicBool::new(false));
        let st = started.clone();
        runtime.spawn(async move {
            let data = vec![1u8; 8];
            let _ = parallel_scope(async |s| {
                s.spawn(async {
                    let _borrowed = &data;
                    st.store(true, SeqCst);
                    std::future::pending::<()>().await;
                    Ok::<_, Cancelled>(())
                });
                Err::<(), _>(cancelled().await)
            });
        });
        while !started.load(SeqCst) {
            std::thread::yield_now();
        }
        drop(runtime);
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).is_ok(),
        "hang: the runtime's drop never returned"
    );
}
