//! The synchronisation primitives the concurrency core is written against.
//!
//! Under `cfg(loom)` the atomics and locks are loom's model-checked types; otherwise std's. The scope tree
//! ([`crate::node`]) uses nothing else, so the reliability work can model-check it.

// `Arc` stays std's under loom: the model checks atomics and locks; std's `Arc` allows the
// `self: &Arc<Self>` receivers the core uses.
pub(crate) use std::sync::Arc;

#[cfg(loom)]
pub(crate) use loom::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering, fence},
};

#[cfg(not(loom))]
pub(crate) use std::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering, fence},
};

/// Locks `mutex`, ignoring poisoning.
///
/// Every critical section in the core leaves its data consistent before anything that may
/// panic (waking a waker, running user code) is called, so a poisoned lock holds valid data.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}
