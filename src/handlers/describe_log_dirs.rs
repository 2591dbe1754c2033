//! DescribeLogDirs (key 35), v1-4: the broker's one log directory (`log.dirs`' first entry)
//! with the size of every partition replica it holds, and (v4) the file system's total and
//! usable bytes.
//!
//! Every replica is current (there is no moving between directories), so the offset lag is 0
//! and none is a "future" replica.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::shard::Shard;

/// `(topic, partition) -> size in bytes` of the replicas one shard holds, or of those the
/// request names.
type Sizes = Vec<(String, i32, u64)>;

pub async fn handle(
    shard: &Rc<Shard>,
    _version: i16,
    request: DescribeLogDirsRequest,
) -> DescribeLogDirsResponse {
    // None: every replica; Some: only these (names not held here are left out, as Kafka does).
    let wanted: Option<HashMap<String, Vec<i32>>> = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.topic.0.to_string(), t.partitions))
            .collect()
    });
    let per_shard = (0..shard.nr_shards).map(|target| {
        let wanted = wanted.clone();
        shard.invoke_on(target, move |owner| async move {
            owner
                .owned_partitions()
                .iter()
                .filter(|p| {
                    wanted
                        .as_ref()
                        .is_none_or(|w| w.get(&p.topic).is_some_and(|ps| ps.contains(&p.index)))
                })
                .map(|p| (p.topic.clone(), p.index, p.log.size_bytes()))
                .collect::<Sizes>()
        })
    });
    let mut topics: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for (topic, index, size) in join_all(per_shard).await.into_iter().flatten() {
        let mut partition = DescribeLogDirsPartition::default();
        partition.partition_index = index;
        partition.partition_size = i64::try_from(size).unwrap_or(i64::MAX);
        partition.offset_lag = 0;
        partition.is_future_key = false;
        topics.entry(topic).or_default().push(partition);
    }
    let dir = &shard.config.data_dir;
    let mut result = DescribeLogDirsResult::default();
    result.log_dir = StrBytes::from_string(
        std::fs::canonicalize(dir)
            .unwrap_or_else(|_| dir.clone())
            .display()
            .to_string(),
    );
    match space_bytes(dir) {
        Some((total, usable)) => {
            result.total_bytes = total;
            result.usable_bytes = usable;
        }
        None => {
            // Kafka answers an offline directory with KAFKA_STORAGE_ERROR and no space figures.
            result.error_code = ResponseError::KafkaStorageError.code();
            result.total_bytes = -1;
            result.usable_bytes = -1;
        }
    }
    result.topics = topics
        .into_iter()
        .map(|(name, mut partitions)| {
            partitions.sort_by_key(|p| p.partition_index);
            let mut topic = DescribeLogDirsTopic::default();
            topic.name = TopicName(StrBytes::from_string(name));
            topic.partitions = partitions;
            topic
        })
        .collect();
    let mut response = DescribeLogDirsResponse::default();
    response.results = vec![result];
    response
}

/// (total, usable) bytes of the file system holding `dir`, from statvfs(3); usable is what an
/// unprivileged writer may still use (`f_bavail`), as Java's `File.getUsableSpace`.
fn space_bytes(dir: &Path) -> Option<(i64, i64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a valid, writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize as u128;
    let clamp = |blocks: u128| i64::try_from(blocks * block).unwrap_or(i64::MAX);
    Some((clamp(stat.f_blocks as u128), clamp(stat.f_bavail as u128)))
}
