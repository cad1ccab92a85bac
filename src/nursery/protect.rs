//! Protected work (SPEC C1, [`protect`]): a future that must not be cut short runs to
//! completion even if the code that started it is cancelled or dropped. What it promises is
//! documented on [`protect`].

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::report::Origin;
use super::{catch_waker_panic, nearest_adopter};
use crate::context::{self, FrameKind};
use crate::executor::TaskLabel;
use crate::node::{Node, ScopeId};
use crate::reason::CancelReason;
use crate::registry::{Adopter, OrphanReport, Panic, StopAll};
use crate::sync::lock;

/// The handle of protected work: await it for the value. Dropping it does not stop the
/// work. Cancel-safe; not a cancellation point (race it with
/// [`cancelled`](crate::cancelled) if the waiting should be).
#[must_use = "dropping the handle is fine: the protected work keeps running"]
pub struct Protected<T> {
    join: JoinHandle<Option<T>>,
    panic: Arc<PanicSlot>,
}

/// Where a panic of protected work goes: to its handle while one is held (it resumes the
/// payload, SPEC N6), else to the adopting nursery's report hook; never both, never lost.
struct PanicSlot {
    state: Mutex<Watch>,
    adopter: Arc<dyn Adopter<Origin>>,
}

enum Watch {
    /// The handle is held; the work has not panicked.
    Held,
    /// The work panicked while the handle was held: the handle takes the payload.
    Panicked(Panic<Origin>),
    /// The handle was dropped (or took the payload).
    Gone,
}

impl PanicSlot {
    /// The work panicked: the payload goes to the handle if it is held, else to the hook.
    fn panicked(&self, panic: Panic<Origin>) {
        let mut state = lock(&self.state);
        match *state {
            Watch::Held => *state = Watch::Panicked(panic),
            _ => {
                drop(state);
                self.adopter.orphan_report(OrphanReport::Panic(panic));
            }
        }
    }

    /// The handle is done with the slot; a payload it did not take goes to the hook.
    fn release(&self) -> Option<Panic<Origin>> {
        match std::mem::replace(&mut *lock(&self.state), Watch::Gone) {
            Watch::Panicked(panic) => Some(panic),
            _ => None,
        }
    }
}

impl<T> Drop for Protected<T> {
    fn drop(&mut self) {
        if let Some(panic) = self.panic.release() {
            self.panic.adopter.orphan_report(OrphanReport::Panic(panic));
        }
    }
}

impl<T> Future for Protected<T> {
    type Output = T;

    /// The work's value. If the work panicked, this resumes its panic, original payload
    /// included (the report hook does not see it then).
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match Pin::new(&mut self.join).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(value))) => Poll::Ready(value),
            Poll::Ready(Ok(None)) => match self.panic.release() {
                Some(panic) => std::panic::resume_unwind(panic.payload),
                None => panic!("tokio-nursery: the protected work panicked"),
            },
            Poll::Ready(Err(error)) => match error.try_into_panic() {
                Ok(payload) => std::panic::resume_unwind(payload),
                Err(_) => {
                    panic!("tokio-nursery: protected work was dropped by its runtime shutting down")
                }
            },
        }
    }
}

impl<T> fmt::Debug for Protected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Protected")
            .field("id", &self.join.id())
            .finish()
    }
}

/// A protected task's scope: the abort cascade tells it, never aborts it.
struct Shielded(Arc<Node>);

impl StopAll for Shielded {
    /// Protected work is told that a grace period ran out, never aborted, and not told about
    /// an abort-mode drop (SPEC C1): nothing to name.
    fn stop_all(&self, grace_expired: bool) -> Vec<String> {
        if grace_expired {
            // Part of a cascade: a waker's panic must not stop it (`catch_waker_panic`).
            catch_waker_panic(
                || "when protected work was told a grace period ran out".into(),
                || self.0.cancel(CancelReason::GraceExpired),
            );
        }
        Vec::new()
    }

    fn scope(&self) -> Option<Arc<Node>> {
        Some(self.0.clone())
    }
}

/// Runs `work` to completion whatever happens to the caller (SPEC C1).
///
/// `work` runs as a task of its own, in a shielded scope (its caller's cancellation does
/// not reach it), accounted for by the nearest enclosing nursery, which waits for it, or by
/// the runtime's orphan registry ([`orphans_finished`](crate::orphans_finished)). No one may
/// abort it: it is excluded from grace-period aborts, abort-mode drops and the abort
/// cascade (it is told "grace expired" through its scope instead, and may ignore it). Give
/// it its own bound with a deadline inside ([`fail_after`](crate::fail_after),
/// [`move_on_after`](crate::move_on_after)). Only the [`Root`](crate::Root) protects it from
/// runtime shutdown: a runtime that shuts down drops every task (tokio).
///
/// ```
/// use tokio_nursery::{nursery, protect, Cancelled};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(4);
/// tx.send("order #1".into()).await.unwrap();
/// let (done_tx, done_rx) = tokio::sync::oneshot::channel();
/// nursery(|n| async move {
///     n.cancel(); // the caller is cancelled...
///     // ...but a message taken from the channel is handled, not lost:
///     protect(async move {
///         let order = rx.recv().await.unwrap();
///         done_tx.send(format!("processed {order}")).unwrap();
///     });
///     Ok::<_, Cancelled>(())
/// })
/// .await
/// .unwrap();
/// assert_eq!(done_rx.await.unwrap(), "processed order #1");
/// # }
/// ```
///
/// # Panics
///
/// Outside a tokio runtime. Awaiting the [`Protected`] resumes the work's panic, if it
/// panicked, and panics if a runtime shutdown dropped the work before it ended.
pub fn protect<F>(work: F) -> Protected<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let runtime = Handle::try_current()
        .expect("tokio-nursery: protect must be called inside a tokio runtime");
    let caller = context::with_current(|frame| frame.map(|frame| frame.node().clone()));
    // A shielded scope of its own under the caller's: the caller's cancellation does not
    // reach it, its own deadline (set inside) does.
    let node = Arc::new(Node::new(ScopeId::next(), true, None));
    node.enter(caller.as_ref(), crate::scope::timer_for(caller.as_ref()));
    let stop: Arc<dyn StopAll> = Arc::new(Shielded(node.clone()));
    let (adopter, key, aborted) = nearest_adopter(caller, &runtime, stop);
    if aborted {
        // The adopter's grace ran out already: told as if it ran out now (registry
        // invariant N-3, as for every adoptee).
        node.cancel(CancelReason::GraceExpired);
    }
    let task_node = node.clone();
    let panic = Arc::new(PanicSlot {
        state: Mutex::new(Watch::Held),
        adopter: adopter.clone(),
    });
    let slot = panic.clone();
    // Made before the spawn and moved into the task: a runtime that drops the task unpolled
    // (it is shutting down) still tells the adopter, which would otherwise wait for ever.
    let done = Done {
        adopter,
        key,
        node: task_node,
    };
    let join = runtime.spawn(async move {
        let done = done;
        let node = &done.node;
        let mut work = std::pin::pin!(work);
        let outcome = std::future::poll_fn(|cx| {
            match catch_unwind(AssertUnwindSafe(|| {
                context::enter(FrameKind::Linked(node), || work.as_mut().poll(cx))
            })) {
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
                Err(payload) => Poll::Ready(Err(payload)),
            }
        })
        .await;
        match outcome {
            Ok(value) => Some(value),
            Err(payload) => {
                // Before `done` tells the adopter the work finished: the hook gets the
                // panic while the adopter still waits.
                slot.panicked(Panic {
                    label: Origin::Child {
                        id: tokio::task::id(),
                        name: Some(Arc::from("protected work")),
                    },
                    payload,
                });
                None
            }
        }
    });
    // How the task tree shows it (SPEC O2).
    node.attach(Arc::new(TaskLabel {
        kind: "protected work",
        task: join.id(),
        protected: true,
    }));
    Protected { join, panic }
}

/// Tells the adopter the protected work finished, however its task ends.
struct Done {
    adopter: Arc<dyn Adopter<Origin>>,
    key: usize,
    node: Arc<Node>,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.node.end(false);
        // Telling the adopter may wake its nursery's future, whose waker may panic: not out
        // of this drop (it may run while the task unwinds, where a second panic aborts).
        catch_waker_panic(
            || "when protected work's end was told to its adopter".to_string(),
            || self.adopter.adoptee_finished(self.key),
        );
    }
}
