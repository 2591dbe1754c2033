//! One module per Kafka API. [`dispatch`] decodes a request frame and returns what the
//! connection should do: answer (with a future that produces the response), stay silent
//! (acks=0 produce), or close.
//!
//! Handlers run on the shard that accepted the connection. Work on partitions of other shards
//! goes through `Shard::invoke_on`; coordination work goes to shard 0.

pub mod admin;
pub mod api_versions;
pub mod fetch;
pub mod list_offsets;
pub mod metadata;
pub mod produce;

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::metrics::BrokerStats;
use crate::protocol::{self, DecodeError, RequestFrame, ResponseFrame};
use crate::shard::Shard;

/// A response still being computed; polled by the connection's writer, in request order.
pub type PendingResponse = Pin<Box<dyn Future<Output = ResponseFrame>>>;

pub enum Dispatched {
    Respond(PendingResponse),
    /// acks=0 produce: Kafka sends no response at all.
    NoResponse,
    /// Malformed or unsupported input: log it and close the connection.
    Close(DecodeError),
}

fn ready(frame: ResponseFrame) -> Dispatched {
    Dispatched::Respond(Box::pin(std::future::ready(frame)))
}

/// Decodes `frame` and starts handling it.
///
/// Work that must happen in request order (appending produce batches) happens before this
/// returns; everything else happens when the returned future is polled.
pub async fn dispatch(shard: &Rc<Shard>, frame: Bytes) -> Dispatched {
    let mut request = match protocol::decode_frame(frame) {
        Ok(request) => request,
        Err((Some(correlation_id), DecodeError::UnsupportedVersion { api_key, version }))
            if api_key == ApiKey::ApiVersions as i16 =>
        {
            // Kafka answers an ApiVersions it cannot parse with v0 and UNSUPPORTED_VERSION, so
            // that newer clients learn what to downgrade to.
            tracing::debug!(version, "ApiVersions at an unsupported version");
            return ready(api_versions::unsupported_version(correlation_id));
        }
        Err((_, error)) => return Dispatched::Close(error),
    };
    let correlation_id = request.header.correlation_id;
    let (api_key, version) = (request.api_key, request.version);
    macro_rules! respond {
        ($handler:path) => {{
            let body = match decode(shard, &mut request) {
                Ok(body) => body,
                Err(e) => return Dispatched::Close(e),
            };
            let shard = shard.clone();
            Dispatched::Respond(Box::pin(async move {
                let response = $handler(&shard, version, body).await;
                protocol::encode_response(api_key, version, correlation_id, &response)
            }))
        }};
    }
    match api_key {
        ApiKey::ApiVersions => respond!(api_versions::handle),
        ApiKey::Metadata => respond!(metadata::handle),
        ApiKey::Produce => produce::dispatch(shard, &mut request).await,
        ApiKey::Fetch => fetch::dispatch(shard, &mut request),
        ApiKey::ListOffsets => respond!(list_offsets::handle),
        ApiKey::CreateTopics => respond!(admin::create_topics),
        ApiKey::DeleteTopics => respond!(admin::delete_topics),
        ApiKey::CreatePartitions => respond!(admin::create_partitions),
        ApiKey::DescribeConfigs => respond!(admin::describe_configs),
        ApiKey::InitProducerId => respond!(admin::init_producer_id),
        ApiKey::DescribeCluster => respond!(admin::describe_cluster),
        other => {
            // decode_frame only lets supported keys through.
            tracing::error!(?other, "dispatch has no handler for a supported api");
            Dispatched::Close(DecodeError::UnknownApiKey(other as i16))
        }
    }
}

/// Decodes a request body, counting failures.
pub fn decode<T: Decodable>(shard: &Shard, request: &mut RequestFrame) -> Result<T, DecodeError> {
    protocol::decode_body(request).inspect_err(|_| {
        BrokerStats::add(&shard.stats.malformed_requests, 1);
    })
}

/// Encodes a response body for `request`.
pub fn respond<T: Encodable>(request: &RequestFrame, body: &T) -> ResponseFrame {
    protocol::encode_response(
        request.api_key,
        request.version,
        request.header.correlation_id,
        body,
    )
}
