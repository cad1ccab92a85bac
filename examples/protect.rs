//! Protected work (SPEC C1): a message taken from a channel is handled, not lost, even when
//! the code that took it is cancelled mid-way.
//!
//! `cargo run --example protect`. Runs on tokio's paused clock: instant and deterministic.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_nursery::{Cancelled, Nursery, protect};

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
                loop {
                    // Taking a message and handling it is one unit that must not be cut
                    // short: protect it. The channel goes in and comes back out.
                    let (back, order) = protect(async move {
                        let order = rx.recv().await;
                        if let Some(order) = order {
                            println!("[{:>3} ms]   handling {order}...", at());
                            tokio::time::sleep(Duration::from_millis(30)).await;
                            println!("[{:>3} ms]   {order} committed", at());
                        }
                        (rx, order)
                    })
                    .await;
                    rx = back;
                    if order.is_none() {
                        return Ok::<_, Cancelled>(());
                    }
                    // Between orders: a cancellation point.
                    tokio_nursery::check_cancelled()?;
                }
            })
            .await;
        println!("[{:>3} ms] worker nursery -> {outcome:?}", at());
        println!("\norder #1 was committed although the worker was cancelled while handling it;");
        println!("order #2 was never taken from the channel: nothing was half-done.");
    });
}
