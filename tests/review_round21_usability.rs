//! Round 21 usability review: a small "job runner" service built as a new user would, from
//! the public docs only.
//!
//! Protocol (one request per line, one reply line each):
//! - `JOB <n> <ms>`: fan out `n` sub-tasks, each sleeping `ms` (a cancellation point) and
//!   returning its index + 1; reply `OK <sum>`, or `TIMEOUT` past the request deadline.
//! - `JOB_FAIL <n> <ms>`: sub-task 0 fails half-way: `ERR <msg>`.
//! - `JOB_PANIC <n> <ms>`: sub-task 0 panics half-way: `ERR panic: <msg>`.
//! - `JOB_STUCK <n> <ms>`: the last sub-task waits an hour on a plain tokio sleep (not a
//!   cancellation point).
//!
//! On shutdown a connection replies `SHUTTING DOWN` before it closes.

use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_nursery::{
    CancelScope, CancellableExt, Cancelled, Incident, JoinError, Nursery, NurseryError,
    NurseryHandle, Report, TaskTree, fail_after, move_on_after, nursery, panic_message, sleep,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
struct Config {
    /// Per-request deadline.
    deadline: Duration,
    /// The server nursery's grace period.
    grace: Duration,
    /// The request nurseries' grace period (`None`: wait for ever).
    request_grace: Option<Duration>,
    /// Everything any report hook received, as text.
    reports: Arc<Mutex<Vec<String>>>,
    /// What the server's supervisor loop took from `next_incident`.
    incidents: Arc<Mutex<Vec<String>>>,
    /// Events in order (for asserting order, not timing).
    log: Arc<Mutex<Vec<String>>>,
}

impl Config {
    fn new(deadline: Duration) -> Self {
        Config {
            deadline,
            grace: Duration::from_secs(5),
            request_grace: None,
            reports: Arc::default(),
            incidents: Arc::default(),
            log: Arc::default(),
        }
    }

    fn log(&self, line: impl Into<String>) {
        self.log.lock().unwrap().push(line.into());
    }

    fn hook(&self) -> impl Fn(&Report<'_>) + Send + Sync + 'static {
        let reports = self.reports.clone();
        move |report: &Report<'_>| reports.lock().unwrap().push(report.to_string())
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Ok,
    Fail,
    Panic,
    Stuck,
    Both,
}

fn parse(line: &str) -> Result<(Kind, u64, u64), String> {
    let mut words = line.split_whitespace();
    let kind = match words.next() {
        Some("JOB") => Kind::Ok,
        Some("JOB_FAIL") => Kind::Fail,
        Some("JOB_PANIC") => Kind::Panic,
        Some("JOB_STUCK") => Kind::Stuck,
        Some("JOB_BOTH") => Kind::Both,
        other => return Err(format!("unknown request {other:?}")),
    };
    let mut number = |what| {
        words
            .next()
            .and_then(|w| w.parse::<u64>().ok())
            .ok_or(format!("missing or bad {what}"))
    };
    let n = number("n")?;
    let ms = number("ms")?;
    Ok((kind, n, ms))
}

async fn subtask(kind: Kind, i: u64, n: u64, ms: u64) -> Result<u64, BoxError> {
    match kind {
        Kind::Both if i == 1 => {
            // Panics in its cleanup, once the sibling's failure cancelled it.
            let _cancelled = tokio_nursery::cancelled().await;
            panic!("sub-1 panicked in its cleanup");
        }
        Kind::Fail | Kind::Both if i == 0 => {
            sleep(Duration::from_millis(ms / 2)).await?;
            return Err("sub-0: disk full".into());
        }
        Kind::Panic if i == 0 => {
            sleep(Duration::from_millis(ms / 2)).await?;
            panic!("sub-0 exploded");
        }
        Kind::Stuck if i == n - 1 => {
            // A legacy await: not a cancellation point.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        _ => sleep(Duration::from_millis(ms)).await?,
    }
    Ok(i + 1)
}

/// A collector's outcome as the body passes it on. (The review first needed a workaround
/// here: the collector handed a body whose scope is cancelled the child's marker, not the
/// body's own cancellation; since session 21 it follows the handles' rule.)
fn collected<T>(outcome: Result<T, JoinError>) -> Result<T, BoxError> {
    outcome.map_err(BoxError::from)
}

/// Runs one request. `Err` only when an enclosing scope (the server) is cancelled.
async fn run_job(line: &str, cfg: &Config) -> Result<String, Cancelled> {
    let (kind, n, ms) = match parse(line) {
        Ok(parsed) => parsed,
        Err(message) => return Ok(format!("ERR {message}")),
    };
    let mut request = Nursery::new()
        .name("request")
        .timeout(cfg.deadline)
        .on_report(cfg.hook());
    if let Some(grace) = cfg.request_grace {
        request = request.grace(grace);
    }
    let fanout = request.run(move |req| async move {
        let mut set = req.collector::<u64>();
        for i in 0..n {
            set.spawn_named(&format!("sub-{i}"), subtask(kind, i, n, ms));
        }
        let mut sum = 0;
        while let Some((_id, outcome)) = set.join_next().await {
            // Not `outcome?`: see `collector_question_mark_turns_deadline_into_failure`.
            sum += collected(outcome)?;
        }
        Ok::<_, BoxError>(sum)
    });
    // A panic in a sub-task is resumed here: turn it into a reply so the connection (and
    // the server) stays up.
    match AssertUnwindSafe(fanout).catch_unwind().await {
        Ok(Ok(Some(sum))) => Ok(format!("OK {sum}")),
        Ok(Ok(None)) => Ok("TIMEOUT".to_string()),
        Ok(Err(NurseryError::Cancelled(cancelled))) => Err(cancelled),
        Ok(Err(NurseryError::Failed(failures))) => {
            let first = &failures[0];
            cfg.log(format!("failures: {}", failures.len()));
            Ok(format!("ERR {}", first.error()))
        }
        Err(payload) => Ok(format!(
            "ERR panic: {}",
            panic_message(&*payload).unwrap_or("?")
        )),
    }
}

/// Sends the goodbye line in a shielded scope with a bound of its own, then passes the
/// cancellation on.
async fn goodbye<W: AsyncWrite + Unpin>(write: &mut W, cancelled: Cancelled) -> io::Result<()> {
    let said = CancelScope::new()
        .shielded()
        .with_timeout(Duration::from_secs(1))
        .run(async {
            write.write_all(b"SHUTTING DOWN\n").cancellable().await??;
            write.shutdown().cancellable().await??;
            Ok::<_, io::Error>(())
        })
        .await;
    drop(said); // best effort: the client may be gone
    Err(cancelled.into())
}

async fn connection<S>(stream: S, cfg: Config) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read).lines();
    loop {
        let line = match lines.next_line().cancellable().await {
            Ok(line) => line?,
            Err(cancelled) => return goodbye(&mut write, cancelled).await,
        };
        let Some(line) = line else { return Ok(()) };
        cfg.log(format!("request {line}"));
        if line == "CRASH" {
            panic!("connection handler bug");
        }
        let reply = match run_job(&line, &cfg).await {
            Ok(reply) => reply,
            Err(cancelled) => {
                cfg.log(format!("cancelled during {line}"));
                return goodbye(&mut write, cancelled).await;
            }
        };
        cfg.log(format!("reply {reply}"));
        write.write_all(format!("{reply}\n").as_bytes()).await?;
    }
}

/// The server nursery: a supervisor (a connection's failure must not stop the others), whose
/// body streams the incidents. Connections come from `accept`.
async fn server<S, A, AF>(
    cfg: Config,
    handle_out: oneshot::Sender<NurseryHandle<io::Error>>,
    accept: A,
) -> Result<Option<()>, NurseryError<io::Error>>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    A: FnMut() -> AF + Send + 'static,
    AF: Future<Output = io::Result<S>> + Send,
{
    let body_cfg = cfg.clone();
    Nursery::new()
        .name("server")
        .supervisor()
        .grace(cfg.grace)
        .on_report(cfg.hook())
        .run(move |srv| async move {
            let cfg = body_cfg;
            let _ = handle_out.send(srv.clone());
            let acceptor_srv = srv.clone();
            let acceptor_cfg = cfg.clone();
            srv.spawn_named("acceptor", async move {
                let mut accept = accept;
                let mut id = 0;
                loop {
                    let stream = accept().cancellable().await??;
                    id += 1;
                    acceptor_srv.spawn_named(
                        &format!("conn-{id}"),
                        connection(stream, acceptor_cfg.clone()),
                    );
                }
                #[allow(unreachable_code)]
                Ok::<(), io::Error>(())
            });
            while let Some(incident) = srv.next_incident().await {
                let text = match incident {
                    Incident::Failed(failure) => {
                        format!("{} failed: {}", failure.origin(), failure.error())
                    }
                    Incident::Panicked { origin, payload } => {
                        format!("{origin} panicked: {:?}", panic_message(&*payload))
                    }
                };
                cfg.incidents.lock().unwrap().push(text);
            }
            Ok::<_, io::Error>(())
        })
        .await
}

/// An in-memory client: a duplex pipe handed to the server's acceptor.
struct Client {
    lines: tokio::io::Lines<BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>>,
    write: tokio::io::WriteHalf<tokio::io::DuplexStream>,
}

impl Client {
    async fn connect(to: &mpsc::Sender<tokio::io::DuplexStream>) -> Client {
        let (ours, theirs) = tokio::io::duplex(4096);
        to.send(theirs).await.unwrap();
        let (read, write) = tokio::io::split(ours);
        Client {
            lines: BufReader::new(read).lines(),
            write,
        }
    }

    async fn send(&mut self, line: &str) {
        self.write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }

    async fn recv(&mut self) -> Option<String> {
        self.lines.next_line().await.unwrap()
    }

    async fn ask(&mut self, line: &str) -> Option<String> {
        self.send(line).await;
        self.recv().await
    }
}

/// Starts an in-memory server in a tokio task; returns its control handle, the connection
/// sender and the server's task.
async fn start_memory_server(
    cfg: Config,
) -> (
    NurseryHandle<io::Error>,
    mpsc::Sender<tokio::io::DuplexStream>,
    tokio::task::JoinHandle<Result<Option<()>, NurseryError<io::Error>>>,
) {
    let (conn_tx, conn_rx) = mpsc::channel::<tokio::io::DuplexStream>(8);
    let conn_rx = Arc::new(tokio::sync::Mutex::new(conn_rx));
    let (handle_tx, handle_rx) = oneshot::channel();
    let task = tokio::spawn(server(cfg, handle_tx, move || {
        let conn_rx = conn_rx.clone();
        async move {
            conn_rx
                .lock()
                .await
                .recv()
                .await
                .ok_or_else(|| io::Error::other("no more connections"))
        }
    }));
    (handle_rx.await.unwrap(), conn_tx, task)
}

// ---------------------------------------------------------------------------------------
// 1. Requests, deadlines
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn job_ok_timeout_and_bad_request() {
    let cfg = Config::new(Duration::from_millis(100));
    let (srv, conns, task) = start_memory_server(cfg.clone()).await;
    let mut client = Client::connect(&conns).await;
    assert_eq!(client.ask("JOB 4 10").await.as_deref(), Some("OK 10"));
    assert_eq!(client.ask("JOB 3 5000").await.as_deref(), Some("TIMEOUT"));
    assert_eq!(
        client.ask("HELLO").await.as_deref(),
        Some("ERR unknown request Some(\"HELLO\")")
    );
    // The same connection still serves after a timeout.
    assert_eq!(client.ask("JOB 2 1").await.as_deref(), Some("OK 3"));
    srv.cancel();
    assert_eq!(client.recv().await.as_deref(), Some("SHUTTING DOWN"));
    assert!(matches!(task.await.unwrap(), Ok(Some(()))));
    assert!(cfg.reports.lock().unwrap().is_empty());
    assert!(cfg.incidents.lock().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------
// 2. Failures and panics: replied, reported once, server stays up
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn job_fail_replies_err_and_server_stays_up() {
    let cfg = Config::new(Duration::from_secs(1));
    let (srv, conns, task) = start_memory_server(cfg.clone()).await;
    let mut client = Client::connect(&conns).await;
    assert_eq!(
        client.ask("JOB_FAIL 3 20").await.as_deref(),
        Some("ERR sub-0: disk full")
    );
    assert_eq!(client.ask("JOB 2 1").await.as_deref(), Some("OK 3"));
    let mut other = Client::connect(&conns).await;
    assert_eq!(other.ask("JOB 1 1").await.as_deref(), Some("OK 1"));
    srv.cancel();
    assert_eq!(client.recv().await.as_deref(), Some("SHUTTING DOWN"));
    assert_eq!(other.recv().await.as_deref(), Some("SHUTTING DOWN"));
    assert!(matches!(task.await.unwrap(), Ok(Some(()))));
    // Exactly one failure, returned (not reported).
    let log = cfg.log.lock().unwrap().clone();
    assert_eq!(log.iter().filter(|l| l.starts_with("failures:")).count(), 1);
    assert!(log.contains(&"failures: 1".to_string()), "{log:?}");
    assert!(cfg.reports.lock().unwrap().is_empty());
    assert!(cfg.incidents.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn job_panic_replies_err_and_server_stays_up() {
    let cfg = Config::new(Duration::from_secs(1));
    let (srv, conns, task) = start_memory_server(cfg.clone()).await;
    let mut client = Client::connect(&conns).await;
    assert_eq!(
        client.ask("JOB_PANIC 3 20").await.as_deref(),
        Some("ERR panic: sub-0 exploded")
    );
    assert_eq!(client.ask("JOB 2 1").await.as_deref(), Some("OK 3"));
    srv.cancel();
    assert_eq!(client.recv().await.as_deref(), Some("SHUTTING DOWN"));
    assert!(matches!(task.await.unwrap(), Ok(Some(()))));
    // The panic was resumed once (caught into the reply), never reported elsewhere.
    let replies: Vec<_> = cfg
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("reply ERR panic"))
        .cloned()
        .collect();
    assert_eq!(replies.len(), 1);
    assert!(cfg.reports.lock().unwrap().is_empty());
    assert!(cfg.incidents.lock().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------
// 3. Graceful shutdown while a long job runs
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn shutdown_during_long_job_says_goodbye() {
    let cfg = Config::new(Duration::from_secs(3600));
    let (srv, conns, task) = start_memory_server(cfg.clone()).await;
    let mut busy = Client::connect(&conns).await;
    let mut idle = Client::connect(&conns).await;
    busy.send("JOB 3 60000").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    srv.cancel();
    assert_eq!(busy.recv().await.as_deref(), Some("SHUTTING DOWN"));
    assert_eq!(busy.recv().await, None); // closed after the goodbye
    assert_eq!(idle.recv().await.as_deref(), Some("SHUTTING DOWN"));
    assert!(matches!(task.await.unwrap(), Ok(Some(()))));
    let log = cfg.log.lock().unwrap().clone();
    assert_eq!(
        log,
        ["request JOB 3 60000", "cancelled during JOB 3 60000"],
        "no reply for the job: it was cut by the shutdown"
    );
    assert!(cfg.reports.lock().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------
// 1+3 end to end over loopback TCP (real time, generous bounds)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_end_to_end() {
    let bound = Duration::from_secs(30);
    tokio::time::timeout(bound, async {
        let cfg = Config::new(Duration::from_secs(2));
        let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let addr = listener.local_addr().unwrap();
        let (handle_tx, handle_rx) = oneshot::channel();
        let task = tokio::spawn(server(cfg.clone(), handle_tx, move || {
            let listener = listener.clone();
            async move { listener.accept().await.map(|(stream, _)| stream) }
        }));
        let srv = handle_rx.await.unwrap();

        let stream = TcpStream::connect(addr).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        write.write_all(b"JOB 5 10\n").await.unwrap();
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("OK 15"));
        write.write_all(b"JOB 2 60000\n").await.unwrap(); // long: cut by the deadline
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("TIMEOUT"));
        write.write_all(b"JOB_FAIL 2 10\n").await.unwrap();
        assert_eq!(
            lines.next_line().await.unwrap().as_deref(),
            Some("ERR sub-0: disk full")
        );
        write.write_all(b"JOB 2 600000\n").await.unwrap(); // in flight at the shutdown
        tokio::time::sleep(Duration::from_millis(100)).await;
        srv.cancel();
        assert_eq!(
            lines.next_line().await.unwrap().as_deref(),
            Some("SHUTTING DOWN")
        );
        assert_eq!(lines.next_line().await.unwrap(), None);
        assert!(matches!(task.await.unwrap(), Ok(Some(()))));
        assert!(cfg.reports.lock().unwrap().is_empty());
    })
    .await
    .expect("the end-to-end test hung");
}

// ---------------------------------------------------------------------------------------
// 4. A supervisor that restarts a crashed background worker
// ---------------------------------------------------------------------------------------

async fn worker(attempt: u32, log: Arc<Mutex<Vec<String>>>) -> Result<(), BoxError> {
    log.lock()
        .unwrap()
        .push(format!("worker attempt {attempt} up"));
    sleep(Duration::from_millis(10)).await?;
    match attempt {
        0 => panic!("worker bug"),
        1 => Err("worker lost its database".into()),
        _ => {
            let why = tokio_nursery::cancelled().await;
            log.lock()
                .unwrap()
                .push(format!("worker attempt {attempt} stopping"));
            Err(why.into())
        }
    }
}

#[tokio::test(start_paused = true)]
async fn supervisor_restarts_crashed_worker() {
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let reports: Arc<Mutex<Vec<String>>> = Arc::default();
    let hook_reports = reports.clone();
    let body_log = log.clone();
    let (handle_tx, handle_rx) = oneshot::channel();
    let task = tokio::spawn(
        Nursery::new()
            .name("workers")
            .supervisor()
            .on_report(move |r| hook_reports.lock().unwrap().push(r.to_string()))
            .run(move |sup| async move {
                let _ = handle_tx.send(sup.clone());
                let mut attempt = 0;
                sup.spawn_named("worker", worker(attempt, body_log.clone()));
                while let Some(incident) = sup.next_incident().await {
                    let what = match &incident {
                        Incident::Failed(f) => format!("failed: {}", f.error()),
                        Incident::Panicked { payload, .. } => {
                            format!("panicked: {}", panic_message(&**payload).unwrap_or("?"))
                        }
                    };
                    body_log.lock().unwrap().push(what);
                    attempt += 1;
                    sup.spawn_named("worker", worker(attempt, body_log.clone()));
                }
                Ok::<_, BoxError>(attempt)
            }),
    );
    let sup = handle_rx.await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    sup.cancel();
    let out = task.await.unwrap();
    assert_eq!(out.unwrap(), Some(2));
    assert_eq!(
        *log.lock().unwrap(),
        [
            "worker attempt 0 up",
            "panicked: worker bug",
            "worker attempt 1 up",
            "failed: worker lost its database",
            "worker attempt 2 up",
            "worker attempt 2 stopping",
        ]
    );
    assert!(
        reports.lock().unwrap().is_empty(),
        "taken incidents are ours"
    );
}

// ---------------------------------------------------------------------------------------
// 5. The task tree names the stuck child
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn task_tree_names_stuck_subtask() {
    let mut cfg = Config::new(Duration::from_millis(100));
    cfg.grace = Duration::from_secs(5);
    let (srv, conns, task) = start_memory_server(cfg.clone()).await;
    let mut client = Client::connect(&conns).await;
    client.send("JOB_STUCK 3 10").await;
    // Past the request deadline: the request nursery waits on the stuck sub-task.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tree = TaskTree::of(&srv.scope());
    println!("{tree}");
    let text = tree.to_string();
    assert!(text.contains("\"sub-2\""), "{text}");
    assert!(!text.contains("\"sub-0\""), "{text}");
    let stuck = tree
        .entries()
        .iter()
        .find(|e| e.name.as_deref() == Some("sub-2"))
        .unwrap();
    assert!(stuck.cancelled);
    let (reason, _since) = stuck.cancellation.clone().unwrap();
    assert!(
        matches!(reason, tokio_nursery::CancelReason::Deadline),
        "{reason}"
    );
    // The server's shutdown: the grace period ends the stuck job. The connection is
    // aborted with it (the cascade), so its client gets no goodbye, only the end of stream.
    srv.cancel();
    assert_eq!(client.recv().await, None);
    let out = task.await.unwrap();
    assert!(out.is_ok(), "{out:?}");
    let aborted = srv.aborted_children().to_vec();
    println!("aborted: {aborted:?}");
    assert!(
        aborted.iter().any(|a| a.starts_with("\"conn-1\"")),
        "{aborted:?}"
    );
    assert_eq!(*cfg.log.lock().unwrap(), ["request JOB_STUCK 3 10"]);
}

/// A request nursery with a grace period of its own bounds a stuck sub-task: the client
/// gets `TIMEOUT` at deadline + grace, and the server is untouched.
#[tokio::test(start_paused = true)]
async fn request_grace_bounds_a_stuck_subtask() {
    let mut cfg = Config::new(Duration::from_millis(100));
    cfg.request_grace = Some(Duration::from_secs(1));
    let (srv, conns, task) = start_memory_server(cfg.clone()).await;
    let mut client = Client::connect(&conns).await;
    let start = tokio::time::Instant::now();
    assert_eq!(
        client.ask("JOB_STUCK 3 10").await.as_deref(),
        Some("TIMEOUT")
    );
    assert_eq!(start.elapsed(), Duration::from_millis(1100));
    assert_eq!(client.ask("JOB 2 1").await.as_deref(), Some("OK 3"));
    srv.cancel();
    assert_eq!(client.recv().await.as_deref(), Some("SHUTTING DOWN"));
    assert!(matches!(task.await.unwrap(), Ok(Some(()))));
    assert!(cfg.reports.lock().unwrap().is_empty());
}

/// A failure and a panic in the same request: the panic is resumed (the reply), the failure
/// left behind goes to the report hook, exactly once.
#[tokio::test(start_paused = true)]
async fn failure_left_behind_by_a_panic_is_reported_once() {
    let cfg = Config::new(Duration::from_secs(1));
    let (srv, conns, task) = start_memory_server(cfg.clone()).await;
    let mut client = Client::connect(&conns).await;
    assert_eq!(
        client.ask("JOB_BOTH 3 20").await.as_deref(),
        Some("ERR panic: sub-1 panicked in its cleanup")
    );
    srv.cancel();
    assert_eq!(client.recv().await.as_deref(), Some("SHUTTING DOWN"));
    assert!(matches!(task.await.unwrap(), Ok(Some(()))));
    let reports = cfg.reports.lock().unwrap().clone();
    println!("{reports:?}");
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(
        reports[0].contains("sub-0") && reports[0].contains("disk full"),
        "{reports:?}"
    );
    assert!(cfg.incidents.lock().unwrap().is_empty());
}

/// A client that goes away mid-job: the connection's write fails; the supervisor server
/// streams that failure once, and keeps serving the others.
#[tokio::test(start_paused = true)]
async fn client_gone_is_one_incident_and_server_stays_up() {
    let cfg = Config::new(Duration::from_secs(1));
    let (srv, conns, task) = start_memory_server(cfg.clone()).await;
    let mut leaver = Client::connect(&conns).await;
    leaver.send("JOB 2 50").await;
    drop(leaver); // gone before the reply
    let mut stayer = Client::connect(&conns).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(stayer.ask("JOB 3 1").await.as_deref(), Some("OK 6"));
    let incidents = cfg.incidents.lock().unwrap().clone();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert!(
        incidents[0].starts_with("child \"conn-1\""),
        "{incidents:?}"
    );
    srv.cancel();
    assert_eq!(stayer.recv().await.as_deref(), Some("SHUTTING DOWN"));
    assert!(matches!(task.await.unwrap(), Ok(Some(()))));
    assert!(cfg.reports.lock().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------
// Findings, minimal
// ---------------------------------------------------------------------------------------

/// Found by this review (fixed in session 21): `Collector::join_next` gave a body whose
/// scope is cancelled the child's raw marker (`JoinError::ChildCancelled`), where awaiting a
/// `ChildHandle` gives the body's own cancellation "so that `?` passes the cancellation on"
/// (guide ch. 3). The JoinSet-style loop `sum += outcome?` turned the nursery's own deadline
/// into a *failure of the body* ("the child was cancelled"): `Err(Failed)` instead of
/// `Ok(None)`. The same pattern with handles gives `Ok(None)` (next test).
#[tokio::test(start_paused = true)]
async fn collector_question_mark_turns_deadline_into_failure() {
    let out = Nursery::new()
        .timeout(Duration::from_millis(100))
        .run(|n| async move {
            let mut set = n.collector::<u64>();
            for i in 0..3 {
                set.spawn(async move {
                    sleep(Duration::from_secs(10)).await?;
                    Ok::<_, BoxError>(i)
                });
            }
            let mut sum = 0;
            while let Some((_id, outcome)) = set.join_next().await {
                sum += outcome?;
            }
            Ok::<_, BoxError>(sum)
        })
        .await;
    let text = format!("{out:?}");
    assert!(
        matches!(out, Ok(None)),
        "expected the deadline to be absorbed (Ok(None)), got {text}"
    );
}

/// The same fan-out with handles: the deadline is absorbed, as documented.
#[tokio::test(start_paused = true)]
async fn handles_question_mark_absorbs_deadline() {
    let out = Nursery::new()
        .timeout(Duration::from_millis(100))
        .run(|n| async move {
            let handles: Vec<_> = (0..3)
                .map(|i| {
                    n.spawn(async move {
                        sleep(Duration::from_secs(10)).await?;
                        Ok::<_, BoxError>(i)
                    })
                })
                .collect();
            let mut sum = 0;
            for handle in handles {
                sum += handle.await?;
            }
            Ok::<_, BoxError>(sum)
        })
        .await;
    assert!(matches!(out, Ok(None)), "{out:?}");
}

/// The same cause (fixed in session 21), seen from "every failure reported exactly once":
/// in a fail-fast nursery, `outcome?` on a collector's marker (sub-0's own `ChildFailed`,
/// handed to a body whose scope the failure already cancelled) made the body a second
/// failure: `Failed` held 2 failures (sub-0's and the body's "the child was cancelled")
/// where the handle-based fan-out returns 1.
#[tokio::test(start_paused = true)]
async fn collector_question_mark_adds_a_spurious_failure() {
    let out = nursery(|n| async move {
        let mut set = n.collector::<u64>();
        set.spawn_named("sub-0", async {
            sleep(Duration::from_millis(10)).await?;
            Err::<u64, BoxError>("sub-0: disk full".into())
        });
        set.spawn_named("sub-1", async {
            sleep(Duration::from_secs(10)).await?;
            Ok::<_, BoxError>(1)
        });
        let mut sum = 0;
        while let Some((_id, outcome)) = set.join_next().await {
            sum += outcome?;
        }
        Ok::<_, BoxError>(sum)
    })
    .await;
    let failures: Vec<String> = out
        .unwrap_err()
        .failures()
        .iter()
        .map(|f| format!("{}: {}", f.origin(), f.error()))
        .collect();
    assert_eq!(
        failures.len(),
        1,
        "expected sub-0's failure alone: {failures:?}"
    );
}

/// `fail_after` cannot wrap a nursery directly (`NurseryError<E>` is not
/// `From<TimedOut>`); the glue a user writes to get a `TimedOut` for a request.
#[tokio::test(start_paused = true)]
async fn fail_after_around_a_nursery_needs_glue() {
    let out: Result<u64, io::Error> = fail_after(Duration::from_millis(100), async {
        let fanout = nursery(|n| async move {
            let slow = n.spawn(async {
                sleep(Duration::from_secs(10)).await?;
                Ok::<_, io::Error>(1u64)
            });
            slow.await.map_err(io::Error::other)
        })
        .await;
        match fanout {
            Ok(Some(value)) => Ok(value),
            Ok(None) => unreachable!("nobody cancels the nursery itself"),
            Err(NurseryError::Cancelled(cancelled)) => Err(cancelled.into()),
            Err(NurseryError::Failed(failures)) => Err(io::Error::other(format!("{failures:?}"))),
        }
    })
    .await;
    assert_eq!(out.unwrap_err().kind(), io::ErrorKind::TimedOut);

    // `move_on_after` around a nursery compiles as is, with an `Option` in an `Option`.
    let out = move_on_after(
        Duration::from_millis(100),
        nursery(|n| async move {
            let slow = n.spawn(async {
                sleep(Duration::from_secs(10)).await?;
                Ok::<_, BoxError>(1u64)
            });
            Ok::<_, BoxError>(slow.await?)
        }),
    )
    .await;
    assert!(matches!(out, Ok(None)), "{out:?}");
}

/// `TaskTree::current()` from inside a sub-task starts at the outermost scope.
#[tokio::test(start_paused = true)]
async fn task_tree_current_from_a_subtask() {
    let out = Nursery::new()
        .name("outer")
        .run(|n| async move {
            let inner = n.spawn_named("job", async {
                Nursery::new()
                    .name("request")
                    .run(|r| async move {
                        let probe = r.spawn_named("probe", async {
                            sleep(Duration::from_millis(1)).await?;
                            let tree = TaskTree::current();
                            Ok::<_, BoxError>(
                                tree.entries()
                                    .iter()
                                    .map(|e| (e.depth, e.kind, e.name.clone()))
                                    .collect::<Vec<_>>(),
                            )
                        });
                        Ok::<_, BoxError>(probe.await?)
                    })
                    .await
                    .map_err(|e| -> BoxError { format!("{e:?}").into() })
            });
            Ok::<_, BoxError>(inner.await?)
        })
        .await;
    let entries = out.unwrap().unwrap().unwrap();
    let names: Vec<_> = entries.iter().map(|(_, _, n)| n.as_deref()).collect();
    assert_eq!(names[0], Some("outer"), "{entries:?}");
    assert!(names.contains(&Some("probe")), "{entries:?}");
}

/// A bug in a connection handler (a panic) is one incident of the supervisor server, which
/// keeps serving; nothing reaches the report hook.
#[tokio::test(start_paused = true)]
async fn connection_panic_is_one_incident() {
    let cfg = Config::new(Duration::from_secs(1));
    let (srv, conns, task) = start_memory_server(cfg.clone()).await;
    let mut crasher = Client::connect(&conns).await;
    assert_eq!(crasher.ask("CRASH").await, None);
    let mut other = Client::connect(&conns).await;
    assert_eq!(other.ask("JOB 2 5").await.as_deref(), Some("OK 3"));
    let incidents = cfg.incidents.lock().unwrap().clone();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert!(
        incidents[0].starts_with("child \"conn-1\" (task "),
        "{incidents:?}"
    );
    assert!(
        incidents[0].ends_with("panicked: Some(\"connection handler bug\")"),
        "{incidents:?}"
    );
    srv.cancel();
    assert_eq!(other.recv().await.as_deref(), Some("SHUTTING DOWN"));
    assert!(matches!(task.await.unwrap(), Ok(Some(()))));
    assert!(cfg.reports.lock().unwrap().is_empty());
}

/// A slow goodbye past the server's grace period: a shielded cleanup in a child is aborted
/// with the child (only the body's shields and protected work are left to finish), while
/// the same cleanup as protected work is delivered, past the grace.
#[tokio::test(start_paused = true)]
async fn slow_goodbye_shield_vs_protect_past_grace() {
    let (said_tx, mut said) = mpsc::unbounded_channel::<&'static str>();
    let out = Nursery::new()
        .grace(Duration::from_millis(100))
        .run(|n| async move {
            let tx = said_tx.clone();
            n.spawn_named("shielded", async move {
                let why = tokio_nursery::cancelled().await;
                CancelScope::new()
                    .shielded()
                    .run(async {
                        sleep(Duration::from_millis(500)).await?; // a slow client
                        tx.send("shielded goodbye").unwrap();
                        Ok::<_, Cancelled>(())
                    })
                    .await?;
                Err::<(), _>(why)
            });
            let tx = said_tx.clone();
            n.spawn_named("protected", async move {
                let why = tokio_nursery::cancelled().await;
                tokio_nursery::protect(async move {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    tx.send("protected goodbye").unwrap();
                })
                .await;
                Err::<(), _>(why)
            });
            drop(said_tx);
            tokio::time::sleep(Duration::from_millis(10)).await;
            n.cancel();
            Ok::<_, Cancelled>(())
        })
        .await;
    assert!(out.is_ok(), "{out:?}");
    let mut got = Vec::new();
    while let Some(line) = said.recv().await {
        got.push(line);
    }
    assert_eq!(got, ["protected goodbye"]);
}

/// The pattern of `examples/graceful_shutdown.rs` (a fail-fast `server` nursery whose
/// connection children return `io::Result` and use `line?`): one client sending invalid
/// UTF-8 fails its connection, which cancels every sibling, so the whole server stops.
/// (Documented fail-fast behaviour; the example should use a supervisor or handle the
/// connection's errors. Reproduced against the example itself in the report.)
#[tokio::test(start_paused = true)]
async fn fail_fast_server_pattern_dies_on_one_bad_client() {
    let (good_ours, good_theirs) = tokio::io::duplex(64);
    let (mut bad_ours, bad_theirs) = tokio::io::duplex(64);
    let out = nursery(|server| async move {
        for (name, stream) in [("good", good_theirs), ("bad", bad_theirs)] {
            server.spawn_named(name, async move {
                let mut lines = BufReader::new(stream).lines();
                while let Some(_line) = lines.next_line().cancellable().await?? {}
                Ok::<_, io::Error>(())
            });
        }
        Ok::<_, io::Error>(())
    });
    bad_ours.write_all(b"\xff\xfe\n").await.unwrap();
    let out = out.await;
    drop(good_ours);
    let failures = out.unwrap_err();
    assert_eq!(failures.failures().len(), 1);
    assert!(failures.failures()[0].error().to_string().contains("utf-8"));
}
