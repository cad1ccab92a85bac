//! Graceful shutdown with the root (SPEC N13, C1): a small TCP job server on loopback that
//! stops cleanly on Ctrl-C or SIGTERM.
//!
//! ```text
//! cargo run --example graceful_shutdown                    # two demo jobs, stops after 2 s
//! cargo run --example graceful_shutdown -- --until-signal  # until Ctrl-C or SIGTERM
//! ```
//!
//! The task tree, all of it owned by the [`Root`], which owns the runtime too (every name
//! but `root` and `main` is a child task):
//!
//! ```text
//! root                      Root: Ctrl-C / SIGTERM handling, a grace period
//! ├── main                  the root's body: starts the server, waits, returns
//! ├── server                binds 127.0.0.1:0, signals readiness, runs the `server` nursery:
//! │   ├── acceptor          accepts connections, each one a child of `server`
//! │   ├── connection ...    one job per connection: `job NAME`, 600 steps of 100 ms
//! │   ├── worker-1..3       background loops
//! │   ├── stubborn          (--stubborn) never reaches a cancellation point
//! │   └── then, once all of them stopped: the journal's checkpoint, protected work (C1)
//! └── client job-1, job-2   (without --until-signal) demo clients
//! ```
//!
//! The protocol is one line per connection: `job NAME`. The server answers `started NAME`,
//! then `done NAME`, or, when it shuts down first, `cancelled NAME: REASON`, and closes.
//! A connection that fails (a request that is not text, a client gone mid-answer) is closed
//! and printed; it is not the server's failure, so the others go on (`one_client`).
//!
//! On Ctrl-C or SIGTERM (or when `--serve-for` is over, which makes main return), the root
//! cancels everything with the reason "shutting down". Each child sees it at its next
//! cancellation point and cleans up: the acceptor closes the listener, each job rolls back
//! its partial work and tells its client, each worker journals its final count. When the
//! `server` nursery has finished, which is when every one of them has, the journal's
//! checkpoint flushes the buffered entries and syncs the file. It is protected work
//! ([`protect`]): no abort cuts it short and the root waits for it, even past the grace period.
//!
//! After [`Root::run`] returns, main prints how every child ended. The root's outcome does
//! not say whether children were aborted when the grace period ran out, so a small ledger
//! does: each child runs inside `Ledger::track`, which tells a child that ran to its end
//! from one that was dropped before it (aborted). Exit status 0 when every child finished
//! inside the grace period and the root's outcome is `Ok`, 1 otherwise, 2 for bad arguments.
//!
//! Options:
//!
//! ```text
//! --until-signal     serve until Ctrl-C or SIGTERM, without demo clients
//! --serve-for SECS   start two demo clients' jobs, serve SECS more seconds (default 2), stop
//! --grace-ms MS      the root's grace period (default 5000)
//! --journal PATH     the journal file, kept (default: graceful_shutdown-PID.journal in the
//!                    temp dir, removed at the end)
//! --stubborn         add a worker that never reaches a cancellation point: the root aborts
//!                    it when the grace period runs out, and the exit status is 1
//! ```
//!
//! With the `tracing` feature, the root's own events (tokio-nursery's, INFO and above) are
//! printed among the other lines as `[tokio-nursery] LEVEL message`, e.g. when the signal
//! arrives or the grace period runs out.
//!
//! This runs on real time (sockets, signals). `tests/e2e_shutdown.rs` runs it as a child
//! process, starts jobs, sends SIGTERM and checks the lines below, in this order (numbers and
//! ports vary):
//!
//! ```text
//! graceful_shutdown: grace period 5000 ms, journal /tmp/.../journal
//! listening on 127.0.0.1:40123
//! ready
//! job job-a: started for 127.0.0.1:51234
//! job job-b: started for 127.0.0.1:51236
//! [tokio-nursery] INFO shutdown signal: cancelling everything
//! main: stopping (shutting down); the root cancels everything and waits up to 5000 ms
//! worker-2: cancelled (shutting down) after 31 ticks; final count journalled; cleanup done
//! acceptor: cancelled (shutting down); listener closed; cleanup done
//! job job-a: cancelled (shutting down) after 9 of 600 steps; rolled back; cleanup done
//! ...
//! checkpoint: 8 journal entries flushed and synced (protected work); cleanup done
//! root: run returned Ok(Some(()))
//! root: the last child to finish did so 203 ms after the shutdown began
//! root: all 8 children finished inside the 5000 ms grace period; none aborted
//! exit 0
//! ```

use std::fs::File;
use std::future::Future;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_nursery::{
    CancelError, CancellableExt, Nursery, NurseryError, NurseryHandle, Ready, Root, cancelled,
    protect, sleep,
};

/// One step of a job; a job has `JOB_STEPS` of them (a minute), so it is in flight when the
/// shutdown comes.
const STEP: Duration = Duration::from_millis(100);
const JOB_STEPS: u32 = 600;
/// A background worker's tick.
const TICK: Duration = Duration::from_millis(50);
const WORKERS: usize = 3;
/// How long the checkpoint's slow disk takes.
const CHECKPOINT_TIME: Duration = Duration::from_millis(200);

const USAGE: &str = "usage: graceful_shutdown [--until-signal | --serve-for SECS] \
                     [--grace-ms MS] [--journal PATH] [--stubborn]";

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("graceful_shutdown: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if options.serve_for.is_none() && !cfg!(feature = "signal") {
        eprintln!("graceful_shutdown: --until-signal needs the `signal` feature (on by default)");
        return ExitCode::from(2);
    }
    #[cfg(feature = "tracing")]
    root_events::print();
    let journal = match Journal::create(options.journal.clone()) {
        Ok(journal) => journal,
        Err(error) => {
            eprintln!(
                "graceful_shutdown: cannot create {}: {error}",
                options.journal.display()
            );
            return ExitCode::from(2);
        }
    };
    println!(
        "graceful_shutdown: grace period {} ms, journal {}",
        options.grace.as_millis(),
        options.journal.display()
    );

    let ledger = Ledger::default();
    let outcome = Root::new().grace(options.grace).run({
        let ledger = ledger.clone();
        |root| run_main(root, options.clone(), ledger, journal)
    });

    // The runtime is shut down: every child has finished or been dropped.
    println!("root: run returned {outcome:?}");
    let clean = ledger.report(options.grace) && outcome.is_ok();
    if options.temporary_journal {
        // Only the default journal: one named with --journal is the caller's to keep.
        let _ = std::fs::remove_file(&options.journal);
        println!("journal removed (--journal PATH keeps it)");
    }
    let code = u8::from(!clean);
    println!("exit {code}");
    ExitCode::from(code)
}

/// The root's body: start the server, wait for the shutdown (or the end of `--serve-for`),
/// return. Returning is enough: the root then cancels everything and waits for it.
async fn run_main(
    root: NurseryHandle<io::Error>,
    options: Options,
    ledger: Ledger,
    journal: Journal,
) -> io::Result<()> {
    // `start` returns once the server is listening (Trio's `nursery.start`).
    let addr = root
        .start({
            let (ledger, options) = (ledger.clone(), options.clone());
            move |ready| {
                let work = server(ready, options, ledger.clone(), journal);
                ledger.track("server", work)
            }
        })
        .await
        .map_err(io::Error::other)?;
    println!("listening on {addr}");
    println!("ready");

    let why = match options.serve_for {
        None => cancelled().await.reason().to_string(), // until Ctrl-C or SIGTERM
        Some(time) => {
            // Two demo clients; each `start` returns once its job is in flight.
            for name in ["job-1", "job-2"] {
                let label = format!("client {name}");
                root.start(|ready| ledger.track(&label, demo_client(addr, name, ready)))
                    .await
                    .map_err(io::Error::other)?;
            }
            match sleep(time).await {
                Ok(()) => format!("served for {} s", time.as_secs_f64()),
                Err(cancelled) => cancelled.reason().to_string(), // Ctrl-C or SIGTERM first
            }
        }
    };
    ledger.shutdown_began();
    println!(
        "main: stopping ({why}); the root cancels everything and waits up to {} ms",
        options.grace.as_millis()
    );
    Ok(())
}

/// The server child: binds, runs the `server` nursery (acceptor, connections, workers), and
/// once that nursery has finished, checkpoints the journal as protected work.
async fn server(
    ready: Ready<SocketAddr>,
    options: Options,
    ledger: Ledger,
    journal: Journal,
) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let served = Nursery::new()
        .name("server")
        .run(|server| {
            let (ledger, journal) = (ledger.clone(), journal.clone());
            async move {
                let acceptor = acceptor(listener, server.clone(), ledger.clone(), journal.clone());
                server.spawn_named("acceptor", ledger.track("acceptor", acceptor));
                for i in 1..=WORKERS {
                    let name = format!("worker-{i}");
                    let work = worker(name.clone(), journal.clone());
                    server.spawn_named(&name, ledger.track(&name, work));
                }
                if options.stubborn {
                    server.spawn_named("stubborn", ledger.track("stubborn", stubborn()));
                }
                ready.signal(addr);
                Ok::<_, io::Error>(())
            }
        })
        .await;

    // The nursery has finished: every connection and worker has stopped and journalled.
    // The checkpoint must not be cut short, so it is protected (C1).
    protect(ledger.track("checkpoint", checkpoint(journal))).await?;
    match served {
        Ok(_) | Err(NurseryError::Cancelled(_)) => Ok(()),
        Err(error) => Err(io::Error::other(error.to_string())),
    }
}

/// Accepts connections until cancelled; each one is a child of the `server` nursery.
async fn acceptor(
    listener: TcpListener,
    server: NurseryHandle<io::Error>,
    ledger: Ledger,
    journal: Journal,
) -> io::Result<()> {
    loop {
        // `accept` is cancel-safe; `.cancellable()` makes it a cancellation point.
        match listener.accept().cancellable().await {
            Ok(accepted) => {
                let (stream, peer) = accepted?;
                let label = format!("connection {peer}");
                let work = one_client(connection(stream, peer, journal.clone()), peer);
                server.spawn_named(&label, ledger.track(&label, work));
            }
            Err(cancelled) => {
                drop(listener);
                println!(
                    "acceptor: cancelled ({}); listener closed; cleanup done",
                    cancelled.reason()
                );
                return Err(cancelled.into()); // an echo of the cancellation, not a failure
            }
        }
    }
}

/// A connection's own error (a client that sent garbage, or left mid-answer) ends that
/// connection only: it is printed here, not passed to the `server` nursery, which is
/// fail-fast and would cancel every other connection and worker for it. A cancellation is
/// passed on as it is (an echo, not a failure).
async fn one_client(
    work: impl Future<Output = io::Result<()>>,
    peer: SocketAddr,
) -> io::Result<()> {
    match work.await {
        Err(error) if error.as_cancelled().is_none() => {
            println!("connection {peer}: failed: {error}; closed");
            Ok(())
        }
        done => done,
    }
}

/// One connection, one job: `JOB_STEPS` steps, each a cancellation point. Cancelled, it
/// rolls back and tells the client.
async fn connection(stream: TcpStream, peer: SocketAddr, journal: Journal) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let request = match BufReader::new(read).lines().next_line().cancellable().await {
        Ok(line) => line?,
        Err(cancelled) => {
            println!("connection {peer}: idle at the shutdown; closed; cleanup done");
            return Err(cancelled.into());
        }
    };
    let Some(name) = request
        .as_deref()
        .and_then(|line| line.strip_prefix("job "))
    else {
        write.write_all(b"error: expected `job NAME`\n").await?;
        return Ok(());
    };
    let name = name.trim().to_owned();
    journal.append(&format!("{name}: started"));
    println!("job {name}: started for {peer}");
    write
        .write_all(format!("started {name}\n").as_bytes())
        .await?;

    for step in 0..JOB_STEPS {
        if let Err(cancelled) = sleep(STEP).await {
            // Cleanup: undo the partial work and tell the client (who may have left).
            let reason = cancelled.reason();
            journal.append(&format!(
                "{name}: rolled back after {step} of {JOB_STEPS} steps ({reason})"
            ));
            let goodbye = format!("cancelled {name}: {reason}\n");
            let _ = write.write_all(goodbye.as_bytes()).await;
            println!(
                "job {name}: cancelled ({reason}) after {step} of {JOB_STEPS} steps; \
                 rolled back; cleanup done"
            );
            return Err(cancelled.into());
        }
    }
    journal.append(&format!("{name}: done"));
    write.write_all(format!("done {name}\n").as_bytes()).await?;
    println!("job {name}: done");
    Ok(())
}

/// A background worker: ticks until cancelled, then journals its final count.
async fn worker(name: String, journal: Journal) -> io::Result<()> {
    let mut ticks = 0_u64;
    loop {
        if let Err(cancelled) = sleep(TICK).await {
            journal.append(&format!("{name}: stopped after {ticks} ticks"));
            println!(
                "{name}: cancelled ({}) after {ticks} ticks; final count journalled; \
                 cleanup done",
                cancelled.reason()
            );
            return Err(cancelled.into());
        }
        ticks += 1;
    }
}

/// A worker that never reaches a cancellation point (a plain tokio sleep is not one): only
/// the root's abort after the grace period stops it.
async fn stubborn() -> io::Result<()> {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    println!("stubborn: woke up after an hour");
    Ok(())
}

/// The journal's checkpoint: flushes the buffered entries and syncs the file, on a slow
/// disk. Run as protected work, so nothing cuts it short.
async fn checkpoint(journal: Journal) -> io::Result<()> {
    tokio::time::sleep(CHECKPOINT_TIME).await;
    let entries = journal.checkpoint()?;
    println!(
        "checkpoint: {entries} journal entries flushed and synced (protected work); cleanup done"
    );
    Ok(())
}

/// A demo client (without `--until-signal`): starts a job, signals readiness once the
/// server says it started, then prints what the server says until it closes the connection.
/// Plain tokio reads are not cancellation points, so it keeps listening through the shutdown
/// and hears the server's goodbye.
async fn demo_client(addr: SocketAddr, name: &'static str, ready: Ready<()>) -> io::Result<()> {
    let stream = TcpStream::connect(addr).await?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("job {name}\n").as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    let mut ready = Some(ready);
    while let Some(line) = lines.next_line().await? {
        println!("client {name}: received {line:?}");
        if let Some(ready) = ready.take() {
            ready.signal(()); // the job is in flight
        }
    }
    println!("client {name}: the server closed the connection; done");
    Ok(())
}

/// The server's journal: entries are buffered in memory and reach the disk at the
/// checkpoint (a small, blocking write: fine for an example, `spawn_blocking` otherwise).
#[derive(Clone)]
struct Journal {
    file: Arc<Mutex<(BufWriter<File>, usize)>>,
}

impl Journal {
    fn create(path: PathBuf) -> io::Result<Journal> {
        let file = BufWriter::new(File::create(path)?);
        Ok(Journal {
            file: Arc::new(Mutex::new((file, 0))),
        })
    }

    /// Buffers one entry.
    fn append(&self, entry: &str) {
        let mut file = self.file.lock().unwrap();
        let (writer, entries) = &mut *file;
        // A failed write shows up at the checkpoint's flush.
        let _ = writeln!(writer, "{entry}");
        *entries += 1;
    }

    /// Writes the clean-shutdown mark, flushes and syncs; returns the number of entries.
    fn checkpoint(&self) -> io::Result<usize> {
        self.append("checkpoint: clean shutdown");
        let mut file = self.file.lock().unwrap();
        let (writer, entries) = &mut *file;
        writer.flush()?;
        writer.get_ref().sync_all()?;
        Ok(*entries)
    }
}

/// How every child ended: run to its end, or dropped before it (aborted when the grace
/// period ran out, or panicked). The root itself does not report that (see the module docs).
#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<Entries>>);

#[derive(Default)]
struct Entries {
    shutdown_began: Option<Instant>,
    finished: Vec<(String, Instant)>,
    unfinished: Vec<String>,
}

impl Ledger {
    /// Runs `work` as the child `name`, recording how it ended.
    fn track<F: Future>(&self, name: &str, work: F) -> impl Future<Output = F::Output> + use<F> {
        let running = Running {
            ledger: self.clone(),
            name: name.to_owned(),
            finished: false,
        };
        async move {
            let mut running = running;
            let output = work.await;
            running.finished = true;
            output
        }
    }

    /// Marks the start of the shutdown (once).
    fn shutdown_began(&self) {
        self.0
            .lock()
            .unwrap()
            .shutdown_began
            .get_or_insert_with(Instant::now);
    }

    /// Prints how the children ended; `true` when every one finished inside `grace`.
    fn report(&self, grace: Duration) -> bool {
        let entries = self.0.lock().unwrap();
        let began = entries.shutdown_began.unwrap_or_else(Instant::now);
        let last = entries
            .finished
            .iter()
            .map(|(_, at)| at.saturating_duration_since(began))
            .max()
            .unwrap_or_default();
        let total = entries.finished.len() + entries.unfinished.len();
        let grace_ms = grace.as_millis();
        println!(
            "root: the last child to finish did so {} ms after the shutdown began",
            last.as_millis()
        );
        if !entries.unfinished.is_empty() {
            println!(
                "root: {} of {total} children did not finish inside the {grace_ms} ms grace \
                 period and were aborted: {}",
                entries.unfinished.len(),
                entries.unfinished.join(", ")
            );
            false
        } else if last > grace {
            println!(
                "root: all {total} children finished, some past the {grace_ms} ms grace period \
                 (protected work); none aborted"
            );
            false
        } else {
            println!(
                "root: all {total} children finished inside the {grace_ms} ms grace period; \
                 none aborted"
            );
            true
        }
    }
}

/// Records a child's end when dropped: finished if its work completed, else unfinished.
struct Running {
    ledger: Ledger,
    name: String,
    finished: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut entries = self.ledger.0.lock().unwrap_or_else(|e| e.into_inner());
        let name = std::mem::take(&mut self.name);
        if self.finished {
            entries.finished.push((name, Instant::now()));
        } else {
            entries.unfinished.push(name);
        }
    }
}

/// The command line (see the module docs).
#[derive(Clone, Debug)]
struct Options {
    /// `None`: until Ctrl-C or SIGTERM.
    serve_for: Option<Duration>,
    grace: Duration,
    journal: PathBuf,
    /// The journal is the default one in the temp dir: removed at the end.
    temporary_journal: bool,
    stubborn: bool,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
        let mut options = Options {
            serve_for: Some(Duration::from_secs(2)),
            grace: Duration::from_secs(5),
            journal: std::env::temp_dir()
                .join(format!("graceful_shutdown-{}.journal", std::process::id())),
            temporary_journal: true,
            stubborn: false,
        };
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or(format!("{arg} needs a value"));
            match arg.as_str() {
                "--until-signal" => options.serve_for = None,
                "--serve-for" => {
                    let secs = value()?;
                    let secs = secs
                        .parse::<f64>()
                        .ok()
                        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
                        .ok_or(format!("--serve-for: not a number of seconds: {secs}"))?;
                    options.serve_for = Some(secs);
                }
                "--grace-ms" => {
                    let ms = value()?;
                    let ms = ms
                        .parse()
                        .map_err(|_| format!("--grace-ms: not a number of milliseconds: {ms}"))?;
                    options.grace = Duration::from_millis(ms);
                }
                "--journal" => {
                    options.journal = PathBuf::from(value()?);
                    options.temporary_journal = false;
                }
                "--stubborn" => options.stubborn = true,
                _ => return Err(format!("unknown argument {arg:?}")),
            }
        }
        Ok(options)
    }
}

/// Prints tokio-nursery's own events (INFO and above) among the other lines.
#[cfg(feature = "tracing")]
mod root_events {
    use std::fmt;

    use tracing::field::{Field, Visit};
    use tracing::{Event, Level, Metadata, Subscriber};
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

    struct Print;

    /// The message, then the other fields as ` name=value`.
    #[derive(Default)]
    struct Line {
        message: String,
        fields: String,
    }

    impl Visit for Line {
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            if field.name() == "message" {
                self.message = format!("{value:?}");
            } else {
                self.fields += &format!(" {}={value:?}", field.name());
            }
        }
    }

    impl<S: Subscriber> Layer<S> for Print {
        fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
            metadata.target().starts_with("tokio_nursery") && *metadata.level() <= Level::INFO
        }

        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            let mut line = Line::default();
            event.record(&mut line);
            let level = event.metadata().level();
            println!("[tokio-nursery] {level} {}{}", line.message, line.fields);
        }
    }

    /// Installs the printer as the global subscriber.
    pub fn print() {
        let subscriber = tracing_subscriber::registry().with(Print);
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other subscriber was installed");
    }
}
