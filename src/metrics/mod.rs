//! The figures operators watch: [`Stats`], the counters and gauges shared by the workers and
//! the hub (relaxed atomics — figures, not synchronisation), with counts by close code and by
//! handshake failure and a fixed-bucket latency histogram. Their rendering for `GET /metrics`
//! (Prometheus text) and `GET /api/stats` (JSON) is [`render`]'s.

pub mod render;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use crate::tls::TlsFailure;
pub use render::Exposition;

/// Close codes counted by name; anything else is counted as "other".
pub const CLOSE_CODES: [u16; 10] = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 4000, 4001];

/// Counts per close code.
#[derive(Debug, Default)]
pub struct CloseCodes {
    counts: [AtomicU64; CLOSE_CODES.len() + 1],
}

impl CloseCodes {
    /// Counts one close frame with `code` (under "other" if not in [`CLOSE_CODES`]).
    pub fn add(&self, code: u16) {
        let i = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_CODES.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The count for `code`; 0 for a code not in [`CLOSE_CODES`].
    pub fn get(&self, code: u16) -> u64 {
        CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| self.counts[i].load(Ordering::Relaxed))
    }

    fn samples(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.counts.iter().enumerate().map(|(i, n)| {
            let code = CLOSE_CODES
                .get(i)
                .map_or_else(|| "other".to_owned(), u16::to_string);
            (code, n.load(Ordering::Relaxed))
        })
    }
}

/// Why an upgrade did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// 400 (and any status not named below).
    BadRequest,
    /// 401.
    Unauthorized,
    /// 403.
    Forbidden,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 426: not `Sec-WebSocket-Version: 13`.
    UpgradeRequired,
    /// 429: a per-address limit.
    TooManyRequests,
    /// 431.
    HeadTooLarge,
    /// 503: draining or full.
    Unavailable,
    /// No complete request within `--handshake-timeout`.
    Timeout,
}

impl HandshakeFailure {
    const ALL: [HandshakeFailure; 10] = [
        HandshakeFailure::BadRequest,
        HandshakeFailure::Unauthorized,
        HandshakeFailure::Forbidden,
        HandshakeFailure::NotFound,
        HandshakeFailure::MethodNotAllowed,
        HandshakeFailure::UpgradeRequired,
        HandshakeFailure::TooManyRequests,
        HandshakeFailure::HeadTooLarge,
        HandshakeFailure::Unavailable,
        HandshakeFailure::Timeout,
    ];

    /// The failure an HTTP answer stands for.
    pub fn from_status(status: u16) -> HandshakeFailure {
        match status {
            401 => HandshakeFailure::Unauthorized,
            403 => HandshakeFailure::Forbidden,
            404 => HandshakeFailure::NotFound,
            405 => HandshakeFailure::MethodNotAllowed,
            426 => HandshakeFailure::UpgradeRequired,
            429 => HandshakeFailure::TooManyRequests,
            431 => HandshakeFailure::HeadTooLarge,
            503 => HandshakeFailure::Unavailable,
            _ => HandshakeFailure::BadRequest,
        }
    }

    /// The `reason` label value in `edgepush_handshake_failures_total`.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::BadRequest => "bad_request",
            HandshakeFailure::Unauthorized => "unauthorized",
            HandshakeFailure::Forbidden => "forbidden",
            HandshakeFailure::NotFound => "not_found",
            HandshakeFailure::MethodNotAllowed => "method_not_allowed",
            HandshakeFailure::UpgradeRequired => "version",
            HandshakeFailure::TooManyRequests => "rate_limited",
            HandshakeFailure::HeadTooLarge => "head_too_large",
            HandshakeFailure::Unavailable => "unavailable",
            HandshakeFailure::Timeout => "timeout",
        }
    }
}

/// Counts per [`HandshakeFailure`].
#[derive(Debug, Default)]
pub struct HandshakeFailures {
    counts: [AtomicU64; HandshakeFailure::ALL.len()],
}

impl HandshakeFailures {
    /// Counts one failure.
    pub fn add(&self, why: HandshakeFailure) {
        self.counts[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The count for `why`.
    pub fn get(&self, why: HandshakeFailure) -> u64 {
        self.counts[why as usize].load(Ordering::Relaxed)
    }
}

/// Bucket upper bounds of the publish-latency histogram, in microseconds.
const LATENCY_BOUNDS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// A latency histogram with fixed buckets (cumulative only when rendered).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Counts one observation of `d` (saturating at `u64::MAX` microseconds).
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_US.partition_point(|b| *b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The sum of every observation so far, in microseconds: with [`Histogram::count`], the
    /// mean over any interval from two readings.
    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Ordering::Relaxed)
    }
}

/// Counters shared by all workers (relaxed atomics: figures, not synchronisation).
#[derive(Debug, Default)]
pub struct Stats {
    /// Open WebSocket connections.
    pub(crate) open: AtomicUsize,
    /// Open WebSocket connections per worker.
    pub(crate) worker_open: Vec<AtomicUsize>,
    /// SIGTERM/SIGINT arrived: `/healthz` and new upgrades get 503.
    pub draining: AtomicBool,
    /// Cluster mode: this node cannot reach Redis. `/healthz` and new push upgrades get 503,
    /// client `subscribe` and `publish` ops error 503; open connections and `/echo` go on.
    pub store_down: AtomicBool,
    /// Cluster mode (`--redis`): the figures report the Redis link.
    pub clustered: AtomicBool,
    /// Cluster mode: times this node's links to Redis went down.
    pub store_outages: AtomicU64,
    /// Cluster mode: round trips of the command link to Redis, one per pipelined batch of ops
    /// (its scripts' run time included) or idle `PING`. Shared with the link's thread.
    pub redis_latency: Arc<Histogram>,
    /// Failed upgrades by reason.
    pub handshake_failure_reasons: HandshakeFailures,
    /// Close frames sent, by code.
    pub close_sent: CloseCodes,
    /// Close frames received, by code.
    pub close_received: CloseCodes,
    /// Data frames queued for clients (echoes, replies and fan-out deliveries).
    pub messages_out: AtomicU64,
    /// From the hub taking a message to the worker having written it to every local
    /// recipient's socket (or queue).
    pub publish_latency: Histogram,
    /// TCP connections accepted on the public listener.
    pub accepted: AtomicU64,
    /// Successful WebSocket upgrades.
    pub upgrades: AtomicU64,
    /// Upgrades refused or timed out (the sum of `handshake_failure_reasons`).
    pub handshake_failures: AtomicU64,
    /// Connections failed for breaking RFC 6455.
    pub protocol_errors: AtomicU64,
    /// Messages received from clients.
    pub messages_in: AtomicU64,
    /// Connections closed with 1008 at `--max-backlog`.
    pub slow_consumers: AtomicU64,
    /// Connections dropped for silence after a ping.
    pub pong_timeouts: AtomicU64,
    /// Times a worker paused accepting after EMFILE/ENFILE.
    pub accept_pauses: AtomicU64,
    /// Channel subscriptions held (not counting `$user`).
    pub subscriptions: AtomicUsize,
    /// Frames queued for push connections by fan-out.
    pub deliveries: AtomicU64,
    /// Bytes read from clients.
    pub bytes_in: AtomicU64,
    /// Bytes written to clients.
    pub bytes_out: AtomicU64,
    /// API requests refused with 503 because workers' inboxes were full.
    pub api_overloaded: AtomicU64,
    /// Upstream requests (`--upstream`) by how they ended.
    pub upstream_outcomes: UpstreamOutcomes,
    /// From handing an upstream request to a connection to its answer (or failure).
    pub upstream_latency: Histogram,
    /// Upstream requests in flight, all workers.
    pub upstream_in_flight: AtomicUsize,
    /// Actions waiting for their turn (behind their connection's request in flight, or for a
    /// place under `--upstream-max-inflight`), all workers.
    pub upstream_queued: AtomicUsize,
    /// TLS handshakes finished on the public listener (`--tls-cert`).
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes failed, by reason.
    pub tls_failures: TlsFailures,
}

/// Counts per [`TlsFailure`].
#[derive(Debug, Default)]
pub struct TlsFailures {
    counts: [AtomicU64; TlsFailure::ALL.len()],
}

impl TlsFailures {
    /// Counts one failure.
    pub fn add(&self, why: TlsFailure) {
        self.counts[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The count for `why`.
    pub fn get(&self, why: TlsFailure) -> u64 {
        self.counts[why as usize].load(Ordering::Relaxed)
    }

    /// Failures of every reason.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    fn samples(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        TlsFailure::ALL
            .iter()
            .map(|f| (f.label().to_owned(), self.get(*f)))
    }
}

/// Counts per upstream [`Outcome`](crate::upstream::Outcome).
#[derive(Debug, Default)]
pub struct UpstreamOutcomes {
    counts: [AtomicU64; crate::upstream::Outcome::ALL.len()],
}

impl UpstreamOutcomes {
    /// Counts one request that ended so.
    pub fn add(&self, outcome: crate::upstream::Outcome) {
        self.counts[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The count for `outcome`.
    pub fn get(&self, outcome: crate::upstream::Outcome) -> u64 {
        self.counts[outcome.index()].load(Ordering::Relaxed)
    }

    fn samples(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        crate::upstream::Outcome::ALL
            .iter()
            .map(|o| (o.label().to_owned(), self.get(*o)))
    }
}

impl Stats {
    /// Zeroed figures for `workers` event-loop threads.
    pub fn new(workers: usize) -> Stats {
        Stats {
            worker_open: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            ..Stats::default()
        }
    }

    /// Open WebSocket connections.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Open connections on each worker.
    pub fn open_by_worker(&self) -> Vec<usize> {
        self.worker_open
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    pub(crate) fn upgraded(&self, worker: usize) {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.upgrades.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = self.worker_open.get(worker) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn closed(&self, worker: usize) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(n) = self.worker_open.get(worker) {
            n.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Counts a transport handshake's outcome (TLS).
    pub(crate) fn transport_event(&self, event: crate::server::transport::TransportEvent) {
        use crate::server::transport::TransportEvent;
        match event {
            TransportEvent::HandshakeDone => {
                self.tls_handshakes.fetch_add(1, Ordering::Relaxed);
            }
            TransportEvent::HandshakeFailed(why) => self.tls_failures.add(why),
        }
    }

    pub(crate) fn handshake_failed(&self, why: HandshakeFailure) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
        self.handshake_failure_reasons.add(why);
    }
}
