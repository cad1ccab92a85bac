//! Cancellation points: where code is told it was cancelled (SPEC S11).
//!
//! Delivery is cooperative: a cancellation is reported only here, as an `Err(Cancelled)` the
//! code can `?`, and code between two cancellation points is never interrupted. Every point
//! reports a cancellation each time it is reached while the scope is cancelled (level
//! triggered, SPEC S3). Most tokio awaits are *not* cancellation points: wrap them with
//! [`cancellable`](CancellableExt::cancellable) or race them against [`cancelled`].
//!
//! The crate docs list the cancel safety of every future ("Cancel safety").

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project::pin_project;
use tokio::time::Instant;

use crate::cancelled::Cancelled;
use crate::context::{self, Frame, Origin};
use crate::node::{Node, later};
use crate::reason::CancelReason;
use crate::sync::Arc;

/// Whether the current scope is effectively cancelled: one atomic load and a thread-local
/// lookup, whatever the nesting depth (SPEC S13). `false` outside any scope.
///
/// For loops and blocking code between cancellation points. A deadline shows here once the
/// runtime has fired it: on a current-thread runtime a loop that never yields never sees
/// one, so compare the clock with [`current_deadline`](crate::current_deadline) there.
#[inline]
pub fn is_cancelled() -> bool {
    context::with_current(|frame| frame.is_some_and(Frame::is_cancelled))
}

/// A synchronous cancellation point: `Err(Cancelled)` if the current scope is cancelled.
pub fn check_cancelled() -> Result<(), Cancelled> {
    // Asked as `is_cancelled()` is: busy code may call it in a loop that never waits.
    match cancellation(false) {
        Some(cancelled) => Err(cancelled),
        None => Ok(()),
    }
}

/// The cancellation a waiting point would report here, if the current scope is cancelled.
pub(crate) fn current_cancellation() -> Option<Cancelled> {
    cancellation(true)
}

/// The cancellation to report if the current frame is cancelled, asked as a waiting point
/// asks it ([`Frame::is_cancelled_here`]) or as `is_cancelled()` does.
fn cancellation(waiting: bool) -> Option<Cancelled> {
    context::with_current(|frame| {
        let frame = frame.filter(|frame| match waiting {
            true => frame.is_cancelled_here(),
            false => frame.is_cancelled(),
        })?;
        frame.mark_observed();
        Some(match frame.origin()? {
            Origin::Inline(id) => Cancelled::new(id, CancelReason::Deadline),
            Origin::Node(node) => Cancelled::new(
                node.id(),
                node.reason().unwrap_or(CancelReason::Explicit(None)),
            ),
        })
    })
}

/// An awaitable cancellation point: reports a cancellation, and otherwise spends one unit of
/// tokio's cooperative budget, yielding to the scheduler when the budget is exhausted.
///
/// Cancel-safe.
pub async fn checkpoint() -> Result<(), Cancelled> {
    check_cancelled()?;
    tokio::task::consume_budget().await;
    check_cancelled()
}

/// Waits until the current scope is cancelled and returns the cancellation. Outside any
/// scope it never completes. Cancel-safe: race it in `select!` against work that is not a
/// cancellation point.
pub fn cancelled() -> WaitCancelled {
    WaitCancelled {
        waiter: Waiter::default(),
    }
}

/// The future returned by [`cancelled`].
#[must_use = "futures do nothing unless polled"]
pub struct WaitCancelled {
    waiter: Waiter,
}

impl Future for WaitCancelled {
    type Output = Cancelled;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Cancelled> {
        self.waiter.poll_cancelled(cx)
    }
}

impl fmt::Debug for WaitCancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitCancelled").finish_non_exhaustive()
    }
}

/// Sleeps for `duration` unless the current scope is cancelled first (a cancellation point).
/// Cancel-safe.
///
/// # Panics
///
/// As `tokio::time::sleep`: outside a tokio runtime, or on one built without timers.
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(Instant::from_std(later(
        Instant::now().into_std(),
        duration,
    )))
}

/// Sleeps until `deadline` unless the current scope is cancelled first (a cancellation
/// point). Cancel-safe.
///
/// # Panics
///
/// As `tokio::time::sleep_until`: outside a tokio runtime, or on one built without timers.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        sleep: tokio::time::sleep_until(deadline),
        waiter: Waiter::default(),
    }
}

/// The future returned by [`sleep`] and [`sleep_until`].
#[pin_project]
#[must_use = "futures do nothing unless polled"]
pub struct Sleep {
    #[pin]
    sleep: tokio::time::Sleep,
    waiter: Waiter,
}

impl Future for Sleep {
    type Output = Result<(), Cancelled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(cancelled) = current_cancellation() {
            return Poll::Ready(Err(cancelled));
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            // A deadline of the scope passing at the very instant this sleep ends wins the tie
            // (Trio), even before the deadline service has fired it. Only an exact tie is
            // looked for (the paused clock's, where outcomes must be exact): asking every
            // time would lock each scope above on every sleep; later than that, whether the
            // service has fired a passed deadline yet decides, as for any point (SPEC S6).
            if tokio::time::Instant::now() > this.sleep.deadline() {
                return Poll::Ready(Ok(()));
            }
            context::with_current(|frame| {
                if let Some(node) = frame.and_then(Frame::nearest_node) {
                    node.fire_passed_deadlines();
                }
            });
            return Poll::Ready(match current_cancellation() {
                Some(cancelled) => Err(cancelled),
                None => Ok(()),
            });
        }
        this.waiter.poll_cancelled(cx).map(Err)
    }
}

impl fmt::Debug for Sleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sleep")
            .field("deadline", &self.sleep.deadline())
            .finish_non_exhaustive()
    }
}

/// Makes any future a cancellation point.
pub trait CancellableExt: Future + Sized {
    /// Runs this future until it completes or the current scope is cancelled; on
    /// cancellation the future is dropped where it is parked (your explicit choice) and
    /// `Err(Cancelled)` is returned. If the scope is already cancelled, the future is not
    /// polled at all (a `recv()` made cancellable takes no message then). Use it on
    /// cancel-safe futures only; never around a
    /// [`parallel_scope_async`](crate::parallel_scope_async) future, which must not be
    /// dropped before it completes (a hard scope, [`CancelScope::hard`](crate::CancelScope::hard),
    /// puts its drop off until then).
    ///
    /// ```
    /// use tokio_nursery::{move_on_after, CancellableExt, Cancelled};
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let (_tx, mut rx) = tokio::sync::mpsc::channel::<u32>(1);
    /// let out = move_on_after(Duration::from_millis(50), async {
    ///     let message = rx.recv().cancellable().await?; // `recv` is cancel-safe
    ///     Ok::<_, Cancelled>(message)
    /// })
    /// .await;
    /// assert_eq!(out.unwrap(), None);
    /// # }
    /// ```
    fn cancellable(self) -> Cancellable<Self> {
        Cancellable {
            inner: Some(self),
            waiter: Waiter::default(),
        }
    }
}

impl<F: Future> CancellableExt for F {}

/// The future returned by [`CancellableExt::cancellable`].
#[pin_project]
#[must_use = "futures do nothing unless polled"]
pub struct Cancellable<F> {
    #[pin]
    inner: Option<F>,
    waiter: Waiter,
}

impl<F: Future> Future for Cancellable<F> {
    type Output = Result<F::Output, Cancelled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let cancelled = match this.inner.as_mut().as_pin_mut() {
            None => panic!("`Cancellable` polled after it completed"),
            Some(inner) => match current_cancellation() {
                Some(cancelled) => cancelled,
                None => match inner.poll(cx) {
                    Poll::Ready(value) => {
                        this.inner.set(None);
                        return Poll::Ready(Ok(value));
                    }
                    Poll::Pending => match this.waiter.poll_cancelled(cx) {
                        Poll::Ready(cancelled) => cancelled,
                        Poll::Pending => return Poll::Pending,
                    },
                },
            },
        };
        this.inner.set(None);
        Poll::Ready(Err(cancelled))
    }
}

impl<F> fmt::Debug for Cancellable<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancellable").finish_non_exhaustive()
    }
}

/// A registration to be woken when the current scope becomes cancelled.
#[derive(Default)]
pub(crate) struct Waiter {
    node: Option<Arc<Node>>,
    key: Option<crate::node::WaiterKey>,
}

impl Waiter {
    pub(crate) fn poll_cancelled(&mut self, cx: &mut Context<'_>) -> Poll<Cancelled> {
        if let Some(cancelled) = current_cancellation() {
            return Poll::Ready(cancelled);
        }
        if !self.register(cx) {
            return Poll::Pending; // outside any scope, or woken with the scope's own poll
        }
        // A cancellation between the first check and the registration woke nobody.
        match current_cancellation() {
            Some(cancelled) => Poll::Ready(cancelled),
            None => Poll::Pending,
        }
    }

    /// Registers to be woken when the current scope becomes cancelled (a scope polling its
    /// body without a node registers this way with the enclosing one); true if the caller
    /// waits on a registration, so must check again for a cancellation that came before it
    /// (`is_cancelled_here`).
    pub(crate) fn register(&mut self, cx: &mut Context<'_>) -> bool {
        context::with_current(|frame| {
            let Some(frame) = frame else {
                self.clear();
                return false;
            };
            // A helper scope without a node polls this point again itself.
            if frame.wakes(cx.waker()) {
                self.clear();
                return false;
            }
            // A nursery child without a scope of its own waits on its nursery's.
            if let Some((parent, child)) = frame.unmade_child() {
                self.retarget(parent);
                if parent.register_child_waiter(&mut self.key, cx.waker(), child) {
                    return true;
                }
            }
            let node = frame.node();
            self.retarget(node);
            node.register_waiter(&mut self.key, cx.waker());
            true
        })
    }

    /// Makes `node` the one this waiter is registered with, leaving the previous one.
    fn retarget(&mut self, node: &Arc<Node>) {
        if !self
            .node
            .as_ref()
            .is_some_and(|mine| Arc::ptr_eq(mine, node))
        {
            self.clear();
            self.node = Some(node.clone());
        }
    }

    /// The node this waiter is registered with, if any.
    pub(crate) fn node(&self) -> Option<&Arc<Node>> {
        self.node.as_ref()
    }

    /// Takes the registration off, if any.
    pub(crate) fn clear(&mut self) {
        if let Some(node) = self.node.take() {
            node.remove_waiter(&mut self.key);
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.clear();
    }
}
