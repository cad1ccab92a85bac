//! Interop with tokio-util's [`CancellationToken`] (SPEC S14), both ways: a token cancelled
//! when a scope is ([`cancellation_token`], [`ScopeHandle::cancellation_token`]), and a
//! scope cancelled when a token is ([`ScopeHandle::cancel_when`], [`cancelled_by`]).
//!
//! Neither direction runs a task: a scope's cancellation cancels its tokens from the waker
//! list of its node, and a token's cancellation cancels the scope from a waker registered
//! with the token, both synchronously in the thread that cancelled. So the cancellation
//! reaches the other side at once, even while the scope's own task is parked or busy.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll, Wake, Waker};

use pin_project::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::cancelled::CancelError;
use crate::context;
use crate::node::Node;
use crate::reason::CancelReason;
use crate::scope::{CancelScope, ScopeHandle, Scoped};
use crate::sync::{Arc, Mutex, lock};

/// The message of the reason a scope gets when a linked token cancels it
/// (`Cancelled::reason().message()`).
pub const TOKEN_REASON: &str = "the CancellationToken was cancelled";

/// A token that is cancelled when the scope current at this call becomes effectively
/// cancelled (itself, by its deadline, or through an ancestor). Outside any scope, a token
/// nothing of this crate cancels. See [`ScopeHandle::cancellation_token`].
///
/// ```
/// use std::time::Duration;
/// use tokio_nursery::{cancellation_token, move_on_after, sleep, Cancelled};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let mut library = None;
/// let out = move_on_after(Duration::from_millis(10), async {
///     let token = cancellation_token(); // hand it to a library that takes tokens
///     library = Some(tokio::spawn(async move {
///         token.cancelled().await;
///         "library stopped"
///     }));
///     sleep(Duration::from_secs(1)).await?; // the deadline at 10 ms cancels both
///     Ok::<_, Cancelled>(())
/// })
/// .await;
/// assert_eq!(out.unwrap(), None);
/// assert_eq!(library.unwrap().await.unwrap(), "library stopped");
/// # }
/// ```
pub fn cancellation_token() -> CancellationToken {
    match context::with_current(|frame| frame.map(|frame| frame.node().clone())) {
        Some(node) => token_for(&node),
        None => CancellationToken::new(),
    }
}

impl ScopeHandle {
    /// A token cancelled when this scope becomes effectively cancelled. The link is one
    /// way: cancelling the token does not cancel the scope (use
    /// [`cancel_when`](Self::cancel_when) for that). A token never reverts, so it stays
    /// cancelled if a shield later hides an inherited cancellation.
    ///
    /// Each call registers one wake-up with the scope, released when the scope is cancelled
    /// or dropped: make one token per scope and clone it (or derive
    /// [`child_token`](CancellationToken::child_token)s) rather than calling this in a loop
    /// on a long-lived scope.
    ///
    /// ```
    /// use tokio_nursery::CancelScope;
    ///
    /// let scope = CancelScope::new();
    /// let token = scope.handle().cancellation_token();
    /// assert!(!token.is_cancelled());
    /// scope.handle().cancel();
    /// assert!(token.is_cancelled());
    /// ```
    pub fn cancellation_token(&self) -> CancellationToken {
        token_for(&self.node)
    }

    /// Cancels this scope when `token` is cancelled, for as long as the returned link is
    /// kept (dropping it unlinks). A token already cancelled cancels the scope at once. The
    /// scope's reason is explicit, with the message [`TOKEN_REASON`]. To link a scope for
    /// its whole life, run it with [`cancelled_by`].
    ///
    /// ```
    /// use tokio_nursery::{nursery, sleep, Cancelled, TOKEN_REASON};
    /// use tokio_util::sync::CancellationToken;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let token = CancellationToken::new();
    /// let stop = token.clone();
    /// let out = nursery(|n| async move {
    ///     let _link = n.scope().cancel_when(&token); // the nursery follows the token
    ///     let child = n.spawn(async {
    ///         let cancelled = sleep(Duration::from_secs(3600)).await.unwrap_err();
    ///         assert_eq!(cancelled.reason().message(), Some(TOKEN_REASON));
    ///         Err::<(), _>(cancelled)
    ///     });
    ///     stop.cancel();
    ///     let _ = child.await;
    ///     Ok::<_, Cancelled>(())
    /// })
    /// .await;
    /// assert!(out.is_ok());
    /// # }
    /// ```
    pub fn cancel_when(&self, token: &CancellationToken) -> TokenLink {
        let mut wait = Box::pin(token.clone().cancelled_owned());
        let waker = Waker::from(std::sync::Arc::new(CancelsScope(self.node.clone())));
        match wait.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(()) => {
                self.node.cancel(token_reason());
                TokenLink { wait: None }
            }
            Poll::Pending => TokenLink { wait: Some(wait) },
        }
    }
}

/// Runs `body` in a new scope that is cancelled when `token` is (for the scope's whole
/// life). Output as [`CancelScope::run`]: `Ok(None)` when the token's cancellation was
/// absorbed by this scope.
///
/// ```
/// use tokio_nursery::{cancelled_by, checkpoint, Cancelled};
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let token = CancellationToken::new();
/// token.cancel();
/// let out = cancelled_by(token, async {
///     checkpoint().await?;
///     Ok::<_, Cancelled>("finished")
/// })
/// .await;
/// assert_eq!(out.unwrap(), None);
/// # }
/// ```
pub fn cancelled_by<F, T, E>(token: CancellationToken, body: F) -> TokenScoped<F>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError,
{
    let scope = CancelScope::new();
    let link = scope.handle().cancel_when(&token);
    TokenScoped {
        scoped: scope.run(body),
        _link: link,
    }
}

fn token_reason() -> CancelReason {
    CancelReason::explicit_with(TOKEN_REASON)
}

/// A token cancelled when `node` becomes effectively cancelled.
fn token_for(node: &Arc<Node>) -> CancellationToken {
    let token = CancellationToken::new();
    let bridge = std::sync::Arc::new(CancelsToken {
        token: token.clone(),
        node: Arc::downgrade(node),
        key: Mutex::new(None),
    });
    let mut key = None;
    node.register_waiter(&mut key, &Waker::from(bridge.clone()));
    *lock(&bridge.key) = key;
    // A cancellation before the registration woke nobody.
    if node.is_cancelled() {
        bridge.fire();
    }
    token
}

/// Registered with a scope's node: cancels the token when the scope becomes cancelled, and
/// unregisters itself.
struct CancelsToken {
    token: CancellationToken,
    node: Weak<Node>,
    key: Mutex<Option<crate::node::WaiterKey>>,
}

impl CancelsToken {
    fn fire(&self) {
        self.token.cancel();
        let mut key = lock(&self.key).take();
        if let Some(node) = self.node.upgrade() {
            node.remove_waiter(&mut key);
        }
    }
}

impl Wake for CancelsToken {
    fn wake(self: std::sync::Arc<Self>) {
        self.fire();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.fire();
    }
}

/// Registered with a token: cancels the scope when the token is cancelled.
struct CancelsScope(Arc<Node>);

impl Wake for CancelsScope {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.cancel(token_reason());
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.cancel(token_reason());
    }
}

/// The link made by [`ScopeHandle::cancel_when`]: while it is kept, cancelling the token
/// cancels the scope. Dropping it unlinks.
#[must_use = "the link lasts only as long as this value: dropping it unlinks the token"]
pub struct TokenLink {
    wait: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl fmt::Debug for TokenLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLink")
            .field("pending", &self.wait.is_some())
            .finish()
    }
}

/// The future returned by [`cancelled_by`].
#[pin_project]
#[must_use = "a scope does nothing unless its future is awaited"]
pub struct TokenScoped<F> {
    #[pin]
    scoped: Scoped<F>,
    _link: TokenLink,
}

impl<F, T, E> Future for TokenScoped<F>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError,
{
    type Output = Result<Option<T>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().scoped.poll(cx)
    }
}

impl<F> fmt::Debug for TokenScoped<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenScoped").finish_non_exhaustive()
    }
}
