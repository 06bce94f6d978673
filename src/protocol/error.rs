//! Protocol errors after the handshake: one variant per RFC 6455 rule, each mapped to the close
//! code the server owes the peer (§7.4.1). Handshake errors live in `handshake.rs` and map to
//! HTTP statuses instead.

use std::fmt;

/// A rule of RFC 6455 the peer broke. The connection must be failed with [`Self::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// §5.2: RSV1–3 "MUST be 0 unless an extension is negotiated". permessage-deflate allows
    /// RSV1 on the first frame of a data message only (RFC 7692 §6.1).
    ReservedBits(u8),
    /// §5.2: opcodes 3–7 and 0xB–0xF are reserved.
    ReservedOpcode(u8),
    /// §5.1: "a client MUST mask all frames that it sends to the server".
    UnmaskedFrame,
    /// §5.1: "a server MUST NOT mask any frames that it sends to the client".
    MaskedFrame,
    /// §5.5: "control frames MUST NOT be fragmented".
    FragmentedControlFrame,
    /// §5.5: "all control frames MUST have a payload length of 125 bytes or less".
    ControlFrameTooLong(u64),
    /// §5.2: in the 64-bit length form "the most significant bit MUST be 0".
    LengthTopBitSet,
    /// §5.4: a continuation frame with no fragmented message in progress.
    UnexpectedContinuation,
    /// §5.4: a new text or binary frame while a fragmented message is still open.
    ExpectedContinuation,
    /// §10.4: a message (counted across all its fragments) over the configured limit.
    MessageTooBig {
        /// Bytes of the message: its earlier fragments plus the payload length the crossing
        /// frame's header announces (the payload is refused before it is read).
        size: u64,
        /// The decoder's limit in bytes (`--max-message-size` on the server).
        limit: usize,
    },
    /// §8.1: a text message (or close reason, §5.5.1) that is not UTF-8.
    InvalidUtf8,
    /// RFC 7692 §7.2.2: a compressed message that inflates past the configured limit
    /// (§10.4); found as soon as the output passes it.
    InflatedTooBig {
        /// The limit in bytes (`--max-message-size`).
        limit: usize,
    },
    /// RFC 7692 §7.2.2: a compressed message whose data is not valid deflate (closed with
    /// 1007: the message's data is inconsistent with its type, §7.4.1).
    BadCompressedData,
    /// §5.5.1: a close payload of one byte cannot hold the two-byte status code.
    ClosePayloadTooShort,
    /// §7.4: a status code a peer must not send (under 1000, 1004–1006, 1015, 1016–2999, 5000+).
    InvalidCloseCode(u16),
}

impl ProtocolError {
    /// The close code to fail the connection with (§7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::BadCompressedData => {
                crate::protocol::close::INVALID_PAYLOAD
            }
            ProtocolError::MessageTooBig { .. } | ProtocolError::InflatedTooBig { .. } => {
                crate::protocol::close::TOO_BIG
            }
            _ => crate::protocol::close::PROTOCOL_ERROR,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::ReservedBits(bits) => {
                write!(
                    f,
                    "RSV bits {bits:#05b} set where no extension allows them (RFC 6455 §5.2)"
                )
            }
            ProtocolError::ReservedOpcode(op) => {
                write!(f, "reserved opcode {op:#x} (RFC 6455 §5.2)")
            }
            ProtocolError::UnmaskedFrame => f.write_str("unmasked client frame (RFC 6455 §5.1)"),
            ProtocolError::MaskedFrame => f.write_str("masked server frame (RFC 6455 §5.1)"),
            ProtocolError::FragmentedControlFrame => {
                f.write_str("fragmented control frame (RFC 6455 §5.5)")
            }
            ProtocolError::ControlFrameTooLong(len) => {
                write!(
                    f,
                    "control frame payload of {len} bytes > 125 (RFC 6455 §5.5)"
                )
            }
            ProtocolError::LengthTopBitSet => {
                f.write_str("64-bit payload length with the top bit set (RFC 6455 §5.2)")
            }
            ProtocolError::UnexpectedContinuation => {
                f.write_str("continuation frame with no message open (RFC 6455 §5.4)")
            }
            ProtocolError::ExpectedContinuation => {
                f.write_str("new data frame inside a fragmented message (RFC 6455 §5.4)")
            }
            ProtocolError::MessageTooBig { size, limit } => {
                write!(
                    f,
                    "message of at least {size} bytes over the {limit}-byte limit"
                )
            }
            ProtocolError::InvalidUtf8 => f.write_str("invalid UTF-8 in text (RFC 6455 §8.1)"),
            ProtocolError::InflatedTooBig { limit } => {
                write!(f, "compressed message inflates past the {limit}-byte limit")
            }
            ProtocolError::BadCompressedData => {
                f.write_str("compressed message is not valid deflate data (RFC 7692 §7.2.2)")
            }
            ProtocolError::ClosePayloadTooShort => {
                f.write_str("one-byte close payload (RFC 6455 §5.5.1)")
            }
            ProtocolError::InvalidCloseCode(code) => {
                write!(
                    f,
                    "close code {code} not allowed from a peer (RFC 6455 §7.4)"
                )
            }
        }
    }
}

impl std::error::Error for ProtocolError {}
