//! The coordination shard: a [`QuorumNode`] driven on shard 0's executor, with its Raft log in
//! files, TCP links to the other voters, and this broker's own session (registration plus
//! heartbeats). It runs in its own glommio task queue with latency priority, so a busy data
//! path does not delay Raft ticks into spurious elections.
//!
//! Owned by shard 0 (`!Send`); other shards reach it through `Shard::invoke_on(0, ...)`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, StreamExt};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{Latency, Shares, TaskQueueHandle};
use kafka_protocol::ResponseError;

use super::frames::{decode_frame, encode_frame, frame_len, FRAME_HEADER_BYTES};
use super::metadata::{BrokerInfo, ClusterMetadata, PartitionMetadata, TopicMetadata};
use super::quorum::{
    decode_peer_message, encode_peer_message, Output, PeerMessage, QuorumConfig, QuorumNode,
};
use super::raft_store::DiskLog;
use super::state_machine::{ClusterState, Command, Outcome};
use crate::protocol::ApiError;

/// Largest peer frame accepted (Raft snapshots of large clusters are a few MiB).
const MAX_PEER_FRAME_BYTES: usize = 64 << 20;

/// A proposal without an outcome this long is proposed again (the quorum leader may have lost
/// it without this node noticing a change): about two election timeouts.
const REPROPOSE_AFTER: Duration = Duration::from_secs(2);

/// How often a waiting proposer checks whether the quorum leader changed.
const LEADER_CHANGE_POLL: Duration = Duration::from_millis(50);

/// How soon a proposal is tried again while no quorum leader is known.
const NO_LEADER_RETRY: Duration = Duration::from_millis(20);
/// Messages queued to one unreachable peer before new ones are dropped (Raft retransmits).
const PEER_QUEUE_MESSAGES: usize = 4096;

/// One voter of the quorum: `controller.quorum.voters` entry `id@host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    pub node_id: i32,
    pub address: String,
}

/// What the coordination shard needs from the broker's configuration.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub node_id: i32,
    /// Empty: a quorum of one, this node, embedded, no network.
    pub voters: Vec<Voter>,
    /// Where this node accepts other voters' connections (its own voters entry by default).
    pub controller_listen: Option<SocketAddr>,
    pub heartbeat_interval_ms: u64,
    pub session_timeout_ms: u64,
    pub data_dir: std::path::PathBuf,
}

/// The coordination shard's state. Lives on shard 0.
pub struct Coordinator {
    node: RefCell<QuorumNode>,
    config: CoordinatorConfig,
    broker: BrokerInfo,
    clock: Instant,
    queue: TaskQueueHandle,
    /// Proposals of this node awaiting their outcome.
    waiters: RefCell<HashMap<u64, oneshot::Sender<Outcome>>>,
    /// Outbound links to the other voters.
    peers: RefCell<HashMap<i32, mpsc::Sender<Vec<u8>>>>,
    /// Producer ids of the block this broker hands out: [next, end).
    producer_ids: Cell<(i64, i64)>,
    /// Bumped on every state or leader change; the metadata snapshot's version.
    published_version: Cell<u64>,
    /// Wakes the publisher when the state changed.
    changed_tx: RefCell<Option<mpsc::UnboundedSender<()>>>,
    /// Set once this broker's registration committed (and cleared when it is fenced).
    was_registered: Cell<bool>,
    /// Time the broker started, for the console's uptime.
    started: std::time::SystemTime,
    /// Set on a clean shutdown: no re-registration, no more publications.
    stopping: Cell<bool>,
}

impl Coordinator {
    /// Opens the Raft log under `<data-dir>/coordination/raft` and starts the voter.
    pub fn open(config: CoordinatorConfig, broker: BrokerInfo) -> std::io::Result<Rc<Coordinator>> {
        let coordination_dir = config.data_dir.join("coordination");
        let (mut disk, recovered) = DiskLog::open(&coordination_dir.join("raft"))?;
        let voter_ids: Vec<i32> = if config.voters.is_empty() {
            vec![config.node_id]
        } else {
            config.voters.iter().map(|v| v.node_id).collect()
        };
        let raft_voters: Vec<u64> = voter_ids
            .iter()
            .map(|&v| super::quorum::raft_id(v))
            .collect();
        let (recovered, imported) =
            super::legacy_import::import_if_needed(&coordination_dir, recovered, &raft_voters)?;
        if imported {
            use super::raft_store::DurableLog as _;
            let snapshot = recovered
                .snapshot
                .as_ref()
                .expect("an import is a snapshot");
            disk.save_snapshot(snapshot, &[])?;
            disk.set_hard_state(&recovered.hard_state)?;
            std::fs::rename(
                coordination_dir.join("metadata.log"),
                coordination_dir.join("metadata.log.imported"),
            )?;
        }
        let incarnation = random_u64();
        let clock = Instant::now();
        let quorum = QuorumConfig::new(config.node_id, voter_ids, config.session_timeout_ms);
        let node = QuorumNode::open(
            quorum,
            incarnation,
            random_u64(),
            recovered,
            Box::new(disk),
            0,
        )?;
        let queue = glommio::executor().create_task_queue(
            Shares::Static(1000),
            Latency::Matters(Duration::from_millis(5)),
            "coordination",
        );
        crate::shard::stall::name_queue(queue, "coordination");
        tracing::info!(
            node_id = config.node_id,
            voters = ?config.voters.iter().map(|v| format!("{}@{}", v.node_id, v.address)).collect::<Vec<_>>(),
            applied_index = node.applied_index(),
            topics = node.state().topics.len(),
            "coordination state loaded"
        );
        Ok(Rc::new(Coordinator {
            node: RefCell::new(node),
            config,
            broker,
            clock,
            queue,
            waiters: RefCell::new(HashMap::new()),
            peers: RefCell::new(HashMap::new()),
            producer_ids: Cell::new((0, 0)),
            published_version: Cell::new(1),
            changed_tx: RefCell::new(None),
            was_registered: Cell::new(false),
            started: std::time::SystemTime::now(),
            stopping: Cell::new(false),
        }))
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Starts the tick loop, the peer links and listener, and this broker's session. `changed`
    /// receives a unit whenever metadata should be republished.
    pub fn start(self: &Rc<Self>) -> std::io::Result<mpsc::UnboundedReceiver<()>> {
        let (tx, rx) = mpsc::unbounded();
        *self.changed_tx.borrow_mut() = Some(tx);
        let spawn = |f: futures::future::LocalBoxFuture<'static, ()>| {
            glommio::spawn_local_into(f, self.queue)
                .expect("the coordination queue exists")
                .detach();
        };
        let me = Rc::downgrade(self);
        spawn(tick_loop(me.clone()).boxed_local());
        if !self.config.voters.is_empty() {
            let listen = match self.config.controller_listen {
                Some(addr) => addr,
                None => {
                    let own = self
                        .config
                        .voters
                        .iter()
                        .find(|v| v.node_id == self.config.node_id)
                        .expect("config validation: this node is a voter");
                    crate::config::resolve(&own.address)
                        .map_err(|e| std::io::Error::other(e.to_string()))?
                }
            };
            let listener = TcpListener::bind(listen).map_err(|e| {
                std::io::Error::other(format!("cannot listen for voters on {listen}: {e}"))
            })?;
            tracing::info!(%listen, "coordination listener up");
            spawn(accept_loop(me.clone(), listener).boxed_local());
            for voter in &self.config.voters {
                if voter.node_id == self.config.node_id {
                    continue;
                }
                let (tx, rx) = mpsc::channel(PEER_QUEUE_MESSAGES);
                self.peers.borrow_mut().insert(voter.node_id, tx);
                spawn(peer_link(me.clone(), voter.clone(), rx).boxed_local());
            }
        }
        spawn(heartbeat_loop(me.clone()).boxed_local());
        spawn(session_loop(me).boxed_local());
        Ok(rx)
    }

    /// Sends what the quorum node produced: messages, outcomes, change notices.
    fn flush(&self) {
        let Output {
            messages,
            applied,
            changed,
        } = self.node.borrow_mut().take_output();
        for (to, message) in messages {
            self.send_to(to, &message);
        }
        for applied in applied {
            if let Some(waiter) = self.waiters.borrow_mut().remove(&applied.proposal) {
                let _ = waiter.send(applied.outcome);
            }
        }
        if changed {
            let registered = self.is_registered();
            if self.was_registered.replace(registered) && !registered && !self.stopping.get() {
                tracing::warn!("this broker's session was ended by the quorum; registering again");
            }
            self.published_version.set(self.published_version.get() + 1);
            if let Some(tx) = self.changed_tx.borrow().as_ref() {
                let _ = tx.unbounded_send(());
            }
        }
    }

    fn send_to(&self, to: i32, message: &PeerMessage) {
        let mut frame = Vec::new();
        encode_frame(&encode_peer_message(message), &mut frame);
        if let Some(link) = self.peers.borrow_mut().get_mut(&to) {
            // A full queue means the peer is unreachable; Raft resends what matters.
            let _ = link.try_send(frame);
        }
    }

    /// Hands a frame received from a peer to the quorum node.
    fn on_peer_message(&self, message: PeerMessage) {
        let now = self.now_ms();
        let result = self.node.borrow_mut().receive(message, now);
        self.check_disk(result);
        self.flush();
    }

    /// A failed write to the Raft log breaks the promises this voter made; like Kafka on a
    /// metadata log failure, stop the process rather than run on with a lying disk.
    fn check_disk(&self, result: std::io::Result<()>) {
        if let Err(e) = result {
            tracing::error!(error = %e, "the coordination log cannot be written; stopping the broker");
            crate::logging::flush();
            std::process::exit(1);
        }
    }

    /// Proposes `command` and waits until it is committed and applied here, up to `timeout`:
    /// retrying while no quorum leader is known, and proposing the same envelope again when the
    /// quorum leader changes (the change may have lost it) or after [`REPROPOSE_AFTER`] without
    /// an outcome. The state machine applies one copy only
    /// ([`super::state_machine::ClusterState::first_application`]), so a proposal lost in a
    /// leader change costs an election, not the whole timeout.
    pub async fn propose(&self, command: Command, timeout: Duration) -> Result<Outcome, ApiError> {
        let deadline = Instant::now() + timeout;
        // The first proposal, retried while no quorum leader is known.
        let (proposal, mut outcome) =
            loop {
                let proposed = self.node.borrow_mut().propose(command.clone());
                self.flush();
                let remaining = deadline.saturating_duration_since(Instant::now());
                match proposed {
                    Ok(id) => {
                        let (tx, rx) = oneshot::channel();
                        self.waiters.borrow_mut().insert(id, tx);
                        break (id, rx);
                    }
                    Err(_) if remaining.is_zero() => return Err(ApiError::new(
                        ResponseError::RequestTimedOut,
                        "no coordination quorum leader (fewer than a majority of voters reachable)",
                    )),
                    Err(_) => glommio::timer::sleep(NO_LEADER_RETRY.min(remaining)).await,
                }
            };
        let result = self
            .await_outcome(proposal, &command, &mut outcome, deadline)
            .await;
        self.waiters.borrow_mut().remove(&proposal);
        result
    }

    /// Waits for `proposal`'s outcome until `deadline`, proposing it again whenever the quorum
    /// leader (or term) changes or [`REPROPOSE_AFTER`] passes without one.
    async fn await_outcome(
        &self,
        proposal: u64,
        command: &Command,
        outcome: &mut oneshot::Receiver<Outcome>,
        deadline: Instant,
    ) -> Result<Outcome, ApiError> {
        let not_committed = || {
            ApiError::new(
                ResponseError::RequestTimedOut,
                "the coordination quorum did not commit the change in time",
            )
        };
        // The (leader, term) the last copy went to; `None` if no leader took it.
        let mut sent_to = Some(self.leader_view());
        loop {
            let patience = if sent_to.is_some() {
                REPROPOSE_AFTER
            } else {
                NO_LEADER_RETRY
            };
            let wait_until = (Instant::now() + patience).min(deadline);
            loop {
                let remaining = wait_until.saturating_duration_since(Instant::now());
                let poll = glommio::timer::sleep(LEADER_CHANGE_POLL.min(remaining));
                futures::pin_mut!(poll);
                if let futures::future::Either::Left((result, _)) =
                    futures::future::select(&mut *outcome, poll).await
                {
                    // Canceled: the waiter was dropped, the coordinator is shutting down.
                    return result.map_err(|_| not_committed());
                }
                if Instant::now() >= wait_until
                    || sent_to.is_some_and(|seen| seen != self.leader_view())
                {
                    break;
                }
            }
            if Instant::now() >= deadline {
                return Err(not_committed());
            }
            tracing::debug!(proposal, "proposing again: no outcome yet");
            let again = self
                .node
                .borrow_mut()
                .propose_again(proposal, command.clone());
            sent_to = again.ok().map(|()| self.leader_view());
            self.flush();
        }
    }

    /// The quorum leader and term as this voter sees them.
    fn leader_view(&self) -> (Option<i32>, u64) {
        let node = self.node.borrow();
        (node.leader(), node.term())
    }

    /// Proposes a command whose refusal is a Kafka error for the client.
    pub async fn change(&self, command: Command, timeout: Duration) -> Result<Outcome, ApiError> {
        refused_as_error(self.propose(command, timeout).await?)
    }

    /// Runs a validation against the committed state (validate-only requests): its refusal as
    /// the client's error.
    pub fn check(
        &self,
        validate: impl FnOnce(&ClusterState) -> Result<(), Outcome>,
    ) -> Result<(), ApiError> {
        match self.with_state(validate) {
            Ok(()) => Ok(()),
            Err(refused) => refused_as_error(refused).map(|_| ()),
        }
    }

    /// Reads the committed state as applied on this node.
    pub fn with_state<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(self.node.borrow().state())
    }

    /// Hands out a producer id from this broker's block, fetching a new block from the quorum
    /// when it runs out. Blocks never overlap, across brokers and restarts.
    pub async fn allocate_producer_id(&self) -> Result<i64, ApiError> {
        let (next, end) = self.producer_ids.get();
        if next < end {
            self.producer_ids.set((next + 1, end));
            return Ok(next);
        }
        match self
            .change(
                Command::AllocateProducerIds {
                    node_id: self.config.node_id,
                },
                Duration::from_secs(10),
            )
            .await?
        {
            Outcome::ProducerIds { first, count } => {
                // Another request may have refilled meanwhile; the newer block wins, the
                // rest of the older is simply not used.
                self.producer_ids.set((first + 1, first + count));
                Ok(first)
            }
            other => Err(ApiError::new(
                ResponseError::UnknownServerError,
                format!("unexpected outcome {other:?}"),
            )),
        }
    }

    /// Whether the committed state holds this process's registration. Derived, never
    /// cached: a registration and its fence can commit in one batch (found by the simulation).
    pub fn is_registered(&self) -> bool {
        let node = self.node.borrow();
        node.state()
            .brokers
            .get(&self.config.node_id)
            .is_some_and(|b| b.incarnation == node.incarnation())
    }

    /// The voter leading the quorum, as far as this node knows.
    /// Whether this voter leads the coordination quorum now.
    pub fn leads_quorum(&self) -> bool {
        self.node.borrow().is_leader()
    }

    pub fn quorum_leader(&self) -> Option<i32> {
        self.node.borrow().leader()
    }

    /// Node ids of the quorum's voters.
    pub fn voter_ids(&self) -> Vec<i32> {
        if self.config.voters.is_empty() {
            vec![self.config.node_id]
        } else {
            self.config.voters.iter().map(|v| v.node_id).collect()
        }
    }

    /// True once a clean shutdown began: the broker no longer takes part.
    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    pub fn started(&self) -> std::time::SystemTime {
        self.started
    }

    /// The metadata snapshot to publish to every shard.
    pub fn snapshot(&self) -> Arc<ClusterMetadata> {
        let node = self.node.borrow();
        let state = node.state();
        let brokers = state
            .brokers_by_sequence()
            .into_iter()
            .map(|b| BrokerInfo {
                node_id: b.node_id,
                host: b.host.clone(),
                port: b.port,
                rack: b.rack.clone(),
                registration_sequence: Some(b.sequence),
            })
            .collect();
        let topics: std::collections::BTreeMap<String, Arc<TopicMetadata>> = state
            .topics
            .iter()
            .map(|(name, t)| {
                let topic = TopicMetadata {
                    name: name.clone(),
                    id: uuid::Uuid::from_bytes(t.id),
                    partitions: t
                        .partitions
                        .iter()
                        .map(|p| PartitionMetadata {
                            leader: p.leader,
                            leader_epoch: p.leader_epoch,
                            partition_epoch: p.partition_epoch,
                            replicas: p.replicas.clone(),
                            isr: p.isr.clone(),
                            adding_replicas: p.adding_replicas.clone(),
                            removing_replicas: p.removing_replicas.clone(),
                        })
                        .collect(),
                    configs: t.configs.clone(),
                };
                (name.clone(), Arc::new(topic))
            })
            .collect();
        let topic_names_by_id = topics.values().map(|t| (t.id, t.name.clone())).collect();
        Arc::new(ClusterMetadata {
            version: self.published_version.get(),
            cluster_id: state.cluster_id.clone(),
            controller_id: node.leader().unwrap_or(-1),
            brokers,
            topics,
            deleted_topics: state
                .deleted_topics
                .iter()
                .map(|(name, id)| (name.clone(), uuid::Uuid::from_bytes(*id)))
                .collect(),
            broker_epochs: state
                .brokers
                .values()
                .map(|b| (b.node_id, b.incarnation as i64))
                .collect(),
            topic_names_by_id,
            broker_configs: state.broker_configs.clone(),
        })
    }

    /// This broker as it registers.
    fn registration(&self) -> Command {
        Command::RegisterBroker {
            node_id: self.config.node_id,
            incarnation: self.node.borrow().incarnation(),
            host: self.broker.host.clone(),
            port: self.broker.port,
            rack: self.broker.rack.clone(),
        }
    }

    /// Ends this broker's session at once on a clean shutdown, so its partitions move now
    /// rather than after the session timeout.
    pub async fn unregister(&self) {
        self.stopping.set(true);
        if !self.is_registered() {
            return;
        }
        let incarnation = self.node.borrow().incarnation();
        let fence = Command::FenceBroker {
            node_id: self.config.node_id,
            incarnation,
        };
        let _ = self.propose(fence, Duration::from_millis(1500)).await;
    }
}

/// A refusal as the client's Kafka error; any other outcome passes through.
pub fn refused_as_error(outcome: Outcome) -> Result<Outcome, ApiError> {
    match outcome {
        Outcome::Refused { code, message } => Err(ApiError::new(code, message)),
        outcome => Ok(outcome),
    }
}

/// How often the coordination task ticks its voter: half a Raft tick
/// (`QuorumConfig::tick_ms`), so ticks are never late by a whole period.
const DRIVE_INTERVAL: Duration = Duration::from_millis(25);

/// Ticks the quorum node on a fixed period.
async fn tick_loop(me: Weak<Coordinator>) {
    loop {
        let Some(c) = me.upgrade() else { return };
        let now = c.now_ms();
        let result = c.node.borrow_mut().tick(now);
        c.check_disk(result);
        c.flush();
        drop(c);
        glommio::timer::sleep(DRIVE_INTERVAL).await;
    }
}

/// Keeps this broker's session alive: a heartbeat to every voter each interval, whether or not
/// the registration has committed yet (a registration that commits late must not find its
/// session already silent).
async fn heartbeat_loop(me: Weak<Coordinator>) {
    loop {
        let Some(c) = me.upgrade() else { return };
        if c.stopping.get() {
            return;
        }
        let interval = Duration::from_millis(c.config.heartbeat_interval_ms);
        let node_id = c.config.node_id;
        let incarnation = c.node.borrow().incarnation();
        let now = c.now_ms();
        c.node
            .borrow_mut()
            .record_heartbeat(node_id, incarnation, now);
        let heartbeat = PeerMessage::Heartbeat {
            node_id,
            incarnation,
        };
        for voter in &c.config.voters {
            if voter.node_id != node_id {
                c.send_to(voter.node_id, &heartbeat);
            }
        }
        drop(c);
        glommio::timer::sleep(interval).await;
    }
}

/// Registers this broker, and registers it again whenever the quorum has ended its session (a
/// pause longer than the session timeout, a network partition).
async fn session_loop(me: Weak<Coordinator>) {
    let mut refused_logged = false;
    loop {
        let Some(c) = me.upgrade() else { return };
        if c.stopping.get() {
            return;
        }
        let interval = Duration::from_millis(c.config.heartbeat_interval_ms);
        let node_id = c.config.node_id;
        if !c.is_registered() {
            match c
                .propose(c.registration(), interval.max(Duration::from_secs(2)))
                .await
            {
                Ok(Outcome::Registered { sequence }) => {
                    refused_logged = false;
                    tracing::info!(
                        node_id,
                        sequence,
                        "broker registered with the coordination quorum"
                    );
                    // Applying the registration already marked the state changed, so the
                    // metadata is republished; `is_registered` reads the state itself.
                }
                Ok(Outcome::Refused { message, .. }) => {
                    if !refused_logged {
                        tracing::warn!(node_id, reason = %message, "registration refused; retrying");
                        refused_logged = true;
                    }
                }
                Ok(other) => tracing::error!(?other, "unexpected registration outcome"),
                Err(e) => {
                    if !refused_logged {
                        tracing::warn!(node_id, reason = %e.message, "cannot register yet; retrying");
                        refused_logged = true;
                    }
                }
            }
        }
        drop(c);
        glommio::timer::sleep(interval).await;
    }
}

/// Accepts connections from other voters and feeds their frames to the quorum node.
async fn accept_loop(me: Weak<Coordinator>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "coordination accept failed");
                glommio::timer::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(c) = me.upgrade() else { return };
        let reader = read_peer(me.clone(), stream);
        glommio::spawn_local_into(reader, c.queue)
            .expect("the coordination queue exists")
            .detach();
    }
}

async fn read_peer(me: Weak<Coordinator>, mut stream: TcpStream) {
    let peer = stream.peer_addr().ok();
    let mut header = [0u8; FRAME_HEADER_BYTES];
    loop {
        if stream.read_exact(&mut header).await.is_err() {
            return;
        }
        let len = frame_len(&header).unwrap_or(usize::MAX);
        if len > MAX_PEER_FRAME_BYTES {
            tracing::warn!(
                ?peer,
                len,
                "oversized coordination frame; closing the connection"
            );
            return;
        }
        let mut frame = vec![0u8; FRAME_HEADER_BYTES + len];
        frame[..FRAME_HEADER_BYTES].copy_from_slice(&header);
        if stream
            .read_exact(&mut frame[FRAME_HEADER_BYTES..])
            .await
            .is_err()
        {
            return;
        }
        let message = decode_frame(&frame, MAX_PEER_FRAME_BYTES)
            .and_then(|(payload, _)| decode_peer_message(payload));
        let Some(message) = message else {
            tracing::warn!(
                ?peer,
                "malformed coordination frame; closing the connection"
            );
            return;
        };
        let Some(c) = me.upgrade() else { return };
        c.on_peer_message(message);
    }
}

/// Keeps one outbound connection to a voter and writes queued frames to it, reconnecting as
/// needed. Logs one line when the voter becomes unreachable and one when it is back.
async fn peer_link(me: Weak<Coordinator>, voter: Voter, mut frames: mpsc::Receiver<Vec<u8>>) {
    let mut unreachable_since: Option<Instant> = None;
    let mut pending: Option<Vec<u8>> = None;
    loop {
        let address = match crate::config::resolve(&voter.address) {
            Ok(address) => address,
            Err(e) => {
                if unreachable_since.is_none() {
                    tracing::warn!(voter = voter.node_id, address = %voter.address, error = %e, "cannot resolve voter; retrying");
                    unreachable_since = Some(Instant::now());
                }
                glommio::timer::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut stream = match TcpStream::connect_timeout(address, Duration::from_millis(500)).await
        {
            Ok(stream) => stream,
            Err(e) => {
                if unreachable_since.is_none() {
                    tracing::warn!(voter = voter.node_id, address = %voter.address, error = %e, "cannot reach voter; retrying");
                    unreachable_since = Some(Instant::now());
                }
                if std::io::Error::from(e).kind() == std::io::ErrorKind::ConnectionRefused {
                    // Nothing listens there: that broker is dead, not slow.
                    if let Some(coordinator) = me.upgrade() {
                        coordinator.node.borrow_mut().peer_refused(voter.node_id);
                    }
                }
                // Drop what queued meanwhile: Raft resends, and stale heartbeats are useless.
                while frames.try_recv().is_ok() {}
                glommio::timer::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if let Some(since) = unreachable_since.take() {
            tracing::info!(voter = voter.node_id, address = %voter.address, down_ms = since.elapsed().as_millis() as u64, "voter reachable");
        }
        loop {
            let frame = match pending.take() {
                Some(frame) => frame,
                None => match frames.next().await {
                    Some(frame) => frame,
                    None => return,
                },
            };
            if let Err(e) = stream.write_all(&frame).await {
                tracing::debug!(voter = voter.node_id, error = %e, "voter link broke");
                pending = Some(frame);
                break;
            }
        }
    }
}

fn random_u64() -> u64 {
    let id = uuid::Uuid::new_v4().as_u128();
    (id >> 64) as u64 ^ id as u64
}
