//! Plain HTTP on the public listener: routing a request that is not (or not allowed to become)
//! a WebSocket, and the fixed answers the server gives. Every answer closes the connection.

use crate::http::response::{write_head, write_response, Persistence};
use crate::protocol::handshake::Request;

/// The seeds' test client, served at `GET /`.
pub const DEMO_PAGE: &str = include_str!("../../static/index.html");

const TEXT: &str = "text/plain; charset=utf-8";

/// Appends the answer to a plain (non-upgrade) request to `out` and returns its status. While
/// `unavailable` (draining, or a cluster node that cannot reach Redis: the body says which),
/// `/healthz` answers 503 so load balancers take the node out. `HEAD` gets the
/// head `GET` would (RFC 9110 §9.3.2); any other method 405.
pub fn answer_plain(
    request: &Request<'_>,
    unavailable: Option<&'static str>,
    out: &mut Vec<u8>,
) -> u16 {
    if request.method != "GET" && request.method != "HEAD" {
        let allow = [("Allow", "GET")];
        write_response(
            out,
            405,
            TEXT,
            b"method not allowed\n",
            Persistence::Close,
            &allow,
        );
        return 405;
    }
    let retry = [("Retry-After", "5")];
    let (status, content_type, body, headers): (u16, &str, &[u8], &[(&str, &str)]) =
        match (request.path, unavailable) {
            ("/healthz", Some(why)) => (503, TEXT, why.as_bytes(), &retry),
            ("/" | "/index.html", _) => {
                (200, "text/html; charset=utf-8", DEMO_PAGE.as_bytes(), &[])
            }
            ("/healthz", None) => (200, TEXT, b"ok\n", &[]),
            _ => (404, TEXT, b"not found\n", &[]),
        };
    if request.method == "HEAD" {
        write_head(
            out,
            status,
            content_type,
            body.len(),
            Persistence::Close,
            headers,
        );
    } else {
        write_response(out, status, content_type, body, Persistence::Close, headers);
    }
    status
}
