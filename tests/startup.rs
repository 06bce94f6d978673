//! Starting the binary when an address it needs is taken: exit status 1 and one line on
//! stderr that names the listener that failed and its address (an operator reading it must
//! not look for the wrong port).

use std::net::TcpListener;
use std::process::Command;

/// Runs the binary with `args` (it exits at once here); its exit code and stderr.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edgepush"))
        .args(args)
        .args(["--log", "error"])
        .output()
        .expect("run edgepush");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
            format!("edgepush: cannot listen on {addr}: "),
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
