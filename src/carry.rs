//! Carrying the current scope into a future that runs elsewhere (SPEC S14, first clause).
//!
//! A plain `tokio::spawn` starts outside every scope: never cancelled, no deadline. Wrap the
//! future with [`carry_scope`] first and it runs in the scope that was current when it was
//! wrapped, so that scope's cancellation and deadlines reach it in the other task.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project::pin_project;

use crate::context::{self, FrameKind};
use crate::node::Node;
use crate::sync::Arc;

/// Wraps `future` so that it runs in the scope current at this call.
///
/// Outside every scope there is nothing to carry: the future then runs in whatever scope
/// polls it, as an unwrapped future does (spawned with `tokio::spawn`, in none). The
/// future is not a new scope: it sees the carried scope's cancellation and deadlines,
/// and a `Cancelled` it returns is the caller's to handle. Once the carried scope has ended
/// it no longer follows its ancestors (it keeps any cancellation it already had).
///
/// ```
/// use std::time::Duration;
/// use tokio_nursery::{carry_scope, move_on_after, sleep, Cancelled};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// move_on_after(Duration::from_millis(10), async {
///     let task = tokio::spawn(carry_scope(async {
///         sleep(Duration::from_secs(60)).await // cancelled by the deadline at 10 ms
///     }));
///     let seen = task.await.unwrap();
///     assert!(seen.is_err());
///     seen
/// })
/// .await
/// .unwrap();
/// # }
/// ```
pub fn carry_scope<F: Future>(future: F) -> Carried<F> {
    Carried {
        node: context::with_current(|frame| frame.map(|frame| frame.node().clone())),
        future,
    }
}

/// The future returned by [`carry_scope`].
#[pin_project]
#[must_use = "futures do nothing unless polled"]
pub struct Carried<F> {
    node: Option<Arc<Node>>,
    #[pin]
    future: F,
}

impl<F: Future> Future for Carried<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        match this.node {
            Some(node) => context::enter(FrameKind::Carried(node), || this.future.poll(cx)),
            None => this.future.poll(cx),
        }
    }
}

impl<F> fmt::Debug for Carried<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Carried")
            .field("scope", &self.node.as_ref().map(|node| node.id()))
            .finish_non_exhaustive()
    }
}
