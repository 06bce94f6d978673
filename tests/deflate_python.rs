//! permessage-deflate (RFC 7692) with a real client: Python `websockets` with its default
//! compression runs `tests/python/deflate_client.py` against a live server — /echo (a 2 KiB
//! JSON echoed) and /ws (a published 1 KiB JSON received), each with the extension
//! negotiated and the server's frames compressed.
//!
//! The interpreter is `$EDGEPUSH_PYTHON` (CI points it at a venv with websockets), else
//! `python3`. Without the `websockets` module the test is skipped, loudly, unless `CI` is set:
//! then it fails.

mod common;

use std::process::{Command, Stdio};

use common::{guarded, TestServer};
use edgepush::config::Config;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/python/deflate_client.py"
);

fn python() -> String {
    std::env::var("EDGEPUSH_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".to_owned())
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Whether `python` can import websockets' asyncio client; skips (returns false) or, under
/// CI, fails.
fn websockets_available(python: &str) -> bool {
    let ok = Command::new(python)
        .args(["-c", "import websockets.asyncio.client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !in_ci(),
            "CI is set but `{python} -c 'import websockets.asyncio.client'` fails: \
             .ci/run installs websockets into target/ci-venv and sets EDGEPUSH_PYTHON"
        );
        eprintln!(
            "SKIPPED deflate_python: {python} cannot import websockets (>= 13) \
             (pip install websockets, or set EDGEPUSH_PYTHON)"
        );
    }
    ok
}

#[test]
fn python_websockets_negotiates_deflate_on_echo_and_push() {
    let python = python();
    if !websockets_available(&python) {
        return;
    }
    guarded(move || {
        let server = TestServer::start(Config {
            threads: 2,
            ..Config::for_tests()
        });
        let output = Command::new(&python)
            .arg(SCRIPT)
            .arg("--ws")
            .arg(format!("ws://{}", server.addr()))
            .arg("--api")
            .arg(format!("http://{}", server.api_addr()))
            .output()
            .unwrap_or_else(|e| panic!("run {python} {SCRIPT}: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "deflate_client.py failed ({}):\n{stderr}{stdout}",
            output.status
        );
        assert_eq!(stdout.matches("ok - ").count(), 4, "{stdout}");
        print!("{stdout}");
    });
}

/// The script must be able to fail: against a server with compression off it says the
/// extension was not negotiated.
#[test]
fn python_client_fails_without_deflate() {
    let python = python();
    if !websockets_available(&python) {
        return;
    }
    guarded(move || {
        let server = TestServer::start(Config {
            compression: false,
            ..Config::for_tests()
        });
        let output = Command::new(&python)
            .arg(SCRIPT)
            .arg("--ws")
            .arg(format!("ws://{}", server.addr()))
            .arg("--api")
            .arg(format!("http://{}", server.api_addr()))
            .output()
            .unwrap_or_else(|e| panic!("run {python} {SCRIPT}: {e}"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("expected permessage-deflate"), "{stderr}");
    });
}
