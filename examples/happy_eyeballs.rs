//! Happy eyeballs (RFC 8305) with a nursery: staggered connection attempts to several
//! addresses of one service, the first success wins and the losers are cancelled.
//!
//! ```text
//! cargo run --example happy_eyeballs           # attempts 250 ms apart (RFC 8305's default)
//! cargo run --example happy_eyeballs -- 100    # another Connection Attempt Delay, in ms
//! ```
//!
//! The race is a nursery ([`happy_eyeballs`]). Each attempt is a child, collected by a
//! `Collector` in completion order. The body starts the first attempt at once, the next one
//! whenever the Connection Attempt Delay passes without a connection, and the next one *at
//! once* when an attempt fails; earlier attempts keep running. The first attempt that
//! connects cancels the nursery: the other attempts are told at their cancellation point (the
//! connect is made `.cancellable()`, so it is dropped and its socket closed) and the nursery
//! waits until they have stopped before it hands over the winner. If every attempt fails,
//! the race reports every failure; a connect timeout is the nursery's deadline.
//!
//! The addresses are listeners on loopback that the example starts ([`Server`]): *fast*
//! (greets at once), *slow* (greets late), *silent* (does not answer: its accept queue is
//! full, so the kernel drops the connection requests) and *refusing* (a closed port). An
//! attempt is a TCP connect plus the server's greeting line (the server speaks first, as in
//! SMTP or SSH), standing in for the handshake a client needs before it can use a connection.
//!
//! Four races, each printed as a timeline:
//!
//! 1. one address of each kind: the refused attempt starts the next one at once, the fast
//!    address wins although it is tried last, the silent and slow attempts are cancelled (the
//!    slow server sees its client hang up);
//! 2. a slow first address still wins when the others do not answer: attempts are staggered,
//!    not abandoned;
//! 3. every address refuses: the attempts start back to back and every failure is reported;
//! 4. every address is silent: the connect timeout cancels every attempt.
//!
//! This runs on real time (sockets cannot run on tokio's paused clock), so the milliseconds
//! printed vary a little from run to run; the order of the attempts and the outcomes do not.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::{Instant, sleep_until};
use tokio_nursery::{CancellableExt, Cancelled, Collector, Nursery, NurseryHandle, cancelled};

/// RFC 8305's recommended Connection Attempt Delay.
pub const DEFAULT_DELAY: Duration = Duration::from_millis(250);

/// How long the slow server waits before it greets.
pub const SLOW: Duration = Duration::from_millis(1500);

/// A listener on loopback and how it treats connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// Accepts and greets at once.
    Fast,
    /// Accepts at once, greets after [`SLOW`].
    Slow,
    /// Never answers: its accept queue is full, so connection requests are dropped.
    Silent,
    /// A closed port: connecting is refused.
    Refusing,
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Server::Fast => "fast",
            Server::Slow => "slow",
            Server::Silent => "silent",
            Server::Refusing => "refusing",
        })
    }
}

/// The four races of the example.
pub const ONE_OF_EACH: &[Server] = &[Server::Silent, Server::Refusing, Server::Slow, Server::Fast];
/// A slow first address, then one that does not answer.
pub const SLOW_FIRST: &[Server] = &[Server::Slow, Server::Silent];
/// Every address refuses.
pub const ALL_REFUSING: &[Server] = &[Server::Refusing, Server::Refusing, Server::Refusing];
/// No address answers.
pub const ALL_SILENT: &[Server] = &[Server::Silent, Server::Silent];

/// How a race is run.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The Connection Attempt Delay: how long an attempt runs alone before the next starts.
    pub delay: Duration,
    /// The connect timeout: the race's deadline.
    pub timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            delay: DEFAULT_DELAY,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why an attempt started when it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// The first attempt starts at once.
    First,
    /// The delay passed with no connection.
    DelayPassed,
    /// An attempt failed: the next one starts without waiting for the delay.
    AttemptFailed,
}

/// What happened during a race. Attempts and servers are numbered from 1, in address order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An attempt to connect to the address of the same number started.
    Started { attempt: usize, why: Why },
    /// The attempt failed.
    Failed { attempt: usize, kind: io::ErrorKind },
    /// The attempt connected and got the server's greeting.
    Connected { attempt: usize, greeting: String },
    /// The attempt was cancelled (it lost the race, or the connect timeout passed).
    Cancelled { attempt: usize, reason: String },
    /// The server at that address saw its client hang up before it greeted it.
    HungUp { server: usize },
}

impl Event {
    /// The number of the address the event is about.
    pub fn address(&self) -> usize {
        match *self {
            Event::Started { attempt, .. }
            | Event::Failed { attempt, .. }
            | Event::Connected { attempt, .. }
            | Event::Cancelled { attempt, .. } => attempt,
            Event::HungUp { server } => server,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Started { why, .. } => write!(
                f,
                "attempt started ({})",
                match why {
                    Why::First => "the first",
                    Why::DelayPassed => "the delay passed with no connection",
                    Why::AttemptFailed => "an attempt failed: no need to wait",
                }
            ),
            Event::Failed { kind, .. } => write!(f, "attempt failed: {kind}"),
            Event::Connected { greeting, .. } => write!(f, "connected: {greeting:?}"),
            Event::Cancelled { reason, .. } => write!(f, "attempt cancelled: {reason}"),
            Event::HungUp { .. } => write!(f, "server: the client hung up before the greeting"),
        }
    }
}

/// The events of one race, printed as they happen with the time since the race started.
#[derive(Clone)]
pub struct Timeline {
    start: Instant,
    servers: Arc<[Server]>,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Timeline {
    fn new(servers: &[Server]) -> Self {
        Timeline {
            start: Instant::now(),
            servers: servers.into(),
            events: Arc::default(),
        }
    }

    fn push(&self, event: Event) {
        let number = event.address();
        let who = format!("#{number} {}:", self.servers[number - 1]);
        let ms = self.start.elapsed().as_millis();
        println!("  [{ms:>5} ms] {who:<12} {event}");
        self.events.lock().unwrap().push(event);
    }

    /// The events so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}

/// The winner of a race: an open connection whose server has greeted.
#[derive(Debug)]
pub struct Connection {
    /// The attempt (and address) number.
    pub attempt: usize,
    /// The server's greeting line.
    pub greeting: String,
    /// The connection, ready for the client's first request.
    pub stream: TcpStream,
}

/// Why a race produced no connection.
#[derive(Debug)]
pub enum RaceError {
    /// Every attempt failed: each attempt's number and error, in the order they failed.
    AllFailed(Vec<(usize, io::Error)>),
    /// The connect timeout passed first.
    TimedOut,
    /// The race was stopped from outside (a scope around it was cancelled).
    Stopped(String),
}

/// What an attempt ends with: the connection, or its number and error.
type Attempted = Result<Connection, (usize, io::Error)>;

/// RFC 8305's race over `addrs`, tried in this order: see the module docs. Every attempt has
/// stopped when this returns.
pub async fn happy_eyeballs(
    addrs: &[SocketAddr],
    config: Config,
    timeline: &Timeline,
) -> Result<Connection, RaceError> {
    let out = Nursery::new()
        .name("happy eyeballs")
        .timeout(config.timeout)
        .run(|n| async move {
            let mut race = Race {
                addrs,
                next: 0,
                attempts: n.collector(),
                timeline,
                delay: config.delay,
            };
            let mut failures = Vec::new();
            let mut due = race.start_next(Why::First);
            loop {
                tokio::select! {
                    biased;
                    // The connect timeout (the nursery's deadline) cancels every attempt.
                    stop = cancelled() => return Err(stop),
                    Some((_, outcome)) = race.attempts.join_next() => match outcome {
                        Ok(Ok(connection)) => {
                            let won = format!("attempt {} won", connection.attempt);
                            // The losers stop and the nursery waits for them; a connection
                            // that arrives meanwhile is closed with the collector.
                            n.scope().cancel_with(won);
                            return Ok(Ok(connection));
                        }
                        Ok(Err(failure)) => {
                            failures.push(failure);
                            if race.more() {
                                due = race.start_next(Why::AttemptFailed);
                            } else if race.attempts.is_empty() {
                                return Ok(Err(RaceError::AllFailed(failures)));
                            }
                        }
                        Err(_cancelled) => {} // only once the timeout passed, seen above
                    },
                    () = sleep_until(due), if race.more() => {
                        due = race.start_next(Why::DelayPassed);
                    }
                }
            }
        })
        .await;
    match out {
        Ok(Some(race)) => race,
        Ok(None) => Err(RaceError::TimedOut),
        Err(error) => Err(RaceError::Stopped(error.to_string())),
    }
}

/// The attempts of a race: the addresses, the next one to try, and the children started.
struct Race<'a> {
    addrs: &'a [SocketAddr],
    next: usize,
    attempts: Collector<Attempted, Cancelled>,
    timeline: &'a Timeline,
    delay: Duration,
}

impl Race<'_> {
    /// Whether an address is left to try.
    fn more(&self) -> bool {
        self.next < self.addrs.len()
    }

    /// Starts an attempt on the next address; returns when the one after it is due.
    fn start_next(&mut self, why: Why) -> Instant {
        let (attempt, addr) = (self.next + 1, self.addrs[self.next]);
        self.next += 1;
        self.timeline.push(Event::Started { attempt, why });
        let timeline = self.timeline.clone();
        self.attempts.spawn_named(
            &format!("attempt {attempt}"),
            connect(attempt, addr, timeline),
        );
        Instant::now() + self.delay
    }
}

/// One attempt, a child of the race: connect and read the greeting, unless cancelled first.
async fn connect(
    attempt: usize,
    addr: SocketAddr,
    timeline: Timeline,
) -> Result<Attempted, Cancelled> {
    match handshake(addr).cancellable().await {
        Ok(Ok((stream, greeting))) => {
            timeline.push(Event::Connected {
                attempt,
                greeting: greeting.clone(),
            });
            Ok(Ok(Connection {
                attempt,
                greeting,
                stream,
            }))
        }
        Ok(Err(error)) => {
            timeline.push(Event::Failed {
                attempt,
                kind: error.kind(),
            });
            Ok(Err((attempt, error)))
        }
        Err(cancelled) => {
            // The connect or the read was dropped: the socket is closed.
            timeline.push(Event::Cancelled {
                attempt,
                reason: cancelled.reason().to_string(),
            });
            Err(cancelled)
        }
    }
}

/// TCP connect, then the server's greeting line.
async fn handshake(addr: SocketAddr) -> io::Result<(TcpStream, String)> {
    let mut stream = BufReader::new(TcpStream::connect(addr).await?);
    let mut greeting = String::new();
    if stream.read_line(&mut greeting).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok((stream.into_inner(), greeting.trim_end().to_string()))
}

/// Starts a listener on loopback for each of `servers`, its tasks children of `n` until `n`
/// is cancelled; their addresses, in order.
async fn start_servers(
    n: &NurseryHandle<io::Error>,
    servers: &[Server],
    timeline: &Timeline,
) -> io::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::new();
    for (index, &server) in servers.iter().enumerate() {
        let addr = match server {
            Server::Fast | Server::Slow => {
                let listener = TcpListener::bind(LOOPBACK).await?;
                let addr = listener.local_addr()?;
                let server = Greeter {
                    server,
                    number: index + 1,
                    timeline: timeline.clone(),
                };
                n.spawn(server.accept(listener, n.clone()));
                addr
            }
            Server::Silent => {
                let listener = silent_listener().await?;
                let addr = listener.0.local_addr()?;
                n.spawn(async move {
                    let _held = listener; // until the example ends
                    Err::<(), _>(io::Error::from(cancelled().await))
                });
                addr
            }
            // Bound and closed at once: connecting is refused.
            Server::Refusing => TcpListener::bind(LOOPBACK).await?.local_addr()?,
        };
        addrs.push(addr);
    }
    Ok(addrs)
}

const LOOPBACK: &str = "127.0.0.1:0";

/// A listener on loopback that never answers: it never accepts, and its accept queue (room
/// for one) is filled at once, so the kernel drops every further connection request and the
/// client's connect hangs. The filling connection is kept with the listener.
async fn silent_listener() -> io::Result<(TcpListener, TcpStream)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(LOOPBACK.parse().expect("a socket address"))?;
    let listener = socket.listen(0)?;
    let filler = TcpStream::connect(listener.local_addr()?).await?;
    Ok((listener, filler))
}

/// A fast or slow server.
#[derive(Clone)]
struct Greeter {
    server: Server,
    /// Its address's number.
    number: usize,
    timeline: Timeline,
}

impl Greeter {
    /// Accepts connections until the nursery `n` is cancelled, each greeted by a child of `n`.
    async fn accept(self, listener: TcpListener, n: NurseryHandle<io::Error>) -> io::Result<()> {
        loop {
            let (stream, _) = listener.accept().cancellable().await??;
            n.spawn(self.clone().greet(stream));
        }
    }

    /// Greets a client (late, for the slow server), unless it hangs up first. Not
    /// cancellable: the nursery waits until each connection is greeted or gone.
    async fn greet(self, mut stream: TcpStream) -> io::Result<()> {
        let delay = if self.server == Server::Slow {
            SLOW
        } else {
            Duration::ZERO
        };
        let mut byte = [0; 1];
        tokio::select! {
            () = tokio::time::sleep(delay) => {
                let hello = format!("hello from {}\n", self.server);
                // A client that left in the meantime is no failure of the server.
                let _ = stream.write_all(hello.as_bytes()).await;
            }
            _ = stream.read(&mut byte) => self.timeline.push(Event::HungUp { server: self.number }),
        }
        Ok(())
    }
}

/// One race, as the example runs it.
#[derive(Debug)]
pub struct Report {
    pub addrs: Vec<SocketAddr>,
    pub outcome: Result<Connection, RaceError>,
    /// Every event of the race, the servers' included, in order.
    pub events: Vec<Event>,
}

/// Starts `servers` on loopback, races connections to them, stops the servers and reports.
pub async fn run(servers: &[Server], config: Config) -> io::Result<Report> {
    let timeline = Timeline::new(servers);
    let report = Nursery::new()
        .name("happy eyeballs demo")
        .run(|n| {
            let timeline = timeline.clone();
            async move {
                let addrs = start_servers(&n, servers, &timeline).await?;
                let numbered: Vec<String> = (1..)
                    .zip(servers.iter().zip(&addrs))
                    .map(|(number, (server, addr))| format!("#{number} {server} {addr}"))
                    .collect();
                println!("  addresses: {}", numbered.join(", "));
                let outcome = happy_eyeballs(&addrs, config, &timeline).await;
                n.cancel(); // stops the listeners; the nursery waits for open greetings
                Ok::<_, io::Error>((addrs, outcome))
            }
        })
        .await;
    match report {
        Ok(Some((addrs, outcome))) => Ok(Report {
            addrs,
            outcome,
            events: timeline.events(),
        }),
        Ok(None) => Err(io::Error::other("the servers were cancelled")),
        Err(error) => Err(io::Error::other(error.to_string())),
    }
}

fn describe(report: &Report, servers: &[Server]) -> String {
    match &report.outcome {
        Ok(connection) => format!(
            "connected to #{} {} ({})",
            connection.attempt,
            servers[connection.attempt - 1],
            report.addrs[connection.attempt - 1]
        ),
        Err(RaceError::AllFailed(failures)) => format!(
            "no connection: all {} attempts failed ({})",
            failures.len(),
            failures
                .iter()
                .map(|(attempt, error)| format!("#{attempt}: {error}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Err(RaceError::TimedOut) => String::from("no connection: the connect timeout passed"),
        Err(RaceError::Stopped(why)) => format!("no connection: stopped: {why}"),
    }
}

#[allow(dead_code)] // the end-to-end test includes this file for `run`
#[tokio::main]
async fn main() -> io::Result<()> {
    let delay = match std::env::args().nth(1).map(|ms| ms.parse()) {
        None => DEFAULT_DELAY,
        Some(Ok(ms)) => Duration::from_millis(ms),
        Some(Err(_)) => {
            eprintln!("usage: cargo run --example happy_eyeballs [-- DELAY_IN_WHOLE_MS]");
            std::process::exit(2);
        }
    };
    let config = Config {
        delay,
        ..Config::default()
    };
    let races = [
        ("One address of each kind", ONE_OF_EACH, config),
        ("A slow first address still wins", SLOW_FIRST, config),
        ("Every address refuses", ALL_REFUSING, config),
        (
            "No address answers (connect timeout: four delays)",
            ALL_SILENT,
            Config {
                timeout: delay * 4,
                ..config
            },
        ),
    ];
    println!(
        "Happy eyeballs (RFC 8305): attempts {} ms apart.",
        delay.as_millis()
    );
    for (number, (title, servers, config)) in (1..).zip(races) {
        println!();
        println!("{number}. {title}");
        let report = run(servers, config).await?;
        println!("  => {}", describe(&report, servers));
    }
    Ok(())
}
