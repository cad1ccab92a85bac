#![cfg(all(
    feature = "http",
    feature = "tower",
    feature = "hyper",
    feature = "tokio-util"
))]
//! SPEC S14 (the crate at the edges: tokens, shutdown hooks, an executor for hyper) and D1
//! (deadlines across processes: the wire formats and the tower layers).
//!
//! Deadline logic runs on tokio's paused clock (exact). Tests over real loopback sockets
//! (hyper, axum) use real time: deadlines far above loopback latency, assertions on outcomes
//! and order, and only a hang bound on time.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::nursery::{HOUR, Log, OnDrop, at, catch, code, explode, ms, no_hang, secs, since};
use common::settle_tasks;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_nursery::*;
use tokio_util::sync::CancellationToken;
use tower::{Layer, ServiceExt, service_fn};

/// The hang bound of the loopback tests (real time).
const SOCKET_HANG_BOUND: Duration = Duration::from_secs(30);

async fn within_socket_bound<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(SOCKET_HANG_BOUND, test)
        .await
        .expect("hang: the loopback test did not finish within 30 s")
}

fn request_with(headers: &[(&str, &str)]) -> Request<()> {
    let mut request = Request::new(());
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    request
}

fn map(headers: &[(&str, &[u8])]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    map
}

fn grpc(remaining: Duration) -> Option<String> {
    GrpcTimeout::from_remaining(remaining).map(|t| t.to_string())
}

// ---------------------------------------------------------------------------------------
// D1: the grpc-timeout wire format
// ---------------------------------------------------------------------------------------
// The plain `#[test]`s of the wire formats (here, and the properties below) run no runtime:
// no task to count, hence no leak check (SPEC R3).

#[test]
fn d01_grpc_timeout_is_written_with_the_finest_unit_that_fits_in_8_digits() {
    let cases: &[(Duration, &str)] = &[
        (Duration::from_nanos(1), "1n"),
        (Duration::from_nanos(99_999_999), "99999999n"),
        (Duration::from_nanos(100_000_000), "100000u"),
        (Duration::from_millis(1500), "1500000u"),
        (Duration::from_micros(99_999_999), "99999999u"),
        (Duration::from_secs(100), "100000m"),
        (Duration::from_millis(99_999_999), "99999999m"),
        (Duration::from_secs(100_000), "100000S"),
        (Duration::from_secs(99_999_999), "99999999S"),
        (Duration::from_secs(100_000_000), "1666666M"),
        (Duration::from_secs(99_999_999 * 60), "99999999M"),
        (Duration::from_secs(100_000_000 * 60), "1666666H"),
        (Duration::from_secs(99_999_999 * 3600), "99999999H"),
        (Duration::MAX, "99999999H"),
    ];
    for (remaining, expected) in cases {
        assert_eq!(
            grpc(*remaining).as_deref(),
            Some(*expected),
            "{remaining:?}"
        );
    }
}

#[test]
fn d01_grpc_timeout_rounds_down_so_the_callee_never_gets_more_time() {
    // 1.5 s and one nanosecond: microseconds, the extra nanosecond dropped.
    assert_eq!(
        grpc(Duration::new(1, 500_000_001)).as_deref(),
        Some("1500000u")
    );
    // 100 s minus a nanosecond: microseconds, rounded down.
    assert_eq!(
        grpc(Duration::from_secs(100) - Duration::from_nanos(1)).as_deref(),
        Some("99999999u")
    );
    // Nothing left: nothing to send.
    assert_eq!(grpc(Duration::ZERO), None);
}

#[test]
fn d01_grpc_timeout_reads_every_unit() {
    let cases: &[(&str, Duration)] = &[
        ("1H", Duration::from_secs(3600)),
        ("2M", Duration::from_secs(120)),
        ("3S", Duration::from_secs(3)),
        ("4m", Duration::from_millis(4)),
        ("5u", Duration::from_micros(5)),
        ("6n", Duration::from_nanos(6)),
        ("00000007S", Duration::from_secs(7)),
        (" 8S\t", Duration::from_secs(8)),
        ("0n", Duration::ZERO),
        ("99999999H", Duration::from_secs(99_999_999 * 3600)),
    ];
    for (text, expected) in cases {
        let parsed = GrpcTimeout::parse(text.as_bytes()).unwrap();
        assert_eq!(parsed.duration(), *expected, "{text:?}");
    }
}

#[test]
fn d01_grpc_timeout_rejects_malformed_and_hostile_values() {
    use MalformedTimeout::*;
    let absurd = vec![b'9'; 100_000];
    let cases: &[(&[u8], MalformedTimeout)] = &[
        (b"", Empty),
        (b"  \t ", Empty),
        (b"S", MissingValue),
        (b"5", MissingUnit),
        (b"12345678", MissingUnit),
        (b"-5S", Negative),
        (b"+5S", InvalidValue),
        (b"5 S", InvalidValue),
        (b"1.5S", InvalidValue),
        (b"0x1S", InvalidValue),
        (b"\x005S", InvalidValue),
        (b"5s", UnknownUnit('s')),
        (b"5h", UnknownUnit('h')),
        (b"5X", UnknownUnit('X')),
        (b"123456789S", TooLong),
        (b"99999999999999999999H", TooLong),
        (absurd.as_slice(), TooLong),
        ("5\u{b5}".as_bytes(), NotAscii),
        ("\u{661}\u{662}S".as_bytes(), NotAscii),
        (b"\xff\xfeS", NotAscii),
    ];
    for (bytes, expected) in cases {
        let short = String::from_utf8_lossy(&bytes[..bytes.len().min(24)]).into_owned();
        assert_eq!(GrpcTimeout::parse(bytes), Err(*expected), "{short:?}");
        // The error says what was wrong.
        assert!(!expected.to_string().is_empty());
    }
    assert_eq!(GrpcTimeout::new(100_000_000, TimeUnit::Nanos), Err(TooLong));
}

// ---------------------------------------------------------------------------------------
// D1: the x-request-timeout-ms wire format
// ---------------------------------------------------------------------------------------

#[test]
fn d01_millis_header_carries_whole_milliseconds_rounded_down() {
    assert_eq!(format_timeout_ms(Duration::from_micros(1_999)), Some(1));
    assert_eq!(format_timeout_ms(Duration::from_secs(2)), Some(2000));
    assert_eq!(format_timeout_ms(Duration::from_micros(999)), None);
    assert_eq!(format_timeout_ms(Duration::ZERO), None);
    assert_eq!(format_timeout_ms(Duration::MAX), Some(u64::MAX));
}

#[test]
fn d01_millis_header_reads_digits_and_rejects_the_rest() {
    use MalformedTimeout::*;
    assert_eq!(parse_timeout_ms(b"1500"), Ok(ms(1500)));
    assert_eq!(parse_timeout_ms(b"0"), Ok(Duration::ZERO));
    assert_eq!(parse_timeout_ms(b"007"), Ok(ms(7)));
    assert_eq!(parse_timeout_ms(b" 42 "), Ok(ms(42)));
    assert_eq!(
        parse_timeout_ms(b"18446744073709551615"),
        Ok(Duration::from_millis(u64::MAX))
    );
    // Beyond u64: saturates (oversized, clamped by the reader), not an overflow.
    assert_eq!(
        parse_timeout_ms(b"99999999999999999999"),
        Ok(Duration::from_millis(u64::MAX))
    );
    let absurd = vec![b'1'; 1 << 20];
    let cases: &[(&[u8], MalformedTimeout)] = &[
        (b"", Empty),
        (b"-1", Negative),
        (b"1e3", InvalidValue),
        (b"1.5", InvalidValue),
        (b"1500ms", InvalidValue),
        (b"+1", InvalidValue),
        (b"999999999999999999999", TooLong),
        (absurd.as_slice(), TooLong),
        ("\u{661}\u{662}".as_bytes(), NotAscii),
    ];
    for (bytes, expected) in cases {
        assert_eq!(parse_timeout_ms(bytes), Err(*expected));
    }
}

// ---------------------------------------------------------------------------------------
// D1: writing the effective deadline
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_the_effective_deadline_is_written_as_the_time_remaining() {
    common::leak_checked(async move {
        let deadline = Instant::now() + Duration::new(1, 500_700_000); // 1.5007 s
        let headers = DeadlineHeaders::new();
        let out = move_on_at(deadline, async {
            let mut outgoing = HeaderMap::new();
            let written = headers.write_current(&mut outgoing).unwrap();
            assert_eq!(outgoing["grpc-timeout"], "1500700u");
            assert_eq!(outgoing["x-request-timeout-ms"], "1500"); // whole ms, rounded down
            assert_eq!(written, Some(ms(1500)));

            // Later, less remains: the values shrink with the clock, never an absolute time.
            tokio::time::advance(ms(1000)).await;
            headers.write_current(&mut outgoing).unwrap();
            assert_eq!(outgoing["grpc-timeout"], "500700u");
            assert_eq!(outgoing["x-request-timeout-ms"], "500");
            assert_eq!(
                outgoing.len(),
                2,
                "each header written once, replacing the old value"
            );
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_the_nearest_deadline_of_nested_scopes_is_written() {
    common::leak_checked(async move {
        let outer = Instant::now() + secs(10);
        let out = move_on_at(outer, async {
            move_on_after(secs(2), async {
                let mut request = Request::new(());
                propagate_deadline(&mut request).unwrap();
                assert_eq!(request.headers()["x-request-timeout-ms"], "2000");
                Ok::<_, Cancelled>(())
            })
            .await?;
            // A shielded scope hides the outer deadline: unbounded, nothing written.
            CancelScope::new()
                .shielded()
                .run(async {
                    let mut request = Request::new(());
                    assert_eq!(propagate_deadline(&mut request).unwrap(), None);
                    assert!(request.headers().is_empty());
                    Ok::<_, Cancelled>(())
                })
                .await?;
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_an_unbounded_deadline_removes_stale_headers() {
    common::leak_checked(async move {
        let mut outgoing = map(&[("grpc-timeout", b"5S"), ("x-request-timeout-ms", b"5000")]);
        outgoing.insert("x-other", HeaderValue::from_static("kept"));
        assert_eq!(
            DeadlineHeaders::new().write_current(&mut outgoing).unwrap(),
            None
        );
        assert!(!outgoing.contains_key("grpc-timeout"));
        assert!(!outgoing.contains_key("x-request-timeout-ms"));
        assert_eq!(outgoing["x-other"], "kept");
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_a_passed_deadline_is_not_sent_and_the_call_fails_at_once() {
    common::leak_checked(async move {
        // The deadline instant has come but the service has not fired it yet: `At(now)`.
        let now = Instant::now();
        let mut outgoing = map(&[("grpc-timeout", b"5S")]);
        let error = DeadlineHeaders::new()
            .write(EffectiveDeadline::At(now), &mut outgoing)
            .unwrap_err();
        assert_eq!(error.deadline(), Some(now));
        assert!(error.cancelled().is_none());
        assert!(
            outgoing.is_empty(),
            "nothing is sent, stale values are removed"
        );
        assert_eq!(io::Error::from(error).kind(), io::ErrorKind::TimedOut);

        // Inside a scope cancelled by its deadline: the error carries the `Cancelled`, so
        // returning it (here as an `io::Error`) is an echo the scope absorbs.
        let out = move_on_after(ms(10), async {
            sleep(secs(1)).await.unwrap_err();
            let mut outgoing = HeaderMap::new();
            let error = DeadlineHeaders::new()
                .write_current(&mut outgoing)
                .unwrap_err();
            assert!(error.cancelled().unwrap().reason().is_deadline());
            assert!(outgoing.is_empty());
            Err::<(), io::Error>(error.into())
        })
        .await;
        assert!(matches!(out, Ok(None)), "{out:?}");
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_less_than_a_millisecond_counts_as_passed_when_the_millis_header_is_on() {
    common::leak_checked(async move {
        let deadline = Instant::now() + Duration::from_micros(500);
        let mut outgoing = HeaderMap::new();
        let both = DeadlineHeaders::new();
        assert!(
            both.write(EffectiveDeadline::At(deadline), &mut outgoing)
                .is_err()
        );
        assert!(outgoing.is_empty());
        // gRPC alone carries it.
        let grpc_only = DeadlineHeaders::new().millis_header(None);
        let written = grpc_only
            .write(EffectiveDeadline::At(deadline), &mut outgoing)
            .unwrap();
        assert_eq!(written, Some(Duration::from_micros(500)));
        assert_eq!(outgoing["grpc-timeout"], "500000n");
        assert_eq!(outgoing.len(), 1);
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_header_names_are_configurable() {
    common::leak_checked(async move {
        let name = http::HeaderName::from_static("x-budget-ms");
        let headers = DeadlineHeaders::new()
            .grpc_timeout(false)
            .millis_header(Some(name.clone()));
        let mut outgoing = HeaderMap::new();
        headers
            .write(
                EffectiveDeadline::At(Instant::now() + secs(3)),
                &mut outgoing,
            )
            .unwrap();
        assert_eq!(outgoing.len(), 1);
        assert_eq!(outgoing["x-budget-ms"], "3000");
        let read = headers.read(&outgoing).unwrap().unwrap();
        assert_eq!(read.budget(), secs(3));
        // The default reader does not know this header.
        assert_eq!(DeadlineHeaders::new().read(&outgoing).unwrap(), None);
    })
    .await
}

// ---------------------------------------------------------------------------------------
// D1: reading the caller's deadline
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_the_smaller_header_wins_and_the_deadline_is_on_tokios_clock() {
    common::leak_checked(async move {
        let headers = DeadlineHeaders::new();
        let read = headers
            .read(&map(&[
                ("grpc-timeout", b"3S"),
                ("x-request-timeout-ms", b"1500"),
            ]))
            .unwrap()
            .unwrap();
        assert_eq!(read.budget(), ms(1500));
        assert_eq!(read.source(), DeadlineSource::Millis);
        assert_eq!(read.deadline(), Instant::now() + ms(1500));
        assert!(!read.clamped());

        let read = headers
            .read(&map(&[
                ("grpc-timeout", b"1S"),
                ("x-request-timeout-ms", b"1500"),
            ]))
            .unwrap()
            .unwrap();
        assert_eq!(
            (read.budget(), read.source()),
            (secs(1), DeadlineSource::GrpcTimeout)
        );

        // Repeated values of one header: the smallest wins too.
        let read = headers
            .read(&map(&[("grpc-timeout", b"9S"), ("grpc-timeout", b"2S")]))
            .unwrap()
            .unwrap();
        assert_eq!(read.budget(), secs(2));

        assert_eq!(headers.read(&HeaderMap::new()).unwrap(), None);
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_oversized_values_are_clamped_to_the_cap() {
    common::leak_checked(async move {
        let read = DeadlineHeaders::new()
            .read(&map(&[("grpc-timeout", b"99999999H")]))
            .unwrap()
            .unwrap();
        assert_eq!(read.budget(), DEFAULT_CAP);
        assert!(read.clamped());
        assert_eq!(read.deadline(), Instant::now() + DEFAULT_CAP);

        let capped = DeadlineHeaders::new().cap(secs(10));
        let read = capped
            .read(&map(&[("x-request-timeout-ms", b"99999999999999999999")]))
            .unwrap()
            .unwrap();
        assert_eq!((read.budget(), read.clamped()), (secs(10), true));
        let read = capped
            .read(&map(&[("x-request-timeout-ms", b"10000")]))
            .unwrap()
            .unwrap();
        assert_eq!((read.budget(), read.clamped()), (secs(10), false));

        // A cap of `Duration::MAX` never overflows the clock.
        let read = DeadlineHeaders::new()
            .cap(Duration::MAX)
            .read(&map(&[("x-request-timeout-ms", b"18446744073709551615")]))
            .unwrap()
            .unwrap();
        assert!(read.deadline() > Instant::now());
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_malformed_values_are_rejected_naming_the_header() {
    common::leak_checked(async move {
        let headers = DeadlineHeaders::new();
        let error = headers
            .read(&map(&[
                ("grpc-timeout", b"1S"),
                ("x-request-timeout-ms", b"-5"),
            ]))
            .unwrap_err();
        assert_eq!(error.header(), "x-request-timeout-ms");
        assert_eq!(error.kind(), MalformedTimeout::Negative);
        assert_eq!(
            error.to_string(),
            "malformed x-request-timeout-ms header: the value is negative"
        );

        let error = headers
            .read(&map(&[("grpc-timeout", b"2S"), ("grpc-timeout", b"soon")]))
            .unwrap_err();
        assert_eq!(error.header(), "grpc-timeout");

        // A disabled header is not read at all, malformed or not.
        let millis_only = DeadlineHeaders::new().grpc_timeout(false);
        let read = millis_only
            .read(&map(&[
                ("grpc-timeout", b"garbage"),
                ("x-request-timeout-ms", b"20"),
            ]))
            .unwrap()
            .unwrap();
        assert_eq!(read.budget(), ms(20));
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_a_zero_budget_reads_as_already_passed() {
    common::leak_checked(async move {
        let read = DeadlineHeaders::new()
            .read(&map(&[("grpc-timeout", b"0S")]))
            .unwrap()
            .unwrap();
        assert!(read.has_passed());
        assert_eq!(read.deadline(), Instant::now());
    })
    .await
}

// ---------------------------------------------------------------------------------------
// D1: property tests of the parsers and formatters
// ---------------------------------------------------------------------------------------

fn durations() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..2_000_000_000).prop_map(Duration::from_nanos),
        (0u64..200_000_000_000_000).prop_map(Duration::from_nanos),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

proptest! {
    #[test]
    fn d01_prop_grpc_format_then_parse_never_gives_more_time(remaining in durations()) {
        match GrpcTimeout::from_remaining(remaining) {
            None => prop_assert!(remaining.is_zero()),
            Some(timeout) => {
                let text = timeout.to_string();
                prop_assert!(text.len() <= 9);
                prop_assert!(text[..text.len() - 1].bytes().all(|b| b.is_ascii_digit()));
                let parsed = GrpcTimeout::parse(text.as_bytes()).unwrap();
                prop_assert_eq!(parsed, timeout);
                let sent = parsed.duration();
                prop_assert!(sent <= remaining, "{} gives {:?} > {:?}", text, sent, remaining);
                prop_assert!(!sent.is_zero());
                if timeout != GrpcTimeout::MAX {
                    // The finest unit that fits keeps at least 100000 units (a coarser unit
                    // is chosen only when the finer value has more than 8 digits), so less
                    // than one unit in 100000 is lost.
                    let lost = (remaining - sent).as_secs_f64();
                    prop_assert!(lost <= remaining.as_secs_f64() * 1.0001e-5, "{} loses {}", text, lost);
                }
            }
        }
    }

    #[test]
    fn d01_prop_millis_format_then_parse_never_gives_more_time(remaining in durations()) {
        match format_timeout_ms(remaining) {
            None => prop_assert!(remaining < ms(1)),
            Some(millis) => {
                let parsed = parse_timeout_ms(millis.to_string().as_bytes()).unwrap();
                prop_assert!(parsed <= remaining);
                prop_assert!(remaining - parsed < ms(1) || millis == u64::MAX);
            }
        }
    }

    #[test]
    fn d01_prop_parsers_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
        if let Ok(timeout) = GrpcTimeout::parse(&bytes) {
            // Anything accepted is canonical once written again.
            prop_assert_eq!(GrpcTimeout::parse(timeout.to_string().as_bytes()), Ok(timeout));
        }
        if let Ok(budget) = parse_timeout_ms(&bytes) {
            prop_assert!(budget <= Duration::from_millis(u64::MAX));
        }
    }

    #[test]
    fn d01_prop_parsers_never_panic_on_near_miss_text(text in "[ \t]?[-+]?[0-9]{0,12}[.]?[0-9]{0,3}[HMSmunsh ]?[ \t]?") {
        let _ = GrpcTimeout::parse(text.as_bytes());
        let _ = parse_timeout_ms(text.as_bytes());
    }

    #[test]
    fn d01_prop_reading_any_header_value_never_panics_and_respects_the_cap(
        grpc in proptest::collection::vec(any::<u8>(), 0..24),
        millis in proptest::collection::vec(any::<u8>(), 0..24),
        cap_ms in 1u64..10_000_000,
    ) {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_bytes(&grpc) {
            headers.insert("grpc-timeout", value);
        }
        if let Ok(value) = HeaderValue::from_bytes(&millis) {
            headers.insert("x-request-timeout-ms", value);
        }
        let cap = ms(cap_ms);
        if let Ok(Some(read)) = DeadlineHeaders::new().cap(cap).read(&headers) {
            prop_assert!(read.budget() <= cap);
        }
    }
}

// ---------------------------------------------------------------------------------------
// D1: the tower layers
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_the_layer_runs_each_request_under_the_callers_deadline() {
    common::leak_checked(async move {
        let service = DeadlineLayer::new().layer(service_fn(|request: Request<()>| async move {
            let seen = request.extensions().get::<IncomingDeadline>().copied();
            Ok::<_, Infallible>(Response::new(Some((current_deadline(), seen))))
        }));
        let start = Instant::now();
        let response = service
            .clone()
            .oneshot(request_with(&[("x-request-timeout-ms", "800")]))
            .await
            .unwrap();
        let (deadline, seen) = response.into_body().unwrap();
        assert_eq!(deadline, EffectiveDeadline::At(start + ms(800)));
        assert_eq!(seen.unwrap().budget(), ms(800));

        // No header: the handler runs as is.
        let response = service.oneshot(Request::new(())).await.unwrap();
        assert_eq!(
            response.into_body().unwrap().0,
            EffectiveDeadline::Unbounded
        );
    })
    .await
}

/// A handler fanning out to two backends in a nursery; a cancellation becomes a 504.
async fn fan_out(log: Log) -> Result<Response<String>, Infallible> {
    let start = Instant::now();
    let out = nursery(|n| async move {
        for backend in ["a", "b"] {
            let log = log.clone();
            n.spawn(async move {
                let cancelled = sleep(secs(10)).await.unwrap_err();
                log.push(format!(
                    "{backend} cancelled at {} ms: {}",
                    since(start),
                    cancelled.reason()
                ));
                Err::<(), _>(cancelled)
            });
        }
        sleep(secs(10)).await?;
        Ok::<_, Cancelled>("both answered")
    })
    .await;
    Ok(match out {
        Ok(Some(body)) => Response::new(body.to_string()),
        Err(NurseryError::Cancelled(cancelled)) => {
            let mut response = Response::new(cancelled.reason().to_string());
            *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            response
        }
        other => panic!("unexpected nursery outcome {other:?}"),
    })
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_a_servers_fan_out_inherits_the_callers_deadline() {
    common::leak_checked(async move {
        let log = Log::default();
        let handler_log = log.clone();
        let service = DeadlineLayer::new().layer(service_fn(move |_: Request<()>| {
            fan_out(handler_log.clone())
        }));
        let start = Instant::now();
        let response = no_hang(service.oneshot(request_with(&[("grpc-timeout", "100m")])))
            .await
            .unwrap();
        assert_eq!(since(start), 100);
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(response.body(), "deadline passed");
        assert_eq!(
            log.set(),
            common::nursery::set(&[
                "a cancelled at 100 ms: deadline passed",
                "b cancelled at 100 ms: deadline passed"
            ])
        );
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_malformed_headers_get_400_and_the_handler_is_not_called() {
    common::leak_checked(async move {
        let called = Arc::new(AtomicBool::new(false));
        let seen = called.clone();
        let service = DeadlineLayer::new().layer(service_fn(move |_: Request<()>| {
            seen.store(true, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(String::from("handled"))) }
        }));
        for (name, value) in [
            ("grpc-timeout", "-1S"),
            ("grpc-timeout", "1000000000n"),
            ("grpc-timeout", "5 parsecs"),
            ("x-request-timeout-ms", "1e9"),
            ("x-request-timeout-ms", "99999999999999999999999999"),
        ] {
            let response = service
                .clone()
                .oneshot(request_with(&[(name, value)]))
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::BAD_REQUEST,
                "{name}: {value}"
            );
            assert!(response.body().is_empty());
        }
        assert!(!called.load(Ordering::SeqCst));

        // gRPC callers get a gRPC status: INVALID_ARGUMENT.
        let response = service
            .clone()
            .oneshot(request_with(&[
                ("content-type", "application/grpc+proto"),
                ("grpc-timeout", "soon"),
            ]))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "3");
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(
            response.headers()["grpc-message"],
            "malformed grpc-timeout header: the value is not a whole number"
        );

        // grpc-message is percent-encoded (gRPC's wire format): here a '%' of the caller's,
        // quoted in the message.
        let response = service
            .oneshot(request_with(&[
                ("content-type", "application/grpc"),
                ("grpc-timeout", "5%"),
            ]))
            .await
            .unwrap();
        assert_eq!(response.headers()["grpc-status"], "3");
        assert_eq!(
            response.headers()["grpc-message"],
            "malformed grpc-timeout header: unknown unit '%25' (expected one of H M S m u n)"
        );
        assert!(!called.load(Ordering::SeqCst));
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_no_time_left_answers_504_at_once() {
    common::leak_checked(async move {
        let called = Arc::new(AtomicBool::new(false));
        let seen = called.clone();
        let service = DeadlineLayer::new().layer(service_fn(move |_: Request<()>| {
            seen.store(true, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(String::new())) }
        }));
        let response = service
            .clone()
            .oneshot(request_with(&[("x-request-timeout-ms", "0")]))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let response = service
            .clone()
            .oneshot(request_with(&[
                ("content-type", "application/grpc"),
                ("grpc-timeout", "0n"),
            ]))
            .await
            .unwrap();
        assert_eq!(response.headers()["grpc-status"], "4"); // DEADLINE_EXCEEDED
        // gRPC's content types, with a format or parameters; not a longer subtype.
        for (content_type, grpc) in [
            ("application/grpc;charset=utf-8", true),
            ("application/grpc+json", true),
            ("application/grpcfoo", false),
            ("application/grpc-web", false),
        ] {
            let response = service
                .clone()
                .oneshot(request_with(&[
                    ("content-type", content_type),
                    ("x-request-timeout-ms", "0"),
                ]))
                .await
                .unwrap();
            let status = response.headers().get("grpc-status");
            assert_eq!(status.is_some(), grpc, "{content_type}");
            if !grpc {
                assert_eq!(
                    response.status(),
                    StatusCode::GATEWAY_TIMEOUT,
                    "{content_type}"
                );
            }
        }
        assert!(!called.load(Ordering::SeqCst));
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_cooperative_handlers_answer_for_themselves_after_the_deadline() {
    common::leak_checked(async move {
        // The default: the handler sees the deadline at its cancellation points and its
        // response is returned as it makes it, even one that ignores the deadline.
        let service = DeadlineLayer::new().layer(service_fn(|_: Request<()>| async {
            let seen = sleep(secs(5)).await;
            tokio::time::sleep(ms(50)).await; // cleanup after the deadline
            Ok::<_, Infallible>(Response::new(format!(
                "{:?}",
                seen.map_err(|c| c.reason().to_string())
            )))
        }));
        let start = Instant::now();
        let response = service
            .oneshot(request_with(&[("x-request-timeout-ms", "100")]))
            .await
            .unwrap();
        assert_eq!(since(start), 150);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body(), "Err(\"deadline passed\")");
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_hard_layer_drops_the_handler_at_the_deadline_with_504() {
    common::leak_checked(async move {
        let log = Log::default();
        let handler_log = log.clone();
        let service = DeadlineLayer::new()
            .hard()
            .layer(service_fn(move |_: Request<()>| {
                let log = handler_log.clone();
                async move {
                    let start = Instant::now();
                    let _guard = OnDrop(Some(move || {
                        log.push(format!("dropped at {} ms", since(start)))
                    }));
                    tokio::time::sleep(HOUR).await; // not a cancellation point
                    Ok::<_, Infallible>(Response::new(String::from("too late")))
                }
            }));
        let start = Instant::now();
        let response = no_hang(
            service
                .clone()
                .oneshot(request_with(&[("grpc-timeout", "250m")])),
        )
        .await
        .unwrap();
        assert_eq!(since(start), 250);
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(response.body().is_empty());
        assert_eq!(log.events(), ["dropped at 250 ms"]);

        // gRPC: DEADLINE_EXCEEDED.
        let response = no_hang(service.oneshot(request_with(&[
            ("content-type", "application/grpc"),
            ("grpc-timeout", "10m"),
        ])))
        .await
        .unwrap();
        assert_eq!(response.headers()["grpc-status"], "4");
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_hard_layer_answers_503_when_the_server_cancels_the_request() {
    common::leak_checked(async move {
        let service = DeadlineLayer::new()
            .hard()
            .layer(service_fn(|_: Request<()>| async {
                tokio::time::sleep(HOUR).await;
                Ok::<_, Infallible>(Response::new(String::new()))
            }));
        let server = CancelScope::new();
        let shutdown = server.handle();
        at(Instant::now() + ms(40), move || {
            shutdown.cancel_with("shutting down")
        });
        let start = Instant::now();
        let out = no_hang(server.run(async {
            let response = service
                .oneshot(request_with(&[("x-request-timeout-ms", "60000")]))
                .await
                .unwrap();
            Ok::<_, Cancelled>(response)
        }))
        .await;
        assert_eq!(since(start), 40);
        assert_eq!(
            out.unwrap().unwrap().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    })
    .await
}

/// An enclosing scope's deadline at the same instant as the request's: the outermost of
/// scopes expiring together absorbs, so the request's scope passes the cancellation on, and
/// the request ran out of time all the same: 504, as for its own deadline (it answered 503).
/// An enclosing deadline before the request's is the server's (a shutdown by deadline, as
/// with `Nursery::timeout`): 503, and gRPC's retryable UNAVAILABLE, not DEADLINE_EXCEEDED.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_hard_layer_tells_the_requests_deadline_from_an_enclosing_one() {
    common::leak_checked(async move {
        let service = DeadlineLayer::new()
            .hard()
            .layer(service_fn(|_: Request<()>| async {
                tokio::time::sleep(HOUR).await;
                Ok::<_, Infallible>(Response::new(String::new()))
            }));
        let cases = [
            (ms(250), false, "504"),
            (ms(250), true, "4"),
            (ms(40), false, "503"),
            (ms(40), true, "14"),
        ];
        for (enclosing, grpc, expected) in cases {
            let start = Instant::now();
            let service = service.clone();
            let out = no_hang(Nursery::new().timeout(enclosing).run(
                |_server: NurseryHandle<Cancelled>| async move {
                    let mut headers = vec![("grpc-timeout", "250m")];
                    if grpc {
                        headers.push(("content-type", "application/grpc"));
                    }
                    Ok(service.oneshot(request_with(&headers)).await.unwrap())
                },
            ))
            .await;
            assert_eq!(since(start), enclosing.as_millis());
            let response = out.unwrap().expect("the layer answered");
            let answer = match grpc {
                true => response.headers()["grpc-status"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
                false => response.status().as_str().to_owned(),
            };
            assert_eq!(answer, expected, "{enclosing:?}, gRPC: {grpc}");
        }
    })
    .await
}

/// A handler whose nursery child must clean up when cancelled.
fn cleanup_handler(
    drop_mode: DropMode,
    log: Log,
) -> impl tower::Service<Request<()>, Response = Response<String>, Error = Infallible> + Clone {
    service_fn(move |_: Request<()>| {
        let log = log.clone();
        async move {
            Nursery::new()
                .drop_mode(drop_mode)
                .run(|n| async move {
                    let child_log = log.clone();
                    n.spawn(async move {
                        let guard_log = child_log.clone();
                        let _guard = OnDrop(Some(move || guard_log.push("child future dropped")));
                        child_log.push("child started");
                        let cancelled = cancelled().await;
                        child_log.push(format!("child cleaned up: {}", cancelled.reason()));
                        Err::<(), _>(cancelled)
                    });
                    sleep_forever_cancelled().await?;
                    Ok::<_, Cancelled>(())
                })
                .await
                .ok();
            Ok::<_, Infallible>(Response::new(String::from("never")))
        }
    })
}

async fn sleep_forever_cancelled() -> Result<(), Cancelled> {
    Err(cancelled().await)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_a_request_future_dropped_by_the_server_cancels_its_work_in_wait_mode() {
    common::leak_checked(async move {
        let log = Log::default();
        let service = DeadlineLayer::new().layer(cleanup_handler(DropMode::Wait, log.clone()));
        let out = Nursery::new()
            .name("server")
            .run(|_| async move {
                let mut request =
                    Box::pin(service.oneshot(request_with(&[("grpc-timeout", "10S")])));
                tokio::select! {
                    _ = &mut request => unreachable!("the handler never answers"),
                    _ = tokio::time::sleep(ms(5)) => {}
                }
                // The client went away: hyper drops the request future.
                drop(request);
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        // The server's nursery adopted the child and waited for its cleanup.
        assert_eq!(
            log.events(),
            [
                "child started",
                "child cleaned up: explicit cancel: the nursery's future was dropped",
                "child future dropped"
            ]
        );
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_a_request_future_dropped_by_the_server_aborts_its_work_in_abort_mode() {
    common::leak_checked(async move {
        let log = Log::default();
        let service = DeadlineLayer::new().layer(cleanup_handler(DropMode::Abort, log.clone()));
        let out = nursery(|_| async move {
            let mut request = Box::pin(service.oneshot(request_with(&[("grpc-timeout", "10S")])));
            tokio::select! {
                _ = &mut request => unreachable!("the handler never answers"),
                _ = tokio::time::sleep(ms(5)) => {}
            }
            drop(request);
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(log.events(), ["child started", "child future dropped"]);
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_the_propagating_layer_writes_the_deadline_of_the_caller() {
    common::leak_checked(async move {
        let client =
            PropagateDeadlineLayer::new().layer(service_fn(|request: Request<()>| async move {
                Ok::<_, Infallible>(Response::new(request.headers().clone()))
            }));
        // The headers the client sent for `request`.
        let sent = |request: Request<()>| {
            let client = client.clone();
            async move { client.oneshot(request).await.unwrap().into_body() }
        };
        let out = move_on_after(secs(2), async {
            let headers = sent(Request::new(())).await;
            assert_eq!(headers["grpc-timeout"], "2000000u");
            assert_eq!(headers["x-request-timeout-ms"], "2000");
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));

        // Outside any scope: nothing is sent.
        let headers = sent(Request::new(())).await;
        assert!(headers.is_empty());

        // Outside any scope, stale values are dropped: the callee gets the caller's deadline,
        // none.
        let headers = sent(request_with(&[("grpc-timeout", "7S")])).await;
        assert!(headers.is_empty());
        // Under a deadline, a budget the request carries (a per-call timeout set by hand) is
        // kept where it is tighter, written into both headers (session 21: it was replaced
        // by the looser deadline).
        let out = move_on_after(secs(2), async {
            let tighter = sent(request_with(&[("x-request-timeout-ms", "100")])).await;
            assert_eq!(tighter["grpc-timeout"], "100000u");
            assert_eq!(tighter["x-request-timeout-ms"], "100");
            // A looser one is replaced by the caller's deadline.
            let looser = sent(request_with(&[("grpc-timeout", "7S")])).await;
            assert_eq!(looser["grpc-timeout"], "2000000u");
            assert_eq!(looser["x-request-timeout-ms"], "2000");
            // A malformed one counts as none: replaced.
            let malformed = sent(request_with(&[("x-request-timeout-ms", "soon")])).await;
            assert_eq!(malformed["x-request-timeout-ms"], "2000");
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        // Outside any scope a malformed one is dropped, as before.
        let headers = sent(request_with(&[("x-request-timeout-ms", "soon")])).await;
        assert!(headers.is_empty());
    })
    .await
}

/// A zero budget set by hand: nothing is sent, and the error carries no cancellation (no
/// scope of the caller's expired: the caller's scope goes on).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_a_zero_budget_set_by_hand_sends_nothing_and_cancels_no_scope() {
    common::leak_checked(async move {
        let called = Arc::new(AtomicBool::new(false));
        let seen = called.clone();
        let client = PropagateDeadlineLayer::new().layer(service_fn(move |_: Request<()>| {
            seen.store(true, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(())) }
        }));
        let out = move_on_after(secs(2), async {
            let error = client
                .oneshot(request_with(&[("x-request-timeout-ms", "0")]))
                .await
                .unwrap_err();
            let passed = error.downcast_ref::<DeadlinePassed>().unwrap();
            assert!(passed.cancelled().is_none(), "{passed:?}");
            assert!(!is_cancelled(), "the caller's scope goes on");
            Ok::<_, Cancelled>("went on")
        })
        .await;
        assert_eq!(out.unwrap(), Some("went on"));
        assert!(!called.load(Ordering::SeqCst));
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_the_propagating_layer_fails_at_once_when_the_deadline_has_passed() {
    common::leak_checked(async move {
        let called = Arc::new(AtomicBool::new(false));
        let seen = called.clone();
        let client = PropagateDeadlineLayer::new().layer(service_fn(move |_: Request<()>| {
            seen.store(true, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(())) }
        }));
        let scope = CancelScope::new().with_timeout(ms(10));
        let out = scope
            .run(async {
                sleep(HOUR).await.unwrap_err();
                let error = client.oneshot(Request::new(())).await.unwrap_err();
                let passed = error.downcast_ref::<DeadlinePassed>().unwrap();
                assert!(passed.cancelled().unwrap().reason().is_deadline());
                // The boxed error is an echo of the scope's cancellation: absorbed.
                Err::<(), BoxError>(error)
            })
            .await;
        assert!(matches!(out, Ok(None)));
        assert!(!called.load(Ordering::SeqCst));
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn d01_client_and_server_layers_carry_the_deadline_across_a_hop() {
    common::leak_checked(async move {
        // Service B reports the budget it got; service A calls B through the propagating layer.
        let b = DeadlineLayer::new().layer(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(current_deadline().remaining()))
        }));
        let to_b = PropagateDeadlineLayer::new().layer(b);
        let a = DeadlineLayer::new().layer(service_fn(move |_: Request<()>| {
            let to_b = to_b.clone();
            async move {
                tokio::time::sleep(ms(300)).await; // A's own work first
                let from_b = to_b.oneshot(Request::new(())).await.unwrap().into_body();
                Ok::<_, Infallible>(Response::new(from_b))
            }
        }));
        let at_b = a
            .oneshot(request_with(&[("grpc-timeout", "1S")]))
            .await
            .unwrap()
            .into_body();
        assert_eq!(at_b, Some(ms(700)), "B sees what A had left");
    })
    .await
}

// ---------------------------------------------------------------------------------------
// S14: CancellationToken, both ways
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn s14_a_scopes_token_is_cancelled_with_the_scope() {
    common::leak_checked(async move {
        // Explicitly.
        let scope = CancelScope::new();
        let token = scope.handle().cancellation_token();
        assert!(!token.is_cancelled());
        scope.handle().cancel();
        assert!(token.is_cancelled());

        // By its deadline, fired while nobody polls the scope's body.
        let start = Instant::now();
        let out = move_on_after(ms(30), async {
            let token = cancellation_token();
            let library = tokio::spawn(async move {
                token.cancelled().await;
                since(start)
            });
            let fired_at = library.await.unwrap(); // not a cancellation point: we wait for it
            Ok::<_, Cancelled>(fired_at)
        })
        .await;
        assert_eq!(out.unwrap(), Some(30));

        // Through an ancestor, and with a shield in between, not.
        let outer = CancelScope::new();
        let cancel_outer = outer.handle();
        let out = outer
            .run(async {
                let inner_token = cancellation_token();
                let shielded_token = CancelScope::new()
                    .shielded()
                    .run(async { Ok::<_, Cancelled>(cancellation_token()) })
                    .await?
                    .unwrap();
                cancel_outer.cancel();
                assert!(inner_token.is_cancelled());
                assert!(!shielded_token.is_cancelled());
                checkpoint().await
            })
            .await;
        assert!(matches!(out, Ok(None)));

        // Outside any scope: never cancelled by the crate.
        assert!(!cancellation_token().is_cancelled());
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn s14_a_token_made_in_a_cancelled_scope_is_cancelled_at_once() {
    common::leak_checked(async move {
        let scope = CancelScope::new();
        scope.handle().cancel();
        let out = scope
            .run(async {
                assert!(cancellation_token().is_cancelled());
                checkpoint().await
            })
            .await;
        assert!(matches!(out, Ok(None)));
        // Cancelling the token does not cancel the scope: the link is one way.
        let scope = CancelScope::new();
        scope.handle().cancellation_token().cancel();
        assert!(!scope.handle().is_cancelled());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_a_scopes_token_is_cancelled_while_the_scopes_task_is_busy() {
    common::leak_checked(async move {
        let scope = CancelScope::new();
        let handle = scope.handle();
        let token = handle.cancellation_token();
        let release = Arc::new(AtomicBool::new(false));
        let busy = release.clone();
        // The scope's own task never yields until released.
        let owner = tokio::spawn(scope.run(async move {
            while !busy.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
            checkpoint().await
        }));
        let canceller = std::thread::spawn(move || handle.cancel_with("from another thread"));
        common::nursery::bounded(token.cancelled()).await;
        release.store(true, Ordering::SeqCst);
        canceller.join().unwrap();
        assert!(matches!(owner.await.unwrap(), Ok(None)));
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn s14_a_scope_linked_to_a_token_is_cancelled_with_it() {
    common::leak_checked(async move {
        let token = CancellationToken::new();
        let trigger = token.clone();
        let start = Instant::now();
        at(start + ms(20), move || trigger.cancel());
        let log = Log::default();
        let child_log = log.clone();
        let out = no_hang(nursery(|n| async move {
            let _link = n.scope().cancel_when(&token);
            n.spawn(async move {
                let cancelled = sleep(HOUR).await.unwrap_err();
                child_log.push(format!(
                    "{} ms: {:?}",
                    since(start),
                    cancelled.reason().message()
                ));
                Err::<(), _>(cancelled)
            });
            sleep(HOUR).await?;
            Ok::<_, Cancelled>(())
        }))
        .await;
        assert_eq!(
            out.unwrap(),
            None,
            "the nursery absorbed the token's cancellation"
        );
        assert_eq!(log.events(), [format!("20 ms: {:?}", Some(TOKEN_REASON))]);
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn s14_token_links_follow_the_token_tree_and_end_when_dropped() {
    common::leak_checked(async move {
        // A child token: cancelling its parent cancels the scope.
        let parent = CancellationToken::new();
        let scope = CancelScope::new();
        let link = scope.handle().cancel_when(&parent.child_token());
        parent.cancel();
        assert!(scope.handle().cancel_called());
        drop(link);

        // An already cancelled token cancels at once.
        let scope = CancelScope::new();
        let _link = scope.handle().cancel_when(&parent);
        assert_eq!(
            scope.handle().reason().unwrap().message(),
            Some(TOKEN_REASON)
        );

        // A dropped link no longer cancels.
        let token = CancellationToken::new();
        let scope = CancelScope::new();
        drop(scope.handle().cancel_when(&token));
        token.cancel();
        assert!(!scope.handle().cancel_called());

        // `cancelled_by` holds the link for the scope's whole life.
        let token = CancellationToken::new();
        let trigger = token.clone();
        at(Instant::now() + ms(5), move || trigger.cancel());
        let out = no_hang(cancelled_by(token, async {
            sleep(HOUR).await?;
            Ok::<_, Cancelled>("finished")
        }))
        .await;
        assert_eq!(out.unwrap(), None);
        let out = cancelled_by(CancellationToken::new(), async { Ok::<_, Cancelled>(7) }).await;
        assert_eq!(out.unwrap(), Some(7));
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn s14_token_bridges_run_no_task() {
    common::leak_checked(async move {
        let scope = CancelScope::new();
        let token = CancellationToken::new();
        let _to = scope.handle().cancellation_token();
        let _from = scope.handle().cancel_when(&token);
        assert_eq!(common::alive_tasks(), 0);
        token.cancel();
        assert!(scope.handle().is_cancelled());
        settle_tasks(0).await;
    })
    .await
}

// ---------------------------------------------------------------------------------------
// S14: the 'static cancelled future for graceful shutdown
// ---------------------------------------------------------------------------------------

fn assert_static_send<T: Send + 'static>(_: &T) {}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn s14_cancelled_owned_waits_for_the_scope_it_captured_wherever_it_is_polled() {
    common::leak_checked(async move {
        let scope = CancelScope::new();
        let handle = scope.handle();
        let start = Instant::now();
        let out = scope
            .run(async {
                let signal = shutdown_signal();
                let owned = cancelled_owned();
                assert_static_send(&signal);
                assert_static_send(&owned);
                assert_eq!(owned.scope(), Some(handle.id()));
                // Polled by tasks outside every scope.
                let a = tokio::spawn(async move {
                    signal.await;
                    since(start)
                });
                let b = tokio::spawn(async move { owned.await.reason().to_string() });
                at(start + ms(15), move || handle.cancel_with("deploy"));
                let (a, b) = (a.await.unwrap(), b.await.unwrap());
                assert_eq!(a, 15);
                assert_eq!(b, "explicit cancel: deploy");
                checkpoint().await
            })
            .await;
        assert!(matches!(out, Ok(None)));
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn s14_cancelled_owned_reports_its_scope_not_the_pollers() {
    common::leak_checked(async move {
        let watched = CancelScope::new();
        let owned = watched.handle().cancelled_owned();
        // Polled inside another scope that gets cancelled: still pending.
        let poller = move_on_after(ms(10), async move {
            let mut owned = owned;
            tokio::select! {
                _ = &mut owned => unreachable!("the watched scope is not cancelled"),
                cancelled = cancelled() => Err::<(), _>(cancelled),
            }
        });
        assert!(matches!(poller.await, Ok(None)));
        // Already cancelled (deadline inherited from an ancestor): completes at once.
        let out = move_on_after(ms(1), async {
            sleep(HOUR).await.unwrap_err();
            let owned = cancelled_owned();
            assert!(owned.is_cancelled());
            Err::<(), _>(owned.await)
        })
        .await;
        assert!(matches!(out, Ok(None)));
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn s14_shutdown_signal_outside_any_scope_never_completes() {
    common::leak_checked(async move {
        let signal = shutdown_signal();
        assert_eq!(signal.scope(), None);
        assert!(tokio::time::timeout(HOUR, signal).await.is_err());
    })
    .await
}

// ---------------------------------------------------------------------------------------
// S14: the executor
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn s14_executor_tasks_are_children_of_the_nursery() {
    common::leak_checked(async move {
        let log = Log::default();
        let start = Instant::now();
        let task_log = log.clone();
        let out = no_hang(Nursery::new().timeout(ms(50)).run(|n| async move {
            let executor = NurseryExecutor::new(&n);
            for i in 0..3 {
                let log = task_log.clone();
                executor.spawn(async move {
                    // The nursery's deadline reaches the executor's tasks.
                    let cancelled = sleep(HOUR).await.unwrap_err();
                    log.push(format!(
                        "task {i} at {} ms: {}",
                        since(start),
                        cancelled.reason()
                    ));
                });
            }
            assert_eq!(n.live_children(), 3);
            Ok::<_, Cancelled>(())
        }))
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(
            since(start),
            50,
            "the nursery waited for its executor tasks"
        );
        assert_eq!(
            log.set(),
            common::nursery::set(&[
                "task 0 at 50 ms: deadline passed",
                "task 1 at 50 ms: deadline passed",
                "task 2 at 50 ms: deadline passed"
            ])
        );
        settle_tasks(0).await;
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn s14_executor_respects_the_nurserys_limit_without_blocking_the_caller() {
    common::leak_checked(async move {
        let log = Log::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task_log = log.clone();
        let out = no_hang(Nursery::new().limit(1).run(|n| async move {
            let executor = NurseryExecutor::new(&n);
            let first = task_log.clone();
            executor.spawn(async move {
                first.push("first started");
                rx.await.unwrap();
                first.push("first done");
            });
            let second = task_log.clone();
            executor.spawn(async move { second.push("second started") }); // returns at once
            task_log.push("caller went on");
            tokio::time::sleep(ms(10)).await;
            tx.send(()).unwrap();
            Ok::<_, Cancelled>(())
        }))
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(
            log.events(),
            [
                "caller went on",
                "first started",
                "first done",
                "second started"
            ]
        );
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn s14_executor_tasks_are_aborted_when_the_grace_period_runs_out() {
    common::leak_checked(async move {
        let log = Log::default();
        let start = Instant::now();
        let task_log = log.clone();
        let out = no_hang(Nursery::new().grace(secs(1)).run(|n| async move {
            let by_handle = NurseryExecutor::new(&n);
            let current = NurseryExecutor::current().unwrap();
            for (name, executor) in [("child", by_handle), ("adopted", current)] {
                let log = task_log.clone();
                executor.spawn(async move {
                    let _guard = OnDrop(Some(move || {
                        log.push(format!("{name} aborted at {} ms", since(start)))
                    }));
                    tokio::time::sleep(HOUR).await; // ignores the cancellation
                });
            }
            n.cancel();
            Ok::<_, Cancelled>(())
        }))
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(since(start), 1000);
        assert_eq!(
            log.set(),
            common::nursery::set(&["child aborted at 1000 ms", "adopted aborted at 1000 ms"])
        );
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn s14_executor_current_adopts_into_the_nearest_nursery() {
    common::leak_checked(async move {
        assert_eq!(
            NurseryExecutor::current().unwrap_err(),
            ExecutorError::NoScope
        );
        let no_runtime = std::thread::spawn(NurseryExecutor::current).join().unwrap();
        assert_eq!(no_runtime.unwrap_err(), ExecutorError::NoRuntime);
        assert!(!ExecutorError::NoRuntime.to_string().is_empty());

        let log = Log::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let start = Instant::now();
        let task_log = log.clone();
        let outer = tokio::spawn(nursery(move |_| async move {
            // Built in a plain scope inside the nursery: its tasks run in that scope.
            move_on_after(HOUR, async move {
                let executor = NurseryExecutor::current().unwrap();
                executor.spawn(async move {
                    rx.await.unwrap();
                    task_log.push(format!(
                        "ran to {} ms, deadline {:?}",
                        since(start),
                        current_deadline()
                    ));
                });
                Ok::<_, Cancelled>(())
            })
            .await?;
            Ok::<_, Cancelled>(())
        }));
        tokio::time::sleep(ms(20)).await;
        assert!(
            !outer.is_finished(),
            "the nursery waits for the adopted task"
        );
        tx.send(()).unwrap();
        assert_eq!(outer.await.unwrap().unwrap(), Some(()));
        assert_eq!(
            log.events(),
            [format!(
                "ran to 20 ms, deadline {:?}",
                EffectiveDeadline::At(start + HOUR)
            )]
        );
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn s14_execute_into_a_closed_nursery_hands_the_future_to_the_nearest_live_ancestor() {
    common::leak_checked(async move {
        let log = Log::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task_log = log.clone();
        let outer = tokio::spawn(Nursery::new().name("outer").run(|_| async move {
            let executor =
                nursery(|inner| async move { Ok::<_, Cancelled>(NurseryExecutor::new(&inner)) })
                    .await
                    .unwrap()
                    .unwrap();
            // The inner nursery has closed: `spawn` neither panics nor drops the future.
            executor.spawn(async move {
                rx.await.unwrap();
                task_log.push("ran after its nursery closed");
            });
            Ok::<_, Cancelled>(())
        }));
        tokio::time::sleep(ms(20)).await;
        assert!(
            !outer.is_finished(),
            "the enclosing nursery adopted the task"
        );
        tx.send(()).unwrap();
        assert_eq!(outer.await.unwrap().unwrap(), Some(()));
        assert_eq!(log.events(), ["ran after its nursery closed"]);
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn s14_execute_into_a_closed_top_level_nursery_goes_to_the_orphan_registry() {
    common::leak_checked(async move {
        let executor = nursery(|n| async move { Ok::<_, Cancelled>(NurseryExecutor::new(&n)) })
            .await
            .unwrap()
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        executor.spawn(async move {
            rx.await.unwrap();
            done_tx.send("ran").unwrap();
        });
        assert_eq!(orphan_count(), 1);
        tx.send(()).unwrap();
        no_hang(orphans_finished()).await;
        assert_eq!(done_rx.await.unwrap(), "ran");
        assert_eq!(orphan_count(), 0);
    })
    .await
}

#[cfg(feature = "tracing")]
#[test]
fn s14_execute_into_a_closed_nursery_warns() {
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Warnings(Arc<std::sync::Mutex<Vec<String>>>);
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Message(String);
            impl tracing::field::Visit for Message {
                fn record_debug(
                    &mut self,
                    field: &tracing::field::Field,
                    value: &dyn std::fmt::Debug,
                ) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            if *event.metadata().level() == tracing::Level::WARN {
                let mut message = Message(String::new());
                event.record(&mut message);
                self.0.lock().unwrap().push(message.0);
            }
        }
    }

    let warnings = Warnings::default();
    let subscriber = tracing_subscriber::registry().with(warnings.clone());
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(common::leak_checked(async {
            nursery(|_| async {
                let executor =
                    nursery(|n| async move { Ok::<_, Cancelled>(NurseryExecutor::new(&n)) })
                        .await
                        .unwrap()
                        .unwrap();
                executor.spawn(async {});
                Ok::<_, Cancelled>(())
            })
            .await
            .unwrap();
        }));
    });
    let warnings = warnings.0.lock().unwrap().clone();
    assert!(
        warnings.iter().any(|w| w.contains("the nursery has closed")
            && w.contains("nearest live enclosing nursery")),
        "{warnings:?}"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn s14_executor_task_panics_follow_the_nurserys_rules() {
    common::leak_checked(async move {
        // A child's panic is the nursery's (N6).
        let out = catch(nursery(|n| async move {
            NurseryExecutor::new(&n).spawn(async { explode(common::nursery::Code(7)) });
            Ok::<_, Cancelled>(())
        }))
        .await;
        assert_eq!(code(&*out.unwrap_err()), Some(7));

        // An adopted task's panic goes to the report hook; the nursery does not fail.
        let reports = Log::default();
        let hook_log = reports.clone();
        let out = Nursery::new()
            .on_report(move |report| {
                if let Report::Panic { payload, .. } = report {
                    hook_log.push(format!("panic {:?}", code(*payload)));
                }
            })
            .run(|_| async {
                NurseryExecutor::current()
                    .unwrap()
                    .spawn(async { explode(common::nursery::Code(8)) });
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(out.unwrap(), Some(()));
        assert_eq!(reports.events(), ["panic Some(8)"]);
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Over real loopback sockets (real time; only a hang bound)
// ---------------------------------------------------------------------------------------

async fn text(response: Response<hyper::body::Incoming>) -> (StatusCode, String) {
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_hyper_http2_connection_and_stream_tasks_belong_to_the_nursery() {
    common::leak_checked(async move {
        within_socket_bound(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (entered_tx, mut entered_rx) = tokio::sync::mpsc::channel::<usize>(1);
            let out = Nursery::new()
                .supervisor()
                .name("server")
                .run(|n| async move {
                    let executor = NurseryExecutor::new(&n);
                    let server_executor = executor.clone();
                    let nursery = n.clone();
                    n.spawn(async move {
                        let (stream, _) = listener.accept().await?;
                        let service = hyper::service::service_fn(move |_request| {
                            let (nursery, entered) = (nursery.clone(), entered_tx.clone());
                            async move {
                                entered.send(nursery.live_children()).await.unwrap();
                                // The stream task runs in the nursery's scope tree.
                                let cancelled = cancelled().await;
                                let body = format!("stream task saw: {}", cancelled.reason());
                                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                            }
                        });
                        hyper::server::conn::http2::Builder::new(server_executor)
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                            .map_err(io::Error::other)
                    });

                    let stream = TcpStream::connect(addr).await?;
                    let (mut sender, connection) = hyper::client::conn::http2::handshake(
                        executor.clone(),
                        TokioIo::new(stream),
                    )
                    .await
                    .map_err(io::Error::other)?;
                    executor.spawn(async move {
                        let _ = connection.await;
                    });
                    let response = sender.send_request(
                        Request::get("http://localhost/")
                            .body(Empty::<Bytes>::new())
                            .unwrap(),
                    );
                    let children = entered_rx.recv().await.unwrap();
                    n.scope().cancel_with("server shutting down");
                    let response = response.await.map_err(io::Error::other)?;
                    drop(sender); // the client hangs up: both connections end
                    Ok::<_, io::Error>((children, text(response).await))
                })
                .await;
            let (children, (status, body)) = out.unwrap().unwrap();
            assert!(
                children >= 3,
                "server connection, client connection, stream: {children}"
            );
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                body,
                "stream task saw: explicit cancel: server shutting down"
            );
        })
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_shutdown_signal_drives_axums_graceful_shutdown() {
    common::leak_checked(async move {
        within_socket_bound(async {
            let log = Log::default();
            let server_log = log.clone();
            let out = nursery(|n| async move {
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<()>(1);
                let release = Arc::new(tokio::sync::Notify::new());
                let handler_release = release.clone();
                let app = axum::Router::new().route(
                    "/",
                    axum::routing::get(move || {
                        let (started, release) = (started_tx.clone(), handler_release.clone());
                        async move {
                            started.send(()).await.unwrap();
                            release.notified().await;
                            "finished"
                        }
                    }),
                );
                let signal = shutdown_signal(); // the nursery's scope
                let stopped = server_log.clone();
                n.spawn(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(signal)
                        .await?;
                    stopped.push("server stopped");
                    Ok::<_, io::Error>(())
                });

                let stream = TcpStream::connect(addr).await?;
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(io::Error::other)?;
                let connection = tokio::spawn(connection);
                let response = sender.send_request(
                    Request::get("http://localhost/")
                        .body(Empty::<Bytes>::new())
                        .unwrap(),
                );
                let response = tokio::spawn(response);
                started_rx.recv().await.unwrap();
                n.cancel();
                server_log.push("shutdown requested");
                release.notify_one();
                let (status, body) = text(response.await?.map_err(io::Error::other)?).await;
                server_log.push(format!("in-flight request answered: {status} {body}"));
                drop(sender);
                let _ = connection.await;
                Ok::<_, io::Error>(())
            })
            .await;
            assert_eq!(out.unwrap(), Some(()));
            let events = log.events();
            assert_eq!(events[0], "shutdown requested");
            assert_eq!(
                log.set(),
                common::nursery::set(&[
                    "shutdown requested",
                    "in-flight request answered: 200 OK finished",
                    "server stopped"
                ])
            );
        })
        .await;
    })
    .await
}

/// An axum server with the deadline layer, on loopback; returns its address. It stops when
/// `stop` is cancelled.
async fn deadline_server(
    log: Log,
    stop: ShutdownSignal,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fast = axum::routing::get(|request: axum::extract::Request| async move {
        let budget = request
            .extensions()
            .get::<IncomingDeadline>()
            .unwrap()
            .budget();
        let left = current_deadline().remaining().unwrap();
        format!("{} {}", budget.as_millis(), left <= budget)
    });
    let slow_log = log.clone();
    let slow = axum::routing::get(move || {
        let log = slow_log.clone();
        async move {
            match sleep(Duration::from_secs(60)).await {
                Ok(()) => (StatusCode::OK, String::from("slept")),
                Err(cancelled) => {
                    log.push(format!("handler cancelled: {}", cancelled.reason()));
                    (StatusCode::GATEWAY_TIMEOUT, cancelled.reason().to_string())
                }
            }
        }
    });
    let hang_log = log.clone();
    let hang = axum::routing::get(move || {
        let log = hang_log.clone();
        async move {
            Nursery::new()
                .run(|n| async move {
                    let child_log = log.clone();
                    n.spawn(async move {
                        child_log.push("fan-out started");
                        let cancelled = cancelled().await;
                        child_log.push(format!("fan-out cleaned up: {}", cancelled.reason()));
                        Err::<(), _>(cancelled)
                    });
                    Err::<(), _>(cancelled().await)
                })
                .await
                .ok();
            "never"
        }
    });
    let app = axum::Router::new()
        .route("/fast", fast)
        .route("/slow", slow)
        .route("/hang", hang)
        .layer(DeadlineLayer::new());
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
            .unwrap();
    });
    (addr, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d01_end_to_end_over_loopback_the_server_works_under_the_callers_deadline() {
    common::leak_checked(async move {
        within_socket_bound(async {
            let log = Log::default();
            let stop = CancelScope::new();
            let stop_handle = stop.handle();
            let (addr, server) = deadline_server(log.clone(), stop_handle.shutdown_signal()).await;

            let stream = TcpStream::connect(addr).await.unwrap();
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            let connection = tokio::spawn(connection);
            let sender = Arc::new(tokio::sync::Mutex::new(sender));
            let client = PropagateDeadlineLayer::new().layer(service_fn(
                move |request: Request<Empty<Bytes>>| {
                    let sender = sender.clone();
                    async move {
                        let mut sender = sender.lock().await;
                        sender.ready().await?; // the previous exchange may still be finishing
                        sender.send_request(request).await
                    }
                },
            ));
            let get = |path: &str| {
                Request::get(format!("http://{addr}{path}"))
                    .body(Empty::<Bytes>::new())
                    .unwrap()
            };

            // The server reads the budget the client had left: never more.
            let out = move_on_after(Duration::from_secs(5), async {
                let response = client.clone().oneshot(get("/fast")).await.unwrap();
                Ok::<_, Cancelled>(text(response).await)
            })
            .await
            .unwrap()
            .unwrap();
            assert_eq!(out.0, StatusCode::OK);
            let (budget, within) = out.1.split_once(' ').unwrap();
            let budget: u64 = budget.parse().unwrap();
            assert!(
                budget > 0 && budget <= 5000,
                "never more than the client had: {budget}"
            );
            assert_eq!(within, "true", "the handler runs under that budget");

            // A 300 ms budget: the handler is cancelled by the deadline it was sent.
            let out = move_on_after(Duration::from_millis(300), async {
                let response = client.clone().oneshot(get("/slow")).await.unwrap();
                Ok::<_, Cancelled>(text(response).await)
            })
            .await
            .unwrap()
            .unwrap();
            assert_eq!(
                out,
                (StatusCode::GATEWAY_TIMEOUT, String::from("deadline passed"))
            );
            assert_eq!(log.events(), ["handler cancelled: deadline passed"]);

            drop(client);
            let _ = connection.await;
            stop_handle.cancel();
            server.await.unwrap();
        })
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d01_end_to_end_a_client_that_hangs_up_stops_the_servers_fan_out() {
    common::leak_checked(async move {
        within_socket_bound(async {
            let log = Log::default();
            let stop = CancelScope::new();
            let stop_handle = stop.handle();
            let (addr, server) = deadline_server(log.clone(), stop_handle.shutdown_signal()).await;

            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            let connection = tokio::spawn(connection);
            let request = Request::get(format!("http://{addr}/hang"))
                .header("x-request-timeout-ms", "60000")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = tokio::spawn(sender.send_request(request));
            wait_until_async(|| log.events().contains(&String::from("fan-out started"))).await;
            // The client goes away.
            response.abort();
            connection.abort();
            drop(sender);
            wait_until_async(|| log.events().len() == 2).await;
            assert_eq!(
                log.events(),
                [
                    "fan-out started",
                    "fan-out cleaned up: explicit cancel: the nursery's future was dropped"
                ]
            );
            stop_handle.cancel();
            server.await.unwrap();
            no_hang_real(orphans_finished()).await;
        })
        .await;
    })
    .await
}

/// Waits (real time, yielding) until `condition` holds; the socket tests' hang bound applies.
async fn wait_until_async(mut condition: impl FnMut() -> bool) {
    while !condition() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn no_hang_real<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(SOCKET_HANG_BOUND, future)
        .await
        .expect("hang")
}

/// Session 10's review: the inner service is called inside the request's scope, so a proxy
/// (`DeadlineLayer` around `PropagateDeadlineLayer` around a client) forwards the incoming
/// deadline; it forwarded none (its `call` ran outside the scope and cleared the headers).
#[tokio::test(start_paused = true)]
async fn d01_a_proxy_forwards_the_incoming_deadline() {
    let backend = service_fn(|request: Request<()>| async move {
        let header = request
            .headers()
            .get("x-request-timeout-ms")
            .map(|value| value.to_str().unwrap().to_owned());
        Ok::<_, Infallible>(Response::new(header))
    });
    let proxy = DeadlineLayer::new().layer(PropagateDeadlineLayer::new().layer(backend));
    let request = request_with(&[("x-request-timeout-ms", "800")]);
    let response = proxy.oneshot(request).await.unwrap();
    assert_eq!(response.body().as_deref(), Some("800"));
}

/// The same, seen from a handler that reads the deadline in its `call`, before its future.
#[tokio::test(start_paused = true)]
async fn d01_the_inner_services_call_runs_under_the_incoming_deadline() {
    let service = DeadlineLayer::new().layer(service_fn(|_: Request<()>| {
        let left = current_deadline().remaining();
        async move { Ok::<_, Infallible>(Response::new(left)) }
    }));
    let request = request_with(&[("x-request-timeout-ms", "800")]);
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(*response.body(), Some(Duration::from_millis(800)));
}

/// Session 10's review: under a millisecond left with the milliseconds header on, the request
/// is not sent, and the error is an echo of the scope's deadline (the scope is cancelled
/// there and then): a scope absorbs it and a nursery child is not failed by it. It was a
/// plain error before the deadline service fired, 1 ms later.
#[tokio::test(start_paused = true)]
async fn d01_a_deadline_too_close_to_write_is_an_echo_of_the_scopes_deadline() {
    common::leak_checked(async {
        let sent = |mut request: Request<()>| {
            propagate_deadline(&mut request).map_err(io::Error::from)?;
            Ok::<_, io::Error>("sent")
        };
        let out = move_on_after(Duration::from_micros(500), async { sent(Request::new(())) }).await;
        assert!(matches!(out, Ok(None)), "{out:?}");

        // Linked scope (a node), the same.
        let scope = CancelScope::new().with_timeout(Duration::from_micros(500));
        let handle = scope.handle();
        let out = scope
            .run(async {
                let _ = current_scope();
                sent(Request::new(()))
            })
            .await;
        assert!(matches!(out, Ok(None)), "{out:?}");
        assert!(handle.cancelled_caught());

        // A nursery child under that deadline: cancelled, not failed (no fail-fast, no
        // failure reported): the nursery passes the deadline's cancellation on.
        let out = move_on_after(Duration::from_micros(500), async {
            Nursery::new()
                .run(|n: NurseryHandle<io::Error>| async move {
                    n.spawn(async move { sent(Request::new(())).map(|_| ()) });
                    Err::<(), _>(io::Error::from(cancelled().await))
                })
                .await
        })
        .await;
        assert!(matches!(out, Ok(None)), "{out:?}");
    })
    .await;
}
