//! A local child's future, then its outcome, in one place: [`Stage`].
//!
//! The future and the outcome never live at the same time, so they share their bytes (a
//! union), and a one-byte [`State`] says which one is there. This keeps a local child as
//! small as a `FuturesUnordered` task: an `Option<F>` would not do, as an `async` block's
//! future has no niche to spare (an `Option` of it is 8 bytes larger), and an enum in a
//! `Cell` is read by moving it out and back (24 bytes each way), which measured 40% slower
//! per child than reading one byte. The module's `unsafe` is here and only here: every
//! access to the union is behind a check of the state; the state says a future is gone
//! before it is dropped (so a drop that panics still counts), and says an outcome is there
//! once it is written.

use std::any::Any;
use std::cell::{Cell, UnsafeCell};
use std::future::Future;
use std::mem::ManuallyDrop;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::nursery::JoinError;

/// A local child's outcome: its value, or why it has none.
pub(super) type Outcome<T> = Result<T, JoinError>;

/// Which of the future and the outcome a [`Stage`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// The future is alive, not being polled.
    Running,
    /// The future is being polled: polling or dropping it now would be a bug.
    Polling,
    /// The future was dropped; no outcome yet.
    Ended,
    /// The outcome is there.
    Finished,
    /// The outcome was taken.
    Taken,
}

union Body<F, T> {
    future: ManuallyDrop<F>,
    outcome: ManuallyDrop<Outcome<T>>,
}

/// A child's future, polled and dropped where it lies (the stage is pinned), then its
/// outcome, until taken. Not `Sync`: one thread uses it.
pub(super) struct Stage<F, T> {
    state: Cell<State>,
    body: UnsafeCell<Body<F, T>>,
}

impl<F, T> Stage<F, T> {
    pub(super) fn new(future: F) -> Self {
        Stage {
            state: Cell::new(State::Running),
            body: UnsafeCell::new(Body {
                future: ManuallyDrop::new(future),
            }),
        }
    }

    pub(super) fn state(&self) -> State {
        self.state.get()
    }

    /// Polls the future if it is alive; once it returned, drops it in place (it counts as
    /// dropped should its drop panic) and returns `Ready(Some((output, drop_panic)))`, the
    /// drop's panic caught, so that the output is not lost with it. `Ready(None)` if it had
    /// ended before.
    ///
    /// # Panics
    ///
    /// Called within the future's own poll.
    #[allow(clippy::type_complexity)]
    pub(super) fn poll(
        self: Pin<&Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(F::Output, Option<Box<dyn Any + Send>>)>>
    where
        F: Future,
    {
        match self.state.get() {
            State::Running => {}
            State::Polling => panic!("a local child's future polled within its own poll"),
            State::Ended | State::Finished | State::Taken => return Poll::Ready(None),
        }
        /// Back to `Running` should the poll panic: the future is still alive.
        struct Unwinding<'a>(&'a Cell<State>);
        impl Drop for Unwinding<'_> {
            fn drop(&mut self) {
                self.0.set(State::Running);
            }
        }
        self.state.set(State::Polling);
        let unwinding = Unwinding(&self.state);
        // SAFETY: the state was `Running`, so the union holds the future, alive; it is
        // `Polling` now, so no other call reaches the future until this one is done (the
        // stage is `!Sync`: no other thread can call). Pinned: `self` is, and the future
        // is a field of it that is never moved out (it is dropped in place).
        let future = unsafe { Pin::new_unchecked(&mut *(*self.body.get()).future) };
        let polled = future.poll(cx);
        std::mem::forget(unwinding);
        match polled {
            Poll::Pending => {
                self.state.set(State::Running);
                Poll::Pending
            }
            Poll::Ready(output) => {
                self.state.set(State::Ended);
                let dropped = catch_unwind(AssertUnwindSafe(|| {
                    // SAFETY: the future was alive (`Polling`) and is `Ended` now, so it is
                    // dropped once; dropped in place, as it is pinned.
                    unsafe { ManuallyDrop::drop(&mut (*self.body.get()).future) }
                }));
                Poll::Ready(Some((output, dropped.err())))
            }
        }
    }

    /// Drops the future in place if it is alive; it counts as dropped should its drop
    /// panic. Whether it was alive.
    ///
    /// # Panics
    ///
    /// Called within the future's own poll.
    pub(super) fn drop_future(&self) -> bool {
        match self.state.get() {
            State::Running => {}
            State::Polling => panic!("a local child's future dropped within its own poll"),
            State::Ended | State::Finished | State::Taken => return false,
        }
        self.state.set(State::Ended);
        // SAFETY: the future was alive (`Running`, not being polled) and is `Ended` now, so
        // it is dropped once; dropped in place, so a pinned future stays where it was.
        unsafe { ManuallyDrop::drop(&mut (*self.body.get()).future) };
        true
    }

    /// Stores the outcome, once the future ended.
    ///
    /// # Panics
    ///
    /// The future has not ended, or an outcome was stored already.
    pub(super) fn finish(&self, outcome: Outcome<T>) {
        assert_eq!(
            self.state.get(),
            State::Ended,
            "a local child's outcome stored before its future ended, or twice"
        );
        // SAFETY: `Ended`: the union holds nothing alive (the future was dropped), so
        // writing the outcome over it drops nothing and overwrites nothing in use.
        unsafe { (*self.body.get()).outcome = ManuallyDrop::new(outcome) };
        self.state.set(State::Finished);
    }

    /// Takes the outcome if it is there.
    ///
    /// # Panics
    ///
    /// The outcome was taken already.
    pub(super) fn take(&self) -> Option<Outcome<T>> {
        match self.state.get() {
            State::Finished => {}
            State::Taken => panic!("a local child's handle was polled after it completed"),
            State::Running | State::Polling | State::Ended => return None,
        }
        self.state.set(State::Taken);
        // SAFETY: `Finished`: the union holds the outcome, which is read out once (the
        // state is `Taken` now, and nothing reads or drops a taken outcome).
        Some(unsafe { ManuallyDrop::take(&mut (*self.body.get()).outcome) })
    }
}

impl<F, T> Drop for Stage<F, T> {
    fn drop(&mut self) {
        let body = self.body.get_mut();
        match *self.state.get_mut() {
            // SAFETY: `Running`: the future is alive; the stage goes, so it is dropped
            // once, in place.
            State::Running => unsafe { ManuallyDrop::drop(&mut body.future) },
            // SAFETY: `Finished`: the outcome is there and was not taken.
            State::Finished => unsafe { ManuallyDrop::drop(&mut body.outcome) },
            // `Polling` cannot be seen here: a stage is not dropped within its poll (the
            // poll holds a reference to it), and a panicking poll sets `Running` back.
            State::Polling | State::Ended | State::Taken => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::future::Future;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::pin::{Pin, pin};
    use std::rc::Rc;
    use std::task::{Context, Poll, Waker};

    use super::{Stage, State};
    use crate::nursery::JoinError;

    /// Counts its drops; refers to itself across its first `Pending` (a borrow across an
    /// `.await`), so Miri checks nothing looks at it between polls.
    fn child(drops: Rc<Cell<u32>>, polls: u32) -> impl Future<Output = String> {
        struct Count(Rc<Cell<u32>>);
        impl Drop for Count {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        async move {
            let count = Count(drops);
            let own = [7u8; 8];
            let view = &own;
            for _ in 0..polls {
                let mut yielded = false;
                std::future::poll_fn(|cx| {
                    if yielded {
                        return Poll::Ready(());
                    }
                    yielded = true;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                })
                .await;
            }
            drop(count);
            format!("{}", view.iter().map(|&b| u32::from(b)).sum::<u32>())
        }
    }

    /// Polls once; a panic of the future's drop, caught by the stage, is asserted absent.
    fn poll<F: Future>(stage: Pin<&Stage<F, String>>) -> Poll<Option<F::Output>> {
        stage
            .poll(&mut Context::from_waker(Waker::noop()))
            .map(|ended| {
                ended.map(|(output, drop_panic)| {
                    assert!(drop_panic.is_none(), "the future's drop panicked");
                    output
                })
            })
    }

    #[test]
    fn a_future_is_polled_to_its_end_then_its_outcome_taken_once() {
        let drops = Rc::new(Cell::new(0));
        let stage = pin!(Stage::new(child(drops.clone(), 2)));
        let stage = stage.as_ref();
        assert!(poll(stage).is_pending());
        assert!(poll(stage).is_pending());
        assert_eq!(stage.state(), State::Running);
        let Poll::Ready(Some(output)) = poll(stage) else {
            panic!("the future ended");
        };
        assert_eq!((output.as_str(), drops.get()), ("56", 1));
        assert_eq!(stage.state(), State::Ended);
        assert!(matches!(poll(stage), Poll::Ready(None)));
        assert!(stage.take().is_none());
        stage.finish(Ok(output));
        assert_eq!(stage.take().unwrap().unwrap(), "56");
        assert_eq!(stage.state(), State::Taken);
        assert!(!stage.drop_future());
        let again = catch_unwind(AssertUnwindSafe(|| stage.take()));
        assert!(again.is_err(), "a second take panics");
    }

    #[test]
    fn a_stage_dropped_drops_whatever_it_holds_once() {
        let drops = Rc::new(Cell::new(0));
        // Running, parked mid-way.
        let mut stage = Box::pin(Stage::new(child(drops.clone(), 3)));
        assert!(poll(stage.as_ref()).is_pending());
        drop(stage);
        assert_eq!(drops.get(), 1);
        // Finished, outcome never taken: the outcome's drop frees its string (Miri checks).
        stage = Box::pin(Stage::new(child(drops.clone(), 0)));
        let Poll::Ready(Some(output)) = poll(stage.as_ref()) else {
            panic!("ready at once");
        };
        stage.finish(Ok(output));
        drop(stage);
        assert_eq!(drops.get(), 2);
        // Dropped early, then an outcome stored in its place.
        let stage = Box::pin(Stage::<_, String>::new(child(drops.clone(), 1)));
        assert!(poll(stage.as_ref()).is_pending());
        assert!(stage.drop_future());
        assert_eq!(drops.get(), 3);
        stage.finish(Err(JoinError::ChildAborted));
        assert!(matches!(stage.take(), Some(Err(JoinError::ChildAborted))));
    }

    struct Explodes {
        on_poll: bool,
    }

    impl Future for Explodes {
        type Output = String;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<String> {
            if self.on_poll {
                panic!("poll");
            }
            Poll::Ready("done".into())
        }
    }

    impl Drop for Explodes {
        fn drop(&mut self) {
            if !self.on_poll {
                panic!("drop");
            }
        }
    }

    #[test]
    fn a_panicking_poll_leaves_the_future_alive_and_a_panicking_drop_leaves_it_dropped() {
        let stage = Box::pin(Stage::new(Explodes { on_poll: true }));
        assert!(catch_unwind(AssertUnwindSafe(|| poll(stage.as_ref()))).is_err());
        assert_eq!(stage.state(), State::Running);
        assert!(stage.drop_future());
        assert_eq!(stage.state(), State::Ended);

        let stage: Pin<Box<Stage<Explodes, String>>> =
            Box::pin(Stage::new(Explodes { on_poll: false }));
        let polled = stage.as_ref().poll(&mut Context::from_waker(Waker::noop()));
        let Poll::Ready(Some((output, Some(_drop_panic)))) = polled else {
            panic!("the output and the drop's panic, both kept");
        };
        assert_eq!(output, "done");
        assert_eq!(
            stage.state(),
            State::Ended,
            "its drop panicked: dropped all the same"
        );
        assert!(!stage.drop_future(), "not dropped twice");
        drop(stage);
    }

    #[test]
    fn a_stage_cannot_be_reached_within_its_own_poll() {
        type Own = Pin<Rc<Stage<Reentrant, String>>>;
        struct Reentrant(Rc<Cell<Option<Own>>>);
        impl Future for Reentrant {
            type Output = String;
            fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<String> {
                let stage = self.0.take().expect("the stage");
                let polled = catch_unwind(AssertUnwindSafe(|| stage.as_ref().poll(cx)));
                let dropped = catch_unwind(AssertUnwindSafe(|| stage.drop_future()));
                assert!(polled.is_err() && dropped.is_err(), "both refused");
                // Gives its own stage back through the cell: kept from a cycle by taking
                // it out before returning.
                drop(stage);
                Poll::Ready("done".into())
            }
        }
        let cell = Rc::new(Cell::new(None));
        let stage = Rc::pin(Stage::new(Reentrant(cell.clone())));
        cell.set(Some(stage.clone()));
        assert!(matches!(
            stage.as_ref().poll(&mut Context::from_waker(Waker::noop())),
            Poll::Ready(Some(_))
        ));
    }
}
