//! SPEC R4, scale (run in release mode: `cargo test --release --all-features --test scale`):
//!
//! - one nursery through a million children, each run exactly once (counted), none alive
//!   after (N1, N14);
//! - scopes nested ten thousand deep: a checkpoint at the bottom, the effective deadline at
//!   the bottom (the nearest of several), the nearest deadline firing at the bottom, a cancel
//!   of the outermost reaching the bottom with its reason, and the chain's nodes released
//!   without recursion (DESIGN invariant 6);
//! - a cancellation storm: ten thousand parked children cancelled while another task spawns
//!   ten thousand more into their nursery and while a dropped wait-mode nursery's ten
//!   thousand children are adopted; every child is counted: it ran its cancellation path to
//!   the end or was refused at spawn with a typed error.
//!
//! Every test also ends with zero live child futures (counted) and no task on the runtime
//! (SPEC R3, [`common::leak_checked`]). No timing assertion: time only bounds a hang.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::task::Poll;
use std::time::Duration;

use common::{LiveFutures, leak_checked, on_thread, wait_until};
use tokio::time::Instant;
use tokio_nursery::{
    CancelScope, Cancelled, EffectiveDeadline, Nursery, NurseryHandle, ScopeHandle, SpawnError,
    cancelled, checkpoint, current_deadline, current_scope, is_cancelled, nursery, sleep,
};

// ---------------------------------------------------------------------------------------------
// A million children through one nursery.
// ---------------------------------------------------------------------------------------------

const MILLION: usize = 1_000_000;

/// Asserts that every slot of `runs` is exactly 1: each child ran once, none twice, none lost.
fn assert_each_ran_once(runs: &[AtomicU8]) {
    let mut missing = 0;
    let mut twice = 0;
    for run in runs {
        match run.load(SeqCst) {
            0 => missing += 1,
            1 => {}
            _ => twice += 1,
        }
    }
    assert_eq!(
        (missing, twice),
        (0, 0),
        "children that never ran, children that ran more than once"
    );
}

/// A child that records its run in its slot, passes a cancellation point and ends.
fn child(
    runs: &Arc<Vec<AtomicU8>>,
    live: &LiveFutures,
    i: usize,
) -> impl Future<Output = Result<(), Cancelled>> + Send + 'static {
    let runs = runs.clone();
    live.track(async move {
        runs[i].fetch_add(1, SeqCst);
        checkpoint().await?;
        Ok(())
    })
}

/// A million children spawned with `spawn` (handles dropped at once) on a multi-thread
/// runtime. The body spawns them in waves of 10,000 and lets each wave drain before the
/// next (memory stays flat: a finished child whose handle was dropped keeps nothing, N14);
/// the nursery is awaited to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn million_children() {
    leak_checked(async move {
        const WAVE: usize = 10_000;
        let runs: Arc<Vec<AtomicU8>> = Arc::new((0..MILLION).map(|_| AtomicU8::new(0)).collect());
        let live = LiveFutures::new();
        let out = nursery(|n: NurseryHandle<Cancelled>| {
            let (runs, live) = (runs.clone(), live.clone());
            async move {
                for wave in 0..MILLION / WAVE {
                    for i in wave * WAVE..(wave + 1) * WAVE {
                        drop(n.spawn(child(&runs, &live, i)));
                    }
                    wait_until("a wave of children to finish", || n.live_children() == 0).await;
                }
                Ok::<_, Cancelled>(())
            }
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_each_ran_once(&runs);
        assert_eq!((live.created(), live.completed()), (MILLION, MILLION));
        assert_eq!(live.live(), 0, "a child future outlived its nursery");
    })
    .await
}

/// A million children through a nursery with a concurrency limit, spawned with
/// `spawn_when_free` (the library's own back-pressure): at most 1,024 run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn million_children_through_a_limited_nursery() {
    leak_checked(async move {
        let runs: Arc<Vec<AtomicU8>> = Arc::new((0..MILLION).map(|_| AtomicU8::new(0)).collect());
        let live = LiveFutures::new();
        let out = Nursery::new()
            .limit(1024)
            .run(|n: NurseryHandle<Cancelled>| {
                let (runs, live) = (runs.clone(), live.clone());
                async move {
                    for i in 0..MILLION {
                        drop(n.spawn_when_free(child(&runs, &live, i)).await.unwrap());
                    }
                    Ok::<_, Cancelled>(())
                }
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_each_ran_once(&runs);
        assert_eq!((live.created(), live.completed()), (MILLION, MILLION));
        assert_eq!(live.live(), 0, "a child future outlived its nursery");
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Scopes nested ten thousand deep.
// ---------------------------------------------------------------------------------------------

const DEPTH: usize = 10_000;

type Body = Pin<Box<dyn Future<Output = Result<Option<u32>, Cancelled>> + Send>>;

/// Deadlines put on some levels of the chain (level 0 is the outermost), as offsets from the
/// start: the nearest is at level 9,000.
const DEADLINES: [(usize, Duration); 5] = [
    (0, Duration::from_secs(10 * 3600)),
    (2_500, Duration::from_secs(3600)),
    (5_000, Duration::from_secs(3 * 3600)),
    (9_000, Duration::from_secs(30 * 60)),
    (DEPTH - 1, Duration::from_secs(2 * 3600)),
];
const NEAREST_LEVEL: usize = 9_000;
const NEAREST: Duration = Duration::from_secs(30 * 60);

/// Wraps `body` in `DEPTH` nested `CancelScope`s, with the deadlines of [`DEADLINES`] from
/// `t0`; returns the chain and the scopes' handles, outermost first.
fn nest(t0: Instant, body: Body) -> (Body, Vec<ScopeHandle>) {
    let mut fut = body;
    let mut handles = Vec::with_capacity(DEPTH);
    for level in (0..DEPTH).rev() {
        let mut scope = CancelScope::new();
        if let Some((_, offset)) = DEADLINES.iter().find(|(l, _)| *l == level) {
            scope = scope.with_deadline(t0 + *offset);
        }
        handles.push(scope.handle());
        fut = Box::pin(async move { scope.run(fut).await.map(Option::flatten) });
    }
    handles.reverse();
    (fut, handles)
}

/// Polls `fut` once.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

/// Stack for polling (and dropping) the 10,000-deep chain: polling a nested future recurses
/// once per level, as any nested future does, and so does dropping it (drop glue, plus the
/// scope's own drop, which drops its body inside the scope's frame before ending the scope).
/// Measured with this file's chain (a boxed `async` level around `CancelScope::run`; the
/// tests print it), tokio-nursery 0.1, Rust 1.95, tokio 1.54:
///
/// | build   | poll, per level | poll, 10,000 levels | drop, per level | drop, 10,000 levels |
/// |---------|-----------------|---------------------|-----------------|---------------------|
/// | release | 288 B           | 2.9 MB              | 128 B           | 1.3 MB              |
/// | debug   | 1,584 B         | 15.8 MB             | 816 B           | 8.2 MB              |
///
/// In release the tests pass with a 3 MiB stack and overflow the default 2 MiB
/// (`SCALE_DEEP_STACK=<bytes>` overrides the size, to measure). 64 MiB leaves room for debug
/// builds (`cargo test` without `--release` runs this file too) and for growth.
const DEEP_POLL_STACK: usize = 64 << 20;

/// A small stack for the crate's own work on the chain, which must not recurse: cancelling
/// the outermost scope (propagation down 10,000 levels) and releasing the chain's nodes
/// (DESIGN invariant 6). 10,000 levels of recursion at even 16 bytes a level would not fit.
const SMALL_STACK: usize = 128 << 10;

/// Runs `test` on a current-thread runtime with the paused clock, on a thread with the deep
/// stack, with the leak check.
fn deep(test: impl Future<Output = ()> + Send + 'static) {
    // `SCALE_DEEP_STACK=<bytes>` overrides the stack size, to measure what the chain needs.
    let stack = std::env::var("SCALE_DEEP_STACK")
        .ok()
        .map(|bytes| bytes.parse().expect("SCALE_DEEP_STACK: a number of bytes"))
        .unwrap_or(DEEP_POLL_STACK);
    on_thread(stack, move || {
        let marker = 0u8;
        STACK_TOP.set(std::ptr::addr_of!(marker) as usize);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(leak_checked(test));
    });
}

thread_local! {
    /// An address near the top of the deep test's thread stack.
    static STACK_TOP: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Bytes of stack in use below the top of the deep test's thread.
fn stack_used() -> usize {
    let marker = 0u8;
    STACK_TOP.get() - std::ptr::addr_of!(marker) as usize
}

/// A checkpoint at the bottom works, the effective deadline there is the nearest one, and a
/// cancel of the outermost scope (from a thread with a small stack: propagation is a work
/// list, not recursion) reaches the bottom at once with its reason.
#[test]
fn ten_thousand_deep_checkpoint_deadline_and_cancel() {
    deep(async {
        let t0 = Instant::now();
        let live = LiveFutures::new();
        let (outer_tx, outer_rx) = std::sync::mpsc::channel::<ScopeHandle>();
        let body: Body = Box::pin(live.track(async move {
            assert!(!is_cancelled());
            let used = stack_used();
            println!(
                "polling {DEPTH} nested scopes: {used} bytes of stack, {} per level",
                used / DEPTH
            );
            checkpoint().await?;
            assert_eq!(current_deadline(), EffectiveDeadline::At(t0 + NEAREST));
            // Parked once: every level is pending and its deadline armed.
            sleep(Duration::from_secs(60)).await?;
            assert_eq!(Instant::now(), t0 + Duration::from_secs(60));
            assert_eq!(current_deadline(), EffectiveDeadline::At(t0 + NEAREST));
            let outermost = outer_rx.recv().unwrap();
            on_thread(SMALL_STACK, {
                let outermost = outermost.clone();
                move || outermost.cancel_with("storm from the top")
            });
            assert!(is_cancelled());
            assert_eq!(current_deadline(), EffectiveDeadline::Passed);
            let e = checkpoint().await.unwrap_err();
            assert_eq!(e.scope(), outermost.id());
            assert_eq!(e.reason().message(), Some("storm from the top"));
            assert!(current_scope().unwrap().is_cancelled());
            Err(e)
        }));
        let (chain, handles) = nest(t0, body);
        outer_tx.send(handles[0].clone()).unwrap();
        assert_eq!(chain.await.unwrap(), None);
        assert_eq!(live.live(), 0);
        assert_eq!(live.completed(), 1);
        assert!(handles[0].cancelled_caught(), "the outermost absorbs");
        assert!(handles[1..].iter().all(|h| !h.cancelled_caught()));
        assert!(handles.iter().all(|h| h.is_cancelled()));
        assert_eq!(Instant::now(), t0 + Duration::from_secs(60));
        release_nodes(handles);
    });
}

/// The nearest deadline, 1,000 levels above the bottom, fires and reaches the bottom (parked
/// in `cancelled()`) exactly at its instant, naming its scope.
#[test]
fn ten_thousand_deep_nearest_deadline_fires_at_the_bottom() {
    deep(async {
        let t0 = Instant::now();
        let live = LiveFutures::new();
        let named = Arc::new(std::sync::Mutex::new(None));
        let seen = named.clone();
        let body: Body = Box::pin(live.track(async move {
            assert_eq!(current_deadline(), EffectiveDeadline::At(t0 + NEAREST));
            let e = cancelled().await;
            assert_eq!(Instant::now(), t0 + NEAREST);
            assert!(e.reason().is_deadline());
            *seen.lock().unwrap() = Some(e.scope());
            Err(e)
        }));
        let (chain, handles) = nest(t0, body);
        assert_eq!(chain.await.unwrap(), None);
        assert_eq!(Instant::now(), t0 + NEAREST);
        assert_eq!((live.live(), live.completed()), (0, 1));
        for (level, handle) in handles.iter().enumerate() {
            assert_eq!(
                handle.cancel_called(),
                level == NEAREST_LEVEL,
                "level {level}: only the nearest deadline fired"
            );
            assert_eq!(handle.cancelled_caught(), level == NEAREST_LEVEL);
        }
        let reason = handles[NEAREST_LEVEL].reason().unwrap();
        assert!(reason.is_deadline());
        assert_eq!(*named.lock().unwrap(), Some(handles[NEAREST_LEVEL].id()));
        release_nodes(handles);
    });
}

/// A chain parked 10,000 deep, cancelled from the top, then dropped before it finished: the
/// body is dropped, nothing is caught, the deadline service exits (the leak check), and
/// the chain's nodes, held by the innermost handle alone, are released on a small stack.
#[test]
fn ten_thousand_deep_chain_dropped_without_recursion() {
    deep(async {
        let t0 = Instant::now();
        let live = LiveFutures::new();
        let probe = DropDepth(Arc::new(AtomicUsize::new(0)));
        let dropped_at = probe.0.clone();
        let body: Body = Box::pin(live.track(async move {
            let _probe = probe;
            let e = cancelled().await;
            Err(e)
        }));
        let (mut chain, handles) = nest(t0, body);
        assert!(poll_once(&mut chain).await.is_pending());
        let innermost = handles[DEPTH - 1].clone();
        assert!(!innermost.is_cancelled());
        on_thread(SMALL_STACK, {
            let outermost = handles[0].clone();
            move || outermost.cancel()
        });
        assert!(innermost.is_cancelled());
        assert_eq!(live.live(), 1);
        drop(chain);
        assert_eq!(live.live(), 0);
        assert_eq!(live.completed(), 0);
        let used = dropped_at.load(SeqCst);
        assert!(used > 0, "the body was dropped");
        println!(
            "dropping {DEPTH} nested scopes: {used} bytes of stack, {} per level",
            used / DEPTH
        );
        assert!(handles.iter().all(|h| !h.cancelled_caught()));
        release_nodes(handles);
    });
}

/// Records, when dropped, how much stack is in use: dropped with the innermost body, at the
/// deepest point of the chain's drop.
struct DropDepth(Arc<AtomicUsize>);

impl Drop for DropDepth {
    fn drop(&mut self) {
        self.0.store(stack_used(), SeqCst);
    }
}

/// Releases the chain's nodes on a thread with a small stack: every handle but the
/// innermost is dropped first, so the innermost handle holds the last reference to its node
/// and whatever that node still holds. A node holds its parent while it is linked; an ended
/// scope lets its parent go (DESIGN: ending unlinks), so after a chain ended no long chain
/// of references should be left, and if one were, `Node`'s drop releases it iteratively
/// (DESIGN invariant 6). 10,000 levels of recursion would not fit in [`SMALL_STACK`].
fn release_nodes(mut handles: Vec<ScopeHandle>) {
    let innermost = handles.pop().unwrap();
    drop(handles);
    on_thread(SMALL_STACK, move || drop(innermost));
}

// ---------------------------------------------------------------------------------------------
// A cancellation storm.
// ---------------------------------------------------------------------------------------------

const STORM: usize = 10_000;

/// What happened to the storm's children, counted.
#[derive(Default)]
struct Storm {
    /// Parked children of the storm nursery that ran their cancellation path to the end.
    parked_done: AtomicUsize,
    /// Children spawned into the storm nursery from another task: accepted, refused with
    /// `SpawnError::Closed`, and accepted ones that ran their cancellation path to the end.
    late_accepted: AtomicUsize,
    late_refused: AtomicUsize,
    late_done: AtomicUsize,
    /// Children of the dropped wait-mode nursery that ran their cancellation path to the end
    /// (adopted by the enclosing nursery).
    adopted_done: AtomicUsize,
}

/// A child that waits for its cancellation, cleans up across an await point, then counts
/// itself in `done` and returns the cancellation (an echo, not a failure).
fn cancellable_child(
    live: &LiveFutures,
    storm: &Arc<Storm>,
    done: fn(&Storm) -> &AtomicUsize,
) -> impl Future<Output = Result<(), Cancelled>> + Send + 'static {
    let storm = storm.clone();
    live.track(async move {
        let c = cancelled().await;
        tokio::task::yield_now().await; // cleanup
        assert!(is_cancelled());
        done(&storm).fetch_add(1, SeqCst);
        Err(c)
    })
}

/// On two workers, at once: the storm nursery's 10,000 parked children are cancelled (its
/// body cancels it) while a spawner task sends 10,000 more into it through a handle (the
/// first half racing with the cancel and the close; the second half after the close), and a
/// wait-mode nursery with 10,000 parked children is dropped, its children adopted by the
/// enclosing nursery. Every child is counted: it ran its cancellation path to the end, or
/// its spawn was refused with `SpawnError::Closed`. None lost, none alive after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_storm_loses_no_child() {
    leak_checked(async move {
        let live = LiveFutures::new();
        let storm = Arc::new(Storm::default());
        let out = nursery(|outer: NurseryHandle<Cancelled>| {
            let (live, storm) = (live.clone(), storm.clone());
            async move {
                let (handle_tx, handle_rx) = tokio::sync::oneshot::channel();
                let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();

                // The spawner: 10,000 children into the storm nursery, from another task,
                // racing with its cancellation and its close.
                outer.spawn({
                    let (live, storm) = (live.clone(), storm.clone());
                    async move {
                        let n: NurseryHandle<Cancelled> = handle_rx.await.unwrap();
                        let mut go = Some(go_tx);
                        for i in 0..STORM {
                            let child = cancellable_child(&live, &storm, |s: &Storm| &s.late_done);
                            match n.try_spawn(child) {
                                Ok(handle) => {
                                    drop(handle);
                                    storm.late_accepted.fetch_add(1, SeqCst);
                                }
                                Err(SpawnError::Closed) => {
                                    storm.late_refused.fetch_add(1, SeqCst);
                                }
                                Err(other) => panic!("spawn {i}: unexpected {other:?}"),
                            }
                            if i == STORM / 10 {
                                // The storm nursery is cancelled from here on.
                                let _ = go.take().unwrap().send(());
                            }
                            if i % 64 == 0 {
                                tokio::task::yield_now().await;
                            }
                            if i + 1 == STORM / 2 {
                                // The second half races with nothing: the nursery closes
                                // once its children are done, and every later spawn is
                                // refused (so both outcomes happen in every run).
                                wait_until("the storm nursery to close", || !n.is_open()).await;
                            }
                        }
                        Ok(())
                    }
                });

                // The dropped wait-mode nursery: 10,000 parked children, then its future is
                // dropped; the children are adopted by `outer` and see the cancellation.
                outer.spawn({
                    let (live, storm) = (live.clone(), storm.clone());
                    async move {
                        let spawned = Arc::new(AtomicUsize::new(0));
                        // With a grace period: the small task that runs it must exit with the
                        // adopted children (the leak check), not wait out the hour.
                        let grace = Duration::from_secs(3600);
                        let mut dropped = Box::pin(Nursery::new().grace(grace).run(
                            |n: NurseryHandle<Cancelled>| {
                                let spawned = spawned.clone();
                                async move {
                                    for _ in 0..STORM {
                                        drop(n.spawn(cancellable_child(
                                            &live,
                                            &storm,
                                            |s: &Storm| &s.adopted_done,
                                        )));
                                        spawned.fetch_add(1, SeqCst);
                                    }
                                    std::future::pending::<()>().await;
                                    Ok(())
                                }
                            },
                        ));
                        assert!(poll_once(&mut dropped).await.is_pending());
                        assert_eq!(spawned.load(SeqCst), STORM);
                        drop(dropped);
                        Ok(())
                    }
                });

                // The storm nursery: 10,000 parked children, cancelled while the spawner runs.
                let storm_out = nursery(|n: NurseryHandle<Cancelled>| {
                    let (live, storm) = (live.clone(), storm.clone());
                    async move {
                        for _ in 0..STORM {
                            drop(n.spawn(cancellable_child(&live, &storm, |s: &Storm| {
                                &s.parked_done
                            })));
                        }
                        handle_tx.send(n.clone()).ok().unwrap();
                        go_rx.await.unwrap();
                        n.cancel();
                        Ok(())
                    }
                })
                .await;
                // Its own cancel is absorbed (whether the body's value is kept is S10's call).
                assert!(storm_out.is_ok(), "{storm_out:?}");
                Ok::<_, Cancelled>(())
            }
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        let count = |c: &AtomicUsize| c.load(SeqCst);
        assert_eq!(count(&storm.parked_done), STORM, "parked children");
        assert_eq!(
            count(&storm.late_accepted) + count(&storm.late_refused),
            STORM,
            "late spawns: accepted + refused"
        );
        assert_eq!(
            count(&storm.late_done),
            count(&storm.late_accepted),
            "accepted late children that ran their cancellation path"
        );
        assert_eq!(count(&storm.adopted_done), STORM, "adopted children");
        let accepted = count(&storm.late_accepted);
        assert!(
            count(&storm.late_refused) >= STORM / 2,
            "every spawn after the close is refused"
        );
        assert_eq!(live.completed(), 2 * STORM + accepted);
        assert_eq!(live.created(), 3 * STORM, "every child future made");
        assert_eq!(live.live(), 0, "a child future outlived its nursery");
        println!(
            "storm: {accepted} late children accepted, {} refused",
            count(&storm.late_refused)
        );
    })
    .await
}
