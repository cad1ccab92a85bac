//! A helper scope around a body that is ready at once allocates and links nothing (issue 2's
//! design constraint, measured for speed in `benches/scope.rs`).
//!
//! A counting global allocator counts this thread's allocations around the awaited scope.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use tokio::time::Instant;
use tokio_nursery::{Cancelled, current_scope, is_cancelled, move_on_after, move_on_at};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: defers every operation to `System`; the counter is a const-initialised
// thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[tokio::test(flavor = "current_thread")]
async fn ready_timeout_scopes_allocate_nothing() {
    common::leak_checked(async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        // Warm up anything lazily initialised (thread-locals, the clock).
        let _ = move_on_after(Duration::from_secs(10), async { Ok::<_, Cancelled>(0) }).await;

        let before = allocations();
        for i in 0..100 {
            let a = move_on_after(
                Duration::from_secs(10),
                async move { Ok::<_, Cancelled>(i) },
            )
            .await;
            let b = move_on_at(deadline, async move { Ok::<_, Cancelled>(i) }).await;
            // Nested, still ready at once.
            let c = move_on_after(Duration::from_secs(10), async move {
                move_on_at(deadline, async move { Ok::<_, Cancelled>(i) }).await
            })
            .await;
            assert_eq!(
                (a.unwrap(), b.unwrap(), c.unwrap()),
                (Some(i), Some(i), Some(Some(i)))
            );
        }
        assert_eq!(allocations() - before, 0, "a ready scope allocated");
    })
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn asking_for_the_scope_links_it() {
    common::leak_checked(async move {
        // The zero-cost path is "ready at once and never asks": asking materialises a node.
        let before = allocations();
        let out = move_on_after(Duration::from_secs(10), async {
            assert!(!is_cancelled());
            assert!(current_scope().is_some());
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(out.unwrap(), Some(()));
        assert!(
            allocations() > before,
            "a scope that was asked about has a node"
        );
    })
    .await
}
