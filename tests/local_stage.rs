//! A local child's life as its `Stage` and the queue of children not yet polled see it
//! (SPEC B1): long chains of unpolled children dropped without recursion, handles polled
//! from odd places (their child's drop, a waker that panics), children that drop their own
//! handle, a body whose drop spawns. Written by the review of session 10's task layout.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use tokio_nursery::*;

fn noop_cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

/// Polls `scope` once inside a current-thread runtime, where tokio's budget stops the
/// scope after 128 children.
fn poll_once_in_a_runtime<F: Future>(scope: Pin<&mut F>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert!(futures::poll!(scope).is_pending());
    });
}

/// Counts its wakes.
#[derive(Default)]
struct Wakes(AtomicUsize);

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A waker whose last drop panics (once).
struct PanicsWhenDropped(AtomicBool);

impl Wake for PanicsWhenDropped {
    fn wake(self: Arc<Self>) {}
}

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        if self.0.swap(false, Ordering::SeqCst) {
            panic!("waker dropped");
        }
    }
}

#[test]
fn a_handle_keeps_its_new_waker_when_the_old_ones_drop_panics() {
    let notify = tokio::sync::Notify::new();
    let kept = RefCell::new(None);
    let mut scope = pin!(local_scope(async |s| {
        *kept.borrow_mut() = Some(s.spawn(async {
            notify.notified().await;
            Ok::<_, Cancelled>(5)
        }));
        std::future::pending::<()>().await;
        Ok::<_, Cancelled>(())
    }));
    assert!(scope.as_mut().poll(&mut noop_cx()).is_pending());
    let mut handle = pin!(kept.take().unwrap());
    {
        let first = Waker::from(Arc::new(PanicsWhenDropped(AtomicBool::new(true))));
        assert!(
            handle
                .as_mut()
                .poll(&mut Context::from_waker(&first))
                .is_pending()
        );
    } // the handle holds the last clone of `first`
    let wakes = Arc::new(Wakes::default());
    let second = Waker::from(wakes.clone());
    let polled = catch_unwind(AssertUnwindSafe(|| {
        handle.as_mut().poll(&mut Context::from_waker(&second))
    }));
    assert!(polled.is_err(), "the first waker's drop panicked");
    notify.notify_one();
    assert!(scope.as_mut().poll(&mut noop_cx()).is_pending()); // the child finishes
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the second waker woken");
    assert!(matches!(handle.poll(&mut noop_cx()), Poll::Ready(Ok(5))));
}

#[test]
fn unpolled_children_dropped_with_their_scope_are_dropped_one_by_one_not_recursively() {
    // Deep enough to overflow a test thread's stack if the queue's links were dropped
    // recursively.
    const N: usize = if cfg!(miri) { 200 } else { 300_000 };
    let dropped = Cell::new(0usize);
    let handles = RefCell::new(Vec::new());
    struct Counts<'a>(&'a Cell<usize>);
    impl Drop for Counts<'_> {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }
    {
        let mut scope = pin!(local_scope(async |s| {
            for i in 0..N {
                let counts = Counts(&dropped);
                let handle = s.spawn(async move {
                    let _counts = counts;
                    tokio::task::consume_budget().await;
                    std::future::pending::<()>().await;
                    Ok::<_, Cancelled>(i)
                });
                // Half the handles kept outside, half dropped at once.
                if i % 2 == 0 {
                    handles.borrow_mut().push(handle);
                }
            }
            std::future::pending::<()>().await;
            Ok::<_, Cancelled>(())
        }));
        poll_once_in_a_runtime(scope.as_mut());
    }
    assert_eq!(
        dropped.get(),
        N,
        "every child's future dropped with the scope"
    );
    for handle in handles.take() {
        let out = futures::executor::block_on(handle);
        assert!(matches!(out, Err(JoinError::ChildAborted)), "{out:?}");
    }
}

#[test]
fn a_chain_of_children_holding_each_others_handles_is_dropped_with_the_scope() {
    const N: usize = if cfg!(miri) { 100 } else { 100_000 };
    let mut scope = pin!(local_scope(async |s| {
        let mut previous: Option<LocalHandle<'_, ()>> = None;
        for _ in 0..N {
            let before = previous.take();
            previous = Some(s.spawn(async move {
                tokio::task::consume_budget().await;
                if let Some(before) = before {
                    let _ = before.await;
                }
                Ok::<_, Cancelled>(())
            }));
        }
        drop(previous);
        std::future::pending::<()>().await;
        Ok::<_, Cancelled>(())
    }));
    poll_once_in_a_runtime(scope.as_mut());
}

type Own<'a> = Rc<RefCell<Option<LocalHandle<'a, u32>>>>;

/// Polls its own handle in its drop (as a `select!` arm's drop might).
struct PollsOwnHandleOnDrop<'a> {
    own: Own<'a>,
    ready: bool,
    seen: &'a Cell<Option<bool>>,
}

impl Future for PollsOwnHandleOnDrop<'_> {
    type Output = Result<u32, Cancelled>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        if self.ready {
            Poll::Ready(Ok(1))
        } else {
            Poll::Pending
        }
    }
}

impl Drop for PollsOwnHandleOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(handle) = self.own.borrow_mut().as_mut() {
            let polled = Pin::new(handle).poll(&mut noop_cx());
            self.seen.set(Some(polled.is_pending()));
        }
    }
}

#[test]
fn a_child_dropped_with_its_scope_may_poll_its_own_handle_in_its_drop() {
    let seen = Cell::new(None);
    let own: Own<'_> = Rc::new(RefCell::new(None));
    {
        let mut scope = pin!(local_scope(async |s| {
            let handle = s.spawn(PollsOwnHandleOnDrop {
                own: own.clone(),
                ready: false,
                seen: &seen,
            });
            *own.borrow_mut() = Some(handle);
            std::future::pending::<()>().await;
            Ok::<_, Cancelled>(())
        }));
        assert!(scope.as_mut().poll(&mut noop_cx()).is_pending());
    }
    assert_eq!(
        seen.get(),
        Some(true),
        "no outcome yet while its future drops"
    );
    let handle = own.borrow_mut().take().unwrap();
    let out = futures::executor::block_on(handle);
    assert!(matches!(out, Err(JoinError::ChildAborted)), "{out:?}");
}

#[test]
fn a_child_polling_its_own_handle_in_its_drop_after_returning_is_told_it_panicked() {
    let seen = Cell::new(None);
    let own: Own<'_> = Rc::new(RefCell::new(None));
    let out = catch_unwind(AssertUnwindSafe(|| {
        futures::executor::block_on(local_scope(async |s| {
            let handle = s.spawn(PollsOwnHandleOnDrop {
                own: own.clone(),
                ready: true,
                seen: &seen,
            });
            *own.borrow_mut() = Some(handle);
            Ok::<_, Cancelled>(())
        }))
    }));
    // Dropped where it returned, in its own poll: awaiting its own handle there could
    // never end, so it panics, and the scope resumes that panic.
    let payload = out.expect_err("the child's panic resumed");
    let message = payload
        .downcast_ref::<&str>()
        .map(|m| m.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert!(message.contains("awaited its own handle"), "{message}");
    assert_eq!(seen.get(), None, "the poll in the drop did not return");
    let handle = own.borrow_mut().take().unwrap();
    let out = futures::executor::block_on(handle);
    assert!(matches!(out, Err(JoinError::ChildPanicked)), "{out:?}");
}

#[test]
fn a_child_may_drop_its_own_handle_while_it_runs() {
    let own: Own<'_> = Rc::new(RefCell::new(None));
    let out = futures::executor::block_on(local_scope(async |s| {
        let inner = own.clone();
        let handle = s.spawn(async move {
            drop(inner.borrow_mut().take());
            drop(inner);
            let local = [3u32; 4];
            let view = &local;
            tokio::task::yield_now().await;
            Ok::<_, Cancelled>(view.iter().sum::<u32>())
        });
        *own.borrow_mut() = Some(handle);
        Ok::<_, Cancelled>(())
    }));
    assert_eq!(out.unwrap(), Some(()));
    assert!(
        own.borrow().is_none(),
        "the child took and dropped its handle"
    );
}

#[test]
fn a_child_spawned_by_the_bodys_drop_is_dropped_with_the_scope() {
    struct SpawnsOnDrop<'s, 'k, 'env>(
        &'s LocalScope<'env, Cancelled>,
        &'k RefCell<Vec<LocalHandle<'env, ()>>>,
        &'env Cell<u32>,
    );
    impl Drop for SpawnsOnDrop<'_, '_, '_> {
        fn drop(&mut self) {
            let ran = self.2;
            let handle = self.0.spawn(async move {
                ran.set(ran.get() + 1);
                Ok::<_, Cancelled>(())
            });
            self.1.borrow_mut().push(handle);
        }
    }
    let ran = Cell::new(0);
    let kept = RefCell::new(Vec::new());
    {
        let mut scope = pin!(local_scope(async |s| {
            let _guard = SpawnsOnDrop(s, &kept, &ran);
            std::future::pending::<()>().await;
            Ok::<_, Cancelled>(())
        }));
        assert!(scope.as_mut().poll(&mut noop_cx()).is_pending());
    }
    assert_eq!(ran.get(), 0, "never polled");
    let handles = kept.take();
    assert_eq!(handles.len(), 1);
    for handle in handles {
        let out = futures::executor::block_on(handle);
        assert!(matches!(out, Err(JoinError::ChildAborted)), "{out:?}");
    }
}
