//! The event loop side: sockets, buffers, timers.
pub mod timer_wheel;
