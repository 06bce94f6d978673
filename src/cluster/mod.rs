//! Cluster mode (`--redis URL`): many nodes act as one through Redis 7, on the broker seam
//! under the hub (`crate::push::hub::broker`). Redis owns every stream's seq, epoch and
//! history; each node listens to the streams it has local subscribers for.
//!
//! The parts, one file each:
//! - [`ops`]: the vocabulary between the hub thread and the Redis threads ([`ops::Op`] in,
//!   [`ops::Reply`] out), and the names of streams ([`ops::StreamKey`]).
//! - [`keys`]: every Redis key and topic, under `--redis-prefix` and with the stream in a hash
//!   tag (`PREFIX:{c:news}:…`).
//! - [`link`]: the threads that talk to Redis with the `redis` crate's synchronous API — one
//!   for commands (pipelined in batches, the publish script), one for pub/sub, one for the
//!   control stream — handing replies to the hub thread through a channel and a mio `Waker`.
//!   No event loop and no hub turn ever waits on Redis.
//! - [`broker`]: the sans-IO [`broker::RedisBroker`] that keeps the ordering contract of
//!   `crate::push::hub::broker` on top of what the link reports (duplicates dropped, gaps
//!   filled from the stream, epochs that changed announced with `recovered:false`).

pub mod broker;
pub mod keys;
pub mod link;
pub mod ops;
