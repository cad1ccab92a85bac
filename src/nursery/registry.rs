//! A nursery's child registry: which children are alive, whether the nursery still accepts
//! children, and the failures and panics they reported.
//!
//! Written against [`crate::sync`] and generic over the abort handle, so the close/spawn
//! handoff can be model-checked with loom like the scope tree.
//!
//! Invariants (DESIGN.md, "Nurseries"):
//!
//! N-1. `live` counts children registered and not yet finished; a child is finished once its
//!      future has been dropped (completed or aborted), so `live == 0` means no child future
//!      is alive (SPEC N1).
//! N-2. The nursery closes only when `live == 0`, under the same lock a spawn registers
//!      under: no child can be added to a closed nursery, none is lost by a close.
//! N-3. A slot holds the child's abort handle from `started` until `finished`; a child that
//!      finishes before its spawner stored the handle leaves its slot `Finished` for the
//!      spawner to clear.

use std::any::Any;
use std::task::Waker;

use slab::Slab;

use crate::sync::{Mutex, lock};

/// A panic payload and who panicked.
pub(crate) struct Panic<L> {
    pub(crate) label: L,
    pub(crate) payload: Box<dyn Any + Send>,
}

pub(crate) struct Registry<A, F, L> {
    state: Mutex<State<A, F, L>>,
}

struct State<A, F, L> {
    open: bool,
    live: usize,
    slots: Slab<Slot<A>>,
    failures: Vec<F>,
    panics: Vec<Panic<L>>,
    /// The nursery's task, waiting for `live` to reach zero.
    waiter: Option<Waker>,
}

enum Slot<A> {
    Starting,
    Running(A),
    Finished,
}

/// The nursery no longer accepts children.
#[derive(Debug)]
pub(crate) struct Closed;

impl<A, F, L> Registry<A, F, L> {
    pub(crate) fn new() -> Self {
        Registry {
            state: Mutex::new(State {
                open: true,
                live: 0,
                slots: Slab::new(),
                failures: Vec::new(),
                panics: Vec::new(),
                waiter: None,
            }),
        }
    }

    /// Registers a child about to be spawned (N-2).
    pub(crate) fn register(&self) -> Result<usize, Closed> {
        let mut state = lock(&self.state);
        if !state.open {
            return Err(Closed);
        }
        state.live += 1;
        Ok(state.slots.insert(Slot::Starting))
    }

    /// Stores the abort handle of a spawned child (N-3).
    pub(crate) fn started(&self, key: usize, abort: A) {
        let mut state = lock(&self.state);
        match state.slots.get_mut(key) {
            Some(slot @ Slot::Starting) => *slot = Slot::Running(abort),
            Some(Slot::Finished) => {
                state.slots.remove(key);
            }
            _ => unreachable!("a child slot is started once"),
        }
    }

    /// A child's future has been dropped (N-1). Wakes the nursery when it was the last.
    pub(crate) fn finished(&self, key: usize) {
        let mut state = lock(&self.state);
        match state.slots.get_mut(key) {
            Some(slot @ Slot::Starting) => *slot = Slot::Finished,
            Some(Slot::Running(_)) => drop(state.slots.remove(key)),
            _ => unreachable!("a child slot finishes once"),
        }
        state.live -= 1;
        let waiter = if state.live == 0 {
            state.waiter.take()
        } else {
            None
        };
        drop(state);
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }

    /// Records a failure; returns true for the first one (it triggers the cancellation).
    pub(crate) fn fail(&self, failure: F) -> bool {
        let mut state = lock(&self.state);
        state.failures.push(failure);
        state.failures.len() == 1 && state.panics.is_empty()
    }

    /// Records a panic; returns true if it is the first failure of any kind.
    pub(crate) fn panicked(&self, label: L, payload: Box<dyn Any + Send>) -> bool {
        let mut state = lock(&self.state);
        state.panics.push(Panic { label, payload });
        state.panics.len() == 1 && state.failures.is_empty()
    }

    /// Closes the nursery if no child is alive; otherwise remembers `waker` to be woken
    /// when the last one finishes (N-2).
    pub(crate) fn try_close(&self, waker: &Waker) -> bool {
        let mut state = lock(&self.state);
        if state.live == 0 {
            state.open = false;
            true
        } else {
            match &mut state.waiter {
                Some(existing) if existing.will_wake(waker) => {}
                slot => *slot = Some(waker.clone()),
            }
            false
        }
    }

    /// Closes the nursery to new children whatever is alive (the nursery's future is gone).
    pub(crate) fn close(&self) {
        lock(&self.state).open = false;
    }

    pub(crate) fn is_open(&self) -> bool {
        lock(&self.state).open
    }

    pub(crate) fn live(&self) -> usize {
        lock(&self.state).live
    }

    /// Calls `abort` on every running child's handle, outside the lock (aborting may drop a
    /// child's future inline, which finishes it).
    pub(crate) fn abort_all(&self, abort: impl Fn(&A)) -> usize
    where
        A: Clone,
    {
        let handles: Vec<A> = {
            let state = lock(&self.state);
            state
                .slots
                .iter()
                .filter_map(|(_, slot)| match slot {
                    Slot::Running(handle) => Some(handle.clone()),
                    _ => None,
                })
                .collect()
        };
        handles.iter().for_each(abort);
        handles.len()
    }

    /// The failures and panics reported, in the order they happened.
    pub(crate) fn take_reports(&self) -> (Vec<F>, Vec<Panic<L>>) {
        let mut state = lock(&self.state);
        (
            std::mem::take(&mut state.failures),
            std::mem::take(&mut state.panics),
        )
    }
}
