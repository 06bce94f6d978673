//! One client connection of a child process: the socket, its WebSocket session (RFC 6455 §4.1
//! opening handshake, then frames) and how it ended. Scenarios decide what is said on it; this
//! file only knows the protocol.
//!
//! A connection goes `Connecting` (TCP) → `Handshaking` (upgrade request written, waiting for
//! the 101) → `Open`, or through `Subscribing` when the scenario sends a `subscribe` op first,
//! and, for a close handshake of our own, `Closing` → `AwaitEof`.
//!
//! With `--deflate` the upgrade request offers permessage-deflate (RFC 7692), the 101 must
//! accept it ([`crate::deflate::check_answer`]), and messages that arrive with RSV1 are
//! inflated here, so scenarios only ever see plain messages.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;

use edgepush::protocol::frame::{write_masked_frame, OpCode};
use edgepush::protocol::handshake::accept_key;
use edgepush::protocol::message::{Decoder, DecoderConfig, Event, MessageKind};
use mio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

use crate::deflate::{check_answer, Agreed, Deflater, InflateError, Inflater};

/// The longest response head (status line and headers) accepted for the upgrade.
const MAX_HEAD: usize = 16 * 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// TCP connect in progress.
    Connecting,
    /// Upgrade request sent; waiting for the `101 Switching Protocols` head.
    Handshaking,
    /// Upgraded; our `subscribe` op is sent and its `subscribed` answer awaited.
    Subscribing,
    /// Upgraded (and subscribed where the scenario subscribes).
    Open,
    /// Our Close is sent; waiting for the server's (RFC 6455 §5.5.1).
    Closing,
    /// Both Closes exchanged; waiting for the server to close TCP (§7.1.1).
    AwaitEof,
}

/// Whether a connection's socket is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Read as data arrives.
    Live,
    /// Not read at all (a slow reader): the server's writes pile up.
    Stopped,
    /// Read again after being stopped, to see how the server ended it; nothing is answered
    /// (no Pong, no Close echo).
    Draining,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// A failure, named by its error kind (`connect_refused`, `bad_accept`, …).
    Error(String),
    /// The server closed TCP (read returned 0).
    Eof,
    /// `ECONNRESET` or `EPIPE`.
    Reset,
    /// The server's Close frame with this status code (1005 when it carried none).
    ServerClose(u16),
    /// Finished as planned.
    Done,
}

impl End {
    /// The error kind this end is counted under (empty for [`End::Done`]).
    pub fn kind(&self) -> String {
        match self {
            End::Error(k) => k.clone(),
            End::Eof => "eof".into(),
            End::Reset => "reset".into(),
            End::ServerClose(c) => format!("server_close_{c}"),
            End::Done => String::new(),
        }
    }

    /// The end an I/O error means: a reset, or an error of its kind.
    pub fn from_io(e: &io::Error) -> End {
        match e.raw_os_error() {
            Some(libc::ECONNRESET) | Some(libc::EPIPE) => End::Reset,
            _ => End::Error(error_kind(e).into()),
        }
    }
}

/// The socket-free part of a connection: its state, number and the bytes it owes the server.
/// This is what scenarios act on.
#[derive(Debug)]
pub struct Session {
    /// Where the connection is in its life.
    pub state: ClientState,
    /// The connection's number (`{n}` in the URL).
    pub number: u64,
    /// The node it connects to: an index into the child's targets (the `--url` list).
    pub node: usize,
    /// Our `Sec-WebSocket-Key` (base64 of 16 bytes).
    key: [u8; 24],
    /// Encoded bytes not yet written; `written` of them already are.
    out: Vec<u8>,
    written: usize,
    /// When the TCP connect started (CLOCK_MONOTONIC ns).
    pub started_ns: u64,
    /// Whether the socket is read (slow readers stop).
    pub reading: Reading,
    /// permessage-deflate as the server's 101 agreed to it (`None`: not in use).
    pub deflate: Option<Agreed>,
}

impl Session {
    /// Queues one masked frame (RFC 6455 §5.3: a client masks every frame) with `mask`.
    pub fn send(&mut self, op: OpCode, payload: &[u8], mask: [u8; 4]) {
        write_masked_frame(&mut self.out, true, op, payload, mask);
    }

    /// Queues one data message: compressed by `deflater` with RSV1 set (RFC 7692 §6) when the
    /// connection agreed to permessage-deflate and a deflater is given, plain otherwise.
    pub fn send_data(
        &mut self,
        op: OpCode,
        payload: &[u8],
        mask: [u8; 4],
        deflater: Option<&mut Deflater>,
    ) {
        match deflater {
            Some(d) if self.deflate.is_some() && !op.is_control() => {
                let start = self.out.len();
                write_masked_frame(&mut self.out, true, op, d.compress(payload), mask);
                self.out[start] |= 0x40;
            }
            _ => self.send(op, payload, mask),
        }
    }

    /// Queues a Close frame carrying `code` (§5.5.1).
    pub fn send_close(&mut self, code: u16, mask: [u8; 4]) {
        self.send(OpCode::Close, &code.to_be_bytes(), mask);
    }

    /// Queues the upgrade request (§4.1) for `path` (`{n}` becomes our number) on `host`,
    /// offering the extensions in `offer` (a `Sec-WebSocket-Extensions` value), if any.
    fn write_upgrade_request(&mut self, path: &str, host: &str, offer: Option<&str>) {
        let path = path.replace("{n}", &self.number.to_string());
        let _ = write!(
            self.out,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
        );
        self.out.extend_from_slice(&self.key);
        if let Some(offer) = offer {
            let _ = write!(self.out, "\r\nSec-WebSocket-Extensions: {offer}");
        }
        self.out.extend_from_slice(
            b"\r\nSec-WebSocket-Version: 13\r\nUser-Agent: edgepush-load\r\n\r\n",
        );
    }
}

/// What [`Client::feed`] hands its caller.
pub enum Input<'a> {
    /// The server's 101 arrived and checked out: the connection is upgraded.
    Upgraded,
    /// A frame-level event: a whole message or a control frame.
    Event(Event<'a>),
}

/// What a child's connections share for permessage-deflate on the receiving side: the offer
/// they send, the inflater of every connection whose server keeps no context, and counts.
#[derive(Debug, Default)]
pub struct DeflateIn {
    /// The `Sec-WebSocket-Extensions` value offered (`--deflate`); `None`: no offer.
    pub offer: Option<String>,
    /// Reset per message; used when the server agreed to `server_no_context_takeover`.
    pub shared: Inflater,
    /// Messages that arrived compressed (RSV1) and were inflated.
    pub inflated: u64,
}

/// One client connection: a non-blocking socket, its frame decoder, the bytes read but not yet
/// decoded, and its [`Session`].
pub struct Client {
    /// Registered with the child's `Poll` under the connection's slot.
    pub socket: TcpStream,
    /// Bytes read from the socket so far (the wire: frame headers, compressed payloads, and
    /// the 101 head).
    pub wire_in: u64,
    decoder: Decoder,
    /// This connection's own inflater, when the server keeps its context across messages
    /// (no `server_no_context_takeover`); made on the first compressed message.
    inflater: Option<Box<Inflater>>,
    /// Read but not decoded yet: a partial head or frame, carried to the next read.
    unread: Vec<u8>,
    /// State and outgoing bytes.
    pub session: Session,
}

/// Where and how to connect.
pub struct ConnectTo<'a> {
    /// The server.
    pub addr: SocketAddr,
    /// Source address to bind (with `IP_BIND_ADDRESS_NO_PORT`), if any.
    pub source_ip: Option<Ipv4Addr>,
    /// `SO_RCVBUF` to set before connecting (0 = the default).
    pub recv_buffer: usize,
    /// The connection's number (`{n}` in the URL).
    pub number: u64,
    /// The node `addr` is (an index into the child's targets).
    pub node: usize,
    /// 16 random bytes for the `Sec-WebSocket-Key`.
    pub key_bytes: &'a [u8; 16],
}

impl Client {
    /// Starts a non-blocking TCP connect; the error is its kind. The caller sets
    /// `session.started_ns` once the socket is registered.
    pub fn connect(to: ConnectTo<'_>) -> Result<Client, String> {
        let domain = if to.addr.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let err = |e: io::Error| error_kind(&e).to_string();
        let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
        socket.set_nonblocking(true).map_err(err)?;
        if to.recv_buffer > 0 {
            socket.set_recv_buffer_size(to.recv_buffer).map_err(err)?;
        }
        if let Some(ip) = to.source_ip {
            let one: libc::c_int = 1;
            // SAFETY: setsockopt on our own socket with a c_int option value.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            socket
                .bind(&SocketAddr::new(IpAddr::V4(ip), 0).into())
                .map_err(err)?;
        }
        match socket.connect(&to.addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(err(e)),
        }
        let socket = TcpStream::from_std(socket.into());
        let _ = socket.set_nodelay(true);
        Ok(Client {
            socket,
            wire_in: 0,
            decoder: Decoder::new(),
            inflater: None,
            unread: Vec::new(),
            session: Session {
                state: ClientState::Connecting,
                number: to.number,
                node: to.node,
                key: base64_16(to.key_bytes),
                out: Vec::new(),
                written: 0,
                started_ns: 0,
                reading: Reading::Live,
                deflate: None,
            },
        })
    }

    /// While `Connecting`: has the TCP connect finished? Once it has, queues the upgrade request
    /// for `path` on `host` (offering `offer`, if any) and moves to `Handshaking`.
    /// `Ok(false)`: not yet.
    pub fn finish_connect(
        &mut self,
        path: &str,
        host: &str,
        offer: Option<&str>,
    ) -> Result<bool, End> {
        match self.socket.take_error() {
            Ok(Some(e)) | Err(e) => return Err(End::Error(error_kind(&e).into())),
            Ok(None) => {}
        }
        match self.socket.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
            Err(e) => return Err(End::Error(error_kind(&e).into())),
        }
        self.session.write_upgrade_request(path, host, offer);
        self.session.state = ClientState::Handshaking;
        Ok(true)
    }

    /// Writes what the session owes until done or `WouldBlock`.
    pub fn flush(&mut self) -> io::Result<()> {
        let s = &mut self.session;
        while s.written < s.out.len() {
            match self.socket.write(&s.out[s.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => s.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        s.out.clear();
        s.written = 0;
        Ok(())
    }

    /// Reads into `buf` (after the bytes carried from the last read) until drained, handing
    /// each result to `handle`. A short read means the socket had nothing more (a later
    /// arrival raises a new edge), so the extra read that would only say `WouldBlock` is
    /// skipped — unless the event reported a hang-up (`closing`), when reading goes on until
    /// EOF. Stops early once the session is no longer read ([`Reading::Stopped`]).
    pub fn read(
        &mut self,
        buf: &mut [u8],
        closing: bool,
        cfg: &DecoderConfig,
        deflate: &mut DeflateIn,
        handle: &mut dyn FnMut(&mut Session, Input<'_>) -> Option<End>,
    ) -> Option<End> {
        loop {
            let s = self.unread.len();
            if s > 0 {
                if s > buf.len() / 2 {
                    return Some(End::Error("oversized_stash".into()));
                }
                buf[..s].copy_from_slice(&self.unread);
                self.unread.clear();
            }
            match self.socket.read(&mut buf[s..]) {
                Ok(0) => return Some(End::Eof),
                Ok(n) => {
                    self.wire_in += n as u64;
                    let drained = s + n < buf.len() && !closing;
                    if let Some(end) = self.feed(&mut buf[..s + n], cfg, deflate, handle) {
                        return Some(end);
                    }
                    if self.session.reading == Reading::Stopped || drained {
                        return None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.unread.extend_from_slice(&buf[..s]);
                    return None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.unread.extend_from_slice(&buf[..s]);
                }
                Err(e) => return Some(End::from_io(&e)),
            }
        }
    }

    /// Feeds `buf` (carried bytes + new ones): the response head while `Handshaking`, then
    /// frames. Leftovers are carried to the next read.
    fn feed(
        &mut self,
        buf: &mut [u8],
        cfg: &DecoderConfig,
        deflate: &mut DeflateIn,
        handle: &mut dyn FnMut(&mut Session, Input<'_>) -> Option<End>,
    ) -> Option<End> {
        let mut pos = 0;
        if self.session.state == ClientState::Handshaking {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                if buf.len() > MAX_HEAD {
                    return Some(End::Error("bad_response".into()));
                }
                self.unread.extend_from_slice(buf);
                return None;
            };
            let head_len = end + 4;
            match check_response(
                &buf[..head_len],
                &self.session.key,
                deflate.offer.as_deref(),
            ) {
                Ok(agreed) => self.session.deflate = agreed,
                Err(kind) => return Some(End::Error(kind)),
            }
            // A scenario cannot end a connection on its upgrade.
            let _ = handle(&mut self.session, Input::Upgraded);
            pos = head_len;
        }
        let agreed = self.session.deflate;
        loop {
            let step = match self
                .decoder
                .decode_with(&mut buf[pos..], cfg, agreed.is_some())
            {
                Ok(step) => step,
                Err(_) => return Some(End::Error("protocol_error".into())),
            };
            pos += step.consumed;
            let event = match (step.event, agreed) {
                (Some(Event::Message { kind, data }), Some(agreed)) if step.compressed => {
                    deflate.inflated += 1;
                    let (inflater, reset) = if agreed.server_no_context_takeover {
                        (&mut deflate.shared, true)
                    } else {
                        (&mut **self.inflater.get_or_insert_with(Box::default), false)
                    };
                    let data = match inflater.inflate(data, reset, cfg.max_message_size) {
                        Ok(data) => data,
                        Err(InflateError::BadData) => {
                            return Some(End::Error("bad_deflate_data".into()))
                        }
                        Err(InflateError::TooBig) => {
                            return Some(End::Error("inflated_too_big".into()))
                        }
                    };
                    // The decoder left the UTF-8 of a compressed text message to us.
                    if kind == MessageKind::Text && std::str::from_utf8(data).is_err() {
                        return Some(End::Error("invalid_utf8".into()));
                    }
                    Some(Event::Message { kind, data })
                }
                (event, _) => event,
            };
            match event {
                Some(ev) => {
                    if let Some(end) = handle(&mut self.session, Input::Event(ev)) {
                        return Some(end);
                    }
                }
                None if step.consumed == 0 => break,
                None => {}
            }
        }
        self.unread.extend_from_slice(&buf[pos..]);
        None
    }
}

/// Checks a 101 response head (through the blank line) for `key` (RFC 6455 §4.1, §4.2.2:
/// status 101 and `Sec-WebSocket-Accept` = base64(SHA-1(key + GUID))) and its
/// `Sec-WebSocket-Extensions` against `offer`, what we offered (RFC 7692 §7.1, see
/// [`check_answer`]). Returns the permessage-deflate agreement, if any; the error is a kind.
pub fn check_response(
    head: &[u8],
    key: &[u8],
    offer: Option<&str>,
) -> Result<Option<Agreed>, String> {
    let text = std::str::from_utf8(head).map_err(|_| "bad_response".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| "bad_response".to_string())?;
    if status != 101 {
        return Err(format!("upgrade_status_{status}"));
    }
    let want = accept_key(key);
    let mut accepted = None;
    let mut extensions: Option<String> = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if name.eq_ignore_ascii_case("sec-websocket-accept") && accepted.is_none() {
                accepted = Some(value.trim().as_bytes() == want);
            } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
                // Several header lines are one comma-separated list (RFC 9110 §5.3).
                let all = extensions.get_or_insert_with(String::new);
                if !all.is_empty() {
                    all.push(',');
                }
                all.push_str(value.trim());
            }
        }
    }
    if accepted != Some(true) {
        return Err("bad_accept".into());
    }
    check_answer(extensions.as_deref(), offer)
}

/// Standard base64 of 16 bytes (a `Sec-WebSocket-Key`, RFC 6455 §4.1).
pub fn base64_16(bytes: &[u8; 16]) -> [u8; 24] {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = [b'='; 24];
    for (i, chunk) in bytes.chunks(3).enumerate() {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for j in 0..chars {
            out[i * 4 + j] = ALPHABET[((n >> (18 - 6 * j)) & 63) as usize];
        }
    }
    out
}

/// The error kind an I/O error is counted under.
pub fn error_kind(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "connect_refused",
        Some(libc::ECONNRESET) => "reset",
        Some(libc::EPIPE) => "broken_pipe",
        Some(libc::EADDRNOTAVAIL) => "no_ephemeral_port",
        Some(libc::EADDRINUSE) => "address_in_use",
        Some(libc::EMFILE) | Some(libc::ENFILE) => "too_many_open_files",
        Some(libc::ETIMEDOUT) => "connect_timeout",
        Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => "unreachable",
        _ => "io_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sec_websocket_key_is_base64() {
        // RFC 6455 §1.3: "the sample nonce" → dGhlIHNhbXBsZSBub25jZQ==
        assert_eq!(&base64_16(b"the sample nonce"), b"dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(&base64_16(&[0xff; 16]), b"/////////////////////w==");
    }

    #[test]
    fn response_checks() {
        let key = b"dGhlIHNhbXBsZSBub25jZQ==";
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(check_response(ok, key, None), Ok(None));
        let bad = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert_eq!(check_response(bad, key, None), Err("bad_accept".into()));
        let missing = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        assert_eq!(check_response(missing, key, None), Err("bad_accept".into()));
        let refused = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            check_response(refused, key, None),
            Err("upgrade_status_404".into())
        );
        assert_eq!(
            check_response(b"garbage\r\n\r\n", key, None),
            Err("bad_response".into())
        );
        // permessage-deflate: the answer is checked against the offer (RFC 7692 §7.1).
        let offer = Some(crate::deflate::DEFAULT_OFFER);
        let with = |ext: &str| {
            format!("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n{ext}\r\n")
        };
        let agreed =
            with("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n");
        let a = check_response(agreed.as_bytes(), key, offer);
        assert!(a.is_ok_and(|a| a.is_some_and(|a| a.server_no_context_takeover)));
        assert_eq!(
            check_response(with("").as_bytes(), key, offer),
            Err("deflate_declined".into())
        );
        assert_eq!(
            check_response(agreed.as_bytes(), key, None),
            Err("bad_extension".into())
        );
        let twice = with("Sec-WebSocket-Extensions: permessage-deflate\r\nSec-WebSocket-Extensions: permessage-deflate\r\n");
        assert_eq!(
            check_response(twice.as_bytes(), key, offer),
            Err("bad_extension".into())
        );
    }

    #[test]
    fn ends_are_counted_by_kind() {
        assert_eq!(End::ServerClose(1008).kind(), "server_close_1008");
        assert_eq!(End::Eof.kind(), "eof");
        assert_eq!(End::Done.kind(), "");
        let reset = io::Error::from_raw_os_error(libc::ECONNRESET);
        assert_eq!(End::from_io(&reset), End::Reset);
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(End::from_io(&refused), End::Error("connect_refused".into()));
    }
}
