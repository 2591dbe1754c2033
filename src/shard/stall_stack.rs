//! The stack of a stalled shard, taken by a signal and symbolized off the shard.
//!
//! glommio 0.9's own stall detector symbolizes the stack it caught on the stalled shard, in
//! its reactor, right after the run: that parses the binary's line tables, 0.1-0.4 s of the
//! shard's time. One report of a 42 ms stall during W3's warm-up thus held shard 0 for another
//! 414 ms, and the clients' backlog showed as an e2e max of 665 ms (`scripts/w3-probe`, 716k
//! msgs/s, 2026-11-27): the detector made the stall it reported ten times longer. So stacks are
//! taken here instead, and the shard pays only a signal handler's walk of its own stack:
//!
//! - each shard has a [`Slot`] in a static array: its thread, the start and sequence number of
//!   the task-queue run in progress (two relaxed stores per run, by [`run_starts`]), and
//!   whether a stack is wanted ([`arm`], after a stall the shard measured);
//! - one watchdog thread (at the lowest CPU priority, `nice` 19) sleeps while no shard is
//!   armed; while one is, it checks every quarter threshold whether its current run has lasted
//!   longer than the threshold and, if so and the thread is not parked in the reactor (blocked
//!   in `io_uring_enter`: the run ended and no other started yet), sends it [`SIGNAL`]; a
//!   stack caught in the reactor all the same (its own work between runs, or back to sleep
//!   between the check and the signal) is dropped: runs, and so stalls, happen outside it;
//! - the handler, on the shard, copies the raw return addresses of the stack into the slot
//!   (no allocation, no lock), unless the run it was sent for has ended;
//! - the watchdog symbolizes them, logs the innermost frames, and drops the symbolizer's cache
//!   (about 100 MB for this binary).

use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crate::metrics::MAX_SHARD_CELLS;

/// Return addresses kept from a stalled shard's stack: the signal handler's own frames, the
/// stalled code's, and glommio's run loop below it.
pub const MAX_FRAMES: usize = 64;

/// The signal sent to a stalled shard's thread (glommio's detector, never armed here, would
/// use `SIGUSR1`).
pub const SIGNAL: libc::c_int = libc::SIGUSR2;

/// How long the watchdog waits for a signalled shard's handler to run.
const CAPTURE_TIMEOUT: Duration = Duration::from_millis(200);

/// One shard's state, shared between the shard, its signal handler and the watchdog. All
/// atomics: the handler may run at any instruction of the shard.
pub struct Slot {
    /// The shard thread's kernel thread id; 0 while no shard uses the slot. (A kernel id, not
    /// a `pthread_t`: `tgkill` to a thread that has ended fails with ESRCH, `pthread_kill`
    /// would touch freed memory.)
    thread: AtomicU64,
    /// Sequence number of the task-queue run in progress (starts at 1).
    run_seq: AtomicU64,
    /// When it started, nanoseconds since [`base`].
    run_started_ns: AtomicU64,
    /// glommio's index of its task queue.
    run_queue: AtomicUsize,
    /// Until when a stack is wanted (nanoseconds since [`base`]; 0: not wanted).
    armed_until_ns: AtomicU64,
    threshold_ns: AtomicU64,
    /// The run the watchdog signalled; the handler captures only if it is still in progress.
    requested_seq: AtomicU64,
    /// Set by the handler after the frames: the run they belong to, or `u64::MAX` if that run
    /// had already ended when the signal arrived.
    captured_seq: AtomicU64,
    frame_count: AtomicUsize,
    frames: [AtomicUsize; MAX_FRAMES],
    /// Names of the shard's task queues by glommio's index ([`name_queue`]).
    queue_names: Mutex<Vec<(usize, &'static str)>>,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            thread: AtomicU64::new(0),
            run_seq: AtomicU64::new(0),
            run_started_ns: AtomicU64::new(0),
            run_queue: AtomicUsize::new(0),
            armed_until_ns: AtomicU64::new(0),
            threshold_ns: AtomicU64::new(0),
            requested_seq: AtomicU64::new(0),
            captured_seq: AtomicU64::new(0),
            frame_count: AtomicUsize::new(0),
            frames: [const { AtomicUsize::new(0) }; MAX_FRAMES],
            queue_names: Mutex::new(Vec::new()),
        }
    }

    fn queue_name(&self, index: usize) -> String {
        if index == 0 {
            return "default".to_string(); // glommio's default queue
        }
        let names = self.queue_names.lock().unwrap_or_else(|e| e.into_inner());
        names
            .iter()
            .find(|(i, _)| *i == index)
            .map_or_else(|| format!("#{index}"), |(_, name)| name.to_string())
    }
}

static SLOTS: [Slot; MAX_SHARD_CELLS] = [const { Slot::new() }; MAX_SHARD_CELLS];

static WATCHDOG: OnceLock<Thread> = OnceLock::new();

fn slot(shard: usize) -> &'static Slot {
    &SLOTS[shard % MAX_SHARD_CELLS]
}

/// The clock's origin for the slots' nanosecond stamps.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    base().elapsed().as_nanos() as u64
}

/// One stack as the watchdog reported it.
#[derive(Debug, Clone)]
pub struct StallStack {
    pub shard: usize,
    pub queue: String,
    /// How long the run had lasted when the signal was sent.
    pub stalled_for: Duration,
    /// `symbol (file:line)`, innermost first.
    pub frames: Vec<String>,
}

#[cfg(test)]
pub(crate) static OBSERVED: Mutex<Vec<StallStack>> = Mutex::new(Vec::new());

/// Registers the calling thread as shard `shard`'s, with stall threshold `threshold`; installs
/// the signal handler and starts the watchdog the first time.
pub fn enter_shard(shard: usize, threshold: Duration) {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        install_handler();
        let thread = std::thread::Builder::new()
            .name("stall-stacks".into())
            .spawn(watchdog)
            .expect("spawning the stall watchdog thread");
        let _ = WATCHDOG.set(thread.thread().clone());
    });
    let slot = slot(shard);
    slot.threshold_ns
        .store(threshold.as_nanos() as u64, Ordering::Relaxed);
    slot.armed_until_ns.store(0, Ordering::Relaxed);
    slot.thread.store(this_thread_id(), Ordering::Release);
}

/// Shard `shard`'s thread is ending: no more signals to it.
pub fn leave_shard(shard: usize) {
    let slot = slot(shard);
    slot.armed_until_ns.store(0, Ordering::Release);
    slot.thread.store(0, Ordering::Release);
}

/// The kernel's id of the calling thread (async-signal-safe: one system call).
fn this_thread_id() -> u64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u64 }
}

/// Names a task queue of shard `shard` for the reports (the shard's own stall warnings and
/// the watchdog's stacks).
pub fn name_queue(shard: usize, index: usize, name: &'static str) {
    slot(shard)
        .queue_names
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((index, name));
}

/// A new shard on the slot: the names of a previous one's queues go.
pub fn forget_queue_names(shard: usize) {
    slot(shard)
        .queue_names
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
}

/// The name of shard `shard`'s task queue `index`: `default`, a name from [`name_queue`], or
/// `#index`.
pub fn queue_name(shard: usize, index: usize) -> String {
    slot(shard).queue_name(index)
}

/// A task-queue run starts on shard `shard` (on its thread).
pub fn run_starts(shard: usize, queue: usize) {
    let slot = slot(shard);
    slot.run_started_ns.store(now_ns(), Ordering::Relaxed);
    slot.run_queue.store(queue, Ordering::Relaxed);
    slot.run_seq.fetch_add(1, Ordering::Release);
}

/// Wants the stack of shard `shard`'s next run longer than its threshold, for `armed_for`.
pub fn arm(shard: usize, armed_for: Duration) {
    slot(shard)
        .armed_until_ns
        .store(now_ns() + armed_for.as_nanos() as u64, Ordering::Release);
    if let Some(watchdog) = WATCHDOG.get() {
        watchdog.unpark();
    }
}

/// Whether a stack is still wanted for shard `shard`.
pub fn is_armed(shard: usize) -> bool {
    slot(shard).armed_until_ns.load(Ordering::Acquire) > now_ns()
}

fn install_handler() {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask"; the handler only touches
    // atomics and walks the stack (what glommio's own stall handler does).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(SIGNAL, &action, std::ptr::null_mut()) != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "no signal handler for stall stacks: stalls are reported without them"
            );
        }
    }
}

extern "C" fn on_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut c_void) {
    // SAFETY: errno is thread-local; restored before returning so the interrupted code sees its
    // own.
    let errno = unsafe { *libc::__errno_location() };
    let me = this_thread_id();
    if let Some(slot) = SLOTS
        .iter()
        .find(|s| s.thread.load(Ordering::Acquire) == me)
    {
        let requested = slot.requested_seq.load(Ordering::Acquire);
        if slot.run_seq.load(Ordering::Acquire) == requested {
            let mut count = 0;
            // SAFETY: unsynchronized tracing is what a signal handler can do (glommio's
            // stall handler does the same); it allocates nothing.
            unsafe {
                backtrace::trace_unsynchronized(|frame| {
                    slot.frames[count].store(frame.ip() as usize, Ordering::Relaxed);
                    count += 1;
                    count < MAX_FRAMES
                });
            }
            slot.frame_count.store(count, Ordering::Relaxed);
            slot.captured_seq.store(requested, Ordering::Release);
        } else {
            // The run ended before the signal arrived: this stack is not the stall's.
            slot.captured_seq.store(u64::MAX, Ordering::Release);
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn watchdog() {
    // The lowest priority: symbolizing takes 0.1-0.4 s of CPU, which the shards need more.
    // SAFETY: setpriority on this thread's own id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
    loop {
        let now = now_ns();
        let mut poll: Option<u64> = None;
        for (shard, slot) in SLOTS.iter().enumerate() {
            let until = slot.armed_until_ns.load(Ordering::Acquire);
            if until == 0 {
                continue;
            }
            if now >= until {
                let _ = slot.armed_until_ns.compare_exchange(
                    until,
                    0,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
                continue;
            }
            let threshold = slot.threshold_ns.load(Ordering::Relaxed).max(1_000_000);
            poll = Some(poll.map_or(threshold / 4, |p| p.min(threshold / 4)));
            if let Some(stack) = take_stack(shard, slot, now, threshold) {
                // One stack per arming.
                let _ = slot.armed_until_ns.compare_exchange(
                    until,
                    0,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
                report(stack);
            }
        }
        match poll {
            Some(ns) => std::thread::sleep(Duration::from_nanos(ns)),
            None => std::thread::park(),
        }
    }
}

/// Signals the shard if its current run has lasted longer than `threshold_ns` and returns its
/// stack, symbolized.
fn take_stack(shard: usize, slot: &Slot, now: u64, threshold_ns: u64) -> Option<StallStack> {
    let seq = slot.run_seq.load(Ordering::Acquire);
    let started = slot.run_started_ns.load(Ordering::Relaxed);
    let stalled_for_ns = now.saturating_sub(started);
    if seq == 0
        || stalled_for_ns <= threshold_ns
        || seq == slot.requested_seq.load(Ordering::Relaxed)
    {
        return None;
    }
    let thread = slot.thread.load(Ordering::Acquire);
    // A run is only known to have ended when the next one starts, so a shard that ran and then
    // had nothing to do (all its partitions waiting on a device hold, say) looks like a long
    // run: its stack would show the reactor's sleep, not a stall. Checked again next poll.
    if thread == 0 || parked_in_reactor(thread) {
        return None;
    }
    let queue = slot.run_queue.load(Ordering::Relaxed);
    slot.requested_seq.store(seq, Ordering::Release);
    // SAFETY: a signal to a thread of this process; if the shard's thread ended (and its id
    // went to another thread) the handler finds no slot of its own and returns.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            thread as libc::pid_t,
            SIGNAL,
        )
    };
    if sent != 0 {
        return None;
    }
    let deadline = Instant::now() + CAPTURE_TIMEOUT;
    loop {
        let captured = slot.captured_seq.load(Ordering::Acquire);
        if captured == seq {
            break;
        }
        if captured == u64::MAX {
            return None;
        }
        if Instant::now() >= deadline {
            // Not captured in time (this thread, at the lowest priority, may itself have waited
            // for a CPU): the same run may be signalled again at the next poll.
            let _ =
                slot.requested_seq
                    .compare_exchange(seq, 0, Ordering::AcqRel, Ordering::Relaxed);
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let count = slot.frame_count.load(Ordering::Relaxed).min(MAX_FRAMES);
    let ips: Vec<usize> = slot.frames[..count]
        .iter()
        .map(|ip| ip.load(Ordering::Relaxed))
        .collect();
    let frames = symbolize(&ips);
    if between_runs(&frames) {
        // The run had ended (the check above saw the thread out of `io_uring_enter`, in the
        // reactor's own work or between two sleeps); the arming stays for the next stall.
        return None;
    }
    Some(StallStack {
        shard,
        queue: slot.queue_name(queue),
        stalled_for: Duration::from_nanos(stalled_for_ns),
        frames: super::stall::cut_frames(frames, super::stall::FRAMES_LOGGED),
    })
}

/// Whether a captured stack is glommio's reactor between two task-queue runs (its park or
/// poll, in `parking.rs`: asleep in `io_uring_enter` or doing its own bookkeeping), not a
/// stall: a stall is a run, and runs happen outside the reactor. Release builds name frames
/// without their module path, so the reactor is recognised by its file.
fn between_runs(frames: &[(String, Option<String>)]) -> bool {
    frames.iter().any(|(_, location)| {
        location
            .as_deref()
            .is_some_and(|l| l.contains("glommio") && l.contains("/src/parking.rs"))
    })
}

/// Whether thread `thread` of this process is blocked in `io_uring_enter`: a glommio executor
/// waits for events there between task-queue runs, and task code never blocks in it. Read from
/// `/proc/self/task/TID/syscall` (its first field: the number of the system call the thread is
/// blocked in, `running`, or -1). Where that cannot be read, `false`: the stack is taken.
fn parked_in_reactor(thread: u64) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{thread}/syscall")).is_ok_and(|text| {
        text.split_ascii_whitespace()
            .next()
            .and_then(|nr| nr.parse().ok())
            == Some(libc::SYS_io_uring_enter)
    })
}

/// `(symbol, file:line:column)` per frame, inlined ones included, outermost last; frames the
/// symbolizer cannot name are left out. Then gives the symbolizer's memory back.
fn symbolize(ips: &[usize]) -> Vec<(String, Option<String>)> {
    let mut frames = Vec::new();
    for &ip in ips {
        // A return address points after the call: look up the call instruction.
        let address = ip.saturating_sub(1) as *mut c_void;
        backtrace::resolve(address, |symbol| {
            if let Some(name) = symbol.name() {
                let location = symbol.filename().map(|file| {
                    format!(
                        "{}:{}:{}",
                        file.display(),
                        symbol.lineno().unwrap_or(0),
                        symbol.colno().unwrap_or(0)
                    )
                });
                frames.push((format!("{name:#}"), location));
            }
        });
    }
    backtrace::clear_symbol_cache();
    // SAFETY: malloc_trim only hands free heap pages back to the kernel.
    unsafe { libc::malloc_trim(0) };
    frames
}

fn report(stack: StallStack) {
    tracing::warn!(
        shard = stack.shard,
        stalled_for_ms = format!("{:.1}", stack.stalled_for.as_secs_f64() * 1e3),
        queue = %stack.queue,
        doing = %stack.frames.join(" <- "),
        "stalled shard's stack (taken by a signal as the stall went on, symbolized off the shard)"
    );
    #[cfg(test)]
    OBSERVED.lock().unwrap().push(stack);
}
