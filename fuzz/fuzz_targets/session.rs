//! A whole connection through `session::Session`, the way the worker drives it: arbitrary
//! bytes as the request head and then the frame stream, cut into reads, with deadlines firing
//! in between. The session must never panic, never consume past its input, never leave more
//! than a header or a control frame over between reads, write only whole server frames once
//! upgraded, stop producing events and frames once closing, and ask for FIN at most once.
//!
//! Input layout: byte 0 seeds the read sizes and where timeouts fire; if byte 1 is odd a valid
//! upgrade request is put in front of the rest (so the frame path is reached at once);
//! the rest is the stream.

#![no_main]

use edgepush::protocol::deflate::Inflater;
use edgepush::protocol::frame::{FrameHeader, OpCode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use edgepush::protocol::handshake::HandshakeConfig;
use edgepush::protocol::message::{DecoderConfig, Role};
use edgepush::session::{Endpoint, Event, Head, Session, SessionConfig, State, Timeout, Transmit};
use edgepush::tick::Tick;
use libfuzzer_sys::fuzz_target;

const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[derive(Default)]
struct Wire {
    bytes: Vec<u8>,
}

impl Transmit for Wire {
    fn write(&mut self, f: &mut dyn FnMut(&mut Vec<u8>)) {
        f(&mut self.bytes);
    }
    fn pong(&mut self, payload: &[u8]) {
        assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
        edgepush::protocol::frame::write_frame(&mut self.bytes, OpCode::Pong, payload);
    }
}

/// Every byte written after the upgrade must parse as whole server frames.
fn check_frames(bytes: &[u8]) {
    let mut pos = 0;
    while pos < bytes.len() {
        let (header, len) = FrameHeader::parse(&bytes[pos..])
            .ok()
            .flatten()
            .expect("the server writes whole frames");
        assert!(header.mask.is_none(), "server frames are not masked");
        pos += len + header.payload_len as usize;
        assert!(pos <= bytes.len(), "a frame runs past what was written");
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let mut seed = u32::from(data[0]).wrapping_mul(2_654_435_761) | 1;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    let mut stream = Vec::new();
    if data[1] & 1 == 1 {
        stream.extend_from_slice(UPGRADE);
    }
    stream.extend_from_slice(&data[2..]);
    let config = SessionConfig {
        handshake: HandshakeConfig::default(),
        decoder: DecoderConfig {
            role: Role::Server,
            max_message_size: 1000,
        },
        handshake_ticks: 100,
        ping_ticks: 300,
        pong_ticks: 100,
        close_ticks: 50,
    };
    let mut now = Tick(u64::from(u32::MAX) - 200); // cross the short-tick wrap
    let mut session = Session::new(now, &config);
    let mut deadline = session
        .poll_timeout(now)
        .expect("a new session has a deadline");
    let mut wire = Wire::default();
    let mut inflater = Inflater::new();
    let mut stash: Vec<u8> = Vec::new();
    let mut fins = 0;
    let mut pos = 0;
    while pos < stream.len() {
        let len = (next() as usize % 64 + 1).min(stream.len() - pos);
        let mut buf = std::mem::take(&mut stash);
        buf.extend_from_slice(&stream[pos..pos + len]);
        pos += len;
        now = now + u64::from(next() % 40);
        let mut used = 0;
        if session.state() == State::Handshake {
            match session.handle_head(&buf, now, &config, &mut wire) {
                Head::Partial => {}
                Head::Refused(e) => {
                    assert!(wire.bytes.starts_with(b"HTTP/1.1 "));
                    assert!(e.status() >= 400);
                    used = buf.len();
                }
                Head::Request(request) => {
                    let head_len = request.head_len;
                    assert!(head_len > 0 && head_len <= buf.len());
                    match request.upgrade {
                        Some(upgrade) => {
                            session.accept(&upgrade, Endpoint::Echo, now, &config, &mut wire);
                            assert!(wire.bytes.starts_with(b"HTTP/1.1 101 "));
                            assert!(session.is_open());
                            used = head_len;
                        }
                        None => {
                            session.answered(now, &config);
                            used = buf.len();
                        }
                    }
                    wire.bytes.clear();
                }
            }
        }
        if session.is_open() {
            loop {
                let was_open = session.is_open();
                let available = buf.len() - used;
                let step =
                    session.handle_frames(&mut buf[used..], now, &config, &mut wire, &mut inflater);
                assert!(step.consumed <= available, "consumed past the input");
                used += step.consumed;
                match step.event {
                    None if step.consumed == 0 => break,
                    None => {}
                    Some(Event::Message { data, .. }) => {
                        assert!(was_open && data.len() <= 1000)
                    }
                    Some(Event::CloseReceived { .. }) | Some(Event::ProtocolError(_)) => {
                        assert!(was_open && session.is_closing())
                    }
                }
                if used == buf.len() {
                    break;
                }
            }
            check_frames(&wire.bytes);
        }
        if session.is_closing() {
            used = buf.len();
            let before = wire.bytes.len();
            let mut rest = stream[pos..].to_vec();
            let step = session.handle_frames(&mut rest, now, &config, &mut wire, &mut inflater);
            assert!(
                step.event.is_none() && wire.bytes.len() == before,
                "quiet once closing"
            );
        }
        stash = buf[used..].to_vec();
        assert!(
            stash.len() <= 16 * 1024 + MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD,
            "leftover of {} bytes",
            stash.len()
        );
        if session.poll_fin() {
            fins += 1;
        }
        if let Some(tick) = session.poll_timeout(now) {
            deadline = tick;
        }
        if next() % 4 == 0 && session.is_deadline(deadline) && deadline >= now {
            now = deadline;
            match session.handle_timeout(now, Tick::NEVER, &config, &mut wire) {
                Timeout::Drop(_) => return,
                Timeout::AppDeadline => panic!("no app deadline was set"),
                Timeout::Pinged | Timeout::Rearmed => {}
            }
            if let Some(tick) = session.poll_timeout(now) {
                deadline = tick;
            }
        }
    }
    // The peer half-closes: whatever state, the session ends up closing and says so.
    session.handle_eof(now, &config);
    assert!(session.peer_ended() && session.is_closing());
    if session.poll_fin() {
        fins += 1;
    }
    assert!(fins <= 1, "FIN asked for {fins} times");
});
