//! SPEC N14 measured in bytes: "a finished child whose handle was dropped keeps nothing but
//! its failure, if any: millions of short children pass through flat in memory. A
//! collecting nursery (N15) keeps outcomes until taken, as `JoinSet` does; a supervisor
//! stays flat while its outlet is drained." (tests/scale.rs and tests/spec_nursery_more.rs
//! count live children; here a counting global allocator counts the bytes.)
//!
//! How it measures:
//! - The allocator counts the bytes live on the *current thread*: requested sizes allocated
//!   minus freed there (plus a peak since the last [`reset_peak`]), in const-initialised
//!   thread-locals, as tests/ready_scope_allocates_nothing.rs does. Not a process-wide
//!   counter: the test harness runs this binary's tests on parallel threads, and its main
//!   thread allocates whenever a test starts or ends (thread handles, names, result
//!   messages), so a process-wide count would move between two readings of a test for
//!   reasons outside it. On a current_thread runtime everything the test does (the runtime,
//!   the nursery, every child, tokio's queues) is allocated and freed on the test's thread,
//!   so that thread's count is exactly the test's memory.
//! - Children are spawned in waves of [`WAVE`]; after each wave the body waits, with the
//!   nursery still open, until every child has finished (a quiescent point: nothing runs,
//!   nothing is queued), then reads the count. The body keeps its readings in fixed arrays
//!   inside its own future, so reading allocates nothing.
//! - Wave 1 warms up what grows once to a wave's size and is then reused: tokio's run
//!   queue, the nursery's slot pages (src/pages.rs, never shrunk), the outlet's and the
//!   collector's queues, lazily made thread-locals and `tracing` callsites. The baseline is
//!   taken after wave 2 (after wave 1 was taken for the collector; after a warm-up that
//!   sizes the outlet's queue for the undrained supervisor); every later wave is compared
//!   with it.
//!
//! Why [`SLACK`] is 4 KiB: a correct implementation measures exactly the same bytes at each
//! quiescent point (the measured differences are 0, in debug and release builds; see the
//! numbers each test prints with `--nocapture`). The slack only keeps the test from turning
//! flaky over a small one-off allocation made later than wave 1 (a lazily made buffer of
//! tokio's, say); it is fixed, does not grow with the number of waves, and is below what
//! any per-child retention adds: each compared wave passes 10,000 children, so keeping even
//! 1 byte per finished child puts the first compared wave 10,000 bytes off and the last
//! 80,000 (100,000 for the undrained supervisor). Each test also checks that the counter
//! does see the children (the peak while a wave is in flight is at least
//! [`MIN_CHILD_BYTES`] per child above the reading the wave started from), so flatness is
//! not an artefact of counting nothing.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::AppError;
use tokio_nursery::{Cancelled, Failure, Incident, Nursery, local_scope};

// ---------------------------------------------------------------------------------------------
// The counting allocator.
// ---------------------------------------------------------------------------------------------

struct Counting;

thread_local! {
    /// Bytes allocated minus bytes freed on this thread (signed: a thread may free what
    /// another allocated).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// The highest `LIVE` since the last [`reset_peak`].
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn grew(bytes: usize) {
    let live = LIVE.with(|live| {
        let now = live.get() + bytes as isize;
        live.set(now);
        now
    });
    PEAK.with(|peak| {
        if live > peak.get() {
            peak.set(live);
        }
    });
}

fn shrank(bytes: usize) {
    LIVE.with(|live| live.set(live.get() - bytes as isize));
}

// SAFETY: defers every operation to `System`; the counters are const-initialised
// thread-local `Cell`s without destructors, which never allocate and stay usable while a
// thread ends.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes live on this thread now.
fn live() -> isize {
    LIVE.with(Cell::get)
}

/// Starts a new peak at the bytes live now.
fn reset_peak() {
    let now = live();
    PEAK.with(|peak| peak.set(now));
}

/// The highest bytes live since the last [`reset_peak`].
fn peak() -> isize {
    PEAK.with(Cell::get)
}

// ---------------------------------------------------------------------------------------------
// Shared by the tests.
// ---------------------------------------------------------------------------------------------

/// Children per wave.
const WAVE: usize = 10_000;
/// Waves per test: wave 1 warms up, wave 2 is the baseline, waves 3..=10 are compared.
const WAVES: usize = 10;
/// The wave whose reading is the baseline (see the module docs).
const BASELINE: usize = 2;
/// How far a reading may be from the baseline (see the module docs for why 4 KiB).
const SLACK: isize = 4 * 1024;
/// A lower bound on what a child in flight costs (its tokio task cell alone is bigger): the
/// peak of a wave must be at least this much per child above the reading before it.
const MIN_CHILD_BYTES: isize = 64;

/// Yields until `done` holds, allocating nothing (the waiting is part of what is measured).
/// Panics past [`common::HANG_BOUND`] of real time.
async fn quiesce(mut done: impl FnMut() -> bool) {
    let hang = std::time::Instant::now() + common::HANG_BOUND;
    while !done() {
        assert!(
            std::time::Instant::now() < hang,
            "hang: the wave did not finish"
        );
        tokio::task::yield_now().await;
    }
}

/// Bytes live after each wave (index = wave, 1-based; index 0: before the first wave, once
/// the nursery's body runs) and the peak during each wave.
#[derive(Clone, Copy, Debug)]
struct Readings {
    after: [isize; WAVES + 1],
    peak: [isize; WAVES + 1],
}

impl Readings {
    const fn new() -> Self {
        Readings {
            after: [0; WAVES + 1],
            peak: [0; WAVES + 1],
        }
    }

    /// Records the start of a wave.
    fn start_wave(&self) {
        reset_peak();
    }

    /// Records the end of `wave`, at a quiescent point.
    fn end_wave(&mut self, wave: usize) {
        self.after[wave] = live();
        self.peak[wave] = peak();
    }

    /// Every reading from the baseline on is within [`SLACK`] of it, and each wave's peak
    /// shows its children were counted. `what` names the test in messages.
    fn assert_flat(&self, what: &str) {
        let base = self.after[BASELINE];
        for wave in BASELINE + 1..=WAVES {
            let drift = self.after[wave] - base;
            assert!(
                drift.abs() <= SLACK,
                "{what}: {drift} bytes more after wave {wave} than after wave {BASELINE} \
                 ({} bytes per child since): finished children left something behind; \
                 readings {:?}",
                drift as f64 / ((wave - BASELINE) * WAVE) as f64,
                self.after,
            );
        }
        self.assert_children_counted(what, &self.after);
    }

    /// Each wave's peak is at least [`MIN_CHILD_BYTES`] per child above the reading the
    /// wave started from (`start[wave - 1]`).
    fn assert_children_counted(&self, what: &str, start: &[isize; WAVES + 1]) {
        for wave in 1..=WAVES {
            let in_flight = self.peak[wave] - start[wave - 1];
            assert!(
                in_flight >= MIN_CHILD_BYTES * WAVE as isize,
                "{what}: wave {wave} peaked only {in_flight} bytes above its start: the \
                 counter does not see the children"
            );
        }
    }

    /// Prints the readings, compared with the one after wave `baseline`.
    fn print(&self, what: &str, baseline: usize) {
        let base = self.after[baseline];
        eprintln!("{what}: bytes live after each wave (0: before the first):");
        for wave in 0..=WAVES {
            eprintln!(
                "  wave {wave:2}: {:>10} ({:+} vs wave {baseline}), peak during it {:>10}",
                self.after[wave],
                self.after[wave] - base,
                self.peak[wave],
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. A non-collecting nursery: finished children keep nothing.
// ---------------------------------------------------------------------------------------------

/// Ten waves of 10,000 children that return `Ok` at once, handles dropped, through one
/// nursery kept open: the bytes live after wave 10 are those after wave 2. Proves that a
/// finished child whose handle was dropped leaves nothing behind (no task cell, no child
/// cell, no registry slot beyond the reused pages, no outcome) in a non-collecting nursery
/// (SPEC N14).
#[tokio::test(flavor = "current_thread")]
async fn n14_finished_children_leave_no_bytes_behind() {
    common::leak_checked(async move {
        let out = Nursery::new()
            .run(|n| async move {
                let mut readings = Readings::new();
                readings.after[0] = live();
                for wave in 1..=WAVES {
                    readings.start_wave();
                    for i in 0..WAVE {
                        drop(n.spawn(async move { Ok::<_, Cancelled>(i) }));
                    }
                    quiesce(|| n.live_children() == 0).await;
                    readings.end_wave(wave);
                }
                Ok::<_, Cancelled>(readings)
            })
            .await;
        let readings = out.unwrap().expect("not cancelled");
        readings.print("non-collecting nursery, Ok children", BASELINE);
        readings.assert_flat("non-collecting nursery");
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 2. A supervisor: flat while its outlet is drained; only the failures otherwise.
// ---------------------------------------------------------------------------------------------

/// Ten waves of 10,000 children that fail, handles dropped, under a supervisor whose body
/// drains the outlet (`next_incident`) after each wave: the bytes live after wave 10 are
/// those after wave 2. Proves that a supervisor stays flat while its outlet is drained
/// (SPEC N14): a failed child keeps nothing once its failure was taken.
#[tokio::test(flavor = "current_thread")]
async fn n14_a_drained_supervisor_stays_flat() {
    common::leak_checked(async move {
        let out = Nursery::new()
            .supervisor()
            .run(|n| async move {
                let mut readings = Readings::new();
                readings.after[0] = live();
                for wave in 1..=WAVES {
                    readings.start_wave();
                    for _ in 0..WAVE {
                        drop(n.spawn(async { Err::<(), _>(AppError::Other("boom")) }));
                    }
                    for _ in 0..WAVE {
                        let incident = n.next_incident().await;
                        assert!(
                            matches!(incident, Some(Incident::Failed(_))),
                            "every child failed"
                        );
                    }
                    quiesce(|| n.live_children() == 0).await;
                    readings.end_wave(wave);
                }
                Ok::<_, AppError>(readings)
            })
            .await;
        let readings = match out {
            Ok(Some(readings)) => readings,
            other => panic!("every failure was taken: nothing to return; got {other:?}"),
        };
        readings.print("supervisor, failing children, outlet drained", BASELINE);
        readings.assert_flat("drained supervisor");
    })
    .await
}

/// The contrast: failing children under a supervisor whose outlet nobody drains. The
/// nursery keeps their failures (it returns them all at the end) and nothing else. To see
/// "nothing else" exactly, a warm-up first fills the outlet's queue with as many failures
/// as the measured waves will leave, and drains it: the queue keeps its capacity (a
/// `VecDeque` does not shrink), so a kept failure then costs no new byte. After that
/// baseline, ten waves of 10,000 failing children, none of their failures taken, leave the
/// bytes live exactly where they were: each failed child keeps only its `Failure` (an
/// `AppError` with no heap data), in a queue slot that already existed, and no task cell,
/// child cell or other allocation (SPEC N14, "keeps nothing but its failure").
///
/// (Without the warm-up the bytes grow in the queue's doubling steps: about 100 bytes per
/// kept failure at 100,000 of them, for 80-byte failures.)
#[tokio::test(flavor = "current_thread")]
async fn n14_an_undrained_supervisor_keeps_only_the_failures() {
    common::leak_checked(async move {
        // The nursery ends failed (its failures were not taken): the readings come back
        // through this cell instead of its value.
        let kept = Cell::new(Readings::new());
        let kept = &kept;
        let out = Nursery::new()
            .supervisor()
            .run(|n| async move {
                // Warm-up: as many failures as the measured waves will keep, then taken.
                for _ in 0..WAVES {
                    for _ in 0..WAVE {
                        drop(n.spawn(async { Err::<(), _>(AppError::Other("warm-up")) }));
                    }
                    quiesce(|| n.live_children() == 0).await;
                }
                for _ in 0..WAVES * WAVE {
                    let incident = n.next_incident().await;
                    assert!(matches!(incident, Some(Incident::Failed(_))));
                }
                let mut readings = Readings::new();
                readings.after[0] = live();
                for wave in 1..=WAVES {
                    readings.start_wave();
                    for _ in 0..WAVE {
                        drop(n.spawn(async { Err::<(), _>(AppError::Other("boom")) }));
                    }
                    quiesce(|| n.live_children() == 0).await;
                    readings.end_wave(wave);
                }
                kept.set(readings);
                Ok::<_, AppError>(())
            })
            .await;
        let failures = match out {
            Err(tokio_nursery::NurseryError::Failed(failures)) => failures,
            other => panic!("the failures nobody took are returned; got {other:?}"),
        };
        assert_eq!(
            failures.len(),
            WAVE * WAVES,
            "every failure not taken is kept"
        );
        assert!(
            failures
                .iter()
                .all(|f| matches!(f.error(), AppError::Other("boom")))
        );
        let readings = kept.get();
        readings.print(
            "supervisor, failing children, outlet not drained (after a warm-up)",
            0,
        );
        let base = readings.after[0];
        for wave in 1..=WAVES {
            let held = readings.after[wave] - base;
            assert!(
                held.abs() <= SLACK,
                "undrained supervisor: {held} bytes held for {} kept failures ({} per \
                 failure) in a queue that had room for them: a failed child keeps more than \
                 its failure; readings {:?}",
                wave * WAVE,
                held as f64 / (wave * WAVE) as f64,
                readings.after,
            );
        }
        readings.assert_children_counted("undrained supervisor", &readings.after);
        // Keeping them all is what the outlet is for: one `Failure` each, returned above.
        eprintln!(
            "  a Failure<AppError> is {} bytes",
            std::mem::size_of::<Failure<AppError>>()
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 3. A collecting nursery: outcomes are kept until taken.
// ---------------------------------------------------------------------------------------------

/// Ten waves of 10,000 children spawned through a collector (SPEC N15). After each wave
/// finished, the bytes live are above the baseline by what the untaken outcomes hold; once
/// `try_join_next` took them all, the bytes return to the baseline (the reading after wave
/// 1 was taken, tokio's and the collector's queues warmed up). Proves the contrast of SPEC
/// N14: a collecting nursery keeps outcomes until taken, and keeps nothing once they are.
#[tokio::test(flavor = "current_thread")]
async fn n14_a_collector_keeps_outcomes_until_taken() {
    common::leak_checked(async move {
        let out = Nursery::new()
            .run(|n| async move {
                let mut set = n.collector::<u64>();
                // `held`: every child finished, nothing taken; `taken`: all taken.
                let mut held = Readings::new();
                let mut taken = Readings::new();
                taken.after[0] = live();
                for wave in 1..=WAVES {
                    held.start_wave();
                    for i in 0..WAVE as u64 {
                        drop(set.spawn(async move { Ok::<_, Cancelled>(i) }));
                    }
                    quiesce(|| n.live_children() == 0).await;
                    held.end_wave(wave);
                    taken.start_wave();
                    let mut count = 0;
                    let mut sum = 0;
                    while let Some((_, outcome)) = set.try_join_next() {
                        sum += outcome.expect("every child returned Ok");
                        count += 1;
                    }
                    assert_eq!(count, WAVE, "one outcome per child");
                    assert_eq!(sum, (WAVE as u64 - 1) * WAVE as u64 / 2);
                    assert!(set.is_empty());
                    taken.end_wave(wave);
                }
                Ok::<_, Cancelled>((held, taken))
            })
            .await;
        let (held, taken) = out.unwrap().expect("not cancelled");
        eprintln!("collector: bytes live after each wave finished (held) and was taken:");
        let base = taken.after[1];
        for wave in 1..=WAVES {
            eprintln!(
                "  wave {wave:2}: held {:>10} ({:+} vs taken after wave 1 = {:.1} per \
                 outcome), taken {:>10} ({:+}), peak {:>10}",
                held.after[wave],
                held.after[wave] - base,
                (held.after[wave] - base) as f64 / WAVE as f64,
                taken.after[wave],
                taken.after[wave] - base,
                held.peak[wave],
            );
        }
        for wave in 2..=WAVES {
            // Outcomes not taken hold memory: at least a task's worth per outcome (the
            // collector keeps each child's abort handle, hence its task cell, until taken).
            let held_bytes = held.after[wave] - taken.after[wave - 1];
            assert!(
                held_bytes >= MIN_CHILD_BYTES * WAVE as isize,
                "collector: {held_bytes} bytes held by {WAVE} untaken outcomes after wave \
                 {wave}: outcomes are not kept?"
            );
            // Taken, they leave nothing behind.
            let drift = taken.after[wave] - base;
            assert!(
                drift.abs() <= SLACK,
                "collector: {drift} bytes more once wave {wave} was taken than once wave 1 \
                 was; readings {:?}",
                taken.after,
            );
        }
        held.assert_children_counted("collector", &taken.after);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 4. A local scope: finished children keep nothing.
// ---------------------------------------------------------------------------------------------

/// Ten waves of 10,000 local children (SPEC B1) that return `Ok` at once, handles dropped,
/// through one local scope kept open: the bytes live after wave 10 are those after wave 2.
/// Proves N14's flatness for local scopes, whose children live in the scope's own pages
/// rather than in tokio tasks.
#[tokio::test(flavor = "current_thread")]
async fn n14_local_children_leave_no_bytes_behind() {
    common::leak_checked(async move {
        let finished = Cell::new(0usize);
        let finished = &finished;
        let out = local_scope(async |s| {
            let mut readings = Readings::new();
            readings.after[0] = live();
            for wave in 1..=WAVES {
                readings.start_wave();
                for i in 0..WAVE {
                    drop(s.spawn(async move {
                        finished.set(finished.get() + 1);
                        Ok::<_, Cancelled>(i)
                    }));
                }
                quiesce(|| finished.get() == wave * WAVE).await;
                readings.end_wave(wave);
            }
            Ok::<_, Cancelled>(readings)
        })
        .await;
        let readings = out.unwrap().expect("not cancelled");
        readings.print("local scope, Ok children", BASELINE);
        readings.assert_flat("local scope");
    })
    .await
}
