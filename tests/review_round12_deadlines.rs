//! Round 12 review: deadlines across processes, deadlines in scopes, cancel-correctness tools.
#![cfg(all(feature = "http", feature = "tower", feature = "tokio-util"))]
#![allow(clippy::all)]

use std::future::Future;
use std::io;
use std::time::Duration;

use http::Request;
use tokio::time::Instant;
use tokio_nursery::*;

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), f)
        .await
        .expect("hang")
}

/// A deadline 1 s ahead, and two scopes with it (to nest).
fn two_scopes_sharing_a_deadline() -> (Instant, CancelScope, CancelScope) {
    let d = Instant::now() + Duration::from_secs(1);
    (
        d,
        CancelScope::new().with_deadline(d),
        CancelScope::new().with_deadline(d),
    )
}

/// Control for the next test: two nested linked scopes with the same deadline, expired by
/// the service: the outer absorbs (SPEC S9).
#[tokio::test(start_paused = true)]
async fn control_a_shared_deadline_fired_by_the_service_is_absorbed_by_the_outer_scope() {
    let (_, outer, inner) = two_scopes_sharing_a_deadline();
    let (oh, ih) = (outer.handle(), inner.handle());
    let out = bounded(outer.run(async move {
        let r = inner
            .run(async {
                sleep(Duration::from_secs(5)).await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert!(r.is_err(), "inner passes the cancellation outward: {r:?}");
        r
    }))
    .await;
    assert!(matches!(out, Ok(None)));
    assert!(oh.cancelled_caught());
    assert!(!ih.cancelled_caught());
}

/// Two nested linked scopes with the same deadline, which has passed on the clock when the
/// body writes the outgoing headers (before the service fired it): until session 12
/// `write_current` expired only the innermost scope with that deadline, which then
/// absorbed; the outer one, whose deadline has passed just as much, absorbs (SPEC S9, as
/// when the service fires both).
#[tokio::test(start_paused = true)]
async fn d1_write_current_at_a_shared_passed_deadline_lets_the_outer_scope_absorb() {
    let (d, outer, inner) = two_scopes_sharing_a_deadline();
    let (oh, ih) = (outer.handle(), inner.handle());
    let out = bounded(outer.run(async move {
        let r = inner
            .run(async {
                // A plain tokio sleep: the body is polled at `d`, before the service's task.
                tokio::time::sleep_until(d).await;
                let mut request = Request::new(());
                propagate_deadline(&mut request).map_err(io::Error::from)?;
                Ok::<_, io::Error>("sent")
            })
            .await;
        // The inner scope passes the echo outward; the outer one absorbs it.
        r.map(|sent| sent.map(|_| ()))
    }))
    .await;
    assert!(
        matches!(out, Ok(None)),
        "the outer scope, whose deadline passed too, absorbs: {out:?}"
    );
    assert!(oh.cancelled_caught(), "outer caught");
    assert!(!ih.cancelled_caught(), "inner passes it outward");
}

/// `carry_scope` called outside every scope has no scope to carry: as its docs say (since
/// session 12; they said "none outside a scope" before, which read as "outside every scope
/// wherever it is polled"), the future then runs in whatever scope polls it, as an
/// unwrapped one does.
#[tokio::test(start_paused = true)]
async fn s14_a_future_carried_from_outside_every_scope_runs_in_the_scope_that_polls_it() {
    let carried = carry_scope(async {
        (
            is_cancelled(),
            current_deadline(),
            current_scope().is_some(),
        )
    });
    let scope = CancelScope::new().with_timeout(Duration::from_secs(5));
    scope.handle().cancel();
    let seen = bounded(scope.run(async move { Ok::<_, Cancelled>(carried.await) }))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, (true, EffectiveDeadline::Passed, true));
}
