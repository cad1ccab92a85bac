//! Review round 19: a local scope's children and a user's waker that panics when the
//! scope gives a child's outcome to its handle. Each test failed before its fix.

mod common;

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;

use common::nursery::AppError;
use futures::FutureExt;
use tokio_nursery::{JoinError, NurseryError, cancelled, local_scope};

/// Was: the scope woke the handle's waiter inside the child's poll, before it recorded the
/// child's failure; a panic of that waker was taken for the child's panic, the failure was
/// lost and the scope panicked. The waiter's panic is caught (a line on stderr, as a
/// nursery's crate-side wakes) and the scope fails with the child's error (SPEC N4).
#[tokio::test]
async fn a_panicking_handle_waker_loses_no_failure_of_a_local_child() {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let out = AssertUnwindSafe(local_scope(async |s| {
        let handle = s.spawn(async move {
            let _ = released.await;
            Err::<(), _>(AppError::Boom(19))
        });
        // The handle waits with a waker that panics when woken.
        let waiting = common::wakers::wait_with_panicking_waker(handle);
        release.send(()).unwrap();
        // The child's failure cancels the scope (fail-fast).
        let cancelled = cancelled().await;
        drop(waiting);
        Err::<(), _>(AppError::Cancelled(cancelled))
    }))
    .catch_unwind()
    .await;
    let error = out.expect("the waker's panic is not the scope's");
    let failures = match &error {
        Err(NurseryError::Failed(failures)) => failures,
        other => panic!("the child's failure, not {other:?}"),
    };
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        matches!(failures[0].error(), AppError::Boom(19)),
        "{failures:?}"
    );
}

/// Was: dropping a local scope tells each child's handle `ChildAborted`; a waker panicking
/// there came out of the drop as if a child's future had panicked. The drop goes on (every
/// child's future dropped) and the waker's panic stays with the crate's line on stderr.
#[tokio::test]
async fn a_panicking_handle_waker_does_not_come_out_of_a_local_scopes_drop() {
    let dropped = std::sync::atomic::AtomicUsize::new(0);
    struct CountsDrop<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for CountsDrop<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let waiting = RefCell::new(None);
    {
        let mut scope = Box::pin(local_scope(async |s| {
            for _ in 0..3 {
                let guard = CountsDrop(&dropped);
                let handle = s.spawn(async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                    Ok::<_, AppError>(())
                });
                waiting
                    .borrow_mut()
                    .get_or_insert_with(Vec::new)
                    .push(common::wakers::wait_with_panicking_waker(handle));
            }
            std::future::pending::<()>().await;
            Ok::<_, AppError>(())
        }));
        assert!(futures::poll!(scope.as_mut()).is_pending());
        let drop_scope = std::panic::catch_unwind(AssertUnwindSafe(|| drop(scope)));
        assert!(drop_scope.is_ok(), "the waker's panic came out of the drop");
    }
    assert_eq!(dropped.load(std::sync::atomic::Ordering::SeqCst), 3);
    for mut handle in waiting.into_inner().unwrap() {
        let outcome = futures::poll!(handle.as_mut());
        assert!(
            matches!(
                outcome,
                std::task::Poll::Ready(Err(JoinError::ChildAborted))
            ),
            "{outcome:?}"
        );
    }
}

/// Was: a blocking child's end, the nursery's last, woke the nursery's future from the
/// blocking thread; a panic of that waker unwound the blocking task after the closure had
/// returned, and the child's handle read `ChildPanicked` instead of its value. The panic is
/// caught (a line on stderr) and the handle gets the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_nursery_waker_leaves_a_blocking_childs_value_to_its_handle() {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (send_handle, handle) = tokio::sync::oneshot::channel();
    let run = tokio_nursery::Nursery::new().run(|n| async move {
        let child = n.spawn_blocking(move |_| {
            released.recv().unwrap();
            Ok::<_, AppError>(7)
        });
        send_handle.send(child).ok().unwrap();
        Ok::<_, AppError>(())
    });
    // The nursery waits for its child with a waker that panics when woken.
    let mut waiting = common::wakers::wait_with_panicking_waker(run);
    let handle = handle.await.unwrap();
    release.send(()).unwrap();
    assert_eq!(handle.await.unwrap(), 7);
    assert_eq!(waiting.as_mut().await.unwrap(), Some(()));
}

/// Was: the last child's end told the nursery's future, then the outlet's waiters, then an
/// adopter, and a panic of the first waker skipped the others: a task waiting on
/// `next_incident` for the `None` that says every child is done waited for ever. Each is
/// told now, and the first panic goes on after.
#[tokio::test(start_paused = true)]
async fn a_panicking_nursery_waker_leaves_the_outlets_waiters_woken() {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (send_handle, nursery) = tokio::sync::oneshot::channel();
    let run = tokio_nursery::Nursery::new()
        .supervisor()
        .run(|n| async move {
            n.spawn(async move {
                let _ = released.await;
                Ok::<_, AppError>(())
            });
            send_handle.send(n.clone()).ok().unwrap();
            Ok::<_, AppError>(())
        });
    // The nursery waits for its child with a waker that panics when woken.
    let mut waiting = common::wakers::wait_with_panicking_waker(run);
    let nursery = nursery.await.unwrap();
    let reader = tokio::spawn(async move { nursery.next_incident().await.is_none() });
    // The reader and the child run and wait (one thread: in turn).
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    assert!(!reader.is_finished(), "the reader waits on the outlet");
    release.send(()).unwrap();
    // Paused clock: an hour passes at once if nothing else can run.
    let done = tokio::time::timeout(std::time::Duration::from_secs(3600), reader).await;
    assert!(
        done.expect("the outlet's waiter was woken").unwrap(),
        "no incident, every child done"
    );
    assert_eq!(waiting.as_mut().await.unwrap(), Some(()));
}
