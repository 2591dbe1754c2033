//! Client connections: accepting (one SO_REUSEPORT listener per shard), placing each on the
//! least-loaded shard, framing, limits, backpressure, and the zero-copy response writer.

pub mod balance;
pub mod connection;
pub mod listener;
pub mod rx_stamp;
pub mod sendfile;
pub mod slow_request;

/// Sets an integer socket option (`SOL_SOCKET` level) on `fd`.
pub(crate) fn set_socket_option(
    fd: std::os::fd::RawFd,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: a valid option value of the right size; an fd the kernel does not know is an
    // error, not undefined behaviour.
    let set = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
