//! Rendering the figures: `GET /metrics` in the Prometheus text format (version 0.0.4) through
//! [`Exposition`], and `GET /api/stats` as one JSON object. Both read [`Stats`] and the hub's
//! own counts ([`HubFigures`]) at the moment of the request.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{CloseCodes, HandshakeFailure, HandshakeFailures, Histogram, Stats, LATENCY_BOUNDS_US};

/// What the hub thread knows that [`Stats`] does not: stream and history sizes, this node's
/// name and uptime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubFigures {
    /// Channels the hub tracks.
    pub channels: usize,
    /// User streams the hub tracks.
    pub user_streams: usize,
    /// Messages this node holds for replay (0 in cluster mode: history lives in Redis, see
    /// `deploy/REDIS.md` for its size there).
    pub history_messages: usize,
    /// Bytes charged against `--history-max-bytes` (0 in cluster mode, as above).
    pub history_bytes: usize,
    /// This node's name, as in `/api/nodes` (`--node-name`, or host name and port).
    pub node: String,
    /// Whole seconds since the hub started.
    pub uptime_s: u64,
}

/// Builds Prometheus text: one `# HELP`/`# TYPE` block per family.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A gauge family with one sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, "gauge", help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    /// A counter family with one sample (`name` should end in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, "counter", help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    /// One family with a label, e.g. `edgepush_close_codes_sent_total{code="1000"} 3`.
    pub fn labelled(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (String, u64)>,
    ) {
        self.header(name, kind, help);
        for (value, n) in samples {
            let _ = writeln!(self.out, "{name}{{{label}=\"{value}\"}} {n}");
        }
    }

    /// Close codes as a counter family labelled `code`.
    pub fn close_codes(&mut self, name: &str, help: &str, codes: &CloseCodes) {
        self.labelled(name, "counter", help, "code", codes.samples());
    }

    /// Handshake failures as a counter family labelled `reason`.
    pub fn handshake_failures(&mut self, name: &str, help: &str, failures: &HandshakeFailures) {
        let samples = HandshakeFailure::ALL
            .iter()
            .map(|f| (f.label().to_owned(), failures.get(*f)));
        self.labelled(name, "counter", help, "reason", samples);
    }

    /// A histogram in seconds with cumulative buckets, `_sum` and `_count`.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, "histogram", help);
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BOUNDS_US.iter().enumerate() {
            cumulative += h.buckets[i].load(Ordering::Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(self.out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = h.count();
        let _ = writeln!(self.out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = h.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(self.out, "{name}_sum {sum}\n{name}_count {count}");
    }

    /// The text, ready to serve.
    pub fn finish(self) -> String {
        self.out
    }
}

/// The body of `GET /api/stats`: one JSON object of counters and gauges.
pub fn stats_json(s: &Stats, hub: &HubFigures) -> String {
    serde_json::json!({
        "history_messages": hub.history_messages,
        "history_bytes": hub.history_bytes,
        "connections": s.open(),
        "accepted": s.accepted.load(Ordering::Relaxed),
        "upgrades": s.upgrades.load(Ordering::Relaxed),
        "handshake_failures": s.handshake_failures.load(Ordering::Relaxed),
        "draining": s.draining.load(Ordering::Relaxed),
        "protocol_errors": s.protocol_errors.load(Ordering::Relaxed),
        "subscriptions": s.subscriptions.load(Ordering::Relaxed),
        "channels": hub.channels,
        "user_streams": hub.user_streams,
        "messages_in": s.messages_in.load(Ordering::Relaxed),
        "messages_out": s.messages_out.load(Ordering::Relaxed),
        "deliveries": s.deliveries.load(Ordering::Relaxed),
        "bytes_in": s.bytes_in.load(Ordering::Relaxed),
        "bytes_out": s.bytes_out.load(Ordering::Relaxed),
        "slow_consumer_drops": s.slow_consumers.load(Ordering::Relaxed),
        "pong_timeouts": s.pong_timeouts.load(Ordering::Relaxed),
        "accept_pauses": s.accept_pauses.load(Ordering::Relaxed),
        "api_overloaded": s.api_overloaded.load(Ordering::Relaxed),
        "redis": match (s.clustered.load(Ordering::Relaxed), s.store_down.load(Ordering::Relaxed)) {
            (false, _) => serde_json::Value::Null,
            (true, false) => "up".into(),
            (true, true) => "down".into(),
        },
        "redis_outages": s.store_outages.load(Ordering::Relaxed),
        "redis_round_trips": s.redis_latency.count(),
        "redis_round_trip_us_sum": s.redis_latency.sum_us(),
        "upstream_requests": s
            .upstream_outcomes
            .samples()
            .map(|(k, v)| (k, serde_json::Value::from(v)))
            .collect::<serde_json::Map<_, _>>(),
        "upstream_in_flight": s.upstream_in_flight.load(Ordering::Relaxed),
        "upstream_queued": s.upstream_queued.load(Ordering::Relaxed),
        "tls_handshakes": s.tls_handshakes.load(Ordering::Relaxed),
        "tls_handshake_failures": s.tls_failures.total(),
        "tls_handshake_failures_by_reason": s
            .tls_failures
            .samples()
            .map(|(k, v)| (k, serde_json::Value::from(v)))
            .collect::<serde_json::Map<_, _>>(),
        "handshake_failures_by_reason": HandshakeFailure::ALL
            .iter()
            .map(|&f| (f.label().to_owned(), s.handshake_failure_reasons.get(f).into()))
            .collect::<serde_json::Map<_, _>>(),
        "node": hub.node,
        "uptime_s": hub.uptime_s,
    })
    .to_string()
}

/// The body of `GET /metrics`: every family, in the Prometheus text format.
pub fn metrics_text(s: &Stats, hub: &HubFigures) -> String {
    let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
    let mut e = Exposition::new();
    if s.clustered.load(Ordering::Relaxed) {
        e.gauge(
            "edgepush_redis_up",
            "Cluster mode: 1 while this node reaches Redis (commands and pub/sub links), else 0.",
            u64::from(!s.store_down.load(Ordering::Relaxed)),
        );
        e.counter(
            "edgepush_redis_outages_total",
            "Cluster mode: times this node lost its links to Redis.",
            s.store_outages.load(Ordering::Relaxed),
        );
        e.histogram(
            "edgepush_redis_latency_seconds",
            "Cluster mode: round trip of one pipelined batch of commands to Redis (or an idle PING).",
            &s.redis_latency,
        );
    }
    e.gauge(
        "edgepush_connections",
        "Open WebSocket connections.",
        s.open() as u64,
    );
    e.labelled(
        "edgepush_worker_connections",
        "gauge",
        "Open WebSocket connections per event-loop thread.",
        "worker",
        s.open_by_worker()
            .into_iter()
            .enumerate()
            .map(|(w, n)| (w.to_string(), n as u64)),
    );
    e.gauge(
        "edgepush_draining",
        "1 while the server drains after SIGTERM/SIGINT.",
        u64::from(s.draining.load(Ordering::Relaxed)),
    );
    e.counter(
        "edgepush_accepted_total",
        "TCP connections accepted.",
        load(&s.accepted),
    );
    e.counter(
        "edgepush_handshakes_total",
        "Successful WebSocket upgrades.",
        load(&s.upgrades),
    );
    e.handshake_failures(
        "edgepush_handshake_failures_total",
        "Upgrades refused or timed out, by reason.",
        &s.handshake_failure_reasons,
    );
    e.counter(
        "edgepush_tls_handshakes_total",
        "TLS handshakes finished on the public listener (--tls-cert).",
        load(&s.tls_handshakes),
    );
    e.labelled(
        "edgepush_tls_handshake_failures_total",
        "counter",
        "TLS handshakes failed, by reason.",
        "reason",
        s.tls_failures.samples(),
    );
    e.counter(
        "edgepush_protocol_errors_total",
        "Connections failed for breaking RFC 6455.",
        load(&s.protocol_errors),
    );
    e.counter(
        "edgepush_messages_in_total",
        "Messages received from clients.",
        load(&s.messages_in),
    );
    e.counter(
        "edgepush_messages_out_total",
        "Data frames queued for clients (echoes, replies, deliveries).",
        load(&s.messages_out),
    );
    e.counter(
        "edgepush_bytes_in_total",
        "Bytes read from clients.",
        load(&s.bytes_in),
    );
    e.counter(
        "edgepush_bytes_out_total",
        "Bytes written to clients.",
        load(&s.bytes_out),
    );
    e.counter(
        "edgepush_deliveries_total",
        "Fan-out frames queued for push connections.",
        load(&s.deliveries),
    );
    e.counter(
        "edgepush_slow_consumer_closes_total",
        "Connections closed with 1008 at --max-backlog.",
        load(&s.slow_consumers),
    );
    e.counter(
        "edgepush_pong_timeouts_total",
        "Connections dropped for silence after a ping.",
        load(&s.pong_timeouts),
    );
    e.close_codes(
        "edgepush_close_codes_sent_total",
        "Close frames sent, by code.",
        &s.close_sent,
    );
    e.close_codes(
        "edgepush_close_codes_received_total",
        "Close frames received, by code.",
        &s.close_received,
    );
    e.gauge(
        "edgepush_subscriptions",
        "Channel subscriptions held.",
        s.subscriptions.load(Ordering::Relaxed) as u64,
    );
    e.gauge(
        "edgepush_channels",
        "Channels the hub tracks.",
        hub.channels as u64,
    );
    e.gauge(
        "edgepush_user_streams",
        "User streams the hub tracks.",
        hub.user_streams as u64,
    );
    e.gauge(
        "edgepush_history_messages",
        "Messages this node holds for replay (0 in cluster mode: history is kept in Redis).",
        hub.history_messages as u64,
    );
    e.gauge(
        "edgepush_history_bytes",
        "Bytes charged against --history-max-bytes: held frames, their bookkeeping, and offline users' streams (0 in cluster mode: history is kept in Redis).",
        hub.history_bytes as u64,
    );
    e.counter(
        "edgepush_accept_pauses_total",
        "Accept pauses after EMFILE/ENFILE.",
        load(&s.accept_pauses),
    );
    e.counter(
        "edgepush_api_overloaded_total",
        "API requests answered 503 because workers' inboxes were full.",
        load(&s.api_overloaded),
    );
    e.histogram(
        "edgepush_publish_latency_seconds",
        "From the hub taking a message to a worker having written it to its recipients.",
        &s.publish_latency,
    );
    e.labelled(
        "edgepush_upstream_requests_total",
        "counter",
        "Requests to --upstream, by outcome.",
        "outcome",
        s.upstream_outcomes.samples(),
    );
    e.histogram(
        "edgepush_upstream_latency_seconds",
        "From handing a request to an upstream connection (connecting included) to its answer.",
        &s.upstream_latency,
    );
    e.gauge(
        "edgepush_upstream_in_flight",
        "Requests at the upstream now.",
        s.upstream_in_flight.load(Ordering::Relaxed) as u64,
    );
    e.gauge(
        "edgepush_upstream_queued",
        "Actions waiting for their turn to go to the upstream.",
        s.upstream_queued.load(Ordering::Relaxed) as u64,
    );
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::HandshakeFailure;
    use std::time::Duration;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(5));
        let mut e = Exposition::new();
        e.histogram("x_seconds", "test", &h);
        let text = e.finish();
        assert!(
            text.contains("x_seconds_bucket{le=\"0.00005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{le=\"0.001\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_bucket{le=\"1\"} 2\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_count 3\n"));
    }

    #[test]
    fn codes_and_reasons() {
        let c = CloseCodes::default();
        c.add(1000);
        c.add(1000);
        c.add(4999);
        assert_eq!(c.get(1000), 2);
        let mut e = Exposition::new();
        e.close_codes("c_total", "codes", &c);
        let text = e.finish();
        assert!(text.contains("c_total{code=\"1000\"} 2\n"));
        assert!(text.contains("c_total{code=\"other\"} 1\n"));
        let f = HandshakeFailures::default();
        f.add(HandshakeFailure::from_status(429));
        assert_eq!(f.get(HandshakeFailure::TooManyRequests), 1);
    }

    #[test]
    fn renderings_read_stats_and_hub_figures() {
        let stats = Stats::new(2);
        stats.upgraded(1);
        stats.accepted.fetch_add(3, Ordering::Relaxed);
        let hub = HubFigures {
            channels: 4,
            user_streams: 5,
            history_messages: 6,
            history_bytes: 7,
            node: "a:1".into(),
            uptime_s: 8,
        };
        stats
            .handshake_failure_reasons
            .add(HandshakeFailure::from_status(429));
        let json: serde_json::Value = serde_json::from_str(&stats_json(&stats, &hub)).unwrap();
        for (key, value) in [
            ("connections", 1),
            ("accepted", 3),
            ("upgrades", 1),
            ("channels", 4),
            ("user_streams", 5),
            ("history_messages", 6),
            ("history_bytes", 7),
        ] {
            assert_eq!(json[key], value, "{key}");
        }
        assert_eq!(
            (&json["node"], &json["uptime_s"]),
            (&"a:1".into(), &8.into())
        );
        let reasons = &json["handshake_failures_by_reason"];
        assert_eq!(
            reasons.as_object().map(|m| m.len()),
            Some(HandshakeFailure::ALL.len())
        );
        assert_eq!(reasons[HandshakeFailure::TooManyRequests.label()], 1);
        let text = metrics_text(&stats, &hub);
        for line in [
            "edgepush_connections 1\n",
            "edgepush_worker_connections{worker=\"0\"} 0\n",
            "edgepush_worker_connections{worker=\"1\"} 1\n",
            "edgepush_accepted_total 3\n",
            "edgepush_channels 4\n",
            "edgepush_history_bytes 7\n",
            "edgepush_publish_latency_seconds_count 0\n",
        ] {
            assert!(text.contains(line), "{line}");
        }
    }
}
