//! Round 20 review: adversarial tests of `start` (SPEC N3), the concurrency limit (N11), the
//! supervisor outlet (N5) and collectors (N15), with drops and adoption (N9).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_nursery::{
    CancelError, CancelScope, CancellableExt, Cancelled, DropMode, Incident, JoinError, Nursery,
    NurseryError, NurseryHandle, Ready, SpawnError, StartError, cancelled, fail_after, local_scope,
    move_on_after, nursery,
};

#[derive(Debug)]
enum AppError {
    Cancelled(Cancelled),
    Boom(u32),
}

impl From<Cancelled> for AppError {
    fn from(c: Cancelled) -> Self {
        AppError::Cancelled(c)
    }
}

impl CancelError for AppError {
    fn as_cancelled(&self) -> Option<&Cancelled> {
        match self {
            AppError::Cancelled(c) => Some(c),
            AppError::Boom(_) => None,
        }
    }
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::Cancelled(c) => write!(f, "{c}"),
            AppError::Boom(n) => write!(f, "boom {n}"),
        }
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A generous bound: a hang fails the test instead of blocking it (paused clock: auto-advance
/// makes this a logical bound only reached when nothing else can run).
async fn no_hang<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(3600), future).await {
        Ok(out) => out,
        Err(_) => panic!("hang: {what}"),
    }
}

/// Wall-clock bound for multi_thread tests.
async fn no_hang_rt<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(20), future).await {
        Ok(out) => out,
        Err(_) => panic!("hang: {what}"),
    }
}

async fn until_cancelled<E: From<Cancelled>>() -> Result<(), E> {
    Err(E::from(cancelled().await))
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// N3: start
// ---------------------------------------------------------------------------------------

/// A start bounded by `move_on_after` into a full nursery: the started child waits for a slot
/// under the caller's scope; the timeout cancels that wait, the child never runs, and the
/// start ends as a cancellation the `move_on_after` absorbs.
#[tokio::test(start_paused = true)]
async fn n3_a_start_waiting_for_a_slot_is_bounded_by_the_callers_timeout() {
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let out = no_hang(
        "start into a full nursery under move_on_after",
        Nursery::new().limit(1).run(|n| async move {
            let _holder = n.spawn(until_cancelled::<Cancelled>());
            tokio::task::yield_now().await;
            let started = move_on_after(
                ms(100),
                n.start(move |ready: Ready<u32>| async move {
                    r.store(true, Ordering::SeqCst);
                    ready.signal(1);
                    Ok::<_, Cancelled>(())
                }),
            )
            .await;
            assert!(
                matches!(started, Ok(None)),
                "the timeout should bound the start: {started:?}"
            );
            n.cancel();
            Ok::<_, Cancelled>(())
        }),
    )
    .await;
    assert!(out.is_ok(), "{out:?}");
    assert!(
        !ran.load(Ordering::SeqCst),
        "the started child must never have run"
    );
}

/// Under a limit, a started child holds its slot after the signal until it exits.
#[tokio::test(start_paused = true)]
async fn n3_a_started_child_keeps_its_slot_after_the_signal() {
    let out = no_hang(
        "started child with a limit",
        Nursery::new().limit(1).run(|n| async move {
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let v = n
                .start(move |ready: Ready<u32>| async move {
                    ready.signal(5);
                    let _ = stop_rx.await;
                    Ok::<_, Cancelled>(())
                })
                .await
                .unwrap();
            assert_eq!(v, 5);
            assert!(matches!(
                n.try_spawn(async { Ok::<_, Cancelled>(()) }),
                Err(SpawnError::Full)
            ));
            stop_tx.send(()).unwrap();
            // The slot comes back once the started child exits.
            let mut spawned = None;
            for _ in 0..100 {
                tokio::task::yield_now().await;
                if let Ok(h) = n.try_spawn(async { Ok::<_, Cancelled>(7) }) {
                    spawned = Some(h);
                    break;
                }
            }
            let h = spawned.expect("the slot was never released");
            assert_eq!(h.await.unwrap(), 7);
            Ok::<_, Cancelled>(())
        }),
    )
    .await;
    assert!(out.is_ok(), "{out:?}");
}

/// A start on a handle kept after the nursery ended is a clear error, not a hang or a panic.
#[tokio::test(start_paused = true)]
async fn n3_start_into_a_closed_nursery_is_a_clear_error() {
    for limit in [None, Some(1)] {
        let mut kept = None;
        let mut config = Nursery::new();
        if let Some(l) = limit {
            config = config.limit(l);
        }
        let out = config
            .run(|n: NurseryHandle<Cancelled>| {
                kept = Some(n.clone());
                async move { Ok::<_, Cancelled>(()) }
            })
            .await;
        assert!(out.is_ok());
        let n = kept.unwrap();
        let started = no_hang(
            "start after close",
            n.start(|ready: Ready<()>| async move {
                ready.signal(());
                Ok::<_, Cancelled>(())
            }),
        )
        .await;
        match started {
            Err(StartError::Spawn(SpawnError::Closed)) => {}
            other => panic!("limit {limit:?}: expected Spawn(Closed), got {other:?}"),
        }
    }
}

/// A caller outside the nursery: the nursery's cancellation does not reach the started child
/// before its signal (Trio), and once it signals it moves under the cancelled nursery, sees
/// the cancellation, and the caller has the value.
#[tokio::test(start_paused = true)]
async fn n3_an_outside_callers_child_moves_into_a_cancelled_nursery_at_its_signal() {
    let (handle_tx, handle_rx) = oneshot::channel::<NurseryHandle<Cancelled>>();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let saw_cancel_before = Arc::new(AtomicBool::new(false));
    let saw = saw_cancel_before.clone();
    let outcome = Arc::new(Mutex::new(None));
    let o = outcome.clone();
    let out = no_hang(
        "outside start",
        nursery(|outer| async move {
            outer.spawn(async move {
                let inner = handle_rx.await.unwrap();
                let v = inner
                    .start(move |ready: Ready<u32>| async move {
                        let _ = go_rx.await;
                        saw.store(tokio_nursery::is_cancelled(), Ordering::SeqCst);
                        ready.signal(9);
                        let c = cancelled().await;
                        let _ = c;
                        Err::<(), _>(c)
                    })
                    .await;
                *o.lock().unwrap() = Some(format!("{v:?}"));
                Ok::<_, Cancelled>(())
            });
            let res = nursery(|n| async move {
                handle_tx.send(n.clone()).unwrap();
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                assert_eq!(
                    n.live_children(),
                    1,
                    "the pending start's child belongs here"
                );
                n.cancel();
                tokio::time::sleep(ms(10)).await;
                go_tx.send(()).unwrap();
                Ok::<_, Cancelled>(())
            })
            .await;
            assert!(res.is_ok(), "{res:?}");
            Ok::<_, Cancelled>(())
        }),
    )
    .await;
    assert!(out.is_ok(), "{out:?}");
    assert!(
        !saw_cancel_before.load(Ordering::SeqCst),
        "before the signal the child runs under its caller's scopes"
    );
    assert_eq!(outcome.lock().unwrap().as_deref(), Some("Ok(9)"));
}

/// A nursery dropped in wait mode while a caller outside it waits for a start: the started
/// child is adopted; when it signals later it must end up cancelled (it belongs to a dropped
/// nursery), the caller gets its value, and the adopter finishes.
#[tokio::test(start_paused = true)]
async fn n3_n9_a_pending_outside_start_of_a_dropped_nursery_signals_into_the_cancelled_scope() {
    let (handle_tx, handle_rx) = oneshot::channel::<NurseryHandle<Cancelled>>();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let outcome = Arc::new(Mutex::new(None));
    let o = outcome.clone();
    let child_saw_cancel = Arc::new(AtomicBool::new(false));
    let saw = child_saw_cancel.clone();
    let out = no_hang(
        "outside start of a dropped nursery",
        nursery(|outer| async move {
            outer.spawn(async move {
                let inner = handle_rx.await.unwrap();
                let v = inner
                    .start(move |ready: Ready<u32>| async move {
                        let _ = go_rx.await;
                        ready.signal(3);
                        let c = cancelled().await;
                        saw.store(true, Ordering::SeqCst);
                        Err::<(), _>(c)
                    })
                    .await;
                *o.lock().unwrap() = Some(format!("{v:?}"));
                Ok::<_, Cancelled>(())
            });
            {
                let mut inner = Box::pin(nursery(|n| async move {
                    handle_tx.send(n.clone()).unwrap();
                    std::future::pending::<Result<(), Cancelled>>().await
                }));
                // Run it a while, so the start is pending, then drop it (wait mode).
                let _ = tokio::time::timeout(ms(10), inner.as_mut()).await;
            }
            tokio::time::sleep(ms(10)).await;
            go_tx.send(()).unwrap();
            Ok::<_, Cancelled>(())
        }),
    )
    .await;
    assert!(out.is_ok(), "{out:?}");
    assert_eq!(outcome.lock().unwrap().as_deref(), Some("Ok(3)"));
    assert!(child_saw_cancel.load(Ordering::SeqCst));
}

/// Multi-thread race: the caller gives up on a start right after its first poll while the
/// child fails at once. The failure goes to exactly one place: the caller (`Failed`) or the
/// nursery, never both, never neither.
#[test]
fn n3_a_start_given_up_racing_an_early_failure_loses_nothing_multi_thread() {
    let rt = multi_thread();
    rt.block_on(async {
        for i in 0..300u32 {
            let got_by_caller = Arc::new(AtomicBool::new(false));
            let g = got_by_caller.clone();
            let out = no_hang_rt(
                "start race",
                nursery(|n| async move {
                    let mut start = Box::pin(n.start(move |_ready: Ready<()>| async move {
                        Err::<(), _>(AppError::Boom(i))
                    }));
                    if let std::task::Poll::Ready(r) = futures::poll!(start.as_mut()) {
                        assert!(matches!(r, Err(StartError::Failed(AppError::Boom(_)))));
                        g.store(true, Ordering::SeqCst);
                    } else if i % 2 == 0 {
                        tokio::task::yield_now().await;
                        if let std::task::Poll::Ready(r) = futures::poll!(start.as_mut()) {
                            assert!(matches!(r, Err(StartError::Failed(AppError::Boom(_)))));
                            g.store(true, Ordering::SeqCst);
                        }
                    }
                    drop(start);
                    Ok::<_, AppError>(())
                }),
            )
            .await;
            match (got_by_caller.load(Ordering::SeqCst), out) {
                (true, Ok(Some(()))) => {}
                (false, Err(NurseryError::Failed(f))) if f.len() == 1 => {}
                (caller, out) => panic!("iteration {i}: caller got it: {caller}, nursery: {out:?}"),
            }
        }
    });
}

/// Multi-thread race: the caller gives up on a start while the child panics at once. The
/// panic is resumed exactly once: in the caller (the poll) or by the nursery.
#[test]
fn n3_a_start_given_up_racing_an_early_panic_resumes_it_once_multi_thread() {
    let rt = multi_thread();
    rt.block_on(async {
        for i in 0..200u32 {
            let resumed = Arc::new(AtomicUsize::new(0));
            let r = resumed.clone();
            let out = tokio::spawn(async move {
                nursery(|n| async move {
                    let mut start = Box::pin(n.start(move |_ready: Ready<()>| async move {
                        if i < u32::MAX {
                            std::panic::panic_any(i);
                        }
                        Ok::<(), Cancelled>(())
                    }));
                    let polled = std::panic::AssertUnwindSafe(async {
                        let _ = futures::poll!(start.as_mut());
                        tokio::task::yield_now().await;
                        let _ = futures::poll!(start.as_mut());
                    });
                    if futures::FutureExt::catch_unwind(polled).await.is_err() {
                        r.fetch_add(1, Ordering::SeqCst);
                    }
                    drop(start);
                    Ok::<_, Cancelled>(())
                })
                .await
            })
            .await;
            let in_caller = resumed.load(Ordering::SeqCst);
            match (in_caller, out) {
                (1, Ok(Ok(_))) => {}
                (0, Err(e)) if e.is_panic() => {
                    let p = e.into_panic();
                    assert_eq!(p.downcast_ref::<u32>(), Some(&i));
                }
                (n, out) => panic!("iteration {i}: resumed in caller {n} times, nursery {out:?}"),
            }
        }
    });
}

/// A supervisor: a failure before the signal is the caller's alone (not on the outlet); a
/// failure after it is the outlet's.
#[tokio::test(start_paused = true)]
async fn n3_n5_a_started_childs_early_failure_never_reaches_the_outlet() {
    let out = no_hang(
        "supervisor start",
        Nursery::new().supervisor().run(|n| async move {
            let early = n
                .start(|_ready: Ready<()>| async move { Err::<(), _>(AppError::Boom(1)) })
                .await;
            assert!(matches!(early, Err(StartError::Failed(AppError::Boom(1)))));
            let late = n
                .start(|ready: Ready<()>| async move {
                    ready.signal(());
                    tokio::time::sleep(ms(5)).await;
                    Err::<(), _>(AppError::Boom(2))
                })
                .await;
            assert!(late.is_ok());
            match n.next_incident().await {
                Some(Incident::Failed(f)) => assert!(matches!(f.error(), AppError::Boom(2))),
                other => panic!("expected Boom(2) on the outlet, got {other:?}"),
            }
            assert!(n.next_incident().await.is_none());
            Ok::<_, AppError>(())
        }),
    )
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

// ---------------------------------------------------------------------------------------
// N11: the concurrency limit
// ---------------------------------------------------------------------------------------

/// A child queued for a slot (spawned while the nursery is full) cancelled through its own
/// handle stops waiting at once and ends as cancelled, without ever running and without the
/// slot holder finishing first.
#[tokio::test(start_paused = true)]
async fn n11_a_queued_child_cancelled_through_its_handle_stops_waiting() {
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let out = no_hang(
        "queued child cancelled by its handle",
        Nursery::new().limit(1).run(|n| async move {
            let holder = n.spawn(until_cancelled::<Cancelled>());
            tokio::task::yield_now().await;
            let queued = n.spawn(async move {
                r.store(true, Ordering::SeqCst);
                Ok::<_, Cancelled>(1)
            });
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            queued.cancel();
            let joined = tokio::time::timeout(ms(1000), queued).await;
            assert!(
                matches!(joined, Ok(Err(JoinError::ChildCancelled))),
                "the queued child should have stopped waiting: {joined:?}"
            );
            assert!(!holder.is_finished());
            n.cancel();
            Ok::<_, Cancelled>(())
        }),
    )
    .await;
    assert!(out.is_ok(), "{out:?}");
    assert!(!ran.load(Ordering::SeqCst));
}

/// The same through a collector's `ChildControl::cancel`.
#[tokio::test(start_paused = true)]
async fn n11_n15_a_queued_collected_child_cancelled_through_its_control_stops_waiting() {
    let out = no_hang(
        "queued collected child cancelled",
        Nursery::new().limit(1).run(|n| async move {
            let mut set = n.collector::<u32>();
            let _holder = set.spawn(async { Err::<u32, _>(cancelled().await) });
            tokio::task::yield_now().await;
            let queued = set.spawn(async { Ok::<_, Cancelled>(1) });
            tokio::task::yield_now().await;
            queued.cancel();
            let next = tokio::time::timeout(ms(1000), set.join_next()).await;
            match next {
                Ok(Some((id, Err(JoinError::ChildCancelled)))) => assert_eq!(id, queued.id()),
                other => panic!("expected the queued child cancelled, got {other:?}"),
            }
            assert_eq!(set.len(), 1);
            set.cancel_all();
            let last = set.join_next().await;
            assert!(
                matches!(last, Some((_, Err(JoinError::ChildCancelled)))),
                "{last:?}"
            );
            assert!(set.join_next().await.is_none());
            Ok::<_, Cancelled>(())
        }),
    )
    .await;
    assert!(out.is_ok(), "{out:?}");
}

/// A queued blocking child cancelled through its handle never runs and ends as cancelled.
#[tokio::test(start_paused = true)]
async fn n11_n16_a_queued_blocking_child_cancelled_through_its_handle_never_runs() {
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let out = no_hang(
        "queued blocking child",
        Nursery::new().limit(1).run(|n| async move {
            let _holder = n.spawn(until_cancelled::<Cancelled>());
            tokio::task::yield_now().await;
            let queued = n.spawn_blocking(move |_cx| {
                r.store(true, Ordering::SeqCst);
                Ok::<_, Cancelled>(1)
            });
            tokio::task::yield_now().await;
            queued.cancel();
            let joined = tokio::time::timeout(ms(1000), queued).await;
            assert!(
                matches!(joined, Ok(Err(JoinError::ChildCancelled))),
                "{joined:?}"
            );
            n.cancel();
            Ok::<_, Cancelled>(())
        }),
    )
    .await;
    assert!(out.is_ok(), "{out:?}");
    assert!(!ran.load(Ordering::SeqCst));
}

/// A task outside the nursery waiting in `spawn_when_free` while the nursery finishes gets a
/// clear error (or spawns while it is still open), never a hang.
#[tokio::test(start_paused = true)]
async fn n11_spawn_when_free_from_outside_while_the_nursery_closes_never_hangs() {
    let (handle_tx, handle_rx) = oneshot::channel::<NurseryHandle<Cancelled>>();
    let waiter = tokio::spawn(async move {
        let n = handle_rx.await.unwrap();
        n.spawn_when_free(async { Ok::<_, Cancelled>(1) })
            .await
            .map(|_| ())
    });
    let out = no_hang(
        "nursery",
        Nursery::new().limit(1).run(|n| async move {
            handle_tx.send(n.clone()).unwrap();
            n.spawn(async {
                tokio::time::sleep(ms(10)).await;
                Ok::<_, Cancelled>(())
            });
            tokio::task::yield_now().await;
            Ok::<_, Cancelled>(())
        }),
    )
    .await;
    assert!(out.is_ok());
    let got = no_hang("outside waiter", waiter).await.unwrap();
    assert!(matches!(got, Ok(()) | Err(SpawnError::Closed)), "{got:?}");
}

/// Limit with a grace period: a slot holder that ignores its cancellation and children
/// queued behind it; the grace expiry aborts them all and the nursery returns.
#[tokio::test(start_paused = true)]
async fn n11_n7_grace_expiry_with_queued_children_does_not_hang() {
    let out = no_hang(
        "grace with queued children",
        Nursery::new().limit(1).grace(ms(50)).run(|n| async move {
            n.spawn_named("stubborn", std::future::pending::<Result<(), Cancelled>>());
            let queued: Vec<_> = (0..3)
                .map(|i| n.spawn(async move { Ok::<_, Cancelled>(i) }))
                .collect();
            tokio::task::yield_now().await;
            n.cancel();
            // Joined outside the cancelled body, once the nursery has ended.
            Ok::<_, Cancelled>(queued)
        }),
    )
    .await;
    let queued = out.unwrap().unwrap();
    for q in queued {
        let r = no_hang("queued handle", q).await;
        assert!(
            matches!(r, Err(JoinError::ChildCancelled | JoinError::ChildAborted)),
            "{r:?}"
        );
    }
}

/// Collected children under a limit on multi_thread: never more than K run at once, every
/// outcome arrives once, then `None`.
#[test]
fn n11_n15_collected_children_under_a_limit_multi_thread() {
    let rt = multi_thread();
    rt.block_on(async {
        for round in 0..50 {
            let running = Arc::new(AtomicUsize::new(0));
            let peak = Arc::new(AtomicUsize::new(0));
            let (r, p) = (running.clone(), peak.clone());
            let out = no_hang_rt(
                "collector under limit",
                Nursery::new().limit(3).run(|n| async move {
                    let mut set = n.collector::<usize>();
                    for i in 0..40usize {
                        let (r, p) = (r.clone(), p.clone());
                        set.spawn(async move {
                            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                            p.fetch_max(now, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            r.fetch_sub(1, Ordering::SeqCst);
                            if i % 7 == 3 {
                                return Err(AppError::Boom(i as u32));
                            }
                            Ok(i)
                        });
                    }
                    let mut seen = 0;
                    let mut failed = 0;
                    while let Some((_, outcome)) = set.join_next().await {
                        seen += 1;
                        if matches!(outcome, Err(JoinError::ChildFailed)) {
                            failed += 1;
                        }
                    }
                    assert_eq!(seen, 40, "round {round}");
                    assert!(set.is_empty());
                    Ok::<_, AppError>(failed)
                }),
            )
            .await;
            // Fail-fast: the first failure cancels the rest; queued ones end cancelled.
            match out {
                Err(NurseryError::Failed(f)) => assert!(!f.is_empty()),
                other => panic!("round {round}: {other:?}"),
            }
            assert!(
                peak.load(Ordering::SeqCst) <= 3,
                "peak {}",
                peak.load(Ordering::SeqCst)
            );
        }
    });
}

// ---------------------------------------------------------------------------------------
// N5: the supervisor outlet
// ---------------------------------------------------------------------------------------

/// Many incidents, failures and panics mixed, come out of the outlet in the order they
/// happened; the taken ones are neither returned nor resumed.
#[tokio::test(start_paused = true)]
async fn n5_many_incidents_come_out_in_order_and_taken_ones_are_not_resumed() {
    let out = no_hang(
        "outlet order",
        Nursery::new().supervisor().run(|n| async move {
            for i in 0..500u32 {
                n.spawn(async move {
                    tokio::time::sleep(ms(u64::from(i) + 1)).await;
                    if i % 5 == 0 {
                        std::panic::panic_any(i);
                    }
                    Err::<(), _>(AppError::Boom(i))
                });
            }
            let mut next = 0u32;
            while let Some(incident) = n.next_incident().await {
                let got = match incident {
                    Incident::Failed(f) => match f.error() {
                        AppError::Boom(i) => *i,
                        other => panic!("{other:?}"),
                    },
                    Incident::Panicked { payload, .. } => *payload.downcast_ref::<u32>().unwrap(),
                };
                assert_eq!(got, next, "out of order");
                next += 1;
            }
            assert_eq!(next, 500);
            Ok::<_, AppError>(())
        }),
    )
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// A wait on the outlet dropped mid-way (lost a `select!`) takes nothing: the failure that
/// comes later is returned by the nursery.
#[tokio::test(start_paused = true)]
async fn n5_a_dropped_outlet_wait_takes_nothing() {
    let out = no_hang(
        "dropped outlet wait",
        Nursery::new().supervisor().run(|n| async move {
            n.spawn(async {
                tokio::time::sleep(ms(20)).await;
                Err::<(), _>(AppError::Boom(1))
            });
            tokio::select! {
                _ = n.next_incident() => panic!("nothing yet"),
                _ = tokio::time::sleep(ms(10)) => {}
            }
            Ok::<_, AppError>(())
        }),
    )
    .await;
    match out {
        Err(NurseryError::Failed(f)) => {
            assert_eq!(f.len(), 1);
            assert!(matches!(f[0].error(), AppError::Boom(1)));
        }
        other => panic!("{other:?}"),
    }
}

/// The outlet awaited through a handle kept after the nursery ended: `None` at once, also
/// after a nursery that returned failures or resumed a panic.
#[tokio::test(start_paused = true)]
async fn n5_the_outlet_after_the_nursery_ended_is_none() {
    let mut kept = None;
    let out = Nursery::new()
        .supervisor()
        .run(|n: NurseryHandle<AppError>| {
            kept = Some(n.clone());
            async move {
                n.spawn(async { Err::<(), _>(AppError::Boom(1)) });
                Ok::<_, AppError>(())
            }
        })
        .await;
    assert!(matches!(out, Err(NurseryError::Failed(_))));
    let n = kept.unwrap();
    assert!(
        no_hang("outlet after end", n.next_incident())
            .await
            .is_none()
    );
}

/// A panic taken from the outlet is not resumed; an untaken later one is.
#[tokio::test(start_paused = true)]
async fn n5_a_panic_taken_from_the_outlet_is_not_resumed_a_later_one_is() {
    let res = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(no_hang(
        "outlet panics",
        Nursery::new().supervisor().run(|n| async move {
            n.spawn(async {
                std::panic::panic_any(1u32);
                #[allow(unreachable_code)]
                Ok::<(), Cancelled>(())
            });
            match n.next_incident().await {
                Some(Incident::Panicked { payload, .. }) => {
                    assert_eq!(payload.downcast_ref::<u32>(), Some(&1))
                }
                other => panic!("{other:?}"),
            }
            n.spawn(async {
                tokio::time::sleep(ms(5)).await;
                std::panic::panic_any(2u32);
                #[allow(unreachable_code)]
                Ok::<(), Cancelled>(())
            });
            Ok::<_, Cancelled>(())
        }),
    )))
    .await;
    let payload = res.expect_err("the untaken panic is resumed");
    assert_eq!(payload.downcast_ref::<u32>(), Some(&2));
}

/// Multi-thread: a task outside the nursery drains the outlet while children fail; every
/// failure comes out exactly once, on the outlet or in the nursery's result.
#[test]
fn n5_outlet_drained_from_outside_loses_and_duplicates_nothing_multi_thread() {
    let rt = multi_thread();
    rt.block_on(async {
        for round in 0..200 {
            let (handle_tx, handle_rx) = oneshot::channel::<NurseryHandle<AppError>>();
            let drainer = tokio::spawn(async move {
                let n = handle_rx.await.unwrap();
                let mut got = Vec::new();
                while let Some(incident) = n.next_incident().await {
                    match incident {
                        Incident::Failed(f) => match f.error() {
                            AppError::Boom(i) => got.push(*i),
                            other => panic!("{other:?}"),
                        },
                        Incident::Panicked { .. } => panic!("no panics here"),
                    }
                }
                got
            });
            let out = no_hang_rt(
                "supervisor",
                Nursery::new().supervisor().run(|n| async move {
                    let _ = handle_tx.send(n.clone());
                    for i in 0..20u32 {
                        n.spawn(async move {
                            tokio::task::yield_now().await;
                            Err::<(), _>(AppError::Boom(i))
                        });
                    }
                    Ok::<_, AppError>(())
                }),
            )
            .await;
            let mut all = no_hang_rt("drainer", drainer).await.unwrap();
            match out {
                Ok(Some(())) => {}
                Err(NurseryError::Failed(f)) => all.extend(f.iter().map(|f| match f.error() {
                    AppError::Boom(i) => *i,
                    other => panic!("{other:?}"),
                })),
                other => panic!("round {round}: {other:?}"),
            }
            all.sort_unstable();
            assert_eq!(all, (0..20).collect::<Vec<_>>(), "round {round}");
        }
    });
}

// ---------------------------------------------------------------------------------------
// N15: collectors, with drops and adoption (N8, N9)
// ---------------------------------------------------------------------------------------

/// A collector taken out of a nursery dropped in wait mode: its children are adopted by the
/// enclosing nursery and cancelled; the collector still gets every outcome, then `None`.
#[tokio::test(start_paused = true)]
async fn n15_n9_a_collector_outliving_its_wait_dropped_nursery_gets_every_outcome() {
    let out = no_hang(
        "collector after wait drop",
        nursery(|_outer| async move {
            let (set_tx, set_rx) = oneshot::channel();
            {
                let mut inner = Box::pin(nursery(|n| async move {
                    let set = n.collector::<u32>();
                    for i in 0..5u32 {
                        set.spawn(async move {
                            if i == 0 {
                                return Ok(0);
                            }
                            let c = cancelled().await;
                            if i == 4 {
                                // Cleanup that takes a while after the cancellation.
                                tokio::time::sleep(ms(30)).await;
                            }
                            Err(c)
                        });
                    }
                    set_tx.send(set).ok();
                    std::future::pending::<Result<(), Cancelled>>().await
                }));
                let _ = tokio::time::timeout(ms(10), inner.as_mut()).await;
            }
            let mut set = set_rx.await.unwrap();
            let mut outcomes = Vec::new();
            while let Some((_, o)) = set.join_next().await {
                outcomes.push(o);
            }
            assert_eq!(outcomes.len(), 5, "{outcomes:?}");
            assert_eq!(
                outcomes
                    .iter()
                    .filter(|o| matches!(o, Err(JoinError::ChildCancelled)))
                    .count(),
                4,
                "{outcomes:?}"
            );
            Ok::<_, Cancelled>(())
        }),
    )
    .await;
    assert!(out.is_ok(), "{out:?}");
}

/// A collector taken out of a nursery dropped in abort mode gets `ChildAborted` for every
/// running child, then `None`.
#[tokio::test(start_paused = true)]
async fn n15_n8_a_collector_outliving_its_abort_dropped_nursery_gets_aborted_outcomes() {
    let out = no_hang(
        "collector after abort drop",
        nursery(|_outer| async move {
            let (set_tx, set_rx) = oneshot::channel();
            {
                let mut inner = Box::pin(Nursery::new().drop_mode(DropMode::Abort).run(
                    |n| async move {
                        let set = n.collector::<u32>();
                        for _ in 0..5u32 {
                            set.spawn(std::future::pending::<Result<u32, Cancelled>>());
                        }
                        set_tx.send(set).ok();
                        std::future::pending::<Result<(), Cancelled>>().await
                    },
                ));
                let _ = tokio::time::timeout(ms(10), inner.as_mut()).await;
            }
            let mut set = set_rx.await.unwrap();
            let mut aborted = 0;
            while let Some((_, o)) = set.join_next().await {
                assert!(matches!(o, Err(JoinError::ChildAborted)), "{o:?}");
                aborted += 1;
            }
            assert_eq!(aborted, 5);
            Ok::<_, Cancelled>(())
        }),
    )
    .await;
    assert!(out.is_ok(), "{out:?}");
}

/// A collector dropped mid-stream: its children keep running in the nursery, which waits for
/// them and still returns their failures (nothing lost, no hang).
#[tokio::test(start_paused = true)]
async fn n15_a_collector_dropped_mid_stream_loses_no_failure() {
    let out = no_hang(
        "collector dropped mid-stream",
        Nursery::new().supervisor().run(|n| async move {
            let mut set = n.collector::<u32>();
            for i in 0..4u32 {
                set.spawn(async move {
                    tokio::time::sleep(ms(u64::from(i) * 10)).await;
                    if i % 2 == 1 {
                        return Err(AppError::Boom(i));
                    }
                    Ok(i)
                });
            }
            let first = set.join_next().await;
            assert!(matches!(first, Some((_, Ok(0)))), "{first:?}");
            drop(set);
            Ok::<_, AppError>(())
        }),
    )
    .await;
    match out {
        Err(NurseryError::Failed(f)) => {
            let mut got: Vec<u32> = f
                .iter()
                .map(|f| match f.error() {
                    AppError::Boom(i) => *i,
                    other => panic!("{other:?}"),
                })
                .collect();
            got.sort_unstable();
            assert_eq!(got, vec![1, 3]);
        }
        other => panic!("{other:?}"),
    }
}

/// A supervisor's collected child that panics: the collector gets `ChildPanicked`, the outlet
/// the payload; taken from the outlet, it is not resumed.
#[tokio::test(start_paused = true)]
async fn n15_n5_a_collected_panic_goes_to_the_queue_as_a_marker_and_to_the_outlet() {
    let out = no_hang(
        "collected panic",
        Nursery::new().supervisor().run(|n| async move {
            let mut set = n.collector::<u32>();
            set.spawn(async {
                std::panic::panic_any(7u32);
                #[allow(unreachable_code)]
                Ok::<u32, Cancelled>(0)
            });
            let o = set.join_next().await;
            assert!(
                matches!(o, Some((_, Err(JoinError::ChildPanicked)))),
                "{o:?}"
            );
            match n.next_incident().await {
                Some(Incident::Panicked { payload, .. }) => {
                    assert_eq!(payload.downcast_ref::<u32>(), Some(&7))
                }
                other => panic!("{other:?}"),
            }
            assert!(set.join_next().await.is_none());
            Ok::<_, Cancelled>(())
        }),
    )
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// Multi-thread: `abort_all` racing the children's own ends; each child's outcome is queued
/// exactly once and the collector drains to `None`.
#[test]
fn n15_abort_all_racing_completion_queues_each_outcome_once_multi_thread() {
    let rt = multi_thread();
    rt.block_on(async {
        for round in 0..300 {
            let out = no_hang_rt(
                "abort_all race",
                nursery(|n| async move {
                    let mut set = n.collector::<u32>();
                    let mut ids = Vec::new();
                    for i in 0..8u32 {
                        let c = set.spawn(async move {
                            if i % 2 == 0 {
                                tokio::task::yield_now().await;
                            }
                            Ok::<_, Cancelled>(i)
                        });
                        ids.push(c.id());
                    }
                    tokio::task::yield_now().await;
                    set.abort_all();
                    let mut seen = Vec::new();
                    while let Some((id, o)) = set.join_next().await {
                        assert!(
                            matches!(o, Ok(_) | Err(JoinError::ChildAborted)),
                            "round {round}: {o:?}"
                        );
                        seen.push(id);
                    }
                    assert_eq!(seen.len(), 8, "round {round}");
                    seen.sort_unstable_by_key(|id| id.to_string());
                    seen.dedup();
                    assert_eq!(seen.len(), 8, "round {round}: duplicate outcomes");
                    assert!(set.is_empty());
                    Ok::<_, Cancelled>(())
                }),
            )
            .await;
            assert!(matches!(out, Ok(Some(()))), "round {round}: {out:?}");
        }
    });
}

// ---------------------------------------------------------------------------------------
// More N3 edges
// ---------------------------------------------------------------------------------------

/// A start after the nursery's grace ran out (its children were aborted): the started child
/// is aborted at once and the start says so; no hang, no failure.
#[tokio::test(start_paused = true)]
async fn n3_n7_a_start_after_the_grace_ran_out_is_aborted_not_hung() {
    let out = no_hang(
        "start after grace",
        Nursery::new().grace(ms(10)).run(|n| async move {
            n.spawn(std::future::pending::<Result<(), Cancelled>>());
            n.cancel();
            // Past the grace (a plain sleep: not a cancellation point).
            tokio::time::sleep(ms(50)).await;
            assert_eq!(n.aborted_children().len(), 1);
            let started = n
                .start(|ready: Ready<u32>| async move {
                    ready.signal(1);
                    std::future::pending::<Result<(), Cancelled>>().await
                })
                .await;
            assert!(matches!(started, Err(StartError::Aborted)), "{started:?}");
            Ok::<_, Cancelled>(())
        }),
    )
    .await;
    assert!(out.is_ok());
}

/// The caller's scope is cancelled, the child signals (and so stays under the caller's
/// scopes), then the caller drops the start: the child moves to the nursery, cancelled, and
/// the nursery ends without a hang or a failure.
#[tokio::test(start_paused = true)]
async fn n3_a_start_dropped_after_a_signal_that_did_not_move_the_child() {
    let out = no_hang(
        "dropped start after unmoved signal",
        nursery(|n| async move {
            let caller = tokio_nursery::CancelScope::new();
            let caller_scope = caller.handle();
            let starter = n.clone();
            let r = caller
                .run(async move {
                    let mut start = Box::pin(starter.start(|ready: Ready<u32>| async move {
                        // Signal only once the caller's scope is cancelled.
                        let c = cancelled().await;
                        ready.signal(1);
                        tokio::time::sleep(ms(10)).await;
                        Err::<(), _>(c)
                    }));
                    assert!(futures::poll!(start.as_mut()).is_pending());
                    caller_scope.cancel();
                    tokio::task::yield_now().await;
                    tokio::task::yield_now().await;
                    // Signalled while cancelled: the start still waits for the exit.
                    assert!(futures::poll!(start.as_mut()).is_pending());
                    drop(start);
                    Ok::<_, Cancelled>(())
                })
                .await;
            assert!(r.is_ok(), "{r:?}");
            Ok::<_, Cancelled>(())
        }),
    )
    .await;
    assert!(matches!(out, Ok(Some(()))), "{out:?}");
}

/// The nursery's own deadline fires while its body waits for a start whose child never
/// signals: the child sees it (it runs under the body's scopes), the start ends as a
/// cancellation, and the nursery absorbs it.
#[tokio::test(start_paused = true)]
async fn n3_a_nursery_deadline_ends_a_start_that_never_signals() {
    let out = no_hang(
        "deadline during start",
        Nursery::new().timeout(ms(100)).run(|n| async move {
            let started = n
                .start(|_ready: Ready<u32>| async move { Err::<(), _>(cancelled().await) })
                .await;
            match started {
                Err(StartError::Cancelled(c)) => Err::<(), _>(c),
                other => panic!("{other:?}"),
            }
        }),
    )
    .await;
    assert!(matches!(out, Ok(None)), "{out:?}");
}

/// Multi-thread: a start whose caller is outside the nursery, the nursery dropped in wait
/// mode while the child signals from its task; no hang, the caller gets the value or a
/// cancellation, and the adopter ends.
#[test]
fn n3_n9_outside_start_signalling_while_the_nursery_is_dropped_multi_thread() {
    let rt = multi_thread();
    rt.block_on(async {
        for round in 0..200 {
            let out = no_hang_rt(
                "outside start race",
                nursery(|outer| async move {
                    let (handle_tx, handle_rx) = oneshot::channel::<NurseryHandle<Cancelled>>();
                    let caller = outer.spawn(async move {
                        let inner = handle_rx.await.unwrap();
                        let r = inner
                            .start(|ready: Ready<u32>| async move {
                                tokio::task::yield_now().await;
                                ready.signal(1);
                                Err::<(), _>(cancelled().await)
                            })
                            .await;
                        match r {
                            Ok(1) | Err(StartError::Spawn(SpawnError::Closed)) => Ok(()),
                            other => panic!("round {round}: {other:?}"),
                        }
                    });
                    {
                        let mut inner = Box::pin(nursery(|n| async move {
                            handle_tx.send(n.clone()).unwrap();
                            std::future::pending::<Result<(), Cancelled>>().await
                        }));
                        let _ = futures::poll!(inner.as_mut());
                        tokio::task::yield_now().await;
                    }
                    drop(caller);
                    Ok::<_, Cancelled>(())
                }),
            )
            .await;
            assert!(matches!(out, Ok(Some(()))), "round {round}: {out:?}");
        }
    });
}

/// Session 20 (a usability review): `child.await?` in a nursery body whose error type
/// holds a `JoinError` (anyhow here) turned a deadline into a failure whenever the child
/// stopped at the deadline before the body looked ("the nursery body failed: the child was
/// cancelled", `TimedOut` lost): always on current_thread, three times in four on
/// multi_thread. A waiter whose scope is cancelled now gets its own cancellation from a
/// child that ended without a value, so `?` passes it on and the deadline reads as one.
#[cfg(feature = "anyhow")]
#[tokio::test(start_paused = true)]
async fn a_childs_handle_awaited_with_question_mark_keeps_the_deadline_a_timeout() {
    let start = tokio::time::Instant::now();
    let out: anyhow::Result<Option<u32>> = fail_after(ms(5), async {
        Ok(nursery(|n| async move {
            let child = n.spawn(async {
                tokio::time::sleep(Duration::from_secs(5))
                    .cancellable()
                    .await?;
                Ok::<_, anyhow::Error>(1)
            });
            Ok::<_, anyhow::Error>(child.await?)
        })
        .await?)
    })
    .await;
    let error = out.expect_err("the deadline passed");
    assert!(
        error.downcast_ref::<tokio_nursery::TimedOut>().is_some(),
        "{error:#}"
    );
    assert_eq!(start.elapsed(), ms(5));
}

/// The same on multi_thread, with the enclosing scope cancelled while the child parks on
/// the other worker: whichever of the child and the body sees the cancellation first, the
/// body's `?` passes it on and the enclosing scope absorbs it (was: a failure, some runs).
#[cfg(feature = "anyhow")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_childs_handle_awaited_with_question_mark_passes_the_cancellation_on_multi_thread() {
    for round in 0..200 {
        let scope = CancelScope::new();
        let cut = scope.handle();
        let out = no_hang_rt(
            "a cancelled join",
            scope.run(async move {
                Ok(nursery(|n| async move {
                    let child = n.spawn(async {
                        tokio::time::sleep(Duration::from_secs(3600))
                            .cancellable()
                            .await?;
                        Ok::<_, anyhow::Error>(1)
                    });
                    tokio::task::yield_now().await;
                    cut.cancel();
                    Ok::<_, anyhow::Error>(child.await?)
                })
                .await?)
            }),
        )
        .await;
        assert!(
            matches!(out, Ok(None)),
            "round {round}: {:?}",
            out.map_err(|e: anyhow::Error| format!("{e:#}"))
        );
    }
}

/// The same rule for a local scope's handle: a child stopped by the deadline before the
/// body looks gives the body the deadline's cancellation, which `?` passes on (was: the
/// body failed with `ChildCancelled`).
#[tokio::test(start_paused = true)]
async fn a_local_childs_handle_awaited_with_question_mark_passes_the_deadline_on() {
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    let out = move_on_after(ms(5), async {
        local_scope(async |s| {
            let child = s.spawn(async {
                tokio_nursery::sleep(Duration::from_secs(5)).await?;
                Ok::<_, BoxError>(1)
            });
            // Busy past the deadline (not a cancellation point): the child stops first.
            tokio::time::sleep(ms(10)).await;
            Ok::<_, BoxError>(child.await?)
        })
        .await
    })
    .await;
    assert!(matches!(out, Ok(None)), "{out:?}");
}
