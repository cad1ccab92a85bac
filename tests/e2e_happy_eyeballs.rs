//! End to end over loopback (real time): `examples/happy_eyeballs.rs`, RFC 8305's race with a
//! nursery against fast, slow, silent and refusing listeners. Assertions are on outcomes and
//! order (which attempts started and why, which failed, which won, which were cancelled and
//! what the servers saw); time only bounds a hang. The delays leave every event at least
//! ten times the loopback latency it races against.

#[path = "../examples/happy_eyeballs.rs"]
#[allow(dead_code)]
mod happy_eyeballs;

mod common;

use std::io::ErrorKind;
use std::time::Duration;

use happy_eyeballs::{
    ALL_REFUSING, ALL_SILENT, Config, Event, ONE_OF_EACH, RaceError, Report, SLOW_FIRST, Server,
    Why, run,
};

const HANG_BOUND: Duration = Duration::from_secs(30);

async fn race(servers: &[Server], config: Config) -> Report {
    tokio::time::timeout(HANG_BOUND, run(servers, config))
        .await
        .expect("hang: the race did not finish within 30 s")
        .expect("the listeners started and stopped")
}

/// The attempts in the order they started, and why each started then.
fn starts(events: &[Event]) -> Vec<(usize, Why)> {
    events
        .iter()
        .filter_map(|event| match *event {
            Event::Started { attempt, why } => Some((attempt, why)),
            _ => None,
        })
        .collect()
}

/// The attempts cancelled, by number, with the reason each saw.
fn cancellations(events: &[Event]) -> Vec<(usize, String)> {
    let mut cancelled: Vec<(usize, String)> = events
        .iter()
        .filter_map(|event| match event {
            Event::Cancelled { attempt, reason } => Some((*attempt, reason.clone())),
            _ => None,
        })
        .collect();
    cancelled.sort(); // the losers stop concurrently: their order is not part of the contract
    cancelled
}

fn index_of(events: &[Event], wanted: &Event) -> usize {
    events
        .iter()
        .position(|event| event == wanted)
        .unwrap_or_else(|| panic!("no {wanted:?} in {events:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn he01_the_fast_address_wins_a_refusal_starts_the_next_attempt_at_once() {
    common::leak_checked(async move {
        let report = race(ONE_OF_EACH, Config::default()).await;
        let events = &report.events;
        let winner = report.outcome.as_ref().expect("a connection");
        assert_eq!(winner.attempt, 4, "{events:#?}");
        assert_eq!(winner.greeting, "hello from fast");
        assert_eq!(winner.stream.peer_addr().unwrap(), report.addrs[3]);

        assert_eq!(
            starts(events),
            [
                (1, Why::First),
                (2, Why::DelayPassed),
                (3, Why::AttemptFailed),
                (4, Why::DelayPassed),
            ]
        );
        let refused = Event::Failed {
            attempt: 2,
            kind: ErrorKind::ConnectionRefused,
        };
        let third = Event::Started {
            attempt: 3,
            why: Why::AttemptFailed,
        };
        assert!(index_of(events, &refused) < index_of(events, &third));
        let connected = index_of(
            events,
            &Event::Connected {
                attempt: 4,
                greeting: "hello from fast".into(),
            },
        );
        let won = String::from("explicit cancel: attempt 4 won");
        assert_eq!(cancellations(events), [(1, won.clone()), (3, won)]);
        for loser in [1, 3] {
            let cancelled = events
                .iter()
                .position(|e| matches!(e, Event::Cancelled { attempt, .. } if *attempt == loser))
                .unwrap();
            assert!(connected < cancelled, "{events:#?}");
        }
        // The slow server had accepted attempt 3 and saw it go away before its greeting.
        assert!(events.contains(&Event::HungUp { server: 3 }), "{events:#?}");
        assert_eq!(events.len(), 9, "nothing else happened: {events:#?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn he02_a_slow_first_attempt_keeps_running_and_wins() {
    common::leak_checked(async move {
        let report = race(SLOW_FIRST, Config::default()).await;
        let events = &report.events;
        let winner = report.outcome.as_ref().expect("a connection");
        assert_eq!(
            (winner.attempt, winner.greeting.as_str()),
            (1, "hello from slow")
        );
        assert_eq!(
            events.as_slice(),
            [
                Event::Started {
                    attempt: 1,
                    why: Why::First
                },
                Event::Started {
                    attempt: 2,
                    why: Why::DelayPassed
                },
                Event::Connected {
                    attempt: 1,
                    greeting: "hello from slow".into()
                },
                Event::Cancelled {
                    attempt: 2,
                    reason: "explicit cancel: attempt 1 won".into()
                },
            ]
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn he03_every_address_refuses_the_attempts_start_back_to_back() {
    common::leak_checked(async move {
        let report = race(ALL_REFUSING, Config::default()).await;
        let Err(RaceError::AllFailed(failures)) = &report.outcome else {
            panic!("every attempt fails: {:?}", report.outcome);
        };
        let failed: Vec<(usize, ErrorKind)> = failures
            .iter()
            .map(|(attempt, error)| (*attempt, error.kind()))
            .collect();
        let refused = ErrorKind::ConnectionRefused;
        assert_eq!(failed, [(1, refused), (2, refused), (3, refused)]);
        let expected: Vec<Event> = (1..=3)
            .flat_map(|attempt| {
                let why = if attempt == 1 {
                    Why::First
                } else {
                    Why::AttemptFailed
                };
                [
                    Event::Started { attempt, why },
                    Event::Failed {
                        attempt,
                        kind: refused,
                    },
                ]
            })
            .collect();
        assert_eq!(report.events, expected);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn he04_the_connect_timeout_cancels_every_silent_attempt() {
    common::leak_checked(async move {
        let config = Config {
            delay: Duration::from_millis(250),
            timeout: Duration::from_millis(2500), // ten delays: the second attempt starts first
        };
        let report = race(ALL_SILENT, config).await;
        assert!(
            matches!(report.outcome, Err(RaceError::TimedOut)),
            "{:?}",
            report.outcome
        );
        let events = &report.events;
        assert_eq!(starts(events), [(1, Why::First), (2, Why::DelayPassed)]);
        let deadline = String::from("deadline passed");
        assert_eq!(
            cancellations(events),
            [(1, deadline.clone()), (2, deadline)]
        );
        assert_eq!(events.len(), 4, "nothing else happened: {events:#?}");
    })
    .await
}
