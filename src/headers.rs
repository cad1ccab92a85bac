//! Deadlines across processes (SPEC D1): the wire formats that carry a deadline in a request,
//! `grpc-timeout` and `x-request-timeout-ms`, written from the effective deadline
//! ([`current_deadline`]) and read back into a deadline on tokio's clock.
//!
//! Only the *remaining time* crosses the wire, never an absolute time: the two machines'
//! clocks need not agree. Writing rounds down, so the callee never gets more time than the
//! caller has left; a deadline that has already passed is not sent, the call fails at once
//! with [`DeadlinePassed`]. Reading takes the smaller of the two headers, rejects malformed
//! values with a typed [`MalformedTimeout`] and clamps oversized ones to a configured cap
//! (never a panic, whatever the bytes).
//!
//! The formats:
//!
//! - `grpc-timeout` (gRPC over HTTP/2): `TimeoutValue TimeoutUnit`, where the value is a
//!   positive integer of at most 8 ASCII digits and the unit one of `H` (hours), `M`
//!   (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds), `n` (nanoseconds).
//!   Written with the finest unit whose value fits in 8 digits ([`GrpcTimeout`]).
//! - `x-request-timeout-ms` (name configurable): the remaining time in whole milliseconds,
//!   at most 20 ASCII digits.

use std::error::Error;
use std::fmt;
use std::io;
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use tokio::time::Instant;

use crate::cancelled::Cancelled;
use crate::deadline::{EffectiveDeadline, current_deadline};
use crate::point::check_cancelled;

/// The gRPC timeout header, `grpc-timeout`.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The default name of the plain HTTP timeout header, `x-request-timeout-ms`.
pub const REQUEST_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-request-timeout-ms");

/// The default cap on a deadline read from a request: one hour. A caller asking for more
/// gets this much ([`IncomingDeadline::clamped`] says so).
pub const DEFAULT_CAP: Duration = Duration::from_secs(3600);

/// The largest `TimeoutValue` of `grpc-timeout`: 8 digits.
const GRPC_MAX_VALUE: u32 = 99_999_999;

/// The longest valid `grpc-timeout`: 8 digits and a unit.
const GRPC_MAX_LEN: usize = 9;

/// The longest valid millisecond value: 20 digits (`u64::MAX` has 20).
const MILLIS_MAX_LEN: usize = 20;

/// The unit of a `grpc-timeout` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimeUnit {
    /// `n`
    Nanos,
    /// `u`
    Micros,
    /// `m`
    Millis,
    /// `S`
    Seconds,
    /// `M`
    Minutes,
    /// `H`
    Hours,
}

impl TimeUnit {
    /// Finest first: the order in which [`GrpcTimeout::from_remaining`] tries them.
    const ALL: [TimeUnit; 6] = [
        TimeUnit::Nanos,
        TimeUnit::Micros,
        TimeUnit::Millis,
        TimeUnit::Seconds,
        TimeUnit::Minutes,
        TimeUnit::Hours,
    ];

    /// The letter of the unit on the wire.
    ///
    /// ```
    /// use tokio_nursery::TimeUnit;
    /// assert_eq!(TimeUnit::Millis.letter(), 'm');
    /// assert_eq!(TimeUnit::Minutes.letter(), 'M');
    /// ```
    pub fn letter(self) -> char {
        match self {
            TimeUnit::Nanos => 'n',
            TimeUnit::Micros => 'u',
            TimeUnit::Millis => 'm',
            TimeUnit::Seconds => 'S',
            TimeUnit::Minutes => 'M',
            TimeUnit::Hours => 'H',
        }
    }

    /// The unit a wire letter stands for (case matters: `m` is milliseconds, `M` minutes).
    ///
    /// ```
    /// use tokio_nursery::TimeUnit;
    /// assert_eq!(TimeUnit::from_letter('S'), Some(TimeUnit::Seconds));
    /// assert_eq!(TimeUnit::from_letter('s'), None);
    /// ```
    pub fn from_letter(letter: char) -> Option<TimeUnit> {
        Some(match letter {
            'n' => TimeUnit::Nanos,
            'u' => TimeUnit::Micros,
            'm' => TimeUnit::Millis,
            'S' => TimeUnit::Seconds,
            'M' => TimeUnit::Minutes,
            'H' => TimeUnit::Hours,
            _ => return None,
        })
    }

    fn nanos(self) -> u64 {
        match self {
            TimeUnit::Nanos => 1,
            TimeUnit::Micros => 1_000,
            TimeUnit::Millis => 1_000_000,
            TimeUnit::Seconds => 1_000_000_000,
            TimeUnit::Minutes => 60_000_000_000,
            TimeUnit::Hours => 3_600_000_000_000,
        }
    }
}

/// A `grpc-timeout` value: at most 8 digits and a unit.
///
/// ```
/// use std::time::Duration;
/// use tokio_nursery::{GrpcTimeout, TimeUnit};
///
/// // The finest unit whose value fits in 8 digits, rounded down.
/// let t = GrpcTimeout::from_remaining(Duration::from_millis(1500)).unwrap();
/// assert_eq!(t.to_string(), "1500000u");
/// assert_eq!(t.duration(), Duration::from_millis(1500));
///
/// let parsed: GrpcTimeout = "250m".parse().unwrap();
/// assert_eq!((parsed.value(), parsed.unit()), (250, TimeUnit::Millis));
/// assert!("250ms".parse::<GrpcTimeout>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrpcTimeout {
    value: u32,
    unit: TimeUnit,
}

impl GrpcTimeout {
    /// The largest value the format carries: `99999999H`, about 11,400 years.
    pub const MAX: GrpcTimeout = GrpcTimeout {
        value: GRPC_MAX_VALUE,
        unit: TimeUnit::Hours,
    };

    /// A timeout of `value` units, if `value` has at most 8 digits.
    ///
    /// ```
    /// use tokio_nursery::{GrpcTimeout, MalformedTimeout, TimeUnit};
    /// assert!(GrpcTimeout::new(99_999_999, TimeUnit::Seconds).is_ok());
    /// assert_eq!(
    ///     GrpcTimeout::new(100_000_000, TimeUnit::Seconds),
    ///     Err(MalformedTimeout::TooLong)
    /// );
    /// ```
    pub fn new(value: u32, unit: TimeUnit) -> Result<GrpcTimeout, MalformedTimeout> {
        if value > GRPC_MAX_VALUE {
            return Err(MalformedTimeout::TooLong);
        }
        Ok(GrpcTimeout { value, unit })
    }

    /// The timeout to send when `remaining` is left: the finest unit whose value fits in 8
    /// digits, rounded down so the callee never gets more time than remains. `None` when
    /// nothing remains (a passed deadline is not sent). More than [`GrpcTimeout::MAX`] is
    /// sent as `MAX`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio_nursery::GrpcTimeout;
    ///
    /// let fmt = |d| GrpcTimeout::from_remaining(d).map(|t| t.to_string());
    /// assert_eq!(fmt(Duration::from_nanos(99_999_999)).as_deref(), Some("99999999n"));
    /// assert_eq!(fmt(Duration::from_nanos(100_000_001)).as_deref(), Some("100000u"));
    /// assert_eq!(fmt(Duration::from_secs(86_400)).as_deref(), Some("86400000m"));
    /// assert_eq!(fmt(Duration::ZERO), None);
    /// ```
    pub fn from_remaining(remaining: Duration) -> Option<GrpcTimeout> {
        let nanos = remaining.as_nanos();
        if nanos == 0 {
            return None;
        }
        for unit in TimeUnit::ALL {
            let value = nanos / u128::from(unit.nanos());
            if value <= u128::from(GRPC_MAX_VALUE) {
                // Not zero: the finest unit that fits is `n`, or a coarser one chosen only
                // because the finer value had more than 8 digits.
                let value = u32::try_from(value).unwrap_or(GRPC_MAX_VALUE);
                return Some(GrpcTimeout { value, unit });
            }
        }
        Some(GrpcTimeout::MAX)
    }

    /// Parses a header value (surrounding spaces and tabs are ignored, as HTTP does).
    ///
    /// A value of `0` is accepted and means no time is left; the writer never sends it.
    ///
    /// ```
    /// use tokio_nursery::{GrpcTimeout, MalformedTimeout};
    ///
    /// assert_eq!(GrpcTimeout::parse(b"5S").unwrap().duration().as_secs(), 5);
    /// assert_eq!(GrpcTimeout::parse(b""), Err(MalformedTimeout::Empty));
    /// assert_eq!(GrpcTimeout::parse(b"-5S"), Err(MalformedTimeout::Negative));
    /// assert_eq!(GrpcTimeout::parse(b"123456789S"), Err(MalformedTimeout::TooLong));
    /// assert_eq!(GrpcTimeout::parse(b"5s"), Err(MalformedTimeout::UnknownUnit('s')));
    /// assert_eq!(GrpcTimeout::parse(b"5"), Err(MalformedTimeout::MissingUnit));
    /// assert_eq!(GrpcTimeout::parse("5\u{b5}".as_bytes()), Err(MalformedTimeout::NotAscii));
    /// ```
    pub fn parse(value: &[u8]) -> Result<GrpcTimeout, MalformedTimeout> {
        let value = trim(value);
        if value.is_empty() {
            return Err(MalformedTimeout::Empty);
        }
        if value.len() > GRPC_MAX_LEN {
            return Err(MalformedTimeout::TooLong);
        }
        if !value.is_ascii() {
            return Err(MalformedTimeout::NotAscii);
        }
        if value[0] == b'-' {
            return Err(MalformedTimeout::Negative);
        }
        let (digits, unit) = value.split_at(value.len() - 1);
        let unit = unit[0];
        if unit.is_ascii_digit() {
            return Err(MalformedTimeout::MissingUnit);
        }
        let unit = TimeUnit::from_letter(char::from(unit))
            .ok_or(MalformedTimeout::UnknownUnit(char::from(unit)))?;
        // At most 8 digits by the length check: no overflow.
        let value = digits_value(digits)?;
        let value = u32::try_from(value).map_err(|_| MalformedTimeout::TooLong)?;
        GrpcTimeout::new(value, unit)
    }

    /// The number of units.
    pub fn value(&self) -> u32 {
        self.value
    }

    /// The unit.
    pub fn unit(&self) -> TimeUnit {
        self.unit
    }

    /// The time this value stands for.
    pub fn duration(&self) -> Duration {
        // At most 99_999_999 * 3_600e9 ns, about 3.6e20: over u64 nanos, so in seconds.
        let nanos = u128::from(self.value) * u128::from(self.unit.nanos());
        let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
        Duration::new(secs, (nanos % 1_000_000_000) as u32)
    }
}

impl fmt::Display for GrpcTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.value, self.unit.letter())
    }
}

impl FromStr for GrpcTimeout {
    type Err = MalformedTimeout;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GrpcTimeout::parse(s.as_bytes())
    }
}

impl From<GrpcTimeout> for HeaderValue {
    fn from(timeout: GrpcTimeout) -> HeaderValue {
        HeaderValue::from_str(&timeout.to_string())
            .expect("ASCII digits and a unit letter always form a valid header value")
    }
}

/// Parses an `x-request-timeout-ms` value: whole milliseconds, at most 20 ASCII digits
/// (surrounding spaces and tabs are ignored). A value beyond `u64::MAX` milliseconds
/// saturates there (the reader then clamps it to its cap).
///
/// ```
/// use std::time::Duration;
/// use tokio_nursery::{parse_timeout_ms, MalformedTimeout};
///
/// assert_eq!(parse_timeout_ms(b"1500"), Ok(Duration::from_millis(1500)));
/// assert_eq!(parse_timeout_ms(b"1.5"), Err(MalformedTimeout::InvalidValue));
/// assert_eq!(parse_timeout_ms(b"-1"), Err(MalformedTimeout::Negative));
/// assert_eq!(parse_timeout_ms(&[b'9'; 21]), Err(MalformedTimeout::TooLong));
/// ```
pub fn parse_timeout_ms(value: &[u8]) -> Result<Duration, MalformedTimeout> {
    let value = trim(value);
    if value.is_empty() {
        return Err(MalformedTimeout::Empty);
    }
    if value.len() > MILLIS_MAX_LEN {
        return Err(MalformedTimeout::TooLong);
    }
    if !value.is_ascii() {
        return Err(MalformedTimeout::NotAscii);
    }
    if value[0] == b'-' {
        return Err(MalformedTimeout::Negative);
    }
    let millis = digits_value(value)?;
    Ok(Duration::from_millis(millis))
}

/// The `x-request-timeout-ms` value for `remaining`: whole milliseconds, rounded down.
/// `None` when less than a millisecond remains (a zero would tell the callee the deadline
/// has passed).
///
/// ```
/// use std::time::Duration;
/// use tokio_nursery::format_timeout_ms;
///
/// assert_eq!(format_timeout_ms(Duration::from_micros(2999)), Some(2));
/// assert_eq!(format_timeout_ms(Duration::from_micros(999)), None);
/// ```
pub fn format_timeout_ms(remaining: Duration) -> Option<u64> {
    match u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX) {
        0 => None,
        millis => Some(millis),
    }
}

/// The value of a string of ASCII digits, saturating at `u64::MAX`.
fn digits_value(digits: &[u8]) -> Result<u64, MalformedTimeout> {
    if digits.is_empty() {
        return Err(MalformedTimeout::MissingValue);
    }
    digits.iter().try_fold(0u64, |value, &byte| {
        if !byte.is_ascii_digit() {
            return Err(MalformedTimeout::InvalidValue);
        }
        Ok(value
            .saturating_mul(10)
            .saturating_add(u64::from(byte - b'0')))
    })
}

/// Strips HTTP's optional whitespace (spaces and tabs) around a field value.
fn trim(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// Why a timeout header value was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MalformedTimeout {
    /// The value is empty.
    Empty,
    /// Longer than the format allows: more than 8 digits for `grpc-timeout`, more than 20
    /// for milliseconds.
    TooLong,
    /// A byte outside ASCII.
    NotAscii,
    /// A negative number.
    Negative,
    /// Something other than ASCII digits where the number should be.
    InvalidValue,
    /// `grpc-timeout`: a unit with no number before it.
    MissingValue,
    /// `grpc-timeout`: a number with no unit after it.
    MissingUnit,
    /// `grpc-timeout`: a unit other than `H`, `M`, `S`, `m`, `u`, `n`.
    UnknownUnit(char),
}

impl fmt::Display for MalformedTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MalformedTimeout::Empty => f.write_str("the value is empty"),
            MalformedTimeout::TooLong => f.write_str("the value is longer than the format allows"),
            MalformedTimeout::NotAscii => f.write_str("the value is not ASCII"),
            MalformedTimeout::Negative => f.write_str("the value is negative"),
            MalformedTimeout::InvalidValue => f.write_str("the value is not a whole number"),
            MalformedTimeout::MissingValue => f.write_str("the unit has no number before it"),
            MalformedTimeout::MissingUnit => {
                f.write_str("the number has no unit (one of H M S m u n) after it")
            }
            MalformedTimeout::UnknownUnit(unit) => {
                write!(f, "unknown unit {unit:?} (expected one of H M S m u n)")
            }
        }
    }
}

impl Error for MalformedTimeout {}

/// A timeout header of a request could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderError {
    header: HeaderName,
    kind: MalformedTimeout,
}

impl HeaderError {
    /// The header that was malformed.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// What was wrong with it.
    pub fn kind(&self) -> MalformedTimeout {
        self.kind
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed {} header: {}", self.header, self.kind)
    }
}

impl Error for HeaderError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.kind)
    }
}

/// The deadline has passed (or the scope is cancelled): the request was not sent.
///
/// When the scope was effectively cancelled it carries that [`Cancelled`] as its
/// [`source`](Error::source), so a scope recognises it inside boxed errors and `io::Error`
/// ([`CancelError`](crate::CancelError)) and absorbs it as usual.
#[derive(Clone, Debug)]
pub struct DeadlinePassed {
    deadline: Option<Instant>,
    cancelled: Option<Cancelled>,
}

impl DeadlinePassed {
    /// The deadline that passed, when it is known (not for a scope cancelled otherwise).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The cancellation of the current scope, when that is why nothing was sent.
    pub fn cancelled(&self) -> Option<&Cancelled> {
        self.cancelled.as_ref()
    }
}

impl fmt::Display for DeadlinePassed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cancelled {
            Some(cancelled) => write!(f, "request not sent: {cancelled}"),
            None => f.write_str("request not sent: the deadline has passed"),
        }
    }
}

impl Error for DeadlinePassed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cancelled.as_ref().map(|c| c as &(dyn Error + 'static))
    }
}

impl From<DeadlinePassed> for io::Error {
    /// An `io::Error` of kind `TimedOut`.
    fn from(passed: DeadlinePassed) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, passed)
    }
}

/// Which header a deadline read from a request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadlineSource {
    /// `grpc-timeout`.
    GrpcTimeout,
    /// The milliseconds header (`x-request-timeout-ms` unless renamed).
    Millis,
}

/// A deadline read from a request's headers by [`DeadlineHeaders::read`]. The layer
/// ([`DeadlineLayer`](crate::DeadlineLayer)) also stores it in the request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IncomingDeadline {
    deadline: Instant,
    budget: Duration,
    clamped: bool,
    source: DeadlineSource,
}

impl IncomingDeadline {
    /// The deadline on tokio's clock: when the request was read plus the budget.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The time the caller gave (after clamping).
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// The caller asked for more than the cap and got the cap.
    pub fn clamped(&self) -> bool {
        self.clamped
    }

    /// Which header won (the smaller one).
    pub fn source(&self) -> DeadlineSource {
        self.source
    }

    /// No time was left: the caller's deadline had passed (a `0` budget).
    pub fn has_passed(&self) -> bool {
        self.budget.is_zero()
    }
}

/// Which deadline headers to write and read, and the cap on what is read (SPEC D1).
///
/// By default both `grpc-timeout` and `x-request-timeout-ms` are written and read, and a
/// deadline read is capped at [`DEFAULT_CAP`] (one hour).
///
/// ```
/// use std::time::Duration;
/// use http::HeaderMap;
/// use tokio::time::Instant;
/// use tokio_nursery::{move_on_after, Cancelled, DeadlineHeaders};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let headers = DeadlineHeaders::new();
///
/// // Caller: inside a scope with 2 s left, write the remaining time.
/// let mut outgoing = HeaderMap::new();
/// move_on_after(Duration::from_secs(2), async {
///     headers.write_current(&mut outgoing).unwrap();
///     Ok::<_, Cancelled>(())
/// })
/// .await
/// .unwrap();
/// assert_eq!(outgoing["grpc-timeout"], "2000000u");
/// assert_eq!(outgoing["x-request-timeout-ms"], "2000");
///
/// // Callee: read it back into a deadline on its own clock.
/// let incoming = headers.read(&outgoing).unwrap().unwrap();
/// assert_eq!(incoming.deadline(), Instant::now() + Duration::from_secs(2));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct DeadlineHeaders {
    grpc: bool,
    millis: Option<HeaderName>,
    cap: Duration,
}

impl Default for DeadlineHeaders {
    fn default() -> Self {
        Self::new()
    }
}

impl DeadlineHeaders {
    /// Both headers, the default names, a cap of [`DEFAULT_CAP`].
    pub fn new() -> Self {
        DeadlineHeaders {
            grpc: true,
            millis: Some(REQUEST_TIMEOUT_MS),
            cap: DEFAULT_CAP,
        }
    }

    /// Whether `grpc-timeout` is written and read (on by default).
    pub fn grpc_timeout(self, enabled: bool) -> Self {
        DeadlineHeaders {
            grpc: enabled,
            ..self
        }
    }

    /// The name of the milliseconds header (`x-request-timeout-ms` by default); `None` to
    /// neither write nor read it.
    ///
    /// ```
    /// use http::HeaderName;
    /// use tokio_nursery::DeadlineHeaders;
    ///
    /// let headers = DeadlineHeaders::new()
    ///     .millis_header(Some(HeaderName::from_static("x-budget-ms")));
    /// ```
    pub fn millis_header(self, name: Option<HeaderName>) -> Self {
        DeadlineHeaders {
            millis: name,
            ..self
        }
    }

    /// The most time a deadline read from a request may give; more is clamped to it.
    pub fn cap(self, cap: Duration) -> Self {
        DeadlineHeaders { cap, ..self }
    }

    /// Writes the effective deadline of the code being polled ([`current_deadline`]) into
    /// `headers`: see [`write`](Self::write).
    ///
    /// Under a deadline, a tighter budget `headers` already carry (a per-call timeout set by
    /// hand; the smallest well-formed value of the enabled headers) is kept instead, written
    /// into every enabled header: the callee never gets more time than either allows. When
    /// that budget is zero (or under a millisecond with the milliseconds header on, which
    /// cannot carry it), nothing is written and the error carries no cancellation (no scope
    /// of ours expired; its `deadline` is the header's). A budget above the [`cap`](Self::cap)
    /// is written as it is (the cap is the reading side's).
    ///
    /// Without a deadline (none, or a shield) the headers are removed as `write` does: the
    /// callee gets the caller's deadline, none, and a value there may be stale (a forwarded
    /// request's). Give a call its own budget with a scope
    /// ([`move_on_after`](crate::move_on_after), [`fail_after`](crate::fail_after)) rather
    /// than a header.
    ///
    /// When the scope is effectively cancelled the error carries its [`Cancelled`]. When the
    /// deadline has passed on the clock but was not fired yet, or is too close to be written
    /// (under a millisecond with the milliseconds header), the scope it belongs to is
    /// cancelled there and then (reason [`Deadline`](crate::CancelReason::Deadline)), and the
    /// error carries that cancellation: returned through the scope, it is an echo the scope
    /// absorbs, not a failure.
    pub fn write_current(
        &self,
        headers: &mut HeaderMap,
    ) -> Result<Option<Duration>, DeadlinePassed> {
        let deadline = current_deadline();
        // A tighter budget already in the headers (a per-call timeout set by hand) is kept:
        // the callee never gets more time than either allows.
        if let Some(budget) = self.tighter_budget_in(headers, &deadline) {
            // Written as it is (not through an instant read back later, a millisecond short
            // on the real clock). Too small, it is the header's own: no scope of ours to
            // expire.
            self.remove(headers);
            let at = Instant::from_std(crate::node::later(Instant::now().into_std(), budget));
            return self.write_remaining(budget, at, headers).map(Some);
        }
        match deadline {
            EffectiveDeadline::Passed => {
                self.remove(headers);
                Err(DeadlinePassed {
                    deadline: None,
                    cancelled: check_cancelled().err(),
                })
            }
            deadline => self.write(deadline, headers).map_err(|passed| {
                // Passed on the clock before the deadline service fired it, or too close to
                // be written: the scope whose deadline it is expires now, so the error is an
                // echo of its cancellation (a scope absorbs it, a nursery child is not
                // failed by it: SPEC S15).
                if let Some(at) = passed.deadline {
                    crate::context::with_current(|frame| {
                        if let Some(frame) = frame {
                            frame.expire_deadline(at.into_std());
                        }
                    });
                }
                DeadlinePassed {
                    cancelled: check_cancelled().err(),
                    ..passed
                }
            }),
        }
    }

    /// Writes `deadline` into `headers` as the time remaining on tokio's clock, replacing
    /// the values these headers had. Returns the time written (rounded down to what the
    /// headers carry), or `None` for an unbounded deadline (the headers are then removed).
    ///
    /// Fails with [`DeadlinePassed`], writing nothing, when the deadline has passed, or
    /// when less than a millisecond remains and the milliseconds header is enabled (it
    /// would carry zero, which means "passed").
    pub fn write(
        &self,
        deadline: EffectiveDeadline,
        headers: &mut HeaderMap,
    ) -> Result<Option<Duration>, DeadlinePassed> {
        self.remove(headers);
        let at = match deadline {
            EffectiveDeadline::Unbounded => return Ok(None),
            EffectiveDeadline::Passed => {
                return Err(DeadlinePassed {
                    deadline: None,
                    cancelled: None,
                });
            }
            EffectiveDeadline::At(at) => at,
        };
        let remaining = at.saturating_duration_since(Instant::now());
        self.write_remaining(remaining, at, headers).map(Some)
    }

    /// Writes `remaining` (the time left until `at`) into the enabled headers, which were
    /// removed: the time written, or [`DeadlinePassed`] for `at` when it cannot be written.
    fn write_remaining(
        &self,
        remaining: Duration,
        at: Instant,
        headers: &mut HeaderMap,
    ) -> Result<Duration, DeadlinePassed> {
        let passed = DeadlinePassed {
            deadline: Some(at),
            cancelled: None,
        };
        let grpc = match GrpcTimeout::from_remaining(remaining) {
            Some(grpc) => grpc,
            None => return Err(passed),
        };
        let millis = match &self.millis {
            Some(name) => match format_timeout_ms(remaining) {
                Some(millis) => Some((name.clone(), millis)),
                None => return Err(passed),
            },
            None => None,
        };
        let mut written = remaining;
        if self.grpc {
            headers.insert(GRPC_TIMEOUT, HeaderValue::from(grpc));
            written = written.min(grpc.duration());
        }
        if let Some((name, millis)) = millis {
            headers.insert(name, HeaderValue::from(millis));
            written = written.min(Duration::from_millis(millis));
        }
        Ok(written)
    }

    /// The budget `headers` already carry (the smallest well-formed value of the enabled
    /// headers), if the code has a deadline (`deadline`, its effective one) and the budget is
    /// tighter. A malformed value counts as none: the write replaces it.
    fn tighter_budget_in(
        &self,
        headers: &HeaderMap,
        deadline: &EffectiveDeadline,
    ) -> Option<Duration> {
        // Only under a deadline: without one (none, or a shield) the callee gets none, and
        // a value there is as likely stale (a forwarded request's) as set by hand.
        let EffectiveDeadline::At(at) = deadline else {
            return None;
        };
        let budget = self
            .budgets(headers)
            .filter_map(Result::ok)
            .map(|(budget, _)| budget)
            .min()?;
        (budget < at.saturating_duration_since(Instant::now())).then_some(budget)
    }

    fn remove(&self, headers: &mut HeaderMap) {
        if self.grpc {
            headers.remove(GRPC_TIMEOUT);
        }
        if let Some(name) = &self.millis {
            headers.remove(name);
        }
    }

    /// Reads the caller's deadline from `headers`: `Ok(None)` when no enabled header is
    /// present. Every value of every enabled header is read and the smallest wins; any
    /// malformed value rejects the whole read with a [`HeaderError`] naming the header. A
    /// budget above the cap is clamped to it. The deadline is now (tokio's clock) plus the
    /// budget.
    ///
    /// ```
    /// use http::{HeaderMap, HeaderValue};
    /// use tokio_nursery::{DeadlineHeaders, DeadlineSource, MalformedTimeout};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let mut headers = HeaderMap::new();
    /// headers.insert("grpc-timeout", HeaderValue::from_static("3S"));
    /// headers.insert("x-request-timeout-ms", HeaderValue::from_static("1500"));
    /// let read = DeadlineHeaders::new().read(&headers).unwrap().unwrap();
    /// assert_eq!(read.budget().as_millis(), 1500); // the smaller wins
    /// assert_eq!(read.source(), DeadlineSource::Millis);
    ///
    /// headers.insert("grpc-timeout", HeaderValue::from_static("3 seconds"));
    /// let error = DeadlineHeaders::new().read(&headers).unwrap_err();
    /// assert_eq!(error.header(), "grpc-timeout");
    /// assert_eq!(error.kind(), MalformedTimeout::UnknownUnit('s'));
    /// # }
    /// ```
    pub fn read(&self, headers: &HeaderMap) -> Result<Option<IncomingDeadline>, HeaderError> {
        let best = self.smallest_budget(headers)?;
        Ok(best.map(|(budget, source)| {
            let clamped = budget > self.cap;
            let budget = budget.min(self.cap);
            let now = Instant::now();
            IncomingDeadline {
                deadline: Instant::from_std(crate::node::later(now.into_std(), budget)),
                budget,
                clamped,
                source,
            }
        }))
    }

    /// The smallest budget of every value of every enabled header, and where it was read;
    /// any malformed value is an error naming its header.
    fn smallest_budget(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<(Duration, DeadlineSource)>, HeaderError> {
        let mut best: Option<(Duration, DeadlineSource)> = None;
        for read in self.budgets(headers) {
            let (budget, source) = read?;
            if best.is_none_or(|(smallest, _)| budget < smallest) {
                best = Some((budget, source));
            }
        }
        Ok(best)
    }

    /// Every value of every enabled header (gRPC's first), parsed.
    fn budgets<'h>(
        &'h self,
        headers: &'h HeaderMap,
    ) -> impl Iterator<Item = Result<(Duration, DeadlineSource), HeaderError>> + 'h {
        let grpc = self
            .grpc
            .then(|| headers.get_all(GRPC_TIMEOUT))
            .into_iter()
            .flatten()
            .map(|value| {
                let parsed = GrpcTimeout::parse(value.as_bytes()).map_err(|kind| HeaderError {
                    header: GRPC_TIMEOUT,
                    kind,
                })?;
                Ok((parsed.duration(), DeadlineSource::GrpcTimeout))
            });
        let millis = self.millis.iter().flat_map(move |name| {
            headers.get_all(name).into_iter().map(move |value| {
                let budget = parse_timeout_ms(value.as_bytes()).map_err(|kind| HeaderError {
                    header: name.clone(),
                    kind,
                })?;
                Ok((budget, DeadlineSource::Millis))
            })
        });
        grpc.chain(millis)
    }
}

/// Writes the effective deadline of the code being polled into `request`'s headers with
/// the default [`DeadlineHeaders`]: the outgoing side of SPEC D1 for any HTTP client that
/// takes an `http::Request`; a tighter budget the request already carries is kept
/// ([`DeadlineHeaders::write_current`]). Fails with [`DeadlinePassed`] (send nothing) when
/// the deadline has passed.
///
/// ```
/// use std::time::Duration;
/// use tokio_nursery::{move_on_after, propagate_deadline, Cancelled};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// move_on_after(Duration::from_millis(250), async {
///     let mut request = http::Request::new(());
///     propagate_deadline(&mut request).unwrap();
///     assert_eq!(request.headers()["x-request-timeout-ms"], "250");
///     Ok::<_, Cancelled>(())
/// })
/// .await
/// .unwrap();
/// # }
/// ```
pub fn propagate_deadline<B>(request: &mut Request<B>) -> Result<Option<Duration>, DeadlinePassed> {
    DeadlineHeaders::new().write_current(request.headers_mut())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_units_round_trip_at_their_boundaries() {
        for unit in TimeUnit::ALL {
            let max = GrpcTimeout::new(GRPC_MAX_VALUE, unit).unwrap();
            assert_eq!(GrpcTimeout::parse(max.to_string().as_bytes()), Ok(max));
            assert_eq!(TimeUnit::from_letter(unit.letter()), Some(unit));
        }
    }

    #[test]
    fn headers_trim_only_spaces_and_tabs() {
        assert_eq!(trim(b" \t5S\t "), b"5S");
        assert_eq!(
            GrpcTimeout::parse(b"5S\n"),
            Err(MalformedTimeout::UnknownUnit('\n'))
        );
        assert_eq!(parse_timeout_ms(b"  "), Err(MalformedTimeout::Empty));
    }

    #[test]
    fn headers_digits_saturate() {
        assert_eq!(digits_value(&[b'9'; 20]), Ok(u64::MAX));
        assert_eq!(digits_value(b""), Err(MalformedTimeout::MissingValue));
    }
}
