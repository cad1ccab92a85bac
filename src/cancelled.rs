//! The error that cancellation points report: [`Cancelled`], and how the crate finds it
//! inside users' error values: [`CancelError`].
//!
//! `Cancelled` cannot be forged: it has no public constructor, so every one was raised by a
//! cancellation point for a scope that was cancelled (SPEC S15). A scope ending with an error
//! that holds one decides by its own state whether to absorb it (SPEC S9).

use std::error::Error;
use std::fmt;
use std::io;

use crate::node::ScopeId;
use crate::reason::CancelReason;
use crate::sync::Arc;

/// The code was cancelled: returned by cancellation points ([`checkpoint`](crate::checkpoint),
/// [`sleep`](crate::sleep), [`cancellable`](crate::CancellableExt::cancellable), ...).
///
/// Return it (usually with `?`) so the scope that was cancelled can absorb it. It names the
/// scope it was raised for, the outermost cancelled scope visible from the cancellation
/// point, and that scope's [reason](CancelReason).
///
/// ```
/// use std::time::Duration;
/// use tokio_nursery::{move_on_after, sleep, Cancelled};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let out = move_on_after(Duration::from_millis(10), async {
///     sleep(Duration::from_secs(1)).await?; // reports `Cancelled` at 10 ms
///     Ok::<_, Cancelled>("finished")
/// })
/// .await;
/// assert_eq!(out.unwrap(), None); // the timeout's scope absorbed it
/// # }
/// ```
///
/// It cannot be forged: there is no public constructor, no `Default`, and its fields are
/// private.
///
/// ```compile_fail
/// use tokio_nursery::{CancelReason, Cancelled, ScopeId};
///
/// fn forge(scope: ScopeId) -> Cancelled {
///     Cancelled::new(scope, CancelReason::Deadline) // private: does not compile
/// }
/// ```
///
/// ```compile_fail
/// let forged: tokio_nursery::Cancelled = Default::default(); // no Default: does not compile
/// ```
#[derive(Clone)]
pub struct Cancelled {
    /// One pointer: `Result<T, Cancelled>` stays small enough to return in registers, and
    /// cloning is a reference count. Only the cancelled path allocates.
    inner: Arc<Raised>,
}

struct Raised {
    scope: ScopeId,
    reason: CancelReason,
    /// Children a nursery aborted when its grace period ran out (SPEC N7).
    aborted: Vec<String>,
}

impl Cancelled {
    pub(crate) fn new(scope: ScopeId, reason: CancelReason) -> Self {
        Cancelled {
            inner: Arc::new(Raised {
                scope,
                reason,
                aborted: Vec::new(),
            }),
        }
    }

    /// The same cancellation, naming the children a nursery aborted on its way out.
    pub(crate) fn with_aborted(self, aborted: Vec<String>) -> Self {
        Cancelled {
            inner: Arc::new(Raised {
                scope: self.inner.scope,
                reason: self.inner.reason.clone(),
                aborted,
            }),
        }
    }

    /// The children a nursery aborted because its grace period ran out before they stopped
    /// (one line each, as [`NurseryHandle::aborted_children`](crate::NurseryHandle::aborted_children)
    /// says: `"stuck" (scope#7)` for a named child, `scope#8` for an unnamed one), when
    /// this cancellation passes out of that nursery (SPEC N7). Empty otherwise.
    pub fn aborted_children(&self) -> &[String] {
        &self.inner.aborted
    }

    /// The scope this cancellation was raised for.
    pub fn scope(&self) -> ScopeId {
        self.inner.scope
    }

    /// Why that scope was cancelled.
    pub fn reason(&self) -> &CancelReason {
        &self.inner.reason
    }
}

impl fmt::Debug for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancelled")
            .field("scope", &self.scope())
            .field("reason", self.reason())
            .finish()
    }
}

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} was cancelled: {}", self.scope(), self.reason())
    }
}

impl Error for Cancelled {}

impl From<Cancelled> for io::Error {
    /// An `io::Error` of kind `Other` wrapping the `Cancelled` (not `Interrupted`, which
    /// std's read loops retry).
    fn from(cancelled: Cancelled) -> Self {
        io::Error::other(cancelled)
    }
}

/// Error types that can carry a [`Cancelled`], so a scope can recognise a cancellation in a
/// body's `Err` (SPEC S15).
///
/// Implemented for `Cancelled`, `io::Error`, boxed std errors and, with the `anyhow`
/// feature, `anyhow::Error`; those look through the error's `source()` chain and into the
/// error an `io::Error` wraps (a `Cancelled` that `?` made an `io::Error` and then boxed is
/// found). Two conversions hide it: an `anyhow::Error` turned into a `Box<dyn Error>` keeps
/// its own error out of reach of `source()` and downcasts, and so does anyhow for a
/// `Box<dyn Error>` it takes (`anyhow!(boxed)`, `anyhow::Error::from_boxed`: the only way in
/// is a downcast that also matches a context, and a failure described by a `Cancelled`
/// context is no echo). Keep `anyhow::Error` as the error type, or put the `Cancelled`
/// itself into anyhow (`anyhow::Error::from(cancelled)`, or `?`), not a box holding it.
/// Implement it for your own error enum by returning the `Cancelled` variant:
///
/// ```
/// use tokio_nursery::{CancelError, Cancelled};
///
/// #[derive(Debug)]
/// enum AppError {
///     Cancelled(Cancelled),
///     Db(String),
/// }
///
/// impl From<Cancelled> for AppError {
///     fn from(c: Cancelled) -> Self {
///         AppError::Cancelled(c)
///     }
/// }
///
/// impl CancelError for AppError {
///     fn as_cancelled(&self) -> Option<&Cancelled> {
///         match self {
///             AppError::Cancelled(c) => Some(c),
///             _ => None,
///         }
///     }
/// }
/// ```
pub trait CancelError: From<Cancelled> {
    /// The cancellation this error carries, if it is one.
    fn as_cancelled(&self) -> Option<&Cancelled>;
}

impl CancelError for Cancelled {
    fn as_cancelled(&self) -> Option<&Cancelled> {
        Some(self)
    }
}

/// Finds a `Cancelled` in an error or its `source()` chain. An `io::Error`'s `source()` is
/// the source of the error it wraps, skipping that error itself: the walk steps into the
/// wrapped error instead (a `Cancelled` made an `io::Error` by `?`, then boxed).
fn find<'e>(mut error: &'e (dyn Error + 'static)) -> Option<&'e Cancelled> {
    loop {
        if let Some(cancelled) = error.downcast_ref::<Cancelled>() {
            return Some(cancelled);
        }
        error = match error.downcast_ref::<io::Error>() {
            Some(io) => io.get_ref()?,
            None => error.source()?,
        };
    }
}

impl CancelError for io::Error {
    fn as_cancelled(&self) -> Option<&Cancelled> {
        let inner: &(dyn Error + 'static) = self.get_ref()?;
        find(inner)
    }
}

impl CancelError for Box<dyn Error + Send + Sync> {
    fn as_cancelled(&self) -> Option<&Cancelled> {
        find(self.as_ref())
    }
}

impl CancelError for Box<dyn Error> {
    fn as_cancelled(&self) -> Option<&Cancelled> {
        find(self.as_ref())
    }
}

#[cfg(feature = "anyhow")]
impl CancelError for anyhow::Error {
    fn as_cancelled(&self) -> Option<&Cancelled> {
        self.chain().find_map(find)
    }
}
