//! A guide to cancellation with tokio-nursery.
//!
//! This guide teaches the crate the way Trio's documentation teaches cancellation: first the
//! problem, then one idea at a time, each with a small program you can run. It takes about
//! twenty minutes. Read the chapters in order; each builds on the ones before.
//!
//! 1. [Why dropping futures is dangerous](ch01_dropping_futures): a message lost, a mutex left
//!    mid-update, tasks that outlive their caller.
//! 2. [Cancel scopes and deadlines](ch02_scopes_and_deadlines): `move_on_after`,
//!    `fail_after`, nesting, the effective deadline, shields, level-triggered cancellation.
//! 3. [Nurseries](ch03_nurseries): tasks that belong to their caller: spawn, fail fast,
//!    panics, handles, collectors, limits, `start`.
//! 4. [Dropping a nursery](ch04_drop_modes): the drop modes, and when to pick which.
//! 5. [Cancellation points](ch05_cancellation_points): where code is told, `.cancellable()`,
//!    `select!` on `cancelled()`, loops, hard scopes.
//! 6. [Work that must not be cut short](ch06_protected_work): `protect` and the poisoning
//!    `Mutex`.
//! 7. [Why was I cancelled?](ch07_reasons): telling a shutdown from a deadline from a failed
//!    sibling.
//! 8. [Why is my shutdown stuck?](ch08_task_tree): the task tree and the grace period.
//! 9. [Borrowing from the stack](ch09_borrowing): `local_scope` and `parallel_scope`.
//! 10. [Across tasks, libraries and services](ch10_across_services): carrying a scope,
//!     tokens, graceful-shutdown hooks, deadline headers, tower layers, and the `Root` of a
//!     program.
//!
//! # How to read the examples
//!
//! Every example is a doc test: it is compiled and run by `cargo test --all-features`, and
//! it asserts what the text claims. Most run on tokio's *paused clock*
//! (`#[tokio::main(flavor = "current_thread", start_paused = true)]`, hidden in the
//! examples): when every task is waiting, tokio jumps straight to the next timer, so a
//! 60-second sleep costs no real time and `Instant::now()` is exact. That is why the
//! examples can say "this ends at exactly 50 ms" and check it.
//!
//! Examples that need an optional feature (`http`, `tower`, `tokio-util`) say so; they
//! compile to nothing without it.
//!
//! # The whole idea in one paragraph
//!
//! In async Rust, a future is cancelled by dropping it, wherever it happens to be parked,
//! and nobody is told. This crate brings Trio's two answers. A **cancel scope** delivers a
//! cancellation as a value, `Err(`[`Cancelled`](crate::Cancelled)`)`, at explicit
//! *cancellation points*, so the code finds out, cleans up, and returns; code between two
//! cancellation points is never interrupted. A **nursery** owns the tasks it spawns: it
//! finishes only when all of them have, so no task outlives the code that started it, and no
//! failure goes unreported.

pub mod ch01_dropping_futures;
pub mod ch02_scopes_and_deadlines;
pub mod ch03_nurseries;
pub mod ch04_drop_modes;
pub mod ch05_cancellation_points;
pub mod ch06_protected_work;
pub mod ch07_reasons;
pub mod ch08_task_tree;
pub mod ch09_borrowing;
pub mod ch10_across_services;
