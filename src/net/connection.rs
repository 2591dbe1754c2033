//! One client connection: a reader that frames and dispatches requests, and a writer that
//! sends responses in request order (the protocol requires it).
//!
//! Limits: a frame larger than `socket.request.max.bytes` (or with a negative length) closes
//! the connection before anything is allocated for it; at most
//! `max.inflight.requests.per.connection` requests are read ahead of their responses, after
//! which the reader stops reading (TCP backpressure, not an error).
//!
//! The reader and writer use two glommio streams over dup'ed fds of the same socket, so that
//! each has its own readiness state and neither needs a lock.

use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;

use super::rx_stamp::{self, ReceivedAt};
use super::sendfile;
use super::slow_request;
use crate::handlers::{self, Dispatched, PendingResponse};
use crate::metrics::{self, BrokerStats, DETAIL};
use crate::protocol::{Chunk, ResponseFrame};
use crate::shard::Shard;

/// Bytes read from the socket per call when no larger frame is pending.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Kafka API keys whose latency `/metrics` records.
const PRODUCE_API_KEY: i16 = 0;
pub(super) const FETCH_API_KEY: i16 = 1;

/// A response on its way to the writer, with what its metrics and the slow-request log need
/// (read from the frame header without decoding: no allocation).
struct InFlight {
    pending: PendingResponse,
    read: slow_request::Read,
}

pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let peer_addr = stream.peer_addr().ok();
    let peer = peer_addr.map_or_else(|| "?".into(), |a| a.to_string());
    // Kafka's form of a client host, as DescribeGroups reports it.
    let client_host = peer_addr.map_or_else(String::new, |a| format!("/{}", a.ip()));
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    // SAFETY: dup of an fd we own; the new fd is owned by the writer stream below.
    let write_fd = unsafe { libc::dup(fd) };
    if write_fd < 0 || sendfile::set_nonblocking(fd).is_err() {
        tracing::warn!(%peer, "cannot prepare connection; closing");
        if write_fd >= 0 {
            unsafe { libc::close(write_fd) };
        }
        return;
    }
    // SAFETY: write_fd is a fresh fd of this socket, owned by nobody else.
    let writer_stream = unsafe { TcpStream::from_raw_fd(write_fd) };
    // For the socket-wait metric; without it the connection is served the same.
    if let Err(error) = rx_stamp::enable(fd) {
        tracing::debug!(%peer, %error, "no receive timestamps (SO_TIMESTAMPING)");
    }
    let (tx, rx) = local_channel::new_bounded(shard.config.max_inflight_requests_per_connection);
    let writer = glommio::spawn_local(write_loop(shard.clone(), writer_stream, rx));
    tracing::debug!(%peer, shard = shard.id, "connection opened");
    if let Err(reason) = read_loop(&shard, stream, tx, &client_host).await {
        tracing::info!(%peer, %reason, "closing connection");
    }
    writer.await;
    tracing::debug!(%peer, "connection closed");
}

/// Reads frames until EOF or a protocol violation (returned as the reason to log).
async fn read_loop(
    shard: &Rc<Shard>,
    mut stream: TcpStream,
    tx: LocalSender<InFlight>,
    client_host: &str,
) -> Result<(), String> {
    let max_frame = shard.config.socket_request_max_bytes;
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut socket = SocketState::default();
    // After a large frame the next is probably large too (a producer's requests are alike):
    // its length prefix is then read alone, so that the frame itself is read into a buffer of
    // its size. Read greedily, its first bytes would land in a smaller buffer and be copied
    // when it grows (glibc's realloc copies the whole old buffer: 2.3-3.4 % of the shard's
    // CPU under W3, 0.5 % left after this). The price is one more recv(2) per large frame.
    let mut large_frames = false;
    loop {
        if !fill(&mut stream, &mut buf, 4, large_frames, &mut socket).await? {
            return Ok(());
        }
        let len = i32::from_be_bytes(buf[0..4].try_into().expect("4 bytes"));
        if len < 0 || len as usize > max_frame {
            BrokerStats::add(&shard.stats.malformed_requests, 1);
            return Err(format!(
                "request size {len} outside 0..={max_frame} (socket.request.max.bytes)"
            ));
        }
        let frame_end = 4 + len as usize;
        large_frames = frame_end > READ_CHUNK_BYTES;
        if !fill(&mut stream, &mut buf, frame_end, large_frames, &mut socket).await? {
            return Err("connection closed inside a request frame".into());
        }
        let socket_wait = socket.received_at.map(ReceivedAt::elapsed);
        if let Some(waited) = socket_wait {
            DETAIL.request_socket_wait.observe(waited);
        }
        let frame = buf.split_to(frame_end).freeze().slice(4..);
        BrokerStats::add(&shard.stats.requests, 1);
        let read_at = Instant::now();
        let (api_key, api_version, correlation_id) = match frame.get(0..8) {
            Some(h) => (
                i16::from_be_bytes([h[0], h[1]]),
                i16::from_be_bytes([h[2], h[3]]),
                i32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            ),
            None => (-1, -1, -1),
        };
        let busy_at_read = crate::shard::stall::busy_time();
        DETAIL.requests.add(api_key, api_version);
        BrokerStats::add(&metrics::shard_cells(shard.id).request_bytes, len as u64);
        match handlers::dispatch(shard, frame, client_host).await {
            Dispatched::Respond(pending) => {
                let in_flight = InFlight {
                    pending,
                    read: slow_request::Read {
                        api_key,
                        api_version,
                        correlation_id,
                        frame_bytes: frame_end,
                        socket_wait,
                        read_at,
                        dispatched_at: Instant::now(),
                        busy_at_read,
                    },
                };
                // Waits here when the in-flight limit is reached: backpressure.
                if tx.send(in_flight).await.is_err() {
                    return Err("response writer stopped".into());
                }
            }
            Dispatched::NoResponse => {}
            Dispatched::Close(error) => {
                BrokerStats::add(&shard.stats.malformed_requests, 1);
                DETAIL.request_errors.add(api_key, api_version);
                return Err(error.to_string());
            }
        }
        if large_frames {
            // A large frame was a millisecond or more of work (its read, its appends). With
            // more queued in the socket this loop would go on to the next without yielding,
            // up to the preempt timer, while this and other connections' responses (acks a
            // producer's window waits for, Fetch answers) wait behind it.
            futures_lite::future::yield_now().await;
        }
    }
}

/// The most a parked read asks the kernel to have queued before waking it: a bound well under
/// the socket's receive buffer (the kernel grows that buffer to fit, and wakes anyway under
/// memory pressure or when the window closes, but a frame of many megabytes need not wait
/// for all of it in one piece).
const WAKE_AT_MAX_BYTES: usize = 256 * 1024;

/// What the reader keeps about its socket between reads.
#[derive(Default)]
struct SocketState {
    wake_at: WakeAt,
    /// When the kernel received the last bytes read: the last frame completed waited since
    /// then. `None` when not known (no stamping, or those bytes came by the parked read).
    received_at: Option<ReceivedAt>,
}

/// The socket's `SO_RCVLOWAT` as last set: how many queued bytes make it readable.
struct WakeAt(usize);

impl Default for WakeAt {
    fn default() -> Self {
        WakeAt(1)
    }
}

impl WakeAt {
    /// Sets `SO_RCVLOWAT` to `bytes` (capped) unless it is that already. A failure only costs
    /// the wake-ups this saves, so it is logged (debug) and the connection stops trying.
    fn set(&mut self, fd: std::os::fd::RawFd, bytes: usize) {
        let bytes = bytes.clamp(1, WAKE_AT_MAX_BYTES);
        // 0: refused before on this connection.
        if bytes == self.0 || self.0 == 0 {
            return;
        }
        match super::set_socket_option(fd, libc::SO_RCVLOWAT, bytes as libc::c_int) {
            Ok(()) => self.0 = bytes,
            Err(error) => {
                tracing::debug!(%error, "SO_RCVLOWAT refused");
                self.0 = 0;
            }
        }
    }
}

/// Reads until `buf` holds at least `want` bytes. Returns false on EOF before any byte of a new
/// frame; errors on EOF in the middle of one.
///
/// Reads with recv(2) straight into the buffer's spare capacity, so no byte is zeroed first
/// (zeroing showed up at 4% of the broker's CPU under W1). Only when the socket is empty does
/// it go through glommio, reading a single byte, which parks the task until the socket is
/// readable without blocking the core.
///
/// `exactly`: read no byte past `want`, into a buffer of just that size. Otherwise a read
/// takes whatever is queued, up to a chunk past `want`, so that small pipelined requests are
/// taken in one call.
async fn fill(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    want: usize,
    exactly: bool,
    socket: &mut SocketState,
) -> Result<bool, String> {
    let fd = stream.as_raw_fd();
    while buf.len() < want {
        // Never reserve more than the frame needs plus one chunk: a frame's length is checked
        // against the limit before we get here, so this bounds the buffer.
        let missing = want - buf.len();
        let room = if exactly {
            missing
        } else {
            missing.max(READ_CHUNK_BYTES)
        };
        make_room(buf, room);
        let spare = buf.spare_capacity_mut();
        let read_max = if exactly {
            spare.len().min(missing)
        } else {
            spare.len()
        };
        // SAFETY: recv writes at most read_max <= spare.len() bytes into memory we own;
        // nothing reads it before set_len marks exactly the written bytes initialised.
        let (n, received_at) = unsafe { rx_stamp::recv(fd, spare.as_mut_ptr().cast(), read_max) };
        if n > 0 {
            socket.received_at = received_at;
            unsafe { buf.set_len(buf.len() + n as usize) };
            continue;
        }
        if n == 0 {
            return end_of_stream(buf);
        }
        let error = std::io::Error::last_os_error();
        match error.kind() {
            std::io::ErrorKind::Interrupted => {}
            std::io::ErrorKind::WouldBlock => {
                // Park until the rest of the frame is queued, not until its next piece: a
                // client's large request arrives in several pieces, and each wake-up of a
                // parked shard costs more than reading the piece (docs/benchmarks.md,
                // "Per-event costs"). EOF and errors wake the read whatever the mark.
                socket.wake_at.set(fd, want - buf.len());
                let mut first = [0u8; 1];
                match stream.read(&mut first).await.map_err(|e| e.to_string())? {
                    0 => return end_of_stream(buf),
                    _ => {
                        socket.received_at = None;
                        buf.extend_from_slice(&first)
                    }
                }
            }
            _ => return Err(error.to_string()),
        }
    }
    Ok(true)
}

/// Makes room for `room` more bytes. A buffer that must grow and holds little (a length
/// prefix, a small request's start) is replaced by a new one holding a copy of those bytes:
/// growing it in place would have realloc copy all of the old allocation.
fn make_room(buf: &mut BytesMut, room: usize) {
    const SMALL_BYTES: usize = 4096;
    if buf.capacity() - buf.len() >= room {
        return;
    }
    if buf.len() <= SMALL_BYTES {
        let mut fresh = BytesMut::with_capacity(buf.len() + room);
        fresh.extend_from_slice(buf);
        *buf = fresh;
    } else {
        buf.reserve(room);
    }
}

fn end_of_stream(buf: &BytesMut) -> Result<bool, String> {
    if buf.is_empty() {
        Ok(false)
    } else {
        Err("connection closed inside a request frame".into())
    }
}

/// Sends responses in request order until the reader is gone and every response is out.
async fn write_loop(shard: Rc<Shard>, mut stream: TcpStream, rx: LocalReceiver<InFlight>) {
    let cells = metrics::shard_cells(shard.id);
    let slow_threshold = std::time::Duration::from_millis(shard.config.request_slow_log_ms);
    while let Some(InFlight { pending, read }) = rx.recv().await {
        let picked_at = Instant::now();
        let frame = pending.await;
        let ready_at = Instant::now();
        // Latency up to "response ready", before the socket write: what the broker controls.
        let latency = ready_at.saturating_duration_since(read.read_at);
        match read.api_key {
            PRODUCE_API_KEY => DETAIL.produce_latency.observe(latency),
            FETCH_API_KEY => DETAIL.fetch_latency.observe(latency),
            _ => {}
        }
        let result = match frame {
            ResponseFrame::Mem(bytes) => {
                BrokerStats::add(&cells.bytes_out, bytes.len() as u64);
                stream.write_all(&bytes).await
            }
            ResponseFrame::Chunked(chunks) => {
                let len: usize = chunks.iter().map(Chunk::len).sum();
                BrokerStats::add(&cells.bytes_out, len as u64);
                write_chunks(&shard, &mut stream, chunks).await
            }
            ResponseFrame::Failed => {
                DETAIL.request_errors.add(read.api_key, read.api_version);
                Err(std::io::Error::other("response could not be encoded"))
            }
        };
        let written = slow_request::Written {
            picked_at,
            ready_at,
            written_at: Instant::now(),
        };
        slow_request::finished(shard.id, slow_threshold, &read, &written);
        if let Err(e) = result {
            tracing::debug!(error = %e, "write failed; closing connection");
            // Wake the reader: it sees EOF and stops.
            let _ = stream.shutdown(std::net::Shutdown::Both).await;
            return;
        }
    }
}

async fn write_chunks(
    shard: &Shard,
    stream: &mut TcpStream,
    chunks: Vec<Chunk>,
) -> std::io::Result<()> {
    // Consecutive memory chunks (response fields, records from a tail cache) go out together
    // with writev; file ranges with sendfile.
    let mut run: Vec<Bytes> = Vec::new();
    for chunk in chunks {
        match chunk {
            Chunk::Mem(bytes) => run.push(bytes),
            Chunk::File(slice) => {
                if !run.is_empty() {
                    sendfile::send_mem(stream, &run).await?;
                    run.clear();
                }
                sendfile::send_slice(stream, &slice, &shard.stats).await?
            }
        }
    }
    if !run.is_empty() {
        sendfile::send_mem(stream, &run).await?;
    }
    Ok(())
}
