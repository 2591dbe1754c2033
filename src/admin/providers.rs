//! What the console shows, gathered on the shards.
//!
//! Everything here runs on shard 0 in the admin task queue (see [`super::serve_on_shard`]) and
//! reads cluster state only through `Shard::metadata()` and jobs to the owner shards. The
//! results are plain `Send` data that the HTTP thread serialises.
//!
//! Parts of the cluster that other modules own plug in through [`Providers`]: the
//! coordination quorum (registration order, quorum leader) and consumer groups. Until a module
//! registers a provider, the API reports that part as unavailable and the console hides it or
//! says it is not there yet: it shows what exists.

use std::rc::Rc;

use futures::future::{join_all, LocalBoxFuture};
use serde::Serialize;

use crate::coordination::ClusterMetadata;
use crate::shard::Shard;
use crate::storage::{ReadLimit, Records};

/// The coordination quorum as the cluster module knows it.
#[derive(Debug, Clone, Serialize)]
pub struct QuorumView {
    /// Node id of the quorum (Raft) leader, if there is one now.
    pub leader_id: Option<i32>,
    /// `(node id, registration sequence)`: lower registered earlier and is preferred as leader.
    pub registrations: Vec<(i32, u64)>,
    /// Voter node ids.
    pub voters: Vec<i32>,
}

/// One consumer group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    pub group_id: String,
    /// Kafka's names: Empty, PreparingRebalance, CompletingRebalance, Stable, Dead.
    pub state: String,
    pub protocol: String,
    pub members: Vec<GroupMemberView>,
    /// Committed offsets and lag per partition.
    pub offsets: Vec<GroupOffsetView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupMemberView {
    pub member_id: String,
    pub client_id: String,
    pub host: String,
    /// `topic-partition` strings assigned to this member.
    pub assignment: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupOffsetView {
    pub topic: String,
    pub partition: i32,
    pub committed_offset: i64,
    pub log_end_offset: i64,
    pub lag: i64,
}

/// Cluster membership and leadership beyond what `ClusterMetadata` carries.
pub trait QuorumProvider {
    fn quorum(&self, shard: &Rc<Shard>) -> Option<QuorumView>;
}

/// The coordination quorum as shard 0's coordinator sees it.
pub struct CoordinatorQuorum(pub Rc<crate::coordination::Coordinator>);

impl QuorumProvider for CoordinatorQuorum {
    fn quorum(&self, _shard: &Rc<Shard>) -> Option<QuorumView> {
        let registrations = self.0.with_state(|state| {
            state
                .brokers_by_sequence()
                .iter()
                .map(|b| (b.node_id, b.sequence))
                .collect()
        });
        Some(QuorumView {
            leader_id: self.0.quorum_leader(),
            registrations,
            voters: self.0.voter_ids(),
        })
    }
}

/// Consumer groups from the group coordinators of every shard of this broker (in a cluster:
/// the groups this broker coordinates).
pub struct ShardGroups;

impl GroupsProvider for ShardGroups {
    fn list(&self, shard: &Rc<Shard>) -> LocalBoxFuture<'static, Vec<GroupView>> {
        let shard = shard.clone();
        Box::pin(async move {
            let end_offsets: std::collections::HashMap<(String, i32), i64> =
                partition_facts(&shard, None)
                    .await
                    .into_iter()
                    .map(|f| ((f.topic, f.partition), f.log_end_offset))
                    .collect();
            let per_shard = (0..shard.nr_shards).map(|target| {
                shard.invoke_on(target, |owner| async move {
                    let mut views = Vec::new();
                    for listed in owner.groups.list() {
                        let Some(description) = owner.groups.describe(&listed.group_id) else {
                            continue;
                        };
                        let committed = owner
                            .groups
                            .fetch(&listed.group_id, None, false)
                            .await
                            .unwrap_or_default();
                        let members = description
                            .members
                            .iter()
                            .map(|m| GroupMemberView {
                                member_id: m.member_id.clone(),
                                client_id: m.client_id.clone(),
                                host: m.client_host.clone(),
                                assignment: crate::groups::group::parse_assignment(&m.assignment)
                                    .into_iter()
                                    .map(|(t, p)| format!("{t}-{p}"))
                                    .collect(),
                            })
                            .collect();
                        let offsets: Vec<(String, i32, i64)> = committed
                            .into_iter()
                            .flat_map(|(topic, partitions)| {
                                partitions.into_iter().filter_map(move |(p, v)| {
                                    v.ok().flatten().map(|v| (topic.clone(), p, v.offset))
                                })
                            })
                            .collect();
                        views.push((
                            listed.group_id,
                            description.state,
                            description.protocol,
                            members,
                            offsets,
                        ));
                    }
                    views
                })
            });
            let mut out = Vec::new();
            for views in join_all(per_shard).await {
                for (group_id, state, protocol, members, offsets) in views {
                    let offsets = offsets
                        .into_iter()
                        .map(|(topic, partition, committed_offset)| {
                            let log_end_offset = end_offsets
                                .get(&(topic.clone(), partition))
                                .copied()
                                .unwrap_or(-1);
                            GroupOffsetView {
                                lag: if log_end_offset >= 0 {
                                    (log_end_offset - committed_offset).max(0)
                                } else {
                                    -1
                                },
                                topic,
                                partition,
                                committed_offset,
                                log_end_offset,
                            }
                        })
                        .collect();
                    out.push(GroupView {
                        group_id,
                        state: state.to_string(),
                        protocol,
                        members,
                        offsets,
                    });
                }
            }
            out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
            out
        })
    }

    fn delete_empty(
        &self,
        shard: &Rc<Shard>,
        group_id: String,
    ) -> LocalBoxFuture<'static, Result<(), String>> {
        let shard = shard.clone();
        Box::pin(async move {
            let owner =
                crate::groups::owner_shard(shard.groups.partition_of(&group_id), shard.nr_shards);
            let refused = shard
                .invoke_on(owner, move |owner| async move {
                    owner.groups.delete(&group_id).await
                })
                .await;
            match refused {
                None => Ok(()),
                Some(kafka_protocol::ResponseError::NonEmptyGroup) => {
                    Err("the group has members; stop its consumers first".into())
                }
                Some(code) => Err(format!("{code:?}")),
            }
        })
    }
}

/// Consumer groups. Runs on shard 0; may send jobs to the group coordinators' shards.
pub trait GroupsProvider {
    fn list(&self, shard: &Rc<Shard>) -> LocalBoxFuture<'static, Vec<GroupView>>;
    /// Deletes a group that has no members; an error message otherwise.
    fn delete_empty(
        &self,
        shard: &Rc<Shard>,
        group_id: String,
    ) -> LocalBoxFuture<'static, Result<(), String>>;
}

/// The plug-in points. Lives on shard 0 (`Rc`, not `Send`).
#[derive(Default, Clone)]
pub struct Providers {
    pub quorum: Option<Rc<dyn QuorumProvider>>,
    pub groups: Option<Rc<dyn GroupsProvider>>,
}

thread_local! {
    /// Shard 0's providers. A thread-local because the shard is built by code this module does
    /// not own; the groups and cluster modules call [`register`] on shard 0 when they start.
    static PROVIDERS: std::cell::RefCell<Providers> = std::cell::RefCell::new(Providers::default());
}

/// Installs providers on this thread (shard 0's). Call it from shard 0 at start-up.
pub fn register(update: impl FnOnce(&mut Providers)) {
    PROVIDERS.with(|p| update(&mut p.borrow_mut()));
}

pub fn providers() -> Providers {
    PROVIDERS.with(|p| p.borrow().clone())
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokerView {
    pub node_id: i32,
    pub address: String,
    pub rack: Option<String>,
    /// "online" for brokers in the metadata (registered, session alive).
    pub state: &'static str,
    pub registration_order: Option<u64>,
    pub is_controller: bool,
    pub is_quorum_leader: Option<bool>,
    /// This process only: other brokers' uptime is not known here.
    pub uptime_ms: Option<u64>,
    pub version: Option<&'static str>,
    pub is_this_node: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct OverviewView {
    pub cluster_id: String,
    pub metadata_version: u64,
    pub controller_id: i32,
    pub this_node_id: i32,
    pub shards: usize,
    pub brokers: Vec<BrokerView>,
    pub quorum: Option<QuorumView>,
    pub topics: usize,
    pub partitions: usize,
    pub under_replicated_partitions: usize,
    pub groups_available: bool,
}

/// What one owner shard knows about one of its partitions.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionFacts {
    pub topic: String,
    pub partition: i32,
    pub shard: usize,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    pub high_watermark: i64,
    pub size_bytes: u64,
    pub segments: usize,
}

pub fn overview(shard: &Rc<Shard>, uptime_ms: u64) -> OverviewView {
    let metadata = shard.metadata();
    let quorum = providers().quorum.and_then(|q| q.quorum(shard));
    let brokers = metadata
        .brokers
        .iter()
        .map(|b| {
            let this = b.node_id == shard.broker.node_id;
            BrokerView {
                node_id: b.node_id,
                address: format!("{}:{}", b.host, b.port),
                rack: b.rack.clone(),
                state: "online",
                registration_order: quorum.as_ref().and_then(|q| {
                    q.registrations
                        .iter()
                        .find(|(id, _)| *id == b.node_id)
                        .map(|(_, seq)| *seq)
                }),
                is_controller: b.node_id == metadata.controller_id,
                is_quorum_leader: quorum.as_ref().map(|q| q.leader_id == Some(b.node_id)),
                uptime_ms: this.then_some(uptime_ms),
                version: this.then_some(env!("CARGO_PKG_VERSION")),
                is_this_node: this,
            }
        })
        .collect();
    OverviewView {
        cluster_id: metadata.cluster_id.clone(),
        metadata_version: metadata.version,
        controller_id: metadata.controller_id,
        this_node_id: shard.broker.node_id,
        shards: shard.nr_shards,
        brokers,
        quorum,
        topics: metadata.topics.len(),
        partitions: metadata.partition_count(),
        under_replicated_partitions: under_replicated(&metadata),
        groups_available: providers().groups.is_some(),
    }
}

/// Partitions with fewer in-sync replicas than replicas.
pub fn under_replicated(metadata: &ClusterMetadata) -> usize {
    metadata
        .topics
        .values()
        .flat_map(|t| t.partitions.iter())
        .filter(|p| p.isr.len() < p.replicas.len())
        .count()
}

/// Offsets and sizes of every partition this node hosts (optionally of one topic), from every
/// shard. One job per shard; each reads counters its logs keep, so it is cheap.
pub async fn partition_facts(shard: &Rc<Shard>, topic: Option<String>) -> Vec<PartitionFacts> {
    let jobs = (0..shard.nr_shards).map(|target| {
        let topic = topic.clone();
        shard.invoke_on(target, move |owner| async move {
            owner
                .owned_partitions()
                .iter()
                .filter(|p| topic.as_ref().is_none_or(|t| *t == p.topic))
                .map(|p| PartitionFacts {
                    topic: p.topic.clone(),
                    partition: p.index,
                    shard: owner.id,
                    log_start_offset: p.log.log_start_offset(),
                    log_end_offset: p.log.log_end_offset(),
                    high_watermark: p.log.high_watermark(),
                    size_bytes: p.log.size_bytes(),
                    segments: p.log.segment_count(),
                })
                .collect::<Vec<_>>()
        })
    });
    join_all(jobs).await.into_iter().flatten().collect()
}

/// The newest records of a partition, as the owner shard's log holds them: the bytes from
/// `max(log start, high watermark - count)` on, at most `max_bytes`. File bytes stay a file
/// range: the HTTP thread reads them, so no shard blocks on the device.
pub struct NewestRecords {
    pub records: Option<Records>,
    pub from_offset: i64,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

pub async fn newest_records(
    shard: &Rc<Shard>,
    topic: String,
    partition: i32,
    count: i64,
    max_bytes: usize,
) -> Result<NewestRecords, String> {
    let owner = shard.owner_of(&topic, partition);
    shard
        .invoke_on(owner, move |owner| async move {
            let p = owner
                .partition(&topic, partition)
                .ok_or_else(|| format!("partition {topic}-{partition} is not hosted here"))?;
            let high_watermark = p.log.high_watermark();
            let log_start_offset = p.log.log_start_offset();
            let from_offset = (high_watermark - count).max(log_start_offset);
            let records = if from_offset >= high_watermark {
                None
            } else {
                p.log
                    .read(from_offset, max_bytes, true, ReadLimit::HighWatermark)
                    .map_err(|e| e.to_string())?
            };
            Ok(NewestRecords {
                records,
                from_offset,
                high_watermark,
                log_start_offset,
            })
        })
        .await
}
