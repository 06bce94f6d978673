//! The Redis broker against a fake link: the ordering contract's rules under duplicates,
//! gaps, reads that race pub/sub, epochs that change, timeouts and link drops.

use std::collections::VecDeque;

use super::*;
use crate::push::hub::ConnId;

/// Records what the broker sends; replies are injected by the test.
#[derive(Debug, Default)]
struct FakeLink {
    ops: Vec<Op>,
    pubsub: Vec<PubSubOp>,
    replies: VecDeque<Reply>,
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
    assert!(
        rig.broker.link.ops.len() > sent,
        "reads after the link came back"
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
