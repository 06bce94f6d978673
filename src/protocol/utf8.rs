//! Incremental UTF-8 validation for text messages that arrive in pieces (RFC 6455 §8.1).
//!
//! A text message may be split over fragments and reads at any byte, even inside a code
//! point. The validator checks each piece as it arrives and fails on the first byte that can
//! no longer begin or continue valid UTF-8 — not at the end of the message — so a peer that
//! sends garbage is closed with 1007 at once. It carries at most three bytes of an unfinished
//! code point between pieces.

use std::str;

/// The input is not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

/// Validates a byte stream piece by piece. Small (5 bytes): it lives in every partial message.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a message, with no unfinished code point.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next piece. Fails as soon as a byte makes the stream invalid, whatever
    /// follows; an unfinished code point at the end of `input` is kept for the next call.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), InvalidUtf8> {
        // Finish a code point begun in an earlier piece, one byte at a time (at most three).
        while self.pending_len > 0 {
            let Some((&byte, rest)) = input.split_first() else {
                return Ok(());
            };
            input = rest;
            self.pending[usize::from(self.pending_len)] = byte;
            self.pending_len += 1;
            match str::from_utf8(&self.pending[..usize::from(self.pending_len)]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                Err(_) if self.pending_len == 4 => return Err(InvalidUtf8),
                Err(_) => {}
            }
        }
        match str::from_utf8(input) {
            Ok(_) => Ok(()),
            // `error_len() == None` means the input ends inside a code point that could still
            // become valid; anything else is a byte no continuation can rescue.
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                let tail = &input[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// Ends the stream: an unfinished code point at the end of a message is invalid.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.pending_len == 0;
        self.pending_len = 0;
        if complete {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(input: &[u8]) -> Result<(), InvalidUtf8> {
        let mut v = Utf8Validator::new();
        v.feed(input)?;
        v.finish()
    }

    #[test]
    fn every_split_agrees_with_std() {
        let cases: &[&[u8]] = &[
            "κόσμε".as_bytes(),
            "a€b𝄞c".as_bytes(),
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
            b"\xf4\x90\x80\x80",
            b"\xf0\x9f\x98",
            b"\xc0\xaf",
            b"\xed\xbf\xbf",
            b"\x80",
            b"",
        ];
        for &case in cases {
            let expected = str::from_utf8(case).is_ok();
            for a in 0..=case.len() {
                for b in a..=case.len() {
                    let mut v = Utf8Validator::new();
                    let ok = v.feed(&case[..a]).is_ok()
                        && v.feed(&case[a..b]).is_ok()
                        && v.feed(&case[b..]).is_ok()
                        && v.finish().is_ok();
                    assert_eq!(ok, expected, "{case:?} split at {a},{b}");
                }
            }
            assert_eq!(whole(case).is_ok(), expected);
        }
    }

    #[test]
    fn fails_on_first_invalid_byte_before_the_end() {
        // Autobahn 6.4.x: "κόσμε" then a byte that can never be valid; more bytes follow later.
        let mut v = Utf8Validator::new();
        assert!(v.feed("κόσμε".as_bytes()).is_ok());
        assert_eq!(v.feed(b"\xf4\x90"), Err(InvalidUtf8));
    }

    #[test]
    fn code_point_split_byte_by_byte() {
        let mut v = Utf8Validator::new();
        for b in "𝄞".as_bytes() {
            assert!(v.feed(std::slice::from_ref(b)).is_ok());
        }
        assert!(v.finish().is_ok());
    }

    #[test]
    fn unfinished_code_point_at_end_is_invalid() {
        let mut v = Utf8Validator::new();
        assert!(v.feed(b"ab\xe2\x82").is_ok());
        assert_eq!(v.finish(), Err(InvalidUtf8));
    }
}
