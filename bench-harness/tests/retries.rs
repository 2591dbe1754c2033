//! The harness rides out what a Kafka cluster does while leaders are elected or connections
//! drop, as any Kafka client does: real binaries, real sockets, the harness's own null broker
//! playing the troubled cluster.

mod common;

use common::{num, run, NullBroker};

/// `e2e --create-topic` against a broker still electing the new topic's leaders: Metadata first
/// has no leaders, then names one that still answers NOT_LEADER_OR_FOLLOWER for a while (what
/// made Apache Kafka fail this command with `ListOffsets w3x-0: error 6`), and leadership keeps
/// "changing" afterwards (every 11th partition answer refused). Every record still arrives once,
/// and the retries are reported by request and reason.
#[test]
fn e2e_with_create_topic_rides_out_a_leader_election() {
    let broker = NullBroker::start(&[
        "--echo",
        "--leader-not-available-after-create-ms",
        "300",
        "--not-leader-after-create-ms",
        "1500",
        "--not-leader-every",
        "11",
    ]);
    let r = run(
        "e2e",
        &broker.addr,
        &[
            "--create-topic",
            "--topic",
            "elect",
            "--partitions",
            "4",
            "--message-size",
            "100",
            "--messages",
            "4000",
            "--rate",
            "4000",
            "--idle-timeout-secs",
            "5",
        ],
    );
    let j = r.ok();
    assert_eq!(num(j, &["produce", "msgs"]), 4000, "{}", r.stdout());
    assert_eq!(num(j, &["consume", "msgs"]), 4000, "{}", r.stdout());
    assert_eq!(num(j, &["e2e_latency", "count"]), 4000);
    let by = |op: &str| num(j, &["retries", "by_request", op, "NOT_LEADER_OR_FOLLOWER"]);
    assert!(by("list_offsets") > 0, "{j:#}");
    assert!(by("produce") > 0, "{j:#}");
    assert!(by("fetch") > 0, "{j:#}");
    assert!(
        num(
            j,
            &["retries", "by_request", "metadata", "LEADER_NOT_AVAILABLE"]
        ) > 0
    );
    // A retried batch is counted once (msgs above) and its retries appear with the figures.
    assert_eq!(num(j, &["produce", "retries"]), by("produce"));
    assert!(num(j, &["retries", "total"]) >= by("list_offsets") + by("produce") + by("fetch"));
    let out = r.stdout();
    assert!(
        out.contains("retries: ") && out.contains("NOT_LEADER_OR_FOLLOWER"),
        "{out}"
    );
}

/// Connections that close under load (every 30th Produce or Fetch request is dropped unread
/// and its connection closed): producers and consumers reconnect and resend, nothing is lost
/// or counted twice.
#[test]
fn e2e_rides_out_closed_connections() {
    let broker = NullBroker::start(&["--echo", "--close-every", "30"]);
    let r = run(
        "e2e",
        &broker.addr,
        &[
            "--topic",
            "drops",
            "--partitions",
            "4",
            "--message-size",
            "100",
            "--messages",
            "10000",
            "--rate",
            "10000",
            "--fetch-in-flight",
            "2",
            "--idle-timeout-secs",
            "5",
        ],
    );
    let j = r.ok();
    assert_eq!(num(j, &["produce", "msgs"]), 10_000, "{}", r.stdout());
    assert_eq!(num(j, &["consume", "msgs"]), 10_000, "{}", r.stdout());
    assert_eq!(num(j, &["e2e_latency", "count"]), 10_000);
    let closed = |op: &str| num(j, &["retries", "by_request", op, "connection_closed"]);
    assert!(closed("produce") > 0, "{j:#}");
    assert!(closed("fetch") > 0, "{j:#}");
}

/// Retrying is bounded: a leader that never comes fails the run after --retry-timeout-secs,
/// saying what kept failing.
#[test]
fn retries_give_up_after_the_retry_timeout() {
    let broker = NullBroker::start(&["--not-leader-after-create-ms", "600000"]);
    let started = std::time::Instant::now();
    let r = run(
        "produce",
        &broker.addr,
        &[
            "--create-topic",
            "--topic",
            "never",
            "--messages",
            "100",
            "--retry-timeout-secs",
            "1",
        ],
    );
    assert!(!r.output.status.success());
    let err = r.stderr();
    assert!(
        err.contains("NOT_LEADER_OR_FOLLOWER") && err.contains("--retry-timeout-secs"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

/// Leadership moves to another broker half a second after the topic is created: producers and
/// consumers refresh their metadata, connect to the new leader and go on there. Everything
/// measured (after a 1 s warm-up) was served by the new leader, since the old one refuses.
#[test]
fn producers_and_consumers_follow_a_leader_to_another_broker() {
    let new_leader = NullBroker::start(&[]);
    let old_leader = NullBroker::start(&[
        "--leader-moves-to",
        &new_leader.addr,
        "--leader-moves-after-ms",
        "500",
    ]);
    let timed = [
        "--create-topic",
        "--partitions",
        "4",
        "--warmup-secs",
        "1",
        "--duration-secs",
        "1",
    ];

    let mut args = vec![
        "--topic",
        "moving-p",
        "--rate",
        "5000",
        "--message-size",
        "100",
    ];
    args.extend_from_slice(&timed);
    let r = run("produce", &old_leader.addr, &args);
    let j = r.ok();
    assert_eq!(num(j, &["produce", "msgs"]), 5000, "{}", r.stdout());
    assert!(
        num(
            j,
            &["retries", "by_request", "produce", "NOT_LEADER_OR_FOLLOWER"]
        ) > 0
    );

    let mut args = vec!["--topic", "moving-c", "--from", "beginning"];
    args.extend_from_slice(&timed);
    let r = run("consume", &old_leader.addr, &args);
    let j = r.ok();
    assert!(num(j, &["consume", "msgs"]) > 0, "{}", r.stdout());
    assert!(
        num(
            j,
            &["retries", "by_request", "fetch", "NOT_LEADER_OR_FOLLOWER"]
        ) > 0
    );
}
