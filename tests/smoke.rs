use std::time::Duration;
use tokio::time::Instant;
use tokio_nursery::*;

#[tokio::test(start_paused = true)]
async fn move_on_after_cancels_at_deadline() {
    let start = Instant::now();
    let out = move_on_after(Duration::from_millis(10), async {
        sleep(Duration::from_millis(50)).await?;
        Ok::<_, Cancelled>(1)
    })
    .await;
    assert_eq!(out.unwrap(), None);
    assert_eq!(start.elapsed(), Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn nested_outer_absorbs() {
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
}

#[tokio::test(start_paused = true)]
async fn hard_scope_drops_body() {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carried_deadline_reaches_other_task() {
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
}
