//! The echo endpoint, driven by an independent client (tungstenite over a std `TcpStream`).

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;

use rand::{Rng, SeedableRng};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Bytes, Message, WebSocket};

use common::{connect, guarded, TestServer};
use edgepush::config::Config;

type Ws = WebSocket<TcpStream>;

/// Connects a tungstenite client to `/echo` with no size limits of its own.
fn client(addr: SocketAddr) -> Ws {
    let stream = connect(addr);
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let (ws, response) =
        tungstenite::client::client_with_config(format!("ws://{addr}/echo"), stream, Some(config))
            .expect("handshake");
    assert_eq!(response.status().as_u16(), 101);
    ws
}

/// The next data message (tungstenite answers pings by itself).
fn read_data(ws: &mut Ws) -> Message {
    loop {
        match ws.read().expect("read") {
            Message::Ping(_) | Message::Pong(_) => {}
            other => return other,
        }
    }
}

fn echo_server() -> TestServer {
    TestServer::start(common::config())
}

#[test]
fn text_is_echoed() {
    guarded(|| {
        let server = echo_server();
        let mut ws = client(server.addr());
        for text in ["hello", "ünïcødé ✓ 𝄞", "pingpong", "Ping"] {
            ws.send(Message::text(text)).unwrap();
            assert_eq!(read_data(&mut ws), Message::text(text));
        }
    });
}

#[test]
fn binary_is_echoed() {
    guarded(|| {
        let server = echo_server();
        let mut ws = client(server.addr());
        // Sizes around the length-encoding boundaries (125/126, 65535/65536).
        for len in [1usize, 125, 126, 127, 65535, 65536, 200_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            ws.send(Message::binary(data.clone())).unwrap();
            assert_eq!(read_data(&mut ws), Message::binary(data), "len {len}");
        }
    });
}

#[test]
fn empty_messages_are_echoed() {
    guarded(|| {
        let server = echo_server();
        let mut ws = client(server.addr());
        ws.send(Message::text("")).unwrap();
        assert_eq!(read_data(&mut ws), Message::text(""));
        ws.send(Message::binary(Vec::new())).unwrap();
        assert_eq!(read_data(&mut ws), Message::binary(Vec::new()));
    });
}

#[test]
fn fragmented_messages_are_reassembled() {
    guarded(|| {
        let server = echo_server();
        let mut ws = client(server.addr());
        // Text in three fragments, with a multi-byte character split across two of them and a
        // ping between fragments (control frames may be interleaved, §5.4).
        let text = "héllo wörld";
        let bytes = text.as_bytes();
        let (a, rest) = bytes.split_at(2); // "h" + first byte of "é"
        let (b, c) = rest.split_at(5);
        ws.write(Message::Frame(Frame::message(
            Bytes::copy_from_slice(a),
            OpCode::Data(Data::Text),
            false,
        )))
        .unwrap();
        ws.write(Message::Frame(Frame::message(
            Bytes::copy_from_slice(b),
            OpCode::Data(Data::Continue),
            false,
        )))
        .unwrap();
        ws.write(Message::Ping(Bytes::from_static(b"mid"))).unwrap();
        ws.write(Message::Frame(Frame::message(
            Bytes::copy_from_slice(c),
            OpCode::Data(Data::Continue),
            true,
        )))
        .unwrap();
        ws.flush().unwrap();
        assert_eq!(
            ws.read().unwrap(),
            Message::Pong(Bytes::from_static(b"mid"))
        );
        assert_eq!(ws.read().unwrap(), Message::text(text));

        // Binary, with an empty fragment in the middle.
        let parts: [&[u8]; 3] = [b"\x00\x01\x02", b"", b"\xff\xfe"];
        for (i, part) in parts.iter().enumerate() {
            let opcode = if i == 0 {
                OpCode::Data(Data::Binary)
            } else {
                OpCode::Data(Data::Continue)
            };
            ws.write(Message::Frame(Frame::message(
                Bytes::copy_from_slice(part),
                opcode,
                i == parts.len() - 1,
            )))
            .unwrap();
        }
        ws.flush().unwrap();
        assert_eq!(
            read_data(&mut ws),
            Message::binary(b"\x00\x01\x02\xff\xfe".to_vec())
        );

        // "ping" in fragments still gets "pong": the rule applies after reassembly.
        ws.write(Message::Frame(Frame::message(
            Bytes::from_static(b"pi"),
            OpCode::Data(Data::Text),
            false,
        )))
        .unwrap();
        ws.write(Message::Frame(Frame::message(
            Bytes::from_static(b"ng"),
            OpCode::Data(Data::Continue),
            true,
        )))
        .unwrap();
        ws.flush().unwrap();
        assert_eq!(read_data(&mut ws), Message::text("pong"));
    });
}

#[test]
fn sixteen_mib_message_is_echoed() {
    guarded(|| {
        let server = TestServer::start(Config {
            max_message_size: 16 << 20,
            max_backlog: 64 << 20,
            ..common::config()
        });
        let mut ws = client(server.addr());
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        let mut data = vec![0u8; 16 << 20];
        rng.fill(&mut data[..]);
        ws.send(Message::binary(data.clone())).unwrap();
        match read_data(&mut ws) {
            Message::Binary(got) => {
                assert_eq!(got.len(), data.len());
                assert!(got[..] == data[..], "16 MiB echo differs");
            }
            other => panic!("expected binary, got {other:?}"),
        }
        // And a 16 MiB text message, in 4 fragments.
        let text = "abcdefgh".repeat(2 << 20);
        let quarter = text.len() / 4;
        for i in 0..4 {
            let opcode = if i == 0 {
                OpCode::Data(Data::Text)
            } else {
                OpCode::Data(Data::Continue)
            };
            ws.write(Message::Frame(Frame::message(
                Bytes::copy_from_slice(&text.as_bytes()[i * quarter..(i + 1) * quarter]),
                opcode,
                i == 3,
            )))
            .unwrap();
        }
        ws.flush().unwrap();
        match read_data(&mut ws) {
            Message::Text(got) => assert!(got.as_str() == text, "16 MiB text echo differs"),
            other => panic!("expected text, got {other:?}"),
        }
    });
}

#[test]
fn text_ping_gets_text_pong() {
    guarded(|| {
        let server = echo_server();
        let mut ws = client(server.addr());
        ws.send(Message::text("ping")).unwrap();
        assert_eq!(read_data(&mut ws), Message::text("pong"));
        // Only exactly "ping": binary "ping" is echoed as is.
        ws.send(Message::binary(b"ping".to_vec())).unwrap();
        assert_eq!(read_data(&mut ws), Message::binary(b"ping".to_vec()));
        ws.send(Message::text("ping ")).unwrap();
        assert_eq!(read_data(&mut ws), Message::text("ping "));
    });
}

#[test]
fn ping_frame_gets_pong_with_same_payload() {
    guarded(|| {
        let server = echo_server();
        let mut ws = client(server.addr());
        for payload in [&b""[..], b"hello", &[0xAB; 125][..]] {
            ws.send(Message::Ping(Bytes::copy_from_slice(payload)))
                .unwrap();
            assert_eq!(
                ws.read().unwrap(),
                Message::Pong(Bytes::copy_from_slice(payload))
            );
        }
        // An unsolicited pong is ignored: the next echo is the next thing we get.
        ws.send(Message::Pong(Bytes::from_static(b"unsolicited")))
            .unwrap();
        ws.send(Message::text("after")).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text("after"));
    });
}

#[test]
fn close_handshake_echoes_code_then_server_closes_tcp() {
    guarded(|| {
        let server = echo_server();
        let mut ws = client(server.addr());
        ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .unwrap();
        let reply = match ws.read() {
            Ok(Message::Close(frame)) => frame,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => panic!("read: {e}"),
        };
        let reply = reply.expect("a close code in the reply");
        assert_eq!(reply.code, CloseCode::Normal);
        // The server closes TCP first (§7.1.1): our read sees EOF.
        let mut byte = [0u8; 1];
        assert_eq!(ws.get_mut().read(&mut byte).expect("read after close"), 0);
        // Once we close ours too, the server forgets the connection at once.
        drop(ws);
        assert!(common::wait_until(
            std::time::Duration::from_secs(2),
            || server.stats().open() == 0
        ));
    });
}

#[test]
fn many_concurrent_clients_are_all_echoed() {
    guarded(|| {
        const CLIENTS: usize = 50;
        const MESSAGES: usize = 100;
        let server = TestServer::start(Config {
            threads: 2,
            ..common::config()
        });
        let addr = server.addr();
        let barrier = Arc::new(Barrier::new(CLIENTS));
        let threads: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let barrier = Arc::clone(&barrier);
                thread::spawn(move || {
                    let mut ws = client(addr);
                    barrier.wait();
                    let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
                    for m in 0..MESSAGES {
                        let msg = if m % 2 == 0 {
                            Message::text(format!("client {c} message {m}"))
                        } else {
                            let len = rng.random_range(0..4096);
                            let mut data = vec![0u8; len];
                            rng.fill(&mut data[..]);
                            Message::binary(data)
                        };
                        ws.send(msg.clone()).unwrap();
                        assert_eq!(read_data(&mut ws), msg, "client {c} message {m}");
                    }
                    ws.close(None).unwrap();
                    loop {
                        match ws.read() {
                            Ok(Message::Close(_)) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("client thread");
        }
        assert!(
            server
                .stats()
                .upgrades
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 50
        );
        assert!(
            server
                .stats()
                .messages_in
                .load(std::sync::atomic::Ordering::Relaxed)
                >= (CLIENTS * MESSAGES) as u64
        );
        assert!(common::wait_until(
            std::time::Duration::from_secs(3),
            || server.stats().open() == 0
        ));
    });
}
