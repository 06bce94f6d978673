//! Every client op on the push endpoint is answered, in the order sent, and promptly — also
//! when ops that interact (a subscribe and the unsubscribe of the same channel) arrive in one
//! write, and when they arrive right before the client's Close. (Found by trying the server as
//! a new user; a reply released by a subscribe's answer used to wait for the client's next
//! frame, or go out before answers it must follow.)

mod common;

use common::{guarded, push_client, RawClient, Received, TestServer};
use edgepush::protocol::frame::OpCode;
use serde_json::{json, Value};

fn server() -> TestServer {
    TestServer::start(common::config())
}

/// Sends `ops` (JSON values, or the text `ping`) in one write.
fn send_in_one_write(client: &mut RawClient, ops: &[Value]) {
    let mut bytes = Vec::new();
    for op in ops {
        let text = match op {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        bytes.extend(client.frame(true, OpCode::Text, text.as_bytes()));
    }
    client.send_raw(&bytes).unwrap();
}

/// The next `n` answers: JSON objects, or `"pong"` for the text pong.
fn answers(client: &mut RawClient, n: usize) -> Vec<Value> {
    (0..n)
        .map(|_| match client.recv() {
            Received::Text(t) if t == "pong" => json!("pong"),
            Received::Text(t) => serde_json::from_str(&t).expect("JSON"),
            other => panic!("expected an answer, got {other:?}"),
        })
        .collect()
}

fn sub(channel: &str) -> Value {
    json!({"op": "subscribe", "channel": channel})
}

fn unsub(channel: &str) -> Value {
    json!({"op": "unsubscribe", "channel": channel})
}

fn op_and_channel(answer: &Value) -> String {
    match answer {
        Value::String(s) => s.clone(),
        other => format!(
            "{} {}",
            other["op"].as_str().unwrap_or("?"),
            other["channel"]
        ),
    }
}

#[test]
fn subscribe_then_unsubscribe_in_one_write_are_both_answered_in_order() {
    guarded(|| {
        let server = server();
        let cases: Vec<(Vec<Value>, Vec<&str>)> = vec![
            (
                vec![sub("k"), unsub("k"), json!("ping")],
                vec!["subscribed \"k\"", "unsubscribed \"k\"", "pong"],
            ),
            (
                vec![sub("k"), unsub("k"), sub("z")],
                vec!["subscribed \"k\"", "unsubscribed \"k\"", "subscribed \"z\""],
            ),
            (
                vec![sub("k"), sub("m"), unsub("k")],
                vec!["subscribed \"k\"", "subscribed \"m\"", "unsubscribed \"k\""],
            ),
            (
                vec![sub("k"), unsub("k"), json!({"op": "nope"})],
                vec!["subscribed \"k\"", "unsubscribed \"k\"", "error null"],
            ),
        ];
        for (i, (ops, want)) in cases.into_iter().enumerate() {
            let mut client = push_client(server.addr(), &format!("u{i}"));
            send_in_one_write(&mut client, &ops);
            // No further frame from us: everything must come without it.
            let got: Vec<String> = answers(&mut client, want.len())
                .iter()
                .map(op_and_channel)
                .collect();
            assert_eq!(got, want, "case {i}");
            // And nothing else is pending.
            client.send_text("ping");
            assert_eq!(client.recv(), Received::Text("pong".into()), "case {i}");
        }
    });
}

#[test]
fn ops_sent_with_the_close_are_answered_before_the_close_reply() {
    guarded(|| {
        let server = server();
        let mut client = RawClient::connect(server.addr(), "/ws?user=closer");
        client.expect_user_subscribed();
        let mut bytes = client.frame(true, OpCode::Text, b"ping");
        bytes.extend(client.frame(true, OpCode::Close, &1000u16.to_be_bytes()));
        client.send_raw(&bytes).unwrap();
        assert_eq!(client.recv(), Received::Text("pong".into()));
        assert_eq!(client.recv(), Received::Close(Some((1000, String::new()))));
        client.expect_eof();
    });
}

#[test]
fn a_subscribe_unsubscribe_storm_is_bounded_and_answered() {
    guarded(|| {
        let server = TestServer::start(edgepush::config::Config {
            max_subscriptions: 8,
            ..common::config()
        });
        let mut client = push_client(server.addr(), "storm");
        let mut ops = Vec::new();
        for _ in 0..200 {
            ops.push(sub("s"));
            ops.push(unsub("s"));
        }
        send_in_one_write(&mut client, &ops);
        let got = answers(&mut client, ops.len());
        // Each op got exactly one answer, in order; the queue is bounded, so some subscribes
        // are refused with 429 naming the channel, never silently dropped.
        for (i, answer) in got.iter().enumerate() {
            let want_unsub = i % 2 == 1;
            if want_unsub {
                assert_eq!(answer["op"], "unsubscribed", "{i}: {answer}");
            } else {
                assert!(
                    answer["op"] == "subscribed"
                        || (answer["op"] == "error" && answer["code"] == 429),
                    "{i}: {answer}"
                );
                assert_eq!(answer["channel"], "s", "{i}: {answer}");
            }
        }
        client.send_text("ping");
        assert_eq!(client.recv(), Received::Text("pong".into()));
    });
}

/// The client's Close in the same write as ops whose answers come from the hub (a subscribe,
/// its `$user` join): our Close reply waits for them, so every op is still answered first.
#[test]
fn a_close_in_the_same_write_waits_for_the_answers_owed() {
    guarded(|| {
        let server = server();
        let mut client = push_client(server.addr(), "owed");
        let mut bytes = client.frame(true, OpCode::Text, sub("k").to_string().as_bytes());
        bytes.extend(client.frame(true, OpCode::Text, b"ping"));
        bytes.extend(client.frame(true, OpCode::Close, &1000u16.to_be_bytes()));
        client.send_raw(&bytes).unwrap();
        client.shutdown_write();
        let got: Vec<String> = answers(&mut client, 2).iter().map(op_and_channel).collect();
        assert_eq!(got, ["subscribed \"k\"", "pong"]);
        assert_eq!(client.recv(), Received::Close(Some((1000, String::new()))));
        client.expect_eof();
        assert!(
            common::wait_until(std::time::Duration::from_secs(2), || server.stats().open()
                == 0),
            "the first connection is closed once its peer's EOF came and all was written"
        );

        // The upgrade, a subscribe, a ping and the Close, all in one write.
        let mut stream = common::connect(server.addr());
        let mut framer = RawClient::from_parts(stream.try_clone().unwrap(), Vec::new());
        let mut bytes = common::upgrade_request("/ws?user=hasty").into_bytes();
        bytes.extend(framer.frame(true, OpCode::Text, sub("q").to_string().as_bytes()));
        bytes.extend(framer.frame(true, OpCode::Text, b"ping"));
        bytes.extend(framer.frame(true, OpCode::Close, &1000u16.to_be_bytes()));
        std::io::Write::write_all(&mut stream, &bytes).unwrap();
        let (response, rest) = common::read_response_head(&mut stream);
        assert_eq!(response.status, 101);
        let mut client = RawClient::from_parts(stream, rest);
        assert_eq!(client.expect_user_subscribed()["channel"], "$user");
        let got: Vec<String> = answers(&mut client, 2).iter().map(op_and_channel).collect();
        assert_eq!(got, ["subscribed \"q\"", "pong"]);
        assert_eq!(client.recv(), Received::Close(Some((1000, String::new()))));
        client.expect_eof();
        drop(client);
        drop(framer); // its clone of the socket, too: then our FIN goes out
        assert!(common::wait_until(
            std::time::Duration::from_secs(2),
            || server.stats().open() == 0
        ));
    });
}
