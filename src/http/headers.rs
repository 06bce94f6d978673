//! Lookups over the header lines of a parsed head: by name, and the fields that decide how a
//! message is framed and whether the connection persists (`Content-Length`,
//! `Transfer-Encoding`, `Connection`, `Expect`). Shared by request and response heads.

use super::{Error, Header};

/// The header lines of one head, in arrival order, borrowed from the caller's lent array
/// (`'h`) and input buffer (`'b`). Names compare case-insensitively (RFC 9110 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers<'h, 'b> {
    lines: &'h [Header<'b>],
}

/// What the `Connection` header lines say (RFC 9110 §7.6.1), all lines and list items taken
/// together, tokens case-insensitive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// `close` is among the options.
    pub close: bool,
    /// `keep-alive` is among the options (HTTP/1.0's way to ask for persistence).
    pub keep_alive: bool,
    /// `upgrade` is among the options (RFC 9110 §7.8).
    pub upgrade: bool,
}

impl ConnectionOptions {
    /// Whether the connection persists after this message, by RFC 9112 §9.3: HTTP/1.1 (`minor`
    /// 1) persists unless `close`; HTTP/1.0 only with `keep-alive`; `close` always wins.
    pub fn persists(&self, minor_version: u8) -> bool {
        !self.close && (minor_version >= 1 || self.keep_alive)
    }
}

impl<'h, 'b> Headers<'h, 'b> {
    /// Wraps parsed header lines.
    pub fn new(lines: &'h [Header<'b>]) -> Self {
        Headers { lines }
    }

    /// Every line, in order.
    pub fn lines(&self) -> &'h [Header<'b>] {
        self.lines
    }

    /// The value of the first line named `name`, raw (not trimmed; httparse has already
    /// stripped the whitespace around it).
    pub fn get(&self, name: &str) -> Option<&'b [u8]> {
        self.get_all(name).next()
    }

    /// The values of every line named `name`, in order.
    pub fn get_all<'n>(&self, name: &'n str) -> impl Iterator<Item = &'b [u8]> + use<'h, 'b, 'n> {
        self.lines
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// True if any line is named `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The value of the field `name`, which must appear at most once: a second line is
    /// [`Error::RepeatedField`] (400, RFC 9112 §3.2), whatever the values.
    pub fn once(&self, name: &'static str) -> Result<Option<&'b [u8]>, Error> {
        let mut values = self.get_all(name);
        let first = values.next();
        match values.next() {
            Some(_) => Err(Error::RepeatedField(name)),
            None => Ok(first),
        }
    }

    /// Checks that none of `names` appears more than once (see [`Headers::once`]); the first
    /// repeated one, in `names` order, is the error.
    pub fn check_once(&self, names: &[&'static str]) -> Result<(), Error> {
        names.iter().try_for_each(|name| self.once(name).map(drop))
    }

    /// `Content-Length` (RFC 9112 §6.3 item 5): `Ok(None)` without one; every line must be
    /// `1*DIGIT` (at most 19 digits, so it fits a `u64`) and all must agree.
    pub fn content_length(&self) -> Result<Option<u64>, Error> {
        let mut length = None;
        for value in self.get_all("content-length") {
            let n = parse_length(value).ok_or(Error::InvalidContentLength)?;
            if length.is_some_and(|m| m != n) {
                return Err(Error::ConflictingContentLength);
            }
            length = Some(n);
        }
        Ok(length)
    }

    /// The `Connection` options.
    pub fn connection(&self) -> ConnectionOptions {
        let mut options = ConnectionOptions::default();
        for value in self.get_all("connection") {
            for token in list(value) {
                options.close |= token.eq_ignore_ascii_case(b"close");
                options.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                options.upgrade |= token.eq_ignore_ascii_case(b"upgrade");
            }
        }
        options
    }

    /// `Expect: 100-continue` (RFC 9110 §10.1.1): the client waits for `100 Continue` before
    /// it sends the body.
    pub fn expects_continue(&self) -> bool {
        self.get_all("expect")
            .any(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"))
    }
}

/// The items of a comma-separated list (RFC 9110 §5.6.1), trimmed, empty ones skipped.
pub fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Is `token` among the items of the list `value` (case-insensitive)?
pub fn has_token(value: &[u8], token: &str) -> bool {
    list(value).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// `1*DIGIT`, at most 19 digits so that it fits a `u64` without overflow.
fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header lines as (name, value) pairs.
    type Lines<'a> = &'a [(&'a str, &'a str)];

    fn with<'a, T>(lines: &[(&'a str, &'a str)], f: impl FnOnce(Headers<'_, 'a>) -> T) -> T {
        let lines: Vec<Header<'a>> = lines
            .iter()
            .map(|(name, value)| Header {
                name,
                value: value.as_bytes(),
            })
            .collect();
        f(Headers::new(&lines))
    }

    #[test]
    fn lookup_is_case_insensitive_and_ordered() {
        with(&[("Host", "a"), ("X", "1"), ("HOST", "b")], |h| {
            assert_eq!(h.get("host"), Some(&b"a"[..]));
            assert_eq!(h.get_all("Host").collect::<Vec<_>>(), [b"a", b"b"]);
            assert!(h.contains("x") && !h.contains("y"));
            assert_eq!(h.lines().len(), 3);
        });
    }

    #[test]
    fn singletons() {
        let cases: &[(Lines<'_>, Result<(), Error>)] = &[
            (&[], Ok(())),
            (&[("Host", "a"), ("Origin", "o")], Ok(())),
            (
                &[("Host", "a"), ("host", "a")],
                Err(Error::RepeatedField("host")),
            ),
            (
                &[("HOST", "a"), ("X", "1"), ("Host", "b")],
                Err(Error::RepeatedField("host")),
            ),
            (
                &[("Origin", "o"), ("Origin", "o")],
                Err(Error::RepeatedField("origin")),
            ),
            (
                &[("Content-Length", "3"), ("Content-Length", "3")],
                Err(Error::RepeatedField("content-length")),
            ),
            (
                &[("Authorization", "Bearer a"), ("authorization", "Bearer b")],
                Err(Error::RepeatedField("authorization")),
            ),
            // Lists may be split over lines (RFC 9110 §5.3).
            (&[("Connection", "a"), ("Connection", "b")], Ok(())),
        ];
        for (lines, expected) in cases {
            with(lines, |h| {
                assert_eq!(
                    h.check_once(&crate::http::SINGLETON_FIELDS),
                    *expected,
                    "{lines:?}"
                );
            });
        }
        with(&[("Host", "a")], |h| {
            assert_eq!(h.once("host"), Ok(Some(&b"a"[..])));
            assert_eq!(h.once("origin"), Ok(None));
        });
    }

    #[test]
    fn content_length_table() {
        let cases: &[(Lines<'_>, Result<Option<u64>, Error>)] = &[
            (&[], Ok(None)),
            (&[("Content-Length", "0")], Ok(Some(0))),
            (&[("content-length", " 42 ")], Ok(Some(42))),
            (
                &[("Content-Length", "9999999999999999999")],
                Ok(Some(9_999_999_999_999_999_999)),
            ),
            (
                &[("Content-Length", "10000000000000000000")],
                Err(Error::InvalidContentLength),
            ),
            (&[("Content-Length", "")], Err(Error::InvalidContentLength)),
            (
                &[("Content-Length", "-1")],
                Err(Error::InvalidContentLength),
            ),
            (
                &[("Content-Length", "+1")],
                Err(Error::InvalidContentLength),
            ),
            (
                &[("Content-Length", "1, 1")],
                Err(Error::InvalidContentLength),
            ),
            (
                &[("Content-Length", "0x10")],
                Err(Error::InvalidContentLength),
            ),
            (
                &[("Content-Length", "3"), ("Content-Length", "3")],
                Ok(Some(3)),
            ),
            (
                &[("Content-Length", "3"), ("Content-Length", "4")],
                Err(Error::ConflictingContentLength),
            ),
            (
                &[("Content-Length", "3"), ("Content-Length", "x")],
                Err(Error::InvalidContentLength),
            ),
        ];
        for (lines, expected) in cases {
            with(lines, |h| {
                assert_eq!(h.content_length(), *expected, "{lines:?}")
            });
        }
    }

    #[test]
    fn connection_and_persistence() {
        // (lines, minor version, persists, upgrade)
        let cases: &[(Lines<'_>, u8, bool, bool)] = &[
            (&[], 1, true, false),
            (&[], 0, false, false),
            (&[("Connection", "close")], 1, false, false),
            (&[("Connection", "Keep-Alive")], 0, true, false),
            (&[("Connection", "keep-alive, close")], 0, false, false),
            (&[("Connection", "foo, CLOSE")], 1, false, false),
            (
                &[("Connection", "close"), ("Connection", "keep-alive")],
                0,
                false,
                false,
            ),
            (&[("Connection", "keep-alive, Upgrade")], 1, true, true),
            (&[("Connection", ",,upgrade ,")], 1, true, true),
            (&[("Connection", "upgrades")], 1, true, false),
        ];
        for (lines, minor, persists, upgrade) in cases {
            with(lines, |h| {
                let options = h.connection();
                assert_eq!(options.persists(*minor), *persists, "{lines:?} 1.{minor}");
                assert_eq!(options.upgrade, *upgrade, "{lines:?}");
            });
        }
    }

    #[test]
    fn expect_continue() {
        let cases: &[(Lines<'_>, bool)] = &[
            (&[("Expect", "100-continue")], true),
            (&[("expect", "100-Continue ")], true),
            (&[("X", "1"), ("Expect", "100-continue")], true),
            (&[("Expect", "200-ok")], false),
            (&[("X-Expect", "100-continue")], false),
            (&[], false),
        ];
        for (lines, expected) in cases {
            with(lines, |h| {
                assert_eq!(h.expects_continue(), *expected, "{lines:?}")
            });
        }
    }

    #[test]
    fn tokens() {
        assert!(has_token(b"keep-alive, UPGRADE", "upgrade"));
        assert!(has_token(b"websocket", "WebSocket"));
        assert!(!has_token(b"websocketx", "websocket"));
        assert!(!has_token(b"", "x"));
        assert_eq!(list(b" a ,, b,").collect::<Vec<_>>(), [&b"a"[..], b"b"]);
    }
}
