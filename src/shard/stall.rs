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
//! `broker_shard_stall_seconds`) and logged, at most once per [`LOG_INTERVAL`] per shard. Every
//! run's length goes to `broker_shard_task_queue_run_seconds` too: how late a shard submits the
//! I/O its tasks queue and notices what completed. That costs a thread-local access and a
//! histogram update (relaxed atomic adds) per run, and no system call.
//!
//! What the shard was doing: after a stall, the stack of the next run that lasts longer than
//! the threshold (armed for [`ARMED_FOR`], at most once per `shard.stall.stack.interval.ms`,
//! 60 s; 0: never) is taken by a signal while that run goes on and symbolized on a watchdog
//! thread, never on the shard ([`super::stall_stack`]: glommio's own detector symbolizes on the
//! shard, which held it 0.1-0.4 s per stack).
//!
//! A queue with work yields to the reactor at its preempt timer, which [`configure`] sets to
//! half the threshold (glommio's default is 100 ms): a run longer than the threshold is a task
//! that did not yield, not a busy queue. A stall is known only once it ends: a shard stuck forever reports
//! nothing, and the first stall of an episode is reported without a stack.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, StallDetectionHandler, TaskQueueHandle};

use super::stall_stack;

/// glommio's default preempt timer: how long a task queue with work runs before the executor
/// polls for I/O again.
pub const GLOMMIO_PREEMPT_TIMER: Duration = Duration::from_millis(100);

/// At most one warning (and one stack) per shard per interval; the stalls in between are
/// counted in the next warning, and every one in the metrics.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// After a stall, the stack watchdog stays armed this long to catch the next one's stack.
pub const ARMED_FOR: Duration = Duration::from_secs(60);

/// Frames logged with a stall: enough to see the caller chain of the blocking call.
pub(crate) const FRAMES_LOGGED: usize = 12;

/// Task-queue runs at least this long are remembered (the last [`RECENT_RUNS`]), for the
/// slow-request log to say which of them fell inside a slow request's life.
const REMEMBERED_RUN: Duration = Duration::from_millis(1);
const RECENT_RUNS: usize = 32;

/// A task-queue run of [`REMEMBERED_RUN`] or more.
#[derive(Debug, Clone, Copy)]
struct LongRun {
    /// When the run ended (noticed at the start of the next one: within a reactor poll).
    ended: Instant,
    ran: Duration,
    queue: usize,
}

/// One stall as reported.
#[derive(Debug, Clone)]
pub struct Stall {
    pub shard: usize,
    /// The task queue that ran (`default`, `coordination`, `admin`; `#N` when only its index is
    /// known).
    pub queue: String,
    /// How long the task-queue run lasted: how long the event loop did not come back.
    pub duration: Duration,
}

/// The [`StallDetectionHandler`] of one shard's executor. glommio calls it on the shard's
/// thread; its state lives in that thread's [`ThisShard`].
#[derive(Debug)]
pub struct StallHandler;

impl StallDetectionHandler for StallHandler {
    /// At the start of each task-queue run: measures the previous run and tells the stack
    /// watchdog a run started. glommio's own detector is never armed (`None`): it would
    /// symbolize its stack on the shard.
    fn threshold(
        &self,
        queue: TaskQueueHandle,
        _max_expected_runtime: Duration,
    ) -> Option<Duration> {
        THIS_SHARD.with(|this| {
            if let Some(this) = this.borrow_mut().as_mut() {
                this.run_starts(queue);
            }
        });
        None
    }
}

/// Stall bookkeeping of the shard running on this thread.
#[derive(Debug)]
struct ThisShard {
    id: usize,
    threshold: Duration,
    /// The queue of the run in progress (the run measured at the next call).
    queue: Option<TaskQueueHandle>,
    /// At most one stack per this interval (zero: never, and the watchdog does not know the
    /// shard).
    stack_interval: Duration,
    /// When the watchdog was last asked for a stack.
    last_armed: Option<Instant>,
    last_logged: Option<Instant>,
    /// Stalls since the last warning and the longest of them.
    unlogged: u64,
    unlogged_max: Duration,
    /// The time spent running tasks since the shard started (up to the last run measured).
    busy: Duration,
    /// The last runs of [`REMEMBERED_RUN`] or more, oldest first.
    recent_long_runs: std::collections::VecDeque<LongRun>,
}

thread_local! {
    static THIS_SHARD: RefCell<Option<ThisShard>> = const { RefCell::new(None) };
}

#[cfg(test)]
static OBSERVED: std::sync::Mutex<Vec<Stall>> = std::sync::Mutex::new(Vec::new());

impl ThisShard {
    /// A run starts: measures the one before (glommio's executor runtime since the last call
    /// is exactly its length).
    fn run_starts(&mut self, queue: TaskQueueHandle) {
        // The new run is recorded before a stall arms the watchdog: woken by the arming, it
        // must not see the stalled run as still going and take this hook's stack for it.
        if !self.stack_interval.is_zero() {
            stall_stack::run_starts(self.id, queue.index());
        }
        let previous = self.queue.replace(queue);
        let ran = glommio::executor().executor_stats().executor_runtime();
        crate::metrics::DETAIL.task_queue_run.observe(ran);
        self.busy += ran;
        // No previous queue: the run that called `enter_shard`, the shard's main task, on the
        // default queue.
        let previous = previous.unwrap_or_default();
        if ran >= REMEMBERED_RUN {
            if self.recent_long_runs.len() == RECENT_RUNS {
                self.recent_long_runs.pop_front();
            }
            self.recent_long_runs.push_back(LongRun {
                ended: Instant::now(),
                ran,
                queue: previous.index(),
            });
        }
        if ran > self.threshold {
            self.stalled(stall_stack::queue_name(self.id, previous.index()), ran);
        }
    }

    /// Counts and logs a stall, and asks the watchdog for the next one's stack if one is due.
    fn stalled(&mut self, queue: String, duration: Duration) {
        crate::metrics::shard_cells(self.id)
            .stalls
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::DETAIL.stall_duration.observe(duration);
        let stall = Stall {
            shard: self.id,
            queue,
            duration,
        };
        #[cfg(test)]
        OBSERVED.lock().unwrap().push(stall.clone());
        let now = Instant::now();
        let stack_due = !self.stack_interval.is_zero()
            && self
                .last_armed
                .is_none_or(|last| now.duration_since(last) >= self.stack_interval);
        if stack_due && !stall_stack::is_armed(self.id) {
            stall_stack::arm(self.id, ARMED_FOR);
            self.last_armed = Some(now);
        }
        let quiet = self
            .last_logged
            .is_some_and(|last| now.duration_since(last) < LOG_INTERVAL);
        if quiet {
            self.unlogged += 1;
            self.unlogged_max = self.unlogged_max.max(duration);
            return;
        }
        let (unlogged, unlogged_max) = (self.unlogged, self.unlogged_max);
        self.last_logged = Some(now);
        self.unlogged = 0;
        self.unlogged_max = Duration::ZERO;
        let stack = if stall_stack::is_armed(self.id) {
            "the next stall's is logged as it happens"
        } else if self.stack_interval.is_zero() {
            "none (shard.stall.stack.interval.ms=0)"
        } else {
            "at most one per shard.stall.stack.interval.ms"
        };
        tracing::warn!(
            shard = stall.shard,
            stalled_ms = format!("{:.1}", duration.as_secs_f64() * 1e3),
            threshold_ms = self.threshold.as_millis() as u64,
            queue = %stall.queue,
            unlogged_since_last_warning = unlogged,
            unlogged_max_ms = format!("{:.1}", unlogged_max.as_secs_f64() * 1e3),
            stack,
            "shard stalled: its event loop did not come back within the threshold"
        );
    }
}

/// Names a task queue created on this shard, for stall reports (glommio tells a handler only
/// the queue's index). Call after [`enter_shard`].
pub fn name_queue(queue: TaskQueueHandle, name: &'static str) {
    if let Some(shard) = THIS_SHARD.with(|this| this.borrow().as_ref().map(|t| t.id)) {
        stall_stack::name_queue(shard, queue.index(), name);
    }
}

/// How long this shard has run tasks since it started, up to the end of the last task-queue
/// run measured (zero on a thread that is not a shard, or without stall detection). The
/// difference between two readings over the wall time between them is how busy the shard was.
pub fn busy_time() -> Duration {
    THIS_SHARD.with(|this| this.borrow().as_ref().map_or(Duration::ZERO, |t| t.busy))
}

/// This shard's task-queue runs of a millisecond or more that ended after `since` (of the last
/// 32), oldest first: how long each ran and in which queue.
pub fn long_runs_since(since: Instant) -> Vec<(Duration, String)> {
    THIS_SHARD.with(|this| {
        let this = this.borrow();
        let Some(this) = this.as_ref() else {
            return Vec::new();
        };
        this.recent_long_runs
            .iter()
            .filter(|run| run.ended > since)
            .map(|run| (run.ran, stall_stack::queue_name(this.id, run.queue)))
            .collect()
    })
}

/// Makes this thread's stalls count for shard `id` (called first thing on each shard's
/// executor), with a stack at most once per `stack_interval` (zero: none). Without it the
/// handler measures nothing. Keep the guard as long as the shard runs: dropping it (the thread
/// ending) stops the stack watchdog from signalling the thread.
#[must_use = "the shard is unregistered when the guard drops"]
pub fn enter_shard(id: usize, threshold: Duration, stack_interval: Duration) -> ShardGuard {
    // Threshold zero: `configure` installed no handler, so nothing measures runs.
    let stack_interval = if threshold.is_zero() {
        Duration::ZERO
    } else {
        stack_interval
    };
    THIS_SHARD.with(|this| {
        *this.borrow_mut() = Some(ThisShard {
            id,
            threshold,
            queue: None,
            stack_interval,
            last_armed: None,
            last_logged: None,
            unlogged: 0,
            unlogged_max: Duration::ZERO,
            busy: Duration::ZERO,
            recent_long_runs: std::collections::VecDeque::with_capacity(RECENT_RUNS),
        })
    });
    stall_stack::forget_queue_names(id);
    if !stack_interval.is_zero() {
        stall_stack::enter_shard(id, threshold);
    }
    // The runtime so far (start-up) is not a run to measure.
    let _ = glommio::executor().executor_stats();
    ShardGuard { id }
}

/// See [`enter_shard`].
#[derive(Debug)]
pub struct ShardGuard {
    id: usize,
}

impl Drop for ShardGuard {
    fn drop(&mut self) {
        stall_stack::leave_shard(self.id);
        THIS_SHARD.with(|this| this.borrow_mut().take());
    }
}

/// Routes `log` records (glommio's and other crates') to `tracing`, as `tracing_subscriber`'s
/// `init` would have. Call once, after the `tracing` subscriber is set; later calls do nothing.
pub fn install_log_bridge() {
    let max_level = match tracing::level_filters::LevelFilter::current().into_level() {
        None => log::LevelFilter::Off,
        Some(tracing::Level::ERROR) => log::LevelFilter::Error,
        Some(tracing::Level::WARN) => log::LevelFilter::Warn,
        Some(tracing::Level::INFO) => log::LevelFilter::Info,
        Some(tracing::Level::DEBUG) => log::LevelFilter::Debug,
        Some(tracing::Level::TRACE) => log::LevelFilter::Trace,
    };
    let _ = tracing_log::LogTracer::builder()
        .with_max_level(max_level)
        .init();
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
        .detect_stalls(Some(Box::new(StallHandler)))
}

/// The stalled code's frames out of a signal-time stack (`(symbol, file:line)`, innermost
/// first): without the signal handler's own frames above it and glommio's run loop below it
/// (the same for every stall), and without the standard library's frames between a system call
/// and its caller; at most `limit`, as `symbol (file:line)`.
pub(crate) fn cut_frames(frames: Vec<(String, Option<String>)>, limit: usize) -> Vec<String> {
    // Release builds name frames without their module path, so the file says whose they are.
    let from = |(symbol, location): &(String, Option<String>), name: &str, file: &str| {
        symbol.contains(name) || location.as_deref().is_some_and(|l| l.contains(file))
    };
    let handler_end = frames
        .iter()
        .rposition(|f| {
            from(f, "stall_stack::on_signal", "/src/shard/stall_stack.rs")
                || from(f, "__restore_rt", "sigaction.c")
        })
        .map_or(0, |i| i + 1);
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

    /// Busy-spins on the thread, never yielding: a stall.
    #[inline(never)]
    fn spin_without_yielding(duration: Duration) {
        let start = Instant::now();
        while start.elapsed() < duration {
            std::hint::spin_loop();
        }
    }

    /// The entries of `shard` in one of the test logs.
    fn of_shard<T: Clone>(
        log: &std::sync::Mutex<Vec<T>>,
        shard: usize,
        shard_of: fn(&T) -> usize,
    ) -> Vec<T> {
        log.lock()
            .unwrap()
            .iter()
            .filter(|s| shard_of(s) == shard)
            .cloned()
            .collect()
    }

    fn observed(shard: usize) -> Vec<Stall> {
        of_shard(&OBSERVED, shard, |s| s.shard)
    }

    fn stacks(shard: usize) -> Vec<stall_stack::StallStack> {
        of_shard(&stall_stack::OBSERVED, shard, |s| s.shard)
    }

    /// Held by each test that waits for a stack: the one watchdog serves the whole process, and
    /// while it symbolizes one test's stack (seconds in a debug build) another test's stall of
    /// fixed length passes unseen.
    static WATCHDOG_USERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn watchdog_to_ourselves() -> std::sync::MutexGuard<'static, ()> {
        WATCHDOG_USERS.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first stack the watchdog reported for `shard`, waited for (it symbolizes on its own
    /// thread, after the signal) up to a minute.
    fn first_reported_stack(shard: usize) -> stall_stack::StallStack {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(stack) = stacks(shard).into_iter().next() {
                return stack;
            }
            assert!(Instant::now() < deadline, "no stack reported");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A shard's executor as `server` builds it, with a task that spins for 90 ms twice (under
    /// glommio's default preempt timer of 100 ms, which alone would hide it; well above the
    /// threshold), the second time until the watchdog has logged a stack. Both are counted with
    /// their shard and a duration of at least 90 ms; the first arms the watchdog, so the
    /// second's stack, with the spinning function among its frames, is logged by the watchdog.
    /// A shorter spin, and a task that sleeps (yields) for as long, are not stalls.
    #[test]
    fn a_task_that_does_not_yield_is_reported_with_its_shard_duration_and_stack() {
        let _watchdog = watchdog_to_ourselves();
        const SHARD: usize = 61;
        let threshold = Duration::from_millis(10);
        let before = crate::metrics::shard_cells(SHARD)
            .stalls
            .load(Ordering::Relaxed);
        configure(
            LocalExecutorBuilder::default().name("stall-test"),
            threshold,
        )
        .spawn(move || async move {
            let _shard = enter_shard(SHARD, threshold, Duration::from_secs(60));
            let executor = glommio::executor();
            // The run ends when this task yields: measured at the next run's start.
            spin_without_yielding(Duration::from_millis(90));
            executor.yield_task_queue_now().await;
            // The second lasts at least as long, and until the watchdog has logged its stack:
            // on a loaded machine the watchdog's thread may not run within a fixed 90 ms.
            let deadline = Instant::now() + Duration::from_secs(60);
            spin_without_yielding(Duration::from_millis(90));
            while stacks(SHARD).is_empty() && Instant::now() < deadline {
                spin_without_yielding(Duration::from_millis(20));
            }
            executor.yield_task_queue_now().await;
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
            assert!(stall.duration >= Duration::from_millis(90), "{stall:#?}");
        }
        assert!(seen[0].duration < Duration::from_secs(1), "{seen:#?}");
        let after = crate::metrics::shard_cells(SHARD)
            .stalls
            .load(Ordering::Relaxed);
        assert_eq!(after - before, 2);
        let stack = &first_reported_stack(SHARD);
        assert_eq!(stack.queue, "default");
        assert!(stack.stalled_for > threshold, "{stack:#?}");
        assert!(
            stack
                .frames
                .iter()
                .any(|f| f.contains("spin_without_yielding")),
            "the frames show what the shard was doing: {stack:#?}"
        );
        assert_eq!(stacks(SHARD).len(), 1, "one stack per arming");
    }

    /// A shard that has nothing to do between two runs sleeps in the reactor; that wait is no
    /// stall, and its stack (the reactor's sleep) is not the one logged. After a stall arms the
    /// watchdog, the shard idles on a timer for ten thresholds, then stalls again until a stack
    /// is logged: it is the second stall's.
    #[test]
    fn a_shard_waiting_for_events_is_not_taken_for_a_stall() {
        let _watchdog = watchdog_to_ourselves();
        const SHARD: usize = 60;
        let threshold = Duration::from_millis(10);
        configure(
            LocalExecutorBuilder::default().name("stall-park-test"),
            threshold,
        )
        .spawn(move || async move {
            let _shard = enter_shard(SHARD, threshold, Duration::from_secs(60));
            let executor = glommio::executor();
            // glommio's first park in the process sets up its memory barrier (a `membarrier`
            // registration, over 10 ms on a busy machine): reactor work, not an idle wait, so
            // it would be reported. Done here, before the watchdog is armed.
            glommio::timer::sleep(Duration::from_millis(1)).await;
            spin_without_yielding(Duration::from_millis(90));
            executor.yield_task_queue_now().await;
            glommio::timer::sleep(threshold * 10).await;
            // The second stall lasts until a stack is reported: the one watchdog serves every
            // shard of the process (here: every test's), and may be symbolizing another's
            // stack for seconds (a debug build) while a fixed-length stall passes unseen.
            let deadline = Instant::now() + Duration::from_secs(60);
            while stacks(SHARD).is_empty() && Instant::now() < deadline {
                spin_without_yielding(Duration::from_millis(20));
            }
            executor.yield_task_queue_now().await;
        })
        .unwrap()
        .join()
        .unwrap();
        let stack = &first_reported_stack(SHARD);
        assert!(
            stack
                .frames
                .iter()
                .any(|f| f.contains("spin_without_yielding")),
            "the stack is the stall's, not the reactor's sleep: {stack:#?}"
        );
    }

    /// Threshold 0: no detector (and glommio's preempt timer stays).
    #[test]
    fn long_runs_and_busy_time_are_kept_for_the_slow_request_log() {
        const SHARD: usize = 63;
        // High: nothing here is a stall, and no stack is wanted.
        let threshold = Duration::from_secs(10);
        configure(
            LocalExecutorBuilder::default().name("long-run-test"),
            threshold,
        )
        .spawn(move || async move {
            let _shard = enter_shard(SHARD, threshold, Duration::ZERO);
            let executor = glommio::executor();
            let start = Instant::now();
            let busy_at_start = busy_time();
            spin_without_yielding(Duration::from_millis(30));
            executor.yield_task_queue_now().await;
            let after_first = Instant::now();
            spin_without_yielding(Duration::from_millis(5));
            executor.yield_task_queue_now().await;
            let runs = long_runs_since(start);
            assert_eq!(runs.len(), 2, "{runs:?}");
            assert!(runs[0].0 >= Duration::from_millis(30), "{runs:?}");
            assert!(runs[1].0 >= Duration::from_millis(5), "{runs:?}");
            assert!(runs.iter().all(|(_, queue)| queue == "default"), "{runs:?}");
            assert_eq!(long_runs_since(after_first).len(), 1, "only the later run");
            assert!(busy_time() - busy_at_start >= Duration::from_millis(35));
            // Only the last 32 are kept.
            for _ in 0..40 {
                spin_without_yielding(Duration::from_millis(1));
                executor.yield_task_queue_now().await;
            }
            assert_eq!(long_runs_since(start).len(), RECENT_RUNS);
        })
        .unwrap()
        .join()
        .unwrap();
        assert!(
            observed(SHARD).is_empty(),
            "no stall under a 10 s threshold"
        );
        assert_eq!(busy_time(), Duration::ZERO, "not a shard's thread");
    }

    #[test]
    fn a_zero_threshold_installs_nothing() {
        const SHARD: usize = 62;
        configure(LocalExecutorBuilder::default(), Duration::ZERO)
            .spawn(|| async move {
                let _shard = enter_shard(SHARD, Duration::from_millis(25), Duration::from_secs(60));
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
    fn frames_are_cut_at_the_handler_and_the_run_loop() {
        let frame = |symbol: &str, location: &str| (symbol.to_string(), Some(location.to_string()));
        let frames = vec![
            frame(
                "trace_unsynchronized<x>",
                "/root/.cargo/registry/src/i/backtrace-0.3.77/src/backtrace/mod.rs:66:14",
            ),
            frame("on_signal", "/work/main/src/shard/stall_stack.rs:200:13"),
            ("__restore_rt".to_string(), None),
            frame(
                "__GI_fsync",
                "./misc/../sysdeps/unix/sysv/linux/fsync.c:27:10",
            ),
            frame(
                "std::sys::fs::fsync",
                "/rustc/abc/library/std/src/sys/fs.rs:9:5",
            ),
            frame(
                "write_checkpoint",
                "/elsewhere/src/storage/epoch_cache.rs:324:14",
            ),
            ("broker::shard::Shard::apply_metadata".to_string(), None),
            frame(
                "{closure#0}",
                "/root/.cargo/registry/src/i/glommio-0.9.0/src/executor/mod.rs:711:50",
            ),
            frame(
                "run<x>",
                "/root/.cargo/registry/src/i/glommio-0.9.0/src/task/raw.rs:469:20",
            ),
            ("main".to_string(), None),
        ];
        assert_eq!(
            cut_frames(frames.clone(), 10),
            vec![
                "__GI_fsync (./misc/../sysdeps/unix/sysv/linux/fsync.c:27:10)".to_string(),
                "write_checkpoint (/elsewhere/src/storage/epoch_cache.rs:324:14)".to_string(),
                "broker::shard::Shard::apply_metadata".to_string(),
            ]
        );
        assert_eq!(cut_frames(frames, 1).len(), 1);
    }
}
