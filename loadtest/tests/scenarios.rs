//! Every scenario of `edgepush-load`, run briefly against a real edgepush started in this
//! process: the one-line JSON report has its fields and they are sane (as many connections as
//! asked, nothing missing or duplicated in a fan-out, the stopped readers closed at the backlog).

use std::process::Command;
use std::time::Duration;

use edgepush::config::Config;
use edgepush::server::Server;
use serde_json::Value;

mod common;
use common::{f, u};

fn server(config: Config) -> Server {
    Server::start(&config).expect("start edgepush")
}

/// Runs `edgepush-load ARGS --json` (clients never busy-poll) and returns its report.
fn run(args: &[&str]) -> Value {
    common::run_with(args, &["--no-spin"])
}

#[test]
fn idle_opens_every_connection_and_reports_memory() {
    let s = server(Config::for_tests());
    let url = format!("ws://{}/echo", s.local_addr());
    let pid = std::process::id().to_string();
    let r = run(&[
        "idle",
        "-n",
        "300",
        "--hold",
        "500ms",
        "--url",
        &url,
        "--server-pid",
        &pid,
    ]);
    assert_eq!(r["scenario"], "idle");
    assert_eq!(u(&r, "conns"), 300);
    assert_eq!(u(&r, "connected"), 300);
    assert_eq!(u(&r, "connect_failed"), 0);
    assert!(f(&r, "handshakes_per_s") > 0.0);
    assert!(r["server"]["rss_bytes"].as_u64().unwrap_or(0) > 0, "{r}");
    assert!(r.get("server_bytes_per_conn").is_some(), "{r}");
    s.stop();
}

#[test]
fn echo_reports_rate_and_latency() {
    let s = server(Config::for_tests());
    let url = format!("ws://{}/echo", s.local_addr());
    let r = run(&[
        "echo",
        "-c",
        "10",
        "--size",
        "64",
        "--inflight",
        "4",
        "--duration",
        "1s",
        "--url",
        &url,
    ]);
    assert_eq!(r["scenario"], "echo");
    assert_eq!(u(&r, "connected"), 10);
    assert!(u(&r, "messages") > 100, "{r}");
    assert!(f(&r, "msgs_per_s") > 100.0, "{r}");
    let latency = &r["latency_us"];
    assert!(latency["p50"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert!(latency["p99"].as_f64() >= latency["p50"].as_f64(), "{r}");
    s.stop();
}

#[test]
fn fanout_delivers_everything_exactly_once() {
    let s = server(Config {
        threads: 2,
        ..Config::for_tests()
    });
    let url = format!("ws://{}/ws?user=t-{{n}}", s.local_addr());
    let api = format!("http://{}", s.api_addr());
    let r = run(&[
        "fanout",
        "-n",
        "200",
        "--channel",
        "t",
        "--rate",
        "0",
        "--messages",
        "50",
        "--size",
        "64",
        "--url",
        &url,
        "--api",
        &api,
        "--wait-delivered",
    ]);
    assert_eq!(r["scenario"], "fanout");
    assert_eq!(u(&r, "subscribers"), 200);
    assert_eq!(u(&r, "connect_failed"), 0);
    assert_eq!(u(&r, "published"), 50);
    assert_eq!(u(&r, "expected"), 200 * 50);
    assert_eq!(u(&r, "deliveries"), 200 * 50);
    assert_eq!(u(&r, "api_delivered"), 200 * 50);
    assert_eq!(u(&r, "missing"), 0);
    assert_eq!(u(&r, "duplicates"), 0);
    assert_eq!(u(&r, "out_of_order"), 0);
    assert!(f(&r, "deliveries_per_s") > 0.0);
    s.stop();
}

#[test]
fn churn_counts_handshakes() {
    let s = server(Config::for_tests());
    let url = format!("ws://{}/echo", s.local_addr());
    let r = run(&["churn", "--rate", "200", "--duration", "1s", "--url", &url]);
    assert_eq!(r["scenario"], "churn");
    assert!(u(&r, "handshakes") >= 100, "{r}");
    assert_eq!(u(&r, "failed"), 0, "{r}");
    assert!(f(&r, "handshakes_per_s") > 50.0, "{r}");
    s.stop();
}

#[test]
fn slow_readers_are_closed_while_the_others_get_everything() {
    let s = server(Config {
        max_message_size: 64 * 1024,
        max_backlog: 1024 * 1024,
        close_timeout: Duration::from_secs(1),
        ..Config::for_tests()
    });
    let url = format!("ws://{}/ws?user=s-{{n}}", s.local_addr());
    let api = format!("http://{}", s.api_addr());
    // About 8 MB per stopped reader over one second: far past what the kernel's socket buffers
    // and the backlog absorb, while a reader that keeps reading keeps up.
    let r = run(&[
        "slow",
        "-n",
        "10",
        "--readers-stopped",
        "2",
        "--channel",
        "s",
        "--messages",
        "2000",
        "--size",
        "4000",
        "--rate",
        "2000",
        "--url",
        &url,
        "--api",
        &api,
        "--close-wait",
        "3s",
    ]);
    assert_eq!(r["scenario"], "slow");
    assert_eq!(u(&r, "stopped"), 2);
    assert_eq!(u(&r, "stopped_not_closed"), 0, "{r}");
    assert_eq!(u(&r, "stopped_close_1008"), 2, "{r}");
    assert_eq!(
        u(&r, "missing"),
        0,
        "the readers that kept reading got everything: {r}"
    );
    s.stop();
}

/// `--deflate`: every connection negotiates permessage-deflate, the echoed JSON comes back
/// compressed (fewer bytes on the wire than in the messages) and is inflated before it is
/// counted; without `--deflate` the wire carries more than the payload (frame headers).
#[test]
fn echo_with_deflate_inflates_and_reports_wire_bytes() {
    let s = server(Config::for_tests());
    let url = format!("ws://{}/echo", s.local_addr());
    let echo = |extra: &[&str]| {
        let mut args = vec![
            "echo",
            "-c",
            "4",
            "--size",
            "1024",
            "--payload",
            "json",
            "--inflight",
            "2",
            "--duration",
            "1s",
            "--url",
            &url,
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    for offer in ["--deflate", "--deflate=permessage-deflate"] {
        let r = echo(&[offer]);
        assert_eq!(u(&r, "deflate_conns"), 4, "{r}");
        assert!(u(&r, "messages") > 10, "{r}");
        assert!(u(&r, "inflated_msgs") >= u(&r, "messages"), "{r}");
        assert_eq!(f(&r, "payload_bytes_per_msg"), 1024.0, "{r}");
        let wire = f(&r, "wire_bytes_per_msg");
        assert!(wire > 100.0 && wire < 700.0, "{r}");
        assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    }
    let plain = echo(&[]);
    assert_eq!(u(&plain, "deflate_conns"), 0, "{plain}");
    assert_eq!(u(&plain, "inflated_msgs"), 0, "{plain}");
    assert!(f(&plain, "wire_bytes_per_msg") >= 1028.0, "{plain}");
    s.stop();
}

/// `--deflate` against a server with compression off: the connections fail as
/// `deflate_declined` and the run stops with exit status 1 (a compression run never measures
/// plain frames by mistake).
#[test]
fn deflate_declined_is_an_error() {
    let s = server(Config {
        compression: false,
        ..Config::for_tests()
    });
    let url = format!("ws://{}/echo", s.local_addr());
    let output = Command::new(env!("CARGO_BIN_EXE_edgepush-load"))
        .args([
            "idle",
            "-n",
            "3",
            "--hold",
            "100ms",
            "--deflate",
            "--url",
            &url,
        ])
        .args(["--json", "--timeout", "30s"])
        .output()
        .expect("run edgepush-load");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(r#"{"deflate_declined": 3}"#), "{stderr}");
    s.stop();
}

/// A fan-out of JSON to deflate subscribers: everything arrives once, inflated, and the wire
/// carries fewer bytes per delivery than the deliveries hold.
#[test]
fn fanout_with_deflate_delivers_everything_compressed() {
    let s = server(Config {
        threads: 2,
        ..Config::for_tests()
    });
    let url = format!("ws://{}/ws?user=t-{{n}}", s.local_addr());
    let api = format!("http://{}", s.api_addr());
    let r = run(&[
        "fanout",
        "-n",
        "50",
        "--channel",
        "z",
        "--messages",
        "20",
        "--size",
        "1024",
        "--payload",
        "json",
        "--url",
        &url,
        "--api",
        &api,
        "--wait-delivered",
        "--deflate",
    ]);
    assert_eq!(u(&r, "deflate_conns"), 50, "{r}");
    assert_eq!(u(&r, "deliveries"), 50 * 20, "{r}");
    assert_eq!(u(&r, "missing") + u(&r, "duplicates"), 0, "{r}");
    assert!(u(&r, "inflated_msgs") >= 50 * 20, "{r}");
    let (wire, payload) = (f(&r, "wire_bytes_per_msg"), f(&r, "payload_bytes_per_msg"));
    assert!(payload > 1024.0 && wire * 2.0 < payload, "{r}");
    s.stop();
}

/// Several nodes in `--url` and `--api`: one server reached under two spellings (127.0.0.1
/// and localhost), so every delivery arrives and the spread is what is checked. Connections
/// alternate between the URL nodes, publishes between the API nodes; the per-node figures add
/// up to the totals. With one node the report has one entry equal to the totals.
#[test]
fn fanout_over_two_nodes_spreads_and_reports_per_node() {
    let s = server(Config {
        threads: 2,
        ..Config::for_tests()
    });
    let (ws, api) = (s.local_addr().port(), s.api_addr().port());
    let urls = format!("ws://127.0.0.1:{ws}/ws?user=m-{{n}},ws://localhost:{ws}/ws?user=m-{{n}}");
    let apis = format!("http://127.0.0.1:{api},http://localhost:{api}");
    let r = run(&[
        "fanout",
        "-n",
        "40",
        "--channel",
        "multi",
        "--messages",
        "20",
        "--api-pipeline",
        "1",
        "--url",
        &urls,
        "--api",
        &apis,
    ]);
    assert_eq!(r["target"], urls.as_str(), "{r}");
    assert_eq!(u(&r, "subscribers"), 40, "{r}");
    assert_eq!(u(&r, "deliveries"), 40 * 20, "{r}");
    assert_eq!(
        u(&r, "missing") + u(&r, "duplicates") + u(&r, "out_of_order"),
        0,
        "{r}"
    );
    assert_eq!(
        (u(&r, "publish_failed"), u(&r, "publish_retries")),
        (0, 0),
        "{r}"
    );
    let nodes = r["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "{r}");
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(u(n, "connections_opened"), 20, "node {i}: {r}");
        assert_eq!(u(n, "handshake_failures"), 0, "node {i}: {r}");
        assert_eq!(u(n, "deliveries"), 20 * 20, "node {i}: {r}");
        assert_eq!(u(n, "publishes_sent"), 10, "node {i}: {r}");
        assert_eq!(u(n, "published"), 10, "node {i}: {r}");
        assert_eq!(u(n, "publish_failed"), 0, "node {i}: {r}");
        assert!(n["latency_us"]["p50"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
        assert!(
            n["latency_us"]["p99"].as_f64() >= n["latency_us"]["p50"].as_f64(),
            "{r}"
        );
    }
    assert!(
        nodes[1]["url"].as_str().unwrap_or("").contains("localhost"),
        "{r}"
    );

    // One node: the same report, with one entry that repeats the totals.
    let one = format!("ws://127.0.0.1:{ws}/ws?user=o-{{n}}");
    let r = run(&[
        "fanout",
        "-n",
        "10",
        "--channel",
        "one",
        "--messages",
        "5",
        "--url",
        &one,
        "--api",
        &format!("http://127.0.0.1:{api}"),
    ]);
    let nodes = r["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "{r}");
    assert_eq!(u(&nodes[0], "deliveries"), u(&r, "deliveries"), "{r}");
    assert_eq!(u(&nodes[0], "connections_opened"), 10, "{r}");
    assert_eq!(u(&nodes[0], "published"), u(&r, "published"), "{r}");
    assert_eq!(nodes[0]["latency_us"]["p99"], r["latency_us"]["p99"], "{r}");
    s.stop();
}

/// Echo and churn over two URL nodes: per node, its share of connections and messages.
#[test]
fn echo_and_churn_over_two_nodes() {
    let s = server(Config::for_tests());
    let port = s.local_addr().port();
    let urls = format!("ws://127.0.0.1:{port}/echo,ws://localhost:{port}/echo");
    let r = run(&[
        "echo",
        "-c",
        "6",
        "--inflight",
        "2",
        "--duration",
        "500ms",
        "--url",
        &urls,
    ]);
    let nodes = r["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "{r}");
    let messages: u64 = nodes.iter().map(|n| u(n, "messages")).sum();
    assert_eq!(messages, u(&r, "messages"), "{r}");
    for n in nodes {
        assert_eq!(u(n, "connections_opened"), 3, "{r}");
        assert!(u(n, "messages") > 0, "{r}");
        assert!(n.get("api").is_none(), "{r}");
    }
    let r = run(&["churn", "--rate", "100", "--duration", "1s", "--url", &urls]);
    let nodes = r["nodes"].as_array().expect("nodes");
    let handshakes: u64 = nodes.iter().map(|n| u(n, "handshakes")).sum();
    assert_eq!(handshakes, u(&r, "handshakes"), "{r}");
    assert!(nodes.iter().all(|n| u(n, "handshakes") >= 20), "{r}");
    s.stop();
}

/// `edgepush-load backend` on a free port, for `duration`; returns the process and its address
/// (from its first line, `listening on ADDR`).
fn start_backend(
    duration: &str,
) -> (
    std::process::Child,
    String,
    std::io::BufReader<std::process::ChildStdout>,
) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgepush-load"))
        .args([
            "backend",
            "--listen",
            "127.0.0.1:0",
            "--duration",
            duration,
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the backend");
    let stdout = child.stdout.take().expect("backend stdout");
    let mut reader = std::io::BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).expect("backend's first line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("backend said {line:?}"))
        .to_string();
    (child, addr, reader)
}

fn upstream_server(url: &str) -> Server {
    server(Config {
        threads: 2,
        upstream: Some(
            edgepush::upstream::UpstreamConfig::new(url, "load-test".to_owned()).expect("url"),
        ),
        ..Config::for_tests()
    })
}

#[test]
fn actions_through_the_upstream_come_back_in_order_exactly_once() {
    use std::io::BufRead;
    let (mut backend, addr, mut out) = start_backend("15s");
    let backend_url = format!("http://{addr}/act");
    let s = upstream_server(&backend_url);
    let url = format!("ws://{}/ws?user=act-{{n}}", s.local_addr());
    let pid = std::process::id().to_string();
    let r = run(&[
        "actions",
        "-c",
        "20",
        "--in-flight",
        "4",
        "--size",
        "32",
        "--duration",
        "1s",
        "--url",
        &url,
        "--direct",
        &backend_url,
        "--server-pid",
        &pid,
    ]);
    assert_eq!(r["scenario"], "actions");
    assert_eq!(u(&r, "connected"), 20);
    assert!(u(&r, "actions") > 100, "{r}");
    assert!(f(&r, "actions_per_s") > 100.0, "{r}");
    assert_eq!(u(&r, "answered"), u(&r, "sent"), "{r}");
    for zero in [
        "missing",
        "duplicates",
        "out_of_order",
        "action_errors",
        "upstream_502",
        "upstream_504",
        "closed_during",
    ] {
        assert_eq!(u(&r, zero), 0, "{zero} in {r}");
    }
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    assert!(r["latency_us"]["p50"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert!(
        r["server"]["cpu_us_per_msg"].as_f64().unwrap_or(0.0) > 0.0,
        "{r}"
    );
    let direct = &r["direct"];
    assert_eq!(direct["connected"], 20, "{r}");
    assert!(direct["actions"].as_u64().unwrap_or(0) > 100, "{r}");
    assert_eq!(direct["answered"], direct["sent"], "{r}");
    assert_eq!(direct["missing"], 0, "{r}");
    assert_eq!(direct["out_of_order"], 0, "{r}");
    assert_eq!(direct["errors"], serde_json::json!({}), "{r}");
    assert!(r["added_latency_us"]["p50"].as_f64().is_some(), "{r}");
    s.stop();
    // The backend stops by itself and reports every request it answered: ours, both ways.
    let status = backend.wait().expect("backend exit");
    assert!(status.success(), "{status}");
    let mut summary = String::new();
    out.read_line(&mut summary).expect("backend summary");
    let b: Value = serde_json::from_str(summary.trim()).expect("backend JSON");
    assert_eq!(
        u(&b, "requests"),
        u(&r, "sent") + direct["sent"].as_u64().unwrap_or(0),
        "{b} {r}"
    );
}

#[test]
fn actions_count_upstream_errors_by_code() {
    // A port nobody listens on: every action is answered with error 502.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let s = upstream_server(&format!("http://127.0.0.1:{port}/act"));
    let url = format!("ws://{}/ws?user=err-{{n}}", s.local_addr());
    let r = run(&[
        "actions",
        "-c",
        "3",
        "--in-flight",
        "2",
        "--duration",
        "300ms",
        "--url",
        &url,
    ]);
    assert_eq!(u(&r, "connected"), 3);
    assert_eq!(u(&r, "actions"), 0, "{r}");
    let sent = u(&r, "sent");
    assert!(sent >= 6, "{r}");
    assert_eq!(u(&r, "answered"), sent, "{r}");
    assert_eq!(u(&r, "upstream_502"), sent, "{r}");
    assert_eq!(u(&r, "action_errors"), sent, "{r}");
    assert_eq!(u(&r, "missing"), 0, "{r}");
    s.stop();
}

/// A `redis-server` of this test's own on a free loopback port (no persistence), killed by
/// PID when dropped. `None` (skip) without `redis-server`, unless `CI` is set.
struct Redis {
    child: std::process::Child,
    port: u16,
}

impl Redis {
    fn start() -> Option<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                assert!(std::env::var_os("CI").is_none(), "CI: no redis-server: {e}");
                eprintln!("SKIPPED: no redis-server ({e})");
                return None;
            }
        };
        let redis = Redis { child, port };
        for _ in 0..100 {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let mut buf = [0u8; 16];
                if s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0) {
                    return Some(redis);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {port} did not answer PING");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn scale_over_two_cluster_nodes_with_drops_loses_nothing() {
    use clap::Parser;
    let Some(redis) = Redis::start() else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let prefix = format!("scale-test-{}", std::process::id());
    let node = || {
        let args = edgepush::config::Args::try_parse_from([
            "edgepush",
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--redis",
            &url,
            "--redis-prefix",
            &prefix,
        ])
        .expect("node flags");
        server(Config::from_args(args).expect("node config"))
    };
    let nodes = [node(), node()];
    let urls: Vec<String> = nodes
        .iter()
        .map(|s| format!("ws://{}/ws?user=scale-{{n}}", s.local_addr()))
        .collect();
    let apis: Vec<String> = nodes
        .iter()
        .map(|s| format!("http://{}", s.api_addr()))
        .collect();
    let pid = std::process::id().to_string();
    let pids = format!("{pid},{pid}");
    let redis_pid = redis.child.id().to_string();
    let dir = std::env::temp_dir();
    let timeline = dir.join(format!("edgepush-load-scale-{pid}.jsonl"));
    let svg = dir.join(format!("edgepush-load-scale-{pid}.svg"));
    let r = run(&[
        "scale",
        "-n",
        "200",
        "--rooms",
        "4",
        "--url",
        &urls.join(","),
        "--api",
        &apis.join(","),
        "--duration",
        "3s",
        "--allhands-rate",
        "5",
        "--room-rate",
        "20",
        "--user-rate",
        "40",
        "--drop-rate",
        "0.05",
        "--settle",
        "10s",
        "--server-pids",
        &pids,
        "--redis-pid",
        &redis_pid,
        "--timeline",
        timeline.to_str().unwrap_or_default(),
        "--svg",
        svg.to_str().unwrap_or_default(),
    ]);
    assert_eq!(r["scenario"], "scale");
    assert_eq!(u(&r, "connected"), 200, "{r}");
    for field in ["missing", "duplicates", "out_of_order", "unexpected"] {
        assert_eq!(u(&r, field), 0, "{field} in {r}");
    }
    assert!(u(&r, "reconnects") > 0, "{r}");
    assert!(u(&r, "deliveries") > 0, "{r}");
    for kind in ["allhands", "room", "user"] {
        assert!(
            r["deliveries_by_kind"][kind].as_u64().unwrap_or(0) > 0,
            "{kind}: {r}"
        );
        assert!(
            r["latency_us"][kind]["p99"].as_f64().unwrap_or(0.0) > 0.0,
            "{r}"
        );
    }
    // Every all-hands publish reached every connection once (200 × acknowledged, replays
    // included; nothing is missing above, so nothing was lost in between).
    assert!(u(&r, "published") > 0, "{r}");
    assert!(f(&r, "handshakes_per_s") > 0.0, "{r}");
    let nodes_json = r["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(nodes_json.len(), 2, "{r}");
    assert_eq!(
        nodes_json
            .iter()
            .map(|n| n["connections"].as_u64().unwrap_or(0))
            .sum::<u64>(),
        200,
        "{r}"
    );
    assert!(r["redis"]["rss_end_bytes"].as_u64().unwrap_or(0) > 0, "{r}");
    let lines = std::fs::read_to_string(&timeline).unwrap_or_default();
    let first: Value =
        serde_json::from_str(lines.lines().next().unwrap_or("{}")).unwrap_or_default();
    assert!(lines.lines().count() >= 3, "{lines}");
    assert!(
        first.get("deliveries").is_some() && first.get("p99_ms").is_some(),
        "{first}"
    );
    let chart = std::fs::read_to_string(&svg).unwrap_or_default();
    assert!(
        chart.starts_with("<svg") && chart.contains("polyline"),
        "{chart}"
    );
    let _ = std::fs::remove_file(&timeline);
    let _ = std::fs::remove_file(&svg);
    for s in nodes {
        s.stop();
    }
}
