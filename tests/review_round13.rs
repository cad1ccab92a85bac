//! Review round 13: a nursery child's outcome goes to its handle through a slot in the
//! child's cell instead of tokio's `JoinHandle`. These hold what the `JoinHandle` gave.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio_nursery::{Cancelled, JoinError, NurseryHandle, nursery};

/// A waker that reports each wake on a channel, then holds the waking thread for a while:
/// whatever the waking thread does right after the wake (a child's task telling its
/// collector) comes after the poller had every chance to poll.
struct SlowWaker(Mutex<mpsc::Sender<()>>);

impl Wake for SlowWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.0.lock().unwrap().send(());
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Polls `future` on this thread with a [`SlowWaker`]; `after_first_poll` runs once the
/// first poll returned `Pending`. Bounds a hang at 10 s.
fn drive<F: Future>(future: F, after_first_poll: impl FnOnce()) -> F::Output {
    let (tx, rx) = mpsc::channel();
    let waker = Waker::from(Arc::new(SlowWaker(Mutex::new(tx))));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    let mut after = Some(after_first_poll);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        if let Some(after) = after.take() {
            after();
        }
        rx.recv_timeout(Duration::from_secs(10))
            .expect("hang: the nursery was never woken");
    }
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A collected child's outcome is queued before its nursery counts it finished: once the
/// nursery returned, `try_join_next` has it.
#[test]
fn a_collected_outcome_is_queued_once_the_nursery_returned() {
    let rt = multi_thread();
    let _enter = rt.enter();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let outcome = drive(
        nursery(|n: NurseryHandle<Cancelled>| async move {
            let set = n.collector::<u32>();
            set.spawn(async move {
                let _ = go_rx.await;
                Ok::<_, Cancelled>(7)
            });
            Ok::<_, Cancelled>(set)
        }),
        move || go_tx.send(()).unwrap(),
    );
    let mut set = outcome.unwrap().expect("the nursery was not cancelled");
    let next = set.try_join_next();
    assert!(
        matches!(next, Some((_, Ok(7)))),
        "the nursery returned but its collected child's outcome is not queued: {next:?}"
    );
}

/// The same for a collected child that is aborted: its task's drop queues `ChildAborted`
/// before the nursery counts it finished.
#[test]
fn an_aborted_collected_outcome_is_queued_once_the_nursery_returned() {
    let rt = multi_thread();
    let _enter = rt.enter();
    let (tx, rx) = mpsc::channel();
    let outcome = drive(
        nursery(|n: NurseryHandle<Cancelled>| async move {
            let set = n.collector::<u32>();
            let control = set.spawn(std::future::pending::<Result<u32, Cancelled>>());
            tx.send(control).unwrap();
            Ok::<_, Cancelled>(set)
        }),
        move || rx.recv().unwrap().abort(),
    );
    let mut set = outcome.unwrap().expect("the nursery was not cancelled");
    let next = set.try_join_next();
    assert!(
        matches!(next, Some((_, Err(JoinError::ChildAborted)))),
        "the nursery returned but its aborted collected child's outcome is not queued: {next:?}"
    );
}

/// A runtime dropped while its thread unwinds (a panicking `main`, a failing test) drops
/// its tasks then: a child that never panicked reads as aborted, not panicked.
#[test]
fn a_child_dropped_by_a_runtime_dropped_while_unwinding_reads_aborted() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    rt.block_on(async move {
        let mut run = Box::pin(nursery(|n: NurseryHandle<Cancelled>| async move {
            let handle = n.spawn(std::future::pending::<Result<u32, Cancelled>>());
            tx.send(handle).unwrap();
            std::future::pending::<()>().await;
            Ok::<_, Cancelled>(())
        }));
        assert!(futures::poll!(run.as_mut()).is_pending());
        tokio::task::yield_now().await; // the child runs and parks
        std::mem::forget(run); // SPEC N17: its children keep running
    });
    let handle = rx.recv().unwrap();
    let unwound = std::panic::catch_unwind(AssertUnwindSafe(move || {
        let _rt = rt; // dropped while this thread unwinds
        panic!("unrelated panic while the runtime is alive");
    }));
    assert!(unwound.is_err());
    let joined = futures::executor::block_on(handle);
    assert!(
        matches!(joined, Err(JoinError::ChildAborted)),
        "a child dropped at runtime shutdown reads {joined:?}"
    );
}

/// A value whose drop panics.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("Bomb dropped");
        }
    }
}

/// Dropping the handle of a finished child drops its unread value; a panic there stays in
/// the drop, as with tokio's `JoinHandle`.
#[tokio::test]
async fn dropping_the_handle_of_a_finished_child_does_not_panic() {
    let outcome = nursery(|n: NurseryHandle<Cancelled>| async move {
        let handle = n.spawn(async { Ok::<_, Cancelled>(Bomb) });
        while !handle.is_finished() {
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await; // tokio drops the child's task
        let dropped = std::panic::catch_unwind(AssertUnwindSafe(move || drop(handle)));
        Ok::<_, Cancelled>(dropped.is_ok())
    })
    .await;
    assert_eq!(
        outcome.unwrap(),
        Some(true),
        "dropping a ChildHandle panicked"
    );
}

/// A value nobody reads is dropped once, whichever of the child and its dropped handle
/// comes last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_value_is_dropped_once_whoever_comes_last() {
    let value = Arc::new(());
    let outcome = nursery(|n: NurseryHandle<Cancelled>| {
        let value = value.clone();
        async move {
            for i in 0..200 {
                let value = value.clone();
                let handle = n.spawn(async move {
                    if i % 2 == 0 {
                        tokio::task::yield_now().await;
                    }
                    Ok::<_, Cancelled>(value)
                });
                if i % 3 == 0 {
                    tokio::task::yield_now().await;
                }
                drop(handle);
            }
            Ok::<_, Cancelled>(())
        }
    })
    .await;
    assert_eq!(outcome.unwrap(), Some(()));
    // Every child's value was dropped (none leaked in a slot, none dropped twice).
    tokio::time::timeout(Duration::from_secs(10), async {
        while Arc::strong_count(&value) > 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a child's unread value was never dropped");
}
