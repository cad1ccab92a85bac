//! Review round 19: a user's waker that panics in the crate's own steps (a local scope
//! giving a child's outcome to its handle, a child's end telling its nursery, the outlet,
//! `orphans_finished`, the fail-fast cancellation), and a boxed `Cancelled` inside anyhow.
//! Each test failed before its fix.

mod common;

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;

use std::time::Duration;

use common::nursery::AppError;
use futures::FutureExt;
use tokio_nursery::{JoinError, Nursery, NurseryError, cancelled, local_scope};

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

/// Review round 19 (a helper's review), as those below: a fail-fast nursery whose outlet (`next_incident`) has a waiter with a panicking waker:
/// a child's failure wakes the outlet's waiters in `Registry::record`, the waker panics
/// there, `record` unwinds before it returns `Recorded::First`, and `Shared::fail` never
/// cancels the nursery (SPEC N4): the sibling waits for its cancellation for ever, and so
/// does the nursery.
#[tokio::test(start_paused = true)]
async fn a_panicking_outlet_waker_does_not_stop_fail_fast() {
    let (send_handle, handle) = tokio::sync::oneshot::channel();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let run = Nursery::new().run(|n| async move {
        n.spawn(async move {
            let _ = released.await;
            Err::<(), _>(AppError::Boom(1))
        });
        n.spawn(async move {
            let cancelled = cancelled().await;
            Err::<(), _>(AppError::Cancelled(cancelled))
        });
        send_handle.send(n.clone()).ok().unwrap();
        Ok::<_, AppError>(())
    });
    let run = tokio::spawn(run);
    let nursery = handle.await.unwrap();
    // Someone reads the outlet with a waker that panics when woken.
    let waiting =
        common::wakers::wait_with_panicking_waker(async move { nursery.next_incident().await });
    release.send(()).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(3600), run)
        .await
        .expect("the failure cancelled the sibling and the nursery ended")
        .unwrap();
    drop(waiting);
    assert!(out.is_err(), "{out:?}");
}

/// A nursery dropped in wait mode outside any nursery: its child becomes an orphan of the
/// runtime. Two tasks wait in `orphans_finished`, the first with a waker that panics. The
/// orphan's end reaches `Orphans::adoptee_finished`, which woke the waiters one by one: the first panics, the second is never woken (it was taken out of
/// the registry) and waits for ever.
#[tokio::test(start_paused = true)]
async fn a_panicking_orphans_finished_waker_leaves_the_other_waiters_woken() {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (started, is_started) = tokio::sync::oneshot::channel::<()>();
    let mut run = Box::pin(Nursery::new().run(|n| async move {
        n.spawn(async move {
            started.send(()).unwrap();
            // Deaf to the cancellation of the wait-mode drop.
            let _ = released.await;
            Ok::<_, AppError>(())
        });
        std::future::pending::<()>().await;
        Ok::<_, AppError>(())
    }));
    assert!(futures::poll!(run.as_mut()).is_pending());
    is_started.await.unwrap();
    drop(run);
    assert_eq!(tokio_nursery::orphan_count(), 1);
    let panicking = common::wakers::wait_with_panicking_waker(tokio_nursery::orphans_finished());
    let other = tokio::spawn(tokio_nursery::orphans_finished());
    tokio::task::yield_now().await;
    assert!(!other.is_finished());
    release.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(3600), other)
        .await
        .expect("the second orphans_finished waiter was woken")
        .unwrap();
    drop(panicking);
}

/// The `!Send` twin of round 19's blocking fix: a local child (`spawn_local`, SPEC N12)
/// ends as its nursery's last child; `ChildTask::poll` (src/nursery/child.rs, the
/// `BEFORE_FINISH` branch) calls `finish` uncaught, the nursery's waker panics there (Last::tell
/// resumes it), the child's tokio task unwinds after its value was made, and the handle,
/// which reads the task's output, says `ChildPanicked` instead of the value.
#[tokio::test(start_paused = true)]
async fn a_panicking_nursery_waker_leaves_a_local_childs_value_to_its_handle() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let (release, released) = tokio::sync::oneshot::channel::<()>();
            let (send_handle, handle) = tokio::sync::oneshot::channel();
            let run = Nursery::new().run(|n| async move {
                let child = n.spawn_local(async move {
                    let _ = released.await;
                    Ok::<_, AppError>(std::rc::Rc::new(7))
                });
                send_handle.send(child).ok().unwrap();
                Ok::<_, AppError>(())
            });
            // The nursery waits for its child with a waker that panics when woken.
            let mut waiting = common::wakers::wait_with_panicking_waker(run);
            let handle = handle.await.unwrap();
            release.send(()).unwrap();
            assert_eq!(*handle.await.unwrap(), 7);
            assert_eq!(waiting.as_mut().await.unwrap(), Some(()));
        })
        .await;
}

/// A started child fails before its signal and its `Start` is dropped unpolled: the drop
/// hands the failure to the nursery (`Start::drop` -> the `OrphanedEnd` closure ->
/// `Shared::fail`), whose fail-fast cancellation wakes a waker that
/// panics; `Node::cancel` resumes that panic and it comes out of `Start`'s drop, into the
/// body, as if the body had panicked. A child's end settled on nobody's behalf catches it
/// (`told` in child.rs); this path does not.
#[tokio::test(start_paused = true)]
async fn a_panicking_waker_does_not_come_out_of_a_starts_drop() {
    let out = Nursery::new()
        .run(|n| async move {
            // Someone waits for the nursery's cancellation with a waker that panics.
            let watcher = common::wakers::wait_with_panicking_waker(cancelled());
            let mut start = Box::pin(n.start(|_ready: tokio_nursery::Ready<()>| async {
                Err::<(), _>(AppError::Boom(3))
            }));
            assert!(futures::poll!(start.as_mut()).is_pending());
            // The child runs and fails before signalling.
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(start)));
            drop(watcher);
            assert!(
                dropped.is_ok(),
                "the waker's panic came out of the Start's drop"
            );
            Ok::<_, AppError>(())
        })
        .await;
    match out {
        Err(tokio_nursery::NurseryError::Failed(failures)) => {
            assert!(
                matches!(failures[0].error(), AppError::Boom(3)),
                "{failures:?}"
            )
        }
        other => panic!("the started child's failure, not {other:?}"),
    }
}

/// A nursery's body fails while a child waits for the nursery's cancellation with a waker
/// that panics: `NurseryFuture::poll` records the body's failure with `Shared::fail`,
/// whose fail-fast `node.cancel` wakes that waker and resumed its panic out of the
/// nursery's poll. The caller gets the waker's panic
/// instead of `NurseryError::Failed` with the body's error (SPEC N4). A local scope catches
/// it since 94f21fe (`LocalScope::cancel_siblings`); a nursery does not.
#[tokio::test(start_paused = true)]
async fn a_panicking_waker_does_not_take_a_nursery_bodys_failure() {
    let out = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(Nursery::new().run(
        |n| async move {
            // The body waits for the nursery's cancellation with a waker that panics, and
            // a child keeps that wait.
            let waiting = common::wakers::wait_with_panicking_waker(cancelled());
            n.spawn(async move {
                let cancelled = cancelled().await;
                drop(waiting);
                Err::<(), _>(AppError::Cancelled(cancelled))
            });
            tokio::task::yield_now().await;
            Err::<(), _>(AppError::Boom(5))
        },
    )))
    .await;
    let out = out.expect("the waker's panic is not the nursery's");
    match out {
        Err(tokio_nursery::NurseryError::Failed(failures)) => {
            assert_eq!(failures.len(), 1, "{failures:?}");
            assert!(
                matches!(failures[0].error(), AppError::Boom(5)),
                "{failures:?}"
            )
        }
        other => panic!("the body's failure, not {other:?}"),
    }
}

/// Was: protected work's end told its adopter (the nursery that waits for it) from a drop
/// in the work's task; a panic of the nursery's waker there unwound the task after the work
/// had returned, and the handle resumed that panic instead of giving the value. The panic
/// is caught (a line on stderr). The same drop ends a `NurseryExecutor`'s adopted task.
#[tokio::test(start_paused = true)]
async fn a_panicking_nursery_waker_leaves_protected_works_value_to_its_handle() {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (send_handle, handle) = tokio::sync::oneshot::channel();
    let run = Nursery::new().run(|_| async move {
        let work = tokio_nursery::protect(async move {
            let _ = released.await;
            7
        });
        send_handle.send(work).ok().unwrap();
        Ok::<_, AppError>(())
    });
    // The nursery waits for the protected work with a waker that panics when woken.
    let mut waiting = common::wakers::wait_with_panicking_waker(run);
    let work = handle.await.unwrap();
    release.send(()).unwrap();
    let value = AssertUnwindSafe(work).catch_unwind().await;
    assert_eq!(value.expect("the work's value, not the waker's panic"), 7);
    assert_eq!(waiting.as_mut().await.unwrap(), Some(()));
}

/// Review round 19 (two helpers' reviews of points and of the fix for what the first one
/// found): a boxed `Cancelled` put into anyhow is out of reach (anyhow keeps the box behind
/// a wrapper whose `source()` skips it; its downcast also matches a context), and a real
/// failure described with a boxed `Cancelled` as its context is no echo. A first fix
/// reached the box through that downcast and so took such a failure for a cancellation,
/// losing it; the limitation is documented on `CancelError` instead. The `Cancelled` itself
/// put into anyhow is found.
#[cfg(feature = "anyhow")]
#[tokio::test]
async fn a_failure_with_a_boxed_cancelled_as_anyhow_context_is_no_echo() {
    let scope = tokio_nursery::CancelScope::new();
    scope.handle().cancel();
    let out = scope
        .run(async {
            let cancelled = tokio_nursery::checkpoint().await.unwrap_err();
            let found = anyhow::Error::from(cancelled.clone());
            assert!(tokio_nursery::CancelError::as_cancelled(&found).is_some());
            let note: Box<dyn std::error::Error + Send + Sync> = cancelled.into();
            let failure = anyhow::Error::from(std::io::Error::other("cleanup failed"));
            Err::<(), _>(failure.context(note))
        })
        .await;
    let error = out.expect_err("a failure, not an echo");
    assert!(error.to_string().contains("cancelled"), "{error}");
    assert_eq!(error.root_cause().to_string(), "cleanup failed");
}
