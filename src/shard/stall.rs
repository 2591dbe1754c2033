//! Stall detection: a warning (and a metric) when a shard's event loop does not come back for
//! longer than `shard.stall.threshold.ms`.
//!
//! A shard is one glommio executor: it polls io_uring, then runs its task queues, then polls
//! again. Everything it serves (sockets, timers, the Raft ticks on shard 0, the other shards'
//! jobs) waits while a task runs without yielding, so a task that blocks the thread (a
//! synchronous fsync, a long CPU loop) delays every client of the shard by as much.
//!
//! # How
//! glommio 0.9 calls the executor's [`StallDetectionHandler`] at the start of every
//! *task-queue run* (the unit between two returns to the reactor). [`StallHandler::threshold`]
//! reads how long the previous run took (glommio's executor runtime since the last call): a
//! run longer than the threshold is a stall, counted per shard (`broker_shard_stalls_total`,
//! `broker_shard_stall_seconds`) and logged, at most once per [`LOG_INTERVAL`] per shard. That
//! costs a thread-local access per run and no system call.
//!
//! What the shard was doing comes from glommio's own stall detector, armed only after a stall
//! (for [`ARMED_FOR`], until it has caught one), at most once per
//! `shard.stall.stack.interval.ms` (60 s; 0: never): it sets a timer (`timerfd`, two system calls
//! per run) for the threshold; if the timer fires, a helper thread sends SIGUSR1 to the shard,
//! whose signal handler records the raw stack. After the run glommio symbolizes it on the shard
//! and logs it with the `log` crate (glommio 0.9 does not export its report type, so a handler
//! cannot take it directly): [`install_log_bridge`] routes those records to
//! [`on_glommio_report`], which logs the innermost frames, and every other record to `tracing`.
//! Symbolizing is slow (it parses the binary's line tables: about 0.2 s on the shard, measured
//! under W1) and its cache is large (about 100 MB for this binary), so stacks are rare and the
//! cache is dropped afterwards.
//!
//! A queue with work yields to the reactor at its preempt timer, which [`configure`] sets to
//! half the threshold (glommio's default is 100 ms): a run longer than the threshold is a task
//! that did not yield, not a busy queue. A stall is known only once it ends: a shard stuck forever reports
//! nothing, and the first stall of an episode is reported without a stack.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, StallDetectionHandler, TaskQueueHandle};

/// glommio's default preempt timer: how long a task queue with work runs before the executor
/// polls for I/O again.
pub const GLOMMIO_PREEMPT_TIMER: Duration = Duration::from_millis(100);

/// glommio's timer fires at least this long after the preempt timer, so a run that the preempt
/// timer ends on time is never caught.
const MIN_MARGIN: Duration = Duration::from_millis(1);

/// At most one warning (and one stack) per shard per interval; the stalls in between are
/// counted in the next warning, and every one in the metrics.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// After a stall, glommio's detector stays armed this long to catch the next one's stack.
pub const ARMED_FOR: Duration = Duration::from_secs(60);

/// Frames logged with a stall: enough to see the caller chain of the blocking call.
const FRAMES_LOGGED: usize = 12;

/// The `log` target of glommio's stall reports.
const GLOMMIO_STALL_TARGET: &str = "glommio::executor::stall";

/// One stall as reported.
#[derive(Debug, Clone)]
pub struct Stall {
    pub shard: usize,
    /// The task queue that ran (`default`, `coordination`, `admin`; `#N` when only its index is
    /// known).
    pub queue: String,
    /// How long the task-queue run lasted: how long the event loop did not come back.
    pub duration: Duration,
    /// The innermost frames when the threshold passed, `symbol (file:line)`, innermost first;
    /// empty when glommio's detector was not armed.
    pub frames: Vec<String>,
}

/// The [`StallDetectionHandler`] of one shard's executor. glommio calls it on the shard's
/// thread; its state lives in that thread's [`ThisShard`].
#[derive(Debug)]
pub struct StallHandler {
    threshold: Duration,
}

impl StallDetectionHandler for StallHandler {
    /// At the start of each task-queue run: measures the previous run, and arms glommio's
    /// timer for this one (at `max_expected_runtime`, the preempt timer or a latency queue's
    /// shorter one, plus the margin returned: together the threshold) only while a stack is
    /// wanted.
    fn threshold(
        &self,
        queue: TaskQueueHandle,
        max_expected_runtime: Duration,
    ) -> Option<Duration> {
        let armed = THIS_SHARD.with(|this| match this.borrow_mut().as_mut() {
            Some(this) => this.run_starts(queue),
            None => false,
        });
        armed.then(|| {
            self.threshold
                .saturating_sub(max_expected_runtime)
                .max(MIN_MARGIN)
        })
    }
}

/// Stall bookkeeping of the shard running on this thread.
#[derive(Debug)]
struct ThisShard {
    id: usize,
    threshold: Duration,
    /// The queue of the run in progress (the run measured at the next call).
    queue: Option<TaskQueueHandle>,
    /// At most one stack per this interval (zero: never).
    stack_interval: Duration,
    /// glommio's detector is armed until then.
    armed_until: Option<Instant>,
    /// When the last stack was taken.
    last_stack: Option<Instant>,
    /// glommio reported (with its stack) the run that just ended.
    reported: bool,
    /// When the current run started, if glommio's detector is armed for it (to tell how long
    /// glommio took to symbolize the stack).
    armed_run_started: Option<Instant>,
    last_logged: Option<Instant>,
    /// Stalls since the last warning and the longest of them.
    unlogged: u64,
    unlogged_max: Duration,
}

thread_local! {
    static THIS_SHARD: RefCell<Option<ThisShard>> = const { RefCell::new(None) };
}

#[cfg(test)]
static OBSERVED: std::sync::Mutex<Vec<Stall>> = std::sync::Mutex::new(Vec::new());

impl ThisShard {
    /// A run starts: measures the one before (glommio's executor runtime since the last call
    /// is exactly its length). Returns whether to arm glommio's detector for this one.
    fn run_starts(&mut self, queue: TaskQueueHandle) -> bool {
        let previous = self.queue.replace(queue);
        let ran = glommio::executor().executor_stats().executor_runtime();
        if ran > self.threshold {
            // No previous queue: the run that called `enter_shard`, the shard's main task, on
            // the default queue.
            let previous = previous.unwrap_or_default();
            self.stalled(queue_name(previous), ran, Vec::new());
        }
        self.reported = false;
        self.armed_run_started = None;
        let now = Instant::now();
        match self.armed_until {
            Some(until) if now < until => {
                self.armed_run_started = Some(now);
                true
            }
            Some(_) => {
                self.armed_until = None;
                false
            }
            None => false,
        }
    }

    /// Counts and logs a stall: once from glommio's report when it caught the stack (then the
    /// measurement at the next run start only skips it), else from the measurement.
    fn stalled(&mut self, queue: String, duration: Duration, frames: Vec<String>) {
        let with_stack = !frames.is_empty();
        if self.reported {
            return;
        }
        if with_stack {
            self.reported = true;
        }
        crate::metrics::shard_cells(self.id)
            .stalls
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::DETAIL.stall_duration.observe(duration);
        let stall = Stall {
            shard: self.id,
            queue,
            duration,
            frames,
        };
        #[cfg(test)]
        OBSERVED.lock().unwrap().push(stall.clone());
        let now = Instant::now();
        let quiet = self
            .last_logged
            .is_some_and(|last| now.duration_since(last) < LOG_INTERVAL);
        let stack_due = !self.stack_interval.is_zero()
            && self
                .last_stack
                .is_none_or(|last| now.duration_since(last) >= self.stack_interval);
        if !with_stack && self.armed_until.is_none() && stack_due {
            // Catch the next one's stack.
            self.armed_until = Some(now + ARMED_FOR);
        }
        if with_stack {
            // One stack per interval: symbolizing is expensive.
            self.armed_until = None;
            self.last_stack = Some(now);
        }
        if quiet && !with_stack {
            self.unlogged += 1;
            self.unlogged_max = self.unlogged_max.max(duration);
            return;
        }
        let (unlogged, unlogged_max) = (self.unlogged, self.unlogged_max);
        self.last_logged = Some(now);
        self.unlogged = 0;
        self.unlogged_max = Duration::ZERO;
        let doing = if !stall.frames.is_empty() {
            stall.frames.join(" <- ")
        } else if self.armed_until.is_some() {
            "(no stack: the next stall's will be logged)".to_string()
        } else {
            "(no stack: one per shard.stall.stack.interval.ms)".to_string()
        };

        // Between the run's end and now glommio symbolized the stack, on this thread.
        let symbolized_ms = self
            .armed_run_started
            .filter(|_| with_stack)
            .map(|started| {
                (now.duration_since(started).saturating_sub(duration)).as_secs_f64() * 1e3
            });
        tracing::warn!(
            shard = stall.shard,
            stalled_ms = format!("{:.1}", duration.as_secs_f64() * 1e3),
            threshold_ms = self.threshold.as_millis() as u64,
            queue = %stall.queue,
            unlogged_since_last_warning = unlogged,
            unlogged_max_ms = format!("{:.1}", unlogged_max.as_secs_f64() * 1e3),
            %doing,
            symbolized_ms,
            "shard stalled: its event loop did not come back within the threshold"
        );
    }
}

thread_local! {
    /// Names of this shard's task queues ([`name_queue`]), by glommio's queue index.
    static QUEUE_NAMES: RefCell<Vec<(usize, &'static str)>> = const { RefCell::new(Vec::new()) };
}

/// Names a task queue created on this shard, for stall reports (glommio tells a handler only
/// the queue's index).
pub fn name_queue(queue: TaskQueueHandle, name: &'static str) {
    QUEUE_NAMES.with(|names| names.borrow_mut().push((queue.index(), name)));
}

fn queue_name(queue: TaskQueueHandle) -> String {
    let index = queue.index();
    if index == 0 {
        return "default".to_string(); // glommio's default queue
    }
    QUEUE_NAMES
        .with(|names| {
            names
                .borrow()
                .iter()
                .find(|(i, _)| *i == index)
                .map(|(_, name)| name.to_string())
        })
        .unwrap_or_else(|| format!("#{index}"))
}

/// Makes this thread's stalls count for shard `id` (called first thing on each shard's
/// executor), with a stack at most once per `stack_interval` (zero: none). Without it the
/// handler measures nothing.
pub fn enter_shard(id: usize, threshold: Duration, stack_interval: Duration) {
    THIS_SHARD.with(|this| {
        *this.borrow_mut() = Some(ThisShard {
            id,
            threshold,
            queue: None,
            stack_interval,
            armed_until: None,
            last_stack: None,
            reported: false,
            armed_run_started: None,
            last_logged: None,
            unlogged: 0,
            unlogged_max: Duration::ZERO,
        })
    });
    // The runtime so far (start-up) is not a run to measure.
    let _ = glommio::executor().executor_stats();
}

/// Takes glommio's stall reports out of the `log` records (see the module doc) and passes
/// every other record to `tracing` (what `tracing_subscriber`'s `init` would have set up).
/// Call once, after the `tracing` subscriber is set; later calls do nothing.
pub fn install_log_bridge() {
    static BRIDGE: LogBridge = LogBridge;
    if log::set_logger(&BRIDGE).is_ok() {
        // glommio's reports are warnings: let them through whatever the tracing filter says
        // (the bridge filters the rest itself).
        let tracing_max = match tracing::level_filters::LevelFilter::current().into_level() {
            None => log::LevelFilter::Off,
            Some(tracing::Level::ERROR) => log::LevelFilter::Error,
            Some(tracing::Level::WARN) => log::LevelFilter::Warn,
            Some(tracing::Level::INFO) => log::LevelFilter::Info,
            Some(tracing::Level::DEBUG) => log::LevelFilter::Debug,
            Some(tracing::Level::TRACE) => log::LevelFilter::Trace,
        };
        log::set_max_level(tracing_max.max(log::LevelFilter::Warn));
    }
}

struct LogBridge;

impl log::Log for LogBridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target().starts_with(GLOMMIO_STALL_TARGET)
            || tracing_log::LogTracer::new().enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.target().starts_with(GLOMMIO_STALL_TARGET) {
            on_glommio_report(&record.args().to_string());
        } else {
            tracing_log::LogTracer::new().log(record);
        }
    }

    fn flush(&self) {}
}

/// Handles one of glommio's stall reports, on the stalled shard's thread, just after the run
/// it caught: logs it with its stack, then drops the symbolizer's cache.
pub fn on_glommio_report(text: &str) {
    let handled = THIS_SHARD.with(|this| {
        let mut this = this.borrow_mut();
        let this = this.as_mut()?;
        match parse_report(text) {
            // Below the threshold: the timer fired as the previous run ended and its signal
            // landed in this one.
            Some((_, duration)) if duration < this.threshold => {}
            Some((queue, duration)) => this.stalled(
                queue.to_string(),
                duration,
                innermost_frames(text, FRAMES_LOGGED),
            ),
            None => tracing::warn!(shard = this.id, "unreadable stall report: {text}"),
        }
        Some(())
    });
    if handled.is_none() {
        // Not a shard (no `enter_shard`): glommio's own words.
        tracing::warn!(target: "glommio::executor::stall", "{text}");
    }
    // Symbolizing parsed the binary's line tables (tens of MB): give the memory back.
    backtrace::clear_symbol_cache();
    // SAFETY: malloc_trim only hands free heap pages back to the kernel.
    unsafe { libc::malloc_trim(0) };
}

/// Sets up stall detection on a shard's executor: the preempt timer at half the threshold (so
/// a queue with work returns to the reactor at least that often, and a run longer than the
/// threshold is a task that did not yield for half of it or more) and the handler. `threshold` zero: glommio's defaults, no detection. The shard's thread must also
/// call [`enter_shard`].
pub fn configure(builder: LocalExecutorBuilder, threshold: Duration) -> LocalExecutorBuilder {
    if threshold.is_zero() {
        return builder;
    }
    builder
        .preempt_timer((threshold / 2).min(GLOMMIO_PREEMPT_TIMER))
        .detect_stalls(Some(Box::new(StallHandler { threshold })))
}

/// The text between `start` and the next `end` after it.
fn field<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

/// The task queue and the run's whole duration (budget + overage, measured before glommio
/// symbolized the stack) from glommio 0.9's report: `[stall-detector -- executor 1] task
/// queue default went over-budget: 75.5ms (budget: 25ms). Backtrace: ...`.
fn parse_report(text: &str) -> Option<(&str, Duration)> {
    let queue = field(text, "] task queue ", " went over-budget")?;
    let overage = parse_debug_duration(field(text, "went over-budget: ", " (budget")?)?;
    let budget = parse_debug_duration(field(text, "(budget: ", ")")?)?;
    Some((queue, budget + overage))
}

/// Parses `Duration`'s Debug form: `25ms`, `1.5s`, `730.2µs`, `12ns`.
fn parse_debug_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => value,
        "ms" => value / 1e3,
        "µs" | "us" => value / 1e6,
        "ns" => value / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

/// The stack below the signal handler, innermost first, `symbol (file:line)`, at most `limit`
/// frames, stopping at glommio's run loop (everything below it is the same for every stall).
fn innermost_frames(text: &str, limit: usize) -> Vec<String> {
    // Symbols (inlined ones on lines of their own) each followed by an `at file:line` line,
    // in the backtrace crate's format: `  12: 0x55d0c0ffee00 - name::h0123456789abcdef`.
    let mut frames: Vec<(String, Option<String>)> = Vec::new();
    let trace = text.find("Backtrace:").map_or(text, |i| &text[i..]);
    for line in trace.lines().skip(1) {
        let line = line.trim();
        if let Some(location) = line.strip_prefix("at ") {
            if let Some(last) = frames.last_mut() {
                last.1.get_or_insert_with(|| location.to_string());
            }
            continue;
        }
        let mut symbol = line;
        if let Some((index, rest)) = symbol.split_once(": ") {
            if !index.is_empty() && index.chars().all(|c| c.is_ascii_digit()) {
                symbol = rest.trim();
            }
        }
        if symbol.starts_with("0x") {
            symbol = symbol.split_once(" - ").map_or(symbol, |(_, name)| name);
        }
        if !symbol.is_empty() && symbol != "<unknown>" {
            frames.push((strip_hash(symbol).to_string(), None));
        }
    }
    // The frames up to the signal trampoline (`__restore_rt`, often `<unknown>`) are the
    // signal handler's own; below the task's poll they are glommio's run loop. Release builds
    // name frames without their module path, so the file says whose they are.
    let from = |(symbol, location): &(String, Option<String>), name: &str, file: &str| {
        symbol.contains(name) || location.as_deref().is_some_and(|l| l.contains(file))
    };
    let handler_end = frames
        .iter()
        .rposition(|f| {
            from(f, "signal_hook_registry", "/signal-hook-registry-")
                || f.0.contains("__restore_rt")
        })
        .map_or(0, |i| i + 1);
    // The standard library's frames between a system call and its caller say little.
    let std_internal = |f: &(String, Option<String>)| {
        f.1.as_deref()
            .is_some_and(|l| l.contains("library/std/") || l.contains("library/core/"))
    };
    frames
        .into_iter()
        .skip(handler_end)
        .take_while(|f| {
            !from(f, "glommio::task::", "/src/task/raw.rs")
                && !from(
                    f,
                    "glommio::executor::LocalExecutor",
                    "/src/executor/mod.rs",
                )
        })
        .enumerate()
        .filter(|(i, f)| *i == 0 || !std_internal(f))
        .map(|(_, f)| f)
        .take(limit)
        .map(|(symbol, location)| match location {
            Some(location) => format!("{symbol} ({})", short_location(&location)),
            None => symbol,
        })
        .collect()
}

/// `name::h0123456789abcdef` without the hash.
fn strip_hash(symbol: &str) -> &str {
    match symbol.rsplit_once("::h") {
        Some((name, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            name
        }
        _ => symbol,
    }
}

/// `src/shard/mod.rs:120:9`, `glommio-0.9.0/src/...`, `library/std/src/...`: paths without the
/// build machine's directories.
fn short_location(location: &str) -> &str {
    const REGISTRY: &str = "/.cargo/registry/src/";
    if let Some(i) = location.find(REGISTRY) {
        let rest = &location[i + REGISTRY.len()..];
        // Past the registry index directory: `crate-version/src/...`.
        return rest.split_once('/').map_or(rest, |(_, path)| path);
    }
    if let Some(rest) = location.strip_prefix("/rustc/") {
        return rest.split_once('/').map_or(rest, |(_, path)| path);
    }
    location
        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .map_or(location, |path| path.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Once;

    /// Busy-spins on the thread, never yielding: a stall.
    #[inline(never)]
    fn spin_without_yielding(duration: Duration) {
        let start = Instant::now();
        while start.elapsed() < duration {
            std::hint::spin_loop();
        }
    }

    fn observed(shard: usize) -> Vec<Stall> {
        OBSERVED
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.shard == shard)
            .cloned()
            .collect()
    }

    fn bridge() {
        static ONCE: Once = Once::new();
        ONCE.call_once(install_log_bridge);
    }

    /// A shard's executor as `server` builds it, with a task that spins for 90 ms twice (under
    /// glommio's default preempt timer of 100 ms, which alone would hide it; well above the
    /// threshold, so glommio's helper thread has time to send its signal on a loaded machine).
    /// Both are counted with their shard and a duration of about 90 ms; the first arms
    /// glommio's detector, so the second comes with the spinning function among its frames. A
    /// shorter spin, and a task that sleeps (yields) for as long, are not stalls.
    #[test]
    fn a_task_that_does_not_yield_is_reported_with_its_shard_duration_and_stack() {
        const SHARD: usize = 61;
        let threshold = Duration::from_millis(10);
        bridge();
        let before = crate::metrics::shard_cells(SHARD)
            .stalls
            .load(Ordering::Relaxed);
        configure(
            LocalExecutorBuilder::default().name("stall-test"),
            threshold,
        )
        .spawn(move || async move {
            enter_shard(SHARD, threshold, Duration::from_secs(60));
            let executor = glommio::executor();
            for _ in 0..2 {
                // The run ends when this task yields: measured at the next run's start.
                spin_without_yielding(Duration::from_millis(90));
                executor.yield_task_queue_now().await;
            }
            // Not stalls: under the threshold, and a timer wait (the task yields).
            spin_without_yielding(Duration::from_millis(2));
            executor.yield_task_queue_now().await;
            glommio::timer::sleep(Duration::from_millis(100)).await;
            executor.yield_task_queue_now().await;
        })
        .unwrap()
        .join()
        .unwrap();
        let seen = observed(SHARD);
        assert_eq!(seen.len(), 2, "{seen:#?}");
        for stall in &seen {
            assert_eq!(stall.queue, "default");
            assert!(
                stall.duration >= Duration::from_millis(90)
                    && stall.duration < Duration::from_secs(1),
                "{stall:#?}"
            );
        }
        assert!(seen[0].frames.is_empty(), "nothing armed yet: {seen:#?}");
        assert!(
            seen[1]
                .frames
                .iter()
                .any(|f| f.contains("spin_without_yielding")),
            "the frames show what the shard was doing: {seen:#?}"
        );
        let after = crate::metrics::shard_cells(SHARD)
            .stalls
            .load(Ordering::Relaxed);
        assert_eq!(after - before, 2);
    }

    /// Threshold 0: no detector (and glommio's preempt timer stays).
    #[test]
    fn a_zero_threshold_installs_nothing() {
        const SHARD: usize = 62;
        bridge();
        configure(LocalExecutorBuilder::default(), Duration::ZERO)
            .spawn(|| async move {
                enter_shard(SHARD, Duration::from_millis(25), Duration::from_secs(60));
                spin_without_yielding(Duration::from_millis(150));
                glommio::executor().yield_task_queue_now().await;
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(observed(SHARD).is_empty());
    }

    /// Release builds (line tables only) name frames without their module path.
    #[test]
    fn release_frames_are_cut_by_their_files() {
        let report = "[stall-detector -- executor 1] task queue default went over-budget: \
             1ms (budget: 25ms). Backtrace:    0:     0x5 - trace_unsynchronized<x>
                               at /root/.cargo/registry/src/i/backtrace-0.3.77/src/backtrace/mod.rs:66:14
   1:     0x6 - handler
                               at /root/.cargo/registry/src/i/signal-hook-registry-1.4.8/src/lib.rs:416:13
   2:     0x7 - __GI_fsync
                               at ./misc/../sysdeps/unix/sysv/linux/fsync.c:27:10
                                 write_checkpoint
                               at /elsewhere/src/storage/epoch_cache.rs:324:14
   3:     0x8 - {closure#0}
                               at /root/.cargo/registry/src/i/glommio-0.9.0/src/executor/mod.rs:711:50
   4:     0x9 - run<x>
                               at /root/.cargo/registry/src/i/glommio-0.9.0/src/task/raw.rs:469:20
";
        assert_eq!(
            innermost_frames(report, 10),
            vec![
                "__GI_fsync (./misc/../sysdeps/unix/sysv/linux/fsync.c:27:10)".to_string(),
                "write_checkpoint (/elsewhere/src/storage/epoch_cache.rs:324:14)".to_string(),
            ]
        );
    }

    #[test]
    fn glommio_reports_are_read() {
        assert_eq!(
            parse_debug_duration("25ms"),
            Some(Duration::from_millis(25))
        );
        assert_eq!(
            parse_debug_duration("1.5s"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_debug_duration("730µs"),
            Some(Duration::from_micros(730))
        );
        assert_eq!(parse_debug_duration("12 parsecs"), None);
        let report = "[stall-detector -- executor 3] task queue default went over-budget: \
             75.5ms (budget: 25ms). Backtrace: stack backtrace:
   0:     0x55d0c0ffee00 - backtrace::backtrace::trace::h0123456789abcdef
                               at /root/.cargo/registry/src/x/backtrace-0.3.77/src/lib.rs:1:1
                                 glommio::executor::stall::StallDetector::install_handler::{{closure}}::h0123456789abcdef
   1:     0x55d0c0ffee01 - signal_hook_registry::handler::h0123456789abcdef
   2:     0x55d0c0ffee01 - <unknown>
   3:     0x55d0c0ffee02 - std::sys::fs::fsync::h0123456789abcdef
                               at /rustc/abc/library/std/src/sys/fs.rs:9:5
                                 broker::storage::epoch_cache::write_checkpoint::h0123456789abcdef
                               at /elsewhere/src/storage/epoch_cache.rs:324:9
   4:     0x55d0c0ffee03 - broker::shard::Shard::apply_metadata::h0123456789abcdef
   5:     0x55d0c0ffee04 - glommio::executor::LocalExecutorBuilder::spawn::{{closure}}::h0123456789abcdef
   6:     0x55d0c0ffee04 - glommio::task::raw::RawTask<F,R,S>::run::h0123456789abcdef
   7:     0x55d0c0ffee05 - main
";
        assert_eq!(
            parse_report(report),
            Some(("default", Duration::from_micros(100_500)))
        );
        assert_eq!(
            innermost_frames(report, 10),
            vec![
                "std::sys::fs::fsync (library/std/src/sys/fs.rs:9:5)".to_string(),
                "broker::storage::epoch_cache::write_checkpoint (/elsewhere/src/storage/epoch_cache.rs:324:9)"
                    .to_string(),
                "broker::shard::Shard::apply_metadata".to_string(),
            ]
        );
    }
}
