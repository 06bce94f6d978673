//! `actions --direct URL`: the same actions as the `actions` scenario (same connections,
//! actions in flight per connection, sizes and duration), sent straight to the backend as the
//! POSTs edgepush would send (built by edgepush's own [`write_request`], answers read by its
//! own [`parse_answer`]), so a report can say what going through edgepush adds. Requests are
//! pipelined on each keep-alive connection (HTTP/1.1, RFC 9112 §9.3.2) up to `--in-flight`;
//! with one in flight each connection waits for its answer, as edgepush's upstream
//! connections do.
//!
//! Runs in the parent process on one mio `Poll` (busy-polled while measuring unless
//! `--no-spin`, like a child), after the run through edgepush.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::time::Duration;

use edgepush::http::Status;
use edgepush::upstream::answer::parse_answer;
use edgepush::upstream::request::{write_request, Sender};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::cli::parse_url;
use crate::scenarios::actions::{answer_counter, write_action, Book, Matched};
use crate::stats::new_hist;
use crate::sys::now_ns;

/// The largest answer body read (bytes).
const MAX_BODY: usize = 64 << 20;

/// What to send, and for how long.
#[derive(Debug, Clone)]
pub struct DirectOptions {
    /// The backend, `http://host:port/path` (loopback only).
    pub url: String,
    /// Keep-alive connections.
    pub conns: usize,
    /// Requests in flight per connection.
    pub in_flight: usize,
    /// Payload bytes after the action code.
    pub size: usize,
    /// The action code.
    pub code: u32,
    /// Measured phase.
    pub duration: Duration,
    /// After it, how long to wait for the answers still due.
    pub drain_timeout: Duration,
    /// Busy-poll while measuring.
    pub spin: bool,
}

/// What the direct run saw.
#[derive(Debug)]
pub struct DirectReport {
    /// Connections that were opened.
    pub connected: u64,
    /// Requests sent.
    pub sent: u64,
    /// Answers matched to a request (200s and other statuses), drain included.
    pub answered: u64,
    /// 200 answers during the measured phase (their latency is in `latency`).
    pub received: u64,
    /// The measured phase (s).
    pub measured_s: f64,
    /// Request → answer (ns), measured phase.
    pub latency: Histogram<u64>,
    /// Requests never answered.
    pub missing: u64,
    /// Answers to requests already answered.
    pub duplicates: u64,
    /// Answers that overtook an older request on their connection.
    pub out_of_order: u64,
    /// By kind: `status_<code>` for answers other than 200, and what broke a connection.
    pub errors: BTreeMap<String, u64>,
}

/// One keep-alive connection to the backend.
struct Conn {
    stream: TcpStream,
    book: Book,
    output: Vec<u8>,
    written: usize,
    input: Vec<u8>,
    open: bool,
}

/// Runs the direct load; `Err` if the URL is not a loopback http URL or nothing connects.
pub fn run(opts: &DirectOptions) -> Result<DirectReport, String> {
    let target = parse_url(&opts.url, "http")?;
    let upstream = edgepush::upstream::Target::parse(&opts.url)?;
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut report = DirectReport {
        connected: 0,
        sent: 0,
        answered: 0,
        received: 0,
        measured_s: 0.0,
        latency: new_hist(),
        missing: 0,
        duplicates: 0,
        out_of_order: 0,
        errors: BTreeMap::new(),
    };
    let mut conns = Vec::with_capacity(opts.conns);
    for i in 0..opts.conns {
        let stream = std::net::TcpStream::connect(target.addr)
            .and_then(|s| s.set_nodelay(true).and(s.set_nonblocking(true)).map(|_| s));
        let mut stream = match stream {
            Ok(s) => TcpStream::from_std(s),
            Err(e) => {
                count(&mut report.errors, crate::client::error_kind(&e));
                continue;
            }
        };
        poll.registry()
            .register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| e.to_string())?;
        conns.push(Conn {
            stream,
            book: Book::default(),
            output: Vec::new(),
            written: 0,
            input: Vec::new(),
            open: true,
        });
    }
    report.connected = conns.len() as u64;
    if conns.is_empty() {
        return Err(format!(
            "--direct {}: no connection could be opened ({:?})",
            opts.url, report.errors
        ));
    }
    let mut message = Vec::with_capacity(opts.size + 16);
    let start = now_ns();
    let measure_end = start.saturating_add(opts.duration.as_nanos() as u64);
    let drain_end = measure_end.saturating_add(opts.drain_timeout.as_nanos() as u64);
    let mut send = |conn: &mut Conn, i: usize, now: u64, report: &mut DirectReport| {
        let counter = conn.book.send(now);
        message.clear();
        write_action(&mut message, opts.code, counter, opts.size);
        let user = format!("load-{i}");
        let sender = Sender {
            user: &user,
            connection: i as u64,
            node: "direct",
        };
        write_request(&mut conn.output, &upstream, sender, opts.code, &message);
        report.sent += 1;
    };
    for (i, conn) in conns.iter_mut().enumerate() {
        for _ in 0..opts.in_flight {
            send(conn, i, start, &mut report);
        }
        flush(conn, &mut report.errors);
    }
    let mut events = Events::with_capacity(1024);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let now = now_ns();
        let measuring = now < measure_end;
        let waiting: usize = conns
            .iter()
            .filter(|c| c.open)
            .map(|c| c.book.waiting())
            .sum();
        if (!measuring && waiting == 0) || now >= drain_end {
            break;
        }
        let timeout = if measuring && opts.spin {
            Duration::ZERO
        } else {
            Duration::from_millis(5)
        };
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e.to_string());
            }
        }
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(conn) = conns.get_mut(i) else {
                continue;
            };
            if !conn.open {
                continue;
            }
            let eof = read_all(conn, &mut chunk, &mut report.errors);
            let now = now_ns();
            let answers = take_answers(conn, eof, opts.code, &mut report.errors);
            for a in answers {
                let matched = match a {
                    Answer::Echo(counter) => conn.book.answer(counter),
                    Answer::Refused => {
                        // Answers the oldest request, like an error op through edgepush.
                        if conn.book.answer_oldest() {
                            report.answered += 1;
                        }
                        if now < measure_end {
                            send(conn, i, now, &mut report);
                        }
                        continue;
                    }
                };
                match matched {
                    Matched::InOrder(sent) | Matched::OutOfOrder(sent) => {
                        if matches!(matched, Matched::OutOfOrder(_)) {
                            report.out_of_order += 1;
                        }
                        report.answered += 1;
                        if now < measure_end {
                            report.received += 1;
                            report.latency.saturating_record(now.saturating_sub(sent));
                            send(conn, i, now, &mut report);
                        }
                    }
                    Matched::Duplicate => report.duplicates += 1,
                    Matched::Unknown => count(&mut report.errors, "unknown_answer"),
                }
            }
            if conn.open {
                flush(conn, &mut report.errors);
            }
            if eof && conn.open {
                conn.open = false;
                count(&mut report.errors, "eof");
            }
        }
    }
    report.measured_s = opts.duration.as_secs_f64();
    report.missing = conns.iter().map(|c| c.book.waiting() as u64).sum();
    Ok(report)
}

/// An answer read off a connection.
enum Answer {
    /// A 200 echoing the action with this counter.
    Echo(u64),
    /// Another status, or a 200 that is not our action.
    Refused,
}

fn count(errors: &mut BTreeMap<String, u64>, kind: &str) {
    *errors.entry(kind.to_string()).or_insert(0) += 1;
}

/// Reads what there is into `conn.input`; true at end of stream (or an error, counted).
fn read_all(conn: &mut Conn, chunk: &mut [u8], errors: &mut BTreeMap<String, u64>) -> bool {
    loop {
        match conn.stream.read(chunk) {
            Ok(0) => return true,
            Ok(n) => {
                conn.input.extend_from_slice(&chunk[..n]);
                if n < chunk.len() {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                count(errors, crate::client::error_kind(&e));
                return true;
            }
        }
    }
}

/// Takes every complete answer off `conn.input`. A malformed answer, or one that ends the
/// connection, closes it (counted).
fn take_answers(
    conn: &mut Conn,
    eof: bool,
    code: u32,
    errors: &mut BTreeMap<String, u64>,
) -> Vec<Answer> {
    let mut answers = Vec::new();
    let mut pos = 0;
    while pos < conn.input.len() {
        match parse_answer(&conn.input[pos..], eof, MAX_BODY) {
            Ok(Status::Complete((answer, used))) => {
                pos += used;
                if answer.status == 200 {
                    match answer_counter(&answer.body, code) {
                        Some(counter) => answers.push(Answer::Echo(counter)),
                        None => {
                            count(errors, "unexpected_body");
                            answers.push(Answer::Refused);
                        }
                    }
                } else {
                    count(errors, &format!("status_{}", answer.status));
                    answers.push(Answer::Refused);
                }
                if !answer.keep_alive {
                    conn.open = false;
                    count(errors, "backend_closed");
                    break;
                }
            }
            Ok(Status::Partial) => break,
            Err(outcome) => {
                count(errors, &format!("bad_answer_{outcome:?}").to_lowercase());
                conn.open = false;
                break;
            }
        }
    }
    conn.input.drain(..pos);
    answers
}

/// Writes what it can of `conn.output`.
fn flush(conn: &mut Conn, errors: &mut BTreeMap<String, u64>) {
    while conn.written < conn.output.len() {
        match conn.stream.write(&conn.output[conn.written..]) {
            Ok(0) => break,
            Ok(n) => conn.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                count(errors, crate::client::error_kind(&e));
                conn.open = false;
                return;
            }
        }
    }
    conn.output.clear();
    conn.written = 0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, Options};

    #[test]
    fn direct_against_the_built_in_backend() {
        let backend = Backend::start(&Options {
            listen: "127.0.0.1:0".parse().unwrap(),
            threads: 1,
            duration: Duration::from_secs(3),
        })
        .unwrap();
        let r = run(&DirectOptions {
            url: format!("http://{}/act", backend.local_addr()),
            conns: 4,
            in_flight: 3,
            size: 32,
            code: 111,
            duration: Duration::from_millis(300),
            drain_timeout: Duration::from_secs(2),
            spin: false,
        })
        .unwrap();
        assert_eq!(r.connected, 4);
        assert!(r.received > 100, "{r:?}");
        assert_eq!(r.answered, r.sent, "{r:?}");
        assert_eq!((r.missing, r.duplicates, r.out_of_order), (0, 0, 0));
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.latency.len(), r.received);
        let (requests, _) = backend.wait();
        assert_eq!(requests, r.sent);
    }

    #[test]
    fn refuses_a_remote_backend() {
        let err = run(&DirectOptions {
            url: "http://10.0.0.1:9000/".into(),
            conns: 1,
            in_flight: 1,
            size: 8,
            code: 1,
            duration: Duration::ZERO,
            drain_timeout: Duration::ZERO,
            spin: false,
        })
        .unwrap_err();
        assert!(err.contains("not a loopback"), "{err}");
    }
}
