//! The listening sockets: one per worker, all bound to the same address with `SO_REUSEPORT`, so
//! the kernel spreads new connections over the workers and no accept lock is shared.
//!
//! `SO_REUSEPORT` would also let a second process (of the same user) bind the same address
//! and silently take a share of its connections: an edgepush started twice by mistake. So a
//! fixed port is first bound by a probe socket without `SO_REUSEPORT`, which fails with
//! `EADDRINUSE` while anything listens there.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections the kernel may hold per listener.
const BACKLOG: i32 = 4096;

/// Binds a non-blocking listener with `SO_REUSEADDR` and `SO_REUSEPORT`.
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

/// Binds `count` listeners on `addr`. With port 0 the first one picks the port and the others
/// join it.
///
/// Errors: `AddrInUse` when something (another edgepush too) listens on `addr` already.
pub fn bind_all(addr: SocketAddr, count: usize) -> io::Result<Vec<mio::net::TcpListener>> {
    if addr.port() != 0 {
        probe_unused(addr)?;
    }
    let first = bind_reuseport(addr)?;
    let actual = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(bind_reuseport(actual)?);
    }
    Ok(listeners)
}

/// Binds and drops a socket with `SO_REUSEADDR` only: `AddrInUse` if any socket listens on
/// `addr` (one with `SO_REUSEPORT` included), `Ok` if it is free or held only by connections
/// in TIME_WAIT.
fn probe_unused(addr: SocketAddr) -> io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())
}
