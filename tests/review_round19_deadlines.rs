#![cfg(all(feature = "http", feature = "tower"))]
//! Review round 19 (a helper's review of deadlines across services): the hard
//! `DeadlineLayer` tells an enclosing cancellation from the request's own deadline by when
//! the earliest enclosing scope was cancelled, and `TimedOut` names a timeout only when the
//! deadline that fired is the one the timeout set. Each test failed before its fix, except
//! `r19b_timed_out_display_names_the_timeout_it_was_given`, which keeps the first-poll case
//! of the second fix.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use common::nursery::{HOUR, no_hang};
use http::{HeaderMap, Request, Response, StatusCode};
use tokio::time::Instant;
use tokio_nursery::*;
use tower::{Layer, ServiceExt, service_fn};

fn request_with(headers: &[(&str, &str)]) -> Request<()> {
    let mut request = Request::new(());
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    request
}

/// A hard `DeadlineLayer` around a handler that takes an hour.
fn hard_layer_around_a_hanging_handler()
-> impl tower::Service<Request<()>, Response = Response<String>, Error: std::fmt::Debug> {
    DeadlineLayer::new()
        .hard()
        .layer(service_fn(|_: Request<()>| async {
            tokio::time::sleep(HOUR).await;
            Ok::<_, Infallible>(Response::new(String::new()))
        }))
}

/// The `TimedOut` inside a fail scope's `io::Error`.
fn timed_out(out: Result<(), std::io::Error>) -> Box<TimedOut> {
    out.unwrap_err()
        .into_inner()
        .expect("wraps TimedOut")
        .downcast::<TimedOut>()
        .expect("a TimedOut")
}

/// Sends `service` a request with a 250 ms budget and returns the answer.
async fn answer_to_a_250ms_request<S>(service: S) -> Response<String>
where
    S: tower::Service<Request<()>, Response = Response<String>, Error: std::fmt::Debug>,
{
    service
        .oneshot(request_with(&[("grpc-timeout", "250m")]))
        .await
        .unwrap()
}

/// The layer's docs: "if an enclosing scope is cancelled before the request's deadline (a
/// shutdown, even one by a deadline of the server's), `503 Service Unavailable`". Here the
/// server's deadline (249.5 ms) passes half a millisecond before the request's (250 ms):
/// the server cut the request, 503 expected. The timer's 1 ms resolution fires both in the
/// same tick, and the layer, comparing the clock with the request's deadline, answers 504.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r19b_enclosing_deadline_just_before_the_requests_in_the_same_ms_is_503() {
    let service = hard_layer_around_a_hanging_handler();
    let out = no_hang(move_on_after(Duration::from_micros(249_500), async {
        Ok::<_, Cancelled>(answer_to_a_250ms_request(service).await)
    }))
    .await;
    let response = out.unwrap().expect("the layer answered");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// `fail_after(20 ms)` whose deadline the body moved to 50 ms: the scope timed out at 50 ms
/// (`TimedOut::deadline` says so), but the error's `Display` still says "timed out after
/// 20ms", the timeout it was first given.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r19b_timed_out_display_after_the_deadline_was_moved() {
    let start = Instant::now();
    let out: Result<(), std::io::Error> = fail_after(Duration::from_millis(20), async {
        let scope = current_scope().expect("in the fail scope");
        scope.set_deadline(Some(start + Duration::from_millis(50)));
        sleep(HOUR).await?;
        Ok(())
    })
    .await;
    let error = timed_out(out);
    assert_eq!(start.elapsed(), Duration::from_millis(50));
    assert_eq!(error.deadline(), Some(start + Duration::from_millis(50)));
    assert_ne!(error.to_string(), "timed out after 20ms", "{error}");
}

/// The same rule with an explicit shutdown: the server cancels at 40 ms, long before the
/// request's deadline (250 ms), so the docs promise 503. The request's future is next
/// polled at 300 ms (its caller was busy in a plain tokio sleep, not a cancellation point),
/// and the layer, asking the clock at that poll whether the request's deadline has passed,
/// answers 504 Gateway Timeout.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r19b_shutdown_before_the_requests_deadline_is_503_whenever_it_is_polled() {
    let service = hard_layer_around_a_hanging_handler();
    let server = CancelScope::new();
    let shutdown = server.handle();
    common::nursery::at(Instant::now() + Duration::from_millis(40), move || {
        shutdown.cancel_with("shutting down")
    });
    let out = no_hang(server.run(async {
        let mut call = std::pin::pin!(service.oneshot(request_with(&[("grpc-timeout", "250m")])));
        assert!(
            futures::poll!(call.as_mut()).is_pending(),
            "the handler runs"
        );
        tokio::time::sleep(Duration::from_millis(300)).await; // busy elsewhere
        Ok::<_, Cancelled>(call.await.unwrap())
    }))
    .await;
    let response = out.unwrap().expect("the layer answered");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// The fix above keeps "after {timeout}" when the deadline was not moved, also when the
/// body linked its scope and met the deadline within its first poll.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r19b_timed_out_display_names_the_timeout_it_was_given() {
    for linked in [false, true] {
        let out: Result<(), std::io::Error> = fail_after(Duration::from_millis(0), async {
            if linked {
                current_scope().expect("in the fail scope");
            }
            checkpoint().await?;
            Ok(())
        })
        .await;
        let error = out.unwrap_err();
        assert!(
            error.to_string().starts_with("timed out after"),
            "linked {linked}: {error}"
        );
    }
    let out: Result<(), std::io::Error> = fail_after(Duration::from_millis(20), async {
        current_scope().expect("in the fail scope");
        sleep(HOUR).await?;
        Ok(())
    })
    .await;
    assert_eq!(out.unwrap_err().to_string(), "timed out after 20ms");
}

/// Review round 19, second review (as the two below): an inner enclosing scope (`inner`) is cancelled at 40 ms, long before the request's
/// deadline (250 ms): the docs promise 503 "however late the request's future is polled
/// again" (and without the outer scope's later cancellation, this test answers 503). The
/// server's outer scope is cancelled too, at 260 ms, after the request's deadline: the
/// layer reads only the outermost cancelled scope (`Node::origin`), so it answers 504.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r19c_inner_shutdown_before_the_deadline_is_503_even_if_an_outer_scope_is_cancelled_later()
{
    for outer_cancelled in [false, true] {
        let start = Instant::now();
        let service = hard_layer_around_a_hanging_handler();
        let server = CancelScope::new();
        let inner = CancelScope::new();
        let (server_handle, inner_handle) = (server.handle(), inner.handle());
        common::nursery::at(start + Duration::from_millis(40), move || {
            inner_handle.cancel_with("this part of the server shuts down")
        });
        if outer_cancelled {
            common::nursery::at(start + Duration::from_millis(260), move || {
                server_handle.cancel_with("the whole server shuts down")
            });
        }
        let out = no_hang(server.run(async {
            let out = inner
                .run(async {
                    let mut call =
                        std::pin::pin!(service.oneshot(request_with(&[("grpc-timeout", "250m")])));
                    assert!(futures::poll!(call.as_mut()).is_pending());
                    tokio::time::sleep(Duration::from_millis(300)).await; // busy elsewhere
                    Ok::<_, Cancelled>(call.await.unwrap())
                })
                .await;
            // A plain future: the inner scope's value, or `Cancelled` passed on.
            out.map(|out| out.expect("the inner scope's body returned"))
        }))
        .await;
        let response = match out {
            Ok(Some(response)) => response,
            other => panic!("outer_cancelled {outer_cancelled}: {other:?}"),
        };
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "outer_cancelled {outer_cancelled}"
        );
    }
}

/// The server's scope and the request share one deadline (250 ms): the docs promise 504
/// ("also when an enclosing scope's deadline passes at the same instant"). The handler
/// writes the deadline into an outgoing request's headers with less than a millisecond
/// left: `write_current` expires the 250 ms deadline there and then, in both scopes. The
/// server's scope records the clock (249.5 ms) as when it was cancelled, not the
/// deadline's instant, and the layer, reading it, answers 503.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r19c_shared_deadline_expired_early_by_write_current_is_504() {
    let start = Instant::now();
    let service = DeadlineLayer::new()
        .hard()
        .layer(service_fn(move |_: Request<()>| async move {
            tokio::time::sleep_until(start + Duration::from_millis(249)).await;
            tokio::time::advance(Duration::from_micros(500)).await; // the timer's ticks are 1 ms
            assert_eq!(start.elapsed(), Duration::from_micros(249_500));
            let mut headers = HeaderMap::new();
            let written = DeadlineHeaders::new().write_current(&mut headers);
            assert!(written.is_err(), "under a millisecond left: {written:?}");
            tokio::time::sleep(HOUR).await; // the hard scope drops it at its next poll
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    let server = CancelScope::new().with_deadline(start + Duration::from_millis(250));
    let out =
        no_hang(server.run(async { Ok::<_, Cancelled>(answer_to_a_250ms_request(service).await) }))
            .await;
    let response = out.unwrap().expect("the layer answered");
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
}

/// A guard tightens the fail scope's deadline to 8 ms and restores the 20 ms one on its
/// way out (as RAII guards do, on the `?` path too). The scope timed out at 8 ms, but its
/// deadline reads 20 ms again by the time the error is made, so the error says "timed out
/// after 20ms" (and `deadline()` says 20 ms).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r19c_timed_out_after_a_deadline_moved_then_moved_back() {
    struct Restore(ScopeHandle, Option<Instant>);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.set_deadline(self.1);
        }
    }
    let start = Instant::now();
    let out: Result<(), std::io::Error> = fail_after(Duration::from_millis(20), async {
        let scope = current_scope().expect("in the fail scope");
        let _restore = Restore(scope.clone(), scope.deadline());
        scope.set_deadline(Some(start + Duration::from_millis(8)));
        sleep(HOUR).await?;
        Ok(())
    })
    .await;
    assert_eq!(start.elapsed(), Duration::from_millis(8));
    let error = timed_out(out);
    assert_ne!(error.to_string(), "timed out after 20ms", "{error}");
    assert_eq!(error.timeout(), None);
}

/// `fail_after(10ms)` whose body waits past its deadline on a future that is not a
/// cancellation point, then asks for its scope (the helper scope's node is made only now,
/// at 20 ms, after its deadline passed) and meets a cancellation point. It timed out by its
/// own 10 ms timeout, which the body never moved. Was (a third review, of the fixes above):
/// `Node::enter` recorded a deadline already past at entry as cancelled at the clock (20 ms),
/// not at the deadline's instant, and `TimedOut` dropped the timeout ("the scope's deadline
/// passed"). The node is now cancelled at its deadline's instant before it is entered.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r19e_timed_out_names_its_timeout_when_the_node_is_made_after_the_deadline() {
    let start = Instant::now();
    let out: Result<(), std::io::Error> = fail_after(Duration::from_millis(10), async {
        tokio::time::sleep(Duration::from_millis(20)).await; // not a cancellation point
        let scope = current_scope().expect("in the fail scope"); // the node is made here
        assert_eq!(scope.deadline(), Some(start + Duration::from_millis(10)));
        sleep(HOUR).await?;
        Ok(())
    })
    .await;
    assert_eq!(start.elapsed(), Duration::from_millis(20));
    let error = timed_out(out);
    assert_eq!(error.timeout(), Some(Duration::from_millis(10)), "{error}");
    assert_eq!(error.to_string(), "timed out after 10ms");
}

/// Session 20: the handler gives itself more time (its scope's deadline moved from 250 ms
/// to an hour later, or removed), and the server shuts down at 300 ms, past the deadline the
/// request came with but before the one it runs under: the server cut it, 503. The layer
/// compared the cut with the deadline of the incoming headers and answered 504.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn r20_shutdown_after_the_handler_moved_its_deadline_later_is_503() {
    for removed in [false, true] {
        let start = Instant::now();
        let service =
            DeadlineLayer::new()
                .hard()
                .layer(service_fn(move |_: Request<()>| async move {
                    let scope = current_scope().expect("the request's scope");
                    scope.set_deadline((!removed).then(|| start + HOUR));
                    tokio::time::sleep(HOUR).await;
                    Ok::<_, Infallible>(Response::new(String::new()))
                }));
        let server = CancelScope::new();
        let shutdown = server.handle();
        common::nursery::at(start + Duration::from_millis(300), move || {
            shutdown.cancel_with("shutting down")
        });
        let out = no_hang(
            server.run(async { Ok::<_, Cancelled>(answer_to_a_250ms_request(service).await) }),
        )
        .await;
        let response = out.unwrap().expect("the layer answered");
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "removed {removed}"
        );
    }
}
