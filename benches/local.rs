//! `7-local`: a local (borrowing) scope spawning and joining N children, against an inline
//! `FuturesUnordered` (issue 7's peer), on a current-thread runtime.
//!
//! Two shapes: trivial children (ready at once) and children that checkpoint three times
//! (tokio's cooperative budget runs out: the `FuturesUnordered` cliff). Targets: <= 1.2x the
//! peer, and linear in N (the ratio at 1e5 within 1.3x of that at 1e3). Medians of ns per
//! child over interleaved rounds. `cargo bench --bench local`.

use std::cell::Cell;
use std::future::Future;
use std::hint::black_box;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio_nursery::{Cancelled, checkpoint, local_scope};

/// The child, the same future for both mechanisms: adds `work` to `sum` after
/// `checkpoints` checkpoints.
async fn child(work: &u64, sum: &Cell<u64>, checkpoints: u32) -> Result<(), Cancelled> {
    for _ in 0..checkpoints {
        checkpoint().await?;
    }
    sum.set(sum.get() + *work);
    Ok(())
}

async fn ours(n: usize, checkpoints: u32) -> u64 {
    let work = 1u64;
    let sum = Cell::new(0);
    local_scope(async |s| {
        for _ in 0..n {
            drop(s.spawn(child(&work, &sum, checkpoints)));
        }
        Ok::<_, Cancelled>(())
    })
    .await
    .unwrap();
    sum.get()
}

async fn peer(n: usize, checkpoints: u32) -> u64 {
    let work = 1u64;
    let sum = Cell::new(0);
    let mut set: FuturesUnordered<_> = (0..n).map(|_| child(&work, &sum, checkpoints)).collect();
    while let Some(done) = set.next().await {
        done.unwrap();
    }
    sum.get()
}

fn time<F: Future<Output = u64>>(runtime: &tokio::runtime::Runtime, n: usize, f: F) -> f64 {
    let start = Instant::now();
    let sum = runtime.block_on(f);
    let elapsed = start.elapsed();
    assert_eq!(black_box(sum), n as u64);
    elapsed.as_nanos() as f64 / n as f64
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (work, sum) = (1u64, Cell::new(0));
    println!(
        "the child: {} B with three checkpoints (size_of_val)",
        std::mem::size_of_val(&child(&work, &sum, 3))
    );
    println!("scenario          children      n    ours ns  futures-unordered ns   ratio");
    for checkpoints in [0u32, 3] {
        let shape = if checkpoints == 0 {
            "trivial"
        } else {
            "3 checkpoints"
        };
        let sizes: &[usize] = if quick {
            &[1_000]
        } else {
            &[1_000, 10_000, 100_000]
        };
        for &n in sizes {
            let rounds = if quick {
                3
            } else {
                (2_000_000 / n).clamp(5, 201)
            };
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for round in 0..rounds {
                // Interleaved, alternating which goes first.
                if round % 2 == 0 {
                    a.push(time(&runtime, n, ours(n, checkpoints)));
                    b.push(time(&runtime, n, peer(n, checkpoints)));
                } else {
                    b.push(time(&runtime, n, peer(n, checkpoints)));
                    a.push(time(&runtime, n, ours(n, checkpoints)));
                }
            }
            let (ours_ns, peer_ns) = (median(a), median(b));
            println!(
                "7-local  {shape:>13} {n:>7} {ours_ns:>10.1} {peer_ns:>21.1} {:>7.2}",
                ours_ns / peer_ns
            );
        }
    }
}
