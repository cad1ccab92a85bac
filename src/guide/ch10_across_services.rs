//! Chapter 10: across tasks, libraries and services.
//!
//! Real programs are made of code that knows nothing of this crate: tasks started with
//! `tokio::spawn`, libraries that take a `CancellationToken`, servers with a
//! graceful-shutdown hook, and other processes at the end of a network call. This chapter
//! carries scopes and deadlines across each of those edges, and ends with the root of a
//! program.
//!
//! # A plain `tokio::spawn`
//!
//! A task started with `tokio::spawn` runs outside every scope: never cancelled, no deadline
//! ([chapter 1](super::ch01_dropping_futures#spawned-tasks-outlive-their-caller)). Prefer a
//! nursery child. Where a library spawns for you, wrap the future with
//! [`carry_scope`](crate::carry_scope): it then runs in the scope current when it was
//! wrapped, and that scope's cancellation and deadlines reach it in its own task.
//!
//! ```
//! use std::time::Duration;
//! use tokio_nursery::{carry_scope, current_deadline, move_on_after, sleep};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let outcome = move_on_after(Duration::from_millis(10), async {
//!     let plain = tokio::spawn(async { current_deadline().remaining() });
//!     assert_eq!(plain.await.unwrap(), None); // outside every scope
//!
//!     let carried = tokio::spawn(carry_scope(async {
//!         sleep(Duration::from_secs(60)).await // cancelled by the deadline at 10 ms
//!     }));
//!     let slept = carried.await.unwrap();
//!     assert!(slept.is_err());
//!     slept // its `Cancelled` is ours to hand back
//! })
//! .await;
//! assert_eq!(outcome.unwrap(), None::<()>);
//! # }
//! ```
//!
//! For hyper's and tower's executors (a server spawns a task per connection), a
//! [`NurseryExecutor`](crate::NurseryExecutor) spawns them into a nursery instead (with the
//! `hyper` feature it is a `hyper::rt::Executor`): the nursery waits for the connections,
//! and its cancellation and deadlines reach them.
//!
//! # Libraries that take a `CancellationToken`
//!
//! With the `tokio-util` feature, a scope and a `tokio_util::sync::CancellationToken`
//! convert both ways: [`cancellation_token()`](crate::cancellation_token) is a token
//! cancelled with the current scope, and [`cancelled_by(token, body)`](crate::cancelled_by)
//! (or [`ScopeHandle::cancel_when`](crate::ScopeHandle::cancel_when)) runs a scope that is
//! cancelled with a token.
//!
//! ```
//! # #[cfg(feature = "tokio-util")]
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::time::Duration;
//! use tokio_nursery::{cancellation_token, cancelled_by, move_on_after, sleep, Cancelled};
//! use tokio_util::sync::CancellationToken;
//!
//! // Scope to token: a library given the scope's token stops with the scope.
//! let mut library = None;
//! let outcome = move_on_after(Duration::from_millis(10), async {
//!     let token = cancellation_token();
//!     library = Some(tokio::spawn(async move {
//!         token.cancelled().await;
//!         "library stopped"
//!     }));
//!     sleep(Duration::from_secs(60)).await?;
//!     Ok::<_, Cancelled>(())
//! })
//! .await;
//! assert_eq!(outcome.unwrap(), None);
//! assert_eq!(library.unwrap().await.unwrap(), "library stopped");
//!
//! // Token to scope: our code stops when someone else's token is cancelled.
//! let token = CancellationToken::new();
//! let stop = token.clone();
//! tokio::spawn(async move {
//!     tokio::time::sleep(Duration::from_millis(5)).await;
//!     stop.cancel();
//! });
//! let outcome = cancelled_by(token, async {
//!     sleep(Duration::from_secs(60)).await?;
//!     Ok::<_, Cancelled>("finished")
//! })
//! .await;
//! assert_eq!(outcome.unwrap(), None);
//! # }
//! # #[cfg(not(feature = "tokio-util"))] fn main() {}
//! ```
//!
//! # Graceful-shutdown hooks
//!
//! Servers take a future that says when to stop accepting and drain: axum's
//! `with_graceful_shutdown`, tonic's `serve_with_shutdown`, hyper-util's `GracefulShutdown`.
//! [`shutdown_signal()`](crate::shutdown_signal) is such a future (`'static + Send`, output
//! `()`) that completes when the scope current at the call is cancelled, wherever it is
//! polled. ([`cancelled_owned()`](crate::cancelled_owned) is the same with the
//! `Cancelled`.) A real axum server in a nursery, stopped by cancelling the nursery:
//!
//! ```
//! use std::io;
//! use axum::{routing::get, Router};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tokio::net::{TcpListener, TcpStream};
//! use tokio_nursery::{nursery, shutdown_signal};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let outcome = nursery(|n| async move {
//!     let listener = TcpListener::bind("127.0.0.1:0").await?;
//!     let addr = listener.local_addr()?;
//!     n.spawn(async move {
//!         let app = Router::new().route("/", get(|| async { "hello" }));
//!         axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await
//!     });
//!
//!     let mut client = TcpStream::connect(addr).await?;
//!     client.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
//!     let mut response = String::new();
//!     client.read_to_string(&mut response).await?;
//!     assert!(response.starts_with("HTTP/1.0 200") && response.ends_with("hello"));
//!
//!     n.cancel(); // the server drains and returns; the nursery waits for it
//!     Ok::<_, io::Error>("served")
//! })
//! .await;
//! assert_eq!(outcome.unwrap(), Some("served"));
//! # }
//! ```
//!
//! # Deadlines across services
//!
//! A deadline should travel with a request: if the caller has 2 s left, the service it calls
//! has less, and so do the services that one calls. Only the *remaining time* crosses the
//! wire (two machines' clocks need not agree), in the headers gRPC and many HTTP services
//! use: `grpc-timeout` (like `1500000u`) and `x-request-timeout-ms` (like `1500`). With the
//! `http` feature, [`propagate_deadline`](crate::propagate_deadline) writes the effective
//! deadline into an outgoing `http::Request` (and fails, sending nothing, if it has passed),
//! and [`DeadlineHeaders`](crate::DeadlineHeaders) reads it back on the other side: the
//! smaller header wins, malformed values are rejected, oversized ones clamped.
//!
//! ```
//! # #[cfg(feature = "http")]
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::time::Duration;
//! use tokio_nursery::{move_on_after, propagate_deadline, Cancelled, DeadlineHeaders};
//!
//! let mut request = http::Request::new(());
//! move_on_after(Duration::from_millis(250), async {
//!     propagate_deadline(&mut request).unwrap(); // the caller, with 250 ms left
//!     Ok::<_, Cancelled>(())
//! })
//! .await
//! .unwrap();
//! assert_eq!(request.headers()["x-request-timeout-ms"], "250");
//! assert_eq!(request.headers()["grpc-timeout"], "250000u");
//!
//! let incoming = DeadlineHeaders::new().read(request.headers()).unwrap().unwrap(); // the callee
//! assert_eq!(incoming.budget(), Duration::from_millis(250));
//! # }
//! # #[cfg(not(feature = "http"))] fn main() {}
//! ```
//!
//! With the `tower` feature, two layers do this for every request.
//! [`DeadlineLayer`](crate::DeadlineLayer) (server side) runs each request's handler in a
//! scope with the caller's deadline, so the handler's cancellation points,
//! `current_deadline()` and every nursery it opens see it; a request future dropped because
//! the client went away cancels the work per the nurseries' drop modes.
//! [`PropagateDeadlineLayer`](crate::PropagateDeadlineLayer) (client side) writes the
//! effective deadline into each outgoing request, or, under a deadline, keeps a tighter
//! per-call timeout the request already carries. Two hops, in one process: the client gives
//! A 2 s, A spends 500 ms and calls B, B gets the remaining 1.5 s, and B's work stops when
//! the client's deadline passes.
//!
//! ```
//! # #[cfg(feature = "tower")]
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tokio::time::Instant;
//! use tokio_nursery::{current_deadline, move_on_after, sleep, Cancelled};
//! use tokio_nursery::{DeadlineLayer, PropagateDeadlineLayer};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! let start = Instant::now();
//! let service_b = DeadlineLayer::new().layer(service_fn(|_: Request<()>| async {
//!     let given = current_deadline().remaining().unwrap();
//!     let work = match sleep(Duration::from_secs(60)).await {
//!         Ok(()) => "finished",
//!         Err(_cancelled) => "stopped at the deadline",
//!     };
//!     Ok::<_, Infallible>(Response::new((given, work)))
//! }));
//! let service_a = DeadlineLayer::new().layer(service_fn(move |_: Request<()>| {
//!     let to_b = PropagateDeadlineLayer::new().layer(service_b.clone());
//!     async move {
//!         sleep(Duration::from_millis(500)).await.unwrap(); // A's own work
//!         Ok::<_, Infallible>(to_b.oneshot(Request::new(())).await.unwrap())
//!     }
//! }));
//! let to_a = PropagateDeadlineLayer::new().layer(service_a);
//!
//! let outcome = move_on_after(Duration::from_secs(2), async {
//!     let response = to_a.oneshot(Request::new(())).await.unwrap();
//!     Ok::<_, Cancelled>(response.into_body())
//! })
//! .await;
//! let (given_to_b, work_at_b) = outcome.unwrap().unwrap();
//! assert_eq!(given_to_b, Duration::from_millis(1500));
//! assert_eq!(work_at_b, "stopped at the deadline");
//! assert_eq!(start.elapsed(), Duration::from_secs(2));
//! # }
//! # #[cfg(not(feature = "tower"))] fn main() {}
//! ```
//!
//! # The root of a program
//!
//! The outermost nursery of a program is the [`Root`](crate::Root). It builds the tokio
//! runtime, runs `main` in a nursery, and when `main` returns or at the first Ctrl-C /
//! SIGTERM it cancels everything with reason [`Shutdown`](crate::CancelReason::Shutdown),
//! waits up to a grace period, aborts what is left (except protected work, which it waits
//! for; a signal during the shutdown abandons that too), waits for orphans the same way,
//! and shuts the runtime down with a bound. What it cannot save: tasks from a plain `tokio::spawn` (tokio drops them at
//! runtime shutdown) and anything `std::process::exit` ends.
//!
//! ```
//! use std::sync::mpsc;
//! use std::time::Duration;
//! use tokio_nursery::{cancelled, CancelReason, Cancelled, Root};
//!
//! fn main() {
//!     let (told, why) = mpsc::channel();
//!     let outcome = Root::new()
//!         .current_thread()
//!         .handle_signals(false) // a doc test; a real program keeps Ctrl-C and SIGTERM
//!         .grace(Duration::from_secs(5))
//!         .run(|n| async move {
//!             n.spawn(async move {
//!                 let stop = cancelled().await; // serve until the shutdown
//!                 told.send(stop.reason().clone()).unwrap();
//!                 Err::<(), _>(stop)
//!             });
//!             Ok::<_, Cancelled>("main is done")
//!         });
//!     assert_eq!(outcome.unwrap(), Some("main is done"));
//!     assert!(matches!(why.recv().unwrap(), CancelReason::Shutdown));
//! }
//! ```
//!
//! That is the whole crate. Cancellation is news delivered at points you can see, every
//! task has an owner that waits for it, and every failure reaches someone.

// Without these features some items linked above do not exist (their examples then compile
// to an empty `main`); keep a documentation build without them free of link warnings.
#![cfg_attr(
    not(all(feature = "http", feature = "tower", feature = "tokio-util")),
    allow(rustdoc::broken_intra_doc_links)
)]
