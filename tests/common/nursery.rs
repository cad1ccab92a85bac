//! Helpers shared by the nursery test crates (tests/spec_nursery.rs,
//! tests/spec_nursery_more.rs): durations, Trio's `sleep_forever` / `wait_all_tasks_blocked`,
//! hang bounds, panics with typed payloads, an event log, an application error type
//! implementing `CancelError`, and accessors for nursery outcomes, origins and reasons.
//!
//! Each test crate uses a subset (see the `dead_code` allowance in [`super`]).

use std::any::Any;
use std::collections::BTreeSet;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_nursery::{
    CancelError, CancelReason, CancelScope, Cancelled, ChildHandle, Failure, JoinError,
    NurseryError, Origin, ScopeHandle, StartError, cancelled, check_cancelled,
};

use super::HANG_BOUND;

pub type BoxError = Box<dyn Error + Send + Sync>;

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub const HOUR: Duration = Duration::from_secs(3600);

/// Trio's `sleep_forever`: returns only when the current scope is cancelled, with that
/// cancellation.
pub async fn sleep_forever<E: From<Cancelled>>() -> Result<(), E> {
    Err(cancelled().await.into())
}

/// Work that is not a cancellation point and never ends by itself (only an abort stops it).
pub async fn stuck<E>() -> Result<(), E> {
    tokio::time::sleep(HOUR).await;
    unreachable!("an hour passed in a stuck child")
}

/// Trio's `wait_all_tasks_blocked`, for current_thread: lets every other ready task run.
pub async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// Runs `test` with a real-time hang bound (multi-thread tests).
pub async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(HANG_BOUND, test)
        .await
        .expect("hang: the test did not finish within the hang bound")
}

/// Under the paused clock a test that hangs would auto-advance to this timeout and fail.
pub async fn no_hang<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(24 * HOUR, test)
        .await
        .expect("hang: everything waited with nothing left to wake it")
}

/// Runs `test` on a thread of its own and waits for it with a real-time hang bound (the root's
/// tests, which block on a runtime of their own).
pub fn within_hang_bound<R: Send + 'static>(test: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(test)));
    });
    match rx.recv_timeout(HANG_BOUND) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("hang: the test did not finish within {HANG_BOUND:?}"),
    }
}

/// Sends `signal` (`TERM`, `INT`) to this process (the root's handlers take it).
#[cfg(unix)]
pub fn signal_self(signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(std::process::id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// Spawns a plain task that calls `action` at `at` (tokio's clock).
pub fn at(at: Instant, action: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep_until(at).await;
        action();
    })
}

/// Catches a panic resumed by a nursery or a start.
pub async fn catch<F: Future>(future: F) -> Result<F::Output, Box<dyn Any + Send>> {
    AssertUnwindSafe(future).catch_unwind().await
}

/// Panics with `payload` (any type, not only strings).
pub fn explode<T>(payload: impl Any + Send + 'static) -> T {
    std::panic::panic_any(payload)
}

/// A non-string panic payload, to check payloads travel intact.
#[derive(Debug, PartialEq)]
pub struct Code(pub u32);

/// The number of a [`Code`] payload (`None` for any other payload).
pub fn code(payload: &(dyn Any + Send)) -> Option<u32> {
    payload.downcast_ref::<Code>().map(|c| c.0)
}

/// Milliseconds since `start` on tokio's clock.
pub fn since(start: Instant) -> u128 {
    (Instant::now() - start).as_millis()
}

/// Runs a closure when dropped (to see when tokio drops a child's future).
pub struct OnDrop<F: FnOnce()>(pub Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(action) = self.0.take() {
            action();
        }
    }
}

/// A shared log of events.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, event: impl Into<String>) {
        self.0.lock().unwrap().push(event.into());
    }

    pub fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn set(&self) -> BTreeSet<String> {
        self.events().into_iter().collect()
    }
}

pub fn set(events: &[&str]) -> BTreeSet<String> {
    events.iter().map(|e| e.to_string()).collect()
}

/// An application error type implementing `CancelError` (SPEC S15), able to carry a join
/// error (so a body can `?` a child's handle).
#[derive(Debug)]
pub enum AppError {
    Cancelled(Cancelled),
    Boom(u32),
    Join(JoinError),
}

impl From<Cancelled> for AppError {
    fn from(c: Cancelled) -> Self {
        AppError::Cancelled(c)
    }
}

impl From<JoinError> for AppError {
    fn from(e: JoinError) -> Self {
        AppError::Join(e)
    }
}

impl CancelError for AppError {
    fn as_cancelled(&self) -> Option<&Cancelled> {
        match self {
            AppError::Cancelled(c) => Some(c),
            AppError::Join(e) => e.as_cancelled(),
            AppError::Boom(_) => None,
        }
    }
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::Cancelled(c) => write!(f, "{c}"),
            AppError::Boom(n) => write!(f, "boom {n}"),
            AppError::Join(e) => write!(f, "{e}"),
        }
    }
}

/// The failures of a nursery that failed (panics with the outcome otherwise).
pub fn failed<T: fmt::Debug, E: fmt::Debug>(
    out: Result<Option<T>, NurseryError<E>>,
) -> Vec<Failure<E>> {
    match out {
        Err(NurseryError::Failed(failures)) => failures,
        other => panic!("expected the nursery to fail, got {other:?}"),
    }
}

/// The `Boom` numbers of failures, in order.
pub fn booms(failures: &[Failure<AppError>]) -> Vec<u32> {
    failures
        .iter()
        .map(|f| match f.error() {
            AppError::Boom(n) => *n,
            other => panic!("expected a Boom failure, got {other:?}"),
        })
        .collect()
}

/// A start's outcome with the cancellation passed on (the other errors are unexpected).
pub fn started<V, E: fmt::Debug>(outcome: Result<V, StartError<E>>) -> Result<V, Cancelled> {
    match outcome {
        Ok(value) => Ok(value),
        Err(StartError::Cancelled(c)) => Err(c),
        Err(other) => panic!("unexpected start error: {other:?}"),
    }
}

/// A nested nursery's outcome with its cancellation passed on (failures are unexpected).
pub fn flat<T: fmt::Debug>(
    outcome: Result<Option<T>, NurseryError<Cancelled>>,
) -> Result<Option<T>, Cancelled> {
    match outcome {
        Ok(value) => Ok(value),
        Err(NurseryError::Cancelled(c)) => Err(c),
        Err(other) => panic!("unexpected nursery failure: {other:?}"),
    }
}

pub fn child_origin<T>(handle: &ChildHandle<T>) -> Origin {
    Origin::Child {
        id: handle.id(),
        name: handle.name().map(Arc::from),
    }
}

/// "body", a child's name, or "?" for an unnamed child.
pub fn origin_name(origin: &Origin) -> String {
    match origin {
        Origin::Body => "body".to_string(),
        Origin::Child {
            name: Some(name), ..
        } => name.to_string(),
        Origin::Child { name: None, .. } => "?".to_string(),
        other => other.to_string(),
    }
}

/// A `Cancelled` obtained from a scope that then ended normally: a stray once it leaves.
pub async fn stray_cancelled() -> (Cancelled, ScopeHandle) {
    let scope = CancelScope::new();
    let handle = scope.handle();
    handle.cancel_with("long ago");
    let kept = scope
        .run(async { Ok::<_, Cancelled>(check_cancelled().unwrap_err()) })
        .await
        .unwrap()
        .unwrap();
    (kept, handle)
}

pub fn is_explicit(reason: &CancelReason) -> bool {
    matches!(reason, CancelReason::Explicit(_))
}

pub fn is_sibling_failed(reason: &CancelReason) -> bool {
    matches!(reason, CancelReason::SiblingFailed)
}

/// `future`'s output, awaited in a shielded scope: what a waiter whose scope is not
/// cancelled learns (a collector's markers, for one).
#[allow(dead_code)]
pub async fn shielded<F: Future>(future: F) -> F::Output {
    CancelScope::new()
        .shielded()
        .run(async { Ok::<_, Cancelled>(future.await) })
        .await
        .expect("a shielded scope is not cancelled")
        .expect("its body returned")
}

/// How a child ended, as a waiter whose scope is not cancelled learns it: its handle (a
/// `ChildHandle`, `LocalHandle`, ...) awaited in a shielded scope. A waiter whose scope is
/// cancelled gets its own cancellation instead of a marker (a value still comes first).
pub async fn how_it_ended<T, H>(handle: H) -> Result<T, JoinError>
where
    H: Future<Output = Result<T, JoinError>>,
{
    CancelScope::new()
        .shielded()
        .run(async { Ok::<_, Cancelled>(handle.await) })
        .await
        .expect("a shielded scope is not cancelled")
        .expect("its body returned")
}
