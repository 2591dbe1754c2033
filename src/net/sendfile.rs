//! Sending a segment file range to a socket without copying it through user space.
//!
//! glommio's sockets have no sendfile, so this calls sendfile(2) on the socket's fd, which is
//! non-blocking. When the socket buffer is full (EAGAIN), one chunk is copied through glommio's
//! write path instead: that write waits for the socket to drain without blocking the core, and
//! sendfile takes over again. The counters show how many bytes went each way.
//!
//! Records served from memory (the tail cache) arrive as many small chunks (a 16-byte head and
//! the producer's bytes per batch); [`send_mem`] writes a run of them with one writev(2) per
//! up to [`MAX_IOVECS`] chunks instead of one write per chunk, with the same EAGAIN fallback.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use bytes::Bytes;

use crate::metrics::BrokerStats;
use crate::storage::ReadSlice;

/// Bytes copied through user space each time the socket pushes back.
const FALLBACK_CHUNK_BYTES: usize = 64 * 1024;

/// Chunks per writev call (well below IOV_MAX, 1024 on Linux).
pub const MAX_IOVECS: usize = 256;

/// Writes `chunks` in order with writev on the socket's (non-blocking) fd. On EAGAIN the rest
/// of the current chunk goes through glommio's write, which waits for the socket without
/// blocking the core, and writev takes over again.
pub async fn send_mem(stream: &mut TcpStream, chunks: &[Bytes]) -> io::Result<()> {
    let socket = stream.as_raw_fd();
    let mut index = 0;
    // Bytes of `chunks[index]` already sent.
    let mut skip = 0;
    while index < chunks.len() {
        let iovecs: Vec<libc::iovec> = chunks[index..]
            .iter()
            .take(MAX_IOVECS)
            .enumerate()
            .map(|(i, c)| {
                let c = if i == 0 { &c[skip..] } else { &c[..] };
                libc::iovec {
                    iov_base: c.as_ptr() as *mut libc::c_void,
                    iov_len: c.len(),
                }
            })
            .collect();
        // SAFETY: every iovec points into a live `Bytes` of `chunks`, borrowed for the call.
        let sent = unsafe { libc::writev(socket, iovecs.as_ptr(), iovecs.len() as libc::c_int) };
        if sent >= 0 {
            let mut sent = sent as usize;
            while index < chunks.len() && sent >= chunks[index].len() - skip {
                sent -= chunks[index].len() - skip;
                index += 1;
                skip = 0;
            }
            skip += sent;
            continue;
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                stream.write_all(&chunks[index][skip..]).await?;
                index += 1;
                skip = 0;
            }
            _ => return Err(error),
        }
    }
    Ok(())
}

/// Sets O_NONBLOCK on a socket. glommio itself uses MSG_DONTWAIT and readiness polling, so
/// this changes nothing for its own reads and writes; it makes sendfile return EAGAIN instead
/// of blocking the core.
pub fn set_nonblocking(fd: i32) -> io::Result<()> {
    // SAFETY: plain fcntl on an fd we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub async fn send_slice(
    stream: &mut TcpStream,
    slice: &ReadSlice,
    stats: &BrokerStats,
) -> io::Result<()> {
    let socket = stream.as_raw_fd();
    let file = slice.file.as_raw_fd();
    let mut offset = slice.position as libc::off_t;
    let end = offset + slice.len as libc::off_t;
    let mut zero_copy = 0u64;
    let mut copied = 0u64;
    let result = loop {
        if offset >= end {
            break Ok(());
        }
        // SAFETY: both fds are open for the duration of the call; offset is a valid pointer.
        let sent = unsafe { libc::sendfile(socket, file, &mut offset, (end - offset) as usize) };
        if sent > 0 {
            zero_copy += sent as u64;
            continue;
        }
        if sent == 0 {
            break Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "segment shorter than the fetched range",
            ));
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => {
                let chunk = FALLBACK_CHUNK_BYTES.min((end - offset) as usize);
                let mut buf = vec![0u8; chunk];
                if let Err(e) = slice.file.read_exact_at(&mut buf, offset as u64) {
                    break Err(e);
                }
                if let Err(e) = stream.write_all(&buf).await {
                    break Err(e);
                }
                offset += chunk as libc::off_t;
                copied += chunk as u64;
            }
            _ => break Err(error),
        }
    };
    BrokerStats::add(&stats.zero_copy_bytes, zero_copy);
    BrokerStats::add(&stats.copied_fetch_bytes, copied);
    result
}
