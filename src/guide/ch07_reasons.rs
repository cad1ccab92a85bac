//! Chapter 7: why was I cancelled?
//!
//! A worker that is stopped often needs to know why: on a deadline it may return a partial
//! result, on a config reload restart with the new one, on a shutdown save its state, and
//! when a sibling failed just stop quietly. Every [`Cancelled`](crate::Cancelled) carries
//! the [`CancelReason`](crate::CancelReason) of the scope it was raised for:
//!
//! | reason | set by |
//! |---|---|
//! | [`Explicit`](crate::CancelReason::Explicit), with optional data | [`cancel`](crate::ScopeHandle::cancel), [`cancel_with(data)`](crate::ScopeHandle::cancel_with); for one child, its handle's `cancel` / [`cancel_with`](crate::ChildHandle::cancel_with) |
//! | [`Deadline`](crate::CancelReason::Deadline) | the scope's deadline passing |
//! | [`SiblingFailed`](crate::CancelReason::SiblingFailed) | a failure in the same nursery (fail fast) |
//! | [`Shutdown`](crate::CancelReason::Shutdown) | the [`Root`](crate::Root): `main` returned, or Ctrl-C / SIGTERM |
//! | [`GraceExpired`](crate::CancelReason::GraceExpired) | a grace period ran out (told to blocking children and protected work, which cannot be aborted) |
//!
//! `cancel_with` takes any `Send + Sync + 'static` value; read it back with
//! [`reason().data::<T>()`](crate::CancelReason::data), or
//! [`message()`](crate::CancelReason::message) for a string. A scope keeps the first reason
//! it was cancelled with.
//!
//! ```
//! use std::io;
//! use std::time::Duration;
//! use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
//! use tokio_nursery::{cancelled, nursery, CancelReason, Nursery};
//!
//! struct Reload {
//!     version: u32,
//! }
//!
//! /// Runs until cancelled, then says why.
//! async fn worker(report: UnboundedSender<String>) -> io::Result<()> {
//!     let cancelled = cancelled().await;
//!     let why = match cancelled.reason() {
//!         CancelReason::Deadline => "out of time".to_string(),
//!         CancelReason::SiblingFailed => "a sibling failed".to_string(),
//!         CancelReason::Shutdown => "shutting down".to_string(),
//!         reason => match reason.data::<Reload>() {
//!             Some(reload) => format!("reloading config v{}", reload.version),
//!             None => reason.to_string(),
//!         },
//!     };
//!     report.send(why).unwrap();
//!     Err(cancelled.into()) // hand the cancellation back, inside an `io::Error`
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let (report, mut reports) = unbounded_channel();
//!
//! let to_worker = report.clone();
//! let by_deadline = Nursery::new()
//!     .timeout(Duration::from_millis(10))
//!     .run(|n| async move {
//!         n.spawn(worker(to_worker));
//!         Ok::<_, io::Error>(())
//!     })
//!     .await;
//! assert!(by_deadline.is_ok());
//!
//! let to_worker = report.clone();
//! let by_failure = nursery(|n| async move {
//!     n.spawn(worker(to_worker));
//!     n.spawn(async { Err::<(), _>(io::Error::other("database unreachable")) });
//!     Ok::<_, io::Error>(())
//! })
//! .await;
//! assert_eq!(by_failure.unwrap_err().failures().len(), 1); // the worker did not fail
//!
//! let by_hand = nursery(|n| async move {
//!     n.spawn(worker(report));
//!     n.scope().cancel_with(Reload { version: 2 });
//!     Ok::<_, io::Error>(())
//! })
//! .await;
//! assert!(by_hand.is_ok());
//!
//! let mut seen = Vec::new();
//! while let Some(why) = reports.recv().await {
//!     seen.push(why);
//! }
//! assert_eq!(seen, ["out of time", "a sibling failed", "reloading config v2"]);
//! # }
//! ```
//!
//! A `Cancelled` also says *which* scope it was raised for
//! ([`scope()`](crate::Cancelled::scope), compare with
//! [`ScopeHandle::id`](crate::ScopeHandle::id)): the outermost cancelled scope visible from
//! the cancellation point, so code deep inside a request can tell "my own timeout" from "the
//! whole request's deadline" ([chapter 2](super::ch02_scopes_and_deadlines#scopes-nest)). A
//! nursery whose grace period ran out also lists the children it had to abort
//! ([`aborted_children`](crate::Cancelled::aborted_children)).
//!
//! Next: [chapter 8, why is my shutdown stuck?](super::ch08_task_tree).
