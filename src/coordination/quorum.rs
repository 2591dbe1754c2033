//! One voter of the coordination quorum, without I/O: raft-rs's `RawNode` driving the
//! [`ClusterState`] machine, plus the broker-session bookkeeping of the quorum leader.
//!
//! Inputs are method calls (`tick` with the current time, `receive` with a peer's message,
//! `propose`, `record_heartbeat`); outputs are collected by [`QuorumNode::take_output`]
//! (messages to send, outcomes of this node's proposals, whether the committed state changed).
//! Persistence goes through a [`DurableLog`], which returns only once data is stable. The same
//! code runs in the broker (glommio, TCP, files: `coordination::runtime`) and in the
//! deterministic simulation (`coordination::sim`): time and randomness come from the caller.
//!
//! Sessions follow KRaft rather than logging every heartbeat: brokers send heartbeats to every
//! voter; each voter remembers when it last heard from each (node, incarnation); only the Raft
//! leader acts, proposing `FenceBroker` once a registered broker has been silent for the session
//! timeout. A new leader gives every broker at least half a session of grace, so a leader change
//! does not fence brokers that were heartbeating to the old leader alone.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use protobuf::Message as _;
use raft::eraftpb::{Entry, EntryType, Message, MessageType, Snapshot};
use raft::{ProgressState, RawNode, SnapshotStatus, StateRole};

use super::raft_store::{DurableLog, RaftMemory, Recovered};
use super::state_machine::{ClusterState, Command, Outcome};

/// Raft ids must be non-zero; Kafka node ids start at 0.
pub fn raft_id(node_id: i32) -> u64 {
    assert!(node_id >= 0, "node ids are not negative");
    node_id as u64 + 1
}

pub fn node_id(raft_id: u64) -> i32 {
    assert!(raft_id > 0, "raft id 0 means 'none'");
    (raft_id - 1) as i32
}

/// Timing and sizing of one voter. Every voter of a quorum should use the same values.
#[derive(Debug, Clone)]
pub struct QuorumConfig {
    pub node_id: i32,
    /// Node ids of the voters (`controller.quorum.voters`).
    pub voters: Vec<i32>,
    /// One Raft tick.
    pub tick_ms: u64,
    /// A follower that hears no leader for this many ticks (randomised up to twice as many)
    /// starts an election.
    pub election_ticks: usize,
    /// The leader's heartbeat period, in ticks.
    pub heartbeat_ticks: usize,
    /// `broker.session.timeout.ms`: a broker silent this long is fenced.
    pub session_timeout_ms: u64,
    /// Take a snapshot (and drop the log before it) after this many applied entries.
    pub snapshot_every_entries: u64,
}

impl QuorumConfig {
    pub fn new(node_id: i32, voters: Vec<i32>, session_timeout_ms: u64) -> QuorumConfig {
        QuorumConfig {
            node_id,
            voters,
            tick_ms: 50,
            election_ticks: 10,
            heartbeat_ticks: 2,
            session_timeout_ms,
            snapshot_every_entries: 1000,
        }
    }
}

/// What voters send each other.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerMessage {
    Raft(Box<Message>),
    /// A broker's session keep-alive, sent to every voter.
    Heartbeat {
        node_id: i32,
        incarnation: u64,
    },
}

/// The outcome of one of this node's proposals, once committed and applied here.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub proposal: u64,
    pub outcome: Outcome,
}

/// Everything produced since the last [`QuorumNode::take_output`].
#[derive(Debug, Default)]
pub struct Output {
    /// (destination node id, message).
    pub messages: Vec<(i32, PeerMessage)>,
    pub applied: Vec<Applied>,
    /// The committed state or the quorum leader changed: publish new metadata.
    pub changed: bool,
}

/// A proposal could not be queued: no leader is known (an election is under way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoLeader;

/// A committed command in the Raft log, tagged with who proposed it so that only the proposer
/// reports the outcome.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Envelope {
    origin: i32,
    origin_incarnation: u64,
    proposal: u64,
    command: Command,
}

/// Deterministic pseudo-randomness (SplitMix64): election timeouts, proposal ids, cluster ids.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the tiny modulo bias does not matter here.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }
}

/// One voter. Owned by the coordination task of its node; `!Send` by use, not by type.
pub struct QuorumNode {
    config: QuorumConfig,
    incarnation: u64,
    raw: RawNode<RaftMemory>,
    durable: Box<dyn DurableLog>,
    /// Term and vote of the hard state last made durable. Only they must reach the disk before
    /// messages leave: the commit index is volatile state in Raft (a restarted voter learns it
    /// again from the leader, or as leader commits its log again), so a change of the commit
    /// alone is kept in memory instead of costing two file syncs on the coordination shard
    /// (which also serves partitions) at every commit.
    durable_term_vote: (u64, u64),
    state: ClusterState,
    applied_index: u64,
    applied_term: u64,
    rng: Rng,
    now_ms: u64,
    last_tick_ms: u64,
    /// When this voter last heard each (node, incarnation).
    heartbeats: BTreeMap<(i32, u64), u64>,
    /// Sessions whose broker's coordination port refused a connection (`peer_refused`).
    refused: BTreeSet<(i32, u64)>,
    /// Fences proposed and not yet applied: (node, incarnation) -> when proposed.
    fences_in_flight: BTreeMap<(i32, u64), u64>,
    /// Set while this node leads: when it became leader.
    leader_since_ms: Option<u64>,
    /// Snapshots this leader sent and has not seen arrive: raft id -> when sent.
    snapshots_sent: BTreeMap<u64, u64>,
    last_cluster_init_ms: Option<u64>,
    next_proposal: u64,
    output: Output,
}

impl QuorumNode {
    /// Starts a voter from what its disk holds. `seed` drives its randomness; `incarnation`
    /// distinguishes this process from earlier ones with the same node id.
    pub fn open(
        config: QuorumConfig,
        incarnation: u64,
        seed: u64,
        recovered: Recovered,
        durable: Box<dyn DurableLog>,
        now_ms: u64,
    ) -> io::Result<QuorumNode> {
        assert!(
            config.voters.contains(&config.node_id),
            "a quorum node must be one of the voters"
        );
        let voters: Vec<u64> = config.voters.iter().map(|&v| raft_id(v)).collect();
        let memory = RaftMemory::new(recovered, &voters);
        let durable_term_vote = (memory.hard_state().term, memory.hard_state().vote);
        let mut persisted: Vec<u64> = memory.conf_state().voters.clone();
        persisted.sort_unstable();
        let mut configured = voters.clone();
        configured.sort_unstable();
        if persisted != configured {
            // The data dir was made for another quorum; raft-rs follows what it persisted.
            tracing::warn!(
                persisted = ?persisted.iter().map(|&v| node_id(v)).collect::<Vec<_>>(),
                configured = ?config.voters,
                "controller.quorum.voters differs from the voters this data dir was created with; \
                 using the persisted ones (membership changes are not supported)"
            );
        }
        let mut state = ClusterState::default();
        let snapshot_index = memory.snapshot_index();
        let snapshot_term = memory.current_snapshot().get_metadata().term;
        if snapshot_index > 0 {
            state = decode_state(memory.current_snapshot())?;
        }
        let raft_config = raft::Config {
            id: raft_id(config.node_id),
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied: snapshot_index,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let logger = slog::Logger::root(super::raft_logging::TracingDrain, slog::o!());
        let raw = RawNode::new(&raft_config, memory, &logger)
            .map_err(|e| io::Error::other(format!("starting raft: {e}")))?;
        let mut node = QuorumNode {
            config,
            incarnation,
            raw,
            durable,
            durable_term_vote,
            state,
            applied_index: snapshot_index,
            applied_term: snapshot_term,
            rng: Rng::new(seed),
            now_ms,
            last_tick_ms: now_ms,
            heartbeats: BTreeMap::new(),
            refused: BTreeSet::new(),
            fences_in_flight: BTreeMap::new(),
            leader_since_ms: None,
            snapshots_sent: BTreeMap::new(),
            last_cluster_init_ms: None,
            next_proposal: 1,
            output: Output::default(),
        };
        node.next_proposal = node.rng.next_u64() >> 16;
        node.randomize_election_timeout();
        if node.config.voters.len() == 1 {
            // A quorum of one need not wait out an election timeout to lead.
            node.raw
                .campaign()
                .map_err(|e| io::Error::other(format!("raft campaign: {e}")))?;
        }
        node.process_ready()?;
        Ok(node)
    }

    /// Advances time: Raft ticks, and on the leader, session expiry.
    pub fn tick(&mut self, now_ms: u64) -> io::Result<()> {
        self.now_ms = self.now_ms.max(now_ms);
        while self.now_ms.saturating_sub(self.last_tick_ms) >= self.config.tick_ms {
            self.last_tick_ms += self.config.tick_ms;
            self.raw.tick();
            self.randomize_election_timeout();
        }
        self.process_ready()?;
        self.retry_lost_snapshots();
        self.lead();
        self.process_ready()
    }

    /// Takes a message from a peer.
    pub fn receive(&mut self, message: PeerMessage, now_ms: u64) -> io::Result<()> {
        self.now_ms = self.now_ms.max(now_ms);
        match message {
            PeerMessage::Raft(message) => {
                // Messages from unknown or stale peers are Raft's to ignore; errors here are
                // not ours to act on.
                if let Err(e) = self.raw.step(*message) {
                    tracing::debug!(error = %e, "raft ignored a message");
                }
                self.randomize_election_timeout();
            }
            PeerMessage::Heartbeat {
                node_id,
                incarnation,
            } => self.record_heartbeat(node_id, incarnation, now_ms),
        }
        self.process_ready()
    }

    /// A voter's coordination port refused a connection: no process listens there, so the
    /// broker that registered from it is dead (a restarted one registers a new incarnation).
    /// The quorum leader fences it on its next tick instead of after the session timeout (and
    /// without a new leader's grace), which moves its partitions in tens of milliseconds. A
    /// heartbeat from that incarnation afterwards (it was alive after all) cancels this.
    pub fn peer_refused(&mut self, node_id: i32) {
        if node_id == self.config.node_id {
            return;
        }
        if let Some(broker) = self.state.brokers.get(&node_id) {
            self.refused.insert((node_id, broker.incarnation));
        }
    }

    /// Notes a broker's heartbeat (also this node's own broker, without the network).
    pub fn record_heartbeat(&mut self, node_id: i32, incarnation: u64, now_ms: u64) {
        self.heartbeats.insert((node_id, incarnation), now_ms);
        self.refused.remove(&(node_id, incarnation));
    }

    /// Queues `command`; its outcome appears in [`Output::applied`] under the returned id once
    /// committed. A proposal can be lost in a quorum leader change (or commit after all): until
    /// its outcome appears, the caller proposes it again with [`Self::propose_again`], and the
    /// state machine applies the first copy that commits only
    /// ([`ClusterState::first_application`]).
    pub fn propose(&mut self, command: Command) -> Result<u64, NoLeader> {
        let proposal = self.next_proposal;
        self.submit(proposal, command)?;
        self.next_proposal = self.next_proposal.wrapping_add(1);
        Ok(proposal)
    }

    /// Proposes `command` again under the id [`Self::propose`] gave it: for a proposal whose
    /// outcome has not appeared, which a leader change may have lost.
    pub fn propose_again(&mut self, proposal: u64, command: Command) -> Result<(), NoLeader> {
        debug_assert!(proposal < self.next_proposal, "only ids already handed out");
        self.submit(proposal, command)
    }

    fn submit(&mut self, proposal: u64, command: Command) -> Result<(), NoLeader> {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            return Err(NoLeader);
        }
        let envelope = Envelope {
            origin: self.config.node_id,
            origin_incarnation: self.incarnation,
            proposal,
            command,
        };
        let data = rkyv::to_bytes::<rkyv::rancor::Error>(&envelope)
            .expect("encoding a command cannot fail")
            .to_vec();
        self.raw.propose(vec![], data).map_err(|_| NoLeader)
    }

    pub fn take_output(&mut self) -> Output {
        std::mem::take(&mut self.output)
    }

    /// The committed state as applied on this node.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The voter currently leading the quorum, as far as this node knows.
    pub fn leader(&self) -> Option<i32> {
        let id = self.raw.raft.leader_id;
        (id != raft::INVALID_ID).then(|| node_id(id))
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub fn node_id(&self) -> i32 {
        self.config.node_id
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// raft-rs draws election timeouts from the thread's RNG; draw them from ours instead so
    /// that a simulation seed replays exactly. Called after every input: whenever the elapsed
    /// count was reset, the timeout is re-drawn in `[election_ticks, 2 * election_ticks)`.
    fn randomize_election_timeout(&mut self) {
        if self.raw.raft.election_elapsed == 0 {
            let base = self.config.election_ticks;
            let timeout = base + self.rng.below(base as u64) as usize;
            self.raw.raft.set_randomized_election_timeout(timeout);
        }
    }

    /// raft-rs holds a follower it sent a snapshot to until told how the send went; a
    /// snapshot lost on the way (dropped link, follower restarting) would stall that follower
    /// for as long as this node leads. Messages go out without delivery reports, so a snapshot
    /// not acknowledged within two election timeouts counts as lost and is sent again.
    fn retry_lost_snapshots(&mut self) {
        if !self.is_leader() {
            self.snapshots_sent.clear();
            return;
        }
        let retry_after_ms = 2 * self.config.election_ticks as u64 * self.config.tick_ms;
        let now = self.now_ms;
        let lost: Vec<u64> = self
            .snapshots_sent
            .iter()
            .filter(|&(_, &sent)| now.saturating_sub(sent) >= retry_after_ms)
            .map(|(&id, _)| id)
            .collect();
        for id in lost {
            self.snapshots_sent.remove(&id);
            let waiting = self
                .raw
                .raft
                .prs()
                .get(id)
                .is_some_and(|pr| pr.state == ProgressState::Snapshot);
            if waiting {
                tracing::debug!(
                    node_id = node_id(id),
                    "snapshot not acknowledged; sending it again"
                );
                self.raw.report_snapshot(id, SnapshotStatus::Failure);
            }
        }
    }

    /// The quorum leader's duties: name the cluster once, fence silent brokers.
    fn lead(&mut self) {
        if !self.is_leader() {
            self.leader_since_ms = None;
            self.fences_in_flight.clear();
            return;
        }
        let now = self.now_ms;
        let leader_since = *self.leader_since_ms.get_or_insert(now);
        // Raft commits entries of the leader's own term only; wait for the first one so the
        // state we judge is current.
        if self.raw.raft.raft_log.committed < self.raw.raft.raft_log.last_index()
            && self.applied_index < self.raw.raft.raft_log.committed
        {
            return;
        }
        if self.state.cluster_id.is_empty()
            && self
                .last_cluster_init_ms
                .is_none_or(|at| now.saturating_sub(at) >= 1000)
        {
            self.last_cluster_init_ms = Some(now);
            let cluster_id =
                short_cluster_id((self.rng.next_u64() as u128) << 64 | self.rng.next_u64() as u128);
            let _ = self.propose(Command::InitCluster { cluster_id });
        }
        let timeout = self.config.session_timeout_ms;
        let grace_from = leader_since.saturating_sub(timeout / 2);
        let expired: Vec<(i32, u64, Option<u64>)> = self
            .state
            .brokers
            .values()
            .filter_map(|b| {
                let last_heard = self.heartbeats.get(&(b.node_id, b.incarnation)).copied();
                let heard = last_heard.unwrap_or(0).max(grace_from);
                let refused = self.refused.contains(&(b.node_id, b.incarnation));
                (refused || now.saturating_sub(heard) > timeout).then_some((
                    b.node_id,
                    b.incarnation,
                    last_heard,
                ))
            })
            .collect();
        for (node_id, incarnation, last_heard) in expired {
            let key = (node_id, incarnation);
            let retry_due = self
                .fences_in_flight
                .get(&key)
                .is_none_or(|&at| now.saturating_sub(at) >= timeout);
            if retry_due {
                tracing::info!(
                    node_id,
                    refused = self.refused.contains(&key),
                    silent_ms = last_heard.map(|at| now.saturating_sub(at)),
                    leader_for_ms = now.saturating_sub(leader_since),
                    session_timeout_ms = timeout,
                    "broker session expired; fencing it"
                );
                self.fences_in_flight.insert(key, now);
                let _ = self.propose(Command::FenceBroker {
                    node_id,
                    incarnation,
                });
            }
        }
        // Forget fences that took effect and heartbeats of sessions long gone.
        let state = &self.state;
        self.fences_in_flight
            .retain(|(id, inc), _| state.brokers.get(id).is_some_and(|b| b.incarnation == *inc));
        self.refused
            .retain(|(id, inc)| state.brokers.get(id).is_some_and(|b| b.incarnation == *inc));
        self.heartbeats.retain(|(id, inc), &mut at| {
            state.brokers.get(id).is_some_and(|b| b.incarnation == *inc)
                || now.saturating_sub(at) <= 2 * timeout
        });
    }

    /// raft-rs's Ready loop: send, persist, apply, advance.
    fn process_ready(&mut self) -> io::Result<()> {
        while self.raw.has_ready() {
            let mut ready = self.raw.ready();
            if ready.ss().is_some() {
                // The quorum leader changed: Metadata's controller id changes with it.
                self.output.changed = true;
            }
            self.send(ready.take_messages());
            if !ready.snapshot().is_empty() {
                let snapshot = ready.snapshot().clone();
                self.install_snapshot(snapshot)?;
            }
            let committed = ready.take_committed_entries();
            self.apply(committed)?;
            if !ready.entries().is_empty() {
                self.durable.append(ready.entries())?;
                self.raw.mut_store().append(ready.entries());
            }
            if let Some(hard_state) = ready.hs() {
                let term_vote = (hard_state.term, hard_state.vote);
                if term_vote != self.durable_term_vote {
                    self.durable.set_hard_state(hard_state)?;
                    self.durable_term_vote = term_vote;
                }
                self.raw.mut_store().set_hard_state(hard_state.clone());
            }
            self.send(ready.take_persisted_messages());
            let mut light = self.raw.advance(ready);
            if let Some(commit) = light.commit_index() {
                // In memory only: see `durable_term_vote`.
                self.raw.mut_store().set_commit(commit);
            }
            self.send(light.take_messages());
            let committed = light.take_committed_entries();
            self.apply(committed)?;
            self.raw.advance_apply();
        }
        self.maybe_snapshot()
    }

    fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            if message.get_msg_type() == MessageType::MsgSnapshot {
                self.snapshots_sent.insert(message.to, self.now_ms);
            }
            let to = node_id(message.to);
            self.output
                .messages
                .push((to, PeerMessage::Raft(Box::new(message))));
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> io::Result<()> {
        for entry in entries {
            if entry.index <= self.applied_index {
                continue;
            }
            self.applied_index = entry.index;
            self.applied_term = entry.term;
            if entry.data.is_empty() {
                // The no-op a new leader appends.
                continue;
            }
            if entry.get_entry_type() != EntryType::EntryNormal {
                tracing::warn!(
                    index = entry.index,
                    "ignoring a raft configuration change: voters are static"
                );
                continue;
            }
            let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(entry.data.len());
            aligned.extend_from_slice(&entry.data);
            let envelope = match rkyv::from_bytes::<Envelope, rkyv::rancor::Error>(&aligned) {
                Ok(envelope) => envelope,
                Err(e) => {
                    // Every voter sees the same bytes and skips alike, so state stays identical.
                    tracing::error!(index = entry.index, error = %e, "undecodable committed entry skipped");
                    continue;
                }
            };
            let proposer = (envelope.origin, envelope.origin_incarnation);
            if !self.state.first_application(proposer, envelope.proposal) {
                // Proposed again after a leader change, and both copies committed.
                tracing::debug!(
                    index = entry.index,
                    origin = envelope.origin,
                    proposal = envelope.proposal,
                    "duplicate proposal skipped"
                );
                continue;
            }
            let registering = match &envelope.command {
                Command::RegisterBroker {
                    node_id,
                    incarnation,
                    ..
                } => Some((*node_id, *incarnation)),
                _ => None,
            };
            let version = self.state.version;
            tracing::debug!(index = entry.index, term = entry.term, origin = envelope.origin, command = ?envelope.command, "applying");
            let outcome = self.state.apply(envelope.command);
            tracing::debug!(index = entry.index, ?outcome, "applied");
            if self.state.version != version {
                self.output.changed = true;
            }
            if let (Some(session), Outcome::Registered { .. }) = (registering, &outcome) {
                // A session starts when its registration commits. The broker sends no
                // heartbeat while it waits for this outcome, so a leader that missed the one
                // before would otherwise fence it at once.
                let heard = self.heartbeats.entry(session).or_insert(self.now_ms);
                *heard = (*heard).max(self.now_ms);
            }
            if envelope.origin == self.config.node_id
                && envelope.origin_incarnation == self.incarnation
            {
                self.output.applied.push(Applied {
                    proposal: envelope.proposal,
                    outcome,
                });
            }
        }
        Ok(())
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) -> io::Result<()> {
        let state = decode_state(&snapshot)?;
        let meta = snapshot.get_metadata();
        if meta.index <= self.applied_index {
            return Ok(());
        }
        self.durable.save_snapshot(&snapshot, &[])?;
        self.applied_index = meta.index;
        self.applied_term = meta.term;
        self.state = state;
        self.raw.mut_store().apply_snapshot(snapshot);
        self.output.changed = true;
        Ok(())
    }

    /// Snapshots the applied state every `snapshot_every_entries` entries, so the log and a
    /// restart's replay stay short.
    fn maybe_snapshot(&mut self) -> io::Result<()> {
        let store = self.raw.store();
        if self.applied_index < store.snapshot_index() + self.config.snapshot_every_entries {
            return Ok(());
        }
        let data = super::snapshot_compat::encode(&self.state)
            .map_err(|e| io::Error::other(format!("encoding a snapshot: {e}")))?;
        let mut snapshot = Snapshot::default();
        snapshot.set_data(data.into());
        let meta = snapshot.mut_metadata();
        meta.index = self.applied_index;
        meta.term = self.applied_term;
        meta.set_conf_state(store.conf_state().clone());
        let kept = self.raw.mut_store().compact_to(snapshot.clone()).to_vec();
        self.durable.save_snapshot(&snapshot, &kept)
    }
}

fn decode_state(snapshot: &Snapshot) -> io::Result<ClusterState> {
    super::snapshot_compat::decode(&snapshot.data)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Encodes a peer message for the wire: a kind byte, then the body.
pub fn encode_peer_message(message: &PeerMessage) -> Vec<u8> {
    match message {
        PeerMessage::Raft(m) => {
            let mut out = vec![1u8];
            out.extend_from_slice(&m.write_to_bytes().expect("encoding a raft message"));
            out
        }
        PeerMessage::Heartbeat {
            node_id,
            incarnation,
        } => {
            let mut out = vec![2u8];
            out.extend_from_slice(&node_id.to_le_bytes());
            out.extend_from_slice(&incarnation.to_le_bytes());
            out
        }
    }
}

/// Decodes what [`encode_peer_message`] wrote; `None` for anything else.
pub fn decode_peer_message(bytes: &[u8]) -> Option<PeerMessage> {
    match bytes.split_first()? {
        (1, body) => Message::parse_from_bytes(body)
            .ok()
            .map(|m| PeerMessage::Raft(Box::new(m))),
        (2, body) if body.len() == 12 => Some(PeerMessage::Heartbeat {
            node_id: i32::from_le_bytes(body[0..4].try_into().ok()?),
            incarnation: u64::from_le_bytes(body[4..12].try_into().ok()?),
        }),
        _ => None,
    }
}

/// Kafka cluster ids are 22 characters of URL-safe base64 of 128 random bits.
pub fn short_cluster_id(value: u128) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..22)
        .map(|i| ALPHABET[((value >> (i * 6)) & 63) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_messages_round_trip() {
        let m = Message {
            to: 2,
            from: 1,
            term: 7,
            ..Default::default()
        };
        for message in [
            PeerMessage::Raft(Box::new(m)),
            PeerMessage::Heartbeat {
                node_id: 3,
                incarnation: u64::MAX - 1,
            },
        ] {
            assert_eq!(
                decode_peer_message(&encode_peer_message(&message)),
                Some(message)
            );
        }
        assert_eq!(decode_peer_message(&[2, 1]), None);
        assert_eq!(decode_peer_message(&[]), None);
        assert_eq!(decode_peer_message(&[9, 9, 9]), None);
    }

    #[test]
    fn cluster_ids_look_like_kafkas() {
        assert_eq!(short_cluster_id(u128::MAX).len(), 22);
    }
}
