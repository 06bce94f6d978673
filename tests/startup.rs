//! Starting the binary when an address it needs is taken: exit status 1 and one line on
//! stderr that names the listener that failed and its address (an operator reading it must
//! not look for the wrong port).

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Runs the binary with `args` (it should exit at once); its exit code (`None` if it was
/// still running after 10 s, when it is killed) and stderr.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgepush"))
        .args(args)
        .args(["--log", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run edgepush");
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (code, stderr)
}

#[test]
fn a_taken_address_is_named_with_its_listener() {
    // Held without SO_REUSEPORT, so the binary's reuseport bind fails too.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let cases = [
        (
            ["--listen", "127.0.0.1:0", "--api-listen", addr.as_str()],
            format!("edgepush: cannot listen on {addr} (--api-listen): "),
        ),
        (
            ["--listen", addr.as_str(), "--api-listen", "127.0.0.1:0"],
            format!("edgepush: cannot listen on {addr} (--listen): "),
        ),
    ];
    for (args, expected) in cases {
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.trim_end().lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {stderr}");
        assert!(lines[0].starts_with(&expected), "{args:?}: {stderr}");
        assert!(lines[0].contains("in use"), "{args:?}: {stderr}");
    }
}

/// `SO_REUSEPORT` lets processes share a port: a second edgepush on a port where one already
/// listens (with `SO_REUSEPORT`, as edgepush's own listeners) must still refuse to start rather
/// than take a share of its connections.
#[test]
fn a_port_another_reuseport_listener_holds_is_refused() {
    use socket2::{Domain, Socket, Type};
    let other = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    other.set_reuse_address(true).unwrap();
    other.set_reuse_port(true).unwrap();
    other
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    other.listen(16).unwrap();
    let addr = other.local_addr().unwrap().as_socket().unwrap().to_string();
    let (code, stderr) = run(&["--listen", &addr, "--api-listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!("edgepush: cannot listen on {addr} (--listen): ")),
        "{stderr}"
    );
}
