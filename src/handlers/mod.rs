//! One module per Kafka API. [`dispatch`] decodes a request frame and returns what the
//! connection should do: answer (with a future that produces the response), stay silent
//! (acks=0 produce), or close.
//!
//! Handlers run on the shard that accepted the connection. Work on partitions of other shards
//! goes through `Shard::invoke_on`; coordination work goes to shard 0.

pub mod admin;
pub mod alter_replica_log_dirs;
pub mod api_versions;
pub mod broker_configs;
pub mod delete_records;
pub mod describe_log_dirs;
pub mod fetch;
pub mod fetch_session;
pub mod groups;
pub mod list_offsets;
pub mod metadata;
pub mod offset_for_leader_epoch;
pub mod partition_admin;
pub mod produce;
pub mod transactions;

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestKind};

use crate::protocol::{self, DecodeError, ResponseFrame};
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
///
/// `client_host` is the peer as Kafka prints it (`/127.0.0.1`), kept by group members.
pub async fn dispatch(shard: &Rc<Shard>, frame: Bytes, client_host: &str) -> Dispatched {
    let (request, body) = match protocol::decode_request(frame) {
        Ok(decoded) => decoded,
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
    let (api_key, version, correlation_id) = (
        request.api_key,
        request.version,
        request.header.correlation_id,
    );
    macro_rules! respond {
        ($handler:path, $body:expr) => {{
            let shard = shard.clone();
            Dispatched::Respond(Box::pin(async move {
                let response = $handler(&shard, version, $body).await;
                protocol::encode_response(api_key, version, correlation_id, &response)
            }))
        }};
    }
    match body {
        RequestKind::ApiVersions(body) => respond!(api_versions::handle, body),
        RequestKind::Metadata(body) => respond!(metadata::handle, body),
        RequestKind::Produce(body) => produce::dispatch(shard, &request, body).await,
        RequestKind::Fetch(body) => fetch::dispatch(shard, &request, body),
        RequestKind::ListOffsets(body) => respond!(list_offsets::handle, body),
        RequestKind::CreateTopics(body) => respond!(admin::create_topics, body),
        RequestKind::DeleteRecords(body) => respond!(delete_records::handle, body),
        RequestKind::DescribeLogDirs(body) => respond!(describe_log_dirs::handle, body),
        RequestKind::DeleteTopics(body) => respond!(admin::delete_topics, body),
        RequestKind::CreatePartitions(body) => respond!(admin::create_partitions, body),
        RequestKind::DescribeConfigs(body) => respond!(admin::describe_configs, body),
        RequestKind::AlterConfigs(body) => respond!(admin::alter_configs, body),
        RequestKind::IncrementalAlterConfigs(body) => {
            respond!(admin::incremental_alter_configs, body)
        }
        RequestKind::InitProducerId(body) => respond!(admin::init_producer_id, body),
        RequestKind::DescribeCluster(body) => respond!(admin::describe_cluster, body),
        RequestKind::OffsetForLeaderEpoch(body) => {
            respond!(offset_for_leader_epoch::handle, body)
        }
        RequestKind::FindCoordinator(body) => respond!(groups::find_coordinator, body),
        RequestKind::JoinGroup(body) => {
            let client_id = request
                .header
                .client_id
                .as_deref()
                .unwrap_or("")
                .to_string();
            let client_host = client_host.to_string();
            let shard = shard.clone();
            Dispatched::Respond(Box::pin(async move {
                let response =
                    groups::join_group(&shard, version, client_id, client_host, body).await;
                protocol::encode_response(api_key, version, correlation_id, &response)
            }))
        }
        RequestKind::SyncGroup(body) => respond!(groups::sync_group, body),
        RequestKind::Heartbeat(body) => respond!(groups::heartbeat, body),
        RequestKind::LeaveGroup(body) => respond!(groups::leave_group, body),
        RequestKind::OffsetCommit(body) => respond!(groups::offset_commit, body),
        RequestKind::OffsetFetch(body) => respond!(groups::offset_fetch, body),
        RequestKind::ListGroups(body) => respond!(groups::list_groups, body),
        RequestKind::DescribeGroups(body) => respond!(groups::describe_groups, body),
        RequestKind::DeleteGroups(body) => respond!(groups::delete_groups, body),
        RequestKind::OffsetDelete(body) => respond!(groups::offset_delete, body),
        RequestKind::ElectLeaders(body) => respond!(partition_admin::elect_leaders, body),
        RequestKind::AlterPartitionReassignments(body) => {
            respond!(partition_admin::alter_partition_reassignments, body)
        }
        RequestKind::ListPartitionReassignments(body) => {
            respond!(partition_admin::list_partition_reassignments, body)
        }
        RequestKind::AlterReplicaLogDirs(body) => respond!(alter_replica_log_dirs::handle, body),
        RequestKind::AddPartitionsToTxn(body) => {
            respond!(transactions::add_partitions_to_txn, body)
        }
        RequestKind::AddOffsetsToTxn(body) => respond!(transactions::add_offsets_to_txn, body),
        RequestKind::EndTxn(body) => respond!(transactions::end_txn, body),
        RequestKind::TxnOffsetCommit(body) => respond!(transactions::txn_offset_commit, body),
        RequestKind::DescribeTransactions(body) => {
            respond!(transactions::describe_transactions, body)
        }
        RequestKind::ListTransactions(body) => respond!(transactions::list_transactions, body),
        RequestKind::DescribeProducers(body) => respond!(transactions::describe_producers, body),
        RequestKind::WriteTxnMarkers(body) => respond!(transactions::write_txn_markers, body),
        _ => {
            // decode_frame only lets supported keys through.
            tracing::error!(?api_key, "dispatch has no handler for a supported api");
            Dispatched::Close(DecodeError::UnknownApiKey(api_key as i16))
        }
    }
}
