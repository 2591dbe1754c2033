//! The simulated disk: what survives a simulated crash, and how a lying disk breaks its promises.

use super::*;

/// What a disk holds: the same three parts as `DiskLog`'s files.
#[derive(Debug, Clone, Default)]
pub(super) struct DiskImage {
    pub(super) hard_state: HardState,
    pub(super) snapshot: Option<Snapshot>,
    /// After the snapshot, in index order.
    pub(super) entries: Vec<Entry>,
}

impl DiskImage {
    pub(super) fn snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.get_metadata().index)
    }

    pub(super) fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot_index(), |e| e.index)
    }

    /// Appends with Raft's conflict rule, as `DiskLog` replays its file: a new entry at an index
    /// already present replaces it and everything after.
    pub(super) fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        let Some(first) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        if first > self.last_index() + 1 {
            // DiskLog would write it and fail to replay it; report it where it happens.
            return Err(io::Error::other(format!(
                "append at {first} leaves a gap after {}",
                self.last_index()
            )));
        }
        let snapshot_index = self.snapshot_index();
        self.entries.retain(|e| e.index < first);
        self.entries
            .extend(entries.iter().filter(|e| e.index > snapshot_index).cloned());
        Ok(())
    }

    pub(super) fn recovered(&self) -> Recovered {
        Recovered {
            hard_state: self.hard_state.clone(),
            snapshot: self.snapshot.clone(),
            entries: self.entries.clone(),
        }
    }
}

/// One node's disk: what the node was told is written, and what survives a crash.
#[derive(Debug)]
pub struct SimDisk {
    pub(super) fault: DiskFault,
    /// What the node has written (and been told is durable).
    pub(super) written: DiskImage,
    /// What a crash leaves. Equal to `written` for an honest disk.
    pub(super) durable: DiskImage,
    /// Armed: the process dies before this many more writes complete (kill -9 between two
    /// fsyncs). The write fails, the runtime exits on a failed write, the simulator crashes it.
    pub(super) crash_after_writes: Option<u32>,
    /// The armed crash happened.
    pub(super) crashed_mid_write: bool,
}

impl SimDisk {
    pub(super) fn new(fault: DiskFault) -> SimDisk {
        SimDisk {
            fault,
            written: DiskImage::default(),
            durable: DiskImage::default(),
            crash_after_writes: None,
            crashed_mid_write: false,
        }
    }

    /// Counts down an armed crash: an error means the process died before this write.
    pub(super) fn before_write(&mut self) -> io::Result<()> {
        match self.crash_after_writes {
            Some(0) => {
                self.crash_after_writes = None;
                self.crashed_mid_write = true;
                Err(io::Error::other("simulated crash between two disk writes"))
            }
            Some(n) => {
                self.crash_after_writes = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The OS writing dirty pages back: a lying disk's writes become durable after all.
    pub(super) fn write_back(&mut self) {
        if self.fault != DiskFault::None {
            self.durable = self.written.clone();
        }
    }

    /// Power loss or kill -9: only what is durable remains.
    pub(super) fn crash(&mut self) {
        self.crash_after_writes = None;
        self.crashed_mid_write = false;
        if self.fault != DiskFault::None {
            self.written = self.durable.clone();
        }
    }
}

/// The node's handle on its [`SimDisk`].
pub(super) struct SimDiskHandle(pub(super) Rc<RefCell<SimDisk>>);

impl DurableLog for SimDiskHandle {
    fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        let mut disk = self.0.borrow_mut();
        disk.before_write()?;
        disk.written.append(entries)?;
        match disk.fault {
            DiskFault::LosesUnsynced => Ok(()),
            DiskFault::None | DiskFault::LosesHardState => disk.durable.append(entries),
        }
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> io::Result<()> {
        let mut disk = self.0.borrow_mut();
        disk.before_write()?;
        disk.written.hard_state = hard_state.clone();
        if disk.fault == DiskFault::None {
            disk.durable.hard_state = hard_state.clone();
        }
        Ok(())
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot, kept: &[Entry]) -> io::Result<()> {
        let mut disk = self.0.borrow_mut();
        disk.before_write()?;
        disk.written.snapshot = Some(snapshot.clone());
        disk.written.entries = kept.to_vec();
        if disk.fault != DiskFault::LosesUnsynced {
            disk.durable.snapshot = Some(snapshot.clone());
            disk.durable.entries = kept.to_vec();
        }
        Ok(())
    }
}
