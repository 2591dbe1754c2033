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

mod checker;
mod disk;
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

    // --- brokers: the runtime's session loop ---

    fn schedule_session(&mut self, n: usize, delay_ms: u64) {
        self.nodes[n].session_token += 1;
        let token = self.nodes[n].session_token;
        self.schedule(delay_ms, Event::Session { node: n, token });
    }

    fn session(&mut self, n: usize) {
        let interval = self.config.heartbeat_interval_ms;
        match self.nodes[n].session {
            Session::Idle => {
                let (id, incarnation) = (self.nodes[n].id, self.nodes[n].incarnation);
                let local = self.local_now(n);
                self.quorum(n).record_heartbeat(id, incarnation, local);
                for to in self.voters.clone() {
                    if to != id {
                        self.send(
                            id,
                            to,
                            PeerMessage::Heartbeat {
                                node_id: id,
                                incarnation,
                            },
                        );
                    }
                }
                if self.nodes[n].registered {
                    self.schedule_session(n, interval);
                } else {
                    let deadline_ms = self.now_ms + interval.max(REGISTRATION_TIMEOUT_MIN_MS);
                    self.propose_registration(n, deadline_ms);
                }
            }
            Session::Registering {
                deadline_ms,
                proposal,
            } => {
                if self.now_ms >= deadline_ms {
                    self.note(format!("node {n}: registration timed out"), Some(n));
                    self.nodes[n].session = Session::Idle;
                    self.schedule_session(n, interval);
                } else if proposal.is_none() {
                    self.propose_registration(n, deadline_ms);
                } else {
                    // Woken early (a resume): keep waiting for the outcome.
                    self.schedule_session(n, deadline_ms - self.now_ms);
                }
            }
        }
    }

    fn propose_registration(&mut self, n: usize, deadline_ms: u64) {
        let node = &self.nodes[n];
        let command = Command::RegisterBroker {
            node_id: node.id,
            incarnation: node.incarnation,
            host: "localhost".to_string(),
            port: 9092 + node.id as u16,
            rack: None,
        };
        let proposed = self.quorum(n).propose(command);
        self.stats.proposals += 1;
        match proposed {
            Ok(proposal) => {
                self.nodes[n].session = Session::Registering {
                    deadline_ms,
                    proposal: Some(proposal),
                };
                self.note(format!("node {n}: proposes its registration"), Some(n));
                self.schedule_session(n, deadline_ms - self.now_ms);
            }
            Err(_) => {
                self.stats.no_leader += 1;
                self.nodes[n].session = Session::Registering {
                    deadline_ms,
                    proposal: None,
                };
                let retry = NO_LEADER_RETRY_MS.min(deadline_ms - self.now_ms);
                self.schedule_session(n, retry);
            }
        }
        self.after_input(n, Ok(()));
    }

    /// Handles the session loop's registration outcome; true if it registered.
    fn registration_outcome(&mut self, n: usize, outcome: Outcome) -> bool {
        let (id, incarnation) = (self.nodes[n].id, self.nodes[n].incarnation);
        self.note(
            format!("node {n}: registration outcome {outcome:?}"),
            Some(n),
        );
        self.nodes[n].session = Session::Idle;
        let interval = self.config.heartbeat_interval_ms;
        self.schedule_session(n, interval);
        let Outcome::Registered { sequence } = outcome else {
            return false;
        };
        self.stats.registrations += 1;
        if self.nodes[n].stopping {
            self.stats.reregistered_while_stopping += 1;
        }
        if let Some(&(other, other_incarnation)) = self.checker.sequences.get(&sequence) {
            if (other, other_incarnation) != (id, incarnation) {
                self.fail(format!(
                    "registration sequence {sequence} told to {id}/{incarnation:x} and to \
                     {other}/{other_incarnation:x}"
                ));
            }
        }
        self.checker.sequences.insert(sequence, (id, incarnation));
        self.learn(n, Fact::Registration { sequence });
        true
    }

    // --- clients ---

    fn client(&mut self) {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| self.nodes[n].running())
            .collect();
        if running.is_empty() {
            return;
        }
        let n = running[self.rng.below(running.len() as u64) as usize];
        self.propose_pending_again(n);
        let command = self.client_command(n);
        let proposed = self.quorum(n).propose(command.clone());
        self.stats.proposals += 1;
        let text = match proposed {
            Ok(proposal) => {
                self.await_outcome(n, proposal, command);
                format!("client at node {n} proposes #{proposal:x}")
            }
            Err(_) => {
                self.stats.no_leader += 1;
                format!(
                    "client at node {n}: no leader for {}",
                    command_name(&command)
                )
            }
        };
        self.note(text, Some(n));
        self.after_input(n, Ok(()));
    }

    /// Node `n` waits for the outcome of its `proposal` of `command`.
    fn await_outcome(&mut self, n: usize, proposal: u64, command: Command) {
        let op = ClientOp {
            command,
            proposed_ms: self.now_ms,
            again: false,
        };
        self.nodes[n].clients.insert(proposal, op);
    }

    /// Proposes node `n`'s client ops that have waited [`REPROPOSE_AFTER_MS`] for an outcome
    /// again, under their ids.
    fn propose_pending_again(&mut self, n: usize) {
        let now_ms = self.now_ms;
        let due: Vec<(u64, Command)> = self.nodes[n]
            .clients
            .iter()
            .filter(|(_, op)| now_ms >= op.proposed_ms + REPROPOSE_AFTER_MS)
            .map(|(&id, op)| (id, op.command.clone()))
            .collect();
        for (id, command) in due {
            if self.quorum(n).propose_again(id, command).is_ok() {
                self.stats.reproposals += 1;
                if let Some(op) = self.nodes[n].clients.get_mut(&id) {
                    op.proposed_ms = now_ms;
                    op.again = true;
                }
                self.note(
                    format!("client at node {n} proposes #{id:x} again"),
                    Some(n),
                );
            }
        }
    }

    /// A random client command, built from node `n`'s view as a real client's would be.
    fn client_command(&mut self, n: usize) -> Command {
        let node_id = self.nodes[n].id;
        let state = self.nodes[n]
            .quorum
            .as_ref()
            .expect("running")
            .state()
            .clone();
        let existing: Vec<&String> = state.topics.keys().collect();
        let any_name = TOPIC_NAMES[self.rng.below(TOPIC_NAMES.len() as u64) as usize].to_string();
        let existing_name = |rng: &mut Rng| {
            if existing.is_empty() || rng.below(4) == 0 {
                any_name.clone()
            } else {
                existing[rng.below(existing.len() as u64) as usize].clone()
            }
        };
        match self.rng.below(100) {
            0..=29 => {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&self.rng.next_u64().to_le_bytes());
                id[8..].copy_from_slice(&self.rng.next_u64().to_le_bytes());
                let mut configs = Vec::new();
                if self.rng.below(4) == 0 {
                    configs.push((
                        "unclean.leader.election.enable".to_string(),
                        "true".to_string(),
                    ));
                }
                Command::CreateTopic {
                    topic: NewTopic {
                        name: any_name,
                        id,
                        partitions: 1 + self.rng.below(3) as i32,
                        replication_factor: 1 + self.rng.below(3) as i16,
                        configs,
                    },
                    max_partitions: MAX_PARTITIONS,
                }
            }
            30..=39 => Command::DeleteTopic {
                name: existing_name(&mut self.rng),
            },
            40..=54 => {
                let name = existing_name(&mut self.rng);
                let current = state.topics.get(&name).map_or(1, |t| t.partitions.len());
                Command::CreatePartitions {
                    name,
                    count: (current + 1 + self.rng.below(2) as usize) as i32,
                    max_partitions: MAX_PARTITIONS,
                }
            }
            55..=64 => Command::AllocateProducerIds { node_id },
            _ => self.alter_partition(node_id, &state),
        }
    }

    /// An ISR change as the leader of a partition would propose it (this node leads it in its
    /// own view), or, when it leads none, a stale one that must be refused.
    fn alter_partition(&mut self, node_id: i32, state: &ClusterState) -> Command {
        let mut led = Vec::new();
        let mut all = Vec::new();
        for (name, topic) in &state.topics {
            for (p, partition) in topic.partitions.iter().enumerate() {
                all.push((name.clone(), p, partition.clone()));
                if partition.leader == node_id {
                    led.push((name.clone(), p, partition.clone()));
                }
            }
        }
        let pool = if led.is_empty() { &all } else { &led };
        let Some((topic, p, partition)) = pool
            .get(self.rng.below(pool.len().max(1) as u64) as usize)
            .cloned()
        else {
            return Command::AlterPartition {
                topic: "t0".to_string(),
                partition: 0,
                leader: node_id,
                leader_epoch: 0,
                partition_epoch: 0,
                isr: vec![node_id],
            };
        };
        // The leader plus a random subset of the replicas (shrink, expand or both).
        let mut isr = vec![partition.leader.max(node_id)];
        for &r in &partition.replicas {
            if r != isr[0] && self.rng.below(2) == 0 {
                isr.push(r);
            }
        }
        let stale = self.rng.below(10) == 0;
        Command::AlterPartition {
            topic,
            partition: p as i32,
            leader: partition.leader.max(node_id),
            leader_epoch: partition.leader_epoch - stale as i32,
            partition_epoch: partition.partition_epoch,
            isr,
        }
    }

    fn client_outcome(&mut self, n: usize, op: ClientOp, outcome: Outcome) {
        self.note(
            format!(
                "node {n}: {} -> {}",
                command_name(&op.command),
                outcome_name(&outcome)
            ),
            Some(n),
        );
        match (op.command, outcome) {
            (Command::CreateTopic { topic, .. }, Outcome::Done) => {
                self.stats.topics_created += 1;
                self.learn(
                    n,
                    Fact::Topic {
                        name: topic.name,
                        id: topic.id,
                    },
                );
            }
            (Command::CreatePartitions { name, count, .. }, Outcome::Done) => {
                // The topic as the proposer sees it now; when a delete and a re-create of the
                // name were applied in the same batch, it is another topic: learn nothing.
                let id = self.nodes[n].quorum.as_ref().and_then(|q| {
                    q.state()
                        .topics
                        .get(&name)
                        .filter(|t| t.partitions.len() >= count as usize)
                        .map(|t| t.id)
                });
                if let Some(id) = id {
                    self.learn(
                        n,
                        Fact::Partitions {
                            name,
                            id,
                            count: count as usize,
                        },
                    );
                }
            }
            (Command::AllocateProducerIds { node_id }, Outcome::ProducerIds { first, count }) => {
                if let Some(&(other, _)) = self.checker.producer_blocks.get(&first) {
                    self.fail(format!(
                        "producer id block {first} handed to node {node_id} and earlier to \
                         node {other}"
                    ));
                    return;
                }
                self.checker.producer_blocks.insert(first, (node_id, 0));
                self.learn(n, Fact::ProducerBlock { end: first + count });
            }
            (
                Command::FenceBroker {
                    node_id,
                    incarnation,
                },
                Outcome::Done,
            ) => {
                // Registered again already (same process, after the fence): that sequence or
                // later; otherwise any registration from here on.
                let min_sequence = self.nodes[n].quorum.as_ref().map_or(0, |q| {
                    let state = q.state();
                    match state.brokers.get(&node_id) {
                        Some(b) if b.incarnation == incarnation => b.sequence,
                        _ => state.next_registration_sequence,
                    }
                });
                self.learn(
                    n,
                    Fact::Fenced {
                        node_id,
                        incarnation,
                        min_sequence,
                    },
                );
            }
            _ => {}
        }
    }

    // --- faults ---

    fn fault(&mut self) {
        let n = self.rng.below(self.nodes.len() as u64) as usize;
        match self.rng.below(100) {
            0..=19 => {
                if self.nodes[n].up() {
                    self.crash(n, "crash (kill -9)");
                    let after = 100 + self.rng.below(3_000);
                    self.schedule_restart(n, after);
                } else if !self.nodes[n].restart_due {
                    self.schedule_restart(n, 0);
                }
            }
            20..=26 => {
                if self.nodes[n].running() {
                    self.clean_stop(n);
                }
            }
            27..=41 => {
                if self.nodes[n].running() {
                    let pause = 100 + self.rng.below(2 * self.config.session_timeout_ms + 500);
                    self.pause(n, pause);
                }
            }
            42..=71 => self.partition(),
            72..=83 => self.change_weather(),
            84..=91 => {
                if self.nodes[n].running() {
                    let writes = self.rng.below(4) as u32;
                    self.nodes[n].disk.borrow_mut().crash_after_writes = Some(writes);
                    self.note(format!("node {n}: dies within {writes} disk writes"), None);
                }
            }
            _ => {
                // Restart whatever is down, so the cluster is not starved for long.
                for n in 0..self.nodes.len() {
                    if !self.nodes[n].up() && !self.nodes[n].restart_due {
                        let after = self.rng.below(500);
                        self.schedule_restart(n, after);
                    }
                }
            }
        }
    }

    fn schedule_restart(&mut self, n: usize, delay_ms: u64) {
        self.nodes[n].restart_due = true;
        self.schedule(delay_ms, Event::Restart { node: n });
    }

    fn crash(&mut self, n: usize, why: &str) {
        self.stats.crashes += 1;
        let node = &mut self.nodes[n];
        node.quorum = None;
        node.generation += 1;
        node.session_token += 1;
        node.paused_until_ms = None;
        node.inbox.clear();
        node.clients.clear();
        node.registered = false;
        node.session = Session::Idle;
        node.observed_index = None;
        node.restart_due = false;
        node.stopping = false;
        node.disk.borrow_mut().crash();
        self.note(format!("node {n}: {why}"), None);
    }

    /// `Coordinator::unregister` then exit: the broker fences its own session first.
    fn clean_stop(&mut self, n: usize) {
        self.stats.clean_stops += 1;
        let node = &self.nodes[n];
        let command = Command::FenceBroker {
            node_id: node.id,
            incarnation: node.incarnation,
        };
        let was_registered = node.registered;
        self.nodes[n].stopping = true;
        if was_registered {
            if let Ok(proposal) = self.quorum(n).propose(command.clone()) {
                self.await_outcome(n, proposal, command);
            }
        }
        self.note(format!("node {n}: clean stop"), Some(n));
        self.after_input(n, Ok(()));
        let generation = self.nodes[n].generation;
        let exit_after = if was_registered {
            50 + self.rng.below(1_500)
        } else {
            0
        };
        self.schedule(
            exit_after,
            Event::Crash {
                node: n,
                generation,
            },
        );
        let restart_after = exit_after + 200 + self.rng.below(2_000);
        self.schedule_restart(n, restart_after);
    }

    fn restart(&mut self, n: usize) {
        let incarnation = self.rng.next_u64();
        let seed = self.rng.next_u64();
        let (recovered, disk_commit) = {
            let disk = self.nodes[n].disk.borrow();
            (disk.written.recovered(), disk.written.hard_state.commit)
        };
        let mut quorum_config = QuorumConfig::new(
            self.nodes[n].id,
            self.voters.clone(),
            self.config.session_timeout_ms,
        );
        quorum_config.snapshot_every_entries = self.config.snapshot_every_entries;
        self.checker
            .incarnations
            .entry(self.nodes[n].id)
            .or_default()
            .insert(incarnation);
        let disk = Box::new(SimDiskHandle(self.nodes[n].disk.clone()));
        // The process clock starts at zero, as `Coordinator::open` passes `now_ms = 0`.
        let opened = QuorumNode::open(quorum_config, incarnation, seed, recovered, disk, 0);
        let quorum = match opened {
            Ok(quorum) => quorum,
            Err(e) => {
                self.fail(format!("node {n}: restart failed: {e}"));
                return;
            }
        };
        let applied = quorum.applied_index();
        let node = &mut self.nodes[n];
        node.quorum = Some(quorum);
        node.generation += 1;
        node.started_at_ms = self.now_ms;
        node.incarnation = incarnation;
        node.registered = false;
        node.session = Session::Idle;
        node.restart_due = false;
        node.observed_index = None;
        let generation = node.generation;
        self.note(
            format!("node {n}: start, incarnation {incarnation:x}, disk commit {disk_commit}"),
            Some(n),
        );
        if applied < disk_commit {
            self.fail(format!(
                "node {n}: restarted at applied index {applied}, below the commit index \
                 {disk_commit} its disk held"
            ));
            return;
        }
        self.after_input(n, Ok(()));
        self.schedule(
            1,
            Event::Tick {
                node: n,
                generation,
            },
        );
        self.schedule_session(n, 0);
        if self.config.disk_fault != DiskFault::None {
            let next = 1_000 + self.rng.below(3_000);
            self.schedule(next, Event::WriteBack { node: n });
        }
    }

    fn pause(&mut self, n: usize, pause_ms: u64) {
        self.stats.pauses += 1;
        let node = &mut self.nodes[n];
        node.generation += 1;
        node.paused_until_ms = Some(self.now_ms + pause_ms);
        let generation = node.generation;
        self.note(format!("node {n}: paused for {pause_ms} ms"), None);
        self.schedule(
            pause_ms,
            Event::Resume {
                node: n,
                generation,
            },
        );
    }

    fn resume(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        node.paused_until_ms = None;
        node.generation += 1;
        let generation = node.generation;
        let inbox = std::mem::take(&mut node.inbox);
        self.note(
            format!("node {n}: resumed with {} queued messages", inbox.len()),
            Some(n),
        );
        // After SIGCONT the timer and the sockets race; either may go first.
        let tick_first = self.rng.below(2) == 0;
        if tick_first {
            self.schedule(
                0,
                Event::Tick {
                    node: n,
                    generation,
                },
            );
        }
        for (from, message) in inbox {
            if self.failure.is_some() || !self.nodes[n].running() {
                return;
            }
            self.deliver(from, self.nodes[n].id, message);
        }
        if !tick_first {
            self.schedule(
                0,
                Event::Tick {
                    node: n,
                    generation,
                },
            );
        }
        // The session loop's overdue timer fires at once.
        self.schedule_session(n, 0);
    }

    fn partition(&mut self) {
        self.stats.partitions += 1;
        let count = self.nodes.len() as i32;
        let mut links = Vec::new();
        match self.rng.below(3) {
            0 => {
                // Isolate one node both ways.
                let lone = self.rng.below(count as u64) as i32;
                for other in (0..count).filter(|&o| o != lone) {
                    links.push((lone, other));
                    links.push((other, lone));
                }
            }
            1 => {
                // Split in two random groups.
                let side: Vec<bool> = (0..count).map(|_| self.rng.below(2) == 0).collect();
                for a in 0..count {
                    for b in 0..count {
                        if side[a as usize] != side[b as usize] {
                            links.push((a, b));
                        }
                    }
                }
            }
            _ => {
                // One way only: a sends, b does not hear (a firewall rule, a half-dead link).
                let a = self.rng.below(count as u64) as i32;
                let b = (a + 1 + self.rng.below(count as u64 - 1) as i32) % count;
                links.push((a, b));
            }
        }
        for link in &links {
            *self.cut.entry(*link).or_default() += 1;
        }
        let heal_after = 200 + self.rng.below(5_000);
        self.note(
            format!("partition for {heal_after} ms, cut {links:?}"),
            None,
        );
        self.schedule(heal_after, Event::Heal { links });
    }

    fn change_weather(&mut self) {
        const DROPS: [u64; 5] = [0, 10, 50, 100, 300];
        const DUPLICATES: [u64; 3] = [0, 20, 100];
        const SLOW: [u64; 3] = [0, 10, 50];
        self.weather = Weather {
            drop_per_mille: DROPS[self.rng.below(DROPS.len() as u64) as usize],
            duplicate_per_mille: DUPLICATES[self.rng.below(DUPLICATES.len() as u64) as usize],
            min_delay_ms: 1 + self.rng.below(5),
            jitter_ms: self.rng.below(40),
            slow_per_mille: SLOW[self.rng.below(SLOW.len() as u64) as usize],
        };
        let weather = self.weather;
        self.note(format!("network: {weather:?}"), None);
    }

    // --- the quiet phase ---

    fn end_faults(&mut self) {
        self.faults_on = false;
        self.cut.clear();
        self.weather = Weather::calm();
        self.note(
            "faults end: network healed, everyone back".to_string(),
            None,
        );
        for n in 0..self.nodes.len() {
            if !self.nodes[n].up() {
                self.restart(n);
            } else if self.nodes[n].paused_until_ms.is_some() {
                self.resume(n);
            }
            if self.failure.is_some() {
                return;
            }
            // No more crashes: a lying disk's promises do not matter any more.
            let mut disk = self.nodes[n].disk.borrow_mut();
            disk.crash_after_writes = None;
            disk.write_back();
        }
        self.schedule(CONVERGENCE_CHECK_MS, Event::CheckConverged);
    }

    fn check_converged(&mut self) {
        match self.convergence() {
            Ok(index) => match self.converged_since {
                Some((since, at)) if at == index => {
                    // Stable for a whole session timeout: no broker is about to be fenced.
                    if self.now_ms - since >= self.config.session_timeout_ms + 500 {
                        self.note(format!("converged at applied index {index}"), None);
                        self.done = true;
                        return;
                    }
                }
                _ => {
                    if self.converged_since.is_none() && self.stats.convergence_ms == 0 {
                        self.stats.convergence_ms = self.now_ms - self.fault_phase_end_ms;
                    }
                    self.converged_since = Some((self.now_ms, index));
                }
            },
            Err(_) => self.converged_since = None,
        }
        self.schedule(CONVERGENCE_CHECK_MS, Event::CheckConverged);
    }

    /// Whether the cluster has settled: the applied index all agree on, or what is missing.
    fn convergence(&self) -> Result<u64, String> {
        let mut first: Option<&QuorumNode> = None;
        for node in &self.nodes {
            let Some(q) = node.quorum.as_ref().filter(|_| node.running()) else {
                return Err(format!("node {} is not running", node.id));
            };
            let reference = *first.get_or_insert(q);
            if q.applied_index() != reference.applied_index() || q.state() != reference.state() {
                return Err(format!(
                    "node {} at applied index {} and node {} at {} differ",
                    node.id,
                    q.applied_index(),
                    reference.node_id(),
                    reference.applied_index()
                ));
            }
            if q.leader().is_none() {
                return Err(format!("node {} knows no quorum leader", node.id));
            }
            let registered = q.state().brokers.get(&node.id);
            if registered.map(|b| b.incarnation) != Some(q.incarnation()) {
                return Err(format!(
                    "broker {} is not registered with its incarnation {:x}",
                    node.id,
                    q.incarnation()
                ));
            }
            if !node.registered {
                return Err(format!("broker {} does not know it is registered", node.id));
            }
        }
        let q = first.expect("at least one node");
        let state = q.state();
        if state.cluster_id.is_empty() {
            return Err("no cluster id".to_string());
        }
        if state.brokers.len() != self.nodes.len() {
            return Err(format!("brokers {:?} registered", state.brokers.keys()));
        }
        for (name, topic) in &state.topics {
            for (p, partition) in topic.partitions.iter().enumerate() {
                let live_isr = partition.isr.iter().any(|r| state.brokers.contains_key(r));
                if partition.leader == -1 && live_isr {
                    return Err(format!(
                        "{name}-{p} is leaderless with live in-sync replicas {:?}",
                        partition.isr
                    ));
                }
            }
        }
        Ok(q.applied_index())
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
