//! Sub-millisecond sleeps for the open-loop scheduler.
//!
//! tokio's timer wheel has a 1 ms tick, so `sleep_until` wakes up to a millisecond late; in an
//! open-loop run every record due during that time would carry the delay in its latency. A
//! timerfd has nanosecond resolution and is awaited through the reactor like a socket, so a
//! wake-up is late only by the scheduling latency of the machine (tens of microseconds).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub struct PreciseTimer {
    fd: AsyncFd<OwnedFd>,
}

impl PreciseTimer {
    pub fn new() -> io::Result<PreciseTimer> {
        // SAFETY: plain syscall; the returned descriptor is owned by the OwnedFd below.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `owned` is a valid open descriptor that the AsyncFd owns until dropped.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(PreciseTimer { fd })
    }

    /// A timer that fires every `period` from now on; see [`PreciseTimer::expirations`].
    pub fn periodic(period: std::time::Duration) -> io::Result<PreciseTimer> {
        let t = PreciseTimer::new()?;
        let ts = libc::timespec {
            tv_sec: period.as_secs() as libc::time_t,
            tv_nsec: period.subsec_nanos().max(1) as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: ts,
            it_value: ts,
        };
        // SAFETY: valid descriptor and pointers to initialized structs for the call's duration.
        let rc = unsafe { libc::timerfd_settime(t.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(t)
    }

    /// Waits for a periodic timer to fire; returns how many periods elapsed since the last call
    /// (more than one when this task ran late).
    pub async fn expirations(&mut self) -> io::Result<u64> {
        self.read_expirations().await
    }

    /// Sleeps until `deadline` (returns at once if it has passed).
    pub async fn sleep_until(&mut self, deadline: Instant) -> io::Result<()> {
        let now = Instant::now();
        if deadline <= now {
            return Ok(());
        }
        let d = deadline - now;
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos().max(1) as libc::c_long,
            },
        };
        // SAFETY: valid descriptor and pointers to initialized structs for the call's duration.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.read_expirations().await.map(|_| ())
    }

    async fn read_expirations(&mut self) -> io::Result<u64> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reading 8 bytes into an 8-byte buffer from a valid descriptor.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    expirations.as_mut_ptr().cast(),
                    expirations.len(),
                )
            };
            if n == 8 {
                return Ok(u64::from_ne_bytes(expirations));
            }
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_close_to_the_deadline() {
        let mut t = PreciseTimer::new().unwrap();
        for _ in 0..5 {
            let deadline = Instant::now() + Duration::from_micros(300);
            t.sleep_until(deadline).await.unwrap();
            let now = Instant::now();
            assert!(now >= deadline, "woke before the deadline");
            // Only a hang detector: lateness is measured by the benchmarks, never asserted on a
            // shared machine (this failed at 50 ms under a load average of 10).
            assert!(now - deadline < Duration::from_secs(5));
        }
        // A past deadline returns immediately.
        t.sleep_until(Instant::now() - Duration::from_millis(1))
            .await
            .unwrap();
    }
}
