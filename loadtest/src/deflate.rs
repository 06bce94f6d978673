//! permessage-deflate (RFC 7692) on the client side of `--deflate`: the offer we send, the
//! check of the server's answer (§7.1), inflating what arrives with RSV1 and compressing what
//! we send. Written on `flate2` directly, not on the server's own codec, so that a bug there
//! shows up here as an error instead of being mirrored.
//!
//! Receiving: a message is raw deflate with the `00 00 ff ff` tail taken off (§7.2.2); we put
//! it back and inflate with `Sync`. If the server agreed to `server_no_context_takeover` every
//! message stands alone and one inflater per child process, reset per message, serves every
//! connection; otherwise each connection keeps its own (the server may refer back into earlier
//! messages, §7.1.1.1). Sending: one compressor per child, reset per message — a client may
//! always drop its context, so this is valid whatever the server answered.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's name (RFC 7692 §7).
pub const NAME: &str = "permessage-deflate";
/// The default offer of `--deflate`: both sides drop their context after every message.
pub const DEFAULT_OFFER: &str =
    "permessage-deflate; client_no_context_takeover; server_no_context_takeover";
/// The tail a sender removes from every compressed message and the receiver appends (§7.2.2).
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What the server's answer agreed to (RFC 7692 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Agreed {
    /// `server_no_context_takeover`: every server message inflates on its own.
    pub server_no_context_takeover: bool,
    /// `client_no_context_takeover`: we must not refer back (we never do).
    pub client_no_context_takeover: bool,
    /// `server_max_window_bits`, if the server named one (8..=15).
    pub server_max_window_bits: Option<u8>,
    /// `client_max_window_bits`, if the server named one (only when we offered it).
    pub client_max_window_bits: Option<u8>,
}

/// Does `offer` (a `Sec-WebSocket-Extensions` value we send) carry `client_max_window_bits`?
/// The server may only answer with that parameter if we offered it (§7.1.2.2).
fn offers_client_window(offer: &str) -> bool {
    offer.split([';', ',']).any(|p| {
        p.split('=')
            .next()
            .is_some_and(|n| n.trim().eq_ignore_ascii_case("client_max_window_bits"))
    })
}

/// Checks the server's `Sec-WebSocket-Extensions` values against what we offered. `answer`:
/// every value of that header in the 101 (`None` if there was none); `offer`: what we sent
/// (`None` if we offered nothing). Returns the agreement, `Ok(None)` if there is none.
///
/// # Errors
/// An error kind: `bad_extension` when the server answered an extension we did not offer, or
/// answered permessage-deflate more than once or with an unknown, duplicated, valueless or
/// out-of-range parameter (§7.1: the client must fail the connection); `deflate_declined`
/// when we offered and the server did not answer (`--deflate` is meant to measure compression).
pub fn check_answer(answer: Option<&str>, offer: Option<&str>) -> Result<Option<Agreed>, String> {
    let bad = || "bad_extension".to_string();
    let Some(offer) = offer else {
        return match answer {
            Some(a) if !a.trim().is_empty() => Err(bad()),
            _ => Ok(None),
        };
    };
    let answer = answer.unwrap_or("");
    let mut agreed = None;
    for ext in answer.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let mut params = ext.split(';').map(str::trim);
        let name = params.next().unwrap_or("");
        if !name.eq_ignore_ascii_case(NAME) || agreed.is_some() {
            return Err(bad());
        }
        let mut a = Agreed::default();
        let mut seen: Vec<String> = Vec::new();
        for p in params {
            let (key, value) = match p.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
                None => (p, None),
            };
            let key = key.to_ascii_lowercase();
            if seen.contains(&key) {
                return Err(bad());
            }
            let bits = || -> Result<u8, String> {
                value
                    .filter(|v| v.bytes().all(|b| b.is_ascii_digit()) && !v.starts_with('0'))
                    .and_then(|v| v.parse::<u8>().ok())
                    .filter(|b| (8..=15).contains(b))
                    .ok_or_else(bad)
            };
            match (key.as_str(), value) {
                ("server_no_context_takeover", None) => a.server_no_context_takeover = true,
                ("client_no_context_takeover", None) => a.client_no_context_takeover = true,
                ("server_max_window_bits", Some(_)) => a.server_max_window_bits = Some(bits()?),
                ("client_max_window_bits", Some(_)) if offers_client_window(offer) => {
                    a.client_max_window_bits = Some(bits()?)
                }
                _ => return Err(bad()),
            }
            seen.push(key);
        }
        agreed = Some(a);
    }
    agreed
        .map(Some)
        .ok_or_else(|| "deflate_declined".to_string())
}

/// Why a compressed message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// Not raw deflate data.
    BadData,
    /// It inflates past the limit.
    TooBig,
}

/// An inflater and its output buffer. Shared by every connection of a child when the server
/// keeps no context (reset per message), or one per connection when it does.
pub struct Inflater {
    inflate: Decompress,
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

impl Inflater {
    /// A raw-deflate inflater with a 2^15 window (enough for any `server_max_window_bits`).
    pub fn new() -> Inflater {
        Inflater {
            inflate: Decompress::new(false),
            out: Vec::new(),
        }
    }

    /// Inflates one message's payload (tail removed by the sender), at most `limit` bytes.
    /// With `reset` the context starts empty (`server_no_context_takeover`); without it the
    /// window of the earlier messages on this inflater is kept.
    ///
    /// # Errors
    /// [`InflateError::BadData`] for data that is not raw deflate, [`InflateError::TooBig`]
    /// past `limit`.
    pub fn inflate(
        &mut self,
        compressed: &[u8],
        reset: bool,
        limit: usize,
    ) -> Result<&[u8], InflateError> {
        if reset {
            self.inflate.reset(false);
        }
        self.out.clear();
        for piece in [compressed, &TAIL[..]] {
            let start = self.inflate.total_in();
            loop {
                let used = (self.inflate.total_in() - start) as usize;
                let input = piece.get(used..).unwrap_or_default();
                if self.out.len() == self.out.capacity() {
                    self.out.reserve(4096.max(self.out.len()));
                }
                let before = (self.inflate.total_in(), self.out.len());
                let status = self
                    .inflate
                    .decompress_vec(input, &mut self.out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::BadData)?;
                if self.out.len() > limit {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    // A final block: nothing after it belongs to this message.
                    return Ok(&self.out);
                }
                let progressed = (self.inflate.total_in(), self.out.len()) != before;
                let full = self.out.len() == self.out.capacity();
                let consumed = self.inflate.total_in() - start == piece.len() as u64;
                if !full && (consumed || !progressed) {
                    break;
                }
            }
        }
        Ok(&self.out)
    }
}

/// A raw-deflate compressor, reset per message, and its output buffer.
pub struct Deflater {
    deflate: Compress,
    out: Vec<u8>,
}

impl Default for Deflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Deflater {
    /// Level 1 (fast), 2^15 window, raw deflate.
    pub fn new() -> Deflater {
        Deflater {
            deflate: Compress::new(Compression::fast(), false),
            out: Vec::new(),
        }
    }

    /// `payload` compressed on its own, ending in a sync flush with its `00 00 ff ff` tail
    /// removed (§7.2.1): what goes in a frame with RSV1.
    pub fn compress(&mut self, payload: &[u8]) -> &[u8] {
        self.deflate.reset();
        self.out.clear();
        self.out.reserve(payload.len() / 2 + 64);
        loop {
            let used = self.deflate.total_in() as usize;
            let input = payload.get(used..).unwrap_or_default();
            if self.out.capacity() - self.out.len() < 64 {
                self.out.reserve(self.out.len().max(256));
            }
            let before = self.deflate.total_out();
            // Compressing into a Vec cannot fail: flate2 reports only buffer errors.
            let _ = self
                .deflate
                .compress_vec(input, &mut self.out, FlushCompress::Sync);
            let done = self.deflate.total_in() as usize == payload.len();
            let room = self.out.capacity() > self.out.len();
            if done && room && self.out.ends_with(&TAIL) {
                break;
            }
            if done && room && self.deflate.total_out() == before {
                break;
            }
        }
        if self.out.ends_with(&TAIL) {
            self.out.truncate(self.out.len() - TAIL.len());
        }
        &self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked() {
        let o = Some(DEFAULT_OFFER);
        let both = Agreed {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            ..Agreed::default()
        };
        assert_eq!(
            check_answer(
                Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
                o
            ),
            Ok(Some(both))
        );
        assert_eq!(
            check_answer(Some("permessage-deflate"), Some(NAME)),
            Ok(Some(Agreed::default()))
        );
        assert_eq!(
            check_answer(Some("PerMessage-Deflate; server_max_window_bits=10"), o)
                .map(|a| a.and_then(|a| a.server_max_window_bits)),
            Ok(Some(10))
        );
        assert_eq!(check_answer(None, None), Ok(None));
        assert_eq!(check_answer(None, o), Err("deflate_declined".into()));
        for bad in [
            "x-webkit-deflate-frame",
            "permessage-deflate, permessage-deflate",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_no_context_takeover=1",
            // Not offered: the server must not answer it (§7.1.2.2).
            "permessage-deflate; client_max_window_bits=15",
            "permessage-deflate; foo",
        ] {
            assert_eq!(
                check_answer(Some(bad), o),
                Err("bad_extension".into()),
                "{bad}"
            );
        }
        assert_eq!(
            check_answer(Some(NAME), None),
            Err("bad_extension".into()),
            "answered without an offer"
        );
        let offer = "permessage-deflate; client_max_window_bits";
        assert_eq!(
            check_answer(
                Some("permessage-deflate; client_max_window_bits=9"),
                Some(offer)
            )
            .map(|a| a.and_then(|a| a.client_max_window_bits)),
            Ok(Some(9))
        );
    }

    /// RFC 7692 §7.2.3.1–§7.2.3.3: "Hello" compressed, a stored block, and two messages with
    /// context takeover (the second refers back into the first).
    #[test]
    fn rfc_7692_vectors_inflate() {
        let mut inf = Inflater::new();
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inf.inflate(&hello, true, 100), Ok(&b"Hello"[..]));
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(inf.inflate(&stored, true, 100), Ok(&b"Hello"[..]));
        let mut ctx = Inflater::new();
        assert_eq!(ctx.inflate(&hello, false, 100), Ok(&b"Hello"[..]));
        let again = [0xf2, 0x00, 0x11, 0x00, 0x00];
        assert_eq!(ctx.inflate(&again, false, 100), Ok(&b"Hello"[..]));
        // The same bytes without the first message's context cannot be read.
        assert!(inf.inflate(&again, true, 100).is_err());
        assert_eq!(inf.inflate(&hello, true, 4), Err(InflateError::TooBig));
        assert_eq!(
            inf.inflate(&[0xff, 0xff, 0xff], true, 100),
            Err(InflateError::BadData)
        );
    }

    #[test]
    fn compress_round_trips_and_shrinks_json() {
        let mut def = Deflater::new();
        let mut inf = Inflater::new();
        let json = br#"{"items":[{"id":1,"name":"alpha"},{"id":2,"name":"alpha"},{"id":3,"name":"alpha"}]}"#
            .repeat(20);
        let packed = def.compress(&json).to_vec();
        assert!(!packed.ends_with(&TAIL));
        assert!(
            packed.len() * 5 < json.len(),
            "{} of {}",
            packed.len(),
            json.len()
        );
        assert_eq!(
            inf.inflate(&packed, true, 1 << 20).map(<[u8]>::to_vec),
            Ok(json.clone())
        );
        // Reset per message: the second is readable on its own.
        let second = def.compress(b"Hello").to_vec();
        assert_eq!(inf.inflate(&second, true, 100), Ok(&b"Hello"[..]));
        let empty = def.compress(b"").to_vec();
        assert_eq!(inf.inflate(&empty, true, 1), Ok(&b""[..]));
    }
}
