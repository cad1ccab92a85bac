//! Regression tests for session 11's review of the drop paths and adoption (SPEC N9b, N12,
//! S14): each fails on the code before its fix.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_nursery::{Cancelled, DropMode, JoinError, Nursery, NurseryHandle, cancelled};

/// N9b + N12: a `BlockingWait` nursery whose `spawn_local` children live on a `LocalSet`
/// driven by a multi-thread runtime's `block_on` thread, dropped on that thread outside the
/// `LocalSet`. Only this thread can run the local children, so blocking it cannot help: the
/// drop should fall back to N9. It blocks for the whole grace (wall clock), then aborts a
/// child that would have finished its cleanup at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The nursery's future is returned from the `LocalSet` on purpose, to be dropped outside it.
#[allow(clippy::async_yields_async)]
async fn blocking_wait_of_local_children_dropped_on_their_local_sets_thread_falls_back() {
    let local = tokio::task::LocalSet::new();
    let cleaned = Arc::new(AtomicBool::new(false));
    let c2 = cleaned.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let inner = local
        .run_until(async move {
            let mut inner = Box::pin(
                Nursery::new()
                    .drop_mode(DropMode::BlockingWait)
                    .grace(Duration::from_secs(2))
                    .run(move |n: NurseryHandle<Cancelled>| async move {
                        let not_send = std::rc::Rc::new(());
                        let child = n.spawn_local(async move {
                            let c = cancelled().await;
                            let _keep = not_send;
                            c2.store(true, Ordering::SeqCst); // cleanup that takes no time
                            Err::<(), _>(c)
                        });
                        tx.send(child).unwrap();
                        std::future::pending::<Result<(), Cancelled>>().await
                    }),
            );
            assert!(futures::poll!(inner.as_mut()).is_pending());
            tokio::task::yield_now().await; // the child parks on its cancellation
            inner
        })
        .await;
    let started = std::time::Instant::now();
    drop(inner); // on the LocalSet's thread, outside it
    let blocked = started.elapsed();
    let child = rx.await.unwrap();
    let joined = local
        .run_until(tokio::time::timeout(Duration::from_secs(10), child))
        .await
        .expect("hang");
    assert!(
        cleaned.load(Ordering::SeqCst),
        "the local child never got to clean up: {joined:?}; the drop blocked for {blocked:?}"
    );
    assert!(
        matches!(joined, Err(JoinError::ChildCancelled)),
        "{joined:?}"
    );
}

/// S14: `execute` into a closed nursery "hands the future to the nearest live ancestor".
/// The executor remembers only the scope right around the nursery; when that is a plain
/// scope (a request's deadline scope, say) that has ended, the walk stops there (an ended
/// scope forgets its parent) and the future goes to the orphan registry although the
/// enclosing nursery `outer` is alive: `outer` neither waits for it nor cancels it.
#[tokio::test(start_paused = true)]
async fn execute_into_a_closed_nursery_inside_an_ended_scope_goes_to_the_live_ancestor() {
    use tokio_nursery::{CancelScope, NurseryExecutor, nursery, orphan_count};
    let ran = Arc::new(AtomicBool::new(false));
    let r2 = ran.clone();
    let out = Nursery::new()
        .name("outer")
        .run(|outer: NurseryHandle<Cancelled>| async move {
            // A request scope with a deadline, a nursery in it, an executor of that nursery.
            let executor = CancelScope::new()
                .with_timeout(Duration::from_secs(60))
                .run(async {
                    nursery(|inner| async move { Ok::<_, Cancelled>(NurseryExecutor::new(&inner)) })
                        .await
                        .map(|executor| executor.unwrap())
                        .map_err(|_| -> Cancelled { unreachable!() })
                })
                .await;
            let executor: NurseryExecutor = executor.unwrap().unwrap();
            // Both the nursery and its enclosing scope have ended; `outer` is alive.
            executor.spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                r2.store(true, Ordering::SeqCst);
            });
            assert_eq!(
                orphan_count(),
                0,
                "orphaned although `outer` is a live ancestor"
            );
            assert_eq!(outer.live_children(), 1, "`outer` adopted the future");
            Ok::<_, Cancelled>(())
        })
        .await;
    assert!(out.is_ok(), "{out:?}");
    assert!(
        ran.load(Ordering::SeqCst),
        "`outer` waited for the adopted future"
    );
    tokio_nursery::orphans_finished().await;
}
