#![cfg(feature = "tower")]
//! End to end over loopback (real time, SPEC D1, N4, N8, N9): `examples/fanout_server.rs`, a
//! frontend fanning out to real backends under its caller's deadline. Assertions are on
//! outcomes and order: what the client got, what budget each party received, what each
//! backend saw (an answer, its deadline, its caller hanging up), which calls the frontend's
//! nursery cancelled and why. Time only bounds a hang; the budgets leave every step at least
//! ten times the latency it races against.

#[path = "../examples/fanout_server.rs"]
#[allow(dead_code)]
mod fanout_server;

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use fanout_server::{CALLS, Outcome, RESERVE, run};

const HANG_BOUND: Duration = Duration::from_secs(30);

const ANSWERS: usize = 0;
const ONE_FAILS: usize = 1;
const DEADLINE: usize = 2;
const HANG_UP_WAIT: usize = 3;
const HANG_UP_ABORT: usize = 4;

async fn request(call: usize) -> Outcome {
    tokio::time::timeout(HANG_BOUND, run(CALLS[call]))
        .await
        .expect("hang: the request did not finish within 30 s")
        .expect("the servers started and stopped")
}

/// What `who` said, in order, without its name.
fn said<'a>(outcome: &'a Outcome, who: &str) -> Vec<&'a str> {
    outcome
        .lines
        .iter()
        .filter_map(|line| line.strip_prefix(who)?.strip_prefix(": "))
        .collect()
}

/// Where `line` is in the run's lines.
fn index_of(outcome: &Outcome, line: &str) -> usize {
    outcome
        .lines
        .iter()
        .position(|seen| seen == line)
        .unwrap_or_else(|| panic!("no {line:?} in {:#?}", outcome.lines))
}

/// The budget (ms) `who` read from its request.
fn budget(outcome: &Outcome, who: &str) -> u128 {
    let (_, budget) = outcome
        .budgets
        .iter()
        .find(|(name, _)| name == who)
        .unwrap_or_else(|| panic!("{who} received no request: {:#?}", outcome.lines));
    budget.unwrap_or_else(|| panic!("{who} received no deadline"))
}

/// The first line of a party: the budget it received.
fn received(outcome: &Outcome, who: &str) -> String {
    format!("received a budget of {} ms", budget(outcome, who))
}

fn answered(outcome: &Outcome) -> (StatusCode, &str) {
    let (status, body) = outcome.client.as_ref().expect("the client got an answer");
    (*status, body.as_str())
}

const HUNG_UP: &str = "the caller hung up: the request was dropped";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fo01_every_backend_answers_within_the_callers_budget() {
    common::leak_checked(async move {
    let outcome = request(ANSWERS).await;
    assert_eq!(
        answered(&outcome),
        (
            StatusCode::OK,
            "search: search results; profile: profile results"
        )
    );
    let frontend = budget(&outcome, "frontend");
    assert!(0 < frontend && frontend <= 5000, "{frontend}");
    for backend in ["search", "profile"] {
        let budget = budget(&outcome, backend);
        assert!(
            0 < budget && budget + RESERVE.as_millis() <= frontend,
            "{backend} gets what the frontend has left minus its reserve: {budget} of {frontend}"
        );
        assert_eq!(
            said(&outcome, backend),
            [received(&outcome, backend).as_str(), "answers 200 OK"]
        );
    }
    let mut frontend = said(&outcome, "frontend");
    assert_eq!(
        frontend[..2],
        [
            received(&outcome, "frontend").as_str(),
            "fans out to search, profile"
        ]
    );
    assert_eq!(frontend.pop(), Some("answers 200 OK"));
    frontend[2..].sort(); // the answers, in completion order
    assert_eq!(
        frontend[2..],
        ["profile: profile results", "search: search results"]
    );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fo02_a_failing_backend_cancels_the_other_calls() {
    common::leak_checked(async move {
        let outcome = request(ONE_FAILS).await;
        assert_eq!(
            answered(&outcome),
            (
                StatusCode::BAD_GATEWAY,
                "ads answered 503 Service Unavailable"
            )
        );
        assert_eq!(
            said(&outcome, "ads"),
            [
                received(&outcome, "ads").as_str(),
                "answers 503 Service Unavailable"
            ]
        );
        let failed = index_of(&outcome, "ads: answers 503 Service Unavailable");
        for backend in ["reviews", "recommendations"] {
            // Each backend had the request, and saw the frontend drop it, never answering.
            assert_eq!(
                said(&outcome, backend),
                [received(&outcome, backend).as_str(), HUNG_UP]
            );
            let cancelled =
                format!("frontend: the call to {backend} was cancelled (a sibling task failed)");
            assert!(failed < index_of(&outcome, &cancelled));
            assert!(failed < index_of(&outcome, &format!("{backend}: {HUNG_UP}")));
        }
        let frontend = said(&outcome, "frontend");
        assert_eq!(frontend.len(), 5, "nothing else: {frontend:#?}");
        assert_eq!(frontend.last(), Some(&"answers 502 Bad Gateway"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fo03_the_callers_deadline_cuts_a_slow_backend() {
    common::leak_checked(async move {
        let outcome = request(DEADLINE).await;
        assert_eq!(
            answered(&outcome),
            (
                StatusCode::OK,
                "search: search results; reviews: out of time"
            )
        );
        let frontend = budget(&outcome, "frontend");
        assert!(frontend <= 1000, "{frontend}");
        assert!(budget(&outcome, "reviews") + RESERVE.as_millis() <= frontend);
        assert_eq!(
            said(&outcome, "search"),
            [received(&outcome, "search").as_str(), "answers 200 OK"]
        );
        // Both ends hold the same deadline: whichever fires first stops the backend's work.
        let reviews = said(&outcome, "reviews");
        assert_eq!(reviews[0], received(&outcome, "reviews"));
        let by_backend = ["stopped (deadline passed)", "answers 504 Gateway Timeout"];
        assert!(
            reviews[1..] == by_backend || reviews[1..] == [HUNG_UP],
            "reviews is stopped by its deadline or by the frontend dropping the call: {reviews:#?}"
        );
        let frontend = said(&outcome, "frontend");
        assert!(
            frontend.contains(&"reviews: out of time")
                ^ frontend.contains(&"the call to reviews was cancelled (deadline passed)"),
            "{frontend:#?}"
        );
        assert_eq!(frontend.last(), Some(&"answers 200 OK"));
    })
    .await
}

/// A client that hangs up: the frontend's request and both backends' requests are dropped
/// after it left and nobody answers. `call_ends` are the ways the frontend may tell a call
/// ended (exactly one per call).
fn assert_hung_up(outcome: &Outcome, call_ends: &[&str]) {
    assert_eq!(outcome.client.as_ref().unwrap_err(), "hung up");
    let hung_up = index_of(outcome, "client: hangs up (every backend has the request)");
    let frontend = said(outcome, "frontend");
    assert_eq!(
        frontend[..2],
        [
            received(outcome, "frontend").as_str(),
            "fans out to reviews, recommendations"
        ]
    );
    let dropped = "the client hung up: the request's future was dropped";
    assert!(hung_up < index_of(outcome, &format!("frontend: {dropped}")));
    for backend in ["reviews", "recommendations"] {
        let ends: Vec<String> = call_ends
            .iter()
            .map(|end| format!("the call to {backend} {end}"))
            .collect();
        let ended = frontend
            .iter()
            .filter(|line| ends.iter().any(|end| end == *line));
        assert_eq!(ended.count(), 1, "{ends:?} once in {frontend:#?}");
        assert_eq!(
            said(outcome, backend),
            [received(outcome, backend).as_str(), HUNG_UP]
        );
        assert!(hung_up < index_of(outcome, &format!("{backend}: {HUNG_UP}")));
    }
    assert_eq!(frontend.len(), 5, "nothing else, no answer: {frontend:#?}");
}

const TOLD: &str = "was cancelled (explicit cancel: the nursery's future was dropped)";
const DROPPED: &str = "was dropped mid-flight";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fo04_a_client_hanging_up_stops_the_fan_out_and_wait_mode_tells_the_calls() {
    common::leak_checked(async move {
        assert_hung_up(&request(HANG_UP_WAIT).await, &[TOLD]);
    })
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn fo05_a_client_hanging_up_and_abort_mode_drops_the_calls() {
    common::leak_checked(async move {
        // One thread: no child is polled between the drop's cancel and its abort.
        assert_hung_up(&request(HANG_UP_ABORT).await, &[DROPPED]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fo06_abort_mode_on_a_multi_thread_runtime_drops_or_tells_each_call() {
    common::leak_checked(async move {
        // A child that another worker polls between the drop's cancel and its abort is told.
        assert_hung_up(&request(HANG_UP_ABORT).await, &[DROPPED, TOLD]);
    })
    .await
}
