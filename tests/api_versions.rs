//! The README's API table is what the broker answers to ApiVersions, and what clients make of it.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::raw::RawClient;
use common::Broker;
use kafka_protocol::messages::ApiVersionsRequest;
use kafka_protocol::protocol::StrBytes;

/// `key -> (name, min, max)` from the table between the `api-versions` markers of README.md.
fn readme_table() -> BTreeMap<i16, (String, i16, i16)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let begin = readme
        .find("<!-- api-versions: begin -->")
        .expect("README has the api-versions table");
    let end = readme[begin..]
        .find("<!-- api-versions: end -->")
        .expect("the table ends")
        + begin;
    let mut table = BTreeMap::new();
    for line in readme[begin..end].lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| name | key | min | max | notes |" -> ["", name, key, min, max, notes, ""]
        if cells.len() < 6 {
            continue;
        }
        let Ok(key) = cells[2].parse::<i16>() else {
            continue; // the header and separator rows
        };
        let min = cells[3].parse().expect("min version is a number");
        let max = cells[4].parse().expect("max version is a number");
        let previous = table.insert(key, (cells[1].to_string(), min, max));
        assert!(previous.is_none(), "api key {key} is listed twice");
    }
    assert!(!table.is_empty(), "the README table has no rows");
    table
}

#[test]
fn readme_api_table_is_what_api_versions_answers() {
    let broker = Broker::start(1);
    let mut client = RawClient::connect(&broker.addr);
    let mut request = ApiVersionsRequest::default();
    request.client_software_name = StrBytes::from_static_str("api-versions-test");
    request.client_software_version = StrBytes::from_static_str("1");
    let response = client.call(3, &request);
    assert_eq!(response.error_code, 0);
    let answered: BTreeMap<i16, (i16, i16)> = response
        .api_keys
        .iter()
        .map(|k| (k.api_key, (k.min_version, k.max_version)))
        .collect();
    assert_eq!(
        answered.len(),
        response.api_keys.len(),
        "an api key is answered twice"
    );
    let documented: BTreeMap<i16, (i16, i16)> = readme_table()
        .into_iter()
        .map(|(key, (_, min, max))| (key, (min, max)))
        .collect();
    assert_eq!(
        documented, answered,
        "README.md's api-versions table (left) differs from the broker's ApiVersions (right)"
    );
    // The names in the table are Kafka's for those keys.
    for (key, (name, _, _)) in readme_table() {
        let api = kafka_protocol::messages::ApiKey::try_from(key).expect("a known api key");
        assert_eq!(format!("{api:?}"), name, "api key {key}");
    }
}

/// kafka-python guesses the broker's Kafka version from ApiVersions and then picks request
/// versions by that guess: the ranges must land on a real Kafka release.
#[test]
fn kafka_python_infers_a_real_kafka_version() {
    let broker = Broker::start(1);
    let script = r#"
import sys
from kafka import KafkaAdminClient
admin = KafkaAdminClient(bootstrap_servers=sys.argv[1], client_id="api-versions-test")
print("version", ".".join(map(str, admin._client.check_version())))
admin.close()
"#;
    let output = Command::new("python3")
        .args(["-c", script, &broker.addr])
        .output()
        .expect("python3 with kafka-python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.lines().any(|l| l == "version 3.2"),
        "kafka-python inferred {stdout:?}"
    );
}
