//! A mutex that poisons (SPEC C2): [`Mutex`].
//!
//! tokio's mutex has no poisoning: a critical section cut short (a panic, or the future
//! running it dropped at an `.await` in the middle) leaves the data half-updated and the
//! next locker none the wiser. This one delimits the critical section with a closure, so it
//! can tell a section that *completed* (it returned, with a value, an error or through `?`:
//! never poisons) from one that was *cut short* (it panicked or its future was dropped
//! before it returned: poisons). A plain RAII guard cannot tell these apart: in `Drop`,
//! `std::thread::panicking()` is false both for a completed section and for a dropped one.
//! The next lock of a poisoned mutex says so and gives access to recover, as
//! `std::sync::Mutex` does.

use std::fmt;
use std::ops::{Deref, DerefMut};

use crate::poison::Poison;

/// An async mutex whose critical sections are closures, and which is poisoned by a section
/// that is cut short (a panic, or its future dropped mid-section).
///
/// A cancellation delivered *inside* a section at a cancellation point (a deadline seen by
/// `sleep(..).await?`) is no cut: the section returns through `?`, and returning is
/// completing, so nothing is poisoned, however half-done the update. Keep cancellation
/// points out of sections that must not stop half-way (check before the section, with
/// [`lock_cancellable`](Mutex::lock_cancellable)), or undo in the section before returning
/// the error. A *hard* scope ([`CancelScope::hard`](crate::CancelScope::hard)) or a plain
/// `tokio::time::timeout` around the lock drops the section instead, which poisons
/// ([chapter 6](crate::guide::ch06_protected_work)).
///
/// ```
/// use tokio_nursery::Mutex;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let accounts = Mutex::new((100u32, 0u32));
/// // A section that returns has completed (also one that returns an error): no poison.
/// let moved = accounts
///     .lock(async |(alice, bob)| {
///         *alice -= 30;
///         tokio::task::yield_now().await; // an await in the middle of the update
///         *bob += 30;
///         *alice + *bob
///     })
///     .await
///     .unwrap();
/// assert_eq!(moved, 100);
/// assert!(!accounts.is_poisoned());
/// # }
/// ```
pub struct Mutex<T: ?Sized> {
    /// The flag and the cut-short guard (`poison.rs`, model-checked with loom).
    poison: Poison,
    inner: tokio::sync::Mutex<T>,
}

/// The mutex was poisoned by a critical section that was cut short; holds the lock, so the
/// data can be inspected and repaired, then the poison cleared.
///
/// ```
/// use std::time::Duration;
/// use tokio_nursery::Mutex;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let pair = Mutex::new((100u32, 0u32));
/// // The section's future is dropped at its await (a timeout): cut short.
/// let _ = tokio::time::timeout(
///     Duration::from_millis(10),
///     pair.lock(async |(a, b)| {
///         *a -= 30;
///         tokio::time::sleep(Duration::from_secs(1)).await;
///         *b += 30;
///     }),
/// )
/// .await;
/// let mut poisoned = pair.lock(async |_| ()).await.unwrap_err();
/// assert_eq!(*poisoned, (70, 0)); // half-updated, and we know it
/// poisoned.1 = 100 - poisoned.0;  // repair
/// poisoned.clear_poison();
/// assert!(!pair.is_poisoned());
/// # }
/// ```
pub struct Poisoned<'a, T: ?Sized> {
    mutex: &'a Mutex<T>,
    guard: tokio::sync::MutexGuard<'a, T>,
}

impl<T> Mutex<T> {
    /// A mutex holding `value`, not poisoned.
    pub fn new(value: T) -> Self {
        Mutex {
            poison: Poison::new(),
            inner: tokio::sync::Mutex::new(value),
        }
    }

    /// The value, whether or not the mutex is poisoned.
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Waits for the lock, then runs `section` with the data. A section that returns has
    /// completed and never poisons; if it panics or its future is dropped before it
    /// returns, the mutex is poisoned.
    ///
    /// Waiting for the lock is cancel-safe (dropping this future then loses nothing); once
    /// the section has started, dropping this future cuts the section short and poisons the
    /// mutex. Not a cancellation point; [`lock_cancellable`](Self::lock_cancellable) makes
    /// the wait one (and only the wait). Wrapping `lock` in `.cancellable()` would also cut
    /// the section itself when a cancellation arrives while it runs, which poisons.
    ///
    /// Returns [`Poisoned`] instead of running the section if the mutex is poisoned.
    pub async fn lock<R>(
        &self,
        section: impl AsyncFnOnce(&mut T) -> R,
    ) -> Result<R, Poisoned<'_, T>> {
        let guard = self.inner.lock().await;
        self.section(guard, section).await
    }

    /// Like [`lock`](Self::lock), but waiting for the lock is a cancellation point: if the
    /// current scope is cancelled before the lock is acquired, returns the `Cancelled` and
    /// runs nothing. Once the section has started it runs to its end like `lock`'s (its own
    /// awaits decide whether it notices the cancellation).
    ///
    /// ```
    /// use tokio_nursery::{CancelScope, Mutex};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let mutex = Mutex::new(0);
    /// let scope = CancelScope::new();
    /// scope.handle().cancel();
    /// let out = scope
    ///     .run(async {
    ///         let ran = mutex.lock_cancellable(async |n: &mut i32| *n += 1).await?;
    ///         Ok::<_, tokio_nursery::Cancelled>(ran.is_ok())
    ///     })
    ///     .await;
    /// assert!(matches!(out, Ok(None)), "cancelled while waiting: nothing ran");
    /// assert_eq!(mutex.lock(async |n: &mut i32| *n).await.unwrap(), 0);
    /// # }
    /// ```
    pub async fn lock_cancellable<R>(
        &self,
        section: impl AsyncFnOnce(&mut T) -> R,
    ) -> Result<Result<R, Poisoned<'_, T>>, crate::Cancelled> {
        use crate::CancellableExt;
        let guard = self.inner.lock().cancellable().await?;
        Ok(self.section(guard, section).await)
    }

    /// Like [`lock`](Self::lock), but without waiting: `None` if the lock is held.
    pub async fn try_lock<R>(
        &self,
        section: impl AsyncFnOnce(&mut T) -> R,
    ) -> Option<Result<R, Poisoned<'_, T>>> {
        let guard = self.inner.try_lock().ok()?;
        Some(self.section(guard, section).await)
    }

    /// Runs `section` under `guard`, poisoning the mutex if it is cut short; or reports the
    /// poison left by an earlier section.
    async fn section<'a, R>(
        &'a self,
        guard: tokio::sync::MutexGuard<'a, T>,
        section: impl AsyncFnOnce(&mut T) -> R,
    ) -> Result<R, Poisoned<'a, T>> {
        // A section cut short poisons before the lock is released (poison.rs, P-2).
        self.poison
            .run(guard, section)
            .await
            .map_err(|guard| Poisoned { mutex: self, guard })
    }

    /// Whether a critical section was cut short since the poison was last cleared.
    pub fn is_poisoned(&self) -> bool {
        self.poison.is_poisoned()
    }

    /// Clears the poison, for code that knows the data is consistent again.
    pub fn clear_poison(&self) {
        self.poison.clear();
    }
}

impl<'a, T: ?Sized> Poisoned<'a, T> {
    /// Clears the poison (the data has been repaired) and releases the lock.
    pub fn clear_poison(self) {
        self.mutex.clear_poison();
    }

    /// Keeps the data locked to work on it further; the mutex stays poisoned until
    /// [`Mutex::clear_poison`].
    pub fn into_guard(self) -> tokio::sync::MutexGuard<'a, T> {
        self.guard
    }
}

impl<T: ?Sized> Deref for Poisoned<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T: ?Sized> DerefMut for Poisoned<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Poisoned<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poisoned")
            .field("data", &&*self.guard)
            .finish()
    }
}

impl<T: ?Sized> fmt::Display for Poisoned<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the mutex is poisoned: a critical section was cut short")
    }
}

impl<T: ?Sized + fmt::Debug> std::error::Error for Poisoned<'_, T> {}

impl<T: fmt::Debug> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutex")
            .field("poisoned", &self.is_poisoned())
            .field("inner", &self.inner)
            .finish()
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Self {
        Mutex::new(T::default())
    }
}
