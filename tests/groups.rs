//! Consumer groups against the real broker: librdkafka group consumers (subscribe) and raw
//! protocol requests for the coordinator's edge cases.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::raw::RawClient;
use common::{wait_until, Broker};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A broker with short group timers so tests finish quickly.
fn start(dir: &Path) -> Broker {
    let props = dir.join("groups.properties");
    std::fs::write(
        &props,
        "group.min.session.timeout.ms=500\ngroup.initial.rebalance.delay.ms=0\n",
    )
    .unwrap();
    Broker::start_in(dir, 2, &["--config", props.to_str().unwrap()])
}

fn consumer_config(broker: &Broker, group: &str, assignor: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", group)
        .set("partition.assignment.strategy", assignor)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "200")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    config
}

fn assigned<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> BTreeSet<i32> {
    consumer
        .assignment()
        .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

/// Polls every consumer (which is what drives librdkafka's rebalance callbacks) until
/// `done` holds.
fn poll_until<C: ConsumerContext>(
    consumers: &[&BaseConsumer<C>],
    mut done: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        for c in consumers {
            let _ = c.poll(Duration::from_millis(20));
        }
        if done() {
            return true;
        }
    }
    false
}

fn create_topic(broker: &Broker, name: &str, partitions: i32) {
    assert_eq!(
        RawClient::connect(&broker.addr).create_topic(name, partitions),
        0
    );
}

#[test]
fn two_consumers_split_four_partitions_then_one_takes_all() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = start(tmp.path());
    create_topic(&broker, "split", 4);
    let a: BaseConsumer = consumer_config(&broker, "split-group", "range")
        .create()
        .unwrap();
    a.subscribe(&["split"]).unwrap();
    assert!(
        poll_until(&[&a], || assigned(&a).len() == 4),
        "a alone gets all four"
    );
    let b: BaseConsumer = consumer_config(&broker, "split-group", "range")
        .create()
        .unwrap();
    b.subscribe(&["split"]).unwrap();
    assert!(
        poll_until(&[&a, &b], || assigned(&a).len() == 2
            && assigned(&b).len() == 2),
        "two and two: a={:?} b={:?}",
        assigned(&a),
        assigned(&b)
    );
    let union: BTreeSet<i32> = assigned(&a).union(&assigned(&b)).copied().collect();
    assert_eq!(union, (0..4).collect());

    // ListGroups and DescribeGroups see the group and both members.
    let mut raw = RawClient::connect(&broker.addr);
    let listed = raw.call(4, &ListGroupsRequest::default());
    let group = listed
        .groups
        .iter()
        .find(|g| g.group_id.0.as_str() == "split-group")
        .expect("listed");
    assert_eq!(group.group_state.as_str(), "Stable");
    assert_eq!(group.protocol_type.as_str(), "consumer");
    let mut describe = DescribeGroupsRequest::default();
    describe.groups = vec![GroupId(StrBytes::from_static_str("split-group"))];
    let described = raw.call(5, &describe);
    let g = &described.groups[0];
    assert_eq!((g.error_code, g.group_state.as_str()), (0, "Stable"));
    assert_eq!(g.protocol_data.as_str(), "range");
    assert_eq!(g.members.len(), 2);
    assert!(g.members.iter().all(|m| !m.member_assignment.is_empty()));
    assert!(g
        .members
        .iter()
        .all(|m| m.client_host.as_str() == "/127.0.0.1"));

    // A group with members cannot be deleted.
    let mut delete = DeleteGroupsRequest::default();
    delete.groups_names = vec![GroupId(StrBytes::from_static_str("split-group"))];
    let refused = raw.call(2, &delete);
    assert_eq!(
        refused.results[0].error_code,
        kafka_protocol::ResponseError::NonEmptyGroup.code()
    );

    // b leaves (close sends LeaveGroup): a gets all four back.
    b.unsubscribe();
    drop(b);
    assert!(
        poll_until(&[&a], || assigned(&a).len() == 4),
        "a={:?}",
        assigned(&a)
    );

    // Once empty, the group can be deleted.
    a.unsubscribe();
    drop(a);
    assert!(wait_until(TIMEOUT, || raw.call(2, &delete).results[0]
        .error_code
        == 0));
    let listed = raw.call(4, &ListGroupsRequest::default());
    assert!(listed
        .groups
        .iter()
        .all(|g| g.group_id.0.as_str() != "split-group"));
}

/// Records the partitions librdkafka revokes.
#[derive(Clone, Default)]
struct Revocations(Arc<Mutex<Vec<i32>>>);

impl ClientContext for Revocations {}

impl ConsumerContext for Revocations {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut revoked = self.0.lock().unwrap();
            revoked.extend(tpl.elements().iter().map(|e| e.partition()));
        }
    }
}

#[test]
fn cooperative_sticky_join_revokes_only_what_moves() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = start(tmp.path());
    create_topic(&broker, "coop", 4);
    let revoked_a = Revocations::default();
    let a: BaseConsumer<Revocations> = consumer_config(&broker, "coop-group", "cooperative-sticky")
        .create_with_context(revoked_a.clone())
        .unwrap();
    a.subscribe(&["coop"]).unwrap();
    assert!(poll_until(&[&a], || assigned(&a).len() == 4));
    let b: BaseConsumer<Revocations> = consumer_config(&broker, "coop-group", "cooperative-sticky")
        .create_with_context(Revocations::default())
        .unwrap();
    b.subscribe(&["coop"]).unwrap();
    assert!(
        poll_until(&[&a, &b], || assigned(&a).len() == 2
            && assigned(&b).len() == 2),
        "a={:?} b={:?}",
        assigned(&a),
        assigned(&b)
    );
    let revoked: BTreeSet<i32> = revoked_a.0.lock().unwrap().iter().copied().collect();
    let kept = assigned(&a);
    assert_eq!(
        revoked.len(),
        2,
        "only the two partitions that moved: {revoked:?}"
    );
    assert!(
        revoked.is_disjoint(&kept),
        "revoked {revoked:?} but kept {kept:?}"
    );
    assert_eq!(revoked, assigned(&b), "what a gave up is what b got");
}

#[test]
fn committed_offsets_survive_kill9() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = start(tmp.path());
    create_topic(&broker, "durable", 2);
    let committer: BaseConsumer = consumer_config(&broker, "durable-group", "range")
        .create()
        .unwrap();
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset("durable", 0, Offset::Offset(5))
        .unwrap();
    offsets
        .add_partition_offset("durable", 1, Offset::Offset(7))
        .unwrap();
    committer
        .commit(&offsets, CommitMode::Sync)
        .expect("commit");
    drop(committer);
    broker.kill9();

    let broker = start(tmp.path());
    let reader: BaseConsumer = consumer_config(&broker, "durable-group", "range")
        .create()
        .unwrap();
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition("durable", 0);
    wanted.add_partition("durable", 1);
    let committed = reader
        .committed_offsets(wanted, TIMEOUT)
        .expect("offset fetch");
    let got: Vec<(i32, Offset)> = committed
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect();
    assert_eq!(got, vec![(0, Offset::Offset(5)), (1, Offset::Offset(7))]);
}

fn join(
    raw: &mut RawClient,
    group: &str,
    member_id: &str,
    session_timeout_ms: i32,
) -> JoinGroupResponse {
    let mut protocol = join_group_request::JoinGroupRequestProtocol::default();
    protocol.name = StrBytes::from_static_str("range");
    protocol.metadata = bytes::Bytes::from_static(&[0, 0, 0, 0, 0, 0]);
    let mut request = JoinGroupRequest::default();
    request.group_id = GroupId(StrBytes::from_string(group.into()));
    request.session_timeout_ms = session_timeout_ms;
    request.rebalance_timeout_ms = session_timeout_ms;
    request.member_id = StrBytes::from_string(member_id.into());
    request.protocol_type = StrBytes::from_static_str("consumer");
    request.protocols = vec![protocol];
    raw.call(5, &request)
}

fn describe(raw: &mut RawClient, group: &str) -> describe_groups_response::DescribedGroup {
    let mut request = DescribeGroupsRequest::default();
    request.groups = vec![GroupId(StrBytes::from_string(group.into()))];
    raw.call(5, &request).groups.remove(0)
}

#[test]
fn silent_member_is_evicted_and_bounds_are_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = start(tmp.path());
    let mut raw = RawClient::connect(&broker.addr);
    // Outside [group.min.session.timeout.ms, group.max.session.timeout.ms].
    let too_short = join(&mut raw, "evict", "", 100);
    assert_eq!(
        too_short.error_code,
        kafka_protocol::ResponseError::InvalidSessionTimeout.code()
    );
    // v4+: the first join hands out a member id to rejoin with (KIP-394).
    let first = join(&mut raw, "evict", "", 600);
    assert_eq!(
        first.error_code,
        kafka_protocol::ResponseError::MemberIdRequired.code()
    );
    let joined = join(&mut raw, "evict", first.member_id.as_str(), 600);
    assert_eq!(joined.error_code, 0);
    assert_eq!(joined.leader, joined.member_id);
    let mut sync = SyncGroupRequest::default();
    sync.group_id = GroupId(StrBytes::from_static_str("evict"));
    sync.generation_id = joined.generation_id;
    sync.member_id = joined.member_id.clone();
    assert_eq!(raw.call(3, &sync).error_code, 0);
    assert_eq!(describe(&mut raw, "evict").members.len(), 1);
    // No heartbeats: gone after the session timeout, and the group is empty again.
    assert!(wait_until(TIMEOUT, || {
        let g = describe(&mut raw, "evict");
        g.members.is_empty() && g.group_state.as_str() == "Empty"
    }));
    let mut heartbeat = HeartbeatRequest::default();
    heartbeat.group_id = GroupId(StrBytes::from_static_str("evict"));
    heartbeat.generation_id = joined.generation_id;
    heartbeat.member_id = joined.member_id;
    assert_eq!(
        raw.call(3, &heartbeat).error_code,
        kafka_protocol::ResponseError::UnknownMemberId.code()
    );
    // FindCoordinator (batched, v4) names this broker for every group.
    let mut find = FindCoordinatorRequest::default();
    find.coordinator_keys = vec![
        StrBytes::from_static_str("evict"),
        StrBytes::from_static_str("other"),
    ];
    let found = raw.call(4, &find);
    assert_eq!(found.coordinators.len(), 2);
    let port: i32 = broker.addr.rsplit(':').next().unwrap().parse().unwrap();
    assert!(found
        .coordinators
        .iter()
        .all(|c| c.error_code == 0 && c.node_id.0 == 0 && c.port == port));
}

#[test]
fn librdkafka_group_consumers_read_100k_exactly_once_across_a_rebalance() {
    use rdkafka::message::Message;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    const TOTAL: usize = 100_000;
    let tmp = tempfile::tempdir().unwrap();
    let broker = start(tmp.path());
    create_topic(&broker, "exactly", 4);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("linger.ms", "20")
        .create()
        .unwrap();
    for i in 0..TOTAL {
        let value = i.to_string();
        // Round-robin, so every partition holds a quarter (keyless records would go to
        // sticky random partitions, possibly leaving one nearly empty).
        let mut record = BaseRecord::<(), String>::to("exactly")
            .payload(&value)
            .partition((i % 4) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(TIMEOUT).unwrap();

    // Auto-commit: librdkafka commits the consumed position before giving partitions up.
    let config = || {
        let mut c = consumer_config(&broker, "exactly-group", "range");
        c.set("enable.auto.commit", "true")
            // Small fetches and a small local queue: a must not hold the whole topic in
            // memory before b joins.
            .set("max.partition.fetch.bytes", "4096")
            .set("queued.min.messages", "100")
            .set("queued.max.messages.kbytes", "16");
        c
    };
    let revoked_a = Revocations::default();
    let a: BaseConsumer<Revocations> = config().create_with_context(revoked_a.clone()).unwrap();
    a.subscribe(&["exactly"]).unwrap();
    let mut seen: Vec<u32> = Vec::with_capacity(TOTAL);
    // Drains what a consumer has ready (waiting briefly only for the first record), so one
    // idle consumer never slows the other down.
    let take = |c: &BaseConsumer<Revocations>, seen: &mut Vec<u32>| {
        let mut wait = Duration::from_millis(10);
        while let Some(m) = c.poll(wait) {
            let m = m.unwrap_or_else(|e| panic!("consume: {e}; broker log:\n{}", broker.log()));
            let text = std::str::from_utf8(m.payload().unwrap()).unwrap();
            seen.push(text.parse().unwrap());
            wait = Duration::ZERO;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen.len() < 30_000 && Instant::now() < deadline {
        take(&a, &mut seen);
    }
    // While b joins, a reads at most one record per 5 ms (it must keep polling to take part
    // in the rebalance), so most of the topic is still unread when the hand-over happens.
    let b: BaseConsumer<Revocations> = config()
        .create_with_context(Revocations::default())
        .unwrap();
    b.subscribe(&["exactly"]).unwrap();
    let mut read_by_b = Vec::new();
    while (revoked_a.0.lock().unwrap().is_empty()
        || assigned(&a).len() != 2
        || assigned(&b).len() != 2)
        && Instant::now() < deadline
    {
        if let Some(m) = a.poll(Duration::from_millis(5)) {
            let m = m.expect("consume");
            seen.push(
                std::str::from_utf8(m.payload().unwrap())
                    .unwrap()
                    .parse()
                    .unwrap(),
            );
        }
        take(&b, &mut read_by_b);
    }
    while seen.len() + read_by_b.len() < TOTAL && Instant::now() < deadline {
        take(&a, &mut seen);
        take(&b, &mut read_by_b);
    }
    // Nothing more arrives (no duplicate after the last one).
    let quiet = Instant::now() + Duration::from_millis(500);
    while Instant::now() < quiet {
        take(&a, &mut seen);
        take(&b, &mut read_by_b);
    }
    assert!(
        !revoked_a.0.lock().unwrap().is_empty(),
        "b's join revoked a's partitions"
    );
    assert!(
        !read_by_b.is_empty(),
        "b read part of the topic after the rebalance"
    );
    seen.extend(read_by_b);
    assert_eq!(seen.len(), TOTAL, "read {} records", seen.len());
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), TOTAL, "every record exactly once");
}

#[test]
fn static_member_restart_causes_no_rebalance() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = start(tmp.path());
    create_topic(&broker, "static", 4);
    let member = |instance: &str, revocations: &Revocations| -> BaseConsumer<Revocations> {
        let c: BaseConsumer<Revocations> = consumer_config(&broker, "static-group", "range")
            .set("group.instance.id", instance)
            .create_with_context(revocations.clone())
            .unwrap();
        c.subscribe(&["static"]).unwrap();
        c
    };
    let revoked_a = Revocations::default();
    let a = member("a", &revoked_a);
    assert!(poll_until(&[&a], || assigned(&a).len() == 4));
    let b = member("b", &Revocations::default());
    assert!(poll_until(&[&a, &b], || assigned(&a).len() == 2
        && assigned(&b).len() == 2));
    let (kept_a, had_b) = (assigned(&a), assigned(&b));
    revoked_a.0.lock().unwrap().clear();

    // b restarts quickly: a static member leaves no LeaveGroup behind, and its successor
    // with the same group.instance.id takes its place and its partitions.
    drop(b);
    let b = member("b", &Revocations::default());
    assert!(
        poll_until(&[&a, &b], || assigned(&b) == had_b),
        "b={:?}",
        assigned(&b)
    );
    for _ in 0..20 {
        let _ = a.poll(Duration::from_millis(20));
    }
    assert_eq!(assigned(&a), kept_a);
    assert!(
        revoked_a.0.lock().unwrap().is_empty(),
        "a was not rebalanced"
    );
}

#[test]
fn offset_fetch_batches_offset_delete_and_the_internal_topic() {
    use kafka_protocol::ResponseError;
    let tmp = tempfile::tempdir().unwrap();
    let broker = start(tmp.path());
    create_topic(&broker, "od", 2);
    let mut raw = RawClient::connect(&broker.addr);
    let mut commit = OffsetCommitRequest::default();
    commit.group_id = GroupId(StrBytes::from_static_str("od-group"));
    commit.generation_id_or_member_epoch = -1;
    let mut topic = offset_commit_request::OffsetCommitRequestTopic::default();
    topic.name = TopicName(StrBytes::from_static_str("od"));
    topic.partitions = (0..2)
        .map(|p| {
            let mut partition = offset_commit_request::OffsetCommitRequestPartition::default();
            partition.partition_index = p;
            partition.committed_offset = 10 + p as i64;
            partition.committed_metadata = Some(StrBytes::from_static_str("m"));
            partition
        })
        .collect();
    let mut unknown = offset_commit_request::OffsetCommitRequestTopic::default();
    unknown.name = TopicName(StrBytes::from_static_str("no-such-topic"));
    unknown.partitions = vec![Default::default()];
    commit.topics = vec![topic, unknown];
    let committed = raw.call(8, &commit);
    assert!(committed.topics[0]
        .partitions
        .iter()
        .all(|p| p.error_code == 0));
    assert_eq!(
        committed.topics[1].partitions[0].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );

    // OffsetFetch v8: two groups in one request, all topics of each.
    let fetch_all = |raw: &mut RawClient| {
        let mut request = OffsetFetchRequest::default();
        request.groups = ["od-group", "never-used"]
            .into_iter()
            .map(|g| {
                let mut group = offset_fetch_request::OffsetFetchRequestGroup::default();
                group.group_id = GroupId(StrBytes::from_static_str(g));
                group.topics = None;
                group
            })
            .collect();
        raw.call(8, &request).groups
    };
    let groups = fetch_all(&mut raw);
    assert_eq!(groups.len(), 2);
    let offsets: Vec<(i32, i64)> = groups[0].topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.committed_offset))
        .collect();
    assert_eq!(offsets, vec![(0, 10), (1, 11)]);
    assert_eq!((groups[1].error_code, groups[1].topics.len()), (0, 0));

    // OffsetDelete forgets partition 0 of an empty group.
    let mut delete = OffsetDeleteRequest::default();
    delete.group_id = GroupId(StrBytes::from_static_str("od-group"));
    let mut t = offset_delete_request::OffsetDeleteRequestTopic::default();
    t.name = TopicName(StrBytes::from_static_str("od"));
    t.partitions = vec![Default::default()];
    delete.topics = vec![t];
    let deleted = raw.call(0, &delete);
    assert_eq!(deleted.error_code, 0);
    assert_eq!(deleted.topics[0].partitions[0].error_code, 0);
    let left: Vec<i32> = fetch_all(&mut raw)[0].topics[0]
        .partitions
        .iter()
        .map(|p| p.partition_index)
        .collect();
    assert_eq!(left, vec![1]);

    // The offsets topic is internal: not listed, described when named, not creatable.
    let listed = raw.call(12, &MetadataRequest::default());
    assert!(listed
        .topics
        .iter()
        .all(|t| t.name.as_ref().unwrap().0.as_str() != "__consumer_offsets"));
    let mut named = MetadataRequest::default();
    let mut t = metadata_request::MetadataRequestTopic::default();
    t.name = Some(TopicName(StrBytes::from_static_str("__consumer_offsets")));
    named.topics = Some(vec![t]);
    let described = raw.call(12, &named);
    assert!(described.topics[0].is_internal);
    assert_eq!(described.topics[0].partitions.len(), 50);
    assert_eq!(
        raw.create_topic("__consumer_offsets", 1),
        ResponseError::InvalidRequest.code()
    );
}
