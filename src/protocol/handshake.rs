//! The opening handshake (RFC 6455 §4.2): checking the client's HTTP/1.1 request, computing
//! `Sec-WebSocket-Accept`, and writing the 101 answer or the HTTP error the server owes. The
//! HTTP itself (parsing the head, writing responses) is [`crate::http`]'s; this file holds the
//! WebSocket rules on top of it.
//!
//! Parsing borrows the caller's buffer and allocates nothing (the header array lives on the
//! stack for up to [`http::MAX_HEADERS`] headers). A request that has not fully arrived is
//! `Ok(None)` and consumes nothing; the head is capped (`max_head_size`, `max_headers`) before
//! anything grows. The server routes on [`Request::path`] (an absolute-form target is served
//! like its path, RFC 9112 §3.2.2) and decides auth from the exposed headers; this module
//! knows nothing of endpoints.
//!
//! Besides the HTTP rules every request obeys ([`crate::http::request`]: target forms, `Host`,
//! `Origin`, `Authorization` and `Content-Length` at most once, body framing), an upgrade
//! request carries `Sec-WebSocket-Key` and `Sec-WebSocket-Version` once each (§11.3.1,
//! §11.3.5), `X-Real-IP` at most once (it names one address), and no body: the bytes after
//! the head are WebSocket frames.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use sha1::{Digest, Sha1};
use std::fmt;

use crate::http::body::Framing;
use crate::http::headers::has_token;
use crate::http::request::{parse_request as parse_head, query_param};
use crate::http::response::{
    write_header, write_response as write_http_response, write_status_line, Persistence,
};
use crate::http::{self, Status};
use crate::protocol::deflate::{self, Agreement};

/// §1.3: the GUID appended to the key before hashing.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Headers that fit the stack array; more are allowed through a heap array.
const STACK_HEADERS: usize = http::MAX_HEADERS;

/// Fields an upgrade request carries at most once, besides [`http::SINGLETON_FIELDS`].
const UPGRADE_SINGLETONS: [&str; 3] = ["sec-websocket-key", "sec-websocket-version", "x-real-ip"];

/// `--max-request-head`'s default: request line and headers, in bytes.
pub const DEFAULT_MAX_HEAD_SIZE: usize = 16 * 1024;

/// Limits and choices for the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeConfig {
    /// Largest request head (request line and headers) in bytes: 431 beyond
    /// (`--max-request-head`, default [`DEFAULT_MAX_HEAD_SIZE`]).
    pub max_head_size: usize,
    /// Most header lines: 431 beyond (default [`http::MAX_HEADERS`]).
    pub max_headers: usize,
    /// Subprotocols we speak, in our order of preference is irrelevant: the client's order wins.
    pub subprotocols: Vec<String>,
    /// Accept a `permessage-deflate` offer (RFC 7692); false with `--no-compression`.
    pub permessage_deflate: bool,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig {
            max_head_size: DEFAULT_MAX_HEAD_SIZE,
            max_headers: http::MAX_HEADERS,
            subprotocols: Vec::new(),
            permessage_deflate: true,
        }
    }
}

/// A complete, valid HTTP request head, borrowed from the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method token (`GET` for an upgrade).
    pub method: &'a str,
    /// The path without the query.
    pub path: &'a str,
    /// What follows `?`, undecoded.
    pub query: Option<&'a str>,
    /// `Host`, trimmed (never sent twice: 400); an upgrade must have one (§4.2.1 item 2).
    pub host: Option<&'a str>,
    /// `Origin` (§10.2), for the allow-list.
    pub origin: Option<&'a str>,
    /// `Cookie`, whole; see [`Request::cookie_value`].
    pub cookie: Option<&'a str>,
    /// `Authorization`, whole; see [`Request::bearer_token`].
    pub authorization: Option<&'a str>,
    /// `X-Forwarded-For`, as a trusted proxy sent it.
    pub x_forwarded_for: Option<&'a str>,
    /// `X-Real-IP`, as a trusted proxy sent it.
    pub x_real_ip: Option<&'a str>,
    /// Bytes of the head, including the blank line. Anything after it is the client's.
    pub head_len: usize,
    /// `Some` for a valid WebSocket upgrade; `None` for a plain HTTP request.
    pub upgrade: Option<Upgrade<'a>>,
}

/// What a valid upgrade request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upgrade<'a> {
    /// `Sec-WebSocket-Key`, checked to decode to 16 bytes.
    pub key: &'a str,
    /// The first subprotocol the client offered that we support.
    pub protocol: Option<&'a str>,
    /// The accepted `permessage-deflate` offer (RFC 7692 §5), when one was acceptable and
    /// the server negotiates compression.
    pub deflate: Option<Agreement>,
}

impl<'a> Request<'a> {
    /// The raw (undecoded) value of the first query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        query_param(self.query, name)
    }

    /// The value of cookie `name` from the `Cookie` header.
    pub fn cookie_value(&self, name: &str) -> Option<&'a str> {
        self.cookie?.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
    }

    /// The token of an `Authorization: Bearer TOKEN` header.
    pub fn bearer_token(&self) -> Option<&'a str> {
        let value = self.authorization?.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }
}

/// Why a request cannot be upgraded, and so which HTTP answer it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Not parseable as HTTP/1.x (400).
    Malformed,
    /// An upgrade request that breaks a rule of §4.2.1 (400); the text names the rule.
    BadUpgrade(&'static str),
    /// An upgrade attempted with a method other than GET (405, §4.2.1 item 1).
    MethodNotAllowed,
    /// `Sec-WebSocket-Version` is not 13 (426 with `Sec-WebSocket-Version: 13`, §4.4).
    UnsupportedVersion,
    /// The head grew past `max_head_size` (431).
    HeadTooLarge,
    /// More than `max_headers` header lines (431).
    TooManyHeaders,
    /// A request that breaks an HTTP/1.1 rule of [`crate::http`] other than its syntax: a
    /// request target not in origin or absolute form, a repeated singleton field, bad body
    /// framing. Answered with [`http::Error::status`] (400, or 501 for a transfer coding we
    /// do not decode).
    Http(http::Error),
}

impl HandshakeError {
    /// The HTTP status the server owes.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::Malformed | HandshakeError::BadUpgrade(_) => 400,
            HandshakeError::MethodNotAllowed => 405,
            HandshakeError::UnsupportedVersion => 426,
            HandshakeError::HeadTooLarge | HandshakeError::TooManyHeaders => 431,
            HandshakeError::Http(e) => e.status(),
        }
    }

    /// Appends the complete HTTP response for this error to `out`.
    pub fn write_response(&self, out: &mut Vec<u8>) {
        let reason = self.to_string();
        match self {
            HandshakeError::UnsupportedVersion => {
                write_response(out, 426, &[("Sec-WebSocket-Version", "13")], &reason)
            }
            HandshakeError::MethodNotAllowed => {
                write_response(out, 405, &[("Allow", "GET")], &reason)
            }
            _ => write_response(out, self.status(), &[], &reason),
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Malformed => f.write_str("malformed HTTP request"),
            HandshakeError::BadUpgrade(why) => write!(f, "bad WebSocket upgrade: {why}"),
            HandshakeError::MethodNotAllowed => f.write_str("WebSocket upgrade needs GET"),
            HandshakeError::UnsupportedVersion => f.write_str("only Sec-WebSocket-Version 13"),
            HandshakeError::HeadTooLarge => f.write_str("request head too large"),
            HandshakeError::TooManyHeaders => f.write_str("too many request headers"),
            HandshakeError::Http(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Parses the request head at the start of `buf`. `Ok(None)`: incomplete, read more (nothing is
/// consumed). `Ok(Some(request))`: a valid upgrade (`request.upgrade` is `Some`) or a plain
/// request. `Err`: the HTTP error to answer with, after which the connection is closed.
pub fn parse_request<'a>(
    buf: &'a [u8],
    config: &HandshakeConfig,
) -> Result<Option<Request<'a>>, HandshakeError> {
    let mut stack = [http::EMPTY_HEADER; STACK_HEADERS];
    let mut heap = Vec::new();
    let headers: &mut [http::Header<'a>] = if config.max_headers <= STACK_HEADERS {
        &mut stack[..config.max_headers]
    } else {
        heap.resize(config.max_headers, http::EMPTY_HEADER);
        &mut heap
    };
    let head = match parse_head(buf, headers, config.max_head_size) {
        Ok(Status::Complete(head)) => head,
        Ok(Status::Partial) => return Ok(None),
        Err(http::Error::HeadTooLarge) => return Err(HandshakeError::HeadTooLarge),
        Err(http::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders),
        Err(http::Error::Malformed(_)) => return Err(HandshakeError::Malformed),
        Err(e) => return Err(HandshakeError::Http(e)),
    };
    head.headers
        .check_once(&UPGRADE_SINGLETONS)
        .map_err(HandshakeError::Http)?;
    let has_body = match head.framing().map_err(HandshakeError::Http)? {
        Framing::Empty | Framing::Length(0) => false,
        Framing::Length(_) | Framing::Chunked | Framing::UntilClose => true,
    };
    let method = head.method;
    let mut request = Request {
        method,
        path: head.path,
        query: head.query,
        host: None,
        origin: None,
        cookie: None,
        authorization: None,
        x_forwarded_for: None,
        x_real_ip: None,
        head_len: head.len,
        upgrade: None,
    };
    let mut upgrade_header = None;
    let mut connection_has_upgrade = false;
    let mut key = None;
    let mut ws_version = None;
    let mut protocol = None;
    for header in head.headers.lines() {
        let Ok(value) = std::str::from_utf8(header.value) else {
            continue; // obs-text in a header we may not even read; ignored below if needed
        };
        let value = value.trim();
        let name = header.name;
        if name.eq_ignore_ascii_case("host") {
            request.host = Some(value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_header = Some(value);
        } else if name.eq_ignore_ascii_case("connection") {
            connection_has_upgrade |= has_token(value.as_bytes(), "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            ws_version = Some(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            if protocol.is_none() {
                protocol = value
                    .split(',')
                    .map(str::trim)
                    .find(|p| config.subprotocols.iter().any(|ours| ours == p));
            }
        } else if name.eq_ignore_ascii_case("origin") {
            request.origin = Some(value);
        } else if name.eq_ignore_ascii_case("cookie") {
            request.cookie = Some(value);
        } else if name.eq_ignore_ascii_case("authorization") {
            request.authorization = Some(value);
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            request.x_forwarded_for = Some(value);
        } else if name.eq_ignore_ascii_case("x-real-ip") {
            request.x_real_ip = Some(value);
        }
    }

    // Not a WebSocket attempt at all: a plain request for the server to route.
    if upgrade_header.is_none() && key.is_none() {
        return Ok(Some(request));
    }
    if method != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if head.minor_version < 1 {
        return Err(HandshakeError::BadUpgrade("HTTP/1.1 or later required"));
    }
    if has_body {
        return Err(HandshakeError::BadUpgrade("an upgrade request has no body"));
    }
    if request.host.is_none() {
        return Err(HandshakeError::BadUpgrade("missing Host"));
    }
    if !upgrade_header.is_some_and(|v| has_token(v.as_bytes(), "websocket")) {
        return Err(HandshakeError::BadUpgrade("Upgrade must be websocket"));
    }
    if !connection_has_upgrade {
        return Err(HandshakeError::BadUpgrade(
            "Connection must include upgrade",
        ));
    }
    match ws_version {
        Some("13") => {}
        Some(_) => return Err(HandshakeError::UnsupportedVersion),
        None => return Err(HandshakeError::BadUpgrade("missing Sec-WebSocket-Version")),
    }
    let Some(key) = key else {
        return Err(HandshakeError::BadUpgrade("missing Sec-WebSocket-Key"));
    };
    if !is_valid_key(key) {
        return Err(HandshakeError::BadUpgrade(
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ));
    }
    let deflate = if config.permessage_deflate {
        deflate::negotiate(
            head.headers
                .get_all("sec-websocket-extensions")
                .filter_map(|v| std::str::from_utf8(v).ok()),
        )
    } else {
        None
    };
    request.upgrade = Some(Upgrade {
        key,
        protocol,
        deflate,
    });
    Ok(Some(request))
}

fn is_valid_key(key: &str) -> bool {
    let mut decoded = [0u8; 18];
    key.len() == 24 && matches!(BASE64.decode_slice(key, &mut decoded), Ok(16))
}

/// `Sec-WebSocket-Accept` for `key` (§4.2.2 item 5.4): base64(SHA-1(key + GUID)).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    let digest = sha.finalize();
    let mut out = [0u8; 28];
    // 20 bytes always encode to exactly 28 base64 characters.
    let _ = BASE64.encode_slice(digest, &mut out);
    out
}

/// Appends the 101 Switching Protocols response for a validated upgrade to `out`.
pub fn write_accept_response(out: &mut Vec<u8>, upgrade: &Upgrade<'_>) {
    write_status_line(out, 101);
    write_header(out, "Upgrade", "websocket");
    write_header(out, "Connection", "Upgrade");
    let accept = accept_key(upgrade.key.as_bytes());
    // Base64 is ASCII, so this is always the whole key.
    write_header(
        out,
        "Sec-WebSocket-Accept",
        std::str::from_utf8(&accept).unwrap_or_default(),
    );
    if let Some(protocol) = upgrade.protocol {
        write_header(out, "Sec-WebSocket-Protocol", protocol);
    }
    if let Some(deflate) = upgrade.deflate {
        let mut value = String::new();
        deflate.write_response_value(&mut value);
        write_header(out, "Sec-WebSocket-Extensions", &value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a complete HTTP/1.1 response with a plain-text body to `out`. The connection is
/// closed after it (`Connection: close`): the server speaks HTTP only to upgrade or to answer.
pub fn write_response(out: &mut Vec<u8>, status: u16, headers: &[(&str, &str)], body: &str) {
    write_http_response(
        out,
        status,
        "text/plain; charset=utf-8",
        body.as_bytes(),
        Persistence::Close,
        headers,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET /chat?user=42&x=1 HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\nCookie: a=1; token=abc\r\nAuthorization: Bearer xyz\r\n\r\n";

    fn parse(req: &str) -> Result<Option<Request<'_>>, HandshakeError> {
        parse_request(req.as_bytes(), &HandshakeConfig::default())
    }

    #[test]
    fn rfc_1_3_accept_key() {
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn good_request_exposes_everything() {
        let config = HandshakeConfig {
            subprotocols: vec!["superchat".into()],
            ..HandshakeConfig::default()
        };
        let r = parse_request(GOOD.as_bytes(), &config).unwrap().unwrap();
        assert_eq!(
            (r.method, r.path, r.query),
            ("GET", "/chat", Some("user=42&x=1"))
        );
        assert_eq!(r.query_param("user"), Some("42"));
        assert_eq!(r.query_param("nope"), None);
        assert_eq!(r.origin, Some("http://example.com"));
        assert_eq!(r.cookie_value("token"), Some("abc"));
        assert_eq!(r.bearer_token(), Some("xyz"));
        assert_eq!(r.head_len, GOOD.len());
        let up = r.upgrade.unwrap();
        assert_eq!(up.protocol, Some("superchat"));
        let mut out = Vec::new();
        write_accept_response(&mut out, &up);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: superchat\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn unsupported_subprotocol_is_never_echoed() {
        let r = parse(GOOD).unwrap().unwrap();
        assert_eq!(r.upgrade.unwrap().protocol, None);
    }

    #[test]
    fn partial_at_every_cut() {
        for cut in 0..GOOD.len() {
            assert_eq!(parse(&GOOD[..cut]), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn plain_get_is_reported_as_such() {
        let r = parse("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((r.path, r.upgrade), ("/healthz", None));
        let r = parse("POST /x HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.method, "POST");
    }

    #[test]
    fn rule_table() {
        let replace = |from: &str, to: &str| GOOD.replacen(from, to, 1);
        let cases: Vec<(&str, String, HandshakeError, u16)> = vec![
            (
                "post",
                replace("GET", "POST"),
                HandshakeError::MethodNotAllowed,
                405,
            ),
            (
                "http/1.0",
                replace("HTTP/1.1", "HTTP/1.0"),
                HandshakeError::BadUpgrade("HTTP/1.1 or later required"),
                400,
            ),
            (
                "no host",
                replace("Host: server.example.com\r\n", ""),
                HandshakeError::Http(crate::http::Error::MissingHost),
                400,
            ),
            (
                "upgrade h2c",
                replace("Upgrade: websocket", "Upgrade: h2c"),
                HandshakeError::BadUpgrade("Upgrade must be websocket"),
                400,
            ),
            (
                "connection close",
                replace("Connection: Upgrade", "Connection: close"),
                HandshakeError::BadUpgrade("Connection must include upgrade"),
                400,
            ),
            (
                "version 8",
                replace("Version: 13", "Version: 8"),
                HandshakeError::UnsupportedVersion,
                426,
            ),
            (
                "no version",
                replace("Sec-WebSocket-Version: 13\r\n", ""),
                HandshakeError::BadUpgrade("missing Sec-WebSocket-Version"),
                400,
            ),
            (
                "no key",
                replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
                HandshakeError::BadUpgrade("missing Sec-WebSocket-Key"),
                400,
            ),
            (
                "short key",
                replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ=="),
                HandshakeError::BadUpgrade("Sec-WebSocket-Key must be 16 bytes in base64"),
                400,
            ),
            (
                "garbage key",
                replace("dGhlIHNhbXBsZSBub25jZQ==", "!!!!!!!!!!!!!!!!!!!!!!!!"),
                HandshakeError::BadUpgrade("Sec-WebSocket-Key must be 16 bytes in base64"),
                400,
            ),
            (
                "garbage",
                "GET\x01 / HTTP/1.1\r\n\r\n".into(),
                HandshakeError::Malformed,
                400,
            ),
        ];
        for (name, req, err, status) in cases {
            assert_eq!(parse(&req), Err(err), "{name}");
            assert_eq!(err.status(), status, "{name}");
        }
        // Tokens: case-insensitive and in lists.
        let tokens = replace("Connection: Upgrade", "Connection: keep-alive, UPGRADE")
            .replace("Upgrade: websocket", "Upgrade: WebSocket");
        assert!(parse(&tokens).unwrap().unwrap().upgrade.is_some());
    }

    #[test]
    fn http_rules_on_the_upgrade() {
        use crate::http::Error as E;
        let replace = |from: &str, to: &str| GOOD.replacen(from, to, 1);
        let add = |header: &str| GOOD.replacen("\r\n\r\n", &format!("\r\n{header}\r\n\r\n"), 1);
        let cases: Vec<(&str, String, HandshakeError, u16)> = vec![
            (
                "two Host, same value",
                add("Host: server.example.com"),
                HandshakeError::Http(E::RepeatedField("host")),
                400,
            ),
            (
                "two Origin",
                add("Origin: http://example.com"),
                HandshakeError::Http(E::RepeatedField("origin")),
                400,
            ),
            (
                "two keys",
                add("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="),
                HandshakeError::Http(E::RepeatedField("sec-websocket-key")),
                400,
            ),
            (
                "two versions",
                add("Sec-WebSocket-Version: 13"),
                HandshakeError::Http(E::RepeatedField("sec-websocket-version")),
                400,
            ),
            (
                "two Authorization",
                add("Authorization: Bearer xyz"),
                HandshakeError::Http(E::RepeatedField("authorization")),
                400,
            ),
            (
                "two X-Real-IP",
                add("X-Real-IP: 1.2.3.4\r\nX-Real-IP: 1.2.3.5"),
                HandshakeError::Http(E::RepeatedField("x-real-ip")),
                400,
            ),
            (
                "fragment",
                replace("/chat?user=42&x=1", "/chat?user=bob#x"),
                HandshakeError::Http(E::BadTarget),
                400,
            ),
            (
                "asterisk form",
                replace("/chat?user=42&x=1", "*"),
                HandshakeError::Http(E::BadTarget),
                400,
            ),
            (
                "authority form",
                replace("/chat?user=42&x=1", "server.example.com:80"),
                HandshakeError::Http(E::BadTarget),
                400,
            ),
            (
                "a body",
                add("Content-Length: 5"),
                HandshakeError::BadUpgrade("an upgrade request has no body"),
                400,
            ),
            (
                "a chunked body",
                add("Transfer-Encoding: chunked"),
                HandshakeError::BadUpgrade("an upgrade request has no body"),
                400,
            ),
            (
                "length and chunked",
                add("Transfer-Encoding: chunked\r\nContent-Length: 0"),
                HandshakeError::Http(E::LengthWithTransferEncoding),
                400,
            ),
            (
                "unknown coding",
                add("Transfer-Encoding: gzip, chunked"),
                HandshakeError::Http(E::UnsupportedTransferCoding),
                501,
            ),
        ];
        for (name, req, err, status) in cases {
            assert_eq!(parse(&req), Err(err), "{name}");
            assert_eq!(err.status(), status, "{name}");
            let mut out = Vec::new();
            err.write_response(&mut out);
            assert!(
                out.starts_with(format!("HTTP/1.1 {status} ").as_bytes()),
                "{name}"
            );
        }
        // Absolute form is served like its path and query; an empty body is no body.
        for target in [
            "http://server.example.com/chat?user=42&x=1",
            "HTTP://127.0.0.1:8080/chat?user=42&x=1",
        ] {
            let req = replace("/chat?user=42&x=1", target)
                .replace("Version: 13\r\n", "Version: 13\r\nContent-Length: 0\r\n");
            let r = parse(&req).unwrap().unwrap();
            assert_eq!(
                (r.path, r.query),
                ("/chat", Some("user=42&x=1")),
                "{target}"
            );
            assert!(r.upgrade.is_some());
        }
        // A plain request gets the same rules.
        assert_eq!(
            parse("GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(HandshakeError::Http(E::RepeatedField("host")))
        );
    }

    #[test]
    fn a_browser_head_with_a_big_cookie_fits_the_default() {
        // 8.7 KB of cookies (issue 12 item 3) and 40 more fields.
        let mut req = GOOD.replace(
            "Cookie: a=1; token=abc",
            &format!("Cookie: a={}; token=abc", "c".repeat(8700)),
        );
        let extra: String = (0..40).map(|i| format!("X-Extra-{i}: v\r\n")).collect();
        req = req.replacen("\r\n\r\n", &format!("\r\n{extra}\r\n"), 1);
        let r = parse(&req).unwrap().unwrap();
        assert_eq!(r.cookie_value("token"), Some("abc"));
        assert!(r.upgrade.is_some());
        // Beyond the default: 431.
        let big = GOOD.replace("a=1", &"c".repeat(DEFAULT_MAX_HEAD_SIZE));
        assert_eq!(parse(&big), Err(HandshakeError::HeadTooLarge));
    }

    #[test]
    fn head_and_header_caps() {
        let config = HandshakeConfig {
            max_head_size: 100,
            max_headers: 4,
            ..HandshakeConfig::default()
        };
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(200));
        assert_eq!(
            parse_request(long.as_bytes(), &config),
            Err(HandshakeError::HeadTooLarge)
        );
        let few = HandshakeConfig {
            max_headers: 4,
            ..HandshakeConfig::default()
        };
        assert_eq!(
            parse_request(GOOD.as_bytes(), &few),
            Err(HandshakeError::TooManyHeaders)
        );
        assert_eq!(HandshakeError::TooManyHeaders.status(), 431);
        let many = HandshakeConfig {
            max_headers: 100,
            ..HandshakeConfig::default()
        };
        assert!(parse_request(GOOD.as_bytes(), &many).unwrap().is_some());
    }

    #[test]
    fn error_responses_render() {
        let mut out = Vec::new();
        HandshakeError::UnsupportedVersion.write_response(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
