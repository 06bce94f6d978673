//! `echo`: every connection keeps `--inflight` binary messages in flight against an echo
//! endpoint; each carries its send time (8 bytes, little-endian CLOCK_MONOTONIC ns) so the
//! echo gives the round trip. The rest of the message is `x`s, or (`--payload json`) a JSON
//! object of records of that size, as a compressed run should carry.

use edgepush::protocol::frame::OpCode;
use edgepush::protocol::message::MessageKind;

use super::{end_when_measured, fill_in_flight, Scenario};
use crate::child::ChildSpec;
use crate::cli::Payload;
use crate::client::{ClientState, End, Session};
use crate::engine::{Engine, Run};
use crate::publish::write_data;

/// Echo round trips.
pub struct Echo {
    /// A message of `--size` bytes (at least 8); its first 8 are the timestamp.
    payload: Vec<u8>,
    /// Messages each connection keeps in flight.
    inflight: usize,
}

impl Echo {
    /// Echo with `spec.size` and `spec.inflight`.
    pub fn new(spec: &ChildSpec) -> Echo {
        let size = spec.size.max(8);
        let mut payload = vec![b'x'; 8];
        match spec.payload {
            Payload::Pad => payload.resize(size, b'x'),
            Payload::Json => write_data(&mut payload, 0, 0, size - 8, Payload::Json),
        }
        Echo {
            payload,
            inflight: spec.inflight,
        }
    }

    /// Sends one message stamped with `now`.
    fn send(&mut self, run: &mut Run, session: &mut Session, now: u64) {
        self.payload[..8].copy_from_slice(&now.to_le_bytes());
        run.send(session, OpCode::Binary, &self.payload);
        run.result.sent += 1;
    }
}

impl Scenario for Echo {
    fn on_upgraded(&mut self, run: &mut Run, session: &mut Session, _slot: usize, _now: u64) {
        run.mark_open(session);
    }

    fn on_message(
        &mut self,
        run: &mut Run,
        session: &mut Session,
        _slot: usize,
        kind: MessageKind,
        data: &[u8],
        now: u64,
    ) -> Option<End> {
        if session.state != ClientState::Open {
            return None;
        }
        let (MessageKind::Binary, Some(stamp)) = (kind, data.get(..8)) else {
            run.err("unexpected_message");
            return None;
        };
        let mut sent = [0u8; 8];
        sent.copy_from_slice(stamp);
        let sent = u64::from_le_bytes(sent);
        if run.measuring(now) {
            run.record_latency(session.node, now.saturating_sub(sent));
            run.result.received += 1;
            run.node(session.node).received += 1;
            run.result.received_bytes += data.len() as u64;
            self.send(run, session, now);
        }
        None
    }

    /// Puts `--inflight` messages in flight on every open connection.
    fn on_go(&mut self, engine: &mut Engine, now: u64) {
        let in_flight = self.inflight;
        fill_in_flight(self, engine, in_flight, |s, run, session, _slot| {
            s.send(run, session, now);
        });
    }

    fn on_tick(&mut self, engine: &mut Engine, now: u64) {
        end_when_measured(&mut engine.run, now);
    }
}
