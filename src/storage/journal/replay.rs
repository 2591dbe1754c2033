//! Reading the previous runs' journal files at start-up, handing each log its batches, and
//! removing the files once every log has replayed them.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;

use super::{
    is_journal_file, Mapping, BATCH_PREFIX_BYTES, DIR_NAME_MAX_BYTES, ENTRY_DEAD,
    ENTRY_HEADER_BYTES, ENTRY_LIVE, ENTRY_WRAP, FILE_HEADER_BYTES, FILE_MAGIC, SLOT_CHECK_KEY,
    SLOT_OFFSETS,
};
use crate::checksum::crc32c;
use crate::record_batch;

/// What the previous runs' journal files held: each partition directory's batches, in offset
/// order, and the files to remove once they are replayed.
#[derive(Debug, Default)]
pub struct Recovered {
    pub files: Vec<PathBuf>,
    pub batches: HashMap<String, Vec<Bytes>>,
}

static RECOVERED: Mutex<Option<Recovered>> = Mutex::new(None);

/// Reads every journal file in `dir` (the previous runs': call before this run's shards open
/// theirs) and keeps their live batches for [`take_recovered`]. A damaged or foreign file is
/// skipped with a warning, never trusted. Returns the number of batches found.
pub fn recover_previous(dir: &Path, max_batch_bytes: usize) -> io::Result<usize> {
    let mut recovered = Recovered::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            *RECOVERED.lock().expect("journal recovery lock") = Some(recovered);
            return Ok(0);
        }
        Err(e) => return Err(e),
    };
    let mut found = 0;
    for entry in entries {
        let path = entry?.path();
        if !is_journal_file(&path) {
            continue;
        }
        match read_file(&path, max_batch_bytes) {
            Ok(batches) => {
                for (dir_name, batch) in batches {
                    found += 1;
                    recovered.batches.entry(dir_name).or_default().push(batch);
                }
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "unreadable journal file ignored")
            }
        }
        recovered.files.push(path);
    }
    for batches in recovered.batches.values_mut() {
        // Several files may hold one partition (runs that died before replaying): by offset.
        batches.sort_by_key(|b| base_offset(b));
        batches.dedup_by_key(|b| base_offset(b));
    }
    *RECOVERED.lock().expect("journal recovery lock") = Some(recovered);
    Ok(found)
}

fn base_offset(batch: &[u8]) -> i64 {
    i64::from_be_bytes(
        batch[0..8]
            .try_into()
            .expect("a batch is longer than 8 bytes"),
    )
}

/// The batches the previous runs journaled for the partition directory `dir_name`, oldest
/// first; empty when there are none (or recovery is over).
pub fn take_recovered(dir_name: &str) -> Vec<Bytes> {
    RECOVERED
        .lock()
        .expect("journal recovery lock")
        .as_mut()
        .and_then(|r| r.batches.remove(dir_name))
        .unwrap_or_default()
}

/// Every log this broker hosts has opened (and replayed and synced its batches): the previous
/// runs' files go. Batches of partitions no longer here (deleted while the broker was down)
/// are dropped with them.
pub fn finish_recovery() {
    let Some(recovered) = RECOVERED.lock().expect("journal recovery lock").take() else {
        return;
    };
    let unclaimed: usize = recovered.batches.values().map(Vec::len).sum();
    if unclaimed > 0 {
        tracing::info!(
            batches = unclaimed,
            partitions = recovered.batches.len(),
            "journaled batches of partitions this broker no longer hosts dropped"
        );
    }
    for path in recovered.files {
        if let Err(error) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), %error, "cannot remove an old journal file");
        }
    }
}

/// The live batches of one journal file, in ring order: `(directory name, batch)`. The file
/// is mapped, not read: each batch is a slice of the mapping (which lives until the last of
/// them is dropped), so recovering a ring of hundreds of MiB copies nothing into the heap.
pub fn read_file(path: &Path, max_batch_bytes: usize) -> io::Result<Vec<(String, Bytes)>> {
    let invalid = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {why}", path.display()),
        )
    };
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len < FILE_HEADER_BYTES {
        return Err(invalid("not a journal file".into()));
    }
    let len = usize::try_from(len).map_err(io::Error::other)?;
    // Nothing else writes or truncates the file while it is mapped: the directory is claimed
    // by this broker (`claim_dir`) and the file's writer is dead.
    let mapped = Bytes::from_owner(Mapping::read_only(&file, len)?);
    let entries = parse_ranges(&mapped, max_batch_bytes).map_err(invalid)?;
    Ok(entries
        .into_iter()
        .map(|(name, range)| (name, mapped.slice(range)))
        .collect())
}

/// Reads the entries of a journal file's bytes, copying each batch out (tests, the fuzz
/// target; start-up uses [`read_file`], which does not copy). Every length is checked against
/// the file before it is used: a damaged file yields fewer entries or an error, never a panic.
pub fn parse(bytes: &[u8], max_batch_bytes: usize) -> Result<Vec<(String, Bytes)>, String> {
    Ok(parse_ranges(bytes, max_batch_bytes)?
        .into_iter()
        .map(|(name, range)| (name, Bytes::copy_from_slice(&bytes[range])))
        .collect())
}

/// The live entries of a journal file's bytes, in ring order: `(directory name, where the
/// batch is in `bytes`)`.
fn parse_ranges(
    bytes: &[u8],
    max_batch_bytes: usize,
) -> Result<Vec<(String, Range<usize>)>, String> {
    if bytes.len() < FILE_HEADER_BYTES as usize || bytes[0..8] != FILE_MAGIC {
        return Err("not a journal file".into());
    }
    let ring_bytes = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    // Files this broker writes have rings of at least RING_MIN_BYTES; any ring that can hold
    // an entry header is read the same way (the fuzz target builds small ones).
    if ring_bytes < ENTRY_HEADER_BYTES as u64
        || !ring_bytes.is_multiple_of(8)
        || FILE_HEADER_BYTES.checked_add(ring_bytes) != Some(bytes.len() as u64)
    {
        return Err(format!(
            "ring of {ring_bytes} bytes in a file of {}",
            bytes.len()
        ));
    }
    let ring = &bytes[FILE_HEADER_BYTES as usize..];
    let slot = |offset: usize| {
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let (position, seq, check) = (word(offset), word(offset + 8), word(offset + 16));
        (check == position ^ seq.rotate_left(17) ^ SLOT_CHECK_KEY && seq > 0)
            .then_some((position, seq))
    };
    // The newer valid slot: the older one may be from before the last update, or torn.
    let Some((mut position, mut seq)) = SLOT_OFFSETS
        .iter()
        .filter_map(|&o| slot(o))
        .max_by_key(|&(_, seq)| seq)
    else {
        return Err("no valid header slot".into());
    };
    let mut batches = Vec::new();
    // At most one lap: entries never overlap, so a walk longer than the ring is damage.
    let end = position.saturating_add(ring_bytes);
    while position < end {
        let at = (position % ring_bytes) as usize;
        let left = ring.len() - at;
        if left < ENTRY_HEADER_BYTES {
            let Some(next) = position.checked_add(left as u64) else {
                break;
            };
            position = next;
            continue;
        }
        let header = &ring[at..at + ENTRY_HEADER_BYTES];
        let word = |from: usize| u32::from_le_bytes(header[from..from + 4].try_into().expect("4"));
        let kind = word(0);
        let len = word(8) as usize;
        let entry_seq = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
        if entry_seq != seq || len < ENTRY_HEADER_BYTES || len > left || !len.is_multiple_of(8) {
            break;
        }
        if kind == ENTRY_WRAP {
            if at + len != ring.len() {
                break;
            }
            let Some(next) = position.checked_add(len as u64) else {
                break;
            };
            position = next;
            seq = seq.wrapping_add(1);
            continue;
        }
        if kind != ENTRY_LIVE && kind != ENTRY_DEAD {
            break;
        }
        let batch_len = word(12) as usize;
        let name_len = u16::from_le_bytes(header[24..26].try_into().expect("2 bytes")) as usize;
        let used = ENTRY_HEADER_BYTES + name_len + batch_len;
        if name_len > DIR_NAME_MAX_BYTES
            || batch_len < BATCH_PREFIX_BYTES
            || batch_len > max_batch_bytes
            || used.next_multiple_of(8) != len
        {
            break;
        }
        let entry = &ring[at..at + len];
        let prefix_end = ENTRY_HEADER_BYTES + name_len + BATCH_PREFIX_BYTES;
        if crc32c(&entry[8..prefix_end]) != word(4) {
            break;
        }
        let batch = &entry[ENTRY_HEADER_BYTES + name_len..used];
        if record_batch::validate(batch, max_batch_bytes).is_err() {
            break;
        }
        if kind == ENTRY_LIVE {
            let Ok(name) =
                std::str::from_utf8(&entry[ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + name_len])
            else {
                break;
            };
            let batch_at = FILE_HEADER_BYTES as usize + at + ENTRY_HEADER_BYTES + name_len;
            debug_assert_eq!(&bytes[batch_at..batch_at + batch_len], batch);
            batches.push((name.to_string(), batch_at..batch_at + batch_len));
        }
        let Some(next) = position.checked_add(len as u64) else {
            break;
        };
        position = next;
        seq = seq.wrapping_add(1);
    }
    Ok(batches)
}
