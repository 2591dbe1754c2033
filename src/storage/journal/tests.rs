use super::*;
use crate::record_batch;
use crate::storage::testutil::batch;

const MAX_BATCH_BYTES: usize = 1 << 20;

/// A batch of `count` records of `value_bytes`, with the head the leader would give it.
fn entry_batch(count: usize, value_bytes: usize, base_offset: i64) -> (Vec<u8>, [u8; 16]) {
    let bytes = batch(count, value_bytes, 1_700_000_000_000);
    let mut head = [0u8; 16];
    head.copy_from_slice(&bytes[..16]);
    record_batch::assign(&mut head, base_offset, 3);
    (bytes, head)
}

/// What a segment would hold: the producer's bytes with the head patched.
fn as_written(bytes: &[u8], head: &[u8; 16]) -> Vec<u8> {
    let mut written = bytes.to_vec();
    written[..16].copy_from_slice(head);
    written
}

/// A journal of the smallest ring, all of it allocated.
fn fresh_journal(dir: &Path) -> Journal {
    Journal::create(dir, 0, RING_MIN_BYTES, RING_MIN_BYTES).unwrap()
}

fn journal_file(dir: &Path) -> PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| is_journal_file(p))
        .collect();
    assert_eq!(files.len(), 1, "one journal file in {}", dir.display());
    files.pop().unwrap()
}

/// Appends one batch of `count` records to `journal` for `log` at the log's next offset.
fn append_next(
    journal: &mut Journal,
    log: (u64, &Rc<Notifier>, &str),
    next_offset: &mut i64,
    count: usize,
    value_bytes: usize,
) -> Option<Vec<u8>> {
    let (bytes, head) = entry_batch(count, value_bytes, *next_offset);
    let end = *next_offset + count as i64;
    journal
        .append(log.0, log.1, log.2, &head, &bytes, end)
        .then(|| {
            *next_offset = end;
            as_written(&bytes, &head)
        })
}

#[test]
fn batches_outlive_the_journal_in_ring_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = fresh_journal(dir.path());
    let logs = [Notifier::new(0, 0), Notifier::new(0, 0)];
    let mut next = [0, 0];
    let mut expected = Vec::new();
    for (i, name) in [(0, "t-0"), (1, "t-1"), (0, "t-0")] {
        let bytes = append_next(&mut journal, (1, &logs[i], name), &mut next[i], 5, 100).unwrap();
        expected.push((name.to_string(), bytes));
    }
    // The process dies: nothing is freed or closed, the mapping just goes.
    drop(journal);
    let read = read_file(&journal_file(dir.path()), MAX_BATCH_BYTES).unwrap();
    let read: Vec<_> = read.into_iter().map(|(n, b)| (n, b.to_vec())).collect();
    assert_eq!(read, expected);
}

#[test]
fn written_batches_free_their_room_and_the_ring_wraps() {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = fresh_journal(dir.path());
    let log = Notifier::new(0, 0);
    let mut next = 0;
    let mut appended: Vec<(i64, Vec<u8>)> = Vec::new();
    // About 150 KiB a batch: 27 fill the ring; 200 go around it seven times. Each write
    // completes two batches after its append, so two are always live.
    for i in 0..200 {
        let bytes = append_next(&mut journal, (1, &log, "t-0"), &mut next, 150, 1000)
            .expect("room: everything but the last two batches is written");
        appended.push((next, bytes));
        if i >= 2 {
            log.advance(Mark::Written, appended[i - 2].0);
        }
    }
    assert!(journal.head > 6 * RING_MIN_BYTES, "went round the ring");
    drop(journal);
    let read = read_file(&journal_file(dir.path()), MAX_BATCH_BYTES).unwrap();
    // Written entries are freed when room is needed, so the walk may start before the two
    // live ones: it returns the newest entries, in order, at most a ring of them.
    let appended: Vec<Vec<u8>> = appended.into_iter().map(|(_, b)| b).collect();
    let read: Vec<Vec<u8>> = read.into_iter().map(|(_, b)| b.to_vec()).collect();
    assert!((2..=27).contains(&read.len()), "{} entries", read.len());
    assert_eq!(read[..], appended[appended.len() - read.len()..]);
}

#[test]
fn a_full_ring_refuses_and_keeps_what_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = fresh_journal(dir.path());
    let log = Notifier::new(0, 0);
    let mut next = 0;
    let mut appended = Vec::new();
    while let Some(bytes) = append_next(&mut journal, (1, &log, "t-0"), &mut next, 100, 1000) {
        appended.push(bytes);
    }
    assert!(
        appended.len() >= 30,
        "{} batches of 100 KB in 4 MiB",
        appended.len()
    );
    // Written now: the room comes back.
    log.advance(Mark::Written, next);
    assert!(append_next(&mut journal, (1, &log, "t-0"), &mut next, 100, 1000).is_some());
    // A batch larger than a quarter of the ring never goes in.
    assert!(append_next(&mut journal, (1, &log, "t-0"), &mut next, 1100, 1000).is_none());
}

#[test]
fn a_forgotten_log_is_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = fresh_journal(dir.path());
    let (deleted, kept) = (Notifier::new(0, 0), Notifier::new(0, 0));
    let (mut next_deleted, mut next_kept) = (0, 0);
    append_next(
        &mut journal,
        (1, &deleted, "gone-0"),
        &mut next_deleted,
        3,
        10,
    )
    .unwrap();
    let kept_bytes =
        append_next(&mut journal, (2, &kept, "kept-0"), &mut next_kept, 3, 10).unwrap();
    append_next(
        &mut journal,
        (1, &deleted, "gone-0"),
        &mut next_deleted,
        3,
        10,
    )
    .unwrap();
    journal.forget_log(1);
    drop(journal);
    let read = read_file(&journal_file(dir.path()), MAX_BATCH_BYTES).unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].0, "kept-0");
    assert_eq!(read[0].1.to_vec(), kept_bytes);
}

#[test]
fn a_torn_entry_ends_the_walk() {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = fresh_journal(dir.path());
    let log = Notifier::new(0, 0);
    let mut next = 0;
    let first = append_next(&mut journal, (1, &log, "t-0"), &mut next, 10, 100).unwrap();
    let second_at = FILE_HEADER_BYTES as usize + journal.head as usize;
    append_next(&mut journal, (1, &log, "t-0"), &mut next, 10, 100).unwrap();
    append_next(&mut journal, (1, &log, "t-0"), &mut next, 10, 100).unwrap();
    drop(journal);
    let path = journal_file(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    // A record byte of the second batch, as if the process died while copying it.
    bytes[second_at + ENTRY_HEADER_BYTES + 3 + 200] ^= 0xff;
    let read = parse(&bytes, MAX_BATCH_BYTES).unwrap();
    assert_eq!(read.len(), 1, "only the entry before the torn one");
    assert_eq!(read[0].1.to_vec(), first);
}

#[test]
fn damaged_files_give_fewer_entries_or_an_error_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = fresh_journal(dir.path());
    let log = Notifier::new(0, 0);
    let mut next = 0;
    for _ in 0..20 {
        append_next(&mut journal, (1, &log, "t-0"), &mut next, 20, 50).unwrap();
    }
    let used = FILE_HEADER_BYTES as usize + journal.head as usize;
    drop(journal);
    let good = std::fs::read(journal_file(dir.path())).unwrap();
    assert_eq!(parse(&good, MAX_BATCH_BYTES).unwrap().len(), 20);
    // xorshift: the same damage on every run.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..2000 {
        let mut bytes = good.clone();
        for _ in 0..1 + random() % 4 {
            let at = (random() as usize) % used;
            bytes[at] ^= 1 << (random() % 8);
        }
        if let Ok(read) = parse(&bytes, MAX_BATCH_BYTES) {
            assert!(read.len() <= 20);
        }
    }
    for cut in [0, 8, 100, FILE_HEADER_BYTES as usize, used / 2] {
        assert!(parse(&good[..cut], MAX_BATCH_BYTES).is_err());
    }
}

#[test]
fn the_thread_local_journal_serves_appends_and_is_removed_when_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    crate::storage::testutil::run(move || async move {
        let ring = 4 * FIRST_ALLOCATION_BYTES;
        open_on_this_shard(&path, 5, ring).unwrap();
        assert!(installed());
        let log = Notifier::new(0, 0);
        let mut next = 0;
        // The rest of the ring is allocated off the shard; until then entries stay in its start.
        while JOURNAL.with(|j| j.borrow().as_ref().unwrap().allocated) < ring {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        let mut appended = 0;
        while appended < ring / 2 {
            let (bytes, head) = entry_batch(100, 1000, next);
            let stored = append(LeaderBatch {
                log_id: next_log_id(),
                notifier: &log,
                dir_name: &Rc::from("t-0"),
                head,
                batch: &Bytes::from(bytes.clone()),
                base_offset: next,
                end_offset: next + 100,
            });
            assert_eq!(stored, Journaling::Stored);
            next += 100;
            appended += bytes.len() as u64;
        }
        let used = JOURNAL.with(|j| j.borrow().as_ref().map(|j| j.head - j.tail));
        assert!(used.is_some_and(|u| u > FIRST_ALLOCATION_BYTES), "{used:?}");
        log.advance(Mark::Written, next);
        close_on_this_shard().await;
        assert!(!installed());
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0, "file removed");
    });
}

/// Offers the next batch of `count` records of 1 KB of the log `(id, notifier, name)` to the
/// thread's journal; returns what became of it and its end offset.
fn offer_next(
    log: (u64, &Rc<Notifier>, &Rc<str>),
    next_offset: &mut i64,
    count: usize,
) -> (Journaling, i64) {
    let (bytes, head) = entry_batch(count, 1000, *next_offset);
    let base = *next_offset;
    *next_offset += count as i64;
    let offered = append(LeaderBatch {
        log_id: log.0,
        notifier: log.1,
        dir_name: log.2,
        head,
        batch: &Bytes::from(bytes),
        base_offset: base,
        end_offset: *next_offset,
    });
    (offered, *next_offset)
}

#[test]
fn a_full_ring_queues_batches_and_stores_them_as_writes_free_room() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    crate::storage::testutil::run(move || async move {
        // All of an 8 MiB ring allocated at once.
        open_on_this_shard(&path, 0, FIRST_ALLOCATION_BYTES).unwrap();
        let (a, b) = (Notifier::new(0, 0), Notifier::new(0, 0));
        let (a_name, b_name): (Rc<str>, Rc<str>) = (Rc::from("t-0"), Rc::from("t-1"));
        let (a_id, b_id) = (next_log_id(), next_log_id());
        let (mut a_next, mut b_next) = (0, 0);
        // Fill the ring with A's 100 KB batches, none written.
        let mut stored_ends = Vec::new();
        let (first_waiting, first_waiting_end) = loop {
            match offer_next((a_id, &a, &a_name), &mut a_next, 100) {
                (Journaling::Stored, end) => stored_ends.push(end),
                other => break other,
            }
        };
        assert_eq!(first_waiting, Journaling::Waiting);
        assert!(
            stored_ends.len() >= 60,
            "{} batches in 8 MiB",
            stored_ends.len()
        );
        let full_at = *stored_ends.last().unwrap();
        assert_eq!(a.get(Mark::Journaled), full_at);
        // Behind a waiting batch even one that would fit waits, and so does another log's.
        let (small, small_end) = offer_next((a_id, &a, &a_name), &mut a_next, 1);
        assert_eq!(small, Journaling::Waiting);
        let (other_log, b_end) = offer_next((b_id, &b, &b_name), &mut b_next, 100);
        assert_eq!(other_log, Journaling::Waiting);
        assert_eq!(
            a.get(Mark::Journaled),
            full_at,
            "nothing claimed without room"
        );
        assert_eq!(b.get(Mark::Journaled), 0);

        // A's first batch is written: its room takes the first waiting batch (A's mark moves
        // over it before its write), not the ones behind it...
        a.advance(Mark::Written, stored_ends[0]);
        on_written();
        assert_eq!(
            a.get(Mark::Journaled),
            first_waiting_end,
            "stored before its write"
        );
        assert_eq!(b.get(Mark::Journaled), 0);
        // ... and three more free room for the rest, in order.
        a.advance(Mark::Written, stored_ends[3]);
        on_written();
        assert_eq!(a.get(Mark::Journaled), small_end);
        assert_eq!(b.get(Mark::Journaled), b_end);
        assert!(JOURNAL.with(|j| j.borrow().as_ref().unwrap().waiting.is_empty()));

        // A batch whose own write lands while it waits is left out; a deleted log's too.
        let (waiting, written_end) = loop {
            match offer_next((a_id, &a, &a_name), &mut a_next, 100) {
                (Journaling::Stored, _) => continue,
                other => break other,
            }
        };
        assert_eq!(waiting, Journaling::Waiting);
        let (deleted, _) = offer_next((b_id, &b, &b_name), &mut b_next, 100);
        assert_eq!(deleted, Journaling::Waiting);
        forget_log(b_id);
        let head = || JOURNAL.with(|j| j.borrow().as_ref().unwrap().head);
        let head_before = head();
        a.advance(Mark::Written, written_end);
        on_written();
        let waiting_after = JOURNAL.with(|j| j.borrow().as_ref().unwrap().waiting.len());
        assert_eq!(waiting_after, 0);
        assert_eq!(head(), head_before, "nothing stored");

        // The ring full again, its oldest entry's log stuck: a batch behind the waiting front
        // whose own write lands leaves the queue, and so do a failed log's.
        let (c, c_name, c_id) = (Notifier::new(0, 0), Rc::<str>::from("t-2"), next_log_id());
        let mut c_next = 0;
        let (front, _) = loop {
            match offer_next((a_id, &a, &a_name), &mut a_next, 100) {
                (Journaling::Stored, _) => continue,
                other => break other,
            }
        };
        assert_eq!(front, Journaling::Waiting);
        let (behind, c_end) = offer_next((c_id, &c, &c_name), &mut c_next, 100);
        assert_eq!(behind, Journaling::Waiting);
        let (failed, _) = offer_next((b_id, &b, &b_name), &mut b_next, 100);
        assert_eq!(failed, Journaling::Waiting);
        b.fail(&io::Error::other("device gone"));
        c.advance(Mark::Written, c_end);
        on_written();
        let waiting = JOURNAL.with(|j| j.borrow().as_ref().unwrap().waiting.len());
        assert_eq!(
            waiting, 1,
            "only the front (its write not done, no room) still waits"
        );

        // The process dies: what the ring holds is each log's batches in offset order.
        let journal = JOURNAL.with(|j| j.borrow_mut().take()).unwrap();
        drop(journal);
        let read = read_file(&journal_file(&path), MAX_BATCH_BYTES).unwrap();
        for name in ["t-0", "t-1"] {
            let offsets: Vec<(i64, i64)> = read
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, b)| {
                    let h = record_batch::BatchHeader::parse(b, MAX_BATCH_BYTES).unwrap();
                    (h.base_offset, h.last_offset() + 1)
                })
                .collect();
            assert!(
                offsets.windows(2).all(|w| w[0].1 == w[1].0),
                "{name}: {offsets:?}"
            );
        }
    });
}

#[test]
fn the_first_lap_stays_in_the_allocated_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut journal =
        Journal::create(dir.path(), 0, 2 * RING_MIN_BYTES, RING_MIN_BYTES / 2).unwrap();
    let log = Notifier::new(0, 0);
    let mut next = 0;
    let mut appended = 0;
    while append_next(&mut journal, (1, &log, "t-0"), &mut next, 100, 1000).is_some() {
        appended += 1;
    }
    assert!(
        (15..=21).contains(&appended),
        "{appended} batches of 100 KB in 2 MiB"
    );
    assert!(journal.head <= RING_MIN_BYTES / 2);
    journal.allocated = journal.ring_bytes;
    assert!(append_next(&mut journal, (1, &log, "t-0"), &mut next, 100, 1000).is_some());
}

/// The ring grows as the blocking-pool thread publishes what it allocated; an entry that
/// would wrap stays out until its wrap header's place is allocated too.
#[test]
fn the_ring_grows_with_the_published_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let ring = 4 * RING_MIN_BYTES;
    let mut journal = Journal::create(dir.path(), 0, ring, RING_MIN_BYTES).unwrap();
    let progress = Arc::new(AtomicU64::new(RING_MIN_BYTES));
    journal.allocation_progress = Some(progress.clone());
    let log = Notifier::new(0, 0);
    let mut next = 0;
    while append_next(&mut journal, (1, &log, "t-0"), &mut next, 100, 1000).is_some() {}
    assert!(journal.head <= RING_MIN_BYTES);
    // Another 4 MiB allocated (as the thread does) and published: room again.
    allocate(
        &journal._file,
        FILE_HEADER_BYTES + RING_MIN_BYTES,
        RING_MIN_BYTES,
    )
    .unwrap();
    progress.store(2 * RING_MIN_BYTES, Ordering::Release);
    assert!(append_next(&mut journal, (1, &log, "t-0"), &mut next, 100, 1000).is_some());
    assert!(journal.head > RING_MIN_BYTES);

    // Written: the ring is empty, its head just below the allocated end, and a 3.5 MiB entry
    // does not fit before the ring's end. It would wrap, but its wrap header's place is not
    // allocated yet.
    log.advance(Mark::Written, next);
    journal.reclaim();
    let allocated = ring - RING_MIN_BYTES / 2;
    allocate(&journal._file, 0, FILE_HEADER_BYTES + allocated).unwrap();
    progress.store(allocated, Ordering::Release);
    journal.head = allocated - 16;
    journal.tail = journal.head;
    assert!(append_next(&mut journal, (1, &log, "t-0"), &mut next, 3500, 1000).is_none());
    allocate(&journal._file, 0, FILE_HEADER_BYTES + ring).unwrap();
    progress.store(ring, Ordering::Release);
    assert!(append_next(&mut journal, (1, &log, "t-0"), &mut next, 3500, 1000).is_some());
    assert!(
        journal.head % ring < RING_MIN_BYTES,
        "wrapped to the ring's start"
    );
}

#[test]
fn a_directory_belongs_to_one_data_directory() {
    let journal_dir = tempfile::tempdir().unwrap();
    let claim = claim_dir(journal_dir.path(), Path::new("/data/a")).unwrap();
    assert!(
        claim_dir(journal_dir.path(), Path::new("/data/a")).is_err(),
        "held"
    );
    drop(claim);
    assert!(
        claim_dir(journal_dir.path(), Path::new("/data/b")).is_err(),
        "another's"
    );
    assert!(claim_dir(journal_dir.path(), Path::new("/data/a")).is_ok());
}

/// A default journal directory whose data directory is gone, and which no broker holds, is
/// removed by the next start; one whose data directory exists, or that a broker holds, stays.
#[test]
fn abandoned_default_directories_are_removed_and_others_kept() {
    let parent = Path::new(DEFAULT_PARENT);
    if !parent.is_dir() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let gone = data.path().join("gone");
    let make = |name: &str, owner: &Path| {
        let dir = parent.join(format!("broker-journal-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("data-dir"), owner.as_os_str().as_encoded_bytes()).unwrap();
        std::fs::write(dir.join(".lock"), b"").unwrap();
        std::fs::write(dir.join("shard-0-1-2.journal"), b"old").unwrap();
        dir
    };
    let abandoned = make("abandoned", &gone);
    let owned = make("owned", data.path());
    let held_dir = make("held", &gone);
    let held = claim_dir(&held_dir, &gone).unwrap();
    remove_abandoned_default_dirs();
    assert!(!abandoned.exists(), "abandoned: removed");
    assert!(owned.exists(), "its data directory exists: kept");
    assert!(held_dir.exists(), "a broker holds it: kept");
    drop(held);
    std::fs::remove_dir_all(&owned).unwrap();
    std::fs::remove_dir_all(&held_dir).unwrap();
}

/// Header slots at the limits of `u64` (a damaged or crafted file; the fuzzer found the
/// overflow) end the walk instead of overflowing positions or sequence numbers.
#[test]
fn header_slots_at_the_limits_of_u64_end_the_walk() {
    let ring_bytes = 64u64;
    for (position, seq) in [(u64::MAX - 8, 1), (0, u64::MAX), (u64::MAX - 63, u64::MAX)] {
        let mut file = vec![0u8; FILE_HEADER_BYTES as usize + ring_bytes as usize];
        file[0..8].copy_from_slice(&FILE_MAGIC);
        file[8..16].copy_from_slice(&ring_bytes.to_le_bytes());
        let slot = SLOT_OFFSETS[0];
        let check = position ^ seq.rotate_left(17) ^ SLOT_CHECK_KEY;
        file[slot..slot + 8].copy_from_slice(&position.to_le_bytes());
        file[slot + 8..slot + 16].copy_from_slice(&seq.to_le_bytes());
        file[slot + 16..slot + 24].copy_from_slice(&check.to_le_bytes());
        // A WRAP entry wherever the walk starts, carrying the slot's sequence number.
        let at = FILE_HEADER_BYTES as usize + (position % ring_bytes) as usize;
        if at + ENTRY_HEADER_BYTES <= file.len() {
            let len = (file.len() - at) as u32;
            file[at..at + 4].copy_from_slice(&ENTRY_WRAP.to_le_bytes());
            file[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
            file[at + 16..at + 24].copy_from_slice(&seq.to_le_bytes());
        }
        assert_eq!(parse(&file, MAX_BATCH_BYTES).unwrap().len(), 0);
    }
}
