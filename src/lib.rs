//! edgepush: a WebSocket push server written by hand on mio.
pub mod protocol;
pub mod push;
pub mod server;
pub mod config;
