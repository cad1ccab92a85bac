mod common;

use std::time::Duration;
use tokio::time::Instant;
use tokio_nursery::*;

#[tokio::test(start_paused = true)]
async fn move_on_after_cancels_at_deadline() {
    common::leak_checked(async move {
        let start = Instant::now();
        let out = move_on_after(Duration::from_millis(10), async {
            sleep(Duration::from_millis(50)).await?;
            Ok::<_, Cancelled>(1)
        })
        .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(start.elapsed(), Duration::from_millis(10));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn nested_outer_absorbs() {
    common::leak_checked(async move {
        let outer = CancelScope::new();
        let oh = outer.handle();
        let inner = CancelScope::new();
        let ih = inner.handle();
        let out = outer
            .run(async {
                let r = inner
                    .run(async {
                        current_scope().unwrap().cancel();
                        oh.cancel();
                        let e = checkpoint().await.unwrap_err();
                        assert_eq!(e.scope(), oh.id());
                        Err::<(), _>(e)
                    })
                    .await;
                assert!(r.is_err());
                r
            })
            .await;
        assert!(matches!(out, Ok(None)));
        assert!(!ih.cancelled_caught());
        assert!(oh.cancelled_caught());
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn hard_scope_drops_body() {
    common::leak_checked(async move {
        let scope = CancelScope::new()
            .with_timeout(Duration::from_millis(5))
            .hard();
        let h = scope.handle();
        let out = scope
            .run(async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert!(matches!(out, Ok(None)));
        assert!(h.cancelled_caught());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carried_deadline_reaches_other_task() {
    common::leak_checked(async move {
        let out = move_on_after(Duration::from_millis(50), async {
            let t = tokio::spawn(carry_scope(async {
                while !is_cancelled() {
                    std::hint::spin_loop();
                }
                check_cancelled()
            }));
            t.await.unwrap()
        })
        .await;
        assert!(matches!(out, Ok(None)));
    })
    .await
}

// The leak check itself (SPEC R3): it fails on a task left behind, and it does not advance the
// paused clock while it waits, so a task that would end by itself later is a leak too.

#[tokio::test(start_paused = true)]
#[should_panic(expected = "leak (SPEC R3): 1 task(s) still alive")]
async fn the_leak_check_catches_a_forgotten_task() {
    let forgotten = tokio::spawn(std::future::pending::<()>());
    common::assert_no_tasks_left_within(Duration::from_millis(200)).await;
    drop(forgotten);
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "leak (SPEC R3): 1 task(s) still alive")]
async fn the_leak_check_does_not_advance_the_paused_clock() {
    let start = Instant::now();
    let timer = tokio::spawn(tokio::time::sleep(Duration::from_millis(1)));
    let check = std::panic::AssertUnwindSafe(common::assert_no_tasks_left_within(
        Duration::from_millis(200),
    ));
    let result = futures::FutureExt::catch_unwind(check).await;
    assert_eq!(start.elapsed(), Duration::ZERO, "the clock moved");
    drop(timer);
    std::panic::resume_unwind(result.unwrap_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leak_check_waits_for_tasks_ending_on_other_workers() {
    common::leak_checked(async move {
        let tasks: Vec<_> = (0..100).map(|_| tokio::spawn(async {})).collect();
        drop(tasks); // detached: they end on the workers, the check waits for them
    })
    .await
}
