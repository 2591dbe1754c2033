//! Receive timestamps: when the kernel took in the bytes a read returns, so that the time a
//! request waited in its socket before its shard read it can be measured
//! (`broker_request_socket_wait_seconds`, like Kafka's RequestQueueTimeMs for a broker whose
//! network thread is its request handler).
//!
//! A shard reads its sockets only between task-queue runs. A request that arrives while the
//! shard is busy waits in the kernel, and neither the Produce or Fetch latency (which start
//! when the frame is read) nor the stall detector (which sees only single runs over its
//! threshold) counts that wait: a shard saturated for half a second by many short runs shows
//! only here (docs/benchmarks.md, "What fills the shard in a spike").
//!
//! The kernel stamps each received packet in software (`SO_TIMESTAMPING` with
//! `SOF_TIMESTAMPING_RX_SOFTWARE`), and `recvmsg` returns the stamp of the last packet it
//! copied. The cost is a `recvmsg` with a 64-byte control buffer where a `recv` was, one
//! `clock_gettime` (vDSO) per request, and the kernel reading the clock for every packet it
//! receives while any socket asks for stamps. The kernel turns stamping on a moment after the
//! first socket asks (from a work queue), so the first packets of the first connection may
//! come without a stamp: those requests are not measured.

use std::os::fd::RawFd;
use std::time::Duration;

/// The kernel's receive time of the last bytes read, nanoseconds since the Unix epoch
/// (`CLOCK_REALTIME`, the clock the kernel stamps with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedAt(i64);

impl ReceivedAt {
    /// How long ago, by the same clock; zero if the clock was stepped back since.
    pub fn elapsed(self) -> Duration {
        Duration::from_nanos(realtime_ns().saturating_sub(self.0).max(0) as u64)
    }
}

fn realtime_ns() -> i64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we pass; CLOCK_REALTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
    now.tv_sec * 1_000_000_000 + now.tv_nsec
}

/// Asks the kernel to stamp what `fd` receives. If it refuses, reads return no stamp and
/// nothing else changes.
pub fn enable(fd: RawFd) -> std::io::Result<()> {
    let flags = libc::SOF_TIMESTAMPING_RX_SOFTWARE | libc::SOF_TIMESTAMPING_SOFTWARE;
    super::set_socket_option(fd, libc::SO_TIMESTAMPING, flags as libc::c_int)
}

/// Control-message room for one `SCM_TIMESTAMPING` (three timespecs) and its header, in `u64`s
/// so that it is aligned for `cmsghdr`.
const CONTROL_WORDS: usize = 8;

/// `recv(fd, buf, len, MSG_DONTWAIT)` that also returns the receive stamp of the last bytes it
/// read, when the socket has stamping on.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub unsafe fn recv(fd: RawFd, buf: *mut u8, len: usize) -> (isize, Option<ReceivedAt>) {
    let mut iov = libc::iovec {
        iov_base: buf.cast(),
        iov_len: len,
    };
    let mut control = [0u64; CONTROL_WORDS];
    // SAFETY: an all-zero msghdr is valid (no name, no iovecs); the fields set below point to
    // memory that outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: the iovec covers `len` writable bytes (the caller's promise), the control buffer
    // is ours.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n <= 0 {
        return (n, None);
    }
    let mut stamp = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled, within
    // `msg_controllen`; a timestamping message carries three timespecs, the first the
    // software stamp.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SO_TIMESTAMPING
            {
                let software =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                if software.tv_sec != 0 || software.tv_nsec != 0 {
                    stamp = Some(ReceivedAt(
                        software.tv_sec * 1_000_000_000 + software.tv_nsec,
                    ));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    (n, stamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    /// A byte sent to a stamping socket and read 50 ms later carries a stamp at least 50 ms
    /// old; a socket without stamping returns none.
    #[test]
    fn a_read_says_when_its_bytes_arrived() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stamped, _) = listener.accept().unwrap();
        let mut plain_client =
            std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (plain, _) = listener.accept().unwrap();
        enable(stamped.as_raw_fd()).expect("stamping");
        // Until the kernel has turned stamping on (from a work queue: see the module's doc).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            client.write_all(b"w").unwrap();
            if read_when_queued(stamped.as_raw_fd()).is_some() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the kernel never stamped a packet"
            );
        }

        client.write_all(b"x").unwrap();
        plain_client.write_all(b"y").unwrap();
        // The wait being measured: the bytes sit in the kernel meanwhile.
        std::thread::sleep(Duration::from_millis(50));
        let stamp = read_when_queued(stamped.as_raw_fd()).expect("a stamp");
        let waited = stamp.elapsed();
        assert!(
            waited >= Duration::from_millis(50) && waited < Duration::from_secs(30),
            "waited {waited:?}"
        );
        assert_eq!(read_when_queued(plain.as_raw_fd()), None);
    }

    /// Reads one byte from `fd` once it is queued and returns its stamp.
    fn read_when_queued(fd: RawFd) -> Option<ReceivedAt> {
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        assert_eq!(
            unsafe { libc::poll(&mut poll, 1, 10_000) },
            1,
            "nothing to read"
        );
        let mut byte = 0u8;
        // SAFETY: one writable byte.
        let (n, stamp) = unsafe { recv(fd, &mut byte, 1) };
        assert_eq!(n, 1, "{}", std::io::Error::last_os_error());
        stamp
    }
}
