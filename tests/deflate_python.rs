//! permessage-deflate (RFC 7692) with a real client: Python `websockets` with its default
//! compression runs `tests/python/deflate_client.py` against a live server — /echo (a 2 KiB
//! JSON echoed) and /ws (a published 1 KiB JSON received), each with the extension
//! negotiated and the server's frames compressed.
//!
//! The interpreter is `$EDGEPUSH_PYTHON` (CI points it at a venv with websockets), else
//! `python3`. Without the `websockets` module the test is skipped, loudly, unless `CI` is set:
//! then it fails.

mod common;

use std::process::Command;

use common::{guarded, TestServer};
use edgepush::config::Config;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/python/deflate_client.py"
);

#[test]
fn python_websockets_negotiates_deflate_on_echo_and_push() {
    let Some(python) = common::python_with("websockets.asyncio.client", "websockets>=13") else {
        return;
    };
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
    let Some(python) = common::python_with("websockets.asyncio.client", "websockets>=13") else {
        return;
    };
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
