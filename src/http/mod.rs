//! HTTP/1.1 (RFC 9112), sans IO: the one place where edgepush reads and writes HTTP — the
//! WebSocket upgrade ([`crate::protocol::handshake`]), the push API ([`crate::push::api`]), the
//! plain answers on the public listener, and next the upstream client.
//!
//! Built on `httparse` and in its manner: nothing here allocates while parsing, the caller lends
//! the header array (its length is the header-count cap), and a head that has not fully arrived
//! is [`Status::Partial`] and consumes nothing — the caller keeps its buffer and parses again
//! once more bytes are in. Every size is capped before it is trusted: the head by `max_head`
//! (only that much of the buffer is ever scanned), a body by a caller-given limit decided from
//! `Content-Length` before the body arrives. Errors are one small `Copy` enum, [`Error`], each
//! mapped to the status the server owes ([`Error::status`]).
//!
//! One file per idea:
//! - [`request`]: request heads → [`request::RequestHead`] (method, path and query, version,
//!   headers, head length) and query parameters with percent-decoding (RFC 3986 §2.1).
//! - [`headers`]: [`headers::Headers`], lookups over the parsed header lines: `Content-Length`,
//!   `Transfer-Encoding`, `Connection` options with the HTTP/1.0 keep-alive rule, `Expect`.
//! - [`body`]: how a body is delimited ([`body::Framing`], RFC 9112 §6.3), bodies by length,
//!   and chunked bodies (§7.1).
//! - [`response`]: the one table of reason phrases, response writers, and response heads parsed
//!   for a client.
//! - [`origin`]: comparing a request's `Origin` with a configured one (RFC 6454 §4–§5).
//!
//! A server calls them in this order, re-running from step 1 whenever more bytes arrive:
//! 1. [`request::parse_request`] on the buffered input with a lent header array. `Partial`:
//!    read more (answer `100 Continue` first if [`request::RequestHead::expects_continue`] and
//!    the body is still to come). `Err(e)`: answer `e.status()` and close.
//! 2. [`request::RequestHead::framing`] → the body's [`body::Framing`]; [`body::length_body`]
//!    or [`body::chunked_body`] with the body limit on the bytes after the head.
//! 3. Answer with [`response::write_response`]; keep the connection iff
//!    [`request::RequestHead::keep_alive`] and the body was read in full.

#![forbid(unsafe_code)]

pub mod body;
pub mod headers;
pub mod origin;
pub mod request;
pub mod response;

use std::fmt;

pub use httparse::{Header, EMPTY_HEADER};

/// Header lines a request head may carry on either listener (the length of the array a server
/// lends [`request::parse_request`]); more is [`Error::TooManyHeaders`] (431).
///
/// Fixed rather than derived from the head-size limit: a field line takes at least 4 bytes, so
/// a derived cap would lend a 4,096-slot array (128 KiB, cleared on every parse attempt) for a
/// 16 KiB head. Browsers send 10–25 fields and proxies add a few; 128 fields of the 128 bytes
/// an average field takes is the default 16 KiB head, so for real clients the size limit is
/// the one that bites.
pub const MAX_HEADERS: usize = 128;

/// Header fields a request may carry at most once, on every route of both listeners: `Host`
/// (RFC 9112 §3.2: more than one is 400), `Content-Length` (RFC 9110 §8.6; a repeat is
/// refused even when the values agree, as proxies disagree on which one counts),
/// `Authorization` (RFC 9110 §11.6.2, not a list) and `Origin` (RFC 6454 §7.3). Names are
/// lowercase. The WebSocket upgrade adds its own ([`crate::protocol::handshake`]).
pub const SINGLETON_FIELDS: [&str; 4] = ["host", "content-length", "authorization", "origin"];

/// The outcome of a parse that may need more input (httparse's shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Status<T> {
    /// Parsed; `T` says how many bytes it took.
    Complete(T),
    /// The input ends before the item does: read more. Nothing was consumed.
    Partial,
}

impl<T> Status<T> {
    /// True for [`Status::Partial`].
    pub fn is_partial(&self) -> bool {
        matches!(self, Status::Partial)
    }

    /// The complete value, if any.
    pub fn complete(self) -> Option<T> {
        match self {
            Status::Complete(t) => Some(t),
            Status::Partial => None,
        }
    }
}

/// Which part of an HTTP/1.x head has bad syntax (RFC 9112 §2–§5); the names are httparse's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// A byte not allowed in a field name (§5, RFC 9110 §5.1 `token`).
    HeaderName,
    /// A byte not allowed in a field value (RFC 9110 §5.5).
    HeaderValue,
    /// A line not ended by CRLF.
    NewLine,
    /// A status code that is not three digits (§4).
    Status,
    /// A byte not allowed in the method or request target (§3).
    Token,
    /// Not `HTTP/1.0` or `HTTP/1.1` (§2.3).
    Version,
}

impl Syntax {
    fn from_httparse(e: httparse::Error) -> Syntax {
        match e {
            httparse::Error::HeaderName => Syntax::HeaderName,
            httparse::Error::HeaderValue => Syntax::HeaderValue,
            httparse::Error::NewLine => Syntax::NewLine,
            httparse::Error::Status => Syntax::Status,
            httparse::Error::Version => Syntax::Version,
            // `TooManyHeaders` is mapped to its own `Error` before this is reached.
            httparse::Error::Token | httparse::Error::TooManyHeaders => Syntax::Token,
        }
    }
}

impl fmt::Display for Syntax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // httparse's own wording, so that answers read as they always have.
        f.write_str(match self {
            Syntax::HeaderName => "invalid header name",
            Syntax::HeaderValue => "invalid header value",
            Syntax::NewLine => "invalid new line",
            Syntax::Status => "invalid response status",
            Syntax::Token => "invalid token",
            Syntax::Version => "invalid HTTP version",
        })
    }
}

/// Why a message cannot be read, and so which status a server answers with
/// ([`Error::status`]). After any of these the connection cannot be reused: where the message
/// ends is unknown (or, for [`Error::BodyTooLarge`], the body is not going to be read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Not HTTP/1.x syntax (400).
    Malformed(Syntax),
    /// The head did not end within `max_head` bytes (431, RFC 6585 §5).
    HeadTooLarge,
    /// More header lines than the lent array holds (431).
    TooManyHeaders,
    /// A `Content-Length` that is not one decimal number of at most 19 digits (400, RFC 9112
    /// §6.3 item 5).
    InvalidContentLength,
    /// Several `Content-Length` lines that disagree (400, RFC 9112 §6.3 item 5).
    ConflictingContentLength,
    /// `Transfer-Encoding` and `Content-Length` together (400): RFC 9112 §6.3 item 3 says to
    /// treat it as an error, as it may be request smuggling.
    LengthWithTransferEncoding,
    /// A request's `Transfer-Encoding` does not end in `chunked` (400, RFC 9112 §6.3 item 4).
    ChunkedNotFinal,
    /// A transfer coding other than `chunked` (501, RFC 9112 §6.1): we decode no others.
    UnsupportedTransferCoding,
    /// A chunked body that breaks the grammar of RFC 9112 §7.1 (400).
    BadChunk,
    /// The body is longer than the caller's limit (413, RFC 9110 §15.5.14).
    BodyTooLarge,
    /// A request target that is not in origin form (`/path?query`) or absolute form
    /// (`http://host/path?query`), or that carries a `#` fragment, a byte outside visible
    /// ASCII, or userinfo (400, RFC 9112 §3.2, §3.2.3–§3.2.4; RFC 9110 §4.2.4). Authority form
    /// (`CONNECT`) and asterisk form (`OPTIONS *`) are among them: we serve neither.
    BadTarget,
    /// A field that must appear once appeared more than once (400, RFC 9112 §3.2): its
    /// lowercase name.
    RepeatedField(&'static str),
    /// An HTTP/1.1 request without a `Host` field (400, RFC 9112 §3.2: "A server MUST respond
    /// with a 400 (Bad Request) status code to any HTTP/1.1 request message that lacks a Host
    /// header field").
    MissingHost,
    /// `Transfer-Encoding` in an HTTP/1.0 request (400): RFC 9112 §6.1 says to treat the
    /// framing as faulty, as an HTTP/1.0 peer does not know chunked.
    TransferEncodingInHttp10,
}

impl Error {
    /// The HTTP status a server answers this error with.
    pub fn status(self) -> u16 {
        match self {
            Error::HeadTooLarge | Error::TooManyHeaders => 431,
            Error::BodyTooLarge => 413,
            Error::UnsupportedTransferCoding => 501,
            Error::Malformed(_)
            | Error::InvalidContentLength
            | Error::ConflictingContentLength
            | Error::LengthWithTransferEncoding
            | Error::ChunkedNotFinal
            | Error::BadChunk
            | Error::BadTarget
            | Error::RepeatedField(_)
            | Error::MissingHost
            | Error::TransferEncodingInHttp10 => 400,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Malformed(syntax) => write!(f, "malformed HTTP request: {syntax}"),
            Error::HeadTooLarge => f.write_str("request head too large"),
            Error::TooManyHeaders => f.write_str("too many request headers"),
            Error::InvalidContentLength => f.write_str("invalid Content-Length"),
            Error::ConflictingContentLength => f.write_str("conflicting Content-Length headers"),
            Error::LengthWithTransferEncoding => {
                f.write_str("both Transfer-Encoding and Content-Length")
            }
            Error::ChunkedNotFinal => {
                f.write_str("Transfer-Encoding must end with chunked, applied once")
            }
            Error::UnsupportedTransferCoding => f.write_str("unsupported transfer coding"),
            Error::BadChunk => f.write_str("malformed chunked body"),
            Error::BodyTooLarge => f.write_str("body too large"),
            Error::BadTarget => f.write_str("invalid request target"),
            Error::RepeatedField(name) => write!(f, "repeated {name} header"),
            Error::MissingHost => f.write_str("HTTP/1.1 request without Host"),
            Error::TransferEncodingInHttp10 => f.write_str("Transfer-Encoding in HTTP/1.0"),
        }
    }
}

impl std::error::Error for Error {}

/// The head-size cap and httparse's result, mapped: shared by requests and responses. Only the
/// first `max_head` bytes of `buf` are scanned; a head still unfinished at `max_head` bytes is
/// [`Error::HeadTooLarge`].
fn capped_parse<'b>(
    buf: &'b [u8],
    max_head: usize,
    parse: impl FnOnce(&'b [u8]) -> httparse::Result<usize>,
) -> Result<Status<usize>, Error> {
    let capped = &buf[..buf.len().min(max_head)];
    match parse(capped) {
        Ok(httparse::Status::Complete(n)) => Ok(Status::Complete(n)),
        Ok(httparse::Status::Partial) if buf.len() >= max_head => Err(Error::HeadTooLarge),
        Ok(httparse::Status::Partial) => Ok(Status::Partial),
        Err(httparse::Error::TooManyHeaders) => Err(Error::TooManyHeaders),
        Err(e) => Err(Error::Malformed(Syntax::from_httparse(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let cases = [
            (Error::Malformed(Syntax::Token), 400),
            (Error::HeadTooLarge, 431),
            (Error::TooManyHeaders, 431),
            (Error::InvalidContentLength, 400),
            (Error::ConflictingContentLength, 400),
            (Error::LengthWithTransferEncoding, 400),
            (Error::ChunkedNotFinal, 400),
            (Error::UnsupportedTransferCoding, 501),
            (Error::BadChunk, 400),
            (Error::BodyTooLarge, 413),
            (Error::BadTarget, 400),
            (Error::RepeatedField("host"), 400),
            (Error::MissingHost, 400),
            (Error::TransferEncodingInHttp10, 400),
        ];
        for (e, status) in cases {
            assert_eq!(e.status(), status, "{e:?}");
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn syntax_reads_as_httparse_does() {
        for e in [
            httparse::Error::HeaderName,
            httparse::Error::HeaderValue,
            httparse::Error::NewLine,
            httparse::Error::Status,
            httparse::Error::Token,
            httparse::Error::Version,
        ] {
            assert_eq!(Syntax::from_httparse(e).to_string(), e.to_string());
        }
    }

    type Parsed = Result<Status<usize>, Error>;

    #[test]
    fn cap_is_checked_on_partial_input() {
        let parse = |b: &[u8]| {
            let mut h = [EMPTY_HEADER; 4];
            httparse::Request::new(&mut h).parse(b)
        };
        let cases: &[(&[u8], usize, Parsed)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", 64, Ok(Status::Complete(18))),
            (b"GET / HTTP/1.1\r\n\r\n", 18, Ok(Status::Complete(18))),
            (b"GET / HTTP/1.1\r\n\r\n", 17, Err(Error::HeadTooLarge)),
            (b"GET / HTTP/1.1\r\n", 64, Ok(Status::Partial)),
            (b"GET / HTTP/1.1\r\n", 16, Err(Error::HeadTooLarge)),
            (b"", 0, Err(Error::HeadTooLarge)),
            (
                b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n",
                1024,
                Err(Error::TooManyHeaders),
            ),
            (
                b"GET / HTTP/1.1\r\nA B: 1\r\n\r\n",
                64,
                Err(Error::Malformed(Syntax::HeaderName)),
            ),
        ];
        for (input, max, expected) in cases {
            assert_eq!(
                capped_parse(input, *max, parse),
                *expected,
                "{:?} max {max}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
