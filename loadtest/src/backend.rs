//! `backend`: a trivial upstream for `edgepush --upstream` (README "Actions and the upstream"),
//! so the `actions` scenario measures edgepush and not a backend. HTTP/1.1 keep-alive (and
//! pipelining); every request is answered `200` with its own body (the action echoed), in
//! order. Request heads are read with edgepush's shared HTTP module; bodies by
//! `Content-Length` only (a chunked request gets `501` and the connection is closed, as does a
//! malformed one with `400`).
//!
//! One mio `Poll` per thread (`--threads`, default 1), each with its own `SO_REUSEPORT`
//! listener on the same address; no thread per connection, so it stays cheap next to the
//! server it feeds (its CPU per request is printed at the end). It stops by itself after
//! `--duration`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgepush::http::body::Framing;
use edgepush::http::request::parse_request;
use edgepush::http::{Status, EMPTY_HEADER};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

/// The largest request head read (bytes).
const MAX_HEAD: usize = 16 << 10;
/// Header lines accepted per request.
const MAX_HEADERS: usize = 32;
/// The largest request body answered (bytes); larger: `413`, then close.
pub const MAX_BODY: u64 = 64 << 20;
/// Unwritten answers beyond which a connection is not read (bytes).
const MAX_OUTPUT: usize = 4 << 20;
/// The listener's token in each thread's poll.
const LISTENER: Token = Token(usize::MAX);
/// Bytes read from a socket at once.
const READ_CHUNK: usize = 64 << 10;

/// What the built-in backend does (`edgepush-load backend`).
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen (port 0: any free port; the address is printed).
    pub listen: SocketAddr,
    /// Event-loop threads, each with its own `SO_REUSEPORT` listener.
    pub threads: usize,
    /// How long to serve before stopping by itself.
    pub duration: Duration,
}

/// What [`answer_all`] did with a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Answered {
    /// Bytes of complete requests consumed from the front of the buffer.
    pub consumed: usize,
    /// Requests answered (appended to the output).
    pub requests: u64,
    /// Close the connection once the output is written (the client asked for it, or the
    /// request was refused and the rest of the stream cannot be trusted).
    pub close: bool,
}

/// Answers every complete request at the start of `input`, appending the answers to `out`:
/// `200` with the request's body (by `Content-Length`; none: an empty body) and
/// `Content-Length`. Stops at the first incomplete request (read more), after a request with
/// `Connection: close` (HTTP/1.0 without keep-alive too), or at a request it refuses: a
/// malformed head `400`, a chunked body `501`, a body over [`MAX_BODY`] `413`, each with
/// `close`.
pub fn answer_all(input: &[u8], out: &mut Vec<u8>) -> Answered {
    let mut done = Answered::default();
    loop {
        let rest = &input[done.consumed..];
        if rest.is_empty() {
            return done;
        }
        let mut headers = [EMPTY_HEADER; MAX_HEADERS];
        let head = match parse_request(rest, &mut headers, MAX_HEAD) {
            Ok(Status::Complete(head)) => head,
            Ok(Status::Partial) => return done,
            Err(_) => return refuse(done, out, 400),
        };
        let length = match head.framing() {
            Ok(Framing::Length(n)) if n > MAX_BODY => return refuse(done, out, 413),
            Ok(Framing::Length(n)) => n as usize,
            Ok(Framing::Empty) => 0,
            Ok(Framing::Chunked | Framing::UntilClose) => return refuse(done, out, 501),
            Err(_) => return refuse(done, out, 400),
        };
        let Some(body) = rest.get(head.len..head.len + length) else {
            return done;
        };
        let keep_alive = head.keep_alive();
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: ");
        out.extend_from_slice(length.to_string().as_bytes());
        if !keep_alive {
            out.extend_from_slice(b"\r\nConnection: close");
        }
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
        done.consumed += head.len + length;
        done.requests += 1;
        if !keep_alive {
            done.close = true;
            return done;
        }
    }
}

/// Appends a bodiless `status` answer that closes the connection.
fn refuse(mut done: Answered, out: &mut Vec<u8>, status: u16) -> Answered {
    let reason = match status {
        400 => "Bad Request",
        413 => "Content Too Large",
        _ => "Not Implemented",
    };
    out.extend_from_slice(
        format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    done.close = true;
    done
}

/// A listening backend: its threads serve until the deadline.
pub struct Backend {
    addr: SocketAddr,
    threads: Vec<std::thread::JoinHandle<()>>,
    totals: Arc<Totals>,
}

/// Counters shared by the threads.
#[derive(Default)]
struct Totals {
    requests: AtomicU64,
    connections: AtomicU64,
}

impl Backend {
    /// Binds `opts.listen` (one `SO_REUSEPORT` listener per thread) and starts serving until
    /// `opts.duration` has passed. Errors: the address cannot be bound.
    pub fn start(opts: &Options) -> io::Result<Backend> {
        let first = listener(opts.listen)?;
        let addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..opts.threads.max(1) {
            listeners.push(listener(addr)?);
        }
        let deadline = Instant::now() + opts.duration;
        let totals = Arc::new(Totals::default());
        let threads = listeners
            .into_iter()
            .map(|l| {
                let totals = totals.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve(l, deadline, &totals) {
                        eprintln!("edgepush-load backend: {e}");
                    }
                })
            })
            .collect();
        Ok(Backend {
            addr,
            threads,
            totals,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for every thread to stop (at the deadline); returns requests answered and
    /// connections accepted.
    pub fn wait(self) -> (u64, u64) {
        for t in self.threads {
            let _ = t.join();
        }
        (
            self.totals.requests.load(Ordering::Relaxed),
            self.totals.connections.load(Ordering::Relaxed),
        )
    }
}

/// A non-blocking `SO_REUSEPORT` listener on `addr`.
fn listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// One accepted connection.
struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet answered (an incomplete request).
    input: Vec<u8>,
    /// Answers not yet written, from `written` on.
    output: Vec<u8>,
    written: usize,
    /// Close once `output` is written.
    closing: bool,
    /// Registered for writable too.
    wants_write: bool,
}

/// One thread's loop: accept, read, answer, write, until `deadline`.
fn serve(mut listener: TcpListener, deadline: Instant, totals: &Totals) -> io::Result<()> {
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        let wait = (deadline - now).min(Duration::from_millis(100));
        if let Err(e) = poll.poll(&mut events, Some(wait)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept_all(&listener, &poll, &mut conns, &mut free, totals);
                continue;
            }
            let slot = ev.token().0;
            let Some(conn) = conns.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            // An I/O error ends the connection like an end of stream.
            let keep = drive(conn, &mut chunk, totals).unwrap_or(false);
            let keep = keep && update_interest(conn, &poll, slot).is_ok();
            if !keep {
                if let Some(mut c) = conns[slot].take() {
                    let _ = poll.registry().deregister(&mut c.stream);
                }
                free.push(slot);
            }
        }
    }
}

/// Accepts every pending connection.
fn accept_all(
    listener: &TcpListener,
    poll: &Poll,
    conns: &mut Vec<Option<Conn>>,
    free: &mut Vec<usize>,
    totals: &Totals,
) {
    loop {
        let mut stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("edgepush-load backend: accept: {e}");
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let slot = free.pop().unwrap_or(conns.len());
        if poll
            .registry()
            .register(&mut stream, Token(slot), Interest::READABLE)
            .is_err()
        {
            free.push(slot);
            continue;
        }
        let conn = Conn {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            closing: false,
            wants_write: false,
        };
        if slot == conns.len() {
            conns.push(Some(conn));
        } else {
            conns[slot] = Some(conn);
        }
        totals.connections.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads what there is, answers every complete request, writes what it can. `Ok(false)`: the
/// connection is over (the peer closed, or we answered and close).
///
/// mio is edge-triggered: a read shorter than the buffer drained the socket (data arriving
/// later raises a new edge), so only a full read is followed by another.
fn drive(conn: &mut Conn, chunk: &mut [u8], totals: &Totals) -> io::Result<bool> {
    let mut eof = false;
    // Answers pile up only as fast as the peer reads them: past MAX_OUTPUT, read no more
    // until they are written (the writable edge brings us back here).
    while !conn.closing && conn.output.len() < MAX_OUTPUT {
        match conn.stream.read(chunk) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => {
                conn.input.extend_from_slice(&chunk[..n]);
                let done = answer_all(&conn.input, &mut conn.output);
                conn.input.drain(..done.consumed);
                totals.requests.fetch_add(done.requests, Ordering::Relaxed);
                conn.closing |= done.close;
                if n < chunk.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    while conn.written < conn.output.len() {
        match conn.stream.write(&conn.output[conn.written..]) {
            Ok(0) => return Ok(false),
            Ok(n) => conn.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if conn.written == conn.output.len() {
        conn.output.clear();
        conn.written = 0;
        if conn.closing || eof {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Asks for writable events while answers wait to be written, and only then.
fn update_interest(conn: &mut Conn, poll: &Poll, slot: usize) -> io::Result<()> {
    let wants = !conn.output.is_empty();
    if wants != conn.wants_write {
        let interest = if wants {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        poll.registry()
            .reregister(&mut conn.stream, Token(slot), interest)?;
        conn.wants_write = wants;
    }
    Ok(())
}

/// `edgepush-load backend`: serves until `--duration`, printing `listening on ADDR` first and
/// a summary (requests, CPU per request) at the end (`--json`: one JSON line on stdout).
/// Returns the exit code.
pub fn run(opts: &Options, json: bool) -> i32 {
    let backend = match Backend::start(opts) {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "edgepush-load: error: backend: cannot listen on {}: {e}",
                opts.listen
            );
            return 1;
        }
    };
    let addr = backend.local_addr();
    {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "listening on {addr}");
        let _ = out.flush();
    }
    let pid = std::process::id();
    let cpu_start = crate::sys::cpu_seconds(pid);
    let started = Instant::now();
    let (requests, connections) = backend.wait();
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = match (cpu_start, crate::sys::cpu_seconds(pid)) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    let per_request = if requests > 0 {
        cpu * 1e6 / requests as f64
    } else {
        0.0
    };
    eprintln!(
        "backend {addr}: {requests} requests on {connections} connections in {elapsed:.1} s; \
         CPU {cpu:.2} s ({per_request:.2} µs per request)"
    );
    if json {
        let line = serde_json::json!({
            "scenario": "backend",
            "listen": addr.to_string(),
            "threads": opts.threads.max(1),
            "requests": requests,
            "connections": connections,
            "duration_s": (elapsed * 1000.0).round() / 1000.0,
            "cpu_s": (cpu * 1000.0).round() / 1000.0,
            "cpu_us_per_request": (per_request * 1000.0).round() / 1000.0,
        });
        println!("{line}");
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(body: &[u8], extra: &str) -> Vec<u8> {
        let mut r = format!(
            "POST /act HTTP/1.1\r\nHost: x\r\nEdgepush-Action: 110\r\n{extra}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn answers_each_request_with_its_body_in_order() {
        let mut input = post(b"\0\0\0\x6eone", "");
        input.extend(post(b"\0\0\0\x6ftwo!", ""));
        let mut out = Vec::new();
        let done = answer_all(&input, &mut out);
        assert_eq!(done.consumed, input.len());
        assert_eq!(done.requests, 2);
        assert!(!done.close);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n\0\0\0\x6eone\
HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n\0\0\0\x6ftwo!"
                .as_slice()
        );
    }

    #[test]
    fn waits_for_a_whole_request() {
        let input = post(b"0123456789", "");
        for cut in [1, 20, input.len() - 1] {
            let mut out = Vec::new();
            let done = answer_all(&input[..cut], &mut out);
            assert_eq!(done, Answered::default(), "cut at {cut}");
            assert!(out.is_empty());
        }
        // A whole request and the start of the next: the first is answered, the rest kept.
        let mut two = input.clone();
        two.extend_from_slice(&input[..30]);
        let mut out = Vec::new();
        let done = answer_all(&two, &mut out);
        assert_eq!((done.consumed, done.requests), (input.len(), 1));
    }

    #[test]
    fn refuses_what_it_cannot_frame_and_honours_close() {
        let mut out = Vec::new();
        let done = answer_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            &mut out,
        );
        assert!(done.close && done.requests == 0);
        assert!(out.starts_with(b"HTTP/1.1 501 "));

        let mut out = Vec::new();
        let done = answer_all(b"POST / HTTP/1.1\r\nHost x\r\n\r\n", &mut out);
        assert!(done.close && out.starts_with(b"HTTP/1.1 400 "));

        let mut out = Vec::new();
        let huge = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let done = answer_all(huge.as_bytes(), &mut out);
        assert!(done.close && out.starts_with(b"HTTP/1.1 413 "));

        // Connection: close answers, says so, and stops there.
        let mut input = post(b"abcd", "Connection: close\r\n");
        input.extend(post(b"efgh", ""));
        let mut out = Vec::new();
        let done = answer_all(&input, &mut out);
        assert_eq!(done.requests, 1);
        assert!(done.close);
        assert!(out.ends_with(b"Connection: close\r\n\r\nabcd"));
    }

    #[test]
    fn serves_over_tcp_and_stops_by_itself() {
        let backend = Backend::start(&Options {
            listen: "127.0.0.1:0".parse().unwrap(),
            threads: 2,
            duration: Duration::from_millis(600),
        })
        .unwrap();
        let mut s = std::net::TcpStream::connect(backend.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Two pipelined requests, the second split across writes.
        let mut input = post(b"\0\0\0\x6ehello", "");
        let second = post(b"\0\0\0\x6eworld", "");
        input.extend_from_slice(&second[..10]);
        s.write_all(&input).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        s.write_all(&second[10..]).unwrap();
        let want = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n\0\0\0\x6ehello\
HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n\0\0\0\x6eworld";
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, want.as_slice());
        let started = Instant::now();
        let (requests, connections) = backend.wait();
        assert_eq!((requests, connections), (2, 1));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
