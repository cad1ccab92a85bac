//! Chapter 9: borrowing from the stack.
//!
//! A nursery's children are tokio tasks, so they must be `'static`: they cannot borrow the
//! caller's locals, and shared data goes behind an `Arc`. Yet a nursery guarantees its
//! children end before it does, which is exactly what borrowing needs. The catch is the
//! *scoped-task trilemma*: of concurrency (the parent's thread is free while children run),
//! parallelism (children run on several threads) and borrowing, safe Rust gives any two,
//! because a future can be leaked (`mem::forget`) without its drop code running, and
//! children still running on other threads would then use a stack frame that is gone.
//!
//! | you need | use |
//! |---|---|
//! | concurrency + borrowing | [`local_scope`](crate::local_scope): children polled inside the caller's task (its future is not `Send`) |
//! | parallelism + borrowing | [`parallel_scope`](crate::parallel_scope): blocks the calling thread until the children are done |
//! | concurrency + parallelism | a [`Nursery`](crate::Nursery): `'static` children |
//!
//! All three follow the nursery's rules: children run in scopes under the caller's, so
//! cancellation and deadlines reach them; the first failure cancels the rest; every failure
//! is returned, the earliest panic resumed.
//!
//! # `local_scope`: concurrent children that borrow
//!
//! [`local_scope`](crate::local_scope) polls its children inside the caller's own future, so
//! they may borrow anything that outlives the scope and need not be `Send`. Below they share
//! a borrowed slice and a `RefCell` on the caller's stack. The scope's own future is never
//! `Send` (it keeps its children in `Rc`s): it runs where a `!Send` future may, such as
//! `main`'s body, a `LocalSet` or a `spawn_local` child, not inside `tokio::spawn` or a
//! nursery's `spawn`; there, use `parallel_scope` or `'static` children.
//!
//! ```
//! use std::cell::RefCell;
//! use std::time::Duration;
//! use tokio_nursery::{local_scope, sleep, Cancelled};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let words = ["gamma", "pi", "beta"];
//! let finished = RefCell::new(Vec::new());
//! let outcome = local_scope(async |s| {
//!     for word in &words {
//!         let finished = &finished;
//!         s.spawn(async move {
//!             sleep(Duration::from_millis(10 * word.len() as u64)).await?;
//!             finished.borrow_mut().push(*word);
//!             Ok::<_, Cancelled>(())
//!         });
//!     }
//!     Ok::<_, Cancelled>(())
//! })
//! .await;
//! assert_eq!(outcome.unwrap(), Some(()));
//! assert_eq!(finished.into_inner(), ["pi", "beta", "gamma"]); // shortest first
//! # }
//! ```
//!
//! The children make progress only while the scope's future is polled: a body that blocks
//! the thread, or a scope future parked in a `select!` branch that is not polled, stalls
//! them. Dropping the scope's future drops its children at once.
//!
//! Partial results under a deadline: a child that catches its cancellation and returns
//! what it did as a value gives that value to its handle, but awaiting a handle is a
//! cancellation point of the *body*, and in a cancelled scope a handle whose child is
//! still running returns the body's own `JoinError::Cancelled` at once. The body is polled
//! before its children, so it would lose the partial results of every child the deadline
//! cut. Await the handles in a shield: the children stop at the deadline, the shield waits
//! for their values.
//!
//! ```
//! use std::time::Duration;
//! use tokio_nursery::{local_scope, move_on_after, sleep, CancelScope, Cancelled, JoinError};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let jobs = [3u64, 5, 40]; // steps of 10 ms each; the deadline is at 105 ms
//! let outcome = move_on_after(Duration::from_millis(105), local_scope(async |s| {
//!     let handles: Vec<_> = jobs
//!         .iter()
//!         .map(|&steps| {
//!             s.spawn(async move {
//!                 let mut done = 0;
//!                 while done < steps && sleep(Duration::from_millis(10)).await.is_ok() {
//!                     done += 1;
//!                 }
//!                 Ok::<_, Cancelled>(done) // what it did, cut short or not
//!             })
//!         })
//!         .collect();
//!     let done = CancelScope::new()
//!         .shielded()
//!         .run(async {
//!             let mut done = Vec::new();
//!             for handle in handles {
//!                 done.push(handle.await?);
//!             }
//!             Ok::<_, JoinError>(done)
//!         })
//!         .await
//!         .unwrap() // no child failed
//!         .unwrap(); // a shield is not cancelled
//!     Ok::<_, Cancelled>(done)
//! }))
//! .await;
//! assert_eq!(outcome.unwrap(), Some(Some(vec![3, 5, 10])));
//! # }
//! ```
//!
//! # `parallel_scope`: parallel children that borrow
//!
//! [`parallel_scope`](crate::parallel_scope) runs its children as tasks on the multi-thread
//! runtime's workers and blocks the calling thread (through `block_in_place`) until every
//! child has finished, so the borrow cannot end early. Elsewhere (a current-thread runtime)
//! it runs nothing and returns [`ParallelUnavailable`](crate::ParallelUnavailable). It needs
//! the `rt-multi-thread` feature (on by default). Its awaitable twin,
//! [`parallel_scope_async`](crate::parallel_scope_async), is `unsafe`: the caller promises
//! not to leak or drop the future before it completes.
//!
//! ```
//! # #[cfg(feature = "rt-multi-thread")]
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() {
//! use tokio_nursery::{parallel_scope, Cancelled};
//!
//! let numbers: Vec<u64> = (1..=1_000).collect();
//! let total = parallel_scope(async |s| {
//!     let handles: Vec<_> = numbers
//!         .chunks(250)
//!         .map(|chunk| s.spawn(async move { Ok::<_, Cancelled>(chunk.iter().sum::<u64>()) }))
//!         .collect();
//!     let mut total = 0;
//!     for handle in handles {
//!         total += handle.await.unwrap();
//!     }
//!     Ok::<_, Cancelled>(total)
//! })
//! .expect("a multi-thread runtime");
//! assert_eq!(total.unwrap(), Some(500_500));
//! # }
//! # #[cfg(not(feature = "rt-multi-thread"))] fn main() {}
//! ```
//!
//! Next: [chapter 10, across tasks, libraries and services](super::ch10_across_services).

// Without the feature `parallel_scope` does not exist (its example then compiles to an empty
// `main`); keep a documentation build without it free of link warnings.
#![cfg_attr(
    not(feature = "rt-multi-thread"),
    allow(rustdoc::broken_intra_doc_links)
)]
