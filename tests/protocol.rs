//! Wire-level tests with a raw client: exact control over sequences, duplicates and bad input.

mod common;

use bytes::{BufMut, BytesMut};
use common::raw::{self, RawClient};
use common::Broker;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::records::Compression;
use kafka_protocol::ResponseError;
use std::time::{Duration, Instant};

#[test]
fn idempotent_retries_are_not_written_twice_and_gaps_are_refused() {
    let broker = Broker::start(2);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic("idem", 2), 0);
    let mut init_request = InitProducerIdRequest::default();
    init_request.transactional_id = None;
    init_request.producer_id = ProducerId(-1);
    init_request.producer_epoch = -1;
    let init = client.call(4, &init_request);
    assert_eq!(init.error_code, 0, "{init:?}");
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    assert!(pid >= 0);

    for partition in 0..2 {
        let first = raw::batch(&[b"a", b"b"], Some((pid, epoch, 0)), Compression::None);
        assert_eq!(client.produce("idem", partition, first.clone(), -1), (0, 0));
        // The retry of a batch the broker already has: same offset, nothing new written.
        assert_eq!(client.produce("idem", partition, first, -1), (0, 0));
        let next = raw::batch(&[b"c"], Some((pid, epoch, 2)), Compression::None);
        assert_eq!(client.produce("idem", partition, next, -1), (0, 2));
        let gap = raw::batch(&[b"x"], Some((pid, epoch, 7)), Compression::None);
        let (code, _) = client.produce("idem", partition, gap, -1);
        assert_eq!(code, ResponseError::OutOfOrderSequenceNumber.code());
        let stale = raw::batch(&[b"y"], Some((pid, epoch - 1, 3)), Compression::None);
        let (code, _) = client.produce("idem", partition, stale, -1);
        assert_eq!(code, ResponseError::InvalidProducerEpoch.code());

        let (error, high_watermark, records) = client.fetch("idem", partition, 0, 0);
        assert_eq!((error, high_watermark), (0, 3));
        let values: Vec<_> = raw::values(records)
            .into_iter()
            .map(|(o, v)| (o, v.to_vec()))
            .collect();
        assert_eq!(
            values,
            vec![(0, b"a".to_vec()), (1, b"b".to_vec()), (2, b"c".to_vec())]
        );
    }
    // Producer ids are never handed out twice.
    let again = client.call(4, &init_request);
    assert_ne!(again.producer_id.0, pid);
}

/// Compressed batches are stored and served byte for byte as the producer built them; only the
/// base offset and leader epoch (outside the CRC) are the broker's.
#[test]
fn batches_are_never_reencoded() {
    let broker = Broker::start(2);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic("codecs", 1), 0);
    let payload = vec![b'z'; 2000];
    let mut sent = Vec::new();
    for (id, compression) in [
        (0u8, Compression::None),
        (1, Compression::Gzip),
        (2, Compression::Snappy),
        (3, Compression::Lz4),
        (4, Compression::Zstd),
    ] {
        let batch = raw::batch(&[&payload, b"second"], None, compression);
        assert_eq!(batch[22] & 7, id);
        let (code, base) = client.produce("codecs", 0, batch.clone(), 1);
        assert_eq!((code, base), (0, id as i64 * 2));
        sent.push(batch);
    }
    let (error, _, records) = client.fetch("codecs", 0, 0, 0);
    assert_eq!(error, 0);
    // Blank out, batch by batch, the two fields the broker owns; the rest must be identical.
    let blank = |bytes: &[u8]| {
        let mut bytes = bytes.to_vec();
        let mut position = 0;
        while position + 12 <= bytes.len() {
            let len =
                i32::from_be_bytes(bytes[position + 8..position + 12].try_into().unwrap()) as usize;
            bytes[position..position + 8].fill(0);
            bytes[position + 12..position + 16].fill(0);
            position += 12 + len;
        }
        bytes
    };
    let sent_all: Vec<u8> = sent.iter().flat_map(|b| b.iter().copied()).collect();
    assert_eq!(blank(&records), blank(&sent_all));
    let values = raw::values(records);
    assert_eq!(values.len(), 10);
    assert!(values.iter().step_by(2).all(|(_, v)| v.len() == 2000));
}

#[test]
fn corrupt_batches_are_refused_with_corrupt_message() {
    let broker = Broker::start(1);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic("crc", 1), 0);
    let mut bad = BytesMut::from(&raw::batch(&[b"payload"], None, Compression::None)[..]);
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    let (code, _) = client.produce("crc", 0, bad.freeze(), 1);
    assert_eq!(code, ResponseError::CorruptMessage.code());
    let (code, _) = client.produce("crc", 0, bytes::Bytes::from_static(&[0u8; 20]), 1);
    assert_eq!(code, ResponseError::CorruptMessage.code());
    let (code, _) = client.produce("crc", 0, raw::batch(&[b"v"], None, Compression::None), 2);
    assert_eq!(code, ResponseError::InvalidRequiredAcks.code());
    let (error, high_watermark, _) = client.fetch("crc", 0, 0, 0);
    assert_eq!((error, high_watermark), (0, 0), "nothing was appended");
    assert!(client.api_versions_ok());
}

#[test]
fn unknown_topics_invalid_names_and_offsets_get_kafka_errors() {
    let broker = Broker::start(1);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(
        client.create_topic("bad/name", 1),
        ResponseError::InvalidTopicException.code()
    );
    assert_eq!(
        client.create_topic(&"x".repeat(250), 1),
        ResponseError::InvalidTopicException.code()
    );
    let (code, _) = client.produce("nope", 0, raw::batch(&[b"v"], None, Compression::None), 1);
    assert_eq!(code, ResponseError::UnknownTopicOrPartition.code());
    assert_eq!(client.create_topic("t", 1), 0);
    let (code, _) = client.produce("t", 5, raw::batch(&[b"v"], None, Compression::None), 1);
    assert_eq!(code, ResponseError::UnknownTopicOrPartition.code());
    let (error, _, _) = client.fetch("t", 0, 42, 0);
    assert_eq!(error, ResponseError::OffsetOutOfRange.code());
}

#[test]
fn oversized_batches_get_message_too_large() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("server.properties");
    std::fs::write(&config, "message.max.bytes=10000\n").unwrap();
    let broker = Broker::start_in(tmp.path(), 1, &["--config", config.to_str().unwrap()]);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic("big", 1), 0);
    let big = vec![7u8; 20_000];
    let (code, _) = client.produce("big", 0, raw::batch(&[&big], None, Compression::None), 1);
    assert_eq!(code, ResponseError::MessageTooLarge.code());
    let small = vec![7u8; 5_000];
    assert_eq!(
        client
            .produce("big", 0, raw::batch(&[&small], None, Compression::None), 1)
            .0,
        0
    );
}

#[test]
fn long_poll_fetch_returns_when_data_arrives() {
    let broker = Broker::start(2);
    let mut admin = RawClient::connect(&broker.addr);
    assert_eq!(admin.create_topic("poll", 2), 0);
    let addr = broker.addr.clone();
    let consumer = std::thread::spawn(move || {
        let mut client = RawClient::connect(&addr);
        let started = std::time::Instant::now();
        let (error, hw, records) = client.fetch("poll", 1, 0, 10_000);
        (error, hw, records.len(), started.elapsed())
    });
    // The fetch is parked on the partition; produce wakes it long before its 10 s deadline.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        admin
            .produce(
                "poll",
                1,
                raw::batch(&[b"wake"], None, Compression::None),
                1
            )
            .0,
        0
    );
    let (error, hw, len, waited) = consumer.join().unwrap();
    assert_eq!((error, hw), (0, 1));
    assert!(len > 0);
    assert!(
        waited < std::time::Duration::from_secs(5),
        "woken by the produce, not the deadline: {waited:?}"
    );
}

/// A long poll over partitions on both shards: whichever partition's shard ends the wait (one
/// of the two rounds is the other shard than the connection's), the response carries that
/// partition's new record and the other partition's state, both current.
#[test]
fn long_poll_over_both_shards_answers_with_the_partition_that_woke_it() {
    let broker = Broker::start(2);
    let mut admin = RawClient::connect(&broker.addr);
    assert_eq!(admin.create_topic("both", 2), 0);
    let mut ends = [0i64, 0];
    for woken in [1, 0] {
        let addr = broker.addr.clone();
        let offsets = ends;
        let consumer = std::thread::spawn(move || {
            let mut client = RawClient::connect(&addr);
            let request = raw::fetch_request("both", &[(0, offsets[0]), (1, offsets[1])], 10_000);
            let started = std::time::Instant::now();
            let response: FetchResponse = client.call(11, &request);
            (response, started.elapsed())
        });
        // Likely parked by then; parked or not, the answer must be the same.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let record = format!("to {woken}");
        let produced = admin.produce(
            "both",
            woken,
            raw::batch(&[record.as_bytes()], None, Compression::None),
            1,
        );
        assert_eq!(produced.0, 0);
        ends[woken as usize] += 1;
        let (response, waited) = consumer.join().unwrap();
        assert!(
            waited < std::time::Duration::from_secs(5),
            "woken by the produce, not the deadline: {waited:?}"
        );
        let mut partitions = response.responses[0].partitions.clone();
        partitions.sort_by_key(|p| p.partition_index);
        assert_eq!(partitions.len(), 2);
        for p in &partitions {
            let index = p.partition_index as usize;
            assert_eq!(p.error_code, 0, "partition {index}");
            assert_eq!(p.high_watermark, ends[index], "partition {index}");
            let records = p.records.clone().unwrap_or_default();
            if index == woken as usize {
                let found = records
                    .windows(record.len())
                    .any(|w| w == record.as_bytes());
                assert!(found, "the record that woke the fetch is in its response");
            } else {
                assert!(records.is_empty(), "nothing new on partition {index}");
            }
        }
    }
}

/// Requests whose bytes arrive in pieces, with pauses between them: a small one cut inside its
/// length prefix and its header, and two larger than the most a parked read waits to have
/// queued (256 KiB) in 64 KiB pieces. The connection's reader parks until the rest of a frame
/// is there (`SO_RCVLOWAT`); each must still be answered, and its records read back whole.
#[test]
fn requests_arriving_in_pieces_are_answered() {
    use std::io::Write;
    let broker = Broker::start(2);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic("pieces", 1), 0);
    let pause = || std::thread::sleep(std::time::Duration::from_millis(30));

    let small = client.encode(3, &ApiVersionsRequest::default());
    for piece in [&small[..2], &small[2..7], &small[7..]] {
        client.stream.write_all(piece).unwrap();
        pause();
    }
    let versions = client.receive::<ApiVersionsRequest>(3);
    assert_eq!(versions.error_code, 0);

    // Two large frames: the first after a small one (read greedily), the second right after
    // it (its length prefix read alone, then the frame into a buffer of its size); then small
    // ones again (the fetches, their length prefixes also read alone).
    let values = [vec![0x5a; 600 * 1024], vec![0xa5; 900 * 1024]];
    for (correlation, value) in (8..).zip(&values) {
        let batch = raw::batch(&[value], None, Compression::None);
        let request = client.encode(correlation, &raw::produce_request("pieces", 0, batch, 1));
        assert!(request.len() > 512 * 1024);
        for piece in request.chunks(64 * 1024) {
            client.stream.write_all(piece).unwrap();
            pause();
        }
        let produced = client.receive::<ProduceRequest>(correlation);
        assert_eq!(produced.responses[0].partition_responses[0].error_code, 0);
    }
    for (offset, value) in (0..).zip(&values) {
        let (error, high_watermark, records) = client.fetch("pieces", 0, offset, 0);
        assert_eq!((error, high_watermark), (0, 2));
        let read = raw::values(records);
        assert!(read[0].1 == *value, "record {offset} read back whole");
    }
}

#[test]
fn metadata_lists_brokers_and_auto_creates_topics() {
    let broker = Broker::start(2);
    let mut client = RawClient::connect(&broker.addr);
    let mut topic = metadata_request::MetadataRequestTopic::default();
    topic.name = Some(TopicName(StrBytes::from_static_str("auto")));
    let mut request = MetadataRequest::default();
    request.topics = Some(vec![topic]);
    request.allow_auto_topic_creation = true;
    let response = client.call(9, &request);
    assert_eq!(response.brokers.len(), 1);
    assert_eq!(
        format!(
            "{}:{}",
            response.brokers[0].host.as_str(),
            response.brokers[0].port
        ),
        broker.addr
    );
    assert_eq!(response.topics[0].error_code, 0);
    assert_eq!(response.topics[0].partitions.len(), 1);
    assert_eq!(response.topics[0].partitions[0].leader_id.0, 0);
    // Clusters answer DescribeCluster with the same broker.
    let cluster = client.call(0, &DescribeClusterRequest::default());
    assert_eq!(cluster.brokers.len(), 1);
    assert!(!cluster.cluster_id.is_empty());
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let broker = Broker::start(2);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic("pipe", 4), 0);
    // Send many produce requests without reading, across partitions on both shards.
    let mut frames = Vec::new();
    for i in 0..50 {
        let mut data = produce_request::PartitionProduceData::default();
        data.index = i % 4;
        data.records = Some(raw::batch(&[b"p"], None, Compression::None));
        let mut t = produce_request::TopicProduceData::default();
        t.name = TopicName(StrBytes::from_static_str("pipe"));
        t.partition_data = vec![data];
        let mut request = ProduceRequest::default();
        request.acks = if i % 2 == 0 { 1 } else { -1 };
        request.timeout_ms = 1000;
        request.topic_data = vec![t];
        frames.push(request);
    }
    for request in &frames {
        client.send(7, request);
    }
    let mut per_partition = [0i64; 4];
    for i in 0..50 {
        // receive() asserts correlation ids arrive in order.
        let mut frame = client.read_frame().unwrap();
        let header = ResponseHeader::decode(&mut frame, 0).unwrap();
        assert_eq!(
            header.correlation_id,
            i + 2,
            "responses come back in request order (1 was CreateTopics)"
        );
        let response = ProduceResponse::decode(&mut frame, 7).unwrap();
        let p = &response.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 0);
        assert_eq!(p.base_offset, per_partition[p.index as usize]);
        per_partition[p.index as usize] += 1;
    }
}

/// Every malformed input is answered or closed; the broker keeps serving other clients.
#[test]
fn malformed_frames_close_the_connection_and_the_broker_keeps_serving() {
    let broker = Broker::start(2);
    let mut good = RawClient::connect(&broker.addr);
    assert_eq!(good.create_topic("ok", 1), 0);

    let header = |key: i16, version: i16| {
        let mut b = BytesMut::new();
        b.put_i16(key);
        b.put_i16(version);
        b.put_i32(1);
        b.put_i16(-1);
        b
    };
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("negative length", (-5i32).to_be_bytes().to_vec()));
    cases.push((
        "length above socket.request.max.bytes",
        (i32::MAX).to_be_bytes().to_vec(),
    ));
    let mut truncated = 100i32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[0, 3, 0, 1]);
    cases.push(("truncated frame", truncated));
    let with_len = |frame: &[u8]| {
        let mut v = (frame.len() as i32).to_be_bytes().to_vec();
        v.extend_from_slice(frame);
        v
    };
    cases.push(("frame shorter than a header", with_len(&[0, 3])));
    cases.push(("unknown api key", with_len(&header(999, 0))));
    cases.push(("unsupported version", with_len(&header(3, 99))));
    let mut garbage = header(19, 5);
    garbage.extend_from_slice(&[0xff; 64]);
    cases.push(("garbage body", with_len(&garbage)));
    let mut huge_array = header(3, 1);
    huge_array.put_i32(i32::MAX);
    cases.push(("oversized array count", with_len(&huge_array)));
    let mut huge_compact = header(3, 9);
    huge_compact.put_u8(0);
    huge_compact.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    cases.push(("oversized compact array", with_len(&huge_compact)));
    let mut huge_string = header(19, 2);
    huge_string.put_i32(1);
    huge_string.put_i16(i16::MAX);
    huge_string.extend_from_slice(b"short");
    cases.push(("oversized string", with_len(&huge_string)));
    let mut huge_bytes = header(0, 7);
    huge_bytes.put_i16(-1); // transactional id
    huge_bytes.put_i16(1); // acks
    huge_bytes.put_i32(1000);
    huge_bytes.put_i32(1); // one topic
    huge_bytes.put_i16(2);
    huge_bytes.extend_from_slice(b"ok");
    huge_bytes.put_i32(1); // one partition
    huge_bytes.put_i32(0);
    huge_bytes.put_i32(i32::MAX); // records length
    cases.push(("oversized records bytes", with_len(&huge_bytes)));

    for (name, bytes) in cases {
        let mut bad = RawClient::connect(&broker.addr);
        use std::io::Write;
        bad.stream.write_all(&bytes).unwrap();
        if name == "truncated frame" {
            bad.stream.shutdown(std::net::Shutdown::Write).unwrap();
        }
        assert!(
            bad.is_closed_by_peer(),
            "{name}: the broker should close the connection"
        );
        assert!(
            good.api_versions_ok(),
            "{name}: a well-behaved client is still served"
        );
        let (code, _) = good.produce(
            "ok",
            0,
            raw::batch(&[b"still fine"], None, Compression::None),
            1,
        );
        assert_eq!(code, 0, "{name}");
    }
    // ApiVersions at a version the broker does not know: answered with v0 and an error.
    let mut old = RawClient::connect(&broker.addr);
    old.send_frame(&header(18, 99));
    let mut frame = old.read_frame().expect("an answer, not a close");
    let _ = ResponseHeader::decode(&mut frame, 0).unwrap();
    let response = ApiVersionsResponse::decode(&mut frame, 0).unwrap();
    assert_eq!(
        response.error_code,
        ResponseError::UnsupportedVersion.code()
    );
    assert!(!response.api_keys.is_empty());

    let log = broker.log();
    assert!(
        log.contains("closing connection"),
        "each close is logged:\n{log}"
    );
    assert!(!log.contains("panicked"), "no panic:\n{log}");
}

/// A log output nobody reads (a full pipe, as a stuck journald leaves it) never stops a shard:
/// the broker keeps serving, and the lines it could not write are dropped and counted. Logging
/// on the shards' own threads, the first line past the pipe's 64 KiB would block the shard
/// that logs it for good.
#[test]
fn a_log_output_nobody_reads_does_not_stop_the_broker() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = common::Broker::start_with_unread_log(tmp.path(), 2, &["--http", "127.0.0.1:0"]);
    let console = broker.console.clone().expect("console");
    let mut good = RawClient::connect(&broker.addr);
    assert_eq!(good.create_topic("ok", 2), 0);

    // Each connection closed for a bad frame logs a line ("closing connection", about 150
    // bytes): together far more than the pipe and the writer's queue hold.
    let lines = broker::logging::QUEUED_LINES_MAX + 4096;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut sent = 0;
    while common::metric(
        &common::http_get(&console, "/metrics"),
        "broker_log_lines_dropped_total",
    ) == 0.0
    {
        assert!(
            Instant::now() < deadline,
            "no line dropped after {sent} closes"
        );
        for _ in 0..lines / 8 {
            let mut bad = RawClient::connect(&broker.addr);
            use std::io::{Read, Write};
            bad.stream.write_all(&(-5i32).to_be_bytes()).unwrap();
            // Closed, not timed out (the client's read timeout is 20 s).
            match bad.stream.read(&mut [0u8; 1]) {
                Ok(0) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                other => panic!("close {sent}: the connection was not closed: {other:?}"),
            }
            sent += 1;
        }
    }
    // Both shards still serve: they log, and nothing waits on the output.
    for partition in 0..2 {
        let (code, _) = good.produce(
            "ok",
            partition,
            raw::batch(&[b"still served"], None, Compression::None),
            1,
        );
        assert_eq!(code, 0, "partition {partition}");
    }
    assert!(good.api_versions_ok());
}

/// SIGTERM and SIGINT are blocked in every thread of the broker but the main one, which takes
/// them with `sigwait` for the clean shutdown: a thread that left them unblocked could be the
/// kernel's pick for a SIGTERM that arrives before the main thread waits for it, and the
/// default action would end the process uncleanly. (The log writer, started first thing in
/// `main`, once was such a thread: a test's SIGTERM right after the ready line killed the
/// broker.)
#[test]
fn only_the_main_thread_can_take_a_shutdown_signal() {
    let broker = Broker::start(2);
    let pid = broker.pid().expect("running");
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    let mut threads = 0;
    for task in tasks {
        let tid: u32 = task.unwrap().file_name().to_string_lossy().parse().unwrap();
        if tid == pid {
            continue; // in sigwait, which unblocks what it waits for
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) else {
            continue; // ended meanwhile
        };
        let name = status.lines().next().unwrap_or_default().to_string();
        let blocked = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
            .expect("SigBlk");
        for signal in [libc::SIGINT, libc::SIGTERM] {
            assert!(
                blocked & (1 << (signal - 1)) != 0,
                "thread {tid} ({name}) can take signal {signal}: SigBlk {blocked:x}"
            );
        }
        threads += 1;
    }
    assert!(threads >= 3, "shards and helpers checked: {threads}");
}

#[test]
fn create_partitions_grows_a_topic_and_never_shrinks_it() {
    let broker = Broker::start(2);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic("grow", 1), 0);
    assert_eq!(client.create_partitions("grow", 3), 0);
    assert_eq!(client.partition_count("grow"), Some(3));
    let (code, base) = client.produce(
        "grow",
        2,
        raw::batch(&[b"new partition"], None, Compression::None),
        1,
    );
    assert_eq!((code, base), (0, 0));
    assert_eq!(
        client.create_partitions("grow", 2),
        ResponseError::InvalidPartitions.code()
    );
    assert_eq!(
        client.create_partitions("missing", 2),
        ResponseError::UnknownTopicOrPartition.code()
    );
}

/// A broker of `cores` shards whose retention check runs every `retention_check_interval_ms`,
/// with topic `rolling` (one partition): 20,000-byte segments, 60,000 bytes kept, no time
/// limit (the test batches carry 2023 timestamps, which 7 days would delete).
fn broker_with_a_rolling_topic(
    tmp: &tempfile::TempDir,
    cores: usize,
    retention_check_interval_ms: u64,
) -> (Broker, RawClient) {
    let config = tmp.path().join("server.properties");
    std::fs::write(
        &config,
        format!("log.retention.check.interval.ms={retention_check_interval_ms}\n"),
    )
    .unwrap();
    let broker = Broker::start_in(tmp.path(), cores, &["--config", config.to_str().unwrap()]);
    let mut client = RawClient::connect(&broker.addr);
    let topic_configs = [
        ("segment.bytes", "20000"),
        ("retention.bytes", "60000"),
        ("retention.ms", "-1"),
    ];
    assert_eq!(client.create_topic_with("rolling", 1, &topic_configs), 0);
    (broker, client)
}

/// Produces records `offsets` of 4,000 bytes each to `rolling`, one request each, checking
/// that each lands at its offset.
fn produce_to_rolling(client: &mut RawClient, offsets: std::ops::Range<i64>) {
    let value = vec![3u8; 4000];
    for offset in offsets {
        let (code, base) = client.produce(
            "rolling",
            0,
            raw::batch(&[&value], None, Compression::None),
            1,
        );
        assert_eq!((code, base), (0, offset));
    }
}

#[test]
fn segments_roll_with_kafka_names_and_retention_deletes_old_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (broker, mut client) = broker_with_a_rolling_topic(&tmp, 2, 100);
    produce_to_rolling(&mut client, 0..60);
    let dir = broker.data_dir.join("rolling-0");
    let segments = || {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".log"))
            .collect();
        names.sort();
        names
    };
    // Retention keeps about retention.bytes of closed segments plus the active one.
    assert!(
        common::wait_until(std::time::Duration::from_secs(20), || client
            .list_offset("rolling", 0, -2)
            .1
            > 0),
        "retention never advanced the log start offset"
    );
    let (error, earliest) = client.list_offset("rolling", 0, -2);
    assert_eq!(error, 0);
    // The log start moves at once; the files go on the blocking thread right after (as Kafka
    // deletes them after `file.delete.delay.ms`).
    assert!(
        common::wait_until(std::time::Duration::from_secs(20), || {
            segments().first() == Some(&format!("{earliest:020}.log"))
        }),
        "log start {earliest} is not the first remaining segment: {:?}",
        segments()
    );
    let names = segments();
    assert!(names.len() >= 2, "{names:?}");
    for name in &names {
        assert_eq!(name.len(), 24, "Kafka's 20-digit base offset names: {name}");
    }
    assert_eq!(client.list_offset("rolling", 0, -1), (0, 60));
    let (error, _, _) = client.fetch("rolling", 0, 0, 0);
    assert_eq!(
        error,
        ResponseError::OffsetOutOfRange.code(),
        "deleted offsets are out of range"
    );
    let (error, _, records) = client.fetch("rolling", 0, earliest, 0);
    assert_eq!(error, 0);
    assert_eq!(raw::values(records)[0].0, earliest);
}

/// Size-based retention can only free a segment when a roll closes another, and the freed
/// file is what the partition's next roll reuses: a partition that rolled is checked at the
/// shard's next housekeeping tick, not only every `log.retention.check.interval.ms`.
#[test]
fn retention_runs_after_a_roll_without_waiting_for_the_check_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let (broker, mut client) = broker_with_a_rolling_topic(&tmp, 1, 3_600_000);
    produce_to_rolling(&mut client, 0..40);
    assert!(
        common::wait_until(std::time::Duration::from_secs(20), || client
            .list_offset("rolling", 0, -2)
            .1
            > 0),
        "retention waited for its hourly check"
    );
    // The deleted segments' files are kept for the rolls that follow to reuse.
    let dir = broker.data_dir.join("rolling-0");
    let reusable = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "reuse")
            })
            .count()
    };
    assert!(
        common::wait_until(std::time::Duration::from_secs(20), || reusable() > 0),
        "no deleted segment file kept for reuse"
    );
    produce_to_rolling(&mut client, 40..80);
    let (error, earliest) = client.list_offset("rolling", 0, -2);
    assert_eq!(error, 0);
    let (error, _, records) = client.fetch("rolling", 0, earliest, 0);
    assert_eq!(error, 0);
    assert_eq!(raw::values(records)[0].0, earliest);
    assert_eq!(client.list_offset("rolling", 0, -1), (0, 80));
}

#[test]
fn connection_and_inflight_limits_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("server.properties");
    std::fs::write(
        &config,
        "max.connections=3\nmax.inflight.requests.per.connection=2\n",
    )
    .unwrap();
    let broker = Broker::start_in(tmp.path(), 1, &["--config", config.to_str().unwrap()]);
    let mut first = RawClient::connect(&broker.addr);
    assert!(first.api_versions_ok());
    let mut second = RawClient::connect(&broker.addr);
    assert!(second.api_versions_ok());
    let mut third = RawClient::connect(&broker.addr);
    assert!(third.api_versions_ok());
    let mut fourth = RawClient::connect(&broker.addr);
    assert!(
        fourth.is_closed_by_peer(),
        "the fourth connection is refused"
    );
    drop(third);
    assert!(
        common::wait_until(std::time::Duration::from_secs(10), || {
            let mut again = RawClient::connect(&broker.addr);
            again.send(3, &ApiVersionsRequest::default());
            again.read_frame().is_some()
        }),
        "a slot frees up when a connection closes"
    );
    // Far more pipelined requests than the in-flight limit: all answered, in order.
    for _ in 0..100 {
        first.send(3, &ApiVersionsRequest::default());
    }
    for _ in 0..100 {
        assert!(first.read_frame().is_some());
    }
    assert!(
        broker.log().contains("max.connections"),
        "refusals are logged"
    );
}

/// The README's first command runs with the defaults: the relative `./data`, and one shard per
/// CPU (no `--cores`), which the ready line says. Partitions land on every shard.
#[test]
fn the_defaults_work_a_relative_data_dir_and_one_shard_per_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start_relative(tmp.path(), 0);
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(
        broker.ready_line.contains(&format!(
            "with {cpus} shards (default: one per CPU; --cores N to change)"
        )),
        "{}",
        broker.ready_line
    );
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic("relative", 4), 0);
    for partition in 0..4 {
        let (code, base) = client.produce(
            "relative",
            partition,
            raw::batch(&[b"v"], None, Compression::None),
            1,
        );
        assert_eq!(
            (code, base),
            (0, 0),
            "partition {partition}: {}",
            broker.log()
        );
    }
    assert!(tmp.path().join("data/relative-3").is_dir());
}

/// A client that claims to be a replica (CVE-2018-1288: a replica's fetch offset moves the
/// high watermark) is refused, at the old versions (no broker epoch) and at v15 with a made-up
/// epoch; an ordinary consumer fetch of the same partition works. OffsetForLeaderEpoch answers
/// where the current epoch ends.
#[test]
fn a_client_cannot_fetch_as_a_replica() {
    let broker = Broker::start(1);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic("spoof", 1), 0);
    let batch = raw::batch(&[b"a", b"b"], None, Compression::None);
    assert_eq!(client.produce("spoof", 0, batch, -1), (0, 0));

    let fetch_as = |client: &mut RawClient, version: i16, replica: i32, epoch: i64| {
        let mut p = fetch_request::FetchPartition::default();
        p.partition = 0;
        p.fetch_offset = 0;
        p.current_leader_epoch = -1;
        p.partition_max_bytes = 1 << 20;
        let mut t = fetch_request::FetchTopic::default();
        t.topic = TopicName(StrBytes::from_static_str("spoof"));
        t.partitions = vec![p];
        let mut request = FetchRequest::default();
        if version >= 15 {
            request.replica_state = fetch_request::ReplicaState::default()
                .with_replica_id(BrokerId(replica))
                .with_replica_epoch(epoch);
        } else {
            request.replica_id = BrokerId(replica);
        }
        request.max_wait_ms = 0;
        request.max_bytes = 1 << 20;
        request.session_epoch = -1;
        request.topics = vec![t];
        let response = client.call(version, &request);
        response.responses[0].partitions[0].error_code
    };
    let refused = ResponseError::TopicAuthorizationFailed.code();
    assert_eq!(fetch_as(&mut client, 12, 0, 0), refused, "v12 replica id");
    assert_eq!(fetch_as(&mut client, 12, 7, 0), refused, "unknown broker");
    // At v13+ topics go by id; by name the topic is unknown, and the claim is refused first.
    assert_eq!(
        fetch_as(&mut client, 15, 0, 12345),
        refused,
        "made-up epoch"
    );
    assert_eq!(fetch_as(&mut client, 12, -1, 0), 0, "consumer");

    let mut request = OffsetForLeaderEpochRequest::default();
    request.replica_id = BrokerId(-1);
    let mut partition = offset_for_leader_epoch_request::OffsetForLeaderPartition::default();
    partition.partition = 0;
    partition.current_leader_epoch = -1;
    partition.leader_epoch = 0;
    let mut topic = offset_for_leader_epoch_request::OffsetForLeaderTopic::default();
    topic.topic = TopicName(StrBytes::from_static_str("spoof"));
    topic.partitions = vec![partition];
    request.topics = vec![topic];
    let response = client.call(4, &request);
    let answer = &response.topics[0].partitions[0];
    assert_eq!(
        (answer.error_code, answer.leader_epoch, answer.end_offset),
        (0, 0, 2)
    );
}

/// The response size limit (`max_bytes`) sends the first partition's first batch whole
/// (KIP-74) and cuts the rest; a partition cut inside its first batch is sent empty, as Kafka
/// does, since clients fail on records holding no whole batch ("no complete records").
#[test]
fn a_partition_cut_inside_its_first_batch_is_sent_empty() {
    let broker = Broker::start(2);
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic("cut", 2), 0);
    let value = [b'x'; 50];
    let values: Vec<&[u8]> = (0..20).map(|_| &value[..]).collect();
    let batch = raw::batch(&values, None, Compression::None);
    let batch_len = batch.len() as i32;
    assert_eq!(client.produce("cut", 0, batch.clone(), -1).0, 0);
    assert_eq!(client.produce("cut", 1, batch.clone(), -1).0, 0);
    assert_eq!(client.produce("cut", 1, batch, -1).0, 0);

    let fetch_both = |client: &mut RawClient, max_bytes: i32| {
        let mut request = raw::fetch_request("cut", &[(0, 0), (1, 0)], 0);
        request.max_bytes = max_bytes;
        let response = client.call(11, &request);
        response.responses[0]
            .partitions
            .iter()
            .map(|p| p.records.clone().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    // Room for p0's batch and 10 bytes: p1 gets nothing rather than 10 bytes of a batch.
    let records = fetch_both(&mut client, batch_len + 10);
    assert_eq!(records[0].len() as i32, batch_len);
    assert!(records[1].is_empty(), "{} bytes", records[1].len());
    // Room for one batch of p1 and 10 bytes of the next: the whole one and the cut tail.
    let records = fetch_both(&mut client, 2 * batch_len + 10);
    assert_eq!(records[1].len() as i32, batch_len + 10);
    assert_eq!(raw::values(records[1].clone()).len(), 20);
}

/// The broker's `fetch.max.bytes` caps a consumer's Fetch response whatever its `max_bytes`
/// asks, as Kafka's does; either limit cuts the first partition too, past its first batch,
/// which goes whole however small the limit (KIP-74).
#[test]
fn the_brokers_fetch_max_bytes_caps_a_consumers_response() {
    let value = [b'x'; 50];
    let values: Vec<&[u8]> = (0..20).map(|_| &value[..]).collect();
    let batch = raw::batch(&values, None, Compression::None);
    let batch_len = batch.len();
    // Room for two produce requests' batches and 10 bytes of a third's.
    let cap = (2 * batch_len + 10).max(1024);
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start_in(
        tmp.path(),
        1,
        &["--override", &format!("fetch.max.bytes={cap}")],
    );
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(client.create_topic("capped", 1), 0);
    for _ in 0..4 {
        assert_eq!(client.produce("capped", 0, batch.clone(), -1).0, 0);
    }
    let mut fetch = |max_bytes: i32| {
        let mut request = raw::fetch_request("capped", &[(0, 0)], 0);
        request.max_bytes = max_bytes;
        let response = client.call(11, &request);
        response.responses[0].partitions[0]
            .records
            .clone()
            .unwrap_or_default()
    };
    let records = fetch(50 << 20);
    assert_eq!(records.len(), cap, "cut at fetch.max.bytes, not at 50 MiB");
    assert_eq!(
        raw::values(records).len(),
        20 * (cap / batch_len),
        "the whole batches under the cap"
    );
    // The client's own smaller limit cuts the first partition as well...
    let records = fetch(batch_len as i32 + 10);
    assert_eq!(records.len(), batch_len + 10);
    assert_eq!(raw::values(records).len(), 20);
    // ...but never inside its first batch (the encoder made one batch per record here).
    let first_batch_len = 12 + i32::from_be_bytes(batch[8..12].try_into().unwrap()) as usize;
    let records = fetch(10);
    assert_eq!(records.len(), first_batch_len, "the first batch whole");
    assert_eq!(raw::values(records).len(), 1);
}

/// The CPUs the threads of each shard (named `shard-<id>-...`: the executor and its helper
/// threads) may run on, from /proc.
fn shard_cpu_lists(pid: u32) -> Vec<(String, String)> {
    let mut lists = std::collections::BTreeSet::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if !name.starts_with("shard-") {
            continue;
        }
        let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
        if let Some(cpus) = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        {
            lists.insert((name.trim().to_string(), cpus.trim().to_string()));
        }
    }
    lists.into_iter().collect()
}

/// Shards are pinned, one CPU each, when there is a CPU for every shard; `--overprovisioned`
/// (CPUs shared with other busy processes) leaves them free to run on any allowed CPU.
#[test]
fn shards_are_pinned_unless_overprovisioned() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    let tmp = tempfile::tempdir().unwrap();
    let pinned = Broker::start_in(tmp.path(), 0, &[]);
    let lists = shard_cpu_lists(pinned.pid().unwrap());
    assert_eq!(lists.len(), cpus, "one thread per shard: {lists:?}");
    let distinct: std::collections::BTreeSet<_> = lists.iter().map(|(_, l)| l.clone()).collect();
    assert_eq!(distinct.len(), cpus, "each shard on its own CPU: {lists:?}");
    drop(pinned);

    let tmp = tempfile::tempdir().unwrap();
    let free = Broker::start_in(tmp.path(), 0, &["--overprovisioned"]);
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let allowed = ours
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string();
    let lists = shard_cpu_lists(free.pid().unwrap());
    assert_eq!(lists.len(), cpus, "{lists:?}");
    for (name, list) in &lists {
        assert_eq!(list, &allowed, "{name} runs on every allowed CPU");
    }
    assert!(free.log().contains("overprovisioned"), "{}", free.log());
}

/// Whether every thread of `pid` is stopped (state `T` in `/proc/PID/task/*/stat`).
fn every_thread_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            // The state follows the command name, which is in parentheses and may hold spaces.
            .and_then(|stat| {
                stat.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('T'))
            })
            .unwrap_or(false)
    })
}

/// A request that arrives while the broker cannot read it (the process stopped, as a shard busy
/// with other work would leave it) is counted in `broker_request_socket_wait_seconds` with the
/// time it waited in its socket; one read at once is counted as a short wait.
#[test]
fn a_request_that_waited_in_its_socket_is_measured_and_logged_as_slow() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start_in(
        tmp.path(),
        1,
        &[
            "--http",
            "127.0.0.1:0",
            "--override",
            "request.slow.log.ms=250",
        ],
    );
    let console = broker.console.clone().expect("console");
    let waits = |bound: &str| {
        let text = common::http_get(&console, "/metrics");
        let count = common::metric(&text, "broker_request_socket_wait_seconds_count");
        let within = text
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "broker_request_socket_wait_seconds_bucket{{le=\"{bound}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no bucket le={bound} in:\n{text}"));
        (count, within)
    };
    let mut client = RawClient::connect(&broker.addr);
    // The kernel turns stamping on a moment after the broker asks (`net::rx_stamp`).
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            assert!(client.api_versions_ok());
            waits("0.25").0 >= 1.0
        }),
        "no request read at once was counted"
    );
    let (count, within) = waits("0.25");
    assert_eq!(count, within, "requests read at once waited under 250 ms");
    let slow = || {
        common::metric(
            &common::http_get(&console, "/metrics"),
            "broker_slow_requests_total",
        )
    };
    assert_eq!(slow(), 0.0, "no request was slow yet");

    let pid = broker.pid().expect("pid") as i32;
    // SAFETY: signals to the broker's own process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    // kill returns once the signal is queued; a thread running on another CPU stops a moment
    // later, and could read the request first (a short wait, then this test failed).
    assert!(
        common::wait_until(Duration::from_secs(10), || every_thread_stopped(pid)),
        "the broker's threads did not all stop"
    );
    client.send(3, &ApiVersionsRequest::default());
    // The wait being measured: the request sits in the kernel meanwhile.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let response = client.receive::<ApiVersionsRequest>(3);
    assert_eq!(response.error_code, 0);

    let (count_after, within_after) = waits("0.25");
    assert!(
        count_after - within_after >= 1.0,
        "the request that waited 400 ms counted over 250 ms: {count_after} counted, {within_after} under 250 ms"
    );
    let (_, within_10s) = waits("10.0");
    assert_eq!(within_10s, count_after, "and under 10 s");

    // The slow-request log says where its time went: in the socket, not in the broker's work.
    assert_eq!(slow(), 1.0, "the one slow request is counted");
    let log = broker.log();
    let line = log
        .lines()
        .find(|l| l.contains("slow request"))
        .unwrap_or_else(|| panic!("no slow-request line in the log:\n{log}"));
    assert!(line.contains("api=ApiVersions"), "{line}");
    let field = |name: &str| -> f64 {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.trim_matches('"').parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    assert!(field("socket_ms") >= 250.0, "{line}");
    assert!(field("in_broker_ms") >= field("socket_ms"), "{line}");
    assert!(
        field("dispatch_ms") < 250.0 && field("send_ms") < 250.0,
        "{line}"
    );
}
