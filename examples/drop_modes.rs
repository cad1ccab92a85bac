//! Two drop modes of a nursery, `Wait` and `Abort`, side by side (`BlockingWait` needs a
//! multi-thread runtime: guide, chapter 4): what a child sees when the future of its
//! nursery is dropped before it finished (here: it loses a `tokio::select!` against a
//! timeout).
//!
//! ```text
//! cargo run --example drop_modes
//! ```
//!
//! The child is a two-step bank transfer: take 30 from Alice, wait for Bob's bank, give 30
//! to Bob; if it is cancelled between the steps, it rolls back. Three scenes:
//!
//! 1. `DropMode::Abort`: the child is aborted, tokio drops its future where it is parked.
//!    Neither step 2 nor the rollback runs, and 30 coins vanish.
//! 2. `DropMode::Wait` (the default) inside an enclosing nursery: the dropped nursery's scope
//!    is cancelled and the drop returns at once; the child sees the cancellation at its next
//!    cancellation point, rolls back, and the enclosing nursery adopts it and waits for it.
//! 3. `DropMode::Wait` with no enclosing nursery: the child goes to the runtime's orphan
//!    registry, which can be awaited with `orphans_finished()`.
//!
//! The example runs on tokio's paused clock (a current-thread runtime built with
//! `start_paused(true)`): sleeps cost no real time, and every timestamp printed is exact and
//! the same on every run.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_nursery::{Cancelled, DropMode, Nursery, nursery, orphan_count, orphans_finished, sleep};

/// Prints a line stamped with the scene's virtual time.
macro_rules! say {
    ($($arg:tt)*) => {
        println!("  [{:>3} ms] {}", millis(), format_args!($($arg)*))
    };
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("build a tokio runtime");

    println!("tokio-nursery: the two drop modes of a nursery");
    println!();
    println!("Running on tokio's paused clock: sleeps cost no real time, so the [times] are");
    println!("virtual milliseconds since the start of each scene, exact and the same on every");
    println!("run. In every scene a nursery runs one child, a transfer that needs 50 ms, and");
    println!("the nursery's future loses a `tokio::select!` against a 10 ms timeout.");

    runtime.block_on(async {
        scene_1_abort().await;
        scene_2_wait_adopted().await;
        scene_3_wait_orphaned().await;
    });

    println!();
    println!("Abort is for children that are cancel-safe; Wait (the default) lets every child");
    println!("finish its cleanup and still never leaves one running unaccounted for.");
}

// --- The scenes -----------------------------------------------------------------------------

async fn scene_1_abort() {
    scene(
        1,
        "DropMode::Abort",
        "Dropping the nursery aborts its children: tokio drops their futures wherever\n\
         they are parked, at their next scheduling.",
    );
    let bank = Bank::new();
    let in_child = bank.clone();
    let inner = Nursery::new()
        .drop_mode(DropMode::Abort)
        .run(|n| async move {
            n.spawn(transfer(in_child));
            Ok::<_, Cancelled>(())
        });
    race_against_timeout(inner).await;

    say!("main: waiting 100 ms, long past the transfer's 50 ms...");
    tokio::time::sleep(Duration::from_millis(100)).await;
    say!("main: step 2 never came, and neither did a rollback");
    say!("main: {}", bank.show());
}

async fn scene_2_wait_adopted() {
    scene(
        2,
        "DropMode::Wait, inside an enclosing nursery",
        "Dropping the nursery cancels its scope and returns at once; no child is dropped\n\
         mid-await. The enclosing nursery adopts the children and waits for them.",
    );
    let bank = Bank::new();
    let outer = nursery(|_outer| {
        let bank = bank.clone();
        async move {
            let inner = Nursery::new()
                .drop_mode(DropMode::Wait)
                .run(|n| async move {
                    n.spawn(transfer(bank));
                    Ok::<_, Cancelled>(())
                });
            race_against_timeout(inner).await;
            say!("outer body: the drop returned at once; the outer body returns");
            Ok::<_, Cancelled>(())
        }
    })
    .await;
    say!("main: the outer nursery waited for the adopted child -> {outer:?}");
    say!("main: {}", bank.show());
}

async fn scene_3_wait_orphaned() {
    scene(
        3,
        "DropMode::Wait, with no enclosing nursery",
        "With no live nursery around to adopt them, the children become orphans of the\n\
         runtime: counted by `orphan_count()`, awaited with `orphans_finished()`.\n\
         (A warning event is emitted too, visible with a `tracing` subscriber.)",
    );
    let bank = Bank::new();
    let in_child = bank.clone();
    let inner = Nursery::new()
        .drop_mode(DropMode::Wait)
        .run(|n| async move {
            n.spawn(transfer(in_child));
            Ok::<_, Cancelled>(())
        });
    race_against_timeout(inner).await;
    say!("main: orphan_count() = {}", orphan_count());
    say!("main: awaiting orphans_finished()...");
    orphans_finished().await;
    say!(
        "main: orphans_finished() returned; orphan_count() = {}",
        orphan_count()
    );
    say!("main: {}", bank.show());
}

/// Races a nursery's future against a 10 ms timeout; the loser is dropped.
async fn race_against_timeout<F: Future>(nursery: F) {
    tokio::select! {
        _ = nursery => say!("the nursery finished first (not in this example)"),
        () = tokio::time::sleep(Duration::from_millis(10)) => {
            say!("select!: the timeout won; the nursery's future has been dropped");
        }
    }
}

// --- The child ------------------------------------------------------------------------------

/// A two-step transfer of 30 from Alice to Bob that rolls back if it is cancelled between
/// the steps.
async fn transfer(bank: Bank) -> Result<(), Cancelled> {
    let mut alarm = DropAlarm { finished: false };
    bank.update(|b| b.alice -= 30);
    say!("  child: step 1: took 30 from alice; waiting 50 ms for bob's bank");
    // `tokio_nursery::sleep` is a cancellation point: it reports a cancellation as an error.
    if let Err(cancelled) = sleep(Duration::from_millis(50)).await {
        say!("  child: sleep -> Err({})", cancelled.reason());
        say!("  child: rolling back (20 ms)");
        // Cleanup may await: plain tokio awaits still work in a cancelled scope.
        tokio::time::sleep(Duration::from_millis(20)).await;
        bank.update(|b| b.alice += 30);
        say!("  child: rollback done: 30 given back to alice");
        alarm.finished = true;
        return Err(cancelled); // hand the cancellation back: not a failure
    }
    bank.update(|b| b.bob += 30);
    say!("  child: step 2: gave 30 to bob");
    alarm.finished = true;
    Ok(())
}

/// Says so when the transfer's future is dropped before it finished.
struct DropAlarm {
    finished: bool,
}

impl Drop for DropAlarm {
    fn drop(&mut self) {
        if !self.finished {
            say!("  child: DROPPED mid-await, between step 1 and step 2: no rollback can run");
        }
    }
}

/// Two accounts whose total should always be 100.
#[derive(Clone)]
struct Bank(Arc<Mutex<Accounts>>);

struct Accounts {
    alice: u32,
    bob: u32,
}

impl Bank {
    fn new() -> Self {
        Bank(Arc::new(Mutex::new(Accounts { alice: 100, bob: 0 })))
    }

    fn update(&self, change: impl FnOnce(&mut Accounts)) {
        change(&mut self.0.lock().unwrap());
    }

    fn show(&self) -> String {
        let accounts = self.0.lock().unwrap();
        let verdict = if accounts.alice + accounts.bob == 100 {
            "the invariant holds"
        } else {
            "30 coins vanished"
        };
        format!("{accounts}: {verdict}")
    }
}

impl fmt::Display for Accounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (alice, bob) = (self.alice, self.bob);
        write!(f, "alice {alice} + bob {bob} = {}", alice + bob)
    }
}

// --- Printing -------------------------------------------------------------------------------

static SCENE_START: Mutex<Option<Instant>> = Mutex::new(None);

fn scene(number: u32, title: &str, intro: &str) {
    println!();
    println!("=== Scene {number}: {title} ===");
    for line in intro.lines() {
        println!("  {line}");
    }
    println!();
    *SCENE_START.lock().unwrap() = Some(Instant::now());
}

fn millis() -> u128 {
    let start = SCENE_START.lock().unwrap().expect("a scene has started");
    start.elapsed().as_millis()
}
