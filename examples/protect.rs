//! Protected work (SPEC C1): a message taken from a channel is handled, not lost, even when
//! the code that took it is cancelled mid-way.
//!
//! `cargo run --example protect`. Runs on tokio's paused clock: instant and deterministic.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_nursery::{CancellableExt, Cancelled, Nursery, protect};

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("build a tokio runtime");
    runtime.block_on(async {
        let start = tokio::time::Instant::now();
        let at = move || start.elapsed().as_millis();

        let (tx, rx) = mpsc::channel::<&'static str>(8);
        tx.send("order #1").await.unwrap();
        tx.send("order #2").await.unwrap();

        println!("A worker takes orders from a channel; handling one takes 30 ms.");
        println!("The worker's nursery is cancelled at 10 ms, in the middle of order #1.\n");

        let outcome = Nursery::new()
            .timeout(Duration::from_millis(10))
            .run(|_| async move {
                let mut rx = rx;
                // Waiting for an order is a cancellation point (`recv` is cancel-safe: a
                // wait cut short takes nothing), so an idle worker stops at once...
                while let Some(order) = rx.recv().cancellable().await? {
                    // ...but an order taken must be finished: protect its handling.
                    protect(async move {
                        println!("[{:>3} ms]   handling {order}...", at());
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        println!("[{:>3} ms]   {order} committed", at());
                    })
                    .await;
                }
                Ok::<_, Cancelled>(())
            })
            .await;
        println!("[{:>3} ms] worker nursery -> {outcome:?}", at());
        println!("\norder #1 was committed although the worker was cancelled while handling it;");
        println!("order #2 was never taken from the channel: nothing was half-done.");
    });
}
