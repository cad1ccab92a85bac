//! Local scopes (SPEC B1): children that borrow from the caller's stack, polled inside the
//! caller's task, with a nursery's rules for failures and deadlines.
//!
//! `cargo run --example borrowing`. Runs on tokio's paused clock: instant and deterministic.

use std::cell::RefCell;
use std::time::Duration;

use tokio_nursery::{Cancelled, local_scope, move_on_after, sleep};

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("build a tokio runtime");
    runtime.block_on(async {
        // Plain stack data: no Arc, no 'static, not even Sync.
        let pages = ["intro", "usage", "design", "appendix-that-never-loads"];
        let index = RefCell::new(Vec::new());

        // A local scope's error (`NurseryError`) carries a cancellation as any error the
        // crate knows does: `move_on_after` takes it as it is.
        let outcome = move_on_after(
            Duration::from_millis(50),
            local_scope(async |s| {
                for (i, page) in pages.iter().enumerate() {
                    let index = &index;
                    s.spawn(async move {
                        // The last page is slow: the 50 ms deadline cuts it.
                        let ms = if i == 3 { 1_000 } else { 10 * (i as u64 + 1) };
                        sleep(Duration::from_millis(ms)).await?;
                        index
                            .borrow_mut()
                            .push(format!("{page} ({} words)", page.len() * 100));
                        Ok::<_, Cancelled>(())
                    });
                }
                Ok::<_, Cancelled>("indexing done")
            }),
        )
        .await;

        println!("local_scope with 4 children borrowing `pages` and `index` from the stack,");
        println!("inside a 50 ms move_on_after:");
        // move_on_after's Some: its body (the scope) finished; local_scope's Some: its body's
        // value, kept although the deadline then cut the slow child.
        println!("  outcome: {outcome:?} (the body finished; the slow child was cancelled)");
        for entry in index.borrow().iter() {
            println!("  indexed {entry}");
        }
    });
}
