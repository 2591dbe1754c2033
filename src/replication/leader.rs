//! What a partition leader knows about its followers: how far each has fetched, when each was
//! last caught up, and therefore where the high watermark may go and which ISR change to ask
//! the coordination quorum for. Pure bookkeeping, no I/O: the partition (on its owner shard)
//! feeds it fetches and the clock, and acts on its answers.

use std::collections::BTreeMap;

/// One follower's progress, as its fetches report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerProgress {
    /// The follower's log end offset (its fetch offset: everything below it is on its disk).
    /// `None` until its first fetch at this leader epoch.
    pub log_end_offset: Option<i64>,
    /// Last time the follower had everything the leader had written (Kafka's
    /// `lastCaughtUpTimeMs`): a member whose value falls `replica.lag.time.max.ms` behind
    /// leaves the ISR.
    pub last_caught_up_ms: i64,
    /// The follower's log start offset, as its last fetch reported it (`None` before, or when
    /// it did not say): DeleteRecords waits for it (Kafka's `DelayedDeleteRecords`).
    pub log_start_offset: Option<i64>,
    last_fetch_ms: i64,
    /// The leader's written offset at the follower's previous fetch.
    last_fetch_leader_end_offset: i64,
}

/// An ISR change the leader should propose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChange {
    pub isr: Vec<i32>,
    /// True when the change only adds members (the high watermark counts them at once: the
    /// "maximal ISR" of KIP-497, so a new member is never missing acknowledged data).
    pub expands: bool,
}

/// Replication state of a partition this broker leads at one leader epoch. A new epoch starts
/// a new `LeaderState`: no follower's progress carries over.
#[derive(Debug)]
pub struct LeaderState {
    this_node: i32,
    replicas: Vec<i32>,
    /// The ISR as last committed by the coordination quorum.
    isr: Vec<i32>,
    /// An ISR change proposed and not yet committed (or refused).
    pending: Option<IsrChange>,
    followers: BTreeMap<i32, FollowerProgress>,
}

impl LeaderState {
    pub fn new(this_node: i32, replicas: &[i32], isr: &[i32], now_ms: i64) -> LeaderState {
        assert!(
            replicas.contains(&this_node),
            "a leader is one of the replicas"
        );
        let followers = replicas
            .iter()
            .filter(|&&r| r != this_node)
            .map(|&r| {
                (
                    r,
                    FollowerProgress {
                        log_end_offset: None,
                        // Kafka starts every follower as caught up when a leader takes over,
                        // so the ISR does not shrink before followers had time to fetch.
                        last_caught_up_ms: now_ms,
                        log_start_offset: None,
                        last_fetch_ms: now_ms,
                        last_fetch_leader_end_offset: -1,
                    },
                )
            })
            .collect();
        LeaderState {
            this_node,
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            pending: None,
            followers,
        }
    }

    pub fn isr(&self) -> &[i32] {
        &self.isr
    }

    pub fn follower(&self, node_id: i32) -> Option<&FollowerProgress> {
        self.followers.get(&node_id)
    }

    /// A newly committed ISR (same leader epoch). Clears the pending change: it was committed,
    /// or another change overtook it (then the leader re-evaluates on its next check).
    pub fn set_isr(&mut self, isr: &[i32]) {
        self.isr = isr.to_vec();
        self.pending = None;
    }

    /// A new replica set at the same leader epoch (a reassignment started, completed or was
    /// cancelled): joining replicas start as followers that have not fetched (out of the ISR
    /// until they catch up); leaving ones are forgotten.
    pub fn set_replicas(&mut self, replicas: &[i32], now_ms: i64) {
        self.followers
            .retain(|r, _| replicas.contains(r) && *r != self.this_node);
        for &r in replicas.iter().filter(|&&r| r != self.this_node) {
            self.followers.entry(r).or_insert(FollowerProgress {
                log_end_offset: None,
                last_caught_up_ms: now_ms,
                log_start_offset: None,
                last_fetch_ms: now_ms,
                last_fetch_leader_end_offset: -1,
            });
        }
        self.replicas = replicas.to_vec();
    }

    /// The quorum refused or did not commit the pending change.
    pub fn clear_pending(&mut self) {
        self.pending = None;
    }

    pub fn has_pending_change(&self) -> bool {
        self.pending.is_some()
    }

    /// The members the high watermark waits for: the committed ISR plus members being added.
    fn maximal_isr(&self) -> impl Iterator<Item = i32> + '_ {
        let adding = self
            .pending
            .iter()
            .filter(|c| c.expands)
            .flat_map(|c| c.isr.iter().copied());
        self.isr
            .iter()
            .copied()
            .chain(adding)
            .filter(move |&r| r != self.this_node)
    }

    /// Records a follower's fetch at `fetch_offset` while the leader has written up to
    /// `leader_written_offset`. Returns false for a node that is not a follower of this
    /// partition.
    pub fn record_fetch(
        &mut self,
        node_id: i32,
        fetch_offset: i64,
        leader_written_offset: i64,
        now_ms: i64,
    ) -> bool {
        let Some(progress) = self.followers.get_mut(&node_id) else {
            return false;
        };
        // Kafka's rule: caught up now if it has everything written; caught up as of its previous
        // fetch if it has everything that was written then (a steady stream never lets a
        // follower equal the leader's end, yet it is not lagging).
        if fetch_offset >= leader_written_offset {
            progress.last_caught_up_ms = now_ms;
        } else if fetch_offset >= progress.last_fetch_leader_end_offset {
            progress.last_caught_up_ms = progress.last_caught_up_ms.max(progress.last_fetch_ms);
        }
        progress.log_end_offset = Some(fetch_offset);
        progress.last_fetch_ms = now_ms;
        progress.last_fetch_leader_end_offset = leader_written_offset;
        true
    }

    /// Records the log start offset a follower's fetch reported (negative: not reported).
    pub fn record_log_start(&mut self, node_id: i32, log_start_offset: i64) {
        if let Some(progress) = self.followers.get_mut(&node_id) {
            if log_start_offset >= 0 {
                progress.log_start_offset = Some(log_start_offset);
            }
        }
    }

    /// The smallest log start offset among the other (maximal) ISR members, as their fetches
    /// reported it (Kafka's low watermark, less the leader's own); `None` when the leader is the
    /// only member. A member that has not reported one counts as 0.
    pub fn followers_low_watermark(&self) -> Option<i64> {
        self.maximal_isr()
            .map(|r| {
                self.followers
                    .get(&r)
                    .and_then(|p| p.log_start_offset)
                    .unwrap_or(0)
            })
            .min()
    }

    /// How far the followers let the high watermark go: the smallest log end offset among the
    /// other (maximal) ISR members; `None` when the leader is the only member (the high
    /// watermark then follows the leader's own written offset). A member that has not fetched
    /// yet holds it where it is (0 never lowers it: the log only raises its high watermark).
    pub fn high_watermark_bound(&self) -> Option<i64> {
        self.maximal_isr()
            .map(|r| {
                self.followers
                    .get(&r)
                    .and_then(|p| p.log_end_offset)
                    .unwrap_or(0)
            })
            .min()
    }

    /// The ISR change to propose now, if any (and none is pending): drop members that have not
    /// caught up for `lag_time_max_ms`, add live replicas whose log reaches the high watermark
    /// and the start of this leader's epoch (so they hold everything acknowledged).
    pub fn isr_change(
        &mut self,
        now_ms: i64,
        lag_time_max_ms: i64,
        high_watermark: i64,
        epoch_start_offset: i64,
        is_live: impl Fn(i32) -> bool,
    ) -> Option<IsrChange> {
        if self.pending.is_some() {
            return None;
        }
        let lagging: Vec<i32> = self
            .isr
            .iter()
            .copied()
            .filter(|&r| r != self.this_node)
            .filter(|r| {
                self.followers
                    .get(r)
                    .is_some_and(|p| now_ms - p.last_caught_up_ms > lag_time_max_ms)
            })
            .collect();
        let change = if !lagging.is_empty() {
            IsrChange {
                isr: self
                    .isr
                    .iter()
                    .copied()
                    .filter(|r| !lagging.contains(r))
                    .collect(),
                expands: false,
            }
        } else {
            let joining: Vec<i32> = self
                .replicas
                .iter()
                .copied()
                .filter(|r| !self.isr.contains(r) && *r != self.this_node && is_live(*r))
                .filter(|r| {
                    self.followers
                        .get(r)
                        .and_then(|p| p.log_end_offset)
                        .is_some_and(|end| end >= high_watermark && end >= epoch_start_offset)
                })
                .collect();
            if joining.is_empty() {
                return None;
            }
            let mut isr = self.isr.clone();
            isr.extend(joining);
            isr.sort_unstable();
            IsrChange { isr, expands: true }
        };
        self.pending = Some(change.clone());
        Some(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_low_watermark_is_the_smallest_isr_follower_log_start() {
        let mut leader = LeaderState::new(0, &[0, 1, 2], &[0, 1, 2], 0);
        assert_eq!(leader.followers_low_watermark(), Some(0), "none reported");
        leader.record_log_start(1, 30);
        assert_eq!(
            leader.followers_low_watermark(),
            Some(0),
            "2 has not reported"
        );
        leader.record_log_start(2, 20);
        assert_eq!(leader.followers_low_watermark(), Some(20));
        leader.record_log_start(2, -1); // a fetch that did not say keeps the last report
        leader.record_log_start(5, 0); // not a replica
        assert_eq!(leader.followers_low_watermark(), Some(20));
        leader.set_isr(&[0, 1]);
        assert_eq!(leader.followers_low_watermark(), Some(30), "2 left the ISR");
        leader.set_isr(&[0]);
        assert_eq!(leader.followers_low_watermark(), None);
    }

    #[test]
    fn the_high_watermark_waits_for_every_isr_follower() {
        let mut leader = LeaderState::new(0, &[0, 1, 2], &[0, 1, 2], 0);
        assert_eq!(leader.high_watermark_bound(), Some(0));
        assert!(leader.record_fetch(1, 10, 10, 1));
        assert_eq!(leader.high_watermark_bound(), Some(0), "2 has not fetched");
        assert!(leader.record_fetch(2, 7, 10, 1));
        assert_eq!(leader.high_watermark_bound(), Some(7));
        assert!(!leader.record_fetch(5, 7, 10, 1), "5 is not a replica");
        leader.set_isr(&[0, 1]);
        assert_eq!(leader.high_watermark_bound(), Some(10));
        leader.set_isr(&[0]);
        assert_eq!(leader.high_watermark_bound(), None);
    }

    #[test]
    fn a_joining_replica_is_tracked_and_added_once_caught_up() {
        let mut leader = LeaderState::new(1, &[1], &[1], 0);
        assert!(!leader.record_fetch(2, 0, 10, 1), "not a replica yet");
        leader.set_replicas(&[2, 3, 1], 5);
        assert_eq!(
            leader.high_watermark_bound(),
            None,
            "joiners do not hold it"
        );
        assert!(leader.record_fetch(2, 10, 10, 6));
        let change = leader.isr_change(6, 3_000, 10, 0, |_| true).unwrap();
        assert_eq!(change.isr, vec![1, 2]);
        leader.set_isr(&change.isr);
        leader.set_replicas(&[2, 1], 7);
        assert!(!leader.record_fetch(3, 10, 10, 8), "3 left");
    }

    #[test]
    fn a_lagging_follower_is_dropped_and_a_caught_up_one_added() {
        let mut leader = LeaderState::new(0, &[0, 1, 2], &[0, 1, 2], 0);
        // 1 keeps up with a steady stream (never equal to the leader's end); 2 stops.
        for t in 1..=40 {
            leader.record_fetch(1, (t - 1) * 10, t * 10, t * 100);
        }
        let change = leader.isr_change(4_000, 3_000, 0, 0, |_| true).unwrap();
        assert_eq!(change.isr, vec![0, 1]);
        assert!(!change.expands);
        assert!(leader.isr_change(4_000, 3_000, 0, 0, |_| true).is_none());
        leader.set_isr(&change.isr);
        // 2 comes back below the high watermark: not yet; at it: added, and counted at once.
        leader.record_fetch(2, 300, 400, 4_100);
        assert!(leader.isr_change(4_100, 3_000, 390, 0, |_| true).is_none());
        leader.clear_pending();
        leader.record_fetch(2, 390, 400, 4_200);
        assert!(leader.isr_change(4_200, 3_000, 390, 0, |_| false).is_none());
        let change = leader.isr_change(4_200, 3_000, 390, 0, |_| true).unwrap();
        assert_eq!(change.isr, vec![0, 1, 2]);
        assert!(change.expands);
        assert_eq!(leader.high_watermark_bound(), Some(390));
    }
}
