//! A broker's limit on one record batch (Kafka's `message.max.bytes`, 1 MiB by default) against
//! the max-rate workloads' 1 MiB batches.

mod common;

use common::{num, run, NullBroker};

const LIMIT: &str = "100000";

fn max_rate_produce(addr: &str) -> common::Run {
    run(
        "produce",
        addr,
        &[
            "--topic",
            "big",
            "--partitions",
            "2",
            "--message-size",
            "1000",
            "--messages",
            "5000",
            "--batch-size",
            "1048576",
            "--max-request-bytes",
            "8388608",
        ],
    )
}

/// The limit is read with DescribeConfigs before the run and the batch size capped to fit it:
/// every record is acknowledged and the result says what was used and why.
#[test]
fn batch_size_is_capped_to_the_brokers_limit() {
    let broker = NullBroker::start(&["--message-max-bytes", LIMIT]);
    let r = max_rate_produce(&broker.addr);
    let j = r.ok();
    assert_eq!(num(j, &["produce", "msgs"]), 5000, "{}", r.stdout());
    assert_eq!(num(j, &["batch_limit", "max_message_bytes"]), 100_000);
    assert_eq!(num(j, &["batch_limit", "batch_size_requested"]), 1_048_576);
    let used = num(j, &["batch_limit", "batch_size_used"]);
    assert!(used > 50_000 && used + 61 <= 100_000, "{used}");
    assert_eq!(
        j["batch_limit"]["source"].as_str(),
        Some("max.message.bytes of topic big")
    );
    assert!(r.stdout().contains("capped to"), "{}", r.stdout());
}

/// A broker that does not say its limit refuses the batch with MESSAGE_TOO_LARGE: the run stops
/// and says which broker setting to raise and how big the refused batch was.
#[test]
fn message_too_large_says_which_limit_to_raise() {
    let broker = NullBroker::start(&["--message-max-bytes", LIMIT, "--no-describe-configs"]);
    let r = max_rate_produce(&broker.addr);
    assert!(!r.output.status.success(), "{}", r.stdout());
    let err = r.stderr();
    for want in [
        "MESSAGE_TOO_LARGE (10)",
        "message.max.bytes",
        "max.message.bytes",
        "--batch-size 1048576",
    ] {
        assert!(err.contains(want), "missing {want:?} in: {err}");
    }
}
