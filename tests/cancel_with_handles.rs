//! `cancel_with` on a child's handle (session 21, from a usability review that had to give
//! a chunk a scope of its own to cancel it with a reason): the child reads the data from
//! the `Cancelled` its cancellation point reports, for every kind of child handle.

mod common;

use tokio_nursery::{CancelReason, Cancelled, NurseryHandle, cancelled, local_scope, nursery};

/// What the child saw: the reason's message.
async fn told() -> Result<String, Cancelled> {
    let why = cancelled().await;
    assert!(matches!(why.reason(), CancelReason::Explicit(Some(_))));
    Ok(why.reason().message().unwrap_or("(no message)").to_string())
}

#[tokio::test(start_paused = true)]
async fn a_child_handle_cancels_with_data() {
    common::leak_checked(async move {
        let out = nursery(|n: NurseryHandle<Cancelled>| async move {
            let worker = n.spawn_named("worker", told());
            let other = n.spawn(told());
            worker.cancel_with("rebalancing");
            let said = common::nursery::how_it_ended(worker).await.unwrap();
            assert!(!other.is_finished(), "only that child was cancelled");
            other.cancel_with(String::from("owned too"));
            let also = common::nursery::how_it_ended(other).await.unwrap();
            Ok((said, also))
        })
        .await;
        assert_eq!(
            out.unwrap(),
            Some(("rebalancing".to_string(), "owned too".to_string()))
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_collected_child_cancels_with_data_of_any_type() {
    common::leak_checked(async move {
        #[derive(Debug, PartialEq)]
        struct Rebalance(u32);
        let out = nursery(|n: NurseryHandle<Cancelled>| async move {
            let mut set = n.collector::<u32>();
            let control = set.spawn(async {
                let why = cancelled().await;
                let data = why.reason().payload().expect("data");
                Ok(data.downcast_ref::<Rebalance>().expect("a Rebalance").0)
            });
            control.cancel_with(Rebalance(7));
            let (_, outcome) = set.join_next().await.unwrap();
            Ok(outcome.unwrap())
        })
        .await;
        assert_eq!(out.unwrap(), Some(7));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_local_child_cancels_with_data() {
    common::leak_checked(async move {
        let prefix = String::from("chunk 2: ");
        let out = local_scope(async |s| {
            let chunk = s.spawn(async {
                let said = told().await?;
                Ok::<_, Cancelled>(format!("{prefix}{said}"))
            });
            chunk.cancel_with("operator");
            Ok::<_, Cancelled>(chunk.await.unwrap())
        })
        .await;
        assert_eq!(out.unwrap(), Some("chunk 2: operator".to_string()));
    })
    .await
}

#[cfg(feature = "rt-multi-thread")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_child_cancels_with_data() {
    common::leak_checked(async move {
        let prefix = String::from("part: ");
        // SAFETY: awaited to completion right here, never forgotten or dropped early.
        let out = unsafe {
            tokio_nursery::parallel_scope_async(async |s| {
                let part = s.spawn(async {
                    let said = told().await?;
                    Ok::<_, Cancelled>(format!("{prefix}{said}"))
                });
                part.cancel_with("enough");
                Ok::<_, Cancelled>(part.await.unwrap())
            })
        }
        .await;
        assert_eq!(out.unwrap().unwrap(), Some("part: enough".to_string()));
    })
    .await
}
