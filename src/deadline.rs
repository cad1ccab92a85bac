//! The effective deadline of the code being polled (SPEC S7), queryable anywhere.

use std::time::Duration;

use tokio::time::Instant;

use crate::context;

/// The effective deadline at some point of the code: the earliest deadline of the current
/// scope and its ancestors, up to and including the nearest shielded one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EffectiveDeadline {
    /// No deadline applies (also outside any scope).
    Unbounded,
    /// The code must be done by then.
    At(Instant),
    /// The code runs in an effectively cancelled scope: the deadline has already passed.
    Passed,
}

impl EffectiveDeadline {
    /// The deadline as an instant: `now` for [`Passed`](EffectiveDeadline::Passed).
    pub fn instant(self) -> Option<Instant> {
        match self {
            EffectiveDeadline::Unbounded => None,
            EffectiveDeadline::At(at) => Some(at),
            EffectiveDeadline::Passed => Some(Instant::now()),
        }
    }

    /// Time left on tokio's clock: zero once passed, `None` when unbounded.
    pub fn remaining(self) -> Option<Duration> {
        self.instant()
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Whether the deadline has passed on tokio's clock (or the scope is cancelled).
    pub fn has_passed(self) -> bool {
        match self {
            EffectiveDeadline::Unbounded => false,
            EffectiveDeadline::At(at) => at <= Instant::now(),
            EffectiveDeadline::Passed => true,
        }
    }
}

/// The effective deadline of the code being polled (SPEC S7): `Unbounded` outside any scope,
/// `Passed` inside an effectively cancelled scope.
///
/// ```
/// use std::time::Duration;
/// use tokio_nursery::{current_deadline, move_on_at, Cancelled, EffectiveDeadline};
/// use tokio::time::Instant;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let at = Instant::now() + Duration::from_secs(3);
/// move_on_at(at, async move {
///     assert_eq!(current_deadline(), EffectiveDeadline::At(at));
///     Ok::<_, Cancelled>(())
/// })
/// .await
/// .unwrap();
/// assert_eq!(current_deadline(), EffectiveDeadline::Unbounded);
/// # }
/// ```
pub fn current_deadline() -> EffectiveDeadline {
    context::with_current(|frame| match frame {
        None => EffectiveDeadline::Unbounded,
        // Asked as a waiting point asks: a helper scope is not linked for the question.
        Some(frame) if frame.is_cancelled_here() => EffectiveDeadline::Passed,
        Some(frame) => match frame.deadline() {
            Some(at) => EffectiveDeadline::At(Instant::from_std(at)),
            None => EffectiveDeadline::Unbounded,
        },
    })
}
