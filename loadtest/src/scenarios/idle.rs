//! `idle`: open N connections, then hold them for `--hold` doing nothing but answering pings
//! (the engine does that). What it measures is the connect phase and the server's memory.

use edgepush::protocol::message::MessageKind;

use super::{end_when_measured, Scenario};
use crate::client::{End, Session};
use crate::engine::{Engine, Run};

/// Holds its connections idle.
pub struct Idle;

impl Scenario for Idle {
    fn on_upgraded(&mut self, run: &mut Run, session: &mut Session, _slot: usize, _now: u64) {
        run.mark_open(session);
    }

    fn on_message(
        &mut self,
        _run: &mut Run,
        _session: &mut Session,
        _slot: usize,
        _kind: MessageKind,
        _data: &[u8],
        _now: u64,
    ) -> Option<End> {
        None
    }

    fn on_tick(&mut self, engine: &mut Engine, now: u64) {
        end_when_measured(&mut engine.run, now);
    }
}
