//! `6-bytes` and `6-rss`: a counting global allocator and peak RSS, in one child process per
//! mechanism.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::harness::{Flavor, multi_thread_runtime, run_on};
use crate::report::Row;
use crate::scenarios::{Counters, parked_joinset, parked_nursery};
use crate::settings::{MEMORY_FLAG, Settings};

/// Marks the result line of a memory process on its stdout.
const MEMORY_PREFIX: &str = "peers-memory,";

// ---------------------------------------------------------------------------------------------
// Counting allocator: counts only while `COUNTING` is set, which only memory processes do
// (elsewhere an allocation pays one relaxed load).

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static REQUESTED: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

fn count(size: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        REQUESTED.fetch_add(size, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What one memory process measured, per parked child.
struct Memory {
    /// Bytes requested from the allocator (`alloc` sizes, `realloc` new sizes).
    bytes: f64,
    allocs: f64,
    /// Peak RSS minus the empty runtime's, where `/proc/self/status` exists.
    rss: Option<f64>,
}

/// Peak resident set size so far, in bytes (Linux: `VmHWM` in `/proc/self/status`).
fn peak_rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Counts the bytes requested from before `park` creates its nursery or `JoinSet` until its
/// N children have all been polled once, and reads the peak RSS there; then drops them.
async fn while_parked<P>(park: impl Future<Output = P>) -> (usize, usize, Option<usize>) {
    REQUESTED.store(0, Ordering::SeqCst);
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let parked = park.await;
    COUNTING.store(false, Ordering::SeqCst);
    let peak = peak_rss();
    drop(parked);
    (
        REQUESTED.load(Ordering::SeqCst),
        ALLOCS.load(Ordering::SeqCst),
        peak,
    )
}

type Measured = Pin<Box<dyn Future<Output = (usize, usize, Option<usize>)> + Send>>;

fn parked_ours(n: usize) -> Measured {
    Box::pin(async move {
        let counters = Counters::new(n);
        while_parked(parked_nursery(n, &counters)).await
    })
}

fn parked_peer(n: usize) -> Measured {
    Box::pin(async move {
        let counters = Counters::new(n);
        while_parked(parked_joinset(n, &counters)).await
    })
}

/// The body of a memory process (`--peers-memory=MECHANISM:N`): a multi-thread runtime, its
/// peak RSS once both workers ran (the baseline), then N parked children of `mechanism`.
/// Prints one line for [`measure`] and exits.
pub fn child(mechanism: &str, n: usize) {
    let run = match mechanism {
        "ours" => parked_ours,
        "joinset" => parked_peer,
        other => panic!("no memory mechanism {other}"),
    };
    let rt = multi_thread_runtime();
    rt.block_on(async {
        for _ in 0..16 {
            tokio::spawn(async {}).await.expect("an empty task");
        }
    });
    let baseline = peak_rss();
    let (requested, allocs, peak) = run_on(&rt, run(n));
    let per_child = |count: usize| count as f64 / n as f64;
    let rss = baseline
        .zip(peak)
        .map(|(baseline, peak)| per_child(peak.saturating_sub(baseline)));
    println!(
        "{MEMORY_PREFIX}{},{},{}",
        per_child(requested),
        per_child(allocs),
        rss.unwrap_or(f64::NAN)
    );
    // The runtime's shutdown would drop the remaining tasks one by one: not needed here.
    std::process::exit(0);
}

/// Runs the memory process of one mechanism and reads its line.
fn run_child(mechanism: &str, n: usize) -> Memory {
    let exe = std::env::current_exe().expect("the benchmark's path");
    let output = Command::new(exe)
        .arg(format!("{MEMORY_FLAG}={mechanism}:{n}"))
        .stderr(Stdio::inherit())
        .output()
        .expect("a memory process");
    assert!(
        output.status.success(),
        "the {mechanism} memory process failed"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let values: Vec<f64> = stdout
        .lines()
        .find_map(|line| line.strip_prefix(MEMORY_PREFIX))
        .expect("a result line")
        .split(',')
        .map(|value| value.parse().expect("a number"))
        .collect();
    let [bytes, allocs, rss] = values[..] else {
        panic!("three values from the {mechanism} memory process")
    };
    let memory = Memory {
        bytes,
        allocs,
        rss: (!rss.is_nan()).then_some(rss),
    };
    eprintln!(
        "  6- {mechanism} n={n}: {:.1} B requested in {:.2} allocations, peak RSS {} B per child",
        memory.bytes,
        memory.allocs,
        memory
            .rss
            .map_or("?".to_string(), |rss| format!("{rss:.1}"))
    );
    memory
}

/// `6-bytes` and `6-rss` rows: ours and `joinset`, one process each.
pub fn measure(settings: &Settings) -> Vec<Row> {
    let n = settings.memory_n();
    let (ours, peer) = (run_child("ours", n), run_child("joinset", n));
    let runtime = Flavor::MultiThread.name();
    let mut rows = vec![Row::new(
        "6-bytes", runtime, n, ours.bytes, "joinset", peer.bytes,
    )];
    if let (Some(ours), Some(peer)) = (ours.rss, peer.rss) {
        rows.push(Row::new("6-rss", runtime, n, ours, "joinset", peer));
    }
    rows
}
