//! Review round 17: SPEC N7's last clause ("past an ancestor's grace, abort cascades to
//! every descendant") for nurseries made after the ancestor's grace ran out. Both tests
//! failed on the first version of that change, which asked the ancestor nursery (through a
//! weak link, after its cascade) rather than its scope (marked before the cascade).

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use tokio::time::Instant;
use tokio_nursery::{
    CancelScope, Cancelled, ChildHandle, JoinError, Nursery, NurseryError, NurseryHandle,
    cancelled, carry_scope, protect,
};

const HOUR: Duration = Duration::from_secs(3600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A waker that runs its code (once) when woken.
struct Hook(Mutex<Option<Box<dyn FnOnce() + Send>>>);

impl Wake for Hook {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let code = self.0.lock().unwrap().take();
        if let Some(code) = code {
            code()
        }
    }
}

type Late =
    Pin<Box<dyn Future<Output = Result<Option<ChildHandle<()>>, NurseryError<Cancelled>>> + Send>>;

/// Was: a nursery first polled while its ancestor's grace expiry was running, after the
/// cascade had looked at the scopes below and before the ancestor counted as past its grace,
/// was missed by both, and its child, which never reaches a cancellation point, kept it open
/// for an hour. The hook of protected work, told "grace expired" by the cascade, polls the
/// late nursery for the first time at that moment (on multi_thread, any code running then
/// could).
#[tokio::test(start_paused = true)]
async fn n07_a_nursery_first_polled_during_the_ancestors_cascade_is_not_missed() {
    common::leak_checked(async move {
        let start = Instant::now();
        let slot: Arc<Mutex<Option<Late>>> = Arc::new(Mutex::new(None));
        let out = Nursery::new()
            .grace(ms(20))
            .run(|a: NurseryHandle<Cancelled>| {
                let slot = slot.clone();
                async move {
                    a.cancel();
                    // Made now (unpolled), in A's body's scope; first polled during A's
                    // cascade.
                    *slot.lock().unwrap() = Some(Box::pin(carry_scope(Nursery::new().run(
                        |inner: NurseryHandle<Cancelled>| async move {
                            Ok(inner.spawn_named("late", async {
                                tokio::time::sleep(HOUR).await; // never a cancellation point
                                Ok::<_, Cancelled>(())
                            }))
                        },
                    ))));
                    // B: alive in A's body at A's expiry, so A's cascade reaches it; its
                    // protected work is told "grace expired", which runs the hook.
                    let b = Nursery::new().run(|_b: NurseryHandle<Cancelled>| {
                        let slot = slot.clone();
                        async move {
                            let _work = protect(async move {
                                let mut cancelled = std::pin::pin!(cancelled());
                                let mut hooked = false;
                                std::future::poll_fn(|cx| {
                                    if !hooked {
                                        hooked = true;
                                        let task = cx.waker().clone();
                                        let slot = slot.clone();
                                        let hook = Hook(Mutex::new(Some(Box::new(move || {
                                            let mut late = slot.lock().unwrap();
                                            let late = late.as_mut().unwrap();
                                            let mut cx = Context::from_waker(Waker::noop());
                                            assert!(late.as_mut().poll(&mut cx).is_pending());
                                            task.wake();
                                        }))));
                                        let waker = Waker::from(Arc::new(hook));
                                        let mut hooked_cx = Context::from_waker(&waker);
                                        return cancelled.as_mut().poll(&mut hooked_cx).map(drop);
                                    }
                                    cancelled.as_mut().poll(cx).map(drop)
                                })
                                .await;
                            });
                            tokio::time::sleep(ms(50)).await; // overstays A's grace
                            Ok(())
                        }
                    });
                    let _ = b.await;
                    assert_eq!(start.elapsed(), ms(50));
                    let late = slot.lock().unwrap().take().unwrap();
                    let handle = match late.await {
                        Ok(Some(handle)) => handle,
                        other => panic!("{other:?}"),
                    };
                    assert_eq!(
                        start.elapsed(),
                        ms(50),
                        "the late nursery waited for its child"
                    );
                    assert!(matches!(
                        common::nursery::how_it_ended(handle).await,
                        Err(JoinError::ChildAborted)
                    ));
                    Ok(())
                }
            })
            .await;
        assert!(matches!(out, Ok(Some(()))), "{out:?}");
    })
    .await
}

/// Was: a nursery made in the (carried, ended) scope of a nursery that had run past its
/// grace started past it only while a handle of that nursery was alive (the weak link to it
/// upgraded): the same program, two outcomes. The mark is on the scope, which keeps it.
#[tokio::test(start_paused = true)]
async fn n07_past_an_ended_nurserys_grace_whether_or_not_a_handle_is_alive() {
    common::leak_checked(async move {
        for keep_handle in [true, false] {
            let out = Nursery::new()
                .grace(ms(20))
                .run(|b: NurseryHandle<Cancelled>| async move {
                    b.cancel();
                    tokio::time::sleep(ms(50)).await; // past B's grace
                    let late = carry_scope(Nursery::new().run(
                        |n: NurseryHandle<Cancelled>| async move {
                            Ok(n.spawn(async {
                                tokio::time::sleep(ms(10)).await;
                                Ok::<_, Cancelled>(())
                            }))
                        },
                    ));
                    Ok((keep_handle.then_some(b), late))
                })
                .await;
            let (kept, late) = out.unwrap().unwrap();
            let handle = late.await.unwrap().unwrap();
            let outcome = handle.await;
            assert!(
                matches!(outcome, Err(JoinError::ChildAborted)),
                "a handle kept: {keep_handle}; {outcome:?}"
            );
            drop(kept);
        }
    })
    .await
}

/// Was (found by the review of the mark): a nursery reached a second time (its own grace ran
/// out first, an ancestor's later) skipped its cascade as well as the naming, so a nursery
/// that was shielded at the first expiry and exposed before the second was never reached:
/// its stuck child held everything for an hour. N (grace 100 ms) runs M (grace 10 ms); M's
/// body runs K in a shielded scope whose shield is lowered at 50 ms. Since session 18 the
/// lowering itself exposes K to M's expired grace (tests/grace_catch_up.rs): K's child is
/// aborted at 50 ms, before N's grace runs out.
#[tokio::test(start_paused = true)]
async fn n07_a_second_expiry_reaches_a_nursery_shielded_at_the_first() {
    common::leak_checked(async move {
        let start = Instant::now();
        let out = Nursery::new()
            .grace(ms(100))
            .run(|n: NurseryHandle<Cancelled>| async move {
                n.cancel();
                let m =
                    Nursery::new()
                        .grace(ms(10))
                        .run(|_m: NurseryHandle<Cancelled>| async move {
                            let shielded = CancelScope::new().shielded();
                            let shield = shielded.handle();
                            let k = shielded.run(async {
                                let _ = Nursery::new()
                                    .run(|k: NurseryHandle<Cancelled>| async move {
                                        k.spawn_named("stuck", async {
                                            tokio::time::sleep(HOUR).await; // never a point
                                            Ok::<_, Cancelled>(())
                                        });
                                        Ok::<_, Cancelled>(())
                                    })
                                    .await;
                                Ok::<_, Cancelled>(())
                            });
                            let lower = async {
                                tokio::time::sleep(ms(50)).await; // not a cancellation point
                                shield.set_shield(false);
                            };
                            let _ = tokio::join!(k, lower);
                            Ok::<_, Cancelled>(())
                        });
                let _ = m.await;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert!(out.is_ok(), "{out:?}");
        assert_eq!(
            start.elapsed(),
            ms(50),
            "lowering the shield past M's grace aborted K's stuck child"
        );
    })
    .await
}
