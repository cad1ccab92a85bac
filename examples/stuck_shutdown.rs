//! "Why is my shutdown stuck?": the live task tree names the child that holds it up, and
//! for how long (SPEC O2), and the grace period ends the wait (SPEC N7); the nursery keeps
//! the tree as it stood when its grace ran out (`keep_tree_at_grace_expiry`), for a log.
//!
//! `cargo run --example stuck_shutdown`. Runs on tokio's paused clock: instant and
//! deterministic.

use std::time::Duration;

use tokio_nursery::{Cancelled, Nursery, TaskTree, cancelled_owned, sleep};

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("build a tokio runtime");
    runtime.block_on(async {
        let start = tokio::time::Instant::now();
        let at = move || start.elapsed().as_millis();
        let mut kept = None;
        let outcome = Nursery::new()
            .name("server")
            .grace(Duration::from_secs(5))
            // Take the tree when the grace runs out, before the stuck child is aborted.
            .keep_tree_at_grace_expiry()
            .run(|server| {
                kept = Some(server.clone());
                async move {
                    for id in 1..=3 {
                        server.spawn_named(&format!("connection-{id}"), async move {
                            loop {
                                // Serving requests: every await here is a cancellation point.
                                sleep(Duration::from_millis(100)).await?;
                            }
                            #[allow(unreachable_code)]
                            Ok::<(), Cancelled>(())
                        });
                    }
                    server.spawn_named("report-uploader", async move {
                        // A legacy client: a plain tokio await, no cancellation point, 60 s.
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Ok::<_, Cancelled>(())
                    });
                    // An operator's view: a task outside the nursery prints the live tree
                    // when the shutdown takes longer than 2 s.
                    let (observed, stop) = (server.clone(), cancelled_owned());
                    tokio::spawn(async move {
                        stop.await;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        println!("[{:>5} ms] still not down? the task tree says why:", at());
                        print_indented(&TaskTree::of(&observed.scope()));
                    });
                    sleep(Duration::from_millis(250)).await?;
                    println!("[{:>5} ms] shutdown requested: cancelling the server", at());
                    server.cancel();
                    // The body returns; the nursery waits for its children.
                    Ok::<_, Cancelled>(())
                }
            })
            .await;
        println!(
            "[{:>5} ms] the grace period (5 s) ran out: the stuck child was aborted",
            at()
        );
        println!("[{:>5} ms] server -> {outcome:?}", at());
        let kept = kept.expect("the body ran");
        println!("           aborted: {}", kept.aborted_children().join(", "));
        println!("           the tree when the grace ran out:");
        print_indented(kept.tree_at_grace_expiry().expect("the grace ran out"));
    });
}

/// Prints a tree under the timestamps.
fn print_indented(tree: &TaskTree) {
    for line in tree.to_string().lines() {
        println!("           {line}");
    }
}
