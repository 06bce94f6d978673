//! The Redis broker against a fake link: the ordering contract's rules under duplicates,
//! gaps, reads that race pub/sub, epochs that change, timeouts and link drops; and
//! `randomized`, the contract checked over random interleavings against a simulated Redis.

use std::collections::VecDeque;

use super::*;
use crate::push::hub::ConnId;

/// Records what the broker sends; replies are injected by the test.
#[derive(Debug, Default)]
struct FakeLink {
    ops: Vec<Op>,
    pubsub: Vec<PubSubOp>,
    replies: VecDeque<Reply>,
    /// Calls to `release_free_memory`.
    releases: usize,
}

impl RedisLink for FakeLink {
    fn send(&mut self, op: Op) {
        self.ops.push(op);
    }
    fn pubsub(&mut self, op: PubSubOp) {
        self.pubsub.push(op);
    }
    fn try_recv(&mut self) -> Option<Reply> {
        self.replies.pop_front()
    }
    fn release_free_memory(&mut self) {
        self.releases += 1;
    }
}

const TIMEOUT: Duration = Duration::from_secs(2);

struct Rig {
    broker: RedisBroker<FakeLink>,
    now: Instant,
}

fn m(n: u32) -> Member {
    Member {
        worker: 0,
        conn: ConnId::new(n, 0),
    }
}

fn news() -> Stream {
    Stream::Channel(Arc::from("news"))
}

fn key() -> StreamKey {
    StreamKey::channel("news")
}

/// What an event says, compactly.
fn show(event: &Event) -> String {
    match event {
        Event::Message { seq, epoch, .. } => format!("message {seq}@{epoch}"),
        Event::Subscribed {
            member,
            seq,
            recovered,
            replay,
            ..
        } => {
            let seqs: Vec<u64> = replay.iter().map(seq_of).collect();
            format!(
                "subscribed {} at {seq} {recovered:?} {seqs:?}",
                member.conn.key()
            )
        }
        Event::Resync { seq, epoch, .. } => format!("resync {seq}@{epoch}"),
        Event::Stored { request, what } => format!("stored {request} {what:?}"),
        Event::Failed { request } => format!("failed {request}"),
        Event::NoStream { request } => format!("nostream {request:?}"),
        Event::Broadcast { .. } => "broadcast".to_owned(),
        Event::Disconnect { user, .. } => format!("disconnect {user}"),
        Event::Nodes { nodes, .. } => format!("nodes {}", nodes.len()),
        Event::PresenceFrom {
            request,
            users,
            partial,
        } => format!("presence {request} {users:?} partial {partial}"),
        Event::PresenceAsked { asked, channel } => {
            format!("asked {} {} {channel}", asked.id, asked.node)
        }
    }
}

fn seq_of(frame: &SharedFrame) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(&frame[2..]).unwrap();
    v["seq"].as_u64().unwrap()
}

fn e(bits: u64) -> String {
    Epoch::from_bits(bits).to_string()
}

impl Rig {
    fn new() -> Rig {
        let now = Instant::now();
        Rig {
            broker: RedisBroker::new(
                FakeLink::default(),
                "n1",
                HistoryConfig::default(),
                TIMEOUT,
                now,
            ),
            now,
        }
    }

    fn reply(&mut self, reply: Reply) -> Vec<String> {
        self.broker.link.replies.push_back(reply);
        self.broker.tick(self.now);
        self.events()
    }

    /// Queues an empty read answer (epoch 1, top 0) for each of `reads` (not yet ticked).
    fn answer_reads_empty(&mut self, reads: Vec<OpId>) {
        for id in reads {
            self.broker.link.replies.push_back(Reply::Read {
                id,
                epoch: 1,
                top: 0,
                entries: Vec::new(),
            });
        }
    }

    fn events(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.broker.poll_event())
            .map(|e| show(&e))
            .collect()
    }

    /// The id of the last op sent, which must be a read after `after`.
    fn last_read(&mut self, after: Option<u64>) -> OpId {
        match self.broker.link.ops.last() {
            Some(Op::Read { id, after: a, .. }) => {
                assert_eq!(*a, after, "read after");
                *id
            }
            other => panic!("a read expected, got {other:?}"),
        }
    }

    fn message(&mut self, seq: u64, epoch: u64) -> Vec<String> {
        self.reply(Reply::Message {
            stream: key(),
            seq,
            epoch,
            data: Arc::from("0"),
        })
    }

    fn read_reply(&mut self, id: OpId, epoch: u64, top: u64, from: u64) -> Vec<String> {
        self.reply(Reply::Read {
            id,
            epoch,
            top,
            entries: (from..=top).map(|s| (s, Arc::from("0"))).collect(),
        })
    }

    /// Subscribes conn 1 without since and brings the channel live at `top` under `epoch`.
    fn live(&mut self, epoch: u64, top: u64) {
        self.broker.subscribe(m(1), news(), None, None);
        assert_eq!(self.broker.link.pubsub, [PubSubOp::Subscribe(vec![key()])]);
        assert!(
            self.broker.link.ops.is_empty(),
            "no read before the topic is subscribed"
        );
        self.reply(Reply::Listening(vec![key()]));
        let id = self.last_read(None);
        let events = self.read_reply(id, epoch, top, top + 1);
        assert_eq!(events, [format!("subscribed 1 at {top} None []")]);
    }
}

#[test]
fn a_first_subscribe_waits_for_the_topic_then_reads_the_top() {
    let mut rig = Rig::new();
    rig.live(7, 12);
    // A second subscriber without since is answered at once, at the same top.
    rig.broker.subscribe(m(2), news(), None, None);
    assert_eq!(rig.events(), ["subscribed 2 at 12 None []"]);
    assert_eq!(rig.broker.link.ops.len(), 1, "no second read");
}

#[test]
fn duplicates_are_dropped_and_gaps_filled_from_the_stream_in_order() {
    let mut rig = Rig::new();
    rig.live(7, 0);
    let ep = e(7);
    assert_eq!(rig.message(1, 7), [format!("message 1@{ep}")]);
    assert!(rig.message(1, 7).is_empty(), "a duplicate");
    // 2 and 3 are lost: 4 waits while the gap is read.
    assert!(rig.message(4, 7).is_empty());
    let id = rig.last_read(Some(1));
    assert!(rig.message(5, 7).is_empty(), "still waiting for the gap");
    assert_eq!(rig.broker.link.ops.len(), 2, "one catch-up at a time");
    let events = rig.read_reply(id, 7, 4, 2);
    assert_eq!(
        events,
        [2, 3, 4, 5].map(|s| format!("message {s}@{ep}")),
        "the gap, then what waited"
    );
    assert!(rig.message(4, 7).is_empty());
    assert_eq!(rig.message(6, 7), [format!("message 6@{ep}")]);
}

#[test]
fn a_gap_the_stream_no_longer_holds_resyncs_the_listeners() {
    let mut rig = Rig::new();
    rig.live(7, 0);
    rig.message(1, 7);
    rig.message(9, 7);
    let id = rig.last_read(Some(1));
    // The stream keeps only 6..=9 now.
    let events = rig.read_reply(id, 7, 9, 6);
    assert_eq!(events, [format!("resync 9@{}", e(7))]);
    assert_eq!(rig.message(10, 7), [format!("message 10@{}", e(7))]);
}

#[test]
fn another_epoch_resyncs_before_its_messages() {
    let mut rig = Rig::new();
    rig.live(7, 3);
    assert!(rig.message(1, 8).is_empty(), "held: the epoch is not ours");
    let id = rig.last_read(Some(3));
    let events = rig.read_reply(id, 8, 1, 1);
    assert_eq!(events, [format!("resync 1@{}", e(8))]);
    assert_eq!(rig.message(2, 8), [format!("message 2@{}", e(8))]);
}

#[test]
fn recovery_replays_from_the_stream_and_from_what_pubsub_delivered_meanwhile() {
    let mut rig = Rig::new();
    rig.live(7, 5);
    rig.broker.subscribe(m(2), news(), Some(2), Some(e(7)));
    let id = rig.last_read(Some(2));
    // Pub/sub outruns the read: 6 and 7 are reported before the read (taken at top 5)
    // comes back.
    rig.message(6, 7);
    rig.message(7, 7);
    let events = rig.read_reply(id, 7, 5, 3);
    assert_eq!(events, ["subscribed 2 at 7 Some(true) [3, 4, 5, 6, 7]"]);
    // And the other way: the read is ahead of pub/sub.
    rig.broker.subscribe(m(3), news(), Some(6), Some(e(7)));
    let id = rig.last_read(Some(6));
    let events = rig.read_reply(id, 7, 9, 7);
    assert_eq!(
        events,
        [
            format!("message 8@{}", e(7)),
            format!("message 9@{}", e(7)),
            "subscribed 3 at 9 Some(true) [7, 8, 9]".to_owned()
        ]
    );
    assert!(
        rig.message(8, 7).is_empty(),
        "pub/sub's copy is a duplicate"
    );
    // A wrong epoch or a since at the top are answered without a read.
    let ops = rig.broker.link.ops.len();
    rig.broker
        .subscribe(m(4), news(), Some(2), Some("other".into()));
    rig.broker.subscribe(m(5), news(), Some(9), Some(e(7)));
    assert_eq!(
        rig.events(),
        [
            "subscribed 4 at 9 Some(false) []",
            "subscribed 5 at 9 Some(true) []"
        ]
    );
    assert_eq!(rig.broker.link.ops.len(), ops);
}

#[test]
fn a_top_that_went_back_under_the_same_epoch_renews_it() {
    let mut rig = Rig::new();
    rig.live(7, 10);
    rig.broker.subscribe(m(2), news(), Some(9), Some(e(7)));
    let id = rig.last_read(Some(9));
    // Redis came back from an older snapshot: top 4 under the same epoch.
    assert!(rig.read_reply(id, 7, 4, 5).is_empty());
    let renew = match rig.broker.link.ops.last() {
        Some(Op::Renew { id, old: 7, .. }) => *id,
        other => panic!("renew expected: {other:?}"),
    };
    let events = rig.reply(Reply::Read {
        id: renew,
        epoch: 9,
        top: 4,
        entries: Vec::new(),
    });
    assert_eq!(
        events,
        [
            format!("resync 4@{}", e(9)),
            "subscribed 2 at 4 Some(false) []".to_owned()
        ]
    );
}

#[test]
fn a_publish_is_answered_when_stored_and_delivered_once_from_pubsub() {
    let mut rig = Rig::new();
    rig.live(7, 0);
    rig.broker.publish(
        PublishTo::Channel(&Arc::from("news")),
        "1",
        Some("k"),
        Some(40),
    );
    let id = match rig.broker.link.ops.last() {
        Some(Op::Publish {
            id,
            idempotency_key: Some(k),
            existing_only: false,
            ..
        }) if &**k == "k" => *id,
        other => panic!("{other:?}"),
    };
    // The answer comes from the reply; the delivery from pub/sub, in order with the other
    // nodes' publishes, even when the reply runs far ahead of them (a burst through several
    // nodes): no gap is seen, no stream read, no resync.
    let events = rig.reply(Reply::Published {
        id,
        seq: 150,
        epoch: 7,
    });
    assert_eq!(
        events,
        [format!(
            "stored 40 Message {{ seq: 150, epoch: Epoch({}) }}",
            7
        )]
    );
    let ops = rig.broker.link.ops.len();
    for seq in 1..=150 {
        assert_eq!(rig.message(seq, 7), [format!("message {seq}@{}", e(7))]);
    }
    assert_eq!(rig.broker.link.ops.len(), ops, "no read");
    // To a user nobody holds: NoStream.
    rig.broker
        .publish(PublishTo::User("nobody"), "1", None, Some(41));
    let id = rig.broker.link.ops.last().and_then(Op::id).unwrap();
    assert_eq!(rig.reply(Reply::NoStream { id }), ["nostream Some(41)"]);
}

#[test]
fn an_op_not_answered_in_time_fails_and_its_late_reply_is_ignored() {
    let mut rig = Rig::new();
    rig.broker
        .publish(PublishTo::Channel(&Arc::from("x")), "1", None, Some(5));
    let id = rig.broker.link.ops.last().and_then(Op::id).unwrap();
    rig.now += TIMEOUT - Duration::from_millis(1);
    rig.broker.tick(rig.now);
    assert!(rig.events().is_empty());
    rig.now += Duration::from_millis(1);
    rig.broker.tick(rig.now);
    assert_eq!(rig.events(), ["failed 5"]);
    assert!(rig
        .reply(Reply::Published {
            id,
            seq: 1,
            epoch: 1
        })
        .is_empty());
    // While the command link is down, a publish fails at once.
    rig.reply(Reply::Link {
        link: LinkKind::Commands,
        up: false,
    });
    rig.broker
        .publish(PublishTo::Channel(&Arc::from("x")), "1", None, Some(6));
    rig.broker.broadcast("1", Some(7));
    assert_eq!(rig.events(), ["failed 6", "failed 7"]);
    assert!(!rig.broker.is_up());
}

#[test]
fn after_a_pubsub_drop_every_live_stream_catches_up_and_waiting_subscribes_are_answered() {
    let mut rig = Rig::new();
    rig.live(7, 2);
    rig.reply(Reply::Link {
        link: LinkKind::PubSub,
        up: false,
    });
    // A subscribe while down waits.
    rig.broker.subscribe(m(2), news(), Some(2), Some(e(7)));
    assert!(rig.events().is_empty());
    let sent = rig.broker.link.ops.len();
    rig.reply(Reply::Link {
        link: LinkKind::PubSub,
        up: true,
    });
    // The new connection listens to nothing: the broker subscribes its topics again, and
    // reads only once they are confirmed.
    assert_eq!(
        rig.broker.link.pubsub.last(),
        Some(&PubSubOp::Subscribe(vec![key()]))
    );
    assert_eq!(rig.broker.link.ops.len(), sent, "no read before the topic");
    rig.reply(Reply::Listening(vec![key()]));
    assert!(
        rig.broker.link.ops.len() > sent,
        "reads once the topic is confirmed"
    );
    // Answer every read sent since: the stream moved to 4 meanwhile.
    let reads: Vec<OpId> = rig.broker.link.ops[sent..]
        .iter()
        .filter_map(Op::id)
        .collect();
    let mut events = Vec::new();
    for id in reads {
        events.extend(rig.read_reply(id, 7, 4, 3));
    }
    assert_eq!(
        events,
        [
            format!("message 3@{}", e(7)),
            format!("message 4@{}", e(7)),
            "subscribed 2 at 4 Some(true) [3, 4]".to_owned()
        ]
    );
}

#[test]
fn users_join_and_leave_their_stream_and_control_entries_reach_everyone() {
    let mut rig = Rig::new();
    rig.broker.join_user(m(1), "ann", None, None);
    let ann = StreamKey::user("ann");
    assert_eq!(
        rig.broker.link.pubsub,
        [PubSubOp::Subscribe(vec![ann.clone()])]
    );
    rig.reply(Reply::Listening(vec![ann.clone()]));
    let id = rig.last_read(None);
    assert_eq!(rig.read_reply(id, 3, 0, 1), ["subscribed 1 at 0 None []"]);
    let user = rig.broker.find_user("ann").unwrap();
    assert_eq!(rig.broker.user_members(user).count(), 1);
    rig.broker.leave_user(m(1), user);
    assert_eq!(rig.broker.find_user("ann"), None);
    assert_eq!(
        rig.broker.link.pubsub.last(),
        Some(&PubSubOp::Unsubscribe(vec![ann]))
    );
    assert_eq!(
        rig.reply(Reply::Control(ControlEntry::Disconnect {
            user: Arc::from("ann")
        })),
        ["disconnect ann"]
    );
    rig.broker.broadcast("1", Some(9));
    let id = rig.broker.link.ops.last().and_then(Op::id).unwrap();
    assert_eq!(rig.reply(Reply::Appended { id }), ["stored 9 Control"]);
}

/// Is `key`'s busy part (waiters, reads, held messages) allocated?
fn busy(broker: &mut RedisBroker<FakeLink>, key: &StreamKey) -> bool {
    broker.state_mut(key).is_some_and(|s| s.busy.is_some())
}

#[test]
fn an_idle_stream_keeps_no_busy_part_and_a_gap_makes_one_until_it_is_filled() {
    let mut rig = Rig::new();
    rig.broker.subscribe(m(1), news(), None, None);
    assert!(
        busy(&mut rig.broker, &key()),
        "a subscribe waits for its topic"
    );
    rig.reply(Reply::Listening(vec![key()]));
    assert!(busy(&mut rig.broker, &key()), "its read is in flight");
    let id = rig.last_read(None);
    assert_eq!(rig.read_reply(id, 7, 0, 1), ["subscribed 1 at 0 None []"]);
    assert!(!busy(&mut rig.broker, &key()), "answered and idle");
    assert_eq!(rig.message(1, 7).len(), 1);
    assert!(
        !busy(&mut rig.broker, &key()),
        "an in-order message needs nothing"
    );
    assert!(rig.message(3, 7).is_empty(), "3 waits for 2");
    assert!(
        busy(&mut rig.broker, &key()),
        "3 is held while the gap is read"
    );
    let id = rig.last_read(Some(1));
    assert_eq!(rig.read_reply(id, 7, 3, 2).len(), 2, "2 and 3");
    assert!(!busy(&mut rig.broker, &key()), "the gap is filled");
    // A read that fails leaves the stream wanting one, not a busy part.
    rig.broker.subscribe(m(2), news(), Some(0), Some(e(7)));
    let id = rig.last_read(Some(0));
    rig.reply(Reply::Failed {
        id,
        reason: "test".into(),
    });
    assert!(busy(&mut rig.broker, &key()), "its waiter waits");
    rig.now += Duration::from_secs(1);
    let sent = rig.broker.link.ops.len();
    rig.reply(Reply::Link {
        link: LinkKind::Commands,
        up: true,
    });
    // A catch-up (the link came back) and the waiter's read.
    let reads: Vec<OpId> = rig.broker.link.ops[sent..]
        .iter()
        .filter_map(Op::id)
        .collect();
    assert_eq!(reads.len(), 2);
    assert!(rig.read_reply(reads[0], 7, 3, 4).is_empty());
    assert!(busy(&mut rig.broker, &key()), "one read still in flight");
    let events = rig.read_reply(reads[1], 7, 3, 1);
    assert_eq!(events, ["subscribed 2 at 3 Some(true) [1, 2, 3]"]);
    assert!(!busy(&mut rig.broker, &key()));
}

#[test]
fn user_streams_live_in_their_users_slot_and_a_reused_slot_is_a_new_stream() {
    let mut rig = Rig::new();
    let ann = StreamKey::user("ann");
    rig.broker.join_user(m(1), "ann", None, None);
    rig.reply(Reply::Listening(vec![ann.clone()]));
    let first = rig.last_read(None);
    let id = rig.broker.find_user("ann").unwrap();
    assert_eq!(rig.broker.stream_counts(), (0, 1));
    rig.broker.leave_user(m(1), id);
    assert_eq!(rig.broker.stream_counts(), (0, 0));
    // Bob takes ann's slot: ann's late read answers nothing, bob's stream starts unread.
    rig.broker.join_user(m(2), "bob", None, None);
    let bob = rig.broker.find_user("bob").unwrap();
    assert_eq!(bob.index(), id.index(), "the slot is reused");
    assert_ne!(bob, id);
    assert!(
        rig.read_reply(first, 3, 5, 6).is_empty(),
        "ann's read is stale"
    );
    assert_eq!(rig.broker.stream_counts(), (0, 1));
    rig.reply(Reply::Listening(vec![StreamKey::user("bob")]));
    let read = rig.last_read(None);
    assert_eq!(rig.read_reply(read, 4, 0, 1), ["subscribed 2 at 0 None []"]);
    assert!(!busy(&mut rig.broker, &StreamKey::user("bob")));
    assert_eq!(rig.broker.users.iter().count(), 1, "one entry: bob's");
}

#[test]
fn a_users_stream_state_lives_in_its_users_entry_and_is_three_words() {
    use crate::push::users::UserStream;
    assert_eq!(std::mem::size_of::<StreamState>(), 24);
    assert_eq!(std::mem::size_of::<Option<StreamState>>(), 24, "no tag");
    assert_eq!(
        std::mem::size_of::<UserStream<Option<StreamState>>>(),
        72,
        "the memory broker's entry (64 B) with 8 B more"
    );
    let mut state = StreamState::new();
    assert_eq!(state.live(), None);
    state.set_flag(LISTENING, true);
    state.set_flag(VERIFY, true);
    state.set_live(EPOCH_LIMIT - 1, u64::MAX);
    assert_eq!(state.live(), Some((EPOCH_LIMIT - 1, u64::MAX)));
    assert!(state.listening() && !state.needs_read());
    assert!(state.take_verify() && !state.take_verify());
    state.set_flag(LISTENING, false);
    state.set_live(0, 0);
    assert_eq!(state.live(), Some((0, 0)));
    assert!(!state.listening() && state.has_live());
}

#[test]
fn tables_sized_by_a_burst_of_reads_shrink_once_it_is_answered() {
    let mut rig = Rig::new();
    for n in 0..5000 {
        rig.broker.join_user(m(n), &format!("u{n}"), None, None);
    }
    let keys: Vec<StreamKey> = (0..5000)
        .map(|n| StreamKey::user(&format!("u{n}")))
        .collect();
    rig.reply(Reply::Listening(keys));
    let reads: Vec<OpId> = rig.broker.link.ops.iter().filter_map(Op::id).collect();
    assert_eq!(reads.len(), 5000);
    assert!(rig.broker.ops.capacity() >= 5000);
    rig.answer_reads_empty(reads);
    rig.broker.tick(rig.now);
    assert_eq!(rig.events().len(), 5000, "every join answered");
    assert!(rig.broker.ops.capacity() <= SHRINK_FLOOR, "ops shrank");
    // The deadlines of answered ops leave when due; the events were taken.
    rig.now += TIMEOUT;
    rig.broker.tick(rig.now);
    assert!(
        rig.broker.events.capacity() <= SHRINK_FLOOR,
        "events shrank"
    );
    assert!(
        rig.broker.deadlines.capacity() <= SHRINK_FLOOR,
        "deadlines shrank"
    );
    assert!(rig
        .broker
        .users
        .iter()
        .filter_map(|u| u.stream.as_ref())
        .all(|s| s.busy.is_none()));
}

#[test]
fn free_memory_is_given_back_when_a_burst_of_ops_is_over() {
    let mut rig = Rig::new();
    // Joins answered one wave at a time; `n` in flight at once.
    let wave = |rig: &mut Rig, from: u32, n: u32| {
        for i in from..from + n {
            rig.broker.join_user(m(i), &format!("u{i}"), None, None);
        }
        let keys = (from..from + n).map(|i| StreamKey::user(&format!("u{i}")));
        rig.reply(Reply::Listening(keys.collect()));
        let reads: Vec<OpId> = rig
            .broker
            .link
            .ops
            .drain(..)
            .filter_map(|op| op.id())
            .collect();
        assert_eq!(reads.len(), n as usize);
        rig.answer_reads_empty(reads);
        rig.broker.tick(rig.now);
        assert_eq!(rig.events().len(), n as usize);
    };
    let burst = BURST_OPS as u32;
    // Fewer ops than a burst, however long the wait.
    wave(&mut rig, 0, burst - 1);
    rig.now += RELEASE_EVERY * 2;
    rig.broker.tick(rig.now);
    assert_eq!(rig.broker.link.releases, 0, "no burst");
    // The op that makes it a burst: given back as soon as none is in flight.
    rig.broker.join_user(m(burst), "last", None, None);
    rig.reply(Reply::Listening(vec![StreamKey::user("last")]));
    assert_eq!(rig.broker.link.releases, 0, "one op in flight");
    let read = rig.last_read(None);
    rig.read_reply(read, 1, 0, 1);
    rig.broker.link.ops.clear();
    assert_eq!(rig.broker.link.releases, 1, "the burst is over");
    rig.now += RELEASE_EVERY * 2;
    rig.broker.tick(rig.now);
    assert_eq!(rig.broker.link.releases, 1, "once per burst");
    // Waves within RELEASE_EVERY: the last is given back when that has passed.
    wave(&mut rig, 10_000, burst);
    assert_eq!(rig.broker.link.releases, 2);
    rig.now += RELEASE_EVERY / 2;
    wave(&mut rig, 20_000, burst);
    assert_eq!(
        rig.broker.link.releases, 2,
        "within RELEASE_EVERY of the last"
    );
    rig.now += RELEASE_EVERY / 2;
    rig.broker.tick(rig.now);
    assert_eq!(rig.broker.link.releases, 3, "then due");
}

#[test]
fn the_last_worker_leaving_a_channel_unsubscribes_its_topic() {
    let mut rig = Rig::new();
    rig.live(7, 0);
    assert_eq!(rig.broker.channel_workers("news"), 1);
    rig.broker.idle(0, "news");
    assert_eq!(rig.broker.channel_workers("news"), 0);
    assert_eq!(
        rig.broker.link.pubsub.last(),
        Some(&PubSubOp::Unsubscribe(vec![key()]))
    );
    assert!(rig.message(1, 7).is_empty(), "no longer listening");
}

#[test]
fn through_the_hub_a_failed_publish_answers_503_and_a_retry_with_its_key_runs_again() {
    use crate::push::hub::{Command, Hub, Request, Wait};
    let now = Instant::now();
    let broker = RedisBroker::new(
        FakeLink::default(),
        "n1",
        HistoryConfig::default(),
        TIMEOUT,
        now,
    );
    let mut hub = Hub::with_broker(1, broker, 1 << 20, now);
    let request = || Request {
        command: Command::Publish {
            channel: Arc::from("news"),
            data: "1".into(),
        },
        wait: Wait::Sequenced,
        idempotency_key: Some(Box::from("k1")),
    };
    hub.request(1, request());
    hub.request(2, request()); // a retry while the first is in flight waits with it
    hub.tick(now + TIMEOUT);
    let answers: Vec<_> = hub.take_answers().map(|a| (a.conn, a.status)).collect();
    assert_eq!(answers, [(1, 503), (2, 503)]);
    // The key was forgotten: the next retry runs (a second publish op), and is answered
    // with what Redis says.
    assert!(!hub.remembers(&request()));
    hub.request(3, request());
    assert!(hub.take_answers().next().is_none());
    hub.tick(now + TIMEOUT);
    hub.take_answers().for_each(drop);
}

#[test]
fn presence_asks_every_other_live_node_and_answers_when_all_did_or_time_is_up() {
    let mut rig = Rig::new();
    rig.broker.presence(&Arc::from("room"), 70);
    let (ask, nodes) = match &rig.broker.link.ops[..] {
        [Op::Control {
            entry: ControlEntry::PresenceAsk { id, channel, node },
            ..
        }, Op::Nodes { id: nodes }] => {
            assert_eq!((&**channel, &**node), ("room", "n1"));
            (Arc::clone(id), *nodes)
        }
        other => panic!("{other:?}"),
    };
    let entry = |name: &str, age_ms| crate::push::hub::NodeEntry {
        info: format!("{{\"name\":\"{name}\"}}"),
        age_ms,
    };
    assert!(rig
        .reply(Reply::Nodes {
            id: nodes,
            // n9's last heartbeat is 5 s old: probably dead, not waited for.
            nodes: vec![
                entry("n1", 1),
                entry("n2", 1),
                entry("n3", 1900),
                entry("n9", 5000)
            ],
        })
        .is_empty());
    let answer = |node: &str, users: &str| {
        Reply::Inbox(format!(
            "{{\"id\":\"{ask}\",\"node\":\"{node}\",\"users\":{users}}}"
        ))
    };
    assert!(
        rig.reply(answer("n2", "[\"ann\"]")).is_empty(),
        "n3 has not answered"
    );
    assert!(rig.reply(Reply::Inbox("garbage".into())).is_empty());
    assert_eq!(
        rig.reply(answer("n3", "[\"bob\"]")),
        [r#"presence 70 ["ann", "bob"] partial false"#]
    );
    assert!(
        rig.reply(answer("n9", "[\"late\"]")).is_empty(),
        "answered once"
    );

    // A node that never answers: the deadline answers with what came.
    rig.broker.presence(&Arc::from("room"), 71);
    rig.now += TIMEOUT;
    rig.broker.tick(rig.now);
    assert!(rig
        .events()
        .contains(&"presence 71 [] partial true".to_owned()));
}

#[test]
fn presence_questions_of_other_nodes_are_passed_up_and_answered_to_their_inbox() {
    let mut rig = Rig::new();
    let ask = |node: &str| {
        Reply::Control(ControlEntry::PresenceAsk {
            id: Arc::from("n2:1"),
            channel: Arc::from("room"),
            node: Arc::from(node),
        })
    };
    assert!(rig.reply(ask("n1")).is_empty(), "its own question");
    assert_eq!(rig.reply(ask("n2")), ["asked n2:1 n2 room"]);
    rig.broker.presence_answer(
        Asked {
            id: Arc::from("n2:1"),
            node: Arc::from("n2"),
        },
        vec!["ann".into()],
    );
    match rig.broker.link.ops.last() {
        Some(Op::Tell { node, payload }) => {
            assert_eq!(&**node, "n2");
            let v: serde_json::Value = serde_json::from_str(payload).unwrap();
            assert_eq!(
                v,
                serde_json::json!({"id": "n2:1", "node": "n1", "users": ["ann"]})
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_read_far_ahead_of_a_healthy_pubsub_waits_for_it_instead_of_resyncing() {
    let mut rig = Rig::new();
    rig.live(7, 10);
    rig.broker.subscribe(m(2), news(), Some(5), Some(e(7)));
    let id = rig.last_read(Some(5));
    // Pub/sub is 290 messages behind and the stream keeps the last 100: nothing is lost,
    // the rest is on its way.
    let events = rig.read_reply(id, 7, 300, 201);
    assert_eq!(
        events,
        ["subscribed 2 at 10 Some(false) []"],
        "answered at what was reported; 6..=10 are no longer in the stream"
    );
    assert_eq!(rig.message(11, 7), [format!("message 11@{}", e(7))]);
    // A gap pub/sub itself shows (a seq skipped) is a loss: read, and resync if the stream
    // no longer holds it.
    assert!(rig.message(13, 7).is_empty());
    let id = rig.last_read(Some(11));
    assert_eq!(
        rig.read_reply(id, 7, 300, 201),
        [format!("resync 300@{}", e(7))]
    );
}

#[test]
fn a_held_message_of_a_stale_epoch_is_dropped_after_one_catch_up() {
    let mut rig = Rig::new();
    rig.broker.subscribe(m(1), news(), None, None);
    rig.reply(Reply::Listening(vec![key()]));
    let first = rig.last_read(None);
    // A message of the stream's previous life (its keys expired since) was still on its way.
    assert!(rig.message(9, 5).is_empty());
    assert_eq!(
        rig.read_reply(first, 7, 0, 1),
        ["subscribed 1 at 0 None []"]
    );
    // Epoch 5 might be newer than the read: one catch-up is fair, and its answer (sent after
    // the message came) proves the message stale.
    let catch_up = rig.last_read(Some(0));
    assert!(rig.read_reply(catch_up, 7, 0, 1).is_empty());
    assert_eq!(
        rig.broker.link.ops.len(),
        2,
        "another read: {:?}",
        rig.broker.link.ops.last()
    );
}

#[test]
fn a_held_message_above_a_later_reads_top_renews_the_epoch() {
    let mut rig = Rig::new();
    rig.live(7, 30);
    assert!(rig.message(37, 7).is_empty(), "a gap: held");
    let catch_up = rig.last_read(Some(30));
    // Redis lost 31..=37 (a durable Redis that came back without its last writes).
    assert!(rig.read_reply(catch_up, 7, 30, 31).is_empty());
    assert!(
        matches!(rig.broker.link.ops.last(), Some(Op::Renew { old: 7, .. })),
        "seq 37 was stored under epoch 7 and is gone: renew, as for a top below `last`; \
         got {:?}",
        rig.broker.link.ops.last()
    );
}

#[test]
fn a_read_that_never_asked_for_the_gap_does_not_resync() {
    let mut rig = Rig::new();
    rig.broker.subscribe(m(1), news(), None, None);
    rig.reply(Reply::Listening(vec![key()]));
    let first = rig.last_read(None);
    rig.broker.subscribe(m(2), news(), None, None);
    let second = rig.last_read(None);
    assert_eq!(
        rig.read_reply(first, 7, 5, 6),
        ["subscribed 1 at 5 None []"]
    );
    assert_eq!(rig.message(6, 7), [format!("message 6@{}", e(7))]);
    // The second read ran after 7 and 8 were published; it asked for no entries.
    let events = rig.read_reply(second, 7, 8, 9);
    assert!(
        !events.iter().any(|e| e.starts_with("resync")),
        "the stream holds 7 and 8: {events:?}"
    );
}

#[test]
fn a_second_renews_late_answer_does_not_move_the_sequence_back() {
    let mut rig = Rig::new();
    rig.live(7, 10);
    rig.broker.subscribe(m(2), news(), Some(9), Some(e(7)));
    let a = rig.last_read(Some(9));
    rig.broker.subscribe(m(3), news(), Some(8), Some(e(7)));
    let b = rig.last_read(Some(8));
    // Both reads find Redis back at 4 under epoch 7: each asks for a renewal.
    assert!(rig.read_reply(a, 7, 4, 5).is_empty());
    assert!(rig.read_reply(b, 7, 4, 5).is_empty());
    let renews: Vec<OpId> = rig
        .broker
        .link
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Renew { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    let [first, second] = renews[..] else {
        panic!("two renews expected: {renews:?}");
    };
    let renewed = |id| Reply::Read {
        id,
        epoch: 9,
        top: 4,
        entries: Vec::new(),
    };
    let events = rig.reply(renewed(first));
    assert_eq!(events[0], format!("resync 4@{}", e(9)));
    assert_eq!(rig.message(5, 9), [format!("message 5@{}", e(9))]);
    // The second renewal ran before 5 was published, found epoch 9 in force: nothing to do.
    let events = rig.reply(renewed(second));
    assert!(
        !events.iter().any(|e| e.starts_with("resync")),
        "5 was reported under epoch 9 already: {events:?}"
    );
    assert!(rig.message(5, 9).is_empty(), "5 again");
}

/// The ordering contract under random interleavings: a simulated Redis (streams with epoch,
/// top and trimmed history; a command connection that runs ops in order; a pub/sub connection
/// that loses, repeats and delays messages but never reorders them) against the broker, with
/// every subscriber's view checked event by event, and everything delivered once it settles.
/// Two of the streams are users' `$user` streams (joined and left by connection, their state
/// kept in the user's entry), the others channels.
mod randomized {
    use std::collections::{HashMap, HashSet};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The streams: a name starting with `@` is that user's `$user` stream.
    const CHANNELS: [&str; 4] = ["a", "b", "@ann", "@bob"];
    const WORKERS: usize = 3;

    /// One stream in the simulated Redis.
    #[derive(Debug, Clone, Default)]
    struct SimStream {
        epoch: Option<u64>,
        top: u64,
        entries: VecDeque<(u64, Arc<str>)>,
    }

    /// A client connection subscribed (or subscribing) to one channel.
    #[derive(Debug)]
    struct Sub {
        member: Member,
        channel: &'static str,
        since: Option<u64>,
        epoch: Option<String>,
        /// (epoch, last seq seen) once answered.
        cursor: Option<(Epoch, u64)>,
    }

    /// Which faults a run may inject.
    #[derive(Debug, Clone, Copy)]
    struct Faults {
        /// Redis restarts (both links drop, data gone or rolled back), expiries, trims.
        data_loss: bool,
        /// Pub/sub loses a message now and then without a link drop (the broker learns of a
        /// gap from the next message).
        pubsub_loss: bool,
        /// A restart may bring back an older snapshot under the same epochs (a durable Redis
        /// that lost its last writes): seqs are stored twice.
        rollback: bool,
    }

    struct Sim {
        /// Redis restarts so far (names its run id).
        restarts: u64,
        rng: StdRng,
        faults: Faults,
        broker: RedisBroker<FakeLink>,
        now: Instant,
        history: usize,
        streams: HashMap<StreamKey, SimStream>,
        snapshot: HashMap<StreamKey, SimStream>,
        /// Every (epoch, seq) → data ever stored (a rollback may store a seq twice).
        stored: HashMap<(u64, u64), Vec<Arc<str>>>,
        counter: u64,
        /// Ops sent and not yet run by "Redis".
        commands: VecDeque<Op>,
        /// Command-thread replies not yet taken by the hub.
        command_out: VecDeque<Reply>,
        commands_up: bool,
        frozen_until: Instant,
        /// Pub/sub thread (it keeps no topic set): the topics Redis delivers, those awaiting
        /// their confirmation.
        active: HashSet<StreamKey>,
        confirming: Vec<StreamKey>,
        pubsub_out: VecDeque<Reply>,
        /// The pub/sub link is down (the thread drops the ops it gets meanwhile).
        pubsub_down: bool,
        subs: Vec<Sub>,
        next_conn: u32,
        /// The last cursor of subscribers that left, per channel (for re-subscribes).
        left: HashMap<&'static str, (Epoch, u64)>,
        trace: Vec<String>,
        resyncs: usize,
        unrecovered: usize,
        requests: u64,
    }

    fn key_of(channel: &str) -> StreamKey {
        match channel.strip_prefix('@') {
            Some(user) => StreamKey::user(user),
            None => StreamKey::channel(channel),
        }
    }

    fn data_of(frame: &SharedFrame) -> (u64, String) {
        let start = if frame.get(1).is_some_and(|b| b & 0x7f == 126) {
            4
        } else {
            2
        };
        let v: serde_json::Value = serde_json::from_slice(&frame[start..]).unwrap();
        (v["seq"].as_u64().unwrap(), v["data"].to_string())
    }

    impl Sim {
        fn new(seed: u64, faults: Faults) -> Sim {
            let mut rng = StdRng::seed_from_u64(seed);
            let history = if faults.data_loss {
                rng.random_range(2..12)
            } else {
                100_000
            };
            let now = Instant::now();
            let config = HistoryConfig {
                size: history,
                ..HistoryConfig::default()
            };
            Sim {
                rng,
                faults,
                broker: RedisBroker::new(FakeLink::default(), "n1", config, TIMEOUT, now),
                now,
                history,
                streams: HashMap::new(),
                snapshot: HashMap::new(),
                stored: HashMap::new(),
                counter: 0,
                commands: VecDeque::new(),
                command_out: VecDeque::new(),
                commands_up: true,
                frozen_until: now,
                active: HashSet::new(),
                confirming: Vec::new(),
                pubsub_out: VecDeque::new(),
                pubsub_down: false,
                subs: Vec::new(),
                next_conn: 1,
                left: HashMap::new(),
                trace: Vec::new(),
                resyncs: 0,
                restarts: 0,
                unrecovered: 0,
                requests: 0,
            }
        }

        fn note(&mut self, what: String) {
            self.trace.push(what);
        }

        fn fail(&self, why: &str) -> ! {
            // TRACE=1 prints every step; by default the last 60.
            let all = std::env::var_os("TRACE").is_some();
            let start = if all {
                0
            } else {
                self.trace.len().saturating_sub(60)
            };
            panic!(
                "{why}\n--- last {} of {} steps ---\n{}",
                self.trace.len() - start,
                self.trace.len(),
                self.trace[start..].join("\n")
            );
        }

        // ---- the simulated Redis ----

        fn stream(&mut self, key: &StreamKey, candidate: u64) -> &mut SimStream {
            let s = self.streams.entry(key.clone()).or_default();
            if s.epoch.is_none() {
                *s = SimStream {
                    epoch: Some(candidate),
                    top: 0,
                    entries: VecDeque::new(),
                };
            }
            s
        }

        /// The publish script; the message goes out on the topic if Redis delivers it (now and
        /// then twice, or lost if `pubsub_loss`).
        fn store(&mut self, key: &StreamKey, data: Arc<str>, candidate: u64) -> (u64, u64) {
            let history = self.history;
            let s = self.stream(key, candidate);
            s.top += 1;
            let (epoch, seq) = (s.epoch.unwrap_or_default(), s.top);
            s.entries.push_back((seq, Arc::clone(&data)));
            while s.entries.len() > history {
                s.entries.pop_front();
            }
            self.stored
                .entry((epoch, seq))
                .or_default()
                .push(Arc::clone(&data));
            if self.active.contains(key) {
                let lost = self.faults.pubsub_loss && self.rng.random_bool(0.05);
                let copies = if lost {
                    0
                } else if self.rng.random_bool(0.05) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    self.pubsub_out.push_back(Reply::Message {
                        stream: key.clone(),
                        seq,
                        epoch,
                        data: Arc::clone(&data),
                    });
                }
                if lost {
                    self.note(format!("  pubsub loses {key} {seq}@{epoch}"));
                }
            }
            (epoch, seq)
        }

        fn execute(&mut self, op: Op) -> Option<Reply> {
            match op {
                Op::Publish {
                    id,
                    stream,
                    data,
                    epoch_candidate,
                    ..
                } => {
                    let (epoch, seq) = self.store(&stream, data, epoch_candidate);
                    Some(Reply::Published { id, seq, epoch })
                }
                Op::Read {
                    id,
                    stream,
                    after,
                    epoch_candidate,
                    ..
                } => {
                    let s = self.stream(&stream, epoch_candidate);
                    let entries = match after {
                        Some(a) => s.entries.iter().filter(|(q, _)| *q > a).cloned().collect(),
                        None => Vec::new(),
                    };
                    Some(Reply::Read {
                        id,
                        epoch: s.epoch.unwrap_or_default(),
                        top: s.top,
                        entries,
                    })
                }
                Op::Renew {
                    id,
                    stream,
                    old,
                    epoch_candidate,
                    ..
                } => {
                    let s = self.stream(&stream, epoch_candidate);
                    if s.epoch == Some(old) {
                        s.epoch = Some(epoch_candidate);
                        s.entries.clear();
                    }
                    Some(Reply::Read {
                        id,
                        epoch: s.epoch.unwrap_or_default(),
                        top: s.top,
                        entries: Vec::new(),
                    })
                }
                other => other.id().map(|id| Reply::Failed {
                    id,
                    reason: "not simulated".into(),
                }),
            }
        }

        /// Takes what the broker sent to the link threads.
        fn collect_ops(&mut self) {
            for op in std::mem::take(&mut self.broker.link.ops) {
                if op.id().is_none() {
                    continue; // touch, heartbeat: no reply, no effect here
                }
                if self.commands_up {
                    self.commands.push_back(op);
                } else if let Some(id) = op.id() {
                    self.command_out.push_back(Reply::Failed {
                        id,
                        reason: "link down".into(),
                    });
                }
            }
            for op in std::mem::take(&mut self.broker.link.pubsub) {
                match op {
                    PubSubOp::Subscribe(keys) if self.pubsub_down => {
                        self.note(format!("  the pub/sub thread drops SUBSCRIBE {keys:?}"));
                    }
                    PubSubOp::Subscribe(keys) => self.confirming.extend(keys),
                    PubSubOp::Unsubscribe(keys) => {
                        for key in keys {
                            self.active.remove(&key);
                            self.confirming.retain(|k| *k != key);
                        }
                    }
                }
            }
        }

        // ---- the broker and the contract ----

        /// Hands `reply` to the broker and checks what comes out.
        fn deliver(&mut self, reply: Reply) {
            self.note(format!("  -> {}", brief(&reply)));
            self.broker.link.replies.push_back(reply);
            self.broker.tick(self.now);
            self.check_events();
        }

        fn check_events(&mut self) {
            while let Some(event) = self.broker.poll_event() {
                self.note(format!("  <- {}", show(&event)));
                self.check(event);
            }
            self.collect_ops();
        }

        fn check(&mut self, event: Event) {
            match event {
                Event::Subscribed {
                    member,
                    stream,
                    seq,
                    epoch,
                    recovered,
                    replay,
                } => {
                    let name = self.name_of(&stream);
                    let Some(i) = self.subs.iter().position(|s| s.member == member) else {
                        return; // it left before its answer
                    };
                    if self.subs[i].cursor.is_some() {
                        self.fail("answered twice");
                    }
                    if name != self.subs[i].channel {
                        self.fail("answered for another channel");
                    }
                    for other in &self.subs {
                        if other.channel == self.subs[i].channel {
                            if let Some(c) = other.cursor {
                                if c != (epoch, seq) {
                                    self.fail(&format!(
                                        "answered at {seq}@{epoch} while the stream's other \
                                         listeners are at {}@{}",
                                        c.1, c.0
                                    ));
                                }
                            }
                        }
                    }
                    let (since, asked_epoch) = (self.subs[i].since, self.subs[i].epoch.clone());
                    if recovered.is_some() != since.is_some() {
                        self.fail("recovered must be given iff since was");
                    }
                    match recovered {
                        Some(true) => {
                            let since = since.unwrap_or_default();
                            if asked_epoch != Some(epoch.to_string()) {
                                self.fail("recovered:true under another epoch");
                            }
                            let seqs: Vec<u64> = replay.iter().map(|f| data_of(f).0).collect();
                            if seqs != (since + 1..=seq).collect::<Vec<u64>>() {
                                self.fail(&format!("replay {seqs:?} is not {}..={seq}", since + 1));
                            }
                            for frame in &replay {
                                self.check_data(epoch, frame);
                            }
                        }
                        Some(false) => {
                            self.unrecovered += 1;
                            if !replay.is_empty() {
                                self.fail("recovered:false with a replay");
                            }
                            let could = asked_epoch == Some(epoch.to_string())
                                && since.is_some_and(|s| s <= seq);
                            if could && !self.faults.data_loss && !self.faults.pubsub_loss {
                                // Nothing was ever trimmed or lost under this epoch.
                                self.fail("recovered:false though the stream holds everything");
                            }
                        }
                        None => {
                            if !replay.is_empty() {
                                self.fail("a replay without since");
                            }
                        }
                    }
                    self.subs[i].cursor = Some((epoch, seq));
                }
                Event::Message {
                    stream,
                    seq,
                    epoch,
                    frame,
                    request,
                } => {
                    let name = self.name_of(&stream);
                    if request.is_some() {
                        self.fail("a message carrying a request");
                    }
                    if data_of(&frame).0 != seq {
                        self.fail("the frame's seq is not the event's");
                    }
                    self.check_data(epoch, &frame);
                    for i in 0..self.subs.len() {
                        if self.subs[i].channel != name {
                            continue;
                        }
                        let Some((e, last)) = self.subs[i].cursor else {
                            continue;
                        };
                        if e != epoch || seq != last + 1 {
                            self.fail(&format!(
                                "conn {} at {last}@{e} got {seq}@{epoch}",
                                self.subs[i].member.conn.key()
                            ));
                        }
                        self.subs[i].cursor = Some((epoch, seq));
                    }
                }
                Event::Resync { stream, seq, epoch } => {
                    let name = self.name_of(&stream);
                    self.resyncs += 1;
                    if !self.faults.data_loss && !self.faults.pubsub_loss {
                        self.fail("a resync though nothing was trimmed, lost or restarted");
                    }
                    for i in 0..self.subs.len() {
                        if self.subs[i].channel != name {
                            continue;
                        }
                        if let Some((e, last)) = self.subs[i].cursor {
                            if e == epoch && seq < last {
                                self.fail(&format!(
                                    "resync back from {last} to {seq} under one epoch"
                                ));
                            }
                            self.subs[i].cursor = Some((epoch, seq));
                        }
                    }
                }
                Event::Stored { .. } | Event::Failed { .. } => {}
                other => self.fail(&format!("unexpected {}", show(&other))),
            }
        }

        /// The stream's name in [`CHANNELS`]; a user stream's id must still name its user.
        fn name_of(&self, stream: &Stream) -> String {
            match stream {
                Stream::Channel(name) => name.to_string(),
                Stream::User(id) => match self.broker.user_name(*id) {
                    Some(user) => format!("@{user}"),
                    None => self.fail("an event for a user the broker no longer holds"),
                },
            }
        }

        fn check_data(&self, epoch: Epoch, frame: &SharedFrame) {
            let (seq, data) = data_of(frame);
            let known = self.stored.iter().any(|((e, s), datas)| {
                Epoch::from_bits(*e) == epoch && *s == seq && datas.iter().any(|d| **d == *data)
            });
            if !known {
                self.fail(&format!("{seq}@{epoch} carries {data}, never stored so"));
            }
        }

        // ---- steps ----

        fn subscribe(&mut self) {
            let channel = CHANNELS[self.rng.random_range(0..CHANNELS.len())];
            let key = key_of(channel);
            let current = self
                .streams
                .get(&key)
                .and_then(|s| s.epoch.map(|e| (Epoch::from_bits(e).to_string(), s.top)));
            let (since, epoch) = match self.rng.random_range(0..10) {
                0..=3 => (None, None),
                4..=6 => match self.left.get(channel) {
                    Some((e, last)) => (Some(*last), Some(e.to_string())),
                    None => (None, None),
                },
                7 | 8 => match current {
                    Some((e, top)) => (Some(self.rng.random_range(0..=top + 2)), Some(e)),
                    None => (Some(0), Some("zzzzzzzz".into())),
                },
                _ => (Some(self.rng.random_range(0..5)), Some("zzzzzzzz".into())),
            };
            let member = Member {
                worker: self.rng.random_range(0..WORKERS),
                conn: ConnId::new(self.next_conn, 0),
            };
            self.next_conn += 1;
            self.note(format!(
                "subscribe conn {} (worker {}) to {channel} since {since:?} epoch {epoch:?}",
                member.conn.key(),
                member.worker
            ));
            self.subs.push(Sub {
                member,
                channel,
                since,
                epoch: epoch.clone(),
                cursor: None,
            });
            match channel.strip_prefix('@') {
                Some(user) => self.broker.join_user(member, user, since, epoch),
                None => {
                    self.broker
                        .subscribe(member, Stream::Channel(Arc::from(channel)), since, epoch)
                }
            }
            self.check_events();
        }

        fn leave(&mut self) {
            let answered: Vec<usize> = (0..self.subs.len())
                .filter(|&i| self.subs[i].cursor.is_some())
                .collect();
            if answered.is_empty() {
                return;
            }
            let i = answered[self.rng.random_range(0..answered.len())];
            let sub = self.subs.remove(i);
            self.note(format!(
                "conn {} leaves {}",
                sub.member.conn.key(),
                sub.channel
            ));
            if let Some(cursor) = sub.cursor {
                self.left.insert(sub.channel, cursor);
            }
            if let Some(user) = sub.channel.strip_prefix('@') {
                // A connection's `$user` interest is its membership.
                match self.broker.find_user(user) {
                    Some(id) => self.broker.leave_user(sub.member, id),
                    None => self.fail("a member's user is gone"),
                }
                self.check_events();
                return;
            }
            let worker_left = !self
                .subs
                .iter()
                .any(|s| s.channel == sub.channel && s.member.worker == sub.member.worker);
            if worker_left {
                self.broker.idle(sub.member.worker, sub.channel);
                self.check_events();
            }
        }

        fn publish_elsewhere(&mut self) {
            let channel = CHANNELS[self.rng.random_range(0..CHANNELS.len())];
            self.counter += 1;
            let data: Arc<str> = Arc::from(self.counter.to_string());
            let candidate = self.rng.random_range(0..EPOCH_LIMIT);
            let (epoch, seq) = self.store(&key_of(channel), Arc::clone(&data), candidate);
            self.note(format!(
                "another node publishes {channel} {seq}@{epoch} ({data})"
            ));
        }

        fn publish_here(&mut self) {
            let channel = CHANNELS[self.rng.random_range(0..CHANNELS.len())];
            self.counter += 1;
            self.requests += 1;
            self.note(format!("this node publishes to {channel}"));
            let name = Arc::from(channel);
            self.broker.publish(
                match channel.strip_prefix('@') {
                    Some(user) => PublishTo::User(user),
                    None => PublishTo::Channel(&name),
                },
                &self.counter.to_string(),
                None,
                Some(self.requests),
            );
            self.check_events();
        }

        fn run_command(&mut self) {
            if !self.commands_up || self.now < self.frozen_until {
                return;
            }
            if let Some(op) = self.commands.pop_front() {
                self.note(format!("redis runs {}", brief_op(&op)));
                if let Some(reply) = self.execute(op) {
                    self.command_out.push_back(reply);
                }
            }
        }

        fn commands_down(&mut self) {
            if !self.commands_up {
                return;
            }
            self.note("command link drops".into());
            self.commands_up = false;
            for op in std::mem::take(&mut self.commands) {
                let id = op.id();
                if self.rng.random_bool(0.5) {
                    self.execute(op); // ran, but its answer is lost
                }
                if let Some(id) = id {
                    self.command_out.push_back(Reply::Failed {
                        id,
                        reason: "dropped".into(),
                    });
                }
            }
            self.command_out.push_back(Reply::Link {
                link: LinkKind::Commands,
                up: false,
            });
        }

        fn commands_back(&mut self) {
            if self.commands_up {
                return;
            }
            self.note("command link back".into());
            self.commands_up = true;
            self.command_out.push_back(Reply::Connected {
                run_id: format!("run-{}", self.restarts),
            });
            self.command_out.push_back(Reply::Link {
                link: LinkKind::Commands,
                up: true,
            });
        }

        fn pubsub_down(&mut self) {
            if self.pubsub_down {
                return;
            }
            self.note("pub/sub link drops".into());
            // What the thread had not read yet is lost; what it handed over stays.
            let keep = self.rng.random_range(0..=self.pubsub_out.len());
            let mut kept = VecDeque::new();
            for (i, reply) in std::mem::take(&mut self.pubsub_out).into_iter().enumerate() {
                if i < keep || !matches!(reply, Reply::Message { .. }) {
                    kept.push_back(reply);
                }
            }
            self.pubsub_out = kept;
            self.pubsub_out.push_back(Reply::Link {
                link: LinkKind::PubSub,
                up: false,
            });
            self.pubsub_down = true;
            // The new connection will listen to nothing; a subscribe in progress is lost.
            self.active.clear();
            self.confirming.clear();
        }

        fn pubsub_back(&mut self) {
            if self.pubsub_down {
                self.note("pub/sub link up (listening to nothing)".into());
                self.pubsub_out.push_back(Reply::Link {
                    link: LinkKind::PubSub,
                    up: true,
                });
                self.pubsub_down = false;
            }
        }

        fn confirm(&mut self) {
            if self.pubsub_down || self.confirming.is_empty() {
                return;
            }
            let key = self.confirming.remove(0);
            self.note(format!("redis confirms SUBSCRIBE {key}"));
            self.active.insert(key.clone());
            self.pubsub_out.push_back(Reply::Listening(vec![key]));
        }

        fn restart(&mut self) {
            self.restarts += 1;
            if !self.faults.rollback || self.rng.random_bool(0.7) {
                self.note("redis restarts empty".into());
                self.streams.clear();
            } else {
                self.note("redis restarts from an older snapshot".into());
                self.streams = self.snapshot.clone();
            }
            self.commands_down();
            self.pubsub_down();
        }

        fn step(&mut self) {
            let roll = self.rng.random_range(0..1000);
            let data_loss = self.faults.data_loss;
            match roll {
                0..=149 => self.publish_elsewhere(),
                150..=199 => self.publish_here(),
                200..=259 => self.subscribe(),
                260..=289 => self.leave(),
                290..=459 => self.run_command(),
                460..=609 => {
                    if let Some(reply) = self.command_out.pop_front() {
                        self.deliver(reply);
                    }
                }
                610..=789 => {
                    if let Some(reply) = self.pubsub_out.pop_front() {
                        self.deliver(reply);
                    }
                }
                790..=839 => self.confirm(),
                840..=919 => {
                    let ms = self.rng.random_range(1..200);
                    self.now += Duration::from_millis(ms);
                    self.note(format!("{ms} ms pass"));
                    self.broker.tick(self.now);
                    self.check_events();
                }
                920..=929 => self.pubsub_down(),
                930..=954 => self.pubsub_back(),
                955..=959 => self.commands_down(),
                960..=979 => self.commands_back(),
                980..=984 => {
                    let ms = self.rng.random_range(500..3000);
                    self.note(format!("redis freezes for {ms} ms"));
                    self.frozen_until = self.now + Duration::from_millis(ms);
                }
                985..=987 if data_loss => self.restart(),
                988..=990 if data_loss => {
                    let channel = CHANNELS[self.rng.random_range(0..CHANNELS.len())];
                    self.note(format!("{channel}'s keys expire"));
                    self.streams.remove(&key_of(channel));
                }
                991..=996 if data_loss => {
                    let channel = CHANNELS[self.rng.random_range(0..CHANNELS.len())];
                    if let Some(s) = self.streams.get_mut(&key_of(channel)) {
                        let keep = self.rng.random_range(0..=s.entries.len());
                        while s.entries.len() > keep {
                            s.entries.pop_front();
                        }
                        self.trace.push(format!("XTRIM {channel} to {keep}"));
                    }
                }
                997..=999 => self.snapshot = self.streams.clone(),
                _ => {}
            }
        }

        /// Runs everything queued until nothing moves (bounded).
        fn drain(&mut self) {
            for _ in 0..100_000 {
                self.collect_ops();
                let busy = !self.commands.is_empty()
                    || !self.command_out.is_empty()
                    || !self.pubsub_out.is_empty()
                    || !self.confirming.is_empty();
                if !busy {
                    return;
                }
                self.run_command();
                self.confirm();
                if let Some(reply) = self.command_out.pop_front() {
                    self.deliver(reply);
                }
                if let Some(reply) = self.pubsub_out.pop_front() {
                    self.deliver(reply);
                }
            }
            self.fail("the simulation does not settle");
        }

        /// Ends the faults, lets everything drain, publishes one more message per channel
        /// (so the broker learns of anything pub/sub lost), and checks that every subscriber
        /// is answered and at its stream's top.
        fn settle(&mut self) {
            self.note("=== settle ===".into());
            self.faults.pubsub_loss = false;
            self.frozen_until = self.now;
            self.commands_back();
            self.pubsub_back();
            self.drain();
            for channel in CHANNELS {
                if self.subs.iter().any(|s| s.channel == channel) {
                    self.counter += 1;
                    let data: Arc<str> = Arc::from(self.counter.to_string());
                    let candidate = self.rng.random_range(0..EPOCH_LIMIT);
                    let (epoch, seq) = self.store(&key_of(channel), Arc::clone(&data), candidate);
                    self.note(format!(
                        "another node publishes {channel} {seq}@{epoch} ({data})"
                    ));
                }
            }
            // Ops that timed out leave their streams wanting a read: the broker retries on a
            // link coming back or on its periodic touch. Give it time for both.
            for _ in 0..3 {
                self.drain();
                self.now += HistoryConfig::default().ttl;
                self.broker.tick(self.now);
                self.check_events();
            }
            self.drain();
            for channel in self.broker.channels.values() {
                if channel.state.busy.is_some() {
                    self.fail("a settled stream kept its busy part");
                }
            }
            let users: Vec<&StreamState> = self
                .broker
                .users
                .iter()
                .filter_map(|u| u.stream.as_ref())
                .collect();
            if users.iter().any(|state| state.busy.is_some()) {
                self.fail("a settled user stream kept its busy part");
            }
            // One entry per user with a connection here, each with its stream state.
            let mut joined: Vec<&str> = self
                .subs
                .iter()
                .filter(|s| s.channel.starts_with('@'))
                .map(|s| s.channel)
                .collect();
            joined.sort_unstable();
            joined.dedup();
            let held = (self.broker.users.iter().count(), users.len());
            if held != (joined.len(), joined.len()) || self.broker.stream_counts().1 != joined.len()
            {
                self.fail(&format!(
                    "users {joined:?} are connected, the broker holds {held:?} (entries, states)"
                ));
            }
            for sub in &self.subs {
                let key = key_of(sub.channel);
                let Some((e, last)) = sub.cursor else {
                    self.fail(&format!(
                        "conn {} was never answered",
                        sub.member.conn.key()
                    ));
                };
                let s = self.streams.get(&key).cloned().unwrap_or_default();
                let want = (s.epoch.map(Epoch::from_bits), s.top);
                if (Some(e), last) != want {
                    self.fail(&format!(
                        "conn {} settled at {last}@{e}, the stream is at {}@{:?}",
                        sub.member.conn.key(),
                        want.1,
                        want.0.map(|e| e.to_string())
                    ));
                }
            }
        }
    }

    fn brief(reply: &Reply) -> String {
        match reply {
            Reply::Message {
                stream,
                seq,
                epoch,
                data,
            } => format!("message {stream} {seq}@{epoch} ({data})"),
            Reply::Read {
                id,
                epoch,
                top,
                entries,
            } => format!(
                "read #{id}: {top}@{epoch} entries {:?}",
                entries.iter().map(|(s, _)| *s).collect::<Vec<_>>()
            ),
            Reply::Published { id, seq, epoch } => format!("published #{id}: {seq}@{epoch}"),
            Reply::Failed { id, .. } => format!("failed #{id}"),
            Reply::Listening(keys) => format!("listening {keys:?}"),
            Reply::Link { link, up } => format!("link {link:?} up {up}"),
            other => format!("{other:?}"),
        }
    }

    fn brief_op(op: &Op) -> String {
        match op {
            Op::Read {
                id, stream, after, ..
            } => format!("read #{id} {stream} after {after:?}"),
            Op::Publish { id, stream, .. } => format!("publish #{id} {stream}"),
            Op::Renew {
                id, stream, old, ..
            } => format!("renew #{id} {stream} old {old}"),
            other => format!("{other:?}"),
        }
    }

    fn run(seed: u64, faults: Faults, steps: usize) -> (usize, usize) {
        let mut sim = Sim::new(seed, faults);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for _ in 0..steps {
                sim.step();
            }
            sim.settle();
            (sim.resyncs, sim.unrecovered)
        }));
        match outcome {
            Ok(counts) => counts,
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                panic!("seed {seed} ({faults:?}): {msg}");
            }
        }
    }

    /// `SEED=n` runs that one seed only (with `TRACE=1` for every step), `SEEDS=n` the first
    /// n of the default range; `STEPS` sets the steps per run.
    fn seeds(default: std::ops::Range<u64>) -> std::ops::Range<u64> {
        let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
        match (var("SEED"), var("SEEDS")) {
            (Some(seed), _) => seed..seed + 1,
            (None, Some(n)) => default.start..default.start + n,
            (None, None) => default,
        }
    }

    fn steps() -> usize {
        std::env::var("STEPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(400)
    }

    #[test]
    fn without_data_loss_every_subscriber_sees_every_message_once_in_order() {
        let faults = Faults {
            data_loss: false,
            pubsub_loss: false,
            rollback: false,
        };
        for seed in seeds(0..300) {
            let (resyncs, _) = run(seed, faults, steps());
            assert_eq!(resyncs, 0, "seed {seed}");
        }
    }

    #[test]
    fn with_lossy_pubsub_trims_and_restarts_the_sequence_holds_between_resyncs() {
        let faults = Faults {
            data_loss: true,
            pubsub_loss: true,
            rollback: false,
        };
        let mut resyncs = 0;
        for seed in seeds(1000..1300) {
            resyncs += run(seed, faults, steps()).0;
        }
        assert!(resyncs > 0, "the faults never forced a resync");
    }

    #[test]
    fn after_redis_went_back_under_the_same_epoch_the_sequence_holds_between_resyncs() {
        let faults = Faults {
            data_loss: true,
            pubsub_loss: true,
            rollback: true,
        };
        for seed in seeds(2000..2300) {
            run(seed, faults, steps());
        }
    }
}
