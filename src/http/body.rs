//! Message bodies (RFC 9112 §6): how a body is delimited ([`Framing`], §6.3), a body by
//! `Content-Length` ([`length_body`]), and a chunked body (§7.1, [`chunked_body`]). Both body
//! readers look at the bytes after the head, take a caller-given limit (413 beyond), and
//! consume nothing until the whole body is there.

use super::headers::{list, Headers};
use super::{Error, Status};

/// Longest chunk-size line (size, extensions, CRLF) or trailer line we read: a peer that sends
/// more is refused rather than buffered.
pub const MAX_CHUNK_LINE: usize = 4096;

/// How the end of a body is found (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (a request with neither header, §6.3 item 7; a 1xx, 204 or 304 response, or
    /// the answer to HEAD, item 1).
    Empty,
    /// Exactly this many bytes (`Content-Length`, item 5).
    Length(u64),
    /// `Transfer-Encoding: chunked` (item 4): see [`chunked_body`].
    Chunked,
    /// A response body that ends when the server closes the connection (item 8).
    UntilClose,
}

impl Framing {
    /// A request's framing. A `Content-Length` must be valid even beside `Transfer-Encoding`;
    /// both together are refused ([`Error::LengthWithTransferEncoding`], item 3);
    /// `Transfer-Encoding` must be exactly `chunked` ([`Error::ChunkedNotFinal`] when it does
    /// not end with it, item 4; [`Error::UnsupportedTransferCoding`] for other codings before
    /// it).
    pub fn of_request(headers: &Headers<'_, '_>) -> Result<Framing, Error> {
        let length = headers.content_length()?;
        match (transfer_coding(headers)?, length) {
            (Some(_), Some(_)) => Err(Error::LengthWithTransferEncoding),
            (Some(Coding::Chunked), None) => Ok(Framing::Chunked),
            (Some(Coding::NotChunked), None) => Err(Error::ChunkedNotFinal),
            (None, Some(n)) => Ok(Framing::Length(n)),
            (None, None) => Ok(Framing::Empty),
        }
    }

    /// A response's framing, given its status and whether the request was `HEAD`. Unlike a
    /// request, a response with neither header runs until the connection closes, and one
    /// whose `Transfer-Encoding` does not end in `chunked` too (item 4).
    pub fn of_response(
        headers: &Headers<'_, '_>,
        status: u16,
        request_was_head: bool,
    ) -> Result<Framing, Error> {
        if request_was_head || (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(Framing::Empty);
        }
        let length = headers.content_length()?;
        match (transfer_coding(headers)?, length) {
            (Some(_), Some(_)) => Err(Error::LengthWithTransferEncoding),
            (Some(Coding::Chunked), None) => Ok(Framing::Chunked),
            (Some(Coding::NotChunked), None) | (None, None) => Ok(Framing::UntilClose),
            (None, Some(n)) => Ok(Framing::Length(n)),
        }
    }
}

/// What `Transfer-Encoding` asks for, when present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    /// Exactly `chunked`.
    Chunked,
    /// The last coding is not `chunked` (or the list is empty).
    NotChunked,
}

/// `Ok(None)` without `Transfer-Encoding`. The lines form one list (RFC 9110 §5.3). A list
/// that does not end in `chunked`, or applies `chunked` twice (RFC 9112 §6.1: a sender MUST
/// NOT), is [`Coding::NotChunked`]; any other coding before a final `chunked` is
/// [`Error::UnsupportedTransferCoding`] (we decode none of them: 501).
fn transfer_coding(headers: &Headers<'_, '_>) -> Result<Option<Coding>, Error> {
    if !headers.contains("transfer-encoding") {
        return Ok(None);
    }
    let is_chunked = |c: &[u8]| c.eq_ignore_ascii_case(b"chunked");
    let (mut last, mut chunked_before, mut other_before) = (None, false, false);
    for coding in headers.get_all("transfer-encoding").flat_map(list) {
        if let Some(previous) = last {
            if is_chunked(previous) {
                chunked_before = true;
            } else {
                other_before = true;
            }
        }
        last = Some(coding);
    }
    match last {
        Some(c) if is_chunked(c) && chunked_before => Ok(Some(Coding::NotChunked)),
        Some(c) if is_chunked(c) && other_before => Err(Error::UnsupportedTransferCoding),
        Some(c) if is_chunked(c) => Ok(Some(Coding::Chunked)),
        _ => Ok(Some(Coding::NotChunked)),
    }
}

/// The body of `length` bytes at the start of `buf` (the bytes after the head). A `length`
/// above `limit` is [`Error::BodyTooLarge`] at once, before any of the body arrives.
/// `Partial` until all of it is buffered; then the body, which is also the count to consume.
pub fn length_body(buf: &[u8], length: u64, limit: usize) -> Result<Status<&[u8]>, Error> {
    let length = usize::try_from(length)
        .ok()
        .filter(|n| *n <= limit)
        .ok_or(Error::BodyTooLarge)?;
    Ok(buf.get(..length).map_or(Status::Partial, Status::Complete))
}

/// Decodes the chunked body at the start of `buf` (RFC 9112 §7.1) into `out`, appending.
///
/// `Complete(n)`: the whole body, last chunk and trailer section included, took the first `n`
/// bytes of `buf`; its data was appended to `out` (trailer fields are discarded).
/// `Partial`: more is needed; `out` is as it was. Errors: [`Error::BodyTooLarge`] as soon as
/// the chunk sizes seen add up to more than `limit`; [`Error::BadChunk`] for anything that is
/// not the grammar (bare LF, a size that is not hex or over 16 digits, missing CRLF after the
/// data, a chunk or trailer line longer than [`MAX_CHUNK_LINE`]).
pub fn chunked_body(buf: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<Status<usize>, Error> {
    let start = out.len();
    let result = decode_chunks(buf, limit, Some(out));
    if !matches!(result, Ok(Status::Complete(_))) {
        out.truncate(start);
    }
    result
}

/// [`chunked_body`] without the copy: how many bytes of `buf` the whole chunked body takes,
/// with the same errors, at a cost that grows with the number of chunks, not with their
/// size. A server that re-reads a growing buffer calls this on each read and decodes once it
/// is `Complete`.
pub fn chunked_extent(buf: &[u8], limit: usize) -> Result<Status<usize>, Error> {
    decode_chunks(buf, limit, None)
}

fn decode_chunks(
    buf: &[u8],
    limit: usize,
    mut out: Option<&mut Vec<u8>>,
) -> Result<Status<usize>, Error> {
    let mut at = 0;
    let mut total = 0usize;
    loop {
        // chunk-size [ chunk-ext ] CRLF
        let Some((line, next)) = line_at(buf, at)? else {
            return Ok(Status::Partial);
        };
        let size = chunk_size(line)?;
        at = next;
        if size == 0 {
            break;
        }
        total = total.checked_add(size).ok_or(Error::BodyTooLarge)?;
        if total > limit {
            return Err(Error::BodyTooLarge);
        }
        // chunk-data CRLF
        let end = at.checked_add(size).ok_or(Error::BodyTooLarge)?;
        let Some(data) = buf.get(at..end) else {
            return Ok(Status::Partial);
        };
        match buf.get(end..end + 2) {
            Some(b"\r\n") => {}
            Some(_) => return Err(Error::BadChunk),
            None if buf.get(end).is_some_and(|&b| b != b'\r') => return Err(Error::BadChunk),
            None => return Ok(Status::Partial),
        }
        if let Some(out) = out.as_mut() {
            out.extend_from_slice(data);
        }
        at = end + 2;
    }
    // trailer-section CRLF: field lines until an empty one.
    loop {
        let Some((line, next)) = line_at(buf, at)? else {
            return Ok(Status::Partial);
        };
        at = next;
        if line.is_empty() {
            return Ok(Status::Complete(at));
        }
    }
}

/// The line at `buf[at..]` without its CRLF, and where the next begins; `None` if its end has
/// not arrived. A bare CR or LF, or a line over [`MAX_CHUNK_LINE`], is [`Error::BadChunk`].
fn line_at(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, Error> {
    let rest = buf.get(at..).unwrap_or_default();
    let window = &rest[..rest.len().min(MAX_CHUNK_LINE)];
    match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(i) if window[i] == b'\n' => Err(Error::BadChunk),
        Some(i) => match window.get(i + 1) {
            Some(b'\n') => Ok(Some((&window[..i], at + i + 2))),
            Some(_) => Err(Error::BadChunk),
            None if i + 1 >= MAX_CHUNK_LINE => Err(Error::BadChunk),
            None => Ok(None),
        },
        None if window.len() >= MAX_CHUNK_LINE => Err(Error::BadChunk),
        None => Ok(None),
    }
}

/// `chunk-size [ chunk-ext ]`: 1 to 16 hex digits, then nothing, or extensions after optional
/// whitespace and `;` (their content is ignored).
fn chunk_size(line: &[u8]) -> Result<usize, Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(Error::BadChunk);
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return Err(Error::BadChunk);
    }
    let size = line[..digits].iter().fold(0u64, |n, &b| {
        let d = (b as char).to_digit(16).unwrap_or(0);
        (n << 4) | u64::from(d)
    });
    // Over usize on a 32-bit target is over any limit.
    usize::try_from(size).map_err(|_| Error::BodyTooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header lines as (name, value) pairs.
    type Lines<'a> = &'a [(&'a str, &'a str)];
    use crate::http::Header;

    fn framing(lines: &[(&str, &str)], status: Option<u16>) -> Result<Framing, Error> {
        let lines: Vec<Header<'_>> = lines
            .iter()
            .map(|(name, value)| Header {
                name,
                value: value.as_bytes(),
            })
            .collect();
        let headers = Headers::new(&lines);
        match status {
            None => Framing::of_request(&headers),
            Some(s) => Framing::of_response(&headers, s, false),
        }
    }

    #[test]
    fn request_framing() {
        let cases: &[(Lines<'_>, Result<Framing, Error>)] = &[
            (&[], Ok(Framing::Empty)),
            (&[("Content-Length", "5")], Ok(Framing::Length(5))),
            (&[("Content-Length", "x")], Err(Error::InvalidContentLength)),
            (&[("Transfer-Encoding", "chunked")], Ok(Framing::Chunked)),
            (&[("Transfer-Encoding", "Chunked")], Ok(Framing::Chunked)),
            (
                &[("Transfer-Encoding", "chunked"), ("Content-Length", "3")],
                Err(Error::LengthWithTransferEncoding),
            ),
            (
                &[("Transfer-Encoding", "chunked"), ("Content-Length", "x")],
                Err(Error::InvalidContentLength),
            ),
            (
                &[("Transfer-Encoding", "gzip")],
                Err(Error::ChunkedNotFinal),
            ),
            (
                &[("Transfer-Encoding", "chunked, gzip")],
                Err(Error::ChunkedNotFinal),
            ),
            (&[("Transfer-Encoding", "")], Err(Error::ChunkedNotFinal)),
            (
                &[("Transfer-Encoding", "gzip, chunked")],
                Err(Error::UnsupportedTransferCoding),
            ),
            (
                &[
                    ("Transfer-Encoding", "chunked"),
                    ("Transfer-Encoding", "chunked"),
                ],
                Err(Error::ChunkedNotFinal),
            ),
            (
                &[
                    ("Transfer-Encoding", "gzip"),
                    ("Transfer-Encoding", "chunked"),
                ],
                Err(Error::UnsupportedTransferCoding),
            ),
            (
                &[("Transfer-Encoding", "chunked, identity")],
                Err(Error::ChunkedNotFinal),
            ),
            (
                &[("Transfer-Encoding", "chunked;q=1")],
                Err(Error::ChunkedNotFinal),
            ),
            (
                &[("Transfer-Encoding", " , chunked ,")],
                Ok(Framing::Chunked),
            ),
        ];
        for (lines, expected) in cases {
            assert_eq!(framing(lines, None), *expected, "{lines:?}");
        }
    }

    #[test]
    fn response_framing() {
        let cases: &[(Lines<'_>, u16, Result<Framing, Error>)] = &[
            (&[], 200, Ok(Framing::UntilClose)),
            (&[("Content-Length", "5")], 200, Ok(Framing::Length(5))),
            (&[("Content-Length", "5")], 204, Ok(Framing::Empty)),
            (&[("Content-Length", "5")], 304, Ok(Framing::Empty)),
            (&[], 101, Ok(Framing::Empty)),
            (
                &[("Transfer-Encoding", "chunked")],
                200,
                Ok(Framing::Chunked),
            ),
            (
                &[("Transfer-Encoding", "gzip")],
                200,
                Ok(Framing::UntilClose),
            ),
            (
                &[("Transfer-Encoding", "gzip"), ("Content-Length", "1")],
                200,
                Err(Error::LengthWithTransferEncoding),
            ),
            (
                &[("Transfer-Encoding", "gzip, chunked")],
                200,
                Err(Error::UnsupportedTransferCoding),
            ),
        ];
        for (lines, status, expected) in cases {
            assert_eq!(
                framing(lines, Some(*status)),
                *expected,
                "{lines:?} {status}"
            );
        }
        let headers = Headers::new(&[]);
        assert_eq!(
            Framing::of_response(&headers, 200, true),
            Ok(Framing::Empty)
        );
    }

    #[test]
    fn length_bodies() {
        assert_eq!(
            length_body(b"abcdef", 3, 10),
            Ok(Status::Complete(&b"abc"[..]))
        );
        assert_eq!(length_body(b"ab", 3, 10), Ok(Status::Partial));
        assert_eq!(length_body(b"", 0, 0), Ok(Status::Complete(&b""[..])));
        assert_eq!(length_body(b"", 11, 10), Err(Error::BodyTooLarge));
        assert_eq!(
            length_body(b"", u64::MAX, 1 << 30),
            Err(Error::BodyTooLarge)
        );
        assert_eq!(length_body(b"abc", 10, 10), Ok(Status::Partial));
    }

    type Decoded = Result<Status<usize>, Error>;

    const CHUNKED: &[u8] =
        b"4\r\nWiki\r\n5;name=v\r\npedia\r\nE \r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";

    #[test]
    fn chunked_rfc_example_and_every_cut() {
        let whole = CHUNKED.len() - b"NEXT".len();
        let mut out = b"kept".to_vec();
        assert_eq!(
            chunked_body(CHUNKED, 100, &mut out),
            Ok(Status::Complete(whole))
        );
        assert_eq!(out, b"keptWikipedia in\r\n\r\nchunks.");
        assert_eq!(chunked_extent(CHUNKED, 100), Ok(Status::Complete(whole)));
        for cut in 0..whole {
            assert_eq!(chunked_extent(&CHUNKED[..cut], 100), Ok(Status::Partial));
            let mut out = Vec::new();
            assert_eq!(
                chunked_body(&CHUNKED[..cut], 100, &mut out),
                Ok(Status::Partial),
                "cut {cut}"
            );
            assert!(out.is_empty(), "partial appends nothing (cut {cut})");
        }
    }

    #[test]
    fn chunked_bad_input_and_limits() {
        let cases: &[(&[u8], usize, Decoded)] = &[
            (b"0\r\n\r\n", 0, Ok(Status::Complete(5))),
            (b"000\r\n\r\n", 0, Ok(Status::Complete(7))),
            (b"3\r\nabc\r\n0\r\n\r\n", 3, Ok(Status::Complete(13))),
            (b"3\r\nabc\r\n0\r\n\r\n", 2, Err(Error::BodyTooLarge)),
            (
                b"ffffffffffffffff\r\n",
                usize::MAX,
                Err(Error::BodyTooLarge),
            ),
            (b"10000000000000000\r\n", usize::MAX, Err(Error::BadChunk)),
            (b"4\r\n", 3, Err(Error::BodyTooLarge)),
            (b"\r\n", 10, Err(Error::BadChunk)),
            (b"x\r\n", 10, Err(Error::BadChunk)),
            (b"-1\r\n", 10, Err(Error::BadChunk)),
            (b"3 x\r\n", 10, Err(Error::BadChunk)),
            (b"3\n", 10, Err(Error::BadChunk)),
            (b"3\rx", 10, Err(Error::BadChunk)),
            (b"3\r\nabcX", 10, Err(Error::BadChunk)),
            (b"3\r\nabc\rX", 10, Err(Error::BadChunk)),
            (b"3\r\nabc\n", 10, Err(Error::BadChunk)),
            (b"0\r\nX: 1\n\r\n", 10, Err(Error::BadChunk)),
            (b"3 ; ext\r\nabc\r\n0\r\n\r\n", 10, Ok(Status::Complete(19))),
            // Neighbours: sign, prefix, whitespace before the size, size overflow at the limit.
            (b"+3\r\nabc\r\n0\r\n\r\n", 10, Err(Error::BadChunk)),
            (b"0x3\r\nabc\r\n0\r\n\r\n", 10, Err(Error::BadChunk)),
            (b" 3\r\nabc\r\n0\r\n\r\n", 10, Err(Error::BadChunk)),
            (b"3\r\nabc\r\n", 10, Ok(Status::Partial)),
            (b"3\r\nabc\r\n0\r\n", 10, Ok(Status::Partial)),
            (
                b"A\r\n0123456789\r\n0\r\n\r\n",
                10,
                Ok(Status::Complete(20)),
            ),
            (
                b"8\r\n01234567\r\n3\r\nabc\r\n",
                10,
                Err(Error::BodyTooLarge),
            ),
            (
                b"fffffffffffffff0\r\n",
                usize::MAX,
                Err(Error::BodyTooLarge),
            ),
        ];
        for (input, limit, expected) in cases {
            assert_eq!(chunked_extent(input, *limit), *expected);
            let mut out = Vec::new();
            let got = chunked_body(input, *limit, &mut out);
            assert_eq!(got, *expected, "{:?}", String::from_utf8_lossy(input));
            if !matches!(got, Ok(Status::Complete(_))) {
                assert!(out.is_empty());
            }
        }
        // Line caps: a size line or trailer that never ends is refused at the cap.
        let mut long = b"1;".to_vec();
        long.resize(MAX_CHUNK_LINE, b'a');
        assert_eq!(
            chunked_body(&long, 10, &mut Vec::new()),
            Err(Error::BadChunk)
        );
        long.truncate(MAX_CHUNK_LINE - 1);
        assert_eq!(
            chunked_body(&long, 10, &mut Vec::new()),
            Ok(Status::Partial)
        );
        let mut trailer = b"0\r\nX: ".to_vec();
        trailer.resize(3 + MAX_CHUNK_LINE, b'a');
        assert_eq!(
            chunked_body(&trailer, 10, &mut Vec::new()),
            Err(Error::BadChunk)
        );
    }
}
