//! edgepush: a WebSocket push server written by hand on mio.
pub mod config;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod push;
pub mod server;
