//! The simulated clients: proposals at random nodes, re-proposed until an outcome, and the outcomes
//! checked against what committed.

use super::*;

impl Sim {
    pub(super) fn client(&mut self) {
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
    pub(super) fn await_outcome(&mut self, n: usize, proposal: u64, command: Command) {
        let op = ClientOp {
            command,
            proposed_ms: self.now_ms,
            again: false,
        };
        self.nodes[n].clients.insert(proposal, op);
    }

    /// Proposes node `n`'s client ops that have waited [`REPROPOSE_AFTER_MS`] for an outcome
    /// again, under their ids.
    pub(super) fn propose_pending_again(&mut self, n: usize) {
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
    pub(super) fn client_command(&mut self, n: usize) -> Command {
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
    pub(super) fn alter_partition(&mut self, node_id: i32, state: &ClusterState) -> Command {
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

    pub(super) fn client_outcome(&mut self, n: usize, op: ClientOp, outcome: Outcome) {
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
}
