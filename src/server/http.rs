//! Plain HTTP on the public listener: routing a request that is not (or not allowed to become)
//! a WebSocket, and the fixed answers the server gives.

use crate::protocol::handshake::{write_response, write_response_typed, Request};

/// The seeds' test client, served at `GET /`.
pub const DEMO_PAGE: &str = include_str!("../../static/index.html");

/// Appends the answer to a plain (non-upgrade) request to `out`. While `draining`, `/healthz`
/// answers 503 so load balancers take the node out.
pub fn answer_plain(request: &Request<'_>, draining: bool, out: &mut Vec<u8>) -> u16 {
    if request.method != "GET" && request.method != "HEAD" {
        write_response(out, 405, &[("Allow", "GET")], "method not allowed\n");
        return 405;
    }
    let head_only = request.method == "HEAD";
    if draining && request.path == "/healthz" {
        write_response_typed(
            out,
            503,
            &[("Retry-After", "5")],
            "text/plain; charset=utf-8",
            b"draining\n",
        );
        if head_only {
            out.truncate(out.len() - b"draining\n".len());
        }
        return 503;
    }
    let (status, content_type, body): (u16, &str, &[u8]) = match request.path {
        "/" | "/index.html" => (200, "text/html; charset=utf-8", DEMO_PAGE.as_bytes()),
        "/healthz" => (200, "text/plain; charset=utf-8", b"ok\n"),
        _ => (404, "text/plain; charset=utf-8", b"not found\n"),
    };
    let start = out.len();
    write_response_typed(out, status, &[], content_type, body);
    if head_only {
        out.truncate(start + (out.len() - start - body.len()));
    }
    status
}
