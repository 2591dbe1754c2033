//! The simulated brokers: the runtime's session loop (heartbeats, registration, noticing a fence).

use super::*;

impl Sim {
    pub(super) fn schedule_session(&mut self, n: usize, delay_ms: u64) {
        self.nodes[n].session_token += 1;
        let token = self.nodes[n].session_token;
        self.schedule(delay_ms, Event::Session { node: n, token });
    }

    pub(super) fn session(&mut self, n: usize) {
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

    pub(super) fn propose_registration(&mut self, n: usize, deadline_ms: u64) {
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
    pub(super) fn registration_outcome(&mut self, n: usize, outcome: Outcome) -> bool {
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
}
