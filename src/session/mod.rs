//! One client connection's life as a WebSocket, sans IO: the HTTP upgrade, the open
//! connection's control frames, the closing handshake and every deadline, decided from bytes
//! and an injected `now`. The event loop owns the socket, the slab, the timer wheel and the
//! buffers; it calls a [`Session`] for every decision, so timeouts, close sequencing and
//! keep-alive are unit-tested in simulated time (see `tests.rs`).
//!
//! # States (stored, never recomputed)
//! ```text
//!   Handshake ──accept──▶ Open ──close() / peer Close / protocol error / EOF──▶ Closing ──▶ (dropped)
//!       │                                                                       ▲
//!       └──refuse / bad request / plain HTTP answer / EOF───────────────────────┘
//! ```
//! [`State::Closing`] means everything we will ever send is queued (our Close, our echo of the
//! peer's, or an HTTP answer): the driver flushes it, sends FIN once it is out
//! ([`Session::poll_fin`]), and waits for the peer's EOF or the close deadline. Input that
//! arrives meanwhile is discarded (a lingering close: bounded by the close deadline, and for
//! an HTTP answer also in amount): after our FIN nothing the peer sends changes what we do.
//! The peer's EOF ends nothing by itself: what is queued still goes out.
//! Which Close (if any) went which way is kept in [`Closing`].
//!
//! # Driving it (the call order)
//! 1. New connection: [`Session::new`]; arm the wheel at [`Session::poll_timeout`].
//! 2. Bytes read, while [`State::Handshake`]: [`Session::handle_head`]. On
//!    [`Head::Request`] decide admission, then call exactly one of [`Session::accept`] (then
//!    feed the bytes after `head_len` to step 3), [`Session::refuse`] or
//!    [`Session::answered`] (after writing a plain HTTP answer yourself).
//! 3. Bytes read, while open: call [`Session::handle_frames`] in a loop on the unconsumed
//!    rest until a step consumes nothing and has no event; act on each [`Event`]. Lend it
//!    the worker's [`Inflater`], the same one every time (permessage-deflate keeps no state
//!    per connection between messages; a compressed message in progress holds at most a lease
//!    on it, or its compressed bytes). Pings are answered and the peer's Close is echoed
//!    inside, through the [`Transmit`] the driver lends.
//! 4. A timer fired at tick `t`: if [`Session::is_deadline`]`(t)`, call
//!    [`Session::handle_timeout`] and act on its [`Timeout`].
//! 5. To close from our side: [`Session::close`].
//! 6. Bytes read while closing: [`Session::discard`] (a lingering close); drop the connection
//!    when it returns false.
//! 7. A read returned EOF: [`Session::handle_eof`], then keep writing what is queued; once the
//!    queue is empty and [`Session::peer_ended`], close.
//! 8. After any of these, arm the wheel at [`Session::poll_timeout`] if it returns `Some`,
//!    and after each flush that emptied the queue, send FIN if [`Session::poll_fin`] says so.
//!
//! Frames go out through [`Transmit`], a sink the driver lends for the duration of one call
//! (its cork buffer or the connection's queue): holding control replies in the session would
//! cost every idle connection a buffer. (fastwebsockets returns them as an "obligated send";
//! same idea, without the copy.)
//!
//! The session sits on whatever transport the driver has (plain TCP today, TLS later): it
//! sees only plaintext bytes in and frames out.

#![forbid(unsafe_code)]

mod refusal;
#[cfg(test)]
mod tests;

pub use refusal::Refusal;

use crate::protocol::close;
use crate::protocol::deflate::{Agreement, Inflater};
use crate::protocol::frame::{write_frame, OpCode};
use crate::protocol::handshake::{
    parse_request, write_accept_response, HandshakeConfig, HandshakeError, Request, Upgrade,
};
use crate::protocol::message::{Decoder, DecoderConfig, Event as DecoderEvent, MessageKind};
use crate::protocol::ProtocolError;
use crate::tick::{ShortTick, Tick};

/// What a connection is for, decided at the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Still reading the HTTP request, or it was answered without an upgrade.
    None,
    /// `--echo-path`: every message comes back.
    Echo,
    /// `--ws-path`: the JSON push protocol.
    Push,
}

/// Where a connection stands (see the module doc's diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Reading the HTTP request head; the handshake deadline runs.
    Handshake,
    /// A WebSocket with both directions open (§4.2.2 done, no Close either way).
    Open,
    /// Everything we will send is queued; waiting to flush, FIN, and the peer's EOF.
    Closing {
        /// How the connection is ending.
        how: Closing,
        /// Our FIN is out (the queue was flushed after we entered this state).
        fin_sent: bool,
    },
}

/// How a closing connection got there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// It never became a WebSocket: an HTTP answer is queued (an error, a refusal, a page).
    Http,
    /// We sent Close first (§7.1.2) and do not wait for the peer's: our FIN follows it.
    CloseSent,
    /// The peer sent Close and ours is queued in answer (§5.5.1), or it came after ours:
    /// the closing handshake is complete; the server closes TCP first (§7.1.1).
    Closed,
    /// The peer ended its direction (EOF) without a Close. It may still read: what is queued
    /// goes out, then the connection closes.
    PeerGone,
    /// The peer's Close arrived while the application still owed it answers (see
    /// [`Session::hold_close_reply`]): those go out first, then our Close
    /// ([`Session::release_close`]). Nothing is read meanwhile; the close deadline bounds it.
    ReplyHeld,
}

/// The lingering close's amount bound: a connection that sends more than this after an HTTP
/// answer that ends it (an error, a refusal) is reset without waiting for its EOF. Generous,
/// so that a client uploading a large body in full before it reads (Python's `urllib`) still
/// reads the answer; the time bound is `--close-timeout`.
pub const LINGER_MAX_BYTES: usize = 64 << 20;

/// The unit the session counts discarded input in (its counter is 16 bits).
const LINGER_BLOCK: usize = 16 << 10;

/// Negotiated extensions (RFC 6455 §9): bits, no state. permessage-deflate (RFC 7692) fits
/// here because the server always asks for `server_no_context_takeover;
/// client_no_context_takeover`: the compressor and inflater are the worker's, lent per
/// message. Bit 0: permessage-deflate; bits 1–3: 15 − the client's `server_max_window_bits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extensions(u8);

impl Extensions {
    /// No extension negotiated.
    pub const NONE: Extensions = Extensions(0);

    const DEFLATE: u8 = 1;

    /// The extensions of an accepted upgrade.
    pub fn from_upgrade(deflate: Option<Agreement>) -> Extensions {
        match deflate {
            Some(agreement) => {
                let shrink = 15u8.saturating_sub(agreement.server_window_bits()).min(7);
                Extensions(Self::DEFLATE | (shrink << 1))
            }
            None => Extensions::NONE,
        }
    }

    /// True when no extension is in use.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// permessage-deflate was negotiated: RSV1 marks a compressed message both ways.
    pub fn deflate(self) -> bool {
        self.0 & Self::DEFLATE != 0
    }

    /// The largest window our compressed messages may use, in bits (8..=15, §7.1.2.1): a
    /// message longer than 2^bits goes plain.
    pub fn server_window_bits(self) -> u8 {
        15 - ((self.0 >> 1) & 7)
    }
}

/// Timeouts, in ticks, and the parsers' limits: one per worker, lent to every call.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// `--max-request-head` and friends.
    pub handshake: HandshakeConfig,
    /// Role and `--max-message-size`.
    pub decoder: DecoderConfig,
    /// `--handshake-timeout`: from accept to a complete upgrade.
    pub handshake_ticks: u64,
    /// `--ping-interval`: a connection silent this long is pinged.
    pub ping_ticks: u64,
    /// `--pong-timeout`: no frame at all this long after a ping: dropped.
    pub pong_ticks: u64,
    /// `--close-timeout`: a closing connection waits this long for the peer's EOF.
    pub close_ticks: u64,
}

/// Where the session's frames go: lent by the driver for one call.
pub trait Transmit {
    /// Appends whole frames (or an HTTP answer) after everything queued so far.
    fn write(&mut self, f: &mut dyn FnMut(&mut Vec<u8>));
    /// Queues the Pong answering a Ping with `payload` (≤ 125 bytes). While bytes are queued
    /// the sink may replace an unsent Pong with this one (§5.5.3: answering only the latest
    /// Ping is allowed), so a ping flood against a full socket costs one Pong.
    fn pong(&mut self, payload: &[u8]);
}

/// What [`Session::handle_head`] found.
#[derive(Debug)]
pub enum Head<'a> {
    /// The head is incomplete: nothing consumed, read more.
    Partial,
    /// A complete request: decide, then [`Session::accept`], [`Session::refuse`] or
    /// [`Session::answered`]. Its bytes end at `request.head_len`.
    Request(Request<'a>),
    /// Not an acceptable request: its HTTP error answer is queued and the session is closing.
    /// Everything read is consumed.
    Refused(HandshakeError),
}

/// One step of [`Session::handle_frames`].
#[derive(Debug)]
#[must_use]
pub struct Step<'a> {
    /// Bytes of the input done with.
    pub consumed: usize,
    /// What the driver must act on, if anything.
    pub event: Option<Event<'a>>,
}

/// What the driver acts on while the connection is open.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete data message (reassembled from its fragments, UTF-8 checked if text).
    Message {
        /// Text or binary, from the message's first frame (RFC 6455 §5.6).
        kind: MessageKind,
        /// The unmasked payload, at most `--max-message-size` bytes; borrowed from the input
        /// or the decoder, so valid only until the next call.
        data: &'a [u8],
    },
    /// The peer's Close arrived with `code` ([`close::NO_STATUS`] when it had none); `echoed`
    /// is the code of the Close queued in answer ([`close::NO_STATUS`] for an empty one), if
    /// any. The session is closing.
    CloseReceived {
        /// The peer's status code (§7.4), or [`close::NO_STATUS`] for an empty Close.
        code: u16,
        /// The code of the Close we queued in answer (§5.5.1), [`close::NO_STATUS`] for an
        /// empty one; `None` when the answer is held (below).
        echoed: Option<u16>,
        /// The code our answer will carry once the application releases it
        /// ([`Session::release_close`]): the answer was held because answers were still owed
        /// ([`Session::hold_close_reply`]).
        held: Option<u16>,
    },
    /// The peer broke a rule: a Close with `error.close_code()` is queued and the session is
    /// closing.
    ProtocolError(ProtocolError),
}

/// What a due deadline meant ([`Session::handle_timeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Timeout {
    /// Nothing to do now (the peer spoke since); the next deadline is set.
    Rearmed,
    /// The connection was silent for `--ping-interval`: a Ping is queued.
    Pinged,
    /// The application's deadline (a token's expiry) passed: the driver decides (close 4001).
    AppDeadline,
    /// Drop the connection now, without a word: `why` says which limit it hit.
    Drop(DropReason),
}

/// Why a connection is dropped at a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// No complete upgrade within `--handshake-timeout`.
    Handshake,
    /// No frame at all within `--pong-timeout` after our Ping.
    Pong,
    /// A closing connection's peer did not close TCP within `--close-timeout`.
    Close,
}

/// A session's deadline and what it knows of the peer's liveness. A struct of its own so that
/// it can be updated while the decoder's output is still borrowed, and packed (flags in one
/// byte) so the session stays 24 bytes.
#[derive(Debug, Clone, Copy)]
struct Liveness {
    /// The one live deadline; wheel entries for other ticks are stale.
    tick: ShortTick,
    /// The last frame (of any kind) from the peer.
    last_seen: ShortTick,
    /// Input discarded while closing, in blocks of [`LINGER_BLOCK`] bytes (saturating): the
    /// lingering close's amount bound.
    discarded_blocks: u16,
    /// [`Liveness::REARM`], [`Liveness::PING_OUTSTANDING`], [`Liveness::PEER_EOF`].
    flags: u8,
}

impl Liveness {
    /// `tick` changed since the driver last asked [`Session::poll_timeout`].
    const REARM: u8 = 1;
    /// A Ping went out and no frame has arrived since.
    const PING_OUTSTANDING: u8 = 2;
    /// The peer ended its direction (EOF): nothing more will be read.
    const PEER_EOF: u8 = 4;
    /// The application owes the peer answers: a Close from it is answered after them.
    const HOLD_CLOSE: u8 = 8;

    fn set(&mut self, tick: Tick) {
        self.tick = tick.short();
        self.flags |= Self::REARM;
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn put(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    /// Clears `flag`; returns whether it was set.
    fn take(&mut self, flag: u8) -> bool {
        let was = self.has(flag);
        self.flags &= !flag;
        was
    }
}

/// One connection's WebSocket state. 24 bytes: it is embedded in every slab entry.
#[derive(Debug)]
pub struct Session {
    state: State,
    endpoint: Endpoint,
    extensions: Extensions,
    timer: Liveness,
    decoder: Decoder,
}

impl Session {
    /// A connection just accepted at `now`: reading its request head, against the handshake
    /// deadline.
    pub fn new(now: Tick, config: &SessionConfig) -> Session {
        let mut session = Session {
            state: State::Handshake,
            endpoint: Endpoint::None,
            extensions: Extensions::NONE,
            timer: Liveness {
                tick: ShortTick::default(),
                last_seen: now.short(),
                discarded_blocks: 0,
                flags: 0,
            },
            decoder: Decoder::new(),
        };
        session.timer.set(now + config.handshake_ticks);
        session
    }

    /// Where the connection stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// Both directions open: data may be sent and is read.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Everything is queued; input is discarded.
    pub fn is_closing(&self) -> bool {
        matches!(self.state, State::Closing { .. })
    }

    /// The endpoint chosen at the upgrade ([`Endpoint::None`] before or without one).
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// The negotiated extensions.
    pub fn extensions(&self) -> Extensions {
        self.extensions
    }

    // ---- inputs -------------------------------------------------------------------------

    /// Reads a request head from `buf` (everything unconsumed so far). Only in
    /// [`State::Handshake`]; otherwise returns [`Head::Partial`].
    pub fn handle_head<'b>(
        &mut self,
        buf: &'b [u8],
        now: Tick,
        config: &SessionConfig,
        tx: &mut dyn Transmit,
    ) -> Head<'b> {
        if self.state != State::Handshake {
            return Head::Partial;
        }
        match parse_request(buf, &config.handshake) {
            Ok(None) => Head::Partial,
            Ok(Some(request)) => Head::Request(request),
            Err(e) => {
                tx.write(&mut |out| e.write_response(out));
                self.enter_closing(Closing::Http, now, config);
                Head::Refused(e)
            }
        }
    }

    /// Completes the upgrade (§4.2.2): queues the 101 answer and opens the WebSocket for
    /// `endpoint`. The ping deadline starts now.
    pub fn accept(
        &mut self,
        upgrade: &Upgrade<'_>,
        endpoint: Endpoint,
        now: Tick,
        config: &SessionConfig,
        tx: &mut dyn Transmit,
    ) {
        if self.state != State::Handshake {
            return;
        }
        tx.write(&mut |out| write_accept_response(out, upgrade));
        self.state = State::Open;
        self.endpoint = endpoint;
        self.extensions = Extensions::from_upgrade(upgrade.deflate);
        self.timer.last_seen = now.short();
        self.timer.set(now + config.ping_ticks);
    }

    /// Refuses the upgrade: queues the refusal's HTTP answer; the session is closing.
    pub fn refuse(
        &mut self,
        refusal: &Refusal,
        now: Tick,
        config: &SessionConfig,
        tx: &mut dyn Transmit,
    ) {
        if self.state != State::Handshake {
            return;
        }
        tx.write(&mut |out| refusal.write_response(out));
        self.enter_closing(Closing::Http, now, config);
    }

    /// The driver queued a plain HTTP answer (no upgrade was asked): the session is closing.
    pub fn answered(&mut self, now: Tick, config: &SessionConfig) {
        if self.state == State::Handshake {
            self.enter_closing(Closing::Http, now, config);
        }
    }

    /// Decodes the next frame of `buf` and acts on it: a Ping is answered, the peer's Close
    /// echoed (§5.5.1), a broken rule answered with its Close code (§7.4.1); any frame makes
    /// the connection alive again. Returns what the driver must act on. Call again on the
    /// unconsumed rest until a step consumes nothing and has no event. Once closing (or
    /// before the upgrade) the whole input is consumed and discarded.
    ///
    /// With permessage-deflate negotiated, a compressed message (RSV1, RFC 7692 §6) is
    /// inflated with the worker's `inflater` (reset for each message; lend the same one on
    /// every call) as its bytes arrive, up to `--max-message-size`: the connection is failed
    /// with 1009 as soon as the output passes it, with 1007 on bad deflate data or on the
    /// first byte of inflated text that is not UTF-8. The message's data then borrows the
    /// inflater's buffer. See [`Inflater`] for what is kept while a compressed message spans
    /// reads.
    pub fn handle_frames<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        now: Tick,
        config: &SessionConfig,
        tx: &mut dyn Transmit,
        inflater: &'a mut Inflater,
    ) -> Step<'a> {
        if self.state != State::Open {
            return Step {
                consumed: buf.len(),
                event: None,
            };
        }
        let len = buf.len();
        let decoded = if self.extensions.deflate() {
            self.decoder
                .decode_inflating(buf, &config.decoder, inflater)
        } else {
            self.decoder.decode(buf, &config.decoder)
        };
        let step = match decoded {
            Ok(step) => step,
            Err(error) => {
                return fail(
                    &mut self.state,
                    &mut self.timer,
                    error,
                    len,
                    now,
                    config,
                    tx,
                )
            }
        };
        let Some(event) = step.event else {
            return Step {
                consumed: step.consumed,
                event: None,
            };
        };
        self.timer.last_seen = now.short();
        self.timer.put(Liveness::PING_OUTSTANDING, false);
        let event = match event {
            DecoderEvent::Message { kind, data } => Some(Event::Message { kind, data }),
            DecoderEvent::Ping(payload) => {
                tx.pong(payload);
                None
            }
            DecoderEvent::Pong(_) => None,
            DecoderEvent::Close(frame) => {
                // We are open (frames are decoded only then): our Close answers theirs,
                // echoing its code (§5.5.1) — now, or once the answers owed are out.
                let code = frame.map_or(close::NO_STATUS, |f| f.code);
                let (echoed, held, how) = if self.timer.has(Liveness::HOLD_CLOSE) {
                    (None, Some(code), Closing::ReplyHeld)
                } else {
                    let reply = frame.map(|f| f.code);
                    tx.write(&mut |out| write_close_reply(out, reply));
                    (Some(code), None, Closing::Closed)
                };
                self.state = State::Closing {
                    how,
                    fin_sent: false,
                };
                self.timer.set(now + config.close_ticks);
                return Step {
                    consumed: len,
                    event: Some(Event::CloseReceived { code, echoed, held }),
                };
            }
        };
        Step {
            consumed: step.consumed,
            event,
        }
    }

    /// The driver holds the peer's input unread on purpose (back-pressure: the peer is not
    /// silent, we are not listening): the peer counts as heard from at `now` and an
    /// outstanding Ping is forgiven, so no pong timeout runs out while it is paused. Only while
    /// open.
    pub fn vouch_alive(&mut self, now: Tick) {
        if self.state == State::Open {
            self.timer.last_seen = now.short();
            self.timer.put(Liveness::PING_OUTSTANDING, false);
        }
    }

    /// True when `tick` is the session's live deadline (a wheel entry for another tick is
    /// stale: the deadline moved since it was filed).
    pub fn is_deadline(&self, tick: Tick) -> bool {
        tick.short() == self.timer.tick
    }

    /// The live deadline passed: decide. `app_deadline` is the application's own (a token's
    /// expiry; [`Tick::NEVER`] if none): it is honoured while open, and kept as an upper bound
    /// of the next deadline.
    pub fn handle_timeout(
        &mut self,
        now: Tick,
        app_deadline: Tick,
        config: &SessionConfig,
        tx: &mut dyn Transmit,
    ) -> Timeout {
        match self.state {
            State::Handshake => Timeout::Drop(DropReason::Handshake),
            State::Closing { .. } => Timeout::Drop(DropReason::Close),
            State::Open => {
                let silent = now.since_short(self.timer.last_seen);
                if app_deadline <= now {
                    Timeout::AppDeadline
                } else if self.timer.has(Liveness::PING_OUTSTANDING) {
                    Timeout::Drop(DropReason::Pong)
                } else if silent >= config.ping_ticks {
                    self.timer.put(Liveness::PING_OUTSTANDING, true);
                    tx.write(&mut |out| write_frame(out, OpCode::Ping, b""));
                    self.timer.set((now + config.pong_ticks).min(app_deadline));
                    Timeout::Pinged
                } else {
                    let due = now + (config.ping_ticks - silent);
                    self.timer.set(due.min(app_deadline));
                    Timeout::Rearmed
                }
            }
        }
    }

    /// Closes from our side (§7.1.2): queues Close `code` with `reason` (≤ 123 bytes) if no
    /// Close went out yet, then closing. Returns true when a Close frame was queued. Before the
    /// upgrade nothing is sent (the connection just closes).
    pub fn close(
        &mut self,
        code: u16,
        reason: &str,
        now: Tick,
        config: &SessionConfig,
        tx: &mut dyn Transmit,
    ) -> bool {
        match self.state {
            State::Open => {
                tx.write(&mut |out| close::write_close_frame(out, code, reason));
                self.enter_closing(Closing::CloseSent, now, config);
                true
            }
            State::Handshake => {
                self.enter_closing(Closing::Http, now, config);
                false
            }
            State::Closing { .. } => false,
        }
    }

    /// The peer ended its direction: a read returned EOF (a TCP half-close). Nothing more will
    /// be read, but the peer may still be reading, so what is queued (an echo, the Close we
    /// owe, an HTTP answer) is still written: end of input is not a reason to drop output, only
    /// a write error is. The driver closes the connection once its queue is empty
    /// ([`Session::peer_ended`]), or at the close deadline. A session that was not closing yet
    /// is now ([`Closing::PeerGone`]; no Close is sent: the peer chose not to have a closing
    /// handshake).
    pub fn handle_eof(&mut self, now: Tick, config: &SessionConfig) {
        self.timer.put(Liveness::PEER_EOF, true);
        if !self.is_closing() {
            self.enter_closing(Closing::PeerGone, now, config);
        }
    }

    /// True once the peer ended its direction: close as soon as nothing is left to write
    /// (unless a Close reply is still held: [`Session::reply_held`]).
    pub fn peer_ended(&self) -> bool {
        self.timer.has(Liveness::PEER_EOF)
    }

    /// Says whether the application owes the peer answers (a push connection's subscribes
    /// still at the hub, and replies queued behind them). While it does, a Close from the peer
    /// is not answered at once: the session waits in [`Closing::ReplyHeld`] until
    /// [`Session::release_close`], so the answers go out before our Close (§5.5.1 lets data
    /// precede it). Call before feeding frames; it holds for the frames fed after it.
    pub fn hold_close_reply(&mut self, hold: bool) {
        self.timer.put(Liveness::HOLD_CLOSE, hold);
    }

    /// Our answer to the peer's Close is held ([`Closing::ReplyHeld`]).
    pub fn reply_held(&self) -> bool {
        matches!(
            self.state,
            State::Closing {
                how: Closing::ReplyHeld,
                ..
            }
        )
    }

    /// May data frames still go out: open, or closing with our Close reply held (what is
    /// owed goes before it).
    pub fn may_send_data(&self) -> bool {
        self.is_open() || self.reply_held()
    }

    /// The answers owed are out: queue the held Close reply with `code` (the one
    /// [`Event::CloseReceived`] gave as `held`; [`close::NO_STATUS`] for an empty Close).
    /// Returns false (and does nothing) if no reply was held.
    pub fn release_close(&mut self, code: u16, tx: &mut dyn Transmit) -> bool {
        if !self.reply_held() {
            return false;
        }
        let reply = (code != close::NO_STATUS).then_some(code);
        tx.write(&mut |out| write_close_reply(out, reply));
        self.state = State::Closing {
            how: Closing::Closed,
            fin_sent: false,
        };
        true
    }

    /// `len` bytes arrived while closing and were discarded (a lingering close: reading on
    /// after our last bytes, so the peer's unread input does not turn our close into a reset
    /// before it read them). Returns false once an HTTP answer's lingering passed
    /// [`LINGER_MAX_BYTES`]: the driver drops the connection. A WebSocket closing handshake is
    /// bounded by the close deadline alone: its peer may be mid-way through a large message
    /// when our Close goes out (a slow consumer's 1008, a drain's 1001), and what it still
    /// sends is part of an orderly end.
    pub fn discard(&mut self, len: usize) -> bool {
        let blocks = u16::try_from(len.div_ceil(LINGER_BLOCK)).unwrap_or(u16::MAX);
        self.timer.discarded_blocks = self.timer.discarded_blocks.saturating_add(blocks);
        let http = matches!(
            self.state,
            State::Closing {
                how: Closing::Http,
                ..
            }
        );
        !http || usize::from(self.timer.discarded_blocks) * LINGER_BLOCK <= LINGER_MAX_BYTES
    }

    /// The application's deadline changed (a token arrived or was refreshed, expiring at
    /// `app_deadline`): the next deadline becomes the keep-alive one (a Ping is due
    /// `--ping-interval` after the last frame, at the earliest next tick), or `app_deadline`
    /// if that comes first. Only while open.
    pub fn set_app_deadline(&mut self, now: Tick, app_deadline: Tick, config: &SessionConfig) {
        if self.state != State::Open {
            return;
        }
        let silent = now.since_short(self.timer.last_seen);
        let ping_due = Tick(now.0 - silent.min(now.0)) + config.ping_ticks;
        self.timer.set(ping_due.max(now + 1).min(app_deadline));
    }

    // ---- outputs ------------------------------------------------------------------------

    /// The deadline to arm, once each time it changes (the wheel keeps one live entry per
    /// connection; older ones are recognised as stale by [`Session::is_deadline`]). Call it
    /// after every input. A closing session also lets go of any half-assembled message here.
    #[must_use]
    pub fn poll_timeout(&mut self, now: Tick) -> Option<Tick> {
        if self.is_closing() {
            self.decoder = Decoder::new();
        }
        self.timer
            .take(Liveness::REARM)
            .then(|| now.expand(self.timer.tick))
    }

    /// Called after a flush that left nothing queued: true (once) when the driver must now
    /// send FIN (shut down writing), because everything this connection will get is out.
    #[must_use]
    pub fn poll_fin(&mut self) -> bool {
        match &mut self.state {
            State::Closing { how, fin_sent } if !*fin_sent && *how != Closing::ReplyHeld => {
                *fin_sent = true;
                true
            }
            _ => false,
        }
    }

    // ---- internals ----------------------------------------------------------------------

    /// Everything is queued: the close deadline starts. (The decoder's half-assembled
    /// message, if any, is freed by the next [`Session::poll_timeout`].)
    fn enter_closing(&mut self, how: Closing, now: Tick, config: &SessionConfig) {
        self.state = State::Closing {
            how,
            fin_sent: false,
        };
        self.timer.set(now + config.close_ticks);
    }
}

/// The peer broke a rule while open: queue Close with the error's code (§7.4.1) and start
/// closing. Takes the session's fields apart so that it can run while the decoder's output is
/// still borrowed.
fn fail<'a>(
    state: &mut State,
    timer: &mut Liveness,
    error: ProtocolError,
    len: usize,
    now: Tick,
    config: &SessionConfig,
    tx: &mut dyn Transmit,
) -> Step<'a> {
    let code = error.close_code();
    tx.write(&mut |out| close::write_close_frame(out, code, ""));
    *state = State::Closing {
        how: Closing::CloseSent,
        fin_sent: false,
    };
    timer.set(now + config.close_ticks);
    Step {
        consumed: len,
        event: Some(Event::ProtocolError(error)),
    }
}

/// Our answer to a peer's Close: its code echoed, or an empty Close for an empty one
/// (§5.5.1).
fn write_close_reply(out: &mut Vec<u8>, code: Option<u16>) {
    match code {
        Some(code) => close::write_close_frame(out, code, ""),
        None => write_frame(out, OpCode::Close, b""),
    }
}
