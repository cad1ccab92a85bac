//! The children and the mechanisms of every scenario, ours and the peers', and the run list.
//! Each mechanism returns the measured duration of one batch; see the module doc of
//! `benches/peers.rs` for what each one times.

use std::cell::Cell;
use std::future::{Future, pending, poll_fn};
use std::hint::black_box;
use std::mem::size_of_val;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_scoped::TokioScope;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_nursery::{
    CancelScope, CancellableExt, Cancelled, ChildHandle, DropMode, Nursery, NurseryHandle,
    checkpoint, current_scope, is_cancelled, local_scope, move_on_after, move_on_at,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::harness::{
    BOTH, CURRENT_THREAD, LocalTimed, MULTI_THREAD, Run, Scenario, Timed, capped_peer, peer,
};
use crate::settings::Sizes;

/// What `measure` runs, in order.
pub enum Step {
    Timed(Scenario),
    /// `6-bytes` and `6-rss`, in child processes (`memory.rs`).
    Memory,
}

pub fn run_list() -> Vec<Step> {
    let scenario = |id, sizes, runtimes, ours, peers| {
        Step::Timed(Scenario {
            id,
            sizes,
            runtimes,
            ours,
            peers,
        })
    };
    let atomic_bool = || vec![peer("atomic-bool", Run::Task(atomic_bool))];
    vec![
        scenario(
            "1-spawn-join",
            Sizes::Children,
            BOTH,
            Run::Task(spawn_join_ours),
            vec![
                peer("bare-spawn", Run::Task(spawn_join_bare)),
                peer("joinset", Run::Task(spawn_join_joinset)),
                peer("tasktracker", Run::Task(spawn_join_tasktracker)),
                capped_peer("async-scoped", Run::Task(spawn_join_async_scoped)),
            ],
        ),
        scenario(
            "2-coop-cancel",
            Sizes::Children,
            BOTH,
            Run::Task(coop_cancel_ours),
            vec![peer("token-select-joinset", Run::Task(coop_cancel_peer))],
        ),
        scenario(
            "3-abort-drop",
            Sizes::Children,
            BOTH,
            Run::Task(abort_drop_ours),
            vec![peer("joinset-shutdown", Run::Task(abort_drop_peer))],
        ),
        scenario(
            "4-is-cancelled-depth1",
            Sizes::Calls,
            BOTH,
            Run::Task(is_cancelled_depth1),
            atomic_bool(),
        ),
        scenario(
            "4-is-cancelled-depth1000",
            Sizes::Calls,
            BOTH,
            Run::Task(is_cancelled_depth1000),
            atomic_bool(),
        ),
        scenario(
            "4-checkpoint",
            Sizes::Calls,
            BOTH,
            Run::Task(checkpoint_depth1),
            atomic_bool(),
        ),
        scenario(
            "5-ready",
            Sizes::Calls,
            BOTH,
            Run::Task(ready_ours),
            vec![peer("tokio-timeout", Run::Task(ready_peer))],
        ),
        scenario(
            "5-timing-out",
            Sizes::TimingOut,
            BOTH,
            Run::Task(timing_out_ours),
            vec![peer("tokio-timeout", Run::Task(timing_out_peer))],
        ),
        Step::Memory,
        scenario(
            "7-local",
            Sizes::Children,
            CURRENT_THREAD,
            Run::Local(local_ours),
            vec![peer("futures-unordered", Run::Local(local_peer))],
        ),
        scenario(
            "7-parallel",
            Sizes::Children,
            MULTI_THREAD,
            Run::Task(parallel_ours),
            vec![capped_peer("async-scoped", Run::Task(parallel_peer))],
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Children

/// Shared by the N parked children of one batch.
pub struct Counters {
    target: usize,
    polled: AtomicUsize,
    dropped: AtomicUsize,
    all_polled: Notify,
    all_dropped: Notify,
}

impl Counters {
    pub fn new(target: usize) -> Arc<Self> {
        Arc::new(Counters {
            target,
            polled: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            all_polled: Notify::new(),
            all_dropped: Notify::new(),
        })
    }

    fn count(&self, counter: &AtomicUsize, all: &Notify) {
        if counter.fetch_add(1, Ordering::AcqRel) + 1 == self.target {
            all.notify_one();
        }
    }
}

/// The parked child of `2-`, `3-`, `5-timing-out` and `6-`, the same for every mechanism:
/// 16 bytes, pending forever, counts its first poll and its drop.
pub struct Parked {
    counters: Arc<Counters>,
    polled: bool,
}

impl Parked {
    fn new(counters: &Arc<Counters>) -> Self {
        Parked {
            counters: counters.clone(),
            polled: false,
        }
    }
}

impl Future for Parked {
    type Output = Result<(), Cancelled>;

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.polled {
            self.polled = true;
            self.counters
                .count(&self.counters.polled, &self.counters.all_polled);
        }
        Poll::Pending
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.counters
            .count(&self.counters.dropped, &self.counters.all_dropped);
    }
}

/// `size_of_val` of the parked child.
pub fn parked_size() -> usize {
    size_of_val(&Parked::new(&Counters::new(1)))
}

/// Polls `future` once (a nursery's first poll runs its body up to its first await).
async fn poll_once<F: Future>(mut future: Pin<&mut F>) {
    poll_fn(|cx| {
        assert!(future.as_mut().poll(cx).is_pending(), "the body parks");
        Poll::Ready(())
    })
    .await;
}

/// A nursery in abort drop mode whose body spawns N [`Parked`] children (handles dropped)
/// and parks; returned once every child has been polled. Dropping it aborts the children.
pub async fn parked_nursery(n: usize, counters: &Arc<Counters>) -> impl Send + use<> {
    let children = counters.clone();
    let mut nursery = Box::pin(Nursery::new().drop_mode(DropMode::Abort).run(
        move |nursery: NurseryHandle<Cancelled>| async move {
            for _ in 0..n {
                drop(nursery.spawn(Parked::new(&children)));
            }
            pending::<()>().await;
            Ok(())
        },
    ));
    poll_once(nursery.as_mut()).await;
    counters.all_polled.notified().await;
    nursery
}

/// A `JoinSet` of N [`Parked`] children, returned once every child has been polled.
pub async fn parked_joinset(n: usize, counters: &Arc<Counters>) -> JoinSet<Result<(), Cancelled>> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        set.spawn(Parked::new(counters));
    }
    counters.all_polled.notified().await;
    set
}

/// Times `body`.
async fn timed(body: impl Future<Output = ()>) -> Duration {
    let start = Instant::now();
    body.await;
    start.elapsed()
}

// ---------------------------------------------------------------------------------------------
// 1-spawn-join: N trivial children

async fn trivial_ours() -> Result<u64, Cancelled> {
    Ok(black_box(1u64))
}

async fn trivial_peer() -> u64 {
    black_box(1u64)
}

fn spawn_join_ours(n: usize) -> Timed {
    Box::pin(timed(async move {
        let sum = Nursery::new()
            .run(move |nursery: NurseryHandle<Cancelled>| async move {
                let handles: Vec<ChildHandle<u64>> =
                    (0..n).map(|_| nursery.spawn(trivial_ours())).collect();
                let mut sum = 0;
                for handle in handles {
                    sum += handle.await.expect("a value");
                }
                Ok(sum)
            })
            .await
            .expect("no failure")
            .expect("not cancelled");
        assert_eq!(sum, n as u64);
    }))
}

fn spawn_join_bare(n: usize) -> Timed {
    Box::pin(timed(async move {
        let handles: Vec<_> = (0..n).map(|_| tokio::spawn(trivial_peer())).collect();
        let mut sum = 0;
        for handle in handles {
            sum += handle.await.expect("a value");
        }
        assert_eq!(sum, n as u64);
    }))
}

fn spawn_join_joinset(n: usize) -> Timed {
    Box::pin(timed(async move {
        let mut set = JoinSet::new();
        for _ in 0..n {
            set.spawn(trivial_peer());
        }
        let mut sum = 0;
        while let Some(value) = set.join_next().await {
            sum += value.expect("a value");
        }
        assert_eq!(sum, n as u64);
    }))
}

fn spawn_join_tasktracker(n: usize) -> Timed {
    Box::pin(timed(async move {
        let tracker = TaskTracker::new();
        for _ in 0..n {
            drop(tracker.spawn(trivial_peer()));
        }
        tracker.close();
        tracker.wait().await;
    }))
}

fn spawn_join_async_scoped(n: usize) -> Timed {
    Box::pin(timed(async move {
        // SAFETY: the scope's future is awaited to completion right here, never forgotten.
        let ((), outputs) = unsafe {
            TokioScope::scope_and_collect(|scope| {
                for _ in 0..n {
                    scope.spawn(trivial_peer());
                }
            })
        }
        .await;
        let sum: u64 = outputs.into_iter().map(|out| out.expect("a value")).sum();
        assert_eq!(sum, n as u64);
    }))
}

// ---------------------------------------------------------------------------------------------
// 2-coop-cancel and 3-abort-drop: N parked children

fn coop_cancel_ours(n: usize) -> Timed {
    Box::pin(async move {
        let counters = Counters::new(n);
        let children = counters.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let nursery = Nursery::new().run(move |nursery: NurseryHandle<Cancelled>| async move {
            for _ in 0..n {
                drop(nursery.spawn(Parked::new(&children).cancellable()));
            }
            tx.send(nursery).expect("the controller waits");
            Ok(())
        });
        let started = OnceLock::new();
        let (elapsed, ()) = tokio::join!(
            async {
                nursery.await.expect("no failure");
                started
                    .get()
                    .map(Instant::elapsed)
                    .expect("cancelled first")
            },
            async {
                let nursery = rx.await.expect("the body sends its handle");
                counters.all_polled.notified().await;
                started.set(Instant::now()).expect("set once");
                nursery.cancel();
            }
        );
        elapsed
    })
}

async fn coop_child_peer(parked: Parked, token: CancellationToken) {
    tokio::select! {
        () = token.cancelled() => {}
        _ = parked => unreachable!("parked forever"),
    }
}

fn coop_cancel_peer(n: usize) -> Timed {
    Box::pin(async move {
        let counters = Counters::new(n);
        let token = CancellationToken::new();
        let mut set = JoinSet::new();
        for _ in 0..n {
            set.spawn(coop_child_peer(Parked::new(&counters), token.clone()));
        }
        counters.all_polled.notified().await;
        timed(async {
            token.cancel();
            while let Some(out) = set.join_next().await {
                out.expect("no panic");
            }
        })
        .await
    })
}

fn abort_drop_ours(n: usize) -> Timed {
    Box::pin(async move {
        let counters = Counters::new(n);
        let nursery = parked_nursery(n, &counters).await;
        timed(async {
            drop(nursery);
            counters.all_dropped.notified().await;
        })
        .await
    })
}

fn abort_drop_peer(n: usize) -> Timed {
    Box::pin(async move {
        let counters = Counters::new(n);
        let mut set = parked_joinset(n, &counters).await;
        let elapsed = timed(set.shutdown()).await;
        assert_eq!(counters.dropped.load(Ordering::Acquire), n);
        elapsed
    })
}

// ---------------------------------------------------------------------------------------------
// 4-: cancellation queries, n calls

/// Times `calls` calls of `probe`.
fn time_calls<T>(calls: usize, mut probe: impl FnMut() -> T) -> Duration {
    let start = Instant::now();
    for _ in 0..calls {
        black_box(probe());
    }
    start.elapsed()
}

/// Times `calls` awaits of the futures `probe` makes.
async fn time_async_calls<F: Future>(calls: usize, mut probe: impl FnMut() -> F) -> Duration {
    let start = Instant::now();
    for _ in 0..calls {
        black_box(probe().await);
    }
    start.elapsed()
}

#[derive(Clone, Copy)]
enum Probe {
    IsCancelled,
    Checkpoint,
}

type Nest = Pin<Box<dyn Future<Output = Result<Duration, Cancelled>> + Send>>;

/// `depth` nested cancel scopes around a body that yields once (so that every scope has been
/// polled, parked and linked into the tree), then times `calls` probes.
fn nest(depth: usize, probe: Probe, calls: usize) -> Nest {
    if depth == 0 {
        return Box::pin(async move {
            tokio::task::yield_now().await;
            assert!(current_scope().is_some(), "inside the scopes");
            Ok(match probe {
                Probe::IsCancelled => {
                    assert!(!is_cancelled());
                    time_calls(calls, is_cancelled)
                }
                Probe::Checkpoint => time_async_calls(calls, checkpoint).await,
            })
        });
    }
    let inner = nest(depth - 1, probe, calls);
    Box::pin(async move {
        let out = CancelScope::new().run(inner).await?;
        Ok(out.expect("nothing cancels the scope"))
    })
}

fn nested(depth: usize, probe: Probe, calls: usize) -> Timed {
    Box::pin(async move { nest(depth, probe, calls).await.expect("not cancelled") })
}

fn is_cancelled_depth1(calls: usize) -> Timed {
    nested(1, Probe::IsCancelled, calls)
}

fn is_cancelled_depth1000(calls: usize) -> Timed {
    nested(1_000, Probe::IsCancelled, calls)
}

fn checkpoint_depth1(calls: usize) -> Timed {
    nested(1, Probe::Checkpoint, calls)
}

/// The peer: an `Acquire` load through a reference laundered by `black_box` on every call,
/// so that no load is hoisted out of the loop.
fn atomic_bool(calls: usize) -> Timed {
    Box::pin(async move {
        let flag = AtomicBool::new(false);
        time_calls(calls, || black_box(&flag).load(Ordering::Acquire))
    })
}

// ---------------------------------------------------------------------------------------------
// 5-: deadlines

/// The timeout of the ready scopes: never reached.
const TEN_SECS: Duration = Duration::from_secs(10);

fn ready_ours(calls: usize) -> Timed {
    Box::pin(time_async_calls(calls, || {
        move_on_after(black_box(TEN_SECS), async {
            Ok::<_, Cancelled>(black_box(1u32))
        })
    }))
}

fn ready_peer(calls: usize) -> Timed {
    Box::pin(time_async_calls(calls, || {
        tokio::time::timeout(black_box(TEN_SECS), async { black_box(1u32) })
    }))
}

/// The margin of the shared deadline of `5-timing-out` beyond twice the setup.
const TIMING_OUT_MARGIN: Duration = Duration::from_millis(20);

/// The last setup time per child of each `5-timing-out` mechanism, in ns: the next batch's
/// deadline is placed from it (0 before the first batch).
static SETUP_NS_OURS: AtomicU64 = AtomicU64::new(0);
static SETUP_NS_PEER: AtomicU64 = AtomicU64::new(0);

/// `5-timing-out`: N children spawned into a `JoinSet` (the same for both mechanisms), each
/// `child(deadline, parked)`, sharing one deadline placed 2x the (previous) setup time plus
/// [`TIMING_OUT_MARGIN`] after the setup starts. Timed from the deadline to the last
/// return. A batch whose children were not all parked by the deadline is run again.
async fn timing_out<F>(
    n: usize,
    setup_ns: &'static AtomicU64,
    child: fn(tokio::time::Instant, Parked) -> F,
) -> Duration
where
    F: Future<Output = ()> + Send + 'static,
{
    loop {
        let counters = Counters::new(n);
        let start = Instant::now();
        let setup_estimate = Duration::from_nanos(setup_ns.load(Ordering::Relaxed) * n as u64);
        let deadline = start + 2 * setup_estimate + TIMING_OUT_MARGIN;
        let shared = tokio::time::Instant::from_std(deadline);
        let mut set = JoinSet::new();
        for _ in 0..n {
            set.spawn(child(shared, Parked::new(&counters)));
        }
        // A child whose deadline passed before its first poll returns without ever polling
        // its parked future (ours checks the scope first), so it never counts as parked:
        // one that finishes before all are parked marks the batch late instead of leaving
        // this wait hanging.
        let mut late = false;
        {
            let all_parked = counters.all_polled.notified();
            tokio::pin!(all_parked);
            loop {
                tokio::select! {
                    biased;
                    () = &mut all_parked => break,
                    out = set.join_next() => match out {
                        Some(out) => {
                            out.expect("no panic");
                            late = true;
                        }
                        None => break,
                    },
                }
            }
        }
        let setup = start.elapsed();
        setup_ns.store((setup.as_nanos() / n as u128) as u64, Ordering::Relaxed);
        let in_time = !late && Instant::now() < deadline;
        while let Some(out) = set.join_next().await {
            out.expect("no panic");
        }
        let end = Instant::now();
        if in_time {
            return end.saturating_duration_since(deadline);
        }
    }
}

async fn timing_out_child_ours(deadline: tokio::time::Instant, parked: Parked) {
    let out = move_on_at(deadline, parked.cancellable()).await;
    assert!(matches!(out, Ok(None)), "timed out");
}

async fn timing_out_child_peer(deadline: tokio::time::Instant, parked: Parked) {
    let out = tokio::time::timeout_at(deadline, parked).await;
    assert!(out.is_err(), "timed out");
}

fn timing_out_ours(n: usize) -> Timed {
    Box::pin(timing_out(n, &SETUP_NS_OURS, timing_out_child_ours))
}

fn timing_out_peer(n: usize) -> Timed {
    Box::pin(timing_out(n, &SETUP_NS_PEER, timing_out_child_peer))
}

// ---------------------------------------------------------------------------------------------
// 7-: borrowing

/// The child of `7-local`, the same for both mechanisms: borrows two locals of the caller.
async fn local_child(work: &u64, sum: &Cell<u64>) -> Result<(), Cancelled> {
    sum.set(sum.get() + black_box(*work));
    Ok(())
}

fn local_ours(n: usize) -> LocalTimed {
    Box::pin(timed(async move {
        let (work, sum) = (1u64, Cell::new(0));
        local_scope(async |scope| {
            for _ in 0..n {
                drop(scope.spawn(local_child(&work, &sum)));
            }
            Ok::<_, Cancelled>(())
        })
        .await
        .expect("no failure");
        assert_eq!(sum.get(), n as u64);
    }))
}

fn local_peer(n: usize) -> LocalTimed {
    Box::pin(timed(async move {
        let (work, sum) = (1u64, Cell::new(0));
        let mut set: FuturesUnordered<_> = (0..n).map(|_| local_child(&work, &sum)).collect();
        while let Some(out) = set.next().await {
            out.expect("no failure");
        }
        assert_eq!(sum.get(), n as u64);
    }))
}

/// `7-parallel`: N children borrowing a local of the caller, run on the runtime's workers
/// by our parallel scope's non-blocking entry (the same contract as async-scoped's
/// `scope_and_collect`).
fn parallel_ours(n: usize) -> Timed {
    Box::pin(timed(async move {
        let work = 1u64;
        let work = &work;
        let sum = AtomicU64::new(0);
        let sum = &sum;
        // SAFETY: the scope's future is awaited to completion right here, never forgotten,
        // and the benchmark's runtime outlives it.
        let outcome = unsafe {
            tokio_nursery::parallel_scope_async(|scope| async move {
                for _ in 0..n {
                    drop(scope.spawn(async move {
                        sum.fetch_add(black_box(*work), Ordering::Relaxed);
                        Ok::<_, Cancelled>(())
                    }));
                }
                Ok::<_, Cancelled>(())
            })
        }
        .await;
        outcome
            .expect("a multi-thread runtime")
            .expect("no failure");
        assert_eq!(sum.load(Ordering::Relaxed), n as u64);
    }))
}

/// `7-parallel`'s peer: the same children, run by async-scoped.
fn parallel_peer(n: usize) -> Timed {
    Box::pin(timed(async move {
        let work = 1u64;
        let work = &work;
        // SAFETY: the scope's future is awaited to completion right here, never forgotten.
        let ((), outputs) = unsafe {
            TokioScope::scope_and_collect(|scope| {
                for _ in 0..n {
                    scope.spawn(async move { black_box(*work) });
                }
            })
        }
        .await;
        let sum: u64 = outputs.into_iter().map(|out| out.expect("a value")).sum();
        assert_eq!(sum, n as u64);
    }))
}
