//! The child side of `scale`: each connection, once upgraded (first frame: `subscribed` on
//! `$user`), subscribes to `all` and to its room and is open once both answered. While the
//! load runs it checks every delivery against its stream ([`StreamCheck`]), records the
//! latency per kind, drops `--drop-rate` of the open connections each second (RST and plain
//! close alternately) and brings back every connection that went away, on the next node, with
//! `since`/`epoch` (in the upgrade URL for `$user`, in the subscribe op for the others).
//! Each second it sends the parent a [`SecondLine`]. After `END` it waits up to `--settle` for
//! every stream to reach its last acknowledged `seq` and counts what is missing.
//!
//! The hot path (a delivery) is a prefix check, two number scans and a few compares: no JSON
//! parse, no allocation.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;

use edgepush::protocol::frame::OpCode;
use edgepush::protocol::message::MessageKind;
use hdrhistogram::Histogram;

use super::stream::{Delivery, NotRecovered, StreamCheck, Subscribed};
use super::{ScaleResult, ScaleSpec, SecondLine, ALL_CHANNEL};
use crate::child::ChildSpec;
use crate::client::{ClientState, End, Session};
use crate::engine::{Engine, Phase, Run, SECOND};
use crate::scenarios::Scenario;
use crate::stats::{contains, hist_to_data, new_hist, scan_delivery, HIST_MAX_NS};

/// Stream indexes (also the kinds).
const ALL: usize = 0;
const ROOM: usize = 1;
const USER: usize = 2;
/// Backoff of a failing reconnect (ms): from this, doubling, up to the next.
const BACKOFF_MIN_MS: u32 = 100;
const BACKOFF_MAX_MS: u32 = 2_000;
/// Reconnects started per loop turn, at most (a drained node's clients come back spread).
const RECONNECTS_PER_TURN: usize = 512;
/// How often the settle phase checks whether every stream caught up (ns).
const SETTLE_CHECK_NS: u64 = 100_000_000;

/// One logical client (connection number `first + slot`), across its connections.
#[derive(Debug, Default)]
struct Conn {
    streams: [StreamCheck; 3],
    /// The node of its current (or last) connection.
    node: u16,
    /// Bit k: the `subscribed` of stream k is still due on the current connection.
    waiting: u8,
    /// The wait before the next reconnect attempt if this one fails (ms; 0: none yet).
    backoff_ms: u32,
    /// Has it ever been open (subscribed to all three)?
    up: bool,
}

/// The streams' last acknowledged `(epoch, seq)`, as far as this child cares.
#[derive(Debug, Default)]
struct Tops {
    all: Option<(String, u64)>,
    rooms: Vec<Option<(String, u64)>>,
    /// By connection number.
    users: HashMap<u64, (String, u64)>,
}

impl Tops {
    /// Reads the parent's tops file; keeps the users `first .. first + count`.
    fn load(spec: &ScaleSpec, first: u64, count: u64) -> io::Result<Tops> {
        let text = std::fs::read_to_string(&spec.tops_path)?;
        let mut tops = Tops {
            rooms: vec![None; spec.rooms as usize],
            ..Tops::default()
        };
        for line in text.lines() {
            let mut f = line.split(' ');
            let (kind, rest) = (f.next(), f.collect::<Vec<_>>());
            let parse = |i: usize| rest.get(i).and_then(|s| s.parse::<u64>().ok());
            match (kind, rest.len()) {
                (Some("all"), 2) => {
                    if let Some(seq) = parse(1) {
                        tops.all = Some((rest[0].to_string(), seq));
                    }
                }
                (Some("room"), 3) => {
                    if let (Some(i), Some(seq)) = (parse(0), parse(2)) {
                        if let Some(slot) = tops.rooms.get_mut(i as usize) {
                            *slot = Some((rest[1].to_string(), seq));
                        }
                    }
                }
                (Some("user"), 3) => {
                    if let (Some(i), Some(seq)) = (parse(0), parse(2)) {
                        if (first..first + count).contains(&i) {
                            tops.users.insert(i, (rest[1].to_string(), seq));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(tops)
    }

    /// The top of stream `k` for connection `number` (room `room`).
    fn of(&self, k: usize, number: u64, room: u64) -> Option<(&str, u64)> {
        let t = match k {
            ALL => self.all.as_ref(),
            ROOM => self.rooms.get(room as usize).and_then(Option::as_ref),
            _ => self.users.get(&number),
        };
        t.map(|(e, s)| (e.as_str(), *s))
    }
}

/// The `scale` scenario of one child.
pub struct ScaleClients {
    spec: ScaleSpec,
    first: u64,
    nodes: usize,
    conns: Vec<Conn>,
    /// Per kind: latency of the whole run, and of the current second (2 significant figures).
    latency: [Histogram<u64>; 3],
    second_latency: [Histogram<u64>; 3],
    second_deliveries: [u64; 3],
    result: ScaleResult,
    /// When the load started (`GO`, ns) and the second being filled.
    t0: u64,
    second: u64,
    /// Connections open (subscribed) now.
    open: u64,
    drops: u64,
    /// Reconnects due: `(when, slot)`.
    retry: BinaryHeap<Reverse<(u64, usize)>>,
    /// The fraction of a drop carried to the next second.
    drop_carry: f64,
    tops: Option<Tops>,
    next_settle_check: u64,
}

impl ScaleClients {
    /// The scenario `spec` asks for (its `scale` part must be there).
    pub fn new(spec: &ChildSpec) -> io::Result<ScaleClients> {
        let scale = spec
            .scale
            .clone()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "scale spec missing"))?;
        let second_hist = || {
            Histogram::new_with_bounds(1, HIST_MAX_NS, 2)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("histogram: {e}")))
        };
        Ok(ScaleClients {
            spec: scale,
            first: spec.first_conn,
            nodes: spec.nodes.len().max(1),
            conns: (0..spec.conns).map(|_| Conn::default()).collect(),
            latency: [new_hist(), new_hist(), new_hist()],
            second_latency: [second_hist()?, second_hist()?, second_hist()?],
            second_deliveries: [0; 3],
            result: ScaleResult::default(),
            t0: 0,
            second: 0,
            open: 0,
            drops: 0,
            retry: BinaryHeap::new(),
            drop_carry: 0.0,
            tops: None,
            next_settle_check: 0,
        })
    }

    fn room_of(&self, slot: usize) -> u64 {
        (self.first + slot as u64) % self.spec.rooms.max(1)
    }

    /// The subscribe op for stream `k` (all or room) of `slot`, resuming if it can.
    fn subscribe_op(&self, slot: usize, k: usize) -> Vec<u8> {
        let channel = if k == ALL {
            ALL_CHANNEL.to_string()
        } else {
            format!("room-{}", self.room_of(slot))
        };
        let mut op = serde_json::json!({"op": "subscribe", "channel": channel});
        if let Some((epoch, since)) = self.conns.get(slot).and_then(|c| c.streams[k].resume()) {
            op["since"] = since.into();
            op["epoch"] = epoch.into();
        }
        serde_json::to_vec(&op).unwrap_or_default()
    }

    /// Starts a new connection for `slot` on the node after its last one, resuming `$user`
    /// in the upgrade URL.
    fn reconnect(&mut self, engine: &mut Engine, slot: usize, now: u64) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let node = (usize::from(conn.node) + 1) % self.nodes;
        conn.node = node as u16;
        let query = match conn.streams[USER].resume() {
            Some((epoch, since)) => format!("&since={since}&epoch={}", url_encode(epoch)),
            None => String::new(),
        };
        let number = self.first + slot as u64;
        if let Err(end) = engine.open_on(slot, number, node, 0, &query) {
            *self
                .result
                .reconnect_failures
                .entry(end.kind())
                .or_insert(0) += 1;
            self.schedule_retry(slot, now, true);
        }
    }

    /// Queues a reconnect of `slot`: at once after an open connection went away, after a
    /// growing wait (100 ms .. 2 s) after a failed attempt.
    fn schedule_retry(&mut self, slot: usize, now: u64, failed: bool) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let wait_ms = if failed {
            conn.backoff_ms = (conn.backoff_ms * 2).clamp(BACKOFF_MIN_MS, BACKOFF_MAX_MS);
            conn.backoff_ms
        } else {
            conn.backoff_ms = 0;
            0
        };
        self.retry
            .push(Reverse((now + u64::from(wait_ms) * 1_000_000, slot)));
    }

    /// Drops `drop_rate` of the open connections (RST and plain close alternately) and
    /// reconnects them at once.
    fn drop_some(&mut self, engine: &mut Engine, now: u64) {
        let want = self.spec.drop_rate * self.open as f64 + self.drop_carry;
        let count = want.floor() as u64;
        self.drop_carry = want - count as f64;
        let slots = engine.slots();
        if slots == 0 {
            return;
        }
        for _ in 0..count {
            for _ in 0..16 {
                let slot = (engine.run.next_rand() % slots as u64) as usize;
                let open = engine
                    .client(slot)
                    .is_some_and(|c| c.session.state == ClientState::Open);
                if !open {
                    continue;
                }
                let r = &self.result;
                let rst = r.reconnect_causes.get("dropped_rst").copied().unwrap_or(0)
                    <= r.reconnect_causes.get("dropped_fin").copied().unwrap_or(0);
                if engine.drop_client(slot, rst) {
                    self.open = self.open.saturating_sub(1);
                    self.drops += 1;
                    let cause = if rst { "dropped_rst" } else { "dropped_fin" };
                    *self
                        .result
                        .reconnect_causes
                        .entry(cause.into())
                        .or_insert(0) += 1;
                    if let Some(c) = self.conns.get_mut(slot) {
                        c.backoff_ms = 0;
                    }
                    self.reconnect(engine, slot, now);
                }
                break;
            }
        }
    }

    /// Sends the parent the second just over and starts the next.
    fn emit_second(&mut self) {
        let line = SecondLine {
            s: self.second,
            deliveries: std::mem::take(&mut self.second_deliveries),
            latency: [0, 1, 2].map(|k| hist_to_data(&self.second_latency[k])),
            open: self.open,
            reconnects: self.result.reconnects,
            recovered_false: self
                .result
                .recovered_false
                .iter()
                .map(|r| r[0] + r[1])
                .sum(),
            drops: self.drops,
        };
        crate::child::emit("T", &line);
        for h in &mut self.second_latency {
            h.reset();
        }
        self.second += 1;
    }

    /// A `subscribed` answer on `slot`.
    fn on_subscribed(&mut self, run: &mut Run, session: &mut Session, slot: usize, data: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
            run.err("bad_subscribed");
            return;
        };
        let k = match v.get("channel").and_then(|c| c.as_str()) {
            Some("$user") => USER,
            Some(ALL_CHANNEL) => ALL,
            Some(c) if c.starts_with("room-") => ROOM,
            _ => {
                run.err("subscribed_unknown_channel");
                return;
            }
        };
        let (Some(epoch), Some(seq)) = (
            v.get("epoch").and_then(|e| e.as_str()),
            v.get("seq").and_then(|s| s.as_u64()),
        ) else {
            run.err("bad_subscribed");
            return;
        };
        let recovered = v.get("recovered").and_then(|r| r.as_bool());
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if let Subscribed::Resynced(why) = conn.streams[k].on_subscribed(epoch, seq, recovered) {
            let i = usize::from(why == NotRecovered::HistoryGone);
            self.result.recovered_false[k][i] += 1;
        }
        if session.state != ClientState::Subscribing {
            return; // unsolicited (`recovered:false` after a gap the node could not fill)
        }
        conn.waiting &= !(1 << k);
        if conn.waiting != 0 {
            return;
        }
        self.open += 1;
        conn.backoff_ms = 0;
        if conn.up {
            session.state = ClientState::Open;
            self.result.reconnects += 1;
        } else {
            conn.up = true;
            run.mark_open(session);
        }
    }

    /// A delivery on `slot`.
    fn on_delivery(&mut self, run: &mut Run, slot: usize, node: usize, data: &[u8], now: u64) {
        let Some((name, seq, t)) = scan_delivery(data) else {
            run.err("unparsable_delivery");
            return;
        };
        let k = match name.first() {
            Some(b'a') if name == ALL_CHANNEL.as_bytes() => ALL,
            Some(b'r') if name.starts_with(b"room-") => ROOM,
            Some(b'$') if name == b"$user" => USER,
            _ => {
                self.result.unexpected += 1;
                return;
            }
        };
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let r = &mut self.result;
        match conn.streams[k].on_delivery(seq) {
            Delivery::Fresh => {
                let ns = now.saturating_sub(t).max(1);
                self.latency[k].saturating_record(ns);
                self.second_latency[k].saturating_record(ns);
            }
            Delivery::Replayed => r.replayed[k] += 1,
            Delivery::OutOfOrder => r.out_of_order[k] += 1,
            Delivery::Duplicate => {
                r.duplicates[k] += 1;
                return;
            }
            Delivery::Unexpected => {
                r.unexpected += 1;
                return;
            }
        }
        r.deliveries[k] += 1;
        self.second_deliveries[k] += 1;
        run.result.received += 1;
        run.node(node).received += 1;
    }
}

impl Scenario for ScaleClients {
    fn running_poll_timeout(&self) -> std::time::Duration {
        if self.spec.read_batch_ns > 0 {
            // Read in batches: the wait is the sleep at the end of `on_tick`, not epoll's.
            std::time::Duration::ZERO
        } else {
            std::time::Duration::from_millis(5)
        }
    }

    fn on_upgraded(&mut self, run: &mut Run, session: &mut Session, slot: usize, _now: u64) {
        let ops = [self.subscribe_op(slot, ALL), self.subscribe_op(slot, ROOM)];
        for op in &ops {
            run.send(session, OpCode::Text, op);
        }
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.waiting = 0b111;
            conn.node = session.node as u16;
        }
        session.state = ClientState::Subscribing;
    }

    fn on_message(
        &mut self,
        run: &mut Run,
        session: &mut Session,
        slot: usize,
        kind: MessageKind,
        data: &[u8],
        now: u64,
    ) -> Option<End> {
        if kind != MessageKind::Text {
            return None;
        }
        if data.starts_with(br#"{"op":"message""#) {
            self.on_delivery(run, slot, session.node, data, now);
            return None;
        }
        let head = &data[..data.len().min(32)];
        if contains(head, br#""op":"subscribed""#) {
            self.on_subscribed(run, session, slot, data);
        } else if contains(head, br#""op":"error""#) {
            // A node that cannot reach Redis refuses subscribes with 503: go elsewhere.
            return Some(End::Error("subscribe_error".into()));
        }
        None
    }

    fn on_closed(&mut self, run: &mut Run, session: &Session, slot: usize, end: &End) -> bool {
        let was_open = session.state == ClientState::Open;
        if was_open {
            self.open = self.open.saturating_sub(1);
        }
        let up = self.conns.get(slot).is_some_and(|c| c.up);
        if run.phase == Phase::Connecting && !up {
            return false; // a failed first attempt: the engine counts it
        }
        if matches!(run.phase, Phase::Done) {
            return true;
        }
        let cause = match end {
            End::ServerClose(1001) => "going_away".to_string(),
            e => e.kind(),
        };
        let counts = if was_open {
            &mut self.result.reconnect_causes
        } else {
            &mut self.result.reconnect_failures
        };
        *counts.entry(cause).or_insert(0) += 1;
        self.schedule_retry(slot, crate::sys::now_ns(), !was_open);
        true
    }

    fn on_go(&mut self, _engine: &mut Engine, now: u64) {
        self.t0 = now;
        self.second = 0;
    }

    fn on_published(&mut self, engine: &mut Engine, _published: u64, now: u64) {
        match Tops::load(&self.spec, self.first, self.conns.len() as u64) {
            Ok(t) => self.tops = Some(t),
            Err(e) => {
                eprintln!("edgepush-load child: cannot read the tops file: {e}");
                engine.run.err("no_tops");
            }
        }
        engine.run.phase = Phase::Delivering;
        engine.run.phase_deadline = now.saturating_add(self.spec.settle_ns);
    }

    fn on_tick(&mut self, engine: &mut Engine, now: u64) {
        let mut started = 0;
        while let Some(&Reverse((due, slot))) = self.retry.peek() {
            if due > now || started >= RECONNECTS_PER_TURN {
                break;
            }
            self.retry.pop();
            if engine.client(slot).is_none() {
                self.reconnect(engine, slot, now);
                started += 1;
            }
        }
        while now >= self.t0 + (self.second + 1) * SECOND {
            self.emit_second();
            if engine.run.phase == Phase::Running && self.spec.drop_rate > 0.0 {
                self.drop_some(engine, now);
            }
        }
        // Settled: every client that was ever open is open again and has every stream's top.
        if engine.run.phase == Phase::Delivering && now >= self.next_settle_check {
            self.next_settle_check = now + SETTLE_CHECK_NS;
            let caught_up = self.tops.as_ref().is_some_and(|tops| {
                self.conns.iter().enumerate().all(|(slot, c)| {
                    let number = self.first + slot as u64;
                    let room = number % self.spec.rooms.max(1);
                    let open = engine
                        .client(slot)
                        .is_some_and(|x| x.session.state == ClientState::Open);
                    !c.up
                        || (open
                            && (0..3).all(|k| c.streams[k].caught_up(tops.of(k, number, room))))
                })
            });
            if caught_up || now >= engine.run.phase_deadline {
                engine.run.result.measure_end_ns = now;
                engine.run.phase = Phase::Done;
            }
        }
        if self.spec.read_batch_ns > 0 && engine.run.phase != Phase::Done {
            // `--read-batch`: what arrives meanwhile waits for the next poll, and no waiter
            // sits on the epoll queue for the sender to wake. The latency of what arrived is
            // taken when it is read, after this sleep: it is counted, not subtracted.
            std::thread::sleep(std::time::Duration::from_nanos(self.spec.read_batch_ns));
        }
    }

    fn report(&mut self, engine: &mut Engine) {
        let r = &mut self.result;
        r.latency = [0, 1, 2].map(|k| hist_to_data(&self.latency[k]));
        r.open_at_end = self.open;
        let empty = Tops::default();
        let tops = self.tops.as_ref().unwrap_or(&empty);
        for (slot, c) in self.conns.iter().enumerate() {
            if !c.up {
                continue;
            }
            if engine.client(slot).is_none() {
                r.down_at_end += 1;
            }
            let number = self.first + slot as u64;
            let room = number % self.spec.rooms.max(1);
            for k in 0..3 {
                let (missing, mismatch) = c.streams[k].missing(tops.of(k, number, room));
                r.missing[k] += missing;
                r.epoch_mismatch[k] += u64::from(mismatch);
            }
        }
        let res = &mut engine.run.result;
        res.missing = r.missing.iter().sum();
        res.duplicates = r.duplicates.iter().sum();
        res.out_of_order = r.out_of_order.iter().sum();
        res.reconnects = r.reconnects;
        res.replayed = r.replayed.iter().sum();
        res.scale = Some(std::mem::take(r));
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for `epoch` in a query).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_percent_encoded() {
        assert_eq!(url_encode("k3x9"), "k3x9");
        assert_eq!(url_encode("a b&c=d"), "a%20b%26c%3Dd");
    }
}
