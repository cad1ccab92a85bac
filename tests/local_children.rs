//! How a local scope runs its children (SPEC B1): each child is one allocation shared with
//! its handle, polled first in spawn order, then whenever its waker (from any thread) wakes
//! it; a child that never parks gets a recycled waker. These tests pin the behaviours that
//! machinery must keep: order, wakes from other threads, stale wakers, the handles of
//! children dropped with their scope, and panics.

mod common;

use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use tokio_nursery::*;

/// A waker kept out of a child, to wake it (or a later child) from outside.
type Kept = Arc<Mutex<Option<Waker>>>;

/// Parks once, leaving its waker in `kept`; ready the second time it is polled.
async fn park_once(kept: &Kept) {
    let mut parked = false;
    std::future::poll_fn(|cx| {
        if parked {
            return Poll::Ready(());
        }
        parked = true;
        *kept.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}

#[tokio::test]
async fn children_start_in_spawn_order_and_every_one_runs() {
    common::leak_checked(async move {
        let order = RefCell::new(Vec::new());
        let out = local_scope(async |s| {
            let handles: Vec<_> = (0..2_000)
                .map(|i| {
                    let order = &order;
                    s.spawn(async move {
                        order.borrow_mut().push(i);
                        Ok::<_, Cancelled>(i * 2)
                    })
                })
                .collect();
            let mut sum = 0;
            for handle in handles {
                sum += handle.await.unwrap();
            }
            Ok::<_, Cancelled>(sum)
        })
        .await;
        assert_eq!(out.unwrap(), Some((0..2_000).map(|i| i * 2).sum()));
        assert_eq!(*order.borrow(), (0..2_000).collect::<Vec<_>>());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_woken_from_another_thread_run_to_completion() {
    let kept: Vec<Kept> = (0..64).map(|_| Kept::default()).collect();
    let waking = kept.clone();
    // Wakes each kept waker from a thread of its own, as soon as it appears.
    let waker_thread = std::thread::spawn(move || {
        let mut woken = 0;
        while woken < waking.len() {
            for slot in &waking {
                if let Some(waker) = slot.lock().unwrap().take() {
                    waker.wake();
                    woken += 1;
                }
            }
            std::thread::yield_now();
        }
    });
    let finished = RefCell::new(0);
    let out = local_scope(async |s| {
        for slot in &kept {
            let finished = &finished;
            s.spawn(async move {
                park_once(slot).await;
                *finished.borrow_mut() += 1;
                Ok::<_, Cancelled>(())
            });
        }
        Ok::<_, Cancelled>(())
    })
    .await;
    waker_thread.join().unwrap();
    assert_eq!(out.unwrap(), Some(()));
    assert_eq!(*finished.borrow(), 64);
}

/// A child's waker outliving the child names its old slot: waking it later polls whatever
/// child took the slot since, spuriously, which that child survives (futures tolerate
/// spurious polls); the later child's own waker still completes it.
#[tokio::test]
async fn a_stale_waker_of_a_finished_child_only_polls_its_successor_spuriously() {
    common::leak_checked(async move {
        let stale = Kept::default();
        let own = Kept::default();
        let polls = Cell::new(0);
        let release = Cell::new(false);
        let out = local_scope(async |s| {
            // Finishes at its first poll, its waker kept (so it is not recycled).
            s.spawn(async {
                std::future::poll_fn(|cx| {
                    *stale.lock().unwrap() = Some(cx.waker().clone());
                    Poll::Ready(())
                })
                .await;
                Ok::<_, Cancelled>(())
            })
            .await
            .unwrap();
            // Takes the freed slot; parks until released.
            let successor = s.spawn(async {
                std::future::poll_fn(|cx| {
                    polls.set(polls.get() + 1);
                    if release.get() {
                        return Poll::Ready(());
                    }
                    *own.lock().unwrap() = Some(cx.waker().clone());
                    Poll::Pending
                })
                .await;
                Ok::<_, Cancelled>("successor")
            });
            tokio::task::yield_now().await;
            assert_eq!(polls.get(), 1);
            stale.lock().unwrap().take().unwrap().wake();
            tokio::task::yield_now().await;
            assert_eq!(polls.get(), 2, "the stale wake polled the successor once");
            release.set(true);
            own.lock().unwrap().take().unwrap().wake();
            Ok::<_, Cancelled>(successor.await)
        })
        .await;
        assert_eq!(out.unwrap().unwrap().unwrap(), "successor");
        assert_eq!(polls.get(), 3);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn the_handle_of_a_child_dropped_with_its_scope_says_aborted() {
    common::leak_checked(async move {
        let kept = RefCell::new(Vec::new());
        let scope = local_scope(async |s| {
            kept.borrow_mut().push(s.spawn(async {
                std::future::pending::<()>().await;
                Ok::<_, Cancelled>(())
            }));
            kept.borrow_mut()
                .push(s.spawn(async { Ok::<_, Cancelled>(()) }));
            std::future::pending::<()>().await;
            Ok::<_, Cancelled>(())
        });
        let timed_out = tokio::time::timeout(std::time::Duration::from_millis(5), scope).await;
        assert!(timed_out.is_err());
        let mut handles = kept.into_inner().into_iter();
        let parked = handles.next().unwrap();
        let finished = handles.next().unwrap();
        assert!(matches!(parked.await, Err(JoinError::ChildAborted)));
        assert!(matches!(finished.await, Ok(())));
    })
    .await
}

#[tokio::test]
async fn a_panicking_child_tells_its_handle_and_its_siblings_still_finish() {
    let finished = RefCell::new(Some(false));
    let observed = RefCell::new(None);
    let out =
        futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(local_scope(async |s| {
            let panics = s.spawn(async {
                tokio::task::yield_now().await;
                if finished.borrow().is_some() {
                    panic!("child panic");
                }
                Ok::<_, Cancelled>(())
            });
            s.spawn(async {
                tokio::task::yield_now().await;
                *finished.borrow_mut() = Some(true);
                Ok::<_, Cancelled>(())
            });
            // Read as a waiter whose scope is not cancelled (the panic cancelled the scope).
            *observed.borrow_mut() = Some(common::nursery::how_it_ended(panics).await);
            Ok::<_, Cancelled>(())
        })))
        .await;
    let payload = out.expect_err("the child's panic is resumed");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"child panic"));
    assert!(matches!(
        observed.into_inner(),
        Some(Err(JoinError::ChildPanicked))
    ));
    assert_eq!(*finished.borrow(), Some(true));
}

/// Ready at once, then panics when dropped.
struct PanicsOnDrop(&'static str);

impl std::future::Future for PanicsOnDrop {
    type Output = Result<(), Cancelled>;

    fn poll(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(()))
    }
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("{}", self.0);
    }
}

/// A child whose future finished and then panicked in its drop: the handle (here kept
/// outside the scope) hears `ChildPanicked` instead of waiting for ever.
#[tokio::test]
async fn a_child_whose_future_panics_in_its_drop_tells_its_handle() {
    let handle = RefCell::new(None);
    let out =
        futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(local_scope(async |s| {
            *handle.borrow_mut() = Some(s.spawn(PanicsOnDrop("dropped")));
            Ok::<_, Cancelled>(())
        })))
        .await;
    let payload = out.expect_err("the drop's panic is resumed");
    assert_eq!(payload.downcast_ref::<String>().unwrap(), "dropped");
    let handle = handle.into_inner().unwrap();
    assert!(matches!(handle.await, Err(JoinError::ChildPanicked)));
}

/// Parks for ever; panics when dropped.
struct ParkedPanicsOnDrop;

impl std::future::Future for ParkedPanicsOnDrop {
    type Output = Result<(), Cancelled>;

    fn poll(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        Poll::Pending
    }
}

impl Drop for ParkedPanicsOnDrop {
    fn drop(&mut self) {
        panic!("parked child dropped");
    }
}

/// Dropping the scope drops every child even when one's drop panics; the panic comes out of
/// the drop after all, and every handle hears `ChildAborted`.
#[tokio::test(start_paused = true)]
async fn dropping_the_scope_drops_every_child_even_when_one_panics_in_its_drop() {
    let live = common::LiveFutures::default();
    let kept = RefCell::new(Vec::new());
    let scope = local_scope(async |s| {
        kept.borrow_mut()
            .push(s.spawn(live.track(std::future::pending::<Result<(), Cancelled>>())));
        kept.borrow_mut().push(s.spawn(ParkedPanicsOnDrop));
        kept.borrow_mut()
            .push(s.spawn(live.track(std::future::pending::<Result<(), Cancelled>>())));
        std::future::pending::<()>().await;
        Ok::<_, Cancelled>(())
    });
    let mut scope = Box::pin(scope);
    assert!(futures::poll!(scope.as_mut()).is_pending());
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(scope)));
    let payload = dropped.expect_err("the child's panic comes out of the drop");
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"parked child dropped")
    );
    assert_eq!(live.created(), 2);
    assert_eq!(live.live(), 0, "the other children were dropped too");
    for handle in kept.into_inner() {
        assert!(matches!(handle.await, Err(JoinError::ChildAborted)));
    }
}

/// A child awaiting its own handle could never finish: a clear panic, reported as the
/// child's.
#[tokio::test]
async fn a_child_awaiting_its_own_handle_panics_clearly() {
    let out =
        futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(local_scope(async |s| {
            let own = std::rc::Rc::new(RefCell::new(None));
            let inside = own.clone();
            let handle = s.spawn(async move {
                tokio::task::yield_now().await;
                let handle: LocalHandle<'_, ()> = inside.borrow_mut().take().unwrap();
                handle.await.ok();
                Ok::<_, Cancelled>(())
            });
            *own.borrow_mut() = Some(handle);
            Ok::<_, Cancelled>(())
        })))
        .await;
    let payload = out.expect_err("the child panicked");
    let message = payload.downcast_ref::<&str>().copied().unwrap_or_default();
    assert!(message.contains("awaited its own handle"), "{message}");
}

/// A child that wakes itself at every poll without spending tokio's budget (a `yield` of
/// another runtime, `futures::pending!` after a wake) gets one poll per poll of the scope,
/// as in `FuturesUnordered`: the scope yields, so its body runs and can let it finish. The
/// scope polled its ready children until none was left, and spun here for ever, until
/// session 7.
#[test]
fn a_child_that_keeps_waking_itself_does_not_starve_the_body() {
    common::nursery::within_hang_bound(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let polls = runtime.block_on(async {
            let (go, polls) = (Cell::new(false), Cell::new(0));
            let out = local_scope(async |s| {
                s.spawn(self_waking_until(&go, &polls));
                tokio::task::yield_now().await;
                go.set(true);
                Ok::<_, Cancelled>(())
            })
            .await;
            assert_eq!(out.unwrap(), Some(()));
            polls.get()
        });
        assert!(polls >= 2, "the child waited for the body: {polls} polls");
    });
    // Outside tokio the budget never runs out: the same holds.
    common::nursery::within_hang_bound(|| {
        let (go, polls) = (Cell::new(false), Cell::new(0));
        let out = futures::executor::block_on(local_scope(async |s| {
            s.spawn(self_waking_until(&go, &polls));
            futures::pending!(); // the executor polls again after the scope's own wake
            go.set(true);
            Ok::<_, Cancelled>(())
        }));
        assert_eq!(out.unwrap(), Some(()));
        assert!(polls.get() >= 2);
    });
}

/// Wakes itself at every poll (counted in `polls`) without spending tokio's budget, until
/// `go` is set.
fn self_waking_until<'a>(
    go: &'a Cell<bool>,
    polls: &'a Cell<u32>,
) -> impl std::future::Future<Output = Result<(), Cancelled>> + 'a {
    std::future::poll_fn(move |cx| {
        polls.set(polls.get() + 1);
        if go.get() {
            return Poll::Ready(Ok(()));
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
}
