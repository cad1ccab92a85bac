#![cfg(feature = "tracing")]
//! SPEC N7's unobserved-cancellation warning and O1's events, seen through a recording
//! `tracing` layer.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::events::{Recorded, recording};
use tokio_nursery::*;
use tracing_subscriber::layer::SubscriberExt;

/// A child that observed the cancellation at a point and is still cleaning up is not
/// named, whether or not it has a scope of its own (one without keeps the mark in its own
/// state).
#[test]
fn n07_children_still_cleaning_up_after_observing_are_not_named() {
    let events = recording(async {
        let out = Nursery::new()
            .warn_unobserved_after(Some(Duration::from_secs(1)))
            .run(|n| async move {
                n.spawn_named("cleaning", async {
                    let cancelled = cancelled().await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Err::<(), _>(cancelled)
                });
                n.spawn_named("cleaning-in-its-scope", async {
                    let _own = current_scope().expect("its own scope, made now");
                    let cancelled = cancelled().await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Err::<(), _>(cancelled)
                });
                n.spawn_named("stuck", async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok::<_, Cancelled>(())
                });
                tokio::task::yield_now().await;
                n.cancel();
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
    });
    let warnings: Vec<_> = events
        .iter()
        .filter(|e| e.contains("not observed"))
        .collect();
    assert_eq!(warnings.len(), 1, "{events:#?}");
    assert!(warnings[0].contains("\"stuck\""), "{}", warnings[0]);
    assert!(!warnings[0].contains("cleaning"), "{}", warnings[0]);
}

#[test]
fn n07_a_cancellation_nobody_observed_is_reported_with_the_childrens_names() {
    let events = recording(async {
        let out = Nursery::new()
            .warn_unobserved_after(Some(Duration::from_secs(1)))
            .run(|n| async move {
                n.spawn_named("polite", async { Err::<(), _>(cancelled().await) });
                n.spawn_named("stuck", async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok::<_, Cancelled>(())
                });
                tokio::task::yield_now().await;
                n.cancel();
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
    });
    let warnings: Vec<_> = events
        .iter()
        .filter(|e| e.contains("not observed"))
        .collect();
    assert_eq!(warnings.len(), 1, "{events:#?}");
    assert!(warnings[0].starts_with("WARN"), "{}", warnings[0]);
    assert!(warnings[0].contains("\"stuck\""), "{}", warnings[0]);
    assert!(!warnings[0].contains("polite"), "{}", warnings[0]);
    assert!(
        events
            .iter()
            .any(|e| e.contains("message=cancel ") && e.contains("reason=explicit cancel")),
        "{events:#?}"
    );
}

/// SPEC N7 on a multi-thread runtime: an unnamed child busy in its first poll (it holds no
/// slot in its registry yet, so it cannot be named) is counted by the warning; it spins
/// until the warning was recorded.
#[test]
fn n07_a_child_busy_in_its_first_poll_is_counted_by_the_warning() {
    let recorded = Recorded::default();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(recorded.clone()));
    let on_workers = dispatch.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            std::mem::forget(tracing::dispatcher::set_default(&on_workers));
        })
        .build()
        .unwrap();
    let warned = {
        let recorded = recorded.clone();
        move || {
            recorded
                .0
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.contains("not observed"))
        }
    };
    let out = common::nursery::within_hang_bound(move || {
        let _default = tracing::dispatcher::set_default(&dispatch);
        runtime.block_on(async move {
            Nursery::new()
                .warn_unobserved_after(Some(Duration::from_millis(10)))
                .run(|n| async move {
                    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let running = started.clone();
                    n.spawn(async move {
                        running.store(true, std::sync::atomic::Ordering::SeqCst);
                        while !warned() {
                            std::hint::spin_loop();
                        }
                        Ok::<_, Cancelled>(())
                    });
                    common::wait_until("the child runs", || {
                        started.load(std::sync::atomic::Ordering::SeqCst)
                    })
                    .await;
                    n.cancel();
                    Ok::<_, Cancelled>(())
                })
                .await
        })
    });
    assert_eq!(out.unwrap(), Some(()));
    let events = recorded.0.lock().unwrap().clone();
    let warnings: Vec<_> = events
        .iter()
        .filter(|e| e.contains("not observed"))
        .collect();
    assert_eq!(warnings.len(), 1, "{events:#?}");
    assert!(warnings[0].contains("1 child starting"), "{}", warnings[0]);
}

/// SPEC N7: a nursery in the body of one whose grace ran out is reached by the cascade (its
/// blocking child, which cannot be aborted, is told and named in the outer nursery's
/// warning). Its own grace, running out later, warns no second time about the same child
/// (it did: the cascade had not marked it past its grace for its own timer).
#[test]
fn n07_a_nursery_reached_by_the_cascade_does_not_warn_again_at_its_own_grace() {
    let events = recording(async {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let out = Nursery::new()
            .grace(Duration::from_millis(20))
            .run(|n: NurseryHandle<NurseryError<Cancelled>>| async move {
                n.cancel();
                let inner = Nursery::new().grace(Duration::from_millis(50)).run(
                    |inner: NurseryHandle<Cancelled>| async move {
                        // Ignores its context: it ends when the test says so.
                        inner.spawn_blocking_named("legacy", move |_| {
                            released.recv().unwrap();
                            Ok(())
                        });
                        Ok(())
                    },
                );
                // The paused clock does not advance by itself while a blocking child runs.
                let driver = async {
                    for _ in 0..10 {
                        tokio::time::advance(Duration::from_millis(10)).await;
                    }
                    release.send(()).unwrap();
                };
                let (inner, ()) = tokio::join!(inner, driver);
                assert_eq!(inner.unwrap(), Some(()), "its body returned");
                Ok(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
    });
    let warnings: Vec<_> = events
        .iter()
        .filter(|e| e.starts_with("WARN") && e.contains("grace period expired"))
        .collect();
    assert_eq!(warnings.len(), 1, "{events:#?}");
    assert!(warnings[0].contains("\"legacy\""), "{}", warnings[0]);
}

/// SPEC N7: a shield lowered after a nursery's grace ran out exposes the nurseries in its
/// scope to the expiry (their children are aborted at once), and one warn-level event names
/// those children, on the scope whose shield was lowered.
#[test]
fn n07_a_shield_lowered_past_the_grace_warns_naming_the_children_it_aborts() {
    let events = recording(async {
        let out = Nursery::new()
            .grace(Duration::from_millis(20))
            .run(|n: NurseryHandle<Cancelled>| async move {
                n.cancel();
                let shielded = CancelScope::new().shielded();
                let shield = shielded.handle();
                let inner = shielded.run(async {
                    Nursery::new()
                        .run(|inner: NurseryHandle<Cancelled>| async move {
                            inner.spawn_named("stuck", async {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                Ok(())
                            });
                            Ok(())
                        })
                        .await
                });
                let lower = async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    shield.set_shield(false);
                };
                let (inner, ()) = tokio::join!(inner, lower);
                assert!(inner.is_ok(), "{inner:?}");
                Ok(())
            })
            .await;
        assert!(out.is_ok(), "{out:?}");
    });
    let warnings: Vec<_> = events
        .iter()
        .filter(|e| e.starts_with("WARN") && e.contains("grace period expired"))
        .collect();
    assert_eq!(warnings.len(), 1, "{events:#?}");
    assert!(warnings[0].contains("\"stuck\""), "{}", warnings[0]);
    assert!(warnings[0].contains("late=true"), "{}", warnings[0]);
}

/// A local child's future that fails, then panics when dropped.
struct FailsThenPanicsInDrop;

impl std::future::Future for FailsThenPanicsInDrop {
    type Output = Result<(), common::nursery::AppError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::task::Poll::Ready(Err(common::nursery::AppError::Boom(7)))
    }
}

impl Drop for FailsThenPanicsInDrop {
    fn drop(&mut self) {
        panic!("drop after the failure");
    }
}

/// SPEC B1 with N4/N6 (review round 18): a local child that failed and whose future then
/// panicked when dropped lost its failure (the stage dropped it with the unwinding). The
/// panic is resumed, and the failure is reported (an error-level event, as every failure
/// left when a local scope resumes a panic).
#[test]
fn b1_a_local_childs_failure_followed_by_a_panic_in_its_drop_is_reported() {
    let events = recording(async {
        let scope = local_scope(async |s| {
            s.spawn(FailsThenPanicsInDrop);
            Ok::<_, common::nursery::AppError>(())
        });
        let out = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(scope)).await;
        let payload = out.expect_err("the drop's panic is resumed");
        assert_eq!(panic_message(&*payload), Some("drop after the failure"));
    });
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("ERROR") && e.contains("Boom(7)")),
        "{events:#?}"
    );
}
