//! Review of round 21's same-day fixes: `DeadlineHeaders::write_current` keeps a tighter
//! budget the request already carries, `orphan` expires the dropped nursery's grace, and
//! `cancel_with` on every child's handle.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;
use tokio_nursery::{
    CancelReason, CancelScope, Cancelled, DeadlineHeaders, DeadlineSource, Nursery, NurseryHandle,
    cancelled, current_deadline, move_on_after, nursery,
};

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

const GRPC: &str = "grpc-timeout";
const MILLIS: &str = "x-request-timeout-ms";

fn headers_with(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    map
}

fn values(map: &HeaderMap, name: &str) -> Vec<String> {
    map.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// Runs `write_current` on `map` under a `move_on_after(deadline)` scope; returns the
/// result and whether the scope was cancelled afterwards.
async fn under_deadline(
    config: &DeadlineHeaders,
    deadline: Duration,
    map: &mut HeaderMap,
) -> (
    Result<Option<Duration>, tokio_nursery::DeadlinePassed>,
    bool,
) {
    let out = move_on_after(deadline, async {
        let result = config.write_current(map);
        Ok::<_, Cancelled>((result, tokio_nursery::is_cancelled()))
    })
    .await
    .unwrap();
    out.expect("the scope's body returned")
}

// ---------------------------------------------------------------------------------------
// 1. write_current keeps a tighter budget

#[tokio::test(start_paused = true)]
async fn both_headers_with_different_values_the_smallest_goes_into_both() {
    let config = DeadlineHeaders::new();
    let mut map = headers_with(&[(GRPC, "300m"), (MILLIS, "200")]);
    let (result, cancelled) = under_deadline(&config, Duration::from_secs(10), &mut map).await;
    assert_eq!(result.unwrap(), Some(ms(200)));
    assert!(!cancelled);
    assert_eq!(values(&map, MILLIS), ["200"]);
    let read = config.read(&map).unwrap().unwrap();
    assert_eq!(read.budget(), ms(200));
}

#[tokio::test(start_paused = true)]
async fn several_values_of_one_header_the_smallest_is_written_once() {
    let config = DeadlineHeaders::new();
    let mut map = headers_with(&[(MILLIS, "900"), (MILLIS, "150"), (MILLIS, "400")]);
    let (result, _) = under_deadline(&config, Duration::from_secs(10), &mut map).await;
    assert_eq!(result.unwrap(), Some(ms(150)));
    assert_eq!(values(&map, MILLIS), ["150"]);
    assert_eq!(values(&map, GRPC).len(), 1);
    assert_eq!(config.read(&map).unwrap().unwrap().budget(), ms(150));
}

#[tokio::test(start_paused = true)]
async fn grpc_only_config_keeps_a_tighter_grpc_value_and_leaves_the_millis_header_alone() {
    let config = DeadlineHeaders::new().millis_header(None);
    let mut map = headers_with(&[(GRPC, "250m"), (MILLIS, "5")]);
    let (result, _) = under_deadline(&config, Duration::from_secs(10), &mut map).await;
    assert_eq!(result.unwrap(), Some(ms(250)));
    // The millis header is neither read (5 ms is not taken) nor written.
    assert_eq!(values(&map, MILLIS), ["5"]);
    assert_eq!(config.read(&map).unwrap().unwrap().budget(), ms(250));
}

#[tokio::test(start_paused = true)]
async fn millis_only_config_keeps_a_tighter_millis_value() {
    let config = DeadlineHeaders::new().grpc_timeout(false);
    let mut map = headers_with(&[(GRPC, "1m"), (MILLIS, "300")]);
    let (result, _) = under_deadline(&config, Duration::from_secs(10), &mut map).await;
    assert_eq!(result.unwrap(), Some(ms(300)));
    assert_eq!(values(&map, MILLIS), ["300"]);
    assert_eq!(
        values(&map, GRPC),
        ["1m"],
        "a disabled header is not touched"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hand_set_budget_equal_to_the_remaining_one_is_the_deadline() {
    let config = DeadlineHeaders::new();
    let mut map = headers_with(&[(MILLIS, "2000")]);
    let (result, _) = under_deadline(&config, Duration::from_secs(2), &mut map).await;
    assert_eq!(result.unwrap(), Some(Duration::from_secs(2)));
    assert_eq!(values(&map, MILLIS), ["2000"]);
    assert_eq!(values(&map, GRPC), ["2000000u"]);
}

#[tokio::test(start_paused = true)]
async fn a_looser_hand_set_budget_is_replaced_by_the_deadline() {
    let config = DeadlineHeaders::new();
    let mut map = headers_with(&[(MILLIS, "99999"), (GRPC, "1H")]);
    let (result, _) = under_deadline(&config, Duration::from_secs(2), &mut map).await;
    assert_eq!(result.unwrap(), Some(Duration::from_secs(2)));
    assert_eq!(values(&map, MILLIS), ["2000"]);
}

/// A hand-set budget above the read cap, under an even longer deadline: written as it is
/// (the cap is the reader's; the callee clamps it again).
#[tokio::test(start_paused = true)]
async fn a_hand_set_budget_above_the_cap_is_written_uncapped() {
    let config = DeadlineHeaders::new().cap(Duration::from_secs(60));
    let mut map = headers_with(&[(MILLIS, "7200000")]); // 2 h
    let (result, _) = under_deadline(&config, Duration::from_secs(3 * 3600), &mut map).await;
    assert_eq!(result.unwrap(), Some(Duration::from_secs(7200)));
    assert_eq!(values(&map, MILLIS), ["7200000"]);
    let read = config.read(&map).unwrap().unwrap();
    assert!(read.clamped());
    assert_eq!(read.budget(), Duration::from_secs(60));
}

/// The largest grpc value there is (99999999 hours), under an unbounded-ish deadline.
#[tokio::test(start_paused = true)]
async fn a_huge_hand_set_budget_does_not_panic() {
    let config = DeadlineHeaders::new();
    let mut map = headers_with(&[(GRPC, "99999999H")]);
    let (result, cancelled) = under_deadline(&config, Duration::from_secs(10), &mut map).await;
    assert_eq!(result.unwrap(), Some(Duration::from_secs(10)));
    assert!(!cancelled);
}

#[tokio::test(start_paused = true)]
async fn a_hand_set_zero_fails_without_cancelling_the_callers_scope() {
    let config = DeadlineHeaders::new();
    for zero in [(MILLIS, "0"), (GRPC, "0S")] {
        let mut map = headers_with(&[zero]);
        let now = Instant::now();
        let (result, cancelled) = under_deadline(&config, Duration::from_secs(10), &mut map).await;
        let passed = result.unwrap_err();
        assert!(passed.cancelled().is_none());
        // The header's own deadline: "now".
        assert_eq!(passed.deadline(), Some(now));
        assert!(!cancelled, "the caller's scope is not cancelled");
        assert!(map.is_empty(), "nothing is sent: {map:?}");
    }
}

/// 500 µs in grpc: not zero, but the millis header would carry 0. The caller's scope has
/// 10 s left and is not cancelled; the request is not sent.
#[tokio::test(start_paused = true)]
async fn a_sub_millisecond_hand_set_budget_with_the_millis_header() {
    let config = DeadlineHeaders::new();
    let mut map = headers_with(&[(GRPC, "500u")]);
    let (result, cancelled) = under_deadline(&config, Duration::from_secs(10), &mut map).await;
    let passed = result.unwrap_err();
    assert!(passed.cancelled().is_none());
    assert!(!cancelled);
    // With gRPC only, it goes out as it is.
    let grpc_only = DeadlineHeaders::new().millis_header(None);
    let mut map = headers_with(&[(GRPC, "500u")]);
    let (result, _) = under_deadline(&grpc_only, Duration::from_secs(10), &mut map).await;
    assert_eq!(result.unwrap(), Some(Duration::from_micros(500)));
    assert_eq!(
        grpc_only.read(&map).unwrap().unwrap().budget(),
        Duration::from_micros(500)
    );
}

#[tokio::test(start_paused = true)]
async fn in_a_shield_inside_a_deadline_the_headers_are_removed() {
    let config = DeadlineHeaders::new();
    let mut map = headers_with(&[(MILLIS, "100"), (GRPC, "100m")]);
    let mut written = None;
    let _ = move_on_after(Duration::from_secs(10), async {
        let _ = CancelScope::new()
            .shielded()
            .run(async {
                written = Some(config.write_current(&mut map));
                Ok::<_, Cancelled>(())
            })
            .await;
        Ok::<_, Cancelled>(())
    })
    .await;
    assert_eq!(written.unwrap().unwrap(), None);
    assert!(map.is_empty());
}

/// A proxy forwards the request it read (its header still there) under the deadline read
/// from it, some time later: the remaining time goes on, not the stale header.
#[tokio::test(start_paused = true)]
async fn a_forwarded_request_carries_the_remaining_time_not_its_stale_header() {
    let config = DeadlineHeaders::new();
    let mut map = headers_with(&[(GRPC, "1S"), (MILLIS, "900")]);
    let incoming = config.read(&map).unwrap().unwrap();
    assert_eq!(incoming.source(), DeadlineSource::Millis);
    let out = tokio_nursery::move_on_at(incoming.deadline(), async {
        tokio::time::sleep(ms(300)).await;
        Ok::<_, Cancelled>(config.write_current(&mut map))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.unwrap(), Some(ms(600)));
    assert_eq!(values(&map, MILLIS), ["600"]);
}

/// The docs: "the smallest well-formed value of the enabled headers" is kept; "a malformed
/// value counts as none: the write replaces it".
// Found by this review, fixed in session 21. Expected the well-formed 100 ms in the millis
// header to be kept (written into both headers) when grpc-timeout holds a malformed value;
// actual: the 10 s deadline is written, the hand-set 100 ms is lost. `tighter_budget_in`
// (src/headers.rs:723) takes `self.smallest_budget(headers).ok()??`, and `smallest_budget`
// (src/headers.rs:782-813) fails as a whole at the first malformed value (`?`), so one bad
// value hides every good one.
#[tokio::test(start_paused = true)]
async fn a_malformed_value_does_not_hide_a_tighter_well_formed_one() {
    let config = DeadlineHeaders::new();
    let mut map = headers_with(&[(GRPC, "soon"), (MILLIS, "100")]);
    let (result, _) = under_deadline(&config, Duration::from_secs(10), &mut map).await;
    assert_eq!(values(&map, MILLIS), ["100"]);
    assert_eq!(result.unwrap(), Some(ms(100)));
}

/// On the real clock, a hand-set budget goes out as it was set.
// Found by this review, fixed in session 21. Expected a hand-set `x-request-timeout-ms: 5`
// under a 10 s deadline to be sent as `5`; actual: `4` (and grpc-timeout a few µs under 5 ms).
// `write_current` (src/headers.rs:635-636) turns the budget into an instant
// (`later(Instant::now(), budget)`) and `write` (src/headers.rs:691) measures it again with a
// later `Instant::now()`, so the time between the two calls is lost and the millis value rounds
// down; each hop shaves off a millisecond.
#[tokio::test]
async fn a_hand_set_budget_is_sent_as_set_on_the_real_clock() {
    let config = DeadlineHeaders::new();
    let mut map = headers_with(&[(MILLIS, "5")]);
    let (result, _) = under_deadline(&config, Duration::from_secs(10), &mut map).await;
    assert_eq!(values(&map, MILLIS), ["5"]);
    assert_eq!(result.unwrap(), Some(ms(5)));
}

// Found by this review, fixed in session 21. Expected a hand-set `x-request-timeout-ms: 1` (a
// valid, non-zero per-call timeout) under a 10 s deadline to be sent; actual:
// `Err(DeadlinePassed)`, nothing sent, as if the caller had set 0. Same cause as above
// (src/headers.rs:635-636 then :691): 1 ms minus the nanoseconds between two `Instant::now()`
// calls is under a millisecond, which `write` refuses.
#[tokio::test]
async fn a_hand_set_one_millisecond_is_sent_on_the_real_clock() {
    let config = DeadlineHeaders::new();
    let mut map = headers_with(&[(MILLIS, "1")]);
    let (result, cancelled) = under_deadline(&config, Duration::from_secs(10), &mut map).await;
    assert!(!cancelled);
    assert_eq!(result.unwrap(), Some(ms(1)));
    assert_eq!(values(&map, MILLIS), ["1"]);
}

#[tokio::test(start_paused = true)]
async fn propagate_deadline_keeps_a_tighter_hand_set_budget() {
    let mut request = http::Request::builder()
        .header(MILLIS, "50")
        .body(())
        .unwrap();
    let out = move_on_after(Duration::from_secs(5), async {
        assert!(matches!(
            current_deadline(),
            tokio_nursery::EffectiveDeadline::At(_)
        ));
        Ok::<_, Cancelled>(tokio_nursery::propagate_deadline(&mut request))
    })
    .await
    .unwrap()
    .unwrap();
    assert!(out.is_ok());
    assert_eq!(values(request.headers(), MILLIS), ["50"]);
}

// ---------------------------------------------------------------------------------------
// 4. cancel_with

fn message(reason: &CancelReason) -> String {
    match reason {
        CancelReason::Explicit(Some(_)) => reason.message().unwrap_or("(data)").to_string(),
        other => format!("{other:?}"),
    }
}

/// What the child's cancellation point reports.
async fn reason_seen() -> Result<String, Cancelled> {
    let why = cancelled().await;
    Ok(message(why.reason()))
}

#[tokio::test(start_paused = true)]
async fn a_later_cancel_with_does_not_replace_a_cancel() {
    common::leak_checked(async move {
        let out = nursery(|n: NurseryHandle<Cancelled>| async move {
            let a = n.spawn(reason_seen());
            a.cancel();
            a.cancel_with("late");
            let b = n.spawn(reason_seen());
            b.cancel_with("first");
            b.cancel_with("second");
            let a = common::nursery::how_it_ended(a).await.unwrap();
            let b = common::nursery::how_it_ended(b).await.unwrap();
            Ok((a, b))
        })
        .await;
        let (a, b) = out.unwrap().unwrap();
        assert_eq!(a, format!("{:?}", CancelReason::Explicit(None)));
        assert_eq!(b, "first");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_cancel_with_after_a_nursery_wide_cancel_does_not_replace_its_reason() {
    common::leak_checked(async move {
        let seen = Arc::new(Mutex::new(None));
        let keep = seen.clone();
        let out = nursery(|n: NurseryHandle<Cancelled>| async move {
            let child = n.spawn(async move {
                let s = reason_seen().await?;
                *keep.lock().unwrap() = Some(s);
                Ok(())
            });
            n.cancel();
            child.cancel_with("late");
            Ok(())
        })
        .await;
        assert!(out.is_ok(), "{out:?}");
        let seen = seen.lock().unwrap().clone().unwrap();
        assert_ne!(seen, "late", "the nursery's cancel came first");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn cancel_with_on_a_finished_child_is_a_no_op() {
    common::leak_checked(async move {
        let out = nursery(|n: NurseryHandle<Cancelled>| async move {
            let child = n.spawn(async { Ok(7) });
            common::nursery::settle().await;
            assert!(child.is_finished());
            child.cancel_with("too late");
            let value = common::nursery::how_it_ended(child).await.unwrap();
            assert!(!n.scope().is_cancelled());
            Ok(value)
        })
        .await;
        assert_eq!(out.unwrap(), Some(7));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_with_reaches_a_blocking_child() {
    let out = common::nursery::bounded(nursery(|n: NurseryHandle<Cancelled>| async move {
        let child = n.spawn_blocking(|ctx| {
            loop {
                if let Err(why) = ctx.check() {
                    return Ok(message(why.reason()));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        child.cancel_with("stop blocking");
        Ok(common::nursery::how_it_ended(child).await.unwrap())
    }))
    .await;
    assert_eq!(out.unwrap(), Some("stop blocking".to_string()));
}

/// DESIGN.md:656-657: a child cancelled while it waits for a slot "ends as cancelled
/// without running": it never reads the data `cancel_with` gave (not said in its docs).
#[tokio::test(start_paused = true)]
async fn cancel_with_on_a_child_waiting_for_a_slot_ends_it_without_running() {
    common::leak_checked(async move {
        let out = Nursery::new()
            .limit(1)
            .run(|n: NurseryHandle<Cancelled>| async move {
                let first = n.spawn(async {
                    tokio::time::sleep(ms(100)).await;
                    Ok("first".to_string())
                });
                let waiting = n.spawn(reason_seen());
                waiting.cancel_with("queued");
                let first = common::nursery::how_it_ended(first).await.unwrap();
                let waiting = common::nursery::how_it_ended(waiting).await;
                Ok((first, waiting))
            })
            .await;
        let (first, waiting) = out.unwrap().unwrap();
        assert_eq!(first, "first");
        assert!(
            matches!(waiting, Err(tokio_nursery::JoinError::ChildCancelled)),
            "{waiting:?}"
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_collected_childs_first_reason_wins() {
    common::leak_checked(async move {
        let out = nursery(|n: NurseryHandle<Cancelled>| async move {
            let mut set = n.collector::<String>();
            let control = set.spawn(reason_seen());
            control.cancel_with("one");
            control.cancel_with("two");
            control.cancel();
            let (_, outcome) = set.join_next().await.unwrap();
            Ok(outcome.unwrap())
        })
        .await;
        assert_eq!(out.unwrap(), Some("one".to_string()));
    })
    .await
}

// ---------------------------------------------------------------------------------------
// 3. orphan: a nursery dropped in wait mode under an adopter past its grace

/// As `a_nursery_dropped_under_an_adopter_past_its_grace_keeps_its_tree` in
/// review_round21_diff.rs, with a blocking child: it cannot be aborted, it is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_nursery_under_an_adopter_past_its_grace_with_a_blocking_child() {
    let told = Arc::new(Mutex::new(None::<String>));
    let keep_told = told.clone();
    let out = common::nursery::bounded(async move {
        let mut inner_handle = None;
        let outer = Nursery::new()
            .grace(ms(100))
            .run(|n: NurseryHandle<Cancelled>| {
                let keep = &mut inner_handle;
                async move {
                    n.cancel();
                    let kept = CancelScope::new()
                        .shielded()
                        .run(async move {
                            let (tx, rx) = tokio::sync::oneshot::channel();
                            let inner = Nursery::new()
                                .name("inner")
                                .grace(Duration::from_secs(3600))
                                .run(|m: NurseryHandle<Cancelled>| {
                                    let _ = tx.send(m.clone());
                                    async move {
                                        m.spawn_blocking_named("blocker", move |ctx| {
                                            let start = std::time::Instant::now();
                                            while start.elapsed() < Duration::from_secs(5) {
                                                if let Err(why) = ctx.check() {
                                                    *keep_told.lock().unwrap() =
                                                        Some(format!("{:?}", why.reason()));
                                                    return Err(why);
                                                }
                                                std::thread::sleep(ms(1));
                                            }
                                            Ok(())
                                        });
                                        common::nursery::sleep_forever::<Cancelled>().await
                                    }
                                });
                            let _ = tokio::time::timeout(ms(300), inner).await;
                            Ok::<_, Cancelled>(rx.await.unwrap())
                        })
                        .await
                        .unwrap()
                        .unwrap();
                    *keep = Some(kept);
                    Ok(())
                }
            })
            .await;
        (outer, inner_handle.unwrap())
    })
    .await;
    let (outer, inner) = out;
    assert_eq!(outer.unwrap(), Some(()));
    // Told first by the drop of its nursery's future (wait mode), before the grace's cascade.
    let told = told
        .lock()
        .unwrap()
        .clone()
        .expect("the blocking child was told");
    assert!(told.contains("dropped"), "{told}");
    assert!(
        inner
            .aborted_children()
            .iter()
            .any(|a| a.contains("blocker")),
        "names: {:?}",
        inner.aborted_children()
    );
}

/// The adopter's grace ran out (its warning named what it aborted then) before the inner
/// nursery was dropped: the dropped nursery's `legacy` child is aborted by `orphan`.
/// Returns the inner handle and the events.
fn orphaned_under_an_expired_adopter() -> (NurseryHandle<Cancelled>, Vec<String>) {
    let inner_handle = Arc::new(Mutex::new(None));
    let keep = inner_handle.clone();
    let events = common::events::recording(async move {
        let outer = Nursery::new()
            .name("outer")
            .grace(ms(100))
            .run(|n: NurseryHandle<Cancelled>| async move {
                n.spawn_named("outer-legacy", async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok::<_, Cancelled>(())
                });
                n.cancel();
                let kept = CancelScope::new()
                    .shielded()
                    .run(async move {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        let inner = Nursery::new()
                            .name("inner")
                            .grace(Duration::from_secs(3600))
                            .keep_tree_at_grace_expiry()
                            .run(|m: NurseryHandle<Cancelled>| {
                                let _ = tx.send(m.clone());
                                async move {
                                    m.spawn_named("legacy", async {
                                        tokio::time::sleep(Duration::from_secs(3600)).await;
                                        Ok::<_, Cancelled>(())
                                    });
                                    common::nursery::sleep_forever::<Cancelled>().await
                                }
                            });
                        let _ = tokio::time::timeout(ms(200), inner).await;
                        Ok::<_, Cancelled>(rx.await.unwrap())
                    })
                    .await
                    .unwrap()
                    .unwrap();
                *keep.lock().unwrap() = Some(kept);
                Ok(())
            })
            .await;
        assert_eq!(outer.unwrap(), Some(()));
    });
    let inner = inner_handle.lock().unwrap().take().unwrap();
    (inner, events)
}

#[test]
fn an_orphaned_nursery_past_its_adopters_grace_names_its_children_and_is_past_grace() {
    let (inner, _events) = orphaned_under_an_expired_adopter();
    assert!(
        inner
            .aborted_children()
            .iter()
            .any(|a| a.contains("legacy")),
        "{:?}",
        inner.aborted_children()
    );
    let tree = inner.tree_at_grace_expiry().expect("kept").to_string();
    assert!(tree.contains("legacy"), "{tree}");
}

/// Some warn-level event names each child a grace period aborted (N7): the adopter's
/// warning came at 100 ms, before `inner` was adopted (200 ms); `orphan` calls
/// `expire_grace(false)`, "for a nursery reached by an ancestor's cascade, whose own event
/// names these children already", which is not the case here.
// Found by this review, fixed in session 21. Expected a warn-level "grace period expired" event
// naming `legacy` (aborted by the grace of `outer`, at the drop of `inner` at 200 ms); actual:
// the only grace warning is `outer`'s at 100 ms naming `outer-legacy`; `legacy` is aborted
// silently. src/nursery/mod.rs:2047 passes `warn: false` to `expire_grace`, whose doc
// (src/nursery/mod.rs:940-941) reserves it for children an ancestor's event already named.
#[test]
fn an_orphaned_nursery_aborted_past_its_adopters_grace_is_named_in_a_warning() {
    let (_inner, events) = orphaned_under_an_expired_adopter();
    let warns: Vec<&String> = events
        .iter()
        .filter(|e| e.starts_with("WARN") && e.contains("grace period expired"))
        .collect();
    assert!(
        warns.iter().any(|e| e.contains("outer-legacy")),
        "{events:#?}"
    );
    assert!(
        warns
            .iter()
            .any(|e| e.contains("\"legacy") || e.contains(" legacy") || e.contains("=legacy")),
        "no warning names `legacy`: {warns:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Root: a second signal names `main` only while it still runs

#[cfg(all(unix, feature = "signal"))]
static ONE_ROOT: Mutex<()> = Mutex::new(());

#[cfg(all(unix, feature = "signal"))]
type Reports = Arc<Mutex<Vec<(Vec<String>, bool, String)>>>;

#[cfg(all(unix, feature = "signal"))]
fn reports_of(reports: &Reports) -> impl Fn(&tokio_nursery::Report<'_>) + Send + Sync + 'static {
    let reports = reports.clone();
    move |report| {
        if let tokio_nursery::Report::ShutdownCutShort {
            aborted,
            second_signal,
            ..
        } = report
        {
            reports
                .lock()
                .unwrap()
                .push((aborted.to_vec(), *second_signal, report.to_string()));
        }
    }
}

/// `main` returned after the first signal; a child ignores the shutdown; the second signal
/// cuts the child short: `main` is not named (it was not cut).
#[cfg(all(unix, feature = "signal"))]
#[test]
fn a_second_signal_after_main_returned_does_not_name_main() {
    let _one = ONE_ROOT.lock().unwrap_or_else(|e| e.into_inner());
    let reports = Reports::default();
    let hook = reports_of(&reports);
    let out = common::nursery::within_hang_bound(move || {
        tokio_nursery::Root::new()
            .current_thread()
            .handle_signals(true)
            .grace(Duration::from_secs(30))
            .shutdown_bound(Duration::ZERO)
            .on_report(hook)
            .run(|n: NurseryHandle<Cancelled>| async move {
                n.spawn_named("stuck", async {
                    tokio::time::sleep(ms(50)).await;
                    common::nursery::signal_self("INT");
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok::<_, Cancelled>(())
                });
                tokio::task::yield_now().await;
                common::nursery::signal_self("TERM");
                let _ = cancelled().await;
                Ok::<_, Cancelled>(())
            })
    });
    assert!(out.is_err(), "{out:?}");
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let (aborted, second, text) = &reports[0];
    assert!(*second, "{text}");
    assert!(aborted.iter().any(|a| a.contains("stuck")), "{aborted:?}");
    assert!(
        !aborted.iter().any(|a| a == "main"),
        "main had returned: {text}"
    );
}
