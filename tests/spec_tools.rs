//! SPEC C2: the poisoning mutex.

mod common;

use std::time::Duration;

use futures::FutureExt;
use tokio_nursery::*;

#[tokio::test(start_paused = true)]
async fn c2_a_completed_section_never_poisons_even_with_an_error() {
    common::leak_checked(async move {
        let m = Mutex::new(0u32);
        let r: Result<u32, &str> = m
            .lock(async |n| {
                *n += 1;
                tokio::task::yield_now().await;
                Err("business error")
            })
            .await
            .unwrap();
        assert_eq!(r, Err("business error"));
        let early = m
            .lock(async |n| -> Result<(), std::io::Error> {
                *n += 1;
                std::fs::metadata("/definitely/not/here")?; // returns early through `?`
                *n += 100;
                Ok(())
            })
            .await
            .unwrap();
        assert!(early.is_err());
        assert!(!m.is_poisoned());
        assert_eq!(m.lock(async |n| *n).await.unwrap(), 2);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn c2_a_section_dropped_mid_await_poisons_and_the_next_lock_says_so() {
    common::leak_checked(async move {
        let m = Mutex::new((100u32, 0u32));
        let cut = tokio::time::timeout(
            Duration::from_millis(10),
            m.lock(async |(a, b)| {
                *a -= 30;
                tokio::time::sleep(Duration::from_secs(1)).await;
                *b += 30;
            }),
        )
        .await;
        assert!(cut.is_err());
        assert!(m.is_poisoned());
        let mut poisoned = m.lock(async |_| ()).await.unwrap_err();
        assert_eq!(*poisoned, (70, 0));
        poisoned.1 = 30; // repair
        poisoned.clear_poison();
        assert_eq!(m.lock(async |(a, b)| *a + *b).await.unwrap(), 100);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn c2_a_panicking_section_poisons() {
    common::leak_checked(async move {
        let m = Mutex::new(1u32);
        let panicked = std::panic::AssertUnwindSafe(m.lock(async |n| {
            *n = 2;
            panic!("boom");
        }))
        .catch_unwind()
        .await;
        assert!(panicked.is_err());
        assert!(m.is_poisoned());
        let guard = m.lock(async |_| ()).await.unwrap_err().into_guard();
        assert_eq!(*guard, 2);
        drop(guard);
        assert!(m.is_poisoned(), "into_guard keeps the poison");
        m.clear_poison();
        assert!(m.lock(async |_| ()).await.is_ok());
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn c2_waiting_for_the_lock_is_cancel_safe() {
    common::leak_checked(async move {
        let m = std::sync::Arc::new(Mutex::new(0u32));
        let holder = {
            let m = m.clone();
            tokio::spawn(async move {
                m.lock(async |n| {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    *n += 1;
                })
                .await
                .unwrap()
            })
        };
        tokio::task::yield_now().await;
        // Gives up while waiting for the lock: nothing ran, nothing poisons.
        let gave_up =
            tokio::time::timeout(Duration::from_millis(10), m.lock(async |n| *n += 10)).await;
        assert!(gave_up.is_err());
        holder.await.unwrap();
        assert!(!m.is_poisoned());
        assert_eq!(m.lock(async |n| *n).await.unwrap(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2_sections_work_inside_tokio_spawn() {
    common::leak_checked(async move {
        let m = std::sync::Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let m = m.clone();
                tokio::spawn(async move {
                    m.lock(async |v| {
                        tokio::task::yield_now().await;
                        v.push(i);
                    })
                    .await
                    .unwrap()
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(m.lock(async |v| v.len()).await.unwrap(), 8);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn c2_a_hard_scope_dropping_a_section_poisons_it() {
    common::leak_checked(async move {
        let m = Mutex::new(0u32);
        let out = CancelScope::new()
            .with_timeout(Duration::from_millis(5))
            .hard()
            .run(async {
                m.lock(async |n| {
                    *n = 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    *n = 2;
                })
                .await
                .ok();
                Ok::<_, Cancelled>(())
            })
            .await;
        assert!(matches!(out, Ok(None)));
        assert!(m.is_poisoned());
    })
    .await
}

// SPEC C1: protected work.

#[tokio::test(start_paused = true)]
async fn c1_protected_work_is_excluded_from_grace_aborts_and_its_nursery_waits() {
    common::leak_checked(async move {
        let start = tokio::time::Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let out = Nursery::new()
            .grace(Duration::from_millis(10))
            .run(|n| async move {
                let _work = protect(async move {
                    assert!(
                        !is_cancelled(),
                        "the caller's cancellation does not reach it"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    tx.send("committed").unwrap();
                });
                n.cancel();
                check_cancelled()
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(50),
            "the nursery waited for it"
        );
        assert_eq!(rx.await.unwrap(), "committed");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn c1_an_abort_drop_does_not_abort_protected_work() {
    common::leak_checked(async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let fut = Nursery::new().drop_mode(DropMode::Abort).run(
            |_n: NurseryHandle<Cancelled>| async move {
                drop(protect(async move {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    tx.send(()).unwrap();
                }));
                std::future::pending::<()>().await;
                Ok(())
            },
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(5), fut)
                .await
                .is_err()
        );
        orphans_finished().await;
        rx.await.expect("the protected work ran to completion");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn c1_a_message_taken_from_a_channel_is_not_lost_when_the_caller_is_dropped() {
    common::leak_checked(async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(4);
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let caller = async move {
            loop {
                // Taking the message and handling it is one protected unit.
                let done_tx = done_tx.clone();
                let handled = protect(async move {
                    let message = rx.recv().await?;
                    tokio::time::sleep(Duration::from_millis(20)).await; // handling takes time
                    done_tx.send(message).unwrap();
                    Some(rx)
                });
                match handled.await {
                    Some(back) => rx = back,
                    None => return,
                }
            }
        };
        tx.send(7).await.unwrap();
        // The caller is dropped while message 7 is being handled.
        assert!(
            tokio::time::timeout(Duration::from_millis(5), caller)
                .await
                .is_err()
        );
        orphans_finished().await;
        assert_eq!(done_rx.recv().await, Some(7));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn c1_its_own_deadline_bounds_it() {
    common::leak_checked(async move {
        let start = tokio::time::Instant::now();
        let out = protect(async {
            move_on_after(Duration::from_millis(15), async {
                sleep(Duration::from_secs(10)).await?;
                Ok::<_, Cancelled>(())
            })
            .await
        })
        .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(start.elapsed(), Duration::from_millis(15));
    })
    .await
}

// SPEC C3: cancellation that carries data.

#[tokio::test(start_paused = true)]
async fn c3_a_child_tells_shutdown_from_deadline_from_sibling_failure() {
    common::leak_checked(async move {
        async fn why(n: &NurseryHandle<std::io::Error>) -> String {
            let child = n.spawn(async {
                let cancelled = cancelled().await;
                let kind = match cancelled.reason() {
                    CancelReason::Shutdown => "shutdown",
                    CancelReason::Deadline => "deadline",
                    CancelReason::SiblingFailed => "sibling failed",
                    CancelReason::Explicit(_) => "explicit",
                    _ => "other",
                };
                Ok::<_, std::io::Error>(kind.to_string())
            });
            child.await.unwrap()
        }

        // Shutdown is the root's reason: tests/root.rs checks that children see it.

        // Deadline.
        let by_deadline = Nursery::new()
            .timeout(Duration::from_millis(10))
            .run(|n| async move { Ok::<_, std::io::Error>(why(&n).await) })
            .await;
        assert_eq!(by_deadline.unwrap().as_deref(), Some("deadline"));

        // Sibling failed.
        let by_failure = nursery(|n| async move {
            n.spawn(async { Err::<(), _>(std::io::Error::other("boom")) });
            let seen = why(&n).await;
            assert_eq!(seen, "sibling failed");
            Ok::<_, std::io::Error>(())
        })
        .await;
        assert_eq!(by_failure.unwrap_err().failures().len(), 1);

        // Explicit, with data the child can read.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let with_data = nursery(|n| async move {
            n.spawn(async {
                let cancelled = cancelled().await;
                tx.send(cancelled.reason().data::<u32>().copied()).unwrap();
                Err::<(), std::io::Error>(cancelled.into())
            });
            n.scope().cancel_with(42u32);
            Err::<(), _>(cancelled().await.into())
        })
        .await;
        assert_eq!(
            with_data.unwrap(),
            None,
            "the nursery absorbed its own cancellation"
        );
        assert_eq!(rx.await.unwrap(), Some(42));
    })
    .await
}

/// C2: waiting for the lock can be a cancellation point without the section becoming one:
/// a scope cancelled while its code waits gets `Cancelled` and nothing runs; a cancellation
/// that arrives during the section does not cut it short (no poison).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn c2_lock_cancellable_cancels_the_wait_only() {
    common::leak_checked(async move {
        let mutex = std::sync::Arc::new(tokio_nursery::Mutex::new(Vec::<String>::new()));
        let scope = tokio_nursery::CancelScope::new();
        let handle = scope.handle();
        let (holding_tx, holding_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let holder = {
            let mutex = mutex.clone();
            tokio::spawn(async move {
                mutex
                    .lock(async |log: &mut Vec<String>| {
                        holding_tx.send(()).unwrap();
                        release_rx.await.unwrap();
                        log.push("holder".into());
                    })
                    .await
                    .unwrap();
            })
        };
        holding_rx.await.unwrap();
        let waiter = {
            let mutex = mutex.clone();
            tokio::spawn(scope.run(async move {
                let ran = mutex
                    .lock_cancellable(async |log: &mut Vec<String>| log.push("waiter".into()))
                    .await?;
                Ok::<_, tokio_nursery::Cancelled>(ran.is_ok())
            }))
        };
        tokio::task::yield_now().await;
        handle.cancel();
        assert!(
            matches!(waiter.await.unwrap(), Ok(None)),
            "cancelled while waiting"
        );
        release_tx.send(()).unwrap();
        holder.await.unwrap();

        // A cancellation during the section: the section completes, nothing is poisoned.
        let scope = tokio_nursery::CancelScope::new();
        let handle = scope.handle();
        let out = scope
            .run(async {
                let ran = mutex
                    .lock_cancellable(async |log: &mut Vec<String>| {
                        handle.cancel();
                        tokio::task::yield_now().await; // not a cancellation point
                        log.push("section".into());
                    })
                    .await?;
                assert!(ran.is_ok());
                tokio_nursery::check_cancelled()
            })
            .await;
        assert!(matches!(out, Ok(None)));
        let log = mutex.lock(async |log: &mut Vec<String>| log.clone()).await;
        assert_eq!(log.unwrap(), ["holder", "section"]);
    })
    .await
}
