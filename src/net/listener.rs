//! Listening sockets. Every shard has its own socket bound to the same address with
//! SO_REUSEPORT, so the kernel spreads new connections over the shards and no core hands
//! connections to another.

use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;

use glommio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use super::connection;
use crate::metrics::BrokerStats;
use crate::shard::Shard;

/// Binds `count` listening sockets to `addr` (all with SO_REUSEPORT). With port 0 the first
/// socket picks a free port and the others join it. Returns the raw fds (handed to the shard
/// threads) and the address actually bound.
pub fn bind_all(addr: SocketAddr, count: usize) -> std::io::Result<(Vec<RawFd>, SocketAddr)> {
    assert!(count > 0);
    let mut fds = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count {
        let socket = Socket::new(
            Domain::for_address(bound),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.bind(&bound.into())?;
        socket.listen(1024)?;
        if bound.port() == 0 {
            bound = socket
                .local_addr()?
                .as_socket()
                .ok_or_else(|| std::io::Error::other("listener has no inet address"))?;
        }
        fds.push(socket.into_raw_fd());
    }
    Ok((fds, bound))
}

/// Accepts connections on this shard's socket until shutdown.
pub async fn accept_loop(shard: Rc<Shard>, fd: RawFd) {
    // SAFETY: `fd` is a listening socket created by `bind_all`, owned by this shard alone.
    let listener = unsafe { <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                // EMFILE and friends: log and keep serving the connections we have.
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if shard.is_shutting_down() {
            break;
        }
        let open = shard.stats.connections.fetch_add(1, Ordering::Relaxed);
        let max_connections = shard
            .dynamic_config::<usize>("max.connections")
            .unwrap_or(shard.config.max_connections);
        if open >= max_connections {
            shard.stats.connections.fetch_sub(1, Ordering::Relaxed);
            BrokerStats::add(&shard.stats.connections_refused, 1);
            tracing::warn!(
                limit = max_connections,
                "max.connections reached; closing new connection"
            );
            drop(stream);
            continue;
        }
        let shard = shard.clone();
        glommio::spawn_local(async move {
            connection::serve(shard.clone(), stream).await;
            shard.stats.connections.fetch_sub(1, Ordering::Relaxed);
        })
        .detach();
    }
}
