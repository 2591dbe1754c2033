//! Upgrade path from the single-node metadata log (`<data-dir>/coordination/metadata.log`,
//! written before the coordination quorum existed) to the Raft log.
//!
//! A data dir with that log and no Raft state starts its Raft log from a snapshot of the state
//! the old log describes, so its topics (and the partition files behind them) survive the
//! upgrade. The old file is left in place (renamed `metadata.log.imported`) for inspection.
//!
//! The record layout below is frozen: it must decode what the old version wrote.

use std::io;
use std::path::Path;

use raft::eraftpb::{ConfState, HardState, Snapshot};

use super::frames::decode_frames;
use super::raft_store::Recovered;
use super::state_machine::{ClusterState, PartitionState, TopicState};

/// A record of the old metadata log, as the single-node version wrote it.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
enum LegacyRecord {
    ClusterCreated {
        cluster_id: String,
    },
    TopicCreated {
        name: String,
        id: [u8; 16],
        assignments: Vec<Vec<i32>>,
        configs: Vec<(String, String)>,
    },
    PartitionsCreated {
        name: String,
        assignments: Vec<Vec<i32>>,
    },
    TopicDeleted {
        name: String,
    },
    ProducerIdBlock {
        block_end: i64,
    },
}

const MAX_LEGACY_RECORD_BYTES: usize = 16 << 20;

fn partition(replicas: Vec<i32>) -> Option<PartitionState> {
    let leader = *replicas.first()?;
    Some(PartitionState {
        leader,
        isr: replicas.clone(),
        replicas,
        leader_epoch: 0,
        partition_epoch: 0,
        adding_replicas: Vec::new(),
        removing_replicas: Vec::new(),
    })
}

/// The state an old metadata log describes; `None` if there is no such log.
fn legacy_state(coordination_dir: &Path) -> io::Result<Option<ClusterState>> {
    let bytes = match std::fs::read(coordination_dir.join("metadata.log")) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut state = ClusterState::default();
    for payload in decode_frames(&bytes, MAX_LEGACY_RECORD_BYTES).0 {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
        aligned.extend_from_slice(payload);
        let Ok(record) = rkyv::from_bytes::<LegacyRecord, rkyv::rancor::Error>(&aligned) else {
            break;
        };
        match record {
            LegacyRecord::ClusterCreated { cluster_id } => state.cluster_id = cluster_id,
            LegacyRecord::TopicCreated {
                name,
                id,
                assignments,
                configs,
            } => {
                let topic = TopicState {
                    id,
                    partitions: assignments.into_iter().filter_map(partition).collect(),
                    configs: configs.into_iter().collect(),
                };
                state.topics.insert(name, topic);
            }
            LegacyRecord::PartitionsCreated { name, assignments } => {
                if let Some(topic) = state.topics.get_mut(&name) {
                    topic
                        .partitions
                        .extend(assignments.into_iter().filter_map(partition));
                }
            }
            LegacyRecord::TopicDeleted { name } => {
                if let Some(topic) = state.topics.remove(&name) {
                    state.deleted_topics.push((name, topic.id));
                }
            }
            LegacyRecord::ProducerIdBlock { block_end } => {
                state.producer_id_block_end = state.producer_id_block_end.max(block_end)
            }
        }
    }
    Ok(Some(state))
}

/// If `recovered` is an empty Raft log and an old metadata log exists, returns the Raft state to
/// start from instead: a snapshot at index 1, term 1 holding the imported state. Only for a
/// quorum of one, the only shape the old version ran in.
pub fn import_if_needed(
    coordination_dir: &Path,
    recovered: Recovered,
    voters: &[u64],
) -> io::Result<(Recovered, bool)> {
    let fresh = recovered.snapshot.is_none()
        && recovered.entries.is_empty()
        && recovered.hard_state == HardState::default();
    if !fresh || voters.len() != 1 {
        return Ok((recovered, false));
    }
    let Some(state) = legacy_state(coordination_dir)? else {
        return Ok((recovered, false));
    };
    let mut snapshot = Snapshot::default();
    snapshot.set_data(
        super::snapshot_compat::encode(&state)
            .map_err(|e| io::Error::other(format!("encoding the imported state: {e}")))?
            .into(),
    );
    let meta = snapshot.mut_metadata();
    meta.index = 1;
    meta.term = 1;
    meta.set_conf_state(ConfState::from((voters.to_vec(), vec![])));
    let mut hard_state = HardState::default();
    hard_state.set_term(1);
    hard_state.set_commit(1);
    tracing::info!(
        topics = state.topics.len(),
        "imported the single-node metadata log into the coordination quorum's log"
    );
    Ok((
        Recovered {
            hard_state,
            snapshot: Some(snapshot),
            entries: Vec::new(),
        },
        true,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordination::frames::encode_frame;

    #[test]
    fn an_old_metadata_log_becomes_the_first_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        for record in [
            LegacyRecord::ClusterCreated {
                cluster_id: "abc".into(),
            },
            LegacyRecord::TopicCreated {
                name: "kept".into(),
                id: [1; 16],
                assignments: vec![vec![0]],
                configs: vec![("retention.ms".into(), "5".into())],
            },
            LegacyRecord::PartitionsCreated {
                name: "kept".into(),
                assignments: vec![vec![0]],
            },
            LegacyRecord::TopicCreated {
                name: "gone".into(),
                id: [2; 16],
                assignments: vec![vec![0]],
                configs: vec![],
            },
            LegacyRecord::TopicDeleted {
                name: "gone".into(),
            },
            LegacyRecord::ProducerIdBlock { block_end: 2000 },
        ] {
            let payload = rkyv::to_bytes::<rkyv::rancor::Error>(&record).unwrap();
            encode_frame(&payload, &mut bytes);
        }
        std::fs::write(dir.path().join("metadata.log"), bytes).unwrap();
        let (recovered, imported) =
            import_if_needed(dir.path(), Recovered::default(), &[1]).unwrap();
        assert!(imported);
        let snapshot = recovered.snapshot.unwrap();
        let state = crate::coordination::snapshot_compat::decode(&snapshot.data).unwrap();
        assert_eq!(state.cluster_id, "abc");
        assert_eq!(state.topics["kept"].partitions.len(), 2);
        assert!(!state.topics.contains_key("gone"));
        assert_eq!(state.producer_id_block_end, 2000);
        // A quorum of one starts from the snapshot, leads, and serves the imported topics.
        struct NoDisk;
        impl crate::coordination::raft_store::DurableLog for NoDisk {
            fn append(&mut self, _: &[raft::eraftpb::Entry]) -> io::Result<()> {
                Ok(())
            }
            fn set_hard_state(&mut self, _: &HardState) -> io::Result<()> {
                Ok(())
            }
            fn save_snapshot(
                &mut self,
                _: &Snapshot,
                _: &[raft::eraftpb::Entry],
            ) -> io::Result<()> {
                Ok(())
            }
        }
        let (recovered, _) = import_if_needed(dir.path(), Recovered::default(), &[1]).unwrap();
        let mut node = crate::coordination::quorum::QuorumNode::open(
            crate::coordination::quorum::QuorumConfig::new(0, vec![0], 1500),
            7,
            7,
            recovered,
            Box::new(NoDisk),
            0,
        )
        .unwrap();
        node.tick(100).unwrap();
        assert!(node.is_leader());
        assert!(node.state().topics.contains_key("kept"));
        let proposal = node
            .propose(crate::coordination::state_machine::Command::DeleteTopic {
                name: "kept".into(),
            })
            .unwrap();
        node.tick(200).unwrap();
        let applied = node.take_output().applied;
        assert!(applied.iter().any(|a| a.proposal == proposal));
        assert!(node.state().topics.is_empty());
        // Nothing to import in a cluster or on a used Raft log.
        let (_, imported) = import_if_needed(dir.path(), Recovered::default(), &[1, 2, 3]).unwrap();
        assert!(!imported);
    }
}
