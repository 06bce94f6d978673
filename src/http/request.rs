//! Request heads (RFC 9112 §3): the request line split into method, path and query, the
//! version, the header lines and the head's length; and query parameters with
//! percent-decoding (RFC 3986 §2.1, §3.4).
//!
//! The request target (§3.2) is read in origin form (`/path?query`) or absolute form
//! (`http://host:port/path?query`, served like its path and query, §3.2.2); every other form,
//! and a target with a `#` fragment, is [`Error::BadTarget`]. Fields that must appear once
//! ([`super::SINGLETON_FIELDS`]) are checked here, for every request on both listeners.

use super::body::Framing;
use super::headers::Headers;
use super::{capped_parse, Error, Header, Status, Syntax, SINGLETON_FIELDS};

/// A complete request head, borrowed from the input buffer (`'b`) and the lent header array
/// (`'h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead<'h, 'b> {
    /// The method token, case-sensitive (RFC 9110 §9.1).
    pub method: &'b str,
    /// The request target as sent (§3.2), query included.
    pub target: &'b str,
    /// The path: in origin form the target up to the first `?`; in absolute form the part
    /// after the authority up to the first `?`, or `/` when that is empty (§3.2.2, RFC 9110
    /// §4.2.3).
    pub path: &'b str,
    /// What follows the first `?`, undecoded; `Some("")` for a bare `?`.
    pub query: Option<&'b str>,
    /// The authority (`host[:port]`) of an absolute-form target; `None` in origin form.
    pub authority: Option<&'b str>,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// The header lines.
    pub headers: Headers<'h, 'b>,
    /// Bytes of the head, request line to blank line inclusive. The body (or the next
    /// pipelined request) starts here.
    pub len: usize,
}

impl<'h, 'b> RequestHead<'h, 'b> {
    /// Whether the connection persists after this exchange (RFC 9112 §9.3; see
    /// [`super::headers::ConnectionOptions::persists`]).
    pub fn keep_alive(&self) -> bool {
        self.headers.connection().persists(self.minor_version)
    }

    /// `Expect: 100-continue` was sent (RFC 9110 §10.1.1).
    pub fn expects_continue(&self) -> bool {
        self.headers.expects_continue()
    }

    /// The raw (undecoded) value of the first query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&'b str> {
        query_param(self.query, name)
    }

    /// How the body is delimited (RFC 9112 §6.3); see [`Framing::of_request`]. Also
    /// [`Error::TransferEncodingInHttp10`] for `Transfer-Encoding` in an HTTP/1.0 request
    /// (§6.1).
    pub fn framing(&self) -> Result<Framing, Error> {
        if self.minor_version == 0 && self.headers.contains("transfer-encoding") {
            return Err(Error::TransferEncodingInHttp10);
        }
        Framing::of_request(&self.headers)
    }
}

/// Parses the request head at the start of `buf` into the lent `headers` array (its length is
/// the most header lines accepted). Only the first `max_head` bytes are scanned.
///
/// `Ok(Partial)`: the head has not fully arrived and `buf` is shorter than `max_head`: read
/// more (nothing is consumed). Errors: [`Error::HeadTooLarge`] (the head does not end within
/// `max_head` bytes), [`Error::TooManyHeaders`], [`Error::Malformed`], [`Error::BadTarget`]
/// (see [`split_target`]), [`Error::RepeatedField`] (one of [`SINGLETON_FIELDS`] twice),
/// [`Error::MissingHost`] (an HTTP/1.1 request without `Host`, RFC 9112 §3.2; HTTP/1.0 may
/// omit it).
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [Header<'b>],
    max_head: usize,
) -> Result<Status<RequestHead<'h, 'b>>, Error> {
    let mut req = httparse::Request::new(headers);
    let len = match capped_parse(buf, max_head, |b| req.parse(b))? {
        Status::Complete(n) => n,
        Status::Partial => return Ok(Status::Partial),
    };
    let httparse::Request {
        method,
        path,
        version,
        headers,
    } = req;
    // httparse sets all three once the head is complete.
    let (Some(method), Some(target), Some(minor_version)) = (method, path, version) else {
        return Err(Error::Malformed(Syntax::Token));
    };
    let (authority, path, query) = split_target(target)?;
    let headers = Headers::new(headers);
    headers.check_once(&SINGLETON_FIELDS)?;
    if minor_version >= 1 && !headers.contains("host") {
        return Err(Error::MissingHost);
    }
    Ok(Status::Complete(RequestHead {
        method,
        target,
        path,
        query,
        authority,
        minor_version,
        headers,
        len,
    }))
}

/// Splits a request target (RFC 9112 §3.2) into authority (absolute form only), path and
/// query. Origin form: `/path[?query]`. Absolute form: `http://` or `https://` (scheme
/// case-insensitive), a non-empty authority without userinfo (RFC 9110 §4.2.4), then an
/// optional path and query; an empty path is `/`. Everything else is [`Error::BadTarget`]:
/// authority form (`host:port`), asterisk form (`*`), other schemes, a `#` anywhere (a
/// fragment is never sent, RFC 9110 §4.2.5), and bytes outside visible ASCII.
pub fn split_target(target: &str) -> Result<(Option<&str>, &str, Option<&str>), Error> {
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) || target.contains('#') {
        return Err(Error::BadTarget);
    }
    let (authority, rest) = if target.starts_with('/') {
        (None, target)
    } else {
        let (scheme, rest) = target.split_once("://").ok_or(Error::BadTarget)?;
        if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
            return Err(Error::BadTarget);
        }
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, rest) = rest.split_at(end);
        if authority.is_empty() || authority.contains('@') {
            return Err(Error::BadTarget);
        }
        (Some(authority), rest)
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    Ok((authority, if path.is_empty() { "/" } else { path }, query))
}

/// The raw value of the first `name=` pair in `query` (pairs split on `&`; a pair without `=`
/// has the empty value). Names compare exactly, undecoded.
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// RFC 3986 §2.1 percent-decoding, strict: `None` for a `%` not followed by two hex digits, or
/// a result that is not UTF-8. `+` stays `+` (form encoding's space is not RFC 3986's).
pub fn percent_decode(s: &str) -> Option<String> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::EMPTY_HEADER;

    const GET: &[u8] = b"GET /a/b?x=1&y=%41 HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n";

    #[test]
    fn head_is_split() {
        let mut headers = [EMPTY_HEADER; 8];
        let head = parse_request(GET, &mut headers, 1024)
            .unwrap()
            .complete()
            .unwrap();
        assert_eq!(
            (head.method, head.target, head.path, head.query),
            ("GET", "/a/b?x=1&y=%41", "/a/b", Some("x=1&y=%41"))
        );
        assert_eq!((head.minor_version, head.len), (1, GET.len()));
        assert_eq!(head.headers.get("host"), Some(&b"h"[..]));
        assert_eq!(head.query_param("y"), Some("%41"));
        assert!(head.expects_continue() && head.keep_alive());
        assert_eq!(head.framing(), Ok(Framing::Empty));
    }

    #[test]
    fn partial_at_every_cut_and_body_left_alone() {
        for cut in 0..GET.len() {
            let mut headers = [EMPTY_HEADER; 8];
            assert_eq!(
                parse_request(&GET[..cut], &mut headers, 1024).map(|s| s.is_partial()),
                Ok(true),
                "cut {cut}"
            );
        }
        let mut buf = GET.to_vec();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\nHost: h\r\n");
        let mut headers = [EMPTY_HEADER; 8];
        let head = parse_request(&buf, &mut headers, 1024)
            .unwrap()
            .complete()
            .unwrap();
        assert_eq!(head.len, GET.len());
    }

    #[test]
    fn bad_input_table() {
        let cases: &[(&[u8], usize, usize, Error)] = &[
            // (input, header slots, max head, error)
            (b"GARBAGE\r\n\r\n", 8, 1024, Error::Malformed(Syntax::Token)),
            (
                b"GET / HTTP/2.0\r\n\r\n",
                8,
                1024,
                Error::Malformed(Syntax::Version),
            ),
            (
                b"GET / FTP/1.1\r\n\r\n",
                8,
                1024,
                Error::Malformed(Syntax::Version),
            ),
            (b"GET /\r\n\r\n", 8, 1024, Error::Malformed(Syntax::Token)),
            (
                b"GET\x01 / HTTP/1.1\r\nHost: h\r\n\r\n",
                8,
                1024,
                Error::Malformed(Syntax::Token),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n",
                8,
                1024,
                Error::Malformed(Syntax::HeaderName),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n",
                1,
                1024,
                Error::TooManyHeaders,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\n\r\n",
                0,
                1024,
                Error::TooManyHeaders,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\n\r\n",
                8,
                20,
                Error::HeadTooLarge,
            ),
            (b"GET / HTTP/1.1\r\nA: 1\r\n", 8, 20, Error::HeadTooLarge),
        ];
        for (input, slots, max, error) in cases {
            let mut headers = vec![EMPTY_HEADER; *slots];
            assert_eq!(
                parse_request(input, &mut headers, *max),
                Err(*error),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn http_1_0_and_query_shapes() {
        let cases: &[(&[u8], &str, Option<&str>, bool)] = &[
            (b"GET / HTTP/1.0\r\n\r\n", "/", None, false),
            (
                b"GET /? HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                "/",
                Some(""),
                true,
            ),
            (
                b"GET /p?a?b HTTP/1.1\r\nHost: h\r\n\r\n",
                "/p",
                Some("a?b"),
                true,
            ),
            (
                b"GET http://h/x?y HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                "/x",
                Some("y"),
                false,
            ),
        ];
        for (input, path, query, keep_alive) in cases {
            let mut headers = [EMPTY_HEADER; 4];
            let head = parse_request(input, &mut headers, 1024)
                .unwrap()
                .complete()
                .unwrap();
            assert_eq!((head.path, head.query), (*path, *query));
            assert_eq!(head.keep_alive(), *keep_alive, "{path}");
        }
    }

    #[test]
    fn target_forms() {
        type Split<'a> = Result<(Option<&'a str>, &'a str, Option<&'a str>), Error>;
        let cases: &[(&str, Split<'_>)] = &[
            ("/", Ok((None, "/", None))),
            ("/echo?x=1", Ok((None, "/echo", Some("x=1")))),
            ("//x", Ok((None, "//x", None))),
            (
                "http://127.0.0.1:8080/echo?x=1",
                Ok((Some("127.0.0.1:8080"), "/echo", Some("x=1"))),
            ),
            ("HTTPS://h/ws", Ok((Some("h"), "/ws", None))),
            ("http://h", Ok((Some("h"), "/", None))),
            ("http://h?q", Ok((Some("h"), "/", Some("q")))),
            ("http://[::1]:80/a", Ok((Some("[::1]:80"), "/a", None))),
            // Authority form, asterisk form, other schemes, no authority, userinfo.
            ("h:443", Err(Error::BadTarget)),
            ("*", Err(Error::BadTarget)),
            ("ftp://h/x", Err(Error::BadTarget)),
            ("ws://h/ws", Err(Error::BadTarget)),
            ("http:///x", Err(Error::BadTarget)),
            ("http:/x", Err(Error::BadTarget)),
            ("http://u:p@h/x", Err(Error::BadTarget)),
            ("echo", Err(Error::BadTarget)),
            ("", Err(Error::BadTarget)),
            // A fragment anywhere.
            ("/ws?user=bob#x", Err(Error::BadTarget)),
            ("/ws#", Err(Error::BadTarget)),
            ("http://h/#x", Err(Error::BadTarget)),
            // Bytes outside visible ASCII.
            ("/caf\u{e9}", Err(Error::BadTarget)),
            ("/a\x7f", Err(Error::BadTarget)),
        ];
        for (target, expected) in cases {
            assert_eq!(split_target(target), *expected, "{target:?}");
        }
    }

    #[test]
    fn heads_that_are_refused() {
        let cases: &[(&[u8], Error)] = &[
            (
                b"GET http://h:1/e?x=1#f HTTP/1.1\r\nHost: h\r\n\r\n",
                Error::BadTarget,
            ),
            (b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", Error::BadTarget),
            (
                b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n",
                Error::BadTarget,
            ),
            (
                b"GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n",
                Error::BadTarget,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
                Error::RepeatedField("host"),
            ),
            (
                b"GET / HTTP/1.1\r\nhost: a\r\nHOST: b\r\n\r\n",
                Error::RepeatedField("host"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nOrigin: a\r\nOrigin: a\r\n\r\n",
                Error::RepeatedField("origin"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n",
                Error::RepeatedField("authorization"),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                Error::RepeatedField("content-length"),
            ),
            // HTTP/1.1 needs Host (§3.2); an empty value is allowed (§3.2.3 allows an empty
            // authority), a missing field is not.
            (b"GET / HTTP/1.1\r\n\r\n", Error::MissingHost),
            (b"GET /ws HTTP/1.1\r\nOrigin: o\r\n\r\n", Error::MissingHost),
            // obs-fold (RFC 9112 §5.2) and whitespace before the colon (§5.1): not fields.
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
                Error::Malformed(Syntax::HeaderName),
            ),
            (
                b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
                Error::Malformed(Syntax::HeaderName),
            ),
        ];
        for (input, error) in cases {
            let mut headers = [EMPTY_HEADER; 8];
            assert_eq!(
                parse_request(input, &mut headers, 1024),
                Err(*error),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn transfer_encoding_in_http_1_0() {
        let input = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut headers = [EMPTY_HEADER; 8];
        let head = parse_request(input, &mut headers, 1024)
            .unwrap()
            .complete()
            .unwrap();
        assert_eq!(head.framing(), Err(Error::TransferEncodingInHttp10));
        let input = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = parse_request(input, &mut headers, 1024)
            .unwrap()
            .complete()
            .unwrap();
        assert_eq!(head.framing(), Ok(Framing::Chunked));
    }

    #[test]
    fn query_params() {
        let cases: &[(Option<&str>, &str, Option<&str>)] = &[
            (None, "a", None),
            (Some(""), "a", None),
            (Some("a=1"), "a", Some("1")),
            (Some("b=2&a=1&a=3"), "a", Some("1")),
            (Some("a"), "a", Some("")),
            (Some("a=&b=2"), "a", Some("")),
            (Some("ab=1"), "a", None),
            (Some("a=1=2"), "a", Some("1=2")),
            (Some("x=1"), "", None),
            (Some("&=v"), "", Some("")),
        ];
        for (query, name, expected) in cases {
            assert_eq!(query_param(*query, name), *expected, "{query:?} {name}");
        }
    }

    #[test]
    fn percent_decoding() {
        let cases: &[(&str, Option<&str>)] = &[
            ("", Some("")),
            ("abc", Some("abc")),
            ("a%2Fb%2fc", Some("a/b/c")),
            ("%41%42", Some("AB")),
            ("a+b", Some("a+b")),
            ("%C3%A9", Some("é")),
            ("%", None),
            ("%4", None),
            ("%4g", None),
            ("%C3", None),
            ("%ff", None),
        ];
        for &(input, expected) in cases {
            assert_eq!(percent_decode(input).as_deref(), expected, "{input}");
        }
    }
}
