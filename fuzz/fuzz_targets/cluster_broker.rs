//! The Redis broker (`edgepush::cluster::broker::RedisBroker`) fed arbitrary replies from the
//! Redis threads — messages, reads, renewals, publishes' answers, link changes, failures,
//! control entries, inbox messages, with any ids, seqs, epochs and entries — interleaved with
//! the hub's subscribes, joins, leaves, publishes and ticks. Nothing may panic, and per stream
//! the broker's events must stay one sequence: a `Message` follows the stream's last reported
//! seq under the same epoch (never at or below it: no repeat, no going back) unless a `Resync`
//! came in between, and every `Subscribed` answer sits at that same (epoch, seq).
#![no_main]

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgepush::cluster::broker::{RedisBroker, RedisLink};
use edgepush::cluster::ops::{ControlEntry, LinkKind, Op, PubSubOp, Reply, StreamKey};
use edgepush::push::hub::{
    Asked, Broker, ConnId, Epoch, Event, HistoryConfig, NodeEntry, PublishTo, Stream,
};
use edgepush::push::users::Member;
use libfuzzer_sys::fuzz_target;

/// Keeps what the broker sends (the ids of its ops, its unsubscribes) and hands it replies.
#[derive(Default)]
struct Link {
    ids: Vec<u64>,
    unsubscribed: Vec<StreamKey>,
    replies: VecDeque<Reply>,
}

impl RedisLink for Link {
    fn send(&mut self, op: Op) {
        if let Some(id) = op.id() {
            self.ids.push(id);
        }
    }
    fn pubsub(&mut self, op: PubSubOp) {
        if let PubSubOp::Unsubscribe(keys) = op {
            self.unsubscribed.extend(keys);
        }
    }
    fn try_recv(&mut self) -> Option<Reply> {
        self.replies.pop_front()
    }
}

/// The fuzzer's bytes, read as small numbers (zeros once they run out).
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn below(&mut self, n: u8) -> u8 {
        self.byte() % n
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |v, _| v << 8 | u64::from(self.byte()))
    }
    /// Mostly one of a few epochs, so that they meet; now and then any.
    fn epoch(&mut self) -> u64 {
        match self.below(8) {
            7 => self.u64(),
            n => u64::from(n % 3) + 1,
        }
    }
    /// Mostly near the small numbers streams use.
    fn seq(&mut self) -> u64 {
        match self.below(16) {
            15 => self.u64(),
            _ => u64::from(self.byte() % 40),
        }
    }
    fn text(&mut self) -> String {
        let n = usize::from(self.below(12));
        let mut s = String::new();
        for _ in 0..n {
            s.push(char::from(self.byte()));
        }
        s
    }
}

const CHANNELS: [&str; 3] = ["a", "b", "c"];
const USERS: [&str; 2] = ["ann", "bob"];

fn stream_key(b: &mut Bytes) -> StreamKey {
    match b.below(5) {
        n @ 0..=2 => StreamKey::channel(CHANNELS[usize::from(n)]),
        n => StreamKey::user(USERS[usize::from(n - 3)]),
    }
}

fn member(b: &mut Bytes) -> Member {
    Member {
        worker: usize::from(b.below(3)),
        conn: ConnId::new(u32::from(b.below(8)), 0),
    }
}

/// The broker's name for an event's stream, as the tracking key.
fn name(broker: &RedisBroker<Link>, stream: &Stream) -> String {
    match stream {
        Stream::Channel(c) => format!("c:{c}"),
        Stream::User(id) => format!("u:{}", broker.user_name(*id).unwrap_or("?")),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let mut now = Instant::now();
    let history = HistoryConfig::default();
    let mut broker = RedisBroker::new(Link::default(), "n1", history, Duration::from_secs(2), now);
    // Per stream: (epoch, last seq reported) as the events tell it.
    let mut seen: HashMap<String, (Epoch, u64)> = HashMap::new();
    let mut request = 0u64;
    for _ in 0..400 {
        if b.0.is_empty() {
            break;
        }
        let ids = &broker.link_mut().ids;
        let id = match (b.below(4), ids.len()) {
            (0, _) | (_, 0) => b.u64() % 64,
            (_, n) => ids[n - 1 - usize::from(b.byte()) % n.min(4)],
        };
        let reply = match b.below(20) {
            0 => {
                let stream = Stream::Channel(Arc::from(CHANNELS[usize::from(b.below(3))]));
                let since = (b.below(2) == 0).then(|| b.seq());
                let epoch = match b.below(3) {
                    0 => None,
                    1 => Some(Epoch::from_bits(b.epoch()).to_string()),
                    _ => Some(b.text()),
                };
                broker.subscribe(member(&mut b), stream, since, epoch);
                None
            }
            1 => {
                let user = USERS[usize::from(b.below(2))];
                let since = (b.below(2) == 0).then(|| b.seq());
                let epoch = Some(Epoch::from_bits(b.epoch()).to_string());
                broker.join_user(member(&mut b), user, since, epoch);
                None
            }
            2 => {
                if let Some(user) = broker.find_user(USERS[usize::from(b.below(2))]) {
                    broker.leave_user(member(&mut b), user);
                }
                None
            }
            3 => {
                broker.idle(usize::from(b.below(3)), CHANNELS[usize::from(b.below(3))]);
                None
            }
            4 => {
                request += 1;
                let to = match b.below(2) {
                    0 => PublishTo::Channel(&Arc::from(CHANNELS[usize::from(b.below(3))])),
                    _ => PublishTo::User(USERS[usize::from(b.below(2))]),
                };
                broker.publish(to, "1", None, Some(request));
                None
            }
            5 => {
                request += 1;
                match b.below(4) {
                    0 => broker.broadcast("1", Some(request)),
                    1 => broker.presence(&Arc::from("a"), request),
                    2 => broker.nodes(request),
                    _ => broker.disconnect("ann", Some(request)),
                }
                None
            }
            6 => {
                now += Duration::from_millis(u64::from(b.byte()) * 20);
                broker.tick(now);
                None
            }
            7..=10 => Some(Reply::Message {
                stream: stream_key(&mut b),
                seq: b.seq(),
                epoch: b.epoch(),
                data: Arc::from(if b.below(8) == 0 {
                    b.text()
                } else {
                    "1".into()
                }),
            }),
            11 | 12 => {
                let epoch = b.epoch();
                let top = b.seq();
                let from = match b.below(3) {
                    0 => top.saturating_sub(u64::from(b.below(8))),
                    _ => b.seq(),
                };
                let count = b.below(10);
                let entries = (0..u64::from(count))
                    .map(|i| (from.saturating_add(i), Arc::from("1")))
                    .collect();
                Some(Reply::Read {
                    id,
                    epoch,
                    top,
                    entries,
                })
            }
            13 => Some(Reply::Published {
                id,
                seq: b.seq(),
                epoch: b.epoch(),
            }),
            14 => Some(Reply::Listening(
                (0..b.below(3)).map(|_| stream_key(&mut b)).collect(),
            )),
            15 => Some(Reply::Link {
                link: [LinkKind::Commands, LinkKind::PubSub, LinkKind::Control]
                    [usize::from(b.below(3))],
                up: b.below(2) == 0,
            }),
            16 => Some(Reply::Failed {
                id,
                reason: String::new(),
            }),
            17 => Some(match b.below(3) {
                0 => Reply::Control(ControlEntry::Broadcast {
                    data: Arc::from(b.text()),
                }),
                1 => Reply::Control(ControlEntry::Disconnect {
                    user: Arc::from(b.text()),
                }),
                _ => Reply::Control(ControlEntry::PresenceAsk {
                    id: Arc::from(b.text()),
                    channel: Arc::from("a"),
                    node: Arc::from(if b.below(2) == 0 { "n1" } else { "n2" }),
                }),
            }),
            18 => Some(match b.below(2) {
                0 => Reply::Inbox(b.text()),
                _ => Reply::Inbox(format!(
                    "{{\"id\":\"n1:{}\",\"users\":[\"x\"]}}",
                    b.below(4)
                )),
            }),
            _ => Some(match b.below(3) {
                0 => Reply::NoStream { id },
                1 => Reply::Appended { id },
                _ => Reply::Nodes {
                    id,
                    nodes: vec![NodeEntry {
                        info: b.text(),
                        age_ms: 1,
                    }],
                },
            }),
        };
        if let Some(reply) = reply {
            broker.link_mut().replies.push_back(reply);
            broker.tick(now);
        }
        // A stream this node stopped listening to starts afresh when it comes back.
        for key in std::mem::take(&mut broker.link_mut().unsubscribed) {
            seen.remove(key.as_str());
        }
        while let Some(event) = broker.poll_event() {
            match &event {
                Event::Message {
                    stream, seq, epoch, ..
                } => {
                    let key = name(&broker, stream);
                    if let Some(&(e, last)) = seen.get(&key) {
                        assert!(
                            e == *epoch && *seq == last + 1,
                            "{key}: {seq}@{epoch} after {last}@{e} without a resync"
                        );
                    }
                    seen.insert(key, (*epoch, *seq));
                }
                Event::Resync { stream, seq, epoch } => {
                    seen.insert(name(&broker, stream), (*epoch, *seq));
                }
                Event::Subscribed {
                    stream, seq, epoch, ..
                } => {
                    let key = name(&broker, stream);
                    if let Some(&(e, last)) = seen.get(&key) {
                        assert!(
                            (e, last) == (*epoch, *seq),
                            "{key}: answered at {seq}@{epoch}, the stream is at {last}@{e}"
                        );
                    }
                    seen.insert(key, (*epoch, *seq));
                }
                Event::PresenceAsked { asked, .. } => {
                    let asked = Asked {
                        id: Arc::clone(&asked.id),
                        node: Arc::clone(&asked.node),
                    };
                    broker.presence_answer(asked, vec!["x".into()]);
                }
                _ => {}
            }
        }
    }
});
