//! Request-scoped fan-out: one request asks several backends at once, inside a nursery with
//! a deadline.
//!
//! ```text
//! cargo run --example fanout
//! ```
//!
//! It shows two requests:
//!
//! 1. A backend fails. Fail-fast: the first failure cancels the nursery's scope, so every
//!    sibling sees `CancelReason::SiblingFailed` at its next cancellation point and cleans up.
//!    The nursery waits for all of them (including one stuck in a call that is not a
//!    cancellation point) and then reports *every* failure, the first one first.
//! 2. No backend fails, but two are slower than the request's 50 ms budget. The deadline
//!    (`CancelReason::Deadline`) cuts them, they clean up, and the request answers with what
//!    arrived in time.
//!
//! The example runs on tokio's paused clock (a current-thread runtime built with
//! `start_paused(true)`): the runtime jumps straight to the next timer whenever every task is
//! waiting, so the simulated latencies cost no real time and every timestamp printed is exact
//! and the same on every run.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tokio_nursery::{
    CancelError, CancelReason, Cancelled, JoinError, Nursery, NurseryError, Origin, sleep,
};

/// Prints a line stamped with the request's virtual time.
macro_rules! say {
    ($($arg:tt)*) => {
        println!("  [{:>3} ms] {}", millis(), format_args!($($arg)*))
    };
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("build a tokio runtime");

    println!("tokio-nursery: request-scoped fan-out with a deadline");
    println!();
    println!("Running on tokio's paused clock: the backends' latencies are simulated with");
    println!("sleeps that cost no real time, so the [times] are virtual milliseconds since the");
    println!("request started, exact and the same on every run.");

    runtime.block_on(async {
        println!();
        println!("=== Request 1: a backend fails (budget 100 ms) ===");
        println!("  `ads` fails at 30 ms. `inventory` uses a legacy client with no cancellation");
        println!("  point (a plain tokio await): nobody can tell it to stop, and it fails too.");
        println!();
        handle_request(
            Duration::from_millis(100),
            &[
                Backend::answers("search", 80),
                Backend::answers("profile", 120),
                Backend::fails("ads", 30),
                Backend::legacy_fails("inventory", 45),
            ],
        )
        .await;

        println!();
        println!("=== Request 2: the deadline cuts the slow backends (budget 50 ms) ===");
        println!("  No backend fails, but `recommendations` (80 ms) and `reviews` (200 ms) are");
        println!("  slower than the budget.");
        println!();
        handle_request(
            Duration::from_millis(50),
            &[
                Backend::answers("search", 20),
                Backend::answers("profile", 35),
                Backend::answers("recommendations", 80),
                Backend::answers("reviews", 200),
            ],
        )
        .await;
    });
}

/// One request: a nursery whose scope has the request's deadline, one child per backend.
async fn handle_request(budget: Duration, backends: &[Backend]) {
    reset_clock();
    let deadline = Instant::now() + budget;
    let backends = backends.to_vec();
    let asked = backends.len();

    // The request's deadline is the nursery's: every child inherits it. (Opening the
    // nursery inside `move_on_after(budget, ..)` would bound it the same way.)
    let outcome = Nursery::new()
        .deadline(deadline)
        .run(|n| async move {
            // A collector gives every child's outcome in completion order, like a `JoinSet`.
            let mut calls = n.collector::<String>();
            let mut names = HashMap::new();
            for backend in backends {
                let child = calls.spawn_named(backend.name, call(backend));
                names.insert(child.id(), backend.name);
            }
            say!("request: fanned out to {} backends", names.len());

            // `join_next` is not a cancellation point: it hands over every outcome, also
            // after the nursery was cancelled, until no child is left.
            let mut answers = Vec::new();
            while let Some((id, outcome)) = calls.join_next().await {
                let name = names[&id];
                match outcome {
                    Ok(answer) => {
                        say!("request: got {name}: {answer:?}");
                        answers.push(answer);
                    }
                    Err(JoinError::ChildCancelled) => say!("request: {name} was cut short"),
                    Err(JoinError::ChildFailed) => {
                        say!("request: {name} failed (the nursery keeps its error)")
                    }
                    Err(other) => say!("request: {name}: {other}"),
                }
            }
            // A partial answer: what arrived in time. If a child failed, the nursery
            // reports the failures instead of this value.
            Ok::<_, BackendError>(answers)
        })
        .await;

    match outcome {
        Ok(Some(answers)) => {
            say!(
                "nursery -> Ok: {} of {asked} answers: {answers:?}",
                answers.len()
            );
        }
        Ok(None) => say!("nursery -> Ok(None): cancelled, no answer"),
        Err(NurseryError::Failed(failures)) => {
            say!(
                "nursery -> Err(Failed): {} failures, none lost:",
                failures.len()
            );
            for (i, failure) in failures.iter().enumerate() {
                let first = if i == 0 {
                    " (the first: it cancelled the rest)"
                } else {
                    ""
                };
                say!(
                    "    {}: {}{first}",
                    child_name(failure.origin()),
                    failure.error()
                );
            }
        }
        Err(NurseryError::Cancelled(cancelled)) => {
            say!("nursery -> cancelled from outside: {cancelled}")
        }
    }
}

/// A simulated backend.
#[derive(Clone, Copy)]
struct Backend {
    name: &'static str,
    latency_ms: u64,
    fails: bool,
    /// Waits with a plain `tokio::time::sleep`, which is not a cancellation point.
    legacy: bool,
}

impl Backend {
    fn answers(name: &'static str, latency_ms: u64) -> Self {
        Backend {
            name,
            latency_ms,
            fails: false,
            legacy: false,
        }
    }

    fn fails(name: &'static str, latency_ms: u64) -> Self {
        Backend {
            fails: true,
            ..Backend::answers(name, latency_ms)
        }
    }

    fn legacy_fails(name: &'static str, latency_ms: u64) -> Self {
        Backend {
            legacy: true,
            ..Backend::fails(name, latency_ms)
        }
    }
}

/// One backend call: a child of the request's nursery.
async fn call(backend: Backend) -> Result<String, BackendError> {
    let Backend {
        name, latency_ms, ..
    } = backend;
    let latency = Duration::from_millis(latency_ms);
    if backend.legacy {
        // Not a cancellation point: this call runs to its end whatever happens around it.
        tokio::time::sleep(latency).await;
    } else if let Err(cancelled) = sleep(latency).await {
        // `tokio_nursery::sleep` is a cancellation point: it reports the cancellation.
        let why = match cancelled.reason() {
            CancelReason::SiblingFailed => "a sibling failed",
            CancelReason::Deadline => "the request's deadline passed",
            _ => "cancelled",
        };
        say!("  {name}: cancelled ({why}); closing its connection (5 ms)");
        // Cleanup may await: plain tokio awaits still work in a cancelled scope.
        tokio::time::sleep(Duration::from_millis(5)).await;
        say!("  {name}: cleaned up");
        // Hand the cancellation back: an echo, not a failure.
        return Err(cancelled.into());
    }
    if backend.fails {
        say!("  {name}: failed with HTTP 503");
        return Err(BackendError::Unavailable { backend: name });
    }
    say!("  {name}: answered");
    Ok(format!("{name} ({latency_ms} ms)"))
}

/// What a backend call can fail with. It carries `Cancelled` so the nursery can tell an echo
/// of a cancellation from a real failure (`CancelError`).
#[derive(Debug)]
enum BackendError {
    Cancelled(Cancelled),
    Unavailable { backend: &'static str },
}

impl From<Cancelled> for BackendError {
    fn from(cancelled: Cancelled) -> Self {
        BackendError::Cancelled(cancelled)
    }
}

impl CancelError for BackendError {
    fn as_cancelled(&self) -> Option<&Cancelled> {
        match self {
            BackendError::Cancelled(cancelled) => Some(cancelled),
            BackendError::Unavailable { .. } => None,
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::Cancelled(cancelled) => cancelled.fmt(f),
            BackendError::Unavailable { backend } => write!(f, "{backend} returned HTTP 503"),
        }
    }
}

fn child_name(origin: &Origin) -> &str {
    match origin {
        Origin::Child {
            name: Some(name), ..
        } => name,
        Origin::Child { name: None, .. } => "an unnamed child",
        Origin::Body => "the request body",
        _ => "somebody else",
    }
}

// --- Virtual time ---------------------------------------------------------------------------

static REQUEST_START: Mutex<Option<Instant>> = Mutex::new(None);

fn reset_clock() {
    *REQUEST_START.lock().unwrap() = Some(Instant::now());
}

fn millis() -> u128 {
    let start = REQUEST_START
        .lock()
        .unwrap()
        .expect("a request has started");
    start.elapsed().as_millis()
}
