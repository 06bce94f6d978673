//! The hub thread: its own mio `Poll` serving the push API on `--api-listen`, the
//! [`Hub`](crate::push::hub::Hub) that owns every stream's seq and epoch, and the plumbing to
//! the workers — one FIFO inbox per worker (bounded in bytes at admission: a full inbox makes
//! the API answer 503) and a mio `Waker` each way. Nothing here waits on a worker: an API
//! request that needs workers' counts is parked until their acknowledgements arrive.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::config::Config;
use crate::http::response::write_continue;
use crate::metrics::Exposition;
use crate::push::api::{self, ApiCommand, ApiLimits, Parsed};
use crate::push::hub::{Command, HistoryConfig, Hub, RequestId, ToHub, ToWorker};
use crate::server::Stats;

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);

/// Counters at the last periodic summary, to print rates.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    messages_in: u64,
    messages_out: u64,
    deliveries: u64,
    slow_consumers: u64,
    handshake_failures: u64,
}

/// Bytes of frames a worker's inbox may hold before the API answers 503.
pub(crate) const MAX_INBOX_BYTES: usize = 64 << 20;
/// An API connection's unparsed input is capped (head + body limits) by the parser; this is
/// the read size.
const READ_CHUNK: usize = 16 * 1024;

/// The sending side of a worker's inbox.
pub(crate) struct WorkerInbox {
    pub(crate) tx: Sender<ToWorker>,
    pub(crate) waker: Arc<Waker>,
    /// Bytes pinned by messages not yet taken by the worker.
    pub(crate) load: Arc<AtomicUsize>,
}

/// The workers' way to the hub.
#[derive(Clone)]
pub(crate) struct HubHandle {
    pub(crate) tx: Sender<ToHub>,
    pub(crate) waker: Arc<Waker>,
}

/// Requests one API connection may have in flight (pipelined) before we stop reading it.
const MAX_IN_FLIGHT: usize = 1024;

struct ApiConnection {
    socket: TcpStream,
    generation: u32,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    /// Answers owed, in request order; `None` until the hub answers.
    owed: VecDeque<Owed>,
    /// `100 Continue` was sent for the request being received.
    continued: bool,
    /// Reading stopped at the in-flight limit; resumed when answers go out.
    paused: bool,
    close_after_write: bool,
    writable_interest: bool,
}

struct Owed {
    request: u64,
    keep_alive: bool,
    response: Option<Vec<u8>>,
}

pub(crate) struct HubLoop {
    poll: Poll,
    listener: TcpListener,
    /// SIGTERM/SIGINT, when this hub handles them (the binary does; tests don't).
    signals: Option<Signals>,
    /// `--drain-duration` and `--drain-timeout`.
    drain: (Duration, Duration),
    draining: bool,
    stats_interval: Duration,
    next_stats: Instant,
    last_figures: Figures,
    conns: Slab<ApiConnection>,
    next_generation: u32,
    hub: Hub,
    history: HistoryConfig,
    /// Hub request id → the API connection that asked.
    requests: HashMap<u64, RequestId>,
    next_request: u64,
    rx: Receiver<ToHub>,
    workers: Vec<WorkerInbox>,
    to_wake: Vec<bool>,
    /// Shared so the per-request borrow around `self.get` is a refcount, not a copy.
    api_key: Option<Arc<str>>,
    limits: ApiLimits,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
}

impl HubLoop {
    /// Creates the hub's poll and waker; the workers' inboxes are attached with
    /// [`HubLoop::attach_workers`] before it runs.
    pub(crate) fn new(
        mut listener: TcpListener,
        rx: Receiver<ToHub>,
        config: &Config,
        stats: Arc<Stats>,
        stop: Arc<AtomicBool>,
        handle_signals: bool,
    ) -> io::Result<(HubLoop, Arc<Waker>)> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let signals = if handle_signals {
            let mut signals = Signals::new([SIGTERM, SIGINT])?;
            poll.registry()
                .register(&mut signals, SIGNALS, Interest::READABLE)?;
            Some(signals)
        } else {
            None
        };
        let now = Instant::now();
        Ok((
            HubLoop {
                poll,
                listener,
                signals,
                conns: Slab::new(),
                next_generation: 0,
                hub: Hub::new(0, config.history, now),
                history: config.history,
                requests: HashMap::new(),
                next_request: 1,
                rx,
                workers: Vec::new(),
                to_wake: Vec::new(),
                api_key: config.api_key.as_deref().map(Arc::from),
                limits: ApiLimits {
                    max_head: 8 * 1024,
                    max_body: config.max_message_size,
                },
                drain: (config.drain_duration, config.drain_timeout),
                draining: false,
                stats_interval: config.stats_interval,
                next_stats: now + config.stats_interval,
                last_figures: Figures::default(),
                stats,
                stop,
            },
            waker,
        ))
    }

    pub(crate) fn attach_workers(&mut self, workers: Vec<WorkerInbox>) {
        self.hub = Hub::new(workers.len(), self.history, Instant::now());
        self.to_wake = vec![false; workers.len()];
        self.workers = workers;
    }

    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(256);
        while !self.stop.load(Ordering::Relaxed) {
            let until_stats = self.next_stats.saturating_duration_since(Instant::now());
            let timeout = self
                .hub
                .next_tick()
                .map_or(until_stats, |t| t.min(until_stats));
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("hub: poll failed: {e}");
                    break;
                }
            }
            let now = Instant::now();
            self.hub.tick(now);
            if now >= self.next_stats {
                self.next_stats = now + self.stats_interval;
                self.log_figures();
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    SIGNALS => self.on_signals(),
                    token => {
                        let id = token.0 as RequestId;
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(id);
                        }
                        if event.is_writable() {
                            self.write(id);
                        }
                    }
                }
            }
            self.drain_workers();
        }
    }

    /// Takes every message the workers sent, then ships what the hub produced.
    fn drain_workers(&mut self) {
        while let Ok(message) = self.rx.try_recv() {
            match message {
                ToHub::Drain => self.begin_drain(),
                message => self.hub.on_message(message),
            }
        }
        self.ship();
    }

    /// Sends the hub's outbox to the workers' inboxes, waking each once, and writes the
    /// answers that became ready.
    fn ship(&mut self) {
        // Answers free in-flight slots and let parked requests run, which may produce more to
        // ship: go on until nothing is left (each round needs new input, so this ends).
        loop {
            let more = self.ship_once();
            if !more {
                break;
            }
        }
    }

    /// Ships once; true if processing the answers produced more to ship.
    fn ship_once(&mut self) -> bool {
        for (worker, message) in self.hub.take_outbox() {
            let Some(inbox) = self.workers.get(worker) else {
                continue;
            };
            inbox.load.fetch_add(message.weight(), Ordering::Relaxed);
            if inbox.tx.send(message).is_ok() {
                self.to_wake[worker] = true;
            }
        }
        for (worker, wake) in self.to_wake.iter_mut().enumerate() {
            if std::mem::take(wake) {
                if let Err(e) = self.workers[worker].waker.wake() {
                    warn!("hub: waking worker {worker}: {e}");
                }
            }
        }
        let answers: Vec<_> = self.hub.take_answers().collect();
        let mut touched = Vec::new();
        for answer in answers {
            let Some(id) = self.requests.remove(&answer.conn) else {
                continue;
            };
            let Some(conn) = self.get(id) else {
                continue; // the API client left
            };
            if let Some(owed) = conn.owed.iter_mut().find(|o| o.request == answer.conn) {
                owed.response = Some(api::json_response(
                    answer.status,
                    &answer.body,
                    owed.keep_alive,
                ));
            }
            Self::release_in_order(conn);
            if !touched.contains(&id) {
                touched.push(id);
            }
        }
        for id in touched {
            self.write(id);
            self.process(id);
            if self.get(id).is_some_and(|c| std::mem::take(&mut c.paused)) {
                self.on_readable(id);
            }
        }
        self.hub.has_output()
    }

    /// Moves the answers at the front of the queue that are ready into the output.
    fn release_in_order(conn: &mut ApiConnection) {
        while conn.owed.front().is_some_and(|o| o.response.is_some()) {
            if let Some(owed) = conn.owed.pop_front() {
                conn.output
                    .extend_from_slice(&owed.response.unwrap_or_default());
                if !owed.keep_alive {
                    conn.close_after_write = true;
                    conn.owed.clear();
                }
            }
        }
    }

    fn get(&mut self, id: RequestId) -> Option<&mut ApiConnection> {
        let key = (id & 0xffff_ffff) as usize;
        let generation = (id >> 32) as u32;
        self.conns
            .get_mut(key)
            .filter(|c| c.generation == generation)
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut socket, addr)) => {
                    debug!("hub: API client {addr} connected");
                    let _ = socket.set_nodelay(true);
                    let generation = self.next_generation;
                    self.next_generation = self.next_generation.wrapping_add(1);
                    let entry = self.conns.vacant_entry();
                    let id = entry.key() as u64 | (u64::from(generation) << 32);
                    if let Err(e) = self.poll.registry().register(
                        &mut socket,
                        Token(id as usize),
                        Interest::READABLE,
                    ) {
                        warn!("hub: register: {e}");
                        continue;
                    }
                    entry.insert(ApiConnection {
                        socket,
                        generation,
                        input: Vec::new(),
                        output: Vec::new(),
                        written: 0,
                        owed: VecDeque::new(),
                        continued: false,
                        paused: false,
                        close_after_write: false,
                        writable_interest: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("hub: accept: {e}");
                    return;
                }
            }
        }
    }

    fn on_readable(&mut self, id: RequestId) {
        // One request's worth: the parser refuses larger heads and bodies, so more than this
        // unparsed means requests are waiting behind `MAX_IN_FLIGHT` answers.
        let cap = self.limits.max_head + self.limits.max_body + READ_CHUNK;
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let Some(conn) = self.get(id) else {
                return;
            };
            if conn.input.len() >= cap {
                self.process(id);
                let Some(conn) = self.get(id) else {
                    return;
                };
                if conn.input.len() >= cap {
                    // Back-pressure: leave the rest in the socket until answers go out
                    // (`ship` resumes reading).
                    conn.paused = true;
                    return;
                }
                continue;
            }
            match conn.socket.read(&mut chunk) {
                Ok(0) => {
                    self.close(id);
                    return;
                }
                Ok(n) => conn.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(id);
                    return;
                }
            }
        }
        self.process(id);
    }

    /// Parses and runs buffered requests until one is parked or the input runs out.
    fn process(&mut self, id: RequestId) {
        loop {
            let api_key = self.api_key.clone();
            let limits = self.limits;
            let Some(conn) = self.get(id) else {
                return;
            };
            let closing = conn.owed.back().is_some_and(|o| !o.keep_alive);
            if conn.owed.len() >= MAX_IN_FLIGHT || conn.close_after_write || closing {
                break;
            }
            match api::parse(&conn.input, api_key.as_deref(), &limits) {
                Parsed::Partial => {
                    // curl and others wait (a second) for this before sending a body.
                    if !conn.continued
                        && conn.owed.is_empty()
                        && api::expects_continue(&conn.input, &limits)
                    {
                        write_continue(&mut conn.output);
                        conn.continued = true;
                    }
                    break;
                }
                Parsed::Reject {
                    consumed,
                    close,
                    response,
                } => {
                    conn.input.drain(..consumed.min(conn.input.len()));
                    conn.continued = false;
                    conn.owed.push_back(Owed {
                        request: 0,
                        keep_alive: !close,
                        response: Some(response),
                    });
                    Self::release_in_order(conn);
                }
                Parsed::Request {
                    consumed,
                    keep_alive,
                    command,
                } => {
                    conn.input.drain(..consumed.min(conn.input.len()));
                    conn.continued = false;
                    self.run_command(id, keep_alive, command);
                }
            }
        }
        self.write(id);
    }

    fn run_command(&mut self, id: RequestId, keep_alive: bool, command: ApiCommand) {
        let command = match command {
            ApiCommand::Stats => {
                let body = self.stats_json();
                return self.respond(id, keep_alive, 200, &body);
            }
            ApiCommand::Metrics => {
                let body = self.metrics_text();
                let response = api::text_response(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    &body,
                    keep_alive,
                );
                return self.answer_now(id, keep_alive, response);
            }
            ApiCommand::Publish { channel, data } => Command::Publish {
                channel: Arc::from(channel),
                data: data.get().to_owned(),
            },
            ApiCommand::Send { user, data } => Command::Send {
                user: Arc::from(user),
                data: data.get().to_owned(),
            },
            ApiCommand::Broadcast { data } => Command::Broadcast {
                data: data.get().to_owned(),
            },
            ApiCommand::Disconnect { user } => Command::Disconnect {
                user: Arc::from(user),
            },
            ApiCommand::Presence { channel } => Command::Presence {
                channel: Arc::from(channel),
            },
        };
        let weight = 256
            + match &command {
                Command::Publish { data, .. }
                | Command::Send { data, .. }
                | Command::Broadcast { data } => data.len(),
                _ => 0,
            };
        let full = self.hub.fan_out(&command).into_iter().any(|w| {
            self.workers
                .get(w)
                .is_some_and(|inbox| inbox.load.load(Ordering::Relaxed) + weight > MAX_INBOX_BYTES)
        });
        if full {
            self.stats.api_overloaded.fetch_add(1, Ordering::Relaxed);
            let body = api::error_body("workers' inboxes are full; retry shortly", None);
            return self.respond(id, keep_alive, 503, &body);
        }
        let request = self.next_request;
        self.next_request += 1;
        if let Some(conn) = self.get(id) {
            conn.owed.push_back(Owed {
                request,
                keep_alive,
                response: None,
            });
        }
        self.requests.insert(request, id);
        // Shipped to the workers once per turn (see `drain_workers`), so a pipelined burst
        // reaches each worker as one batch.
        self.hub.command(request, command);
    }

    fn respond(&mut self, id: RequestId, keep_alive: bool, status: u16, body: &str) {
        self.answer_now(id, keep_alive, api::json_response(status, body, keep_alive));
    }

    /// An answer known at once; it still waits behind earlier answers on the connection.
    fn answer_now(&mut self, id: RequestId, keep_alive: bool, response: Vec<u8>) {
        if let Some(conn) = self.get(id) {
            conn.owed.push_back(Owed {
                request: 0,
                keep_alive,
                response: Some(response),
            });
            Self::release_in_order(conn);
        }
    }

    fn write(&mut self, id: RequestId) {
        let Some(conn) = self.get(id) else {
            return;
        };
        while conn.written < conn.output.len() {
            match conn.socket.write(&conn.output[conn.written..]) {
                Ok(0) => break,
                Ok(n) => conn.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(id);
                    return;
                }
            }
        }
        if conn.written == conn.output.len() {
            conn.output.clear();
            conn.written = 0;
            if conn.close_after_write {
                self.close(id);
                return;
            }
        }
        let want = !conn.output.is_empty();
        if want != conn.writable_interest {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let registry = self.poll.registry();
            let key = (id & 0xffff_ffff) as usize;
            if let Some(conn) = self.conns.get_mut(key) {
                if registry
                    .reregister(&mut conn.socket, Token(id as usize), interest)
                    .is_ok()
                {
                    conn.writable_interest = want;
                }
            }
        }
    }

    fn close(&mut self, id: RequestId) {
        if self.get(id).is_some() {
            self.conns.remove((id & 0xffff_ffff) as usize);
        }
    }

    fn stats_json(&self) -> String {
        let s = &self.stats;
        let (channels, user_streams) = self.hub.stream_counts();
        let (history_messages, history_bytes) = self.hub.history_size();
        serde_json::json!({
            "history_messages": history_messages,
            "history_bytes": history_bytes,
            "connections": s.open(),
            "accepted": s.accepted.load(Ordering::Relaxed),
            "upgrades": s.upgrades.load(Ordering::Relaxed),
            "handshake_failures": s.handshake_failures.load(Ordering::Relaxed),
            "draining": s.draining.load(Ordering::Relaxed),
            "protocol_errors": s.protocol_errors.load(Ordering::Relaxed),
            "subscriptions": s.subscriptions.load(Ordering::Relaxed),
            "channels": channels,
            "user_streams": user_streams,
            "messages_in": s.messages_in.load(Ordering::Relaxed),
            "messages_out": s.messages_out.load(Ordering::Relaxed),
            "deliveries": s.deliveries.load(Ordering::Relaxed),
            "bytes_in": s.bytes_in.load(Ordering::Relaxed),
            "bytes_out": s.bytes_out.load(Ordering::Relaxed),
            "slow_consumer_drops": s.slow_consumers.load(Ordering::Relaxed),
            "pong_timeouts": s.pong_timeouts.load(Ordering::Relaxed),
            "accept_pauses": s.accept_pauses.load(Ordering::Relaxed),
            "api_overloaded": s.api_overloaded.load(Ordering::Relaxed),
        })
        .to_string()
    }

    fn metrics_text(&self) -> String {
        let s = &self.stats;
        let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        let (channels, user_streams) = self.hub.stream_counts();
        let (history_messages, history_bytes) = self.hub.history_size();
        let mut e = Exposition::new();
        e.gauge(
            "edgepush_connections",
            "Open WebSocket connections.",
            s.open() as u64,
        );
        e.labelled(
            "edgepush_worker_connections",
            "gauge",
            "Open WebSocket connections per event-loop thread.",
            "worker",
            s.open_by_worker()
                .into_iter()
                .enumerate()
                .map(|(w, n)| (w.to_string(), n as u64)),
        );
        e.gauge(
            "edgepush_draining",
            "1 while the server drains after SIGTERM/SIGINT.",
            u64::from(s.draining.load(Ordering::Relaxed)),
        );
        e.counter(
            "edgepush_accepted_total",
            "TCP connections accepted.",
            load(&s.accepted),
        );
        e.counter(
            "edgepush_handshakes_total",
            "Successful WebSocket upgrades.",
            load(&s.upgrades),
        );
        e.handshake_failures(
            "edgepush_handshake_failures_total",
            "Upgrades refused or timed out, by reason.",
            &s.handshake_failure_reasons,
        );
        e.counter(
            "edgepush_protocol_errors_total",
            "Connections failed for breaking RFC 6455.",
            load(&s.protocol_errors),
        );
        e.counter(
            "edgepush_messages_in_total",
            "Messages received from clients.",
            load(&s.messages_in),
        );
        e.counter(
            "edgepush_messages_out_total",
            "Data frames queued for clients (echoes, replies, deliveries).",
            load(&s.messages_out),
        );
        e.counter(
            "edgepush_bytes_in_total",
            "Bytes read from clients.",
            load(&s.bytes_in),
        );
        e.counter(
            "edgepush_bytes_out_total",
            "Bytes written to clients.",
            load(&s.bytes_out),
        );
        e.counter(
            "edgepush_deliveries_total",
            "Fan-out frames queued for push connections.",
            load(&s.deliveries),
        );
        e.counter(
            "edgepush_slow_consumer_closes_total",
            "Connections closed with 1008 at --max-backlog.",
            load(&s.slow_consumers),
        );
        e.counter(
            "edgepush_pong_timeouts_total",
            "Connections dropped for silence after a ping.",
            load(&s.pong_timeouts),
        );
        e.close_codes(
            "edgepush_close_codes_sent_total",
            "Close frames sent, by code.",
            &s.close_sent,
        );
        e.close_codes(
            "edgepush_close_codes_received_total",
            "Close frames received, by code.",
            &s.close_received,
        );
        e.gauge(
            "edgepush_subscriptions",
            "Channel subscriptions held.",
            s.subscriptions.load(Ordering::Relaxed) as u64,
        );
        e.gauge(
            "edgepush_channels",
            "Channels the hub tracks.",
            channels as u64,
        );
        e.gauge(
            "edgepush_user_streams",
            "User streams the hub tracks.",
            user_streams as u64,
        );
        e.gauge(
            "edgepush_history_messages",
            "Messages held for replay.",
            history_messages as u64,
        );
        e.gauge(
            "edgepush_history_bytes",
            "Bytes charged against --history-max-bytes: held frames, their bookkeeping, and offline users' streams.",
            history_bytes as u64,
        );
        e.counter(
            "edgepush_accept_pauses_total",
            "Accept pauses after EMFILE/ENFILE.",
            load(&s.accept_pauses),
        );
        e.counter(
            "edgepush_api_overloaded_total",
            "API requests answered 503 because workers' inboxes were full.",
            load(&s.api_overloaded),
        );
        e.histogram(
            "edgepush_publish_latency_seconds",
            "From the hub taking a message to a worker having written it to its recipients.",
            &s.publish_latency,
        );
        e.finish()
    }

    fn on_signals(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        let received: Vec<i32> = signals.pending().collect();
        for signal in received {
            if self.draining {
                warn!("second signal ({signal}): stopping now without finishing the drain");
                self.stop.store(true, Ordering::Relaxed);
                for inbox in &self.workers {
                    let _ = inbox.waker.wake();
                }
            } else {
                info!("signal {signal}: draining");
                self.begin_drain();
            }
        }
    }

    /// Tells every worker to drain: Close 1001 spread over `--drain-duration`, then wait up to
    /// `--drain-timeout`. `/healthz` and new upgrades answer 503 from now on.
    fn begin_drain(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        self.stats.draining.store(true, Ordering::Relaxed);
        let (spread, timeout) = self.drain;
        info!(
            "draining {} connections over {spread:?}, then waiting up to {timeout:?}",
            self.stats.open()
        );
        for inbox in &self.workers {
            inbox.load.fetch_add(64, Ordering::Relaxed);
            let _ = inbox.tx.send(ToWorker::Drain { spread, timeout });
            let _ = inbox.waker.wake();
        }
    }

    /// The periodic one-line summary (`--stats-interval`).
    fn log_figures(&mut self) {
        let s = &self.stats;
        let now = Figures {
            messages_in: s.messages_in.load(Ordering::Relaxed),
            messages_out: s.messages_out.load(Ordering::Relaxed),
            deliveries: s.deliveries.load(Ordering::Relaxed),
            slow_consumers: s.slow_consumers.load(Ordering::Relaxed),
            handshake_failures: s.handshake_failures.load(Ordering::Relaxed),
        };
        let last = std::mem::replace(&mut self.last_figures, now);
        let secs = self.stats_interval.as_secs_f64().max(0.001);
        let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / secs;
        info!(
            "{} connections, {:.0} msgs/s in, {:.0} msgs/s out, {:.0} deliveries/s, {} slow-consumer drops, {} failed handshakes (last {:?})",
            s.open(),
            rate(now.messages_in, last.messages_in),
            rate(now.messages_out, last.messages_out),
            rate(now.deliveries, last.deliveries),
            now.slow_consumers - last.slow_consumers,
            now.handshake_failures - last.handshake_failures,
            self.stats_interval
        );
    }
}
