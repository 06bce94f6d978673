//! The worker side of the push layer: who on this worker listens to what, and the client's
//! JSON protocol. Sans IO: the [`Router`] never touches a socket or a queue; it reads and
//! changes the connections' [`PushConn`] state (found through [`PushConns`]) and returns what
//! the worker must do as data — [`Effect`]s (text replies, messages for the hub, a new token
//! expiry), the [`Recipients`] of a delivery, the [`Join`] a subscribe answer makes.
//!
//! # Who listens to a channel, and why no message is lost or doubled
//!
//! A connection's interest in a channel lives in three places on its worker, kept in step
//! here: its [`Subscription`] (in its `PushConn`), the channel's member list in the table, and
//! its subscribe requests waiting for the hub. (The hub keeps the fourth: which workers want
//! the channel at all.) The rules:
//!
//! 1. A `subscribe` adds the [`Subscription`] at once (it counts toward
//!    `--max-subscriptions`) and asks the hub ([`ToHub::Subscribe`]), counting the request in
//!    flight for the channel (so the channel is not idle here) and for the connection. A
//!    connection has at most [`MAX_SUBSCRIBES_IN_FLIGHT`] requests at the hub; the ones after
//!    wait in its queue, in the order sent, and go one per answer. None is refused for
//!    arriving in a burst: the queue holds at most `--max-subscriptions` requests (more: 429
//!    naming the channel), and it exists only while the connection has requests waiting, so
//!    an idle connection holds none. A request whose channel was unsubscribed while it waited
//!    is still asked and answered in its turn, but joins nothing. Every subscribe is answered,
//!    and every reply to a later op comes after the answers of the subscribes before it.
//! 2. The connection is **not** a member yet: a message the hub delivers meanwhile is not
//!    queued for it. The hub answers through the same FIFO inbox as its deliveries, after
//!    every message up to the top `seq` it reports and before every later one.
//! 3. The answer ([`Router::subscribed`]) makes the connection a member. The worker then
//!    queues the `subscribed` frame and the replay the router allows, and every later
//!    delivery comes live: in order, no gap, no duplicate.
//! 4. A connection's join point ([`JoinedAt`]) is the earliest top it was answered at. A
//!    recovery on a channel it already receives (a second `subscribe` with `since`) gets only
//!    the replayed messages at or below its join point: the rest reached it live.
//! 5. The channel goes idle here ([`ToHub::Idle`]) only when it has neither members nor
//!    subscribes in flight, so the hub never stops routing a channel to a worker where a
//!    subscriber is about to join.
//!
//! A connection's `$user` stream works the same way, except that the hub makes it a member
//! when asked ([`ToHub::JoinUser`] at the upgrade) and names the stream in its answer; a
//! connection that left before the answer is taken out again ([`ToHub::LeaveUser`]). Its
//! recovery (`since`/`epoch`) comes with the upgrade request and goes with the join, so the
//! first frame is the recovered answer, then the replay, then live messages. A `subscribe` on
//! `$user` with `since` later would be answered after live messages it must precede (a send
//! can land between the join and the op): it is refused with 400, naming the channel; one
//! without `since` only reports the stream's top. `$user` cannot be unsubscribed (400).

mod push_conn;

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::message::MessageKind;
use crate::push::auth::{verify_hs256, Claims, Grants};
use crate::push::client_protocol::{
    parse_client_op, write_error, write_unsubscribed, ClientOp, OpError,
};
use crate::push::hub::{AckId, Stream, Target, ToHub, UserId, WorkerId};
use crate::push::json_depth::{data_too_deep, DATA_TOO_DEEP};
use crate::push::names::USER_CHANNEL;
use crate::push::subscribers::{Slot, Table};
use crate::tick::Tick;

pub use crate::push::hub::ConnId;
pub use push_conn::{JoinedAt, PushConn, Subscription, TokenGrant};

/// Subscribe requests (the `$user` join included) one connection may have at the hub at
/// once; later ones wait in the connection's queue until an answer frees a place (rule 1).
pub const MAX_SUBSCRIBES_IN_FLIGHT: u8 = 16;

/// The reason a `subscribe` on `$user` with `since` is refused (400).
pub const USER_RECOVERY_IN_UPGRADE: &str = "$user is recovered at connect: give since/epoch in \
     the upgrade request (/ws?since=…&epoch=…), not in a subscribe";

/// The reason an `unsubscribe` on `$user` is refused (400).
pub const USER_NOT_UNSUBSCRIBABLE: &str = "$user cannot be unsubscribed";

/// Where the router finds a connection's push state: the worker's connections.
pub trait PushConns {
    /// The push state of connection `id`, if it is still there and still a push connection
    /// (a connection that is going gave its state back through [`Router::forget`]).
    fn push_conn(&mut self, id: ConnId) -> Option<&mut PushConn>;
}

/// The time as the router needs it: the worker's wheel tick (for deadlines and the publish
/// budget) and the wall clock (for the `exp`/`nbf` claims of a JWT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// The worker's timer-wheel tick.
    pub tick: Tick,
    /// Time since the Unix epoch.
    pub unix: Duration,
}

/// The `$user` recovery a push connection's upgrade request asked for (`?since=…&epoch=…`);
/// the default asks for none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    /// The last `$user` seq the client saw; `None`: no replay, and no `recovered` in the
    /// answer.
    pub since: Option<u64>,
    /// The `$user` epoch `since` belongs to; it must be the stream's current one for a
    /// replay.
    pub epoch: Option<String>,
}

/// What a router needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The worker this router serves (named in its messages to the hub).
    pub worker: WorkerId,
    /// `--max-subscriptions`: channels one connection may hold (`$user` not counted).
    pub max_subscriptions: usize,
    /// `--max-client-publish-rate`: client `publish` ops per connection per second.
    pub publish_rate: u16,
    /// The length of one wheel tick.
    pub tick: Duration,
    /// `--jwt-secret`: the HS256 secret; `None` is open mode (no tokens, no refresh).
    pub jwt_secret: Option<Vec<u8>>,
}

/// Something the worker must do for the router, in the order given.
#[derive(Debug)]
pub enum Effect {
    /// Queue one text frame holding `text` for `conn` (a JSON reply, or `pong`).
    Text {
        /// The connection.
        conn: ConnId,
        /// The frame's payload.
        text: Cow<'static, [u8]>,
    },
    /// Send this to the hub.
    Hub(ToHub),
    /// The connection's token now expires at wheel tick `expires` (a `refresh` was taken):
    /// re-arm its deadline.
    Expires {
        /// The connection.
        conn: ConnId,
        /// Wheel tick of the new expiry.
        expires: Tick,
    },
    /// Everything owed to `conn` before the Close it sent is out: send our Close reply with
    /// `code` now (see [`Router::hold_close`]), and forget the connection.
    ReleaseClose {
        /// The connection.
        conn: ConnId,
        /// The code the reply carries (`close::NO_STATUS`: an empty Close).
        code: u16,
    },
}

/// Who a delivery goes to on this worker, borrowed from the router's table or the hub's
/// message: iterate it, or, for [`Recipients::Everyone`], take every push connection.
#[derive(Debug)]
pub enum Recipients<'a> {
    /// These connections (a channel's members, or the connections of a user).
    Listed(Listed<'a>),
    /// Every push-endpoint connection of the worker (a broadcast).
    Everyone,
}

/// The connections of a [`Recipients::Listed`], without allocating.
#[derive(Debug, Clone)]
pub struct Listed<'a>(std::slice::Iter<'a, ConnId>);

impl Iterator for Listed<'_> {
    type Item = ConnId;

    fn next(&mut self) -> Option<ConnId> {
        self.0.next().copied()
    }
}

/// What a subscribe answer asks of the worker: queue the `subscribed` frame for `conn`, then
/// the first `replay` frames of the answer's replay, stopping at the first one the
/// connection can't take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Join {
    /// The connection.
    pub conn: ConnId,
    /// How many of the replayed frames to send (a prefix).
    pub replay: usize,
}

/// One worker's push routing state (see the module doc for its rules).
#[derive(Debug)]
pub struct Router {
    config: RouterConfig,
    /// Ticks in one second (the publish budget's window).
    second: u64,
    /// Channel → members here, with each channel's subscribes in flight.
    channels: Table<Arc<str>, ConnId>,
    /// Push connections whose `$user` join the hub has not answered yet, with their user
    /// (needed if a `$user` recovery request comes before the answer). Empty when idle.
    joining: HashMap<ConnId, Arc<str>>,
    /// Subscribe requests (and the `$user` join) each connection has waiting for the hub's
    /// answer, at the hub or queued; only connections with some are listed.
    in_flight: HashMap<ConnId, Requests>,
    /// Token grants, one shared copy per distinct set (most tokens grant the same).
    grants: HashSet<Arc<Grants>>,
    /// Key for the user fingerprints token connections keep (see [`TokenGrant`]).
    user_key: RandomState,
    /// Channel subscriptions added minus those dropped, since the worker last looked.
    subscriptions_delta: isize,
    /// What the worker has to do, in order.
    effects: Vec<Effect>,
    /// Cluster mode: Redis is unreachable, so subscribes and publishes are refused (503).
    store_down: bool,
}

/// A connection's subscribe requests not yet answered: how many are at the hub, and, in the
/// order the client sent its ops, the requests and replies waiting behind them (rule 1).
/// Kept only while there are some.
#[derive(Debug, Default)]
struct Requests {
    /// At the hub (at most [`MAX_SUBSCRIBES_IN_FLIGHT`]).
    sent: u8,
    /// Subscribe requests among `waiting`.
    subscribes: usize,
    /// Oldest first. A request at the front goes to the hub when there is a place; a reply
    /// at the front goes out once every request before it is answered (`sent` is 0).
    waiting: VecDeque<Waiting>,
}

/// What waits in a connection's queue.
#[derive(Debug)]
enum Waiting {
    /// A subscribe not sent to the hub yet.
    Subscribe(Request),
    /// A reply to a later op (an error, `unsubscribed`, `pong`): it must not overtake the
    /// answers of the subscribes sent before that op.
    Reply(Cow<'static, [u8]>),
    /// The connection sent Close: our reply (with this code) goes after everything before it.
    Close(u16),
}

/// Replies one connection may have waiting behind its subscribe answers; past this (a client
/// flooding ops while its subscribes wait) they go out at once.
const MAX_REPLIES_WAITING: usize = 1024;

/// One subscribe request not sent to the hub yet.
#[derive(Debug)]
struct Request {
    /// The channel (the table's shared name); `None` is the connection's `$user` stream.
    channel: Option<Arc<str>>,
    since: Option<u64>,
    epoch: Option<String>,
}

/// Whole ticks of `tick` in `d`, rounded up, at least one.
fn ticks(d: Duration, tick: Duration) -> u64 {
    let n = d.as_nanos().div_ceil(tick.as_nanos().max(1));
    u64::try_from(n).unwrap_or(u64::MAX).max(1)
}

/// Frees a transient map's table once it is empty and was grown by a burst.
fn release_if_empty<K, V>(map: &mut HashMap<K, V>) {
    if map.is_empty() && map.capacity() > 64 {
        *map = HashMap::new();
    }
}

fn error_json(code: u16, reason: &str, channel: Option<&str>) -> Cow<'static, [u8]> {
    let mut json = Vec::new();
    write_error(&mut json, code, reason, channel);
    Cow::Owned(json)
}

/// A connection's user as the router knows it (see [`Router::user_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRef {
    /// The hub's stream id (the hub knows the name).
    Id(UserId),
    /// The name itself (the join is not answered yet).
    Name(Arc<str>),
}

/// The reason a client op is refused while Redis is unreachable.
const STORE_DOWN: &str = "this node cannot reach its cluster store now; retry shortly";

impl Router {
    /// An empty router.
    pub fn new(config: RouterConfig) -> Router {
        Router {
            second: ticks(Duration::from_secs(1), config.tick),
            config,
            channels: Table::new(),
            joining: HashMap::new(),
            in_flight: HashMap::new(),
            grants: HashSet::new(),
            user_key: RandomState::new(),
            subscriptions_delta: 0,
            effects: Vec::new(),
            store_down: false,
        }
    }

    /// Who `conn`'s user is: its stream's id once the hub answered the join, else the name
    /// it joined with (`None` for an unknown connection).
    pub fn user_of(&mut self, conns: &mut impl PushConns, conn: ConnId) -> Option<UserRef> {
        if let Some(name) = self.joining.get(&conn) {
            return Some(UserRef::Name(Arc::clone(name)));
        }
        conns.push_conn(conn)?.user.map(UserRef::Id)
    }

    /// Is `conn`'s `$user` join still unanswered? Such a connection gets no broadcast yet:
    /// its first frame is its `$user` `subscribed`.
    pub fn is_joining(&self, conn: ConnId) -> bool {
        !self.joining.is_empty() && self.joining.contains_key(&conn)
    }

    /// Cluster mode: whether this node can reach Redis. While it cannot, client `subscribe`
    /// and `publish` ops get error 503 naming their channel (design.md, Push API).
    pub fn set_store_down(&mut self, down: bool) {
        self.store_down = down;
    }

    /// Takes the effects produced since the last call, to apply in order. Hand the emptied
    /// vector back with [`Router::recycle`] to keep its capacity.
    #[must_use]
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Gives back the vector [`Router::take_effects`] returned, once applied.
    pub fn recycle(&mut self, mut effects: Vec<Effect>) {
        effects.clear();
        if self.effects.is_empty() && effects.capacity() <= 1024 {
            self.effects = effects;
        }
    }

    /// Channel subscriptions added minus removed since the last call (for the server's
    /// figures).
    #[must_use]
    pub fn take_subscriptions_delta(&mut self) -> isize {
        std::mem::take(&mut self.subscriptions_delta)
    }

    /// The members of `channel` here (joined: their subscribe was answered).
    pub fn members(&self, channel: &str) -> &[ConnId] {
        self.channels.members(channel)
    }

    /// Subscribe requests `conn` has at the hub.
    pub fn in_flight(&self, conn: ConnId) -> u8 {
        self.in_flight.get(&conn).map_or(0, |r| r.sent)
    }

    /// Does `conn` still wait for answers (subscribes at the hub or queued, or replies
    /// behind them)? Its Close, if it sends one now, is answered after them.
    pub fn owes(&self, conn: ConnId) -> bool {
        self.in_flight.contains_key(&conn)
    }

    /// `conn` sent Close while it was owed answers ([`Router::owes`]): our reply (`code`)
    /// waits behind them, and comes out as [`Effect::ReleaseClose`] once they are out. If
    /// nothing is owed any more, it comes out at once.
    pub fn hold_close(&mut self, conn: ConnId, code: u16) {
        match self.in_flight.get_mut(&conn) {
            Some(requests) => {
                // Subscribes not yet asked will never be answered to a closing connection.
                let subscribes = requests.subscribes;
                requests
                    .waiting
                    .retain(|w| !matches!(w, Waiting::Subscribe(_)));
                requests.subscribes -= subscribes;
                requests.waiting.push_back(Waiting::Close(code));
                if requests.sent == 0 {
                    self.release_ready(conn);
                }
            }
            None => self.effects.push(Effect::ReleaseClose { conn, code }),
        }
    }

    /// Subscribe requests `conn` has queued behind those at the hub.
    pub fn queued(&self, conn: ConnId) -> usize {
        self.in_flight.get(&conn).map_or(0, |r| r.subscribes)
    }

    /// A reply to the op being handled: at once, unless subscribes sent before it wait for
    /// their answers (then it waits behind them, rule 1).
    fn reply(&mut self, conn: ConnId, text: Cow<'static, [u8]>) {
        match self.in_flight.get_mut(&conn) {
            Some(r) if r.waiting.len() - r.subscribes < MAX_REPLIES_WAITING => {
                r.waiting.push_back(Waiting::Reply(text));
            }
            _ => self.effects.push(Effect::Text { conn, text }),
        }
    }

    fn reply_error(&mut self, conn: ConnId, code: u16, reason: &str) {
        self.reply(conn, error_json(code, reason, None));
    }

    /// An error about a channel op: it names the channel.
    fn reply_channel_error(&mut self, conn: ConnId, code: u16, reason: &str, channel: &str) {
        self.reply(conn, error_json(code, reason, Some(channel)));
    }

    fn tell_hub(&mut self, message: ToHub) {
        self.effects.push(Effect::Hub(message));
    }

    /// Sends `request` to the hub now if `conn` has a place and nothing queued before it,
    /// else queues it (rule 1).
    fn request(&mut self, conns: &mut impl PushConns, conn: ConnId, request: Request) {
        let requests = self.in_flight.entry(conn).or_default();
        if !requests.waiting.is_empty() || requests.sent >= MAX_SUBSCRIBES_IN_FLIGHT {
            requests.waiting.push_back(Waiting::Subscribe(request));
            requests.subscribes += 1;
            return;
        }
        if self.send_request(conns, conn, request) {
            if let Some(requests) = self.in_flight.get_mut(&conn) {
                requests.sent += 1;
            }
        }
        self.tidy_requests(conn);
    }

    /// Asks the hub for `request`; `false` if there is nothing to ask any more (the
    /// connection is gone).
    fn send_request(&mut self, conns: &mut impl PushConns, conn: ConnId, request: Request) -> bool {
        let worker = self.config.worker;
        let Some(push) = conns.push_conn(conn) else {
            return false;
        };
        let Request {
            channel,
            since,
            epoch,
        } = request;
        let message = match channel {
            // Asked even if the channel was unsubscribed while the request waited: every
            // subscribe is answered, in order (its answer joins nothing, see `subscribed`).
            Some(name) => {
                self.channels.add_pending(&name);
                ToHub::Subscribe {
                    worker,
                    conn,
                    stream: Stream::Channel(name),
                    since,
                    epoch,
                }
            }
            // The connection's own stream, by the hub's id or, if the join is still
            // unanswered, by name.
            None => match push.user {
                Some(user) => ToHub::Subscribe {
                    worker,
                    conn,
                    stream: Stream::User(user),
                    since,
                    epoch,
                },
                None => match self.joining.get(&conn) {
                    Some(user) => ToHub::JoinUser {
                        worker,
                        conn,
                        user: Arc::clone(user),
                        since,
                        epoch,
                    },
                    None => return false,
                },
            },
        };
        self.tell_hub(message);
        true
    }

    /// One of `conn`'s requests was answered: what waits behind it goes, in order — requests
    /// while there is a place at the hub, replies once nothing before them is unanswered.
    /// Replies come out as effects: the worker applies them after queuing the answer.
    fn answered(&mut self, conns: &mut impl PushConns, conn: ConnId) {
        let Some(requests) = self.in_flight.get_mut(&conn) else {
            return;
        };
        requests.sent = requests.sent.saturating_sub(1);
        loop {
            let Some(requests) = self.in_flight.get_mut(&conn) else {
                return;
            };
            let ready = match requests.waiting.front() {
                None => false,
                Some(Waiting::Subscribe(_)) => requests.sent < MAX_SUBSCRIBES_IN_FLIGHT,
                Some(Waiting::Reply(_) | Waiting::Close(_)) => requests.sent == 0,
            };
            if !ready {
                break;
            }
            match requests.waiting.pop_front() {
                Some(Waiting::Subscribe(next)) => {
                    requests.subscribes -= 1;
                    if self.send_request(conns, conn, next) {
                        if let Some(requests) = self.in_flight.get_mut(&conn) {
                            requests.sent += 1;
                        }
                    }
                }
                Some(Waiting::Reply(text)) => self.effects.push(Effect::Text { conn, text }),
                Some(Waiting::Close(code)) => {
                    self.effects.push(Effect::ReleaseClose { conn, code });
                }
                None => break,
            }
        }
        self.tidy_requests(conn);
    }

    /// With nothing of `conn`'s at the hub, lets out its waiting replies and held Close, in
    /// order (no subscribe waits any more: a closing connection asks nothing new).
    fn release_ready(&mut self, conn: ConnId) {
        while let Some(requests) = self.in_flight.get_mut(&conn) {
            if requests.sent > 0 {
                break;
            }
            match requests.waiting.pop_front() {
                Some(Waiting::Reply(text)) => self.effects.push(Effect::Text { conn, text }),
                Some(Waiting::Close(code)) => {
                    self.effects.push(Effect::ReleaseClose { conn, code });
                }
                Some(Waiting::Subscribe(_)) => requests.subscribes -= 1,
                None => break,
            }
        }
        self.tidy_requests(conn);
    }

    /// Drops `conn`'s entry once it has no request left, with its queue.
    fn tidy_requests(&mut self, conn: ConnId) {
        if self
            .in_flight
            .get(&conn)
            .is_some_and(|r| r.sent == 0 && r.waiting.is_empty())
        {
            self.in_flight.remove(&conn);
        }
    }

    // --- connections arriving and going -------------------------------------------------

    /// A push connection of `user` was upgraded (`claims`: its verified token; `None` in open
    /// mode): returns its push state for the worker to keep, and asks the hub to join it to
    /// its `$user` stream. `resume` is the `$user` recovery the upgrade request asked for
    /// (`since`/`epoch` in its query): the hub's answer, the connection's first frame, then
    /// says whether it `recovered`, and the replay follows it before any live message. Its
    /// first deadline is [`PushConn::expires`] at the latest.
    pub fn accept(
        &mut self,
        conn: ConnId,
        user: Arc<str>,
        claims: Option<&Claims>,
        resume: Resume,
        now: Now,
    ) -> PushConn {
        let mut push = PushConn::default();
        if let Some(claims) = claims {
            push.set_grant(self.grant(claims, now));
        }
        self.joining.insert(conn, Arc::clone(&user));
        self.in_flight.insert(
            conn,
            Requests {
                sent: 1,
                subscribes: 0,
                waiting: VecDeque::new(),
            },
        );
        self.tell_hub(ToHub::JoinUser {
            worker: self.config.worker,
            conn,
            user,
            since: resume.since,
            epoch: resume.epoch,
        });
        push
    }

    /// The connection is going (closing or closed): it leaves every table it is in. `push` is
    /// its state, taken from it (it is no longer found through [`PushConns`]).
    pub fn forget(&mut self, conns: &mut impl PushConns, conn: ConnId, mut push: PushConn) {
        self.in_flight.remove(&conn);
        if let Some(grant) = push.take_grant() {
            self.release(grant);
        }
        for sub in push.subs() {
            self.subscriptions_delta -= 1;
            if let Some(slot) = sub.slot {
                self.leave_channel(conns, conn, &sub.channel, slot);
            }
        }
        match push.user {
            Some(user) => self.tell_hub(ToHub::LeaveUser {
                worker: self.config.worker,
                conn,
                user,
            }),
            // Not joined yet: the hub's answer will find the connection gone and leave.
            None => {
                self.joining.remove(&conn);
            }
        }
    }

    // --- the client protocol ------------------------------------------------------------

    /// Handles one whole message from a push client (the worker calls this only while the
    /// connection is open): `ping` (text) gets `pong`; JSON ops `subscribe`, `unsubscribe`,
    /// `publish`, `refresh`; anything else an error (400 bad op; a binary message without
    /// `--upstream`: 400 if shorter than its 4-byte action code, else 501 naming the action).
    pub fn handle_message(
        &mut self,
        conns: &mut impl PushConns,
        conn: ConnId,
        kind: MessageKind,
        data: &[u8],
        now: Now,
    ) {
        if kind == MessageKind::Binary {
            // An action (design.md "Upstream"): too short for its code is 400, checked first.
            let mut json = Vec::new();
            match crate::upstream::action_code(data) {
                None => crate::upstream::write_action_error(
                    &mut json,
                    OpError::BAD_REQUEST,
                    None,
                    "a binary message starts with a 4-byte action code",
                ),
                Some(action) => crate::upstream::write_action_error(
                    &mut json,
                    OpError::NOT_IMPLEMENTED,
                    Some(action),
                    "binary frames need an upstream; none is configured",
                ),
            }
            return self.reply(conn, Cow::Owned(json));
        }
        if data == b"ping" {
            return self.reply(conn, Cow::Borrowed(b"pong"));
        }
        match parse_client_op(data) {
            Err(e) => self.reply(conn, error_json(e.code, &e.reason, e.channel.as_deref())),
            Ok(ClientOp::Subscribe {
                channel,
                since,
                epoch,
            }) => self.subscribe(conns, conn, &channel, since, epoch.map(|e| e.into_owned())),
            Ok(ClientOp::Unsubscribe { channel }) => self.unsubscribe(conns, conn, &channel),
            Ok(ClientOp::Publish { channel, data }) => {
                self.publish(conns, conn, &channel, data.get(), now)
            }
            Ok(ClientOp::Refresh { token }) => self.refresh(conns, conn, &token, now),
        }
    }

    /// `{"op":"subscribe",…}`: rule 1 of the module doc. Refused, naming the channel: a
    /// channel the token does not allow (403), one more than `--max-subscriptions` or a full
    /// queue (429), `$user` with `since` (400: its recovery goes in the upgrade request).
    pub fn subscribe(
        &mut self,
        conns: &mut impl PushConns,
        conn: ConnId,
        channel: &str,
        since: Option<u64>,
        epoch: Option<String>,
    ) {
        let max_subscriptions = self.config.max_subscriptions;
        // Only a request that would wait can find the queue full.
        let queue_full = self.in_flight.get(&conn).is_some_and(|r| {
            (r.sent >= MAX_SUBSCRIBES_IN_FLIGHT || !r.waiting.is_empty())
                && r.subscribes >= max_subscriptions
        });
        let Some(push) = conns.push_conn(conn) else {
            return;
        };
        let refusal = if channel == USER_CHANNEL {
            since
                .is_some()
                .then_some((OpError::BAD_REQUEST, USER_RECOVERY_IN_UPGRADE))
        } else if !push.grants().is_none_or(|g| g.may_subscribe(channel)) {
            Some((OpError::FORBIDDEN, "the token does not allow this channel"))
        } else if push.sub(channel).is_none() && push.sub_count() >= max_subscriptions {
            Some((OpError::TOO_MANY, "too many subscriptions"))
        } else if self.store_down {
            Some((OpError::UNAVAILABLE, STORE_DOWN))
        } else {
            None
        };
        // A full queue holds `--max-subscriptions` requests already: only repeats of
        // subscribes to channels held get here, and they wait for nothing.
        let refusal = refusal.or(queue_full.then_some((
            OpError::TOO_MANY,
            "too many subscribe requests waiting for an answer",
        )));
        if let Some((code, reason)) = refusal {
            return self.reply_channel_error(conn, code, reason, channel);
        }
        let name = if channel == USER_CHANNEL {
            None
        } else {
            Some(match push.sub(channel) {
                Some(sub) => Arc::clone(&sub.channel),
                None => {
                    // Share the table's copy of the name when the channel is known here.
                    let name: Arc<str> = self
                        .channels
                        .shared_key(channel)
                        .unwrap_or_else(|| Arc::from(channel));
                    push.add_sub(Subscription {
                        channel: Arc::clone(&name),
                        slot: None,
                        joined_at: JoinedAt::NOT_YET,
                    });
                    self.subscriptions_delta += 1;
                    name
                }
            })
        };
        self.request(
            conns,
            conn,
            Request {
                channel: name,
                since,
                epoch,
            },
        );
    }

    /// `{"op":"unsubscribe",…}`: leaves the channel (at once if joined; a subscribe still in
    /// flight or queued is still answered — its `subscribed` comes first — but joins
    /// nothing) and answers `unsubscribed`. `$user` is refused (400, naming it): the
    /// connection keeps its stream.
    pub fn unsubscribe(&mut self, conns: &mut impl PushConns, conn: ConnId, channel: &str) {
        if channel == USER_CHANNEL {
            return self.reply_channel_error(
                conn,
                OpError::BAD_REQUEST,
                USER_NOT_UNSUBSCRIBABLE,
                channel,
            );
        }
        let Some(push) = conns.push_conn(conn) else {
            return;
        };
        if let Some(sub) = push.remove_sub(channel) {
            self.subscriptions_delta -= 1;
            if let Some(slot) = sub.slot {
                self.leave_channel(conns, conn, &sub.channel, slot);
            }
        }
        let mut json = Vec::new();
        write_unsubscribed(&mut json, channel);
        self.reply(conn, Cow::Owned(json));
    }

    /// Removes `conn` from a channel's members and fixes the slot of whoever moved.
    fn leave_channel(
        &mut self,
        conns: &mut impl PushConns,
        conn: ConnId,
        channel: &Arc<str>,
        slot: Slot,
    ) {
        let removed = self.channels.remove(channel, slot, conn);
        if let Some(moved) = removed.moved {
            if let Some(sub) = conns.push_conn(moved).and_then(|p| p.sub_mut(channel)) {
                sub.slot = Some(slot);
            }
        }
        if removed.now_idle {
            self.tell_hub(ToHub::Idle {
                worker: self.config.worker,
                channel: Arc::clone(channel),
            });
        }
    }

    /// `{"op":"publish",…}`: forwarded to the hub where the token allows it (never to a `$`
    /// channel) and within the connection's `--max-client-publish-rate` for the second
    /// starting at its window's first publish (wheel ticks, `now.tick`).
    pub fn publish(
        &mut self,
        conns: &mut impl PushConns,
        conn: ConnId,
        channel: &str,
        data: &str,
        now: Now,
    ) {
        let Some(push) = conns.push_conn(conn) else {
            return;
        };
        let allowed = push.grants().is_none_or(|g| g.may_publish(channel));
        if channel.starts_with('$') || !allowed {
            let reason = if channel.starts_with('$') {
                "channels starting with $ are the server's: clients cannot publish there"
            } else {
                "the token does not allow publishing here"
            };
            return self.reply_channel_error(conn, OpError::FORBIDDEN, reason, channel);
        }
        if !push.take_publish(now.tick, self.second, self.config.publish_rate) {
            return self.reply_channel_error(
                conn,
                OpError::TOO_MANY,
                "too many publishes",
                channel,
            );
        }
        if self.store_down {
            return self.reply_channel_error(conn, OpError::UNAVAILABLE, STORE_DOWN, channel);
        }
        // The client op's parser refuses it already; this keeps the rule for any caller.
        if data_too_deep(data) {
            return self.reply_channel_error(conn, OpError::BAD_REQUEST, DATA_TOO_DEEP, channel);
        }
        self.tell_hub(ToHub::Publish {
            channel: Arc::from(channel),
            data: data.to_owned(),
        });
    }

    /// `{"op":"refresh","token":…}`: a newer valid token for the same user replaces the
    /// connection's (an [`Effect::Expires`] with its expiry follows); anything else is refused
    /// (400 in open mode, 403 otherwise) and the old token stays.
    pub fn refresh(&mut self, conns: &mut impl PushConns, conn: ConnId, token: &str, now: Now) {
        let claims = match &self.config.jwt_secret {
            None => return self.reply_error(conn, OpError::BAD_REQUEST, "no tokens in open mode"),
            Some(secret) => verify_hs256(token, secret, now.unix.as_secs()),
        };
        let claims = match claims {
            Ok(claims) => claims,
            Err(e) => {
                return self.reply_error(conn, OpError::FORBIDDEN, &format!("refresh refused: {e}"))
            }
        };
        let grant = self.grant(&claims, now);
        let expires = grant.expires;
        let Some(push) = conns.push_conn(conn) else {
            return self.release(grant);
        };
        if push
            .grant()
            .is_none_or(|old| old.user_fingerprint != grant.user_fingerprint)
        {
            self.release(grant);
            return self.reply_error(
                conn,
                OpError::FORBIDDEN,
                "refresh refused: the token is for another user",
            );
        }
        if let Some(old) = push.set_grant(grant) {
            self.release(old);
        }
        self.effects.push(Effect::Expires { conn, expires });
    }

    /// What a connection keeps of a verified token; its grants are this router's shared copy.
    fn grant(&mut self, claims: &Claims, now: Now) -> TokenGrant {
        let grants = Grants::new(claims);
        let grants = match self.grants.get(&grants) {
            Some(shared) => Arc::clone(shared),
            None => {
                let shared = Arc::new(grants);
                self.grants.insert(Arc::clone(&shared));
                shared
            }
        };
        // Never honoured past its expiry: the time left, rounded up to whole ticks.
        let left = Duration::from_secs(claims.exp).saturating_sub(now.unix);
        TokenGrant {
            grants,
            user_fingerprint: self.user_key.hash_one(claims.sub.as_str()),
            expires: now.tick + ticks(left, self.config.tick),
        }
    }

    /// Lets go of a grant; the shared grants go with the last connection holding them.
    fn release(&mut self, grant: TokenGrant) {
        // One reference is the router's set, one is `grant`: nobody else uses them.
        if Arc::strong_count(&grant.grants) == 2 {
            self.grants.remove(&*grant.grants);
        }
    }

    // --- what the hub sends ---------------------------------------------------------------

    /// Who a delivery for `target` goes to here. Channel members all joined below the
    /// message's seq (their subscribe was answered before it in the FIFO inbox): no
    /// duplicate check is needed.
    pub fn recipients<'a>(&'a self, target: &'a Target) -> Recipients<'a> {
        let listed = match target {
            Target::Channel(channel) => self.members(channel),
            Target::Conn(conn) => std::slice::from_ref(conn),
            Target::Conns(list) => list,
            Target::Everyone => return Recipients::Everyone,
        };
        Recipients::Listed(Listed(listed.iter()))
    }

    /// The hub answered a subscribe of `conn` to `stream` at top `seq`, with `replay_len`
    /// replayed frames (contiguous, ending at `seq`): rule 3 of the module doc. Returns what
    /// to queue, or `None` if the connection is gone or no longer wants the stream. Queue it
    /// **before** applying the effects: they may hold replies to ops sent after the subscribe.
    #[must_use]
    pub fn subscribed(
        &mut self,
        conns: &mut impl PushConns,
        conn: ConnId,
        stream: &Stream,
        seq: u64,
        replay_len: usize,
    ) -> Option<Join> {
        // Is the connection still there and still wanting this stream? Already a member?
        let push = conns.push_conn(conn);
        let (wanted, already) = match (stream, push) {
            (Stream::Channel(name), Some(p)) => match p.sub(name) {
                Some(sub) => (true, sub.slot.is_some()),
                None => (false, false),
            },
            // A live connection's `$user` answer is always for its own user.
            (Stream::User(_), Some(p)) => (true, p.user.is_some()),
            (_, None) => (false, false),
        };
        let mut slot = None;
        match stream {
            Stream::Channel(name) => {
                let (joined, idle) = self
                    .channels
                    .resolve_pending(name, (wanted && !already).then_some(conn));
                slot = joined;
                if idle {
                    self.tell_hub(ToHub::Idle {
                        worker: self.config.worker,
                        channel: Arc::clone(name),
                    });
                }
            }
            // The hub made the connection a member when it asked; it is gone since.
            Stream::User(user) if !wanted => self.tell_hub(ToHub::LeaveUser {
                worker: self.config.worker,
                conn,
                user: *user,
            }),
            Stream::User(_) => {
                self.joining.remove(&conn);
            }
        }
        self.answered(conns, conn);
        if !wanted {
            // Unsubscribed since it asked (or gone): the answer still goes out, before the
            // `unsubscribed` that follows it, so every op is answered in order; nothing joins.
            return conns.push_conn(conn).map(|_| Join { conn, replay: 0 });
        }
        let push = conns.push_conn(conn)?;
        // After this answer the connection holds every message above `holds_from`.
        let first = (seq + 1).saturating_sub(replay_len as u64);
        let holds_from = if replay_len == 0 { seq } else { first - 1 };
        let joined_at = match stream {
            Stream::Channel(name) => {
                let sub = push.sub_mut(name)?;
                if slot.is_some() {
                    sub.slot = slot;
                }
                sub.joined_at.join(holds_from)
            }
            Stream::User(user) => {
                push.user = Some(*user);
                push.user_joined_at.join(holds_from)
            }
        };
        // A first join gets the whole replay; a re-join (recovery on a stream this connection
        // already receives) only what is at or below its join point: the rest came live.
        let replay = match joined_at {
            None => replay_len,
            Some(j) => usize::try_from((j + 1).saturating_sub(first))
                .unwrap_or(usize::MAX)
                .min(replay_len),
        };
        Some(Join { conn, replay })
    }

    /// `/api/presence`: the distinct users subscribed to `channel` here, sent to the hub.
    pub fn presence(&mut self, conns: &mut impl PushConns, ack: AckId, channel: &str) {
        let mut users: Vec<UserId> = Vec::new();
        for &member in self.channels.members(channel) {
            if let Some(push) = conns.push_conn(member) {
                users.extend(push.user);
            }
        }
        users.sort_unstable();
        users.dedup();
        self.tell_hub(ToHub::PresenceReply { ack, users });
    }

    /// A batch of hub messages is handled: give back what a burst of arrivals grew.
    pub fn end_batch(&mut self) {
        release_if_empty(&mut self.joining);
        release_if_empty(&mut self.in_flight);
    }
}

#[cfg(test)]
mod tests;
