//! Retention for the in-memory broker: how long held messages and offline `$user` streams are
//! kept, and what they may cost all together. It owns the global log (every held message in
//! publish order), the byte budget (`--history-max-bytes`), the log's compaction and the TTL
//! sweep; the held messages themselves sit in their streams ([`Streams`]), which it is lent.
//!
//! Every stream keeps its recent messages (already encoded frames) for replay after a
//! reconnect: at most `size` per channel (`user_size` per `$user` stream) and none older than
//! `ttl`. The global log lets the oldest go first, whether by age or because all history
//! together passed `max_bytes` (frames plus a fixed cost per message for the bookkeeping, so
//! API input alone cannot grow memory past it). A channel lives while it has subscribers or
//! history; a `$user` stream lives for `ttl` after its user's last connection left, so a user
//! who drops for a moment gets what was sent meanwhile. Such offline streams are charged to the
//! same `max_bytes` (a fixed cost each), and go oldest first with the messages when it is full,
//! so clients connecting under ever new names cannot grow the hub either.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::protocol::frame::SharedFrame;
use crate::push::history::Held;

use super::memory::Streams;
use super::messages::Stream;

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
pub(super) const LOG_ENTRY_COST: usize = 128;

/// Bytes charged to the same budget for each `$user` stream kept after its last connection
/// left (its entry, index slot and idle record, rounded up): offline users are kept for the
/// TTL, and a client that keeps connecting under new names must not grow that without bound.
pub(super) const IDLE_USER_COST: usize = 128;

/// How often the TTL sweep runs at most.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One published message in the global log, in publish order.
#[derive(Debug)]
pub(super) struct LogEntry {
    stream: Stream,
    seq: u64,
    at: Instant,
}

/// The global log and the budget it is charged to.
#[derive(Debug)]
pub(super) struct Retention {
    config: HistoryConfig,
    /// Every held message in publish order, plus stale entries of messages already trimmed
    /// by their stream's limit (dropped in bulk by `compact_log`).
    pub(super) log: VecDeque<LogEntry>,
    /// Frame bytes held plus the fixed costs (see [`LOG_ENTRY_COST`], [`IDLE_USER_COST`]).
    bytes: usize,
    messages: usize,
    last_sweep: Instant,
    /// The origin of the clock idle users are timed by (see [`Retention::clock`]).
    start: Instant,
}

impl Retention {
    pub(super) fn new(config: HistoryConfig, now: Instant) -> Retention {
        Retention {
            config,
            log: VecDeque::new(),
            bytes: 0,
            messages: 0,
            last_sweep: now,
            start: now,
        }
    }

    /// Messages held, and the bytes charged for them and for offline user streams.
    pub(super) fn size(&self) -> (usize, usize) {
        (self.messages, self.bytes)
    }

    /// Does the log hold anything that the sweep may have to expire?
    pub(super) fn has_log(&self) -> bool {
        !self.log.is_empty()
    }

    /// The clock idle users are timed by: whole seconds since the broker started.
    pub(super) fn clock(&self, now: Instant) -> u32 {
        u32::try_from(now.duration_since(self.start).as_secs()).unwrap_or(u32::MAX)
    }

    /// About once a second, expires old history and idle streams.
    pub(super) fn tick(&mut self, streams: &mut Streams, now: Instant) {
        if now.duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.last_sweep = now;
            self.sweep(streams, now);
        }
    }

    fn sweep(&mut self, streams: &mut Streams, now: Instant) {
        let ttl = self.config.ttl;
        while self
            .log
            .front()
            .is_some_and(|e| now.duration_since(e.at) >= ttl)
        {
            self.pop_log(streams);
        }
        let ttl_secs = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX);
        let clock = self.clock(now);
        // A user stream can go with messages still held (sent while it was idle); their log
        // entries stay behind, stale, but their charge is released here.
        let mut cleared = (0, 0);
        let gone = streams.users.expire(clock, ttl_secs, |user| {
            add_counts(&mut cleared, user.held.clear())
        });
        self.uncharge(cleared, gone);
        streams.forget_unused_channels();
    }

    /// Takes back the charge of held messages, as (count, frame bytes), and of offline user
    /// streams.
    fn uncharge(&mut self, (messages, bytes): (usize, usize), offline_users: usize) {
        self.messages = self.messages.saturating_sub(messages);
        self.bytes = self
            .bytes
            .saturating_sub(bytes + messages * LOG_ENTRY_COST + offline_users * IDLE_USER_COST);
    }

    /// A `$user` stream lost its last connection: it is charged from now on.
    pub(super) fn user_left(&mut self, streams: &mut Streams) {
        self.bytes += IDLE_USER_COST;
        self.enforce_budget(streams);
    }

    /// An offline `$user` stream has a connection again: it is no longer charged.
    pub(super) fn user_back(&mut self) {
        self.uncharge((0, 0), 1);
    }

    /// Brings history and offline users' streams back under `max_bytes`, oldest first: the
    /// oldest held message or the user who left longest ago, whichever is older.
    fn enforce_budget(&mut self, streams: &mut Streams) {
        while self.bytes > self.config.max_bytes {
            let message_at = self.log.front().map(|e| e.at);
            let left_at = streams
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
                self.pop_log(streams);
                continue;
            }
            let mut cleared = (0, 0);
            if !streams
                .users
                .drop_oldest_idle(|user| cleared = user.held.clear())
            {
                break;
            }
            self.uncharge(cleared, 1);
        }
    }

    /// Drops log entries whose message is no longer held (trimmed by a per-stream limit), so
    /// the log stays within twice the held messages: amortised O(1) per publish.
    fn compact_log(&mut self, streams: &Streams) {
        self.log.retain(|entry| {
            streams
                .held(&entry.stream)
                .and_then(Held::oldest_seq)
                .is_some_and(|oldest| oldest <= entry.seq)
        });
    }

    /// Drops the oldest log entry and, if its message is still held, the message.
    fn pop_log(&mut self, streams: &mut Streams) {
        let Some(entry) = self.log.pop_front() else {
            return;
        };
        let Some(held) = streams.held_mut(&entry.stream) else {
            return;
        };
        if held.oldest_seq() == Some(entry.seq) {
            if let Some(frame) = held.pop_oldest() {
                self.uncharge((1, frame.len()), 0);
            }
        }
        // A channel nobody listens to is kept only for its history.
        if let Stream::Channel(name) = &entry.stream {
            streams.forget_if_unused(name);
        }
    }

    /// Keeps `frame` as message `seq` of `stream` (taken at `now`) and enforces every history
    /// bound.
    pub(super) fn keep(
        &mut self,
        streams: &mut Streams,
        stream: Stream,
        seq: u64,
        frame: &SharedFrame,
        now: Instant,
    ) {
        let limit = match stream {
            Stream::Channel(_) => self.config.size,
            Stream::User(_) => self.config.user_size,
        };
        if limit == 0 {
            return;
        }
        let Some(held) = streams.held_mut(&stream) else {
            return;
        };
        let over = held.push(seq, frame.clone()) > limit;
        // Trimmed by the per-stream limit: its log entry stays (stale) but is no longer
        // charged; `compact_log` drops such entries in bulk.
        let trimmed = if over { held.pop_oldest() } else { None };
        self.bytes += frame.len() + LOG_ENTRY_COST;
        self.messages += 1;
        if let Some(old) = trimmed {
            self.uncharge((1, old.len()), 0);
        }
        self.log.push_back(LogEntry {
            stream,
            seq,
            at: now,
        });
        if self.log.len() > 2 * self.messages + 1024 {
            self.compact_log(streams);
        }
        self.enforce_budget(streams);
    }
}

/// Adds a (count, bytes) pair to a running total.
fn add_counts(total: &mut (usize, usize), (n, bytes): (usize, usize)) {
    total.0 += n;
    total.1 += bytes;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::testing::{answer, c, join, publish_n, sub};
    use super::super::{Broker, Command, Hub, MemoryBroker, PublishTo, ToHub};
    use super::*;

    #[test]
    fn a_log_entry_stays_small() {
        // One per held message: it must not grow.
        assert_eq!(std::mem::size_of::<LogEntry>(), 40);
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
        let log = hub.broker.retention.log.len();
        assert!(log <= 2 * messages + 1024, "{log}");
    }

    #[test]
    fn the_budget_charges_frames_plus_a_fixed_cost_and_evicts_exactly_the_oldest() {
        // Directly against the broker: each message costs its frame plus LOG_ENTRY_COST, and
        // the budget holds exactly as many as fit, dropping the oldest (across streams).
        let frame_len = {
            let mut probe = MemoryBroker::new(HistoryConfig::default(), Instant::now());
            probe.publish(PublishTo::Channel(&Arc::from("a")), "1", None, None);
            probe.history_size().1 - LOG_ENTRY_COST
        };
        let per_message = frame_len + LOG_ENTRY_COST;
        let config = HistoryConfig {
            max_bytes: 3 * per_message,
            ..HistoryConfig::default()
        };
        let mut broker = MemoryBroker::new(config, Instant::now());
        for channel in ["a", "b", "a", "b"] {
            broker.publish(PublishTo::Channel(&Arc::from(channel)), "1", None, None);
            assert!(broker.history_size().1 <= config.max_bytes);
        }
        while broker.poll_event().is_some() {}
        assert_eq!(broker.history_size(), (3, 3 * per_message));
        // The first "a" went: "a" now holds only seq 2, "b" holds 1 and 2.
        let held = |name: &str| {
            let held = broker.streams.held(&Stream::Channel(Arc::from(name)));
            held.map(|h| (h.oldest_seq(), h.len()))
        };
        assert_eq!(held("a"), Some((Some(2), 1)));
        assert_eq!(held("b"), Some((Some(1), 2)));
    }

    #[test]
    fn per_stream_limits_apply_to_channels_and_users_separately() {
        let config = HistoryConfig {
            size: 2,
            user_size: 1,
            ..HistoryConfig::default()
        };
        let mut broker = MemoryBroker::new(config, Instant::now());
        let member = crate::push::users::Member {
            worker: 0,
            conn: c(1),
        };
        broker.join_user(member, "u", None, None);
        for _ in 0..5 {
            broker.publish(PublishTo::Channel(&Arc::from("c")), "1", None, None);
            broker.publish(PublishTo::User("u"), "1", None, None);
        }
        while broker.poll_event().is_some() {}
        assert_eq!(broker.history_size().0, 3);
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
        assert_eq!(send(&mut hub), "{\"seq\":0,\"epoch\":null}");
        let (id, epoch, _) = join(&mut hub, 0, c(1), "u1", None, None);
        hub.on_message(ToHub::LeaveUser {
            worker: 0,
            conn: c(1),
            user: id,
        });
        // Offline for a moment: kept, and recovered on reconnect.
        hub.tick(start + Duration::from_secs(10));
        assert!(send(&mut hub).starts_with("{\"seq\":1,"));
        assert_eq!(hub.history_size().0, 1);
        let (again, _, replayed) = join(&mut hub, 0, c(2), "u1", Some(0), Some(epoch.clone()));
        assert_eq!((again, replayed), (id, 1));
        // Another message while offline, then gone for longer than the TTL: the stream is
        // dropped with its history (and the history's charge); sends keep nothing.
        hub.on_message(ToHub::LeaveUser {
            worker: 0,
            conn: c(2),
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
        assert_eq!(send(&mut hub), "{\"seq\":0,\"epoch\":null}");
        // Back under a new epoch: an old position is not recovered.
        let (_, fresh, replayed) = join(&mut hub, 0, c(3), "u1", Some(2), Some(epoch.clone()));
        assert_ne!(fresh, epoch);
        assert_eq!(replayed, 0);
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
        for i in 0..50u32 {
            hub.tick(start + Duration::from_secs(u64::from(i)));
            let (id, _, _) = join(&mut hub, 0, c(i), &format!("u{i}"), None, None);
            hub.on_message(ToHub::LeaveUser {
                worker: 0,
                conn: c(i),
                user: id,
            });
            ids.push(id);
            assert!(hub.history_size().1 <= 10 * IDLE_USER_COST);
        }
        fn users(hub: &Hub) -> &crate::push::users::Users {
            &hub.broker.streams.users
        }
        assert_eq!(hub.stream_counts().1, 10);
        assert_eq!(users(&hub).idle_count(), 10);
        assert!(users(&hub).get(ids[39]).is_none() && users(&hub).get(ids[40]).is_some());
        // Coming back takes a stream off the budget; leaving again puts it back.
        let (again, _, _) = join(&mut hub, 0, c(99), "u45", None, None);
        assert_eq!(again, ids[45]);
        assert_eq!(hub.history_size().1, 9 * IDLE_USER_COST);
        hub.on_message(ToHub::LeaveUser {
            worker: 0,
            conn: c(99),
            user: again,
        });
        assert_eq!(hub.history_size().1, 10 * IDLE_USER_COST);
        // Everything expires with the TTL and the charge goes with it.
        hub.tick(start + Duration::from_secs(49) + HistoryConfig::default().ttl);
        hub.tick(start + Duration::from_secs(51) + HistoryConfig::default().ttl);
        assert_eq!(hub.stream_counts(), (0, 0));
        assert_eq!(hub.history_size(), (0, 0));
        assert_eq!(users(&hub).idle_count(), 0);
    }
}
