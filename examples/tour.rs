//! A tour of `tokio-nursery`: why dropping futures hurts, and how cancel scopes help.
//!
//! ```text
//! cargo run --example tour
//! ```
//!
//! The tour runs on tokio's paused clock (a current-thread runtime built with
//! `start_paused(true)`): the runtime jumps straight to the next timer whenever every task is
//! waiting, so the sleeps cost no real time and every timestamp printed is exact and the same
//! on every run.

use std::fmt;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_nursery::{
    CancelScope, Cancelled, EffectiveDeadline, TimedOut, cancelled, carry_scope, checkpoint,
    current_deadline, fail_after, is_cancelled, move_on_after, sleep,
};

/// Prints a line stamped with the chapter's virtual time.
macro_rules! say {
    ($($arg:tt)*) => {
        println!("  [{:>4} ms] {}", millis_at(Instant::now()), format_args!($($arg)*))
    };
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("build a tokio runtime");

    println!("tokio-nursery: a tour of cancel scopes and nurseries");
    println!();
    println!("This tour runs on tokio's paused clock: sleeps are instant, so the times shown");
    println!("in [brackets] are virtual milliseconds since the start of each chapter, exact");
    println!("and the same on every run.");

    runtime.block_on(async {
        chapter_1_the_trap().await;
        chapter_2_a_deadline().await;
        chapter_3_nesting_and_shields().await;
        chapter_4_reasons().await;
        chapter_5_move_on_or_fail().await;
        chapter_6_crossing_tasks().await;
        chapter_7_hard_delivery().await;
        chapter_8_nurseries().await;
        chapter_9_dropping_a_nursery().await;
        chapter_10_the_task_tree().await;
    });

    println!();
    println!("That's the tour. The guide (`cargo doc --open`, module `guide`) teaches the same");
    println!("ideas in ten chapters; README.md lists every example; DESIGN.md explains why.");
}

// --- Chapter 1 ------------------------------------------------------------------------------

/// Two accounts whose total must always be 100.
struct Bank {
    alice: u32,
    bob: u32,
}

impl Bank {
    fn new() -> Self {
        Bank { alice: 100, bob: 0 }
    }
}

impl fmt::Display for Bank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (alice, bob) = (self.alice, self.bob);
        write!(f, "alice {alice} + bob {bob} = {}", alice + bob)
    }
}

/// A two-step update: take the money from Alice, then (after a 30 ms round trip to Bob's
/// bank) give it to Bob. It has no cancellation point: the awaits are plain tokio ones.
async fn transfer(bank: &mut Bank, amount: u32) {
    bank.alice -= amount;
    say!("  transfer: took {amount} from alice, sending it to bob's bank (30 ms)...");
    tokio::time::sleep(Duration::from_millis(30)).await;
    bank.bob += amount;
    say!("  transfer: gave {amount} to bob");
}

async fn chapter_1_the_trap() {
    chapter(
        1,
        "The trap: dropping a future mid-await",
        "In async Rust a timeout cancels by dropping the future wherever it is parked.\n\
         Here `tokio::select!` races a transfer against a 20 ms timeout.",
    );
    let mut bank = Bank::new();
    say!("before: {bank}");
    tokio::select! {
        () = transfer(&mut bank, 30) => say!("the transfer finished"),
        () = tokio::time::sleep(Duration::from_millis(20)) => {
            say!("timeout! select! drops the transfer future, parked between its two steps");
        }
    }
    say!("after:  {bank}");
    say!("30 coins vanished: alice + bob == 100 no longer holds, and nobody was told.");
}

// --- Chapter 2 ------------------------------------------------------------------------------

async fn chapter_2_a_deadline() {
    chapter(
        2,
        "A cancel scope with a deadline",
        "The same transfers run in a `CancelScope` with a 50 ms deadline. Cancellation is\n\
         delivered only at cancellation points, as an `Err(Cancelled)` the code can `?`;\n\
         code between two points is never interrupted.",
    );
    let mut bank = Bank::new();
    let scope = CancelScope::new().with_timeout(Duration::from_millis(50));
    let handle = scope.handle();
    let out = scope
        .run(async {
            let mut done = 0;
            while done < 10 {
                // The loop's cancellation point: the one place it can be told to stop.
                if let Err(cancelled) = checkpoint().await {
                    say!("checkpoint() -> Err({cancelled})");
                    say!("cleaning up: {done} transfers completed, closing the ledger");
                    return Err(cancelled); // hand the cancellation back to its scope
                }
                transfer(&mut bank, 10).await;
                done += 1;
            }
            Ok(done)
        })
        .await;
    say!("the deadline passed at 50 ms, during transfer 2, which still completed");
    say!("scope.run(..) -> {out:?}: the scope absorbed its own cancellation");
    say!(
        "handle.cancel_called() = {}, handle.cancelled_caught() = {}",
        handle.cancel_called(),
        handle.cancelled_caught()
    );
    say!("after: {bank}: the invariant holds");
}

// --- Chapter 3 ------------------------------------------------------------------------------

async fn chapter_3_nesting_and_shields() {
    chapter(
        3,
        "Nested scopes and shields",
        "Scopes nest as the code nests. The effective deadline is the nearest one, and anyone\n\
         can ask for it with `current_deadline()`. A shielded scope ignores its ancestors'\n\
         cancellation: the place for cleanup that must still await.",
    );
    let outer = CancelScope::new().with_timeout(Duration::from_millis(100));
    let outer_handle = outer.handle();
    let out = outer
        .run(async {
            say!("outer scope (100 ms): current_deadline() = {}", deadline());
            CancelScope::new()
                .with_timeout(Duration::from_secs(10))
                .run(async {
                    say!(
                        "  inner scope asking for 10 s: current_deadline() = {}",
                        deadline()
                    );
                    Ok::<_, Cancelled>(())
                })
                .await?;
            move_on_after(Duration::from_millis(30), async {
                say!(
                    "  inner scope asking for 30 ms: current_deadline() = {}",
                    deadline()
                );
                Ok::<_, Cancelled>(())
            })
            .await?;

            let cancelled = sleep(Duration::from_secs(60)).await.unwrap_err();
            say!("sleep(60 s) -> Err({cancelled})");
            if sleep(Duration::from_millis(1)).await.is_err() {
                say!("we still owe the server a goodbye, but every cancellation point fails now");
            }
            CancelScope::new()
                .shielded()
                .with_timeout(Duration::from_millis(500))
                .run(async {
                    say!("  shielded cleanup scope, with its own 500 ms bound:");
                    say!(
                        "  is_cancelled() = {}, current_deadline() = {}",
                        is_cancelled(),
                        deadline()
                    );
                    sleep(Duration::from_millis(20)).await?;
                    say!("  goodbye sent: the shielded sleep(20 ms) completed");
                    Ok::<_, Cancelled>(())
                })
                .await?;
            Err::<(), _>(cancelled)
        })
        .await;
    say!(
        "outer.run(..) -> {out:?}: the outer scope absorbed it (cancelled_caught = {})",
        outer_handle.cancelled_caught()
    );
}

// --- Chapter 4 ------------------------------------------------------------------------------

/// Why a worker is being stopped: any `Send + Sync + 'static` value can travel with a cancel.
#[derive(Debug)]
enum Why {
    ConfigReloaded { version: u32 },
    Shutdown,
}

async fn chapter_4_reasons() {
    chapter(
        4,
        "Cancelling with a reason",
        "`cancel_with(data)` cancels a scope from any task or thread and attaches data the\n\
         cancelled code can read, to tell a reload from a shutdown from a deadline.\n\
         The first reason wins.",
    );
    let scope = CancelScope::new();
    let handle = scope.handle();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(40)).await;
        say!("operator task: handle.cancel_with(Why::ConfigReloaded {{ version: 2 }})");
        handle.cancel_with(Why::ConfigReloaded { version: 2 });
        say!("operator task: handle.cancel_with(Why::Shutdown) (ignored: the first reason wins)");
        handle.cancel_with(Why::Shutdown);
    });
    let out = scope
        .run(async {
            say!("worker: serving with config v1, waiting in cancelled() (a cancellation point)");
            let cancelled = cancelled().await;
            say!("worker: cancelled() -> {cancelled}");
            let why = cancelled.reason().payload().and_then(|p| p.downcast_ref());
            match why {
                Some(Why::ConfigReloaded { version }) => {
                    say!("worker: stopping to restart with config v{version}");
                }
                Some(Why::Shutdown) => say!("worker: shutting down for good"),
                None => say!("worker: stopped for another reason: {}", cancelled.reason()),
            }
            Err::<(), _>(cancelled)
        })
        .await;
    say!("scope.run(..) -> {out:?}");

    let scope = CancelScope::new();
    scope.handle().cancel_with("user pressed Ctrl-C");
    let _ = scope
        .run(async {
            let cancelled = checkpoint().await.unwrap_err();
            say!(
                "a string travels too: cancelled before entry, the first checkpoint says {:?}",
                cancelled.reason().message()
            );
            Err::<(), _>(cancelled)
        })
        .await;
}

// --- Chapter 5 ------------------------------------------------------------------------------

/// A request that takes `ms` milliseconds, with a cancellation point while it waits.
async fn fetch(ms: u64) -> Result<String, Cancelled> {
    sleep(Duration::from_millis(ms)).await?;
    Ok(format!("page fetched in {ms} ms"))
}

async fn chapter_5_move_on_or_fail() {
    chapter(
        5,
        "move_on_after or fail_after",
        "Trio's two timeout shapes. `move_on_after` gives up quietly: `Ok(None)`.\n\
         `fail_after` fails with `TimedOut`, converted into the body's error type\n\
         (`io::Error` here; your own error enum works too, see `CancelError`).\n\
         The clock restarts at 0 for each call.",
    );
    let fast = move_on_after(Duration::from_millis(50), fetch(20)).await;
    say!("move_on_after(50 ms, fetch(20 ms)) -> {fast:?}");
    reset_clock();
    let slow = move_on_after(Duration::from_millis(50), fetch(80)).await;
    say!("move_on_after(50 ms, fetch(80 ms)) -> {slow:?}: moved on without a value");

    reset_clock();
    let start = Instant::now();
    let failed: Result<String, io::Error> = fail_after(Duration::from_millis(50), async {
        Ok(fetch(80).await?) // `?` turns the `Cancelled` into an `io::Error`
    })
    .await;
    let error = failed.unwrap_err();
    let timed_out = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TimedOut>())
        .expect("a TimedOut inside the io::Error");
    let deadline = timed_out.deadline().expect("fail_after has a deadline");
    say!(
        "fail_after(50 ms, fetch(80 ms)) -> Err(io::Error of kind {:?}): deadline {} ms \
         after entry, reason: {}",
        error.kind(),
        (deadline - start).as_millis(),
        timed_out.reason()
    );
}

// --- Chapter 6 ------------------------------------------------------------------------------

async fn chapter_6_crossing_tasks() {
    chapter(
        6,
        "Carrying a scope into a spawned task",
        "A plain `tokio::spawn` starts outside every scope: no deadline, never cancelled.\n\
         `carry_scope(fut)` runs the future in the current scope, so the deadline reaches it\n\
         in its own task, even while the scope's owner is parked.",
    );
    let mut plain_task = None;
    let out = move_on_after(Duration::from_millis(100), async {
        say!(
            "owner: in a 100 ms scope, current_deadline() = {}",
            deadline()
        );
        let plain = tokio::spawn(async {
            say!("  plain task:   current_deadline() = {}", deadline());
            let slept = sleep(Duration::from_millis(300)).await;
            say!("  plain task:   sleep(300 ms) -> {slept:?}: nobody told it to stop");
        });
        let carried = tokio::spawn(carry_scope(async {
            say!("  carried task: current_deadline() = {}", deadline());
            let slept = sleep(Duration::from_millis(300)).await;
            if let Err(cancelled) = &slept {
                say!("  carried task: sleep(300 ms) -> Err({cancelled})");
            }
            slept
        }));
        say!("owner: parked awaiting the carried task's JoinHandle");
        let seen = carried.await.expect("the carried task panicked");
        plain_task = Some(plain);
        seen // its `Cancelled` is ours to hand back
    })
    .await;
    say!("owner: move_on_after(..) -> {out:?}");
    if let Some(plain) = plain_task {
        plain.await.expect("the plain task panicked");
    }
}

// --- Chapter 7 ------------------------------------------------------------------------------

/// Says so when dropped.
struct DropAlarm(&'static str);

impl Drop for DropAlarm {
    fn drop(&mut self) {
        say!("{}", self.0);
    }
}

async fn chapter_7_hard_delivery() {
    chapter(
        7,
        "Hard delivery, for cancel-safe bodies",
        "A cooperative scope cannot stop code that never reaches a cancellation point.\n\
         A `.hard()` scope drops its body when cancelled, like `select!` does: safe only\n\
         for bodies that are cancel-safe, such as waiting on `mpsc::Receiver::recv`.",
    );
    let out = CancelScope::new()
        .with_timeout(Duration::from_millis(50))
        .run(async {
            tokio::time::sleep(Duration::from_millis(200)).await; // not a cancellation point
            Ok::<_, Cancelled>("finished anyway")
        })
        .await;
    say!("cooperative 50 ms scope around tokio::time::sleep(200 ms) -> {out:?}");

    println!();
    println!("  Now a hard scope around a consumer; the clock restarts at 0.");
    reset_clock();
    let (tx, mut rx) = mpsc::channel(8);
    tokio::spawn(async move {
        for n in 1..=4 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            say!("  producer: send({n})");
            let _ = tx.send(n).await;
        }
    });
    let out = CancelScope::new()
        .with_timeout(Duration::from_millis(100))
        .hard()
        .run(async {
            let _alarm = DropAlarm("  consumer: body dropped by the hard scope");
            while let Some(n) = rx.recv().await {
                say!("  consumer: recv() -> {n}");
            }
            Ok::<_, Cancelled>(())
        })
        .await;
    say!("hard 100 ms scope around a recv() loop -> {out:?}");
    let next = rx.recv().await;
    say!("after the scope: rx.recv() -> {next:?}: recv is cancel-safe, nothing was lost");
}

async fn chapter_8_nurseries() {
    chapter(
        8,
        "Nurseries own their children",
        "A nursery runs a body that spawns children and finishes only when all have finished:\n\
         no child outlives it. Children run in a scope under the nursery's, so its deadline and\n\
         cancellation reach them. The first failure cancels the siblings (fail-fast), and the\n\
         nursery returns every failure, none lost.",
    );
    let outcome = tokio_nursery::Nursery::new()
        .timeout(Duration::from_millis(100))
        .run(|n| async move {
            for (name, ms, fails) in [
                ("fast", 20, false),
                ("flaky", 30, true),
                ("slow", 80, false),
            ] {
                n.spawn_named(name, async move {
                    if let Err(cancelled) = tokio_nursery::sleep(Duration::from_millis(ms)).await {
                        say!("  {name}: cancelled ({}), cleaning up", cancelled.reason());
                        return Err(io::Error::from(cancelled));
                    }
                    if fails {
                        say!("  {name}: failing");
                        return Err(io::Error::other(format!("{name} broke")));
                    }
                    say!("  {name}: done");
                    Ok(())
                });
            }
            say!("body: spawned 3 children in a nursery with a 100 ms timeout");
            Ok::<_, io::Error>(())
        })
        .await;
    match outcome {
        Err(tokio_nursery::NurseryError::Failed(failures)) => {
            for failure in failures {
                say!(
                    "nursery -> failure of {}: {}",
                    failure.origin(),
                    failure.error()
                );
            }
        }
        other => say!("nursery -> {other:?}"),
    }
}

async fn chapter_9_dropping_a_nursery() {
    chapter(
        9,
        "Dropping a nursery never drops a child mid-await (by default)",
        "A nursery's future can still be dropped (a lost select!, a client gone). In the\n\
         default wait mode its children are cancelled, not dropped: the enclosing nursery\n\
         adopts them and waits while they clean up. DropMode::Abort drops them instead.",
    );
    let outcome = tokio_nursery::nursery(|_outer| async move {
        let inner = tokio_nursery::nursery(|n| async move {
            n.spawn(async {
                let cancelled = tokio_nursery::cancelled().await;
                say!(
                    "  child: told {}; finishing the write (20 ms)",
                    cancelled.reason()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                say!("  child: write finished, state consistent");
                Err::<(), _>(cancelled)
            });
            std::future::pending::<()>().await;
            Ok::<(), Cancelled>(())
        });
        if tokio::time::timeout(Duration::from_millis(10), inner)
            .await
            .is_err()
        {
            say!("outer body: the inner nursery's future was dropped (timeout); moving on");
        }
        Ok::<_, Cancelled>(())
    })
    .await;
    say!("outer nursery -> {outcome:?}: it waited for the adopted child");
}

async fn chapter_10_the_task_tree() {
    chapter(
        10,
        "Why is my shutdown stuck?",
        "TaskTree prints the live tree of nurseries and children, with how long a\n\
         cancellation has been waiting: the child that ignores it stands out.",
    );
    let _ = tokio_nursery::Nursery::new()
        .name("server")
        .run(|n| async move {
            n.spawn_named("well-behaved", async {
                Err::<(), _>(tokio_nursery::cancelled().await)
            });
            n.spawn_named("stuck-in-legacy-io", async {
                tokio::time::sleep(Duration::from_secs(3)).await; // not a cancellation point
                Ok::<_, Cancelled>(())
            });
            tokio::task::yield_now().await;
            n.cancel();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            say!("the tree, 1.5 s after the cancel:");
            for line in tokio_nursery::TaskTree::of(&n.scope()).to_string().lines() {
                println!("      {line}");
            }
            Ok::<_, Cancelled>(())
        })
        .await;
    say!("the nursery finished once the stuck child returned");
}

// --- Printing -------------------------------------------------------------------------------

/// When the current chapter started, on tokio's (paused) clock.
static CHAPTER_START: Mutex<Option<Instant>> = Mutex::new(None);

fn reset_clock() {
    *CHAPTER_START.lock().unwrap() = Some(Instant::now());
}

/// Milliseconds from the start of the chapter to `at`.
fn millis_at(at: Instant) -> u128 {
    let start = CHAPTER_START
        .lock()
        .unwrap()
        .expect("a chapter has started");
    at.saturating_duration_since(start).as_millis()
}

fn chapter(number: u32, title: &str, intro: &str) {
    println!();
    println!("=== Chapter {number}: {title} ===");
    for line in intro.lines() {
        println!("  {line}");
    }
    println!();
    reset_clock();
}

/// The effective deadline here, in chapter time.
fn deadline() -> String {
    match current_deadline() {
        EffectiveDeadline::Unbounded => "none".to_string(),
        EffectiveDeadline::At(at) => format!("at {} ms", millis_at(at)),
        EffectiveDeadline::Passed => "already passed".to_string(),
    }
}
