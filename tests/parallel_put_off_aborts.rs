//! SPEC B2: an abort of a nursery child put off while a parallel borrowing scope runs in it
//! is carried out once no such scope runs, never by dropping one (`src/exemption.rs`).
#![cfg(feature = "rt-multi-thread")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use common::{Unfinished, wait_until};
use tokio_nursery::*;

#[derive(Default)]
struct Seen {
    a_started: AtomicBool,
    b_started: AtomicBool,
    b_cut_short: AtomicBool,
    b_finished: AtomicBool,
    after_b: AtomicBool,
}

/// SPEC B2: "the crate never drops it itself". A child's abort is put off while its
/// parallel scope A runs; A's body ends on the "grace expired" it is told, and the child
/// goes on, in the same poll, into a second parallel scope B. The put-off abort must be put
/// off again while B runs (B is told too), not carried out by tokio under B: A's exemption
/// ends with `AbortHandle::abort` (the handle was stored when A began), which tokio carries
/// out as soon as the poll that began B returns, dropping B's future before it completed
/// (only the backstop keeps that sound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_off_abort_never_drops_a_second_scope_begun_in_the_same_poll() {
    let seen = Arc::new(Seen::default());
    let release = Arc::new(tokio::sync::Notify::new());
    let spawned = Arc::new(AtomicBool::new(false));
    let (child_seen, child_release, child_spawned) =
        (seen.clone(), release.clone(), spawned.clone());
    let (body_seen, body_release) = (seen.clone(), release.clone());
    let out = nursery(move |n| async move {
        let child = n.spawn(async move {
            // The spawner stores the abort handle before A begins: A's exemption has it.
            while !child_spawned.load(SeqCst) {
                tokio::task::yield_now().await;
            }
            let local = 7u64;
            let (borrowed, seen, release) = (&local, &*child_seen, &*child_release);
            // SAFETY (of the test): awaited to completion here.
            let _ = unsafe {
                parallel_scope_async(|_s| async move {
                    seen.a_started.store(true, SeqCst);
                    let _told = cancelled().await;
                    Ok::<_, Cancelled>(())
                })
            }
            .await;
            // Begun in the poll where A ended.
            // SAFETY (of the test): awaited to completion here.
            let _ = unsafe {
                parallel_scope_async(|s| async move {
                    let mut unfinished = Unfinished {
                        flag: &seen.b_cut_short,
                        finished: false,
                    };
                    seen.b_started.store(true, SeqCst);
                    drop(s.spawn(async move {
                        assert_eq!(*borrowed, 7);
                        Ok::<_, Cancelled>(())
                    }));
                    release.notified().await; // not a cancellation point
                    unfinished.finished = true;
                    seen.b_finished.store(true, SeqCst);
                    Ok::<_, Cancelled>(())
                })
            }
            .await;
            // As in tests/spec_parallel.rs: the abort lands at the first await after B.
            tokio::task::yield_now().await;
            seen.after_b.store(true, SeqCst);
            Ok::<_, Cancelled>(())
        });
        spawned.store(true, SeqCst);
        wait_until("scope A begins", || body_seen.a_started.load(SeqCst)).await;
        child.abort();
        wait_until("scope B begins", || body_seen.b_started.load(SeqCst)).await;
        // Give tokio the time to carry out an abort under B, if one is coming.
        for _ in 0..1000 {
            tokio::task::yield_now().await;
        }
        body_release.notify_one();
        let joined = child.await;
        Ok::<_, Cancelled>(joined)
    })
    .await;
    let joined = out.expect("the nursery").expect("its body's value");
    assert!(
        !seen.b_cut_short.load(SeqCst),
        "the crate dropped a running parallel scope (B) to carry out an abort put off while \
         an earlier scope (A) of the same task ran"
    );
    assert!(seen.b_finished.load(SeqCst), "B ran to its end");
    assert!(
        matches!(joined, Err(JoinError::ChildAborted)),
        "aborted once B ended: {joined:?}"
    );
    assert!(!seen.after_b.load(SeqCst));
}
