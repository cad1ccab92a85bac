#![cfg(all(unix, feature = "signal"))]
//! End to end across processes (SPEC N13, C1): `examples/graceful_shutdown.rs` runs as a child
//! process; the test starts jobs on its loopback server, sends it SIGTERM, and checks that
//! every child cleaned up, that the root reported every child finished inside the grace
//! period (none aborted), that the process exited 0, and that the lines came in the right
//! order. Two more runs: a child stuck past the grace period is aborted and reported (exit
//! status 1), and without a signal the example ends by itself.
//!
//! The example's binary: cargo builds examples into `<target>/<profile>/examples/`, next to
//! this test's `<target>/<profile>/deps/`. A plain `cargo test` builds the examples, but
//! `cargo test --test e2e_shutdown` does not, and a binary left from an earlier build may be
//! stale; so the test runs `cargo build --example graceful_shutdown` once, with this test's
//! profile, features and target directory (a no-op when the binary is fresh). Set
//! `GRACEFUL_SHUTDOWN_BIN` to a built binary to skip that (e.g. with `--target`).
//!
//! Real time: sockets and signals cannot run on tokio's paused clock. The assertions are on
//! outcomes and order; time only bounds a hang (30 s per process, after which it is killed).

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bounds each run of the example, from its start to its exit.
const HANG_BOUND: Duration = Duration::from_secs(30);

/// The line the root prints (with the `tracing` feature) when the signal arrives, before it
/// cancels anything.
#[cfg(feature = "tracing")]
const SIGNAL_RECEIVED: &str = "[tokio-nursery] INFO shutdown signal: cancelling everything";

#[test]
fn n13_sigterm_stops_the_server_gracefully_and_the_process_exits_0() {
    // No leak check (SPEC R3): the example runs in a child process, with no runtime here.
    let journal = TempFile::new("journal");
    let mut example = Example::start(&["--until-signal", "--journal", journal.path_str()]);
    let addr = example.wait_for("listening on", |line| line.starts_with("listening on "));
    let addr: SocketAddr = addr["listening on ".len()..].parse().expect("an address");
    example.wait_for("ready", |line| line == "ready");

    // Two jobs in flight: the server answered `started` for each.
    let jobs = ["job-a", "job-b"].map(|name| Job::start(addr, name, example.deadline));
    example.sigterm();

    // Each client hears the server's goodbye, then the connection closes.
    for job in jobs {
        let name = job.name;
        assert_eq!(
            job.rest(),
            [format!("cancelled {name}: shutting down")],
            "what the client of {name} received after SIGTERM"
        );
    }

    let run = example.finish();
    let lines = &run.stdout;
    assert_eq!(run.status.code(), Some(0), "exit status\n{run}");
    assert!(!run.stderr.contains("panicked"), "a panic\n{run}");

    let listening = run.position("listening on", |l| l.starts_with("listening on "));
    let ready = run.position("ready", |l| l == "ready");
    assert!(listening < ready, "listening before ready\n{run}");

    // Every child cleaned up, once.
    let mut cleanups = Vec::new();
    for name in ["job-a", "job-b"] {
        let started = run.position(&format!("job {name} started"), |l| {
            l.starts_with(&format!("job {name}: started for 127.0.0.1:"))
        });
        let cleaned = run.only(&format!("job {name} cleaned up"), |l| {
            l.starts_with(&format!("job {name}: cancelled (shutting down) after "))
                && l.ends_with("; rolled back; cleanup done")
        });
        assert!(
            ready < started && started < cleaned,
            "{name}'s order\n{run}"
        );
        cleanups.push(cleaned);
    }
    for name in ["acceptor", "worker-1", "worker-2", "worker-3"] {
        let cleaned = run.only(&format!("{name} cleaned up"), |l| {
            l.starts_with(&format!("{name}: cancelled (shutting down)"))
                && l.ends_with("cleanup done")
        });
        assert!(ready < cleaned, "{name} cleaned up after ready\n{run}");
        cleanups.push(cleaned);
    }

    // The root's own line: the signal arrived after the jobs started, before any cleanup.
    #[cfg(feature = "tracing")]
    {
        let signal = run.only("the root's signal event", |l| l == SIGNAL_RECEIVED);
        let last_started = run.position("job job-b started", |l| l.starts_with("job job-b: "));
        assert!(
            last_started < signal,
            "jobs started before the signal\n{run}"
        );
        assert!(
            cleanups.iter().all(|&cleaned| signal < cleaned),
            "the signal came before every cleanup\n{run}"
        );
        assert!(
            !lines.iter().any(|l| l.contains("grace period expired")),
            "the root aborted nothing\n{run}"
        );
    }

    // main saw the shutdown; the protected checkpoint ran after every other child stopped;
    // then the root returned and reported.
    let main = run.only("main stopping", |l| {
        l.starts_with("main: stopping (shutting down); the root cancels everything")
    });
    let checkpoint = run.only("the checkpoint", |l| {
        l.starts_with("checkpoint: ")
            && l.ends_with("flushed and synced (protected work); cleanup done")
    });
    assert!(
        cleanups.iter().all(|&cleaned| cleaned < checkpoint),
        "the checkpoint came after every other cleanup\n{run}"
    );
    let returned = run.only("the root returned", |l| {
        l == "root: run returned Ok(Some(()))"
    });
    let report = run.only("the root's report", |l| {
        l == "root: all 8 children finished inside the 5000 ms grace period; none aborted"
    });
    assert!(
        ready < main && main < returned,
        "main stopped, then the root returned\n{run}"
    );
    assert!(
        checkpoint < returned && returned < report,
        "checkpoint, return, report\n{run}"
    );
    assert_eq!(lines.last().map(String::as_str), Some("exit 0"), "\n{run}");
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("aborted") && !l.ends_with("none aborted")),
        "nothing was aborted\n{run}"
    );

    // The journal on disk: the jobs' rollbacks, the workers' counts, the clean-shutdown mark.
    let journal = journal.read();
    let entries: Vec<&str> = journal.lines().collect();
    for name in ["job-a", "job-b"] {
        let started = entries
            .iter()
            .position(|e| *e == format!("{name}: started"));
        let rolled_back = entries
            .iter()
            .position(|e| e.starts_with(&format!("{name}: rolled back after ")));
        assert!(
            started.is_some() && started < rolled_back,
            "{name} started, then rolled back, in the journal:\n{journal}"
        );
    }
    for name in ["worker-1", "worker-2", "worker-3"] {
        assert!(
            entries
                .iter()
                .any(|e| e.starts_with(&format!("{name}: stopped after "))),
            "{name}'s final count in the journal:\n{journal}"
        );
    }
    assert_eq!(
        entries.last(),
        Some(&"checkpoint: clean shutdown"),
        "the journal ends with the checkpoint:\n{journal}"
    );
}

/// A usability review (session 21): one client sending a line that is not text failed its
/// connection, and the fail-fast `server` nursery cancelled every other connection and worker
/// for it; the run ended `Err(Failed(.. invalid utf-8 ..))`, exit 1. A connection's failure
/// now ends that connection only.
#[test]
fn n13_a_bad_client_closes_its_own_connection_only() {
    // No leak check (SPEC R3): the example runs in a child process, with no runtime here.
    let journal = TempFile::new("journal");
    let mut example = Example::start(&["--until-signal", "--journal", journal.path_str()]);
    let addr = example.wait_for("listening on", |line| line.starts_with("listening on "));
    let addr: SocketAddr = addr["listening on ".len()..].parse().expect("an address");
    example.wait_for("ready", |line| line == "ready");

    let mut bad = TcpStream::connect(addr).expect("connect to the example");
    bad.write_all(b"\xff\xfe\n").expect("send the bad request");
    example.wait_for("the bad connection's failure", |line| {
        line.starts_with("connection 127.0.0.1:") && line.ends_with("; closed")
    });
    // The server is still up: a job after the bad client is served, then cancelled by the
    // SIGTERM like any other.
    let job = Job::start(addr, "job-after", example.deadline);
    example.sigterm();
    assert_eq!(job.rest(), ["cancelled job-after: shutting down"]);

    let run = example.finish();
    assert_eq!(run.status.code(), Some(0), "exit status\n{run}");
    run.only("the bad connection's failure", |l| {
        l.starts_with("connection 127.0.0.1:") && l.contains(": failed: ")
    });
    run.only("the root returned", |l| {
        l == "root: run returned Ok(Some(()))"
    });
}

#[test]
fn n13_a_child_stuck_past_the_grace_period_is_aborted_and_reported() {
    // No leak check (SPEC R3): the example runs in a child process, with no runtime here.
    let journal = TempFile::new("journal");
    let mut example = Example::start(&[
        "--until-signal",
        "--stubborn",
        "--grace-ms",
        "1000",
        "--journal",
        journal.path_str(),
    ]);
    example.wait_for("ready", |line| line == "ready");
    example.sigterm();
    let run = example.finish();

    assert_eq!(run.status.code(), Some(1), "exit status\n{run}");
    let report = run.only("the root's report", |l| {
        l.starts_with("root: ")
            && l.contains(
                "children did not finish inside the 1000 ms grace period and were aborted: ",
            )
    });
    let aborted = run.stdout[report].rsplit(": ").next().unwrap();
    assert!(
        aborted.split(", ").any(|name| name == "stubborn"),
        "the stubborn worker was aborted\n{run}"
    );
    assert!(
        !run.stdout
            .iter()
            .any(|l| l.ends_with("none aborted") || l.starts_with("stubborn:")),
        "the stubborn worker never finished\n{run}"
    );
    assert_eq!(
        run.stdout.last().map(String::as_str),
        Some("exit 1"),
        "\n{run}"
    );
    #[cfg(feature = "tracing")]
    {
        let signal = run.only("the root's signal event", |l| l == SIGNAL_RECEIVED);
        const EXPIRED: &str = "[tokio-nursery] WARN grace period expired: children aborted";
        let expired: Vec<usize> = (0..run.stdout.len())
            .filter(|&i| run.stdout[i].starts_with(EXPIRED))
            .collect();
        assert!(!expired.is_empty(), "a grace-expired event\n{run}");
        assert!(
            expired.iter().all(|&e| signal < e && e < report),
            "the grace expired after the signal, before the report\n{run}"
        );
        // The root's event names its child (the server); the server nursery, aborted with
        // that child past the root's grace, names the stubborn worker in its own (since
        // session 21: it was aborted unnamed).
        run.only("the event naming the stubborn worker", |l| {
            l.starts_with(EXPIRED) && l.contains("\"stubborn\"")
        });
    }
}

#[test]
fn n13_without_a_signal_the_example_ends_by_itself() {
    // No leak check (SPEC R3): the example runs in a child process, with no runtime here.
    let journal = TempFile::new("journal");
    let example = Example::start(&["--serve-for", "0.3", "--journal", journal.path_str()]);
    let run = example.finish();

    assert_eq!(run.status.code(), Some(0), "exit status\n{run}");
    let main = run.only("main stopping", |l| {
        l.starts_with("main: stopping (served for 0.3 s)")
    });
    for name in ["job-1", "job-2"] {
        let goodbye = run.only(&format!("{name}'s goodbye"), |l| {
            l == format!("client {name}: received \"cancelled {name}: shutting down\"")
        });
        assert!(
            main < goodbye,
            "{name}: the goodbye came after main stopped\n{run}"
        );
    }
    run.only("the root's report", |l| {
        l == "root: all 10 children finished inside the 5000 ms grace period; none aborted"
    });
    assert_eq!(
        run.stdout.last().map(String::as_str),
        Some("exit 0"),
        "\n{run}"
    );
}

/// The default journal (in the temp dir, named for the process) is removed at the end; one
/// named with `--journal` is kept (the other tests read it). It was left behind.
#[test]
fn n13_the_default_journal_is_removed_at_the_end() {
    // No leak check (SPEC R3): the example runs in a child process, with no runtime here.
    let run = Example::start(&["--serve-for", "0.1"]).finish();
    assert_eq!(run.status.code(), Some(0), "exit status\n{run}");
    let first = &run.stdout[0];
    let path = first
        .split_once(", journal ")
        .map(|(_, path)| PathBuf::from(path))
        .unwrap_or_else(|| panic!("the journal's path\n{run}"));
    assert!(
        path.starts_with(std::env::temp_dir()),
        "the default journal is in the temp dir\n{run}"
    );
    run.only("the journal's removal", |l| {
        l == "journal removed (--journal PATH keeps it)"
    });
    assert!(!path.exists(), "{} was left behind\n{run}", path.display());
}

/// The example running as a child process, its stdout read line by line.
struct Example {
    child: Child,
    stdout: Receiver<String>,
    /// The stdout lines read so far.
    seen: Vec<String>,
    stderr: Option<JoinHandle<String>>,
    /// When the run counts as hung.
    deadline: Instant,
}

impl Example {
    fn start(args: &[&str]) -> Example {
        let mut child = Command::new(example_binary())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the example");
        let deadline = Instant::now() + HANG_BOUND;
        let (lines, stdout) = channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut text);
            text
        });
        Example {
            child,
            stdout,
            seen: Vec::new(),
            stderr: Some(stderr),
            deadline,
        }
    }

    /// The next stdout line that satisfies `wanted` (the lines before it are kept).
    fn wait_for(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.fail(&format!("hang: no line \"{what}\" within {HANG_BOUND:?}"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.fail(&format!("stdout closed before a line \"{what}\""))
                }
            }
        }
    }

    /// Sends SIGTERM, with the `kill` command (std has no signals).
    fn sigterm(&mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        if !sent.as_ref().is_ok_and(|status| status.success()) {
            self.fail(&format!("kill -TERM {pid} failed: {sent:?}"));
        }
    }

    /// Reads stdout to its end and waits for the exit, within the hang bound.
    fn finish(mut self) -> Finished {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => self.fail(&format!(
                    "hang: the example still runs after {HANG_BOUND:?}"
                )),
            }
        }
        let status = loop {
            match self.child.try_wait().expect("wait for the example") {
                Some(status) => break status,
                None if Instant::now() >= self.deadline => {
                    self.fail("hang: stdout closed but the example did not exit")
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let stderr = self.stderr.take().unwrap().join().unwrap_or_default();
        Finished {
            stdout: std::mem::take(&mut self.seen),
            stderr,
            status,
        }
    }

    /// Kills the example and fails the test with what it printed.
    fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stderr = self.stderr.take().map(|t| t.join().unwrap_or_default());
        panic!(
            "{why}\n--- stdout so far:\n{}\n--- stderr:\n{}",
            self.seen.join("\n"),
            stderr.unwrap_or_default()
        );
    }
}

impl Drop for Example {
    /// A failing test leaves no process behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A finished run of the example.
struct Finished {
    stdout: Vec<String>,
    stderr: String,
    status: ExitStatus,
}

impl Finished {
    /// The index of the first stdout line that satisfies `wanted`; fails if there is none.
    fn position(&self, what: &str, wanted: impl Fn(&str) -> bool) -> usize {
        let found = self.stdout.iter().position(|line| wanted(line));
        found.unwrap_or_else(|| panic!("no line \"{what}\"\n{self}"))
    }

    /// The index of the one stdout line that satisfies `wanted`; fails if there are none or
    /// several.
    fn only(&self, what: &str, wanted: impl Fn(&str) -> bool) -> usize {
        let found: Vec<usize> = (0..self.stdout.len())
            .filter(|&i| wanted(&self.stdout[i]))
            .collect();
        match found[..] {
            [i] => i,
            [] => panic!("no line \"{what}\"\n{self}"),
            _ => panic!("several lines \"{what}\"\n{self}"),
        }
    }
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "--- exit: {}", self.status)?;
        writeln!(f, "--- stdout:")?;
        for (i, line) in self.stdout.iter().enumerate() {
            writeln!(f, "{i:3} {line}")?;
        }
        write!(f, "--- stderr:\n{}", self.stderr)
    }
}

/// A job on the example's server, started and in flight.
struct Job {
    name: &'static str,
    reader: BufReader<TcpStream>,
}

impl Job {
    /// Connects, asks for the job and waits for the server's `started`.
    fn start(addr: SocketAddr, name: &'static str, deadline: Instant) -> Job {
        let mut stream = TcpStream::connect(addr).expect("connect to the example");
        let left = deadline.saturating_duration_since(Instant::now());
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        writeln!(stream, "job {name}").expect("send the request");
        let mut job = Job {
            name,
            reader: BufReader::new(stream),
        };
        let started = job.next_line().expect("the server's answer");
        assert_eq!(started, format!("started {name}"));
        job
    }

    fn next_line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(line.trim_end().to_owned()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("hang: {} got no answer within {HANG_BOUND:?}", self.name)
            }
            Err(e) => panic!("reading {}'s answer: {e}", self.name),
        }
    }

    /// Every line until the server closes the connection.
    fn rest(mut self) -> Vec<String> {
        std::iter::from_fn(|| self.next_line()).collect()
    }
}

/// A file path in the temp dir, removed at the end.
struct TempFile(PathBuf);

impl TempFile {
    fn new(what: &str) -> TempFile {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("e2e_shutdown-{}-{nanos}.{what}", std::process::id());
        TempFile(std::env::temp_dir().join(name))
    }

    fn path_str(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp dir")
    }

    fn read(&self) -> String {
        std::fs::read_to_string(&self.0).expect("read the journal")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The example's binary, built once per test process (see the module docs).
fn example_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(binary) = std::env::var_os("GRACEFUL_SHUTDOWN_BIN") {
            return binary.into();
        }
        // <target>/<profile>/deps/e2e_shutdown-HASH
        let exe = std::env::current_exe().expect("the test's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("<target>/<profile>");
        let target_dir = profile_dir.parent().expect("<target>");
        let profile = profile_dir.file_name().unwrap().to_str().unwrap();
        let profile_args: &[&str] = match profile {
            "debug" => &[],
            "release" => &["--release"],
            other => &["--profile", other],
        };
        // This test's features (cfg! sees the package's features, `default` included), so
        // cargo reuses the library already built for this test. Keep in sync with
        // Cargo.toml's [features].
        let features: Vec<&str> = [
            ("tracing", cfg!(feature = "tracing")),
            ("anyhow", cfg!(feature = "anyhow")),
            ("signal", cfg!(feature = "signal")),
            ("rt-multi-thread", cfg!(feature = "rt-multi-thread")),
            ("http", cfg!(feature = "http")),
            ("tower", cfg!(feature = "tower")),
            ("hyper", cfg!(feature = "hyper")),
            ("tokio-util", cfg!(feature = "tokio-util")),
        ]
        .into_iter()
        .filter_map(|(feature, on)| on.then_some(feature))
        .collect();
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--example", "graceful_shutdown", "--manifest-path"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir)
            .args(["--features", &features.join(",")])
            .args(profile_args);
        if !cfg!(feature = "default") {
            build.arg("--no-default-features");
        }
        let build = build
            .output()
            .expect("run cargo build --example graceful_shutdown");
        assert!(
            build.status.success(),
            "cargo build --example graceful_shutdown failed:\n{}",
            String::from_utf8_lossy(&build.stderr)
        );
        let binary = profile_dir
            .join("examples")
            .join(format!("graceful_shutdown{}", std::env::consts::EXE_SUFFIX));
        assert!(binary.exists(), "no {}", binary.display());
        binary
    })
}
