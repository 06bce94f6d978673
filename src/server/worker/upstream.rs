//! The upstream client on a worker (`--upstream`, design.md "Upstream"): the driver of the
//! sans-IO [`crate::upstream`] pieces. Binary messages of push clients become requests in the
//! worker's [`Queues`]; those allowed to go are handed to a keep-alive connection of the
//! worker's [`Pool`] (connected without blocking, registered in the worker's own poll, timed by
//! its wheel); answers go back to their client in order.
//!
//! Tokens and wheel entries of upstream connections are worker [`Handle`]s whose key has
//! [`UPSTREAM_BIT`] set: client connections' slab keys stay far below it, and the listener,
//! waker and accept-timer keys (`u32::MAX`) are above any pool slot.
//!
//! An idle push connection holds nothing here. A connection's first action asks the hub for
//! its user's name (for the `Edgepush-User` header; a worker keeps no name per connection),
//! and waits in `awaiting` until it comes; the name is then kept while the connection lives. A
//! connection has a queue entry only while it has actions in flight or waiting.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use log::{debug, warn};
use mio::net::TcpStream;
use mio::Interest;

use super::push::{conn_id, queue_for_batch};
use super::{conn_of, emit, Worker};
use crate::protocol::frame::{write_frame, OpCode};
use crate::push::hub::ToHub;
use crate::push::router::UserRef;
use crate::server::connection::Handle;
use crate::server::transport::Transport;
use crate::tick::Tick;
use crate::upstream::answer::{Answer, Reply};
use crate::upstream::pool::{ConnRef, Pool, Read as PoolRead};
use crate::upstream::queue::{Item, Next, Queues, MAX_QUEUED};
use crate::upstream::request::{write_request, Sender};
use crate::upstream::{action_code, write_action_error, Outcome, UpstreamConfig};

/// Set in the key of every upstream connection's [`Handle`].
pub(super) const UPSTREAM_BIT: u32 = 1 << 31;

/// An action waiting for its turn: the message as the client sent it.
pub(super) struct Action {
    code: u32,
    message: Vec<u8>,
}

/// A request handed to a connection.
pub(super) struct InFlight {
    owner: Handle,
    code: u32,
    started: Instant,
}

/// A worker's upstream state.
pub(super) struct Upstream {
    config: UpstreamConfig,
    /// Keyed by the client's token (`Handle::token`).
    queues: Queues<usize, Action>,
    pool: Pool<TcpStream, InFlight>,
    /// The user names of connections that sent actions, by client token (slab key and
    /// generation, so a reused slot never inherits one).
    names: HashMap<usize, Arc<str>>,
    /// Actions of connections whose name the hub has not given yet, in order (at most
    /// [`MAX_QUEUED`] + 1 each: past that the connection is not read).
    awaiting: HashMap<usize, Vec<Vec<u8>>>,
    /// Connections un-paused, to read again next turn.
    resumed: Vec<Handle>,
    /// The gauges as last added to the shared figures.
    published: (usize, usize),
}

impl Upstream {
    /// The state for a worker whose requests time out after `timeout_ticks` and whose
    /// answers are at most `max_body` bytes.
    pub(super) fn new(config: UpstreamConfig, timeout_ticks: u64, max_body: usize) -> Upstream {
        Upstream {
            queues: Queues::new(config.max_inflight),
            pool: Pool::new(timeout_ticks, max_body),
            config,
            names: HashMap::new(),
            awaiting: HashMap::new(),
            resumed: Vec::new(),
            published: (0, 0),
        }
    }
}

fn handle_of(conn: ConnRef) -> Handle {
    Handle {
        key: UPSTREAM_BIT | conn.id,
        generation: conn.generation,
    }
}

fn conn_ref(handle: Handle) -> ConnRef {
    ConnRef {
        id: handle.key & !UPSTREAM_BIT,
        generation: handle.generation,
    }
}

/// The client handle a queue key names.
fn from_key(key: usize) -> Handle {
    Handle::from_token(mio::Token(key))
}

/// Is this handle an upstream connection's?
pub(super) fn is_upstream(handle: Handle) -> bool {
    handle.key & UPSTREAM_BIT != 0 && handle.key != u32::MAX
}

impl<T: Transport> Worker<T> {
    /// The connection may not be read now (its queue is full).
    pub(super) fn upstream_paused(&self, handle: Handle) -> bool {
        let key = handle.token().0;
        self.upstream.as_deref().is_some_and(|up| {
            up.queues.is_paused(key) || up.awaiting.get(&key).is_some_and(|a| a.len() > MAX_QUEUED)
        })
    }

    /// The client is going: what it had waiting is dropped; an answer in flight will be
    /// discarded.
    pub(super) fn upstream_forget(&mut self, handle: Handle) {
        if let Some(up) = self.upstream.as_deref_mut() {
            let key = handle.token().0;
            up.queues.forget(key);
            up.names.remove(&key);
            up.awaiting.remove(&key);
        }
        self.sync_upstream_gauges();
    }

    /// A binary message from a push client while `--upstream` is set (the caller checked).
    /// The connection's first one asks the hub for its user's name and waits for it.
    pub(super) fn on_action(&mut self, handle: Handle, message: &[u8]) {
        let key = handle.token().0;
        let Some(up) = self.upstream.as_deref_mut() else {
            return;
        };
        if let Some(waiting) = up.awaiting.get_mut(&key) {
            waiting.push(message.to_vec());
            return;
        }
        if !up.names.contains_key(&key) {
            let Worker { conns, router, .. } = self;
            match router.user_of(conns, conn_id(handle)) {
                Some(UserRef::Name(name)) => {
                    if let Some(up) = self.upstream.as_deref_mut() {
                        up.names.insert(key, name);
                    }
                }
                Some(UserRef::Id(user)) => {
                    if let Some(up) = self.upstream.as_deref_mut() {
                        up.awaiting.insert(key, vec![message.to_vec()]);
                    }
                    self.send_to_hub(ToHub::UserName {
                        worker: self.id,
                        conn: conn_id(handle),
                        user,
                    });
                    return;
                }
                None => return, // not a push connection (any more)
            }
        }
        self.queue_action(handle, message);
    }

    /// The hub named `handle`'s user: its waiting actions go on.
    pub(super) fn on_user_name(&mut self, handle: Handle, name: Option<Arc<str>>) {
        let key = handle.token().0;
        let Some(up) = self.upstream.as_deref_mut() else {
            return;
        };
        let Some(waiting) = up.awaiting.remove(&key) else {
            return; // the connection is gone
        };
        up.names
            .insert(key, name.unwrap_or_else(|| Arc::from("anonymous")));
        let was_paused = waiting.len() > MAX_QUEUED;
        for message in waiting {
            self.queue_action(handle, &message);
        }
        if was_paused && !self.upstream_paused(handle) {
            if let Some(up) = self.upstream.as_deref_mut() {
                up.resumed.push(handle);
            }
        }
    }

    /// Queues an action of a connection whose user's name is known.
    fn queue_action(&mut self, handle: Handle, message: &[u8]) {
        let Some(up) = self.upstream.as_deref_mut() else {
            return;
        };
        let item = match action_code(message) {
            Some(code) => Item::Request(Action {
                code,
                message: message.to_vec(),
            }),
            None => {
                let mut json = Vec::new();
                write_action_error(
                    &mut json,
                    400,
                    None,
                    "a binary message starts with a 4-byte action code",
                );
                Item::Reply(json)
            }
        };
        up.queues.push(handle.token().0, item);
        self.pump_upstream(Some(handle));
    }

    /// Sends what may go now, delivers replies whose turn came, and lists connections that
    /// may be read again. `turn`: the connection whose read is being handled, if any.
    fn pump_upstream(&mut self, turn: Option<Handle>) {
        // Bounded: each step takes one item out of the queues.
        while let Some(next) = self.upstream.as_deref_mut().and_then(|up| up.queues.pop()) {
            match next {
                Next::Send(owner, action) => self.start_request(from_key(owner), action),
                Next::Reply(owner, json) => {
                    self.send_client(from_key(owner), turn, OpCode::Text, &json)
                }
            }
        }
        if let Some(up) = self.upstream.as_deref_mut() {
            let resumed = up.queues.take_resumed();
            up.resumed.extend(resumed.into_iter().map(from_key));
        }
        self.sync_upstream_gauges();
    }

    fn sync_upstream_gauges(&mut self) {
        let Some(up) = self.upstream.as_deref_mut() else {
            return;
        };
        let now = (up.queues.in_flight(), up.queues.queued());
        let (was_flight, was_queued) = std::mem::replace(&mut up.published, now);
        let adjust = |gauge: &std::sync::atomic::AtomicUsize, was: usize, now: usize| {
            if now > was {
                gauge.fetch_add(now - was, Ordering::Relaxed);
            } else if was > now {
                gauge.fetch_sub(was - now, Ordering::Relaxed);
            }
        };
        adjust(&self.stats.upstream_in_flight, was_flight, now.0);
        adjust(&self.stats.upstream_queued, was_queued, now.1);
    }

    /// Connections no longer paused: their unread input is handled, then the socket read.
    pub(super) fn resume_paused(&mut self) {
        let resumed = match self.upstream.as_deref_mut() {
            Some(up) if !up.resumed.is_empty() => std::mem::take(&mut up.resumed),
            _ => return,
        };
        for handle in resumed {
            let Some(conn) = self.get(handle) else {
                continue;
            };
            if let Some(stash) = conn.stash.take() {
                let mut buf = std::mem::take(&mut self.read_buf);
                let len = stash.len().min(buf.len());
                buf[..len].copy_from_slice(&stash[..len]);
                let consumed = self.handle_input(handle, &mut buf[..len]);
                if let Some(conn) = self.get(handle) {
                    let rest = &buf[consumed.min(len)..len];
                    conn.stash = (!rest.is_empty()).then(|| Box::new(rest.to_vec()));
                }
                self.read_buf = buf;
            }
            if self.upstream_paused(handle) {
                self.flush(handle);
            } else {
                self.on_readable(handle, true);
            }
        }
    }

    /// Are there connections to read again?
    pub(super) fn has_resumed(&self) -> bool {
        self.upstream
            .as_deref()
            .is_some_and(|up| !up.resumed.is_empty())
    }

    /// The `Edgepush-Connection` id of `handle`: unique while the process lives (worker,
    /// generation, and how many times this worker's generations wrapped before it).
    fn connection_id(&self, handle: Handle) -> u64 {
        let epoch = if handle.generation < self.next_generation {
            self.generation_epoch
        } else {
            self.generation_epoch.wrapping_sub(1)
        };
        (u64::from(epoch) << 40) | ((self.id as u64 & 0xff) << 32) | u64::from(handle.generation)
    }

    fn start_request(&mut self, owner: Handle, action: Action) {
        let connection = self.connection_id(owner);
        let Some(up) = self.upstream.as_deref_mut() else {
            return;
        };
        let user = up
            .names
            .get(&owner.token().0)
            .cloned()
            .unwrap_or_else(|| Arc::from("anonymous"));
        let mut out = Vec::new();
        let sender = Sender {
            user: &user,
            connection,
            node: &up.config.node,
        };
        write_request(
            &mut out,
            &up.config.target,
            sender,
            action.code,
            &action.message,
        );
        let request = InFlight {
            owner,
            code: action.code,
            started: Instant::now(),
        };
        self.hand_over(request, out);
    }

    /// Gives `request` to an idle connection, or to a new one.
    fn hand_over(&mut self, request: InFlight, out: Vec<u8>) {
        let now = self.now;
        let Some(up) = self.upstream.as_deref_mut() else {
            return;
        };
        let (request, out) = match up.pool.send_on_idle(request, out, now) {
            Ok(conn) => {
                self.arm_upstream(conn);
                self.write_upstream(conn);
                return;
            }
            Err(back) => back,
        };
        let addr = up.config.addr;
        let mut socket = match TcpStream::connect(addr) {
            Ok(socket) => socket,
            Err(e) => {
                debug!("upstream {addr}: connect: {e}");
                return self.finish_request(request, Err(Outcome::Refused));
            }
        };
        let conn = up.pool.next_ref();
        if let Err(e) = self.poll.registry().register(
            &mut socket,
            handle_of(conn).token(),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!(
                "worker {}: registering an upstream connection: {e}",
                self.id
            );
            return self.finish_request(request, Err(Outcome::Refused));
        }
        let _ = socket.set_nodelay(true);
        up.pool.connecting(socket, request, out, now);
        self.arm_upstream(conn);
    }

    fn arm_upstream(&mut self, conn: ConnRef) {
        if let Some(deadline) = self
            .upstream
            .as_deref_mut()
            .and_then(|up| up.pool.deadline(conn))
        {
            self.wheel.insert(deadline.0, handle_of(conn));
        }
    }

    /// Readiness of an upstream connection.
    pub(super) fn on_upstream_event(&mut self, handle: Handle, readable: bool, writable: bool) {
        let conn = conn_ref(handle);
        let Some(up) = self.upstream.as_deref_mut() else {
            return;
        };
        if up.pool.is_connecting(conn) {
            let Some(socket) = up.pool.socket(conn) else {
                return;
            };
            match socket.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    debug!("upstream: connect failed: {e}");
                    return self.upstream_failed(conn);
                }
            }
            match socket.peer_addr() {
                Ok(_) => up.pool.connected(conn),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    if readable {
                        // A hang-up while connecting: refused.
                        return self.upstream_failed(conn);
                    }
                    return; // not yet
                }
                Err(_) => return self.upstream_failed(conn),
            }
        }
        if writable || readable {
            self.write_upstream(conn);
        }
        if readable {
            self.read_upstream(conn);
        }
    }

    /// Writes what is left of the connection's request.
    fn write_upstream(&mut self, conn: ConnRef) {
        let Some(up) = self.upstream.as_deref_mut() else {
            return;
        };
        // Bounded by the request's length: each pass writes at least one byte or stops.
        loop {
            let Some((socket, rest)) = up.pool.unwritten(conn) else {
                return;
            };
            if rest.is_empty() {
                return;
            }
            match socket.write(rest) {
                Ok(0) => return self.upstream_failed(conn),
                Ok(n) => up.pool.wrote(conn, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    debug!("upstream: write: {e}");
                    return self.upstream_failed(conn);
                }
            }
        }
    }

    /// Reads the connection until `WouldBlock`, its answer, or its end.
    fn read_upstream(&mut self, conn: ConnRef) {
        let mut buf = std::mem::take(&mut self.read_buf);
        let mut outcome = None;
        if let Some(up) = self.upstream.as_deref_mut() {
            // Bounded: every pass reads bytes or ends; an answer is at most
            // --max-message-size plus its head.
            while let Some(socket) = up.pool.socket(conn) {
                let read = match socket.read(&mut buf) {
                    Ok(0) => up.pool.read(conn, &[], true),
                    Ok(n) => up.pool.read(conn, &buf[..n], false),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        debug!("upstream: read: {e}");
                        outcome = Some(None);
                        break;
                    }
                };
                match read {
                    PoolRead::Partial => {}
                    other => {
                        outcome = Some(Some(other));
                        break;
                    }
                }
            }
        }
        self.read_buf = buf;
        match outcome {
            None => {}
            Some(None) => self.upstream_failed(conn),
            Some(Some(PoolRead::Done {
                request,
                answer,
                kept,
            })) => {
                if !kept {
                    self.close_upstream(conn);
                }
                self.finish_request(request, answer);
            }
            Some(Some(_)) => {
                self.close_upstream(conn);
            }
        }
    }

    /// Takes the connection out of the pool and the poll; its request, if any, is returned.
    fn close_upstream(
        &mut self,
        conn: ConnRef,
    ) -> Option<crate::upstream::pool::Closed<TcpStream, InFlight>> {
        let up = self.upstream.as_deref_mut()?;
        let mut closed = up.pool.close(conn)?;
        let _ = self.poll.registry().deregister(&mut closed.socket);
        Some(closed)
    }

    /// The connection broke: its request goes on another connection if none of it was
    /// written, else it fails (refused while connecting, reset after).
    fn upstream_failed(&mut self, conn: ConnRef) {
        let Some(closed) = self.close_upstream(conn) else {
            return;
        };
        let Some(request) = closed.request else {
            return;
        };
        match closed.retry {
            Some(out) => self.hand_over(request, out),
            None => {
                let outcome = if closed.connecting {
                    Outcome::Refused
                } else {
                    Outcome::Reset
                };
                self.finish_request(request, Err(outcome));
            }
        }
    }

    /// The wheel fired for an upstream connection: 504 if its request's deadline passed.
    pub(super) fn on_upstream_timer(&mut self, handle: Handle, tick: u64) {
        let conn = conn_ref(handle);
        let expired = self
            .upstream
            .as_deref_mut()
            .is_some_and(|up| up.pool.expired(conn, Tick(tick)));
        if !expired {
            return; // stale: answered, or re-armed for a later request
        }
        if let Some(request) = self.close_upstream(conn).and_then(|c| c.request) {
            self.finish_request(request, Err(Outcome::Timeout));
        }
    }

    /// A request ended: the client gets its answer (if it is still there), the connection's
    /// next action may go.
    fn finish_request(&mut self, request: InFlight, result: Result<Answer, Outcome>) {
        let owner = request.owner;
        if let Some(up) = self.upstream.as_deref_mut() {
            up.queues.finish(owner.token().0);
        }
        self.stats
            .upstream_latency
            .observe(request.started.elapsed());
        let status = result.as_ref().map(|a| a.status).ok();
        let (reply, close, outcome) = match result {
            Ok(answer) => answer.reply(),
            Err(outcome) => (Reply::Error, None, outcome),
        };
        self.stats.upstream_outcomes.add(outcome);
        match reply {
            Reply::Frame(body) => self.send_client(owner, None, OpCode::Binary, &body),
            Reply::Nothing => {}
            Reply::Error => {
                let mut json = Vec::new();
                let code = outcome.error_code().unwrap_or(502);
                let reason = match status {
                    Some(status) if outcome == Outcome::ErrorStatus => {
                        format!("the upstream answered {status}")
                    }
                    _ => outcome.reason().to_owned(),
                };
                write_action_error(&mut json, code, Some(request.code), &reason);
                self.send_client(owner, None, OpCode::Text, &json);
            }
        }
        if let Some(close) = close {
            if self.get(owner).is_some_and(|c| c.session.is_open()) {
                self.close_with(owner, close.code, &close.reason);
            }
        }
        self.pump_upstream(None);
    }

    /// Queues one frame for a client that is still open. Outside its own turn the frame goes
    /// to its queue and the connection is flushed with the batch.
    fn send_client(&mut self, handle: Handle, turn: Option<Handle>, opcode: OpCode, bytes: &[u8]) {
        let Worker {
            conns,
            cork,
            dirty,
            stats,
            ..
        } = self;
        let Some(conn) = conn_of(conns, handle).filter(|c| c.session.may_send_data()) else {
            return;
        };
        if turn != Some(handle) {
            queue_for_batch(conn, handle, dirty);
        }
        emit(&mut conn.outbound, cork, |out| {
            write_frame(out, opcode, bytes)
        });
        stats.messages_out.fetch_add(1, Ordering::Relaxed);
    }
}
