//! The scenarios a child runs, one file each, behind [`Scenario`]: what a scenario says on a
//! connection once it is upgraded, what it does with each message, what it does on each turn
//! of the loop after `GO` (and so when its run is over), and what it reports.
//!
//! The engine ([`crate::engine`]) owns the sockets and the connect phase and answers control
//! frames; a scenario never touches a socket except through the engine.

pub mod actions;
mod churn;
mod echo;
mod fanout;
mod idle;
mod slow;
mod subscribers;

use std::io;
use std::time::Duration;

use edgepush::protocol::message::MessageKind;

use crate::child::{ChildSpec, ScenarioKind};
use crate::client::{ClientState, End, Session};
use crate::engine::{Engine, Phase, Run};
use crate::stats::contains;

/// What one scenario does with the connections of a child. Every hook gets the slot (mio
/// token) of the connection it is about; a scenario keeps its per-connection state by slot.
pub trait Scenario {
    /// Does this scenario open its connections in a connect phase before `GO` (all but churn)?
    /// If not, the child says `READY` at once and waits for `GO`.
    fn connects_before_go(&self) -> bool {
        true
    }

    /// How long the loop may sleep in poll while running, when it does not busy-poll.
    fn running_poll_timeout(&self) -> Duration {
        Duration::from_millis(10)
    }

    /// Does the connection in `slot` stop reading once subscribed (slow)? It gets a small
    /// `SO_RCVBUF`.
    fn stops_reading(&self, _slot: usize) -> bool {
        false
    }

    /// `slot`'s upgrade finished (the 101 checked out; its time is already recorded).
    fn on_upgraded(&mut self, run: &mut Run, session: &mut Session, slot: usize, now: u64);

    /// A whole message arrived on `slot`; `Some` ends the connection.
    fn on_message(
        &mut self,
        run: &mut Run,
        session: &mut Session,
        slot: usize,
        kind: MessageKind,
        data: &[u8],
        now: u64,
    ) -> Option<End>;

    /// `slot`'s connection ended with `end`. True if the scenario counted it all; false lets the
    /// engine count it by the state it was in (a failed attempt, a close during the run, …).
    fn on_closed(&mut self, _run: &mut Run, _session: &Session, _slot: usize, _end: &End) -> bool {
        false
    }

    /// `GO`: the measured phase has started (phase, start and end already set).
    fn on_go(&mut self, _engine: &mut Engine, _now: u64) {}

    /// `END n`: the publisher is done, after `n` messages (fanout, slow).
    fn on_published(&mut self, _engine: &mut Engine, _published: u64, _now: u64) {}

    /// Each turn of the loop after `GO` (phases `Running`, `Delivering`, `StoppedDrain`):
    /// does the scenario's work and moves the phase on, to `Done` at the end.
    fn on_tick(&mut self, engine: &mut Engine, now: u64);

    /// The run is over: put the scenario's last figures into `engine.run.result`.
    fn report(&mut self, _engine: &mut Engine) {}
}

/// The scenario a child's spec asks for.
pub fn for_spec(spec: &ChildSpec) -> io::Result<Box<dyn Scenario>> {
    Ok(match spec.scenario {
        ScenarioKind::Idle => Box::new(idle::Idle),
        ScenarioKind::Echo => Box::new(echo::Echo::new(spec)),
        ScenarioKind::Fanout => Box::new(fanout::Fanout::new(spec)?),
        ScenarioKind::Churn => Box::new(churn::Churn::new(spec)?),
        ScenarioKind::Slow => Box::new(slow::Slow::new(spec)?),
        ScenarioKind::Actions => Box::new(actions::Actions::new(spec)),
        ScenarioKind::Scale => Box::new(crate::scale::clients::ScaleClients::new(spec)?),
    })
}

/// The `subscribe` op of the push protocol for one channel, and how its answer is recognised.
#[derive(Debug, Clone)]
pub struct SubscribeOp {
    /// `{"op":"subscribe","channel":NAME}`.
    pub frame: Vec<u8>,
    /// `"channel":NAME`, found in our `subscribed` answer.
    reply_channel: Vec<u8>,
}

impl SubscribeOp {
    /// The op for `channel`.
    pub fn new(channel: &str) -> serde_json::Result<SubscribeOp> {
        let quoted = serde_json::to_vec(channel)?;
        Ok(SubscribeOp {
            frame: serde_json::to_vec(&serde_json::json!({"op": "subscribe", "channel": channel}))?,
            reply_channel: [b"\"channel\":".as_slice(), &quoted].concat(),
        })
    }

    /// Is `data` (a text message) the `subscribed` answer for our channel?
    pub fn is_reply(&self, data: &[u8]) -> bool {
        contains(data, b"\"op\":\"subscribed\"") && contains(data, &self.reply_channel)
    }
}

/// Is `data` an `error` op (the server refused what we asked)?
pub fn is_error_op(data: &[u8]) -> bool {
    contains(data, b"\"op\":\"error\"")
}

/// For scenarios that run for `--duration`/`--hold`: done once the measured phase is over.
fn end_when_measured(run: &mut Run, now: u64) {
    if run.phase == Phase::Running && now >= run.measure_end {
        run.result.measure_end_ns = now;
        run.phase = Phase::Done;
    }
}

/// For closed-loop scenarios (`echo`, `actions`), at `go`: calls `send` `in_flight` times on every
/// open connection (with its run, session and slot), then flushes each.
fn fill_in_flight<S: Scenario>(
    scenario: &mut S,
    engine: &mut Engine,
    in_flight: usize,
    mut send: impl FnMut(&mut S, &mut Run, &mut Session, usize),
) {
    for slot in 0..engine.slots() {
        let Some((run, session)) = engine.run_and_session(slot) else {
            continue;
        };
        if session.state != ClientState::Open {
            continue;
        }
        for _ in 0..in_flight {
            send(scenario, run, session, slot);
        }
        engine.flush(slot, scenario);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_op_and_its_answer() {
        let op = SubscribeOp::new("news \"x\"").unwrap();
        let frame: serde_json::Value = serde_json::from_slice(&op.frame).unwrap();
        assert_eq!(
            frame,
            serde_json::json!({"op": "subscribe", "channel": "news \"x\""})
        );
        assert!(op.is_reply(br#"{"op":"subscribed","channel":"news \"x\"","seq":0}"#));
        assert!(!op.is_reply(br#"{"op":"subscribed","channel":"news","seq":0}"#));
        assert!(!op.is_reply(br#"{"op":"message","channel":"news \"x\"","seq":1}"#));
        assert!(is_error_op(br#"{"op":"error","code":"forbidden"}"#));
        assert!(!is_error_op(br#"{"op":"message"}"#));
    }
}
