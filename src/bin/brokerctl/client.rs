//! Admin requests over the Kafka protocol with the `kafka-protocol` crate's message types: one
//! blocking connection, versions negotiated with ApiVersions, so brokerctl works against this
//! broker and Apache Kafka alike and can show the broker's own error messages (librdkafka's
//! admin API reports only error codes). Producing and consuming go through librdkafka.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

/// Largest response accepted; bounds the allocation a length prefix can cause.
const MAX_RESPONSE_BYTES: usize = 256 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Conn {
    stream: TcpStream,
    correlation_id: i32,
    /// (api key, min, max) the broker supports.
    versions: Vec<(i16, i16, i16)>,
}

pub type Result<T> = std::result::Result<T, String>;

impl Conn {
    pub fn connect(addr: &str) -> Result<Conn> {
        let addr = addr.split(',').next().unwrap_or(addr).trim();
        let stream =
            TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).ok();
        stream.set_write_timeout(Some(IO_TIMEOUT)).ok();
        let mut conn = Conn {
            stream,
            correlation_id: 0,
            versions: Vec::new(),
        };
        let mut request = ApiVersionsRequest::default();
        request.client_software_name = StrBytes::from_static_str("brokerctl");
        request.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
        let response: ApiVersionsResponse = conn.call_at(3, &request)?;
        if response.error_code != 0 {
            return Err(format!(
                "ApiVersions failed with error {}",
                response.error_code
            ));
        }
        conn.versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, k.min_version, k.max_version))
            .collect();
        Ok(conn)
    }

    /// Sends `request` at the highest version both sides support (up to `max_version`).
    pub fn call<R: Request>(&mut self, max_version: i16, request: &R) -> Result<R::Response> {
        let key = R::KEY;
        let Some(&(_, min, max)) = self.versions.iter().find(|(k, _, _)| *k == key) else {
            return Err(format!(
                "the broker does not support {} (API key {key})",
                ApiKey::try_from(key).map_or_else(|_| "?".to_string(), |k| format!("{k:?}"))
            ));
        };
        let version = max.min(max_version);
        if version < min || version < R::VERSIONS.min {
            return Err(format!("no common version for API key {key}"));
        }
        self.call_at(version, request)
    }

    /// The version `call` would use for `R` (to fill version-dependent fields).
    pub fn version_of<R: Request>(&self, max_version: i16) -> i16 {
        self.versions
            .iter()
            .find(|(k, _, _)| *k == R::KEY)
            .map_or(-1, |&(_, _, max)| max.min(max_version))
    }

    fn call_at<R: Request>(&mut self, version: i16, request: &R) -> Result<R::Response> {
        self.correlation_id += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = self.correlation_id;
        header.client_id = Some(StrBytes::from_static_str("brokerctl"));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, R::header_version(version))
            .map_err(|e| e.to_string())?;
        request
            .encode(&mut body, version)
            .map_err(|e| format!("encoding request: {e}"))?;
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.put_i32(body.len() as i32);
        frame.extend_from_slice(&body);
        self.stream
            .write_all(&frame)
            .map_err(|e| format!("sending request: {e}"))?;
        let mut len = [0u8; 4];
        self.stream
            .read_exact(&mut len)
            .map_err(|e| format!("the broker closed the connection ({e})"))?;
        let len = i32::from_be_bytes(len);
        if len < 4 || len as usize > MAX_RESPONSE_BYTES {
            return Err(format!("bad response length {len}"));
        }
        let mut buf = vec![0u8; len as usize];
        self.stream
            .read_exact(&mut buf)
            .map_err(|e| format!("reading response: {e}"))?;
        let mut buf = Bytes::from(buf);
        let header = ResponseHeader::decode(&mut buf, R::Response::header_version(version))
            .map_err(|e| format!("decoding response header: {e}"))?;
        if header.correlation_id != self.correlation_id {
            return Err("response out of order".into());
        }
        R::Response::decode(&mut buf, version).map_err(|e| format!("decoding response: {e}"))
    }
}

pub fn s(value: impl Into<String>) -> StrBytes {
    StrBytes::from_string(value.into())
}

/// "NAME: message" for a Kafka error code, with the broker's message when it sent one.
pub fn error_text(code: i16, message: Option<&StrBytes>) -> String {
    let name = kafka_protocol::ResponseError::try_from_code(code).map_or_else(
        || format!("error {code}"),
        |e| upper_snake(&format!("{e:?}")),
    );
    match message {
        Some(m) if !m.is_empty() => format!("{name}: {m}"),
        _ => name,
    }
}

/// `InvalidReplicationFactor` -> `INVALID_REPLICATION_FACTOR`, Kafka's spelling.
fn upper_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}
