//! Graceful drain of the real binary: SIGTERM with 1,000 clients connected. Every client gets
//! Close 1001, the closes are spread over `--drain-duration` (not all at once), `/healthz`
//! answers 503 meanwhile, and the process exits 0 once the clients have closed.

mod common;

use common::ServerProcess;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};

const CLIENTS: usize = 1000;
const SPREAD: Duration = Duration::from_secs(2);

/// Starts the binary on free ports and returns it with its public address (from its log).
fn start_server() -> (ServerProcess, SocketAddr) {
    ServerProcess::start(&[
        "--threads",
        "2",
        "--drain-duration",
        "2s",
        "--drain-timeout",
        "5s",
    ])
}

fn upgrade(addr: SocketAddr) -> TcpStream {
    let mut stream = common::connect(addr);
    stream
        .write_all(common::upgrade_request("/echo").as_bytes())
        .expect("send upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("read 101");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

#[test]
fn sigterm_drains_every_client_with_1001_spread_over_the_window_and_exits_0() {
    common::with_timeout(Duration::from_secs(40), || {
        let (mut server, addr) = start_server();
        let mut poll = Poll::new().expect("poll");
        let mut clients = Vec::with_capacity(CLIENTS);
        for i in 0..CLIENTS {
            let stream = upgrade(addr);
            stream.set_nonblocking(true).expect("nonblocking");
            let mut stream = MioStream::from_std(stream);
            poll.registry()
                .register(&mut stream, Token(i), Interest::READABLE)
                .expect("register");
            clients.push(stream);
        }

        let pid = server.pid() as libc::pid_t;
        let sent_at = Instant::now();
        // SAFETY: kill(2) with a PID we started and still own (the child hasn't been reaped:
        // `ServerProcess` only waits on it at the end), and a valid signal number.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);

        // While draining, health checks say 503 so load balancers move on.
        std::thread::sleep(Duration::from_millis(100));
        let health = common::http_exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(health.status, 503);
        assert!(health.header("Retry-After").is_some());

        let mut closed_at: Vec<Option<(Duration, u16)>> = vec![None; CLIENTS];
        let mut events = Events::with_capacity(1024);
        let deadline = sent_at + Duration::from_secs(15);
        while closed_at.iter().any(Option::is_none) && Instant::now() < deadline {
            poll.poll(&mut events, Some(Duration::from_millis(50)))
                .expect("poll");
            for event in &events {
                let i = event.token().0;
                if closed_at[i].is_some() {
                    continue;
                }
                let mut buf = [0u8; 256];
                let n = match clients[i].read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => panic!("client {i}: {e}"),
                };
                // The only frame on an idle echo connection is the server's Close.
                assert!(n >= 4 && buf[0] == 0x88, "client {i}: {:?}", &buf[..n]);
                let code = u16::from_be_bytes([buf[2], buf[3]]);
                closed_at[i] = Some((sent_at.elapsed(), code));
                // Answer like a client should: a masked Close echoing the code, then leave.
                let mut reply = vec![0x88, 0x82, 1, 2, 3, 4];
                reply.extend_from_slice(&[buf[2] ^ 1, buf[3] ^ 2]);
                let _ = clients[i].write_all(&reply);
                let _ = poll.registry().deregister(&mut clients[i]);
            }
        }

        let mut times: Vec<Duration> = Vec::new();
        for (i, closed) in closed_at.iter().enumerate() {
            let (at, code) = closed.unwrap_or_else(|| panic!("client {i} got no Close"));
            assert_eq!(code, 1001, "client {i}");
            times.push(at);
        }
        times.sort();
        let (first, median, last) = (times[0], times[CLIENTS / 2], times[CLIENTS - 1]);
        // Spread over the 2 s window: not all at once, not much beyond it.
        assert!(
            first < Duration::from_millis(500),
            "first close at {first:?}"
        );
        assert!(
            median > Duration::from_millis(600) && median < Duration::from_millis(1600),
            "median close at {median:?}"
        );
        assert!(
            last > SPREAD - Duration::from_millis(400) && last < SPREAD + Duration::from_secs(1),
            "last close at {last:?}"
        );
        drop(clients);

        let mut child = server.0.take().expect("running");
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit after the drain"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(0), "exit status");
    });
}
