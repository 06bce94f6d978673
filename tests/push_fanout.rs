//! Fan-out across workers (design.md, "Architecture": hub, per-worker subscriber tables, slow
//! consumers): with two event loops, thousands of subscribers each get every message exactly
//! once and in seq order, the API's `delivered` adds up, user sends reach every connection of
//! the user whichever worker holds it, and a reader that stalls is closed with 1008 without
//! costing the others anything.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    connect, read_response_head, upgrade_request, wait_until, with_timeout, ApiClient, RawClient,
    Received, TestServer,
};
use edgepush::config::Config;
use edgepush::protocol::frame::{write_masked_frame, OpCode};
use serde_json::{json, Value};

/// Raises this process's soft open-files limit to the hard limit (before the server starts,
/// which derives its connection ceiling from it).
fn raise_nofile() -> libc::rlim_t {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write only the struct passed by pointer.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    limit.rlim_cur
}

fn two_workers() -> Config {
    Config {
        threads: 2,
        ..Config::for_tests()
    }
}

/// Connects, upgrades as `user` and subscribes to `channel` in one write, then reads up to
/// the channel's `subscribed` answer.
fn subscriber(addr: SocketAddr, user: &str, channel: &str) -> RawClient {
    let mut stream = connect(addr);
    let mut bytes = upgrade_request(&format!("/ws?user={user}")).into_bytes();
    let op = json!({"op": "subscribe", "channel": channel}).to_string();
    write_masked_frame(&mut bytes, true, OpCode::Text, op.as_bytes(), [7, 1, 3, 5]);
    stream
        .write_all(&bytes)
        .expect("send upgrade and subscribe");
    let (response, rest) = read_response_head(&mut stream);
    assert_eq!(response.status, 101, "{user}: {response:?}");
    let mut client = RawClient::from_parts(stream, rest);
    let mut seen_user = false;
    loop {
        let frame = client.recv_json();
        assert_eq!(frame["op"], "subscribed", "{user}: {frame}");
        if frame["channel"] == "$user" {
            seen_user = true;
        } else {
            assert_eq!(frame["channel"], channel, "{user}: {frame}");
            assert!(seen_user, "{user}: $user must be the first frame");
            return client;
        }
    }
}

/// `n` subscribers of `channel` (users `{prefix}{i}`), connected by `threads` threads.
fn subscribers(addr: SocketAddr, n: usize, channel: &str, threads: usize) -> Vec<RawClient> {
    let per_thread = n.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let channel = channel.to_owned();
            thread::spawn(move || {
                (t * per_thread..((t + 1) * per_thread).min(n))
                    .map(|i| subscriber(addr, &format!("u{i}"), &channel))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("connecting thread"))
        .collect()
}

/// The next frame is message `seq` of `channel` with `data`: compared as text first (cheap),
/// as JSON if the text differs.
fn expect_message(client: &mut RawClient, channel: &str, seq: u64, data: &Value) {
    let text = match client.recv() {
        Received::Text(text) => text,
        other => panic!("expected message {seq}, got {other:?}"),
    };
    let expected = format!(r#"{{"op":"message","channel":"{channel}","seq":{seq},"data":{data}}}"#);
    if text != expected {
        let got: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(
            got,
            json!({"op": "message", "channel": channel, "seq": seq, "data": data}),
        );
    }
}

/// Nothing else is queued for `client`: a `ping` is answered by the very next frame.
fn expect_nothing_pending(client: &mut RawClient) {
    client.send_text("ping");
    match client.recv() {
        Received::Text(text) if text == "pong" => {}
        other => panic!("expected pong, got {other:?}"),
    }
}

#[test]
fn every_subscriber_gets_every_message_once_in_order() {
    with_timeout(Duration::from_secs(60), || {
        const SUBSCRIBERS: usize = 2000;
        const MESSAGES: u64 = 200;
        const THREADS: usize = 8;
        assert!(raise_nofile() as usize >= 2 * SUBSCRIBERS + 200);
        let server = TestServer::start(two_workers());
        let started = Instant::now();
        let clients = subscribers(server.addr(), SUBSCRIBERS, "fan", THREADS);
        assert_eq!(clients.len(), SUBSCRIBERS);
        assert_eq!(server.stats().open(), SUBSCRIBERS);
        assert_eq!(
            server.stats().subscriptions.load(Ordering::Relaxed),
            SUBSCRIBERS
        );
        let connected = started.elapsed();

        // All publishes pipelined on one API connection.
        let mut api = ApiClient::connect(server.api_addr());
        let mut burst = Vec::new();
        for i in 1..=MESSAGES {
            burst.extend(api.request(
                "POST",
                "/api/publish?wait=delivered",
                Some(&format!(r#"{{"channel":"fan","data":{i}}}"#)),
            ));
        }
        api.stream.write_all(&burst).expect("send publishes");
        let mut epoch = None;
        for i in 1..=MESSAGES {
            let response = api.read_response();
            assert_eq!(response.status, 200, "{}", response.body_text());
            let answer = response.json();
            assert_eq!(answer["seq"], i, "{answer}");
            assert_eq!(answer["delivered"], SUBSCRIBERS, "publish {i}: {answer}");
            let epoch = epoch.get_or_insert_with(|| answer["epoch"].clone());
            assert_eq!(&answer["epoch"], epoch);
        }
        let published = started.elapsed();

        // Every subscriber reads its 200 messages, in order, then nothing else.
        let per_thread = SUBSCRIBERS.div_ceil(THREADS);
        let mut clients = clients;
        let mut chunks = Vec::new();
        while !clients.is_empty() {
            let rest = clients.split_off(clients.len().saturating_sub(per_thread));
            chunks.push(rest);
        }
        let readers: Vec<_> = chunks
            .into_iter()
            .map(|mut chunk| {
                thread::spawn(move || {
                    for client in &mut chunk {
                        for seq in 1..=MESSAGES {
                            expect_message(client, "fan", seq, &json!(seq));
                        }
                    }
                    for client in &mut chunk {
                        expect_nothing_pending(client);
                    }
                    chunk.len()
                })
            })
            .collect();
        let checked: usize = readers
            .into_iter()
            .map(|h| h.join().expect("reader thread"))
            .sum();
        assert_eq!(checked, SUBSCRIBERS);
        let stats = api.get("/api/stats");
        // (At least: the figure may also count replies such as `subscribed` and `pong`.)
        assert!(
            stats["messages_out"]
                .as_u64()
                .is_some_and(|n| n >= MESSAGES * SUBSCRIBERS as u64),
            "{stats}"
        );
        assert_eq!(stats["slow_consumer_drops"], 0, "{stats}");
        eprintln!(
            "fan-out: {SUBSCRIBERS} connected in {connected:?}, {MESSAGES} publishes answered \
             at {published:?}, all read at {:?}",
            started.elapsed()
        );
    });
}

/// Which of the server's event loops holds the accepted side of `client`: the `/proc` id of
/// the epoll instance its socket is registered with (the server runs in this process).
fn worker_of(server_port: u16, client: &TcpStream) -> Option<String> {
    let client_port = client.local_addr().ok()?.port();
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    let tcp = std::fs::read_to_string("/proc/self/net/tcp").ok()?;
    let inode = tcp.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.len() > 9 && port(cols[1]) == Some(server_port) && port(cols[2]) == Some(client_port))
            .then(|| cols[9].to_owned())
    })?;
    let socket_link = format!("socket:[{inode}]");
    let mut server_fd = None;
    let mut epolls = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        if link.to_string_lossy() == socket_link {
            server_fd = Some(name);
        } else if link.to_string_lossy() == "anon_inode:[eventpoll]" {
            epolls.push(name);
        }
    }
    let server_fd = server_fd?;
    epolls.into_iter().find(|epoll| {
        std::fs::read_to_string(format!("/proc/self/fdinfo/{epoll}")).is_ok_and(|info| {
            info.lines().any(|line| {
                let mut words = line.split_whitespace();
                words.next() == Some("tfd:") && words.next() == Some(server_fd.as_str())
            })
        })
    })
}

/// A connected (not yet upgraded) socket and the worker that accepted it.
fn placed_socket(addr: SocketAddr) -> (TcpStream, String) {
    let stream = connect(addr);
    let mut worker = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            worker = worker_of(addr.port(), &stream);
            worker.is_some()
        }),
        "no worker took the connection"
    );
    (stream, worker.unwrap_or_default())
}

#[test]
fn user_send_reaches_all_connections_of_the_user_on_every_worker() {
    with_timeout(Duration::from_secs(30), || {
        raise_nofile();
        let server = TestServer::start(two_workers());
        let addr = server.addr();
        // Place alice's three connections so that both workers hold at least one; everything
        // else becomes another user's connection.
        let mut alice = Vec::new();
        let mut alice_workers = HashSet::new();
        let mut others = Vec::new();
        let mut all_workers = HashSet::new();
        for attempt in 0.. {
            assert!(
                attempt < 200,
                "the kernel never spread connections over workers"
            );
            let (stream, worker) = placed_socket(addr);
            all_workers.insert(worker.clone());
            // Take it for alice if she still needs it and the worker she lacks stays reachable.
            let new_worker = !alice_workers.contains(&worker);
            let wanted =
                alice.len() < 3 && (new_worker || 3 - alice.len() > 2 - alice_workers.len());
            if wanted {
                alice_workers.insert(worker);
                let mut client = RawClient::upgrade(stream, "/ws?user=alice");
                client.expect_user_subscribed();
                alice.push(client);
            } else if others.len() < 6 {
                let mut client =
                    RawClient::upgrade(stream, &format!("/ws?user=other{}", others.len()));
                client.expect_user_subscribed();
                others.push(client);
            }
            if alice.len() == 3 && others.len() >= 3 {
                break;
            }
        }
        assert_eq!(alice_workers.len(), 2, "alice is on both workers");
        assert_eq!(all_workers.len(), 2, "two workers accept");

        let mut api = ApiClient::connect(server.api_addr());
        for seq in 1..=3u64 {
            let answer = api.post(
                "/api/send?wait=delivered",
                &json!({"user": "alice", "data": {"n": seq}}).to_string(),
            );
            assert!(answer["epoch"].is_string(), "{answer}");
            assert_eq!(
                answer,
                json!({"seq": seq, "epoch": answer["epoch"], "delivered": 3})
            );
        }
        for client in &mut alice {
            for seq in 1..=3u64 {
                expect_message(client, "$user", seq, &json!({"n": seq}));
            }
            expect_nothing_pending(client);
        }
        for client in &mut others {
            expect_nothing_pending(client);
        }
        // Each other user gets only their own.
        let answer = api.post("/api/send?wait=delivered", r#"{"user":"other0","data":0}"#);
        assert!(answer["epoch"].is_string(), "{answer}");
        assert_eq!(
            answer,
            json!({"seq": 1, "epoch": answer["epoch"], "delivered": 1})
        );
        expect_message(&mut others[0], "$user", 1, &json!(0));
        for client in others.iter_mut().skip(1).chain(alice.iter_mut()) {
            expect_nothing_pending(client);
        }
        // A broadcast counts every push connection on both workers.
        let answer = api.post("/api/broadcast?wait=delivered", r#"{"data":"all"}"#);
        assert_eq!(answer["delivered"], alice.len() + others.len(), "{answer}");
        // Disconnect closes alice on both workers.
        let answer = api.post("/api/disconnect?wait=delivered", r#"{"user":"alice"}"#);
        assert_eq!(answer, json!({"closed": 3}));
        for client in &mut alice {
            assert_eq!(client.expect_close(), Some(4000));
        }
    });
}

#[test]
fn stalled_reader_is_closed_with_1008_and_others_get_everything() {
    with_timeout(Duration::from_secs(30), || {
        const READERS: usize = 4;
        const MAX_MESSAGES: u64 = 20_000;
        const BATCH: u64 = 100;
        raise_nofile();
        let server = TestServer::start(Config {
            max_message_size: 64 * 1024,
            max_backlog: 256 * 1024,
            ..two_workers()
        });
        let addr = server.addr();

        // The stalled reader: a tiny receive window, subscribed, then never reads.
        let mut stalled = RawClient::upgrade(common::small_window_stream(addr), "/ws?user=stalled");
        stalled.expect_user_subscribed();
        stalled.subscribe("feed");

        // Well-behaved readers, each on its own thread, reading until the last seq.
        let readers: Vec<_> = (0..READERS)
            .map(|i| {
                let mut client = subscriber(addr, &format!("reader{i}"), "feed");
                thread::spawn(move || {
                    let mut seq = 0;
                    loop {
                        seq += 1;
                        let frame = match client
                            .try_recv()
                            .unwrap_or_else(|e| panic!("reader {i}: waiting for {seq}: {e}"))
                        {
                            Received::Text(text) => text,
                            other => panic!("reader {i}: expected message {seq}, got {other:?}"),
                        };
                        let prefix = format!(r#"{{"op":"message","channel":"feed","seq":{seq},"#);
                        let end = frame.ends_with(r#""data":"end"}"#);
                        assert!(
                            frame.starts_with(&prefix) && (frame.len() > 1000 || end),
                            "reader {i}: expected message {seq}, got {:?}",
                            &frame[..frame.len().min(80)]
                        );
                        if end {
                            break;
                        }
                    }
                    expect_nothing_pending(&mut client);
                    seq
                })
            })
            .collect();

        // Publish 1,000-byte messages until the stalled reader is dropped.
        let mut api = ApiClient::connect(server.api_addr());
        let payload = "x".repeat(1000 - 2);
        let mut seq = 0;
        let mut delivered = Vec::new();
        while server.stats().slow_consumers.load(Ordering::Relaxed) == 0 {
            assert!(seq < MAX_MESSAGES, "never dropped the stalled reader");
            let mut burst = Vec::new();
            for _ in 0..BATCH {
                burst.extend(api.request(
                    "POST",
                    "/api/publish?wait=delivered",
                    Some(&json!({"channel": "feed", "data": payload}).to_string()),
                ));
            }
            api.stream.write_all(&burst).unwrap();
            for _ in 0..BATCH {
                seq += 1;
                let answer = api.read_response().json();
                assert_eq!(answer["seq"], seq, "{answer}");
                delivered.push(answer["delivered"].as_u64().expect("delivered"));
            }
        }
        // One more after the drop, so that the readers are known to be past it.
        let answer = api.post(
            "/api/publish?wait=delivered",
            &json!({"channel": "feed", "data": "end"}).to_string(),
        );
        seq += 1;
        assert_eq!(answer["delivered"], READERS, "{answer}");
        // Every publish reached every reader; the stalled one only until it was dropped.
        let full = delivered
            .iter()
            .take_while(|&&d| d == READERS as u64 + 1)
            .count();
        assert!(full > 0, "the stalled reader took nothing: {delivered:?}");
        assert!(
            delivered[full..].iter().all(|&d| d == READERS as u64),
            "delivered counts: {:?}",
            &delivered[full.saturating_sub(2)..]
        );
        for reader in readers {
            assert_eq!(reader.join().expect("reader"), seq);
        }

        // The stalled reader now reads: a gap-free prefix of the messages (frames intact),
        // then Close 1008, then EOF.
        let mut got = 0;
        let close = loop {
            match stalled.recv() {
                Received::Text(text) => {
                    got += 1;
                    let prefix = format!(r#"{{"op":"message","channel":"feed","seq":{got},"#);
                    assert!(
                        text.starts_with(&prefix),
                        "{:?}",
                        &text[..80.min(text.len())]
                    );
                }
                Received::Close(close) => break close,
                other => panic!("stalled reader: unexpected {other:?}"),
            }
        };
        assert_eq!(close.map(|(code, _)| code), Some(1008));
        assert!(
            got <= full,
            "got {got} messages, only {full} were queued for it"
        );
        stalled.expect_eof();
        assert_eq!(server.stats().slow_consumers.load(Ordering::Relaxed), 1);
        let stats = api.get("/api/stats");
        assert_eq!(stats["slow_consumer_drops"], 1, "{stats}");
        // Readers hung up when done; the stalled reader's connection goes too.
        drop(stalled);
        assert!(wait_until(Duration::from_secs(5), || server.stats().open() == 0));
        eprintln!("stalled reader dropped after {full} of {seq} messages; it read {got} of them");
    });
}

/// Upgrades as `user` and sends a `subscribe` for every channel in `channels`, all in one
/// write (a client library resubscribing after a reconnect); returns the client past its
/// `$user` frame.
fn subscribe_burst(addr: SocketAddr, user: &str, channels: &[String]) -> RawClient {
    let mut stream = connect(addr);
    let mut bytes = upgrade_request(&format!("/ws?user={user}")).into_bytes();
    for channel in channels {
        let op = json!({"op": "subscribe", "channel": channel}).to_string();
        write_masked_frame(&mut bytes, true, OpCode::Text, op.as_bytes(), [3, 1, 4, 1]);
    }
    stream
        .write_all(&bytes)
        .expect("send upgrade and subscribes");
    let (response, rest) = read_response_head(&mut stream);
    assert_eq!(response.status, 101, "{user}: {response:?}");
    let mut client = RawClient::from_parts(stream, rest);
    client.expect_user_subscribed();
    client
}

/// Issue 12, item 9: 40 subscribes in one write are all answered, in the order sent, and
/// every one took: a publish to each reaches the client. Up to `--max-subscriptions` (128) in
/// one burst likewise; past it, 429 naming the channel, and the rest are unaffected.
#[test]
fn a_burst_of_subscribes_is_answered_in_order() {
    with_timeout(Duration::from_secs(60), || {
        let server = TestServer::start(Config {
            max_subscriptions: 128,
            ..two_workers()
        });
        let mut api = ApiClient::connect(server.api_addr());
        let channels: Vec<String> = (0..40).map(|i| format!("burst-{i}")).collect();
        let mut client = subscribe_burst(server.addr(), "burst", &channels);
        for channel in &channels {
            let answer = client.recv_json();
            assert_eq!(answer["op"], "subscribed", "{channel}: {answer}");
            assert_eq!(answer["channel"], channel.as_str(), "{answer}");
        }
        for channel in &channels {
            let body = json!({"channel": channel, "data": channel}).to_string();
            assert_eq!(
                api.post("/api/publish?wait=delivered", &body)["delivered"],
                1,
                "{channel}"
            );
            let got = client.recv_json();
            assert_eq!(got["channel"], channel.as_str(), "{got}");
        }

        // 130 at once: 128 answered in order, the two past the limit refused by name.
        let channels: Vec<String> = (0..130).map(|i| format!("max-{i}")).collect();
        let mut client = subscribe_burst(server.addr(), "max", &channels);
        let mut answered = Vec::new();
        let mut refused = Vec::new();
        while answered.len() + refused.len() < channels.len() {
            let frame = client.recv_json();
            match frame["op"].as_str() {
                Some("subscribed") => {
                    answered.push(frame["channel"].as_str().unwrap_or_default().to_owned())
                }
                Some("error") => {
                    assert_eq!(frame["code"], 429, "{frame}");
                    refused.push(frame["channel"].as_str().unwrap_or_default().to_owned());
                }
                _ => panic!("unexpected {frame}"),
            }
        }
        assert_eq!(answered, channels[..128]);
        assert_eq!(refused, channels[128..]);
        let stats = api.get("/api/stats");
        assert_eq!(stats["subscriptions"], 40 + 128, "{stats}");
    });
}
