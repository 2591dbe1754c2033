//! How much CPU each shard's thread got, and how long it waited for one: the kernel's
//! per-thread scheduler accounting (`/proc/self/task/TID/schedstat`), read on a scrape.
//!
//! A shard is one thread that sleeps in io_uring between events, so each event on its path
//! (a request's bytes, a write's completion, a hop from another shard) wakes it, and each
//! wake-up waits until a CPU is free. On a machine whose CPUs are busy, with the broker's own
//! shards, its clients or anything else, that wait is where latency goes: at W3's rate on two
//! vCPUs shared with the load generator the shard threads waited 0.85 ms per wake-up on average
//! (docs/benchmarks.md, "What bounds W3 at 900k on two vCPUs"), and a record's path crosses six
//! such wake-ups. The broker cannot see that from its own clocks (a task that waited for a CPU
//! looks the same as one that waited for the device); the kernel counts it for every thread.
//!
//! Each shard registers its thread id at start ([`register`]); `/metrics` reads the three
//! numbers per shard ([`read`]). Nothing is read or written on the shard's path. The kernel adds
//! a running thread's time at scheduler ticks and when it leaves the CPU, so a figure can lag
//! by a tick (4 ms at 250 Hz).

use std::sync::Mutex;
use std::time::Duration;

/// Thread ids of the running shards, by shard (0: not running). Written once per shard at
/// start and at exit; read per scrape.
static SHARD_THREADS: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// The kernel's scheduler accounting of one thread since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTime {
    /// Time on a CPU.
    pub on_cpu: Duration,
    /// Time runnable but waiting for a CPU (another thread or process had it).
    pub waiting: Duration,
    /// Times the thread was put on a CPU.
    pub runs: u64,
}

impl std::ops::AddAssign for CpuTime {
    fn add_assign(&mut self, other: CpuTime) {
        self.on_cpu += other.on_cpu;
        self.waiting += other.waiting;
        self.runs += other.runs;
    }
}

/// Registers the calling thread as shard `shard`'s until the guard drops.
#[must_use = "the shard is unregistered when the guard drops"]
pub fn register(shard: usize) -> Registration {
    let mut threads = SHARD_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    if threads.len() <= shard {
        threads.resize(shard + 1, 0);
    }
    // SAFETY: gettid has no preconditions.
    threads[shard] = unsafe { libc::syscall(libc::SYS_gettid) } as u64;
    Registration { shard }
}

/// See [`register`].
#[derive(Debug)]
pub struct Registration {
    shard: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut threads = SHARD_THREADS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(thread) = threads.get_mut(self.shard) {
            *thread = 0;
        }
    }
}

/// Shard `shard`'s accounting, or `None` if it is not running or the kernel does not keep it
/// (a kernel built without `CONFIG_SCHED_INFO`).
pub fn read(shard: usize) -> Option<CpuTime> {
    let thread = *SHARD_THREADS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(shard)?;
    if thread == 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/self/task/{thread}/schedstat")).ok()?;
    parse_schedstat(&text)
}

/// `schedstat`'s one line: nanoseconds on a CPU, nanoseconds waiting on a run queue, runs.
fn parse_schedstat(text: &str) -> Option<CpuTime> {
    let mut fields = text.split_ascii_whitespace().map(|f| f.parse::<u64>().ok());
    let on_cpu_ns = fields.next()??;
    let waiting_ns = fields.next()??;
    let runs = fields.next()??;
    Some(CpuTime {
        on_cpu: Duration::from_nanos(on_cpu_ns),
        waiting: Duration::from_nanos(waiting_ns),
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_line_and_refuses_anything_else() {
        assert_eq!(
            parse_schedstat("1500000000 250000 42\n"),
            Some(CpuTime {
                on_cpu: Duration::from_millis(1500),
                waiting: Duration::from_micros(250),
                runs: 42,
            })
        );
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("1 2"), None);
        assert_eq!(parse_schedstat("1 -2 3"), None);
        assert_eq!(parse_schedstat("a b c"), None);
    }

    #[test]
    fn a_registered_thread_is_read_until_it_leaves() {
        // A shard number no other test of this process registers.
        const SHARD: usize = 97;
        assert_eq!(read(SHARD), None);
        let registration = register(SHARD);
        // On a CPU across a few scheduler ticks, then off it: the kernel adds a running
        // thread's time at ticks and when it leaves the CPU, so a thread read while on its
        // first run can show none yet.
        let started = std::time::Instant::now();
        let mut spin = 0u64;
        while started.elapsed() < Duration::from_millis(20) {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        std::thread::sleep(Duration::from_millis(2));
        let first = read(SHARD).expect("this kernel keeps schedstat");
        assert!(first.on_cpu > Duration::ZERO && first.runs > 0, "{first:?}");
        std::thread::sleep(Duration::from_millis(2));
        let second = read(SHARD).expect("still registered");
        assert!(
            second.runs > first.runs,
            "a sleep ends in a new run: {second:?}"
        );
        drop(registration);
        assert_eq!(read(SHARD), None);
    }
}
