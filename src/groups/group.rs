//! One consumer group's state machine, after Kafka's classic GroupCoordinator: members join
//! (JoinGroup), the coordinator waits until every known member has rejoined or the rebalance
//! timeout passes, bumps the generation and picks a leader and a protocol; the leader computes
//! the assignment on the client side and hands it over in SyncGroup; heartbeats tell members
//! when to rejoin. Static members (`group.instance.id`, KIP-345) keep their place across a
//! restart: a rejoin with a known instance id replaces the old member id without a rebalance.
//!
//! Pure state, no I/O: durable side effects are returned as [`OffsetsRecord`]s for the
//! coordinator to append. Owned by the group's shard.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError;

use super::records::{GroupValue, OffsetValue, OffsetsRecord};
use super::GroupConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// Kafka's names, as ListGroups and DescribeGroups report them.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// What a JoinGroup gets back.
#[derive(Debug, Clone)]
pub struct JoinResult {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only: every member with its metadata for the chosen protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResult {
    pub fn error(error: ResponseError, member_id: &str) -> JoinResult {
        JoinResult {
            error: Some(error),
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SyncResult {
    pub error: Option<ResponseError>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    pub fn error(error: ResponseError) -> SyncResult {
        SyncResult {
            error: Some(error),
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

/// A JoinGroup request as the state machine needs it.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    /// (name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// v4+: a member without an id is given one and asked to rejoin with it (KIP-394).
    pub require_known_member_id: bool,
}

pub enum Pending<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    last_heartbeat_ms: i64,
    /// Rejoined during the current PreparingRebalance.
    joined: bool,
    join_waiter: Option<oneshot::Sender<JoinResult>>,
    sync_waiter: Option<oneshot::Sender<SyncResult>>,
    /// Order of joining, so the first member to arrive leads (as in Kafka).
    seq: u64,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn awaiting(&self) -> bool {
        self.join_waiter.is_some() || self.sync_waiter.is_some()
    }
}

pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: HashMap<String, Member>,
    /// group.instance.id -> member id.
    static_members: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with the time they lapse.
    pending_member_ids: HashMap<String, i64>,
    rebalance_deadline_ms: i64,
    /// A first rebalance of an empty group does not complete before this.
    initial_delay_until_ms: i64,
    next_seq: u64,
    /// Committed offsets by (topic, partition).
    pub offsets: BTreeMap<(String, i32), OffsetValue>,
}

impl Group {
    pub fn new(id: String) -> Group {
        Group {
            id,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: HashMap::new(),
            static_members: HashMap::new(),
            pending_member_ids: HashMap::new(),
            rebalance_deadline_ms: 0,
            initial_delay_until_ms: 0,
            next_seq: 0,
            offsets: BTreeMap::new(),
        }
    }

    /// Restores the group-level fields from the offsets log (members are not restored).
    pub fn restore(&mut self, value: &GroupValue) {
        self.generation = value.generation;
        self.protocol_type = Some(value.protocol_type.clone()).filter(|s| !s.is_empty());
        self.protocol = None;
        self.leader = None;
    }

    /// True when nothing is worth keeping: no members, offsets or history.
    pub fn is_forgettable(&self) -> bool {
        self.members.is_empty()
            && self.offsets.is_empty()
            && self.pending_member_ids.is_empty()
            && self.generation == 0
    }

    fn group_record(&self, now_ms: i64) -> OffsetsRecord {
        OffsetsRecord::Group {
            group: self.id.clone(),
            value: Some(GroupValue {
                protocol_type: self.protocol_type.clone().unwrap_or_default(),
                generation: self.generation,
                protocol: self.protocol.clone(),
                leader: self.leader.clone(),
                state_timestamp_ms: now_ms,
            }),
        }
    }

    fn new_member_id(&mut self, client_id: &str, instance_id: Option<&str>) -> String {
        let prefix = instance_id.unwrap_or(client_id);
        format!("{prefix}-{}", uuid::Uuid::new_v4())
    }

    /// Protocols every member (and the joining one, if given) supports, in the first
    /// member's order.
    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    pub fn join(
        &mut self,
        request: JoinRequest,
        now_ms: i64,
        config: &GroupConfig,
        persist: &mut Vec<OffsetsRecord>,
    ) -> Pending<JoinResult> {
        let now = |r: JoinResult| Pending::Now(r);
        let member_id = request.member_id.clone();
        if request.session_timeout_ms < config.min_session_timeout_ms
            || request.session_timeout_ms > config.max_session_timeout_ms
        {
            return now(JoinResult::error(
                ResponseError::InvalidSessionTimeout,
                &member_id,
            ));
        }
        if request.protocol_type.is_empty()
            || request.protocols.is_empty()
            || !self.supports(&request.protocol_type, &request.protocols)
        {
            return now(JoinResult::error(
                ResponseError::InconsistentGroupProtocol,
                &member_id,
            ));
        }
        if member_id.is_empty() {
            if let Some(instance) = &request.instance_id {
                if let Some(old_id) = self.static_members.get(instance).cloned() {
                    return self.rejoin_static(old_id, request, now_ms, config, persist);
                }
            } else if request.require_known_member_id {
                if self.members.len() + self.pending_member_ids.len() >= config.max_size {
                    return now(JoinResult::error(ResponseError::GroupMaxSizeReached, ""));
                }
                let id = self.new_member_id(&request.client_id, None);
                self.pending_member_ids
                    .insert(id.clone(), now_ms + request.session_timeout_ms as i64);
                return now(JoinResult::error(ResponseError::MemberIdRequired, &id));
            }
            if self.members.len() >= config.max_size {
                return now(JoinResult::error(ResponseError::GroupMaxSizeReached, ""));
            }
            let id = self.new_member_id(&request.client_id, request.instance_id.as_deref());
            return self.add_member(id, request, now_ms, config, persist);
        }
        if self.pending_member_ids.remove(&member_id).is_some() {
            if self.members.len() >= config.max_size {
                return now(JoinResult::error(
                    ResponseError::GroupMaxSizeReached,
                    &member_id,
                ));
            }
            return self.add_member(member_id, request, now_ms, config, persist);
        }
        if !self.members.contains_key(&member_id) {
            return now(JoinResult::error(
                ResponseError::UnknownMemberId,
                &member_id,
            ));
        }
        if let Some(instance) = &request.instance_id {
            if self.static_members.get(instance) != Some(&member_id) {
                return now(JoinResult::error(
                    ResponseError::FencedInstanceId,
                    &member_id,
                ));
            }
        }
        // A known member rejoins.
        let is_leader = self.leader.as_deref() == Some(member_id.as_str());
        let changed = {
            let member = self.members.get_mut(&member_id).expect("checked above");
            let changed = member.protocols != request.protocols;
            member.protocols = request.protocols;
            member.session_timeout_ms = request.session_timeout_ms;
            member.rebalance_timeout_ms = request.rebalance_timeout_ms;
            member.last_heartbeat_ms = now_ms;
            changed
        };
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance if !changed && !is_leader => {
                // Nothing changed: hand back the current generation (the member lost a response).
                now(self.join_result_for(&member_id))
            }
            _ => {
                let rx = self.wait_for_join(&member_id);
                if self.state != GroupState::PreparingRebalance {
                    self.prepare_rebalance(now_ms);
                }
                self.try_complete_join(now_ms, persist);
                Pending::Later(rx)
            }
        }
    }

    fn rejoin_static(
        &mut self,
        old_id: String,
        request: JoinRequest,
        now_ms: i64,
        config: &GroupConfig,
        persist: &mut Vec<OffsetsRecord>,
    ) -> Pending<JoinResult> {
        let instance = request.instance_id.clone().expect("static");
        let new_id = self.new_member_id(&request.client_id, Some(&instance));
        let Some(mut member) = self.members.remove(&old_id) else {
            self.static_members.remove(&instance);
            return self.add_member(new_id, request, now_ms, config, persist);
        };
        // The old incarnation is fenced: whatever it waits for ends now.
        if let Some(w) = member.join_waiter.take() {
            let _ = w.send(JoinResult::error(ResponseError::FencedInstanceId, &old_id));
        }
        if let Some(w) = member.sync_waiter.take() {
            let _ = w.send(SyncResult::error(ResponseError::FencedInstanceId));
        }
        member.id = new_id.clone();
        member.protocols = request.protocols;
        member.client_id = request.client_id;
        member.client_host = request.client_host;
        member.session_timeout_ms = request.session_timeout_ms;
        member.rebalance_timeout_ms = request.rebalance_timeout_ms;
        member.last_heartbeat_ms = now_ms;
        self.members.insert(new_id.clone(), member);
        self.static_members.insert(instance, new_id.clone());
        let was_leader = self.leader.as_deref() == Some(old_id.as_str());
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        // As Kafka does: only a change of the group's selected protocol forces a rebalance
        // (the member's metadata, e.g. owned partitions, may differ after a restart).
        let changed = self.protocol.as_ref() != Some(&self.select_protocol());
        if self.state == GroupState::Stable && !changed && !was_leader {
            // KIP-345: a quick restart of a static member does not rebalance the group.
            return Pending::Now(self.join_result_for(&new_id));
        }
        let rx = self.wait_for_join(&new_id);
        if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(now_ms);
        }
        self.try_complete_join(now_ms, persist);
        Pending::Later(rx)
    }

    fn add_member(
        &mut self,
        id: String,
        request: JoinRequest,
        now_ms: i64,
        config: &GroupConfig,
        persist: &mut Vec<OffsetsRecord>,
    ) -> Pending<JoinResult> {
        if self.members.is_empty() {
            self.protocol_type = Some(request.protocol_type.clone());
        }
        if let Some(instance) = &request.instance_id {
            self.static_members.insert(instance.clone(), id.clone());
        }
        self.next_seq += 1;
        self.members.insert(
            id.clone(),
            Member {
                id: id.clone(),
                instance_id: request.instance_id,
                client_id: request.client_id,
                client_host: request.client_host,
                session_timeout_ms: request.session_timeout_ms,
                rebalance_timeout_ms: request.rebalance_timeout_ms,
                protocols: request.protocols,
                assignment: Bytes::new(),
                last_heartbeat_ms: now_ms,
                joined: false,
                join_waiter: None,
                sync_waiter: None,
                seq: self.next_seq,
            },
        );
        let rx = self.wait_for_join(&id);
        match self.state {
            GroupState::Empty => {
                self.prepare_rebalance(now_ms);
                self.initial_delay_until_ms = now_ms + config.initial_rebalance_delay_ms as i64;
            }
            GroupState::PreparingRebalance => {}
            _ => self.prepare_rebalance(now_ms),
        }
        self.try_complete_join(now_ms, persist);
        Pending::Later(rx)
    }

    fn wait_for_join(&mut self, member_id: &str) -> oneshot::Receiver<JoinResult> {
        let (tx, rx) = oneshot::channel();
        let member = self.members.get_mut(member_id).expect("member exists");
        if let Some(old) = member.join_waiter.replace(tx) {
            // A second JoinGroup from the same member supersedes the first.
            let _ = old.send(JoinResult::error(ResponseError::UnknownMemberId, member_id));
        }
        member.joined = true;
        rx
    }

    fn prepare_rebalance(&mut self, now_ms: i64) {
        if self.state == GroupState::CompletingRebalance {
            for member in self.members.values_mut() {
                member.assignment = Bytes::new();
                if let Some(w) = member.sync_waiter.take() {
                    let _ = w.send(SyncResult::error(ResponseError::RebalanceInProgress));
                }
            }
        }
        let timeout_ms = self
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms.max(m.session_timeout_ms))
            .max()
            .unwrap_or(0);
        self.rebalance_deadline_ms = now_ms + timeout_ms as i64;
        self.state = GroupState::PreparingRebalance;
        tracing::debug!(group = %self.id, generation = self.generation, "preparing rebalance");
    }

    /// Completes the join phase when every member has rejoined (after the initial delay), or
    /// when the rebalance timeout passes (members that did not rejoin are dropped).
    pub fn try_complete_join(&mut self, now_ms: i64, persist: &mut Vec<OffsetsRecord>) {
        if self.state != GroupState::PreparingRebalance || now_ms < self.initial_delay_until_ms {
            return;
        }
        let all_joined = self.members.values().all(|m| m.joined);
        if !all_joined && now_ms < self.rebalance_deadline_ms {
            return;
        }
        let late: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.joined)
            .map(|m| m.id.clone())
            .collect();
        for id in late {
            tracing::info!(group = %self.id, member = %id, "member did not rejoin in time");
            self.remove_member(&id);
        }
        self.generation += 1;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            persist.push(self.group_record(now_ms));
            return;
        }
        self.protocol = Some(self.select_protocol());
        let leader_alive = self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l));
        if !leader_alive {
            self.leader = self
                .members
                .values()
                .min_by_key(|m| m.seq)
                .map(|m| m.id.clone());
        }
        self.state = GroupState::CompletingRebalance;
        crate::metrics::DETAIL
            .group_rebalances
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            group = %self.id,
            generation = self.generation,
            members = self.members.len(),
            protocol = ?self.protocol,
            "rebalance: join complete"
        );
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let result = self.join_result_for(&id);
            let member = self.members.get_mut(&id).expect("listed");
            member.joined = false;
            member.last_heartbeat_ms = now_ms;
            if let Some(w) = member.join_waiter.take() {
                let _ = w.send(result);
            }
        }
    }

    /// The protocol most members prefer among those all support (Kafka's vote).
    fn select_protocol(&self) -> String {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.seq);
        let candidates: Vec<&String> = members[0]
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                members
                    .iter()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == *n))
            })
            .collect();
        let mut votes: Vec<(usize, &String)> = candidates.iter().map(|c| (0, *c)).collect();
        for m in &members {
            if let Some(choice) = m
                .protocols
                .iter()
                .find(|(p, _)| candidates.contains(&p))
                .map(|(p, _)| p)
            {
                if let Some(v) = votes.iter_mut().find(|(_, c)| *c == choice) {
                    v.0 += 1;
                }
            }
        }
        // Highest vote wins; ties go to the earliest in the first member's preference.
        let best = votes.iter().map(|(n, _)| *n).max().unwrap_or(0);
        votes
            .iter()
            .find(|(n, _)| *n == best)
            .map(|(_, c)| (*c).clone())
            .unwrap_or_default()
    }

    fn join_result_for(&self, member_id: &str) -> JoinResult {
        let protocol = self.protocol.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            let mut ms: Vec<&Member> = self.members.values().collect();
            ms.sort_by_key(|m| m.seq);
            ms.iter()
                .map(|m| {
                    (
                        m.id.clone(),
                        m.instance_id.clone(),
                        m.metadata_for(&protocol),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            error: None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader,
            member_id: member_id.to_string(),
            members,
        }
    }

    /// Checks that `member_id` at `generation` may act in this group.
    fn check_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        if !self.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if let Some(instance) = instance_id {
            if self.static_members.get(instance).map(String::as_str) != Some(member_id) {
                return Err(ResponseError::FencedInstanceId);
            }
        }
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now_ms: i64,
        persist: &mut Vec<OffsetsRecord>,
    ) -> Pending<SyncResult> {
        if let Err(e) = self.check_member(member_id, instance_id, generation) {
            return Pending::Now(SyncResult::error(e));
        }
        let ok = |assignment: Bytes, g: &Group| SyncResult {
            error: None,
            protocol_type: g.protocol_type.clone(),
            protocol_name: g.protocol.clone(),
            assignment,
        };
        match self.state {
            GroupState::Empty => Pending::Now(SyncResult::error(ResponseError::UnknownMemberId)),
            GroupState::PreparingRebalance => {
                Pending::Now(SyncResult::error(ResponseError::RebalanceInProgress))
            }
            GroupState::Stable => {
                let assignment = self.members[member_id].assignment.clone();
                Pending::Now(ok(assignment, self))
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                {
                    let member = self.members.get_mut(member_id).expect("checked");
                    member.sync_waiter = Some(tx);
                    member.last_heartbeat_ms = now_ms;
                }
                if self.leader.as_deref() == Some(member_id) {
                    let mut by_member: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for member in self.members.values_mut() {
                        member.assignment = by_member.remove(&member.id).unwrap_or_default();
                    }
                    self.state = GroupState::Stable;
                    tracing::info!(group = %self.id, generation = self.generation, "rebalance: stable");
                    persist.push(self.group_record(now_ms));
                    let result = |m: &Member| SyncResult {
                        error: None,
                        protocol_type: self.protocol_type.clone(),
                        protocol_name: self.protocol.clone(),
                        assignment: m.assignment.clone(),
                    };
                    let mut answers = Vec::new();
                    for member in self.members.values() {
                        answers.push((member.id.clone(), result(member)));
                    }
                    for (id, answer) in answers {
                        let member = self.members.get_mut(&id).expect("listed");
                        member.last_heartbeat_ms = now_ms;
                        if let Some(w) = member.sync_waiter.take() {
                            let _ = w.send(answer);
                        }
                    }
                }
                Pending::Later(rx)
            }
        }
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now_ms: i64,
    ) -> Option<ResponseError> {
        if self.state == GroupState::Empty {
            return Some(ResponseError::UnknownMemberId);
        }
        if !self.members.contains_key(member_id) {
            return Some(ResponseError::UnknownMemberId);
        }
        if let Some(member) = self.members.get_mut(member_id) {
            member.last_heartbeat_ms = now_ms;
        }
        if let Err(e) = self.check_member(member_id, instance_id, generation) {
            return Some(e);
        }
        match self.state {
            GroupState::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            _ => None,
        }
    }

    /// Removes members (LeaveGroup). An empty `member_id` with an instance id names a static
    /// member by its instance (v3+). Returns one result per input.
    pub fn leave(
        &mut self,
        leaving: &[(String, Option<String>)],
        now_ms: i64,
        persist: &mut Vec<OffsetsRecord>,
    ) -> Vec<Option<ResponseError>> {
        let mut results = Vec::with_capacity(leaving.len());
        let mut removed = false;
        for (member_id, instance_id) in leaving {
            let id = match (member_id.is_empty(), instance_id) {
                (true, Some(instance)) => self.static_members.get(instance).cloned(),
                _ => Some(member_id.clone()),
            };
            let result = match id {
                Some(id) if self.members.contains_key(&id) => {
                    let fenced = instance_id
                        .as_ref()
                        .is_some_and(|i| self.static_members.get(i) != Some(&id));
                    if fenced {
                        Some(ResponseError::FencedInstanceId)
                    } else {
                        tracing::info!(group = %self.id, member = %id, "member left");
                        self.remove_member(&id);
                        removed = true;
                        None
                    }
                }
                _ => Some(ResponseError::UnknownMemberId),
            };
            results.push(result);
        }
        if removed {
            self.after_removal(now_ms, persist);
        }
        results
    }

    fn remove_member(&mut self, id: &str) {
        if let Some(mut member) = self.members.remove(id) {
            if let Some(instance) = &member.instance_id {
                if self.static_members.get(instance).map(String::as_str) == Some(id) {
                    self.static_members.remove(instance);
                }
            }
            if let Some(w) = member.join_waiter.take() {
                let _ = w.send(JoinResult::error(ResponseError::UnknownMemberId, id));
            }
            if let Some(w) = member.sync_waiter.take() {
                let _ = w.send(SyncResult::error(ResponseError::UnknownMemberId));
            }
            if self.leader.as_deref() == Some(id) {
                self.leader = None;
            }
        }
    }

    fn after_removal(&mut self, now_ms: i64, persist: &mut Vec<OffsetsRecord>) {
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now_ms);
                // Nobody has rejoined yet; with no members left this completes at once.
                if self.members.is_empty() {
                    self.rebalance_deadline_ms = now_ms;
                }
            }
            GroupState::PreparingRebalance => {
                if self.members.is_empty() {
                    self.rebalance_deadline_ms = now_ms;
                    self.initial_delay_until_ms = now_ms;
                }
            }
            GroupState::Empty => {}
        }
        self.try_complete_join(now_ms, persist);
    }

    /// Timer work: drops members whose session lapsed and completes a join phase whose
    /// deadline passed. Members waiting for a JoinGroup or SyncGroup answer are the
    /// coordinator's responsibility and are not expired.
    pub fn tick(&mut self, now_ms: i64, persist: &mut Vec<OffsetsRecord>) {
        self.pending_member_ids
            .retain(|_, lapse_ms| *lapse_ms > now_ms);
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.awaiting() && now_ms - m.last_heartbeat_ms > m.session_timeout_ms as i64)
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            tracing::info!(group = %self.id, member = %id, "session timeout: member evicted");
            self.remove_member(id);
        }
        if !expired.is_empty() {
            self.after_removal(now_ms, persist);
        } else {
            self.try_complete_join(now_ms, persist);
        }
    }

    /// Checks an OffsetCommit's membership fields. A commit with generation -1 and no member
    /// id is an "admin" or simple-consumer commit, allowed only while the group has no members.
    pub fn check_commit(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now_ms: i64,
    ) -> Result<(), ResponseError> {
        if generation < 0 && member_id.is_empty() && self.members.is_empty() {
            return Ok(());
        }
        if self.state == GroupState::CompletingRebalance
            && self.members.contains_key(member_id)
            && generation == self.generation
        {
            return Err(ResponseError::RebalanceInProgress);
        }
        self.check_member(member_id, instance_id, generation)?;
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_heartbeat_ms = now_ms;
        }
        Ok(())
    }

    /// Topics the members subscribe to, from their consumer-protocol metadata.
    pub fn subscribed_topics(&self) -> Vec<String> {
        let Some(protocol) = &self.protocol else {
            return Vec::new();
        };
        if self.protocol_type.as_deref() != Some("consumer") {
            return Vec::new();
        }
        let mut topics = Vec::new();
        for m in self.members.values() {
            topics.extend(parse_subscription(&m.metadata_for(protocol)));
        }
        topics.sort();
        topics.dedup();
        topics
    }
}

/// The topic list of a ConsumerProtocolSubscription (version, then an array of strings);
/// lenient: a malformed one yields what could be read.
pub fn parse_subscription(metadata: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    if metadata.len() < 6 {
        return out;
    }
    let count = i32::from_be_bytes([metadata[2], metadata[3], metadata[4], metadata[5]]);
    let mut pos = 6;
    for _ in 0..count.max(0) {
        let Some(len) = metadata.get(pos..pos + 2) else {
            break;
        };
        let len = i16::from_be_bytes([len[0], len[1]]);
        pos += 2;
        let Some(bytes) = metadata.get(pos..pos + len.max(0) as usize) else {
            break;
        };
        out.push(String::from_utf8_lossy(bytes).into_owned());
        pos += len.max(0) as usize;
    }
    out
}

/// The (topic, partition) pairs of a ConsumerProtocolAssignment (version, then topics with
/// their partitions); empty when it does not parse. Every length is checked against the bytes.
pub fn parse_assignment(bytes: &[u8]) -> Vec<(String, i32)> {
    fn read(b: &[u8]) -> Option<Vec<(String, i32)>> {
        let mut pos: usize = 2; // version
        let mut take = |n: usize| -> Option<&[u8]> {
            let out = b.get(pos..pos.checked_add(n)?)?;
            pos += n;
            Some(out)
        };
        let mut out = Vec::new();
        let topics = i32::from_be_bytes(take(4)?.try_into().ok()?);
        for _ in 0..topics.max(0) {
            let len = i16::from_be_bytes(take(2)?.try_into().ok()?);
            let topic = String::from_utf8_lossy(take(len.max(0) as usize)?).into_owned();
            let count = i32::from_be_bytes(take(4)?.try_into().ok()?);
            for _ in 0..count.max(0) {
                out.push((topic.clone(), i32::from_be_bytes(take(4)?.try_into().ok()?)));
            }
        }
        Some(out)
    }
    read(bytes).unwrap_or_default()
}

/// A group as DescribeGroups reports it.
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

impl Group {
    pub fn describe_members(&self) -> Vec<MemberDescription> {
        let protocol = self.protocol.clone().unwrap_or_default();
        let mut ms: Vec<&Member> = self.members.values().collect();
        ms.sort_by_key(|m| m.seq);
        ms.into_iter()
            .map(|m| MemberDescription {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: m.metadata_for(&protocol),
                assignment: if self.state == GroupState::Stable {
                    m.assignment.clone()
                } else {
                    Bytes::new()
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(member_id: &str) -> JoinRequest {
        JoinRequest {
            member_id: member_id.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            require_known_member_id: true,
        }
    }

    fn config() -> GroupConfig {
        GroupConfig {
            initial_rebalance_delay_ms: 0,
            ..GroupConfig::default()
        }
    }

    fn join_now(g: &mut Group, member_id: &str, now: i64) -> Pending<JoinResult> {
        g.join(request(member_id), now, &config(), &mut Vec::new())
    }

    fn id_from(p: Pending<JoinResult>) -> String {
        match p {
            Pending::Now(r) => {
                assert_eq!(r.error, Some(ResponseError::MemberIdRequired));
                r.member_id
            }
            Pending::Later(_) => panic!("expected MEMBER_ID_REQUIRED"),
        }
    }

    fn done(p: Pending<JoinResult>) -> JoinResult {
        match p {
            Pending::Later(mut rx) => rx.try_recv().unwrap().expect("join completed"),
            Pending::Now(r) => r,
        }
    }

    #[test]
    fn two_members_join_sync_and_one_is_evicted() {
        let mut g = Group::new("g".into());
        let a = id_from(join_now(&mut g, "", 0));
        let ra = done(join_now(&mut g, &a, 0));
        assert_eq!((ra.generation, ra.leader.as_str()), (1, a.as_str()));
        assert_eq!(g.state, GroupState::CompletingRebalance);
        let mut persist = Vec::new();
        let Pending::Later(mut rx) = g.sync(
            &a,
            None,
            1,
            vec![(a.clone(), Bytes::from_static(b"A"))],
            0,
            &mut persist,
        ) else {
            panic!()
        };
        assert_eq!(
            rx.try_recv().unwrap().unwrap().assignment,
            Bytes::from_static(b"A")
        );
        assert_eq!(g.state, GroupState::Stable);
        assert_eq!(persist.len(), 1);

        // b joins: a learns by heartbeat, rejoins, both get generation 2.
        let b = id_from(join_now(&mut g, "", 1));
        let Pending::Later(mut rb) = join_now(&mut g, &b, 1) else {
            panic!()
        };
        assert_eq!(
            g.heartbeat(&a, None, 1, 2),
            Some(ResponseError::RebalanceInProgress)
        );
        let ra = done(join_now(&mut g, &a, 3));
        let rb = rb.try_recv().unwrap().unwrap();
        assert_eq!((ra.generation, rb.generation), (2, 2));
        assert_eq!(ra.members.len(), 2, "the leader sees every member");
        assert!(rb.members.is_empty());

        // b stops heartbeating: evicted after its session timeout, a must rejoin.
        g.sync(&a, None, 2, vec![], 4, &mut Vec::new());
        g.heartbeat(&a, None, 2, 10_000);
        g.tick(10_010, &mut Vec::new());
        assert!(!g.members.contains_key(&b));
        assert_eq!(g.state, GroupState::PreparingRebalance);
    }

    #[test]
    fn static_member_rejoins_without_rebalance() {
        let mut g = Group::new("g".into());
        let mut r = request("");
        r.instance_id = Some("i1".into());
        let first = done(g.join(r.clone(), 0, &config(), &mut Vec::new()));
        let mut r2 = request("");
        r2.instance_id = Some("i2".into());
        let Pending::Later(_) = g.join(r2.clone(), 0, &config(), &mut Vec::new()) else {
            panic!()
        };
        // i1 (leader) rejoins as a known member so the generation completes.
        let mut again = r.clone();
        again.member_id = first.member_id.clone();
        let gen2 = done(g.join(again, 1, &config(), &mut Vec::new()));
        g.sync(
            &gen2.member_id,
            Some("i1"),
            gen2.generation,
            vec![],
            1,
            &mut Vec::new(),
        );
        assert_eq!(g.state, GroupState::Stable);
        // i2 restarts with a new process: same instance, no member id, not the leader.
        let back = done(g.join(r2, 2, &config(), &mut Vec::new()));
        assert_eq!(back.error, None);
        assert_eq!(back.generation, gen2.generation, "no new generation");
        assert_eq!(g.state, GroupState::Stable);
    }

    #[test]
    fn subscription_topics_parse() {
        let mut m = vec![0u8, 1, 0, 0, 0, 2];
        for t in ["a", "bc"] {
            m.extend_from_slice(&(t.len() as i16).to_be_bytes());
            m.extend_from_slice(t.as_bytes());
        }
        assert_eq!(parse_subscription(&m), vec!["a", "bc"]);
        assert!(parse_subscription(&m[..7]).is_empty());
    }
}
