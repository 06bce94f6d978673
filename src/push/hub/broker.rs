//! The broker: the boundary under the hub that owns every stream's `seq`, epoch and history,
//! channels and `$user` streams alike. [`MemoryBroker`](super::MemoryBroker) is the store of
//! one node; a Redis-backed broker (cluster mode) will implement the same trait, so the hub
//! and its callers do not change.
//!
//! # Requests and events
//!
//! The hub asks ([`Broker::publish`], [`Broker::subscribe`], [`Broker::join_user`]) and the
//! broker answers later, with [`Event`]s the hub takes from [`Broker::poll_event`] after every
//! input, in the order they come, and turns into worker messages in that same order. The memory
//! broker answers before the request returns; a Redis broker answers when its script or read
//! completes, and wakes the hub thread (a channel and a mio `Waker`) so it polls again. A
//! broker may also report messages nobody here asked for (in cluster mode: other nodes'
//! publishes), as [`Event::Message`] without a request.
//!
//! Local interest (which workers listen to a channel, which connections a `$user` stream has
//! on this node) is part of the boundary and answered synchronously: it is this node's, in
//! both implementations, and it is what a Redis broker turns into its SUBSCRIBEs. Keeping it
//! in the same entry as the seq and the history keeps a stream at one table slot.
//!
//! # The ordering contract
//!
//! Every worker message goes through that worker's FIFO inbox, in the order the hub takes the
//! broker's events, and a worker adds a subscriber only when the subscribe's answer arrives. So
//! a subscriber sees each message exactly once, whatever publishes race its subscribe, when
//! the answer reaches the inbox after every message with a seq up to the top it reports and
//! before every later one: messages up to the top reach the worker before the connection is a
//! subscriber (the answer's replay carries the ones after its `since`), every later one finds
//! it subscribed. A broker must therefore guarantee, for every stream this node listens to:
//!
//! 1. **One sequence.** Messages of the stream are reported ([`Event::Message`]) in seq order,
//!    each seq once, without a gap, under one epoch. (Cluster mode: a duplicate from pub/sub is
//!    dropped; a gap is filled from the stream before anything later is reported.)
//! 2. **Answers sit at their top.** The seq in an [`Event::Subscribed`] is the seq of the last
//!    message of that stream reported before it (0 if none under its epoch); the next message
//!    of the stream reported after it is top + 1. Its replay is exactly the messages after the
//!    client's `since` up to that top. (Cluster mode: a stream read that returns a newer top
//!    first reports the messages in between, then the answer.)
//! 3. **Interest before the answer.** A subscribe records the worker's interest (see
//!    [`Broker::channel_workers`]) when it is asked, not when it is answered, and interest
//!    goes only through [`Broker::idle`], which a worker sends once it has neither
//!    subscribers nor a subscribe in flight for the channel. (For a `$user` stream the
//!    interest is membership: added by [`Broker::join_user`] when asked, removed by
//!    [`Broker::leave_user`].) So every message after the answer reaches the worker.
//! 4. **A new epoch is announced, never silent.** If the broker cannot keep rule 1 (history
//!    lost, a store that restarted or came back older), the stream continues under a new
//!    epoch, and the connections that listened are told with a `subscribed … recovered:false`
//!    before any message of the new epoch. (The memory broker never loses what it sequenced;
//!    it starts a new epoch only for a stream it forgot, which nobody listened to.)
//!
//! The hub adds its part: it polls events after every input, forwards them in order, and
//! sends a worker nothing about a stream except through these events.
//!
//! # Why a trait
//!
//! A trait, and the hub generic over it (`Hub<B = MemoryBroker>`), rather than an enum of the
//! implementations: the contract is written once, on the trait; the checks at the bottom of
//! this file go through the trait alone, so a Redis broker can run them unchanged; calls stay
//! static (nothing dispatched on the publish path); and the memory broker and its tests never
//! carry Redis types. When `--redis` arrives, the hub thread picks one at start (its loop
//! generic over `B`, or an enum of the two that implements this trait): the hub does not change.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::frame::{encode_shared, OpCode, SharedFrame};
use crate::push::client_protocol::write_message;
use crate::push::users::Member;

use super::messages::{AckId, Stream, UserId, WorkerId};

/// Names one incarnation of a stream: random per stream creation and per process. When a
/// stream is forgotten and comes back, its seq restarts under a new epoch, and a client asking
/// to recover from the old one is told `recovered: false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch(u64);

impl Epoch {
    /// The epoch with these bits (a broker makes them; they are opaque to everyone else).
    pub fn from_bits(bits: u64) -> Epoch {
        Epoch(bits)
    }
}

impl fmt::Display for Epoch {
    /// Eight base-36 characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut n = self.0;
        let mut digits = [0u8; 8];
        for d in &mut digits {
            *d = b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize];
            n /= 36;
        }
        f.write_str(std::str::from_utf8(&digits).unwrap_or("00000000"))
    }
}

/// Where a publish goes.
#[derive(Debug, Clone, Copy)]
pub enum PublishTo<'a> {
    /// A channel (created if new).
    Channel(&'a Arc<str>),
    /// A user's `$user` stream, by the user's name (kept only if the broker holds one).
    User(&'a str),
}

/// A node's `/api/nodes` entry as its store knows it (cluster mode: read from Redis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// The JSON object the node stored with its heartbeat (`name`, `connections`,
    /// `subscriptions`, `uptime_s`).
    pub info: String,
    /// Milliseconds since that heartbeat.
    pub age_ms: u64,
}

/// A presence question from another node (cluster mode): its id and the asking node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// The question's id.
    pub id: Arc<str>,
    /// The asking node's name.
    pub node: Arc<str>,
}

/// What a store took from an API request that is delivered separately (cluster mode: the
/// delivery comes back through pub/sub or the control stream, on every node alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A publish or send: its seq and epoch (the answer's body).
    Message {
        /// Its seq in the stream.
        seq: u64,
        /// The stream's epoch.
        epoch: Epoch,
    },
    /// A broadcast or a disconnect, appended to the control stream.
    Control,
}

/// What a broker reports, in the order of the ordering contract (see the module doc).
#[derive(Debug)]
pub enum Event {
    /// A message was sequenced: deliver it to the stream's local listeners.
    Message {
        /// Its stream.
        stream: Stream,
        /// Its seq in that stream.
        seq: u64,
        /// The stream's epoch.
        epoch: Epoch,
        /// The encoded `message`, shared by every delivery and by the history.
        frame: SharedFrame,
        /// The API request it answers (`None`: a client's publish, or another node's).
        request: Option<AckId>,
    },
    /// A publish to a `$user` stream the broker holds none for (the user was not connected
    /// within the TTL): nothing kept, nothing to deliver.
    NoStream {
        /// The API request it answers.
        request: Option<AckId>,
    },
    /// An API request is stored (answer it now); what it delivers is reported apart, as
    /// [`Event::Message`], [`Event::Broadcast`] or [`Event::Disconnect`] without a request.
    Stored {
        /// The API request it answers.
        request: AckId,
        /// What was stored.
        what: Stored,
    },
    /// An API request could not be confirmed (the store is unreachable or did not answer in
    /// time): answer 503. Whether it took effect is unknown; a retry with the same
    /// idempotency key settles it.
    Failed {
        /// The API request it answers.
        request: AckId,
    },
    /// A broadcast to deliver to every push connection here.
    Broadcast {
        /// The encoded `$broadcast` message.
        frame: SharedFrame,
        /// The API request it answers, when it is answered by the delivery itself (one node).
        request: Option<AckId>,
    },
    /// Close every local connection of the user named `user` with 4000.
    Disconnect {
        /// The user's name.
        user: Arc<str>,
        /// The API request it answers, when it is answered by the delivery itself (one node).
        request: Option<AckId>,
    },
    /// The live nodes, answering [`Broker::nodes`] (empty: none known besides this one).
    Nodes {
        /// The API request it answers.
        request: AckId,
        /// Every live node the store lists (this one included, in cluster mode).
        nodes: Vec<NodeEntry>,
    },
    /// Other nodes' users of a channel, answering [`Broker::presence`].
    PresenceFrom {
        /// The API request it answers.
        request: AckId,
        /// The users the other live nodes reported (none on one node).
        users: Vec<Arc<str>>,
        /// Some live node did not answer within the store's timeout: `users` lacks its users
        /// (the answer says `"partial":true`).
        partial: bool,
    },
    /// Another node asks for this node's users of `channel`: answer with
    /// [`Broker::presence_answer`].
    PresenceAsked {
        /// Who asked, to pass back.
        asked: Asked,
        /// The channel.
        channel: Arc<str>,
    },
    /// Rule 4: the stream continues under a new epoch from `seq` (history lost, a store that
    /// restarted or came back older): tell its local listeners with an unsolicited
    /// `subscribed … recovered:false`; its next message is `seq + 1`.
    Resync {
        /// The stream.
        stream: Stream,
        /// The stream's top under the new epoch.
        seq: u64,
        /// The new epoch.
        epoch: Epoch,
    },
    /// The answer to a subscribe or a join: `seq` is the stream's top, see the contract.
    Subscribed {
        /// The connection that asked.
        member: Member,
        /// The stream (for a join, this names the user's stream).
        stream: Stream,
        /// The stream's top when answered.
        seq: u64,
        /// The stream's epoch.
        epoch: Epoch,
        /// `None` if the client gave no `since`; else whether `replay` covers everything
        /// after it under the client's epoch.
        recovered: Option<bool>,
        /// The messages after `since` up to `seq`, oldest first (empty unless recovered).
        replay: Vec<SharedFrame>,
    },
}

/// The store under the hub: see the module doc for what it owns and the ordering contract
/// every implementation keeps.
///
/// Call order, per hub input: one request or interest call, then [`Broker::poll_event`] until
/// it returns `None`. [`Broker::tick`] whenever the hub's clock advances.
pub trait Broker {
    /// Sequences `data` (JSON text) as the next message of `to`; answered by
    /// [`Event::Message`] or [`Event::NoStream`] carrying `request` (one node), or by
    /// [`Event::Stored`] then an [`Event::Message`] without it (cluster mode), or
    /// [`Event::Failed`]. `idempotency_key` lets a store that outlives this process tell a
    /// retry from a new request (the hub itself remembers keys for this node).
    fn publish(
        &mut self,
        to: PublishTo<'_>,
        data: &str,
        idempotency_key: Option<&str>,
        request: Option<AckId>,
    );

    /// Sends `data` (JSON text) to every push connection: reported as [`Event::Broadcast`]
    /// (one node), or stored and answered with [`Event::Stored`] and delivered as
    /// [`Event::Broadcast`] when it comes back (cluster mode).
    fn broadcast(&mut self, data: &str, request: Option<AckId>);

    /// Closes every connection of the user named `user`: reported as [`Event::Disconnect`],
    /// like [`Broker::broadcast`].
    fn disconnect(&mut self, user: &str, request: Option<AckId>);

    /// Subscribes `member` to `stream` (for a channel: records the worker's interest at
    /// once), with recovery from `since` under `epoch` if given; answered by
    /// [`Event::Subscribed`]. A `$user` stream the broker no longer holds is not answered
    /// (only a member asks, and a stream with members is held).
    fn subscribe(
        &mut self,
        member: Member,
        stream: Stream,
        since: Option<u64>,
        epoch: Option<String>,
    );

    /// Makes `member` a connection of `user`'s stream (created if new), then as
    /// [`Broker::subscribe`] to it: the answer names the stream.
    fn join_user(&mut self, member: Member, user: &str, since: Option<u64>, epoch: Option<String>);

    /// The next answer or message, in contract order; `None` until the broker has more (a
    /// broker that answers later wakes the hub thread when it does).
    #[must_use]
    fn poll_event(&mut self) -> Option<Event>;

    /// `member` left `user`'s stream (a stream left by its last connection is kept for the
    /// TTL). Unknown members and streams are ignored.
    fn leave_user(&mut self, member: Member, user: UserId);

    /// `worker` has neither subscribers nor a subscribe in flight for `channel`.
    fn idle(&mut self, worker: WorkerId, channel: &str);

    /// The workers listening to `channel`, as a bitmask (bit `w`: worker `w`; workers from 64
    /// on are not represented).
    #[must_use]
    fn channel_workers(&self, channel: &str) -> u64;

    /// The stream held for the user named `name`, if any.
    #[must_use]
    fn find_user(&self, name: &str) -> Option<UserId>;

    /// `user`'s connections on this node, in no particular order (none for an unknown id).
    fn user_members(&self, user: UserId) -> impl Iterator<Item = Member> + '_;

    /// The name of `user`'s stream, if it is still held.
    #[must_use]
    fn user_name(&self, user: UserId) -> Option<&str>;

    /// Advances the broker's clock to `now` (never backwards): history and idle streams
    /// expire here.
    fn tick(&mut self, now: Instant);

    /// How long until [`Broker::tick`] has work, if ever.
    #[must_use]
    fn next_tick(&self) -> Option<Duration>;

    /// Channels and `$user` streams held, for `/api/stats`.
    #[must_use]
    fn stream_counts(&self) -> (usize, usize);

    /// Messages held for replay, and the bytes charged for them (see
    /// [`HistoryConfig`](super::HistoryConfig)).
    #[must_use]
    fn history_size(&self) -> (usize, usize);

    /// This node is alive, with `info` (a JSON object: `name`, `connections`,
    /// `subscriptions`, `uptime_s`); the hub calls it every [`HEARTBEAT`]. Cluster mode
    /// stores it for [`HEARTBEAT_TTL`]; one node has nobody to tell.
    fn heartbeat(&mut self, _info: &str) {}

    /// This node is leaving (a drain began): it stops announcing itself and its entry goes,
    /// so other nodes stop counting it at once. One node: nothing to do.
    fn depart(&mut self) {}

    /// Lists the live nodes: answered by [`Event::Nodes`] (one node: at once, with none).
    fn nodes(&mut self, request: AckId);

    /// Asks every other live node for its users of `channel`: answered by
    /// [`Event::PresenceFrom`] when all answered or the store's timeout passed (one node: at
    /// once, with none).
    fn presence(&mut self, channel: &Arc<str>, request: AckId);

    /// Answers another node's presence question with this node's `users`.
    fn presence_answer(&mut self, _asked: Asked, _users: Vec<String>) {}

    /// Can the store take requests now? Always, in process; in cluster mode, while Redis is
    /// reachable (else the node answers `/healthz` and new upgrades with 503).
    #[must_use]
    fn is_reachable(&self) -> bool {
        true
    }
}

/// How often a node announces itself (design.md: `/api/nodes`).
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// A node silent for this long is gone from `/api/nodes` and presence (three heartbeats).
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(6);

/// Encodes a stream message (`{"op":"message",…}` with `seq`, or without for a broadcast) as
/// one text frame, shared by every delivery of it and by the history. `scratch` is a buffer
/// to reuse.
pub fn encode_message(
    scratch: &mut Vec<u8>,
    channel: &str,
    seq: Option<u64>,
    data: &str,
) -> SharedFrame {
    scratch.clear();
    write_message(scratch, channel, seq, data);
    encode_shared(OpCode::Text, scratch)
}

/// The contract, checked against a broker through the trait alone: a Redis broker can run the
/// same checks.
#[cfg(test)]
mod tests {
    use super::super::{ConnId, HistoryConfig, MemoryBroker};
    use super::*;

    fn memory(history: HistoryConfig) -> MemoryBroker {
        MemoryBroker::new(history, Instant::now())
    }

    /// Connection `n` (slab key `n`, generation 0).
    fn c(n: u32) -> ConnId {
        ConnId::new(n, 0)
    }

    /// Worker `worker`'s connection `n`.
    fn member(worker: WorkerId, n: u32) -> Member {
        Member { worker, conn: c(n) }
    }

    fn news() -> Arc<str> {
        Arc::from("news")
    }

    /// Everything the broker has to report, in order.
    fn events(broker: &mut impl Broker) -> Vec<Event> {
        std::iter::from_fn(|| broker.poll_event()).collect()
    }

    /// (seq, epoch, recovered, replay's seqs) of the one answer reported.
    fn subscribed(broker: &mut impl Broker) -> (u64, Epoch, Option<bool>, Vec<u64>) {
        match &events(broker)[..] {
            [Event::Subscribed {
                seq,
                epoch,
                recovered,
                replay,
                ..
            }] => (
                *seq,
                *epoch,
                *recovered,
                replay.iter().map(seq_of).collect(),
            ),
            other => panic!("one subscribed expected: {other:?}"),
        }
    }

    fn seq_of(frame: &SharedFrame) -> u64 {
        let v: serde_json::Value = serde_json::from_slice(&frame[2..]).unwrap();
        v["seq"].as_u64().unwrap()
    }

    fn publish(broker: &mut impl Broker, n: usize) -> Vec<(u64, Epoch)> {
        for _ in 0..n {
            broker.publish(PublishTo::Channel(&news()), "0", None, None);
        }
        events(broker)
            .into_iter()
            .map(|e| match e {
                Event::Message {
                    seq, epoch, frame, ..
                } => {
                    assert_eq!(seq_of(&frame), seq, "the frame carries its seq");
                    (seq, epoch)
                }
                other => panic!("message expected: {other:?}"),
            })
            .collect()
    }

    fn check_seqs_count_from_one_under_one_epoch(broker: &mut impl Broker) {
        let sent = publish(broker, 4);
        assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert!(sent.iter().all(|s| s.1 == sent[0].1));
        broker.publish(PublishTo::Channel(&Arc::from("other")), "0", None, None);
        match &events(broker)[..] {
            [Event::Message { seq: 1, epoch, .. }] => assert_ne!(*epoch, sent[0].1),
            other => panic!("{other:?}"),
        }
    }

    fn check_an_answer_sits_at_its_top(broker: &mut impl Broker) {
        // Publishes and subscribes interleaved: each answer's top is the last seq reported
        // before it, and the next message after it is top + 1.
        let mut last = 0;
        for round in 0..5u32 {
            for _ in 0..round {
                broker.publish(PublishTo::Channel(&news()), "0", None, None);
            }
            broker.subscribe(member(0, round), Stream::Channel(news()), None, None);
            for event in events(broker) {
                match event {
                    Event::Message { seq, .. } => {
                        assert_eq!(seq, last + 1, "no gap, no duplicate");
                        last = seq;
                    }
                    Event::Subscribed { seq, .. } => assert_eq!(seq, last, "round {round}"),
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(last, 10);
        assert_eq!(broker.channel_workers("news"), 1);
    }

    fn check_recovery_rules(broker: &mut impl Broker) {
        broker.subscribe(member(0, 1), Stream::Channel(news()), None, None);
        let (top, epoch, recovered, _) = subscribed(broker);
        assert_eq!((top, recovered), (0, None));
        publish(broker, 5);
        let ask = |broker: &mut _, since, epoch: Option<String>| {
            Broker::subscribe(broker, member(1, 2), Stream::Channel(news()), since, epoch);
            subscribed(broker)
        };
        let e = Some(epoch.to_string());
        assert_eq!(
            ask(broker, Some(2), e.clone()),
            (5, epoch, Some(true), vec![3, 4, 5])
        );
        assert_eq!(ask(broker, Some(5), e.clone()).2, Some(true));
        assert_eq!(ask(broker, Some(0), e.clone()).3, [1, 2, 3, 4, 5]);
        // A since from the future, a wrong epoch, no epoch: not recovered, nothing replayed.
        assert_eq!(ask(broker, Some(6), e.clone()).2, Some(false));
        assert_eq!(ask(broker, Some(2), Some("other".into())).2, Some(false));
        assert_eq!(ask(broker, Some(2), None).3, Vec::<u64>::new());
        // No since: no recovery asked, none answered.
        assert_eq!(ask(broker, None, e).2, None);
    }

    fn check_user_streams(broker: &mut impl Broker) {
        broker.publish(PublishTo::User("ann"), "0", None, Some(1));
        assert!(matches!(
            events(broker)[..],
            [Event::NoStream { request: Some(1) }]
        ));
        broker.join_user(member(0, 1), "ann", None, None);
        let (id, epoch) = match &events(broker)[..] {
            [Event::Subscribed {
                stream: Stream::User(id),
                seq: 0,
                epoch,
                recovered: None,
                ..
            }] => (*id, *epoch),
            other => panic!("{other:?}"),
        };
        assert_eq!(broker.find_user("ann"), Some(id));
        assert_eq!(broker.user_name(id), Some("ann"));
        broker.publish(PublishTo::User("ann"), "0", None, Some(2));
        broker.publish(PublishTo::User("ann"), "0", None, Some(3));
        let seqs: Vec<_> = events(broker)
            .into_iter()
            .map(|e| match e {
                Event::Message {
                    stream: Stream::User(s),
                    seq,
                    epoch: e,
                    ..
                } if s == id && e == epoch => seq,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, [1, 2]);
        // A second connection recovers from its join.
        broker.join_user(member(1, 9), "ann", Some(1), Some(epoch.to_string()));
        assert_eq!(subscribed(broker), (2, epoch, Some(true), vec![2]));
        let mut members: Vec<_> = broker
            .user_members(id)
            .map(|m| (m.worker, m.conn))
            .collect();
        members.sort_unstable();
        assert_eq!(members, [(0, c(1)), (1, c(9))]);
        broker.leave_user(member(1, 9), id);
        assert_eq!(broker.user_members(id).count(), 1);
    }

    fn check_a_forgotten_channel_comes_back_under_a_new_epoch(broker: &mut impl Broker) {
        broker.subscribe(member(2, 1), Stream::Channel(news()), None, None);
        let (_, first, _, _) = subscribed(broker);
        broker.idle(2, "news");
        assert_eq!(broker.channel_workers("news"), 0);
        assert_eq!(broker.stream_counts(), (0, 0), "no listeners, no history");
        broker.subscribe(
            member(2, 1),
            Stream::Channel(news()),
            Some(0),
            Some(first.to_string()),
        );
        let (top, second, recovered, _) = subscribed(broker);
        assert_eq!((top, recovered), (0, Some(false)));
        assert_ne!(second, first);
    }

    #[test]
    fn memory_broker_keeps_the_contract() {
        let off = HistoryConfig {
            size: 0,
            ..HistoryConfig::default()
        };
        check_seqs_count_from_one_under_one_epoch(&mut memory(HistoryConfig::default()));
        check_an_answer_sits_at_its_top(&mut memory(HistoryConfig::default()));
        check_recovery_rules(&mut memory(HistoryConfig::default()));
        check_user_streams(&mut memory(HistoryConfig::default()));
        check_a_forgotten_channel_comes_back_under_a_new_epoch(&mut memory(off));
    }

    #[test]
    fn a_gap_longer_than_the_history_is_not_recovered() {
        let mut broker = memory(HistoryConfig {
            size: 3,
            ..HistoryConfig::default()
        });
        let epoch = publish(&mut broker, 10)[0].1.to_string();
        broker.subscribe(
            member(0, 1),
            Stream::Channel(news()),
            Some(6),
            Some(epoch.clone()),
        );
        assert_eq!(subscribed(&mut broker).2, Some(false), "7 is gone");
        broker.subscribe(member(0, 1), Stream::Channel(news()), Some(7), Some(epoch));
        assert_eq!(subscribed(&mut broker).3, [8, 9, 10]);
    }

    #[test]
    fn epochs_print_as_eight_base36_characters() {
        assert_eq!(Epoch::from_bits(0).to_string(), "00000000");
        assert_eq!(Epoch::from_bits(35).to_string(), "z0000000");
        assert_eq!(Epoch::from_bits(36).to_string(), "01000000");
        let any = Epoch::from_bits(u64::MAX).to_string();
        assert_eq!(any.len(), 8);
        assert!(any
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
    }
}
