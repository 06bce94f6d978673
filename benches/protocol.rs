//! Protocol-core benchmarks: masking, frame headers, the opening handshake and message
//! assembly with UTF-8 validation. Run with `cargo bench --bench protocol`; each group is
//! kept short (1 s warm-up, 2 s measurement, 30 samples) so the whole run takes about a minute.
//!
//! The decoder unmasks in place, so its benches re-copy the masked input into a reused working
//! buffer on every iteration; `copy_only` measures that copy alone so it can be subtracted.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use edgepush::protocol::deflate::{Deflater, Inflater};
use edgepush::protocol::frame::{self, FrameHeader, OpCode, MAX_HEADER_LEN};
use edgepush::protocol::handshake::{self, HandshakeConfig};
use edgepush::protocol::mask;
use edgepush::protocol::message::{Decoder, DecoderConfig, Event, Role};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

fn bench_unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask");
    for size in [64usize, 1024, 64 * 1024] {
        let src: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("copy", size), &src, |b, src| {
            let mut dst = vec![0u8; src.len()];
            b.iter(|| {
                dst.copy_from_slice(black_box(src));
                black_box(&mut dst);
            })
        });
        group.bench_with_input(BenchmarkId::new("apply_mask", size), &src, |b, src| {
            let mut buf = src.clone();
            b.iter(|| {
                mask::apply_mask(black_box(&mut buf), black_box(KEY), black_box(0));
            })
        });
        group.bench_with_input(BenchmarkId::new("apply_mask_off1", size), &src, |b, src| {
            // An unaligned start within the payload (a frame split across reads).
            let mut buf = src.clone();
            b.iter(|| {
                mask::apply_mask(black_box(&mut buf[1..]), black_box(KEY), black_box(1));
            })
        });
        group.bench_with_input(
            BenchmarkId::new("apply_mask_bytewise", size),
            &src,
            |b, src| {
                let mut buf = src.clone();
                b.iter(|| {
                    mask::apply_mask_bytewise(black_box(&mut buf), black_box(KEY), black_box(0));
                })
            },
        );
    }
    group.finish();
}

/// Masked client headers in the three length forms: 7-bit, 16-bit and 64-bit.
fn header_cases() -> [(&'static str, u64); 3] {
    [("len7", 100), ("len16", 1000), ("len64", 70_000)]
}

fn bench_frame_header(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_header");
    for (name, len) in header_cases() {
        let header = FrameHeader {
            fin: true,
            rsv: 0,
            opcode: OpCode::Binary,
            mask: Some(KEY),
            payload_len: len,
        };
        let mut bytes = [0u8; MAX_HEADER_LEN];
        let n = header.encode(&mut bytes);
        let wire = bytes[..n].to_vec();
        group.bench_with_input(BenchmarkId::new("parse", name), &wire, |b, wire| {
            b.iter(|| FrameHeader::parse(black_box(wire)))
        });
        group.bench_with_input(BenchmarkId::new("encode", name), &header, |b, header| {
            let mut out = [0u8; MAX_HEADER_LEN];
            b.iter(|| black_box(header).encode(black_box(&mut out)))
        });
    }
    // Whole unmasked server frames into a reused Vec (header + payload copy).
    for (name, len) in [("len7", 100usize), ("len16", 1000), ("len64", 70_000)] {
        let payload = vec![b'x'; len];
        let mut out = Vec::with_capacity(len + MAX_HEADER_LEN);
        group.bench_with_input(
            BenchmarkId::new("write_frame", name),
            &payload,
            |b, payload| {
                b.iter(|| {
                    out.clear();
                    frame::write_frame(black_box(&mut out), OpCode::Text, black_box(payload));
                })
            },
        );
    }
    group.finish();
}

/// A Chrome-like upgrade request: about 600 bytes, 13 headers.
const BROWSER_REQUEST: &str = concat!(
    "GET /ws?channel=news&client=web HTTP/1.1\r\n",
    "Host: push.example.com\r\n",
    "Connection: Upgrade\r\n",
    "Pragma: no-cache\r\n",
    "Cache-Control: no-cache\r\n",
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) ",
    "Chrome/124.0.0.0 Safari/537.36\r\n",
    "Upgrade: websocket\r\n",
    "Origin: https://app.example.com\r\n",
    "Sec-WebSocket-Version: 13\r\n",
    "Accept-Encoding: gzip, deflate, br, zstd\r\n",
    "Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n",
    "Cookie: session=3f9a1c2b7d8e4f5a; theme=dark\r\n",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    "\r\n",
);

fn bench_handshake(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    let req = BROWSER_REQUEST.as_bytes();
    let config = HandshakeConfig::default();
    let parsed = handshake::parse_request(req, &config)
        .expect("valid request")
        .expect("complete request");
    let upgrade = parsed.upgrade.expect("an upgrade");
    assert_eq!(parsed.head_len, req.len());

    group.bench_function("parse_request", |b| {
        b.iter(|| handshake::parse_request(black_box(req), black_box(&config)).is_ok())
    });
    group.bench_function("accept_key", |b| {
        b.iter(|| handshake::accept_key(black_box(upgrade.key.as_bytes())))
    });
    let mut out = Vec::with_capacity(256);
    group.bench_function("write_accept_response", |b| {
        b.iter(|| {
            out.clear();
            handshake::write_accept_response(black_box(&mut out), black_box(&upgrade));
        })
    });
    group.bench_function("parse_and_respond", |b| {
        b.iter(|| {
            out.clear();
            if let Ok(Some(request)) = handshake::parse_request(black_box(req), &config) {
                if let Some(up) = request.upgrade {
                    handshake::write_accept_response(&mut out, &up);
                }
            }
            black_box(&out);
        })
    });
    group.finish();
}

/// Valid UTF-8 text of exactly `len` bytes: mostly ASCII JSON with some multi-byte chars.
fn text_of_len(len: usize) -> Vec<u8> {
    let pattern = "{\"type\":\"quote\",\"sym\":\"EUR\",\"px\":1.0842,\"note\":\"κόσμε – café ✓\"} ";
    let mut s = String::with_capacity(len);
    'outer: loop {
        for ch in pattern.chars() {
            if s.len() + ch.len_utf8() > len {
                break 'outer;
            }
            s.push(ch);
        }
    }
    while s.len() < len {
        s.push(' ');
    }
    s.into_bytes()
}

/// Drives the decoder over `buf` as a server driver would; returns (events, payload bytes).
fn drive(decoder: &mut Decoder, buf: &mut [u8], config: &DecoderConfig) -> (usize, usize) {
    let mut pos = 0;
    let mut events = 0;
    let mut bytes = 0;
    loop {
        match decoder.decode(&mut buf[pos..], config) {
            Err(e) => panic!("decode error in bench: {e}"),
            Ok(step) => {
                pos += step.consumed;
                match step.event {
                    Some(Event::Message { data, .. }) => {
                        events += 1;
                        bytes += black_box(data).len();
                    }
                    Some(_) => events += 1,
                    None if step.consumed == 0 => break,
                    None => {}
                }
            }
        }
    }
    assert_eq!(pos, buf.len());
    (events, bytes)
}

fn bench_decode(c: &mut Criterion) {
    let config = DecoderConfig {
        role: Role::Server,
        max_message_size: 1 << 20,
    };
    let big = text_of_len(16 * 1024);
    let whole = {
        let mut out = Vec::new();
        frame::write_masked_frame(&mut out, true, OpCode::Text, &big, KEY);
        out
    };
    let fragments = {
        let mut out = Vec::new();
        for (i, part) in big.chunks(1024).enumerate() {
            let op = if i == 0 {
                OpCode::Text
            } else {
                OpCode::Continuation
            };
            frame::write_masked_frame(&mut out, i == 15, op, part, KEY);
        }
        out
    };
    let small = text_of_len(64);
    let smalls = {
        let mut out = Vec::new();
        for _ in 0..100 {
            frame::write_masked_frame(&mut out, true, OpCode::Text, &small, KEY);
        }
        out
    };
    let cases: [(&str, &Vec<u8>, usize, u64); 3] = [
        ("16k_whole", &whole, 1, big.len() as u64),
        ("16k_in_16_fragments", &fragments, 1, big.len() as u64),
        ("100x64b_frames", &smalls, 100, 100 * small.len() as u64),
    ];

    let mut group = c.benchmark_group("decode");
    for (name, input, expect_events, payload_bytes) in cases {
        // Sanity: the stream decodes to the expected messages.
        let mut check = input.clone();
        let (events, bytes) = drive(&mut Decoder::new(), &mut check, &config);
        assert_eq!((events, bytes as u64), (expect_events, payload_bytes));

        // Throughput counts wire bytes (headers + masked payload).
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_with_input(BenchmarkId::new("copy_only", name), input, |b, input| {
            let mut work = vec![0u8; input.len()];
            b.iter(|| {
                work.copy_from_slice(black_box(input));
                black_box(&mut work);
            })
        });
        group.bench_with_input(
            BenchmarkId::new("copy_then_decode", name),
            input,
            |b, input| {
                let mut work = vec![0u8; input.len()];
                let mut decoder = Decoder::new();
                b.iter(|| {
                    work.copy_from_slice(black_box(input));
                    drive(&mut decoder, &mut work, &config)
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("decode_batched", name),
            input,
            |b, input| {
                let mut decoder = Decoder::new();
                b.iter_batched_ref(
                    || input.clone(),
                    |work| drive(&mut decoder, work, &config),
                    BatchSize::SmallInput,
                )
            },
        );
    }
    group.finish();
}

/// permessage-deflate on a 1 KiB JSON push, as the worker does it: compress with a reset
/// compressor (`server_no_context_takeover`), inflate with a reset inflater.
fn bench_deflate(c: &mut Criterion) {
    let mut json = String::new();
    let mut i = 0;
    while json.len() < 1024 {
        json.push_str(&format!(
            r#"{{"op":"message","channel":"news","seq":{i},"data":{{"price":{},"sym":"ACME{}"}}}},"#,
            1000 + i * 7,
            i % 13
        ));
        i += 1;
    }
    let json = &json.as_bytes()[..1024];
    let mut group = c.benchmark_group("deflate");
    group.throughput(Throughput::Bytes(json.len() as u64));
    let mut deflater = Deflater::new();
    group.bench_function("compress 1 KiB JSON", |b| {
        b.iter(|| deflater.compress(black_box(json)).map(<[u8]>::len))
    });
    let compressed = deflater.compress(json).expect("JSON shrinks").to_vec();
    let mut inflater = Inflater::new();
    group.bench_function("inflate 1 KiB JSON", |b| {
        b.iter(|| {
            inflater
                .inflate(black_box(&compressed), 1 << 20)
                .map(<[u8]>::len)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_unmask, bench_frame_header, bench_handshake, bench_decode, bench_deflate
}
criterion_main!(benches);
