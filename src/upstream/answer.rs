//! The backend's answer to one request, read with the shared HTTP/1.1 module: interim (1xx)
//! heads are skipped; the body is delimited by `Content-Length`, chunked, or the connection's
//! end (RFC 9112 §6.3), and refused past `--max-message-size` without reading further. A
//! response header `Edgepush-Close: CODE reason` (CODE 4000–4999) asks for the client to be
//! closed after the body; any other CODE makes the answer malformed. [`Answer::reply`] says
//! what the client gets.
//!
//! Like the rest of [`crate::http`], [`parse_answer`] consumes nothing and returns
//! [`Status::Partial`] until the whole answer is buffered; the caller reads more and calls it
//! again.

use crate::http::body::{chunked_body, chunked_extent, length_body, Framing};
use crate::http::response::parse_response;
use crate::http::{Error, Status, EMPTY_HEADER};

use super::Outcome;

/// The longest answer head we read (status line and fields).
pub const MAX_HEAD: usize = 16 << 10;

/// Header lines an answer head may carry.
const MAX_HEADERS: usize = 64;

/// The longest Close reason (RFC 6455 §5.5: a control payload is at most 125 bytes, 2 of them
/// the code).
const MAX_CLOSE_REASON: usize = 123;

/// A complete answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The final status.
    pub status: u16,
    /// The body (decoded when chunked).
    pub body: Vec<u8>,
    /// `Edgepush-Close`, if the answer carries it.
    pub close: Option<CloseRequest>,
    /// The backend keeps the connection open for the next request.
    pub keep_alive: bool,
}

/// The backend asks for the client to be closed: `Edgepush-Close: CODE reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    /// The Close code, 4000–4999.
    pub code: u16,
    /// The Close reason (at most 123 bytes).
    pub reason: String,
}

/// What the client gets for an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// One binary frame with the body.
    Frame(Vec<u8>),
    /// Nothing (200 without a body, 204).
    Nothing,
    /// The error `{"op":"error","code":502,…}`: the status was neither 200 nor 204.
    Error,
}

impl Answer {
    /// What the client gets, and the outcome counted. A close request applies after the reply
    /// (only to a 200 or 204 answer).
    pub fn reply(self) -> (Reply, Option<CloseRequest>, Outcome) {
        let reply = match self.status {
            200 if !self.body.is_empty() => Reply::Frame(self.body),
            200 | 204 => Reply::Nothing,
            _ => return (Reply::Error, None, Outcome::ErrorStatus),
        };
        let outcome = match (&self.close, &reply) {
            (Some(_), _) => Outcome::Closed,
            (None, Reply::Frame(_)) => Outcome::Ok,
            (None, _) => Outcome::NoContent,
        };
        (reply, self.close, outcome)
    }
}

/// Parses the answer at the start of `buf`. `eof`: the backend closed its side after these
/// bytes (an answer framed by the connection's end is complete only then; any other is cut
/// short). `limit`: the largest body. `Complete((answer, n))`: the answer took the first `n`
/// bytes. Errors are the outcomes counted: [`Outcome::Malformed`], [`Outcome::TooLarge`],
/// [`Outcome::Reset`] (the connection ended before the answer did).
pub fn parse_answer(
    buf: &[u8],
    eof: bool,
    limit: usize,
) -> Result<Status<(Answer, usize)>, Outcome> {
    let mut start = 0;
    loop {
        let rest = &buf[start..];
        let mut headers = [EMPTY_HEADER; MAX_HEADERS];
        let head = match parse_response(rest, &mut headers, MAX_HEAD) {
            Ok(Status::Complete(head)) => head,
            Ok(Status::Partial) if eof => return Err(Outcome::Reset),
            Ok(Status::Partial) => return Ok(Status::Partial),
            Err(_) => return Err(Outcome::Malformed),
        };
        if head.is_interim() {
            start += head.len;
            continue;
        }
        if head.status == 101 || head.status < 100 || head.status > 599 {
            return Err(Outcome::Malformed);
        }
        let close = match head.headers.get("edgepush-close") {
            None => None,
            Some(value) => Some(close_request(value).ok_or(Outcome::Malformed)?),
        };
        let framing = head.framing(false).map_err(|_| Outcome::Malformed)?;
        let keep_alive = head.keep_alive() && framing != Framing::UntilClose;
        let status = head.status;
        let after = start + head.len;
        let body_buf = &buf[after..];
        let body_error = |e: Error| match e {
            Error::BodyTooLarge => Outcome::TooLarge,
            _ => Outcome::Malformed,
        };
        let (body, used) = match framing {
            Framing::Empty => (Vec::new(), 0),
            Framing::Length(n) => match length_body(body_buf, n, limit).map_err(body_error)? {
                Status::Complete(body) => (body.to_vec(), body.len()),
                Status::Partial if eof => return Err(Outcome::Reset),
                Status::Partial => return Ok(Status::Partial),
            },
            Framing::Chunked => match chunked_extent(body_buf, limit).map_err(body_error)? {
                Status::Complete(_) => {
                    let mut body = Vec::new();
                    match chunked_body(body_buf, limit, &mut body).map_err(body_error)? {
                        Status::Complete(n) => (body, n),
                        Status::Partial => return Err(Outcome::Malformed),
                    }
                }
                Status::Partial if eof => return Err(Outcome::Reset),
                Status::Partial => return Ok(Status::Partial),
            },
            Framing::UntilClose => {
                if body_buf.len() > limit {
                    return Err(Outcome::TooLarge);
                }
                if !eof {
                    return Ok(Status::Partial);
                }
                (body_buf.to_vec(), body_buf.len())
            }
        };
        return Ok(Status::Complete((
            Answer {
                status,
                body,
                close,
                keep_alive,
            },
            after + used,
        )));
    }
}

/// `CODE reason`: CODE a decimal in 4000–4999, the reason optional (cut to 123 bytes at a
/// character boundary).
fn close_request(value: &[u8]) -> Option<CloseRequest> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (code, reason) = value.split_once(' ').unwrap_or((value, ""));
    let code = code
        .parse::<u16>()
        .ok()
        .filter(|c| (4000..=4999).contains(c))?;
    let mut reason = reason.trim();
    if reason.len() > MAX_CLOSE_REASON {
        let mut end = MAX_CLOSE_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason = &reason[..end];
    }
    Some(CloseRequest {
        code,
        reason: reason.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8], eof: bool) -> Result<Option<(Answer, usize)>, Outcome> {
        parse_answer(input, eof, 16).map(|s| match s {
            Status::Complete(a) => Some(a),
            Status::Partial => None,
        })
    }

    fn complete(input: &[u8]) -> Answer {
        let (answer, n) = parse(input, false).expect("ok").expect("complete");
        assert_eq!(n, input.len());
        answer
    }

    #[test]
    fn by_length_chunked_and_until_close() {
        let a = complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!(
            (a.status, a.body.as_slice(), a.keep_alive),
            (200, &b"abc"[..], true)
        );
        assert_eq!(a.reply().0, Reply::Frame(b"abc".to_vec()));
        let a = complete(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n",
        );
        assert_eq!(a.body, b"abc");
        let until_close = b"HTTP/1.1 200 OK\r\n\r\nabc";
        assert_eq!(parse(until_close, false), Ok(None));
        let (a, _) = parse(until_close, true).expect("ok").expect("complete");
        assert_eq!((a.body.as_slice(), a.keep_alive), (&b"abc"[..], false));
        let a = complete(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert!(!a.keep_alive);
        assert_eq!(a.reply(), (Reply::Nothing, None, Outcome::NoContent));
    }

    #[test]
    fn interim_answers_are_skipped() {
        let a = complete(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(a.status, 204);
        assert_eq!(a.reply().2, Outcome::NoContent);
    }

    #[test]
    fn every_prefix_is_partial() {
        let whole: &[u8] =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        for n in 0..whole.len() {
            assert_eq!(parse(&whole[..n], false), Ok(None), "prefix {n}");
            assert_eq!(parse(&whole[..n], true), Err(Outcome::Reset), "cut at {n}");
        }
        assert!(parse(whole, false).expect("ok").is_some());
    }

    #[test]
    fn errors() {
        assert_eq!(parse(b"garbage\r\n\r\n", false), Err(Outcome::Malformed));
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n", false),
            Err(Outcome::TooLarge)
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\n\r\n0123456789abcdefg", false),
            Err(Outcome::TooLarge)
        );
        assert_eq!(
            parse(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11\r\n",
                false
            ),
            Err(Outcome::TooLarge)
        );
        assert_eq!(
            parse(
                b"HTTP/1.1 200 OK\r\nEdgepush-Close: 1000 no\r\nContent-Length: 0\r\n\r\n",
                false
            ),
            Err(Outcome::Malformed)
        );
        let a = complete(b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nno");
        assert_eq!(a.reply(), (Reply::Error, None, Outcome::ErrorStatus));
    }

    #[test]
    fn close_requests() {
        let a = complete(
            b"HTTP/1.1 200 OK\r\nEdgepush-Close: 4001 go away now\r\nContent-Length: 1\r\n\r\nx",
        );
        let (reply, close, outcome) = a.reply();
        assert_eq!(reply, Reply::Frame(b"x".to_vec()));
        assert_eq!(
            close,
            Some(CloseRequest {
                code: 4001,
                reason: "go away now".to_owned()
            })
        );
        assert_eq!(outcome, Outcome::Closed);
        assert_eq!(close_request(b"4999").map(|c| c.code), Some(4999));
        assert!(close_request(b"5000 x").is_none());
        assert!(close_request(b"abc").is_none());
        let long = format!("4000 {}", "é".repeat(100));
        assert!(close_request(long.as_bytes()).is_some_and(|c| c.reason.len() <= 123));
    }
}
