//! A worker's connections to the backend, as a state machine (sans IO: the worker connects,
//! writes and reads the sockets `S` kept here, and reports what happened).
//!
//! A connection is `Connecting` (a non-blocking connect with its request waiting), `Busy`
//! (one request: written from [`Pool::unwritten`], its answer read into the connection's
//! buffer) or `Idle` (kept alive for the next request). HTTP/1.1 without pipelining: one
//! request per connection at a time, so there are never more connections than requests in
//! flight (plus the idle ones). Every request has a deadline, from the moment it is handed to
//! a connection (connecting included); past it the connection is closed.
//!
//! **Retries.** A request may go on another connection only if none of it was written: that
//! is when a kept-alive connection turns out to be closed by the backend at the first write.
//! Once a byte is written the request may have reached the backend, and it is never sent
//! again ([`Closed::retry`]). A fresh connection that fails is refused, not retried, so a
//! backend that is down costs one connect per request.

use slab::Slab;

use super::answer::{parse_answer, Answer};
use super::Outcome;
use crate::http::Status;
use crate::tick::Tick;

/// A connection of the pool: its slot and the generation that tells reuses of the slot apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    /// The slot (below 2³¹).
    pub id: u32,
    /// Bumped each time a slot is reused.
    pub generation: u32,
}

#[derive(Debug)]
enum State<R> {
    Connecting(R),
    Busy(R),
    Idle,
}

#[derive(Debug)]
struct Slot<S, R> {
    generation: u32,
    socket: S,
    state: State<R>,
    /// The request being written.
    out: Vec<u8>,
    written: usize,
    /// Some of the request was written: it may have reached the backend.
    wrote_any: bool,
    /// The answer so far.
    input: Vec<u8>,
    deadline: Tick,
    /// The connection served a request before: the backend may have closed it meanwhile.
    reused: bool,
}

/// A connection taken out of the pool ([`Pool::close`]).
#[derive(Debug)]
pub struct Closed<S, R> {
    /// Its socket, to deregister and drop.
    pub socket: S,
    /// The request it carried, if any.
    pub request: Option<R>,
    /// The request's bytes when none of them were written on a kept-alive connection: it may
    /// go on another connection. `None`: it may have reached the backend (or there was none).
    pub retry: Option<Vec<u8>>,
    /// It was still connecting: a failure now is [`Outcome::Refused`], else
    /// [`Outcome::Reset`].
    pub connecting: bool,
}

/// What reading a connection gave.
#[derive(Debug)]
pub enum Read<R> {
    /// The answer is not complete yet.
    Partial,
    /// The request's answer (or why there is none). The connection stays in the pool, idle,
    /// iff `kept`; else close it.
    Done {
        /// The request answered.
        request: R,
        /// The answer, or why there is none.
        answer: Result<Answer, Outcome>,
        /// The connection went back to the idle list.
        kept: bool,
    },
    /// The connection is of no use (an idle one that the backend closed or wrote to, or one
    /// gone already): close it.
    Useless,
}

/// The pool of one worker.
#[derive(Debug)]
pub struct Pool<S, R> {
    slots: Slab<Slot<S, R>>,
    idle: Vec<ConnRef>,
    next_generation: u32,
    timeout: u64,
    max_body: usize,
}

impl<S, R> Pool<S, R> {
    /// An empty pool: requests time out after `timeout` ticks; answer bodies are at most
    /// `max_body` bytes.
    pub fn new(timeout: u64, max_body: usize) -> Self {
        Pool {
            slots: Slab::new(),
            idle: Vec::new(),
            next_generation: 0,
            timeout,
            max_body,
        }
    }

    fn slot(&mut self, conn: ConnRef) -> Option<&mut Slot<S, R>> {
        self.slots
            .get_mut(conn.id as usize)
            .filter(|s| s.generation == conn.generation)
    }

    /// Hands `request` (its bytes `out`) to an idle connection, if there is one; the caller
    /// writes [`Pool::unwritten`] on it. `Err` gives both back: connect a new one with
    /// [`Pool::connecting`].
    pub fn send_on_idle(
        &mut self,
        request: R,
        out: Vec<u8>,
        now: Tick,
    ) -> Result<ConnRef, (R, Vec<u8>)> {
        let timeout = self.timeout;
        while let Some(conn) = self.idle.pop() {
            if let Some(slot) = self.slot(conn) {
                if matches!(slot.state, State::Idle) {
                    slot.state = State::Busy(request);
                    slot.out = out;
                    slot.written = 0;
                    slot.wrote_any = false;
                    slot.input.clear();
                    slot.deadline = now + timeout;
                    return Ok(conn);
                }
            }
        }
        Err((request, out))
    }

    /// The id the next [`Pool::connecting`] will get (to register the socket under it first).
    pub fn next_ref(&self) -> ConnRef {
        ConnRef {
            id: self.slots.vacant_key() as u32,
            generation: self.next_generation,
        }
    }

    /// A new connection, connecting, with `request` waiting to be written.
    pub fn connecting(&mut self, socket: S, request: R, out: Vec<u8>, now: Tick) -> ConnRef {
        let conn = self.next_ref();
        self.next_generation = self.next_generation.wrapping_add(1);
        self.slots.insert(Slot {
            generation: conn.generation,
            socket,
            state: State::Connecting(request),
            out,
            written: 0,
            wrote_any: false,
            input: Vec::new(),
            deadline: now + self.timeout,
            reused: false,
        });
        conn
    }

    /// The connect finished (the socket became writable without an error).
    pub fn connected(&mut self, conn: ConnRef) {
        if let Some(slot) = self.slot(conn) {
            if let State::Connecting(_) = slot.state {
                let State::Connecting(request) = std::mem::replace(&mut slot.state, State::Idle)
                else {
                    return;
                };
                slot.state = State::Busy(request);
            }
        }
    }

    /// Is the connection still connecting?
    pub fn is_connecting(&mut self, conn: ConnRef) -> bool {
        self.slot(conn)
            .is_some_and(|s| matches!(s.state, State::Connecting(_)))
    }

    /// The connection's socket.
    pub fn socket(&mut self, conn: ConnRef) -> Option<&mut S> {
        self.slot(conn).map(|s| &mut s.socket)
    }

    /// The socket and what is left to write of its request (empty when all is written, or
    /// while connecting).
    pub fn unwritten(&mut self, conn: ConnRef) -> Option<(&mut S, &[u8])> {
        let slot = self.slot(conn)?;
        let rest = match slot.state {
            State::Busy(_) => slot.out.get(slot.written..).unwrap_or(&[]),
            _ => &[][..],
        };
        Some((&mut slot.socket, rest))
    }

    /// `n` more bytes of the request were written.
    pub fn wrote(&mut self, conn: ConnRef, n: usize) {
        if let Some(slot) = self.slot(conn) {
            slot.written = (slot.written + n).min(slot.out.len());
            slot.wrote_any |= n > 0;
            if slot.written == slot.out.len() {
                slot.out = Vec::new();
                slot.written = 0;
            }
        }
    }

    /// `bytes` arrived (`eof`: then the backend closed its side). See [`Read`].
    pub fn read(&mut self, conn: ConnRef, bytes: &[u8], eof: bool) -> Read<R> {
        let max_body = self.max_body;
        let Some(slot) = self.slot(conn) else {
            return Read::Useless;
        };
        if !matches!(slot.state, State::Busy(_)) {
            // An idle connection has nothing to say; one connecting reads nothing yet.
            return if bytes.is_empty() && !eof && matches!(slot.state, State::Connecting(_)) {
                Read::Partial
            } else {
                Read::Useless
            };
        }
        slot.input.extend_from_slice(bytes);
        let answer = match parse_answer(&slot.input, eof, max_body) {
            Ok(Status::Partial) => return Read::Partial,
            Ok(Status::Complete((answer, used))) => {
                // Bytes after the answer were never asked for: the connection is not reused.
                let extra = used < slot.input.len();
                Ok((answer, extra))
            }
            Err(outcome) => Err(outcome),
        };
        let State::Busy(request) = std::mem::replace(&mut slot.state, State::Idle) else {
            return Read::Useless;
        };
        slot.input.clear();
        slot.reused = true;
        match answer {
            Ok((answer, extra)) => {
                let kept = answer.keep_alive && !extra && !eof;
                if kept {
                    if slot.input.capacity() > 4096 {
                        slot.input = Vec::new();
                    }
                    self.idle.push(conn);
                }
                Read::Done {
                    request,
                    answer: Ok(answer),
                    kept,
                }
            }
            Err(outcome) => Read::Done {
                request,
                answer: Err(outcome),
                kept: false,
            },
        }
    }

    /// The request on `conn`, if its deadline passed by `now` (the wheel fired for it): the
    /// caller closes the connection and answers 504.
    pub fn expired(&mut self, conn: ConnRef, now: Tick) -> bool {
        self.slot(conn).is_some_and(|s| {
            matches!(s.state, State::Busy(_) | State::Connecting(_)) && s.deadline <= now
        })
    }

    /// The deadline of the request on `conn`, if it carries one.
    pub fn deadline(&mut self, conn: ConnRef) -> Option<Tick> {
        self.slot(conn)
            .filter(|s| !matches!(s.state, State::Idle))
            .map(|s| s.deadline)
    }

    /// Takes `conn` out of the pool (see [`Closed`]).
    pub fn close(&mut self, conn: ConnRef) -> Option<Closed<S, R>> {
        self.slot(conn)?;
        let slot = self.slots.remove(conn.id as usize);
        self.idle.retain(|c| *c != conn);
        let (request, connecting, unsent) = match slot.state {
            State::Connecting(r) => (Some(r), true, false),
            State::Busy(r) => (Some(r), false, slot.reused && !slot.wrote_any),
            State::Idle => (None, false, false),
        };
        Some(Closed {
            socket: slot.socket,
            request,
            retry: unsent.then_some(slot.out),
            connecting,
        })
    }

    /// Connections open (idle ones included).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// No connection is open.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Idle connections.
    pub fn idle(&self) -> usize {
        self.idle.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type P = Pool<(), u32>;
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";

    fn answered(read: Read<u32>) -> (u32, Result<Answer, Outcome>, bool) {
        match read {
            Read::Done {
                request,
                answer,
                kept,
            } => (request, answer, kept),
            other => panic!("not done: {other:?}"),
        }
    }

    /// Connects, writes the whole request, reads `answer`.
    fn exchange(p: &mut P, request: u32, answer: &[u8], now: Tick) -> (ConnRef, Read<u32>) {
        let conn = match p.send_on_idle(request, b"REQ".to_vec(), now) {
            Ok(conn) => conn,
            Err((r, out)) => {
                let conn = p.connecting((), r, out, now);
                p.connected(conn);
                conn
            }
        };
        let n = p.unwritten(conn).map(|(_, rest)| rest.len()).unwrap_or(0);
        assert_eq!(n, 3);
        p.wrote(conn, n);
        (conn, p.read(conn, answer, false))
    }

    #[test]
    fn keep_alive_reuses_one_connection() {
        let mut p = P::new(500, 1024);
        let (first, read) = exchange(&mut p, 1, OK, Tick(0));
        let (request, answer, kept) = answered(read);
        assert_eq!((request, kept), (1, true));
        assert_eq!(answer.map(|a| a.body), Ok(b"hi".to_vec()));
        let (second, read) = exchange(&mut p, 2, OK, Tick(1));
        assert_eq!(first, second);
        assert!(answered(read).2);
        assert_eq!((p.len(), p.idle()), (1, 1));
    }

    #[test]
    fn connection_close_and_extra_bytes_end_the_connection() {
        let mut p = P::new(500, 1024);
        let close = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n";
        let (conn, read) = exchange(&mut p, 1, close, Tick(0));
        assert!(!answered(read).2);
        assert!(p.close(conn).is_some_and(|c| c.request.is_none()));
        let extra = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 204";
        let (_, read) = exchange(&mut p, 2, extra, Tick(0));
        assert!(!answered(read).2);
    }

    #[test]
    fn answers_split_anywhere() {
        for cut in 0..OK.len() {
            let mut p = P::new(500, 1024);
            let (conn, read) = exchange(&mut p, 1, &OK[..cut], Tick(0));
            assert!(matches!(read, Read::Partial), "cut {cut}");
            let (_, answer, kept) = answered(p.read(conn, &OK[cut..], false));
            assert!(answer.is_ok() && kept, "cut {cut}");
        }
    }

    #[test]
    fn timeouts_count_from_the_handover_connecting_included() {
        let mut p = P::new(500, 1024);
        let conn = p.connecting((), 1, b"REQ".to_vec(), Tick(100));
        assert!(!p.expired(conn, Tick(599)));
        assert!(p.expired(conn, Tick(600)));
        let closed = p.close(conn).expect("there");
        assert_eq!((closed.request, closed.connecting), (Some(1), true));
        assert!(
            closed.retry.is_none(),
            "a fresh connection is never retried"
        );
        assert!(!p.expired(conn, Tick(700)), "stale");
    }

    #[test]
    fn only_an_unwritten_request_on_a_kept_connection_may_be_retried() {
        let mut p = P::new(500, 1024);
        let (conn, read) = exchange(&mut p, 1, OK, Tick(0));
        assert!(answered(read).1.is_ok());
        // The backend closed it while idle; we find out at the first write.
        let again = p
            .send_on_idle(2, b"REQ2".to_vec(), Tick(5))
            .expect("idle one");
        assert_eq!(again, conn);
        let closed = p.close(conn).expect("there");
        assert_eq!(closed.request, Some(2));
        assert_eq!(closed.retry.as_deref(), Some(&b"REQ2"[..]));
        // Once a byte is out it is never sent again.
        let (conn, _) = exchange(&mut p, 3, OK, Tick(6));
        let c = p.send_on_idle(4, b"REQ4".to_vec(), Tick(7)).expect("idle");
        assert_eq!(c.id, conn.id);
        p.wrote(c, 1);
        let closed = p.close(c).expect("there");
        assert!(closed.retry.is_none());
        assert!(!closed.connecting, "reset, not refused");
    }

    #[test]
    fn an_idle_connection_that_speaks_is_useless_and_eof_is_reset() {
        let mut p = P::new(500, 1024);
        let (conn, read) = exchange(&mut p, 1, OK, Tick(0));
        assert!(answered(read).1.is_ok());
        assert!(matches!(p.read(conn, b"", true), Read::Useless));
        p.close(conn);
        assert_eq!(p.idle(), 0);
        let (conn, read) = exchange(
            &mut p,
            2,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
            Tick(0),
        );
        assert!(matches!(read, Read::Partial));
        let (_, answer, kept) = answered(p.read(conn, b"", true));
        assert_eq!((answer.err(), kept), (Some(Outcome::Reset), false));
    }

    #[test]
    fn slots_are_told_apart_by_generation() {
        let mut p = P::new(500, 1024);
        let a = p.connecting((), 1, Vec::new(), Tick(0));
        p.close(a);
        let b = p.connecting((), 2, Vec::new(), Tick(0));
        assert_eq!(a.id, b.id);
        assert_ne!(a.generation, b.generation);
        assert!(p.close(a).is_none());
        assert!(matches!(p.read(a, b"x", false), Read::Useless));
    }
}
