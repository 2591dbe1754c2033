//! Journal directories: the default one per data directory in `/dev/shm`, claiming one for a
//! data directory, and removing those whose data directory is gone.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::checksum::crc32c;

/// Where the default journal directories live: a memory file system on every Linux.
pub const DEFAULT_PARENT: &str = "/dev/shm";
const DEFAULT_DIR_PREFIX: &str = "broker-journal-";
/// In a journal directory: the data directory it belongs to.
const DATA_DIR_FILE: &str = "data-dir";
const LOCK_FILE: &str = ".lock";

/// `/dev/shm/broker-journal-<hash>` for a data directory (its canonical path), or `None`
/// where there is no `/dev/shm`.
pub fn default_dir(data_dir: &Path) -> Option<PathBuf> {
    let parent = Path::new(DEFAULT_PARENT);
    parent.is_dir().then(|| {
        let hash = crc32c(data_dir.as_os_str().as_encoded_bytes());
        parent.join(format!("{DEFAULT_DIR_PREFIX}{hash:08x}"))
    })
}

/// A journal directory claimed by this process: an exclusive `flock` on its `.lock` file,
/// held while this lives (the data directory's own lock already keeps a second broker off
/// the data; this keeps two data directories off one journal directory).
#[derive(Debug)]
pub struct DirClaim {
    _lock: File,
}

/// Creates (if needed) and claims `dir` for `data_dir`; refuses a directory another data
/// directory's broker holds or recorded (its journal would be replayed into the wrong logs).
pub fn claim_dir(dir: &Path, data_dir: &Path) -> io::Result<DirClaim> {
    std::fs::create_dir_all(dir)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?;
    if !lock_exclusive(&lock) {
        return Err(io::Error::other(format!(
            "journal directory {} is in use by another broker",
            dir.display()
        )));
    }
    let recorded = dir.join(DATA_DIR_FILE);
    match std::fs::read(&recorded) {
        Ok(owner) if owner != data_dir.as_os_str().as_encoded_bytes() => {
            return Err(io::Error::other(format!(
                "journal directory {} belongs to data directory {}; set log.journal.dir",
                dir.display(),
                String::from_utf8_lossy(&owner)
            )))
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::write(&recorded, data_dir.as_os_str().as_encoded_bytes())?
        }
        Err(e) => return Err(e),
    }
    Ok(DirClaim { _lock: lock })
}

/// Removes default journal directories whose data directory is gone and which no broker
/// holds: a data directory deleted after its broker died (a test's temporary one, say) would
/// otherwise keep its journal in memory until the machine restarts. Returns how many went.
pub fn remove_abandoned_default_dirs() -> usize {
    let Ok(entries) = std::fs::read_dir(DEFAULT_PARENT) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_ours = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(DEFAULT_DIR_PREFIX));
        if !is_ours {
            continue;
        }
        let Ok(owner) = std::fs::read(dir.join(DATA_DIR_FILE)) else {
            continue;
        };
        let owner = PathBuf::from(String::from_utf8_lossy(&owner).into_owned());
        if owner.exists() {
            continue;
        }
        // Not while a broker holds it (its data directory was removed under it).
        let Ok(lock) = File::open(dir.join(LOCK_FILE)) else {
            continue;
        };
        if !lock_exclusive(&lock) {
            continue;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                removed += 1;
                tracing::info!(dir = %dir.display(), data_dir = %owner.display(), "removed the journal of a data directory that is gone");
            }
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot remove an abandoned journal")
            }
        }
    }
    removed
}

/// Takes an exclusive `flock` on `file` without waiting; held until the file closes.
fn lock_exclusive(file: &File) -> bool {
    // SAFETY: flock on a descriptor `file` owns; no memory is passed.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}
