//! Structured concurrency and human-friendly cancellation for tokio.
//!
//! Async Rust cancels by dropping a future wherever it is parked, which can break invariants
//! half-way. This crate brings Trio's answer to tokio: **cancel scopes** with deadlines,
//! delivered cooperatively at explicit cancellation points, so code is told it was cancelled
//! (an `Err(Cancelled)` it can `?`) instead of vanishing mid-await.
//!
//! New here? The [`guide`] teaches cancellation chapter by chapter, with examples.
//!
//! References such as "(SPEC N4)" name clauses of the crate's semantic contract; the
//! repository's DESIGN.md ("SPEC coverage") maps each to the code and the tests that hold
//! it.
//!
//! # Cancel scopes
//!
//! A scope is entered by running a future in it ([`CancelScope::run`], [`move_on_after`],
//! [`fail_after`], ...). Scopes nest as the code nests; cancelling one cancels everything
//! inside it that is not [shielded](CancelScope::shielded). The effective deadline at any
//! point is the nearest one ([`current_deadline`]).
//!
//! ```
//! use std::time::Duration;
//! use tokio_nursery::{move_on_after, sleep, checkpoint, Cancelled};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let result = move_on_after(Duration::from_millis(100), async {
//!     let mut done = 0;
//!     loop {
//!         sleep(Duration::from_millis(30)).await?; // a cancellation point
//!         done += 1;
//!         checkpoint().await?;                     // another one
//!         if done == 10 { return Ok::<_, Cancelled>(done); }
//!     }
//! })
//! .await;
//! assert_eq!(result.unwrap(), None); // cancelled at 100 ms, after 3 rounds
//! # }
//! ```
//!
//! # Cancellation points
//!
//! Delivery is cooperative: [`checkpoint`], [`check_cancelled`], [`cancelled`], [`sleep`],
//! any future made [`cancellable`](CancellableExt::cancellable), awaiting a child's handle
//! ([`ChildHandle`], [`LocalHandle`], [`ParallelHandle`]),
//! [`spawn_when_free`](NurseryHandle::spawn_when_free) and
//! [`Mutex::lock_cancellable`] report the cancellation, every time they are reached while the
//! scope is cancelled. Code in between is never interrupted.
//! [`is_cancelled`] is a cheap synchronous query for loops. A scope can opt in to hard
//! delivery ([`CancelScope::hard`]), which drops its body instead.
//!
//! # Nurseries
//!
//! A [`Nursery`] owns the tasks it spawns: it finishes only when its body and every child
//! have finished, a child's failure cancels its siblings, and every failure and panic is
//! reported. Dropping a nursery's future never drops a child mid-await in the default
//! [`DropMode::Wait`]: the children are cancelled and adopted by the enclosing nursery.
//!
//! ```
//! use std::time::Duration;
//! use tokio_nursery::{Cancelled, Nursery, sleep};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let out = Nursery::new()
//!     .timeout(Duration::from_millis(100))
//!     .run(|n| async move {
//!         let fast = n.spawn(async { sleep(Duration::from_millis(10)).await?; Ok::<_, Cancelled>(1) });
//!         n.spawn(async { sleep(Duration::from_secs(10)).await?; Ok(2) }); // cut at 100 ms
//!         Ok::<_, Cancelled>(fast.await.unwrap()) // ends long before the deadline
//!     })
//!     .await;
//! assert_eq!(out.unwrap(), Some(1));
//! # }
//! ```
//!
//! # Crossing tasks and services
//!
//! A plain `tokio::spawn` starts outside every scope. [`carry_scope`] carries the current
//! scope into such a future; deadlines are fired by a per-runtime service, so they reach
//! other tasks while the scope's own task is parked or busy. [`shutdown_signal`] hands a
//! scope's cancellation to graceful-shutdown hooks, [`NurseryExecutor`] makes hyper's tasks
//! a nursery's children, and with the `http`, `tower` and `tokio-util` features deadlines
//! travel in request headers and scopes link with `CancellationToken`s (chapter 10 of the
//! [`guide`]).
//!
//! # Cancel safety
//!
//! Every future of this crate, and whether dropping it (losing a `select!` race) loses
//! anything (SPEC N17):
//!
//! | future | cancel-safe | when dropped |
//! |---|---|---|
//! | [`checkpoint`] | yes | nothing is lost |
//! | [`cancelled`] | yes | nothing is lost |
//! | [`sleep`], [`sleep_until`] | yes | nothing is lost |
//! | [`fut.cancellable()`](CancellableExt::cancellable) | as cancel-safe as `fut` | `fut` is dropped |
//! | [`CancelScope::run`], [`move_on_after`], [`move_on_at`] | as cancel-safe as the body | the scope ends and the body is dropped where it is parked |
//! | [`fail_after`], [`fail_at`] | as cancel-safe as the body | the same |
//! | [`carry_scope`] | as cancel-safe as the future it carries | that future is dropped |
//! | [`Nursery::run`], [`nursery`] | yes, in the default [`DropMode::Wait`] | the scope is cancelled; the children are adopted by the nearest live enclosing nursery (or the orphan registry) and finish their cleanup; in [`DropMode::Abort`] they are aborted; in [`DropMode::BlockingWait`] the drop blocks until they stopped (at most the grace period) |
//! | awaiting a [`ChildHandle`] | yes | nothing: the child keeps running in its nursery |
//! | [`NurseryHandle::start`] | yes | the child moves to the nursery with its own scope cancelled (before the first poll: nothing was started) |
//! | [`NurseryHandle::spawn_when_free`], [`Collector::spawn_when_free`] | yes | nothing is spawned |
//! | [`NurseryHandle::next_incident`] | yes | nothing is taken |
//! | [`Collector::join_next`] | yes | the outcome stays queued |
//! | [`orphans_finished`] | yes | nothing |
//! | [`parallel_scope_async`] | **no**: dropping it before it completes breaks its `unsafe` contract | its children are dropped and waited for (the backstop) |
//! | awaiting a [`ParallelHandle`] | yes | nothing: the child keeps running in its scope |
//! | [`shutdown_signal`], [`cancelled_owned`] | yes | nothing |
//! | [`NurseryFuture::cancel_and_join`] | as the nursery future it took: see [`Nursery::run`] | that future is dropped, in its drop mode |
//! | [`local_scope`] | as cancel-safe as its body and children | the body and every child are dropped where they are parked; the children's handles answer [`JoinError::ChildAborted`] (to waiters whose scope is not cancelled) |
//! | awaiting a [`LocalHandle`] | yes | nothing: the child keeps running in its local scope |
//! | [`Mutex::lock`], [`Mutex::lock_cancellable`], [`Mutex::try_lock`] | while waiting for the lock, yes; once the section runs, no | waiting: nothing; running: the section is cut short and the mutex is poisoned |
//! | awaiting [`Protected`] | yes | nothing: the protected work keeps running |
//! | `cancelled_by` (feature `tokio-util`) | as cancel-safe as the body | the scope ends and the body is dropped where it is parked |
//!
//! Scope and nursery futures are `#[must_use]`: they do nothing unless awaited. A future
//! leaked with `mem::forget` never runs its drop code: a leaked nursery future leaves its
//! children running with no drop hook, and no design can prevent that (SPEC N17).
//!
//! See DESIGN.md in the repository for the architecture and its invariants.

#![warn(missing_docs)]
#![cfg_attr(loom, allow(dead_code))]

mod cancelled;
mod handoff;
mod keep_waker;
mod node;
mod output_slot;
mod pages;
mod poison;
mod reason;
mod registry;
mod sync;

// The tokio-facing layer. Under `cfg(loom)` only the core above is built, for model checking.
#[cfg(not(loom))]
mod carry;
#[cfg(not(loom))]
mod context;
#[cfg(not(loom))]
mod deadline;
#[cfg(not(loom))]
mod deadline_service;
#[cfg(not(loom))]
mod executor;
#[cfg(not(loom))]
mod exemption;
#[cfg(not(loom))]
pub mod guide;
#[cfg(all(not(loom), feature = "http"))]
mod headers;
#[cfg(all(not(loom), feature = "tower"))]
mod layers;
#[cfg(not(loom))]
mod local;
#[cfg(not(loom))]
mod mutex;
#[cfg(not(loom))]
mod nursery;
#[cfg(not(loom))]
mod parallel;
#[cfg(not(loom))]
mod point;
#[cfg(not(loom))]
mod root;
#[cfg(not(loom))]
mod scope;
#[cfg(not(loom))]
mod shutdown;
#[cfg(not(loom))]
mod timeout;
#[cfg(all(not(loom), feature = "tokio-util"))]
mod token;
#[cfg(not(loom))]
mod tree;

pub use cancelled::{CancelError, Cancelled};
pub use node::ScopeId;
pub use reason::{CancelReason, Payload};

#[cfg(not(loom))]
pub use carry::{Carried, carry_scope};
#[cfg(not(loom))]
pub use deadline::{EffectiveDeadline, current_deadline};
#[cfg(not(loom))]
pub use executor::{ExecutorError, NurseryExecutor};
#[cfg(all(not(loom), feature = "http"))]
pub use headers::{
    DEFAULT_CAP, DeadlineHeaders, DeadlinePassed, DeadlineSource, GRPC_TIMEOUT, GrpcTimeout,
    HeaderError, IncomingDeadline, MalformedTimeout, REQUEST_TIMEOUT_MS, TimeUnit,
    format_timeout_ms, parse_timeout_ms, propagate_deadline,
};
#[cfg(all(not(loom), feature = "tower"))]
pub use layers::{
    BoxError, DeadlineFuture, DeadlineLayer, DeadlineService, PropagateDeadline,
    PropagateDeadlineLayer, PropagateFuture,
};
#[cfg(not(loom))]
pub use local::{LocalHandle, LocalScope, local_scope};
#[cfg(not(loom))]
pub use mutex::{Mutex, Poisoned};
#[cfg(not(loom))]
pub use nursery::{
    BlockingContext, ChildControl, ChildHandle, Collector, DropMode, Failure, Incident, JoinError,
    Nursery, NurseryError, NurseryFuture, NurseryHandle, Origin, Protected, Ready, Report,
    ReportHook, SpawnError, Start, StartError, nursery, orphan_count, orphans_finished,
    panic_message, protect,
};
#[cfg(all(not(loom), feature = "rt-multi-thread"))]
pub use parallel::parallel_scope;
#[cfg(not(loom))]
pub use parallel::{ParallelHandle, ParallelScope, ParallelUnavailable, parallel_scope_async};
#[cfg(not(loom))]
pub use point::{
    Cancellable, CancellableExt, Sleep, WaitCancelled, cancelled, check_cancelled, checkpoint,
    is_cancelled, sleep, sleep_until,
};
#[cfg(not(loom))]
pub use root::Root;
#[cfg(not(loom))]
pub use scope::{CancelScope, ScopeHandle, Scoped, current_scope};
#[cfg(not(loom))]
pub use shutdown::{OwnedCancelled, ShutdownSignal, cancelled_owned, shutdown_signal};
#[cfg(not(loom))]
pub use timeout::{FailScoped, TimedOut, fail_after, fail_at, move_on_after, move_on_at};
#[cfg(all(not(loom), feature = "tokio-util"))]
pub use token::{TOKEN_REASON, TokenLink, TokenScoped, cancellation_token, cancelled_by};
#[cfg(not(loom))]
pub use tree::{TaskTree, TreeEntry};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
