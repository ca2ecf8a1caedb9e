//! The client listeners: one plain listener, or one `SO_REUSEPORT` listener per worker, each
//! with an accept queue of `BACKLOG`.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// The kernel's accept queue per client listener (capped by `net.core.somaxconn`). Past
/// `server.max_connections`, and in a burst of connects faster than one accept loop takes
/// them, connections wait here; a full queue drops the next SYN and its client retries a
/// second later. `TcpListener::bind` asks for 128 (std's and mio's value): a burst of 1,000
/// reconnecting clients then waited a second each past the 129th. nginx asks for 511, Node
/// (Rocket.Chat) for 511.
const BACKLOG: u32 = 1024;

/// One listener on `listen`, for a single worker (no `SO_REUSEPORT`: nobody else may share
/// the port).
pub(super) fn bind_one(listen: SocketAddr) -> std::io::Result<TcpListener> {
    plain_socket(listen)?.listen(BACKLOG)
}

/// Binds `n` listeners to `listen` with `SO_REUSEPORT`: the first, then the others to its
/// actual port (so port 0 works). The first is registered on the caller's runtime; the others
/// are returned as std listeners, to be registered on their worker's runtime.
pub(super) fn bind_reuseport(
    listen: SocketAddr,
    n: usize,
) -> std::io::Result<(TcpListener, Vec<std::net::TcpListener>)> {
    // A port some other socket holds must stop the start (exit 1, as with one worker), even
    // when that socket set SO_REUSEPORT too (another shim of the same user): a plain bind
    // first says whether the address is free.
    if listen.port() != 0 {
        drop(plain_socket(listen)?);
    }
    let first = reuseport_listener(listen)?;
    let bound = first.local_addr()?;
    let mut others = Vec::with_capacity(n.saturating_sub(1));
    for _ in 1..n {
        others.push(reuseport_listener(bound)?.into_std()?);
    }
    Ok((first, others))
}

/// A socket bound to `addr` like `TcpListener::bind` binds (`SO_REUSEADDR`), not listening.
fn plain_socket(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = new_socket(addr)?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

fn new_socket(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
}

#[cfg(target_os = "linux")]
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = new_socket(addr)?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

// Elsewhere SO_REUSEPORT does not spread connections (or is missing): the command runs one
// listener on a multi-thread runtime instead (`PER_WORKER_LISTENERS`), so this is not reached.
#[cfg(not(target_os = "linux"))]
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    bind_one(addr)
}
