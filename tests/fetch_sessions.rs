//! Incremental fetch sessions (KIP-227) against the real broker: the protocol rules on the wire
//! (epochs, forgotten partitions, what an incremental response carries, long-polling on
//! partitions the request does not name, sessions found from any connection, the slots
//! setting), and kafka-python reading 50 partitions through a session while the assignment
//! changes.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::{self, RawClient};
use common::{http_get, metric, Broker};
use kafka_protocol::messages::{fetch_request, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;
use kafka_protocol::ResponseError;

const VERSION: i16 = 12;
const TOPIC: &str = "sessions";

/// A fetch of `partitions` (index, offset) of TOPIC under `(session_id, epoch)`, forgetting
/// `forgotten`.
fn request(
    session_id: i32,
    epoch: i32,
    partitions: &[(i32, i64)],
    forgotten: &[i32],
    max_wait_ms: i32,
) -> FetchRequest {
    let mut request = raw::fetch_request(TOPIC, partitions, max_wait_ms);
    request.session_id = session_id;
    request.session_epoch = epoch;
    if !forgotten.is_empty() {
        let mut topic = fetch_request::ForgottenTopic::default();
        topic.topic = TopicName(StrBytes::from_static_str(TOPIC));
        topic.partitions = forgotten.to_vec();
        request.forgotten_topics_data = vec![topic];
    }
    request
}

/// What a response says: top-level error, session id, and per partition (index, high
/// watermark, offsets of the records it carries).
#[derive(Debug)]
struct Answer {
    error: i16,
    session_id: i32,
    partitions: Vec<(i32, i64, Vec<i64>)>,
}

impl Answer {
    fn of(response: FetchResponse) -> Answer {
        let mut partitions = Vec::new();
        for topic in response.responses {
            assert_eq!(topic.topic.0.as_str(), TOPIC);
            for p in topic.partitions {
                assert_eq!(p.error_code, 0, "partition {}", p.partition_index);
                let offsets = raw::values(p.records.unwrap_or_default())
                    .into_iter()
                    .map(|(offset, _)| offset)
                    .collect();
                partitions.push((p.partition_index, p.high_watermark, offsets));
            }
        }
        Answer {
            error: response.error_code,
            session_id: response.session_id,
            partitions,
        }
    }

    fn indexes(&self) -> Vec<i32> {
        self.partitions.iter().map(|p| p.0).collect()
    }
}

fn fetch(client: &mut RawClient, request: &FetchRequest) -> Answer {
    Answer::of(client.call(VERSION, request))
}

fn produce(client: &mut RawClient, partition: i32, n: usize) {
    let values: Vec<Vec<u8>> = (0..n).map(|i| format!("v{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    let batch: Bytes = raw::batch(&refs, None, Compression::None);
    assert_eq!(client.produce(TOPIC, partition, batch, -1).0, 0);
}

#[test]
fn the_session_rules_hold_on_the_wire() {
    let broker = Broker::start(2);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic(TOPIC, 4), 0);
    let mut producer = RawClient::connect(&broker.addr);
    produce(&mut producer, 0, 2);
    produce(&mut producer, 1, 2);

    // A full fetch with epoch 0 creates a session and answers every partition.
    let all = [(0, 0), (1, 0), (2, 0), (3, 0)];
    let created = fetch(&mut client, &request(0, 0, &all, &[], 0));
    assert_eq!(created.error, 0);
    let session = created.session_id;
    assert!(session > 0, "{created:?}");
    assert_eq!(created.indexes(), vec![0, 1, 2, 3]);
    assert_eq!(created.partitions[0], (0, 2, vec![0, 1]));

    // The client consumed p0 and p1 and says so; nothing changed: an empty answer.
    let caught_up = fetch(&mut client, &request(session, 1, &[(0, 2), (1, 2)], &[], 0));
    assert_eq!((caught_up.error, caught_up.session_id), (0, session));
    assert!(caught_up.partitions.is_empty(), "{caught_up:?}");

    // New records in p3, which the request does not name: only p3 is answered, read at the
    // offset the session holds for it.
    produce(&mut producer, 3, 3);
    let news = fetch(&mut client, &request(session, 2, &[], &[], 0));
    assert_eq!(news.partitions, vec![(3, 3, vec![0, 1, 2])]);
    // The client did not move p3 on (it did not consume): the session still reads p3 from 0.
    // The cached offset follows the requests, not what the broker returned.
    let again = fetch(&mut client, &request(session, 3, &[], &[], 0));
    assert_eq!(again.partitions, vec![(3, 3, vec![0, 1, 2])]);

    // p3 consumed, p0 forgotten: new records in p0 are not read any more, so the next fetch
    // long-polls; records in p2 (never named since the session began) wake it.
    let quiet = fetch(&mut client, &request(session, 4, &[(3, 3)], &[0], 0));
    assert!(quiet.partitions.is_empty(), "{quiet:?}");
    produce(&mut producer, 0, 1);
    let started = Instant::now();
    client.send(VERSION, &request(session, 5, &[], &[], 15_000));
    produce(&mut producer, 2, 1);
    let woken = Answer::of(client.receive::<FetchRequest>(VERSION));
    assert_eq!(woken.partitions, vec![(2, 1, vec![0])]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by the append, not by max_wait_ms: {:?}",
        started.elapsed()
    );

    // A repeated epoch, an unknown session, an id no shard hands out.
    let stale = fetch(&mut client, &request(session, 5, &[], &[], 0));
    assert_eq!(
        (stale.error, stale.session_id),
        (ResponseError::InvalidFetchSessionEpoch.code(), 0)
    );
    assert!(stale.partitions.is_empty());
    for unknown in [session ^ 1, i32::MAX] {
        let missing = fetch(&mut client, &request(unknown, 1, &[], &[], 0));
        assert_eq!(
            missing.error,
            ResponseError::FetchSessionIdNotFound.code(),
            "{unknown}"
        );
    }

    // The session is the broker's, not the connection's: new connections (spread over both
    // shards by SO_REUSEPORT) continue it, epoch after epoch.
    let mut epoch = 6;
    for _ in 0..6 {
        let mut other = RawClient::connect(&broker.addr);
        let answer = fetch(&mut other, &request(session, epoch, &[], &[], 0));
        assert_eq!(
            (answer.error, answer.session_id),
            (0, session),
            "{answer:?}"
        );
        epoch += 1;
    }

    // Epoch -1 closes it: a full answer without a session, and the id is gone.
    let closed = fetch(&mut client, &request(session, -1, &[(1, 0)], &[], 0));
    assert_eq!((closed.error, closed.session_id), (0, 0));
    assert_eq!(closed.partitions, vec![(1, 2, vec![0, 1])]);
    let gone = fetch(&mut client, &request(session, epoch, &[], &[], 0));
    assert_eq!(gone.error, ResponseError::FetchSessionIdNotFound.code());

    // Epoch 0 with an id closes that session and opens a new one.
    let first = fetch(&mut client, &request(0, 0, &all, &[], 0)).session_id;
    assert!(first > 0);
    let second = fetch(&mut client, &request(first, 0, &all, &[], 0));
    assert!(second.session_id > 0 && second.session_id != first);
    assert_eq!(second.indexes(), vec![0, 1, 2, 3]);
    let old = fetch(&mut client, &request(first, 1, &[], &[], 0));
    assert_eq!(old.error, ResponseError::FetchSessionIdNotFound.code());
    let new = fetch(&mut client, &request(second.session_id, 1, &[], &[], 0));
    assert_eq!((new.error, new.session_id), (0, second.session_id));

    // Without a session (epoch -1, what librdkafka sends) nothing changes: session id 0.
    let sessionless = fetch(&mut client, &request(0, -1, &all, &[], 0));
    assert_eq!((sessionless.error, sessionless.session_id), (0, 0));
    assert_eq!(sessionless.indexes(), vec![0, 1, 2, 3]);
}

#[test]
fn the_slots_setting_bounds_the_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start_in(
        tmp.path(),
        1,
        &[
            "--http",
            "127.0.0.1:0",
            "--override",
            "max.incremental.fetch.session.cache.slots=1",
        ],
    );
    let console = broker.console.clone().expect("console");
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic(TOPIC, 2), 0);
    let one = fetch(&mut client, &request(0, 0, &[(0, 0)], &[], 0)).session_id;
    assert!(one > 0);
    // No room, and the only session is neither idle nor old: no session, as Kafka answers.
    let full = fetch(&mut client, &request(0, 0, &[(0, 0), (1, 0)], &[], 0));
    assert_eq!((full.error, full.session_id), (0, 0));
    assert_eq!(full.indexes(), vec![0, 1]);
    let metrics = http_get(&console, "/metrics");
    assert_eq!(
        metric(
            &metrics,
            "kafka_server_fetchsessioncache_numincrementalfetchsessions"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "kafka_server_fetchsessioncache_numincrementalfetchpartitionscached"
        ),
        1.0
    );
    // Closing it frees the slot.
    fetch(&mut client, &request(one, -1, &[(0, 0)], &[], 0));
    let two = fetch(&mut client, &request(0, 0, &[(0, 0), (1, 0)], &[], 0)).session_id;
    assert!(two > 0 && two != one);
    let metrics = http_get(&console, "/metrics");
    assert_eq!(
        metric(
            &metrics,
            "kafka_server_fetchsessioncache_numincrementalfetchpartitionscached"
        ),
        2.0
    );
}

#[test]
fn kafka_python_reads_50_partitions_exactly_once_through_incremental_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start_in(tmp.path(), 2, &["--http", "127.0.0.1:0"]);
    let console = broker.console.clone().expect("console");
    assert_eq!(
        RawClient::connect(&broker.addr).create_topic("fetch-sessions", 50),
        0
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/fetch_sessions.py"
    );
    let output = Command::new("python3")
        .args([script, &broker.addr])
        .output()
        .expect("python3 with kafka-python (scripts/test installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("exactly once, in order"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{stdout}");
    // The broker's side of it: incremental requests were served from a session.
    let metrics = http_get(&console, "/metrics");
    let incremental = metric(&metrics, "broker_incremental_fetch_requests_total");
    assert!(incremental > 0.0, "{incremental} incremental fetches");
}
