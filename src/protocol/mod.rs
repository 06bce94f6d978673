//! The WebSocket protocol, sans IO: bytes in, events and bytes out; no sockets, no clocks.
//!
//! One file per idea:
//! - [`handshake`]: the HTTP/1.1 Upgrade request (§4.2; the HTTP itself is [`crate::http`]'s)
//!   → a [`handshake::Request`] to route, the 101 response, or the HTTP error owed.
//! - [`frame`]: frame headers (§5.2) and frame writers; [`mask`]: §5.3 masking.
//! - [`message`]: the per-connection [`message::Decoder`]: frames → messages, pings, pongs,
//!   closes, with fragments reassembled (§5.4) and UTF-8 checked as it arrives ([`utf8`], §8.1).
//! - [`close`]: close codes and payloads (§5.5.1, §7.4); the closing handshake's states are
//!   the session's ([`crate::session`]).
//! - [`error`]: [`ProtocolError`], one variant per rule, each with its close code.
//!
//! A driver calls them in this order:
//! 1. Read bytes; [`handshake::parse_request`] until it returns a request (or an error to
//!    answer and close). Route on the path; write [`handshake::write_accept_response`].
//! 2. Bytes after the head belong to the WebSocket: feed them, and every later read, to
//!    [`message::Decoder::decode`] in a loop (see its module docs). For `Ping` queue a Pong with
//!    the same payload; for `Close` echo its code (§5.5.1) unless ours went first; on an error
//!    send Close with [`ProtocolError::close_code`] and close. ([`crate::session::Session`] is
//!    that driver.)
//! 3. Write data with [`frame::write_frame`] or, for fan-out, [`frame::encode_shared`] once.

#![forbid(unsafe_code)]

pub mod close;
pub mod deflate;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod utf8;

pub use error::ProtocolError;
