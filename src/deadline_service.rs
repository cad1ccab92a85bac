//! The deadline service: one per tokio runtime, it cancels scopes whose deadline passed.
//!
//! A timer polled only by a scope's own future cannot reach the scope's children in other
//! tasks while that future is parked or busy (SPEC S6), so deadlines are kept in one ordered
//! map per runtime (Trio's deadline heap) and fired by one task. That task exists only while
//! some deadline is armed: it is spawned by the first alarm and exits when the map empties,
//! so no task of ours is left at the end of a test (SPEC R3). It never polls the clock in a
//! loop: it sleeps until the earliest deadline or until an earlier one is armed.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use tokio::runtime::{self, Handle};
use tokio::sync::Notify;

use crate::node::{DeadlineTimer, Node, TimerKey};
use crate::nursery::catch_waker_panic;
use crate::sync::lock;

/// The deadlines of one runtime and the task that fires them.
pub(crate) struct DeadlineService {
    me: Weak<DeadlineService>,
    runtime: Handle,
    id: runtime::Id,
    /// Where the service serves since `runtime` refused its task (it had shut down while a
    /// scope entered there lives on in another runtime): the runtime that armed it then.
    moved: Mutex<Option<Handle>>,
    /// `moved` is set (read first, so that the usual case takes no lock).
    has_moved: AtomicBool,
    /// The task last spawned was dropped unpolled: its runtime had shut down.
    refused: AtomicBool,
    state: Mutex<State>,
    /// Wakes the task when an earlier alarm is armed or the map empties.
    changed: Notify,
    /// The runtime was found to have its time driver enabled.
    timers_checked: AtomicBool,
}

struct State {
    alarms: BTreeMap<TimerKey, Arc<Node>>,
    next_seq: u64,
    /// A task is serving the alarms (spawned and not yet exited).
    serving: bool,
}

/// Services by runtime. Entries are weak: a service lives while a node holds it.
static SERVICES: Mutex<Vec<(runtime::Id, Weak<DeadlineService>)>> = Mutex::new(Vec::new());

impl DeadlineService {
    /// The service of the runtime this thread is in, or `None` outside a runtime.
    pub(crate) fn current() -> Option<Arc<DeadlineService>> {
        let runtime = Handle::try_current().ok()?;
        let id = runtime.id();
        let mut services = lock(&SERVICES);
        if let Some(service) = services
            .iter()
            .find(|(key, _)| *key == id)
            .and_then(|(_, service)| service.upgrade())
        {
            return Some(service);
        }
        services.retain(|(_, service)| service.strong_count() > 0);
        let service = Arc::new_cyclic(|me| DeadlineService {
            me: me.clone(),
            runtime,
            id,
            moved: Mutex::new(None),
            has_moved: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            state: Mutex::new(State {
                alarms: BTreeMap::new(),
                next_seq: 0,
                serving: false,
            }),
            changed: Notify::new(),
            timers_checked: AtomicBool::new(false),
        });
        services.push((id, Arc::downgrade(&service)));
        Some(service)
    }

    /// Runs `f` with the runtime the service serves on.
    fn with_runtime<R>(&self, f: impl FnOnce(&Handle) -> R) -> R {
        if self.has_moved.load(Ordering::Acquire) {
            if let Some(moved) = lock(&self.moved).clone() {
                return f(&moved);
            }
        }
        f(&self.runtime)
    }

    /// The runtime's clock: tokio's, so a paused clock is honoured.
    fn runtime_now(&self) -> Instant {
        self.with_runtime(|runtime| {
            let _enter = runtime.enter();
            tokio::time::Instant::now().into_std()
        })
    }

    /// Spawns the task that serves the alarms. A runtime that has shut down drops the task
    /// unpolled, inside `spawn`: the service then moves to the runtime of the thread arming
    /// it, if that is another one (else the next alarm tries again).
    fn start_serving(&self, service: Arc<DeadlineService>) {
        let mut tried = None;
        loop {
            let runtime = self.with_runtime(Handle::clone);
            if tried == Some(runtime.id()) {
                return;
            }
            tried = Some(runtime.id());
            let task = service.clone().serve(Unstarted(Some(service.clone())));
            spawn_detached(&runtime, task);
            if !self.refused.swap(false, Ordering::AcqRel) {
                return;
            }
            let Ok(current) = Handle::try_current() else {
                return;
            };
            if current.id() == runtime.id() {
                return;
            }
            let mut state = lock(&self.state);
            if state.serving {
                return; // another alarm started a task meanwhile
            }
            state.serving = true;
            drop(state);
            *lock(&self.moved) = Some(current);
            self.has_moved.store(true, Ordering::Release);
        }
    }

    /// Fires due alarms until none is left; sleeps in between.
    async fn serve(self: Arc<Self>, mut unstarted: Unstarted) {
        unstarted.0 = None;
        let mut stop = StopGuard(Some(&self));
        loop {
            let now = tokio::time::Instant::now().into_std();
            let (due, next) = {
                let mut state = lock(&self.state);
                let mut due = Vec::new();
                while let Some(entry) = state.alarms.first_entry() {
                    if entry.key().at > now {
                        break;
                    }
                    due.push(entry.remove_entry());
                }
                let next = state.alarms.keys().next().map(|key| key.at);
                if next.is_none() && due.is_empty() {
                    state.serving = false;
                    stop.0 = None;
                    return;
                }
                (due, next)
            };
            for (key, node) in due {
                #[cfg(feature = "tracing")]
                tracing::debug!(scope = %node.id(), "deadline passed");
                // The due alarms are out of the map: a waker panicking at one must not
                // unwind this task and cost the others.
                catch_waker_panic(
                    || format!("when the deadline of {} passed", node.id()),
                    || node.fire_deadline(key),
                );
            }
            if let Some(at) = next {
                let sleep = pin!(tokio::time::sleep_until(at.into()));
                let changed = pin!(self.changed.notified());
                futures::future::select(sleep, changed).await;
            }
        }
    }
}

/// Held by the service's task until its first poll: dropped before that, the task was
/// refused by its runtime (shut down), which `start_serving` learns.
struct Unstarted(Option<Arc<DeadlineService>>);

impl Drop for Unstarted {
    fn drop(&mut self) {
        if let Some(service) = self.0.take() {
            lock(&service.state).serving = false;
            service.refused.store(true, Ordering::Release);
        }
    }
}

/// Clears `serving` if the task is dropped before it exits by itself (runtime shutdown).
struct StopGuard<'a>(Option<&'a Arc<DeadlineService>>);

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        if let Some(service) = self.0 {
            lock(&service.state).serving = false;
            let mut services = lock(&SERVICES);
            services.retain(|(id, weak)| *id != service.id || weak.strong_count() == 0);
        }
    }
}

impl DeadlineTimer for DeadlineService {
    fn now(&self) -> Instant {
        self.runtime_now()
    }

    fn arm(&self, node: &Arc<Node>, at: Instant) -> TimerKey {
        if !self.timers_checked.load(Ordering::Relaxed) {
            // Without a time driver the service's sleep would panic inside its own task and
            // the deadline would silently never fire: fail here, in the caller, with tokio's
            // own message ("timers are disabled ... enable_time").
            self.with_runtime(|runtime| {
                let _enter = runtime.enter();
                drop(tokio::time::sleep_until(tokio::time::Instant::from_std(at)));
            });
            self.timers_checked.store(true, Ordering::Relaxed);
        }
        let mut state = lock(&self.state);
        let key = TimerKey {
            at,
            seq: state.next_seq,
        };
        state.next_seq += 1;
        state.alarms.insert(key, node.clone());
        let earliest = state.alarms.keys().next() == Some(&key);
        if !state.serving {
            state.serving = true;
            drop(state);
            if let Some(service) = self.me.upgrade() {
                self.start_serving(service);
            }
        } else if earliest {
            drop(state);
            self.changed.notify_one();
        }
        key
    }

    fn disarm(&self, key: TimerKey) {
        let mut state = lock(&self.state);
        let removed = state.alarms.remove(&key);
        let empty = state.alarms.is_empty();
        drop(state);
        drop(removed);
        if empty {
            self.changed.notify_one();
        }
    }
}

fn spawn_detached(runtime: &Handle, task: impl Future<Output = ()> + Send + 'static) {
    drop(runtime.spawn(task));
}
