//! edgepush: a WebSocket push server written by hand on mio.

// `unsafe` lives in one module, `server::sys` (getrlimit/setrlimit, malloc_trim), with its SAFETY notes.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cluster;
pub mod config;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod push;
pub mod server;
pub mod session;
pub mod tick;
pub mod tls;
pub mod upstream;
