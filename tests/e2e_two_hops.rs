#![cfg(feature = "tower")]
//! End to end over loopback (real time, SPEC D1): `examples/two_hops.rs`, client -> A -> B.
//! B sees the budget A had left, and B's work stops when A's deadline passes. Assertions are
//! on outcomes and order; time only bounds a hang.

#[path = "../examples/two_hops.rs"]
#[allow(dead_code)]
mod two_hops;

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use two_hops::{A_WORK, B_STEPS, run};

const HANG_BOUND: Duration = Duration::from_secs(30);

async fn bounded(budget: Duration) -> two_hops::Outcome {
    tokio::time::timeout(HANG_BOUND, run(budget))
        .await
        .expect("hang: the two-hop call did not finish within 30 s")
}

fn without_numbers(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|line| {
            line.split(|c: char| c.is_ascii_digit())
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d01_two_hops_with_a_generous_budget_b_finishes() {
    common::leak_checked(async move {
        let outcome = bounded(Duration::from_secs(5)).await;
        assert_eq!(outcome.servers_failed, None);
        let (status, body) = outcome.client.expect("the client got an answer");
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "A got \"B: done\"")
        );
        let (a, b) = (outcome.a_budget_ms.unwrap(), outcome.b_budget_ms.unwrap());
        assert!(a <= 5000, "A never gets more than the client had: {a}");
        assert!(
            b + A_WORK.as_millis() <= a,
            "B gets what A had left: {b} after {a}"
        );
        assert_eq!(
            without_numbers(&outcome.trace),
            [
                "client: calling A with a budget of ",
                "A: received a budget of ",
                "B: received a budget of ",
                "B: finished all ",
                "A: B answered ",
                "client: ",
            ]
        );
        assert_eq!(outcome.trace[3], format!("B: finished all {B_STEPS} steps"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d01_two_hops_with_a_tight_budget_as_deadline_stops_b() {
    common::leak_checked(async move {
        let outcome = bounded(Duration::from_millis(300)).await;
        assert_eq!(outcome.servers_failed, None);
        let (status, body) = outcome
            .client
            .expect("the answer came back before the client gave up");
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(body, "A got \"B: deadline passed\"");
        let (a, b) = (outcome.a_budget_ms.unwrap(), outcome.b_budget_ms.unwrap());
        assert!(a <= 300, "A never gets more than the client had: {a}");
        assert!(
            b + A_WORK.as_millis() <= a,
            "B gets what A had left: {b} after {a}"
        );
        assert_eq!(
            without_numbers(&outcome.trace),
            [
                "client: calling A with a budget of ",
                "A: received a budget of ",
                "B: received a budget of ",
                "B: stopped after ",
                "A: B answered ",
                "client: ",
            ]
        );
        let stopped = &outcome.trace[3];
        assert!(stopped.ends_with("steps: deadline passed"), "{stopped}");
        assert_eq!(outcome.trace[4], "A: B answered 504 Gateway Timeout");
    })
    .await
}
