//! Review round 18: what the crate's own tasks do when a user's waker panics. Each test
//! failed before its fix.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use tokio::time::Instant;
use tokio_nursery::{CancelScope, cancelled};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A waker whose wake panics.
struct PanicsOnWake;

impl Wake for PanicsOnWake {
    fn wake(self: Arc<Self>) {
        panic!("this waker panics when woken");
    }
}

/// Was: the deadline service fires due deadlines one after the other in its own task; a
/// waker panicking at one of them unwound that task, and the deadlines due with it were
/// taken out of the service and never fired: a scope sharing the instant waited for ever
/// (here, for an hour of the paused clock). Each deadline now fires whatever a waker
/// does at another.
#[tokio::test(start_paused = true)]
async fn a_waker_panicking_at_a_deadline_loses_no_other_deadline() {
    common::leak_checked(async move {
        let start = Instant::now();
        let at = start + ms(10);
        // A scope whose cancellation is awaited through a waker that panics.
        let mut doomed = Box::pin(CancelScope::new().with_deadline(at).run(async {
            let mut wait = Box::pin(cancelled());
            let waker = Waker::from(Arc::new(PanicsOnWake));
            let _ = wait.as_mut().poll(&mut Context::from_waker(&waker));
            std::future::pending::<Result<(), tokio_nursery::Cancelled>>().await
        }));
        assert!(
            doomed
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_pending()
        );
        // Scopes sharing the instant, made after it (fired after it).
        let others = (0..3).map(|_| {
            CancelScope::new().with_deadline(at).run(async {
                tokio::time::timeout(Duration::from_secs(3600), cancelled())
                    .await
                    .expect("the deadline fired");
                Ok::<_, tokio_nursery::Cancelled>(())
            })
        });
        let outcomes = futures::future::join_all(others).await;
        for outcome in outcomes {
            assert_eq!(outcome.unwrap(), Some(()), "its body saw the deadline pass");
        }
        assert_eq!(start.elapsed(), ms(10));
        drop(doomed);
    })
    .await
}
