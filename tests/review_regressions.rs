//! Regression tests for the first code review of the scope core (each names its finding).

mod common;

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tokio_nursery::*;

/// A helper scope whose body links its node and then panics in its first poll must still
/// end: unlinked from its parent, its deadline disarmed (no service task left, SPEC R3).
#[tokio::test(flavor = "current_thread")]
async fn lazy_first_poll_panic_ends_the_scope() {
    common::leak_checked(async move {
        let outer = CancelScope::new();
        let outer_handle = outer.handle();
        let (tx, rx) = std::sync::mpsc::channel();
        let out = outer
            .run(async move {
                let body = move_on_after(Duration::from_secs(3600), async move {
                    tx.send(current_scope().unwrap()).unwrap(); // links the node, arms the deadline
                    if tx_is_ready() {
                        panic!("boom in the first poll");
                    }
                    Ok::<(), Cancelled>(())
                });
                assert!(AssertUnwindSafe(body).catch_unwind().await.is_err());
                Ok::<_, Cancelled>(())
            })
            .await;
        assert!(matches!(out, Ok(Some(()))));
        let inner = rx.recv().unwrap();
        outer_handle.cancel();
        assert!(
            !inner.is_cancelled(),
            "the inner scope is still linked under the outer one"
        );
        common::settle_tasks(0).await;
    })
    .await
}

fn tx_is_ready() -> bool {
    true
}

/// `Duration::MAX` means "no limit", as tokio reads it: no overflow panic.
#[tokio::test(flavor = "current_thread")]
async fn duration_max_is_no_limit() {
    common::leak_checked(async move {
        let sleeping = sleep(Duration::MAX);
        drop(sleeping);
        let out = move_on_after(Duration::MAX, async { Ok::<_, Cancelled>(1) }).await;
        assert_eq!(out.unwrap(), Some(1));
        let out = CancelScope::new()
            .with_timeout(Duration::MAX)
            .run(async { Ok::<_, Cancelled>(2) })
            .await;
        assert_eq!(out.unwrap(), Some(2));
        let out = move_on_after(Duration::MAX, async {
            tokio::task::yield_now().await; // goes pending: the scope links and arms its deadline
            Ok::<_, Cancelled>(3)
        })
        .await;
        assert_eq!(out.unwrap(), Some(3));
        common::settle_tasks(0).await;
    })
    .await
}

/// A deadline on a runtime without a time driver fails loudly in the caller with tokio's
/// message, instead of never firing.
#[test]
fn deadline_without_time_driver_panics_clearly() {
    // No leak check (SPEC R3): the runtime's `block_on` panics by design, on its own thread.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _ = runtime.block_on(move_on_after(Duration::from_millis(10), async {
            Err::<(), _>(cancelled().await)
        }));
        let _ = tx.send(());
    });
    // Hang bound only: the thread either panics (disconnecting the channel) or finishes.
    let outcome = rx.recv_timeout(Duration::from_secs(30));
    assert!(
        matches!(
            outcome,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        ),
        "expected a panic, got {outcome:?}"
    );
    let payload = worker.join().unwrap_err();
    let message = panic_message(&*payload).unwrap_or_default().to_owned();
    assert!(message.contains("enable_time"), "{message}");
}

/// An ended scope keeps the cancellation it had: a no-op shield change after the end does
/// not uncancel it or a future it carried.
#[tokio::test(flavor = "current_thread")]
async fn ended_scope_keeps_its_inherited_cancellation() {
    common::leak_checked(async move {
        let outer = CancelScope::new();
        let outer_handle = outer.handle();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = outer
            .run(async move {
                let inner = CancelScope::new();
                let inner_handle = inner.handle();
                let carried = inner
                    .run(async move {
                        outer_handle.cancel();
                        Ok::<_, Cancelled>(carry_scope(async { is_cancelled() }))
                    })
                    .await;
                tx.send((inner_handle, carried)).ok();
                Ok::<_, Cancelled>(())
            })
            .await;
        let (inner, carried) = rx.await.unwrap();
        let carried = carried.unwrap().unwrap();
        assert!(inner.is_cancelled());
        inner.set_shield(false);
        assert!(inner.is_cancelled());
        assert!(
            carried.await,
            "the carried future lost the cancellation it had"
        );
    })
    .await
}
