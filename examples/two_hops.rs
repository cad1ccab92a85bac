//! Deadline propagation through two hops over loopback (SPEC D1): client -> service A ->
//! service B, each a real HTTP server.
//!
//! ```text
//! cargo run --example two_hops --features tower
//! ```
//!
//! The client gives its call a budget (`fail_after`). `PropagateDeadlineLayer` writes what is
//! left of it into the request (`grpc-timeout` and `x-request-timeout-ms`); A's
//! `DeadlineLayer` reads it and runs A's handler in a scope with that deadline. A works a
//! little, then calls B the same way, so B gets what A has left. B's work is a loop of
//! cancellation points: when the deadline passes, B is told, stops and answers `504`, and the
//! `504` travels back up.
//!
//! Two calls: one with a generous budget (B finishes), one with a tight budget (B is stopped
//! by A's deadline). The servers run in a nursery and shut down gracefully through
//! `shutdown_signal()` when it is cancelled at the end; the example ends by itself.
//!
//! This runs on real time (sockets cannot run on tokio's paused clock), so the milliseconds
//! printed vary a little from run to run; the outcomes and their order do not.

#[cfg(feature = "tower")]
pub use hops::*;

/// The services, the client and one call's run (built with the `tower` feature).
#[cfg(feature = "tower")]
mod hops {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::Router;
    use axum::extract::{Request, State};
    use axum::http::StatusCode;
    use axum::routing::get;
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::Instant;
    use tokio_nursery::{
        DeadlineLayer, IncomingDeadline, Nursery, PropagateDeadlineLayer, fail_after,
        shutdown_signal, sleep,
    };
    use tower::{Layer, ServiceExt, service_fn};

    /// What happened during one call, in order, as each party saw it.
    #[derive(Clone, Default, Debug)]
    pub struct Trace(Arc<Mutex<Vec<String>>>);

    impl Trace {
        fn say(&self, line: String) {
            println!("  {line}");
            self.0.lock().unwrap().push(line);
        }

        /// The lines so far.
        pub fn lines(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    /// One call's outcome, as the client saw it.
    #[derive(Debug)]
    pub struct Outcome {
        /// The client's view: the status and body that came back, or its own timeout.
        pub client: Result<(StatusCode, String), String>,
        /// How the servers' nursery ended, if not as it should (its body's value).
        pub servers_failed: Option<String>,
        /// The budget (ms) service A read from the client's request.
        pub a_budget_ms: Option<u128>,
        /// The budget (ms) service B read from A's request.
        pub b_budget_ms: Option<u128>,
        /// Every party's lines, in order.
        pub trace: Vec<String>,
    }

    /// How long B's job takes, in steps of 50 ms.
    pub const B_STEPS: u32 = 8;
    const STEP: Duration = Duration::from_millis(50);
    /// What A does before it calls B.
    pub const A_WORK: Duration = Duration::from_millis(100);

    #[derive(Clone)]
    struct Shared {
        trace: Trace,
        budgets: Arc<Mutex<(Option<u128>, Option<u128>)>>,
        b: std::net::SocketAddr,
    }

    fn budget_ms(request: &Request) -> Option<u128> {
        request
            .extensions()
            .get::<IncomingDeadline>()
            .map(|deadline| deadline.budget().as_millis())
    }

    /// Service B: a job of `B_STEPS` steps, each a cancellation point.
    async fn service_b(State(shared): State<Shared>, request: Request) -> (StatusCode, String) {
        let budget = budget_ms(&request);
        shared.budgets.lock().unwrap().1 = budget;
        shared.trace.say(match budget {
            Some(ms) => format!("B: received a budget of {ms} ms"),
            None => String::from("B: received no deadline"),
        });
        for step in 1..=B_STEPS {
            if let Err(cancelled) = sleep(STEP).await {
                shared.trace.say(format!(
                    "B: stopped after {} of {B_STEPS} steps: {}",
                    step - 1,
                    cancelled.reason()
                ));
                return (
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("B: {}", cancelled.reason()),
                );
            }
        }
        shared.trace.say(format!("B: finished all {B_STEPS} steps"));
        (StatusCode::OK, String::from("B: done"))
    }

    /// Service A: some work of its own, then a call to B carrying what is left of the deadline.
    async fn service_a(State(shared): State<Shared>, request: Request) -> (StatusCode, String) {
        let budget = budget_ms(&request);
        shared.budgets.lock().unwrap().0 = budget;
        shared.trace.say(match budget {
            Some(ms) => format!("A: received a budget of {ms} ms"),
            None => String::from("A: received no deadline"),
        });
        if let Err(cancelled) = sleep(A_WORK).await {
            return (
                StatusCode::GATEWAY_TIMEOUT,
                format!("A: {}", cancelled.reason()),
            );
        }
        match call(shared.b, "/job").await {
            Ok((status, body)) => {
                shared.trace.say(format!("A: B answered {status}"));
                (status, format!("A got \"{body}\""))
            }
            Err(error) => {
                shared.trace.say(format!("A: could not call B: {error}"));
                (StatusCode::BAD_GATEWAY, error)
            }
        }
    }

    /// One HTTP/1 GET through `PropagateDeadlineLayer`: the effective deadline of the caller
    /// goes into the request's headers.
    async fn call(addr: std::net::SocketAddr, path: &str) -> Result<(StatusCode, String), String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let connection = tokio::spawn(connection); // ends when `sender` is dropped
        let sender = Arc::new(tokio::sync::Mutex::new(sender));
        let client = PropagateDeadlineLayer::new().layer(service_fn(move |request| {
            let sender = sender.clone();
            async move {
                let mut sender = sender.lock().await;
                sender.ready().await?;
                sender.send_request(request).await
            }
        }));
        let request = hyper::Request::get(format!("http://{addr}{path}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = client.oneshot(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let _ = connection.await;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Starts A and B on loopback in a nursery, makes one call from the client with `budget`,
    /// shuts both servers down gracefully and reports.
    pub async fn run(budget: Duration) -> Outcome {
        let trace = Trace::default();
        let budgets = Arc::new(Mutex::new((None, None)));
        let out = Nursery::new()
            .name("two hops")
            .run(|n| {
                let (trace, budgets) = (trace.clone(), budgets.clone());
                async move {
                    let b_listener = TcpListener::bind("127.0.0.1:0").await?;
                    let a_listener = TcpListener::bind("127.0.0.1:0").await?;
                    let (a, b) = (a_listener.local_addr()?, b_listener.local_addr()?);
                    let shared = Shared {
                        trace: trace.clone(),
                        budgets,
                        b,
                    };
                    let layer = DeadlineLayer::new();
                    let app_b = Router::new()
                        .route("/job", get(service_b))
                        .layer(layer.clone())
                        .with_state(shared.clone());
                    let app_a = Router::new()
                        .route("/", get(service_a))
                        .layer(layer)
                        .with_state(shared);
                    for (listener, app) in [(b_listener, app_b), (a_listener, app_a)] {
                        let signal = shutdown_signal(); // this nursery's scope
                        n.spawn(async move {
                            axum::serve(listener, app)
                                .with_graceful_shutdown(signal)
                                .await
                        });
                    }

                    let started = Instant::now();
                    trace.say(format!(
                        "client: calling A with a budget of {} ms",
                        budget.as_millis()
                    ));
                    let client = fail_after(budget, async move {
                        call(a, "/").await.map_err(std::io::Error::other)
                    })
                    .await
                    .map_err(|error| error.to_string());
                    match &client {
                        Ok((status, body)) => trace.say(format!(
                            "client: {status} after {} ms: {body}",
                            started.elapsed().as_millis()
                        )),
                        Err(error) => trace.say(format!("client: {error}")),
                    }
                    n.cancel(); // the servers shut down gracefully
                    Ok::<_, std::io::Error>(client)
                }
            })
            .await;
        let (client, servers_failed) = match out {
            Ok(Some(client)) => (client, None),
            other => {
                let failed = format!("the servers' nursery ended with {other:?}");
                (Err(failed.clone()), Some(failed))
            }
        };
        let (a_budget_ms, b_budget_ms) = *budgets.lock().unwrap();
        Outcome {
            client,
            servers_failed,
            a_budget_ms,
            b_budget_ms,
            trace: trace.lines(),
        }
    }
}

#[cfg(feature = "tower")]
#[allow(dead_code)] // the end-to-end test includes this file for `run`
#[tokio::main]
async fn main() -> std::process::ExitCode {
    let runs = [
        ("A generous budget: B finishes its job.", 5000),
        ("A tight budget: A's deadline stops B's job.", 300),
    ];
    for (i, (title, budget_ms)) in runs.into_iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("{title}");
        let outcome = run(std::time::Duration::from_millis(budget_ms)).await;
        // The client's own timeout is part of the demo; the servers failing is not.
        if let Some(failed) = outcome.servers_failed {
            eprintln!("two_hops: {failed}");
            return std::process::ExitCode::FAILURE;
        }
    }
    std::process::ExitCode::SUCCESS
}

#[cfg(not(feature = "tower"))]
fn main() {
    eprintln!("two_hops needs the `tower` feature: cargo run --example two_hops --features tower");
    std::process::exit(2);
}
