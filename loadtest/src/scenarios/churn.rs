//! `churn`: new connections at `--rate` per second for `--duration`, each one upgraded,
//! (subscribed with `--subscribe`,) then closed with a close handshake of ours (RFC 6455
//! §7.1.2), at most `--max-concurrent` at once. There is no connect phase.

use std::io;
use std::time::Duration;

use edgepush::protocol::frame::OpCode;
use edgepush::protocol::message::MessageKind;

use super::{is_error_op, Scenario, SubscribeOp};
use crate::child::ChildSpec;
use crate::client::{ClientState, End, Session};
use crate::engine::{Engine, Phase, Run, SECOND};

/// Connect, upgrade, (subscribe,) close, over and over.
pub struct Churn {
    /// With `--subscribe`: the op each connection sends before closing.
    subscribe: Option<SubscribeOp>,
    /// New connections per second for this child.
    rate: f64,
    /// Connections in use at once, at most.
    max_concurrent: usize,
    /// Connection numbers: `first + k × stride` for the k-th started here.
    first_number: u64,
    stride: u64,
    handshake_timeout_ns: u64,
    /// Connections started so far, and since when (`GO`).
    started: u64,
    start_ns: u64,
    /// Connections in use.
    active: usize,
    /// Slots free for the next connection.
    free_slots: Vec<usize>,
}

impl Churn {
    /// Churn as `spec` says (`rate`, `max_concurrent`, `channel` to subscribe to).
    pub fn new(spec: &ChildSpec) -> io::Result<Churn> {
        Ok(Churn {
            subscribe: spec.channel.as_deref().map(SubscribeOp::new).transpose()?,
            rate: spec.rate,
            max_concurrent: spec.max_concurrent,
            first_number: spec.first_conn,
            stride: spec.stride,
            handshake_timeout_ns: spec.handshake_timeout_ns,
            started: 0,
            start_ns: 0,
            active: 0,
            free_slots: Vec::new(),
        })
    }

    /// Starts one more connection.
    fn start(&mut self, engine: &mut Engine) {
        let slot = self.free_slots.pop().unwrap_or(engine.slots());
        let number = self.first_number + self.started * self.stride.max(1);
        self.started += 1;
        engine.run.result.attempted += 1;
        match engine.open(slot, number, 0) {
            Ok(()) => self.active += 1,
            Err(end) => {
                self.free_slots.push(slot);
                let node = engine.node_of(number);
                match end {
                    End::Error(kind) => engine.run.fail(node, &kind),
                    _ => {
                        engine.run.result.failed += 1;
                        engine.run.node(node).failed += 1;
                    }
                }
            }
        }
    }
}

impl Scenario for Churn {
    fn connects_before_go(&self) -> bool {
        false
    }

    fn running_poll_timeout(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn on_upgraded(&mut self, run: &mut Run, session: &mut Session, _slot: usize, now: u64) {
        if run.measuring(now) {
            run.result.handshakes += 1;
            run.node(session.node).handshakes += 1;
        }
        match &self.subscribe {
            None => {
                run.send_close(session, 1000);
                session.state = ClientState::Closing;
            }
            Some(op) => {
                run.send(session, OpCode::Text, &op.frame);
                session.state = ClientState::Subscribing;
            }
        }
    }

    fn on_message(
        &mut self,
        run: &mut Run,
        session: &mut Session,
        _slot: usize,
        kind: MessageKind,
        data: &[u8],
        _now: u64,
    ) -> Option<End> {
        let Some(op) = &self.subscribe else {
            return None;
        };
        if session.state != ClientState::Subscribing {
            return None;
        }
        if kind == MessageKind::Text && op.is_reply(data) {
            run.send_close(session, 1000);
            session.state = ClientState::Closing;
        } else if is_error_op(data) {
            return Some(End::Error("subscribe_refused".into()));
        }
        None
    }

    fn on_closed(&mut self, _run: &mut Run, _session: &Session, slot: usize, _end: &End) -> bool {
        self.active = self.active.saturating_sub(1);
        self.free_slots.push(slot);
        false
    }

    fn on_go(&mut self, _engine: &mut Engine, now: u64) {
        self.start_ns = now;
    }

    /// Keeps up the rate while the measured phase lasts, then waits (a handshake timeout and
    /// 3 s more, at most) for the connections in use to finish.
    fn on_tick(&mut self, engine: &mut Engine, now: u64) {
        if engine.run.phase != Phase::Running {
            return;
        }
        let run = &mut engine.run;
        if now < run.measure_end {
            let target = (self.rate * (now - self.start_ns) as f64 / SECOND as f64) as u64;
            while self.started < target && self.active < self.max_concurrent.max(1) {
                self.start(engine);
            }
        } else {
            if run.result.measure_end_ns == 0 {
                run.result.measure_end_ns = run.measure_end;
                run.phase_deadline = now + self.handshake_timeout_ns + 3 * SECOND;
            }
            if self.active == 0 || now >= run.phase_deadline {
                run.phase = Phase::Done;
            }
        }
    }
}
