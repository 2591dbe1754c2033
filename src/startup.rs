//! What the process claims before any shard starts: its data directory, exclusively, and the
//! file descriptors it may need.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Name of the lock file in the data directory (Kafka's log dirs hold one of the same name).
pub const LOCK_FILE_NAME: &str = ".lock";

/// An exclusive `flock` on `<data dir>/.lock`, held for the life of the process (the kernel
/// drops it when the process dies, however it dies). Two brokers on one data directory would
/// append to the same segment files and Raft log and corrupt both.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Takes the data directory's lock, or says which process holds it.
pub fn lock_data_dir(data_dir: &Path) -> Result<DataDirLock, String> {
    let path = data_dir.join(LOCK_FILE_NAME);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor `file` owns; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = io::Error::last_os_error();
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Err(if error.kind() == io::ErrorKind::WouldBlock {
            format!(
                "data dir {} is in use by another broker process (pid {}); \
                 each broker needs its own log.dirs",
                data_dir.display(),
                holder.trim()
            )
        } else {
            format!("cannot lock {}: {error}", path.display())
        });
    }
    // The holder's pid, for the message above: informative only, the flock is the lock.
    let pid = std::process::id().to_string();
    let written = file
        .set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| file.write_all(pid.as_bytes()));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the pid into the lock file");
    }
    Ok(DataDirLock { _file: file })
}

/// Raises the soft limit on open files to the hard limit and returns the limit in force. Each
/// partition being written holds its active segment open (and one more descriptor while it is
/// read), each client a socket: 10,000 busy partitions need more than the usual 1,024.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a live, initialised rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_data_dir(dir.path()).unwrap();
        let refused = lock_data_dir(dir.path()).unwrap_err();
        assert!(
            refused.contains("in use by another broker process"),
            "{refused}"
        );
        assert!(
            refused.contains(&std::process::id().to_string()),
            "{refused}"
        );
        drop(held);
        lock_data_dir(dir.path()).expect("free again once the holder is gone");
    }

    #[test]
    fn the_open_files_limit_is_at_least_what_it_was() {
        let mut before = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit with a pointer to a live rlimit.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut before) },
            0
        );
        assert!(raise_open_files_limit() >= before.rlim_cur);
    }
}

/// The journal directory this run's shards use (`log.journal.dir`), claimed, with the previous
/// runs' journal files read ([`crate::storage::journal::recover_previous`]).
#[derive(Debug)]
pub struct JournalSetup {
    /// Where the shards create their journals; `None`: no journal this run.
    pub dir: Option<std::path::PathBuf>,
    /// Each shard's ring (`log.journal.bytes`, or the default for this machine).
    pub ring_bytes: u64,
    /// Whether a failure to create a shard's journal fails start-up (a directory the
    /// operator named) or only turns the journal off (the default's `/dev/shm` may be small,
    /// as a container's 64 MiB).
    pub required: bool,
    _claim: Option<crate::storage::journal::DirClaim>,
}

/// Resolves and claims the journal directory and reads what the previous run left in it.
/// With the journal off, a default directory from an earlier run is still read: batches a
/// run with the journal on acknowledged and never wrote are replayed either way.
pub fn prepare_journal(config: &crate::config::BrokerConfig) -> Result<JournalSetup, String> {
    use crate::config::JournalDir;
    use crate::storage::journal;
    journal::remove_abandoned_default_dirs();
    let default = journal::default_dir(&config.data_dir);
    let (dir, used, required) = match &config.journal_dir {
        JournalDir::At(dir) => (Some(dir.clone()), true, true),
        JournalDir::Default => (default.clone(), true, false),
        JournalDir::Off => (default.filter(|d| d.exists()), false, false),
    };
    let Some(dir) = dir else {
        if config.journal_dir == JournalDir::Default {
            tracing::warn!(
                "no {} for the journal: acks=1 waits for segment writes (set log.journal.dir)",
                journal::DEFAULT_PARENT
            );
        }
        return Ok(JournalSetup {
            dir: None,
            ring_bytes: 0,
            required: false,
            _claim: None,
        });
    };
    let claim = journal::claim_dir(&dir, &config.data_dir)
        .map_err(|e| format!("journal directory {}: {e}", dir.display()))?;
    let found = journal::recover_previous(&dir, config.socket_request_max_bytes)
        .map_err(|e| format!("reading journal directory {}: {e}", dir.display()))?;
    if found > 0 {
        tracing::info!(dir = %dir.display(), batches = found, "journaled batches from the previous run");
    }
    let ring_bytes = config
        .journal_bytes_per_shard
        .unwrap_or_else(|| default_ring_bytes(&dir, config.shards()));
    if used {
        tracing::info!(dir = %dir.display(), ring_bytes, "journal");
    }
    Ok(JournalSetup {
        dir: used.then_some(dir),
        ring_bytes,
        required,
        _claim: Some(claim),
    })
}

/// Each shard's journal ring when `log.journal.bytes` is not set: an eighth of the machine's
/// memory shared by the shards, within [64, 512] MiB each, and within half of the journal file
/// system's free space (a container's small `/dev/shm`); whole MiB.
fn default_ring_bytes(dir: &Path, shards: usize) -> u64 {
    const MIB: u64 = 1 << 20;
    let shards = shards.max(1) as u64;
    // SAFETY: sysconf reads system constants.
    let memory_bytes = unsafe {
        (libc::sysconf(libc::_SC_PHYS_PAGES).max(0) as u64)
            .saturating_mul(libc::sysconf(libc::_SC_PAGESIZE).max(0) as u64)
    };
    let per_shard = (memory_bytes / 8 / shards).clamp(64 * MIB, 512 * MIB);
    let free_bytes = free_space_bytes(dir).unwrap_or(u64::MAX);
    let fits = free_bytes / 2 / shards;
    (per_shard.min(fits) / MIB * MIB).max(crate::storage::journal::RING_MIN_BYTES)
}

/// Free bytes of the file system holding `dir` (statvfs), for an unprivileged process.
fn free_space_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct from a valid C string.
    unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(path.as_ptr(), &mut stat) == 0)
            .then(|| (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
    }
}
