//! Incremental fetch sessions (KIP-227): the broker remembers, per session, which partitions a
//! fetcher reads and at which offsets, so that an incremental fetch lists only what changed and
//! its response carries only partitions with something new.
//!
//! [`FetchSessionCache`] is one shard's cache, pure logic with no I/O (the fetch handler drives
//! it and does the reads). Owned by the shard whose id range contains the session id
//! ([`owner_of_session`]); only that shard's thread touches it (`Shard::fetch_sessions`).
//!
//! The request's `(session_id, epoch)` picks what happens, as in Kafka's `FetchManager`:
//!
//! | session id | epoch | meaning |
//! |---|---|---|
//! | 0 | -1 | full fetch without a session (what clients without KIP-227 send) |
//! | 0 | 0 | full fetch; create a session if there is room (answered with its id, else 0) |
//! | S | -1 | close S, full fetch without a session |
//! | S | 0 | close S, full fetch, create a new session |
//! | S | N > 0 | incremental: N must be S's next epoch (else INVALID_FETCH_SESSION_EPOCH); the request lists added or changed partitions, `forgotten_topics_data` removes some; every partition of the session is read and those with records, a changed high watermark, last stable or log start offset, or an error are answered |
//!
//! A session caches each partition's request parameters (fetch offset, partition max bytes,
//! leader epoch) *as the client last sent them*: the cached fetch offset moves only when a
//! request names the partition with a new offset, never because a response returned records
//! (the client may not have consumed them). It caches the high watermark, last stable offset and
//! log start offset of the last response that carried the partition, which is how it knows what
//! changed.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;

/// The session id of "no session", in requests and responses.
pub const INVALID_SESSION_ID: i32 = 0;
/// The epoch of a full fetch request that asks for a (new) session.
pub const INITIAL_EPOCH: i32 = 0;
/// The epoch of a full fetch request that wants no session.
pub const FINAL_EPOCH: i32 = -1;

/// Kafka's `min.incremental.fetch.session.eviction.ms` (a constant there too): a session unused
/// this long may be evicted by any new session; a younger one only by a bigger session, and
/// only once it is itself this old.
pub const EVICTION_IDLE: Duration = Duration::from_secs(120);

/// The epoch that follows `epoch` (Kafka's `FetchMetadata.nextEpoch`): wraps to 1, never to 0.
pub fn next_epoch(epoch: i32) -> i32 {
    if epoch < 0 {
        FINAL_EPOCH
    } else if epoch == i32::MAX {
        1
    } else {
        epoch + 1
    }
}

/// The session ids shard `shard` of `nr_shards` hands out: `[low, high)`. The ranges split the
/// positive i32s, so any shard finds a session's owner from its id alone (Kafka's sharded
/// `FetchSessionCacheShard` does the same).
pub fn session_id_range(shard: usize, nr_shards: usize) -> (i32, i32) {
    assert!(shard < nr_shards && nr_shards <= i32::MAX as usize);
    let range = i32::MAX / nr_shards as i32;
    let low = (shard as i32 * range).max(1);
    (low, (shard as i32 + 1) * range)
}

/// The shard whose cache would hold session `id`, if any could.
pub fn owner_of_session(id: i32, nr_shards: usize) -> Option<usize> {
    if id <= 0 {
        return None;
    }
    let range = i32::MAX / nr_shards as i32;
    let shard = (id / range) as usize;
    (shard < nr_shards).then_some(shard)
}

/// The slots of `max.incremental.fetch.session.cache.slots` that shard `shard` gets: the total
/// split as evenly as possible, so the broker never holds more than the total.
pub fn slots_for_shard(total: usize, shard: usize, nr_shards: usize) -> usize {
    total / nr_shards + usize::from(shard < total % nr_shards)
}

/// What a fetch asks of one partition: the request fields a session remembers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionParams {
    pub fetch_offset: i64,
    pub max_bytes: i32,
    /// -1: not given.
    pub current_leader_epoch: i32,
    /// The fetcher's own log start (followers, v5+; Kafka's session keeps it too); -1 otherwise.
    pub log_start_offset: i64,
}

/// What a response says about one partition, as far as sessions care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionOutcome {
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// Whether the response carries record bytes for it (after the response size limit).
    pub has_records: bool,
}

/// A partition as sessions name it. Topic names are shared between a session's partitions.
pub type PartitionKey = (Rc<str>, i32);

struct CachedPartition {
    params: PartitionParams,
    high_watermark: i64,
    last_stable_offset: i64,
    log_start_offset: i64,
    /// Its key in `Session::order`.
    position: u64,
}

impl CachedPartition {
    /// Kafka's `CachedPartition.maybeUpdateResponseData`: whether an incremental response must
    /// carry the partition; remembers what it says.
    fn must_respond(&mut self, outcome: &PartitionOutcome) -> bool {
        let mut must = outcome.has_records;
        if self.high_watermark != outcome.high_watermark {
            self.high_watermark = outcome.high_watermark;
            must = true;
        }
        if self.last_stable_offset != outcome.last_stable_offset {
            self.last_stable_offset = outcome.last_stable_offset;
            must = true;
        }
        if self.log_start_offset != outcome.log_start_offset {
            self.log_start_offset = outcome.log_start_offset;
            must = true;
        }
        if outcome.error_code != 0 {
            // Errors are always answered; forgetting the high watermark makes the partition be
            // answered again once the error is gone.
            self.high_watermark = -1;
            must = true;
        }
        must
    }
}

struct Session {
    id: i32,
    /// The epoch the next incremental request must carry.
    epoch: i32,
    created: Instant,
    last_used: Instant,
    partitions: HashMap<Rc<str>, HashMap<i32, CachedPartition>>,
    /// Read and answer order. Partitions that returned records move to the end, so that under
    /// the response size limit every partition gets its turn (Kafka does the same).
    order: BTreeMap<u64, PartitionKey>,
    next_position: u64,
}

impl Session {
    fn new(id: i32, now: Instant) -> Session {
        Session {
            id,
            epoch: next_epoch(INITIAL_EPOCH),
            created: now,
            last_used: now,
            partitions: HashMap::new(),
            order: BTreeMap::new(),
            next_position: 0,
        }
    }

    fn len(&self) -> usize {
        self.order.len()
    }

    fn get_mut(&mut self, topic: &str, partition: i32) -> Option<&mut CachedPartition> {
        self.partitions.get_mut(topic)?.get_mut(&partition)
    }

    /// Adds the partition at the end, or updates its request parameters in place.
    fn upsert(&mut self, topic: &Rc<str>, partition: i32, params: PartitionParams) {
        if let Some(cached) = self.get_mut(topic, partition) {
            cached.params = params;
            return;
        }
        let position = self.next_position;
        self.next_position += 1;
        self.order.insert(position, (topic.clone(), partition));
        self.partitions.entry(topic.clone()).or_default().insert(
            partition,
            CachedPartition {
                params,
                // Unknown until a response carries it: the first answer always includes it.
                high_watermark: -1,
                last_stable_offset: -1,
                log_start_offset: -1,
                position,
            },
        );
    }

    fn remove(&mut self, topic: &str, partition: i32) {
        let Some(partitions) = self.partitions.get_mut(topic) else {
            return;
        };
        if let Some(cached) = partitions.remove(&partition) {
            self.order.remove(&cached.position);
        }
        if partitions.is_empty() {
            self.partitions.remove(topic);
        }
    }

    fn move_to_end(&mut self, topic: &str, partition: i32) {
        let position = self.next_position;
        let Some(cached) = self.get_mut(topic, partition) else {
            return;
        };
        let old = std::mem::replace(&mut cached.position, position);
        self.next_position += 1;
        if let Some(key) = self.order.remove(&old) {
            self.order.insert(position, key);
        }
    }

    fn list(&self) -> Vec<(PartitionKey, PartitionParams)> {
        self.order
            .values()
            .map(|(topic, partition)| {
                let params = self.partitions[topic][partition].params;
                ((topic.clone(), *partition), params)
            })
            .collect()
    }
}

/// What to do with a fetch request, decided by [`FetchSessionCache::begin`].
#[derive(Debug, PartialEq, Eq)]
pub enum FetchContext {
    /// Answer with this top-level error and session id 0, no partitions.
    Error(ResponseError),
    /// Read the request's partitions and answer them all, with session id 0.
    Sessionless,
    /// Read the request's partitions and answer them all; then [`FetchSessionCache::create`]
    /// a session from them and answer with its id (0 when there is no room).
    Full,
    /// Read these partitions (the whole session, in order), then let
    /// [`FetchSessionCache::finish`] say which the response carries.
    Incremental {
        session_id: i32,
        /// The session's epoch after this request: `finish` checks it is still the same.
        epoch: i32,
        partitions: Vec<(PartitionKey, PartitionParams)>,
    },
}

/// One shard's fetch sessions. Bounded: at most `max_sessions` sessions and `max_partitions`
/// cached partitions over all of them; a new session evicts an old one as Kafka's cache does,
/// or goes without (clients then keep sending full fetches).
pub struct FetchSessionCache {
    id_range: (i32, i32),
    max_sessions: usize,
    max_partitions: usize,
    eviction_idle: Duration,
    sessions: HashMap<i32, Session>,
    cached_partitions: usize,
    evictions: u64,
    incremental_fetches: u64,
    rng: u64,
}

impl FetchSessionCache {
    /// The cache of shard `shard`: `max_sessions` slots, `max_partitions` cached partitions.
    pub fn new(
        shard: usize,
        nr_shards: usize,
        max_sessions: usize,
        max_partitions: usize,
        eviction_idle: Duration,
    ) -> FetchSessionCache {
        // Random ids, as Kafka's: a client that reconnects after a restart must not find
        // someone else's session under its old id.
        let seed = uuid::Uuid::new_v4().as_u64_pair().0;
        FetchSessionCache {
            id_range: session_id_range(shard, nr_shards),
            max_sessions,
            max_partitions,
            eviction_idle,
            sessions: HashMap::new(),
            cached_partitions: 0,
            evictions: 0,
            incremental_fetches: 0,
            rng: seed,
        }
    }

    /// Open sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Partitions cached over all sessions.
    pub fn cached_partitions(&self) -> usize {
        self.cached_partitions
    }

    /// Sessions evicted to make room for new ones, since start.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Incremental fetch requests accepted, since start.
    pub fn incremental_fetches(&self) -> u64 {
        self.incremental_fetches
    }

    /// Decides what a fetch request with `(session_id, epoch)` does, and applies its changes
    /// (`changes`: the partitions it names, `forgotten`: `forgotten_topics_data`) to the
    /// session. `by_topic_id`: a v13+ request, whose topics go by id; sessions are only kept
    /// for requests by name.
    pub fn begin(
        &mut self,
        now: Instant,
        session_id: i32,
        epoch: i32,
        by_topic_id: bool,
        changes: &[(PartitionKey, PartitionParams)],
        forgotten: &[PartitionKey],
    ) -> FetchContext {
        if epoch == INITIAL_EPOCH || epoch == FINAL_EPOCH {
            // A full request closes the session it names.
            if session_id != INVALID_SESSION_ID {
                self.remove(session_id);
            }
            return if epoch == FINAL_EPOCH || by_topic_id || self.max_sessions == 0 {
                FetchContext::Sessionless
            } else {
                FetchContext::Full
            };
        }
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return FetchContext::Error(ResponseError::FetchSessionIdNotFound);
        };
        if session.epoch != epoch {
            return FetchContext::Error(ResponseError::InvalidFetchSessionEpoch);
        }
        if by_topic_id {
            return FetchContext::Error(ResponseError::FetchSessionTopicIdError);
        }
        let before = session.len();
        for ((topic, partition), params) in changes {
            session.upsert(topic, *partition, *params);
        }
        for (topic, partition) in forgotten {
            session.remove(topic, *partition);
        }
        let after = session.len();
        self.cached_partitions = self.cached_partitions - before + after;
        if after == 0 || self.cached_partitions > self.max_partitions {
            // Nothing left to fetch, or grown past what the cache may hold: close the session
            // and answer what the request named, without a session id. Clients take that as
            // "session closed" and send a full request next (Kafka closes emptied sessions
            // the same way).
            self.remove(session_id);
            return FetchContext::Sessionless;
        }
        let session = self.sessions.get_mut(&session_id).expect("checked above");
        session.last_used = now;
        session.epoch = next_epoch(session.epoch);
        self.incremental_fetches += 1;
        FetchContext::Incremental {
            session_id,
            epoch: session.epoch,
            partitions: session.list(),
        }
    }

    /// After a [`FetchContext::Full`] read: creates a session holding `partitions` with what
    /// the response says about them, if there is room (evicting another session if Kafka's
    /// rules allow). Returns its id, or 0 (no session; the client keeps sending full fetches).
    pub fn create(
        &mut self,
        now: Instant,
        partitions: &[(PartitionKey, PartitionParams, PartitionOutcome)],
    ) -> i32 {
        let mut session = Session::new(0, now);
        for ((topic, partition), params, outcome) in partitions {
            session.upsert(topic, *partition, *params);
            let cached = session.get_mut(topic, *partition).expect("just added");
            cached.must_respond(outcome);
        }
        let size = session.len();
        if size == 0 || size > self.max_partitions {
            return INVALID_SESSION_ID;
        }
        while self.sessions.len() >= self.max_sessions
            || self.cached_partitions + size > self.max_partitions
        {
            if !self.try_evict(now, size) {
                return INVALID_SESSION_ID;
            }
        }
        session.id = self.new_session_id();
        self.cached_partitions += size;
        let id = session.id;
        self.sessions.insert(id, session);
        id
    }

    /// After a [`FetchContext::Incremental`] read: which partitions the response carries (one
    /// flag per outcome, in order), updating what the session remembers. `Err` carries the
    /// top-level error and the session id to answer with instead: the session was closed or
    /// evicted meanwhile, or another request of the same session overtook this one.
    pub fn finish(
        &mut self,
        session_id: i32,
        epoch: i32,
        outcomes: &[(PartitionKey, PartitionOutcome)],
    ) -> Result<Vec<bool>, (ResponseError, i32)> {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return Err((ResponseError::FetchSessionIdNotFound, INVALID_SESSION_ID));
        };
        if session.epoch != epoch {
            return Err((ResponseError::InvalidFetchSessionEpoch, session_id));
        }
        Ok(outcomes
            .iter()
            .map(|((topic, partition), outcome)| {
                let Some(cached) = session.get_mut(topic, *partition) else {
                    return true;
                };
                let must = cached.must_respond(outcome);
                if outcome.has_records {
                    session.move_to_end(topic, *partition);
                }
                must
            })
            .collect())
    }

    /// Closes a session (unknown ids are ignored).
    pub fn remove(&mut self, session_id: i32) {
        if let Some(session) = self.sessions.remove(&session_id) {
            self.cached_partitions -= session.len();
        }
    }

    /// Kafka's `FetchSessionCacheShard.tryEvict`, for a new session of `size` partitions: the
    /// least recently used session if it has been idle longer than `eviction_idle`; else the
    /// smallest session older than `eviction_idle` if the new one is bigger. (Kafka also lets
    /// followers' sessions evict consumers'; followers here fetch without sessions.)
    fn try_evict(&mut self, now: Instant, size: usize) -> bool {
        let idle = self.eviction_idle;
        let lru = self
            .sessions
            .values()
            .min_by_key(|s| (s.last_used, s.id))
            .map(|s| (s.id, now.saturating_duration_since(s.last_used)));
        let victim = match lru {
            None => None,
            Some((id, idle_for)) if idle_for > idle => Some(id),
            Some(_) => self
                .sessions
                .values()
                .filter(|s| now.saturating_duration_since(s.created) > idle)
                .min_by_key(|s| (s.len(), s.id))
                .filter(|s| size > s.len())
                .map(|s| s.id),
        };
        match victim {
            Some(id) => {
                self.remove(id);
                self.evictions += 1;
                true
            }
            None => false,
        }
    }

    /// A random unused id in this shard's range.
    fn new_session_id(&mut self) -> i32 {
        let (low, high) = self.id_range;
        loop {
            // splitmix64
            self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let id = low + (z % (high - low) as u64) as i32;
            if id != INVALID_SESSION_ID && !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(topic: &str, partition: i32) -> PartitionKey {
        (Rc::from(topic), partition)
    }

    fn params(offset: i64) -> PartitionParams {
        PartitionParams {
            fetch_offset: offset,
            max_bytes: 1 << 20,
            current_leader_epoch: -1,
            log_start_offset: -1,
        }
    }

    fn outcome(high_watermark: i64, has_records: bool) -> PartitionOutcome {
        PartitionOutcome {
            error_code: 0,
            high_watermark,
            last_stable_offset: high_watermark,
            log_start_offset: 0,
            has_records,
        }
    }

    fn cache(slots: usize) -> FetchSessionCache {
        FetchSessionCache::new(0, 1, slots, 1000, EVICTION_IDLE)
    }

    /// A full request for `partitions` (all at offset 0, high watermark 10), then the session.
    fn open(cache: &mut FetchSessionCache, now: Instant, partitions: &[PartitionKey]) -> i32 {
        let changes: Vec<_> = partitions.iter().map(|k| (k.clone(), params(0))).collect();
        assert_eq!(
            cache.begin(now, 0, INITIAL_EPOCH, false, &changes, &[]),
            FetchContext::Full
        );
        let read: Vec<_> = partitions
            .iter()
            .map(|k| (k.clone(), params(0), outcome(10, true)))
            .collect();
        cache.create(now, &read)
    }

    fn incremental(
        cache: &mut FetchSessionCache,
        id: i32,
        epoch: i32,
        changes: &[(PartitionKey, PartitionParams)],
        forgotten: &[PartitionKey],
    ) -> (i32, Vec<(PartitionKey, PartitionParams)>) {
        match cache.begin(Instant::now(), id, epoch, false, changes, forgotten) {
            FetchContext::Incremental {
                session_id,
                epoch,
                partitions,
            } => {
                assert_eq!(session_id, id);
                (epoch, partitions)
            }
            other => panic!("expected an incremental context, got {other:?}"),
        }
    }

    #[test]
    fn epochs_must_follow_each_other() {
        let mut cache = cache(10);
        let now = Instant::now();
        let id = open(&mut cache, now, &[key("t", 0)]);
        assert!(id > 0);
        assert_eq!(cache.len(), 1);
        // The first incremental request carries epoch 1, then 2, ...
        let begin =
            |cache: &mut FetchSessionCache, id, epoch| cache.begin(now, id, epoch, false, &[], &[]);
        assert_eq!(
            begin(&mut cache, id, 2),
            FetchContext::Error(ResponseError::InvalidFetchSessionEpoch)
        );
        let (epoch, _) = incremental(&mut cache, id, 1, &[], &[]);
        assert_eq!(epoch, 2);
        // A replayed epoch is refused and does not disturb the session.
        assert_eq!(
            begin(&mut cache, id, 1),
            FetchContext::Error(ResponseError::InvalidFetchSessionEpoch)
        );
        let (epoch, _) = incremental(&mut cache, id, 2, &[], &[]);
        assert_eq!(epoch, 3);
        assert_eq!(
            begin(&mut cache, id + 1, 3),
            FetchContext::Error(ResponseError::FetchSessionIdNotFound)
        );
        assert_eq!(
            begin(&mut cache, 0, 3),
            FetchContext::Error(ResponseError::FetchSessionIdNotFound)
        );
        // v13+ (topic ids) cannot continue a session created by name.
        assert_eq!(
            cache.begin(now, id, 3, true, &[], &[]),
            FetchContext::Error(ResponseError::FetchSessionTopicIdError)
        );
        // Epoch -1 closes the session without creating one.
        assert_eq!(
            begin(&mut cache, id, FINAL_EPOCH),
            FetchContext::Sessionless
        );
        assert!(cache.is_empty());
        assert_eq!(
            begin(&mut cache, id, 3),
            FetchContext::Error(ResponseError::FetchSessionIdNotFound)
        );
        // Epoch 0 with an id closes it and asks for a new one.
        let id = open(&mut cache, now, &[key("t", 0)]);
        assert_eq!(begin(&mut cache, id, INITIAL_EPOCH), FetchContext::Full);
        assert!(cache.is_empty());
        assert_eq!(cache.cached_partitions(), 0);
        assert_eq!(next_epoch(i32::MAX), 1);
        assert_eq!(next_epoch(-1), -1);
    }

    #[test]
    fn cached_offsets_move_only_with_the_request() {
        let mut cache = cache(10);
        let (a, b, c) = (key("t", 0), key("t", 1), key("u", 0));
        let id = open(&mut cache, Instant::now(), &[a.clone(), b.clone()]);
        // Nothing named: both partitions are read at their cached offsets, whatever the last
        // response returned.
        let (epoch, partitions) = incremental(&mut cache, id, 1, &[], &[]);
        assert_eq!(
            partitions,
            vec![(a.clone(), params(0)), (b.clone(), params(0))]
        );
        // The client consumed a up to 5: it names a with its new offset; c is added.
        let (epoch, partitions) = incremental(
            &mut cache,
            id,
            epoch,
            &[(a.clone(), params(5)), (c.clone(), params(7))],
            &[],
        );
        assert_eq!(
            partitions,
            vec![
                (a.clone(), params(5)),
                (b.clone(), params(0)),
                (c.clone(), params(7))
            ]
        );
        // b is forgotten; a keeps offset 5.
        let (epoch, partitions) = incremental(&mut cache, id, epoch, &[], std::slice::from_ref(&b));
        assert_eq!(
            partitions,
            vec![(a.clone(), params(5)), (c.clone(), params(7))]
        );
        assert_eq!(cache.cached_partitions(), 2);
        // Forgetting everything closes the session.
        assert_eq!(
            cache.begin(Instant::now(), id, epoch, false, &[], &[a, c]),
            FetchContext::Sessionless
        );
        assert!(cache.is_empty());
        assert_eq!(cache.cached_partitions(), 0);
    }

    #[test]
    fn responses_carry_only_what_changed() {
        let mut cache = cache(10);
        let (a, b, c) = (key("t", 0), key("t", 1), key("t", 2));
        let id = open(
            &mut cache,
            Instant::now(),
            &[a.clone(), b.clone(), c.clone()],
        );
        let (epoch, _) = incremental(&mut cache, id, 1, &[], &[]);
        // a has records, b's high watermark moved, c is as it was.
        let flags = cache
            .finish(
                id,
                epoch,
                &[
                    (a.clone(), outcome(10, true)),
                    (b.clone(), outcome(11, false)),
                    (c.clone(), outcome(10, false)),
                ],
            )
            .unwrap();
        assert_eq!(flags, vec![true, true, false]);
        // a returned records: it moves behind the others.
        let (epoch, partitions) = incremental(&mut cache, id, epoch, &[], &[]);
        let order: Vec<_> = partitions.into_iter().map(|(k, _)| k).collect();
        assert_eq!(order, vec![b.clone(), c.clone(), a.clone()]);
        // An error is always answered, and the partition again once the error is gone, even
        // with the old high watermark.
        let mut failed = outcome(-1, false);
        failed.error_code = ResponseError::NotLeaderOrFollower.code();
        let flags = cache
            .finish(
                id,
                epoch,
                &[
                    (b.clone(), outcome(11, false)),
                    (c.clone(), failed),
                    (a.clone(), outcome(10, false)),
                ],
            )
            .unwrap();
        assert_eq!(flags, vec![false, true, false]);
        let (epoch, _) = incremental(&mut cache, id, epoch, &[], &[]);
        let flags = cache
            .finish(
                id,
                epoch,
                &[
                    (b.clone(), outcome(11, false)),
                    (c.clone(), outcome(10, false)),
                    (a.clone(), outcome(10, false)),
                ],
            )
            .unwrap();
        assert_eq!(flags, vec![false, true, false]);
        // A log start offset change is answered too.
        let (epoch, _) = incremental(&mut cache, id, epoch, &[], &[]);
        let mut trimmed = outcome(11, false);
        trimmed.log_start_offset = 3;
        let flags = cache.finish(id, epoch, &[(b.clone(), trimmed)]).unwrap();
        assert_eq!(flags, vec![true]);
    }

    #[test]
    fn an_overtaken_or_closed_session_answers_with_an_error() {
        let mut cache = cache(10);
        let a = key("t", 0);
        let id = open(&mut cache, Instant::now(), std::slice::from_ref(&a));
        let (first, _) = incremental(&mut cache, id, 1, &[], &[]);
        // A second request of the same session was accepted before the first one answered.
        let (second, _) = incremental(&mut cache, id, first, &[], &[]);
        let read = [(a.clone(), outcome(10, false))];
        assert_eq!(
            cache.finish(id, first, &read),
            Err((ResponseError::InvalidFetchSessionEpoch, id))
        );
        assert_eq!(cache.finish(id, second, &read), Ok(vec![false]));
        cache.remove(id);
        assert_eq!(
            cache.finish(id, second, &read),
            Err((ResponseError::FetchSessionIdNotFound, 0))
        );
    }

    #[test]
    fn eviction_follows_kafkas_rules() {
        let mut cache = cache(2);
        let t0 = Instant::now();
        let small = open(&mut cache, t0, &[key("t", 0)]);
        let big = open(&mut cache, t0, &[key("t", 0), key("t", 1), key("t", 2)]);
        assert!(small > 0 && big > 0 && small != big);
        // Full, and nobody is idle or old enough to be evicted.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(open(&mut cache, t1, &[key("u", 0), key("u", 1)]), 0);
        assert_eq!(cache.evictions(), 0);
        // Both sessions are old now, but were used recently: a new session evicts the smallest
        // one only if it is bigger.
        let t2 = t0 + EVICTION_IDLE + Duration::from_secs(1);
        incremental(&mut cache, small, 1, &[], &[]);
        incremental(&mut cache, big, 1, &[], &[]);
        for id in [small, big] {
            cache.sessions.get_mut(&id).unwrap().last_used = t2;
        }
        assert_eq!(open(&mut cache, t2, &[key("u", 0)]), 0, "not bigger");
        let two = open(&mut cache, t2, &[key("u", 0), key("u", 1)]);
        assert!(two > 0);
        assert_eq!(cache.evictions(), 1);
        assert!(!cache.sessions.contains_key(&small));
        assert_eq!(
            cache.begin(t2, small, 2, false, &[], &[]),
            FetchContext::Error(ResponseError::FetchSessionIdNotFound)
        );
        // Idle past the limit: the least recently used session goes, whatever its size.
        cache.sessions.get_mut(&two).unwrap().last_used = t2 + Duration::from_secs(5);
        let t3 = t2 + EVICTION_IDLE + Duration::from_secs(1);
        let one = open(&mut cache, t3, &[key("v", 0)]);
        assert!(one > 0);
        assert_eq!(cache.evictions(), 2);
        assert!(
            !cache.sessions.contains_key(&big),
            "big was used least recently"
        );
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.cached_partitions(), 3);
    }

    #[test]
    fn partitions_are_bounded() {
        let mut cache = FetchSessionCache::new(0, 1, 10, 4, EVICTION_IDLE);
        let now = Instant::now();
        let too_many: Vec<_> = (0..5).map(|p| key("t", p)).collect();
        assert_eq!(open(&mut cache, now, &too_many), 0);
        let id = open(&mut cache, now, &too_many[..3]);
        assert!(id > 0);
        // A second session of 2 does not fit with the first's 3.
        assert_eq!(open(&mut cache, now, &too_many[..2]), 0);
        // Growing past the bound closes the session: the request is answered without one.
        let changes: Vec<_> = too_many[3..]
            .iter()
            .map(|k| (k.clone(), params(0)))
            .collect();
        assert_eq!(
            cache.begin(now, id, 1, false, &changes, &[]),
            FetchContext::Sessionless
        );
        assert!(cache.is_empty());
        assert_eq!(cache.cached_partitions(), 0);
        // No slots: no sessions at all.
        let mut off = FetchSessionCache::new(0, 1, 0, 4, EVICTION_IDLE);
        assert_eq!(
            off.begin(now, 0, INITIAL_EPOCH, false, &[], &[]),
            FetchContext::Sessionless
        );
    }

    #[test]
    fn session_ids_name_their_shard() {
        for nr_shards in [1, 2, 3, 7, 64] {
            let mut total = 0;
            for shard in 0..nr_shards {
                total += slots_for_shard(1000, shard, nr_shards);
                let mut cache = FetchSessionCache::new(shard, nr_shards, 100, 100, EVICTION_IDLE);
                let (low, high) = session_id_range(shard, nr_shards);
                assert!(low >= 1 && low < high);
                for _ in 0..50 {
                    let id = open(&mut cache, Instant::now(), &[key("t", 0)]);
                    assert!((low..high).contains(&id), "{id} outside {low}..{high}");
                    assert_eq!(owner_of_session(id, nr_shards), Some(shard));
                }
                assert_eq!(cache.len(), 50, "ids are unique");
            }
            assert_eq!(total, 1000);
            assert_eq!(owner_of_session(0, nr_shards), None);
            assert_eq!(owner_of_session(-5, nr_shards), None);
        }
        assert_eq!(slots_for_shard(1, 1, 2), 0);
        assert_eq!(slots_for_shard(1, 0, 2), 1);
    }
}
