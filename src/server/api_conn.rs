//! The push API's connections on the hub thread: accepting them, reading, parsing with
//! [`api::parse`], pipelining (answers go out in request order, whenever each is ready),
//! keep-alive, `100 Continue`, back-pressure and writing. What a request *does* is not decided
//! here: each parsed command goes to the caller's handler, which answers at once or later
//! through [`ApiConns::answer`]. The hub loop ([`super::hub_loop`]) owns one [`ApiConns`].
//!
//! Closing after an answer is a lingering close, as nginx does it: once the answer is
//! written the write side is shut (the client sees the end of the answer), then whatever
//! the client still sends — typically the rest of a body refused with 413 before it was read
//! — is read and discarded, for at most [`LINGER_TIME`] and [`ApiLimits::max_buffered`]
//! bytes (at least [`LINGER_MIN_BYTES`]), until the client closes. Closing with unread input
//! would make the kernel send a reset, and a client still writing its body (Python's
//! `urllib`, `requests`) would report "broken pipe" instead of reading the answer.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::http::response::write_continue;
use crate::push::api::{self, ApiCommand, ApiLimits, Parsed};
use crate::push::hub::RequestId;

/// An API connection: its slab key in the low 32 bits, its generation in the high 32, so that
/// a late answer cannot reach a reused slot. Also its mio token.
pub(crate) type ApiConnId = u64;

/// Requests one API connection may have in flight (pipelined) before we stop reading it.
const MAX_IN_FLIGHT: usize = 1024;
/// An API connection's unparsed input is capped (head + body limits) by the parser; this is
/// the read size.
const READ_CHUNK: usize = 16 * 1024;
/// The longest a closing connection reads and discards its client's input.
pub(crate) const LINGER_TIME: Duration = Duration::from_secs(2);
/// The least a closing connection reads and discards (more with a larger body limit).
pub(crate) const LINGER_MIN_BYTES: usize = 64 << 20;

/// A parsed request handed to the handler: whom to answer, under which number, and whether
/// the answer keeps the connection (pass it to [`api::json_response`] and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) conn: ApiConnId,
    /// Unique on this thread; the hub knows the request by it.
    pub(crate) request: RequestId,
    pub(crate) keep_alive: bool,
}

/// The handler's verdict on a command: `Some(response)` answers now; `None` promises an
/// [`ApiConns::answer`] for `pending.request` later.
pub(crate) type Handler<'a> = dyn FnMut(Pending, ApiCommand) -> Option<Vec<u8>> + 'a;

struct ApiConnection {
    socket: TcpStream,
    generation: u32,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    /// Answers owed, in request order; `None` until the handler or the hub answers.
    owed: VecDeque<Owed>,
    /// `100 Continue` was sent for the request being received.
    continued: bool,
    /// Reading stopped at the in-flight limit; resumed when answers go out.
    paused: bool,
    close_after_write: bool,
    writable_interest: bool,
    /// Answered and write side shut: the input is discarded, this many bytes more at most.
    lingering: Option<usize>,
}

struct Owed {
    request: RequestId,
    keep_alive: bool,
    response: Option<Vec<u8>>,
}

/// Every open API connection, and the request numbering.
pub(crate) struct ApiConns {
    conns: Slab<ApiConnection>,
    next_generation: u32,
    next_request: RequestId,
    /// Shared so the per-request borrow is a refcount, not a copy.
    api_key: Option<Arc<str>>,
    limits: ApiLimits,
    /// Lingering connections by deadline; deadlines only grow, so the front is due first.
    /// An entry whose connection is gone is skipped (the generation in the id tells).
    lingering: VecDeque<(Instant, ApiConnId)>,
}

impl ApiConns {
    /// No connections yet; requests are checked against `api_key` and `limits`.
    pub(crate) fn new(api_key: Option<&str>, limits: ApiLimits) -> ApiConns {
        ApiConns {
            conns: Slab::new(),
            next_generation: 0,
            next_request: 1,
            api_key: api_key.map(Arc::from),
            limits,
            lingering: VecDeque::new(),
        }
    }

    /// Accepts until `WouldBlock`, registering each connection for reading under its
    /// [`ApiConnId`] as token.
    pub(crate) fn accept_all(&mut self, listener: &TcpListener, registry: &Registry) {
        loop {
            match listener.accept() {
                Ok((mut socket, addr)) => {
                    debug!("hub: API client {addr} connected");
                    let _ = socket.set_nodelay(true);
                    let generation = self.next_generation;
                    self.next_generation = self.next_generation.wrapping_add(1);
                    let entry = self.conns.vacant_entry();
                    let id = entry.key() as u64 | (u64::from(generation) << 32);
                    if let Err(e) =
                        registry.register(&mut socket, Token(id as usize), Interest::READABLE)
                    {
                        warn!("hub: register: {e}");
                        continue;
                    }
                    entry.insert(ApiConnection {
                        socket,
                        generation,
                        input: Vec::new(),
                        output: Vec::new(),
                        written: 0,
                        owed: VecDeque::new(),
                        continued: false,
                        paused: false,
                        close_after_write: false,
                        writable_interest: false,
                        lingering: None,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("hub: accept: {e}");
                    return;
                }
            }
        }
    }

    /// Fills in the JSON answer for `request` on `conn` (ignored if the client left) and moves
    /// what is now ready, in order, to the output. Call [`ApiConns::flush`] afterwards.
    pub(crate) fn answer(&mut self, conn: ApiConnId, request: RequestId, status: u16, body: &str) {
        let Some(c) = self.get(conn) else {
            return; // the API client left
        };
        if let Some(owed) = c.owed.iter_mut().find(|o| o.request == request) {
            owed.response = Some(api::json_response(status, body, owed.keep_alive));
        }
        release_in_order(c);
    }

    /// After answers arrived for `conn`: writes them, parses requests that waited behind
    /// them, and resumes reading if it had stopped at the in-flight limit.
    pub(crate) fn flush(&mut self, conn: ApiConnId, registry: &Registry, handler: &mut Handler) {
        self.write(conn, registry);
        self.process(conn, registry, handler);
        if self
            .get(conn)
            .is_some_and(|c| std::mem::take(&mut c.paused))
        {
            self.on_readable(conn, registry, handler);
        }
    }

    /// Reads until `WouldBlock` (or the input cap), then parses and runs what arrived.
    pub(crate) fn on_readable(
        &mut self,
        id: ApiConnId,
        registry: &Registry,
        handler: &mut Handler,
    ) {
        if self.get(id).is_some_and(|c| c.lingering.is_some()) {
            self.discard(id);
            return;
        }
        // One request's worth: the parser refuses larger heads and bodies, so more than this
        // unparsed means requests are waiting behind `MAX_IN_FLIGHT` answers.
        let cap = self.limits.max_buffered() + READ_CHUNK;
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let Some(conn) = self.get(id) else {
                return;
            };
            if conn.input.len() >= cap {
                self.process(id, registry, handler);
                let Some(conn) = self.get(id) else {
                    return;
                };
                if conn.input.len() >= cap {
                    // Back-pressure: leave the rest in the socket until answers go out
                    // (`flush` resumes reading).
                    conn.paused = true;
                    return;
                }
                continue;
            }
            match conn.socket.read(&mut chunk) {
                Ok(0) => {
                    self.close(id);
                    return;
                }
                Ok(n) => conn.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(id);
                    return;
                }
            }
        }
        self.process(id, registry, handler);
    }

    /// Parses and runs buffered requests until one is parked or the input runs out, then
    /// writes.
    fn process(&mut self, id: ApiConnId, registry: &Registry, handler: &mut Handler) {
        loop {
            let api_key = self.api_key.clone();
            let limits = self.limits;
            let request = self.next_request;
            let Some(conn) = self.get(id) else {
                return;
            };
            let closing = conn.owed.back().is_some_and(|o| !o.keep_alive);
            if conn.owed.len() >= MAX_IN_FLIGHT || conn.close_after_write || closing {
                break;
            }
            match api::parse(&conn.input, api_key.as_deref(), &limits) {
                Parsed::Partial => {
                    // curl and others wait (a second) for this before sending a body.
                    if !conn.continued
                        && conn.owed.is_empty()
                        && api::expects_continue(&conn.input, &limits)
                    {
                        write_continue(&mut conn.output);
                        conn.continued = true;
                    }
                    break;
                }
                Parsed::Reject {
                    consumed,
                    close,
                    response,
                } => {
                    conn.input.drain(..consumed.min(conn.input.len()));
                    conn.continued = false;
                    conn.owed.push_back(Owed {
                        request: 0,
                        keep_alive: !close,
                        response: Some(response),
                    });
                    release_in_order(conn);
                }
                Parsed::Request {
                    consumed,
                    keep_alive,
                    command,
                } => {
                    conn.input.drain(..consumed.min(conn.input.len()));
                    conn.continued = false;
                    self.next_request += 1;
                    let pending = Pending {
                        conn: id,
                        request,
                        keep_alive,
                    };
                    let response = handler(pending, command);
                    if let Some(conn) = self.get(id) {
                        conn.owed.push_back(Owed {
                            request,
                            keep_alive,
                            response,
                        });
                        release_in_order(conn);
                    }
                }
            }
        }
        self.write(id, registry);
    }

    /// Writes the output until `WouldBlock`; closes once written if the last answer said so;
    /// keeps the writable interest in step with pending output.
    pub(crate) fn write(&mut self, id: ApiConnId, registry: &Registry) {
        let Some(conn) = self.get(id) else {
            return;
        };
        while conn.written < conn.output.len() {
            match conn.socket.write(&conn.output[conn.written..]) {
                Ok(0) => break,
                Ok(n) => conn.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(id);
                    return;
                }
            }
        }
        if conn.written == conn.output.len() {
            conn.output.clear();
            conn.written = 0;
            if conn.close_after_write && conn.lingering.is_none() {
                self.linger(id);
                return;
            }
        }
        let want = !conn.output.is_empty();
        if want != conn.writable_interest {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if registry
                .reregister(&mut conn.socket, Token(id as usize), interest)
                .is_ok()
            {
                conn.writable_interest = want;
            }
        }
    }

    /// The answer is out: shuts the write side and starts discarding input (see the module
    /// doc). Closes at once if the socket refuses the shutdown.
    fn linger(&mut self, id: ApiConnId) {
        let budget = self.limits.max_buffered().max(LINGER_MIN_BYTES);
        let Some(conn) = self.get(id) else {
            return;
        };
        if conn.socket.shutdown(Shutdown::Write).is_err() {
            self.close(id);
            return;
        }
        conn.lingering = Some(budget);
        conn.input = Vec::new();
        conn.owed.clear();
        self.lingering.push_back((Instant::now() + LINGER_TIME, id));
        // Whatever arrived already (or the client's end of input) is read now.
        self.discard(id);
    }

    /// Reads and throws away a lingering connection's input until `WouldBlock`; closes it at
    /// the client's end of input, on an error, or once its byte budget is spent.
    fn discard(&mut self, id: ApiConnId) {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let Some(conn) = self.get(id) else {
                return;
            };
            let left = conn.lingering.unwrap_or(0);
            match conn.socket.read(&mut chunk) {
                Ok(n) if n > 0 && n < left => conn.lingering = Some(left - n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // End of input, an error, or the budget spent.
                _ => {
                    self.close(id);
                    return;
                }
            }
        }
    }

    /// Closes the lingering connections whose time is up at `now`; returns when the next
    /// one is due, for the caller's poll timeout.
    pub(crate) fn expire_lingering(&mut self, now: Instant) -> Option<Instant> {
        while let Some(&(deadline, id)) = self.lingering.front() {
            if deadline > now {
                return Some(deadline);
            }
            self.lingering.pop_front();
            if self.get(id).is_some_and(|c| c.lingering.is_some()) {
                self.close(id);
            }
        }
        None
    }

    /// Drops the connection (closing its socket), if it is still the one `id` names.
    pub(crate) fn close(&mut self, id: ApiConnId) {
        if self.get(id).is_some() {
            self.conns.remove((id & 0xffff_ffff) as usize);
        }
    }

    fn get(&mut self, id: ApiConnId) -> Option<&mut ApiConnection> {
        let key = (id & 0xffff_ffff) as usize;
        let generation = (id >> 32) as u32;
        self.conns
            .get_mut(key)
            .filter(|c| c.generation == generation)
    }
}

/// Moves the answers at the front of the queue that are ready into the output.
fn release_in_order(conn: &mut ApiConnection) {
    while conn.owed.front().is_some_and(|o| o.response.is_some()) {
        if let Some(owed) = conn.owed.pop_front() {
            conn.output
                .extend_from_slice(&owed.response.unwrap_or_default());
            if !owed.keep_alive {
                conn.close_after_write = true;
                conn.owed.clear();
            }
        }
    }
}
