//! Sparse offset and time indexes of one segment.
//!
//! Both are kept in memory (8 or 12 bytes per `index_interval_bytes` of log, i.e. about 0.2% of
//! the log) and written to `.index` / `.timeindex` files with ordinary buffered writes when a
//! segment is closed. The files are derived data: they are loaded only for closed segments and
//! only when [`OffsetIndex::decode`] / [`TimeIndex::decode`] find them consistent; otherwise the
//! segment is rescanned and they are rebuilt.
//!
//! Entry semantics (both written at the same batches, every `index_interval_bytes`):
//! - offset entry `(relative base offset of batch B, file position of B)`;
//! - time entry `(max timestamp of every batch up to and including B, relative base offset of B)`,
//!   written only when that maximum grew since the previous time entry.
//!
//! So for a time entry `(t, o)` every record at an offset below the end of batch `o` has a
//! timestamp `<= t`, which is what lets [`TimeIndex::last_below`] skip ahead safely.

/// Bytes of one `.index` entry: relative offset i32 BE + position i32 BE.
pub const OFFSET_ENTRY_BYTES: usize = 8;
/// Bytes of one `.timeindex` entry: timestamp i64 BE + relative offset i32 BE.
pub const TIME_ENTRY_BYTES: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    /// Base offset of the batch minus the segment's base offset.
    pub relative_offset: u32,
    /// File position of the batch's first byte.
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

/// The sparse offset index of one segment.
#[derive(Debug, Default)]
pub struct OffsetIndex {
    entries: Vec<OffsetEntry>,
}

impl OffsetIndex {
    /// Appends an entry; offsets and positions must be strictly increasing.
    pub fn push(&mut self, entry: OffsetEntry) {
        if let Some(last) = self.entries.last() {
            assert!(
                entry.relative_offset > last.relative_offset && entry.position > last.position,
                "offset index entries must strictly increase: {last:?} then {entry:?}"
            );
        }
        assert!(entry.relative_offset <= i32::MAX as u32 && entry.position <= i32::MAX as u32);
        self.entries.push(entry);
    }

    /// The last entry whose relative offset is `<= relative_offset`: the batch holding that
    /// offset starts at or after the entry's position.
    pub fn lookup(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let after = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        after.checked_sub(1).map(|i| self.entries[i])
    }

    /// The last entry at a position `<= position`.
    pub fn lookup_position(&self, position: u32) -> Option<OffsetEntry> {
        let after = self.entries.partition_point(|e| e.position <= position);
        after.checked_sub(1).map(|i| self.entries[i])
    }

    pub fn last(&self) -> Option<OffsetEntry> {
        self.entries.last().copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[OffsetEntry] {
        &self.entries
    }

    /// Releases growth slack once a segment is closed and the index stops growing.
    pub fn shrink_to_fit(&mut self) {
        self.entries.shrink_to_fit();
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * OFFSET_ENTRY_BYTES);
        for e in &self.entries {
            out.extend_from_slice(&(e.relative_offset as i32).to_be_bytes());
            out.extend_from_slice(&(e.position as i32).to_be_bytes());
        }
        out
    }

    /// Parses an `.index` file, rejecting it as stale unless every entry is plausible for a log
    /// file of `log_bytes`: whole entries, non-negative, strictly increasing, inside the file.
    pub fn decode(bytes: &[u8], log_bytes: u64) -> Result<OffsetIndex, String> {
        if !bytes.len().is_multiple_of(OFFSET_ENTRY_BYTES) {
            return Err(format!(
                "size {} is not a multiple of {OFFSET_ENTRY_BYTES}",
                bytes.len()
            ));
        }
        let mut entries = Vec::with_capacity(bytes.len() / OFFSET_ENTRY_BYTES);
        let mut previous: Option<OffsetEntry> = None;
        for chunk in bytes.chunks_exact(OFFSET_ENTRY_BYTES) {
            let relative_offset = i32::from_be_bytes(chunk[0..4].try_into().expect("4 bytes"));
            let position = i32::from_be_bytes(chunk[4..8].try_into().expect("4 bytes"));
            if relative_offset < 0 || position < 0 {
                return Err(format!("negative entry ({relative_offset}, {position})"));
            }
            let entry = OffsetEntry {
                relative_offset: relative_offset as u32,
                position: position as u32,
            };
            if entry.position as u64 >= log_bytes {
                return Err(format!("position {position} past the log end {log_bytes}"));
            }
            if let Some(p) = previous {
                if entry.relative_offset <= p.relative_offset || entry.position <= p.position {
                    return Err(format!("entries not increasing: {p:?} then {entry:?}"));
                }
            }
            previous = Some(entry);
            entries.push(entry);
        }
        Ok(OffsetIndex { entries })
    }
}

/// The sparse time index of one segment.
#[derive(Debug, Default)]
pub struct TimeIndex {
    entries: Vec<TimeEntry>,
}

impl TimeIndex {
    /// Appends an entry; timestamps and offsets must be strictly increasing.
    pub fn push(&mut self, entry: TimeEntry) {
        if let Some(last) = self.entries.last() {
            assert!(
                entry.timestamp > last.timestamp && entry.relative_offset > last.relative_offset,
                "time index entries must strictly increase: {last:?} then {entry:?}"
            );
        }
        assert!(entry.relative_offset <= i32::MAX as u32);
        self.entries.push(entry);
    }

    /// The last entry whose timestamp is strictly below `timestamp`: every record up to the end
    /// of that entry's batch is older than `timestamp`, so a search may start at that batch.
    pub fn last_below(&self, timestamp: i64) -> Option<TimeEntry> {
        let after = self.entries.partition_point(|e| e.timestamp < timestamp);
        after.checked_sub(1).map(|i| self.entries[i])
    }

    pub fn last(&self) -> Option<TimeEntry> {
        self.entries.last().copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[TimeEntry] {
        &self.entries
    }

    pub fn shrink_to_fit(&mut self) {
        self.entries.shrink_to_fit();
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * TIME_ENTRY_BYTES);
        for e in &self.entries {
            out.extend_from_slice(&e.timestamp.to_be_bytes());
            out.extend_from_slice(&(e.relative_offset as i32).to_be_bytes());
        }
        out
    }

    /// Parses a `.timeindex` file, rejecting it as stale unless it holds whole, strictly
    /// increasing entries.
    pub fn decode(bytes: &[u8]) -> Result<TimeIndex, String> {
        if !bytes.len().is_multiple_of(TIME_ENTRY_BYTES) {
            return Err(format!(
                "size {} is not a multiple of {TIME_ENTRY_BYTES}",
                bytes.len()
            ));
        }
        let mut entries = Vec::with_capacity(bytes.len() / TIME_ENTRY_BYTES);
        let mut previous: Option<TimeEntry> = None;
        for chunk in bytes.chunks_exact(TIME_ENTRY_BYTES) {
            let timestamp = i64::from_be_bytes(chunk[0..8].try_into().expect("8 bytes"));
            let relative_offset = i32::from_be_bytes(chunk[8..12].try_into().expect("4 bytes"));
            if relative_offset < 0 {
                return Err(format!("negative relative offset {relative_offset}"));
            }
            let entry = TimeEntry {
                timestamp,
                relative_offset: relative_offset as u32,
            };
            if let Some(p) = previous {
                if entry.timestamp <= p.timestamp || entry.relative_offset <= p.relative_offset {
                    return Err(format!("entries not increasing: {p:?} then {entry:?}"));
                }
            }
            previous = Some(entry);
            entries.push(entry);
        }
        Ok(TimeIndex { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset_index(entries: &[(u32, u32)]) -> OffsetIndex {
        let mut index = OffsetIndex::default();
        for &(relative_offset, position) in entries {
            index.push(OffsetEntry {
                relative_offset,
                position,
            });
        }
        index
    }

    #[test]
    fn offset_index_round_trips_and_looks_up() {
        let index = offset_index(&[(10, 4100), (25, 8300), (40, 12_500)]);
        let decoded = OffsetIndex::decode(&index.encode(), 20_000).unwrap();
        assert_eq!(decoded.entries(), index.entries());
        assert_eq!(index.lookup(9), None);
        assert_eq!(index.lookup(10).unwrap().position, 4100);
        assert_eq!(index.lookup(24).unwrap().position, 4100);
        assert_eq!(index.lookup(1000).unwrap().position, 12_500);
        assert_eq!(index.lookup_position(8299).unwrap().relative_offset, 10);
    }

    #[test]
    fn stale_offset_index_is_rejected() {
        let good = offset_index(&[(10, 4100), (25, 8300)]).encode();
        assert!(
            OffsetIndex::decode(&good[..7], 20_000).is_err(),
            "partial entry"
        );
        assert!(
            OffsetIndex::decode(&good, 8300).is_err(),
            "position past the log"
        );
        assert!(
            OffsetIndex::decode(&[0xff; 16], 20_000).is_err(),
            "negative"
        );
        assert!(
            OffsetIndex::decode(&[0; 16], 20_000).is_err(),
            "zeroed entries repeat"
        );
        let mut swapped = good[8..].to_vec();
        swapped.extend_from_slice(&good[..8]);
        assert!(
            OffsetIndex::decode(&swapped, 20_000).is_err(),
            "not increasing"
        );
        assert!(OffsetIndex::decode(&[], 0).unwrap().is_empty());
    }

    #[test]
    fn time_index_round_trips_and_finds_last_below() {
        let mut index = TimeIndex::default();
        index.push(TimeEntry {
            timestamp: 100,
            relative_offset: 5,
        });
        index.push(TimeEntry {
            timestamp: 200,
            relative_offset: 9,
        });
        let decoded = TimeIndex::decode(&index.encode()).unwrap();
        assert_eq!(decoded.entries(), index.entries());
        assert_eq!(index.last_below(100), None);
        assert_eq!(index.last_below(101).unwrap().relative_offset, 5);
        assert_eq!(index.last_below(200).unwrap().relative_offset, 5);
        assert_eq!(index.last_below(i64::MAX).unwrap().relative_offset, 9);
        assert!(TimeIndex::decode(&[0; 24]).is_err());
        assert!(TimeIndex::decode(&[0; 13]).is_err());
    }

    #[test]
    #[should_panic(expected = "strictly increase")]
    fn offset_index_asserts_monotonic_pushes() {
        offset_index(&[(10, 4100), (10, 8300)]);
    }
}
