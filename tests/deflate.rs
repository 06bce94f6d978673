//! permessage-deflate (RFC 7692) end to end, with a raw client (tungstenite 0.30 has no
//! deflate feature): negotiation and `--no-compression`, compressed echo, a compression bomb
//! closed with 1009, and fan-out sending the compressed twin to deflate subscribers and the
//! plain frame to the others.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::{connect, guarded, read_response_head, upgrade_request_with, ApiClient, TestServer};
use edgepush::config::Config;
use edgepush::protocol::deflate::{Deflater, Inflater};
use edgepush::protocol::frame::{write_masked_frame, FrameHeader, OpCode};

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits";
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// A client that speaks frames by hand, RSV1 included.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    inflater: Inflater,
}

/// A frame from the server: RSV1, opcode, payload (inflated when RSV1 was set).
#[derive(Debug, PartialEq, Eq)]
struct Frame {
    compressed: bool,
    opcode: OpCode,
    data: Vec<u8>,
}

impl Client {
    /// Upgrades to `target` with `headers`; returns the client and the server's
    /// `Sec-WebSocket-Extensions` answer.
    fn open(addr: SocketAddr, target: &str, headers: &[&str]) -> (Client, Option<String>) {
        let mut stream = connect(addr);
        stream
            .write_all(upgrade_request_with(target, headers).as_bytes())
            .expect("send upgrade");
        let (response, rest) = read_response_head(&mut stream);
        assert_eq!(response.status, 101);
        let answer = response
            .header("sec-websocket-extensions")
            .map(str::to_owned);
        let client = Client {
            stream,
            buf: rest,
            inflater: Inflater::new(),
        };
        (client, answer)
    }

    /// Sends one masked frame, with RSV1 when `rsv1`.
    fn send(&mut self, opcode: OpCode, rsv1: bool, payload: &[u8]) {
        let mut out = Vec::new();
        write_masked_frame(&mut out, true, opcode, payload, [7, 1, 9, 3]);
        if rsv1 {
            out[0] |= 0x40;
        }
        self.stream.write_all(&out).expect("send frame");
    }

    /// The next frame, pings skipped.
    fn recv(&mut self) -> Frame {
        loop {
            if let Some((header, len)) = FrameHeader::parse(&self.buf).expect("a valid header") {
                let end = len + header.payload_len as usize;
                if self.buf.len() >= end {
                    assert!(header.fin, "the server sends whole messages");
                    let payload = self.buf[len..end].to_vec();
                    self.buf.drain(..end);
                    if header.opcode == OpCode::Ping {
                        continue;
                    }
                    let compressed = header.rsv & 0b100 != 0;
                    assert_eq!(header.rsv & 0b011, 0);
                    let data = if compressed {
                        self.inflater
                            .inflate(&payload, 64 << 20)
                            .expect("valid deflate")
                            .to_vec()
                    } else {
                        payload
                    };
                    return Frame {
                        compressed,
                        opcode: header.opcode,
                        data,
                    };
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk).expect("read from the server");
            assert!(n > 0, "EOF before a frame");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame must be Close with `code`.
    fn expect_close(&mut self, code: u16) {
        let frame = self.recv();
        assert_eq!(frame.opcode, OpCode::Close, "{frame:?}");
        assert_eq!(frame.data[..2], code.to_be_bytes(), "{frame:?}");
    }
}

fn json(len: usize) -> String {
    let mut s = String::from(r#"{"op":"message","items":["#);
    let mut i = 0;
    while s.len() < len {
        s.push_str(&format!(r#"{{"id":{i},"name":"item {i}","ok":true}},"#));
        i += 1;
    }
    s.push_str("{}]}");
    s
}

#[test]
fn echo_negotiates_and_compresses_both_ways() {
    guarded(|| {
        let server = TestServer::start(common::config());
        let (mut client, answer) = Client::open(server.addr(), "/echo", &[OFFER]);
        assert_eq!(answer.as_deref(), Some(ANSWER));

        let text = json(1024);
        let compressed = Deflater::new()
            .compress(text.as_bytes())
            .expect("shrinks")
            .to_vec();
        client.send(OpCode::Text, true, &compressed);
        let back = client.recv();
        assert_eq!((back.compressed, back.opcode), (true, OpCode::Text));
        assert_eq!(back.data, text.as_bytes());

        // A plain message on a deflate connection is fine too; small answers go plain.
        client.send(OpCode::Text, false, b"hello");
        let back = client.recv();
        assert_eq!(
            back,
            Frame {
                compressed: false,
                opcode: OpCode::Text,
                data: b"hello".to_vec()
            }
        );
        // Binary, compressed, plain in: compressed out (at least --compression-min-size).
        let binary = vec![42u8; 4096];
        client.send(OpCode::Binary, false, &binary);
        let back = client.recv();
        assert_eq!((back.compressed, back.data.len()), (true, 4096));
        assert_eq!(back.data, binary);
    });
}

#[test]
fn a_window_limit_is_echoed_and_honoured() {
    guarded(|| {
        let server = TestServer::start(common::config());
        let offer = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=9";
        let (mut client, answer) = Client::open(server.addr(), "/echo", &[offer]);
        assert_eq!(
            answer.as_deref(),
            Some(&*format!("{ANSWER}; server_max_window_bits=9"))
        );
        let small = json(300);
        let large = json(2000);
        client.send(OpCode::Text, false, small.as_bytes());
        assert!(client.recv().compressed);
        client.send(OpCode::Text, false, large.as_bytes());
        let back = client.recv();
        assert!(back.compressed, "compressed with a 512-byte window");
        assert_eq!(back.data, large.as_bytes());
    });
}

#[test]
fn no_compression_declines_and_rsv1_is_then_a_protocol_error() {
    guarded(|| {
        let server = TestServer::start(Config {
            compression: false,
            ..common::config()
        });
        let (mut client, answer) = Client::open(server.addr(), "/echo", &[OFFER]);
        assert_eq!(answer, None);
        let text = json(1024);
        client.send(OpCode::Text, false, text.as_bytes());
        assert!(!client.recv().compressed);
        client.send(
            OpCode::Text,
            true,
            &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
        );
        client.expect_close(1002);
    });
}

#[test]
fn a_malformed_offer_is_declined_not_refused() {
    guarded(|| {
        let server = TestServer::start(common::config());
        let bad = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=99";
        let (_client, answer) = Client::open(server.addr(), "/echo", &[bad]);
        assert_eq!(answer, None);
    });
}

/// A deflate stream of `zeros_258` back-references of 258 zero bytes each (fixed Huffman,
/// RFC 1951 §3.2.6), sync-flushed with the tail removed as RFC 7692 §7.2.1 says: about 160
/// times smaller than what it inflates to.
fn bomb(zeros_258: usize) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u32,
        n: u32,
    }
    impl Bits {
        fn put(&mut self, value: u32, bits: u32) {
            self.acc |= value << self.n;
            self.n += bits;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        /// A Huffman code, most significant bit first.
        fn code(&mut self, code: u32, bits: u32) {
            for i in (0..bits).rev() {
                self.put((code >> i) & 1, 1);
            }
        }
    }
    let mut w = Bits {
        out: Vec::new(),
        acc: 0,
        n: 0,
    };
    w.put(0, 1); // BFINAL = 0
    w.put(1, 2); // BTYPE = 01, fixed Huffman
    w.code(0x30, 8); // literal 0
    for _ in 0..zeros_258 {
        w.code(0xc5, 8); // length code 285: 258 bytes
        w.code(0, 5); // distance code 0: 1 back
    }
    w.code(0, 7); // end of block
    w.put(0, 3); // an empty stored block (sync flush)...
    if w.n > 0 {
        w.put(0, 8 - w.n); // ...byte-aligned; its 00 00 ff ff is left to the receiver.
    }
    w.out
}

#[test]
fn a_compression_bomb_is_closed_with_1009_without_inflating_it() {
    guarded(|| {
        const LIMIT: usize = 1 << 20;
        let server = TestServer::start(Config {
            max_message_size: LIMIT,
            ..common::config()
        });
        // About 800 KiB that inflate to 123 MiB.
        let bomb = bomb(500_000);
        assert!(bomb.len() < LIMIT, "{}", bomb.len());
        let mut check = Inflater::new();
        assert!(
            check.inflate(&bomb[..4096], 1 << 20).is_ok(),
            "valid deflate"
        );

        let (mut client, answer) = Client::open(server.addr(), "/echo", &[OFFER]);
        assert_eq!(answer.as_deref(), Some(ANSWER));
        // (How much memory the server needs for it is measured by hand against the release
        // binary, not here: this process runs other tests beside it.)
        client.send(OpCode::Binary, true, &bomb);
        client.expect_close(1009);
        // The worker goes on serving.
        let (mut other, _) = Client::open(server.addr(), "/echo", &[OFFER]);
        other.send(OpCode::Text, false, b"still here");
        assert_eq!(other.recv().data, b"still here");
    });
}

#[test]
fn fan_out_sends_the_compressed_twin_to_deflate_subscribers_only() {
    guarded(|| {
        let server = TestServer::start(common::config());
        let (mut deflate, answer) = Client::open(server.addr(), "/ws?user=a", &[OFFER]);
        assert_eq!(answer.as_deref(), Some(ANSWER));
        let (mut plain, answer) = Client::open(server.addr(), "/ws?user=b", &[]);
        assert_eq!(answer, None);
        for client in [&mut deflate, &mut plain] {
            let first = client.recv();
            assert!(String::from_utf8_lossy(&first.data).contains("$user"));
            client.send(
                OpCode::Text,
                false,
                br#"{"op":"subscribe","channel":"news"}"#,
            );
            let answer = client.recv();
            assert!(
                String::from_utf8_lossy(&answer.data).contains("subscribed"),
                "{answer:?}"
            );
        }
        let mut api = ApiClient::connect(server.api_addr());
        let data = json(1024);
        let published = api.post(
            "/api/publish?wait=delivered",
            &format!(r#"{{"channel":"news","data":{data}}}"#),
        );
        assert_eq!(published["delivered"], 2, "{published}");
        let small = api.post(
            "/api/publish?wait=delivered",
            r#"{"channel":"news","data":1}"#,
        );
        assert_eq!(small["delivered"], 2, "{small}");

        let to_deflate = deflate.recv();
        let to_plain = plain.recv();
        assert!(to_deflate.compressed && !to_plain.compressed);
        assert_eq!(to_deflate.data, to_plain.data, "the same message");
        let text = String::from_utf8(to_plain.data).expect("text");
        assert!(
            text.contains(r#""channel":"news""#) && text.contains(&data),
            "{text}"
        );
        // Under --compression-min-size: plain for both.
        assert!(!deflate.recv().compressed);
        assert!(!plain.recv().compressed);
    });
}
