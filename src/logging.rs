//! Log output off the shards: every thread formats its own lines, one writer thread writes them.
//!
//! A shard that writes its log lines itself waits in `write(2)` for as long as the output
//! takes: a log file whose inode block is under writeback behind the segment writes, a pipe to
//! a journald that is behind, or the same file's lock held by another thread that lost its CPU
//! in the middle of a line (the stall-stack watchdog runs at `nice` 19). While it waits, every
//! partition and connection of that shard waits too. Seen under W3 on this project's 2-vCPU
//! VMs: a 36 ms shard stall whose stack was `write` under tracing's fmt layer, logging the
//! previous stall's warning.
//!
//! So lines go through a bounded queue to one writer thread (tracing-appender's non-blocking
//! writer, in its lossy mode). When the output cannot keep up and the queue is full, a line is
//! dropped and counted ([`dropped_lines`], `broker_log_lines_dropped_total` in `/metrics`),
//! never waited for. The queue holds at most [`QUEUED_LINES_MAX`] lines, a few MB.
//!
//! Paths that end the process on purpose ([`flush`] before `abort` or `exit`) flush the queue
//! first, so their last line is written.

use std::sync::{Mutex, OnceLock};

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

/// Lines queued for the writer at most (each a formatted line, typically 100-300 bytes; a
/// stall's stack is a few KB). Enough for start-up with thousands of partitions, or a burst of
/// warnings, while the output is briefly slow.
pub const QUEUED_LINES_MAX: usize = 8192;

/// The writer thread's name, as `top -H` shows it.
pub const WRITER_THREAD_NAME: &str = "log-writer";

static WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Installs the process's tracing subscriber: lines at `RUST_LOG`'s levels (default `info`)
/// to stderr through the writer thread. Call once, early in `main`, after
/// `server::block_shutdown_signals` (the writer thread inherits the calling thread's signal
/// mask).
pub fn init() {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES_MAX)
        .thread_name(WRITER_THREAD_NAME)
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    *WRITER.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(writer)
        // Colour codes only for a person at a terminal, not in log files and journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
}

/// Writes out the lines queued so far and stops the writer (waiting at most about a second
/// for a stuck output). Lines logged afterwards are dropped. For the end of `main` and for
/// every path that ends the process without returning from it.
pub fn flush() {
    let guard = WRITER.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(guard);
}

/// Log lines dropped because the output did not keep up (0 before [`init`]).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}
