//! Review round 17: DESIGN's invariant 5 at every place a waker is kept behind one of the
//! crate's locks (the nursery's wait for its children, the outlet, a `Start`). A waker's
//! clone may run any code, including code that takes the same lock again (spawning a named
//! child takes the nursery's registry lock, signalling readiness takes the start's): the
//! clone must be made before the lock, or the thread deadlocks.
//!
//! Each test failed (a hang, caught by the bound) on the code it was written against.

mod common;

use std::future::Future;
use std::pin::pin;
use std::sync::mpsc;
use std::task::{Context, Poll};

use common::hang::within;
use common::wakers::runs_at_clone;
use tokio::sync::oneshot;
use tokio_nursery::{Cancelled, NurseryHandle, nursery};

/// Runs `test` on a current_thread runtime of its own, on a thread of its own, failing after
/// 30 s (a deadlock blocks the thread for good).
fn on_own_runtime<Fut: Future<Output = ()>>(test: impl FnOnce() -> Fut + Send + 'static) {
    within(30, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(test());
    });
}

/// Was (a hang): the nursery's future, waiting for its children, cloned its waker under the
/// registry's lock (`Registry::try_close`); a clone that spawned a named child took that lock
/// again.
#[test]
fn a_waker_whose_clone_spawns_into_the_nursery_it_waits_for() {
    on_own_runtime(|| async {
        let (handle_tx, handle_rx) = mpsc::channel::<NurseryHandle<Cancelled>>();
        let (release, released) = oneshot::channel::<()>();
        let mut running = pin!(nursery(move |n| async move {
            n.spawn(async move {
                let _ = released.await;
                Ok::<_, Cancelled>(())
            });
            handle_tx.send(n.clone()).unwrap();
            Ok::<_, Cancelled>(())
        }));
        let (late_tx, late_rx) = mpsc::channel();
        let (spawner, waker) = runs_at_clone(2, move || {
            let n: NurseryHandle<Cancelled> = handle_rx.recv().unwrap();
            let late = n.spawn_named("late", async { Ok::<_, Cancelled>(7) });
            late_tx.send(late).unwrap();
        });
        // The first poll runs the body, which returns with a child still running: the nursery
        // keeps this waker while it waits for the child (the second clone the poll makes),
        // and that clone spawns a named child into it.
        let first = running.as_mut().poll(&mut Context::from_waker(&waker));
        assert!(first.is_pending());
        assert!(spawner.ran());
        drop(waker);
        release.send(()).unwrap();
        let late = late_rx.recv().unwrap();
        assert_eq!(running.await.unwrap(), Some(()));
        assert_eq!(late.await.unwrap(), 7, "the late child ran in the nursery");
    });
}

/// Was (a hang): the outlet's waiter cloned its waker under the registry's lock
/// (`Registry::poll_incident`).
#[test]
fn a_waker_whose_clone_spawns_while_it_waits_on_the_outlet() {
    on_own_runtime(|| async {
        let outcome = nursery(|n| async move {
            let (release, released) = oneshot::channel::<()>();
            n.spawn(async move {
                let _ = released.await;
                Ok::<_, Cancelled>(())
            });
            let spawner_handle = n.clone();
            let (late_tx, late_rx) = mpsc::channel();
            let (spawner, waker) = runs_at_clone(1, move || {
                let late = spawner_handle.spawn_named("late", async { Ok::<_, Cancelled>(7) });
                late_tx.send(late).unwrap();
            });
            {
                let mut next = pin!(n.next_incident());
                let first = next.as_mut().poll(&mut Context::from_waker(&waker));
                assert!(first.is_pending(), "a child is alive and nothing failed");
                assert!(spawner.ran());
            }
            drop(waker);
            release.send(()).unwrap();
            let late = late_rx.recv().unwrap();
            assert_eq!(late.await.unwrap(), 7);
            assert!(n.next_incident().await.is_none());
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(outcome.unwrap(), Some(()));
    });
}

/// Was (a hang): a `Start` waiting for its child's signal cloned its waker under the
/// handoff's lock (`Handoff::poll`); a clone that signalled took it again.
#[test]
fn a_waker_whose_clone_signals_the_start_it_waits_for() {
    on_own_runtime(|| async {
        let outcome = nursery(|n| async move {
            let (ready_tx, ready_rx) = mpsc::channel();
            let (release, released) = oneshot::channel::<()>();
            let mut start = pin!(n.start(move |ready| async move {
                ready_tx.send(ready).unwrap();
                let _ = released.await;
                Ok::<_, Cancelled>(())
            }));
            // The first poll spawns the child; it has not run yet.
            assert!(futures::poll!(start.as_mut()).is_pending());
            tokio::task::yield_now().await;
            let ready = ready_rx
                .try_recv()
                .expect("the child ran and gave its signal away");
            let (signaller, waker) = runs_at_clone(1, move || ready.signal(5u32));
            let polled = start.as_mut().poll(&mut Context::from_waker(&waker));
            assert!(signaller.ran());
            let value = match polled {
                Poll::Ready(value) => value,
                Poll::Pending => start.await,
            };
            assert_eq!(value.unwrap(), 5);
            drop(waker);
            release.send(()).unwrap();
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(outcome.unwrap(), Some(()));
    });
}
