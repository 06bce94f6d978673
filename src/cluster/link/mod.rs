//! The threads that talk to Redis, and the [`Link`] the hub thread holds to reach them.
//!
//! Three threads, one connection each, all on the `redis` crate's synchronous API:
//! - `commands`: takes every [`Op`] queued (up to [`BATCH`]), runs them as one pipeline
//!   (the Lua scripts `publish.lua`, `read.lua`, `renew.lua` by `EVALSHA`, falling back to
//!   `EVAL` on `NOSCRIPT`; `XADD`, `SET`, … for the rest), answers each op and wakes the hub
//!   once per batch.
//! - `pubsub`: a RESP3 connection in subscribe mode; subscribes and unsubscribes the topics
//!   the broker asks for (which subscribes all of them again after a reconnect), turns
//!   published messages into [`Reply::Message`].
//! - `control`: reads the control stream with `XREAD BLOCK` from its own position.
//!
//! Nothing here blocks the hub: [`Link::start`] returns at once, [`Link::send`] and
//! [`Link::pubsub`] never wait, and replies come back through [`Link::try_recv`] after the
//! hub's `Waker` fires. Each link reports [`Reply::Link`] when it goes down or comes back.
//!
//! Memory bounds: ops wait in a queue of [`OP_QUEUE`] (an op that finds it full fails at
//! once with [`Reply::Failed`]); while the command link is down every op fails at once. The
//! queue holds boxed ops: its slots are allocated up front, and a pointer each (16 bytes with
//! the channel's stamp, 256 KiB in all) beats a whole [`Op`] each (over 100 bytes, 1.7 MB).
//! Pub/sub ops are small and few (one per subscription change). Replies wait in an unbounded
//! channel that the hub drains on every turn it is woken for; it is bounded by what Redis
//! sends between two hub turns.

mod commands;
mod control;
mod pubsub;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::keys::Keys;
use super::ops::{ClusterConfig, LinkKind, Op, PubSubOp, Reply};
use crate::metrics::Histogram;

/// Most ops the command thread runs in one pipeline.
pub const BATCH: usize = 256;

/// Ops that may wait for the command thread; one more fails at once.
pub const OP_QUEUE: usize = 16_384;

/// First reconnect delay; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(50);

/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How long [`Link`]'s `Drop` waits for its threads before leaving them to finish alone.
const JOIN_WAIT: Duration = Duration::from_secs(3);

/// The three Redis threads of one node. Dropping it stops them (a bounded wait).
pub struct Link {
    /// To the command thread (boxed: see the module doc); `None` once dropping.
    ops: Option<SyncSender<Box<Op>>>,
    /// To the pub/sub thread; `None` once dropping.
    pubsub: Option<Sender<PubSubOp>>,
    /// From all three threads.
    replies: Receiver<Reply>,
    /// For the failures [`Link::send`] answers itself.
    failures: Sender<Reply>,
    /// The hub's waker.
    waker: Arc<mio::Waker>,
    /// Replies were sent that the hub has not drained yet (so no thread wakes it again).
    unread: Arc<AtomicBool>,
    /// Set when dropping: every thread returns at its next check.
    stop: Arc<AtomicBool>,
    /// The threads, joined on drop.
    threads: Vec<JoinHandle<()>>,
}

impl Link {
    /// Starts the threads for `config`; returns at once (connecting happens on the threads,
    /// which report [`Reply::Link`] as each connection comes up or fails). The command
    /// thread observes each round trip to Redis (one per pipelined batch, or an idle `PING`)
    /// into `round_trips` (`Stats::redis_latency` in the server).
    ///
    /// # Errors
    /// `InvalidInput` if `config.url` is not a Redis URL; an error spawning a thread.
    pub fn start(
        config: &ClusterConfig,
        waker: Arc<mio::Waker>,
        round_trips: Arc<Histogram>,
    ) -> io::Result<Link> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let (reply_tx, replies) = mpsc::channel();
        let (op_tx, op_rx) = mpsc::sync_channel(OP_QUEUE);
        let (pubsub_tx, pubsub_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let unread = Arc::new(AtomicBool::new(false));
        let ctx = Ctx {
            client,
            keys: Keys::new(&config.prefix),
            config: config.clone(),
            replies: reply_tx.clone(),
            waker: Arc::clone(&waker),
            unread: Arc::clone(&unread),
            stop: Arc::clone(&stop),
            round_trips,
        };
        let mut link = Link {
            ops: Some(op_tx),
            pubsub: Some(pubsub_tx),
            replies,
            failures: reply_tx,
            waker,
            unread,
            stop,
            threads: Vec::with_capacity(3),
        };
        let c = ctx.clone();
        link.threads.push(spawn("redis-commands", move || {
            commands::run(&c, &op_rx);
        })?);
        let c = ctx.clone();
        link.threads.push(spawn("redis-pubsub", move || {
            pubsub::run(&c, &pubsub_rx);
        })?);
        link.threads
            .push(spawn("redis-control", move || control::run(&ctx))?);
        Ok(link)
    }

    /// Queues `op` for the command thread. Never waits: if the queue is full (or the thread
    /// has stopped) the op is answered at once with [`Reply::Failed`].
    pub fn send(&self, op: Op) {
        let Some(ops) = &self.ops else { return };
        let (op, reason) = match ops.try_send(Box::new(op)) {
            Ok(()) => return,
            Err(TrySendError::Full(op)) => (op, "the Redis command queue is full"),
            Err(TrySendError::Disconnected(op)) => (op, "the Redis command thread stopped"),
        };
        if let Some(id) = op.id() {
            let _ = self.failures.send(Reply::Failed {
                id,
                reason: reason.to_owned(),
            });
            let _ = self.waker.wake();
        }
    }

    /// Hands `op` to the pub/sub thread (never waits).
    pub fn pubsub(&self, op: PubSubOp) {
        if let Some(tx) = &self.pubsub {
            let _ = tx.send(op);
        }
    }

    /// The next reply, if one is waiting. Call until `None` on every turn the waker fires.
    #[must_use]
    pub fn try_recv(&self) -> Option<Reply> {
        if let Ok(reply) = self.replies.try_recv() {
            return Some(reply);
        }
        // Drained: the next reply wakes the hub again. One sent between the failed receive
        // and this store saw `unread` still set and did not wake it, so look once more.
        self.unread.store(false, Ordering::SeqCst);
        let late = self.replies.try_recv().ok();
        if late.is_some() {
            self.unread.store(true, Ordering::SeqCst);
        }
        late
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Closing the queues wakes the command thread at once.
        self.ops = None;
        self.pubsub = None;
        let deadline = Instant::now() + JOIN_WAIT;
        while Instant::now() < deadline && self.threads.iter().any(|t| !t.is_finished()) {
            thread::sleep(Duration::from_millis(5));
        }
        for t in self.threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// Spawns a named thread.
fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name(name.to_owned()).spawn(f)
}

/// What every link thread shares.
#[derive(Clone)]
struct Ctx {
    /// Opens connections (parsed `--redis` URL).
    client: redis::Client,
    /// Key and topic names.
    keys: Keys,
    /// The cluster flags.
    config: ClusterConfig,
    /// To the hub.
    replies: Sender<Reply>,
    /// The hub's waker.
    waker: Arc<mio::Waker>,
    /// Shared with [`Link`]: replies are waiting for the hub, which was woken for them.
    unread: Arc<AtomicBool>,
    /// Set when the link is dropped.
    stop: Arc<AtomicBool>,
    /// Round trips of the command connection (batches and idle PINGs).
    round_trips: Arc<Histogram>,
}

impl Ctx {
    /// The link is being dropped.
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// `--redis-timeout`, at least 1 ms (sockets refuse a zero timeout).
    fn timeout(&self) -> Duration {
        self.config.timeout.max(Duration::from_millis(1))
    }

    /// Sends `replies` (draining it) and wakes the hub if there were any and it has not been
    /// woken for replies it has yet to drain: cheap enough to call per message.
    fn deliver(&self, replies: &mut Vec<Reply>) {
        if replies.is_empty() {
            return;
        }
        for r in replies.drain(..) {
            let _ = self.replies.send(r);
        }
        if !self.unread.swap(true, Ordering::SeqCst) {
            if let Err(e) = self.waker.wake() {
                log::warn!("redis link: waking the hub failed: {e}");
            }
        }
    }

    /// Opens a connection with `--redis-timeout` for connecting and writing and
    /// `read_timeout` for reading.
    fn connect(
        &self,
        client: &redis::Client,
        read_timeout: Duration,
    ) -> redis::RedisResult<redis::Connection> {
        let mut con = client.get_connection_with_timeout(self.timeout())?;
        con.set_write_timeout(Some(self.timeout()))?;
        con.set_read_timeout(Some(self.timeout()))?;
        // A Redis still loading its dataset (after a restart from an AOF or RDB) accepts
        // connections but answers every command with LOADING: the link is not up until it
        // answers a PING, so it does not flap up and down (and log twice) at every retry.
        redis::cmd("PING").query::<redis::Value>(&mut con)?;
        con.set_read_timeout(Some(read_timeout.max(Duration::from_millis(1))))?;
        Ok(con)
    }
}

/// A link's up/down state as last reported (`None`: nothing reported yet).
struct LinkState {
    /// Which link.
    kind: LinkKind,
    /// What the hub was last told.
    reported: Option<bool>,
    /// The last failure logged at warn level (the same one again goes to debug).
    last_error: Option<String>,
}

impl LinkState {
    /// Nothing reported yet.
    fn new(kind: LinkKind) -> LinkState {
        LinkState {
            kind,
            reported: None,
            last_error: None,
        }
    }

    /// Logs why the link failed (`what`: "connecting", "link lost"): at warn level the first
    /// time and whenever the reason changes (a wrong port, password or database says so at
    /// once), at debug level when a retry fails the same way.
    fn failed(&mut self, what: &str, e: &redis::RedisError, timeout: Duration) {
        let reason = if e.is_timeout()
            || e.kind() == redis::ErrorKind::Io && e.to_string().contains("temporarily unavailable")
        {
            format!("no answer within --redis-timeout ({timeout:?})")
        } else {
            e.to_string()
        };
        if self.last_error.as_deref() == Some(reason.as_str()) {
            log::debug!("redis {:?}: {what}: {reason}", self.kind);
        } else {
            log::warn!("redis {:?}: {what}: {reason}", self.kind);
            self.last_error = Some(reason);
        }
    }

    /// Was the link last reported up?
    fn is_up(&self) -> bool {
        self.reported == Some(true)
    }

    /// Queues [`Reply::Link`] into `out` if `up` differs from what was last reported.
    fn set(&mut self, up: bool, out: &mut Vec<Reply>) {
        if self.reported != Some(up) {
            self.reported = Some(up);
            if up {
                self.last_error = None;
                log::info!("redis {:?} link up", self.kind);
            } else {
                log::warn!(
                    "redis {:?} link down: API requests get 503 until it is back",
                    self.kind
                );
            }
            out.push(Reply::Link {
                link: self.kind,
                up,
            });
        }
    }
}

/// Reconnect delays: [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`], reset on success.
struct Backoff {
    /// The next delay.
    next: Duration,
}

impl Backoff {
    /// Starts at [`BACKOFF_MIN`].
    fn new() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }

    /// A connection succeeded.
    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    /// The delay before the next attempt (and doubles the one after).
    fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(BACKOFF_MAX);
        d
    }
}

/// Sleeps `d` in short slices, returning early when the link is dropped.
fn sleep_unless_stopped(ctx: &Ctx, d: Duration) {
    let deadline = Instant::now() + d;
    loop {
        let now = Instant::now();
        if ctx.stopped() || now >= deadline {
            return;
        }
        thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
}

/// A bulk or simple string reply as UTF-8 text.
fn text(v: &redis::Value) -> Option<&str> {
    match v {
        redis::Value::BulkString(b) => std::str::from_utf8(b).ok(),
        redis::Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// An integer reply (or a decimal string).
fn int(v: &redis::Value) -> Option<i64> {
    match v {
        redis::Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_ceiling_and_resets() {
        let mut b = Backoff::new();
        let seen: Vec<u128> = (0..8).map(|_| b.delay().as_millis()).collect();
        assert_eq!(seen, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        b.reset();
        assert_eq!(b.delay(), BACKOFF_MIN);
    }

    #[test]
    fn link_state_reports_changes_only() {
        let mut s = LinkState::new(LinkKind::Control);
        let mut out = Vec::new();
        s.set(false, &mut out);
        s.set(false, &mut out);
        s.set(true, &mut out);
        assert_eq!(out.len(), 2);
        assert!(matches!(out[1], Reply::Link { up: true, .. }));
    }
}
