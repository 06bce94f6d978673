//! Measurement primitives: HDR histograms that travel between processes as raw bucket counts,
//! percentile extraction, per-subscriber sequence accounting and the cheap `seq`/`t` scanner.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest value a histogram tracks: one hour in nanoseconds (larger values saturate).
pub const HIST_MAX_NS: u64 = 3_600_000_000_000;

/// A latency histogram in nanoseconds, 3 significant figures.
pub fn new_hist() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("constant histogram bounds are valid")
}

/// A histogram as raw `[value, count]` pairs (each value the highest equivalent value of its
/// bucket), the form children send to the parent.
pub type HistData = Vec<[u64; 2]>;

pub fn hist_to_data(h: &Histogram<u64>) -> HistData {
    h.iter_recorded()
        .map(|v| [v.value_iterated_to(), v.count_at_value()])
        .collect()
}

/// Adds serialized counts into `h` (values past the range saturate at its top).
pub fn merge_data(h: &mut Histogram<u64>, data: &[[u64; 2]]) {
    for [value, count] in data {
        h.saturating_record_n(*value, *count);
    }
}

/// The figures a summary shows for one distribution, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles {
            count: 0,
            p50: 0.0,
            p90: 0.0,
            p99: 0.0,
            p99_9: 0.0,
            max: 0.0,
            mean: 0.0,
        };
    }
    Percentiles {
        count: h.len(),
        p50: us(h.value_at_quantile(0.5)),
        p90: us(h.value_at_quantile(0.9)),
        p99: us(h.value_at_quantile(0.99)),
        p99_9: us(h.value_at_quantile(0.999)),
        max: us(h.max()),
        mean: (h.mean() / 100.0).round() / 10.0,
    }
}

/// The percentile curve for a chart: `[quantile, microseconds]` at points spaced evenly in
/// log(1/(1-q)) from 0 to 99.99 %, plus the maximum.
pub fn curve(h: &Histogram<u64>) -> Vec<[f64; 2]> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for step in 0..=40 {
        // 10 points per decade of "nines": q = 1 - 10^(-step/10).
        let q = 1.0 - 10f64.powf(-(step as f64) / 10.0);
        out.push([q, us(h.value_at_quantile(q))]);
    }
    out.push([1.0, us(h.max())]);
    out
}

/// Per-subscriber accounting of the `seq`s it received: duplicates, out-of-order arrivals and
/// (at the end) how many are missing. One bit per expected message.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    bits: Vec<u64>,
    capacity: u64,
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub out_of_range: u64,
    /// Set by the owner for subscribers whose figures count.
    pub active: bool,
    highest: Option<u64>,
}

impl SeqTracker {
    /// Tracks `seq`s `0..capacity`.
    pub fn new(capacity: u64) -> Self {
        SeqTracker {
            bits: vec![0; capacity.div_ceil(64) as usize],
            capacity,
            ..SeqTracker::default()
        }
    }

    pub fn record(&mut self, seq: u64) {
        if seq >= self.capacity {
            self.out_of_range += 1;
            return;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        let Some(w) = self.bits.get_mut(word) else {
            self.out_of_range += 1;
            return;
        };
        if *w & bit != 0 {
            self.duplicates += 1;
            return;
        }
        *w |= bit;
        self.received += 1;
        match self.highest {
            Some(h) if seq < h => self.out_of_order += 1,
            _ => self.highest = Some(seq),
        }
    }

    /// How many of `0..published` never arrived.
    pub fn missing(&self, published: u64) -> u64 {
        let published = published.min(self.capacity);
        let full_words = (published / 64) as usize;
        let mut have: u64 = self.bits[..full_words]
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rest = published % 64;
        if rest > 0 {
            if let Some(w) = self.bits.get(full_words) {
                have += u64::from((w & ((1u64 << rest) - 1)).count_ones());
            }
        }
        published - have
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let last_start = hay.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        match hay[i..=last_start].iter().position(|&b| b == first) {
            None => return None,
            Some(off) => {
                let at = i + off;
                if &hay[at..at + needle.len()] == needle {
                    return Some(at);
                }
                i = at + 1;
            }
        }
    }
    None
}

/// Does `hay` contain `needle`?
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

fn number_after(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(hay, key)? + key.len();
    let mut rest = &hay[at..];
    while let [b' ' | b'\t' | b'\n' | b'\r', tail @ ..] = rest {
        rest = tail;
    }
    let mut n: u64 = 0;
    let mut digits = 0;
    for &b in rest {
        if !b.is_ascii_digit() {
            break;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some(n)
}

/// Finds our `seq` and `t` in a delivered message without a JSON parse. Accepts the server's
/// wrapped form `{"op":"message","channel":…,"seq":N,"data":{"seq":i,"t":T,…}}` (the numbers
/// are read inside `data`, so the channel's own `seq` is ignored) and the bare `{"seq":i,"t":T,…}`.
pub fn scan_seq_t(msg: &[u8]) -> Option<(u64, u64)> {
    let head = &msg[..msg.len().min(48)];
    let body = if contains(head, b"\"op\"") {
        let at = find(msg, b"\"data\"")? + 6;
        &msg[at..]
    } else {
        msg
    };
    let seq = number_after(body, b"\"seq\":")?;
    let t = number_after(body, b"\"t\":")?;
    Some((seq, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_data_round_trips_and_merges() {
        let mut a = new_hist();
        let mut b = new_hist();
        for v in 1..=1000u64 {
            a.record(v * 1000).unwrap();
        }
        for v in 1001..=2000u64 {
            b.record(v * 1000).unwrap();
        }
        let mut merged = new_hist();
        // Through JSON, as between processes.
        for h in [&a, &b] {
            let line = serde_json::to_string(&hist_to_data(h)).unwrap();
            let data: HistData = serde_json::from_str(&line).unwrap();
            merge_data(&mut merged, &data);
        }
        let mut direct = new_hist();
        direct.add(&a).unwrap();
        direct.add(&b).unwrap();
        assert_eq!(merged.len(), 2000);
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(
                merged.value_at_quantile(q),
                direct.value_at_quantile(q),
                "q {q}"
            );
        }
        assert_eq!(merged.max(), direct.max());
    }

    #[test]
    fn percentile_extraction() {
        let mut h = new_hist();
        for v in 1..=10_000u64 {
            h.record(v * 1000).unwrap(); // 1 µs .. 10 ms
        }
        let p = percentiles(&h);
        assert_eq!(p.count, 10_000);
        let close = |got: f64, want: f64| (got - want).abs() / want < 0.002;
        assert!(close(p.p50, 5000.0), "{p:?}");
        assert!(close(p.p90, 9000.0), "{p:?}");
        assert!(close(p.p99, 9900.0), "{p:?}");
        assert!(close(p.p99_9, 9990.0), "{p:?}");
        assert!(close(p.max, 10_000.0), "{p:?}");
        assert!(close(p.mean, 5000.5), "{p:?}");
        assert_eq!(percentiles(&new_hist()).count, 0);
        let c = curve(&h);
        assert!(c.windows(2).all(|w| w[0][1] <= w[1][1]));
        assert_eq!(c.last().map(|p| p[0]), Some(1.0));
    }

    #[test]
    fn seq_accounting() {
        let mut t = SeqTracker::new(100);
        for s in [0, 1, 2, 4, 3, 3, 5, 150] {
            t.record(s);
        }
        assert_eq!(t.received, 6);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.out_of_order, 1); // 3 after 4
        assert_eq!(t.out_of_range, 1);
        assert_eq!(t.missing(6), 0);
        assert_eq!(t.missing(10), 4);
        assert_eq!(t.missing(100), 94);
        assert_eq!(t.missing(1000), 94); // capped at capacity

        let mut clean = SeqTracker::new(200);
        (0..200).for_each(|s| clean.record(s));
        assert_eq!(
            (
                clean.missing(200),
                clean.duplicates,
                clean.out_of_order,
                clean.received
            ),
            (0, 0, 0, 200)
        );
        let mut gaps = SeqTracker::new(130);
        (0..130).filter(|s| s % 2 == 0).for_each(|s| gaps.record(s));
        assert_eq!(gaps.missing(130), 65);
        assert_eq!(gaps.missing(64), 32);
        assert_eq!(gaps.missing(65), 32);
        assert_eq!(SeqTracker::new(0).missing(5), 0);
    }

    #[test]
    fn scanner_reads_both_forms() {
        assert_eq!(
            scan_seq_t(br#"{"seq":7,"t":123456789,"pad":"xxxx"}"#),
            Some((7, 123456789))
        );
        assert_eq!(
            scan_seq_t(
                br#"{"op":"message","channel":"news","seq":9918,"data":{"seq":3,"t":42,"pad":"x"}}"#
            ),
            Some((3, 42))
        );
        assert_eq!(
            scan_seq_t(br#"{"op": "message", "seq": 5, "data": {"seq": 11, "t": 99}}"#),
            Some((11, 99))
        );
        assert_eq!(scan_seq_t(br#"{"t":1}"#), None);
        assert_eq!(scan_seq_t(br#"{"seq":"a","t":1}"#), None);
        assert_eq!(
            scan_seq_t(br#"{"seq":99999999999999999999999,"t":1}"#),
            None
        );
        assert_eq!(
            scan_seq_t(br#"{"op":"subscribed","channel":"x","seq":4}"#),
            None
        );
        assert_eq!(scan_seq_t(b""), None);
        assert!(contains(b"abc\"op\":\"x\"", b"\"op\""));
        assert!(!contains(b"ab", b"abc"));
    }
}
