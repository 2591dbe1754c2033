//! Acceptance tests for partition data replication, against three real `broker` processes and
//! librdkafka (the rdkafka crate): acknowledged writes survive kill -9 and SIGSTOP of a
//! partition leader, a fenced leader acknowledges nothing it later loses, and
//! `min.insync.replicas` refuses acks=all with `NOT_ENOUGH_REPLICAS` when the ISR is too small.
//!
//! Every produced message carries its partition and a sequence number of that partition
//! (`"<partition>:<sequence>"`), and every delivery report (partition, offset, sequence, times)
//! is recorded; at the end the partitions are read from the beginning and compared with the
//! reports: each acknowledged message present once, at its acknowledged offset, sequences
//! increasing along the log, no payload twice.

#[path = "common/clients.rs"]
mod clients;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::cluster::{await_metadata, partitions_of, Cluster};
use kafka_protocol::messages::MetadataResponse;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer,
    ProducerContext,
};
use rdkafka::{Message, Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(30);

/// Broker settings every test here runs with: the replication contract's keys (the
/// `replica.lag.time.max.ms` key is ignored by a broker that does not know it yet).
const PROPERTIES: &[(&str, &str)] = &[
    ("min.insync.replicas", "2"),
    ("replica.lag.time.max.ms", "3000"),
    ("default.replication.factor", "3"),
];

// ---------------------------------------------------------------------------------------------
// Metadata views

/// True when every partition of `topic` has a leader and all `nodes` in its ISR.
fn fully_in_sync(m: &MetadataResponse, topic: &str, nodes: &[i32]) -> bool {
    partitions_of(m, topic).is_some_and(|ps| {
        !ps.is_empty()
            && ps
                .iter()
                .all(|p| p.leader >= 0 && nodes.iter().all(|n| p.isr.contains(n)))
    })
}

async fn create_topic(bootstrap: &str, topic: &str, partitions: i32, min_insync: Option<&str>) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(3));
    if let Some(min) = min_insync {
        new_topic = new_topic.set("min.insync.replicas", min);
    }
    let results = admin
        .create_topics(
            &[new_topic],
            &AdminOptions::new().operation_timeout(Some(WAIT)),
        )
        .await
        .expect("create topics");
    assert!(results[0].is_ok(), "create {topic}: {results:?}");
}

// ---------------------------------------------------------------------------------------------
// A continuous idempotent acks=all producer recording every delivery report

struct Sent {
    producer: char,
    partition: i32,
    seq: u64,
    sent_at: Instant,
}

#[derive(Debug, Clone)]
struct Ack {
    /// Which `Load` produced it (payloads name it, so several producers can share a topic).
    producer: char,
    partition: i32,
    seq: u64,
    offset: i64,
    sent_at: Instant,
    acked_at: Instant,
}

#[derive(Debug, Default)]
struct Outcomes {
    acks: Vec<Ack>,
    /// Messages whose delivery failed: (partition, sequence, error). Allowed (nothing was
    /// promised for them), reported.
    failed: Vec<(i32, u64, String)>,
    /// Client-level errors librdkafka reported (a fatal idempotence error shows up here).
    errors: Vec<String>,
}

struct Recorder {
    out: Arc<Mutex<Outcomes>>,
}

impl ClientContext for Recorder {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown)
        ) {
            return; // connections to a killed or stopped broker: expected here
        }
        self.out
            .lock()
            .unwrap()
            .errors
            .push(format!("{error}: {reason}"));
    }
}

impl ProducerContext for Recorder {
    type DeliveryOpaque = Box<Sent>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Sent>) {
        let acked_at = Instant::now();
        let mut out = self.out.lock().unwrap();
        match result {
            Ok(m) => {
                assert_eq!(m.partition(), sent.partition);
                out.acks.push(Ack {
                    producer: sent.producer,
                    partition: sent.partition,
                    seq: sent.seq,
                    offset: m.offset(),
                    sent_at: sent.sent_at,
                    acked_at,
                });
            }
            Err((e, _)) => out.failed.push((sent.partition, sent.seq, e.to_string())),
        }
    }
}

/// A message: (producer, partition, sequence within that producer's partition).
type Id = (char, i32, u64);

fn payload(producer: char, partition: i32, seq: u64) -> String {
    format!("{producer}:{partition}:{seq:09}")
}

fn parse_payload(bytes: &[u8]) -> Option<Id> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut fields = text.split(':');
    let producer = fields.next()?.parse().ok()?;
    let partition = fields.next()?.parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    fields
        .next()
        .is_none()
        .then_some((producer, partition, seq))
}

/// Produces `"<producer>:<partition>:<sequence>"` round-robin to every partition of a topic,
/// about one message per partition every 4 ms, until finished.
struct Load {
    out: Arc<Mutex<Outcomes>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    fn start(producer_tag: char, bootstrap: &str, topic: &str, partitions: i32) -> Load {
        let out = Arc::new(Mutex::new(Outcomes::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let producer: BaseProducer<Recorder> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // Long enough to outlast any failover here: a message fails only if the cluster
            // cannot take it for this long.
            .set("message.timeout.ms", "60000")
            // Bounds how long a request sent to a stopped leader stays unanswered.
            .set("request.timeout.ms", "8000")
            .create_with_context(Recorder { out: out.clone() })
            .expect("producer");
        let topic = topic.to_string();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut next = vec![0u64; partitions as usize];
                let mut tick = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    for p in 0..partitions {
                        if producer.in_flight_count() >= 5000 {
                            break;
                        }
                        let seq = next[p as usize];
                        let value = payload(producer_tag, p, seq);
                        let sent = Box::new(Sent {
                            producer: producer_tag,
                            partition: p,
                            seq,
                            sent_at: Instant::now(),
                        });
                        let record = BaseRecord::<(), str, Box<Sent>>::with_opaque_to(&topic, sent)
                            .partition(p)
                            .payload(&value);
                        if producer.send(record).is_ok() {
                            next[p as usize] += 1;
                        }
                    }
                    tick += Duration::from_millis(4);
                    loop {
                        let now = Instant::now();
                        if now >= tick {
                            break;
                        }
                        producer.poll(tick - now);
                    }
                    // Do not try to catch up after a stall.
                    tick = tick.max(Instant::now() - Duration::from_millis(4));
                }
                let _ = producer.flush(Duration::from_secs(30));
            })
        };
        Load {
            out,
            stop,
            thread: Some(thread),
        }
    }

    /// Acknowledged messages for which `filter` holds.
    fn count(&self, filter: impl Fn(&Ack) -> bool) -> usize {
        self.out
            .lock()
            .unwrap()
            .acks
            .iter()
            .filter(|a| filter(a))
            .count()
    }

    /// Waits until `count(filter)` reaches `n`; false on timeout.
    fn await_acks(&self, n: usize, timeout: Duration, filter: impl Fn(&Ack) -> bool) -> bool {
        common::wait_until(timeout, || self.count(&filter) >= n)
    }

    /// Stops producing, waits for the outstanding deliveries and returns every outcome.
    fn finish(mut self) -> Outcomes {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("producer thread");
        }
        std::mem::take(&mut *self.out.lock().unwrap())
    }
}

// ---------------------------------------------------------------------------------------------
// Reading everything back and comparing with the acknowledgements

/// Every record of every partition, from the beginning to the end: (offset, payload).
fn read_all(bootstrap: &str, topic: &str, partitions: i32) -> BTreeMap<i32, Vec<(i64, Vec<u8>)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("verify-{topic}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let mut ends = BTreeMap::new();
    for p in 0..partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, WAIT)
            .unwrap_or_else(|e| panic!("watermarks of {topic}-{p}: {e}"));
        ends.insert(p, high);
    }
    clients::assign_from_beginning(&consumer, topic, partitions);
    let mut log: BTreeMap<i32, Vec<(i64, Vec<u8>)>> =
        (0..partitions).map(|p| (p, Vec::new())).collect();
    let mut at_end: BTreeSet<i32> = BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    while at_end.len() < partitions as usize {
        assert!(
            Instant::now() < deadline,
            "reading {topic} back timed out; ends {ends:?}, read {:?}",
            log.iter().map(|(p, r)| (p, r.len())).collect::<Vec<_>>()
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let p = m.partition();
                log.get_mut(&p)
                    .unwrap()
                    .push((m.offset(), m.payload().unwrap_or_default().to_vec()));
                if m.offset() + 1 >= ends[&p] {
                    at_end.insert(p);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                let last = log[&p].last().map_or(-1, |r| r.0);
                if last + 1 >= ends[&p] {
                    at_end.insert(p);
                }
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    log
}

#[derive(Debug, Default)]
struct Verdict {
    acknowledged: usize,
    records: usize,
    /// Acknowledged, not in the log: (message, acknowledged offset).
    lost: Vec<(Id, i64)>,
    /// Acknowledged, in the log at another offset: (message, acked, found).
    misplaced: Vec<(Id, i64, i64)>,
    /// A payload found more than once: (message, offsets).
    duplicated: Vec<(Id, Vec<i64>)>,
    /// A sequence not above the one before it from the same producer in the log:
    /// (message, offset, previous sequence).
    reordered: Vec<(Id, i64, u64)>,
    /// Records that are not this test's payloads, or in the wrong partition.
    foreign: Vec<(i32, i64)>,
}

impl Verdict {
    fn ok(&self) -> bool {
        self.lost.is_empty()
            && self.misplaced.is_empty()
            && self.duplicated.is_empty()
            && self.reordered.is_empty()
            && self.foreign.is_empty()
    }

    fn summary(&self) -> String {
        format!(
            "acknowledged {}, records in the log {}, lost {}, at another offset {}, duplicated {}, \
             out of order {}, foreign {}\n  lost ((producer, partition, seq), acked offset) e.g. {:?}\n  \
             at another offset (message, acked, found) e.g. {:?}\n  duplicated (message, offsets) e.g. {:?}\n  \
             out of order (message, offset, previous seq) e.g. {:?}",
            self.acknowledged,
            self.records,
            self.lost.len(),
            self.misplaced.len(),
            self.duplicated.len(),
            self.reordered.len(),
            self.foreign.len(),
            &self.lost[..self.lost.len().min(8)],
            &self.misplaced[..self.misplaced.len().min(8)],
            &self.duplicated[..self.duplicated.len().min(8)],
            &self.reordered[..self.reordered.len().min(8)],
        )
    }
}

fn verify(acks: &[Ack], log: &BTreeMap<i32, Vec<(i64, Vec<u8>)>>) -> Verdict {
    let mut verdict = Verdict {
        acknowledged: acks.len(),
        ..Verdict::default()
    };
    // message -> offsets where it is found.
    let mut found: BTreeMap<Id, Vec<i64>> = BTreeMap::new();
    for (&p, records) in log {
        verdict.records += records.len();
        // The last sequence seen in this partition, per producer.
        let mut previous: BTreeMap<char, u64> = BTreeMap::new();
        for (offset, value) in records {
            match parse_payload(value) {
                Some(id @ (producer, q, seq)) if q == p => {
                    found.entry(id).or_default().push(*offset);
                    if let Some(&prev) = previous.get(&producer).filter(|&&prev| seq <= prev) {
                        verdict.reordered.push((id, *offset, prev));
                    }
                    previous.insert(producer, seq);
                }
                _ => verdict.foreign.push((p, *offset)),
            }
        }
    }
    for (id, offsets) in &found {
        if offsets.len() > 1 {
            verdict.duplicated.push((*id, offsets.clone()));
        }
    }
    for a in acks {
        let id = (a.producer, a.partition, a.seq);
        match found.get(&id) {
            None => verdict.lost.push((id, a.offset)),
            Some(offsets) if !offsets.contains(&a.offset) => {
                verdict.misplaced.push((id, a.offset, offsets[0]))
            }
            Some(_) => {}
        }
    }
    verdict
}

fn describe_failures(out: &Outcomes) -> String {
    let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, _, e) in &out.failed {
        *errors.entry(e.as_str()).or_default() += 1;
    }
    format!(
        "failed deliveries {} {errors:?}; client errors {:?}",
        out.failed.len(),
        &out.errors[..out.errors.len().min(5)]
    )
}

fn notes_text(notes: &[String]) -> String {
    notes.iter().map(|n| format!("\n  also: {n}")).collect()
}

/// Time left until `deadline` (zero once passed).
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// ---------------------------------------------------------------------------------------------
// The tests

/// The checker itself: a log that matches the acknowledgements passes; loss, a moved offset,
/// a duplicate, a reordering and a foreign record are each caught.
#[test]
fn the_checker_catches_each_kind_of_damage() {
    let now = Instant::now();
    let ack = |producer, partition, seq, offset| Ack {
        producer,
        partition,
        seq,
        offset,
        sent_at: now,
        acked_at: now,
    };
    let record = |producer, partition, seq: u64, offset: i64| {
        (offset, payload(producer, partition, seq).into_bytes())
    };
    let acks = vec![ack('a', 0, 0, 0), ack('b', 0, 0, 1), ack('a', 0, 1, 2)];
    let good: BTreeMap<i32, Vec<(i64, Vec<u8>)>> = BTreeMap::from([(
        0,
        vec![
            record('a', 0, 0, 0),
            record('b', 0, 0, 1),
            record('a', 0, 1, 2),
            // Not acknowledged (its delivery failed or it was in flight): allowed.
            record('b', 0, 1, 3),
        ],
    )]);
    let verdict = verify(&acks, &good);
    assert!(verdict.ok(), "{}", verdict.summary());

    let mut damaged = good.clone();
    damaged.get_mut(&0).unwrap().remove(0); // a:0 lost
    let v = verify(&acks, &damaged);
    assert_eq!(v.lost, vec![(('a', 0, 0), 0)]);

    let mut damaged = good.clone();
    damaged.get_mut(&0).unwrap()[2].0 = 7; // a:1 at another offset
    let v = verify(&acks, &damaged);
    assert_eq!(v.misplaced, vec![(('a', 0, 1), 2, 7)]);

    let mut damaged = good.clone();
    damaged.get_mut(&0).unwrap().push(record('a', 0, 1, 4)); // a:1 twice, and out of order
    let v = verify(&acks, &damaged);
    assert_eq!(v.duplicated, vec![(('a', 0, 1), vec![2, 4])]);
    assert_eq!(v.reordered, vec![(('a', 0, 1), 4, 1)]);

    let mut damaged = good.clone();
    damaged.get_mut(&0).unwrap().push((4, b"noise".to_vec()));
    damaged.get_mut(&0).unwrap().push(record('a', 1, 9, 5)); // another partition's message
    let v = verify(&acks, &damaged);
    assert_eq!(v.foreign, vec![(0, 4), (0, 5)]);
    assert!(!v.ok());
}

/// The control: with no fault, every acknowledged message is read back (no false alarm from
/// the producer, the reader or the checker). Passes before replication exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_without_faults_every_ack_is_read_back() {
    const TOPIC: &str = "control";
    const PARTITIONS: i32 = 4;
    let cluster = Cluster::start_with_properties(3, PROPERTIES, &[]);
    create_topic(&cluster.bootstrap(), TOPIC, PARTITIONS, Some("2")).await;
    await_metadata(&cluster.broker(0).addr, WAIT, "topic in sync", |m| {
        fully_in_sync(m, TOPIC, &[0, 1, 2])
    });
    let a = Load::start('a', &cluster.bootstrap(), TOPIC, PARTITIONS);
    let b = Load::start('b', &cluster.bootstrap(), TOPIC, PARTITIONS);
    assert!(a.await_acks(2000, WAIT, |_| true) && b.await_acks(2000, WAIT, |_| true));
    let (out_a, out_b) = (a.finish(), b.finish());
    let acks: Vec<Ack> = out_a.acks.iter().chain(&out_b.acks).cloned().collect();
    let verdict = verify(&acks, &read_all(&cluster.bootstrap(), TOPIC, PARTITIONS));
    println!("control: {}", verdict.summary());
    assert!(verdict.ok(), "{}", verdict.summary());
    assert!(out_a.failed.is_empty() && out_b.failed.is_empty());
    assert_eq!(verdict.records, acks.len(), "every record was acknowledged");
}

/// kill -9 of a partition leader under an idempotent acks=all producer: every acknowledged
/// message is in the log once, at its offset, in order; the killed broker comes back into
/// every ISR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_leader_during_acks_all_production_loses_nothing() {
    const TOPIC: &str = "survives-kill";
    const PARTITIONS: i32 = 4;
    let mut cluster = Cluster::start_with_properties(3, PROPERTIES, &[]);
    create_topic(&cluster.bootstrap(), TOPIC, PARTITIONS, Some("2")).await;
    let (m, _) = await_metadata(&cluster.broker(0).addr, WAIT, "topic in sync", |m| {
        fully_in_sync(m, TOPIC, &[0, 1, 2])
    });
    let before = partitions_of(&m, TOPIC).unwrap();

    let load = Load::start('a', &cluster.bootstrap(), TOPIC, PARTITIONS);
    assert!(
        load.await_acks(1500, WAIT, |_| true),
        "no steady production before the kill"
    );

    // Kill the leader of partition 0; every partition it leads must move.
    let victim = before[0].leader;
    let led: Vec<i32> = (0..PARTITIONS)
        .filter(|&p| before[p as usize].leader == victim)
        .collect();
    let survivor = ((victim + 1) % 3) as usize;
    let acked_before_kill = load.count(|_| true);
    let killed_at = Instant::now();
    cluster.kill9(victim as usize);
    let (_, moved_after) =
        await_metadata(&cluster.broker(survivor).addr, WAIT, "new leaders", |m| {
            partitions_of(m, TOPIC).is_some_and(|ps| {
                led.iter()
                    .all(|&p| ps[p as usize].leader >= 0 && ps[p as usize].leader != victim)
            })
        });

    // Keep producing until 2000 messages sent after the kill are acknowledged, at least 200
    // of them on each partition that lost its leader.
    let mut notes = Vec::new();
    let deadline = Instant::now() + WAIT;
    if !load.await_acks(2000, left(deadline), |a| a.sent_at >= killed_at) {
        notes.push("fewer than 2000 acks after the kill".to_string());
    }
    for &p in &led {
        if !load.await_acks(200, left(deadline), |a| {
            a.partition == p && a.sent_at >= killed_at
        }) {
            notes.push(format!("partition {p}: fewer than 200 acks after the kill"));
        }
    }
    let out = load.finish();
    let first_ack = |partitions: &[i32]| {
        out.acks
            .iter()
            .filter(|a| a.sent_at >= killed_at && partitions.contains(&a.partition))
            .map(|a| a.acked_at - killed_at)
            .min()
    };
    match first_ack(&[0]) {
        Some(d) => println!(
            "failover: first ack after kill -9 in {} ms (partition 0, leader {victim} killed; \
             new leaders in metadata after {} ms; partitions it led: {led:?}, first ack on any \
             of them after {} ms)",
            ms(d),
            ms(moved_after),
            ms(first_ack(&led).unwrap_or(d))
        ),
        None => println!(
            "failover: no ack after kill -9 on partition 0 (new leaders in metadata after {} ms)",
            ms(moved_after)
        ),
    }
    println!(
        "acknowledged {} before the kill, {} in all; {}",
        acked_before_kill,
        out.acks.len(),
        describe_failures(&out)
    );

    let log = read_all(&cluster.bootstrap(), TOPIC, PARTITIONS);
    let verdict = verify(&out.acks, &log);
    println!("verification: {}", verdict.summary());
    assert!(
        verdict.ok() && notes.is_empty(),
        "acknowledged writes were not all kept exactly once after kill -9 of leader {victim}: {}{}",
        verdict.summary(),
        notes_text(&notes)
    );

    // The killed broker restarts, truncates what it must and catches up into every ISR.
    let restarted_at = Instant::now();
    cluster.restart(victim as usize);
    let (_, back_after) = await_metadata(
        &cluster.broker(survivor).addr,
        WAIT,
        "the restarted broker back in every ISR",
        |m| fully_in_sync(m, TOPIC, &[0, 1, 2]),
    );
    println!(
        "broker {victim} back in every ISR {} ms after its restart began ({} ms after start-up)",
        ms(restarted_at.elapsed()),
        ms(back_after)
    );
}

/// SIGSTOP of a partition leader past the session timeout: a new leader is elected while the
/// old one sleeps with produce requests in its socket; after SIGCONT the old leader must not
/// acknowledge anything the cluster then loses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_leader_is_fenced_and_acknowledges_nothing_after() {
    const TOPIC: &str = "fenced";
    const PARTITIONS: i32 = 4;
    let cluster = Cluster::start_with_properties(3, PROPERTIES, &[]);
    create_topic(&cluster.bootstrap(), TOPIC, PARTITIONS, Some("2")).await;
    let (m, _) = await_metadata(&cluster.broker(0).addr, WAIT, "topic in sync", |m| {
        fully_in_sync(m, TOPIC, &[0, 1, 2]) && m.controller_id.0 >= 0
    });
    let before = partitions_of(&m, TOPIC).unwrap();
    // Pause a partition leader that does not lead the quorum, so the fence comes from a
    // quorum leader that keeps running (any would do; this one is quicker).
    let controller = m.controller_id.0;
    let victim = before
        .iter()
        .map(|p| p.leader)
        .find(|&l| l != controller)
        .expect("a partition led outside the quorum leader");
    let led: Vec<i32> = (0..PARTITIONS)
        .filter(|&p| before[p as usize].leader == victim)
        .collect();
    let watcher = (0..3).find(|&b| b != victim).unwrap() as usize;

    // Producer a runs throughout. Its requests to the victim are in flight when it stops and
    // are answered only after SIGCONT (its request.timeout.ms of 8 s outlasts the pause), by a
    // broker that meanwhile lost its leadership.
    let a = Load::start('a', &cluster.bootstrap(), TOPIC, PARTITIONS);
    assert!(
        a.await_acks(1500, WAIT, |_| true),
        "no steady production before the stop"
    );
    let stopped_at = Instant::now();
    cluster.signal(victim as usize, libc::SIGSTOP);
    let (m, moved_after) = await_metadata(
        &cluster.broker(watcher).addr,
        WAIT,
        "new leaders while the old one is stopped",
        |m| {
            partitions_of(m, TOPIC).is_some_and(|ps| {
                led.iter()
                    .all(|&p| ps[p as usize].leader >= 0 && ps[p as usize].leader != victim)
            })
        },
    );
    let after_stop = partitions_of(&m, TOPIC).unwrap();
    // Producer b starts now, from the running brokers: it learns the new leaders at once and
    // writes to them while the old leader sleeps, so the old leader's log and the new one's
    // diverge.
    let running: Vec<String> = (0..3)
        .filter(|&i| i != victim as usize)
        .map(|i| cluster.broker(i).addr.clone())
        .collect();
    let b = Load::start('b', &running.join(","), TOPIC, PARTITIONS);
    let mut notes = Vec::new();
    let deadline = Instant::now() + WAIT;
    for &p in &led {
        if !b.await_acks(200, left(deadline), |a| a.partition == p) {
            notes.push(format!(
                "partition {p}: fewer than 200 acks from the new leader while the old one is stopped"
            ));
        }
    }
    let resumed_at = Instant::now();
    cluster.signal(victim as usize, libc::SIGCONT);
    // Producer a hears back from the old leader, learns the new leaders and writes there.
    for &p in &led {
        if !a.await_acks(300, left(deadline), |a| {
            a.partition == p && a.acked_at > resumed_at
        }) {
            notes.push(format!(
                "partition {p}: fewer than 300 acks for producer a after SIGCONT"
            ));
        }
    }
    let (out_a, out_b) = (a.finish(), b.finish());
    let acks: Vec<Ack> = out_a.acks.iter().chain(&out_b.acks).cloned().collect();

    let log = read_all(&cluster.bootstrap(), TOPIC, PARTITIONS);
    let verdict = verify(&acks, &log);

    // Acks on the paused leader's partitions, by producer and by when they arrived.
    let window = |a: &Ack| {
        if a.acked_at < stopped_at {
            "before SIGSTOP"
        } else if a.acked_at < resumed_at {
            "while stopped"
        } else if a.acked_at < resumed_at + Duration::from_secs(1) {
            "within 1 s of SIGCONT"
        } else {
            "later"
        }
    };
    let lost: BTreeSet<Id> = verdict
        .lost
        .iter()
        .map(|l| l.0)
        .chain(verdict.misplaced.iter().map(|m| m.0))
        .collect();
    let mut windows: BTreeMap<(char, i32, &str), (usize, usize)> = BTreeMap::new();
    for a in acks.iter().filter(|a| led.contains(&a.partition)) {
        let entry = windows
            .entry((a.producer, a.partition, window(a)))
            .or_default();
        entry.0 += 1;
        if lost.contains(&(a.producer, a.partition, a.seq)) {
            entry.1 += 1;
        }
    }
    let first_after_resume = out_a
        .acks
        .iter()
        .filter(|a| led.contains(&a.partition) && a.acked_at >= resumed_at)
        .map(|a| a.acked_at - resumed_at)
        .min();
    println!(
        "broker {victim} (leader of {led:?}) stopped; new leaders {:?} in metadata after {} ms; \
         SIGCONT after {} ms; producer a's first ack on those partitions {:?} ms after SIGCONT",
        led.iter()
            .map(|&p| after_stop[p as usize].leader)
            .collect::<Vec<_>>(),
        ms(moved_after),
        ms(resumed_at - stopped_at),
        first_after_resume.map(ms)
    );
    for ((producer, p, w), (acked, lost)) in &windows {
        println!(
            "  producer {producer}, partition {p}: {acked} acks {w}, {lost} of them not in the final log"
        );
    }
    println!(
        "producer a: {}\nproducer b: {}",
        describe_failures(&out_a),
        describe_failures(&out_b)
    );
    println!("verification: {}", verdict.summary());
    let lost_after_resume: usize = windows
        .iter()
        .filter(|((_, _, w), _)| *w != "before SIGSTOP" && *w != "while stopped")
        .map(|(_, (_, lost))| lost)
        .sum();
    assert!(
        verdict.ok() && notes.is_empty(),
        "writes acknowledged around the SIGSTOP of leader {victim} were not kept exactly once \
         ({lost_after_resume} acknowledged after SIGCONT are not in the final log): {}{}",
        verdict.summary(),
        notes_text(&notes)
    );

    // The old leader, now a follower, truncates its unacknowledged tail and rejoins.
    await_metadata(
        &cluster.broker(watcher).addr,
        WAIT,
        "the resumed broker back in every ISR",
        |m| fully_in_sync(m, TOPIC, &[0, 1, 2]),
    );
}

/// Produces one message with no retries and returns what the delivery report said.
async fn produce_once(
    bootstrap: &str,
    topic: &str,
    acks: &str,
    retries: bool,
    value: &str,
) -> Result<(i32, i64), KafkaError> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", acks)
        .set("enable.idempotence", "false")
        .set("retries", if retries { "1000" } else { "0" })
        .set("message.timeout.ms", "15000")
        .set("request.timeout.ms", "10000")
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::<(), str>::to(topic)
                .partition(0)
                .payload(value),
            Duration::from_secs(15),
        )
        .await
        .map(|d| (d.partition, d.offset))
        .map_err(|(e, _)| e)
}

/// With `min.insync.replicas=3` on the topic, acks=all is refused with NOT_ENOUGH_REPLICAS
/// while one replica is down (acks=1 still works, and a topic inheriting the broker default 2
/// takes acks=all), and accepted again once the replica is back in the ISR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_insync_three_refuses_acks_all_when_a_follower_stops() {
    let mut cluster = Cluster::start_with_properties(3, PROPERTIES, &[]);
    create_topic(&cluster.bootstrap(), "strict", 1, Some("3")).await;
    create_topic(&cluster.bootstrap(), "inherits", 1, None).await;
    let (m, _) = await_metadata(&cluster.broker(0).addr, WAIT, "topics in sync", |m| {
        fully_in_sync(m, "strict", &[0, 1, 2])
            && fully_in_sync(m, "inherits", &[0, 1, 2])
            && m.controller_id.0 >= 0
    });
    let leader = partitions_of(&m, "strict").unwrap()[0].leader;
    let controller = m.controller_id.0;
    // A follower of strict-0, not the quorum leader when that can be avoided.
    let follower = (0..3)
        .filter(|&b| b != leader)
        .min_by_key(|&b| b == controller)
        .unwrap();
    let at_leader = cluster.broker(leader as usize).addr.clone();

    let ok = produce_once(&cluster.bootstrap(), "strict", "all", false, "all three").await;
    assert!(
        ok.is_ok(),
        "acks=all with the full ISR: {ok:?}\n{}",
        cluster.logs()
    );

    cluster.kill9(follower as usize);
    // The leader itself sees the ISR without the follower, so its own check runs on it.
    let (_, shrunk_after) = await_metadata(&at_leader, WAIT, "the ISR shrunk to 2", |m| {
        partitions_of(m, "strict").is_some_and(|ps| ps[0].isr.len() == 2 && ps[0].leader == leader)
    });
    println!(
        "follower {follower} killed: ISR of strict-0 down to 2 after {} ms",
        ms(shrunk_after)
    );

    let refused = produce_once(&cluster.bootstrap(), "strict", "all", false, "too few").await;
    assert!(
        matches!(
            refused,
            Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::NotEnoughReplicas
            ))
        ),
        "acks=all to a topic with min.insync.replicas=3 and an ISR of 2 must fail with \
         NOT_ENOUGH_REPLICAS; got {refused:?}"
    );
    let one = produce_once(&cluster.bootstrap(), "strict", "1", false, "acks one").await;
    assert!(one.is_ok(), "acks=1 with an ISR of 2: {one:?}");
    let inherited = produce_once(&cluster.bootstrap(), "inherits", "all", false, "two").await;
    assert!(
        inherited.is_ok(),
        "acks=all to a topic inheriting min.insync.replicas=2 with an ISR of 2: {inherited:?}"
    );

    cluster.restart(follower as usize);
    let (_, back_after) = await_metadata(&at_leader, WAIT, "the ISR back at 3", |m| {
        fully_in_sync(m, "strict", &[0, 1, 2])
    });
    println!(
        "follower {follower} restarted: back in the ISR after {} ms",
        ms(back_after)
    );
    let again = produce_once(
        &cluster.bootstrap(),
        "strict",
        "all",
        true,
        "all three again",
    )
    .await;
    assert!(again.is_ok(), "acks=all with the ISR back at 3: {again:?}");

    // Everything acknowledged is there, in order.
    let log = read_all(&cluster.bootstrap(), "strict", 1);
    let values: Vec<&[u8]> = log[&0].iter().map(|(_, v)| v.as_slice()).collect();
    assert_eq!(
        values,
        vec![&b"all three"[..], b"acks one", b"all three again"],
        "strict-0 holds the acknowledged messages only"
    );
}

/// A short run of `scripts/fault-loop` against the debug binary.
#[test]
fn fault_loop_three_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut data = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let out = Command::new("python3")
        .arg(root.join("scripts/fault-loop"))
        .args(["--binary", env!("CARGO_BIN_EXE_broker")])
        .args(["--cycles", "3", "--messages-per-cycle", "1500"])
        .args([
            "--partitions",
            "3",
            "--isr-timeout",
            "20",
            "--stop-on-failure",
        ])
        .arg("--data-dir")
        .arg(data.path().join("run"))
        .output()
        .expect("run python3 scripts/fault-loop");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'confluent_kafka'") {
        eprintln!("!!! SKIPPED the fault loop: python3 -m pip install confluent-kafka (scripts/test does)");
        return;
    }
    println!("{stdout}");
    eprintln!("{stderr}");
    println!("fault loop took {} ms", ms(started.elapsed()));
    // A failed run keeps the brokers' data and logs (the script prints where).
    data.disable_cleanup(!out.status.success());
    assert!(
        out.status.success(),
        "scripts/fault-loop failed ({}):\n{stdout}",
        out.status
    );
    assert!(stdout.contains("lost 0, duplicated 0"), "{stdout}");
}

// ---------------------------------------------------------------------------------------------
// Committed offsets are acknowledged writes too

/// The node coordinating `group`, as FindCoordinator answers it (retried while the offsets
/// topic is being created).
fn find_coordinator(addr: &str, group: &str, deadline: Instant) -> i32 {
    use kafka_protocol::messages::FindCoordinatorRequest;
    use kafka_protocol::protocol::StrBytes;
    loop {
        let mut client = common::raw::RawClient::connect(addr);
        let mut request = FindCoordinatorRequest::default();
        request.key = StrBytes::from_string(group.to_string());
        request.key_type = 0;
        let response = client.call(3, &request);
        if response.error_code == 0 {
            return response.node_id.0;
        }
        assert!(
            Instant::now() < deadline,
            "no coordinator for {group}: error {}",
            response.error_code
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Offsets committed through the group coordinator are replicated with the offsets topic:
/// after kill -9 of the coordinator's broker, the new leader of the group's offsets partition
/// answers OffsetFetch with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_a_kill9_of_the_group_coordinator() {
    let mut cluster = Cluster::start_with_properties(3, PROPERTIES, &[]);
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "tracked", 3, None).await;
    let group = "survivors";
    let wanted: Vec<i64> = vec![100, 101, 102];
    let mut committed = TopicPartitionList::new();
    for (p, &offset) in wanted.iter().enumerate() {
        committed
            .add_partition_offset("tracked", p as i32, Offset::Offset(offset))
            .expect("offset");
    }
    let deadline = Instant::now() + WAIT;
    {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        // The first FindCoordinator has the quorum create the offsets topic: retry meanwhile.
        while let Err(e) = consumer.commit(&committed, rdkafka::consumer::CommitMode::Sync) {
            assert!(Instant::now() < deadline, "commit failed: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let coordinator = find_coordinator(&cluster.broker(0).addr, group, deadline);
    let killed_at = Instant::now();
    cluster.kill9(coordinator as usize);
    let survivor = (0..3).find(|&i| i != coordinator as usize).unwrap();
    let new_coordinator = loop {
        let found = find_coordinator(&cluster.broker(survivor).addr, group, deadline);
        if found != coordinator {
            break found;
        }
        assert!(Instant::now() < deadline, "the coordinator did not move");
        std::thread::sleep(Duration::from_millis(50));
    };
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut asked = TopicPartitionList::new();
    for p in 0..3 {
        asked.add_partition("tracked", p);
    }
    let found: Vec<i64> = loop {
        if let Ok(list) = reader.committed_offsets(asked.clone(), Duration::from_secs(5)) {
            let offsets: Vec<i64> = (0..3)
                .map(
                    |p| match list.find_partition("tracked", p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => o,
                        _ => -1,
                    },
                )
                .collect();
            if offsets.iter().all(|&o| o >= 0) {
                break offsets;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no committed offsets after the kill"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "coordinator {coordinator} killed; node {new_coordinator} coordinates the group, committed offsets read back {} ms after the kill",
        killed_at.elapsed().as_millis()
    );
    assert_eq!(found, wanted, "committed offsets lost with the coordinator");
}

/// An acks=all write accepted with a full ISR (3 of 3, `min.insync.replicas=3`) whose ISR then
/// shrinks below the minimum before the write is replicated is answered
/// NOT_ENOUGH_REPLICAS_AFTER_APPEND (Kafka's answer: the write is in the leader's log, but not
/// on as many replicas as required). The follower is paused (SIGSTOP) so it neither fetches
/// nor refuses connections: the quorum fences it after the session timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isr_shrinking_below_min_insync_after_append_is_reported() {
    let cluster = Cluster::start_with_properties(3, PROPERTIES, &[]);
    create_topic(&cluster.bootstrap(), "after", 1, Some("3")).await;
    let (m, _) = await_metadata(&cluster.broker(0).addr, WAIT, "in sync", |m| {
        fully_in_sync(m, "after", &[0, 1, 2]) && m.controller_id.0 >= 0
    });
    let leader = partitions_of(&m, "after").unwrap()[0].leader;
    let controller = m.controller_id.0;
    let follower = (0..3)
        .filter(|&b| b != leader)
        .min_by_key(|&b| b == controller)
        .unwrap();
    let mut client = common::raw::RawClient::connect(&cluster.broker(leader as usize).addr);
    let batch = common::raw::batch(
        &[b"first"],
        None,
        kafka_protocol::records::Compression::None,
    );
    assert_eq!(client.produce("after", 0, batch, -1), (0, 0));

    cluster.signal(follower as usize, libc::SIGSTOP);
    let batch = common::raw::batch(
        &[b"second"],
        None,
        kafka_protocol::records::Compression::None,
    );
    let (code, _) = client.produce("after", 0, batch, -1);
    cluster.signal(follower as usize, libc::SIGCONT);
    assert_eq!(
        code,
        kafka_protocol::ResponseError::NotEnoughReplicasAfterAppend.code(),
        "acks=all appended with 3 in sync, answered after the ISR shrank to 2"
    );
}
