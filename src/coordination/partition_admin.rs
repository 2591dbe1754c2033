//! Operator-driven changes to partitions: leader elections (ElectLeaders) and replica
//! reassignments (AlterPartitionReassignments), as `ClusterState` transitions. Pure, like the
//! rest of the state machine: every voter reaches the same result from the same command.
//!
//! A reassignment follows Kafka's plan: the replica set becomes target + removing replicas;
//! adding replicas start as followers and catch up; when every target replica is in the ISR
//! (checked on each ISR change), the replica set becomes the target, the ISR loses the removed
//! replicas and leadership moves if the leader was removed. Cancelling reverts to the original
//! replicas.

use kafka_protocol::ResponseError;

use super::state_machine::{ClusterState, Outcome, PartitionOutcome, PartitionState};

/// Why a partition was not elected or reassigned, with Kafka's message.
type PartitionError = (ResponseError, String);

fn unknown_partition(topic: &str, partition: i32) -> PartitionError {
    (
        ResponseError::UnknownTopicOrPartition,
        format!("The partition {topic}-{partition} does not exist."),
    )
}

impl ClusterState {
    /// ElectLeaders for `partitions` (every partition when `None`; then partitions that need no
    /// election are left out of the answer, as Kafka does).
    pub(super) fn elect_requested_leaders(
        &mut self,
        unclean: bool,
        partitions: Option<Vec<(String, i32)>>,
    ) -> Outcome {
        let all = partitions.is_none();
        let partitions = partitions.unwrap_or_else(|| {
            self.topics
                .iter()
                .flat_map(|(name, t)| (0..t.partitions.len() as i32).map(|p| (name.clone(), p)))
                .collect()
        });
        let mut results: Vec<PartitionOutcome> = Vec::new();
        for (topic, partition) in partitions {
            let error = self.elect_one(&topic, partition, unclean).err();
            if all && matches!(&error, Some((ResponseError::ElectionNotNeeded, _))) {
                continue;
            }
            results.push((topic, partition, error));
        }
        Outcome::Partitions(results)
    }

    fn elect_one(&mut self, topic: &str, index: i32, unclean: bool) -> Result<(), PartitionError> {
        let live = |r: &i32| self.brokers.contains_key(r);
        let sequence = |r: &i32| self.brokers.get(r).map(|b| b.sequence);
        let p = self
            .topics
            .get(topic)
            .and_then(|t| t.partitions.get(usize::try_from(index).ok()?))
            .ok_or_else(|| unknown_partition(topic, index))?;
        let not_needed = || {
            (
                ResponseError::ElectionNotNeeded,
                format!("Leader election not needed for topic partition {topic}-{index}"),
            )
        };
        let (leader, isr) = if unclean {
            if p.leader != -1 {
                return Err(not_needed());
            }
            // In-sync replicas first; else any live replica, which then is the whole ISR.
            let clean = p.isr.iter().filter(|r| live(r)).min_by_key(|r| sequence(r));
            match clean {
                Some(&leader) => (leader, None),
                None => match p
                    .replicas
                    .iter()
                    .filter(|r| live(r))
                    .min_by_key(|r| sequence(r))
                {
                    Some(&leader) => (leader, Some(vec![leader])),
                    None => {
                        return Err((
                            ResponseError::EligibleLeadersNotAvailable,
                            format!("No live replica of {topic}-{index} can be elected"),
                        ))
                    }
                },
            }
        } else {
            let preferred = p.replicas[0];
            if p.leader == preferred {
                return Err(not_needed());
            }
            if !live(&preferred) || !p.isr.contains(&preferred) {
                return Err((
                    ResponseError::PreferredLeaderNotAvailable,
                    format!(
                        "Failed to elect leader for partition {topic}-{index} under strategy \
                         PreferredReplicaPartitionLeaderElectionStrategy: preferred replica \
                         {preferred} is not live and in sync"
                    ),
                ));
            }
            (preferred, None)
        };
        let p = self.partition_mut(topic, index).expect("checked above");
        if p.leader != leader {
            p.leader = leader;
            p.leader_epoch += 1;
            p.partition_epoch += 1;
        }
        if let Some(isr) = isr {
            p.isr = isr;
            p.partition_epoch += 1;
        }
        Ok(())
    }

    fn partition_mut(&mut self, topic: &str, index: i32) -> Option<&mut PartitionState> {
        self.topics
            .get_mut(topic)?
            .partitions
            .get_mut(usize::try_from(index).ok()?)
    }

    /// AlterPartitionReassignments: starts (or replaces, or cancels) each partition's
    /// reassignment; each partition succeeds or fails on its own.
    pub(super) fn reassign_partitions(
        &mut self,
        reassignments: Vec<(String, i32, Option<Vec<i32>>)>,
    ) -> Outcome {
        let results = reassignments
            .into_iter()
            .map(|(topic, index, target)| {
                let result = match target {
                    Some(target) => self.start_reassignment(&topic, index, target),
                    None => self.cancel_reassignment(&topic, index),
                };
                (topic, index, result.err())
            })
            .collect();
        Outcome::Partitions(results)
    }

    fn start_reassignment(
        &mut self,
        topic: &str,
        index: i32,
        target: Vec<i32>,
    ) -> Result<(), PartitionError> {
        let invalid = |m: String| (ResponseError::InvalidReplicaAssignment, m);
        let live: Vec<i32> = self.brokers.keys().copied().collect();
        if target.is_empty() {
            return Err(invalid(
                "The manual partition assignment includes an empty replica list.".into(),
            ));
        }
        if target.len() > self.brokers.len() {
            // Longer than the live brokers: a duplicate or an unknown broker, found without
            // comparing every pair of a huge list.
            return Err(invalid(format!(
                "The manual partition assignment has {} replicas but only {} brokers are \
                 registered.",
                target.len(),
                self.brokers.len()
            )));
        }
        for (i, r) in target.iter().enumerate() {
            if target[..i].contains(r) {
                return Err(invalid(format!(
                    "The manual partition assignment includes the broker {r} more than once."
                )));
            }
            if !self.brokers.contains_key(r) {
                return Err(invalid(format!(
                    "The manual partition assignment includes broker {r}, but no such broker \
                     is registered."
                )));
            }
        }
        let p = self
            .partition_mut(topic, index)
            .ok_or_else(|| unknown_partition(topic, index))?;
        // A new target replaces a running reassignment: it starts from the original replicas.
        let original = replicas_before_reassignment(p);
        let adding: Vec<i32> = target
            .iter()
            .copied()
            .filter(|r| !original.contains(r))
            .collect();
        let removing: Vec<i32> = original
            .iter()
            .copied()
            .filter(|r| !target.contains(r))
            .collect();
        let mut replicas = target.clone();
        replicas.extend(&removing);
        if (replicas.clone(), adding.clone(), removing.clone())
            == (
                p.replicas.clone(),
                p.adding_replicas.clone(),
                p.removing_replicas.clone(),
            )
        {
            return Ok(());
        }
        // Replacing a running reassignment drops the joiners the new target does not keep;
        // the ISR must keep a member.
        let isr: Vec<i32> = p
            .isr
            .iter()
            .copied()
            .filter(|r| replicas.contains(r))
            .collect();
        if isr.is_empty() {
            return Err(invalid(format!(
                "The new target of {topic}-{index} would leave no in-sync replica"
            )));
        }
        p.replicas = replicas;
        p.adding_replicas = adding;
        p.removing_replicas = removing;
        p.isr = isr;
        p.partition_epoch += 1;
        move_leader_into(p, &live);
        self.complete_reassignment_if_caught_up(topic, index);
        Ok(())
    }

    fn cancel_reassignment(&mut self, topic: &str, index: i32) -> Result<(), PartitionError> {
        let live: Vec<i32> = self.brokers.keys().copied().collect();
        let p = self
            .partition_mut(topic, index)
            .ok_or_else(|| unknown_partition(topic, index))?;
        if p.adding_replicas.is_empty() && p.removing_replicas.is_empty() {
            return Err((
                ResponseError::NoReassignmentInProgress,
                format!("No ongoing reassignment for {topic}-{index}"),
            ));
        }
        let original = replicas_before_reassignment(p);
        let isr: Vec<i32> = p
            .isr
            .iter()
            .copied()
            .filter(|r| original.contains(r))
            .collect();
        if isr.is_empty() {
            return Err((
                ResponseError::InvalidReplicaAssignment,
                format!(
                    "Cancelling the reassignment of {topic}-{index} would leave no in-sync \
                     replica; reassign it instead"
                ),
            ));
        }
        p.replicas = original;
        p.adding_replicas.clear();
        p.removing_replicas.clear();
        p.isr = isr;
        p.partition_epoch += 1;
        move_leader_into(p, &live);
        Ok(())
    }

    /// Ends the reassignment of `topic`-`index` if every target replica is in the ISR.
    pub(super) fn complete_reassignment_if_caught_up(&mut self, topic: &str, index: i32) {
        let live: Vec<i32> = self.brokers.keys().copied().collect();
        let Some(p) = self.partition_mut(topic, index) else {
            return;
        };
        if p.adding_replicas.is_empty() && p.removing_replicas.is_empty() {
            return;
        }
        let target: Vec<i32> = p
            .replicas
            .iter()
            .copied()
            .filter(|r| !p.removing_replicas.contains(r))
            .collect();
        if !target.iter().all(|r| p.isr.contains(r)) {
            return;
        }
        p.isr.retain(|r| target.contains(r));
        p.replicas = target;
        p.adding_replicas.clear();
        p.removing_replicas.clear();
        p.partition_epoch += 1;
        move_leader_into(p, &live);
    }

    /// Partitions with a reassignment in progress: (topic, index, state).
    pub fn ongoing_reassignments(&self) -> Vec<(&str, i32, &PartitionState)> {
        self.topics
            .iter()
            .flat_map(|(name, t)| {
                t.partitions
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| {
                        !p.adding_replicas.is_empty() || !p.removing_replicas.is_empty()
                    })
                    .map(move |(i, p)| (name.as_str(), i as i32, p))
            })
            .collect()
    }
}

/// A leader that is no longer a replica hands over to the first live in-sync replica in
/// replica order (the preferred one when it can), with a new leader epoch.
/// The replicas a running reassignment started from (its joiners left out); all of them when
/// none runs.
fn replicas_before_reassignment(p: &PartitionState) -> Vec<i32> {
    p.replicas
        .iter()
        .copied()
        .filter(|r| !p.adding_replicas.contains(r))
        .collect()
}

fn move_leader_into(p: &mut PartitionState, live: &[i32]) {
    if p.replicas.contains(&p.leader) {
        return;
    }
    let leader = p
        .replicas
        .iter()
        .copied()
        .find(|r| p.isr.contains(r) && live.contains(r))
        .unwrap_or(-1);
    p.leader = leader;
    p.leader_epoch += 1;
    p.partition_epoch += 1;
}

#[cfg(test)]
mod tests {
    use super::super::state_machine::{Command, NewTopic};
    use super::*;

    fn cluster(topic_replicas: &[i32]) -> ClusterState {
        let mut state = ClusterState::default();
        for id in [1, 2, 3] {
            state.apply(Command::RegisterBroker {
                node_id: id,
                incarnation: id as u64,
                host: "h".into(),
                port: 1,
                rack: None,
            });
        }
        state.apply(Command::CreateTopic {
            topic: NewTopic {
                name: "t".into(),
                id: [7; 16],
                partitions: 1,
                replication_factor: 1,
                configs: vec![],
            },
            max_partitions: 100,
        });
        let p = &mut state.topics.get_mut("t").unwrap().partitions[0];
        p.replicas = topic_replicas.to_vec();
        p.isr = topic_replicas.to_vec();
        p.leader = topic_replicas[0];
        state
    }

    fn errors(outcome: Outcome) -> Vec<Option<ResponseError>> {
        match outcome {
            Outcome::Partitions(results) => results
                .into_iter()
                .map(|(_, _, e)| e.map(|(code, _)| code))
                .collect(),
            other => panic!("expected per-partition results, got {other:?}"),
        }
    }

    fn expand_isr(state: &mut ClusterState, isr: Vec<i32>) -> Outcome {
        let p = state.topics["t"].partitions[0].clone();
        state.apply(Command::AlterPartition {
            topic: "t".into(),
            partition: 0,
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr,
        })
    }

    fn reassign(target: Option<Vec<i32>>) -> Command {
        Command::ReassignPartitions {
            reassignments: vec![("t".into(), 0, target)],
        }
    }

    #[test]
    fn preferred_election_moves_leadership_to_the_first_replica() {
        let mut state = cluster(&[1, 2]);
        let elect = |partitions| Command::ElectLeaders {
            unclean: false,
            partitions,
        };
        let one = Some(vec![("t".to_string(), 0)]);
        assert_eq!(
            errors(state.apply(elect(one.clone()))),
            vec![Some(ResponseError::ElectionNotNeeded)]
        );
        // Every partition: those already led by their preferred replica are left out.
        assert_eq!(errors(state.apply(elect(None))), vec![]);
        state.topics.get_mut("t").unwrap().partitions[0].leader = 2;
        assert_eq!(errors(state.apply(elect(one.clone()))), vec![None]);
        let p = &state.topics["t"].partitions[0];
        assert_eq!((p.leader, p.leader_epoch), (1, 1));
        // Out of the ISR, the preferred replica cannot lead.
        let p = &mut state.topics.get_mut("t").unwrap().partitions[0];
        p.leader = 2;
        p.isr = vec![2];
        assert_eq!(
            errors(state.apply(elect(one))),
            vec![Some(ResponseError::PreferredLeaderNotAvailable)]
        );
        assert_eq!(
            errors(state.apply(elect(Some(vec![("t".into(), 1), ("u".into(), 0)])))),
            vec![
                Some(ResponseError::UnknownTopicOrPartition),
                Some(ResponseError::UnknownTopicOrPartition)
            ]
        );
    }

    #[test]
    fn unclean_election_only_for_a_partition_without_leader() {
        let mut state = cluster(&[1, 2]);
        let unclean = Command::ElectLeaders {
            unclean: true,
            partitions: Some(vec![("t".into(), 0)]),
        };
        assert_eq!(
            errors(state.apply(unclean.clone())),
            vec![Some(ResponseError::ElectionNotNeeded)]
        );
        // The ISR is only the dead broker 3; replica 2 is live but out of sync.
        let p = &mut state.topics.get_mut("t").unwrap().partitions[0];
        p.replicas = vec![3, 2];
        p.isr = vec![3];
        p.leader = -1;
        state.brokers.remove(&3);
        assert_eq!(errors(state.apply(unclean)), vec![None]);
        let p = &state.topics["t"].partitions[0];
        assert_eq!((p.leader, p.isr.clone()), (2, vec![2]));
    }

    #[test]
    fn a_reassignment_completes_when_the_targets_are_in_sync() {
        let mut state = cluster(&[1]);
        assert_eq!(errors(state.apply(reassign(Some(vec![2, 3])))), vec![None]);
        let p = state.topics["t"].partitions[0].clone();
        assert_eq!(p.replicas, vec![2, 3, 1]);
        assert_eq!(
            (p.adding_replicas, p.removing_replicas),
            (vec![2, 3], vec![1])
        );
        assert_eq!((p.leader, p.isr.clone()), (1, vec![1]));
        assert_eq!(state.ongoing_reassignments().len(), 1);
        // 2 catches up: not yet complete.
        assert_eq!(expand_isr(&mut state, vec![1, 2]), Outcome::Done);
        assert_eq!(state.topics["t"].partitions[0].replicas, vec![2, 3, 1]);
        // 3 too: the replica set becomes the target and 2 (first in sync) leads.
        assert_eq!(expand_isr(&mut state, vec![1, 2, 3]), Outcome::Done);
        let p = &state.topics["t"].partitions[0];
        assert_eq!(p.replicas, vec![2, 3]);
        assert_eq!(p.isr, vec![2, 3]);
        assert_eq!((p.leader, p.leader_epoch), (2, 1));
        assert!(p.adding_replicas.is_empty() && p.removing_replicas.is_empty());
        assert!(state.ongoing_reassignments().is_empty());
    }

    #[test]
    fn a_new_target_replaces_a_running_reassignment() {
        let mut state = cluster(&[1]);
        assert_eq!(errors(state.apply(reassign(Some(vec![2, 3])))), vec![None]);
        assert_eq!(expand_isr(&mut state, vec![1, 3]), Outcome::Done);
        // From the original [1]: 2 joins, 3 (in sync already) is dropped, 1 leaves.
        assert_eq!(errors(state.apply(reassign(Some(vec![2])))), vec![None]);
        let p = &state.topics["t"].partitions[0];
        assert_eq!(p.replicas, vec![2, 1]);
        assert_eq!(
            (p.adding_replicas.clone(), p.removing_replicas.clone()),
            (vec![2], vec![1])
        );
        assert_eq!((p.isr.clone(), p.leader), (vec![1], 1));
        assert_eq!(expand_isr(&mut state, vec![1, 2]), Outcome::Done);
        let p = &state.topics["t"].partitions[0];
        assert_eq!(
            (p.replicas.clone(), p.isr.clone(), p.leader),
            (vec![2], vec![2], 2)
        );
    }

    #[test]
    fn a_reassignment_is_validated_and_can_be_cancelled() {
        let mut state = cluster(&[1, 2]);
        let invalid = Some(ResponseError::InvalidReplicaAssignment);
        assert_eq!(errors(state.apply(reassign(Some(vec![])))), vec![invalid]);
        assert_eq!(
            errors(state.apply(reassign(Some(vec![2, 2])))),
            vec![invalid]
        );
        assert_eq!(
            errors(state.apply(reassign(Some(vec![2, 9])))),
            vec![invalid]
        );
        assert_eq!(
            errors(state.apply(reassign(None))),
            vec![Some(ResponseError::NoReassignmentInProgress)]
        );
        assert_eq!(errors(state.apply(reassign(Some(vec![2, 3])))), vec![None]);
        assert_eq!(state.topics["t"].partitions[0].replicas, vec![2, 3, 1]);
        assert_eq!(errors(state.apply(reassign(None))), vec![None]);
        let p = &state.topics["t"].partitions[0];
        // Kafka's revert: the current replicas without the adding ones, in their order.
        assert_eq!(
            (p.replicas.clone(), p.isr.clone(), p.leader),
            (vec![2, 1], vec![1, 2], 1)
        );
        // Shrinking to in-sync replicas completes at once, moving the leader.
        assert_eq!(errors(state.apply(reassign(Some(vec![2])))), vec![None]);
        let p = &state.topics["t"].partitions[0];
        assert_eq!(
            (p.replicas.clone(), p.isr.clone(), p.leader),
            (vec![2], vec![2], 2)
        );
    }
}
