//! Listening sockets. Every shard has its own socket bound to the same address with
//! SO_REUSEPORT, so every core accepts (no acceptor thread); a connection then goes to the
//! shard `balance` picks, handed over the mesh when that is not the one that accepted it.

use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use glommio::net::{AcceptedTcpStream, TcpListener, TcpStream};
use socket2::{Domain, Protocol, Socket, Type};

use super::balance::ConnectionBalance;
use super::connection;
use crate::metrics::{self, BrokerStats};
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

/// Accepts connections on this shard's socket until shutdown, and serves each on the shard
/// `balance` picks (this one, or another it is handed to over the mesh).
pub async fn accept_loop(shard: Rc<Shard>, fd: RawFd, balance: Arc<ConnectionBalance>) {
    // SAFETY: `fd` is a listening socket created by `bind_all`, owned by this shard alone.
    let listener = unsafe { <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    loop {
        let accepted = match listener.shared_accept().await {
            Ok(accepted) => Handoff(Some(accepted)),
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
            drop(accepted);
            continue;
        }
        let target = balance.place();
        tracing::debug!(
            accepted_on = shard.id,
            served_on = target,
            "connection placed"
        );
        let balance = balance.clone();
        if target == shard.id {
            glommio::spawn_local(serve(shard.clone(), accepted, balance)).detach();
        } else {
            // The reply (sent when the connection ends) is of no interest here.
            drop(
                shard
                    .submit_on(target, move |owner| serve(owner, accepted, balance))
                    .await,
            );
        }
    }
}

/// Serves one connection on this shard, then takes it off the counts.
async fn serve(shard: Rc<Shard>, mut accepted: Handoff, balance: Arc<ConnectionBalance>) {
    let stream = accepted.bind();
    let cells = metrics::shard_cells(shard.id);
    cells.connections.fetch_add(1, Ordering::Relaxed);
    connection::serve(shard.clone(), stream).await;
    cells.connections.fetch_sub(1, Ordering::Relaxed);
    balance.close(shard.id);
    shard.stats.connections.fetch_sub(1, Ordering::Relaxed);
}

/// An accepted connection on its way to the shard that serves it (`Send`, unlike a
/// `TcpStream`). One dropped undelivered (the mesh closed at shutdown) is still closed.
struct Handoff(Option<AcceptedTcpStream>);

impl Handoff {
    /// The connection as a stream of the current shard's executor.
    fn bind(&mut self) -> TcpStream {
        self.0
            .take()
            .expect("a connection is bound once")
            .bind_to_executor()
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        if let Some(accepted) = self.0.take() {
            // Binding makes it a stream that closes its fd when dropped; glommio's accepted
            // form has no close of its own. Drops happen on shard threads (executors).
            drop(accepted.bind_to_executor());
        }
    }
}
