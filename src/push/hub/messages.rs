//! The messages between the hub thread and the workers, the push-API commands and answers, and
//! the ids they carry. Plain data: the hub (`super`) produces and consumes them, the server
//! ships them through the workers' FIFO inboxes and the hub's channel.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::frame::SharedFrame;

pub use crate::push::users::UserId;

/// Which worker (event-loop thread).
pub type WorkerId = usize;
/// A push connection, as its worker names it: the worker's slab key in the low 32 bits and
/// that slot's generation in the high 32. The generation makes an id held by the hub or a
/// router table unable to reach a later connection that reused the slot. Opaque to the hub
/// (it only stores and returns it); the worker converts its connection handle to and from
/// this in one place (`server::worker::push`). Not a mio token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// The id of the connection in slab slot `key` at `generation`.
    #[must_use]
    pub const fn new(key: u32, generation: u32) -> ConnId {
        ConnId((key as u64) | ((generation as u64) << 32))
    }

    /// The slab key (low 32 bits).
    #[must_use]
    pub const fn key(self) -> u32 {
        self.0 as u32
    }

    /// The slot's generation (high 32 bits).
    #[must_use]
    pub const fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// `key:generation`, e.g. `7:0`.
impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key(), self.generation())
    }
}

/// An API request waiting for workers' acknowledgements (or for its broker's answer).
pub type AckId = u64;
/// A push-API connection on the hub thread (opaque to the hub).
pub type RequestId = u64;

/// The channel name broadcasts carry (not a stream: no seq, no history).
pub const BROADCAST_CHANNEL: &str = "$broadcast";

/// A stream a connection can be subscribed to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stream {
    /// A named channel (`news`, `chat:1`), shared by whoever subscribes.
    Channel(Arc<str>),
    /// A user's own `$user` stream, once the hub has named it (see [`ToHub::JoinUser`]).
    User(UserId),
}

/// Who a delivery is for, on a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The worker's subscribers of a channel.
    Channel(Arc<str>),
    /// Connections of one user on this worker (the hub knows which): one of them.
    Conn(ConnId),
    /// Connections of one user on this worker: several.
    Conns(Vec<ConnId>),
    /// Every push-endpoint connection.
    Everyone,
}

/// Hub → worker, through the worker's FIFO inbox.
#[derive(Debug, Clone)]
pub enum ToWorker {
    /// Queue `frame` for the target's local connections; acknowledge with the count if `ack`
    /// is set (only a `?wait=delivered` request waits for it; nothing is sent back otherwise). (No seq is needed: FIFO order already puts it after every subscribe answer
    /// whose top is below it.)
    Deliver {
        /// Whose connections.
        target: Target,
        /// The encoded message, shared by every delivery of it.
        frame: SharedFrame,
        /// When the hub took the message (for the publish-latency histogram).
        at: Instant,
        /// The API request to acknowledge with the count of connections that took it.
        ack: Option<AckId>,
    },
    /// The answer to a subscribe: send `frame` (the `subscribed` message) and `replay`, and
    /// from now on deliver the stream's messages with `seq` above `seq`.
    Subscribed {
        /// The connection that asked.
        conn: ConnId,
        /// What it is now subscribed to.
        stream: Stream,
        /// The stream's top when answered: every message up to it came before this answer.
        seq: u64,
        /// The `subscribed` message, encoded.
        frame: SharedFrame,
        /// The messages after the client's `since`, oldest first (empty unless recovered).
        replay: Vec<SharedFrame>,
    },
    /// Close these connections (one user's) with 4000; acknowledge with the count if `ack`
    /// is set (only a `?wait=delivered` request waits for it).
    Disconnect {
        /// The user's connections on this worker.
        conns: Vec<ConnId>,
        /// The API request to acknowledge.
        ack: Option<AckId>,
    },
    /// The name of a connection's user (asked with [`ToHub::UserName`], for the upstream's
    /// `Edgepush-User`): `None` if the hub no longer holds the stream.
    UserName {
        /// The connection that asked.
        conn: ConnId,
        /// The user's name.
        name: Option<Arc<str>>,
    },
    /// Which users are subscribed to `channel` here?
    Presence {
        /// The API request to answer with [`ToHub::PresenceReply`].
        ack: AckId,
        /// The channel asked about.
        channel: Arc<str>,
    },
    /// The server is going away: send Close 1001 to every connection, spread over `spread`,
    /// wait at most `timeout` more for their close handshakes, then stop.
    Drain {
        /// How long to spread the Close frames over.
        spread: Duration,
        /// How long to wait for close handshakes after the last Close.
        timeout: Duration,
    },
}

impl ToWorker {
    /// Bytes this message pins in an inbox (for the inbox bound).
    pub fn weight(&self) -> usize {
        64 + match self {
            ToWorker::Deliver { frame, .. } => frame.len(),
            ToWorker::Subscribed { frame, replay, .. } => {
                frame.len() + replay.iter().map(|f| f.len()).sum::<usize>()
            }
            ToWorker::UserName { name, .. } => name.as_ref().map_or(0, |n| n.len()),
            ToWorker::Disconnect { .. } | ToWorker::Presence { .. } | ToWorker::Drain { .. } => 0,
        }
    }
}

/// Worker → hub.
#[derive(Debug, Clone)]
pub enum ToHub {
    /// A push connection of `user` arrived: make it a member of the user's stream (created if
    /// new) and answer with `Subscribed` for `Stream::User`, which names the stream. Also a
    /// `$user` recovery request sent before that answer came.
    JoinUser {
        /// The worker holding the connection.
        worker: WorkerId,
        /// The connection.
        conn: ConnId,
        /// The user's name (the token's `sub`).
        user: Arc<str>,
        /// The last `$user` seq the client saw, if it is recovering.
        since: Option<u64>,
        /// The epoch that `since` belongs to.
        epoch: Option<String>,
    },
    /// The connection is gone from the user's stream.
    LeaveUser {
        /// The worker that held the connection.
        worker: WorkerId,
        /// The connection.
        conn: ConnId,
        /// The user's stream, as the hub named it.
        user: UserId,
    },
    /// Subscribe to a channel, or ask a `$user` stream the connection is in for recovery.
    Subscribe {
        /// The worker holding the connection.
        worker: WorkerId,
        /// The connection.
        conn: ConnId,
        /// What to subscribe to.
        stream: Stream,
        /// The last seq the client saw, if it is recovering.
        since: Option<u64>,
        /// The epoch that `since` belongs to.
        epoch: Option<String>,
    },
    /// A client's publish (already authorised and rate-limited by the worker).
    Publish {
        /// The channel.
        channel: Arc<str>,
        /// The message's `data`, as JSON text.
        data: String,
    },
    /// The worker has no subscribers (and no subscribe in flight) left for `channel`.
    Idle {
        /// The worker.
        worker: WorkerId,
        /// The channel it no longer listens to.
        channel: Arc<str>,
    },
    /// A worker's count for an API request: deliveries, or connections closed.
    Ack {
        /// The API request.
        ack: AckId,
        /// Connections that took the frame, or were closed.
        count: u64,
    },
    /// The name of `user` for connection `conn` of `worker` (answered by
    /// [`ToWorker::UserName`]): its first upstream action needs it, and workers keep no name
    /// for idle connections.
    UserName {
        /// The worker holding the connection.
        worker: WorkerId,
        /// The connection.
        conn: ConnId,
        /// Its user stream.
        user: UserId,
    },
    /// A worker's answer to [`ToWorker::Presence`].
    PresenceReply {
        /// The API request.
        ack: AckId,
        /// The users subscribed to the channel on that worker.
        users: Vec<UserId>,
    },
    /// Begin a graceful drain (a signal arrived, or `Server::drain` was called). Handled by
    /// the hub thread itself, not by [`Hub`](super::Hub).
    Drain,
}

/// A push-API request, validated (see `crate::push::api`).
#[derive(Debug, Clone)]
pub enum Command {
    /// `POST /api/publish`: a channel message.
    Publish {
        /// The channel.
        channel: Arc<str>,
        /// The message's `data`, as JSON text.
        data: String,
    },
    /// `POST /api/send`: a message for every connection of one user.
    Send {
        /// The user's name.
        user: Arc<str>,
        /// The message's `data`, as JSON text.
        data: String,
    },
    /// `POST /api/broadcast`: a message for every push-endpoint connection.
    Broadcast {
        /// The message's `data`, as JSON text.
        data: String,
    },
    /// `POST /api/disconnect`: close every connection of one user with 4000.
    Disconnect {
        /// The user's name.
        user: Arc<str>,
    },
    /// `GET /api/nodes`: every live node.
    Nodes,
    /// `GET /api/presence`: the distinct users subscribed to a channel.
    Presence {
        /// The channel.
        channel: Arc<str>,
    },
}

/// When a push-API request is answered (design.md, Push API, "When the answer comes").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Wait {
    /// As soon as the message is sequenced: the hub gave it its `seq` and queued it to the
    /// workers. The answer's latency does not grow with the audience, and no worker sends an
    /// acknowledgement back.
    #[default]
    Sequenced,
    /// `?wait=delivered`: after every worker involved acknowledged; the answer adds
    /// `"delivered":N` (publish, send, broadcast) or `"closed":N` (disconnect).
    Delivered,
}

/// A push-API request for the hub: the command, when to answer it, and the client's
/// idempotency key if it gave one.
#[derive(Debug, Clone)]
pub struct Request {
    /// What to do.
    pub command: Command,
    /// When to answer (`GET /api/presence` always waits for its workers).
    pub wait: Wait,
    /// `idempotency_key` (at most [`MAX_IDEMPOTENCY_KEY`] bytes, checked by the API layer):
    /// a retry of the same route with the same key within [`IDEMPOTENCY_TTL`] gets the first
    /// answer again and is not executed twice. Ignored for `GET /api/presence`.
    pub idempotency_key: Option<Box<str>>,
}

impl From<Command> for Request {
    /// Answered once sequenced, without an idempotency key.
    fn from(command: Command) -> Request {
        Request {
            command,
            wait: Wait::Sequenced,
            idempotency_key: None,
        }
    }
}

/// The longest `idempotency_key`, in bytes (UTF-8): longer is refused with 400.
pub const MAX_IDEMPOTENCY_KEY: usize = 64;

/// How long an idempotency key and its answer are remembered after the answer.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(300);

/// An answer for an API connection: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The request it answers.
    pub conn: RequestId,
    /// The HTTP status code.
    pub status: u16,
    /// The JSON body.
    pub body: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_id_packs_key_and_generation() {
        let id = ConnId::new(12345, 0xdead_beef);
        assert_eq!((id.key(), id.generation()), (12345, 0xdead_beef));
        assert_eq!(id.0, 0xdead_beef_0000_3039);
        assert_eq!(id.to_string(), "12345:3735928559");
        assert_ne!(
            ConnId::new(1, 1),
            ConnId::new(1, 2),
            "a reused slot is another id"
        );
    }
}
