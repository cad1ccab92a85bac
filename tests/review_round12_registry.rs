//! Round 12 adversarial review: the child registry, the close/adopt handoff, the executor,
//! the task tree (SPEC O2) and reports (N4-N6).
//!
//! Every test here asserts the behaviour the SPEC or the crate's docs promise; those that
//! name a cause describe the code before session 12's fix.

mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use common::nursery::{bounded, ms, no_hang};
use common::{leak_checked, spin_until};
use tokio_nursery::{
    Cancelled, Nursery, NurseryExecutor, NurseryHandle, Report, SpawnError, TaskTree, nursery,
    protect,
};

/// Panics when dropped (to see whether a panic in an aborted task's drop is reported).
struct PanicOnDrop(&'static str);

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("{}", self.0);
        }
    }
}

/// A hook that records the panics and failures it receives, as text.
fn recording_hook() -> (
    Arc<Mutex<Vec<String>>>,
    impl Fn(&Report<'_>) + Send + Sync + 'static,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook_seen = seen.clone();
    let hook = move |report: &Report<'_>| {
        let text = match report {
            Report::Panic { payload, .. } => format!(
                "panic: {}",
                tokio_nursery::panic_message(*payload).unwrap_or("<non-string>")
            ),
            Report::Failure { error, .. } => format!("failure: {error:?}"),
            other => format!("other: {other}"),
        };
        hook_seen.lock().unwrap().push(text);
    };
    (seen, hook)
}

// ---------------------------------------------------------------------------------------
// O2: the task tree lists each live scope once.
// ---------------------------------------------------------------------------------------

/// `Err` with the tree's text if the snapshot of `n`'s tree lists some scope more than once.
fn each_scope_listed_once(n: &NurseryHandle<Cancelled>) -> Result<(), String> {
    let tree = TaskTree::of(&n.scope());
    let mut ids: Vec<_> = tree.entries().iter().map(|e| e.scope).collect();
    let total = ids.len();
    ids.sort();
    ids.dedup();
    match total == ids.len() {
        true => Ok(()),
        false => Err(format!(
            "a scope is listed more than once in the task tree:\n{tree}"
        )),
    }
}

/// SPEC O2 (a snapshot of the task tree): protected work started in a nursery's body is
/// linked under the body's scope (the nursery's node) *and* registered as an adoptee of the
/// nursery, whose `adopted()` list the tree also walks: the same scope appeared twice
/// (until session 12; it is listed once, where it runs).
#[tokio::test(start_paused = true)]
async fn o2_protected_work_in_a_nursery_body_is_listed_once() {
    leak_checked(async {
        let out = nursery(|n: NurseryHandle<Cancelled>| async move {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let work = protect(async move {
                let _ = rx.await;
            });
            tokio::task::yield_now().await;
            let listed_once = each_scope_listed_once(&n);
            tx.send(()).unwrap();
            work.await;
            listed_once.unwrap();
            Ok::<_, Cancelled>(())
        })
        .await;
        out.unwrap();
    })
    .await
}

/// SPEC O2, S14: a `NurseryExecutor::current()` task spawned from a nursery's body: listed
/// once in the tree.
#[tokio::test(start_paused = true)]
async fn o2_an_executor_task_in_a_nursery_body_is_listed_once() {
    leak_checked(async {
        let out = nursery(|n: NurseryHandle<Cancelled>| async move {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let executor = NurseryExecutor::current().unwrap();
            executor.spawn(async move {
                let _ = rx.await;
            });
            tokio::task::yield_now().await;
            let listed_once = each_scope_listed_once(&n);
            tx.send(()).unwrap();
            listed_once.unwrap();
            Ok::<_, Cancelled>(())
        })
        .await;
        out.unwrap();
    })
    .await
}

// ---------------------------------------------------------------------------------------
// N6: a panic in the drop of an aborted executor task.
// ---------------------------------------------------------------------------------------

/// SPEC N6 ("a panic is never swallowed"), N7: an executor task adopted by a nursery is
/// aborted when the nursery's grace runs out; a panic in its drop must reach the report hook
/// (as it does for a nursery child, `ChildTask`'s drop). Until session 12 `Adopted` had no
/// drop guard: tokio caught the panic into a `JoinHandle` nobody held, and it was lost.
#[tokio::test(start_paused = true)]
async fn n6_a_panic_in_the_drop_of_an_aborted_executor_task_is_reported() {
    leak_checked(async {
        let (seen, hook) = recording_hook();
        let dropped = Arc::new(AtomicBool::new(false));
        let out = no_hang(Nursery::new().grace(ms(10)).on_report(hook).run(
            |n: NurseryHandle<Cancelled>| {
                let dropped = dropped.clone();
                async move {
                    let executor = NurseryExecutor::current().unwrap();
                    executor.spawn(async move {
                        let _flag =
                            common::nursery::OnDrop(Some(move || dropped.store(true, SeqCst)));
                        let _bomb = PanicOnDrop("executor task drop bomb");
                        std::future::pending::<()>().await
                    });
                    tokio::task::yield_now().await;
                    n.cancel();
                    Ok::<_, Cancelled>(())
                }
            },
        ))
        .await;
        assert!(out.is_ok(), "{out:?}");
        assert!(dropped.load(SeqCst), "the executor task was aborted");
        let seen = seen.lock().unwrap().clone();
        assert!(
            seen.iter().any(|s| s.contains("executor task drop bomb")),
            "the panic of the aborted executor task's drop was lost; the hook saw {seen:?}"
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------
// N11: a descendant waiting for a slot of its own full nursery.
// ---------------------------------------------------------------------------------------

/// SPEC N11 ("a child spawning into its own full nursery gets an error or documented
/// behaviour, not a silent deadlock"): the existing test
/// `n11_a_descendant_waiting_for_a_slot_of_its_own_full_nursery_gets_full` covers a
/// descendant whose ancestor child has parked. On multi_thread, the grandchild can run while
/// the (unnamed) child holding the only slot is still in its first poll: that child has no
/// registry slot yet, and until session 12 `is_own_child` did not find it: the grandchild
/// waited for the slot its own ancestor held, which waited for it (a silent deadlock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n11_a_grandchild_of_an_unparked_child_gets_full_instead_of_a_deadlock() {
    leak_checked(async {
        let got = Arc::new(Mutex::new(None::<String>));
        let got2 = got.clone();
        let run = Nursery::new()
            .limit(1)
            .run(move |n: NurseryHandle<Cancelled>| async move {
                let outer = n.clone();
                n.spawn(async move {
                    // The only slot's holder: unnamed, still in its first poll below.
                    nursery(move |m: NurseryHandle<Cancelled>| async move {
                        let decided = Arc::new(AtomicBool::new(false));
                        let decided2 = decided.clone();
                        let got = got2.clone();
                        // Spawned from a plain thread: it goes to the runtime's injection queue,
                        // so the other worker runs it while this one is busy in the slot
                        // holder's first poll (from a worker it would sit in that worker's
                        // unstealable LIFO slot).
                        let m2 = m.clone();
                        let grandchild = async move {
                            let spawn = outer.spawn_when_free(async { Ok::<_, Cancelled>(()) });
                            let mut spawn = std::pin::pin!(spawn);
                            // The `Full` decision is taken in the first poll.
                            let first = futures::poll!(spawn.as_mut());
                            decided2.store(true, SeqCst);
                            let outcome = match first {
                                Poll::Ready(outcome) => outcome,
                                Poll::Pending => spawn.await,
                            };
                            *got.lock().unwrap() = Some(match outcome {
                                Ok(_) => "spawned".to_string(),
                                Err(SpawnError::Full) => "full".to_string(),
                                Err(other) => format!("{other:?}"),
                            });
                            Ok::<_, Cancelled>(())
                        };
                        std::thread::spawn(move || drop(m2.spawn(grandchild)))
                            .join()
                            .unwrap();
                        // Still inside the first poll of the slot holder.
                        spin_until(&decided, "the grandchild's first poll");
                        Ok::<_, Cancelled>(())
                    })
                    .await
                    .map(|_| ())
                    .map_err(|e| match e {
                        tokio_nursery::NurseryError::Cancelled(c) => c,
                        other => panic!("{other:?}"),
                    })
                });
                Ok::<_, Cancelled>(())
            });
        let out = tokio::time::timeout(2 * common::HANG_BOUND, run).await;
        assert!(
            out.is_ok(),
            "deadlock: the grandchild waits for the slot its own ancestor holds"
        );
        out.unwrap().unwrap();
        assert_eq!(got.lock().unwrap().as_deref(), Some("full"));
    })
    .await
}

// ---------------------------------------------------------------------------------------
// N4, N6, N9: a wait-mode drop racing with failing children (multi_thread stress).
// ---------------------------------------------------------------------------------------

/// A hook counting each report's text into `seen`.
fn counting(seen: Arc<Mutex<Vec<String>>>) -> impl Fn(&Report<'_>) + Send + Sync + 'static {
    move |report: &Report<'_>| {
        let text = match report {
            Report::Panic { payload, .. } => tokio_nursery::panic_message(*payload)
                .unwrap_or("<non-string>")
                .to_string(),
            Report::Failure { error, .. } => format!("{error:?}"),
            other => format!("other: {other}"),
        };
        seen.lock().unwrap().push(text);
    }
}

/// SPEC N4/N6/N9/R2 (every failure and panic reported exactly once; wait drop: all owned by
/// an adopter): an inner fail-fast nursery is dropped in wait mode at a random moment while
/// its children (named and unnamed) fail or panic on other workers. Each failure and panic
/// must reach exactly one hook (the adopter's, or the inner one's if unclaimed), and no
/// child future may be left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n9_a_wait_drop_racing_with_failing_children_reports_each_exactly_once() {
    use common::nursery::AppError;
    leak_checked(async {
        for round in 0..300u32 {
            bounded(async {
                let outer_seen = Arc::new(Mutex::new(Vec::new()));
                let inner_seen = Arc::new(Mutex::new(Vec::new()));
                let live = common::LiveFutures::new();
                let (o, i, l) = (outer_seen.clone(), inner_seen.clone(), live.clone());
                let out = Nursery::new()
                    .on_report(counting(o))
                    .run(move |_n: NurseryHandle<AppError>| async move {
                        let inner = Nursery::new().on_report(counting(i)).run(
                            move |m: NurseryHandle<AppError>| async move {
                                for k in 0..8u32 {
                                    let child = l.track(async move {
                                        for _ in 0..(k % 4) {
                                            tokio::task::yield_now().await;
                                        }
                                        if k % 2 == 1 {
                                            panic!("p{k}");
                                        }
                                        Err::<(), _>(AppError::Boom(k))
                                    });
                                    if k % 3 == 0 {
                                        m.spawn_named("n", child);
                                    } else {
                                        m.spawn(child);
                                    }
                                }
                                std::future::pending::<Result<(), AppError>>().await
                            },
                        );
                        let mut inner = std::pin::pin!(inner);
                        for _ in 0..(round % 7) {
                            if futures::poll!(inner.as_mut()).is_ready() {
                                unreachable!("the inner body never returns");
                            }
                            tokio::task::yield_now().await;
                        }
                        if round % 7 == 0 {
                            let _ = futures::poll!(inner.as_mut());
                        }
                        Ok::<_, AppError>(())
                    })
                    .await;
                assert!(matches!(out, Ok(Some(()))), "{out:?}");
                common::wait_until("no child future left", || live.live() == 0).await;
                let mut all: Vec<String> = outer_seen.lock().unwrap().clone();
                all.extend(inner_seen.lock().unwrap().iter().cloned());
                let mut expected: Vec<String> = (0..8u32)
                    .map(|k| {
                        if k % 2 == 1 {
                            format!("p{k}")
                        } else {
                            format!("Boom({k})")
                        }
                    })
                    .collect();
                // Only the children that ran report: spawned children always run unless the
                // drop came before the body ran (round % 7 == 0 polls once).
                all.sort();
                expected.sort();
                assert_eq!(all, expected, "round {round}: reports lost or duplicated");
            })
            .await;
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// N7: past an ancestor's grace, abort cascades to every descendant.
// ---------------------------------------------------------------------------------------

/// SPEC N7 ("Past an ancestor's grace, abort cascades to every descendant whatever its drop
/// mode"): a nursery running in the outer nursery's *body* (not in a child, not adopted) is
/// a descendant too. Until session 12 the outer grace's end reached only the outer
/// registry's slots (children and adoptees): the inner nursery's stuck child was never
/// aborted and the outer nursery waited for it for ever.
#[tokio::test(start_paused = true)]
async fn n7_grace_expiry_cascades_into_a_nursery_running_in_the_body() {
    grace_expiry_reaches_a_stuck_grandchild(false).await;
}

/// SPEC N7, companion of the test above: a wait-mode nursery inside a *child* is dropped
/// when that child is aborted at the outer grace expiry, and is adopted by the outer
/// nursery, which has aborted: its stuck child is aborted at once.
#[tokio::test(start_paused = true)]
async fn n7_grace_expiry_cascades_into_a_wait_mode_nursery_in_a_child() {
    grace_expiry_reaches_a_stuck_grandchild(true).await;
}

/// An outer nursery with a 20 ms grace, cancelled at 10 ms, around an inner nursery (in a
/// child of the outer one, or in its body) whose child never reaches a cancellation point:
/// the grandchild is aborted when the outer grace runs out, at 30 ms.
async fn grace_expiry_reaches_a_stuck_grandchild(in_child: bool) {
    use common::nursery::{sleep_forever, stuck};
    leak_checked(async move {
        let live = common::LiveFutures::new();
        let tracker = live.clone();
        let start = tokio::time::Instant::now();
        let inner = async move {
            nursery(move |m: NurseryHandle<Cancelled>| async move {
                // Never reaches a cancellation point: only an abort stops it.
                m.spawn(tracker.track(stuck::<Cancelled>()));
                sleep_forever::<Cancelled>().await
            })
            .await
            .map(|_| ())
        };
        let out = no_hang(Nursery::new().grace(ms(20)).run(
            move |n: NurseryHandle<tokio_nursery::NurseryError<Cancelled>>| async move {
                let canceller = n.clone();
                let _timer = common::nursery::at(start + ms(10), move || canceller.cancel());
                if in_child {
                    n.spawn(inner);
                    sleep_forever().await
                } else {
                    inner.await
                }
            },
        ))
        .await;
        assert!(matches!(out, Ok(None)), "{out:?}");
        assert_eq!(
            start.elapsed(),
            ms(30),
            "the grandchild was not aborted when the outer grace ran out"
        );
        live.wait_live(0).await;
    })
    .await
}

/// SPEC C1 with N7's cascade into the body (session 12): protected work started in the
/// body runs to completion, nurseries inside it included: an enclosing nursery's grace
/// expiry tells it, and does not abort the children of a nursery running inside it.
#[tokio::test(start_paused = true)]
async fn c1_the_grace_cascade_into_the_body_passes_over_protected_work() {
    leak_checked(async {
        let start = tokio::time::Instant::now();
        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        let out = no_hang(Nursery::new().grace(ms(20)).run(
            move |n: NurseryHandle<Cancelled>| async move {
                let canceller = n.clone();
                let _timer = common::nursery::at(start + ms(10), move || canceller.cancel());
                let work = protect(async move {
                    nursery(move |m: NurseryHandle<Cancelled>| async move {
                        m.spawn(async move {
                            // Not a cancellation point: only an abort could cut it short.
                            tokio::time::sleep(ms(100)).await;
                            done.store(true, SeqCst);
                            Ok::<_, Cancelled>(())
                        });
                        Ok::<_, Cancelled>(())
                    })
                    .await
                    .map(|_| ())
                });
                tokio::task::yield_now().await;
                let tree = TaskTree::of(&n.scope()).to_string();
                assert!(tree.contains("protected work ("), "{tree}");
                drop(work);
                common::nursery::sleep_forever::<Cancelled>().await
            },
        ))
        .await;
        assert!(matches!(out, Ok(None)), "{out:?}");
        assert!(
            finished.load(SeqCst),
            "the protected work's child was cut short"
        );
        assert_eq!(start.elapsed(), ms(100));
    })
    .await
}
