//! Parallel borrowing scopes (SPEC B2): checksums of the chunks of a borrowed `Vec`, computed
//! by children running on two worker threads, with no `Arc` and no copy of the data.
//!
//! `cargo run --example parallel`. Ends by itself; what it prints depends only on the data,
//! except which worker ran which chunk and how many siblings had already finished when one
//! chunk failed.

use std::collections::BTreeSet;
use std::sync::Mutex;

use tokio_nursery::{
    CancelReason, Cancelled, NurseryError, checkpoint, parallel_scope, parallel_scope_async,
};

/// Adler-32 of `bytes`, reaching a cancellation point every 4 KiB.
async fn adler32(bytes: &[u8]) -> Result<u32, Cancelled> {
    let (mut a, mut b) = (1u32, 0u32);
    for block in bytes.chunks(4096) {
        checkpoint().await?;
        for &byte in block {
            a = (a + u32::from(byte)) % 65_521;
            b = (b + a) % 65_521;
        }
    }
    Ok((b << 16) | a)
}

/// Deterministic pseudo-random bytes (xorshift).
fn data(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Why a chunk's verification failed.
#[derive(Debug)]
enum ChunkError {
    Corrupt { chunk: usize },
    Cancelled(Cancelled),
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChunkError::Corrupt { chunk } => write!(f, "chunk {chunk} is corrupt"),
            ChunkError::Cancelled(cancelled) => write!(f, "{cancelled}"),
        }
    }
}

impl tokio_nursery::CancelError for ChunkError {
    fn as_cancelled(&self) -> Option<&Cancelled> {
        match self {
            ChunkError::Cancelled(cancelled) => Some(cancelled),
            ChunkError::Corrupt { .. } => None,
        }
    }
}

impl From<Cancelled> for ChunkError {
    fn from(cancelled: Cancelled) -> Self {
        ChunkError::Cancelled(cancelled)
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime");
    let bytes = data(4 << 20); // 4 MiB on the heap, owned by this stack frame
    const CHUNK: usize = 256 << 10;

    runtime.block_on(async {
        // 1. Checksums in parallel; the children borrow `bytes` and `workers`.
        let workers = Mutex::new(BTreeSet::new());
        let sums = parallel_scope(async |s| {
            let handles: Vec<_> = bytes
                .chunks(CHUNK)
                .map(|chunk| {
                    let workers = &workers;
                    s.spawn(async move {
                        let sum = adler32(chunk).await?;
                        let thread = format!("{:?}", std::thread::current().id());
                        workers.lock().unwrap().insert(thread);
                        Ok::<_, Cancelled>(sum)
                    })
                })
                .collect();
            let mut sums = Vec::with_capacity(handles.len());
            for handle in handles {
                sums.push(handle.await.expect("a chunk's checksum"));
            }
            Ok::<_, Cancelled>(sums)
        })
        .expect("a multi-thread runtime")
        .expect("no chunk failed")
        .expect("not cancelled");
        let mut sequential = Vec::new();
        for chunk in bytes.chunks(CHUNK) {
            sequential.push(adler32(chunk).await.unwrap());
        }
        println!(
            "1. {} chunks of {} KiB checksummed in parallel, borrowing the Vec: {}",
            sums.len(),
            CHUNK >> 10,
            if sums == sequential {
                "same as sequential"
            } else {
                "MISMATCH"
            }
        );
        println!("   first checksums: {:08x?}", &sums[..4]);
        let workers = workers.into_inner().unwrap();
        println!("   ran on {} worker threads: {workers:?}", workers.len());

        // 2. Fail fast: a chunk found corrupt cancels its siblings at their next checkpoint.
        let cut_short = Mutex::new(0);
        let outcome = parallel_scope(async |s| {
            for (index, chunk) in bytes.chunks(CHUNK).enumerate() {
                let cut_short = &cut_short;
                s.spawn(async move {
                    if index == 5 {
                        return Err(ChunkError::Corrupt { chunk: index });
                    }
                    match adler32(chunk).await {
                        Ok(_) => Ok(()),
                        Err(cancelled) => {
                            if matches!(cancelled.reason(), CancelReason::SiblingFailed) {
                                *cut_short.lock().unwrap() += 1;
                            }
                            Err(cancelled.into())
                        }
                    }
                });
            }
            Ok::<_, ChunkError>(())
        })
        .expect("a multi-thread runtime");
        match outcome {
            Err(NurseryError::Failed(failures)) => println!(
                "2. verification failed fast: {} (in {}); {} of the other {} chunks were \
                 cut short at a checkpoint (the rest had already finished), every one \
                 waited for",
                failures[0].error(),
                failures[0].origin(),
                cut_short.lock().unwrap(),
                bytes.len().div_ceil(CHUNK) - 1
            ),
            other => println!("2. unexpected: {other:?}"),
        }

        // 3. The non-blocking entry, from a task whose own stack holds the data: `unsafe`,
        //    awaited to the end.
        let total = tokio::spawn(async {
            let bytes = data(1 << 20);
            let bytes = &bytes;
            // SAFETY: awaited to completion in this task, which nothing aborts; never
            // leaked; the runtime outlives it (it is shut down after `block_on` returns).
            unsafe {
                parallel_scope_async(|s| async move {
                    let halves: Vec<_> = bytes
                        .chunks(bytes.len() / 2)
                        .map(|half| {
                            s.spawn(async move {
                                let sum = half.iter().map(|&b| u64::from(b)).sum::<u64>();
                                Ok::<_, Cancelled>(sum)
                            })
                        })
                        .collect();
                    let mut total = 0;
                    for half in halves {
                        total += half.await.expect("a half's sum");
                    }
                    Ok::<_, Cancelled>(total)
                })
            }
            .await
        });
        let total = total
            .await
            .expect("the task did not panic")
            .expect("a multi-thread runtime")
            .expect("no half failed")
            .expect("not cancelled");
        println!("3. byte sum of 1 MiB in a task, without blocking its worker: {total}");
    });

    // 4. A current-thread runtime cannot run children in parallel: a clear error.
    let local = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime");
    local.block_on(async {
        match parallel_scope(async |_s| Ok::<_, Cancelled>(())) {
            Err(unavailable) => println!("4. on current_thread: {unavailable}"),
            Ok(_) => println!("4. unexpected: ran on current_thread"),
        }
    });
}
