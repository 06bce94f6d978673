//! Frame headers (RFC 6455 §5.2): decoding from a byte slice and encoding into the caller's
//! buffer, plus whole-frame writers for server (unmasked) and client (masked) frames.
//!
//! Decoding is syntax only: it refuses what no header may say (reserved opcodes, fragmented or
//! oversized control frames, a 64-bit length with its top bit set) and leaves the rules that
//! depend on who we are and what we negotiated (masking, RSV bits, size limits) to
//! [`crate::protocol::message::Decoder`]. Short input is `Ok(None)` and consumes nothing.

use std::sync::{Arc, OnceLock};

use crate::protocol::error::ProtocolError;
use crate::protocol::mask::apply_mask;

/// The longest header: 2 bytes, an 8-byte extended length and a 4-byte key.
pub const MAX_HEADER_LEN: usize = 14;

/// The longest control-frame payload (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Frame opcodes (§5.2); reserved values are refused when decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: a further fragment of the message begun by the last Text or Binary frame (§5.4).
    Continuation = 0x0,
    /// 0x1: the first frame of a text message; the whole message must be UTF-8 (§5.6, §8.1).
    Text = 0x1,
    /// 0x2: the first frame of a binary message (§5.6).
    Binary = 0x2,
    /// 0x8: a Close control frame; its payload is empty or a status code and reason (§5.5.1).
    Close = 0x8,
    /// 0x9: a Ping control frame; the receiver answers with a Pong of the same payload (§5.5.2).
    Ping = 0x9,
    /// 0xA: a Pong control frame, answering a Ping or unsolicited as a heartbeat (§5.5.3).
    Pong = 0xA,
}

impl OpCode {
    /// Reads the 4-bit opcode field (the low nibble of the first header byte).
    ///
    /// # Errors
    /// [`ProtocolError::ReservedOpcode`] for 0x3–0x7 and 0xB–0xF (§5.2), which the connection
    /// must be failed for, with close code 1002.
    pub fn from_u8(op: u8) -> Result<OpCode, ProtocolError> {
        Ok(match op {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => return Err(ProtocolError::ReservedOpcode(other)),
        })
    }

    /// Close, Ping and Pong (§5.5).
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: this is the last frame of its message (always set on control frames, §5.5).
    pub fin: bool,
    /// RSV1..3 as the low three bits.
    pub rsv: u8,
    /// What the payload is (§5.2); already checked to be a defined opcode.
    pub opcode: OpCode,
    /// The 4-byte masking key when the MASK bit is set (§5.3): present on every client frame,
    /// absent on every server frame. The payload is still masked when the header is decoded.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes, from the 7-bit, 16-bit or 64-bit form (§5.2); at most 2^63 - 1,
    /// and at most [`MAX_CONTROL_PAYLOAD`] for control frames.
    pub payload_len: u64,
}

impl FrameHeader {
    /// Decodes a header from the start of `buf`. `Ok(None)`: not enough bytes yet (nothing is
    /// consumed). `Ok(Some((header, header_len)))` otherwise; the payload follows.
    pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let [b0, b1, rest @ ..] = buf else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0x7;
        let opcode = OpCode::from_u8(b0 & 0x0F)?;
        let masked = b1 & 0x80 != 0;
        let (payload_len, ext_len) = match b1 & 0x7F {
            126 => match rest {
                [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 2),
                _ => return Ok(None),
            },
            127 => match rest.get(..8) {
                Some(bytes) => {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(bytes);
                    let len = u64::from_be_bytes(be);
                    if len >> 63 != 0 {
                        return Err(ProtocolError::LengthTopBitSet);
                    }
                    (len, 8)
                }
                None => return Ok(None),
            },
            short => (u64::from(short), 0),
        };
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            if payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(ProtocolError::ControlFrameTooLong(payload_len));
            }
        }
        let mut header_len = 2 + ext_len;
        let mask = if masked {
            let Some(key) = buf.get(header_len..header_len + 4) else {
                return Ok(None);
            };
            header_len += 4;
            Some([key[0], key[1], key[2], key[3]])
        } else {
            None
        };
        Ok(Some((
            FrameHeader {
                fin,
                rsv,
                opcode,
                mask,
                payload_len,
            },
            header_len,
        )))
    }

    /// Encodes the header into `out`, returning its length (2 to 14 bytes), always in the
    /// minimal length form (§5.2).
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (u8::from(self.fin) << 7) | ((self.rsv & 0x7) << 4) | self.opcode as u8;
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut len = 2;
        match self.payload_len {
            n if n < 126 => out[1] = mask_bit | n as u8,
            n if n <= u64::from(u16::MAX) => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(n as u16).to_be_bytes());
                len = 4;
            }
            n => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&n.to_be_bytes());
                len = 10;
            }
        }
        if let Some(key) = self.mask {
            out[len..len + 4].copy_from_slice(&key);
            len += 4;
        }
        len
    }
}

/// Appends one complete, unmasked (server) frame to `out`.
pub fn write_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    write_frame_part(out, true, opcode, payload);
}

/// Appends one unmasked frame that may be a fragment (`fin` false) or a continuation.
pub fn write_frame_part(out: &mut Vec<u8>, fin: bool, opcode: OpCode, payload: &[u8]) {
    let header = FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask: None,
        payload_len: payload.len() as u64,
    };
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut head);
    out.reserve(n + payload.len());
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(payload);
}

/// Appends one masked (client) frame to `out` (§5.3). `key` should come from a good source
/// of randomness in a browser-facing client; the load generator only needs it to vary.
pub fn write_masked_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
    key: [u8; 4],
) {
    let header = FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask: Some(key),
        payload_len: payload.len() as u64,
    };
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut head);
    out.reserve(n + payload.len());
    out.extend_from_slice(&head[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key, 0);
}

/// A complete server frame (header and unmasked payload, §5.2) encoded once and shared by
/// reference: every subscriber's outbound queue and the history hold the same allocation.
/// Cloning is a reference-count increment; the handle is one pointer.
///
/// Beside the plain frame it carries a compressed twin (permessage-deflate, RFC 7692), made
/// lazily by the first worker that has a deflate subscriber for it ([`SharedFrame::deflated`])
/// and then shared by every worker: a publish is compressed at most once.
#[derive(Debug, Clone)]
pub struct SharedFrame(Arc<Encoded>);

#[derive(Debug)]
struct Encoded {
    bytes: Box<[u8]>,
    /// The compressed twin once asked for: `None` inside when it does not shrink (or the
    /// bytes are not one data frame), so the question is answered once.
    deflated: OnceLock<Option<Box<[u8]>>>,
}

impl SharedFrame {
    fn new(bytes: Box<[u8]>) -> SharedFrame {
        SharedFrame(Arc::new(Encoded {
            bytes,
            deflated: OnceLock::new(),
        }))
    }

    /// Shares `bytes` that the caller has already encoded as whole server frames (tests, and
    /// frames built outside [`encode_shared`]). Nothing is checked: the bytes go out as given.
    pub fn from_encoded(bytes: &[u8]) -> SharedFrame {
        SharedFrame::new(Box::from(bytes))
    }

    /// The compressed twin (a whole frame with RSV1 set), made by `compress` from the plain
    /// frame's bytes the first time any thread asks; `None` when `compress` found it not worth
    /// it. Later calls (from any worker) return the first answer without calling `compress`.
    pub fn deflated(&self, compress: impl FnOnce(&[u8]) -> Option<Box<[u8]>>) -> Option<&[u8]> {
        self.0
            .deflated
            .get_or_init(|| compress(&self.0.bytes))
            .as_deref()
    }

    /// The compressed twin if one was made already (see [`SharedFrame::deflated`]).
    pub fn deflated_bytes(&self) -> Option<&[u8]> {
        self.0.deflated.get().and_then(|twin| twin.as_deref())
    }
}

impl PartialEq for SharedFrame {
    fn eq(&self, other: &SharedFrame) -> bool {
        **self == **other
    }
}

impl Eq for SharedFrame {}

/// The frame's bytes, ready for the wire (`len()` is the frame's length, header included).
impl std::ops::Deref for SharedFrame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0.bytes
    }
}

/// Encodes a complete server frame once into shared bytes, for fan-out: every subscriber's
/// outbound queue holds a reference to the same allocation.
pub fn encode_shared(opcode: OpCode, payload: &[u8]) -> SharedFrame {
    let mut buf = Vec::with_capacity(MAX_HEADER_LEN + payload.len());
    write_frame(&mut buf, opcode, payload);
    SharedFrame::new(buf.into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    #[test]
    fn rfc_5_7_unmasked_hello() {
        let bytes = hex("81 05 48 65 6c 6c 6f");
        let (h, n) = FrameHeader::parse(&bytes).unwrap().unwrap();
        assert_eq!(
            (h.fin, h.opcode, h.mask, h.payload_len, n),
            (true, OpCode::Text, None, 5, 2)
        );
        let mut out = Vec::new();
        write_frame(&mut out, OpCode::Text, b"Hello");
        assert_eq!(out, bytes);
    }

    #[test]
    fn rfc_5_7_masked_hello() {
        let bytes = hex("81 85 37 fa 21 3d 7f 9f 4d 51 58");
        let (h, n) = FrameHeader::parse(&bytes).unwrap().unwrap();
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!((h.payload_len, n), (5, 6));
        let mut out = Vec::new();
        write_masked_frame(
            &mut out,
            true,
            OpCode::Text,
            b"Hello",
            [0x37, 0xfa, 0x21, 0x3d],
        );
        assert_eq!(out, bytes);
    }

    #[test]
    fn rfc_5_7_fragments_ping_pong() {
        let mut out = Vec::new();
        write_frame_part(&mut out, false, OpCode::Text, b"Hel");
        write_frame_part(&mut out, true, OpCode::Continuation, b"lo");
        assert_eq!(out, hex("01 03 48 65 6c 80 02 6c 6f"));
        out.clear();
        write_frame(&mut out, OpCode::Ping, b"Hello");
        assert_eq!(out, hex("89 05 48 65 6c 6c 6f"));
        out.clear();
        write_masked_frame(
            &mut out,
            true,
            OpCode::Pong,
            b"Hello",
            [0x37, 0xfa, 0x21, 0x3d],
        );
        assert_eq!(out, hex("8a 85 37 fa 21 3d 7f 9f 4d 51 58"));
    }

    #[test]
    fn rfc_5_7_extended_lengths() {
        let mut out = Vec::new();
        write_frame(&mut out, OpCode::Binary, &[0u8; 256]);
        assert_eq!(out[..4], hex("82 7E 01 00")[..]);
        assert_eq!(out.len(), 4 + 256);
        out.clear();
        write_frame(&mut out, OpCode::Binary, &vec![0u8; 65536]);
        assert_eq!(out[..10], hex("82 7F 00 00 00 00 00 01 00 00")[..]);
        let (h, n) = FrameHeader::parse(&out).unwrap().unwrap();
        assert_eq!((h.payload_len, n), (65536, 10));
    }

    #[test]
    fn short_input_is_partial_at_every_cut() {
        let mut full = Vec::new();
        write_masked_frame(&mut full, true, OpCode::Binary, &[7u8; 70000], [1, 2, 3, 4]);
        for cut in 0..14 {
            assert_eq!(FrameHeader::parse(&full[..cut]), Ok(None), "cut {cut}");
        }
        assert!(FrameHeader::parse(&full[..14]).unwrap().is_some());
    }

    #[test]
    fn header_rules() {
        let cases: &[(&str, ProtocolError)] = &[
            ("83 80 00 00 00 00", ProtocolError::ReservedOpcode(3)),
            ("8b 80 00 00 00 00", ProtocolError::ReservedOpcode(0xb)),
            ("09 80 00 00 00 00", ProtocolError::FragmentedControlFrame),
            ("89 fe 00 7e", ProtocolError::ControlFrameTooLong(126)),
            (
                "82 ff 80 00 00 00 00 00 00 00",
                ProtocolError::LengthTopBitSet,
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(FrameHeader::parse(&hex(bytes)), Err(*expected), "{bytes}");
        }
    }

    #[test]
    fn encode_parse_round_trip() {
        for len in [0u64, 1, 125, 126, 65535, 65536, 1 << 40] {
            for mask in [None, Some([9, 8, 7, 6])] {
                for opcode in [OpCode::Text, OpCode::Binary, OpCode::Continuation] {
                    let h = FrameHeader {
                        fin: len % 2 == 0,
                        rsv: 0,
                        opcode,
                        mask,
                        payload_len: len,
                    };
                    let mut buf = [0u8; MAX_HEADER_LEN];
                    let n = h.encode(&mut buf);
                    assert_eq!(FrameHeader::parse(&buf[..n]), Ok(Some((h, n))));
                }
            }
        }
    }

    #[test]
    fn shared_frame_is_a_whole_frame() {
        let f = encode_shared(OpCode::Text, b"hi");
        assert_eq!(&f[..], b"\x81\x02hi");
    }
}
