//! Admin APIs of issue 12 through real clients: ListOffsets MAX_TIMESTAMP (KIP-734),
//! DeleteRecords, DescribeLogDirs.

mod common;

use std::process::Command;

use common::raw::RawClient;
use common::Broker;

/// Runs one step of `tests/python/admin_apis.py`; returns its `key value...` lines.
fn step(name: &str, bootstrap: &str, topic: &str) -> Vec<Vec<String>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/admin_apis.py");
    let output = Command::new("python3")
        .args([script, name, bootstrap, topic])
        .output()
        .expect("python3 with confluent-kafka and kafka-python");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "step {name} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// The values printed after `key`.
fn field(lines: &[Vec<String>], key: &str) -> Vec<String> {
    lines
        .iter()
        .find(|l| l.first().map(String::as_str) == Some(key))
        .unwrap_or_else(|| panic!("no {key} line in {lines:?}"))[1..]
        .to_vec()
}

#[test]
fn list_offsets_max_timestamp_finds_the_record_with_the_largest_timestamp() {
    let broker = Broker::start(2);
    assert_eq!(RawClient::connect(&broker.addr).create_topic("maxts", 1), 0);
    let out = step("max_timestamp", &broker.addr, "maxts");
    assert_eq!(field(&out, "empty"), ["-1", "-1"]);
    // The first record carrying the largest timestamp, not the last offset.
    assert_eq!(field(&out, "max_timestamp"), ["1", "5000"]);
    assert_eq!(field(&out, "latest"), ["5"]);
}
