//! Three real `broker` processes on loopback forming one cluster through the Raft coordination
//! quorum, exercised with librdkafka (the rdkafka crate) and the raw protocol client.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::{await_metadata, metadata, partitions_of, Cluster, PartitionView};
use common::raw::{self, RawClient};
use kafka_protocol::messages::MetadataResponse;
use kafka_protocol::ResponseError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(20);

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client")
}

fn brokers_of(m: &MetadataResponse) -> Vec<i32> {
    let mut ids: Vec<i32> = m.brokers.iter().map(|b| b.node_id.0).collect();
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_brokers_share_metadata_and_spread_replicas() {
    let cluster = Cluster::start(3, &[]);
    // Every broker lists all three and names the same quorum leader.
    let mut controllers = Vec::new();
    for i in 0..3 {
        let (m, _) = await_metadata(&cluster.broker(i).addr, WAIT, "three brokers", |m| {
            brokers_of(m) == vec![0, 1, 2] && m.controller_id.0 >= 0
        });
        controllers.push(m.controller_id.0);
    }
    let (m, _) = await_metadata(&cluster.broker(0).addr, WAIT, "one controller", |m| {
        controllers.iter().all(|&c| c == m.controller_id.0)
    });
    assert!((0..3).contains(&m.controller_id.0));

    // A replication factor above the live brokers is refused, with Kafka's message.
    let mut client = RawClient::connect(&cluster.broker(1).addr);
    let (code, message) = client.create_topic_rf("too-wide", 1, 4);
    assert_eq!(code, ResponseError::InvalidReplicationFactor.code());
    assert_eq!(
        message.as_deref(),
        Some("Replication factor: 4 larger than available brokers: 3.")
    );

    // RF 3 with librdkafka's admin client, through one broker.
    let results = admin(&cluster.broker(2).addr)
        .create_topics(
            &[NewTopic::new("spread", 6, TopicReplication::Fixed(3))],
            &AdminOptions::new().operation_timeout(Some(WAIT)),
        )
        .await
        .expect("create topics");
    assert!(results[0].is_ok(), "{results:?}");
    for i in 0..3 {
        let (m, _) = await_metadata(&cluster.broker(i).addr, WAIT, "topic everywhere", |m| {
            partitions_of(m, "spread").is_some()
        });
        let partitions = partitions_of(&m, "spread").unwrap();
        assert_eq!(partitions.len(), 6);
        let mut leaders = BTreeMap::new();
        for PartitionView {
            leader,
            epoch,
            replicas,
            isr,
        } in &partitions
        {
            let mut sorted = replicas.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2], "3 distinct replicas");
            assert_eq!(isr.len(), 3, "full ISR");
            assert_eq!(*leader, replicas[0], "the preferred replica leads");
            assert_eq!(*epoch, 0);
            *leaders.entry(*leader).or_insert(0) += 1;
        }
        assert_eq!(
            leaders.values().copied().collect::<Vec<_>>(),
            vec![2, 2, 2],
            "leaders spread: {leaders:?}"
        );
    }

    // A broker that is not a partition's leader refuses produce with NOT_LEADER_OR_FOLLOWER.
    let partitions = partitions_of(&metadata(&cluster.broker(0).addr), "spread").unwrap();
    let (follower_index, _) = partitions
        .iter()
        .enumerate()
        .find(|(_, p)| p.leader != 0)
        .unwrap();
    let mut at_zero = RawClient::connect(&cluster.broker(0).addr);
    let (code, _) = at_zero.produce(
        "spread",
        follower_index as i32,
        raw::batch(&[b"x"], None, kafka_protocol::records::Compression::None),
        1,
    );
    assert_eq!(code, ResponseError::NotLeaderOrFollower.code());

    // A client bootstrapped from one broker finds every leader: 60 keyed messages go to the
    // three brokers and all come back.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &cluster.broker(1).addr)
        .set("acks", "all")
        .create()
        .expect("producer");
    for n in 0..60 {
        let key = format!("k{n}");
        let value = format!("v{n}");
        producer
            .send(FutureRecord::to("spread").key(&key).payload(&value), WAIT)
            .await
            .expect("produce");
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cluster.broker(2).addr)
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..6 {
        assignment
            .add_partition_offset("spread", p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut values = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while values.len() < 60 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            values.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
        }
    }
    values.sort();
    let mut expected: Vec<String> = (0..60).map(|n| format!("v{n}")).collect();
    expected.sort();
    assert_eq!(values, expected);

    // CreatePartitions and DeleteTopics reach every broker, files included.
    assert_eq!(client.create_partitions("spread", 9), 0);
    for i in 0..3 {
        await_metadata(&cluster.broker(i).addr, WAIT, "9 partitions", |m| {
            partitions_of(m, "spread").is_some_and(|p| p.len() == 9)
        });
    }
    let deleted = admin(&cluster.broker(0).addr)
        .delete_topics(
            &["spread"],
            &AdminOptions::new().operation_timeout(Some(WAIT)),
        )
        .await
        .expect("delete topics");
    assert!(deleted[0].is_ok(), "{deleted:?}");
    for i in 0..3 {
        await_metadata(&cluster.broker(i).addr, WAIT, "topic gone", |m| {
            partitions_of(m, "spread").is_none()
        });
        let data_dir = &cluster.broker(i).data_dir;
        assert!(
            common::wait_until(WAIT, || partition_dirs(data_dir, "spread").is_empty()),
            "node {i} still holds {:?}",
            partition_dirs(data_dir, "spread")
        );
    }
}

fn partition_dirs(data_dir: &std::path::Path, topic: &str) -> Vec<String> {
    std::fs::read_dir(data_dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&format!("{topic}-")))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn killing_the_quorum_leader_elects_another_and_the_node_rejoins() {
    let mut cluster = Cluster::start(3, &[]);
    let (m, _) = await_metadata(&cluster.broker(0).addr, WAIT, "a controller", |m| {
        m.controller_id.0 >= 0 && brokers_of(m).len() == 3
    });
    let leader = m.controller_id.0 as usize;
    let survivor = (leader + 1) % 3;
    RawClient::connect(&cluster.broker(survivor).addr).create_topic_rf("before", 3, 3);

    let killed_at = Instant::now();
    cluster.kill9(leader);
    // Proposed at once, while the survivor still forwards proposals to the dead leader: that
    // copy is lost, and the survivor proposes it again once a new quorum leader is elected,
    // well within the request's 10 s (it waited those 10 s out before proposals were retried).
    let (code, message) =
        RawClient::connect(&cluster.broker(survivor).addr).create_topic_rf("during", 2, 2);
    let during_after = killed_at.elapsed();
    assert_eq!(
        code,
        0,
        "{message:?} after {during_after:?}\n{}",
        cluster.logs()
    );
    let (m, _) = await_metadata(
        &cluster.broker(survivor).addr,
        WAIT,
        "a new controller",
        |m| m.controller_id.0 >= 0 && m.controller_id.0 != leader as i32,
    );
    let new_controller_after = killed_at.elapsed();
    let _ = await_metadata(
        &cluster.broker(survivor).addr,
        WAIT,
        "the dead broker fenced",
        |m| {
            !brokers_of(m).contains(&(leader as i32))
                && partitions_of(m, "before").is_some_and(|ps| {
                    ps.iter()
                        .all(|p| p.leader >= 0 && p.leader != leader as i32)
                })
        },
    );
    let fenced_after = killed_at.elapsed();
    println!(
        "quorum leader {leader} killed: a topic created after {during_after:?}, new quorum leader \
         {} in metadata after {new_controller_after:?}, its partitions led elsewhere after \
         {fenced_after:?}",
        m.controller_id.0
    );

    // Topic creation works again with two of three voters.
    let (code, message) =
        RawClient::connect(&cluster.broker(survivor).addr).create_topic_rf("after", 2, 2);
    assert_eq!(code, 0, "{message:?}\n{}", cluster.logs());

    // The killed node restarts on its data and catches up with what it missed.
    cluster.restart(leader);
    let (m, _) = await_metadata(&cluster.broker(leader).addr, WAIT, "caught up", |m| {
        brokers_of(m) == vec![0, 1, 2] && partitions_of(m, "after").is_some()
    });
    let survivors_view = metadata(&cluster.broker(survivor).addr);
    assert_eq!(
        partitions_of(&m, "before"),
        partitions_of(&survivors_view, "before"),
        "the restarted node holds the same metadata"
    );
}

#[test]
fn killing_a_partition_leader_moves_leadership_to_the_earliest_registered_isr_member() {
    let mut cluster = Cluster::start(3, &[]);
    let (m, _) = await_metadata(&cluster.broker(0).addr, WAIT, "a controller", |m| {
        m.controller_id.0 >= 0 && brokers_of(m).len() == 3
    });
    let controller = m.controller_id.0;
    let mut client = RawClient::connect(&cluster.broker(controller as usize).addr);
    assert_eq!(client.create_topic_rf("moves", 3, 3).0, 0);
    let (m, _) = await_metadata(&cluster.broker(0).addr, WAIT, "topic", |m| {
        partitions_of(m, "moves").is_some()
    });
    let before = partitions_of(&m, "moves").unwrap();
    // Kill a broker that leads a partition but not the quorum, so the time measured is the
    // session expiry alone.
    let victim = (0..3).find(|&b| b != controller).unwrap();
    let sequences: BTreeMap<i32, u64> = (0..3)
        .map(|i| (i as i32, cluster.registration_sequence(i)))
        .collect();
    let killed_at = Instant::now();
    cluster.kill9(victim as usize);
    let (m, _) = await_metadata(
        &cluster.broker(controller as usize).addr,
        WAIT,
        "leaders moved",
        |m| {
            partitions_of(m, "moves").is_some_and(|ps| {
                ps.iter()
                    .zip(&before)
                    .all(|(now, was)| was.leader != victim || now.leader != victim)
            })
        },
    );
    let moved_after = killed_at.elapsed();
    println!("partition leader {victim} killed: leadership moved after {moved_after:?}");
    for (now, was) in partitions_of(&m, "moves").unwrap().iter().zip(&before) {
        if was.leader == victim {
            let expected = was
                .isr
                .iter()
                .copied()
                .filter(|&r| r != victim)
                .min_by_key(|r| sequences[r])
                .unwrap();
            assert_eq!(
                now.leader, expected,
                "earliest registered live ISR member leads"
            );
            assert_eq!(now.epoch, was.epoch + 1, "the leader epoch is bumped");
            assert!(!now.isr.contains(&victim), "the dead broker left the ISR");
        } else {
            assert_eq!(
                (now.leader, now.epoch),
                (was.leader, was.epoch),
                "other leaders stay put"
            );
        }
    }

    // The broker comes back with a new, later registration.
    cluster.restart(victim as usize);
    await_metadata(&cluster.broker(0).addr, WAIT, "rejoined", |m| {
        brokers_of(m) == vec![0, 1, 2]
    });
    let rejoined = cluster.registration_sequence(victim as usize);
    assert!(sequences.values().all(|&s| rejoined > s));
}

#[test]
fn a_node_without_a_quorum_says_so_and_serves_once_the_others_start() {
    let mut cluster = Cluster::configure(3, &[]);
    let lonely = cluster.launch(0);
    assert!(
        common::wait_until(WAIT, || cluster
            .log_of(0)
            .contains("cannot reach voter; retrying")),
        "no unreachable-voter line in:\n{}",
        cluster.log_of(0)
    );
    assert!(
        !cluster.log_of(0).contains("broker ready"),
        "served without a quorum"
    );
    let others: Vec<_> = [1, 2].iter().map(|&i| cluster.launch(i)).collect();
    cluster.adopt(0, lonely.wait_ready());
    for (i, l) in [1, 2].into_iter().zip(others) {
        cluster.adopt(i, l.wait_ready());
    }
    await_metadata(&cluster.broker(0).addr, WAIT, "three brokers", |m| {
        brokers_of(m) == vec![0, 1, 2]
    });
    let unreachable_lines = cluster
        .log_of(0)
        .lines()
        .filter(|l| l.contains("cannot reach voter"))
        .count();
    assert!(
        unreachable_lines <= 2,
        "one line per voter, not one per retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_works_across_the_cluster() {
    use rdkafka::consumer::{CommitMode, StreamConsumer};
    let cluster = Cluster::start(3, &[]);
    let mut client = RawClient::connect(&cluster.broker(0).addr);
    assert_eq!(client.create_topic_rf("grouped", 3, 3).0, 0);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .expect("producer");
    for n in 0..30 {
        let key = format!("k{n}");
        producer
            .send(FutureRecord::to("grouped").key(&key).payload("v"), WAIT)
            .await
            .expect("produce");
    }
    let group_consumer = || -> StreamConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &cluster.broker(1).addr)
            .set("group.id", "cluster-group")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer")
    };
    let consumer = group_consumer();
    consumer.subscribe(&["grouped"]).unwrap();
    let mut read = 0;
    while read < 30 {
        let m = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .expect("a message in time")
            .expect("a message");
        assert_eq!(m.topic(), "grouped");
        read += 1;
    }
    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    consumer.unsubscribe();
    drop(consumer);
    // The offsets topic lives in the cluster metadata, led across the brokers, hidden from
    // the full listing.
    let m = metadata(&cluster.broker(2).addr);
    assert!(partitions_of(&m, "__consumer_offsets").is_none());
    // A new member of the group finds the same coordinator and the committed offsets.
    let consumer = group_consumer();
    let mut partitions = TopicPartitionList::new();
    for p in 0..3 {
        partitions.add_partition("grouped", p);
    }
    let committed = consumer.committed_offsets(partitions, WAIT).unwrap();
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    assert_eq!(total, 30);
}
