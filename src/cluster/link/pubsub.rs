//! The pub/sub thread: one RESP3 connection in subscribe mode.
//!
//! RESP3 because there every subscribe-mode answer (`message`, `subscribe`, `unsubscribe`)
//! is a push, which the `redis` crate's `Connection::recv_response` hands back as it comes,
//! even across a short read timeout (a timeout only ever skips a late non-push reply, and
//! this connection never asks for one). So the thread can read with a [`POLL`] timeout and,
//! between reads, write the `SUBSCRIBE`s and `UNSUBSCRIBE`s the hub asked for, on the same
//! connection, without the crate's `PubSub` wrapper (which cannot see confirmations).
//!
//! The thread keeps no topic set (the broker knows which streams it listens to: one set per
//! node, not two). The [`PubSubOp::Subscribe`]s queued together are written as `SUBSCRIBE`s
//! of up to [`CHUNK`] topics each and answered by one [`Reply::Listening`] once Redis
//! confirmed every topic (an [`PubSubOp::Unsubscribe`] queued between them keeps its place).
//! A new connection listens to nothing: [`Reply::Link`] `up` tells the broker to subscribe
//! every topic again, and ops that come while the link is down are dropped (`down` told the
//! broker that nothing is subscribed any more).
//!
//! Liveness: after [`PROBE_AFTER`] without a byte from Redis, the thread subscribes again to
//! its own probe topic (`PREFIX:probe:NODE`), which Redis confirms with a push; after
//! [`DEAD_AFTER`] of silence the connection is declared dead and replaced.

use std::collections::HashSet;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use redis::{Connection, PushKind, Value};

use super::{sleep_unless_stopped, text, Backoff, Ctx, LinkState};
use crate::cluster::ops::{parse_epoch, LinkKind, PubSubOp, Reply, StreamKey};

/// Read timeout between checks for new [`PubSubOp`]s.
const POLL: Duration = Duration::from_millis(15);

/// Most topics per `SUBSCRIBE`/`UNSUBSCRIBE` command.
const CHUNK: usize = 512;

/// Most values read before subscription changes are served again.
const READ_BATCH: usize = 1024;

/// At most this long reading before subscription changes are served again (a steady stream
/// never lets a read time out).
const READ_TIME: Duration = Duration::from_millis(2);

/// Silence after which the probe topic is subscribed again.
const PROBE_AFTER: Duration = Duration::from_secs(1);

/// Silence after which the connection is declared dead.
const DEAD_AFTER: Duration = Duration::from_secs(3);

/// Runs the pub/sub thread until the link is dropped.
pub(super) fn run(ctx: &Ctx, ops: &Receiver<PubSubOp>) {
    let client = match resp3_client(ctx) {
        Ok(c) => c,
        Err(e) => {
            log::error!("redis pubsub: {e}");
            return;
        }
    };
    let mut state = LinkState::new(LinkKind::PubSub);
    let mut backoff = Backoff::new();
    let mut out = Vec::new();
    loop {
        if ctx.stopped() {
            return;
        }
        // Ops queued while down are void: `down` (or no `up` yet) means nothing is
        // subscribed, and `up` has the broker subscribe everything again.
        if !state.is_up() && !discard(ops) {
            return;
        }
        let mut sub = match Sub::open(ctx, &client, &mut out) {
            Ok(sub) => sub,
            Err(e) => {
                state.failed("connecting", &e, ctx.timeout());
                state.set(false, &mut out);
                ctx.deliver(&mut out);
                sleep_unless_stopped(ctx, backoff.delay());
                continue;
            }
        };
        backoff.reset();
        state.set(true, &mut out);
        ctx.deliver(&mut out);
        let result = sub.serve(ops, &mut out);
        if ctx.stopped() {
            return;
        }
        match result {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => state.failed("link lost", &e, ctx.timeout()),
        }
        state.set(false, &mut out);
        ctx.deliver(&mut out);
    }
}

/// A client like the link's, speaking RESP3.
fn resp3_client(ctx: &Ctx) -> redis::RedisResult<redis::Client> {
    let info = ctx.client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings))
}

/// Drops the ops queued while the link is down (the broker subscribes every topic again
/// once it is up). `false` if the link was dropped.
fn discard(ops: &Receiver<PubSubOp>) -> bool {
    loop {
        match ops.try_recv() {
            Ok(_) => {}
            Err(TryRecvError::Empty) => return true,
            Err(TryRecvError::Disconnected) => return false,
        }
    }
}

/// A live subscribe-mode connection.
struct Sub<'a> {
    /// Shared link state.
    ctx: &'a Ctx,
    /// The connection.
    con: Connection,
    /// When Redis last sent anything.
    last_rx: Instant,
    /// When the probe was last subscribed again.
    last_probe: Instant,
    /// `PREFIX:probe:NODE`.
    probe: String,
    /// `PREFIX:inbox:NODE`.
    inbox: String,
}

impl<'a> Sub<'a> {
    /// Connects and subscribes this node's own topics (probe and inbox); messages that
    /// arrive meanwhile go to `out`.
    fn open(
        ctx: &'a Ctx,
        client: &redis::Client,
        out: &mut Vec<Reply>,
    ) -> redis::RedisResult<Sub<'a>> {
        let con = ctx.connect(client, POLL)?;
        let now = Instant::now();
        let mut sub = Sub {
            ctx,
            con,
            last_rx: now,
            last_probe: now,
            probe: ctx.keys.probe(&ctx.config.node),
            inbox: ctx.keys.inbox(&ctx.config.node),
        };
        let own = [sub.probe.clone(), sub.inbox.clone()];
        sub.subscribe(own.into_iter(), out)?;
        Ok(sub)
    }

    /// Subscribes `names`, [`CHUNK`] per command, waiting for Redis to confirm each chunk.
    fn subscribe(
        &mut self,
        names: impl Iterator<Item = String>,
        out: &mut Vec<Reply>,
    ) -> redis::RedisResult<()> {
        let mut chunk: Vec<String> = Vec::with_capacity(CHUNK);
        let mut names = names.peekable();
        while names.peek().is_some() {
            chunk.clear();
            chunk.extend(names.by_ref().take(CHUNK));
            let packed = redis::cmd("SUBSCRIBE").arg(&chunk).get_packed_command();
            self.con.send_packed_command(&packed)?;
            let mut pending: HashSet<&str> = chunk.iter().map(String::as_str).collect();
            let mut deadline = Instant::now() + self.ctx.timeout();
            while !pending.is_empty() {
                if Instant::now() >= deadline {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "SUBSCRIBE not confirmed in time",
                    )));
                }
                match self.con.recv_response() {
                    Ok(v) => {
                        self.last_rx = Instant::now();
                        deadline = self.last_rx + self.ctx.timeout();
                        self.handle(v, &mut pending, out);
                    }
                    Err(e) if e.is_timeout() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Subscribes the topics of `batch` (taking them) and queues their one `Listening`.
    fn subscribe_batch(
        &mut self,
        batch: &mut Vec<StreamKey>,
        out: &mut Vec<Reply>,
    ) -> redis::RedisResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let keys = std::mem::take(batch);
        let ctx = self.ctx;
        let names = keys.iter().map(|k| ctx.keys.topic(k));
        self.subscribe(names, out)?;
        out.push(Reply::Listening(keys));
        Ok(())
    }

    /// Unsubscribes `names`, [`CHUNK`] per command (the confirmations are not waited for).
    fn unsubscribe(&mut self, names: &[String]) -> redis::RedisResult<()> {
        for chunk in names.chunks(CHUNK) {
            let packed = redis::cmd("UNSUBSCRIBE").arg(chunk).get_packed_command();
            self.con.send_packed_command(&packed)?;
        }
        Ok(())
    }

    /// Serves the hub's ops and delivers messages until the link fails (`Err`), the link is
    /// dropped (`Ok(false)`) or the connection went silent (`Ok(true)`: reconnect). A
    /// subscribe cut short by a failure is not confirmed (the broker subscribes it again once
    /// the link is back up).
    fn serve(
        &mut self,
        ops: &Receiver<PubSubOp>,
        out: &mut Vec<Reply>,
    ) -> redis::RedisResult<bool> {
        let mut batch: Vec<StreamKey> = Vec::new();
        loop {
            if self.ctx.stopped() {
                return Ok(false);
            }
            loop {
                match ops.try_recv() {
                    Ok(PubSubOp::Subscribe(keys)) => {
                        if batch.is_empty() {
                            batch = keys;
                        } else {
                            batch.extend(keys);
                        }
                    }
                    Ok(PubSubOp::Unsubscribe(keys)) => {
                        self.subscribe_batch(&mut batch, out)?;
                        let names: Vec<String> =
                            keys.iter().map(|k| self.ctx.keys.topic(k)).collect();
                        self.unsubscribe(&names)?;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Ok(false),
                }
            }
            self.subscribe_batch(&mut batch, out)?;
            self.ctx.deliver(out);
            let mut none = HashSet::new();
            let batch_start = Instant::now();
            for _ in 0..READ_BATCH {
                match self.con.recv_response() {
                    Ok(v) => {
                        self.last_rx = Instant::now();
                        self.handle(v, &mut none, out);
                        // Handed over at once (the next read may wait up to `POLL`); the
                        // hub is woken only if it drained what came before.
                        self.ctx.deliver(out);
                        if self.last_rx.saturating_duration_since(batch_start) >= READ_TIME {
                            break; // subscription changes wait at most this long
                        }
                    }
                    Err(e) if e.is_timeout() => break,
                    Err(e) => {
                        self.ctx.deliver(out);
                        return Err(e);
                    }
                }
            }
            self.ctx.deliver(out);
            let now = Instant::now();
            let silent = now.saturating_duration_since(self.last_rx);
            if silent >= DEAD_AFTER {
                log::warn!("redis pubsub: no answer for {silent:?}, reconnecting");
                return Ok(true);
            }
            if silent >= PROBE_AFTER
                && now.saturating_duration_since(self.last_probe) >= PROBE_AFTER
            {
                self.last_probe = now;
                let packed = redis::cmd("SUBSCRIBE")
                    .arg(&self.probe)
                    .get_packed_command();
                self.con.send_packed_command(&packed)?;
            }
        }
    }

    /// One value from Redis: a message goes to `out`, a `subscribe` confirmation is struck
    /// from `pending`, anything else is ignored.
    fn handle(&self, v: Value, pending: &mut HashSet<&str>, out: &mut Vec<Reply>) {
        let Value::Push { kind, data } = v else {
            log::debug!("redis pubsub: ignored a non-push value");
            return;
        };
        match kind {
            PushKind::Message if is_topic(&data, &self.inbox) => {
                if let Some(payload) = data.get(1).and_then(text) {
                    out.push(Reply::Inbox(payload.to_owned()));
                }
            }
            PushKind::Message => match parse_message(&self.ctx.keys, &data) {
                Some(m) => out.push(m),
                None => log::debug!("redis pubsub: dropped a malformed message: {data:?}"),
            },
            PushKind::Subscribe => {
                if let Some(topic) = data.first().and_then(text) {
                    pending.remove(topic);
                }
            }
            _ => {}
        }
    }
}

/// Is `data` (a `message` push) on `topic`?
fn is_topic(data: &[Value], topic: &str) -> bool {
    data.first().and_then(text) == Some(topic)
}

/// A `message` push `[topic, "SEQ EPOCH DATA"]` as [`Reply::Message`].
fn parse_message(keys: &crate::cluster::keys::Keys, data: &[Value]) -> Option<Reply> {
    let [topic, payload] = data else { return None };
    let stream = keys.stream_of_topic(text(topic)?)?;
    let mut parts = text(payload)?.splitn(3, ' ');
    let seq = parts.next()?.parse().ok()?;
    let epoch = parse_epoch(parts.next()?)?;
    let data = parts.next()?;
    Some(Reply::Message {
        stream,
        seq,
        epoch,
        data: data.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::keys::Keys;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn messages_parse_and_bad_ones_are_refused() {
        let k = Keys::new("ep");
        let m = parse_message(&k, &[bulk("ep:{c:news}"), bulk("3 77 {\"a\": 1}")]);
        match m {
            Some(Reply::Message {
                stream,
                seq: 3,
                epoch: 77,
                data,
            }) => {
                assert_eq!((stream.as_str(), &*data), ("c:news", "{\"a\": 1}"));
            }
            other => panic!("{other:?}"),
        }
        for bad in ["3 77", "x 77 {}", "3 -1 {}", "", "3 2821109907456 {}"] {
            assert!(
                parse_message(&k, &[bulk("ep:{c:news}"), bulk(bad)]).is_none(),
                "{bad}"
            );
        }
        assert!(parse_message(&k, &[bulk("other:{c:news}"), bulk("1 1 1")]).is_none());
        assert!(parse_message(&k, &[bulk("ep:{c:news}")]).is_none());
        assert!(parse_message(&k, &[bulk("ep:{c:news}"), Value::BulkString(vec![0xff])]).is_none());
    }
}
