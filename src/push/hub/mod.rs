//! The hub: drives API commands and worker messages through the broker that owns every stream's
//! `seq`, epoch and history (channels and `$user` streams), forwards what the broker reports to
//! the workers in order, and turns the broker's sequencing (and, under `?wait=delivered`, the
//! workers' acknowledgements) into push-API answers. Sans IO:
//! the hub thread (`crate::server::hub_loop`) feeds it commands, worker messages and the time,
//! and ships what it returns.
//!
//! Ordering is the point of having one hub. Every message for a worker goes through that
//! worker's FIFO inbox, and the hub answers a `subscribe` through the same inbox, after every
//! message with a `seq` up to the top it reports and before every later one. The worker adds the
//! subscriber when the answer arrives, so a subscriber sees each message exactly once, whatever
//! publishes race the subscribe. What the broker must guarantee for that is written down once,
//! in [`broker`]; the hub's part is to take the broker's events after every input and forward
//! them in the order they come.
//!
//! The parts, one file each: `messages` (what goes between the threads), [`broker`] (the
//! boundary and its ordering contract), `memory` (the in-process broker, [`MemoryBroker`]),
//! `retention` (the global log, the byte budget and the TTL under it), `acks` (API requests
//! waiting for the broker and, under `?wait=delivered`, the workers) and `idempotency` (the
//! remembered `idempotency_key`s and their answers).

mod acks;
pub mod broker;
mod idempotency;
mod memory;
mod messages;
mod retention;
#[cfg(test)]
mod testing;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::frame::{encode_shared, OpCode, SharedFrame};
use crate::push::client_protocol::write_subscribed;
use crate::push::names::USER_CHANNEL;
use crate::push::users::Member;

use acks::{Acks, Pending, PresenceWait, Waiting};
use idempotency::{Begin, Remembered, Route};

pub use broker::{
    encode_message, Asked, Broker, Epoch, Event, NodeEntry, PublishTo, Stored, HEARTBEAT,
    HEARTBEAT_TTL,
};
pub use memory::MemoryBroker;
pub use messages::{
    AckId, Answer, Command, ConnId, Request, RequestId, Stream, Target, ToHub, ToWorker, UserId,
    Wait, WorkerId, BROADCAST_CHANNEL, IDEMPOTENCY_TTL, MAX_IDEMPOTENCY_KEY,
};
pub use retention::HistoryConfig;

/// The hub's state, over the broker `B` (in process by default).
#[derive(Debug)]
pub struct Hub<B: Broker = MemoryBroker> {
    workers: usize,
    now: Instant,
    broker: B,
    acks: Acks,
    remembered: Remembered,
    outbox: Vec<(WorkerId, ToWorker)>,
    answers: Vec<Answer>,
    scratch: Vec<u8>,
    /// This node's `/api/nodes` entry (a JSON object), as of the last heartbeat.
    node_info: String,
    /// Presence questions of other nodes being answered here, by the ack of their local part.
    remote_asks: HashMap<AckId, Asked>,
}

impl Hub<MemoryBroker> {
    /// A hub for `workers` workers over an in-memory broker keeping `history`, its clock at
    /// `now`.
    /// Idempotency keys get a budget of their own, as large as `history.max_bytes`.
    pub fn new(workers: usize, history: HistoryConfig, now: Instant) -> Hub {
        Hub::with_broker(
            workers,
            MemoryBroker::new(history, now),
            history.max_bytes,
            now,
        )
    }
}

impl<B: Broker> Hub<B> {
    /// A hub for `workers` workers over `broker`, its clock at `now`; remembered
    /// idempotency keys and answers may take `key_budget` bytes.
    pub fn with_broker(workers: usize, broker: B, key_budget: usize, now: Instant) -> Hub<B> {
        Hub {
            workers,
            now,
            broker,
            acks: Acks::new(),
            remembered: Remembered::new(key_budget),
            outbox: Vec::new(),
            answers: Vec::new(),
            scratch: Vec::new(),
            node_info: "{}".to_owned(),
            remote_asks: HashMap::new(),
        }
    }

    /// This node is leaving (a drain began): see [`Broker::depart`].
    pub fn depart(&mut self) {
        self.broker.depart();
    }

    /// This node is alive, with `info` (a JSON object: `name`, `connections`,
    /// `subscriptions`, `uptime_s`): it answers `/api/nodes` with it and hands it to the
    /// broker (cluster mode stores it in Redis, see [`Broker::heartbeat`]).
    pub fn heartbeat(&mut self, info: String) {
        self.broker.heartbeat(&info);
        self.node_info = info;
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

    /// Can the broker's store take requests now (see [`Broker::is_reachable`])?
    pub fn store_reachable(&self) -> bool {
        self.broker.is_reachable()
    }

    /// Channels and user streams the hub tracks.
    pub fn stream_counts(&self) -> (usize, usize) {
        self.broker.stream_counts()
    }

    /// Messages held for replay, and the bytes charged for them (see [`HistoryConfig`]).
    pub fn history_size(&self) -> (usize, usize) {
        self.broker.history_size()
    }

    /// Advances the hub's clock; about once a second, expires old history and idle streams.
    /// Also forwards whatever the broker reported since the last input (a broker that answers
    /// later wakes the hub thread, which then ticks).
    pub fn tick(&mut self, now: Instant) {
        self.now = now;
        self.remembered.expire(now);
        self.broker.tick(now);
        self.forward_events();
    }

    /// How long the hub thread may sleep before [`Hub::tick`] has work.
    pub fn next_tick(&self) -> Option<Duration> {
        let keys = idempotency::until(self.remembered.next_expiry(), self.now);
        match (self.broker.next_tick(), keys) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Idempotency keys remembered (answered or in flight), and the bytes charged for them
    /// (their own budget, as large as `--history-max-bytes`).
    pub fn idempotency_size(&self) -> (usize, usize) {
        self.remembered.size()
    }

    /// Which workers hold `user`'s connections, and which connections each, in worker order.
    fn user_targets(&self, user: UserId) -> Vec<(WorkerId, Vec<ConnId>)> {
        let mut targets: Vec<(WorkerId, Vec<ConnId>)> = Vec::new();
        for Member { worker, conn } in self.broker.user_members(user) {
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
                workers_in(self.broker.channel_workers(channel))
            }
            Command::Send { user, .. } | Command::Disconnect { user } => {
                // Only which workers: the connection lists are built once, by `command`.
                let members = self.broker.find_user(user).into_iter();
                let mask = members
                    .flat_map(|id| self.broker.user_members(id))
                    .fold(0u64, |mask, m| {
                        mask | 1u64.checked_shl(m.worker as u32).unwrap_or(0)
                    });
                workers_in(mask)
            }
            Command::Broadcast { .. } => (0..self.workers).collect(),
            Command::Nodes => Vec::new(),
        }
    }

    /// Runs an API command for `conn`, answered once sequenced and without an idempotency
    /// key (see [`Hub::request`]).
    pub fn command(&mut self, conn: RequestId, command: Command) {
        self.request(conn, Request::from(command));
    }

    /// Has the hub an answer (or a request in flight) for `request`'s idempotency key? Then
    /// the request runs nothing: the caller need not check the workers' inboxes for it.
    pub fn remembers(&self, request: &Request) -> bool {
        match (&request.idempotency_key, Route::of(&request.command)) {
            (Some(key), Some(route)) => self.remembered.contains(route, key, self.now),
            _ => false,
        }
    }

    /// Runs an API request for `conn`; the answer comes out of [`Hub::take_answers`]: once the
    /// message is sequenced and queued to the workers ([`Wait::Sequenced`]), or once the
    /// broker and every worker involved have answered ([`Wait::Delivered`], and always for
    /// presence). A retry of a keyed request gets the first answer (see `idempotency`).
    pub fn request(&mut self, conn: RequestId, request: Request) {
        let Request {
            command,
            wait,
            idempotency_key: key,
        } = request;
        let ack = self.acks.next_id();
        if let (Some(key), Some(route)) = (&key, Route::of(&command)) {
            match self.remembered.begin(route, key, ack, conn, self.now) {
                Begin::New => {}
                Begin::Joined => return,
                Begin::Answered(body) => {
                    self.answers.push(Answer {
                        conn,
                        status: 200,
                        body: body.to_string(),
                    });
                    return;
                }
            }
        }
        let counted = wait == Wait::Delivered;
        let key = key.as_deref();
        // The broker answers first (see `forward_events`), then, if counted, the workers.
        let sequencing = Pending::new(conn, 1, counted, Waiting::Sequencing);
        match command {
            Command::Publish { channel, data } => {
                self.wait(ack, sequencing);
                self.broker
                    .publish(PublishTo::Channel(&channel), &data, key, Some(ack));
            }
            Command::Send { user, data } => {
                self.wait(ack, sequencing);
                self.broker
                    .publish(PublishTo::User(&user), &data, key, Some(ack));
            }
            Command::Broadcast { data } => {
                self.wait(ack, sequencing);
                self.broker.broadcast(&data, Some(ack));
            }
            Command::Disconnect { user } => {
                self.wait(ack, sequencing);
                self.broker.disconnect(&user, Some(ack));
            }
            Command::Nodes => {
                self.wait(ack, sequencing);
                self.broker.nodes(ack);
            }
            Command::Presence { channel } => {
                // The local workers, and the broker for the other nodes (one node: at once).
                self.ask_workers_for_presence(ack, conn, &channel);
                self.broker.presence(&channel, ack);
            }
        }
        self.forward_events();
    }

    /// Asks the workers listening to `channel` for their users, under `ack` (answered to
    /// `conn`); the broker's answer about other nodes is one more part awaited.
    fn ask_workers_for_presence(&mut self, ack: AckId, conn: RequestId, channel: &Arc<str>) {
        let mut remaining = 1;
        for w in workers_in(self.broker.channel_workers(channel)) {
            let channel = Arc::clone(channel);
            self.outbox.push((w, ToWorker::Presence { ack, channel }));
            remaining += 1;
        }
        let waiting = Waiting::Presence(Box::new(PresenceWait {
            channel: Arc::clone(channel),
            users: Vec::new(),
            names: Vec::new(),
            partial: false,
        }));
        self.wait(ack, Pending::new(conn, remaining, false, waiting));
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
            } => self
                .broker
                .join_user(Member { worker, conn }, &user, since, epoch),
            ToHub::LeaveUser { worker, conn, user } => {
                self.broker.leave_user(Member { worker, conn }, user);
            }
            ToHub::Subscribe {
                worker,
                conn,
                stream,
                since,
                epoch,
            } => self
                .broker
                .subscribe(Member { worker, conn }, stream, since, epoch),
            ToHub::Publish { channel, data } => {
                self.broker
                    .publish(PublishTo::Channel(&channel), &data, None, None);
            }
            ToHub::Idle { worker, channel } => self.broker.idle(worker, &channel),
            ToHub::Ack { ack, count } => {
                let done = self.acks.acknowledge(ack, count, Vec::new());
                self.finish(ack, done);
            }
            ToHub::UserName { worker, conn, user } => {
                let name = self.broker.user_name(user).map(Arc::from);
                self.outbox
                    .push((worker, ToWorker::UserName { conn, name }));
            }
            ToHub::PresenceReply { ack, users } => {
                let done = self.acks.acknowledge(ack, 0, users);
                self.finish(ack, done);
            }
            ToHub::Drain => {}
        }
        self.forward_events();
    }

    /// Takes every event the broker has, in order, and turns each into worker messages (and
    /// API answers): the hub's half of the ordering contract (see [`Broker`]).
    fn forward_events(&mut self) {
        while let Some(event) = self.broker.poll_event() {
            match event {
                Event::Message {
                    stream,
                    seq,
                    epoch,
                    frame,
                    request,
                } => {
                    // Only a `?wait=delivered` request has its workers acknowledge.
                    let counted = request.filter(|&ack| self.acks.counted(ack));
                    let (workers, waiting) = match stream {
                        Stream::Channel(channel) => {
                            let workers = self.deliver_to_channel(&channel, &frame, counted);
                            (workers, Waiting::Publish { seq, epoch })
                        }
                        Stream::User(id) => {
                            let workers = self.deliver_to_user(id, &frame, counted);
                            (workers, Waiting::Send { seq, epoch })
                        }
                    };
                    if let Some(ack) = request {
                        let workers = if counted.is_some() { workers } else { 0 };
                        let done = self.acks.sequenced(ack, waiting, workers);
                        self.finish(ack, done);
                    }
                }
                Event::Stored { request, what } => {
                    let waiting = match what {
                        Stored::Message { seq, epoch } => Waiting::Publish { seq, epoch },
                        Stored::Control => Waiting::Broadcast,
                    };
                    let done = self.acks.sequenced(request, waiting, 0);
                    self.finish(request, done);
                }
                Event::Failed { request } => self.fail(request),
                Event::PresenceFrom {
                    request,
                    users,
                    partial,
                } => {
                    let done = self.acks.remote_presence(request, users, partial);
                    self.finish(request, done);
                }
                Event::PresenceAsked { asked, channel } => {
                    // Asked by another node: this node's workers answer, then the broker
                    // carries the list back (see `finish`); no other node is asked.
                    let ack = self.acks.next_id();
                    self.remote_asks.insert(ack, asked);
                    self.ask_workers_for_presence(ack, 0, &channel);
                    let done = self.acks.remote_presence(ack, Vec::new(), false);
                    self.finish(ack, done);
                }
                Event::Nodes { request, nodes } => {
                    if let Some(pending) = self.acks.cancel(request) {
                        let body = nodes_body(&self.node_info, &nodes, self.broker.is_reachable());
                        self.answers.push(Answer {
                            conn: pending.conn(),
                            status: 200,
                            body,
                        });
                    }
                }
                Event::Broadcast { frame, request } => {
                    let counted = request.filter(|&ack| self.acks.counted(ack));
                    for w in 0..self.workers {
                        self.deliver(w, Target::Everyone, &frame, counted);
                    }
                    if let Some(ack) = request {
                        let workers = if counted.is_some() { self.workers } else { 0 };
                        let done = self.acks.sequenced(ack, Waiting::Broadcast, workers);
                        self.finish(ack, done);
                    }
                }
                Event::Disconnect { user, request } => {
                    let counted = request.filter(|&ack| self.acks.counted(ack));
                    let targets = match self.broker.find_user(&user) {
                        Some(id) => self.user_targets(id),
                        None => Vec::new(),
                    };
                    let workers = targets.len();
                    for (w, conns) in targets {
                        self.outbox.push((
                            w,
                            ToWorker::Disconnect {
                                conns,
                                ack: counted,
                            },
                        ));
                    }
                    if let Some(ack) = request {
                        let workers = if counted.is_some() { workers } else { 0 };
                        let done = self.acks.sequenced(ack, Waiting::Disconnect, workers);
                        self.finish(ack, done);
                    }
                }
                Event::Resync { stream, seq, epoch } => {
                    let channel = match &stream {
                        Stream::Channel(name) => &**name,
                        Stream::User(_) => USER_CHANNEL,
                    };
                    self.scratch.clear();
                    let epoch = epoch.to_string();
                    write_subscribed(&mut self.scratch, channel, &epoch, seq, Some(false));
                    let frame = encode_shared(OpCode::Text, &self.scratch);
                    match stream {
                        Stream::Channel(channel) => {
                            self.deliver_to_channel(&channel, &frame, None);
                        }
                        Stream::User(id) => {
                            self.deliver_to_user(id, &frame, None);
                        }
                    }
                }
                Event::NoStream { request } => {
                    if let Some(ack) = request {
                        let waiting = Waiting::Send {
                            seq: 0,
                            epoch: Epoch::from_bits(0),
                        };
                        let done = self.acks.sequenced(ack, waiting, 0);
                        self.finish(ack, done);
                    }
                }
                Event::Subscribed {
                    member,
                    stream,
                    seq,
                    epoch,
                    recovered,
                    replay,
                } => {
                    let channel = match &stream {
                        Stream::Channel(name) => &**name,
                        Stream::User(_) => USER_CHANNEL,
                    };
                    self.scratch.clear();
                    let epoch = epoch.to_string();
                    write_subscribed(&mut self.scratch, channel, &epoch, seq, recovered);
                    let frame = encode_shared(OpCode::Text, &self.scratch);
                    self.outbox.push((
                        member.worker,
                        ToWorker::Subscribed {
                            conn: member.conn,
                            stream,
                            seq,
                            frame,
                            replay,
                        },
                    ));
                }
            }
        }
    }

    /// Answers the request under `ack` (and the retries that waited for it) with 503: the
    /// store could not confirm it. Its idempotency key is forgotten so that a retry runs.
    fn fail(&mut self, ack: AckId) {
        let Some(pending) = self.acks.cancel(ack) else {
            return;
        };
        let body = r#"{"error":"Redis did not confirm this request in time, or is unreachable: it may or may not have taken effect; retry (with the same idempotency_key, if it had one, to settle which)","field":null}"#;
        for conn in std::iter::once(pending.conn()).chain(self.remembered.failed(ack)) {
            self.answers.push(Answer {
                conn,
                status: 503,
                body: body.to_owned(),
            });
        }
    }

    /// Waits for `pending`'s answers under `ack`, or answers at once if there are none.
    fn wait(&mut self, ack: AckId, pending: Pending) {
        let done = self.acks.wait(ack, pending);
        self.finish(ack, done);
    }

    /// Answers a request (under `ack`) that has everything it waited for, and the retries
    /// of it that waited with it; remembers the answer if the request had a key.
    fn finish(&mut self, ack: AckId, done: Option<Pending>) {
        if let Some(asked) = self.remote_asks.remove(&ack) {
            if let Some(presence) = done.as_ref().and_then(Acks::peek_presence) {
                let broker = &self.broker;
                let users = presence.list(|id| broker.user_name(id));
                self.broker.presence_answer(asked, users);
            } else {
                self.remote_asks.insert(ack, asked); // not complete yet
            }
            return;
        }
        if let Some(pending) = done {
            let broker = &self.broker;
            let answer = pending.answer(|id| broker.user_name(id));
            for conn in self.remembered.answered(ack, &answer.body, self.now) {
                self.answers.push(Answer {
                    conn,
                    ..answer.clone()
                });
            }
            self.answers.push(answer);
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
        let workers = workers_in(self.broker.channel_workers(channel));
        for &w in &workers {
            self.deliver(w, Target::Channel(Arc::clone(channel)), frame, ack);
        }
        workers.len()
    }

    /// Sends a `$user` message to every worker holding one of the user's connections, naming
    /// them; returns how many workers.
    fn deliver_to_user(&mut self, user: UserId, frame: &SharedFrame, ack: Option<AckId>) -> usize {
        let targets = self.user_targets(user);
        let workers = targets.len();
        for (w, conns) in targets {
            let target = match conns[..] {
                [one] => Target::Conn(one),
                _ => Target::Conns(conns),
            };
            self.deliver(w, target, frame, ack);
        }
        workers
    }
}

/// The body of `GET /api/nodes`: `{"nodes":[…]}`, each entry a node's heartbeat object plus
/// `heartbeat_age_ms` and `redis` (`"up"`, or `"down"` for this node when it cannot reach
/// Redis; `null` on one node). `listed` are the store's entries; this node (`own`) is added
/// when the store did not list it (one node, or Redis unreachable).
fn nodes_body(own: &str, listed: &[NodeEntry], reachable: bool) -> String {
    use serde_json::{Map, Value};
    let object = |text: &str| match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let own = object(own);
    let mut nodes: Vec<Value> = Vec::new();
    let mut listed_own = false;
    for entry in listed {
        let mut map = object(&entry.info);
        listed_own |= map.get("name") == own.get("name");
        map.insert("heartbeat_age_ms".into(), entry.age_ms.into());
        map.insert("redis".into(), "up".into());
        nodes.push(Value::Object(map));
    }
    if !listed_own {
        let mut map = own;
        map.insert("heartbeat_age_ms".into(), 0.into());
        let redis = match (listed.is_empty() && reachable, reachable) {
            (_, false) => Value::from("down"),
            (true, true) => Value::Null,
            (false, true) => Value::from("up"),
        };
        map.insert("redis".into(), redis);
        nodes.insert(0, Value::Object(map));
    }
    serde_json::json!({ "nodes": nodes }).to_string()
}

/// The workers whose bits are set in `mask`.
fn workers_in(mask: u64) -> Vec<WorkerId> {
    (0..64).filter(|w| mask & (1u64 << w) != 0).collect()
}

#[cfg(test)]
mod tests {
    use super::testing::{answer, c, ch, counted, join, publish_n, sub};
    use super::*;

    #[test]
    fn publish_with_no_subscribers_answers_at_once_and_is_kept_as_history() {
        let mut hub = Hub::new(2, HistoryConfig::default(), Instant::now());
        hub.request(
            1,
            counted(
                Command::Publish {
                    channel: Arc::from("empty"),
                    data: "1".into(),
                },
                None,
            ),
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
                conn: c(1),
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
    fn user_sends_reach_every_connection_of_the_user_by_worker() {
        let mut hub = Hub::new(2, HistoryConfig::default(), Instant::now());
        let (id, _, _) = join(&mut hub, 0, c(10), "ann", None, None);
        join(&mut hub, 1, c(20), "ann", None, None);
        join(&mut hub, 1, c(21), "ann", None, None);
        join(&mut hub, 1, c(30), "bob", None, None);
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
            [
                (0, Target::Conn(c(10))),
                (1, Target::Conns(vec![c(20), c(21)]))
            ]
        );
        // Disconnect goes to the same connections.
        hub.on_message(ToHub::LeaveUser {
            worker: 1,
            conn: c(20),
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
        assert_eq!(conns, [(0, vec![c(10)]), (1, vec![c(21)])]);
    }

    #[test]
    fn a_subscribe_answer_sits_between_the_messages_it_covers_and_the_later_ones() {
        // The hub's half of the ordering contract: one worker's inbox, in order.
        let mut hub = Hub::new(1, HistoryConfig::default(), Instant::now());
        let publish = |hub: &mut Hub| {
            hub.on_message(ToHub::Publish {
                channel: Arc::from("n"),
                data: "0".into(),
            })
        };
        hub.on_message(sub(None, None));
        publish(&mut hub);
        publish(&mut hub);
        let epoch = answer_epoch(&hub);
        hub.on_message(ToHub::Subscribe {
            worker: 0,
            conn: c(2),
            stream: ch("n"),
            since: Some(1),
            epoch: Some(epoch),
        });
        publish(&mut hub);
        let inbox: Vec<String> = hub
            .take_outbox()
            .map(|(_, m)| match m {
                ToWorker::Deliver { frame, .. } => {
                    let v: serde_json::Value = serde_json::from_slice(&frame[2..]).unwrap();
                    format!("message {}", v["seq"])
                }
                ToWorker::Subscribed {
                    conn, seq, replay, ..
                } => format!("subscribed {conn} at {seq} replaying {}", replay.len()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            inbox,
            [
                "subscribed 1:0 at 0 replaying 0",
                "message 1",
                "message 2",
                "subscribed 2:0 at 2 replaying 1",
                "message 3",
            ]
        );
    }

    /// The epoch named in the first `subscribed` still in the outbox (left there).
    fn answer_epoch(hub: &Hub) -> String {
        let Some((_, ToWorker::Subscribed { frame, .. })) = hub.outbox.first() else {
            panic!("subscribed expected first")
        };
        let v: serde_json::Value = serde_json::from_slice(&frame[2..]).unwrap();
        v["epoch"].as_str().unwrap().to_owned()
    }
}
