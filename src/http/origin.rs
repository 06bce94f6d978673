//! Comparing a request's `Origin` with a configured origin (RFC 6454): the one rule the
//! upgrade's allow-list (`--allowed-origin`) applies, kept here so that every caller compares
//! the same way.
//!
//! An origin is `scheme "://" host [ ":" port ]` (RFC 6454 §6.1, §7.1). Two origins are the
//! same when scheme and host are equal ignoring ASCII case (§4: both are lowercased when an
//! origin is computed) and the ports are equal, a missing port being the scheme's default
//! (`:80` for `http`/`ws`, `:443` for `https`/`wss`). Anything else — `null` (§7.1), a path, a
//! trailing `/`, userinfo, an empty or non-numeric port — is not a tuple origin: it matches
//! only the byte-identical configured string, so `--allowed-origin null` still works as it
//! did.

/// Whether the request's `origin` is the configured `allowed` origin (RFC 6454 §5 "same
/// origin", see the module doc). Both are taken as written (surrounding whitespace
/// included); the comparison allocates nothing.
pub fn origin_matches(allowed: &str, origin: &str) -> bool {
    match (Tuple::parse(allowed), Tuple::parse(origin)) {
        (Some(a), Some(b)) => a.same_as(&b),
        _ => allowed == origin,
    }
}

/// Whether `s` can be an `--allowed-origin`: a tuple origin as a browser serialises one
/// (`scheme://host[:port]`, no path, no trailing `/`, RFC 6454 §6.1) or `null` (§7.1). Anything
/// else (`*`, a bare host, a URL with a path) would never match a browser's `Origin`.
pub fn is_serialized_origin(s: &str) -> bool {
    s == "null" || Tuple::parse(s).is_some()
}

/// A parsed tuple origin, borrowed; scheme and host in the case they were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tuple<'a> {
    scheme: &'a str,
    host: &'a str,
    /// The port, the scheme's default filled in; `None` for a scheme without one and no
    /// port given.
    port: Option<u16>,
}

impl<'a> Tuple<'a> {
    fn parse(s: &'a str) -> Option<Tuple<'a>> {
        let (scheme, rest) = s.split_once("://")?;
        let mut chars = scheme.bytes();
        if !chars.next()?.is_ascii_alphabetic()
            || !chars.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return None;
        }
        // An IPv6 literal holds colons: the port starts after its `]`.
        let port_at = if rest.starts_with('[') {
            let close = rest.find(']')?;
            match &rest[close + 1..] {
                "" => None,
                after if after.starts_with(':') => Some(close + 1),
                _ => return None,
            }
        } else {
            rest.rfind(':')
        };
        let (host, port) = match port_at {
            Some(i) => (&rest[..i], Some(parse_port(&rest[i + 1..])?)),
            None => (rest, None),
        };
        let host_ok = |b: u8| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.' | b'_' | b'~' | b'%' | b'[' | b']' | b':' | b'!' | b'$'
                )
        };
        if host.is_empty() || !host.bytes().all(host_ok) {
            return None;
        }
        Some(Tuple {
            scheme,
            host,
            port: port.or_else(|| default_port(scheme)),
        })
    }

    fn same_as(&self, other: &Tuple<'_>) -> bool {
        self.scheme.eq_ignore_ascii_case(other.scheme)
            && self.host.eq_ignore_ascii_case(other.host)
            && self.port == other.port
    }
}

/// 1–5 digits, at most 65535.
fn parse_port(digits: &str) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The default port of the schemes an `Origin` can name (RFC 9110 §4.2, RFC 6455 §3).
fn default_port(scheme: &str) -> Option<u16> {
    let is = |s: &str| scheme.eq_ignore_ascii_case(s);
    if is("http") || is("ws") {
        Some(80)
    } else if is("https") || is("wss") {
        Some(443)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurable_origins() {
        for ok in [
            "https://a.example",
            "http://a.example:8080",
            "null",
            "https://[::1]:443",
        ] {
            assert!(is_serialized_origin(ok), "{ok}");
        }
        for bad in [
            "*",
            "a.example",
            "https://a.example/",
            "https://a.example/path",
            "",
        ] {
            assert!(!is_serialized_origin(bad), "{bad}");
        }
    }

    #[test]
    fn table() {
        // (configured, sent, same)
        let cases: &[(&str, &str, bool)] = &[
            ("https://app.example.com", "https://app.example.com", true),
            // Scheme and host ignore case, both ways round.
            ("https://App.Example.com", "https://app.example.com", true),
            ("https://app.example.com", "https://APP.example.COM", true),
            ("HTTPS://app.example.com", "https://app.example.com", true),
            // Default ports equal none; other ports do not.
            ("https://a.example:443", "https://a.example", true),
            ("https://a.example", "https://a.example:443", true),
            ("http://a.example:80", "http://a.example", true),
            ("http://a.example", "http://a.example:8080", false),
            ("https://a.example", "https://a.example:80", false),
            ("http://a.example:443", "https://a.example", false),
            ("https://a.example:8443", "https://a.example:8443", true),
            ("https://a.example:08443", "https://a.example:8443", true),
            // Scheme and host must agree.
            ("https://a.example", "http://a.example", false),
            ("https://a.example", "https://b.example", false),
            ("https://a.example", "https://a.example.evil", false),
            ("https://a.example", "https://xa.example", false),
            // IPv6 literals.
            ("http://[::1]:80", "http://[::1]", true),
            ("http://[::1]", "http://[::2]", false),
            ("http://[::1]:8080", "http://[::1]:8080", true),
            // A scheme with no default port needs the same port (or none on both).
            ("chrome-extension://abc", "chrome-extension://ABC", true),
            ("chrome-extension://abc", "chrome-extension://abc:80", false),
            // `null` and malformed origins: only the identical string.
            ("null", "null", true),
            ("null", "NULL", false),
            ("https://a.example", "null", false),
            ("https://a.example/", "https://a.example", false),
            ("https://a.example/", "https://a.example/", true),
            ("https://a.example", "https://a.example/path", false),
            ("https://a.example", "https://u@a.example", false),
            ("https://a.example:", "https://a.example", false),
            ("https://a.example", "https://a.example:99999", false),
            ("https://a.example", "https://a.example:-1", false),
            ("https://a.example", "https://a.example:x", false),
            ("https://a.example", "", false),
            ("", "", true),
            ("https://", "https://", true),
            ("https://", "HTTPS://", false),
            ("1http://a", "1http://A", false),
            ("https://a.example", " https://a.example", false),
        ];
        for (allowed, origin, same) in cases {
            assert_eq!(
                origin_matches(allowed, origin),
                *same,
                "{allowed:?} vs {origin:?}"
            );
            // The relation is symmetric.
            assert_eq!(
                origin_matches(origin, allowed),
                *same,
                "{origin:?} vs {allowed:?}"
            );
        }
    }
}
