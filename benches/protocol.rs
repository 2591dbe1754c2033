//! Hot pieces of the request path: decoding a Produce request (as every frame is decoded) and
//! validating its RecordBatch (header parse plus CRC-32C).
//!
//! Run: `cargo bench --bench protocol`

use broker::protocol::decode_request;
use broker::record_batch;
use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader, TopicName};
use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// One RecordBatch v2 of `count` records of `value_bytes` each.
fn batch(count: usize, value_bytes: usize) -> Bytes {
    let value = Bytes::from(vec![b'v'; value_bytes]);
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch unless offset - sequence stays constant; the
            // header's base sequence is the first record's, -1 (no idempotence).
            sequence: i as i32 - 1,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(value.clone()),
            headers: Default::default(),
        })
        .collect();
    let mut out = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut out, &records, &options).unwrap();
    out.freeze()
}

/// A Produce v9 frame (without its length prefix) carrying `partitions` batches.
fn produce_frame(partitions: i32, records: Bytes) -> Bytes {
    let mut request = ProduceRequest::default();
    request.acks = 1;
    request.timeout_ms = 1000;
    let mut topic = TopicProduceData::default();
    topic.name = TopicName(StrBytes::from_static_str("bench"));
    topic.partition_data = (0..partitions)
        .map(|p| {
            let mut data = PartitionProduceData::default();
            data.index = p;
            data.records = Some(records.clone());
            data
        })
        .collect();
    request.topic_data = vec![topic];
    let mut header = RequestHeader::default();
    header.request_api_key = ApiKey::Produce as i16;
    header.request_api_version = 9;
    header.correlation_id = 1;
    let mut frame = BytesMut::new();
    header
        .encode(&mut frame, ProduceRequest::header_version(9))
        .unwrap();
    request.encode(&mut frame, 9).unwrap();
    frame.freeze()
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_produce_request");
    // 16 records of 1 KiB per partition, as librdkafka batches under load.
    let records = batch(16, 1024);
    for partitions in [1, 8] {
        let frame = produce_frame(partitions, records.clone());
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(partitions),
            &frame,
            |b, frame| b.iter(|| decode_request(frame.clone()).expect("valid frame")),
        );
    }
    group.finish();
}

fn bench_validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate_batch");
    for (count, size) in [(1, 100), (16, 1024), (256, 1024)] {
        let b = batch(count, size);
        group.throughput(Throughput::Bytes(b.len() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{count}x{size}B")),
            &b,
            |bench, b| bench.iter(|| record_batch::validate(b, 1 << 20).expect("valid batch")),
        );
    }
    group.finish();
}

criterion_group!(benches, bench_decode, bench_validate);
criterion_main!(benches);
