//! Tests per SPEC line for cancel scopes and deadlines (SPEC S1-S13, S15), plus R3 for the
//! deadline service.
//!
//! Clauses that need nurseries (S1's child tasks, S4's sibling-failed / shutdown /
//! grace-expired reasons, S11's joining a child, S12's last sentence, S15 for children's
//! errors) are tested with the nursery.
//!
//! Timing tests run on current_thread under tokio's paused clock and assert exact instants
//! (millisecond-aligned). Multi-thread tests check the same semantics without depending on
//! timing: explicit cancels, far-apart deadlines, spinning on flags with a hang bound only.

mod common;

use common::AppError;

use std::error::Error;
use std::fmt;
use std::future::{Future, pending};
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use common::{
    DEFAULT_STACK, HANG_BOUND, LiveFutures, alive_tasks, on_thread, settle_tasks, wait_until,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_nursery::{
    CancelError, CancelReason, CancelScope, CancellableExt, Cancelled, EffectiveDeadline,
    ScopeHandle, TimedOut, cancelled, carry_scope, check_cancelled, checkpoint, current_deadline,
    current_scope, fail_after, fail_at, is_cancelled, move_on_after, move_on_at, sleep,
    sleep_until,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const HOUR: Duration = Duration::from_secs(3600);

/// Spawns a task that calls `action` at `at` (tokio's clock).
fn at(at: Instant, action: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep_until(at).await;
        action();
    })
}

/// The scope a cancellation point here would name, and its reason's message.
fn here() -> Cancelled {
    check_cancelled().expect_err("expected the current scope to be cancelled")
}

fn id_here() -> tokio_nursery::ScopeId {
    current_scope().expect("inside a scope").id()
}

/// A body that counts its polls and never completes nor registers a waker: only the scope
/// can wake it.
fn parked_body(polls: Arc<AtomicUsize>) -> impl Future<Output = Result<(), Cancelled>> {
    std::future::poll_fn(move |_| {
        polls.fetch_add(1, Ordering::SeqCst);
        Poll::Pending
    })
}

/// Polls `fut` once (to enter it and let it park).
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

/// Runs `test` on a multi-thread runtime's test body with a real-time hang bound.
async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(HANG_BOUND, test)
        .await
        .expect("hang: the test did not finish within the hang bound")
}

/// An error whose `source()` is a `Cancelled` (SPEC S15 source chains).
#[derive(Debug)]
struct Context {
    what: &'static str,
    source: Cancelled,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "while {}", self.what)
    }
}

impl Error for Context {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}

/// An error whose `source()` is another error (two links above the `Cancelled`).
#[derive(Debug)]
struct Outer(Context);

impl fmt::Display for Outer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request failed")
    }
}

impl Error for Outer {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}

/// A `Cancelled` obtained from a scope that then ended normally: a stray once it leaves.
async fn stray_cancelled() -> (Cancelled, ScopeHandle) {
    let scope = CancelScope::new();
    let handle = scope.handle();
    handle.cancel_with("long ago");
    let kept = scope
        .run(async { Ok::<_, Cancelled>(here()) })
        .await
        .unwrap()
        .unwrap();
    (kept, handle)
}

// ---------------------------------------------------------------------------------------------
// S1. Scopes nest as the code nests; the current scope belongs to the future being polled.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn s01_scopes_nest_as_code_nests() {
    common::leak_checked(async move {
        assert!(current_scope().is_none());
        let outer = CancelScope::new();
        let oh = outer.handle();
        // Built outside, entered inside: the parent is the scope current at entry.
        let inner = CancelScope::new();
        let ih = inner.handle();
        let out = outer
            .run(async {
                assert_eq!(id_here(), oh.id());
                let inner_out = inner
                    .run(async {
                        assert_eq!(id_here(), ih.id());
                        assert!(!is_cancelled());
                        oh.cancel();
                        // The inner scope is the outer's child: the outer cancellation reaches it.
                        assert!(is_cancelled());
                        assert!(ih.is_cancelled());
                        assert!(!ih.cancel_called());
                        assert_eq!(here().scope(), oh.id());
                        Ok::<_, Cancelled>(1)
                    })
                    .await;
                assert_eq!(inner_out.unwrap(), Some(1));
                // Back in the outer scope once the inner one ended.
                assert_eq!(id_here(), oh.id());
                checkpoint().await?;
                Ok::<_, Cancelled>(2)
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert!(current_scope().is_none());
        assert!(oh.cancelled_caught());
    })
    .await
}

#[tokio::test]
async fn s01_each_join_branch_sees_its_own_scope() {
    common::leak_checked(async move {
        let outer = CancelScope::new();
        let oh = outer.handle();
        let a = CancelScope::new();
        let ah = a.handle();
        let b = CancelScope::new();
        let bh = b.handle();
        let a_parked = tokio::sync::Notify::new();
        let out = outer
            .run(async {
                let (ra, rb) = tokio::join!(
                    a.run(async {
                        assert_eq!(id_here(), ah.id());
                        tokio::task::yield_now().await;
                        assert_eq!(id_here(), ah.id());
                        a_parked.notify_one();
                        // Cancelled by branch b, in the same task.
                        let c = cancelled().await;
                        assert_eq!(id_here(), ah.id());
                        assert_eq!(c.scope(), ah.id());
                        Err::<u32, _>(c)
                    }),
                    b.run(async {
                        assert_eq!(id_here(), bh.id());
                        a_parked.notified().await;
                        assert_eq!(id_here(), bh.id());
                        ah.cancel();
                        tokio::task::yield_now().await;
                        // Branch a's cancellation is not ours.
                        assert_eq!(id_here(), bh.id());
                        assert!(!is_cancelled());
                        checkpoint().await?;
                        Ok::<_, Cancelled>(2)
                    }),
                );
                assert_eq!(id_here(), oh.id());
                assert!(!is_cancelled());
                Ok::<_, Cancelled>((ra?, rb?))
            })
            .await;
        assert_eq!(out.unwrap(), Some((None, Some(2))));
        assert!(ah.cancelled_caught());
        assert!(!bh.cancel_called());
        assert!(!oh.cancel_called());
    })
    .await
}

#[tokio::test]
async fn s01_join_branches_with_helper_scopes_see_their_own() {
    common::leak_checked(async move {
        let out = move_on_after(HOUR, async {
            let outer = id_here();
            let (x, y) = tokio::join!(
                move_on_after(HOUR, async {
                    let mine = id_here();
                    assert_ne!(mine, outer);
                    tokio::task::yield_now().await;
                    assert_eq!(id_here(), mine);
                    current_scope().unwrap().cancel();
                    checkpoint().await?;
                    Ok::<_, Cancelled>("x")
                }),
                move_on_after(HOUR, async {
                    let mine = id_here();
                    assert_ne!(mine, outer);
                    tokio::task::yield_now().await;
                    tokio::task::yield_now().await;
                    assert_eq!(id_here(), mine);
                    assert!(!is_cancelled());
                    Ok::<_, Cancelled>("y")
                }),
            );
            assert_eq!(id_here(), outer);
            Ok::<_, Cancelled>((x?, y?))
        })
        .await;
        assert_eq!(out.unwrap(), Some((None, Some("y"))));
    })
    .await
}

#[tokio::test]
async fn s01_carry_scope_crosses_task_boundary() {
    common::leak_checked(async move {
        let scope = CancelScope::new();
        let handle = scope.handle();
        let out = scope
            .run(async {
                // A plain spawn starts outside every scope (SPEC S14).
                let plain = tokio::spawn(async { current_scope().map(|s| s.id()) });
                assert_eq!(plain.await.unwrap(), None);
                let carried = tokio::spawn(carry_scope(async {
                    let id = id_here();
                    let c = cancelled().await;
                    (id, c)
                }));
                handle.cancel_with("stop");
                let (id, c) = carried.await.unwrap();
                assert_eq!(id, handle.id());
                assert_eq!(c.scope(), handle.id());
                assert_eq!(c.reason().message(), Some("stop"));
                Err::<(), _>(c)
            })
            .await;
        assert_eq!(out.unwrap(), None);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// S2. Cancelled by `cancel` (any task or thread; before, during, after), by its deadline, or
// by its parent when not shielded.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn s02_cancel_before_entry() {
    common::leak_checked(async move {
        let live = LiveFutures::new();
        let scope = CancelScope::new();
        let handle = scope.handle();
        handle.cancel();
        assert!(handle.cancel_called());
        assert!(handle.is_cancelled());
        let out = scope
            .run(live.track(async {
                let c = here();
                assert!(matches!(c.reason(), CancelReason::Explicit(None)));
                checkpoint().await?;
                unreachable!("the checkpoint reports the cancellation");
                #[allow(unreachable_code)]
                Ok::<_, Cancelled>(())
            }))
            .await;
        assert_eq!(out.unwrap(), None);
        assert!(handle.cancelled_caught());
        assert_eq!((live.completed(), live.live()), (1, 0));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s02_cancel_while_running_from_another_task() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let scope = CancelScope::new();
        let handle = scope.handle();
        let canceller = at(t0 + ms(10), {
            let handle = handle.clone();
            move || handle.cancel()
        });
        let out = scope
            .run(async {
                let c = cancelled().await;
                assert_eq!(Instant::now(), t0 + ms(10));
                Err::<(), _>(c)
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert!(handle.cancelled_caught());
        canceller.await.unwrap();
    })
    .await
}

#[tokio::test]
async fn s02_cancel_from_inside_the_scope() {
    common::leak_checked(async move {
        let out = CancelScope::new()
            .run(async {
                assert!(!is_cancelled());
                current_scope().unwrap().cancel();
                assert!(is_cancelled());
                checkpoint().await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), None);
    })
    .await
}

#[tokio::test]
async fn s02_cancel_after_the_scope_ended_is_harmless() {
    common::leak_checked(async move {
        let scope = CancelScope::new();
        let handle = scope.handle();
        let out = scope.run(async { Ok::<_, Cancelled>(5) }).await;
        assert_eq!(out.unwrap(), Some(5));
        handle.cancel();
        handle.cancel_with("again");
        assert!(handle.cancel_called());
        assert!(!handle.cancelled_caught());
    })
    .await
}

#[tokio::test]
async fn s02_cancel_from_another_thread() {
    common::leak_checked(async move {
        // current_thread runtime: the cancel comes from a std thread, outside any runtime, and
        // must wake the parked body.
        let scope = CancelScope::new();
        let handle = scope.handle();
        let (parked_tx, parked_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn({
            let handle = handle.clone();
            move || {
                parked_rx.recv().unwrap();
                handle.cancel_with(String::from("from a thread"));
            }
        });
        let out = scope
            .run(async {
                let mut wait = pin!(cancelled());
                assert!(poll_once(&mut wait).await.is_pending());
                parked_tx.send(()).unwrap();
                let c = wait.await;
                assert_eq!(c.reason().message(), Some("from a thread"));
                Err::<(), _>(c)
            })
            .await;
        assert_eq!(out.unwrap(), None);
        thread.join().unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s02_cancel_from_another_thread_multi_thread() {
    common::leak_checked(async move {
        bounded(async {
            let scope = CancelScope::new();
            let handle = scope.handle();
            let live = LiveFutures::new();
            let task = tokio::spawn(scope.run(live.track(async {
                let c = cancelled().await;
                Err::<(), _>(c)
            })));
            wait_until("the body to start", || live.created() == 1).await;
            let thread = std::thread::spawn(move || handle.cancel());
            assert_eq!(task.await.unwrap().unwrap(), None);
            thread.join().unwrap();
            assert_eq!(live.live(), 0);
            settle_tasks(0).await;
        })
        .await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s02_deadline_passing_cancels() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let scope = CancelScope::new().with_deadline(t0 + ms(10));
        let handle = scope.handle();
        let out = scope
            .run(async {
                let c = sleep(HOUR).await.unwrap_err();
                assert_eq!(Instant::now(), t0 + ms(10));
                assert!(c.reason().is_deadline());
                assert_eq!(c.scope(), handle.id());
                Err::<(), _>(c)
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert!(handle.cancel_called());
        assert!(handle.cancelled_caught());
        assert!(matches!(handle.reason(), Some(CancelReason::Deadline)));
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s02_parent_cancellation_reaches_running_child() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let outer = CancelScope::new();
        let oh = outer.handle();
        let inner = CancelScope::new();
        let ih = inner.handle();
        let canceller = at(t0 + ms(7), {
            let oh = oh.clone();
            move || oh.cancel()
        });
        let out = outer
            .run(async {
                inner
                    .run(async {
                        let c = cancelled().await;
                        assert_eq!(Instant::now(), t0 + ms(7));
                        assert_eq!(c.scope(), oh.id());
                        Err::<(), _>(c)
                    })
                    .await?;
                unreachable!("the outer cancellation passes out of the inner scope");
                #[allow(unreachable_code)]
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert!(!ih.cancel_called());
        assert!(!ih.cancelled_caught());
        assert!(oh.cancelled_caught());
        canceller.await.unwrap();
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// S3. Level-triggered.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn s03_level_triggered_every_checkpoint_reports() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let scope = CancelScope::new();
        let handle = scope.handle();
        let out = scope
            .run(async {
                current_scope().unwrap().cancel_with("once");
                for _ in 0..3 {
                    assert!(is_cancelled());
                    assert!(check_cancelled().is_err());
                    assert!(checkpoint().await.is_err());
                    assert!(cancelled().await.reason().message() == Some("once"));
                    assert!(sleep(HOUR).await.is_err());
                    assert!(sleep_until(t0 + HOUR).await.is_err());
                    assert!(pending::<()>().cancellable().await.is_err());
                }
                // A nested unshielded scope reports it too, every time.
                CancelScope::new()
                    .run(async {
                        for _ in 0..3 {
                            assert_eq!(checkpoint().await.unwrap_err().scope(), handle.id());
                        }
                        Ok::<_, Cancelled>(())
                    })
                    .await?;
                // Nothing consumed it, and no time passed.
                assert!(is_cancelled());
                assert_eq!(Instant::now(), t0);
                Ok::<_, Cancelled>("ignored the cancellation")
            })
            .await;
        // The body chose to return a value: it gets it (S10).
        assert_eq!(out.unwrap(), Some("ignored the cancellation"));
        assert!(handle.cancel_called());
        assert!(!handle.cancelled_caught());
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s03_own_cancellation_never_reverts() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let scope = CancelScope::new().with_deadline(t0 + ms(5));
        let handle = scope.handle();
        let out = scope
            .run(async {
                sleep(HOUR).await.unwrap_err();
                assert_eq!(Instant::now(), t0 + ms(5));
                // Nothing the scope's controls do brings it back.
                handle.set_deadline(None);
                handle.set_deadline(Some(t0 + HOUR));
                handle.set_shield(true);
                handle.set_shield(false);
                tokio::time::sleep(ms(20)).await;
                assert!(handle.cancel_called());
                assert!(is_cancelled());
                checkpoint().await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert!(handle.cancel_called());
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test]
async fn s03_inherited_cancellation_hidden_by_raising_shield() {
    common::leak_checked(async move {
        let outer = CancelScope::new();
        let oh = outer.handle();
        let out = outer
            .run(async {
                oh.cancel();
                let inner = CancelScope::new();
                let ih = inner.handle();
                inner
                    .run(async {
                        assert!(is_cancelled());
                        assert_eq!(current_deadline(), EffectiveDeadline::Passed);
                        ih.set_shield(true);
                        // Hidden again: not consumed, only invisible.
                        assert!(!is_cancelled());
                        assert!(check_cancelled().is_ok());
                        assert!(checkpoint().await.is_ok());
                        assert_eq!(current_deadline(), EffectiveDeadline::Unbounded);
                        ih.set_shield(false);
                        assert!(is_cancelled());
                        assert_eq!(here().scope(), oh.id());
                        assert!(!ih.cancel_called());
                        Ok::<_, Cancelled>(())
                    })
                    .await?;
                assert!(!ih.cancel_called());
                checkpoint().await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), None);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// S4. Idempotent cancel with a reason; the first reason wins; `Cancelled` names the outermost
// effectively cancelled scope in the unshielded chain and carries its reason.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn s04_cancel_is_idempotent() {
    common::leak_checked(async move {
        let scope = CancelScope::new();
        let handle = scope.handle();
        handle.cancel();
        handle.cancel();
        let out = scope
            .run(async {
                current_scope().unwrap().cancel();
                checkpoint().await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), None);
        handle.cancel();
        assert!(handle.cancel_called());
        assert!(handle.cancelled_caught());
        assert!(matches!(
            handle.reason(),
            Some(CancelReason::Explicit(None))
        ));
    })
    .await
}

#[tokio::test]
async fn s04_first_reason_wins() {
    common::leak_checked(async move {
        let scope = CancelScope::new();
        let handle = scope.handle();
        assert!(handle.reason().is_none());
        handle.cancel_with("first");
        handle.cancel_with("second");
        handle.cancel();
        let out = scope
            .run(async {
                current_scope().unwrap().cancel_with(String::from("third"));
                let c = checkpoint().await.unwrap_err();
                assert_eq!(c.reason().message(), Some("first"));
                Err::<(), _>(c)
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(handle.reason().unwrap().message(), Some("first"));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s04_first_reason_wins_between_explicit_and_deadline() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        // Explicit first, deadline later: stays explicit.
        let scope = CancelScope::new().with_deadline(t0 + ms(10));
        let handle = scope.handle();
        let out = scope
            .run(async {
                tokio::time::sleep(ms(5)).await;
                current_scope().unwrap().cancel_with("explicit");
                tokio::time::sleep(ms(10)).await; // the deadline passes meanwhile
                let c = here();
                assert_eq!(c.reason().message(), Some("explicit"));
                Err::<(), _>(c)
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(handle.reason().unwrap().message(), Some("explicit"));

        // Deadline first, explicit later: stays deadline.
        let t1 = Instant::now();
        let scope = CancelScope::new().with_deadline(t1 + ms(10));
        let handle = scope.handle();
        let out = scope
            .run(async {
                sleep(HOUR).await.unwrap_err();
                assert_eq!(Instant::now(), t1 + ms(10));
                current_scope().unwrap().cancel_with("too late");
                let c = here();
                assert!(c.reason().is_deadline());
                Err::<(), _>(c)
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert!(handle.reason().unwrap().is_deadline());
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test]
async fn s04_reason_carries_user_data() {
    common::leak_checked(async move {
        #[derive(Debug, PartialEq)]
        struct Reload {
            generation: u32,
        }
        let scope = CancelScope::new();
        scope.handle().cancel_with(Reload { generation: 7 });
        let out = scope
            .run(async {
                let c = here();
                let payload = c.reason().payload().expect("explicit with data");
                assert_eq!(
                    payload.downcast_ref::<Reload>(),
                    Some(&Reload { generation: 7 })
                );
                assert_eq!(payload.downcast_ref::<String>(), None);
                assert_eq!(c.reason().message(), None);
                Err::<(), _>(c)
            })
            .await;
        assert_eq!(out.unwrap(), None);

        let scope = CancelScope::new();
        scope.handle().cancel_with(String::from("owned text"));
        let out = scope
            .run(async {
                assert_eq!(here().reason().message(), Some("owned text"));
                Err::<(), _>(here())
            })
            .await;
        assert_eq!(out.unwrap(), None);
    })
    .await
}

#[tokio::test]
async fn s04_cancelled_names_outermost_cancelled_scope() {
    common::leak_checked(async move {
        let a = CancelScope::new();
        let ah = a.handle();
        let b = CancelScope::new();
        let bh = b.handle();
        let c = CancelScope::new();
        let ch = c.handle();
        let out = a
            .run(async {
                let b_out = b
                    .run(async {
                        let c_out = c
                            .run(async {
                                assert!(check_cancelled().is_ok());
                                ch.cancel_with("c");
                                let e = here();
                                assert_eq!((e.scope(), e.reason().message()), (ch.id(), Some("c")));
                                bh.cancel_with("b");
                                let e = here();
                                assert_eq!((e.scope(), e.reason().message()), (bh.id(), Some("b")));
                                ah.cancel_with("a");
                                let e = checkpoint().await.unwrap_err();
                                assert_eq!((e.scope(), e.reason().message()), (ah.id(), Some("a")));
                                // A shield on b cuts the chain: b is now the outermost visible.
                                bh.set_shield(true);
                                let e = here();
                                assert_eq!((e.scope(), e.reason().message()), (bh.id(), Some("b")));
                                Err::<(), _>(e)
                            })
                            .await;
                        // c is cancelled but so is b (visible): c passes it on.
                        let e = c_out.unwrap_err();
                        assert_eq!(e.scope(), bh.id());
                        Err::<(), _>(e)
                    })
                    .await;
                // b is cancelled itself and shielded: it absorbed.
                assert_eq!(b_out.unwrap(), None);
                let e = here();
                assert_eq!(e.scope(), ah.id());
                Err::<(), _>(e)
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert!(!ch.cancelled_caught());
        assert!(bh.cancelled_caught());
        assert!(ah.cancelled_caught());
    })
    .await
}

#[tokio::test]
async fn s04_inherited_cancellation_names_the_ancestor_not_the_current_scope() {
    common::leak_checked(async move {
        let outer = CancelScope::new();
        let oh = outer.handle();
        oh.cancel_with("outer");
        let out = outer
            .run(async {
                CancelScope::new()
                    .run(async {
                        CancelScope::new()
                            .run(async {
                                let e = here();
                                assert_eq!(e.scope(), oh.id());
                                assert_eq!(e.reason().message(), Some("outer"));
                                Err::<(), _>(e)
                            })
                            .await
                    })
                    .await
            })
            .await;
        assert_eq!(out.unwrap(), None);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// S5. Absolute deadlines on tokio's clock; relative timeouts start at the first poll; a
// deadline already past at entry cancels at once.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn s05_deadline_is_an_absolute_instant_on_tokios_clock() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let scope = CancelScope::new().with_deadline(t0 + ms(25));
        let handle = scope.handle();
        assert_eq!(handle.deadline(), Some(t0 + ms(25)));
        // Time passing before entry does not move an absolute deadline.
        tokio::time::sleep(ms(10)).await;
        let out = scope
            .run(async {
                assert_eq!(current_deadline(), EffectiveDeadline::At(t0 + ms(25)));
                sleep(HOUR).await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(Instant::now(), t0 + ms(25));
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s05_relative_timeout_starts_at_first_poll() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let scope = CancelScope::new().with_timeout(ms(10));
        let handle = scope.handle();
        let run = scope.run(async {
            sleep(HOUR).await?;
            Ok::<_, Cancelled>(())
        });
        let helper = move_on_after(ms(10), async {
            sleep(HOUR).await?;
            Ok::<_, Cancelled>(())
        });
        let failing = fail_after(ms(10), async {
            sleep(HOUR).await?;
            Ok::<_, AppError>(())
        });
        tokio::time::sleep(ms(100)).await;

        assert_eq!(run.await.unwrap(), None);
        assert_eq!(Instant::now(), t0 + ms(110));
        assert_eq!(handle.deadline(), Some(t0 + ms(110)));

        assert_eq!(helper.await.unwrap(), None);
        assert_eq!(Instant::now(), t0 + ms(120));

        match failing.await {
            Err(AppError::TimedOut(t)) => assert_eq!(t.deadline(), Some(t0 + ms(130))),
            other => panic!("expected TimedOut, got {other:?}"),
        }
        assert_eq!(Instant::now(), t0 + ms(130));
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s05_deadline_already_past_at_entry() {
    common::leak_checked(async move {
        tokio::time::sleep(ms(50)).await;
        let now = Instant::now();
        let past = now - ms(30);

        for scope in [
            CancelScope::new().with_deadline(past),
            CancelScope::new().with_deadline(now),
            CancelScope::new().with_timeout(Duration::ZERO),
        ] {
            let handle = scope.handle();
            let out = scope
                .run(async {
                    let e = here();
                    assert!(e.reason().is_deadline());
                    assert_eq!(e.scope(), handle.id());
                    assert_eq!(current_deadline(), EffectiveDeadline::Passed);
                    checkpoint().await?;
                    Ok::<_, Cancelled>(())
                })
                .await;
            assert_eq!(out.unwrap(), None);
            assert!(handle.cancel_called());
            assert!(handle.cancelled_caught());
        }

        let out = move_on_at(past, async {
            let e = here();
            assert!(e.reason().is_deadline());
            Err::<(), _>(e)
        })
        .await;
        assert_eq!(out.unwrap(), None);
        let out = move_on_after(Duration::ZERO, async {
            checkpoint().await?;
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), None);
        match fail_at(past, async {
            checkpoint().await?;
            Ok::<_, AppError>(())
        })
        .await
        {
            Err(AppError::TimedOut(t)) => {
                assert_eq!(t.deadline(), Some(past));
                assert!(t.reason().is_deadline());
            }
            other => panic!("expected TimedOut, got {other:?}"),
        }
        // A body that never reaches a cancellation point still returns its value (S10).
        let out = move_on_at(past, async { Ok::<_, Cancelled>(3) }).await;
        assert_eq!(out.unwrap(), Some(3));
        // All at once: no time passed.
        assert_eq!(Instant::now(), now);
        settle_tasks(0).await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// S6. Deadlines read and moved from any thread while the scope runs; expiry reaches carried
// tasks while the owner is parked or busy.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn s06_deadline_readable_while_running() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let scope = CancelScope::new().with_deadline(t0 + ms(40));
        let handle = scope.handle();
        let out = scope
            .run(async {
                assert_eq!(current_scope().unwrap().deadline(), Some(t0 + ms(40)));
                let reader = tokio::spawn({
                    let handle = handle.clone();
                    async move { handle.deadline() }
                });
                assert_eq!(reader.await.unwrap(), Some(t0 + ms(40)));
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s06_move_deadline_earlier_cancels_at_once() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        // To an instant already past: cancelled at the moment of the move.
        let scope = CancelScope::new().with_deadline(t0 + ms(100));
        let handle = scope.handle();
        let mover = at(t0 + ms(10), {
            let handle = handle.clone();
            move || {
                handle.set_deadline(Some(t0 + ms(5)));
                assert!(
                    handle.is_cancelled(),
                    "a past deadline cancels synchronously"
                );
            }
        });
        let out = scope
            .run(async {
                sleep(HOUR).await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(Instant::now(), t0 + ms(10));
        assert!(handle.reason().unwrap().is_deadline());
        mover.await.unwrap();

        // To an earlier instant still ahead: cancelled then, not at the old deadline.
        let t1 = Instant::now();
        let scope = CancelScope::new().with_deadline(t1 + ms(100));
        let handle = scope.handle();
        let mover = at(t1 + ms(10), {
            let handle = handle.clone();
            move || handle.set_deadline(Some(t1 + ms(30)))
        });
        let out = scope
            .run(async {
                sleep(HOUR).await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(Instant::now(), t1 + ms(30));
        mover.await.unwrap();
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s06_move_deadline_later_postpones() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let scope = CancelScope::new().with_deadline(t0 + ms(10));
        let handle = scope.handle();
        let mover = at(t0 + ms(5), {
            let handle = handle.clone();
            move || handle.set_deadline(Some(t0 + ms(40)))
        });
        let out = scope
            .run(async {
                sleep(HOUR).await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(Instant::now(), t0 + ms(40));
        assert_eq!(handle.deadline(), Some(t0 + ms(40)));
        mover.await.unwrap();
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s06_remove_deadline_while_running() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let scope = CancelScope::new().with_deadline(t0 + ms(10));
        let handle = scope.handle();
        let out = scope
            .run(async {
                current_scope().unwrap().set_deadline(None);
                assert_eq!(current_deadline(), EffectiveDeadline::Unbounded);
                tokio::time::sleep(ms(50)).await;
                assert!(!is_cancelled());
                sleep(ms(10)).await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(Instant::now(), t0 + ms(60));
        assert!(!handle.cancel_called());
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s06_later_does_not_uncancel() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        // Cancelled by its deadline.
        let scope = CancelScope::new().with_deadline(t0 + ms(10));
        let handle = scope.handle();
        let out = scope
            .run(async {
                sleep(HOUR).await.unwrap_err();
                current_scope().unwrap().set_deadline(Some(t0 + HOUR));
                assert!(is_cancelled());
                assert_eq!(current_deadline(), EffectiveDeadline::Passed);
                current_scope().unwrap().set_deadline(None);
                assert!(is_cancelled());
                checkpoint().await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(Instant::now(), t0 + ms(10));
        assert!(handle.reason().unwrap().is_deadline());

        // Cancelled explicitly.
        let scope = CancelScope::new().with_deadline(t0 + ms(20));
        let handle = scope.handle();
        handle.cancel_with("explicit");
        let out = scope
            .run(async {
                current_scope().unwrap().set_deadline(Some(t0 + HOUR));
                checkpoint().await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(handle.reason().unwrap().message(), Some("explicit"));
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s06_set_deadline_from_other_thread_uses_scope_runtime_clock() {
    common::leak_checked(async move {
        // The caller's clock is two hours ahead of the scope's: a deadline one hour ahead of the
        // scope's clock has passed on the caller's. The scope's clock decides: no cancellation
        // now, exactly at t0 + 1h on the scope's clock.
        let t0 = Instant::now();
        let scope = CancelScope::new().with_deadline(t0 + HOUR * 5);
        let handle = scope.handle();
        let out = scope
            .run(async {
                let thread = std::thread::spawn({
                    let handle = handle.clone();
                    move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_time()
                            .start_paused(true)
                            .build()
                            .unwrap();
                        rt.block_on(common::leak_checked(async {
                            tokio::time::advance(HOUR * 2).await;
                            assert!(t0 + HOUR <= Instant::now(), "caller's clock is ahead");
                            handle.set_deadline(Some(t0 + HOUR));
                            assert!(!handle.is_cancelled(), "judged on the caller's clock");
                        }));
                    }
                });
                thread.join().unwrap();
                assert!(!is_cancelled());
                sleep(HOUR * 10).await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(Instant::now(), t0 + HOUR);
        assert!(handle.reason().unwrap().is_deadline());
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s06_set_deadline_past_on_scope_clock_from_plain_thread_cancels_at_once() {
    common::leak_checked(async move {
        // The scope's clock is two hours ahead of the caller's (a plain thread, real clock): a
        // deadline one hour after t0 is in the caller's future but in the scope's past.
        let t0 = Instant::now();
        tokio::time::advance(HOUR * 2).await;
        let scope = CancelScope::new().with_deadline(t0 + HOUR * 5);
        let handle = scope.handle();
        let out = scope
            .run(async {
                std::thread::spawn({
                    let handle = handle.clone();
                    move || {
                        handle.set_deadline(Some(t0 + HOUR));
                        assert!(handle.is_cancelled(), "judged on the caller's clock");
                    }
                })
                .join()
                .unwrap();
                assert!(is_cancelled());
                checkpoint().await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(Instant::now(), t0 + HOUR * 2);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s06_deadline_reaches_carried_task_while_owner_parked() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let live = LiveFutures::new();
        let scope = CancelScope::new().with_deadline(t0 + ms(20));
        let handle = scope.handle();
        let out = scope
            .run(async {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let child = tokio::spawn(live.track(carry_scope(async move {
                    let c = cancelled().await;
                    tx.send(Instant::now()).unwrap();
                    c
                })));
                // The owner is parked on something that is not a cancellation point.
                let seen_at = rx.await.unwrap();
                assert_eq!(seen_at, t0 + ms(20));
                let c = child.await.unwrap();
                assert_eq!(c.scope(), handle.id());
                assert!(c.reason().is_deadline());
                Err::<(), _>(c)
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(live.live(), 0);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_deadline_reaches_carried_task_while_owner_parked_multi_thread() {
    common::leak_checked(async move {
        bounded(async {
            let live = LiveFutures::new();
            // The owner runs on a worker, parked on something that is not a cancellation point.
            let owner = tokio::spawn(move_on_after(ms(20), {
                let live = live.clone();
                async move {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let child = tokio::spawn(live.track(carry_scope(async move {
                        let c = cancelled().await;
                        tx.send(()).unwrap();
                        c
                    })));
                    rx.await.unwrap();
                    Err::<(), _>(child.await.unwrap())
                }
            }));
            assert_eq!(owner.await.unwrap().unwrap(), None);
            live.wait_live(0).await;
            settle_tasks(0).await;
        })
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_deadline_reaches_carried_task_while_owner_busy_multi_thread() {
    common::leak_checked(async move {
        bounded(async {
            let live = LiveFutures::new();
            let seen = Arc::new(AtomicBool::new(false));
            // The owner runs on a worker and keeps it busy: a blocking wait inside one poll.
            let owner = tokio::spawn(move_on_after(ms(20), {
                let live = live.clone();
                async move {
                    // The owner waits for the carried task to start parked, not in a yield
                    // loop: a worker that yields polls tokio's timer driver to run deferred
                    // wakes, and the other worker, parking meanwhile, would wait on its condvar
                    // instead of the driver, so no worker would poll the timer while this one
                    // spins (tokio's limitation, for its own timers as for ours).
                    let (started, on_start) = tokio::sync::oneshot::channel::<()>();
                    let child = tokio::spawn(live.track(carry_scope({
                        let seen = seen.clone();
                        async move {
                            let _ = started.send(());
                            let c = cancelled().await;
                            seen.store(true, Ordering::SeqCst);
                            c
                        }
                    })));
                    on_start.await.expect("the carried task started");
                    let hang = std::time::Instant::now() + HANG_BOUND;
                    while !seen.load(Ordering::SeqCst) {
                        assert!(
                            std::time::Instant::now() < hang,
                            "hang: the deadline never reached the carried task"
                        );
                        std::hint::spin_loop();
                    }
                    // The runtime fired the deadline while we were busy: visible synchronously.
                    assert!(is_cancelled());
                    Err::<(), _>(child.await.unwrap())
                }
            }));
            assert_eq!(owner.await.unwrap().unwrap(), None);
            live.wait_live(0).await;
            settle_tasks(0).await;
        })
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_move_deadline_from_other_thread_multi_thread() {
    common::leak_checked(async move {
        bounded(async {
            // Far-apart deadlines: one hour away, moved into the past from a plain thread.
            let scope = CancelScope::new().with_timeout(HOUR);
            let handle = scope.handle();
            let task = tokio::spawn(scope.run(async {
                let c = cancelled().await;
                Err::<(), _>(c)
            }));
            wait_until("the scope to be entered", || handle.deadline().is_some()).await;
            let moved = Instant::now() - ms(1);
            std::thread::spawn({
                let handle = handle.clone();
                move || handle.set_deadline(Some(moved))
            })
            .join()
            .unwrap();
            assert_eq!(task.await.unwrap().unwrap(), None);
            assert!(handle.reason().unwrap().is_deadline());
            settle_tasks(0).await;
        })
        .await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// S7. The effective deadline.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn s07_effective_deadline_none_outside_any_scope() {
    common::leak_checked(async move {
        assert_eq!(current_deadline(), EffectiveDeadline::Unbounded);
        let inside = CancelScope::new()
            .run(async { Ok::<_, Cancelled>(current_deadline()) })
            .await;
        assert_eq!(inside.unwrap(), Some(EffectiveDeadline::Unbounded));
        // A plain spawned task is outside every scope, even if spawned from inside one.
        let t0 = Instant::now();
        let out = move_on_at(t0 + ms(10), async {
            let plain = tokio::spawn(async { current_deadline() }).await.unwrap();
            Ok::<_, Cancelled>(plain)
        })
        .await;
        assert_eq!(out.unwrap(), Some(EffectiveDeadline::Unbounded));
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s07_effective_deadline_is_the_nearest() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let outer = CancelScope::new().with_deadline(t0 + ms(100));
        let oh = outer.handle();
        let out = outer
            .run(async {
                assert_eq!(current_deadline(), EffectiveDeadline::At(t0 + ms(100)));
                // A later inner deadline: the outer one is nearer.
                let r = CancelScope::new()
                    .with_deadline(t0 + ms(200))
                    .run(async {
                        assert_eq!(current_deadline(), EffectiveDeadline::At(t0 + ms(100)));
                        // An earlier one, three levels down, through a scope without a deadline.
                        CancelScope::new()
                            .run(move_on_at(t0 + ms(50), async {
                                // First poll (an unlinked helper scope) and later polls agree.
                                assert_eq!(current_deadline(), EffectiveDeadline::At(t0 + ms(50)));
                                tokio::task::yield_now().await;
                                assert_eq!(current_deadline(), EffectiveDeadline::At(t0 + ms(50)));
                                // Moving an ancestor's deadline shows at once.
                                oh.set_deadline(Some(t0 + ms(30)));
                                assert_eq!(current_deadline(), EffectiveDeadline::At(t0 + ms(30)));
                                // Queryable from a carried task without passing anything.
                                let carried =
                                    tokio::spawn(carry_scope(async { current_deadline() }));
                                assert_eq!(
                                    carried.await.unwrap(),
                                    EffectiveDeadline::At(t0 + ms(30))
                                );
                                Ok::<_, Cancelled>(())
                            }))
                            .await?;
                        assert_eq!(current_deadline(), EffectiveDeadline::At(t0 + ms(30)));
                        Ok::<_, Cancelled>(())
                    })
                    .await?;
                assert_eq!(r, Some(()));
                let remaining = current_deadline().remaining();
                assert_eq!(remaining, Some(ms(30)));
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s07_effective_deadline_stops_at_shield() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let out = move_on_at(t0 + ms(50), async {
            // A shielded scope with a later deadline: only its own counts.
            CancelScope::new()
                .with_deadline(t0 + ms(200))
                .shielded()
                .run(async {
                    assert_eq!(current_deadline(), EffectiveDeadline::At(t0 + ms(200)));
                    // Below the shield, the nearest up to and including the shield.
                    CancelScope::new()
                        .with_deadline(t0 + ms(300))
                        .run(async {
                            assert_eq!(current_deadline(), EffectiveDeadline::At(t0 + ms(200)));
                            Ok::<_, Cancelled>(())
                        })
                        .await?;
                    Ok::<_, Cancelled>(())
                })
                .await?;
            // A shielded scope without a deadline: unbounded.
            CancelScope::new()
                .shielded()
                .run(async {
                    assert_eq!(current_deadline(), EffectiveDeadline::Unbounded);
                    let h = current_scope().unwrap();
                    h.set_shield(false);
                    assert_eq!(current_deadline(), EffectiveDeadline::At(t0 + ms(50)));
                    h.set_shield(true);
                    assert_eq!(current_deadline(), EffectiveDeadline::Unbounded);
                    Ok::<_, Cancelled>(())
                })
                .await?;
            // A shielded helper-style deadline nearer than the outer one still counts.
            CancelScope::new()
                .with_deadline(t0 + ms(20))
                .shielded()
                .run(async {
                    assert_eq!(current_deadline(), EffectiveDeadline::At(t0 + ms(20)));
                    Ok::<_, Cancelled>(())
                })
                .await?;
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s07_effective_deadline_passed_when_cancelled() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let outer = CancelScope::new();
        let oh = outer.handle();
        let out = outer
            .run(async {
                // Own cancellation.
                CancelScope::new()
                    .with_deadline(t0 + HOUR)
                    .run(async {
                        current_scope().unwrap().cancel();
                        assert_eq!(current_deadline(), EffectiveDeadline::Passed);
                        assert!(current_deadline().has_passed());
                        assert_eq!(current_deadline().remaining(), Some(Duration::ZERO));
                        checkpoint().await?;
                        Ok::<_, Cancelled>(())
                    })
                    .await?;
                assert_eq!(current_deadline(), EffectiveDeadline::Unbounded);
                // A visible ancestor's cancellation.
                oh.cancel();
                assert_eq!(current_deadline(), EffectiveDeadline::Passed);
                let inner = CancelScope::new()
                    .with_deadline(t0 + HOUR)
                    .run(async {
                        assert_eq!(current_deadline(), EffectiveDeadline::Passed);
                        Ok::<_, Cancelled>(())
                    })
                    .await?;
                assert_eq!(inner, Some(()));
                // Not through a shield.
                CancelScope::new()
                    .with_deadline(t0 + HOUR)
                    .shielded()
                    .run(async {
                        assert_eq!(current_deadline(), EffectiveDeadline::At(t0 + HOUR));
                        Ok::<_, Cancelled>(())
                    })
                    .await?;
                // By a deadline that fired.
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));

        let out = move_on_at(t0 + ms(10), async {
            tokio::time::sleep(ms(15)).await;
            assert_eq!(current_deadline(), EffectiveDeadline::Passed);
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        settle_tasks(0).await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// S8. Shields.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn s08_shield_ignores_ancestors_not_own() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let outer = CancelScope::new().with_deadline(t0 + ms(10));
        let oh = outer.handle();
        let out = outer
            .run(async {
                let shielded = CancelScope::new().shielded();
                let sh = shielded.handle();
                assert!(sh.is_shielded());
                let r = shielded
                    .run(async {
                        oh.cancel_with("outer");
                        assert!(!is_cancelled());
                        checkpoint().await?;
                        // The outer deadline passes too: still shielded.
                        sleep(ms(30)).await?;
                        assert_eq!(Instant::now(), t0 + ms(30));
                        // Its own cancellation is not ignored.
                        sh.cancel_with("own");
                        let e = checkpoint().await.unwrap_err();
                        assert_eq!(e.scope(), sh.id());
                        assert_eq!(e.reason().message(), Some("own"));
                        Err::<(), _>(e)
                    })
                    .await;
                // It absorbed its own cancellation (no cancelled ancestor visible to it).
                assert_eq!(r.unwrap(), None);
                assert!(sh.cancelled_caught());
                // Outside the shield the outer cancellation is there, with its first reason.
                let e = here();
                assert_eq!(e.scope(), oh.id());
                assert_eq!(e.reason().message(), Some("outer"));
                Err::<(), _>(e)
            })
            .await;
        assert_eq!(out.unwrap(), None);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s08_shielded_scope_own_deadline_applies() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let out = move_on_at(t0 + ms(10), async {
            let r = CancelScope::new()
                .with_deadline(t0 + ms(40))
                .shielded()
                .run(async {
                    sleep(HOUR).await?;
                    Ok::<_, Cancelled>(())
                })
                .await?;
            assert_eq!(r, None);
            assert_eq!(Instant::now(), t0 + ms(40));
            checkpoint().await?;
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), None);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s08_shield_toggling_while_running() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let outer = CancelScope::new();
        let oh = outer.handle();
        let inner = CancelScope::new();
        let ih = inner.handle();
        let toggler = tokio::spawn({
            let (oh, ih) = (oh.clone(), ih.clone());
            async move {
                tokio::time::sleep_until(t0 + ms(10)).await;
                ih.set_shield(true);
                oh.cancel();
                tokio::time::sleep_until(t0 + ms(20)).await;
                ih.set_shield(false);
            }
        });
        let out = outer
            .run(async {
                inner
                    .run(async {
                        // Raised at 10 ms, before the outer cancel: nothing reaches us.
                        tokio::time::sleep_until(t0 + ms(15)).await;
                        assert!(ih.is_shielded());
                        assert!(!is_cancelled());
                        // Grandchildren are covered by the shield too.
                        let r = CancelScope::new()
                            .run(async {
                                assert!(!is_cancelled());
                                // Lowered at 20 ms: exposed, and the waiter is woken then.
                                let e = cancelled().await;
                                assert_eq!(Instant::now(), t0 + ms(20));
                                assert_eq!(e.scope(), oh.id());
                                Err::<(), _>(e)
                            })
                            .await;
                        assert!(!ih.is_shielded());
                        r
                    })
                    .await
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert!(!ih.cancel_called());
        assert!(!ih.cancelled_caught());
        assert!(oh.cancelled_caught());
        toggler.await.unwrap();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s08_lowering_shield_inside_cancelled_ancestor_exposes_at_once() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let outer = CancelScope::new();
        let oh = outer.handle();
        oh.cancel_with("outer");
        let inner = CancelScope::new().shielded();
        let ih = inner.handle();
        let lowerer = at(t0 + ms(10), {
            let ih = ih.clone();
            move || ih.set_shield(false)
        });
        let out = outer
            .run(async {
                let r = inner
                    .run(async {
                        assert!(!is_cancelled());
                        // Parked on a cancellation point; exposed the moment the shield drops.
                        let e = cancelled().await;
                        assert_eq!(Instant::now(), t0 + ms(10));
                        assert_eq!(e.scope(), oh.id());
                        assert_eq!(e.reason().message(), Some("outer"));
                        assert!(!ih.cancel_called());
                        Err::<(), _>(e)
                    })
                    .await;
                // Passed outward: the inner scope was not cancelled itself.
                assert_eq!(r.unwrap_err().scope(), oh.id());
                Err::<(), _>(here())
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert!(!ih.cancel_called());
        assert!(!ih.cancelled_caught());
        assert!(oh.cancelled_caught());
        lowerer.await.unwrap();

        // Synchronously, from inside: exposed at once.
        let outer = CancelScope::new();
        outer.handle().cancel();
        let out = outer
            .run(async {
                CancelScope::new()
                    .shielded()
                    .run(async {
                        assert!(check_cancelled().is_ok());
                        current_scope().unwrap().set_shield(false);
                        assert!(check_cancelled().is_err());
                        assert!(!current_scope().unwrap().cancel_called());
                        Ok::<_, Cancelled>(())
                    })
                    .await
            })
            .await;
        assert_eq!(out.unwrap(), Some(Some(())));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// S9. cancel_called, cancelled_caught, and which scope absorbs.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn s09_cancel_called_and_cancelled_caught() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        // Never cancelled.
        let scope = CancelScope::new();
        let h = scope.handle();
        scope.run(async { Ok::<_, Cancelled>(()) }).await.unwrap();
        assert_eq!((h.cancel_called(), h.cancelled_caught()), (false, false));

        // Cancelled explicitly, body returns the cancellation: caught.
        let scope = CancelScope::new();
        let h = scope.handle();
        let out = scope
            .run(async {
                current_scope().unwrap().cancel();
                checkpoint().await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!((h.cancel_called(), h.cancelled_caught()), (true, true));

        // Cancelled, but the body returned a value: called, not caught.
        let scope = CancelScope::new();
        let h = scope.handle();
        let out = scope
            .run(async {
                current_scope().unwrap().cancel();
                Ok::<_, Cancelled>(1)
            })
            .await;
        assert_eq!(out.unwrap(), Some(1));
        assert_eq!((h.cancel_called(), h.cancelled_caught()), (true, false));

        // Cancelled by its own deadline: called.
        let scope = CancelScope::new().with_deadline(t0 + ms(10));
        let h = scope.handle();
        scope
            .run(async {
                sleep(HOUR).await?;
                Ok::<_, Cancelled>(())
            })
            .await
            .unwrap();
        assert_eq!((h.cancel_called(), h.cancelled_caught()), (true, true));

        // Only inherited: not called, not caught.
        let outer = CancelScope::new();
        let oh = outer.handle();
        let inner = CancelScope::new();
        let ih = inner.handle();
        outer
            .run(async {
                oh.cancel();
                inner
                    .run(async {
                        checkpoint().await?;
                        Ok::<_, Cancelled>(())
                    })
                    .await
            })
            .await
            .unwrap();
        assert_eq!((ih.cancel_called(), ih.cancelled_caught()), (false, false));
        assert_eq!((oh.cancel_called(), oh.cancelled_caught()), (true, true));
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test]
async fn s09_outer_absorbs_inner_reports_caught_false() {
    common::leak_checked(async move {
        let outer = CancelScope::new();
        let oh = outer.handle();
        let inner = CancelScope::new();
        let ih = inner.handle();
        let live = LiveFutures::new();
        let out = outer
            .run(live.track(async {
                let r = inner
                    .run(live.track(async {
                        ih.cancel();
                        oh.cancel();
                        checkpoint().await?;
                        Ok::<_, Cancelled>(())
                    }))
                    .await;
                let e = r.unwrap_err();
                assert_eq!(e.scope(), oh.id());
                Err::<(), _>(e)
            }))
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!((ih.cancel_called(), ih.cancelled_caught()), (true, false));
        assert_eq!((oh.cancel_called(), oh.cancelled_caught()), (true, true));
        assert_eq!((live.created(), live.completed(), live.live()), (2, 2, 0));
    })
    .await
}

#[tokio::test]
async fn s09_absorption_decided_by_state_at_end_not_by_scope_named() {
    common::leak_checked(async move {
        // (a) The Cancelled names the inner scope, but the outer was cancelled before the inner
        // ended: the inner passes it on, the outer absorbs it.
        let outer = CancelScope::new();
        let oh = outer.handle();
        let inner = CancelScope::new();
        let ih = inner.handle();
        let out = outer
            .run(async {
                let r = inner
                    .run(async {
                        ih.cancel();
                        let e = here();
                        assert_eq!(e.scope(), ih.id());
                        oh.cancel();
                        Err::<(), _>(e)
                    })
                    .await;
                let e = r.unwrap_err();
                assert_eq!(e.scope(), ih.id(), "the error is passed on unchanged");
                Err::<(), _>(e)
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert!(!ih.cancelled_caught());
        assert!(oh.cancelled_caught());

        // (b) The Cancelled names the outer scope, but by the end the inner one raised its shield
        // and cancelled itself: the inner absorbs it; the outer body then finishes normally.
        let outer = CancelScope::new();
        let oh = outer.handle();
        let inner = CancelScope::new();
        let ih = inner.handle();
        let out = outer
            .run(async {
                let r = inner
                    .run(async {
                        oh.cancel();
                        let e = here();
                        assert_eq!(e.scope(), oh.id());
                        ih.set_shield(true);
                        ih.cancel();
                        Err::<(), _>(e)
                    })
                    .await?;
                assert_eq!(r, None);
                Ok::<_, Cancelled>("outer finished")
            })
            .await;
        assert_eq!(out.unwrap(), Some("outer finished"));
        assert!(ih.cancelled_caught());
        assert!(oh.cancel_called());
        assert!(!oh.cancelled_caught());

        // (c) A Cancelled naming some long-gone scope, returned from a scope that is cancelled
        // itself: absorbed there.
        let (stale, stale_scope) = stray_cancelled().await;
        let scope = CancelScope::new();
        let h = scope.handle();
        let out = scope
            .run(async move {
                current_scope().unwrap().cancel();
                Err::<(), _>(stale)
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert!(h.cancelled_caught());
        assert!(!stale_scope.cancelled_caught());

        // (d) The named scope was cancelled, but its shield went up before it ended and it was not
        // cancelled itself: it passes the error on even though it is named... by nobody visible.
        let outer = CancelScope::new();
        let oh = outer.handle();
        let out = outer
            .run(async {
                let inner = CancelScope::new();
                let ih = inner.handle();
                let r = inner
                    .run(async {
                        oh.cancel();
                        let e = here();
                        ih.set_shield(true); // hides the outer cancellation; not cancelled itself
                        Err::<(), _>(e)
                    })
                    .await;
                assert!(!ih.cancelled_caught());
                // Not effectively cancelled at its end: the Cancelled passes through as an error.
                let e = r.unwrap_err();
                assert_eq!(e.scope(), oh.id());
                Err::<(), _>(e)
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert!(oh.cancelled_caught());
    })
    .await
}

#[tokio::test]
async fn s09_shielded_cancelled_scope_absorbs_inside_cancelled_ancestor() {
    common::leak_checked(async move {
        let outer = CancelScope::new();
        let oh = outer.handle();
        oh.cancel();
        let out = outer
            .run(async {
                let shielded = CancelScope::new().shielded();
                let sh = shielded.handle();
                let r = shielded
                    .run(async {
                        sh.cancel();
                        checkpoint().await?;
                        Ok::<_, Cancelled>(())
                    })
                    .await;
                assert_eq!(r.unwrap(), None);
                assert!(sh.cancelled_caught());
                checkpoint().await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert!(oh.cancelled_caught());
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// S10. Timeout helpers.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn s10_move_on_after_and_at_give_no_value_on_timeout() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let out = move_on_after(ms(10), async {
            sleep(HOUR).await?;
            Ok::<_, Cancelled>(1)
        })
        .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(Instant::now(), t0 + ms(10));

        let out = move_on_at(t0 + ms(25), async {
            loop {
                sleep(ms(4)).await?;
            }
            #[allow(unreachable_code)]
            Ok::<u32, Cancelled>(1)
        })
        .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(Instant::now(), t0 + ms(25));

        // In time: the value.
        let out = move_on_after(ms(10), async {
            sleep(ms(9)).await?;
            Ok::<_, Cancelled>(2)
        })
        .await;
        assert_eq!(out.unwrap(), Some(2));
        assert_eq!(Instant::now(), t0 + ms(34));
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s10_fail_after_and_at_yield_timed_out_naming_the_deadline() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let out = fail_after(ms(10), async {
            sleep(HOUR).await?;
            Ok::<_, AppError>(())
        })
        .await;
        match out {
            Err(AppError::TimedOut(t)) => {
                assert_eq!(t.deadline(), Some(t0 + ms(10)));
                assert!(t.reason().is_deadline());
                assert_eq!(t.timeout(), Some(ms(10)));
                assert_eq!(t.to_string(), "timed out after 10ms");
            }
            other => panic!("expected TimedOut, got {other:?}"),
        }
        assert_eq!(Instant::now(), t0 + ms(10));

        let out: Result<(), io::Error> = fail_at(t0 + ms(30), async {
            sleep(HOUR).await?;
            Ok(())
        })
        .await;
        let err = out.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let t = err.get_ref().unwrap().downcast_ref::<TimedOut>().unwrap();
        assert_eq!(t.deadline(), Some(t0 + ms(30)));
        assert_eq!(t.timeout(), None);
        assert_eq!(t.to_string(), "timed out: the scope's deadline passed");
        assert!(
            err.as_cancelled().is_none(),
            "a timeout is not a cancellation echo"
        );
        assert_eq!(Instant::now(), t0 + ms(30));

        // In time: the value, and the body's own errors pass unchanged.
        let out = fail_after(ms(10), async { Ok::<_, AppError>(5) }).await;
        assert_eq!(out.unwrap(), 5);
        let out = fail_after(ms(10), async {
            sleep(ms(1)).await?;
            Err::<(), _>(AppError::Other("db down"))
        })
        .await;
        assert!(matches!(out, Err(AppError::Other("db down"))));
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s10_body_finishing_before_observing_cancellation_returns_value() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let live = LiveFutures::new();
        // The deadline passes during a wait that is not a cancellation point.
        let out = move_on_after(
            ms(10),
            live.track(async {
                tokio::time::sleep(ms(20)).await;
                Ok::<_, Cancelled>(5)
            }),
        )
        .await;
        assert_eq!(out.unwrap(), Some(5));
        assert_eq!(Instant::now(), t0 + ms(20));

        let out = fail_after(
            ms(10),
            live.track(async {
                tokio::time::sleep(ms(20)).await;
                assert!(is_cancelled());
                Ok::<_, AppError>(6)
            }),
        )
        .await;
        assert_eq!(out.unwrap(), 6);
        assert_eq!(Instant::now(), t0 + ms(40));

        // Cancelled before entry, the body never checks.
        let scope = CancelScope::new();
        let h = scope.handle();
        h.cancel();
        let out = scope.run(live.track(async { Ok::<_, Cancelled>(7) })).await;
        assert_eq!(out.unwrap(), Some(7));
        assert_eq!((h.cancel_called(), h.cancelled_caught()), (true, false));
        // Every body ran to completion: none was dropped early.
        assert_eq!((live.created(), live.completed(), live.live()), (3, 3, 0));
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s10_explicit_cancel_of_fail_scope_yields_timed_out_explicit() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let out = fail_after(HOUR, async {
            current_scope().unwrap().cancel_with("operator");
            checkpoint().await?;
            Ok::<_, AppError>(())
        })
        .await;
        match out {
            Err(AppError::TimedOut(t)) => {
                assert_eq!(t.reason().message(), Some("operator"));
                assert_eq!(t.deadline(), Some(t0 + HOUR));
                assert!(!t.reason().is_deadline());
            }
            other => panic!("expected TimedOut(Explicit), got {other:?}"),
        }
        assert_eq!(Instant::now(), t0);

        // From another task, while parked.
        let out: Result<(), io::Error> = fail_at(t0 + HOUR, async {
            let scope = current_scope().unwrap();
            let canceller = tokio::spawn(async move {
                tokio::time::sleep(ms(5)).await;
                scope.cancel();
            });
            let r = sleep(HOUR).await;
            canceller.await.unwrap();
            r?;
            Ok(())
        })
        .await;
        let err = out.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let t = err.get_ref().unwrap().downcast_ref::<TimedOut>().unwrap();
        assert!(matches!(t.reason(), CancelReason::Explicit(None)));
        assert_eq!(Instant::now(), t0 + ms(5));
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s10_helpers_pass_an_outer_cancellation_outward() {
    common::leak_checked(async move {
        let outer = CancelScope::new();
        let oh = outer.handle();
        oh.cancel_with("outer");
        let out = outer
            .run(async {
                let r = move_on_after(HOUR, async {
                    checkpoint().await?;
                    Ok::<_, Cancelled>(())
                })
                .await;
                assert_eq!(r.as_ref().unwrap_err().scope(), oh.id());
                // A fail scope passes it on as the cancellation, not as a timeout.
                let f = fail_after(HOUR, async {
                    checkpoint().await?;
                    Ok::<_, AppError>(())
                })
                .await;
                match f {
                    Err(AppError::Cancelled(c)) => assert_eq!(c.scope(), oh.id()),
                    other => panic!("expected the outer cancellation, got {other:?}"),
                }
                r
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert!(oh.cancelled_caught());
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s10_nested_helpers_earliest_deadline_wins() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        // A nearer inner fail scope fires first.
        let out = move_on_after(ms(50), async {
            let r = fail_after(ms(20), async {
                sleep(HOUR).await?;
                Ok::<_, AppError>(())
            })
            .await;
            assert!(matches!(r, Err(AppError::TimedOut(_))));
            assert_eq!(Instant::now(), t0 + ms(20));
            Ok::<_, AppError>("outer went on")
        })
        .await;
        assert_eq!(out.unwrap(), Some("outer went on"));

        // Both expire at the same instant: the outer absorbs, the inner passes it on.
        let t1 = Instant::now();
        let out = move_on_after(ms(20), async {
            let r = move_on_after(ms(20), async {
                sleep(HOUR).await?;
                Ok::<_, Cancelled>(())
            })
            .await;
            assert!(
                r.is_err(),
                "the inner scope must pass on the outer cancellation"
            );
            r
        })
        .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(Instant::now(), t1 + ms(20));
        settle_tasks(0).await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// S11. Cooperative delivery at cancellation points only.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn s11_each_cancellation_point_kind_reports() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        // Already cancelled when reached.
        let out = CancelScope::new()
            .run(async {
                let id = id_here();
                current_scope().unwrap().cancel();
                assert_eq!(check_cancelled().unwrap_err().scope(), id);
                assert_eq!(checkpoint().await.unwrap_err().scope(), id);
                assert_eq!(cancelled().await.scope(), id);
                assert_eq!(sleep(HOUR).await.unwrap_err().scope(), id);
                assert_eq!(sleep_until(t0 + HOUR).await.unwrap_err().scope(), id);
                assert_eq!(pending::<()>().cancellable().await.unwrap_err().scope(), id);
                // A ready future made cancellable still reports (it is a cancellation point).
                assert!(std::future::ready(1).cancellable().await.is_err());
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(Instant::now(), t0);

        // Cancelled while waiting: each waiting point wakes at the cancel (t + 10 ms).
        for kind in 0..4 {
            let start = Instant::now();
            let scope = CancelScope::new();
            let canceller = at(start + ms(10), {
                let h = scope.handle();
                move || h.cancel()
            });
            let out = scope
                .run(async move {
                    match kind {
                        0 => Err(cancelled().await),
                        1 => sleep(HOUR).await,
                        2 => sleep_until(start + HOUR).await,
                        _ => pending::<()>().cancellable().await,
                    }
                })
                .await;
            assert_eq!(out.unwrap(), None, "kind {kind}");
            assert_eq!(Instant::now(), start + ms(10), "kind {kind}");
            canceller.await.unwrap();
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s11_points_pass_when_not_cancelled() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let out = CancelScope::new()
            .run(async {
                check_cancelled()?;
                checkpoint().await?;
                sleep(ms(10)).await?;
                assert_eq!(Instant::now(), t0 + ms(10));
                sleep_until(t0 + ms(15)).await?;
                assert_eq!(Instant::now(), t0 + ms(15));
                let v = async { 4 }.cancellable().await?;
                Ok::<_, Cancelled>(v)
            })
            .await;
        assert_eq!(out.unwrap(), Some(4));
        // Outside any scope: never cancelled; waiting for cancellation never ends.
        assert!(check_cancelled().is_ok());
        assert!(checkpoint().await.is_ok());
        assert!(!is_cancelled());
        assert!(
            tokio::time::timeout(HOUR, cancelled()).await.is_err(),
            "cancelled() completed outside any scope"
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s11_cancellable_drops_inner_on_cancel() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let live = LiveFutures::new();
        let scope = CancelScope::new();
        let canceller = at(t0 + ms(10), {
            let h = scope.handle();
            move || h.cancel()
        });
        let out = scope
            .run(async {
                let mut wrapped = pin!(live.track(pending::<()>()).cancellable());
                assert_eq!(live.live(), 1);
                let r = (&mut wrapped).await;
                // Dropped by the wrapper itself, before the wrapper is dropped.
                assert_eq!(live.live(), 0);
                assert_eq!(live.completed(), 0);
                assert_eq!(Instant::now(), t0 + ms(10));
                r?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), None);
        canceller.await.unwrap();

        // Completes normally when not cancelled: value returned, future completed.
        let out = CancelScope::new()
            .run(async {
                let v = live
                    .track(async {
                        tokio::time::sleep(ms(5)).await;
                        9
                    })
                    .cancellable()
                    .await?;
                Ok::<_, Cancelled>(v)
            })
            .await;
        assert_eq!(out.unwrap(), Some(9));
        assert_eq!((live.created(), live.completed(), live.live()), (2, 1, 0));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s11_code_between_points_is_never_interrupted() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let live = LiveFutures::new();
        let scope = CancelScope::new().with_deadline(t0 + ms(10));
        let handle = scope.handle();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sender = at(t0 + ms(70), move || tx.send(8).unwrap());
        let out = scope
            .run(async {
                // tokio's own awaits are not cancellation points: they complete.
                live.track(tokio::time::sleep(ms(50))).await;
                assert_eq!(Instant::now(), t0 + ms(50));
                assert!(is_cancelled(), "the deadline fired meanwhile");
                let v = live.track(rx).await.unwrap();
                assert_eq!(Instant::now(), t0 + ms(70));
                // Reported at the next cancellation point.
                checkpoint().await?;
                Ok::<_, Cancelled>(v)
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert!(handle.cancelled_caught());
        assert_eq!((live.created(), live.completed(), live.live()), (2, 2, 0));
        sender.await.unwrap();
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s11_is_cancelled_sync_query() {
    common::leak_checked(async move {
        assert!(!is_cancelled());
        let scope = CancelScope::new();
        let handle = scope.handle();
        let out = scope
            .run(async {
                assert!(!is_cancelled());
                let plain = tokio::spawn(async { is_cancelled() });
                let carried = tokio::spawn(carry_scope(async {
                    cancelled().await;
                    is_cancelled()
                }));
                handle.cancel();
                // A query, not a cancellation point: it does not end anything and can be repeated.
                assert!(is_cancelled());
                assert!(is_cancelled());
                assert!(!plain.await.unwrap());
                assert!(carried.await.unwrap());
                // A blocking-style loop checks it between units of work.
                let mut done = 0;
                while !is_cancelled() {
                    done += 1;
                }
                assert_eq!(done, 0);
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        assert!(!is_cancelled());
    })
    .await
}

#[tokio::test]
async fn s11_checkpoint_spends_coop_budget() {
    common::leak_checked(async move {
        // A loop of checkpoints (nothing else awaited) must let other tasks run: tokio's budget
        // is 128 units per poll, so the spawned task runs within a few hundred checkpoints.
        let flag = Arc::new(AtomicBool::new(false));
        let looping = tokio::spawn({
            let flag = flag.clone();
            CancelScope::new().run(async move {
                let mut checkpoints = 0u32;
                while !flag.load(Ordering::SeqCst) {
                    checkpoint().await?;
                    checkpoints += 1;
                    assert!(
                        checkpoints < 100_000,
                        "checkpoint never yielded to the scheduler"
                    );
                }
                Ok::<_, Cancelled>(checkpoints)
            })
        });
        let setter = tokio::spawn({
            let flag = flag.clone();
            async move { flag.store(true, Ordering::SeqCst) }
        });
        let checkpoints = looping.await.unwrap().unwrap().unwrap();
        assert!(checkpoints > 0);
        setter.await.unwrap();
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// S12. Hard delivery.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn s12_hard_polls_once_more_then_drops() {
    common::leak_checked(async move {
        let live = LiveFutures::new();
        let polls = Arc::new(AtomicUsize::new(0));
        let scope = CancelScope::new().hard();
        let handle = scope.handle();
        let body = live.track({
            let polls = polls.clone();
            std::future::poll_fn(move |_| {
                // Cancels its own scope in the first poll, never completes, registers no waker.
                if polls.fetch_add(1, Ordering::SeqCst) == 0 {
                    current_scope().unwrap().cancel();
                }
                Poll::<Result<(), Cancelled>>::Pending
            })
        });
        let mut fut = pin!(scope.run(body));
        let out = (&mut fut).await;
        // Dropped in the poll that returned, not when the scope future is dropped.
        assert_eq!(live.live(), 0);
        assert_eq!(live.completed(), 0);
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        assert_eq!(out.unwrap(), None);
        assert_eq!(
            (handle.cancel_called(), handle.cancelled_caught()),
            (true, true)
        );
    })
    .await
}

#[tokio::test]
async fn s12_hard_cancelled_before_entry_polls_once_and_drops() {
    common::leak_checked(async move {
        let live = LiveFutures::new();
        let polls = Arc::new(AtomicUsize::new(0));
        let scope = CancelScope::new().hard();
        scope.handle().cancel();
        let mut fut = pin!(scope.run(live.track(parked_body(polls.clone()))));
        let out = (&mut fut).await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        assert_eq!(live.live(), 0);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s12_hard_cancel_from_another_task_wakes_and_drops() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let live = LiveFutures::new();
        let polls = Arc::new(AtomicUsize::new(0));
        let scope = CancelScope::new().hard();
        let handle = scope.handle();
        let canceller = at(t0 + ms(10), {
            let handle = handle.clone();
            move || handle.cancel_with("hard stop")
        });
        let mut fut = pin!(scope.run(live.track(parked_body(polls.clone()))));
        let out = (&mut fut).await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(Instant::now(), t0 + ms(10));
        assert_eq!(
            polls.load(Ordering::SeqCst),
            2,
            "one poll at entry, one more at the wake-up"
        );
        assert_eq!(live.live(), 0);
        assert!(handle.cancelled_caught());
        canceller.await.unwrap();
    })
    .await
}

#[tokio::test]
async fn s12_hard_cancel_from_another_thread_wakes_and_drops() {
    common::leak_checked(async move {
        let live = LiveFutures::new();
        let polls = Arc::new(AtomicUsize::new(0));
        let scope = CancelScope::new().hard();
        let handle = scope.handle();
        let (parked_tx, parked_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            parked_rx.recv().unwrap();
            handle.cancel();
        });
        let body = live.track({
            let polls = polls.clone();
            std::future::poll_fn(move |_| {
                if polls.fetch_add(1, Ordering::SeqCst) == 0 {
                    parked_tx.send(()).unwrap();
                }
                Poll::<Result<(), Cancelled>>::Pending
            })
        });
        let mut fut = pin!(scope.run(body));
        let out = (&mut fut).await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        assert_eq!(live.live(), 0);
        thread.join().unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_hard_cancel_from_another_thread_multi_thread() {
    common::leak_checked(async move {
        bounded(async {
            let live = LiveFutures::new();
            let polls = Arc::new(AtomicUsize::new(0));
            let scope = CancelScope::new().hard();
            let handle = scope.handle();
            let task = tokio::spawn(scope.run(live.track(parked_body(polls.clone()))));
            wait_until("the body to be polled", || {
                polls.load(Ordering::SeqCst) == 1
            })
            .await;
            std::thread::spawn(move || handle.cancel()).join().unwrap();
            assert_eq!(task.await.unwrap().unwrap(), None);
            assert_eq!(polls.load(Ordering::SeqCst), 2);
            assert_eq!(live.live(), 0);
            settle_tasks(0).await;
        })
        .await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s12_hard_deadline_drops_body_parked_anywhere() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let live = LiveFutures::new();
        let scope = CancelScope::new().with_timeout(ms(10)).hard();
        let handle = scope.handle();
        let mut fut = pin!(scope.run(live.track(async {
            // Not a cancellation point: only hard delivery can stop this.
            tokio::time::sleep(HOUR).await;
            Ok::<_, Cancelled>(())
        })));
        let out = (&mut fut).await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(Instant::now(), t0 + ms(10));
        assert_eq!(live.live(), 0);
        assert!(handle.reason().unwrap().is_deadline());
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s12_hard_output_propagates_outer_cancellation() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let live = LiveFutures::new();
        let polls = Arc::new(AtomicUsize::new(0));
        let outer = CancelScope::new();
        let oh = outer.handle();
        let inner = CancelScope::new().hard();
        let ih = inner.handle();
        let canceller = at(t0 + ms(10), {
            let oh = oh.clone();
            move || oh.cancel_with("outer")
        });
        let out = outer
            .run(async {
                let r = inner.run(live.track(parked_body(polls.clone()))).await;
                assert_eq!(live.live(), 0);
                assert_eq!(Instant::now(), t0 + ms(10));
                // Not absorbed by the inner scope: an ancestor's cancellation passes out.
                let e = r.unwrap_err();
                assert_eq!(e.scope(), oh.id());
                assert_eq!(e.reason().message(), Some("outer"));
                Err::<(), _>(e)
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        assert_eq!((ih.cancel_called(), ih.cancelled_caught()), (false, false));
        assert!(oh.cancelled_caught());
        canceller.await.unwrap();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s12_hard_body_finishing_on_last_poll_keeps_its_result() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        // The last poll observes the cancellation and returns it: absorbed as usual.
        let scope = CancelScope::new().with_timeout(ms(10)).hard();
        let out = scope
            .run(async {
                sleep(HOUR).await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(Instant::now(), t0 + ms(10));

        // The last poll finishes with a value: the value is returned.
        let scope = CancelScope::new().hard();
        let h = scope.handle();
        let polls = Arc::new(AtomicUsize::new(0));
        let out = scope
            .run({
                let polls = polls.clone();
                std::future::poll_fn(move |_| {
                    if polls.fetch_add(1, Ordering::SeqCst) == 0 {
                        h.cancel();
                        Poll::Pending
                    } else {
                        Poll::Ready(Ok::<_, Cancelled>("finished anyway"))
                    }
                })
            })
            .await;
        assert_eq!(out.unwrap(), Some("finished anyway"));
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s12_hard_shielded_scope_ignores_outer_cancellation() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let live = LiveFutures::new();
        let outer = CancelScope::new();
        let oh = outer.handle();
        let canceller = at(t0 + ms(10), move || oh.cancel());
        let out = outer
            .run(async {
                let r = CancelScope::new()
                    .hard()
                    .shielded()
                    .run(live.track(async {
                        tokio::time::sleep(ms(30)).await;
                        Ok::<_, Cancelled>("shielded")
                    }))
                    .await?;
                assert_eq!(Instant::now(), t0 + ms(30));
                checkpoint().await?;
                Ok::<_, Cancelled>(r)
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!((live.completed(), live.live()), (1, 0));
        canceller.await.unwrap();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn s12_cooperative_scope_never_drops_body_early() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        let live = LiveFutures::new();
        let scope = CancelScope::new().with_timeout(ms(10));
        let out = scope
            .run(live.track(async {
                tokio::time::sleep(ms(30)).await;
                checkpoint().await?;
                Ok::<_, Cancelled>(())
            }))
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(Instant::now(), t0 + ms(30));
        assert_eq!((live.completed(), live.live()), (1, 0));
        settle_tasks(0).await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// S13. `is_cancelled()` flat in depth (semantics here; cost in benches/).
// ---------------------------------------------------------------------------------------------

type Body = Pin<Box<dyn Future<Output = Result<Option<u32>, Cancelled>>>>;

/// Wraps `body` in `depth` nested `CancelScope`s; returns the chain and the scopes' handles,
/// outermost first.
fn nest(depth: usize, body: Body) -> (Body, Vec<ScopeHandle>) {
    let mut fut = body;
    let mut handles = Vec::with_capacity(depth);
    for _ in 0..depth {
        let scope = CancelScope::new();
        handles.push(scope.handle());
        fut = Box::pin(async move { scope.run(fut).await.map(Option::flatten) });
    }
    handles.reverse();
    (fut, handles)
}

/// Wraps `body` in `depth` nested helper scopes (`move_on_at`).
fn nest_helpers(depth: usize, deadline: Instant, body: Body) -> Body {
    let mut fut = body;
    for _ in 0..depth {
        fut = Box::pin(async move { move_on_at(deadline, fut).await.map(Option::flatten) });
    }
    fut
}

/// Stack for polling deeply nested scopes: the chain's `poll` recurses once per level, as
/// any nested future does. Measured per level (this crate, tokio 1.54): about 2.4 KB in
/// debug and 450 B in release for a `CancelScope::run` level, against 256 B / 48 B for a
/// plain boxed `async` level, so 10,000 levels need about 24 MB in debug (4.5 MB in
/// release) and do not fit the default 2 MiB. Drop glue costs about 220 B / 48 B per level.
/// The crate's own work on the chain, which must not recurse (propagating a cancellation
/// down it, releasing its nodes), runs on threads with the default 2 MiB stack
/// ([`DEFAULT_STACK`]) in `s13_ten_thousand_nested_scopes`.
const DEEP_POLL_STACK: usize = 128 << 20;

#[test]
fn s13_is_cancelled_flat_in_depth() {
    on_thread(DEEP_POLL_STACK, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(common::leak_checked(async {
            const DEPTH: usize = 1000;
            let observed = Arc::new(AtomicUsize::new(0));
            let (outer_tx, outer_rx) = std::sync::mpsc::channel::<ScopeHandle>();
            let body: Body = Box::pin({
                let observed = observed.clone();
                async move {
                    assert!(!is_cancelled());
                    assert!(check_cancelled().is_ok());
                    checkpoint().await?;
                    let outermost: ScopeHandle = outer_rx.recv().unwrap();
                    // Cancel the scope 999 levels up: visible at once at depth 1000.
                    outermost.cancel_with("top");
                    assert!(is_cancelled());
                    let e = here();
                    assert_eq!(e.scope(), outermost.id());
                    assert_eq!(e.reason().message(), Some("top"));
                    observed.store(1, Ordering::SeqCst);
                    Err(e)
                }
            });
            let (chain, handles) = nest(DEPTH, body);
            outer_tx.send(handles[0].clone()).unwrap();
            assert_eq!(chain.await.unwrap(), None);
            assert_eq!(observed.load(Ordering::SeqCst), 1);
            assert!(handles[0].cancelled_caught());
            assert!(
                handles[1..]
                    .iter()
                    .all(|h| h.is_cancelled() && !h.cancelled_caught())
            );

            // A shield in the middle of the chain.
            let (mid_tx, mid_rx) = std::sync::mpsc::channel::<(ScopeHandle, ScopeHandle)>();
            let body: Body = Box::pin(async move {
                let (outermost, middle) = mid_rx.recv().unwrap();
                outermost.cancel();
                assert!(is_cancelled());
                middle.set_shield(true);
                assert!(!is_cancelled());
                middle.set_shield(false);
                assert!(is_cancelled());
                Ok(Some(1))
            });
            let (chain, handles) = nest(DEPTH, body);
            mid_tx
                .send((handles[0].clone(), handles[DEPTH / 2].clone()))
                .unwrap();
            assert_eq!(chain.await.unwrap(), Some(1));

            // Helper scopes, still unlinked in their first poll: a deadline past at entry at
            // the top is visible 1000 levels down, and in later polls too.
            let past = Instant::now();
            let body: Body = Box::pin(async {
                assert!(is_cancelled());
                tokio::task::yield_now().await;
                assert!(is_cancelled());
                checkpoint().await?;
                Ok(Some(2))
            });
            let chain = nest_helpers(1, past, nest_helpers(DEPTH - 1, past + HOUR, body));
            assert_eq!(chain.await.unwrap(), None);
        }));
        drop(rt);
    });
}

#[test]
fn s13_ten_thousand_nested_scopes() {
    const DEPTH: usize = 10_000;
    on_thread(DEEP_POLL_STACK, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(common::leak_checked(async {
            // Entered, checkpointed, cancelled (from a 2 MiB thread) and ended.
            let (outer_tx, outer_rx) = std::sync::mpsc::channel::<ScopeHandle>();
            let body: Body = Box::pin(async move {
                assert!(!is_cancelled());
                checkpoint().await?;
                let outermost = outer_rx.recv().unwrap();
                on_thread(DEFAULT_STACK, {
                    let outermost = outermost.clone();
                    move || outermost.cancel()
                });
                assert!(is_cancelled());
                let e = checkpoint().await.unwrap_err();
                assert_eq!(e.scope(), outermost.id());
                Err(e)
            });
            let (chain, handles) = nest(DEPTH, body);
            outer_tx.send(handles[0].clone()).unwrap();
            assert_eq!(chain.await.unwrap(), None);
            assert!(handles[0].cancelled_caught());
            assert!(!handles[DEPTH - 1].cancelled_caught());
            // Releasing the chain's nodes on a 2 MiB stack.
            on_thread(DEFAULT_STACK, move || drop(handles));

            // Parked 10,000 deep, cancelled from a 2 MiB thread, then dropped before finishing.
            let live = LiveFutures::new();
            let body: Body = Box::pin(live.track(async {
                let e = cancelled().await;
                Err(e)
            }));
            let (mut chain, handles) = nest(DEPTH, body);
            assert!(poll_once(&mut chain).await.is_pending());
            let innermost = handles[DEPTH - 1].clone();
            assert!(!innermost.is_cancelled());
            on_thread(DEFAULT_STACK, {
                let outermost = handles[0].clone();
                move || outermost.cancel()
            });
            assert!(innermost.is_cancelled());
            assert_eq!(live.live(), 1);
            drop(chain);
            assert_eq!(live.live(), 0);
            assert!(handles.iter().all(|h| !h.cancelled_caught()));
            on_thread(DEFAULT_STACK, move || drop(handles));
        }));
        drop(rt);
    });
}

// ---------------------------------------------------------------------------------------------
// S15. `Cancelled` recognised inside error values; strays pass through as errors.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn s15_cancelled_recognised_inside_io_error() {
    common::leak_checked(async move {
        let scope = CancelScope::new();
        scope.handle().cancel();
        let out: Result<Option<()>, io::Error> = scope
            .run(async {
                checkpoint().await?; // `?` converts Cancelled into io::Error
                Ok(())
            })
            .await;
        assert!(out.unwrap().is_none());

        // Through a source chain inside the io::Error.
        let scope = CancelScope::new();
        scope.handle().cancel();
        let out: Result<Option<()>, io::Error> = scope
            .run(async {
                let c = checkpoint().await.unwrap_err();
                Err(io::Error::other(Outer(Context {
                    what: "reading",
                    source: c,
                })))
            })
            .await;
        assert!(out.unwrap().is_none());

        // Recognition itself.
        let c = cancelled_value().await;
        assert!(io::Error::from(c.clone()).as_cancelled().is_some());
        let chained = io::Error::other(Context {
            what: "x",
            source: c.clone(),
        });
        assert_eq!(chained.as_cancelled().unwrap().scope(), c.scope());
        assert!(io::Error::other("plain").as_cancelled().is_none());
        assert!(
            io::Error::from(io::ErrorKind::Interrupted)
                .as_cancelled()
                .is_none()
        );
    })
    .await
}

/// A `Cancelled` to inspect.
async fn cancelled_value() -> Cancelled {
    stray_cancelled().await.0
}

#[tokio::test]
async fn s15_cancelled_recognised_inside_boxed_errors() {
    common::leak_checked(async move {
        let scope = CancelScope::new();
        scope.handle().cancel();
        let out: Result<Option<()>, Box<dyn Error + Send + Sync>> = scope
            .run(async {
                checkpoint().await?;
                Ok(())
            })
            .await;
        assert!(out.unwrap().is_none());

        let scope = CancelScope::new();
        scope.handle().cancel();
        let out: Result<Option<()>, Box<dyn Error>> = scope
            .run(async {
                let c = here();
                Err(Box::new(Outer(Context {
                    what: "parsing",
                    source: c,
                })) as Box<dyn Error>)
            })
            .await;
        assert!(out.unwrap().is_none());

        let c = cancelled_value().await;
        let boxed: Box<dyn Error + Send + Sync> = Box::new(c.clone());
        assert!(boxed.as_cancelled().is_some());
        let boxed: Box<dyn Error + Send + Sync> = Box::new(Outer(Context {
            what: "y",
            source: c.clone(),
        }));
        assert_eq!(boxed.as_cancelled().unwrap().scope(), c.scope());
        let boxed: Box<dyn Error + Send + Sync> = "plain".into();
        assert!(boxed.as_cancelled().is_none());
    })
    .await
}

#[tokio::test]
async fn s15_cancelled_recognised_in_user_error_enum() {
    common::leak_checked(async move {
        let scope = CancelScope::new();
        let h = scope.handle();
        h.cancel();
        let out = scope
            .run(async {
                checkpoint().await?;
                Ok::<(), AppError>(())
            })
            .await;
        assert!(out.unwrap().is_none());
        assert!(h.cancelled_caught());
    })
    .await
}

#[cfg(feature = "anyhow")]
#[tokio::test]
async fn s15_cancelled_recognised_inside_anyhow() {
    common::leak_checked(async move {
        use anyhow::Context as _;
        let scope = CancelScope::new();
        scope.handle().cancel();
        let out: Result<Option<()>, anyhow::Error> = scope
            .run(async {
                checkpoint().await.context("while waiting")?;
                Ok(())
            })
            .await;
        assert!(out.unwrap().is_none());
        let c = cancelled_value().await;
        assert!(anyhow::Error::from(c).as_cancelled().is_some());
        assert!(anyhow::anyhow!("plain").as_cancelled().is_none());
    })
    .await
}

#[tokio::test]
async fn s15_other_errors_are_never_absorbed() {
    common::leak_checked(async move {
        // Even in a cancelled scope, an error that is not a cancellation is the body's failure.
        let scope = CancelScope::new();
        let h = scope.handle();
        h.cancel();
        let out = scope
            .run(async { Err::<(), _>(AppError::Other("disk full")) })
            .await;
        assert!(matches!(out, Err(AppError::Other("disk full"))));
        assert!(!h.cancelled_caught());

        let scope = CancelScope::new();
        scope.handle().cancel();
        let out: Result<Option<()>, io::Error> = scope
            .run(async { Err(io::Error::from(io::ErrorKind::TimedOut)) })
            .await;
        assert_eq!(out.unwrap_err().kind(), io::ErrorKind::TimedOut);
    })
    .await
}

#[tokio::test]
async fn s15_stray_cancelled_passes_through_as_err() {
    common::leak_checked(async move {
        let (stray, origin) = stray_cancelled().await;
        assert!(origin.cancel_called());
        assert!(!origin.cancelled_caught());

        // Returned from a scope that is not cancelled: an error naming its origin, not a panic.
        let scope = CancelScope::new();
        let h = scope.handle();
        let out = scope
            .run({
                let stray = stray.clone();
                async move { Err::<(), _>(stray) }
            })
            .await;
        let e = out.unwrap_err();
        assert_eq!(e.scope(), origin.id());
        assert_eq!(e.reason().message(), Some("long ago"));
        assert!(!h.cancelled_caught());

        // Through helper scopes that did not time out.
        let out = move_on_after(HOUR, {
            let stray = stray.clone();
            async move { Err::<(), _>(stray) }
        })
        .await;
        assert_eq!(out.unwrap_err().scope(), origin.id());
        let out = fail_after(HOUR, {
            let stray = stray.clone();
            async move { Err::<(), _>(AppError::from(stray)) }
        })
        .await;
        assert!(matches!(out, Err(AppError::Cancelled(ref c)) if c.scope() == origin.id()));

        // Carried across tasks by a channel.
        let (tx, rx) = tokio::sync::oneshot::channel::<Cancelled>();
        tx.send(stray).unwrap();
        let task = tokio::spawn(async move {
            let stray = rx.await.unwrap();
            CancelScope::new()
                .run(async move { Err::<(), _>(io::Error::from(stray)) })
                .await
        });
        let e = task.await.unwrap().unwrap_err();
        assert_eq!(e.as_cancelled().unwrap().scope(), origin.id());
        settle_tasks(0).await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// R3. The deadline service exists only while a deadline is armed.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn r3_deadline_service_runs_only_while_a_deadline_is_armed() {
    common::leak_checked(async move {
        let t0 = Instant::now();
        assert_eq!(alive_tasks(), 0);
        // A helper scope whose body is ready at once arms nothing and spawns nothing.
        let out = move_on_after(HOUR, async { Ok::<_, Cancelled>(1) }).await;
        assert_eq!(out.unwrap(), Some(1));
        assert_eq!(alive_tasks(), 0);

        // While a deadline is armed: one service task, shared by nested deadlines.
        let out = CancelScope::new()
            .with_deadline(t0 + ms(50))
            .run(async {
                settle_tasks(1).await;
                let inner = move_on_at(t0 + ms(20), async {
                    sleep(HOUR).await?;
                    Ok::<_, Cancelled>(())
                })
                .await?;
                assert_eq!(inner, None);
                assert_eq!(Instant::now(), t0 + ms(20));
                // The outer deadline is still armed.
                settle_tasks(1).await;
                sleep(HOUR).await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), None);
        assert_eq!(Instant::now(), t0 + ms(50));
        settle_tasks(0).await;

        // A deadline that fired is no longer armed: the service leaves even though the scope
        // still runs.
        let out = move_on_after(ms(10), async {
            tokio::time::sleep(ms(20)).await;
            assert!(is_cancelled());
            settle_tasks(0).await;
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));

        // A deadline removed: the service leaves too.
        let out = CancelScope::new()
            .with_timeout(HOUR)
            .run(async {
                settle_tasks(1).await;
                current_scope().unwrap().set_deadline(None);
                settle_tasks(0).await;
                // And comes back when one is armed again.
                current_scope()
                    .unwrap()
                    .set_deadline(Some(Instant::now() + ms(5)));
                settle_tasks(1).await;
                sleep(HOUR).await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), None);
        settle_tasks(0).await;

        // A scope dropped before its deadline disarms it.
        let mut fut = Box::pin(CancelScope::new().with_timeout(HOUR).run(async {
            pending::<()>().await;
            Ok::<_, Cancelled>(())
        }));
        assert!(poll_once(&mut fut).await.is_pending());
        settle_tasks(1).await;
        drop(fut);
        settle_tasks(0).await;

        // A helper scope whose body waits without needing a node keeps its deadline in
        // tokio's timer, as `tokio::time::timeout` does: no service.
        let mut fut = Box::pin(move_on_after(HOUR, async {
            sleep(HOUR).await?;
            pending::<()>().await;
            Ok::<_, Cancelled>(())
        }));
        assert!(poll_once(&mut fut).await.is_pending());
        settle_tasks(0).await;
        drop(fut);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_deadline_service_runs_only_while_a_deadline_is_armed_multi_thread() {
    common::leak_checked(async move {
        bounded(async {
            settle_tasks(0).await;
            let out = CancelScope::new()
                .with_timeout(HOUR)
                .run(async {
                    settle_tasks(1).await;
                    current_scope().unwrap().cancel();
                    checkpoint().await?;
                    Ok::<_, Cancelled>(())
                })
                .await;
            assert_eq!(out.unwrap(), None);
            settle_tasks(0).await;
        })
        .await;
    })
    .await
}
