//! Why an otherwise valid upgrade request is refused, and the HTTP answer each reason gets:
//! one enum instead of `(status, String)` pairs built at each refusal site.

use crate::metrics::HandshakeFailure;
use crate::protocol::handshake::write_response;

/// An upgrade the server will not complete (RFC 6455 §4.2.2 item 1: "the server MUST ... send
/// an appropriate HTTP error code"). Checked by the worker in the order the variants are listed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The request is well-formed HTTP but asks for something malformed (a `since` that is
    /// not a number): 400, the text says what.
    BadRequest(String),
    /// No WebSocket endpoint at this path: 404.
    NoEndpoint,
    /// `Origin` is not one of `--allowed-origin`: 403.
    OriginNotAllowed,
    /// The server is draining (SIGTERM): 503 + `Retry-After`.
    Draining,
    /// `--max-connections` (or the open-files ceiling) reached: 503 + `Retry-After`.
    Full,
    /// Cluster mode, and this node cannot reach Redis: 503 + `Retry-After` (push endpoint).
    StoreDown,
    /// The push endpoint's token is missing or invalid (the text says why): 401 +
    /// `WWW-Authenticate: Bearer`.
    Unauthorized(String),
    /// `--max-connections-per-ip` or `--max-handshakes-per-ip` reached: 429 + `Retry-After`.
    TooManyFromAddress,
}

impl Refusal {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::NoEndpoint => 404,
            Refusal::OriginNotAllowed => 403,
            Refusal::Draining | Refusal::Full | Refusal::StoreDown => 503,
            Refusal::Unauthorized(_) => 401,
            Refusal::TooManyFromAddress => 429,
        }
    }

    /// The metric label it is counted under.
    pub fn failure(&self) -> HandshakeFailure {
        HandshakeFailure::from_status(self.status())
    }

    /// The answer's body (one line of text).
    pub fn body(&self) -> String {
        match self {
            Refusal::BadRequest(reason) => format!("{reason}\n"),
            Refusal::NoEndpoint => "no WebSocket endpoint here\n".to_owned(),
            Refusal::OriginNotAllowed => "origin not allowed\n".to_owned(),
            Refusal::Draining => "draining: reconnect elsewhere\n".to_owned(),
            Refusal::Full => "server full\n".to_owned(),
            Refusal::StoreDown => {
                "this node cannot reach its cluster: reconnect elsewhere\n".to_owned()
            }
            Refusal::Unauthorized(reason) => format!("{reason}\n"),
            Refusal::TooManyFromAddress => {
                "too many connections or upgrades from your address\n".to_owned()
            }
        }
    }

    /// Headers the answer carries besides the standard ones.
    pub fn headers(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            Refusal::Draining | Refusal::Full | Refusal::TooManyFromAddress => {
                &[("Retry-After", "5")]
            }
            Refusal::StoreDown => &[("Retry-After", "1")],
            Refusal::Unauthorized(_) => &[("WWW-Authenticate", "Bearer")],
            Refusal::BadRequest(_) | Refusal::NoEndpoint | Refusal::OriginNotAllowed => &[],
        }
    }

    /// Appends the complete HTTP answer to `out`.
    pub fn write_response(&self, out: &mut Vec<u8>) {
        write_response(out, self.status(), self.headers(), &self.body());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_status_and_headers() {
        let cases = [
            (Refusal::BadRequest("since".into()), 400, None),
            (Refusal::NoEndpoint, 404, None),
            (Refusal::OriginNotAllowed, 403, None),
            (Refusal::Draining, 503, Some("Retry-After: 5")),
            (Refusal::Full, 503, Some("Retry-After: 5")),
            (Refusal::StoreDown, 503, Some("Retry-After: 1")),
            (
                Refusal::Unauthorized("bad token".into()),
                401,
                Some("WWW-Authenticate: Bearer"),
            ),
            (Refusal::TooManyFromAddress, 429, Some("Retry-After: 5")),
        ];
        for (refusal, status, header) in cases {
            let mut out = Vec::new();
            refusal.write_response(&mut out);
            let text = String::from_utf8(out).expect("ASCII answer");
            assert!(
                text.starts_with(&format!("HTTP/1.1 {status} ")),
                "{refusal:?}: {text}"
            );
            if let Some(header) = header {
                assert!(text.contains(header), "{refusal:?}: {text}");
            }
            assert!(text.ends_with(&refusal.body()), "{refusal:?}: {text}");
            assert_eq!(refusal.failure(), HandshakeFailure::from_status(status));
        }
    }
}
