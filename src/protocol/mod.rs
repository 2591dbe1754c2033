//! Kafka wire protocol: request framing, guarded decoding, response encoding (the RecordBatch
//! v2 format itself is [`crate::record_batch`]). Message bodies come from the `kafka-protocol` crate, except the Fetch
//! response, which is encoded here so that record bytes can go to the socket with sendfile.

pub mod fetch_response;

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

use kafka_protocol::ResponseError;

use crate::storage::ReadSlice;

/// The APIs this broker serves, with the version range it accepts for each. These cover what
/// librdkafka 2.x, kafka-python, franz-go and the Java client 3.x negotiate.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    // v13-15 (topic ids, the replica's broker epoch) are accepted for replica fetches between
    // brokers; clients are offered up to v12 (`advertised_max_version`).
    (ApiKey::Fetch, 4, 15),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeCluster, 0, 1),
    // Operator APIs on partitions (handlers::partition_admin, handlers::alter_replica_log_dirs).
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 0),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::AlterReplicaLogDirs, 1, 2),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    // Consumer groups (handlers::groups).
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    // Transactions (handlers::transactions).
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::WriteTxnMarkers, 0, 1),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
];

/// The highest version of `key` offered to clients in ApiVersions: the accepted maximum, except
/// Fetch, whose v13+ (topic ids in requests and responses) only brokers use for now.
pub fn advertised_max_version(key: ApiKey, max: i16) -> i16 {
    match key {
        ApiKey::Fetch => max.min(12),
        _ => max,
    }
}

/// The supported version range of `key`, if the broker serves it.
pub fn supported_versions(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_APIS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, min, max)| (min, max))
}

/// A Kafka error code with the message some responses carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ResponseError,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ResponseError, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// Why a request frame could not be understood. Each one closes the connection, as Kafka does,
/// after a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Too short to hold a request header.
    ShortFrame(usize),
    UnknownApiKey(i16),
    /// A known API at a version outside [`SUPPORTED_APIS`] (ApiVersions is answered instead).
    UnsupportedVersion {
        api_key: i16,
        version: i16,
    },
    /// The header or body does not parse.
    Malformed(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::ShortFrame(n) => write!(f, "frame of {n} bytes is too short for a header"),
            DecodeError::UnknownApiKey(k) => write!(f, "unknown api key {k}"),
            DecodeError::UnsupportedVersion { api_key, version } => {
                write!(f, "unsupported version {version} of api {api_key}")
            }
            DecodeError::Malformed(m) => write!(f, "malformed request: {m}"),
        }
    }
}

/// A request frame whose header has been decoded; the body is still raw.
#[derive(Debug)]
pub struct RequestFrame {
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: Bytes,
}

/// Runs a decoder on untrusted bytes. The decoder returns errors for short input; a panic in it
/// (for example a capacity overflow from a hostile array count) is turned into an error too, so
/// one bad client can never take the shard down.
fn guarded<T>(
    what: &str,
    decode: impl FnOnce() -> anyhow_result::Result<T>,
) -> Result<T, DecodeError> {
    match catch_unwind(AssertUnwindSafe(decode)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(DecodeError::Malformed(format!("{what}: {e}"))),
        Err(_) => Err(DecodeError::Malformed(format!("{what}: decoder panicked"))),
    }
}

mod anyhow_result {
    /// The error type the `kafka-protocol` decoders return.
    pub type Result<T> = std::result::Result<T, Box<dyn std::fmt::Display>>;
}

fn boxed<T, E: fmt::Display + 'static>(r: Result<T, E>) -> anyhow_result::Result<T> {
    r.map_err(|e| Box::new(e) as Box<dyn fmt::Display>)
}

/// Splits a frame (without its length prefix) into header and body.
pub fn decode_frame(mut frame: Bytes) -> Result<RequestFrame, (Option<i32>, DecodeError)> {
    if frame.len() < 8 {
        return Err((None, DecodeError::ShortFrame(frame.len())));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(raw_key)
        .map_err(|_| (Some(correlation_id), DecodeError::UnknownApiKey(raw_key)))?;
    let supported =
        supported_versions(api_key).is_some_and(|(min, max)| (min..=max).contains(&version));
    if !supported {
        return Err((
            Some(correlation_id),
            DecodeError::UnsupportedVersion {
                api_key: raw_key,
                version,
            },
        ));
    }
    let header_version = api_key.request_header_version(version);
    let header = guarded("request header", || {
        boxed(RequestHeader::decode(&mut frame, header_version))
    })
    .map_err(|e| (Some(correlation_id), e))?;
    Ok(RequestFrame {
        api_key,
        version,
        header,
        body: frame,
    })
}

/// Decodes a request body with the crate's decoder, guarded.
pub fn decode_body(frame: &mut RequestFrame) -> Result<RequestKind, DecodeError> {
    let (api_key, version) = (frame.api_key, frame.version);
    let body = &mut frame.body;
    guarded("request body", || {
        boxed(RequestKind::decode(api_key, body, version))
    })
}

/// Decodes a whole request frame (without its length prefix): what the broker does with
/// every frame it reads, and what the request-decoder fuzz target drives.
pub fn decode_request(
    frame: Bytes,
) -> Result<(RequestFrame, RequestKind), (Option<i32>, DecodeError)> {
    let mut request = decode_frame(frame)?;
    let correlation_id = request.header.correlation_id;
    let body = decode_body(&mut request).map_err(|e| (Some(correlation_id), e))?;
    Ok((request, body))
}

/// One piece of an encoded response: bytes in memory, or a range of a segment file to sendfile.
pub enum Chunk {
    Mem(Bytes),
    File(ReadSlice),
}

impl Chunk {
    pub fn len(&self) -> usize {
        match self {
            Chunk::Mem(b) => b.len(),
            Chunk::File(s) => s.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A complete response frame, length prefix included.
pub enum ResponseFrame {
    Mem(Bytes),
    Chunked(Vec<Chunk>),
    /// The response could not be encoded (a bug of ours, logged): close the connection, since
    /// the client would otherwise wait for it forever.
    Failed,
}

/// Writes the size-prefix placeholder and the response header for `api_key` at `version`.
pub fn begin_response(buf: &mut BytesMut, api_key: ApiKey, version: i16, correlation_id: i32) {
    buf.put_i32(0);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header
        .encode(buf, api_key.response_header_version(version))
        .expect("response header always encodes");
}

/// Fills in the size prefix written by [`begin_response`].
pub fn finish_response(buf: &mut BytesMut) {
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
}

/// Encodes a whole response with the crate's encoder.
pub fn encode_response<T: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> ResponseFrame {
    let mut buf = BytesMut::with_capacity(256);
    begin_response(&mut buf, api_key, version, correlation_id);
    if let Err(e) = body.encode(&mut buf, version) {
        // Only reachable through a bug of ours (a field the version cannot carry).
        tracing::error!(?api_key, version, error = %e, "cannot encode response");
        debug_assert!(false, "encoding {api_key:?} v{version} response: {e}");
        return ResponseFrame::Failed;
    }
    finish_response(&mut buf);
    ResponseFrame::Mem(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(key: i16, version: i16, body: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i16(key);
        b.put_i16(version);
        b.put_i32(77);
        b.put_i16(-1); // null client id
        b.extend_from_slice(body);
        b.freeze()
    }

    #[test]
    fn rejects_unknown_keys_and_versions() {
        assert!(matches!(
            decode_frame(frame(999, 0, &[])),
            Err((Some(77), DecodeError::UnknownApiKey(999)))
        ));
        assert!(matches!(
            decode_frame(frame(3, 99, &[])),
            Err((Some(77), DecodeError::UnsupportedVersion { .. }))
        ));
        assert!(matches!(
            decode_frame(Bytes::from_static(&[0, 3])),
            Err((None, DecodeError::ShortFrame(2)))
        ));
    }

    #[test]
    fn hostile_array_count_is_an_error_not_a_crash() {
        // Metadata v1: topics array claims 2^31-1 entries, then nothing.
        assert!(decode_request(frame(3, 1, &[0x7f, 0xff, 0xff, 0xff])).is_err());
        // Metadata v9 (flexible): compact array count of u32::MAX.
        let mut b = BytesMut::new();
        b.put_i16(3);
        b.put_i16(9);
        b.put_i32(1);
        b.put_i16(-1);
        b.put_u8(0); // header tagged fields
        b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(decode_request(b.freeze()).is_err());
    }
}
