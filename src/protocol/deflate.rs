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

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::protocol::frame::{FrameHeader, OpCode, SharedFrame, MAX_HEADER_LEN};

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
    /// of the message is what is invalid).
    BadData,
}

/// One worker's decompressor and output buffer, lent to a session for one message at a time
/// and reset for each (the client was told `client_no_context_takeover`). Its output never
/// grows past the limit it is given, so a small message that inflates to gigabytes costs at
/// most the limit.
pub struct Inflater {
    inflate: Option<Decompress>,
    out: Vec<u8>,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("capacity", &self.out.capacity())
            .finish()
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Self::new()
    }
}

/// The inflater's output grows by at most this much at a time.
const INFLATE_STEP: usize = 64 * 1024;
/// An output buffer grown past this (a large message) is shrunk back after use.
const INFLATE_KEEP: usize = 256 * 1024;

impl Inflater {
    /// An inflater that allocates on first use.
    pub fn new() -> Inflater {
        Inflater {
            inflate: None,
            out: Vec::new(),
        }
    }

    /// Inflates one whole message's payload (the tail removed by the sender, §7.2.2) into the
    /// worker's buffer, at most `limit` bytes.
    ///
    /// # Errors
    /// [`InflateError::TooBig`] as soon as the output would pass `limit`;
    /// [`InflateError::BadData`] for data that is not raw deflate.
    pub fn inflate(&mut self, compressed: &[u8], limit: usize) -> Result<&[u8], InflateError> {
        if self.out.capacity() > INFLATE_KEEP {
            self.out = Vec::new();
        }
        self.out.clear();
        let inflate = self.inflate.get_or_insert_with(|| Decompress::new(false));
        inflate.reset(false);
        for piece in [compressed, &TAIL[..]] {
            let start = inflate.total_in();
            loop {
                let used = (inflate.total_in() - start) as usize;
                let input = piece.get(used..).unwrap_or_default();
                if self.out.len() == self.out.capacity() {
                    // Room for one byte past the limit: that byte's arrival is the verdict.
                    let cap = limit.saturating_add(1);
                    if self.out.len() >= cap {
                        return Err(InflateError::TooBig);
                    }
                    let step = INFLATE_STEP.max(self.out.len()).min(cap - self.out.len());
                    self.out.reserve_exact(step);
                }
                let before = (inflate.total_in(), self.out.len());
                let status = inflate
                    .decompress_vec(input, &mut self.out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::BadData)?;
                if self.out.len() > limit {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    // A final block (the peer may send one): nothing after it counts.
                    return Ok(&self.out);
                }
                let progressed = (inflate.total_in(), self.out.len()) != before;
                let full = self.out.len() == self.out.capacity();
                if !full && (!progressed || inflate.total_in() - start == piece.len() as u64) {
                    break;
                }
            }
        }
        Ok(&self.out)
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
        assert!(
            inflater.out.capacity() <= limit + 1,
            "grew to {} bytes",
            inflater.out.capacity()
        );
        assert_eq!(
            inflater.inflate(&bomb, 4 << 20).map(<[u8]>::len),
            Ok(4 << 20)
        );
    }
}
