//! The shard's journal: where an acks=1 append becomes safe before its segment write.
//!
//! # Why
//! Segment appends are O_DIRECT: a batch is in no page cache until the device has it. If an
//! acks=1 produce waited for that write, and consumers only saw written bytes, every hold of the
//! device (this project's VMs hold all writes for 50-300 ms a few times an hour, with or without
//! the broker: docs/benchmarks.md) would hold every producer and consumer of the shard for its
//! whole length. Kafka answers acks=1 once the batch is in the page cache, which survives the
//! process but not the machine; the device's holds never reach its clients.
//!
//! The journal gives this broker the same guarantee without giving up O_DIRECT: each shard
//! copies every appended batch (offsets assigned) into a ring in a file on a memory file system
//! (tmpfs, `/dev/shm` by default), mapped shared. Memory of a shared tmpfs mapping belongs to
//! the kernel, so the copy survives the process (`kill -9`, a panic, an abort) the moment the
//! copy is done; not the machine (a reboot empties tmpfs, as it empties Kafka's page cache).
//! The partition's *journaled* mark ([`super::notify::Mark::Journaled`]) then moves at once:
//! acks=1 is answered and consumers may read the batch (from the tail cache, in memory). The
//! segment write goes on as before; once it completes, the entry's space is the ring's again.
//! acks=all is unchanged: it waits for fdatasync on every in-sync replica.
//!
//! On start-up the previous run's journal files are read before any log opens
//! ([`recover_previous`]); each log, once its segment files are recovered, appends the
//! journaled batches that follow its end ([`take_recovered`]) and syncs them; then the old
//! files go ([`finish_recovery`]).
//!
//! # The file
//! `<dir>/shard-<id>-<pid>-<ns>.journal`: a [`FILE_HEADER_BYTES`] header, then the ring. Its
//! blocks are allocated with `fallocate` before any entry is stored in them (the first 8 MiB
//! when the file is created, the rest by a blocking-pool thread, 32 MiB at a time, that also
//! populates the page tables), so a store into the mapping can never meet a full tmpfs (which
//! would be `SIGBUS`). The header holds two slots, each the ring position and sequence number
//! of the oldest live entry with a check word; an update writes the older slot, so a process
//! dying in the middle of one leaves the other valid.
//!
//! An entry is [`ENTRY_HEADER_BYTES`] of header (kind, CRC-32C, length, batch length, sequence
//! number, directory name length), the partition's directory name, and the batch as it goes to
//! the segment, padded to 8 bytes. Entries never cross the end of the ring: a `WRAP` entry (or
//! less room than a header) sends the reader back to its start. The entry CRC covers its header
//! after the CRC field, the name and the batch up to and including the batch's own CRC field;
//! the batch's CRC covers the rest. Recovery walks from the oldest live entry while the
//! sequence numbers follow and both checksums hold: whatever comes after (an entry being
//! copied when the process died, an older lap) is not taken. An entry whose partition was
//! deleted or truncated while it was live is marked `DEAD` (its kind word only) and skipped.
//!
//! # Ownership
//! One journal per shard, in a thread-local ([`open_on_this_shard`]); only the shard's thread
//! touches it, like the logs whose batches it holds. Entries are freed in ring order, so a
//! partition whose write is slow holds the space of the entries behind it.
//!
//! # A full ring
//! A batch the ring has no room for waits, in arrival order behind any batch already waiting,
//! and is copied in as the oldest entries' writes free room ([`on_written`]), or left out once
//! its own write lands first. Its log's journaled mark (so its acks=1 and its consumers) waits
//! meanwhile: the ring's back-pressure is the time the oldest writes take to free one batch's
//! room, as a page cache's dirty limit throttles Kafka's writers. (Before, such a batch went
//! without the journal and waited for its own write, behind every unwritten byte of its
//! partition: a cliff of up to the ring's size at the device's rate.) Counted in
//! `broker_journal_full_total`. A batch that can never go in (larger than a quarter of the
//! ring, or a ring that could not be allocated) is refused at once and waits for its write.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::notify::{Mark, Notifier};
use crate::checksum::crc32c;

/// The file's first bytes: what it is and its layout's version.
pub const FILE_MAGIC: [u8; 8] = *b"BRKJRNL1";
/// Bytes before the ring: the magic, the ring's length, the two slots.
pub const FILE_HEADER_BYTES: u64 = 4096;
/// Where the header's two slots are (the oldest live entry's position, its sequence number,
/// a check word: 24 bytes each).
pub const SLOT_OFFSETS: [usize; 2] = [64, 128];
/// XORed into a slot's check word, so a zeroed slot is not valid.
const SLOT_CHECK_KEY: u64 = 0x6a72_6e6c_5f73_6c74;

const ENTRY_LIVE: u32 = 0x4c4e_524a;
const ENTRY_DEAD: u32 = 0x444e_524a;
const ENTRY_WRAP: u32 = 0x574e_524a;
pub const ENTRY_HEADER_BYTES: usize = 32;
/// Bytes of a batch before its records' CRC coverage starts: base offset, length, leader
/// epoch, magic, CRC. The entry's own CRC covers them.
const BATCH_PREFIX_BYTES: usize = 21;
/// Longest directory name an entry carries (topic names are at most 249 bytes).
const DIR_NAME_MAX_BYTES: usize = 512;

/// The smallest ring accepted: a few batches of the default maximum size.
pub const RING_MIN_BYTES: u64 = 4 << 20;

/// A file of the journal's kind in `dir`.
fn is_journal_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "journal")
}

/// One entry not yet freed: where it is and what frees it.
#[derive(Debug)]
struct LiveEntry {
    start: u64,
    seq: u64,
    log_id: u64,
    /// Freed once its log's written offset reaches `end_offset` (or the log is gone).
    notifier: Weak<Notifier>,
    end_offset: i64,
    dead: bool,
}

/// A leader's batch the ring had no room for when it was appended: copied in, in arrival
/// order, once the oldest entries' writes free room, unless its own write lands first.
#[derive(Debug)]
struct WaitingBatch {
    log_id: u64,
    notifier: Weak<Notifier>,
    dir_name: Rc<str>,
    /// The batch's first 16 bytes as they go to the segment (offset and epoch assigned).
    head: [u8; 16],
    /// The producer's bytes (a slice of its request: held, not copied, while it waits).
    batch: Bytes,
    base_offset: i64,
    end_offset: i64,
}

/// What became of a batch offered to the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Journaling {
    /// In the ring; its log's journaled mark moved over it if every offset below was
    /// journaled (or written).
    Stored,
    /// No room yet: it goes in as writes free room, and its journaled mark moves then.
    Waiting,
    /// Never goes in (no journal, a batch too large for the ring, a ring that could not be
    /// allocated): its segment write makes it safe.
    Refused,
}

/// The log behind `notifier` if it still exists and has not written up to `end_offset`: an
/// entry or a waiting batch of it still needs the ring.
fn unwritten_log(notifier: &Weak<Notifier>, end_offset: i64) -> Option<Rc<Notifier>> {
    notifier
        .upgrade()
        .filter(|n| n.get(Mark::Written) < end_offset)
}

/// The shard's journal: its mapping and the live entries in ring order.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    /// The shard's index, for its metrics cells.
    shard: usize,
    map: Mapping,
    ring_bytes: u64,
    /// Logical positions (the physical one is `% ring_bytes`): next entry, oldest live entry.
    head: u64,
    tail: u64,
    next_seq: u64,
    /// Which header slot the next update writes.
    next_slot: usize,
    live: VecDeque<LiveEntry>,
    /// Batches waiting for room, oldest first; while any waits, new batches queue behind it
    /// (so a log's entries stay in offset order, and a large batch is not starved by small
    /// ones).
    waiting: VecDeque<WaitingBatch>,
    /// Ring bytes allocated in the file system, from the ring's start: entries stay below.
    allocated: u64,
    /// How far the blocking-pool thread has allocated the rest ([`open_on_this_shard`]):
    /// `allocated` catches up with it when the ring needs room.
    allocation_progress: Option<Arc<AtomicU64>>,
    /// The rest of the ring could not be allocated: no more entries.
    refusing: bool,
    /// When a full ring was last reported.
    last_full_report: Option<std::time::Instant>,
    _file: File,
}

thread_local! {
    static JOURNAL: RefCell<Option<Journal>> = const { RefCell::new(None) };
    static NEXT_LOG_ID: Cell<u64> = const { Cell::new(1) };
}

/// An id for a log's entries on this shard (its `forget_log` names them).
pub fn next_log_id() -> u64 {
    NEXT_LOG_ID.with(|id| {
        let next = id.get();
        id.set(next + 1);
        next
    })
}

/// Creates this shard's journal file in `dir` (created if missing) and installs it on this
/// thread. The file is new for every run; the previous run's are read by [`recover_previous`].
///
/// Start-up pays for the ring's first [`FIRST_ALLOCATION_BYTES`] only: the rest is allocated
/// by a blocking-pool thread (zeroing 256 MiB of tmpfs pages takes about 70 ms) in
/// [`ALLOCATION_STEP_BYTES`] steps, and appends use the ring as far as it is allocated. Must
/// run on the shard's executor.
pub fn open_on_this_shard(dir: &Path, shard: usize, ring_bytes: u64) -> io::Result<()> {
    let mut journal = Journal::create(dir, shard, ring_bytes, FIRST_ALLOCATION_BYTES)?;
    // The mapping's address for the thread that populates it (see below).
    let ring_at = journal.map.as_ptr() as usize + FILE_HEADER_BYTES as usize;
    let first = journal.allocated;
    let rest = (first < ring_bytes).then(|| {
        let progress = Arc::new(AtomicU64::new(first));
        journal.allocation_progress = Some(progress.clone());
        (journal._file.try_clone(), journal.path.clone(), progress)
    });
    JOURNAL.with(|j| *j.borrow_mut() = Some(journal));
    let Some((file, path, progress)) = rest else {
        return Ok(());
    };
    let file = file?;
    glommio::spawn_local(async move {
        let allocated = glommio::executor()
            .spawn_blocking(move || {
                let mut done = first;
                while done < ring_bytes {
                    let step = ALLOCATION_STEP_BYTES.min(ring_bytes - done);
                    allocate(&file, FILE_HEADER_BYTES + done, step)?;
                    // And the page tables, so the first lap does not fault on the shard (128 k
                    // faults for 512 MiB). Best effort: kernels before 5.14 refuse it.
                    // SAFETY: the range is inside the journal's mapping, which lives as long as
                    // the shard (unmapped at its thread's exit); populating changes no content.
                    unsafe {
                        libc::madvise(
                            (ring_at + done as usize) as *mut libc::c_void,
                            step as usize,
                            libc::MADV_POPULATE_WRITE,
                        )
                    };
                    done += step;
                    // Release: the shard stores into these pages only after it saw this.
                    progress.store(done, Ordering::Release);
                }
                Ok::<(), io::Error>(())
            })
            .await;
        JOURNAL.with(|j| {
            let mut journal = j.borrow_mut();
            let Some(journal) = journal.as_mut().filter(|j| j.path == path) else {
                return;
            };
            match allocated {
                Ok(()) => journal.allocated = journal.ring_bytes,
                Err(error) => {
                    // The ring cannot wrap below its end: this shard's journal takes no more.
                    tracing::warn!(path = %path.display(), %error, "cannot allocate the journal's ring: acks=1 waits for segment writes on this shard");
                    journal.refusing = true;
                }
            }
        });
        // Batches waiting for room may fit in the rest now.
        on_written();
    })
    .detach();
    Ok(())
}

/// Ring bytes a journal allocates while the shard starts; the rest follows off the shard.
pub const FIRST_ALLOCATION_BYTES: u64 = 8 << 20;

/// How much of the ring the blocking-pool thread allocates before the shard may use it: at
/// 1.5 GB/s into a shard, the first 8 MiB last 5 ms, and the whole ring took up to 250 ms to
/// allocate on a busy CPU, so appends waited for room at every start (session 35).
pub const ALLOCATION_STEP_BYTES: u64 = 32 << 20;

/// Allocates `len` bytes of `file` from `offset` (tmpfs pages, zeroed), so no store into its
/// mapping there can fault on a full file system (`SIGBUS`).
fn allocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain system call on a descriptor we own.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            0,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this thread has a journal.
pub fn installed() -> bool {
    JOURNAL.with(|j| j.borrow().is_some())
}

/// Frees what can be freed and, when nothing is live, removes this shard's file (a clean
/// stop: every log was closed, so everything was written). A file with live entries stays for
/// the next start to replay. The ring is unmapped and the file removed on a blocking-pool
/// thread: freeing a populated 512 MiB ring held the shard for 90-130 ms at every stop.
pub async fn close_on_this_shard() {
    let Some(mut journal) = JOURNAL.with(|j| j.borrow_mut().take()) else {
        return;
    };
    journal.reclaim();
    let remove = journal.live.is_empty();
    if !remove {
        tracing::warn!(
            path = %journal.path.display(),
            live = journal.live.len(),
            "journal entries not yet in segment files stay for the next start"
        );
    }
    // The entries (which hold the logs' marks) go here; the memory and the file off the shard.
    let Journal {
        map,
        path,
        _file: file,
        ..
    } = journal;
    let freed = glommio::executor()
        .spawn_blocking(move || {
            drop(map);
            drop(file);
            if remove {
                std::fs::remove_file(&path).map_err(|error| (path, error))
            } else {
                Ok(())
            }
        })
        .await;
    if let Err((path, error)) = freed {
        tracing::warn!(path = %path.display(), %error, "cannot remove the journal file");
    }
}

/// A leader's batch offered to the journal: its log (`log_id`, marks, directory name), its
/// first 16 bytes as they go to the segment (offset and epoch assigned), the producer's bytes,
/// and its offsets `[base_offset, end_offset)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaderBatch<'a> {
    pub log_id: u64,
    pub notifier: &'a Rc<Notifier>,
    pub dir_name: &'a Rc<str>,
    pub head: [u8; 16],
    pub batch: &'a Bytes,
    pub base_offset: i64,
    pub end_offset: i64,
}

/// Offers one batch to this shard's journal. A batch stored now moves its log's journaled
/// mark at once; one that waits for room moves it when it goes in ([`on_written`]); a refused
/// one (or any without a journal) is safe once written.
pub(crate) fn append(offered: LeaderBatch<'_>) -> Journaling {
    let outcome = JOURNAL.with(|j| {
        let mut journal = j.borrow_mut();
        let Some(journal) = journal.as_mut() else {
            return Journaling::Refused;
        };
        let outcome = journal.offer(&offered);
        let cells = crate::metrics::shard_cells(journal.shard);
        match outcome {
            Journaling::Stored => {
                cells
                    .journaled_bytes
                    .fetch_add(offered.batch.len() as u64, Ordering::Relaxed);
            }
            Journaling::Waiting | Journaling::Refused => {
                cells.journal_full.fetch_add(1, Ordering::Relaxed);
                journal.report_full();
            }
        }
        outcome
    });
    if outcome == Journaling::Stored {
        offered
            .notifier
            .advance_journaled(offered.base_offset, offered.end_offset);
    }
    outcome
}

/// Some log of this shard wrote batches (or the ring grew): batches waiting for room go in
/// while it lasts, and their logs' journaled marks move. Cheap when nothing waits, which is
/// nearly always: the writer calls it after every segment write.
pub(crate) fn on_written() {
    let stored = JOURNAL.with(|j| {
        // A write completing inside a journal call cannot happen (the journal never awaits),
        // but a failed borrow must not panic the shard: the next write retries.
        let Ok(mut journal) = j.try_borrow_mut() else {
            return Vec::new();
        };
        match journal.as_mut() {
            Some(journal) if !journal.waiting.is_empty() => journal.store_waiting(),
            _ => Vec::new(),
        }
    });
    // Outside the journal's borrow: raising a mark wakes tasks, which may append again.
    for (notifier, base_offset, end_offset) in stored {
        notifier.advance_journaled(base_offset, end_offset);
    }
}

/// Marks every live entry of `log_id` dead: the log was deleted or truncated, so its entries
/// must never be replayed (a topic created again under the same name starts at offset 0).
pub(crate) fn forget_log(log_id: u64) {
    JOURNAL.with(|j| {
        if let Some(journal) = j.borrow_mut().as_mut() {
            journal.forget_log(log_id);
        }
    });
}

impl Journal {
    /// A new journal file in `dir` whose first `allocate_bytes` of ring (at least) are
    /// allocated; the caller raises `allocated` when it allocated the rest.
    fn create(
        dir: &Path,
        shard: usize,
        ring_bytes: u64,
        allocate_bytes: u64,
    ) -> io::Result<Journal> {
        if ring_bytes < RING_MIN_BYTES || !ring_bytes.is_multiple_of(8) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("journal ring of {ring_bytes} bytes: at least {RING_MIN_BYTES}, a multiple of 8"),
            ));
        }
        std::fs::create_dir_all(dir)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = dir.join(format!(
            "shard-{shard}-{}-{nanos}.journal",
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let map_len = (FILE_HEADER_BYTES + ring_bytes) as usize;
        let allocated = allocate_bytes.min(ring_bytes);
        // The whole length for the mapping; blocks only for what is allocated now, and no
        // entry is stored above `allocated` until the rest is.
        let prepared = file
            .set_len(map_len as u64)
            .and_then(|()| allocate(&file, 0, FILE_HEADER_BYTES + allocated))
            .and_then(|()| Mapping::shared_writable(&file, map_len));
        let map = prepared.inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
        })?;
        let mut journal = Journal {
            path,
            shard,
            map,
            ring_bytes,
            head: 0,
            tail: 0,
            next_seq: 1,
            next_slot: 0,
            live: VecDeque::new(),
            waiting: VecDeque::new(),
            allocated,
            allocation_progress: None,
            refusing: false,
            last_full_report: None,
            _file: file,
        };
        let bytes = journal.bytes_mut();
        bytes[0..8].copy_from_slice(&FILE_MAGIC);
        bytes[8..16].copy_from_slice(&ring_bytes.to_le_bytes());
        journal.write_tail();
        Ok(journal)
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self.map.bytes_mut()
    }

    /// Records the oldest live entry (or the head when none is) in the next header slot.
    fn write_tail(&mut self) {
        let (position, seq) = match self.live.front() {
            Some(entry) => (entry.start, entry.seq),
            None => (self.head, self.next_seq),
        };
        let slot = SLOT_OFFSETS[self.next_slot];
        self.next_slot ^= 1;
        let bytes = self.bytes_mut();
        bytes[slot..slot + 8].copy_from_slice(&position.to_le_bytes());
        bytes[slot + 8..slot + 16].copy_from_slice(&seq.to_le_bytes());
        let check = position ^ seq.rotate_left(17) ^ SLOT_CHECK_KEY;
        bytes[slot + 16..slot + 24].copy_from_slice(&check.to_le_bytes());
    }

    /// Frees entries from the oldest while they are written (or dead, or their log is gone).
    fn reclaim(&mut self) {
        let before = self.live.len();
        while let Some(front) = self.live.front() {
            let freed = front.dead || unwritten_log(&front.notifier, front.end_offset).is_none();
            if !freed {
                break;
            }
            self.live.pop_front();
        }
        self.tail = self.live.front().map_or(self.head, |e| e.start);
        if self.live.len() != before {
            self.write_tail();
        }
    }

    /// A warning (at most one a second) saying what holds the ring: how much is live, and the
    /// oldest entry's log, how far it is from being written.
    fn report_full(&mut self) {
        let now = std::time::Instant::now();
        if self
            .last_full_report
            .is_some_and(|at| now.duration_since(at) < std::time::Duration::from_secs(1))
        {
            return;
        }
        self.last_full_report = Some(now);
        let front = self.live.front().map(|e| {
            let written = e.notifier.upgrade().map(|n| n.get(Mark::Written));
            (e.end_offset, written, e.dead)
        });
        tracing::warn!(
            shard = self.shard,
            used_bytes = self.head - self.tail,
            allocated_bytes = self.allocated,
            ring_bytes = self.ring_bytes,
            live_entries = self.live.len(),
            waiting_batches = self.waiting.len(),
            oldest = ?front,
            "journal full: acks=1 waits until the oldest entries are written and free room"
        );
    }

    fn forget_log(&mut self, log_id: u64) {
        self.waiting.retain(|w| w.log_id != log_id);
        let mut marked = Vec::new();
        for entry in self.live.iter_mut().filter(|e| e.log_id == log_id) {
            entry.dead = true;
            marked.push(entry.start);
        }
        for start in marked {
            let at = (FILE_HEADER_BYTES + start % self.ring_bytes) as usize;
            self.bytes_mut()[at..at + 4].copy_from_slice(&ENTRY_DEAD.to_le_bytes());
        }
        self.reclaim();
    }

    /// The ring's bytes an entry of this batch takes.
    fn entry_len(dir_name: &str, batch: &[u8]) -> u64 {
        (ENTRY_HEADER_BYTES + dir_name.len() + batch.len()).next_multiple_of(8) as u64
    }

    /// Whether such a batch can ever go in (given room).
    fn admits(&self, dir_name: &str, batch: &[u8]) -> bool {
        // A batch that would take more than a quarter of the ring is not worth its room.
        !self.refusing
            && dir_name.len() <= DIR_NAME_MAX_BYTES
            && batch.len() >= BATCH_PREFIX_BYTES
            && Self::entry_len(dir_name, batch) <= self.ring_bytes / 4
    }

    /// Stores the batch if it has room now and nothing waits before it; else queues it to
    /// wait for room, unless it can never go in.
    fn offer(&mut self, offered: &LeaderBatch<'_>) -> Journaling {
        let LeaderBatch {
            log_id,
            notifier,
            dir_name,
            head,
            batch,
            base_offset,
            end_offset,
        } = *offered;
        if !self.admits(dir_name, batch) {
            return Journaling::Refused;
        }
        if self.waiting.is_empty()
            && self.append(log_id, notifier, dir_name, &head, batch, end_offset)
        {
            return Journaling::Stored;
        }
        self.waiting.push_back(WaitingBatch {
            log_id,
            notifier: Rc::downgrade(notifier),
            dir_name: dir_name.clone(),
            head,
            batch: batch.clone(),
            base_offset,
            end_offset,
        });
        Journaling::Waiting
    }

    /// Drops the waiting batches that no longer need the ring (their own write landed, their
    /// log failed, closed or is gone), then copies in the rest, oldest first, while they fit.
    /// Returns the stored ones, `(log, base, end)`, for the caller to move their journaled
    /// marks once the journal is released.
    ///
    /// The whole queue is checked, not only its front: while the ring stays full (its oldest
    /// entry is a log whose writes stopped), batches behind the front are still written and
    /// answered by their writes, and must not stay held here.
    fn store_waiting(&mut self) -> Vec<(Rc<Notifier>, i64, i64)> {
        let refusing = self.refusing;
        self.waiting.retain(|waiting| {
            !refusing
                && unwritten_log(&waiting.notifier, waiting.end_offset).is_some_and(|n| n.is_open())
        });
        let mut stored = Vec::new();
        while let Some(waiting) = self.waiting.pop_front() {
            let Some(notifier) = waiting.notifier.upgrade() else {
                continue;
            };
            if !self.append(
                waiting.log_id,
                &notifier,
                &waiting.dir_name,
                &waiting.head,
                &waiting.batch,
                waiting.end_offset,
            ) {
                self.waiting.push_front(waiting);
                break;
            }
            crate::metrics::shard_cells(self.shard)
                .journaled_bytes
                .fetch_add(waiting.batch.len() as u64, Ordering::Relaxed);
            stored.push((notifier, waiting.base_offset, waiting.end_offset));
        }
        stored
    }

    /// Copies the batch into the ring if it has room (freeing written entries first when it
    /// has not); false leaves the ring as it was.
    fn append(
        &mut self,
        log_id: u64,
        notifier: &Rc<Notifier>,
        dir_name: &str,
        head: &[u8; 16],
        batch: &[u8],
        end_offset: i64,
    ) -> bool {
        if !self.admits(dir_name, batch) {
            return false;
        }
        let len = Self::entry_len(dir_name, batch);
        if let Some(progress) = &self.allocation_progress {
            self.allocated = self.allocated.max(progress.load(Ordering::Acquire));
        }
        let room = |journal: &Journal| {
            let at = journal.head % journal.ring_bytes;
            // An entry that does not fit before the ring's end starts at its beginning.
            let skip = if at + len > journal.ring_bytes {
                journal.ring_bytes - at
            } else {
                0
            };
            let used = journal.head - journal.tail;
            // On the first lap, only into the allocated start of the ring (a wrap entry's
            // header included, which goes at `at`).
            let end = if skip > 0 { len } else { at + len };
            let wrap_header_fits = skip < ENTRY_HEADER_BYTES as u64
                || at + ENTRY_HEADER_BYTES as u64 <= journal.allocated;
            (
                used + skip + len <= journal.ring_bytes
                    && end <= journal.allocated
                    && wrap_header_fits,
                skip,
            )
        };
        let (mut fits, mut skip) = room(self);
        if !fits {
            self.reclaim();
            (fits, skip) = room(self);
            if !fits {
                return false;
            }
        }
        if skip > 0 {
            let at = (FILE_HEADER_BYTES + self.head % self.ring_bytes) as usize;
            let seq = self.next_seq;
            if skip >= ENTRY_HEADER_BYTES as u64 {
                let bytes = self.bytes_mut();
                bytes[at..at + 4].copy_from_slice(&ENTRY_WRAP.to_le_bytes());
                bytes[at + 4..at + 8].copy_from_slice(&0u32.to_le_bytes());
                bytes[at + 8..at + 12].copy_from_slice(&(skip as u32).to_le_bytes());
                bytes[at + 12..at + 16].copy_from_slice(&0u32.to_le_bytes());
                bytes[at + 16..at + 24].copy_from_slice(&seq.to_le_bytes());
                self.next_seq += 1;
            }
            self.head += skip;
        }
        let start = self.head;
        let seq = self.next_seq;
        let at = (FILE_HEADER_BYTES + start % self.ring_bytes) as usize;
        let name = dir_name.as_bytes();
        // Header, name and the batch's prefix (with the assigned offset and epoch) are
        // assembled here, checksummed, then copied; the body goes straight from the request.
        let mut prefix = [0u8; ENTRY_HEADER_BYTES + DIR_NAME_MAX_BYTES + BATCH_PREFIX_BYTES];
        let prefix_len = ENTRY_HEADER_BYTES + name.len() + BATCH_PREFIX_BYTES;
        prefix[0..4].copy_from_slice(&ENTRY_LIVE.to_le_bytes());
        prefix[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        prefix[12..16].copy_from_slice(&(batch.len() as u32).to_le_bytes());
        prefix[16..24].copy_from_slice(&seq.to_le_bytes());
        prefix[24..26].copy_from_slice(&(name.len() as u16).to_le_bytes());
        let name_end = ENTRY_HEADER_BYTES + name.len();
        prefix[ENTRY_HEADER_BYTES..name_end].copy_from_slice(name);
        prefix[name_end..name_end + 16].copy_from_slice(head);
        prefix[name_end + 16..prefix_len].copy_from_slice(&batch[16..BATCH_PREFIX_BYTES]);
        let crc = crc32c(&prefix[8..prefix_len]);
        prefix[4..8].copy_from_slice(&crc.to_le_bytes());
        let bytes = self.bytes_mut();
        let body_at = at + prefix_len;
        super::stream_copy::copy(
            &mut bytes[body_at..body_at + batch.len() - BATCH_PREFIX_BYTES],
            &batch[BATCH_PREFIX_BYTES..],
        );
        // The kind word last: until it is written the entry is not LIVE for a reader (the
        // sequence number and the checksums would stop it anyway).
        bytes[at + 4..at + prefix_len].copy_from_slice(&prefix[4..prefix_len]);
        bytes[at..at + 4].copy_from_slice(&prefix[0..4]);
        self.head += len;
        self.next_seq += 1;
        let was_empty = self.live.is_empty();
        self.live.push_back(LiveEntry {
            start,
            seq,
            log_id,
            notifier: Rc::downgrade(notifier),
            end_offset,
            dead: false,
        });
        if was_empty {
            self.tail = start;
            self.write_tail();
        }
        true
    }
}

pub use dirs::{claim_dir, default_dir, remove_abandoned_default_dirs, DirClaim, DEFAULT_PARENT};
pub use replay::{finish_recovery, parse, read_file, recover_previous, take_recovered, Recovered};

mod dirs;
mod mapping;
mod replay;

use mapping::Mapping;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod log_tests;
