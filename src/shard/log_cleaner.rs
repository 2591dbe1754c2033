//! The shard's log cleaner task: every `log.cleaner.backoff.ms`, one cleaning pass over the
//! compacted logs this shard owns (topics with `compact` in `cleanup.policy`, and a single
//! node's own `__consumer_offsets` logs and `__transaction_state-0`), each through [`crate::storage::cleaner::clean`].
//!
//! It runs in its own task queue with few shares, so produce and fetch go first whenever
//! both are runnable; the file work of a run happens on glommio's blocking thread pool, so
//! the shard itself only picks segments and switches segment lists.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use glommio::{Latency, Shares};

use super::Shard;
use crate::groups::OFFSETS_TOPIC;
use crate::storage::cleaner::{self, CompactionConfig};
use crate::storage::PartitionLog;

/// The cleaner's share of the shard against the default queue's 1000 (as the console's).
const CLEANER_SHARES: usize = 10;

/// Whether a topic's `cleanup.policy` (default `delete`) has `compact`, and `delete`.
pub fn cleanup_policy(configs: &BTreeMap<String, String>) -> (bool, bool) {
    let policy = configs
        .get("cleanup.policy")
        .map_or("delete", String::as_str);
    let has = |item: &str| policy.split(',').any(|p| p.trim() == item);
    (has("compact"), has("delete"))
}

/// A topic's compaction settings: its configs over the broker's `log.cleaner.*` defaults.
pub fn compaction_config(
    defaults: &CompactionConfig,
    configs: &BTreeMap<String, String>,
) -> CompactionConfig {
    let long = |key: &str, default: i64| {
        configs
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    CompactionConfig {
        min_cleanable_dirty_ratio: configs
            .get("min.cleanable.dirty.ratio")
            .and_then(|v| v.parse().ok())
            .unwrap_or(defaults.min_cleanable_dirty_ratio),
        min_compaction_lag_ms: long("min.compaction.lag.ms", defaults.min_compaction_lag_ms),
        max_compaction_lag_ms: long("max.compaction.lag.ms", defaults.max_compaction_lag_ms),
        delete_retention_ms: long("delete.retention.ms", defaults.delete_retention_ms),
    }
}

/// Starts the cleaner task on this shard (unless `log.cleaner.enable=false`).
pub fn spawn(shard: Rc<Shard>) {
    if !shard.config.cleaner.enable {
        return;
    }
    let queue = glommio::executor().create_task_queue(
        Shares::Static(CLEANER_SHARES),
        Latency::NotImportant,
        "log-cleaner",
    );
    super::stall::name_queue(queue, "log-cleaner");
    match glommio::spawn_local_into(run(shard), queue) {
        Ok(task) => drop(task.detach()),
        Err(e) => tracing::error!(error = %e, "cannot start the log cleaner"),
    }
}

async fn run(shard: Rc<Shard>) {
    let tick = Duration::from_millis(100);
    let backoff = Duration::from_millis(shard.config.cleaner.backoff_ms.max(10));
    let mut waited = Duration::ZERO;
    while !shard.is_shutting_down() {
        let step = tick.min(backoff);
        glommio::timer::sleep(step).await;
        waited += step;
        if waited >= backoff {
            waited = Duration::ZERO;
            clean_once(&shard).await;
        }
    }
}

/// The compacted logs this shard owns, with their settings.
fn compacted_logs(shard: &Shard) -> Vec<(String, Rc<PartitionLog>, CompactionConfig)> {
    let defaults = &shard.config.cleaner.defaults;
    let snapshot = shard.metadata();
    let mut logs = Vec::new();
    for partition in shard.owned_partitions() {
        let name = format!("{}-{}", partition.topic, partition.index);
        if partition.topic == OFFSETS_TOPIC {
            logs.push((name, partition.log.clone(), *defaults));
            continue;
        }
        let Some(topic) = snapshot
            .topic(&partition.topic)
            .filter(|t| t.id == partition.topic_id)
        else {
            continue;
        };
        if cleanup_policy(&topic.configs).0 {
            let config = compaction_config(defaults, &topic.configs);
            logs.push((name, partition.log.clone(), config));
        }
    }
    for log in shard.groups.own_offsets_logs() {
        let name = log.dir().display().to_string();
        logs.push((name, log, *defaults));
    }
    if shard.id == 0 {
        if let Some(log) = crate::transactions::coordinator::own_state_log() {
            let name = log.dir().display().to_string();
            logs.push((name, log, *defaults));
        }
    }
    logs
}

async fn clean_once(shard: &Shard) {
    let budget = shard.config.cleaner.dedupe_buffer_bytes;
    for (name, log, config) in compacted_logs(shard) {
        if shard.is_shutting_down() {
            return;
        }
        match cleaner::clean(&log, &config, super::now_ms(), budget).await {
            Ok(Some(stats)) if stats.segments_rewritten > 0 => tracing::info!(
                log = %name,
                segments = stats.segments_rewritten,
                bytes_before = stats.bytes_read,
                bytes_after = stats.bytes_written,
                records_removed = stats.records_removed,
                dirty_ratio = stats.dirty_ratio,
                "log cleaner compacted segments"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(log = %name, error = %e, "log cleaner run failed"),
        }
        glommio::yield_if_needed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn policies_and_settings_come_from_the_topic_over_the_broker() {
        assert_eq!(cleanup_policy(&configs(&[])), (false, true));
        let compact = configs(&[("cleanup.policy", "compact")]);
        assert_eq!(cleanup_policy(&compact), (true, false));
        let both = configs(&[("cleanup.policy", "compact,delete")]);
        assert_eq!(cleanup_policy(&both), (true, true));
        let defaults = CompactionConfig {
            delete_retention_ms: 5,
            ..CompactionConfig::default()
        };
        let topic = configs(&[
            ("min.cleanable.dirty.ratio", "0.25"),
            ("min.compaction.lag.ms", "7"),
        ]);
        let config = compaction_config(&defaults, &topic);
        assert_eq!(config.min_cleanable_dirty_ratio, 0.25);
        assert_eq!(config.min_compaction_lag_ms, 7);
        assert_eq!(config.delete_retention_ms, 5, "the broker's default");
        assert_eq!(config.max_compaction_lag_ms, i64::MAX);
    }
}
