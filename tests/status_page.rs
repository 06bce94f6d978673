//! The operator status page on the push API listener (design.md, "Push API": `GET /`): served
//! without the key while every other API route still needs it; the `/api/stats` figures the page
//! reads (this node's name and uptime, handshake failures by reason) are there, and every figure
//! the page's script names exists. The page itself is driven in Chromium by
//! `tests/browser/status.mjs`.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use common::{connect, guarded, http_exchange, wait_until, ApiClient, TestServer};
use edgepush::config::Config;
use edgepush::push::api::STATUS_PAGE;
use serde_json::Value;

const KEY: &str = "status-s3cret";

fn server_with_key() -> TestServer {
    TestServer::start(Config {
        api_key: Some(KEY.into()),
        ..Config::for_tests()
    })
}

#[test]
fn page_loads_without_the_key_and_the_api_still_needs_it() {
    guarded(|| {
        let server = server_with_key();
        // No key, a wrong key: the page either way, on one keep-alive connection.
        let mut without = ApiClient::connect(server.api_addr());
        let mut wrong = ApiClient::with_key(server.api_addr(), "nope");
        for (who, api) in [("no key", &mut without), ("wrong key", &mut wrong)] {
            for path in ["/", "/status", "/?from=bookmark"] {
                let page = api.call("GET", path, None);
                assert_eq!(page.status, 200, "{who}: GET {path}");
                assert_eq!(
                    page.header("content-type"),
                    Some("text/html; charset=utf-8"),
                    "{who}: GET {path}"
                );
                assert_eq!(page.header("connection"), Some("keep-alive"));
                assert_eq!(page.header("cache-control"), Some("no-store"));
                let csp = page.header("content-security-policy").unwrap_or_default();
                assert!(csp.contains("connect-src 'self'"), "{csp}");
                assert_eq!(page.body, STATUS_PAGE.as_bytes(), "{who}: GET {path}");
                assert!(page.body_text().contains("<title>edgepush status</title>"));
                assert!(
                    !page.body_text().contains(KEY),
                    "the page must hold no secret"
                );
            }
            // The data the page reads still needs the key.
            for path in ["/api/stats", "/api/nodes", "/metrics"] {
                let response = api.call("GET", path, None);
                assert_eq!(response.status, 401, "{who}: GET {path}");
                assert_eq!(response.header("www-authenticate"), Some("Bearer"));
            }
            // Only GET is exempt.
            let response = api.call("POST", "/", Some("{}"));
            assert_eq!(response.status, 401, "{who}: POST /");
        }
        let mut right = ApiClient::with_key(server.api_addr(), KEY);
        let stats = right.get("/api/stats");
        assert!(
            stats["node"].as_str().is_some_and(|n| !n.is_empty()),
            "{stats}"
        );
        assert!(stats["uptime_s"].is_u64(), "{stats}");
        // The page finds this node in /api/nodes by that name.
        let nodes = right.get("/api/nodes");
        assert_eq!(nodes["nodes"][0]["name"], stats["node"], "{nodes}");
        // With the key the page is the same; on the public listener `/` is still the demo page.
        assert_eq!(right.call("GET", "/", None).body, STATUS_PAGE.as_bytes());
        let demo = http_exchange(
            server.addr(),
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(demo.status, 200);
        assert!(
            !demo.body_text().contains("<title>edgepush status</title>"),
            "the public listener must not serve the status page"
        );
    });
}

#[test]
fn stats_carry_handshake_failures_by_reason() {
    guarded(|| {
        let server = server_with_key();
        let mut api = ApiClient::with_key(server.api_addr(), KEY);
        let before = api.get("/api/stats");
        let reasons = before["handshake_failures_by_reason"]
            .as_object()
            .unwrap_or_else(|| panic!("no handshake_failures_by_reason: {before}"))
            .clone();
        // The same reasons, by the same names, as /metrics' `reason` label.
        let metrics = api.call("GET", "/metrics", None).body_text();
        for reason in reasons.keys() {
            let line = format!("edgepush_handshake_failures_total{{reason=\"{reason}\"}} 0");
            assert!(metrics.contains(&line), "{line}");
        }
        assert!(reasons.values().all(|n| n == 0), "{before}");

        // A wrong WebSocket version (426) and a request that never completes (timeout is
        // not waited for: the version one is enough to see the breakdown move).
        let mut stream = connect(server.addr());
        stream
            .write_all(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            )
            .expect("send upgrade");
        drop(stream);
        let mut after = Value::Null;
        assert!(
            wait_until(Duration::from_secs(5), || {
                // The total and the breakdown are two counters read one after the other: a
                // read between the worker's two increments sees one without the other.
                after = api.get("/api/stats");
                after["handshake_failures_by_reason"]["version"] == 1
                    && after["handshake_failures"] == 1
            }),
            "the 426 was not counted: {after}"
        );
        let others: u64 = after["handshake_failures_by_reason"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        assert_eq!(others, 1, "only the one failure: {after}");
    });
}

/// The names the page's script reads from `/api/stats` (`gauge("…")`, `rate("…")`, and its
/// `COUNTERS` list) must all be in the answer: a renamed figure would leave a tile blank.
#[test]
fn every_figure_the_page_reads_is_in_the_stats() {
    guarded(|| {
        let server = server_with_key();
        let mut api = ApiClient::with_key(server.api_addr(), KEY);
        let stats = api.get("/api/stats");
        let keys: BTreeSet<&str> = stats
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let mut named = BTreeSet::new();
        for marker in ["gauge(\"", "rate(\"", "Points(\""] {
            for piece in STATUS_PAGE.split(marker).skip(1) {
                if let Some(name) = piece.split('"').next() {
                    named.insert(name.to_owned());
                }
            }
        }
        let counters = STATUS_PAGE
            .split("const COUNTERS = [")
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .expect("the page lists its COUNTERS");
        for name in counters.split(',') {
            named.insert(name.trim().trim_matches('"').to_owned());
        }
        assert!(named.len() >= 15, "too few names found: {named:?}");
        let missing: Vec<_> = named
            .iter()
            .filter(|n| !keys.contains(n.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "the page reads {missing:?}: not in {stats}"
        );
    });
}
