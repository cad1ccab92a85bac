//! The peers benchmark (issue 7): tokio-nursery against bare `tokio::spawn`, `JoinSet`,
//! `CancellationToken`, `tokio::time::timeout`, async-scoped and `FuturesUnordered`,
//! scenario by scenario, side by side in one process.
//!
//! # Running it
//!
//! - `cargo bench --bench peers`: the full run. N = 1e3, 1e4, 1e5, 1e6 (where the scenario
//!   takes an N), memory at N = 1e6, measured in 5 child processes (see `--processes`).
//! - `cargo bench --bench peers -- --quick`: one process, N = 1e3 and 1e4, memory at 1e5,
//!   fewer rounds; under a minute.
//! - `-- --processes K`: run the measurement in K child processes, one after the other (the
//!   benchmark re-executes itself, `std::env::current_exe()`, with an internal flag), and add
//!   a `median` row per measurement. Default 5 for a full run, 1 with `--quick`; with K = 1
//!   the measurement runs in this process.
//! - `-- FILTER` (a positional argument): only the scenarios whose id contains FILTER, e.g.
//!   `-- --quick 1-spawn` or `-- 6-` (both memory scenarios).
//! - Run without `--bench` (as `cargo test --benches` does), it is a smoke test: N = 100,
//!   one round, memory at 1e3, a table and no CSV.
//!
//! # Output
//!
//! A table on stdout (progress and per-mechanism medians go to stderr), and the same rows in
//! `target/bench/peers.csv` (the directory `$CARGO_TARGET_DIR` instead of `target` when that
//! variable is set; a relative one is taken from the workspace root), with the columns
//! `scenario,runtime,n,process,ours_ns,peer,peer_ns,ratio`:
//!
//! - `scenario`: the ids below; `runtime`: `current_thread` or `multi_thread` (2 workers);
//! - `n`: the children per batch (for `4-` and `5-ready`: the calls per timed loop);
//! - `process`: `1` to `K`, and with K > 1 a `median` row after each measurement's K rows,
//!   holding the median over the processes of each of `ours_ns`, `peer_ns` and `ratio` (so
//!   its ratio is the median of the per-process ratios);
//! - `ours_ns`, `peer_ns`: medians over the rounds of ns per child (per call for `4-` and
//!   `5-ready`); **bytes** per child for `6-bytes` and `6-rss`;
//! - `peer`: the peer's id; `ratio`: `ours_ns / peer_ns`.
//!
//! With K > 1, the CSV and the table hold each measurement's K per-process rows followed by
//! its `median` row.
//!
//! # Method
//!
//! Not criterion: the targets are ratios of medians of mechanisms measured *interleaved* in
//! one process. For every scenario, runtime and N, each round runs ours and every peer once
//! (the order rotated every round), after warm-up rounds; each run is a fresh batch, timed
//! with `std::time::Instant` inside a task spawned on the runtime (so on the multi-thread
//! runtime the spawner is a worker, as in a server). Rounds: 101 / 31 at N = 1e3 / 1e4 in
//! quick and full runs, 5 / 3 at 1e5 / 1e6 (full runs); 51 (quick) or 101 (full) timed loops
//! of 1e5 calls for `4-` and `5-ready`; 15 or 21 batches for `5-timing-out`. Warm-up: two
//! rounds up to N = 1e4, one above. Multi-thread ratios drift between processes: judge them
//! on the `median` rows of a run with three or more processes.
//!
//! Peers that join spawned children through a `FuturesUnordered`/`FuturesOrdered` of
//! `JoinHandle`s (async-scoped) are quadratic under tokio's cooperative budget (every
//! handle polled after the budget ran out is swept again): they run up to N = 1e4 in quick
//! runs and 1e5 in full runs.
//!
//! # The parked child
//!
//! Scenarios 2, 3, 5-timing-out and 6 use the same parked child for every mechanism:
//! `Parked`, 16 bytes (`size_of_val`, printed at the start), an `Arc` to shared counters and
//! a flag; pending forever, it counts its first poll and its drop. Its handles are dropped.
//! The size matters: tokio stores a task's future in a cell aligned to 128 bytes (x86_64),
//! and with its header, scheduler handle, id and trailer a future of up to 16 bytes fits
//! in 128 B while one of 24 bytes or more takes 256 B. So the peers' cells are 128 B, and
//! whatever a mechanism wraps around the child (our child task, a `select!`) is its own cost.
//!
//! # Scenarios (ours against each peer)
//!
//! 1. `1-spawn-join`: N trivial children (`Ok(black_box(1))`), timed from before the
//!    nursery is created until it returned; the body keeps the `ChildHandle`s in a `Vec`
//!    and awaits each. Peers: `bare-spawn` (`tokio::spawn` into a `Vec<JoinHandle>`, then
//!    await each), `joinset` (spawn all, `join_next` until `None`), `tasktracker`
//!    (`TaskTracker::spawn`, handles dropped, then `close` and `wait`), `async-scoped`
//!    (`TokioScope::scope_and_collect`, capped).
//! 2. `2-coop-cancel`: N parked children, each made a cancellation point with
//!    `.cancellable()`, all polled once; timed from `NurseryHandle::cancel()` until the
//!    nursery returned. Peer `token-select-joinset`: each child `select!`s between a
//!    `CancellationToken`'s `cancelled()` and the parked child, in a `JoinSet`; timed from
//!    `token.cancel()` until `join_next` returned `None`.
//! 3. `3-abort-drop`: N parked children in a nursery in `DropMode::Abort`, all polled once;
//!    timed from dropping the nursery's future until every child future has been dropped.
//!    Peer `joinset-shutdown`: `JoinSet::shutdown().await` on the same children.
//! 4. `4-is-cancelled-depth1`, `4-is-cancelled-depth1000`: `is_cancelled()` in a loop of n
//!    calls, in the innermost body of 1 or 1000 nested `CancelScope`s, after one
//!    `yield_now` (so every scope has parked and linked). `4-checkpoint` (reported):
//!    `checkpoint().await` in the same way at depth 1 (it spends a unit of tokio's budget,
//!    so every 128th call yields). Peer `atomic-bool` for all three: an `Acquire` load
//!    through a `black_box`ed reference. Judged on `ours_ns`.
//! 5. `5-ready`: `move_on_after(10 s, ready body)` vs `tokio-timeout`
//!    (`tokio::time::timeout(10 s, ready future)`), ns per call. `5-timing-out`: N = 1e3
//!    and 1e4 children spawned into a `JoinSet` (for both: the difference is the deadline),
//!    each `move_on_at(deadline, parked.cancellable())` vs `tokio-timeout`
//!    (`timeout_at(deadline, parked)`), sharing one absolute deadline placed after all
//!    have parked: 2x the setup time (that of the previous batch) plus 20 ms after the
//!    setup starts; a batch whose children were not all parked by then runs again. Timed
//!    from the deadline to the last return, per child. tokio's timer fires deadlines at its
//!    next 1 ms tick, so each batch's time includes 0 to 1 ms of rounding (up to 1 us per
//!    child at N = 1e3) for either mechanism; the median over the batches evens it out.
//! 6. Memory, in child processes the benchmark starts for itself (one per mechanism,
//!    multi-thread runtime, N = 1e6 full / 1e5 quick; the counting global allocator counts
//!    only there, gated by a static `AtomicBool`): N parked children spawned into a nursery
//!    (handles dropped) vs `joinset`. `6-bytes`: bytes requested from the allocator
//!    (`alloc` sizes, `realloc` new sizes) from before the nursery / `JoinSet` is created
//!    until every child has been polled once, per child. `6-rss` (reported): peak RSS
//!    (`VmHWM` in `/proc/self/status`) at that point minus the peak after the empty
//!    runtime ran a few tasks, per child.
//! 7. `7-local`: `local_scope` spawning N children that borrow two locals of the caller
//!    (handles dropped), until it returned, vs `futures-unordered` (the same children in
//!    an inline `FuturesUnordered`, drained). current_thread only: a local scope's future
//!    is not `Send`, so it runs in `block_on`. `7-parallel`: `parallel_scope_async`
//!    spawning N children that borrow a local of the caller (handles dropped), vs
//!    `async-scoped` (`TokioScope::scope_and_collect`, capped like the other
//!    `FuturesOrdered`-based peer); multi_thread only.

#[path = "peers/harness.rs"]
mod harness;
#[path = "peers/memory.rs"]
mod memory;
#[path = "peers/report.rs"]
mod report;
#[path = "peers/scenarios.rs"]
mod scenarios;
#[path = "peers/settings.rs"]
mod settings;

use std::process::{Command, Stdio};
use std::time::Instant;

use harness::{Runtimes, compare};
use report::Row;
use scenarios::Step;
use settings::{Mode, Role, Settings};

/// Marks a result row on a measurement process's stdout.
const ROW_PREFIX: &str = "peers-row,";

/// Runs every wanted scenario in this process.
fn measure(settings: &Settings) -> Vec<Row> {
    let runtimes = Runtimes::new();
    let mut rows = Vec::new();
    for step in scenarios::run_list() {
        match step {
            Step::Timed(scenario) if settings.wants(scenario.id) => {
                rows.extend(compare(&scenario, settings, &runtimes));
            }
            Step::Memory if settings.wants("6-bytes") || settings.wants("6-rss") => {
                rows.extend(memory::measure(settings));
            }
            _ => {}
        }
    }
    rows
}

/// Runs the measurement in a child process and reads its rows.
fn measure_in_child(settings: &Settings) -> Vec<Row> {
    let exe = std::env::current_exe().expect("the benchmark's path");
    let output = Command::new(exe)
        .args(settings.child_args())
        .stderr(Stdio::inherit())
        .output()
        .expect("a measurement process");
    assert!(output.status.success(), "a measurement process failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_prefix(ROW_PREFIX))
        .map(|line| Row::parse(line).expect("a row"))
        .collect()
}

fn main() {
    let settings = Settings::from_args();
    match &settings.role {
        Role::Memory { mechanism, n } => memory::child(mechanism, *n),
        Role::Measure => {
            for row in measure(&settings) {
                println!("{ROW_PREFIX}{}", row.to_csv());
            }
        }
        Role::Main => {
            let started = Instant::now();
            let k = settings.processes;
            println!(
                "peers: {:?} run, {k} process(es); the parked child is {} B (size_of_val)",
                settings.mode,
                scenarios::parked_size(),
            );
            let per_process = if k == 1 {
                vec![measure(&settings)]
            } else {
                (1..=k)
                    .map(|i| {
                        eprintln!("measurement process {i} of {k}");
                        measure_in_child(&settings)
                    })
                    .collect()
            };
            let rows = report::number_and_median(per_process);
            report::print_table(&rows);
            if settings.mode == Mode::Smoke {
                println!("smoke run (no --bench): no CSV written");
            } else {
                let path = report::write_csv(&rows).expect("the CSV written");
                println!("wrote {}", path.display());
            }
            println!("finished in {:.1} s", started.elapsed().as_secs_f64());
        }
    }
}
