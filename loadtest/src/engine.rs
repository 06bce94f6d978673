//! The engine of a child process: one mio `Poll`, the slab of client connections, the run's
//! phase and counters. It drives connections through their protocol ([`crate::client`]) and
//! hands what happens on them to the scenario ([`crate::scenarios`]).

use std::time::Duration;

use edgepush::protocol::frame::OpCode;
use edgepush::protocol::message::{DecoderConfig, Event, Role};
use hdrhistogram::Histogram;
use mio::{Interest, Poll, Token};

use crate::child::{ChildResult, ChildSpec, NodeResult, ReadyInfo};
use crate::cli::node_for;
use crate::client::{Client, ClientState, ConnectTo, DeflateIn, End, Input, Reading, Session};
use crate::deflate::Deflater;
use crate::scenarios::Scenario;
use crate::stats::{hist_to_data, new_hist};
use crate::sys::now_ns;

/// One second in nanoseconds.
pub const SECOND: u64 = 1_000_000_000;
/// Bytes read from a socket at once (and the most a connection may carry between reads: half).
const READ_BUF: usize = 256 * 1024;

/// What the child is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opening (and subscribing) the connections; `READY` when all are open or failed.
    Connecting,
    /// Waiting for the parent's `GO`.
    WaitGo,
    /// The measured phase.
    Running,
    /// Publishing is over (fanout, slow): waiting for the last deliveries.
    Delivering,
    /// Slow: reading the stopped readers to see how the server ended them.
    StoppedDrain,
    /// Over: the loop ends and `RESULT` is sent.
    Done,
}

/// The run's phase, clocks and figures: what every scenario hook may read and count into.
pub struct Run {
    /// What the child is doing.
    pub phase: Phase,
    /// When the measured phase ends (ns; set at `GO`).
    pub measure_end: u64,
    /// When the current waiting phase gives up (churn's wind-down, deliveries, the drain).
    pub phase_deadline: u64,
    /// Connections between connect and open (or subscribed), in the connect phase.
    pub pending: usize,
    /// When the first connection of the connect phase started (ns).
    pub connect_first_ns: u64,
    /// When the last upgrade of the connect phase finished (ns).
    pub connect_last_ns: u64,
    /// Upgrade times (ns).
    pub handshake_hist: Histogram<u64>,
    /// Round-trip (echo) or publish→receive (fanout, slow) times (ns): record them with
    /// [`Run::record_latency`].
    pub latency_hist: Histogram<u64>,
    /// The same per node, when there are several (empty with one: `latency_hist` is its).
    node_latency: Vec<Histogram<u64>>,
    /// The counters sent back to the parent.
    pub result: ChildResult,
    /// Compresses the data messages we send on connections that agreed to permessage-deflate
    /// (`--deflate`; `None` without it).
    deflater: Option<Deflater>,
    rng: u64,
}

impl Run {
    /// Records one latency (ns) of a message received from `node`.
    pub fn record_latency(&mut self, node: usize, ns: u64) {
        self.latency_hist.saturating_record(ns);
        if let Some(h) = self.node_latency.get_mut(node) {
            h.saturating_record(ns);
        }
    }

    /// `node`'s figures (a throwaway entry for a node out of range, which a connection never
    /// has).
    pub fn node(&mut self, node: usize) -> &mut NodeResult {
        let nodes = &mut self.result.nodes;
        if node >= nodes.len() {
            nodes.resize_with(node + 1, NodeResult::default);
        }
        &mut nodes[node]
    }

    /// Counts one connection attempt to `node` that failed before it was open, as `kind`.
    pub fn fail(&mut self, node: usize, kind: &str) {
        self.result.failed += 1;
        self.node(node).failed += 1;
        self.err(kind);
    }

    /// Counts one error of `kind`.
    pub fn err(&mut self, kind: &str) {
        *self.result.errors.entry(kind.to_string()).or_insert(0) += 1;
    }

    /// The next number of a xorshift64 sequence.
    pub fn next_rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// A fresh masking key (RFC 6455 §5.3).
    pub fn next_mask(&mut self) -> [u8; 4] {
        (self.next_rand() as u32).to_ne_bytes()
    }

    /// Queues a frame on `session`, masked with a fresh key; a data message is compressed
    /// if the connection agreed to permessage-deflate.
    pub fn send(&mut self, session: &mut Session, op: OpCode, payload: &[u8]) {
        let mask = self.next_mask();
        session.send_data(op, payload, mask, self.deflater.as_mut());
    }

    /// Queues a Close frame with `code` on `session`.
    pub fn send_close(&mut self, session: &mut Session, code: u16) {
        let mask = self.next_mask();
        session.send_close(code, mask);
    }

    /// `session` is open (and subscribed where that applies): counted as opened.
    pub fn mark_open(&mut self, session: &mut Session) {
        session.state = ClientState::Open;
        self.pending = self.pending.saturating_sub(1);
        self.result.opened += 1;
        self.node(session.node).opened += 1;
    }

    /// Is the measured phase on at `now`?
    pub fn measuring(&self, now: u64) -> bool {
        self.phase == Phase::Running && now < self.measure_end
    }
}

/// The sockets and the run: everything of a child but its scenario.
pub struct Engine {
    /// What the parent asked of this child.
    pub spec: ChildSpec,
    /// Phase, clocks and figures.
    pub run: Run,
    poll: Poll,
    /// Connection slots (mio tokens); a scenario's slot numbers index these.
    clients: Vec<Option<Client>>,
    read_buf: Vec<u8>,
    decoder: DecoderConfig,
    /// The permessage-deflate offer and the shared inflater.
    deflate_in: DeflateIn,
    /// Connections the connect phase has started.
    started: usize,
    /// Per slot, what [`Engine::open_to`] appends to the node's upgrade path (empty: nothing).
    extra_query: Vec<String>,
    /// The whole run's deadline (ns).
    pub deadline: u64,
}

impl Engine {
    /// An engine for `spec` polling on `poll`, starting in `phase` at `now`.
    pub fn new(spec: ChildSpec, poll: Poll, phase: Phase, now: u64) -> Engine {
        let nodes = spec.nodes.len();
        Engine {
            run: Run {
                phase,
                measure_end: 0,
                phase_deadline: 0,
                pending: 0,
                connect_first_ns: 0,
                connect_last_ns: 0,
                handshake_hist: new_hist(),
                latency_hist: new_hist(),
                node_latency: if nodes > 1 {
                    (0..nodes).map(|_| new_hist()).collect()
                } else {
                    Vec::new()
                },
                result: ChildResult {
                    nodes: vec![NodeResult::default(); nodes],
                    ..ChildResult::default()
                },
                deflater: spec.deflate_offer.as_ref().map(|_| Deflater::new()),
                rng: now ^ (u64::from(std::process::id()) << 32) | 1,
            },
            poll,
            clients: Vec::with_capacity(spec.conns),
            read_buf: vec![0; READ_BUF],
            decoder: DecoderConfig {
                role: Role::Client,
                max_message_size: 64 << 20,
            },
            deflate_in: DeflateIn {
                offer: spec.deflate_offer.clone(),
                ..DeflateIn::default()
            },
            started: 0,
            extra_query: Vec::new(),
            deadline: now.saturating_add(spec.timeout_ns),
            spec,
        }
    }

    /// The poll registry (for the control waker).
    pub fn poll_mut(&mut self) -> &mut Poll {
        &mut self.poll
    }

    /// How many slots there are (open or not).
    pub fn slots(&self) -> usize {
        self.clients.len()
    }

    /// The connection in `slot`, if one is there.
    pub fn client(&self, slot: usize) -> Option<&Client> {
        self.clients.get(slot).and_then(Option::as_ref)
    }

    /// The connection in `slot`, if one is there.
    pub fn client_mut(&mut self, slot: usize) -> Option<&mut Client> {
        self.clients.get_mut(slot).and_then(Option::as_mut)
    }

    /// The run and the session of `slot`'s connection, if one is there.
    pub fn run_and_session(&mut self, slot: usize) -> Option<(&mut Run, &mut Session)> {
        let client = self.clients.get_mut(slot).and_then(Option::as_mut)?;
        Some((&mut self.run, &mut client.session))
    }

    /// Starts connection `number` in `slot` (a new slot if `slot` is one past the end), with
    /// `SO_RCVBUF` `recv_buffer` if not 0. On failure the slot exists and is empty.
    pub fn open(&mut self, slot: usize, number: u64, recv_buffer: usize) -> Result<(), End> {
        self.open_on(slot, number, self.node_of(number), recv_buffer, "")
    }

    /// Like [`Engine::open`], to `node` (an index into the `--url` list) whatever the
    /// connection's number, with `query` (e.g. `&since=3&epoch=x`) appended to the upgrade path.
    pub fn open_on(
        &mut self,
        slot: usize,
        number: u64,
        node: usize,
        recv_buffer: usize,
        query: &str,
    ) -> Result<(), End> {
        if self.extra_query.len() <= slot {
            self.extra_query.resize_with(slot + 1, String::new);
        }
        self.extra_query[slot].clear();
        self.extra_query[slot].push_str(query);
        let result = self.connect(slot, number, node, recv_buffer);
        if result.is_err() && slot == self.clients.len() {
            self.clients.push(None);
        }
        result
    }

    /// The node connection `number` goes to (round robin over the `--url` list).
    pub fn node_of(&self, number: u64) -> usize {
        node_for(number, self.spec.nodes.len())
    }

    fn connect(
        &mut self,
        slot: usize,
        number: u64,
        node: usize,
        recv_buffer: usize,
    ) -> Result<(), End> {
        let spec = &self.spec;
        let Some(target) = spec.nodes.get(node) else {
            return Err(End::Error("no_target".into()));
        };
        let source_ip = (target.addr.is_ipv4() && !spec.source_ips.is_empty())
            .then(|| spec.source_ips[(number % spec.source_ips.len() as u64) as usize]);
        let mut key_bytes = [0u8; 16];
        key_bytes[..4].copy_from_slice(&self.run.next_mask());
        key_bytes[4..8].copy_from_slice(&self.run.next_mask());
        key_bytes[8..16].copy_from_slice(&number.to_le_bytes());
        let mut client = Client::connect(ConnectTo {
            addr: target.addr,
            source_ip,
            recv_buffer,
            number,
            node,
            key_bytes: &key_bytes,
        })
        .map_err(End::Error)?;
        self.poll
            .registry()
            .register(
                &mut client.socket,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| End::Error(crate::client::error_kind(&e).into()))?;
        // The handshake is timed from here, as it always was.
        client.session.started_ns = now_ns();
        if slot == self.clients.len() {
            self.clients.push(Some(client));
        } else {
            self.clients[slot] = Some(client);
        }
        Ok(())
    }

    /// Removes `slot`'s connection without a close handshake: with `reset`, `SO_LINGER` 0 makes
    /// the close an RST. True if there was one.
    pub fn drop_client(&mut self, slot: usize, reset: bool) -> bool {
        let Some(mut client) = self.clients.get_mut(slot).and_then(Option::take) else {
            return false;
        };
        if reset {
            let _ = socket2::SockRef::from(&client.socket).set_linger(Some(Duration::ZERO));
        }
        let _ = self.poll.registry().deregister(&mut client.socket);
        true
    }

    /// Ends `slot`'s connection with `end`: writes what it still owes (a last Close), lets the
    /// scenario account for it, and otherwise counts it by the state it was in.
    pub fn finish(&mut self, slot: usize, end: End, scenario: &mut dyn Scenario) {
        let Some(mut client) = self.clients.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let _ = client.flush();
        let session = &client.session;
        if scenario.on_closed(&mut self.run, session, slot, &end) {
            return;
        }
        let run = &mut self.run;
        let kind = end.kind();
        match session.state {
            ClientState::Connecting | ClientState::Handshaking | ClientState::Subscribing => {
                // Churn counts no pending connections: this stays at 0 there.
                run.pending = run.pending.saturating_sub(1);
                run.fail(session.node, &kind);
            }
            ClientState::Open => {
                if end != End::Done {
                    run.result.closed_during += 1;
                    run.err(&kind);
                }
            }
            ClientState::Closing => {
                if end != End::Done {
                    run.err(&format!("close_{kind}"));
                }
            }
            ClientState::AwaitEof => {}
        }
    }

    /// Writes what `slot` owes; a write error ends it.
    pub fn flush(&mut self, slot: usize, scenario: &mut dyn Scenario) {
        let Some(client) = self.client_mut(slot) else {
            return;
        };
        if let Err(e) = client.flush() {
            self.finish(slot, End::from_io(&e), scenario);
        }
    }

    /// Readiness on `slot`: finish a connect, read (unless stopped), write.
    pub fn on_io(
        &mut self,
        slot: usize,
        readable: bool,
        closing: bool,
        scenario: &mut dyn Scenario,
    ) {
        let now = now_ns();
        let Some(client) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if client.session.state == ClientState::Connecting {
            let Some(target) = self.spec.nodes.get(client.session.node) else {
                return self.finish(slot, End::Error("no_target".into()), scenario);
            };
            let extra = self.extra_query.get(slot).map_or("", String::as_str);
            let path = if extra.is_empty() {
                std::borrow::Cow::Borrowed(target.path.as_str())
            } else {
                std::borrow::Cow::Owned(format!("{}{extra}", target.path))
            };
            match client.finish_connect(&path, &target.host, self.deflate_in.offer.as_deref()) {
                Ok(true) => {}
                Ok(false) => return,
                Err(end) => return self.finish(slot, end, scenario),
            }
        }
        if readable && client.session.reading != Reading::Stopped {
            if let Some(end) = self.read(slot, now, closing, scenario) {
                return self.finish(slot, end, scenario);
            }
        }
        self.flush(slot, scenario);
    }

    /// Reads `slot` until drained (see [`Client::read`]), answering control frames and handing
    /// the upgrade and every message to the scenario. `Some` if the connection ended.
    pub fn read(
        &mut self,
        slot: usize,
        now: u64,
        closing: bool,
        scenario: &mut dyn Scenario,
    ) -> Option<End> {
        let client = self.clients.get_mut(slot).and_then(Option::as_mut)?;
        let run = &mut self.run;
        let wire_before = client.wire_in;
        let end = client.read(
            &mut self.read_buf,
            closing,
            &self.decoder,
            &mut self.deflate_in,
            &mut |session, input| match input {
                Input::Upgraded => {
                    run.handshake_hist
                        .saturating_record(now.saturating_sub(session.started_ns));
                    if session.deflate.is_some() {
                        run.result.deflate_conns += 1;
                    }
                    if run.phase == Phase::Connecting {
                        run.connect_last_ns = now;
                    }
                    scenario.on_upgraded(run, session, slot, now);
                    None
                }
                Input::Event(ev) => on_event(run, scenario, session, slot, ev, now),
            },
        );
        if matches!(run.phase, Phase::Running | Phase::Delivering) {
            run.result.wire_bytes_in += client.wire_in - wire_before;
        }
        end
    }

    /// Ends the connections that took too long: to connect, upgrade or subscribe (the
    /// handshake timeout), or to finish a close handshake of ours.
    pub fn sweep_timeouts(&mut self, now: u64, scenario: &mut dyn Scenario) {
        let hs = self.spec.handshake_timeout_ns;
        let mut expired = Vec::new();
        for (slot, client) in self.clients.iter().enumerate() {
            let Some(client) = client else { continue };
            let age = now.saturating_sub(client.session.started_ns);
            let end = match client.session.state {
                ClientState::Connecting | ClientState::Handshaking | ClientState::Subscribing
                    if age > hs =>
                {
                    Some(End::Error(match client.session.state {
                        ClientState::Connecting => "connect_timeout".into(),
                        ClientState::Handshaking => "handshake_timeout".into(),
                        _ => "subscribe_timeout".into(),
                    }))
                }
                ClientState::Closing if age > hs + 2 * SECOND => Some(End::Error("timeout".into())),
                ClientState::AwaitEof if age > hs + 2 * SECOND => Some(End::Done),
                _ => None,
            };
            if let Some(end) = end {
                expired.push((slot, end));
            }
        }
        for (slot, end) in expired {
            self.finish(slot, end, scenario);
        }
    }

    /// The connect phase: keeps `--connect-concurrency` attempts going; once every connection
    /// is open or failed, says `READY` and waits for `GO`.
    pub fn connect_tick(&mut self, scenario: &mut dyn Scenario) {
        while self.run.pending < self.spec.connect_concurrency.max(1)
            && self.started < self.spec.conns
        {
            self.start_next(scenario);
        }
        if self.started >= self.spec.conns && self.run.pending == 0 {
            let info = ReadyInfo {
                opened: self.run.result.opened,
                failed: self.run.result.failed,
                errors: self.run.result.errors.clone(),
                first_start_ns: self.run.connect_first_ns,
                last_done_ns: self.run.connect_last_ns,
            };
            crate::child::emit("READY", &info);
            self.run.phase = Phase::WaitGo;
        }
    }

    /// Starts connection attempt `k` of this child (connect phase) in slot `k`.
    fn start_next(&mut self, scenario: &mut dyn Scenario) {
        let k = self.started;
        self.started += 1;
        self.run.result.attempted += 1;
        self.run.pending += 1;
        let number = self.spec.first_conn + k as u64;
        let recv_buffer = if scenario.stops_reading(k) {
            self.spec.stopped_rcvbuf
        } else {
            0
        };
        if k == 0 {
            self.run.connect_first_ns = now_ns();
        }
        if let Err(End::Error(kind)) = self.open(k, number, recv_buffer) {
            self.run.pending -= 1;
            let node = self.node_of(number);
            self.run.fail(node, &kind);
        }
    }

    /// The figures to send back: the histograms, and the child's index.
    pub fn into_result(mut self) -> ChildResult {
        let run = &mut self.run;
        run.result.handshake = hist_to_data(&run.handshake_hist);
        run.result.latency = hist_to_data(&run.latency_hist);
        for (node, h) in run.result.nodes.iter_mut().zip(&run.node_latency) {
            node.latency = hist_to_data(h);
        }
        run.result.index = self.spec.index;
        run.result.inflated = self.deflate_in.inflated;
        std::mem::take(&mut run.result)
    }
}

/// One decoded event on `session`: control frames are answered here (RFC 6455 §5.5.2 Pong,
/// §5.5.1 Close echo; nothing while draining), messages go to the scenario.
fn on_event(
    run: &mut Run,
    scenario: &mut dyn Scenario,
    session: &mut Session,
    slot: usize,
    ev: Event<'_>,
    now: u64,
) -> Option<End> {
    let draining = session.reading == Reading::Draining;
    match ev {
        Event::Ping(p) => {
            if !draining {
                run.send(session, OpCode::Pong, p);
            }
            None
        }
        Event::Pong(_) => None,
        Event::Close(frame) => {
            let code = frame.map_or(1005, |f| f.code);
            match session.state {
                ClientState::Closing => {
                    run.result.closes_ok += 1;
                    session.state = ClientState::AwaitEof;
                    None
                }
                ClientState::AwaitEof => None,
                _ => {
                    if !draining {
                        run.send_close(session, code.clamp(1000, 4999));
                    }
                    Some(End::ServerClose(code))
                }
            }
        }
        Event::Message { kind, data } => scenario.on_message(run, session, slot, kind, data, now),
    }
}
