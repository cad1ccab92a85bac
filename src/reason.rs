//! Why a scope was cancelled: [`CancelReason`] and the user data it may carry ([`Payload`]).
//!
//! A reason is recorded once per scope, by the first cancellation (SPEC S4); later ones keep
//! the first reason. The crate sets the non-explicit kinds itself (a deadline passing, and,
//! with nurseries, a sibling failing, shutdown and grace expiry).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// Why a cancel scope was cancelled.
///
/// Read it from [`Cancelled::reason`](crate::Cancelled::reason) to tell a shutdown from a
/// deadline from a failing sibling (SPEC C3).
///
/// ```
/// use tokio_nursery::{CancelReason, CancelScope, Cancelled};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let scope = CancelScope::new();
/// scope.handle().cancel_with("config reloaded");
/// let out = scope
///     .run(async {
///         let err: Cancelled = tokio_nursery::checkpoint().await.unwrap_err();
///         assert_eq!(err.reason().message(), Some("config reloaded"));
///         Err::<(), _>(err)
///     })
///     .await;
/// assert!(matches!(out, Ok(None))); // the scope absorbed its own cancellation
/// # }
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub enum CancelReason {
    /// `cancel` or `cancel_with` was called on the scope; carries the data given to
    /// `cancel_with`, if any.
    Explicit(Option<Payload>),
    /// The scope's deadline passed.
    Deadline,
    /// Another child of the same nursery failed (fail-fast policy).
    SiblingFailed,
    /// The program is shutting down: the [`Root`](crate::Root)'s Ctrl-C / SIGTERM handling
    /// or its `main` returning, or a parallel scope's runtime shutting down.
    Shutdown,
    /// A nursery's grace period ran out while its children were still stopping.
    GraceExpired,
}

impl CancelReason {
    /// An explicit cancellation carrying `data` (what `cancel_with` gives).
    pub(crate) fn explicit_with<T: std::any::Any + Send + Sync>(data: T) -> Self {
        CancelReason::Explicit(Some(Payload::new(data)))
    }

    /// The user data of an explicit cancellation, if there is some.
    pub fn payload(&self) -> Option<&Payload> {
        match self {
            CancelReason::Explicit(payload) => payload.as_ref(),
            _ => None,
        }
    }

    /// The data of an explicit cancellation, if it is a `T`.
    ///
    /// ```
    /// # use tokio_nursery::CancelScope;
    /// #[derive(Debug, PartialEq)]
    /// struct Reload { version: u32 }
    ///
    /// let scope = CancelScope::new();
    /// scope.handle().cancel_with(Reload { version: 2 });
    /// let reason = scope.handle().reason().unwrap();
    /// assert_eq!(reason.data::<Reload>(), Some(&Reload { version: 2 }));
    /// ```
    pub fn data<T: Any>(&self) -> Option<&T> {
        self.payload().and_then(Payload::downcast_ref)
    }

    /// The message of an explicit cancellation whose data is a `&'static str` or a `String`.
    pub fn message(&self) -> Option<&str> {
        self.payload().and_then(Payload::as_str)
    }

    /// True for [`CancelReason::Deadline`].
    pub fn is_deadline(&self) -> bool {
        matches!(self, CancelReason::Deadline)
    }
}

impl fmt::Debug for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CancelReason::Explicit(None) => f.write_str("Explicit"),
            CancelReason::Explicit(Some(payload)) => {
                f.debug_tuple("Explicit").field(payload).finish()
            }
            CancelReason::Deadline => f.write_str("Deadline"),
            CancelReason::SiblingFailed => f.write_str("SiblingFailed"),
            CancelReason::Shutdown => f.write_str("Shutdown"),
            CancelReason::GraceExpired => f.write_str("GraceExpired"),
        }
    }
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CancelReason::Explicit(None) => f.write_str("explicit cancel"),
            CancelReason::Explicit(Some(payload)) => match payload.as_str() {
                Some(message) => write!(f, "explicit cancel: {message}"),
                None => f.write_str("explicit cancel (with data)"),
            },
            CancelReason::Deadline => f.write_str("deadline passed"),
            CancelReason::SiblingFailed => f.write_str("a sibling task failed"),
            CancelReason::Shutdown => f.write_str("shutting down"),
            CancelReason::GraceExpired => f.write_str("grace period expired"),
        }
    }
}

/// Type-erased data attached to an explicit cancellation with `cancel_with`.
///
/// Cheap to clone (one reference count).
#[derive(Clone)]
pub struct Payload(Arc<dyn Any + Send + Sync>);

impl Payload {
    pub(crate) fn new<T: Any + Send + Sync>(data: T) -> Self {
        Payload(Arc::new(data))
    }

    /// The data, if it is a `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }

    /// The data as text, if it is a `&'static str` or a `String`.
    pub fn as_str(&self) -> Option<&str> {
        self.downcast_ref::<&'static str>()
            .copied()
            .or_else(|| self.downcast_ref::<String>().map(String::as_str))
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(message) => fmt::Debug::fmt(message, f),
            None => f.write_str("Payload(..)"),
        }
    }
}
