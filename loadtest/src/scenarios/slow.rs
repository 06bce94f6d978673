//! `slow`: N subscribers, the first K of which (by slot) stop reading once subscribed, with a
//! small `SO_RCVBUF`. After the publisher is done and the others got everything, the K are
//! read again to see how the server ended them: a 1008 Close, EOF, a reset, or not at all.

use std::io;

use edgepush::protocol::message::MessageKind;

use super::subscribers::{SubscribeAnswer, Subscribers};
use super::Scenario;
use crate::child::ChildSpec;
use crate::client::{ClientState, End, Reading, Session};
use crate::engine::{Engine, Phase, Run};

/// Subscribers, some of them stopped readers.
pub struct Slow {
    subscribers: Subscribers,
    /// Slots `0..stopped` stop reading.
    stopped: usize,
    /// How long to wait for the stopped readers to be closed (ns).
    close_wait_ns: u64,
    /// Stopped readers being drained and not ended yet.
    drain_pending: usize,
}

impl Slow {
    /// Slow as `spec` says (`stopped`, `close_wait_ns`).
    pub fn new(spec: &ChildSpec) -> io::Result<Slow> {
        Ok(Slow {
            subscribers: Subscribers::new(spec)?,
            stopped: spec.stopped,
            close_wait_ns: spec.close_wait_ns,
            drain_pending: 0,
        })
    }

    /// Subscribed: a stopped reader stops reading; the others count as subscribers.
    fn on_subscribed(&mut self, run: &mut Run, session: &mut Session, slot: usize) {
        if self.stops_reading(slot) {
            run.mark_open(session);
            session.reading = Reading::Stopped;
            run.result.stopped += 1;
        } else {
            self.subscribers.start(run, session, slot);
        }
    }

    /// Reads the stopped readers again, to see how the server ended them.
    fn start_drain(&mut self, engine: &mut Engine, now: u64) {
        engine.run.phase = Phase::StoppedDrain;
        engine.run.phase_deadline = now.saturating_add(self.close_wait_ns);
        for slot in 0..engine.slots() {
            let Some(client) = engine.client_mut(slot) else {
                continue;
            };
            if client.session.reading != Reading::Stopped {
                continue;
            }
            client.session.reading = Reading::Draining;
            self.drain_pending += 1;
            if let Some(end) = engine.read(slot, now, true, self) {
                engine.finish(slot, end, self);
            }
        }
    }
}

impl Scenario for Slow {
    fn stops_reading(&self, slot: usize) -> bool {
        slot < self.stopped
    }

    fn on_upgraded(&mut self, run: &mut Run, session: &mut Session, slot: usize, _now: u64) {
        if !self.subscribers.send_subscribe(run, session, None) {
            self.on_subscribed(run, session, slot);
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
                SubscribeAnswer::Subscribed => self.on_subscribed(run, session, slot),
                SubscribeAnswer::Refused => return Some(End::Error("subscribe_refused".into())),
                SubscribeAnswer::Other => {}
            },
            ClientState::Open => {
                if session.reading == Reading::Draining {
                    run.result.stopped_msgs += 1;
                } else if kind == MessageKind::Text {
                    self.subscribers
                        .on_delivery(run, slot, session.node, data, now, None);
                }
            }
            _ => {}
        }
        None
    }

    /// A drained stopped reader is counted by how it ended; a subscriber that ends is no
    /// longer waited for.
    fn on_closed(&mut self, run: &mut Run, session: &Session, slot: usize, end: &End) -> bool {
        if session.reading == Reading::Draining {
            let r = &mut run.result;
            match end {
                End::ServerClose(1008) => r.stopped_close_1008 += 1,
                End::ServerClose(_) => r.stopped_close_other += 1,
                End::Eof => r.stopped_eof += 1,
                End::Reset => r.stopped_reset += 1,
                End::Error(kind) => {
                    r.stopped_reset += 1;
                    run.err(kind);
                }
                End::Done => r.stopped_not_closed += 1,
            }
            self.drain_pending = self.drain_pending.saturating_sub(1);
            return true;
        }
        if session.state == ClientState::Open && !self.stops_reading(slot) {
            self.subscribers.end(slot);
        }
        false
    }

    fn on_published(&mut self, engine: &mut Engine, published: u64, now: u64) {
        self.subscribers
            .on_published(&mut engine.run, published, now);
    }

    fn on_tick(&mut self, engine: &mut Engine, now: u64) {
        match engine.run.phase {
            Phase::Delivering if self.subscribers.deliveries_done(&engine.run, now) => {
                engine.run.result.measure_end_ns = now;
                self.start_drain(engine, now);
            }
            Phase::StoppedDrain if self.drain_pending == 0 || now >= engine.run.phase_deadline => {
                engine.run.phase = Phase::Done;
            }
            _ => {}
        }
    }

    /// Stopped readers still open at the end were not closed by the server.
    fn report(&mut self, engine: &mut Engine) {
        for slot in 0..engine.slots() {
            let draining = engine
                .client(slot)
                .is_some_and(|c| c.session.reading == Reading::Draining);
            if draining {
                engine.finish(slot, End::Done, self);
            }
        }
        self.subscribers.report(&mut engine.run);
    }
}
