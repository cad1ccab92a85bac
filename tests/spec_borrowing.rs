//! SPEC B1: local scopes whose children borrow from the caller's stack.

mod common;

use std::cell::Cell;
use std::time::Duration;

use common::LiveFutures;
use tokio::time::Instant;
use tokio_nursery::*;

#[tokio::test(start_paused = true)]
async fn b1_children_borrow_from_the_stack_and_run_concurrently() {
    common::leak_checked(async move {
        let start = Instant::now();
        let counter = Cell::new(0); // not Sync, not 'static: borrowed by every child
        let out = local_scope(async |s| {
            for _ in 0..10 {
                s.spawn(async {
                    sleep(Duration::from_millis(10)).await?;
                    counter.set(counter.get() + 1);
                    Ok::<_, Cancelled>(())
                });
            }
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(counter.get(), 10);
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(10),
            "concurrent, not one after another"
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn b1_the_first_failure_cancels_the_rest_and_every_failure_is_returned() {
    common::leak_checked(async move {
        let cleaned = Cell::new(0);
        let out = local_scope(async |s| {
            s.spawn(async {
                sleep(Duration::from_millis(5)).await?;
                Err::<(), _>(std::io::Error::other("first"))
            });
            for _ in 0..3 {
                s.spawn(async {
                    let cancelled = cancelled().await;
                    assert!(matches!(cancelled.reason(), CancelReason::SiblingFailed));
                    cleaned.set(cleaned.get() + 1);
                    Err::<(), _>(cancelled.into())
                });
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        let error = out.unwrap_err();
        assert_eq!(error.failures().len(), 1);
        assert_eq!(error.failures()[0].error().to_string(), "first");
        assert_eq!(cleaned.get(), 3);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn b1_a_child_panic_is_resumed_after_the_others_stopped() {
    common::leak_checked(async move {
        use futures::FutureExt;
        let stopped = Cell::new(false);
        let result = std::panic::AssertUnwindSafe(local_scope(async |s| {
            s.spawn(async {
                panic!("local boom");
                #[allow(unreachable_code)]
                Ok::<(), Cancelled>(())
            });
            s.spawn(async {
                let c = cancelled().await;
                stopped.set(true);
                Err::<(), _>(c)
            });
            Ok::<_, Cancelled>(())
        }))
        .catch_unwind()
        .await;
        let payload = result.unwrap_err();
        assert_eq!(panic_message(&*payload), Some("local boom"));
        assert!(stopped.get());
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn b1_deadlines_and_cancellation_reach_the_children() {
    common::leak_checked(async move {
        let start = Instant::now();
        let out = move_on_after(Duration::from_millis(20), async {
            local_scope(async |s| {
                let h = s.spawn(async {
                    sleep(Duration::from_secs(10)).await?;
                    Ok::<_, Cancelled>(())
                });
                assert!(matches!(current_deadline(), EffectiveDeadline::At(_)));
                h.await.map_err(Cancelled::from_join)?;
                Ok::<_, Cancelled>(())
            })
            .await
            .map_err(|e| match e {
                NurseryError::Cancelled(c) => c,
                other => panic!("{other:?}"),
            })
        })
        .await;
        assert_eq!(
            out.unwrap(),
            None,
            "the timeout's scope absorbed the echoes"
        );
        assert_eq!(start.elapsed(), Duration::from_millis(20));
    })
    .await
}

trait FromJoin {
    fn from_join(error: JoinError) -> Cancelled;
}

impl FromJoin for Cancelled {
    fn from_join(error: JoinError) -> Cancelled {
        match error {
            JoinError::Cancelled(c) => c,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn b1_dropping_the_scope_drops_its_children_at_once() {
    common::leak_checked(async move {
        let live = LiveFutures::default();
        let scope = local_scope(async |s| {
            for _ in 0..5 {
                s.spawn(live.track(async {
                    tokio::time::sleep(Duration::from_secs(100)).await;
                    Ok::<_, Cancelled>(())
                }));
            }
            std::future::pending::<()>().await;
            Ok::<_, Cancelled>(())
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(1), scope)
                .await
                .is_err()
        );
        assert_eq!(live.created(), 5);
        assert_eq!(live.live(), 0, "dropped with the scope, at once");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn b1_a_hundred_thousand_children_that_checkpoint() {
    common::leak_checked(async move {
        let done = Cell::new(0u32);
        let out = local_scope(async |s| {
            for _ in 0..100_000 {
                s.spawn(async {
                    for _ in 0..3 {
                        checkpoint().await?;
                    }
                    done.set(done.get() + 1);
                    Ok::<_, Cancelled>(())
                });
            }
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(done.get(), 100_000);
    })
    .await
}

/// A local child runs in the local scope's node until it needs its own: cancelling it
/// through its handle works whether it is parked at a cancellation point (it has its own
/// scope then), has not run yet (its scope is made by the cancel), or has ended (a no-op),
/// and reaches no sibling.
#[tokio::test(start_paused = true)]
async fn b1_a_handle_cancels_its_child_alone_with_or_without_a_scope_of_its_own() {
    common::leak_checked(async move {
        let start = Instant::now();
        let out = local_scope(async |s| {
            let parked = s.spawn(async {
                sleep(Duration::from_secs(10)).await?;
                Ok::<_, Cancelled>("parked finished")
            });
            let sibling = s.spawn(async {
                sleep(Duration::from_millis(30)).await?;
                Ok::<_, Cancelled>("sibling finished")
            });
            let done = s.spawn(async { Ok::<_, Cancelled>("done") });
            assert_eq!(done.await.unwrap(), "done");
            done_cancel_is_a_no_op(&s.spawn(async { Ok::<_, Cancelled>(()) })).await;
            // Not polled yet: no scope of its own until the cancel makes one.
            let unpolled = s.spawn(async {
                checkpoint().await?;
                Ok::<_, Cancelled>("unpolled finished")
            });
            unpolled.cancel();
            sleep(Duration::from_millis(10)).await?;
            parked.cancel();
            assert!(matches!(parked.await, Err(JoinError::ChildCancelled)));
            assert!(matches!(unpolled.await, Err(JoinError::ChildCancelled)));
            assert_eq!(sibling.await.unwrap(), "sibling finished");
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(
            out.unwrap(),
            Some(()),
            "a child's cancellation is no failure"
        );
        assert_eq!(start.elapsed(), Duration::from_millis(30));
    })
    .await
}

/// Cancelling a local child that has already ended changes nothing.
async fn done_cancel_is_a_no_op(handle: &LocalHandle<'_, ()>) {
    tokio::task::yield_now().await;
    handle.cancel();
}
