//! Review round 14: a `ChildHandle` that has to wait leaves its waker in a table its
//! nursery keeps (`output_slot::Wakers`), locked on every wait. A waker may run any code when
//! it is cloned, woken or dropped, even another handle of the same nursery's: none of that
//! may run under the table's lock. And no waker stays in the table once its wait is over.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Wake, Waker};
use std::time::Duration;

use common::hang::{in_a_nursery, within};
use tokio::sync::oneshot;
use tokio_nursery::{Cancelled, ChildHandle, NurseryHandle, nursery};

/// A child that returns `value` once told to.
fn until_told(n: &NurseryHandle<Cancelled>, value: u32) -> (ChildHandle<u32>, oneshot::Sender<()>) {
    let (tell, told) = oneshot::channel();
    let handle = n.spawn(async move {
        let _ = told.await;
        Ok::<_, Cancelled>(value)
    });
    (handle, tell)
}

/// A waker that drops the handle it holds the first time it is cloned.
struct DropsOnClone(Mutex<Option<ChildHandle<u32>>>);

static DROPS_ON_CLONE: RawWakerVTable = RawWakerVTable::new(
    clone_dropping,
    wake_dropping,
    wake_by_ref_dropping,
    drop_dropping,
);

unsafe fn clone_dropping(data: *const ()) -> RawWaker {
    // SAFETY: `data` came from `Arc::into_raw` and the waker being cloned holds a count.
    let this = unsafe {
        Arc::increment_strong_count(data.cast::<DropsOnClone>());
        &*data.cast::<DropsOnClone>()
    };
    let handle = this.0.lock().unwrap().take();
    drop(handle);
    RawWaker::new(data, &DROPS_ON_CLONE)
}

unsafe fn wake_dropping(data: *const ()) {
    // SAFETY: the waker woken by value gives up its count.
    unsafe { drop_dropping(data) }
}

unsafe fn wake_by_ref_dropping(_: *const ()) {}

unsafe fn drop_dropping(data: *const ()) {
    // SAFETY: every waker holds one count, given up here.
    drop(unsafe { Arc::from_raw(data.cast::<DropsOnClone>()) });
}

fn drops_on_clone(handle: ChildHandle<u32>) -> (Arc<DropsOnClone>, Waker) {
    let this = Arc::new(DropsOnClone(Mutex::new(Some(handle))));
    let data = Arc::into_raw(this.clone()).cast::<()>();
    // SAFETY: the vtable treats `data` as one count of an `Arc<DropsOnClone>`, as made here.
    let waker = unsafe { Waker::from_raw(RawWaker::new(data, &DROPS_ON_CLONE)) };
    (this, waker)
}

/// A handle waiting with a waker whose clone drops another waiting handle of the same
/// nursery: the clone is made before the table is locked (it deadlocked when made under
/// the lock, since the dropped handle takes its waker out of the table).
#[test]
fn a_waker_whose_clone_drops_another_waiting_handle() {
    let value = in_a_nursery(|n| async move {
        let (mut waiting, tell_waiting) = until_told(&n, 1);
        let (mut polled, tell_polled) = until_told(&n, 2);
        assert!(futures::poll!(&mut waiting).is_pending());
        let (dropper, waker) = drops_on_clone(waiting);
        let first = Pin::new(&mut polled).poll(&mut Context::from_waker(&waker));
        assert!(first.is_pending());
        assert!(
            dropper.0.lock().unwrap().is_none(),
            "the clone dropped the waiting handle"
        );
        tell_waiting.send(()).unwrap();
        tell_polled.send(()).unwrap();
        Ok::<_, Cancelled>(polled.await.unwrap())
    });
    assert_eq!(value, 2);
}

/// A waker that, when woken, polls the handle it holds once (with a no-op waker) and keeps
/// what that poll gave.
struct PollsOnWake {
    other: Mutex<Option<ChildHandle<u32>>>,
    polled: Mutex<Option<bool>>,
}

impl Wake for PollsOnWake {
    fn wake(self: Arc<Self>) {
        let mut other = self.other.lock().unwrap();
        let handle = other.as_mut().expect("woken once");
        let poll = Pin::new(handle).poll(&mut Context::from_waker(Waker::noop()));
        *self.polled.lock().unwrap() = Some(poll.is_pending());
    }
}

/// A child's end wakes its handle's waker, which polls another handle of the same nursery
/// (and so locks the table): the waker is woken after the table's lock is released.
#[test]
fn a_waker_whose_wake_polls_another_handle() {
    let values = in_a_nursery(|n| async move {
        let (mut first, tell_first) = until_told(&n, 1);
        let (second, tell_second) = until_told(&n, 2);
        let polls = Arc::new(PollsOnWake {
            other: Mutex::new(Some(second)),
            polled: Mutex::new(None),
        });
        let waker = Waker::from(polls.clone());
        let pending = Pin::new(&mut first).poll(&mut Context::from_waker(&waker));
        assert!(pending.is_pending());
        drop(waker);
        tell_first.send(()).unwrap();
        // The first child runs, ends and wakes `polls`, which polls `second`.
        while polls.polled.lock().unwrap().is_none() {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            *polls.polled.lock().unwrap(),
            Some(true),
            "second still runs"
        );
        tell_second.send(()).unwrap();
        let second = polls.other.lock().unwrap().take().unwrap();
        Ok::<_, Cancelled>((first.await.unwrap(), second.await.unwrap()))
    });
    assert_eq!(values, (1, 2));
}

/// Counts its wakes; the `Arc`'s strong count tells whether a clone is kept somewhere.
#[derive(Default)]
struct Counting(AtomicUsize);

impl Wake for Counting {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Polls `handle` once with a clone of `waker`.
fn poll_with(handle: &mut ChildHandle<u32>, waker: &Arc<Counting>) -> Poll<u32> {
    let waker = Waker::from(waker.clone());
    Pin::new(handle)
        .poll(&mut Context::from_waker(&waker))
        .map(Result::unwrap)
}

/// In a plain task (outside any cancel scope) a handle's poll registers with nothing but
/// the table, so the counts below are the table's: a wait that ended (the child's end woke
/// it, the handle was dropped, another waker replaced it) leaves no clone of its waker there.
#[test]
fn no_waker_is_kept_after_the_wait() {
    in_a_nursery(|n| async move {
        tokio::spawn(checks(n)).await.unwrap();
        Ok(())
    });

    async fn checks(n: NurseryHandle<Cancelled>) {
        // The child's end takes the waker out and wakes it.
        let (mut ends, tell) = until_told(&n, 1);
        let waker = Arc::new(Counting::default());
        assert!(poll_with(&mut ends, &waker).is_pending());
        assert_eq!(Arc::strong_count(&waker), 2, "the table holds a clone");
        tell.send(()).unwrap();
        while !ends.is_finished() {
            tokio::task::yield_now().await;
        }
        assert_eq!(waker.0.load(Ordering::SeqCst), 1, "woken once");
        assert_eq!(Arc::strong_count(&waker), 1, "woken by value, not kept");
        assert_eq!(poll_with(&mut ends, &waker), Poll::Ready(1));
        assert_eq!(Arc::strong_count(&waker), 1);

        // A handle dropped while waiting takes its waker out.
        let (mut dropped, tell) = until_told(&n, 2);
        let waker = Arc::new(Counting::default());
        assert!(poll_with(&mut dropped, &waker).is_pending());
        drop(dropped);
        assert_eq!(Arc::strong_count(&waker), 1, "dropped with the handle");
        tell.send(()).unwrap();

        // A replaced waker leaves; the latest one is woken.
        let (mut replaced, tell) = until_told(&n, 3);
        let (old, new) = (Arc::new(Counting::default()), Arc::new(Counting::default()));
        assert!(poll_with(&mut replaced, &old).is_pending());
        assert!(poll_with(&mut replaced, &new).is_pending());
        assert_eq!(Arc::strong_count(&old), 1, "the old waker left the table");
        assert_eq!(Arc::strong_count(&new), 2);
        tell.send(()).unwrap();
        assert_eq!(replaced.await.unwrap(), 3);
        assert_eq!(old.0.load(Ordering::SeqCst), 0);
    }
}

/// Handles passed from task to task on two workers, each task polling the handle once
/// before passing it on, while their children end at varied times: every handle's waker
/// is replaced many times, and every value arrives once.
#[test]
fn handles_moved_between_tasks_many_times() {
    const CHILDREN: u32 = 300;
    const HOPS: u32 = 12;

    /// Polls `handle` once; passes it to another task unless it returned or this was the
    /// last hop, then awaits it.
    fn hop(mut handle: ChildHandle<u32>, hops_left: u32, got: mpsc::Sender<u32>) {
        tokio::spawn(async move {
            if let Poll::Ready(value) = futures::poll!(&mut handle) {
                got.send(value.unwrap()).unwrap();
            } else if hops_left == 0 {
                got.send(handle.await.unwrap()).unwrap();
            } else {
                hop(handle, hops_left - 1, got);
            }
        });
    }

    within(30, || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (got, arrived) = mpsc::channel();
        let outcome = rt.block_on(nursery(|n: NurseryHandle<Cancelled>| async move {
            for i in 0..CHILDREN {
                let handle = n.spawn(async move {
                    for _ in 0..(i % 7) * 3 {
                        tokio::task::yield_now().await;
                    }
                    Ok::<_, Cancelled>(i)
                });
                hop(handle, HOPS, got.clone());
            }
            Ok::<_, Cancelled>(())
        }));
        assert_eq!(outcome.unwrap(), Some(()));
        let mut values: Vec<u32> = (0..CHILDREN)
            .map(|_| {
                arrived
                    .recv_timeout(Duration::from_secs(20))
                    .expect("a value arrives")
            })
            .collect();
        values.sort_unstable();
        assert_eq!(
            values,
            (0..CHILDREN).collect::<Vec<_>>(),
            "every value, once"
        );
    });
}

/// Panics when woken.
struct PanicsOnWake;

impl Wake for PanicsOnWake {
    fn wake(self: Arc<Self>) {
        panic!("a waker that panics when woken");
    }
}

/// The child's task takes a waiting handle's waker out of the table and wakes it as the
/// child ends; a waker that panics there unwinds through the child's task after the child
/// ended: the nursery still counts the child finished, the handle still gets the value.
#[test]
fn a_waker_whose_wake_panics_loses_nothing() {
    let value = in_a_nursery(|n| async move {
        let (mut handle, tell) = until_told(&n, 1);
        let waker = Waker::from(Arc::new(PanicsOnWake));
        let pending = Pin::new(&mut handle).poll(&mut Context::from_waker(&waker));
        assert!(pending.is_pending());
        drop(waker);
        tell.send(()).unwrap();
        while !handle.is_finished() {
            tokio::task::yield_now().await; // the child ends, and wakes the waker
        }
        Ok::<_, Cancelled>(handle.await.unwrap())
    });
    assert_eq!(value, 1);
}

/// A `ParallelHandle` polled (its waker goes to the nursery's table) and then dropped: the
/// scope keeps the child's inner handle with the child's cell, but the wait is over, so
/// the waker leaves the table at the drop and is never woken (review 15: it stayed until the
/// child ended, and was then woken although nobody waited).
#[test]
fn a_dropped_parallel_handle_leaves_no_waker() {
    within(30, || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (kept, woken) = runtime
            .block_on(async {
                tokio_nursery::parallel_scope(async |s| {
                    let (tell, told) = oneshot::channel::<()>();
                    let handle = s.spawn(async move {
                        let _ = told.await;
                        Ok::<_, Cancelled>(7u32)
                    });
                    let waker = Arc::new(Counting::default());
                    // Polled in a plain task (outside any cancel scope): the table alone keeps
                    // a clone of the waker.
                    let polled_with = waker.clone();
                    tokio::spawn(async move {
                        let mut handle = handle;
                        let waker = Waker::from(polled_with);
                        let polled = Pin::new(&mut handle).poll(&mut Context::from_waker(&waker));
                        assert!(polled.is_pending());
                        drop(handle);
                    })
                    .await
                    .unwrap();
                    let kept = Arc::strong_count(&waker) - 1;
                    tell.send(()).unwrap();
                    Ok::<_, Cancelled>((kept, waker))
                })
                .unwrap()
            })
            .unwrap()
            .unwrap();
        let woken = woken.0.load(Ordering::SeqCst);
        assert_eq!(
            (kept, woken),
            (0, 0),
            "clones of the dropped handle's waker kept after the drop, wakes after it"
        );
    });
}
