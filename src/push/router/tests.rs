//! The router's rules in simulated order, with no sockets and no hub thread: a small
//! simulation plays the hub (seq, history, FIFO answers) and the worker (applying effects,
//! recording what each connection would be sent).

use std::collections::HashMap;

use super::*;
use crate::push::auth::sign_hs256;
use crate::push::users::{Member, Users};

const SECRET: &[u8] = b"router-test-secret";
/// 10 ms ticks: 100 per second.
const TICK: Duration = Duration::from_millis(10);

#[derive(Default)]
struct Conns(HashMap<ConnId, PushConn>);

impl PushConns for Conns {
    fn push_conn(&mut self, id: ConnId) -> Option<&mut PushConn> {
        self.0.get_mut(&id)
    }
}

fn now(tick: Tick) -> Now {
    Now {
        tick,
        unix: Duration::from_secs(1_000_000),
    }
}

/// One worker's router, its connections, and what it was asked to do.
struct Sim {
    router: Router,
    conns: Conns,
    /// What each connection was sent, as short labels: `subscribed@T`, `news#7`, or a reply.
    got: HashMap<ConnId, Vec<String>>,
    /// Messages for the hub, in order.
    hub: Vec<ToHub>,
    /// Re-armed token expiries.
    expires: Vec<(ConnId, Tick)>,
    /// The hub's side: each channel's top seq.
    tops: HashMap<String, u64>,
    users: Users,
}

impl Sim {
    fn new(max_subscriptions: usize, jwt_secret: Option<&[u8]>) -> Sim {
        Sim {
            router: Router::new(RouterConfig {
                worker: 0,
                max_subscriptions,
                publish_rate: 2,
                tick: TICK,
                jwt_secret: jwt_secret.map(<[u8]>::to_vec),
            }),
            conns: Conns::default(),
            got: HashMap::new(),
            hub: Vec::new(),
            expires: Vec::new(),
            tops: HashMap::new(),
            users: Users::new(),
        }
    }

    fn apply(&mut self) {
        for effect in self.router.take_effects() {
            match effect {
                Effect::Text { conn, text } => self
                    .got
                    .entry(conn)
                    .or_default()
                    .push(String::from_utf8_lossy(&text).into_owned()),
                Effect::Hub(message) => self.hub.push(message),
                Effect::Expires { conn, expires } => self.expires.push((conn, expires)),
                Effect::ReleaseClose { conn, code } => self
                    .got
                    .entry(conn)
                    .or_default()
                    .push(format!("close {code}")),
            }
        }
    }

    /// A connection is upgraded (open mode unless `claims`).
    fn accept(&mut self, id: ConnId, user: &str, claims: Option<&Claims>, tick: Tick) {
        self.accept_resuming(id, user, claims, Resume::default(), tick);
    }

    /// A connection is upgraded with a `$user` recovery in its request.
    fn accept_resuming(
        &mut self,
        id: ConnId,
        user: &str,
        claims: Option<&Claims>,
        resume: Resume,
        tick: Tick,
    ) {
        let push = self
            .router
            .accept(id, Arc::from(user), claims, resume, now(tick));
        self.conns.0.insert(id, push);
        self.apply();
    }

    /// The hub answers a connection's `$user` join (top 0, nothing to replay).
    fn join_user(&mut self, id: ConnId, user: &str) -> UserId {
        let (uid, _) = self.users.join(
            user,
            Member {
                worker: 0,
                conn: id,
            },
        );
        let join = self
            .router
            .subscribed(&mut self.conns, id, &Stream::User(uid), 0, 0);
        assert_eq!(
            join,
            Some(Join {
                conn: id,
                replay: 0
            })
        );
        self.apply();
        uid
    }

    /// A connection, upgraded and joined to its `$user` stream.
    fn connect(&mut self, id: ConnId) {
        self.accept(id, "alice", None, Tick(0));
        self.join_user(id, "alice");
        self.hub.clear();
    }

    fn client(&mut self, id: ConnId, json: &str) {
        self.client_at(id, json, Tick(0));
    }

    fn client_at(&mut self, id: ConnId, json: &str, tick: Tick) {
        self.router.handle_message(
            &mut self.conns,
            id,
            MessageKind::Text,
            json.as_bytes(),
            now(tick),
        );
        self.apply();
    }

    /// The hub publishes the next message on `channel` and delivers it to this worker.
    fn publish(&mut self, channel: &str) {
        let top = self.tops.entry(channel.to_owned()).or_insert(0);
        *top += 1;
        let label = format!("{channel}#{top}");
        let target = Target::Channel(Arc::from(channel));
        let listed: Vec<ConnId> = match self.router.recipients(&target) {
            Recipients::Listed(listed) => listed.collect(),
            Recipients::Everyone => unreachable!("a channel target"),
        };
        for id in listed {
            self.got.entry(id).or_default().push(label.clone());
        }
    }

    /// The hub answers a subscribe to `channel` at its top now, replaying `since+1..=top`
    /// (when `since` is given and history holds it).
    fn answer(&mut self, id: ConnId, channel: &str, since: Option<u64>) -> Option<Join> {
        let top = self.tops.get(channel).copied().unwrap_or(0);
        let replay: Vec<u64> = since.map_or(Vec::new(), |s| (s + 1..=top).collect());
        let stream = Stream::Channel(Arc::from(channel));
        let join = self
            .router
            .subscribed(&mut self.conns, id, &stream, top, replay.len());
        // Like the worker: the answer is queued before the effects are applied.
        if let Some(join) = join {
            let got = self.got.entry(join.conn).or_default();
            got.push(format!("subscribed@{top}"));
            for seq in replay.iter().take(join.replay) {
                got.push(format!("{channel}#{seq}"));
            }
        }
        self.apply();
        join
    }

    fn got(&self, id: ConnId) -> Vec<&str> {
        self.got
            .get(&id)
            .map_or(Vec::new(), |g| g.iter().map(String::as_str).collect())
    }

    fn take_hub(&mut self) -> Vec<ToHub> {
        std::mem::take(&mut self.hub)
    }
}

const A: ConnId = ConnId::new(1, 7);
const B: ConnId = ConnId::new(2, 7);
const C: ConnId = ConnId::new(3, 9);

fn is_idle(message: &ToHub, channel: &str) -> bool {
    matches!(message, ToHub::Idle { channel: c, .. } if &**c == channel)
}

#[test]
fn subscribe_answered_at_top_then_live_has_no_gap_and_no_duplicate() {
    let mut sim = Sim::new(8, None);
    sim.connect(A);
    sim.publish("news");
    sim.publish("news");
    sim.client(A, r#"{"op":"subscribe","channel":"news"}"#);
    let asked = sim.take_hub();
    assert!(
        matches!(&asked[..], [ToHub::Subscribe { stream: Stream::Channel(c), since: None, .. }] if &**c == "news"),
        "{asked:?}"
    );
    // Published while the subscribe is in flight: FIFO puts them before the answer, whose top
    // covers them; the connection is not a member yet, so they are not queued for it.
    sim.publish("news");
    sim.publish("news");
    assert!(sim.router.members("news").is_empty());
    assert_eq!(sim.router.in_flight(A), 1);
    assert_eq!(
        sim.answer(A, "news", None),
        Some(Join { conn: A, replay: 0 })
    );
    assert_eq!(sim.router.in_flight(A), 0);
    sim.publish("news");
    sim.publish("news");
    assert_eq!(sim.got(A), ["subscribed@4", "news#5", "news#6"]);
}

#[test]
fn recovery_since_replays_the_gap_then_live() {
    let mut sim = Sim::new(8, None);
    sim.connect(A);
    for _ in 0..5 {
        sim.publish("news");
    }
    sim.client(
        A,
        r#"{"op":"subscribe","channel":"news","since":2,"epoch":"e"}"#,
    );
    assert!(matches!(
        &sim.take_hub()[..],
        [ToHub::Subscribe { since: Some(2), epoch: Some(e), .. }] if e == "e"
    ));
    sim.publish("news"); // 6: before the answer (top 6), replayed rather than delivered
    assert_eq!(
        sim.answer(A, "news", Some(2)),
        Some(Join { conn: A, replay: 4 })
    );
    sim.publish("news");
    assert_eq!(
        sim.got(A),
        [
            "subscribed@6",
            "news#3",
            "news#4",
            "news#5",
            "news#6",
            "news#7"
        ]
    );
}

#[test]
fn a_recovery_on_a_joined_channel_replays_only_up_to_the_join_point() {
    let mut sim = Sim::new(8, None);
    sim.connect(A);
    sim.publish("news");
    sim.publish("news");
    sim.client(A, r#"{"op":"subscribe","channel":"news"}"#);
    sim.answer(A, "news", None); // joined at 2
    sim.publish("news"); // 3 and 4 came live
    sim.publish("news");
    sim.client(A, r#"{"op":"subscribe","channel":"news","since":0}"#);
    // The second subscribe neither adds a subscription nor a second membership.
    assert_eq!(sim.conns.0[&A].sub_count(), 1);
    assert_eq!(
        sim.answer(A, "news", Some(0)),
        Some(Join { conn: A, replay: 2 })
    );
    assert_eq!(sim.router.members("news"), [A]);
    sim.publish("news");
    assert_eq!(
        sim.got(A),
        [
            "subscribed@2",
            "news#3",
            "news#4",
            "subscribed@4",
            "news#1",
            "news#2",
            "news#5"
        ]
    );
    assert_eq!(
        sim.conns.0[&A].sub("news").and_then(|s| s.joined_at.get()),
        Some(0),
        "after the replay it holds everything above 0"
    );
}

#[test]
fn deliveries_during_a_subscribe_in_flight_skip_the_newcomer_only() {
    let mut sim = Sim::new(8, None);
    sim.connect(A);
    sim.connect(B);
    sim.client(A, r#"{"op":"subscribe","channel":"news"}"#);
    sim.answer(A, "news", None);
    sim.client(B, r#"{"op":"subscribe","channel":"news"}"#);
    sim.publish("news");
    sim.answer(B, "news", None);
    sim.publish("news");
    assert_eq!(sim.got(A), ["subscribed@0", "news#1", "news#2"]);
    assert_eq!(sim.got(B), ["subscribed@1", "news#2"]);
}

#[test]
fn user_stream_join_and_recovery_from_the_upgrade() {
    let mut sim = Sim::new(8, None);
    sim.accept(A, "alice", None, Tick(0));
    assert!(matches!(
        &sim.take_hub()[..],
        [ToHub::JoinUser { conn, user, since: None, epoch: None, .. }]
            if *conn == A && &**user == "alice"
    ));
    assert_eq!(sim.router.in_flight(A), 1);
    // The recovery asked for in the upgrade request goes with the join: the hub's answer,
    // the connection's first frame, is the recovery's, so no live message comes before it.
    sim.accept_resuming(
        B,
        "alice",
        None,
        Resume {
            since: Some(3),
            epoch: Some("x".to_owned()),
        },
        Tick(0),
    );
    assert!(matches!(
        &sim.take_hub()[..],
        [ToHub::JoinUser { conn, since: Some(3), epoch: Some(e), .. }] if *conn == B && e == "x"
    ));
    let uid = sim.join_user(A, "alice");
    assert_eq!(sim.conns.0[&A].user, Some(uid));
    assert_eq!(sim.conns.0[&A].user_joined_at.get(), Some(0));
    assert_eq!(sim.router.in_flight(A), 0);
    // The first join gets its whole replay (seqs 4..=6 at top 6).
    let join = sim
        .router
        .subscribed(&mut sim.conns, B, &Stream::User(uid), 6, 3);
    assert_eq!(join, Some(Join { conn: B, replay: 3 }));
    // A plain `subscribe` on `$user` only reports its top; `$user` is not a subscription.
    sim.client(A, r#"{"op":"subscribe","channel":"$user"}"#);
    assert!(matches!(
        &sim.take_hub()[..],
        [ToHub::Subscribe { stream: Stream::User(u), since: None, .. }] if *u == uid
    ));
    assert_eq!(sim.conns.0[&A].sub_count(), 0);
}

/// Issue 12, item 10: a `$user` recovery asked for after the join would come after live
/// messages it must precede; it is refused, naming the channel, before and after the join.
#[test]
fn user_recovery_by_subscribe_is_refused() {
    let mut sim = Sim::new(8, None);
    sim.accept(A, "alice", None, Tick(0));
    sim.take_hub();
    let recover = r#"{"op":"subscribe","channel":"$user","since":3,"epoch":"x"}"#;
    sim.client(A, recover);
    sim.join_user(A, "alice");
    sim.client(A, recover);
    sim.client(A, r#"{"op":"subscribe","channel":"$user","since":0}"#);
    assert!(sim.take_hub().is_empty(), "nothing asked of the hub");
    let got = sim.got(A);
    assert_eq!(got.len(), 3, "{got:?}");
    for reply in got {
        let v: serde_json::Value = serde_json::from_str(reply).unwrap_or_default();
        assert_eq!(v["op"], "error", "{reply}");
        assert_eq!(v["code"], 400, "{reply}");
        assert_eq!(v["channel"], "$user", "{reply}");
        assert_eq!(v["reason"], USER_RECOVERY_IN_UPGRADE, "{reply}");
    }
    assert_eq!(sim.router.in_flight(A), 0);
}

/// Issue 12, item 11: `$user` can't be unsubscribed; the connection stays on its stream.
#[test]
fn user_unsubscribe_is_refused_and_the_stream_kept() {
    let mut sim = Sim::new(8, None);
    sim.connect(A);
    let uid = sim.conns.0[&A].user;
    sim.client(A, r#"{"op":"unsubscribe","channel":"$user"}"#);
    assert_eq!(
        sim.got(A),
        [format!(
            r#"{{"op":"error","code":400,"channel":"$user","reason":"{USER_NOT_UNSUBSCRIBABLE}"}}"#
        )]
    );
    assert!(sim.take_hub().is_empty(), "no LeaveUser");
    assert_eq!(sim.conns.0[&A].user, uid);
    // It still leaves with its connection.
    let push = sim.conns.0.remove(&A).unwrap_or_default();
    sim.router.forget(&mut sim.conns, A, push);
    sim.apply();
    assert!(matches!(&sim.take_hub()[..], [ToHub::LeaveUser { conn, .. }] if *conn == A));
}

#[test]
fn a_connection_gone_before_its_user_join_is_answered_leaves_the_stream() {
    let mut sim = Sim::new(8, None);
    sim.accept(A, "alice", None, Tick(0));
    sim.take_hub();
    let push = sim.conns.0.remove(&A).unwrap_or_default();
    sim.router.forget(&mut sim.conns, A, push);
    sim.apply();
    assert!(sim.take_hub().is_empty(), "nothing to leave yet");
    let (uid, _) = sim.users.join("alice", Member { worker: 0, conn: A });
    let join = sim
        .router
        .subscribed(&mut sim.conns, A, &Stream::User(uid), 0, 0);
    sim.apply();
    assert_eq!(join, None);
    assert!(matches!(
        &sim.take_hub()[..],
        [ToHub::LeaveUser { conn, user, .. }] if *conn == A && *user == uid
    ));
}

#[test]
fn unsubscribe_while_in_flight_is_answered_in_order_but_joins_nothing() {
    let mut sim = Sim::new(8, None);
    sim.connect(A);
    sim.client(A, r#"{"op":"subscribe","channel":"news"}"#);
    sim.take_hub();
    sim.client(A, r#"{"op":"unsubscribe","channel":"news"}"#);
    assert!(
        sim.got(A).is_empty(),
        "the reply waits behind the subscribe's answer"
    );
    assert!(
        sim.take_hub().is_empty(),
        "not idle: a subscribe is in flight"
    );
    assert_eq!(sim.router.take_subscriptions_delta(), 0);
    sim.publish("news");
    // Every op is answered, in order: the subscribe's answer, then the unsubscribe's.
    assert_eq!(
        sim.answer(A, "news", None),
        Some(Join { conn: A, replay: 0 })
    );
    assert_eq!(
        sim.got(A),
        ["subscribed@1", r#"{"op":"unsubscribed","channel":"news"}"#]
    );
    assert!(sim.router.members("news").is_empty(), "joined nothing");
    let told = sim.take_hub();
    assert!(
        told.len() == 1 && is_idle(&told[0], "news"),
        "idle once answered: {told:?}"
    );
    assert_eq!(sim.router.in_flight(A), 0);
    sim.publish("news");
    assert_eq!(sim.got(A).len(), 2, "nothing after the unsubscribe");
    assert!(sim.router.members("news").is_empty());
}

#[test]
fn leaving_fixes_the_slot_of_the_member_that_moved() {
    let mut sim = Sim::new(8, None);
    for id in [A, B, C] {
        sim.connect(id);
        sim.client(id, r#"{"op":"subscribe","channel":"news"}"#);
        sim.answer(id, "news", None);
    }
    sim.take_hub();
    sim.client(A, r#"{"op":"unsubscribe","channel":"news"}"#);
    assert_eq!(sim.router.members("news"), [C, B]);
    assert_eq!(sim.conns.0[&C].sub("news").and_then(|s| s.slot), Some(0));
    // C leaves from its new slot, then B goes with its connection: the channel is idle.
    sim.client(C, r#"{"op":"unsubscribe","channel":"news"}"#);
    assert_eq!(sim.router.members("news"), [B]);
    let push = sim.conns.0.remove(&B).unwrap_or_default();
    sim.router.forget(&mut sim.conns, B, push);
    sim.apply();
    let told = sim.take_hub();
    assert!(is_idle(&told[0], "news"), "{told:?}");
    assert!(matches!(told[1], ToHub::LeaveUser { conn, .. } if conn == B));
    assert!(sim.router.members("news").is_empty());
    assert_eq!(sim.router.take_subscriptions_delta(), 0);
}

fn subscribe_op(channel: &str) -> String {
    format!(r#"{{"op":"subscribe","channel":"{channel}"}}"#)
}

fn json(reply: &str) -> serde_json::Value {
    serde_json::from_str(reply).unwrap_or_else(|e| panic!("{reply}: {e}"))
}

#[test]
fn max_subscriptions_refuses_naming_the_channel() {
    let mut sim = Sim::new(3, None);
    sim.connect(A);
    for c in ["a", "b", "c"] {
        sim.client(A, &subscribe_op(c));
    }
    assert!(sim.got(A).is_empty());
    sim.client(A, &subscribe_op("d"));
    assert!(
        sim.got(A).is_empty(),
        "the refusal waits behind the answers before it"
    );
    for c in ["a", "b", "c"] {
        assert!(sim.answer(A, c, None).is_some());
    }
    assert_eq!(sim.got(A)[..3], ["subscribed@0"; 3]);
    let error = json(sim.got(A)[3]);
    assert_eq!(error["code"], 429, "{error}");
    assert_eq!(error["channel"], "d", "{error}");
    assert_eq!(error["reason"], "too many subscriptions", "{error}");
    assert_eq!(sim.conns.0[&A].sub_count(), 3);
    assert_eq!(sim.router.take_subscriptions_delta(), 3);
    // Subscribing again to one held is not a new subscription.
    sim.client(A, &subscribe_op("a"));
    assert_eq!(sim.got(A).len(), 4);
    assert_eq!(sim.router.in_flight(A), 1);
}

/// Replies to later ops (errors, `unsubscribed`, `pong`) never overtake the answers of the
/// subscribes sent before them — not even the `$user` answer, the connection's first frame.
#[test]
fn replies_wait_behind_the_answers_of_earlier_subscribes() {
    let mut sim = Sim::new(8, None);
    sim.accept(A, "alice", None, Tick(0));
    sim.client(A, "ping");
    sim.client(A, &subscribe_op("a"));
    sim.client(A, r#"{"op":"subscribe","channel":"bad name"}"#);
    sim.client(A, &subscribe_op("b"));
    sim.client(A, r#"{"op":"unsubscribe","channel":"b"}"#);
    assert!(sim.got(A).is_empty());
    // Only the join is at the hub: the subscribes wait behind the replies queued before them.
    assert_eq!((sim.router.in_flight(A), sim.router.queued(A)), (1, 2));
    sim.take_hub();
    sim.join_user(A, "alice");
    assert_eq!(sim.got(A), ["pong"], "after the $user answer: the pong");
    assert_eq!(sim.router.in_flight(A), 1, "a is asked");
    assert!(sim.answer(A, "a", None).is_some());
    // Then the error; b, unsubscribed while it waited, is still asked and answered (joining
    // nothing), then its unsubscribe's reply: every op answered, in order.
    let got = sim.got(A);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[1], "subscribed@0");
    assert_eq!(json(got[2])["channel"], "bad name");
    assert!(sim
        .take_hub()
        .iter()
        .any(|m| matches!(m, ToHub::Subscribe { stream: Stream::Channel(c), .. } if &**c == "b")));
    assert!(sim.answer(A, "b", None).is_some());
    let got = sim.got(A);
    assert_eq!(
        got[3..],
        ["subscribed@0", r#"{"op":"unsubscribed","channel":"b"}"#]
    );
    assert!(sim.router.members("b").is_empty());
    assert!(sim.router.in_flight.is_empty());
    // With nothing at the hub, replies go at once.
    sim.client(A, "ping");
    assert_eq!(sim.got(A).last(), Some(&"pong"));
}

/// Issue 12, item 9: a burst of subscribes (a client resubscribing after a reconnect) is all
/// answered, in the order sent; the hub never has more than [`MAX_SUBSCRIBES_IN_FLIGHT`] of
/// a connection's at once, and the queue goes once the burst is answered.
#[test]
fn a_burst_of_subscribes_is_queued_and_answered_in_order() {
    let mut sim = Sim::new(128, None);
    sim.connect(A);
    let names: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
    for name in &names {
        sim.client(A, &subscribe_op(name));
    }
    assert!(sim.got(A).is_empty(), "nothing refused: {:?}", sim.got(A));
    assert_eq!(sim.conns.0[&A].sub_count(), 40, "each counts at once");
    assert_eq!(sim.router.in_flight(A), MAX_SUBSCRIBES_IN_FLIGHT);
    assert_eq!(
        sim.router.queued(A),
        40 - usize::from(MAX_SUBSCRIBES_IN_FLIGHT)
    );
    let mut asked: Vec<String> = Vec::new();
    let mut take_asked = |sim: &mut Sim| {
        for message in sim.take_hub() {
            match message {
                ToHub::Subscribe {
                    stream: Stream::Channel(c),
                    ..
                } => asked.push(c.to_string()),
                other => panic!("{other:?}"),
            }
        }
        asked.clone()
    };
    assert_eq!(take_asked(&mut sim), names[..16]);
    // The hub answers in the order asked; each answer sends the next one waiting.
    for (i, name) in names.iter().enumerate() {
        sim.publish(name);
        assert_eq!(sim.answer(A, name, None), Some(Join { conn: A, replay: 0 }));
        let sent = take_asked(&mut sim).len();
        assert_eq!(sent, (i + 17).min(40), "after answer {i}");
        assert!(sim.router.in_flight(A) <= MAX_SUBSCRIBES_IN_FLIGHT);
    }
    assert_eq!(take_asked(&mut sim), names, "asked once each, in order");
    let want: Vec<String> = (0..40).map(|_| "subscribed@1".to_owned()).collect();
    assert_eq!(sim.got(A), want);
    for name in &names {
        assert_eq!(sim.router.members(name), [A]);
    }
    // Nothing is kept for a connection with nothing waiting.
    assert_eq!((sim.router.in_flight(A), sim.router.queued(A)), (0, 0));
    assert!(
        sim.router.in_flight.is_empty(),
        "the queue went with its entry"
    );
}

#[test]
fn a_queued_subscribe_unsubscribed_is_still_answered_in_its_turn() {
    let mut sim = Sim::new(128, None);
    sim.connect(A);
    for i in 0..MAX_SUBSCRIBES_IN_FLIGHT {
        sim.client(A, &subscribe_op(&format!("c{i}")));
    }
    sim.client(A, &subscribe_op("late"));
    sim.client(A, &subscribe_op("kept"));
    assert_eq!(sim.router.queued(A), 2);
    sim.client(A, r#"{"op":"unsubscribe","channel":"late"}"#);
    sim.take_hub();
    assert!(sim.answer(A, "c0", None).is_some());
    assert!(
        matches!(&sim.take_hub()[..], [ToHub::Subscribe { stream: Stream::Channel(c), .. }] if &**c == "late"),
        "the unsubscribed one is still asked, in its turn"
    );
    assert_eq!(sim.router.queued(A), 1);
    for i in 1..MAX_SUBSCRIBES_IN_FLIGHT {
        assert!(sim.answer(A, &format!("c{i}"), None).is_some());
    }
    assert_eq!(
        sim.answer(A, "late", None),
        Some(Join { conn: A, replay: 0 })
    );
    assert!(sim.answer(A, "kept", None).is_some());
    let got = sim.got(A);
    assert_eq!(
        got[16..],
        [
            "subscribed@0",
            "subscribed@0",
            r#"{"op":"unsubscribed","channel":"late"}"#
        ],
        "late's answer, kept's, then the unsubscribe's"
    );
    assert!(sim.router.in_flight.is_empty());
    assert!(sim.router.members("late").is_empty());
    assert_eq!(sim.router.members("kept"), [A]);
}

#[test]
fn a_connection_going_with_a_queue_leaves_nothing_behind() {
    let mut sim = Sim::new(128, None);
    sim.connect(A);
    for i in 0..40 {
        sim.client(A, &subscribe_op(&format!("c{i}")));
    }
    sim.take_hub();
    let push = sim.conns.0.remove(&A).unwrap_or_default();
    sim.router.forget(&mut sim.conns, A, push);
    sim.apply();
    assert!(sim.router.in_flight.is_empty());
    assert_eq!(sim.router.take_subscriptions_delta(), 0);
    // The answers of what was at the hub find nobody and send nothing more.
    for i in 0..MAX_SUBSCRIBES_IN_FLIGHT {
        assert_eq!(sim.answer(A, &format!("c{i}"), None), None);
    }
    let told = sim.take_hub();
    assert!(
        told.iter()
            .all(|m| matches!(m, ToHub::Idle { .. }) || matches!(m, ToHub::LeaveUser { .. })),
        "{told:?}"
    );
    assert!(sim.router.in_flight.is_empty());
}

/// The queue is bounded: by `--max-subscriptions` new channels, and repeats of held ones
/// (which add no subscription) at most as many again; beyond, 429 naming the channel.
#[test]
fn the_subscribe_queue_is_bounded() {
    let mut sim = Sim::new(4, None);
    sim.connect(A);
    sim.client(A, &subscribe_op("a"));
    for _ in 1..MAX_SUBSCRIBES_IN_FLIGHT + 4 {
        sim.client(A, &subscribe_op("a"));
    }
    assert!(sim.got(A).is_empty());
    assert_eq!(sim.router.queued(A), 4);
    sim.client(A, &subscribe_op("a"));
    assert!(sim.got(A).is_empty(), "the refusal waits its turn");
    let total = usize::from(MAX_SUBSCRIBES_IN_FLIGHT) + 4;
    for _ in 0..total {
        assert!(sim.answer(A, "a", None).is_some());
    }
    let got = sim.got(A);
    assert_eq!(got.len(), total + 1, "{got:?}");
    let error = json(got[total]);
    assert_eq!(
        (error["code"].as_u64(), error["channel"].as_str()),
        (Some(429), Some("a"))
    );
    assert!(sim.router.in_flight.is_empty());
}

#[test]
fn channel_op_errors_name_the_channel() {
    let mut sim = Sim::new(8, Some(SECRET));
    let alice = claims("alice", 1_000_010, r#""news""#);
    sim.accept(A, "alice", Some(&alice), Tick(0));
    sim.join_user(A, "alice");
    let ops = [
        // 403: not in the token's channels / publish grants; `$` channels are the server's.
        (r#"{"op":"subscribe","channel":"other"}"#, 403, "other"),
        (r#"{"op":"publish","channel":"news","data":1}"#, 403, "news"),
        (
            r#"{"op":"publish","channel":"$user","data":1}"#,
            403,
            "$user",
        ),
        // 400 from the parser: bad name, bad since, missing data, data too deep.
        (r#"{"op":"subscribe","channel":"a b"}"#, 400, "a b"),
        (
            r#"{"op":"subscribe","channel":"news","since":"1"}"#,
            400,
            "news",
        ),
        (r#"{"op":"unsubscribe","channel":"$x"}"#, 400, "$x"),
        (r#"{"op":"publish","channel":"news"}"#, 400, "news"),
        // 400 from the router: `$user` can't be recovered late or left.
        (
            r#"{"op":"subscribe","channel":"$user","since":1}"#,
            400,
            "$user",
        ),
        (r#"{"op":"unsubscribe","channel":"$user"}"#, 400, "$user"),
    ];
    for (op, code, channel) in ops {
        sim.got.clear();
        sim.client(A, op);
        let error = json(sim.got(A)[0]);
        assert_eq!(error["op"], "error", "{op}: {error}");
        assert_eq!(error["code"], code, "{op}: {error}");
        assert_eq!(error["channel"], channel, "{op}: {error}");
    }
    let deep = format!(
        r#"{{"op":"publish","channel":"news","data":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    sim.got.clear();
    sim.client(A, &deep);
    let error = json(sim.got(A)[0]);
    assert_eq!(
        (error["code"].as_u64(), error["channel"].as_str()),
        (Some(400), Some("news"))
    );
    assert_eq!(error["reason"], crate::push::json_depth::DATA_TOO_DEEP);
    // 429 on publishes, in open mode (everything allowed, two per second here).
    let mut sim = Sim::new(8, None);
    sim.connect(A);
    for _ in 0..3 {
        sim.client(A, r#"{"op":"publish","channel":"chat","data":1}"#);
    }
    let error = json(sim.got(A)[0]);
    assert_eq!(
        (error["code"].as_u64(), error["channel"].as_str()),
        (Some(429), Some("chat"))
    );
    // Errors of other ops name no channel.
    sim.client(A, r#"{"op":"refresh","token":"x"}"#);
    sim.client(A, "{");
    for reply in &sim.got(A)[1..] {
        assert!(json(reply).get("channel").is_none(), "{reply}");
    }
}

#[test]
fn publish_rate_is_a_budget_per_second_of_ticks() {
    let mut sim = Sim::new(8, None);
    sim.connect(A);
    let publish = r#"{"op":"publish","channel":"chat","data":{"n":1}}"#;
    sim.client_at(A, publish, Tick(0));
    sim.client_at(A, publish, Tick(50));
    assert!(sim.got(A).is_empty());
    let hub = sim.take_hub();
    assert_eq!(hub.len(), 2);
    assert!(
        matches!(&hub[0], ToHub::Publish { channel, data } if &**channel == "chat" && data == r#"{"n":1}"#)
    );
    sim.client_at(A, publish, Tick(99));
    assert!(sim.got(A)[0].contains("429"), "{:?}", sim.got(A));
    assert!(sim.take_hub().is_empty());
    sim.client_at(A, publish, Tick(100)); // 100 ticks of 10 ms: a new second
    assert_eq!(sim.take_hub().len(), 1);
    // Never to a server channel, even in open mode.
    sim.client_at(
        A,
        r#"{"op":"publish","channel":"$user","data":1}"#,
        Tick(300),
    );
    assert!(sim.got(A)[1].contains("403"));
}

#[test]
fn binary_ping_and_bad_ops_get_replies() {
    let mut sim = Sim::new(8, None);
    sim.connect(A);
    sim.router.handle_message(
        &mut sim.conns,
        A,
        MessageKind::Binary,
        b"\0\0\0\x01",
        now(Tick(0)),
    );
    sim.apply();
    sim.client(A, "ping");
    sim.client(A, "{");
    let got = sim.got(A);
    assert!(got[0].contains("501"));
    assert_eq!(got[1], "pong");
    assert!(got[2].contains("400"));
}

fn claims(sub: &str, exp: u64, channels: &str) -> Claims {
    let token = sign_hs256(
        &format!(r#"{{"sub":"{sub}","exp":{exp},"channels":[{channels}]}}"#),
        SECRET,
    );
    verify_hs256(&token, SECRET, 1_000_000).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn tokens_limit_channels_share_grants_and_refresh_for_the_same_user() {
    let mut sim = Sim::new(8, Some(SECRET));
    // Expires 10 s from `now`: 1000 ticks of 10 ms after tick 5.
    let alice = claims("alice", 1_000_010, r#""news""#);
    sim.accept(A, "alice", Some(&alice), Tick(5));
    sim.join_user(A, "alice");
    sim.accept(
        B,
        "bob",
        Some(&claims("bob", 1_000_010, r#""news""#)),
        Tick(5),
    );
    assert_eq!(sim.conns.0[&A].expires(), Tick(1005));
    assert_eq!(
        sim.router.grants.len(),
        1,
        "one shared copy of equal grants"
    );
    sim.client(A, r#"{"op":"subscribe","channel":"other"}"#);
    assert!(sim.got(A)[0].contains("403"));
    // A newer token for the same user: a later expiry.
    let newer = sign_hs256(r#"{"sub":"alice","exp":1000020,"channels":["*"]}"#, SECRET);
    sim.client_at(
        A,
        &format!(r#"{{"op":"refresh","token":"{newer}"}}"#),
        Tick(7),
    );
    assert_eq!(sim.expires, [(A, Tick(2007))]);
    assert_eq!(sim.conns.0[&A].expires(), Tick(2007));
    assert_eq!(sim.router.grants.len(), 2);
    // Another user's token is refused and the old one kept.
    let mallory = sign_hs256(r#"{"sub":"mallory","exp":1000030}"#, SECRET);
    sim.client(A, &format!(r#"{{"op":"refresh","token":"{mallory}"}}"#));
    assert!(sim.got(A)[1].contains("another user"), "{:?}", sim.got(A));
    assert_eq!(sim.conns.0[&A].expires(), Tick(2007));
    assert_eq!(sim.router.grants.len(), 2, "the refused grant was let go");
    // The last holder of a grant set lets it go.
    let push = sim.conns.0.remove(&B).unwrap_or_default();
    sim.router.forget(&mut sim.conns, B, push);
    assert_eq!(sim.router.grants.len(), 1);
}

#[test]
fn refresh_in_open_mode_is_a_bad_request() {
    let mut sim = Sim::new(8, None);
    sim.connect(A);
    sim.client(A, r#"{"op":"refresh","token":"x"}"#);
    assert!(sim.got(A)[0].contains("400"));
}

#[test]
fn presence_lists_distinct_users_of_members() {
    let mut sim = Sim::new(8, None);
    sim.accept(A, "alice", None, Tick(0));
    let alice = sim.join_user(A, "alice");
    sim.accept(B, "alice", None, Tick(0));
    sim.join_user(B, "alice");
    sim.accept(C, "carol", None, Tick(0));
    let carol = sim.join_user(C, "carol");
    for id in [A, B, C] {
        sim.client(id, r#"{"op":"subscribe","channel":"room"}"#);
        sim.answer(id, "room", None);
    }
    sim.take_hub();
    sim.router.presence(&mut sim.conns, 42, "room");
    sim.apply();
    let mut expected = vec![alice, carol];
    expected.sort_unstable();
    assert!(matches!(
        &sim.take_hub()[..],
        [ToHub::PresenceReply { ack: 42, users }] if *users == expected
    ));
}

/// A Close sent while subscribes are at the hub is answered after them and after the
/// replies queued behind them; subscribes not yet asked are dropped (the client is going).
#[test]
fn a_close_waits_for_what_is_owed_before_it() {
    let mut sim = Sim::new(128, None);
    sim.connect(A);
    for i in 0..MAX_SUBSCRIBES_IN_FLIGHT + 2 {
        sim.client(A, &subscribe_op(&format!("c{i}")));
    }
    sim.client(A, "ping");
    assert!(sim.router.owes(A));
    sim.router.hold_close(A, 1000);
    sim.apply();
    assert!(sim.got(A).is_empty(), "nothing before the answers");
    assert_eq!(sim.router.queued(A), 0, "the queued subscribes are dropped");
    sim.take_hub();
    for i in 0..MAX_SUBSCRIBES_IN_FLIGHT {
        assert!(sim.answer(A, &format!("c{i}"), None).is_some());
        assert!(sim
            .take_hub()
            .iter()
            .all(|m| !matches!(m, ToHub::Subscribe { .. })));
    }
    let got = sim.got(A);
    assert_eq!(got.len(), MAX_SUBSCRIBES_IN_FLIGHT as usize + 2, "{got:?}");
    assert_eq!(got[got.len() - 2..], ["pong", "close 1000"]);
    assert!(!sim.router.owes(A));
    // Nothing owed: the Close is answered at once.
    sim.connect(B);
    sim.router.hold_close(B, 1001);
    sim.apply();
    assert_eq!(sim.got(B), ["close 1001"]);
}
