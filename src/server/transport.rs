//! The byte pipe under a session: what the worker reads WebSocket bytes from and writes frames
//! to. Plain TCP today; TLS (rustls) will be a second implementation, so that neither the
//! session nor the event loop changes when it lands. The worker touches a connection's socket
//! only through these traits (plus mio registration).
//!
//! Why traits and not an enum: a listener is either plain or TLS for its whole life, so the
//! worker can be generic over its transport and a plain connection keeps its 4-byte socket,
//! with no tag or pointer for a TLS state it will never have.

use std::io::{self, IoSlice, Read};
use std::net::{Shutdown, SocketAddr};

use mio::net::TcpStream;

/// The write half: takes several buffers in one call (queued frames go out with one system
/// call). Returns how many bytes were taken; `WouldBlock` when none can be.
pub trait Sink {
    /// Writes as much of `bufs`, in order, as the transport takes now.
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Writes as much of `buf` as the transport takes now.
    fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send_vectored(&[IoSlice::new(buf)])
    }
}

/// A connection's transport: plaintext in through [`Read`], out through [`Sink`].
pub trait Transport: Read + Sink {
    /// Ends our direction (TCP: FIN; TLS: close_notify, then FIN). Reading goes on until the
    /// peer's EOF.
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// The peer's address (per-address limits, debug lines).
    fn peer_addr(&self) -> io::Result<SocketAddr>;

    /// Makes dropping the transport an abortive close (TCP: RST, via `SO_LINGER` 0) instead of
    /// an orderly one: for a connection given up with bytes still queued, so that the peer
    /// sees an error rather than a FIN that passes a cut-off stream off as complete.
    fn abort_on_close(&mut self) -> io::Result<()>;
}

impl Sink for TcpStream {
    /// `sendmsg` rather than `writev`: the socket call skips the VFS layer (`writev`'s file
    /// position lock and checks), measurably cheaper per subscriber in a fan-out.
    /// `MSG_NOSIGNAL`: a peer that reset the connection gives `EPIPE`, not a SIGPIPE.
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        socket2::SockRef::from(&*self).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)
    }

    fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
        socket2::SockRef::from(&*self).send_with_flags(buf, libc::MSG_NOSIGNAL)
    }
}

impl Transport for TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        TcpStream::shutdown(self, Shutdown::Write)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        TcpStream::peer_addr(self)
    }

    fn abort_on_close(&mut self) -> io::Result<()> {
        socket2::SockRef::from(&*self).set_linger(Some(std::time::Duration::ZERO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A real loopback pair: bytes sent through the trait arrive, and `shutdown_write` is
    /// seen by the peer as EOF while the peer can still write to us.
    #[test]
    fn tcp_sends_vectored_and_half_closes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = std::net::TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let mut server = TcpStream::from_std(server);
        let mut client = client;
        let sent = server
            .send_vectored(&[IoSlice::new(b"ab"), IoSlice::new(b"cd")])
            .expect("send");
        assert_eq!(sent, 4);
        assert_eq!(server.send(b"e").expect("send"), 1);
        assert_eq!(
            Transport::peer_addr(&server).expect("peer").port(),
            client.local_addr().expect("local").port()
        );
        server.shutdown_write().expect("FIN");
        let mut got = Vec::new();
        client.read_to_end(&mut got).expect("read to EOF");
        assert_eq!(got, b"abcde");
        std::io::Write::write_all(&mut client, b"still open").expect("the other half is open");
    }

    /// After `abort_on_close`, dropping the transport resets the connection.
    #[test]
    fn abort_on_close_resets() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let mut server = TcpStream::from_std(server);
        server.abort_on_close().expect("SO_LINGER");
        drop(server);
        let mut buf = [0u8; 8];
        let err = client.read(&mut buf).expect_err("a reset, not EOF");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    }
}
