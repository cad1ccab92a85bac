//! The measurement loop: runtimes, scenarios, interleaved rounds and medians.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::report::Row;
use crate::settings::{Settings, Sizes};

/// One run of a mechanism: the measured duration of a batch of `n` children (or calls).
pub type Timed = Pin<Box<dyn Future<Output = Duration> + Send>>;
/// The same for a mechanism whose future is not `Send` (a local scope).
pub type LocalTimed = Pin<Box<dyn Future<Output = Duration>>>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Flavor {
    CurrentThread,
    MultiThread,
}

impl Flavor {
    pub fn name(self) -> &'static str {
        match self {
            Flavor::CurrentThread => "current_thread",
            Flavor::MultiThread => "multi_thread",
        }
    }
}

pub const BOTH: &[Flavor] = &[Flavor::CurrentThread, Flavor::MultiThread];
pub const CURRENT_THREAD: &[Flavor] = &[Flavor::CurrentThread];
pub const MULTI_THREAD: &[Flavor] = &[Flavor::MultiThread];

pub fn multi_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a multi_thread runtime")
}

/// The two runtimes of a measurement process, built once.
pub struct Runtimes {
    current: Runtime,
    multi: Runtime,
}

impl Runtimes {
    pub fn new() -> Self {
        Runtimes {
            current: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current_thread runtime"),
            multi: multi_thread_runtime(),
        }
    }

    fn get(&self, flavor: Flavor) -> &Runtime {
        match flavor {
            Flavor::CurrentThread => &self.current,
            Flavor::MultiThread => &self.multi,
        }
    }
}

/// Runs `future` in a task spawned on `rt` (so on the multi-thread runtime the spawner is a
/// worker, as in a server).
pub fn run_on<T: Send + 'static>(
    rt: &Runtime,
    future: Pin<Box<dyn Future<Output = T> + Send>>,
) -> T {
    rt.block_on(async move { tokio::spawn(future).await.expect("the benchmark task") })
}

/// How a mechanism is driven.
#[derive(Clone, Copy)]
pub enum Run {
    /// In a task spawned on the runtime.
    Task(fn(usize) -> Timed),
    /// Not `Send`: by `block_on` on the calling thread, inside the runtime.
    Local(fn(usize) -> LocalTimed),
}

impl Run {
    fn time(self, rt: &Runtime, n: usize) -> Duration {
        match self {
            Run::Task(make) => run_on(rt, make(n)),
            Run::Local(make) => rt.block_on(make(n)),
        }
    }
}

/// A peer mechanism of a scenario.
pub struct Peer {
    pub name: &'static str,
    pub run: Run,
    /// Joins its children through a `FuturesUnordered`/`FuturesOrdered` of `JoinHandle`s,
    /// quadratic under tokio's budget: capped (see [`Settings::cap`]).
    pub capped: bool,
}

pub const fn peer(name: &'static str, run: Run) -> Peer {
    Peer {
        name,
        run,
        capped: false,
    }
}

pub const fn capped_peer(name: &'static str, run: Run) -> Peer {
    Peer {
        name,
        run,
        capped: true,
    }
}

/// A timed scenario: ours against each peer, interleaved.
pub struct Scenario {
    pub id: &'static str,
    pub sizes: Sizes,
    pub runtimes: &'static [Flavor],
    pub ours: Run,
    pub peers: Vec<Peer>,
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// Measures `scenario` on each of its runtimes and sizes: every round runs each mechanism
/// once (the order rotated every round), after warm-up rounds; one row per peer with the
/// medians over the rounds of the ns per child (or per call).
pub fn compare(scenario: &Scenario, settings: &Settings, runtimes: &Runtimes) -> Vec<Row> {
    let mut rows = Vec::new();
    for &flavor in scenario.runtimes {
        let rt = runtimes.get(flavor);
        for n in settings.sizes(scenario.sizes) {
            let mechanisms: Vec<(&str, Run)> = std::iter::once(("ours", scenario.ours))
                .chain(
                    scenario
                        .peers
                        .iter()
                        .filter(|peer| n <= settings.cap(peer.capped))
                        .map(|peer| (peer.name, peer.run)),
                )
                .collect();
            let rounds = settings.rounds(scenario.sizes, n);
            let warm_up = settings.warm_up(n);
            let mut samples = vec![Vec::with_capacity(rounds); mechanisms.len()];
            for round in 0..warm_up + rounds {
                for i in 0..mechanisms.len() {
                    let index = (round + i) % mechanisms.len();
                    let elapsed = mechanisms[index].1.time(rt, n);
                    if round >= warm_up {
                        samples[index].push(elapsed.as_nanos() as f64 / n as f64);
                    }
                }
            }
            let medians: Vec<f64> = samples.into_iter().map(median).collect();
            let summary: Vec<String> = mechanisms
                .iter()
                .zip(&medians)
                .map(|((name, _), ns)| format!("{name} {ns:.1}"))
                .collect();
            eprintln!(
                "  {} {} n={n}: {} ns ({rounds} rounds)",
                scenario.id,
                flavor.name(),
                summary.join(", ")
            );
            for ((peer, _), &peer_ns) in mechanisms.iter().zip(&medians).skip(1) {
                rows.push(Row::new(
                    scenario.id,
                    flavor.name(),
                    n,
                    medians[0],
                    peer,
                    peer_ns,
                ));
            }
        }
    }
    rows
}
