//! The command line, and what it decides: sizes, rounds, caps, processes.

/// Internal flag: this process is one of the K measurement processes; it prints its rows
/// on stdout for the process that started it.
pub const MEASURE_FLAG: &str = "--peers-measure";
/// Internal flag, `--peers-memory=MECHANISM:N`: this process measures `6-bytes` and `6-rss`
/// for one mechanism and prints them on stdout.
pub const MEMORY_FLAG: &str = "--peers-memory";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Run without `--bench` (as `cargo test --benches` does): tiny sizes, one round, no CSV.
    Smoke,
    /// `--quick`: N = 1e3 and 1e4, memory at 1e5, one process.
    Quick,
    /// `cargo bench --bench peers`: N = 1e3 to 1e6, memory at 1e6, five processes.
    Full,
}

/// What this process is.
pub enum Role {
    /// Started by `cargo bench`: runs the measurement (itself or in K child processes),
    /// prints the table and writes the CSV.
    Main,
    /// One of the K measurement processes.
    Measure,
    /// A `6-` memory process for one mechanism and N.
    Memory { mechanism: String, n: usize },
}

/// The parsed command line.
pub struct Settings {
    pub role: Role,
    pub mode: Mode,
    /// `--processes K`.
    pub processes: usize,
    /// A positional argument: keep only the scenarios whose id contains it.
    pub filter: Option<String>,
}

/// Which batch sizes a scenario runs (see [`Settings::sizes`]).
#[derive(Clone, Copy)]
pub enum Sizes {
    /// N children: 1e3 to 1e6 (1e3 and 1e4 in quick runs).
    Children,
    /// 1e3 and 1e4 children (`5-timing-out`: each run waits for a deadline).
    TimingOut,
    /// A loop of 1e5 calls; `n` is the number of calls.
    Calls,
}

impl Settings {
    pub fn from_args() -> Self {
        let mut bench = false;
        let mut quick = false;
        let mut processes = None;
        let mut filter = None;
        let mut role = Role::Main;
        let count = |value: Option<String>| -> usize {
            value
                .and_then(|v| v.parse().ok())
                .filter(|&k| k > 0)
                .expect("--processes takes a positive number")
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.split_once('=') {
                _ if arg == "--bench" => bench = true,
                _ if arg == "--quick" => quick = true,
                _ if arg == "--processes" => processes = Some(count(args.next())),
                _ if arg == MEASURE_FLAG => role = Role::Measure,
                Some(("--processes", value)) => processes = Some(count(Some(value.into()))),
                Some((MEMORY_FLAG, value)) => {
                    let (mechanism, n) = value.split_once(':').expect("MECHANISM:N");
                    role = Role::Memory {
                        mechanism: mechanism.to_string(),
                        n: n.parse().expect("a number of children"),
                    };
                }
                _ if !arg.starts_with('-') => filter = Some(arg),
                _ => eprintln!("peers: ignoring the unknown argument {arg}"),
            }
        }
        let mode = match (bench, quick) {
            (false, _) => Mode::Smoke,
            (true, true) => Mode::Quick,
            (true, false) => Mode::Full,
        };
        let processes = processes.unwrap_or(if mode == Mode::Full { 5 } else { 1 });
        Settings {
            role,
            mode,
            processes,
            filter,
        }
    }

    /// The arguments that make a child measurement process measure what this one would.
    pub fn child_args(&self) -> Vec<String> {
        let mut args = vec![MEASURE_FLAG.to_string()];
        if self.mode != Mode::Smoke {
            args.push("--bench".into());
        }
        if self.mode == Mode::Quick {
            args.push("--quick".into());
        }
        args.extend(self.filter.clone());
        args
    }

    pub fn wants(&self, scenario: &str) -> bool {
        self.filter
            .as_deref()
            .is_none_or(|filter| scenario.contains(filter))
    }

    /// The batch sizes of a scenario.
    pub fn sizes(&self, sizes: Sizes) -> Vec<usize> {
        match (sizes, self.mode) {
            (Sizes::Calls, Mode::Smoke) => vec![1_000],
            (Sizes::Calls, _) => vec![100_000],
            (_, Mode::Smoke) => vec![100],
            (Sizes::Children, Mode::Full) => vec![1_000, 10_000, 100_000, 1_000_000],
            (Sizes::Children | Sizes::TimingOut, _) => vec![1_000, 10_000],
        }
    }

    /// Timed rounds (odd, so that the median is one of them): more for small batches.
    pub fn rounds(&self, sizes: Sizes, n: usize) -> usize {
        match (self.mode, sizes) {
            (Mode::Smoke, _) => 1,
            (Mode::Quick, Sizes::TimingOut) => 15,
            (Mode::Full, Sizes::TimingOut) => 21,
            (Mode::Quick, Sizes::Calls) => 51,
            (Mode::Full, Sizes::Calls) => 101,
            (_, Sizes::Children) if n <= 1_000 => 101,
            (_, Sizes::Children) if n <= 10_000 => 31,
            (_, Sizes::Children) if n <= 100_000 => 5,
            (_, Sizes::Children) => 3,
        }
    }

    /// Untimed rounds first (runtime, allocator and caches warm).
    pub fn warm_up(&self, n: usize) -> usize {
        match self.mode {
            Mode::Smoke => 0,
            _ if n <= 10_000 => 2,
            _ => 1,
        }
    }

    /// The largest N for a peer that joins through a `FuturesOrdered`/`FuturesUnordered` of
    /// `JoinHandle`s (quadratic under tokio's budget).
    pub fn cap(&self, capped: bool) -> usize {
        match self.mode {
            _ if !capped => usize::MAX,
            Mode::Smoke => usize::MAX,
            Mode::Quick => 10_000,
            Mode::Full => 100_000,
        }
    }

    /// N for the memory scenarios.
    pub fn memory_n(&self) -> usize {
        match self.mode {
            Mode::Smoke => 1_000,
            Mode::Quick => 100_000,
            Mode::Full => 1_000_000,
        }
    }
}
