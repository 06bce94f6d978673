//! [`TlsStream`]: a TLS server connection (RFC 8446, RFC 5246) as a worker [`Transport`]:
//! the handshake on rustls's unbuffered API (`UnbufferedServerConnection`); then, once it is
//! over, our own record layer ([`super::record::RecordLayer`]), to which rustls hands the
//! traffic keys.
//!
//! Why unbuffered: the buffered `ServerConnection` keeps its own incoming, plaintext and
//! outgoing buffers per connection; here every connection borrows its worker thread's scratch
//! buffers ([`Scratch`], one per thread) for the length of one read or one send, and keeps
//! bytes of its own only while they cannot be handed on:
//! - `partial`: ciphertext of a record not yet whole (a record split across TCP reads);
//! - `pending`: ciphertext the socket did not take yet (at most one send's worth, as the
//!   worker's plaintext queue holds the rest);
//!
//! so an idle open connection holds the socket, one pointer and the TLS state behind it: the
//! two traffic keys with their IVs and sequence numbers and, for TLS 1.3, rustls's key
//! schedule (for key updates); everything else rustls held for the handshake is freed at the
//! handover.
//!
//! Reading decrypts records into the caller's buffer; handshake messages are answered from
//! inside `read`, so the worker sees a plain byte stream that starts once the handshake is
//! done. Sending encrypts the caller's buffers (gathered into records of up to 16 KiB) into
//! the thread's scratch and writes them with one `sendmsg`.

use std::cell::RefCell;
use std::io::{self, IoSlice, Read};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;

use log::debug;
use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{ProtocolVersion, ServerConfig};

use super::record::{Alert, Fatal, RecordLayer};
use super::TlsFailure;
use crate::http::response::{write_response, Persistence};
use crate::server::transport::{Sink, Transport, TransportEvent};

/// The largest TLS record plaintext (RFC 8446 §5.1: 2^14 bytes).
pub const MAX_PLAINTEXT: usize = 16 * 1024;

/// The largest TLS record on the wire: header, 2^14 bytes and the most expansion TLS 1.2
/// allows (RFC 5246 §6.2.3).
pub const MAX_RECORD: usize = 5 + MAX_PLAINTEXT + 2048;

/// The thread's incoming ciphertext buffer: several whole records (a record's ciphertext is
/// at most 2^14 + 256 bytes in TLS 1.3, 2^14 + 2048 in TLS 1.2).
const INCOMING_SIZE: usize = 64 * 1024;

/// Plaintext taken by one send: four full records, at most this much ciphertext is left
/// `pending` on a connection whose socket is full.
const MAX_SEND: usize = 4 * MAX_PLAINTEXT;

/// Rounds of the rustls state machine in one read or send before it is treated as stuck.
/// In a read only rounds that neither consume input nor hand out a record count (rustls hands
/// out one application-data record per round, and a burst of small records is thousands of
/// rounds in one read); each round consumes input or produces output, so this is never
/// reached in practice.
const MAX_ROUNDS: usize = 64;

/// A worker thread's buffers, lent to one connection at a time.
struct Scratch {
    /// Ciphertext read from the socket: the connection's `partial` record first, then what
    /// the read brought. Always `INCOMING_SIZE` long.
    incoming: Vec<u8>,
    /// Ciphertext to write: handshake flights, encrypted records, alerts.
    outgoing: Vec<u8>,
    /// Small buffers gathered into one record before encryption.
    plain: Vec<u8>,
}

thread_local! {
    /// One per worker thread (each worker is one thread): the per-worker scratch buffers.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        incoming: vec![0; INCOMING_SIZE],
        outgoing: Vec::with_capacity(MAX_SEND + 4096),
        plain: Vec::with_capacity(MAX_PLAINTEXT),
    });
}

/// Runs `f` with the thread's scratch buffers (never re-entered: a read or send does not call
/// another).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> io::Result<R>) -> io::Result<R> {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => Err(io::Error::other("TLS scratch buffers in use")),
    })
}

/// Where a connection's handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshaking,
    Open,
    /// Our close_notify went out (with our FIN): nothing more is sent, and what the peer
    /// still sends (its Close frame) is read until its EOF.
    Closing,
    /// Failed (alert sent): no more records either way.
    Done,
}

/// What protects the records. The large variant is inline on purpose: it is what an idle
/// connection keeps, in the one allocation behind [`TlsStream`].
#[allow(clippy::large_enum_variant)]
enum Engine {
    /// rustls: during the handshake (and throughout, if the configuration does not allow the
    /// handover).
    Rustls(Box<UnbufferedServerConnection>),
    /// After the handshake: our record layer (inline: this is what an idle connection keeps).
    Records(RecordLayer),
    /// Failed: nothing left (the state is freed as soon as the connection fails).
    Gone,
}

/// The per-connection TLS state, boxed behind one pointer in [`TlsStream`].
struct TlsState {
    engine: Engine,
    /// Ciphertext of a record split across reads (empty, unallocated, otherwise).
    partial: Vec<u8>,
    /// Ciphertext the socket has not taken yet (empty, unallocated, otherwise).
    pending: Vec<u8>,
    phase: Phase,
    /// Input may be waiting without a new readiness event (a read stopped early).
    more: bool,
    /// The peer ended its direction (close_notify or EOF): reads return 0 from now on.
    eof: bool,
    /// Our close_notify is (the end of) `pending`: the FIN goes once `pending` is written
    /// (by [`Sink::flush_pending`] or the next read), never before, so the peer never sees a
    /// cut record.
    fin_owed: bool,
    /// The configuration allows the handover to [`RecordLayer`] (`enable_secret_extraction`).
    handover: bool,
    /// A handshake outcome not yet taken by the worker.
    event: Option<TransportEvent>,
}

/// A TLS connection over a non-blocking mio socket: the worker's transport on a TLS listener.
/// One pointer: the socket lives beside the rustls state, so that a connection in the slab
/// grows by 8 bytes over a plain one (a 4-byte socket plus a pointer would pad to 16).
pub struct TlsStream {
    inner: Box<Inner>,
}

/// The socket and the TLS state, behind [`TlsStream`]'s pointer.
struct Inner {
    socket: TcpStream,
    state: TlsState,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("socket", &self.inner.socket)
            .field("phase", &self.inner.state.phase)
            .finish_non_exhaustive()
    }
}

/// What one pass over the buffered ciphertext achieved.
struct Progress {
    /// Ciphertext bytes done with, from the front.
    discard: usize,
    /// close_notify received.
    peer_closed: bool,
    /// The caller's buffer cannot take the next decrypted record.
    full: bool,
    /// The handshake just finished: rustls is to hand over to [`RecordLayer`].
    handover: bool,
}

impl TlsStream {
    /// A server connection over an accepted socket, starting its handshake. With
    /// `config.enable_secret_extraction` (as [`super::ServerTls`] sets it) the connection
    /// moves to [`RecordLayer`] once its handshake is over; without, it stays on rustls.
    ///
    /// # Errors
    /// rustls refusing the configuration (not expected with [`super::ServerTls`]'s).
    pub fn new(socket: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
        let handover = config.enable_secret_extraction;
        let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
        Ok(TlsStream {
            inner: Box::new(Inner {
                socket,
                state: TlsState {
                    engine: Engine::Rustls(Box::new(conn)),
                    partial: Vec::new(),
                    pending: Vec::new(),
                    phase: Phase::Handshaking,
                    more: false,
                    eof: false,
                    fin_owed: false,
                    handover,
                    event: None,
                },
            }),
        })
    }

    /// The negotiated protocol version, once the handshake is done (for tests and logs).
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        match &self.inner.state.engine {
            Engine::Rustls(conn) => conn.protocol_version(),
            Engine::Records(records) => Some(records.protocol_version()),
            Engine::Gone => None,
        }
    }

    /// Whether the records are protected by our record layer (the handover is done) rather
    /// than by rustls.
    pub fn on_own_record_layer(&self) -> bool {
        matches!(self.inner.state.engine, Engine::Records(_))
    }

    /// Writes `pending` ciphertext; true when none is left (then the FIN owed after our
    /// close_notify goes too).
    fn write_pending(&mut self) -> io::Result<bool> {
        let Inner { socket, state: st } = &mut *self.inner;
        if !st.pending.is_empty() {
            let written = write_some(socket, &st.pending)?;
            if written < st.pending.len() {
                st.pending.drain(..written);
                return Ok(false);
            }
            st.pending = Vec::new();
        }
        if st.fin_owed {
            st.fin_owed = false;
            socket.shutdown(Shutdown::Write)?;
        }
        Ok(true)
    }

    fn read_with(&mut self, buf: &mut [u8], sc: &mut Scratch) -> io::Result<usize> {
        let Inner { socket, state: st } = &mut *self.inner;
        let incoming = &mut sc.incoming;
        let mut used = st.partial.len();
        incoming[..used].copy_from_slice(&st.partial);
        st.partial = Vec::new();
        let mut out = 0;
        // The socket said WouldBlock or EOF; `short`: the last read brought less than asked,
        // which is taken as drained only when there is plaintext to hand over (an EOF right
        // behind the data must not be missed while a handshake waits for it: the worker reads
        // on after data when the event reported a hang-up).
        let mut drained = false;
        let mut short = false;
        let mut socket_eof = false;
        let mut full = false;
        let mut result = Ok(());
        for _ in 0..MAX_ROUNDS {
            match process(
                st,
                socket,
                &mut incoming[..used],
                buf,
                &mut out,
                &mut sc.outgoing,
            ) {
                Ok(p) => {
                    incoming.copy_within(p.discard..used, 0);
                    used -= p.discard;
                    if p.peer_closed {
                        st.eof = true;
                        break;
                    }
                    if p.full {
                        full = true;
                        break;
                    }
                }
                Err(e) => {
                    used = 0;
                    result = Err(e);
                    break;
                }
            }
            if drained || (short && out > 0) {
                break;
            }
            // At most as much ciphertext, counting what is buffered, as the caller can take
            // as plaintext (which is never longer): nothing decrypted is ever left over for
            // want of room, so rustls holds no plaintext between reads.
            let want = (incoming.len() - used).min((buf.len() - out).saturating_sub(used));
            if want == 0 {
                if used == incoming.len() {
                    result = Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "TLS record larger than the read buffer",
                    ));
                }
                break;
            }
            match socket.read(&mut incoming[used..used + want]) {
                Ok(0) => {
                    socket_eof = true;
                    drained = true;
                }
                Ok(n) => {
                    used += n;
                    short = n < want;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => drained = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // What follows the peer's close_notify (or a record cut by its EOF) is never read: on
        // our record layer it is not kept (rustls may hold positions in its input).
        let ended = (st.eof || socket_eof) && matches!(st.engine, Engine::Records(_));
        if used > 0 && result.is_ok() && !ended {
            st.partial = incoming[..used].to_vec();
        }
        st.more = full || (!drained && !short && !st.eof);
        if let Err(e) = result {
            if st.phase == Phase::Handshaking && st.event.is_none() {
                st.event = Some(TransportEvent::HandshakeFailed(TlsFailure::Other));
            }
            st.phase = Phase::Done;
            return Err(e);
        }
        if socket_eof {
            if st.phase == Phase::Handshaking {
                st.event = Some(TransportEvent::HandshakeFailed(TlsFailure::Eof));
                st.phase = Phase::Done;
            }
            st.eof = true;
        }
        if out > 0 {
            Ok(out)
        } else if st.eof {
            Ok(0)
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    fn send_with(&mut self, bufs: &[IoSlice<'_>], sc: &mut Scratch) -> io::Result<usize> {
        let Inner { socket, state: st } = &mut *self.inner;
        if st.phase != Phase::Open {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "TLS handshake not finished",
            ));
        }
        let Scratch {
            outgoing: out,
            plain,
            ..
        } = sc;
        out.clear();
        let taken = match &mut st.engine {
            Engine::Records(tls) => gather(bufs, plain, out, |data, out| {
                tls.seal_application_data(data, out)
                    .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))
            })?,
            Engine::Rustls(conn) => send_rustls(conn, &mut st.partial, bufs, plain, out)?,
            Engine::Gone => {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "TLS connection closed",
                ))
            }
        };
        transmit(socket, &mut st.pending, out)?;
        Ok(taken)
    }
}

/// Encrypts up to [`MAX_SEND`] bytes of `bufs` with `encrypt` into `out`, as records of up
/// to [`MAX_PLAINTEXT`] bytes (small buffers gathered in `plain` first, whole records taken
/// straight from the caller's); returns the plaintext bytes taken.
fn gather(
    bufs: &[IoSlice<'_>],
    plain: &mut Vec<u8>,
    out: &mut Vec<u8>,
    mut encrypt: impl FnMut(&[u8], &mut Vec<u8>) -> io::Result<()>,
) -> io::Result<usize> {
    plain.clear();
    let mut taken = 0;
    for slice in bufs {
        let mut slice: &[u8] = slice;
        while !slice.is_empty() && taken < MAX_SEND {
            let n = slice.len().min(MAX_SEND - taken);
            if plain.is_empty() && n >= MAX_PLAINTEXT {
                // Whole records straight from the caller's buffer.
                let n = n - n % MAX_PLAINTEXT;
                encrypt(&slice[..n], out)?;
                slice = &slice[n..];
                taken += n;
                continue;
            }
            let n = n.min(MAX_PLAINTEXT - plain.len());
            plain.extend_from_slice(&slice[..n]);
            slice = &slice[n..];
            taken += n;
            if plain.len() == MAX_PLAINTEXT {
                encrypt(plain, out)?;
                plain.clear();
            }
        }
    }
    if !plain.is_empty() {
        encrypt(plain, out)?;
        plain.clear();
    }
    Ok(taken)
}

/// [`TlsStream`]'s send on rustls (no handover): whatever rustls has to send first (a
/// post-handshake message), then the caller's data encrypted into `out`.
fn send_rustls(
    conn: &mut UnbufferedServerConnection,
    partial: &mut [u8],
    bufs: &[IoSlice<'_>],
    plain: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> io::Result<usize> {
    for _ in 0..MAX_ROUNDS {
        // The buffered input goes with every call: rustls's handshake deframer may hold
        // positions in it (a post-handshake message split across records).
        let UnbufferedStatus { state, discard } = conn.process_tls_records(partial);
        if discard > 0 {
            // Not expected (input is processed by reads); dropped once `state` is done.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS input processed while sending",
            ));
        }
        match state.map_err(io::Error::other)? {
            ConnectionState::WriteTraffic(mut traffic) => {
                return gather(bufs, plain, out, |data, out| {
                    encrypt_into(data, out, |d, o| traffic.encrypt(d, o))
                });
            }
            // Post-handshake messages go before the data.
            ConnectionState::EncodeTlsData(mut encode) => {
                encode_into(out, |o| encode.encode(o))?;
            }
            ConnectionState::TransmitTlsData(transmit) => transmit.done(),
            other => {
                debug!("TLS send in state {other:?}");
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "TLS connection closed",
                ));
            }
        }
    }
    Err(io::Error::other("TLS state machine made no progress"))
}

/// Appends what `encode` writes to `out`, growing it as rustls asks.
fn encode_into(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> io::Result<()> {
    fill_growing(out, 4096, "TLS encode", |o| {
        encode(o).map_err(|e| match e {
            EncodeError::InsufficientSize(e) => Fill::Need(e.required_size),
            e => Fill::Failed(e.to_string()),
        })
    })
}

/// Appends the encryption of `data` to `out`, growing it as rustls asks.
fn encrypt_into(
    data: &[u8],
    out: &mut Vec<u8>,
    mut encrypt: impl FnMut(&[u8], &mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    // Record overhead: header, content type, tag (TLS 1.3), explicit nonce (TLS 1.2).
    let room = data.len() + (data.len() / MAX_PLAINTEXT + 1) * 64;
    fill_growing(out, room, "TLS encrypt", |o| {
        encrypt(data, o).map_err(|e| match e {
            EncryptError::InsufficientSize(e) => Fill::Need(e.required_size),
            e => Fill::Failed(e.to_string()),
        })
    })
}

/// Why [`fill_growing`]'s writer stopped short.
enum Fill {
    /// It needs this many bytes of room.
    Need(usize),
    /// It failed for this reason.
    Failed(String),
}

/// Appends what `fill` writes to `out`, starting with `room` bytes and giving it the room it
/// asks for, at most four times (`what` names the writer in the error).
fn fill_growing(
    out: &mut Vec<u8>,
    mut room: usize,
    what: &str,
    mut fill: impl FnMut(&mut [u8]) -> Result<usize, Fill>,
) -> io::Result<()> {
    let start = out.len();
    for _ in 0..4 {
        out.resize(start + room, 0);
        match fill(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Fill::Need(n)) => room = n,
            Err(Fill::Failed(e)) => {
                out.truncate(start);
                return Err(io::Error::other(e));
            }
        }
    }
    out.truncate(start);
    Err(io::Error::other(format!("{what}: buffer size not settled")))
}

/// Writes `bytes` until done or `WouldBlock`; returns how many went out.
fn write_some(socket: &mut TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match Sink::send(socket, &bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Sends `out` after whatever is `pending`; what the socket does not take becomes pending.
/// Clears `out`.
fn transmit(socket: &mut TcpStream, pending: &mut Vec<u8>, out: &mut Vec<u8>) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    if !pending.is_empty() {
        pending.extend_from_slice(out);
        out.clear();
        let written = write_some(socket, pending)?;
        pending.drain(..written);
        if pending.is_empty() {
            *pending = Vec::new();
        }
        return Ok(());
    }
    let written = write_some(socket, out)?;
    if written < out.len() {
        *pending = out[written..].to_vec();
    }
    out.clear();
    Ok(())
}

/// Reads the records in `incoming` (whole and partial): decrypted application data is
/// appended to `buf` at `out`, handshake and post-handshake messages are answered, and the
/// handshake's outcome is recorded. Stops when more input is needed, `buf` is full, or the
/// peer closed. A handshake that finishes here hands over to [`RecordLayer`], which reads
/// on. On failure the TLS state is freed.
fn process(
    st: &mut TlsState,
    socket: &mut TcpStream,
    incoming: &mut [u8],
    buf: &mut [u8],
    out: &mut usize,
    outgoing: &mut Vec<u8>,
) -> io::Result<Progress> {
    if st.phase == Phase::Handshaking && looks_like_http(incoming) {
        // Not TLS at all: a browser or curl sent `http://` to this port. A TLS alert would
        // read as garbage (curl: "HTTP/0.9 not allowed"); a plain 400 says what to do, as
        // nginx does.
        outgoing.clear();
        write_response(
            outgoing,
            400,
            "text/plain; charset=utf-8",
            PLAIN_HTTP_BODY,
            Persistence::Close,
            &[],
        );
        let _ = write_some(socket, outgoing);
        outgoing.clear();
        st.engine = Engine::Gone;
        st.event = Some(TransportEvent::HandshakeFailed(TlsFailure::PlainHttp));
        st.phase = Phase::Done;
        debug!("TLS: plain HTTP request on the TLS listener; answered 400");
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "plain HTTP on the TLS listener",
        ));
    }
    let mut engine = std::mem::replace(&mut st.engine, Engine::Gone);
    let mut result = match &mut engine {
        Engine::Rustls(conn) => process_rustls(st, conn, socket, incoming, buf, out, outgoing),
        Engine::Records(tls) => process_records(st, tls, socket, incoming, buf, out, outgoing),
        Engine::Gone => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "TLS connection failed",
        )),
    };
    let handover_at = match (&result, &engine) {
        (Ok(done), Engine::Rustls(_)) if done.handover => Some(done.discard),
        _ => None,
    };
    if let Some(at) = handover_at {
        if let Engine::Rustls(conn) = std::mem::replace(&mut engine, Engine::Gone) {
            result = hand_over(*conn, socket, &mut st.pending, outgoing).and_then(|mut tls| {
                // The records behind the client's Finished (its first request, usually) are
                // ours to read now.
                let more = process_records(
                    st,
                    &mut tls,
                    socket,
                    &mut incoming[at..],
                    buf,
                    out,
                    outgoing,
                );
                engine = Engine::Records(tls);
                more.map(|more| Progress {
                    discard: at + more.discard,
                    ..more
                })
            });
        }
    }
    // A failed connection keeps nothing (the caller marks it done).
    if result.is_ok() && st.phase != Phase::Done {
        st.engine = engine;
    }
    result
}

/// The body of the 400 a plain HTTP request on the TLS listener gets (RFC 9110 §15.5.1).
const PLAIN_HTTP_BODY: &[u8] = b"this port speaks TLS: use https:// or wss://\n";

/// Whether handshake input starts like an HTTP/1.x request (its method's first letter,
/// `G` of `GET`…): a TLS record starts with its content type (20–24), never a capital
/// letter, so a record boundary during the handshake is never taken for one, and the first
/// byte decides (rustls would refuse it at once as a bad record).
fn looks_like_http(incoming: &[u8]) -> bool {
    incoming.first().is_some_and(u8::is_ascii_uppercase)
}

/// rustls finished a handshake (and has read nothing past the client's Finished): what it
/// still has to send (TLS 1.3: the session tickets; TLS 1.2: our Finished) goes out, then it
/// hands its traffic keys, sequence numbers and (TLS 1.3) key schedule to a [`RecordLayer`];
/// the rest of the rustls state is freed.
fn hand_over(
    mut conn: UnbufferedServerConnection,
    socket: &mut TcpStream,
    pending: &mut Vec<u8>,
    outgoing: &mut Vec<u8>,
) -> io::Result<RecordLayer> {
    let mut writable = false;
    for _ in 0..MAX_ROUNDS {
        // No input: rustls only hands out what it queued.
        let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut []);
        match state.map_err(io::Error::other)? {
            ConnectionState::EncodeTlsData(mut encode) => {
                encode_into(outgoing, |o| encode.encode(o))?;
            }
            ConnectionState::TransmitTlsData(t) => t.done(),
            ConnectionState::WriteTraffic(_) => {
                writable = true;
                break;
            }
            other => {
                debug!("TLS handover in state {other:?}");
                return Err(io::Error::other("unexpected TLS state at the handover"));
            }
        }
    }
    if !writable || conn.wants_write() {
        return Err(io::Error::other(
            "TLS handover: rustls still has records to send",
        ));
    }
    transmit(socket, pending, outgoing)?;
    let (secrets, kernel) = conn
        .dangerous_into_kernel_connection()
        .map_err(io::Error::other)?;
    RecordLayer::new(secrets, kernel).map_err(io::Error::other)
}

/// [`process`] on our record layer: a KeyUpdate's answer goes out at once (before any data
/// under the new key); a bad record is answered with its alert.
fn process_records(
    st: &mut TlsState,
    tls: &mut RecordLayer,
    socket: &mut TcpStream,
    incoming: &mut [u8],
    buf: &mut [u8],
    out: &mut usize,
    outgoing: &mut Vec<u8>,
) -> io::Result<Progress> {
    // After our close_notify nothing more is sent (a KeyUpdate is then only followed).
    let may_send = st.phase == Phase::Open;
    // A KeyUpdate the peer asked for is answered now only if the socket took all we sent
    // before; otherwise before our next data (so `pending` cannot grow by reads).
    let answer = may_send && st.pending.is_empty();
    match tls.read(incoming, buf, out, outgoing, answer) {
        Ok(done) => {
            transmit(socket, &mut st.pending, outgoing)?;
            Ok(Progress {
                discard: done.discard,
                peer_closed: done.peer_closed,
                full: done.full,
                handover: false,
            })
        }
        Err(fatal) => {
            debug!("{fatal}");
            if let Fatal::Send(alert) = fatal {
                if may_send {
                    let _ = tls.seal_alert(alert, outgoing);
                }
            }
            if may_send {
                let _ = transmit(socket, &mut st.pending, outgoing);
            }
            outgoing.clear();
            Err(io::Error::new(io::ErrorKind::InvalidData, fatal))
        }
    }
}

/// [`process`] on rustls: runs its state machine over `incoming`.
fn process_rustls(
    st: &mut TlsState,
    conn: &mut UnbufferedServerConnection,
    socket: &mut TcpStream,
    incoming: &mut [u8],
    buf: &mut [u8],
    out: &mut usize,
    outgoing: &mut Vec<u8>,
) -> io::Result<Progress> {
    let mut discard = 0;
    // Rounds in a row that neither consumed input nor handed out a record (the work of one
    // call is bounded by the input: every record consumes at least its 5-byte header).
    let mut idle = 0;
    while idle < MAX_ROUNDS {
        let out_before = *out;
        let UnbufferedStatus {
            discard: used,
            state,
        } = conn.process_tls_records(&mut incoming[discard..]);
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                fail(
                    st,
                    conn,
                    socket,
                    &mut incoming[discard + used..],
                    outgoing,
                    e.clone(),
                );
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        };
        let (mut full, mut stop, mut peer_closed) = (false, false, false);
        match state {
            ConnectionState::ReadTraffic(mut traffic) => loop {
                match traffic.peek_len() {
                    None => break,
                    Some(len) if len.get() > buf.len() - *out => {
                        full = true;
                        break;
                    }
                    Some(_) => {}
                }
                match traffic.next_record() {
                    Some(Ok(record)) => {
                        let n = record.payload.len();
                        buf[*out..*out + n].copy_from_slice(record.payload);
                        *out += n;
                        discard += record.discard;
                    }
                    Some(Err(e)) => {
                        drop(traffic);
                        fail(
                            st,
                            conn,
                            socket,
                            &mut incoming[discard + used..],
                            outgoing,
                            e.clone(),
                        );
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    None => break,
                }
            },
            ConnectionState::EncodeTlsData(mut encode) => {
                encode_into(outgoing, |o| encode.encode(o))?;
            }
            ConnectionState::TransmitTlsData(t) => {
                t.done();
                transmit(socket, &mut st.pending, outgoing)?;
            }
            ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => stop = true,
            ConnectionState::PeerClosed | ConnectionState::Closed => peer_closed = true,
            other => {
                // Early data is not enabled: nothing else is expected.
                debug!("TLS: unexpected state {other:?}");
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unexpected TLS state",
                ));
            }
        }
        discard += used;
        idle = if used > 0 || *out > out_before {
            0
        } else {
            idle + 1
        };
        let mut handover = false;
        if st.phase == Phase::Handshaking && !conn.is_handshaking() {
            st.phase = Phase::Open;
            st.event = Some(TransportEvent::HandshakeDone);
            // rustls is stopped right behind the client's Finished (it hands out what it
            // queued, session tickets or its own Finished, before it reads on), so it has
            // read no record of ours.
            handover = st.handover;
        }
        if full || stop || peer_closed || handover {
            return Ok(Progress {
                discard,
                peer_closed,
                full,
                handover,
            });
        }
    }
    Err(io::Error::other("TLS state machine made no progress"))
}

/// The handshake or the connection failed with `error`: records why, and sends the alert
/// rustls queued for it (best effort). `incoming` is the input not yet discarded, which
/// rustls must be given again.
fn fail(
    st: &mut TlsState,
    conn: &mut UnbufferedServerConnection,
    socket: &mut TcpStream,
    incoming: &mut [u8],
    outgoing: &mut Vec<u8>,
    error: rustls::Error,
) {
    if st.phase == Phase::Handshaking {
        st.event = Some(TransportEvent::HandshakeFailed(TlsFailure::of(&error)));
    }
    st.phase = Phase::Done;
    debug!("TLS: {error}");
    // What rustls queued (a ServerHello before a late failure, then the alert) is handed
    // out first by each call, before any input is looked at; a call past the queue would
    // deframe the rest of the input again, so calls stop when it is empty.
    for _ in 0..8 {
        if !conn.wants_write() {
            break;
        }
        let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut *incoming);
        match state {
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                if encode_into(outgoing, |o| encode.encode(o)).is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
    let _ = transmit(socket, &mut st.pending, outgoing);
    outgoing.clear();
}

impl Read for TlsStream {
    /// Decrypted application data; `WouldBlock` when none is ready (a handshake in progress,
    /// a partial record); 0 at the peer's close_notify or EOF.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.inner.state.fin_owed {
            // Our close_notify's end, and then the FIN, when the socket takes them.
            let _ = self.write_pending();
        }
        if self.inner.state.eof {
            return Ok(0);
        }
        if self.inner.state.phase == Phase::Done {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS connection failed",
            ));
        }
        with_scratch(|sc| self.read_with(buf, sc))
    }
}

impl Sink for TlsStream {
    /// Encrypts up to 64 KiB of `bufs` and writes the records; returns the plaintext bytes
    /// taken. Ciphertext the socket refuses stays pending and goes out first next time; while
    /// any is pending this takes nothing (`WouldBlock`).
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if !self.write_pending()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        with_scratch(|sc| self.send_with(bufs, sc))
    }

    fn has_pending(&self) -> bool {
        !self.inner.state.pending.is_empty()
    }

    fn flush_pending(&mut self) -> io::Result<bool> {
        self.write_pending()
    }
}

impl Transport for TlsStream {
    type Acceptor = Arc<ServerConfig>;

    /// A TLS read needs room for one whole record past the worker's longest stash.
    const READ_EXTRA: usize = MAX_RECORD + 2048;

    fn accept(socket: TcpStream, config: &Arc<ServerConfig>) -> io::Result<Self> {
        TlsStream::new(socket, Arc::clone(config))
    }

    /// close_notify (if the handshake is done), then FIN. The close_notify goes out whole:
    /// what the socket does not take now stays pending (behind anything already pending),
    /// and the FIN waits for it ([`Sink::flush_pending`] or the next read sends both); a
    /// connection that never drains is removed by its close timeout.
    fn shutdown_write(&mut self) -> io::Result<()> {
        let Inner { socket, state: st } = &mut *self.inner;
        if st.phase == Phase::Open {
            st.phase = Phase::Closing;
            let mut alert = Vec::with_capacity(64);
            match &mut st.engine {
                Engine::Records(tls) => {
                    let _ = tls.seal_alert(Alert::CloseNotify, &mut alert);
                }
                Engine::Rustls(conn) => {
                    let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut st.partial);
                    if let Ok(ConnectionState::WriteTraffic(mut traffic)) = state {
                        alert.resize(64, 0);
                        let n = traffic.queue_close_notify(&mut alert).unwrap_or(0);
                        alert.truncate(n);
                    }
                }
                Engine::Gone => {}
            }
            transmit(socket, &mut st.pending, &mut alert)?;
            if !st.pending.is_empty() {
                st.fin_owed = true;
                return Ok(());
            }
        }
        socket.shutdown(Shutdown::Write)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.socket.peer_addr()
    }

    fn abort_on_close(&mut self) -> io::Result<()> {
        self.inner.socket.abort_on_close()
    }

    fn may_have_more(&self, _n: usize, _offered: usize) -> bool {
        self.inner.state.more
    }

    fn take_event(&mut self) -> Option<TransportEvent> {
        self.inner.state.event.take()
    }

    fn in_handshake(&self) -> bool {
        self.inner.state.phase == Phase::Handshaking
    }
}

impl Source for TlsStream {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        self.inner.socket.register(registry, token, interest)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        self.inner.socket.reregister(registry, token, interest)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.inner.socket.deregister(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::connection::Connection;

    /// A TLS connection in the worker's slab is the plain one plus one pointer (8 bytes); the
    /// TLS state lives behind it. Printed for the README's table.
    #[test]
    fn tls_connection_adds_one_pointer() {
        let plain = std::mem::size_of::<Connection<TcpStream>>();
        let tls = std::mem::size_of::<Connection<TlsStream>>();
        let inner = std::mem::size_of::<Inner>();
        let record = std::mem::size_of::<RecordLayer>();
        let rustls = std::mem::size_of::<UnbufferedServerConnection>();
        eprintln!(
            "Connection<TcpStream> = {plain}, Connection<TlsStream> = {tls}, Inner = {inner} \
             (RecordLayer = {record}; during the handshake, boxed: UnbufferedServerConnection = \
             {rustls})"
        );
        assert!(tls <= plain + 8, "{tls} > {plain} + 8");
        assert_eq!(std::mem::size_of::<TlsStream>(), 8);
        assert!(inner < record + 128, "{inner}");
    }

    use std::io::Write;
    use std::time::{Duration, Instant};

    use rustls::ClientConnection;

    use crate::tls::record::tests::configs_for;

    /// A TLS connection over loopback: our stream on the accepted side, a rustls client on a
    /// non-blocking socket, handshaken.
    struct Pair {
        server: TlsStream,
        client: ClientConnection,
        sock: std::net::TcpStream,
    }

    impl Pair {
        /// Over `version`, with the handover to [`RecordLayer`] if `handover`.
        fn new(version: &'static rustls::SupportedProtocolVersion, handover: bool) -> Pair {
            let suites = [
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
                rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ];
            let (mut server_config, client_config) = configs_for(&suites, version);
            Arc::make_mut(&mut server_config).enable_secret_extraction = handover;
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let sock = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (accepted, _) = listener.accept().unwrap();
            sock.set_nonblocking(true).unwrap();
            accepted.set_nonblocking(true).unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut pair = Pair {
                server: TlsStream::new(TcpStream::from_std(accepted), server_config).unwrap(),
                client: ClientConnection::new(client_config, name).unwrap(),
                sock,
            };
            let mut buf = vec![0u8; 64 * 1024];
            pair.until("handshake", |p| {
                match p.server.read(&mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    other => panic!("server read during the handshake: {other:?}"),
                }
                !p.client.is_handshaking() && !p.server.in_handshake()
            });
            assert_eq!(
                pair.server.take_event(),
                Some(TransportEvent::HandshakeDone)
            );
            pair
        }

        /// Moves the client's bytes both ways, then asks `done`; at most 5 s.
        fn until(&mut self, what: &str, mut done: impl FnMut(&mut Pair) -> bool) {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                self.pump_client();
                if done(self) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            panic!("{what}: not done in 5 s");
        }

        /// The client writes what it has and reads what came; true at the socket's EOF.
        fn pump_client(&mut self) -> bool {
            while self.client.wants_write() {
                match self.client.write_tls(&mut self.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("client write: {e}"),
                }
            }
            match self.client.read_tls(&mut self.sock) {
                Ok(0) => return true,
                Ok(_) => {
                    self.client.process_new_packets().expect("client process");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("client read: {e}"),
            }
            false
        }

        /// Sends 64 KiB chunks from the server until its socket refuses one (the client
        /// reads nothing meanwhile) and some ciphertext is left pending; the plaintext bytes
        /// taken.
        fn fill_server_socket(&mut self) -> usize {
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0usize;
            for _ in 0..10_000 {
                match self.server.send(&chunk) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("send: {e}"),
                }
            }
            assert!(self.server.has_pending(), "the socket never filled");
            sent
        }

        /// An echo of `data` from the client through the server and back.
        fn echo(&mut self, data: &[u8]) {
            let mut written = 0;
            let mut got = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            self.until("server read", |p| {
                // rustls takes 64 KiB of plaintext at a time.
                written += p.client.writer().write(&data[written..]).unwrap();
                match p.server.read(&mut buf) {
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("server read: {e}"),
                }
                got.len() >= data.len()
            });
            assert_eq!(got, data);
            let mut sent = 0;
            let mut back = Vec::new();
            self.until("client read", |p| {
                if sent < data.len() {
                    match p.server.send(&data[sent..]) {
                        Ok(n) => sent += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("server send: {e}"),
                    }
                }
                let _ = p.server.flush_pending();
                let mut chunk = vec![0u8; 64 * 1024];
                while let Ok(n) = p.client.reader().read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    back.extend_from_slice(&chunk[..n]);
                }
                back.len() >= data.len()
            });
            assert_eq!(back, data);
        }
    }

    /// Bytes behind the client's close_notify are not kept: the read returns the data before
    /// it, then EOF, and the connection holds no ciphertext.
    #[test]
    fn nothing_behind_a_close_notify_is_kept() {
        let mut pair = Pair::new(&rustls::version::TLS13, true);
        pair.client.writer().write_all(b"last words").unwrap();
        pair.client.send_close_notify();
        let mut wire = Vec::new();
        while pair.client.wants_write() {
            pair.client.write_tls(&mut wire).unwrap();
        }
        // A record's worth of bytes after it, and the start of another.
        wire.extend_from_slice(&[23, 3, 3, 0, 40]);
        wire.extend_from_slice(&[0; 40]);
        wire.extend_from_slice(&[23, 3, 3, 0x40, 0]);
        wire.extend_from_slice(&[0; 1000]);
        pair.sock.set_nonblocking(false).unwrap();
        pair.sock.write_all(&wire).unwrap();
        pair.sock.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = Vec::new();
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < Duration::from_secs(5), "no EOF");
            match pair.server.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("server read: {e}"),
            }
        }
        assert_eq!(got, b"last words");
        assert_eq!(pair.server.inner.state.partial.capacity(), 0);
    }

    /// A client that never reads cannot grow what waits for its socket: with our records
    /// already pending (its receive window full), KeyUpdate(update_requested) after
    /// KeyUpdate, each after a byte of data (which resets the flood count), is answered
    /// once, not once per request (RFC 8446 §4.6.3 asks for a KeyUpdate of ours before our
    /// next application data), and the answer goes out before that data.
    #[test]
    fn key_update_requests_do_not_grow_pending_for_a_client_that_never_reads() {
        let mut pair = Pair::new(&rustls::version::TLS13, true);
        pair.echo(b"warm up");
        let sent = pair.fill_server_socket();
        let before = pair.server.inner.state.pending.len();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0usize;
        for _ in 0..3000 {
            pair.client.refresh_traffic_keys().expect("refresh");
            pair.client.writer().write_all(b"d").expect("write");
            while pair.client.wants_write() {
                pair.client.write_tls(&mut pair.sock).expect("client write");
            }
            match pair.server.read(&mut buf) {
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("server read: {e}"),
            }
        }
        // The client still reads nothing.
        let start = Instant::now();
        while got < 3000 && start.elapsed() < Duration::from_secs(5) {
            match pair.server.read(&mut buf) {
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("server read: {e}"),
            }
        }
        assert_eq!(got, 3000);
        let after = pair.server.inner.state.pending.len();
        assert!(
            after <= before + 64,
            "pending grew from {before} to {after}"
        );
        // Everything sent arrives, then what is sent after (under the updated key).
        let mut back = 0usize;
        let mut tail = Vec::new();
        let mut tail_sent = false;
        pair.until("client reads all", |p| {
            let _ = p.server.flush_pending();
            if !tail_sent && !p.server.has_pending() {
                tail_sent = p.server.send(b"tail").is_ok();
            }
            loop {
                match p.client.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) if back < sent => {
                        let x = n.min(sent - back);
                        back += x;
                        tail.extend_from_slice(&buf[x..n]);
                    }
                    Ok(n) => tail.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("client: {e}"),
                }
            }
            tail == b"tail"
        });
    }

    /// A handshake over loopback where the client's first application data (`data`) goes
    /// out in the same write as its Finished; returns what the server read, the client, the
    /// server and the client's socket.
    fn finished_and_data_together(
        server_config: &Arc<ServerConfig>,
        client_config: &Arc<rustls::ClientConfig>,
        data: &[u8],
    ) -> (Vec<u8>, ClientConnection, TlsStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sock = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        sock.set_nonblocking(true).unwrap();
        accepted.set_nonblocking(true).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut server =
            TlsStream::new(TcpStream::from_std(accepted), Arc::clone(server_config)).unwrap();
        let mut client = ClientConnection::new(Arc::clone(client_config), name).unwrap();
        let mut got = Vec::new();
        let mut sent = false;
        let mut buf = vec![0u8; 64 * 1024];
        let start = Instant::now();
        while got.len() < data.len() && start.elapsed() < Duration::from_secs(5) {
            if !client.is_handshaking() && !sent {
                // Queued behind the Finished (TLS 1.3; TLS 1.2 resumed): one write.
                client.writer().write_all(data).unwrap();
                sent = true;
            }
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            sock.set_nonblocking(false).unwrap();
            sock.write_all(&wire).unwrap();
            sock.set_nonblocking(true).unwrap();
            match client.read_tls(&mut sock) {
                Ok(_) => {
                    client.process_new_packets().expect("client process");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("client read: {e}"),
            }
            match server.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("server read: {e}"),
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(server.on_own_record_layer());
        (got, client, server, sock)
    }

    /// The client's first request in the same segment as its Finished is read, whole and in
    /// order, across the handover: when rustls stops right behind the Finished (TLS 1.3
    /// sending session tickets), when it decrypts the first record itself (TLS 1.3 without
    /// tickets, TLS 1.2 resumed, where our Finished went first), and the client then reads
    /// what we send under the handed-over keys.
    #[test]
    fn data_behind_the_finished_is_read_across_the_handover() {
        let data: Vec<u8> = (0..40_000).map(|i| (i % 251) as u8).collect();
        let suites = [
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ];
        let (server13, client13) = configs_for(&suites, &rustls::version::TLS13);
        let mut no_tickets = server13.as_ref().clone();
        no_tickets.send_tls13_tickets = 0;
        let mut fresh13 = client13.as_ref().clone();
        fresh13.resumption = rustls::client::Resumption::disabled();
        let fresh13 = Arc::new(fresh13);
        let (server12, client12) = configs_for(&suites, &rustls::version::TLS12);
        for (name, server_config, client_config, resumed) in [
            ("TLS 1.3", server13, &client13, false),
            ("TLS 1.3, no tickets", Arc::new(no_tickets), &fresh13, false),
            ("TLS 1.2", Arc::clone(&server12), &client12, false),
            ("TLS 1.2 resumed", server12, &client12, true),
        ] {
            let (got, mut client, mut server, mut sock) =
                finished_and_data_together(&server_config, client_config, &data);
            assert!(got == data, "{name}: {} of {} bytes", got.len(), data.len());
            let kind = client.handshake_kind();
            assert_eq!(
                kind == Some(rustls::HandshakeKind::Resumed),
                resumed,
                "{name}: {kind:?}"
            );
            let mut wire = Vec::new();
            assert_eq!(server.send(b"answer").unwrap(), 6);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                let _ = server.flush_pending();
                if let Ok(n) = client.read_tls(&mut sock) {
                    if n > 0 {
                        client.process_new_packets().expect("client");
                    }
                }
                let mut chunk = [0u8; 64];
                if let Ok(n) = client.reader().read(&mut chunk) {
                    wire.extend_from_slice(&chunk[..n]);
                }
                if wire.len() >= 6 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(wire, b"answer", "{name}");
        }
    }

    /// A connection moves to our record layer once its handshake is over, in TLS 1.3 and 1.2;
    /// without secret extraction in the configuration it stays on rustls. All echo.
    #[test]
    fn connections_are_handed_over_unless_configured_not_to() {
        for (version, number) in [
            (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
            (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        ] {
            for handover in [true, false] {
                let mut pair = Pair::new(version, handover);
                assert_eq!(pair.server.on_own_record_layer(), handover, "{number:?}");
                assert_eq!(pair.server.protocol_version(), Some(number));
                pair.echo(b"hello");
                pair.echo(&vec![7u8; 100_000]);
            }
        }
    }

    /// The close_notify goes out whole before the FIN even when the socket cannot take it
    /// at once (a full send buffer): the client reads every byte sent, then a clean close
    /// (close_notify), then EOF. On our record layer and on rustls's, in TLS 1.3 and 1.2.
    #[test]
    fn close_notify_waits_for_a_full_socket_and_goes_out_whole() {
        for (version, handover) in [
            (&rustls::version::TLS13, true),
            (&rustls::version::TLS12, true),
            (&rustls::version::TLS13, false),
        ] {
            let mut pair = Pair::new(version, handover);
            pair.echo(b"warm up");
            let sent = pair.fill_server_socket();
            pair.server.shutdown_write().unwrap();
            assert!(pair.server.has_pending());
            assert!(pair.server.inner.state.fin_owed);
            let mut got = 0usize;
            let mut eof = false;
            let mut clean = false;
            let mut buf = vec![0u8; 64 * 1024];
            pair.until("the close", |p| {
                let _ = p.server.flush_pending();
                eof |= p.pump_client();
                loop {
                    match p.client.reader().read(&mut buf) {
                        Ok(0) => {
                            clean = true;
                            break;
                        }
                        Ok(n) => got += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("client: {e} after {got} bytes"),
                    }
                }
                eof && clean
            });
            assert_eq!(got, sent, "{version:?}");
            assert!(!pair.server.has_pending());
        }
    }
}
