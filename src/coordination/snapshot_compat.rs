//! The coordination snapshot's encoding, and reading snapshots that older brokers wrote.
//!
//! A snapshot is [`SNAPSHOT_MAGIC`] followed by an rkyv archive of `ClusterState`. Older
//! brokers wrote the bare archive of an older layout, and a data directory whose Raft log was
//! compacted into a snapshot by one of them holds exactly that, so those layouts are frozen
//! below, each decoding what its version wrote:
//! - V1, before reassignments and dynamic broker configs
//!   (`PartitionState::{adding_replicas, removing_replicas}`, `ClusterState::broker_configs`);
//! - V2, before proposals were deduplicated (`ClusterState::{applied_proposals,
//!   proposals_clock}`). V2 reuses today's `TopicState` and `BrokerRegistration`: whoever
//!   changes those freezes a copy here first.
//!
//! Raft entries need nothing: `Command` only gained variants, none larger than the largest old
//! one, and the envelope is unchanged.

use std::collections::BTreeMap;

use super::state_machine::{BrokerRegistration, ClusterState, PartitionState, TopicState};

/// Starts every snapshot written since V3: "cluster state, version 3".
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"CSTATE\x00\x03";

/// Encodes `state` as a snapshot's data.
pub fn encode(state: &ClusterState) -> Result<Vec<u8>, rkyv::rancor::Error> {
    let archive = rkyv::to_bytes::<rkyv::rancor::Error>(state)?;
    let mut data = Vec::with_capacity(SNAPSHOT_MAGIC.len() + archive.len());
    data.extend_from_slice(SNAPSHOT_MAGIC);
    data.extend_from_slice(&archive);
    Ok(data)
}

/// Decodes a snapshot's data in any layout this broker or an older one wrote.
pub fn decode(data: &[u8]) -> Result<ClusterState, String> {
    if let Some(archive) = data.strip_prefix(SNAPSHOT_MAGIC) {
        match archived::<ClusterState>(archive) {
            Ok(state) => Ok(state),
            // A bare old archive that happens to start with the magic: try the old layouts.
            Err(e) => decode_old(data).ok_or(e),
        }
    } else {
        decode_old(data).ok_or_else(|| "snapshot in no known layout".to_string())
    }
}

fn decode_old(data: &[u8]) -> Option<ClusterState> {
    decode_v2(data).or_else(|| decode_v1(data))
}

fn archived<T>(bytes: &[u8]) -> Result<T, String>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, rkyv::rancor::Error>(&aligned).map_err(|e| format!("snapshot: {e}"))
}

/// `ClusterState` before proposals were deduplicated.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct ClusterStateV2 {
    cluster_id: String,
    brokers: BTreeMap<i32, BrokerRegistration>,
    next_registration_sequence: u64,
    topics: BTreeMap<String, TopicState>,
    deleted_topics: Vec<(String, [u8; 16])>,
    producer_id_block_end: i64,
    broker_configs: BTreeMap<String, BTreeMap<String, String>>,
    version: u64,
}

/// Decodes a snapshot in the V2 layout; `None` if it is not one. No proposal is remembered as
/// applied: a copy of one applied before the snapshot, still in flight, would apply again, as
/// it did before V3.
fn decode_v2(bytes: &[u8]) -> Option<ClusterState> {
    let old = archived::<ClusterStateV2>(bytes).ok()?;
    Some(ClusterState {
        cluster_id: old.cluster_id,
        brokers: old.brokers,
        next_registration_sequence: old.next_registration_sequence,
        topics: old.topics,
        deleted_topics: old.deleted_topics,
        producer_id_block_end: old.producer_id_block_end,
        broker_configs: old.broker_configs,
        version: old.version,
        ..ClusterState::default()
    })
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct PartitionStateV1 {
    replicas: Vec<i32>,
    isr: Vec<i32>,
    leader: i32,
    leader_epoch: i32,
    partition_epoch: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct TopicStateV1 {
    id: [u8; 16],
    partitions: Vec<PartitionStateV1>,
    configs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct ClusterStateV1 {
    cluster_id: String,
    brokers: BTreeMap<i32, BrokerRegistration>,
    next_registration_sequence: u64,
    topics: BTreeMap<String, TopicStateV1>,
    deleted_topics: Vec<(String, [u8; 16])>,
    producer_id_block_end: i64,
    version: u64,
}

/// Decodes a snapshot in the V1 layout; `None` if it is not one.
fn decode_v1(bytes: &[u8]) -> Option<ClusterState> {
    let old = archived::<ClusterStateV1>(bytes).ok()?;
    Some(ClusterState {
        cluster_id: old.cluster_id,
        brokers: old.brokers,
        next_registration_sequence: old.next_registration_sequence,
        topics: old
            .topics
            .into_iter()
            .map(|(name, t)| {
                let partitions = t
                    .partitions
                    .into_iter()
                    .map(|p| PartitionState {
                        replicas: p.replicas,
                        isr: p.isr,
                        leader: p.leader,
                        leader_epoch: p.leader_epoch,
                        partition_epoch: p.partition_epoch,
                        adding_replicas: Vec::new(),
                        removing_replicas: Vec::new(),
                    })
                    .collect();
                let topic = TopicState {
                    id: t.id,
                    partitions,
                    configs: t.configs,
                };
                (name, topic)
            })
            .collect(),
        deleted_topics: old.deleted_topics,
        producer_id_block_end: old.producer_id_block_end,
        version: old.version,
        ..ClusterState::default()
    })
}

#[cfg(test)]
mod tests {
    use super::super::state_machine::{Command, ConfigChange, NewTopic};
    use super::*;

    /// `Command` as the older brokers wrote it into the Raft log.
    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    enum CommandV1 {
        InitCluster {
            cluster_id: String,
        },
        RegisterBroker {
            node_id: i32,
            incarnation: u64,
            host: String,
            port: u16,
            rack: Option<String>,
        },
        FenceBroker {
            node_id: i32,
            incarnation: u64,
        },
        CreateTopic {
            topic: NewTopic,
            max_partitions: u64,
        },
        DeleteTopic {
            name: String,
        },
        CreatePartitions {
            name: String,
            count: i32,
            max_partitions: u64,
        },
        AlterPartition {
            topic: String,
            partition: i32,
            leader: i32,
            leader_epoch: i32,
            partition_epoch: i32,
            isr: Vec<i32>,
        },
        AllocateProducerIds {
            node_id: i32,
        },
        AlterTopicConfigs {
            name: String,
            replace: bool,
            changes: Vec<ConfigChange>,
        },
    }

    #[test]
    fn old_raft_entries_decode_as_the_same_commands() {
        assert_eq!(
            std::mem::size_of::<ArchivedCommandV1>(),
            std::mem::size_of::<<Command as rkyv::Archive>::Archived>()
        );
        let decode = |old: &CommandV1| {
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(old).unwrap();
            let mut aligned = rkyv::util::AlignedVec::<16>::new();
            aligned.extend_from_slice(&bytes);
            rkyv::from_bytes::<Command, rkyv::rancor::Error>(&aligned).unwrap()
        };
        let register = CommandV1::RegisterBroker {
            node_id: 2,
            incarnation: 77,
            host: "host".into(),
            port: 9093,
            rack: Some("r1".into()),
        };
        assert_eq!(
            decode(&register),
            Command::RegisterBroker {
                node_id: 2,
                incarnation: 77,
                host: "host".into(),
                port: 9093,
                rack: Some("r1".into()),
            }
        );
        let alter = CommandV1::AlterPartition {
            topic: "t".into(),
            partition: 3,
            leader: 1,
            leader_epoch: 4,
            partition_epoch: 5,
            isr: vec![1, 2],
        };
        assert_eq!(
            decode(&alter),
            Command::AlterPartition {
                topic: "t".into(),
                partition: 3,
                leader: 1,
                leader_epoch: 4,
                partition_epoch: 5,
                isr: vec![1, 2],
            }
        );
        let configs = CommandV1::AlterTopicConfigs {
            name: "t".into(),
            replace: true,
            changes: vec![ConfigChange::Delete { key: "k".into() }],
        };
        assert_eq!(
            decode(&configs),
            Command::AlterTopicConfigs {
                name: "t".into(),
                replace: true,
                changes: vec![ConfigChange::Delete { key: "k".into() }],
            }
        );
    }

    #[test]
    fn an_old_snapshot_is_read_with_no_reassignments_and_no_broker_configs() {
        let old = ClusterStateV1 {
            cluster_id: "c".into(),
            brokers: BTreeMap::from([(
                1,
                BrokerRegistration {
                    node_id: 1,
                    incarnation: 5,
                    host: "h".into(),
                    port: 9092,
                    rack: None,
                    sequence: 0,
                },
            )]),
            next_registration_sequence: 1,
            topics: BTreeMap::from([(
                "t".to_string(),
                TopicStateV1 {
                    id: [3; 16],
                    partitions: vec![PartitionStateV1 {
                        replicas: vec![1],
                        isr: vec![1],
                        leader: 1,
                        leader_epoch: 2,
                        partition_epoch: 3,
                    }],
                    configs: BTreeMap::from([("retention.ms".into(), "1".into())]),
                },
            )]),
            deleted_topics: vec![("gone".into(), [9; 16])],
            producer_id_block_end: 2000,
            version: 17,
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&old).unwrap();
        // The current layout does not read it...
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&bytes);
        assert!(rkyv::from_bytes::<ClusterState, rkyv::rancor::Error>(&aligned).is_err());
        // ...the frozen one does.
        let state = decode_v1(&bytes).expect("an old snapshot");
        assert_eq!(state.version, 17);
        assert_eq!(state.topics["t"].partitions[0].leader_epoch, 2);
        assert!(state.topics["t"].partitions[0].adding_replicas.is_empty());
        assert!(state.broker_configs.is_empty());
        assert_eq!(state.brokers[&1].port, 9092);
        // And a current snapshot is not mistaken for an old one.
        let current = rkyv::to_bytes::<rkyv::rancor::Error>(&state).unwrap();
        assert!(decode_v1(&current).is_none());
    }

    fn sample_state() -> ClusterState {
        let mut state = ClusterState {
            cluster_id: "c".into(),
            version: 9,
            ..ClusterState::default()
        };
        state
            .broker_configs
            .insert(String::new(), BTreeMap::from([("k".into(), "v".into())]));
        state.topics.insert(
            "t".into(),
            TopicState {
                id: [4; 16],
                partitions: vec![],
                configs: BTreeMap::new(),
            },
        );
        state
    }

    #[test]
    fn a_snapshot_keeps_which_proposals_were_applied() {
        let mut state = sample_state();
        assert!(state.first_application((1, 2), 3));
        let data = encode(&state).unwrap();
        assert!(data.starts_with(SNAPSHOT_MAGIC));
        let decoded = decode(&data).unwrap();
        assert_eq!(decoded, state);
        let mut decoded = decoded;
        assert!(
            !decoded.first_application((1, 2), 3),
            "still known as applied"
        );
    }

    #[test]
    fn a_v2_snapshot_is_read_with_no_proposals_remembered() {
        let state = sample_state();
        let old = ClusterStateV2 {
            cluster_id: state.cluster_id.clone(),
            brokers: state.brokers.clone(),
            next_registration_sequence: state.next_registration_sequence,
            topics: state.topics.clone(),
            deleted_topics: state.deleted_topics.clone(),
            producer_id_block_end: state.producer_id_block_end,
            broker_configs: state.broker_configs.clone(),
            version: state.version,
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&old).unwrap();
        assert!(
            archived::<ClusterState>(&bytes).is_err(),
            "not the current layout"
        );
        assert_eq!(decode(&bytes).unwrap(), state);
        // Nor is a current snapshot taken for a V2 one.
        let current = encode(&state).unwrap();
        assert!(decode_v2(&current).is_none());
        assert!(decode_v2(&current[SNAPSHOT_MAGIC.len()..]).is_none());
        assert!(decode(b"garbage").is_err());
    }
}
