//! `fanout`: N subscribers receive what the parent publishes; with `--reconnect-every` each
//! one also drops its connection at random times while publishing and comes back with
//! `since`/`epoch`, so the server's replay must fill the gap (see `loadtest/README.md`).

use std::io;

use edgepush::protocol::message::MessageKind;

use super::subscribers::{SubscribeAnswer, Subscribers};
use super::Scenario;
use crate::child::ChildSpec;
use crate::client::{ClientState, End, Session};
use crate::engine::{Engine, Phase, Run};
use crate::stats::{parse_subscribed, Recovery, Resumed};
use crate::sys::now_ns;

/// Wait before trying again after a failed reconnect (ns).
const RECONNECT_RETRY_NS: u64 = 100_000_000;
/// How often the drops and retries are looked at, at most (ns).
const RECONNECT_SCAN_NS: u64 = 1_000_000;

/// Subscribers, and their drops and reconnects.
pub struct Fanout {
    subscribers: Subscribers,
    /// `--reconnect-every` (ns); 0 = subscribers never drop (always 0 without the subscribe op).
    reconnect_every: u64,
    /// The channel, for the resubscribe op.
    channel: String,
    /// Number of this child's first connection (slot `s` is connection `first_number + s`).
    first_number: u64,
    /// Per logical subscriber (with `--reconnect-every`): its recovery state, whether its
    /// current connection is a reconnection, when it next drops its connection and when it
    /// retries a failed reconnect (0 = not scheduled).
    recovery: Vec<Recovery>,
    reconnected: Vec<bool>,
    next_drop: Vec<u64>,
    retry_at: Vec<u64>,
    /// When drops and retries are next looked at.
    next_scan: u64,
}

impl Fanout {
    /// Fanout as `spec` says.
    pub fn new(spec: &ChildSpec) -> io::Result<Fanout> {
        let reconnect_every = if spec.channel.is_some() {
            spec.reconnect_every_ns
        } else {
            0
        };
        let per_slot = |on: bool| if on { spec.conns } else { 0 };
        Ok(Fanout {
            subscribers: Subscribers::new(spec)?,
            reconnect_every,
            channel: spec.channel.clone().unwrap_or_default(),
            first_number: spec.first_conn,
            recovery: vec![Recovery::default(); per_slot(spec.reconnect_every_ns > 0)],
            reconnected: vec![false; spec.conns],
            next_drop: vec![0; spec.conns],
            retry_at: vec![0; spec.conns],
            next_scan: 0,
        })
    }

    /// Is `slot` a reconnecting subscriber's connection (not its first)?
    fn is_reconnection(&self, slot: usize) -> bool {
        self.reconnected.get(slot) == Some(&true)
    }

    /// Picks when `slot` next drops its connection: uniform in `[0, 2 × every)` from now, so
    /// once per `every` on average and never all together. Only while publishing.
    fn schedule_drop(&mut self, run: &mut Run, slot: usize, now: u64) {
        let at = if self.reconnect_every > 0 && run.phase == Phase::Running {
            now + 1 + run.next_rand() % (2 * self.reconnect_every)
        } else {
            0
        };
        if let Some(d) = self.next_drop.get_mut(slot) {
            *d = at;
        }
    }

    /// The `subscribed` answer on a reconnected subscriber's new connection.
    fn on_resubscribed(
        &mut self,
        run: &mut Run,
        session: &mut Session,
        slot: usize,
        data: &[u8],
        now: u64,
    ) {
        let before = self.subscribers.accounted(slot);
        let outcome = match (
            parse_subscribed(data),
            self.recovery.get_mut(slot),
            self.subscribers.tracker_mut(slot),
        ) {
            (Some((epoch, seq, recovered)), Some(rec), Some(t)) => {
                rec.on_subscribed(t, &epoch, seq, recovered)
            }
            _ => {
                run.err("bad_subscribed");
                Resumed::NotRecovered { written_off: 0 }
            }
        };
        match outcome {
            Resumed::Recovered => run.result.recovered += 1,
            Resumed::NotRecovered { .. } => {
                run.result.not_recovered += 1;
                run.err("not_recovered");
            }
            Resumed::First => {}
        }
        run.result.reconnects += 1;
        session.state = ClientState::Open;
        self.subscribers.bump_complete(slot, before);
        self.schedule_drop(run, slot, now);
    }

    /// The first `subscribed` answer of `slot`: with reconnects, it gives the epoch and the
    /// channel's `seq` to resume from.
    fn on_first_subscribed(&mut self, run: &mut Run, slot: usize, data: &[u8]) {
        if self.reconnect_every == 0 {
            return;
        }
        match (
            parse_subscribed(data),
            self.recovery.get_mut(slot),
            self.subscribers.tracker_mut(slot),
        ) {
            (Some((epoch, seq, recovered)), Some(rec), Some(t)) => {
                rec.on_subscribed(t, &epoch, seq, recovered);
            }
            _ => run.err("bad_subscribed"),
        }
    }

    /// Drops `slot`'s connection without a close handshake (an RST through `SO_LINGER` 0 every
    /// other time, a plain close otherwise) and starts a new one.
    fn drop_and_reconnect(&mut self, engine: &mut Engine, slot: usize, now: u64) {
        let r = &engine.run.result;
        let reset = r.drops_rst <= r.drops_fin;
        if !engine.drop_client(slot, reset) {
            return;
        }
        if reset {
            engine.run.result.drops_rst += 1;
        } else {
            engine.run.result.drops_fin += 1;
        }
        self.next_drop[slot] = 0;
        self.reconnect(engine, slot, now);
    }

    /// Opens a new connection for logical subscriber `slot` (it resubscribes once upgraded).
    fn reconnect(&mut self, engine: &mut Engine, slot: usize, now: u64) {
        let number = self.first_number + slot as u64;
        match engine.open(slot, number, 0) {
            Ok(()) => self.reconnected[slot] = true,
            Err(end) => {
                if let End::Error(kind) = end {
                    engine.run.err(&format!("reconnect_{kind}"));
                }
                self.retry_at[slot] = now + RECONNECT_RETRY_NS;
            }
        }
    }

    /// Drops the connections due (while publishing) and retries failed reconnects (while
    /// publishing and delivering). At most once a millisecond.
    fn reconnect_tick(&mut self, engine: &mut Engine, now: u64) {
        if self.reconnect_every == 0 || now < self.next_scan {
            return;
        }
        self.next_scan = now + RECONNECT_SCAN_NS;
        let publishing = engine.run.phase == Phase::Running;
        for slot in 0..self.next_drop.len() {
            if !self.subscribers.is_live(slot) {
                continue;
            }
            let retry = self.retry_at[slot];
            if retry != 0 && now >= retry && engine.client(slot).is_none() {
                self.retry_at[slot] = 0;
                self.reconnect(engine, slot, now);
                continue;
            }
            let due = self.next_drop[slot];
            if publishing && due != 0 && now >= due {
                let open = engine
                    .client(slot)
                    .is_some_and(|c| c.session.state == ClientState::Open);
                if open {
                    self.drop_and_reconnect(engine, slot, now);
                } else {
                    self.next_drop[slot] = 0;
                }
            }
        }
    }
}

impl Scenario for Fanout {
    fn on_upgraded(&mut self, run: &mut Run, session: &mut Session, slot: usize, _now: u64) {
        let resubscribe = match self.recovery.get(slot) {
            Some(rec) if self.is_reconnection(slot) => Some(rec.subscribe_frame(&self.channel)),
            _ => None,
        };
        if !self
            .subscribers
            .send_subscribe(run, session, resubscribe.as_deref())
        {
            self.subscribers.start(run, session, slot);
        }
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
        match session.state {
            ClientState::Subscribing => match self.subscribers.subscribe_answer(kind, data) {
                SubscribeAnswer::Subscribed if self.is_reconnection(slot) => {
                    self.on_resubscribed(run, session, slot, data, now);
                }
                SubscribeAnswer::Subscribed => {
                    self.on_first_subscribed(run, slot, data);
                    self.subscribers.start(run, session, slot);
                }
                SubscribeAnswer::Refused => return Some(End::Error("subscribe_refused".into())),
                SubscribeAnswer::Other => {}
            },
            ClientState::Open if kind == MessageKind::Text => {
                let recovery = match self.recovery.get_mut(slot) {
                    Some(rec) if self.reconnect_every > 0 => Some(rec),
                    _ => None,
                };
                self.subscribers
                    .on_delivery(run, slot, session.node, data, now, recovery);
            }
            _ => {}
        }
        None
    }

    /// With reconnects, a subscriber's connection that ends is replaced while the run goes on
    /// (and counted here); otherwise the engine counts it.
    fn on_closed(&mut self, run: &mut Run, session: &Session, slot: usize, end: &End) -> bool {
        let open = session.state == ClientState::Open;
        if self.reconnect_every > 0 && (self.is_reconnection(slot) || open) {
            let kind = end.kind();
            if open {
                if *end != End::Done {
                    run.result.closed_during += 1;
                    run.err(&kind);
                }
            } else {
                run.err(&format!("reconnect_{kind}"));
            }
            if matches!(run.phase, Phase::Running | Phase::Delivering) && *end != End::Done {
                self.next_drop[slot] = 0;
                self.retry_at[slot] = now_ns() + RECONNECT_RETRY_NS;
            } else {
                self.subscribers.end(slot);
            }
            return true;
        }
        if open {
            self.subscribers.end(slot);
        }
        false
    }

    fn on_go(&mut self, engine: &mut Engine, now: u64) {
        if self.reconnect_every > 0 {
            for slot in 0..self.next_drop.len() {
                if self.subscribers.is_live(slot) {
                    self.schedule_drop(&mut engine.run, slot, now);
                }
            }
        }
    }

    fn on_published(&mut self, engine: &mut Engine, published: u64, now: u64) {
        self.subscribers
            .on_published(&mut engine.run, published, now);
    }

    fn on_tick(&mut self, engine: &mut Engine, now: u64) {
        match engine.run.phase {
            Phase::Running => self.reconnect_tick(engine, now),
            Phase::Delivering => {
                self.reconnect_tick(engine, now);
                if self.subscribers.deliveries_done(&engine.run, now) {
                    engine.run.result.measure_end_ns = now;
                    engine.run.phase = Phase::Done;
                }
            }
            _ => {}
        }
    }

    fn report(&mut self, engine: &mut Engine) {
        self.subscribers.report(&mut engine.run);
    }
}
