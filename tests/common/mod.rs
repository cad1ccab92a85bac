//! Shared test utilities (`mod common;` in a test crate).
//!
//! - [`LiveFutures`] counts futures created and dropped, so a test can prove that a body was
//!   dropped (hard delivery, `cancellable`), that it was *not* dropped early, and that a test
//!   ends with zero live futures (SPEC R3).
//! - [`settle_tasks`] waits until the runtime's count of alive tasks reaches an expected
//!   value, so a test can prove that the tasks the crate runs for itself (the deadline
//!   service) exist only while they have work (SPEC R3).
//! - [`wait_until`] spins on a condition with a hang bound; [`spin_until`] does the same on a
//!   flag for code that cannot await.
//! - [`leak_checked`] runs a test's body, then checks that no task is left on the runtime
//!   (SPEC R3); every `#[tokio::test]` of the integration tests runs its body in it.
//! - [`Unfinished`] marks a future cut short (dropped before it finished), for the tests of
//!   what the crate must never drop (parallel borrowing scopes, SPEC B2).
//! - [`nursery`] holds the helpers of the nursery test crates (tests/spec_nursery.rs,
//!   tests/spec_nursery_more.rs).
//! - [`hang`] bounds tests that run on threads of their own; [`wakers`] holds wakers that run
//!   a test's code inside the crate.
//!
//! Waiting helpers never count yields and never use timing thresholds: they spin (yielding to
//! the scheduler) until the condition holds and fail only past [`HANG_BOUND`] of real time,
//! which no correct run comes close to. They measure real time with `std::time::Instant`, so
//! they also work under tokio's paused clock without advancing it.
//!
//! Each test crate uses a subset of this module, hence the `dead_code` allowances.

#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

#[cfg(feature = "tracing")]
pub mod events;
pub mod hang;
pub mod nursery;
pub mod wakers;

/// How long a waiting helper waits before declaring a hang (real time).
pub const HANG_BOUND: Duration = Duration::from_secs(10);

/// Counts live futures: created (when wrapped) versus dropped (when the wrapper is dropped,
/// whether it completed or not). Cheap to clone; clones share the counters.
///
/// ```ignore
/// let live = LiveFutures::new();
/// let body = live.track(async { /* ... */ });
/// assert_eq!(live.live(), 1);
/// drop(body);
/// assert_eq!(live.live(), 0);
/// ```
#[derive(Clone, Default, Debug)]
pub struct LiveFutures {
    counts: Arc<Counts>,
}

#[derive(Default, Debug)]
struct Counts {
    created: AtomicUsize,
    dropped: AtomicUsize,
    completed: AtomicUsize,
}

impl LiveFutures {
    /// A counter with nothing tracked yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wraps `future`; counts it as created now and as dropped when the wrapper is dropped.
    /// The wrapper's output is the future's output.
    pub fn track<F: Future>(&self, future: F) -> Tracked<F> {
        self.counts.created.fetch_add(1, Ordering::SeqCst);
        Tracked {
            future: Box::pin(future),
            done: false,
            counts: self.counts.clone(),
        }
    }

    /// A guard counted like a tracked future: created now, dropped when the guard is dropped.
    /// Move it into an async block to observe when that block's state is dropped.
    pub fn guard(&self) -> LiveGuard {
        self.counts.created.fetch_add(1, Ordering::SeqCst);
        LiveGuard {
            counts: self.counts.clone(),
        }
    }

    /// Tracked futures (and guards) created and not yet dropped.
    pub fn live(&self) -> usize {
        self.created() - self.dropped()
    }

    /// Tracked futures (and guards) created so far.
    pub fn created(&self) -> usize {
        self.counts.created.load(Ordering::SeqCst)
    }

    /// Tracked futures (and guards) dropped so far.
    pub fn dropped(&self) -> usize {
        self.counts.dropped.load(Ordering::SeqCst)
    }

    /// Tracked futures that completed (returned `Ready`) so far; a tracked future dropped
    /// while pending counts as dropped but not completed.
    pub fn completed(&self) -> usize {
        self.counts.completed.load(Ordering::SeqCst)
    }

    /// Waits until [`live`](Self::live) is `expected` (for futures dropped on other threads).
    /// Panics past [`HANG_BOUND`].
    pub async fn wait_live(&self, expected: usize) {
        wait_until(&format!("{expected} live futures"), || {
            self.live() == expected
        })
        .await;
    }
}

/// A future wrapped by [`LiveFutures::track`].
#[must_use = "futures do nothing unless polled"]
pub struct Tracked<F> {
    future: Pin<Box<F>>,
    done: bool,
    counts: Arc<Counts>,
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let poll = self.future.as_mut().poll(cx);
        if poll.is_ready() && !self.done {
            self.done = true;
            self.counts.completed.fetch_add(1, Ordering::SeqCst);
        }
        poll
    }
}

impl<F> Drop for Tracked<F> {
    fn drop(&mut self) {
        self.counts.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// A guard made by [`LiveFutures::guard`].
#[derive(Debug)]
pub struct LiveGuard {
    counts: Arc<Counts>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.counts.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// The number of tasks alive on the current runtime.
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits until the current runtime has exactly `expected` alive tasks. Panics past
/// [`HANG_BOUND`]. The test's own body (the future `#[tokio::test]` blocks on) is not a task.
///
/// With no task of the test's own left, `settle_tasks(0)` proves that the crate's deadline
/// service has exited (SPEC R3).
pub async fn settle_tasks(expected: usize) {
    wait_until(&format!("{expected} alive tasks"), || {
        alive_tasks() == expected
    })
    .await;
}

/// Runs a test's `body`, then checks that it left no task on the runtime (SPEC R3): awaits
/// [`alive_tasks`] reaching 0 and panics past [`HANG_BOUND`] of real time, naming how many
/// tasks are left. Every `#[tokio::test]` of the integration tests runs its body in it.
///
/// The wait spins with `yield_now`, which keeps the runtime busy, so tokio's paused clock
/// does not auto-advance meanwhile: a task still alive once the body has returned is a leak
/// even if it would end by itself later (a timer of the crate's deadline service, a helper
/// server, a forgotten `tokio::spawn`). On a multi-thread runtime the workers drop finished
/// tasks concurrently; the wait lets them. The body itself (the future `#[tokio::test]` and
/// `block_on` run) is not a task. In a passing test the first check usually holds: the cost
/// is one metrics read.
pub async fn leak_checked<F: Future>(body: F) -> F::Output {
    let output = body.await;
    assert_no_tasks_left().await;
    output
}

/// The check of [`leak_checked`] on its own: waits (without advancing the paused clock) until
/// the current runtime has no alive task, and panics past [`HANG_BOUND`] naming how many are
/// left.
pub async fn assert_no_tasks_left() {
    assert_no_tasks_left_within(HANG_BOUND).await;
}

/// [`assert_no_tasks_left`] with another hang bound (the leak check's own tests, where the
/// task left behind can never end, so the bound decides nothing but how long they take).
pub async fn assert_no_tasks_left_within(bound: Duration) {
    let hang = std::time::Instant::now() + bound;
    loop {
        let alive = alive_tasks();
        if alive == 0 {
            return;
        }
        if std::time::Instant::now() >= hang {
            panic!(
                "leak (SPEC R3): {alive} task(s) still alive on the runtime {bound:?} \
                 after the test body returned"
            );
        }
        tokio::task::yield_now().await;
    }
}

/// Yields to the scheduler until `condition` holds. Panics past [`HANG_BOUND`] of real time,
/// naming `what` it waited for.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let hang = std::time::Instant::now() + HANG_BOUND;
    while !condition() {
        assert!(
            std::time::Instant::now() < hang,
            "hang: still waiting for {what} after {HANG_BOUND:?}"
        );
        tokio::task::yield_now().await;
    }
}

/// Spins (yielding the thread, for code that cannot await: a drop, a poll that blocks)
/// until `flag` is set. Panics past [`HANG_BOUND`] of real time, naming `what` it waited for.
pub fn spin_until(flag: &std::sync::atomic::AtomicBool, what: &str) {
    spin_until_that(what, || flag.load(Ordering::SeqCst));
}

/// Spins (yielding the thread) until `condition` holds. Panics past [`HANG_BOUND`] of real
/// time, naming `what` it waited for.
pub fn spin_until_that(what: &str, mut condition: impl FnMut() -> bool) {
    let hang = std::time::Instant::now() + HANG_BOUND;
    while !condition() {
        assert!(
            std::time::Instant::now() < hang,
            "hang: still waiting for {what} after {HANG_BOUND:?}"
        );
        std::thread::yield_now();
    }
}

/// Yields this many times at most while something that should wait (a parallel scope's
/// drop) may instead return: a chance for a bug to show, not a timing threshold (the spin
/// ends at once when the awaited thing happened).
pub const GRACE_SPINS: usize = 200_000;

/// The default stack size of a spawned Rust thread (2 MiB).
pub const DEFAULT_STACK: usize = 2 * 1024 * 1024;

/// Runs `test` on a new thread with a stack of `stack_size` bytes (e.g. [`DEFAULT_STACK`], to
/// check that something does not recurse in depth, whatever the harness's threads use) and
/// returns its result, resuming its panic if it panicked.
pub fn on_thread<R: Send + 'static>(
    stack_size: usize,
    test: impl FnOnce() -> R + Send + 'static,
) -> R {
    let thread = std::thread::Builder::new()
        .stack_size(stack_size)
        .spawn(test)
        .expect("spawn test thread");
    match thread.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// An application error type implementing `CancelError` (SPEC S15) and accepting
/// `TimedOut` (SPEC S10), for the scope test crates.
#[derive(Debug)]
pub enum AppError {
    Cancelled(tokio_nursery::Cancelled),
    TimedOut(tokio_nursery::TimedOut),
    Other(&'static str),
}

impl From<tokio_nursery::Cancelled> for AppError {
    fn from(cancelled: tokio_nursery::Cancelled) -> Self {
        AppError::Cancelled(cancelled)
    }
}

impl From<tokio_nursery::TimedOut> for AppError {
    fn from(timed_out: tokio_nursery::TimedOut) -> Self {
        AppError::TimedOut(timed_out)
    }
}

impl tokio_nursery::CancelError for AppError {
    fn as_cancelled(&self) -> Option<&tokio_nursery::Cancelled> {
        match self {
            AppError::Cancelled(cancelled) => Some(cancelled),
            _ => None,
        }
    }
}

/// Sets its flag when dropped before `finished` was set: a future cut short.
pub struct Unfinished<'a> {
    pub flag: &'a std::sync::atomic::AtomicBool,
    pub finished: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}
