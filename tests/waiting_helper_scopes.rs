//! A helper scope (`move_on_after` and friends) whose body waits only at cancellation points
//! polled with the scope's own waker keeps no node while it waits: its own timer and its
//! registration with the enclosing scope wake it (DESIGN.md, "Helper scopes that wait").
//! These tests hold what users see in every case: the deadline, an enclosing scope's
//! cancellation, and each way the scope comes to need a node while it waits.

mod common;

use common::AppError;

use std::future::pending;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;
use tokio_nursery::*;

const HOUR: Duration = Duration::from_secs(3600);

/// A missed wake-up would wait for ever: under the paused clock this bound turns it into a
/// failure, at no cost when all goes well.
async fn bounded<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10 * 3600), future)
        .await
        .expect("a waiting scope was never woken")
}

/// Runs `scope(start)` (leak-checked, bounded) and checks it absorbed its cancellation,
/// exactly `after` past `start`.
async fn absorbed_after<S, T>(after: Duration, scope: impl FnOnce(Instant) -> S)
where
    S: std::future::Future<Output = Result<Option<T>, Cancelled>>,
    T: std::fmt::Debug,
{
    common::leak_checked(async {
        let start = Instant::now();
        let out = bounded(scope(start)).await;
        assert!(matches!(out, Ok(None)), "{out:?}");
        assert_eq!(start.elapsed(), after);
    })
    .await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_deadline_reaches_a_waiting_point_at_the_exact_time() {
    absorbed_after(Duration::from_secs(3), |_start| {
        move_on_after(Duration::from_secs(3), async move {
            pending::<()>().cancellable().await?;
            Ok::<_, Cancelled>(())
        })
    })
    .await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn fail_after_reports_its_deadline_and_reason_when_it_times_out_waiting() {
    common::leak_checked(async {
        let start = Instant::now();
        let out: Result<(), AppError> = bounded(fail_after(Duration::from_millis(20), async {
            sleep(HOUR).await?;
            Ok(())
        }))
        .await;
        let Err(AppError::TimedOut(timed_out)) = out else {
            panic!("expected TimedOut, got {out:?}");
        };
        assert_eq!(
            timed_out.deadline(),
            Some(start + Duration::from_millis(20))
        );
        assert!(timed_out.reason().is_deadline());
        assert_eq!(start.elapsed(), Duration::from_millis(20));
    })
    .await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_enclosing_scopes_cancel_reaches_a_waiting_helper_scope() {
    common::leak_checked(async {
        let outer = CancelScope::new();
        let handle = outer.handle();
        let start = Instant::now();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            handle.cancel();
        });
        let out = bounded(outer.run(async {
            let inner = move_on_after(HOUR, async {
                sleep(HOUR).await?;
                Ok::<_, Cancelled>(())
            })
            .await;
            assert!(inner.is_err(), "the outer cancellation passes through");
            assert_eq!(start.elapsed(), Duration::from_secs(1));
            inner
        }))
        .await;
        assert_eq!(out.unwrap(), None, "absorbed by the outer scope");
        canceller.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn nested_waiting_helper_scopes_each_keep_their_own_deadline() {
    absorbed_after(Duration::from_secs(5), |start| {
        move_on_after(Duration::from_secs(5), async move {
            let inner = move_on_after(Duration::from_secs(2), async {
                pending::<()>().cancellable().await?;
                Ok::<_, Cancelled>(())
            })
            .await?;
            assert_eq!(inner, None, "the inner deadline first");
            assert_eq!(start.elapsed(), Duration::from_secs(2));
            let inner = move_on_after(Duration::from_secs(10), async {
                pending::<()>().cancellable().await?;
                Ok::<_, Cancelled>(())
            })
            .await;
            assert!(
                inner.is_err(),
                "then the outer one, passed through the inner"
            );
            inner
        })
    })
    .await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_point_behind_a_combinator_with_its_own_wakers_still_sees_the_deadline() {
    absorbed_after(Duration::from_secs(3), |_start| {
        move_on_after(Duration::from_secs(3), async move {
            let mut points: FuturesUnordered<_> =
                (0..3).map(|_| pending::<()>().cancellable()).collect();
            points.next().await.expect("a point")?;
            Ok::<_, Cancelled>(())
        })
    })
    .await;
}

/// A waiting branch relied on the scope's own poll when the other branch asks for the
/// scope's handle in the same poll (`futures::join!` polls in order): the scope links and
/// polls again at once, so the waiting branch registers with the node and the handle's
/// cancel reaches it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_handle_taken_while_a_branch_waits_cancels_that_branch() {
    absorbed_after(Duration::from_secs(1), |_start| {
        move_on_after(HOUR, async move {
            let (waited, ()) = futures::join!(pending::<()>().cancellable(), async {
                let scope = current_scope().expect("the helper scope");
                tokio::time::sleep(Duration::from_secs(1)).await;
                scope.cancel();
            });
            waited?;
            Ok::<_, Cancelled>(())
        })
    })
    .await;
}

/// The body asks for its scope only in a later poll, while a branch waits without a node:
/// the deadline still fires at its time, on the node it then gets.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_scope_linked_in_a_later_poll_keeps_its_deadline() {
    absorbed_after(Duration::from_secs(3), |start| {
        move_on_after(Duration::from_secs(3), async move {
            let (waited, deadline) = futures::join!(pending::<()>().cancellable(), async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                current_scope().expect("the helper scope").deadline()
            });
            assert_eq!(deadline, Some(start + Duration::from_secs(3)));
            waited?;
            Ok::<_, Cancelled>(())
        })
    })
    .await;
}

/// A nursery child without a scope of its own runs a waiting helper scope: the nursery's
/// cancellation reaches it through the registration on the nursery's scope.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_nurserys_cancel_reaches_a_childs_waiting_helper_scope() {
    common::leak_checked(async {
        let start = Instant::now();
        let told = Arc::new(AtomicBool::new(false));
        let seen = told.clone();
        let out = bounded(nursery(|n| async move {
            n.spawn(async move {
                let out = move_on_after(HOUR, async {
                    sleep(HOUR).await?;
                    Ok::<_, Cancelled>(())
                })
                .await;
                told.store(out.is_err(), Ordering::SeqCst);
                out.map(|_| ())
            });
            tokio::time::sleep(Duration::from_secs(2)).await;
            n.cancel();
            Ok::<_, Cancelled>(())
        }))
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert!(
            seen.load(Ordering::SeqCst),
            "the child saw the nursery's cancellation"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    })
    .await;
}

/// Dropped while it waits: its body is dropped in its scope, and nothing is left behind.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_waiting_helper_scope_dropped_drops_its_body_in_its_scope() {
    common::leak_checked(async {
        struct InScope(Arc<AtomicBool>);
        impl Drop for InScope {
            fn drop(&mut self) {
                let deadline = current_deadline();
                self.0.store(
                    matches!(deadline, EffectiveDeadline::At(_)),
                    Ordering::SeqCst,
                );
            }
        }
        let in_scope = Arc::new(AtomicBool::new(false));
        let guard = InScope(in_scope.clone());
        {
            let mut scope = pin!(move_on_after(HOUR, async move {
                let _guard = guard;
                sleep(HOUR).await?;
                Ok::<_, Cancelled>(())
            }));
            assert!(futures::poll!(scope.as_mut()).is_pending());
        }
        assert!(
            in_scope.load(Ordering::SeqCst),
            "the body saw its deadline when dropped"
        );
        assert_eq!(
            common::alive_tasks(),
            0,
            "no deadline service for a waiting scope"
        );
    })
    .await;
}

/// The same on two workers, without timing: deadlines and an enclosing cancellation reach
/// waiting helper scopes in many tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_helper_scopes_on_two_workers() {
    common::leak_checked(async {
        let deadline = Instant::now() + Duration::from_millis(20);
        let timed: Vec<_> = (0..500)
            .map(|_| {
                tokio::spawn(move_on_at(deadline, async {
                    pending::<()>().cancellable().await?;
                    Ok::<_, Cancelled>(())
                }))
            })
            .collect();
        for task in timed {
            let out = tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("no hang");
            assert_eq!(out.unwrap().unwrap(), None);
        }
        let outer = CancelScope::new();
        let handle = outer.handle();
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            outer.run(async move {
                let waiting = (0..100).map(|_| {
                    move_on_after(HOUR, async {
                        sleep(HOUR).await?;
                        Ok::<_, Cancelled>(())
                    })
                });
                let all = futures::future::join_all(waiting);
                let cancel = async {
                    tokio::task::yield_now().await;
                    std::thread::spawn(move || handle.cancel()).join().unwrap();
                };
                let (outs, ()) = futures::join!(all, cancel);
                assert!(outs.iter().all(Result::is_err), "every one was told");
                outs.into_iter().next().expect("one").map(|_| ())
            }),
        )
        .await
        .expect("no hang");
        assert_eq!(out.unwrap(), None);
    })
    .await;
}

/// Counts the polls of the future it wraps, and fails past a thousand.
struct CountPolls<F> {
    inner: std::pin::Pin<Box<F>>,
    polls: Arc<std::sync::atomic::AtomicUsize>,
}

impl<F: std::future::Future> std::future::Future for CountPolls<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let polls = self.polls.fetch_add(1, Ordering::SeqCst);
        // A spinning scope would keep the paused clock from ever advancing: fail instead.
        assert!(polls < 1000, "polled {polls} times: spinning");
        self.inner.as_mut().poll(cx)
    }
}

/// Review finding: inside a scope that is already cancelled, a helper scope whose body
/// waits on something that is not a cancellation point (cleanup) must wait, not be polled
/// again and again.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_waiting_helper_scope_inside_a_cancelled_scope_does_not_spin() {
    common::leak_checked(async {
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = polls.clone();
        let start = Instant::now();
        let outer = CancelScope::new();
        outer.handle().cancel();
        let out = bounded(outer.run(async move {
            let cleanup = CountPolls {
                inner: Box::pin(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, Cancelled>("cleaned up")
                }),
                polls: counted,
            };
            move_on_after(Duration::from_secs(10), cleanup).await
        }))
        .await;
        assert_eq!(out.unwrap(), Some(Some("cleaned up")));
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        let polls = polls.load(Ordering::SeqCst);
        assert!(polls <= 3, "the body was polled {polls} times");
    })
    .await;
}

/// Review finding: a loop of cancellation points that are ready at once never leaves the
/// scope's poll, so the scope's own timer cannot fire; the points compare the clock
/// themselves (SPEC S6). Real time on two workers; only a hang is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_points_in_a_waiting_helper_scope_meet_its_deadline() {
    common::leak_checked(async {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            move_on_after(Duration::from_millis(20), async {
                tokio::task::yield_now().await;
                loop {
                    std::future::ready(()).cancellable().await?;
                }
                #[allow(unreachable_code)]
                Ok::<(), Cancelled>(())
            }),
        )
        .await
        .expect("the deadline ended the loop");
        assert_eq!(out.unwrap(), None);
    })
    .await;
}

/// Review finding: a waiting helper scope dropped outside any frame (the outermost future of
/// an aborted nursery child) drops its body under the scope it waited in.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_aborted_childs_waiting_helper_scope_drops_its_body_in_the_nurserys_scope() {
    common::leak_checked(async {
        struct SeesCancellation(Arc<AtomicBool>);
        impl Drop for SeesCancellation {
            fn drop(&mut self) {
                self.0.store(is_cancelled(), Ordering::SeqCst);
            }
        }
        let seen = Arc::new(AtomicBool::new(false));
        let guard = SeesCancellation(seen.clone());
        let out = bounded(
            Nursery::new()
                .grace(Duration::from_secs(1))
                .run(|n| async move {
                    n.spawn(move_on_after(HOUR, async move {
                        let _guard = guard;
                        // Not a cancellation point: only the abort after the grace ends it.
                        tokio::time::sleep(HOUR).await;
                        Ok::<_, Cancelled>(())
                    }));
                    tokio::task::yield_now().await;
                    n.cancel();
                    Ok::<_, Cancelled>(())
                }),
        )
        .await;
        assert!(out.is_ok(), "{out:?}");
        assert!(
            seen.load(Ordering::SeqCst),
            "the body's drop code saw the nursery's cancellation"
        );
    })
    .await;
}

/// Scope futures stay `Send` and `Sync` when their body is, as `tokio::time::Timeout` does.
#[test]
fn scope_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    let body = async { Ok::<_, Cancelled>(()) };
    send_sync(&move_on_after(HOUR, body));
    send_sync(&fail_after(HOUR, async { Ok::<_, AppError>(()) }));
    send_sync(&CancelScope::new().run(async { Ok::<_, Cancelled>(()) }));
}
