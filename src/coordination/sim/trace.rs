//! The simulation's trace: one line per step, kept for a failure's report (`SIM_TRACE=1`
//! prints them as they happen).

use super::*;

/// One step of the trace hash (SplitMix64's finaliser over `hash ^ value`): a seed that replays
/// exactly gives the same hash, which the determinism test compares.
pub(super) fn mix(hash: u64, value: u64) -> u64 {
    let mut z = (hash ^ value).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The trace hash over a byte string, eight bytes at a time.
pub(super) fn mix_bytes(mut hash: u64, bytes: &[u8]) -> u64 {
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        hash = mix(hash, u64::from_le_bytes(word));
    }
    hash
}

#[derive(Debug, Clone)]
pub(super) enum TraceEvent {
    Deliver {
        from: i32,
        to: i32,
        what: MessageSummary,
    },
    Tick {
        node: i32,
    },
    Text(String),
}

#[derive(Debug, Clone, Copy)]
pub(super) enum MessageSummary {
    Raft {
        kind: MessageType,
        term: u64,
        index: u64,
        log_term: u64,
        commit: u64,
        entries: usize,
        reject: bool,
        snapshot_index: u64,
    },
    Heartbeat {
        node_id: i32,
        incarnation: u64,
    },
}

impl MessageSummary {
    pub(super) fn of(message: &PeerMessage) -> MessageSummary {
        match message {
            PeerMessage::Raft(m) => MessageSummary::Raft {
                kind: m.get_msg_type(),
                term: m.term,
                index: m.index,
                log_term: m.log_term,
                commit: m.commit,
                entries: m.entries.len(),
                reject: m.reject,
                snapshot_index: m.get_snapshot().get_metadata().index,
            },
            PeerMessage::Heartbeat {
                node_id,
                incarnation,
            } => MessageSummary::Heartbeat {
                node_id: *node_id,
                incarnation: *incarnation,
            },
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct TraceLine {
    pub(super) step: u64,
    pub(super) time_ms: u64,
    pub(super) event: TraceEvent,
    /// The touched node afterwards: (id, applied index, term, known leader).
    pub(super) after: Option<(i32, u64, u64, Option<i32>)>,
}

impl fmt::Display for TraceLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} t={}ms ", self.step, self.time_ms)?;
        match &self.event {
            TraceEvent::Deliver { from, to, what } => match what {
                MessageSummary::Raft {
                    kind,
                    term,
                    index,
                    log_term,
                    commit,
                    entries,
                    reject,
                    snapshot_index,
                } => {
                    write!(
                        f,
                        "{from}->{to} {kind:?} term={term} index={index} log_term={log_term} \
                         commit={commit} entries={entries}"
                    )?;
                    if *reject {
                        write!(f, " REJECT")?;
                    }
                    if *snapshot_index > 0 {
                        write!(f, " snapshot@{snapshot_index}")?;
                    }
                }
                MessageSummary::Heartbeat {
                    node_id,
                    incarnation,
                } => write!(f, "{from}->{to} heartbeat of {node_id}/{incarnation:x}")?,
            },
            TraceEvent::Tick { node } => write!(f, "tick {node}")?,
            TraceEvent::Text(text) => write!(f, "{text}")?,
        }
        if let Some((node, applied, term, leader)) = self.after {
            write!(
                f,
                "  [node {node}: applied={applied} term={term} leader={}]",
                leader.map_or("-".to_string(), |l| l.to_string())
            )?;
        }
        Ok(())
    }
}

pub(super) fn command_name(command: &Command) -> String {
    match command {
        Command::InitCluster { .. } => "InitCluster".to_string(),
        Command::RegisterBroker {
            node_id,
            incarnation,
            ..
        } => format!("RegisterBroker {node_id}/{incarnation:x}"),
        Command::FenceBroker {
            node_id,
            incarnation,
        } => format!("FenceBroker {node_id}/{incarnation:x}"),
        Command::CreateTopic { topic, .. } => format!(
            "CreateTopic {} partitions={} rf={}",
            topic.name, topic.partitions, topic.replication_factor
        ),
        Command::DeleteTopic { name } => format!("DeleteTopic {name}"),
        Command::CreatePartitions { name, count, .. } => {
            format!("CreatePartitions {name} count={count}")
        }
        Command::AlterPartition {
            topic,
            partition,
            leader,
            leader_epoch,
            partition_epoch,
            isr,
        } => format!(
            "AlterPartition {topic}-{partition} leader={leader} epochs={leader_epoch}/\
             {partition_epoch} isr={isr:?}"
        ),
        Command::AllocateProducerIds { node_id } => format!("AllocateProducerIds {node_id}"),
        Command::AlterTopicConfigs { name, changes, .. } => {
            format!("AlterTopicConfigs {name} {changes:?}")
        }
        other => format!("{other:?}"),
    }
}

pub(super) fn outcome_name(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Refused { code, .. } => format!("refused {code:?}"),
        other => format!("{other:?}"),
    }
}
