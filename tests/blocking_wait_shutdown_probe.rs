//! SPEC N9b at runtime shutdown, where only the shutdown probe of the blocking-wait drop can
//! tell that the drop must not block.
//!
//! When a multi-thread runtime is dropped, its workers leave their loops and drop the
//! runtime's tasks (tokio's `OwnedTasks::close_and_shutdown_all`), each holding its core in
//! a local variable, not in the thread's context. `block_in_place` called from such a drop
//! therefore does not panic: it finds no core to hand off and just runs the closure, blocking
//! the worker. The drop of the runtime then waits for that worker (workers are threads of the
//! blocking pool). So nothing but the probe (a task spawned on the runtime, which tokio
//! finishes at once once the runtime is closing) keeps a `BlockingWait` drop from blocking
//! the shutdown.
//!
//! The test in `nursery_smoke.rs` (an async child, two workers) does not single the probe
//! out: while one worker blocks in the nursery's drop, the other drops the async child, and
//! that ends the wait. Which worker drops which task, and in what order, is tokio's choice,
//! so fewer workers would not make that test dependable. Here the child is a blocking child,
//! which tokio never drops, and it returns only once the task that owns the nursery is gone;
//! that task drops the nursery first (the blocking wait) and what lets the child return
//! after. A drop that blocked would wait for the child, and the child for the drop, until
//! the grace period ran out: 300 s, far past the 30 s bound. These tests hang (and fail on
//! the bound) with the probe disabled.

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_nursery::*;

/// Only bounds a hang: with the probe working, dropping the runtime returns at once.
const HANG_BOUND: Duration = Duration::from_secs(30);

/// A task's state: the nursery's future, and a sender the task owns besides it. Dropped in
/// that order: the sender goes (and the receiving blocking child can return) only once the
/// drop of the nursery's future returned.
struct NurseryThenRelease<F> {
    nursery: Option<Pin<Box<F>>>,
    release: Option<mpsc::Sender<()>>,
    /// A runtime to enter for the first poll (the nursery then belongs to it).
    enter_first: Option<tokio::runtime::Handle>,
}

impl<F: Future> Future for NurseryThenRelease<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let other = self.enter_first.take();
        let _entered = other.as_ref().map(|runtime| runtime.enter());
        self.nursery
            .as_mut()
            .expect("polled after it finished")
            .as_mut()
            .poll(cx)
    }
}

impl<F> Drop for NurseryThenRelease<F> {
    fn drop(&mut self) {
        drop(self.nursery.take());
        drop(self.release.take());
    }
}

/// A task owning a `BlockingWait` nursery (300 s grace) whose one blocking child returns
/// only once the task is gone (its sender dropped, after the nursery), and the channels on
/// which the child says it started and, when it returns, whether it saw the cancellation.
/// `enter_first`: the runtime the nursery belongs to, if not the task's.
fn task_with_a_blocking_child_waiting_for_it(
    enter_first: Option<tokio::runtime::Handle>,
) -> (
    impl Future<Output = NurseryOutcome> + Send + 'static,
    mpsc::Receiver<()>,
    mpsc::Receiver<bool>,
) {
    let (started_tx, started_rx) = mpsc::channel();
    let (stopped_tx, stopped_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let nursery = Nursery::new()
        .drop_mode(DropMode::BlockingWait)
        .grace(Duration::from_secs(300))
        .run(move |n: NurseryHandle<Cancelled>| async move {
            n.spawn_blocking(move |ctx| {
                started_tx.send(()).unwrap();
                // No cancellation point: this returns (with an error, nothing is ever sent)
                // once the task that owns the nursery dropped the sender.
                let _ = release_rx.recv();
                stopped_tx.send(ctx.is_cancelled()).unwrap();
                Ok(())
            });
            std::future::pending::<()>().await;
            Ok(())
        });
    let task = NurseryThenRelease {
        nursery: Some(Box::pin(nursery)),
        release: Some(release_tx),
        enter_first,
    };
    (task, started_rx, stopped_rx)
}

/// What the nursery's future yields.
type NurseryOutcome = Result<Option<()>, NurseryError<Cancelled>>;

/// Drops a runtime of `workers` worker threads while one of its tasks owns a `BlockingWait`
/// nursery whose blocking child waits for that task to be gone; checks that dropping the
/// runtime returns and that the child saw the nursery's cancellation before it returned.
fn runtime_shutdown_with_a_blocking_child_waiting_for_its_task(workers: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    let (task, started_rx, stopped_rx) = task_with_a_blocking_child_waiting_for_it(None);
    runtime.spawn(task);
    started_rx
        .recv_timeout(HANG_BOUND)
        .expect("the blocking child started");

    let (dropped_tx, dropped_rx) = mpsc::channel();
    std::thread::spawn(move || {
        drop(runtime);
        dropped_tx.send(()).unwrap();
    });
    dropped_rx.recv_timeout(HANG_BOUND).expect(
        "dropping the runtime returned: the nursery's drop, run by the shutdown, fell back to \
         adoption instead of blocking a worker on a child that waits for the drop",
    );
    // Dropping the runtime waits for its blocking pool, so the child has returned by now: it
    // was released by the end of its task, and had been told of the nursery's cancellation.
    assert_eq!(stopped_rx.try_recv(), Ok(true));
}

/// One worker: the worker that runs the shutdown is the one whose drop must not block.
#[test]
fn blocking_wait_drop_during_shutdown_does_not_block_on_a_blocking_child_one_worker() {
    runtime_shutdown_with_a_blocking_child_waiting_for_its_task(1);
}

/// Two workers: the other worker drops its share of the tasks, but no task it drops lets the
/// blocking child return, so it cannot end the wait either.
#[test]
fn blocking_wait_drop_during_shutdown_does_not_block_on_a_blocking_child_two_workers() {
    runtime_shutdown_with_a_blocking_child_waiting_for_its_task(2);
}

/// The nursery belongs to runtime A (first polled under A's `enter` guard: its children run
/// on A), but its future is a task of runtime B, and B is dropped. The drop runs on B's
/// worker during B's shutdown: probing A alone says "not shutting down" and the drop blocked
/// B's shutdown for the whole grace period until session 7; B is probed too.
#[test]
fn blocking_wait_drop_during_the_shutdown_of_another_runtime_than_the_childrens() {
    let children_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tasks_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (task, started_rx, stopped_rx) =
        task_with_a_blocking_child_waiting_for_it(Some(children_runtime.handle().clone()));
    tasks_runtime.spawn(task);
    started_rx
        .recv_timeout(HANG_BOUND)
        .expect("the blocking child started");

    let (dropped_tx, dropped_rx) = mpsc::channel();
    std::thread::spawn(move || {
        drop(tasks_runtime);
        dropped_tx.send(()).unwrap();
    });
    if dropped_rx.recv_timeout(HANG_BOUND).is_err() {
        // Dropping it would wait for the blocked child, which waits for the blocked drop.
        std::mem::forget(children_runtime);
        panic!(
            "dropping the task's runtime did not return: the nursery's drop blocked that \
             runtime's shutdown instead of falling back to adoption"
        );
    }
    // The child runs on the other runtime's blocking pool: released, it returns there.
    assert_eq!(stopped_rx.recv_timeout(HANG_BOUND), Ok(true));
    drop(children_runtime);
}
