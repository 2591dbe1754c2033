//! Operator APIs on partitions and brokers through real admin clients: partition
//! reassignments (kafka-python), preferred and unclean leader elections (kafka-python and
//! confluent-kafka), AlterReplicaLogDirs (kafka-python), dynamic broker configs (kafka-python
//! and confluent-kafka). Reassignments and elections run in a three-broker cluster.

mod common;

use std::process::Command;
use std::time::Duration;

use common::cluster::{await_metadata, partitions_of, Cluster};
use common::raw::{self, RawClient};
use common::Broker;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;
use kafka_protocol::ResponseError;

/// Runs one step of `tests/python/partition_admin.py`; returns its `key value...` lines.
fn step(name: &str, bootstrap: &str, topic: &str, arg: &str) -> Vec<Vec<String>> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/partition_admin.py"
    );
    let output = Command::new("python3")
        .args([script, name, bootstrap, topic, arg])
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

/// The values printed after the line starting with `keys`.
fn field(lines: &[Vec<String>], keys: &[&str]) -> Vec<String> {
    lines
        .iter()
        .find(|l| l.len() >= keys.len() && l.iter().zip(keys).all(|(a, b)| a == b))
        .unwrap_or_else(|| panic!("no {keys:?} line in {lines:?}"))[keys.len()..]
        .to_vec()
}

fn create_topic(cluster: &Cluster, name: &str, replication_factor: i16) {
    let addr = cluster.broker(0).addr.clone();
    assert!(
        common::wait_until(Duration::from_secs(20), || {
            RawClient::connect(&addr)
                .create_topic_rf(name, 1, replication_factor)
                .0
                == 0
        }),
        "topic {name} not created"
    );
}

fn partition_dir(cluster: &Cluster, node: i32, topic: &str) -> std::path::PathBuf {
    cluster
        .root
        .join(format!("data-{node}"))
        .join(format!("{topic}-0"))
}

#[test]
fn a_reassignment_moves_a_partition_while_an_idempotent_producer_runs() {
    let cluster = Cluster::start(3, &[]);
    create_topic(&cluster, "moving", 1);
    let addr = cluster.broker(0).addr.clone();
    let (m, _) = await_metadata(&addr, Duration::from_secs(10), "the topic's leader", |m| {
        partitions_of(m, "moving").is_some_and(|ps| ps[0].leader >= 0)
    });
    let source = partitions_of(&m, "moving").unwrap()[0].replicas[0];
    let target: Vec<i32> = (0..3).filter(|&b| b != source).collect();
    let target_arg = target
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(",");

    let out = step("reassign", &cluster.bootstrap(), "moving", &target_arg);
    assert_eq!(field(&out, &["alter"]), ["NONE"]);
    // Listed while in progress: replicas = target + removing, adding = target.
    let mut replicas = target.clone();
    replicas.push(source);
    let join = |ids: &[i32]| {
        ids.iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    assert_eq!(
        field(&out, &["in_progress", "moving-0"]),
        [join(&replicas), target_arg.clone(), source.to_string()]
    );
    assert_eq!(field(&out, &["completed"]), Vec::<String>::new());
    eprintln!("reassignment: {:?}", field(&out, &["took_ms"]));
    assert_eq!(field(&out, &["failed"]), ["0"]);
    let acked: usize = field(&out, &["acked"])[0].parse().unwrap();
    assert!(acked >= 1000, "{out:?}");
    assert_eq!(field(&out, &["duplicates"]), ["0"]);
    assert_eq!(field(&out, &["missing"]), ["0"]);

    // Every broker describes the new replicas, all in sync, led by one of them.
    for i in 0..3 {
        let addr = cluster.broker(i).addr.clone();
        await_metadata(&addr, Duration::from_secs(10), "the new replicas", |m| {
            partitions_of(m, "moving").is_some_and(|ps| {
                let mut isr = ps[0].isr.clone();
                isr.sort_unstable();
                ps[0].replicas == target && isr == target && target.contains(&ps[0].leader)
            })
        });
    }
    // The old replica's files are gone; the new replicas have theirs.
    assert!(
        common::wait_until(Duration::from_secs(10), || !partition_dir(
            &cluster, source, "moving"
        )
        .exists()),
        "the removed replica's log was not deleted"
    );
    for &b in &target {
        assert!(partition_dir(&cluster, b, "moving").exists());
    }
}

#[test]
fn preferred_leader_election_restores_the_first_replica_as_leader() {
    let mut cluster = Cluster::start(3, &[]);
    create_topic(&cluster, "elect", 3);
    let addr = cluster.broker(0).addr.clone();
    let (m, _) = await_metadata(&addr, Duration::from_secs(10), "the topic", |m| {
        partitions_of(m, "elect").is_some_and(|ps| ps[0].leader >= 0)
    });
    let p = partitions_of(&m, "elect").unwrap()[0].clone();
    // Same replicas, another order: the second replica becomes the preferred one; nothing
    // moves, so no reassignment stays in progress.
    let (first, second, third) = (p.replicas[0], p.replicas[1], p.replicas[2]);
    let order = format!("{second},{first},{third}");
    let out = step("reorder", &cluster.bootstrap(), "elect", &order);
    assert_eq!(field(&out, &["reorder"]), ["NONE"]);
    assert_eq!(field(&out, &["listed"]), ["0"]);
    // kafka-python's name for INVALID_REPLICA_ASSIGNMENT.
    let invalid = "INVALID_REPLICATION_ASSIGNMENT";
    assert_eq!(field(&out, &["duplicate"]), [invalid]);
    assert_eq!(field(&out, &["unknown_broker"]), [invalid]);
    assert_eq!(field(&out, &["empty"]), ["NO_REASSIGNMENT_IN_PROGRESS"]);
    assert_eq!(
        field(&out, &["unknown_topic"]),
        ["UNKNOWN_TOPIC_OR_PARTITION"]
    );
    await_metadata(&addr, Duration::from_secs(10), "the new order", |m| {
        partitions_of(m, "elect").is_some_and(|ps| ps[0].replicas[0] == second)
    });
    assert_eq!(
        partitions_of(&common::cluster::metadata(&addr), "elect").unwrap()[0].leader,
        first,
        "a new order alone does not move leadership"
    );

    // kafka-python elects the preferred replica; confluent-kafka then finds nothing to do.
    let out = step("elect", &cluster.bootstrap(), "elect", "first");
    assert_eq!(field(&out, &["first", "kafka_python", "elect-0"]), ["NONE"]);
    assert_eq!(
        field(&out, &["first", "confluent", "elect-0"]),
        ["ELECTION_NOT_NEEDED"]
    );
    for i in 0..3 {
        let addr = cluster.broker(i).addr.clone();
        await_metadata(
            &addr,
            Duration::from_secs(10),
            "the preferred leader",
            |m| partitions_of(m, "elect").is_some_and(|ps| ps[0].leader == second),
        );
    }
    let out = step("elect_refusals", &cluster.bootstrap(), "elect", "");
    let unknown = "UNKNOWN_TOPIC_OR_PARTITION";
    assert_eq!(
        field(&out, &["preferred_unknown", "no-such-topic-0"]),
        [unknown]
    );
    assert_eq!(field(&out, &["preferred_unknown", "elect-5"]), [unknown]);
    assert_eq!(
        field(&out, &["unclean", "elect-0"]),
        ["ELECTION_NOT_NEEDED"]
    );

    // The preferred leader dies: leadership moves; electing it back is refused until it is in
    // sync again.
    cluster.kill9(second as usize);
    let survivor = cluster.broker(first as usize).addr.clone();
    await_metadata(&survivor, Duration::from_secs(10), "a new leader", |m| {
        partitions_of(m, "elect")
            .is_some_and(|ps| ps[0].leader != second && !ps[0].isr.contains(&second))
    });
    let out = step("elect", &survivor, "elect", "dead");
    assert_eq!(
        field(&out, &["dead", "kafka_python", "elect-0"]),
        ["PREFERRED_LEADER_NOT_AVAILABLE"]
    );
    cluster.restart(second as usize);
    await_metadata(
        &survivor,
        Duration::from_secs(30),
        "the restarted replica in sync",
        |m| partitions_of(m, "elect").is_some_and(|ps| ps[0].isr.contains(&second)),
    );
    let out = step("elect", &cluster.bootstrap(), "elect", "back");
    assert_eq!(field(&out, &["back", "kafka_python", "elect-0"]), ["NONE"]);
    await_metadata(
        &survivor,
        Duration::from_secs(10),
        "the preferred leader back",
        |m| partitions_of(m, "elect").is_some_and(|ps| ps[0].leader == second),
    );
}

#[test]
fn alter_replica_log_dirs_answers_for_the_one_data_directory() {
    let broker = Broker::start(1);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic("dirs", 1), 0);
    let out = step("log_dirs", &broker.addr, "dirs", "0");
    assert_eq!(field(&out, &["same_dir"]), ["NoError"]);
    assert_eq!(field(&out, &["other_dir"]), ["LogDirNotFoundError"]);
    assert_eq!(
        field(&out, &["unknown_topic"]),
        ["UnknownTopicOrPartitionError"]
    );
}

/// IncrementalAlterConfigs SET of one key of broker resource `name`.
fn set_broker_config(name: &str, key: &str, value: &str) -> IncrementalAlterConfigsRequest {
    let mut change = incremental_alter_configs_request::AlterableConfig::default();
    change.name = StrBytes::from_string(key.into());
    change.config_operation = 0;
    change.value = Some(StrBytes::from_string(value.into()));
    let mut resource = incremental_alter_configs_request::AlterConfigsResource::default();
    resource.resource_type = 4;
    resource.resource_name = StrBytes::from_string(name.into());
    resource.configs = vec![change];
    let mut request = IncrementalAlterConfigsRequest::default();
    request.resources = vec![resource];
    request
}

#[test]
fn dynamic_broker_configs_are_set_described_applied_and_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_in(tmp.path(), 2, &[]);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic("limits", 1), 0);
    let big = vec![5u8; 4000];
    let batch = || raw::batch(&[&big], None, Compression::None);
    assert_eq!(client.produce("limits", 0, batch(), 1), (0, 0));

    // The cluster-wide default (resource ""), on the wire: neither Python client names it.
    let response = RawClient::connect(&broker.addr)
        .call(1, &set_broker_config("", "message.max.bytes", "2000"));
    assert_eq!(response.responses[0].error_code, 0, "{response:?}");
    // Above the static message.max.bytes: refused (logs read batches with that bound).
    let response = RawClient::connect(&broker.addr)
        .call(1, &set_broker_config("", "message.max.bytes", "999999999"));
    assert_eq!(
        response.responses[0].error_code,
        ResponseError::InvalidConfig.code()
    );

    let out = step("broker_configs", &broker.addr, "", "0");
    assert_eq!(field(&out, &["set_retention"]), ["OK"]);
    assert_eq!(
        field(&out, &["set_read_only"]),
        ["[Error", "42]", "InvalidRequestError"]
    );
    assert_eq!(
        field(&out, &["bad_value"]),
        ["[Error", "40]", "InvalidConfigurationError"]
    );
    assert_eq!(
        field(&out, &["describe", "log.retention.ms"]),
        [
            "120000",
            "DYNAMIC_BROKER_CONFIG",
            "False",
            "log.retention.ms:DYNAMIC_BROKER_CONFIG",
            "log.retention.ms:STATIC_BROKER_CONFIG"
        ]
    );
    assert_eq!(
        field(&out, &["describe", "broker.id"])[..3],
        ["0", "STATIC_BROKER_CONFIG", "True"]
    );
    assert_eq!(field(&out, &["set_segment"]), ["NONE"]);
    assert_eq!(
        field(&out, &["confluent", "log.segment.bytes"]),
        ["2097152", "DYNAMIC_BROKER_CONFIG", "False"]
    );
    assert_eq!(
        field(&out, &["confluent", "message.max.bytes"]),
        ["2000", "DYNAMIC_DEFAULT_BROKER_CONFIG", "False"]
    );
    assert_eq!(
        field(&out, &["confluent", "log.retention.ms"]),
        ["120000", "DYNAMIC_BROKER_CONFIG", "False"]
    );

    // Applied at once: a 4000-byte batch is now too large for the running partition.
    let too_large = ResponseError::MessageTooLarge.code();
    assert_eq!(client.produce("limits", 0, batch(), 1).0, too_large);

    // Persisted by the coordination quorum: the same after a restart.
    drop(client);
    broker.stop();
    let broker = Broker::start_in(tmp.path(), 2, &[]);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.produce("limits", 0, batch(), 1).0, too_large);
    let out = step("broker_configs_reset", &broker.addr, "", "0");
    assert_eq!(field(&out, &["reset"]), ["OK"]);
    assert_eq!(
        field(&out, &["describe", "log.retention.ms"]),
        ["604800000", "STATIC_BROKER_CONFIG"]
    );
}

/// Runs brokerctl; returns (success, stdout, stderr).
fn brokerctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_brokerctl"))
        .args(args)
        .output()
        .expect("run brokerctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn brokerctl_ok(args: &[&str]) -> String {
    let (ok, stdout, stderr) = brokerctl(args);
    assert!(ok, "brokerctl {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

#[test]
fn brokerctl_reassigns_cancels_elects_and_sets_broker_defaults() {
    // A long session, so a paused broker stays registered while the tools run.
    let cluster = Cluster::start(3, &["--override", "broker.session.timeout.ms=20000"]);
    create_topic(&cluster, "tool", 1);
    let addr = cluster.broker(0).addr.clone();
    let (m, _) = await_metadata(&addr, Duration::from_secs(10), "the topic", |m| {
        partitions_of(m, "tool").is_some_and(|ps| ps[0].leader >= 0)
    });
    let source = partitions_of(&m, "tool").unwrap()[0].replicas[0];
    let others: Vec<i32> = (0..3).filter(|&b| b != source).collect();
    let (b, c) = (others[0], others[1]);
    let bootstrap = cluster.broker(b as usize).addr.clone();
    let plan = |replicas: &[i32]| {
        let path = cluster.root.join(format!("plan-{replicas:?}.json"));
        let dirs = vec!["\"any\""; replicas.len()].join(",");
        let list = replicas
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(",");
        std::fs::write(
            &path,
            format!(
                r#"{{"version":1,"partitions":[{{"topic":"tool","partition":0,"replicas":[{list}],"log_dirs":[{dirs}]}}]}}"#
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    let reassign = |file: &str, action: &str| {
        brokerctl_ok(&[
            "kafka-reassign-partitions",
            "--bootstrap-server",
            &bootstrap,
            "--reassignment-json-file",
            file,
            action,
        ])
    };

    // Execute: the rollback plan (the current replicas), then the start.
    let to_others = plan(&[b, c]);
    let out = reassign(&to_others, "--execute");
    assert!(
        out.starts_with("Current partition replica assignment\n"),
        "{out}"
    );
    assert!(out.contains(&format!(r#""replicas":[{source}]"#)), "{out}");
    assert!(
        out.ends_with("Successfully started partition reassignments for tool-0\n"),
        "{out}"
    );
    assert!(
        common::wait_until(Duration::from_secs(30), || {
            reassign(&to_others, "--verify")
            == "Status of partition reassignment:\nReassignment of partition tool-0 is completed.\n"
        }),
        "{}",
        reassign(&to_others, "--verify")
    );
    assert_eq!(
        reassign(&to_others, "--cancel"),
        "None of the specified partition reassignments are active.\n"
    );

    // A reassignment that cannot finish (its new replica's broker is paused) is listed as in
    // progress and cancelled back to the replicas it started from.
    cluster.signal(source as usize, libc::SIGSTOP);
    // If it led the coordination quorum, the others elect a new leader first (a proposal
    // forwarded to the paused one would wait for its timeout).
    await_metadata(
        &bootstrap,
        Duration::from_secs(10),
        "a live quorum leader",
        |m| m.controller_id.0 >= 0 && m.controller_id.0 != source,
    );
    let back = plan(&[b, c, source]);
    reassign(&back, "--execute");
    assert_eq!(
        reassign(&back, "--verify"),
        "Status of partition reassignment:\nReassignment of partition tool-0 is still in progress.\n"
    );
    let described = brokerctl_ok(&[
        "topics",
        "--bootstrap-server",
        &bootstrap,
        "--describe",
        "--topic",
        "tool",
    ]);
    assert!(
        described.contains(&format!(
            "\tReplicas: {b},{c},{source}\tIsr: {b},{c}\tAdding Replicas: {source}\tRemoving Replicas: \n"
        )),
        "{described}"
    );
    assert_eq!(
        reassign(&back, "--cancel"),
        "Successfully cancelled partition reassignments for: tool-0\n"
    );
    assert_eq!(
        reassign(&back, "--verify"),
        format!(
            "Status of partition reassignment:\nThere is no active reassignment of partition \
             tool-0, but replica set is [{b}, {c}] rather than [{b}, {c}, {source}].\n"
        )
    );
    cluster.signal(source as usize, libc::SIGCONT);

    // Leader election: the preferred replica (b) already leads.
    let elect = |topic: &str| {
        brokerctl(&[
            "kafka-leader-election",
            "--bootstrap-server",
            &bootstrap,
            "--election-type",
            "preferred",
            "--topic",
            topic,
            "--partition",
            "0",
        ])
    };
    let (ok, stdout, _) = elect("tool");
    assert!(ok);
    assert_eq!(
        stdout,
        "Valid replica already elected for partitions tool-0\n"
    );
    let (ok, stdout, stderr) = elect("no-such-topic");
    assert!(!ok);
    assert!(
        stdout.starts_with("Failed to elect leader for partition no-such-topic-0 with error UNKNOWN_TOPIC_OR_PARTITION"),
        "{stdout}"
    );
    assert_eq!(stderr, "Error: 1 replica(s) could not be elected\n");
    brokerctl_ok(&[
        "leader-election",
        "--bootstrap-server",
        &bootstrap,
        "--election-type",
        "preferred",
        "--all-topic-partitions",
    ]);

    // The cluster-wide default of a broker config, seen by every broker.
    let configs = |args: &[&str]| {
        let mut all = vec![
            "configs",
            "--bootstrap-server",
            &bootstrap,
            "--entity-type",
            "brokers",
        ];
        all.extend_from_slice(args);
        brokerctl(&all)
    };
    let (ok, stdout, _) = configs(&[
        "--entity-default",
        "--alter",
        "--add-config",
        "log.retention.ms=3600000",
    ]);
    assert!(ok);
    assert_eq!(
        stdout,
        "Completed updating default config for brokers in the cluster.\n"
    );
    let (_, stdout, _) = configs(&["--entity-default", "--describe"]);
    assert_eq!(
        stdout,
        "Dynamic configs for the default broker are:\n  log.retention.ms=3600000\n"
    );
    let (_, stdout, _) = configs(&["--entity-name", &b.to_string(), "--describe"]);
    assert_eq!(
        stdout,
        format!("Dynamic configs for broker {b} are:\n  log.retention.ms=3600000\n")
    );
    let (ok, _, stderr) = configs(&[
        "--entity-name",
        &b.to_string(),
        "--alter",
        "--add-config",
        "broker.id=7",
    ]);
    assert!(!ok);
    assert!(stderr.contains("INVALID_REQUEST"), "{stderr}");
}

#[test]
fn raw_requests_get_kafka_errors_and_bounded_entries() {
    let broker = Broker::start(1);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic("raw", 1), 0);

    // ElectLeaders v0 (preferred only, no top-level error): the one replica already leads.
    let mut topic = elect_leaders_request::TopicPartitions::default();
    topic.topic = TopicName(StrBytes::from_static_str("raw"));
    topic.partitions = vec![0, 3];
    let mut request = ElectLeadersRequest::default();
    request.topic_partitions = Some(vec![topic]);
    request.timeout_ms = 10_000;
    let response = client.call(0, &request);
    let results = &response.replica_election_results[0].partition_result;
    assert_eq!(
        results
            .iter()
            .map(|p| (p.partition_id, p.error_code))
            .collect::<Vec<_>>(),
        [
            (0, ResponseError::ElectionNotNeeded.code()),
            (3, ResponseError::UnknownTopicOrPartition.code())
        ]
    );
    // An unknown election type.
    request.election_type = 7;
    assert_eq!(
        client.call(2, &request).error_code,
        ResponseError::InvalidRequest.code()
    );

    // A target of 100,000 replicas: refused per partition, never copied into the log whole.
    let mut partition = alter_partition_reassignments_request::ReassignablePartition::default();
    partition.partition_index = 0;
    partition.replicas = Some((0..100_000).map(BrokerId).collect());
    let mut topic = alter_partition_reassignments_request::ReassignableTopic::default();
    topic.name = TopicName(StrBytes::from_static_str("raw"));
    topic.partitions = vec![partition];
    let mut request = AlterPartitionReassignmentsRequest::default();
    request.topics = vec![topic];
    request.timeout_ms = 10_000;
    let response = client.call(0, &request);
    assert_eq!(response.error_code, 0);
    assert_eq!(
        response.responses[0].partitions[0].error_code,
        ResponseError::InvalidReplicaAssignment.code()
    );
    let listed = client.call(0, &ListPartitionReassignmentsRequest::default());
    assert!(listed.topics.is_empty(), "{listed:?}");
    assert!(client.api_versions_ok(), "the connection still serves");
}

#[test]
fn auto_leader_rebalance_gives_leadership_back_to_the_preferred_replica() {
    let mut cluster = Cluster::start(
        3,
        &[
            "--override",
            "auto.leader.rebalance.enable=true",
            "--override",
            "leader.imbalance.check.interval.seconds=1",
        ],
    );
    create_topic(&cluster, "balance", 3);
    let addr = cluster.broker(0).addr.clone();
    let (m, _) = await_metadata(&addr, Duration::from_secs(10), "the topic", |m| {
        partitions_of(m, "balance").is_some_and(|ps| ps[0].leader >= 0 && ps[0].isr.len() == 3)
    });
    let preferred = partitions_of(&m, "balance").unwrap()[0].replicas[0];
    assert_eq!(partitions_of(&m, "balance").unwrap()[0].leader, preferred);
    cluster.kill9(preferred as usize);
    let other = cluster.broker(((preferred + 1) % 3) as usize).addr.clone();
    await_metadata(&other, Duration::from_secs(10), "another leader", |m| {
        partitions_of(m, "balance").is_some_and(|ps| ps[0].leader >= 0 && ps[0].leader != preferred)
    });
    // Back, in sync again, and (with no election asked for) leading again.
    cluster.restart(preferred as usize);
    let (_, took) = await_metadata(
        &other,
        Duration::from_secs(30),
        "the preferred leader back",
        |m| partitions_of(m, "balance").is_some_and(|ps| ps[0].leader == preferred),
    );
    eprintln!("leadership back on the preferred replica {took:?} after its restart");
}

fn log_segments(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                .count()
        })
        .unwrap_or(0)
}

/// The base offset of the newest `.log` segment in `dir` (0 when there is none).
fn newest_segment_base(dir: &std::path::Path) -> i64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".log")?.parse::<i64>().ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

#[test]
fn a_changed_segment_size_applies_to_the_running_log_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start_in(tmp.path(), 1, &[]);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic("seg", 1), 0);
    let dir = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("seg-0").exists())
        .map_or_else(|| tmp.path().join("seg-0"), |p| p.join("seg-0"));
    let big = vec![5u8; 4000];
    let batch = || raw::batch(&[&big], None, Compression::None);
    for i in 0..5 {
        assert_eq!(client.produce("seg", 0, batch(), 1), (0, i));
    }
    assert_eq!(log_segments(&dir), 1, "{}", dir.display());
    // The topic's segment.bytes, then the broker's dynamic log.segment.bytes for topics that
    // do not set it: both reach the running log.
    let mut change = incremental_alter_configs_request::AlterableConfig::default();
    change.name = StrBytes::from_static_str("segment.bytes");
    change.value = Some(StrBytes::from_static_str("20000"));
    let mut resource = incremental_alter_configs_request::AlterConfigsResource::default();
    resource.resource_type = 2;
    resource.resource_name = StrBytes::from_static_str("seg");
    resource.configs = vec![change];
    let mut request = IncrementalAlterConfigsRequest::default();
    request.resources = vec![resource];
    assert_eq!(client.call(1, &request).responses[0].error_code, 0);
    for i in 5..25 {
        assert_eq!(client.produce("seg", 0, batch(), 1), (0, i));
    }
    // acks=1 is answered from the journal: the writes (and their rolls) follow, and retention
    // may delete the rolled segments as soon as they close (the batches' timestamps are
    // old), so the newest segment's base offset says how far the rolls went: at 20,000 bytes
    // a segment holds four of these batches, so 0, 5, 9, 13, ...
    assert!(
        common::wait_until(Duration::from_secs(10), || newest_segment_base(&dir) >= 13),
        "newest segment at {}; broker log:\n{}",
        newest_segment_base(&dir),
        broker.log()
    );
    assert_eq!(client.create_topic("seg2", 1), 0);
    let response = client.call(1, &set_broker_config("0", "log.segment.bytes", "40000"));
    assert_eq!(response.responses[0].error_code, 0, "{response:?}");
    for i in 0..25 {
        assert_eq!(client.produce("seg2", 0, batch(), 1), (0, i));
    }
    let dir2 = dir.with_file_name("seg2-0");
    // 40,000 bytes: nine batches a segment.
    assert!(
        common::wait_until(Duration::from_secs(10), || newest_segment_base(&dir2) >= 9),
        "newest segment at {}; broker log:\n{}",
        newest_segment_base(&dir2),
        broker.log()
    );
}

fn reassign_raw(addr: &str, topic: &str, target: &[i32]) -> (i16, i16) {
    let mut partition = alter_partition_reassignments_request::ReassignablePartition::default();
    partition.partition_index = 0;
    partition.replicas = Some(target.iter().map(|&b| BrokerId(b)).collect());
    let mut t = alter_partition_reassignments_request::ReassignableTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.into()));
    t.partitions = vec![partition];
    let mut request = AlterPartitionReassignmentsRequest::default();
    request.topics = vec![t];
    request.timeout_ms = 20_000;
    let response = RawClient::connect(addr).call(0, &request);
    let partition_error = response
        .responses
        .first()
        .map_or(-1, |t| t.partitions[0].error_code);
    (response.error_code, partition_error)
}

/// (replicas, adding, removing) of the reassignments `addr` lists.
fn listed_raw(addr: &str) -> Vec<(Vec<i32>, Vec<i32>, Vec<i32>)> {
    let response = RawClient::connect(addr).call(0, &ListPartitionReassignmentsRequest::default());
    let ids = |v: &[BrokerId]| v.iter().map(|b| b.0).collect::<Vec<_>>();
    response
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| {
            (
                ids(&p.replicas),
                ids(&p.adding_replicas),
                ids(&p.removing_replicas),
            )
        })
        .collect()
}

#[test]
fn a_running_reassignment_survives_a_broker_restart_and_completes_later() {
    // Sessions long enough for a paused broker to stay registered while the move starts, short
    // enough that a killed broker's old session ends soon (with only one voter left running,
    // the quorum cannot fence it at once; the restart registers once it expires).
    let mut cluster = Cluster::start(3, &["--override", "broker.session.timeout.ms=5000"]);
    create_topic(&cluster, "durable-move", 1);
    let addr = cluster.broker(0).addr.clone();
    let (m, _) = await_metadata(&addr, Duration::from_secs(10), "the topic", |m| {
        partitions_of(m, "durable-move").is_some_and(|ps| ps[0].leader >= 0)
    });
    let source = partitions_of(&m, "durable-move").unwrap()[0].replicas[0];
    let others: Vec<i32> = (0..3).filter(|&b| b != source).collect();
    let (joining, bystander) = (others[0], others[1]);
    // The joining replica's broker is paused: the reassignment cannot complete.
    cluster.signal(joining as usize, libc::SIGSTOP);
    let source_addr = cluster.broker(source as usize).addr.clone();
    await_metadata(
        &source_addr,
        Duration::from_secs(10),
        "a live quorum leader",
        |m| m.controller_id.0 >= 0 && m.controller_id.0 != joining,
    );
    assert_eq!(
        reassign_raw(&source_addr, "durable-move", &[source, joining]),
        (0, 0)
    );
    let expected = (vec![source, joining], vec![joining], vec![]);
    assert_eq!(listed_raw(&source_addr), std::slice::from_ref(&expected));
    // Another broker restarts: it reads the reassignment back from the coordination log.
    cluster.kill9(bystander as usize);
    cluster.restart(bystander as usize);
    let bystander_addr = cluster.broker(bystander as usize).addr.clone();
    assert!(
        common::wait_until(Duration::from_secs(20), || listed_raw(&bystander_addr)
            == [expected.clone()]),
        "{:?}",
        listed_raw(&bystander_addr)
    );
    // The joining broker resumes, catches up, and the reassignment completes.
    cluster.signal(joining as usize, libc::SIGCONT);
    for i in 0..3 {
        let addr = cluster.broker(i).addr.clone();
        await_metadata(&addr, Duration::from_secs(30), "the completed move", |m| {
            partitions_of(m, "durable-move").is_some_and(|ps| {
                let mut isr = ps[0].isr.clone();
                isr.sort_unstable();
                let mut both = vec![source, joining];
                both.sort_unstable();
                ps[0].replicas == [source, joining] && isr == both
            })
        });
    }
    assert!(listed_raw(&bystander_addr).is_empty());
}
