//! Regression tests for session 11's review of the cancel-correctness tools (SPEC S15, C1,
//! N6, N7): each fails on the code before its fix.

mod common;

use std::time::Duration;

use futures::FutureExt;
use tokio_nursery::*;

/// A helper returning `io::Result` that `?`s a cancellation point: the `Cancelled` is now an
/// `io::Error`, which its caller boxes with another `?`.
async fn io_helper() -> std::io::Result<()> {
    sleep(Duration::from_secs(60)).await?;
    Ok(())
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::test(start_paused = true)]
async fn s15_a_cancelled_inside_an_io_error_inside_a_box_is_an_echo() {
    common::leak_checked(async move {
        let out = move_on_after(Duration::from_millis(10), async {
            io_helper().await?;
            Ok::<_, BoxError>(())
        })
        .await;
        assert!(matches!(out, Ok(None)), "not absorbed: {out:?}");
    })
    .await
}

#[cfg(feature = "anyhow")]
#[tokio::test(start_paused = true)]
async fn s15_a_cancelled_inside_an_io_error_inside_anyhow_is_an_echo() {
    common::leak_checked(async move {
        let out = move_on_after(Duration::from_millis(10), async {
            io_helper().await?;
            Ok::<_, anyhow::Error>(())
        })
        .await;
        assert!(matches!(out, Ok(None)), "not absorbed: {out:?}");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s15_a_childs_boxed_io_cancellation_is_not_a_failure() {
    common::leak_checked(async move {
        let out = Nursery::new()
            .run(|n: NurseryHandle<BoxError>| async move {
                n.spawn(async {
                    io_helper().await?;
                    Ok::<_, BoxError>(())
                });
                n.cancel();
                Ok(())
            })
            .await;
        assert!(out.is_ok(), "an echo became a failure: {out:?}");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn c1_an_abort_drop_does_not_cancel_protected_work() {
    common::leak_checked(async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let nursery = Nursery::new().drop_mode(DropMode::Abort).run(
            |_n: NurseryHandle<Cancelled>| async move {
                drop(protect(async move {
                    // A cancellation point: it would report a cancellation that reached it.
                    let slept = sleep(Duration::from_millis(30)).await;
                    tx.send(slept.map_err(|c| c.reason().clone())).unwrap();
                }));
                std::future::pending::<()>().await;
                Ok(())
            },
        );
        // Dropped after 5 ms, in abort mode.
        assert!(
            tokio::time::timeout(Duration::from_millis(5), nursery)
                .await
                .is_err()
        );
        orphans_finished().await;
        let slept = rx.await.unwrap();
        assert!(slept.is_ok(), "the protected work was cancelled: {slept:?}");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn c1_protected_work_started_after_the_grace_ran_out_is_told_grace_expired() {
    common::leak_checked(async move {
        let (early_tx, early_rx) = tokio::sync::oneshot::channel();
        let (late_tx, late_rx) = tokio::sync::oneshot::channel();
        let run = Nursery::new().grace(Duration::from_millis(10)).run(
            |n: NurseryHandle<Cancelled>| async move {
                drop(protect(async move {
                    let slept = sleep(Duration::from_secs(3600)).await;
                    early_tx
                        .send(slept.map_err(|c| c.reason().clone()))
                        .unwrap();
                }));
                n.cancel();
                // Slow to stop (no cancellation point): the grace runs out meanwhile.
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(protect(async move {
                    let slept = sleep(Duration::from_secs(3600)).await;
                    late_tx.send(slept.map_err(|c| c.reason().clone())).unwrap();
                }));
                Ok(())
            },
        );
        let out = tokio::time::timeout(Duration::from_secs(60), run).await;
        assert!(
            matches!(early_rx.await.unwrap(), Err(CancelReason::GraceExpired)),
            "the protected work running when the grace ran out is told"
        );
        assert!(
            matches!(late_rx.await.unwrap(), Err(CancelReason::GraceExpired)),
            "so is protected work started after"
        );
        assert!(
            out.is_ok(),
            "the nursery waited an hour for work it never told"
        );
    })
    .await
}

#[derive(Debug)]
struct Payload(u32);

#[tokio::test(start_paused = true)]
async fn n6_a_panic_of_awaited_protected_work_reaches_the_parent_with_its_payload() {
    common::leak_checked(async move {
        let reports = common::nursery::Log::default();
        let log = reports.clone();
        let out = std::panic::AssertUnwindSafe(
            Nursery::new()
                .on_report(move |report| log.push(report.to_string()))
                .run(|n: NurseryHandle<Cancelled>| async move {
                    n.spawn(async {
                        protect(async { std::panic::panic_any(Payload(7)) }).await;
                        Ok::<_, Cancelled>(())
                    });
                    Ok(())
                }),
        )
        .catch_unwind()
        .await;
        let payload = out.expect_err("the nursery resumes its child's panic");
        assert!(
            matches!(payload.downcast_ref::<Payload>(), Some(Payload(7))),
            "the payload was replaced"
        );
        assert!(reports.events().is_empty(), "{:?}", reports.events());
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn n6_a_panic_of_protected_work_whose_handle_is_dropped_goes_to_the_report_hook() {
    common::leak_checked(async move {
        for awaited_first in [false, true] {
            let reports = common::nursery::Log::default();
            let log = reports.clone();
            let out = Nursery::new()
                .on_report(move |report| log.push(report.to_string()))
                .run(|_n: NurseryHandle<Cancelled>| async move {
                    let work = protect(async {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        panic!("protected boom")
                    });
                    if awaited_first {
                        // Held past the panic, never polled to the end, then dropped.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    drop(work);
                    Ok(())
                })
                .await;
            assert!(matches!(out, Ok(Some(()))), "{out:?}");
            let events = reports.events();
            assert_eq!(events.len(), 1, "{events:?}");
            assert!(events[0].contains("protected boom"), "{events:?}");
        }
    })
    .await
}

/// Session 11's review of adoption: protected work spawned on a runtime that shuts down
/// before polling it. tokio drops the task unpolled (accepted: only the root protects
/// against runtime shutdown), but the adopter must hear that it ended (N9: never a deadlock).
#[tokio::test(start_paused = true)]
async fn c1_protected_work_its_runtime_drops_unpolled_does_not_wedge_its_adopter() {
    let out = tokio::time::timeout(
        Duration::from_secs(3600),
        nursery(|_n: NurseryHandle<Cancelled>| async move {
            let carried = carry_scope(async {
                drop(protect(async {}));
            });
            std::thread::spawn(move || {
                let other = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                // Spawns the protected work on `other`, which is dropped before polling it.
                other.block_on(carried);
            })
            .join()
            .unwrap();
            Ok(())
        }),
    )
    .await;
    assert!(out.is_ok(), "the nursery waits for ever");
}
