//! SPEC C2: the poisoning mutex.

use std::time::Duration;

use futures::FutureExt;
use tokio_nursery::*;

#[tokio::test(start_paused = true)]
async fn c2_a_completed_section_never_poisons_even_with_an_error() {
    let m = Mutex::new(0u32);
    let r: Result<u32, &str> = m
        .lock(async |n| {
            *n += 1;
            tokio::task::yield_now().await;
            Err("business error")
        })
        .await
        .unwrap();
    assert_eq!(r, Err("business error"));
    let early = m
        .lock(async |n| -> Result<(), std::io::Error> {
            *n += 1;
            std::fs::metadata("/definitely/not/here")?; // returns early through `?`
            *n += 100;
            Ok(())
        })
        .await
        .unwrap();
    assert!(early.is_err());
    assert!(!m.is_poisoned());
    assert_eq!(m.lock(async |n| *n).await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn c2_a_section_dropped_mid_await_poisons_and_the_next_lock_says_so() {
    let m = Mutex::new((100u32, 0u32));
    let cut = tokio::time::timeout(
        Duration::from_millis(10),
        m.lock(async |(a, b)| {
            *a -= 30;
            tokio::time::sleep(Duration::from_secs(1)).await;
            *b += 30;
        }),
    )
    .await;
    assert!(cut.is_err());
    assert!(m.is_poisoned());
    let mut poisoned = m.lock(async |_| ()).await.unwrap_err();
    assert_eq!(*poisoned, (70, 0));
    poisoned.1 = 30; // repair
    poisoned.clear_poison();
    assert_eq!(m.lock(async |(a, b)| *a + *b).await.unwrap(), 100);
}

#[tokio::test(start_paused = true)]
async fn c2_a_panicking_section_poisons() {
    let m = Mutex::new(1u32);
    let panicked = std::panic::AssertUnwindSafe(m.lock(async |n| {
        *n = 2;
        panic!("boom");
    }))
    .catch_unwind()
    .await;
    assert!(panicked.is_err());
    assert!(m.is_poisoned());
    let guard = m.lock(async |_| ()).await.unwrap_err().into_guard();
    assert_eq!(*guard, 2);
    drop(guard);
    assert!(m.is_poisoned(), "into_guard keeps the poison");
    m.clear_poison();
    assert!(m.lock(async |_| ()).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn c2_waiting_for_the_lock_is_cancel_safe() {
    let m = std::sync::Arc::new(Mutex::new(0u32));
    let holder = {
        let m = m.clone();
        tokio::spawn(async move {
            m.lock(async |n| {
                tokio::time::sleep(Duration::from_millis(50)).await;
                *n += 1;
            })
            .await
            .unwrap()
        })
    };
    tokio::task::yield_now().await;
    // Gives up while waiting for the lock: nothing ran, nothing poisons.
    let gave_up = tokio::time::timeout(Duration::from_millis(10), m.lock(async |n| *n += 10)).await;
    assert!(gave_up.is_err());
    holder.await.unwrap();
    assert!(!m.is_poisoned());
    assert_eq!(m.lock(async |n| *n).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2_sections_work_inside_tokio_spawn() {
    let m = std::sync::Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let m = m.clone();
            tokio::spawn(async move {
                m.lock(async |v| {
                    tokio::task::yield_now().await;
                    v.push(i);
                })
                .await
                .unwrap()
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(m.lock(async |v| v.len()).await.unwrap(), 8);
}

#[tokio::test(start_paused = true)]
async fn c2_a_hard_scope_dropping_a_section_poisons_it() {
    let m = Mutex::new(0u32);
    let out = CancelScope::new()
        .with_timeout(Duration::from_millis(5))
        .hard()
        .run(async {
            m.lock(async |n| {
                *n = 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                *n = 2;
            })
            .await
            .ok();
            Ok::<_, Cancelled>(())
        })
        .await;
    assert!(matches!(out, Ok(None)));
    assert!(m.is_poisoned());
}
