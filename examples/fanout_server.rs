//! Request-scoped fan-out in a real HTTP server (SPEC D1, N4, N8, N9): a frontend asks
//! several backends at once under its caller's deadline, the first failure cancels the other
//! calls, and a client that hangs up stops the whole fan-out.
//!
//! ```text
//! cargo run --example fanout_server --features tower
//! ```
//!
//! Every party is real and on loopback, started by the example in one nursery: five backends
//! and a frontend (axum routers behind `DeadlineLayer`, served with hyper, one nursery child
//! per connection so that every request's scope belongs to the example's task tree), and a
//! hyper client. The frontend's `/page?backends=a,b&drop=wait` handler reads the caller's
//! deadline (the layer put it in the request's extensions and runs the handler in a scope
//! with it) and fans out in a nursery: one child per backend, each a call through
//! `PropagateDeadlineLayer`, so every backend receives what is left of the budget. The
//! fan-out keeps a reserve of `RESERVE` to send its answer: its nursery's deadline is the
//! caller's minus the reserve, and what has not arrived by then is reported "out of time".
//! Each backend call is `.cancellable()`: when the nursery is cancelled, the call's future is
//! dropped, its connection closed, and the backend sees its caller hang up (hyper drops the
//! request's future, and the backend's own scope with it).
//!
//! The backends (`BACKENDS`): `search` and `profile` answer after 50 and 100 ms;
//! `reviews` and `recommendations` need 10 s; `ads` fails with `503` (once every backend of
//! the request has it, so that the run shows the cancellation reaching all of them; a real
//! backend fails whenever it likes). Five requests (`CALLS`):
//!
//! 1. `search` and `profile` answer: `200` with both; each backend received the budget the
//!    frontend had left, minus the reserve.
//! 2. `ads` fails: fail-fast, the nursery cancels the other calls ("a sibling task failed"),
//!    `reviews` and `recommendations` see their caller hang up; the client gets `502`.
//! 3. A budget of 1 s: `search` answers, `reviews` is cut by the deadline (at the backend, or
//!    by the frontend dropping the call, whichever comes first); the client gets `200` with
//!    what arrived in time.
//! 4. The client hangs up while the fan-out runs (drop mode *wait*): the server drops the
//!    request's future; the fan-out's children are told ("the nursery's future was dropped")
//!    at their cancellation point, log it, and are adopted by the enclosing nursery, which
//!    waits for them; the backends see their caller hang up.
//! 5. The same with drop mode *abort*: the children are aborted, dropped mid-call without
//!    being told; the backends see their caller hang up all the same.
//!
//! Every line is printed with the time since the request started, by the party that saw it.
//! This runs on real time (sockets cannot run on tokio's paused clock), so the milliseconds
//! vary from run to run; the outcomes do not, nor the order of what each party saw. The
//! example runs on a current-thread runtime, where what the children of an abort-mode
//! nursery see is exact. On a multi-thread runtime (the end-to-end test runs both) the drop
//! cancels the nursery's scope before it aborts the children, so a child that another worker
//! polls in between may see the cancellation first, as in wait mode.

#[cfg(feature = "tower")]
pub use fanout::*;

/// The servers, the client and one request's run (built with the `tower` feature).
#[cfg(feature = "tower")]
mod fanout {
    use std::collections::HashMap;
    use std::fmt;
    use std::io;
    use std::net::SocketAddr;
    use std::pin::pin;
    use std::sync::Arc;
    use std::time::Duration;

    use axum::Router;
    use axum::extract::{Request, State};
    use axum::http::StatusCode;
    use axum::routing::get;
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::watch;
    use tokio::time::Instant;
    use tokio_nursery::{
        BoxError, CancelError, CancellableExt, Cancelled, DeadlineLayer, DropMode,
        IncomingDeadline, JoinError, Nursery, NurseryError, NurseryHandle, PropagateDeadlineLayer,
        fail_after, sleep,
    };
    use tower::{Layer, ServiceExt, service_fn};

    /// What the fan-out keeps of its caller's budget to send its answer.
    pub const RESERVE: Duration = Duration::from_millis(100);

    /// What a backend does with a request.
    #[derive(Clone, Copy, Debug)]
    pub enum Work {
        /// Answers `200` after this long (a cancellation point: its deadline stops it).
        Takes(Duration),
        /// Fails with `503` once every backend of the request has it.
        Fails,
    }

    /// The backends, by name.
    pub const BACKENDS: [(&str, Work); 5] = [
        ("search", Work::Takes(Duration::from_millis(50))),
        ("profile", Work::Takes(Duration::from_millis(100))),
        ("ads", Work::Fails),
        ("reviews", Work::Takes(Duration::from_secs(10))),
        ("recommendations", Work::Takes(Duration::from_secs(10))),
    ];

    /// One request of the client to the frontend.
    #[derive(Clone, Copy, Debug)]
    pub struct Call {
        /// What the run shows.
        pub title: &'static str,
        /// The backends the frontend asks.
        pub backends: &'static [&'static str],
        /// The client's budget, sent in the deadline headers.
        pub budget: Duration,
        /// The client hangs up once every backend has the request.
        pub hangs_up: bool,
        /// The drop mode of the frontend's fan-out nursery.
        pub drop_mode: DropMode,
    }

    const ANSWERS: Call = Call {
        title: "Every backend answers",
        backends: &["search", "profile"],
        budget: Duration::from_secs(5),
        hangs_up: false,
        drop_mode: DropMode::Wait,
    };

    /// The five requests of the example, in order.
    pub const CALLS: [Call; 5] = [
        ANSWERS,
        Call {
            title: "A backend fails: the other calls are cancelled",
            backends: &["ads", "reviews", "recommendations"],
            ..ANSWERS
        },
        Call {
            title: "The caller's deadline (1 s) cuts a slow backend",
            backends: &["search", "reviews"],
            budget: Duration::from_secs(1),
            ..ANSWERS
        },
        Call {
            title: "The client hangs up (drop mode wait)",
            backends: &["reviews", "recommendations"],
            hangs_up: true,
            ..ANSWERS
        },
        Call {
            title: "The client hangs up (drop mode abort)",
            backends: &["reviews", "recommendations"],
            hangs_up: true,
            drop_mode: DropMode::Abort,
            ..ANSWERS
        },
    ];

    impl Call {
        fn path(&self) -> String {
            let drop = match self.drop_mode {
                DropMode::Abort => "abort",
                _ => "wait",
            };
            format!("/page?backends={}&drop={drop}", self.backends.join(","))
        }
    }

    /// What everyone saw, shared by all parties: printed and kept as it happens, and
    /// awaitable (`until`), so that the run can wait for events instead of guessing times.
    #[derive(Clone)]
    struct Log {
        start: Instant,
        state: Arc<watch::Sender<Seen>>,
    }

    #[derive(Default)]
    struct Seen {
        lines: Vec<String>,
        /// The budget (ms) each party read from its request, in order of arrival.
        budgets: Vec<(String, Option<u128>)>,
        /// The backends the request is for.
        expected: &'static [&'static str],
        /// Every expected backend has the request.
        all_in: bool,
        /// Requests, calls and handlers still running.
        in_flight: usize,
    }

    impl Log {
        fn new(expected: &'static [&'static str]) -> Self {
            Log {
                start: Instant::now(),
                state: Arc::new(watch::Sender::new(Seen {
                    expected,
                    ..Seen::default()
                })),
            }
        }

        fn say(&self, who: &str, what: impl fmt::Display) {
            let line = format!("{who}: {what}");
            println!("  [{:>5} ms] {line}", self.start.elapsed().as_millis());
            self.state.send_modify(|seen| seen.lines.push(line));
        }

        /// Waits until `ready` holds.
        async fn until(&self, mut ready: impl FnMut(&Seen) -> bool) {
            let mut seen = self.state.subscribe();
            // The sender lives in `self`: the wait cannot fail.
            let _ = seen.wait_for(|seen| ready(seen)).await;
        }

        /// `who` received a request: counts it in flight and logs its budget.
        fn arrived(&self, who: &'static str, request: &Request, if_dropped: &str) -> InFlight {
            // Counted before it can complete `all_in`: nobody sees every backend in and
            // nothing in flight at once.
            let in_flight = self.in_flight(who, if_dropped);
            let budget = request
                .extensions()
                .get::<IncomingDeadline>()
                .map(|deadline| deadline.budget().as_millis());
            match budget {
                Some(ms) => self.say(who, format!("received a budget of {ms} ms")),
                None => self.say(who, "received no deadline"),
            }
            self.state.send_modify(|seen| {
                seen.budgets.push((who.to_string(), budget));
                seen.all_in = seen
                    .expected
                    .iter()
                    .all(|name| seen.budgets.iter().any(|(who, _)| who == name));
            });
            in_flight
        }

        /// Counts a piece of work in flight until its guard is dropped; a guard dropped
        /// before [`InFlight::done`] logs `if_dropped`.
        fn in_flight(&self, who: &'static str, if_dropped: &str) -> InFlight {
            self.state.send_modify(|seen| seen.in_flight += 1);
            InFlight {
                log: self.clone(),
                who,
                if_dropped: Some(if_dropped.to_string()),
            }
        }
    }

    /// See [`Log::in_flight`].
    struct InFlight {
        log: Log,
        who: &'static str,
        if_dropped: Option<String>,
    }

    impl InFlight {
        fn done(mut self) {
            self.if_dropped = None;
        }
    }

    impl Drop for InFlight {
        fn drop(&mut self) {
            if let Some(what) = self.if_dropped.take() {
                self.log.say(self.who, what);
            }
            self.log.state.send_modify(|seen| seen.in_flight -= 1);
        }
    }

    // --- The backends ---------------------------------------------------------------------

    #[derive(Clone)]
    struct Backend {
        name: &'static str,
        work: Work,
        log: Log,
    }

    /// A backend's handler, in the scope `DeadlineLayer` opened with the caller's deadline.
    async fn backend(State(backend): State<Backend>, request: Request) -> (StatusCode, String) {
        let Backend { name, work, log } = backend;
        let in_flight = log.arrived(
            name,
            &request,
            "the caller hung up: the request was dropped",
        );
        let worked = match work {
            Work::Takes(time) => sleep(time).await,
            Work::Fails => log.until(|seen| seen.all_in).cancellable().await,
        };
        let (status, body) = match (worked, work) {
            (Ok(()), Work::Takes(_)) => (StatusCode::OK, format!("{name} results")),
            (Ok(()), Work::Fails) => (StatusCode::SERVICE_UNAVAILABLE, format!("{name} is down")),
            (Err(cancelled), _) => {
                log.say(name, format!("stopped ({})", cancelled.reason()));
                (StatusCode::GATEWAY_TIMEOUT, cancelled.reason().to_string())
            }
        };
        log.say(name, format!("answers {status}"));
        in_flight.done();
        (status, body)
    }

    // --- The frontend ---------------------------------------------------------------------

    #[derive(Clone)]
    struct Frontend {
        log: Log,
        backends: Arc<[(&'static str, SocketAddr)]>,
    }

    impl Frontend {
        /// The backends and the drop mode a page's query asks for; `None` for an unknown
        /// backend.
        fn parse(&self, query: &str) -> Option<(Vec<(&'static str, SocketAddr)>, DropMode)> {
            let (mut backends, mut drop_mode) = (Vec::new(), DropMode::Wait);
            for (key, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
                match key {
                    "backends" => {
                        for name in value.split(',') {
                            backends.push(*self.backends.iter().find(|(known, _)| *known == name)?);
                        }
                    }
                    "drop" if value == "abort" => drop_mode = DropMode::Abort,
                    _ => {}
                }
            }
            Some((backends, drop_mode))
        }
    }

    /// `/page?backends=a,b&drop=wait|abort`: the fan-out, under the caller's deadline.
    async fn page(State(frontend): State<Frontend>, request: Request) -> (StatusCode, String) {
        let Some((backends, drop_mode)) = frontend.parse(request.uri().query().unwrap_or(""))
        else {
            return (StatusCode::BAD_REQUEST, String::from("unknown backend"));
        };
        let log = &frontend.log;
        let in_flight = log.arrived(
            "frontend",
            &request,
            "the client hung up: the request's future was dropped",
        );
        // The fan-out must be done `RESERVE` before the caller's deadline, to send its answer.
        let answer_by = request
            .extensions()
            .get::<IncomingDeadline>()
            .map(|deadline| {
                let at = deadline.deadline();
                at.checked_sub(RESERVE).unwrap_or(at)
            });
        let (status, body) = fan_out(log, backends, drop_mode, answer_by).await;
        log.say("frontend", format!("answers {status}"));
        in_flight.done();
        (status, body)
    }

    /// Asks every backend at once in a nursery that must be done by `answer_by`.
    async fn fan_out(
        log: &Log,
        backends: Vec<(&'static str, SocketAddr)>,
        drop_mode: DropMode,
        answer_by: Option<Instant>,
    ) -> (StatusCode, String) {
        let names: Vec<&str> = backends.iter().map(|(name, _)| *name).collect();
        log.say("frontend", format!("fans out to {}", names.join(", ")));
        let mut nursery = Nursery::new().name("fan-out").drop_mode(drop_mode);
        if let Some(at) = answer_by {
            nursery = nursery.deadline(at);
        }
        let out = nursery
            .run(|n| async move {
                let mut calls = n.collector::<String>();
                let mut name_of = HashMap::new();
                for (name, addr) in backends {
                    let call = calls.spawn_named(name, call(log.clone(), name, addr));
                    name_of.insert(call.id(), name);
                }
                // Not a cancellation point: every outcome comes, also after a cancellation.
                // Once the deadline has cancelled this scope, a call that ended without a
                // reply comes as this scope's own cancellation (`JoinError::Cancelled`).
                let mut replies = HashMap::new();
                while let Some((id, outcome)) = calls.join_next().await {
                    let reply = match outcome {
                        Ok(reply) => reply,
                        Err(JoinError::Cancelled(_) | JoinError::ChildCancelled) => {
                            String::from("out of time")
                        }
                        Err(other) => other.to_string(),
                    };
                    replies.insert(name_of[&id], reply);
                }
                let page: Vec<String> = names
                    .iter()
                    .map(|name| format!("{name}: {}", replies[name]))
                    .collect();
                Ok::<_, CallError>(page.join("; "))
            })
            .await;
        match out {
            Ok(Some(page)) => (StatusCode::OK, page),
            Ok(None) => (StatusCode::GATEWAY_TIMEOUT, String::from("out of time")),
            Err(NurseryError::Failed(failures)) => {
                let failures: Vec<String> =
                    failures.iter().map(|f| f.error().to_string()).collect();
                (StatusCode::BAD_GATEWAY, failures.join("; "))
            }
            Err(NurseryError::Cancelled(cancelled)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("stopped: {}", cancelled.reason()),
            ),
        }
    }

    /// One backend call, a child of the fan-out: a cancellation point (the call is dropped
    /// when the fan-out is cancelled). A backend's `504` is a late answer, not a failure.
    async fn call(log: Log, name: &'static str, addr: SocketAddr) -> Result<String, CallError> {
        let in_flight = log.in_flight(
            "frontend",
            &format!("the call to {name} was dropped mid-flight"),
        );
        let reply = match fetch(addr, "/work").cancellable().await {
            Ok(Ok((StatusCode::OK, body))) => Ok(body),
            Ok(Ok((StatusCode::GATEWAY_TIMEOUT, _))) => Ok(String::from("out of time")),
            Ok(Ok((status, _))) => Err(CallError::Status(name, status)),
            Ok(Err(error)) => Err(CallError::Unreachable(name, error.to_string())),
            Err(cancelled) => {
                log.say(
                    "frontend",
                    format!("the call to {name} was cancelled ({})", cancelled.reason()),
                );
                Err(cancelled.into())
            }
        };
        if let Ok(reply) = &reply {
            log.say("frontend", format!("{name}: {reply}"));
        }
        in_flight.done();
        reply
    }

    /// How a backend call fails. It carries `Cancelled` so the nursery can tell an echo of a
    /// cancellation from a failure (`CancelError`).
    #[derive(Debug)]
    enum CallError {
        Cancelled(Cancelled),
        Status(&'static str, StatusCode),
        Unreachable(&'static str, String),
    }

    impl From<Cancelled> for CallError {
        fn from(cancelled: Cancelled) -> Self {
            CallError::Cancelled(cancelled)
        }
    }

    impl CancelError for CallError {
        fn as_cancelled(&self) -> Option<&Cancelled> {
            match self {
                CallError::Cancelled(cancelled) => Some(cancelled),
                _ => None,
            }
        }
    }

    impl fmt::Display for CallError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                CallError::Cancelled(cancelled) => cancelled.fmt(f),
                CallError::Status(name, status) => write!(f, "{name} answered {status}"),
                CallError::Unreachable(name, error) => write!(f, "{name} is unreachable: {error}"),
            }
        }
    }

    // --- HTTP plumbing --------------------------------------------------------------------

    /// One HTTP/1 GET on a new connection through `PropagateDeadlineLayer` (the caller's
    /// effective deadline goes into the request's headers). The connection is driven inside
    /// this future: dropping the future closes the socket, and the server sees its caller
    /// hang up.
    async fn fetch(addr: SocketAddr, path: &str) -> Result<(StatusCode, String), BoxError> {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let request =
            hyper::Request::get(format!("http://{addr}{path}")).body(Empty::<Bytes>::new())?;
        let exchange = async move {
            sender.ready().await?;
            let client = PropagateDeadlineLayer::new()
                .layer(service_fn(move |request| sender.send_request(request)));
            let response = client.oneshot(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>((status, String::from_utf8_lossy(&body).into_owned()))
        }; // drops `sender` when done, which ends the connection
        let (answer, _) = tokio::join!(exchange, connection);
        answer
    }

    /// Serves `app` on `listener` until the current scope is cancelled. Each connection is a
    /// child of `n`: the scope `DeadlineLayer` opens per request, and the nurseries in it,
    /// sit under `n`'s scope, and `n` adopts what a dropped request leaves behind (drop mode
    /// wait).
    async fn serve(
        listener: TcpListener,
        app: Router,
        n: NurseryHandle<io::Error>,
    ) -> io::Result<()> {
        loop {
            let (stream, _) = listener.accept().cancellable().await??;
            let app = app.clone();
            n.spawn(async move {
                let service =
                    hyper::service::service_fn(move |request| app.clone().oneshot(request));
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let mut connection = pin!(connection);
                if connection.as_mut().cancellable().await.is_err() {
                    // Shutting down: finish the request in flight, then close.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
                // A client that hangs up ends its connection with an error: not the server's.
                Ok(())
            });
        }
    }

    // --- One run ----------------------------------------------------------------------------

    /// One request's outcome.
    #[derive(Debug)]
    pub struct Outcome {
        /// The client's view: the status and body, or that it hung up.
        pub client: Result<(StatusCode, String), String>,
        /// The budget (ms) each party read from its request, in order of arrival.
        pub budgets: Vec<(String, Option<u128>)>,
        /// Every party's lines (`who: what`), in order.
        pub lines: Vec<String>,
    }

    /// Starts the backends and the frontend on loopback in a nursery, makes `call` from the
    /// client, waits until every request, call and handler has ended, stops the servers and
    /// reports.
    pub async fn run(call: Call) -> io::Result<Outcome> {
        let log = Log::new(call.backends);
        let out = Nursery::new()
            .name("fan-out demo")
            .run(|n| {
                let log = log.clone();
                async move {
                    let mut backends = Vec::new();
                    for (name, work) in BACKENDS {
                        let app = Router::new()
                            .route("/work", get(backend))
                            .with_state(Backend {
                                name,
                                work,
                                log: log.clone(),
                            });
                        backends.push((name, start(&n, app).await?));
                    }
                    let app = Router::new()
                        .route("/page", get(page))
                        .with_state(Frontend {
                            log: log.clone(),
                            backends: backends.into(),
                        });
                    let frontend = start(&n, app).await?;
                    let client = client(&log, frontend, call).await;
                    log.until(|seen| seen.in_flight == 0).await;
                    n.cancel(); // the servers stop accepting and close their connections
                    Ok::<_, io::Error>(client)
                }
            })
            .await;
        let client = match out {
            Ok(Some(client)) => client,
            Ok(None) => return Err(io::Error::other("the servers were cancelled")),
            Err(error) => return Err(io::Error::other(error.to_string())),
        };
        let seen = log.state.borrow();
        Ok(Outcome {
            client,
            budgets: seen.budgets.clone(),
            lines: seen.lines.clone(),
        })
    }

    /// Serves `app` (behind `DeadlineLayer`) on a new loopback listener, a child of `n`.
    async fn start(n: &NurseryHandle<io::Error>, app: Router) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        n.spawn(serve(listener, app.layer(DeadlineLayer::new()), n.clone()));
        Ok(addr)
    }

    /// The client: the call with its budget; if it hangs up, it does so once every backend
    /// has the request.
    async fn client(
        log: &Log,
        frontend: SocketAddr,
        call: Call,
    ) -> Result<(StatusCode, String), String> {
        let path = call.path();
        log.say(
            "client",
            format!("GET {path} with a budget of {} ms", call.budget.as_millis()),
        );
        // The budget goes into the headers; the call itself is not a cancellation point, so
        // the client waits for the frontend's answer.
        let request = fail_after(call.budget, fetch(frontend, &path));
        let answer = if call.hangs_up {
            // Pinned out here, so the request (and its connection) is dropped after the
            // client said it hangs up: `select!` drops its own futures before running the
            // branch, which would let the frontend see the hang-up first.
            let mut request = std::pin::pin!(request);
            tokio::select! {
                answer = &mut request => answer,
                () = log.until(|seen| seen.all_in) => {
                    log.say("client", "hangs up (every backend has the request)");
                    return Err(String::from("hung up"));
                }
            }
        } else {
            request.await
        };
        let answer = answer.map_err(|error| error.to_string());
        match &answer {
            Ok((status, body)) => log.say("client", format!("{status}: {body}")),
            Err(error) => log.say("client", error),
        }
        answer
    }
}

#[cfg(feature = "tower")]
#[allow(dead_code)] // the end-to-end test includes this file for `run`
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    for (number, call) in (1..).zip(CALLS) {
        println!("{number}. {}", call.title);
        run(call).await?;
        println!();
    }
    Ok(())
}

#[cfg(not(feature = "tower"))]
fn main() {
    eprintln!(
        "fanout_server needs the `tower` feature: cargo run --example fanout_server --features tower"
    );
    std::process::exit(2);
}
