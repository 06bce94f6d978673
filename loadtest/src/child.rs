//! A child process: one mio `Poll` driving up to ~15,000 client connections for one scenario.
//!
//! Talks to the parent over pipes. stdout: `P opened received errors` progress lines, one
//! `READY {json}` once every connection is open (and subscribed) or failed, and one
//! `RESULT {json}` at the end. stdin: `GO` starts the measured phase, `END <published>` says
//! the publisher is done (fanout, slow). EOF on stdin (the parent died) ends the child.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::Duration;

use edgepush::protocol::frame::{write_masked_frame, OpCode};
use edgepush::protocol::handshake::accept_key;
use edgepush::protocol::message::{Decoder, DecoderConfig, Event, MessageKind, Role};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};

use crate::stats::{
    contains, hist_to_data, new_hist, parse_subscribed, scan_channel_seq, scan_seq_t, HistData,
    Recovery, Resumed, SeqTracker,
};
use crate::sys::now_ns;

/// Environment variable that carries a child's [`ChildSpec`] as JSON.
pub const SPEC_ENV: &str = "EDGEPUSH_LOAD_CHILD_SPEC";
const WAKER: Token = Token(usize::MAX);
const READ_BUF: usize = 256 * 1024;
const MAX_HEAD: usize = 16 * 1024;
const SECOND: u64 = 1_000_000_000;
/// Wait before trying again after a failed reconnect (`--reconnect-every`).
const RECONNECT_RETRY_NS: u64 = 100_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    Idle,
    Echo,
    Fanout,
    Churn,
    Slow,
}

/// What one child does; built by the parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildSpec {
    pub index: usize,
    pub mode: Mode,
    /// Busy-poll (zero poll timeout) while the measured phase runs, so the server's writes
    /// never pay for waking this process and no message waits on a wakeup.
    pub spin: bool,
    pub addr: SocketAddr,
    pub host: String,
    /// Path and query; `{n}` becomes the connection's number.
    pub path: String,
    /// Connections this child opens (idle, echo, fanout, slow).
    pub conns: usize,
    /// Number of this child's first connection; the others follow.
    pub first_conn: u64,
    /// Stride between this child's connection numbers in churn (the number of children).
    pub stride: u64,
    /// Source addresses; connection `n` binds `source_ips[n % len]`. Empty: no bind.
    pub source_ips: Vec<Ipv4Addr>,
    pub size: usize,
    pub inflight: usize,
    pub duration_ns: u64,
    /// Channel for the `subscribe` op; `None` subscribes by URL (every text frame is a delivery).
    pub channel: Option<String>,
    pub messages: u64,
    /// Of this child's subscribers, how many stop reading (slow).
    pub stopped: usize,
    pub stopped_rcvbuf: usize,
    /// Churn: new connections per second for this child.
    pub rate: f64,
    pub max_concurrent: usize,
    pub connect_concurrency: usize,
    pub handshake_timeout_ns: u64,
    pub deliver_timeout_ns: u64,
    pub close_wait_ns: u64,
    pub timeout_ns: u64,
    /// Fanout: while publishing, each subscriber drops its connection at random times, on
    /// average once per this (0 = never), reconnects and resubscribes with `since`/`epoch`.
    #[serde(default)]
    pub reconnect_every_ns: u64,
}

/// Sent with `READY`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReadyInfo {
    pub opened: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub first_start_ns: u64,
    pub last_done_ns: u64,
}

/// Sent with `RESULT`; the parent merges one per child.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChildResult {
    pub index: usize,
    pub attempted: u64,
    pub opened: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub handshake: HistData,
    pub latency: HistData,
    pub sent: u64,
    pub received: u64,
    pub received_bytes: u64,
    pub first_recv_ns: u64,
    pub last_recv_ns: u64,
    pub measure_start_ns: u64,
    pub measure_end_ns: u64,
    /// Connections that were open and ended without us asking.
    pub closed_during: u64,
    pub subscribers: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub out_of_range: u64,
    pub handshakes: u64,
    pub closes_ok: u64,
    pub stopped: u64,
    pub stopped_close_1008: u64,
    pub stopped_close_other: u64,
    pub stopped_eof: u64,
    pub stopped_reset: u64,
    pub stopped_not_closed: u64,
    pub stopped_msgs: u64,
    /// `--reconnect-every`: connections we dropped (RST / plain close), reconnections that
    /// resubscribed, and their answers.
    pub drops_rst: u64,
    pub drops_fin: u64,
    pub reconnects: u64,
    pub recovered: u64,
    pub not_recovered: u64,
    /// Our `seq`s written off after `recovered:false` (see `stats::Recovery`).
    pub written_off: u64,
    /// Deliveries that were replays (not in the latency histogram).
    pub replayed: u64,
    pub timed_out: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Handshaking,
    Subscribing,
    Open,
    /// Churn: our Close is sent; waiting for the server's.
    Closing,
    /// Churn: both Closes exchanged; waiting for the server to close TCP.
    AwaitEof,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    WaitGo,
    Running,
    /// Publishing is over (fanout, slow): waiting for the last deliveries.
    Delivering,
    /// Slow: reading the stopped readers to see how the server ended them.
    StoppedDrain,
    Done,
}

enum Ctl {
    Go,
    End(u64),
    Eof,
}

enum End {
    Error(String),
    Eof,
    Reset,
    ServerClose(u16),
    /// Finished as planned.
    Done,
}

struct Meta {
    state: State,
    number: u64,
    key: [u8; 24],
    out: Vec<u8>,
    out_pos: usize,
    started_ns: u64,
    /// Slow: stop reading once subscribed.
    stop_after_subscribe: bool,
    stopped: bool,
    draining: bool,
    healthy: bool,
    /// A new connection of a logical subscriber that dropped its last one.
    reconnect: bool,
}

struct Conn {
    sock: TcpStream,
    decoder: Decoder,
    stash: Vec<u8>,
    m: Meta,
}

struct Ctx {
    mode: Mode,
    cfg: DecoderConfig,
    rng: u64,
    hs_hist: Histogram<u64>,
    lat_hist: Histogram<u64>,
    r: ChildResult,
    trackers: Vec<SeqTracker>,
    /// `--reconnect-every`, per logical subscriber (slot): recovery state, whether it is
    /// alive, when it drops its connection next and when it retries a failed reconnect
    /// (0 = not scheduled).
    recs: Vec<Recovery>,
    live: Vec<bool>,
    next_drop: Vec<u64>,
    retry_at: Vec<u64>,
    reconnect_every: u64,
    channel: String,
    /// `"channel":"NAME"` to recognise our `subscribed`.
    channel_match: Vec<u8>,
    subscribe_frame: Vec<u8>,
    payload: Vec<u8>,
    wrapped: bool,
    phase: Phase,
    measure_end: u64,
    /// Connections between connect and open (or subscribed).
    pending: usize,
    /// Churn: connections in use.
    active: usize,
    alive_healthy: usize,
    complete: usize,
    published: Option<u64>,
    drain_pending: usize,
    connect_first_ns: u64,
    connect_last_ns: u64,
}

impl Ctx {
    fn err(&mut self, kind: &str) {
        *self.r.errors.entry(kind.to_string()).or_insert(0) += 1;
    }

    fn next_rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn next_key(&mut self) -> [u8; 4] {
        (self.next_rand() as u32).to_ne_bytes()
    }

    /// Picks when `slot` next drops its connection: uniform in `[0, 2 × every)` from now, so
    /// once per `every` on average and never all together. Only while publishing.
    fn schedule_drop(&mut self, slot: usize, now: u64) {
        let at = if self.reconnect_every > 0 && self.phase == Phase::Running {
            now + 1 + self.next_rand() % (2 * self.reconnect_every)
        } else {
            0
        };
        if let Some(d) = self.next_drop.get_mut(slot) {
            *d = at;
        }
    }

    /// A logical subscriber's accounted count went from `before` to now: complete?
    fn bump_complete(&mut self, slot: usize, before: u64) {
        let (Some(p), Some(t)) = (self.published, self.trackers.get(slot)) else {
            return;
        };
        if before < p && t.accounted() >= p && self.live.get(slot) == Some(&true) {
            self.complete += 1;
        }
    }

    /// A logical subscriber ends for good.
    fn end_logical(&mut self, slot: usize) {
        let Some(live) = self.live.get_mut(slot) else {
            return;
        };
        if !std::mem::take(live) {
            return;
        }
        self.alive_healthy = self.alive_healthy.saturating_sub(1);
        if let (Some(p), Some(t)) = (self.published, self.trackers.get(slot)) {
            if t.accounted() >= p {
                self.complete = self.complete.saturating_sub(1);
            }
        }
    }

    /// The `subscribed` answer on a reconnected subscriber's new connection.
    fn on_resubscribed(&mut self, m: &mut Meta, slot: usize, data: &[u8], now: u64) {
        let before = self.trackers.get(slot).map_or(0, SeqTracker::accounted);
        let outcome = match (
            parse_subscribed(data),
            self.recs.get_mut(slot),
            self.trackers.get_mut(slot),
        ) {
            (Some((epoch, seq, recovered)), Some(rec), Some(t)) => {
                rec.on_subscribed(t, &epoch, seq, recovered)
            }
            _ => {
                self.err("bad_subscribed");
                Resumed::NotRecovered { written_off: 0 }
            }
        };
        match outcome {
            Resumed::Recovered => self.r.recovered += 1,
            Resumed::NotRecovered { .. } => {
                self.r.not_recovered += 1;
                self.err("not_recovered");
            }
            Resumed::First => {}
        }
        self.r.reconnects += 1;
        m.state = State::Open;
        m.healthy = true;
        self.bump_complete(slot, before);
        self.schedule_drop(slot, now);
    }

    fn send(&mut self, m: &mut Meta, op: OpCode, payload: &[u8]) {
        let key = self.next_key();
        write_masked_frame(&mut m.out, true, op, payload, key);
    }

    fn send_close(&mut self, m: &mut Meta, code: u16) {
        self.send(m, OpCode::Close, &code.to_be_bytes());
    }

    /// A connection finished its upgrade.
    fn on_open(&mut self, m: &mut Meta, slot: usize, now: u64) {
        let took = now.saturating_sub(m.started_ns);
        self.hs_hist.saturating_record(took);
        if self.phase == Phase::Connecting {
            self.connect_last_ns = now;
        }
        match self.mode {
            Mode::Churn => {
                if self.phase == Phase::Running && now < self.measure_end {
                    self.r.handshakes += 1;
                }
                if self.channel_match.is_empty() {
                    self.send_close(m, 1000);
                    m.state = State::Closing;
                } else {
                    let frame = std::mem::take(&mut self.subscribe_frame);
                    self.send(m, OpCode::Text, &frame);
                    self.subscribe_frame = frame;
                    m.state = State::Subscribing;
                }
            }
            Mode::Fanout | Mode::Slow if !self.channel_match.is_empty() => {
                if m.reconnect {
                    let frame = self.recs[slot].subscribe_frame(&self.channel);
                    self.send(m, OpCode::Text, &frame);
                } else {
                    let frame = std::mem::take(&mut self.subscribe_frame);
                    self.send(m, OpCode::Text, &frame);
                    self.subscribe_frame = frame;
                }
                m.state = State::Subscribing;
            }
            _ => self.on_ready(m, slot),
        }
    }

    /// Open and (where it applies) subscribed.
    fn on_ready(&mut self, m: &mut Meta, slot: usize) {
        m.state = State::Open;
        self.pending = self.pending.saturating_sub(1);
        self.r.opened += 1;
        if matches!(self.mode, Mode::Fanout | Mode::Slow) {
            if m.stop_after_subscribe {
                m.stopped = true;
                self.r.stopped += 1;
            } else {
                m.healthy = true;
                if let Some(t) = self.trackers.get_mut(slot) {
                    t.active = true;
                }
                if let Some(live) = self.live.get_mut(slot) {
                    *live = true;
                }
                self.alive_healthy += 1;
                self.r.subscribers += 1;
            }
        }
    }

    fn is_subscribed_reply(&self, data: &[u8]) -> bool {
        contains(data, b"\"op\":\"subscribed\"") && contains(data, &self.channel_match)
    }

    fn on_event(&mut self, m: &mut Meta, slot: usize, ev: Event<'_>, now: u64) -> Option<End> {
        match ev {
            Event::Ping(p) => {
                if !m.draining {
                    self.send(m, OpCode::Pong, p);
                }
                None
            }
            Event::Pong(_) => None,
            Event::Close(frame) => {
                let code = frame.map_or(1005, |f| f.code);
                match m.state {
                    State::Closing => {
                        self.r.closes_ok += 1;
                        m.state = State::AwaitEof;
                        None
                    }
                    State::AwaitEof => None,
                    _ => {
                        if !m.draining {
                            self.send_close(m, code.clamp(1000, 4999));
                        }
                        Some(End::ServerClose(code))
                    }
                }
            }
            Event::Message { kind, data } => self.on_message(m, slot, kind, data, now),
        }
    }

    fn on_message(
        &mut self,
        m: &mut Meta,
        slot: usize,
        kind: MessageKind,
        data: &[u8],
        now: u64,
    ) -> Option<End> {
        match (self.mode, m.state) {
            (Mode::Echo, State::Open) => {
                let (MessageKind::Binary, Some(stamp)) = (kind, data.get(..8)) else {
                    self.err("unexpected_message");
                    return None;
                };
                let mut t = [0u8; 8];
                t.copy_from_slice(stamp);
                let sent = u64::from_le_bytes(t);
                if self.phase == Phase::Running && now < self.measure_end {
                    self.lat_hist.saturating_record(now.saturating_sub(sent));
                    self.r.received += 1;
                    self.r.received_bytes += data.len() as u64;
                    self.send_echo(m, now);
                }
                None
            }
            (Mode::Fanout | Mode::Slow | Mode::Churn, State::Subscribing) => {
                if kind == MessageKind::Text && self.is_subscribed_reply(data) {
                    if self.mode == Mode::Churn {
                        self.send_close(m, 1000);
                        m.state = State::Closing;
                    } else if m.reconnect {
                        self.on_resubscribed(m, slot, data, now);
                    } else {
                        if self.reconnect_every > 0 {
                            match (
                                parse_subscribed(data),
                                self.recs.get_mut(slot),
                                self.trackers.get_mut(slot),
                            ) {
                                (Some((epoch, seq, rec_flag)), Some(rec), Some(t)) => {
                                    rec.on_subscribed(t, &epoch, seq, rec_flag);
                                }
                                _ => self.err("bad_subscribed"),
                            }
                        }
                        self.on_ready(m, slot);
                    }
                } else if contains(data, b"\"op\":\"error\"") {
                    return Some(End::Error("subscribe_refused".into()));
                }
                None
            }
            (Mode::Fanout | Mode::Slow, State::Open) => {
                if m.draining {
                    self.r.stopped_msgs += 1;
                } else if kind == MessageKind::Text {
                    self.on_delivery(slot, data, now);
                }
                None
            }
            _ => None,
        }
    }

    fn on_delivery(&mut self, slot: usize, data: &[u8], now: u64) {
        if self.wrapped {
            let head = &data[..data.len().min(40)];
            if !contains(head, b"\"op\":\"message\"") {
                if contains(head, b"\"op\":\"error\"") {
                    self.err("server_error_op");
                }
                return; // `subscribed` for $user, etc.
            }
        }
        let Some((seq, t)) = scan_seq_t(data) else {
            self.err("unparsable_delivery");
            return;
        };
        let Some(tracker) = self.trackers.get_mut(slot) else {
            return;
        };
        let before = tracker.accounted();
        let replayed = match self.recs.get_mut(slot) {
            Some(rec) if self.reconnect_every > 0 => {
                rec.on_delivery(tracker, scan_channel_seq(data), seq)
            }
            _ => {
                tracker.record(seq);
                false
            }
        };
        if replayed {
            // Its latency includes the time the subscriber was away: not a delivery latency.
            self.r.replayed += 1;
        } else {
            self.lat_hist.saturating_record(now.saturating_sub(t));
        }
        self.r.received += 1;
        self.r.received_bytes += data.len() as u64;
        if self.r.first_recv_ns == 0 {
            self.r.first_recv_ns = now;
        }
        self.r.last_recv_ns = now;
        self.bump_complete(slot, before);
    }

    fn send_echo(&mut self, m: &mut Meta, now: u64) {
        let mut payload = std::mem::take(&mut self.payload);
        payload[..8].copy_from_slice(&now.to_le_bytes());
        self.send(m, OpCode::Binary, &payload);
        self.payload = payload;
        self.r.sent += 1;
    }
}

/// Checks a 101 response head (through the blank line) for `key`; the error is a kind.
pub fn check_response(head: &[u8], key: &[u8]) -> Result<(), String> {
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
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("sec-websocket-accept") {
                return if value.trim().as_bytes() == want {
                    Ok(())
                } else {
                    Err("bad_accept".into())
                };
            }
        }
    }
    Err("bad_accept".into())
}

/// Standard base64 of 16 bytes (a `Sec-WebSocket-Key`).
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

fn error_kind(e: &io::Error) -> &'static str {
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

fn end_of(e: &io::Error) -> End {
    match e.raw_os_error() {
        Some(libc::ECONNRESET) | Some(libc::EPIPE) => End::Reset,
        _ => End::Error(error_kind(e).into()),
    }
}

fn flush(sock: &mut TcpStream, m: &mut Meta) -> io::Result<()> {
    while m.out_pos < m.out.len() {
        match sock.write(&m.out[m.out_pos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => m.out_pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    m.out.clear();
    m.out_pos = 0;
    Ok(())
}

/// Feeds `buf` (stash + new bytes) to the connection; leftovers go back to its stash.
fn process(ctx: &mut Ctx, conn: &mut Conn, slot: usize, buf: &mut [u8], now: u64) -> Option<End> {
    let mut pos = 0;
    if conn.m.state == State::Handshaking {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            if buf.len() > MAX_HEAD {
                return Some(End::Error("bad_response".into()));
            }
            conn.stash.extend_from_slice(buf);
            return None;
        };
        let head_len = end + 4;
        if let Err(kind) = check_response(&buf[..head_len], &conn.m.key) {
            return Some(End::Error(kind));
        }
        ctx.on_open(&mut conn.m, slot, now);
        pos = head_len;
    }
    loop {
        let step = match conn.decoder.decode(&mut buf[pos..], &ctx.cfg) {
            Ok(step) => step,
            Err(_) => return Some(End::Error("protocol_error".into())),
        };
        pos += step.consumed;
        match step.event {
            Some(ev) => {
                if let Some(end) = ctx.on_event(&mut conn.m, slot, ev, now) {
                    return Some(end);
                }
            }
            None if step.consumed == 0 => break,
            None => {}
        }
    }
    conn.stash.extend_from_slice(&buf[pos..]);
    None
}

struct Engine {
    spec: ChildSpec,
    poll: Poll,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    rbuf: Vec<u8>,
    ctx: Ctx,
    next_conn: usize,
    churn_started: u64,
    churn_start_ns: u64,
    deadline: u64,
    phase_deadline: u64,
    next_reconnect_scan: u64,
}

impl Engine {
    fn open(&mut self, slot: usize, number: u64, stop_after_subscribe: bool) -> Result<(), End> {
        let spec = &self.spec;
        let domain = if spec.addr.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let err = |e: io::Error| End::Error(error_kind(&e).into());
        let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
        socket.set_nonblocking(true).map_err(err)?;
        if stop_after_subscribe && spec.stopped_rcvbuf > 0 {
            socket
                .set_recv_buffer_size(spec.stopped_rcvbuf)
                .map_err(err)?;
        }
        if spec.addr.is_ipv4() && !spec.source_ips.is_empty() {
            let ip = spec.source_ips[(number % spec.source_ips.len() as u64) as usize];
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
        match socket.connect(&spec.addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(err(e)),
        }
        let mut sock = TcpStream::from_std(socket.into());
        let _ = sock.set_nodelay(true);
        self.poll
            .registry()
            .register(
                &mut sock,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(err)?;
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&self.ctx.next_key());
        raw[4..8].copy_from_slice(&self.ctx.next_key());
        raw[8..16].copy_from_slice(&number.to_le_bytes());
        let conn = Conn {
            sock,
            decoder: Decoder::new(),
            stash: Vec::new(),
            m: Meta {
                state: State::Connecting,
                number,
                key: base64_16(&raw),
                out: Vec::new(),
                out_pos: 0,
                started_ns: now_ns(),
                stop_after_subscribe,
                stopped: false,
                draining: false,
                healthy: false,
                reconnect: false,
            },
        };
        if slot == self.conns.len() {
            self.conns.push(Some(conn));
        } else {
            self.conns[slot] = Some(conn);
        }
        Ok(())
    }

    /// Starts connection attempt `k` of this child (connect phase).
    fn start_next(&mut self) {
        let k = self.next_conn;
        self.next_conn += 1;
        self.ctx.r.attempted += 1;
        self.ctx.pending += 1;
        let number = self.spec.first_conn + k as u64;
        let stop = self.spec.mode == Mode::Slow && k < self.spec.stopped;
        if k == 0 {
            self.ctx.connect_first_ns = now_ns();
        }
        if let Err(End::Error(kind)) = self.open(k, number, stop) {
            self.ctx.pending -= 1;
            self.ctx.r.failed += 1;
            self.ctx.err(&kind);
            if self.conns.len() == k {
                self.conns.push(None);
            }
        }
    }

    fn start_churn(&mut self) {
        let slot = self.free.pop().unwrap_or(self.conns.len());
        let number = self.spec.first_conn + self.churn_started * self.spec.stride.max(1);
        self.churn_started += 1;
        self.ctx.r.attempted += 1;
        match self.open(slot, number, false) {
            Ok(()) => self.ctx.active += 1,
            Err(end) => {
                if slot == self.conns.len() {
                    self.conns.push(None);
                }
                self.free.push(slot);
                self.ctx.r.failed += 1;
                if let End::Error(kind) = end {
                    self.ctx.err(&kind);
                }
            }
        }
    }

    /// `--reconnect-every`: drops `slot`'s connection without a close handshake (an RST
    /// through `SO_LINGER` 0 every other time, a plain close otherwise) and starts a new one.
    fn drop_and_reconnect(&mut self, slot: usize, now: u64) {
        let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        if self.ctx.r.drops_rst <= self.ctx.r.drops_fin {
            let _ = socket2::SockRef::from(&conn.sock).set_linger(Some(Duration::ZERO));
            self.ctx.r.drops_rst += 1;
        } else {
            self.ctx.r.drops_fin += 1;
        }
        let _ = self.poll.registry().deregister(&mut conn.sock);
        drop(conn);
        self.ctx.next_drop[slot] = 0;
        self.reconnect(slot, now);
    }

    /// Opens a new connection for logical subscriber `slot` (it resubscribes once upgraded).
    fn reconnect(&mut self, slot: usize, now: u64) {
        let number = self.spec.first_conn + slot as u64;
        match self.open(slot, number, false) {
            Ok(()) => {
                if let Some(conn) = self.conns[slot].as_mut() {
                    conn.m.reconnect = true;
                }
            }
            Err(end) => {
                if let End::Error(kind) = end {
                    self.ctx.err(&format!("reconnect_{kind}"));
                }
                self.ctx.retry_at[slot] = now + RECONNECT_RETRY_NS;
            }
        }
    }

    fn finish_conn(&mut self, slot: usize, end: End) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let mut conn = conn;
        let _ = flush(&mut conn.sock, &mut conn.m); // a last Close, if any
        let ctx = &mut self.ctx;
        let m = &conn.m;
        if self.spec.mode == Mode::Churn {
            ctx.active = ctx.active.saturating_sub(1);
            self.free.push(slot);
        }
        let kind = match &end {
            End::Error(k) => k.clone(),
            End::Eof => "eof".into(),
            End::Reset => "reset".into(),
            End::ServerClose(c) => format!("server_close_{c}"),
            End::Done => String::new(),
        };
        if ctx.reconnect_every > 0 && (m.reconnect || m.healthy) {
            // A logical subscriber's connection: it reconnects while the run goes on.
            if m.state == State::Open {
                if !matches!(end, End::Done) {
                    ctx.r.closed_during += 1;
                    ctx.err(&kind);
                }
            } else {
                ctx.err(&format!("reconnect_{kind}"));
            }
            if matches!(ctx.phase, Phase::Running | Phase::Delivering) && !matches!(end, End::Done)
            {
                ctx.next_drop[slot] = 0;
                ctx.retry_at[slot] = now_ns() + RECONNECT_RETRY_NS;
            } else {
                ctx.end_logical(slot);
            }
            return;
        }
        if m.draining {
            match end {
                End::ServerClose(1008) => ctx.r.stopped_close_1008 += 1,
                End::ServerClose(_) => ctx.r.stopped_close_other += 1,
                End::Eof => ctx.r.stopped_eof += 1,
                End::Reset => ctx.r.stopped_reset += 1,
                End::Error(_) => {
                    ctx.r.stopped_reset += 1;
                    ctx.err(&kind);
                }
                End::Done => ctx.r.stopped_not_closed += 1,
            }
            ctx.drain_pending = ctx.drain_pending.saturating_sub(1);
            return;
        }
        match m.state {
            State::Connecting | State::Handshaking | State::Subscribing => {
                if self.spec.mode != Mode::Churn {
                    ctx.pending = ctx.pending.saturating_sub(1);
                }
                ctx.r.failed += 1;
                ctx.err(&kind);
            }
            State::Open => {
                if m.healthy {
                    ctx.end_logical(slot);
                }
                if !matches!(end, End::Done) {
                    ctx.r.closed_during += 1;
                    ctx.err(&kind);
                }
            }
            State::Closing => {
                if !matches!(end, End::Done) {
                    ctx.err(&format!("close_{kind}"));
                }
            }
            State::AwaitEof => {}
        }
    }

    fn on_io(&mut self, slot: usize, readable: bool, closing: bool, writable: bool) {
        let now = now_ns();
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if conn.m.state == State::Connecting {
            match conn.sock.take_error() {
                Ok(Some(e)) | Err(e) => {
                    return self.finish_conn(slot, End::Error(error_kind(&e).into()))
                }
                Ok(None) => {}
            }
            match conn.sock.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.finish_conn(slot, End::Error(error_kind(&e).into())),
            }
            let path = self.spec.path.replace("{n}", &conn.m.number.to_string());
            let m = &mut conn.m;
            let _ = write!(
                m.out,
                "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ",
                self.spec.host
            );
            m.out.extend_from_slice(&m.key);
            m.out.extend_from_slice(
                b"\r\nSec-WebSocket-Version: 13\r\nUser-Agent: edgepush-load\r\n\r\n",
            );
            m.state = State::Handshaking;
        }
        if readable && !conn.m.stopped {
            if let Some(end) = self.read(slot, now, closing) {
                return self.finish_conn(slot, end);
            }
        }
        let _ = writable;
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if let Err(e) = flush(&mut conn.sock, &mut conn.m) {
            self.finish_conn(slot, end_of(&e));
        }
    }

    /// Reads until drained: a short read means the socket had nothing more (a later arrival
    /// raises a new edge), so the extra read that would only say `WouldBlock` is skipped —
    /// unless the event reported a hang-up, when reading goes on until EOF.
    fn read(&mut self, slot: usize, now: u64, closing: bool) -> Option<End> {
        let conn = self.conns.get_mut(slot).and_then(Option::as_mut)?;
        loop {
            let s = conn.stash.len();
            if s > 0 {
                if s > self.rbuf.len() / 2 {
                    return Some(End::Error("oversized_stash".into()));
                }
                self.rbuf[..s].copy_from_slice(&conn.stash);
                conn.stash.clear();
            }
            match conn.sock.read(&mut self.rbuf[s..]) {
                Ok(0) => return Some(End::Eof),
                Ok(n) => {
                    let drained = s + n < self.rbuf.len() && !closing;
                    if let Some(end) =
                        process(&mut self.ctx, conn, slot, &mut self.rbuf[..s + n], now)
                    {
                        return Some(end);
                    }
                    if conn.m.stopped || drained {
                        return None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.stash.extend_from_slice(&self.rbuf[..s]);
                    return None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    conn.stash.extend_from_slice(&self.rbuf[..s]);
                }
                Err(e) => return Some(end_of(&e)),
            }
        }
    }

    fn sweep_timeouts(&mut self, now: u64) {
        let hs = self.spec.handshake_timeout_ns;
        let mut expired = Vec::new();
        for (slot, conn) in self.conns.iter().enumerate() {
            let Some(conn) = conn else { continue };
            let age = now.saturating_sub(conn.m.started_ns);
            let end = match conn.m.state {
                State::Connecting | State::Handshaking | State::Subscribing if age > hs => {
                    Some(End::Error(match conn.m.state {
                        State::Connecting => "connect_timeout".into(),
                        State::Handshaking => "handshake_timeout".into(),
                        _ => "subscribe_timeout".into(),
                    }))
                }
                State::Closing if age > hs + 2 * SECOND => Some(End::Error("timeout".into())),
                State::AwaitEof if age > hs + 2 * SECOND => Some(End::Done),
                _ => None,
            };
            if let Some(end) = end {
                expired.push((slot, end));
            }
        }
        for (slot, end) in expired {
            self.finish_conn(slot, end);
        }
    }

    fn on_ctl(&mut self, ctl: Ctl, now: u64) {
        match ctl {
            Ctl::Eof => std::process::exit(3),
            Ctl::Go => {
                self.ctx.phase = Phase::Running;
                if self.ctx.reconnect_every > 0 {
                    for slot in 0..self.ctx.live.len() {
                        if self.ctx.live[slot] {
                            self.ctx.schedule_drop(slot, now);
                        }
                    }
                }
                self.ctx.r.measure_start_ns = now;
                self.ctx.measure_end = now.saturating_add(self.spec.duration_ns);
                self.churn_start_ns = now;
                if self.spec.mode == Mode::Echo {
                    for slot in 0..self.conns.len() {
                        let Some(conn) = self.conns[slot].as_mut() else {
                            continue;
                        };
                        if conn.m.state != State::Open {
                            continue;
                        }
                        for _ in 0..self.spec.inflight {
                            self.ctx.send_echo(&mut conn.m, now);
                        }
                        if let Err(e) = flush(&mut conn.sock, &mut conn.m) {
                            self.finish_conn(slot, end_of(&e));
                        }
                    }
                }
            }
            Ctl::End(published) => {
                self.ctx.published = Some(published);
                self.ctx.complete = (0..self.ctx.live.len())
                    .filter(|&slot| {
                        self.ctx.live[slot]
                            && self
                                .ctx
                                .trackers
                                .get(slot)
                                .is_some_and(|t| t.accounted() >= published)
                    })
                    .count();
                self.ctx.phase = Phase::Delivering;
                self.phase_deadline = now.saturating_add(self.spec.deliver_timeout_ns);
            }
        }
    }

    fn start_stopped_drain(&mut self, now: u64) {
        self.ctx.phase = Phase::StoppedDrain;
        self.phase_deadline = now.saturating_add(self.spec.close_wait_ns);
        for slot in 0..self.conns.len() {
            let Some(conn) = self.conns[slot].as_mut() else {
                continue;
            };
            if !conn.m.stopped {
                continue;
            }
            conn.m.stopped = false;
            conn.m.draining = true;
            self.ctx.drain_pending += 1;
            if let Some(end) = self.read(slot, now, true) {
                self.finish_conn(slot, end);
            }
        }
    }

    /// `--reconnect-every`: drops the connections due (while publishing) and retries failed
    /// reconnects (while publishing and delivering). At most once a millisecond.
    fn reconnect_tick(&mut self, now: u64) {
        if self.ctx.reconnect_every == 0 || now < self.next_reconnect_scan {
            return;
        }
        self.next_reconnect_scan = now + 1_000_000;
        let publishing = self.ctx.phase == Phase::Running;
        for slot in 0..self.ctx.live.len() {
            if !self.ctx.live[slot] {
                continue;
            }
            let retry = self.ctx.retry_at[slot];
            if retry != 0 && now >= retry && self.conns[slot].is_none() {
                self.ctx.retry_at[slot] = 0;
                self.reconnect(slot, now);
                continue;
            }
            let due = self.ctx.next_drop[slot];
            if publishing && due != 0 && now >= due {
                let open = self.conns[slot]
                    .as_ref()
                    .is_some_and(|c| c.m.state == State::Open && c.m.healthy);
                if open {
                    self.drop_and_reconnect(slot, now);
                } else {
                    self.ctx.next_drop[slot] = 0;
                }
            }
        }
    }

    fn tick(&mut self, now: u64) {
        match self.ctx.phase {
            Phase::Connecting => {
                while self.ctx.pending < self.spec.connect_concurrency.max(1)
                    && self.next_conn < self.spec.conns
                {
                    self.start_next();
                }
                if self.next_conn >= self.spec.conns && self.ctx.pending == 0 {
                    let info = ReadyInfo {
                        opened: self.ctx.r.opened,
                        failed: self.ctx.r.failed,
                        errors: self.ctx.r.errors.clone(),
                        first_start_ns: self.ctx.connect_first_ns,
                        last_done_ns: self.ctx.connect_last_ns,
                    };
                    emit("READY", &info);
                    self.ctx.phase = Phase::WaitGo;
                }
            }
            Phase::WaitGo => {}
            Phase::Running => match self.spec.mode {
                Mode::Idle | Mode::Echo => {
                    if now >= self.ctx.measure_end {
                        self.ctx.r.measure_end_ns = now;
                        self.ctx.phase = Phase::Done;
                    }
                }
                Mode::Churn => {
                    if now < self.ctx.measure_end {
                        let target = (self.spec.rate * (now - self.churn_start_ns) as f64
                            / SECOND as f64) as u64;
                        while self.churn_started < target
                            && self.ctx.active < self.spec.max_concurrent.max(1)
                        {
                            self.start_churn();
                        }
                    } else {
                        if self.ctx.r.measure_end_ns == 0 {
                            self.ctx.r.measure_end_ns = self.ctx.measure_end;
                            self.phase_deadline = now + self.spec.handshake_timeout_ns + 3 * SECOND;
                        }
                        if self.ctx.active == 0 || now >= self.phase_deadline {
                            self.ctx.phase = Phase::Done;
                        }
                    }
                }
                Mode::Fanout | Mode::Slow => self.reconnect_tick(now),
            },
            Phase::Delivering => {
                self.reconnect_tick(now);
                if self.ctx.complete >= self.ctx.alive_healthy || now >= self.phase_deadline {
                    self.ctx.r.measure_end_ns = now;
                    if self.spec.mode == Mode::Slow {
                        self.start_stopped_drain(now);
                    } else {
                        self.ctx.phase = Phase::Done;
                    }
                }
            }
            Phase::StoppedDrain => {
                if self.ctx.drain_pending == 0 || now >= self.phase_deadline {
                    self.ctx.phase = Phase::Done;
                }
            }
            Phase::Done => {}
        }
    }

    fn result(mut self) -> ChildResult {
        // Stopped readers still open at the end were not closed by the server.
        for slot in 0..self.conns.len() {
            if self.conns[slot].as_ref().is_some_and(|c| c.m.draining) {
                self.finish_conn(slot, End::Done);
            }
        }
        let ctx = &mut self.ctx;
        for t in ctx.trackers.iter().filter(|t| t.active) {
            if let Some(p) = ctx.published {
                ctx.r.missing += t.missing(p);
            }
            ctx.r.duplicates += t.duplicates;
            ctx.r.out_of_order += t.out_of_order;
            ctx.r.out_of_range += t.out_of_range;
            ctx.r.written_off += t.written_off;
        }
        ctx.r.handshake = hist_to_data(&ctx.hs_hist);
        ctx.r.latency = hist_to_data(&ctx.lat_hist);
        ctx.r.index = self.spec.index;
        std::mem::take(&mut ctx.r)
    }
}

fn emit<T: Serialize>(tag: &str, value: &T) {
    let line = serde_json::to_string(value).unwrap_or_else(|_| "{}".into());
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{tag} {line}");
    let _ = out.flush();
}

/// Runs a child from its spec; never returns.
pub fn run(spec: ChildSpec) -> ! {
    let result = match run_inner(spec) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("edgepush-load child: {e}");
            std::process::exit(2);
        }
    };
    emit("RESULT", &result);
    std::process::exit(0);
}

fn run_inner(spec: ChildSpec) -> io::Result<ChildResult> {
    crate::sys::raise_nofile_limit();
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let stdin = io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let ctl = match line.trim() {
                "GO" => Ctl::Go,
                l => match l.strip_prefix("END ").and_then(|n| n.trim().parse().ok()) {
                    Some(n) => Ctl::End(n),
                    None => continue,
                },
            };
            if tx.send(ctl).is_err() {
                return;
            }
            let _ = waker.wake();
        }
        let _ = tx.send(Ctl::Eof);
        let _ = waker.wake();
    });

    let tracked = matches!(spec.mode, Mode::Fanout | Mode::Slow);
    let channel_match = match (&spec.channel, spec.mode) {
        (Some(ch), Mode::Fanout | Mode::Slow | Mode::Churn) => {
            serde_json::to_vec(ch).map(|q| [b"\"channel\":".as_slice(), &q].concat())?
        }
        _ => Vec::new(),
    };
    let subscribe_frame = match &spec.channel {
        Some(ch) => serde_json::to_vec(&serde_json::json!({"op": "subscribe", "channel": ch}))?,
        None => Vec::new(),
    };
    let mut trackers = Vec::new();
    let (mut recs, mut live, mut next_drop, mut retry_at) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    if tracked {
        trackers = (0..spec.conns)
            .map(|_| SeqTracker::new(spec.messages))
            .collect();
        live = vec![false; spec.conns];
        next_drop = vec![0; spec.conns];
        retry_at = vec![0; spec.conns];
        if spec.reconnect_every_ns > 0 {
            recs = vec![Recovery::default(); spec.conns];
        }
    }
    let reconnect_every = if spec.mode == Mode::Fanout && spec.channel.is_some() {
        spec.reconnect_every_ns
    } else {
        0
    };
    let now = now_ns();
    let ctx = Ctx {
        mode: spec.mode,
        cfg: DecoderConfig {
            role: Role::Client,
            max_message_size: 64 << 20,
        },
        rng: now ^ (u64::from(std::process::id()) << 32) | 1,
        hs_hist: new_hist(),
        lat_hist: new_hist(),
        r: ChildResult::default(),
        trackers,
        recs,
        live,
        next_drop,
        retry_at,
        reconnect_every,
        channel: spec.channel.clone().unwrap_or_default(),
        wrapped: spec.channel.is_some(),
        channel_match,
        subscribe_frame,
        payload: vec![b'x'; spec.size.max(8)],
        phase: if spec.mode == Mode::Churn {
            Phase::WaitGo
        } else {
            Phase::Connecting
        },
        measure_end: 0,
        pending: 0,
        active: 0,
        alive_healthy: 0,
        complete: 0,
        published: None,
        drain_pending: 0,
        connect_first_ns: 0,
        connect_last_ns: 0,
    };
    let deadline = now.saturating_add(spec.timeout_ns);
    let mut engine = Engine {
        poll,
        conns: Vec::with_capacity(spec.conns),
        free: Vec::new(),
        rbuf: vec![0; READ_BUF],
        ctx,
        next_conn: 0,
        churn_started: 0,
        churn_start_ns: 0,
        deadline,
        phase_deadline: 0,
        next_reconnect_scan: 0,
        spec,
    };
    if engine.spec.mode == Mode::Churn {
        emit("READY", &ReadyInfo::default());
    }
    let mut events = Events::with_capacity(4096);
    let mut next_progress = 0u64;
    let mut next_sweep = 0u64;
    loop {
        let timeout = if engine.ctx.phase == Phase::Running && engine.spec.spin {
            Duration::ZERO
        } else if engine.ctx.phase == Phase::Running && engine.spec.mode == Mode::Churn {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(10)
        };
        if let Err(e) = engine.poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        for ev in events.iter() {
            if ev.token() == WAKER {
                continue;
            }
            let closing = ev.is_read_closed() || ev.is_error();
            let readable = ev.is_readable() || closing;
            engine.on_io(ev.token().0, readable, closing, ev.is_writable());
        }
        let now = now_ns();
        while let Ok(ctl) = rx.try_recv() {
            engine.on_ctl(ctl, now);
        }
        engine.tick(now);
        if now >= next_sweep {
            next_sweep = now + SECOND / 4;
            engine.sweep_timeouts(now);
        }
        if now >= next_progress {
            next_progress = now + SECOND / 4;
            let r = &engine.ctx.r;
            let errors: u64 = r.errors.values().sum();
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "P {} {} {}", r.opened, r.received, errors);
            let _ = out.flush();
        }
        if now >= engine.deadline && engine.ctx.phase != Phase::Done {
            engine.ctx.r.timed_out = true;
            if engine.ctx.r.measure_end_ns == 0 {
                engine.ctx.r.measure_end_ns = now;
            }
            engine.ctx.phase = Phase::Done;
        }
        if engine.ctx.phase == Phase::Done {
            break;
        }
    }
    Ok(engine.result())
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
        assert_eq!(check_response(ok, key), Ok(()));
        let bad = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert_eq!(check_response(bad, key), Err("bad_accept".into()));
        let missing = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        assert_eq!(check_response(missing, key), Err("bad_accept".into()));
        let refused = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            check_response(refused, key),
            Err("upgrade_status_404".into())
        );
        assert_eq!(
            check_response(b"garbage\r\n\r\n", key),
            Err("bad_response".into())
        );
    }
}
