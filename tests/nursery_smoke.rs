use std::time::Duration;
use tokio::time::Instant;
use tokio_nursery::*;

#[tokio::test(start_paused = true)]
async fn children_values_and_fail_fast() {
    let out = nursery(|n| async move {
        let a = n.spawn(async { Ok::<_, Cancelled>(1) });
        let b = n.spawn(async {
            sleep(Duration::from_secs(10)).await?;
            Ok(2)
        });
        assert_eq!(a.await.unwrap(), 1);
        b.cancel();
        assert!(matches!(b.await, Err(JoinError::ChildCancelled)));
        Ok::<_, Cancelled>(5)
    })
    .await;
    assert_eq!(out.unwrap(), Some(5));
}

#[derive(Debug)]
enum E {
    C(Cancelled),
    Boom(u32),
}
impl From<Cancelled> for E {
    fn from(c: Cancelled) -> Self {
        E::C(c)
    }
}
impl CancelError for E {
    fn as_cancelled(&self) -> Option<&Cancelled> {
        match self {
            E::C(c) => Some(c),
            _ => None,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn failure_cancels_siblings() {
    let start = Instant::now();
    let out = nursery(|n| async move {
        n.spawn(async {
            sleep(Duration::from_millis(10)).await?;
            Err::<(), _>(E::Boom(1))
        });
        let sib = n.spawn(async {
            let c = cancelled().await;
            assert!(matches!(c.reason(), CancelReason::SiblingFailed));
            Err::<(), _>(E::C(c))
        });
        let r = sib.await;
        assert!(matches!(r, Err(JoinError::ChildCancelled)), "{r:?}");
        sleep(Duration::from_secs(100)).await?;
        Ok::<_, E>(())
    })
    .await;
    let err = out.unwrap_err();
    assert_eq!(err.failures().len(), 1);
    assert!(matches!(err.failures()[0].error(), E::Boom(1)));
    assert_eq!(start.elapsed(), Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn panic_is_resumed() {
    let r = tokio::spawn(async {
        nursery(|n| async move {
            n.spawn(async {
                panic!("child boom");
                #[allow(unreachable_code)]
                Ok::<(), Cancelled>(())
            });
            sleep(Duration::from_secs(1)).await?;
            Ok::<_, Cancelled>(())
        })
        .await
    })
    .await;
    let p = r.unwrap_err().into_panic();
    assert_eq!(panic_message(&*p), Some("child boom"));
}

#[tokio::test(start_paused = true)]
async fn grace_aborts_stuck_children() {
    let start = Instant::now();
    let mut stuck = None;
    let slot = &mut stuck;
    let out = Nursery::new()
        .grace(Duration::from_millis(50))
        .run(|n| async move {
            *slot = Some(n.spawn(async {
                tokio::time::sleep(Duration::from_secs(100)).await;
                Ok::<_, Cancelled>(())
            }));
            n.cancel();
            check_cancelled()
        })
        .await;
    assert_eq!(out.unwrap(), None);
    assert_eq!(start.elapsed(), Duration::from_millis(50));
    assert!(matches!(stuck.unwrap().await, Err(JoinError::ChildAborted)));
}

#[tokio::test(start_paused = true)]
async fn abort_drop_and_closed_spawn() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let fut = nursery(|n: NurseryHandle<Cancelled>| async move {
        tx.send(n.clone()).unwrap();
        n.spawn(async {
            tokio::time::sleep(Duration::from_secs(100)).await;
            Ok(())
        });
        std::future::pending::<()>().await;
        Ok(())
    });
    let _ = tokio::time::timeout(Duration::from_millis(5), fut).await;
    let n = rx.await.unwrap();
    assert!(!n.is_open());
    assert!(n.try_spawn(async { Ok(()) }).is_err());
    tokio::task::yield_now().await;
    assert_eq!(n.live_children(), 0);
}
