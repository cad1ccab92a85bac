//! Chapter 2: cancel scopes and deadlines.
//!
//! # A timeout around any code
//!
//! [`move_on_after`](crate::move_on_after) runs a body in a new *cancel scope* whose deadline
//! is the given time after the body starts. The body returns `Result<T, E>`, where `E` can
//! carry a [`Cancelled`](crate::Cancelled) (`Cancelled` itself, `io::Error`, boxed errors,
//! your own enum: see [chapter 5](super::ch05_cancellation_points#returning-the-cancellation)).
//!
//! When the deadline passes, nothing is dropped. The body's next *cancellation point*, here
//! [`sleep`](crate::sleep), returns `Err(Cancelled)`; the body hands it back with `?`; the
//! scope recognises its own cancellation and *absorbs* it: `move_on_after` yields `Ok(None)`
//! ("moved on without a value"). A body that finishes yields `Ok(Some(value))`.
//!
//! ```
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use tokio_nursery::{move_on_after, sleep, Cancelled};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let start = Instant::now();
//! let mut rounds = 0;
//! let outcome = move_on_after(Duration::from_millis(100), async {
//!     loop {
//!         sleep(Duration::from_millis(30)).await?; // a cancellation point
//!         rounds += 1; // never interrupted: code between points runs to the next point
//!         if rounds == 10 {
//!             return Ok::<_, Cancelled>("all ten rounds");
//!         }
//!     }
//! })
//! .await;
//! assert_eq!(outcome.unwrap(), None); // the deadline won
//! assert_eq!(rounds, 3); // rounds ended at 30, 60 and 90 ms
//! assert_eq!(start.elapsed(), Duration::from_millis(100)); // the 4th sleep was cut at 100 ms
//! # }
//! ```
//!
//! [`fail_after`](crate::fail_after) is the other shape: a timeout is an error,
//! [`TimedOut`](crate::TimedOut), converted into the body's error type (an `io::Error` of
//! kind `TimedOut` here). `move_on_at` and `fail_at` take an absolute
//! `tokio::time::Instant` instead.
//!
//! ```
//! use std::io;
//! use std::time::Duration;
//! use tokio_nursery::{fail_after, sleep};
//!
//! async fn fetch() -> io::Result<&'static str> {
//!     sleep(Duration::from_secs(5)).await?; // `Cancelled` converts into `io::Error`
//!     Ok("page")
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let page = fail_after(Duration::from_secs(1), fetch()).await;
//! assert_eq!(page.unwrap_err().kind(), io::ErrorKind::TimedOut);
//! # }
//! ```
//!
//! # Scopes you control
//!
//! [`CancelScope`](crate::CancelScope) is the general form: build it, keep a
//! [`ScopeHandle`](crate::ScopeHandle), run a body in it. The handle works from any task or
//! thread, before the scope runs, while it runs and after: [`cancel`](crate::ScopeHandle::cancel)
//! (idempotent), [`cancel_with`](crate::ScopeHandle::cancel_with) a reason
//! ([chapter 7](super::ch07_reasons)), [`set_deadline`](crate::ScopeHandle::set_deadline) to
//! move the deadline while the scope runs, and the two questions Trio asks of a finished
//! scope: was it cancelled ([`cancel_called`](crate::ScopeHandle::cancel_called)), and did
//! it absorb a cancellation ([`cancelled_caught`](crate::ScopeHandle::cancelled_caught)).
//! Inside the body, [`current_scope`](crate::current_scope) gives the handle of the
//! innermost scope.
//!
//! ```
//! use std::time::Duration;
//! use tokio_nursery::{cancelled, CancelScope};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let scope = CancelScope::new();
//! let handle = scope.handle();
//! let stopper = handle.clone();
//! tokio::spawn(async move {
//!     tokio::time::sleep(Duration::from_millis(5)).await;
//!     stopper.cancel(); // from another task
//! });
//! let outcome = scope
//!     .run(async {
//!         let why = cancelled().await; // waits until the scope is cancelled
//!         // ... clean up here: the code was told, it was not dropped ...
//!         Err::<(), _>(why)
//!     })
//!     .await;
//! assert_eq!(outcome.unwrap(), None);
//! assert!(handle.cancel_called() && handle.cancelled_caught());
//! # }
//! ```
//!
//! # Scopes nest
//!
//! A scope entered inside another is its child, as the code nests. Cancelling a scope
//! cancels everything inside it, and a cancellation is absorbed by *the scope that was
//! cancelled*, never by an inner one it passes through. Below, the inner timeout is not the
//! one cancelled, so its `move_on_after` returns `Err(Cancelled)`, which `?` passes outwards
//! to the outer scope, which absorbs it. The `Cancelled` names the scope it belongs to.
//!
//! ```
//! use std::time::Duration;
//! use tokio_nursery::{move_on_after, sleep, CancelScope, Cancelled};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let outer = CancelScope::new();
//! let handle = outer.handle();
//! let outcome = outer
//!     .run(async {
//!         let inner = move_on_after(Duration::from_secs(10), async {
//!             handle.cancel(); // the outer scope, from inside the inner one
//!             sleep(Duration::from_secs(1)).await?;
//!             Ok::<_, Cancelled>("inner finished")
//!         })
//!         .await;
//!         let cancelled = inner.unwrap_err(); // the inner scope passed it on...
//!         assert_eq!(cancelled.scope(), handle.id()); // ...and it names the outer scope
//!         Err::<(), _>(cancelled) // pass it on (usually just `inner?`)
//!     })
//!     .await;
//! assert_eq!(outcome.unwrap(), None); // the outer scope absorbed it
//! assert!(handle.cancelled_caught());
//! # }
//! ```
//!
//! # The effective deadline
//!
//! With nested deadlines, the one that matters is the earliest: an inner scope asking for
//! 10 s inside an outer one with 100 ms left gets 100 ms. Any code can ask for it, without
//! parameters, with [`current_deadline`](crate::current_deadline): to size a network call,
//! to pick a cheaper algorithm, to pass it to another service
//! ([chapter 10](super::ch10_across_services)). It is `Unbounded` outside any scope and
//! `Passed` once the scope is cancelled.
//!
//! ```
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use tokio_nursery::{current_deadline, move_on_after, Cancelled, EffectiveDeadline};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let start = Instant::now();
//! let outcome = move_on_after(Duration::from_millis(100), async {
//!     move_on_after(Duration::from_secs(10), async {
//!         let outer_deadline = start + Duration::from_millis(100);
//!         assert_eq!(current_deadline(), EffectiveDeadline::At(outer_deadline));
//!         assert_eq!(current_deadline().remaining(), Some(Duration::from_millis(100)));
//!         Ok::<_, Cancelled>(())
//!     })
//!     .await
//! })
//! .await;
//! assert!(outcome.is_ok());
//! assert_eq!(current_deadline(), EffectiveDeadline::Unbounded);
//! # }
//! ```
//!
//! Deadlines are absolute instants on tokio's clock. A per-runtime service fires them, so a
//! deadline reaches code in other tasks ([chapter 3](super::ch03_nurseries)) even while the
//! scope's own task is parked.
//!
//! # Cancellation is level-triggered
//!
//! Once a scope is cancelled, *every* cancellation point inside it reports it, every time.
//! Nothing consumes a cancellation: code cannot catch it by accident and carry on as if
//! nothing happened, because its next `sleep` fails too. (This is Trio's rule. Plain tokio
//! awaits still work in a cancelled scope, since they are not cancellation points; see
//! [chapter 5](super::ch05_cancellation_points).) The next example shows it.
//!
//! # Shields: cleanup that must await
//!
//! What if cleanup itself needs cancellation points, say a goodbye message sent with a
//! deadline? A *shielded* scope ignores its ancestors' cancellation and deadlines (not its
//! own): give it its own short bound.
//!
//! ```
//! use std::time::Duration;
//! use tokio_nursery::{checkpoint, is_cancelled, move_on_after, sleep, CancelScope, Cancelled};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let outcome = move_on_after(Duration::from_millis(50), async {
//!     let cancelled = sleep(Duration::from_secs(60)).await.unwrap_err();
//!     assert!(sleep(Duration::from_millis(1)).await.is_err()); // reported again...
//!     assert!(checkpoint().await.is_err()); // ...and again: level-triggered
//!
//!     let goodbye = CancelScope::new()
//!         .shielded()
//!         .with_timeout(Duration::from_secs(1)) // the cleanup's own bound
//!         .run(async {
//!             assert!(!is_cancelled()); // the outer cancellation is hidden here
//!             sleep(Duration::from_millis(20)).await?; // send the goodbye
//!             Ok::<_, Cancelled>("goodbye sent")
//!         })
//!         .await;
//!     assert_eq!(goodbye.unwrap(), Some("goodbye sent"));
//!     Err::<(), _>(cancelled) // now hand the cancellation back
//! })
//! .await;
//! assert_eq!(outcome.unwrap(), None);
//! # }
//! ```
//!
//! The shield can be raised and lowered while the scope runs
//! ([`set_shield`](crate::ScopeHandle::set_shield)); lowering it inside a cancelled ancestor
//! exposes that cancellation at once.
//!
//! # A body that finishes wins
//!
//! A scope does not take a value away from a body that finished: if the body returns
//! `Ok(value)` without reaching a cancellation point after the deadline passed, the scope
//! yields `Ok(Some(value))`. Cancellation is a request to stop, delivered where the code can
//! act on it; what the code then returns is its own business.
//!
//! Next: [chapter 3, nurseries](super::ch03_nurseries).
