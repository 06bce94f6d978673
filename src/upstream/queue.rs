//! Who may send next (design.md "Upstream"): per client connection one action in flight and at
//! most [`MAX_QUEUED`] more waiting, answered in order; once that many wait, the connection is
//! *paused* (the worker stops reading it) until its queue drains. Per worker at most
//! `max_in_flight` requests are at the backend; connections wait for a place first come first
//! served.
//!
//! A connection has an entry here only while it has something in flight or waiting, so an idle
//! connection costs nothing. Items are either requests for the backend or replies that must
//! keep their place in the order (an error for a message that is not an action) and need no
//! place at the backend.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Items one connection may have waiting behind its request in flight.
pub const MAX_QUEUED: usize = 16;

/// One thing a connection sent, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item<T> {
    /// A request for the backend.
    Request(T),
    /// A reply that goes to the client in its turn, without the backend.
    Reply(Vec<u8>),
}

/// What the worker does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next<K, T> {
    /// Send this request for connection `K` (it now has its place in flight).
    Send(K, T),
    /// Give connection `K` this reply now.
    Reply(K, Vec<u8>),
}

#[derive(Debug)]
struct PerConn<T> {
    waiting: VecDeque<Item<T>>,
    in_flight: bool,
    /// Listed in the ready FIFO.
    listed: bool,
    paused: bool,
}

/// The queues of one worker.
#[derive(Debug)]
pub struct Queues<K, T> {
    conns: HashMap<K, PerConn<T>>,
    /// Connections whose next item can go, in the order they became ready.
    ready: VecDeque<K>,
    in_flight: usize,
    max_in_flight: usize,
    queued: usize,
    resumed: Vec<K>,
}

impl<K: Copy + Eq + Hash, T> Queues<K, T> {
    /// Empty queues allowing `max_in_flight` requests at once (at least 1).
    pub fn new(max_in_flight: usize) -> Self {
        Queues {
            conns: HashMap::new(),
            ready: VecDeque::new(),
            in_flight: 0,
            max_in_flight: max_in_flight.max(1),
            queued: 0,
            resumed: Vec::new(),
        }
    }

    /// Appends `item` for `conn`. Returns true when `conn` is now paused: the worker must not
    /// read it until it is listed by [`Queues::take_resumed`].
    pub fn push(&mut self, conn: K, item: Item<T>) -> bool {
        let per = self.conns.entry(conn).or_insert_with(|| PerConn {
            waiting: VecDeque::new(),
            in_flight: false,
            listed: false,
            paused: false,
        });
        per.waiting.push_back(item);
        self.queued += 1;
        if !per.in_flight && !per.listed {
            per.listed = true;
            self.ready.push_back(conn);
        }
        if per.waiting.len() >= MAX_QUEUED {
            per.paused = true;
        }
        per.paused
    }

    /// The next thing to do, if any may be done now: a request when a place in flight is free
    /// (first come first served), a reply when it is next in its connection's order.
    pub fn pop(&mut self) -> Option<Next<K, T>> {
        loop {
            let conn = *self.ready.front()?;
            let Some(per) = self.conns.get_mut(&conn) else {
                self.ready.pop_front(); // forgotten
                continue;
            };
            let Some(item) = per.waiting.front() else {
                per.listed = false;
                self.ready.pop_front();
                self.conns.remove(&conn);
                continue;
            };
            let is_request = matches!(item, Item::Request(_));
            if is_request && self.in_flight >= self.max_in_flight {
                return None;
            }
            let item = per.waiting.pop_front()?;
            self.queued -= 1;
            if per.paused && per.waiting.is_empty() {
                per.paused = false;
                self.resumed.push(conn);
            }
            return Some(match item {
                Item::Request(request) => {
                    per.in_flight = true;
                    per.listed = false;
                    self.ready.pop_front();
                    self.in_flight += 1;
                    Next::Send(conn, request)
                }
                Item::Reply(reply) => {
                    if per.waiting.is_empty() {
                        self.ready.pop_front();
                        self.conns.remove(&conn);
                    }
                    Next::Reply(conn, reply)
                }
            });
        }
    }

    /// The request in flight for `conn` is done (answered, failed or timed out; also for a
    /// connection forgotten meanwhile): its place is free, and the connection's next item may
    /// go.
    pub fn finish(&mut self, conn: K) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let Some(per) = self.conns.get_mut(&conn) else {
            return;
        };
        per.in_flight = false;
        if per.waiting.is_empty() {
            self.conns.remove(&conn);
        } else if !per.listed {
            per.listed = true;
            self.ready.push_back(conn);
        }
    }

    /// The client went away: what it had waiting is dropped. A request in flight keeps its
    /// place until [`Queues::finish`].
    pub fn forget(&mut self, conn: K) {
        if let Some(per) = self.conns.remove(&conn) {
            self.queued -= per.waiting.len();
        }
    }

    /// Is `conn` paused (not to be read)?
    pub fn is_paused(&self, conn: K) -> bool {
        self.conns.get(&conn).is_some_and(|p| p.paused)
    }

    /// Does `conn` have anything in flight or waiting?
    pub fn is_busy(&self, conn: K) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Connections no longer paused since the last call: read them again.
    pub fn take_resumed(&mut self) -> Vec<K> {
        std::mem::take(&mut self.resumed)
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Items waiting.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Connections with an entry (for tests and figures).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Q = Queues<u32, u32>;

    fn drain(q: &mut Q) -> Vec<Next<u32, u32>> {
        std::iter::from_fn(|| q.pop()).take(1000).collect()
    }

    #[test]
    fn one_in_flight_per_connection_in_order() {
        let mut q = Q::new(10);
        for i in 0..3 {
            assert!(!q.push(1, Item::Request(i)));
        }
        assert_eq!(drain(&mut q), vec![Next::Send(1, 0)]);
        q.finish(1);
        assert_eq!(drain(&mut q), vec![Next::Send(1, 1)]);
        q.finish(1);
        assert_eq!(drain(&mut q), vec![Next::Send(1, 2)]);
        q.finish(1);
        assert!(drain(&mut q).is_empty());
        assert_eq!((q.connections(), q.in_flight(), q.queued()), (0, 0, 0));
    }

    #[test]
    fn replies_keep_their_place() {
        let mut q = Q::new(10);
        q.push(1, Item::Request(0));
        q.push(1, Item::Reply(b"e".to_vec()));
        q.push(1, Item::Request(1));
        assert_eq!(drain(&mut q), vec![Next::Send(1, 0)]);
        q.finish(1);
        assert_eq!(
            drain(&mut q),
            vec![Next::Reply(1, b"e".to_vec()), Next::Send(1, 1)]
        );
        q.finish(1);
        // A reply with nothing before it goes at once, and leaves no entry.
        q.push(2, Item::Reply(b"x".to_vec()));
        assert_eq!(drain(&mut q), vec![Next::Reply(2, b"x".to_vec())]);
        assert_eq!(q.connections(), 0);
    }

    #[test]
    fn pause_at_the_limit_and_resume_when_drained() {
        let mut q = Q::new(10);
        q.push(7, Item::Request(0));
        assert_eq!(drain(&mut q), vec![Next::Send(7, 0)]);
        for i in 1..MAX_QUEUED as u32 {
            assert!(!q.push(7, Item::Request(i)), "{i}");
        }
        assert!(q.push(7, Item::Request(99)));
        assert!(q.is_paused(7));
        for i in 1..=MAX_QUEUED {
            q.finish(7);
            assert_eq!(drain(&mut q).len(), 1);
            let last = i == MAX_QUEUED;
            assert_eq!(q.is_paused(7), !last, "{i}");
            assert_eq!(q.take_resumed() == vec![7], last, "{i}");
        }
    }

    #[test]
    fn the_worker_limit_is_first_come_first_served() {
        let mut q = Q::new(2);
        for conn in 1..=4 {
            q.push(conn, Item::Request(conn * 10));
            q.push(conn, Item::Request(conn * 10 + 1));
        }
        assert_eq!(drain(&mut q), vec![Next::Send(1, 10), Next::Send(2, 20)]);
        q.finish(2);
        assert_eq!(drain(&mut q), vec![Next::Send(3, 30)]);
        q.finish(1);
        q.finish(3);
        assert_eq!(drain(&mut q), vec![Next::Send(4, 40), Next::Send(2, 21)]);
        assert_eq!(q.in_flight(), 2);
    }

    #[test]
    fn a_client_that_goes_keeps_its_place_until_finished() {
        let mut q = Q::new(1);
        q.push(1, Item::Request(0));
        q.push(1, Item::Request(1));
        q.push(2, Item::Request(5));
        assert_eq!(drain(&mut q), vec![Next::Send(1, 0)]);
        q.forget(1);
        assert_eq!(q.queued(), 1);
        assert!(drain(&mut q).is_empty(), "the place is still taken");
        q.finish(1);
        assert_eq!(drain(&mut q), vec![Next::Send(2, 5)]);
        q.finish(2);
        assert_eq!((q.connections(), q.in_flight(), q.queued()), (0, 0, 0));
    }
}
