//! The closing handshake's wire rules (RFC 6455 §5.5.1, §7): which status codes a peer may
//! send, and how a close payload is read and written. Where a connection stands in the
//! handshake is the session's ([`crate::session::State`], [`crate::session::Closing`]).

use crate::protocol::error::ProtocolError;
use crate::protocol::frame::{self, OpCode};

/// 1000: normal closure.
pub const NORMAL: u16 = 1000;
/// 1001: going away (the server is draining).
pub const GOING_AWAY: u16 = 1001;
/// 1002: protocol error.
pub const PROTOCOL_ERROR: u16 = 1002;
/// 1003: unsupported data.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// 1005: no status code present (never sent on the wire).
pub const NO_STATUS: u16 = 1005;
/// 1006: closed without a close frame (never sent on the wire).
pub const ABNORMAL: u16 = 1006;
/// 1007: invalid payload data (bad UTF-8).
pub const INVALID_PAYLOAD: u16 = 1007;
/// 1008: policy violation (we use it for slow consumers).
pub const POLICY: u16 = 1008;
/// 1009: message too big.
pub const TOO_BIG: u16 = 1009;
/// 1011: internal server error.
pub const INTERNAL_ERROR: u16 = 1011;
/// 4000 (private use, §7.4.2): the push API disconnected this user (`POST /api/disconnect`).
pub const DISCONNECTED: u16 = 4000;
/// 4001 (private use, §7.4.2): the connection's token expired and no `refresh` replaced it.
pub const TOKEN_EXPIRED: u16 = 4001;

/// §7.4.1/§7.4.2 and the IANA "WebSocket Close Code Number Registry": may a peer put this
/// code in a close frame? This is the one table of it.
///
/// - 1000–1003 and 1007–1011: defined by RFC 6455 for use on the wire;
/// - 1012 (service restart), 1013 (try again later), 1014 (bad gateway): registered with IANA
///   since, sent by servers and proxies, accepted by browsers and the main libraries;
/// - 1004 (reserved), 1005 and 1006 (local only, never on the wire), 1015 (TLS failure, local
///   only), and the rest of 1000–2999 (reserved for future RFCs): refused with 1002
///   (Autobahn 7.9.x);
/// - 3000–3999 (registered by libraries and frameworks) and 4000–4999 (private use): accepted;
/// - 0–999 and 5000 up: not close codes; refused.
pub fn is_valid_peer_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A close frame's body: the status code and the UTF-8 reason, or nothing at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    /// The status code (§7.4), big-endian on the wire; from a peer, one that
    /// [`is_valid_peer_code`] accepts.
    pub code: u16,
    /// The UTF-8 reason after the code, possibly empty; at most 123 bytes, as the whole
    /// payload of a control frame is at most 125 (§5.5).
    pub reason: &'a str,
}

/// Reads a close payload (§5.5.1): empty, or a two-byte code followed by a UTF-8 reason.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<CloseFrame<'_>>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::ClosePayloadTooShort),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_peer_code(code) {
                return Err(ProtocolError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

/// Appends a server close frame with `code` and `reason` (cut to fit 125 bytes on a
/// character boundary) to `out`.
pub fn write_close_frame(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; 125];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    frame::write_frame(out, OpCode::Close, &payload[..2 + end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_code_table() {
        let valid = [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ];
        let invalid = [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ];
        for code in valid {
            assert!(is_valid_peer_code(code), "{code}");
        }
        for code in invalid {
            assert!(!is_valid_peer_code(code), "{code}");
        }
    }

    #[test]
    fn close_payload_rules() {
        assert_eq!(parse_close_payload(b""), Ok(None));
        assert_eq!(
            parse_close_payload(b"\x03"),
            Err(ProtocolError::ClosePayloadTooShort)
        );
        assert_eq!(
            parse_close_payload(b"\x03\xe8bye"),
            Ok(Some(CloseFrame {
                code: 1000,
                reason: "bye"
            }))
        );
        assert_eq!(
            parse_close_payload(b"\x03\xed"),
            Err(ProtocolError::InvalidCloseCode(1005))
        );
        assert_eq!(
            parse_close_payload(b"\x03\xe8\xff"),
            Err(ProtocolError::InvalidUtf8)
        );
        assert_eq!(ProtocolError::InvalidUtf8.close_code(), INVALID_PAYLOAD);
    }

    #[test]
    fn close_frame_reason_is_cut_on_char_boundary() {
        let mut out = Vec::new();
        let reason = "é".repeat(100); // 200 bytes
        write_close_frame(&mut out, GOING_AWAY, &reason);
        assert_eq!(out[0], 0x88);
        let len = usize::from(out[1]);
        assert!(len <= 125);
        let payload = &out[2..];
        assert_eq!(payload.len(), len);
        let parsed = parse_close_payload(payload);
        assert!(matches!(
            parsed,
            Ok(Some(CloseFrame {
                code: GOING_AWAY,
                ..
            }))
        ));
    }
}
