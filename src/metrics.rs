//! The figures operators watch: counters and gauges shared by the workers and the hub (relaxed
//! atomics — figures, not synchronisation), a fixed-bucket latency histogram, and their
//! rendering in the Prometheus text format (version 0.0.4) for `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Close codes counted by name; anything else is counted as "other".
pub const CLOSE_CODES: [u16; 10] = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 4000, 4001];

/// Counts per close code.
#[derive(Debug, Default)]
pub struct CloseCodes {
    counts: [AtomicU64; CLOSE_CODES.len() + 1],
}

impl CloseCodes {
    pub fn add(&self, code: u16) {
        let i = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_CODES.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

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
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    UpgradeRequired,
    TooManyRequests,
    HeadTooLarge,
    Unavailable,
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
    pub fn add(&self, why: HandshakeFailure) {
        self.counts[why as usize].fetch_add(1, Ordering::Relaxed);
    }

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
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_US.partition_point(|b| *b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

/// Builds Prometheus text: one `# HELP`/`# TYPE` block per family.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, "gauge", help);
        let _ = writeln!(self.out, "{name} {value}");
    }

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

    pub fn close_codes(&mut self, name: &str, help: &str, codes: &CloseCodes) {
        self.labelled(name, "counter", help, "code", codes.samples());
    }

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

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
