//! The publisher (in the parent): `POST /api/publish` over one keep-alive HTTP/1.1 connection,
//! or text frames over one WebSocket (`--pub-ws`, for the baseline peers' `/pub`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use edgepush::protocol::frame::{write_masked_frame, OpCode};

use crate::cli::{Payload, Target};
use crate::client::{base64_16, check_response};
use crate::stats::contains;
use crate::sys::now_ns;

/// What a publishing run did.
#[derive(Debug, Default, Clone)]
pub struct PublishReport {
    pub published: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub first_ns: u64,
    pub last_ns: u64,
    /// Sum of the API's `delivered` answers.
    pub api_delivered: u64,
}

impl PublishReport {
    /// Counts one publish's outcome.
    fn record(&mut self, result: Result<u64, String>) {
        match result {
            Ok(delivered) => {
                self.published += 1;
                self.api_delivered += delivered;
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

pub trait Publisher {
    /// Publishes one message; `Err` is a description of what went wrong.
    fn publish(&mut self, seq: u64, size: usize) -> Result<u64, String>;

    /// Publishes `seqs` as fast as the target takes them (a burst). The default publishes one
    /// by one; the API publisher pipelines requests on its keep-alive connection.
    fn publish_burst(
        &mut self,
        seqs: std::ops::Range<u64>,
        size: usize,
        done: &mut dyn FnMut(u64, Result<u64, String>),
    ) {
        for seq in seqs {
            let result = self.publish(seq, size);
            done(seq, result);
        }
    }
}

fn connect(target: &Target) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&target.addr, Duration::from_secs(5))
        .map_err(|e| format!("cannot reach {} ({e}); is the server running?", target.addr))?;
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    Ok(s)
}

/// `POST /api/publish` with keep-alive.
pub struct ApiPublisher {
    target: Target,
    channel_json: String,
    auth: Option<String>,
    stream: Option<TcpStream>,
    /// Requests kept in flight by a pipelined burst (`--api-pipeline`; 1: one at a time).
    window: u64,
    /// `/api/publish`, or `/api/publish?wait=delivered` (`--wait-delivered`).
    path: &'static str,
    body: Vec<u8>,
    req: Vec<u8>,
    resp: Vec<u8>,
    /// What the data objects hold (`--payload`).
    payload: Payload,
}

impl ApiPublisher {
    /// A publisher to `channel` that keeps up to `window` requests in flight in a burst and,
    /// if `wait_delivered`, asks for the delivery counts.
    pub fn new(
        target: Target,
        channel: &str,
        api_key: Option<&str>,
        window: u64,
        wait_delivered: bool,
    ) -> Result<Self, String> {
        let mut p = ApiPublisher {
            window: window.max(1),
            path: if wait_delivered {
                "/api/publish?wait=delivered"
            } else {
                "/api/publish"
            },
            channel_json: serde_json::to_string(channel).map_err(|e| e.to_string())?,
            auth: api_key.map(|k| format!("Authorization: Bearer {k}\r\n")),
            stream: None,
            body: Vec::with_capacity(4096),
            req: Vec::with_capacity(4096),
            resp: Vec::with_capacity(4096),
            payload: Payload::Pad,
            target,
        };
        p.stream = Some(connect(&p.target)?);
        Ok(p)
    }

    /// Makes the data objects hold `payload` (`--payload`).
    pub fn with_payload(mut self, payload: Payload) -> Self {
        self.payload = payload;
        self
    }

    fn round_trip(&mut self) -> Result<u64, String> {
        if self.stream.is_none() {
            self.stream = Some(connect(&self.target)?);
            self.resp.clear();
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err("no connection".into());
        };
        stream
            .write_all(&self.req)
            .map_err(|e| format!("writing to the API: {e}"))?;
        self.read_response()
    }

    /// Reads one answer; bytes of the next (pipelined) answer stay in `resp`.
    fn read_response(&mut self) -> Result<u64, String> {
        let Some(stream) = self.stream.as_mut() else {
            return Err("no connection".into());
        };
        let mut chunk = [0u8; 4096];
        let (head_end, status, content_length) = loop {
            if let Some(end) = self.resp.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.resp[..end]).to_string();
                let status: u16 = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("bad HTTP answer from the API: {head:?}"))?;
                let len = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (end + 4, status, len);
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
        let result = if status != 200 {
            Err(format!(
                "API answered {status}: {}",
                String::from_utf8_lossy(body).trim()
            ))
        } else {
            Ok(delivered(body))
        };
        self.resp.drain(..head_end + content_length);
        if closing {
            self.stream = None;
            self.resp.clear();
        }
        result
    }

    /// Builds the request for message `seq` into `req`.
    fn build_request(&mut self, seq: u64, size: usize) {
        self.body.clear();
        self.body.extend_from_slice(b"{\"channel\":");
        self.body.extend_from_slice(self.channel_json.as_bytes());
        self.body.extend_from_slice(b",\"data\":");
        write_data(&mut self.body, seq, now_ns(), size, self.payload);
        self.body.push(b'}');
        self.req.clear();
        let _ = write!(
            self.req,
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
            self.path,
            self.target.host,
            self.body.len(),
            self.auth.as_deref().unwrap_or("")
        );
        self.req.extend_from_slice(&self.body);
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

impl Publisher for ApiPublisher {
    fn publish_burst(
        &mut self,
        seqs: std::ops::Range<u64>,
        size: usize,
        done: &mut dyn FnMut(u64, Result<u64, String>),
    ) {
        // HTTP/1.1 pipelining: keep a window of requests in flight; answers come in order.
        let mut next = seqs.start;
        let mut answered = seqs.start;
        while answered < seqs.end {
            while next < seqs.end && next - answered < self.window {
                self.build_request(next, size);
                if self.stream.is_none() {
                    match connect(&self.target) {
                        Ok(s) => self.stream = Some(s),
                        Err(e) => return done(next, Err(e)),
                    }
                }
                let written = self
                    .stream
                    .as_mut()
                    .map(|s| s.write_all(&self.req))
                    .unwrap_or(Ok(()));
                if let Err(e) = written {
                    // Fall back to one at a time for what is left.
                    self.stream = None;
                    for seq in answered..seqs.end {
                        let r = self.publish(seq, size).map_err(|e2| format!("{e}; {e2}"));
                        done(seq, r);
                    }
                    return;
                }
                next += 1;
            }
            let result = self.read_response();
            let failed = result.is_err();
            done(answered, result);
            answered += 1;
            if failed && self.stream.is_none() {
                for seq in answered..next {
                    done(seq, Err("the API connection was lost mid-burst".into()));
                }
                answered = next;
            }
        }
    }

    fn publish(&mut self, seq: u64, size: usize) -> Result<u64, String> {
        self.build_request(seq, size);
        match self.round_trip() {
            Ok(d) => Ok(d),
            Err(e) => {
                // One retry on a fresh connection (keep-alive connections can be closed).
                self.stream = None;
                self.round_trip().map_err(|e2| format!("{e}; retry: {e2}"))
            }
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

impl Publisher for WsPublisher {
    fn publish(&mut self, seq: u64, size: usize) -> Result<u64, String> {
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

/// Publishes `messages` messages at `rate` per second (0: as fast as possible), stopping at
/// `deadline_ns`. `progress` is called after each message.
pub fn run(
    publisher: &mut dyn Publisher,
    messages: u64,
    size: usize,
    rate: f64,
    deadline_ns: u64,
    progress: &mut dyn FnMut(u64),
) -> PublishReport {
    let mut report = PublishReport::default();
    let start = now_ns();
    report.first_ns = start;
    if rate <= 0.0 {
        publisher.publish_burst(0..messages, size, &mut |seq, result| {
            report.record(result);
            progress(seq + 1);
        });
        report.last_ns = now_ns();
        return report;
    }
    for seq in 0..messages {
        if rate > 0.0 {
            let due = start + (seq as f64 * 1e9 / rate) as u64;
            let now = now_ns();
            if due > now {
                std::thread::sleep(Duration::from_nanos(due - now));
            }
        }
        if now_ns() >= deadline_ns {
            report
                .first_error
                .get_or_insert_with(|| "run timeout while publishing".into());
            break;
        }
        report.record(publisher.publish(seq, size));
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
