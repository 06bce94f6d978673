//! The upstream client (`--upstream URL`, design.md "Upstream"): every binary message a push
//! client sends (a 4-byte big-endian action code, then a payload) is POSTed unchanged to a
//! backend over HTTP/1.1, and the backend's answer goes back to that client. Sans IO: nothing
//! here touches a socket or reads a clock; the worker (`server/worker/upstream.rs`) drives it
//! with bytes, readiness and ticks of its timer wheel.
//!
//! One file per idea:
//! - [`target`]: the `--upstream` URL (http only) and its address, resolved once at start.
//! - [`request`]: the POST a message becomes, with its `Edgepush-*` headers.
//! - [`answer`]: the backend's answer read with the shared [`crate::http`] module (1xx skipped,
//!   by length, chunked or until close, bounded by `--max-message-size`), `Edgepush-Close`,
//!   and what the client gets ([`answer::Reply`]).
//! - [`queue`]: per connection one action in flight and at most [`queue::MAX_QUEUED`] waiting
//!   (then the connection is not read), per worker at most `--upstream-max-inflight` in
//!   flight, first come first served.
//! - [`pool`]: the worker's keep-alive connections to the backend as a state machine: which
//!   request is on which connection, what is left to write, its deadline, and whether a
//!   request may go on another connection (only if none of it was written).

#![forbid(unsafe_code)]

pub mod answer;
pub mod pool;
pub mod queue;
pub mod request;
pub mod target;

use std::net::SocketAddr;
use std::time::Duration;

pub use target::Target;

/// `--upstream-timeout`'s default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// `--upstream-max-inflight`'s default.
pub const DEFAULT_MAX_INFLIGHT: usize = 1024;

/// What the worker needs to know of `--upstream` and its companions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The URL, parsed.
    pub target: Target,
    /// Its address, resolved once at start.
    pub addr: SocketAddr,
    /// `--upstream-timeout`: from handing a request to a connection (connecting included) to
    /// its complete answer.
    pub timeout: Duration,
    /// `--upstream-max-inflight`: requests in flight per worker.
    pub max_inflight: usize,
    /// This node's name (`Edgepush-Node`).
    pub node: String,
}

impl UpstreamConfig {
    /// Parses `url` and resolves its host (the first address); `Err` says why in one line.
    pub fn new(url: &str, node: String) -> Result<UpstreamConfig, String> {
        let target = Target::parse(url)?;
        let addr = target.resolve()?;
        Ok(UpstreamConfig {
            target,
            addr,
            timeout: DEFAULT_TIMEOUT,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            node,
        })
    }
}

/// How one upstream request ended (the `outcome` label of
/// `edgepush_upstream_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// 200 with a body: one binary frame to the client.
    Ok,
    /// 200 without a body, or 204: nothing sent.
    NoContent,
    /// `Edgepush-Close`: the client was closed (after the body, if any).
    Closed,
    /// Any other status: 502.
    ErrorStatus,
    /// The connection could not be made: 502.
    Refused,
    /// The connection broke before the answer was complete: 502.
    Reset,
    /// The answer is not HTTP/1.1 as we read it (or a bad `Edgepush-Close`): 502.
    Malformed,
    /// The answer body is over `--max-message-size`: 502.
    TooLarge,
    /// No complete answer within `--upstream-timeout`: 504.
    Timeout,
}

impl Outcome {
    /// Every outcome, in the order of [`Outcome::index`].
    pub const ALL: [Outcome; 9] = [
        Outcome::Ok,
        Outcome::NoContent,
        Outcome::Closed,
        Outcome::ErrorStatus,
        Outcome::Refused,
        Outcome::Reset,
        Outcome::Malformed,
        Outcome::TooLarge,
        Outcome::Timeout,
    ];

    /// The position in [`Outcome::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NoContent => "no_content",
            Outcome::Closed => "closed",
            Outcome::ErrorStatus => "error_status",
            Outcome::Refused => "refused",
            Outcome::Reset => "reset",
            Outcome::Malformed => "malformed",
            Outcome::TooLarge => "too_large",
            Outcome::Timeout => "timeout",
        }
    }

    /// The error code the client gets (`None`: not an error).
    pub fn error_code(self) -> Option<u16> {
        match self {
            Outcome::Ok | Outcome::NoContent | Outcome::Closed => None,
            Outcome::Timeout => Some(504),
            _ => Some(502),
        }
    }

    /// The `reason` of the client's error.
    pub fn reason(self) -> &'static str {
        match self {
            Outcome::Ok | Outcome::NoContent | Outcome::Closed => "",
            Outcome::ErrorStatus => "the upstream answered with an error status",
            Outcome::Refused => "the upstream refused the connection",
            Outcome::Reset => "the upstream connection broke before the answer was complete",
            Outcome::Malformed => "the upstream's answer is malformed",
            Outcome::TooLarge => "the upstream's answer is larger than --max-message-size",
            Outcome::Timeout => "no answer from the upstream within --upstream-timeout",
        }
    }
}

/// The action code of a binary message: its first 4 bytes, big-endian; `None` if shorter.
pub fn action_code(message: &[u8]) -> Option<u32> {
    let code: [u8; 4] = message.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(code))
}

/// Appends the client's error `{"op":"error","code":CODE,"action":ACTION,"reason":"…"}`
/// (`action` left out when the message had no code).
pub fn write_action_error(out: &mut Vec<u8>, code: u16, action: Option<u32>, reason: &str) {
    out.extend_from_slice(br#"{"op":"error","code":"#);
    out.extend_from_slice(code.to_string().as_bytes());
    if let Some(action) = action {
        out.extend_from_slice(br#","action":"#);
        out.extend_from_slice(action.to_string().as_bytes());
    }
    out.extend_from_slice(br#","reason":"#);
    out.extend_from_slice(serde_json_str(reason).as_bytes());
    out.push(b'}');
}

/// `s` as a JSON string literal.
fn serde_json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_codes_and_errors() {
        assert_eq!(action_code(&[0, 0, 0, 110, 1]), Some(110));
        assert_eq!(action_code(&[0, 0, 1]), None);
        let mut out = Vec::new();
        write_action_error(&mut out, 502, Some(111), "a \"b\"");
        assert_eq!(
            out,
            br#"{"op":"error","code":502,"action":111,"reason":"a \"b\""}"#
        );
        out.clear();
        write_action_error(&mut out, 400, None, "short");
        assert_eq!(out, br#"{"op":"error","code":400,"reason":"short"}"#);
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
    }
}
