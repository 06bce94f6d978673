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
/// (at the end) how many are missing. One bit per expected message. A logical subscriber keeps
/// one tracker across all its connections (`--reconnect-every`), so a message delivered on two
/// connections is a duplicate and one delivered on neither is missing.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    bits: Vec<u64>,
    /// `seq`s written off (see [`SeqTracker::write_off`]); allocated on first use.
    skipped: Vec<u64>,
    capacity: u64,
    pub received: u64,
    /// `seq`s written off and not received since: neither received nor missing.
    pub written_off: u64,
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
        if let Some(sk) = self.skipped.get_mut(word) {
            if *sk & bit != 0 {
                // Written off, yet it came: received after all.
                *sk &= !bit;
                self.written_off -= 1;
            }
        }
        match self.highest {
            Some(h) if seq < h => self.out_of_order += 1,
            _ => self.highest = Some(seq),
        }
    }

    /// Writes off the `seq`s of `range` not received yet: the server said it cannot replay them
    /// (`recovered:false`), so they count neither as received nor as missing. Returns how many
    /// were written off.
    pub fn write_off(&mut self, range: std::ops::Range<u64>) -> u64 {
        let end = range.end.min(self.capacity);
        if range.start >= end {
            return 0;
        }
        if self.skipped.is_empty() {
            self.skipped = vec![0; self.bits.len()];
        }
        let mut n = 0;
        for seq in range.start..end {
            let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
            if (self.bits[word] | self.skipped[word]) & bit == 0 {
                self.skipped[word] |= bit;
                n += 1;
            }
        }
        self.written_off += n;
        n
    }

    /// Received plus written off: what a subscriber has accounted for.
    pub fn accounted(&self) -> u64 {
        self.received + self.written_off
    }

    /// The `seq` after the highest received (0 before any).
    pub fn next_expected(&self) -> u64 {
        self.highest.map_or(0, |h| h + 1)
    }

    /// How many of `0..published` never arrived (written-off ones excepted).
    pub fn missing(&self, published: u64) -> u64 {
        let published = published.min(self.capacity);
        let word = |i: usize| self.bits[i] | self.skipped.get(i).copied().unwrap_or(0);
        let full_words = (published / 64) as usize;
        let mut have: u64 = (0..full_words)
            .map(|i| u64::from(word(i).count_ones()))
            .sum();
        let rest = published % 64;
        if rest > 0 && full_words < self.bits.len() {
            have += u64::from((word(full_words) & ((1u64 << rest) - 1)).count_ones());
        }
        published - have
    }
}

/// What a `subscribed` answer meant for a logical subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// Its first subscribe.
    First,
    /// `recovered:true`: the server replays what was missed.
    Recovered,
    /// `recovered:false` (or no answer to a `since`): nothing replayed; this many of our `seq`s
    /// were written off.
    NotRecovered { written_off: u64 },
}

/// A logical subscriber's recovery state across its connections (`fanout --reconnect-every`):
/// the channel's epoch, the highest channel `seq` it has seen (the `since` of its next
/// subscribe), and how channel `seq`s map to ours (data `seq`s `0..messages`).
///
/// The rule for `recovered:false`: the answer's `seq` S is the channel's top, and the server
/// sends only messages after S. So the channel `seq`s from our last seen + 1 through S are lost
/// for good; they map to our `seq`s through the offset (channel seq − our seq, learned from the
/// first `subscribed` — the first publish gets its `seq` + 1 — and then from every delivery) and
/// are written off in the tracker: not missing, not received. If the epoch changed (the channel
/// was recreated) the offset is unknown until the next delivery, so the write-off runs from
/// after our highest received `seq` up to that delivery.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub epoch: Option<String>,
    /// The highest channel `seq` seen (deliveries, the first answer, a `recovered:false` answer).
    pub top: u64,
    /// Channel `seq` − our `seq`.
    offset: Option<u64>,
    /// Deliveries with a channel `seq` up to this one are replays.
    replay_to: u64,
    /// After an epoch change: write off from this `seq` of ours up to the next delivery.
    gap_from: Option<u64>,
}

impl Recovery {
    /// The `subscribe` op: with `since`/`epoch` once an epoch is known.
    pub fn subscribe_frame(&self, channel: &str) -> Vec<u8> {
        let v = match &self.epoch {
            Some(e) => {
                serde_json::json!({"op": "subscribe", "channel": channel, "since": self.top, "epoch": e})
            }
            None => serde_json::json!({"op": "subscribe", "channel": channel}),
        };
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// A `subscribed` answer with `epoch`, `seq` (the channel's top) and `recovered`.
    pub fn on_subscribed(
        &mut self,
        t: &mut SeqTracker,
        epoch: &str,
        seq: u64,
        recovered: Option<bool>,
    ) -> Resumed {
        let Some(known) = &self.epoch else {
            self.epoch = Some(epoch.to_string());
            self.top = seq;
            self.replay_to = seq;
            self.offset.get_or_insert(seq + 1);
            return Resumed::First;
        };
        if recovered == Some(true) && known == epoch {
            self.replay_to = seq;
            return Resumed::Recovered;
        }
        let mut written_off = 0;
        if known != epoch {
            self.epoch = Some(epoch.to_string());
            self.offset = None;
            self.gap_from = Some(t.next_expected());
        } else if let Some(off) = self.offset {
            let lo = (self.top + 1).saturating_sub(off);
            let hi = (seq + 1).saturating_sub(off);
            written_off = t.write_off(lo..hi);
        }
        self.top = seq;
        self.replay_to = seq;
        Resumed::NotRecovered { written_off }
    }

    /// Records delivery `seq` (ours) carrying channel `seq` `chan`; true if it is a replay.
    pub fn on_delivery(&mut self, t: &mut SeqTracker, chan: Option<u64>, seq: u64) -> bool {
        let mut replayed = false;
        if let Some(c) = chan {
            replayed = c <= self.replay_to;
            if c >= seq {
                self.offset = Some(c - seq);
            }
            self.top = self.top.max(c);
        }
        if let Some(from) = self.gap_from.take() {
            t.write_off(from..seq);
        }
        t.record(seq);
        replayed
    }
}

/// The fields of a `subscribed` answer: epoch, seq, recovered.
pub fn parse_subscribed(msg: &[u8]) -> Option<(String, u64, Option<bool>)> {
    let v: serde_json::Value = serde_json::from_slice(msg).ok()?;
    Some((
        v.get("epoch")?.as_str()?.to_string(),
        v.get("seq")?.as_u64()?,
        v.get("recovered").and_then(serde_json::Value::as_bool),
    ))
}

/// The channel's `seq` of a wrapped delivery `{"op":"message","channel":…,"seq":N,"data":…}`.
pub fn scan_channel_seq(msg: &[u8]) -> Option<u64> {
    let at = find(msg, b"\"data\"")?;
    number_after(&msg[..at], b"\"seq\":")
}

impl SeqTracker {
    #[cfg(test)]
    fn is_written_off(&self, seq: u64) -> bool {
        self.skipped
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
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

/// A wrapped delivery `{"op":"message","channel":NAME,"seq":N,"data":{"seq":i,"t":T,…}}`
/// read without a JSON parse: the channel name's bytes (as written, between its quotes), the
/// channel's `seq`, and the `t` inside `data`. `None` for anything else (another op, a
/// broadcast without `seq`, data without `t`).
pub fn scan_delivery(msg: &[u8]) -> Option<(&[u8], u64, u64)> {
    const HEAD: &[u8] = br#"{"op":"message","channel":""#;
    let rest = msg.strip_prefix(HEAD)?;
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    if rest[end] != b'"' {
        return None; // an escaped name: not one of ours
    }
    let name = &rest[..end];
    let after = &rest[end..];
    let data = find(after, b"\"data\"")?;
    let seq = number_after(&after[..data], b"\"seq\":")?;
    let t = number_after(&after[data..], b"\"t\":")?;
    Some((name, seq, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_are_scanned_without_a_parse() {
        let msg =
            br#"{"op":"message","channel":"room-7","seq":42,"data":{"seq":3,"t":99,"pad":"x"}}"#;
        assert_eq!(scan_delivery(msg), Some((&b"room-7"[..], 42, 99)));
        let user = br#"{"op":"message","channel":"$user","seq":1,"data":{"seq":0,"t":5}}"#;
        assert_eq!(scan_delivery(user), Some((&b"$user"[..], 1, 5)));
        // A broadcast has no seq; other ops and escaped names are not deliveries we count.
        assert_eq!(
            scan_delivery(br#"{"op":"message","channel":"$broadcast","data":{"t":1}}"#),
            None
        );
        assert_eq!(
            scan_delivery(br#"{"op":"subscribed","channel":"all","seq":4}"#),
            None
        );
        assert_eq!(
            scan_delivery(br#"{"op":"message","channel":"a\"b","seq":1,"data":{"t":1}}"#),
            None
        );
        assert_eq!(
            scan_delivery(br#"{"op":"message","channel":"all","seq":1,"data":{}}"#),
            None
        );
    }

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

    /// A wrapped delivery of our `seq` carrying channel `seq` `chan`.
    fn deliver(r: &mut Recovery, t: &mut SeqTracker, chan: u64, seq: u64) -> bool {
        let msg = format!(
            r#"{{"op":"message","channel":"rc","seq":{chan},"data":{{"seq":{seq},"t":1,"pad":"x"}}}}"#
        );
        let c = scan_channel_seq(msg.as_bytes());
        assert_eq!(c, Some(chan));
        assert_eq!(scan_seq_t(msg.as_bytes()), Some((seq, 1)));
        r.on_delivery(t, c, seq)
    }

    #[test]
    fn reconnect_replay_then_live() {
        // The channel already holds 100 messages: ours are channel seqs 101.. (offset 101).
        let mut t = SeqTracker::new(50);
        let mut r = Recovery::default();
        assert_eq!(
            r.subscribe_frame("rc"),
            br#"{"channel":"rc","op":"subscribe"}"#.to_vec()
        );
        assert_eq!(r.on_subscribed(&mut t, "k3x9", 100, None), Resumed::First);
        for s in 0..10 {
            assert!(!deliver(&mut r, &mut t, 101 + s, s));
        }
        // Drop; resubscribe from the highest channel seq seen.
        let frame: serde_json::Value = serde_json::from_slice(&r.subscribe_frame("rc")).unwrap();
        assert_eq!(
            frame,
            serde_json::json!({"op":"subscribe","channel":"rc","since":110,"epoch":"k3x9"})
        );
        // Meanwhile 111..=115 were published: replayed, then live ones.
        assert_eq!(
            r.on_subscribed(&mut t, "k3x9", 115, Some(true)),
            Resumed::Recovered
        );
        for s in 10..15 {
            assert!(deliver(&mut r, &mut t, 101 + s, s), "replay {s}");
        }
        for s in 15..30 {
            assert!(!deliver(&mut r, &mut t, 101 + s, s), "live {s}");
        }
        // A second reconnect with nothing missed: since = top, no replay.
        assert_eq!(r.top, 130);
        assert_eq!(
            r.on_subscribed(&mut t, "k3x9", 130, Some(true)),
            Resumed::Recovered
        );
        for s in 30..50 {
            assert!(!deliver(&mut r, &mut t, 101 + s, s));
        }
        assert_eq!(
            (t.received, t.missing(50), t.duplicates, t.out_of_order),
            (50, 0, 0, 0)
        );
        assert_eq!(t.accounted(), 50);
    }

    #[test]
    fn duplicates_and_gaps_across_connections() {
        let mut t = SeqTracker::new(40);
        let mut r = Recovery::default();
        r.on_subscribed(&mut t, "e1", 0, None);
        for s in 0..10 {
            deliver(&mut r, &mut t, s + 1, s);
        }
        // A server that replays from too early: 8 and 9 again on the new connection.
        r.on_subscribed(&mut t, "e1", 12, Some(true));
        for s in 8..12 {
            deliver(&mut r, &mut t, s + 1, s);
        }
        assert_eq!((t.duplicates, t.out_of_order, t.received), (2, 0, 12));
        // One that skips 12 and sends 13.. after a recovered:true: 12 is missing.
        r.on_subscribed(&mut t, "e1", 12, Some(true));
        for s in 13..40 {
            deliver(&mut r, &mut t, s + 1, s);
        }
        assert_eq!(t.missing(40), 1);
        // A late 12 is out of order, not a duplicate.
        deliver(&mut r, &mut t, 13, 12);
        assert_eq!((t.missing(40), t.duplicates, t.out_of_order), (0, 2, 1));
    }

    #[test]
    fn not_recovered_writes_off_the_gap() {
        let mut t = SeqTracker::new(100);
        let mut r = Recovery::default();
        r.on_subscribed(&mut t, "e1", 5, None); // ours start at channel seq 6
        for s in 0..20 {
            deliver(&mut r, &mut t, s + 6, s);
        }
        // History too short: the channel is at 45 (our 39); 20..=39 are gone.
        assert_eq!(
            r.on_subscribed(&mut t, "e1", 45, Some(false)),
            Resumed::NotRecovered { written_off: 20 }
        );
        assert!(t.is_written_off(20) && t.is_written_off(39) && !t.is_written_off(40));
        assert_eq!(t.accounted(), 40);
        for s in 40..100 {
            assert!(!deliver(&mut r, &mut t, s + 6, s));
        }
        assert_eq!(
            (t.missing(100), t.written_off, t.received, t.duplicates),
            (0, 20, 80, 0)
        );
        // The next subscribe resumes from 105.
        let f: serde_json::Value = serde_json::from_slice(&r.subscribe_frame("c")).unwrap();
        assert_eq!(f["since"], 105);
        // Something missing on top of that still counts as missing.
        let mut t2 = SeqTracker::new(10);
        t2.write_off(2..4);
        [0, 1, 5, 6].into_iter().for_each(|s| t2.record(s));
        assert_eq!((t2.missing(10), t2.accounted()), (4, 6));
        // A written-off seq that arrives after all counts as received, not as written off.
        t2.record(3);
        assert_eq!((t2.written_off, t2.received, t2.missing(10)), (1, 5, 4));
        assert_eq!(t2.write_off(0..100), 4); // 4, 7, 8, 9 (capped at capacity)
    }

    #[test]
    fn not_recovered_after_epoch_change() {
        let mut t = SeqTracker::new(30);
        let mut r = Recovery::default();
        r.on_subscribed(&mut t, "old", 0, None);
        for s in 0..10 {
            deliver(&mut r, &mut t, s + 1, s);
        }
        // The channel was recreated: a new epoch, seqs restart; the offset is relearned.
        assert_eq!(
            r.on_subscribed(&mut t, "new", 3, Some(false)),
            Resumed::NotRecovered { written_off: 0 }
        );
        assert_eq!(r.epoch.as_deref(), Some("new"));
        for s in 15..30 {
            deliver(&mut r, &mut t, s - 11, s); // 15 is channel seq 4
        }
        assert_eq!((t.written_off, t.missing(30), t.received), (5, 0, 25));
        assert_eq!(
            parse_subscribed(
                br#"{"op":"subscribed","channel":"rc","epoch":"k3x9","seq":25,"recovered":false}"#
            ),
            Some(("k3x9".to_string(), 25, Some(false)))
        );
        assert_eq!(
            parse_subscribed(br#"{"op":"subscribed","channel":"rc","epoch":"a","seq":0}"#),
            Some(("a".to_string(), 0, None))
        );
        assert_eq!(parse_subscribed(b"{}"), None);
        assert_eq!(scan_channel_seq(br#"{"seq":1,"t":2}"#), None);
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
