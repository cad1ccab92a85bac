//! Parallel borrowing scopes (SPEC B2): children that borrow from the caller's stack and run
//! on the multi-thread runtime's workers.
//!
//! # The scoped-task trilemma
//!
//! Of three things a scoped child could have, safe Rust gives any two, not all three:
//!
//! - **concurrency**: children and the code that spawned them make progress independently
//!   (the parent's thread is free for other work while they run);
//! - **parallelism**: children run on several threads at once;
//! - **borrowing**: children use the caller's stack (no `'static`, no `Arc`).
//!
//! | pick | tool |
//! |---|---|
//! | concurrency + borrowing | [`local_scope`](crate::local_scope) (B1): the children are polled inside the parent's future, so dropping it drops them |
//! | parallelism + borrowing | [`parallel_scope`] (this module) or `std::thread::scope`: the calling thread is blocked until every child has finished |
//! | concurrency + parallelism | [`Nursery`](crate::Nursery): children are tasks of their own and must be `'static` |
//!
//! All three at once would need a non-blocking future that lends the caller's stack to other
//! threads. Its borrow ends when the future goes away, and a future can go away without its
//! drop code running: `std::mem::forget`, `Box::leak` and reference cycles are safe Rust. The
//! children would then keep running on a stack frame that has been popped. So the
//! non-blocking entry, [`parallel_scope_async`], is `unsafe`: the caller promises what the
//! compiler cannot check.
//!
//! # The two entries
//!
//! - [`parallel_scope`] is safe. It blocks the calling thread until the body and every child
//!   have finished (through `tokio::task::block_in_place`, so a worker hands its other tasks
//!   to another thread meanwhile). A body that panics is handled like a failing child: the
//!   children are cancelled and waited for before the panic unwinds the borrowed frame.
//! - [`parallel_scope_async`] is `unsafe` and awaitable; its `# Safety` section is the
//!   contract. Its body takes the scope by value (`|s| async move { .. }`), so that a task
//!   can await it (see its docs).
//!
//! Both need tokio's multi-thread runtime: elsewhere they return [`ParallelUnavailable`]
//! without running anything (on a current-thread runtime, use
//! [`local_scope`](crate::local_scope)).
//!
//! # The rules are a nursery's
//!
//! The scope *is* a [`Nursery`](crate::Nursery) (in [`DropMode::Abort`](crate::DropMode)):
//! each child is a task with its own scope under the parallel scope's, which is under the
//! caller's, so cancellation and deadlines of the caller's scopes reach the children; the
//! first failure cancels the siblings (fail-fast); every failure is returned as a
//! [`NurseryError`]; the earliest panic is resumed with its payload once everything stopped.
//! Joining is the nursery's, linear in the number of children (no `FuturesOrdered` of join
//! handles, the quadratic cliff of async-scoped 0.9 under tokio's cooperative budget).
//!
//! # How it stays sound: the backstop
//!
//! A child lives in a *cell*, one allocation shared by its tokio task, the scope's list and
//! its handle: the future (behind a small lock) and, once it ended, its value (behind
//! another). The cell's lifetime is erased to `'static` (the module's unsafe operations: two
//! transmutes of trait objects' lifetime bounds in one place, `Children::register`, and
//! pinning the future where it lies in the cell; the other `unsafe` blocks call the
//! functions whose contracts lead to them). The tokio task runs a shell that locks the cell
//! for each poll. Whoever ends the future, its completion, its task being dropped (an
//! abort) or the scope's backstop, drops it *while holding the cell's lock*.
//!
//! The scope never finishes, by completing or by being dropped, before its backstop has run:
//! it closes the scope to new children and empties every cell, dropping the futures that are
//! still there itself and, for a future being polled or dropped on another thread right now,
//! waiting for the lock. So when the backstop returns no child future is alive, with no
//! help from the scheduler: aborted children queued on this very worker (even in its
//! not-stealable LIFO slot), a runtime shutting down and dropping tasks one by one, or a
//! current-thread runtime cannot make it wait. The only wait is for polls already running on
//! other threads; if one must be waited for, the wait goes through `block_in_place` where
//! possible, so this worker's queue moves to another thread meanwhile. A child whose poll
//! blocks its thread for ever (a poll that never returns) blocks that wait for ever, as it
//! would block any runtime.
//!
//! A child's value waits in its cell for the handle, not in tokio's task output (which
//! tokio may drop after the task counted as finished); a value whose handle is gone is
//! dropped at once: by the child's task, under the future's lock, if the handle went first,
//! by the handle's drop otherwise. None is left in a cell for tokio to drop late. A dropped
//! handle leaves its join handle in the cell, so that tokio's task is usually freed by the
//! scope, on the thread that spawned it, rather than by whichever worker ran the child last
//! (freeing another thread's memory takes glibc's lock of that thread's arena). The error type is `'static`: nothing that
//! borrows the caller's stack outlives the backstop, except what the borrow checker tracks
//! (the handles and their values).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Mutex, OnceLock, TryLockError};
use std::task::{Context, Poll};

use crate::pages::Pages;
use pin_project::{pin_project, pinned_drop};
use tokio::runtime::{Handle, RuntimeFlavor};

use crate::cancelled::CancelError;
use crate::exemption::{Exemption, exempt_current};
use crate::node::ScopeId;
use crate::nursery::{
    ChildHandle, DropMode, JoinError, Nursery, NurseryError, NurseryHandle, Origin, Report,
};
use crate::scope::ScopeHandle;
use crate::sync::{Arc, Ordering, lock};

/// The spawner of a parallel scope: children spawned here run on the runtime's workers and
/// may borrow anything that outlives the scope (`'env`).
///
/// Made by [`parallel_scope`] (which lends it to the body) and [`parallel_scope_async`]
/// (which gives it to the body, which may pass it on, to a child too). Children cannot
/// borrow from the body's own locals, which die before the children: only from what
/// outlives the scope.
pub struct ParallelScope<'env, E> {
    nursery: NurseryHandle<E>,
    children: Arc<Children<E>>,
    /// Invariant in `'env`: a scope for a long borrow cannot pass for one of a shorter borrow,
    /// so children cannot borrow the body's own locals (which die before the children).
    _env: PhantomData<&'env mut &'env ()>,
}

impl<'env, E> ParallelScope<'env, E>
where
    E: CancelError + fmt::Debug + Send + 'static,
{
    /// Spawns a child that may borrow from the caller's stack. It runs as a task on the
    /// runtime's workers, in parallel with the body and its siblings, in a scope under the
    /// parallel scope's (cancellation and deadlines reach it). Its value may borrow too: it
    /// waits in the child's cell for the handle, and is dropped with the handle (at once,
    /// if the handle was dropped first).
    ///
    /// # Panics
    ///
    /// If the scope has ended (its backstop ran): the future is dropped first. Only code that
    /// runs after the scope's end can observe it: the body's drop code (a guard that spawns
    /// when the body is dropped early), or a [`parallel_scope_async`] body that moved the
    /// scope somewhere that outlives it.
    ///
    /// ```
    /// use tokio_nursery::{Cancelled, parallel_scope};
    ///
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() {
    /// let words = vec!["words", "borrowed", "by", "children"];
    /// let longest = parallel_scope(async |s| {
    ///     let handles: Vec<_> = words
    ///         .iter()
    ///         .map(|w| s.spawn(async move { Ok::<_, Cancelled>(*w) }))
    ///         .collect();
    ///     let mut longest = "";
    ///     for handle in handles {
    ///         let word = handle.await.unwrap(); // a `&str` into `words`
    ///         if word.len() > longest.len() {
    ///             longest = word;
    ///         }
    ///     }
    ///     Ok::<_, Cancelled>(longest)
    /// })
    /// .expect("a multi-thread runtime");
    /// assert_eq!(longest.unwrap(), Some("borrowed"));
    /// # }
    /// ```
    pub fn spawn<F, T>(&self, future: F) -> ParallelHandle<T>
    where
        F: Future<Output = Result<T, E>> + Send + 'env,
        T: Send + 'env,
    {
        // SAFETY: `register`'s contract is that the children's backstop runs before `'env`
        // ends and that the value's end is dropped within `'env` unless `T` outlives it. A
        // `ParallelScope` is made only by `running`, inside the nursery of a `Running`
        // future whose makers promise it is not leaked before it completes; `Running` runs
        // the backstop (`self.children`'s) before it returns its output, before it resumes
        // a panic, and in its `Drop`. `'env` outlives that `Running` (its type holds `'env`),
        // and the scope holds `'env` invariantly, so its children borrow only what outlives
        // the backstop. After the backstop, `register` refuses. The value's end goes into the
        // handle, whose type carries `T`: the handle ends within `T`'s lifetime.
        let (shell, value) = unsafe { self.children.register(future) };
        let child = self.nursery.spawn(shell);
        let _ = value.task().set(child.id());
        ParallelHandle {
            child: Some(child),
            value,
        }
    }

    /// The parallel scope's cancel scope: cancel it (the scope absorbs its own
    /// cancellation), move its deadline.
    pub fn scope(&self) -> ScopeHandle {
        self.nursery.scope()
    }
}

impl<E> fmt::Debug for ParallelScope<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParallelScope")
            .field("scope", &self.nursery.scope().id())
            .finish_non_exhaustive()
    }
}

/// The handle of a parallel child: await it for the child's value. Awaiting it is a
/// cancellation point of the awaiting code's scope, as for [`ChildHandle`]; the child's own
/// end shows as the same [`JoinError`] markers to a waiter whose scope is not cancelled
/// (the scope owns failures and panics).
/// Dropping the handle detaches nothing: the scope still waits for the child.
pub struct ParallelHandle<T> {
    /// `Some` until the handle is dropped.
    child: Option<ChildHandle<()>>,
    /// The child's cell, for its value (see [`Children::register`]).
    value: Arc<dyn Value<T>>,
}

impl<T> Drop for ParallelHandle<T> {
    fn drop(&mut self) {
        // A value not taken is dropped here or, still to come, by the child's task: never
        // after the scope's backstop. The child's handle is kept with the cell, but lets go
        // of its waiting waker now.
        if let Some(child) = &mut self.child {
            child.release();
        }
        self.value.abandon(self.child.take());
    }
}

impl<T> ParallelHandle<T> {
    /// The child's tokio task id.
    pub fn id(&self) -> tokio::task::Id {
        self.child().id()
    }

    /// Cancels this child alone, cooperatively. Not a failure.
    pub fn cancel(&self) {
        self.child().cancel();
    }

    /// As [`cancel`](Self::cancel), with user data the child reads from its `Cancelled`
    /// (as [`ChildHandle::cancel_with`](crate::ChildHandle::cancel_with)).
    pub fn cancel_with<D: std::any::Any + Send + Sync>(&self, data: D) {
        self.child().cancel_with(data);
    }

    /// Aborts this child alone: tokio drops its future at its next scheduling (and the scope
    /// waits for that). Not a failure.
    pub fn abort(&self) {
        self.child().abort();
    }

    /// Whether the child has finished: its outcome is there for this handle (awaiting it
    /// then returns at once). The scope counts a child as ended a moment before, when its
    /// future is gone, so just after the scope returned this may still be `false` for a
    /// short while; awaiting the handle gives the child's outcome either way (an outcome
    /// without a value only to a waiter whose scope is not cancelled, as for
    /// [`ChildHandle`]).
    pub fn is_finished(&self) -> bool {
        self.child().is_finished()
    }
}

const HANDLE_ALIVE: &str = "tokio-nursery: a parallel handle's child is there until its drop";

impl<T> ParallelHandle<T> {
    fn child(&self) -> &ChildHandle<()> {
        self.child.as_ref().expect(HANDLE_ALIVE)
    }
}

impl<T> Future for ParallelHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let child = this.child.as_mut().expect(HANDLE_ALIVE);
        match Pin::new(child).poll(cx) {
            Poll::Pending => Poll::Pending,
            // The child stored its value before its task returned.
            Poll::Ready(Ok(())) => Poll::Ready(Ok(this
                .value
                .take()
                .expect("tokio-nursery: a parallel child that returned left its value"))),
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
        }
    }
}

impl<T> fmt::Debug for ParallelHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParallelHandle")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

/// A parallel scope cannot run here: it needs tokio's multi-thread runtime. Nothing was run.
/// On a current-thread runtime use [`local_scope`](crate::local_scope) (concurrent, not
/// parallel).
#[derive(Clone, Debug)]
pub struct ParallelUnavailable {
    why: Unavailable,
}

#[derive(Clone, Debug)]
enum Unavailable {
    NoRuntime,
    CurrentThread,
    /// Another flavor (tokio's unstable ones), by name.
    Flavor(String),
    /// A multi-thread handle, but this thread may not block (tokio refused
    /// `block_in_place`, e.g. inside a current-thread runtime that entered it).
    #[cfg_attr(not(feature = "rt-multi-thread"), allow(dead_code))]
    CannotBlock,
}

impl fmt::Display for ParallelUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tokio-nursery: a parallel scope needs tokio's multi-thread runtime, ")?;
        match &self.why {
            Unavailable::NoRuntime => f.write_str("and no tokio runtime is current here")?,
            Unavailable::CurrentThread => f.write_str("and this is a current_thread runtime")?,
            Unavailable::Flavor(flavor) => write!(f, "and this runtime's flavor is {flavor}")?,
            Unavailable::CannotBlock => f.write_str("and this thread may not block on it")?,
        }
        f.write_str("; use local_scope to borrow in concurrent (not parallel) children")
    }
}

impl std::error::Error for ParallelUnavailable {}

/// The current runtime, if it is a multi-thread one.
fn multi_thread_runtime() -> Result<Handle, ParallelUnavailable> {
    let why = match Handle::try_current() {
        Err(_) => Unavailable::NoRuntime,
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => return Ok(handle),
        Ok(handle) => match handle.runtime_flavor() {
            RuntimeFlavor::CurrentThread => Unavailable::CurrentThread,
            flavor => Unavailable::Flavor(format!("{flavor:?}")),
        },
    };
    Err(ParallelUnavailable { why })
}

/// Runs `body` with a [`ParallelScope`] whose children borrow from the caller's stack and run
/// in parallel on the multi-thread runtime's workers (SPEC B2), and **blocks the calling
/// thread** until the body and every child have finished.
///
/// The outcome is a nursery's, inside `Ok`: `Ok(Some(value))`, `Ok(None)` (the scope's own
/// cancellation absorbed), `Err(NurseryError::Failed(..))` with every failure (the first one
/// first), or `Err(NurseryError::Cancelled(..))` passing an enclosing cancellation on; the
/// earliest panic (of a child or of the body) is resumed once every child has stopped. The
/// outer `Err` says the scope could not run here (not a multi-thread runtime): nothing ran.
///
/// Blocking: called from async code on a worker, the worker's other tasks move to another
/// thread while it blocks (`tokio::task::block_in_place`), but the calling task, and
/// everything else its future would do meanwhile (the other branches of a `join!`), waits.
/// It works from `#[tokio::main]`'s thread, from `spawn_blocking` and from any thread that
/// entered the runtime. The body runs on the calling thread, in the caller's scopes: it need
/// not be `Send`; the children must be.
///
/// ```
/// use tokio_nursery::{Cancelled, parallel_scope};
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() {
/// let data: Vec<u64> = (1..=1_000).collect();
/// let total = parallel_scope(async |s| {
///     let parts: Vec<_> = data
///         .chunks(250)
///         .map(|chunk| s.spawn(async move { Ok::<_, Cancelled>(chunk.iter().sum::<u64>()) }))
///         .collect();
///     let mut total = 0;
///     for part in parts {
///         total += part.await.unwrap();
///     }
///     Ok::<_, Cancelled>(total)
/// })
/// .expect("a multi-thread runtime");
/// assert_eq!(total.unwrap(), Some(500_500));
/// # }
/// ```
///
/// On a current-thread runtime it runs nothing and says so:
///
/// ```
/// use tokio_nursery::{Cancelled, parallel_scope};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let out = parallel_scope(async |_s| Ok::<_, Cancelled>(()));
/// let error = out.unwrap_err();
/// assert!(error.to_string().contains("use local_scope"));
/// # }
/// ```
#[cfg(feature = "rt-multi-thread")]
#[allow(clippy::type_complexity)] // the nursery's outcome inside "could it run here"
pub fn parallel_scope<'env, B, T, E>(
    body: B,
) -> Result<Result<Option<T>, NurseryError<E>>, ParallelUnavailable>
where
    B: AsyncFnOnce(&ParallelScope<'env, E>) -> Result<T, E>,
    E: CancelError + fmt::Debug + Send + 'static,
{
    let runtime = multi_thread_runtime()?;
    // SAFETY: `running`'s contract is that its future is not leaked before it completes.
    // It is moved into `block_on` below, which polls it on this thread until it completes or,
    // if a poll unwinds, drops it while unwinding (its `Drop` runs the backstop). It is never
    // forgotten, and this function cannot return (ending the borrows of `'env`) before
    // `block_on` has returned or unwound.
    let sentinel_runtime = runtime.clone();
    let scope = unsafe {
        running(
            async move |scope| {
                let _sentinel = ShutdownSentinel::spawn(&sentinel_runtime, &scope.nursery);
                body(&scope).await
            },
            true,
        )
    };
    let mut entered = false;
    let ran = catch_unwind(AssertUnwindSafe(|| {
        tokio::task::block_in_place(|| {
            entered = true;
            runtime.block_on(scope)
        })
    }));
    match ran {
        Ok(outcome) => outcome,
        // A panic of the scope (a child's or the body's, resumed), after every child stopped.
        Err(payload) if entered => resume_unwind(payload),
        // `block_in_place` refused to block this thread; the scope never started.
        Err(_) => Err(ParallelUnavailable {
            why: Unavailable::CannotBlock,
        }),
    }
}

/// Cancels a blocking parallel scope (reason `Shutdown`) if its runtime shuts down while it
/// runs: tokio then drops the children, and this task with them, but cannot drop the future
/// a thread blocks on, so a body waiting for its scope's cancellation would keep the
/// runtime's shutdown waiting for ever. Dropped when the body returns: disarmed, aborted.
#[cfg(feature = "rt-multi-thread")]
struct ShutdownSentinel {
    armed: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

#[cfg(feature = "rt-multi-thread")]
impl ShutdownSentinel {
    fn spawn<E>(runtime: &tokio::runtime::Handle, nursery: &NurseryHandle<E>) -> Self {
        struct CancelOnDrop {
            armed: Arc<std::sync::atomic::AtomicBool>,
            scope: crate::ScopeHandle,
        }
        impl Drop for CancelOnDrop {
            fn drop(&mut self) {
                if self.armed.load(std::sync::atomic::Ordering::Acquire) {
                    self.scope.cancel_because(crate::CancelReason::Shutdown);
                }
            }
        }
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let guard = CancelOnDrop {
            armed: armed.clone(),
            scope: nursery.scope(),
        };
        let task = runtime.spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        ShutdownSentinel { armed, task }
    }
}

#[cfg(feature = "rt-multi-thread")]
impl Drop for ShutdownSentinel {
    fn drop(&mut self) {
        self.armed
            .store(false, std::sync::atomic::Ordering::Release);
        self.task.abort();
    }
}

/// Like [`parallel_scope`] without blocking the calling thread: a future to await, with
/// [`parallel_scope`]'s output.
///
/// The body receives the [`ParallelScope`] by value and returns a future, as
/// [`Nursery::run`](crate::Nursery::run)'s does (`|s| async move { .. }`; take references to
/// what the children borrow before the closure, `let data = &data;`). An async closure
/// receiving `&ParallelScope` would do too, but today's compiler then cannot prove the
/// scope's future `Send`, so a task could not await it (rust-lang/rust#110338); the blocking
/// [`parallel_scope`] does not have that problem and takes one.
///
/// ```
/// use tokio_nursery::{Cancelled, parallel_scope_async};
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() {
/// let names = vec![String::from("ada"), String::from("grace")];
/// let names = &names;
/// let task = tokio::spawn(async move {
///     let words = vec![String::from("borrowed"), String::from("by"), String::from("a task")];
///     let words = &words;
///     // SAFETY: awaited to completion right here, in a task nothing aborts: not leaked,
///     // not dropped early; the runtime (`#[tokio::main]`'s) outlives it.
///     unsafe {
///         parallel_scope_async(|s| async move {
///             let handles: Vec<_> = words
///                 .iter()
///                 .map(|w| s.spawn(async move { Ok::<_, Cancelled>(w.len()) }))
///                 .collect();
///             let mut total = 0;
///             for handle in handles {
///                 total += handle.await.unwrap();
///             }
///             Ok::<_, Cancelled>(total)
///         })
///     }
///     .await
/// });
/// let total = task.await.unwrap().expect("a multi-thread runtime");
/// assert_eq!(total.unwrap(), Some(16));
///
/// // SAFETY: as above.
/// let lengths = unsafe {
///     parallel_scope_async(|s| async move {
///         let a = s.spawn(async { Ok::<_, Cancelled>(names[0].len()) });
///         let b = s.spawn(async { Ok::<_, Cancelled>(names[1].len()) });
///         Ok::<_, Cancelled>(a.await.unwrap() + b.await.unwrap())
///     })
/// }
/// .await
/// .expect("a multi-thread runtime");
/// assert_eq!(lengths.unwrap(), Some(8));
/// # }
/// ```
///
/// # Safety
///
/// The returned future must be **neither leaked** (`std::mem::forget`, `Box::leak`, a
/// reference cycle, a task that is never polled to its end and never dropped) **nor dropped
/// before it completed**, and **its runtime must not be shut down** while it runs.
///
/// Dropped before completion includes losing a `select!`, a timeout around it,
/// [`.cancellable()`](crate::CancellableExt::cancellable) around it (it drops its future
/// when the scope is cancelled: that is what it is for), and its task
/// being aborted by `JoinHandle::abort` or by tokio at runtime shutdown. The crate itself
/// never drops it early: while it runs, the task awaiting it is exempt from the crate's
/// aborts ([`ChildHandle::abort`], [`DropMode::Abort`](crate::DropMode::Abort), a grace
/// period running out, the abort cascade): the task is told "grace expired" through its
/// scope and aborted once the scope ended; and a hard scope
/// ([`CancelScope::hard`](crate::CancelScope::hard)) around it puts off dropping its body
/// until then. Await it to the end.
///
/// What breaking the contract costs: a leak is undefined behaviour (the children go on
/// using the borrowed stack after it is gone). An early drop, or a runtime shutdown dropping
/// its task, is caught by the backstop (see the module docs): the drop aborts the children
/// and does not return before every child future has been dropped, blocking its thread for
/// polls in progress elsewhere and cutting the children short mid-await; dropping it from
/// inside one of its own children cannot be made sound and aborts the process. The backstop
/// is the last line of defence, not part of the contract: do not rely on it.
///
/// # Panics
///
/// When polled after it completed. A panic of the body or of a child is resumed, as by
/// [`parallel_scope`].
#[allow(clippy::type_complexity)] // the nursery's outcome inside "could it run here"
pub unsafe fn parallel_scope_async<'env, B, Fut, T, E>(
    body: B,
) -> impl Future<Output = Result<Result<Option<T>, NurseryError<E>>, ParallelUnavailable>>
where
    B: FnOnce(ParallelScope<'env, E>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: CancelError + fmt::Debug + Send + 'static,
{
    // SAFETY: the caller promises exactly `running`'s contract (and more: see `# Safety`).
    unsafe { running(body, true) }
}

/// A parallel scope's future: the scope's nursery plus the backstop.
///
/// # Safety
///
/// The returned future must not be leaked before it completes: its `Drop` (or its completion)
/// runs the backstop that the lifetime erasure of the children relies on. With
/// `multi_thread_only` false it runs on any runtime (tests under Miri).
unsafe fn running<'env, B, Fut, T, E>(
    body: B,
    multi_thread_only: bool,
) -> Running<'env, impl Future<Output = Result<Option<T>, NurseryError<E>>>, E>
where
    B: FnOnce(ParallelScope<'env, E>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: CancelError + fmt::Debug + Send + 'static,
{
    let children = Arc::new(Children::new());
    let theirs = children.clone();
    let nursery = Nursery::new()
        .name("parallel scope")
        .drop_mode(DropMode::Abort)
        .run(move |nursery: NurseryHandle<E>| {
            let _ = theirs.scope.set(nursery.scope().id());
            body(ParallelScope {
                nursery,
                children: theirs,
                _env: PhantomData,
            })
        });
    Running {
        nursery: Some(nursery),
        children,
        multi_thread_only,
        started: false,
        exemption: None,
        _env: PhantomData,
    }
}

/// See [`running`].
#[pin_project(PinnedDrop)]
#[must_use = "a parallel scope does nothing unless awaited"]
struct Running<'env, F, E> {
    /// The scope's nursery, until it completed (or panicked).
    #[pin]
    nursery: Option<F>,
    children: Arc<Children<E>>,
    multi_thread_only: bool,
    started: bool,
    /// While it runs, the crate neither aborts the task awaiting it nor lets a hard scope
    /// around it drop it (SPEC B2); dropped after the backstop.
    exemption: Option<Exemption>,
    _env: PhantomData<&'env ()>,
}

impl<F, T, E> Future for Running<'_, F, E>
where
    F: Future<Output = Result<Option<T>, NurseryError<E>>>,
{
    type Output = Result<Result<Option<T>, NurseryError<E>>, ParallelUnavailable>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if !*this.started {
            if *this.multi_thread_only {
                if let Err(unavailable) = multi_thread_runtime() {
                    *this.started = true;
                    this.nursery.set(None); // never polled: nothing ran, nothing to stop
                    return Poll::Ready(Err(unavailable));
                }
            }
            *this.started = true;
            *this.exemption = Some(exempt_current(cx.waker()));
        }
        let Some(nursery) = this.nursery.as_mut().as_pin_mut() else {
            panic!("tokio-nursery: a parallel scope was polled after it completed");
        };
        let polled = catch_unwind(AssertUnwindSafe(|| nursery.poll(cx)));
        let outcome = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(outcome)) => Ok(outcome),
            Err(payload) => Err(payload),
        };
        // The nursery has stopped every child before returning or resuming a panic; the
        // backstop makes sure of it before anything reaches the caller.
        let backstop = Backstop(&**this.children);
        this.nursery.set(None);
        drop(backstop);
        *this.exemption = None;
        match outcome {
            Ok(outcome) => Poll::Ready(Ok(outcome)),
            Err(payload) => resume_unwind(payload),
        }
    }
}

#[pinned_drop]
impl<F, E> PinnedDrop for Running<'_, F, E> {
    fn drop(self: Pin<&mut Self>) {
        let mut this = self.project();
        // Runs even if dropping the nursery panics.
        let _backstop = Backstop(&**this.children);
        // If it had not completed: the nursery (abort mode, SPEC N8) requests abort for every
        // child and drops the body; then the backstop drops what tokio has not dropped yet.
        this.nursery.set(None);
    }
}

/// Runs the children's backstop when dropped.
struct Backstop<'a, O>(&'a Children<O>);

impl<O> Drop for Backstop<'_, O> {
    fn drop(&mut self) {
        self.0.sweep(wait_blocking);
    }
}

/// Blocks this thread for `wait`: through `block_in_place` on a multi-thread runtime, so the
/// worker's queued tasks (its LIFO slot included) move to another thread meanwhile; directly
/// where that is impossible (tokio refuses before running `wait`) or while unwinding.
fn wait_blocking(wait: &mut dyn FnMut()) {
    #[cfg(feature = "rt-multi-thread")]
    if !std::thread::panicking()
        && Handle::try_current()
            .is_ok_and(|handle| handle.runtime_flavor() == RuntimeFlavor::MultiThread)
    {
        let mut waited = false;
        let _ = catch_unwind(AssertUnwindSafe(|| {
            tokio::task::block_in_place(|| {
                waited = true;
                wait();
            })
        }));
        if waited {
            return;
        }
    }
    wait();
}

// ---------------------------------------------------------------------------------------
// The backstop core: lifetime-erased children in cells. It needs no runtime (tokio only
// names a task id), so Miri runs it on its own.
// ---------------------------------------------------------------------------------------

/// What the backstop and the task (through its [`Shell`]) reach of a child, whatever its
/// future: a cell whose lifetime was erased (see [`Children::register`]).
trait Child<E>: Send + Sync {
    /// The parts that do not depend on the future's type.
    fn common(&self) -> &Common;

    /// Polls the future under the cell's lock; when it ends, drops it there and hands its
    /// value to the handle (or drops the value too, if the handle is gone). `Pending` once
    /// the future is gone.
    fn poll_future(&self, cx: &mut Context<'_>) -> Poll<Result<(), E>>;

    /// Drops the future, if it is still there, under the cell's lock with the thread marked
    /// as its runner; an ended cell (`Common::ended`) is passed over without the lock. With
    /// `wait` false, returns `false` without dropping anything if the lock is held (a poll
    /// or a drop in progress); otherwise returns `true`. A panic of the future's drop
    /// propagates (the lock is then poisoned, and the future gone).
    fn drop_future(&self, wait: bool) -> bool;

    /// Whether the future is still in the cell.
    #[cfg(test)]
    fn has_future(&self) -> bool;
}

/// What a [`ParallelHandle`] reaches of its child's cell: the value.
trait Value<T>: Send + Sync {
    /// The child's value, once: there once the child's task returned `Ok`.
    fn take(&self) -> Option<T>;

    /// The handle is gone: the value, there or still to come, is dropped at once. The
    /// child's [`ChildHandle`] (released: no outcome taken, no waker left) stays with the
    /// cell, so that the nursery's cell of the child is freed when this cell is: usually by
    /// the scope's compaction or sweep, on the thread that spawned it, rather than by
    /// whichever worker ran the child last (freeing memory of another thread's arena takes
    /// glibc's lock of that arena).
    fn abandon(&self, join: Option<ChildHandle<()>>);

    /// Where the cell keeps its task's id, for reports.
    fn task(&self) -> &OnceLock<tokio::task::Id>;
}

/// A child cell's parts that do not depend on its future.
struct Common {
    /// The [`thread_token`] of the thread running the future's code (a poll or its drop)
    /// under the lock, else 0.
    runner: AtomicUsize,
    /// The child's task, for reports.
    task: OnceLock<tokio::task::Id>,
    /// The future is gone (ended or dropped) and so is any value no handle holds: set under
    /// the cell's lock once those drops returned, so the backstop may pass over the cell
    /// without its lock, and the compaction forget it.
    ended: AtomicBool,
}

/// One child, in one allocation shared by its task's shell, the backstop's list and its
/// handle: the future, reached only under its lock, and the value, reached only briefly
/// (so that a handle never waits for a poll).
struct Cell<F, T> {
    common: Common,
    /// `Some` until the future ends or is dropped. Pinned: the cell is never moved out of
    /// its `Arc`, and the future is dropped in place (set to `None`) before the `Arc` frees
    /// the cell.
    future: Mutex<Option<F>>,
    value: Mutex<Delivery<T>>,
}

/// A child's value on its way to the handle.
struct Delivery<T> {
    value: Option<T>,
    /// The handle was dropped: a value that comes is dropped, not kept.
    abandoned: bool,
    /// The dropped handle's join handle (see [`Value::abandon`]).
    join: Option<ChildHandle<()>>,
}

/// What tokio runs for a child: polls the child's future under its cell's lock. One fat
/// pointer, so that the nursery's task around it fits tokio's smaller task cell.
struct Shell<E> {
    cell: Arc<dyn Child<E>>,
}

/// The children of a parallel scope: every cell not yet emptied, and whether the scope still
/// takes children.
struct Children<E> {
    state: Mutex<ChildrenState<E>>,
    /// The scope's id, for reports.
    scope: OnceLock<ScopeId>,
    /// How many cells the backstop had to wait for (a poll or a drop in progress elsewhere).
    #[cfg(test)]
    waited: AtomicUsize,
}

/// The backstop's list. Children do not leave it when they end (that would take this lock
/// once more per child, on whichever worker ends it): registration forgets the ended ones
/// from time to time (`compact`).
struct ChildrenState<E> {
    cells: Pages<Arc<dyn Child<E>>>,
    /// The list's length at which registration compacts it next.
    compact_at: usize,
    closed: bool,
}

impl<E> Children<E> {
    fn new() -> Self {
        Children {
            state: Mutex::new(ChildrenState {
                cells: Pages::new(),
                compact_at: COMPACT_AT_LEAST,
                closed: false,
            }),
            scope: OnceLock::new(),
            #[cfg(test)]
            waited: AtomicUsize::new(0),
        }
    }

    /// Registers a child future, erasing its lifetime, and returns the shell to run it and
    /// its value's end for the handle.
    ///
    /// # Panics
    ///
    /// If the scope is closed (its backstop has run): the future is dropped first.
    ///
    /// # Safety
    ///
    /// [`sweep`](Self::sweep) must run on these children, and return, before `'env` ends,
    /// and the returned value's end must not be dropped (nor its value taken) after `'env`
    /// ends unless `T` outlives it; leaking it is harmless. (The task's output is `'static`:
    /// tokio may keep it after that.)
    unsafe fn register<'env, F, T>(&self, future: F) -> (Shell<E>, Arc<dyn Value<T>>)
    where
        F: Future<Output = Result<T, E>> + Send + 'env,
        T: Send + 'env,
        E: Send + 'static,
    {
        let cell = Arc::new(Cell {
            common: Common {
                runner: AtomicUsize::new(0),
                task: OnceLock::new(),
                ended: AtomicBool::new(false),
            },
            future: Mutex::new(Some(future)),
            value: Mutex::new(Delivery {
                value: None,
                abandoned: false,
                join: None,
            }),
        });
        let child: Arc<dyn Child<E> + 'env> = cell.clone();
        let value: Arc<dyn Value<T> + 'env> = cell;
        // SAFETY: only the lifetime bounds of the trait objects change (the same pointers and
        // vtables). From here on the future is reached only through its cell's lock, and is
        // dropped under that lock by the first of: its completion (`poll_future`), its
        // shell's drop, or `sweep`. The caller runs `sweep` before `'env` ends; registration
        // and closing share `state`'s lock, so the cell is either registered before the sweep
        // closes the scope (and the sweep finds it) or refused below (the cell, with its
        // future, dropped before this returns). The sweep returns only once every registered
        // cell's future is gone, waiting for the lock where a poll or a drop of the future
        // runs on another thread; it passes over a cell without its lock only if the cell's
        // `ended` is set (`Release`, read with `Acquire`), which happens under that lock after
        // every drop it must follow; the compaction forgets only such cells; and the sweep
        // keeps every cell referenced until all futures are gone, so a panic while dropping a
        // cell (user code: a waker kept by a dropped handle) cannot cut it short. So no code
        // of the future runs, and the future is not dropped, after `'env` ends. The value:
        // stored under the future's lock, and dropped there if the handle is gone (`abandon`
        // and the store share the value's lock), so a value no handle holds never outlives
        // the sweep; a handle's value is the caller's (the handle carries `T`). What outlives
        // `'env` (the shell in tokio's hands, the cell) holds no future and no unclaimed
        // value, and its drop reads neither.
        let (child, value) = unsafe {
            (
                std::mem::transmute::<Arc<dyn Child<E> + 'env>, Arc<dyn Child<E> + 'static>>(child),
                std::mem::transmute::<Arc<dyn Value<T> + 'env>, Arc<dyn Value<T> + 'static>>(value),
            )
        };
        let mut state = lock(&self.state);
        if state.closed {
            drop(state);
            drop(child); // with the future, which never ran
            drop(value);
            panic!("tokio-nursery: spawned into a parallel scope that has ended");
        }
        state.cells.insert(child.clone());
        let forgotten = if state.cells.len() >= state.compact_at {
            state.compact()
        } else {
            Vec::new()
        };
        drop(state);
        // Outside the lock: the last reference to a cell drops the join handle it keeps.
        self.forget(forgotten);
        (Shell { cell: child }, value)
    }

    /// The backstop: closes the scope to new children and drops every child future still
    /// alive, waiting (through `wait`, which blocks the thread for the closure it is given)
    /// for the ones being polled or dropped on other threads. When it returns, no child future
    /// is alive. A panic in a child's drop is reported, never propagated.
    fn sweep(&self, wait: fn(&mut dyn FnMut())) {
        let cells: Vec<Arc<dyn Child<E>>> = {
            let mut state = lock(&self.state);
            state.closed = true;
            state.cells.drain().collect()
        };
        // Every cell stays referenced until every future is gone: dropping the last reference
        // to one drops the join handle it may keep (released, holding no waker since its
        // handle's drop; `forget` still reports a panic rather than cut the sweep short).
        let mut busy = Vec::new();
        for (index, cell) in cells.iter().enumerate() {
            if !self.drop_in(&**cell, false) {
                if cell.common().runner.load(Ordering::Acquire) == thread_token() {
                    reentrant_drop();
                }
                busy.push(index);
            }
        }
        if !busy.is_empty() {
            #[cfg(test)]
            self.waited.fetch_add(busy.len(), Ordering::SeqCst);
            wait(&mut || {
                for &index in &busy {
                    self.drop_in(&*cells[index], true);
                }
            });
        }
        self.forget(cells);
    }

    /// Drops cells the list no longer holds, reporting a panic rather than propagating it (a
    /// backstop: the child's handle a cell keeps was released, holding no waker, when its
    /// `ParallelHandle` was dropped). Dropping a `Vec` goes on with the other elements after
    /// one panicked.
    fn forget(&self, cells: Vec<Arc<dyn Child<E>>>) {
        if cells.is_empty() {
            return;
        }
        if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(cells))) {
            self.report_panic(None, &*payload);
        }
    }

    /// Reports a panic of a child's drop (of its future, its value or what its cell keeps)
    /// that no nursery hears of.
    fn report_panic(&self, task: Option<tokio::task::Id>, payload: &(dyn std::any::Any + Send)) {
        let origin = match (task, self.scope.get()) {
            (Some(id), _) => Origin::Child { id, name: None },
            (None, Some(scope)) => Origin::Local { scope: *scope },
            (None, None) => Origin::Body,
        };
        report(&Report::Panic {
            origin: &origin,
            payload,
            adopted: false,
        });
    }

    /// Drops the future in `cell`, if any (see [`Child::drop_future`]), reporting a panic.
    fn drop_in(&self, cell: &dyn Child<E>, wait: bool) -> bool {
        let dropped = catch_unwind(AssertUnwindSafe(|| cell.drop_future(wait)));
        let payload = match dropped {
            Ok(dropped) => return dropped,
            Err(payload) => payload,
        };
        self.report_panic(cell.common().task.get().copied(), &*payload);
        true
    }
}

impl<E> ChildrenState<E> {
    /// Forgets the cells that ended and returns them (for the caller to drop outside the
    /// lock), packing the others into fresh pages, and sets the next compaction to twice the
    /// cells left (at least [`COMPACT_AT_LEAST`]). A compaction visits only the cells listed
    /// (the pages start over, so a past peak is not visited again), at least half of which
    /// registered since the last one: registration stays O(1) amortised, and the list holds
    /// at most about twice the live children.
    fn compact(&mut self) -> Vec<Arc<dyn Child<E>>> {
        let mut forgotten = Vec::new();
        for cell in self.cells.drain() {
            if cell.common().ended.load(Ordering::Acquire) {
                forgotten.push(cell);
            } else {
                self.cells.insert(cell);
            }
        }
        self.compact_at = (2 * self.cells.len()).max(COMPACT_AT_LEAST);
        forgotten
    }
}

/// The fewest cells a scope's list compacts at.
const COMPACT_AT_LEAST: usize = 64;

impl<F, T, E> Child<E> for Cell<F, T>
where
    F: Future<Output = Result<T, E>> + Send,
    T: Send,
    E: Send,
{
    fn common(&self) -> &Common {
        &self.common
    }

    fn poll_future(&self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        let mut slot = lock(&self.future);
        let Some(future) = slot.as_mut() else {
            // Emptied by the backstop, which runs only after the scope's nursery aborted this
            // task: tokio drops it at its next scheduling without polling it.
            return Poll::Pending;
        };
        let running = Runner::mark(&self.common);
        // SAFETY: the future is pinned where it is: the cell lives in an `Arc` it is never
        // moved out of, and the future leaves its place only by being dropped in place
        // (`*slot = None`, here or in `drop_future`), before the `Arc` frees the cell.
        let poll = unsafe { Pin::new_unchecked(future) }.poll(cx);
        let Poll::Ready(outcome) = poll else {
            return Poll::Pending;
        };
        // Ended: dropped now, under the lock (a panic here is the child's, SPEC N6).
        *slot = None;
        let outcome = match outcome {
            Ok(value) => {
                let mut delivery = lock(&self.value);
                if delivery.abandoned {
                    drop(delivery);
                    // Still under the future's lock: the backstop waits for this drop.
                    drop(value);
                } else {
                    delivery.value = Some(value);
                }
                Ok(())
            }
            Err(error) => Err(error),
        };
        // Only now: a value no handle holds was dropped above, and the backstop and the
        // compaction pass over an ended cell without waiting for its lock.
        self.common.ended.store(true, Ordering::Release);
        drop(running);
        Poll::Ready(outcome)
    }

    fn drop_future(&self, wait: bool) -> bool {
        if self.common.ended.load(Ordering::Acquire) {
            return true;
        }
        let mut slot = if wait {
            lock(&self.future)
        } else {
            match self.future.try_lock() {
                Ok(slot) => slot,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => return false,
            }
        };
        if slot.is_some() {
            let running = Runner::mark(&self.common);
            *slot = None;
            drop(running);
        }
        // The future is gone, and so is any value no handle holds (dropped under this lock,
        // or its drop unwound): also after a drop that panicked, so the cell can be forgotten.
        self.common.ended.store(true, Ordering::Release);
        true
    }

    #[cfg(test)]
    fn has_future(&self) -> bool {
        lock(&self.future).is_some()
    }
}

impl<F, T> Value<T> for Cell<F, T>
where
    F: Send,
    T: Send,
{
    fn take(&self) -> Option<T> {
        lock(&self.value).value.take()
    }

    fn abandon(&self, join: Option<ChildHandle<()>>) {
        let mut delivery = lock(&self.value);
        delivery.abandoned = true;
        delivery.join = join;
        let value = delivery.value.take();
        drop(delivery);
        // As a dropped `ChildHandle` does: a panic in the value's drop stays here (the
        // handle may be dropped while its owner unwinds, where a second panic aborts).
        let _ = catch_unwind(AssertUnwindSafe(|| drop(value)));
    }

    fn task(&self) -> &OnceLock<tokio::task::Id> {
        &self.common.task
    }
}

/// Marks the current thread as running a cell's code (a poll or a drop) while alive, so that
/// a backstop on this same thread can tell a reentrant drop from a poll elsewhere.
struct Runner<'a> {
    runner: &'a AtomicUsize,
}

impl<'a> Runner<'a> {
    fn mark(cell: &'a Common) -> Self {
        cell.runner.store(thread_token(), Ordering::Release);
        Runner {
            runner: &cell.runner,
        }
    }
}

impl Drop for Runner<'_> {
    fn drop(&mut self) {
        self.runner.store(0, Ordering::Release);
    }
}

/// A number that identifies the current thread among the live ones (never 0): the address
/// of a thread-local.
fn thread_token() -> usize {
    thread_local! {
        static TOKEN: u8 = const { 0 };
    }
    TOKEN.with(|token| std::ptr::from_ref(token) as usize)
}

/// The scope's future is being dropped by code running inside one of its own children (on
/// this thread): that child cannot be dropped while it runs, and returning would let it go on
/// using a borrow that has ended. Neither waiting (a deadlock) nor unwinding (the child would
/// run its unwinding code unsynchronised with the caller) is sound.
#[cold]
fn reentrant_drop() -> ! {
    eprintln!(
        "tokio-nursery: a parallel scope's future was dropped from inside one of its own \
         children; its borrows cannot be kept alive: aborting the process"
    );
    std::process::abort()
}

/// The default report hook's behaviour (SPEC N6), for panics in a child's drop that no
/// nursery hears of.
fn report(report: &Report<'_>) {
    #[cfg(feature = "tracing")]
    tracing::error!("{report}");
    #[cfg(not(feature = "tracing"))]
    eprintln!("tokio-nursery: {report}");
}

impl<E> Future for Shell<E> {
    type Output = Result<(), E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.cell.poll_future(cx)
    }
}

impl<E> Drop for Shell<E> {
    fn drop(&mut self) {
        // The task was dropped: an abort, or the end of a task whose future ended.
        self.cell.drop_future(true);
    }
}

/// The erasure and the backstop under Miri: the core without a runtime (threads standing in
/// for an executor), and whole scopes on tokio's current-thread and multi-thread runtimes
/// (timer, no I/O driver): `cargo +nightly miri test --lib parallel`.
#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    use super::{Children, Shell, running};
    use crate::{Cancelled, NurseryError};

    /// Reads the borrowed data when dropped: a use after the borrow ended is what Miri flags.
    struct ReadsOnDrop<'a> {
        data: &'a [u64],
        dropped: &'a AtomicUsize,
    }

    impl Drop for ReadsOnDrop<'_> {
        fn drop(&mut self) {
            assert_eq!(self.data.iter().sum::<u64>(), 6);
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    /// A child that borrows `data` and never completes.
    fn pending_child<'a>(
        data: &'a [u64],
        dropped: &'a AtomicUsize,
    ) -> Pin<Box<dyn Future<Output = Result<u64, ()>> + Send + 'a>> {
        Box::pin(async move {
            let guard = ReadsOnDrop { data, dropped };
            std::future::pending::<()>().await;
            Ok(guard.data.len() as u64)
        })
    }

    /// Registers a [`pending_child`] and polls it once: parked.
    ///
    /// # Safety
    ///
    /// `register`'s: the children's `sweep` runs before `data` and `dropped` go away.
    unsafe fn park<'a>(
        children: &Arc<Children<()>>,
        data: &'a [u64],
        dropped: &'a AtomicUsize,
    ) -> (Shell<()>, Arc<dyn super::Value<u64>>) {
        // SAFETY: the caller's.
        let (mut shell, value) = unsafe { children.register(pending_child(data, dropped)) };
        assert!(poll_once(Pin::new(&mut shell)).is_pending());
        (shell, value)
    }

    #[test]
    fn no_child_outlives_the_borrow_when_an_executor_keeps_the_shells() {
        let children = Arc::new(Children::<()>::new());
        let mut shells: Vec<Shell<()>> = Vec::new();
        {
            let data = vec![1u64, 2, 3]; // on the heap: Miri sees a use after free
            let dropped = AtomicUsize::new(0);
            for _ in 0..3 {
                // SAFETY: `sweep` runs below, before `data` and `dropped` go away.
                shells.push(unsafe { park(&children, &data, &dropped) }.0);
            }
            // A completed child is dropped in its poll.
            // SAFETY: as above.
            let (mut done, value) =
                unsafe { children.register(async { Ok::<_, ()>(data.iter().sum::<u64>()) }) };
            assert_eq!(poll_once(Pin::new(&mut done)), Poll::Ready(Ok(())));
            assert!(!done.cell.has_future());
            assert_eq!(value.take(), Some(6));
            shells.push(done);
            children.sweep(|wait| wait());
            assert_eq!(
                dropped.load(Ordering::SeqCst),
                3,
                "all dropped by the sweep"
            );
        } // the borrow ends: `data` and `dropped` are freed
        // The "executor" (a thread) still holds the shells, as tokio holds aborted tasks it
        // has not dropped yet; polled (a wake racing with the abort) and dropped, they run
        // nothing that borrows.
        let executor = std::thread::spawn(move || {
            for mut shell in shells {
                assert!(poll_once(Pin::new(&mut shell)).is_pending());
            }
        });
        executor.join().unwrap();
        assert!(lock(&children.state).cells.is_empty());
    }

    fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        mutex.lock().unwrap()
    }

    #[test]
    fn the_sweep_waits_for_a_poll_in_progress_on_another_thread() {
        let children = Arc::new(Children::<()>::new());
        let data = vec![1u64, 2, 3];
        let dropped = AtomicUsize::new(0);
        let in_poll = AtomicBool::new(false);
        let sweeping = AtomicBool::new(false);
        std::thread::scope(|threads| {
            let child = Box::pin(async {
                let guard = ReadsOnDrop {
                    data: &data,
                    dropped: &dropped,
                };
                // One poll that runs until the sweep has found it busy, then returns Pending.
                std::future::poll_fn(|_| {
                    in_poll.store(true, Ordering::SeqCst);
                    while children.waited.load(Ordering::SeqCst) == 0 {
                        std::thread::yield_now();
                    }
                    Poll::<()>::Pending
                })
                .await;
                drop(guard);
                Ok::<_, ()>(())
            });
            // SAFETY: `sweep` runs below, before the borrowed locals go away.
            let (mut shell, _value) = unsafe { children.register(child) };
            let poller = threads.spawn(move || {
                assert!(poll_once(Pin::new(&mut shell)).is_pending());
                shell // kept alive past the sweep, emptied
            });
            while !in_poll.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            sweeping.store(true, Ordering::SeqCst);
            children.sweep(|wait| wait());
            assert_eq!(children.waited.load(Ordering::SeqCst), 1);
            assert_eq!(
                dropped.load(Ordering::SeqCst),
                1,
                "dropped once the poll returned, before the sweep did"
            );
            let shell = poller.join().unwrap();
            assert!(!shell.cell.has_future());
        });
        assert!(sweeping.load(Ordering::SeqCst));
    }

    /// A value whose handle is gone is dropped at once: by the child's poll if the handle went
    /// first, by the handle's drop if the value came first; never left in a cell that an
    /// executor may keep after the borrow ended.
    #[test]
    fn an_abandoned_value_is_dropped_by_whoever_comes_second() {
        let children = Arc::new(Children::<()>::new());
        let mut shells = Vec::new();
        {
            let data = vec![1u64, 2, 3]; // on the heap: Miri sees a use after free
            let dropped = AtomicUsize::new(0);
            let (data_ref, dropped_ref) = (&data, &dropped);
            let value_of = move || async move {
                Ok::<_, ()>(ReadsOnDrop {
                    data: data_ref,
                    dropped: dropped_ref,
                })
            };
            // The handle first.
            // SAFETY: `sweep` runs below, before `data` and `dropped` go away.
            let (mut shell, value) = unsafe { children.register(value_of()) };
            value.abandon(None);
            drop(value);
            assert_eq!(poll_once(Pin::new(&mut shell)), Poll::Ready(Ok(())));
            assert_eq!(dropped.load(Ordering::SeqCst), 1, "dropped by the poll");
            shells.push(shell);
            // The value first.
            // SAFETY: as above.
            let (mut shell, value) = unsafe { children.register(value_of()) };
            assert_eq!(poll_once(Pin::new(&mut shell)), Poll::Ready(Ok(())));
            assert_eq!(dropped.load(Ordering::SeqCst), 1, "kept for the handle");
            value.abandon(None);
            assert_eq!(dropped.load(Ordering::SeqCst), 2, "dropped by the handle");
            drop(value);
            shells.push(shell);
            children.sweep(|wait| wait());
        }
        // The "executor" drops the shells (and with them the cells) after the borrow ended.
        drop(shells);
    }

    #[test]
    fn a_shell_dropped_by_its_task_drops_its_child_and_is_forgotten_later() {
        let children = Arc::new(Children::<()>::new());
        let data = vec![1u64, 2, 3];
        let dropped = AtomicUsize::new(0);
        // SAFETY: `sweep` runs below, before the borrowed locals go away.
        let (shell, _value) = unsafe { park(&children, &data, &dropped) };
        assert_eq!(lock(&children.state).cells.len(), 1);
        drop(shell); // an aborted task
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        lock(&children.state).compact();
        assert!(lock(&children.state).cells.is_empty());
        children.sweep(|wait| wait());
    }

    /// A compaction packs the cells left into fresh pages: a later one does not visit the
    /// keys of a past peak again (registration would slow down after a burst of children).
    #[test]
    fn a_compaction_after_a_peak_packs_the_cells_left() {
        let children = Arc::new(Children::<()>::new());
        let data = vec![1u64, 2, 3];
        let dropped = AtomicUsize::new(0);
        let mut parked = Vec::new();
        for _ in 0..1_000 {
            // SAFETY: `sweep` runs below, before the borrowed locals go away.
            parked.push(unsafe { park(&children, &data, &dropped) });
        }
        parked.truncate(10); // the others' tasks are dropped: aborted
        let forgotten = lock(&children.state).compact();
        assert_eq!(forgotten.len(), 990);
        let state = lock(&children.state);
        assert_eq!(state.cells.len(), 10);
        assert_eq!(state.cells.next_key(), 10, "packed into the lowest keys");
        assert_eq!(state.compact_at, super::COMPACT_AT_LEAST);
        drop(state);
        children.sweep(|wait| wait());
        assert_eq!(dropped.load(Ordering::SeqCst), 1_000);
    }

    /// Children that end leave the backstop's list at its next compaction: a long-lived
    /// scope's list holds about twice its live children, however many it ran.
    #[test]
    fn the_list_stays_within_twice_the_live_children() {
        let children = Arc::new(Children::<()>::new());
        let data = vec![1u64, 2, 3];
        let dropped = AtomicUsize::new(0);
        let mut parked = Vec::new();
        for round in 0..2_000 {
            if round % 10 == 0 {
                // SAFETY: `sweep` runs below, before the borrowed locals go away.
                parked.push(unsafe { park(&children, &data, &dropped) });
            }
            // SAFETY: as above.
            let (mut shell, value) =
                unsafe { children.register(async { Ok::<_, ()>(data.len()) }) };
            assert_eq!(poll_once(Pin::new(&mut shell)), Poll::Ready(Ok(())));
            drop((shell, value));
            let listed = lock(&children.state).cells.len();
            assert!(
                listed <= (2 * parked.len()).max(super::COMPACT_AT_LEAST) + 1,
                "{listed} cells listed for {} live children",
                parked.len()
            );
        }
        children.sweep(|wait| wait());
        assert_eq!(dropped.load(Ordering::SeqCst), parked.len());
    }

    #[test]
    fn a_closed_scope_refuses_children_and_drops_them() {
        let children = Arc::new(Children::<()>::new());
        children.sweep(|wait| wait());
        let data = vec![1u64, 2, 3];
        let dropped = AtomicUsize::new(0);
        let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: the scope is closed: the future is dropped before `register` returns.
            drop(unsafe { children.register(pending_child(&data, &dropped)) });
        }));
        assert!(refused.is_err());
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            0,
            "never started, nothing to drop"
        );
    }

    /// The whole scope on a current-thread runtime without I/O: its future dropped while
    /// children are parked mid-await, then the borrowed data freed, then the runtime drops
    /// the aborted tasks (their shells, already emptied by the backstop).
    #[test]
    fn dropping_the_scope_future_leaves_no_child_behind() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let dropped = AtomicUsize::new(0);
        runtime.block_on(async {
            let data = vec![1u64, 2, 3];
            let started = AtomicUsize::new(0);
            {
                let (data, started, dropped) = (&data, &started, &dropped);
                // SAFETY (of the test): dropped below, which runs the backstop; never
                // leaked; the runtime outlives it.
                let scope = unsafe {
                    running(
                        |s| async move {
                            for _ in 0..3 {
                                s.spawn(async move {
                                    let _guard = ReadsOnDrop { data, dropped };
                                    started.fetch_add(1, Ordering::SeqCst);
                                    std::future::pending::<()>().await;
                                    Ok::<_, Cancelled>(())
                                });
                            }
                            std::future::pending::<()>().await;
                            Ok::<_, Cancelled>(())
                        },
                        false,
                    )
                };
                let mut scope = Box::pin(scope);
                while started.load(Ordering::SeqCst) < 3 {
                    assert!(futures::poll!(scope.as_mut()).is_pending());
                    tokio::task::yield_now().await;
                }
                drop(scope);
                assert_eq!(
                    dropped.load(Ordering::SeqCst),
                    3,
                    "before the drop returned"
                );
            }
            drop(data);
            // Let the runtime drop the aborted tasks.
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
        });
        drop(runtime);
        assert_eq!(dropped.load(Ordering::SeqCst), 3);
    }

    /// A child's value lives in its cell, which tokio's task may keep after the scope: a
    /// value whose handle was dropped is dropped by the child's task, inside the scope, and
    /// a handle that leaves the scope (returned by the body) still gets its value afterwards.
    /// Under Miri, a value dropped after its borrow ended is a use after free.
    #[test]
    fn values_never_outlive_their_borrow_and_handles_may_outlive_the_scope() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let dropped = AtomicUsize::new(0);
        runtime.block_on(async {
            let data = vec![1u64, 2, 3]; // on the heap: Miri sees a use after free
            let kept = {
                let (data, dropped) = (&data, &dropped);
                // SAFETY (of the test): awaited to completion; the runtime outlives it.
                let out = unsafe {
                    running(
                        |s| async move {
                            let gone = s.spawn(async move {
                                tokio::task::yield_now().await;
                                Ok::<_, Cancelled>(ReadsOnDrop { data, dropped })
                            });
                            drop(gone); // before its child finished
                            let done = s.spawn(async move {
                                Ok::<_, Cancelled>(ReadsOnDrop { data, dropped })
                            });
                            tokio::task::yield_now().await;
                            Ok::<_, Cancelled>(done)
                        },
                        false,
                    )
                }
                .await;
                assert_eq!(
                    dropped.load(Ordering::SeqCst),
                    1,
                    "the abandoned value, by its child's task"
                );
                out.unwrap().unwrap().unwrap()
            };
            let value = kept.await.expect("the child's value");
            assert_eq!(value.data.len(), 3);
            drop(value);
            assert_eq!(dropped.load(Ordering::SeqCst), 2);
            drop(data);
            // Let the runtime drop the finished tasks' shells and cells.
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
        });
        drop(runtime);
        assert_eq!(dropped.load(Ordering::SeqCst), 2);
    }

    /// The whole scope to completion under Miri: values borrow, a failure is returned.
    #[test]
    fn a_scope_runs_to_completion_with_borrowed_values() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let words = [String::from("borrowed"), String::from("words")];
        let words = &words;
        let out = runtime.block_on(async {
            // SAFETY (of the test): awaited to completion; the runtime outlives it.
            unsafe {
                running(
                    |s| async move {
                        let handles: Vec<_> = words
                            .iter()
                            .map(|w| s.spawn(async move { Ok::<_, std::io::Error>(w.as_str()) }))
                            .collect();
                        let mut joined = Vec::new();
                        for h in handles {
                            joined.push(h.await.unwrap());
                        }
                        Ok::<_, std::io::Error>(joined.join(" "))
                    },
                    false,
                )
            }
            .await
        });
        assert_eq!(out.unwrap().unwrap().as_deref(), Some("borrowed words"));
        let failed = runtime.block_on(async {
            // SAFETY (of the test): as above.
            unsafe {
                running(
                    |s| async move {
                        s.spawn(async { Err::<(), _>(std::io::Error::other(words[0].clone())) });
                        Ok::<_, std::io::Error>(())
                    },
                    false,
                )
            }
            .await
        });
        match failed.unwrap() {
            Err(NurseryError::Failed(failures)) => {
                assert_eq!(failures[0].error().to_string(), "borrowed")
            }
            other => panic!("{other:?}"),
        }
    }

    /// Spins until `flag` is set (Miri runs threads preemptively, so this ends).
    fn spin_until(flag: &AtomicBool) {
        while !flag.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
    }

    fn multi_thread_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap()
    }

    /// The safe entry on tokio's multi-thread runtime: two children that borrow meet at a
    /// barrier only parallel children can pass.
    #[cfg(feature = "rt-multi-thread")]
    #[test]
    fn the_blocking_scope_runs_borrowing_children_in_parallel() {
        let runtime = multi_thread_runtime();
        let data = [20u64, 22];
        let arrived = AtomicUsize::new(0);
        let meet = || {
            arrived.fetch_add(1, Ordering::SeqCst);
            while arrived.load(Ordering::SeqCst) < 2 {
                std::thread::yield_now();
            }
        };
        let out = runtime.block_on(async {
            super::parallel_scope(async |s| {
                let a = s.spawn(async {
                    meet();
                    Ok::<_, Cancelled>(data[0])
                });
                let b = s.spawn(async {
                    meet();
                    Ok::<_, Cancelled>(data[1])
                });
                Ok::<_, Cancelled>(a.await.unwrap() + b.await.unwrap())
            })
        });
        assert_eq!(out.unwrap().unwrap(), Some(42));
    }

    /// The unsafe entry's future dropped on a worker of a multi-thread runtime while one
    /// child is being polled on the other worker: the backstop waits for that poll, drops it,
    /// and no child touches the borrowed data after the drop returned.
    #[test]
    fn a_drop_on_a_worker_waits_for_a_child_polled_on_the_other() {
        let runtime = multi_thread_runtime();
        let dropped = Arc::new(AtomicUsize::new(0));
        let counted = dropped.clone();
        let task = runtime.spawn(async move {
            let data = vec![1u64, 2, 3];
            let polling = AtomicBool::new(false);
            let release = AtomicBool::new(false);
            let idle = AtomicUsize::new(0);
            {
                let (data, polling, release, idle, dropped) =
                    (&data, &polling, &release, &idle, &*counted);
                // SAFETY (of the test): dropped early on purpose, which runs the backstop;
                // never leaked; the runtime outlives it.
                let scope = unsafe {
                    running(
                        |s| async move {
                            s.spawn(async move {
                                let _guard = ReadsOnDrop { data, dropped };
                                polling.store(true, Ordering::SeqCst);
                                spin_until(release);
                                std::future::pending::<()>().await;
                                Ok::<_, Cancelled>(())
                            });
                            s.spawn(async move {
                                let _guard = ReadsOnDrop { data, dropped };
                                idle.fetch_add(1, Ordering::SeqCst);
                                std::future::pending::<()>().await;
                                Ok::<_, Cancelled>(())
                            });
                            std::future::pending::<()>().await;
                            Ok::<_, Cancelled>(())
                        },
                        true,
                    )
                };
                let mut scope = Box::pin(scope);
                assert!(futures::poll!(scope.as_mut()).is_pending());
                // Wait (blocking this worker) until the busy child runs on the other one.
                // Spawned from this worker, both children sit in its queue: block in place so
                // the other worker takes them.
                tokio::task::block_in_place(|| {
                    while !polling.load(Ordering::SeqCst) || idle.load(Ordering::SeqCst) == 0 {
                        std::thread::yield_now();
                    }
                });
                let children = scope.children.clone();
                std::thread::scope(|threads| {
                    threads.spawn(|| {
                        // Lets the busy poll return once the backstop waits for it.
                        while children.waited.load(Ordering::SeqCst) == 0 {
                            std::thread::yield_now();
                        }
                        release.store(true, Ordering::SeqCst);
                    });
                    drop(scope);
                    assert_eq!(
                        dropped.load(Ordering::SeqCst),
                        2,
                        "before the drop returned"
                    );
                });
                // The busy child for sure (it spins until the backstop waits); the idle one
                // too if tokio was dropping its aborted task at that moment.
                assert!(children.waited.load(Ordering::SeqCst) >= 1);
            }
            drop(data);
        });
        runtime.block_on(task).unwrap();
        drop(runtime);
        assert_eq!(dropped.load(Ordering::SeqCst), 2);
    }
}
