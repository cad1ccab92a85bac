//! The per-runtime registry of orphans: children of a nursery dropped in wait mode with no
//! live enclosing nursery to adopt them (SPEC N9). Nothing is silently detached: they are
//! counted here, can be awaited with [`orphans_finished`], and what they report goes to the
//! default report hook with a warning.

use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use tokio::runtime::{self, Handle};

use super::report::{Origin, deliver};
use crate::registry::{Adopter, Closed, OrphanReport, StopAll};
use crate::sync::lock;

/// The orphans of one runtime.
pub(crate) struct Orphans {
    state: Mutex<State>,
}

struct State {
    /// Orphaned nurseries (or protected work) still running, with how to stop them.
    adoptees: slab::Slab<Arc<dyn StopAll>>,
    waiters: Vec<Waker>,
    /// The root's grace for the orphans ran out (`stop_all`): a later orphan is stopped at
    /// its adoption (registry invariant N-3), so the root's wait for the rest ends.
    stopped: bool,
}

static REGISTRIES: Mutex<Vec<(runtime::Id, Arc<Orphans>)>> = Mutex::new(Vec::new());

impl Orphans {
    /// The orphan registry of `runtime`, made on first use.
    pub(crate) fn of(runtime: &Handle) -> Arc<Orphans> {
        let id = runtime.id();
        let mut registries = lock(&REGISTRIES);
        if let Some((_, orphans)) = registries.iter().find(|(key, _)| *key == id) {
            return orphans.clone();
        }
        // Registries that hold nothing and that no one is using are forgotten (those of
        // runtimes gone among them); a new one is made when needed.
        registries.retain(|(_, orphans)| Arc::strong_count(orphans) > 1 || orphans.live() > 0);
        let orphans = Arc::new(Orphans {
            state: Mutex::new(State {
                adoptees: slab::Slab::new(),
                waiters: Vec::new(),
                stopped: false,
            }),
        });
        registries.push((id, orphans.clone()));
        orphans
    }

    fn current() -> Option<Arc<Orphans>> {
        let id = Handle::try_current().ok()?.id();
        lock(&REGISTRIES)
            .iter()
            .find(|(key, _)| *key == id)
            .map(|(_, orphans)| orphans.clone())
    }

    fn live(&self) -> usize {
        lock(&self.state).adoptees.len()
    }

    /// The scopes of what this registry holds, for the task tree (SPEC O2).
    pub(crate) fn scopes(&self) -> Vec<Arc<crate::node::Node>> {
        lock(&self.state)
            .adoptees
            .iter()
            .filter_map(|(_, stop)| stop.scope())
            .collect()
    }

    /// The orphan registry of the current runtime, if it ever held anything.
    pub(crate) fn of_current() -> Option<Arc<Orphans>> {
        Self::current()
    }

    /// Aborts what every orphan still runs, as a nursery whose grace ran out aborts its
    /// children (protected work and blocking children are told, not aborted); returns the
    /// names of what it aborted.
    pub(crate) fn stop_all(&self) -> Vec<String> {
        let adoptees: Vec<_> = {
            let mut state = lock(&self.state);
            state.stopped = true;
            state
                .adoptees
                .iter()
                .map(|(_, stop)| stop.clone())
                .collect()
        };
        // Outside the lock: an aborted task may be dropped inline, and its end takes it.
        adoptees
            .iter()
            .flat_map(|stop| stop.stop_all(true))
            .collect()
    }
}

impl Adopter<Origin> for Orphans {
    fn adopt(&self, stop: Arc<dyn StopAll>) -> Result<(usize, bool), Closed> {
        let mut state = lock(&self.state);
        let key = state.adoptees.insert(stop);
        Ok((key, state.stopped))
    }

    fn adoptee_finished(&self, key: usize) {
        let mut state = lock(&self.state);
        let removed = state.adoptees.try_remove(key);
        let waiters = if state.adoptees.is_empty() {
            std::mem::take(&mut state.waiters)
        } else {
            Vec::new()
        };
        drop(state);
        drop(removed);
        for waker in waiters {
            super::catch_waker_panic(
                || "when the last orphan's end was told to orphans_finished".to_string(),
                || waker.wake(),
            );
        }
    }

    fn describe(&self) -> crate::node::Description {
        crate::node::Description {
            kind: "orphans",
            name: None,
            detail: Some(format!("{} orphaned nurseries", self.live())),
        }
    }

    fn successor(&self) -> Option<Arc<dyn Adopter<Origin>>> {
        None
    }

    fn orphan_report(&self, report: OrphanReport<Origin>) {
        super::report::adopted(&report, |r| deliver(None, r));
    }
}

/// How many orphans of the current runtime are still running: nurseries dropped in wait
/// mode with no live enclosing nursery whose children still run (SPEC N9), and protected
/// work ([`protect`](crate::protect)) started outside any nursery.
pub fn orphan_count() -> usize {
    Orphans::current().map_or(0, |orphans| orphans.live())
}

/// Waits until the current runtime has no orphans left (see [`orphan_count`]). Not a
/// cancellation point; cancel-safe.
pub async fn orphans_finished() {
    let Some(orphans) = Orphans::current() else {
        return;
    };
    poll_fn(|cx| {
        // Cloned before the lock and, if not kept, dropped after it (DESIGN invariant 5: a
        // waker's code never runs under a lock). A rare wait: the spare clone is cheap enough.
        let mut spare = Some(cx.waker().clone());
        let mut state = lock(&orphans.state);
        let done = state.adoptees.is_empty();
        if !done && !state.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            state.waiters.extend(spare.take());
        }
        drop(state);
        drop(spare);
        if done { Poll::Ready(()) } else { Poll::Pending }
    })
    .await
}
