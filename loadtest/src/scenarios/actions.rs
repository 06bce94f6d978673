//! `actions`: every connection sends binary actions (a 4-byte big-endian action code, then
//! `--size` payload bytes) to the push endpoint of an edgepush with `--upstream`, keeping
//! `--in-flight` of them unanswered, and checks what comes back: the backend echoes each action
//! (`edgepush-load backend`), so every answer carries the counter we put in its payload, and a
//! connection's answers must come back in the order sent, each exactly once. An error op
//! (`{"op":"error","code":502|504,"action":…}`) answers the oldest action still waiting (the
//! server answers a connection's actions in order, errors included) and is counted by code.
//!
//! The per-connection book-keeping ([`Book`]) and the message layout ([`write_action`],
//! [`answer_counter`]) are shared with the `--direct` run ([`crate::direct`]), which sends the
//! same actions straight to the backend.

use std::collections::VecDeque;

use edgepush::protocol::frame::OpCode;
use edgepush::protocol::message::MessageKind;

use super::{fill_in_flight, is_error_op, Scenario};
use crate::child::ChildSpec;
use crate::client::{ClientState, End, Session};
use crate::engine::{Engine, Phase, Run};

/// Bytes of an action before its payload: the action code.
pub const CODE_LEN: usize = 4;
/// Bytes of the counter at the start of the payload (little-endian).
pub const COUNTER_LEN: usize = 8;

/// Appends one action to `out`: `code` (big-endian), then `size` payload bytes (at least
/// [`COUNTER_LEN`]) starting with `counter` (little-endian) and padded with `x`.
pub fn write_action(out: &mut Vec<u8>, code: u32, counter: u64, size: usize) {
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&counter.to_le_bytes());
    let pad = size.saturating_sub(COUNTER_LEN);
    out.resize(out.len() + pad, b'x');
}

/// The counter of an echoed action: `Some` if `data` starts with `code` and holds a counter.
pub fn answer_counter(data: &[u8], code: u32) -> Option<u64> {
    let head = data.get(..CODE_LEN + COUNTER_LEN)?;
    if head[..CODE_LEN] != code.to_be_bytes() {
        return None;
    }
    let mut counter = [0u8; COUNTER_LEN];
    counter.copy_from_slice(&head[CODE_LEN..]);
    Some(u64::from_le_bytes(counter))
}

/// The `code` of an error op (`{"op":"error","code":502,…}`), if it has a numeric one.
pub fn error_code(data: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    v.get("code")?.as_u64()
}

/// The error kind an error op with `code` counts as: `upstream_502`, `upstream_504`, or
/// `action_error_<code>` (`action_error` without a numeric code).
pub fn error_kind(code: Option<u64>) -> String {
    match code {
        Some(c @ (502 | 504)) => format!("upstream_{c}"),
        Some(c) => format!("action_error_{c}"),
        None => "action_error".into(),
    }
}

/// How an answer matched the actions waiting on its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    /// The oldest waiting action: in order. Carries its send time (ns).
    InOrder(u64),
    /// A waiting action, but not the oldest (those before it are still waiting). Carries its
    /// send time (ns).
    OutOfOrder(u64),
    /// An action already answered (its counter is below the next one we would send).
    Duplicate,
    /// A counter we never sent.
    Unknown,
}

/// One connection's actions: the counter of the next to send, and those sent and not yet
/// answered, oldest first, each with its send time (ns).
#[derive(Debug, Clone, Default)]
pub struct Book {
    next: u64,
    waiting: VecDeque<(u64, u64)>,
}

impl Book {
    /// Records an action sent at `now`; returns its counter.
    pub fn send(&mut self, now: u64) -> u64 {
        let counter = self.next;
        self.next += 1;
        self.waiting.push_back((counter, now));
        counter
    }

    /// Matches an answer carrying `counter` against the waiting actions (and takes it off).
    pub fn answer(&mut self, counter: u64) -> Matched {
        match self.waiting.front() {
            Some(&(c, sent)) if c == counter => {
                self.waiting.pop_front();
                return Matched::InOrder(sent);
            }
            _ => {}
        }
        if let Some(i) = self.waiting.iter().position(|&(c, _)| c == counter) {
            let sent = self.waiting.remove(i).map_or(0, |(_, sent)| sent);
            return Matched::OutOfOrder(sent);
        }
        if counter < self.next {
            Matched::Duplicate
        } else {
            Matched::Unknown
        }
    }

    /// An answer that names no counter (an error op): it answers the oldest waiting action;
    /// `false` if none was waiting.
    pub fn answer_oldest(&mut self) -> bool {
        self.waiting.pop_front().is_some()
    }

    /// Actions sent and not answered.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

/// Actions against an edgepush with `--upstream`.
pub struct Actions {
    code: u32,
    size: usize,
    in_flight: usize,
    /// Per slot.
    books: Vec<Book>,
    /// Actions waiting over all connections (the drain ends when it is 0).
    waiting: u64,
    /// Connections that ended with actions still waiting: those count as missing.
    lost: u64,
    /// Scratch for the next message.
    message: Vec<u8>,
}

impl Actions {
    /// Actions with `spec.action_code`, `spec.size` and `spec.inflight`.
    pub fn new(spec: &ChildSpec) -> Actions {
        Actions {
            code: spec.action_code,
            size: spec.size.max(COUNTER_LEN),
            in_flight: spec.inflight.max(1),
            books: Vec::new(),
            waiting: 0,
            lost: 0,
            message: Vec::with_capacity(CODE_LEN + spec.size.max(COUNTER_LEN)),
        }
    }

    fn book(&mut self, slot: usize) -> &mut Book {
        if slot >= self.books.len() {
            self.books.resize_with(slot + 1, Book::default);
        }
        &mut self.books[slot]
    }

    /// Sends `slot`'s next action at `now`.
    fn send(&mut self, run: &mut Run, session: &mut Session, slot: usize, now: u64) {
        let counter = self.book(slot).send(now);
        self.message.clear();
        write_action(&mut self.message, self.code, counter, self.size);
        run.send(session, OpCode::Binary, &self.message);
        run.result.sent += 1;
        self.waiting += 1;
    }
}

impl Scenario for Actions {
    fn on_upgraded(&mut self, run: &mut Run, session: &mut Session, slot: usize, _now: u64) {
        *self.book(slot) = Book::default();
        run.mark_open(session);
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
        if session.state != ClientState::Open {
            return None;
        }
        let answered = match kind {
            MessageKind::Binary => match answer_counter(data, self.code) {
                Some(counter) => match self.book(slot).answer(counter) {
                    matched @ (Matched::InOrder(sent) | Matched::OutOfOrder(sent)) => {
                        if matches!(matched, Matched::OutOfOrder(_)) {
                            run.result.out_of_order += 1;
                        }
                        if run.measuring(now) {
                            run.record_latency(session.node, now.saturating_sub(sent));
                            run.result.received += 1;
                            run.node(session.node).received += 1;
                            run.result.received_bytes += data.len() as u64;
                        }
                        true
                    }
                    Matched::Duplicate => {
                        run.result.duplicates += 1;
                        false
                    }
                    Matched::Unknown => {
                        run.err("unknown_answer");
                        false
                    }
                },
                None => {
                    run.err("unexpected_binary");
                    false
                }
            },
            MessageKind::Text if is_error_op(data) => {
                run.err(&error_kind(error_code(data)));
                if self.book(slot).answer_oldest() {
                    true
                } else {
                    run.err("error_without_action");
                    false
                }
            }
            // The `$user` stream's `subscribed`, and anything else the server says in text.
            MessageKind::Text => false,
        };
        if answered {
            run.result.answered += 1;
            self.waiting = self.waiting.saturating_sub(1);
            if run.measuring(now) {
                self.send(run, session, slot, now);
            }
        }
        None
    }

    fn on_closed(&mut self, _run: &mut Run, _session: &Session, slot: usize, _end: &End) -> bool {
        if let Some(book) = self.books.get_mut(slot) {
            let left = book.waiting() as u64;
            self.lost += left;
            self.waiting = self.waiting.saturating_sub(left);
            *book = Book::default();
        }
        false
    }

    /// Puts `--in-flight` actions in flight on every open connection.
    fn on_go(&mut self, engine: &mut Engine, now: u64) {
        let in_flight = self.in_flight;
        fill_in_flight(self, engine, in_flight, |s, run, session, slot| {
            s.send(run, session, slot, now);
        });
    }

    /// Running until `--duration`, then waiting (at most `--drain-timeout`) for the answers
    /// still due.
    fn on_tick(&mut self, engine: &mut Engine, now: u64) {
        let run = &mut engine.run;
        match run.phase {
            Phase::Running if now >= run.measure_end => {
                run.result.measure_end_ns = now;
                run.phase = Phase::Delivering;
                run.phase_deadline = now.saturating_add(engine.spec.deliver_timeout_ns);
            }
            Phase::Delivering if self.waiting == 0 || now >= run.phase_deadline => {
                run.phase = Phase::Done;
            }
            _ => {}
        }
    }

    /// Missing: the actions never answered (still waiting, or on a connection that ended).
    fn report(&mut self, engine: &mut Engine) {
        let waiting: u64 = self.books.iter().map(|b| b.waiting() as u64).sum();
        engine.run.result.missing = waiting + self.lost;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_action_and_its_echo() {
        let mut m = Vec::new();
        write_action(&mut m, 110, 0x0102, 64);
        assert_eq!(m.len(), 4 + 64);
        assert_eq!(&m[..4], &[0, 0, 0, 110]);
        assert_eq!(&m[4..12], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert!(m[12..].iter().all(|&b| b == b'x'));
        assert_eq!(answer_counter(&m, 110), Some(0x0102));
        assert_eq!(answer_counter(&m, 111), None);
        assert_eq!(answer_counter(&m[..11], 110), None);
        // The counter always fits: a size below 8 still carries it.
        let mut small = Vec::new();
        write_action(&mut small, 7, 9, 0);
        assert_eq!(small.len(), 12);
        assert_eq!(answer_counter(&small, 7), Some(9));
    }

    #[test]
    fn error_ops_by_code() {
        let e = br#"{"op":"error","code":504,"action":110,"reason":"upstream timed out"}"#;
        assert_eq!(error_code(e), Some(504));
        assert_eq!(error_kind(error_code(e)), "upstream_504");
        assert_eq!(error_kind(Some(502)), "upstream_502");
        assert_eq!(error_kind(Some(400)), "action_error_400");
        assert_eq!(
            error_kind(error_code(b"{\"op\":\"error\"}")),
            "action_error"
        );
        assert_eq!(error_code(b"not json"), None);
    }

    #[test]
    fn the_book_sees_order_duplicates_and_strangers() {
        let mut b = Book::default();
        for t in 0..4 {
            assert_eq!(b.send(100 + t), t);
        }
        assert_eq!(b.answer(0), Matched::InOrder(100));
        // 2 before 1: out of order; then 1 is the oldest again.
        assert_eq!(b.answer(2), Matched::OutOfOrder(102));
        assert_eq!(b.answer(1), Matched::InOrder(101));
        assert_eq!(b.answer(1), Matched::Duplicate);
        assert_eq!(b.answer(0), Matched::Duplicate);
        assert_eq!(b.answer(9), Matched::Unknown);
        assert_eq!(b.waiting(), 1);
        // An error answers the oldest.
        assert!(b.answer_oldest());
        assert!(!b.answer_oldest());
        assert_eq!(b.waiting(), 0);
        assert_eq!(b.send(200), 4);
    }
}
