//! A live snapshot of the task tree (SPEC O2): scopes, nurseries and children, their state,
//! deadlines and names, and since when a cancellation has been waiting. Printable as text
//! to answer "why is my shutdown stuck?".

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::context;
use crate::node::{Node, NodeView, ScopeId};
use crate::reason::CancelReason;
use crate::scope::ScopeHandle;

/// A snapshot of a subtree of scopes, taken at one moment (each node is read once, so a
/// tree changing meanwhile may show a mix of before and after).
///
/// Named children are listed from their spawn; an unnamed child once it has waited for the
/// first time (until then its nursery's line counts it as "starting"; see
/// [chapter 8](crate::guide::ch08_task_tree)).
///
/// ```
/// use tokio_nursery::{nursery, Cancelled, TaskTree};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// nursery(|n| async move {
///     n.spawn_named("worker", async { tokio_nursery::cancelled().await; Ok::<_, Cancelled>(()) });
///     let tree = TaskTree::of(&n.scope());
///     assert!(tree.to_string().contains("\"worker\""));
///     println!("{tree}");
///     n.cancel();
///     Ok::<_, Cancelled>(())
/// })
/// .await
/// .unwrap();
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct TaskTree {
    entries: Vec<TreeEntry>,
    taken_at: Instant,
}

/// One scope of a [`TaskTree`], in depth-first order.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TreeEntry {
    /// How deep below the snapshot's root (0 for the root).
    pub depth: usize,
    /// The scope.
    pub scope: ScopeId,
    /// `"scope"`, `"nursery"`, `"child"`, `"blocking child"`, `"orphans"`.
    pub kind: &'static str,
    /// The name given to the nursery or child, if any.
    pub name: Option<String>,
    /// What its owner says: a nursery's state and children, a child's task id.
    pub detail: Option<String>,
    /// Effectively cancelled: by itself or an ancestor it is exposed to.
    pub cancelled: bool,
    /// Why, and since when, if known: the reason and time of its own cancellation, else of
    /// the nearest cancelled ancestor's.
    pub cancellation: Option<(CancelReason, Instant)>,
    /// Its own deadline.
    pub deadline: Option<Instant>,
    /// Whether its shield is raised.
    pub shielded: bool,
}

impl TaskTree {
    /// The subtree of `scope`.
    pub fn of(scope: &ScopeHandle) -> TaskTree {
        Self::from_node(&scope.node)
    }

    /// The tree of the current code: from the outermost scope around it. Empty outside any
    /// scope.
    pub fn current() -> TaskTree {
        let node = context::with_current(|frame| frame.map(|frame| frame.node().clone()));
        match node {
            None => TaskTree {
                entries: Vec::new(),
                taken_at: Instant::now(),
            },
            Some(mut node) => {
                while let Some(parent) = node.parent() {
                    node = parent;
                }
                Self::from_node(&node)
            }
        }
    }

    /// The orphans of the current runtime (SPEC N9): the nurseries dropped in wait mode with
    /// no live enclosing nursery, and protected work with none, each with its children.
    pub fn orphans() -> TaskTree {
        let roots = crate::nursery::orphan_scopes();
        Self::from_nodes(roots)
    }

    pub(crate) fn from_node(root: &Arc<Node>) -> TaskTree {
        Self::from_nodes(vec![root.clone()])
    }

    fn from_nodes(roots: Vec<Arc<Node>>) -> TaskTree {
        let mut entries = Vec::new();
        // Depth-first, iteratively (trees can be deep, SPEC R4): a scope with its depth, the
        // cancellation it inherits and its parent's owner; or a child without a scope.
        type Parent = Option<Arc<dyn crate::node::Attachment>>;
        enum Item {
            Scope(Arc<Node>, usize, Option<(CancelReason, Instant)>, Parent),
            /// A child running in its parent's scope, without one of its own.
            Leaf(TreeEntry),
        }
        // A root taken from inside a tree (`TaskTree::of` a child's scope) keeps what its
        // ancestors give it: their cancellation, and its parent's owner that names it.
        let mut stack: Vec<_> = roots
            .into_iter()
            .rev()
            .map(|root| {
                let (inherited, parent) = seed(&root);
                Item::Scope(root, 0, inherited, parent)
            })
            .collect();
        // Adopted work that is still linked where it runs (protected work, an executor's
        // task: linked under their caller's scope and adopted by the nursery above) is
        // reached twice: it is listed once, where it runs if that is in the snapshot (the
        // adopted are visited after their adopter's children).
        let mut listed = std::collections::HashSet::new();
        while let Some(item) = stack.pop() {
            let (node, depth, inherited, parent) = match item {
                Item::Scope(node, depth, inherited, parent) => (node, depth, inherited, parent),
                Item::Leaf(entry) => {
                    entries.push(entry);
                    continue;
                }
            };
            if !listed.insert(node.id()) {
                continue;
            }
            // The children without a scope are read before the scopes below: a child whose
            // scope is made in between is then seen twice (listed once, as a scope) rather
            // than missed.
            let without_scope = node
                .attachment()
                .map(|owner| owner.children_without_scope())
                .unwrap_or_default();
            let mut view = node.view();
            if view.description.is_none() {
                view.description = parent.and_then(|parent| parent.describe_child(view.id));
            }
            let (cancellation, passed_down) = cancellation_of(&view, inherited);
            // Siblings by scope id: the order their scopes were made on each thread (children:
            // spawn order, for those spawned from one thread), those without a scope of
            // their own among them.
            let scoped: std::collections::HashSet<ScopeId> = match without_scope.is_empty() {
                true => std::collections::HashSet::new(),
                false => view.children.iter().map(|child| child.id()).collect(),
            };
            let mut below: Vec<(ScopeId, Item)> = without_scope
                .into_iter()
                .filter(|(scope, _)| !scoped.contains(scope))
                .map(|(scope, description)| {
                    let leaf = TreeEntry {
                        depth: depth + 1,
                        scope,
                        kind: description.kind,
                        name: description.name.map(|name| name.to_string()),
                        detail: description.detail,
                        cancelled: view.cancelled,
                        cancellation: passed_down.clone(),
                        deadline: None,
                        shielded: false,
                    };
                    (scope, Item::Leaf(leaf))
                })
                .collect();
            below.extend(view.children.iter().map(|child| {
                let scope = Item::Scope(
                    child.clone(),
                    depth + 1,
                    passed_down.clone(),
                    view.attachment.clone(),
                );
                (child.id(), scope)
            }));
            below.sort_by_key(|(id, _)| *id);
            for adopted in view.adopted.iter().rev() {
                stack.push(Item::Scope(
                    adopted.clone(),
                    depth + 1,
                    passed_down.clone(),
                    view.attachment.clone(),
                ));
            }
            stack.extend(below.into_iter().rev().map(|(_, item)| item));
            let (kind, name, detail) = match view.description {
                Some(description) => (
                    description.kind,
                    description.name.map(|name| name.to_string()),
                    description.detail,
                ),
                None => ("scope", None, None),
            };
            entries.push(TreeEntry {
                depth,
                scope: view.id,
                kind,
                name,
                detail,
                cancelled: view.cancelled,
                cancellation,
                deadline: view.deadline.map(Instant::from_std),
                shielded: view.shielded,
            });
        }
        TaskTree {
            entries,
            taken_at: Instant::now(),
        }
    }

    /// The scopes, depth first.
    pub fn entries(&self) -> &[TreeEntry] {
        &self.entries
    }
}

/// A scope's cancellation as the tree shows it (its own, else what it inherits unless it is
/// shielded), and what it passes down to its children.
fn cancellation_of(
    view: &NodeView,
    inherited: Option<(CancelReason, Instant)>,
) -> (Cancellation, Cancellation) {
    let own = match (&view.reason, view.cancelled_at, view.cancel_called) {
        (Some(reason), Some(at), true) => Some((reason.clone(), Instant::from_std(at))),
        _ => None,
    };
    let cancellation = match view.cancelled {
        true => own.clone().or(if view.shielded { None } else { inherited }),
        false => None,
    };
    let passed_down = if view.shielded {
        own
    } else {
        cancellation.clone()
    };
    (cancellation, passed_down)
}

type Cancellation = Option<(CancelReason, Instant)>;

/// What `root`'s ancestors give it in the tree: the cancellation passed down to it, and its
/// parent's owner (which describes children without a label of their own).
fn seed(root: &Arc<Node>) -> (Cancellation, Option<Arc<dyn crate::node::Attachment>>) {
    let ancestors: Vec<_> = std::iter::successors(root.parent(), |node| node.parent()).collect();
    let owner = ancestors.first().and_then(|parent| parent.attachment());
    let inherited = ancestors.iter().rev().fold(None, |inherited, ancestor| {
        cancellation_of(&ancestor.view(), inherited).1
    });
    (inherited, owner)
}

impl fmt::Display for TaskTree {
    /// One line per scope, indented by depth: kind, name, scope id, state, how long a
    /// cancellation has been waiting, deadline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for entry in &self.entries {
            write!(f, "{:indent$}{}", "", entry.kind, indent = entry.depth * 2)?;
            if let Some(name) = &entry.name {
                write!(f, " {name:?}")?;
            }
            write!(f, " ({})", entry.scope)?;
            if let Some(detail) = &entry.detail {
                write!(f, ": {detail}")?;
            }
            match &entry.cancellation {
                Some((reason, since)) => {
                    let waited = self.taken_at.saturating_duration_since(*since);
                    write!(f, " [cancelled {} ago: {reason}]", Millis(waited))?;
                }
                None if entry.cancelled => write!(f, " [cancelled]")?,
                None => {}
            }
            if entry.shielded {
                write!(f, " [shielded]")?;
            }
            // A deadline that passed and is what cancelled the scope was said just above.
            let cancelled_by_deadline = entry
                .cancellation
                .as_ref()
                .is_some_and(|(reason, _)| reason.is_deadline());
            if let Some(deadline) = entry.deadline {
                match deadline.checked_duration_since(self.taken_at) {
                    Some(left) => write!(f, " [deadline in {}]", Millis(left))?,
                    None if cancelled_by_deadline => {}
                    None => write!(f, " [deadline passed]")?,
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

struct Millis(Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms >= 10_000 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}
