//! What the hub thread asks of Redis ([`Op`], [`PubSubOp`]) and what comes back ([`Reply`]).
//! Plain data: the broker (hub thread) makes ops and takes replies; the link threads
//! (`super::link`) run them. Every op that expects an answer carries an [`OpId`] and gets
//! exactly one reply with it (a result, or [`Reply::Failed`]).
//!
//! Seqs, epochs and entries follow design.md ("Cluster mode"): a stream's messages are
//! numbered 1, 2, … under one epoch; an epoch is a random `u64` below `36^8` (so it prints as
//! the eight base-36 characters clients see) made by the node that creates the stream.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Identifies an op, to match its reply. Unique per link for the life of the process.
pub type OpId = u64;

/// Epochs are below this, so that their eight base-36 characters name them uniquely.
pub const EPOCH_LIMIT: u64 = 36u64.pow(8);

/// An epoch as Redis gives it back (a decimal string): `None` unless it is one the scripts
/// make, below [`EPOCH_LIMIT`] (the broker keeps epochs in 42 bits).
pub fn parse_epoch(text: &str) -> Option<u64> {
    text.parse().ok().filter(|&epoch| epoch < EPOCH_LIMIT)
}

/// A stream's name in Redis without the prefix: `c:` + channel name for a channel, `u:` +
/// user name for a `$user` stream. It is what goes inside the hash tag of every key of the
/// stream and names its pub/sub topic (see [`super::keys`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey(Arc<str>);

/// Which kind of stream a [`StreamKey`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// A channel (`c:`).
    Channel,
    /// A user's `$user` stream (`u:`).
    User,
}

impl StreamKey {
    /// The stream of channel `name`.
    #[must_use]
    pub fn channel(name: &str) -> StreamKey {
        StreamKey(Arc::from(format!("c:{name}")))
    }

    /// The `$user` stream of the user named `name`.
    #[must_use]
    pub fn user(name: &str) -> StreamKey {
        StreamKey(Arc::from(format!("u:{name}")))
    }

    /// Parses `c:NAME` or `u:NAME` (what a topic carries back); `None` for anything else or
    /// an empty name.
    #[must_use]
    pub fn parse(s: &str) -> Option<StreamKey> {
        let ok = (s.starts_with("c:") || s.starts_with("u:")) && s.len() > 2;
        ok.then(|| StreamKey(Arc::from(s)))
    }

    /// `c:news`, `u:603577`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Channel or user stream.
    #[must_use]
    pub fn kind(&self) -> StreamKind {
        if self.0.starts_with("u:") {
            StreamKind::User
        } else {
            StreamKind::Channel
        }
    }

    /// The channel or user name, without the `c:`/`u:`.
    #[must_use]
    pub fn name(&self) -> &str {
        self.0.get(2..).unwrap_or("")
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `--redis`, `--redis-prefix`, `--node-name`, `--redis-timeout`, `--redis-durable`, and the
/// history flags the publish script applies (design.md: every node runs with the same values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://[user:pass@]host:port[/db]`.
    pub url: String,
    /// Every key and topic starts with this and a colon.
    pub prefix: String,
    /// This node's name in `/api/nodes`, presence and logs.
    pub node: String,
    /// A Redis call not answered by then fails (the API answers 503).
    pub timeout: Duration,
    /// Redis keeps what it acknowledged across restarts: epochs survive a restart (its run id
    /// changing does not start new ones).
    pub durable: bool,
}

/// A broadcast or a disconnect, carried to every node by the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlEntry {
    /// `POST /api/broadcast`: `data` (JSON text) to every push connection.
    Broadcast {
        /// The message's `data`, as JSON text.
        data: Arc<str>,
    },
    /// `POST /api/disconnect`: close every connection of `user` with 4000.
    Disconnect {
        /// The user's name.
        user: Arc<str>,
    },
    /// `GET /api/presence` on node `node`: every other node answers with its users of
    /// `channel` ([`Op::Tell`] to `node`'s inbox, carrying `id`).
    PresenceAsk {
        /// The question's id (unique per asking node).
        id: Arc<str>,
        /// The channel asked about.
        channel: Arc<str>,
        /// The asking node's name.
        node: Arc<str>,
    },
}

/// Hub thread → command thread. Every op with an `id` is answered exactly once.
#[derive(Debug, Clone)]
pub enum Op {
    /// The publish script, atomically: if `idempotency_key` was seen for this stream within
    /// 5 minutes, answer what it answered then; else take the stream's epoch (made from
    /// `epoch_candidate` if the stream has none, or if Redis restarted since the epoch was
    /// made and the cluster is not `durable`), `seq` = top + 1, append `data` to the stream
    /// with id `seq-0` (trimmed to `history_size` entries, the stream's keys expiring after
    /// `ttl`), PUBLISH it on the stream's topic, remember the answer under the key.
    /// Answered by [`Reply::Published`], or [`Reply::NoStream`] when `existing_only` is set
    /// and the stream has no epoch (a `$user` stream of a user not connected within the TTL).
    Publish {
        /// Matches the reply.
        id: OpId,
        /// Where.
        stream: StreamKey,
        /// The message's `data`, as JSON text.
        data: Arc<str>,
        /// The API's `idempotency_key`, if any (at most 64 bytes).
        idempotency_key: Option<Box<str>>,
        /// The epoch to use if the stream needs a new one (below [`EPOCH_LIMIT`]).
        epoch_candidate: u64,
        /// Only publish to a stream that exists (`/api/send`).
        existing_only: bool,
        /// Entries kept in the stream (0: none kept).
        history_size: usize,
        /// How long the stream's keys live after the last publish or touch.
        ttl: Duration,
    },
    /// Reads a stream, atomically: its epoch (made from `epoch_candidate`, top 0, if it has
    /// none or needs a new one, as in [`Op::Publish`]), its top, and its entries with seq
    /// above `after` up to the top (none if `after` is `None`). Refreshes the TTL of the
    /// stream's keys to `ttl`. Answered by [`Reply::Read`].
    Read {
        /// Matches the reply.
        id: OpId,
        /// Which stream.
        stream: StreamKey,
        /// Return the entries after this seq (`None`: none, just epoch and top).
        after: Option<u64>,
        /// The epoch to use if the stream needs a new one.
        epoch_candidate: u64,
        /// The TTL to refresh the stream's keys to.
        ttl: Duration,
    },
    /// Starts a new epoch for `stream` if its epoch is still `old` (a node saw its top go
    /// below what it delivered): epoch := `epoch_candidate`, the top stays, the stored entries
    /// are dropped. Answered by [`Reply::Read`] with no entries (the epoch now in force).
    Renew {
        /// Matches the reply.
        id: OpId,
        /// Which stream.
        stream: StreamKey,
        /// The epoch the node saw go wrong.
        old: u64,
        /// The new epoch.
        epoch_candidate: u64,
        /// The TTL to refresh the stream's keys to.
        ttl: Duration,
    },
    /// Appends to the control stream (trimmed to about 10,000 entries); every node's control
    /// reader delivers it, this node's included. Answered by [`Reply::Appended`].
    Control {
        /// Matches the reply.
        id: OpId,
        /// What to carry.
        entry: ControlEntry,
    },
    /// Refreshes the TTL of these streams' keys (streams this node listens to, so their
    /// epochs outlive quiet periods). No reply.
    Touch {
        /// Which streams.
        streams: Vec<StreamKey>,
        /// The TTL to set.
        ttl: Duration,
    },
    /// This node is alive: stores `info` (a JSON object) as this node's entry, expiring after
    /// `ttl`, and lists the node. No reply.
    Heartbeat {
        /// This node's `/api/nodes` entry (without `heartbeat_age_ms` and `redis`).
        info: String,
        /// How long the entry lives without another heartbeat.
        ttl: Duration,
    },
    /// This node is leaving (a drain began): its entry goes at once, so `/api/nodes` and
    /// presence stop counting it. No reply.
    Depart,
    /// Reads every live node's entry. Answered by [`Reply::Nodes`].
    Nodes {
        /// Matches the reply.
        id: OpId,
    },
    /// PUBLISHes `payload` on node `node`'s inbox topic (it arrives there as
    /// [`Reply::Inbox`]). No reply.
    Tell {
        /// The addressee's node name.
        node: Arc<str>,
        /// What to say (a JSON object).
        payload: String,
    },
}

impl Op {
    /// The id its reply will carry, if it has one.
    #[must_use]
    pub fn id(&self) -> Option<OpId> {
        match self {
            Op::Publish { id, .. }
            | Op::Read { id, .. }
            | Op::Renew { id, .. }
            | Op::Control { id, .. }
            | Op::Nodes { id } => Some(*id),
            Op::Touch { .. } | Op::Heartbeat { .. } | Op::Tell { .. } | Op::Depart => None,
        }
    }
}

/// Hub thread → pub/sub thread: which stream topics this node listens to. The pub/sub thread
/// keeps no set: a new connection listens to nothing, so after [`Reply::Link`] `up` the
/// broker subscribes every topic again (ops sent while the link is down are dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PubSubOp {
    /// SUBSCRIBE to these streams' topics; confirmed by [`Reply::Listening`].
    Subscribe(Vec<StreamKey>),
    /// UNSUBSCRIBE from them (no reply).
    Unsubscribe(Vec<StreamKey>),
}

/// One of the three links to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkKind {
    /// The command connection (scripts, reads, heartbeats).
    Commands,
    /// The pub/sub connection.
    PubSub,
    /// The control stream reader.
    Control,
}

pub use crate::push::hub::broker::NodeEntry;

/// Redis threads → hub thread, through a channel; the hub's `Waker` is woken after each batch.
#[derive(Debug, Clone)]
pub enum Reply {
    /// [`Op::Publish`] stored the message (or had stored it under the same idempotency key).
    Published {
        /// The op.
        id: OpId,
        /// Its seq.
        seq: u64,
        /// The stream's epoch.
        epoch: u64,
    },
    /// [`Op::Publish`] with `existing_only` found no stream: nothing stored.
    NoStream {
        /// The op.
        id: OpId,
    },
    /// [`Op::Read`] or [`Op::Renew`]: the stream's epoch and top, and its stored entries
    /// with seq above the op's `after` up to `top`, oldest first. The read covers everything
    /// after `after` iff `after >= top` or the first entry's seq is `after + 1`.
    Read {
        /// The op.
        id: OpId,
        /// The stream's epoch.
        epoch: u64,
        /// The seq of the stream's last message (0: none under this epoch).
        top: u64,
        /// `(seq, data)` of the entries, ascending.
        entries: Vec<(u64, Arc<str>)>,
    },
    /// [`Op::Control`] appended its entry.
    Appended {
        /// The op.
        id: OpId,
    },
    /// [`Op::Nodes`]: every live node.
    Nodes {
        /// The op.
        id: OpId,
        /// The live nodes' entries.
        nodes: Vec<NodeEntry>,
    },
    /// The op with this id failed or timed out: its effect is unknown (the script ran all of
    /// its step or none; a retry with the same idempotency key settles which).
    Failed {
        /// The op.
        id: OpId,
        /// Why, for the log.
        reason: String,
    },
    /// A message published on a topic this node listens to (any node's, this one's too).
    Message {
        /// Its stream.
        stream: StreamKey,
        /// Its seq.
        seq: u64,
        /// Its stream's epoch.
        epoch: u64,
        /// Its `data`, as JSON text.
        data: Arc<str>,
    },
    /// These topics are subscribed: every message published on them from now on will be
    /// reported (one reply may confirm several [`PubSubOp::Subscribe`]s queued together).
    Listening(Vec<StreamKey>),
    /// A control-stream entry (every node reads each entry once, from its own position).
    Control(ControlEntry),
    /// A message on this node's inbox topic (an [`Op::Tell`] of another node).
    Inbox(String),
    /// The command link (re)connected to a Redis whose `run_id` (`INFO server`) is this, sent
    /// just before [`Reply::Link`] `up`: a new one means Redis restarted, possibly from an
    /// older copy of its data, so what it holds is checked strictly.
    Connected {
        /// Redis's `run_id`.
        run_id: String,
    },
    /// A link went down (every op in flight on it gets [`Reply::Failed`]; on the pub/sub link,
    /// messages may have been missed and no topic is subscribed any more) or came back up (on
    /// the pub/sub link: with no topic subscribed but this node's own; the broker subscribes
    /// its topics again).
    Link {
        /// Which link.
        link: LinkKind,
        /// Up or down.
        up: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_name_their_kind() {
        let c = StreamKey::channel("news");
        assert_eq!(
            (c.as_str(), c.kind(), c.name()),
            ("c:news", StreamKind::Channel, "news")
        );
        let u = StreamKey::user("603577");
        assert_eq!(
            (u.as_str(), u.kind(), u.name()),
            ("u:603577", StreamKind::User, "603577")
        );
        assert_eq!(StreamKey::parse("c:news"), Some(c));
        assert_eq!(StreamKey::parse("x:news"), None);
        assert_eq!(StreamKey::parse("c:"), None);
    }
}
