//! Chapter 5: cancellation points.
//!
//! A cancellation is delivered only at *cancellation points*. Code between two points runs
//! as written, so to reason about cancellation you look at the points, not at every
//! `.await`. The points are:
//!
//! - [`checkpoint().await`](crate::checkpoint) and [`check_cancelled()`](crate::check_cancelled)
//!   (synchronous): report a cancellation if there is one, else go on;
//! - [`cancelled().await`](crate::cancelled): wait until the scope is cancelled;
//! - [`sleep`](crate::sleep) and [`sleep_until`](crate::sleep_until);
//! - any future made [`.cancellable()`](crate::CancellableExt::cancellable);
//! - awaiting a child's handle: [`ChildHandle`](crate::ChildHandle),
//!   [`LocalHandle`](crate::LocalHandle), [`ParallelHandle`](crate::ParallelHandle);
//! - waiting for a slot of a nursery's limit:
//!   [`NurseryHandle::spawn_when_free`](crate::NurseryHandle::spawn_when_free) and
//!   [`Collector::spawn_when_free`](crate::Collector::spawn_when_free);
//! - waiting for a lock with [`Mutex::lock_cancellable`](crate::Mutex::lock_cancellable)
//!   (the wait only, not the critical section).
//!
//! And [`is_cancelled()`](crate::is_cancelled) asks without reporting, for loops and blocking
//! code. The crate docs list every future of the crate with its cancel safety
//! ([Cancel safety](crate#cancel-safety)).
//!
//! # Most tokio awaits are not cancellation points
//!
//! `tokio::time::sleep`, `socket.read(..)`, `rx.recv()`, `mutex.lock()`: none of them know
//! about scopes. In a cancelled scope they run to completion as usual.
//!
//! ```
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use tokio_nursery::{move_on_after, Cancelled};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let start = Instant::now();
//! let outcome = move_on_after(Duration::from_millis(50), async {
//!     tokio::time::sleep(Duration::from_millis(200)).await; // not a cancellation point
//!     Ok::<_, Cancelled>("finished anyway")
//! })
//! .await;
//! assert_eq!(outcome.unwrap(), Some("finished anyway"));
//! assert_eq!(start.elapsed(), Duration::from_millis(200));
//! # }
//! ```
//!
//! That is the point: it is what lets cleanup code await, and what keeps a half-done step
//! from being cut. But a wait that may be long, and is safe to abandon, should be a
//! cancellation point: make it one.
//!
//! # `.cancellable()`: make a cancel-safe await a cancellation point
//!
//! [`fut.cancellable()`](crate::CancellableExt::cancellable) runs `fut` until it completes or
//! the scope is cancelled; then `fut` is *dropped* and `Err(Cancelled)` returned. So use it
//! where dropping `fut` loses nothing: `recv`, `accept`, a read into a buffer you
//! discard. Here is [chapter 1](super::ch01_dropping_futures)'s forwarder, fixed: it can be
//! cancelled only where it holds no order; an order taken is always handed on.
//!
//! ```
//! use std::time::Duration;
//! use tokio::sync::mpsc;
//! use tokio::time::Instant;
//! use tokio_nursery::{move_on_after, CancellableExt, Cancelled};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let start = Instant::now();
//! let (orders_tx, mut orders) = mpsc::channel(8);
//! let (shipping_tx, mut shipping) = mpsc::channel(1);
//! for order in 1..=5 {
//!     orders_tx.send(order).await.unwrap();
//! }
//! let shipper = tokio::spawn(async move {
//!     let mut shipped = Vec::new();
//!     while let Some(order) = shipping.recv().await {
//!         tokio::time::sleep(Duration::from_millis(30)).await; // 30 ms per order
//!         shipped.push(order);
//!     }
//!     shipped
//! });
//!
//! let outcome = move_on_after(Duration::from_millis(50), async {
//!     loop {
//!         // A cancellation point where nothing is in hand: `recv` is cancel-safe.
//!         let Some(order) = orders.recv().cancellable().await? else {
//!             return Ok::<(), Cancelled>(());
//!         };
//!         // Not a cancellation point: an order in hand is always handed on.
//!         shipping_tx.send(order).await.unwrap();
//!     }
//! })
//! .await;
//! assert_eq!(outcome.unwrap(), None);
//! assert_eq!(start.elapsed(), Duration::from_millis(60)); // see below
//!
//! drop(shipping_tx);
//! let shipped = shipper.await.unwrap();
//! let mut queued = Vec::new();
//! while let Ok(order) = orders.try_recv() {
//!     queued.push(order);
//! }
//! assert_eq!([shipped, queued].concat(), [1, 2, 3, 4, 5]); // every order accounted for
//! # }
//! ```
//!
//! The forwarder noticed the deadline (50 ms) only after it had delivered the order in hand
//! (60 ms). If delivering could take forever, bound it with a scope of its own, or make it
//! protected work ([chapter 6](super::ch06_protected_work)).
//!
//! # `select!` on `cancelled()`: react to a cancellation
//!
//! When a cancellation should do more than return, race the cancel-safe wait against
//! [`cancelled()`](crate::cancelled) in `tokio::select!`. A batcher that writes out its
//! partial batch when it is stopped:
//!
//! ```
//! use std::time::Duration;
//! use tokio::sync::mpsc;
//! use tokio_nursery::{cancelled, move_on_after};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let (items_tx, mut items) = mpsc::channel(8);
//! tokio::spawn(async move {
//!     for item in 1.. {
//!         tokio::time::sleep(Duration::from_millis(20)).await;
//!         if items_tx.send(item).await.is_err() {
//!             break;
//!         }
//!     }
//! });
//!
//! let mut written = Vec::new();
//! let outcome = move_on_after(Duration::from_millis(50), async {
//!     let mut batch = Vec::new();
//!     loop {
//!         tokio::select! {
//!             Some(item) = items.recv() => batch.push(item),
//!             why = cancelled() => {
//!                 written.append(&mut batch); // write out the partial batch
//!                 return Err(why);
//!             }
//!         }
//!         if batch.len() == 10 {
//!             written.append(&mut batch);
//!         }
//!     }
//! })
//! .await;
//! assert_eq!(outcome.unwrap(), None::<()>);
//! assert_eq!(written, [1, 2]); // the items of 20 and 40 ms, written out at 50 ms
//! # }
//! ```
//!
//! # Loops that do not await
//!
//! A loop that never reaches a cancellation point cannot be told anything. Put a
//! [`checkpoint`](crate::checkpoint) in it: it reports a cancellation, and it also spends
//! tokio's cooperative budget, so the loop yields now and then and the task that wants to
//! cancel it gets to run at all (on a current-thread runtime, nothing else runs while a loop
//! never yields).
//!
//! ```
//! use tokio_nursery::{checkpoint, CancelScope, Cancelled};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let scope = CancelScope::new();
//! let stop = scope.handle();
//! tokio::spawn(async move { stop.cancel() }); // runs once the loop yields
//! let mut rounds = 0u64;
//! let outcome = scope
//!     .run(async {
//!         while rounds < 1_000_000_000 {
//!             rounds += 1; // a slice of CPU-bound work
//!             checkpoint().await?;
//!         }
//!         Ok::<_, Cancelled>(rounds)
//!     })
//!     .await;
//! assert_eq!(outcome.unwrap(), None);
//! assert!(rounds < 1_000); // stopped soon after its first yield
//! # }
//! ```
//!
//! Synchronous code asks [`is_cancelled()`](crate::is_cancelled) (an atomic load) or
//! [`check_cancelled()?`](crate::check_cancelled). Blocking code spawned with
//! [`spawn_blocking`](crate::NurseryHandle::spawn_blocking) gets a
//! [`BlockingContext`](crate::BlockingContext) to ask the same of its scope. One catch: a
//! deadline shows in `is_cancelled()` once the runtime has fired it, so on a current-thread
//! runtime a loop that never yields never sees it; such a loop compares the clock with
//! [`current_deadline()`](crate::current_deadline) instead.
//!
//! # Hard scopes: when dropping is what you want
//!
//! A body made of cancel-safe awaits that are not cancellation points does not have to be
//! rewritten: run it in a [`hard`](crate::CancelScope::hard) scope, which *drops* the body
//! when the scope is cancelled, as `select!` would. It is your explicit choice to drop, for
//! that body only; nurseries inside it follow their drop mode.
//!
//! ```
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use tokio_nursery::{CancelScope, Cancelled};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let start = Instant::now();
//! let outcome = CancelScope::new()
//!     .with_timeout(Duration::from_millis(50))
//!     .hard()
//!     .run(async {
//!         tokio::time::sleep(Duration::from_millis(200)).await;
//!         Ok::<_, Cancelled>("finished")
//!     })
//!     .await;
//! assert_eq!(outcome.unwrap(), None); // dropped at the deadline
//! assert_eq!(start.elapsed(), Duration::from_millis(50));
//! # }
//! ```
//!
//! # Returning the cancellation
//!
//! A cancellation point's `Err(Cancelled)` should travel back to its scope, usually with
//! `?`: that is how the scope knows the body stopped because of it, absorbs it, and how a
//! nursery tells a cancelled child from a failed one. The body's error type only has to
//! carry it: `Cancelled` itself, `io::Error` and boxed errors work out of the box
//! (`anyhow::Error` with the `anyhow` feature), and your own error enum implements
//! [`CancelError`](crate::CancelError) (a few lines, shown there). Turning the `Cancelled`
//! into some other error loses it: the scope then sees an ordinary error.
//!
//! ```
//! use std::io;
//! use std::time::Duration;
//! use tokio_nursery::{move_on_after, sleep};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let kept = move_on_after(Duration::from_millis(10), async {
//!     sleep(Duration::from_secs(1)).await?; // `?` wraps the `Cancelled` in an `io::Error`
//!     Ok::<_, io::Error>(42)
//! })
//! .await;
//! assert!(matches!(kept, Ok(None))); // found inside the `io::Error`, and absorbed
//!
//! let lost = move_on_after(Duration::from_millis(10), async {
//!     sleep(Duration::from_secs(1)).await.map_err(|_| io::Error::other("gave up"))?;
//!     Ok::<_, io::Error>(42)
//! })
//! .await;
//! assert_eq!(lost.unwrap_err().to_string(), "gave up"); // just an error now
//! # }
//! ```
//!
//! Code that handles errors itself (a server loop that answers each request's error to its
//! client) tells a cancellation from a failure with the same trait:
//! [`CancelError::as_cancelled`](crate::CancelError::as_cancelled) finds the `Cancelled`
//! inside any of these error types (`use tokio_nursery::CancelError;`, then
//! `error.as_cancelled().is_some()`); pass such an error on rather than answering it.
//!
//! Next: [chapter 6, work that must not be cut short](super::ch06_protected_work).
