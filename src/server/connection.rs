//! One client connection as the event loop keeps it: the socket, where it stands, its timer
//! bookkeeping, and — only while there is something in flight — its buffers.
//!
//! The struct is kept small because an edge server holds hundreds of thousands of them, almost
//! all idle: an idle, open connection owns no heap memory at all. The unfinished input (`stash`)
//! exists only while a request head, a frame header or a control frame is incomplete; the
//! decoder's message buffer only while a message spans reads; the outbound queue only while
//! the socket refuses bytes. Its size is asserted in a test and reported in the README.

use mio::net::TcpStream;
use std::collections::VecDeque;
use std::io::{self, IoSlice};

use crate::protocol::frame::{self, FrameHeader, OpCode, SharedFrame};
use crate::push::router::PushConn;
use crate::session::Session;

/// A connection handle's slab key and generation: timers and (later) hub entries carry it so
/// they can never reach a connection that reused the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    /// The connection's index in the worker's slab (reused once the connection is gone).
    pub key: u32,
    /// [`Connection::generation`] at the time the handle was made; a handle whose generation
    /// differs from the slot's now names a connection that is gone.
    pub generation: u32,
}

impl Handle {
    /// The mio token: key in the low half, generation in the high half.
    pub fn token(self) -> mio::Token {
        mio::Token((self.key as usize) | ((self.generation as usize) << 32))
    }

    /// The inverse of [`Handle::token`]: splits a mio token into key and generation.
    pub fn from_token(token: mio::Token) -> Handle {
        Handle {
            key: token.0 as u32,
            generation: (token.0 >> 32) as u32,
        }
    }
}

/// A connection in the worker's slab, over transport `S`: the plain socket, or a TLS stream
/// ([`crate::tls::TlsStream`]: the socket and one pointer).
#[derive(Debug)]
pub struct Connection<S = TcpStream> {
    /// The accepted, non-blocking transport, registered with the worker's poll under
    /// [`Handle::token`].
    pub socket: S,
    /// Taken from the worker's counter at accept (wrapping): tells this connection from the
    /// earlier and later ones in the same slab slot.
    pub generation: u32,
    /// The WebSocket state machine: phase, close state, deadlines, decoder.
    pub session: Session,
    /// Unconsumed input: an incomplete request head, frame header or control frame. Behind
    /// one thin pointer (8 bytes in the struct): it is rare, and replaced whole, never grown.
    #[allow(clippy::box_collection)]
    pub stash: Option<Box<Vec<u8>>>,
    /// Bytes the socket did not take yet.
    pub outbound: Option<Box<Outbound>>,
    /// Push-endpoint state (user, subscriptions, token), only on push connections.
    pub push: Option<Box<PushConn>>,
}

impl<S> Connection<S> {
    /// A connection just accepted, its session reading the request head.
    pub fn new(socket: S, generation: u32, session: Session) -> Self {
        Connection {
            socket,
            generation,
            session,
            stash: None,
            outbound: None,
            push: None,
        }
    }

    /// The handle of this connection, given its slab `key` (below 2^32: slabs stay far
    /// smaller).
    pub fn handle(&self, key: usize) -> Handle {
        Handle {
            key: key as u32,
            generation: self.generation,
        }
    }

    /// Unsent bytes held for this connection.
    pub fn queued(&self) -> usize {
        self.outbound.as_ref().map_or(0, |o| o.queued)
    }
}

/// A piece of the outbound queue.
#[derive(Debug)]
pub enum Chunk {
    /// Frames encoded for this connection alone.
    Owned(Vec<u8>),
    /// A frame encoded once and shared by every recipient (fan-out).
    Shared(SharedFrame),
    /// The compressed twin of a shared frame (permessage-deflate), for a connection that
    /// negotiated it; queued only once the twin exists.
    Deflated(SharedFrame),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(a) => a,
            // The plain frame is a valid fallback (a message may always go uncompressed).
            Chunk::Deflated(a) => a.deflated_bytes().unwrap_or(a),
        }
    }
}

/// Owned chunks grow up to this before a new one starts, so many small frames written in one
/// turn go out as one buffer, and a large backlog doesn't mean one huge reallocation.
const OWNED_CHUNK_TARGET: usize = 64 * 1024;

/// Most buffers handed to one `writev`.
const MAX_IOVECS: usize = 256;
/// Slots for a short queue (the common case), so a flush doesn't fill 256 of them.
const FEW_IOVECS: usize = 8;

/// The outbound queue: chunks of whole frames, written with `sendmsg`. A pong is queued like
/// any frame, in order, but while it is the unstarted tail a newer ping's pong replaces it
/// (§5.5.3: answering only the latest ping is allowed): a ping flood against a full socket
/// holds one pong, not one per ping.
#[derive(Debug, Default)]
pub struct Outbound {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written: a frame in progress, never interrupted.
    offset: usize,
    /// Unsent bytes in `chunks` (from `offset`).
    pub queued: usize,
    /// The tail chunk is a pong that may still be replaced.
    pong_tail: bool,
    /// The socket is registered for WRITABLE as well as READABLE (true exactly while this
    /// queue exists, once the worker has flushed it; kept here so an idle connection, which
    /// has no queue, keeps no bit for it).
    pub writable_interest: bool,
    /// Listed in the worker's to-flush list for the fan-out batch in progress.
    pub dirty: bool,
}

pub use crate::server::transport::Sink;

/// What a write attempt achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything is out.
    All,
    /// The socket is full; wait for WRITABLE.
    Blocked,
}

impl Outbound {
    /// A queue holding what a direct write of `bytes` left over: `written` bytes are already
    /// on the wire. `bytes` are whole server frames, so the queue is split at the frame the
    /// cut falls in: that frame (half written, finished before anything else: a pong or a
    /// slow-consumer cut waits for its end) and the frames not started, which a slow-consumer
    /// cut may drop. Only unwritten frames are copied. Bytes that don't parse as frames (an
    /// HTTP answer) stay one chunk.
    pub fn with_partial(bytes: &[u8], written: usize) -> Outbound {
        let written = written.min(bytes.len());
        let mut out = Outbound::default();
        let mut start = 0;
        let mut frame_end = None;
        while start < written {
            match FrameHeader::parse(&bytes[start..]) {
                Ok(Some((header, len))) => {
                    let end = start
                        .saturating_add(len)
                        .saturating_add(usize::try_from(header.payload_len).unwrap_or(usize::MAX));
                    if end > bytes.len() {
                        break;
                    }
                    if end > written {
                        frame_end = Some(end);
                        break;
                    }
                    start = end;
                }
                _ => break,
            }
        }
        let rest_from = match frame_end {
            // The half-written frame, then what follows.
            Some(end) => {
                out.chunks
                    .push_back(Chunk::Owned(bytes[start..end].to_vec()));
                out.offset = written - start;
                end
            }
            // The cut is on a frame boundary (nothing half written)...
            None if start == written => written,
            // ...or the bytes are not frames: keep them whole from the cut's frame on.
            None => {
                out.chunks.push_back(Chunk::Owned(bytes[start..].to_vec()));
                out.offset = written - start;
                bytes.len()
            }
        };
        if rest_from < bytes.len() {
            out.chunks
                .push_back(Chunk::Owned(bytes[rest_from..].to_vec()));
        }
        out.queued = bytes.len() - written;
        out
    }

    /// True when every queued byte was written: the queue can be dropped.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// The owned buffer at the tail to append frames to. The caller adds what it appended to
    /// `queued` (see [`Outbound::account`]).
    pub fn push_owned(&mut self) -> &mut Vec<u8> {
        let reuse = !self.pong_tail
            && matches!(self.chunks.back(), Some(Chunk::Owned(v))
            if v.len() < OWNED_CHUNK_TARGET && !(self.chunks.len() == 1 && self.offset > 0));
        self.pong_tail = false;
        if !reuse {
            self.chunks.push_back(Chunk::Owned(Vec::new()));
        }
        match self.chunks.back_mut() {
            Some(Chunk::Owned(v)) => v,
            // Just pushed or checked above.
            _ => unreachable!("the tail chunk is owned"),
        }
    }

    /// Records `n` more queued bytes appended through [`Outbound::push_owned`].
    pub fn account(&mut self, n: usize) {
        self.queued += n;
    }

    /// Queues a shared frame.
    pub fn push_shared(&mut self, frame: SharedFrame) {
        self.pong_tail = false;
        self.queued += frame.len();
        self.chunks.push_back(Chunk::Shared(frame));
    }

    /// Queues a shared frame's compressed twin ([`SharedFrame::deflated`]; the plain frame if
    /// it has none).
    pub fn push_deflated(&mut self, frame: SharedFrame) {
        self.pong_tail = false;
        let chunk = Chunk::Deflated(frame);
        self.queued += chunk.bytes().len();
        self.chunks.push_back(chunk);
    }

    /// Queues the pong answering a ping with `payload` (at most 125 bytes, checked by the
    /// decoder), replacing the tail pong if it hasn't started going out.
    pub fn set_pong(&mut self, payload: &[u8]) {
        let started = self.chunks.len() == 1 && self.offset > 0;
        if !(self.pong_tail && !started && matches!(self.chunks.back(), Some(Chunk::Owned(_)))) {
            self.chunks.push_back(Chunk::Owned(Vec::new()));
            self.pong_tail = true;
        }
        if let Some(Chunk::Owned(pong)) = self.chunks.back_mut() {
            self.queued -= pong.len();
            pong.clear();
            frame::write_frame(pong, OpCode::Pong, payload);
            self.queued += pong.len();
        }
    }

    /// Slow consumer: drops every frame not yet started (keeping a half-written one, which
    /// must be finished for the stream to stay valid).
    pub fn drop_unstarted(&mut self) {
        let keep = usize::from(self.offset > 0);
        self.chunks.truncate(keep);
        self.pong_tail = false;
        self.queued = self
            .chunks
            .front()
            .map_or(0, |c| c.bytes().len() - self.offset);
    }

    /// Writes as much as the socket takes, a `sendmsg` at a time, then what the transport
    /// holds pending ([`Sink::has_pending`]).
    pub fn flush(&mut self, socket: &mut impl Sink) -> io::Result<Flushed> {
        while self.queued > 0 {
            // A fan-out queue usually holds a chunk or two: don't fill 256 slots for them.
            let sent = if self.chunks.len() <= FEW_IOVECS {
                self.send_chunks::<FEW_IOVECS>(socket)
            } else {
                self.send_chunks::<MAX_IOVECS>(socket)
            };
            let written = match sent {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.advance(written);
        }
        if socket.has_pending() && !socket.flush_pending()? {
            return Ok(Flushed::Blocked);
        }
        Ok(Flushed::All)
    }

    /// One `sendmsg` of the first `N` chunks (at most).
    fn send_chunks<const N: usize>(&self, socket: &mut impl Sink) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); N];
        let mut n_slices = 0;
        for (i, chunk) in self.chunks.iter().take(N).enumerate() {
            let bytes = if i == 0 {
                &chunk.bytes()[self.offset..]
            } else {
                chunk.bytes()
            };
            slices[i] = IoSlice::new(bytes);
            n_slices = i + 1;
        }
        socket.send_vectored(&slices[..n_slices])
    }

    /// Drops `written` bytes from the front.
    fn advance(&mut self, mut written: usize) {
        self.queued -= written;
        while written > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.bytes().len() - self.offset;
            if written < left {
                self.offset += written;
                return;
            }
            written -= left;
            self.chunks.pop_front();
            self.offset = 0;
        }
        if self.chunks.is_empty() {
            self.pong_tail = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `budget` bytes per call and `total` in all.
    struct Trickle {
        taken: Vec<u8>,
        budget: usize,
        total: usize,
    }

    impl Sink for Trickle {
        fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let room = self.budget.min(self.total - self.taken.len());
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = (room - n).min(b.len());
                self.taken.extend_from_slice(&b[..take]);
                n += take;
                if n == room {
                    break;
                }
            }
            Ok(n)
        }
    }

    /// Every idle connection is one of these (plus its wheel entry): 56 bytes in a release
    /// build, 72 in a debug one (mio's `TcpStream` carries a selector id under
    /// `debug_assertions`). A field that breaks the packing (e.g. a bool beside the 24-byte
    /// session) costs 8 bytes per connection: this test is what notices.
    #[test]
    fn connection_struct_stays_small() {
        let size = std::mem::size_of::<Connection>();
        eprintln!("size_of::<Connection>() = {size}");
        let limit = if cfg!(debug_assertions) { 72 } else { 56 };
        assert!(
            size <= limit,
            "Connection is {size} bytes (at most {limit})"
        );
    }

    #[test]
    fn pongs_keep_their_place_and_only_the_latest_unsent_one_waits() {
        for budget in 1..40 {
            let mut out = Outbound::with_partial(b"AAAAAAAAAA", 0);
            out.push_shared(SharedFrame::from_encoded(&b"BBBBBBBBBB"[..]));
            let mut sock = Trickle {
                taken: Vec::new(),
                budget,
                total: 3,
            };
            assert_eq!(out.flush(&mut sock).unwrap(), Flushed::Blocked);
            out.set_pong(b"1");
            out.set_pong(b"2");
            sock.total = usize::MAX;
            assert_eq!(out.flush(&mut sock).unwrap(), Flushed::All);
            assert!(out.is_empty());
            assert_eq!(
                sock.taken, b"AAAAAAAAAABBBBBBBBBB\x8a\x012",
                "budget {budget}"
            );
        }
    }

    #[test]
    fn a_started_pong_is_finished_and_a_newer_one_follows() {
        let mut out = Outbound::with_partial(b"DATA", 0);
        out.set_pong(b"xyz");
        let mut sock = Trickle {
            taken: Vec::new(),
            budget: 2,
            total: 6,
        };
        assert_eq!(out.flush(&mut sock).unwrap(), Flushed::Blocked);
        // "DATA" and the pong's first two bytes are out: the pong is started, so the newer
        // one queues behind it instead of replacing it.
        out.set_pong(b"q");
        // And a data frame after a pong ends the pong's replaceable tail.
        out.push_owned().extend_from_slice(b"E");
        out.account(1);
        out.set_pong(b"r");
        sock.total = usize::MAX;
        assert_eq!(out.flush(&mut sock).unwrap(), Flushed::All);
        assert_eq!(sock.taken, b"DATA\x8a\x03xyz\x8a\x01qE\x8a\x01r");
    }

    #[test]
    fn a_ping_flood_against_a_full_socket_holds_one_pong() {
        let mut out = Outbound::with_partial(b"x", 0);
        for i in 0..10_000u32 {
            out.set_pong(&i.to_be_bytes());
        }
        assert_eq!(out.queued, 1 + 6);
        let mut sock = Trickle {
            taken: Vec::new(),
            budget: 100,
            total: usize::MAX,
        };
        assert_eq!(out.flush(&mut sock).unwrap(), Flushed::All);
        assert_eq!(
            sock.taken,
            [&b"x\x8a\x04"[..], &9_999u32.to_be_bytes()].concat()
        );
    }

    #[test]
    fn partial_cork_is_finished_before_a_pong() {
        let mut cork = Vec::new();
        crate::protocol::frame::write_frame(&mut cork, OpCode::Text, b"FRAME");
        let mut out = Outbound::with_partial(&cork, 2);
        out.set_pong(b"p");
        let mut sock = Trickle {
            taken: Vec::new(),
            budget: 100,
            total: usize::MAX,
        };
        assert_eq!(out.flush(&mut sock).unwrap(), Flushed::All);
        assert_eq!(sock.taken, b"FRAME\x8a\x01p");
    }

    #[test]
    fn a_partial_cork_is_split_at_the_frame_so_unstarted_frames_can_be_dropped() {
        let mut cork = Vec::new();
        for payload in [&b"first"[..], b"second", b"third"] {
            crate::protocol::frame::write_frame(&mut cork, OpCode::Text, payload);
        }
        // Cut inside the second frame (2-byte header + "first" = 7 bytes, then 3 of the next).
        let mut out = Outbound::with_partial(&cork, 10);
        assert_eq!(out.queued, cork.len() - 10);
        out.drop_unstarted();
        let mut sock = Trickle {
            taken: Vec::new(),
            budget: 100,
            total: usize::MAX,
        };
        assert_eq!(out.flush(&mut sock).unwrap(), Flushed::All);
        assert_eq!(
            sock.taken,
            &cork[10..15],
            "only the rest of the second frame"
        );
        // A cut on a boundary copies nothing written and keeps the rest.
        let out = Outbound::with_partial(&cork, 7);
        assert_eq!((out.offset, out.queued), (0, cork.len() - 7));
        // Not frames (an HTTP answer): kept whole.
        let http = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        let mut out = Outbound::with_partial(http, 5);
        let mut sock = Trickle {
            taken: Vec::new(),
            budget: 100,
            total: usize::MAX,
        };
        assert_eq!(out.flush(&mut sock).unwrap(), Flushed::All);
        assert_eq!(sock.taken, &http[5..]);
    }

    #[test]
    fn drop_unstarted_keeps_the_half_written_frame() {
        let mut out = Outbound::with_partial(b"0123456789", 0);
        out.push_shared(SharedFrame::from_encoded(&b"later"[..]));
        let mut sock = Trickle {
            taken: Vec::new(),
            budget: 4,
            total: 4,
        };
        let _ = out.flush(&mut sock);
        out.drop_unstarted();
        assert_eq!(out.queued, 6);
        sock.total = usize::MAX;
        assert_eq!(out.flush(&mut sock).unwrap(), Flushed::All);
        assert_eq!(sock.taken, b"0123456789");
    }

    #[test]
    fn handle_token_round_trip() {
        let h = Handle {
            key: 12345,
            generation: 0xdead_beef,
        };
        assert_eq!(Handle::from_token(h.token()), h);
    }
}
