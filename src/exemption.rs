//! Exemption from the crate's own aborts and hard drops while a parallel borrowing scope
//! runs (SPEC B2).
//!
//! A parallel scope's children borrow from the stack of the task that awaits it; the crate
//! must never drop that task's future before the scope completed. An [`Exemption`] marks
//! every scope of the task, from the current one outwards: a nursery aborting that task (a
//! grace period running out, N7's cascade, N8's abort drop, a handle's `abort`) tells it
//! "grace expired" through its scope instead, and a hard scope (S12) keeps polling its body
//! rather than dropping it. When the last exemption of a scope ends, what was put off
//! happens: the task is aborted, the hard scope is woken to drop its body.

use std::sync::Arc;
use std::task::Waker;

use tokio::task::AbortHandle;

use crate::context;
use crate::node::Node;

/// Held while a parallel borrowing scope runs; ending it carries out what was put off.
pub(crate) struct Exemption {
    /// Every scope of the task around the parallel scope, innermost first.
    scopes: Vec<Arc<Node>>,
    /// The task, if it is a child (of a nursery, or of a local scope): its scope and, for a
    /// nursery child whose spawner had stored it when the exemption began, how to abort it.
    task: Option<(Arc<Node>, Option<AbortHandle>)>,
    /// The waker the parallel scope was first polled with: the task's own, unless a
    /// combinator (a `FuturesUnordered`, say) sits between the scope and the task.
    waker: Waker,
}

/// Exempts the task being polled, whose scopes are the current frame and its enclosing
/// ones, until the returned guard is dropped. `waker` wakes a hard scope whose drop was put
/// off, and a task that must carry out a put-off abort itself.
pub(crate) fn exempt_current(waker: &Waker) -> Exemption {
    let (scopes, task) = context::with_current(|frame| {
        let (mut scopes, mut task) = (Vec::new(), None);
        let mut frame = frame;
        while let Some(current) = frame {
            frame = current.parent();
            // Another task's scope, carried here: that task does not run this parallel
            // scope, and its aborts and hard drops must not wait for it.
            if current.is_carried() {
                continue;
            }
            let node = current.node().clone();
            node.exempt();
            if current.child_scope().is_some() {
                let abort = current.child_task().and_then(|task| task.abort_handle());
                task = Some((node.clone(), abort.cloned()));
            }
            scopes.push(node);
        }
        (scopes, task)
    });
    Exemption {
        scopes,
        task,
        waker: waker.clone(),
    }
}

/// Whether the current thread is polling the nursery child whose scope is `node`.
fn in_own_poll(node: &Arc<Node>) -> bool {
    context::with_current(|frame| {
        let mut frame = frame;
        while let Some(current) = frame {
            let own = current
                .child_task()
                .and_then(|task| task.own())
                .is_some_and(|own| Arc::ptr_eq(own, node));
            if own {
                return true;
            }
            frame = current.parent();
        }
        false
    })
}

impl Drop for Exemption {
    fn drop(&mut self) {
        let mut wake = false;
        for scope in &self.scopes {
            if !scope.unexempt() {
                continue;
            }
            match &self.task {
                // The task's abort was put off. Ended in the task's own poll: the task carries
                // it out when its future returns (`ChildTask::poll` reads the put-off mark in
                // its scope), since it may have begun another parallel scope meanwhile.
                Some((node, _)) if Arc::ptr_eq(node, scope) && in_own_poll(node) => {}
                // Ended elsewhere (the backstop of an enclosing scope dropping the task's
                // future, the task's drop): now.
                Some((node, Some(abort))) if Arc::ptr_eq(node, scope) => abort.abort(),
                // Its abort handle was not stored yet when the exemption began (a first poll
                // racing with its spawner): woken, the task carries the abort out at its next
                // poll. (A waker that is not the task's own, a combinator's around the scope,
                // may not poll the task again.)
                Some((node, None)) if Arc::ptr_eq(node, scope) => wake = true,
                // A hard scope's drop was put off: it drops its body when polled again.
                _ => wake = true,
            }
        }
        if wake {
            // A wake the crate does on its own, from the scope's end: a user's waker (the
            // one of the scope's first poll) that panics must not cost the scope's outcome.
            crate::nursery::catch_waker_panic(
                || "when a parallel scope's end carried out what it had put off".into(),
                || self.waker.wake_by_ref(),
            );
        }
    }
}
