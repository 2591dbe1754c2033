//! Deterministic, seeded simulation of the coordination layer: several voters (3, sometimes 5),
//! each also a broker, each a real [`QuorumNode`] with a simulated disk, over a simulated
//! network, with one simulated clock. Everything random comes from one seed, so a seed replays
//! exactly (no wall clock, no thread RNG, no hash-order decisions).
//!
//! What it models:
//! - **Disk**: a [`SimDisk`] per node, shared (`Rc<RefCell<..>>`) between the node and the
//!   simulator, that survives crashes. An honest disk keeps everything acknowledged; a lying one
//!   ([`DiskFault`]) acknowledges writes it loses on a crash, the forgotten-fsync bug, to show
//!   that the checks below catch it.
//! - **Network**: every [`PeerMessage`] (Raft and broker heartbeats) is dropped, delayed,
//!   duplicated or reordered at random; links are cut (whole partitions, isolated nodes, one
//!   way) and healed.
//! - **Processes**: crashes (kill -9: memory gone, disk kept; also between two disk writes of
//!   one Raft `Ready`, as a failed write makes the runtime exit) and restarts with a new
//!   incarnation and a process clock starting at zero, exactly as `runtime.rs` opens a node;
//!   clean stops (the broker fences its own session first, as `Coordinator::unregister`);
//!   pauses (SIGSTOP: no ticks, messages queue up and arrive on resume).
//! - **Brokers** as `runtime.rs`'s `session_loop` and `flush`: heartbeat every voter each
//!   interval, register when not registered (waiting up to max(interval, 2 s) for the outcome,
//!   sending no heartbeats meanwhile), notice being fenced on a state change.
//! - **Clients** proposing CreateTopic (replication factor 1..=3), DeleteTopic,
//!   CreatePartitions, AllocateProducerIds and AlterPartition (as partition leaders would) at
//!   random nodes.
//!
//! What it checks, after every step (one event: a delivery, a tick, a fault...):
//! - Agreement: any two nodes that applied the same index hold identical [`ClusterState`]s.
//! - Epochs: ordered by applied index, leader and partition epochs never decrease (nor partition
//!   counts, versions, registration sequences, producer id blocks); one node's applied index
//!   never goes backwards within a process, and a restarted node starts at least at the commit
//!   index its disk held.
//! - At most one leader per (topic id, partition, leader epoch).
//! - Every partition's leader is a registered (so not fenced) broker and a member of the ISR,
//!   or -1; the ISR is a non-empty subset of the replicas.
//! - Committed outcomes are never lost: every outcome reported to a proposer (a topic created,
//!   a producer id block, a registration sequence, partitions added, a session fenced) holds in
//!   every state at a later index; producer id blocks and registration sequences are never
//!   handed out twice.
//! - Convergence: after the fault phase (network healed, every node restarted and resumed,
//!   no client load), all nodes reach the same state, every broker is registered with its
//!   current incarnation and knows it, and no partition with a live in-sync replica is
//!   leaderless; the state then stays put for a session timeout.
//!
//! A failure reports the seed, the step, the violated check and the last steps of the trace.
//! Reproduce one seed (with `SIM_TRACE=1` to print every step as it runs):
//!
//! ```text
//! SIM_SEED=1234 cargo test --test coordination_sim reproduce -- --nocapture
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::io;
use std::rc::Rc;

use raft::eraftpb::{Entry, HardState, MessageType, Snapshot};

use super::quorum::{Output, PeerMessage, QuorumConfig, QuorumNode, Rng};
use super::raft_store::{DurableLog, Recovered};
use super::state_machine::{ClusterState, Command, NewTopic, Outcome};

/// How a simulated disk breaks its promises (deliberate bugs, to test the checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    /// Everything acknowledged survives a crash.
    None,
    /// The forgotten fsync: writes are acknowledged but reach stable storage only at the next
    /// background write-back (every second or few); a crash loses the rest.
    LosesUnsynced,
    /// Only the hard state (term, vote, commit) skips the fsync: a restarted voter may vote
    /// twice in one term.
    LosesHardState,
}

/// One simulation run's parameters. [`SimConfig::new`] gives the defaults the tests use.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Voters, each also a broker: 3 or 5. 0 lets the seed choose (one in four runs has 5).
    pub voters: usize,
    /// Simulated time with faults and client load.
    pub fault_phase_ms: u64,
    /// After the fault phase, the longest the cluster may take to converge.
    pub quiet_phase_max_ms: u64,
    /// `broker.heartbeat.interval.ms` (the broker's default).
    pub heartbeat_interval_ms: u64,
    /// `broker.session.timeout.ms` (the broker's default).
    pub session_timeout_ms: u64,
    /// Small, so that snapshots are taken and sent to lagging voters often.
    pub snapshot_every_entries: u64,
    pub disk_fault: DiskFault,
    /// Print every step to stderr as it runs.
    pub print_trace: bool,
    /// Steps of trace kept for a failure report.
    pub trace_tail_steps: usize,
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            voters: 0,
            fault_phase_ms: 8_000,
            quiet_phase_max_ms: 20_000,
            heartbeat_interval_ms: 250,
            session_timeout_ms: 1_500,
            snapshot_every_entries: 20,
            disk_fault: DiskFault::None,
            print_trace: false,
            trace_tail_steps: 60,
        }
    }
}

/// Counters of what a run did, to see that the faults and the load actually happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    pub delivered: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub crashes: u64,
    pub clean_stops: u64,
    pub pauses: u64,
    pub partitions: u64,
    pub proposals: u64,
    /// Client ops proposed again under their id after waiting for an outcome.
    pub reproposals: u64,
    /// Outcomes of ops proposed again (so the copy, or the original, committed).
    pub outcomes_after_reproposal: u64,
    pub no_leader: u64,
    pub outcomes: u64,
    pub registrations: u64,
    pub max_term: u64,
    pub max_applied_index: u64,
    pub snapshots_seen: u64,
    pub topics_created: u64,
    /// Simulated time from the end of the fault phase until convergence was first seen.
    pub convergence_ms: u64,
    /// A broker shutting down cleanly registered again after fencing itself: `server.rs`
    /// unregisters while `session_loop` still runs.
    pub reregistered_while_stopping: u64,
    /// Crashes injected between two disk writes of one Raft `Ready`.
    pub crashes_mid_write: u64,
    /// `session_loop` set `registered` from a Registered outcome although the same `flush`
    /// had just seen the session fenced (runtime.rs): the broker wrongly believes it is
    /// registered until the next state change.
    pub stale_registered_flag: u64,
}

/// A violated check.
#[derive(Debug, Clone)]
pub struct SimFailure {
    pub seed: u64,
    pub step: u64,
    pub time_ms: u64,
    pub what: String,
    /// The last steps before the failure, oldest first.
    pub trace_tail: Vec<String>,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "simulation seed {} failed at step {} (t={} ms): {}",
            self.seed, self.step, self.time_ms, self.what
        )?;
        writeln!(f, "last {} steps:", self.trace_tail.len())?;
        for line in &self.trace_tail {
            writeln!(f, "  {line}")?;
        }
        write!(
            f,
            "reproduce: SIM_SEED={} cargo test --test coordination_sim reproduce -- --nocapture",
            self.seed
        )
    }
}

/// What one run did and found.
#[derive(Debug, Clone)]
pub struct SimReport {
    pub seed: u64,
    pub voters: usize,
    pub steps: u64,
    pub sim_ms: u64,
    /// A digest of every step and its effect: equal for equal runs.
    pub trace_hash: u64,
    pub stats: SimStats,
    pub failure: Option<SimFailure>,
}

/// Runs one seed to the end (or to its first failure).
pub fn run(config: &SimConfig) -> SimReport {
    let mut sim = Sim::new(config.clone());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run_to_end()));
    if let Err(panic) = outcome {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".to_string());
        sim.fail(format!("panic: {message}"));
    }
    sim.report()
}

mod brokers;
mod checker;
mod clients;
mod convergence;
mod disk;
mod faults;
mod trace;

use checker::*;
use disk::*;
use trace::*;

// ---------------------------------------------------------------------------------------------
// Events, nodes, network.

#[derive(Debug)]
enum Event {
    Deliver {
        from: i32,
        to: i32,
        message: PeerMessage,
    },
    /// The runtime's tick loop (every 25 ms).
    Tick {
        node: usize,
        generation: u64,
    },
    /// The runtime's session loop waking up (interval sleep, registration retry or timeout).
    Session {
        node: usize,
        token: u64,
    },
    Client,
    Fault,
    Heal {
        links: Vec<(i32, i32)>,
    },
    Resume {
        node: usize,
        generation: u64,
    },
    Restart {
        node: usize,
    },
    Crash {
        node: usize,
        generation: u64,
    },
    WriteBack {
        node: usize,
    },
    EndFaults,
    CheckConverged,
}

/// The session loop's state between wake-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Session {
    /// Sleeping until the next heartbeat.
    Idle,
    /// Waiting for a registration proposal's outcome (`Some`) or for a leader to propose it to
    /// (`None`), until the deadline.
    Registering {
        deadline_ms: u64,
        proposal: Option<u64>,
    },
}

/// A client's proposal awaiting its outcome.
#[derive(Debug, Clone)]
struct ClientOp {
    command: Command,
    /// When it was last proposed (again), simulated ms.
    proposed_ms: u64,
    /// Proposed again at least once.
    again: bool,
}

/// A client op without an outcome this long is proposed again under the same id, as
/// `Coordinator::propose` does (`REPROPOSE_AFTER`), so that copies of one proposal commit.
const REPROPOSE_AFTER_MS: u64 = 1_000;

struct SimNode {
    id: i32,
    disk: Rc<RefCell<SimDisk>>,
    /// `None` while crashed.
    quorum: Option<QuorumNode>,
    /// Bumped on crash, restart, pause and resume: scheduled ticks of an earlier one are void.
    generation: u64,
    /// Global time at which this process started: its own clock reads `now - started_at_ms`,
    /// as the runtime's `Instant` does.
    started_at_ms: u64,
    paused_until_ms: Option<u64>,
    /// Messages that arrived while paused, delivered on resume.
    inbox: Vec<(i32, PeerMessage)>,
    incarnation: u64,
    /// The runtime's `registered` flag.
    registered: bool,
    session: Session,
    /// Identifies the one live session wake-up; others are void.
    session_token: u64,
    clients: BTreeMap<u64, ClientOp>,
    /// Applied index last observed in this process.
    observed_index: Option<u64>,
    /// Restart scheduled (crashed nodes only).
    restart_due: bool,
    /// Shutting down cleanly: fenced itself, exits soon.
    stopping: bool,
}

impl SimNode {
    fn up(&self) -> bool {
        self.quorum.is_some()
    }

    fn running(&self) -> bool {
        self.quorum.is_some() && self.paused_until_ms.is_none()
    }
}

/// Network behaviour, changed from time to time during the fault phase.
#[derive(Debug, Clone, Copy)]
struct Weather {
    drop_per_mille: u64,
    duplicate_per_mille: u64,
    min_delay_ms: u64,
    jitter_ms: u64,
    /// Messages held back much longer (a slow link, retransmission), reordering strongly.
    slow_per_mille: u64,
}

impl Weather {
    fn calm() -> Weather {
        Weather {
            drop_per_mille: 0,
            duplicate_per_mille: 0,
            min_delay_ms: 1,
            jitter_ms: 4,
            slow_per_mille: 0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The simulator.

const TOPIC_NAMES: [&str; 6] = ["t0", "t1", "t2", "t3", "t4", "t5"];
const MAX_PARTITIONS: u64 = 40;
/// The runtime's tick loop period.
const TICK_LOOP_MS: u64 = 25;
/// The runtime's retry period while no quorum leader is known.
const NO_LEADER_RETRY_MS: u64 = 20;
/// The runtime's registration wait is max(heartbeat interval, this).
const REGISTRATION_TIMEOUT_MIN_MS: u64 = 2_000;
/// How often convergence is checked in the quiet phase.
const CONVERGENCE_CHECK_MS: u64 = 100;

struct Sim {
    config: SimConfig,
    voters: Vec<i32>,
    rng: Rng,
    now_ms: u64,
    step: u64,
    next_seq: u64,
    events: BTreeMap<(u64, u64), Event>,
    nodes: Vec<SimNode>,
    weather: Weather,
    /// Cut directed links (from, to), counted: overlapping partitions heal independently.
    cut: BTreeMap<(i32, i32), u32>,
    faults_on: bool,
    fault_phase_end_ms: u64,
    /// Converged at (time, applied index), if it still is.
    converged_since: Option<(u64, u64)>,
    done: bool,
    checker: Checker,
    trace: VecDeque<TraceLine>,
    trace_hash: u64,
    stats: SimStats,
    failure: Option<SimFailure>,
}

impl Sim {
    fn new(config: SimConfig) -> Sim {
        let mut rng = Rng::new(config.seed);
        let count = match config.voters {
            0 if rng.below(4) == 0 => 5,
            0 => 3,
            n => n,
        };
        let voters: Vec<i32> = (0..count as i32).collect();
        let nodes = voters
            .iter()
            .map(|&id| SimNode {
                id,
                disk: Rc::new(RefCell::new(SimDisk::new(config.disk_fault))),
                quorum: None,
                generation: 0,
                started_at_ms: 0,
                paused_until_ms: None,
                inbox: Vec::new(),
                incarnation: 0,
                registered: false,
                session: Session::Idle,
                session_token: 0,
                clients: BTreeMap::new(),
                observed_index: None,
                restart_due: false,
                stopping: false,
            })
            .collect();
        Sim {
            voters,
            rng,
            now_ms: 0,
            step: 0,
            next_seq: 0,
            events: BTreeMap::new(),
            nodes,
            weather: Weather::calm(),
            cut: BTreeMap::new(),
            faults_on: true,
            fault_phase_end_ms: config.fault_phase_ms,
            converged_since: None,
            done: false,
            checker: Checker::default(),
            trace: VecDeque::new(),
            trace_hash: mix(0, config.seed),
            stats: SimStats::default(),
            failure: None,
            config,
        }
    }

    fn run_to_end(&mut self) {
        // Nodes start a little apart, as processes do.
        for n in 0..self.nodes.len() {
            let at = self.rng.below(300);
            self.schedule(at, Event::Restart { node: n });
            self.nodes[n].restart_due = true;
        }
        self.schedule(200, Event::Fault);
        self.schedule(500, Event::Client);
        self.schedule(self.config.fault_phase_ms, Event::EndFaults);
        let deadline_ms = self.config.fault_phase_ms + self.config.quiet_phase_max_ms;
        while !self.done && self.failure.is_none() {
            let Some(((at, _), event)) = self.events.pop_first() else {
                self.fail("no events left".to_string());
                break;
            };
            debug_assert!(at >= self.now_ms, "time runs forward");
            self.now_ms = at;
            if at > deadline_ms {
                let why = self
                    .convergence()
                    .err()
                    .unwrap_or_else(|| "not stable for a session timeout".to_string());
                self.fail(format!(
                    "did not converge within {} ms after the faults ended: {why}",
                    self.config.quiet_phase_max_ms
                ));
                break;
            }
            self.step += 1;
            self.handle(event);
        }
    }

    fn report(&self) -> SimReport {
        SimReport {
            seed: self.config.seed,
            voters: self.voters.len(),
            steps: self.step,
            sim_ms: self.now_ms,
            trace_hash: self.trace_hash,
            stats: self.stats.clone(),
            failure: self.failure.clone(),
        }
    }

    fn schedule(&mut self, delay_ms: u64, event: Event) {
        self.next_seq += 1;
        self.events
            .insert((self.now_ms + delay_ms, self.next_seq), event);
    }

    fn fail(&mut self, what: String) {
        if self.failure.is_some() {
            return;
        }
        self.failure = Some(SimFailure {
            seed: self.config.seed,
            step: self.step,
            time_ms: self.now_ms,
            what,
            trace_tail: self.trace.iter().map(|l| l.to_string()).collect(),
        });
    }

    /// Records a step in the trace (and its hash); `node` is the node it touched.
    fn trace(&mut self, event: TraceEvent, node: Option<usize>) {
        let after = node.and_then(|n| {
            let node = &self.nodes[n];
            node.quorum
                .as_ref()
                .map(|q| (node.id, q.applied_index(), q.term(), q.leader()))
        });
        let mut h = mix(self.trace_hash, self.now_ms);
        h = match &event {
            TraceEvent::Deliver { from, to, what } => {
                h = mix(h, (*from as u64) << 32 | *to as u64);
                match what {
                    MessageSummary::Raft {
                        kind,
                        term,
                        index,
                        commit,
                        entries,
                        ..
                    } => {
                        let h = mix(mix(h, *kind as u64), *term);
                        mix(mix(mix(h, *index), *commit), *entries as u64)
                    }
                    MessageSummary::Heartbeat {
                        node_id,
                        incarnation,
                    } => mix(mix(h, *node_id as u64), *incarnation),
                }
            }
            TraceEvent::Tick { node } => mix(h, 1 << 40 | *node as u64),
            TraceEvent::Text(text) => mix_bytes(h, text.as_bytes()),
        };
        if let Some((id, applied, term, leader)) = after {
            h = mix(mix(mix(h, id as u64), applied), term);
            h = mix(h, leader.map_or(u64::MAX, |l| l as u64));
        }
        self.trace_hash = h;
        let line = TraceLine {
            step: self.step,
            time_ms: self.now_ms,
            event,
            after,
        };
        if self.config.print_trace {
            eprintln!("{line}");
        }
        if self.trace.len() >= self.config.trace_tail_steps.max(1) {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    fn note(&mut self, text: String, node: Option<usize>) {
        self.trace(TraceEvent::Text(text), node);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, message } => self.deliver(from, to, message),
            Event::Tick { node, generation } => {
                if self.nodes[node].generation != generation || !self.nodes[node].running() {
                    return;
                }
                let local = self.local_now(node);
                let result = self.quorum(node).tick(local);
                self.trace(
                    TraceEvent::Tick {
                        node: self.nodes[node].id,
                    },
                    Some(node),
                );
                self.after_input(node, result);
                let jitter = self.rng.below(3);
                self.schedule(TICK_LOOP_MS + jitter, Event::Tick { node, generation });
            }
            Event::Session { node, token } => {
                if self.nodes[node].session_token == token && self.nodes[node].running() {
                    self.session(node);
                }
            }
            Event::Client => {
                if self.faults_on {
                    self.client();
                    let next = 10 + self.rng.below(150);
                    self.schedule(next, Event::Client);
                }
            }
            Event::Fault => {
                if self.faults_on {
                    self.fault();
                    let next = 150 + self.rng.below(900);
                    self.schedule(next, Event::Fault);
                }
            }
            Event::Heal { links } => {
                for link in &links {
                    if let Some(count) = self.cut.get_mut(link) {
                        *count -= 1;
                        if *count == 0 {
                            self.cut.remove(link);
                        }
                    }
                }
                self.note(format!("heal {links:?}"), None);
            }
            Event::Resume { node, generation } => {
                if self.nodes[node].generation == generation {
                    self.resume(node);
                }
            }
            Event::Restart { node } => {
                if !self.nodes[node].up() {
                    self.restart(node);
                }
            }
            Event::Crash { node, generation } => {
                if self.nodes[node].generation == generation && self.nodes[node].up() {
                    self.crash(node, "crash after a clean stop");
                }
            }
            Event::WriteBack { node } => {
                self.nodes[node].disk.borrow_mut().write_back();
                if self.faults_on {
                    let next = 1_000 + self.rng.below(3_000);
                    self.schedule(next, Event::WriteBack { node });
                }
            }
            Event::EndFaults => self.end_faults(),
            Event::CheckConverged => self.check_converged(),
        }
    }

    fn quorum(&mut self, node: usize) -> &mut QuorumNode {
        self.nodes[node]
            .quorum
            .as_mut()
            .expect("only running nodes get inputs")
    }

    /// The node's process clock, which starts at zero like the runtime's `Instant`.
    fn local_now(&self, node: usize) -> u64 {
        self.now_ms - self.nodes[node].started_at_ms
    }

    // --- network ---

    fn send(&mut self, from: i32, to: i32, message: PeerMessage) {
        if from == to || to < 0 || to as usize >= self.nodes.len() {
            self.fail(format!("node {from} sent a message to {to}"));
            return;
        }
        if self.cut.contains_key(&(from, to)) || self.rng.below(1000) < self.weather.drop_per_mille
        {
            self.stats.dropped += 1;
            return;
        }
        if self.rng.below(1000) < self.weather.duplicate_per_mille {
            self.stats.duplicated += 1;
            let delay = self.delay();
            self.schedule(
                delay,
                Event::Deliver {
                    from,
                    to,
                    message: message.clone(),
                },
            );
        }
        let delay = self.delay();
        self.schedule(delay, Event::Deliver { from, to, message });
    }

    /// One message's time in flight; random delays reorder messages.
    fn delay(&mut self) -> u64 {
        let mut delay = self.weather.min_delay_ms + self.rng.below(self.weather.jitter_ms + 1);
        if self.rng.below(1000) < self.weather.slow_per_mille {
            delay += self.rng.below(1_000);
        }
        delay
    }

    fn deliver(&mut self, from: i32, to: i32, message: PeerMessage) {
        let n = to as usize;
        if !self.nodes[n].up() || self.cut.contains_key(&(from, to)) {
            // The connection is gone with the process or the link.
            self.stats.dropped += 1;
            return;
        }
        if self.nodes[n].paused_until_ms.is_some() {
            self.nodes[n].inbox.push((from, message));
            return;
        }
        self.stats.delivered += 1;
        let what = MessageSummary::of(&message);
        if let MessageSummary::Raft { snapshot_index, .. } = what {
            if snapshot_index > 0 {
                self.stats.snapshots_seen += 1;
            }
        }
        let local = self.local_now(n);
        let result = self.quorum(n).receive(message, local);
        self.trace(TraceEvent::Deliver { from, to, what }, Some(n));
        self.after_input(n, result);
    }

    // --- the node's outputs and the checks ---

    /// Everything the runtime's `flush` does after an input, then the checks.
    fn after_input(&mut self, n: usize, result: io::Result<()>) {
        if let Err(e) = result {
            if self.nodes[n].disk.borrow().crashed_mid_write {
                // `Coordinator::check_disk` exits the process on a failed write.
                self.stats.crashes_mid_write += 1;
                self.crash(n, "crash between two disk writes");
                let after = 100 + self.rng.below(2_000);
                self.schedule_restart(n, after);
                return;
            }
            self.fail(format!(
                "node {n}: the quorum node failed (the runtime would exit): {e}"
            ));
            return;
        }
        let Output {
            messages,
            applied,
            changed,
        } = self.quorum(n).take_output();
        let from = self.nodes[n].id;
        for (to, message) in messages {
            self.send(from, to, message);
        }
        let mut registered_now = false;
        for applied in applied {
            self.stats.outcomes += 1;
            let key = (
                self.nodes[n].id,
                self.nodes[n].incarnation,
                applied.proposal,
            );
            if !self.checker.reported.insert(key) {
                self.fail(format!(
                    "node {n}: proposal #{:x} applied twice ({})",
                    applied.proposal,
                    outcome_name(&applied.outcome)
                ));
                return;
            }
            let node = &mut self.nodes[n];
            if let Session::Registering {
                proposal: Some(p), ..
            } = node.session
            {
                if p == applied.proposal {
                    registered_now = self.registration_outcome(n, applied.outcome);
                    continue;
                }
            }
            if let Some(op) = self.nodes[n].clients.remove(&applied.proposal) {
                if op.again {
                    self.stats.outcomes_after_reproposal += 1;
                }
                self.client_outcome(n, op, applied.outcome);
            }
        }
        let mut mine_after_flush = None;
        if changed {
            let node = &self.nodes[n];
            let q = node.quorum.as_ref().expect("running");
            let mine = q
                .state()
                .brokers
                .get(&node.id)
                .is_some_and(|b| b.incarnation == q.incarnation());
            if node.registered && !mine {
                self.note(
                    format!("node {n}: its session was ended by the quorum"),
                    Some(n),
                );
            }
            self.nodes[n].registered = mine;
            mine_after_flush = Some(mine);
        }
        if registered_now {
            if mine_after_flush == Some(false) {
                self.stats.stale_registered_flag += 1;
                self.note(
                    format!("node {n}: registered flag set though its session is gone"),
                    Some(n),
                );
            }
            // The waiting session loop runs after `flush`, and sets the flag last.
            self.nodes[n].registered = true;
        }
        self.observe(n);
    }

    fn observe(&mut self, n: usize) {
        let node = &self.nodes[n];
        let Some(q) = node.quorum.as_ref() else {
            return;
        };
        let index = q.applied_index();
        self.stats.max_term = self.stats.max_term.max(q.term());
        self.stats.max_applied_index = self.stats.max_applied_index.max(index);
        match node.observed_index {
            Some(seen) if seen == index => return,
            Some(seen) if seen > index => {
                let what = format!("node {n}: applied index went backwards from {seen} to {index}");
                self.fail(what);
                return;
            }
            _ => {}
        }
        let result = self.checker.observe(node.id, index, q.state());
        self.nodes[n].observed_index = Some(index);
        if let Err(what) = result {
            self.fail(what);
        }
    }

    /// Records an outcome told to node `n`'s proposer as a fact.
    fn learn(&mut self, n: usize, fact: Fact) {
        let index = self.nodes[n]
            .quorum
            .as_ref()
            .map_or(0, |q| q.applied_index());
        if let Err(what) = self.checker.learn(index, fact) {
            self.fail(what);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lying_disk_forgets_unsynced_writes_on_a_crash() {
        let disk = Rc::new(RefCell::new(SimDisk::new(DiskFault::LosesUnsynced)));
        let mut handle = SimDiskHandle(disk.clone());
        let entry = |index| Entry {
            index,
            term: 1,
            ..Default::default()
        };
        handle.append(&[entry(1)]).unwrap();
        disk.borrow_mut().write_back();
        handle.append(&[entry(2)]).unwrap();
        disk.borrow_mut().crash();
        assert_eq!(disk.borrow().written.last_index(), 1);
    }

    #[test]
    fn an_honest_disk_keeps_everything_and_applies_the_conflict_rule() {
        let disk = Rc::new(RefCell::new(SimDisk::new(DiskFault::None)));
        let mut handle = SimDiskHandle(disk.clone());
        let entry = |index, term| Entry {
            index,
            term,
            ..Default::default()
        };
        handle
            .append(&[entry(1, 1), entry(2, 1), entry(3, 1)])
            .unwrap();
        handle.append(&[entry(2, 2)]).unwrap();
        assert!(handle.append(&[entry(5, 2)]).is_err(), "a gap");
        disk.borrow_mut().crash();
        let terms: Vec<(u64, u64)> = disk
            .borrow()
            .written
            .entries
            .iter()
            .map(|e| (e.index, e.term))
            .collect();
        assert_eq!(terms, vec![(1, 1), (2, 2)]);
    }
}
