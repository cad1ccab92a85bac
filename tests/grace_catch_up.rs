//! SPEC N7's last clause ("past an ancestor's grace, abort cascades to every descendant")
//! for scopes that meet the expired grace late: a nursery whose scope is under a scope that
//! ended after the grace ran out, one exposed by a shield lowered after it, and one made in
//! a nursery that shields its own scope. Each test failed before session 18 (the stuck
//! child held its nursery for an hour): the cascade at the expiry reached none of them.

mod common;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_nursery::{
    CancelScope, Cancelled, JoinError, Nursery, NurseryError, NurseryHandle, cancelled,
    carry_scope, current_scope, protect,
};

const HOUR: Duration = Duration::from_secs(3600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A child that never reaches a cancellation point: only an abort ends it early.
async fn stuck() -> Result<(), Cancelled> {
    tokio::time::sleep(HOUR).await;
    Ok(())
}

/// Runs `rest` in the body of nursery A (grace 20 ms) once A is past its grace: an outer
/// scope is cancelled at once (A inherits it), then A's body sleeps 50 ms. Returns the outer
/// scope's outcome.
async fn past_the_grace_of_a<F, Fut>(rest: F) -> PastTheGrace
where
    F: FnOnce(NurseryHandle<Cancelled>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Cancelled>> + Send + 'static,
{
    let outer = CancelScope::new();
    let o = outer.handle();
    outer
        .run(async move {
            Nursery::new()
                .grace(ms(20))
                .run(|a: NurseryHandle<Cancelled>| async move {
                    o.cancel(); // A inherits the cancellation
                    tokio::time::sleep(ms(50)).await; // past A's grace
                    rest(a).await
                })
                .await
        })
        .await
}

/// What [`past_the_grace_of_a`] returns: the outer scope's outcome around A's.
type PastTheGrace = Result<Option<Option<()>>, NurseryError<Cancelled>>;

/// Runs nursery A with a grace of 20 ms, cancelled at once; its body runs a plain scope that
/// ends at `scope_ends_at`, after making (unpolled) a nursery carried out of it
/// (`carry_scope`), first polled at 50 ms; that nursery's child sleeps for `child_sleeps`
/// (no cancellation point) and returns 7. Returns the child's outcome and when A returned.
async fn carry_a_nursery_out_of_a_scope_ending_at(
    scope_ends_at: Duration,
    child_sleeps: Duration,
) -> (Result<u32, JoinError>, Duration) {
    let start = Instant::now();
    let out = Nursery::new()
        .grace(ms(20))
        .run(|a: NurseryHandle<Cancelled>| async move {
            a.cancel();
            let late = CancelScope::new()
                .run(async {
                    tokio::time::sleep(scope_ends_at).await; // in the scope
                    Ok::<_, Cancelled>(carry_scope(Nursery::new().run(
                        |n: NurseryHandle<Cancelled>| async move {
                            assert!(tokio_nursery::is_cancelled());
                            Ok(n.spawn_named("late", async move {
                                tokio::time::sleep(child_sleeps).await; // not a point
                                Ok::<_, Cancelled>(7)
                            }))
                        },
                    )))
                })
                .await;
            // The scope has ended; the nursery made in it is first polled at 50 ms.
            let late = late.expect("the scope was not cancelled itself").unwrap();
            tokio::time::sleep_until(start + ms(50)).await;
            let handle = late.await.unwrap().unwrap();
            Ok(common::nursery::how_it_ended(handle).await)
        })
        .await;
    (out.unwrap().unwrap(), start.elapsed())
}

/// A nursery carried out of a plain scope that ended after its nursery's grace ran out
/// starts past that grace: the ended scope keeps the mark, as it keeps the cancellation it
/// inherited (an ended scope no longer follows its ancestors).
#[tokio::test(start_paused = true)]
async fn n07_a_nursery_carried_out_of_a_scope_ended_past_the_grace_starts_past_it() {
    common::leak_checked(async move {
        let (joined, returned_at) = carry_a_nursery_out_of_a_scope_ending_at(ms(50), HOUR).await;
        assert!(matches!(joined, Err(JoinError::ChildAborted)), "{joined:?}");
        assert_eq!(returned_at, ms(50), "the late child was aborted at once");
    })
    .await
}

/// An ended scope no longer follows its ancestors (S14): one that ended before its
/// nursery's grace ran out is not past that grace, and neither is a nursery carried out of
/// it. The nursery is cancelled (the ended scope keeps the cancellation it inherited) and
/// waits for its child, which reaches no cancellation point.
#[tokio::test(start_paused = true)]
async fn n07_a_nursery_carried_out_of_a_scope_ended_before_the_grace_is_only_cancelled() {
    common::leak_checked(async move {
        let (joined, returned_at) = carry_a_nursery_out_of_a_scope_ending_at(ms(10), ms(100)).await;
        assert_eq!(joined.unwrap(), 7);
        assert_eq!(returned_at, ms(150), "the child ran to its end");
    })
    .await
}

/// Runs nursery A with `grace`, cancelled at once; its body runs nursery K in a shielded
/// scope, K's child sleeps for `child_sleeps` (no cancellation point) and returns 7, and the
/// shield is lowered at 50 ms. Returns the child's outcome, as its handle gives it once K
/// returned, and when A returned.
async fn lower_a_shield_at_50ms(
    grace: Duration,
    child_sleeps: Duration,
) -> (Result<u32, JoinError>, Duration) {
    let start = Instant::now();
    let out = Nursery::new()
        .grace(grace)
        .run(|a: NurseryHandle<Cancelled>| async move {
            a.cancel();
            let shielded = CancelScope::new().shielded();
            let shield = shielded.handle();
            let k = shielded.run(async {
                Nursery::new()
                    .run(|k: NurseryHandle<Cancelled>| async move {
                        Ok(k.spawn_named("child", async move {
                            tokio::time::sleep(child_sleeps).await; // not a point
                            Ok::<_, Cancelled>(7)
                        }))
                    })
                    .await
            });
            let lower = async {
                tokio::time::sleep(ms(50)).await; // not a cancellation point
                shield.set_shield(false);
            };
            let (k, ()) = tokio::join!(k, lower);
            // K was cancelled by the exposure and did not absorb it (not its own).
            let handle = match k {
                Ok(Some(Some(handle))) => handle,
                other => panic!("{other:?}"),
            };
            Ok(common::nursery::how_it_ended(handle).await)
        })
        .await;
    (out.unwrap().unwrap(), start.elapsed())
}

/// A scope whose shield is lowered after a nursery's grace ran out meets the expired grace
/// then: the nurseries in it have their children aborted at once, as the cascade would
/// have done had the shield been down at the expiry.
#[tokio::test(start_paused = true)]
async fn n07_a_shield_lowered_past_the_grace_exposes_the_scope_to_the_cascade() {
    common::leak_checked(async move {
        let (joined, returned_at) = lower_a_shield_at_50ms(ms(20), HOUR).await;
        assert!(matches!(joined, Err(JoinError::ChildAborted)), "{joined:?}");
        assert_eq!(returned_at, ms(50), "the child was aborted at the lowering");
    })
    .await
}

/// Lowering a shield in a nursery that is not past any grace aborts nothing: the nurseries
/// in the scope are only cancelled, and wait for their children.
#[tokio::test(start_paused = true)]
async fn n07_a_shield_lowered_before_the_grace_runs_out_only_cancels() {
    common::leak_checked(async move {
        let (joined, returned_at) = lower_a_shield_at_50ms(ms(100), ms(60)).await;
        assert_eq!(joined.unwrap(), 7);
        assert_eq!(returned_at, ms(60), "the child ran to its end");
    })
    .await
}

/// A nursery that shields its own scope and runs past its own grace is past it for a
/// nursery made in its body afterwards, as for one linked there at the expiry (the cascade
/// reaches that one): the shield keeps out the ancestors' cancellation, not its own.
#[tokio::test(start_paused = true)]
async fn n07_a_nursery_made_in_a_shielded_nursery_past_its_grace_starts_past_it() {
    common::leak_checked(async move {
        let start = Instant::now();
        let out = Nursery::new()
            .grace(ms(20))
            .run(|s: NurseryHandle<Cancelled>| async move {
                s.scope().set_shield(true);
                assert!(current_scope().unwrap().is_shielded());
                s.cancel();
                tokio::time::sleep(ms(50)).await; // past S's grace
                let late =
                    Nursery::new()
                        .run(|n: NurseryHandle<Cancelled>| async move {
                            Ok(n.spawn_named("late", stuck()))
                        })
                        .await;
                let handle = late.unwrap().unwrap();
                assert!(matches!(
                    common::nursery::how_it_ended(handle).await,
                    Err(JoinError::ChildAborted)
                ));
                Ok(())
            })
            .await;
        assert!(out.is_ok(), "{out:?}");
        assert_eq!(
            start.elapsed(),
            ms(50),
            "the late child was aborted at once"
        );
    })
    .await
}

/// Sets its flag when dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The same on multi_thread, without timing: the shield is lowered once A's grace has run
/// out (seen by A's own stuck child, aborted by it); K's stuck child is then aborted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n07_a_shield_lowered_past_the_grace_exposes_the_scope_on_multi_thread() {
    common::leak_checked(async move {
        let run = Nursery::new()
            .grace(ms(10))
            .run(|a: NurseryHandle<Cancelled>| async move {
                // Set when the holder's future is dropped: by A's grace, since it never
                // reaches a cancellation point.
                let dropped = Arc::new(AtomicBool::new(false));
                let guard = SetOnDrop(dropped.clone());
                a.spawn_named("holder", async move {
                    let _guard = guard;
                    stuck().await
                });
                a.cancel();
                let shielded = CancelScope::new().shielded();
                let shield = shielded.handle();
                let k = shielded.run(async {
                    Nursery::new()
                        .run(|k: NurseryHandle<Cancelled>| async move {
                            Ok(k.spawn_named("stuck", stuck()))
                        })
                        .await
                });
                let lower = async {
                    common::wait_until("A's grace aborted its holder", || {
                        dropped.load(Ordering::SeqCst)
                    })
                    .await;
                    shield.set_shield(false);
                };
                let (k, ()) = tokio::join!(k, lower);
                let handle = match k {
                    Ok(Some(Some(handle))) => handle,
                    other => panic!("{other:?}"),
                };
                let joined = common::nursery::how_it_ended(handle).await;
                assert!(matches!(joined, Err(JoinError::ChildAborted)), "{joined:?}");
                Ok(())
            });
        // A regression would hold the nursery for an hour: bounded.
        let out = tokio::time::timeout(common::HANG_BOUND, run)
            .await
            .expect("the stuck child was aborted");
        assert!(out.is_ok(), "{out:?}");
    })
    .await
}

/// Review round 18: a nursery past its grace, cancelled only through an enclosing scope,
/// raises its own shield (it is not cancelled any more) and makes M in its body; lowering
/// the shield again exposes M to the expired grace (the lowering asked only the scope's
/// ancestors, not its own mark, and M's stuck child ran for an hour). Cancelling the
/// nursery again instead does the same.
#[tokio::test(start_paused = true)]
async fn n07_a_nursery_past_its_grace_that_exposes_itself_again_reaches_what_it_made_since() {
    common::leak_checked(async move {
        for lower in [true, false] {
            let start = Instant::now();
            let out = past_the_grace_of_a(move |a| async move {
                a.scope().set_shield(true);
                assert!(!current_scope().unwrap().is_cancelled());
                let m = Nursery::new().run(|m: NurseryHandle<Cancelled>| async move {
                    Ok(m.spawn_named("late", stuck()))
                });
                let expose = async {
                    tokio::time::sleep(ms(10)).await;
                    match lower {
                        true => a.scope().set_shield(false),
                        false => a.cancel(),
                    }
                    assert!(current_scope().unwrap().is_cancelled());
                };
                let (m, ()) = tokio::join!(m, expose);
                let joined = common::nursery::how_it_ended(m.unwrap().unwrap()).await;
                assert!(
                    matches!(joined, Err(JoinError::ChildAborted)),
                    "lowered: {lower}: {joined:?}"
                );
                Ok(())
            })
            .await;
            assert!(out.is_ok(), "{out:?}");
            assert_eq!(start.elapsed(), ms(60), "lowered: {lower}");
        }
    })
    .await
}

/// Review round 18: protected work that lowers its own shield under a nursery past its
/// grace is cancelled by it, but what runs inside it is not cut short (SPEC C1): the
/// cascade stops at protected work, as it does when it comes from above.
#[tokio::test(start_paused = true)]
async fn n07_protected_work_lowering_its_own_shield_is_not_cut_short() {
    common::leak_checked(async move {
        let out = Nursery::new()
            .grace(ms(20))
            .run(|a: NurseryHandle<Cancelled>| async move {
                a.cancel();
                let work = protect(async {
                    let scope = current_scope().unwrap();
                    assert!(scope.is_shielded());
                    let k = Nursery::new().run(|k: NurseryHandle<Cancelled>| async move {
                        Ok(k.spawn_named("flush", async {
                            tokio::time::sleep(ms(100)).await; // not a point
                            Ok::<_, Cancelled>(5)
                        }))
                    });
                    let lower = async {
                        tokio::time::sleep(ms(50)).await; // past A's grace
                        scope.set_shield(false);
                    };
                    let (k, ()) = tokio::join!(k, lower);
                    k.unwrap().unwrap().await
                });
                assert_eq!(work.await.unwrap(), 5);
                Ok(())
            })
            .await;
        assert!(out.is_ok(), "{out:?}");
    })
    .await
}

/// Review round 18 (failed on the first version of this file's fixes, which kept an
/// inherited mark in the ended scope's `PAST_GRACE` bit, the bit that also makes a
/// nursery's own expiry happen once): K, a wait-mode nursery with a grace of its own, is
/// cancelled when A's shield is lowered (at 60 ms; A is past its grace, K was made while
/// A was shielded), dropped at 75 ms and adopted. Its own grace still aborts its child, at
/// 80 ms at the latest (it aborted nothing, and the child ran for an hour).
#[tokio::test(start_paused = true)]
async fn n07_a_dropped_nursery_ending_under_an_expired_grace_still_aborts_its_children() {
    common::leak_checked(async move {
        let start = Instant::now();
        let _ = past_the_grace_of_a(move |a| async move {
            a.scope().set_shield(true);
            let m = Nursery::new().run(|_m: NurseryHandle<Cancelled>| async move {
                let k =
                    Nursery::new()
                        .grace(ms(20))
                        .run(|k: NurseryHandle<Cancelled>| async move {
                            k.spawn_named("k-stuck", stuck());
                            std::future::pending::<()>().await;
                            Ok(())
                        });
                let _ = tokio::time::timeout(ms(25), k).await; // dropped at 75
                Ok(())
            });
            let lower = async {
                tokio::time::sleep(ms(10)).await;
                a.scope().set_shield(false);
            };
            let (m, ()) = tokio::join!(m, lower);
            assert!(m.is_ok(), "{m:?}");
            Ok(())
        })
        .await;
        assert!(start.elapsed() <= ms(80), "{:?}", start.elapsed());
    })
    .await
}

/// Review round 18 (b): a nursery past its grace whose own shield lifted its cancellation,
/// cancelled again by its own deadline (the deadline service cancels without
/// `Node::cancel`), reaches what it made meanwhile (M's stuck child ran for an hour).
#[tokio::test(start_paused = true)]
async fn n07_a_nursery_past_its_grace_cancelled_again_by_its_deadline_catches_up() {
    common::leak_checked(async move {
        let start = Instant::now();
        let out = past_the_grace_of_a(move |a| async move {
            a.scope().set_shield(true);
            assert!(!current_scope().unwrap().is_cancelled());
            a.scope().set_deadline(Some(Instant::now() + ms(10)));
            let m = Nursery::new().run(|m: NurseryHandle<Cancelled>| async move {
                Ok(m.spawn_named("late", stuck()))
            });
            let joined = common::nursery::how_it_ended(m.await.unwrap().unwrap()).await;
            assert!(
                matches!(joined, Err(JoinError::ChildAborted)),
                "{joined:?} at {:?}",
                start.elapsed()
            );
            Ok(())
        })
        .await;
        assert!(out.is_ok(), "{out:?}");
        assert_eq!(start.elapsed(), ms(60));
    })
    .await
}

/// Review round 18 (b): a waker panicking at the exposure of a lowered shield still reaches
/// the caller, and no longer skips the cascade (it ran after the wakes, and K's stuck child
/// ran for an hour).
#[tokio::test(start_paused = true)]
async fn n07_a_waker_panicking_at_the_lowering_does_not_skip_the_catch_up() {
    common::leak_checked(async move {
        let start = Instant::now();
        let out = Nursery::new()
            .grace(ms(20))
            .run(|a: NurseryHandle<Cancelled>| async move {
                a.cancel();
                let shielded = CancelScope::new().shielded();
                let shield = shielded.handle();
                let k = shielded.run(async {
                    let wait = common::wakers::wait_with_panicking_waker(cancelled());
                    let k = Nursery::new()
                        .run(|k: NurseryHandle<Cancelled>| async move {
                            Ok(k.spawn_named("stuck", stuck()))
                        })
                        .await;
                    drop(wait);
                    k
                });
                let lower = async {
                    tokio::time::sleep(ms(50)).await;
                    let lowered =
                        std::panic::catch_unwind(AssertUnwindSafe(|| shield.set_shield(false)));
                    assert!(lowered.is_err(), "the waker's panic reaches the caller");
                };
                let (k, ()) = tokio::join!(k, lower);
                let handle = match k {
                    Ok(Some(Some(handle))) => handle,
                    other => panic!("{other:?}"),
                };
                let joined = common::nursery::how_it_ended(handle).await;
                assert!(
                    matches!(joined, Err(JoinError::ChildAborted)),
                    "{joined:?} at {:?}",
                    start.elapsed()
                );
                Ok(())
            })
            .await;
        assert!(out.is_ok(), "{out:?}");
        assert_eq!(start.elapsed(), ms(50));
    })
    .await
}

/// Review round 18 (b): the same when a nursery past its grace is cancelled again.
#[tokio::test(start_paused = true)]
async fn n07_a_waker_panicking_at_a_second_cancel_does_not_skip_the_catch_up() {
    common::leak_checked(async move {
        let start = Instant::now();
        let out = past_the_grace_of_a(move |a| async move {
            a.scope().set_shield(true);
            let wait = common::wakers::wait_with_panicking_waker(cancelled()); // on A's scope
            let m = Nursery::new().run(|m: NurseryHandle<Cancelled>| async move {
                Ok(m.spawn_named("late", stuck()))
            });
            let expose = async {
                tokio::time::sleep(ms(10)).await;
                let r = std::panic::catch_unwind(AssertUnwindSafe(|| a.cancel()));
                assert!(r.is_err(), "the waker's panic reaches the caller");
            };
            let (m, ()) = tokio::join!(m, expose);
            drop(wait);
            let joined = common::nursery::how_it_ended(m.unwrap().unwrap()).await;
            assert!(
                matches!(joined, Err(JoinError::ChildAborted)),
                "{joined:?} at {:?}",
                start.elapsed()
            );
            Ok(())
        })
        .await;
        assert!(out.is_ok(), "{out:?}");
        assert_eq!(start.elapsed(), ms(60));
    })
    .await
}

/// Review round 18 (b): a nursery past its grace whose cancellation a shield *above* it
/// lifted, cancelled again when that shield is lowered (by inheritance), reaches what it
/// made meanwhile (the lowering looked up from the lowered scope only, never at the
/// nurseries below it, and M's stuck child ran for an hour).
#[tokio::test(start_paused = true)]
async fn n07_a_shield_lowered_again_above_a_nursery_past_its_grace_catches_up() {
    common::leak_checked(async move {
        let start = Instant::now();
        let outer = CancelScope::new();
        let o = outer.handle();
        let out = outer
            .run(async move {
                let p = CancelScope::new();
                let ph = p.handle();
                p.run(async move {
                    Nursery::new()
                        .grace(ms(20))
                        .run(|_a: NurseryHandle<Cancelled>| async move {
                            o.cancel(); // A inherits through P
                            tokio::time::sleep(ms(50)).await; // past A's grace
                            ph.set_shield(true);
                            assert!(!current_scope().unwrap().is_cancelled());
                            let m = Nursery::new().run(|m: NurseryHandle<Cancelled>| async move {
                                Ok(m.spawn_named("late", stuck()))
                            });
                            let expose = async {
                                tokio::time::sleep(ms(10)).await;
                                ph.set_shield(false);
                                assert!(current_scope().unwrap().is_cancelled());
                            };
                            let (m, ()) = tokio::join!(m, expose);
                            let joined = common::nursery::how_it_ended(m.unwrap().unwrap()).await;
                            assert!(
                                matches!(joined, Err(JoinError::ChildAborted)),
                                "{joined:?} at {:?}",
                                start.elapsed()
                            );
                            Ok(())
                        })
                        .await
                })
                .await
            })
            .await;
        assert!(out.is_ok(), "{out:?}");
        assert_eq!(start.elapsed(), ms(60));
    })
    .await
}
