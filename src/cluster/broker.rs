//! The Redis broker: the [`Broker`] of cluster mode, sans IO. It sends [`Op`]s to the Redis
//! threads through a [`RedisLink`] and turns their [`Reply`]s into the broker's events, keeping
//! the ordering contract of `crate::push::hub::broker` on top of what pub/sub gives (which is
//! at most once, in order per topic, and says nothing across a reconnect):
//!
//! - **One sequence.** Per stream it remembers `live` = (epoch, last seq reported). Messages
//!   are delivered from pub/sub only, which Redis keeps in seq order per topic (the script
//!   publishes as it sequences): a publish's own answer only answers the API, since it can run
//!   far ahead of other nodes' messages still on their way. A message at or below `last` is a
//!   duplicate (a catch-up that overlapped) and is dropped; one beyond `last + 1` means pub/sub
//!   lost some: it waits in `ahead` while a catch-up read fetches the gap from the stream; a
//!   gap the stream no longer holds, or another epoch, becomes [`Event::Resync`] (an
//!   unsolicited `subscribed … recovered:false`). After the pub/sub link drops, every stream
//!   catches up the same way: once it is back, the broker subscribes every topic again (the
//!   pub/sub thread keeps no set of its own) and each stream catches up when its topic is
//!   confirmed.
//! - **Answers sit at their top.** A subscribe is answered after a read of the stream (epoch,
//!   top, entries after the client's `since`) only once the topic is subscribed, so nothing
//!   published after the read can be missed. A read whose top is above `last` first reports
//!   the messages in between when it holds them all (else pub/sub, which lost nothing, is just
//!   behind, and they come that way); one whose top is below `last` (pub/sub outran the read)
//!   takes the rest from the frames reported while it was in flight (`recording`). Either way
//!   the answer's top is `last`, and its replay runs from `since + 1` to it.
//! - **Interest before the answer.** A worker's interest is recorded when it asks; the topic
//!   is unsubscribed only when no worker listens and no subscribe waits.
//! - **A new epoch is announced.** A read that finds another epoch, or a top below what was
//!   reported under the same epoch (a Redis that came back older), resyncs: in the second
//!   case after renewing the epoch in Redis ([`Op::Renew`]), so no node reuses those seqs.
//!
//! Every op has a deadline (`--redis-timeout`): one not answered by then fails (the API answers
//! 503) and its late reply is ignored. Subscribes and joins are never failed: they wait, and
//! are answered once Redis is reachable again (new ones are refused by the workers while the
//! link is down).

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::protocol::frame::SharedFrame;
use crate::push::hub::{
    encode_message, AckId, Asked, Broker, Epoch, Event, HistoryConfig, PublishTo, Stored, Stream,
    UserId, WorkerId, HEARTBEAT, HEARTBEAT_TTL,
};
use crate::push::names::USER_CHANNEL;
use crate::push::users::{Member, Users};

use super::ops::{
    ControlEntry, LinkKind, Op, OpId, PubSubOp, Reply, StreamKey, StreamKind, EPOCH_LIMIT,
};

/// The broker's way to the Redis threads (`super::link::Link` in the server; a fake in tests).
pub trait RedisLink {
    /// Queues an op for the command thread.
    fn send(&mut self, op: Op);
    /// Queues a subscription change for the pub/sub thread.
    fn pubsub(&mut self, op: PubSubOp);
    /// The next reply, if one is waiting.
    fn try_recv(&mut self) -> Option<Reply>;
    /// A burst of ops is over: the memory it took (ops, their waiters and replies, on this
    /// thread and the link threads) is free, so give the allocator's free pages back to the
    /// kernel. Nothing by default.
    fn release_free_memory(&mut self) {}
}

impl RedisLink for super::link::Link {
    fn send(&mut self, op: Op) {
        super::link::Link::send(self, op);
    }

    fn pubsub(&mut self, op: PubSubOp) {
        super::link::Link::pubsub(self, op);
    }

    fn try_recv(&mut self) -> Option<Reply> {
        super::link::Link::try_recv(self)
    }

    fn release_free_memory(&mut self) {
        let start = Instant::now();
        let released = crate::server::sys::release_free_heap();
        debug!(
            "cluster: a burst of ops is over; free heap given back: {released} in {:?}",
            start.elapsed()
        );
    }
}

/// Pub/sub messages held beyond a gap, per stream; more are dropped (the catch-up read that
/// follows fetches them from the stream).
const MAX_AHEAD: usize = 4096;

/// Frames remembered while reads are in flight, per stream; past it a read that needs them is
/// sent again.
const MAX_RECORDING: usize = 4096;

/// After this many ops (a connect storm's reads, a publish burst), the broker asks the link to
/// give free memory back ([`RedisLink::release_free_memory`]) as soon as no op is in flight.
const BURST_OPS: u64 = 1024;

/// The broker gives free memory back at most once per this: a storm's joins come in waves,
/// each reusing what the last one freed.
const RELEASE_EVERY: Duration = Duration::from_secs(1);

/// How often the keys of the streams this node listens to get their TTL refreshed, as a
/// fraction of `--history-ttl`.
const TOUCH_DIVISOR: u32 = 3;

/// A subscribe or join waiting for its answer.
#[derive(Debug)]
struct Waiter {
    member: Member,
    since: Option<u64>,
    epoch: Option<String>,
}

/// A pub/sub message that cannot be reported yet.
#[derive(Debug)]
struct Held {
    epoch: u64,
    data: Arc<str>,
    /// The id the next op would get when it arrived: a read sent later (an id at least
    /// this) saw the stream after its publish, so it must either hold it (same epoch, seq at
    /// most its top) or prove it stale.
    stamp: OpId,
}

/// One stream this node listens to. An idle stream (no subscribe waiting, no read in flight,
/// nothing held) is these three words; what a read or a gap needs lives in [`Busy`], which
/// exists only meanwhile (idle streams are what a node holds most of: one per user, kept in
/// the user's own [`Users`] entry). The flags share a word with the epoch, which is below
/// [`EPOCH_LIMIT`] (42 bits), and its top bit is always set, so `Option<StreamState>` (a
/// user's entry with or without a stream here) needs no tag either.
#[derive(Debug)]
struct StreamState {
    /// The epoch of `live` (bits 0..42, meaningful while [`HAS_LIVE`]), the flags, and
    /// [`PRESENT`].
    word: NonZeroU64,
    /// The last seq reported to the listeners here (meaningful while [`HAS_LIVE`]).
    last: u64,
    /// The read and gap bookkeeping, while there is any.
    busy: Option<Box<Busy>>,
}

/// The bits of [`StreamState::word`] that hold the epoch.
const EPOCH_MASK: u64 = (1 << 42) - 1;
const _: () = assert!(EPOCH_LIMIT - 1 <= EPOCH_MASK);

/// The first read came back: (epoch, `last`) is the stream's live position.
const HAS_LIVE: u64 = 1 << 42;
/// The topic is subscribed in Redis (confirmed); unset while subscribing or after the
/// pub/sub link dropped.
const LISTENING: u64 = 1 << 43;
/// Redis restarted since this stream's last read: the next read's top is checked strictly
/// (a top below `last` renews the epoch even if pub/sub could have outrun it).
const VERIFY: u64 = 1 << 44;
/// A read failed (or is owed after the topic is subscribed again): send it when the links
/// allow.
const NEEDS_READ: u64 = 1 << 45;
/// Always set: the word is never zero.
const PRESENT: u64 = 1 << 63;
/// A new stream's word: epoch 0, no flag, [`PRESENT`].
const EMPTY_WORD: NonZeroU64 = NonZeroU64::MIN.saturating_add(PRESENT - 1);

/// Numbers [`Busy`] parts, once each in the process: see [`Busy::life`].
static BUSY_LIVES: AtomicU64 = AtomicU64::new(1);

/// A stream's state while a subscribe waits, reads are in flight or messages are held.
/// All of it at its default means idle: [`StreamState::tidy`] then drops it.
#[derive(Debug)]
struct Busy {
    /// Names the stream's life while reads are in flight: a read's answer applies only to
    /// the life that sent it (a stream left and listened to again is a new one). A read in
    /// flight keeps `reads` above 0, so the busy part (and its number) lasts as long as any
    /// read of its life can come back; a new life's busy part is made anew, with a new number.
    life: u64,
    /// Subscribes waiting for the topic, or for the command link.
    waiting: Vec<Waiter>,
    /// Reads (and renewals) in flight.
    reads: u32,
    /// Frames reported while reads are in flight, with their epochs and seqs.
    recording: Vec<(u64, u64, SharedFrame)>,
    /// `recording` overflowed: a read that needs it must be sent again.
    recording_lost: bool,
    /// Pub/sub messages that cannot be reported yet, by seq.
    ahead: BTreeMap<u64, Held>,
    /// A catch-up read is in flight.
    catching_up: bool,
    /// A message was dropped from `ahead` (full): catch up again after the current read.
    ahead_lost: bool,
    /// A link came back while a catch-up was in flight: read again after it.
    catch_up_again: bool,
}

impl Default for Busy {
    fn default() -> Busy {
        Busy {
            life: BUSY_LIVES.fetch_add(1, Ordering::Relaxed),
            waiting: Vec::new(),
            reads: 0,
            recording: Vec::new(),
            recording_lost: false,
            ahead: BTreeMap::new(),
            catching_up: false,
            ahead_lost: false,
            catch_up_again: false,
        }
    }
}

impl Busy {
    /// Adds `waiters` to `waiting` (taking their `Vec` as it is when none wait: a lone
    /// subscribe's `vec![waiter]` holds one slot, not the four a first push would make).
    fn wait(&mut self, waiters: Vec<Waiter>) {
        if self.waiting.is_empty() {
            self.waiting = waiters;
        } else {
            self.waiting.extend(waiters);
        }
    }

    /// Nothing to remember: every field but `life` at its default.
    fn is_idle(&self) -> bool {
        self.waiting.is_empty()
            && self.reads == 0
            && self.recording.is_empty()
            && !self.recording_lost
            && self.ahead.is_empty()
            && !self.catching_up
            && !self.ahead_lost
            && !self.catch_up_again
    }
}

impl StreamState {
    fn new() -> StreamState {
        StreamState {
            word: EMPTY_WORD,
            last: 0,
            busy: None,
        }
    }

    fn flag(&self, flag: u64) -> bool {
        self.word.get() & flag != 0
    }

    fn set_flag(&mut self, flag: u64, on: bool) {
        let word = if on {
            self.word.get() | flag
        } else {
            self.word.get() & !flag
        };
        // PRESENT is never a flag set or cleared here, so the word stays non-zero.
        self.word = NonZeroU64::new(word | PRESENT).unwrap_or(self.word);
    }

    fn has_live(&self) -> bool {
        self.flag(HAS_LIVE)
    }

    fn listening(&self) -> bool {
        self.flag(LISTENING)
    }

    fn needs_read(&self) -> bool {
        self.flag(NEEDS_READ)
    }

    /// Takes [`VERIFY`] (unset after).
    fn take_verify(&mut self) -> bool {
        let verify = self.flag(VERIFY);
        self.set_flag(VERIFY, false);
        verify
    }

    /// (epoch, last seq reported to the listeners here); `None` until the first read.
    fn live(&self) -> Option<(u64, u64)> {
        self.has_live()
            .then_some((self.word.get() & EPOCH_MASK, self.last))
    }

    fn set_live(&mut self, epoch: u64, last: u64) {
        let flags = self.word.get() & !EPOCH_MASK;
        // Epochs are below EPOCH_LIMIT (made here or checked by the scripts), so the mask
        // keeps them whole.
        self.word =
            NonZeroU64::new(flags | HAS_LIVE | PRESENT | (epoch & EPOCH_MASK)).unwrap_or(self.word);
        self.last = last;
    }

    /// The busy part, made if there is none.
    fn busy(&mut self) -> &mut Busy {
        self.busy.get_or_insert_with(Box::default)
    }

    /// Drops the busy part once it holds nothing.
    fn tidy(&mut self) {
        if self.busy.as_ref().is_some_and(|b| b.is_idle()) {
            self.busy = None;
        }
    }

    fn catching_up(&self) -> bool {
        self.busy.as_ref().is_some_and(|b| b.catching_up)
    }

    fn has_waiting(&self) -> bool {
        self.busy.as_ref().is_some_and(|b| !b.waiting.is_empty())
    }

    fn take_waiting(&mut self) -> Vec<Waiter> {
        self.busy
            .as_mut()
            .map(|b| std::mem::take(&mut b.waiting))
            .unwrap_or_default()
    }

    fn recording_len(&self) -> usize {
        self.busy.as_ref().map_or(0, |b| b.recording.len())
    }

    /// The frames of `epoch` recorded from index `from` on, with their seqs (a resync may
    /// have come between, so older epochs' frames are left out).
    fn recorded(&self, from: usize, epoch: u64) -> Vec<(u64, SharedFrame)> {
        let Some(busy) = &self.busy else {
            return Vec::new();
        };
        let tail = busy.recording.get(from..).unwrap_or(&[]);
        tail.iter()
            .filter(|(e, _, _)| *e == epoch)
            .map(|(_, seq, frame)| (*seq, frame.clone()))
            .collect()
    }

    /// Holds a message beyond a gap; `stamp`: the id the next op will get.
    fn hold_ahead(&mut self, seq: u64, epoch: u64, data: Arc<str>, stamp: OpId) {
        let busy = self.busy();
        if busy.ahead.len() >= MAX_AHEAD {
            busy.ahead_lost = true;
        } else {
            busy.ahead.insert(seq, Held { epoch, data, stamp });
        }
    }
}

/// A channel this node listens to.
#[derive(Debug)]
struct ChannelState {
    /// Bit `w` set while worker `w` has subscribers or a subscribe in flight.
    workers: u64,
    state: StreamState,
}
/// An op waiting for its reply.
#[derive(Debug)]
enum Pending {
    /// Delivered when its pub/sub copy comes (see `on_answer`), so only the request is kept.
    Publish {
        request: Option<AckId>,
    },
    Read {
        stream: StreamKey,
        waiters: Vec<Waiter>,
        catch_up: bool,
        /// `recording.len()` when it was sent: frames from there on were reported after.
        recorded_from: usize,
        /// Its number among the stream's reads (see [`Held::stamp`]).
        sent_no: u64,
        /// The stream's life that sent it.
        incarnation: u64,
        /// Sent after Redis restarted: see [`StreamState::verify`].
        strict: bool,
    },
    Renew {
        stream: StreamKey,
        waiters: Vec<Waiter>,
        /// The stream's life that sent it.
        incarnation: u64,
    },
    Control {
        request: Option<AckId>,
    },
    Nodes {
        request: AckId,
    },
    /// The live nodes, for the presence question `ask`: how many answers to wait for.
    PresenceNodes {
        ask: Arc<str>,
    },
}

/// A presence question this node asked the others.
#[derive(Debug)]
struct Ask {
    request: AckId,
    /// The nodes to wait for (every other node with a fresh heartbeat), once known.
    expected: Option<Vec<String>>,
    /// The nodes that answered.
    answered: Vec<String>,
    users: Vec<Arc<str>>,
    /// Past it, the answer goes with what came.
    deadline: Instant,
}

/// The Redis-backed [`Broker`]: see the module doc.
#[derive(Debug)]
pub struct RedisBroker<L: RedisLink> {
    link: L,
    history: HistoryConfig,
    timeout: Duration,
    now: Instant,
    next_op: OpId,
    ops: HashMap<OpId, Pending>,
    /// Ops in the order sent, with their deadlines (one timeout for all, so in order).
    deadlines: VecDeque<(Instant, OpId)>,
    channels: HashMap<Arc<str>, ChannelState>,
    /// The users connected here, each with its `$user` stream's state while this node
    /// listens to it (from the first join until the last connection leaves).
    users: Users<Option<StreamState>>,
    /// The users with a stream state.
    user_stream_count: usize,
    events: VecDeque<Event>,
    commands_up: bool,
    pubsub_up: bool,
    random: RandomState,
    epoch_counter: u64,
    next_touch: Instant,
    scratch: Vec<u8>,
    /// This node's name (`--node-name`).
    node: Arc<str>,
    /// `$user`, shared by every `$user` stream's frames.
    user_channel: Arc<str>,
    /// Presence questions asked of the other nodes, by id.
    asks: HashMap<Arc<str>, Ask>,
    /// A drain began: no more heartbeats.
    departed: bool,
    /// Redis's `run_id` at the last connect.
    run_id: Option<String>,
    /// A read failed while the links stayed up: send the reads that want one again then.
    retry_at: Option<Instant>,
    asked: u64,
    /// `next_op` when memory was last given back ([`BURST_OPS`]).
    released_op: OpId,
    /// When memory was last given back ([`RELEASE_EVERY`]).
    released_at: Option<Instant>,
}

impl<L: RedisLink> RedisBroker<L> {
    /// A broker for node `node` over `link`, applying `history` to what it publishes,
    /// failing ops not answered within `timeout`; its clock at `now`. The links count as up
    /// until they say otherwise.
    pub fn new(
        link: L,
        node: &str,
        history: HistoryConfig,
        timeout: Duration,
        now: Instant,
    ) -> Self {
        RedisBroker {
            link,
            history,
            timeout,
            now,
            next_op: 1,
            ops: HashMap::new(),
            deadlines: VecDeque::new(),
            channels: HashMap::new(),
            users: Users::new(),
            user_stream_count: 0,
            events: VecDeque::new(),
            commands_up: true,
            pubsub_up: true,
            random: RandomState::new(),
            epoch_counter: 0,
            next_touch: now + (history.ttl / TOUCH_DIVISOR).max(Duration::from_secs(1)),
            scratch: Vec::new(),
            node: Arc::from(node),
            user_channel: Arc::from(USER_CHANNEL),
            asks: HashMap::new(),
            departed: false,
            run_id: None,
            retry_at: None,
            asked: 0,
            released_op: 1,
            released_at: None,
        }
    }

    /// Is Redis reachable (both the command and the pub/sub link up)? While not, the server
    /// answers `/healthz` and new upgrades with 503, and client subscribes and publishes with
    /// error 503.
    pub fn is_up(&self) -> bool {
        self.commands_up && self.pubsub_up
    }

    /// The link, to send node-level ops (heartbeats, `/api/nodes`) beside the broker's.
    pub fn link_mut(&mut self) -> &mut L {
        &mut self.link
    }

    /// A new epoch candidate: random, below [`EPOCH_LIMIT`].
    fn epoch_candidate(&mut self) -> u64 {
        self.epoch_counter += 1;
        let mut hasher = self.random.build_hasher();
        hasher.write_u64(self.epoch_counter);
        hasher.finish() % EPOCH_LIMIT
    }

    /// Sends the op `make` builds with its new id, waiting for its reply as `pending` until
    /// the deadline.
    fn send(&mut self, make: impl FnOnce(OpId) -> Op, pending: Pending) -> OpId {
        let id = self.next_op;
        self.next_op += 1;
        let op = make(id);
        self.ops.insert(id, pending);
        self.deadlines.push_back((self.now + self.timeout, id));
        self.link.send(op);
        id
    }

    fn key_of(&self, stream: &Stream) -> Option<StreamKey> {
        match stream {
            Stream::Channel(name) => Some(StreamKey::channel(name)),
            Stream::User(id) => self.users.get(*id).map(|u| StreamKey::user(u.name())),
        }
    }

    fn state_mut(&mut self, key: &StreamKey) -> Option<&mut StreamState> {
        match key.kind() {
            StreamKind::Channel => self.channels.get_mut(key.name()).map(|c| &mut c.state),
            StreamKind::User => {
                let id = self.users.find(key.name())?;
                self.users.get_mut(id)?.stream.as_mut()
            }
        }
    }

    /// The stream `key` names here, and the `channel` field of its frames: the channel's own
    /// name, or the broker's one shared `$user`, a reference count either way (no copy per
    /// message). `None` if nobody here listens to it.
    fn local(&self, key: &StreamKey) -> Option<(Stream, Arc<str>)> {
        match key.kind() {
            StreamKind::Channel => {
                let (name, _) = self.channels.get_key_value(key.name())?;
                Some((Stream::Channel(Arc::clone(name)), Arc::clone(name)))
            }
            StreamKind::User => {
                let id = self.users.find(key.name())?;
                Some((Stream::User(id), Arc::clone(&self.user_channel)))
            }
        }
    }

    /// The stream `key` names here (see [`Self::local`]).
    fn stream_of(&self, key: &StreamKey) -> Option<Stream> {
        self.local(key).map(|(stream, _)| stream)
    }

    /// Drops `key`'s busy part if it holds nothing any more.
    fn tidy(&mut self, key: &StreamKey) {
        if let Some(state) = self.state_mut(key) {
            state.tidy();
        }
    }

    fn remove_state(&mut self, key: &StreamKey) {
        let removed = match key.kind() {
            StreamKind::Channel => self.channels.remove(key.name()).is_some(),
            StreamKind::User => {
                let state = self
                    .users
                    .find(key.name())
                    .and_then(|id| self.users.get_mut(id))
                    .and_then(|user| user.stream.take());
                if state.is_some() {
                    self.user_stream_count -= 1;
                }
                state.is_some()
            }
        };
        if removed {
            self.link.pubsub(PubSubOp::Unsubscribe(vec![key.clone()]));
        }
    }

    fn encode(&mut self, channel: &str, seq: u64, data: &str) -> SharedFrame {
        encode_message(&mut self.scratch, channel, Some(seq), data)
    }

    /// Reports a message to the stream's listeners and records it if reads are in flight.
    fn report(&mut self, key: &StreamKey, seq: u64, epoch: u64, frame: SharedFrame) {
        let Some(stream) = self.stream_of(key) else {
            return;
        };
        let Some(state) = self.state_mut(key) else {
            return;
        };
        if state.has_live() {
            state.set_live(epoch, seq);
        }
        if let Some(busy) = state.busy.as_mut().filter(|b| b.reads > 0) {
            if busy.recording.len() < MAX_RECORDING {
                busy.recording.push((epoch, seq, frame.clone()));
            } else {
                busy.recording_lost = true;
            }
        }
        self.events.push_back(Event::Message {
            stream,
            seq,
            epoch: Epoch::from_bits(epoch),
            frame,
            request: None,
        });
    }

    /// A message of `key` from pub/sub (or from this node's own publish answer).
    fn on_message(&mut self, key: &StreamKey, seq: u64, epoch: u64, data: Arc<str>) {
        let Some((_, channel)) = self.local(key) else {
            return; // nobody here listens any more
        };
        let stamp = self.next_op;
        let Some(state) = self.state_mut(key) else {
            return;
        };
        match state.live() {
            None => state.hold_ahead(seq, epoch, data, stamp),
            Some((e, last)) if e == epoch && seq <= last => {} // a duplicate
            Some((e, last)) if e == epoch && seq == last + 1 => {
                let frame = self.encode(&channel, seq, &data);
                self.report(key, seq, epoch, frame);
                self.drain_ahead(key);
            }
            Some(_) => {
                // A gap, or another epoch: hold it and read the stream.
                state.hold_ahead(seq, epoch, data, stamp);
                self.catch_up(key);
            }
        }
        self.tidy(key);
    }

    /// Reports what `ahead` holds that now follows `last`, in order; drops what is at or
    /// below it. Stops at a gap or at another epoch (a catch-up read settles those).
    fn drain_ahead(&mut self, key: &StreamKey) {
        let Some((_, channel)) = self.local(key) else {
            return;
        };
        loop {
            let Some(state) = self.state_mut(key) else {
                return;
            };
            let Some((e, last)) = state.live() else {
                return;
            };
            let Some(busy) = state.busy.as_mut() else {
                return;
            };
            let Some(entry) = busy.ahead.first_entry() else {
                return;
            };
            let seq = *entry.key();
            let epoch = entry.get().epoch;
            if epoch == e && seq <= last {
                entry.remove();
                continue;
            }
            if epoch != e || seq != last + 1 {
                return;
            }
            let Held { data, .. } = entry.remove();
            let frame = self.encode(&channel, seq, &data);
            self.report(key, seq, e, frame);
        }
    }

    /// Reads the stream after `last` (one catch-up at a time).
    fn catch_up(&mut self, key: &StreamKey) {
        let Some(state) = self.state_mut(key) else {
            return;
        };
        if state.catching_up() {
            return;
        }
        let busy = state.busy();
        busy.catching_up = true;
        busy.ahead_lost = false;
        self.read(key, Vec::new(), true);
    }

    /// Sends a read of `key` answering `waiters` (and catching up if `catch_up`); without the
    /// command link, the waiters wait and the read is sent again later.
    fn read(&mut self, key: &StreamKey, waiters: Vec<Waiter>, catch_up: bool) {
        let commands_up = self.commands_up;
        let candidate = self.epoch_candidate();
        let ttl = self.history.ttl;
        let sent_no = self.next_op;
        let Some(state) = self.state_mut(key) else {
            return;
        };
        // A subscribe's answer needs the topic subscribed (else a later message could be
        // missed); a catch-up does not (pub/sub coming back catches up again), so one owed
        // after a Redis restart goes out at once.
        let needs_topic = !waiters.is_empty() || !state.has_live();
        if !commands_up || (needs_topic && !state.listening()) {
            if catch_up || !waiters.is_empty() {
                let busy = state.busy();
                busy.wait(waiters);
                if catch_up {
                    busy.catching_up = false;
                }
            }
            state.set_flag(NEEDS_READ, true);
            return;
        }
        let live_last = state.live().map(|(_, last)| last);
        let after = waiters
            .iter()
            .filter_map(|w| w.since)
            .chain(live_last)
            .min();
        let strict = state.take_verify();
        let busy = state.busy();
        busy.reads += 1;
        let incarnation = busy.life;
        let recorded_from = state.recording_len();
        let stream = key.clone();
        self.send(
            |id| Op::Read {
                id,
                stream,
                after,
                epoch_candidate: candidate,
                ttl,
            },
            Pending::Read {
                stream: key.clone(),
                waiters,
                catch_up,
                recorded_from,
                sent_no,
                incarnation,
                strict,
            },
        );
    }

    /// A read came back: brings `live` up to the stream (reporting the messages in between,
    /// or resyncing), then answers its waiters at `last`.
    #[allow(clippy::too_many_arguments)]
    fn on_read(
        &mut self,
        key: &StreamKey,
        waiters: Vec<Waiter>,
        catch_up: bool,
        recorded_from: usize,
        sent_no: OpId,
        strict: bool,
        epoch: u64,
        top: u64,
        entries: Vec<(u64, Arc<str>)>,
    ) {
        let Some((_, channel)) = self.local(key) else {
            return;
        };
        let Some(state) = self.state_mut(key) else {
            return;
        };
        if let Some(busy) = state.busy.as_mut() {
            busy.reads = busy.reads.saturating_sub(1);
            if catch_up {
                busy.catching_up = false;
            }
        }
        let frames: Vec<(u64, SharedFrame)> = entries
            .iter()
            .map(|(seq, data)| {
                (
                    *seq,
                    encode_message(&mut self.scratch, &channel, Some(*seq), data),
                )
            })
            .collect();
        let Some(state) = self.state_mut(key) else {
            return;
        };
        match state.live() {
            None => state.set_live(epoch, top),
            Some((e, last)) if e == epoch && top > last => {
                if covers(&frames, last, top) {
                    for (seq, frame) in frames.iter().filter(|(s, _)| *s > last) {
                        self.report(key, *seq, epoch, frame.clone());
                    }
                } else if catch_up {
                    // Pub/sub lost them (it skipped a seq, or its link dropped) and the stream
                    // no longer holds them all.
                    self.resync(key, epoch, top, "the stream no longer holds the gap");
                }
                // Else pub/sub, which lost nothing, is only behind: the rest comes that way,
                // and the waiters are answered at what was reported so far.
            }
            Some((e, last)) if e == epoch && top < last => {
                let recorded = state.recorded(recorded_from, epoch);
                if strict || !covers(&recorded, top, last) {
                    let recording_lost = state.busy.as_ref().is_some_and(|b| b.recording_lost);
                    if recording_lost && !strict {
                        // The frames that would prove it were not kept: ask again.
                        state.busy().catching_up |= catch_up;
                        self.read(key, waiters, catch_up);
                        return;
                    }
                    // Redis came back older under the same epoch: renew it, never reuse seqs.
                    let why = format!("its top went from {last} back to {top}");
                    self.renew(key, epoch, waiters, &why);
                    return;
                }
            }
            Some((e, _)) if e == epoch => {}
            Some(_) => self.resync(key, epoch, top, "its epoch changed"),
        }
        // Messages held since before this read was sent: one of another epoch is stale; one
        // of this epoch above the top means Redis lost what it had published.
        let Some(state) = self.state_mut(key) else {
            return;
        };
        let mut went_back = None;
        if let Some(busy) = state.busy.as_mut() {
            busy.ahead.retain(|&seq, held| {
                if held.stamp > sent_no {
                    return true;
                }
                if held.epoch == epoch && seq > top {
                    went_back = Some(seq);
                }
                held.epoch == epoch && seq <= top
            });
        }
        if let Some(seq) = went_back {
            let why = format!("{seq} was published under it, yet its top is {top}");
            self.renew(key, epoch, waiters, &why);
            return;
        }
        self.answer(key, waiters, &frames, recorded_from);
        self.after_read(key);
    }

    /// Redis came back older under `epoch`: asks for a new epoch (if `epoch` is still in
    /// force there), so no seq is ever reused; `waiters` are answered under it.
    fn renew(&mut self, key: &StreamKey, epoch: u64, waiters: Vec<Waiter>, why: &str) {
        warn!("cluster: {key}: {why}: renewing its epoch");
        let candidate = self.epoch_candidate();
        let ttl = self.history.ttl;
        let Some(state) = self.state_mut(key) else {
            return;
        };
        let busy = state.busy();
        busy.reads += 1;
        let incarnation = busy.life;
        let stream = key.clone();
        self.send(
            |id| Op::Renew {
                id,
                stream,
                old: epoch,
                epoch_candidate: candidate,
                ttl,
            },
            Pending::Renew {
                stream: key.clone(),
                waiters,
                incarnation,
            },
        );
    }

    /// Is `incarnation` the life of `key` this node listens to now (not one it left)?
    fn is_current(&mut self, key: &StreamKey, incarnation: u64) -> bool {
        self.state_mut(key)
            .and_then(|state| state.busy.as_ref())
            .is_some_and(|busy| busy.life == incarnation)
    }

    /// The stream goes on under `epoch` from `top`: its listeners are told.
    fn resync(&mut self, key: &StreamKey, epoch: u64, top: u64, why: &str) {
        let Some(stream) = self.stream_of(key) else {
            return;
        };
        let Some(state) = self.state_mut(key) else {
            return;
        };
        info!("cluster: {key} goes on at {top} under epoch {} ({why}): its listeners here are told recovered:false", Epoch::from_bits(epoch));
        state.set_live(epoch, top);
        self.events.push_back(Event::Resync {
            stream,
            seq: top,
            epoch: Epoch::from_bits(epoch),
        });
    }

    /// Answers `waiters` at the stream's `last`, replaying from `frames` (the read's entries)
    /// and from what was recorded since the read was sent.
    fn answer(
        &mut self,
        key: &StreamKey,
        waiters: Vec<Waiter>,
        frames: &[(u64, SharedFrame)],
        recorded_from: usize,
    ) {
        if waiters.is_empty() {
            return;
        }
        let Some(stream) = self.stream_of(key) else {
            return;
        };
        let Some(state) = self.state_mut(key) else {
            return;
        };
        let Some((epoch, last)) = state.live() else {
            return;
        };
        let epoch_name = Epoch::from_bits(epoch).to_string();
        let recorded = state.recorded(recorded_from, epoch);
        let mut answers = Vec::with_capacity(waiters.len());
        for w in waiters {
            let mut replay = Vec::new();
            let recovered = w.since.map(|since| {
                if w.epoch.as_deref() != Some(epoch_name.as_str()) || since > last {
                    return false;
                }
                for seq in since + 1..=last {
                    let frame = find(frames, seq).or_else(|| find(&recorded, seq));
                    match frame {
                        Some(f) => replay.push(f),
                        None => {
                            replay.clear();
                            return false;
                        }
                    }
                }
                true
            });
            answers.push(Event::Subscribed {
                member: w.member,
                stream: stream.clone(),
                seq: last,
                epoch: Epoch::from_bits(epoch),
                recovered,
                replay,
            });
        }
        self.events.extend(answers);
    }

    /// After a read: frees the recording if no read needs it, reports what `ahead` allows,
    /// and catches up again if a gap remains.
    fn after_read(&mut self, key: &StreamKey) {
        if let Some(busy) = self.state_mut(key).and_then(|s| s.busy.as_mut()) {
            if busy.reads == 0 {
                busy.recording = Vec::new();
                busy.recording_lost = false;
            }
        }
        self.drain_ahead(key);
        let again = self
            .state_mut(key)
            .and_then(|s| s.busy.as_mut())
            .is_some_and(|b| {
                let again = !b.ahead.is_empty() || b.ahead_lost || b.catch_up_again;
                b.catch_up_again = false;
                again
            });
        if again {
            self.catch_up(key);
        }
        self.tidy(key);
    }

    fn on_reply(&mut self, reply: Reply) {
        match reply {
            Reply::Message {
                stream,
                seq,
                epoch,
                data,
            } => self.on_message(&stream, seq, epoch, data),
            Reply::Listening(keys) => {
                for key in keys {
                    self.on_listening(&key);
                }
            }
            Reply::Control(entry) => match entry {
                ControlEntry::Broadcast { data } => {
                    let frame = encode_message(
                        &mut self.scratch,
                        crate::push::hub::BROADCAST_CHANNEL,
                        None,
                        &data,
                    );
                    self.events.push_back(Event::Broadcast {
                        frame,
                        request: None,
                    });
                }
                ControlEntry::Disconnect { user } => {
                    self.events.push_back(Event::Disconnect {
                        user,
                        request: None,
                    });
                }
                ControlEntry::PresenceAsk { id, channel, node } => {
                    if node != self.node {
                        self.events.push_back(Event::PresenceAsked {
                            asked: Asked { id, node },
                            channel,
                        });
                    }
                }
            },
            Reply::Inbox(payload) => self.on_inbox(&payload),
            Reply::Link { link, up } => self.on_link(link, up),
            Reply::Connected { run_id } => {
                let restarted = self.run_id.as_ref().is_some_and(|old| *old != run_id);
                self.run_id = Some(run_id);
                if restarted {
                    info!("cluster: Redis restarted: every stream's top is checked again");
                    for key in self.stream_keys() {
                        if let Some(state) = self.state_mut(&key) {
                            state.set_flag(VERIFY, true);
                        }
                    }
                }
            }
            Reply::Failed { id, reason } => {
                debug!("cluster: op {id} failed: {reason}");
                self.on_failed(id);
            }
            reply => {
                let Some(id) = reply_id(&reply) else {
                    return;
                };
                let Some(pending) = self.ops.remove(&id) else {
                    return; // timed out already: its late reply means nothing now
                };
                self.on_answer(pending, reply);
            }
        }
    }

    fn on_answer(&mut self, pending: Pending, reply: Reply) {
        match (pending, reply) {
            (Pending::Publish { request }, Reply::Published { seq, epoch, .. }) => {
                if let Some(request) = request {
                    self.events.push_back(Event::Stored {
                        request,
                        what: Stored::Message {
                            seq,
                            epoch: Epoch::from_bits(epoch),
                        },
                    });
                }
                // Delivered when its pub/sub copy comes, in order with the other nodes'
                // publishes: a reply runs ahead of pub/sub, and taking it as a message would
                // look like a gap in the messages still on their way.
            }
            (Pending::Publish { request, .. }, Reply::NoStream { .. }) => {
                self.events.push_back(Event::NoStream { request });
            }
            (
                Pending::Read {
                    stream,
                    waiters,
                    catch_up,
                    recorded_from,
                    sent_no,
                    incarnation,
                    strict,
                },
                Reply::Read {
                    epoch,
                    top,
                    entries,
                    ..
                },
            ) if self.is_current(&stream, incarnation) => self.on_read(
                &stream,
                waiters,
                catch_up,
                recorded_from,
                sent_no,
                strict,
                epoch,
                top,
                entries,
            ),
            (
                Pending::Renew {
                    stream,
                    waiters,
                    incarnation,
                },
                Reply::Read { epoch, top, .. },
            ) if self.is_current(&stream, incarnation) => {
                let live = self.state_mut(&stream).and_then(|state| {
                    if let Some(busy) = state.busy.as_mut() {
                        busy.reads = busy.reads.saturating_sub(1);
                    }
                    state.live()
                });
                match live {
                    // Another renewal of the same loss already moved this node to `epoch`.
                    Some((e, last)) if e == epoch => {
                        if top > last {
                            self.catch_up(&stream);
                        }
                    }
                    _ => self.resync(&stream, epoch, top, "its top went back"),
                }
                self.answer(&stream, waiters, &[], usize::MAX);
                self.after_read(&stream);
            }
            // The answer of a read or renewal sent in a life of the stream this node left.
            (Pending::Read { .. } | Pending::Renew { .. }, Reply::Read { .. }) => {}
            (Pending::Nodes { request }, Reply::Nodes { nodes, .. }) => {
                self.events.push_back(Event::Nodes { request, nodes });
            }
            (Pending::PresenceNodes { ask }, Reply::Nodes { nodes, .. }) => {
                // A node whose last heartbeat is older than one interval and a second is
                // probably gone: not waited for (its answer still counts if it comes).
                let fresh = (HEARTBEAT + Duration::from_secs(1)).as_millis() as u64;
                let others = nodes
                    .iter()
                    .filter(|n| n.age_ms <= fresh)
                    .filter_map(|n| node_name(&n.info))
                    .filter(|name| **name != *self.node)
                    .collect();
                if let Some(a) = self.asks.get_mut(&ask) {
                    a.expected = Some(others);
                }
                self.finish_ask(&ask, false);
            }
            (Pending::Control { request }, Reply::Appended { .. }) => {
                if let Some(request) = request {
                    self.events.push_back(Event::Stored {
                        request,
                        what: Stored::Control,
                    });
                }
            }
            (pending, reply) => {
                warn!("cluster: reply {reply:?} does not answer {pending:?}");
                self.fail_pending(pending);
            }
        }
    }

    /// Another node's answer to one of this node's presence questions.
    fn on_inbox(&mut self, payload: &str) {
        #[derive(serde::Deserialize)]
        struct Answer {
            id: String,
            node: String,
            users: Vec<String>,
        }
        let Ok(answer) = serde_json::from_str::<Answer>(payload) else {
            debug!("cluster: a malformed inbox message: {payload:?}");
            return;
        };
        let Some(ask) = self.asks.get_mut(answer.id.as_str()) else {
            return; // answered already (timed out)
        };
        ask.answered.push(answer.node);
        ask.users
            .extend(answer.users.into_iter().map(|u| Arc::from(u.as_str())));
        let id: Arc<str> = Arc::from(answer.id.as_str());
        self.finish_ask(&id, false);
    }

    /// Answers presence question `id` if every live node answered (or `timed_out`).
    fn finish_ask(&mut self, id: &Arc<str>, timed_out: bool) {
        let all_in = |a: &Ask| {
            a.expected
                .as_ref()
                .is_some_and(|e| e.iter().all(|n| a.answered.contains(n)))
        };
        let done = self.asks.get(id).is_some_and(|a| timed_out || all_in(a));
        if let Some(ask) = done.then(|| self.asks.remove(id)).flatten() {
            self.events.push_back(Event::PresenceFrom {
                request: ask.request,
                partial: !all_in(&ask),
                users: ask.users,
            });
        }
    }

    fn on_failed(&mut self, id: OpId) {
        if let Some(pending) = self.ops.remove(&id) {
            self.fail_pending(pending);
        }
    }

    /// An op failed or timed out: its request gets 503; a read's waiters wait for the next.
    fn fail_pending(&mut self, pending: Pending) {
        match pending {
            // The question's deadline answers it with what came.
            Pending::PresenceNodes { .. } => {}
            // Without Redis this node knows only itself (the hub adds it).
            Pending::Nodes { request } => self.events.push_back(Event::Nodes {
                request,
                nodes: Vec::new(),
            }),
            Pending::Publish { request, .. } | Pending::Control { request } => {
                if let Some(request) = request {
                    self.events.push_back(Event::Failed { request });
                }
            }
            Pending::Read {
                stream,
                waiters,
                catch_up,
                incarnation,
                strict,
                ..
            } => self.read_failed(&stream, waiters, incarnation, catch_up, strict),
            Pending::Renew {
                stream,
                waiters,
                incarnation,
            } => self.read_failed(&stream, waiters, incarnation, false, false),
        }
    }

    /// A read (or renewal) of `stream`'s life `incarnation` failed: its waiters wait for the
    /// next one, sent again soon; a catch-up or a check after a restart is still owed.
    fn read_failed(
        &mut self,
        stream: &StreamKey,
        waiters: Vec<Waiter>,
        incarnation: u64,
        catch_up: bool,
        strict: bool,
    ) {
        if !self.is_current(stream, incarnation) {
            return;
        }
        if let Some(state) = self.state_mut(stream) {
            if strict {
                state.set_flag(VERIFY, true);
            }
            state.set_flag(NEEDS_READ, true);
            let busy = state.busy();
            busy.reads = busy.reads.saturating_sub(1);
            if catch_up {
                busy.catching_up = false;
            }
            busy.wait(waiters);
        }
        self.after_failed_read(stream);
    }

    fn after_failed_read(&mut self, key: &StreamKey) {
        // Retried within a second (sooner if a link comes back), not only at the next touch.
        let soon = self.now + Duration::from_secs(1);
        self.retry_at.get_or_insert(soon);
        if let Some(busy) = self.state_mut(key).and_then(|s| s.busy.as_mut()) {
            if busy.reads == 0 {
                busy.recording = Vec::new();
                busy.recording_lost = false;
            }
        }
        self.tidy(key);
    }

    fn on_listening(&mut self, key: &StreamKey) {
        let Some(state) = self.state_mut(key) else {
            return;
        };
        state.set_flag(LISTENING, true);
        state.set_flag(NEEDS_READ, false);
        let waiters = state.take_waiting();
        if state.has_live() {
            // Subscribed again after the pub/sub link came back (or confirmed twice): messages
            // published meanwhile may have been missed, so the stream catches up; a catch-up
            // in flight may have read before the topic was subscribed, so it goes again.
            if state.catching_up() {
                state.busy().catch_up_again = true;
            } else {
                self.catch_up(key);
            }
            if !waiters.is_empty() {
                self.read(key, waiters, false);
            }
        } else {
            self.read(key, waiters, false);
        }
        self.tidy(key);
    }

    fn on_link(&mut self, link: LinkKind, up: bool) {
        // The link threads log the change (with its reason).
        match link {
            LinkKind::Commands => {
                self.commands_up = up;
                if up {
                    // Redis may have restarted (even from an older copy): look again.
                    self.catch_up_all();
                    self.retry_reads();
                }
            }
            LinkKind::PubSub => {
                self.pubsub_up = up;
                let keys = self.stream_keys();
                for key in &keys {
                    if let Some(state) = self.state_mut(key) {
                        state.set_flag(LISTENING, false);
                    }
                }
                if up && !keys.is_empty() {
                    // The new connection listens to nothing: every topic is subscribed again,
                    // and each stream catches up once its topic is confirmed (`on_listening`).
                    self.link.pubsub(PubSubOp::Subscribe(keys));
                }
            }
            LinkKind::Control => {}
        }
    }

    /// After a link came back: every live stream reads the stream again, with a read sent now
    /// (one in flight from before may have seen Redis as it was before it restarted).
    fn catch_up_all(&mut self) {
        for key in self.stream_keys() {
            let Some(state) = self.state_mut(&key) else {
                continue;
            };
            if !state.has_live() {
                continue;
            }
            if state.catching_up() {
                state.busy().catch_up_again = true;
            } else {
                self.catch_up(&key);
            }
        }
    }

    /// Sends the reads that could not be sent (or failed), for every stream that wants one.
    fn retry_reads(&mut self) {
        if !self.commands_up {
            return;
        }
        for key in self.stream_keys() {
            let Some(state) = self.state_mut(&key) else {
                continue;
            };
            let wants_read = state.needs_read() || state.has_waiting();
            if !state.listening() || !wants_read {
                continue;
            }
            state.set_flag(NEEDS_READ, false);
            let waiters = state.take_waiting();
            let live = state.has_live();
            if live && waiters.is_empty() {
                self.catch_up(&key);
            } else {
                self.read(&key, waiters, false);
            }
            self.tidy(&key);
        }
    }

    fn stream_keys(&self) -> Vec<StreamKey> {
        let channels = self.channels.keys().map(|name| StreamKey::channel(name));
        let users = self
            .users
            .iter()
            .filter(|u| u.stream.is_some())
            .map(|u| StreamKey::user(u.name()));
        channels.chain(users).collect()
    }

    /// Takes every reply the link has, and fails the ops whose deadline passed.
    fn pump(&mut self) {
        while let Some(reply) = self.link.try_recv() {
            self.on_reply(reply);
        }
        while let Some(&(due, id)) = self.deadlines.front() {
            if due > self.now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(pending) = self.ops.remove(&id) {
                debug!("cluster: op {id} timed out after {:?}", self.timeout);
                self.fail_pending(pending);
            }
        }
        // Deadlines of answered ops stay queued until due; keep the queue bounded by the ops
        // sent within one timeout.
        while self.deadlines.len() > 4 * self.ops.len() + 1024 {
            match self.deadlines.front() {
                Some(&(_, id)) if !self.ops.contains_key(&id) => {
                    self.deadlines.pop_front();
                }
                _ => break,
            }
        }
        // A burst (every connection of a restart subscribing at once) leaves these tables
        // sized for it: give the memory back once they are mostly empty.
        if wasteful(self.ops.len(), self.ops.capacity()) {
            self.ops.shrink_to(self.ops.len() * 2);
        }
        if wasteful(self.deadlines.len(), self.deadlines.capacity()) {
            self.deadlines.shrink_to(self.deadlines.len() * 2);
        }
        if wasteful(self.events.len(), self.events.capacity()) {
            self.events.shrink_to(self.events.len() * 2);
        }
        // What a burst allocated and freed (boxed ops, waiters, busy parts, replies; a few
        // hundred bytes per join in flight) stays with the allocator, counted in the RSS,
        // unless given back.
        if self.next_op - self.released_op >= BURST_OPS
            && self.ops.is_empty()
            && self
                .released_at
                .is_none_or(|at| self.now >= at + RELEASE_EVERY)
        {
            self.released_op = self.next_op;
            self.released_at = Some(self.now);
            self.link.release_free_memory();
        }
    }
}

/// Tables smaller than this are never shrunk (not worth the rehash).
const SHRINK_FLOOR: usize = 256;

/// Is a table holding `len` of `capacity` worth shrinking (to twice its length)? Only past
/// [`SHRINK_FLOOR`] and below a quarter full, so a table that shrinks must grow by half its
/// new size again before the next shrink: amortized O(1) per entry.
fn wasteful(len: usize, capacity: usize) -> bool {
    capacity > SHRINK_FLOOR && len.saturating_mul(4) < capacity
}

/// The `name` of a node's heartbeat object.
fn node_name(info: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(info).ok()?;
    value.get("name")?.as_str().map(str::to_owned)
}

fn reply_id(reply: &Reply) -> Option<OpId> {
    match reply {
        Reply::Published { id, .. }
        | Reply::NoStream { id }
        | Reply::Read { id, .. }
        | Reply::Appended { id }
        | Reply::Nodes { id, .. }
        | Reply::Failed { id, .. } => Some(*id),
        _ => None,
    }
}

/// Do `frames` (ascending) hold every seq in `after + 1 ..= to`?
fn covers(frames: &[(u64, SharedFrame)], after: u64, to: u64) -> bool {
    (after + 1..=to).all(|seq| find(frames, seq).is_some())
}

fn find(frames: &[(u64, SharedFrame)], seq: u64) -> Option<SharedFrame> {
    frames
        .binary_search_by_key(&seq, |(s, _)| *s)
        .ok()
        .and_then(|i| frames.get(i))
        .map(|(_, f)| f.clone())
}

impl<L: RedisLink> Broker for RedisBroker<L> {
    fn publish(
        &mut self,
        to: PublishTo<'_>,
        data: &str,
        idempotency_key: Option<&str>,
        request: Option<AckId>,
    ) {
        if !self.commands_up {
            if let Some(request) = request {
                self.events.push_back(Event::Failed { request });
            }
            return;
        }
        let (stream, existing_only, history_size) = match to {
            PublishTo::Channel(name) => (StreamKey::channel(name), false, self.history.size),
            PublishTo::User(name) => (StreamKey::user(name), true, self.history.user_size),
        };
        let (epoch_candidate, ttl) = (self.epoch_candidate(), self.history.ttl);
        self.send(
            |id| Op::Publish {
                id,
                stream,
                data: Arc::from(data),
                idempotency_key: idempotency_key.map(Box::from),
                epoch_candidate,
                existing_only,
                history_size,
                ttl,
            },
            Pending::Publish { request },
        );
    }

    fn broadcast(&mut self, data: &str, request: Option<AckId>) {
        self.control(
            ControlEntry::Broadcast {
                data: Arc::from(data),
            },
            request,
        );
    }

    /// Without Redis the other nodes cannot be asked: 503, not a partial list.
    fn presence(&mut self, channel: &Arc<str>, request: AckId) {
        if !self.commands_up {
            self.events.push_back(Event::Failed { request });
            return;
        }
        self.asked += 1;
        let id: Arc<str> = Arc::from(format!("{}:{}", self.node, self.asked));
        self.asks.insert(
            Arc::clone(&id),
            Ask {
                request,
                expected: None,
                answered: Vec::new(),
                users: Vec::new(),
                deadline: self.now + self.timeout,
            },
        );
        let entry = ControlEntry::PresenceAsk {
            id: Arc::clone(&id),
            channel: Arc::clone(channel),
            node: Arc::clone(&self.node),
        };
        self.send(
            |id| Op::Control { id, entry },
            Pending::Control { request: None },
        );
        self.send(|id| Op::Nodes { id }, Pending::PresenceNodes { ask: id });
    }

    fn presence_answer(&mut self, asked: Asked, users: Vec<String>) {
        if self.commands_up {
            let payload =
                serde_json::json!({ "id": &*asked.id, "node": &*self.node, "users": users })
                    .to_string();
            self.link.send(Op::Tell {
                node: asked.node,
                payload,
            });
        }
    }

    fn depart(&mut self) {
        self.departed = true;
        if self.commands_up {
            self.link.send(Op::Depart);
        }
    }

    fn heartbeat(&mut self, info: &str) {
        if self.departed {
            return;
        }
        if self.commands_up {
            self.link.send(Op::Heartbeat {
                info: info.to_owned(),
                ttl: HEARTBEAT_TTL,
            });
        }
    }

    fn nodes(&mut self, request: AckId) {
        if self.commands_up {
            self.send(|id| Op::Nodes { id }, Pending::Nodes { request });
        } else {
            self.events.push_back(Event::Nodes {
                request,
                nodes: Vec::new(),
            });
        }
    }

    fn disconnect(&mut self, user: &str, request: Option<AckId>) {
        self.control(
            ControlEntry::Disconnect {
                user: Arc::from(user),
            },
            request,
        );
    }

    fn subscribe(
        &mut self,
        member: Member,
        stream: Stream,
        since: Option<u64>,
        epoch: Option<String>,
    ) {
        let Some(key) = self.key_of(&stream) else {
            return; // a `$user` stream no longer held: nobody asks for one (see the trait)
        };
        let fresh = match &stream {
            Stream::Channel(name) => {
                let mut fresh = false;
                let channel = self.channels.entry(Arc::clone(name)).or_insert_with(|| {
                    fresh = true;
                    ChannelState {
                        workers: 0,
                        state: StreamState::new(),
                    }
                });
                channel.workers |= 1u64.checked_shl(member.worker as u32).unwrap_or(0);
                fresh
            }
            Stream::User(id) => match self.users.get_mut(*id) {
                Some(user) if user.stream.is_none() => {
                    user.stream = Some(StreamState::new());
                    self.user_stream_count += 1;
                    true
                }
                _ => false,
            },
        };
        if fresh {
            self.link.pubsub(PubSubOp::Subscribe(vec![key.clone()]));
        }
        let waiter = Waiter {
            member,
            since,
            epoch,
        };
        let commands_up = self.commands_up;
        let Some(state) = self.state_mut(&key) else {
            return;
        };
        match state.live() {
            Some((e, last)) if state.listening() && commands_up => {
                let same_epoch =
                    waiter.epoch.as_deref() == Some(Epoch::from_bits(e).to_string().as_str());
                let immediate = match waiter.since {
                    None => Some(None),
                    Some(s) if same_epoch && s == last => Some(Some(true)),
                    Some(_) if !same_epoch => Some(Some(false)),
                    Some(_) => None,
                };
                match immediate {
                    Some(recovered) => {
                        self.events.push_back(Event::Subscribed {
                            member,
                            stream,
                            seq: last,
                            epoch: Epoch::from_bits(e),
                            recovered,
                            replay: Vec::new(),
                        });
                    }
                    None => self.read(&key, vec![waiter], false),
                }
            }
            _ if state.listening() => self.read(&key, vec![waiter], false),
            _ => state.busy().wait(vec![waiter]),
        }
        self.tidy(&key);
    }

    fn join_user(&mut self, member: Member, user: &str, since: Option<u64>, epoch: Option<String>) {
        let (id, _) = self.users.join(user, member);
        self.subscribe(member, Stream::User(id), since, epoch);
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn leave_user(&mut self, member: Member, user: UserId) {
        let Some(name) = self.users.get(user).map(|u| u.name().to_owned()) else {
            return;
        };
        if self.users.leave(user, member, 0) {
            // The stream lives in Redis; this node stops listening to it.
            self.remove_state(&StreamKey::user(&name));
            let count = &mut self.user_stream_count;
            self.users.expire(0, 0, |state| {
                if state.take().is_some() {
                    *count -= 1;
                }
            });
        }
    }

    fn idle(&mut self, worker: WorkerId, channel: &str) {
        let Some(c) = self.channels.get_mut(channel) else {
            return;
        };
        c.workers &= !1u64.checked_shl(worker as u32).unwrap_or(0);
        if c.workers == 0 && !c.state.has_waiting() {
            self.remove_state(&StreamKey::channel(channel));
        }
    }

    fn channel_workers(&self, channel: &str) -> u64 {
        self.channels.get(channel).map_or(0, |c| c.workers)
    }

    fn find_user(&self, name: &str) -> Option<UserId> {
        self.users.find(name)
    }

    fn user_members(&self, user: UserId) -> impl Iterator<Item = Member> + '_ {
        self.users.get(user).into_iter().flat_map(|u| u.members())
    }

    fn user_name(&self, user: UserId) -> Option<&str> {
        self.users.get(user).map(|u| u.name())
    }

    fn tick(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.pump();
        if self.retry_at.is_some_and(|due| due <= self.now) {
            self.retry_at = None;
            self.retry_reads();
        }
        let late: Vec<Arc<str>> = self
            .asks
            .iter()
            .filter(|(_, a)| a.deadline <= self.now)
            .map(|(id, _)| Arc::clone(id))
            .collect();
        for id in late {
            self.finish_ask(&id, true);
        }
        if self.now >= self.next_touch {
            self.next_touch =
                self.now + (self.history.ttl / TOUCH_DIVISOR).max(Duration::from_secs(1));
            let streams = self.stream_keys();
            if !streams.is_empty() && self.commands_up {
                self.link.send(Op::Touch {
                    streams,
                    ttl: self.history.ttl,
                });
            }
            self.retry_reads();
        }
    }

    fn next_tick(&self) -> Option<Duration> {
        let due = self
            .deadlines
            .front()
            .map(|(due, _)| due.saturating_duration_since(self.now));
        Some(due.map_or(Duration::from_secs(1), |d| d.min(Duration::from_secs(1))))
    }

    fn stream_counts(&self) -> (usize, usize) {
        (self.channels.len(), self.user_stream_count)
    }

    /// History is held by Redis, not here.
    fn history_size(&self) -> (usize, usize) {
        (0, 0)
    }

    fn is_reachable(&self) -> bool {
        self.is_up()
    }
}

impl<L: RedisLink> RedisBroker<L> {
    fn control(&mut self, entry: ControlEntry, request: Option<AckId>) {
        if !self.commands_up {
            if let Some(request) = request {
                self.events.push_back(Event::Failed { request });
            }
            return;
        }
        self.send(|id| Op::Control { id, entry }, Pending::Control { request });
    }
}

#[cfg(test)]
#[path = "broker_tests.rs"]
mod tests;
