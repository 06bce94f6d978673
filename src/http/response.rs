//! Responses (RFC 9112 §4): the one table of reason phrases, the writers every HTTP answer
//! edgepush sends goes through, and response heads parsed for a client (status, headers,
//! framing, persistence).

use super::body::Framing;
use super::headers::Headers;
use super::{capped_parse, Error, Header, Status, Syntax};

/// The reason phrase for `status` (RFC 9110 §15), for the statuses edgepush sends or meets;
/// `"Unknown"` for any other.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Whether the connection stays open after a response: the value of its `Connection` header
/// (RFC 9112 §9.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// `Connection: keep-alive`: more requests may follow.
    KeepAlive,
    /// `Connection: close`: the server closes once the response is written.
    Close,
}

impl Persistence {
    /// `KeepAlive` iff `keep_alive`.
    pub fn from_keep_alive(keep_alive: bool) -> Persistence {
        if keep_alive {
            Persistence::KeepAlive
        } else {
            Persistence::Close
        }
    }

    fn token(self) -> &'static str {
        match self {
            Persistence::KeepAlive => "keep-alive",
            Persistence::Close => "close",
        }
    }
}

/// Appends `HTTP/1.1 <status> <reason>\r\n` to `out`. `status` must be three digits (RFC 9110
/// §15); others are written as `Unknown` statuses with their digits as given.
pub fn write_status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    write_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends one header line `name: value\r\n`. Neither may contain CR or LF: the caller's
/// names are constants and its values are ours, never a client's bytes unchecked.
pub fn write_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends a response head with a body of `content_length` bytes to come: the status line,
/// `Content-Type`, `Content-Length`, `Connection`, then `headers` in order, then the blank
/// line. Use it alone for the answer to `HEAD` (RFC 9110 §9.3.2: the length of the body a GET
/// would get, and no body).
pub fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    content_length: usize,
    persistence: Persistence,
    headers: &[(&str, &str)],
) {
    write_status_line(out, status);
    write_header(out, "Content-Type", content_type);
    out.extend_from_slice(b"Content-Length: ");
    write_decimal(out, content_length as u64);
    out.extend_from_slice(b"\r\n");
    write_header(out, "Connection", persistence.token());
    for (name, value) in headers {
        write_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a complete response: [`write_head`] for `body`, then `body`.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    persistence: Persistence,
    headers: &[(&str, &str)],
) {
    write_head(out, status, content_type, body.len(), persistence, headers);
    out.extend_from_slice(body);
}

/// Appends `HTTP/1.1 100 Continue` and its blank line (RFC 9110 §15.2.1): the interim answer
/// to `Expect: 100-continue`, sent before the body is read.
pub fn write_continue(out: &mut Vec<u8>) {
    write_status_line(out, 100);
    out.extend_from_slice(b"\r\n");
}

fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A complete response head, borrowed from the input buffer (`'b`) and the lent header array
/// (`'h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead<'h, 'b> {
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// The three-digit status code.
    pub status: u16,
    /// The reason phrase as sent (possibly empty); carries no meaning (RFC 9112 §4).
    pub reason: &'b str,
    /// The header lines.
    pub headers: Headers<'h, 'b>,
    /// Bytes of the head, status line to blank line inclusive.
    pub len: usize,
}

impl<'h, 'b> ResponseHead<'h, 'b> {
    /// An interim (1xx) response: another head follows for the same request (RFC 9110 §15.2),
    /// except after `101`, when the connection changes protocol.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// Whether the server keeps the connection open after this response (RFC 9112 §9.3).
    /// A body framed by [`Framing::UntilClose`] ends the connection whatever this says.
    pub fn keep_alive(&self) -> bool {
        self.headers.connection().persists(self.minor_version)
    }

    /// How the body is delimited (RFC 9112 §6.3); `request_was_head` when the request was
    /// `HEAD`. See [`Framing::of_response`].
    pub fn framing(&self, request_was_head: bool) -> Result<Framing, Error> {
        Framing::of_response(&self.headers, self.status, request_was_head)
    }
}

/// Parses the response head at the start of `buf` into the lent `headers` array; only the
/// first `max_head` bytes are scanned. Results as for [`super::request::parse_request`].
pub fn parse_response<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [Header<'b>],
    max_head: usize,
) -> Result<Status<ResponseHead<'h, 'b>>, Error> {
    let mut res = httparse::Response::new(headers);
    let len = match capped_parse(buf, max_head, |b| res.parse(b))? {
        Status::Complete(n) => n,
        Status::Partial => return Ok(Status::Partial),
    };
    let httparse::Response {
        version,
        code,
        reason,
        headers,
    } = res;
    // httparse sets version and code once the head is complete.
    let (Some(minor_version), Some(status)) = (version, code) else {
        return Err(Error::Malformed(Syntax::Status));
    };
    Ok(Status::Complete(ResponseHead {
        minor_version,
        status,
        reason: reason.unwrap_or(""),
        headers: Headers::new(headers),
        len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header lines as (name, value) pairs.
    type Lines<'a> = &'a [(&'a str, &'a str)];
    /// A parse reduced to (status, reason, keep-alive); `None` for partial.
    type Parsed<'a> = Result<Option<(u16, &'a str, bool)>, Error>;
    use crate::http::body::length_body;
    use crate::http::EMPTY_HEADER;

    #[test]
    fn written_responses_read_back() {
        // (status, persistence, extra headers, body, HEAD)
        let cases: &[(u16, Persistence, Lines<'_>, &[u8], bool)] = &[
            (200, Persistence::KeepAlive, &[], b"{}", false),
            (
                503,
                Persistence::Close,
                &[("Retry-After", "5")],
                b"draining\n",
                false,
            ),
            (
                405,
                Persistence::Close,
                &[("Allow", "GET"), ("X", "y")],
                b"",
                false,
            ),
            (404, Persistence::KeepAlive, &[], b"not found\n", true),
            (599, Persistence::Close, &[], b"odd", false),
        ];
        for &(status, persistence, extra, body, head_only) in cases {
            let mut out = b"before".to_vec();
            if head_only {
                write_head(
                    &mut out,
                    status,
                    "text/plain",
                    body.len(),
                    persistence,
                    extra,
                );
            } else {
                write_response(&mut out, status, "text/plain", body, persistence, extra);
            }
            let out = &out[b"before".len()..];
            let mut headers = [EMPTY_HEADER; 8];
            let head = parse_response(out, &mut headers, 1024)
                .unwrap()
                .complete()
                .unwrap();
            assert_eq!(head.status, status);
            assert_eq!(head.reason, reason_phrase(status));
            assert_eq!(head.keep_alive(), persistence == Persistence::KeepAlive);
            assert_eq!(head.headers.lines().len(), 3 + extra.len());
            for (name, value) in extra {
                assert_eq!(head.headers.get(name), Some(value.as_bytes()));
            }
            let framing = head.framing(head_only).unwrap();
            if head_only {
                assert_eq!(framing, Framing::Empty);
                assert_eq!(out.len(), head.len);
            } else {
                assert_eq!(framing, Framing::Length(body.len() as u64));
                let got = length_body(&out[head.len..], body.len() as u64, 1 << 20);
                assert_eq!(got, Ok(Status::Complete(body)));
                assert_eq!(out.len(), head.len + body.len());
            }
        }
    }

    #[test]
    fn exact_bytes() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            405,
            "text/plain; charset=utf-8",
            b"no\n",
            Persistence::Close,
            &[("Allow", "GET")],
        );
        assert_eq!(
            out,
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\n\
              Content-Length: 3\r\nConnection: close\r\nAllow: GET\r\n\r\nno\n"
        );
        let mut out = Vec::new();
        write_continue(&mut out);
        assert_eq!(out, b"HTTP/1.1 100 Continue\r\n\r\n");
        for n in [0u64, 7, 10, 1234567890, u64::MAX] {
            let mut out = Vec::new();
            write_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn response_heads() {
        let cases: &[(&[u8], Parsed<'_>)] = &[
            (b"HTTP/1.1 200 OK\r\n\r\n", Ok(Some((200, "OK", true)))),
            (b"HTTP/1.0 200 OK\r\n\r\n", Ok(Some((200, "OK", false)))),
            (
                b"HTTP/1.0 204 \r\nConnection: keep-alive\r\n\r\n",
                Ok(Some((204, "", true))),
            ),
            (b"HTTP/1.1 100 Continue\r\n", Ok(None)),
            (b"HTTP/1.1 20", Ok(None)),
            (b"", Ok(None)),
            (
                b"HTTP/1.1 2000 OK\r\n\r\n",
                Err(Error::Malformed(Syntax::Status)),
            ),
            (
                b"HTTP/1.1 abc OK\r\n\r\n",
                Err(Error::Malformed(Syntax::Status)),
            ),
            (
                b"HTTP/2 200 OK\r\n\r\n",
                Err(Error::Malformed(Syntax::Version)),
            ),
            (
                b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
                Err(Error::TooManyHeaders),
            ),
            (
                b"HTTP/1.1 200 OK\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                Err(Error::HeadTooLarge),
            ),
        ];
        for (input, expected) in cases {
            let mut headers = [EMPTY_HEADER; 2];
            let got = parse_response(input, &mut headers, 48)
                .map(|s| s.complete().map(|h| (h.status, h.reason, h.keep_alive())));
            assert_eq!(got, *expected, "{:?}", String::from_utf8_lossy(input));
        }
        let mut headers = [EMPTY_HEADER; 2];
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n";
        let head = parse_response(interim, &mut headers, 64)
            .unwrap()
            .complete()
            .unwrap();
        assert!(head.is_interim());
        assert_eq!(head.len, 25);
    }

    #[test]
    fn one_reason_table() {
        for (status, reason) in [
            (100, "Continue"),
            (101, "Switching Protocols"),
            (204, "No Content"),
            (411, "Length Required"),
            (431, "Request Header Fields Too Large"),
            (503, "Service Unavailable"),
            (299, "Unknown"),
        ] {
            assert_eq!(reason_phrase(status), reason);
        }
    }
}
