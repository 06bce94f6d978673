//! Cluster mode through Redis (issue 13, "Tests" 1–10): real `redis-server` processes and real
//! `edgepush` processes on loopback, faults made with signals and `CLIENT KILL`, and every
//! subscriber's log judged by the oracle (`cluster/oracle.rs`): per stream, contiguous seqs
//! under one epoch, no duplicate, every acknowledged publish delivered — unless the subscriber
//! was told `recovered:false`, after which it restarts from the new seq.
//!
//! Each test starts its own Redis on a free port (stopped by PID, also on a panic) and its own
//! nodes under a `--redis-prefix` of its own. The cluster tests run one at a time (a lock),
//! since their timing bounds (`--redis-timeout`, heartbeats) should not depend on how many
//! other clusters share the two cores. Without `redis-server` they are skipped, unless `CI` is
//! set (`.ci/run` installs Debian's `redis-server`). Node logs are kept in
//! `$CARGO_TARGET_TMPDIR/cluster-logs/`.
//!
//! Two harness tests need no cluster: the launcher and the oracle against one node without
//! `--redis`, and the Redis launcher's own faults (restart, snapshot, AOF, stop/continue).

mod common;

#[path = "cluster/node.rs"]
mod node;
#[path = "cluster/oracle.rs"]
mod oracle;
#[path = "cluster/redis.rs"]
mod redis;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{with_timeout, RawClient, Received};
use edgepush::protocol::frame::OpCode;
use node::{wait, Node, NodeOptions};
use oracle::{
    data, delivery_counts, lock, user_stream, Ack, Oracle, Outcome, Publisher, Seen, SharedOracle,
    StreamReport, Subscriber,
};
use redis::{Persistence, RedisServer, Resp};
use serde_json::{json, Value};

/// Every cluster test's own limit (the issue: each well under 30 s).
const LIMIT: Duration = Duration::from_secs(30);

/// The `--redis-timeout` of every node.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// Slack on top of a documented bound, for a loaded two-core machine.
const SLACK: Duration = Duration::from_millis(1500);

/// Nodes heartbeat every 2 s; a node silent for 3 heartbeats is gone (design.md).
const HEARTBEAT: Duration = Duration::from_secs(2);

/// How long one subscriber may take to catch up, at most (a failing one should leave time for
/// the oracle's message before [`LIMIT`]).
const CATCH_UP: Duration = Duration::from_secs(6);

/// Serializes the cluster tests (module doc).
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs a cluster test: skipped without Redis, one at a time, within [`LIMIT`].
fn cluster_test(body: impl FnOnce() + Send + 'static) {
    if !redis::available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    with_timeout(LIMIT, body);
}

/// One Redis and its nodes. Nodes are dropped (killed) first.
struct Cluster {
    nodes: Vec<Node>,
    redis: RedisServer,
}

impl Cluster {
    /// A Redis with `persistence` and one node per name (`--redis-timeout 1s`), each ready
    /// (`/healthz` 200); `tweak` adjusts every node's options.
    fn start(
        test: &str,
        names: &[&str],
        persistence: Persistence,
        tweak: impl Fn(&mut NodeOptions),
    ) -> Cluster {
        let redis = RedisServer::start(persistence);
        let prefix = format!("ep{}-{test}", std::process::id());
        let nodes = names
            .iter()
            .map(|name| {
                let mut options = NodeOptions::cluster(name, &redis.url(), &prefix);
                options.redis_timeout = format!("{}ms", REDIS_TIMEOUT.as_millis());
                tweak(&mut options);
                Node::start(&options)
            })
            .collect();
        Cluster { nodes, redis }
    }

    fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    fn publisher(&self, i: usize, oracle: &SharedOracle) -> Publisher {
        Publisher::new(self.nodes[i].api_addr, oracle)
    }

    /// One subscriber on each of nodes `0..count` (user `s{i}`, labelled `sub on <node>`), each
    /// subscribed to every one of `channels` (the answer awaited).
    fn subscriber_per_node(&self, count: usize, channels: &[&str]) -> Vec<Subscriber> {
        (0..count)
            .map(|i| {
                let node = self.node(i);
                let mut s = Subscriber::connect(
                    node.addr,
                    &format!("s{i}"),
                    &format!("sub on {}", node.name),
                );
                for channel in channels {
                    s.subscribe_wait(channel);
                }
                s
            })
            .collect()
    }

    /// The oracle's report on what `sub` saw of `stream`; a failed check panics with the
    /// oracle's finding and every node's log.
    fn checked(&self, o: &Oracle, sub: &Subscriber, stream: &str) -> StreamReport {
        o.check(sub, stream)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// The names `/api/nodes` on node `i` lists (empty if it does not answer 200).
    fn listed_nodes(&self, i: usize) -> Vec<String> {
        let response = self.nodes[i].get("/api/nodes");
        if response.status != 200 {
            return Vec::new();
        }
        let mut names: Vec<String> = response.json()["nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .filter_map(|n| n["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Waits until node `i`'s `/api/nodes` lists exactly `names`.
    fn await_listed(&self, i: usize, names: &[&str], limit: Duration) {
        let mut want: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        want.sort();
        let mut last = Vec::new();
        let ok = wait(Instant::now() + limit, || {
            last = self.listed_nodes(i);
            last == want
        });
        assert!(
            ok,
            "node {}: /api/nodes lists {last:?}, expected {want:?} within {limit:?}",
            self.nodes[i].name
        );
    }

    /// The users `/api/presence?channel=` on node `i` lists.
    fn presence(&self, i: usize, channel: &str) -> Vec<String> {
        let response = self.nodes[i].get(&format!("/api/presence?channel={channel}"));
        assert_eq!(response.status, 200, "presence: {}", response.body_text());
        let body = response.json();
        let users: Vec<String> = body["users"]
            .as_array()
            .map(|u| {
                u.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            body["count"].as_u64(),
            Some(users.len() as u64),
            "presence count: {body}"
        );
        users
    }

    /// Every node's log (for failure messages).
    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "--- node {} ({}):\n{}",
                    n.name,
                    n.log_path().display(),
                    tail(&n.log(), 40)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Reads `sub` until it has seen, under the epoch of its latest `subscribed` on `stream`, the
/// highest seq acknowledged under that epoch, and the data of every ack in `must` (or until
/// `deadline`); then a ping/pong barrier, so late duplicates are in the log too.
fn catch_up(sub: &mut Subscriber, oracle: &SharedOracle, stream: &str, deadline: Instant) {
    let deadline = deadline.min(Instant::now() + CATCH_UP);
    let acks = lock(oracle).acks(stream);
    let last_epoch = acks.last().map(|a| a.epoch.clone());
    sub.pump_until(deadline, |s| {
        let Some((seq, epoch)) = s.position(stream) else {
            return false;
        };
        if last_epoch.as_ref().is_some_and(|e| *e != epoch) {
            return false;
        }
        let top = acks
            .iter()
            .filter(|a| a.epoch == epoch)
            .map(|a| a.seq)
            .max()
            .unwrap_or(0);
        seq >= top
    });
    sub.barrier();
}

/// Reads `sub` until every data in `datas` arrived on `stream` (or `deadline`), then a barrier.
fn catch_up_data(sub: &mut Subscriber, stream: &str, datas: &[Value], deadline: Instant) {
    let deadline = deadline.min(Instant::now() + CATCH_UP);
    sub.pump_until_has(stream, datas, deadline);
    sub.barrier();
}

/// Asserts every data of `acks` arrived exactly once on `stream` at `sub`.
fn assert_each_once(sub: &Subscriber, stream: &str, acks: &[Ack]) {
    assert_delivered(sub, stream, acks, false);
}

/// Like [`assert_each_once`] for messages acknowledged after a data loss: a message whose seq a
/// `recovered:false` under its epoch already covered (the node first read the new stream after
/// it was published, and told its client to resync at that top) may be absent, never repeated;
/// every later one arrives exactly once.
fn assert_each_once_after_resync(sub: &Subscriber, stream: &str, acks: &[Ack]) {
    assert_delivered(sub, stream, acks, true);
}

/// Each of `acks` delivered to `sub` exactly once; with `resync`, at most once where a
/// `recovered:false` under its epoch covered its seq.
fn assert_delivered(sub: &Subscriber, stream: &str, acks: &[Ack], resync: bool) {
    let told = |epoch: &str| {
        if !resync {
            return 0;
        }
        sub.seen
            .iter()
            .filter_map(|e| match e {
                Seen::Subscribed {
                    stream: s,
                    epoch: e,
                    seq,
                    recovered: Some(false),
                } if s == stream && e == epoch => Some(*seq),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    };
    let counts = delivery_counts(&sub.messages(stream));
    let wrong: Vec<String> = acks
        .iter()
        .filter_map(|a| {
            let n = counts.get(&a.data.to_string()).copied().unwrap_or(0);
            let covered = a.seq <= told(&a.epoch);
            let ok = if covered { n <= 1 } else { n == 1 };
            (!ok).then(|| {
                format!(
                    "{} (seq {} epoch {}, covered by a resync: {covered}) delivered {n} times",
                    a.data, a.seq, a.epoch
                )
            })
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "subscriber {} on {stream}:\n{}\nits log:\n{}",
        sub.name,
        wrong.join("\n"),
        sub.dump(stream)
    );
}

/// A WebSocket Ping on `client` must be answered with a Pong carrying the same payload
/// (data frames before it are skipped).
fn assert_pong(client: &mut RawClient, payload: &[u8]) {
    client
        .send_frame(true, OpCode::Ping, payload)
        .expect("send ping");
    loop {
        match client.recv() {
            Received::Pong(p) => {
                assert_eq!(p, payload, "pong payload");
                return;
            }
            Received::Text(_) | Received::Binary(_) | Received::Ping(_) => {}
            other => panic!("expected a pong, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Harness checks (no Redis needed for the first).
// ---------------------------------------------------------------------------------------------

/// The node launcher and the oracle against one node without `--redis`: the oracle accepts
/// what a correct server does (publish, subscribe, recover with since/epoch, `$user`).
#[test]
fn harness_single_node_without_redis_satisfies_the_oracle() {
    with_timeout(LIMIT, || {
        let node = Node::start(&NodeOptions::single("solo"));
        let oracle = Oracle::shared();
        let mut publisher = Publisher::new(node.api_addr, &oracle);
        let mut early = Subscriber::connect(node.addr, "early", "early");
        early.subscribe_wait("news");
        let deadline = Instant::now() + Duration::from_secs(10);
        for n in 0..20 {
            publisher.publish("news", &data("solo", n), &format!("k{n}"), deadline);
        }
        // An idempotent retry gets the first answer and is not delivered twice.
        let first = publisher.publish("news", &data("solo", 0), "k0", deadline);
        assert_eq!(
            first.seq, 1,
            "a retry with the same key answers what it answered first"
        );
        let mut late = Subscriber::connect(node.addr, "late", "late");
        late.subscribe_wait("news");
        for n in 20..30 {
            publisher.publish("news", &data("solo", n), &format!("k{n}"), deadline);
        }
        publisher.send("early", &json!("hello"), "s1", deadline);
        catch_up(&mut early, &oracle, "news", deadline);
        catch_up(&mut late, &oracle, "news", deadline);
        catch_up(&mut early, &oracle, &user_stream("early"), deadline);
        let o = lock(&oracle);
        assert_eq!(o.assert_subscriber(&early, "news").delivered, 30);
        assert_eq!(o.assert_subscriber(&late, "news").delivered, 10);
        assert_eq!(
            o.assert_subscriber(&early, &user_stream("early")).delivered,
            1
        );
        drop(o);

        // Away and back with since/epoch: recovered:true and exactly what was missed.
        early.drop_connection();
        for n in 30..40 {
            publisher.publish("news", &data("solo", n), &format!("k{n}"), deadline);
        }
        publisher.send("early", &json!("while away"), "s2", deadline);
        early.reconnect(node.addr, deadline);
        catch_up(&mut early, &oracle, "news", deadline);
        catch_up(&mut early, &oracle, &user_stream("early"), deadline);
        let o = lock(&oracle);
        let news = o.assert_subscriber(&early, "news");
        assert_eq!((news.delivered, news.recoveries), (40, 1));
        let user = o.assert_subscriber(&early, &user_stream("early"));
        assert_eq!((user.delivered, user.recoveries), (2, 1));
        o.assert_no_reuse();
        // The oracle must fail on a log it should refuse: drop a message from `late`'s log.
        let mut doctored = Subscriber::connect(node.addr, "doctored", "doctored");
        doctored.seen = late.seen.clone();
        let i = doctored
            .seen
            .iter()
            .position(|e| matches!(e, Seen::Message { .. }))
            .expect("late got messages");
        doctored.seen.remove(i);
        assert!(
            o.check(&doctored, "news").is_err(),
            "the oracle missed a gap"
        );
    });
}

/// The Redis launcher: PING, data lost by `kill -9` without persistence, kept by a `SAVE`
/// snapshot and by the AOF, a paused server answering nothing until continued, and
/// `CLIENT KILL TYPE pubsub` finding a subscriber.
#[test]
fn harness_redis_server_restarts_snapshots_and_pauses() {
    if !redis::available() {
        return;
    }
    with_timeout(LIMIT, || {
        let mut plain = RedisServer::start(Persistence::None);
        plain.command(&["SET", "k", "1"]);
        plain.restart();
        assert_eq!(
            plain.command(&["GET", "k"]),
            Resp::Bulk(None),
            "nothing survives without persistence"
        );
        plain.command(&["SET", "k", "snap"]);
        plain.save();
        plain.command(&["SET", "k", "later"]);
        plain.restart();
        assert_eq!(
            plain.command(&["GET", "k"]),
            Resp::Bulk(Some(b"snap".to_vec())),
            "the snapshot comes back"
        );

        let mut aof = RedisServer::start(Persistence::Aof);
        aof.command(&["SET", "k", "kept"]);
        aof.restart();
        assert_eq!(
            aof.command(&["GET", "k"]),
            Resp::Bulk(Some(b"kept".to_vec())),
            "the AOF keeps it"
        );

        aof.pause();
        assert!(
            aof.try_command(&["PING"]).is_err(),
            "a stopped Redis answers nothing"
        );
        aof.resume();
        assert_eq!(aof.command(&["PING"]), Resp::Simple("PONG".into()));

        // A raw SUBSCRIBE link is a pubsub client; CLIENT KILL TYPE pubsub finds it.
        use std::io::Write;
        let mut link = std::net::TcpStream::connect(("127.0.0.1", aof.port())).expect("connect");
        link.write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nt\r\n")
            .expect("subscribe");
        link.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut reader = std::io::BufReader::new(link);
        assert!(matches!(
            redis::read_resp(&mut reader),
            Ok(Resp::Array(Some(_)))
        ));
        assert_eq!(aof.kill_pubsub_clients(), 1);

        // One process's links found from /proc, and cut alone by CLIENT KILL ADDR.
        let mine = std::net::TcpStream::connect(("127.0.0.1", aof.port())).expect("connect");
        let links = node::tcp_links(std::process::id(), aof.port());
        assert_eq!(links, vec![mine.local_addr().expect("local addr")]);
        assert_eq!(aof.kill_clients_at(&links), 1);
    });
}

// ---------------------------------------------------------------------------------------------
// Issue 13, tests 1–10.
// ---------------------------------------------------------------------------------------------

/// Issue 13, test 1: Three nodes: publish on A, subscribers on B and C get everything once, in order;
/// publishers on all three nodes to one channel: every subscriber sees the same order.
#[test]
fn t01_three_nodes_deliver_once_in_order_and_agree_on_one_order() {
    cluster_test(|| {
        let cluster = Cluster::start("t01", &["a", "b", "c"], Persistence::None, |_| {});
        let oracle = Oracle::shared();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut subs: Vec<Subscriber> = cluster.subscriber_per_node(3, &["news", "shared"]);
        let mut on_a = cluster.publisher(0, &oracle);
        for n in 0..100 {
            on_a.publish("news", &data("a", n), &format!("news-{n}"), deadline);
        }
        // Three publishers, one per node, at once.
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let mut publisher = cluster.publisher(i, &oracle);
                let who = cluster.node(i).name.clone();
                thread::spawn(move || {
                    for n in 0..60 {
                        publisher.publish(
                            "shared",
                            &data(&who, n),
                            &format!("{who}-{n}"),
                            deadline,
                        );
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("publisher thread");
        }
        for sub in &mut subs {
            catch_up(sub, &oracle, "news", deadline);
            catch_up(sub, &oracle, "shared", deadline);
        }
        let o = lock(&oracle);
        for sub in &subs {
            let news = cluster.checked(&o, sub, "news");
            assert_eq!(news.delivered, 100);
            let shared = cluster.checked(&o, sub, "shared");
            assert_eq!(shared.delivered, 180);
        }
        let orders: Vec<Vec<(u64, Value)>> = subs.iter().map(|s| s.messages("shared")).collect();
        assert!(
            orders.iter().all(|o| *o == orders[0]),
            "subscribers disagree on the order of \"shared\""
        );
        o.assert_no_reuse();
    });
}

/// Issue 13, test 2: `CLIENT KILL TYPE pubsub` on Redis mid-stream: 0 lost, 0 duplicated, no
/// `recovered:false`.
#[test]
fn t02_pubsub_links_killed_mid_stream_lose_and_duplicate_nothing() {
    cluster_test(|| {
        let cluster = Cluster::start("t02", &["a", "b"], Persistence::None, |_| {});
        let oracle = Oracle::shared();
        let deadline = Instant::now() + Duration::from_secs(22);
        let mut subs: Vec<Subscriber> = cluster.subscriber_per_node(2, &["t2"]);
        let done = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..2)
            .map(|i| {
                let mut publisher = cluster.publisher(i, &oracle);
                let done = Arc::clone(&done);
                thread::spawn(move || {
                    for n in 0..200 {
                        publisher.publish(
                            "t2",
                            &data(&format!("p{i}"), n),
                            &format!("p{i}-{n}"),
                            deadline,
                        );
                        thread::sleep(Duration::from_millis(3));
                    }
                    done.store(true, Ordering::Relaxed);
                })
            })
            .collect();
        let mut kills = Vec::new();
        for at in [60, 200, 320] {
            wait(deadline, || {
                lock(&oracle).acks("t2").len() >= at || done.load(Ordering::Relaxed)
            });
            kills.push(cluster.redis.kill_pubsub_clients());
            // Keep reading meanwhile, as a real client does.
            for sub in &mut subs {
                sub.pump_for(Duration::from_millis(100));
            }
        }
        for h in handles {
            h.join().expect("publisher thread");
        }
        assert!(
            kills[0] >= 2,
            "both nodes hold a pub/sub link for \"t2\"; CLIENT KILL found {kills:?}"
        );
        for sub in &mut subs {
            catch_up(sub, &oracle, "t2", deadline);
        }
        let o = lock(&oracle);
        for sub in &subs {
            let report = cluster.checked(&o, sub, "t2");
            assert_eq!(report.delivered, 400, "{}", sub.name);
            assert_eq!(
                report.unsolicited_resets, 0,
                "{}: recovered:false after a pub/sub link drop",
                sub.name
            );
        }
    });
}

/// Issue 13, test 3: A publish whose answer was lost, retried with the same `idempotency_key`: one seq, one
/// delivery. (a) Redis is stopped while the call is in flight: the API answers 503 (not
/// confirmed); Redis then runs the queued call; the retry settles it. (b) `CLIENT KILL TYPE
/// normal` cuts the command links during a burst: every key ends up with exactly one seq, the
/// seqs have no hole, every message is delivered once.
#[test]
fn t03_a_publish_whose_answer_was_lost_is_settled_by_its_retry() {
    cluster_test(|| {
        let cluster = Cluster::start("t03", &["a", "b"], Persistence::None, |_| {});
        let oracle = Oracle::shared();
        let deadline = Instant::now() + Duration::from_secs(25);
        let mut sub = Subscriber::connect(cluster.node(1).addr, "s", "sub on b");
        sub.subscribe_wait("t3");
        sub.subscribe_wait("t3b");
        let mut publisher = cluster.publisher(0, &oracle);
        for n in 0..5 {
            publisher.publish("t3", &data("a", n), &format!("pre-{n}"), deadline);
        }
        let mut redis = cluster.redis;
        let nodes = cluster.nodes;
        redis.pause();
        let lost = data("a", 99);
        let outcome = publisher.publish_once("t3", &lost, Some("lost-1"));
        // Let Redis run what was queued before the node gave up on it.
        redis.resume();
        match outcome {
            Outcome::Unavailable(took) => {
                assert!(took <= REDIS_TIMEOUT + SLACK, "503 after {took:?}")
            }
            Outcome::Acked(ack) => panic!("acknowledged while Redis was stopped: {ack:?}"),
        }
        let settled = publisher.publish("t3", &lost, "lost-1", deadline);
        assert_eq!(settled.seq, 6, "the lost publish takes the next seq, once");
        let after = publisher.publish("t3", &data("a", 100), "after", deadline);
        assert_eq!(after.seq, 7, "no seq was spent twice on the lost publish");

        // (b) command links killed during a burst.
        let burst = {
            let mut publisher = Publisher::new(nodes[0].api_addr, &oracle);
            thread::spawn(move || {
                for n in 0..150 {
                    publisher.publish("t3b", &data("b", n), &format!("burst-{n}"), deadline);
                }
            })
        };
        let mut killed = 0;
        for at in [30, 70, 110] {
            wait(deadline, || {
                lock(&oracle).acks("t3b").len() >= at || burst.is_finished()
            });
            killed += redis.kill_normal_clients();
            sub.pump_for(Duration::from_millis(100));
        }
        burst.join().expect("burst thread");
        assert!(
            killed >= 1,
            "CLIENT KILL TYPE normal found no command link of the nodes"
        );
        catch_up(&mut sub, &oracle, "t3", deadline);
        catch_up(&mut sub, &oracle, "t3b", deadline);
        let o = lock(&oracle);
        let logs = || {
            nodes
                .iter()
                .map(|n| tail(&n.log(), 30))
                .collect::<Vec<_>>()
                .join("\n---\n")
        };
        o.check(&sub, "t3")
            .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
        assert_each_once(&sub, "t3", &o.acks("t3"));
        let report = o
            .check(&sub, "t3b")
            .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
        assert_eq!(report.delivered, 150);
        let mut seqs: Vec<u64> = o.acks("t3b").iter().map(|a| a.seq).collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=150).collect::<Vec<u64>>(),
            "one seq per key, no hole"
        );
        o.assert_no_reuse();
    });
}

/// Issue 13, test 4: `kill -9` Redis and restart it without persistence: publishes during the outage get
/// 503; afterwards new epochs and `recovered:false`, never reused seqs under an old epoch.
#[test]
fn t04_redis_restarted_without_persistence_means_new_epochs_and_recovered_false() {
    cluster_test(|| {
        let mut cluster = Cluster::start("t04", &["a", "b"], Persistence::None, |_| {});
        let oracle = Oracle::shared();
        let deadline = Instant::now() + Duration::from_secs(25);
        let mut subs: Vec<Subscriber> = cluster.subscriber_per_node(2, &["t4"]);
        let mut publisher = cluster.publisher(0, &oracle);
        let before: Vec<Ack> = (0..20)
            .map(|n| publisher.publish("t4", &data("a", n), &format!("pre-{n}"), deadline))
            .collect();
        let old_epoch = before[0].epoch.clone();
        for sub in &mut subs {
            catch_up(sub, &oracle, "t4", deadline);
        }

        cluster.redis.kill9();
        match publisher.publish_once("t4", &data("a", 1000), Some("outage")) {
            Outcome::Unavailable(took) => {
                assert!(took <= REDIS_TIMEOUT + SLACK, "503 after {took:?}")
            }
            Outcome::Acked(ack) => panic!("acknowledged with Redis dead: {ack:?}"),
        }
        for node in &cluster.nodes {
            let unhealthy = wait(Instant::now() + REDIS_TIMEOUT * 3 + SLACK, || {
                node.healthz().status == 503
            });
            assert!(
                unhealthy,
                "node {}: /healthz still 200 with Redis dead",
                node.name
            );
        }
        cluster.redis.restart();
        let after: Vec<Ack> = (0..20)
            .map(|n| publisher.publish("t4", &data("a", 100 + n), &format!("post-{n}"), deadline))
            .collect();
        for ack in &after {
            assert_ne!(
                ack.epoch, old_epoch,
                "seq {} acknowledged under the old epoch after the restart",
                ack.seq
            );
        }
        for sub in &mut subs {
            catch_up(sub, &oracle, "t4", deadline);
        }
        let o = lock(&oracle);
        o.assert_no_reuse();
        for sub in &subs {
            let report = cluster.checked(&o, sub, "t4");
            assert!(
                report.unsolicited_resets >= 1,
                "{}: no recovered:false after the restart",
                sub.name
            );
            // A node whose link came back after some of these were published tells its
            // clients to resync at the stream's top then; what follows arrives once.
            assert_each_once_after_resync(sub, "t4", &after);
        }
        drop(o);
        // A client coming back with the old epoch, on either node: recovered:false.
        let (since, epoch) = (before[19].seq, old_epoch.clone());
        let mut back = Subscriber::connect(cluster.node(1).addr, "back", "back on b");
        let (_, _, recovered) = back.subscribe_since("t4", since, &epoch);
        assert_eq!(
            recovered,
            Some(false),
            "since {since} under the lost epoch {epoch}"
        );
    });
}

/// Issue 13, test 5: The same with AOF `appendfsync always` and `--redis-durable`: every acknowledged
/// message delivered exactly once, `recovered:true` on reconnect to another node (channel and
/// `$user`).
#[test]
fn t05_durable_redis_restart_loses_nothing_and_recovers_on_another_node() {
    cluster_test(|| {
        let mut cluster = Cluster::start("t05", &["a", "b", "c"], Persistence::Aof, |o| {
            o.durable = true
        });
        let oracle = Oracle::shared();
        let deadline = Instant::now() + Duration::from_secs(25);
        let mut stay = Subscriber::connect(cluster.node(1).addr, "stay", "stays on b");
        stay.subscribe_wait("t5");
        let mut mover = Subscriber::connect(cluster.node(1).addr, "mover", "moves b→c");
        mover.subscribe_wait("t5");
        let mut user = Subscriber::connect(cluster.node(0).addr, "u5", "u5 moves a→c");
        let mut on_a = cluster.publisher(0, &oracle);
        let mut on_b = cluster.publisher(1, &oracle);
        for n in 0..30 {
            on_a.publish("t5", &data("a", n), &format!("pre-{n}"), deadline);
        }
        for n in 0..5 {
            on_b.send("u5", &data("send", n), &format!("send-{n}"), deadline);
        }
        catch_up(&mut user, &oracle, &user_stream("u5"), deadline);

        cluster.redis.restart();
        for n in 30..60 {
            on_a.publish("t5", &data("a", n), &format!("post-{n}"), deadline);
        }
        for n in 5..10 {
            on_b.send("u5", &data("send", n), &format!("send-{n}"), deadline);
        }
        for sub in [&mut stay, &mut mover] {
            catch_up(sub, &oracle, "t5", deadline);
        }
        catch_up(&mut user, &oracle, &user_stream("u5"), deadline);

        // Away, and back on another node.
        mover.drop_connection();
        user.drop_connection();
        for n in 60..70 {
            on_a.publish("t5", &data("a", n), &format!("away-{n}"), deadline);
        }
        for n in 10..13 {
            on_b.send("u5", &data("send", n), &format!("send-{n}"), deadline);
        }
        mover.reconnect(cluster.node(2).addr, deadline);
        user.reconnect(cluster.node(2).addr, deadline);
        for sub in [&mut stay, &mut mover] {
            catch_up(sub, &oracle, "t5", deadline);
        }
        catch_up(&mut user, &oracle, &user_stream("u5"), deadline);

        let o = lock(&oracle);
        o.assert_no_reuse();
        let epochs: std::collections::BTreeSet<String> =
            o.acks("t5").iter().map(|a| a.epoch.clone()).collect();
        assert_eq!(
            epochs.len(),
            1,
            "a durable Redis keeps the epoch across its restart: {epochs:?}"
        );
        let strict = |sub: &Subscriber, stream: &str, delivered: usize, recoveries: usize| {
            let report = cluster.checked(&o, sub, stream);
            assert_eq!(report.delivered, delivered, "{} on {stream}", sub.name);
            assert_eq!(
                (report.unsolicited_resets, report.refused_recoveries),
                (0, 0),
                "{} on {stream}: recovered:false",
                sub.name
            );
            assert_eq!(
                report.recoveries, recoveries,
                "{} on {stream}: recovered:true answers",
                sub.name
            );
        };
        strict(&stay, "t5", 70, 0);
        strict(&mover, "t5", 70, 1);
        strict(&user, &user_stream("u5"), 13, 1);
    });
}

/// Issue 13, test 6: Redis restored from an older snapshot (publish, `SAVE`, publish 100 more, `kill -9`,
/// restart from the snapshot), with `--redis-durable` (the epoch in the snapshot is the old
/// one): `recovered:false`, never a silent gap, and later publishes still delivered once.
#[test]
fn t06_redis_back_from_an_older_snapshot_is_never_a_silent_gap() {
    cluster_test(|| {
        let mut cluster = Cluster::start("t06", &["a", "b", "c"], Persistence::None, |o| {
            o.durable = true
        });
        let oracle = Oracle::shared();
        let deadline = Instant::now() + Duration::from_secs(25);
        let mut sub = Subscriber::connect(cluster.node(1).addr, "s", "sub on b");
        sub.subscribe_wait("t6");
        let mut publisher = cluster.publisher(0, &oracle);
        for n in 0..10 {
            publisher.publish("t6", &data("a", n), &format!("pre-{n}"), deadline);
        }
        cluster.redis.save();
        let mut top = None;
        for n in 10..110 {
            top = Some(publisher.publish("t6", &data("a", n), &format!("mid-{n}"), deadline));
        }
        let top = top.expect("published");
        catch_up(&mut sub, &oracle, "t6", deadline);
        assert_eq!(
            sub.position("t6"),
            Some((top.seq, top.epoch.clone())),
            "caught up before the rollback"
        );

        cluster.redis.restart();
        let after: Vec<Ack> = (0..20)
            .map(|n| publisher.publish("t6", &data("a", 200 + n), &format!("post-{n}"), deadline))
            .collect();
        catch_up_data(
            &mut sub,
            "t6",
            &after.iter().map(|a| a.data.clone()).collect::<Vec<_>>(),
            deadline,
        );
        let o = lock(&oracle);
        let report = o
            .check_order(&sub, "t6")
            .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
        assert!(
            report.unsolicited_resets + report.refused_recoveries >= 1,
            "the subscriber on b was never told recovered:false after Redis went back 100 messages\n{}",
            sub.dump("t6")
        );
        assert_each_once(&sub, "t6", &after);
        drop(o);
        // A client that saw the lost top comes back on another node: recovered:false.
        let mut back = Subscriber::connect(cluster.node(2).addr, "back", "back on c");
        let (_, _, recovered) = back.subscribe_since("t6", top.seq, &top.epoch);
        assert_eq!(
            recovered,
            Some(false),
            "since {} under {} after the rollback",
            top.seq,
            top.epoch
        );
    });
}

/// Issue 13, test 7: `kill -STOP` Redis for 5 s and `kill -CONT`: API 503 within `--redis-timeout`; echo and
/// pings on every node keep answering meanwhile; `/healthz` and new push upgrades 503;
/// afterwards nothing acknowledged is lost.
#[test]
fn t07_a_frozen_redis_gets_503s_while_every_node_keeps_serving() {
    cluster_test(|| {
        let mut cluster = Cluster::start("t07", &["a", "b", "c"], Persistence::None, |_| {});
        let oracle = Oracle::shared();
        let deadline = Instant::now() + Duration::from_secs(25);
        let mut sub = Subscriber::connect(cluster.node(1).addr, "s", "sub on b");
        sub.subscribe_wait("t7");
        let mut echoes: Vec<RawClient> = cluster
            .nodes
            .iter()
            .map(|n| RawClient::connect(n.addr, "/echo"))
            .collect();
        let mut pushes: Vec<RawClient> = cluster
            .nodes
            .iter()
            .map(|n| common::push_client(n.addr, "pinger"))
            .collect();
        let mut publisher = cluster.publisher(0, &oracle);
        for n in 0..20 {
            publisher.publish("t7", &data("a", n), &format!("pre-{n}"), deadline);
        }

        cluster.redis.pause();
        let frozen_at = Instant::now();
        let in_doubt = data("a", 500);
        match publisher.publish_once("t7", &in_doubt, Some("frozen")) {
            Outcome::Unavailable(took) => {
                assert!(took <= REDIS_TIMEOUT + SLACK, "503 after {took:?}")
            }
            Outcome::Acked(ack) => panic!("acknowledged while Redis was stopped: {ack:?}"),
        }
        let mut unhealthy = vec![false; cluster.nodes.len()];
        let mut refused_upgrade = false;
        let mut round = 0u8;
        while frozen_at.elapsed() < Duration::from_secs(5) {
            round = round.wrapping_add(1);
            for (i, node) in cluster.nodes.iter().enumerate() {
                echoes[i].round_trip(&format!("still here {round}"));
                assert_pong(&mut pushes[i], &[round]);
                let health = node.healthz();
                if health.status == 503 {
                    assert!(
                        health.header("retry-after").is_some(),
                        "/healthz 503 without Retry-After"
                    );
                    if !unhealthy[i] {
                        let metrics = node.get("/metrics").body_text();
                        assert!(
                            metrics.contains("\nedgepush_redis_up 0\n"),
                            "/metrics while Redis is stopped:\n{metrics}"
                        );
                    }
                    unhealthy[i] = true;
                }
            }
            if !refused_upgrade && unhealthy[0] {
                match common::try_upgrade(cluster.node(0).addr, "/ws?user=new", &[]) {
                    Err(r) if r.status == 503 => refused_upgrade = true,
                    Err(r) => panic!(
                        "new upgrade while Redis is stopped: {} {}",
                        r.status,
                        r.body_text()
                    ),
                    Ok(_) => panic!("a new push upgrade was accepted while Redis is stopped"),
                }
            }
            thread::sleep(Duration::from_millis(300));
        }
        cluster.redis.resume();
        assert_eq!(
            unhealthy,
            vec![true; 3],
            "/healthz went 503 on these nodes during the 5 s stop"
        );
        assert!(
            refused_upgrade,
            "new push upgrades were not refused with 503 during the stop"
        );

        let settled = publisher.publish("t7", &in_doubt, "frozen", deadline);
        for n in 20..40 {
            publisher.publish("t7", &data("a", n), &format!("post-{n}"), deadline);
        }
        for node in &cluster.nodes {
            assert!(
                wait(deadline, || node.healthz().status == 200),
                "node {}: /healthz not 200 again",
                node.name
            );
            let stats: serde_json::Value =
                serde_json::from_str(&node.get("/api/stats").body_text()).expect("stats JSON");
            assert_eq!(stats["redis"], "up", "node {}", node.name);
            assert!(stats["redis_outages"].as_u64() >= Some(1), "{stats}");
            assert!(stats["redis_round_trips"].as_u64() >= Some(1), "{stats}");
            // The stopped Redis answered nothing for 5 s: the latency histogram saw at least
            // one round trip (or the PING that gave up) longer than half a second.
            let metrics = node.get("/metrics").body_text();
            let sample = |name: &str| -> u64 {
                metrics
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                    .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
            };
            let count = sample("edgepush_redis_latency_seconds_count ");
            let fast = sample("edgepush_redis_latency_seconds_bucket{le=\"0.5\"} ");
            assert!(
                count > fast,
                "no slow Redis round trip counted: {fast} of {count} under 0.5 s"
            );
        }
        catch_up(&mut sub, &oracle, "t7", deadline);
        let o = lock(&oracle);
        let report = cluster.checked(&o, &sub, "t7");
        assert_eq!(
            report.unsolicited_resets, 0,
            "recovered:false after a pause that lost nothing"
        );
        assert_each_once(&sub, "t7", &[settled]);
        assert_eq!(report.delivered, 41);
    });
}

/// Issue 13, test 8: `kill -9` one edgepush node: its clients reconnect to the others and recover exactly
/// what they missed; its presence is gone within 3 heartbeats; `/api/send` reaches the user's
/// other nodes.
#[test]
fn t08_a_killed_node_clients_recover_elsewhere_and_its_presence_vanishes() {
    cluster_test(|| {
        let mut cluster = Cluster::start("t08", &["a", "b", "c"], Persistence::None, |_| {});
        let oracle = Oracle::shared();
        let deadline = Instant::now() + Duration::from_secs(24);
        cluster.await_listed(1, &["a", "b", "c"], HEARTBEAT * 2 + SLACK);
        let mut ghost = Subscriber::connect(cluster.node(0).addr, "ghost", "ghost on a");
        ghost.subscribe_wait("t8");
        let mut mover = Subscriber::connect(cluster.node(0).addr, "u8", "u8 moves a→b");
        mover.subscribe_wait("t8");
        let mut twin = Subscriber::connect(cluster.node(1).addr, "u8", "u8 stays on b");
        let mut users = Vec::new();
        assert!(
            wait(Instant::now() + HEARTBEAT + SLACK, || {
                users = cluster.presence(1, "t8");
                users.contains(&"ghost".to_owned()) && users.contains(&"u8".to_owned())
            }),
            "presence on b does not show a's subscribers: {users:?}"
        );
        let mut on_c = cluster.publisher(2, &oracle);
        let mut on_b = cluster.publisher(1, &oracle);
        for n in 0..10 {
            on_c.publish("t8", &data("c", n), &format!("pre-{n}"), deadline);
        }
        for n in 0..5 {
            on_c.send("u8", &data("send", n), &format!("send-{n}"), deadline);
        }
        catch_up(&mut mover, &oracle, "t8", deadline);
        catch_up(&mut mover, &oracle, &user_stream("u8"), deadline);

        cluster.nodes[0].kill9();
        let killed_at = Instant::now();
        drop(ghost);
        mover.drop_connection();
        for n in 10..20 {
            on_c.publish("t8", &data("c", n), &format!("post-{n}"), deadline);
        }
        for n in 5..10 {
            on_b.send("u8", &data("send", n), &format!("send-{n}"), deadline);
        }
        mover.reconnect(cluster.node(1).addr, deadline);
        catch_up(&mut mover, &oracle, "t8", deadline);
        catch_up(&mut mover, &oracle, &user_stream("u8"), deadline);
        catch_up(&mut twin, &oracle, &user_stream("u8"), deadline);
        {
            let o = lock(&oracle);
            let t8 = cluster.checked(&o, &mover, "t8");
            assert_eq!(
                (t8.delivered, t8.recoveries, t8.unsolicited_resets),
                (20, 1, 0),
                "u8 on t8"
            );
            let own = cluster.checked(&o, &mover, &user_stream("u8"));
            assert_eq!(
                (own.delivered, own.recoveries, own.unsolicited_resets),
                (10, 1, 0),
                "u8's $user after moving"
            );
            let other = cluster.checked(&o, &twin, &user_stream("u8"));
            assert_eq!(
                other.delivered, 10,
                "/api/send reaches the user's other node"
            );
        }

        // The dead node and its presence vanish within 3 heartbeats.
        let bound = HEARTBEAT * 3 + SLACK;
        let remaining = bound.saturating_sub(killed_at.elapsed());
        cluster.await_listed(1, &["b", "c"], remaining);
        let mut users = Vec::new();
        let gone = wait(killed_at + bound, || {
            users = cluster.presence(2, "t8");
            !users.contains(&"ghost".to_owned())
        });
        assert!(
            gone,
            "ghost (on the dead node a) still present on c after {:?}: {users:?}",
            killed_at.elapsed()
        );
        assert!(
            users.contains(&"u8".to_owned()),
            "u8, now on b, missing from presence: {users:?}"
        );
    });
}

/// Issue 13, test 9: Subscribe while a publisher runs, on another node: `subscribed`, then contiguous
/// messages from its seq on (also when subscribing with since/epoch).
#[test]
fn t09_subscribing_while_another_node_publishes_is_contiguous() {
    cluster_test(|| {
        // History deep enough that a reconnect 50 ms later is still recoverable at full speed.
        let cluster = Cluster::start("t09", &["a", "b"], Persistence::None, |o| {
            o.extra = vec!["--history-size".into(), "100000".into()];
        });
        let oracle = Oracle::shared();
        let deadline = Instant::now() + Duration::from_secs(25);
        let stop = Arc::new(AtomicBool::new(false));
        let running = {
            let mut publisher = cluster.publisher(0, &oracle);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    publisher.publish("t9", &data("a", n), &format!("run-{n}"), deadline);
                    n += 1;
                    thread::sleep(Duration::from_millis(2));
                }
            })
        };
        wait(deadline, || !lock(&oracle).acks("t9").is_empty());
        // How long each subscribe (and each reconnect's recovery) took to be answered.
        let mut latencies: Vec<(String, Duration)> = Vec::new();
        let mut subs: Vec<Subscriber> = Vec::new();
        for i in 0..5 {
            let mut sub = Subscriber::connect(
                cluster.node(1).addr,
                &format!("s{i}"),
                &format!("sub {i} on b"),
            );
            let asked = Instant::now();
            sub.subscribe_wait("t9");
            latencies.push((sub.name.clone(), asked.elapsed()));
            subs.push(sub);
            for s in &mut subs {
                s.pump_for(Duration::from_millis(20));
            }
            thread::sleep(Duration::from_millis(50));
        }
        // Two come back with since/epoch while the publisher still runs.
        for sub in subs.iter_mut().take(2) {
            sub.drop_connection();
            thread::sleep(Duration::from_millis(50));
            let asked = Instant::now();
            sub.reconnect(cluster.node(1).addr, deadline);
            latencies.push((format!("{} (back)", sub.name), asked.elapsed()));
        }
        thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        running.join().expect("publisher thread");
        for sub in &mut subs {
            catch_up(sub, &oracle, "t9", deadline);
        }
        let o = lock(&oracle);
        let published = o.acks("t9").len();
        for (i, sub) in subs.iter().enumerate() {
            let report = cluster.checked(&o, sub, "t9");
            assert!(
                report.delivered > 0,
                "{}: nothing delivered ({published} publishes acknowledged)\n{}",
                sub.name,
                sub.dump("t9")
            );
            assert_eq!(
                report.recoveries,
                usize::from(i < 2),
                "{}: recovered:true answers",
                sub.name
            );
        }
        // A node with a working Redis answers within --redis-timeout (else a 503 is due).
        let slow: Vec<String> = latencies
            .iter()
            .filter(|(_, took)| *took > REDIS_TIMEOUT + SLACK)
            .map(|(who, took)| format!("{who}: {took:?}"))
            .collect();
        assert!(
            slow.is_empty(),
            "subscribes on b answered late while a publishes ({published} publishes in the \
             run):\n{}",
            slow.join("\n")
        );
    });
}

/// Issue 13, test 10: `/api/disconnect` and `/api/broadcast` reach every node, also when one node's Redis
/// links were cut (`CLIENT KILL ADDR`, repeatedly for 1.5 s) and restored in between.
#[test]
fn t10_broadcast_and_disconnect_reach_every_node_across_a_cut_link() {
    cluster_test(|| {
        let cluster = Cluster::start("t10", &["a", "b", "c"], Persistence::None, |_| {});
        let deadline = Instant::now() + Duration::from_secs(25);
        let mut listeners: Vec<Subscriber> = cluster
            .nodes
            .iter()
            .map(|n| {
                Subscriber::connect(
                    n.addr,
                    &format!("l-{}", n.name),
                    &format!("listener on {}", n.name),
                )
            })
            .collect();
        let mut victims: Vec<Subscriber> = cluster
            .nodes
            .iter()
            .map(|n| Subscriber::connect(n.addr, "v10", &format!("v10 on {}", n.name)))
            .collect();
        let mut api_a = cluster.node(0).api();
        let mut api_b = cluster.node(1).api();
        let broadcast = |api: &mut common::ApiClient, n: u64| {
            let answer = api.post("/api/broadcast", &json!({"data": {"b": n}}).to_string());
            assert_eq!(answer, json!({}), "broadcast answer");
        };
        let has = |sub: &Subscriber, n: u64| sub.broadcasts().contains(&json!({"b": n}));

        broadcast(&mut api_a, 1);
        for l in &mut listeners {
            assert!(
                l.pump_until(deadline, |s| has(s, 1)),
                "{}: broadcast 1 missing",
                l.name
            );
        }

        // Cut node c's links again and again for 1.5 s; broadcast and disconnect meanwhile.
        let port = cluster.redis.port();
        let links = cluster.node(2).redis_links(port);
        assert!(
            !links.is_empty(),
            "node c has no connection to Redis on port {port}"
        );
        let cut_until = Instant::now() + Duration::from_millis(1500);
        let mut cuts = 0;
        let mut sent = false;
        while Instant::now() < cut_until {
            cuts += cluster
                .redis
                .kill_clients_at(&cluster.node(2).redis_links(port));
            if !sent {
                broadcast(&mut api_a, 2);
                let answer = api_b.post("/api/disconnect", &json!({"user": "v10"}).to_string());
                assert_eq!(answer, json!({}), "disconnect answer");
                sent = true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        assert!(cuts >= 1, "no link of node c was cut");
        for l in &mut listeners {
            assert!(
                l.pump_until(deadline, |s| has(s, 2)),
                "{}: broadcast 2 missing\n{}",
                l.name,
                cluster.logs()
            );
        }
        for v in &mut victims {
            let closed = v.pump_until(deadline, |s| s.seen.contains(&Seen::Closed(Some(4000))));
            assert!(
                closed,
                "{}: not closed with 4000 by /api/disconnect: {:?}\n{}",
                v.name,
                v.seen.last(),
                cluster.logs()
            );
        }
        broadcast(&mut api_a, 3);
        for l in &mut listeners {
            assert!(
                l.pump_until(deadline, |s| has(s, 3)),
                "{}: broadcast 3 missing",
                l.name
            );
            l.barrier();
            assert_eq!(
                l.broadcasts(),
                vec![json!({"b": 1}), json!({"b": 2}), json!({"b": 3})],
                "{}: each broadcast once, in order",
                l.name
            );
        }
    });
}

/// Two processes with one `--node-name` are told so in their logs (their presence answers and
/// `/api/nodes` entries would mix); a node restarted under its name while its old entry still
/// lives is not, and neither is a node with a name of its own.
#[test]
fn t11_two_processes_with_one_node_name_log_the_conflict() {
    cluster_test(|| {
        const CONFLICT: &str = "another process heartbeats as node";
        let mut cluster = Cluster::start("t11", &["phoenix", "solo"], Persistence::None, |_| {});
        let prefix = format!("ep{}-t11", std::process::id());
        let options = |name: &str| {
            let mut o = NodeOptions::cluster(name, &cluster.redis.url(), &prefix);
            o.redis_timeout = format!("{}ms", REDIS_TIMEOUT.as_millis());
            o
        };
        // phoenix dies and comes back within its entry's TTL (3 heartbeats).
        cluster.nodes[0].kill9();
        let phoenix = Node::start(&options("phoenix"));
        // Three heartbeats of the new process: its first replaced the old process's entry.
        thread::sleep(HEARTBEAT * 3 + SLACK);
        assert!(!phoenix.log().contains(CONFLICT), "{}", phoenix.log());
        // A second process named solo.
        let twin = Node::start(&options("solo"));
        let told = |node: &Node| node.log().contains(CONFLICT);
        assert!(
            wait(Instant::now() + HEARTBEAT * 4 + SLACK, || told(&twin)
                && told(&cluster.nodes[1])),
            "both solos log the conflict:\n{}\n{}",
            twin.log(),
            cluster.nodes[1].log()
        );
        assert!(!told(&phoenix), "{}", phoenix.log());
        // At most once a minute: still one line each after a few more heartbeats.
        thread::sleep(HEARTBEAT * 2);
        assert_eq!(twin.log().matches(CONFLICT).count(), 1, "{}", twin.log());
    });
}
