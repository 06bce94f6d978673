//! The `--upstream` URL: `http://host[:port]/path[?query]` (no TLS, no userinfo, no
//! fragment), and its address, resolved once at start (design.md: a backend that moves needs a
//! restart, and no event loop ever waits on DNS).

use std::net::{SocketAddr, ToSocketAddrs};

/// A parsed `--upstream` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host[:port]` as written: the `Host` header of every request.
    pub authority: String,
    /// The host name or address (IPv6 without its brackets).
    pub host: String,
    /// The port (80 when the URL gives none).
    pub port: u16,
    /// The request target: path and query, at least `/`.
    pub path: String,
}

impl Target {
    /// Parses `url`; `Err` says what is wrong in one line.
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("--upstream {url:?}: only http:// URLs are supported"))?;
        if url.contains('#') {
            return Err(format!("--upstream {url:?}: a URL with a #fragment"));
        }
        if url.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
            return Err(format!(
                "--upstream {url:?}: spaces or characters outside visible ASCII (percent-encode them)"
            ));
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() || authority.contains('@') {
            return Err(format!(
                "--upstream {url:?}: needs a host (and no user:password@)"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (
                host,
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("--upstream {url:?}: bad port {port:?}"))?,
            ),
            _ => (authority, 80),
        };
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(format!("--upstream {url:?}: needs a host"));
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        };
        Ok(Target {
            authority: authority.to_owned(),
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// Resolves the host (blocking: call it once, at start); the first address wins.
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("--upstream: cannot resolve {:?}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("--upstream: {:?} has no address", self.host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:9000/actions?x=1").expect("parse");
        assert_eq!(t.authority, "127.0.0.1:9000");
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 9000));
        assert_eq!(t.path, "/actions?x=1");
        let t = Target::parse("http://backend").expect("parse");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("backend", 80, "/")
        );
        let t = Target::parse("http://[::1]:81?q").expect("parse");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 81, "/?q")
        );
        assert_eq!(t.authority, "[::1]:81");
        for bad in [
            "https://x/",
            "x:80",
            "http:///p",
            "http://u@x/",
            "http://x:0/",
            "http://x:99999/",
            "http://x/a b",
            "http://x/#f",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolves_loopback() {
        let t = Target::parse("http://127.0.0.1:1/").expect("parse");
        assert_eq!(t.resolve().expect("resolve").port(), 1);
        let t = Target::parse("http://no-such-host.invalid/").expect("parse");
        assert!(t.resolve().is_err());
    }
}
