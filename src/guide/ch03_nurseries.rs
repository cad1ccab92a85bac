//! Chapter 3: nurseries.
//!
//! A [`Nursery`](crate::Nursery) is a cancel scope that owns tasks. Its body gets a
//! [`NurseryHandle`](crate::NurseryHandle) to spawn *children*: real tokio tasks, running in
//! parallel on a multi-thread runtime. The rule that fixes the third program of
//! [chapter 1](super::ch01_dropping_futures): **a nursery finishes only when its body and
//! every child have finished.** No child outlives the code that started it; `.await` on a
//! nursery means "all of this work is over".
//!
//! Every child runs in a scope under the nursery's, so the nursery's deadline and
//! cancellation, and those of every scope around the nursery, reach the children, in their
//! own tasks. Children return `Result<T, E>` like scope bodies, with the nursery's error type
//! `E`.
//!
//! # Spawning and handles
//!
//! [`spawn`](crate::NurseryHandle::spawn) returns a [`ChildHandle`](crate::ChildHandle):
//! await it for the child's value. A request-scoped fan-out with a deadline:
//!
//! ```
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use tokio_nursery::{sleep, Cancelled, Nursery};
//!
//! async fn fetch(backend: &'static str, ms: u64) -> Result<&'static str, Cancelled> {
//!     sleep(Duration::from_millis(ms)).await?;
//!     Ok(backend)
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let start = Instant::now();
//! let answers = Nursery::new()
//!     .timeout(Duration::from_millis(100))
//!     .run(|n| async move {
//!         let a = n.spawn(fetch("a", 10));
//!         let b = n.spawn(fetch("b", 20));
//!         n.spawn(fetch("c", 10_000)); // too slow: cut by the deadline
//!         Ok::<_, Cancelled>(vec![a.await.unwrap(), b.await.unwrap()])
//!     })
//!     .await;
//! assert_eq!(answers.unwrap(), Some(vec!["a", "b"]));
//! // The body was done at 20 ms; the nursery waited for "c" to stop at the deadline.
//! assert_eq!(start.elapsed(), Duration::from_millis(100));
//! # }
//! ```
//!
//! The handle also [`cancel`](crate::ChildHandle::cancel)s (cooperatively) or
//! [`abort`](crate::ChildHandle::abort)s that child alone; neither is a failure, and the handle
//! then yields [`JoinError::ChildCancelled`](crate::JoinError::ChildCancelled) or
//! [`ChildAborted`](crate::JoinError::ChildAborted) (to a waiter whose scope is not
//! cancelled, below). Dropping a handle detaches nothing: the child still belongs to the
//! nursery. Awaiting a handle is a cancellation point of the *awaiting* code: if its scope
//! is cancelled it returns [`JoinError::Cancelled`](crate::JoinError::Cancelled), and a
//! child still running keeps running.
//!
//! A child's value comes first: a handle whose child returned a value gives it, even when
//! the awaiting scope is cancelled. A child that ended without one gives its marker
//! (`ChildFailed`, `ChildCancelled`, ...) only to a waiter whose scope is not cancelled; a
//! cancelled waiter gets its own cancellation instead, so `handle.await?` in a body passes
//! the cancellation on (the nursery absorbs its own) even when the child stopped at the
//! same cancellation before the body looked. The failures and panics are the nursery's to
//! report either way. With a `JoinError` conversion in your error type (`anyhow`, a boxed
//! error, a `From` of your own), `?` is all it takes:
//!
//! ```
//! use std::time::Duration;
//! use tokio_nursery::{Nursery, sleep};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! type BoxError = Box<dyn std::error::Error + Send + Sync>;
//! let answer = Nursery::new()
//!     .timeout(Duration::from_millis(100))
//!     .run(|n| async move {
//!         let slow = n.spawn(async {
//!             sleep(Duration::from_secs(10)).await?;
//!             Ok::<_, BoxError>("slow")
//!         });
//!         // Busy past the deadline (not a cancellation point): the child stops first.
//!         tokio::time::sleep(Duration::from_millis(150)).await;
//!         Ok::<_, BoxError>(slow.await?)
//!     })
//!     .await;
//! assert!(matches!(answer, Ok(None))); // cut by the deadline, absorbed by the nursery
//! # }
//! ```
//!
//! To learn how a child ended from a cancelled scope (a cleanup that logs it), await its
//! handle in a shielded scope ([`CancelScope::shielded`](crate::CancelScope::shielded)): the
//! handle keeps the marker it did not give a cancelled waiter, so it can be awaited again.
//!
//! The handle is `Clone + Send`: pass it to children so they can spawn siblings, from any
//! task or thread, while the nursery is open.
//!
//! A child that runs until it is cancelled (a ticker, a server loop) never returns a value,
//! so nothing tells Rust its value type, and an inline `async` block fails to compile with
//! "type annotations needed" (and "cannot satisfy `_: Send`"). Name the value type at the
//! spawn:
//!
//! ```
//! use std::time::Duration;
//! use tokio_nursery::{Cancelled, Nursery, sleep};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let out = Nursery::new()
//!     .timeout(Duration::from_millis(35))
//!     .run(|n| async move {
//!         n.spawn_named::<_, ()>("ticker", async {
//!             loop {
//!                 sleep(Duration::from_millis(10)).await?; // ends here when cancelled
//!             }
//!         });
//!         Ok::<_, Cancelled>(())
//!     })
//!     .await;
//! // The body's value; the nursery waited for the ticker, stopped by its deadline.
//! assert!(matches!(out, Ok(Some(()))));
//! # }
//! ```
//!
//! # Fail fast, and every failure reported
//!
//! When a child (or the body) fails, that is, returns an error that is not its cancellation,
//! the nursery cancels everything else in it (reason
//! [`SiblingFailed`](crate::CancelReason::SiblingFailed)), waits for it all to stop, and
//! returns [`NurseryError::Failed`](crate::NurseryError::Failed) with every failure, the one
//! that triggered the cancellation first. The siblings' `Cancelled` echoes are recognised
//! as such and are not failures.
//!
//! ```
//! use std::io;
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use tokio_nursery::{nursery, sleep, Origin};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let start = Instant::now();
//! let outcome = nursery(|n| async move {
//!     n.spawn_named("flaky", async {
//!         sleep(Duration::from_millis(10)).await?;
//!         Err::<(), _>(io::Error::other("disk full"))
//!     });
//!     n.spawn_named("slow", async {
//!         sleep(Duration::from_secs(10)).await?; // cancelled at 10 ms
//!         Ok(())
//!     });
//!     Ok::<_, io::Error>(())
//! })
//! .await;
//! let error = outcome.unwrap_err();
//! let failures = error.failures();
//! assert_eq!(failures.len(), 1); // "slow" was cancelled: not a failure
//! assert_eq!(failures[0].error().to_string(), "disk full");
//! let Origin::Child { name: Some(name), .. } = failures[0].origin() else { panic!() };
//! assert_eq!(&**name, "flaky");
//! assert_eq!(start.elapsed(), Duration::from_millis(10)); // nobody waited 10 s
//! # }
//! ```
//!
//! A [`supervisor`](crate::Nursery::supervisor) nursery is the other policy, for servers: a
//! child's failure cancels no one and is streamed to
//! [`next_incident`](crate::NurseryHandle::next_incident) as it happens.
//!
//! # Panics
//!
//! A child's panic is a failure too: the siblings are cancelled, and once everything has
//! stopped the nursery resumes the earliest panic in its caller, with its original payload.
//! A panic is never swallowed or turned into a string. (Other panics and failures left over
//! go to the [report hook](crate::Nursery::on_report).)
//!
//! ```
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use tokio_nursery::{nursery, panic_message, sleep, Cancelled};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let start = Instant::now();
//! let task = tokio::spawn(nursery(|n| async move {
//!     n.spawn(async {
//!         sleep(Duration::from_millis(10)).await?;
//!         let port: u16 = "http".parse().expect("a port number"); // panics
//!         Ok::<_, Cancelled>(port)
//!     });
//!     n.spawn(async { sleep(Duration::from_secs(10)).await }); // cancelled at 10 ms
//!     Ok::<_, Cancelled>(())
//! }));
//! let payload = task.await.unwrap_err().into_panic(); // the nursery's caller panicked
//! assert!(panic_message(&*payload).unwrap().starts_with("a port number"));
//! assert_eq!(start.elapsed(), Duration::from_millis(10));
//! # }
//! ```
//!
//! A server that answers a request's panic with an error reply, instead of losing the
//! connection that ran the request, catches it around the request's nursery, once its
//! children have all stopped (futures' `catch_unwind`; the `AssertUnwindSafe` is yours to
//! judge, as for any `catch_unwind`):
//!
//! ```
//! use std::panic::AssertUnwindSafe;
//! use futures::FutureExt;
//! use tokio_nursery::{nursery, panic_message, Cancelled};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let request = nursery(|n| async move {
//!     let part = n.spawn(async { Ok::<u32, Cancelled>("x".parse().expect("a number")) });
//!     Ok::<_, Cancelled>(part.await.ok())
//! });
//! let reply = match AssertUnwindSafe(request).catch_unwind().await {
//!     Ok(Ok(Some(value))) => format!("OK {value:?}"),
//!     Ok(Ok(None)) | Ok(Err(_)) => "ERR".to_string(),
//!     Err(payload) => format!("ERR panic: {}", panic_message(&*payload).unwrap_or("?")),
//! };
//! assert_eq!(reply, "ERR panic: a number: ParseIntError { kind: InvalidDigit }");
//! # }
//! ```
//!
//! # Collecting outcomes in completion order
//!
//! For "spawn many, handle each result as it comes" (tokio's `JoinSet`), a
//! [`Collector`](crate::Collector) spawns children whose outcomes are queued for
//! [`join_next`](crate::Collector::join_next) in completion order. They still belong to the
//! nursery. `join_next` is not a cancellation point (a loop draining the collector ends
//! also in a cancelled scope), but it follows the handles' rule: a child that ended without
//! a value comes to a waiter whose scope is cancelled as that waiter's own cancellation, so
//! `outcome?` passes a deadline on.
//!
//! ```
//! use std::time::Duration;
//! use tokio_nursery::{nursery, sleep, Cancelled};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let order = nursery(|n| async move {
//!     let mut set = n.collector::<u64>();
//!     for ms in [30, 10, 20] {
//!         set.spawn(async move {
//!             sleep(Duration::from_millis(ms)).await?;
//!             Ok::<_, Cancelled>(ms)
//!         });
//!     }
//!     let mut order = Vec::new();
//!     while let Some((_id, outcome)) = set.join_next().await {
//!         order.push(outcome.unwrap());
//!     }
//!     Ok::<_, Cancelled>(order)
//! })
//! .await;
//! assert_eq!(order.unwrap(), Some(vec![10, 20, 30]));
//! # }
//! ```
//!
//! # At most K at once
//!
//! [`Nursery::limit`](crate::Nursery::limit) bounds how many children run at once.
//! [`spawn_when_free`](crate::NurseryHandle::spawn_when_free) waits for a slot
//! (back-pressure, and a cancellation point), [`try_spawn`](crate::NurseryHandle::try_spawn)
//! fails at once when full, and plain `spawn` never waits (the child waits for its slot in
//! its own task).
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use tokio_nursery::{sleep, Cancelled, Nursery};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
//! let start = Instant::now();
//! let (r, p) = (running.clone(), peak.clone());
//! let outcome = Nursery::new()
//!     .limit(2)
//!     .run(|n| async move {
//!         for _ in 0..6 {
//!             let (running, peak) = (r.clone(), p.clone());
//!             let job = async move {
//!                 peak.fetch_max(running.fetch_add(1, SeqCst) + 1, SeqCst);
//!                 sleep(Duration::from_millis(10)).await?;
//!                 running.fetch_sub(1, SeqCst);
//!                 Ok::<_, Cancelled>(())
//!             };
//!             n.spawn_when_free(job).await.expect("a slot");
//!         }
//!         Ok::<_, Cancelled>(())
//!     })
//!     .await;
//! assert!(outcome.is_ok());
//! assert_eq!(peak.load(SeqCst), 2);
//! assert_eq!(start.elapsed(), Duration::from_millis(30)); // three rounds of two
//! # }
//! ```
//!
//! # Starting a service: `start`
//!
//! Often the caller must wait until a child is *ready*, say listening on a socket, before
//! going on, while the child keeps running. [`start`](crate::NurseryHandle::start) (Trio's
//! `nursery.start`) spawns the child with a [`Ready`](crate::Ready) signal and resolves with
//! the value the child signals. A failure before the signal goes to the caller alone, as a
//! [`StartError`](crate::StartError). One exception, as in Trio: a signal given while the
//! caller's scope is cancelled does not move the child, which stays under the caller's
//! (cancelled) scopes; `start` then resolves only when the child exits, with its value, or
//! with the child's failure as a `StartError`.
//!
//! ```
//! use std::io;
//! use std::net::SocketAddr;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tokio::net::{TcpListener, TcpStream};
//! use tokio_nursery::{nursery, CancellableExt, Ready};
//!
//! async fn greeter(ready: Ready<SocketAddr>) -> io::Result<()> {
//!     let listener = TcpListener::bind("127.0.0.1:0").await?;
//!     ready.signal(listener.local_addr()?); // callers may connect from now on
//!     loop {
//!         let (mut socket, _) = listener.accept().cancellable().await??;
//!         socket.write_all(b"hello").await?;
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let outcome = nursery(|n| async move {
//!     let addr = n.start(greeter).await.unwrap();
//!     let mut reply = String::new();
//!     TcpStream::connect(addr).await?.read_to_string(&mut reply).await?;
//!     assert_eq!(reply, "hello");
//!     n.cancel(); // stop the server: its `accept` is a cancellation point
//!     Ok::<_, io::Error>("done")
//! })
//! .await;
//! assert_eq!(outcome.unwrap(), Some("done"));
//! # }
//! ```
//!
//! # Cancelling a nursery
//!
//! Cancel the nursery's scope ([`NurseryHandle::cancel`](crate::NurseryHandle::cancel), a
//! deadline, or any scope around it) and every child is told at its next cancellation point.
//! Waiting for a nursery is *not* a cancellation point: a cancelled nursery keeps waiting
//! until its children have returned, so they get to clean up (Trio's rule). A child that
//! never reaches a cancellation point holds the nursery up: give the nursery a
//! [`grace`](crate::Nursery::grace) period, after which such children are aborted
//! ([chapter 8](super::ch08_task_tree)). Past that grace the abort cascades to every
//! nursery running inside this one, whatever its drop mode: those in its body and in its
//! children, those made there later (they abort their children as they start), those
//! exposed later by a lowered shield. Shielded scopes of the nursery's *body* (cleanups
//! there) and protected work ([chapter 6](super::ch06_protected_work)) are left to finish. A
//! shielded scope inside a *child* is not: the child's task is aborted with it, so a
//! child's cleanup that must outlive the grace period (a goodbye to its client) is protected
//! work, or gets a bound of its own well inside the grace.
//!
//! What if the nursery's own *future* is dropped before it finished? That is the next
//! chapter.
//!
//! Next: [chapter 4, dropping a nursery](super::ch04_drop_modes).
