//! `scale --read-batch`: clients that read in batches still check every stream (nothing
//! missing, duplicated or out of order), the report says the batch it used and the nodes' CPU
//! per delivery, and the wait is in the latency it reports, not taken out of it.

use edgepush::config::Config;
use edgepush::server::Server;

mod common;
use common::{run_with, u};

#[test]
fn batched_readers_miss_nothing_and_their_wait_is_in_the_latency() {
    let s = Server::start(&Config::for_tests()).expect("start edgepush");
    let url = format!("ws://{}/ws?user=rb-{{n}}", s.local_addr());
    let api = format!("http://{}", s.api_addr());
    let pid = std::process::id().to_string();
    // 70 ms batches against all-hands every 200 ms: the publishes fall at every phase of the
    // clients' 70 ms loop (200 is no multiple of it), so their waits spread over 0..70 ms.
    let r = run_with(
        &[
            "scale",
            "-n",
            "50",
            "--rooms",
            "2",
            "--url",
            &url,
            "--api",
            &api,
            "--duration",
            "3s",
            "--allhands-rate",
            "5",
            "--room-rate",
            "10",
            "--user-rate",
            "10",
            "--settle",
            "5s",
            "--read-batch",
            "70ms",
            "--server-pids",
            &pid,
        ],
        &[],
    );
    assert_eq!(u(&r, "connected"), 50, "{r}");
    for field in ["missing", "duplicates", "out_of_order", "unexpected"] {
        assert_eq!(u(&r, field), 0, "{field} in {r}");
    }
    let allhands = r["publish_by_kind"]["allhands"]["acked"]
        .as_u64()
        .unwrap_or(0);
    assert!(allhands >= 10, "{r}");
    assert_eq!(
        r["deliveries_by_kind"]["allhands"].as_u64(),
        Some(50 * allhands),
        "{r}"
    );
    assert_eq!(r["read_batch_ms"].as_f64(), Some(70.0), "{r}");
    assert!(
        r["server_cpu_us_per_delivery"].as_f64().unwrap_or(0.0) > 0.0,
        "{r}"
    );
    // Without batches a delivery here takes a millisecond or two; with them, the time until
    // the next poll is counted: most waits are tens of milliseconds.
    let p90_us = r["latency_us"]["allhands"]["p90"].as_f64().unwrap_or(0.0);
    assert!(p90_us >= 30_000.0, "all-hands p90 {p90_us} µs: {r}");
    s.stop();
}
