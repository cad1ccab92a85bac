//! Chapter 8: why is my shutdown stuck?
//!
//! Cooperative cancellation has a failure mode: a child that never reaches a cancellation
//! point (a plain tokio await on a slow peer, a legacy client, a busy loop) holds its nursery
//! up, and with it every nursery around it, and the program does not stop. Two tools answer
//! "which one, and since when?", and one puts a bound on it.
//!
//! # The task tree
//!
//! [`TaskTree`](crate::TaskTree) is a live snapshot of the scopes, nurseries and children
//! under a scope: their names, state, deadlines, and for a cancelled one, why and how long
//! ago. Print it (one line per scope) from a debug endpoint, a signal handler, or a timer
//! that fires when a shutdown takes too long; or walk its
//! [`entries`](crate::TaskTree::entries). [`TaskTree::current()`](crate::TaskTree::current)
//! starts at the outermost scope around the caller, and
//! [`TaskTree::orphans()`](crate::TaskTree::orphans) shows the runtime's orphans.
//!
//! Name the children you want to see: a child spawned with
//! [`spawn_named`](crate::NurseryHandle::spawn_named) is listed from its spawn. An unnamed
//! child is listed once it has waited for the first time (its first poll returned
//! `Pending`); until then its nursery's line counts it ("running, the body and 3 children, 2
//! of them starting": the nursery waits on its body too, until the body returns). That keeps the many short children of a fan-out, which finish in their first
//! poll, from ever touching the nursery's lock; a child that is stuck is waiting, or busy in
//! its first poll, where the count shows it. A grace expiry and the warning below count
//! such children the same way ("2 children starting").
//!
//! # The grace period
//!
//! A nursery's [`grace`](crate::Nursery::grace) period starts when it is cancelled; children
//! still running when it ends are aborted (not a failure), and their names travel in the
//! warning the nursery emits and in the `Cancelled` it passes on.
//!
//! ```
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use tokio_nursery::{cancelled, Cancelled, Nursery, TaskTree};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let start = Instant::now();
//! let outcome = Nursery::new()
//!     .name("server")
//!     .grace(Duration::from_secs(5))
//!     .run(|n| async move {
//!         n.spawn_named("polite", async { Err::<(), _>(cancelled().await) });
//!         n.spawn_named("stuck", async {
//!             tokio::time::sleep(Duration::from_secs(60)).await; // not a cancellation point
//!             Ok::<_, Cancelled>(())
//!         });
//!         n.cancel();
//!         tokio::time::sleep(Duration::from_secs(2)).await;
//!
//!         let tree = TaskTree::of(&n.scope());
//!         println!("{tree}"); // shown below
//!         // The body (this code, in a plain tokio sleep) holds the nursery up too.
//!         assert!(tree.to_string().contains("cancelling, waiting on the body and 1 child"));
//!         let names: Vec<_> = tree.entries().iter().map(|e| e.name.as_deref()).collect();
//!         assert_eq!(names, [Some("server"), Some("stuck")]); // "polite" is gone
//!         let stuck = &tree.entries()[1];
//!         assert!(stuck.cancelled);
//!         let (reason, since) = stuck.cancellation.clone().unwrap();
//!         assert_eq!((reason.to_string(), since), ("explicit cancel".to_string(), start));
//!         Ok::<_, Cancelled>(())
//!     })
//!     .await;
//! assert_eq!(start.elapsed(), Duration::from_secs(5)); // the grace period ended the wait
//! assert_eq!(outcome.unwrap(), Some(()));
//! # }
//! ```
//!
//! The tree it prints, 2 s after the cancel: the nursery is waiting for its body and one
//! child, and that child has not stopped in the 2 s since it was told.
//!
//! ```text
//! nursery "server" (scope#1): cancelling, waiting on the body and 1 child [cancelled 2000ms ago: explicit cancel]
//!   child "stuck" (scope#3): task 2 [cancelled 2000ms ago: explicit cancel]
//! ```
//!
//! The fix is in the stuck child: make its wait a cancellation point
//! ([chapter 5](super::ch05_cancellation_points)). The grace period is the backstop that
//! keeps a shutdown bounded meanwhile.
//!
//! # The tree when the grace ran out
//!
//! A nursery built with
//! [`keep_tree_at_grace_expiry`](crate::Nursery::keep_tree_at_grace_expiry) takes the
//! snapshot for you at the moment its grace period runs out, before it aborts anyone:
//! [`NurseryHandle::tree_at_grace_expiry`](crate::NurseryHandle::tree_at_grace_expiry)
//! returns it, also after the nursery ended. A [`Root`](crate::Root) does this for the whole
//! program: when its shutdown is cut short (the grace ran out, or a second Ctrl-C), its
//! [`Report::ShutdownCutShort`](crate::Report::ShutdownCutShort) carries the tree as it
//! stood then, and the default report (stderr, or a `tracing` warning) prints it under the
//! names of what was aborted.
//!
//! # A warning for cancellations nobody noticed
//!
//! Without a task tree at hand, a nursery whose cancellation has gone unobserved for
//! [`warn_unobserved_after`](crate::Nursery::warn_unobserved_after) (10 s by default) emits
//! a warning (a `tracing` event with the `tracing` feature, stderr without) naming the
//! children that have not reached a cancellation point since.
//!
//! Next: [chapter 9, borrowing from the stack](super::ch09_borrowing).
