//! Review round 13: a nursery child's outcome goes to its handle through a slot in the
//! child's cell instead of tokio's `JoinHandle`. These hold what the `JoinHandle` gave, and
//! (the second round's probes) the hand-over's edges: aborts racing ends, panicking drops,
//! runtime shutdown, local children.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio_nursery::{Cancelled, JoinError, NurseryHandle, nursery};

/// Holds every thread that wakes a [`GatedWaker`] until it is opened.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

/// Opens its gate when dropped (also when a failed assertion unwinds, so no worker thread
/// is left waiting and the runtime can shut down).
struct Opens(Arc<Gate>);

impl Drop for Opens {
    fn drop(&mut self) {
        *self.0.open.lock().unwrap() = true;
        self.0.opened.notify_all();
    }
}

/// A waker that reports each wake on a channel, then holds the waking thread at its gate:
/// whatever that thread does after the wake (a child's task telling its collector) comes
/// after the poller polled and checked, with no timing involved.
struct GatedWaker {
    woken: Mutex<mpsc::Sender<()>>,
    gate: Arc<Gate>,
}

impl Wake for GatedWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.woken.lock().unwrap().send(());
        let mut open = self.gate.open.lock().unwrap();
        while !*open {
            open = self.gate.opened.wait(open).unwrap();
        }
    }
}

/// Polls `future` on this thread with a [`GatedWaker`] until it is ready; `after_first_poll`
/// runs once the first poll returned `Pending`. The gate stays closed until the returned
/// guard is dropped: check what the future's end promises before that. Bounds a hang at
/// 10 s (the futures driven here are woken once, when they can end).
fn drive<F: Future>(future: F, after_first_poll: impl FnOnce()) -> (F::Output, Opens) {
    let (tx, rx) = mpsc::channel();
    let gate = Arc::new(Gate::default());
    let opens = Opens(gate.clone());
    let waker = Waker::from(Arc::new(GatedWaker {
        woken: Mutex::new(tx),
        gate,
    }));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    let mut after = Some(after_first_poll);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return (output, opens);
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
    let (outcome, _opens) = drive(
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
    let (outcome, _opens) = drive(
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

/// A value (or a guard in a child's future) whose drop panics.
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

// Second round: probes of the hand-over.

const BOUND: Duration = Duration::from_secs(20);

/// Aborting a child while it returns: the handle yields the value or `ChildAborted`, and
/// every value is dropped exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_racing_the_end_drops_each_value_once() {
    let value = Arc::new(());
    let (ok, aborted) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let run = nursery(|n: NurseryHandle<Cancelled>| {
        let value = value.clone();
        let (ok, aborted) = (ok.clone(), aborted.clone());
        async move {
            for i in 0..2000u32 {
                let v = value.clone();
                let handle = n.spawn(async move {
                    for _ in 0..(i % 3) {
                        tokio::task::yield_now().await;
                    }
                    Ok::<_, Cancelled>(v)
                });
                let (ok, aborted) = (ok.clone(), aborted.clone());
                n.spawn(async move {
                    if i % 2 == 0 {
                        tokio::task::yield_now().await;
                    }
                    handle.abort();
                    match handle.await {
                        Ok(v) => {
                            drop(v);
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(JoinError::ChildAborted) => {
                            aborted.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(other) => panic!("unexpected {other:?}"),
                    }
                    Ok::<_, Cancelled>(())
                });
            }
            Ok::<_, Cancelled>(())
        }
    });
    let out = tokio::time::timeout(BOUND, run).await.expect("hang");
    assert_eq!(out.unwrap(), Some(()));
    assert_eq!(
        ok.load(Ordering::SeqCst) + aborted.load(Ordering::SeqCst),
        2000
    );
    tokio::time::timeout(BOUND, async {
        while Arc::strong_count(&value) > 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a value leaked");
}

/// A handle moved between tasks (so polled with different wakers) while its child ends on
/// another worker always gets the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handle_moved_between_tasks_gets_the_value() {
    let run = nursery(|n: NurseryHandle<Cancelled>| async move {
        for i in 0..500u32 {
            let mut handle = n.spawn(async move {
                for _ in 0..(i % 4) {
                    tokio::task::yield_now().await;
                }
                Ok::<_, Cancelled>(i)
            });
            n.spawn(async move {
                let first = tokio::time::timeout(Duration::from_micros(1), &mut handle).await;
                let got = match first {
                    Ok(v) => v,
                    Err(_) => tokio::spawn(handle).await.unwrap(),
                };
                assert_eq!(got.unwrap(), i);
                Ok::<_, Cancelled>(())
            });
        }
        Ok::<_, Cancelled>(())
    });
    let out = tokio::time::timeout(BOUND, run).await.expect("hang");
    assert_eq!(out.unwrap(), Some(()));
}

/// A handle dropped before its child returns a value whose drop panics: the nursery still
/// ends with its body's value.
#[tokio::test]
async fn a_value_dropped_by_the_child_whose_drop_panics() {
    let out = nursery(|n: NurseryHandle<Cancelled>| async move {
        let handle = n.spawn(async {
            tokio::task::yield_now().await;
            Ok::<_, Cancelled>(Bomb)
        });
        drop(handle);
        Ok::<_, Cancelled>(5)
    });
    let out = tokio::time::timeout(BOUND, out).await.expect("hang");
    assert_eq!(out.unwrap(), Some(5));
}

/// Children dropped unpolled or parked by a runtime shut down in the background read aborted
/// from another executor.
#[test]
fn children_dropped_by_a_shut_down_runtime_read_aborted() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    rt.block_on(async move {
        let mut run = Box::pin(nursery(|n: NurseryHandle<Cancelled>| async move {
            let mut handles = Vec::new();
            for _ in 0..200 {
                handles.push(n.spawn(std::future::pending::<Result<u32, Cancelled>>()));
            }
            tx.send(handles).unwrap();
            std::future::pending::<()>().await;
            Ok::<_, Cancelled>(())
        }));
        assert!(futures::poll!(run.as_mut()).is_pending());
        std::mem::forget(run);
    });
    let handles = rx.recv().unwrap();
    rt.shutdown_timeout(Duration::from_secs(5));
    for handle in handles {
        let joined = futures::executor::block_on(handle);
        assert!(matches!(joined, Err(JoinError::ChildAborted)), "{joined:?}");
    }
}

/// A child aborted whose future panics in its drop: its handle reads aborted, the nursery
/// resumes the panic.
#[tokio::test]
async fn an_aborted_child_whose_drop_panics() {
    let run = nursery(|n: NurseryHandle<Cancelled>| async move {
        let handle = n.spawn(async move {
            let _guard = Bomb;
            std::future::pending::<()>().await;
            Ok::<_, Cancelled>(1u32)
        });
        tokio::task::yield_now().await;
        handle.abort();
        let joined = handle.await;
        assert!(matches!(joined, Err(JoinError::ChildAborted)), "{joined:?}");
        Ok::<_, Cancelled>(())
    });
    let out = tokio::spawn(run).await;
    let err = out.expect_err("the nursery resumes the child's panic");
    assert!(err.is_panic());
}

/// A child returning a value whose future panics in its drop: its handle reads panicked.
#[tokio::test]
async fn a_child_whose_future_panics_in_its_drop_reads_panicked() {
    let run = nursery(|n: NurseryHandle<Cancelled>| async move {
        let handle = n.spawn(async move {
            let guard = Bomb;
            tokio::task::yield_now().await;
            let _keep = &guard;
            Ok::<_, Cancelled>(1u32)
        });
        let joined = handle.await;
        assert!(
            matches!(joined, Err(JoinError::ChildPanicked)),
            "{joined:?}"
        );
        Ok::<_, Cancelled>(())
    });
    let out = tokio::spawn(run).await;
    assert!(out.expect_err("resumed").is_panic());
}

/// A collected child's value whose drop panics, the collector dropped: the nursery ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collected_value_dropped_unread_whose_drop_panics() {
    let run = nursery(|n: NurseryHandle<Cancelled>| async move {
        let set = n.collector::<Bomb>();
        let (go, gate) = tokio::sync::watch::channel(false);
        for _ in 0..20 {
            let mut gate = gate.clone();
            set.spawn(async move {
                let _ = gate.wait_for(|go| *go).await;
                Ok::<_, Cancelled>(Bomb)
            });
        }
        drop(set); // nothing queued yet: each Bomb is dropped by its child's task
        go.send(true).unwrap();
        Ok::<_, Cancelled>(3)
    });
    let out = tokio::time::timeout(BOUND, run).await.expect("hang");
    assert_eq!(out.unwrap(), Some(3));
}

/// spawn_local children of a nursery dropped in abort mode read aborted.
#[tokio::test]
async fn local_children_aborted_by_the_nursery_read_aborted() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let (tx, rx) = std::sync::mpsc::channel();
            let mut run = Box::pin(
                tokio_nursery::Nursery::new()
                    .drop_mode(tokio_nursery::DropMode::Abort)
                    .run(|n: NurseryHandle<Cancelled>| async move {
                        let h = n.spawn_local(async {
                            std::future::pending::<()>().await;
                            Ok::<_, Cancelled>(std::rc::Rc::new(1))
                        });
                        let s = n.spawn(std::future::pending::<Result<u8, Cancelled>>());
                        tx.send((h, s)).unwrap();
                        std::future::pending::<()>().await;
                        Ok::<_, Cancelled>(())
                    }),
            );
            assert!(futures::poll!(run.as_mut()).is_pending());
            tokio::task::yield_now().await;
            drop(run);
            let (h, s) = rx.recv().unwrap();
            let h = tokio::time::timeout(BOUND, h).await.expect("hang");
            assert!(matches!(h, Err(JoinError::ChildAborted)), "{h:?}");
            let s = tokio::time::timeout(BOUND, s).await.expect("hang");
            assert!(matches!(s, Err(JoinError::ChildAborted)), "{s:?}");
        })
        .await;
}

/// A child whose future panics in its drop after returning a value whose own drop panics:
/// SPEC N6 says the nursery resumes the child's panic; the handle should read panicked.
#[tokio::test]
async fn a_drop_panic_after_a_value_whose_drop_panics_is_not_lost() {
    let run = nursery(|n: NurseryHandle<Cancelled>| async move {
        let handle = n.spawn(async move {
            let guard = Bomb;
            tokio::task::yield_now().await;
            let _keep = &guard;
            Ok::<_, Cancelled>(Bomb)
        });
        let joined = handle.await.map(std::mem::forget);
        Ok::<_, Cancelled>(format!("{joined:?}"))
    });
    let out = tokio::spawn(run).await;
    match out {
        Err(e) if e.is_panic() => {}
        other => panic!("the child's panic was lost: nursery gave {other:?}"),
    }
}
