//! What `fanout` and `slow` share: N subscribers on one channel (by the `subscribe` op, or by
//! URL), each accounted per logical subscriber with a [`SeqTracker`], and the wait for the last
//! deliveries once the publisher is done.

use std::io;

use edgepush::protocol::frame::OpCode;
use edgepush::protocol::message::MessageKind;

use super::SubscribeOp;
use crate::child::ChildSpec;
use crate::client::{ClientState, Session};
use crate::engine::{Phase, Run};
use crate::stats::{contains, scan_channel_seq, scan_seq_t, Recovery, SeqTracker};

/// The subscribers of one child, by slot.
/// What a message on a connection still waiting for its subscribe answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeAnswer {
    /// The answer to our subscribe: the connection is subscribed.
    Subscribed,
    /// An `error` op: the server refused the subscribe.
    Refused,
    /// Something else (e.g. the `$user` stream's own `subscribed`).
    Other,
}

pub struct Subscribers {
    /// The op to subscribe with; `None` subscribes by URL (every text frame is a delivery).
    pub subscribe: Option<SubscribeOp>,
    /// Per logical subscriber: which of our `seq`s it received.
    trackers: Vec<SeqTracker>,
    /// Per logical subscriber: subscribed and not yet ended for good.
    live: Vec<bool>,
    /// How many are live.
    live_count: usize,
    /// How many live ones have accounted for every published message (once it is known).
    complete: usize,
    /// Messages published, once the publisher is done (`END`).
    published: Option<u64>,
    /// After `END`, how long to wait for deliveries (ns).
    deliver_timeout_ns: u64,
}

impl Subscribers {
    /// `spec.conns` subscribers expecting `spec.messages`, by the subscribe op on
    /// `spec.channel` if there is one.
    pub fn new(spec: &ChildSpec) -> io::Result<Subscribers> {
        Ok(Subscribers {
            subscribe: spec.channel.as_deref().map(SubscribeOp::new).transpose()?,
            trackers: (0..spec.conns)
                .map(|_| SeqTracker::new(spec.messages))
                .collect(),
            live: vec![false; spec.conns],
            live_count: 0,
            complete: 0,
            published: None,
            deliver_timeout_ns: spec.deliver_timeout_ns,
        })
    }

    /// After the upgrade: sends `frame` (or the subscribe op) and returns true, or returns false
    /// when subscribing by URL (the connection is subscribed already).
    /// Reads a message that arrived while `Subscribing`.
    pub fn subscribe_answer(&self, kind: MessageKind, data: &[u8]) -> SubscribeAnswer {
        let is_reply = self.subscribe.as_ref().is_some_and(|op| op.is_reply(data));
        if kind == MessageKind::Text && is_reply {
            SubscribeAnswer::Subscribed
        } else if super::is_error_op(data) {
            SubscribeAnswer::Refused
        } else {
            SubscribeAnswer::Other
        }
    }

    pub fn send_subscribe(
        &self,
        run: &mut Run,
        session: &mut Session,
        frame: Option<&[u8]>,
    ) -> bool {
        let Some(op) = &self.subscribe else {
            return false;
        };
        run.send(session, OpCode::Text, frame.unwrap_or(&op.frame));
        session.state = ClientState::Subscribing;
        true
    }

    /// `slot` is subscribed, and counts: opened, and live from now on.
    pub fn start(&mut self, run: &mut Run, session: &mut Session, slot: usize) {
        run.mark_open(session);
        if let Some(t) = self.trackers.get_mut(slot) {
            t.active = true;
        }
        if let Some(live) = self.live.get_mut(slot) {
            *live = true;
        }
        self.live_count += 1;
        run.result.subscribers += 1;
    }

    /// Is logical subscriber `slot` live?
    pub fn is_live(&self, slot: usize) -> bool {
        self.live.get(slot) == Some(&true)
    }

    /// How many messages `slot` has accounted for (received or written off).
    pub fn accounted(&self, slot: usize) -> u64 {
        self.trackers.get(slot).map_or(0, SeqTracker::accounted)
    }

    /// The tracker of `slot`.
    pub fn tracker_mut(&mut self, slot: usize) -> Option<&mut SeqTracker> {
        self.trackers.get_mut(slot)
    }

    /// `slot`'s accounted count went from `before` to now: complete?
    pub fn bump_complete(&mut self, slot: usize, before: u64) {
        let (Some(p), Some(t)) = (self.published, self.trackers.get(slot)) else {
            return;
        };
        if before < p && t.accounted() >= p && self.live.get(slot) == Some(&true) {
            self.complete += 1;
        }
    }

    /// Logical subscriber `slot` ends for good.
    pub fn end(&mut self, slot: usize) {
        let Some(live) = self.live.get_mut(slot) else {
            return;
        };
        if !std::mem::take(live) {
            return;
        }
        self.live_count = self.live_count.saturating_sub(1);
        if let (Some(p), Some(t)) = (self.published, self.trackers.get(slot)) {
            if t.accounted() >= p {
                self.complete = self.complete.saturating_sub(1);
            }
        }
    }

    /// A text message on a subscribed connection (to `node`): a delivery, or (wrapped form)
    /// another op. With `recovery` (reconnecting subscribers) channel `seq`s are followed and
    /// replays told apart.
    pub fn on_delivery(
        &mut self,
        run: &mut Run,
        slot: usize,
        node: usize,
        data: &[u8],
        now: u64,
        recovery: Option<&mut Recovery>,
    ) {
        if let Some(op) = &self.subscribe {
            let head = &data[..data.len().min(40)];
            if !contains(head, b"\"op\":\"message\"") {
                if contains(head, b"\"op\":\"error\"") {
                    run.err("server_error_op");
                } else if op.is_reply(data) && contains(data, b"\"recovered\":false") {
                    // The server could not fill a gap (cluster mode: Redis lost history or
                    // restarted): what it skipped stays missing here, and this says why.
                    run.err("unsolicited_not_recovered");
                }
                return; // `subscribed` for $user, etc.
            }
        }
        let Some((seq, t)) = scan_seq_t(data) else {
            run.err("unparsable_delivery");
            return;
        };
        let Some(tracker) = self.trackers.get_mut(slot) else {
            return;
        };
        let before = tracker.accounted();
        let replayed = match recovery {
            Some(rec) => rec.on_delivery(tracker, scan_channel_seq(data), seq),
            None => {
                tracker.record(seq);
                false
            }
        };
        if replayed {
            // Its latency includes the time the subscriber was away: not a delivery latency.
            run.result.replayed += 1;
        } else {
            run.record_latency(node, now.saturating_sub(t));
        }
        run.node(node).received += 1;
        let r = &mut run.result;
        r.received += 1;
        r.received_bytes += data.len() as u64;
        if r.first_recv_ns == 0 {
            r.first_recv_ns = now;
        }
        r.last_recv_ns = now;
        self.bump_complete(slot, before);
    }

    /// `END`: `published` messages went out; wait for the deliveries.
    pub fn on_published(&mut self, run: &mut Run, published: u64, now: u64) {
        self.published = Some(published);
        self.complete = (0..self.live.len())
            .filter(|&slot| {
                self.live[slot]
                    && self
                        .trackers
                        .get(slot)
                        .is_some_and(|t| t.accounted() >= published)
            })
            .count();
        run.phase = Phase::Delivering;
        run.phase_deadline = now.saturating_add(self.deliver_timeout_ns);
    }

    /// While `Delivering`: has every live subscriber got everything, or is the wait over?
    pub fn deliveries_done(&self, run: &Run, now: u64) -> bool {
        self.complete >= self.live_count || now >= run.phase_deadline
    }

    /// Adds up the trackers of the subscribers that counted.
    pub fn report(&self, run: &mut Run) {
        let r = &mut run.result;
        for t in self.trackers.iter().filter(|t| t.active) {
            if let Some(p) = self.published {
                r.missing += t.missing(p);
            }
            r.duplicates += t.duplicates;
            r.out_of_order += t.out_of_order;
            r.out_of_range += t.out_of_range;
            r.written_off += t.written_off;
        }
    }
}
