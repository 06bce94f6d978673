//! One event loop per core: a mio `Poll`, its own `SO_REUSEPORT` listener, a slab of
//! connections, a timer wheel, one read buffer shared by all its connections and one cork
//! buffer for what a turn writes.
//!
//! Each turn: poll (sleeping at most until the wheel's next deadline), handle every event —
//! accept until `WouldBlock`; read until `WouldBlock` (or a fairness budget, after which the
//! connection is revisited next turn), decode, answer; write what was produced in one go —
//! then fire due timers. Interest is recomputed from the connection's state after each turn:
//! WRITABLE only while bytes are queued. Events are hints; a stale or spurious one costs a
//! `WouldBlock`.

mod push;
mod upstream;

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::http::origin::origin_matches;
use crate::metrics::HandshakeFailure;
use crate::protocol::close;
use crate::protocol::deflate::{Deflater, Inflater};
use crate::protocol::frame::{write_frame, OpCode};
use crate::protocol::handshake::Request;
use crate::protocol::message::MessageKind;
use crate::push::hub::ToWorker;
use crate::push::router::Router;
use crate::server::connection::{Connection, Flushed, Handle, Outbound};
use crate::server::drain::DrainSchedule;
use crate::server::hub_loop::HubHandle;
use crate::server::per_ip::client_address;
use crate::server::timer_wheel::{Entry, TimerWheel};
use crate::server::transport::{Transport, TransportEvent};
use crate::server::{http, Settings, Stats};
use crate::session::{
    DropReason, Endpoint, Event, Extensions, Head, Refusal, Session, SessionConfig, State, Timeout,
    Transmit,
};
use crate::tick::Tick;

pub(crate) const LISTENER: Token = Token(usize::MAX);
pub(crate) const WAKER: Token = Token(usize::MAX - 1);

/// The shared read buffer's size: one read takes at most this much.
const READ_BUF_SIZE: usize = 64 * 1024;
/// Reads per connection per turn before others get their turn.
const MAX_READS_PER_TURN: usize = 16;
/// A cork buffer grown past this (a large echo) is shrunk back after use.
const CORK_KEEP: usize = 256 * 1024;
/// A cork this full is written before the turn ends.
const CORK_FLUSH: usize = 64 * 1024;
/// How long accepting pauses after EMFILE/ENFILE.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How often a draining worker sends its next Close frames.
const DRAIN_STEP: Duration = Duration::from_millis(10);
/// The wheel's slot key for the accept-pause timer (never a slab key).
const ACCEPT_TIMER_KEY: u32 = u32::MAX;

/// A worker's connection to the hub: the way there and its own inbox.
pub(crate) struct HubLink {
    pub(crate) hub: HubHandle,
    pub(crate) inbox: Receiver<ToWorker>,
    /// Bytes pinned by inbox messages not yet taken (the hub's admission bound).
    pub(crate) inbox_load: Arc<AtomicUsize>,
}

/// A worker over connections of transport `T` (plain TCP or TLS: a listener is one or the
/// other for its whole life).
pub(crate) struct Worker<T: Transport> {
    id: usize,
    link: HubLink,
    /// Something was sent to the hub this turn: wake it once at the end.
    hub_wake: bool,
    /// The inbox was not emptied this turn (its per-turn budget ran out).
    inbox_again: bool,
    /// The push layer's state on this worker: channels, users joining, subscribes in flight,
    /// grants (see `push::router`).
    router: Router,
    /// Connections with frames queued by fan-out this turn, flushed at its end.
    dirty: Vec<Handle>,
    /// Push-endpoint messages of the connection being read, handled after its frames.
    push_in: Vec<u8>,
    push_msgs: Vec<(MessageKind, usize, usize)>,
    /// Client addresses of connections counted by the per-address limits (only when on).
    client_ips: HashMap<u32, IpAddr>,
    /// The drain in progress, if any.
    drain: Option<DrainSchedule<Handle>>,
    /// Counters summed locally and published once per turn.
    bytes_in: u64,
    bytes_out: u64,
    poll: Poll,
    listener: TcpListener,
    accepting: bool,
    warned_accept_pause: bool,
    conns: Slab<Connection<T>>,
    /// What each accepted socket is wrapped with (TLS: the shared rustls configuration).
    acceptor: T::Acceptor,
    next_generation: u32,
    /// One live entry per connection: its handle, at its deadline (an entry whose deadline is
    /// no longer the connection's is stale and skipped).
    wheel: TimerWheel<Handle>,
    fired: Vec<Entry<Handle>>,
    /// The wheel's tick, read once per turn.
    now: Tick,
    read_buf: Box<[u8]>,
    /// Frames produced for the connection being handled while it has no outbound queue.
    cork: Vec<u8>,
    /// permessage-deflate: the one decompressor and the one compressor of this worker, lent
    /// per message (no connection keeps compression state).
    inflater: Inflater,
    deflater: Deflater,
    /// Connections whose input was not read to the end this turn (the fairness budget).
    again: Vec<Handle>,
    settings: Arc<Settings>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    /// The upstream client (`--upstream`), if configured.
    upstream: Option<Box<upstream::Upstream>>,
    /// Times `next_generation` wrapped (for connection ids that are never reused).
    generation_epoch: u32,
}

impl<T: Transport> Worker<T> {
    pub(crate) fn new(
        id: usize,
        mut listener: TcpListener,
        acceptor: T::Acceptor,
        link: HubLink,
        settings: Arc<Settings>,
        stats: Arc<Stats>,
        stop: Arc<AtomicBool>,
    ) -> io::Result<(Worker<T>, Arc<Waker>)> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let wheel = TimerWheel::new(settings.tick, 4096, Instant::now());
        let upstream = settings.upstream.clone().map(|config| {
            let timeout = settings.ticks(config.timeout);
            let max_body = settings.session.decoder.max_message_size;
            Box::new(upstream::Upstream::new(config, timeout, max_body))
        });
        Ok((
            Worker {
                id,
                link,
                hub_wake: false,
                inbox_again: false,
                router: push::new_router(id, &settings),
                dirty: Vec::new(),
                push_in: Vec::new(),
                push_msgs: Vec::new(),
                client_ips: HashMap::new(),
                drain: None,
                bytes_in: 0,
                bytes_out: 0,
                poll,
                listener,
                accepting: true,
                warned_accept_pause: false,
                conns: Slab::new(),
                acceptor,
                next_generation: 0,
                wheel,
                fired: Vec::new(),
                now: Tick(0),
                read_buf: vec![0u8; READ_BUF_SIZE + T::READ_EXTRA].into_boxed_slice(),
                cork: Vec::new(),
                inflater: Inflater::new(),
                deflater: Deflater::new(),
                again: Vec::new(),
                settings,
                stats,
                stop,
                upstream,
                generation_epoch: 0,
            },
            waker,
        ))
    }

    /// Runs until the stop flag is set (and the waker pokes the loop).
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        while !self.stop.load(Ordering::Relaxed) {
            let mut timeout = if self.again.is_empty() && !self.inbox_again && !self.has_resumed() {
                self.wheel.next_expiry_hint(Instant::now())
            } else {
                Some(Duration::ZERO)
            };
            if self.drain.is_some() {
                // Pace the Close frames: look again every 10 ms.
                timeout = Some(timeout.map_or(DRAIN_STEP, |t| t.min(DRAIN_STEP)));
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("worker {}: poll failed: {e}", self.id);
                    break;
                }
            }
            let now = Instant::now();
            self.now = Tick(self.wheel.tick_of(now));
            for event in events.iter() {
                match event.token() {
                    LISTENER => {
                        if self.accepting {
                            self.accept_all();
                        }
                    }
                    WAKER => self.take_inbox(),
                    token if upstream::is_upstream(Handle::from_token(token)) => {
                        let readable =
                            event.is_readable() || event.is_read_closed() || event.is_error();
                        self.on_upstream_event(
                            Handle::from_token(token),
                            readable,
                            event.is_writable(),
                        );
                    }
                    token => {
                        let handle = Handle::from_token(token);
                        let closing = event.is_read_closed() || event.is_error();
                        if event.is_readable() || closing {
                            self.on_readable(handle, closing);
                        }
                        if event.is_writable() {
                            self.flush(handle);
                        }
                    }
                }
            }
            for handle in std::mem::take(&mut self.again) {
                self.on_readable(handle, true);
            }
            self.resume_paused();
            if self.inbox_again {
                self.take_inbox();
            }
            self.wheel.advance(now, &mut self.fired);
            let mut fired = std::mem::take(&mut self.fired);
            for timer in fired.drain(..) {
                self.on_timer(timer.item, timer.deadline);
            }
            self.fired = fired;
            self.end_turn();
            if self.drain_step(now) {
                break;
            }
        }
        debug!(
            "worker {}: stopping with {} connections",
            self.id,
            self.conns.len()
        );
    }

    fn get(&mut self, handle: Handle) -> Option<&mut Connection<T>> {
        self.conns
            .get_mut(handle.key as usize)
            .filter(|c| c.generation == handle.generation)
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((socket, addr)) => {
                    if let Err(e) = socket.set_nodelay(true) {
                        debug!("{addr}: TCP_NODELAY: {e}");
                    }
                    let mut socket = match T::accept(socket, &self.acceptor) {
                        Ok(socket) => socket,
                        Err(e) => {
                            warn!("worker {}: {addr}: {e}", self.id);
                            continue;
                        }
                    };
                    let generation = self.next_generation;
                    self.next_generation = self.next_generation.wrapping_add(1);
                    if self.next_generation == 0 {
                        self.generation_epoch = self.generation_epoch.wrapping_add(1);
                    }
                    let entry = self.conns.vacant_entry();
                    let handle = Handle {
                        key: entry.key() as u32,
                        generation,
                    };
                    if let Err(e) = self.poll.registry().register(
                        &mut socket,
                        handle.token(),
                        Interest::READABLE,
                    ) {
                        warn!("worker {}: register: {e}", self.id);
                        continue;
                    }
                    let session = Session::new(self.now, &self.settings.session);
                    entry.insert(Connection::new(socket, generation, session));
                    self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    self.sync_timer(handle);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    self.pause_accepting(e);
                    return;
                }
                Err(e) => {
                    // ECONNABORTED and the like concern one connection only.
                    debug!("worker {}: accept: {e}", self.id);
                }
            }
        }
    }

    /// Out of file descriptors: stop accepting for a while instead of spinning on a listener
    /// that stays readable.
    fn pause_accepting(&mut self, error: io::Error) {
        self.accepting = false;
        self.stats.accept_pauses.fetch_add(1, Ordering::Relaxed);
        if !self.warned_accept_pause {
            self.warned_accept_pause = true;
            warn!(
                "worker {}: accept failed ({error}); pausing accepts for {ACCEPT_PAUSE:?} each time \
                 this happens (raise the open-files limit; warned once)",
                self.id
            );
        }
        let tick = self.now + self.settings.ticks(ACCEPT_PAUSE);
        self.wheel.insert(
            tick.0,
            Handle {
                key: ACCEPT_TIMER_KEY,
                generation: 0,
            },
        );
    }

    /// The push layer's deadline for a connection (its token's expiry) changed: the session
    /// re-derives its next deadline from it, and the wheel is armed there.
    fn set_app_deadline(&mut self, handle: Handle, app_deadline: Tick) {
        let now = self.now;
        let settings = Arc::clone(&self.settings);
        if let Some(conn) = self.get(handle) {
            conn.session
                .set_app_deadline(now, app_deadline, &settings.session);
        }
        self.sync_timer(handle);
    }

    fn on_timer(&mut self, handle: Handle, tick: u64) {
        if handle.key == ACCEPT_TIMER_KEY {
            self.accepting = true;
            self.accept_all();
            return;
        }
        if upstream::is_upstream(handle) {
            return self.on_upstream_timer(handle, tick);
        }
        let paused = self.upstream_paused(handle);
        let now = self.now;
        let Some(conn) = self.get(handle) else {
            return;
        };
        if !conn.session.is_deadline(Tick(tick)) {
            return; // re-armed since
        }
        if paused {
            // We are the ones not reading: its silence is not the peer's.
            conn.session.vouch_alive(now);
        }
        let app_deadline = conn.push.as_ref().map_or(Tick::NEVER, |p| p.expires());
        let timeout = self.with_session(handle, |session, now, config, tx| {
            session.handle_timeout(now, app_deadline, config, tx)
        });
        let peer = self.get(handle).map(|c| peer(c)).unwrap_or_default();
        let transport_handshake = self.get(handle).is_some_and(|c| c.socket.in_handshake());
        match timeout {
            None => {}
            Some(Timeout::Rearmed) => self.sync_timer(handle),
            Some(Timeout::Pinged) => self.flush(handle),
            Some(Timeout::AppDeadline) => {
                debug!("{peer}: token expired");
                self.close_with(handle, close::TOKEN_EXPIRED, "token expired");
            }
            Some(Timeout::Drop(why)) => {
                match why {
                    DropReason::Handshake => {
                        debug!("{peer}: handshake timeout");
                        self.stats.handshake_failed(HandshakeFailure::Timeout);
                        if transport_handshake {
                            self.stats.transport_event(TransportEvent::HandshakeFailed(
                                crate::tls::TlsFailure::Timeout,
                            ));
                        }
                    }
                    DropReason::Pong => {
                        debug!("{peer}: no frame within the pong timeout");
                        self.stats.pong_timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                    DropReason::Close => debug!("{peer}: close timeout"),
                }
                self.remove(handle);
            }
        }
    }

    /// Runs `f` on the connection's session with what every session input needs: the turn's
    /// tick, the sessions' config, and the connection's transmit sink. `None` if the
    /// connection is gone.
    fn with_session<R>(
        &mut self,
        handle: Handle,
        f: impl FnOnce(&mut Session, Tick, &SessionConfig, &mut dyn Transmit) -> R,
    ) -> Option<R> {
        let now = self.now;
        let Worker {
            conns,
            cork,
            settings,
            ..
        } = self;
        let conn = conn_of(conns, handle)?;
        let mut tx = Tx::new(&mut conn.outbound, cork);
        Some(f(&mut conn.session, now, &settings.session, &mut tx))
    }

    /// Arms the wheel at the session's new deadline, if it has one.
    fn sync_timer(&mut self, handle: Handle) {
        let now = self.now;
        if let Some(tick) = self.get(handle).and_then(|c| c.session.poll_timeout(now)) {
            self.wheel.insert(tick.0, handle);
        }
    }
    /// Reads until the socket is drained (or the per-turn budget), handling what arrived, then writes
    /// what that produced.
    ///
    /// A short read (less than the buffer offered) means the socket was drained: data that
    /// arrives later raises a new edge, so the extra `read` that would only say `WouldBlock`
    /// is skipped — a third of the syscalls of a request/answer exchange. When the event
    /// reported a hang-up (`closing`), reading goes on until EOF so it is not missed.
    fn on_readable(&mut self, handle: Handle, closing: bool) {
        if self.upstream_paused(handle) {
            // Back-pressure: read again once its actions drain (`resume_paused`).
            return;
        }
        let mut buf = std::mem::take(&mut self.read_buf);
        let mut reads = 0;
        let mut alive = true;
        let mut eof = false;
        while let Some(conn) = conn_of(&mut self.conns, handle) {
            if conn.session.peer_ended() {
                break; // EOF seen already: nothing more to read
            }
            if reads == MAX_READS_PER_TURN {
                self.again.push(handle);
                break;
            }
            reads += 1;
            let stash_len = conn.stash.as_ref().map_or(0, |s| s.len());
            if let Some(stash) = &conn.stash {
                buf[..stash_len].copy_from_slice(stash);
            }
            let offered = buf.len() - stash_len;
            let read = conn.socket.read(&mut buf[stash_len..]);
            if let Some(event) = conn.socket.take_event() {
                self.stats.transport_event(event);
            }
            match read {
                Ok(0) => {
                    debug!("{}: peer ended its direction (EOF)", peer(conn));
                    eof = true;
                    break;
                }
                Ok(n) if conn.session.is_closing() => {
                    // Lingering: read and discard (time-bounded by the close deadline).
                    conn.stash = None;
                    let keep = conn.session.discard(n);
                    if !keep {
                        // An abortive close (RST): the queue we drop is not passed off as a
                        // complete stream ending in a FIN.
                        debug!("{}: too much input while closing; resetting", peer(conn));
                        let _ = conn.socket.abort_on_close();
                    }
                    self.bytes_in += n as u64;
                    if !keep {
                        alive = false;
                        break;
                    }
                    if !conn.socket.may_have_more(n, offered) && !closing {
                        break;
                    }
                }
                Ok(n) => {
                    self.bytes_in += n as u64;
                    let end = stash_len + n;
                    let drained = !conn.socket.may_have_more(n, offered) && !closing;
                    let consumed = self.handle_input(handle, &mut buf[..end]);
                    if let Some(conn) = self.get(handle) {
                        let rest = &buf[consumed.min(end)..end];
                        conn.stash = (!rest.is_empty()).then(|| Box::new(rest.to_vec()));
                    }
                    if self.upstream_paused(handle) {
                        break;
                    }
                    // A long turn (a ping flood, a burst of echoes) writes as it goes: the
                    // cork stays small, and once the socket refuses bytes the queue takes
                    // over, where only the latest pong waits.
                    if self.cork.len() >= CORK_FLUSH {
                        self.flush(handle);
                    }
                    if drained {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("{}: read failed: {e}", peer(conn));
                    alive = false;
                    break;
                }
            }
        }
        self.read_buf = buf;
        if !alive {
            // What this read produced is for a connection that is gone.
            self.cork.clear();
            self.remove(handle);
            return;
        }
        if eof {
            // End of input is not a reason to drop output: what this read produced (an echo,
            // the Close we owe, an HTTP answer) still goes out, then the connection closes.
            let settings = Arc::clone(&self.settings);
            let now = self.now;
            if let Some(conn) = self.get(handle) {
                conn.stash = None;
                conn.session.handle_eof(now, &settings.session);
            }
            // A Close reply held for answers still owed keeps the connection in the tables
            // until the router releases it.
            if !self.get(handle).is_some_and(|c| c.session.reply_held()) {
                self.after_close(handle);
            }
        }
        self.flush(handle);
    }

    /// Handles bytes read for a connection; returns how many are done with (the rest is an
    /// unfinished head or frame, kept for the next read).
    fn handle_input(&mut self, handle: Handle, buf: &mut [u8]) -> usize {
        let Some(conn) = self.get(handle) else {
            return buf.len();
        };
        match conn.session.state() {
            State::Handshake => self.handle_request(handle, buf),
            State::Open => self.handle_frames(handle, buf),
            // Everything is queued: what arrives is discarded.
            State::Closing { .. } => buf.len(),
        }
    }

    fn handle_request(&mut self, handle: Handle, buf: &mut [u8]) -> usize {
        let settings = Arc::clone(&self.settings);
        let now = self.now;
        let Worker { conns, cork, .. } = self;
        let Some(conn) = conn_of(conns, handle) else {
            return buf.len();
        };
        let request = match conn.session.handle_head(
            buf,
            now,
            &settings.session,
            &mut Tx::new(&mut conn.outbound, cork),
        ) {
            Head::Partial => return 0,
            Head::Request(request) => request,
            Head::Refused(e) => {
                self.stats
                    .handshake_failed(HandshakeFailure::from_status(e.status()));
                debug!("{}: {e}; answering {}", peer(conn), e.status());
                return buf.len();
            }
        };
        let Some(upgrade) = request.upgrade else {
            let unavailable = if self.stats.draining.load(Ordering::Relaxed) {
                Some("draining\n")
            } else if self.stats.store_down.load(Ordering::Relaxed) {
                Some("cluster store (Redis) unreachable\n")
            } else {
                None
            };
            let status = http::answer_plain(&request, unavailable, cork);
            debug!(
                "{}: {} {} -> {status}",
                peer(conn),
                request.method,
                request.path
            );
            conn.session.answered(now, &settings.session);
            return buf.len();
        };
        let (endpoint, identity, mut refusal) = self.admit(&request);
        // Per-address limits come last: only an upgrade that would otherwise succeed counts.
        let client_ip = match (&settings.ip_limits, &refusal) {
            (Some(limits), None) => {
                let ip = self.client_ip(handle, &request);
                match ip.map(|ip| (ip, limits.admit(ip, Instant::now()))) {
                    Some((ip, Ok(()))) => Some(ip),
                    Some((ip, Err(why))) => {
                        if let Some(conn) = self.get(handle) {
                            debug!("{}: client {ip}: {why:?}", peer(conn));
                        }
                        refusal = Some(Refusal::TooManyFromAddress);
                        None
                    }
                    None => {
                        refusal = Some(Refusal::TooManyFromAddress);
                        None
                    }
                }
            }
            _ => None,
        };
        let Worker { conns, cork, .. } = self;
        let Some(conn) = conn_of(conns, handle) else {
            return buf.len();
        };
        if let Some(refusal) = refusal {
            self.stats.handshake_failed(refusal.failure());
            debug!(
                "{}: upgrade to {} refused with {}: {}",
                peer(conn),
                request.path,
                refusal.status(),
                refusal.body().trim()
            );
            let mut tx = Tx::new(&mut conn.outbound, cork);
            conn.session
                .refuse(&refusal, now, &settings.session, &mut tx);
            return buf.len();
        }
        let mut tx = Tx::new(&mut conn.outbound, cork);
        conn.session
            .accept(&upgrade, endpoint, now, &settings.session, &mut tx);
        let head_len = request.head_len;
        self.stats.upgraded(self.id);
        if let Some(ip) = client_ip {
            self.client_ips.insert(handle.key, ip);
        }
        if let Some(Ok(identity)) = identity {
            self.accept_push(handle, identity);
        }
        head_len + self.handle_frames(handle, &mut buf[head_len..])
    }

    /// Decides an upgrade request: its endpoint, the push endpoint's identity, and the first
    /// reason to refuse it (before the per-address limits, which the caller checks last).
    fn admit(
        &self,
        request: &Request<'_>,
    ) -> (
        Endpoint,
        Option<Result<push::Identity, Refusal>>,
        Option<Refusal>,
    ) {
        let settings = &self.settings;
        let endpoint = if settings.echo_path.as_deref() == Some(request.path) {
            Endpoint::Echo
        } else if settings.ws_path == request.path {
            Endpoint::Push
        } else {
            Endpoint::None
        };
        let origin_ok = settings.allowed_origins.is_empty()
            || request.origin.is_none_or(|o| {
                settings
                    .allowed_origins
                    .iter()
                    .any(|a| origin_matches(a, o))
            });
        let identity = match endpoint {
            Endpoint::Push if origin_ok => Some(push::authenticate(settings, request)),
            _ => None,
        };
        let refusal = if endpoint == Endpoint::None {
            Some(Refusal::NoEndpoint)
        } else if !origin_ok {
            Some(Refusal::OriginNotAllowed)
        } else if self.stats.draining.load(Ordering::Relaxed) {
            Some(Refusal::Draining)
        } else if endpoint == Endpoint::Push && self.stats.store_down.load(Ordering::Relaxed) {
            Some(Refusal::StoreDown)
        } else if self.stats.open() >= settings.max_connections {
            Some(Refusal::Full)
        } else if let Some(Err(refusal)) = &identity {
            Some(refusal.clone())
        } else {
            None
        };
        (endpoint, identity, refusal)
    }

    /// Decodes frames and acts on them; returns the bytes done with.
    fn handle_frames(&mut self, handle: Handle, buf: &mut [u8]) -> usize {
        let mut pos = 0;
        let mut messages = 0u64;
        loop {
            // Decode until the input is used up, the session closes, or a push message needs
            // the router (which wants the whole worker: the session's borrow ends first).
            let mut held_close = None;
            let (done, push_message) = {
                let Worker {
                    conns,
                    cork,
                    settings,
                    stats,
                    now,
                    push_in,
                    push_msgs,
                    inflater,
                    deflater,
                    router,
                    ..
                } = self;
                let Some(conn) = conn_of(conns, handle) else {
                    return buf.len();
                };
                let is_push = conn.session.endpoint() == Endpoint::Push;
                let extensions = conn.session.extensions();
                // A Close arriving while answers are owed is answered after them.
                conn.session
                    .hold_close_reply(is_push && router.owes(push::conn_id(handle)));
                loop {
                    let step = conn.session.handle_frames(
                        &mut buf[pos..],
                        *now,
                        &settings.session,
                        &mut Tx::new(&mut conn.outbound, cork),
                        inflater,
                    );
                    pos += step.consumed;
                    match step.event {
                        None if step.consumed == 0 => break (true, false),
                        None => {}
                        Some(Event::Message { kind, data }) => {
                            messages += 1;
                            if is_push {
                                let start = push_in.len();
                                push_in.extend_from_slice(data);
                                push_msgs.push((kind, start, push_in.len()));
                                break (false, true);
                            }
                            let min_size = settings.compression_min_size;
                            emit(&mut conn.outbound, cork, |out| {
                                echo(out, kind, data, extensions, deflater, min_size)
                            });
                            stats.messages_out.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Event::CloseReceived { code, echoed, held }) => {
                            stats.close_received.add(code);
                            if let Some(code) = echoed {
                                stats.close_sent.add(code);
                            }
                            held_close = held;
                            break (true, false);
                        }
                        Some(Event::ProtocolError(e)) => {
                            debug!("{}: {e}; closing with {}", peer(conn), e.close_code());
                            stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                            stats.close_sent.add(e.close_code());
                            break (true, false);
                        }
                    }
                }
            };
            if let Some(code) = held_close {
                self.hold_close(handle, code);
            }
            if push_message {
                // Answered before the next frame is decoded: its replies go out ahead of
                // whatever follows it on the wire, the peer's Close included.
                self.handle_push_messages(handle);
                if self.upstream_paused(handle) {
                    break; // the rest waits in the stash until its actions drain
                }
            }
            if done {
                break;
            }
        }
        self.stats
            .messages_in
            .fetch_add(messages, Ordering::Relaxed);
        match self.get(handle) {
            None => buf.len(),
            // Its Close reply is held for answers still owed: it stays in the tables until
            // the router releases it.
            Some(c) if c.session.reply_held() => buf.len(),
            Some(c) if c.session.is_closing() => {
                self.after_close(handle);
                buf.len()
            }
            Some(_) => pos,
        }
    }

    /// Starts draining: every open WebSocket gets Close 1001, spread evenly over `spread`.
    pub(super) fn begin_drain(&mut self, spread: Duration, timeout: Duration) {
        let queue: Vec<Handle> = self
            .conns
            .iter()
            .filter(|(_, c)| c.session.is_open())
            .map(|(key, c)| c.handle(key))
            .collect();
        debug!(
            "worker {}: draining {} connections over {spread:?}",
            self.id,
            queue.len()
        );
        self.drain = Some(DrainSchedule::new(queue, Instant::now(), spread, timeout));
    }

    /// Sends the Close frames that are due; true when the drain is over and the worker stops.
    fn drain_step(&mut self, now: Instant) -> bool {
        let Some(drain) = self.drain.as_mut() else {
            return false;
        };
        let closing = drain.due(now).to_vec();
        for handle in closing {
            if self.get(handle).is_some_and(|c| c.session.is_open()) {
                self.close_with(handle, close::GOING_AWAY, "server going away");
            }
        }
        let open_here = self
            .stats
            .worker_open
            .get(self.id)
            .map_or(0, |n| n.load(Ordering::Relaxed));
        self.drain
            .as_ref()
            .is_some_and(|d| d.is_over(now, open_here))
    }

    /// The client's address for per-address limits: the peer's, or the one a trusted proxy
    /// forwarded.
    fn client_ip(
        &mut self,
        handle: Handle,
        request: &crate::protocol::handshake::Request<'_>,
    ) -> Option<IpAddr> {
        let peer = Transport::peer_addr(&self.get(handle)?.socket).ok()?.ip();
        Some(client_address(
            peer,
            &self.settings.trust_proxy,
            request.x_forwarded_for,
            request.x_real_ip,
        ))
    }

    /// Closes a connection from our side with `code`: Close frame (if none went out yet),
    /// then FIN once it is flushed.
    fn close_with(&mut self, handle: Handle, code: u16, reason: &str) {
        let sent = self.with_session(handle, |session, now, config, tx| {
            session.close(code, reason, now, config, tx)
        });
        if sent == Some(true) {
            self.stats.close_sent.add(code);
        }
        self.after_close(handle);
        self.flush(handle);
    }

    /// Publishes the turn's counters and wakes the hub if anything was sent to it.
    fn end_turn(&mut self) {
        // Frames queued this turn outside a connection's own read (e.g. replies released by a
        // subscribe answer taken from the inbox) go out now at the latest.
        if !self.dirty.is_empty() {
            self.flush_dirty();
        }
        if self.bytes_in > 0 {
            self.stats
                .bytes_in
                .fetch_add(std::mem::take(&mut self.bytes_in), Ordering::Relaxed);
        }
        if self.bytes_out > 0 {
            self.stats
                .bytes_out
                .fetch_add(std::mem::take(&mut self.bytes_out), Ordering::Relaxed);
        }
        if std::mem::take(&mut self.hub_wake) {
            if let Err(e) = self.link.hub.waker.wake() {
                warn!("worker {}: waking the hub: {e}", self.id);
            }
        }
    }

    /// The session is closing: it will never be sent another message, so it leaves the
    /// routing tables now (presence and the `$user` TTL don't wait for the peer's EOF).
    fn after_close(&mut self, handle: Handle) {
        self.upstream_forget(handle);
        let Some(push) = self.get(handle).and_then(|c| c.push.take()) else {
            return;
        };
        self.forget_push(handle, *push);
    }

    /// Writes what is queued or corked for the connection, applies the backlog limit, sends
    /// FIN once a finishing connection is flushed, and sets WRITABLE interest to match.
    fn flush(&mut self, handle: Handle) {
        let Worker {
            conns,
            cork,
            settings,
            poll,
            bytes_out,
            wheel,
            now,
            ..
        } = self;
        let Some(conn) = conns
            .get_mut(handle.key as usize)
            .filter(|c| c.generation == handle.generation)
        else {
            cork.clear();
            return;
        };
        // Registered for WRITABLE exactly while a queue exists: the flag lives in the queue,
        // so an idle connection keeps no bit for it.
        let had_writable = conn.outbound.as_ref().is_some_and(|o| o.writable_interest);
        let result = match conn.outbound.as_mut() {
            None => {
                let result = write_direct(&mut conn.socket, cork);
                if let Ok(written) = result {
                    *bytes_out += written as u64;
                    // A transport holding bytes back (TLS records the socket refused) waits
                    // for WRITABLE behind an empty queue.
                    if written < cork.len() || conn.socket.has_pending() {
                        conn.outbound = Some(Box::new(Outbound::with_partial(cork, written)));
                    }
                }
                cork.clear();
                if cork.capacity() > CORK_KEEP {
                    cork.shrink_to(CORK_KEEP / 4);
                }
                result.map(|_| ())
            }
            Some(outbound) => {
                let before = outbound.queued;
                let result = outbound.flush(&mut conn.socket);
                *bytes_out += (before - outbound.queued) as u64;
                result.map(|flushed| {
                    if flushed == Flushed::All {
                        conn.outbound = None;
                    }
                })
            }
        };
        if let Err(e) = result {
            debug!("{}: write failed: {e}", peer_of(&conn.socket));
            self.remove(handle);
            return;
        }
        if conn.outbound.is_none() && conn.session.peer_ended() && !conn.session.reply_held() {
            // The peer's input ended and everything owed to it is out.
            self.remove(handle);
            return;
        }
        // A closing connection may stay over the limit (a half-written chunk plus our
        // Close): it is already on its way out.
        if conn.queued() > settings.max_backlog && !conn.session.is_closing() {
            return self.drop_slow_consumer(handle);
        }
        if conn.outbound.is_none() && conn.session.poll_fin() {
            // Our last bytes are out: FIN, then wait for the peer's EOF (or the timeout).
            let _ = conn.socket.shutdown_write();
        }
        if let Some(tick) = conn.session.poll_timeout(*now) {
            wheel.insert(tick.0, handle);
        }
        let interest = match conn.outbound.as_deref_mut() {
            Some(outbound) if !outbound.writable_interest => {
                outbound.writable_interest = true;
                Interest::READABLE | Interest::WRITABLE
            }
            None if had_writable => Interest::READABLE,
            _ => return,
        };
        if let Err(e) = poll
            .registry()
            .reregister(&mut conn.socket, handle.token(), interest)
        {
            debug!("{}: reregister: {e}", peer_of(&conn.socket));
            self.remove(handle);
        }
    }

    /// Slow consumer: keep a half-written frame, drop the rest, say 1008 and close.
    fn drop_slow_consumer(&mut self, handle: Handle) {
        let Some(conn) = conn_of(&mut self.conns, handle) else {
            return;
        };
        if !conn.session.is_open() {
            return;
        }
        debug!(
            "{}: {} bytes queued, over --max-backlog; closing with 1008",
            peer(conn),
            conn.queued()
        );
        self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
        // The Close goes after the half-written frame, in the queue (never the cork).
        conn.outbound
            .get_or_insert_with(Default::default)
            .drop_unstarted();
        self.close_with(handle, close::POLICY, "slow consumer");
    }

    /// Drops the connection (closing its socket).
    fn remove(&mut self, handle: Handle) {
        if self.get(handle).is_none() {
            return;
        }
        let mut conn = self.conns.remove(handle.key as usize);
        if conn.session.endpoint() != Endpoint::None {
            self.stats.closed(self.id);
        }
        self.upstream_forget(handle);
        if let Some(ip) = self.client_ips.remove(&handle.key) {
            if let Some(limits) = &self.settings.ip_limits {
                limits.release(ip, Instant::now());
            }
        }
        if let Some(push) = conn.push.take() {
            self.forget_push(handle, *push);
        }
    }
}

/// The connection `handle` names, if it is still the one in that slot. A free function so
/// that it borrows only the slab, not the whole worker.
fn conn_of<T>(conns: &mut Slab<Connection<T>>, handle: Handle) -> Option<&mut Connection<T>> {
    conns
        .get_mut(handle.key as usize)
        .filter(|c| c.generation == handle.generation)
}

/// Writes `bytes` until done or `WouldBlock`; returns how many went out.
fn write_direct(socket: &mut impl Transport, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match socket.send(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// The [`Transmit`] a worker lends a session: the connection's queue when it has one (so
/// order is kept), else the worker's cork, written when the connection's turn ends.
struct Tx<'a> {
    outbound: &'a mut Option<Box<Outbound>>,
    cork: &'a mut Vec<u8>,
}

impl<'a> Tx<'a> {
    fn new(outbound: &'a mut Option<Box<Outbound>>, cork: &'a mut Vec<u8>) -> Self {
        Tx { outbound, cork }
    }
}

impl Transmit for Tx<'_> {
    fn write(&mut self, f: &mut dyn FnMut(&mut Vec<u8>)) {
        emit(self.outbound, self.cork, f);
    }

    /// While the socket keeps up every ping is answered in order; once bytes are queued only
    /// the latest pong waits (§5.5.3).
    fn pong(&mut self, payload: &[u8]) {
        match self.outbound.as_mut() {
            Some(outbound) => outbound.set_pong(payload),
            None => write_frame(self.cork, OpCode::Pong, payload),
        }
    }
}

/// Appends frames for a connection: to its queue when it has one (so order is kept), else to
/// the worker's cork buffer, written when the connection's turn ends.
fn emit(
    outbound: &mut Option<Box<Outbound>>,
    cork: &mut Vec<u8>,
    mut write: impl FnMut(&mut Vec<u8>),
) {
    match outbound {
        Some(outbound) => {
            let tail = outbound.push_owned();
            let before = tail.len();
            write(tail);
            let n = tail.len() - before;
            outbound.account(n);
        }
        None => write(cork),
    }
}

/// The echo endpoint: every message comes back, except that text `ping` gets text `pong`.
/// On a permessage-deflate connection a message of at least `min_size` bytes comes back
/// compressed by the worker's `deflater` when that shrinks it.
fn echo(
    out: &mut Vec<u8>,
    kind: MessageKind,
    data: &[u8],
    extensions: Extensions,
    deflater: &mut Deflater,
    min_size: usize,
) {
    let (opcode, data) = match kind {
        MessageKind::Text if data == b"ping" => (OpCode::Text, &b"pong"[..]),
        MessageKind::Text => (OpCode::Text, data),
        MessageKind::Binary => (OpCode::Binary, data),
    };
    if extensions.deflate() {
        deflater.write_frame(out, opcode, data, min_size, extensions.server_window_bits());
    } else {
        write_frame(out, opcode, data);
    }
}

/// The peer's address for a debug line (a syscall, so only when debug logging is on).
fn peer_of(socket: &impl Transport) -> String {
    if log::log_enabled!(log::Level::Debug) {
        socket
            .peer_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string())
    } else {
        String::new()
    }
}

fn peer<T: Transport>(conn: &Connection<T>) -> String {
    peer_of(&conn.socket)
}
