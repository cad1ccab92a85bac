//! Adversarial review of session 12's diff (lazy `start`, grace cascade into the body,
//! local-scope fairness, executor drops, ...). Each test asserts the correct behaviour;
//! those that name a cause describe the first version of that change, fixed the same
//! session.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_nursery::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Sets its flag when dropped (a child's future dropped: finished or aborted).
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Spends tokio's whole budget, then yields once with it spent (as a body looping over
/// budgeted operations does), so that the local scope's poll finds none left for its
/// children and marks them starved.
async fn spend_budget_then_yield() {
    while tokio::task::coop::has_budget_remaining() {
        tokio::task::coop::consume_budget().await;
    }
    // Pending with the budget spent; ready at the next poll.
    tokio::task::coop::consume_budget().await;
}

// ---------------------------------------------------------------------------------------
// 4. Local scopes: the `starved` flag.
// ---------------------------------------------------------------------------------------

/// B1 (children make progress while the scope is polled; `spawn` relies on "that poll goes
/// on to poll the children"): after a poll that left the children starved, the next poll
/// polls the children *before* the body; the first version did not poll them after it, so
/// a child the body spawned in that poll was never polled (nothing wakes the scope, spawn
/// does not), and a body that then waited for it (or returned) hung.
#[tokio::test(start_paused = true)]
async fn b1_child_spawned_in_a_children_first_poll_is_polled() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tx = Cell::new(Some(tx));
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        local_scope(async |s| {
            // A: parked until B runs.
            let a = s.spawn(async {
                let _ = rx.await;
                Ok::<_, Cancelled>(1)
            });
            spend_budget_then_yield().await;
            // This poll of the scope polled A first (starved); now B is spawned.
            let b = s.spawn(async {
                let _ = tx.take().unwrap().send(());
                Ok::<_, Cancelled>(2)
            });
            let b = b.await.unwrap();
            let a = a.await.unwrap();
            Ok::<_, Cancelled>(a + b)
        }),
    )
    .await;
    assert_eq!(
        out.expect("hang: the child spawned in a children-first poll was never polled")
            .unwrap(),
        Some(3)
    );
}

/// The same with a body that spawns and returns at once (no await on the new child): the
/// scope's poll ended Pending with a fresh child queued and no wake-up. (Without the elapsed
/// check it would pass: `timeout` polls the scope once more when the paused clock jumps to
/// its 10 s deadline, which finally polls the child.)
#[tokio::test(start_paused = true)]
async fn b1_child_spawned_by_a_returning_body_in_a_children_first_poll_is_polled() {
    let started = tokio::time::Instant::now();
    let ran = Cell::new(false);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tx = Cell::new(Some(tx));
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        local_scope(async |s| {
            s.spawn(async {
                let _ = rx.await;
                Ok::<_, Cancelled>(())
            });
            spend_budget_then_yield().await;
            s.spawn(async {
                ran.set(true);
                let _ = tx.take().unwrap().send(());
                Ok::<_, Cancelled>(())
            });
            Ok::<_, Cancelled>(())
        }),
    )
    .await;
    assert!(
        out.is_ok(),
        "hang: the last child never ran (ran = {})",
        ran.get()
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the scope stalled for {:?} (until an unrelated wake-up polled the child)",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// 2. Grace-expiry cascade into nurseries running in the body.
// ---------------------------------------------------------------------------------------

/// A nursery whose child `name` never ends (it sets `dropped` when its future goes).
async fn nursery_with_a_stuck_child(name: &'static str, dropped: Arc<AtomicBool>) {
    let _ = Nursery::new()
        .run(|n2: NurseryHandle<Cancelled>| async move {
            n2.spawn_named(name, async move {
                let _g = SetOnDrop(dropped);
                std::future::pending::<()>().await;
                Ok::<_, Cancelled>(())
            });
            Ok::<_, Cancelled>(())
        })
        .await;
}

/// Baseline of the next test. N7, normal path: the cascade reaches a nursery in the body and
/// names its stuck child once.
#[tokio::test(start_paused = true)]
async fn n7_cascade_into_body_names_the_nested_child_once() {
    let dropped = Arc::new(AtomicBool::new(false));
    let d2 = dropped.clone();
    let mut kept = None;
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        Nursery::new()
            .grace(ms(50))
            .run(|n1: NurseryHandle<Cancelled>| {
                kept = Some(n1.clone());
                async move {
                    n1.cancel();
                    nursery_with_a_stuck_child("s2", d2).await;
                    Ok::<_, Cancelled>(())
                }
            }),
    )
    .await;
    assert!(out.expect("hang").is_ok());
    assert!(dropped.load(Ordering::SeqCst));
    let aborted = kept.unwrap().aborted_children().to_vec();
    assert!(
        aborted.len() == 1 && aborted[0].contains("s2"),
        "{aborted:?}"
    );
}

/// N7 ("past an ancestor's grace, abort cascades to every descendant whatever its drop
/// mode"), drop path: the same program as above, but the outer nursery's future is
/// dropped (wait mode) while it is cancelling. Its grace still runs (N9: the children keep
/// their grace). Until session 12's fix the nursery in its body, dropped with the body, was
/// handed to the nursery above (the outer one refused: it closed first), so no cascade
/// reached the stuck grandchild; the outer nursery now closes once its body is dropped and
/// adopts it.
#[tokio::test(start_paused = true)]
async fn n7_grace_of_a_dropped_nursery_reaches_the_nursery_its_body_ran() {
    let dropped = Arc::new(AtomicBool::new(false));
    let d2 = dropped.clone();
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let out = tokio::time::timeout(
        Duration::from_secs(100),
        Nursery::new().grace(Duration::from_secs(10)).run(
            |top: NurseryHandle<Cancelled>| async move {
                let n1 =
                    Nursery::new()
                        .grace(ms(100))
                        .run(|n1: NurseryHandle<Cancelled>| async move {
                            n1.cancel();
                            nursery_with_a_stuck_child("stuck", d2).await;
                            Ok::<_, Cancelled>(())
                        });
                // Dropped 10 ms in, while it waits for the stuck grandchild.
                assert!(tokio::time::timeout(ms(10), n1).await.is_err());
                tokio::time::sleep(ms(1_000)).await;
                *seen2.lock().unwrap() = Some(dropped.load(Ordering::SeqCst));
                top.cancel(); // the test's own grace (10 s) ends it either way
                Ok::<_, Cancelled>(())
            },
        ),
    )
    .await;
    assert!(out.expect("hang").is_ok());
    assert_eq!(
        *seen.lock().unwrap(),
        Some(true),
        "1 s after the drop, 900 ms past the dropped nursery's 100 ms grace, the grandchild \
         in its body still runs"
    );
}

/// S8 (a shielded scope ignores its ancestors' cancellation) vs the new cascade: a nursery
/// running in a shielded scope of the body (Trio's shielded cleanup) is never cancelled; the
/// first version of the cascade aborted its children anyway, and every child it spawned
/// afterwards (its registry marked aborted for good): shielded scopes are passed over.
#[tokio::test(start_paused = true)]
async fn s8_grace_cascade_does_not_abort_children_of_a_shielded_nursery_in_the_body() {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        Nursery::new()
            .grace(ms(50))
            .run(|n1: NurseryHandle<Cancelled>| async move {
                n1.cancel();
                let cleanup = CancelScope::new()
                    .shielded()
                    .run(async {
                        Nursery::new()
                            .run(|n2: NurseryHandle<Cancelled>| async move {
                                // Cleanup work that takes 200 ms (past the 50 ms grace).
                                let first = n2.spawn(async {
                                    sleep(ms(200)).await?;
                                    Ok::<_, Cancelled>(1)
                                });
                                let first = first.await;
                                let second = n2.spawn(async { Ok::<_, Cancelled>(2) }).await;
                                Ok::<_, Cancelled>((first, second))
                            })
                            .await
                    })
                    .await;
                Ok::<_, Cancelled>(format!("{cleanup:?}"))
            }),
    )
    .await;
    let text = out.expect("hang").unwrap().unwrap();
    assert!(
        text.contains("Ok(1)") && text.contains("Ok(2)"),
        "shielded cleanup cut short: {text}"
    );
}

// ---------------------------------------------------------------------------------------
// 5. Executor: a panic in an adopted task's drop is reported.
// ---------------------------------------------------------------------------------------

/// Panics when dropped.
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("drop of the executor's task");
        }
    }
}

/// SPEC N6 / S14: an executor task (adopted by the nursery around the scope the
/// executor was built in) aborted by that nursery's grace expiry panics in its drop: the
/// panic reaches the nursery's report hook. Also checks the cascade into the executor's
/// task (a nursery running in it) names each aborted child once.
#[tokio::test(start_paused = true)]
async fn n6_panic_in_the_drop_of_an_aborted_executor_task_is_reported() {
    let reports = Arc::new(Mutex::new(Vec::<String>::new()));
    let r2 = reports.clone();
    let mut kept = None;
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        Nursery::new()
            .grace(ms(50))
            .on_report(move |report| {
                if let Report::Panic { payload, .. } = report {
                    r2.lock()
                        .unwrap()
                        .push(panic_message(*payload).unwrap_or("?").to_string());
                }
            })
            .run(|n1: NurseryHandle<Cancelled>| {
                kept = Some(n1.clone());
                async move {
                    let executor = NurseryExecutor::current().unwrap();
                    executor.spawn(async {
                        let _bomb = PanicOnDrop;
                        let _ = Nursery::new()
                            .run(|n3: NurseryHandle<Cancelled>| async move {
                                n3.spawn_named(
                                    "x",
                                    std::future::pending::<Result<(), Cancelled>>(),
                                );
                                Ok::<_, Cancelled>(())
                            })
                            .await;
                    });
                    tokio::task::yield_now().await;
                    n1.cancel();
                    Ok::<_, Cancelled>(())
                }
            }),
    )
    .await;
    assert!(out.expect("hang").is_ok());
    let aborted = kept.unwrap().aborted_children().to_vec();
    let xs = aborted.iter().filter(|name| name.contains("\"x\"")).count();
    assert_eq!(xs, 1, "{aborted:?}");
    assert_eq!(
        *reports.lock().unwrap(),
        ["drop of the executor's task".to_string()]
    );
}
