//! Chapter 6: work that must not be cut short.
//!
//! Cooperative cancellation keeps code from being interrupted *between* cancellation points.
//! Two situations need more: work that must finish even though it reaches cancellation
//! points (or even if its caller is dropped), and shared state whose update might be cut
//! short by a drop you do not control.
//!
//! # Protected work
//!
//! [`protect(work)`](crate::protect) runs `work` to completion whatever happens to its
//! caller. It runs as a task of its own in a shielded scope, so the caller's cancellation and
//! deadlines do not reach it; no grace period, abort-mode drop or `abort_all` may abort it;
//! and it is accounted for by the nearest nursery, which waits for it (else by the runtime's
//! orphan registry). Its own deadline, set inside (`fail_after`, `move_on_after`), still
//! applies: protected work should bound itself.
//!
//! Back to [chapter 1](super::ch01_dropping_futures)'s lost message: once an order is taken
//! from the channel, processing it is protected, so a deadline that passes meanwhile stops
//! the worker only *after* the order is done.
//!
//! ```
//! use std::time::Duration;
//! use tokio::sync::mpsc;
//! use tokio::time::Instant;
//! use tokio_nursery::{protect, sleep, CancellableExt, Cancelled, Nursery};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let (orders_tx, mut orders) = mpsc::channel(8);
//! for order in [1, 2, 3] {
//!     orders_tx.send(order).await.unwrap();
//! }
//! let (done_tx, mut done) = mpsc::unbounded_channel();
//! let start = Instant::now();
//! let outcome = Nursery::new()
//!     .timeout(Duration::from_millis(50))
//!     .run(|n| async move {
//!         n.spawn(async move {
//!             while let Some(order) = orders.recv().cancellable().await? {
//!                 // The order is taken: from here on it must be finished.
//!                 let done_tx = done_tx.clone();
//!                 protect(async move {
//!                     sleep(Duration::from_millis(100)).await.unwrap(); // shielded
//!                     done_tx.send(order).unwrap();
//!                 })
//!                 .await;
//!             }
//!             Ok::<_, Cancelled>(())
//!         });
//!         Ok::<_, Cancelled>(())
//!     })
//!     .await;
//! assert!(outcome.is_ok());
//! assert_eq!(start.elapsed(), Duration::from_millis(100)); // past the 50 ms deadline
//! assert_eq!(done.recv().await, Some(1)); // the order in hand was finished...
//! assert_eq!(done.recv().await, None); // ...and no new one was taken after the deadline
//! # }
//! ```
//!
//! Awaiting the [`Protected`](crate::Protected) handle gives the work's value; it is not a
//! cancellation point, and dropping the handle does not stop the work. What protection cannot
//! do: survive a runtime shut down under it (tokio drops every task then). The
//! [`Root`](crate::Root) ([chapter 10](super::ch10_across_services)) waits for protected
//! work before shutting its runtime down.
//!
//! # A mutex that poisons
//!
//! tokio's mutex unlocks silently when a critical section is dropped half-way
//! ([chapter 1](super::ch01_dropping_futures#a-mutex-left-mid-update)).
//! [`tokio_nursery::Mutex`](crate::Mutex) delimits the critical section with a closure, so
//! it can tell a section that *returned* (with a value, an error, or through `?`: never
//! poisons) from one that was *cut short* (a panic, or its future dropped before it returned:
//! poisons), as `std::sync::Mutex` does for panics. The next
//! [`lock`](crate::Mutex::lock) then returns [`Poisoned`](crate::Poisoned), which holds the
//! lock so the data can be inspected, repaired and the poison cleared.
//!
//! ```
//! use std::time::Duration;
//! use tokio_nursery::Mutex;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let accounts = Mutex::new((100u32, 0u32)); // (alice, bob): 100 in total
//!
//! // A section that returns has completed, even with an error: no poison.
//! let refused = accounts
//!     .lock(async |(alice, _)| if *alice < 500 { Err("insufficient funds") } else { Ok(()) })
//!     .await
//!     .unwrap();
//! assert_eq!(refused, Err("insufficient funds"));
//! assert!(!accounts.is_poisoned());
//!
//! // A section dropped at its await (a timeout) is cut short: poisoned.
//! let transfer = accounts.lock(async |(alice, bob)| {
//!     *alice -= 30;
//!     tokio::time::sleep(Duration::from_millis(50)).await; // call bob's bank
//!     *bob += 30;
//! });
//! assert!(tokio::time::timeout(Duration::from_millis(10), transfer).await.is_err());
//! assert!(accounts.is_poisoned());
//!
//! let mut poisoned = accounts.lock(async |_| ()).await.unwrap_err();
//! assert_eq!(*poisoned, (70, 0)); // half-updated, and this time we know
//! poisoned.1 = 100 - poisoned.0; // repair
//! poisoned.clear_poison();
//! assert_eq!(accounts.lock(async |both| *both).await.unwrap(), (70, 30));
//! # }
//! ```
//!
//! Two things poisoning does not do. A section that returns early, through `?` on a
//! cancellation point inside it, has *returned*: no poison, so restore the invariant before
//! returning. And waiting for the lock is cancel-safe but not a cancellation point; wrapping
//! the whole `lock(..)` in `.cancellable()` makes the wait one, but also lets a cancellation
//! cut the section itself (and poison).
//!
//! Poisoning is a safety net, not a design. Better not to drop the section at all (in a
//! cooperative scope, a section with no cancellation points runs to its end), or, as the
//! notes behind this crate recommend, give each piece of mutable state a single owner task
//! that the others talk to through channels (the actor model).
//!
//! Next: [chapter 7, why was I cancelled?](super::ch07_reasons).
