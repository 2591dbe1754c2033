//! Periodic preferred-leader election, Kafka's `auto.leader.rebalance.enable`: the quorum
//! leader checks every `leader.imbalance.check.interval.seconds` how many of the partitions
//! each broker should lead (it is their first replica) it does not lead; above
//! `leader.imbalance.per.broker.percentage`, it proposes a preferred election for those
//! whose preferred replica is live and in sync.
//!
//! Off by default here (Kafka: on): leadership otherwise stays with the earliest-registered
//! in-sync replica, as the rest of the design expects; turn it on to have leaders move back
//! to their preferred replicas after restarts without running `brokerctl leader-election`.

use std::collections::BTreeMap;
use std::rc::Weak;
use std::time::Duration;

use super::state_machine::{ClusterState, Command};
use super::Coordinator;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebalanceConfig {
    /// `auto.leader.rebalance.enable`.
    pub enable: bool,
    /// `leader.imbalance.check.interval.seconds` (Kafka's default: 300).
    pub check_interval_seconds: u64,
    /// `leader.imbalance.per.broker.percentage` (Kafka's default: 10).
    pub imbalance_percentage: u64,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            enable: false,
            check_interval_seconds: 300,
            imbalance_percentage: 10,
        }
    }
}

/// The partitions to elect their preferred leader now: those of brokers whose share of
/// preferred partitions they do not lead exceeds `imbalance_percentage`, and whose preferred
/// replica is live and in sync, with no reassignment running.
pub fn preferred_elections_due(
    state: &ClusterState,
    imbalance_percentage: u64,
) -> Vec<(String, i32)> {
    // Preferred broker -> (partitions it should lead, electable ones it does not lead).
    let mut brokers: BTreeMap<i32, (u64, Vec<(String, i32)>)> = BTreeMap::new();
    for (name, topic) in &state.topics {
        for (index, p) in topic.partitions.iter().enumerate() {
            let Some(&preferred) = p.replicas.first() else {
                continue;
            };
            let entry = brokers.entry(preferred).or_default();
            entry.0 += 1;
            let electable = p.leader != preferred
                && state.is_live(preferred)
                && p.isr.contains(&preferred)
                && p.adding_replicas.is_empty()
                && p.removing_replicas.is_empty();
            if electable {
                entry.1.push((name.clone(), index as i32));
            }
        }
    }
    brokers
        .into_values()
        .filter(|(total, due)| due.len() as u64 * 100 > total * imbalance_percentage)
        .flat_map(|(_, due)| due)
        .collect()
}

/// Runs on shard 0 while the coordinator lives; acts only while this node leads the quorum.
pub async fn rebalance_loop(coordinator: Weak<Coordinator>, config: RebalanceConfig) {
    let every = Duration::from_secs(config.check_interval_seconds.max(1));
    loop {
        glommio::timer::sleep(every).await;
        let Some(c) = coordinator.upgrade() else {
            return;
        };
        if c.is_stopping() {
            return;
        }
        if !c.leads_quorum() {
            continue;
        }
        let due = c.with_state(|s| preferred_elections_due(s, config.imbalance_percentage));
        if due.is_empty() {
            continue;
        }
        tracing::info!(
            partitions = due.len(),
            "leaders are imbalanced; electing preferred leaders"
        );
        let command = Command::ElectLeaders {
            unclean: false,
            partitions: Some(due),
        };
        if let Err(e) = c.propose(command, Duration::from_secs(10)).await {
            tracing::warn!(error = %e.message, "periodic preferred election not committed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::state_machine::{BrokerRegistration, PartitionState, TopicState};
    use super::*;

    fn partition(replicas: &[i32], leader: i32) -> PartitionState {
        PartitionState {
            replicas: replicas.to_vec(),
            isr: replicas.to_vec(),
            leader,
            leader_epoch: 0,
            partition_epoch: 0,
            adding_replicas: vec![],
            removing_replicas: vec![],
        }
    }

    #[test]
    fn only_imbalanced_brokers_get_their_partitions_back() {
        let mut state = ClusterState::default();
        for id in [1, 2] {
            state.brokers.insert(
                id,
                BrokerRegistration {
                    node_id: id,
                    incarnation: 0,
                    host: "h".into(),
                    port: 1,
                    rack: None,
                    sequence: id as u64,
                },
            );
        }
        // Broker 1 prefers 10 partitions and leads 9 (10% is not above 10%); broker 2
        // prefers 2 and leads 1.
        let mut partitions: Vec<PartitionState> = (0..10).map(|_| partition(&[1, 2], 1)).collect();
        partitions[0].leader = 2;
        partitions.push(partition(&[2, 1], 2));
        partitions.push(partition(&[2, 1], 1));
        // Not in sync: not electable.
        let mut stale = partition(&[3, 1], 1);
        stale.isr = vec![1];
        partitions.push(stale);
        state.topics.insert(
            "t".into(),
            TopicState {
                id: [0; 16],
                partitions,
                configs: Default::default(),
            },
        );
        assert_eq!(
            preferred_elections_due(&state, 10),
            vec![("t".to_string(), 11)]
        );
        assert_eq!(
            preferred_elections_due(&state, 5),
            vec![("t".to_string(), 0), ("t".to_string(), 11)]
        );
    }
}
