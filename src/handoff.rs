//! The start handoff (SPEC N3): what a started child and its starter share, as a state
//! machine without tokio types, so it can be model-checked with loom (SPEC R1).
//!
//! A started child runs under the starter's scopes until it signals readiness; the signal
//! moves its scope under the nursery's (unless the starter's scope is cancelled at that
//! moment: then it stays, as in Trio, and the starter waits for it to exit). An end before
//! the signal goes to the starter alone. A starter that gives up before the signal moves the
//! child to the nursery with its own scope cancelled. `nursery::start` wraps this with the
//! tokio-facing types.
//!
//! Invariants:
//!
//! H-1. Every decision (signal, early end, giving up, polling) is taken under `inner`'s
//!      lock, so exactly one of a signal, an early end and giving up wins; the others see
//!      its phase.
//! H-2. The move at the signal is decided exactly once: by `signal` if the child's scope is
//!      known (`link` ran), else by `link` (the signal came first, before the spawn). Both
//!      read and set `child` under the lock.
//! H-3. An end goes to exactly one place: to the starter (kept in `Early` until `poll` or
//!      `abandon` takes it) or back to the child's route (the nursery), never both, never
//!      neither.
//! H-4. The starter's waker is registered under the lock and woken after it is released.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::task::{Poll, Waker};

use crate::keep_waker::poll_or_keep;
use crate::node::Node;
use crate::reason::CancelReason;
use crate::sync::{Arc, Mutex, MutexGuard, lock};

/// What a started child and its starter share. `End` is how the child ended before the
/// signal (the nursery's `EarlyEnd`).
pub(crate) struct Handoff<V, End> {
    inner: Mutex<Inner<V, End>>,
    /// The nursery's scope, where the child moves when it signals.
    nursery: Arc<Node>,
}

struct Inner<V, End> {
    phase: Phase<V, End>,
    /// The child's scope, once spawned (`link`, H-2).
    child: Option<Arc<Node>>,
    waker: Option<Waker>,
}

enum Phase<V, End> {
    /// Not signalled yet.
    Waiting,
    /// Signalled; `moved` is false when the caller's scope was cancelled at the signal (the
    /// child then stays under the caller's scopes until it exits, as in Trio).
    Signalled {
        value: Option<V>,
        moved: bool,
        exited: bool,
    },
    /// Ended before signalling.
    Early(End),
    /// The starter gave up before the signal: the child was moved to the nursery with its
    /// own scope cancelled.
    Abandoned,
    /// The starter has its outcome.
    Taken,
}

/// What `signal` did, for the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signalled {
    /// The child moved under the nursery's scope.
    Moved,
    /// The caller's scope was cancelled: the child stays under it until it exits.
    Stayed,
    /// Before the spawn: `link` carries the move out.
    Deferred,
    /// The starter had given up (or the child had ended): nothing to do.
    Ignored,
}

/// What the starter gets.
pub(crate) enum Outcome<V, End> {
    /// The signalled value.
    Value(V),
    /// The child ended before signalling.
    Early(End),
}

impl<V, End> Handoff<V, End> {
    /// A handoff for a child of the nursery whose scope is `nursery`.
    pub(crate) fn new(nursery: Arc<Node>) -> Self {
        Handoff {
            inner: Mutex::new(Inner {
                phase: Phase::Waiting,
                child: None,
                waker: None,
            }),
            nursery,
        }
    }

    /// Releases the lock, then wakes the starter (H-4).
    fn wake(mut inner: MutexGuard<'_, Inner<V, End>>) {
        let waker = inner.waker.take();
        drop(inner);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The child's scope exists: remember it, and carry out a signal given before (H-2).
    pub(crate) fn link(&self, child: &Arc<Node>) {
        let mut inner = lock(&self.inner);
        debug_assert!(inner.child.is_none(), "a started child is linked once");
        inner.child = Some(child.clone());
        let mut moving = None;
        if let Phase::Signalled { moved, .. } = &mut inner.phase {
            // `child` was unknown at the signal, so the move is decided here.
            *moved = !child.is_cancelled();
            if *moved {
                moving = Some(child.reparent_deferred(&self.nursery));
            }
        }
        drop(inner);
        // The move's effects below the child, wakers included, after the lock (invariant 5).
        if let Some(moving) = moving {
            moving.finish();
        }
    }

    /// The child signals readiness with `value` (H-1, H-2).
    pub(crate) fn signal(&self, value: V) -> Signalled {
        let mut inner = lock(&self.inner);
        if !matches!(inner.phase, Phase::Waiting) {
            return Signalled::Ignored; // the starter gave up: the child belongs to the nursery
        }
        // Trio: a signal while the caller's scope is cancelled does not move the child. A
        // signal given before the child was spawned (in the closure's synchronous part) is
        // carried out when it is (`link`).
        let mut moving = None;
        let (moved, did) = match &inner.child {
            Some(child) => {
                let moved = !child.is_cancelled();
                if moved {
                    moving = Some(child.reparent_deferred(&self.nursery));
                    (true, Signalled::Moved)
                } else {
                    (false, Signalled::Stayed)
                }
            }
            None => (true, Signalled::Deferred),
        };
        inner.phase = Phase::Signalled {
            value: Some(value),
            moved,
            exited: false,
        };
        let starter = inner.waker.take();
        drop(inner);
        // The move's effects below the child (its waiters may run any code, and panic), then
        // the starter, all after the lock (invariant 5); the phase is set whatever they do.
        let woken = catch_unwind(AssertUnwindSafe(|| {
            if let Some(moving) = moving {
                moving.finish();
            }
        }));
        if let Some(starter) = starter {
            starter.wake();
        }
        if let Err(payload) = woken {
            resume_unwind(payload);
        }
        did
    }

    /// The child ended (`returned`: it returned a value, which the starter does not get).
    /// Before the signal, or after a signal that left it under the caller's scopes, the end
    /// is the starter's (`Ok`); otherwise it is given back for the nursery (H-3).
    pub(crate) fn ended_early(&self, end: End, returned: bool) -> Result<(), End> {
        let mut inner = lock(&self.inner);
        match &mut inner.phase {
            Phase::Waiting => {
                inner.phase = Phase::Early(end);
                Self::wake(inner);
                Ok(())
            }
            // Signalled while the caller's scope was cancelled, so not moved (Trio): the child
            // is still the caller's; its value was given, but a failure, an echo of the
            // caller's cancellation or a panic comes out of `start`.
            Phase::Signalled {
                moved: false,
                exited,
                ..
            } => {
                if returned {
                    *exited = true;
                    Self::wake(inner);
                    Err(end)
                } else {
                    inner.phase = Phase::Early(end);
                    Self::wake(inner);
                    Ok(())
                }
            }
            _ => Err(end),
        }
    }

    /// The starter asks for its outcome; `Pending` registers `waker` (H-4).
    ///
    /// # Panics
    ///
    /// Once the outcome was taken, or after `abandon`.
    pub(crate) fn poll(&self, waker: &Waker) -> Poll<Outcome<V, End>> {
        poll_or_keep(
            &self.inner,
            waker,
            |inner| match std::mem::replace(&mut inner.phase, Phase::Taken) {
                Phase::Signalled {
                    value,
                    moved,
                    exited,
                } if moved || exited => {
                    Some(Outcome::Value(value.expect("the value is taken once")))
                }
                Phase::Early(end) => Some(Outcome::Early(end)),
                Phase::Taken | Phase::Abandoned => panic!("`Start` polled after completion"),
                waiting => {
                    inner.phase = waiting;
                    None
                }
            },
            |inner| &mut inner.waker,
        )
    }

    /// The starter gave up (its future was dropped). Before the signal (or after one that
    /// left the child under the caller's scopes, before it exited), SPEC N3: the child joins
    /// the nursery with its own scope cancelled, and its end is the nursery's. Returns an
    /// early end the starter never took (H-3: it is still the starter's to dispose of).
    pub(crate) fn abandon(&self) -> Option<End> {
        let mut inner = lock(&self.inner);
        let waiting = matches!(
            inner.phase,
            Phase::Waiting
                | Phase::Signalled {
                    moved: false,
                    exited: false,
                    ..
                }
        );
        if waiting {
            inner.phase = Phase::Abandoned;
            let child = inner.child.clone();
            drop(inner);
            if let Some(child) = child {
                child.cancel(CancelReason::explicit_with(
                    "the code waiting for this child to start gave up",
                ));
                child.reparent(&self.nursery);
            }
            return None;
        }
        match std::mem::replace(&mut inner.phase, Phase::Taken) {
            Phase::Early(end) => Some(end),
            other => {
                inner.phase = other;
                None
            }
        }
    }
}

/// Model checks of the start handoff (SPEC R1, N3):
/// `RUSTFLAGS="--cfg loom" cargo test --lib --release loom_`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::node::ScopeId;
    use loom::thread;

    /// An early end as the models see it.
    #[derive(Debug, PartialEq)]
    enum End {
        Returned,
        Failed,
    }

    type Start = Handoff<u32, End>;

    fn entered(parent: Option<&Arc<Node>>) -> Arc<Node> {
        let node = Arc::new(Node::new(ScopeId::next(), false, None));
        node.enter(parent, None);
        node
    }

    /// The caller's scope, the nursery's and the child's (entered under the caller's, as
    /// `start` does), with the handoff already linked unless `linked` is false.
    fn setup(linked: bool) -> (Arc<Node>, Arc<Node>, Arc<Node>, Arc<Start>) {
        let nursery = entered(None);
        let caller = entered(Some(&nursery));
        let child = entered(Some(&caller));
        let start = Arc::new(Start::new(nursery.clone()));
        if linked {
            start.link(&child);
        }
        (nursery, caller, child, start)
    }

    fn parent_is(child: &Node, parent: &Arc<Node>) -> bool {
        child.parent().is_some_and(|p| Arc::ptr_eq(&p, parent))
    }

    fn poll_now(start: &Start) -> Poll<Outcome<u32, End>> {
        start.poll(futures::task::noop_waker_ref())
    }

    /// The starter gives up (drops `Start`) while the child signals. Either the signal won:
    /// the child moved to the nursery uncancelled; or giving up won: the signal is ignored
    /// and the child moved to the nursery with its own scope cancelled. Either way it ends
    /// under the nursery, and its later end is the nursery's.
    #[test]
    fn loom_signal_races_with_the_starter_giving_up() {
        loom::model(|| {
            let (nursery, _caller, child, start) = setup(true);
            let signalling = {
                let start = start.clone();
                thread::spawn(move || start.signal(7))
            };
            let untaken = start.abandon();
            let did = signalling.join().unwrap();
            assert!(untaken.is_none());
            assert!(
                parent_is(&child, &nursery),
                "the child ends under the nursery"
            );
            match did {
                Signalled::Moved => assert!(!child.cancel_called()),
                Signalled::Ignored => assert!(child.cancel_called() && child.is_cancelled()),
                other => panic!("unexpected {other:?}"),
            }
            assert_eq!(
                start.ended_early(End::Failed, false),
                Err(End::Failed),
                "the end is the nursery's"
            );
            child.end(false);
        });
    }

    /// The child signals while the nursery is cancelled (its caller's scope is not). The
    /// child moves (the caller's scope was not cancelled) and, whichever came first, ends up
    /// seeing the nursery's cancellation by inheritance; the starter gets the value.
    #[test]
    fn loom_signal_races_with_the_nursery_being_cancelled() {
        loom::model(|| {
            let nursery = entered(None);
            let outer = entered(None); // the caller runs elsewhere, outside the nursery
            let child = entered(Some(&outer));
            let start = Arc::new(Start::new(nursery.clone()));
            start.link(&child);
            let cancelling = {
                let nursery = nursery.clone();
                thread::spawn(move || nursery.cancel(CancelReason::SiblingFailed))
            };
            let did = start.signal(7);
            cancelling.join().unwrap();
            assert_eq!(did, Signalled::Moved);
            assert!(parent_is(&child, &nursery));
            assert!(child.is_cancelled() && !child.cancel_called());
            assert!(matches!(poll_now(&start), Poll::Ready(Outcome::Value(7))));
            child.end(false);
        });
    }

    /// The child signals while the caller's scope is cancelled. Either it moved first (then
    /// it is under the nursery, not cancelled, and the starter has the value at once) or
    /// it stayed (under the caller's cancelled scope; the starter waits until it exits,
    /// then has the value; a return after the signal is given back).
    #[test]
    fn loom_signal_races_with_the_callers_cancel() {
        loom::model(|| {
            let (nursery, caller, child, start) = setup(true);
            let cancelling = {
                let caller = caller.clone();
                thread::spawn(move || caller.cancel(CancelReason::Explicit(None)))
            };
            let did = start.signal(7);
            cancelling.join().unwrap();
            match did {
                Signalled::Moved => {
                    assert!(parent_is(&child, &nursery) && !child.is_cancelled());
                    assert!(matches!(poll_now(&start), Poll::Ready(Outcome::Value(7))));
                }
                Signalled::Stayed => {
                    assert!(parent_is(&child, &caller) && child.is_cancelled());
                    assert!(poll_now(&start).is_pending(), "waits for the child to exit");
                    assert_eq!(start.ended_early(End::Returned, true), Err(End::Returned));
                    assert!(matches!(poll_now(&start), Poll::Ready(Outcome::Value(7))));
                }
                other => panic!("unexpected {other:?}"),
            }
            child.end(false);
        });
    }

    /// H-3: the child ends early (a failure) while the starter gives up. The failure goes to
    /// exactly one place: the nursery (giving up won: `ended_early` hands it back, and the
    /// child was cancelled) or the starter (the end won: `abandon` returns it untaken).
    #[test]
    fn loom_early_end_races_with_the_starter_giving_up() {
        loom::model(|| {
            let (nursery, _caller, child, start) = setup(true);
            let ending = {
                let start = start.clone();
                thread::spawn(move || start.ended_early(End::Failed, false))
            };
            let untaken = start.abandon();
            let ended = ending.join().unwrap();
            match (ended, untaken) {
                (Err(End::Failed), None) => {
                    assert!(child.cancel_called() && parent_is(&child, &nursery));
                }
                (Ok(()), Some(End::Failed)) => assert!(!child.cancel_called()),
                (ended, untaken) => panic!("the failure went to {ended:?} and {untaken:?}"),
            }
            child.end(false);
        });
    }

    /// H-1: the signal (given from another thread) races with the child's early end. One
    /// wins: either the child ended first (the signal is ignored, the starter gets the end)
    /// or the signal did (the child moved, its end is the nursery's, the starter gets the
    /// value).
    #[test]
    fn loom_signal_races_with_an_early_end() {
        loom::model(|| {
            let (nursery, _caller, child, start) = setup(true);
            let signalling = {
                let start = start.clone();
                thread::spawn(move || start.signal(7))
            };
            let ended = start.ended_early(End::Failed, false);
            let did = signalling.join().unwrap();
            match (did, ended) {
                (Signalled::Ignored, Ok(())) => {
                    assert!(matches!(
                        poll_now(&start),
                        Poll::Ready(Outcome::Early(End::Failed))
                    ));
                }
                (Signalled::Moved, Err(End::Failed)) => {
                    assert!(parent_is(&child, &nursery));
                    assert!(matches!(poll_now(&start), Poll::Ready(Outcome::Value(7))));
                }
                (did, ended) => panic!("both or neither won: {did:?}, {ended:?}"),
            }
            child.end(false);
        });
    }

    /// H-4: the starter waits (registers its waker) while the child signals or ends early:
    /// no wake-up is lost, and the starter gets exactly the outcome the child produced.
    #[test]
    fn loom_the_starter_waiting_races_with_the_signal_or_an_early_end() {
        for early in [false, true] {
            loom::model(move || {
                let (_nursery, _caller, child, start) = setup(true);
                let child_side = {
                    let start = start.clone();
                    thread::spawn(move || {
                        if early {
                            assert!(start.ended_early(End::Failed, false).is_ok());
                        } else {
                            assert_eq!(start.signal(7), Signalled::Moved);
                        }
                    })
                };
                let outcome =
                    crate::sync::block_on(std::future::poll_fn(|cx| start.poll(cx.waker())));
                child_side.join().unwrap();
                match outcome {
                    Outcome::Value(value) => assert!(!early && value == 7),
                    Outcome::Early(end) => assert!(early && end == End::Failed),
                }
                child.end(false);
            });
        }
    }

    /// H-2: a signal given from another thread races with the spawn linking the child's
    /// scope, while the nursery is already cancelled. The move is decided once, from the
    /// caller's scope (not cancelled): the child ends under the nursery and the starter
    /// gets the value at once (with the move decided twice, `link` would re-read the child
    /// after the signal moved it under the cancelled nursery and leave the starter waiting).
    #[test]
    fn loom_signal_races_with_linking_the_child() {
        loom::model(|| {
            let nursery = entered(None);
            nursery.cancel(CancelReason::SiblingFailed);
            let outer = entered(None); // the caller runs outside the nursery
            let child = entered(Some(&outer));
            let start = Arc::new(Start::new(nursery.clone()));
            let signalling = {
                let start = start.clone();
                thread::spawn(move || start.signal(7))
            };
            start.link(&child);
            let did = signalling.join().unwrap();
            assert!(matches!(did, Signalled::Moved | Signalled::Deferred));
            assert!(parent_is(&child, &nursery));
            assert!(matches!(poll_now(&start), Poll::Ready(Outcome::Value(7))));
            child.end(false);
        });
    }
}
