//! Clients that send but never read: the outbound backlog is bounded, an overflowing one is
//! closed with 1008 and counted, a ping flood costs at most one pending pong, and other clients
//! on the same worker never notice.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{guarded, RawClient, Received, TestServer};
use edgepush::config::Config;
use edgepush::protocol::frame::OpCode;

const MESSAGE: usize = 60 * 1024;

fn server() -> TestServer {
    TestServer::start(Config {
        max_message_size: 64 * 1024,
        max_backlog: 256 * 1024,
        ..common::config()
    })
}

/// A client whose socket has a tiny receive buffer, so that the server's queue fills fast.
fn small_window_client(addr: SocketAddr) -> RawClient {
    RawClient::upgrade(common::small_window_stream(addr), "/echo")
}

/// A well-behaved client doing round trips until `stop`; returns how many it did.
fn bystander(addr: SocketAddr, stop: Arc<AtomicBool>) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let mut client = RawClient::connect(addr, "/echo");
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            client.round_trip(&format!("bystander {n}"));
            n += 1;
            thread::sleep(Duration::from_millis(2));
        }
        client.send_close(1000);
        client.expect_close_code(1000);
        n
    })
}

fn message(i: usize) -> Vec<u8> {
    let mut data = vec![(i % 251) as u8; MESSAGE];
    data[..8].copy_from_slice(&(i as u64).to_be_bytes());
    data
}

#[test]
fn reader_that_never_reads_is_closed_with_1008() {
    guarded(|| {
        const COUNT: usize = 300; // ~18 MB, far beyond socket buffers + the 256 KiB backlog
        let server = server();
        let stop = Arc::new(AtomicBool::new(false));
        let other = bystander(server.addr(), Arc::clone(&stop));

        let mut slow = small_window_client(server.addr());
        let mut sent = 0;
        for i in 0..COUNT {
            let frame = slow.frame(true, OpCode::Binary, &message(i));
            if slow.send_raw(&frame).is_err() {
                break; // the server may already have dropped us
            }
            sent += 1;
        }
        assert!(
            common::wait_until(Duration::from_secs(5), || server
                .stats()
                .slow_consumers
                .load(Ordering::Relaxed)
                >= 1),
            "never counted as a slow consumer after {sent} messages"
        );

        // Now read: a prefix of the echoes, in order and whole, then Close 1008 (or a reset if
        // the server had to drop the socket first).
        let mut echoed = 0;
        let ending = loop {
            match slow.recv() {
                Received::Binary(data) => {
                    assert_eq!(data, message(echoed), "echo {echoed}");
                    echoed += 1;
                }
                other => break other,
            }
        };
        match ending {
            Received::Close(Some((code, _))) => {
                assert_eq!(code, 1008);
                slow.expect_eof();
            }
            Received::Reset => {}
            other => panic!("after {echoed} echoes: {other:?}"),
        }
        assert!(echoed < sent, "all {sent} messages were echoed");
        assert_eq!(server.stats().slow_consumers.load(Ordering::Relaxed), 1);

        // The bystander kept going, and a newcomer is fine.
        stop.store(true, Ordering::Relaxed);
        let round_trips = other.join().expect("bystander");
        assert!(round_trips > 0);
        common::assert_server_healthy(server.addr());
    });
}

#[test]
fn many_small_echoes_unread_are_closed_with_1008() {
    guarded(|| {
        let server = server();
        let mut slow = small_window_client(server.addr());
        // 10-byte messages (12-byte echoes), sent until the server gives up on us: the echoes
        // pile up in the kernel's buffers first (up to a few MB), then in the backlog.
        let mut batch = Vec::new();
        let mut i = 0u32;
        while server.stats().slow_consumers.load(Ordering::Relaxed) == 0 {
            assert!(i < 4_000_000, "not a slow consumer after {i} unread echoes");
            for _ in 0..5000 {
                batch.extend(slow.frame(true, OpCode::Text, format!("{i:010}").as_bytes()));
                i += 1;
            }
            if slow.send_raw(&batch).is_err() {
                break;
            }
            batch.clear();
        }
        let mut next = 0u32;
        let ending = loop {
            match slow.recv() {
                Received::Text(t) => {
                    assert_eq!(t, format!("{next:010}"));
                    next += 1;
                }
                other => break other,
            }
        };
        assert!(
            matches!(ending, Received::Close(Some((1008, _))) | Received::Reset),
            "after {next} echoes: {ending:?}"
        );
        assert_eq!(server.stats().slow_consumers.load(Ordering::Relaxed), 1);
        common::assert_server_healthy(server.addr());
    });
}

#[test]
fn ping_flood_costs_at_most_one_pending_pong() {
    guarded(|| {
        const PINGS: u32 = 100_000;
        let server = server();
        let stop = Arc::new(AtomicBool::new(false));
        let other = bystander(server.addr(), Arc::clone(&stop));

        let mut flood = small_window_client(server.addr());
        let payload = |i: u32| {
            let mut p = [b'.'; 125];
            p[..4].copy_from_slice(&i.to_be_bytes());
            p
        };
        let mut batch = Vec::with_capacity(1 << 20);
        for i in 0..PINGS {
            batch.extend(flood.frame(true, OpCode::Ping, &payload(i)));
            if batch.len() >= 1 << 20 {
                flood.send_raw(&batch).expect("the server keeps reading");
                batch.clear();
            }
        }
        flood.send_raw(&batch).expect("the server keeps reading");
        flood.send_text("done");

        // Pongs come in ping order, some skipped (only the latest waits while the socket is
        // full), and the very last ping is answered before the echo that follows it.
        let mut pongs = 0u32;
        let mut last: Option<u32> = None;
        let ending = loop {
            match flood.recv() {
                Received::Pong(p) => {
                    assert_eq!(p.len(), 125);
                    let i = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
                    assert_eq!(&p[..], &payload(i)[..]);
                    if let Some(prev) = last {
                        assert!(i > prev, "pong {i} after pong {prev}");
                    }
                    last = Some(i);
                    pongs += 1;
                }
                other => break other,
            }
        };
        match ending {
            Received::Text(t) => {
                assert_eq!(t, "done");
                assert_eq!(last, Some(PINGS - 1), "the latest ping went unanswered");
                assert!(
                    pongs < PINGS,
                    "{pongs} pongs: every one was queued, none coalesced"
                );
                assert_eq!(server.stats().slow_consumers.load(Ordering::Relaxed), 0);
                flood.round_trip("still open");
            }
            // Also acceptable: closed as a slow consumer, and counted.
            Received::Close(Some((1008, _))) | Received::Reset => {
                assert!(server.stats().slow_consumers.load(Ordering::Relaxed) >= 1);
            }
            other => panic!("after {pongs} pongs: {other:?}"),
        }

        stop.store(true, Ordering::Relaxed);
        assert!(other.join().expect("bystander") > 0);
        common::assert_server_healthy(server.addr());
    });
}

#[test]
fn slow_consumers_on_two_workers_do_not_stall_others() {
    guarded(|| {
        let server = TestServer::start(Config {
            threads: 2,
            max_message_size: 64 * 1024,
            max_backlog: 256 * 1024,
            ..common::config()
        });
        let addr = server.addr();
        let stop = Arc::new(AtomicBool::new(false));
        let bystanders: Vec<_> = (0..4).map(|_| bystander(addr, Arc::clone(&stop))).collect();
        let closed = Arc::new(AtomicUsize::new(0));
        let slow: Vec<_> = (0..4)
            .map(|_| {
                let closed = Arc::clone(&closed);
                thread::spawn(move || {
                    let mut c = small_window_client(addr);
                    for i in 0..200 {
                        let frame = c.frame(true, OpCode::Binary, &message(i));
                        if c.stream.write_all(&frame).is_err() {
                            break;
                        }
                    }
                    loop {
                        match c.recv() {
                            Received::Binary(_) => {}
                            Received::Close(Some((1008, _))) | Received::Reset => {
                                closed.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            other => panic!("{other:?}"),
                        }
                    }
                })
            })
            .collect();
        for t in slow {
            t.join().expect("slow client");
        }
        assert_eq!(closed.load(Ordering::Relaxed), 4);
        assert_eq!(server.stats().slow_consumers.load(Ordering::Relaxed), 4);
        stop.store(true, Ordering::Relaxed);
        for b in bystanders {
            assert!(b.join().expect("bystander") > 0);
        }
    });
}

#[test]
fn reader_slower_than_sender_is_closed_once_with_a_valid_stream() {
    // A backlog smaller than the outbound queue's 64 KiB chunks (allowed: it is 2x the message
    // limit), and a client that does read, only slower than it sends: the socket keeps taking
    // a little at every turn while the queue overflows.
    guarded(|| {
        const ROUNDS: u64 = 8;
        let server = TestServer::start(Config {
            max_message_size: 16 * 1024,
            max_backlog: 32 * 1024,
            ..common::config()
        });
        let payload = vec![7u8; 8000];
        for round in 1..=ROUNDS {
            let mut client = RawClient::connect(server.addr(), "/echo");
            let mut reader = client.reader();
            let expected = payload.clone();
            let reading = thread::spawn(move || {
                let mut echoes = 0;
                loop {
                    match reader.recv() {
                        Received::Binary(data) => {
                            assert!(data == expected, "echo {echoes} differs");
                            echoes += 1;
                        }
                        Received::Close(Some((1008, _))) => {
                            reader.expect_eof();
                            return echoes;
                        }
                        Received::Reset => return echoes,
                        other => panic!("after {echoes} echoes: {other:?}"),
                    }
                    thread::sleep(Duration::from_micros(500));
                }
            });
            for _ in 0..3000 {
                if client.send_frame(true, OpCode::Binary, &payload).is_err() {
                    break;
                }
            }
            reading.join().expect("reader");
            let counted = server.stats().slow_consumers.load(Ordering::Relaxed);
            assert_eq!(
                counted,
                round,
                "round {round}: one connection counted {} times as a slow consumer",
                counted - (round - 1)
            );
        }
        common::assert_server_healthy(server.addr());
    });
}
