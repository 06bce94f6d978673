//! The session in simulated time: every deadline, the close handshake both ways, and the
//! upgrade, driven by byte vectors and a `Tick` the test moves by hand.

use super::*;
use crate::protocol::close::{DISCONNECTED, GOING_AWAY, NORMAL, PROTOCOL_ERROR};
use crate::protocol::frame::{write_masked_frame, FrameHeader, OpCode};
use crate::protocol::message::Role;

const HANDSHAKE: u64 = 1000;
const PING: u64 = 3000;
const PONG: u64 = 1000;
const CLOSE: u64 = 500;

fn config() -> SessionConfig {
    SessionConfig {
        handshake: HandshakeConfig::default(),
        decoder: DecoderConfig {
            role: Role::Server,
            max_message_size: 1 << 20,
        },
        handshake_ticks: HANDSHAKE,
        ping_ticks: PING,
        pong_ticks: PONG,
        close_ticks: CLOSE,
    }
}

/// What the session transmitted, frame by frame.
#[derive(Default)]
struct Wire {
    bytes: Vec<u8>,
    pongs: Vec<Vec<u8>>,
}

impl Transmit for Wire {
    fn write(&mut self, f: &mut dyn FnMut(&mut Vec<u8>)) {
        f(&mut self.bytes);
    }
    fn pong(&mut self, payload: &[u8]) {
        self.pongs.push(payload.to_vec());
        write_frame(&mut self.bytes, OpCode::Pong, payload);
    }
}

impl Wire {
    /// The frames written so far as (opcode, payload), consuming them.
    fn frames(&mut self) -> Vec<(OpCode, Vec<u8>)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < self.bytes.len() {
            let Ok(Some((header, len))) = FrameHeader::parse(&self.bytes[pos..]) else {
                panic!("not a frame at {pos}: {:?}", &self.bytes[pos..]);
            };
            let end = pos + len + header.payload_len as usize;
            out.push((header.opcode, self.bytes[pos + len..end].to_vec()));
            pos = end;
        }
        self.bytes.clear();
        out
    }

    fn text(&mut self) -> String {
        String::from_utf8(std::mem::take(&mut self.bytes)).expect("HTTP is ASCII")
    }
}

const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn client_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_masked_frame(&mut out, true, opcode, payload, [1, 2, 3, 4]);
    out
}

fn close_payload(code: u16) -> Vec<u8> {
    code.to_be_bytes().to_vec()
}

/// A session opened at `now`, its 101 already taken off the wire.
fn open_at(now: Tick, wire: &mut Wire) -> Session {
    open_with(UPGRADE, now, wire)
}

/// A session opened at `now` by the upgrade request `upgrade`, its 101 taken off the wire.
fn open_with(upgrade: &[u8], now: Tick, wire: &mut Wire) -> Session {
    let config = config();
    let mut session = Session::new(now, &config);
    let _ = session.poll_timeout(now);
    let Head::Request(request) = session.handle_head(upgrade, now, &config, wire) else {
        panic!("the upgrade parses");
    };
    let upgrade = request.upgrade.expect("an upgrade");
    session.accept(&upgrade, Endpoint::Push, now, &config, wire);
    let text = wire.text();
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    session
}

/// Feeds `input` until it is consumed; returns the events, owned.
fn feed(session: &mut Session, input: &[u8], now: Tick, wire: &mut Wire) -> Vec<String> {
    let config = config();
    let mut buf = input.to_vec();
    let mut pos = 0;
    let mut events = Vec::new();
    let mut inflater = Inflater::new();
    loop {
        let step = session.handle_frames(&mut buf[pos..], now, &config, wire, &mut inflater);
        pos += step.consumed;
        match step.event {
            None if step.consumed == 0 => break,
            None => {}
            Some(Event::Message { kind, data }) => {
                events.push(format!("{kind:?} {}", String::from_utf8_lossy(data)))
            }
            Some(event) => events.push(format!("{event:?}")),
        }
        if pos == buf.len() {
            break;
        }
    }
    events
}

#[test]
fn the_upgrade_opens_the_session_and_starts_the_ping_deadline() {
    let config = config();
    let mut wire = Wire::default();
    let t0 = Tick(10);
    let mut session = Session::new(t0, &config);
    assert_eq!(session.state(), State::Handshake);
    assert_eq!(session.poll_timeout(t0), Some(t0 + HANDSHAKE));
    assert_eq!(session.poll_timeout(t0), None, "once per change");
    // A head cut anywhere is partial and consumes nothing.
    for cut in [0, 1, 20, UPGRADE.len() - 1] {
        assert!(matches!(
            session.handle_head(&UPGRADE[..cut], t0, &config, &mut wire),
            Head::Partial
        ));
    }
    let session = open_at(t0 + 5, &mut wire);
    assert!(session.is_open());
    assert_eq!(session.endpoint(), Endpoint::Push);
    assert!(session.extensions().is_empty());
}

#[test]
fn no_upgrade_within_the_handshake_timeout_is_dropped() {
    let config = config();
    let mut wire = Wire::default();
    let t0 = Tick(0);
    let mut session = Session::new(t0, &config);
    let due = session.poll_timeout(t0).expect("armed");
    assert!(session.is_deadline(due));
    assert_eq!(
        session.handle_timeout(due, Tick::NEVER, &config, &mut wire),
        Timeout::Drop(DropReason::Handshake)
    );
    assert!(wire.bytes.is_empty(), "dropped without a word");
}

#[test]
fn a_bad_request_is_answered_then_fin_then_the_close_deadline() {
    let config = config();
    let mut wire = Wire::default();
    let t0 = Tick(0);
    let mut session = Session::new(t0, &config);
    let _ = session.poll_timeout(t0);
    let bad = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let Head::Refused(e) = session.handle_head(bad, t0 + 1, &config, &mut wire) else {
        panic!("refused");
    };
    assert_eq!(e.status(), 426);
    assert!(wire.text().starts_with("HTTP/1.1 426 "));
    assert_eq!(
        session.state(),
        State::Closing {
            how: Closing::Http,
            fin_sent: false
        }
    );
    assert!(session.poll_fin(), "FIN once flushed");
    assert!(!session.poll_fin(), "only once");
    let due = session.poll_timeout(t0 + 1).expect("close deadline");
    assert_eq!(due, t0 + 1 + CLOSE);
    assert_eq!(
        session.handle_timeout(due, Tick::NEVER, &config, &mut wire),
        Timeout::Drop(DropReason::Close)
    );
}

#[test]
fn a_refusal_writes_its_answer_and_closes() {
    let config = config();
    let mut wire = Wire::default();
    let mut session = Session::new(Tick(0), &config);
    let Head::Request(_) = session.handle_head(UPGRADE, Tick(0), &config, &mut wire) else {
        panic!("parses");
    };
    session.refuse(&Refusal::Full, Tick(0), &config, &mut wire);
    let text = wire.text();
    assert!(text.starts_with("HTTP/1.1 503 ") && text.contains("Retry-After: 5"));
    assert!(session.is_closing());
    // Frames that follow the refused head are discarded.
    let events = feed(
        &mut session,
        &client_frame(OpCode::Text, b"hi"),
        Tick(1),
        &mut wire,
    );
    assert!(events.is_empty() && wire.bytes.is_empty());
}

#[test]
fn pings_are_answered_with_their_payload_and_messages_come_out() {
    let mut wire = Wire::default();
    let mut session = open_at(Tick(0), &mut wire);
    let mut input = client_frame(OpCode::Ping, b"abc");
    input.extend(client_frame(OpCode::Text, b"hello"));
    let events = feed(&mut session, &input, Tick(1), &mut wire);
    assert_eq!(events, ["Text hello"]);
    assert_eq!(wire.pongs, [b"abc".to_vec()]);
}

#[test]
fn a_silent_connection_is_pinged_and_dropped_without_a_pong() {
    let config = config();
    let mut wire = Wire::default();
    let t0 = Tick(100);
    let mut session = open_at(t0, &mut wire);
    let due = session.poll_timeout(t0).expect("ping deadline");
    assert_eq!(due, t0 + PING);
    assert_eq!(
        session.handle_timeout(due, Tick::NEVER, &config, &mut wire),
        Timeout::Pinged
    );
    assert_eq!(wire.frames(), [(OpCode::Ping, vec![])]);
    let pong_due = session.poll_timeout(due).expect("pong deadline");
    assert_eq!(pong_due, due + PONG);
    assert!(!session.is_deadline(due), "the ping deadline is stale now");
    assert_eq!(
        session.handle_timeout(pong_due, Tick::NEVER, &config, &mut wire),
        Timeout::Drop(DropReason::Pong)
    );
}

#[test]
fn any_frame_answers_a_ping_and_moves_the_next_one_out() {
    let config = config();
    let mut wire = Wire::default();
    let t0 = Tick(0);
    let mut session = open_at(t0, &mut wire);
    let due = session.poll_timeout(t0).expect("armed");
    assert_eq!(
        session.handle_timeout(due, Tick::NEVER, &config, &mut wire),
        Timeout::Pinged
    );
    let pong_due = session.poll_timeout(due).expect("armed");
    // Not a pong: a text message also proves the peer alive.
    let heard = due + 10;
    let events = feed(
        &mut session,
        &client_frame(OpCode::Text, b"x"),
        heard,
        &mut wire,
    );
    assert_eq!(events, ["Text x"]);
    assert_eq!(
        session.handle_timeout(pong_due, Tick::NEVER, &config, &mut wire),
        Timeout::Rearmed
    );
    assert_eq!(session.poll_timeout(pong_due), Some(heard + PING));
}

#[test]
fn the_peers_close_is_echoed_and_the_rest_discarded() {
    let config = config();
    let mut wire = Wire::default();
    let mut session = open_at(Tick(0), &mut wire);
    let _ = session.poll_timeout(Tick(0));
    let mut input = client_frame(OpCode::Close, &close_payload(NORMAL));
    input.extend(client_frame(OpCode::Text, b"after close"));
    let events = feed(&mut session, &input, Tick(7), &mut wire);
    assert_eq!(
        events,
        [format!(
            "{:?}",
            Event::CloseReceived {
                code: NORMAL,
                echoed: Some(NORMAL),
                held: None
            }
        )]
    );
    assert_eq!(wire.frames(), [(OpCode::Close, close_payload(NORMAL))]);
    assert_eq!(
        session.state(),
        State::Closing {
            how: Closing::Closed,
            fin_sent: false
        }
    );
    // Nothing more is read or sent; FIN once, then the close deadline.
    assert!(feed(
        &mut session,
        &client_frame(OpCode::Ping, b"p"),
        Tick(8),
        &mut wire
    )
    .is_empty());
    assert!(wire.bytes.is_empty() && wire.pongs.is_empty());
    assert!(session.poll_fin());
    assert!(!session.poll_fin());
    let due = session.poll_timeout(Tick(8)).expect("close deadline");
    assert_eq!(due, Tick(7 + CLOSE));
    assert_eq!(
        session.handle_timeout(due, Tick::NEVER, &config, &mut wire),
        Timeout::Drop(DropReason::Close)
    );
    assert!(
        !session.close(GOING_AWAY, "", due, &config, &mut wire),
        "no second Close"
    );
}

#[test]
fn an_empty_close_is_echoed_empty() {
    let mut wire = Wire::default();
    let mut session = open_at(Tick(0), &mut wire);
    let events = feed(
        &mut session,
        &client_frame(OpCode::Close, b""),
        Tick(1),
        &mut wire,
    );
    assert_eq!(
        events,
        [format!(
            "{:?}",
            Event::CloseReceived {
                code: close::NO_STATUS,
                echoed: Some(close::NO_STATUS),
                held: None
            }
        )]
    );
    assert_eq!(wire.frames(), [(OpCode::Close, vec![])]);
}

#[test]
fn our_close_goes_once_then_fin_and_input_is_discarded() {
    let config = config();
    let mut wire = Wire::default();
    let mut session = open_at(Tick(0), &mut wire);
    assert!(session.close(DISCONNECTED, "disconnected", Tick(5), &config, &mut wire));
    let mut expected = close_payload(DISCONNECTED);
    expected.extend_from_slice(b"disconnected");
    assert_eq!(wire.frames(), [(OpCode::Close, expected)]);
    assert_eq!(
        session.state(),
        State::Closing {
            how: Closing::CloseSent,
            fin_sent: false
        }
    );
    assert!(!session.close(NORMAL, "", Tick(6), &config, &mut wire));
    assert!(wire.bytes.is_empty());
    // The peer's answering Close (after our FIN) changes nothing.
    assert!(session.poll_fin());
    let events = feed(
        &mut session,
        &client_frame(OpCode::Close, &close_payload(DISCONNECTED)),
        Tick(7),
        &mut wire,
    );
    assert!(events.is_empty() && wire.bytes.is_empty());
    assert_eq!(session.poll_timeout(Tick(7)), Some(Tick(5 + CLOSE)));
}

#[test]
fn a_protocol_error_is_answered_with_its_close_code() {
    let config = config();
    let mut wire = Wire::default();
    let mut session = open_at(Tick(0), &mut wire);
    // Unmasked client frame: §5.1 says close with 1002.
    let mut unmasked = Vec::new();
    write_frame(&mut unmasked, OpCode::Text, b"bad");
    let events = feed(&mut session, &unmasked, Tick(3), &mut wire);
    assert_eq!(events.len(), 1);
    assert!(events[0].starts_with("ProtocolError"), "{events:?}");
    assert_eq!(
        wire.frames(),
        [(OpCode::Close, close_payload(PROTOCOL_ERROR))]
    );
    assert!(session.is_closing());
    assert_eq!(session.poll_timeout(Tick(3)), Some(Tick(3 + CLOSE)));
    assert!(!session.close(NORMAL, "", Tick(4), &config, &mut wire));
}

#[test]
fn a_token_expiry_comes_before_the_ping_and_a_refresh_moves_it() {
    let config = config();
    let mut wire = Wire::default();
    let t0 = Tick(0);
    let mut session = open_at(t0, &mut wire);
    let _ = session.poll_timeout(t0);
    let expires = t0 + 500;
    session.set_app_deadline(t0, expires, &config);
    assert_eq!(session.poll_timeout(t0), Some(expires));
    // Refreshed at 400 with a later expiry: back to the ping schedule.
    let later = t0 + 10_000;
    session.set_app_deadline(t0 + 400, later, &config);
    let due = session.poll_timeout(t0 + 400).expect("armed");
    assert_eq!(due, t0 + PING);
    assert_eq!(
        session.handle_timeout(due, later, &config, &mut wire),
        Timeout::Pinged
    );
    // At the expiry itself the driver is told, whatever else is due.
    assert_eq!(
        session.handle_timeout(later, later, &config, &mut wire),
        Timeout::AppDeadline
    );
}

#[test]
fn a_half_assembled_message_is_released_once_closing() {
    let config = config();
    let mut wire = Wire::default();
    let mut session = open_at(Tick(0), &mut wire);
    let mut first = Vec::new();
    write_masked_frame(&mut first, false, OpCode::Text, b"part", [9, 9, 9, 9]);
    assert!(feed(&mut session, &first, Tick(1), &mut wire).is_empty());
    assert!(session.close(GOING_AWAY, "", Tick(2), &config, &mut wire));
    let _ = session.poll_timeout(Tick(2));
    assert_eq!(
        std::mem::size_of_val(&session.decoder),
        std::mem::size_of::<Decoder>()
    );
    assert!(
        format!("{:?}", session.decoder).contains("None"),
        "decoder state freed: {:?}",
        session.decoder
    );
}

#[test]
fn deadlines_survive_the_short_tick_wrapping() {
    let config = config();
    let mut wire = Wire::default();
    let t0 = Tick(u64::from(u32::MAX) - 10);
    let mut session = open_at(t0, &mut wire);
    let due = session.poll_timeout(t0).expect("armed");
    assert_eq!(due, t0 + PING);
    assert!(session.is_deadline(due));
    assert_eq!(
        session.handle_timeout(due, Tick::NEVER, &config, &mut wire),
        Timeout::Pinged
    );
}

#[test]
fn the_session_stays_small() {
    let size = std::mem::size_of::<Session>();
    assert!(size <= 24, "Session is {size} bytes");
}

#[test]
fn the_upgrade_replaces_the_handshake_deadline() {
    let config = config();
    let mut wire = Wire::default();
    let t0 = Tick(0);
    let mut probe = Session::new(t0, &config);
    let handshake_due = probe.poll_timeout(t0).expect("armed");
    let mut session = open_at(t0 + 5, &mut wire);
    assert!(
        !session.is_deadline(handshake_due),
        "the handshake timer is stale once upgraded"
    );
    // Long after the handshake timeout the open connection is only ever pinged.
    let due = session.poll_timeout(t0 + 5).expect("armed");
    assert!(due > handshake_due);
    assert_eq!(
        session.handle_timeout(due, Tick::NEVER, &config, &mut wire),
        Timeout::Pinged
    );
}

#[test]
fn traffic_postpones_the_ping() {
    let config = config();
    let mut wire = Wire::default();
    let t0 = Tick(0);
    let mut session = open_at(t0, &mut wire);
    let mut due = session.poll_timeout(t0).expect("armed");
    // A message every PING/3 ticks for a while: each deadline finds the peer heard from.
    let mut last = t0;
    for i in 1..=30u64 {
        let now = t0 + i * (PING / 3);
        if now >= due {
            assert_eq!(
                session.handle_timeout(due, Tick::NEVER, &config, &mut wire),
                Timeout::Rearmed
            );
            due = session.poll_timeout(due).expect("re-armed");
            assert_eq!(due, last + PING, "a ping interval after the last frame");
        }
        assert_eq!(
            feed(
                &mut session,
                &client_frame(OpCode::Text, b"m"),
                now,
                &mut wire
            ),
            ["Text m"]
        );
        last = now;
    }
    assert!(wire.frames().is_empty(), "never pinged while busy");
    // Then silence: the ping comes one interval after the last frame.
    while due < last + PING {
        let _ = session.handle_timeout(due, Tick::NEVER, &config, &mut wire);
        due = session.poll_timeout(due).expect("re-armed");
    }
    assert_eq!(due, last + PING);
    assert_eq!(
        session.handle_timeout(due, Tick::NEVER, &config, &mut wire),
        Timeout::Pinged
    );
}

#[test]
fn eof_while_open_closes_without_a_close_frame_and_the_peer_is_done() {
    let config = config();
    let mut wire = Wire::default();
    let mut session = open_at(Tick(0), &mut wire);
    assert!(!session.peer_ended());
    session.handle_eof(Tick(10), &config);
    assert!(session.peer_ended());
    assert_eq!(
        session.state(),
        State::Closing {
            how: Closing::PeerGone,
            fin_sent: false
        }
    );
    assert!(wire.bytes.is_empty(), "no Close: the peer cannot answer it");
    assert_eq!(session.poll_timeout(Tick(10)), Some(Tick(10 + CLOSE)));
}

#[test]
fn eof_after_the_peers_close_keeps_the_close_reply_owed() {
    let config = config();
    let mut wire = Wire::default();
    let mut session = open_at(Tick(0), &mut wire);
    let _ = feed(
        &mut session,
        &client_frame(OpCode::Close, &close_payload(NORMAL)),
        Tick(1),
        &mut wire,
    );
    session.handle_eof(Tick(2), &config);
    // The state (and so the Close reply queued by the driver) is kept; only EOF is noted.
    assert_eq!(
        session.state(),
        State::Closing {
            how: Closing::Closed,
            fin_sent: false
        }
    );
    assert!(session.peer_ended());
    assert_eq!(wire.frames(), [(OpCode::Close, close_payload(NORMAL))]);
}

#[test]
fn lingering_after_an_http_answer_is_bounded_in_amount_only_for_http() {
    let config = config();
    let mut wire = Wire::default();
    let mut http = Session::new(Tick(0), &config);
    http.refuse(&Refusal::NoEndpoint, Tick(0), &config, &mut wire);
    let mut total = 0;
    while http.discard(64 * 1024) {
        total += 64 * 1024;
        assert!(total <= LINGER_MAX_BYTES, "unbounded");
    }
    assert_eq!(total, LINGER_MAX_BYTES);
    wire.bytes.clear();
    // A WebSocket closing handshake is bounded by its deadline only.
    let mut ws = open_at(Tick(0), &mut wire);
    assert!(ws.close(GOING_AWAY, "", Tick(1), &config, &mut wire));
    assert!((0..2048).all(|_| ws.discard(64 * 1024)));
}

const DEFLATE_UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10, permessage-deflate\r\n\r\n";

/// RFC 7692 §7.2.3.1: "Hello", compressed.
const HELLO: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

/// A masked client frame with RSV1 (`compressed`) as given.
fn rsv1_frame(fin: bool, opcode: OpCode, rsv1: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_masked_frame(&mut out, fin, opcode, payload, [1, 2, 3, 4]);
    if rsv1 {
        out[0] |= 0x40;
    }
    out
}

#[test]
fn deflate_is_negotiated_into_the_extension_bits() {
    let mut wire = Wire::default();
    let plain = open_with(UPGRADE, Tick(0), &mut wire);
    assert!(plain.extensions().is_empty());
    let config = config();
    let mut session = Session::new(Tick(0), &config);
    let Head::Request(request) = session.handle_head(DEFLATE_UPGRADE, Tick(0), &config, &mut wire)
    else {
        panic!("the upgrade parses");
    };
    let upgrade = request.upgrade.expect("an upgrade");
    session.accept(&upgrade, Endpoint::Echo, Tick(0), &config, &mut wire);
    let text = wire.text();
    assert!(
        text.contains(
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
             client_no_context_takeover; server_max_window_bits=10\r\n"
        ),
        "{text}"
    );
    assert!(session.extensions().deflate());
    assert_eq!(session.extensions().server_window_bits(), 10);
    assert_eq!(
        Extensions::from_upgrade(
            upgrade
                .deflate
                .map(|_| crate::protocol::deflate::Agreement {
                    server_max_window_bits: None
                })
        )
        .server_window_bits(),
        15
    );
    assert_eq!(std::mem::size_of::<Session>(), 24, "no new field");
}

#[test]
fn no_compression_declines_the_offer() {
    let mut config = config();
    config.handshake.permessage_deflate = false;
    let mut wire = Wire::default();
    let mut session = Session::new(Tick(0), &config);
    let Head::Request(request) = session.handle_head(DEFLATE_UPGRADE, Tick(0), &config, &mut wire)
    else {
        panic!("the upgrade parses");
    };
    let upgrade = request.upgrade.expect("an upgrade");
    assert_eq!(upgrade.deflate, None);
    session.accept(&upgrade, Endpoint::Echo, Tick(0), &config, &mut wire);
    assert!(!wire.text().contains("Sec-WebSocket-Extensions"));
    assert!(session.extensions().is_empty());
}

#[test]
fn compressed_messages_are_inflated() {
    let mut wire = Wire::default();
    let mut session = open_with(DEFLATE_UPGRADE, Tick(0), &mut wire);
    let mut input = rsv1_frame(true, OpCode::Text, true, &HELLO);
    // Fragmented: RSV1 on the first frame only.
    input.extend(rsv1_frame(false, OpCode::Binary, true, &HELLO[..3]));
    input.extend(rsv1_frame(true, OpCode::Ping, false, b"p"));
    input.extend(rsv1_frame(true, OpCode::Continuation, false, &HELLO[3..]));
    input.extend(rsv1_frame(true, OpCode::Text, false, b"plain"));
    assert_eq!(
        feed(&mut session, &input, Tick(1), &mut wire),
        ["Text Hello", "Binary Hello", "Text plain"]
    );
    assert!(session.is_open());
}

#[test]
fn compression_rules_and_their_close_codes() {
    use crate::protocol::close::{INVALID_PAYLOAD, TOO_BIG};
    let mut bomb_src = crate::protocol::deflate::Deflater::new();
    let bomb = bomb_src
        .compress(&[b'a'; (1 << 20) + 1])
        .expect("shrinks")
        .to_vec();
    let cases: Vec<(&str, &[u8], Vec<u8>, u16)> = vec![
        (
            "rsv1 without the extension",
            UPGRADE,
            rsv1_frame(true, OpCode::Text, true, &HELLO),
            PROTOCOL_ERROR,
        ),
        (
            "rsv1 on a continuation",
            DEFLATE_UPGRADE,
            [
                rsv1_frame(false, OpCode::Text, false, b"a"),
                rsv1_frame(true, OpCode::Continuation, true, b"b"),
            ]
            .concat(),
            PROTOCOL_ERROR,
        ),
        (
            "rsv1 on a ping",
            DEFLATE_UPGRADE,
            rsv1_frame(true, OpCode::Ping, true, b""),
            PROTOCOL_ERROR,
        ),
        (
            "rsv2",
            DEFLATE_UPGRADE,
            {
                let mut f = rsv1_frame(true, OpCode::Text, true, &HELLO);
                f[0] |= 0x20;
                f
            },
            PROTOCOL_ERROR,
        ),
        (
            "bad deflate data",
            DEFLATE_UPGRADE,
            rsv1_frame(true, OpCode::Binary, true, &[0xff, 0xff, 0xff]),
            INVALID_PAYLOAD,
        ),
        (
            "inflated text not UTF-8",
            DEFLATE_UPGRADE,
            // A stored block holding 0xff.
            rsv1_frame(
                true,
                OpCode::Text,
                true,
                &[0x00, 0x01, 0x00, 0xfe, 0xff, 0xff],
            ),
            INVALID_PAYLOAD,
        ),
        (
            "inflates past --max-message-size",
            DEFLATE_UPGRADE,
            rsv1_frame(true, OpCode::Binary, true, &bomb),
            TOO_BIG,
        ),
    ];
    for (name, upgrade, input, code) in cases {
        let mut wire = Wire::default();
        let mut session = open_with(upgrade, Tick(0), &mut wire);
        let events = feed(&mut session, &input, Tick(1), &mut wire);
        assert_eq!(events.len(), 1, "{name}: {events:?}");
        assert!(events[0].starts_with("ProtocolError"), "{name}: {events:?}");
        assert_eq!(
            wire.frames(),
            [(OpCode::Close, code.to_be_bytes().to_vec())],
            "{name}"
        );
        assert!(session.is_closing(), "{name}");
    }
}

#[test]
fn a_held_close_reply_goes_only_when_released_and_blocks_fin() {
    let config = config();
    let mut wire = Wire::default();
    let mut session = open_at(Tick(0), &mut wire);
    session.hold_close_reply(true);
    let events = feed(
        &mut session,
        &client_frame(OpCode::Close, &close_payload(NORMAL)),
        Tick(1),
        &mut wire,
    );
    assert_eq!(
        events,
        [format!(
            "{:?}",
            Event::CloseReceived {
                code: NORMAL,
                echoed: None,
                held: Some(NORMAL)
            }
        )]
    );
    assert!(wire.bytes.is_empty(), "no reply yet");
    assert!(session.reply_held() && session.may_send_data() && !session.is_open());
    assert!(!session.poll_fin(), "no FIN before our Close");
    session.handle_eof(Tick(2), &config);
    assert!(session.reply_held(), "EOF does not release it");
    assert!(session.release_close(NORMAL, &mut wire));
    assert_eq!(wire.frames(), [(OpCode::Close, close_payload(NORMAL))]);
    assert!(!session.may_send_data());
    assert!(session.poll_fin());
    assert!(!session.release_close(NORMAL, &mut wire), "once");
    // Bounded: the close deadline still runs from the peer's Close.
    assert_eq!(session.poll_timeout(Tick(2)), Some(Tick(1 + CLOSE)));
}
