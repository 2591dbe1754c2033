//! Per-core state and the cross-core message path.
//!
//! A [`Shard`] is everything one glommio executor owns: the partitions placed on it by
//! [`router::owner_shard`], its copy of the cluster metadata snapshot, and its end of the shard
//! mesh. Other cores never touch a shard's partitions; they send it a job with
//! [`Shard::invoke_on`] and await the reply. That is the only way work crosses cores, and it is
//! why nothing on the produce/fetch path needs a lock.

pub mod cpu_time;
pub mod log_cleaner;
pub mod partition;
pub mod producer_state;
pub mod router;
pub mod stall;
pub mod stall_stack;
pub mod wake_floor;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::channel::oneshot;
use futures::future::join_all;
use futures::StreamExt;
use glommio::channels::channel_mesh::{Receivers, Senders};

use crate::config::BrokerConfig;
use crate::coordination::{BrokerInfo, ClusterMetadata, Coordinator, TopicMetadata};
use crate::groups::GroupCoordinator;
use crate::handlers::fetch_session::{self, FetchSessionCache};
use crate::metrics::BrokerStats;
use crate::storage::direct_read::DirectReadBudget;
use crate::storage::{LogConfig, PartitionLog};
use partition::{Partition, RoleChange};

/// Partition logs a shard opens at once (`apply_metadata`).
const OPENS_IN_FLIGHT: usize = 32;

/// Bounds of one partition's share of its shard's `log.tail.cache.bytes` (the shard's
/// budget, which holds whatever the shares, is the memory bound). The top is what a busy
/// partition needs to ride out a hiccup: a partition taking 100 MB/s (W3 at half of W1 has 8
/// of them) appends 13 MB during a 130 ms device stall, and a consumer that falls out of the
/// cache reads from the segment file, synchronously on the shard (O_DIRECT writes leave
/// nothing in the page cache), which stalls every other partition of the shard and feeds the
/// lag. At 8 MiB (80 ms at that rate) W3 peaked at 89-238 ms in three runs; at 32 MiB, 16-70 ms
/// (docs/benchmarks.md, "The tail cache's window").
const TAIL_CACHE_PARTITION_MIN_BYTES: u64 = 256 << 10;
const TAIL_CACHE_PARTITION_MAX_BYTES: u64 = 32 << 20;

/// Work sent to another shard: runs there, on that shard's thread.
pub type Job = Box<dyn FnOnce(&Rc<Shard>) + Send>;

/// Everything one core owns. `!Send`: lives and dies on its executor's thread.
pub struct Shard {
    pub id: usize,
    pub nr_shards: usize,
    pub config: Arc<BrokerConfig>,
    /// This broker as clients see it (advertised host and port).
    pub broker: BrokerInfo,
    pub stats: Arc<BrokerStats>,
    mesh: Option<Senders<Job>>,
    metadata: RefCell<Arc<ClusterMetadata>>,
    /// The newest snapshot this shard started applying: dynamic broker configs are read from
    /// it, so they hold while the partitions are brought in line with it (`metadata` swaps
    /// only once they are).
    applying: RefCell<Arc<ClusterMetadata>>,
    /// Partitions this shard owns, by topic then partition index.
    partitions: RefCell<HashMap<String, HashMap<i32, Rc<Partition>>>>,
    /// Present on shard 0 only.
    pub coordinator: Option<Rc<Coordinator>>,
    /// The consumer groups placed on this shard (`groups::owner_shard`).
    pub groups: Rc<GroupCoordinator>,
    /// Serialises metadata application so snapshots are applied in version order.
    apply_lock: glommio::sync::Semaphore,
    /// Leader brokers this shard runs a follower fetcher for (`replication::follower`).
    pub fetchers: RefCell<HashSet<i32>>,
    /// The incremental fetch sessions whose ids fall in this shard's range
    /// (`handlers::fetch_session`); created for connections of this shard.
    pub fetch_sessions: RefCell<FetchSessionCache>,
    /// What this shard's fetches may hold of cold segment bytes read into memory
    /// (`storage::direct_read`).
    pub direct_reads: Arc<DirectReadBudget>,
    shutdown: Arc<AtomicBool>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        nr_shards: usize,
        config: Arc<BrokerConfig>,
        broker: BrokerInfo,
        stats: Arc<BrokerStats>,
        mesh: Option<Senders<Job>>,
        coordinator: Option<Rc<Coordinator>>,
        shutdown: Arc<AtomicBool>,
    ) -> Rc<Shard> {
        assert!(id < nr_shards);
        assert_eq!(
            coordinator.is_some(),
            id == 0,
            "the coordinator lives on shard 0"
        );
        let groups = Rc::new(GroupCoordinator::new(
            id,
            nr_shards,
            config.data_dir.clone(),
            &config.log,
            config.groups.clone(),
            config.is_clustered(),
        ));
        let fetch_sessions = FetchSessionCache::new(
            id,
            nr_shards,
            fetch_session::slots_for_shard(config.fetch_session_cache_slots, id, nr_shards),
            config.max_partitions,
            fetch_session::EVICTION_IDLE,
        );
        let direct_reads = DirectReadBudget::new(config.fetch_cold_read_buffer_bytes);
        Rc::new(Shard {
            id,
            nr_shards,
            groups,
            direct_reads,
            config,
            broker,
            stats,
            mesh,
            metadata: RefCell::new(Arc::new(ClusterMetadata::empty())),
            applying: RefCell::new(Arc::new(ClusterMetadata::empty())),
            partitions: RefCell::new(HashMap::new()),
            coordinator,
            apply_lock: glommio::sync::Semaphore::new(1),
            fetchers: RefCell::new(HashSet::new()),
            fetch_sessions: RefCell::new(fetch_sessions),
            shutdown,
        })
    }

    /// Starts the tasks that run jobs sent by the other shards.
    pub fn serve_mesh(self: &Rc<Self>, mut receivers: Receivers<Job>) {
        for (_peer, receiver) in receivers.streams() {
            let shard = self.clone();
            let received = &crate::metrics::shard_cells(self.id).mesh_jobs;
            glommio::spawn_local(async move {
                while let Some(job) = receiver.recv().await {
                    received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    job(&shard);
                }
            })
            .detach();
        }
    }

    /// Runs `f` on shard `target` and returns its result. Local calls run inline.
    pub async fn invoke_on<R, F, Fut>(self: &Rc<Self>, target: usize, f: F) -> R
    where
        R: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        if target == self.id {
            return f(self.clone()).await;
        }
        let reply = self.submit_on(target, f).await;
        reply
            .await
            .unwrap_or_else(|_| panic!("shard {target} dropped a reply"))
    }

    /// Sends `f` to run on another shard and returns as soon as it is queued; the receiver
    /// yields the result. Jobs from one shard to another start in the order they were sent
    /// (the mesh channel is FIFO and glommio runs spawned tasks in order), which keeps the
    /// produce requests of one connection in order on a partition's shard.
    pub async fn submit_on<R, F, Fut>(self: &Rc<Self>, target: usize, f: F) -> oneshot::Receiver<R>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        assert_ne!(target, self.id, "submit_on is for other shards");
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |shard: &Rc<Shard>| {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let _ = tx.send(f(shard).await);
            })
            .detach();
        });
        let mesh = self.mesh.as_ref().expect("a multi-shard broker has a mesh");
        if mesh.send_to(target, job).await.is_err() {
            // Only at shutdown; the dropped sender makes the receiver report it.
            tracing::warn!(target, "shard mesh closed");
        }
        rx
    }

    pub fn metadata(&self) -> Arc<ClusterMetadata> {
        self.metadata.borrow().clone()
    }

    pub fn owner_of(&self, topic: &str, partition: i32) -> usize {
        router::owner_shard(topic, partition, self.nr_shards)
    }

    /// A partition this shard owns.
    pub fn partition(&self, topic: &str, index: i32) -> Option<Rc<Partition>> {
        self.partitions
            .borrow()
            .get(topic)
            .and_then(|ps| ps.get(&index))
            .cloned()
    }

    pub fn owned_partitions(&self) -> Vec<Rc<Partition>> {
        self.partitions
            .borrow()
            .values()
            .flat_map(|ps| ps.values().cloned())
            .collect()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// A dynamic broker config of this broker (its own value, else the cluster default) from
    /// the newest metadata snapshot (`applying`), parsed; `None` when none is set or it does
    /// not parse.
    pub fn dynamic_config<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.applying
            .borrow()
            .dynamic_broker_config(self.broker.node_id, key)
            .and_then(|v| v.parse().ok())
    }

    /// The broker's `message.max.bytes`: dynamic if set, else static. A dynamic value is never
    /// above the static one (refused when altered): logs read their batches with that bound.
    pub fn message_max_bytes(&self) -> usize {
        self.dynamic_config::<usize>("message.max.bytes")
            .map_or(self.config.message_max_bytes, |v| {
                v.min(self.config.message_max_bytes)
            })
    }

    /// The log settings of a topic: broker defaults overridden by the topic's configs.
    ///
    /// The tail cache cap is the shard's `log.tail.cache.bytes` split over the
    /// `partitions_on_shard` it owns, clamped to [256 KiB, 8 MiB]; the shard's caches together
    /// never exceed the budget (`storage::tail_cache`'s per-shard accounting evicts the least
    /// recently used).
    pub fn log_config_for(&self, topic: &TopicMetadata, partitions_on_shard: usize) -> LogConfig {
        if topic.name == crate::groups::OFFSETS_TOPIC {
            return crate::groups::offsets_log::offsets_log_config(&self.config.log);
        }
        if topic.name == crate::transactions::TRANSACTION_STATE_TOPIC {
            return crate::transactions::state_log::state_log_config(
                &self.config.log,
                self.config.transaction_state.segment_bytes,
            );
        }
        let mut log = self.config.log.clone();
        // Client topics' acks=1 appends are answered once in the shard's journal (if it has
        // one); the internal logs above wait for fdatasync anyway.
        log.journal = true;
        log.cold_reads_in_memory = self.config.fetch_cold_read_buffer_bytes > 0;
        if let Some(v) = self.dynamic_config::<i64>("log.retention.ms") {
            log.retention_ms = v;
        }
        if let Some(v) = self.dynamic_config::<i64>("log.retention.bytes") {
            log.retention_bytes = v;
        }
        if let Some(v) = self.dynamic_config::<u64>("log.segment.bytes") {
            log.segment_bytes = v;
        }
        let budget = self.config.tail_cache_bytes_per_shard;
        log.tail_cache_bytes = if budget == 0 {
            0
        } else {
            let partitions = partitions_on_shard.max(1) as u64;
            (budget / partitions).clamp(
                TAIL_CACHE_PARTITION_MIN_BYTES,
                TAIL_CACHE_PARTITION_MAX_BYTES,
            ) as usize
        };
        for (key, value) in &topic.configs {
            let parsed = value.parse::<i64>().ok();
            match (key.as_str(), parsed) {
                ("retention.ms", Some(v)) => log.retention_ms = v,
                ("retention.bytes", Some(v)) => log.retention_bytes = v,
                ("segment.bytes", Some(v)) if v > 0 => log.segment_bytes = v as u64,
                ("segment.ms", Some(v)) if v > 0 => log.segment_ms = v,
                // The log's bound is for lengths read from disk: never below the broker's, so
                // a max.message.bytes lowered at run time does not make the batches written
                // before it unreadable (recovery would cut them as torn).
                ("max.message.bytes", Some(v)) if v > 0 => {
                    log.max_batch_bytes = log.max_batch_bytes.max(v as usize)
                }
                _ => {}
            }
        }
        log
    }

    /// (`retention.ms`, `retention.bytes`) of a topic: its own settings, else the broker's.
    pub fn retention_for(&self, topic: &TopicMetadata) -> (i64, i64) {
        let get = |key: &str, default: i64| {
            topic
                .configs
                .get(key)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let broker_retention_ms = self
            .dynamic_config("log.retention.ms")
            .unwrap_or(self.config.log.retention_ms);
        let broker_retention_bytes = self
            .dynamic_config("log.retention.bytes")
            .unwrap_or(self.config.log.retention_bytes);
        (
            get("retention.ms", broker_retention_ms),
            get("retention.bytes", broker_retention_bytes),
        )
    }

    /// `min.insync.replicas` of a topic: its own setting, else the broker's.
    pub fn min_insync_replicas_for(&self, topic: &TopicMetadata) -> usize {
        topic
            .configs
            .get("min.insync.replicas")
            .and_then(|v| v.parse::<usize>().ok())
            .or_else(|| self.dynamic_config::<usize>("min.insync.replicas"))
            .unwrap_or(self.config.min_insync_replicas.max(1) as usize)
            .max(1)
    }

    /// Largest batch a topic accepts.
    pub fn max_batch_bytes_for(&self, topic: &TopicMetadata) -> usize {
        topic
            .configs
            .get("max.message.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| self.message_max_bytes())
    }

    /// Makes this shard match a metadata snapshot: opens the logs of partitions it now holds a
    /// replica of, sets each one's role (leader, or follower with its fetcher running), closes
    /// those it no longer holds and deletes those of removed topics. Snapshots older than the
    /// current one are ignored.
    pub async fn apply_metadata(self: &Rc<Self>, snapshot: Arc<ClusterMetadata>) {
        let _permit = self
            .apply_lock
            .acquire_permit(1)
            .await
            .expect("apply lock never closes");
        if snapshot.version <= self.metadata.borrow().version {
            return;
        }
        *self.applying.borrow_mut() = snapshot.clone();
        let this_node = self.broker.node_id;
        let now = now_ms();
        let mut wanted: Vec<(Arc<TopicMetadata>, i32)> = Vec::new();
        // The offsets topic is in the metadata only in a cluster, where it is replicated like
        // any topic; its leader's group coordinator adopts the partition (`adopt_offsets`).
        for topic in snapshot.topics.values() {
            for (index, p) in topic.partitions.iter().enumerate() {
                let index = index as i32;
                if p.replicas.contains(&this_node) && self.owner_of(&topic.name, index) == self.id {
                    wanted.push((topic.clone(), index));
                }
            }
        }
        let mut removed = Vec::new();
        let mut dropped = Vec::new();
        let mut kept = Vec::new();
        {
            let mut owned = self.partitions.borrow_mut();
            for (name, partitions) in owned.iter_mut() {
                partitions.retain(|index, partition| {
                    let topic = snapshot.topic(name).filter(|t| {
                        t.id == partition.topic_id && (*index as usize) < t.partitions.len()
                    });
                    match topic {
                        None => removed.push(partition.clone()),
                        // No replica here any more (a reassignment moved it away): stop
                        // serving and delete the files, as Kafka's StopReplica(delete) does.
                        Some(t) if !t.partitions[*index as usize].replicas.contains(&this_node) => {
                            dropped.push(partition.clone())
                        }
                        Some(t) => {
                            kept.push((t.clone(), partition.clone()));
                            return true;
                        }
                    }
                    false
                });
            }
            owned.retain(|_, partitions| !partitions.is_empty());
        }
        for (topic, partition) in kept {
            // A leader change writes the partition's epoch checkpoint: thousands of them must
            // not hold the shard.
            glommio::yield_if_needed().await;
            let state = &topic.partitions[partition.index as usize];
            // A changed segment.bytes (topic or dynamic broker config) or a raised
            // max.message.bytes applies to the running log at once.
            let limits = self.log_config_for(&topic, 1);
            partition
                .log
                .set_limits(limits.segment_bytes, limits.max_batch_bytes);
            let change = partition.apply_state(state, self.min_insync_replicas_for(&topic), now);
            if let RoleChange::BecameFollower { leader } = change {
                crate::replication::follower::ensure_fetcher(self, leader);
            }
            self.adopt_offsets(&partition, change);
        }
        for partition in removed.iter().chain(&dropped) {
            if partition.topic == crate::groups::OFFSETS_TOPIC {
                self.groups.release_partition(partition.index);
            }
            if partition.topic == crate::transactions::TRANSACTION_STATE_TOPIC {
                crate::transactions::replicated::release(
                    self,
                    partition.index,
                    partition.leader_epoch.get(),
                );
            }
        }
        for partition in dropped {
            tracing::info!(topic = %partition.topic, partition = partition.index, "no longer a replica; deleting the partition's log");
            partition.stop_replicating();
            if let Err(e) = partition.log.delete().await {
                tracing::error!(topic = %partition.topic, error = %e, "deleting a moved replica's log failed");
            }
        }
        for partition in removed {
            tracing::info!(topic = %partition.topic, partition = partition.index, "deleting partition");
            if let Err(e) = partition.log.delete().await {
                tracing::error!(topic = %partition.topic, error = %e, "deleting partition log failed");
            }
        }
        // Every partition this shard will own: the tail cache budget's split.
        let on_shard = wanted.len();
        let opens = wanted.into_iter().filter_map(|(topic, index)| {
            if self.partition(&topic.name, index).is_some() {
                return None;
            }
            let dir = self
                .config
                .data_dir
                .join(format!("{}-{}", topic.name, index));
            let log_config = self.log_config_for(&topic, on_shard);
            Some(async move {
                // Opening an empty log is a few system calls and no await: let the rest of the
                // shard (Raft ticks, heartbeats, clients) run between them.
                glommio::yield_if_needed().await;
                let opened = PartitionLog::open(dir.clone(), log_config).await;
                (topic, index, dir, opened)
            })
        });
        // A bounded number at a time: each holds descriptors (and a scan's buffers) while it
        // recovers, and a restart opens every partition at once.
        let mut opened = futures::stream::iter(opens).buffer_unordered(OPENS_IN_FLIGHT);
        while let Some((topic, index, dir, opened)) = opened.next().await {
            match opened {
                Ok(log) => {
                    let state = &topic.partitions[index as usize];
                    let partition = Partition::new(
                        topic.name.clone(),
                        index,
                        topic.id,
                        log,
                        this_node,
                        state,
                        self.min_insync_replicas_for(&topic),
                        now,
                    );
                    let follows = partition.following();
                    let partition = Rc::new(partition);
                    self.partitions
                        .borrow_mut()
                        .entry(topic.name.clone())
                        .or_default()
                        .insert(index, partition.clone());
                    match follows {
                        Some(leader) => crate::replication::follower::ensure_fetcher(self, leader),
                        None => self.adopt_offsets(&partition, RoleChange::BecameLeader),
                    }
                }
                // The partition stays unavailable (clients see NOT_LEADER/UNKNOWN) rather than
                // taking the broker down with it.
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot open partition log")
                }
            }
        }
        *self.metadata.borrow_mut() = snapshot;
    }

    /// Hands an offsets partition to this shard's group coordinator (a transaction state
    /// partition to the transaction coordinator) when this broker starts leading it, and takes
    /// it back when it stops.
    fn adopt_offsets(self: &Rc<Self>, partition: &Rc<Partition>, change: RoleChange) {
        if partition.topic == crate::transactions::TRANSACTION_STATE_TOPIC {
            crate::transactions::replicated::on_role_change(self, partition, &change);
            return;
        }
        if partition.topic != crate::groups::OFFSETS_TOPIC {
            return;
        }
        match change {
            RoleChange::BecameLeader => self
                .groups
                .adopt_partition(partition.index, partition.clone()),
            RoleChange::BecameFollower { .. } => self.groups.release_partition(partition.index),
            RoleChange::None => {}
        }
    }

    /// Pushes the coordinator's current snapshot to every shard and waits until all have
    /// applied it. Runs on shard 0 after each metadata change.
    pub async fn publish_metadata(self: &Rc<Self>) {
        let coordinator = self
            .coordinator
            .as_ref()
            .expect("publish runs on the coordinator shard");
        let snapshot = coordinator.snapshot();
        let previous = self.metadata();
        let applies = (0..self.nr_shards).map(|target| {
            let snapshot = snapshot.clone();
            self.invoke_on(target, move |shard| async move {
                shard.apply_metadata(snapshot).await
            })
        });
        join_all(applies).await;
        if snapshot.version > previous.version {
            count_isr_changes(&previous, &snapshot, self.broker.node_id);
        }
        if snapshot.version > previous.version && snapshot.deleted_topics != previous.deleted_topics
        {
            self.remove_stray_partition_dirs(&snapshot);
        }
    }

    /// Removes partition directories of deleted topics that this broker still holds (it was
    /// down, or not a leader, when the topic was deleted). Runs after every shard applied the
    /// snapshot, so no shard has them open. A name that exists again (re-created) is left
    /// alone: its directories may be the new topic's.
    fn remove_stray_partition_dirs(&self, snapshot: &ClusterMetadata) {
        let Ok(entries) = std::fs::read_dir(&self.config.data_dir) else {
            return;
        };
        let deleted: std::collections::HashSet<&str> = snapshot
            .deleted_topics
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| snapshot.topic(name).is_none())
            .collect();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(dir_name) = file_name.to_str() else {
                continue;
            };
            let Some((topic, index)) = dir_name.rsplit_once('-') else {
                continue;
            };
            if deleted.contains(topic) && index.parse::<u32>().is_ok() {
                let (path, dir_name) = (entry.path(), dir_name.to_string());
                glommio::spawn_local(async move {
                    match crate::storage::reaper::remove_dir_later(path).await {
                        Ok(()) => {
                            tracing::info!(dir = %dir_name, "removing the files of a deleted topic")
                        }
                        Err(e) => {
                            tracing::warn!(dir = %dir_name, error = %e, "cannot remove a deleted topic's files")
                        }
                    }
                })
                .detach();
            }
        }
    }

    /// Periodic work: retention, releasing idle partitions, the stats log line (shard 0), and
    /// noticing shutdown.
    pub async fn housekeeping(self: Rc<Self>) {
        const STATS_EVERY: Duration = Duration::from_secs(60);
        let tick = Duration::from_millis(100);
        let retention_every =
            Duration::from_millis(self.config.retention_check_interval_ms.max(100));
        let idle = Duration::from_millis(self.config.idle_release_ms);
        // Often enough that a partition is released within a quarter of the idle time after it.
        let idle_every = (idle / 4).clamp(tick, Duration::from_secs(10));
        let mut since_retention = Duration::ZERO;
        let mut since_idle = Duration::ZERO;
        let mut since_stats = Duration::ZERO;
        let mut last_summary = String::new();
        while !self.is_shutting_down() {
            glommio::timer::sleep(tick).await;
            since_retention += tick;
            since_idle += tick;
            since_stats += tick;
            if since_retention >= retention_every {
                since_retention = Duration::ZERO;
                // Whatever rolled is covered by this pass.
                crate::storage::log::take_rolls_on_this_shard();
                self.enforce_retention(false).await;
            } else if crate::storage::log::take_rolls_on_this_shard() {
                self.enforce_retention(true).await;
            }
            if !idle.is_zero() && since_idle >= idle_every {
                since_idle = Duration::ZERO;
                self.release_idle_partitions(idle).await;
            }
            if self.id == 0 && since_stats >= STATS_EVERY {
                since_stats = Duration::ZERO;
                let summary = self.stats.summary();
                if summary != last_summary {
                    tracing::info!(stats = %summary, "broker stats");
                    last_summary = summary;
                }
            }
        }
    }

    /// Partitions not appended to or read for `idle` give back their tail cache, descriptors
    /// and tail page (`PartitionLog::release_if_idle`).
    async fn release_idle_partitions(&self, idle: Duration) {
        let now = std::time::Instant::now();
        let mut released = 0usize;
        for partition in self.owned_partitions() {
            if partition.log.release_if_idle(now, idle) {
                released += 1;
            }
            glommio::yield_if_needed().await;
        }
        if released > 0 {
            tracing::debug!(shard = self.id, released, "released idle partitions");
            // The caches' buffers and the cold reads' kept buffers go back to malloc, which
            // keeps them: hand the free pages to the kernel, or the released memory still
            // counts in the process's RSS.
            self.direct_reads.release_free();
            // SAFETY: malloc_trim only returns free heap pages to the kernel.
            unsafe { libc::malloc_trim(0) };
        }
    }

    /// Runs retention on every partition, or with `only_rolled` on those that rolled since
    /// their last run (between periodic passes: `storage::log::take_rolls_on_this_shard`).
    async fn enforce_retention(&self, only_rolled: bool) {
        let now = now_ms();
        let snapshot = self.metadata();
        for partition in self.owned_partitions() {
            if !partition.log.take_rolled() && only_rolled {
                continue;
            }
            // The topic's current limits: an AlterConfigs since the log opened counts.
            let topic = snapshot.topic(&partition.topic).filter(|t| {
                partition.topic != crate::groups::OFFSETS_TOPIC && t.id == partition.topic_id
            });
            // `cleanup.policy=compact` alone: the cleaner bounds the log, retention does not.
            // Files DeleteRecords gave up still go once no roll took them.
            if topic.is_some_and(|t| !log_cleaner::cleanup_policy(&t.configs).1) {
                partition
                    .log
                    .release_unused_recycled(std::time::Instant::now());
                continue;
            }
            let limits = topic.map(|t| self.retention_for(t));
            let deleted = match limits {
                Some((ms, bytes)) => partition.log.enforce_retention_with(now, ms, bytes).await,
                None => partition.log.enforce_retention(now).await,
            };
            match deleted {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(
                    topic = %partition.topic,
                    partition = partition.index,
                    deleted,
                    "retention deleted segments"
                ),
                Err(e) => tracing::error!(topic = %partition.topic, error = %e, "retention failed"),
            }
        }
    }

    /// Flushes and closes every partition log, each leaving its clean-close record.
    pub async fn close_partitions(&self) {
        for partition in self.owned_partitions() {
            let closed = partition.log.close_clean().await;
            if let Err(e) = closed {
                tracing::error!(topic = %partition.topic, error = %e, "closing partition log failed");
            }
        }
    }
}

/// Counts, for partitions this node leads, ISR shrinks and expands between two snapshots.
fn count_isr_changes(previous: &ClusterMetadata, next: &ClusterMetadata, this_node: i32) {
    use std::sync::atomic::Ordering::Relaxed;
    for (name, topic) in &next.topics {
        let Some(before) = previous.topic(name).filter(|t| t.id == topic.id) else {
            continue;
        };
        for (now, was) in topic.partitions.iter().zip(&before.partitions) {
            if now.leader != this_node {
                continue;
            }
            if now.isr.len() < was.isr.len() {
                crate::metrics::DETAIL.isr_shrinks.fetch_add(1, Relaxed);
            } else if now.isr.len() > was.isr.len() {
                crate::metrics::DETAIL.isr_expands.fetch_add(1, Relaxed);
            }
        }
    }
}
