//! History and recovery on the push endpoint (design.md, "Client protocol on the push
//! endpoint"): a client that comes back with `since`/`epoch` gets `subscribed` with
//! `recovered:true`, then exactly the messages it missed, then live ones — in order, no gap, no
//! duplicate, whatever publishes race the resubscribe; `recovered:false` and no replay when the
//! history no longer reaches back or the epoch is not the channel's; `$user` streams outlive
//! their last connection by the TTL and no longer; all history together stays under
//! `max_bytes`.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{guarded, push_client, wait_until, ApiClient, RawClient, Received, TestServer};
use edgepush::config::Config;
use edgepush::push::hub::HistoryConfig;
use serde_json::{json, Value};

fn server(history: HistoryConfig) -> TestServer {
    TestServer::start(Config {
        history,
        threads: 2,
        ..Config::for_tests()
    })
}

fn history(size: usize) -> HistoryConfig {
    HistoryConfig {
        size,
        ..Default::default()
    }
}

/// Cuts the connection off the hard way: `SO_LINGER` 0, then close, so the server sees a reset
/// (no close handshake, no FIN), and whatever was in flight towards the client is lost.
fn reset(client: RawClient) {
    socket2::SockRef::from(&client.stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(client);
}

/// A clean disconnect: the close handshake, then our end of TCP is closed too.
fn close(mut client: RawClient) {
    client.send_close(1000);
    client.expect_close_code(1000);
    drop(client);
}

/// Nothing was queued for `client` before now: a `ping` must be answered by the very next
/// frame (a worker writes one connection's frames in order).
fn assert_nothing_queued(client: &mut RawClient) {
    client.send_text("ping");
    match client.recv() {
        Received::Text(text) => assert_eq!(text, "pong", "unexpected frame before the pong"),
        other => panic!("expected pong, got {other:?}"),
    }
}

/// The `data` every test publishes as message number `n`.
fn data(n: u64) -> Value {
    json!({ "n": n })
}

/// The next frame must be message `seq` of `channel`, carrying `data(seq)`.
fn expect_message(client: &mut RawClient, channel: &str, seq: u64) {
    let got = client.recv_json();
    assert_eq!(
        got,
        json!({"op": "message", "channel": channel, "seq": seq, "data": data(seq)}),
        "expected message {seq} on {channel}"
    );
}

/// Publishes `data(n)` for every `n` in `range` to `channel`, pipelined (the requests of a
/// chunk are written at once, then their answers are read in order). Checks that each answer
/// has `seq == n` and one epoch, and returns that epoch.
fn publish_range(
    api: &mut ApiClient,
    channel: &str,
    range: std::ops::RangeInclusive<u64>,
) -> String {
    let ns: Vec<u64> = range.collect();
    let mut epoch: Option<String> = None;
    for chunk in ns.chunks(100) {
        let mut bytes = Vec::new();
        for &n in chunk {
            let body = json!({"channel": channel, "data": data(n)}).to_string();
            bytes.extend_from_slice(&api.request(
                "POST",
                "/api/publish?wait=delivered",
                Some(&body),
            ));
        }
        api.send_raw(&bytes);
        for &n in chunk {
            let response = api.read_response();
            assert_eq!(
                response.status,
                200,
                "publish {n}: {}",
                response.body_text()
            );
            let answer = response.json();
            assert_eq!(answer["seq"], n, "publish {n} to {channel}: {answer}");
            let e = answer["epoch"].as_str().expect("epoch").to_owned();
            match &epoch {
                Some(first) => assert_eq!(&e, first, "the epoch changed at {n}"),
                None => epoch = Some(e),
            }
        }
    }
    epoch.expect("published something")
}

/// A fresh push connection of `user` that subscribes to `channel` with `since` and `epoch`
/// (each left out when `None`); returns it and the `subscribed` answer.
fn resubscribe(
    addr: SocketAddr,
    user: &str,
    channel: &str,
    since: Option<u64>,
    epoch: Option<&str>,
) -> (RawClient, Value) {
    let mut client = push_client(addr, user);
    let answer = subscribe_with(&mut client, channel, since, epoch);
    (client, answer)
}

/// Sends a subscribe with `since`/`epoch` (each left out when `None`) and returns the
/// `subscribed` answer, which must be the next frame.
fn subscribe_with(
    client: &mut RawClient,
    channel: &str,
    since: Option<u64>,
    epoch: Option<&str>,
) -> Value {
    send_subscribe(client, channel, since, epoch);
    let answer = client.recv_json();
    assert_eq!(answer["op"], "subscribed", "{answer}");
    assert_eq!(answer["channel"], channel, "{answer}");
    answer
}

fn send_subscribe(client: &mut RawClient, channel: &str, since: Option<u64>, epoch: Option<&str>) {
    let mut op = json!({"op": "subscribe", "channel": channel});
    if let Some(since) = since {
        op["since"] = json!(since);
    }
    if let Some(epoch) = epoch {
        op["epoch"] = json!(epoch);
    }
    client.send_json(&op);
}

fn seq_of(value: &Value) -> u64 {
    value["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no seq: {value}"))
}

fn epoch_of(value: &Value) -> String {
    value["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("no epoch: {value}"))
        .to_owned()
}

fn stats(api: &mut ApiClient) -> Value {
    api.get("/api/stats")
}

fn stat(stats: &Value, name: &str) -> u64 {
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {stats}"))
}

#[test]
fn reset_client_recovers_exactly_what_it_missed_then_live() {
    guarded(|| {
        let server = server(history(1000));
        let mut api = ApiClient::connect(server.api_addr());
        let mut client = push_client(server.addr(), "r1");
        let first = client.subscribe("feed");
        assert_eq!(seq_of(&first), 0, "{first}");
        assert!(
            first.get("recovered").is_none(),
            "no since, no recovered: {first}"
        );
        let epoch = epoch_of(&first);

        // 20 go out; the client reads 12 and is cut off with the rest in flight.
        assert_eq!(publish_range(&mut api, "feed", 1..=20), epoch);
        for seq in 1..=12 {
            expect_message(&mut client, "feed", seq);
        }
        reset(client);

        // 500 more while it is away.
        assert_eq!(publish_range(&mut api, "feed", 21..=520), epoch);

        let (mut client, answer) = resubscribe(server.addr(), "r1", "feed", Some(12), Some(&epoch));
        assert_eq!(
            answer,
            json!({"op": "subscribed", "channel": "feed", "epoch": epoch, "seq": 520,
                   "recovered": true})
        );
        // The 8 it lost in flight and the 500 published while it was away, in order.
        for seq in 13..=520 {
            expect_message(&mut client, "feed", seq);
        }
        assert_nothing_queued(&mut client);

        // Live ones follow with no gap.
        assert_eq!(publish_range(&mut api, "feed", 521..=525), epoch);
        for seq in 521..=525 {
            expect_message(&mut client, "feed", seq);
        }
        assert_nothing_queued(&mut client);
    });
}

#[test]
fn resubscribes_racing_publishers_never_gap_or_duplicate() {
    guarded(|| {
        const ROUNDS: u64 = 150;
        let server = server(history(100_000));
        let addr = server.addr();
        let api_addr = server.api_addr();

        let mut client = push_client(addr, "racer");
        let first = client.subscribe("race");
        let epoch = epoch_of(&first);
        assert_eq!(seq_of(&first), 0);

        // Publishes `data(n)` for n = 1, 2, … through the API (small pipelined bursts, then a
        // short pause) until told to stop; every answer must carry seq n and the one epoch.
        // Returns how many it published.
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = {
            let stop = Arc::clone(&stop);
            let epoch = epoch.clone();
            thread::spawn(move || {
                let mut api = ApiClient::connect(api_addr);
                let mut n = 0u64;
                let mut burst = 1;
                while !stop.load(Ordering::Relaxed) {
                    let mut bytes = Vec::new();
                    for k in 1..=burst {
                        let body = json!({"channel": "race", "data": data(n + k)}).to_string();
                        bytes.extend_from_slice(&api.request(
                            "POST",
                            "/api/publish?wait=delivered",
                            Some(&body),
                        ));
                    }
                    api.send_raw(&bytes);
                    for _ in 0..burst {
                        n += 1;
                        let answer = api.read_response();
                        assert_eq!(answer.status, 200, "{}", answer.body_text());
                        let answer = answer.json();
                        assert_eq!(answer["seq"], n, "{answer}");
                        assert_eq!(answer["epoch"], epoch.as_str(), "{answer}");
                    }
                    burst = burst % 8 + 1;
                    thread::sleep(Duration::from_micros(200));
                }
                n
            })
        };

        // The last seq the client saw.
        let mut last = 0u64;
        let read = |client: &mut RawClient, last: &mut u64, count: u64| {
            for _ in 0..count {
                let got = client.recv_json();
                assert_eq!(got["op"], "message", "{got}");
                assert_eq!(got["channel"], "race", "{got}");
                let seq = seq_of(&got);
                assert_eq!(seq, *last + 1, "gap or duplicate after {last}: {got}");
                assert_eq!(got["data"], data(seq), "{got}");
                *last = seq;
            }
        };
        read(&mut client, &mut last, 3);
        // Rounds whose answer had something to replay.
        let mut replays = 0;
        for round in 0..ROUNDS {
            reset(client);
            let mut fresh = push_client(addr, "racer");
            send_subscribe(&mut fresh, "race", Some(last), Some(&epoch));
            if round % 5 == 4 {
                // Cut off again before the answer: the subscribe is still in flight.
                reset(fresh);
                fresh = push_client(addr, "racer");
                send_subscribe(&mut fresh, "race", Some(last), Some(&epoch));
            }
            let answer = fresh.recv_json();
            assert_eq!(answer["op"], "subscribed", "round {round}: {answer}");
            assert_eq!(answer["recovered"], true, "round {round}: {answer}");
            assert_eq!(epoch_of(&answer), epoch, "round {round}: {answer}");
            assert!(
                seq_of(&answer) >= last,
                "round {round}: {answer} after {last}"
            );
            if seq_of(&answer) > last {
                replays += 1;
            }
            // Read some (replayed or live), sometimes none, then cut off again.
            read(&mut fresh, &mut last, (round * 7) % 23);
            client = fresh;
        }
        stop.store(true, Ordering::Relaxed);
        let total = publisher.join().expect("publisher");
        assert!(total >= last, "read {last} of {total} published");
        let remaining = total - last;
        read(&mut client, &mut last, remaining);
        assert_eq!(last, total);
        assert!(
            replays >= ROUNDS / 4,
            "only {replays} of {ROUNDS} resubscribes had anything to replay"
        );
        assert_nothing_queued(&mut client);
    });
}

#[test]
fn no_recovery_past_history_or_across_epochs() {
    guarded(|| {
        let server = server(history(10));
        let addr = server.addr();
        let mut api = ApiClient::connect(server.api_addr());
        let mut client = push_client(addr, "g");
        let epoch = epoch_of(&client.subscribe("gap"));
        assert_eq!(publish_range(&mut api, "gap", 1..=5), epoch);
        for seq in 1..=5 {
            expect_message(&mut client, "gap", seq);
        }
        reset(client);
        // 50 more: the history (10) now holds 46..=55 only.
        assert_eq!(publish_range(&mut api, "gap", 6..=55), epoch);

        // Every way recovery must be refused: subscribed at the top, nothing replayed, and
        // the next frame is the next live message. `since` is taken relative to the top.
        let mut next = 56;
        let refused: [(u64, Option<&str>, &str); 4] = [
            (11, Some(&epoch), "one before the oldest held is missing"),
            (50, Some(&epoch), "gap much longer than the history"),
            (5, Some("zzzzzzzz"), "another epoch"),
            (5, None, "since without epoch"),
        ];
        for (behind, given_epoch, what) in refused {
            let top = next - 1;
            let since = top - behind;
            let (mut client, answer) = resubscribe(addr, "g", "gap", Some(since), given_epoch);
            assert_eq!(
                answer,
                json!({"op": "subscribed", "channel": "gap", "epoch": epoch, "seq": top,
                       "recovered": false}),
                "{what}"
            );
            assert_nothing_queued(&mut client);
            assert_eq!(publish_range(&mut api, "gap", next..=next), epoch);
            expect_message(&mut client, "gap", next);
            assert_nothing_queued(&mut client);
            next += 1;
            reset(client);
        }
        // A since beyond the top (another incarnation's, say).
        let (mut client, answer) = resubscribe(addr, "g", "gap", Some(1000), Some(&epoch));
        assert_eq!(
            answer,
            json!({"op": "subscribed", "channel": "gap", "epoch": epoch, "seq": next - 1,
                   "recovered": false})
        );
        assert_nothing_queued(&mut client);
        reset(client);
        let top = next - 1;

        // The edges that must recover: since = oldest held - 1 (replays all 10), and
        // since = top (replays nothing).
        let (mut client, answer) = resubscribe(addr, "g", "gap", Some(top - 10), Some(&epoch));
        assert_eq!(answer["recovered"], true, "{answer}");
        assert_eq!(seq_of(&answer), top, "{answer}");
        for seq in top - 9..=top {
            expect_message(&mut client, "gap", seq);
        }
        assert_nothing_queued(&mut client);
        let (mut client, answer) = resubscribe(addr, "g", "gap", Some(top), Some(&epoch));
        assert_eq!(
            answer,
            json!({"op": "subscribed", "channel": "gap", "epoch": epoch, "seq": top,
                   "recovered": true})
        );
        assert_nothing_queued(&mut client);
        assert_eq!(publish_range(&mut api, "gap", top + 1..=top + 1), epoch);
        expect_message(&mut client, "gap", top + 1);
    });
}

#[test]
fn offline_user_recovers_sends_within_ttl_and_not_after() {
    guarded(|| {
        const TTL: Duration = Duration::from_secs(2);
        let server = server(HistoryConfig {
            ttl: TTL,
            ..Default::default()
        });
        let addr = server.addr();
        let mut api = ApiClient::connect(server.api_addr());

        let mut client = RawClient::connect(addr, "/ws?user=u4");
        let first = client.expect_user_subscribed();
        let (epoch, since) = (epoch_of(&first), seq_of(&first));
        close(client);

        // Offline: delivered to nobody but kept, with increasing seqs.
        for k in 1..=3 {
            let answer = api.post(
                "/api/send?wait=delivered",
                &json!({"user": "u4", "data": data(k)}).to_string(),
            );
            assert!(answer["epoch"].is_string(), "{answer}");
            assert_eq!(
                answer,
                json!({"seq": since + k, "epoch": answer["epoch"], "delivered": 0})
            );
        }

        // Back within the TTL: same stream, and the three come back when the upgrade asks.
        let mut client =
            RawClient::connect(addr, &format!("/ws?user=u4&since={since}&epoch={epoch}"));
        let first = client.expect_user_subscribed();
        assert_eq!(
            first,
            json!({"op": "subscribed", "channel": "$user", "epoch": epoch, "seq": since + 3,
                   "recovered": true})
        );
        for k in 1..=3 {
            let got = client.recv_json();
            assert_eq!(
                got,
                json!({"op": "message", "channel": "$user", "seq": since + k, "data": data(k)})
            );
        }
        assert_nothing_queued(&mut client);
        close(client);

        // Away longer than the TTL (plus the hub's once-a-second sweep): the stream is gone.
        let left = Instant::now();
        assert!(
            wait_until(TTL + Duration::from_secs(4), || stat(
                &stats(&mut api),
                "user_streams"
            ) == 0),
            "the $user stream outlived its TTL: {}",
            stats(&mut api)
        );
        assert!(
            left.elapsed() >= TTL - Duration::from_millis(300),
            "the $user stream went after {:?}, before its TTL",
            left.elapsed()
        );
        for k in 4..=5 {
            let answer = api.post(
                "/api/send?wait=delivered",
                &json!({"user": "u4", "data": data(k)}).to_string(),
            );
            assert_eq!(
                answer,
                json!({"seq": 0, "epoch": null, "delivered": 0}),
                "nothing is kept"
            );
        }
        assert_eq!(stat(&stats(&mut api), "user_streams"), 0);

        let since = since + 3;
        let mut client =
            RawClient::connect(addr, &format!("/ws?user=u4&since={since}&epoch={epoch}"));
        let first = client.expect_user_subscribed();
        assert_ne!(epoch_of(&first), epoch, "a new incarnation: {first}");
        assert_eq!(seq_of(&first), 0, "{first}");
        assert_eq!(first["recovered"], false, "{first}");
        assert_nothing_queued(&mut client);
    });
}

#[test]
fn history_stays_under_max_bytes_oldest_first() {
    guarded(|| {
        const MAX: u64 = 64 << 10;
        let server = server(HistoryConfig {
            max_bytes: MAX as usize,
            ..Default::default()
        });
        let mut api = ApiClient::connect(server.api_addr());
        let filler = "x".repeat(200);
        let mut last: Option<Value> = None;
        // 5,000 messages round-robin over 500 channels nobody subscribes to, 250 per pipelined
        // batch, with the stats checked after every batch.
        for batch in 0..20u64 {
            let mut bytes = Vec::new();
            for i in 0..250u64 {
                let n = batch * 250 + i;
                let body =
                    json!({"channel": format!("mem-{:03}", n % 500), "data": filler}).to_string();
                bytes.extend_from_slice(&api.request(
                    "POST",
                    "/api/publish?wait=delivered",
                    Some(&body),
                ));
            }
            api.send_raw(&bytes);
            for _ in 0..250 {
                let response = api.read_response();
                assert_eq!(response.status, 200, "{}", response.body_text());
                let answer = response.json();
                assert_eq!(answer["delivered"], 0, "{answer}");
                last = Some(answer);
            }
            let stats = stats(&mut api);
            assert!(
                stat(&stats, "history_bytes") <= MAX,
                "after batch {batch}: {stats}"
            );
        }
        let stats = stats(&mut api);
        let (bytes, messages, channels) = (
            stat(&stats, "history_bytes"),
            stat(&stats, "history_messages"),
            stat(&stats, "channels"),
        );
        assert!(bytes <= MAX, "{stats}");
        // Each held message costs its ~260-byte frame plus bookkeeping: far fewer than 500
        // fit, but the bound is used (the oldest went, not everything).
        assert!(channels > 0 && channels < 250, "{stats}");
        assert!(
            channels <= messages,
            "every channel kept holds a message: {stats}"
        );
        assert!(
            bytes >= MAX / 2,
            "history should fill up to its bound: {stats}"
        );
        assert_eq!(stat(&stats, "user_streams"), 0, "{stats}");

        let metrics = api.call("GET", "/metrics", None);
        assert_eq!(metrics.status, 200);
        let text = metrics.body_text();
        let line = text
            .lines()
            .find(|l| l.starts_with("edgepush_history_bytes "))
            .unwrap_or_else(|| panic!("no edgepush_history_bytes in /metrics:\n{text}"));
        let value: u64 = line["edgepush_history_bytes ".len()..]
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(value, bytes, "/metrics agrees with /api/stats");

        // The newest message is still held: its channel recovers it.
        let last = last.expect("published");
        let seq = seq_of(&last);
        let (mut client, answer) = resubscribe(
            server.addr(),
            "m",
            "mem-499",
            Some(seq - 1),
            Some(&epoch_of(&last)),
        );
        assert_eq!(answer["recovered"], true, "{answer}");
        assert_eq!(seq_of(&answer), seq, "{answer}");
        let got = client.recv_json();
        assert_eq!(
            got,
            json!({"op": "message", "channel": "mem-499", "seq": seq, "data": filler})
        );
        assert_nothing_queued(&mut client);
    });
}

#[test]
fn resubscribe_on_the_same_connection_never_duplicates() {
    guarded(|| {
        let server = server(history(1000));
        let mut api = ApiClient::connect(server.api_addr());
        let mut client = push_client(server.addr(), "dup");
        let epoch = epoch_of(&client.subscribe("again"));
        assert_eq!(publish_range(&mut api, "again", 1..=10), epoch);
        for seq in 1..=10 {
            expect_message(&mut client, "again", seq);
        }

        // Already subscribed and already holding 6..=10: recovery from 5 replays nothing.
        let answer = subscribe_with(&mut client, "again", Some(5), Some(&epoch));
        assert_eq!(
            answer,
            json!({"op": "subscribed", "channel": "again", "epoch": epoch, "seq": 10,
                   "recovered": true})
        );
        assert_nothing_queued(&mut client);
        assert_eq!(publish_range(&mut api, "again", 11..=15), epoch);
        for seq in 11..=15 {
            expect_message(&mut client, "again", seq);
        }
        assert_nothing_queued(&mut client);

        // The same while publishes race the resubscribes: still each seq exactly once.
        let publisher = {
            let api_addr = server.api_addr();
            let epoch = epoch.clone();
            thread::spawn(move || {
                let mut api = ApiClient::connect(api_addr);
                for n in 16..=315 {
                    assert_eq!(publish_range(&mut api, "again", n..=n), epoch);
                    if n % 10 == 0 {
                        thread::sleep(Duration::from_millis(1));
                    }
                }
            })
        };
        let mut last = 15;
        let mut asked = 0;
        let mut answers = 0;
        while last < 315 {
            if last % 20 == 0 && last != asked {
                asked = last;
                send_subscribe(&mut client, "again", Some(last - 10), Some(&epoch));
            }
            let got = client.recv_json();
            if got["op"] == "subscribed" {
                assert_eq!(got["recovered"], true, "{got}");
                answers += 1;
                continue;
            }
            assert_eq!(got["op"], "message", "{got}");
            assert_eq!(
                seq_of(&got),
                last + 1,
                "gap or duplicate after {last}: {got}"
            );
            last += 1;
        }
        publisher.join().expect("publisher");
        // Every subscribe sent was answered once.
        while answers < 15 {
            let got = client.recv_json();
            assert_eq!(got["op"], "subscribed", "{got}");
            answers += 1;
        }
        assert_nothing_queued(&mut client);
        let stats = stats(&mut api);
        assert_eq!(
            stat(&stats, "subscriptions"),
            1,
            "one subscription: {stats}"
        );
    });
}

/// The hub holds each user's connections; a connection that goes before the hub has answered
/// its join must still leave, or the user's stream would never expire.
#[test]
fn vanished_connections_leave_no_member_behind() {
    guarded(|| {
        const TTL: Duration = Duration::from_secs(1);
        let server = server(HistoryConfig {
            ttl: TTL,
            ..Default::default()
        });
        let mut api = ApiClient::connect(server.api_addr());
        for i in 0..300 {
            let mut stream = common::connect(server.addr());
            let user = format!("ghost-{}", i % 3);
            stream
                .write_all(common::upgrade_request(&format!("/ws?user={user}")).as_bytes())
                .expect("send upgrade");
            if i % 2 == 1 {
                // Half of them wait for the 101 (the join is on its way), half don't.
                let (response, _) = common::read_response_head(&mut stream);
                assert_eq!(response.status, 101, "{response:?}");
            }
            socket2::SockRef::from(&stream)
                .set_linger(Some(Duration::ZERO))
                .expect("SO_LINGER 0");
        }
        assert!(
            wait_until(Duration::from_secs(5), || stat(
                &stats(&mut api),
                "connections"
            ) == 0),
            "{}",
            stats(&mut api)
        );
        assert!(
            wait_until(TTL + Duration::from_secs(4), || stat(
                &stats(&mut api),
                "user_streams"
            ) == 0),
            "a user stream kept a member that is gone: {}",
            stats(&mut api)
        );
        let answer = api.post(
            "/api/send?wait=delivered",
            &json!({"user": "ghost-0", "data": 1}).to_string(),
        );
        assert_eq!(answer, json!({"seq": 0, "epoch": null, "delivered": 0}));
    });
}

/// Issue 12, item 10: a reconnecting client gives its `$user` recovery in the upgrade request.
/// A send that lands between the upgrade and anything the client could send after it is
/// still live *after* the replay: the first frame is the recovered answer, then the missed
/// messages, then live ones — never 4, 2, 3. A later `subscribe` on `$user` with `since`
/// would reorder, so it is refused, naming the channel.
#[test]
fn user_recovery_in_the_upgrade_request_comes_before_live_messages() {
    guarded(|| {
        let server = server(history(100));
        let mut api = ApiClient::connect(server.api_addr());
        let mut client = RawClient::connect(server.addr(), "/ws?user=early");
        let first = client.expect_user_subscribed();
        let epoch = epoch_of(&first);
        let answer = api.post(
            "/api/send?wait=delivered",
            &json!({"user": "early", "data": data(1)}).to_string(),
        );
        assert!(answer["epoch"].is_string(), "{answer}");
        assert_eq!(
            answer,
            json!({"seq": 1, "epoch": answer["epoch"], "delivered": 1})
        );
        expect_message(&mut client, "$user", 1);
        close(client);
        wait_until(Duration::from_secs(5), || {
            stat(&stats(&mut api), "connections") == 0
        });
        for k in 2..=3 {
            let answer = api.post(
                "/api/send?wait=delivered",
                &json!({"user": "early", "data": data(k)}).to_string(),
            );
            assert!(answer["epoch"].is_string(), "{answer}");
            assert_eq!(
                answer,
                json!({"seq": k, "epoch": answer["epoch"], "delivered": 0})
            );
        }

        // The upgrade goes out, then a send is made before the client reads anything; the
        // upgrade may be handled before or after it: either way the order holds.
        let path = format!("/ws?user=early&since=1&epoch={epoch}");
        let mut raw = RawClient::from_parts(common::connect(server.addr()), Vec::new());
        raw.send_raw(common::upgrade_request(&path).as_bytes())
            .expect("send the upgrade");
        let answer = api.post(
            "/api/send?wait=delivered",
            &json!({"user": "early", "data": data(4)}).to_string(),
        );
        assert_eq!(answer["seq"], 4, "{answer}");
        let (response, rest) = common::read_response_head(&mut raw.stream);
        assert_eq!(response.status, 101, "{response:?}");
        let mut client = RawClient::from_parts(raw.stream, rest);
        let joined = client.recv_json();
        assert_eq!(joined["op"], "subscribed", "{joined}");
        assert_eq!(joined["channel"], "$user", "{joined}");
        assert_eq!(joined["epoch"], epoch.as_str(), "{joined}");
        assert_eq!(joined["recovered"], true, "{joined}");
        let top = seq_of(&joined);
        assert!(top == 3 || top == 4, "{joined}");
        for k in 2..=4 {
            expect_message(&mut client, "$user", k);
        }
        assert_nothing_queued(&mut client);

        // A recovery by `subscribe` afterwards is refused; the stream goes on live.
        send_subscribe(&mut client, "$user", Some(1), Some(&epoch));
        let error = client.recv_json();
        assert_eq!(error["op"], "error", "{error}");
        assert_eq!(error["code"], 400, "{error}");
        assert_eq!(error["channel"], "$user", "{error}");
        assert!(
            error["reason"]
                .as_str()
                .is_some_and(|r| r.contains("upgrade request")),
            "{error}"
        );
        let answer = api.post(
            "/api/send?wait=delivered",
            &json!({"user": "early", "data": data(5)}).to_string(),
        );
        assert!(answer["epoch"].is_string(), "{answer}");
        assert_eq!(
            answer,
            json!({"seq": 5, "epoch": answer["epoch"], "delivered": 1})
        );
        expect_message(&mut client, "$user", 5);
        assert_nothing_queued(&mut client);
    });
}

/// The neighbours of the upgrade recovery: a wrong epoch, a `since` from the future, or a
/// `since` without an epoch: `recovered:false`, nothing replayed; no `since`: no `recovered`
/// at all; a `since` that is not a whole number: 400 before the upgrade.
#[test]
fn user_recovery_in_the_upgrade_request_that_cannot_be_honoured() {
    guarded(|| {
        let server = server(history(100));
        let mut api = ApiClient::connect(server.api_addr());
        let mut client = RawClient::connect(server.addr(), "/ws?user=v");
        let epoch = epoch_of(&client.expect_user_subscribed());
        close(client);
        for k in 1..=2 {
            api.post(
                "/api/send?wait=delivered",
                &json!({"user": "v", "data": data(k)}).to_string(),
            );
        }
        for query in [
            "since=0&epoch=nope".to_owned(),
            format!("since=9&epoch={epoch}"),
            "since=0".to_owned(),
        ] {
            let mut client = RawClient::connect(server.addr(), &format!("/ws?user=v&{query}"));
            let first = client.expect_user_subscribed();
            assert_eq!(
                first,
                json!({"op": "subscribed", "channel": "$user", "epoch": epoch, "seq": 2,
                       "recovered": false}),
                "{query}"
            );
            assert_nothing_queued(&mut client);
            close(client);
        }
        for bad in ["x1", "-1", "1.5", "", "18446744073709551616"] {
            let path = format!("/ws?user=v&since={bad}&epoch={epoch}");
            match common::try_upgrade(server.addr(), &path, &[]) {
                Ok(_) => panic!("since={bad} upgraded"),
                Err(response) => {
                    assert_eq!(response.status, 400, "since={bad}");
                    assert!(response.body_text().contains("since"), "since={bad}");
                }
            }
        }
        let mut client = RawClient::connect(server.addr(), &format!("/ws?user=v&epoch={epoch}"));
        let first = client.expect_user_subscribed();
        assert_eq!(
            first,
            json!({"op": "subscribed", "channel": "$user", "epoch": epoch, "seq": 2})
        );
        assert_nothing_queued(&mut client);
        // Up to date: recovered, nothing to replay.
        close(client);
        let mut client =
            RawClient::connect(server.addr(), &format!("/ws?user=v&since=2&epoch={epoch}"));
        assert_eq!(client.expect_user_subscribed()["recovered"], true);
        assert_nothing_queued(&mut client);
    });
}
