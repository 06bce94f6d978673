//! The push endpoint on a worker, as the driver of its [`Router`]: identity at the upgrade,
//! then the client's messages and what the hub sends through the inbox go to the router, and
//! its effects are applied here — text replies into the connection's queue (or the cork),
//! messages to the hub, re-armed token deadlines, the frames of a delivery or of a subscribe
//! answer. The router decides who gets what; this file only queues, sends and closes. It is
//! also the one place where a worker [`Handle`] and a push [`ConnId`] are converted.
//!
//! Fan-out queues one shared frame (`SharedFrame`) per subscriber — its compressed twin to a
//! subscriber that negotiated permessage-deflate, made once for all workers by the first
//! that needs it — and marks the connection dirty; when the inbox batch is done each dirty connection is written once, so a burst of
//! messages costs one `writev` per subscriber, not one per message. A subscriber whose queue
//! would pass `--max-backlog` is not given the frame (it doesn't count as delivered) and is
//! closed with 1008.

use std::sync::atomic::Ordering;
use std::sync::mpsc::TryRecvError;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use log::debug;
use slab::Slab;

use super::{conn_of, emit, peer, Tx, Worker};
use crate::protocol::close;
use crate::protocol::deflate::{shared_twin, Deflater};
use crate::protocol::frame::{write_frame, OpCode, SharedFrame};
use crate::protocol::handshake::Request;
use crate::protocol::message::MessageKind;
use crate::push::auth::{verify_hs256, Claims};
use crate::push::hub::{AckId, Stream, Target, ToHub, ToWorker};
use crate::push::names::validate_user;
use crate::push::router::{
    ConnId, Effect, Now, PushConn, PushConns, Recipients, Resume, Router, RouterConfig,
};
use crate::server::connection::{Connection, Handle, Outbound};
use crate::server::transport::Transport;
use crate::server::Settings;
use crate::session::{Endpoint, Refusal};
use crate::tick::Tick;

/// Inbox messages handled per turn before sockets get their turn.
const MAX_INBOX_PER_TURN: usize = 4096;

/// Who a push connection is, decided before the upgrade, and the `$user` recovery it asked
/// for.
pub(crate) struct Identity {
    user: Arc<str>,
    claims: Option<Claims>,
    resume: Resume,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Decides who is connecting: a verified HS256 token (from `?token=`, `Authorization: Bearer`
/// or a `token` cookie) when a secret is set, else `?user=` (open mode); and the `$user`
/// recovery it asks for (`?since=…&epoch=…`, see [`resume`]). `Err` is the reason for the
/// 401.
pub(crate) fn authenticate(
    settings: &Settings,
    request: &Request<'_>,
) -> Result<Identity, Refusal> {
    let resume = resume(request)?;
    match &settings.jwt_secret {
        Some(secret) => {
            let token = request
                .query_param("token")
                .or_else(|| request.bearer_token())
                .or_else(|| request.cookie_value("token"))
                .ok_or_else(|| Refusal::Unauthorized("missing token".to_owned()))?;
            let claims = verify_hs256(token, secret, unix_now())
                .map_err(|e| Refusal::Unauthorized(e.to_string()))?;
            Ok(Identity {
                user: Arc::from(claims.sub.as_str()),
                claims: Some(claims),
                resume,
            })
        }
        None => {
            let user = request
                .query_param("user")
                .map(percent_decode)
                .unwrap_or_else(|| "anonymous".to_owned());
            validate_user(&user).map_err(|e| Refusal::Unauthorized(format!("bad user: {e}")))?;
            Ok(Identity {
                user: Arc::from(user),
                claims: None,
                resume,
            })
        }
    }
}

/// The `$user` recovery of an upgrade request: `since` (the last `$user` seq the client saw)
/// and `epoch` from its query (design.md, "Public listener"). A `since` that is not a
/// non-negative integer is a malformed request: 400.
fn resume(request: &Request<'_>) -> Result<Resume, Refusal> {
    let epoch = request.query_param("epoch").map(percent_decode);
    let since = match request.query_param("since").map(percent_decode) {
        None => None,
        Some(since) => Some(since.parse::<u64>().map_err(|_| {
            Refusal::BadRequest(format!(
                "since must be the last $user seq you saw (a whole number), not {since:?}"
            ))
        })?),
    };
    Ok(Resume { since, epoch })
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

/// The worker's handle for a push connection. With [`handle_of`], the one place where the
/// server's connection handles and the push layer's ids meet: the same key and generation.
pub(super) fn conn_id(handle: Handle) -> ConnId {
    ConnId::new(handle.key, handle.generation)
}

/// The worker handle a push connection id names.
fn handle_of(id: ConnId) -> Handle {
    Handle {
        key: id.key(),
        generation: id.generation(),
    }
}

/// The router finds a connection's push state in the worker's slab (generation checked).
impl<T> PushConns for Slab<Connection<T>> {
    fn push_conn(&mut self, id: ConnId) -> Option<&mut PushConn> {
        conn_of(self, handle_of(id)).and_then(|c| c.push.as_deref_mut())
    }
}

/// The router for worker `id`, configured from the worker's settings.
pub(super) fn new_router(id: usize, settings: &Settings) -> Router {
    Router::new(RouterConfig {
        worker: id,
        max_subscriptions: settings.max_subscriptions,
        publish_rate: settings.publish_rate,
        tick: settings.tick,
        jwt_secret: settings.jwt_secret.clone(),
    })
}

/// Where fan-out queuing puts its side effects: connections to flush once the batch is done,
/// and slow consumers to close.
struct Queuing<'a> {
    max_backlog: usize,
    dirty: &'a mut Vec<Handle>,
    slow: &'a mut Vec<Handle>,
    /// The worker's compressor, for the first deflate subscriber of a frame whose compressed
    /// twin no worker made yet.
    deflater: &'a mut Deflater,
    /// `--compression-min-size`.
    compression_min_size: usize,
}

impl Queuing<'_> {
    /// Queues a shared frame for `conn`: its compressed twin if the connection negotiated
    /// permessage-deflate and the twin pays, else the plain frame. Returns whether the
    /// connection took it.
    fn push<T>(&mut self, conn: &mut Connection<T>, handle: Handle, frame: &SharedFrame) -> bool {
        if !conn.session.may_send_data() {
            return false;
        }
        let extensions = conn.session.extensions();
        let twin_len = extensions
            .deflate()
            .then(|| {
                shared_twin(
                    frame,
                    self.deflater,
                    self.compression_min_size,
                    extensions.server_window_bits(),
                )
                .map(<[u8]>::len)
            })
            .flatten();
        if conn.queued() + twin_len.unwrap_or(frame.len()) > self.max_backlog {
            self.slow.push(handle);
            return false;
        }
        let outbound = queue_for_batch(conn, handle, self.dirty);
        match twin_len {
            Some(_) => outbound.push_deflated(frame.clone()),
            None => outbound.push_shared(frame.clone()),
        }
        true
    }
}

/// Gives `conn` a queue if it has none and lists it, once, for the flush at the end of the
/// batch: for frames queued outside the connection's own turn (fan-out, replies and Close
/// replies released by a hub answer), which must never go to the cork. The "listed already"
/// bit lives in the queue, which exists exactly while it can be set.
pub(super) fn queue_for_batch<'a, T>(
    conn: &'a mut Connection<T>,
    handle: Handle,
    dirty: &mut Vec<Handle>,
) -> &'a mut Outbound {
    let outbound = conn.outbound.get_or_insert_with(Default::default);
    if !outbound.dirty {
        outbound.dirty = true;
        dirty.push(handle);
    }
    outbound
}

impl<T: Transport> Worker<T> {
    pub(super) fn send_to_hub(&mut self, message: ToHub) {
        if self.link.hub.tx.send(message).is_ok() {
            self.hub_wake = true;
        }
    }

    /// The time as the router takes it.
    fn push_now(&self) -> Now {
        Now {
            tick: self.now,
            unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    /// Applies what the router asked for, in order. `turn` is the connection whose read is
    /// being handled, if any: its replies go where its other frames of this turn went (its
    /// queue, or the cork written at the end of its turn). A reply for any other connection
    /// (one released by a subscribe answer from the inbox) goes to that connection's queue,
    /// which is flushed with the batch: the cork belongs to the turn's connection alone.
    fn apply_effects(&mut self, turn: Option<Handle>) {
        let mut effects = self.router.take_effects();
        for effect in effects.drain(..) {
            match effect {
                Effect::Text { conn, text } => {
                    let handle = handle_of(conn);
                    let Worker {
                        conns, cork, dirty, ..
                    } = self;
                    // A connection that is closing gets nothing after its Close (but what it is
                    // owed still goes before a Close reply held for it).
                    let Some(conn) = conn_of(conns, handle).filter(|c| c.session.may_send_data())
                    else {
                        continue;
                    };
                    if turn != Some(handle) {
                        queue_for_batch(conn, handle, dirty);
                    }
                    // Into the queue if there is one (always, outside the turn), else the cork.
                    emit(&mut conn.outbound, cork, |out| {
                        write_frame(out, OpCode::Text, &text)
                    });
                }
                Effect::ReleaseClose { conn, code } => {
                    let handle = handle_of(conn);
                    let Worker {
                        conns,
                        cork,
                        dirty,
                        stats,
                        ..
                    } = self;
                    if let Some(conn) = conn_of(conns, handle) {
                        if turn != Some(handle) {
                            queue_for_batch(conn, handle, dirty);
                        }
                        let mut tx = Tx::new(&mut conn.outbound, cork);
                        if conn.session.release_close(code, &mut tx) {
                            stats.close_sent.add(code);
                        }
                    }
                    self.after_close(handle);
                }
                Effect::Hub(message) => self.send_to_hub(message),
                Effect::Expires { conn, expires } => self.rearm_token(handle_of(conn), expires),
            }
        }
        self.router.recycle(effects);
        let delta = self.router.take_subscriptions_delta();
        if delta > 0 {
            self.stats
                .subscriptions
                .fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
        } else if delta < 0 {
            self.stats
                .subscriptions
                .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// Writes every connection that got frames queued outside its own turn (fan-out, replies
    /// released by a subscribe answer): once per batch, so a burst is one `sendmsg` each.
    pub(super) fn flush_dirty(&mut self) {
        for handle in std::mem::take(&mut self.dirty) {
            if let Some(conn) = self.get(handle) {
                if let Some(outbound) = conn.outbound.as_deref_mut() {
                    outbound.dirty = false;
                }
                self.flush(handle);
            }
        }
    }

    /// The connection's token was refreshed: the next deadline is the ping or the new expiry,
    /// whichever comes first.
    fn rearm_token(&mut self, handle: Handle, expires: Tick) {
        self.set_app_deadline(handle, expires);
    }

    /// Sets up a freshly upgraded push connection and asks the hub for its `$user` stream.
    pub(super) fn accept_push(&mut self, handle: Handle, identity: Identity) {
        let now = self.push_now();
        let Worker { conns, router, .. } = self;
        let Some(conn) = conn_of(conns, handle) else {
            return;
        };
        let push = router.accept(
            conn_id(handle),
            identity.user,
            identity.claims.as_ref(),
            identity.resume,
            now,
        );
        let expires = push.expires();
        conn.push = Some(Box::new(push));
        self.apply_effects(Some(handle));
        self.set_app_deadline(handle, expires);
    }

    /// Handles the push messages collected while decoding a read.
    pub(super) fn handle_push_messages(&mut self, handle: Handle) {
        let input = std::mem::take(&mut self.push_in);
        let messages = std::mem::take(&mut self.push_msgs);
        let now = self.push_now();
        let store_down = self.stats.store_down.load(Ordering::Relaxed);
        self.router.set_store_down(store_down);
        for &(kind, start, end) in &messages {
            if self.get(handle).is_none_or(|c| !c.session.is_open()) {
                break;
            }
            if kind == MessageKind::Binary && self.upstream.is_some() {
                self.on_action(handle, &input[start..end]);
                continue;
            }
            let Worker { conns, router, .. } = self;
            router.handle_message(conns, conn_id(handle), kind, &input[start..end], now);
            self.apply_effects(Some(handle));
        }
        self.push_in = input;
        self.push_in.clear();
        self.push_msgs = messages;
        self.push_msgs.clear();
    }

    /// Takes what the hub sent, up to a per-turn budget, then writes every connection that
    /// got frames.
    pub(super) fn take_inbox(&mut self) {
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
                } => self.on_subscribed(conn, &stream, seq, &frame, &replay, &mut slow),
                ToWorker::Disconnect { conns, ack } => self.disconnect(&conns, ack),
                ToWorker::UserName { conn, name } => self.on_user_name(handle_of(conn), name),
                ToWorker::Presence { ack, channel } => {
                    let Worker { conns, router, .. } = self;
                    router.presence(conns, ack, &channel);
                    self.apply_effects(None);
                }
                ToWorker::Drain { spread, timeout } => self.begin_drain(spread, timeout),
            }
        }
        // A burst of arrivals is over: give its bookkeeping back.
        self.router.end_batch();
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
        self.flush_dirty();
        let now = std::time::Instant::now();
        for at in published {
            self.stats
                .publish_latency
                .observe(now.saturating_duration_since(at));
        }
    }

    /// The connections, the router, and a [`Queuing`] into this worker's lists, borrowed
    /// apart so that fan-out can hold all three.
    fn queuing<'a>(
        &'a mut self,
        slow: &'a mut Vec<Handle>,
    ) -> (&'a mut Slab<Connection<T>>, &'a mut Router, Queuing<'a>) {
        let Worker {
            conns,
            router,
            dirty,
            settings,
            deflater,
            ..
        } = self;
        let queuing = Queuing {
            max_backlog: settings.max_backlog,
            dirty,
            slow,
            deflater,
            compression_min_size: settings.compression_min_size,
        };
        (conns, router, queuing)
    }

    /// Queues `frame` for the target's local connections; returns how many took it.
    fn deliver(&mut self, target: &Target, frame: &SharedFrame, slow: &mut Vec<Handle>) -> u64 {
        let (conns, router, mut queuing) = self.queuing(slow);
        let mut count = 0;
        match router.recipients(target) {
            Recipients::Listed(listed) => {
                for id in listed {
                    let handle = handle_of(id);
                    if let Some(conn) = conn_of(conns, handle) {
                        count += u64::from(queuing.push(conn, handle, frame));
                    }
                }
            }
            Recipients::Everyone => {
                for (key, conn) in conns.iter_mut() {
                    // A connection whose `$user` answer has not come yet gets nothing before
                    // it: its first frame is that answer (design.md).
                    if conn.session.endpoint() == Endpoint::Push
                        && !router.is_joining(conn_id(conn.handle(key)))
                    {
                        let handle = conn.handle(key);
                        count += u64::from(queuing.push(conn, handle, frame));
                    }
                }
            }
        }
        count
    }

    /// The hub answered a subscribe: the router joins the connection; queue `subscribed`
    /// and the replay it allows.
    fn on_subscribed(
        &mut self,
        id: ConnId,
        stream: &Stream,
        seq: u64,
        frame: &SharedFrame,
        replay: &[SharedFrame],
        slow: &mut Vec<Handle>,
    ) {
        let (conns, router, mut queuing) = self.queuing(slow);
        let join = router.subscribed(conns, id, stream, seq, replay.len());
        if let Some(join) = join {
            let handle = handle_of(join.conn);
            if let Some(conn) = conn_of(conns, handle) {
                let frames = std::iter::once(frame).chain(replay.iter().take(join.replay));
                for frame in frames {
                    if !queuing.push(conn, handle, frame) {
                        break;
                    }
                }
            }
        }
        // After the answer: the effects may hold replies to ops the client sent after it.
        self.apply_effects(None);
    }

    /// Closes `conns` with 4000; acknowledges with the count only if `ack` is set (a
    /// `?wait=delivered` request waits for it).
    fn disconnect(&mut self, conns: &[ConnId], ack: Option<AckId>) {
        let mut closed = 0;
        for handle in conns.iter().copied().map(handle_of) {
            if self.get(handle).is_some_and(|c| c.session.is_open()) {
                debug!(
                    "{}: disconnected by the API",
                    self.get(handle).map(|c| peer(c)).unwrap_or_default()
                );
                self.close_with(handle, close::DISCONNECTED, "disconnected");
                closed += 1;
            }
        }
        if let Some(ack) = ack {
            self.send_to_hub(ToHub::Ack { ack, count: closed });
        }
    }

    /// The peer sent Close while it was owed answers: our reply waits behind them in the
    /// router (released by [`Effect::ReleaseClose`]).
    pub(super) fn hold_close(&mut self, handle: Handle, code: u16) {
        self.router.hold_close(conn_id(handle), code);
        self.apply_effects(Some(handle));
    }

    /// A push connection is gone: leave every table it is in.
    pub(super) fn forget_push(&mut self, handle: Handle, push: PushConn) {
        let Worker { conns, router, .. } = self;
        router.forget(conns, conn_id(handle), push);
        self.apply_effects(None);
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
