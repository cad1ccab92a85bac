//! Micro-benchmarks of the nursery budgets of issue 3 (the `1-spawn-join`, `2-coop-cancel`,
//! `3-abort-drop` and `6-bytes` scenarios of the performance issue, same ids).
//!
//! Run with `cargo bench --bench nursery` (about half a minute). A positional argument keeps
//! only the scenario groups whose id contains it (`cargo bench --bench nursery -- 3-abort`).
//! Run without `--bench` (as `cargo test --benches` does) it is a smoke test: N = 100, one
//! round, no verdicts. For profiling, `--only=SCENARIO/MECHANISM` (e.g.
//! `--only=1-spawn-join/ours`), `--runtime=current_thread|multi_thread`, `--n=N`,
//! `--rounds=R` and `--warm-up=W` narrow a run; the timed regions start in [`timed_start`]
//! and end in [`timed_end`] (never inlined), so
//! `valgrind --tool=callgrind --dump-before='*timed_start*' --dump-before='*timed_end*'`
//! writes one profile part per setup and per timed region (the parts whose trigger is
//! `timed_end` are the timed ones).
//!
//! # Method
//!
//! Not criterion: criterion measures one benchmark after the other, and the budgets are ratios
//! of medians of mechanisms measured *interleaved* in one process. So, for every scenario,
//! runtime and N, each round runs every mechanism once (the order rotated every round), after
//! two warm-up rounds; the figures are medians over the rounds of the time per child. Each run
//! is a fresh batch of N children, timed with `std::time::Instant` inside a task spawned on the
//! runtime (so on the multi-thread runtime the spawner is a worker, as in a server). The
//! runtimes are built once: `current_thread` and `multi_thread` with 2 workers.
//!
//! Each line also shows the minor page faults per child of a whole run (setup included,
//! Linux only). They are large when a run's memory exceeds what glibc's allocator keeps
//! after the previous run freed everything (it trims the heap top back to the kernel, and
//! the next run faults the pages in again): a time that grows faster than the peer's with N
//! is then memory footprint, not instructions. `MALLOC_TRIM_THRESHOLD_=4000000000
//! MALLOC_TOP_PAD_=67108864` in the environment turns that off, to see the rest.
//!
//! # Scenarios
//!
//! 1. `1-spawn-join`: N trivial children (`async { Ok(black_box(1u64)) }`), from before the
//!    nursery is created until it returned; the body spawns them all, keeps the
//!    [`ChildHandle`]s in a `Vec` and awaits each. `1-spawn-join-dropped`: the body drops the
//!    handles and returns, the nursery waits. Peers: `joinset` (spawn all, then `join_next`
//!    until `None`) and `bare-spawn` (`tokio::spawn` into a `Vec<JoinHandle>`, then await
//!    each). Budgets: current_thread <= 1.0x `joinset` and <= 1.25x `bare-spawn`,
//!    multi_thread <= 1.1x `joinset` (the multi_thread ratio to `bare-spawn` is reported).
//! 2. `2-coop-cancel` (reported): N children each awaiting [`cancelled()`] (returning its
//!    `Err(Cancelled)`, an echo), all polled once; timed from `n.cancel()` until the nursery
//!    returned. Peer `token-select-joinset`: children `select!` on a `CancellationToken`'s
//!    `cancelled()` and `pending()`; timed from `token.cancel()` until `join_next` returned
//!    `None`.
//! 3. `3-abort-drop`: N parked children (the 16-byte [`Parked`] future: an `Arc` to shared
//!    counters and a flag; pending forever, counts its first poll and its drop), all polled
//!    once; timed from dropping the nursery's future (abort drop mode) until every child
//!    future has been dropped (the last drop notifies). Peer `joinset-shutdown`:
//!    `JoinSet::shutdown().await` on the same children. Budget <= 1.1x.
//! 6. `6-bytes`: a counting global allocator (counting only inside a window, so the timed
//!    scenarios pay one relaxed load per allocation) sums the bytes requested (`alloc` sizes,
//!    `realloc` new sizes) from before the nursery / `JoinSet` is created until N = 1e4
//!    [`Parked`] children have all been polled once; per child. Our handles are dropped; a
//!    `JoinSet` keeps its own. Budget: ours - `joinset` <= 64 bytes. Also reported: the
//!    bytes still live at that point (`6-bytes-live`), allocations per child, and the sizes
//!    allocated about once per child (where the bytes go). `bare-spawn` (handles kept in a
//!    `Vec` allocated before the window) shows tokio's own task cost.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::{Future, poll_fn};
use std::hint::black_box;
use std::mem::size_of_val;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_nursery::{Cancelled, ChildHandle, DropMode, Nursery, NurseryHandle, cancelled};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Counting allocator

/// Sizes up to this many bytes get their own histogram bucket; larger ones share the last.
const HIST_MAX: usize = 1024;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static REQUESTED: AtomicUsize = AtomicUsize::new(0);
static FREED: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static HIST: [AtomicUsize; HIST_MAX + 1] = [const { AtomicUsize::new(0) }; HIST_MAX + 1];

fn count_alloc(size: usize) {
    REQUESTED.fetch_add(size, Ordering::Relaxed);
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    HIST[size.min(HIST_MAX)].fetch_add(1, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            count_alloc(layout.size());
        }
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            count_alloc(layout.size());
        }
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            FREED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            count_alloc(new_size);
            FREED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What the allocator saw inside one counting window.
struct Counted {
    requested: usize,
    freed: usize,
    allocs: usize,
    /// (size, count) for every size allocated at least once.
    hist: Vec<(usize, usize)>,
}

fn start_counting() {
    REQUESTED.store(0, Ordering::SeqCst);
    FREED.store(0, Ordering::SeqCst);
    ALLOCS.store(0, Ordering::SeqCst);
    HIST.iter().for_each(|h| h.store(0, Ordering::SeqCst));
    COUNTING.store(true, Ordering::SeqCst);
}

fn stop_counting() -> Counted {
    COUNTING.store(false, Ordering::SeqCst);
    Counted {
        requested: REQUESTED.load(Ordering::SeqCst),
        freed: FREED.load(Ordering::SeqCst),
        allocs: ALLOCS.load(Ordering::SeqCst),
        hist: HIST
            .iter()
            .enumerate()
            .map(|(size, h)| (size, h.load(Ordering::SeqCst)))
            .filter(|&(_, count)| count > 0)
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// The parked child

/// Shared by the N parked children of one run.
struct Counters {
    target: usize,
    polled: AtomicUsize,
    dropped: AtomicUsize,
    all_polled: Notify,
    all_dropped: Notify,
}

impl Counters {
    fn new(target: usize) -> Arc<Self> {
        Arc::new(Counters {
            target,
            polled: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            all_polled: Notify::new(),
            all_dropped: Notify::new(),
        })
    }

    fn first_poll(&self) {
        if self.polled.fetch_add(1, Ordering::AcqRel) + 1 == self.target {
            self.all_polled.notify_one();
        }
    }

    fn dropped(&self) {
        if self.dropped.fetch_add(1, Ordering::AcqRel) + 1 == self.target {
            self.all_dropped.notify_one();
        }
    }
}

/// The parked child of `3-abort-drop` and `6-bytes`, the same for every mechanism: 16 bytes,
/// pending forever, counts its first poll and its drop.
struct Parked {
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
            self.counters.first_poll();
        }
        Poll::Pending
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.counters.dropped();
    }
}

/// Starts a timed region. Not inlined: `valgrind --tool=callgrind
/// --dump-before=nursery::timed_start --dump-before=nursery::timed_end` splits the profile
/// into setup parts and timed parts (the dumps triggered by `timed_end`).
#[inline(never)]
fn timed_start() -> Instant {
    black_box(Instant::now())
}

/// Ends a timed region started by [`timed_start`].
#[inline(never)]
fn timed_end(start: Instant) -> Duration {
    black_box(start.elapsed())
}

/// Polls `future` once (the nursery's first poll runs the body up to its first await).
async fn poll_once<F: Future>(mut future: Pin<&mut F>) {
    poll_fn(|cx| {
        assert!(future.as_mut().poll(cx).is_pending(), "the body parks");
        Poll::Ready(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Mechanisms: each returns the timed duration of one run with `n` children.

type Timed = Pin<Box<dyn Future<Output = Duration> + Send>>;
type Mechanism = fn(usize) -> Timed;

async fn trivial_ours() -> Result<u64, Cancelled> {
    Ok(black_box(1u64))
}

async fn trivial_peer() -> u64 {
    black_box(1u64)
}

fn spawn_join_ours(n: usize) -> Timed {
    Box::pin(async move {
        let start = timed_start();
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
        let elapsed = timed_end(start);
        assert_eq!(sum, n as u64);
        elapsed
    })
}

fn spawn_join_ours_dropped(n: usize) -> Timed {
    Box::pin(async move {
        let start = timed_start();
        Nursery::new()
            .run(move |nursery: NurseryHandle<Cancelled>| async move {
                for _ in 0..n {
                    drop(nursery.spawn(trivial_ours()));
                }
                Ok(())
            })
            .await
            .expect("no failure")
            .expect("not cancelled");
        timed_end(start)
    })
}

fn spawn_join_joinset(n: usize) -> Timed {
    Box::pin(async move {
        let start = timed_start();
        let mut set = JoinSet::new();
        for _ in 0..n {
            set.spawn(trivial_peer());
        }
        let mut sum = 0;
        while let Some(value) = set.join_next().await {
            sum += value.expect("a value");
        }
        let elapsed = timed_end(start);
        assert_eq!(sum, n as u64);
        elapsed
    })
}

fn spawn_join_bare(n: usize) -> Timed {
    Box::pin(async move {
        let start = timed_start();
        let handles: Vec<_> = (0..n).map(|_| tokio::spawn(trivial_peer())).collect();
        let mut sum = 0;
        for handle in handles {
            sum += handle.await.expect("a value");
        }
        let elapsed = timed_end(start);
        assert_eq!(sum, n as u64);
        elapsed
    })
}

async fn coop_child_ours(counters: Arc<Counters>) -> Result<(), Cancelled> {
    counters.first_poll();
    Err(cancelled().await)
}

async fn coop_child_peer(counters: Arc<Counters>, token: CancellationToken) -> Result<(), ()> {
    counters.first_poll();
    tokio::select! {
        _ = token.cancelled() => Err(()),
        _ = std::future::pending::<()>() => Ok(()),
    }
}

fn coop_cancel_ours(n: usize) -> Timed {
    Box::pin(async move {
        let counters = Counters::new(n);
        let children = counters.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let nursery = Nursery::new().run(move |nursery: NurseryHandle<Cancelled>| async move {
            for _ in 0..n {
                drop(nursery.spawn(coop_child_ours(children.clone())));
            }
            tx.send(nursery).expect("the controller waits");
            Ok(())
        });
        let started = std::sync::OnceLock::new();
        let (elapsed, ()) = tokio::join!(
            async {
                nursery.await.expect("no failure");
                timed_end(*started.get().expect("cancelled before it returned"))
            },
            async {
                let nursery = rx.await.expect("the body sends its handle");
                counters.all_polled.notified().await;
                started.set(timed_start()).expect("set once");
                nursery.cancel();
            }
        );
        elapsed
    })
}

fn coop_cancel_peer(n: usize) -> Timed {
    Box::pin(async move {
        let counters = Counters::new(n);
        let token = CancellationToken::new();
        let mut set = JoinSet::new();
        for _ in 0..n {
            set.spawn(coop_child_peer(counters.clone(), token.clone()));
        }
        counters.all_polled.notified().await;
        let start = timed_start();
        token.cancel();
        while let Some(out) = set.join_next().await {
            assert!(out.expect("no panic").is_err());
        }
        timed_end(start)
    })
}

fn abort_drop_ours(n: usize) -> Timed {
    Box::pin(async move {
        let counters = Counters::new(n);
        let children = counters.clone();
        let nursery = Nursery::new().drop_mode(DropMode::Abort).run(
            move |nursery: NurseryHandle<Cancelled>| async move {
                for _ in 0..n {
                    drop(nursery.spawn(Parked::new(&children)));
                }
                std::future::pending::<()>().await;
                Ok(())
            },
        );
        let mut nursery = Box::pin(nursery);
        poll_once(nursery.as_mut()).await;
        counters.all_polled.notified().await;
        let start = timed_start();
        drop(nursery);
        counters.all_dropped.notified().await;
        timed_end(start)
    })
}

fn abort_drop_peer(n: usize) -> Timed {
    Box::pin(async move {
        let counters = Counters::new(n);
        let mut set = JoinSet::new();
        for _ in 0..n {
            set.spawn(Parked::new(&counters));
        }
        counters.all_polled.notified().await;
        let start = timed_start();
        set.shutdown().await;
        let elapsed = timed_end(start);
        assert_eq!(counters.dropped.load(Ordering::Acquire), n);
        elapsed
    })
}

// ---------------------------------------------------------------------------------------------
// Bytes per parked child

type CountedRun = Pin<Box<dyn Future<Output = Counted> + Send>>;
type CountingMechanism = fn(usize) -> CountedRun;

fn bytes_ours(n: usize) -> CountedRun {
    Box::pin(async move {
        let counters = Counters::new(n);
        let children = counters.clone();
        let counted = {
            start_counting();
            let nursery = Nursery::new().drop_mode(DropMode::Abort).run(
                move |nursery: NurseryHandle<Cancelled>| async move {
                    for _ in 0..n {
                        drop(nursery.spawn(Parked::new(&children)));
                    }
                    std::future::pending::<()>().await;
                    Ok(())
                },
            );
            let mut nursery = std::pin::pin!(nursery);
            poll_once(nursery.as_mut()).await;
            counters.all_polled.notified().await;
            stop_counting()
            // The nursery's future is dropped here: its children are aborted.
        };
        counters.all_dropped.notified().await;
        counted
    })
}

fn bytes_joinset(n: usize) -> CountedRun {
    Box::pin(async move {
        let counters = Counters::new(n);
        start_counting();
        let mut set = JoinSet::new();
        for _ in 0..n {
            set.spawn(Parked::new(&counters));
        }
        counters.all_polled.notified().await;
        let counted = stop_counting();
        set.shutdown().await;
        counted
    })
}

fn bytes_bare(n: usize) -> CountedRun {
    Box::pin(async move {
        let counters = Counters::new(n);
        let mut handles = Vec::with_capacity(n);
        start_counting();
        for _ in 0..n {
            handles.push(tokio::spawn(Parked::new(&counters)));
        }
        counters.all_polled.notified().await;
        let counted = stop_counting();
        handles.iter().for_each(|h| h.abort());
        for handle in handles {
            let _ = handle.await;
        }
        counted
    })
}

// ---------------------------------------------------------------------------------------------
// Harness

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    CurrentThread,
    MultiThread,
}

impl Flavor {
    fn name(self) -> &'static str {
        match self {
            Flavor::CurrentThread => "current_thread",
            Flavor::MultiThread => "multi_thread",
        }
    }
}

struct Runtimes {
    current: Runtime,
    multi: Runtime,
}

impl Runtimes {
    fn new() -> Self {
        Runtimes {
            current: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current_thread runtime"),
            multi: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a multi_thread runtime"),
        }
    }

    fn get(&self, flavor: Flavor) -> &Runtime {
        match flavor {
            Flavor::CurrentThread => &self.current,
            Flavor::MultiThread => &self.multi,
        }
    }
}

/// Runs `future` in a task spawned on `rt` (a worker, on the multi-thread runtime).
fn run_on<T: Send + 'static>(rt: &Runtime, future: Pin<Box<dyn Future<Output = T> + Send>>) -> T {
    rt.block_on(async move { tokio::spawn(future).await.expect("the benchmark task") })
}

/// One line of results: a mechanism's median in a scenario.
struct Measured {
    scenario: &'static str,
    flavor: Flavor,
    n: usize,
    mechanism: &'static str,
    /// ns per child (bytes per child for `6-bytes`).
    value: f64,
    /// Minor page faults per child over the whole run (setup included), where known.
    faults: Option<f64>,
}

/// The process's minor page faults so far (Linux: `/proc/self/stat`), to show how much of a
/// time is the kernel handing pages back after the allocator returned them to it.
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, fields) = stat.rsplit_once(')')?;
    fields.split_whitespace().nth(7)?.parse().ok()
}

struct Settings {
    /// Run by `cargo bench` (else a smoke test).
    bench: bool,
    /// Keep only the scenario groups with an id containing this.
    filter: Option<String>,
    /// `--only=SCENARIO/MECHANISM`: run one mechanism alone (for profiling).
    only: Option<String>,
    /// `--runtime=current_thread|multi_thread`.
    runtime: Option<String>,
    /// `--n=N`, `--rounds=R`, `--warm-up=W`: override the defaults.
    n: Option<usize>,
    rounds: Option<usize>,
    warm_up: Option<usize>,
}

impl Settings {
    fn from_args() -> Self {
        let mut settings = Settings {
            bench: false,
            filter: None,
            only: None,
            runtime: None,
            n: None,
            rounds: None,
            warm_up: None,
        };
        let number = |value: &str| value.parse().expect("a number");
        for arg in std::env::args().skip(1) {
            match arg.split_once('=') {
                _ if arg == "--bench" => settings.bench = true,
                Some(("--only", value)) => settings.only = Some(value.to_string()),
                Some(("--runtime", value)) => settings.runtime = Some(value.to_string()),
                Some(("--n", value)) => settings.n = Some(number(value)),
                Some(("--rounds", value)) => settings.rounds = Some(number(value)),
                Some(("--warm-up", value)) => settings.warm_up = Some(number(value)),
                _ if !arg.starts_with('-') => settings.filter = Some(arg),
                _ => {}
            }
        }
        settings
    }

    fn wants(&self, scenario: &str) -> bool {
        self.filter
            .as_deref()
            .is_none_or(|filter| scenario.contains(filter))
    }

    fn wants_mechanism(&self, scenario: &str, mechanism: &str) -> bool {
        self.only
            .as_deref()
            .is_none_or(|only| only == format!("{scenario}/{mechanism}"))
    }

    fn flavors(&self) -> Vec<Flavor> {
        [Flavor::CurrentThread, Flavor::MultiThread]
            .into_iter()
            .filter(|f| self.runtime.as_deref().is_none_or(|r| r == f.name()))
            .collect()
    }

    fn sizes(&self) -> Vec<usize> {
        match self.n {
            Some(n) => vec![n],
            None if self.bench => vec![1_000, 10_000],
            None => vec![100],
        }
    }

    /// Timed rounds for a batch of `n` children: about 1e6 children per mechanism, at least
    /// 101 rounds.
    fn rounds(&self, n: usize) -> usize {
        match self.rounds {
            Some(rounds) => rounds,
            None if self.bench => (1_000_000 / n).max(101) | 1,
            None => 1,
        }
    }

    fn warm_up(&self) -> usize {
        self.warm_up.unwrap_or(if self.bench { 2 } else { 0 })
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// Runs every mechanism once per round, the order rotated each round; records the medians
/// of the ns per child.
fn compare(
    settings: &Settings,
    runtimes: &Runtimes,
    results: &mut Vec<Measured>,
    scenarios: &[&'static str],
    mechanisms: &[(&'static str, &'static str, Mechanism)],
) {
    if !scenarios.iter().any(|s| settings.wants(s)) {
        return;
    }
    let mechanisms: Vec<_> = mechanisms
        .iter()
        .filter(|(scenario, mechanism, _)| settings.wants_mechanism(scenario, mechanism))
        .collect();
    if mechanisms.is_empty() {
        return;
    }
    for flavor in settings.flavors() {
        let rt = runtimes.get(flavor);
        for n in settings.sizes() {
            let rounds = settings.rounds(n);
            let mut samples = vec![Vec::with_capacity(rounds); mechanisms.len()];
            let mut faults = vec![Vec::with_capacity(rounds); mechanisms.len()];
            for round in 0..settings.warm_up() + rounds {
                for i in 0..mechanisms.len() {
                    let index = (round + i) % mechanisms.len();
                    let faults_before = minor_faults();
                    let elapsed = run_on(rt, (mechanisms[index].2)(n));
                    if round >= settings.warm_up() {
                        samples[index].push(elapsed.as_nanos() as f64 / n as f64);
                        if let (Some(before), Some(after)) = (faults_before, minor_faults()) {
                            faults[index].push((after - before) as f64 / n as f64);
                        }
                    }
                }
            }
            for (((scenario, mechanism, _), mut values), mut faults) in
                mechanisms.iter().zip(samples).zip(faults)
            {
                let value = median(&mut values);
                let faults = (!faults.is_empty()).then(|| median(&mut faults));
                eprintln!(
                    "{scenario:<22} {:<14} n={n:<6} {mechanism:<22} {value:9.1} ns/child, \
                     {} page faults/child ({rounds} rounds)",
                    flavor.name(),
                    faults.map_or("?".to_string(), |f| format!("{f:.3}")),
                );
                results.push(Measured {
                    scenario,
                    flavor,
                    n,
                    mechanism,
                    value,
                    faults,
                });
            }
        }
    }
}

/// Bytes per parked child, for each mechanism and runtime; with the sizes allocated about
/// once per child.
fn bytes(settings: &Settings, runtimes: &Runtimes, results: &mut Vec<Measured>) {
    if !settings.wants("6-bytes") {
        return;
    }
    let n = settings
        .n
        .unwrap_or(if settings.bench { 10_000 } else { 100 });
    let mechanisms: [(&'static str, CountingMechanism); 3] = [
        ("ours", bytes_ours),
        ("joinset", bytes_joinset),
        ("bare-spawn", bytes_bare),
    ];
    for flavor in settings.flavors() {
        let rt = runtimes.get(flavor);
        for (mechanism, run) in mechanisms {
            if !settings.wants_mechanism("6-bytes", mechanism) {
                continue;
            }
            // Once to warm up (runtime and allocator caches), once counted.
            let _ = run_on(rt, run(n));
            let counted = run_on(rt, run(n));
            let per_child = counted.requested as f64 / n as f64;
            let live = (counted.requested as f64 - counted.freed as f64) / n as f64;
            let sizes: Vec<String> = counted
                .hist
                .iter()
                .filter(|&&(_, count)| count >= n / 2)
                .map(|&(size, count)| {
                    let size = if size == HIST_MAX {
                        format!(">={HIST_MAX}")
                    } else {
                        size.to_string()
                    };
                    format!("{size} B x {:.2}", count as f64 / n as f64)
                })
                .collect();
            eprintln!(
                "6-bytes {:<14} n={n:<6} {mechanism:<10} requested {per_child:7.1} B/child, \
                 live {live:7.1} B/child, {:.2} allocs/child; per child: {}",
                flavor.name(),
                counted.allocs as f64 / n as f64,
                sizes.join(", ")
            );
            for (scenario, value) in [("6-bytes", per_child), ("6-bytes-live", live)] {
                results.push(Measured {
                    scenario,
                    flavor,
                    n,
                    mechanism,
                    value,
                    faults: None,
                });
            }
        }
    }
}

fn find<'a>(
    results: &'a [Measured],
    scenario: &str,
    flavor: Flavor,
    n: usize,
    mechanism: &str,
) -> Option<&'a Measured> {
    results.iter().find(|m| {
        m.scenario == scenario && m.flavor == flavor && m.n == n && m.mechanism == mechanism
    })
}

/// How a row is judged.
#[derive(Clone, Copy)]
enum Budget {
    Ratio(f64),
    PlusBytes(f64),
    Reported,
}

impl Budget {
    fn describe(self) -> String {
        match self {
            Budget::Ratio(max) => format!("<= {max:.2}x"),
            Budget::PlusBytes(max) => format!("<= peer + {max} B"),
            Budget::Reported => "reported".to_string(),
        }
    }

    fn verdict(self, ours: f64, peer: f64) -> &'static str {
        let met = match self {
            Budget::Ratio(max) => ours / peer <= max,
            Budget::PlusBytes(max) => ours - peer <= max,
            Budget::Reported => return "-",
        };
        if met { "met" } else { "NOT MET" }
    }
}

fn print_summary(settings: &Settings, results: &[Measured]) {
    if results.is_empty() {
        return;
    }
    /// A summary line: the scenario shown, ours (scenario, mechanism), the peer (scenario,
    /// mechanism) and the budget by runtime.
    type Row = (
        &'static str,
        (&'static str, &'static str),
        (&'static str, &'static str),
        fn(Flavor) -> Budget,
    );
    fn joinset_budget(flavor: Flavor) -> Budget {
        Budget::Ratio(if flavor == Flavor::CurrentThread {
            1.0
        } else {
            1.1
        })
    }
    fn bare_budget(flavor: Flavor) -> Budget {
        if flavor == Flavor::CurrentThread {
            Budget::Ratio(1.25)
        } else {
            Budget::Reported
        }
    }
    let rows: [Row; 9] = [
        (
            "1-spawn-join",
            ("1-spawn-join", "ours"),
            ("1-spawn-join", "joinset"),
            joinset_budget,
        ),
        (
            "1-spawn-join",
            ("1-spawn-join", "ours"),
            ("1-spawn-join", "bare-spawn"),
            bare_budget,
        ),
        (
            "1-spawn-join-dropped",
            ("1-spawn-join-dropped", "ours"),
            ("1-spawn-join", "joinset"),
            joinset_budget,
        ),
        (
            "1-spawn-join-dropped",
            ("1-spawn-join-dropped", "ours"),
            ("1-spawn-join", "bare-spawn"),
            bare_budget,
        ),
        (
            "2-coop-cancel",
            ("2-coop-cancel", "ours"),
            ("2-coop-cancel", "token-select-joinset"),
            |_| Budget::Reported,
        ),
        (
            "3-abort-drop",
            ("3-abort-drop", "ours"),
            ("3-abort-drop", "joinset-shutdown"),
            |_| Budget::Ratio(1.1),
        ),
        (
            "6-bytes",
            ("6-bytes", "ours"),
            ("6-bytes", "joinset"),
            |_| Budget::PlusBytes(64.0),
        ),
        (
            "6-bytes",
            ("6-bytes", "ours"),
            ("6-bytes", "bare-spawn"),
            |_| Budget::Reported,
        ),
        (
            "6-bytes-live",
            ("6-bytes-live", "ours"),
            ("6-bytes-live", "joinset"),
            |_| Budget::Reported,
        ),
    ];
    println!();
    println!(
        "{:<22} {:<14} {:>6} {:>10}  {:<22} {:>10} {:>6}  {:<16} {:<8} {:>13}",
        "scenario",
        "runtime",
        "n",
        "ours",
        "peer",
        "peer",
        "ratio",
        "budget",
        "verdict",
        "faults/child"
    );
    for (label, (ours_scenario, ours_mechanism), (peer_scenario, peer_mechanism), budget) in rows {
        for flavor in settings.flavors() {
            let mut sizes: Vec<usize> = results
                .iter()
                .filter(|m| m.scenario == ours_scenario && m.flavor == flavor)
                .map(|m| m.n)
                .collect();
            sizes.dedup();
            for n in sizes {
                let (Some(ours), Some(peer)) = (
                    find(results, ours_scenario, flavor, n, ours_mechanism),
                    find(results, peer_scenario, flavor, n, peer_mechanism),
                ) else {
                    continue;
                };
                let faults = match (ours.faults, peer.faults) {
                    (Some(ours), Some(peer)) => format!("{ours:.2} / {peer:.2}"),
                    _ => "-".to_string(),
                };
                let (ours, peer) = (ours.value, peer.value);
                let budget = budget(flavor);
                let verdict = if settings.bench {
                    budget.verdict(ours, peer)
                } else {
                    "(smoke)"
                };
                println!(
                    "{label:<22} {:<14} {n:>6} {ours:10.1}  {peer_mechanism:<22} {peer:10.1} {:6.2}  {:<16} {verdict:<8} {faults:>13}",
                    flavor.name(),
                    ours / peer,
                    budget.describe(),
                );
            }
        }
    }
    println!(
        "(ns per child for 1- to 3-, bytes per child for 6-; medians over interleaved rounds; \
         ratio = ours / peer; faults/child: minor page faults per child in a whole run, setup \
         included, ours / peer)"
    );
}

fn main() {
    let settings = Settings::from_args();
    let runtimes = Runtimes::new();
    let counters = Counters::new(1);
    let mut results = Vec::new();
    eprintln!(
        "child futures: parked {} B, trivial (ours) {} B, trivial (peer) {} B, \
         coop-cancel (ours) {} B, coop-cancel (peer) {} B",
        size_of_val(&Parked::new(&counters)),
        size_of_val(&trivial_ours()),
        size_of_val(&trivial_peer()),
        size_of_val(&coop_child_ours(counters.clone())),
        size_of_val(&coop_child_peer(counters.clone(), CancellationToken::new())),
    );
    compare(
        &settings,
        &runtimes,
        &mut results,
        &["1-spawn-join", "1-spawn-join-dropped"],
        &[
            ("1-spawn-join", "ours", spawn_join_ours),
            ("1-spawn-join-dropped", "ours", spawn_join_ours_dropped),
            ("1-spawn-join", "joinset", spawn_join_joinset),
            ("1-spawn-join", "bare-spawn", spawn_join_bare),
        ],
    );
    compare(
        &settings,
        &runtimes,
        &mut results,
        &["2-coop-cancel"],
        &[
            ("2-coop-cancel", "ours", coop_cancel_ours),
            ("2-coop-cancel", "token-select-joinset", coop_cancel_peer),
        ],
    );
    compare(
        &settings,
        &runtimes,
        &mut results,
        &["3-abort-drop"],
        &[
            ("3-abort-drop", "ours", abort_drop_ours),
            ("3-abort-drop", "joinset-shutdown", abort_drop_peer),
        ],
    );
    bytes(&settings, &runtimes, &mut results);
    print_summary(&settings, &results);
}
