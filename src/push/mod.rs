//! The push layer: identity, channels, the client protocol and the push API. It never touches
//! a socket: the server's workers and the hub thread call it with bytes and get back what to
//! deliver to whom.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod client_protocol;
pub mod history;
pub mod hub;
pub mod json_depth;
pub mod names;
pub mod router;
pub mod subscribers;
pub mod users;
