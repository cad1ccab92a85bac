//! Review round 17: DESIGN's invariant 5 at every place a waker is kept or woken behind one
//! of the crate's locks (the nursery's wait for its children, the outlet, a `Start`, a local
//! scope's parent waker, the wakers of a cancellation's propagation). A waker's clone and
//! wake may run any code, including code that takes the same lock again (spawning a named
//! child takes the nursery's registry lock, signalling readiness takes the start's, waking
//! a local child takes its scope's queue): they must run outside the lock, or the thread
//! deadlocks; and a waker that panics must not stop a propagation half-way.
//!
//! Each test failed (a hang, caught by the bound, or a stale scope) on the code it was
//! written against.

mod common;

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll, Wake, Waker};

use common::hang::within;
use common::wakers::runs_at_clone;
use tokio::sync::oneshot;
use tokio_nursery::{
    CancelScope, Cancelled, NurseryHandle, Start, cancelled, local_scope, nursery,
};

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

/// Where a parked future leaves its waker, for the test to wake it.
type Kept = Arc<Mutex<Option<Waker>>>;

/// Parks once, leaving its waker in `kept`; ready when polled again.
async fn park_once(kept: Kept) {
    let mut parked = false;
    std::future::poll_fn(move |cx| {
        if parked {
            return Poll::Ready(());
        }
        parked = true;
        *kept.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}

/// A waker whose wake wakes the waker kept in `.0` (taken out first).
struct WakesAnother(Kept);

impl Wake for WakesAnother {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let other = self.0.lock().unwrap().take();
        if let Some(other) = other {
            other.wake();
        }
    }
}

/// Was (a hang): a local child's waker woke its scope's waker under the lock that keeps it
/// (`ChildWaker::wake_by_ref`); a scope waker that woke another child of the same scope
/// took that lock again.
#[test]
fn a_local_scopes_waker_that_wakes_another_child_of_the_scope() {
    on_own_runtime(|| async {
        let (kept_a, kept_b) = (Kept::default(), Kept::default());
        let (a, b) = (kept_a.clone(), kept_b.clone());
        let mut running = pin!(local_scope(async move |s| {
            let first = s.spawn(async move {
                park_once(a).await;
                Ok::<_, Cancelled>(1)
            });
            let second = s.spawn(async move {
                park_once(b).await;
                Ok::<_, Cancelled>(2)
            });
            Ok::<_, Cancelled>(first.await.unwrap() + second.await.unwrap())
        }));
        let scope_waker = Waker::from(Arc::new(WakesAnother(kept_b.clone())));
        let polled = running
            .as_mut()
            .poll(&mut Context::from_waker(&scope_waker));
        assert!(polled.is_pending());
        let first = kept_a
            .lock()
            .unwrap()
            .take()
            .expect("the first child parked");
        assert!(kept_b.lock().unwrap().is_some(), "the second child parked");
        // Wakes the scope's waker, which wakes the second child.
        first.wake();
        assert_eq!(running.await.unwrap(), Some(3));
    });
}

/// Panics when woken.
struct PanicsOnWake;

impl Wake for PanicsOnWake {
    fn wake(self: Arc<Self>) {
        panic!("a waker that panics when woken");
    }
}

/// Was: a cancellation's propagation woke each scope's waiters as it went (`propagate`), so
/// a waker panicking at a scope in the middle stopped it there, and the scopes below stayed
/// uncancelled (invariant 2). Every scope is now up to date before any waker runs.
#[test]
fn a_panicking_waker_on_a_middle_scope_leaves_no_scope_below_stale() {
    let (outer, middle, inner) = (CancelScope::new(), CancelScope::new(), CancelScope::new());
    let (outer_h, middle_h, inner_h) = (outer.handle(), middle.handle(), inner.handle());
    let mut running = pin!(outer.run(async move {
        middle
            .run(async move {
                let innermost = inner.run(async { Err::<(), Cancelled>(cancelled().await) });
                let _ = futures::join!(cancelled(), innermost);
                Ok::<_, Cancelled>(())
            })
            .await
    }));
    let waker = Waker::from(Arc::new(PanicsOnWake));
    assert!(
        running
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    let cancelling = catch_unwind(AssertUnwindSafe(|| outer_h.cancel()));
    assert!(
        cancelling.is_err(),
        "the waker's panic is passed on to the canceller"
    );
    assert!(outer_h.is_cancelled() && middle_h.is_cancelled());
    assert!(
        inner_h.is_cancelled(),
        "under a cancelled scope, with no shield"
    );
}

/// A `Start` kept where a waker can drop it.
type SharedStart = Arc<Mutex<Option<Pin<Box<Start<u32, Cancelled>>>>>>;

/// Drops the kept `Start` when woken.
struct DropsStart(SharedStart);

impl Wake for DropsStart {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let start = self.0.lock().unwrap().take();
        drop(start);
    }
}

/// Was (a hang): a started child's signal moved it into its nursery under the handoff's
/// lock (`Handoff::signal`), and a move into a cancelled nursery woke the child's waiters
/// there; a waiter whose waker drops the `Start` took that lock again.
#[test]
fn a_signal_that_moves_the_child_into_a_cancelled_nursery_wakes_outside_the_handoff_lock() {
    on_own_runtime(|| async {
        let outcome = nursery(|n| async move {
            let shared = SharedStart::default();
            let (go, gone) = oneshot::channel::<()>();
            let (done, finished) = oneshot::channel::<()>();
            let for_child = shared.clone();
            // The caller's scope is shielded: the child starts uncancelled, then moves into
            // the cancelled nursery at its signal.
            CancelScope::new()
                .shielded()
                .run(async {
                    let mut start = Box::pin(n.start(move |ready| async move {
                        let waker = Waker::from(Arc::new(DropsStart(for_child)));
                        let mut point = Box::pin(cancelled());
                        let polled = point.as_mut().poll(&mut Context::from_waker(&waker));
                        assert!(polled.is_pending());
                        let _ = gone.await;
                        ready.signal(5);
                        drop(point);
                        let _ = done.send(());
                        Ok::<_, Cancelled>(())
                    }));
                    assert!(futures::poll!(start.as_mut()).is_pending());
                    *shared.lock().unwrap() = Some(start);
                    tokio::task::yield_now().await;
                    n.cancel();
                    go.send(()).unwrap();
                    let _ = finished.await;
                    assert!(
                        shared.lock().unwrap().is_none(),
                        "the waker dropped the start"
                    );
                    Ok::<_, Cancelled>(())
                })
                .await
        })
        .await;
        // The body returned its shielded scope's value, so the nursery returns it.
        assert!(matches!(outcome, Ok(Some(Some(())))), "{outcome:?}");
    });
}
