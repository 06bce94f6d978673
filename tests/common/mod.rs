//! Shared helpers for the integration tests: an in-process server on port 0, a watchdog that
//! fails a test instead of letting it hang, and a raw WebSocket client that does the upgrade
//! by hand and decodes frames with the crate's own decoder in the client role.
//!
//! Every socket made here has read and write timeouts, so nothing blocks forever.

#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::ops::Deref;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use edgepush::config::Config;
use edgepush::protocol::frame::{write_masked_frame, OpCode};
use edgepush::protocol::message::{Decoder, DecoderConfig, Event, MessageKind, Role};
use edgepush::server::Server;

/// The default watchdog limit for one test body.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The read timeout every client socket gets unless a test says otherwise.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A well-formed `Sec-WebSocket-Key` (RFC 6455 §1.3's sample).
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Runs `body` on its own thread and fails the test if it takes longer than `limit`. A panic
/// in the body is re-raised on the test thread with its own message.
pub fn with_timeout<F>(limit: Duration, body: F)
where
    F: FnOnce() + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let handle = thread::Builder::new()
        .name("test-body".into())
        .spawn(move || {
            body();
            let _ = tx.send(());
        })
        .expect("spawn test body");
    match rx.recv_timeout(limit) {
        Ok(()) => handle.join().expect("test body"),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The body panicked: surface its panic.
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test timed out after {limit:?}"),
    }
}

/// [`with_timeout`] with [`TEST_TIMEOUT`].
pub fn guarded<F>(body: F)
where
    F: FnOnce() + Send + 'static,
{
    with_timeout(TEST_TIMEOUT, body);
}

/// A server started in-process; stopped when dropped.
pub struct TestServer {
    server: Option<Server>,
}

impl TestServer {
    pub fn start(config: Config) -> TestServer {
        let server = Server::start(&config).expect("start server");
        TestServer {
            server: Some(server),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.local_addr()
    }
}

impl Deref for TestServer {
    type Target = Server;
    fn deref(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }
}

/// The test configuration (127.0.0.1:0, 1 thread, echo at /echo).
pub fn config() -> Config {
    Config::for_tests()
}

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A TCP connection to `addr` with the default timeouts and `TCP_NODELAY`.
/// A connected stream whose receive buffer is tiny (4 KiB), so that the server's queue for it
/// fills fast once it stops reading; read and write timeouts as [`connect`].
pub fn small_window_stream(addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// The request head of a valid upgrade to `path`.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// An HTTP response as read off the wire.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response head from `stream`: returns it and any bytes that followed it in the
/// same reads (the first frames after a 101, or the start of a body).
/// A parsed head's headers as owned (name, value) pairs.
fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

pub fn read_response_head(stream: &mut TcpStream) -> (HttpResponse, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                assert_eq!(response.version, Some(1), "HTTP/1.1 answer");
                let headers = owned_headers(response.headers);
                let status = response.code.expect("status code");
                return (
                    HttpResponse {
                        status,
                        headers,
                        body: Vec::new(),
                    },
                    buf[head_len..].to_vec(),
                );
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => panic!(
                "bad response head ({e}): {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
        let n = stream.read(&mut chunk).expect("read response head");
        assert!(
            n > 0,
            "EOF before a complete response head; got {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `request` raw and reads the whole response until the server closes the connection.
pub fn http_exchange(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut stream = connect(addr);
    stream.write_all(request).expect("send request");
    read_full_response(&mut stream)
}

/// Reads a response head and its body up to EOF, checking `Content-Length` against it.
pub fn read_full_response(stream: &mut TcpStream) -> HttpResponse {
    let (mut response, mut body) = read_response_head(stream);
    let mut chunk = [0u8; 16384];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the response body: {e}"),
        }
    }
    if let Some(len) = response.header("content-length") {
        let len: usize = len.parse().expect("numeric Content-Length");
        assert_eq!(body.len(), len, "body length vs Content-Length");
    }
    response.body = body;
    response
}

/// A frame (or the end of the stream) as the raw client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// `None`: an empty close payload.
    Close(Option<(u16, String)>),
    /// The server closed TCP (read returned 0).
    Eof,
    /// The connection was reset.
    Reset,
}

/// A hand-made WebSocket client over a blocking `TcpStream`.
pub struct RawClient {
    pub stream: TcpStream,
    /// Bytes read but not yet decoded.
    buf: Vec<u8>,
    decoder: Decoder,
    config: DecoderConfig,
    mask_seed: u32,
}

impl RawClient {
    /// Connects and upgrades on `path`; panics unless the answer is 101 with the right accept.
    pub fn connect(addr: SocketAddr, path: &str) -> RawClient {
        RawClient::upgrade(connect(addr), path)
    }

    /// Upgrades an already connected stream.
    pub fn upgrade(mut stream: TcpStream, path: &str) -> RawClient {
        stream
            .write_all(upgrade_request(path).as_bytes())
            .expect("send upgrade");
        let (response, rest) = read_response_head(&mut stream);
        assert_eq!(response.status, 101, "upgrade answer: {response:?}");
        assert_eq!(
            response.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "accept key"
        );
        RawClient::from_parts(stream, rest)
    }

    /// Wraps a stream whose handshake is done; `rest` are bytes read past the 101 head.
    pub fn from_parts(stream: TcpStream, rest: Vec<u8>) -> RawClient {
        RawClient {
            stream,
            buf: rest,
            decoder: Decoder::new(),
            config: DecoderConfig {
                role: Role::Client,
                max_message_size: 64 << 20,
            },
            mask_seed: 0x1234_5678,
        }
    }

    fn next_key(&mut self) -> [u8; 4] {
        // xorshift: the key only needs to vary.
        let mut x = self.mask_seed;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_seed = x;
        x.to_be_bytes()
    }

    /// Encodes one masked frame.
    pub fn frame(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        let key = self.next_key();
        write_masked_frame(&mut out, fin, opcode, payload, key);
        out
    }

    /// Sends one masked frame.
    pub fn send_frame(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) -> io::Result<()> {
        let bytes = self.frame(fin, opcode, payload);
        self.stream.write_all(&bytes)
    }

    pub fn send_text(&mut self, text: &str) {
        self.send_frame(true, OpCode::Text, text.as_bytes())
            .expect("send text");
    }

    pub fn send_binary(&mut self, data: &[u8]) {
        self.send_frame(true, OpCode::Binary, data)
            .expect("send binary");
    }

    /// Sends a Close with `code` (and no reason).
    pub fn send_close(&mut self, code: u16) {
        self.send_frame(true, OpCode::Close, &code.to_be_bytes())
            .expect("send close");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next frame from the server, or how the stream ended. Panics on a read timeout or
    /// on anything the client-role decoder refuses.
    pub fn recv(&mut self) -> Received {
        self.try_recv().expect("read from server")
    }

    /// Like [`RawClient::recv`], but a read timeout is an `Err`.
    pub fn try_recv(&mut self) -> io::Result<Received> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(received) = self.decode_one() {
                return Ok(received);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    assert!(
                        self.buf.is_empty() && self.decoder.is_idle(),
                        "EOF inside a frame ({} bytes pending)",
                        self.buf.len()
                    );
                    return Ok(Received::Eof);
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(Received::Reset),
                Err(e) => return Err(e),
            }
        }
    }

    /// Decodes one event out of the buffered bytes, if they hold one.
    fn decode_one(&mut self) -> Option<Received> {
        let mut pos = 0;
        let result = loop {
            let step = self
                .decoder
                .decode(&mut self.buf[pos..], &self.config)
                .unwrap_or_else(|e| panic!("server sent a bad frame: {e}"));
            pos += step.consumed;
            match step.event {
                Some(event) => break Some(own(event)),
                None if step.consumed == 0 => break None,
                None => {}
            }
        };
        self.buf.drain(..pos);
        result
    }

    /// Reads frames until a Close, skipping data, pings and pongs; returns its code (`None` for
    /// an empty payload). Panics if the stream ends without one.
    pub fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.recv() {
                Received::Close(close) => return close.map(|(code, _)| code),
                Received::Eof => panic!("EOF without a close frame"),
                Received::Reset => panic!("reset without a close frame"),
                _ => {}
            }
        }
    }

    /// After the server's Close: the server closes TCP next (read returns 0).
    pub fn expect_eof(&mut self) {
        match self.recv() {
            Received::Eof => {}
            other => panic!("expected EOF, got {other:?}"),
        }
    }

    /// The next frame must be a Close with `code`, followed by EOF.
    pub fn expect_close_code(&mut self, code: u16) {
        match self.recv() {
            Received::Close(Some((got, _))) => assert_eq!(got, code, "close code"),
            other => panic!("expected Close {code}, got {other:?}"),
        }
        self.expect_eof();
    }

    /// Sends a text message and checks that it comes back.
    pub fn round_trip(&mut self, text: &str) {
        self.send_text(text);
        let expected = if text == "ping" { "pong" } else { text };
        match self.recv() {
            Received::Text(got) => assert_eq!(got, expected),
            other => panic!("expected the echo of {text:?}, got {other:?}"),
        }
    }

    /// A second client on a clone of the socket, to read on another thread while this one
    /// writes. Nothing may be buffered yet.
    pub fn reader(&self) -> RawClient {
        assert!(self.buf.is_empty() && self.decoder.is_idle());
        RawClient::from_parts(self.stream.try_clone().expect("clone socket"), Vec::new())
    }

    /// Half-closes our side (FIN).
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

fn own(event: Event<'_>) -> Received {
    match event {
        Event::Message {
            kind: MessageKind::Text,
            data,
        } => Received::Text(String::from_utf8(data.to_vec()).expect("validated text")),
        Event::Message {
            kind: MessageKind::Binary,
            data,
        } => Received::Binary(data.to_vec()),
        Event::Ping(p) => Received::Ping(p.to_vec()),
        Event::Pong(p) => Received::Pong(p.to_vec()),
        Event::Close(frame) => Received::Close(frame.map(|f| (f.code, f.reason.to_owned()))),
    }
}

/// Checks that a fresh client can still upgrade and get an echo: bad input on one connection
/// never harms others.
pub fn assert_server_healthy(addr: SocketAddr) {
    let mut client = RawClient::connect(addr, "/echo");
    client.round_trip("still alive");
    client.send_close(1000);
    client.expect_close_code(1000);
}

// ---------------------------------------------------------------------------------------------
// Push endpoint and push API helpers (tests/push_*.rs).
// ---------------------------------------------------------------------------------------------

/// The head of an upgrade to `target` (path and query) with extra header lines
/// (`"Name: value"`).
pub fn upgrade_request_with(target: &str, headers: &[&str]) -> String {
    let mut head = format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

/// Upgrades to `target` with extra header lines: the client on a 101, else the whole refusal
/// (read until the server closes).
pub fn try_upgrade(
    addr: SocketAddr,
    target: &str,
    headers: &[&str],
) -> Result<RawClient, HttpResponse> {
    let mut stream = connect(addr);
    stream
        .write_all(upgrade_request_with(target, headers).as_bytes())
        .expect("send upgrade");
    let (mut response, rest) = read_response_head(&mut stream);
    if response.status == 101 {
        assert_eq!(
            response.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "accept key"
        );
        return Ok(RawClient::from_parts(stream, rest));
    }
    let mut body = rest;
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the refusal: {e}"),
        }
    }
    response.body = body;
    Err(response)
}

impl RawClient {
    /// The next text frame, parsed as JSON (pings are skipped; anything else panics).
    pub fn recv_json(&mut self) -> serde_json::Value {
        loop {
            match self.recv() {
                Received::Text(text) => {
                    return serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("server sent bad JSON {text:?}: {e}"))
                }
                Received::Ping(_) => {}
                other => panic!("expected a JSON text frame, got {other:?}"),
            }
        }
    }

    /// Sends one JSON text frame.
    pub fn send_json(&mut self, value: &serde_json::Value) {
        self.send_text(&value.to_string());
    }

    /// Subscribes to `channel` and returns the `subscribed` answer (frames before it panic).
    pub fn subscribe(&mut self, channel: &str) -> serde_json::Value {
        self.send_json(&serde_json::json!({"op": "subscribe", "channel": channel}));
        let answer = self.recv_json();
        assert_eq!(answer["op"], "subscribed", "subscribe {channel}: {answer}");
        assert_eq!(answer["channel"], channel, "subscribe {channel}: {answer}");
        answer
    }

    /// The first frame on a push connection must be `subscribed` on `$user`: returns it.
    pub fn expect_user_subscribed(&mut self) -> serde_json::Value {
        let first = self.recv_json();
        assert_eq!(first["op"], "subscribed", "first frame: {first}");
        assert_eq!(first["channel"], "$user", "first frame: {first}");
        first
    }
}

/// Open mode: a push connection of `user` on `/ws`, past its `$user` subscribed frame.
pub fn push_client(addr: SocketAddr, user: &str) -> RawClient {
    let mut client = RawClient::connect(addr, &format!("/ws?user={user}"));
    client.expect_user_subscribed();
    client
}

/// A keep-alive HTTP/1.1 client for the push API that frames answers by `Content-Length`.
pub struct ApiClient {
    pub stream: TcpStream,
    /// Bytes read past the last answer.
    buf: Vec<u8>,
    /// Sent as `Authorization: Bearer KEY` when set.
    pub key: Option<String>,
}

impl ApiClient {
    pub fn connect(addr: SocketAddr) -> ApiClient {
        ApiClient {
            stream: connect(addr),
            buf: Vec::new(),
            key: None,
        }
    }

    pub fn with_key(addr: SocketAddr, key: &str) -> ApiClient {
        ApiClient {
            key: Some(key.to_owned()),
            ..ApiClient::connect(addr)
        }
    }

    /// The bytes of one request; a body gets `Content-Length` (and a JSON content type).
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Vec<u8> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        if let Some(key) = &self.key {
            head.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.unwrap_or("").as_bytes());
        bytes
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send API request");
    }

    /// One request and its answer.
    pub fn call(&mut self, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
        let request = self.request(method, path, body);
        self.send_raw(&request);
        self.read_response()
    }

    /// `POST path body`, which must answer 200 with a JSON body: returns it.
    pub fn post(&mut self, path: &str, body: &str) -> serde_json::Value {
        let response = self.call("POST", path, Some(body));
        assert_eq!(
            response.status,
            200,
            "POST {path} {body}: {}",
            response.body_text()
        );
        response.json()
    }

    /// `GET path`, which must answer 200 with a JSON body: returns it.
    pub fn get(&mut self, path: &str) -> serde_json::Value {
        let response = self.call("GET", path, None);
        assert_eq!(response.status, 200, "GET {path}: {}", response.body_text());
        response.json()
    }

    /// Reads the next answer: head, then exactly `Content-Length` bytes of body.
    pub fn read_response(&mut self) -> HttpResponse {
        let mut chunk = [0u8; 16384];
        loop {
            if let Some(response) = self.take_response() {
                return response;
            }
            let n = self.stream.read(&mut chunk).expect("read API answer");
            assert!(
                n > 0,
                "EOF before a complete answer; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// After an answer that said `Connection: close`: the server closes (read returns 0).
    pub fn expect_eof(&mut self) {
        assert!(self.buf.is_empty(), "bytes after the last answer");
        let mut chunk = [0u8; 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Ok(n) => panic!(
                "expected EOF, got {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(e) => panic!("expected EOF, got {e}"),
        }
    }

    fn take_response(&mut self) -> Option<HttpResponse> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        let head_len = match parsed.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return None,
            Err(e) => panic!(
                "bad answer head ({e}): {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        };
        let headers = owned_headers(parsed.headers);
        let status = parsed.code.expect("status code");
        let mut response = HttpResponse {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = if status == 100 {
            0
        } else {
            response
                .header("content-length")
                .expect("API answers carry Content-Length")
                .parse()
                .expect("numeric Content-Length")
        };
        if self.buf.len() < head_len + len {
            return None;
        }
        response.body = self.buf[head_len..head_len + len].to_vec();
        self.buf.drain(..head_len + len);
        Some(response)
    }
}

impl HttpResponse {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body_text()))
    }
}

/// The Python the tests run helper scripts with: `EDGEPUSH_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("EDGEPUSH_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".to_owned())
}

/// The Python to run a script needing `module` with, if it can import it. Without it the test
/// is skipped (said on stderr) — except under CI (`CI` set), where `.ci/run` installs every
/// such module into its venv and sets `EDGEPUSH_PYTHON`, so a missing one is a failure, never
/// a quiet skip.
pub fn python_with(module: &str, pip_name: &str) -> Option<String> {
    let python = python();
    let ok = std::process::Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    assert!(
        !in_ci,
        "CI is set but `{python} -c 'import {module}'` fails: .ci/run installs {pip_name} into \
         target/ci-venv and sets EDGEPUSH_PYTHON"
    );
    eprintln!(
        "SKIPPED: {python} cannot import {module} (pip install {pip_name}, or set EDGEPUSH_PYTHON)"
    );
    None
}

/// The real `edgepush` binary as its own process (for what one process must show on its own:
/// signals, RSS); killed and reaped on drop unless a test took the child to end it itself.
pub struct ServerProcess(pub Option<Child>);

impl ServerProcess {
    /// Starts the binary on free loopback ports (`--listen` and `--api-listen` on port 0,
    /// `--log info`) with `args` after those, and reads its log until it says where it listens.
    /// Returns it with that public address; the rest of its log is drained on a thread so the
    /// server never blocks on a full pipe.
    ///
    /// # Panics
    /// If the binary cannot start, or exits before listening.
    pub fn start(args: &[&str]) -> (ServerProcess, SocketAddr) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_edgepush"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
                "--log",
                "info",
            ])
            .args(args)
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start edgepush");
        let stderr = child.stderr.take().expect("stderr piped");
        let server = ServerProcess(Some(child));
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .expect("read server log");
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.trim().parse::<SocketAddr>().expect("address in log");
            }
        };
        thread::spawn(move || for _ in lines {});
        (server, addr)
    }

    /// The process id.
    ///
    /// # Panics
    /// If a test already took the child.
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map(Child::id).expect("server running")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
