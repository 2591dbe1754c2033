//! A minimal blocking Kafka client over std sockets, for tests that need exact control over
//! the bytes on the wire (duplicates, sequence gaps, malformed frames).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

pub struct RawClient {
    pub stream: TcpStream,
    correlation_id: i32,
}

impl RawClient {
    pub fn connect(addr: &str) -> RawClient {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        RawClient {
            stream,
            correlation_id: 0,
        }
    }

    /// Sends a request and decodes its response.
    pub fn call<R: Request>(&mut self, version: i16, request: &R) -> R::Response {
        self.send(version, request);
        self.receive::<R>(version)
    }

    pub fn send<R: Request>(&mut self, version: i16, request: &R) {
        let frame = self.encode(version, request);
        self.stream.write_all(&frame).expect("write");
    }

    /// The next request's bytes as they go on the wire (length prefix included), for a test
    /// that writes them itself; `receive` then reads its response.
    pub fn encode<R: Request>(&mut self, version: i16, request: &R) -> Vec<u8> {
        self.correlation_id += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = self.correlation_id;
        header.client_id = Some(StrBytes::from_static_str("raw-test"));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, R::header_version(version))
            .unwrap();
        request.encode(&mut body, version).unwrap();
        with_length(&body)
    }

    pub fn send_frame(&mut self, frame: &[u8]) {
        self.stream.write_all(&with_length(frame)).expect("write");
    }

    pub fn receive<R: Request>(&mut self, version: i16) -> R::Response {
        let mut frame = self.read_frame().expect("response frame");
        let header =
            ResponseHeader::decode(&mut frame, R::Response::header_version(version)).unwrap();
        assert_eq!(
            header.correlation_id, self.correlation_id,
            "responses come in request order"
        );
        R::Response::decode(&mut frame, version).expect("decode response")
    }

    /// Reads one response frame; None on EOF or reset.
    pub fn read_frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).ok()?;
        let len = i32::from_be_bytes(len) as usize;
        let mut frame = vec![0u8; len];
        self.stream.read_exact(&mut frame).ok()?;
        Some(Bytes::from(frame))
    }

    /// True when the broker closed the connection (EOF or reset) within the read timeout.
    pub fn is_closed_by_peer(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }

    pub fn api_versions_ok(&mut self) -> bool {
        let response = self.call(3, &ApiVersionsRequest::default());
        response.error_code == 0 && !response.api_keys.is_empty()
    }

    pub fn create_topic(&mut self, name: &str, partitions: i32) -> i16 {
        let mut topic = create_topics_request::CreatableTopic::default();
        topic.name = TopicName(StrBytes::from_string(name.into()));
        topic.num_partitions = partitions;
        topic.replication_factor = 1;
        let mut request = CreateTopicsRequest::default();
        request.topics = vec![topic];
        request.timeout_ms = 10_000;
        self.call(5, &request).topics[0].error_code
    }

    /// Produces one batch to a partition and returns (error code, base offset).
    pub fn produce(&mut self, topic: &str, partition: i32, batch: Bytes, acks: i16) -> (i16, i64) {
        let response = self.call(8, &produce_request(topic, partition, batch, acks));
        let p = &response.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    }

    /// Fetches from one partition; returns (error, high watermark, record bytes).
    pub fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait_ms: i32,
    ) -> (i16, i64, Bytes) {
        let request = fetch_request(topic, &[(partition, offset)], max_wait_ms);
        let response = self.call(11, &request);
        let p = &response.responses[0].partitions[0];
        (
            p.error_code,
            p.high_watermark,
            p.records.clone().unwrap_or_default(),
        )
    }
}

/// A Produce (v8) of one batch to one partition.
pub fn produce_request(topic: &str, partition: i32, batch: Bytes, acks: i16) -> ProduceRequest {
    let mut data = produce_request::PartitionProduceData::default();
    data.index = partition;
    data.records = Some(batch);
    let mut t = produce_request::TopicProduceData::default();
    t.name = TopicName(StrBytes::from_string(topic.into()));
    t.partition_data = vec![data];
    let mut request = ProduceRequest::default();
    request.acks = acks;
    request.timeout_ms = 10_000;
    request.topic_data = vec![t];
    request
}

/// `frame` behind its 4-byte length.
fn with_length(frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() + 4);
    out.put_i32(frame.len() as i32);
    out.extend_from_slice(frame);
    out
}

/// A consumer's Fetch (v12) of `partitions`, (index, fetch offset) pairs of one topic: up to
/// 1 MiB per partition and 50 MiB in all, answered once one byte is there or after
/// `max_wait_ms`. No topic at all when `partitions` is empty (an incremental fetch that
/// changes nothing).
pub fn fetch_request(topic: &str, partitions: &[(i32, i64)], max_wait_ms: i32) -> FetchRequest {
    let mut request = FetchRequest::default();
    request.replica_id = BrokerId(-1);
    request.max_wait_ms = max_wait_ms;
    request.min_bytes = 1;
    request.max_bytes = 50 << 20;
    if partitions.is_empty() {
        return request;
    }
    let mut t = fetch_request::FetchTopic::default();
    t.topic = TopicName(StrBytes::from_string(topic.into()));
    t.partitions = partitions
        .iter()
        .map(|&(partition, offset)| {
            let mut p = fetch_request::FetchPartition::default();
            p.partition = partition;
            p.fetch_offset = offset;
            p.partition_max_bytes = 1 << 20;
            p
        })
        .collect();
    request.topics = vec![t];
    request
}

/// Encodes a RecordBatch v2 of `values`, optionally from an idempotent producer.
pub fn batch(
    values: &[&[u8]],
    producer: Option<(i64, i16, i32)>,
    compression: Compression,
) -> Bytes {
    let (producer_id, producer_epoch, base_sequence) = producer.unwrap_or((-1, -1, -1));
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: if base_sequence < 0 {
                -1
            } else {
                base_sequence + i as i32
            },
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::copy_from_slice(v)),
            headers: Default::default(),
        })
        .collect();
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encode batch");
    out.freeze()
}

/// Decodes the values of every record in a fetch response's record bytes.
pub fn values(mut records: Bytes) -> Vec<(i64, Bytes)> {
    let mut out = Vec::new();
    // Drop a partial trailing batch, as clients do.
    let mut whole = BytesMut::new();
    let mut rest = records.clone();
    while rest.remaining() >= 12 {
        let len = i32::from_be_bytes(rest[8..12].try_into().unwrap()) as usize + 12;
        if rest.remaining() < len {
            break;
        }
        whole.extend_from_slice(&rest[..len]);
        rest.advance(len);
    }
    records = whole.freeze();
    let batches = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut records)
        .expect("decode records");
    for batch in batches {
        for record in batch.records {
            out.push((record.offset, record.value.unwrap_or_default()));
        }
    }
    out
}

impl RawClient {
    /// ListOffsets for one partition: (error, offset) for `timestamp` (-1 latest, -2 earliest).
    pub fn list_offset(&mut self, topic: &str, partition: i32, timestamp: i64) -> (i16, i64) {
        let mut p = list_offsets_request::ListOffsetsPartition::default();
        p.partition_index = partition;
        p.timestamp = timestamp;
        let mut t = list_offsets_request::ListOffsetsTopic::default();
        t.name = TopicName(StrBytes::from_string(topic.into()));
        t.partitions = vec![p];
        let mut request = ListOffsetsRequest::default();
        request.replica_id = BrokerId(-1);
        request.topics = vec![t];
        let response = self.call(5, &request);
        let p = &response.topics[0].partitions[0];
        (p.error_code, p.offset)
    }

    /// Partition count of `topic` as Metadata reports it (None when unknown).
    pub fn partition_count(&mut self, topic: &str) -> Option<usize> {
        let mut t = metadata_request::MetadataRequestTopic::default();
        t.name = Some(TopicName(StrBytes::from_string(topic.into())));
        let mut request = MetadataRequest::default();
        request.topics = Some(vec![t]);
        let response = self.call(9, &request);
        let topic = &response.topics[0];
        (topic.error_code == 0).then_some(topic.partitions.len())
    }

    pub fn create_topic_with(
        &mut self,
        name: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> i16 {
        let mut topic = create_topics_request::CreatableTopic::default();
        topic.name = TopicName(StrBytes::from_string(name.into()));
        topic.num_partitions = partitions;
        topic.replication_factor = 1;
        topic.configs = configs
            .iter()
            .map(|(k, v)| {
                let mut c = create_topics_request::CreatableTopicConfig::default();
                c.name = StrBytes::from_string(k.to_string());
                c.value = Some(StrBytes::from_string(v.to_string()));
                c
            })
            .collect();
        let mut request = CreateTopicsRequest::default();
        request.topics = vec![topic];
        request.timeout_ms = 10_000;
        self.call(5, &request).topics[0].error_code
    }

    pub fn create_partitions(&mut self, topic: &str, count: i32) -> i16 {
        let mut t = create_partitions_request::CreatePartitionsTopic::default();
        t.name = TopicName(StrBytes::from_string(topic.into()));
        t.count = count;
        let mut request = CreatePartitionsRequest::default();
        request.topics = vec![t];
        request.timeout_ms = 10_000;
        self.call(2, &request).results[0].error_code
    }

    /// CreateTopics with a replication factor; returns the error code and message.
    pub fn create_topic_rf(
        &mut self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
    ) -> (i16, Option<String>) {
        let mut topic = create_topics_request::CreatableTopic::default();
        topic.name = TopicName(StrBytes::from_string(name.into()));
        topic.num_partitions = partitions;
        topic.replication_factor = replication_factor;
        let mut request = CreateTopicsRequest::default();
        request.topics = vec![topic];
        request.timeout_ms = 10_000;
        let result = &self.call(7, &request).topics[0];
        (
            result.error_code,
            result.error_message.as_ref().map(|m| m.to_string()),
        )
    }
}
