//! A critical section cut short: `tokio::sync::Mutex` stays silent, `tokio_nursery::Mutex`
//! says so (SPEC C2).
//!
//! `cargo run --example poison`. Runs on tokio's paused clock: instant and deterministic.

use std::time::Duration;

async fn transfer_tokio(accounts: &tokio::sync::Mutex<(u32, u32)>) {
    let mut guard = accounts.lock().await;
    guard.0 -= 30;
    tokio::time::sleep(Duration::from_millis(50)).await; // e.g. a call to the ledger service
    guard.1 += 30;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("build a tokio runtime");
    runtime.block_on(async {
        println!("A transfer moves 30 from alice to bob, awaiting a ledger call in the middle.");
        println!("A 10 ms timeout drops the transfer's future at that await.\n");

        let plain = tokio::sync::Mutex::new((100u32, 0u32));
        let _ = tokio::time::timeout(Duration::from_millis(10), transfer_tokio(&plain)).await;
        let (alice, bob) = *plain.lock().await;
        println!(
            "tokio::sync::Mutex: next lock succeeds quietly: alice {alice} + bob {bob} = {}",
            alice + bob
        );
        println!("  30 coins vanished and nobody was told.\n");

        let ours = tokio_nursery::Mutex::new((100u32, 0u32));
        let _ = tokio::time::timeout(
            Duration::from_millis(10),
            ours.lock(async |(alice, bob)| {
                *alice -= 30;
                tokio::time::sleep(Duration::from_millis(50)).await;
                *bob += 30;
            }),
        )
        .await;
        match ours.lock(async |(alice, bob)| *alice + *bob).await {
            Ok(total) => println!("tokio_nursery::Mutex: total {total}"),
            Err(mut poisoned) => {
                println!("tokio_nursery::Mutex: next lock -> Err(Poisoned): {poisoned}");
                println!(
                    "  the data as the cut-short section left it: {:?}",
                    *poisoned
                );
                poisoned.0 += 30; // roll back
                println!("  rolled back to {:?}; clearing the poison", *poisoned);
                poisoned.clear_poison();
            }
        }
        let total = ours.lock(async |(alice, bob)| *alice + *bob).await;
        println!(
            "tokio_nursery::Mutex: after recovery, total = {:?}",
            total.ok()
        );
        println!("\nA section that returns (a value, an error, or through `?`) never poisons:");
        println!("only one cut short by a panic or a dropped future does.");
    });
}
