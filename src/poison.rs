//! The poison flag of [`crate::Mutex`] (SPEC C2), without tokio types, so what of it can
//! race is model-checked with loom (SPEC R1).
//!
//! The mutex's mutual exclusion is tokio's (`tokio::sync::Mutex`); this piece is the flag
//! and the guard that sets it when a critical section is cut short. Its rules:
//!
//! P-1. A section starts only after the flag was read clear, under the lock.
//! P-2. A section that is cut short (its guard dropped, by a panic or by its future being
//!      dropped) sets the flag *before* the lock is released (the guard is declared after
//!      the lock guard, so it is dropped first); a section that completed never touches
//!      it (the guard is forgotten). So the next locker sees the poison exactly when the
//!      section before it was cut short, and nothing has cleared it since.
//! P-3. Under the lock, the mutex's own ordering makes the flag and the data coherent; the
//!      flag's `Release`/`Acquire` add only that `is_poisoned` outside the lock (a report,
//!      or `Mutex::clear_poison`, which does not take the lock, as in std) is not torn.

use crate::sync::{AtomicBool, Ordering};

/// Whether a critical section was cut short since the poison was last cleared.
pub(crate) struct Poison {
    poisoned: AtomicBool,
}

/// A running critical section: poisons on drop unless [`completed`](Section::completed).
#[must_use = "a section poisons when dropped: call `completed` when it returned"]
pub(crate) struct Section<'a>(&'a AtomicBool);

impl Poison {
    pub(crate) fn new() -> Self {
        Poison {
            poisoned: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    pub(crate) fn clear(&self) {
        self.poisoned.store(false, Ordering::Release);
    }

    /// Starts a critical section (P-1: the caller holds the lock and read the flag clear).
    pub(crate) fn section(&self) -> Section<'_> {
        Section(&self.poisoned)
    }
}

impl Poison {
    /// Runs `section` on the data behind `guard` (the lock is held), poisoning if it is cut
    /// short (P-2); or gives the guard back if an earlier section poisoned (P-1). `guard` is
    /// a parameter, so the section guard, a local, is dropped before it when this future is
    /// dropped mid-section: the poison is set before the lock is released.
    pub(crate) async fn run<G, R>(
        &self,
        mut guard: G,
        section: impl AsyncFnOnce(&mut G::Target) -> R,
    ) -> Result<R, G>
    where
        G: std::ops::DerefMut,
    {
        if self.is_poisoned() {
            return Err(guard);
        }
        let cut_short = self.section();
        let value = section(&mut *guard).await;
        cut_short.completed();
        Ok(value)
    }
}

impl Section<'_> {
    /// The section returned (with a value, an error or through `?`): it never poisons.
    pub(crate) fn completed(self) {
        std::mem::forget(self);
    }
}

impl Drop for Section<'_> {
    /// The section was cut short (P-2).
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Model checks of the poison flag (SPEC R1, C2), with loom's mutex standing in for tokio's
/// (both give mutual exclusion and order one holder's writes before the next holder):
/// `RUSTFLAGS="--cfg loom" cargo test --lib --release loom_`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::{Arc, AtomicU64, Mutex, lock};
    use loom::thread;
    use std::future::Future;
    use std::task::{Context, Poll};

    /// `crate::Mutex`: the data, the lock and the flag.
    struct PoisoningMutex {
        lock: Mutex<(u32, u32)>,
        poison: Poison,
        /// Lock acquisitions, in order: who held the lock when.
        turn: AtomicU64,
    }

    /// Pending once, then ready: an await in the middle of a section.
    struct Pause(bool);

    impl Future for Pause {
        type Output = ();

        fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                Poll::Ready(())
            } else {
                self.0 = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    /// What one locker saw.
    #[derive(Debug, Clone, Copy)]
    struct Saw {
        turn: u64,
        poisoned: bool,
    }

    impl PoisoningMutex {
        fn new() -> Arc<Self> {
            Arc::new(PoisoningMutex {
                lock: Mutex::new((100, 0)),
                poison: Poison::new(),
                turn: AtomicU64::new(0),
            })
        }

        /// `Mutex::lock` with a section moving 30 from one side to the other, with an await
        /// in the middle where it may be cut short (`cut_short`: its future is dropped
        /// there, as a timeout or a lost `select!` does). Runs the real `Poison::run`, as
        /// `Mutex::section` does, so the order in which the section guard and the lock
        /// guard are dropped is the one the mutex has.
        fn transfer(&self, cut_short: bool) -> Saw {
            let guard = lock(&self.lock);
            let turn = self.turn.fetch_add(1, Ordering::Relaxed);
            let mut run = std::pin::pin!(self.poison.run(guard, async |data: &mut (u32, u32)| {
                data.0 -= 30;
                Pause(false).await;
                data.1 += 30;
            }));
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            match run.as_mut().poll(&mut cx) {
                Poll::Ready(Err(_guard)) => Saw {
                    turn,
                    poisoned: true,
                },
                Poll::Ready(Ok(())) => unreachable!("the section awaits once"),
                Poll::Pending if cut_short => Saw {
                    turn,
                    poisoned: false,
                }, // `run` is dropped here, mid-section
                Poll::Pending => {
                    assert!(matches!(run.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
                    Saw {
                        turn,
                        poisoned: false,
                    }
                }
            }
        }

        /// A locker that repairs a poisoned mutex (`Poisoned::clear_poison`, under the lock).
        fn repair(&self) -> Saw {
            let mut data = lock(&self.lock);
            let turn = self.turn.fetch_add(1, Ordering::Relaxed);
            let poisoned = self.poison.is_poisoned();
            if poisoned {
                data.1 = 100 - data.0;
                self.poison.clear();
            }
            Saw { turn, poisoned }
        }
    }

    /// P-1, P-2: a section cut short (or completed) on one thread races with a lock on
    /// another. The second locker sees the poison exactly when the first section ran before
    /// it and was cut short; a section that completed never poisons; a poisoned lock runs no
    /// section and the data is the half-updated state only when poisoned.
    #[test]
    fn loom_a_section_cut_short_races_with_the_next_lock() {
        for cut_short in [false, true] {
            loom::model(move || {
                let mutex = PoisoningMutex::new();
                let first = {
                    let mutex = mutex.clone();
                    thread::spawn(move || mutex.transfer(cut_short))
                };
                let second = mutex.transfer(false);
                let first = first.join().unwrap();
                assert!(!first.poisoned || cut_short);
                let poisoned_by_first = first.turn < second.turn && cut_short;
                assert_eq!(second.poisoned, poisoned_by_first);
                assert_eq!(mutex.poison.is_poisoned(), cut_short);
                let data = *lock(&mutex.lock);
                if mutex.poison.is_poisoned() {
                    assert_ne!(data.0 + data.1, 100, "half-updated, and known to be");
                } else {
                    assert_eq!(data.0 + data.1, 100);
                }
            });
        }
    }

    /// P-2: a section is cut short while another locker repairs a poisoned mutex (clears the
    /// poison under the lock). The poison stays exactly when the repair came first (it found
    /// nothing to repair), and the data is whole exactly when it is not poisoned.
    #[test]
    fn loom_repairing_races_with_a_section_cut_short() {
        loom::model(|| {
            let mutex = PoisoningMutex::new();
            let cutting = {
                let mutex = mutex.clone();
                thread::spawn(move || mutex.transfer(true))
            };
            let repairing = {
                let mutex = mutex.clone();
                thread::spawn(move || mutex.repair())
            };
            let cut = cutting.join().unwrap();
            let repair = repairing.join().unwrap();
            assert!(!cut.poisoned);
            assert_eq!(repair.poisoned, cut.turn < repair.turn);
            assert_eq!(mutex.poison.is_poisoned(), repair.turn < cut.turn);
            let data = *lock(&mutex.lock);
            assert_eq!(data.0 + data.1 == 100, !mutex.poison.is_poisoned());
        });
    }
}
