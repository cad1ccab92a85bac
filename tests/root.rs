//! SPEC N13: the root owns the runtime, runs main in a nursery, and shuts everything down.

use tokio_nursery::*;

#[test]
fn n13_root_cancels_everything_with_shutdown_when_main_returns() {
    // No leak check (SPEC R3): the root owns and shuts down its runtime; nothing to count after.
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = Root::new().handle_signals(false).run(|n| async move {
        n.spawn(async move {
            let cancelled = cancelled().await;
            tx.send(cancelled.reason().clone()).unwrap();
            Err::<(), _>(cancelled)
        });
        Ok::<_, Cancelled>(5)
    });
    assert_eq!(outcome.unwrap(), Some(5));
    assert!(matches!(rx.recv().unwrap(), CancelReason::Shutdown));
}

#[test]
fn n13_root_aborts_what_outlives_the_grace_period() {
    // No leak check (SPEC R3): the root owns and shuts down its runtime; nothing to count after.
    let outcome = Root::new()
        .current_thread()
        .handle_signals(false)
        .grace(std::time::Duration::ZERO)
        .run(|n| async move {
            let stuck = n.spawn(async {
                std::future::pending::<()>().await; // never a cancellation point
                Ok::<_, Cancelled>(())
            });
            drop(stuck);
            Ok::<_, Cancelled>("main done")
        });
    assert_eq!(outcome.unwrap(), Some("main done"));
}
