//! The publisher (in the parent): `POST /api/publish` over one keep-alive HTTP/1.1 connection
//! per API node (`--api`; publish `j` goes to node `j % n`), or text frames over one WebSocket
//! (`--pub-ws`, for the baseline peers' `/pub`).
//!
//! Every API publish carries an `idempotency_key` unique to the run and the message
//! (`load-RUN-j`). A publish answered 503 (a cluster node while Redis is down, or full worker
//! inboxes), or whose answer was lost with its connection, is sent again with the same key to
//! the same node after a wait, at most `--publish-retries` times: the key makes the retry safe
//! (design.md, Push API), so a run across a Redis outage loses nothing and delivers nothing
//! twice, and the report says how many retries it took.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::time::Duration;

use edgepush::protocol::frame::{write_masked_frame, OpCode};

use crate::cli::{node_for, Payload, Target};
use crate::client::{base64_16, check_response};
use crate::stats::contains;
use crate::sys::now_ns;

/// One node's publishing figures.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NodePublish {
    /// Attempts made on it: first sends and retries.
    pub sent: u64,
    /// Attempts that failed: answered other than 200 (503 while the cluster cannot reach
    /// Redis), answer lost with the connection, or no connection.
    pub failed: u64,
    /// Attempts that were retries (the same `idempotency_key` again).
    pub retries: u64,
    /// Messages it acknowledged (200).
    pub published: u64,
}

/// What a publishing run did: per message, per attempt, and per node (index = position in
/// `--api`; one entry for `--pub-ws`).
#[derive(Debug, Default, Clone)]
pub struct PublishReport {
    /// Messages acknowledged.
    pub published: u64,
    /// Messages given up on: not acknowledged after every retry.
    pub errors: u64,
    /// The first message given up on, in words.
    pub first_error: Option<String>,
    /// Attempts that failed (each retried or given up).
    pub failed: u64,
    /// The first failed attempt, in words.
    pub first_failure: Option<String>,
    /// Attempts that were retries.
    pub retries: u64,
    /// When publishing started and ended (CLOCK_MONOTONIC ns).
    pub first_ns: u64,
    pub last_ns: u64,
    /// Sum of the API's `delivered` answers.
    pub api_delivered: u64,
    /// Per node.
    pub nodes: Vec<NodePublish>,
}

impl PublishReport {
    /// An empty report for `nodes` nodes.
    pub fn for_nodes(nodes: usize) -> Self {
        PublishReport {
            nodes: vec![NodePublish::default(); nodes],
            ..PublishReport::default()
        }
    }

    fn node(&mut self, node: usize) -> &mut NodePublish {
        if node >= self.nodes.len() {
            self.nodes.resize_with(node + 1, NodePublish::default);
        }
        &mut self.nodes[node]
    }

    /// An attempt goes to `node`; `retry` if it is not the message's first.
    fn sent(&mut self, node: usize, retry: bool) {
        let n = self.node(node);
        n.sent += 1;
        if retry {
            n.retries += 1;
            self.retries += 1;
        }
    }

    /// An attempt on `node` failed with `error`.
    fn attempt_failed(&mut self, node: usize, error: &str) {
        self.node(node).failed += 1;
        self.failed += 1;
        if self.first_failure.is_none() {
            self.first_failure = Some(error.to_string());
        }
    }

    /// A message is over: acknowledged by `node` (with the answer's `delivered`) or given up.
    fn finished(&mut self, node: usize, result: Result<u64, String>) {
        match result {
            Ok(delivered) => {
                self.published += 1;
                self.api_delivered += delivered;
                self.node(node).published += 1;
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// Writes the data object for message `seq` into `out`, about `size` bytes (exactly, when
/// `size` leaves room for the fields): `{"seq":…,"t":…,"pad":"xxx…"}` for [`Payload::Pad`];
/// for [`Payload::Json`], `{"seq":…,"t":…,"items":[{"id":…,"user":…,"price":…,"qty":…,
/// "tags":[…]},…],"n":"…"}`, records drawn from a generator seeded by `seq`, closed by a
/// short string of letters that brings it to `size`.
pub fn write_data(out: &mut Vec<u8>, seq: u64, t: u64, size: usize, payload: Payload) {
    let start = out.len();
    match payload {
        Payload::Pad => {
            let _ = write!(out, "{{\"seq\":{seq},\"t\":{t},\"pad\":\"");
            let used = out.len() - start + 2;
            out.resize(out.len() + size.saturating_sub(used), b'x');
            out.extend_from_slice(b"\"}");
        }
        Payload::Json => write_json_data(out, seq, t, size),
    }
}

/// The [`Payload::Json`] data object (see [`write_data`]).
fn write_json_data(out: &mut Vec<u8>, seq: u64, t: u64, size: usize) {
    const WORDS: [&str; 12] = [
        "red", "green", "blue", "sale", "new", "eu", "us", "mobile", "desktop", "gold", "beta",
        "promo",
    ];
    // The tail: `],"n":"` + letters + `"}`.
    const TAIL: usize = 9;
    let start = out.len();
    let mut rng = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let _ = write!(out, "{{\"seq\":{seq},\"t\":{t},\"items\":[");
    let mut item = Vec::with_capacity(128);
    for k in 0.. {
        item.clear();
        let r = next();
        let _ = write!(
            item,
            "{}{{\"id\":{},\"user\":\"user-{}\",\"price\":{}.{},\"qty\":{},\"tags\":[\"{}\",\"{}\"]}}",
            if k == 0 { "" } else { "," },
            1_000_000 + seq * 64 + k,
            (r >> 20) % 100,
            (r >> 34) % 200,
            ["00", "50", "99"][((r >> 44) % 3) as usize],
            (r >> 51) % 10,
            WORDS[((r >> 57) % 12) as usize],
            WORDS[((r >> 8) % 12) as usize],
        );
        if out.len() - start + item.len() + TAIL > size {
            break;
        }
        out.extend_from_slice(&item);
    }
    out.extend_from_slice(b"],\"n\":\"");
    while out.len() - start + 2 < size {
        out.push(b'a' + (next() % 26) as u8);
    }
    out.extend_from_slice(b"\"}");
}

/// Something that publishes numbered messages.
pub trait Publisher {
    /// Publishes the messages `seqs` (data objects of about `size` bytes) as fast as the
    /// target takes them, sending nothing new after `deadline_ns`; counts every attempt and
    /// outcome in `report` and calls `progress` with how many of `seqs` are over (acknowledged
    /// or given up) after each one.
    fn publish_range(
        &mut self,
        seqs: Range<u64>,
        size: usize,
        deadline_ns: u64,
        report: &mut PublishReport,
        progress: &mut dyn FnMut(u64),
    );
}

pub(crate) fn connect(target: &Target) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&target.addr, Duration::from_secs(5))
        .map_err(|e| format!("cannot reach {} ({e}); is the server running?", target.addr))?;
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    Ok(s)
}

/// An API's answer that arrived whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// 200, with its `delivered` (0 if absent).
    Ok(u64),
    /// Any other status, its `Retry-After` (seconds form) and body.
    Refused {
        status: u16,
        retry_after: Option<Duration>,
        body: String,
    },
}

/// Why an attempt did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lost {
    /// No connection could be made: nothing was sent.
    Unsent(String),
    /// Sent (or partly), and the connection failed before the answer: it may have been taken.
    Unknown(String),
}

/// One API node's keep-alive connection (made again when lost) and the bytes read from it that
/// belong to answers not taken yet; and the body of the last 200 (its `seq` and `epoch`).
pub(crate) struct ApiConn {
    target: Target,
    stream: Option<TcpStream>,
    resp: Vec<u8>,
    /// The body of the last answer read whole with status 200.
    pub(crate) last_ok_body: Vec<u8>,
}

impl ApiConn {
    /// A connection to `target`, made at the first send.
    pub(crate) fn new(target: Target) -> ApiConn {
        ApiConn {
            target,
            stream: None,
            resp: Vec::with_capacity(4096),
            last_ok_body: Vec::new(),
        }
    }

    /// The node's `Host`.
    pub(crate) fn host(&self) -> &str {
        &self.target.host
    }

    /// Writes `req`, connecting first if there is no connection.
    pub(crate) fn send(&mut self, req: &[u8]) -> Result<(), Lost> {
        if self.stream.is_none() {
            self.stream = Some(connect(&self.target).map_err(Lost::Unsent)?);
            self.resp.clear();
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(Lost::Unsent("no connection".into()));
        };
        stream.write_all(req).map_err(|e| {
            self.stream = None;
            Lost::Unknown(format!("writing to the API: {e}"))
        })
    }

    /// Reads one answer; bytes of the next (pipelined) answer stay in `resp`. On an error the
    /// connection is dropped (the answers still due on it are lost too).
    pub(crate) fn read_response(&mut self) -> Result<Answer, String> {
        let result = self.read_answer();
        if result.is_err() {
            self.stream = None;
            self.resp.clear();
        }
        result
    }

    fn read_answer(&mut self) -> Result<Answer, String> {
        let Some(stream) = self.stream.as_mut() else {
            return Err("the API connection was lost mid-burst".into());
        };
        let mut chunk = [0u8; 4096];
        let (head_end, status, content_length, retry_after) = loop {
            if let Some(end) = self.resp.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.resp[..end]).to_string();
                let status: u16 = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("bad HTTP answer from the API: {head:?}"))?;
                let header = |name: &str| {
                    head.lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.trim().to_string())
                };
                let len = header("content-length")
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                let retry_after = header("retry-after")
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs);
                break (end + 4, status, len, retry_after);
            }
            read_more(
                stream,
                &mut self.resp,
                &mut chunk,
                "the API closed the connection",
            )?;
            if self.resp.len() > 64 * 1024 {
                return Err("the API's answer head is too long".into());
            }
        };
        while self.resp.len() < head_end + content_length {
            read_more(
                stream,
                &mut self.resp,
                &mut chunk,
                "the API closed the connection mid-answer",
            )?;
        }
        let body = &self.resp[head_end..head_end + content_length];
        let closing = contains(&self.resp[..head_end], b"onnection: close");
        let answer = if status == 200 {
            self.last_ok_body.clear();
            self.last_ok_body.extend_from_slice(body);
            Answer::Ok(delivered(body))
        } else {
            Answer::Refused {
                status,
                retry_after,
                body: String::from_utf8_lossy(body).trim().to_string(),
            }
        };
        self.resp.drain(..head_end + content_length);
        if closing {
            self.stream = None;
            self.resp.clear();
        }
        Ok(answer)
    }
}

/// How failed API publishes are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    /// Retries per message, at most (`--publish-retries`).
    pub max: u32,
    /// The wait before a retry: a 503's `Retry-After`, at most this; this when it has none
    /// (`--publish-retry-wait`).
    pub max_wait: Duration,
    /// Each publish carries an `idempotency_key` (not with `--no-idempotency-key`). Without
    /// one a retry could deliver a message twice, so only a lost answer's first retry is made
    /// (a keep-alive connection the server had closed).
    pub keyed: bool,
}

/// A message on its way: which, to which node, its attempt (0 = first), and for a retry when
/// it is due (ns).
#[derive(Debug, Clone, Copy)]
struct Flight {
    seq: u64,
    node: usize,
    attempt: u32,
    due: u64,
}

/// `POST /api/publish` with keep-alive, round robin over the API nodes.
pub struct ApiPublisher {
    conns: Vec<ApiConn>,
    channel_json: String,
    auth: Option<String>,
    /// Requests kept in flight by a pipelined burst (`--api-pipeline`; 1: one at a time).
    window: u64,
    /// `/api/publish`, or `/api/publish?wait=delivered` (`--wait-delivered`).
    path: &'static str,
    body: Vec<u8>,
    req: Vec<u8>,
    /// What the data objects hold (`--payload`).
    payload: Payload,
    /// This run's part of every `idempotency_key`.
    run_id: u64,
    retries: Retries,
}

impl ApiPublisher {
    /// A publisher to `channel` on `targets` (at least one; connected to each now) that keeps
    /// up to `window` requests in flight in a burst and, if `wait_delivered`, asks for the
    /// delivery counts. The error says which node could not be reached.
    pub fn new(
        targets: Vec<Target>,
        channel: &str,
        api_key: Option<&str>,
        window: u64,
        wait_delivered: bool,
    ) -> Result<Self, String> {
        if targets.is_empty() {
            return Err("no API to publish to".into());
        }
        let mut conns = Vec::with_capacity(targets.len());
        for target in targets {
            let stream = Some(connect(&target)?);
            conns.push(ApiConn {
                stream,
                ..ApiConn::new(target)
            });
        }
        Ok(ApiPublisher {
            conns,
            window: window.max(1),
            path: if wait_delivered {
                "/api/publish?wait=delivered"
            } else {
                "/api/publish"
            },
            channel_json: serde_json::to_string(channel).map_err(|e| e.to_string())?,
            auth: api_key.map(|k| format!("Authorization: Bearer {k}\r\n")),
            body: Vec::with_capacity(4096),
            req: Vec::with_capacity(4096),
            payload: Payload::Pad,
            run_id: now_ns() ^ (u64::from(std::process::id()) << 40),
            retries: Retries {
                max: 30,
                max_wait: Duration::from_secs(1),
                keyed: true,
            },
        })
    }

    /// Makes the data objects hold `payload` (`--payload`).
    pub fn with_payload(mut self, payload: Payload) -> Self {
        self.payload = payload;
        self
    }

    /// Retries failed publishes as `retries` says.
    pub fn with_retries(mut self, retries: Retries) -> Self {
        self.retries = retries;
        self
    }

    /// How many API nodes there are.
    pub fn nodes(&self) -> usize {
        self.conns.len()
    }

    /// The `idempotency_key` of message `seq`: `load-RUN-seq` (at most 42 bytes; the limit is
    /// 64), the same for every attempt of it.
    pub fn idempotency_key(&self, seq: u64) -> String {
        format!("load-{:016x}-{seq}", self.run_id)
    }

    /// Builds the request for message `seq` to `node` into `req`.
    fn build_request(&mut self, seq: u64, node: usize, size: usize) {
        self.body.clear();
        self.body.extend_from_slice(b"{\"channel\":");
        self.body.extend_from_slice(self.channel_json.as_bytes());
        self.body.extend_from_slice(b",\"data\":");
        write_data(&mut self.body, seq, now_ns(), size, self.payload);
        if self.retries.keyed {
            let key = self.idempotency_key(seq);
            let _ = write!(self.body, ",\"idempotency_key\":\"{key}\"");
        }
        self.body.push(b'}');
        self.req.clear();
        let host = self.conns.get(node).map_or("", |c| c.target.host.as_str());
        let _ = write!(
            self.req,
            "POST {} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
            self.path,
            self.body.len(),
            self.auth.as_deref().unwrap_or("")
        );
        self.req.extend_from_slice(&self.body);
    }

    /// Writes attempt `f` to its node.
    fn send(&mut self, f: &Flight, size: usize) -> Result<(), Lost> {
        self.build_request(f.seq, f.node, size);
        match self.conns.get_mut(f.node) {
            Some(conn) => conn.send(&self.req),
            None => Err(Lost::Unsent("no such API node".into())),
        }
    }

    /// Should a failed attempt `f` be retried, and after how long? `retry_after`: `Some` for
    /// a 503 (with its `Retry-After`, if any), `None` for a lost answer.
    fn retry_wait(&self, f: &Flight, overloaded: Option<Option<Duration>>) -> Option<Duration> {
        let r = &self.retries;
        if f.attempt >= r.max {
            return None;
        }
        match overloaded {
            Some(after) if r.keyed => Some(after.map_or(r.max_wait, |a| a.min(r.max_wait))),
            Some(_) => None,
            // A keep-alive connection the server had closed: at once, the first time.
            None if f.attempt == 0 => Some(Duration::ZERO),
            None if r.keyed => Some(r.max_wait),
            None => None,
        }
    }
}

/// Reads once more from the API into `resp`; EOF is an error saying `eof`.
fn read_more(
    stream: &mut TcpStream,
    resp: &mut Vec<u8>,
    chunk: &mut [u8],
    eof: &str,
) -> Result<(), String> {
    let n = stream
        .read(chunk)
        .map_err(|e| format!("reading the API's answer: {e}"))?;
    if n == 0 {
        return Err(eof.into());
    }
    resp.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// `"delivered":N` from an API answer (0 if absent).
pub fn delivered(body: &[u8]) -> u64 {
    let Some(at) = body.windows(12).position(|w| w == b"\"delivered\":") else {
        return 0;
    };
    body[at + 12..]
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |n, b| {
            n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
        })
}

/// The messages of one [`Publisher::publish_range`] call on their way: in flight (in the order
/// they were written, which is the order of their answers on each connection) and waiting to
/// be retried; and how many are over.
struct Flights<'a> {
    inflight: VecDeque<Flight>,
    waiting: Vec<Flight>,
    over: u64,
    report: &'a mut PublishReport,
    progress: &'a mut dyn FnMut(u64),
}

impl Flights<'_> {
    /// Message `f` is over: acknowledged or given up.
    fn finish(&mut self, f: &Flight, result: Result<u64, String>) {
        self.report.finished(f.node, result);
        self.over += 1;
        (self.progress)(self.over);
    }

    /// Attempt `f` failed with `error`: retried after `wait`, or given up (`None`).
    fn failed(&mut self, mut f: Flight, error: String, wait: Option<Duration>, now: u64) {
        self.report.attempt_failed(f.node, &error);
        match wait {
            Some(wait) => {
                f.attempt += 1;
                f.due = now.saturating_add(wait.as_nanos() as u64);
                self.waiting.push(f);
            }
            None => self.finish(&f, Err(error)),
        }
    }

    /// The retry due first, if it is due at `now`.
    fn take_due(&mut self, now: u64) -> Option<Flight> {
        let (i, _) = self
            .waiting
            .iter()
            .enumerate()
            .filter(|(_, f)| f.due <= now)
            .min_by_key(|(_, f)| (f.due, f.seq))?;
        Some(self.waiting.swap_remove(i))
    }

    /// The messages in flight on `node` (its connection is gone, their answers with it).
    fn take_inflight_on(&mut self, node: usize) -> VecDeque<Flight> {
        let (lost, kept): (VecDeque<Flight>, VecDeque<Flight>) =
            self.inflight.drain(..).partition(|f| f.node == node);
        self.inflight = kept;
        lost
    }
}

impl Publisher for ApiPublisher {
    /// HTTP/1.1 pipelining: a window of `--api-pipeline` requests in flight over the nodes'
    /// connections, answers read in the order the requests went out (each connection answers
    /// in order). Retries that are due go out before new messages; in flight plus waiting never
    /// exceed the window, so an outage does not pile up requests.
    fn publish_range(
        &mut self,
        seqs: Range<u64>,
        size: usize,
        deadline_ns: u64,
        report: &mut PublishReport,
        progress: &mut dyn FnMut(u64),
    ) {
        let window = self.window as usize;
        let nodes = self.conns.len();
        let mut next = seqs.start;
        let mut f = Flights {
            inflight: VecDeque::new(),
            waiting: Vec::new(),
            over: 0,
            report,
            progress,
        };
        loop {
            let now = now_ns();
            while f.inflight.len() < window {
                let flight = if let Some(due) = f.take_due(now) {
                    due
                } else if next < seqs.end
                    && now < deadline_ns
                    && f.inflight.len() + f.waiting.len() < window
                {
                    next += 1;
                    Flight {
                        seq: next - 1,
                        node: node_for(next - 1, nodes),
                        attempt: 0,
                        due: now,
                    }
                } else {
                    break;
                };
                f.report.sent(flight.node, flight.attempt > 0);
                match self.send(&flight, size) {
                    Ok(()) => f.inflight.push_back(flight),
                    Err(Lost::Unsent(e)) => f.failed(flight, e, None, now),
                    Err(Lost::Unknown(e)) => {
                        let wait = self.retry_wait(&flight, None);
                        f.failed(flight, e.clone(), wait, now);
                        for lost in f.take_inflight_on(flight.node) {
                            let wait = self.retry_wait(&lost, None);
                            f.failed(lost, e.clone(), wait, now);
                        }
                    }
                }
            }
            let Some(flight) = f.inflight.pop_front() else {
                // Nothing in flight: wait for the next retry, or give up at the deadline.
                let Some(due) = f.waiting.iter().map(|w| w.due).min() else {
                    break;
                };
                if now >= deadline_ns {
                    for w in std::mem::take(&mut f.waiting) {
                        f.finish(&w, Err("run timeout while retrying".into()));
                    }
                    continue;
                }
                let until = due.min(deadline_ns).saturating_sub(now).max(100_000);
                std::thread::sleep(Duration::from_nanos(until));
                continue;
            };
            let now = now_ns();
            let Some(conn) = self.conns.get_mut(flight.node) else {
                f.finish(&flight, Err("no such API node".into()));
                continue;
            };
            match conn.read_response() {
                Ok(Answer::Ok(delivered)) => f.finish(&flight, Ok(delivered)),
                Ok(Answer::Refused {
                    status,
                    retry_after,
                    body,
                }) => {
                    let wait = if status == 503 && now < deadline_ns {
                        self.retry_wait(&flight, Some(retry_after))
                    } else {
                        None
                    };
                    f.failed(flight, format!("API answered {status}: {body}"), wait, now);
                }
                Err(e) => {
                    let wait = self.retry_wait(&flight, None);
                    f.failed(flight, e.clone(), wait, now);
                    for lost in f.take_inflight_on(flight.node) {
                        let wait = self.retry_wait(&lost, None);
                        f.failed(lost, e.clone(), wait, now);
                    }
                }
            }
        }
        if next < seqs.end {
            f.report
                .first_error
                .get_or_insert_with(|| "run timeout while publishing".into());
        }
    }
}

/// A blocking WebSocket client: each message one masked text frame.
pub struct WsPublisher {
    stream: TcpStream,
    body: Vec<u8>,
    frame: Vec<u8>,
    rng: u64,
    /// What the data objects hold (`--payload`).
    payload: Payload,
}

impl WsPublisher {
    pub fn new(target: &Target) -> Result<Self, String> {
        let mut stream = connect(target)?;
        let raw: [u8; 16] = (now_ns() as u128 ^ 0x5a5a_1234_9876_abcd_u128 << 40).to_le_bytes();
        let key = base64_16(&raw);
        let path = target.path.replace("{n}", "publisher");
        let mut req = Vec::new();
        let _ = write!(
            req,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ",
            target.host
        );
        req.extend_from_slice(&key);
        req.extend_from_slice(b"\r\nSec-WebSocket-Version: 13\r\n\r\n");
        stream
            .write_all(&req)
            .map_err(|e| format!("publisher upgrade: {e}"))?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        // Byte by byte so that nothing after the head is consumed (the peer sends nothing).
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(0) => return Err("publisher upgrade: connection closed".into()),
                Ok(_) => head.push(byte[0]),
                Err(e) => return Err(format!("publisher upgrade: {e}")),
            }
            if head.len() > 16 * 1024 {
                return Err("publisher upgrade: response head too long".into());
            }
        }
        check_response(&head, &key, None).map_err(|kind| {
            format!(
                "publisher upgrade refused at ws://{}{path}: {kind} ({})",
                target.host,
                String::from_utf8_lossy(head.split(|b| *b == b'\r').next().unwrap_or(b""))
            )
        })?;
        let _ = stream.set_nonblocking(false);
        Ok(WsPublisher {
            stream,
            body: Vec::with_capacity(4096),
            frame: Vec::with_capacity(4096),
            rng: now_ns() | 1,
            payload: Payload::Pad,
        })
    }

    /// Makes the data objects hold `payload` (`--payload`).
    pub fn with_payload(mut self, payload: Payload) -> Self {
        self.payload = payload;
        self
    }

    pub fn close(&mut self) {
        self.frame.clear();
        write_masked_frame(
            &mut self.frame,
            true,
            OpCode::Close,
            &1000u16.to_be_bytes(),
            [1, 2, 3, 4],
        );
        let _ = self.stream.write_all(&self.frame);
    }
}

impl Drop for WsPublisher {
    fn drop(&mut self) {
        self.close();
    }
}

impl WsPublisher {
    /// Sends message `seq` as one text frame.
    fn publish_one(&mut self, seq: u64, size: usize) -> Result<u64, String> {
        self.body.clear();
        write_data(&mut self.body, seq, now_ns(), size, self.payload);
        self.frame.clear();
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        write_masked_frame(
            &mut self.frame,
            true,
            OpCode::Text,
            &self.body,
            (self.rng as u32).to_ne_bytes(),
        );
        self.stream
            .write_all(&self.frame)
            .map_err(|e| format!("publishing over the WebSocket: {e}"))?;
        Ok(0)
    }
}

impl Publisher for WsPublisher {
    /// One frame per message, one node (index 0), no retries (a WebSocket publish has no
    /// answer to retry on).
    fn publish_range(
        &mut self,
        seqs: Range<u64>,
        size: usize,
        _deadline_ns: u64,
        report: &mut PublishReport,
        progress: &mut dyn FnMut(u64),
    ) {
        for (over, seq) in seqs.enumerate() {
            report.sent(0, false);
            let result = self.publish_one(seq, size);
            if let Err(e) = &result {
                report.attempt_failed(0, e);
            }
            report.finished(0, result);
            progress(over as u64 + 1);
        }
    }
}

/// Publishes `messages` messages at `rate` per second (0: a burst, as fast as possible),
/// stopping at `deadline_ns`, into a report of `nodes` nodes. `progress` is called with the
/// number of messages over (acknowledged or given up).
pub fn run(
    publisher: &mut dyn Publisher,
    nodes: usize,
    messages: u64,
    size: usize,
    rate: f64,
    deadline_ns: u64,
    progress: &mut dyn FnMut(u64),
) -> PublishReport {
    let mut report = PublishReport::for_nodes(nodes);
    let start = now_ns();
    report.first_ns = start;
    if rate <= 0.0 {
        publisher.publish_range(0..messages, size, deadline_ns, &mut report, progress);
        report.last_ns = now_ns();
        return report;
    }
    for seq in 0..messages {
        let due = start + (seq as f64 * 1e9 / rate) as u64;
        let now = now_ns();
        if due > now {
            std::thread::sleep(Duration::from_nanos(due - now));
        }
        if now_ns() >= deadline_ns {
            report
                .first_error
                .get_or_insert_with(|| "run timeout while publishing".into());
            break;
        }
        publisher.publish_range(seq..seq + 1, size, deadline_ns, &mut report, &mut |_| {});
        if report.errors >= 10 && report.published == 0 {
            break;
        }
        progress(seq + 1);
    }
    report.last_ns = now_ns();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_object_is_json_of_about_the_size() {
        for payload in [Payload::Pad, Payload::Json] {
            for size in [0usize, 10, 64, 1000, 1024] {
                let mut out = Vec::new();
                write_data(&mut out, 12, 123456789, size, payload);
                let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
                assert_eq!(v["seq"], 12);
                assert_eq!(v["t"], 123456789);
                if size > 50 {
                    assert_eq!(out.len(), size, "{payload:?}");
                }
                assert_eq!(crate::stats::scan_seq_t(&out), Some((12, 123456789)));
            }
        }
    }

    /// The JSON payload holds records that differ from message to message and compresses
    /// like real JSON (2–5×), not like one byte repeated.
    #[test]
    fn json_payload_is_varied_records() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_data(&mut a, 1, 5, 1024, Payload::Json);
        write_data(&mut b, 2, 5, 1024, Payload::Json);
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        let items = v["items"].as_array().unwrap();
        assert!(items.len() >= 8, "{}", items.len());
        assert!(items[0]["user"].as_str().unwrap().starts_with("user-"));
        assert_ne!(a[30..], b[30..]);
        let mut d = crate::deflate::Deflater::new();
        let packed = d.compress(&a).len();
        assert!((1024 / 6..1024 / 2).contains(&packed), "{packed}");
    }

    /// A fake push API on loopback: serves up to `conns` connections one after the other
    /// (each until EOF, for at most 10 s in all) and records every request's body. Request `i`
    /// (counted over all connections) gets `answer(i)`: `Some(status)` (503 with
    /// `Retry-After: 0`), or `None`: the connection is closed without an answer.
    fn fake_api(
        conns: usize,
        answer: impl Fn(usize) -> Option<u16> + Send + 'static,
    ) -> (Target, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::net::TcpListener;
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            for _ in 0..conns {
                let mut stream = loop {
                    match listener.accept() {
                        Ok((s, _)) => break s,
                        Err(_) if std::time::Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(1))
                        }
                        Err(_) => return,
                    }
                };
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                'conn: while std::time::Instant::now() < deadline {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .split("content-length:")
                            .nth(1)
                            .and_then(|r| r.lines().next())
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            break;
                        }
                        let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]);
                        let i = {
                            let mut b = seen.lock().unwrap();
                            b.push(body.to_string());
                            b.len() - 1
                        };
                        buf.drain(..end + 4 + len);
                        let reply = match answer(i) {
                            Some(200) => "HTTP/1.1 200 OK\r\nContent-Length: 21\r\n\r\n{\"seq\":1,\"epoch\":\"e\"}".to_string(),
                            Some(status) => format!("HTTP/1.1 {status} No\r\nRetry-After: 0\r\nContent-Length: 2\r\n\r\n{{}}"),
                            None => break 'conn,
                        };
                        if stream.write_all(reply.as_bytes()).is_err() {
                            break 'conn;
                        }
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            }
        });
        let url = format!("http://{addr}");
        (parse_url(&url, "http").unwrap(), bodies)
    }

    use crate::cli::parse_url;

    /// The data `seq` and the `idempotency_key` of each recorded body.
    fn seqs_and_keys(bodies: &[String]) -> Vec<(u64, Option<String>)> {
        bodies
            .iter()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_str(b).unwrap();
                (
                    v["data"]["seq"].as_u64().unwrap(),
                    v["idempotency_key"].as_str().map(String::from),
                )
            })
            .collect()
    }

    fn quick_retries(max: u32) -> Retries {
        Retries {
            max,
            max_wait: Duration::from_millis(1),
            keyed: true,
        }
    }

    fn deadline() -> u64 {
        now_ns() + 20_000_000_000
    }

    /// Publish j goes to API j % n, pipelined (burst) and one at a time (rate); every message
    /// has its own key, `load-RUN-j`.
    #[test]
    fn publishes_spread_round_robin_with_a_key_each() {
        for (rate, window) in [(0.0, 4), (2000.0, 1)] {
            let (a, seen_a) = fake_api(1, |_| Some(200));
            let (b, seen_b) = fake_api(1, |_| Some(200));
            let mut p = ApiPublisher::new(vec![a, b], "c", None, window, false).unwrap();
            assert_eq!(p.nodes(), 2);
            let mut over = 0;
            let r = run(&mut p, 2, 10, 64, rate, deadline(), &mut |n| over = n);
            assert_eq!((r.published, r.errors, r.failed, r.retries), (10, 0, 0, 0));
            assert_eq!(over, 10);
            let per: Vec<_> = r.nodes.iter().map(|n| (n.sent, n.published)).collect();
            assert_eq!(per, [(5, 5), (5, 5)], "rate {rate}");
            let a = seqs_and_keys(&seen_a.lock().unwrap());
            let b = seqs_and_keys(&seen_b.lock().unwrap());
            assert_eq!(a.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 2, 4, 6, 8]);
            assert_eq!(b.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 3, 5, 7, 9]);
            let keys: std::collections::BTreeSet<_> =
                a.iter().chain(&b).map(|s| s.1.clone().unwrap()).collect();
            assert_eq!(keys.len(), 10);
            assert!(keys.contains(&p.idempotency_key(7)));
            assert!(p.idempotency_key(7).ends_with("-7") && p.idempotency_key(7).len() <= 64);
        }
    }

    /// 503s are counted as failed attempts and retried with the same key until acknowledged
    /// (nothing lost); past `--publish-retries` the message is given up.
    #[test]
    fn a_503_is_retried_with_the_same_key() {
        for window in [1, 4] {
            let (api, seen) = fake_api(1, |i| Some(if i < 3 { 503 } else { 200 }));
            let mut p = ApiPublisher::new(vec![api], "c", None, window, false)
                .unwrap()
                .with_retries(quick_retries(5));
            let r = run(&mut p, 1, 3, 64, 0.0, deadline(), &mut |_| {});
            assert_eq!(
                (r.published, r.errors, r.failed, r.retries),
                (3, 0, 3, 3),
                "window {window}: {r:?}"
            );
            assert_eq!(
                r.nodes[0],
                NodePublish {
                    sent: 6,
                    failed: 3,
                    retries: 3,
                    published: 3
                }
            );
            assert!(
                r.first_failure.as_deref().unwrap_or("").contains("503"),
                "{r:?}"
            );
            assert_eq!(r.first_error, None);
            let sent = seqs_and_keys(&seen.lock().unwrap());
            assert_eq!(sent.len(), 6);
            for seq in 0..3 {
                let keys: std::collections::BTreeSet<_> = sent
                    .iter()
                    .filter(|s| s.0 == seq)
                    .map(|s| s.1.clone())
                    .collect();
                assert_eq!(keys.len(), 1, "one key per message: {sent:?}");
            }
        }
        // Window 1: message 0 three times in vain, then acknowledged, then 1 and 2.
        let (api, seen) = fake_api(1, |i| Some(if i < 3 { 503 } else { 200 }));
        let mut p = ApiPublisher::new(vec![api], "c", None, 1, false)
            .unwrap()
            .with_retries(quick_retries(2));
        let r = run(&mut p, 1, 3, 64, 0.0, deadline(), &mut |_| {});
        assert_eq!((r.published, r.errors, r.failed, r.retries), (2, 1, 3, 2));
        assert!(
            r.first_error.as_deref().unwrap_or("").contains("503"),
            "{r:?}"
        );
        let order: Vec<u64> = seqs_and_keys(&seen.lock().unwrap())
            .iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(order, [0, 0, 0, 1, 2]);
    }

    /// A connection that closes without answering: the publish is sent again (same key) on a
    /// new connection.
    #[test]
    fn a_lost_answer_is_retried_on_a_new_connection() {
        let (api, seen) = fake_api(2, |i| (i != 1).then_some(200));
        let mut p = ApiPublisher::new(vec![api], "c", None, 1, false).unwrap();
        let r = run(&mut p, 1, 3, 64, 0.0, deadline(), &mut |_| {});
        assert_eq!(
            (r.published, r.errors, r.failed, r.retries),
            (3, 0, 1, 1),
            "{r:?}"
        );
        let sent = seqs_and_keys(&seen.lock().unwrap());
        assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 1, 1, 2]);
        assert_eq!(sent[1].1, sent[2].1);
    }

    /// `--no-idempotency-key`: no key in the body, and a 503 is not retried.
    #[test]
    fn without_a_key_a_503_is_given_up() {
        let (api, seen) = fake_api(1, |i| Some(if i == 0 { 503 } else { 200 }));
        let mut p = ApiPublisher::new(vec![api], "c", None, 1, false)
            .unwrap()
            .with_retries(Retries {
                keyed: false,
                ..quick_retries(5)
            });
        let r = run(&mut p, 1, 2, 64, 0.0, deadline(), &mut |_| {});
        assert_eq!((r.published, r.errors, r.failed, r.retries), (1, 1, 1, 0));
        let sent = seqs_and_keys(&seen.lock().unwrap());
        assert_eq!(sent, [(0, None), (1, None)]);
    }

    #[test]
    fn delivered_is_read() {
        assert_eq!(
            delivered(br#"{"seq":18,"epoch":"k3x9","delivered":5000}"#),
            5000
        );
        assert_eq!(delivered(br#"{"delivered": 7}"#), 7);
        assert_eq!(delivered(b"{}"), 0);
    }
}
