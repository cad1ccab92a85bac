//! tower layers for deadlines across processes (SPEC D1): [`DeadlineLayer`] runs each
//! incoming request in a cancel scope with the caller's deadline, read from its headers;
//! [`PropagateDeadlineLayer`] writes the effective deadline into outgoing requests.
//!
//! Together they carry a deadline through a chain of services: a client with 2 s left calls
//! service A, whose handler (and every child of a nursery it opens) runs under those 2 s;
//! A's calls to B carry what is left of them, and so on.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use pin_project::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::cancelled::Cancelled;
use crate::headers::{DeadlineHeaders, DeadlinePassed};
use crate::scope::{CancelScope, ScopeHandle, Scoped};

/// The error type of [`PropagateDeadline`], as in tower's own middleware.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// A tower [`Layer`] that runs each request's handling in a cancel scope with the caller's
/// deadline (SPEC D1), read from `grpc-timeout` / `x-request-timeout-ms`
/// ([`DeadlineHeaders`]).
///
/// Per request:
///
/// - **No deadline header**: the inner service runs as is (in whatever scope polls it).
/// - **A deadline**: the inner service is called, and its future runs, in a new scope with
///   that deadline, so its `call` (a proxy's [`PropagateDeadlineLayer`] forwarding the
///   deadline), its cancellation points, [`current_deadline`](crate::current_deadline) and
///   every nursery it opens see it. The call is made at the response future's first poll,
///   with the service that was ready (a clone takes its place, as tower's services that
///   call their inner service from their future do: hence `S: Clone`); the [`IncomingDeadline`](crate::IncomingDeadline) is also in
///   the request's extensions. The scope is a child of the scope polling the service (e.g.
///   a connection task spawned into a server's nursery by
///   [`NurseryExecutor`](crate::NurseryExecutor)), so a server shutdown reaches it too.
/// - **The deadline passes** while the handler runs, by default (cooperative delivery):
///   the handler is told at its cancellation points and its response is returned as it
///   makes it (map its `Cancelled` to what the caller should see, e.g. `504`). With
///   [`hard`](Self::hard): the handler's future is dropped at the deadline (its nurseries
///   follow their drop mode) and the response is `504 Gateway Timeout` (also when an
///   enclosing scope's deadline passes at the same instant); if an enclosing scope is
///   cancelled before the request's deadline (a shutdown, even one by a deadline of the
///   server's), `503 Service Unavailable`. "Before" is decided by when that scope was
///   cancelled (its deadline's own instant, not the timer tick that fired it), however
///   late the request's future is polled again, against the request scope's deadline as
///   it stands then (a handler that moved its own deadline later, or removed it, and is
///   cut by a shutdown past the deadline it came with gets `503`).
/// - **No time left** (a `0` budget): `504 Gateway Timeout` at once; the handler is not
///   called.
/// - **A malformed header** (garbage, negative, too long, unknown unit, not ASCII):
///   `400 Bad Request`; the handler is not called.
///
/// For gRPC requests (`content-type: application/grpc...`) these responses are gRPC
/// trailers-only responses instead: HTTP `200` with `grpc-status` `4` (DEADLINE_EXCEEDED),
/// `14` (UNAVAILABLE) or `3` (INVALID_ARGUMENT). Response bodies are `B::default()`.
///
/// A request future dropped by the server (the client went away) ends the scope and drops
/// the handler's future: nurseries in it follow their drop mode (SPEC D1, N8, N9).
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use http::{Request, Response};
/// use tower::{service_fn, Layer, ServiceExt};
/// use tokio_nursery::{current_deadline, DeadlineLayer, EffectiveDeadline};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let service = DeadlineLayer::new().layer(service_fn(|_request: Request<()>| async {
///     // The handler runs under the caller's deadline.
///     let left = current_deadline().remaining().unwrap();
///     Ok::<_, Infallible>(Response::new(format!("{} ms left", left.as_millis())))
/// }));
/// let request = Request::builder()
///     .header("x-request-timeout-ms", "800")
///     .body(())
///     .unwrap();
/// let response = service.oneshot(request).await.unwrap();
/// assert_eq!(response.body(), "800 ms left");
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct DeadlineLayer {
    config: Arc<Config>,
}

#[derive(Debug, Default)]
struct Config {
    headers: DeadlineHeaders,
    hard: bool,
}

impl DeadlineLayer {
    /// Reads both headers with the default cap ([`DeadlineHeaders::new`]); cooperative.
    pub fn new() -> Self {
        Self::default()
    }

    /// Which headers to read, their names and the cap.
    pub fn headers(self, headers: DeadlineHeaders) -> Self {
        DeadlineLayer {
            config: Arc::new(Config {
                headers,
                hard: self.config.hard,
            }),
        }
    }

    /// Hard delivery: at the deadline the handler's future is dropped (after one more
    /// poll, SPEC S12) and the response is `504 Gateway Timeout`. Use it for handlers that
    /// are cancel-safe; nurseries inside follow their drop mode.
    pub fn hard(self) -> Self {
        DeadlineLayer {
            config: Arc::new(Config {
                headers: self.config.headers.clone(),
                hard: true,
            }),
        }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> DeadlineService<S> {
        DeadlineService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub struct DeadlineService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> DeadlineService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for DeadlineService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = DeadlineFuture<S, Request<ReqBody>, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let grpc = is_grpc(request.headers());
        let incoming = match self.config.headers.read(request.headers()) {
            Ok(incoming) => incoming,
            Err(error) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(%error, "request rejected: malformed deadline header");
                return DeadlineFuture::refused(Refusal::Malformed(error.to_string()), grpc);
            }
        };
        let Some(incoming) = incoming else {
            return DeadlineFuture {
                state: State::Plain {
                    future: self.inner.call(request),
                },
            };
        };
        if incoming.has_passed() {
            return DeadlineFuture::refused(Refusal::TimedOut, grpc);
        }
        request.extensions_mut().insert(incoming);
        let scope = CancelScope::new().with_deadline(incoming.deadline());
        let scope = if self.config.hard {
            scope.hard()
        } else {
            scope
        };
        let handle = scope.handle();
        // The service that was made ready is the one called; a clone waits for the next.
        let ready = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, ready);
        let future = scope.run(CallInScope::Ready {
            service: Some(service),
            request: Some(request),
        });
        DeadlineFuture {
            state: State::Scoped {
                future,
                grpc,
                handle,
            },
        }
    }
}

/// Whether a request is gRPC (its response must then be a gRPC status): its content type is
/// `application/grpc`, maybe with a `+format` or `;parameters` (not `application/grpcfoo`).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|value| {
        value
            .as_bytes()
            .strip_prefix(b"application/grpc")
            .is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')))
    })
}

/// Why [`DeadlineService`] answered instead of its inner service.
#[derive(Clone, Debug)]
enum Refusal {
    TimedOut,
    Shutdown,
    Malformed(String),
}

impl Refusal {
    fn response<B: Default>(&self, grpc: bool) -> Response<B> {
        let (status, code, message) = match self {
            Refusal::TimedOut => (StatusCode::GATEWAY_TIMEOUT, "4", "deadline exceeded"),
            Refusal::Shutdown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "14",
                "the server cancelled the request",
            ),
            Refusal::Malformed(message) => (StatusCode::BAD_REQUEST, "3", message.as_str()),
        };
        let mut response = Response::new(B::default());
        if grpc {
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", HeaderValue::from_static(code));
            if let Ok(message) = HeaderValue::from_str(&grpc_percent_encode(message)) {
                headers.insert("grpc-message", message);
            }
        } else {
            *response.status_mut() = status;
        }
        response
    }
}

/// `message` as gRPC's `grpc-message` carries it: UTF-8, with `%` and every byte outside
/// printable ASCII percent-encoded (the gRPC HTTP/2 protocol's Percent-Encoded).
fn grpc_percent_encode(message: &str) -> String {
    use std::fmt::Write;
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        match byte {
            b' '..=b'~' if byte != b'%' => encoded.push(char::from(byte)),
            _ => write!(encoded, "%{byte:02X}").expect("writing to a String"),
        }
    }
    encoded
}

/// The future of [`DeadlineService`] wrapping `S`, for requests `Req`.
#[pin_project]
#[must_use = "futures do nothing unless polled"]
pub struct DeadlineFuture<S: Service<Req>, Req, B> {
    #[pin]
    state: State<S, Req, B>,
}

#[pin_project(project = StateProj)]
enum State<S: Service<Req>, Req, B> {
    Refused {
        refusal: Refusal,
        grpc: bool,
        body: std::marker::PhantomData<fn() -> B>,
    },
    Plain {
        #[pin]
        future: S::Future,
    },
    Scoped {
        #[pin]
        future: Scoped<CallInScope<S, Req>>,
        grpc: bool,
        /// The request's scope: its deadline (as the handler may have moved it), which
        /// enclosing scope cut it, and when.
        handle: ScopeHandle,
    },
}

impl<S: Service<Req>, Req, B> DeadlineFuture<S, Req, B> {
    fn refused(refusal: Refusal, grpc: bool) -> Self {
        DeadlineFuture {
            state: State::Refused {
                refusal,
                grpc,
                body: std::marker::PhantomData,
            },
        }
    }
}

impl<S, Req, B> Future for DeadlineFuture<S, Req, B>
where
    S: Service<Req, Response = Response<B>>,
    B: Default,
{
    type Output = Result<Response<B>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Refused { refusal, grpc, .. } => Poll::Ready(Ok(refusal.response(*grpc))),
            StateProj::Plain { future } => future.poll(cx),
            StateProj::Scoped {
                future,
                grpc,
                handle,
            } => future.poll(cx).map(|out| match out {
                Ok(Some(out)) => out,
                // Only a hard scope absorbs: its own deadline dropped the handler.
                Ok(None) => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!("request cut at its deadline");
                    Ok(Refusal::TimedOut.response(*grpc))
                }
                // An enclosing scope's cancellation, passed on. The request's own deadline
                // may have passed with it (an enclosing deadline at the same instant: the
                // outermost of scopes expiring together absorbs, S9): out of time all the
                // same. Otherwise the server cut it (a shutdown, even one by deadline).
                // Decided by when the enclosing scope was cancelled (a deadline's own
                // instant, not the tick that fired it; not the clock at this poll) against
                // the request's deadline as it stands (the handler may have moved it, or
                // removed it: then any cut is the server's).
                Err(_cancelled) => {
                    let cut_at = handle
                        .node
                        .inherited_cut_at()
                        .map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std);
                    if handle.deadline().is_some_and(|deadline| cut_at >= deadline) {
                        Ok(Refusal::TimedOut.response(*grpc))
                    } else {
                        Ok(Refusal::Shutdown.response(*grpc))
                    }
                }
            }),
        }
    }
}

impl<S: Service<Req>, Req, B> fmt::Debug for DeadlineFuture<S, Req, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineFuture").finish_non_exhaustive()
    }
}

/// The handler's future as a scope body: its output is the value, never a `Cancelled`.
/// Calls the inner service at its first poll, so inside the request's scope, then runs
/// its future; its output as a scope body's (the scope adds no error of its own).
#[pin_project(project = CallProj)]
enum CallInScope<S: Service<Req>, Req> {
    Ready {
        service: Option<S>,
        request: Option<Req>,
    },
    Called {
        #[pin]
        future: S::Future,
    },
}

impl<S: Service<Req>, Req> Future for CallInScope<S, Req> {
    type Output = Result<Result<S::Response, S::Error>, Cancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let CallProj::Ready { service, request } = self.as_mut().project() {
            let (Some(mut service), Some(request)) = (service.take(), request.take()) else {
                panic!("a DeadlineService call polled after it panicked");
            };
            let future = service.call(request);
            self.set(CallInScope::Called { future });
        }
        match self.project() {
            CallProj::Called { future } => future.poll(cx).map(Ok),
            CallProj::Ready { .. } => unreachable!("called above"),
        }
    }
}

/// A tower [`Layer`] for clients: writes the effective deadline of the code calling the
/// service ([`current_deadline`](crate::current_deadline), read when `call` is called)
/// into each request's headers (SPEC D1). Under a deadline, a tighter budget the request
/// already carries (a per-call timeout set by hand) is kept, written into every enabled
/// header: the callee never gets more time than either allows; without a deadline the
/// headers are removed ([`DeadlineHeaders::write_current`]). When the deadline has passed
/// the request is not
/// sent: the call fails at once with [`DeadlinePassed`] (boxed; a scope recognises the
/// cancellation inside it, see [`DeadlinePassed`]).
///
/// The response future is not a cancellation point: to stop waiting for the response when
/// the deadline passes, make it one with [`cancellable`](crate::CancellableExt::cancellable)
/// (which drops the request future) or race it against [`cancelled`](crate::cancelled).
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use http::{Request, Response};
/// use tower::{service_fn, Layer, ServiceExt};
/// use tokio_nursery::{move_on_after, Cancelled, PropagateDeadlineLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// // A stand-in for an HTTP client: echoes the header it was sent.
/// let client = PropagateDeadlineLayer::new().layer(service_fn(|request: Request<()>| async move {
///     let sent = request.headers()["grpc-timeout"].to_str().unwrap().to_string();
///     Ok::<_, Infallible>(Response::new(sent))
/// }));
/// move_on_after(Duration::from_secs(3), async move {
///     let response = client.oneshot(Request::new(())).await.unwrap();
///     assert_eq!(response.body(), "3000000u");
///     Ok::<_, Cancelled>(())
/// })
/// .await
/// .unwrap();
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct PropagateDeadlineLayer {
    headers: DeadlineHeaders,
}

impl PropagateDeadlineLayer {
    /// Writes both headers ([`DeadlineHeaders::new`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Which headers to write and their names.
    pub fn headers(self, headers: DeadlineHeaders) -> Self {
        PropagateDeadlineLayer { headers }
    }
}

impl<S> Layer<S> for PropagateDeadlineLayer {
    type Service = PropagateDeadline<S>;

    fn layer(&self, inner: S) -> PropagateDeadline<S> {
        PropagateDeadline {
            inner,
            headers: self.headers.clone(),
        }
    }
}

/// The service made by [`PropagateDeadlineLayer`].
#[derive(Clone, Debug)]
pub struct PropagateDeadline<S> {
    inner: S,
    headers: DeadlineHeaders,
}

impl<S> PropagateDeadline<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, B> Service<Request<B>> for PropagateDeadline<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = PropagateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match self.headers.write_current(request.headers_mut()) {
            Ok(_) => PropagateFuture {
                state: Propagate::Sent {
                    future: self.inner.call(request),
                },
            },
            Err(passed) => PropagateFuture {
                state: Propagate::NotSent { passed },
            },
        }
    }
}

/// The future of [`PropagateDeadline`].
#[pin_project]
#[must_use = "futures do nothing unless polled"]
pub struct PropagateFuture<F> {
    #[pin]
    state: Propagate<F>,
}

#[pin_project(project = PropagateProj)]
enum Propagate<F> {
    Sent {
        #[pin]
        future: F,
    },
    NotSent {
        passed: DeadlinePassed,
    },
}

impl<F, T, E> Future for PropagateFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            PropagateProj::Sent { future } => future.poll(cx).map_err(Into::into),
            PropagateProj::NotSent { passed } => Poll::Ready(Err(Box::new(passed.clone()))),
        }
    }
}

impl<F> fmt::Debug for PropagateFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PropagateFuture").finish_non_exhaustive()
    }
}
