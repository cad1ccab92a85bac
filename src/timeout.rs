//! Timeouts in Trio's shape (SPEC S10): [`move_on_after`] / [`move_on_at`] give up quietly,
//! [`fail_after`] / [`fail_at`] fail with [`TimedOut`].
//!
//! Each runs its body in a new cancel scope with a deadline. A body that finishes before it
//! observes the cancellation returns its value, even if the deadline has passed meanwhile.
//! These scopes link into the scope tree lazily: a body that is ready at once allocates and
//! links nothing.
//!
//! Poll one of them in the task that entered it (first polled it). Until it needs a node of
//! its own, it hears of an enclosing scope's cancellation through the scope current where it
//! is polled: moved to another task after its first poll (boxed and sent away, say), it no
//! longer hears the scope it was entered in and ends only at its own deadline. Use a
//! [`CancelScope`](crate::CancelScope), which links at entry, for a future that moves.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project::pin_project;
use tokio::time::Instant;

use crate::cancelled::CancelError;
use crate::reason::CancelReason;
use crate::scope::{DeadlineSpec, Exit, Plan, ScopeCore, Scoped};

/// Runs `body` in a scope that is cancelled `timeout` after entry (the first poll).
///
/// `Ok(Some(value))` if the body finished, `Ok(None)` if the timeout cancelled it (the scope
/// absorbed the body's `Cancelled`), `Err(error)` for the body's other errors, including an
/// outer cancellation passing through.
///
/// A body that returned a value gives `Ok(Some(value))` even when the timeout fired after
/// it: a nursery or local scope in the body returns its body's value once the children it
/// left running have stopped, cut short by the timeout or not. To know whether the timeout
/// fired, run the body in a [`CancelScope`](crate::CancelScope) with
/// [`with_timeout`](crate::CancelScope::with_timeout) and ask its handle
/// ([`cancel_called`](crate::ScopeHandle::cancel_called)).
///
/// ```
/// use std::time::Duration;
/// use tokio_nursery::{move_on_after, sleep, Cancelled};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let quick = move_on_after(Duration::from_secs(1), async { Ok::<_, Cancelled>(7) }).await;
/// assert_eq!(quick.unwrap(), Some(7));
///
/// let slow = move_on_after(Duration::from_secs(1), async {
///     sleep(Duration::from_secs(5)).await?;
///     Ok::<_, Cancelled>(7)
/// })
/// .await;
/// assert_eq!(slow.unwrap(), None);
/// # }
/// ```
pub fn move_on_after<F, T, E>(timeout: Duration, body: F) -> Scoped<F>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError,
{
    lazy_scope(DeadlineSpec::After(timeout), body)
}

/// Runs `body` in a scope that is cancelled at `deadline`. See [`move_on_after`].
pub fn move_on_at<F, T, E>(deadline: Instant, body: F) -> Scoped<F>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError,
{
    lazy_scope(DeadlineSpec::At(deadline), body)
}

fn lazy_scope<F, T, E>(deadline: DeadlineSpec, body: F) -> Scoped<F>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError,
{
    Scoped {
        core: ScopeCore::new(
            body,
            Plan::Lazy {
                deadline,
                shield: false,
            },
            false,
        ),
    }
}

/// Runs `body` in a scope that is cancelled `timeout` after entry, and fails with
/// [`TimedOut`] (converted into the body's error type) if that cancelled it.
///
/// Decided (SPEC S10): an explicit `cancel` of the fail scope itself (through
/// [`current_scope`](crate::current_scope)) also yields `TimedOut`, as in Trio; its
/// [`reason`](TimedOut::reason) then says it was explicit.
///
/// ```
/// use std::time::Duration;
/// use tokio_nursery::{fail_after, sleep, TimedOut};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let out: Result<(), std::io::Error> = fail_after(Duration::from_millis(20), async {
///     sleep(Duration::from_secs(5)).await?;
///     Ok(())
/// })
/// .await;
/// assert_eq!(out.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
/// # }
/// ```
pub fn fail_after<F, T, E>(timeout: Duration, body: F) -> FailScoped<F>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError + From<TimedOut>,
{
    fail_scope(DeadlineSpec::After(timeout), Some(timeout), body)
}

/// Runs `body` in a scope that is cancelled at `deadline`. See [`fail_after`].
pub fn fail_at<F, T, E>(deadline: Instant, body: F) -> FailScoped<F>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError + From<TimedOut>,
{
    fail_scope(DeadlineSpec::At(deadline), None, body)
}

fn fail_scope<F>(deadline: DeadlineSpec, timeout: Option<Duration>, body: F) -> FailScoped<F> {
    FailScoped {
        timeout,
        core: ScopeCore::new(
            body,
            Plan::Lazy {
                deadline,
                shield: false,
            },
            false,
        ),
    }
}

/// The future returned by [`fail_after`] and [`fail_at`].
#[pin_project]
#[must_use = "a scope does nothing unless its future is awaited"]
pub struct FailScoped<F> {
    #[pin]
    core: ScopeCore<F>,
    /// `fail_after`'s timeout, for the error's message.
    timeout: Option<Duration>,
}

impl<F, T, E> Future for FailScoped<F>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError + From<TimedOut>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let (mut core, timeout) = (this.core, *this.timeout);
        core.as_mut().poll_exit(cx).map(|exit| match exit {
            Exit::Value(value) => Ok(value),
            Exit::Error(error) => Err(error),
            Exit::Absorbed(absorbed) => {
                // "after {timeout}" only if the deadline that fired is the one the timeout
                // set (not one the body moved it to, even if it moved it back since).
                let fired = core.fired_at(&absorbed);
                let (reason, deadline) = core.absorbed(absorbed);
                let timeout = timeout.filter(|_| match fired {
                    Some(fired) => Some(fired) == core.entry_deadline(),
                    None => deadline == core.entry_deadline(),
                });
                Err(E::from(TimedOut {
                    deadline,
                    timeout,
                    reason,
                }))
            }
        })
    }
}

impl<F> fmt::Debug for FailScoped<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailScoped").finish_non_exhaustive()
    }
}

/// A [`fail_after`] / [`fail_at`] scope was cancelled before its body finished.
#[derive(Clone, Debug)]
pub struct TimedOut {
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    reason: CancelReason,
}

impl TimedOut {
    /// The scope's deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The timeout a [`fail_after`] scope was given (`None` for [`fail_at`], and when the
    /// body moved its scope's deadline: the timeout no longer says when it ended).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Why the scope was cancelled: [`CancelReason::Deadline`] for a real timeout.
    pub fn reason(&self) -> &CancelReason {
        &self.reason
    }
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.reason, self.timeout) {
            (CancelReason::Deadline, Some(timeout)) => write!(f, "timed out after {timeout:?}"),
            (CancelReason::Deadline, None) => f.write_str("timed out: the scope's deadline passed"),
            (reason, _) => write!(f, "timed out: the fail scope was cancelled ({reason})"),
        }
    }
}

impl Error for TimedOut {}

impl From<TimedOut> for io::Error {
    /// An `io::Error` of kind `TimedOut`.
    fn from(timed_out: TimedOut) -> Self {
        io::Error::new(io::ErrorKind::TimedOut, timed_out)
    }
}
