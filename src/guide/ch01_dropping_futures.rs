//! Chapter 1: why dropping futures is dangerous.
//!
//! A Rust future is passive: it does nothing unless someone polls it, and the only way to
//! stop it is to stop polling it and drop it. `tokio::time::timeout`, a `select!` that another
//! branch won, a web server whose client hung up: all of them cancel by dropping. The future
//! is dropped *wherever it is parked*, at whichever `.await` it was waiting on, and the code
//! after that `.await` never runs. Nothing tells the code it is being cancelled; there is no
//! chance to clean up, only `Drop` impls, which cannot await.
//!
//! Every `.await` is therefore a place where your function may silently stop. Three small
//! programs show what that does.
//!
//! # A message taken from a channel is lost
//!
//! A forwarder moves orders from one channel to another and gives up after 10 ms. Both of its
//! awaits are "cancel-safe" by tokio's definition: `recv` loses nothing when dropped, and a
//! dropped `send` has not sent. Yet the combination loses an order: when the timeout fires,
//! the forwarder has taken an order out of `orders` and is waiting for room in `shipping`,
//! and the order dies with the future.
//!
//! ```
//! use std::time::Duration;
//! use tokio::sync::mpsc;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let (orders_tx, mut orders) = mpsc::channel(8);
//! let (shipping_tx, mut shipping) = mpsc::channel(1);
//! orders_tx.send("order #1").await.unwrap();
//! orders_tx.send("order #2").await.unwrap();
//! shipping_tx.send("order #0").await.unwrap(); // shipping is busy: its queue is full
//!
//! let forward = async {
//!     while let Some(order) = orders.recv().await {
//!         shipping_tx.send(order).await.unwrap(); // parked here, waiting for room...
//!     }
//! };
//! let outcome = tokio::time::timeout(Duration::from_millis(10), forward).await;
//! assert!(outcome.is_err()); // ...when the timeout dropped the forwarder
//!
//! assert_eq!(orders.recv().await, Some("order #2"));
//! assert_eq!(shipping.recv().await, Some("order #0"));
//! assert!(shipping.try_recv().is_err()); // "order #1" is in neither channel: lost
//! # }
//! ```
//!
//! Cancel safety is a property of one await, not of a function: a function is cancel-safe
//! only if *every* await in it is, given everything it holds at that point.
//!
//! # A mutex left mid-update
//!
//! A transfer moves 30 coins from Alice to Bob under a tokio mutex, with an await in the
//! middle (a call to Bob's bank). Dropped at that await, it leaves the data half-updated.
//! The guard's `Drop` unlocks the mutex as if all were well: tokio's mutex, unlike
//! `std::sync::Mutex`, has no poisoning, so the next locker cannot know.
//!
//! ```
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let accounts = tokio::sync::Mutex::new((100u32, 0u32)); // (alice, bob): 100 in total
//!
//! let transfer = async {
//!     let mut both = accounts.lock().await;
//!     both.0 -= 30;
//!     tokio::time::sleep(Duration::from_millis(50)).await; // call bob's bank
//!     both.1 += 30;
//! };
//! let outcome = tokio::time::timeout(Duration::from_millis(10), transfer).await;
//! assert!(outcome.is_err());
//!
//! let both = accounts.lock().await; // no error, no warning...
//! assert_eq!(*both, (70, 0)); // ...and 30 coins vanished
//! # }
//! ```
//!
//! # Spawned tasks outlive their caller
//!
//! The opposite problem: `tokio::spawn` starts a task that is *not* dropped with the code that
//! spawned it. Dropping a `JoinHandle` detaches the task. Here `save_all` is given up on
//! after 10 ms, its caller moves on, believing the save was abandoned, and the three writes
//! happen anyway, later, racing with whatever the caller does next.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::time::Duration;
//!
//! async fn save_all(writes: Arc<AtomicUsize>) {
//!     let mut tasks = Vec::new();
//!     for _ in 0..3 {
//!         let writes = writes.clone();
//!         tasks.push(tokio::spawn(async move {
//!             tokio::time::sleep(Duration::from_millis(100)).await;
//!             writes.fetch_add(1, Ordering::SeqCst);
//!         }));
//!     }
//!     for task in tasks {
//!         task.await.unwrap();
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let writes = Arc::new(AtomicUsize::new(0));
//! let outcome = tokio::time::timeout(Duration::from_millis(10), save_all(writes.clone())).await;
//! assert!(outcome.is_err()); // the caller gave up and moved on...
//! assert_eq!(writes.load(Ordering::SeqCst), 0);
//!
//! tokio::time::sleep(Duration::from_millis(200)).await;
//! assert_eq!(writes.load(Ordering::SeqCst), 3); // ...and the writes happened anyway
//! # }
//! ```
//!
//! (At runtime shutdown tokio does drop such tasks, at whatever await they are parked on: the
//! first two problems again.)
//!
//! # What this crate does about it
//!
//! Trio, a Python library, showed a way out (Nathaniel J. Smith,
//! ["Timeouts and cancellation for humans"](https://vorpus.org/blog/timeouts-and-cancellation-for-humans/)):
//!
//! - **Cancellation is news, not a drop.** Code runs in a *cancel scope*. Cancelling the
//!   scope, or its deadline passing, does not drop anything: the code is told, as an
//!   `Err(`[`Cancelled`](crate::Cancelled)`)`, at the next *cancellation point* it reaches
//!   (a [`sleep`](crate::sleep), a [`checkpoint`](crate::checkpoint), an await you made
//!   [`cancellable`](crate::CancellableExt::cancellable)), and returns it with `?`. Between
//!   two cancellation points it is never interrupted, so an order in hand is delivered and a
//!   transfer completes. [Chapter 2](super::ch02_scopes_and_deadlines) and
//!   [chapter 5](super::ch05_cancellation_points).
//! - **Tasks belong to their caller.** A [`Nursery`](crate::Nursery) finishes only when every
//!   task it spawned has finished, cancels them when it is cancelled, and reports every
//!   failure. [Chapter 3](super::ch03_nurseries).
//! - **Tools for what must not be cut short**: [`protect`](crate::protect) runs work to
//!   completion whatever happens to its caller, and a [`Mutex`](crate::Mutex) that *poisons*
//!   when a critical section is cut short. [Chapter 6](super::ch06_protected_work).
//!
//! Next: [chapter 2, cancel scopes and deadlines](super::ch02_scopes_and_deadlines).
