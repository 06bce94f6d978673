//! The push API's HTTP layer, sans IO: turns the bytes buffered for one API connection into a
//! command (or the error answer it earns) and renders the answers. The hub thread owns the
//! sockets; it calls [`parse`] on its buffer, executes the [`ApiCommand`], and writes what
//! [`json_response`] / [`text_response`] return.
//!
//! HTTP/1.1 with keep-alive and pipelining: [`parse`] reports how many bytes one request took and
//! leaves the rest for the next call. HTTP/1.0 closes unless the client asked for keep-alive.
//! The HTTP itself (heads, framing, bodies by length, response writing) is [`crate::http`]'s;
//! this file holds the API's policy on top of it: routes, auth, limits and JSON.
//!
//! Decisions, in the order they are taken for a request:
//! 1. Head larger than [`ApiLimits::max_head`] or with too many header lines: 431, close.
//!    Unparseable head, a request target in neither origin nor absolute form (or with a `#`),
//!    a repeated singleton field (`Host`, `Content-Length`, `Authorization`, `Origin`), or a
//!    `Content-Length` that is not one decimal number: 400, close. See [`crate::http::request`].
//! 2. Framing (RFC 9112 §6.1, §6.3): `Transfer-Encoding` with `Content-Length`, codings that
//!    do not end in one `chunked`, or `Transfer-Encoding` in HTTP/1.0: 400, close; another
//!    coding before `chunked`: 501, close.
//! 3. Auth (RFC 6750 §2.1 `Authorization: Bearer KEY`, on every path when a key is set): 401
//!    with `WWW-Authenticate: Bearer`. Then the route: 404 unknown path, 405 with `Allow`.
//!    The one exception is the status page (`GET /`, `GET /status`, [`STATUS_PAGE`]): it holds
//!    nothing secret and asks the operator for the key, which its own requests then carry.
//! 4. `POST` with neither `Content-Length` nor chunked: 411, close (a body we cannot frame may
//!    follow). `Content-Length` above [`ApiLimits::max_body`], or chunk sizes that add up past
//!    it: 413, close, decided as soon as the sizes are known, before the data arrives (a
//!    401/404/405 decided in step 3 wins, but also closes). A chunked body (extensions and
//!    trailers ignored) that takes more than [`ApiLimits::max_chunked_wire`] bytes on the
//!    wire: 413, close. Bad chunk syntax: 400, close.
//! 5. The body is looked at only once fully buffered ([`Parsed::Partial`] until then); every error
//!    from here on, and every 401/404/405, consumes the whole request and keeps the connection
//!    as the client asked.
//! 6. Strict JSON: the body is an object, required keys present, no unknown or duplicate keys,
//!    `channel`/`user` strings that pass [`names`](crate::push::names) (and publishing to a
//!    `$` channel is refused: those are the server's). `data` is any JSON value, `null`
//!    included, but the key must be there. Every such error is a 400 whose body names the field.
//! 7. The POST routes take one optional JSON field more, `idempotency_key` (a string of 1 to
//!    [`MAX_IDEMPOTENCY_KEY`] bytes), and one query parameter, `wait=delivered`
//!    ([`Wait::Delivered`]); any other query parameter, or another `wait` value, is a 400
//!    naming the parameter. See [`PostOptions`].

use crate::http::body::{chunked_body, chunked_extent, length_body, Framing};
use crate::http::request::{parse_request, percent_decode, query_param};
use crate::http::response::{write_response, Persistence};
use crate::http::{self, Status};
use crate::push::auth::constant_time_eq;
use crate::push::hub::{Wait, MAX_IDEMPOTENCY_KEY};
use crate::push::json_depth::{data_too_deep, DATA_TOO_DEEP};
use crate::push::names::{validate_channel, validate_user};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The operator status page (`static/status.html`), served at `GET /` and `GET /status` without
/// the key: plain HTML, CSS and JS (SVG charts drawn by the page), nothing fetched from elsewhere.
/// It asks for `--api-key` and sends it as `Authorization: Bearer` on its `/api/stats` and
/// `/api/nodes` requests (once a second).
pub const STATUS_PAGE: &str = include_str!("../../static/status.html");

/// Header lines a request may carry: 431 beyond.
const MAX_HEADERS: usize = http::MAX_HEADERS;

/// What a chunked body may take on the wire beyond twice [`ApiLimits::max_body`]: chunk
/// lines and the trailer section.
const CHUNKED_SLACK: usize = 64 * 1024;

/// Size limits for one API request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Request line and headers, blank line included: 431 beyond (the server passes
    /// `--max-request-head`, 16 KiB by default).
    pub max_head: usize,
    /// A body (by `Content-Length`, or decoded from chunks) above this gets 413 (the server
    /// passes `--max-message-size`).
    pub max_body: usize,
}

impl ApiLimits {
    /// The most bytes a chunked body may take on the wire, chunk lines and trailers included:
    /// twice `max_body` plus 64 KiB (chunks of 6 bytes or more fit at any body size). A client
    /// that sends more gets 413: so the buffered input of one request stays bounded by
    /// [`ApiLimits::max_buffered`].
    pub fn max_chunked_wire(&self) -> usize {
        self.max_body
            .saturating_mul(2)
            .saturating_add(CHUNKED_SLACK)
    }

    /// The most bytes one request takes in the input buffer: head plus the largest body on
    /// the wire. A connection holding more unparsed input has requests waiting behind it.
    pub fn max_buffered(&self) -> usize {
        self.max_head.saturating_add(self.max_chunked_wire())
    }
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_head: crate::protocol::handshake::DEFAULT_MAX_HEAD_SIZE,
            max_body: 1024 * 1024,
        }
    }
}

/// What every POST route takes besides its own fields: when to answer, and the client's
/// idempotency key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostOptions {
    /// `?wait=delivered` ([`Wait::Delivered`]); [`Wait::Sequenced`] without it.
    pub wait: Wait,
    /// `"idempotency_key"`: 1 to [`MAX_IDEMPOTENCY_KEY`] bytes, if given (`null` is absent).
    pub idempotency_key: Option<String>,
}

/// What an API request asks the hub to do; names are already validated.
#[derive(Debug)]
pub enum ApiCommand {
    /// `POST /api/publish {"channel":…,"data":…}`; `channel` never starts with `$`.
    Publish {
        /// The channel name, valid per [`validate_channel`].
        channel: String,
        /// The `data` value exactly as the client wrote it (any JSON, `null` included); it is
        /// put unparsed into the `{"op":"message",…}` frames the subscribers get.
        data: Box<RawValue>,
        /// `?wait=` and `idempotency_key`.
        options: PostOptions,
    },
    /// `POST /api/send {"user":…,"data":…}`: to every connection of that user, through its
    /// `$user` stream.
    Send {
        /// The user id, valid per [`validate_user`].
        user: String,
        /// The `data` value verbatim, as for [`ApiCommand::Publish`].
        data: Box<RawValue>,
        /// `?wait=` and `idempotency_key`.
        options: PostOptions,
    },
    /// `POST /api/broadcast {"data":…}`: to every push-endpoint connection (not echo ones), as
    /// channel `$broadcast`, without a seq and not kept in history.
    Broadcast {
        /// The `data` value verbatim, as for [`ApiCommand::Publish`].
        data: Box<RawValue>,
        /// `?wait=` and `idempotency_key`.
        options: PostOptions,
    },
    /// `POST /api/disconnect {"user":…}`: close every connection of that user with 4000
    /// ([`crate::protocol::close::DISCONNECTED`]).
    Disconnect {
        /// The user id, valid per [`validate_user`].
        user: String,
        /// `?wait=` and `idempotency_key`.
        options: PostOptions,
    },
    /// `GET /api/stats`
    Stats,
    /// `GET /api/presence?channel=…` (the value percent-decoded)
    Presence {
        /// The channel whose subscribed users are listed, valid per [`validate_channel`].
        channel: String,
    },
    /// `GET /metrics`
    Metrics,
    /// `GET /api/nodes`
    Nodes,
    /// `GET /` or `GET /status`: the [`STATUS_PAGE`] (the only route that needs no key);
    /// answer it with [`status_page_response`].
    StatusPage,
}

/// The outcome of [`parse`] on a connection's buffer.
#[derive(Debug)]
#[must_use]
pub enum Parsed {
    /// Need more bytes (nothing consumed).
    Partial,
    /// A complete request: it took the first `consumed` bytes of the buffer. Answer it, then
    /// keep the connection iff `keep_alive` (pass the same flag to the response function).
    Request {
        /// Bytes of the buffer this request took (head and body); drop them before the next
        /// [`parse`], which reads the next pipelined request.
        consumed: usize,
        /// Keep the connection after the answer: HTTP/1.1 without `Connection: close`, or
        /// HTTP/1.0 with `Connection: keep-alive` (RFC 9112 section 9.3).
        keep_alive: bool,
        /// What the hub is to do.
        command: ApiCommand,
    },
    /// A request that gets this error answer, already rendered. Drop the first `consumed` bytes;
    /// if `close`, close the connection once `response` is written (the rest of the buffer is
    /// not to be read: unparseable HTTP, 411, 413 with the body unread, 431, or a client that
    /// did not ask for keep-alive). The response's `Connection` header already says so.
    Reject {
        /// Bytes of the buffer to drop: the whole request when the connection stays; with
        /// `close`, the whole buffer or only the head (an unread body), as nothing more is read.
        consumed: usize,
        /// Close the connection once `response` is written.
        close: bool,
        /// The whole HTTP response (status line, headers, JSON error body), ready to write.
        response: Vec<u8>,
    },
}

impl Parsed {
    /// True for [`Parsed::Partial`].
    pub fn is_partial(&self) -> bool {
        matches!(self, Parsed::Partial)
    }
}

/// Parses the request at the start of `buf`. `api_key`: when `Some`, every request must carry
/// `Authorization: Bearer <api_key>`. Sizes are checked against `limits` before the body is
/// looked at; the head is never scanned past `limits.max_head`.
pub fn parse(buf: &[u8], api_key: Option<&str>, limits: &ApiLimits) -> Parsed {
    let mut headers = [http::EMPTY_HEADER; MAX_HEADERS];
    let head = match parse_request(buf, &mut headers, limits.max_head) {
        Ok(Status::Complete(head)) => head,
        Ok(Status::Partial) => return Parsed::Partial,
        Err(http::Error::HeadTooLarge | http::Error::TooManyHeaders) => {
            return reject_now(buf.len(), Failure::new(431, "request head too large"))
        }
        Err(e) => return reject_now(buf.len(), Failure::new(e.status(), &e.to_string())),
    };
    // Framing problems: we cannot tell where this request ends, so nothing after it is usable.
    let framing = match head.framing() {
        Ok(framing) => framing,
        Err(e) => return reject_now(buf.len(), Failure::new(e.status(), &e.to_string())),
    };

    let routed = match route(head.method, head.path) {
        Ok(Route::StatusPage) => Ok(Route::StatusPage),
        routed => authorize(head.headers.get("authorization"), api_key).and(routed),
    };
    let keep_alive = head.keep_alive();
    let after_head = &buf[head.len..];
    // The body will not be read, so the connection cannot go on after the answer. A 401, 404
    // or 405 decided from the head wins over 413.
    let unread = |failure: Failure| reject_now(head.len, routed.clone().err().unwrap_or(failure));
    let too_large = || Failure::new(413, &format!("body larger than {} bytes", limits.max_body));
    let mut decoded = Vec::new();
    let (body, wire_len): (&[u8], usize) = match framing {
        Framing::Length(n) => match length_body(after_head, n, limits.max_body) {
            Ok(Status::Complete(body)) => (body, body.len()),
            Ok(Status::Partial) => return Parsed::Partial,
            Err(_) => return unread(too_large()),
        },
        Framing::Chunked => match chunked_extent(after_head, limits.max_body) {
            Ok(Status::Complete(n)) => {
                // The same bytes decode as they scanned.
                if chunked_body(&after_head[..n], limits.max_body, &mut decoded).is_err() {
                    return unread(Failure::new(400, "malformed chunked body"));
                }
                (&decoded[..], n)
            }
            Ok(Status::Partial) if after_head.len() > limits.max_chunked_wire() => {
                return unread(Failure::new(
                    413,
                    &format!(
                        "chunked body takes more than {} bytes",
                        limits.max_chunked_wire()
                    ),
                ))
            }
            Ok(Status::Partial) => return Parsed::Partial,
            Err(http::Error::BodyTooLarge) => return unread(too_large()),
            Err(e) => return unread(Failure::new(e.status(), &e.to_string())),
        },
        Framing::Empty | Framing::UntilClose => match &routed {
            Ok(route) if route.method() == "POST" => {
                return reject_now(
                    buf.len(),
                    Failure::new(
                        411,
                        "Content-Length (or Transfer-Encoding: chunked) is required",
                    ),
                )
            }
            _ => (&[][..], 0),
        },
    };
    let consumed = head.len + wire_len;
    match routed.and_then(|route| command(route, head.query, body)) {
        Ok(command) => Parsed::Request {
            consumed,
            keep_alive,
            command,
        },
        Err(failure) => Parsed::Reject {
            consumed,
            close: !keep_alive,
            response: failure.render(keep_alive),
        },
    }
}

/// Whether the complete request head at the start of `buf` carries `Expect: 100-continue`
/// (RFC 9110 §10.1.1): when [`parse`] says [`Parsed::Partial`] for such a request, the
/// server sends `100 Continue` once, or the client waits (curl: a second) before the body.
pub fn expects_continue(buf: &[u8], limits: &ApiLimits) -> bool {
    let mut headers = [http::EMPTY_HEADER; MAX_HEADERS];
    matches!(
        parse_request(buf, &mut headers, limits.max_head),
        Ok(Status::Complete(head)) if head.expects_continue()
    )
}

/// An `application/json` answer: `body` must already be JSON text.
/// A 503 (full inboxes, the cluster's store unreachable) carries `Retry-After: 1`.
pub fn json_response(status: u16, body: &str, keep_alive: bool) -> Vec<u8> {
    let retry: &[(&str, &str)] = if status == 503 {
        &[("Retry-After", "1")]
    } else {
        &[]
    };
    response(
        status,
        retry,
        "application/json",
        body.as_bytes(),
        keep_alive,
    )
}

/// An answer with the given content type, e.g. `text/plain; version=0.0.4` for `/metrics`.
pub fn text_response(status: u16, content_type: &str, body: &str, keep_alive: bool) -> Vec<u8> {
    response(status, &[], content_type, body.as_bytes(), keep_alive)
}

/// The answer to [`ApiCommand::StatusPage`]: the [`STATUS_PAGE`] as `text/html`, not cached
/// (a new binary serves its own page), with a Content-Security-Policy that lets it run only its
/// own inline script and style, talk only to this listener, and never be framed (it takes a key).
pub fn status_page_response(keep_alive: bool) -> Vec<u8> {
    response(
        200,
        &[
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            (
                "Content-Security-Policy",
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                 frame-ancestors 'none'",
            ),
        ],
        "text/html; charset=utf-8",
        STATUS_PAGE.as_bytes(),
        keep_alive,
    )
}

/// The JSON error body `{"error":"…","field":"…"}` (`"field":null` when no field is to blame),
/// escaped properly whatever the message and field hold.
pub fn error_body(message: &str, field: Option<&str>) -> String {
    serde_json::json!({ "error": message, "field": field }).to_string()
}

fn response(
    status: u16,
    extra_headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    let persistence = Persistence::from_keep_alive(keep_alive);
    write_response(
        &mut out,
        status,
        content_type,
        body,
        persistence,
        extra_headers,
    );
    out
}

/// An error answer not yet rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    status: u16,
    message: String,
    field: Option<String>,
    /// `WWW-Authenticate` for 401, `Allow` for 405.
    header: Option<(&'static str, &'static str)>,
}

impl Failure {
    fn new(status: u16, message: &str) -> Self {
        Failure {
            status,
            message: message.to_owned(),
            field: None,
            header: None,
        }
    }

    /// A 400 blaming `field`.
    fn bad(message: &str, field: &str) -> Self {
        Failure {
            field: Some(field.to_owned()),
            ..Failure::new(400, message)
        }
    }

    fn render(&self, keep_alive: bool) -> Vec<u8> {
        let body = error_body(&self.message, self.field.as_deref());
        let headers: &[(&str, &str)] = match &self.header {
            Some(h) => std::slice::from_ref(h),
            None => &[],
        };
        response(
            self.status,
            headers,
            "application/json",
            body.as_bytes(),
            keep_alive,
        )
    }
}

/// Answer and close: the rest of the buffer is not to be read.
fn reject_now(consumed: usize, failure: Failure) -> Parsed {
    Parsed::Reject {
        consumed,
        close: true,
        response: failure.render(false),
    }
}

/// RFC 6750 §2.1: `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 9110
/// §11.1), the token compared in constant time.
fn authorize(authorization: Option<&[u8]>, api_key: Option<&str>) -> Result<(), Failure> {
    let Some(key) = api_key else {
        return Ok(());
    };
    let unauthorized = |message: &str| Failure {
        header: Some(("WWW-Authenticate", "Bearer")),
        ..Failure::new(401, message)
    };
    let Some(value) = authorization else {
        return Err(unauthorized("missing Authorization: Bearer header"));
    };
    let value = value.trim_ascii();
    let token = match value.split_at_checked(7) {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer ") => token.trim_ascii(),
        _ => return Err(unauthorized("Authorization must use the Bearer scheme")),
    };
    if constant_time_eq(token, key.as_bytes()) {
        Ok(())
    } else {
        Err(unauthorized("invalid API key"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Publish,
    Send,
    Broadcast,
    Disconnect,
    Stats,
    Presence,
    Metrics,
    Nodes,
    StatusPage,
}

const ROUTES: &[(&str, Route)] = &[
    ("/api/publish", Route::Publish),
    ("/api/send", Route::Send),
    ("/api/broadcast", Route::Broadcast),
    ("/api/disconnect", Route::Disconnect),
    ("/api/stats", Route::Stats),
    ("/api/presence", Route::Presence),
    ("/metrics", Route::Metrics),
    ("/api/nodes", Route::Nodes),
    ("/", Route::StatusPage),
    ("/status", Route::StatusPage),
];

impl Route {
    fn method(self) -> &'static str {
        match self {
            Route::Publish | Route::Send | Route::Broadcast | Route::Disconnect => "POST",
            Route::Stats | Route::Presence | Route::Metrics | Route::Nodes | Route::StatusPage => {
                "GET"
            }
        }
    }
}

fn route(method: &str, path: &str) -> Result<Route, Failure> {
    let Some(&(_, route)) = ROUTES.iter().find(|(p, _)| *p == path) else {
        return Err(Failure::new(404, "no such endpoint"));
    };
    if method != route.method() {
        return Err(Failure {
            header: Some(("Allow", route.method())),
            ..Failure::new(405, &format!("{path} takes {}", route.method()))
        });
    }
    Ok(route)
}

fn command(route: Route, query: Option<&str>, body: &[u8]) -> Result<ApiCommand, Failure> {
    Ok(match route {
        Route::Publish => {
            let wait = wait(query)?;
            let b: PublishBody = json_object(body)?;
            ApiCommand::Publish {
                channel: publish_channel(string_field(b.channel, "channel")?)?,
                data: data(b.data)?,
                options: options(wait, b.idempotency_key)?,
            }
        }
        Route::Send => {
            let wait = wait(query)?;
            let b: SendBody = json_object(body)?;
            ApiCommand::Send {
                user: user(string_field(b.user, "user")?)?,
                data: data(b.data)?,
                options: options(wait, b.idempotency_key)?,
            }
        }
        Route::Broadcast => {
            let wait = wait(query)?;
            let b: BroadcastBody = json_object(body)?;
            ApiCommand::Broadcast {
                data: data(b.data)?,
                options: options(wait, b.idempotency_key)?,
            }
        }
        Route::Disconnect => {
            let wait = wait(query)?;
            let b: DisconnectBody = json_object(body)?;
            ApiCommand::Disconnect {
                user: user(string_field(b.user, "user")?)?,
                options: options(wait, b.idempotency_key)?,
            }
        }
        Route::Stats => ApiCommand::Stats,
        Route::Metrics => ApiCommand::Metrics,
        Route::Nodes => ApiCommand::Nodes,
        Route::StatusPage => ApiCommand::StatusPage,
        Route::Presence => {
            let raw = query_param(query, "channel")
                .ok_or_else(|| Failure::bad("missing query parameter channel", "channel"))?;
            let channel = percent_decode(raw).ok_or_else(|| {
                Failure::bad("channel is not valid percent-encoded UTF-8", "channel")
            })?;
            validate_channel(&channel).map_err(|e| Failure::bad(&e.to_string(), "channel"))?;
            ApiCommand::Presence { channel }
        }
    })
}

// Each field is first taken as raw JSON, so serde reports missing, unknown and duplicate keys
// by name, and a wrong type is reported by `string_field` for the field it concerns (serde_json's
// own "invalid type" messages do not say which field).

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    #[serde(borrow)]
    channel: &'a RawValue,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow, default)]
    idempotency_key: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody<'a> {
    #[serde(borrow)]
    user: &'a RawValue,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow, default)]
    idempotency_key: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow, default)]
    idempotency_key: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody<'a> {
    #[serde(borrow)]
    user: &'a RawValue,
    #[serde(borrow, default)]
    idempotency_key: Option<&'a RawValue>,
}

/// The body as one JSON object of shape `T`.
fn json_object<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Failure> {
    let text =
        std::str::from_utf8(body).map_err(|_| Failure::new(400, "body is not valid UTF-8"))?;
    // serde's derived structs also accept a JSON array (fields by position): refuse it here.
    let first = text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .bytes()
        .next();
    if first != Some(b'{') {
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => Failure::new(400, "body must be a JSON object"),
            Err(e) => Failure::new(400, &format!("invalid JSON: {e}")),
        });
    }
    serde_json::from_str(text).map_err(|e| {
        if !e.is_data() {
            return Failure::new(400, &format!("invalid JSON: {e}"));
        }
        let message = e.to_string();
        for kind in ["missing field", "unknown field", "duplicate field"] {
            if let Some(field) = quoted_field(&message, kind) {
                return Failure::bad(kind, field);
            }
        }
        Failure::new(400, &message)
    })
}

/// The name in serde's "<kind> `name`…" messages. An unknown key is the client's and may hold
/// anything, backticks included: it ends where serde's own suffix ("`, expected …" listing our
/// field names, or "`, there are no fields") begins, else at the last backtick.
fn quoted_field<'m>(message: &'m str, kind: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(kind)?.strip_prefix(" `")?;
    let end = rest
        .rfind("`, expected")
        .or_else(|| rest.rfind("`, there are no fields"))
        .or_else(|| rest.rfind('`'))?;
    rest.get(..end)
}

fn string_field(raw: &RawValue, field: &str) -> Result<String, Failure> {
    serde_json::from_str(raw.get())
        .map_err(|_| Failure::bad(&format!("{field} must be a string"), field))
}

/// A message's `data`, refused (400, field `data`) when nested deeper than the clients can
/// take (see [`crate::push::json_depth`]).
fn data(raw: &RawValue) -> Result<Box<RawValue>, Failure> {
    if data_too_deep(raw.get()) {
        return Err(Failure::bad(DATA_TOO_DEEP, "data"));
    }
    Ok(raw.to_owned())
}

/// A POST route's query: nothing, or `wait=delivered`. Any other parameter, another `wait`
/// value or `wait` twice: 400 naming the parameter. (In cluster mode `wait=delivered` will be
/// refused too, by the hub thread, which knows the mode.)
fn wait(query: Option<&str>) -> Result<Wait, Failure> {
    let mut wait = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(raw_name).unwrap_or_else(|| raw_name.to_owned());
        if name != "wait" {
            return Err(Failure::bad(
                &format!("unknown query parameter {name}"),
                &name,
            ));
        }
        if wait.is_some() {
            return Err(Failure::bad("query parameter wait given twice", "wait"));
        }
        if percent_decode(raw_value).as_deref() != Some("delivered") {
            return Err(Failure::bad("wait must be delivered (or absent)", "wait"));
        }
        wait = Some(Wait::Delivered);
    }
    Ok(wait.unwrap_or_default())
}

/// The POST options from the query's `wait` and the body's `idempotency_key` (a JSON `null`
/// counts as absent).
fn options(wait: Wait, key: Option<&RawValue>) -> Result<PostOptions, Failure> {
    const FIELD: &str = "idempotency_key";
    let idempotency_key = match key {
        None => None,
        Some(raw) => {
            let key: Option<String> = serde_json::from_str(raw.get())
                .map_err(|_| Failure::bad("idempotency_key must be a string", FIELD))?;
            if let Some(key) = &key {
                if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
                    return Err(Failure::bad(
                        &format!("idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"),
                        FIELD,
                    ));
                }
            }
            key
        }
    };
    Ok(PostOptions {
        wait,
        idempotency_key,
    })
}

fn publish_channel(channel: String) -> Result<String, Failure> {
    if channel.starts_with('$') {
        return Err(Failure::bad(
            "channels starting with $ are reserved for the server",
            "channel",
        ));
    }
    validate_channel(&channel).map_err(|e| Failure::bad(&e.to_string(), "channel"))?;
    Ok(channel)
}

fn user(user: String) -> Result<String, Failure> {
    validate_user(&user).map_err(|e| Failure::bad(&e.to_string(), "user"))?;
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const KEY: &str = "s3cret";

    fn limits() -> ApiLimits {
        ApiLimits {
            max_head: 1024,
            max_body: 256,
        }
    }

    /// A request with the given extra header lines; `Content-Length` is added when `body` is
    /// `Some`.
    fn req(method: &str, target: &str, headers: &[&str], body: Option<&str>) -> Vec<u8> {
        let mut s = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n");
        for h in headers {
            s.push_str(h);
            s.push_str("\r\n");
        }
        if let Some(body) = body {
            s.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        s.push_str("\r\n");
        s.push_str(body.unwrap_or(""));
        s.into_bytes()
    }

    fn post(target: &str, body: &str) -> Vec<u8> {
        req("POST", target, &[], Some(body))
    }

    fn get(target: &str) -> Vec<u8> {
        req("GET", target, &[], None)
    }

    /// A command as one comparable line.
    fn describe(c: &ApiCommand) -> String {
        match c {
            ApiCommand::Publish { channel, data, .. } => {
                format!("publish {channel} {}", data.get())
            }
            ApiCommand::Send { user, data, .. } => format!("send {user} {}", data.get()),
            ApiCommand::Broadcast { data, .. } => format!("broadcast {}", data.get()),
            ApiCommand::Disconnect { user, .. } => format!("disconnect {user}"),
            ApiCommand::Stats => "stats".into(),
            ApiCommand::Presence { channel } => format!("presence {channel}"),
            ApiCommand::Metrics => "metrics".into(),
            ApiCommand::Nodes => "nodes".into(),
            ApiCommand::StatusPage => "status page".into(),
        }
    }

    /// A parsed response: status, headers (lower-case names), body.
    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }

        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).expect("error bodies are JSON")
        }

        fn field(&self) -> Value {
            self.json()["field"].clone()
        }

        fn message(&self) -> String {
            self.json()["error"].as_str().unwrap_or("").to_owned()
        }
    }

    /// Reads a whole response and checks that Content-Length is the body's length exactly.
    fn read_answer(bytes: &[u8]) -> Answer {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut res = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(n) = res.parse(bytes).expect("valid response") else {
            panic!("incomplete response head");
        };
        let headers: Vec<(String, String)> = res
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let answer = Answer {
            status: res.code.expect("status"),
            body: bytes[n..].to_vec(),
            headers,
        };
        let length: usize = answer
            .header("content-length")
            .expect("Content-Length")
            .parse()
            .expect("numeric Content-Length");
        assert_eq!(length, answer.body.len(), "Content-Length matches the body");
        assert!(answer.header("connection").is_some(), "Connection header");
        answer
    }

    fn expect_request(p: Parsed) -> (usize, bool, String) {
        match p {
            Parsed::Request {
                consumed,
                keep_alive,
                command,
            } => (consumed, keep_alive, describe(&command)),
            other => panic!("expected a request, got {other:?}"),
        }
    }

    /// Also checks that the response's Connection header agrees with `close`.
    fn expect_reject(p: Parsed) -> (usize, bool, Answer) {
        match p {
            Parsed::Reject {
                consumed,
                close,
                response,
            } => {
                let answer = read_answer(&response);
                let expected = if close { "close" } else { "keep-alive" };
                assert_eq!(answer.header("connection"), Some(expected));
                assert_eq!(answer.header("content-type"), Some("application/json"));
                (consumed, close, answer)
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn valid_requests() -> Vec<(Vec<u8>, &'static str)> {
        vec![
            (
                post("/api/publish", r#"{"channel":"news","data":{"a":[1,2]}}"#),
                r#"publish news {"a":[1,2]}"#,
            ),
            (
                post(
                    "/api/publish",
                    r#" { "data" : null , "channel" : "chat:1" } "#,
                ),
                "publish chat:1 null",
            ),
            (
                post("/api/publish", r#"{"channel":"ne\u0077s","data":"hi"}"#),
                r#"publish news "hi""#,
            ),
            (
                post("/api/send", r#"{"user":"603577","data":42}"#),
                "send 603577 42",
            ),
            (
                post("/api/broadcast", r#"{"data":[true]}"#),
                "broadcast [true]",
            ),
            (
                post("/api/disconnect", r#"{"user":"603577"}"#),
                "disconnect 603577",
            ),
            (get("/api/stats"), "stats"),
            (get("/api/presence?channel=news"), "presence news"),
            (
                get("/api/presence?x=1&channel=chat%3a1%2Fa"),
                "presence chat:1/a",
            ),
            (get("/metrics"), "metrics"),
            (get("/api/nodes"), "nodes"),
            (get("/"), "status page"),
            (get("/status?refresh=1"), "status page"),
            // A GET may carry a body; it is read and ignored.
            (req("GET", "/api/stats", &[], Some("{}")), "stats"),
        ]
    }

    #[test]
    fn every_route_parses() {
        for (buf, expected) in valid_requests() {
            let (consumed, keep_alive, command) = expect_request(parse(&buf, None, &limits()));
            assert_eq!(command, expected);
            assert_eq!(consumed, buf.len(), "{expected}");
            assert!(keep_alive, "{expected}");
        }
    }

    #[test]
    fn partial_at_every_cut() {
        for (buf, expected) in valid_requests() {
            for cut in 0..buf.len() {
                assert!(
                    parse(&buf[..cut], None, &limits()).is_partial(),
                    "{expected} cut at {cut}"
                );
            }
        }
        // Requests that will be refused also wait for their whole body.
        for buf in [
            post("/api/publish", r#"{"channel":"$user","data":1}"#),
            req(
                "POST",
                "/api/send",
                &["Authorization: Bearer wrong"],
                Some(r#"{"user":"a","data":1}"#),
            ),
        ] {
            for cut in 0..buf.len() {
                assert!(
                    parse(&buf[..cut], Some(KEY), &limits()).is_partial(),
                    "cut {cut}"
                );
            }
        }
    }

    #[test]
    fn pipelined_requests_parse_one_at_a_time() {
        let mut buf = post("/api/publish", r#"{"channel":"a","data":1}"#);
        let first = buf.len();
        buf.extend_from_slice(&get("/api/stats"));
        // A refused request that keeps the connection, then one more.
        let bad = post("/api/send", r#"{"user":5,"data":1}"#);
        buf.extend_from_slice(&bad);
        buf.extend_from_slice(&get("/metrics"));

        let (consumed, _, command) = expect_request(parse(&buf, None, &limits()));
        assert_eq!((consumed, command.as_str()), (first, "publish a 1"));
        let rest = &buf[consumed..];
        let (consumed, _, command) = expect_request(parse(rest, None, &limits()));
        assert_eq!(command, "stats");
        let rest = &rest[consumed..];
        let (consumed, close, answer) = expect_reject(parse(rest, None, &limits()));
        assert_eq!((consumed, close, answer.status), (bad.len(), false, 400));
        let rest = &rest[consumed..];
        let (consumed, _, command) = expect_request(parse(rest, None, &limits()));
        assert_eq!((consumed, command.as_str()), (rest.len(), "metrics"));
    }

    #[test]
    fn auth() {
        type Case<'a> = (Option<&'a str>, &'a [&'a str], &'a str, Option<&'a str>);
        let cases: &[Case] = &[
            // (key configured, headers, target, a word of the 401's message; None = accepted)
            (None, &[], "/api/stats", None),
            (
                None,
                &["Authorization: Bearer whatever"],
                "/api/stats",
                None,
            ),
            (
                Some(KEY),
                &["Authorization: Bearer s3cret"],
                "/api/stats",
                None,
            ),
            (
                Some(KEY),
                &["authorization: bearer   s3cret "],
                "/metrics",
                None,
            ),
            (Some(KEY), &[], "/api/stats", Some("missing")),
            (Some(KEY), &[], "/metrics", Some("missing")),
            (Some(KEY), &[], "/nowhere", Some("missing")),
            // The status page needs no key (it asks for one), whatever is sent.
            (Some(KEY), &[], "/", None),
            (Some(KEY), &[], "/status", None),
            (Some(KEY), &["Authorization: Bearer nope"], "/", None),
            (Some(KEY), &[], "/status/", Some("missing")),
            (Some(KEY), &[], "/index.html", Some("missing")),
            (
                Some(KEY),
                &["Authorization: Bearer s3cre"],
                "/metrics",
                Some("invalid"),
            ),
            (
                Some(KEY),
                &["Authorization: Bearer s3crett"],
                "/metrics",
                Some("invalid"),
            ),
            (
                Some(KEY),
                &["Authorization: Bearer"],
                "/metrics",
                Some("Bearer"),
            ),
            (
                Some(KEY),
                &["Authorization: Basic czNjcmV0"],
                "/metrics",
                Some("Bearer"),
            ),
        ];
        for &(key, headers, target, expected) in cases {
            let buf = req("GET", target, headers, None);
            let parsed = parse(&buf, key, &limits());
            match expected {
                None => {
                    expect_request(parsed);
                }
                Some(word) => {
                    let (consumed, close, a) = expect_reject(parsed);
                    assert_eq!((consumed, close, a.status), (buf.len(), false, 401));
                    assert_eq!(a.header("www-authenticate"), Some("Bearer"));
                    assert!(a.message().contains(word), "{headers:?}: {}", a.message());
                }
            }
        }
        // A POST with a bad key: refused once its body is in, so the connection can go on.
        let buf = req(
            "POST",
            "/api/broadcast",
            &["Authorization: Bearer nope"],
            Some(r#"{"data":1}"#),
        );
        let (consumed, close, a) = expect_reject(parse(&buf, Some(KEY), &limits()));
        assert_eq!((consumed, close, a.status), (buf.len(), false, 401));
        // Only GET is exempt: another method on the page's path is refused for the key first.
        let buf = req("POST", "/", &[], Some("{}"));
        let (_, _, a) = expect_reject(parse(&buf, Some(KEY), &limits()));
        assert_eq!(a.status, 401);
    }

    #[test]
    fn status_page_answer() {
        let a = read_answer(&status_page_response(true));
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(a.header("cache-control"), Some("no-store"));
        let csp = a.header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(a.body, STATUS_PAGE.as_bytes());
        // Nothing loaded from elsewhere: no absolute URLs in src/href attributes.
        for attr in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
            assert!(!STATUS_PAGE.contains(attr), "{attr}");
        }
    }

    #[test]
    fn unknown_path_and_wrong_method() {
        let cases: &[(&str, &str, u16, Option<&str>)] = &[
            ("GET", "/index.html", 404, None),
            ("GET", "/api", 404, None),
            ("POST", "/", 405, Some("GET")),
            ("HEAD", "/status", 405, Some("GET")),
            ("GET", "/api/stats/", 404, None),
            ("POST", "/api/nope", 404, None),
            ("GET", "/api/publish", 405, Some("POST")),
            ("PUT", "/api/send", 405, Some("POST")),
            ("POST", "/api/stats", 405, Some("GET")),
            ("DELETE", "/api/presence?channel=x", 405, Some("GET")),
            ("POST", "/metrics", 405, Some("GET")),
            ("HEAD", "/metrics", 405, Some("GET")),
        ];
        for &(method, target, status, allow) in cases {
            let buf = req(method, target, &[], Some(""));
            let (consumed, close, a) = expect_reject(parse(&buf, None, &limits()));
            assert_eq!((consumed, close, a.status), (buf.len(), false, status));
            assert_eq!(a.header("allow"), allow, "{method} {target}");
        }
    }

    #[test]
    fn body_too_large_is_decided_from_the_header() {
        let head = b"POST /api/publish HTTP/1.1\r\nHost: h\r\nContent-Length: 257\r\n\r\n";
        let (consumed, close, a) = expect_reject(parse(head, None, &limits()));
        assert_eq!((consumed, close, a.status), (head.len(), true, 413));
        // Exactly the limit is fine (and waits for the body).
        let head = b"POST /api/publish HTTP/1.1\r\nHost: h\r\nContent-Length: 256\r\n\r\n";
        assert!(parse(head, None, &limits()).is_partial());
        // A huge length overflows nothing.
        let head =
            b"POST /api/publish HTTP/1.1\r\nHost: h\r\nContent-Length: 9999999999999999999\r\n\r\n";
        let (_, close, a) = expect_reject(parse(head, None, &limits()));
        assert_eq!((close, a.status), (true, 413));
        // Unauthorized wins over too large, and also closes.
        let head = b"POST /api/publish HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n";
        let (consumed, close, a) = expect_reject(parse(head, Some(KEY), &limits()));
        assert_eq!((consumed, close, a.status), (head.len(), true, 401));
    }

    #[test]
    fn length_required() {
        let buf = b"POST /api/publish HTTP/1.1\r\nHost: h\r\n\r\n";
        let parsed = parse(buf, None, &limits());
        if let Parsed::Reject { response, .. } = &parsed {
            assert!(response.starts_with(b"HTTP/1.1 411 Length Required\r\n"));
        }
        let (consumed, close, a) = expect_reject(parsed);
        assert_eq!((consumed, close, a.status), (buf.len(), true, 411));
    }

    /// A chunked request for `target` whose body is sent in `chunks`.
    fn chunked(target: &str, chunks: &[&str]) -> Vec<u8> {
        let mut s =
            format!("POST {target} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
        for c in chunks {
            s.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
        }
        s.push_str("0\r\n\r\n");
        s.into_bytes()
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        let buf = chunked(
            "/api/publish",
            &["{\"channel\":", "\"news\",\"data\"", ":1}"],
        );
        let (consumed, keep_alive, command) = expect_request(parse(&buf, None, &limits()));
        assert_eq!((consumed, keep_alive), (buf.len(), true));
        assert_eq!(command, "publish news 1");
        // Partial at every cut, then pipelined with the next request.
        for cut in 0..buf.len() {
            assert!(
                parse(&buf[..cut], None, &limits()).is_partial(),
                "cut {cut}"
            );
        }
        let mut two = buf.clone();
        two.extend_from_slice(&get("/api/stats"));
        assert_eq!(expect_request(parse(&two, None, &limits())).0, buf.len());
        assert_eq!(
            expect_request(parse(&two[buf.len()..], None, &limits())).2,
            "stats"
        );
        // Extensions and trailers are ignored; the size is hex, any case.
        let buf = b"POST /api/broadcast HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n\
                    A;x=y\r\n{\"data\":[]\r\n1\r\n}\r\n0\r\nX-Trailer: 1\r\n\r\n";
        assert_eq!(
            expect_request(parse(buf, None, &limits())).2,
            "broadcast []"
        );
        // Exactly the body limit is fine.
        let data = format!("{{\"data\":\"{}\"}}", "a".repeat(256 - 11));
        assert_eq!(data.len(), 256);
        let buf = chunked("/api/broadcast", &[&data[..100], &data[100..]]);
        assert!(matches!(
            parse(&buf, None, &limits()),
            Parsed::Request { .. }
        ));
        // A chunked GET body is read and ignored, like a Content-Length one.
        let buf =
            b"GET /api/stats HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(
            expect_request(parse(buf, None, &limits())),
            (buf.len(), true, "stats".into())
        );
    }

    #[test]
    fn chunked_body_limits_and_errors() {
        // (request, status, consumed: whole buffer or head only)
        let head = "POST /api/publish HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
        let cases: Vec<(Vec<u8>, u16, usize)> = vec![
            // 413 as soon as the sizes pass the limit, before the data.
            (format!("{head}101\r\n").into_bytes(), 413, head.len()),
            (
                format!("{head}ff\r\n{}\r\n2\r\n", "a".repeat(255)).into_bytes(),
                413,
                head.len(),
            ),
            (
                format!("{head}ffffffffffffffff\r\n").into_bytes(),
                413,
                head.len(),
            ),
            // Bad chunk syntax.
            (format!("{head}x\r\n").into_bytes(), 400, head.len()),
            (
                format!("{head}10000000000000000\r\n").into_bytes(),
                400,
                head.len(),
            ),
            (format!("{head}2\r\nabc\r\n").into_bytes(), 400, head.len()),
            (format!("{head}2\nab\n").into_bytes(), 400, head.len()),
        ];
        for (buf, status, consumed) in cases {
            let (got, close, a) = expect_reject(parse(&buf, None, &limits()));
            assert_eq!(
                (got, close, a.status),
                (consumed, true, status),
                "{:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        // Too much wire for the body: 1-byte chunks with long extensions.
        let mut buf = head.as_bytes().to_vec();
        let chunk = format!("1;{}\r\na\r\n", "x".repeat(4000));
        while buf.len() <= head.len() + limits().max_chunked_wire() {
            assert!(parse(&buf, None, &limits()).is_partial());
            buf.extend_from_slice(chunk.as_bytes());
        }
        let (got, close, a) = expect_reject(parse(&buf, None, &limits()));
        assert_eq!((got, close, a.status), (head.len(), true, 413));
        assert!(limits().max_buffered() > limits().max_head + 2 * limits().max_body);
        // Unauthorized wins over too large, and closes too.
        let buf = format!("{head}101\r\n");
        let (_, close, a) = expect_reject(parse(buf.as_bytes(), Some(KEY), &limits()));
        assert_eq!((close, a.status), (true, 401));
    }

    #[test]
    fn transfer_coding_rules() {
        // (extra header lines, status)
        let cases: &[(&[&str], u16)] = &[
            (&["Transfer-Encoding: chunked", "Content-Length: 3"], 400),
            (&["Content-Length: 3", "Transfer-Encoding: chunked"], 400),
            (&["Transfer-Encoding: gzip"], 400),
            (&["Transfer-Encoding: chunked, gzip"], 400),
            (&["Transfer-Encoding: chunked, chunked"], 400),
            (&["Transfer-Encoding: identity"], 400),
            (&["Transfer-Encoding:"], 400),
            (&["Transfer-Encoding: gzip, chunked"], 501),
            (
                &["Transfer-Encoding: x-custom", "Transfer-Encoding: chunked"],
                501,
            ),
        ];
        for (lines, status) in cases {
            let buf = req("POST", "/api/publish", lines, None);
            let (consumed, close, a) = expect_reject(parse(&buf, None, &limits()));
            assert_eq!(
                (consumed, close, a.status),
                (buf.len(), true, *status),
                "{lines:?}"
            );
        }
        // HTTP/1.0 knows no chunked: the framing is faulty (RFC 9112 §6.1).
        let buf = b"POST /api/broadcast HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let (_, close, a) = expect_reject(parse(buf, None, &limits()));
        assert_eq!((close, a.status), (true, 400));
    }

    #[test]
    fn request_targets_and_singletons() {
        // Absolute form is served like its path and query.
        for target in ["http://127.0.0.1:8081/api/stats", "HTTP://h/api/stats?x=1"] {
            assert_eq!(
                expect_request(parse(&get(target), None, &limits())).2,
                "stats",
                "{target}"
            );
        }
        let buf = get("http://h/api/presence?channel=news");
        assert_eq!(
            expect_request(parse(&buf, None, &limits())).2,
            "presence news"
        );
        let buf = post("https://h:8443/api/broadcast", "{\"data\":1}");
        assert_eq!(
            expect_request(parse(&buf, None, &limits())).2,
            "broadcast 1"
        );
        // Other forms, fragments, repeated singleton fields: 400 and close.
        let bad = [
            get("/api/stats#x"),
            get("/api/presence?channel=news#x"),
            get("*"),
            get("h:8081"),
            get("ftp://h/api/stats"),
            req("GET", "/api/stats", &["Host: other"], None),
            req("GET", "/api/stats", &["Origin: a", "Origin: a"], None),
            req(
                "GET",
                "/api/stats",
                &[
                    "Authorization: Bearer s3cret",
                    "Authorization: Bearer s3cret",
                ],
                None,
            ),
            req(
                "POST",
                "/api/broadcast",
                &["Content-Length: 10"],
                Some("{\"data\":1}"),
            ),
        ];
        for buf in bad {
            let (consumed, close, a) = expect_reject(parse(&buf, Some(KEY), &limits()));
            assert_eq!(
                (consumed, close, a.status),
                (buf.len(), true, 400),
                "{:?}",
                String::from_utf8_lossy(&buf)
            );
        }
    }

    #[test]
    fn head_too_large() {
        let big = format!("X-Pad: {}", "a".repeat(1100));
        let mut buf = req("GET", "/api/stats", &[&big], None);
        let (_, close, a) = expect_reject(parse(&buf, None, &limits()));
        assert_eq!((close, a.status), (true, 431));
        // Still arriving, already over the cap.
        buf.truncate(1100);
        let (_, close, a) = expect_reject(parse(&buf, None, &limits()));
        assert_eq!((close, a.status), (true, 431));
        // Too many header lines.
        let lines: Vec<String> = (0..MAX_HEADERS).map(|i| format!("X-{i}: 1")).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let buf = req("GET", "/api/stats", &lines, None);
        let roomy = ApiLimits {
            max_head: 64 * 1024,
            ..limits()
        };
        let (_, close, a) = expect_reject(parse(&buf, None, &roomy));
        assert_eq!((close, a.status), (true, 431));
        // Just under the cap is fine.
        let pad = format!("X-Pad: {}", "a".repeat(900));
        let buf = req("GET", "/api/stats", &[&pad], None);
        assert!(buf.len() <= 1024);
        assert_eq!(expect_request(parse(&buf, None, &limits())).2, "stats");
    }

    #[test]
    fn malformed_http() {
        let cases: &[&[u8]] = &[
            b"GARBAGE\r\n\r\n",
            b"GET /api/stats HTTP/2.0\r\n\r\n",
            b"GET /api/stats FTP/1.1\r\n\r\n",
            b"GET /api/stats\r\n\r\n",
            b"GET /api/stats HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n",
            b"\x00\x01\x02\x03\r\n\r\n",
            b"POST /api/publish HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n",
            b"POST /api/publish HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
            b"POST /api/publish HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 1\r\n\r\n",
            b"POST /api/publish HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        ];
        for buf in cases {
            let (consumed, close, a) = expect_reject(parse(buf, None, &limits()));
            assert_eq!(
                (consumed, close, a.status),
                (buf.len(), true, 400),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
            assert_eq!(a.field(), Value::Null);
        }
        // Identical repeated lengths too: a field that must appear once (issue 12).
        let buf = b"POST /api/broadcast HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\
                    Content-Length: 10\r\n\r\n{\"data\":1}";
        let (_, close, a) = expect_reject(parse(buf, None, &limits()));
        assert_eq!((close, a.status), (true, 400));
    }

    /// The options of a POST request that parses.
    fn options_of(target: &str, body: &str) -> PostOptions {
        let request = post(target, body);
        match parse(&request, None, &limits()) {
            Parsed::Request {
                command:
                    ApiCommand::Publish { options, .. }
                    | ApiCommand::Send { options, .. }
                    | ApiCommand::Broadcast { options, .. }
                    | ApiCommand::Disconnect { options, .. },
                ..
            } => options,
            other => panic!("{target} {body}: {other:?}"),
        }
    }

    #[test]
    fn wait_and_idempotency_key_on_every_post_route() {
        let key = "k".repeat(MAX_IDEMPOTENCY_KEY);
        for (path, fields) in [
            ("/api/publish", r#""channel":"a","data":1"#),
            ("/api/send", r#""user":"u","data":1"#),
            ("/api/broadcast", r#""data":1"#),
            ("/api/disconnect", r#""user":"u""#),
        ] {
            let plain = format!("{{{fields}}}");
            assert_eq!(options_of(path, &plain), PostOptions::default());
            let keyed = format!(r#"{{{fields},"idempotency_key":"{key}"}}"#);
            let delivered = format!("{path}?wait=delivered");
            assert_eq!(
                options_of(&delivered, &keyed),
                PostOptions {
                    wait: Wait::Delivered,
                    idempotency_key: Some(key.clone()),
                }
            );
            let null = format!(r#"{{{fields},"idempotency_key":null}}"#);
            assert_eq!(options_of(path, &null), PostOptions::default());
            // Refused, each naming its parameter or field.
            let too_long = format!(r#"{{{fields},"idempotency_key":"{key}x"}}"#);
            let not_string = format!(r#"{{{fields},"idempotency_key":5}}"#);
            let empty = format!(r#"{{{fields},"idempotency_key":""}}"#);
            for (target, body, field) in [
                (path.to_owned(), &too_long, "idempotency_key"),
                (path.to_owned(), &not_string, "idempotency_key"),
                (path.to_owned(), &empty, "idempotency_key"),
                (format!("{path}?wait=sequenced"), &plain, "wait"),
                (format!("{path}?wait"), &plain, "wait"),
                (
                    format!("{path}?wait=delivered&wait=delivered"),
                    &plain,
                    "wait",
                ),
                (format!("{path}?wait=delivered&fast=1"), &plain, "fast"),
                (format!("{path}?x"), &plain, "x"),
            ] {
                let (_, close, answer) =
                    expect_reject(parse(&post(&target, body), None, &limits()));
                assert!(!close, "{target} {body}");
                assert_eq!(answer.status, 400, "{target} {body}");
                assert_eq!(answer.field(), field, "{target} {body}");
            }
        }
        // Percent-encoded, and an empty query, are fine.
        let wait = options_of("/api/broadcast?wai%74=deliver%65d", r#"{"data":1}"#).wait;
        assert_eq!(wait, Wait::Delivered);
        let wait = options_of("/api/broadcast?", r#"{"data":1}"#).wait;
        assert_eq!(wait, Wait::Sequenced);
    }

    #[test]
    fn json_errors_name_their_field() {
        let f = |s: &str| Value::String(s.into());
        let cases: Vec<(&str, &str, Value, &str)> = vec![
            // (path, body, field, a word of the message)
            ("/api/publish", r#"{"data":1}"#, f("channel"), "missing"),
            ("/api/publish", r#"{"channel":"a"}"#, f("data"), "missing"),
            (
                "/api/publish",
                r#"{"channel":5,"data":1}"#,
                f("channel"),
                "string",
            ),
            (
                "/api/publish",
                r#"{"channel":null,"data":1}"#,
                f("channel"),
                "string",
            ),
            (
                "/api/publish",
                r#"{"channel":"a","data":1,"x":2}"#,
                f("x"),
                "unknown",
            ),
            (
                "/api/publish",
                r#"{"channel":"a","data":1,"a`, b":2}"#,
                f("a`, b"),
                "unknown",
            ),
            (
                "/api/publish",
                r#"{"channel":"a","channel":"b","data":1}"#,
                f("channel"),
                "duplicate",
            ),
            (
                "/api/publish",
                r#"{"channel":"bad name","data":1}"#,
                f("channel"),
                "",
            ),
            (
                "/api/publish",
                r#"{"channel":"","data":1}"#,
                f("channel"),
                "",
            ),
            (
                "/api/publish",
                r#"{"channel":"$user","data":1}"#,
                f("channel"),
                "reserved",
            ),
            (
                "/api/publish",
                r#"{"channel":"$x","data":1}"#,
                f("channel"),
                "reserved",
            ),
            ("/api/publish", r#"["news",1]"#, Value::Null, "object"),
            ("/api/publish", r#""news""#, Value::Null, "object"),
            ("/api/publish", "null", Value::Null, "object"),
            ("/api/publish", "", Value::Null, "invalid JSON"),
            ("/api/publish", "{", Value::Null, "invalid JSON"),
            (
                "/api/publish",
                r#"{"channel":"a","data":}"#,
                Value::Null,
                "invalid JSON",
            ),
            (
                "/api/publish",
                r#"{"channel":"a","data":1} x"#,
                Value::Null,
                "invalid JSON",
            ),
            ("/api/publish", "[1,", Value::Null, "invalid JSON"),
            ("/api/publish", "\u{1}", Value::Null, "invalid JSON"),
            ("/api/send", r#"{"data":1}"#, f("user"), "missing"),
            (
                "/api/send",
                r#"{"user":603577,"data":1}"#,
                f("user"),
                "string",
            ),
            ("/api/send", r#"{"user":"","data":1}"#, f("user"), ""),
            (
                "/api/send",
                r#"{"user":"a\u0000b","data":1}"#,
                f("user"),
                "",
            ),
            (
                "/api/send",
                r#"{"user":"a","data":1,"channel":"x"}"#,
                f("channel"),
                "unknown",
            ),
            ("/api/broadcast", "{}", f("data"), "missing"),
            (
                "/api/broadcast",
                r#"{"data":1,"user":"a"}"#,
                f("user"),
                "unknown",
            ),
            ("/api/disconnect", "{}", f("user"), "missing"),
            ("/api/disconnect", r#"{"user":["a"]}"#, f("user"), "string"),
            (
                "/api/disconnect",
                r#"{"user":"a","data":1}"#,
                f("data"),
                "unknown",
            ),
        ];
        for (path, body, field, word) in cases {
            let buf = post(path, body);
            let (consumed, close, a) = expect_reject(parse(&buf, None, &limits()));
            assert_eq!(
                (consumed, close, a.status),
                (buf.len(), false, 400),
                "{body}"
            );
            assert_eq!(a.field(), field, "{path} {body}");
            assert!(a.message().contains(word), "{body}: {}", a.message());
            assert!(!a.message().is_empty(), "{body}");
        }
        // Bytes that are not UTF-8.
        let mut buf =
            b"POST /api/broadcast HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n".to_vec();
        buf.extend_from_slice(b"{\"data\":\"\xff\"}");
        let (_, close, a) = expect_reject(parse(&buf, None, &limits()));
        assert_eq!((close, a.status), (false, 400));
    }

    #[test]
    fn presence_query() {
        let cases: &[(&str, Option<&str>)] = &[
            ("/api/presence?channel=news", Some("presence news")),
            (
                "/api/presence?channel=a%40b&channel=zzz",
                Some("presence a@b"),
            ),
            ("/api/presence?channel=%24user", Some("presence $user")),
            ("/api/presence", None),
            ("/api/presence?", None),
            ("/api/presence?chan=news", None),
            ("/api/presence?channel=", None),
            ("/api/presence?channel=a%2", None),
            ("/api/presence?channel=a%zz", None),
            ("/api/presence?channel=%ff", None),
            ("/api/presence?channel=a+b", None),
            ("/api/presence?channel=a%20b", None),
        ];
        for &(target, expected) in cases {
            let buf = get(target);
            let parsed = parse(&buf, None, &limits());
            match expected {
                Some(command) => assert_eq!(expect_request(parsed).2, command, "{target}"),
                None => {
                    let (_, close, a) = expect_reject(parsed);
                    assert_eq!((close, a.status), (false, 400), "{target}");
                    assert_eq!(a.field(), "channel", "{target}");
                }
            }
        }
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let cases: &[(&str, &[&str], bool)] = &[
            ("HTTP/1.1", &[], true),
            ("HTTP/1.1", &["Connection: close"], false),
            ("HTTP/1.1", &["Connection: Keep-Alive"], true),
            ("HTTP/1.1", &["Connection: foo, CLOSE"], false),
            ("HTTP/1.0", &[], false),
            ("HTTP/1.0", &["Connection: keep-alive"], true),
            ("HTTP/1.0", &["Connection: close"], false),
            ("HTTP/1.0", &["Connection: keep-alive, close"], false),
            (
                "HTTP/1.0",
                &["Connection: close", "Connection: keep-alive"],
                false,
            ),
        ];
        for &(version, headers, expected) in cases {
            let mut s = format!("GET /api/stats {version}\r\nHost: h\r\n");
            for h in headers {
                s.push_str(h);
                s.push_str("\r\n");
            }
            s.push_str("\r\n");
            let (_, keep_alive, _) = expect_request(parse(s.as_bytes(), None, &limits()));
            assert_eq!(keep_alive, expected, "{version} {headers:?}");
            // A rejection follows the same rule.
            let s = s.replace("/api/stats", "/nope");
            let (_, close, a) = expect_reject(parse(s.as_bytes(), None, &limits()));
            assert_eq!((close, a.status), (!expected, 404), "{version} {headers:?}");
        }
    }

    #[test]
    fn responses_are_well_formed() {
        let cases: Vec<(Vec<u8>, u16, &str, &str, &str)> = vec![
            (
                json_response(200, r#"{"seq":18,"epoch":"k3x9","delivered":2}"#, true),
                200,
                "application/json",
                "keep-alive",
                r#"{"seq":18,"epoch":"k3x9","delivered":2}"#,
            ),
            (
                json_response(503, "{}", false),
                503,
                "application/json",
                "close",
                "{}",
            ),
            (
                text_response(200, "text/plain; version=0.0.4", "a 1\nb 2\n", true),
                200,
                "text/plain; version=0.0.4",
                "keep-alive",
                "a 1\nb 2\n",
            ),
            (
                json_response(200, "{\"x\":\"é€\"}", true),
                200,
                "application/json",
                "keep-alive",
                "{\"x\":\"é€\"}",
            ),
            (
                text_response(200, "text/plain", "", false),
                200,
                "text/plain",
                "close",
                "",
            ),
        ];
        for (raw, status, content_type, connection, body) in cases {
            let a = read_answer(&raw);
            assert_eq!(a.status, status);
            assert_eq!(a.header("content-type"), Some(content_type));
            assert_eq!(a.header("connection"), Some(connection));
            assert_eq!(a.body, body.as_bytes());
        }
        assert!(json_response(200, "{}", true).starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(json_response(411, "{}", true).starts_with(b"HTTP/1.1 411 Length Required\r\n"));
    }

    #[test]
    fn error_body_escapes() {
        let cases: &[(&str, Option<&str>)] = &[
            ("plain", None),
            (
                "quote \" backslash \\ newline \n tab \t nul \0",
                Some("we\"ird\n"),
            ),
            ("unicode é €", Some("channel")),
        ];
        for &(message, field) in cases {
            let body = error_body(message, field);
            let v: Value = serde_json::from_str(&body).expect("valid JSON");
            assert_eq!(v["error"], message);
            assert_eq!(v["field"], field.map_or(Value::Null, Value::from));
            assert_eq!(v.as_object().map(|o| o.len()), Some(2));
        }
    }

    #[test]
    fn expect_continue_needs_a_complete_head() {
        let cases: &[(&[u8], bool)] = &[
            (
                b"POST /api/send HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n",
                true,
            ),
            (b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n", false),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\n", false),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nBad Header\r\n\r\n",
                false,
            ),
        ];
        for (buf, expected) in cases {
            assert_eq!(
                expects_continue(buf, &limits()),
                *expected,
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }
}
