//! `GET /metrics` read by Prometheus' own parser: a live server gets a little traffic (echo
//! upgrades and messages, push connections, a subscribe, a publish, a send), then its metrics
//! text goes through `scripts/check_metrics.py` (prometheus_client's
//! `text_string_to_metric_families`), which checks the families, types, HELP texts and values.
//!
//! The interpreter is `$EDGEPUSH_PYTHON` (CI points it at a venv with prometheus_client),
//! else `python3`. Without prometheus_client the test is skipped, unless `CI` is set: then it
//! fails.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{guarded, push_client, ApiClient, RawClient, TestServer};
use edgepush::config::Config;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check_metrics.py");

/// Runs the checker on `text`; panics with its report unless it exits 0.
fn check_metrics(python: &str, text: &str, at_least: &[(&str, u64)]) {
    let mut command = Command::new(python);
    command.arg(SCRIPT);
    for (name, min) in at_least {
        command.arg("--at-least").arg(format!("{name}={min}"));
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {python} {SCRIPT}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics to the checker");
    let output = child.wait_with_output().expect("wait for the checker");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "check_metrics.py failed ({}):\n{stderr}{stdout}\n--- metrics body ---\n{text}",
        output.status
    );
    print!("{stdout}");
}

#[test]
fn metrics_parse_with_prometheus_client_after_traffic() {
    let Some(python) = common::python_with("prometheus_client", "prometheus_client") else {
        return;
    };
    guarded(move || {
        let server = TestServer::start(Config {
            threads: 2,
            ..Config::for_tests()
        });
        let addr = server.addr();

        // Echo: three upgrades, two messages each.
        let mut echoes: Vec<RawClient> =
            (0..3).map(|_| RawClient::connect(addr, "/echo")).collect();
        for (i, client) in echoes.iter_mut().enumerate() {
            client.round_trip(&format!("hello {i}"));
            client.round_trip("ping");
        }

        // Push: two subscribers of one channel, a publish and a send through the API.
        let mut alice = push_client(addr, "alice");
        let mut bob = push_client(addr, "bob");
        alice.subscribe("news");
        bob.subscribe("news");
        let mut api = ApiClient::connect(server.api_addr());
        let published = api.post(
            "/api/publish?wait=delivered",
            r#"{"channel":"news","data":{"headline":"metrics"}}"#,
        );
        assert_eq!(published["delivered"], 2, "{published}");
        let sent = api.post(
            "/api/send?wait=delivered",
            r#"{"user":"alice","data":"direct"}"#,
        );
        assert_eq!(sent["delivered"], 1, "{sent}");
        for client in [&mut alice, &mut bob] {
            let message = client.recv_json();
            assert_eq!(message["op"], "message", "{message}");
            assert_eq!(message["channel"], "news", "{message}");
        }
        let direct = alice.recv_json();
        assert_eq!(direct["channel"], "$user", "{direct}");

        let response = api.call("GET", "/metrics", None);
        assert_eq!(response.status, 200, "{}", response.body_text());
        let content_type = response.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("text/plain"),
            "content type {content_type:?}"
        );
        let text = response.body_text();
        check_metrics(
            &python,
            &text,
            &[
                ("edgepush_connections", 5),
                ("edgepush_accepted_total", 5),
                ("edgepush_handshakes_total", 5),
                ("edgepush_worker_connections", 5),
                ("edgepush_messages_out_total", 3),
                ("edgepush_publish_latency_seconds_count", 1),
                ("edgepush_messages_in_total", 6),
                ("edgepush_deliveries_total", 3),
                ("edgepush_bytes_in_total", 1),
                ("edgepush_bytes_out_total", 1),
                ("edgepush_subscriptions", 2),
                ("edgepush_channels", 1),
                ("edgepush_history_messages", 1),
                ("edgepush_history_bytes", 1),
            ],
        );

        // The checker must also be able to fail: a broken body is refused.
        let broken = text.replacen("\nedgepush_connections ", "\nedgepush_connections x", 1);
        assert_ne!(broken, text, "no edgepush_connections sample line");
        let status = Command::new(&python)
            .arg(SCRIPT)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut child| {
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(broken.as_bytes())?;
                child.wait()
            })
            .expect("run the checker on a broken body");
        assert!(!status.success(), "the checker accepted a broken body");
    });
}
