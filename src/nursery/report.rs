//! What a nursery reports: its children's and body's failures ([`Failure`]), its error
//! ([`NurseryError`]) and the report hook that receives what no one else will (SPEC N4, N6).

use std::any::Any;
use std::error::Error;
use std::fmt;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crate::cancelled::{CancelError, Cancelled};

/// Who failed: the nursery's body or one of its children.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// The body passed to [`Nursery::run`](crate::Nursery::run).
    Body,
    /// A child task.
    Child {
        /// The child's tokio task id.
        id: tokio::task::Id,
        /// The name given at spawn, if any.
        name: Option<Arc<str>>,
    },
    /// A child of a [`local_scope`](crate::local_scope), polled inside its parent's task.
    Local {
        /// The child's scope.
        scope: crate::ScopeId,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Body => f.write_str("the nursery body"),
            Origin::Child {
                id,
                name: Some(name),
            } => write!(f, "child {name:?} (task {id})"),
            Origin::Child { id, name: None } => write!(f, "child task {id}"),
            Origin::Local { scope } => write!(f, "local child ({scope})"),
        }
    }
}

/// A child or body ended with an error that is not an echo of a cancellation (SPEC S15).
#[derive(Debug)]
pub struct Failure<E> {
    origin: Origin,
    error: E,
    stray: bool,
}

impl<E> Failure<E> {
    pub(crate) fn new(origin: Origin, error: E, stray: bool) -> Self {
        Failure {
            origin,
            error,
            stray,
        }
    }

    /// Who failed.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The error it returned.
    pub fn error(&self) -> &E {
        &self.error
    }

    /// Takes the error.
    pub fn into_error(self) -> E {
        self.error
    }

    /// The error held a [`Cancelled`] although no scope around the code was cancelled: a
    /// stray cancellation (kept from an earlier one, or carried across tasks), reported as a
    /// failure naming its origin scope instead of being mistaken for an echo (SPEC S15).
    pub fn is_stray(&self) -> bool {
        self.stray
    }
}

impl<E: fmt::Display> fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.stray {
            write!(
                f,
                "{} failed with a stray cancellation: {}",
                self.origin, self.error
            )
        } else {
            write!(f, "{} failed: {}", self.origin, self.error)
        }
    }
}

/// A failure or panic taken from a nursery's outlet as it happened
/// ([`NurseryHandle::next_incident`](crate::NurseryHandle::next_incident), SPEC N5).
#[derive(Debug)]
pub enum Incident<E> {
    /// A child or the body failed.
    Failed(Failure<E>),
    /// A child or the body panicked; resume it with `std::panic::resume_unwind(payload)` to
    /// propagate it, or report it.
    Panicked {
        /// Who panicked.
        origin: Origin,
        /// The original payload.
        payload: Box<dyn Any + Send>,
    },
}

/// Why a nursery did not produce its body's value.
#[derive(Debug)]
pub enum NurseryError<E> {
    /// The body or children failed (fail-fast): every failure, the one that triggered the
    /// cancellation of the others first (SPEC N4).
    Failed(Vec<Failure<E>>),
    /// The nursery was cancelled by an enclosing scope and passes the cancellation on (the
    /// echoes of its children and body collapse into this one, SPEC N4).
    Cancelled(Cancelled),
}

impl<E> NurseryError<E> {
    /// The failures, if the nursery failed.
    pub fn failures(&self) -> &[Failure<E>] {
        match self {
            NurseryError::Failed(failures) => failures,
            NurseryError::Cancelled(_) => &[],
        }
    }
}

impl<E> From<Cancelled> for NurseryError<E> {
    fn from(cancelled: Cancelled) -> Self {
        NurseryError::Cancelled(cancelled)
    }
}

impl<E> CancelError for NurseryError<E> {
    fn as_cancelled(&self) -> Option<&Cancelled> {
        match self {
            NurseryError::Cancelled(cancelled) => Some(cancelled),
            NurseryError::Failed(_) => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for NurseryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NurseryError::Cancelled(cancelled) => write!(f, "nursery cancelled: {cancelled}"),
            NurseryError::Failed(failures) => {
                write!(f, "nursery failed")?;
                for (i, failure) in failures.iter().enumerate() {
                    let sep = if i == 0 { ": " } else { "; " };
                    write!(f, "{sep}{failure}")?;
                }
                Ok(())
            }
        }
    }
}

impl<E: fmt::Debug + fmt::Display> Error for NurseryError<E> {
    /// The propagated cancellation, so [`CancelError`] finds it inside boxed errors.
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            NurseryError::Cancelled(cancelled) => Some(cancelled),
            NurseryError::Failed(_) => None,
        }
    }
}

/// Something the nursery hands to its report hook because no one else will see it: the
/// panics that are not resumed and the failures left behind when a panic is (SPEC N6), and
/// what the root's shutdown had to cut short (SPEC N13).
#[non_exhaustive]
pub enum Report<'a> {
    /// A panic that is not the one resumed; its payload is kept intact.
    Panic {
        /// Who panicked.
        origin: &'a Origin,
        /// The original payload.
        payload: &'a (dyn Any + Send),
        /// The child was adopted from a nursery dropped in wait mode (SPEC N9).
        adopted: bool,
    },
    /// A failure that cannot be returned: a panic is resumed instead, or the child was
    /// adopted from a nursery dropped in wait mode (its error then arrives as `Debug` text).
    Failure {
        /// Who failed.
        origin: &'a Origin,
        /// The error.
        error: &'a dyn fmt::Debug,
        /// The child was adopted from a nursery dropped in wait mode (SPEC N9).
        adopted: bool,
    },
    /// The [`Root`](crate::Root)'s shutdown did not end with everything stopped by itself
    /// (SPEC N13): it aborted children that were still running when its grace period ran
    /// out or a second signal came, or it stopped waiting for work its runtime's shutdown
    /// then drops. Only the root reports this, once, at its end; a nursery's own aborts are
    /// in its [`Cancelled`](crate::Cancelled) and
    /// [`aborted_children`](crate::NurseryHandle::aborted_children).
    ShutdownCutShort {
        /// What was aborted: the root's children and those of nurseries it adopted, by name
        /// or scope id.
        aborted: &'a [String],
        /// At a signal during the shutdown: nurseries the root adopted and protected work
        /// ([`protect`](crate::protect)) it stopped waiting for.
        abandoned: usize,
        /// Entries of the runtime's orphan registry (SPEC N9: nurseries dropped in wait
        /// mode with no enclosing nursery, protected work outside any nursery) still
        /// running when a signal stopped the root's wait for them.
        orphans_left: usize,
        /// A Ctrl-C / SIGTERM during the shutdown (a second one, or the first after `main`
        /// returned) ended the wait; otherwise a grace period ran out.
        second_signal: bool,
        /// The root's task tree (SPEC O2) as it stood when the shutdown was first cut short,
        /// before anything was aborted: who was still running, and since when it had been
        /// asked to stop. `None` when only the runtime's orphans were cut short (they are
        /// outside the root's tree: [`TaskTree::orphans`](crate::TaskTree::orphans)).
        tree: Option<&'a crate::TaskTree>,
    },
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Panic {
                origin,
                payload,
                adopted,
            } => {
                let adopted = if *adopted { "adopted " } else { "" };
                match panic_message(*payload) {
                    Some(message) => write!(f, "{adopted}{origin} panicked: {message}"),
                    None => write!(f, "{adopted}{origin} panicked (payload is not a string)"),
                }
            }
            Report::Failure {
                origin,
                error,
                adopted,
            } => {
                let adopted = if *adopted { "adopted " } else { "" };
                write!(f, "{adopted}{origin} failed: {error:?}")
            }
            Report::ShutdownCutShort {
                aborted,
                abandoned,
                orphans_left,
                second_signal,
                tree,
            } => {
                let cause = match second_signal {
                    true => "a shutdown signal came during the shutdown",
                    false => "the grace period ran out",
                };
                write!(f, "the root's shutdown was cut short: {cause}")?;
                if !aborted.is_empty() {
                    write!(f, "; aborted: {}", aborted.join(", "))?;
                }
                if *abandoned > 0 {
                    write!(
                        f,
                        "; {abandoned} adopted nurseries or protected works still running are \
                         dropped with the runtime"
                    )?;
                }
                if *orphans_left > 0 {
                    write!(
                        f,
                        "; {orphans_left} orphaned nurseries or protected works still running \
                         are dropped with the runtime"
                    )?;
                }
                if let Some(tree) = tree {
                    f.write_str("; the task tree then:")?;
                    for line in tree.to_string().lines() {
                        write!(f, "\n  {line}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// Hands what an adopted child reported to `emit`, as a [`Report`] marked adopted.
pub(crate) fn adopted(report: &crate::registry::OrphanReport<Origin>, emit: impl Fn(&Report<'_>)) {
    use crate::registry::OrphanReport;
    match report {
        OrphanReport::Failure { label, error } => emit(&Report::Failure {
            origin: label,
            error: &DebugText(error),
            adopted: true,
        }),
        OrphanReport::Panic(panic) => emit(&Report::Panic {
            origin: &panic.label,
            payload: &*panic.payload,
            adopted: true,
        }),
    }
}

/// Text already formatted with `Debug` (an adopted child's error), shown as is.
pub(crate) struct DebugText<'a>(pub(crate) &'a str);

impl fmt::Debug for DebugText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The text of a panic payload, when it is a string.
pub fn panic_message(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

/// Receives [`Report`]s; see [`Nursery::on_report`](crate::Nursery::on_report).
pub type ReportHook = Arc<dyn Fn(&Report<'_>) + Send + Sync>;

/// Hands `report` to `hook`, or to the default hook when there is none. A panic while
/// reporting (the hook's own, or the `Debug` of an error the report formats) is caught and
/// a line on stderr says which report it cost: it must not replace a panic the nursery is
/// about to resume (SPEC N6), cut short the reports that follow, or unwind through a child's
/// task, where tokio would swallow it.
pub(crate) fn deliver(hook: Option<&ReportHook>, report: &Report<'_>) {
    let delivered = catch_unwind(AssertUnwindSafe(|| match hook {
        Some(hook) => hook(report),
        None => default_hook(report),
    }));
    if let Err(payload) = delivered {
        let what = match report {
            Report::Panic { origin, .. } => format!("a panic of {origin}"),
            Report::Failure { origin, .. } => format!("a failure of {origin}"),
            Report::ShutdownCutShort { .. } => "a shutdown cut short".to_string(),
        };
        write_caught_panic(
            format_args!("reporting {what} panicked"),
            "that report is lost",
            payload,
        );
    }
}

/// Writes on stderr that a panic nobody can take was caught (`what` happened, with the
/// payload's message, and what it cost), then drops the payload quietly.
fn write_caught_panic(what: fmt::Arguments<'_>, cost: &str, payload: Box<dyn Any + Send>) {
    let why = panic_message(&*payload).unwrap_or("a payload that is not a string");
    // Not `eprintln!`: it panics when stderr is closed.
    let _ = writeln!(std::io::stderr(), "tokio-nursery: {what} ({why}); {cost}");
    drop_quietly(payload);
}

/// Runs `step`, a step of work the crate does on nobody's behalf (firing a deadline,
/// stopping one child of many at a grace's end or an abort): a panic there comes from a
/// user's waker (a cancellation calls every waker, then re-raises the first panic) and has
/// no caller to go to. It is caught, so that the steps after this one still happen, and a
/// line on stderr says where it happened. `None` if it panicked.
pub(crate) fn catch_waker_panic<R>(
    during: impl FnOnce() -> String,
    step: impl FnOnce() -> R,
) -> Option<R> {
    match catch_unwind(AssertUnwindSafe(step)) {
        Ok(value) => Some(value),
        Err(payload) => {
            write_caught_panic(
                format_args!("a waker panicked {}", during()),
                "the crate's work went on",
                payload,
            );
            None
        }
    }
}

/// Drops `value`, catching a panic in its destructor (a user's error or panic payload): used
/// where a panic is about to be resumed, so a second one would abort the process, or inside
/// a child's task. The destructor's own payload is leaked, not dropped, since dropping it
/// could panic again.
pub(crate) fn drop_quietly<T>(value: T) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| drop(value))) {
        std::mem::forget(payload);
    }
}

/// The default hook: an error-level `tracing` event (warn-level for a shutdown cut short)
/// with the `tracing` feature when a subscriber is installed, else a line on stderr (a
/// report is never dropped for want of a subscriber).
pub(crate) fn default_hook(report: &Report<'_>) {
    #[cfg(feature = "tracing")]
    if subscribed() {
        match report {
            Report::ShutdownCutShort { .. } => tracing::warn!("{report}"),
            _ => tracing::error!("{report}"),
        }
        return;
    }
    eprintln!("tokio-nursery: {report}");
}

/// Whether a `tracing` subscriber (global, or scoped to this thread) receives events.
#[cfg(feature = "tracing")]
fn subscribed() -> bool {
    tracing::dispatcher::get_default(|dispatch| !dispatch.is::<tracing::subscriber::NoSubscriber>())
}

#[cfg(all(test, feature = "tracing", not(loom)))]
mod tests {
    #[test]
    fn reports_go_to_stderr_when_no_subscriber_listens() {
        assert!(
            !super::subscribed(),
            "no subscriber is installed in unit tests"
        );
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || assert!(super::subscribed()));
    }
}
