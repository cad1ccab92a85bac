//! Regression tests for session 11's review of the cancel-scope core (SPEC S3, S4, S5,
//! S12, R3, D1): each fails on the code before its fix.

mod common;

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_nursery::{
    CancelScope, Cancelled, Carried, ScopeId, cancelled, carry_scope, check_cancelled,
    current_scope, is_cancelled, move_on_after, move_on_at, sleep, sleep_until,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A carried future whose scope ended while it inherited a cancellation: `is_cancelled()`
/// says true (DESIGN invariant 7, "keeps the cancellation it had"), so every cancellation
/// point must report it (S3). `Node::origin` stops at the ended node (its parent was taken
/// at `end`) and finds no scope cancelled itself, so `check_cancelled` says Ok and
/// `cancelled()` never completes.
#[tokio::test(start_paused = true)]
async fn ended_scope_inherited_cancellation_is_reported_by_points() {
    common::leak_checked(async move {
        let (outer_id, carried) = carried_from_an_ended_inheriting_scope(async {
            let flag = is_cancelled();
            let checked = check_cancelled();
            let waited = tokio::time::timeout(ms(10), cancelled()).await;
            (flag, checked, waited)
        })
        .await;
        let (flag, checked, waited) = carried.await;
        assert!(flag, "is_cancelled() sees the kept cancellation");
        let checked = checked.expect_err("check_cancelled must report what is_cancelled sees");
        assert_eq!(checked.scope(), outer_id);
        assert!(waited.is_ok(), "cancelled() must complete at once");
    })
    .await
}

/// Trio: a deadline and a sleep ending at the same instant: the deadline wins (Trio expires
/// deadlines before running tasks), so the scope absorbs and the code after the sleep never
/// runs. A helper scope without a node gets this right (it polls its own timer before the
/// body); a scope with a node (a `CancelScope`, or the same helper once a handle was taken)
/// only learns of its deadline when the deadline service task runs, which on current_thread
/// is after the body's task: the sleep returns `Ok` and the body goes on.
#[tokio::test(start_paused = true)]
async fn a_deadline_wins_a_tie_with_a_sleep_whether_or_not_the_scope_has_a_node() {
    common::leak_checked(async move {
        let t = Instant::now() + ms(10);
        let out = CancelScope::new()
            .with_deadline(t)
            .run(async move {
                sleep_until(t).await?;
                Ok::<_, Cancelled>("after the sleep")
            })
            .await;
        let helper = move_on_at(t, async move {
            sleep_until(t).await?;
            Ok::<_, Cancelled>("after the sleep")
        })
        .await;
        // The same helper scope, given a node by taking a handle (the sleep won there).
        let linked_helper = move_on_at(t + ms(10), async move {
            let _ = current_scope();
            sleep_until(t + ms(10)).await?;
            Ok::<_, Cancelled>("after the sleep")
        })
        .await;
        assert_eq!(helper.unwrap(), None, "helper scope without a node");
        assert_eq!(linked_helper.unwrap(), None, "helper scope with a node");
        assert_eq!(out.unwrap(), None, "CancelScope");
    })
    .await
}

/// `Frame::expire_deadline` (write_current with under a millisecond left) marks a helper
/// scope without a node expired, but a node made for it afterwards is built from its
/// deadline alone (still ahead): the scope's own cancellation reverts (S3), and the echo
/// `write_current` handed out becomes a stray `Cancelled` the scope does not absorb.
#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn expired_helper_stays_cancelled_once_it_gets_a_node() {
    common::leak_checked(async move {
        let at = Instant::now() + Duration::from_micros(500);
        let out = move_on_at(at, async {
            let mut headers = http::HeaderMap::new();
            let passed = tokio_nursery::DeadlineHeaders::new()
                .write_current(&mut headers)
                .expect_err("under a millisecond left");
            let echo = passed
                .cancelled()
                .cloned()
                .expect("an echo of the scope's expiry");
            assert!(is_cancelled());
            let _ = current_scope(); // gives the scope a node
            assert!(is_cancelled(), "the scope's own cancellation reverted");
            Err::<(), _>(echo)
        })
        .await;
        assert!(
            matches!(out, Ok(None)),
            "the echo must be absorbed: {out:?}"
        );
    })
    .await
}

/// A hard scope entered under a scope that ended with an inherited cancellation (here in a
/// carried future): it is effectively cancelled, but `Node::origin` finds no origin, so
/// `dropped_exit` says "a shield went up" and `wait_hard` wakes the task again at once:
/// the body is polled for ever (a livelock: 100% CPU, the paused clock never advances).
#[tokio::test(start_paused = true)]
async fn hard_scope_under_ended_inherited_scope_does_not_spin() {
    common::leak_checked(async move {
        let (outer_id, carried) = carried_from_an_ended_inheriting_scope(async {
            let polls = std::sync::atomic::AtomicUsize::new(0);
            CancelScope::new()
                .hard()
                .run(std::future::poll_fn(|_| {
                    let n = polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    assert!(n < 100, "the hard scope polls its body for ever");
                    std::task::Poll::<Result<(), Cancelled>>::Pending
                }))
                .await
        })
        .await;
        let out = carried.await;
        let cancelled = out.expect_err("the hard scope drops its body and passes the cancellation");
        assert_eq!(cancelled.scope(), outer_id);
    })
    .await
}

/// `future`, carried out of a scope that ended while it inherited its parent's cancellation
/// (it keeps it: DESIGN invariant 7), with the id of that parent.
async fn carried_from_an_ended_inheriting_scope<F: Future>(future: F) -> (ScopeId, Carried<F>) {
    let outer = CancelScope::new();
    let outer_handle = outer.handle();
    let outer_id = outer_handle.id();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let _ = outer
        .run(async move {
            let carried = CancelScope::new()
                .run(async move {
                    outer_handle.cancel();
                    Ok::<_, Cancelled>(carry_scope(future))
                })
                .await;
            tx.send(carried).ok();
            Ok::<_, Cancelled>(())
        })
        .await;
    (outer_id, rx.await.unwrap().unwrap().unwrap())
}

/// Two nested helper scopes waiting without a node, both deadlines passed on the clock
/// before the outer one's timer was polled (a body busy past both, or the paused clock moved
/// in one step): a waiting point must name the outermost cancelled scope (S4). The inner
/// one re-reads the clock (`expired_now`) and short-circuits `is_cancelled_here`, so the
/// outer one's cached `expired == Some(false)` is never refreshed and `Frame::origin`
/// (which reads `expired()`, the cache) names the inner scope.
#[tokio::test(start_paused = true)]
async fn waiting_point_names_the_outermost_of_two_passed_helper_deadlines() {
    common::leak_checked(async move {
        let out = move_on_after(ms(10), async {
            let inner = move_on_after(ms(20), async {
                tokio::task::yield_now().await; // both scopes now wait without a node
                // The clock jumps past both deadlines within this poll (as a body busy for
                // 30 ms on a real clock would see it).
                let advance = std::pin::pin!(tokio::time::advance(ms(30)));
                let _ = futures::poll!(advance);
                let seen = sleep(ms(1000)).await.expect_err("both deadlines passed");
                Err::<(), _>(seen)
            })
            .await;
            let in_inner = inner.expect_err("the inner scope must pass the cancellation outward");
            // A point in the outer scope names the outer scope (its id, without linking it).
            let in_outer = sleep(ms(1000))
                .await
                .expect_err("the outer deadline passed");
            assert_eq!(
                in_inner.scope(),
                in_outer.scope(),
                "the point in the inner scope must name the outermost cancelled scope"
            );
            Err::<(), _>(in_inner)
        })
        .await;
        assert!(matches!(out, Ok(None)));
    })
    .await
}

struct PanicOnDrop;
impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("drop code panicked");
        }
    }
}

/// A scope future dropped while its body's drop code panics: `end_on_drop` unwinds before
/// `node.end`, so the node stays linked under its parent and its deadline stays armed (the
/// deadline service task lives on for an hour: SPEC R3).
#[tokio::test(start_paused = true)]
async fn scope_dropped_with_panicking_body_drop_ends_its_node() {
    common::leak_checked(async move {
        let scope = CancelScope::new().with_timeout(Duration::from_secs(3600));
        let handle = scope.handle();
        let mut fut = Box::pin(scope.run(async {
            let _guard = PanicOnDrop;
            std::future::pending::<()>().await;
            Ok::<(), Cancelled>(())
        }));
        assert!(futures::poll!(fut.as_mut()).is_pending());
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(fut)));
        assert!(dropped.is_err());
        assert!(handle.deadline().is_some());
        // leak_checked: the deadline service must have nothing left to serve.
    })
    .await
}
