//! The in-memory broker: one node's streams, sequenced in process. It is the whole store when
//! edgepush runs without `--redis`: every channel's and `$user` stream's seq, epoch and held
//! messages, and which workers and connections listen. Every request completes at once, as an
//! event queued in request order, which is all the ordering contract of [`Broker`] asks of it.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::frame::SharedFrame;
use crate::push::history::Held;
use crate::push::names::USER_CHANNEL;
use crate::push::users::{Member, Users};

use super::broker::{encode_message, Broker, Epoch, Event, PublishTo};
use super::messages::{AckId, Stream, UserId, WorkerId, BROADCAST_CHANNEL};
use super::retention::{HistoryConfig, Retention};

/// One channel's state, kept small: a hub may hold very many channels.
#[derive(Debug)]
pub(super) struct ChannelState {
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

/// Every stream the broker knows: channels by name, `$user` streams by [`UserId`]. One entry
/// per stream holds its seq, epoch, held messages and local listeners together, so that a
/// stream costs one table slot.
#[derive(Debug, Default)]
pub(super) struct Streams {
    /// The map's key is the channel's own `Arc`, shared with the worker that named it.
    channels: HashMap<Arc<str>, ChannelState>,
    pub(super) users: Users,
}

impl Streams {
    pub(super) fn held(&self, stream: &Stream) -> Option<&Held> {
        match stream {
            Stream::Channel(name) => self.channels.get(name).map(|s| &s.held),
            Stream::User(id) => self.users.get(*id).map(|u| &u.stream.held),
        }
    }

    pub(super) fn held_mut(&mut self, stream: &Stream) -> Option<&mut Held> {
        match stream {
            Stream::Channel(name) => self.channels.get_mut(name).map(|s| &mut s.held),
            Stream::User(id) => self.users.get_mut(*id).map(|u| &mut u.stream.held),
        }
    }

    /// Forgets `channel` if nobody listens and nothing is held (its next incarnation gets a
    /// new epoch).
    pub(super) fn forget_if_unused(&mut self, channel: &str) {
        if self
            .channels
            .get(channel)
            .is_some_and(ChannelState::is_unused)
        {
            self.channels.remove(channel);
        }
    }

    /// Forgets every channel that nobody listens to and that holds nothing.
    pub(super) fn forget_unused_channels(&mut self) {
        self.channels.retain(|_, state| !state.is_unused());
    }
}

/// The in-memory [`Broker`]: see the module doc.
#[derive(Debug)]
pub struct MemoryBroker {
    pub(super) streams: Streams,
    pub(super) retention: Retention,
    now: Instant,
    /// Completed requests, in request order; every request completes before it returns.
    events: VecDeque<Event>,
    random: RandomState,
    epoch_counter: u64,
    scratch: Vec<u8>,
}

impl MemoryBroker {
    /// An empty store keeping history as `history` says, its clock at `now`.
    pub fn new(history: HistoryConfig, now: Instant) -> MemoryBroker {
        MemoryBroker {
            streams: Streams::default(),
            retention: Retention::new(history, now),
            now,
            events: VecDeque::new(),
            random: RandomState::new(),
            epoch_counter: 0,
            scratch: Vec::new(),
        }
    }

    /// A random epoch: a new one for every stream incarnation and every process.
    fn new_epoch(&mut self) -> Epoch {
        self.epoch_counter += 1;
        let mut hasher = self.random.build_hasher();
        hasher.write_u64(self.epoch_counter);
        Epoch::from_bits(hasher.finish())
    }

    /// The channel's state, created (with a fresh epoch) if it doesn't exist. The map's key
    /// is the channel's own `Arc` (no copy).
    fn channel_state(&mut self, name: &Arc<str>) -> &mut ChannelState {
        let fresh = self.new_epoch();
        self.streams
            .channels
            .entry(Arc::clone(name))
            .or_insert_with(|| ChannelState::new(fresh))
    }

    fn user_epoch(&self, id: UserId) -> Epoch {
        Epoch::from_bits(self.streams.users.epoch_bits(id))
    }

    /// Assigns the next seq of `channel` (creating it if needed), encodes the message once
    /// and keeps it in the channel's history.
    fn publish_channel(&mut self, channel: &Arc<str>, data: &str, request: Option<AckId>) {
        let state = self.channel_state(channel);
        state.seq += 1;
        let (seq, epoch) = (state.seq, state.epoch);
        let frame = encode_message(&mut self.scratch, channel, Some(seq), data);
        let stream = Stream::Channel(Arc::clone(channel));
        self.keep(stream.clone(), seq, &frame);
        // Nobody listens and nothing is kept (history off): don't hold the channel.
        self.streams.forget_if_unused(channel);
        self.events.push_back(Event::Message {
            stream,
            seq,
            epoch,
            frame,
            request,
        });
    }

    /// The same for a `$user` stream; a user the broker holds no stream for (not connected
    /// within the TTL) gets nothing kept and nothing sent.
    fn publish_user(&mut self, user: &str, data: &str, request: Option<AckId>) {
        let Some(id) = self.streams.users.find(user) else {
            self.events.push_back(Event::NoStream { request });
            return;
        };
        let seq = self.streams.users.get_mut(id).map_or(0, |u| {
            u.stream.seq += 1;
            u.stream.seq
        });
        let frame = encode_message(&mut self.scratch, USER_CHANNEL, Some(seq), data);
        self.keep(Stream::User(id), seq, &frame);
        let epoch = self.user_epoch(id);
        self.events.push_back(Event::Message {
            stream: Stream::User(id),
            seq,
            epoch,
            frame,
            request,
        });
    }

    fn keep(&mut self, stream: Stream, seq: u64, frame: &SharedFrame) {
        self.retention
            .keep(&mut self.streams, stream, seq, frame, self.now);
    }
}

impl Broker for MemoryBroker {
    /// The idempotency key is the hub's business on one node (it remembers the answers).
    fn publish(
        &mut self,
        to: PublishTo<'_>,
        data: &str,
        _idempotency_key: Option<&str>,
        request: Option<AckId>,
    ) {
        match to {
            PublishTo::Channel(channel) => self.publish_channel(channel, data, request),
            PublishTo::User(user) => self.publish_user(user, data, request),
        }
    }

    fn broadcast(&mut self, data: &str, request: Option<AckId>) {
        let frame = encode_message(&mut self.scratch, BROADCAST_CHANNEL, None, data);
        self.events.push_back(Event::Broadcast { frame, request });
    }

    /// No other node to ask.
    fn presence(&mut self, _channel: &Arc<str>, request: AckId) {
        self.events.push_back(Event::PresenceFrom {
            request,
            users: Vec::new(),
            partial: false,
        });
    }

    fn nodes(&mut self, request: AckId) {
        self.events.push_back(Event::Nodes {
            request,
            nodes: Vec::new(),
        });
    }

    fn disconnect(&mut self, user: &str, request: Option<AckId>) {
        self.events.push_back(Event::Disconnect {
            user: Arc::from(user),
            request,
        });
    }

    fn subscribe(
        &mut self,
        member: Member,
        stream: Stream,
        since: Option<u64>,
        epoch: Option<String>,
    ) {
        let (seq, stream_epoch) = match &stream {
            Stream::Channel(name) => {
                let state = self.channel_state(name);
                state.set_worker(member.worker, true);
                (state.seq, state.epoch)
            }
            Stream::User(id) => match self.streams.users.get(*id) {
                Some(user) => (user.stream.seq, self.user_epoch(*id)),
                // Only a member asks, and a stream with members stays: nothing to answer.
                None => return,
            },
        };
        // Recovery is promised only when this is the same incarnation and the history still
        // holds every message after `since`.
        let mut replay = Vec::new();
        let recovered = since.map(|since| {
            if epoch.as_deref() != Some(stream_epoch.to_string().as_str()) {
                return false;
            }
            match self
                .streams
                .held(&stream)
                .and_then(|held| held.recover(seq, since))
            {
                Some(frames) => {
                    replay = frames;
                    true
                }
                None => false,
            }
        });
        self.events.push_back(Event::Subscribed {
            member,
            stream,
            seq,
            epoch: stream_epoch,
            recovered,
            replay,
        });
    }

    fn join_user(&mut self, member: Member, user: &str, since: Option<u64>, epoch: Option<String>) {
        let (id, was_idle) = self.streams.users.join(user, member);
        if was_idle {
            self.retention.user_back();
        }
        self.subscribe(member, Stream::User(id), since, epoch);
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn leave_user(&mut self, member: Member, user: UserId) {
        let now = self.retention.clock(self.now);
        if self.streams.users.leave(user, member, now) {
            self.retention.user_left(&mut self.streams);
        }
    }

    fn idle(&mut self, worker: WorkerId, channel: &str) {
        if let Some(state) = self.streams.channels.get_mut(channel) {
            state.set_worker(worker, false);
            // A channel without history is forgotten at once (its next incarnation gets a
            // new epoch).
            if state.is_unused() {
                self.streams.channels.remove(channel);
            }
        }
    }

    fn channel_workers(&self, channel: &str) -> u64 {
        self.streams.channels.get(channel).map_or(0, |s| s.workers)
    }

    fn find_user(&self, name: &str) -> Option<UserId> {
        self.streams.users.find(name)
    }

    fn user_members(&self, user: UserId) -> impl Iterator<Item = Member> + '_ {
        self.streams
            .users
            .get(user)
            .into_iter()
            .flat_map(|u| u.members())
    }

    fn user_name(&self, user: UserId) -> Option<&str> {
        self.streams.users.get(user).map(|u| u.name())
    }

    fn tick(&mut self, now: Instant) {
        self.now = now;
        self.retention.tick(&mut self.streams, now);
    }

    fn next_tick(&self) -> Option<Duration> {
        (self.retention.has_log()
            || !self.streams.users.is_empty()
            || !self.streams.channels.is_empty())
        .then_some(Duration::from_secs(1))
    }

    fn stream_counts(&self) -> (usize, usize) {
        (self.streams.channels.len(), self.streams.users.len())
    }

    fn history_size(&self) -> (usize, usize) {
        self.retention.size()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::c;
    use super::*;

    #[test]
    fn a_channel_entry_stays_small() {
        // One per channel: it must not grow.
        assert_eq!(std::mem::size_of::<ChannelState>(), 32);
    }

    #[test]
    fn requests_complete_at_once_in_request_order() {
        let mut broker = MemoryBroker::new(HistoryConfig::default(), Instant::now());
        let member = Member {
            worker: 0,
            conn: c(1),
        };
        let news: Arc<str> = Arc::from("news");
        broker.publish(PublishTo::Channel(&news), "1", None, Some(7));
        broker.subscribe(member, Stream::Channel(Arc::clone(&news)), None, None);
        broker.publish(PublishTo::User("nobody"), "1", None, Some(8));
        let kinds: Vec<_> = std::iter::from_fn(|| broker.poll_event())
            .map(|e| match e {
                Event::Message { seq, request, .. } => format!("message {seq} {request:?}"),
                Event::Subscribed { seq, .. } => format!("subscribed {seq}"),
                Event::NoStream { request } => format!("none {request:?}"),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["message 1 Some(7)", "subscribed 1", "none Some(8)"]);
    }

    #[test]
    fn a_channel_without_listeners_or_history_is_not_held() {
        let off = HistoryConfig {
            size: 0,
            ..HistoryConfig::default()
        };
        let mut broker = MemoryBroker::new(off, Instant::now());
        broker.publish(PublishTo::Channel(&Arc::from("c")), "1", None, None);
        assert_eq!(broker.stream_counts(), (0, 0));
        assert_eq!(broker.next_tick(), None);
        broker.subscribe(
            Member {
                worker: 3,
                conn: c(1),
            },
            Stream::Channel(Arc::from("c")),
            None,
            None,
        );
        assert_eq!(broker.channel_workers("c"), 1 << 3);
        broker.idle(3, "c");
        assert_eq!(broker.stream_counts(), (0, 0));
    }
}
