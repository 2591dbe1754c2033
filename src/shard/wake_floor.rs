//! A floor under how often a shard's event loop wakes: at least every [`WAKE_FLOOR`], even with
//! nothing to do.
//!
//! Why: a sleeping glommio executor learns of work another thread gave it (a message on the
//! shard mesh, a blocking-pool result, a waker called from another thread) through its
//! eventfd, and checks for that work on every pass of its loop. In this project's test suite
//! (session 33) a shard four times slept for minutes with cross-shard work queued for it and
//! no timer waking it, while the other shard waited on it: a broker that accepted a topic and
//! never created its partitions (2 runs in 27 of the `console` test binary). Twice, writing 1
//! to the sleeping shard's eventfd from outside (through `pidfd_getfd`: no signal, no ptrace)
//! released it at once (once, attaching a debugger did): the notification had been lost, not
//! the work. With this floor, 103 runs in a row passed in 6-9 s. A timer that is always
//! pending bounds such a loss to one interval, whatever its cause (not found yet; glommio
//! 0.9's wake path).
//!
//! Cost: one pass of the event loop per interval on an idle shard (an idle shard already wakes
//! for other timers 30-80 times a second), nothing on a busy one.

use std::time::Duration;

/// The longest a shard sleeps without looking for work given to it from another thread.
pub const WAKE_FLOOR: Duration = Duration::from_millis(50);

/// Starts the floor on this shard's executor, for as long as the executor runs. Call first
/// thing on each shard, before it waits on anything another thread must wake it for.
pub fn start() {
    glommio::spawn_local(async {
        loop {
            glommio::timer::sleep(WAKE_FLOOR).await;
        }
    })
    .detach();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An executor with nothing else to do still runs a pass of its loop every interval: over
    /// 20 intervals, at least 10 (the floor's task each time), where without the floor it
    /// sleeps through them in one timer wait.
    #[test]
    fn an_idle_shard_wakes_every_interval() {
        crate::storage::testutil::run(|| async {
            start();
            let before = glommio::executor().executor_stats().tasks_executed();
            glommio::timer::sleep(WAKE_FLOOR * 20).await;
            let passes = glommio::executor().executor_stats().tasks_executed() - before;
            assert!(passes >= 10, "{passes} task runs in 20 intervals");
        });
    }
}
