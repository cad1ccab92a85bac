//! Chapter 4: dropping a nursery.
//!
//! Awaiting a nursery to the end never drops a child. But a nursery's future is a future, and
//! futures get dropped: it loses a `select!`, a `tokio::time::timeout` around it fires, the
//! web server drops the request handler holding it because the client hung up. What happens
//! to the children then is the nursery's [`DropMode`](crate::DropMode).
//!
//! # Wait (the default): cancelled, adopted, awaited
//!
//! In [`DropMode::Wait`](crate::DropMode::Wait), dropping the nursery's future cancels its
//! scope and returns at once; **no child is dropped mid-await**. The children see the
//! cancellation at their next cancellation point and finish their cleanup, and the nearest
//! enclosing nursery still running *adopts* them: it will not finish before they have. Below,
//! the child of a dropped nursery is a transfer that rolls back when cancelled: compare with
//! [chapter 1](super::ch01_dropping_futures#a-mutex-left-mid-update).
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use tokio_nursery::{nursery, sleep, Cancelled};
//!
//! /// Moves 30 from Alice to Bob; rolls back if cancelled half-way.
//! async fn transfer(bank: Arc<Mutex<(u32, u32)>>) -> Result<(), Cancelled> {
//!     bank.lock().unwrap().0 -= 30;
//!     if let Err(cancelled) = sleep(Duration::from_millis(50)).await {
//!         tokio::time::sleep(Duration::from_millis(5)).await; // cleanup may await
//!         bank.lock().unwrap().0 += 30; // roll back
//!         return Err(cancelled);
//!     }
//!     bank.lock().unwrap().1 += 30;
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let start = Instant::now();
//! let bank = Arc::new(Mutex::new((100, 0)));
//! let in_child = bank.clone();
//! let outer = nursery(|_| async move {
//!     let inner = nursery(|n| async move {
//!         n.spawn(transfer(in_child));
//!         Ok::<_, Cancelled>(())
//!     });
//!     // The inner nursery's future is dropped by a timeout at 10 ms.
//!     assert!(tokio::time::timeout(Duration::from_millis(10), inner).await.is_err());
//!     Ok::<_, Cancelled>(())
//! })
//! .await;
//! assert!(outer.is_ok());
//! assert_eq!(*bank.lock().unwrap(), (100, 0)); // rolled back: the invariant holds
//! assert_eq!(start.elapsed(), Duration::from_millis(15)); // the outer nursery waited for it
//! # }
//! ```
//!
//! With no nursery around to adopt them, the children go to the runtime's *orphan
//! registry*, with a warning event: [`orphan_count`](crate::orphan_count) counts them and
//! [`orphans_finished`](crate::orphans_finished) waits for them. Nothing is silently detached.
//! (The [`Root`](crate::Root) of a program, [chapter 10](super::ch10_across_services), waits
//! for orphans before it shuts the runtime down.)
//!
//! ```
//! use std::time::Duration;
//! use tokio_nursery::{cancelled, nursery, orphan_count, orphans_finished, Cancelled};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let inner = nursery(|n| async move {
//!     n.spawn(async {
//!         let why = cancelled().await;
//!         tokio::time::sleep(Duration::from_millis(5)).await; // cleanup
//!         Err::<(), _>(why)
//!     });
//!     Ok::<_, Cancelled>(())
//! });
//! assert!(tokio::time::timeout(Duration::from_millis(10), inner).await.is_err());
//! assert_eq!(orphan_count(), 1); // still cleaning up, and accounted for
//! orphans_finished().await;
//! assert_eq!(orphan_count(), 0);
//! # }
//! ```
//!
//! # Abort: for children that are cancel-safe
//!
//! In [`DropMode::Abort`](crate::DropMode::Abort), dropping the nursery's future aborts every
//! child at once: tokio drops their futures where they are parked, exactly what
//! [chapter 1](super::ch01_dropping_futures) warned about. Pick it for children that hold
//! nothing half-done at any await: a cache refresher parked in `recv`, a listener parked in
//! `accept`. (Work started with [`protect`](crate::protect) is never aborted,
//! [chapter 6](super::ch06_protected_work).)
//!
//! ```
//! use std::time::Duration;
//! use tokio::sync::oneshot;
//! use tokio_nursery::{Cancelled, DropMode, Nursery};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let (alive, gone) = oneshot::channel::<()>();
//! let inner = Nursery::new()
//!     .drop_mode(DropMode::Abort)
//!     .run(|n| async move {
//!         n.spawn(async move {
//!             let _alive = alive; // dropped with the child's future
//!             std::future::pending::<()>().await; // parked in a cancel-safe await
//!             Ok::<_, Cancelled>(())
//!         });
//!         Ok::<_, Cancelled>(())
//!     });
//! assert!(tokio::time::timeout(Duration::from_millis(10), inner).await.is_err());
//! assert!(gone.await.is_err()); // the child's future was dropped
//! # }
//! ```
//!
//! # Blocking wait: when the drop itself must wait
//!
//! [`DropMode::BlockingWait`](crate::DropMode::BlockingWait) makes the drop *block the
//! thread* until the children have stopped, for at most the nursery's
//! [`grace`](crate::Nursery::grace) period (required; after it they are aborted). Pick it
//! only when the code right after the drop must find the children gone, say files flushed
//! and closed, and nothing better is possible. It holds a runtime thread while it waits and
//! works only on a multi-thread runtime; elsewhere (a nursery of a current-thread or local
//! runtime, even dropped outside it; a `LocalSet`; runtime shutdown) it falls back to *wait*
//! rather than deadlock.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
//! use std::time::Duration;
//! use tokio_nursery::{cancelled, Cancelled, DropMode, Nursery};
//!
//! # // The drop runs on a worker of a one-worker runtime: see the note at the end of
//! # // `src/guide/ch04_drop_modes.rs` (BlockingWait's shutdown probe can race).
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 1)] async fn main() {
//! # tokio::spawn(async {
//! let flushed = Arc::new(AtomicBool::new(false));
//! let flag = flushed.clone();
//! let inner = Nursery::new()
//!     .drop_mode(DropMode::BlockingWait)
//!     .grace(Duration::from_secs(5)) // the longest the drop may block
//!     .run(|n| async move {
//!         n.spawn(async move {
//!             let why = cancelled().await;
//!             tokio::time::sleep(Duration::from_millis(5)).await; // flush
//!             flag.store(true, SeqCst);
//!             Err::<(), _>(why)
//!         });
//!         Ok::<_, Cancelled>(())
//!     });
//! assert!(tokio::time::timeout(Duration::from_millis(10), inner).await.is_err());
//! assert!(flushed.load(SeqCst)); // the drop returned only once the child had flushed
//! # }).await.unwrap();
//! # }
//! ```
//!
//! # Better than any drop: cancel, then keep awaiting
//!
//! All three modes are about a drop you did not choose. When *you* decide to stop a
//! nursery, do not drop it: cancel its scope and go on awaiting it. The children clean up,
//! the nursery reports what happened, and nothing is adopted or aborted. Wrapping the
//! nursery in a [`CancelScope`](crate::CancelScope) gives a handle before it starts; below,
//! a timeout gives up on *waiting* for it without giving up on the work.
//!
//! ```
//! use std::pin::pin;
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use tokio_nursery::{cancelled, nursery, CancelScope};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let start = Instant::now();
//! let scope = CancelScope::new();
//! let stop = scope.handle();
//! let mut server = pin!(scope.run(nursery(|n| async move {
//!     n.spawn(async {
//!         let why = cancelled().await;
//!         tokio::time::sleep(Duration::from_millis(5)).await; // cleanup
//!         Err::<(), _>(why)
//!     });
//!     Err::<(), _>(cancelled().await) // serve until cancelled
//! })));
//! // `&mut server`: the timeout drops a reference, not the nursery.
//! assert!(tokio::time::timeout(Duration::from_millis(10), &mut server).await.is_err());
//! stop.cancel();
//! let outcome = server.await; // the scope absorbs the nursery's cancellation
//! assert!(matches!(outcome, Ok(None)));
//! assert!(stop.cancelled_caught());
//! assert_eq!(start.elapsed(), Duration::from_millis(15));
//! # }
//! ```
//!
//! The body waits for the cancellation and hands it back, like a server's main loop. Had it
//! returned a value instead, the nursery would yield that value once its children had
//! stopped: [a body that finishes wins][wins].
//!
//! [wins]: super::ch02_scopes_and_deadlines#a-body-that-finishes-wins
//!
//! For a nursery future you still hold by value,
//! [`cancel_and_join`](crate::NurseryFuture::cancel_and_join) does the same in one call.
//!
//! # Which one?
//!
//! | you want | use |
//! |---|---|
//! | to stop a nursery you are awaiting | cancel it and keep awaiting (above) |
//! | children that clean up, whatever drops the nursery | `Wait`, the default |
//! | children gone at once, and they are cancel-safe | `Abort` |
//! | the drop to return only once they are gone, on a multi-thread runtime | `BlockingWait`, with a grace period |
//!
//! In every mode a [`grace`](crate::Nursery::grace) period bounds how long cancelled
//! children may take before they are aborted.
//!
//! Next: [chapter 5, cancellation points](super::ch05_cancellation_points).

// Why the blocking-wait example runs its drop on the worker of a one-worker runtime: it
// was written when the drop's shutdown probe (a task spawned to see whether tokio finishes
// it at once) was a ready future that an idle worker could run to completion before the
// check, making a running runtime look like one shutting down. The probe is now `pending()`,
// which only a shutting-down runtime finishes, so the example could drop the nursery from
// `main` directly; it keeps the one-worker runtime, which is still correct.
