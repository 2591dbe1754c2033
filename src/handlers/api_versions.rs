//! ApiVersions (key 18), v0-3: the APIs and version ranges this broker serves.

use std::rc::Rc;

use bytes::BytesMut;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::Encodable;
use kafka_protocol::ResponseError;

use crate::protocol::{begin_response, finish_response, ResponseFrame, SUPPORTED_APIS};
use crate::shard::Shard;

fn supported() -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.api_keys = SUPPORTED_APIS
        .iter()
        .map(|&(key, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = key as i16;
            v.min_version = min;
            v.max_version = crate::protocol::advertised_max_version(key, max);
            v
        })
        .collect();
    response
}

pub async fn handle(
    _shard: &Rc<Shard>,
    _version: i16,
    _request: ApiVersionsRequest,
) -> ApiVersionsResponse {
    supported()
}

/// The v0 answer to an ApiVersions request at a version this broker does not know.
pub fn unsupported_version(correlation_id: i32) -> ResponseFrame {
    let mut response = supported();
    response.error_code = ResponseError::UnsupportedVersion.code();
    let mut buf = BytesMut::with_capacity(256);
    begin_response(&mut buf, ApiKey::ApiVersions, 0, correlation_id);
    response
        .encode(&mut buf, 0)
        .expect("v0 ApiVersions response encodes");
    finish_response(&mut buf);
    ResponseFrame::Mem(buf.freeze())
}
