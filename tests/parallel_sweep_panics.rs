//! The backstop's sweep against a panic while it drops a cell it has passed over (the last
//! reference to an ended cell, which drops the inner handle a dropped `ParallelHandle` parked
//! there, and with it the waker its cancellation registration keeps): the sweep goes on,
//! and the panic is reported, not propagated.
//!
//! No real sleeps: waits spin with a real-time hang bound as a watchdog; the one bounded spin
//! (`GRACE_SPINS`) only gives a scope's drop the chance to return early if it does not wait,
//! and ends at once when it did return (as tests/parallel_cells.rs does).
#![cfg(feature = "rt-multi-thread")]

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::task::{Context, Wake, Waker};
use std::time::Instant;

use common::{GRACE_SPINS, HANG_BOUND, spin_until};
use tokio_nursery::{CancelScope, Cancelled, parallel_scope_async};

/// The waker's last clone panics when dropped, once armed.
static ARMED: AtomicBool = AtomicBool::new(false);
/// The first child's future was dropped: its task completed (its shell is gone).
static FIRST_GONE: AtomicBool = AtomicBool::new(false);
/// The armed waker panicked in its drop.
static WAKER_PANICKED: AtomicBool = AtomicBool::new(false);

/// A waker (safe code: `std::task::Wake`) whose drop panics once armed.
struct PanicOnLastDrop;

impl Wake for PanicOnLastDrop {
    fn wake(self: Arc<Self>) {}
}

/// Held by the first child's future: tells when it is dropped.
struct TellsGone;

impl Drop for TellsGone {
    fn drop(&mut self) {
        FIRST_GONE.store(true, SeqCst);
    }
}

impl Drop for PanicOnLastDrop {
    fn drop(&mut self) {
        if ARMED.load(SeqCst) {
            WAKER_PANICKED.store(true, SeqCst);
            panic!("a waker's drop panics (test)");
        }
    }
}

#[derive(Default)]
struct Flags {
    /// The second child is inside its poll (on a worker).
    polling: AtomicBool,
    /// The test is about to drop the scope's future.
    dropping: AtomicBool,
    /// The scope's drop returned (or unwound).
    scope_dropped: AtomicBool,
    /// The second child's future was dropped.
    child_dropped: AtomicBool,
    /// ... after the scope's drop had returned: a use of the borrow after its end.
    late: AtomicBool,
}

/// Held by the second child's future: reads the borrow when dropped, and records whether
/// that happened after the scope's drop returned.
struct Guard<'a> {
    data: &'a [u64],
    flags: &'a Flags,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let _ = self.data.iter().sum::<u64>();
        if self.flags.scope_dropped.load(SeqCst) {
            self.flags.late.store(true, SeqCst);
        }
        self.flags.child_dropped.store(true, SeqCst);
    }
}

/// The sweep drops each cell's last reference inside its loop. A cell whose handle was
/// dropped keeps that handle's `ChildHandle`, whose cancellation registration (in the scope
/// it was last polled in) holds a clone of the waker it was polled with; a waker is user
/// code, and its drop may panic. If it does, the panic leaves the sweep before the cells after that one
/// were visited: their futures are still alive (here: one being polled on a worker), and the
/// scope's drop unwinds to the caller, who may then end the borrow. The backstop promises
/// that the drop "does not return before every child future has been dropped".
///
/// Asserts that the second child's future (which borrows `data`) was dropped before the
/// scope's drop returned or unwound.
#[test]
fn a_panic_dropping_a_parked_join_handle_does_not_cut_the_sweep_short() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let data = vec![1u64, 2, 3];
    let flags = Flags::default();
    let outcome = runtime.block_on(async {
        let (data, flags) = (&data, &flags);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // SAFETY (of the test): dropped early on purpose, which the backstop must make sound
        // ("An early drop ... is caught by the backstop"); never leaked; the runtime outlives
        // it; `data` and `flags` outlive the drop and the child's drop (waited for below).
        let scope = unsafe {
            parallel_scope_async(|s| async move {
                let mut first = s.spawn(async move {
                    let _gone = TellsGone;
                    let _ = rx.await;
                    Ok::<_, Cancelled>(())
                });
                // Polled once with the waker, in a shielded scope that ends unwoken: the
                // handle's cancellation registration keeps a clone of it there (the other
                // clone, left in the nursery's table for the child's end, leaves it when the
                // handle is dropped).
                let polled = CancelScope::new().shielded().run(async {
                    let waker = Waker::from(Arc::new(PanicOnLastDrop));
                    let polled = Pin::new(&mut first).poll(&mut Context::from_waker(&waker));
                    Ok::<_, Cancelled>(polled.is_pending())
                });
                assert_eq!(polled.await.unwrap(), Some(true));
                drop(first); // parks its inner handle (and the waker's clone) in its cell
                tx.send(()).unwrap();
                s.spawn(async move {
                    let _guard = Guard { data, flags };
                    std::future::poll_fn(|_| {
                        flags.polling.store(true, SeqCst);
                        spin_until(&flags.dropping, "the scope's drop to start");
                        for _ in 0..GRACE_SPINS {
                            if flags.scope_dropped.load(SeqCst) {
                                break;
                            }
                            std::thread::yield_now();
                        }
                        std::task::Poll::<()>::Pending
                    })
                    .await;
                    Ok::<_, Cancelled>(())
                });
                std::future::pending::<()>().await;
                Ok::<_, Cancelled>(())
            })
        };
        let mut scope = Box::pin(scope);
        let hang = Instant::now() + HANG_BOUND;
        while !(FIRST_GONE.load(SeqCst) && flags.polling.load(SeqCst)) {
            assert!(
                Instant::now() < hang,
                "hang: the children did not get there"
            );
            assert!(futures::poll!(scope.as_mut()).is_pending());
            tokio::task::yield_now().await;
        }
        ARMED.store(true, SeqCst);
        flags.dropping.store(true, SeqCst);
        let dropped = catch_unwind(AssertUnwindSafe(|| drop(scope)));
        let child_gone_first = flags.child_dropped.load(SeqCst);
        flags.scope_dropped.store(true, SeqCst);
        ARMED.store(false, SeqCst);
        // Whatever happened, `data` and `flags` stay until the child's future was dropped.
        spin_until(&flags.child_dropped, "the second child's drop");
        (dropped.is_err(), child_gone_first)
    });
    drop(runtime);
    let (drop_panicked, child_gone_first) = outcome;
    assert!(
        WAKER_PANICKED.load(SeqCst),
        "precondition: the waker's last clone was dropped by the scope's drop"
    );
    assert!(
        !drop_panicked,
        "the waker's panic is reported by the sweep, not propagated from the scope's drop"
    );
    assert!(
        child_gone_first && !flags.late.load(SeqCst),
        "the scope's drop {} while a child future that borrows the caller's stack was still \
         alive (dropped afterwards by tokio): a panic dropping a swept cell cut the sweep short",
        if drop_panicked { "unwound" } else { "returned" }
    );
}
