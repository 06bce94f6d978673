//! The names the push layer accepts: channel names and user ids. One place decides what a
//! well-formed name is so that the client protocol, the connection token and the push API
//! refuse the same things with the same words.
//!
//! design.md, "Client protocol on the push endpoint": channel names are 1–255 bytes of
//! `[A-Za-z0-9_.:@/-]`; names starting with `$` belong to the server, and `$user` (the
//! connection's own user stream) is the only one a client may name. User ids (the token's
//! `sub`, the API's `user`) are any 1–255 bytes of UTF-8 without control characters, since they
//! come from the application's own user table.

use std::fmt;

/// Longest channel name or user id, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// The connection's own user stream: subscribed at connect, and the only `$` name a client may
/// use.
pub const USER_CHANNEL: &str = "$user";

/// Why a channel name or user id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// The name has no bytes at all.
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes; `len` is its length.
    TooLong {
        /// The name's length in bytes, over [`MAX_NAME_LEN`].
        len: usize,
    },
    /// The character `ch` starting at byte `index` is not allowed.
    BadChar {
        /// Byte offset of the character in the name.
        index: usize,
        /// The refused character (for a user id, a control character).
        ch: char,
    },
    /// A `$` name other than [`USER_CHANNEL`]: those are the server's.
    Reserved,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("name is empty"),
            NameError::TooLong { len } => {
                write!(f, "name is too long ({len} bytes, at most {MAX_NAME_LEN})")
            }
            NameError::BadChar { index, ch } => {
                write!(f, "bad character {ch:?} at index {index}")
            }
            NameError::Reserved => f.write_str("names starting with '$' are reserved"),
        }
    }
}

impl std::error::Error for NameError {}

/// Is this one of the server's own channels (a name starting with `$`)?
pub fn is_server_channel(name: &str) -> bool {
    name.starts_with('$')
}

/// Checks a channel name: 1–255 bytes of `[A-Za-z0-9_.:@/-]`, or exactly [`USER_CHANNEL`].
/// Every other `$` name is refused as reserved.
pub fn validate_channel(name: &str) -> Result<(), NameError> {
    check_len(name)?;
    if is_server_channel(name) {
        return if name == USER_CHANNEL {
            Ok(())
        } else {
            Err(NameError::Reserved)
        };
    }
    match name.bytes().position(|b| !is_channel_byte(b)) {
        None => Ok(()),
        Some(index) => Err(NameError::BadChar {
            index,
            ch: char_at(name, index),
        }),
    }
}

/// Checks a user id: 1–255 bytes with no control character (below 0x20, or 0x7f).
pub fn validate_user(id: &str) -> Result<(), NameError> {
    check_len(id)?;
    // Control characters are all ASCII, so a byte scan never lands inside a multi-byte char.
    match id.bytes().position(|b| b < 0x20 || b == 0x7f) {
        None => Ok(()),
        Some(index) => Err(NameError::BadChar {
            index,
            ch: char_at(id, index),
        }),
    }
}

fn check_len(name: &str) -> Result<(), NameError> {
    match name.len() {
        0 => Err(NameError::Empty),
        len if len > MAX_NAME_LEN => Err(NameError::TooLong { len }),
        _ => Ok(()),
    }
}

fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'/' | b'-')
}

/// The char starting at byte `index`. Every bad byte a scan above can report is either ASCII or
/// the first byte of a multi-byte char (the scan stops at the first non-ASCII byte), so `index`
/// is a char boundary; the fallback only keeps this total.
fn char_at(s: &str, index: usize) -> char {
    s.get(index..)
        .and_then(|rest| rest.chars().next())
        .unwrap_or(char::REPLACEMENT_CHARACTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        let long_ok = "a".repeat(MAX_NAME_LEN);
        let too_long = "a".repeat(MAX_NAME_LEN + 1);
        let cases: &[(&str, Result<(), NameError>)] = &[
            ("news", Ok(())),
            ("chat:1", Ok(())),
            ("a", Ok(())),
            ("A-Z_a.z:0@9/x", Ok(())),
            ("$user", Ok(())),
            (&long_ok, Ok(())),
            ("", Err(NameError::Empty)),
            (&too_long, Err(NameError::TooLong { len: 256 })),
            ("$users", Err(NameError::Reserved)),
            ("$", Err(NameError::Reserved)),
            ("$admin", Err(NameError::Reserved)),
            ("news feed", Err(NameError::BadChar { index: 4, ch: ' ' })),
            ("a*", Err(NameError::BadChar { index: 1, ch: '*' })),
            ("a$user", Err(NameError::BadChar { index: 1, ch: '$' })),
            (
                "caf\u{e9}",
                Err(NameError::BadChar {
                    index: 3,
                    ch: '\u{e9}',
                }),
            ),
            ("x\n", Err(NameError::BadChar { index: 1, ch: '\n' })),
            ("\"", Err(NameError::BadChar { index: 0, ch: '"' })),
        ];
        for (name, want) in cases {
            assert_eq!(validate_channel(name), *want, "{name:?}");
        }
    }

    #[test]
    fn user_ids() {
        let long_ok = "\u{e9}".repeat(MAX_NAME_LEN / 2); // 254 bytes
        let too_long = "\u{e9}".repeat(MAX_NAME_LEN / 2 + 1); // 256 bytes
        let cases: &[(&str, Result<(), NameError>)] = &[
            ("603577", Ok(())),
            ("alice@example.com", Ok(())),
            ("with space", Ok(())),
            ("$user", Ok(())),
            ("Jos\u{e9}", Ok(())),
            (&long_ok, Ok(())),
            ("", Err(NameError::Empty)),
            (&too_long, Err(NameError::TooLong { len: 256 })),
            ("a\tb", Err(NameError::BadChar { index: 1, ch: '\t' })),
            ("\u{0}", Err(NameError::BadChar { index: 0, ch: '\0' })),
            (
                "ab\u{7f}",
                Err(NameError::BadChar {
                    index: 2,
                    ch: '\u{7f}',
                }),
            ),
            ("\u{e9}\n", Err(NameError::BadChar { index: 2, ch: '\n' })),
        ];
        for (id, want) in cases {
            assert_eq!(validate_user(id), *want, "{id:?}");
        }
    }

    #[test]
    fn server_channels() {
        for (name, want) in [("$user", true), ("$x", true), ("user", false), ("", false)] {
            assert_eq!(is_server_channel(name), want, "{name:?}");
        }
    }

    #[test]
    fn messages_name_the_problem() {
        let cases = [
            (NameError::Empty, "name is empty"),
            (
                NameError::TooLong { len: 300 },
                "name is too long (300 bytes, at most 255)",
            ),
            (
                NameError::BadChar { index: 4, ch: ' ' },
                "bad character ' ' at index 4",
            ),
            (
                NameError::BadChar { index: 0, ch: '\n' },
                "bad character '\\n' at index 0",
            ),
            (NameError::Reserved, "names starting with '$' are reserved"),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
    }
}
