//! The push endpoint on a worker: identity at the upgrade, the JSON client protocol, the
//! worker's channel table (a user's connections are the hub's, see `push::users`: a connection
//! joins its user's stream at the upgrade and leaves it when it goes), and what the hub sends
//! through the inbox (fan-out, subscribe answers, disconnects, presence queries).
//!
//! Fan-out queues one shared frame (`SharedFrame`) per subscriber and marks the connection
//! dirty; when the inbox batch is done each dirty connection is written once, so a burst of
//! messages costs one `writev` per subscriber, not one per message. A subscriber whose queue
//! would pass `--max-backlog` is not given the frame (it doesn't count as delivered) and is
//! closed with 1008.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::mpsc::TryRecvError;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::debug;
use slab::Slab;

use super::{conn_of, emit, peer, Worker};
use crate::protocol::close;
use crate::protocol::frame::{write_frame, OpCode, SharedFrame};
use crate::protocol::handshake::Request;
use crate::protocol::message::MessageKind;
use crate::push::auth::{verify_hs256, Claims, Grants};
use crate::push::client_protocol::{parse_client_op, write_error, write_unsubscribed, ClientOp};
use crate::push::hub::{AckId, ConnId, Stream, Target, ToHub, ToWorker, UserId};
use crate::push::names::{validate_user, USER_CHANNEL};
use crate::push::subscribers::Table;
use crate::server::connection::{Connection, Handle, JoinedAt, PushConn, Subscription, Token};
use crate::server::Settings;
use crate::session::Endpoint;
use crate::tick::Tick;

/// Subscribe requests one connection may have waiting for the hub's answer.
const MAX_SUBSCRIBES_IN_FLIGHT: u8 = 16;

/// Inbox messages handled per turn before sockets get their turn.
const MAX_INBOX_PER_TURN: usize = 4096;

/// Who a push connection is, decided before the upgrade.
pub(crate) struct Identity {
    user: Arc<str>,
    claims: Option<Claims>,
}

/// Time from now until the Unix time `exp` (zero if past), to the nanosecond: a token is
/// never honoured past its expiry.
fn time_left(exp: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(exp).saturating_sub(now)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Decides who is connecting: a verified HS256 token (from `?token=`, `Authorization: Bearer`
/// or a `token` cookie) when a secret is set, else `?user=` (open mode). `Err` is the reason
/// for the 401.
pub(crate) fn authenticate(settings: &Settings, request: &Request<'_>) -> Result<Identity, String> {
    match &settings.jwt_secret {
        Some(secret) => {
            let token = request
                .query_param("token")
                .or_else(|| request.bearer_token())
                .or_else(|| request.cookie_value("token"))
                .ok_or_else(|| "missing token".to_owned())?;
            let claims = verify_hs256(token, secret, unix_now()).map_err(|e| e.to_string())?;
            Ok(Identity {
                user: Arc::from(claims.sub.as_str()),
                claims: Some(claims),
            })
        }
        None => {
            let user = request
                .query_param("user")
                .map(percent_decode)
                .unwrap_or_else(|| "anonymous".to_owned());
            validate_user(&user).map_err(|e| format!("bad user: {e}"))?;
            Ok(Identity {
                user: Arc::from(user),
                claims: None,
            })
        }
    }
}

/// Decodes `%XX` escapes and `+` in a query value (invalid escapes are kept as they are).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Frees a transient map's table once it is empty and was grown by a burst.
fn release_if_empty<K, V>(map: &mut HashMap<K, V>) {
    if map.is_empty() && map.capacity() > 64 {
        *map = HashMap::new();
    }
}

fn conn_id(handle: Handle) -> ConnId {
    handle.token().0 as ConnId
}

fn handle_of(id: ConnId) -> Handle {
    Handle::from_token(mio::Token(id as usize))
}

/// Where fan-out queuing puts its side effects: connections to flush once the batch is done,
/// and slow consumers to close.
struct Queuing<'a> {
    max_backlog: usize,
    dirty: &'a mut Vec<Handle>,
    slow: &'a mut Vec<Handle>,
}

impl Queuing<'_> {
    /// Queues a shared frame for `conn`. Returns whether the connection took it.
    fn push(&mut self, conn: &mut Connection, handle: Handle, frame: &SharedFrame) -> bool {
        if !conn.session.is_open() {
            return false;
        }
        if conn.queued() + frame.len() > self.max_backlog {
            self.slow.push(handle);
            return false;
        }
        conn.outbound
            .get_or_insert_with(Default::default)
            .push_shared(frame.clone());
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(handle);
        }
        true
    }
}

impl Worker {
    fn send_to_hub(&mut self, message: ToHub) {
        if self.link.hub.tx.send(message).is_ok() {
            self.hub_wake = true;
        }
    }

    /// Sets up a freshly upgraded push connection and asks the hub for its `$user` stream.
    pub(super) fn accept_push(&mut self, handle: Handle, identity: Identity) {
        if self.get(handle).is_none() {
            return;
        }
        let mut push = PushConn::default();
        if let Some(claims) = identity.claims {
            push.set_token(self.token_of(&claims));
        }
        let expires = push.expires();
        let user = Arc::clone(&identity.user);
        let Some(conn) = self.get(handle) else {
            return;
        };
        conn.push = Some(Box::new(push));
        self.joining.insert(conn_id(handle), Arc::clone(&user));
        self.subscribes_in_flight.insert(conn_id(handle), 1);
        self.send_to_hub(ToHub::JoinUser {
            worker: self.id,
            conn: conn_id(handle),
            user,
            since: None,
            epoch: None,
        });
        self.set_app_deadline(handle, Tick(expires));
    }

    /// Handles the push messages collected while decoding a read.
    pub(super) fn handle_push_messages(&mut self, handle: Handle) {
        let input = std::mem::take(&mut self.push_in);
        let messages = std::mem::take(&mut self.push_msgs);
        for &(kind, start, end) in &messages {
            if self.get(handle).is_none_or(|c| !c.session.is_open()) {
                break;
            }
            self.on_push_message(handle, kind, &input[start..end]);
        }
        self.push_in = input;
        self.push_in.clear();
        self.push_msgs = messages;
        self.push_msgs.clear();
    }

    fn reply_text(&mut self, handle: Handle, json: &[u8]) {
        let Worker { conns, cork, .. } = self;
        if let Some(conn) = conn_of(conns, handle) {
            emit(&mut conn.outbound, cork, |out| {
                write_frame(out, OpCode::Text, json)
            });
        }
    }

    fn reply_error(&mut self, handle: Handle, code: u16, reason: &str) {
        let mut json = Vec::new();
        write_error(&mut json, code, reason);
        self.reply_text(handle, &json);
    }

    fn on_push_message(&mut self, handle: Handle, kind: MessageKind, data: &[u8]) {
        if kind == MessageKind::Binary {
            return self.reply_error(
                handle,
                501,
                "binary frames need an upstream; none is configured",
            );
        }
        if data == b"ping" {
            return self.reply_text(handle, b"pong");
        }
        match parse_client_op(data) {
            Err(e) => self.reply_error(handle, e.code, &e.reason),
            Ok(ClientOp::Subscribe {
                channel,
                since,
                epoch,
            }) => self.subscribe(handle, &channel, since, epoch.map(|e| e.into_owned())),
            Ok(ClientOp::Unsubscribe { channel }) => self.unsubscribe(handle, &channel),
            Ok(ClientOp::Publish { channel, data }) => {
                self.client_publish(handle, &channel, data.get())
            }
            Ok(ClientOp::Refresh { token }) => self.refresh(handle, &token),
        }
    }

    fn subscribe(
        &mut self,
        handle: Handle,
        channel: &str,
        since: Option<u64>,
        epoch: Option<String>,
    ) {
        let max = self.settings.max_subscriptions;
        // Share the table's copy of the name when the channel is known here.
        let shared = self.channels.shared_key(channel);
        let Some(push) = conn_of(&mut self.conns, handle).and_then(|c| c.push.as_deref_mut())
        else {
            return;
        };
        let id = conn_id(handle);
        if self.subscribes_in_flight.get(&id).copied().unwrap_or(0) >= MAX_SUBSCRIBES_IN_FLIGHT {
            return self.reply_error(handle, 429, "too many subscribe requests in flight");
        }
        if channel == USER_CHANNEL {
            // The connection's own stream, already subscribed: a recovery request, by the
            // hub's id or, if the join is still unanswered, by name.
            *self.subscribes_in_flight.entry(id).or_insert(0) += 1;
            let (worker, conn) = (self.id, id);
            let message = match push.user {
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
                    None => return,
                },
            };
            return self.send_to_hub(message);
        }
        if !push.grants().is_none_or(|g| g.may_subscribe(channel)) {
            return self.reply_error(handle, 403, "the token does not allow this channel");
        }
        let existing = push.sub(channel).map(|s| Arc::clone(&s.channel));
        let name = match existing {
            Some(name) => name,
            None => {
                if push.sub_count() >= max {
                    return self.reply_error(handle, 429, "too many subscriptions");
                }
                let name: Arc<str> = shared.unwrap_or_else(|| Arc::from(channel));
                push.add_sub(Subscription {
                    channel: Arc::clone(&name),
                    slot: None,
                    joined_at: JoinedAt::NOT_YET,
                });
                self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
                name
            }
        };
        *self.subscribes_in_flight.entry(id).or_insert(0) += 1;
        self.channels.add_pending(&name);
        self.send_to_hub(ToHub::Subscribe {
            worker: self.id,
            conn: conn_id(handle),
            stream: Stream::Channel(name),
            since,
            epoch,
        });
    }

    fn unsubscribe(&mut self, handle: Handle, channel: &str) {
        let Some(push) = self.get(handle).and_then(|c| c.push.as_deref_mut()) else {
            return;
        };
        if let Some(sub) = push.remove_sub(channel) {
            self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
            if let Some(slot) = sub.slot {
                self.leave_channel(handle, &sub.channel, slot);
            }
        }
        let mut json = Vec::new();
        write_unsubscribed(&mut json, channel);
        self.reply_text(handle, &json);
    }

    /// Removes `handle` from a channel's table and fixes the slot of whoever moved.
    fn leave_channel(&mut self, handle: Handle, channel: &Arc<str>, slot: u32) {
        let removed = self.channels.remove(channel, slot, handle);
        if let Some(moved) = removed.moved {
            if let Some(sub) = self
                .get(moved)
                .and_then(|c| c.push.as_deref_mut())
                .and_then(|p| p.sub_mut(channel))
            {
                sub.slot = Some(slot);
            }
        }
        if removed.now_idle {
            self.send_to_hub(ToHub::Idle {
                worker: self.id,
                channel: Arc::clone(channel),
            });
        }
    }

    fn client_publish(&mut self, handle: Handle, channel: &str, data: &str) {
        let now = self.now;
        let second = self.settings.ticks(Duration::from_secs(1));
        let rate = self.settings.publish_rate;
        let Some(push) = self.get(handle).and_then(|c| c.push.as_deref_mut()) else {
            return;
        };
        let allowed = push.grants().is_none_or(|g| g.may_publish(channel));
        if !allowed || channel.starts_with('$') {
            return self.reply_error(handle, 403, "the token does not allow publishing here");
        }
        if !push.take_publish(now.0, second, rate) {
            return self.reply_error(handle, 429, "too many publishes");
        }
        self.send_to_hub(ToHub::Publish {
            channel: Arc::from(channel),
            data: data.to_owned(),
        });
    }

    fn refresh(&mut self, handle: Handle, token: &str) {
        let Some(secret) = self.settings.jwt_secret.clone() else {
            return self.reply_error(handle, 400, "no tokens in open mode");
        };
        let claims = match verify_hs256(token, &secret, unix_now()) {
            Ok(claims) => claims,
            Err(e) => return self.reply_error(handle, 403, &format!("refresh refused: {e}")),
        };
        let token = self.token_of(&claims);
        let expires = token.expires;
        let Some(conn) = self.get(handle) else {
            return self.release_grants(token);
        };
        let Some(push) = conn.push.as_deref_mut() else {
            return self.release_grants(token);
        };
        if push
            .token()
            .is_none_or(|old| old.user_fingerprint != token.user_fingerprint)
        {
            self.release_grants(token);
            return self.reply_error(
                handle,
                403,
                "refresh refused: the token is for another user",
            );
        }
        if let Some(old) = push.set_token(token) {
            self.release_grants(old);
        }
        // The next deadline is the ping or the new expiry, whichever comes first.
        self.set_app_deadline(handle, Tick(expires));
    }

    /// Takes what the hub sent, up to a per-turn budget, then writes every connection that
    /// got frames.
    pub(super) fn drain_inbox(&mut self) {
        self.inbox_again = false;
        let mut slow = Vec::new();
        let mut published = Vec::new();
        let mut delivered_total = 0u64;
        for _ in 0..MAX_INBOX_PER_TURN {
            let message = match self.link.inbox.try_recv() {
                Ok(message) => message,
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            };
            self.link
                .inbox_load
                .fetch_sub(message.weight(), Ordering::Relaxed);
            match message {
                ToWorker::Deliver {
                    target,
                    frame,
                    ack,
                    at,
                } => {
                    published.push(at);
                    let n = self.deliver(&target, &frame, &mut slow);
                    delivered_total += n;
                    if let Some(ack) = ack {
                        self.send_to_hub(ToHub::Ack { ack, count: n });
                    }
                }
                ToWorker::Subscribed {
                    conn,
                    stream,
                    seq,
                    frame,
                    replay,
                } => self.on_subscribed(handle_of(conn), stream, seq, &frame, &replay, &mut slow),
                ToWorker::Disconnect { conns, ack } => self.disconnect(&conns, ack),
                ToWorker::Presence { ack, channel } => self.presence(ack, &channel),
                ToWorker::Drain { spread, timeout } => self.begin_drain(spread, timeout),
            }
        }
        // A burst of arrivals is over: give its bookkeeping back.
        release_if_empty(&mut self.joining);
        release_if_empty(&mut self.subscribes_in_flight);
        if self.link.inbox_load.load(Ordering::Relaxed) > 0 {
            // More may be waiting: come back after one round of sockets.
            self.inbox_again = true;
        }
        self.stats
            .deliveries
            .fetch_add(delivered_total, Ordering::Relaxed);
        self.stats
            .messages_out
            .fetch_add(delivered_total, Ordering::Relaxed);
        for handle in slow {
            self.drop_slow_consumer(handle);
        }
        for handle in std::mem::take(&mut self.dirty) {
            if let Some(conn) = self.get(handle) {
                conn.dirty = false;
                self.flush(handle);
            }
        }
        let now = std::time::Instant::now();
        for at in published {
            self.stats
                .publish_latency
                .observe(now.saturating_duration_since(at));
        }
    }

    /// The connections, the channel table, and a [`Queuing`] into this worker's lists, borrowed
    /// apart so that fan-out can hold all three.
    fn queuing<'a>(
        &'a mut self,
        slow: &'a mut Vec<Handle>,
    ) -> (
        &'a mut Slab<Connection>,
        &'a Table<Arc<str>, Handle>,
        Queuing<'a>,
    ) {
        let Worker {
            conns,
            channels,
            dirty,
            settings,
            ..
        } = self;
        let queuing = Queuing {
            max_backlog: settings.max_backlog,
            dirty,
            slow,
        };
        (conns, channels, queuing)
    }

    /// Queues `frame` for the target's local connections; returns how many took it.
    fn deliver(&mut self, target: &Target, frame: &SharedFrame, slow: &mut Vec<Handle>) -> u64 {
        let (conns, channels, mut queuing) = self.queuing(slow);
        let mut count = 0;
        // The FIFO inbox guarantees every member joined below this message's seq (its
        // subscribe was answered before it): no duplicate check is needed here.
        let mut each = |handle: Handle| {
            if let Some(conn) = conn_of(conns, handle) {
                count += u64::from(queuing.push(conn, handle, frame));
            }
        };
        match target {
            Target::Channel(channel) => channels.members(channel).iter().for_each(|&h| each(h)),
            Target::Conn(conn) => each(handle_of(*conn)),
            Target::Conns(list) => list.iter().for_each(|&c| each(handle_of(c))),
            Target::Everyone => {
                for (key, conn) in conns.iter_mut() {
                    if conn.session.endpoint() == Endpoint::Push {
                        let handle = conn.handle(key);
                        count += u64::from(queuing.push(conn, handle, frame));
                    }
                }
            }
        }
        count
    }

    /// The hub answered a subscribe: join the table, send `subscribed` and the replay.
    fn on_subscribed(
        &mut self,
        handle: Handle,
        stream: Stream,
        seq: u64,
        frame: &SharedFrame,
        replay: &[SharedFrame],
        slow: &mut Vec<Handle>,
    ) {
        // Is the connection still there and still wanting this stream? Already in the table?
        let push = self
            .conns
            .get(handle.key as usize)
            .filter(|c| c.generation == handle.generation)
            .and_then(|c| c.push.as_deref());
        let (wanted, already) = match (&stream, push) {
            (Stream::Channel(name), Some(p)) => match p.sub(name) {
                Some(sub) => (true, sub.slot.is_some()),
                None => (false, false),
            },
            // A live connection's `$user` answer is always for its own user.
            (Stream::User(_), Some(p)) => (true, p.user.is_some()),
            (_, None) => (false, false),
        };
        let mut slot = None;
        match &stream {
            Stream::Channel(name) => {
                let (joined, idle) = self
                    .channels
                    .resolve_pending(name, (wanted && !already).then_some(handle));
                slot = joined;
                if idle {
                    self.send_to_hub(ToHub::Idle {
                        worker: self.id,
                        channel: Arc::clone(name),
                    });
                }
            }
            // The hub made the connection a member when it asked; it is gone since.
            Stream::User(user) if !wanted => self.send_to_hub(ToHub::LeaveUser {
                worker: self.id,
                conn: conn_id(handle),
                user: *user,
            }),
            Stream::User(_) => {
                self.joining.remove(&conn_id(handle));
            }
        }
        if let Some(n) = self.subscribes_in_flight.get_mut(&conn_id(handle)) {
            *n -= 1;
            if *n == 0 {
                self.subscribes_in_flight.remove(&conn_id(handle));
            }
        }
        if !wanted {
            return;
        }
        let (conns, _, mut queuing) = self.queuing(slow);
        let Some(conn) = conn_of(conns, handle) else {
            return;
        };
        let Some(push) = conn.push.as_deref_mut() else {
            return;
        };
        // The replay is contiguous and ends at `seq`. After this answer the connection holds
        // every message above `holds_from`.
        let first = (seq + 1).saturating_sub(replay.len() as u64);
        let holds_from = if replay.is_empty() { seq } else { first - 1 };
        let joined_at = match &stream {
            Stream::Channel(name) => match push.sub_mut(name) {
                Some(sub) => {
                    if slot.is_some() {
                        sub.slot = slot;
                    }
                    sub.joined_at.join(holds_from)
                }
                None => return,
            },
            Stream::User(user) => {
                push.user = Some(*user);
                push.user_joined_at.join(holds_from)
            }
        };
        if !queuing.push(conn, handle, frame) {
            return;
        }
        // A first join gets the whole replay; a re-join (recovery on a stream this connection
        // already receives) only what is at or below its join point: the rest came live.
        for (i, frame) in replay.iter().enumerate() {
            if joined_at.is_some_and(|j| first + i as u64 > j) {
                break;
            }
            if !queuing.push(conn, handle, frame) {
                return;
            }
        }
    }

    fn disconnect(&mut self, conns: &[ConnId], ack: AckId) {
        let mut closed = 0;
        for handle in conns.iter().map(|&c| handle_of(c)) {
            if self.get(handle).is_some_and(|c| c.session.is_open()) {
                debug!(
                    "{}: disconnected by the API",
                    self.get(handle).map(|c| peer(c)).unwrap_or_default()
                );
                self.close_with(handle, close::DISCONNECTED, "disconnected");
                closed += 1;
            }
        }
        self.send_to_hub(ToHub::Ack { ack, count: closed });
    }

    fn presence(&mut self, ack: AckId, channel: &Arc<str>) {
        let mut users: Vec<UserId> = Vec::new();
        for &handle in self.channels.members(channel) {
            if let Some(push) = self
                .conns
                .get(handle.key as usize)
                .filter(|c| c.generation == handle.generation)
                .and_then(|c| c.push.as_deref())
            {
                users.extend(push.user);
            }
        }
        users.sort_unstable();
        users.dedup();
        self.send_to_hub(ToHub::PresenceReply { ack, users });
    }

    /// A push connection is gone: leave every table it is in.
    /// What a connection keeps of a verified token; its grants are the worker's shared copy.
    fn token_of(&mut self, claims: &Claims) -> Token {
        let grants = Grants::new(claims);
        let grants = match self.grants.get(&grants) {
            Some(shared) => Arc::clone(shared),
            None => {
                let shared = Arc::new(grants);
                self.grants.insert(Arc::clone(&shared));
                shared
            }
        };
        Token {
            grants,
            user_fingerprint: self.user_key.hash_one(claims.sub.as_str()),
            expires: (self.now + self.settings.ticks(time_left(claims.exp))).0,
        }
    }

    /// Lets go of a token; the shared grants go with the last connection holding them.
    fn release_grants(&mut self, token: Token) {
        // One reference is the worker's set, one is `token`: nobody else uses them.
        if Arc::strong_count(&token.grants) == 2 {
            self.grants.remove(&*token.grants);
        }
    }

    pub(super) fn forget_push(&mut self, handle: Handle, mut push: PushConn) {
        self.subscribes_in_flight.remove(&conn_id(handle));
        if let Some(token) = push.take_token() {
            self.release_grants(token);
        }
        for sub in push.subs() {
            self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
            if let Some(slot) = sub.slot {
                self.leave_channel(handle, &sub.channel, slot);
            }
        }
        match push.user {
            Some(user) => self.send_to_hub(ToHub::LeaveUser {
                worker: self.id,
                conn: conn_id(handle),
                user,
            }),
            // Not joined yet: the hub's answer will find the connection gone and leave.
            None => {
                self.joining.remove(&conn_id(handle));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%E2%82%AC"), "€");
    }
}
