//! Partition logs. (Placeholder API; the real implementation lands from the storage branch.)
#![allow(unused_variables, dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use crate::protocol::record_batch::BatchHeader;

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub segment_bytes: u64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub index_interval_bytes: u32,
    pub max_batch_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            retention_ms: 7 * 24 * 3_600_000,
            retention_bytes: -1,
            index_interval_bytes: 4096,
            max_batch_bytes: 1_048_588,
        }
    }
}

#[derive(Debug)]
pub enum StorageError {
    Io(std::io::Error),
    OffsetOutOfRange {
        requested: i64,
        log_start: i64,
        log_end: i64,
    },
    Closed,
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
impl std::error::Error for StorageError {}

pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub log_append_time_ms: i64,
}

pub struct ReadSlice {
    pub file: Arc<std::fs::File>,
    pub position: u64,
    pub len: usize,
}

pub struct PartitionLog;

impl PartitionLog {
    pub async fn open(dir: PathBuf, config: LogConfig) -> Result<Rc<PartitionLog>, StorageError> {
        todo!()
    }
    pub fn log_start_offset(&self) -> i64 {
        todo!()
    }
    pub fn log_end_offset(&self) -> i64 {
        todo!()
    }
    pub fn high_watermark(&self) -> i64 {
        todo!()
    }
    pub fn size_bytes(&self) -> u64 {
        todo!()
    }
    pub fn append(
        &self,
        batch: Bytes,
        header: &BatchHeader,
        leader_epoch: i32,
    ) -> Result<AppendInfo, StorageError> {
        todo!()
    }
    pub async fn wait_written(&self, end_offset: i64, durable: bool) -> Result<(), StorageError> {
        todo!()
    }
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one_batch: bool,
    ) -> Result<Option<ReadSlice>, StorageError> {
        todo!()
    }
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, StorageError> {
        todo!()
    }
    pub fn wait_for_data(&self, offset: i64) -> impl Future<Output = ()> {
        async { todo!() }
    }
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize, StorageError> {
        todo!()
    }
    pub fn recovered_producer_batches(&self) -> Vec<BatchHeader> {
        todo!()
    }
    pub async fn close(&self) -> Result<(), StorageError> {
        todo!()
    }
    pub async fn delete(&self) -> Result<(), StorageError> {
        todo!()
    }
}
