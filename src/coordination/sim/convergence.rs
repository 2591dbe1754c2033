//! The quiet phase's check: every node at one state, every broker registered and aware of it, no
//! avoidable leaderless partition.

use super::*;

impl Sim {
    pub(super) fn check_converged(&mut self) {
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
    pub(super) fn convergence(&self) -> Result<u64, String> {
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
