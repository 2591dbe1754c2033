//! Which closed segments retention deletes. Pure, so the policy is tested without files.
//!
//! Kafka's rules: segments go oldest first and only as a prefix (log_start_offset moves forward,
//! never leaving holes), the active segment never goes, and
//! - time: a segment goes when its largest timestamp is older than `now - retention_ms`;
//! - size: a segment goes when the log without it still holds at least `retention_bytes`
//!   (Kafka never deletes below the limit, so a log keeps up to one segment more than it).

use super::LogConfig;

/// What retention needs to know about one closed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSummary {
    /// Largest record timestamp (or the file mtime when there is none), ms.
    pub retention_timestamp_ms: i64,
    pub size_bytes: u64,
}

/// Number of leading segments of `closed` (oldest first, active excluded) to delete from a log
/// of `log_size_bytes` in total.
pub fn deletable_prefix(
    closed: &[SegmentSummary],
    log_size_bytes: u64,
    config: &LogConfig,
    now_ms: i64,
) -> usize {
    let mut count = 0;
    if config.retention_ms >= 0 {
        let oldest_kept_ms = now_ms.saturating_sub(config.retention_ms);
        count = closed
            .iter()
            .take_while(|s| s.retention_timestamp_ms < oldest_kept_ms)
            .count();
    }
    if config.retention_bytes >= 0 {
        let limit = config.retention_bytes as u64;
        let deleted_bytes: u64 = closed[..count].iter().map(|s| s.size_bytes).sum();
        let mut remaining = log_size_bytes.saturating_sub(deleted_bytes);
        while let Some(segment) = closed.get(count) {
            match remaining.checked_sub(segment.size_bytes) {
                Some(after) if after >= limit => remaining = after,
                _ => break,
            }
            count += 1;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summaries(list: &[(i64, u64)]) -> Vec<SegmentSummary> {
        list.iter()
            .map(|&(retention_timestamp_ms, size_bytes)| SegmentSummary {
                retention_timestamp_ms,
                size_bytes,
            })
            .collect()
    }

    fn config(retention_ms: i64, retention_bytes: i64) -> LogConfig {
        LogConfig {
            retention_ms,
            retention_bytes,
            ..LogConfig::default()
        }
    }

    #[test]
    fn time_retention_deletes_an_old_prefix_only() {
        let closed = summaries(&[(100, 10), (500, 10), (150, 10)]);
        assert_eq!(deletable_prefix(&closed, 40, &config(1000, -1), 1_200), 1);
        assert_eq!(deletable_prefix(&closed, 40, &config(1000, -1), 1_501), 3);
        assert_eq!(
            deletable_prefix(&closed, 40, &config(1000, -1), 1_100),
            0,
            "100 is not < 100"
        );
        assert_eq!(deletable_prefix(&closed, 40, &config(-1, -1), i64::MAX), 0);
    }

    #[test]
    fn size_retention_keeps_at_least_the_limit() {
        // 3 closed segments of 10 bytes + an active one of 5 bytes = 35 bytes.
        let closed = summaries(&[(0, 10), (0, 10), (0, 10)]);
        assert_eq!(deletable_prefix(&closed, 35, &config(-1, 25), 0), 1);
        assert_eq!(deletable_prefix(&closed, 35, &config(-1, 5), 0), 3);
        assert_eq!(deletable_prefix(&closed, 35, &config(-1, 6), 0), 2);
        assert_eq!(
            deletable_prefix(&closed, 35, &config(-1, 0), 0),
            3,
            "never the active one"
        );
        assert_eq!(deletable_prefix(&closed, 35, &config(-1, 100), 0), 0);
    }

    #[test]
    fn time_and_size_combine() {
        let closed = summaries(&[(100, 10), (5_000, 10), (5_000, 10)]);
        assert_eq!(deletable_prefix(&closed, 35, &config(1000, 10), 2_000), 2);
    }
}
