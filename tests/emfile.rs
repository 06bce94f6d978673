//! Out of file descriptors: the worker pauses accepting instead of spinning on a listener that
//! stays readable, and recovers once descriptors are free again.
//!
//! Its own test binary (so its own process) with one test: it lowers this process's
//! `RLIMIT_NOFILE`.

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use common::{upgrade_request, wait_until, with_timeout, RawClient, TestServer};
use socket2::{Domain, Protocol, Socket, Type};

/// Client sockets made before the limit is lowered (their descriptors already exist).
const CLIENTS: usize = 24;
/// Descriptors left free under the lowered limit: what the server can still accept.
const FREE: usize = 6;

fn open_fds() -> Vec<libc::rlim_t> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn set_soft_nofile(soft: libc::rlim_t) -> libc::rlim_t {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write only the struct passed by pointer.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        let old = limit.rlim_cur;
        limit.rlim_cur = soft;
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit),
            0,
            "setrlimit: {}",
            io::Error::last_os_error()
        );
        old
    }
}

/// User plus system CPU time of this whole process.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[test]
fn out_of_descriptors_pauses_accepting_without_spinning_and_recovers() {
    with_timeout(Duration::from_secs(30), || {
        // Started before the limit drops: the server's connection ceiling is figured from the
        // limit at start (limit − 64), and it is the accept path under EMFILE we test here.
        let server = TestServer::start(common::config());
        let addr = server.addr();

        // Client descriptors first, so that under the lowered limit only the server's
        // accepts run out.
        let sockets: Vec<Socket> = (0..CLIENTS)
            .map(|_| Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap())
            .collect();
        // The limit bounds descriptor numbers, and new ones take the lowest free number: put it
        // just past the FREE lowest free numbers (inherited descriptors may sit far above).
        let open = open_fds();
        let limit = (0..)
            .filter(|fd| !open.contains(fd))
            .nth(FREE)
            .expect("a free number");
        let old_limit = set_soft_nofile(limit);

        // Every connect completes in the kernel's backlog; the server can take only a few.
        let mut streams: Vec<TcpStream> = sockets
            .into_iter()
            .map(|s| {
                s.connect_timeout(&addr.into(), Duration::from_secs(5))
                    .expect("connect (the kernel completes it without accept)");
                let stream: TcpStream = s.into();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                stream
                    .set_write_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                stream
            })
            .collect();
        assert!(
            wait_until(Duration::from_secs(2), || server
                .stats()
                .accept_pauses
                .load(Ordering::Relaxed)
                >= 1),
            "no accept pause with {CLIENTS} connections and {FREE} free descriptors"
        );

        // Those accepted upgrade; the others get no answer while the server is out of
        // descriptors.
        let mut upgraded = 0;
        let mut stalled = 0;
        for stream in &mut streams {
            stream
                .write_all(upgrade_request("/echo").as_bytes())
                .unwrap();
        }
        thread::sleep(Duration::from_millis(500));
        for stream in &mut streams {
            stream.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 512];
            match stream.read(&mut buf) {
                Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 101 ") => upgraded += 1,
                Ok(n) => panic!("unexpected answer {:?}", String::from_utf8_lossy(&buf[..n])),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => stalled += 1,
                Err(e) => panic!("read: {e}"),
            }
        }
        assert!(upgraded >= 1, "nothing was accepted at all");
        assert!(
            stalled >= 1,
            "all {CLIENTS} were served: the limit did not bite"
        );

        // At the limit the server must sleep, not spin: measure this process's CPU time.
        let pauses_before = server.stats().accept_pauses.load(Ordering::Relaxed);
        let cpu_before = cpu_time();
        let wall = Instant::now();
        thread::sleep(Duration::from_secs(1));
        let cpu = cpu_time() - cpu_before;
        let wall = wall.elapsed();
        let pauses = server.stats().accept_pauses.load(Ordering::Relaxed) - pauses_before;
        assert!(
            cpu < Duration::from_millis(250),
            "{cpu:?} of CPU in {wall:?} at the descriptor limit: a busy loop"
        );
        // It keeps retrying (every 100 ms), but no faster than that.
        assert!(
            (2..=30).contains(&pauses),
            "{pauses} accept pauses in {wall:?}"
        );

        // Free the descriptors: a new client upgrades promptly.
        drop(streams);
        let start = Instant::now();
        let mut client = loop {
            let stream = common::connect(addr);
            stream
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut probe = stream.try_clone().unwrap();
            probe
                .write_all(upgrade_request("/echo").as_bytes())
                .unwrap();
            let mut buf = [0u8; 512];
            match probe.read(&mut buf) {
                Ok(n) if buf[..n].starts_with(b"HTTP/1.1 101 ") => {
                    let end = buf[..n]
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .expect("whole 101 head in one read")
                        + 4;
                    stream.set_read_timeout(Some(common::READ_TIMEOUT)).unwrap();
                    break RawClient::from_parts(stream, buf[end..n].to_vec());
                }
                other => assert!(
                    start.elapsed() < Duration::from_secs(2),
                    "no upgrade {:?} after the descriptors were freed: {other:?}",
                    start.elapsed()
                ),
            }
        };
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "upgrade took {:?}",
            start.elapsed()
        );
        client.round_trip("back in business");
        set_soft_nofile(old_limit);
    });
}
