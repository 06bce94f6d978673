//! The listening sockets: one per worker, all bound to the same address with `SO_REUSEPORT`, so
//! the kernel spreads new connections over the workers and no accept lock is shared.

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
pub fn bind_all(addr: SocketAddr, count: usize) -> io::Result<Vec<mio::net::TcpListener>> {
    let first = bind_reuseport(addr)?;
    let actual = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(bind_reuseport(actual)?);
    }
    Ok(listeners)
}
