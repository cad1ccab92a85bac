//! Starting a server with readiness: `NurseryHandle::start`, Trio's `nursery.start`.
//!
//! ```text
//! cargo run --example start_listener
//! ```
//!
//! The server child binds a real `TcpListener` on 127.0.0.1 (port 0: the OS picks one) and
//! signals the bound address with `ready.signal(addr)`; only then does `start` return, so the
//! caller can connect knowing the server is listening, with no sleep and no retry loop. The
//! server keeps running in the nursery: it accepts connections and serves each one in a
//! child of its own. The caller exchanges a line with it over a real socket, then cancels
//! the nursery; the accept loop (made a cancellation point with `.cancellable()`) and the
//! connection's read loop see the cancellation, say goodbye, and return.
//!
//! This one uses real time (sockets). It finishes in a few milliseconds; an overall 10 s
//! `tokio::time::timeout` only guards against a hang.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_nursery::{CancellableExt, Nursery, NurseryHandle, Ready};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    println!("tokio-nursery: start a TCP server, wait until it listens, talk to it, stop it");
    println!();
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(10), run()).await {
        Ok(Ok(())) => {
            println!(
                "\nDone in {:.1} ms of real time.",
                started.elapsed().as_secs_f64() * 1000.0
            );
            std::process::ExitCode::SUCCESS
        }
        Ok(Err(error)) => {
            eprintln!("\nFailed: {error}");
            std::process::ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("\nHung for 10 s: giving up (this is a bug)");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> io::Result<()> {
    let outcome = Nursery::new()
        .name("server")
        .run(|n| async move {
            // 1. Start the server and wait for its address. Until it signals, the server
            //    child runs under our scopes; a failure before the signal (say, the bind
            //    fails) comes back here, as `StartError::Failed`.
            let server = n.clone();
            let addr = n
                .start(move |ready: Ready<SocketAddr>| serve(server, ready))
                .await
                .map_err(io::Error::other)?;
            println!("caller: start() returned {addr}: the server is listening");

            // 2. Talk to it as a client, over a real socket.
            let stream = TcpStream::connect(addr).await?;
            println!("caller: connected from {}", stream.local_addr()?);
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            write.write_all(b"hello, server\n").await?;
            println!("caller: sent \"hello, server\"");
            let reply = lines.next_line().await?.unwrap_or_default();
            println!("caller: received {reply:?}");

            // 3. Stop everything: cancel the nursery's scope. Its children see it at their
            //    next cancellation point; the nursery waits for them.
            println!("caller: cancelling the nursery");
            n.cancel();

            // We are cancelled too, but plain tokio awaits still work: read the goodbye.
            let goodbye = lines.next_line().await?;
            println!("caller: received {goodbye:?}");
            let eof = lines.next_line().await?;
            println!("caller: received {eof:?}: the server closed the connection");
            Ok::<_, io::Error>(())
        })
        .await;
    // Every child has stopped by now. The body returned a value, so the nursery yields it
    // (`Ok(Some(()))`); the children's cancellation echoes are not failures.
    println!("caller: the nursery finished -> {outcome:?}");
    outcome.map(drop).map_err(io::Error::other)
}

/// The server: bind, signal readiness with the address, then accept until cancelled.
async fn serve(nursery: NurseryHandle<io::Error>, ready: Ready<SocketAddr>) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("server: bound {addr}; signalling readiness");
    ready.signal(addr);

    loop {
        // `accept` is not a cancellation point; `.cancellable()` makes it one (it is
        // cancel-safe, so dropping it on cancellation loses no connection).
        let accepted = listener.accept().cancellable().await;
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted?,
            Err(cancelled) => {
                println!(
                    "server: accept loop cancelled ({}); closing the listener",
                    cancelled.reason()
                );
                return Err(cancelled.into()); // an echo of the cancellation, not a failure
            }
        };
        println!("server: accepted {peer}");
        // Each connection is a child of the same nursery.
        nursery.spawn_named("connection", connection(stream, peer));
    }
}

/// One connection: echo lines until the client leaves or the server is cancelled.
async fn connection(stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    loop {
        // `next_line` is cancel-safe, so this is a fine cancellation point too.
        match lines.next_line().cancellable().await {
            Ok(Ok(Some(line))) => {
                println!("server: {peer} said {line:?}; replying");
                write
                    .write_all(format!("you said: {line}\n").as_bytes())
                    .await?;
            }
            Ok(Ok(None)) => {
                println!("server: {peer} left");
                return Ok(());
            }
            Ok(Err(error)) => return Err(error),
            Err(cancelled) => {
                println!("server: connection {peer} cancelled; saying goodbye");
                write.write_all(b"goodbye: server shutting down\n").await?;
                return Err(cancelled.into());
            }
        }
    }
}
