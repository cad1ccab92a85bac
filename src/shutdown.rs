//! Waiting for a scope's cancellation from code that outlives the caller (SPEC S14):
//! [`cancelled_owned`] and [`shutdown_signal`], `'static + Send` futures for servers'
//! graceful-shutdown hooks (axum's `with_graceful_shutdown`, tonic's `serve_with_shutdown`,
//! hyper-util's `GracefulShutdown`).
//!
//! [`cancelled`](crate::cancelled) waits for the scope of whoever polls it; these capture a
//! scope when they are made and wait for *that* one, wherever they are polled: a server
//! spawned or driven by a library finds out when the scope that started it is cancelled.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::cancelled::Cancelled;
use crate::context;
use crate::node::{Node, ScopeId};
use crate::scope::{ScopeHandle, cancelled_here};
use crate::sync::Arc;

/// A `'static + Send` future that completes with the [`Cancelled`] of the scope current at
/// this call, when that scope becomes effectively cancelled (itself, by its deadline or
/// through an ancestor it is exposed to). Outside any scope it never completes, like
/// [`cancelled`](crate::cancelled).
///
/// It is not a cancellation point of the code polling it: it reports *its* scope.
///
/// ```
/// use tokio_nursery::{cancelled_owned, nursery, Cancelled};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let out = nursery(|n| async move {
///     let stop = cancelled_owned(); // the nursery's scope
///     let watcher = tokio::spawn(async move { stop.await.reason().to_string() });
///     n.scope().cancel_with("maintenance");
///     assert_eq!(watcher.await.unwrap(), "explicit cancel: maintenance");
///     Ok::<_, Cancelled>(())
/// })
/// .await;
/// assert!(out.is_ok());
/// # }
/// ```
pub fn cancelled_owned() -> OwnedCancelled {
    OwnedCancelled {
        node: context::with_current(|frame| frame.map(|frame| frame.node().clone())),
        key: None,
    }
}

/// The `()`-valued [`cancelled_owned`]: completes when the scope current at this call is
/// cancelled, for graceful-shutdown hooks that take a `Future<Output = ()>`. Outside any
/// scope it never completes (the server then never shuts down gracefully through it).
///
/// ```
/// use std::time::Duration;
/// use tokio_nursery::{shutdown_signal, Cancelled, Nursery};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// // A server's nursery with a deadline: the server shuts down gracefully at 50 ms.
/// let out = Nursery::new()
///     .timeout(Duration::from_millis(50))
///     .run(|n| async move {
///         let signal = shutdown_signal();
///         // e.g. axum::serve(listener, app).with_graceful_shutdown(signal)
///         n.spawn(async move {
///             signal.await;
///             Ok::<_, Cancelled>(())
///         });
///         Ok(())
///     })
///     .await;
/// assert_eq!(out.unwrap(), Some(())); // the child returned once the deadline passed
/// # }
/// ```
pub fn shutdown_signal() -> ShutdownSignal {
    ShutdownSignal {
        inner: cancelled_owned(),
    }
}

impl ScopeHandle {
    /// A `'static + Send` future that completes when this scope is effectively cancelled:
    /// see [`cancelled_owned`].
    ///
    /// ```
    /// use tokio_nursery::CancelScope;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let scope = CancelScope::new();
    /// let done = scope.handle().cancelled_owned();
    /// scope.handle().cancel();
    /// assert_eq!(done.await.scope(), scope.handle().id());
    /// # }
    /// ```
    pub fn cancelled_owned(&self) -> OwnedCancelled {
        OwnedCancelled {
            node: Some(self.node.clone()),
            key: None,
        }
    }

    /// A `'static + Send` future with no output that completes when this scope is
    /// effectively cancelled: see [`shutdown_signal`].
    ///
    /// ```
    /// use tokio_nursery::CancelScope;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let server_scope = CancelScope::new();
    /// let signal = server_scope.handle().shutdown_signal();
    /// server_scope.handle().cancel();
    /// signal.await; // e.g. axum::serve(..).with_graceful_shutdown(signal)
    /// # }
    /// ```
    pub fn shutdown_signal(&self) -> ShutdownSignal {
        ShutdownSignal {
            inner: self.cancelled_owned(),
        }
    }
}

/// The future returned by [`cancelled_owned`] and [`ScopeHandle::cancelled_owned`].
///
/// Cancel-safe; can be polled again after it completed (it reports the cancellation again).
#[must_use = "futures do nothing unless polled"]
pub struct OwnedCancelled {
    node: Option<Arc<Node>>,
    key: Option<crate::node::WaiterKey>,
}

impl OwnedCancelled {
    /// The scope it waits for; `None` when made outside any scope.
    pub fn scope(&self) -> Option<ScopeId> {
        self.node.as_ref().map(|node| node.id())
    }

    /// Whether that scope is effectively cancelled now.
    pub fn is_cancelled(&self) -> bool {
        self.node.as_ref().is_some_and(|node| node.is_cancelled())
    }
}

impl Future for OwnedCancelled {
    type Output = Cancelled;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Cancelled> {
        let this = &mut *self;
        let Some(node) = this.node.as_ref() else {
            return Poll::Pending; // outside any scope: never cancelled
        };
        if !node.is_cancelled() {
            node.register_waiter(&mut this.key, cx.waker());
            // A cancellation between the check and the registration woke nobody.
            if !node.is_cancelled() {
                return Poll::Pending;
            }
        }
        node.remove_waiter(&mut this.key);
        node.mark_observed();
        Poll::Ready(cancelled_here(node))
    }
}

impl Drop for OwnedCancelled {
    fn drop(&mut self) {
        if let Some(node) = &self.node {
            node.remove_waiter(&mut self.key);
        }
    }
}

impl fmt::Debug for OwnedCancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedCancelled")
            .field("scope", &self.scope())
            .finish()
    }
}

/// The future returned by [`shutdown_signal`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct ShutdownSignal {
    inner: OwnedCancelled,
}

impl ShutdownSignal {
    /// The scope it waits for; `None` when made outside any scope.
    pub fn scope(&self) -> Option<ScopeId> {
        self.inner.scope()
    }
}

impl Future for ShutdownSignal {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.inner).poll(cx).map(drop)
    }
}
