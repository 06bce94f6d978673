//! A permessage-deflate bomb against the real binary, its memory read from `/proc`: the server
//! closes it with 1009 and its resident memory grows by less than `--max-message-size` plus
//! 64 KiB at its peak (the issue's target), for the bomb sent as one frame and as 1 KiB
//! fragments.
//!
//! The bomb: deflate's best ratio is about 1032:1 (a 258-byte match coded in 2 bits), so a
//! message just under the 1 MiB limit inflates to about 1 GiB ("1 KiB that inflates to 1 GiB"
//! cannot exist). The server must never hold its compressed bytes nor inflate past the limit.
//!
//! How it is measured: the server is its own process (`CARGO_BIN_EXE_edgepush`, one worker),
//! so nothing of the test's own memory is counted. Before each bomb the test opens the bomb's
//! connection, resets the kernel's peak RSS (`echo 5 > /proc/PID/clear_refs`, Linux ≥ 4.0)
//! and reads `VmRSS`; after the 1009 it reads `VmHWM` (the peak since the reset) and `VmRSS`.
//! A warm-up message first makes the worker's inflater and read buffer resident, so the
//! figure is what the bomb costs, not the first compressed message's one-off allocations.
//! The peak is deterministic up to allocator page rounding (see [`MARGIN`]): no timing is
//! involved, only the order of bytes on one connection.

mod common;

use common::ServerProcess;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use edgepush::protocol::frame::{write_masked_frame, FrameHeader, OpCode};
use flate2::{Compress, Compression, FlushCompress};

const LIMIT: usize = 1 << 20;

/// Slack on top of the issue's `limit + 64 KiB`: none. The bound is asserted as stated; what
/// the bomb may cost beyond its inflated output (zlib's 32 KiB window and state are made
/// resident by the warm-up) is the decoder's few hundred bytes and page rounding.
const MARGIN: usize = 0;

/// Starts the binary with one worker and a 1 MiB message limit; returns it with its public
/// address (from its log).
fn start_server() -> (ServerProcess, SocketAddr) {
    ServerProcess::start(&["--threads", "1", "--max-message-size", &LIMIT.to_string()])
}

/// A field of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("write clear_refs");
}

/// A deflate-upgraded echo connection.
fn open(addr: SocketAddr) -> TcpStream {
    let mut stream = common::connect(addr);
    let head = common::upgrade_request_with(
        "/echo",
        &["Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"],
    );
    stream.write_all(head.as_bytes()).expect("send upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("read 101");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("permessage-deflate"), "{head}");
    stream
}

/// `data` as masked frames of at most `fragment` payload bytes, RSV1 on the first.
fn frames(opcode: OpCode, data: &[u8], fragment: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let pieces: Vec<&[u8]> = data.chunks(fragment.max(1)).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let start = out.len();
        let op = if i == 0 { opcode } else { OpCode::Continuation };
        write_masked_frame(&mut out, i + 1 == pieces.len(), op, piece, [9, 8, 7, 6]);
        if i == 0 {
            out[start] |= 0x40;
        }
    }
    out
}

/// Reads frames until a Close; returns its code (pings and data skipped).
fn read_close(stream: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    for _ in 0..100_000 {
        while let Ok(Some((header, len))) = FrameHeader::parse(&buf) {
            let end = len + header.payload_len as usize;
            if buf.len() < end {
                break;
            }
            if header.opcode == OpCode::Close {
                let code = buf.get(len..len + 2).expect("a close code");
                return u16::from_be_bytes([code[0], code[1]]);
            }
            buf.drain(..end);
        }
        let n = stream.read(&mut chunk).expect("read until the Close");
        assert!(n > 0, "EOF before a Close");
        buf.extend_from_slice(&chunk[..n]);
    }
    panic!("no Close")
}

/// Reads one whole data frame's payload (compressed or not).
fn read_frame(stream: &mut TcpStream) -> (bool, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    for _ in 0..10_000 {
        if let Ok(Some((header, len))) = FrameHeader::parse(&buf) {
            let end = len + header.payload_len as usize;
            if buf.len() >= end {
                return (header.rsv & 0b100 != 0, buf[len..end].to_vec());
            }
        }
        let n = stream.read(&mut chunk).expect("read a frame");
        assert!(n > 0, "EOF before a frame");
        buf.extend_from_slice(&chunk[..n]);
    }
    panic!("no frame")
}

/// Raw deflate of `data` at `level`, sync-flushed, the `00 00 ff ff` tail removed
/// (RFC 7692 §7.2.1).
fn deflate(data: &[u8], level: u32) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync)
        .expect("compress");
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A bomb of `mib` MiB of zeros: 1 MiB of zeros deflated at level 9 (a block ending in a sync
/// flush, byte-aligned, referring only to its own bytes) repeated `mib` times.
fn bomb(mib: usize) -> Vec<u8> {
    let mut one = deflate(&vec![0u8; 1 << 20], 9);
    one.extend_from_slice(&[0, 0, 0xff, 0xff]); // each copy keeps its sync flush
    let mut bomb = one.repeat(mib);
    bomb.truncate(bomb.len() - 4);
    bomb
}

/// What one bomb cost the server, in KiB.
#[derive(Debug)]
struct Cost {
    peak: usize,
    retained: isize,
}

/// Opens a connection, resets the peak, sends `wire` (the bomb's frames) from a second thread
/// and waits for the Close; returns the RSS growth at the peak and after.
fn send_bomb(server: &ServerProcess, addr: SocketAddr, wire: Vec<u8>) -> Cost {
    let pid = server.pid();
    let mut stream = open(addr);
    reset_peak(pid);
    let before = status_kib(pid, "VmRSS");
    let mut writer = stream.try_clone().expect("clone the stream");
    // The server stops reading the message at the limit, then reads on and discards until
    // our EOF or its close deadline: the whole bomb goes out (errors after the Close are fine).
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&wire);
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    assert_eq!(read_close(&mut stream), 1009);
    sender.join().expect("the sender");
    let peak = status_kib(pid, "VmHWM");
    let after = status_kib(pid, "VmRSS");
    Cost {
        peak: peak.saturating_sub(before),
        retained: after as isize - before as isize,
    }
}

#[test]
fn a_bomb_costs_less_than_the_limit_plus_64_kib() {
    common::with_timeout(Duration::from_secs(120), || {
        let (server, addr) = start_server();
        let bomb = bomb(1000);
        assert!(bomb.len() < LIMIT, "{} bytes", bomb.len());
        let ratio = (1000 << 20) / bomb.len();
        assert!(ratio > 1000, "deflate's best ratio: {ratio}:1");

        // Warm-up: a compressed message echoed, and the same as fragments, so the worker's
        // inflater (zlib state and window) and read buffer are resident before the baseline.
        let json = br#"{"op":"message","data":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#.repeat(400);
        let packed = deflate(&json, 1);
        let mut warm = open(addr);
        for fragment in [packed.len(), 1024] {
            warm.write_all(&frames(OpCode::Text, &packed, fragment))
                .expect("send warm-up");
            let (_, echo) = read_frame(&mut warm);
            assert!(!echo.is_empty());
        }

        let bound = (LIMIT + 64 * 1024 + MARGIN) / 1024;
        for (name, fragment) in [("one frame", bomb.len()), ("1 KiB fragments", 1024)] {
            let cost = send_bomb(&server, addr, frames(OpCode::Binary, &bomb, fragment));
            eprintln!(
                "bomb of {} bytes ({name}), limit {LIMIT}: peak RSS growth {} KiB, \
                 after the close {} KiB (bound {bound} KiB)",
                bomb.len(),
                cost.peak,
                cost.retained
            );
            assert!(cost.peak < bound, "{name}: {cost:?}");
        }
        // The worker goes on serving.
        warm.write_all(&frames(OpCode::Text, &packed, packed.len()))
            .expect("send");
        let (_, echo) = read_frame(&mut warm);
        assert!(!echo.is_empty());
    });
}
