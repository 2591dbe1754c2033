//! The coordination state machine: what ZooKeeper's znodes held in a classic Kafka cluster,
//! as a deterministic function of a log of commands.
//!
//! Every voter applies the same committed [`Command`]s in the same order and so holds the same
//! [`ClusterState`]. Applying is pure: no clock, no randomness, no I/O. Anything that depends on
//! time or chance (a topic's id, a broker's incarnation, "this session expired") is decided by
//! the proposer and carried inside the command, so a replayed log rebuilds the state exactly.
//! Each command yields an [`Outcome`] for whoever proposed it; validation errors are outcomes
//! too, decided at apply time on the committed state, so two racing creators of one topic get
//! one success and one `TOPIC_ALREADY_EXISTS` on every node alike.

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;

use super::metadata::validate_topic_name;

/// Producer ids are handed to brokers in blocks of this many; one command covers a block.
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

/// Topic configuration keys accepted in CreateTopics, with the broker key they override.
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "max.message.bytes",
    "cleanup.policy",
    "min.insync.replicas",
    "message.timestamp.type",
    "unclean.leader.election.enable",
    "delete.retention.ms",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "max.compaction.lag.ms",
];

/// Deleted topics remembered so that a broker that was down during a delete can remove the
/// files it still holds. Bounded: the oldest are forgotten first.
pub const MAX_DELETED_TOPICS_REMEMBERED: usize = 10_000;

/// Applied proposal ids remembered per proposer above its floor (see [`AppliedProposals`]).
pub const PROPOSAL_WINDOW: usize = 256;

/// Proposers (node incarnations) whose applied proposals are remembered; the one that applied
/// nothing for longest is forgotten first.
pub const MAX_PROPOSERS_REMEMBERED: usize = 64;

/// Which proposals of one proposer (a node's incarnation) were applied, so that a proposal
/// proposed again under the same id is applied once.
///
/// Why: a proposal forwarded to a quorum leader that then loses its leadership may be lost, or
/// may still commit under the next leader: the proposer cannot tell which. It proposes the same
/// envelope again (same id) until it sees an outcome, and the copy that commits second is
/// skipped here, on every voter alike.
///
/// A proposer hands out ids in increasing order. Every id at or below `floor` counts as
/// applied; above it, `applied` lists those that were. When more than [`PROPOSAL_WINDOW`] are
/// listed, the floor rises to the lowest: a proposal still unapplied below it (overtaken by
/// 256 later ones of the same proposer, far longer than any proposer keeps retrying) is then
/// refused as a duplicate, and its proposer times out as it would have without retries.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct AppliedProposals {
    pub floor: u64,
    /// Applied ids above `floor`, ascending.
    pub applied: Vec<u64>,
    /// [`ClusterState::proposals_clock`] when this proposer last had a proposal applied.
    pub last_applied: u64,
}

/// A broker's registration, the ephemeral sequential znode of the ZooKeeper recipe.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct BrokerRegistration {
    pub node_id: i32,
    /// Random per process start: tells a restarted broker from the session it replaces.
    pub incarnation: u64,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    /// Increases with every registration in the cluster; leadership prefers the lowest.
    pub sequence: u64,
}

/// One partition's replicas and leadership.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PartitionState {
    /// Preferred leader first.
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// -1 while no eligible replica is live (offline partition).
    pub leader: i32,
    /// Increases on every leadership change, including to and from "no leader".
    pub leader_epoch: i32,
    /// Increases on every change to leader or ISR (Kafka's partition epoch).
    pub partition_epoch: i32,
    /// While a reassignment runs: target replicas not in the original set (they catch up as
    /// followers) and original replicas not in the target (they leave when it completes).
    /// `replicas` is then the target followed by `removing_replicas`.
    pub adding_replicas: Vec<i32>,
    pub removing_replicas: Vec<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TopicState {
    pub id: [u8; 16],
    pub partitions: Vec<PartitionState>,
    pub configs: BTreeMap<String, String>,
}

/// Everything the quorum agrees on. Identical on every voter after applying the same log.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct ClusterState {
    pub cluster_id: String,
    /// Live (unexpired) brokers by node id.
    pub brokers: BTreeMap<i32, BrokerRegistration>,
    pub next_registration_sequence: u64,
    pub topics: BTreeMap<String, TopicState>,
    /// (name, id) of deleted topics, oldest first, at most [`MAX_DELETED_TOPICS_REMEMBERED`].
    pub deleted_topics: Vec<(String, [u8; 16])>,
    /// Producer ids below this were handed out in some block.
    pub producer_id_block_end: i64,
    /// Dynamic broker configs (AlterConfigs on BROKER resources): by broker id as a string,
    /// `""` for the cluster-wide default. See `broker_configs`.
    pub broker_configs: BTreeMap<String, BTreeMap<String, String>>,
    /// Counts applied commands that changed anything: a cheap change detector.
    pub version: u64,
    /// By (node id, incarnation) of the proposer: which of its proposals were applied.
    pub applied_proposals: BTreeMap<(i32, u64), AppliedProposals>,
    /// Counts applied proposals (duplicates excluded): orders proposers by last use.
    pub proposals_clock: u64,
}

/// A topic to create, as proposed.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NewTopic {
    pub name: String,
    pub id: [u8; 16],
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: Vec<(String, String)>,
}

/// A change proposed to the quorum.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Command {
    /// Names the cluster; only the first one committed counts.
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
    /// The broker's session expired (decided by the quorum leader from missed heartbeats), or
    /// it shut down cleanly. Only the named incarnation is removed.
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
    /// A partition leader changes the ISR (replication's AlterPartition). Refused unless the
    /// request comes from the current leader at the current epochs.
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
    /// Changes a topic's config overrides (AlterConfigs / IncrementalAlterConfigs). With
    /// `replace`, every override not set by `changes` is removed (AlterConfigs' semantics).
    /// Refused as a whole when one change is invalid.
    AlterTopicConfigs {
        name: String,
        replace: bool,
        changes: Vec<ConfigChange>,
    },
    /// ElectLeaders: preferred (the first replica) or unclean election; `None` names every
    /// partition. Answered per partition (`Outcome::Partitions`).
    ElectLeaders {
        unclean: bool,
        partitions: Option<Vec<(String, i32)>>,
    },
    /// AlterPartitionReassignments: per partition a target replica list, or `None` to cancel
    /// the running reassignment. Answered per partition (`Outcome::Partitions`).
    ReassignPartitions {
        reassignments: Vec<(String, i32, Option<Vec<i32>>)>,
    },
    /// Dynamic broker configs of one broker (`Some(id)`) or the cluster default (`None`);
    /// `replace` as in `AlterTopicConfigs`. Refused as a whole when one change is invalid.
    AlterBrokerConfigs {
        broker: Option<i32>,
        replace: bool,
        changes: Vec<ConfigChange>,
    },
}

/// One change to a topic config override (IncrementalAlterConfigs' operations).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ConfigChange {
    Set {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// Adds items to a list-valued key (`cleanup.policy`), starting from its current value.
    Append {
        key: String,
        value: String,
    },
    /// Removes items from a list-valued key.
    Subtract {
        key: String,
        value: String,
    },
}

/// Topic config keys whose value is a comma-separated list.
pub const LIST_TOPIC_CONFIG_KEYS: &[&str] = &["cleanup.policy"];

/// Checks (and normalises) a topic config value as Kafka's `LogConfig` would: the error is
/// INVALID_CONFIG's message.
pub fn validate_topic_config(key: &str, value: &str) -> Result<String, String> {
    let invalid = |why: &str| format!("Invalid value {value} for configuration {key}: {why}");
    let long_at_least = |min: i64| match value.trim().parse::<i64>() {
        Ok(v) if v >= min => Ok(v.to_string()),
        Ok(_) => Err(invalid(&format!("Value must be at least {min}"))),
        Err(_) => Err(invalid("Not a number of type LONG")),
    };
    let int_at_least = |min: i64| match value.trim().parse::<i32>() {
        Ok(v) if v as i64 >= min => Ok(v.to_string()),
        Ok(_) => Err(invalid(&format!("Value must be at least {min}"))),
        Err(_) => Err(invalid("Not a number of type INT")),
    };
    match key {
        "retention.ms" | "retention.bytes" => long_at_least(-1),
        // The storage layer's bounds (`LogConfig::validate`): a page to i32::MAX.
        "segment.bytes" => int_at_least(crate::storage::PAGE_BYTES as i64),
        "max.message.bytes" => int_at_least(0),
        "min.insync.replicas" => int_at_least(1),
        "cleanup.policy" => {
            let items: Vec<&str> = value.split(',').map(str::trim).collect();
            if !items.iter().all(|i| ["delete", "compact"].contains(i)) {
                return Err(invalid("String must be one of: compact, delete"));
            }
            // Normalised, so `delete,compact` and `compact,delete` compare equal.
            match (items.contains(&"compact"), items.contains(&"delete")) {
                (true, true) => Ok("compact,delete".into()),
                (true, false) => Ok("compact".into()),
                _ => Ok("delete".into()),
            }
        }
        "delete.retention.ms" | "min.compaction.lag.ms" => long_at_least(0),
        "segment.ms" | "max.compaction.lag.ms" => long_at_least(1),
        "min.cleanable.dirty.ratio" => match value.trim().parse::<f64>() {
            Ok(v) if (0.0..=1.0).contains(&v) => Ok(v.to_string()),
            Ok(_) => Err(invalid("Value must be between 0 and 1")),
            Err(_) => Err(invalid("Not a number of type DOUBLE")),
        },
        "message.timestamp.type" => match value {
            "CreateTime" | "LogAppendTime" => Ok(value.into()),
            _ => Err(invalid("String must be one of: CreateTime, LogAppendTime")),
        },
        "unclean.leader.election.enable" => match value.trim().to_ascii_lowercase().as_str() {
            v @ ("true" | "false") => Ok(v.into()),
            _ => Err(invalid("Expected value to be either true or false")),
        },
        _ => Err(format!("Unknown topic config name: {key}")),
    }
}

/// What applying a command means for its proposer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Registered {
        sequence: u64,
    },
    ProducerIds {
        first: i64,
        count: i64,
    },
    Refused {
        code: ResponseError,
        message: String,
    },
    /// A command about many partitions: each one's (topic, partition, error if any).
    Partitions(Vec<PartitionOutcome>),
}

/// One partition's result in `Outcome::Partitions`; `error` is `None` on success.
pub type PartitionOutcome = (String, i32, Option<(ResponseError, String)>);

impl Outcome {
    pub(super) fn refused(code: ResponseError, message: impl Into<String>) -> Outcome {
        Outcome::Refused {
            code,
            message: message.into(),
        }
    }
}

impl ClusterState {
    /// Records that proposal `proposal` of `proposer` (node id, incarnation) is being applied;
    /// false if it already was (a copy proposed again: skip it). Deterministic, like
    /// [`Self::apply`]. Does not count as a change ([`Self::version`]).
    pub fn first_application(&mut self, proposer: (i32, u64), proposal: u64) -> bool {
        let seen = self.applied_proposals.entry(proposer).or_default();
        if proposal <= seen.floor {
            return false;
        }
        let Err(at) = seen.applied.binary_search(&proposal) else {
            return false;
        };
        seen.applied.insert(at, proposal);
        if seen.applied.len() > PROPOSAL_WINDOW {
            seen.floor = seen.applied.remove(0);
        }
        self.proposals_clock += 1;
        seen.last_applied = self.proposals_clock;
        if self.applied_proposals.len() > MAX_PROPOSERS_REMEMBERED {
            let oldest = self
                .applied_proposals
                .iter()
                .min_by_key(|(_, seen)| seen.last_applied)
                .map(|(&key, _)| key)
                .expect("more than the maximum");
            self.applied_proposals.remove(&oldest);
        }
        true
    }

    /// Applies one committed command. Deterministic: the same state and command give the same
    /// result on every node.
    pub fn apply(&mut self, command: Command) -> Outcome {
        let outcome = match command {
            Command::InitCluster { cluster_id } => {
                if self.cluster_id.is_empty() {
                    self.cluster_id = cluster_id;
                }
                Outcome::Done
            }
            Command::RegisterBroker {
                node_id,
                incarnation,
                host,
                port,
                rack,
            } => self.register(node_id, incarnation, host, port, rack),
            Command::FenceBroker {
                node_id,
                incarnation,
            } => self.fence(node_id, incarnation),
            Command::CreateTopic {
                topic,
                max_partitions,
            } => self.create_topic(topic, max_partitions),
            Command::DeleteTopic { name } => self.delete_topic(&name),
            Command::CreatePartitions {
                name,
                count,
                max_partitions,
            } => self.create_partitions(&name, count, max_partitions),
            Command::AlterPartition {
                topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
            } => self.alter_partition(
                &topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
            ),
            Command::AlterTopicConfigs {
                name,
                replace,
                changes,
            } => match self.altered_topic_configs(&name, replace, &changes) {
                Ok(configs) => {
                    let topic = self.topics.get_mut(&name).expect("checked");
                    if topic.configs == configs {
                        // Nothing changed: no new version, no metadata to publish.
                        return Outcome::Done;
                    }
                    topic.configs = configs;
                    Outcome::Done
                }
                Err(refused) => refused,
            },
            Command::ElectLeaders {
                unclean,
                partitions,
            } => self.elect_requested_leaders(unclean, partitions),
            Command::ReassignPartitions { reassignments } => {
                self.reassign_partitions(reassignments)
            }
            Command::AlterBrokerConfigs {
                broker,
                replace,
                changes,
            } => match super::broker_configs::altered(self, broker, replace, &changes) {
                Ok(configs) => {
                    let key = broker.map(|b| b.to_string()).unwrap_or_default();
                    if self.broker_configs.get(&key).cloned().unwrap_or_default() == configs {
                        return Outcome::Done;
                    }
                    if configs.is_empty() {
                        self.broker_configs.remove(&key);
                    } else {
                        self.broker_configs.insert(key, configs);
                    }
                    Outcome::Done
                }
                Err(refused) => refused,
            },
            Command::AllocateProducerIds { node_id: _ } => {
                let first = self.producer_id_block_end;
                self.producer_id_block_end += PRODUCER_ID_BLOCK_SIZE;
                Outcome::ProducerIds {
                    first,
                    count: PRODUCER_ID_BLOCK_SIZE,
                }
            }
        };
        if !matches!(outcome, Outcome::Refused { .. }) {
            self.version += 1;
        }
        outcome
    }

    /// Live brokers, earliest registration first.
    pub fn brokers_by_sequence(&self) -> Vec<&BrokerRegistration> {
        let mut brokers: Vec<&BrokerRegistration> = self.brokers.values().collect();
        brokers.sort_by_key(|b| b.sequence);
        brokers
    }

    pub fn is_live(&self, node_id: i32) -> bool {
        self.brokers.contains_key(&node_id)
    }

    fn register(
        &mut self,
        node_id: i32,
        incarnation: u64,
        host: String,
        port: u16,
        rack: Option<String>,
    ) -> Outcome {
        if node_id < 0 {
            return Outcome::refused(ResponseError::InvalidRequest, "node ids are not negative");
        }
        if let Some(existing) = self.brokers.get(&node_id) {
            if existing.incarnation == incarnation {
                // A retried registration of the same process: idempotent.
                return Outcome::Registered {
                    sequence: existing.sequence,
                };
            }
            return Outcome::refused(
                ResponseError::DuplicateBrokerRegistration,
                format!(
                    "node id {node_id} is already registered by a live broker at {}:{}; \
                     it is refused until that broker's session ends",
                    existing.host, existing.port
                ),
            );
        }
        let sequence = self.next_registration_sequence;
        self.next_registration_sequence += 1;
        self.brokers.insert(
            node_id,
            BrokerRegistration {
                node_id,
                incarnation,
                host,
                port,
                rack,
                sequence,
            },
        );
        // Offline partitions whose last in-sync replica is back get their leader again.
        self.elect_leaders(|p| p.leader == -1 && p.isr.contains(&node_id));
        Outcome::Registered { sequence }
    }

    fn fence(&mut self, node_id: i32, incarnation: u64) -> Outcome {
        match self.brokers.get(&node_id) {
            Some(b) if b.incarnation == incarnation => {}
            // An older session, already replaced or removed: nothing to do.
            _ => return Outcome::Done,
        }
        self.brokers.remove(&node_id);
        for topic in self.topics.values_mut() {
            for p in &mut topic.partitions {
                // The ISR keeps its last member even when that broker is gone, so the partition
                // can come back with it instead of electing an out-of-sync replica.
                if p.isr.contains(&node_id) && p.isr.len() > 1 {
                    p.isr.retain(|&r| r != node_id);
                    p.partition_epoch += 1;
                }
            }
        }
        self.elect_leaders(|p| p.leader == node_id);
        Outcome::Done
    }

    /// Re-chooses the leader of every partition matching `needs_election`: the live in-sync
    /// replica registered earliest; with unclean election enabled for the topic and no live
    /// in-sync replica, the live replica registered earliest. Bumps the epochs on change.
    pub(super) fn elect_leaders(&mut self, needs_election: impl Fn(&PartitionState) -> bool) {
        let sequence_of: BTreeMap<i32, u64> = self
            .brokers
            .iter()
            .map(|(&id, b)| (id, b.sequence))
            .collect();
        let earliest_live = |candidates: &[i32]| {
            candidates
                .iter()
                .filter_map(|r| sequence_of.get(r).map(|&s| (s, *r)))
                .min()
                .map(|(_, r)| r)
        };
        for topic in self.topics.values_mut() {
            let unclean = topic
                .configs
                .get("unclean.leader.election.enable")
                .is_some_and(|v| v == "true");
            for p in &mut topic.partitions {
                if !needs_election(p) {
                    continue;
                }
                let (leader, isr) = match earliest_live(&p.isr) {
                    Some(leader) => (leader, None),
                    None if unclean => match earliest_live(&p.replicas) {
                        Some(leader) => (leader, Some(vec![leader])),
                        None => (-1, None),
                    },
                    None => (-1, None),
                };
                if leader != p.leader {
                    p.leader = leader;
                    p.leader_epoch += 1;
                    p.partition_epoch += 1;
                }
                if let Some(isr) = isr {
                    p.isr = isr;
                    p.partition_epoch += 1;
                }
            }
        }
    }

    fn partition_count(&self) -> u64 {
        self.topics
            .values()
            .map(|t| t.partitions.len() as u64)
            .sum()
    }

    fn check_partition_limit(&self, added: u64, max_partitions: u64) -> Result<(), Outcome> {
        if self.partition_count() + added > max_partitions {
            return Err(Outcome::refused(
                ResponseError::PolicyViolation,
                format!("the cluster is limited to {max_partitions} partitions (max.partitions)"),
            ));
        }
        Ok(())
    }

    /// Checks a topic against the committed state without changing anything.
    pub fn validate_new_topic(&self, topic: &NewTopic, max_partitions: u64) -> Result<(), Outcome> {
        validate_topic_name(&topic.name)
            .map_err(|m| Outcome::refused(ResponseError::InvalidTopicException, m))?;
        if self.topics.contains_key(&topic.name) {
            return Err(Outcome::refused(
                ResponseError::TopicAlreadyExists,
                format!("Topic '{}' already exists.", topic.name),
            ));
        }
        // Topic ids are never reused: brokers remove files by (name, id) of deleted topics, and
        // a proposal applied twice (a duplicated forward) must not re-create a deleted topic.
        if self.topics.values().any(|t| t.id == topic.id)
            || self.deleted_topics.iter().any(|(_, id)| *id == topic.id)
        {
            return Err(Outcome::refused(
                ResponseError::TopicAlreadyExists,
                format!("Topic id of '{}' was already used.", topic.name),
            ));
        }
        if topic.partitions < 1 {
            return Err(Outcome::refused(
                ResponseError::InvalidPartitions,
                "Number of partitions must be larger than 0.",
            ));
        }
        if topic.replication_factor < 1 {
            return Err(Outcome::refused(
                ResponseError::InvalidReplicationFactor,
                "Replication factor must be larger than 0.",
            ));
        }
        if topic.replication_factor as usize > self.brokers.len() {
            return Err(Outcome::refused(
                ResponseError::InvalidReplicationFactor,
                format!(
                    "Replication factor: {} larger than available brokers: {}.",
                    topic.replication_factor,
                    self.brokers.len()
                ),
            ));
        }
        for (key, value) in &topic.configs {
            if !TOPIC_CONFIG_KEYS.contains(&key.as_str()) {
                return Err(Outcome::refused(
                    ResponseError::InvalidConfig,
                    format!("Unknown topic config name: {key}"),
                ));
            }
            // Values as AlterConfigs checks them (a dirty ratio of 2 never reaches a log).
            validate_topic_config(key, value)
                .map_err(|message| Outcome::refused(ResponseError::InvalidConfig, message))?;
        }
        self.check_partition_limit(topic.partitions as u64, max_partitions)
    }

    /// The config overrides `name` would have after `changes`, or why they are refused.
    /// Pure: validate-only requests call it against the committed state.
    pub fn altered_topic_configs(
        &self,
        name: &str,
        replace: bool,
        changes: &[ConfigChange],
    ) -> Result<BTreeMap<String, String>, Outcome> {
        let Some(topic) = self.topics.get(name) else {
            return Err(Outcome::refused(
                ResponseError::UnknownTopicOrPartition,
                format!("Topic {name} does not exist"),
            ));
        };
        let invalid = |m: String| Outcome::refused(ResponseError::InvalidConfig, m);
        let mut configs = if replace {
            BTreeMap::new()
        } else {
            topic.configs.clone()
        };
        for change in changes {
            match change {
                ConfigChange::Set { key, value } => {
                    let value = validate_topic_config(key, value).map_err(invalid)?;
                    configs.insert(key.clone(), value);
                }
                ConfigChange::Delete { key } => {
                    if !TOPIC_CONFIG_KEYS.contains(&key.as_str()) {
                        return Err(invalid(format!("Unknown topic config name: {key}")));
                    }
                    configs.remove(key);
                }
                ConfigChange::Append { key, value } | ConfigChange::Subtract { key, value } => {
                    if !TOPIC_CONFIG_KEYS.contains(&key.as_str()) {
                        return Err(invalid(format!("Unknown topic config name: {key}")));
                    }
                    if !LIST_TOPIC_CONFIG_KEYS.contains(&key.as_str()) {
                        return Err(invalid(format!(
                            "Config value append/subtract is not allowed for config key: {key}"
                        )));
                    }
                    // The current value, else the broker default (only `delete` today).
                    let current = configs.get(key).cloned().unwrap_or_else(|| "delete".into());
                    let mut items: Vec<String> = current
                        .split(',')
                        .map(|i| i.trim().to_string())
                        .filter(|i| !i.is_empty())
                        .collect();
                    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                        if matches!(change, ConfigChange::Append { .. }) {
                            if !items.iter().any(|i| i == item) {
                                items.push(item.to_string());
                            }
                        } else {
                            items.retain(|i| i != item);
                        }
                    }
                    if items.is_empty() {
                        configs.remove(key);
                    } else {
                        let value =
                            validate_topic_config(key, &items.join(",")).map_err(invalid)?;
                        configs.insert(key.clone(), value);
                    }
                }
            }
        }
        Ok(configs)
    }

    fn create_topic(&mut self, topic: NewTopic, max_partitions: u64) -> Outcome {
        if let Err(refused) = self.validate_new_topic(&topic, max_partitions) {
            return refused;
        }
        // Rotate the first replica by the number of topics so that many small topics do not
        // all lead on the same broker.
        let shift = self.topics.len() + self.deleted_topics.len();
        let partitions = self.assign(shift, 0, topic.partitions, topic.replication_factor);
        self.topics.insert(
            topic.name,
            TopicState {
                id: topic.id,
                partitions,
                configs: topic.configs.into_iter().collect(),
            },
        );
        Outcome::Done
    }

    /// Replicas of partitions `first..first+count` spread round-robin over the live brokers
    /// (ordered by node id, so every voter computes the same), the first replica leading.
    fn assign(&self, shift: usize, first: i32, count: i32, rf: i16) -> Vec<PartitionState> {
        let live: Vec<i32> = self.brokers.keys().copied().collect();
        assert!(!live.is_empty() && rf as usize <= live.len());
        (first..first + count)
            .map(|p| {
                let replicas: Vec<i32> = (0..rf as usize)
                    .map(|r| live[(shift + p as usize + r) % live.len()])
                    .collect();
                PartitionState {
                    leader: replicas[0],
                    isr: replicas.clone(),
                    replicas,
                    leader_epoch: 0,
                    partition_epoch: 0,
                    adding_replicas: Vec::new(),
                    removing_replicas: Vec::new(),
                }
            })
            .collect()
    }

    fn delete_topic(&mut self, name: &str) -> Outcome {
        let Some(topic) = self.topics.remove(name) else {
            return unknown_topic();
        };
        self.deleted_topics.push((name.to_string(), topic.id));
        if self.deleted_topics.len() > MAX_DELETED_TOPICS_REMEMBERED {
            self.deleted_topics.remove(0);
        }
        Outcome::Done
    }

    /// Validates growing a topic to `count` partitions (Kafka never shrinks one).
    pub fn validate_create_partitions(
        &self,
        name: &str,
        count: i32,
        max_partitions: u64,
    ) -> Result<(), Outcome> {
        let Some(topic) = self.topics.get(name) else {
            return Err(unknown_topic());
        };
        let current = topic.partitions.len() as i32;
        if count <= current {
            return Err(Outcome::refused(
                ResponseError::InvalidPartitions,
                format!(
                    "Topic currently has {current} partitions, which is higher than or equal \
                     to the requested {count}."
                ),
            ));
        }
        let rf = topic.partitions[0].replicas.len();
        if rf > self.brokers.len() {
            return Err(Outcome::refused(
                ResponseError::InvalidReplicationFactor,
                format!(
                    "Replication factor: {rf} larger than available brokers: {}.",
                    self.brokers.len()
                ),
            ));
        }
        self.check_partition_limit((count - current) as u64, max_partitions)
    }

    fn create_partitions(&mut self, name: &str, count: i32, max_partitions: u64) -> Outcome {
        if let Err(refused) = self.validate_create_partitions(name, count, max_partitions) {
            return refused;
        }
        let topic = &self.topics[name];
        let current = topic.partitions.len() as i32;
        let rf = topic.partitions[0].replicas.len() as i16;
        let added = self.assign(current as usize, current, count - current, rf);
        self.topics
            .get_mut(name)
            .expect("validated above")
            .partitions
            .extend(added);
        Outcome::Done
    }

    fn alter_partition(
        &mut self,
        topic: &str,
        index: i32,
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<i32>,
    ) -> Outcome {
        let live: Vec<i32> = self.brokers.keys().copied().collect();
        let Some(p) = self
            .topics
            .get_mut(topic)
            .and_then(|t| t.partitions.get_mut(index as usize))
        else {
            return unknown_topic();
        };
        if p.leader != leader || p.leader_epoch != leader_epoch {
            return Outcome::refused(
                ResponseError::FencedLeaderEpoch,
                format!(
                    "leader {leader} at epoch {leader_epoch} is not the current leader {} at epoch {}",
                    p.leader, p.leader_epoch
                ),
            );
        }
        if p.partition_epoch != partition_epoch {
            return Outcome::refused(
                ResponseError::InvalidUpdateVersion,
                "the partition changed since the leader last read it",
            );
        }
        if !isr.contains(&leader)
            || isr.iter().any(|r| !p.replicas.contains(r))
            || isr.iter().any(|r| !live.contains(r) && !p.isr.contains(r))
        {
            return Outcome::refused(
                ResponseError::InvalidRequest,
                "the new ISR must hold the leader and only live replicas",
            );
        }
        let mut isr = isr;
        isr.sort_unstable();
        isr.dedup();
        p.isr = isr;
        p.partition_epoch += 1;
        // A reassignment completes once every target replica is in sync.
        let name = topic.to_string();
        self.complete_reassignment_if_caught_up(&name, index);
        Outcome::Done
    }
}

pub(super) fn unknown_topic() -> Outcome {
    Outcome::refused(
        ResponseError::UnknownTopicOrPartition,
        "This server does not host this topic-partition.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(state: &mut ClusterState, node_id: i32) -> Outcome {
        state.apply(Command::RegisterBroker {
            node_id,
            incarnation: node_id as u64 + 100,
            host: "localhost".into(),
            port: 9092 + node_id as u16,
            rack: None,
        })
    }

    fn topic(name: &str, partitions: i32, rf: i16) -> Command {
        Command::CreateTopic {
            topic: NewTopic {
                name: name.into(),
                id: [1; 16],
                partitions,
                replication_factor: rf,
                configs: vec![],
            },
            max_partitions: 1000,
        }
    }

    fn three_brokers() -> ClusterState {
        let mut state = ClusterState::default();
        for id in [0, 1, 2] {
            assert!(matches!(
                register(&mut state, id),
                Outcome::Registered { .. }
            ));
        }
        state
    }

    #[test]
    fn replicas_spread_and_leaders_balance() {
        let mut state = three_brokers();
        assert_eq!(state.apply(topic("t", 6, 3)), Outcome::Done);
        let t = &state.topics["t"];
        let mut leaders = [0; 3];
        for p in &t.partitions {
            assert_eq!(p.replicas.len(), 3);
            assert_eq!(p.isr, p.replicas);
            leaders[p.leader as usize] += 1;
        }
        assert_eq!(leaders, [2, 2, 2]);
    }

    #[test]
    fn replication_factor_above_live_brokers_is_refused_with_kafkas_message() {
        let mut state = three_brokers();
        match state.apply(topic("t", 1, 4)) {
            Outcome::Refused { code, message } => {
                assert_eq!(code, ResponseError::InvalidReplicationFactor);
                assert_eq!(
                    message,
                    "Replication factor: 4 larger than available brokers: 3."
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn duplicate_live_node_id_is_refused_until_the_session_ends() {
        let mut state = three_brokers();
        let again = state.apply(Command::RegisterBroker {
            node_id: 1,
            incarnation: 7,
            host: "other".into(),
            port: 1,
            rack: None,
        });
        assert!(matches!(
            again,
            Outcome::Refused {
                code: ResponseError::DuplicateBrokerRegistration,
                ..
            }
        ));
        // The same process retrying is idempotent.
        assert_eq!(register(&mut state, 1), Outcome::Registered { sequence: 1 });
        state.apply(Command::FenceBroker {
            node_id: 1,
            incarnation: 101,
        });
        let after = state.apply(Command::RegisterBroker {
            node_id: 1,
            incarnation: 7,
            host: "other".into(),
            port: 1,
            rack: None,
        });
        assert_eq!(
            after,
            Outcome::Registered { sequence: 3 },
            "a new, later sequence"
        );
    }

    #[test]
    fn fencing_a_leader_elects_the_earliest_registered_live_isr_member() {
        let mut state = three_brokers();
        state.apply(topic("t", 3, 3));
        // Re-register broker 0 so that it is now the latest; 1 is earliest live.
        state.apply(Command::FenceBroker {
            node_id: 0,
            incarnation: 100,
        });
        for p in &state.topics["t"].partitions {
            assert_ne!(p.leader, 0);
            assert!(!p.isr.contains(&0));
        }
        let p0 = &state.topics["t"].partitions[0];
        assert_eq!(p0.leader, 1, "1 registered before 2");
        assert_eq!(p0.leader_epoch, 1);
        // A partition led by 1 keeps its leader and epoch.
        let p1 = &state.topics["t"].partitions[1];
        assert_eq!((p1.leader, p1.leader_epoch), (1, 0));
    }

    #[test]
    fn an_offline_partition_waits_for_its_last_isr_member_unless_unclean() {
        let mut state = three_brokers();
        state.apply(topic("t", 1, 2));
        let replicas = state.topics["t"].partitions[0].replicas.clone();
        let (first, second) = (replicas[0], replicas[1]);
        state.apply(Command::FenceBroker {
            node_id: first,
            incarnation: first as u64 + 100,
        });
        assert_eq!(state.topics["t"].partitions[0].leader, second);
        assert_eq!(state.topics["t"].partitions[0].isr, vec![second]);
        state.apply(Command::FenceBroker {
            node_id: second,
            incarnation: second as u64 + 100,
        });
        let p = &state.topics["t"].partitions[0];
        assert_eq!(
            (p.leader, p.isr.clone(), p.leader_epoch),
            (-1, vec![second], 2)
        );
        // The out-of-sync replica comes back: still offline (no unclean election).
        register(&mut state, first);
        assert_eq!(state.topics["t"].partitions[0].leader, -1);
        // The last in-sync replica comes back and leads again.
        register(&mut state, second);
        let p = &state.topics["t"].partitions[0];
        assert_eq!((p.leader, p.leader_epoch), (second, 3));
    }

    #[test]
    fn alter_partition_is_fenced_by_epochs() {
        let mut state = three_brokers();
        state.apply(topic("t", 1, 3));
        let p = state.topics["t"].partitions[0].clone();
        let shrink = |leader_epoch, partition_epoch| Command::AlterPartition {
            topic: "t".into(),
            partition: 0,
            leader: p.leader,
            leader_epoch,
            partition_epoch,
            isr: vec![p.leader],
        };
        assert!(matches!(
            state.apply(shrink(5, 0)),
            Outcome::Refused {
                code: ResponseError::FencedLeaderEpoch,
                ..
            }
        ));
        assert_eq!(state.apply(shrink(0, 0)), Outcome::Done);
        assert_eq!(state.topics["t"].partitions[0].isr, vec![p.leader]);
        assert!(matches!(
            state.apply(shrink(0, 0)),
            Outcome::Refused {
                code: ResponseError::InvalidUpdateVersion,
                ..
            }
        ));
    }

    #[test]
    fn a_topic_id_is_never_used_twice() {
        let mut state = three_brokers();
        assert_eq!(state.apply(topic("t", 1, 1)), Outcome::Done);
        assert_eq!(
            state.apply(Command::DeleteTopic { name: "t".into() }),
            Outcome::Done
        );
        // The same create applied again (a duplicated proposal) must not bring it back.
        assert!(matches!(
            state.apply(topic("t", 1, 1)),
            Outcome::Refused {
                code: ResponseError::TopicAlreadyExists,
                ..
            }
        ));
    }

    #[test]
    fn producer_id_blocks_never_overlap() {
        let mut state = ClusterState::default();
        let a = state.apply(Command::AllocateProducerIds { node_id: 0 });
        let b = state.apply(Command::AllocateProducerIds { node_id: 1 });
        assert_eq!(
            a,
            Outcome::ProducerIds {
                first: 0,
                count: 1000
            }
        );
        assert_eq!(
            b,
            Outcome::ProducerIds {
                first: 1000,
                count: 1000
            }
        );
    }

    #[test]
    fn state_survives_an_rkyv_round_trip() {
        let mut state = three_brokers();
        state.apply(topic("t", 2, 2));
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&state).unwrap();
        let back: ClusterState =
            rkyv::from_bytes::<ClusterState, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(back, state);
    }

    fn set(key: &str, value: &str) -> ConfigChange {
        ConfigChange::Set {
            key: key.into(),
            value: value.into(),
        }
    }

    fn refusal(outcome: Outcome) -> (ResponseError, String) {
        match outcome {
            Outcome::Refused { code, message } => (code, message),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn topic_configs_are_set_deleted_and_validated_as_a_whole() {
        let mut state = three_brokers();
        assert_eq!(state.apply(topic("t", 1, 1)), Outcome::Done);
        let alter = |replace, changes| Command::AlterTopicConfigs {
            name: "t".into(),
            replace,
            changes,
        };
        let version = state.version;
        assert_eq!(
            state.apply(alter(
                false,
                vec![
                    set("retention.ms", "60000"),
                    set("unclean.leader.election.enable", "TRUE")
                ]
            )),
            Outcome::Done
        );
        assert_eq!(state.version, version + 1);
        assert_eq!(state.topics["t"].configs["retention.ms"], "60000");
        assert_eq!(
            state.topics["t"].configs["unclean.leader.election.enable"],
            "true"
        );
        // A bad value refuses the whole change: retention.ms stays as it was.
        let (code, message) = refusal(state.apply(alter(
            false,
            vec![set("retention.ms", "1"), set("retention.bytes", "lots")],
        )));
        assert_eq!(code, ResponseError::InvalidConfig);
        assert!(message.contains("retention.bytes"), "{message}");
        assert_eq!(state.topics["t"].configs["retention.ms"], "60000");
        let (code, _) = refusal(state.apply(alter(false, vec![set("no.such.key", "1")])));
        assert_eq!(code, ResponseError::InvalidConfig);
        let (code, _) = refusal(state.apply(alter(false, vec![set("min.insync.replicas", "0")])));
        assert_eq!(code, ResponseError::InvalidConfig);
        // Append/subtract only on list keys.
        let (code, _) = refusal(state.apply(alter(
            false,
            vec![ConfigChange::Append {
                key: "retention.ms".into(),
                value: "1".into(),
            }],
        )));
        assert_eq!(code, ResponseError::InvalidConfig);
        assert_eq!(
            state.apply(alter(
                false,
                vec![ConfigChange::Delete {
                    key: "retention.ms".into()
                }]
            )),
            Outcome::Done
        );
        assert!(!state.topics["t"].configs.contains_key("retention.ms"));
        // AlterConfigs replaces every override.
        assert_eq!(
            state.apply(alter(true, vec![set("retention.bytes", "1024")])),
            Outcome::Done
        );
        assert_eq!(
            state.topics["t"].configs,
            BTreeMap::from([("retention.bytes".to_string(), "1024".to_string())])
        );
        // The same change again changes nothing, not even the version.
        let version = state.version;
        assert_eq!(
            state.apply(alter(true, vec![set("retention.bytes", "1024")])),
            Outcome::Done
        );
        assert_eq!(state.version, version);
        let (code, _) = refusal(state.apply(Command::AlterTopicConfigs {
            name: "missing".into(),
            replace: false,
            changes: vec![],
        }));
        assert_eq!(code, ResponseError::UnknownTopicOrPartition);
    }

    #[test]
    fn a_proposal_proposed_again_is_applied_once() {
        let mut state = ClusterState::default();
        let proposer = (1, 0xabc);
        assert!(state.first_application(proposer, 100));
        assert!(!state.first_application(proposer, 100), "the copy");
        // Out of order: 102 commits before 101 (proposed again later).
        assert!(state.first_application(proposer, 102));
        assert!(state.first_application(proposer, 101));
        assert!(!state.first_application(proposer, 101));
        // Another incarnation of the node, or another node, has its own ids.
        assert!(state.first_application((1, 0xdef), 100));
        assert!(state.first_application((2, 0xabc), 100));
        assert_eq!(state.version, 0, "bookkeeping, not a change");
    }

    #[test]
    fn the_window_of_applied_ids_is_bounded() {
        let mut state = ClusterState::default();
        let proposer = (1, 7);
        // 1000 is never applied; the window moves past it.
        for id in 1001..1001 + PROPOSAL_WINDOW as u64 + 1 {
            assert!(state.first_application(proposer, id));
        }
        let seen = &state.applied_proposals[&proposer];
        assert_eq!(seen.applied.len(), PROPOSAL_WINDOW);
        assert_eq!(seen.floor, 1001);
        assert!(
            !state.first_application(proposer, 1000),
            "below the floor: refused, as if applied"
        );
        assert!(!state.first_application(proposer, 1001));
        assert!(state.first_application(proposer, 5000));
    }

    #[test]
    fn the_proposer_idle_longest_is_forgotten() {
        let mut state = ClusterState::default();
        for node in 0..MAX_PROPOSERS_REMEMBERED as i32 {
            assert!(state.first_application((node, 1), 10));
        }
        // Proposer 0 applies again, so 1 is now the one idle longest.
        assert!(state.first_application((0, 1), 11));
        assert!(state.first_application((1000, 1), 10));
        assert_eq!(state.applied_proposals.len(), MAX_PROPOSERS_REMEMBERED);
        assert!(state.applied_proposals.contains_key(&(0, 1)));
        assert!(!state.applied_proposals.contains_key(&(1, 1)));
    }
}
