//! Hang bounds for tests that run on threads of their own: a deadlock blocks a thread for
//! good, so no timer inside it could tell (tests/review_round14.rs,
//! tests/review_round16_slots.rs).

use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

use tokio_nursery::{Cancelled, NurseryHandle, nursery};

/// Runs `test` on a thread of its own and fails if it has not returned after `secs`
/// seconds; a panic of the test is passed on.
pub fn within(secs: u64, test: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        test();
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => thread.join().unwrap(),
        // The test panicked: pass its panic on.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(thread.join().unwrap_err())
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("hang: still running after {secs} s"),
    }
}

/// Runs a nursery with `body` on a current_thread runtime of its own, on a thread of its
/// own (a hang fails after 30 s), and returns the body's value.
pub fn in_a_nursery<T, Fut>(
    body: impl FnOnce(NurseryHandle<Cancelled>) -> Fut + Send + 'static,
) -> T
where
    Fut: Future<Output = Result<T, Cancelled>>,
    T: Send + 'static,
{
    let (value, taken) = mpsc::channel();
    within(30, move || {
        let outcome = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(nursery(body));
        let _ = value.send(outcome.unwrap().expect("the nursery was not cancelled"));
    });
    taken.recv().unwrap()
}
