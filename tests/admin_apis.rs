//! Admin APIs of issue 12 through real clients: ListOffsets MAX_TIMESTAMP (KIP-734),
//! DeleteRecords, DescribeLogDirs, topic configs (Incremental/AlterConfigs, DescribeConfigs).

mod common;

use std::process::Command;

use common::raw::{self, RawClient};
use common::Broker;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;
use kafka_protocol::ResponseError;

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

/// Fetch v11 of one partition: (error, log start offset in the response, first offset read).
fn fetch_at(client: &mut RawClient, topic: &str, offset: i64) -> (i16, i64, Option<i64>) {
    let mut p = fetch_request::FetchPartition::default();
    p.partition = 0;
    p.fetch_offset = offset;
    p.partition_max_bytes = 1 << 20;
    let mut t = fetch_request::FetchTopic::default();
    t.topic = TopicName(StrBytes::from_string(topic.into()));
    t.partitions = vec![p];
    let mut request = FetchRequest::default();
    request.replica_id = BrokerId(-1);
    request.max_wait_ms = 0;
    request.max_bytes = 50 << 20;
    request.topics = vec![t];
    let response = client.call(11, &request);
    let p = &response.responses[0].partitions[0];
    let records = raw::values(p.records.clone().unwrap_or_default());
    (
        p.error_code,
        p.log_start_offset,
        records.iter().map(|(o, _)| *o).find(|&o| o >= offset),
    )
}

/// DeleteRecords on the wire: (error, low watermark) of one partition.
fn delete_records(client: &mut RawClient, topic: &str, partition: i32, offset: i64) -> (i16, i64) {
    let mut p = delete_records_request::DeleteRecordsPartition::default();
    p.partition_index = partition;
    p.offset = offset;
    let mut t = delete_records_request::DeleteRecordsTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.into()));
    t.partitions = vec![p];
    let mut request = DeleteRecordsRequest::default();
    request.topics = vec![t];
    request.timeout_ms = 10_000;
    let response = client.call(2, &request);
    let p = &response.topics[0].partitions[0];
    (p.error_code, p.low_watermark)
}

fn log_segments(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

#[test]
fn delete_records_moves_the_log_start_for_consumers_and_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_in(tmp.path(), 2, &[]);
    let mut client = RawClient::connect(&broker.addr);
    let configs = [("segment.bytes", "20000"), ("retention.ms", "-1")];
    assert_eq!(client.create_topic_with("dr", 1, &configs), 0);
    let value = vec![7u8; 4000];
    for i in 0..60 {
        let batch = raw::batch(&[&value], None, Compression::None);
        assert_eq!(client.produce("dr", 0, batch, 1), (0, i));
    }
    let dir = broker.data_dir.join("dr-0");
    // acks=1 is answered from the journal: wait for the writes (and their rolls).
    let written_bytes = |dir: &std::path::Path| -> u64 {
        log_segments(dir)
            .iter()
            .map(|n| std::fs::metadata(dir.join(n)).map_or(0, |m| m.len()))
            .sum()
    };
    assert!(common::wait_until(
        std::time::Duration::from_secs(10),
        || written_bytes(&dir) >= 60 * 4000
    ));
    let before = log_segments(&dir);
    assert!(before.len() > 5, "{before:?}");

    // librdkafka's AdminClient: delete below 30, then the refusals.
    let out = step("delete_records", &broker.addr, "dr");
    assert_eq!(field(&out, "deleted"), ["30"]);
    assert_eq!(field(&out, "beyond"), ["OFFSET_OUT_OF_RANGE"]);
    assert_eq!(field(&out, "earliest"), ["30"]);
    // On the wire too (librdkafka refuses the unknown partition without asking).
    let unknown = ResponseError::UnknownTopicOrPartition.code();
    assert_eq!(delete_records(&mut client, "dr", 7, 0), (unknown, -1));
    assert_eq!(delete_records(&mut client, "nope", 0, 0), (unknown, -1));
    let out_of_range = ResponseError::OffsetOutOfRange.code();
    assert_eq!(delete_records(&mut client, "dr", 0, -2), (out_of_range, -1));
    // Moving it back is not a thing: the low watermark stays.
    assert_eq!(delete_records(&mut client, "dr", 0, 10), (0, 30));

    // Whole segments below 30 are gone; the one holding 30 stays.
    let after = log_segments(&dir);
    let first_base: i64 = after[0].trim_end_matches(".log").parse().unwrap();
    // Inside a segment, so only the checkpoint can bring it back after a restart.
    assert!(first_base > 0 && first_base < 30, "{after:?}");
    assert!(after.len() < before.len());

    // Consumers: below the start is out of range, and fetches carry the new log start.
    assert_eq!(fetch_at(&mut client, "dr", 10), (out_of_range, 30, None));
    assert_eq!(fetch_at(&mut client, "dr", 30), (0, 30, Some(30)));
    let out = step("consume_from_beginning", &broker.addr, "dr");
    assert_eq!(field(&out, "first"), ["30"]);

    // A restart keeps it (the start is inside a segment: only the checkpoint knows it).
    broker.stop();
    let broker = Broker::start_in(tmp.path(), 2, &[]);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.list_offset("dr", 0, -2), (0, 30));
    assert_eq!(fetch_at(&mut client, "dr", 29), (out_of_range, 30, None));
    let out = step("consume_from_beginning", &broker.addr, "dr");
    assert_eq!(field(&out, "first"), ["30"]);

    // kafka-python, offset -1: everything below the high watermark.
    let out = step("delete_to_high_watermark", &broker.addr, "dr");
    assert_eq!(field(&out, "earliest"), ["60"]);
    assert_eq!(client.list_offset("dr", 0, -2), (0, 60));
    // Producing goes on at the end.
    let batch = raw::batch(&[b"after"], None, Compression::None);
    assert_eq!(client.produce("dr", 0, batch, 1), (0, 60));
}

#[test]
fn followers_take_the_leaders_log_start_from_replica_fetches() {
    let cluster = common::cluster::Cluster::start(3, &[]);
    let out = step("replicated", &cluster.bootstrap(), "drr");
    assert_eq!(field(&out, "deleted"), ["30"]);
    // Every replica's log start is persisted at 30 when the answer comes: the leader's by
    // DeleteRecords, the followers' from the log_start_offset of the leader's fetch responses,
    // which they report back in their next fetch, which the leader waits for.
    let checkpoint = |i: usize| {
        std::fs::read_to_string(
            cluster
                .broker(i)
                .data_dir
                .join("drr-0/log-start-offset-checkpoint"),
        )
        .unwrap_or_default()
    };
    let moved = (0..3).all(|i| checkpoint(i) == "0\n30\n");
    assert!(
        moved,
        "checkpoints: {:?}",
        (0..3).map(checkpoint).collect::<Vec<_>>()
    );
}

/// The values of the line starting with `a b`, or None.
fn field2(lines: &[Vec<String>], a: &str, b: &str) -> Option<Vec<String>> {
    lines
        .iter()
        .find(|l| l.len() >= 2 && l[0] == a && l[1] == b)
        .map(|l| l[2..].to_vec())
}

#[test]
fn describe_log_dirs_lists_each_replica_with_its_size() {
    let broker = Broker::start(2);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic("dirs", 3), 0);
    let mut size_1 = 0u64;
    for _ in 0..5 {
        let batch = raw::batch(&[&[1u8; 1000]], None, Compression::None);
        size_1 += batch.len() as u64;
        assert_eq!(client.produce("dirs", 1, batch, 1).0, 0);
    }
    // The bytes of the batches (segment files are padded to whole pages by O_DIRECT writes;
    // the size is the log's, as Kafka's `Log.size`).
    let size = |p: i32| if p == 1 { size_1 } else { 0 };
    let out = step("describe_log_dirs", &broker.addr, "dirs");
    let data_dir = std::fs::canonicalize(&broker.data_dir).unwrap();
    let data_dir = data_dir.display().to_string();
    for case in ["all", "one", "missing"] {
        let dir = field2(&out, case, "dir").unwrap();
        assert_eq!(dir, ["0".to_string(), data_dir.clone()], "{case}");
        let space = field2(&out, case, "space").unwrap();
        let (total, usable): (i64, i64) = (space[0].parse().unwrap(), space[1].parse().unwrap());
        assert!(
            total > 0 && (0..=total).contains(&usable),
            "{case}: {space:?}"
        );
    }
    for p in 0..3 {
        let expected = [size(p).to_string(), "0".into(), "False".into()];
        assert_eq!(
            field2(&out, "all", &format!("dirs-{p}")).unwrap(),
            expected,
            "partition {p}"
        );
    }
    assert_eq!(
        field2(&out, "one", "dirs-1").unwrap()[0],
        size_1.to_string()
    );
    assert!(field2(&out, "one", "dirs-0").is_none());
    assert!(field2(&out, "one", "dirs-2").is_none());
    assert_eq!(
        out.iter().filter(|l| l[0] == "missing").count(),
        2,
        "only the directory lines: {out:?}"
    );
}

/// (key, value, source) of the `describe` lines of a configs step.
fn described(lines: &[Vec<String>], key: &str) -> (String, String) {
    let line = lines
        .iter()
        .find(|l| l.len() >= 4 && l[0] == "describe" && l[1] == key)
        .unwrap_or_else(|| panic!("{key} not described in {lines:?}"));
    (line[2].clone(), line[3].clone())
}

fn synonyms(lines: &[Vec<String>], key: &str) -> Vec<String> {
    lines
        .iter()
        .find(|l| l.len() >= 2 && l[0] == "synonyms" && l[1] == key)
        .unwrap_or_else(|| panic!("no synonyms of {key} in {lines:?}"))[2..]
        .to_vec()
}

#[test]
fn topic_configs_are_altered_described_applied_and_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("server.properties");
    std::fs::write(&config, "log.retention.check.interval.ms=100\n").unwrap();
    let flags = ["--config", config.to_str().unwrap()];
    let mut broker = Broker::start_in(tmp.path(), 2, &flags);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic("cfg", 1), 0);
    let big = vec![5u8; 4000];
    let batch = || raw::batch(&[&big], None, Compression::None);
    assert_eq!(client.produce("cfg", 0, batch(), 1), (0, 0));

    // confluent-kafka: SET two keys, then what must be refused, then describe.
    let out = step("configs_alter", &broker.addr, "cfg");
    assert_eq!(field(&out, "set"), ["NONE"]);
    assert_eq!(field(&out, "bad_value"), ["INVALID_CONFIG"]);
    assert_eq!(field(&out, "unknown_key"), ["INVALID_CONFIG"]);
    assert_eq!(field(&out, "unknown_topic"), ["UNKNOWN_TOPIC_OR_PART"]);
    assert_eq!(field(&out, "append_long"), ["INVALID_CONFIG"]);
    // Broker configs are static here, as Kafka's read-only ones.
    assert_eq!(field(&out, "broker"), ["INVALID_REQUEST"]);
    assert_eq!(field(&out, "validate_only"), ["NONE"]);
    let dynamic = "DYNAMIC_TOPIC_CONFIG".to_string();
    assert_eq!(
        described(&out, "retention.ms"),
        ("60000".into(), dynamic.clone())
    );
    assert_eq!(
        described(&out, "max.message.bytes"),
        ("1000".into(), dynamic.clone())
    );
    // validate_only changed nothing.
    assert_eq!(
        described(&out, "retention.bytes"),
        ("-1".into(), "DEFAULT_CONFIG".into())
    );
    // kafka-python with include_synonyms: the override, then the broker key it overrides.
    assert_eq!(
        synonyms(&out, "retention.ms"),
        [
            "retention.ms:DYNAMIC_TOPIC_CONFIG",
            "log.retention.ms:DEFAULT_CONFIG"
        ]
    );

    // The running partition takes the smaller max.message.bytes at once.
    let too_large = ResponseError::MessageTooLarge.code();
    assert_eq!(client.produce("cfg", 0, batch(), 1).0, too_large);

    // DELETE: back to the broker default.
    let out = step("configs_delete", &broker.addr, "cfg");
    assert_eq!(field(&out, "delete"), ["NONE"]);
    assert_eq!(
        described(&out, "retention.ms"),
        ("604800000".into(), "DEFAULT_CONFIG".into())
    );

    // A topic with many segments and no retention; kafka-python's AlterConfigs (which
    // replaces every override, so it re-sends those it describes as DYNAMIC_TOPIC_CONFIG) sets
    // retention.bytes: the running partition deletes its old segments.
    let configs = [("segment.bytes", "20000"), ("retention.ms", "-1")];
    assert_eq!(client.create_topic_with("roll", 1, &configs), 0);
    for i in 0..60 {
        assert_eq!(client.produce("roll", 0, batch(), 1), (0, i));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(client.list_offset("roll", 0, -2), (0, 0));
    let out = step("configs_retention_bytes", &broker.addr, "roll");
    assert_eq!(field(&out, "result"), ["{'topic':", "{'roll':", "'OK'}}"]);
    assert!(
        common::wait_until(std::time::Duration::from_secs(20), || client
            .list_offset("roll", 0, -2)
            .1
            > 0),
        "retention.bytes set at run time deleted nothing"
    );
    let out = step("configs_describe", &broker.addr, "roll");
    assert_eq!(
        described(&out, "retention.bytes"),
        ("60000".into(), dynamic.clone())
    );
    assert_eq!(
        described(&out, "segment.bytes"),
        ("20000".into(), dynamic.clone())
    );
    assert_eq!(
        described(&out, "retention.ms"),
        ("-1".into(), dynamic.clone())
    );

    // Batches written under a max.message.bytes above the broker's message.max.bytes must stay
    // readable: that limit may rise but not fall back.
    assert_eq!(client.create_topic("big", 1), 0);
    let out = step("configs_raise_then_lower", &broker.addr, "big");
    assert_eq!(field(&out, "raise"), ["NONE"]);
    assert_eq!(field(&out, "lower"), ["INVALID_CONFIG"]);
    assert_eq!(field(&out, "delete"), ["INVALID_CONFIG"]);
    assert_eq!(field(&out, "raise_more"), ["NONE"]);
    // Raised above the bound the log opened with: the running log takes it at once.
    let huge = vec![6u8; 1_500_000];
    let huge_batch = || raw::batch(&[&huge], None, Compression::None);
    assert_eq!(client.produce("big", 0, huge_batch(), 1), (0, 0));

    // A restart keeps every override (they live in the coordination log).
    broker.stop();
    let broker = Broker::start_in(tmp.path(), 2, &flags);
    let out = step("configs_describe", &broker.addr, "cfg");
    assert_eq!(
        described(&out, "max.message.bytes"),
        ("1000".into(), dynamic.clone())
    );
    assert_eq!(
        described(&out, "retention.ms"),
        ("604800000".into(), "DEFAULT_CONFIG".into())
    );
    let out = step("configs_describe", &broker.addr, "roll");
    assert_eq!(
        described(&out, "retention.bytes"),
        ("60000".into(), dynamic)
    );
    let mut client = RawClient::connect(&broker.addr);
    // The large batch written before the restart reads back; more can be written.
    assert_eq!(fetch_at(&mut client, "big", 0), (0, 0, Some(0)));
    assert_eq!(client.produce("big", 0, huge_batch(), 1), (0, 1));
    // The 4000-byte batch written before max.message.bytes went down to 1000 is still there:
    // the limit is for produce, not for reading what the log holds.
    assert_eq!(client.list_offset("cfg", 0, -1), (0, 1));
    assert_eq!(fetch_at(&mut client, "cfg", 0), (0, 0, Some(0)));
    assert_eq!(client.produce("cfg", 0, batch(), 1).0, too_large);
}

/// DescribeConfigs v4 of one topic key on one broker: `Ok((value, source))`, or `Err` with
/// the result when the broker answered an error (one that has not learned of the topic yet
/// answers UNKNOWN_TOPIC_OR_PARTITION).
fn describe_on(addr: &str, topic: &str, key: &str) -> Result<(Option<String>, i8), String> {
    let mut resource = describe_configs_request::DescribeConfigsResource::default();
    resource.resource_type = 2;
    resource.resource_name = StrBytes::from_string(topic.into());
    resource.configuration_keys = Some(vec![StrBytes::from_string(key.into())]);
    let mut request = DescribeConfigsRequest::default();
    request.resources = vec![resource];
    let response = RawClient::connect(addr).call(4, &request);
    let result = &response.results[0];
    if result.error_code != 0 {
        return Err(format!("{result:?}"));
    }
    let entry = &result.configs[0];
    Ok((
        entry.value.as_ref().map(|v| v.to_string()),
        entry.config_source,
    ))
}

#[test]
fn a_topic_config_change_reaches_every_broker_of_a_cluster() {
    let cluster = common::cluster::Cluster::start(3, &[]);
    let first = cluster.broker(0).addr.clone();
    assert!(
        common::wait_until(std::time::Duration::from_secs(20), || RawClient::connect(
            &first
        )
        .create_topic("spread", 3)
            == 0),
        "topic not created"
    );
    // IncrementalAlterConfigs on the wire, to broker 0.
    let mut change = incremental_alter_configs_request::AlterableConfig::default();
    change.name = StrBytes::from_string("retention.ms".into());
    change.config_operation = 0;
    change.value = Some(StrBytes::from_string("123456".into()));
    let mut resource = incremental_alter_configs_request::AlterConfigsResource::default();
    resource.resource_type = 2;
    resource.resource_name = StrBytes::from_string("spread".into());
    resource.configs = vec![change];
    let mut request = IncrementalAlterConfigsRequest::default();
    request.resources = vec![resource];
    let response = RawClient::connect(&first).call(1, &request);
    assert_eq!(response.responses[0].error_code, 0, "{response:?}");
    // Every broker answers from its own copy of the coordination state.
    for i in 0..3 {
        let addr = cluster.broker(i).addr.clone();
        assert!(
            common::wait_until(std::time::Duration::from_secs(10), || describe_on(
                &addr,
                "spread",
                "retention.ms"
            ) == Ok((
                Some("123456".into()),
                1
            ))),
            "broker {i} never saw the change: {:?}",
            describe_on(&addr, "spread", "retention.ms")
        );
    }
}
