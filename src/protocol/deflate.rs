//! permessage-deflate (RFC 7692) with no per-connection state: the offer parser and the answer
//! (§5, §7.1), and the per-worker [`Inflater`] and [`Deflater`] that every connection of a
//! worker borrows for one message at a time (§7.2).
//!
//! The server always answers `server_no_context_takeover; client_no_context_takeover`
//! (§7.1.1.1 and §7.1.1.2 let it require both), so every message is compressed on its own: a
//! connection keeps nothing between messages but the few bits of [`Agreement`], and a
//! published message can be compressed once for all its subscribers.
//!
//! `server_max_window_bits=N` (§7.1.2.1) is echoed when offered; it is honoured without a
//! compressor of that window size: a message compressed on its own never refers back further
//! than its own length, so messages of at most 2^N bytes are compressed and larger ones go
//! plain (a message without RSV1 is always allowed, §6). `client_max_window_bits` (§7.1.2.2)
//! needs no answer: the inflater takes any window up to 2^15.

use std::sync::{Arc, Weak};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::protocol::frame::{FrameHeader, OpCode, SharedFrame, MAX_HEADER_LEN};
use crate::protocol::utf8::Utf8Validator;

/// The extension's token in `Sec-WebSocket-Extensions` (§5).
pub const EXTENSION_NAME: &str = "permessage-deflate";

/// The four bytes a sender removes from the end of a compressed message and the receiver puts
/// back before inflating (§7.2.1, §7.2.2): an empty non-final stored block.
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The deflate level the worker compresses with (1..=9). Level 1 is the fastest and the JSON
/// the server pushes compresses nearly as well at it as at 6 (see the README's Dependencies).
pub const LEVEL: u32 = 1;

/// What the server agreed to with one client: stored in the session's extension bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// `server_max_window_bits` from the accepted offer (8..=15), echoed in the answer
    /// (§7.1.2.1); `None` when the client did not send it (a window of 2^15).
    pub server_max_window_bits: Option<u8>,
}

impl Agreement {
    /// The largest window the client lets us use, in bits (15 when it set no limit).
    pub fn server_window_bits(&self) -> u8 {
        self.server_max_window_bits.unwrap_or(15)
    }

    /// Appends the `Sec-WebSocket-Extensions` value answering the accepted offer (§7.1):
    /// `permessage-deflate; server_no_context_takeover; client_no_context_takeover`, plus
    /// `server_max_window_bits=N` when the client asked for it.
    pub fn write_response_value(&self, out: &mut String) {
        out.push_str(EXTENSION_NAME);
        out.push_str("; server_no_context_takeover; client_no_context_takeover");
        if let Some(bits) = self.server_max_window_bits {
            out.push_str("; server_max_window_bits=");
            out.push_str(&bits.to_string());
        }
    }
}

/// Finds the first acceptable `permessage-deflate` offer in the values of every
/// `Sec-WebSocket-Extensions` header, in order (RFC 6455 §9.1: the header is a comma-separated
/// list and may be repeated). An offer with an unknown parameter, a parameter given twice or
/// a bad value is declined and the next one is tried (§7.1: "decline" means not answering
/// it, never an HTTP error). Other extensions are skipped.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Agreement> {
    values
        .into_iter()
        .flat_map(|value| split_outside_quotes(value, ','))
        .find_map(parse_offer)
}

/// One element of the extension list: `permessage-deflate` and its parameters, if it is an
/// acceptable offer of ours.
fn parse_offer(element: &str) -> Option<Agreement> {
    let mut parts = split_outside_quotes(element, ';');
    let name = parts.next()?.trim();
    if !name.eq_ignore_ascii_case(EXTENSION_NAME) {
        return None;
    }
    let mut seen = 0u8;
    let mut agreement = Agreement {
        server_max_window_bits: None,
    };
    for param in parts {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k.trim(), Some(unquote(v.trim())?)),
            None => (param.trim(), None),
        };
        let bit = match key.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 1,
            "client_no_context_takeover" if value.is_none() => 2,
            "server_max_window_bits" => {
                agreement.server_max_window_bits = Some(window_bits(value?)?);
                4
            }
            "client_max_window_bits" => {
                if let Some(v) = value {
                    window_bits(v)?;
                }
                8
            }
            _ => return None,
        };
        if seen & bit != 0 {
            return None; // §7.1: a parameter given twice makes the offer unacceptable
        }
        seen |= bit;
    }
    Some(agreement)
}

/// A window size parameter's value: 1*DIGIT in 8..=15, no leading zero (§7.1.2.1).
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
}

/// A parameter value as a token or a quoted-string (§7.1's values may be quoted, RFC 7230
/// §3.2.6); `None` for an unterminated or escaped quoted-string (no valid value needs one).
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            (!inner.contains(['"', '\\'])).then_some(inner)
        }
        None => Some(value),
    }
}

/// Splits `s` at `sep` where it is not inside a quoted-string.
fn split_outside_quotes(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, c) in s.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                c if c == sep && !quoted => {
                    rest = Some(&s[i + c.len_utf8()..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the limit (`--max-message-size`): close 1009.
    TooBig,
    /// Not valid deflate data: close 1007 (RFC 7692 §8.2.1 leaves the code to us; the data
    /// of the message is what is invalid). Also what a [`Lease`] the inflater no longer
    /// honours gets (one from another inflater, or after an error): its message cannot be
    /// read.
    BadData,
    /// A text message whose inflated bytes are not UTF-8 (RFC 6455 §8.1): close 1007. Found
    /// on the first bad byte the inflater produces.
    InvalidUtf8,
}

/// The inflater's output grows by at most this much at a time (doubling from here), and
/// never past the limit.
const INFLATE_STEP: usize = 64 * 1024;
/// An output buffer grown past this (a large message) is freed once the message is done with.
const INFLATE_KEEP: usize = 256 * 1024;

/// One message's inflate: the decompressor (reset per message, its 32 KiB window kept), the
/// output so far and the UTF-8 check of a text message's output.
#[derive(Default)]
struct Stream {
    inflate: Option<Decompress>,
    out: Vec<u8>,
    /// `Some` while inflating a text message: fed every piece of output as it is produced.
    utf8: Option<Utf8Validator>,
    limit: usize,
    /// A final block (BFINAL) ended the deflate data: whatever follows is ignored.
    ended: bool,
}

impl Stream {
    /// Starts a message of at most `limit` inflated bytes.
    fn begin(&mut self, text: bool, limit: usize) {
        if self.out.capacity() > INFLATE_KEEP {
            self.out = Vec::new();
        }
        self.out.clear();
        if let Some(inflate) = &mut self.inflate {
            inflate.reset(false);
        }
        self.utf8 = text.then(Utf8Validator::new);
        self.limit = limit;
        self.ended = false;
    }

    /// Inflates `input`, appending to the output. The output never grows past the limit: once
    /// it is full, one more byte of output is [`InflateError::TooBig`]. Every pass consumes
    /// input or produces output (both bounded), else it stops: no unbounded loop.
    fn feed(&mut self, mut input: &[u8]) -> Result<(), InflateError> {
        let inflate = self.inflate.get_or_insert_with(|| Decompress::new(false));
        while !self.ended {
            let (in_before, out_before, len_before) =
                (inflate.total_in(), inflate.total_out(), self.out.len());
            let room = self.limit.saturating_sub(self.out.len());
            let status = if room == 0 {
                // The output is at the limit: any byte more is the verdict.
                let mut probe = [0u8; 1];
                let status = inflate
                    .decompress(input, &mut probe, FlushDecompress::None)
                    .map_err(|_| InflateError::BadData)?;
                if inflate.total_out() != out_before {
                    return Err(InflateError::TooBig);
                }
                status
            } else {
                if self.out.len() == self.out.capacity() {
                    let step = INFLATE_STEP.max(self.out.len()).min(room);
                    self.out.reserve_exact(step);
                }
                inflate
                    .decompress_vec(input, &mut self.out, FlushDecompress::None)
                    .map_err(|_| InflateError::BadData)?
            };
            if self.out.len() > self.limit {
                // Only with a buffer kept from a larger limit: still past this one.
                return Err(InflateError::TooBig);
            }
            let used = usize::try_from(inflate.total_in() - in_before).unwrap_or(usize::MAX);
            input = input.get(used..).unwrap_or_default();
            if let (Some(utf8), Some(new)) = (&mut self.utf8, self.out.get(len_before..)) {
                utf8.feed(new).map_err(|_| InflateError::InvalidUtf8)?;
            }
            if status == Status::StreamEnd {
                self.ended = true;
                break;
            }
            let progressed = used > 0 || inflate.total_out() != out_before;
            let full = self.out.len() == self.out.capacity();
            if !progressed || (input.is_empty() && !full) {
                break;
            }
        }
        Ok(())
    }

    /// The message's last piece is in: puts back the tail the sender removed (§7.2.2), which
    /// flushes what is left, and ends the text's UTF-8 check.
    fn end(&mut self) -> Result<(), InflateError> {
        self.feed(&TAIL)?;
        match &mut self.utf8 {
            Some(utf8) => utf8.finish().map_err(|_| InflateError::InvalidUtf8),
            None => Ok(()),
        }
    }

    /// After an error: the output is freed at once (a bomb's inflated megabyte is not kept).
    fn release(&mut self) {
        self.out = Vec::new();
        self.utf8 = None;
    }
}

/// One worker's decompressor and output buffer, lent to a session for one message at a time
/// and reset for each (the client was told `client_no_context_takeover`). Its output never
/// grows past the limit it is given, so a message that inflates to gigabytes costs at most
/// the limit.
///
/// A compressed message is inflated as its bytes arrive (never held compressed) when it can
/// be: a message in one frame that is whole in one read is inflated at once
/// ([`Inflater::inflate_message`]); a longer one claims the worker's streaming inflater with a
/// [`Lease`] and feeds it each piece of payload as it is read, over as many reads as it takes
/// ([`Inflater::claim`], [`Inflater::feed`], [`Inflater::finish`]). One lease at a time per
/// worker: while a connection holds it, another connection's compressed message that spans
/// reads is kept compressed by its decoder (as an uncompressed message is kept, at most
/// `--max-message-size`) and inflated whole once complete, on a second stream. So a worker
/// holds at most two inflate outputs, each at most the limit, however many connections
/// interleave compressed messages; a connection holds nothing inflated, and an idle one
/// nothing at all. Inflated output held per connection would be a bomb: a thousand
/// connections, each a kilobyte into a message, would hold a gigabyte.
pub struct Inflater {
    /// `[0]` is the one a [`Lease`] holds across reads; `[1]` inflates whole messages while
    /// `[0]` is held (and is made only then).
    streams: [Stream; 2],
    /// The holder of `streams[0]`, if any: a dropped [`Lease`] (its connection closed
    /// mid-message) lets it go without being told.
    owner: Weak<()>,
}

/// A claim on the worker's streaming inflater while one compressed message arrives over
/// several reads: kept by that connection's decoder, given back by [`Inflater::finish`], or
/// by being dropped with the connection. 8 bytes, only while the message is in progress.
#[derive(Debug)]
pub struct Lease(Arc<()>);

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field(
                "capacity",
                &self.streams.each_ref().map(|s| s.out.capacity()),
            )
            .field("lent", &self.lent())
            .finish()
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Inflater {
    /// An inflater that allocates on first use.
    pub fn new() -> Inflater {
        Inflater {
            streams: Default::default(),
            owner: Weak::new(),
        }
    }

    /// A [`Lease`] holds the streaming inflater.
    pub fn lent(&self) -> bool {
        self.owner.strong_count() > 0
    }

    /// Inflates one whole message's payload (the tail removed by the sender, §7.2.2) into the
    /// worker's buffer, at most `limit` bytes, without looking at what it is.
    ///
    /// # Errors
    /// [`InflateError::TooBig`] as soon as the output would pass `limit`;
    /// [`InflateError::BadData`] for data that is not raw deflate.
    pub fn inflate(&mut self, compressed: &[u8], limit: usize) -> Result<&[u8], InflateError> {
        self.inflate_message(compressed, false, limit)
    }

    /// [`Inflater::inflate`] for a message of a known type: a `text` message's output is
    /// checked as UTF-8 as it is produced. Uses the streaming inflater when no lease holds
    /// it, else the second one.
    ///
    /// # Errors
    /// As [`Inflater::inflate`], and [`InflateError::InvalidUtf8`] at the first bad byte.
    pub fn inflate_message(
        &mut self,
        compressed: &[u8],
        text: bool,
        limit: usize,
    ) -> Result<&[u8], InflateError> {
        let stream = &mut self.streams[usize::from(self.lent())];
        stream.begin(text, limit);
        if let Err(e) = stream.feed(compressed).and_then(|()| stream.end()) {
            stream.release();
            return Err(e);
        }
        Ok(&stream.out)
    }

    /// Claims the streaming inflater for a compressed message whose payload will arrive in
    /// pieces, at most `limit` bytes once inflated; a `text` message's output is checked as
    /// UTF-8. `None` while another lease holds it: keep that message compressed and inflate it
    /// whole at its end.
    pub fn claim(&mut self, text: bool, limit: usize) -> Option<Lease> {
        if self.lent() {
            return None;
        }
        let lease = Arc::new(());
        self.owner = Arc::downgrade(&lease);
        self.streams[0].begin(text, limit);
        Some(Lease(lease))
    }

    /// `lease` is the one this inflater honours.
    fn holds(&self, lease: &Lease) -> bool {
        std::ptr::eq(self.owner.as_ptr(), Arc::as_ptr(&lease.0))
    }

    /// Inflates the next piece of a claimed message's payload (any split: inside a frame,
    /// across frames).
    ///
    /// # Errors
    /// As [`Inflater::inflate_message`], as soon as this piece shows it; the lease is then
    /// void and its output freed.
    pub fn feed(&mut self, lease: &Lease, piece: &[u8]) -> Result<(), InflateError> {
        if !self.holds(lease) {
            return Err(InflateError::BadData);
        }
        let stream = &mut self.streams[0];
        let result = stream.feed(piece);
        if result.is_err() {
            stream.release();
            self.owner = Weak::new();
        }
        result
    }

    /// The claimed message's last piece is in: its inflated bytes (valid until the next call),
    /// and the streaming inflater is free again.
    ///
    /// # Errors
    /// As [`Inflater::feed`].
    pub fn finish(&mut self, lease: Lease) -> Result<&[u8], InflateError> {
        if !self.holds(&lease) {
            return Err(InflateError::BadData);
        }
        drop(lease);
        self.owner = Weak::new();
        let stream = &mut self.streams[0];
        if let Err(e) = stream.end() {
            stream.release();
            return Err(e);
        }
        Ok(&stream.out)
    }

    /// Frees the output of a large message once it has been used (call between messages; a
    /// held stream is left alone).
    pub fn trim(&mut self) {
        let lent = self.lent();
        for (i, stream) in self.streams.iter_mut().enumerate() {
            if !(lent && i == 0) && stream.out.capacity() > INFLATE_KEEP {
                stream.out = Vec::new();
            }
        }
    }
}

/// One worker's compressor, reset for every message (`server_no_context_takeover`): one per
/// window size a client asked for (made on first use), so `server_max_window_bits=N` is
/// honoured by compressing with a window of 2^N (zlib's 2^9 for N = 8: it never reaches back
/// more than 2^9 − 262 bytes, which fits 2^8).
pub struct Deflater {
    /// Indexed by window bits − 9 (9..=15).
    deflate: [Option<Compress>; 7],
    out: Vec<u8>,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("capacity", &self.out.capacity())
            .finish()
    }
}

impl Default for Deflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Deflater {
    /// A compressor that allocates on first use.
    pub fn new() -> Deflater {
        Deflater {
            deflate: Default::default(),
            out: Vec::new(),
        }
    }

    /// Compresses `payload` as one message (§7.2.1: raw deflate, sync-flushed, the trailing
    /// `00 00 ff ff` removed) with a window of 2^15. `None` when the result would not be
    /// smaller than `payload`: the caller sends it plain.
    pub fn compress(&mut self, payload: &[u8]) -> Option<&[u8]> {
        let len = self.compress_len(payload, 15, false)?;
        self.out.get(..len)
    }

    /// [`Deflater::compress`]'s work with a window of 2^`window_bits` (8..=15); with
    /// `always`, also when it does not shrink (or is empty: then one byte, §7.2.3.6). The
    /// compressed body is `self.out[..len]`.
    fn compress_len(&mut self, payload: &[u8], window_bits: u8, always: bool) -> Option<usize> {
        if payload.is_empty() && !always {
            return None;
        }
        if self.out.capacity() > INFLATE_KEEP {
            self.out = Vec::new();
        }
        self.out.clear();
        // Worth it only if the result (with the tail) is smaller than the payload; when it
        // must be compressed, room for deflate's worst case (stored blocks).
        let room = if always {
            payload.len() + payload.len() / 16 + 64
        } else {
            payload.len() + TAIL.len()
        };
        self.out.reserve_exact(room);
        let bits = window_bits.clamp(9, 15);
        let deflate = self.deflate[usize::from(bits - 9)].get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::new(LEVEL), false, bits)
        });
        deflate.reset();
        let status = deflate
            .compress_vec(payload, &mut self.out, FlushCompress::Sync)
            .ok()?;
        let done = status == Status::Ok
            && deflate.total_in() == payload.len() as u64
            && self.out.len() < self.out.capacity();
        let body = self.out.strip_suffix(&TAIL[..]).filter(|_| done)?;
        (always || body.len() < payload.len()).then_some(body.len())
    }

    /// Appends `payload` as one server frame of `opcode` to `out`: compressed with RSV1 set,
    /// with a window of 2^`window_bits` (the client's `server_max_window_bits`), when it has
    /// at least `min_size` bytes and shrinks; else plain. A `min_size` of 0 compresses every
    /// message, even one that grows (for peers that mishandle uncompressed messages on a
    /// deflate connection, although RFC 7692 §6 allows them).
    pub fn write_frame(
        &mut self,
        out: &mut Vec<u8>,
        opcode: OpCode,
        payload: &[u8],
        min_size: usize,
        window_bits: u8,
    ) {
        let body = (payload.len() >= min_size)
            .then(|| self.compress_len(payload, window_bits, min_size == 0))
            .flatten()
            .and_then(|len| self.out.get(..len));
        match body {
            Some(body) => {
                write_header(out, opcode, true, body.len());
                out.extend_from_slice(body);
            }
            None => {
                write_header(out, opcode, false, payload.len());
                out.extend_from_slice(payload);
            }
        }
    }

    /// The compressed twin of an encoded server frame (a whole unfragmented data frame):
    /// the same frame with RSV1 set and its payload compressed. `None` when `frame` is not one
    /// whole data frame, or when compressing does not shrink it.
    pub fn compress_frame(&mut self, frame: &[u8]) -> Option<Box<[u8]>> {
        let (header, header_len) = FrameHeader::parse(frame).ok()??;
        let payload = frame.get(header_len..)?;
        if !header.fin
            || header.rsv != 0
            || header.opcode.is_control()
            || header.opcode == OpCode::Continuation
            || header.payload_len != payload.len() as u64
        {
            return None;
        }
        let body = self.compress(payload)?;
        let mut twin = Vec::with_capacity(MAX_HEADER_LEN + body.len());
        write_header(&mut twin, header.opcode, true, body.len());
        twin.extend_from_slice(body);
        Some(twin.into_boxed_slice())
    }
}

/// The compressed twin of a shared frame to send to a connection whose client allows a window
/// of 2^`window_bits`, or `None` to send it plain: a payload under `min_size`, or that
/// doesn't shrink, or, for a client that limited our window, longer than that window (the
/// twin is made with a window of 2^15, and a message compressed alone never reaches back
/// further than its own length). The twin is made once for all workers
/// ([`SharedFrame::deflated`]) with the `deflater` of the first that asks.
pub fn shared_twin<'f>(
    frame: &'f SharedFrame,
    deflater: &mut Deflater,
    min_size: usize,
    window_bits: u8,
) -> Option<&'f [u8]> {
    let (header, _) = FrameHeader::parse(frame).ok()??;
    let len = usize::try_from(header.payload_len).ok()?;
    if len < min_size || (window_bits < 15 && len > 1usize << window_bits) {
        return None;
    }
    frame.deflated(|bytes| deflater.compress_frame(bytes))
}

/// Appends an unmasked, final frame header with RSV1 = `compressed` (§6: "Per-Message
/// Compressed" bit on the first frame of the message).
fn write_header(out: &mut Vec<u8>, opcode: OpCode, compressed: bool, len: usize) {
    let header = FrameHeader {
        fin: true,
        rsv: if compressed { 0b100 } else { 0 },
        opcode,
        mask: None,
        payload_len: len as u64,
    };
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut head);
    out.reserve(n + len);
    out.extend_from_slice(&head[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(values: &[&str]) -> Option<Agreement> {
        negotiate(values.iter().copied())
    }

    const PLAIN: Option<Agreement> = Some(Agreement {
        server_max_window_bits: None,
    });

    fn bits(n: u8) -> Option<Agreement> {
        Some(Agreement {
            server_max_window_bits: Some(n),
        })
    }

    #[test]
    fn offers_and_parameters() {
        assert_eq!(offer(&["permessage-deflate"]), PLAIN);
        assert_eq!(offer(&["Permessage-Deflate"]), PLAIN);
        assert_eq!(
            offer(&["permessage-deflate; client_max_window_bits"]),
            PLAIN,
            "what browsers send"
        );
        assert_eq!(
            offer(&["permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=10"]),
            PLAIN
        );
        assert_eq!(
            offer(&["permessage-deflate;server_max_window_bits=10"]),
            bits(10)
        );
        assert_eq!(
            offer(&["permessage-deflate; server_max_window_bits=\"8\""]),
            bits(8)
        );
        assert_eq!(offer(&["x-webkit-deflate-frame"]), None);
        assert_eq!(offer(&[]), None);
        assert_eq!(offer(&[""]), None);
    }

    #[test]
    fn bad_offers_are_declined_and_the_next_is_tried() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=1a",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; client_max_window_bits=\"9\"x",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=9",
            "permessage-deflate; mystery",
        ] {
            assert_eq!(offer(&[bad]), None, "{bad}");
            let list = format!("{bad}, permessage-deflate; server_max_window_bits=12");
            assert_eq!(offer(&[&list]), bits(12), "{list}");
            assert_eq!(offer(&[bad, "foo, permessage-deflate"]), PLAIN, "{bad}");
        }
    }

    #[test]
    fn the_first_acceptable_offer_wins() {
        assert_eq!(
            offer(&[
                "foo; a=\"x,y\", permessage-deflate; server_max_window_bits=9, permessage-deflate"
            ]),
            bits(9)
        );
        assert_eq!(
            offer(&[
                "permessage-deflate",
                "permessage-deflate; server_max_window_bits=9"
            ]),
            PLAIN
        );
    }

    #[test]
    fn the_answer() {
        let mut s = String::new();
        PLAIN.unwrap().write_response_value(&mut s);
        assert_eq!(
            s,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        s.clear();
        bits(10).unwrap().write_response_value(&mut s);
        assert!(s.ends_with("; client_no_context_takeover; server_max_window_bits=10"));
    }

    /// RFC 7692 §7.2.3.1: "Hello" compressed with a fixed Huffman block.
    const HELLO: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

    #[test]
    fn rfc_7692_vectors() {
        let mut inflater = Inflater::new();
        assert_eq!(inflater.inflate(&HELLO, 100), Ok(&b"Hello"[..]));
        // §7.2.3.2: the second "Hello" of a context-reusing sender refers back to the first;
        // alone it is bad data for us (we told the client client_no_context_takeover).
        assert_eq!(
            inflater.inflate(&[0xf2, 0x00, 0x11, 0x00, 0x00], 100),
            Err(InflateError::BadData)
        );
        // ... and with the first (and its flush) in front, it inflates.
        let both = [&HELLO[..], &TAIL, &[0xf2, 0x00, 0x11, 0x00, 0x00]].concat();
        assert_eq!(inflater.inflate(&both, 100), Ok(&b"HelloHello"[..]));
        // §7.2.3.3: a stored (uncompressed) block.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(inflater.inflate(&stored, 100), Ok(&b"Hello"[..]));
        // §7.2.3.4: a final block with BFINAL set, then the tail the receiver appends.
        let bfinal = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        assert_eq!(inflater.inflate(&bfinal, 100), Ok(&b"Hello"[..]));
        // Reset between messages: "Hello" again from scratch.
        assert_eq!(inflater.inflate(&HELLO, 100), Ok(&b"Hello"[..]));
        // Exactly at the limit is fine, one byte under is too big.
        assert_eq!(inflater.inflate(&HELLO, 5), Ok(&b"Hello"[..]));
        assert_eq!(inflater.inflate(&HELLO, 4), Err(InflateError::TooBig));
        assert_eq!(
            inflater.inflate(&[0xff, 0xff], 100),
            Err(InflateError::BadData)
        );
        assert_eq!(inflater.inflate(&[], 100), Ok(&b""[..]));
    }

    #[test]
    fn round_trip_and_plain_when_it_does_not_pay() {
        let mut deflater = Deflater::new();
        let mut inflater = Inflater::new();
        let json = br#"{"op":"message","channel":"news","seq":1,"data":{"a":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}"#;
        let body = deflater.compress(json).unwrap().to_vec();
        assert!(body.len() < json.len() / 2);
        assert!(!body.ends_with(&TAIL));
        assert_eq!(inflater.inflate(&body, 1 << 20).unwrap(), &json[..]);
        assert_eq!(deflater.compress(b"xq"), None, "two bytes don't shrink");
        assert_eq!(deflater.compress(b""), None);

        let mut out = Vec::new();
        deflater.write_frame(&mut out, OpCode::Text, json, 16, 15);
        assert_eq!(out[0], 0xc1, "FIN, RSV1, text");
        let mut plain = Vec::new();
        deflater.write_frame(&mut plain, OpCode::Text, json, json.len() + 1, 15);
        assert_eq!(plain[0], 0x81, "under the minimum size: plain");
        let mut small_window = Vec::new();
        deflater.write_frame(&mut small_window, OpCode::Text, json, 16, 9);
        assert_eq!(small_window[0], 0xc1, "a window of 2^9 compressor");
        let mut always = Vec::new();
        deflater.write_frame(&mut always, OpCode::Binary, b"xq", 0, 15);
        assert_eq!(always[0], 0xc2, "min size 0: compressed even when it grows");
        let mut empty = Vec::new();
        deflater.write_frame(&mut empty, OpCode::Text, b"", 0, 15);
        assert_eq!(
            empty,
            [0xc1, 0x01, 0x00],
            "RFC 7692 §7.2.3.6: an empty message"
        );
        let mut inflater = Inflater::new();
        assert_eq!(inflater.inflate(&always[2..], 10), Ok(&b"xq"[..]));

        let mut frame = Vec::new();
        crate::protocol::frame::write_frame(&mut frame, OpCode::Text, json);
        let twin = deflater.compress_frame(&frame).unwrap();
        assert_eq!(&twin[..], &out[..]);
        assert_eq!(deflater.compress_frame(&frame[..frame.len() - 1]), None);
        assert_eq!(deflater.compress_frame(b"BBBB"), None);
    }

    #[test]
    fn a_shared_frame_is_compressed_once() {
        let json = [
            br#"{"op":"message","channel":"news","data":"#.as_slice(),
            &[b'7'; 300],
            b"}",
        ]
        .concat();
        let frame = crate::protocol::frame::encode_shared(OpCode::Text, &json);
        let mut deflater = Deflater::new();
        assert_eq!(
            shared_twin(&frame, &mut deflater, 1000, 15),
            None,
            "under min"
        );
        assert_eq!(
            shared_twin(&frame, &mut deflater, 16, 8),
            None,
            "past the window"
        );
        assert_eq!(frame.deflated_bytes(), None, "not made for nothing");
        let twin = shared_twin(&frame, &mut deflater, 16, 15).unwrap().to_vec();
        assert_eq!(twin[0], 0xc1);
        let (header, len) = FrameHeader::parse(&twin).unwrap().unwrap();
        let mut inflater = Inflater::new();
        assert_eq!(inflater.inflate(&twin[len..], 1 << 20).unwrap(), &json[..]);
        assert_eq!(header.payload_len as usize, twin.len() - len);
        // Made once: a second ask does not compress again.
        let again = frame.deflated(|_| panic!("compressed twice")).unwrap();
        assert_eq!(again, &twin[..]);
        assert_eq!(
            frame.clone().deflated_bytes(),
            Some(&twin[..]),
            "shared by clones"
        );
        assert_eq!(std::mem::size_of::<SharedFrame>(), 8, "one pointer");
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        // 4 MiB of zeros compresses to about 40 KiB at level 1.
        let mut deflater = Deflater::new();
        let zeros = vec![0u8; 4 << 20];
        let bomb = deflater.compress(&zeros).unwrap().to_vec();
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        let mut inflater = Inflater::new();
        let limit = 100_000;
        assert_eq!(inflater.inflate(&bomb, limit), Err(InflateError::TooBig));
        assert_eq!(inflater.streams[0].out.capacity(), 0, "freed at once");
        // Streamed in 1 KiB pieces: the output never has room past the limit, and the verdict
        // comes with the piece that passes it, long before the end.
        let lease = inflater.claim(false, limit).unwrap();
        let mut fed = 0;
        let verdict = bomb.chunks(1024).find_map(|piece| {
            fed += piece.len();
            let result = inflater.feed(&lease, piece).err();
            assert!(inflater.streams[0].out.capacity() <= limit);
            result
        });
        assert_eq!(verdict, Some(InflateError::TooBig));
        assert!(fed < bomb.len() / 10, "{fed} of {} bytes read", bomb.len());
        assert!(!inflater.lent(), "the lease is void after an error");
        assert_eq!(inflater.streams[0].out.capacity(), 0);
        assert_eq!(
            inflater.inflate(&bomb, 4 << 20).map(<[u8]>::len),
            Ok(4 << 20)
        );
        inflater.trim();
        assert_eq!(inflater.streams[0].out.capacity(), 0, "a large output goes");
    }

    /// `payload` claimed, fed in pieces cut at `cuts`, and finished.
    fn streamed(
        inflater: &mut Inflater,
        compressed: &[u8],
        cuts: &[usize],
        text: bool,
        limit: usize,
    ) -> Result<Vec<u8>, InflateError> {
        let lease = inflater.claim(text, limit).expect("free");
        let mut from = 0;
        for &cut in cuts.iter().chain([&compressed.len()]) {
            let cut = cut.clamp(from, compressed.len());
            inflater.feed(&lease, &compressed[from..cut])?;
            from = cut;
        }
        inflater.finish(lease).map(<[u8]>::to_vec)
    }

    #[test]
    fn streaming_agrees_with_whole_for_every_cut() {
        let mut deflater = Deflater::new();
        let text = "{\"op\":\"message\",\"data\":\"κόσμε 𝄞 \"}".repeat(40);
        let body = deflater.compress(text.as_bytes()).unwrap().to_vec();
        let mut inflater = Inflater::new();
        for a in 0..=body.len() {
            for b in [a, a + 1, a + 7, body.len() / 2, body.len()] {
                assert_eq!(
                    streamed(&mut inflater, &body, &[a, b], true, 1 << 20),
                    Ok(text.as_bytes().to_vec()),
                    "cut at {a}, {b}"
                );
            }
        }
        let bytewise: Vec<usize> = (0..body.len()).collect();
        assert_eq!(
            streamed(&mut inflater, &body, &bytewise, true, text.len()),
            Ok(text.as_bytes().to_vec()),
            "exactly at the limit"
        );
        assert_eq!(
            streamed(&mut inflater, &body, &bytewise, true, text.len() - 1),
            Err(InflateError::TooBig),
            "one byte over"
        );
        // RFC 7692 §7.2.3 vectors, streamed bytewise.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        let bfinal = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        for vector in [&HELLO[..], &stored, &bfinal] {
            let cuts: Vec<usize> = (0..vector.len()).collect();
            assert_eq!(
                streamed(&mut inflater, vector, &cuts, true, 5),
                Ok(b"Hello".to_vec())
            );
        }
        assert_eq!(streamed(&mut inflater, &[], &[], true, 5), Ok(Vec::new()));
    }

    #[test]
    fn bad_data_and_bad_text_fail_mid_stream() {
        let mut inflater = Inflater::new();
        // Good "Hello" blocks, then garbage: the piece with the garbage fails.
        let mut good = [&HELLO[..], &TAIL].concat().repeat(3);
        let garbage_at = good.len();
        good.extend_from_slice(&[0xff; 8]);
        let lease = inflater.claim(false, 1000).unwrap();
        inflater.feed(&lease, &good[..garbage_at]).unwrap();
        assert_eq!(
            inflater.feed(&lease, &good[garbage_at..]),
            Err(InflateError::BadData)
        );
        assert!(!inflater.lent());
        assert_eq!(
            inflater.finish(lease),
            Err(InflateError::BadData),
            "a void lease reads nothing"
        );

        // Text whose 10th byte is not UTF-8, and 100 KiB more after it: the error comes
        // from the first pieces, long before the end.
        let mut text = b"abcdefghi\xffj".to_vec();
        text.extend(std::iter::repeat_n(b'x', 100_000));
        let mut deflater = Deflater::new();
        let body = deflater.compress(&text).unwrap().to_vec();
        let lease = inflater.claim(true, 1 << 20).unwrap();
        let failed_at = body
            .chunks(4)
            .position(|piece| inflater.feed(&lease, piece).is_err());
        assert!(failed_at.is_some_and(|i| i < 10), "{failed_at:?}");
        // As binary it is fine; a code point cut at the end of a text is not.
        assert_eq!(
            inflater
                .inflate_message(&body, false, 1 << 20)
                .map(<[u8]>::len),
            Ok(text.len())
        );
        // A stored block (§7.2.3.3's form) of "ab" and half a code point.
        let cut = [0x00, 0x04, 0x00, 0xfb, 0xff, b'a', b'b', 0xe2, 0x82];
        assert_eq!(
            streamed(&mut inflater, &cut, &[1], true, 100),
            Err(InflateError::InvalidUtf8)
        );
    }

    #[test]
    fn one_lease_at_a_time_and_a_dropped_one_frees_the_inflater() {
        let mut inflater = Inflater::new();
        let a = inflater.claim(true, 100).unwrap();
        assert!(inflater.lent());
        assert!(inflater.claim(true, 100).is_none(), "held by a");
        inflater.feed(&a, &HELLO[..3]).unwrap();
        // Meanwhile a whole message inflates beside a's, on the second stream.
        assert_eq!(
            inflater.inflate_message(&HELLO, true, 100),
            Ok(&b"Hello"[..])
        );
        let mut other = Inflater::new();
        let foreign = other.claim(true, 100).unwrap();
        assert_eq!(
            inflater.feed(&foreign, &HELLO),
            Err(InflateError::BadData),
            "another inflater's lease"
        );
        inflater.feed(&a, &HELLO[3..]).unwrap();
        assert_eq!(inflater.finish(a), Ok(&b"Hello"[..]));
        assert!(!inflater.lent());
        // A lease dropped mid-message (its connection closed) frees the inflater.
        let b = inflater.claim(false, 100).unwrap();
        inflater.feed(&b, &HELLO[..2]).unwrap();
        drop(b);
        assert!(!inflater.lent());
        let c = inflater.claim(false, 100).unwrap();
        inflater.feed(&c, &HELLO).unwrap();
        assert_eq!(inflater.finish(c), Ok(&b"Hello"[..]), "from scratch");
        assert_eq!(std::mem::size_of::<Lease>(), 8);
    }
}
