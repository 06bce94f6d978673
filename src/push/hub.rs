//! The hub: the one owner of every stream's `seq` and epoch (channels and `$user` streams), and
//! the bookkeeping that turns workers' acknowledgements into push-API answers. Sans IO: the hub
//! thread (`crate::server::hub_loop`) feeds it API commands and worker messages and ships what
//! it returns.
//!
//! Ordering is the point of having one hub. Every message for a worker goes through that
//! worker's FIFO inbox, and the hub answers a `subscribe` through the same inbox, after every
//! message with a `seq` up to the top it reports and before every later one. The worker adds the
//! subscriber when the answer arrives, so a subscriber sees each message exactly once, whatever
//! publishes race the subscribe.
//!
//! History: every stream keeps its recent messages (already encoded frames) for replay after a
//! reconnect: at most `size` per channel (`user_size` per `$user` stream) and none older than
//! `ttl`. A global log in publish order lets the oldest go first, whether by age or because all
//! history together passed `max_bytes` (frames plus a fixed cost per message for the bookkeeping,
//! so API input alone cannot grow memory past it). A channel lives while it has subscribers or
//! history; a `$user` stream lives for `ttl` after its user's last connection left, so a user
//! who drops for a moment gets what was sent meanwhile. Such offline streams are charged to the
//! same `max_bytes` (a fixed cost each), and go oldest first with the messages when it is
//! full, so clients connecting under ever new names cannot grow the hub either. An epoch names one incarnation of a
//! stream: when a stream is forgotten and comes back, its seq restarts under a new epoch, and a
//! client asking to recover from the old one is told `recovered: false`.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::frame::{encode_shared, OpCode, SharedFrame};
use crate::push::client_protocol::{write_message, write_subscribed};
use crate::push::history::Held;
use crate::push::names::USER_CHANNEL;
use crate::push::users::{Member, Users};

pub use crate::push::users::UserId;

/// Which worker (event-loop thread).
pub type WorkerId = usize;
/// A connection, as its worker names it (opaque to the hub).
pub type ConnId = u64;
/// An API request waiting for workers' acknowledgements.
pub type AckId = u64;
/// A push-API connection on the hub thread (opaque to the hub).
pub type RequestId = u64;

/// The channel name broadcasts carry (not a stream: no seq, no history).
pub const BROADCAST_CHANNEL: &str = "$broadcast";

/// A stream a connection can be subscribed to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stream {
    Channel(Arc<str>),
    /// A user's own `$user` stream, once the hub has named it (see [`ToHub::JoinUser`]).
    User(UserId),
}

/// Who a delivery is for, on a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The worker's subscribers of a channel.
    Channel(Arc<str>),
    /// Connections of one user on this worker (the hub knows which).
    Conn(ConnId),
    Conns(Vec<ConnId>),
    /// Every push-endpoint connection.
    Everyone,
}

/// Hub → worker, through the worker's FIFO inbox.
#[derive(Debug, Clone)]
pub enum ToWorker {
    /// Queue `frame` for the target's local connections; acknowledge with the count if `ack`
    /// is set. (No seq is needed: FIFO order already puts it after every subscribe answer
    /// whose top is below it.)
    Deliver {
        target: Target,
        frame: SharedFrame,
        /// When the hub took the message (for the publish-latency histogram).
        at: Instant,
        ack: Option<AckId>,
    },
    /// The answer to a subscribe: send `frame` (the `subscribed` message) and `replay`, and
    /// from now on deliver the stream's messages with `seq` above `seq`.
    Subscribed {
        conn: ConnId,
        stream: Stream,
        seq: u64,
        frame: SharedFrame,
        replay: Vec<SharedFrame>,
    },
    /// Close these connections (one user's) with 4000; acknowledge with the count.
    Disconnect { conns: Vec<ConnId>, ack: AckId },
    /// Which users are subscribed to `channel` here?
    Presence { ack: AckId, channel: Arc<str> },
    /// The server is going away: send Close 1001 to every connection, spread over `spread`,
    /// wait at most `timeout` more for their close handshakes, then stop.
    Drain { spread: Duration, timeout: Duration },
}

impl ToWorker {
    /// Bytes this message pins in an inbox (for the inbox bound).
    pub fn weight(&self) -> usize {
        64 + match self {
            ToWorker::Deliver { frame, .. } => frame.len(),
            ToWorker::Subscribed { frame, replay, .. } => {
                frame.len() + replay.iter().map(|f| f.len()).sum::<usize>()
            }
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
        worker: WorkerId,
        conn: ConnId,
        user: Arc<str>,
        since: Option<u64>,
        epoch: Option<String>,
    },
    /// The connection is gone from the user's stream.
    LeaveUser {
        worker: WorkerId,
        conn: ConnId,
        user: UserId,
    },
    /// Subscribe to a channel, or ask a `$user` stream the connection is in for recovery.
    Subscribe {
        worker: WorkerId,
        conn: ConnId,
        stream: Stream,
        since: Option<u64>,
        epoch: Option<String>,
    },
    /// A client's publish (already authorised and rate-limited by the worker).
    Publish {
        channel: Arc<str>,
        data: String,
    },
    /// The worker has no subscribers (and no subscribe in flight) left for `channel`.
    Idle {
        worker: WorkerId,
        channel: Arc<str>,
    },
    /// A worker's count for an API request: deliveries, or connections closed.
    Ack {
        ack: AckId,
        count: u64,
    },
    PresenceReply {
        ack: AckId,
        users: Vec<UserId>,
    },
    /// Begin a graceful drain (a signal arrived, or `Server::drain` was called). Handled by
    /// the hub thread itself, not by [`Hub`].
    Drain,
}

/// A push-API request, validated (see `crate::push::api`).
#[derive(Debug, Clone)]
pub enum Command {
    Publish { channel: Arc<str>, data: String },
    Send { user: Arc<str>, data: String },
    Broadcast { data: String },
    Disconnect { user: Arc<str> },
    Presence { channel: Arc<str> },
}

/// An answer for an API connection: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub conn: RequestId,
    pub status: u16,
    pub body: String,
}

/// How much history to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Messages kept per channel (`--history-size`).
    pub size: usize,
    /// Oldest message kept, and how long a `$user` stream outlives its last connection
    /// (`--history-ttl`).
    pub ttl: Duration,
    /// Messages kept per `$user` stream (`--user-history-size`).
    pub user_size: usize,
    /// All history together, plus a fixed charge per offline `$user` stream
    /// (`--history-max-bytes`), oldest first.
    pub max_bytes: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            size: 100,
            ttl: Duration::from_secs(300),
            user_size: 20,
            max_bytes: 64 << 20,
        }
    }
}

/// Bytes charged per held message on top of its frame (the log entry and the stream's share,
/// rounded up), so that `max_bytes` bounds the hub's memory, not just the payloads: a stream
/// kept only for its history always has at least one charged message. Streams with
/// subscribers are bounded by the subscriptions themselves.
const LOG_ENTRY_COST: usize = 128;

/// Bytes charged to the same budget for each `$user` stream kept after its last connection
/// left (its entry, index slot and idle record, rounded up): offline users are kept for the
/// TTL, and a client that keeps connecting under new names must not grow that without bound.
const IDLE_USER_COST: usize = 128;

/// Names one incarnation of a stream: random per stream creation and per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch(u64);

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

/// One channel's state, kept small: a hub may hold very many channels.
#[derive(Debug)]
struct ChannelState {
    seq: u64,
    epoch: Epoch,
    /// Bit `w`: worker `w` has local subscribers (or a subscribe in flight).
    workers: u64,
    held: Held,
}

impl ChannelState {
    fn new(epoch: Epoch) -> ChannelState {
        ChannelState {
            seq: 0,
            epoch,
            workers: 0,
            held: Held::default(),
        }
    }

    fn set_worker(&mut self, worker: WorkerId, on: bool) {
        let bit = 1u64.checked_shl(worker as u32).unwrap_or(0);
        if on {
            self.workers |= bit;
        } else {
            self.workers &= !bit;
        }
    }

    /// Neither subscribers nor history: nothing to keep it for.
    fn is_unused(&self) -> bool {
        self.workers == 0 && self.held.is_empty()
    }
}

/// One published message in the global log, in publish order.
#[derive(Debug)]
struct LogEntry {
    stream: Stream,
    seq: u64,
    at: Instant,
}

#[derive(Debug)]
enum Waiting {
    Publish { seq: u64, epoch: Epoch },
    Send { seq: u64 },
    Broadcast,
    Disconnect,
    Presence { users: Vec<UserId> },
}

#[derive(Debug)]
struct Pending {
    conn: RequestId,
    remaining: usize,
    count: u64,
    waiting: Waiting,
}

/// The hub's state.
#[derive(Debug)]
pub struct Hub {
    workers: usize,
    history: HistoryConfig,
    now: Instant,
    log: VecDeque<LogEntry>,
    /// Frame bytes held plus the fixed costs (see `LOG_ENTRY_COST`).
    history_bytes: usize,
    history_messages: usize,
    last_sweep: Instant,
    /// The hub's clock for idle users, in whole seconds since `start`.
    start: Instant,
    channels: HashMap<Arc<str>, ChannelState>,
    users: Users,
    pending: HashMap<AckId, Pending>,
    next_ack: AckId,
    random: RandomState,
    epoch_counter: u64,
    outbox: Vec<(WorkerId, ToWorker)>,
    answers: Vec<Answer>,
    scratch: Vec<u8>,
}

impl Hub {
    pub fn new(workers: usize, history: HistoryConfig, now: Instant) -> Hub {
        Hub {
            workers,
            history,
            now,
            log: VecDeque::new(),
            history_bytes: 0,
            history_messages: 0,
            last_sweep: now,
            start: now,
            channels: HashMap::new(),
            users: Users::new(),
            pending: HashMap::new(),
            next_ack: 1,
            random: RandomState::new(),
            epoch_counter: 0,
            outbox: Vec::new(),
            answers: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Messages to put in workers' inboxes, in order.
    pub fn take_outbox(&mut self) -> std::vec::Drain<'_, (WorkerId, ToWorker)> {
        self.outbox.drain(..)
    }

    /// Is anything waiting in the outbox or among the answers?
    pub fn has_output(&self) -> bool {
        !self.outbox.is_empty() || !self.answers.is_empty()
    }

    /// Answers ready for API connections.
    pub fn take_answers(&mut self) -> std::vec::Drain<'_, Answer> {
        self.answers.drain(..)
    }

    /// Channels and user streams the hub tracks.
    pub fn stream_counts(&self) -> (usize, usize) {
        (self.channels.len(), self.users.len())
    }

    /// Messages held for replay, and the bytes charged for them (see [`HistoryConfig`]).
    pub fn history_size(&self) -> (usize, usize) {
        (self.history_messages, self.history_bytes)
    }

    /// Advances the hub's clock; about once a second, expires old history and idle streams.
    pub fn tick(&mut self, now: Instant) {
        self.now = now;
        if now.duration_since(self.last_sweep) >= Duration::from_secs(1) {
            self.last_sweep = now;
            self.sweep();
        }
    }

    /// How long the hub thread may sleep before [`Hub::tick`] has work.
    pub fn next_tick(&self) -> Option<Duration> {
        (!self.log.is_empty() || !self.users.is_empty() || !self.channels.is_empty())
            .then_some(Duration::from_secs(1))
    }

    /// The clock idle users are timed by: whole seconds since the hub started.
    fn clock(&self) -> u32 {
        u32::try_from(self.now.duration_since(self.start).as_secs()).unwrap_or(u32::MAX)
    }

    fn sweep(&mut self) {
        let ttl = self.history.ttl;
        while self
            .log
            .front()
            .is_some_and(|e| self.now.duration_since(e.at) >= ttl)
        {
            self.pop_log();
        }
        let ttl_secs = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX);
        let now = self.clock();
        // A user stream can go with messages still held (sent while it was idle); their log
        // entries stay behind, stale, but their charge is released here.
        let mut cleared = (0, 0);
        let gone = self
            .users
            .expire(now, ttl_secs, |held| add_counts(&mut cleared, held.clear()));
        self.uncharge(cleared, gone);
        self.channels.retain(|_, state| !state.is_unused());
    }

    /// Takes back the charge of held messages, as (count, frame bytes), and of offline user
    /// streams.
    fn uncharge(&mut self, (messages, bytes): (usize, usize), offline_users: usize) {
        self.history_messages = self.history_messages.saturating_sub(messages);
        self.history_bytes = self
            .history_bytes
            .saturating_sub(bytes + messages * LOG_ENTRY_COST + offline_users * IDLE_USER_COST);
    }

    /// Brings history and offline users' streams back under `max_bytes`, oldest first: the
    /// oldest held message or the user who left longest ago, whichever is older.
    fn enforce_budget(&mut self) {
        while self.history_bytes > self.history.max_bytes {
            let message_at = self.log.front().map(|e| e.at);
            let left_at = self
                .users
                .oldest_idle()
                .map(|secs| self.start + Duration::from_secs(u64::from(secs)));
            let user_first = match (message_at, left_at) {
                (Some(m), Some(u)) => u < m,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (None, None) => break,
            };
            if !user_first {
                self.pop_log();
                continue;
            }
            let mut cleared = (0, 0);
            if !self.users.drop_oldest_idle(|held| cleared = held.clear()) {
                break;
            }
            self.uncharge(cleared, 1);
        }
    }

    fn held(&self, stream: &Stream) -> Option<&Held> {
        match stream {
            Stream::Channel(name) => self.channels.get(name).map(|s| &s.held),
            Stream::User(id) => self.users.get(*id).map(|u| &u.held),
        }
    }

    fn held_mut(&mut self, stream: &Stream) -> Option<&mut Held> {
        match stream {
            Stream::Channel(name) => self.channels.get_mut(name).map(|s| &mut s.held),
            Stream::User(id) => self.users.get_mut(*id).map(|u| &mut u.held),
        }
    }

    /// Drops log entries whose message is no longer held (trimmed by a per-stream limit), so
    /// the log stays within twice the held messages: amortised O(1) per publish.
    fn compact_log(&mut self) {
        let mut log = std::mem::take(&mut self.log);
        log.retain(|entry| {
            self.held(&entry.stream)
                .and_then(Held::oldest_seq)
                .is_some_and(|oldest| oldest <= entry.seq)
        });
        self.log = log;
    }

    /// Drops the oldest log entry and, if its message is still held, the message.
    fn pop_log(&mut self) {
        let Some(entry) = self.log.pop_front() else {
            return;
        };
        let Some(held) = self.held_mut(&entry.stream) else {
            return;
        };
        if held.oldest_seq() == Some(entry.seq) {
            if let Some(frame) = held.pop_oldest() {
                self.uncharge((1, frame.len()), 0);
            }
        }
        // A channel nobody listens to is kept only for its history.
        if let Stream::Channel(name) = &entry.stream {
            if self.channels.get(name).is_some_and(ChannelState::is_unused) {
                self.channels.remove(name);
            }
        }
    }

    /// Keeps `frame` as message `seq` of `stream` and enforces every history bound.
    fn keep(&mut self, stream: Stream, seq: u64, frame: &SharedFrame) {
        let limit = match stream {
            Stream::Channel(_) => self.history.size,
            Stream::User(_) => self.history.user_size,
        };
        if limit == 0 {
            return;
        }
        let Some(held) = self.held_mut(&stream) else {
            return;
        };
        let over = held.push(seq, frame.clone()) > limit;
        // Trimmed by the per-stream limit: its log entry stays (stale) but is no longer
        // charged; `compact_log` drops such entries in bulk.
        let trimmed = if over { held.pop_oldest() } else { None };
        self.history_bytes += frame.len() + LOG_ENTRY_COST;
        self.history_messages += 1;
        if let Some(old) = trimmed {
            self.uncharge((1, old.len()), 0);
        }
        self.log.push_back(LogEntry {
            stream,
            seq,
            at: self.now,
        });
        if self.log.len() > 2 * self.history_messages + 1024 {
            self.compact_log();
        }
        self.enforce_budget();
    }

    /// The channel's state, created (with a fresh epoch) if it doesn't exist. The map's key
    /// is the channel's own `Arc`, shared with the worker that named it (no copy).
    fn channel_state(&mut self, name: &Arc<str>) -> &mut ChannelState {
        let fresh = self.new_epoch();
        self.channels
            .entry(Arc::clone(name))
            .or_insert_with(|| ChannelState::new(fresh))
    }

    /// Which workers hold `user`'s connections, and which connections each.
    fn user_targets(&self, user: &str) -> Vec<(WorkerId, Vec<ConnId>)> {
        let mut targets: Vec<(WorkerId, Vec<ConnId>)> = Vec::new();
        let members = self.users.find(user).and_then(|id| self.users.get(id));
        for Member { worker, conn } in members.into_iter().flat_map(|u| u.members()) {
            match targets.iter_mut().find(|(w, _)| *w == worker) {
                Some((_, conns)) => conns.push(conn),
                None => targets.push((worker, vec![conn])),
            }
        }
        targets.sort_unstable_by_key(|&(w, _)| w);
        targets
    }

    /// How many workers a command will be sent to (for the inbox capacity check).
    pub fn fan_out(&self, command: &Command) -> Vec<WorkerId> {
        match command {
            Command::Publish { channel, .. } | Command::Presence { channel } => {
                workers_of(self.channels.get(channel))
            }
            Command::Send { user, .. } | Command::Disconnect { user } => {
                // Only which workers: the connection lists are built once, by `command`.
                let members = self.users.find(user).and_then(|id| self.users.get(id));
                let mask = members
                    .into_iter()
                    .flat_map(|u| u.members())
                    .fold(0u64, |mask, m| {
                        mask | 1u64.checked_shl(m.worker as u32).unwrap_or(0)
                    });
                workers_in(mask)
            }
            Command::Broadcast { .. } => (0..self.workers).collect(),
        }
    }

    /// Runs an API command for `conn`; the answer comes out of [`Hub::take_answers`], at once
    /// or once every worker involved has acknowledged.
    pub fn command(&mut self, conn: RequestId, command: Command) {
        let ack = self.next_ack;
        self.next_ack += 1;
        let mut remaining = 0;
        let waiting = match command {
            Command::Publish { channel, data } => {
                let (seq, epoch, frame) = self.publish(&channel, &data);
                remaining = self.deliver_to_channel(&channel, &frame, Some(ack));
                Waiting::Publish { seq, epoch }
            }
            Command::Send { user, data } => {
                let targets = self.user_targets(&user);
                let seq = match self.users.find(&user) {
                    Some(id) => {
                        let seq = self.users.get_mut(id).map_or(0, |u| {
                            u.seq += 1;
                            u.seq
                        });
                        let frame = self.encode(USER_CHANNEL, Some(seq), &data);
                        self.keep(Stream::User(id), seq, &frame);
                        for (w, conns) in targets {
                            let target = match conns[..] {
                                [one] => Target::Conn(one),
                                _ => Target::Conns(conns),
                            };
                            self.deliver(w, target, &frame, Some(ack));
                            remaining += 1;
                        }
                        seq
                    }
                    // The user was not connected within the TTL: nothing kept, nothing sent.
                    None => 0,
                };
                Waiting::Send { seq }
            }
            Command::Broadcast { data } => {
                let frame = self.encode(BROADCAST_CHANNEL, None, &data);
                for w in 0..self.workers {
                    self.deliver(w, Target::Everyone, &frame, Some(ack));
                    remaining += 1;
                }
                Waiting::Broadcast
            }
            Command::Disconnect { user } => {
                for (w, conns) in self.user_targets(&user) {
                    self.outbox.push((w, ToWorker::Disconnect { conns, ack }));
                    remaining += 1;
                }
                Waiting::Disconnect
            }
            Command::Presence { channel } => {
                for w in workers_of(self.channels.get(&channel)) {
                    let channel = Arc::clone(&channel);
                    self.outbox.push((w, ToWorker::Presence { ack, channel }));
                    remaining += 1;
                }
                Waiting::Presence { users: Vec::new() }
            }
        };
        let pending = Pending {
            conn,
            remaining,
            count: 0,
            waiting,
        };
        if pending.remaining == 0 {
            self.answer(pending);
        } else {
            self.pending.insert(ack, pending);
        }
    }

    fn deliver(
        &mut self,
        worker: WorkerId,
        target: Target,
        frame: &SharedFrame,
        ack: Option<AckId>,
    ) {
        let frame = frame.clone();
        let at = self.now;
        self.outbox.push((
            worker,
            ToWorker::Deliver {
                target,
                frame,
                at,
                ack,
            },
        ));
    }

    /// Sends a channel message to every worker with subscribers; returns how many.
    fn deliver_to_channel(
        &mut self,
        channel: &Arc<str>,
        frame: &SharedFrame,
        ack: Option<AckId>,
    ) -> usize {
        let workers = workers_of(self.channels.get(channel));
        for &w in &workers {
            self.deliver(w, Target::Channel(Arc::clone(channel)), frame, ack);
        }
        workers.len()
    }

    /// Handles a worker's message.
    pub fn on_message(&mut self, message: ToHub) {
        match message {
            ToHub::JoinUser {
                worker,
                conn,
                user,
                since,
                epoch,
            } => {
                let (id, was_idle) = self.users.join(&user, Member { worker, conn });
                if was_idle {
                    self.uncharge((0, 0), 1);
                }
                self.subscribe(worker, conn, Stream::User(id), since, epoch);
            }
            ToHub::LeaveUser { worker, conn, user } => {
                let now = self.clock();
                if self.users.leave(user, Member { worker, conn }, now) {
                    self.history_bytes += IDLE_USER_COST;
                    self.enforce_budget();
                }
            }
            ToHub::Subscribe {
                worker,
                conn,
                stream,
                since,
                epoch,
            } => self.subscribe(worker, conn, stream, since, epoch),
            ToHub::Publish { channel, data } => {
                let (_, _, frame) = self.publish(&channel, &data);
                self.deliver_to_channel(&channel, &frame, None);
            }
            ToHub::Idle { worker, channel } => {
                if let Some(state) = self.channels.get_mut(&channel) {
                    state.set_worker(worker, false);
                    // A channel without history is forgotten at once (its next incarnation
                    // gets a new epoch).
                    if state.is_unused() {
                        self.channels.remove(&channel);
                    }
                }
            }
            ToHub::Ack { ack, count } => self.acknowledge(ack, count, Vec::new()),
            ToHub::PresenceReply { ack, users } => self.acknowledge(ack, 0, users),
            ToHub::Drain => {}
        }
    }

    fn acknowledge(&mut self, ack: AckId, count: u64, users: Vec<UserId>) {
        let Some(pending) = self.pending.get_mut(&ack) else {
            return;
        };
        pending.count += count;
        if let Waiting::Presence { users: all } = &mut pending.waiting {
            all.extend(users);
        }
        pending.remaining -= 1;
        if pending.remaining == 0 {
            if let Some(pending) = self.pending.remove(&ack) {
                self.answer(pending);
            }
        }
    }

    fn answer(&mut self, pending: Pending) {
        let n = pending.count;
        let body = match pending.waiting {
            Waiting::Publish { seq, epoch } => {
                format!("{{\"seq\":{seq},\"epoch\":\"{epoch}\",\"delivered\":{n}}}")
            }
            Waiting::Send { seq } => format!("{{\"seq\":{seq},\"delivered\":{n}}}"),
            Waiting::Broadcast => format!("{{\"delivered\":{n}}}"),
            Waiting::Disconnect => format!("{{\"closed\":{n}}}"),
            Waiting::Presence { users } => {
                let mut list: Vec<&str> = users
                    .iter()
                    .filter_map(|&id| self.users.get(id))
                    .map(|u| u.name())
                    .collect();
                list.sort_unstable();
                list.dedup();
                format!(
                    "{{\"users\":{},\"count\":{}}}",
                    serde_json::to_string(&list).unwrap_or_else(|_| "[]".to_owned()),
                    list.len()
                )
            }
        };
        self.answers.push(Answer {
            conn: pending.conn,
            status: 200,
            body,
        });
    }

    fn subscribe(
        &mut self,
        worker: WorkerId,
        conn: ConnId,
        stream: Stream,
        since: Option<u64>,
        epoch: Option<String>,
    ) {
        let (seq, stream_epoch) = match &stream {
            Stream::Channel(name) => {
                let state = self.channel_state(name);
                state.set_worker(worker, true);
                (state.seq, state.epoch)
            }
            Stream::User(id) => match self.users.get(*id) {
                Some(user) => (user.seq, Epoch(self.users.epoch_bits(*id))),
                // Only a member asks, and a stream with members stays: nothing to answer.
                None => return,
            },
        };
        let stream_epoch = stream_epoch.to_string();
        // Recovery is promised only when this is the same incarnation and the history still
        // holds every message after `since`.
        let mut replay = Vec::new();
        let recovered = since.map(|since| {
            if epoch.as_deref() != Some(stream_epoch.as_str()) {
                return false;
            }
            match self.held(&stream).and_then(|held| held.recover(seq, since)) {
                Some(frames) => {
                    replay = frames;
                    true
                }
                None => false,
            }
        });
        let channel = match &stream {
            Stream::Channel(name) => &**name,
            Stream::User(_) => USER_CHANNEL,
        };
        self.scratch.clear();
        write_subscribed(&mut self.scratch, channel, &stream_epoch, seq, recovered);
        let frame = encode_shared(OpCode::Text, &self.scratch);
        self.outbox.push((
            worker,
            ToWorker::Subscribed {
                conn,
                stream,
                seq,
                frame,
                replay,
            },
        ));
    }

    /// Assigns the next seq of `channel` (creating it if needed), encodes the message once
    /// and keeps it in the channel's history.
    fn publish(&mut self, channel: &Arc<str>, data: &str) -> (u64, Epoch, SharedFrame) {
        let state = self.channel_state(channel);
        state.seq += 1;
        let (seq, epoch) = (state.seq, state.epoch);
        let frame = self.encode(channel, Some(seq), data);
        self.keep(Stream::Channel(Arc::clone(channel)), seq, &frame);
        // Nobody listens and nothing is kept (history off): don't hold the channel.
        if self
            .channels
            .get(channel)
            .is_some_and(ChannelState::is_unused)
        {
            self.channels.remove(channel);
        }
        (seq, epoch, frame)
    }

    fn encode(&mut self, channel: &str, seq: Option<u64>, data: &str) -> SharedFrame {
        self.scratch.clear();
        write_message(&mut self.scratch, channel, seq, data);
        encode_shared(OpCode::Text, &self.scratch)
    }

    /// A random epoch: a new one for every stream incarnation and every process.
    fn new_epoch(&mut self) -> Epoch {
        self.epoch_counter += 1;
        let mut hasher = self.random.build_hasher();
        hasher.write_u64(self.epoch_counter);
        Epoch(hasher.finish())
    }
}

fn workers_of(state: Option<&ChannelState>) -> Vec<WorkerId> {
    workers_in(state.map_or(0, |s| s.workers))
}

/// The workers whose bits are set in `mask`.
fn workers_in(mask: u64) -> Vec<WorkerId> {
    (0..64).filter(|w| mask & (1u64 << w) != 0).collect()
}

/// Adds a (count, bytes) pair to a running total.
fn add_counts(total: &mut (usize, usize), (n, bytes): (usize, usize)) {
    total.0 += n;
    total.1 += bytes;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(name: &str) -> Stream {
        Stream::Channel(Arc::from(name))
    }

    fn subscribed_seq(msg: &ToWorker) -> u64 {
        match msg {
            ToWorker::Subscribed { seq, .. } => *seq,
            other => panic!("not subscribed: {other:?}"),
        }
    }

    #[test]
    fn publish_reaches_only_workers_with_subscribers_and_answers_after_acks() {
        let mut hub = Hub::new(2, HistoryConfig::default(), Instant::now());
        hub.on_message(ToHub::Subscribe {
            worker: 1,
            conn: 7,
            stream: ch("news"),
            since: None,
            epoch: None,
        });
        let out: Vec<_> = hub.take_outbox().collect();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, 1);
        assert_eq!(subscribed_seq(&out[0].1), 0);

        hub.command(
            99,
            Command::Publish {
                channel: Arc::from("news"),
                data: "{\"a\":1}".into(),
            },
        );
        let out: Vec<_> = hub.take_outbox().collect();
        assert_eq!(out.len(), 1, "only worker 1 has subscribers");
        let (w, ToWorker::Deliver { frame, ack, .. }) = &out[0] else {
            panic!("deliver expected");
        };
        assert_eq!(*w, 1);
        assert!(std::str::from_utf8(&frame[2..])
            .unwrap()
            .contains("\"seq\":1"));
        assert_eq!(hub.take_answers().count(), 0, "waits for the ack");
        hub.on_message(ToHub::Ack {
            ack: ack.unwrap(),
            count: 3,
        });
        let answers: Vec<_> = hub.take_answers().collect();
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].conn, 99);
        assert!(
            answers[0].body.contains("\"delivered\":3"),
            "{}",
            answers[0].body
        );
        assert!(answers[0].body.contains("\"seq\":1"));
    }

    #[test]
    fn publish_with_no_subscribers_answers_at_once_and_is_kept_as_history() {
        let mut hub = Hub::new(2, HistoryConfig::default(), Instant::now());
        hub.command(
            1,
            Command::Publish {
                channel: Arc::from("empty"),
                data: "1".into(),
            },
        );
        assert_eq!(hub.take_outbox().count(), 0);
        let answers: Vec<_> = hub.take_answers().collect();
        assert!(answers[0].body.contains("\"delivered\":0"));
        assert_eq!(hub.stream_counts(), (1, 0));
        assert_eq!(hub.history_size().0, 1);

        // Without history, nothing is held.
        let off = HistoryConfig {
            size: 0,
            ..HistoryConfig::default()
        };
        let mut hub = Hub::new(2, off, Instant::now());
        hub.command(
            1,
            Command::Publish {
                channel: Arc::from("empty"),
                data: "1".into(),
            },
        );
        assert_eq!(hub.stream_counts(), (0, 0));
        assert_eq!(hub.history_size(), (0, 0));
    }

    #[test]
    fn idle_workers_are_dropped_and_streams_forgotten() {
        let mut hub = Hub::new(2, HistoryConfig::default(), Instant::now());
        for worker in [0, 1] {
            hub.on_message(ToHub::Subscribe {
                worker,
                conn: 1,
                stream: ch("c"),
                since: None,
                epoch: None,
            });
        }
        hub.take_outbox().for_each(drop);
        hub.on_message(ToHub::Idle {
            worker: 0,
            channel: Arc::from("c"),
        });
        let cmd = Command::Publish {
            channel: Arc::from("c"),
            data: "1".into(),
        };
        assert_eq!(hub.fan_out(&cmd), vec![1]);
        hub.on_message(ToHub::Idle {
            worker: 1,
            channel: Arc::from("c"),
        });
        assert_eq!(hub.stream_counts(), (0, 0));
    }

    fn sub(since: Option<u64>, epoch: Option<&str>) -> ToHub {
        ToHub::Subscribe {
            worker: 0,
            conn: 1,
            stream: ch("n"),
            since,
            epoch: epoch.map(str::to_owned),
        }
    }

    /// (recovered, seq, replay length, epoch) of the one Subscribed in the outbox.
    fn answer(hub: &mut Hub) -> (Option<bool>, u64, usize, String) {
        let out: Vec<_> = hub.take_outbox().collect();
        let ToWorker::Subscribed {
            frame, replay, seq, ..
        } = &out[0].1
        else {
            panic!("subscribed expected")
        };
        let v: serde_json::Value = serde_json::from_slice(&frame[2..]).unwrap();
        (
            v["recovered"].as_bool(),
            *seq,
            replay.len(),
            v["epoch"].as_str().unwrap().to_owned(),
        )
    }

    fn publish_n(hub: &mut Hub, n: usize) {
        for _ in 0..n {
            hub.on_message(ToHub::Publish {
                channel: Arc::from("n"),
                data: "0".into(),
            });
        }
        hub.take_outbox().for_each(drop);
    }

    #[test]
    fn recovery_replays_exactly_what_was_missed() {
        let mut hub = Hub::new(1, HistoryConfig::default(), Instant::now());
        hub.on_message(sub(None, None));
        let (recovered, seq, _, epoch) = answer(&mut hub);
        assert_eq!((recovered, seq), (None, 0));
        publish_n(&mut hub, 5);
        hub.on_message(sub(Some(2), Some(&epoch)));
        assert_eq!(answer(&mut hub), (Some(true), 5, 3, epoch.clone()));
        hub.on_message(sub(Some(5), Some(&epoch)));
        assert_eq!(answer(&mut hub), (Some(true), 5, 0, epoch.clone()));
        // A wrong epoch, a since from the future, or no epoch: not recovered, no replay.
        hub.on_message(sub(Some(2), Some("other")));
        assert_eq!(answer(&mut hub).0, Some(false));
        hub.on_message(sub(Some(9), Some(&epoch)));
        assert_eq!(answer(&mut hub).0, Some(false));
        hub.on_message(sub(Some(2), None));
        assert_eq!(answer(&mut hub).2, 0);
    }

    #[test]
    fn a_gap_longer_than_history_is_not_recovered() {
        let small = HistoryConfig {
            size: 3,
            ..HistoryConfig::default()
        };
        let mut hub = Hub::new(1, small, Instant::now());
        hub.on_message(sub(None, None));
        let epoch = answer(&mut hub).3;
        publish_n(&mut hub, 10);
        hub.on_message(sub(Some(6), Some(&epoch)));
        assert_eq!(answer(&mut hub).0, Some(false), "7 is gone");
        hub.on_message(sub(Some(7), Some(&epoch)));
        assert_eq!(answer(&mut hub), (Some(true), 10, 3, epoch));
    }

    #[test]
    fn history_expires_and_the_channel_with_it() {
        let start = Instant::now();
        let config = HistoryConfig {
            ttl: Duration::from_secs(60),
            ..HistoryConfig::default()
        };
        let mut hub = Hub::new(1, config, start);
        publish_n(&mut hub, 2);
        assert_eq!(hub.history_size().0, 2);
        hub.tick(start + Duration::from_secs(30));
        assert_eq!(hub.history_size().0, 2);
        hub.tick(start + Duration::from_secs(61));
        assert_eq!(hub.history_size(), (0, 0));
        assert_eq!(hub.stream_counts(), (0, 0));
        // The channel comes back under a new epoch, so old positions don't recover.
        hub.on_message(sub(Some(2), Some("whatever")));
        assert_eq!(answer(&mut hub).0, Some(false));
    }

    #[test]
    fn max_bytes_evicts_oldest_first_across_channels() {
        let config = HistoryConfig {
            max_bytes: 4096,
            ..HistoryConfig::default()
        };
        let mut hub = Hub::new(1, config, Instant::now());
        for i in 0..200 {
            let channel: Arc<str> = Arc::from(format!("c{}", i % 7).as_str());
            hub.on_message(ToHub::Publish {
                channel,
                data: "\"0123456789\"".into(),
            });
        }
        let (messages, bytes) = hub.history_size();
        assert!(bytes <= 4096, "{bytes}");
        assert!(messages > 0 && messages < 200, "{messages}");
        // Many distinct channels from the API alone stay within the budget too.
        for i in 0..10_000 {
            let channel: Arc<str> = Arc::from(format!("x{i}").as_str());
            hub.on_message(ToHub::Publish {
                channel,
                data: "1".into(),
            });
        }
        assert!(hub.history_size().1 <= 4096);
        assert!(hub.stream_counts().0 < 100, "{:?}", hub.stream_counts());
    }

    #[test]
    fn messages_trimmed_by_the_channel_limit_release_the_global_budget() {
        let config = HistoryConfig {
            size: 10,
            max_bytes: 100_000,
            ..HistoryConfig::default()
        };
        let mut hub = Hub::new(1, config, Instant::now());
        hub.on_message(ToHub::Publish {
            channel: Arc::from("quiet"),
            data: "1".into(),
        });
        for _ in 0..5_000 {
            hub.on_message(ToHub::Publish {
                channel: Arc::from("busy"),
                data: "\"0123456789\"".into(),
            });
        }
        hub.take_outbox().for_each(drop);
        let (messages, bytes) = hub.history_size();
        assert_eq!(messages, 11);
        assert!(bytes < 11 * 300, "{bytes}");
        assert_eq!(
            hub.stream_counts().0,
            2,
            "the quiet channel keeps its history"
        );
        assert!(hub.log.len() <= 2 * messages + 1024, "{}", hub.log.len());
    }

    fn join(
        hub: &mut Hub,
        worker: WorkerId,
        conn: ConnId,
        user: &str,
        since: Option<u64>,
        epoch: Option<String>,
    ) -> (UserId, String, usize) {
        hub.on_message(ToHub::JoinUser {
            worker,
            conn,
            user: Arc::from(user),
            since,
            epoch,
        });
        let out: Vec<_> = hub.take_outbox().collect();
        let ToWorker::Subscribed {
            frame,
            stream: Stream::User(id),
            replay,
            ..
        } = &out[0].1
        else {
            panic!("subscribed to a user expected: {out:?}")
        };
        let v: serde_json::Value = serde_json::from_slice(&frame[2..]).unwrap();
        assert_eq!(v["channel"], "$user");
        (*id, v["epoch"].as_str().unwrap().to_owned(), replay.len())
    }

    #[test]
    fn user_stream_outlives_its_last_connection_for_the_ttl() {
        let start = Instant::now();
        let config = HistoryConfig {
            ttl: Duration::from_secs(60),
            ..HistoryConfig::default()
        };
        let mut hub = Hub::new(1, config, start);
        let send = |hub: &mut Hub| {
            hub.command(
                9,
                Command::Send {
                    user: Arc::from("u1"),
                    data: "1".into(),
                },
            );
            hub.take_answers().next().unwrap().body
        };
        // Never connected: nothing kept.
        assert_eq!(send(&mut hub), "{\"seq\":0,\"delivered\":0}");
        let (id, epoch, _) = join(&mut hub, 0, 1, "u1", None, None);
        hub.on_message(ToHub::LeaveUser {
            worker: 0,
            conn: 1,
            user: id,
        });
        // Offline for a moment: kept, and recovered on reconnect.
        hub.tick(start + Duration::from_secs(10));
        assert!(send(&mut hub).starts_with("{\"seq\":1,"));
        assert_eq!(hub.history_size().0, 1);
        let (again, _, replayed) = join(&mut hub, 0, 2, "u1", Some(0), Some(epoch.clone()));
        assert_eq!((again, replayed), (id, 1));
        // Another message while offline, then gone for longer than the TTL: the stream is
        // dropped with its history (and the history's charge); sends keep nothing.
        hub.on_message(ToHub::LeaveUser {
            worker: 0,
            conn: 2,
            user: id,
        });
        hub.tick(start + Duration::from_secs(50));
        assert!(send(&mut hub).starts_with("{\"seq\":2,"));
        assert_eq!(hub.history_size().0, 2);
        // At 71 s the message from 50 s is still young, but the stream (idle since 10 s) goes,
        // and takes its charge with it.
        hub.tick(start + Duration::from_secs(71));
        assert_eq!(hub.stream_counts(), (0, 0));
        assert_eq!(hub.history_size(), (0, 0));
        hub.tick(start + Duration::from_secs(200));
        assert_eq!(hub.history_size(), (0, 0));
        assert_eq!(send(&mut hub), "{\"seq\":0,\"delivered\":0}");
        // Back under a new epoch: an old position is not recovered.
        let (_, fresh, replayed) = join(&mut hub, 0, 3, "u1", Some(2), Some(epoch.clone()));
        assert_ne!(fresh, epoch);
        assert_eq!(replayed, 0);
    }

    #[test]
    fn user_sends_reach_every_connection_of_the_user_by_worker() {
        let mut hub = Hub::new(2, HistoryConfig::default(), Instant::now());
        let (id, _, _) = join(&mut hub, 0, 10, "ann", None, None);
        join(&mut hub, 1, 20, "ann", None, None);
        join(&mut hub, 1, 21, "ann", None, None);
        join(&mut hub, 1, 30, "bob", None, None);
        let send = Command::Send {
            user: Arc::from("ann"),
            data: "1".into(),
        };
        assert_eq!(hub.fan_out(&send), vec![0, 1]);
        hub.command(1, send);
        let targets: Vec<_> = hub
            .take_outbox()
            .map(|(w, m)| match m {
                ToWorker::Deliver {
                    target: Target::Conns(mut conns),
                    ..
                } => {
                    conns.sort_unstable();
                    (w, Target::Conns(conns))
                }
                ToWorker::Deliver { target, .. } => (w, target),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            targets,
            [(0, Target::Conn(10)), (1, Target::Conns(vec![20, 21]))]
        );
        // Disconnect goes to the same connections.
        hub.on_message(ToHub::LeaveUser {
            worker: 1,
            conn: 20,
            user: id,
        });
        hub.command(
            2,
            Command::Disconnect {
                user: Arc::from("ann"),
            },
        );
        let conns: Vec<_> = hub
            .take_outbox()
            .map(|(w, m)| match m {
                ToWorker::Disconnect { conns, .. } => (w, conns),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(conns, [(0, vec![10]), (1, vec![21])]);
    }

    #[test]
    fn presence_merges_workers() {
        let mut hub = Hub::new(2, HistoryConfig::default(), Instant::now());
        let (a, _, _) = join(&mut hub, 0, 1, "a", None, None);
        let (b, _, _) = join(&mut hub, 0, 2, "b", None, None);
        for worker in [0, 1] {
            hub.on_message(ToHub::Subscribe {
                worker,
                conn: 1,
                stream: ch("room"),
                since: None,
                epoch: None,
            });
        }
        hub.take_outbox().for_each(drop);
        hub.command(
            5,
            Command::Presence {
                channel: Arc::from("room"),
            },
        );
        let acks: Vec<AckId> = hub
            .take_outbox()
            .map(|(_, m)| match m {
                ToWorker::Presence { ack, .. } => ack,
                _ => panic!(),
            })
            .collect();
        hub.on_message(ToHub::PresenceReply {
            ack: acks[0],
            users: vec![b, a],
        });
        hub.on_message(ToHub::PresenceReply {
            ack: acks[1],
            users: vec![a],
        });
        let answers: Vec<_> = hub.take_answers().collect();
        assert_eq!(answers[0].body, "{\"users\":[\"a\",\"b\"],\"count\":2}");
    }

    #[test]
    fn offline_users_share_the_history_budget_oldest_first() {
        let start = Instant::now();
        let config = HistoryConfig {
            max_bytes: 10 * IDLE_USER_COST,
            ..HistoryConfig::default()
        };
        let mut hub = Hub::new(1, config, start);
        // 50 users connect and leave, one a second: only the 10 who left last are kept.
        let mut ids = Vec::new();
        for i in 0..50u64 {
            hub.tick(start + Duration::from_secs(i));
            let (id, _, _) = join(&mut hub, 0, i, &format!("u{i}"), None, None);
            hub.on_message(ToHub::LeaveUser {
                worker: 0,
                conn: i,
                user: id,
            });
            ids.push(id);
            assert!(hub.history_size().1 <= 10 * IDLE_USER_COST);
        }
        assert_eq!(hub.stream_counts().1, 10);
        assert_eq!(hub.users.idle_count(), 10);
        assert!(hub.users.get(ids[39]).is_none() && hub.users.get(ids[40]).is_some());
        // Coming back takes a stream off the budget; leaving again puts it back.
        let (again, _, _) = join(&mut hub, 0, 99, "u45", None, None);
        assert_eq!(again, ids[45]);
        assert_eq!(hub.history_size().1, 9 * IDLE_USER_COST);
        hub.on_message(ToHub::LeaveUser {
            worker: 0,
            conn: 99,
            user: again,
        });
        assert_eq!(hub.history_size().1, 10 * IDLE_USER_COST);
        // Everything expires with the TTL and the charge goes with it.
        hub.tick(start + Duration::from_secs(49) + HistoryConfig::default().ttl);
        hub.tick(start + Duration::from_secs(51) + HistoryConfig::default().ttl);
        assert_eq!(hub.stream_counts(), (0, 0));
        assert_eq!(hub.history_size(), (0, 0));
        assert_eq!(hub.users.idle_count(), 0);
    }
}
