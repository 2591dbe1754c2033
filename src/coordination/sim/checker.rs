//! The invariant checks run after every step: agreement, epochs, leaders, committed outcomes,
//! convergence (the list is in `sim`'s module documentation).

use super::*;

/// What a proposer was told was committed, and so must hold in every later state.
#[derive(Debug, Clone)]
pub(super) enum Fact {
    Topic {
        name: String,
        id: [u8; 16],
    },
    Partitions {
        name: String,
        id: [u8; 16],
        count: usize,
    },
    ProducerBlock {
        end: i64,
    },
    Registration {
        sequence: u64,
    },
    /// A session fenced: that registration never comes back, though the same process may
    /// register anew (the runtime re-registers with the same incarnation), so with a later
    /// sequence.
    Fenced {
        node_id: i32,
        incarnation: u64,
        min_sequence: u64,
    },
}

impl Fact {
    /// Whether `state` (at an index at or after the fact's) still reflects it.
    pub(super) fn holds(&self, state: &ClusterState) -> bool {
        match self {
            // Created, and either still there with that id or deleted since.
            Fact::Topic { name, id } => {
                state.topics.get(name).is_some_and(|t| t.id == *id)
                    || state
                        .deleted_topics
                        .iter()
                        .any(|(n, i)| n == name && i == id)
            }
            Fact::Partitions { name, id, count } => match state.topics.get(name) {
                Some(t) if t.id == *id => t.partitions.len() >= *count,
                _ => state
                    .deleted_topics
                    .iter()
                    .any(|(n, i)| n == name && i == id),
            },
            Fact::ProducerBlock { end } => state.producer_id_block_end >= *end,
            Fact::Registration { sequence } => state.next_registration_sequence > *sequence,
            Fact::Fenced {
                node_id,
                incarnation,
                min_sequence,
            } => state
                .brokers
                .get(node_id)
                .is_none_or(|b| b.incarnation != *incarnation || b.sequence >= *min_sequence),
        }
    }
}

#[derive(Default)]
pub(super) struct Checker {
    /// The state at each applied index some node was seen at (first seen there).
    pub(super) history: BTreeMap<u64, Rc<ClusterState>>,
    /// (topic id, partition, leader epoch) -> leader.
    pub(super) leaders: BTreeMap<([u8; 16], usize, i32), i32>,
    /// (applied index of the proposer when told, fact).
    pub(super) facts: Vec<(u64, Fact)>,
    /// Producer id block start -> (node, proposal) told.
    pub(super) producer_blocks: BTreeMap<i64, (i32, u64)>,
    /// Registration sequence -> (node, incarnation) told.
    pub(super) sequences: BTreeMap<u64, (i32, u64)>,
    /// Every incarnation each node ever had.
    pub(super) incarnations: BTreeMap<i32, BTreeSet<u64>>,
    /// (node, incarnation, proposal) whose outcome was reported: a second report means a
    /// proposal proposed again was applied twice.
    pub(super) reported: BTreeSet<(i32, u64, u64)>,
}

impl Checker {
    /// Checks the state a node holds at `index`.
    pub(super) fn observe(
        &mut self,
        node: i32,
        index: u64,
        state: &ClusterState,
    ) -> Result<(), String> {
        if let Some(seen) = self.history.get(&index) {
            if **seen != *state {
                return Err(format!(
                    "nodes disagree at applied index {index}: node {node} holds\n{}\n    \
                     where an earlier observation held\n{}",
                    describe_state(state),
                    describe_state(seen)
                ));
            }
            return Ok(());
        }
        self.check_state(state)
            .map_err(|e| format!("node {node} at applied index {index}: {e}"))?;
        for (topic_name, topic) in &state.topics {
            for (p, partition) in topic.partitions.iter().enumerate() {
                let key = (topic.id, p, partition.leader_epoch);
                let leader = *self.leaders.entry(key).or_insert(partition.leader);
                if leader != partition.leader {
                    return Err(format!(
                        "two leaders for {topic_name}-{p} at leader epoch {}: {leader} and {} \
                         (node {node}, applied index {index})",
                        partition.leader_epoch, partition.leader
                    ));
                }
            }
        }
        if let Some((&before, earlier)) = self.history.range(..index).next_back() {
            never_backwards(earlier, state).map_err(|e| {
                format!("from applied index {before} to {index} (node {node}): {e}")
            })?;
        }
        if let Some((&after, later)) = self.history.range(index + 1..).next() {
            never_backwards(state, later)
                .map_err(|e| format!("from applied index {index} (node {node}) to {after}: {e}"))?;
        }
        for (fact_index, fact) in &self.facts {
            if *fact_index <= index && !fact.holds(state) {
                return Err(format!(
                    "committed outcome lost: {fact:?} (told at applied index {fact_index}) \
                     does not hold at applied index {index} on node {node}\n{}",
                    describe_state(state)
                ));
            }
        }
        self.history.insert(index, Rc::new(state.clone()));
        Ok(())
    }

    /// Records an outcome told to a proposer whose node had applied up to `index`.
    pub(super) fn learn(&mut self, index: u64, fact: Fact) -> Result<(), String> {
        for (&later, state) in self.history.range(index..) {
            if !fact.holds(state) {
                return Err(format!(
                    "committed outcome {fact:?} (told at applied index {index}) does not hold \
                     at applied index {later}"
                ));
            }
        }
        self.facts.push((index, fact));
        Ok(())
    }

    /// Invariants of one state on its own.
    pub(super) fn check_state(&self, state: &ClusterState) -> Result<(), String> {
        let mut sequences = BTreeSet::new();
        for (&id, broker) in &state.brokers {
            if broker.node_id != id {
                return Err(format!("broker {id} registered as {}", broker.node_id));
            }
            if !self
                .incarnations
                .get(&id)
                .is_some_and(|i| i.contains(&broker.incarnation))
            {
                return Err(format!(
                    "broker {id} registered with incarnation {:x}, which never ran",
                    broker.incarnation
                ));
            }
            if broker.sequence >= state.next_registration_sequence
                || !sequences.insert(broker.sequence)
            {
                return Err(format!(
                    "broker {id} has registration sequence {} (next {}, or shared)",
                    broker.sequence, state.next_registration_sequence
                ));
            }
        }
        for (name, topic) in &state.topics {
            let Some(rf) = topic.partitions.first().map(|p| p.replicas.len()) else {
                return Err(format!("topic {name} has no partitions"));
            };
            for (p, partition) in topic.partitions.iter().enumerate() {
                let at = format!("{name}-{p} {partition:?}");
                let distinct: BTreeSet<i32> = partition.replicas.iter().copied().collect();
                if partition.replicas.len() != rf || distinct.len() != rf {
                    return Err(format!("{at}: replicas not {rf} distinct brokers"));
                }
                if partition.isr.is_empty()
                    || partition
                        .isr
                        .iter()
                        .any(|r| !partition.replicas.contains(r))
                {
                    return Err(format!("{at}: ISR empty or not within the replicas"));
                }
                if partition.leader != -1 {
                    if !partition.isr.contains(&partition.leader) {
                        return Err(format!("{at}: the leader is not in the ISR"));
                    }
                    if !state.brokers.contains_key(&partition.leader) {
                        return Err(format!(
                            "{at}: the leader is not a registered broker (fenced or never \
                             registered)"
                        ));
                    }
                }
                if partition.leader_epoch < 0 || partition.partition_epoch < 0 {
                    return Err(format!("{at}: negative epoch"));
                }
            }
        }
        Ok(())
    }
}

/// What must not decrease from an earlier applied index to a later one.
pub(super) fn never_backwards(earlier: &ClusterState, later: &ClusterState) -> Result<(), String> {
    if later.version < earlier.version
        || later.next_registration_sequence < earlier.next_registration_sequence
        || later.producer_id_block_end < earlier.producer_id_block_end
        || (!earlier.cluster_id.is_empty() && later.cluster_id != earlier.cluster_id)
    {
        return Err(format!(
            "version, registration sequence, producer ids or cluster id went backwards: \
             ({}, {}, {}, {:?}) then ({}, {}, {}, {:?})",
            earlier.version,
            earlier.next_registration_sequence,
            earlier.producer_id_block_end,
            earlier.cluster_id,
            later.version,
            later.next_registration_sequence,
            later.producer_id_block_end,
            later.cluster_id
        ));
    }
    for (name, topic) in &earlier.topics {
        let Some(after) = later.topics.get(name).filter(|t| t.id == topic.id) else {
            continue;
        };
        if after.partitions.len() < topic.partitions.len() {
            return Err(format!("topic {name} lost partitions"));
        }
        for (p, (a, b)) in topic.partitions.iter().zip(&after.partitions).enumerate() {
            if b.leader_epoch < a.leader_epoch || b.partition_epoch < a.partition_epoch {
                return Err(format!(
                    "epochs of {name}-{p} went backwards: leader epoch {} -> {}, partition \
                     epoch {} -> {}",
                    a.leader_epoch, b.leader_epoch, a.partition_epoch, b.partition_epoch
                ));
            }
        }
    }
    Ok(())
}

/// A compact, readable dump of a state for failure reports.
pub(super) fn describe_state(state: &ClusterState) -> String {
    let mut out = format!(
        "    version={} cluster={:?} next_seq={} pid_end={}\n",
        state.version,
        state.cluster_id,
        state.next_registration_sequence,
        state.producer_id_block_end
    );
    for b in state.brokers.values() {
        out += &format!(
            "    broker {} inc={:x} seq={}\n",
            b.node_id, b.incarnation, b.sequence
        );
    }
    for (name, t) in &state.topics {
        out += &format!("    topic {name} id={:02x?}\n", &t.id[..4]);
        for (p, partition) in t.partitions.iter().enumerate() {
            out += &format!(
                "      {p}: replicas={:?} isr={:?} leader={} epochs={}/{}\n",
                partition.replicas,
                partition.isr,
                partition.leader,
                partition.leader_epoch,
                partition.partition_epoch
            );
        }
    }
    out
}
