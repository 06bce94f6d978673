//! wss with a client that shares no code with the server: Python's `ssl` (OpenSSL) and the
//! `websockets` package, trusting the test CA, echo on /echo and a published message on /ws,
//! with ALPN `http/1.1` offered as browsers do; and `h2` alone refused.
//!
//! The interpreter is `$EDGEPUSH_PYTHON` (CI points it at a venv with websockets), else
//! `python3`. Without the `websockets` module the test is skipped, loudly, unless `CI` is set:
//! then it fails.

mod common;
mod tls_support;

use std::process::Command;

use common::{guarded, TestServer};
use edgepush::config::{Config, TlsFiles};
use tls_support::*;

const SCRIPT: &str = r#"
import json, ssl, sys, threading, time, urllib.request
from websockets.sync.client import connect

ws_base, api_base, cafile = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile)
ctx.set_alpn_protocols(["http/1.1"])

with connect(ws_base + "/echo", ssl=ctx) as ws:
    ws.send("hello from python")
    assert ws.recv(timeout=5) == "hello from python"
    ws.send("ping")
    assert ws.recv(timeout=5) == "pong"
    big = "y" * 300000
    ws.send(big)
    assert ws.recv(timeout=10) == big
    version = ws.socket.version()
    print("ok - echo over", version)

with connect(ws_base + "/ws?user=py", ssl=ctx) as ws:
    first = json.loads(ws.recv(timeout=5))
    assert first["channel"] == "$user", first
    ws.send(json.dumps({"op": "subscribe", "channel": "py-news"}))
    answer = json.loads(ws.recv(timeout=5))
    assert answer["op"] == "subscribed", answer
    body = json.dumps({"channel": "py-news", "data": {"n": 1}}).encode()
    req = urllib.request.Request(api_base + "/api/publish?wait=delivered", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert json.load(r)["delivered"] == 1
    message = json.loads(ws.recv(timeout=5))
    assert message["data"] == {"n": 1}, message
    print("ok - push over wss")

h2 = ssl.create_default_context(cafile=cafile)
h2.set_alpn_protocols(["h2"])
try:
    with connect(ws_base + "/echo", ssl=h2, open_timeout=5):
        pass
    print("not ok - h2 alone was accepted")
    sys.exit(1)
except ssl.SSLError as e:
    assert "NO APPLICATION PROTOCOL" in str(e).upper().replace("_", " "), e
    print("ok - h2 alone refused:", e)
"#;

#[test]
fn python_ssl_and_websockets_over_wss() {
    let Some(python) = common::python_with("websockets.sync.client", "websockets>=13") else {
        return;
    };
    guarded(move || {
        let ca = TestCa::new();
        let leaf = ca.leaf(&rcgen::PKCS_ECDSA_P256_SHA256);
        let dir = temp_dir("tls-python");
        let (cert, key) = leaf.write(&dir);
        let cafile = dir.join("ca.pem");
        std::fs::write(&cafile, ca.pem()).unwrap();
        let server = TestServer::start(Config {
            tls: Some(TlsFiles { cert, key }),
            ..Config::for_tests()
        });
        let output = Command::new(&python)
            .args(["-c", SCRIPT])
            .arg(format!("wss://localhost:{}", server.addr().port()))
            .arg(format!("http://{}", server.api_addr()))
            .arg(&cafile)
            .output()
            .unwrap_or_else(|e| panic!("run {python}: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "the Python client failed ({}):\n{stderr}{stdout}",
            output.status
        );
        assert_eq!(stdout.matches("ok - ").count(), 3, "{stdout}");
        print!("{stdout}");
    });
}
