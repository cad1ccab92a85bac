#![cfg(feature = "http")]
//! Fuzzing the deadline header parsers and writers (SPEC D1, feature `http`): arbitrary
//! bytes and structured near-valid inputs never panic, malformed input is rejected with the
//! typed error (the one the documented grammar names), what is written parses back to no
//! more time than remained, and reading respects the cap.
//!
//! A model of each grammar (written from the docs of `GrpcTimeout::parse`,
//! `parse_timeout_ms` and `MalformedTimeout`) is compared with the parser on every input.
//!
//! `PROPTEST_CASES=100000 cargo test --release --features http --test fuzz_headers` for a
//! longer run.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use tokio::time::Instant;
use tokio_nursery::{
    DEFAULT_CAP, DeadlineHeaders, DeadlineSource, EffectiveDeadline, GRPC_TIMEOUT, GrpcTimeout,
    MalformedTimeout, REQUEST_TIMEOUT_MS, TimeUnit, format_timeout_ms, parse_timeout_ms,
};

const UNITS: [(u8, TimeUnit, u64); 6] = [
    (b'n', TimeUnit::Nanos, 1),
    (b'u', TimeUnit::Micros, 1_000),
    (b'm', TimeUnit::Millis, 1_000_000),
    (b'S', TimeUnit::Seconds, 1_000_000_000),
    (b'M', TimeUnit::Minutes, 60_000_000_000),
    (b'H', TimeUnit::Hours, 3_600_000_000_000),
];

/// HTTP's optional whitespace, spaces and tabs only.
fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// The `grpc-timeout` grammar as documented: 1 to 8 ASCII digits and a unit letter, spaces
/// and tabs around ignored; the error kinds in the order the docs list the checks.
fn model_grpc(bytes: &[u8]) -> Result<Duration, MalformedTimeout> {
    use MalformedTimeout::*;
    let v = trim(bytes);
    if v.is_empty() {
        return Err(Empty);
    }
    if v.len() > 9 {
        return Err(TooLong);
    }
    if !v.is_ascii() {
        return Err(NotAscii);
    }
    if v[0] == b'-' {
        return Err(Negative);
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let unit = unit[0];
    if unit.is_ascii_digit() {
        return Err(MissingUnit);
    }
    let Some(&(_, _, nanos)) = UNITS.iter().find(|(letter, _, _)| *letter == unit) else {
        return Err(UnknownUnit(char::from(unit)));
    };
    if digits.is_empty() {
        return Err(MissingValue);
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(InvalidValue);
    }
    let value: u128 = std::str::from_utf8(digits).unwrap().parse().unwrap();
    let total = value * u128::from(nanos);
    Ok(Duration::new(
        (total / 1_000_000_000) as u64,
        (total % 1_000_000_000) as u32,
    ))
}

/// The milliseconds grammar as documented: 1 to 20 ASCII digits, saturating at
/// `u64::MAX` ms.
fn model_millis(bytes: &[u8]) -> Result<Duration, MalformedTimeout> {
    use MalformedTimeout::*;
    let v = trim(bytes);
    if v.is_empty() {
        return Err(Empty);
    }
    if v.len() > 20 {
        return Err(TooLong);
    }
    if !v.is_ascii() {
        return Err(NotAscii);
    }
    if v[0] == b'-' {
        return Err(Negative);
    }
    if !v.iter().all(u8::is_ascii_digit) {
        return Err(InvalidValue);
    }
    let value: u128 = std::str::from_utf8(v).unwrap().parse().unwrap();
    Ok(Duration::from_millis(
        u64::try_from(value).unwrap_or(u64::MAX),
    ))
}

fn check_grpc(bytes: &[u8]) -> Result<(), TestCaseError> {
    let parsed = GrpcTimeout::parse(bytes);
    let expected = model_grpc(bytes);
    prop_assert_eq!(parsed.map(|t| t.duration()), expected, "{:?}", bytes);
    if let Ok(timeout) = parsed {
        // Canonical once written again; at most 8 digits; the unit round-trips.
        let text = timeout.to_string();
        prop_assert!(text.len() <= 9);
        prop_assert_eq!(GrpcTimeout::parse(text.as_bytes()), Ok(timeout));
        prop_assert_eq!(text.parse::<GrpcTimeout>(), Ok(timeout));
        prop_assert_eq!(
            TimeUnit::from_letter(timeout.unit().letter()),
            Some(timeout.unit())
        );
        prop_assert!(timeout.value() <= 99_999_999);
        prop_assert_eq!(
            GrpcTimeout::new(timeout.value(), timeout.unit()),
            Ok(timeout)
        );
        let _ = HeaderValue::from(timeout);
    }
    if let Err(error) = parsed {
        prop_assert!(!error.to_string().is_empty());
    }
    Ok(())
}

fn check_millis(bytes: &[u8]) -> Result<(), TestCaseError> {
    let parsed = parse_timeout_ms(bytes);
    prop_assert_eq!(parsed, model_millis(bytes), "{:?}", bytes);
    if let Err(error) = parsed {
        prop_assert!(!error.to_string().is_empty());
    }
    Ok(())
}

/// Near-valid text: optional whitespace, optional sign, digits (sometimes too many), an
/// optional dot or junk, an optional unit (valid, wrong case, unknown, multi-byte).
fn near_valid() -> impl Strategy<Value = Vec<u8>> {
    let ws = prop_oneof![
        Just(""),
        Just(" "),
        Just("\t"),
        Just(" \t "),
        Just("\n"),
        Just("\r")
    ];
    let sign = prop_oneof![4 => Just(""), 1 => Just("-"), 1 => Just("+")];
    let digits = prop_oneof![
        "[0-9]{1,8}",
        "[0-9]{9,21}",
        "0{0,30}[1-9]",
        Just(String::new()),
        "[\u{0660}-\u{0669}]{1,3}",
    ];
    let junk =
        prop_oneof![6 => Just(""), 1 => Just("."), 1 => Just("e3"), 1 => Just("_"), 1 => Just(" ")];
    let unit = prop_oneof![
        Just("n"),
        Just("u"),
        Just("m"),
        Just("S"),
        Just("M"),
        Just("H"),
        Just(""),
        Just("s"),
        Just("h"),
        Just("ms"),
        Just("X"),
        Just("\u{b5}"),
        Just("\u{0}"),
    ];
    (ws.clone(), sign, digits, junk, unit, ws)
        .prop_map(|(a, s, d, j, u, b)| format!("{a}{s}{d}{j}{u}{b}").into_bytes())
}

/// Any bytes, biased towards the grammar's alphabet.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        3 => prop::sample::select(b"0123456789numSMH -\t+.".to_vec()),
        1 => any::<u8>(),
    ];
    prop_oneof![
        prop::collection::vec(byte, 0..32),
        prop::collection::vec(any::<u8>(), 0..64),
        // Hostile lengths.
        (0usize..3, 20usize..5000).prop_map(|(kind, n)| vec![[b'9', b' ', 0xff][kind]; n]),
    ]
}

fn durations() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        (0u64..2_000_000).prop_map(Duration::from_nanos),
        (0u64..2_000_000_000_000).prop_map(Duration::from_nanos),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        // Around each unit boundary (8 digits of the finer unit).
        (0usize..6, 0u64..3).prop_map(|(u, d)| {
            let nanos = u128::from(UNITS[u].2) * 100_000_000;
            let nanos = nanos - 1 + u128::from(d);
            Duration::new(
                (nanos / 1_000_000_000) as u64,
                (nanos % 1_000_000_000) as u32,
            )
        }),
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![near_valid(), bytes()]
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn fuzz_grpc_parse_matches_the_documented_grammar_on_any_bytes(b in bytes()) {
        check_grpc(&b)?;
    }

    #[test]
    fn fuzz_grpc_parse_matches_the_documented_grammar_near_valid(b in near_valid()) {
        check_grpc(&b)?;
    }

    #[test]
    fn fuzz_millis_parse_matches_the_documented_grammar_on_any_bytes(b in bytes()) {
        check_millis(&b)?;
    }

    #[test]
    fn fuzz_millis_parse_matches_the_documented_grammar_near_valid(b in near_valid()) {
        check_millis(&b)?;
    }

    #[test]
    fn fuzz_grpc_new_accepts_exactly_8_digits(value in any::<u32>(), u in 0usize..6) {
        let unit = UNITS[u].1;
        match GrpcTimeout::new(value, unit) {
            Ok(t) => {
                prop_assert!(value <= 99_999_999);
                prop_assert_eq!((t.value(), t.unit()), (value, unit));
                prop_assert_eq!(t.duration().as_nanos(), u128::from(value) * u128::from(UNITS[u].2));
            }
            Err(e) => {
                prop_assert!(value > 99_999_999);
                prop_assert_eq!(e, MalformedTimeout::TooLong);
            }
        }
    }

    #[test]
    fn fuzz_format_then_parse_round_trips_and_never_gives_more_time(remaining in durations()) {
        match GrpcTimeout::from_remaining(remaining) {
            None => prop_assert!(remaining.is_zero()),
            Some(t) => {
                let parsed = GrpcTimeout::parse(t.to_string().as_bytes()).unwrap();
                prop_assert_eq!(parsed, t);
                prop_assert!(parsed.duration() <= remaining);
                prop_assert!(!parsed.duration().is_zero());
                if t != GrpcTimeout::MAX {
                    // The finest unit that fits: the next finer unit would need 9 digits.
                    let u = UNITS.iter().position(|(_, unit, _)| *unit == t.unit()).unwrap();
                    if u > 0 {
                        prop_assert!(remaining.as_nanos() / u128::from(UNITS[u - 1].2) > 99_999_999);
                    }
                    // Rounded down by less than one unit.
                    prop_assert!(remaining - parsed.duration() < Duration::from_nanos(UNITS[u].2));
                }
            }
        }
        match format_timeout_ms(remaining) {
            None => prop_assert!(remaining < Duration::from_millis(1)),
            Some(millis) => {
                let parsed = parse_timeout_ms(millis.to_string().as_bytes()).unwrap();
                prop_assert_eq!(parsed, Duration::from_millis(millis));
                prop_assert!(parsed <= remaining);
                prop_assert!(remaining - parsed < Duration::from_millis(1) || millis == u64::MAX);
            }
        }
    }

    #[test]
    fn fuzz_reading_any_headers_never_panics_rejects_with_the_header_and_respects_the_cap(
        grpc in prop::collection::vec(header_value(), 0..3),
        millis in prop::collection::vec(header_value(), 0..3),
        cap_ms in prop_oneof![Just(None), (0u64..10_000_000).prop_map(Some)],
        grpc_enabled in any::<bool>(),
        millis_enabled in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut headers = HeaderMap::new();
            let mut grpc_values = Vec::new();
            let mut millis_values = Vec::new();
            for value in &grpc {
                if let Ok(v) = HeaderValue::from_bytes(value) {
                    headers.append(GRPC_TIMEOUT, v);
                    grpc_values.push(value.clone());
                }
            }
            for value in &millis {
                if let Ok(v) = HeaderValue::from_bytes(value) {
                    headers.append(REQUEST_TIMEOUT_MS, v);
                    millis_values.push(value.clone());
                }
            }
            let mut reader = DeadlineHeaders::new()
                .grpc_timeout(grpc_enabled)
                .millis_header(millis_enabled.then_some(REQUEST_TIMEOUT_MS));
            let cap = match cap_ms {
                Some(ms) => {
                    reader = reader.cap(Duration::from_millis(ms));
                    Duration::from_millis(ms)
                }
                None => DEFAULT_CAP,
            };
            // What the documented rules say: every value of every enabled header, the
            // first malformed one (grpc first) rejects the read, the smallest wins.
            let mut expected: Result<Option<(Duration, DeadlineSource)>, (HeaderName, MalformedTimeout)> = Ok(None);
            let sources = [
                (grpc_enabled, &grpc_values, GRPC_TIMEOUT, DeadlineSource::GrpcTimeout),
                (millis_enabled, &millis_values, REQUEST_TIMEOUT_MS, DeadlineSource::Millis),
            ];
            'read: for (enabled, values, name, source) in sources {
                if !enabled {
                    continue;
                }
                for value in values.iter() {
                    let parsed = if source == DeadlineSource::GrpcTimeout {
                        model_grpc(value)
                    } else {
                        model_millis(value)
                    };
                    match parsed {
                        Err(kind) => {
                            expected = Err((name.clone(), kind));
                            break 'read;
                        }
                        Ok(budget) => {
                            if let Ok(best) = &mut expected {
                                if best.is_none_or(|(smallest, _)| budget < smallest) {
                                    *best = Some((budget, source));
                                }
                            }
                        }
                    }
                }
            }
            let now = Instant::now();
            match (reader.read(&headers), expected) {
                (Ok(None), Ok(None)) => {}
                (Ok(Some(read)), Ok(Some((budget, source)))) => {
                    prop_assert_eq!(read.budget(), budget.min(cap));
                    prop_assert_eq!(read.clamped(), budget > cap);
                    prop_assert!(read.budget() <= cap);
                    prop_assert_eq!(read.source(), source);
                    prop_assert_eq!(read.has_passed(), read.budget().is_zero());
                    prop_assert_eq!(read.deadline(), now + read.budget());
                }
                (Err(error), Err((name, kind))) => {
                    prop_assert_eq!(error.header(), &name);
                    prop_assert_eq!(error.kind(), kind);
                    prop_assert!(!error.to_string().is_empty());
                }
                (actual, expected) => {
                    prop_assert!(false, "read {:?}, expected {:?}", actual, expected);
                }
            }
            Ok(())
        })?;
    }

    #[test]
    fn fuzz_write_then_read_gives_no_more_time_than_remains(
        remaining_ns in prop_oneof![0u64..2_000_000, 0u64..10_000_000_000_000],
        grpc_enabled in any::<bool>(),
        millis_enabled in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let headers = DeadlineHeaders::new()
                .grpc_timeout(grpc_enabled)
                .millis_header(millis_enabled.then_some(REQUEST_TIMEOUT_MS))
                .cap(Duration::MAX);
            let remaining = Duration::from_nanos(remaining_ns);
            let at = Instant::now() + remaining;
            let mut map = HeaderMap::new();
            // Stale values are replaced.
            map.insert(GRPC_TIMEOUT, HeaderValue::from_static("1H"));
            map.insert(REQUEST_TIMEOUT_MS, HeaderValue::from_static("1"));
            match headers.write(EffectiveDeadline::At(at), &mut map) {
                Err(passed) => {
                    // Nothing written: under 1 ms left with the millis header on, or nothing left.
                    prop_assert!(remaining.is_zero() || (millis_enabled && remaining < Duration::from_millis(1)));
                    prop_assert_eq!(passed.deadline(), Some(at));
                    if grpc_enabled {
                        prop_assert!(map.get(GRPC_TIMEOUT).is_none());
                    }
                    if millis_enabled {
                        prop_assert!(map.get(REQUEST_TIMEOUT_MS).is_none());
                    }
                }
                Ok(written) => {
                    let written = written.unwrap();
                    prop_assert!(written <= remaining);
                    match headers.read(&map).unwrap() {
                        Some(read) => {
                            prop_assert!(read.budget() <= remaining);
                            prop_assert_eq!(read.budget(), written);
                        }
                        None => prop_assert!(!grpc_enabled && !millis_enabled),
                    }
                }
            }
            let mut map = HeaderMap::new();
            prop_assert_eq!(headers.write(EffectiveDeadline::Unbounded, &mut map).unwrap(), None);
            prop_assert!(map.is_empty());
            prop_assert!(headers.write(EffectiveDeadline::Passed, &mut map).is_err());
            prop_assert!(map.is_empty());
            Ok(())
        })?;
    }
}
