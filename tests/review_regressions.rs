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

/// Session 10's review: a helper scope without a node whose own timer fires after an
/// enclosing scope's deadline passed (in the same timer tick, before the deadline service
/// ran) must not absorb: the enclosing scope's deadline counts too, and the outermost
/// cancelled scope absorbs (SPEC S2, S9), whether or not the inner scope made a node.
#[tokio::test(start_paused = true)]
async fn a_helper_scope_does_not_absorb_when_an_enclosing_deadline_passed_in_the_same_tick() {
    for link_inner in [false, true] {
        for outer_first in [false, true] {
            let start = tokio::time::Instant::now();
            let inner_at = start + Duration::from_millis(1001);
            // The same instant, or half a millisecond earlier: one tick of tokio's timer.
            let outer_at = if outer_first {
                start + Duration::from_micros(1_000_500)
            } else {
                inner_at
            };
            let outer = CancelScope::new().with_deadline(outer_at);
            let outer_handle = outer.handle();
            let mut inner_out = None;
            let out = outer
                .run(async {
                    let inner = move_on_at(inner_at, async {
                        if link_inner {
                            let _ = current_scope();
                        }
                        Err::<(), Cancelled>(cancelled().await)
                    })
                    .await;
                    let passed = inner.clone().map(|_| ());
                    inner_out = Some(inner);
                    passed
                })
                .await;
            let case = format!("link_inner {link_inner}, outer_first {outer_first}");
            let inner = inner_out.expect("the inner scope returned");
            let cancelled = inner.expect_err(&case);
            assert!(
                matches!(cancelled.reason(), CancelReason::Deadline),
                "{case}"
            );
            assert!(matches!(out, Ok(None)), "{case}: the outer scope absorbs");
            assert!(outer_handle.cancel_called(), "{case}");
            assert!(outer_handle.cancelled_caught(), "{case}");
        }
    }
}

/// The same, where the body asks for the cancellation only after both deadlines passed:
/// the `Cancelled` names the outer scope (the outermost cancelled one, SPEC S4).
#[tokio::test(start_paused = true)]
async fn a_cancellation_raised_after_two_deadlines_passed_names_the_outer_scope() {
    let start = tokio::time::Instant::now();
    let at = start + Duration::from_secs(1);
    let outer = CancelScope::new().with_deadline(at);
    let outer_handle = outer.handle();
    let mut seen = None;
    let out = outer
        .run(async {
            let inner = move_on_at(at, async {
                let cancelled = cancelled().await;
                seen = Some(cancelled.clone());
                Err::<(), Cancelled>(cancelled)
            })
            .await;
            inner.map(|_| ())
        })
        .await;
    assert!(matches!(out, Ok(None)));
    let seen = seen.expect("the body saw the cancellation");
    assert_eq!(seen.scope(), outer_handle.id());
}

/// Session 10's review A: a scope entered under one whose runtime has shut down shares that
/// runtime's deadline service; the service's task, spawned there, was dropped unpolled and
/// the service stayed marked as serving, so no deadline armed on it ever fired (a hang). The
/// service now moves to the runtime that arms it.
#[test]
fn a_deadline_armed_after_the_enclosing_scopes_runtime_shut_down_still_fires() {
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let (first, second) = (paused(), paused());
    let mut outer = Box::pin(CancelScope::new().run(async {
        // Parks once (entered on the first runtime), then runs on the second.
        tokio::task::yield_now().await;
        let start = tokio::time::Instant::now();
        let inner = CancelScope::new()
            .with_timeout(Duration::from_millis(10))
            .run(async { Err::<(), _>(cancelled().await) })
            .await;
        Ok::<_, Cancelled>((inner, start.elapsed()))
    }));
    first.block_on(futures::future::poll_fn(|cx| {
        assert!(outer.as_mut().poll(cx).is_pending());
        std::task::Poll::Ready(())
    }));
    drop(first);
    let out = second.block_on(async {
        tokio::time::timeout(Duration::from_secs(3600), outer)
            .await
            .expect("the inner scope's deadline fires")
    });
    let (inner, waited) = out.unwrap().unwrap();
    assert!(inner.unwrap().is_none(), "the inner scope timed out");
    // Its deadline was set on the first runtime's clock (it had not moved yet), which the
    // second one's paused clock does not share to the microsecond: not later than 10 ms.
    assert!(waited <= Duration::from_millis(10), "{waited:?}");
}
