//! Micro-benchmarks of the two costs SPEC S13 and issue 2 put a budget on.
//!
//! Run with `cargo bench --bench scope` (about a minute: warm-up and measurement times are
//! set short in [`config`]). Criterion prints its own report per benchmark; a summary table
//! (ours ns, peer ns, ratio, budget) follows at the end. The summary's numbers are medians of
//! the per-call times of every timed batch of at least [`MIN_BATCH`] calls.
//!
//! # 1. `is_cancelled` (budget: <= 5 ns at depth 1 and at depth 1000, depth1000 / depth1 <= 1.2)
//!
//! - `is_cancelled/depth1`, `is_cancelled/depth1000`: [`is_cancelled`] called in a loop by
//!   the innermost body of 1 or 1000 nested `CancelScope::new().run(..)` futures, on a
//!   current_thread runtime. The body first yields once (`yield_now`), so every scope has been
//!   polled, gone pending and been linked into the tree: the loop runs in steady state, on
//!   the second poll of the whole nest. Each criterion batch builds the nest afresh and times
//!   only the loop (`iter_custom` with `std::time::Instant`).
//! - `is_cancelled/atomic-bool` (the peer): `AtomicBool::load(Acquire)` through a reference
//!   passed through `std::hint::black_box` on every call, so neither load can be hoisted.
//! - Reported, not judged: `is_cancelled/depth1000-move_on_after` (the same with 1000 nested
//!   `move_on_after` helper scopes, linked lazily when they first go pending), and
//!   `is_cancelled/depth1000-move_on_after-first-poll` (the same nest during its first poll,
//!   before anything went pending: the helper scopes start as unlinked frames on the stack,
//!   and this shows whether the query stays flat in depth there).
//!
//! # 2. `checkpoint().await` (reported, not judged)
//!
//! - `checkpoint/depth1`, `checkpoint/depth1000`: `checkpoint().await` in a loop, set up as
//!   above. Besides two cancellation checks it spends one unit of tokio's coop budget, so
//!   every 128th call yields to the scheduler and re-polls the whole nest.
//!
//! # 3. A deadline scope around a ready future (budget: <= 1.25x the tokio peer)
//!
//! All four are awaited in a loop inside one `block_on` of a current_thread runtime with the
//! **real** clock (not paused; note that the crate's dev-dependencies enable tokio's
//! `test-util`, so `tokio::time::Instant::now()` consults the runtime's clock for ours and the
//! peer alike).
//!
//! - `ready/move_on_after`: `move_on_after(10 s, async { Ok::<_, Cancelled>(1) })`, vs
//!   `ready/tokio-timeout`: `tokio::time::timeout(10 s, async { 1 })`.
//! - `ready/move_on_at`: `move_on_at(at, ..)` with an instant computed once before the loop,
//!   vs `ready/tokio-timeout_at`: `tokio::time::timeout_at(at, ..)`.
//!
//! - Reported, not judged: `ready/tokio-instant-now`, one `tokio::time::Instant::now()` in
//!   the same runtime, the clock read that `move_on_after` and `tokio::time::timeout` both
//!   pay and `tokio::time::timeout_at` does not.
//!
//! A helper scope around a ready body allocates and links nothing (SPEC S13, `Plan::Lazy`),
//! so this measures the scope's entry and exit: any clock read, the thread-local frame
//! push/pop, the result classification and moving the output.

use std::collections::BTreeMap;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::Criterion;
use tokio::runtime::Runtime;
use tokio_nursery::{
    CancelScope, Cancelled, checkpoint, current_scope, is_cancelled, move_on_after, move_on_at,
};

/// Timed batches smaller than this are left out of the summary (criterion's warm-up starts
/// with batches of one call, dominated by reading the clock).
const MIN_BATCH: u64 = 1_000;

/// The deadline of the scopes in the ready benchmarks: never reached.
const TEN_SECS: Duration = Duration::from_secs(10);

/// Short times, so that the whole run takes about a minute.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1_200))
        .sample_size(30)
        .nresamples(20_000)
        .without_plots()
}

/// Per-call nanoseconds of every timed batch, by benchmark id.
static SAMPLES: Mutex<BTreeMap<&'static str, Vec<f64>>> = Mutex::new(BTreeMap::new());

/// Records one timed batch for the summary and hands the time back to criterion.
fn record(id: &'static str, iters: u64, elapsed: Duration) -> Duration {
    if iters >= MIN_BATCH {
        let per_call = elapsed.as_secs_f64() * 1e9 / iters as f64;
        SAMPLES
            .lock()
            .unwrap()
            .entry(id)
            .or_default()
            .push(per_call);
    }
    elapsed
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current_thread runtime")
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Duration, Cancelled>>>>;

/// Which scope each level of the nest is.
#[derive(Clone, Copy)]
enum Wrap {
    Scope,
    MoveOnAfter,
}

/// What the innermost body measures.
#[derive(Clone, Copy)]
enum Probe {
    IsCancelled,
    Checkpoint,
}

/// `depth` nested scopes around a body that times `iters` probes. With `settle`, the body
/// yields once first, so that every scope is linked into the tree before the loop runs.
fn nest(depth: usize, wrap: Wrap, settle: bool, probe: Probe, iters: u64) -> BoxFuture {
    if depth == 0 {
        return Box::pin(async move {
            if settle {
                tokio::task::yield_now().await;
                // Linked frames by now, so asking for the scope has no side effect.
                assert!(
                    current_scope().is_some(),
                    "the probe runs inside the scopes"
                );
            }
            Ok(match probe {
                Probe::IsCancelled => time_is_cancelled(iters),
                Probe::Checkpoint => time_checkpoint(iters).await,
            })
        });
    }
    let inner = nest(depth - 1, wrap, settle, probe, iters);
    match wrap {
        Wrap::Scope => Box::pin(async move {
            let out = CancelScope::new().run(inner).await?;
            Ok(out.expect("nothing cancels the scope"))
        }),
        Wrap::MoveOnAfter => Box::pin(async move {
            let out = move_on_after(Duration::from_secs(3_600), inner).await?;
            Ok(out.expect("the deadline is an hour away"))
        }),
    }
}

fn time_is_cancelled(iters: u64) -> Duration {
    assert!(!is_cancelled());
    let start = Instant::now();
    for _ in 0..iters {
        black_box(is_cancelled());
    }
    start.elapsed()
}

async fn time_checkpoint(iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        if black_box(checkpoint().await).is_err() {
            panic!("nothing cancels the scopes");
        }
    }
    start.elapsed()
}

fn time_atomic_bool(iters: u64) -> Duration {
    let flag = AtomicBool::new(false);
    let start = Instant::now();
    for _ in 0..iters {
        black_box(black_box(&flag).load(Ordering::Acquire));
    }
    start.elapsed()
}

fn bench_is_cancelled(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("is_cancelled");
    let cases: [(&'static str, usize, Wrap, bool); 4] = [
        ("is_cancelled/depth1", 1, Wrap::Scope, true),
        ("is_cancelled/depth1000", 1_000, Wrap::Scope, true),
        (
            "is_cancelled/depth1000-move_on_after",
            1_000,
            Wrap::MoveOnAfter,
            true,
        ),
        (
            "is_cancelled/depth1000-move_on_after-first-poll",
            1_000,
            Wrap::MoveOnAfter,
            false,
        ),
    ];
    for (id, depth, wrap, settle) in cases {
        let name = id.trim_start_matches("is_cancelled/");
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let elapsed = rt
                    .block_on(nest(depth, wrap, settle, Probe::IsCancelled, iters))
                    .expect("not cancelled");
                record(id, iters, elapsed)
            });
        });
    }
    group.bench_function("atomic-bool", |b| {
        b.iter_custom(|iters| record("is_cancelled/atomic-bool", iters, time_atomic_bool(iters)));
    });
    group.finish();

    let mut group = c.benchmark_group("checkpoint");
    for (id, depth) in [("checkpoint/depth1", 1), ("checkpoint/depth1000", 1_000)] {
        let name = id.trim_start_matches("checkpoint/");
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let elapsed = rt
                    .block_on(nest(depth, Wrap::Scope, true, Probe::Checkpoint, iters))
                    .expect("not cancelled");
                record(id, iters, elapsed)
            });
        });
    }
    group.finish();
}

fn bench_ready(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("ready");
    group.bench_function("move_on_after", |b| {
        b.iter_custom(|iters| {
            let elapsed = rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let body = async { Ok::<_, Cancelled>(black_box(1u32)) };
                    black_box(move_on_after(black_box(TEN_SECS), body).await).ok();
                }
                start.elapsed()
            });
            record("ready/move_on_after", iters, elapsed)
        });
    });
    group.bench_function("tokio-timeout", |b| {
        b.iter_custom(|iters| {
            let elapsed = rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let body = async { black_box(1u32) };
                    black_box(tokio::time::timeout(black_box(TEN_SECS), body).await).ok();
                }
                start.elapsed()
            });
            record("ready/tokio-timeout", iters, elapsed)
        });
    });
    group.bench_function("move_on_at", |b| {
        b.iter_custom(|iters| {
            let elapsed = rt.block_on(async {
                let at = tokio::time::Instant::now() + TEN_SECS;
                let start = Instant::now();
                for _ in 0..iters {
                    let body = async { Ok::<_, Cancelled>(black_box(1u32)) };
                    black_box(move_on_at(black_box(at), body).await).ok();
                }
                start.elapsed()
            });
            record("ready/move_on_at", iters, elapsed)
        });
    });
    group.bench_function("tokio-timeout_at", |b| {
        b.iter_custom(|iters| {
            let elapsed = rt.block_on(async {
                let at = tokio::time::Instant::now() + TEN_SECS;
                let start = Instant::now();
                for _ in 0..iters {
                    let body = async { black_box(1u32) };
                    black_box(tokio::time::timeout_at(black_box(at), body).await).ok();
                }
                start.elapsed()
            });
            record("ready/tokio-timeout_at", iters, elapsed)
        });
    });
    group.bench_function("tokio-instant-now", |b| {
        b.iter_custom(|iters| {
            let elapsed = rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(tokio::time::Instant::now());
                }
                start.elapsed()
            });
            record("ready/tokio-instant-now", iters, elapsed)
        });
    });
    group.finish();
}

fn median(id: &str) -> Option<f64> {
    let samples = SAMPLES.lock().unwrap();
    let mut values = samples.get(id)?.clone();
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT MET" }
}

/// One line of the summary: ours, the peer, their ratio and the budget's verdict.
fn row(ours: &str, peer: Option<&str>, budget: &str, judge: impl Fn(f64, Option<f64>) -> bool) {
    let Some(ours_ns) = median(ours) else { return };
    let peer_ns = peer.and_then(median);
    let (peer_name, peer_col, ratio_col) = match (peer, peer_ns) {
        (Some(name), Some(ns)) => (name, format!("{ns:8.2}"), format!("{:6.2}", ours_ns / ns)),
        _ => ("-", format!("{:>8}", "-"), format!("{:>6}", "-")),
    };
    let verdict = if budget == "reported" {
        "-"
    } else {
        verdict(judge(ours_ns, peer_ns))
    };
    println!(
        "{ours:<48} {ours_ns:8.2} {peer_name:<24} {peer_col} {ratio_col}  {budget:<28} {verdict}"
    );
}

fn print_summary() {
    if SAMPLES.lock().unwrap().is_empty() {
        return;
    }
    println!();
    println!(
        "{:<48} {:>8} {:<24} {:>8} {:>6}  {:<28} verdict",
        "benchmark", "ours ns", "peer", "peer ns", "ratio", "budget"
    );
    row(
        "is_cancelled/depth1",
        Some("is_cancelled/atomic-bool"),
        "<= 5 ns",
        |ours, _| ours <= 5.0,
    );
    row(
        "is_cancelled/depth1000",
        Some("is_cancelled/atomic-bool"),
        "<= 5 ns",
        |ours, _| ours <= 5.0,
    );
    row(
        "is_cancelled/depth1000",
        Some("is_cancelled/depth1"),
        "depth1000/depth1 <= 1.2",
        |ours, depth1| depth1.is_some_and(|depth1| ours / depth1 <= 1.2),
    );
    row(
        "is_cancelled/depth1000-move_on_after",
        Some("is_cancelled/depth1"),
        "reported",
        |_, _| true,
    );
    row(
        "is_cancelled/depth1000-move_on_after-first-poll",
        Some("is_cancelled/depth1"),
        "reported",
        |_, _| true,
    );
    row("checkpoint/depth1", None, "reported", |_, _| true);
    row("checkpoint/depth1000", None, "reported", |_, _| true);
    row(
        "ready/move_on_after",
        Some("ready/tokio-timeout"),
        "<= 1.25x peer",
        |ours, peer| peer.is_some_and(|peer| ours / peer <= 1.25),
    );
    row(
        "ready/move_on_at",
        Some("ready/tokio-timeout_at"),
        "<= 1.25x peer",
        |ours, peer| peer.is_some_and(|peer| ours / peer <= 1.25),
    );
    row("ready/tokio-instant-now", None, "reported", |_, _| true);
    println!("(medians of per-call ns over timed batches of >= {MIN_BATCH} calls)");
}

fn main() {
    let mut c = config().configure_from_args();
    bench_is_cancelled(&mut c);
    bench_ready(&mut c);
    c.final_summary();
    print_summary();
}
