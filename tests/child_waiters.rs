//! A nursery child that has no scope of its own waits at its cancellation points on its
//! nursery's scope (DESIGN.md, "Nurseries": a child's waiters). These tests hold the cases
//! where the child's own scope is made while a waiter is parked on the nursery's: the
//! waiter must move there, so a cancellation of the child alone still reaches it, and a
//! shield raised on the child's scope still protects it. `futures::join!` polls its branches
//! in order on every wake, so the parked branch is polled before the branch that makes the
//! scope, and only the move can wake it.

mod common;

use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_nursery::*;

/// A missed wake-up would leave the test waiting for ever: under the paused clock this
/// bound turns it into a failure (virtual time, so it costs nothing when all goes well).
async fn bounded<T>(nursery: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(3600), nursery)
        .await
        .expect("a parked child was never woken")
}

/// Parks at a cancellation point until cancelled.
async fn park() -> Result<(), Cancelled> {
    pending::<()>().cancellable().await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_handles_cancel_reaches_a_child_parked_in_its_nurserys_scope() {
    common::leak_checked(async {
        let out = bounded(nursery(|n| async move {
            let child = n.spawn(park());
            let sibling = n.spawn(async { sleep(Duration::from_secs(1)).await });
            tokio::task::yield_now().await; // both parked
            child.cancel();
            assert!(matches!(child.await, Err(JoinError::ChildCancelled)));
            // The sibling was not cancelled: it sleeps its full second.
            let before = tokio::time::Instant::now();
            assert!(sibling.await.is_ok());
            assert_eq!(before.elapsed(), Duration::from_secs(1));
            Ok::<_, Cancelled>(())
        }))
        .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_handles_cancel_reaches_every_point_a_child_has_parked() {
    common::leak_checked(async {
        let out = bounded(nursery(|n| async move {
            let child = n.spawn(async {
                let (a, b, c) = futures::join!(park(), park(), cancelled());
                assert!(a.is_err() && b.is_err());
                assert!(matches!(c.reason(), CancelReason::Explicit(_)));
                a
            });
            tokio::task::yield_now().await;
            child.cancel();
            assert!(matches!(child.await, Err(JoinError::ChildCancelled)));
            Ok::<_, Cancelled>(())
        }))
        .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await;
}

/// The child's own scope is made by `current_scope()` in one branch while the other is
/// parked on the nursery's scope; that scope's handle then cancels the child alone.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_childs_own_scope_made_while_a_branch_is_parked_cancels_that_branch() {
    common::leak_checked(async {
        let out = bounded(nursery(|n| async move {
            let child = n.spawn(async {
                let (parked, cancelled_at) = futures::join!(park(), async {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let own = current_scope().expect("in the child's scope");
                    own.cancel();
                    tokio::time::Instant::now()
                });
                let err = parked.expect_err("the parked branch is told");
                assert_eq!(cancelled_at.elapsed(), Duration::ZERO);
                Err::<(), _>(err)
            });
            assert!(matches!(child.await, Err(JoinError::ChildCancelled)));
            Ok::<_, Cancelled>(())
        }))
        .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await;
}

/// A deadline set on the child's own scope after a branch parked on the nursery's scope.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_deadline_on_the_childs_own_scope_reaches_a_branch_parked_before_it_was_made() {
    common::leak_checked(async {
        let out = bounded(nursery(|n| async move {
            let child = n.spawn(async {
                let start = tokio::time::Instant::now();
                let (parked, ()) = futures::join!(park(), async {
                    tokio::task::yield_now().await;
                    let own = current_scope().expect("in the child's scope");
                    own.set_deadline(Some(start + Duration::from_secs(3)));
                });
                let err = parked.expect_err("the deadline reaches the parked branch");
                assert!(err.reason().is_deadline());
                assert_eq!(start.elapsed(), Duration::from_secs(3));
                Ok::<_, Cancelled>(())
            });
            assert!(child.await.is_ok(), "the child handled its cancellation");
            Ok::<_, Cancelled>(())
        }))
        .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await;
}

/// A shield raised on the child's own scope while a branch is parked on the nursery's: the
/// nursery's cancellation wakes that branch, which finds itself shielded and waits on.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_shield_raised_while_a_branch_is_parked_keeps_the_nurserys_cancellation_out() {
    common::leak_checked(async {
        let start = tokio::time::Instant::now();
        let ended = Arc::new(std::sync::Mutex::new(None));
        let record = ended.clone();
        let out = bounded(nursery(|n| async move {
            n.spawn(async move {
                let (parked, ()) = futures::join!(sleep(Duration::from_secs(5)), async {
                    tokio::task::yield_now().await;
                    current_scope()
                        .expect("in the child's scope")
                        .set_shield(true);
                });
                *record.lock().unwrap() = Some((parked.is_ok(), start.elapsed()));
                Ok::<_, Cancelled>(())
            });
            // The shield is up after the child's first two polls.
            tokio::time::sleep(Duration::from_secs(1)).await;
            n.cancel();
            Ok::<_, Cancelled>(())
        }))
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(
            *ended.lock().unwrap(),
            Some((true, Duration::from_secs(5))),
            "shielded: the sleep ran to its end"
        );
    })
    .await;
}

/// The nursery's cancellation reaches ten thousand children parked in its scope, each told
/// the nursery's scope and reason.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_nurserys_cancel_reaches_every_child_parked_in_its_scope() {
    common::leak_checked(async {
        let told = Arc::new(AtomicUsize::new(0));
        let seen = told.clone();
        let out = bounded(nursery(|n| async move {
            let id = current_scope().expect("the nursery's scope").id();
            for _ in 0..10_000 {
                let told = told.clone();
                n.spawn(async move {
                    let err = park().await.expect_err("cancelled");
                    if err.scope() == id && matches!(err.reason(), CancelReason::Explicit(_)) {
                        told.fetch_add(1, Ordering::SeqCst);
                    }
                    Err::<(), _>(err)
                });
            }
            tokio::task::yield_now().await;
            n.cancel();
            Ok::<_, Cancelled>(())
        }))
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(seen.load(Ordering::SeqCst), 10_000);
    })
    .await;
}

/// On two workers: handles cancel children while they park, and the nursery is cancelled
/// while others park. Every child is told; nothing hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_racing_with_children_parking_on_two_workers() {
    common::leak_checked(async {
        for round in 0..20 {
            let told = Arc::new(AtomicUsize::new(0));
            let seen = told.clone();
            let out = tokio::time::timeout(
                Duration::from_secs(60),
                nursery(|n| async move {
                    let handles: Vec<_> = (0..200)
                        .map(|_| {
                            let told = told.clone();
                            n.spawn(async move {
                                let out = park().await;
                                if out.is_err() {
                                    told.fetch_add(1, Ordering::SeqCst);
                                }
                                out
                            })
                        })
                        .collect();
                    for handle in handles.iter().step_by(2) {
                        handle.cancel();
                    }
                    if round % 2 == 0 {
                        tokio::task::yield_now().await;
                    }
                    n.cancel();
                    Ok::<_, Cancelled>(())
                }),
            )
            .await
            .expect("no hang");
            assert_eq!(out.unwrap(), Some(()));
            assert_eq!(seen.load(Ordering::SeqCst), 200);
        }
    })
    .await;
}
