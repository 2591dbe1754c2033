//! Where the coordination quorum keeps its Raft log: an in-memory copy that raft-rs reads
//! ([`RaftMemory`], the `raft::Storage` implementation) in front of a durable copy
//! ([`DurableLog`]: files under `<data-dir>/coordination/raft/` in production, a simulated disk
//! in the simulation).
//!
//! Files, each a sequence of CRC frames ([`super::frames`]) holding protobuf messages:
//! - `entries.log`: appended entries, fdatasync'ed before the quorum relies on them. A later
//!   entry with an index already present replaces that entry and everything after it (Raft's
//!   conflict rule), so replay applies frames in order with the same rule.
//! - `hardstate`: term, vote and commit index, replaced atomically (write, fsync, rename).
//! - `snapshot`: the state machine at some applied index, replaced atomically; `entries.log` is
//!   then rewritten to hold only the entries after it.
//!
//! The metadata is small (topics and brokers), so the whole log lives in memory too.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use super::frames::{decode_frames, encode_frame};

/// Largest frame accepted when reading the files back (a snapshot of 100,000 partitions is a
/// few MiB).
pub const MAX_FRAME_BYTES: usize = 256 << 20;

/// What survived on disk: enough to rebuild the in-memory copy.
#[derive(Debug, Default, Clone)]
pub struct Recovered {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    /// In index order, after the snapshot, without gaps.
    pub entries: Vec<Entry>,
}

/// The durable half of the Raft log. Every method returns once the change is on stable
/// storage: Raft's safety depends on it.
pub trait DurableLog {
    fn append(&mut self, entries: &[Entry]) -> io::Result<()>;
    fn set_hard_state(&mut self, hard_state: &HardState) -> io::Result<()>;
    /// Stores `snapshot` and drops the entries it covers; `kept` are the entries after it.
    fn save_snapshot(&mut self, snapshot: &Snapshot, kept: &[Entry]) -> io::Result<()>;
}

/// The Raft log as raft-rs reads it. Owned by the coordination node; `entries[0]` (if any) has
/// index `snapshot.index + 1`.
#[derive(Debug, Default)]
pub struct RaftMemory {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    entries: Vec<Entry>,
}

impl RaftMemory {
    /// Rebuilds the in-memory log from what was recovered; `voters` seeds the configuration of a
    /// brand-new quorum (every voter starts from the same one).
    pub fn new(recovered: Recovered, voters: &[u64]) -> RaftMemory {
        let mut memory = RaftMemory::default();
        match recovered.snapshot {
            Some(snapshot) => {
                memory.conf_state = snapshot.get_metadata().get_conf_state().clone();
                memory.snapshot = snapshot;
            }
            None => {
                memory.conf_state = ConfState::from((voters.to_vec(), vec![]));
                memory
                    .snapshot
                    .mut_metadata()
                    .set_conf_state(memory.conf_state.clone());
            }
        }
        memory.append(&recovered.entries);
        memory.hard_state = recovered.hard_state;
        // A snapshot holds committed entries only. A crash after a received snapshot was saved
        // and before the hard state was leaves the commit index behind it, which raft-rs
        // refuses to start from.
        memory.hard_state.commit = memory.hard_state.commit.max(memory.snapshot_index());
        let last = memory.last();
        if memory.hard_state.commit > last {
            // Cannot happen with a disk that keeps its promises; never trust a commit index
            // past the log we hold.
            tracing::warn!(
                commit = memory.hard_state.commit,
                last,
                "raft commit index beyond the log"
            );
            memory.hard_state.commit = last;
        }
        memory
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    pub fn current_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    fn first(&self) -> u64 {
        self.snapshot_index() + 1
    }

    fn last(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot_index(), |e| e.index)
    }

    /// Appends entries, replacing any conflicting suffix (Raft's rule).
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first_new) = entries.first().map(|e| e.index) else {
            return;
        };
        // Entries the snapshot already covers are dropped, not an error: a replayed log may
        // hold entries from before the last snapshot.
        let entries: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.index > self.snapshot_index())
            .collect();
        let Some(start) = entries.first().map(|e| e.index) else {
            return;
        };
        assert!(
            start <= self.last() + 1,
            "raft log gap: appending {start} (first {first_new}) after {}",
            self.last()
        );
        let keep = (start - self.first()) as usize;
        self.entries.truncate(keep);
        self.entries.extend(entries.into_iter().cloned());
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    /// Takes a snapshot received from the leader: it replaces the whole log.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) {
        let meta = snapshot.get_metadata();
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = meta.index;
        self.conf_state = meta.get_conf_state().clone();
        self.entries.clear();
        self.snapshot = snapshot;
    }

    /// Replaces the log's prefix up to `snapshot`'s index with the snapshot; returns the entries
    /// kept after it.
    pub fn compact_to(&mut self, snapshot: Snapshot) -> &[Entry] {
        let index = snapshot.get_metadata().index;
        assert!(index >= self.snapshot_index() && index <= self.last());
        let drop = (index - self.snapshot_index()) as usize;
        self.entries.drain(..drop);
        self.snapshot = snapshot;
        &self.entries
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }
}

impl Storage for RaftMemory {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = self.first();
        let mut entries = self.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.snapshot_index() {
            return Ok(self.snapshot.get_metadata().term);
        }
        if index < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(index - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Snapshots are taken as the state machine applies; the newest is always at hand.
        Ok(self.snapshot.clone())
    }
}

/// The production [`DurableLog`]: three files in one directory, blocking I/O with fdatasync.
/// Writes are rare (control plane: registrations, topic changes, elections).
pub struct DiskLog {
    dir: PathBuf,
    entries: File,
}

impl DiskLog {
    /// Opens (creating) the log under `dir` and returns what it holds.
    pub fn open(dir: &Path) -> io::Result<(DiskLog, Recovered)> {
        std::fs::create_dir_all(dir)?;
        let hard_state = match read_single(&dir.join("hardstate"))? {
            Some(bytes) => HardState::parse_from_bytes(&bytes).map_err(io::Error::other)?,
            None => HardState::default(),
        };
        let snapshot = match read_single(&dir.join("snapshot"))? {
            Some(bytes) => Some(Snapshot::parse_from_bytes(&bytes).map_err(io::Error::other)?),
            None => None,
        };
        let path = dir.join("entries.log");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (frames, valid_len) = decode_frames(&bytes, MAX_FRAME_BYTES);
        let mut memory = RaftMemory::new(
            Recovered {
                hard_state: HardState::default(),
                snapshot: snapshot.clone(),
                entries: Vec::new(),
            },
            &[],
        );
        for frame in frames {
            let entry = Entry::parse_from_bytes(frame).map_err(io::Error::other)?;
            memory.append(std::slice::from_ref(&entry));
        }
        if valid_len < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                cut_bytes = bytes.len() - valid_len,
                "raft log has an invalid tail; cutting it"
            );
            file.set_len(valid_len as u64)?;
            file.sync_data()?;
        }
        let recovered = Recovered {
            hard_state,
            snapshot,
            entries: memory.entries,
        };
        Ok((
            DiskLog {
                dir: dir.to_path_buf(),
                entries: file,
            },
            recovered,
        ))
    }
}

impl DurableLog for DiskLog {
    fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        let mut buffer = Vec::new();
        for entry in entries {
            encode_frame(
                &entry.write_to_bytes().map_err(io::Error::other)?,
                &mut buffer,
            );
        }
        self.entries.write_all(&buffer)?;
        self.entries.sync_data()
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> io::Result<()> {
        let bytes = hard_state.write_to_bytes().map_err(io::Error::other)?;
        write_single(&self.dir, "hardstate", &bytes)
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot, kept: &[Entry]) -> io::Result<()> {
        let bytes = snapshot.write_to_bytes().map_err(io::Error::other)?;
        write_single(&self.dir, "snapshot", &bytes)?;
        // Rewrite the entries after the snapshot into a new file, then swap it in. A crash in
        // between leaves the old file, whose entries the snapshot supersedes on replay.
        let mut buffer = Vec::new();
        for entry in kept {
            encode_frame(
                &entry.write_to_bytes().map_err(io::Error::other)?,
                &mut buffer,
            );
        }
        let tmp = self.dir.join("entries.log.tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(&buffer)?;
        file.sync_data()?;
        std::fs::rename(&tmp, self.dir.join("entries.log"))?;
        sync_dir(&self.dir)?;
        self.entries = OpenOptions::new()
            .append(true)
            .open(self.dir.join("entries.log"))?;
        Ok(())
    }
}

/// Reads a file holding one frame; `None` if it does not exist. A damaged file is an error: it
/// was replaced atomically, so damage is not a torn write but a broken disk.
fn read_single(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let (frames, _) = decode_frames(&bytes, MAX_FRAME_BYTES);
    match frames.first() {
        Some(payload) => Ok(Some(payload.to_vec())),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is damaged (CRC or length)", path.display()),
        )),
    }
}

/// Replaces `dir/name` atomically with one frame holding `payload`.
fn write_single(dir: &Path, name: &str, payload: &[u8]) -> io::Result<()> {
    let mut buffer = Vec::with_capacity(payload.len() + 8);
    encode_frame(payload, &mut buffer);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(&buffer)?;
    file.sync_data()?;
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn conflicting_entries_replace_the_suffix_on_replay() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, recovered) = DiskLog::open(dir.path()).unwrap();
            assert!(recovered.entries.is_empty());
            log.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
                .unwrap();
            // A new leader overwrote index 2 onwards.
            log.append(&[entry(2, 2, b"B")]).unwrap();
            let hs = HardState {
                term: 2,
                vote: 3,
                commit: 2,
                ..Default::default()
            };
            log.set_hard_state(&hs).unwrap();
        }
        let (_, recovered) = DiskLog::open(dir.path()).unwrap();
        let got: Vec<(u64, u64)> = recovered
            .entries
            .iter()
            .map(|e| (e.index, e.term))
            .collect();
        assert_eq!(got, vec![(1, 1), (2, 2)]);
        assert_eq!(recovered.hard_state.vote, 3);
        assert_eq!(recovered.hard_state.commit, 2);
    }

    #[test]
    fn a_snapshot_compacts_the_file_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = DiskLog::open(dir.path()).unwrap();
            log.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
                .unwrap();
            let mut snapshot = Snapshot::default();
            snapshot.mut_metadata().index = 2;
            snapshot.mut_metadata().term = 1;
            snapshot.data = b"state".to_vec().into();
            log.save_snapshot(&snapshot, &[entry(3, 1, b"c")]).unwrap();
            log.append(&[entry(4, 1, b"d")]).unwrap();
        }
        OpenOptions::new()
            .append(true)
            .open(dir.path().join("entries.log"))
            .unwrap()
            .write_all(&[9, 0, 0, 0, 1])
            .unwrap();
        let (_, recovered) = DiskLog::open(dir.path()).unwrap();
        assert_eq!(&recovered.snapshot.unwrap().data[..], b"state");
        let got: Vec<u64> = recovered.entries.iter().map(|e| e.index).collect();
        assert_eq!(got, vec![3, 4]);
    }

    #[test]
    fn a_commit_index_behind_the_snapshot_is_raised_to_it() {
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 5;
        snapshot.mut_metadata().term = 2;
        let hard_state = HardState {
            commit: 3,
            ..Default::default()
        };
        let memory = RaftMemory::new(
            Recovered {
                hard_state,
                snapshot: Some(snapshot),
                entries: vec![],
            },
            &[1],
        );
        assert_eq!(memory.hard_state().commit, 5);
    }

    #[test]
    fn memory_answers_raft_queries_around_the_snapshot() {
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 5;
        snapshot.mut_metadata().term = 2;
        let memory = RaftMemory::new(
            Recovered {
                hard_state: HardState::default(),
                snapshot: Some(snapshot),
                entries: vec![entry(6, 2, b""), entry(7, 3, b"")],
            },
            &[1],
        );
        assert_eq!(memory.first_index().unwrap(), 6);
        assert_eq!(memory.last_index().unwrap(), 7);
        assert_eq!(memory.term(5).unwrap(), 2);
        assert_eq!(memory.term(7).unwrap(), 3);
        assert!(memory.term(4).is_err());
        assert!(memory
            .entries(5, 7, None, GetEntriesContext::empty(false))
            .is_err());
        assert_eq!(
            memory
                .entries(6, 8, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            2
        );
    }
}
