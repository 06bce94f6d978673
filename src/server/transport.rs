//! The byte pipe under a session: what the worker reads WebSocket bytes from and writes frames
//! to. Plain TCP ([`TcpStream`]) and TLS ([`crate::tls::TlsStream`], rustls): neither the
//! session nor the event loop knows which. The worker touches a connection's socket only
//! through these traits (plus mio registration, [`mio::event::Source`]).
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

    /// Bytes taken by an earlier send but not yet written (TLS: encrypted records the socket
    /// refused). While true the connection waits for WRITABLE even with nothing else queued.
    /// Plain TCP: never.
    fn has_pending(&self) -> bool {
        false
    }

    /// Writes what is pending; true when nothing is left.
    fn flush_pending(&mut self) -> io::Result<bool> {
        Ok(true)
    }
}

/// What a transport's own handshake came to (TLS), for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportEvent {
    /// The TLS handshake finished.
    HandshakeDone,
    /// The TLS handshake failed, and why.
    HandshakeFailed(crate::tls::TlsFailure),
}

/// A connection's transport: plaintext in through [`Read`], out through [`Sink`].
pub trait Transport: Read + Sink + mio::event::Source + Sized {
    /// What every connection of a listener is made with: nothing for plain TCP, the shared
    /// rustls configuration for TLS.
    type Acceptor: Send + Sync + 'static;

    /// Bytes the worker's read buffer needs beyond its plain size (TLS: one record's
    /// plaintext, so that a read always has room for one past the longest stash).
    const READ_EXTRA: usize = 0;

    /// The transport over a socket just accepted.
    fn accept(socket: TcpStream, acceptor: &Self::Acceptor) -> io::Result<Self>;

    /// Ends our direction (TCP: FIN; TLS: close_notify, then FIN). Reading goes on until the
    /// peer's EOF.
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// The peer's address (per-address limits, debug lines).
    fn peer_addr(&self) -> io::Result<SocketAddr>;

    /// Makes dropping the transport an abortive close (TCP: RST, via `SO_LINGER` 0) instead of
    /// an orderly one: for a connection given up with bytes still queued, so that the peer
    /// sees an error rather than a FIN that passes a cut-off stream off as complete.
    fn abort_on_close(&mut self) -> io::Result<()>;

    /// After a read that returned `n` of the `offered` bytes: whether more input may be
    /// ready without a new readiness event (events are edge-triggered). Plain TCP: when the
    /// read filled the buffer. TLS: when it stopped before the socket said `WouldBlock`.
    fn may_have_more(&self, n: usize, offered: usize) -> bool {
        n >= offered
    }

    /// The outcome of the transport's own handshake, once, after the read that reached it.
    fn take_event(&mut self) -> Option<TransportEvent> {
        None
    }

    /// Still in the transport's own handshake (TLS): a handshake timeout now counts as a TLS
    /// failure.
    fn in_handshake(&self) -> bool {
        false
    }
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
    type Acceptor = ();

    fn accept(socket: TcpStream, _: &()) -> io::Result<Self> {
        Ok(socket)
    }

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
