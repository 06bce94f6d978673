//! A hashed timer wheel: every timeout of one event-loop thread (handshake, ping, pong, close)
//! lives here as a small `Copy` item filed under its deadline tick.
//!
//! Why a wheel: insertion is O(1) and a connection owns no timer object. Re-arming a timeout
//! just inserts a new entry; the old one is never searched for or removed. When an entry fires,
//! the caller checks the item (typically a connection handle with a generation plus the deadline
//! it was armed for) against the connection's current state and ignores it if stale. That makes
//! a stale entry cost one comparison when it fires, instead of a removal on every re-arm.
//!
//! Layout: `slots` buckets (a power of two), each a `Vec` of entries. An entry with deadline
//! tick `d` lives in bucket `d & mask` and remembers `d`, so entries that are one or more
//! revolutions away share a bucket with nearer ones and are kept until their round comes.
//!
//! Time: exactly one function, [`TimerWheel::tick_of`], turns an [`Instant`] into ticks. It
//! rounds up, so a deadline filed under tick `d` is at or before the boundary of tick `d`;
//! [`TimerWheel::advance`] only processes tick `d` once `now` has reached that boundary. Hence
//! a timer never fires early, and at most one tick late (plus the caller's own latency).

use std::time::{Duration, Instant};

/// One timer: the item and the tick it is due at. [`TimerWheel::advance`] hands fired timers
/// back with their deadline, so items need not repeat it (a connection's entry is 16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<T> {
    /// The due tick, counted from the wheel's start in units of its tick length (10 ms in the
    /// server), as [`TimerWheel::tick_of`] computes it.
    pub deadline: u64,
    /// What to do when due; checked by the caller for staleness, never removed early.
    pub item: T,
}

/// One bucket of the wheel.
#[derive(Debug)]
struct Slot<T> {
    entries: Vec<Entry<T>>,
    /// The smallest `deadline` in `entries`, `u64::MAX` when empty. Kept exact: lowered on
    /// insert, recomputed whenever the bucket is filtered (the only way entries leave it).
    min_deadline: u64,
}

impl<T> Slot<T> {
    fn new() -> Self {
        Slot {
            entries: Vec::new(),
            min_deadline: u64::MAX,
        }
    }
}

/// A hashed timer wheel holding `Copy` items (e.g. connection handle + timer kind).
///
/// Driver contract, per event-loop turn:
/// 1. sleep in `poll` for at most [`next_expiry_hint`](Self::next_expiry_hint) (rounded up to
///    the poller's resolution; mio rounds up to whole milliseconds),
/// 2. call [`advance`](Self::advance) with the current time,
/// 3. handle each fired item, skipping stale ones,
/// 4. [`insert`](Self::insert) new deadlines as connections re-arm.
#[derive(Debug)]
pub struct TimerWheel<T: Copy> {
    slots: Vec<Slot<T>>,
    /// `slots.len() - 1`; `slots.len()` is a power of two.
    mask: u64,
    /// Tick length in nanoseconds, at least 1.
    tick_nanos: u64,
    /// Instant of tick 0.
    start: Instant,
    /// The first tick not yet processed: every tick `< next` has been walked by `advance`.
    /// Invariant: every entry in `slots` has `deadline >= next`.
    next: u64,
    /// Entries inserted with a deadline tick `< next` (already due): fired by the next
    /// `advance` whatever its `now`.
    overdue: Vec<Entry<T>>,
    /// Reused buffer for the full sweep after a stall, so its entries can be put in deadline
    /// order before they are handed out.
    sweep: Vec<Entry<T>>,
    /// Number of live entries in `slots` and `overdue`.
    len: usize,
}

impl<T: Copy> TimerWheel<T> {
    /// A wheel whose tick 0 begins at `start`.
    ///
    /// `tick` is the resolution (clamped to at least 1 ns and at most `u64::MAX` ns); `slots`
    /// is rounded up to a power of two (at least 1). One revolution lasts `tick * slots`;
    /// choose it longer than the usual timeout so most entries fire on their first pass.
    pub fn new(tick: Duration, slots: usize, start: Instant) -> Self {
        let tick_nanos = u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX).max(1);
        let slots = slots
            .max(1)
            .checked_next_power_of_two()
            .unwrap_or(1 << (usize::BITS - 1));
        TimerWheel {
            slots: (0..slots).map(|_| Slot::new()).collect(),
            mask: slots as u64 - 1,
            tick_nanos,
            start,
            next: 0,
            overdue: Vec::new(),
            sweep: Vec::new(),
            len: 0,
        }
    }

    /// Ticks from `start` to `t`, rounded **up** and saturating (`0` for instants before
    /// `start`, `u64::MAX` beyond range).
    ///
    /// This is the only place an `Instant` becomes a tick. Rounding up means a deadline filed
    /// under `tick_of(deadline)` is never processed before `deadline` itself.
    pub fn tick_of(&self, t: Instant) -> u64 {
        let nanos = t.saturating_duration_since(self.start).as_nanos();
        let ticks = nanos.div_ceil(u128::from(self.tick_nanos));
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// The instant at which tick `tick` begins, or `None` if it is not representable.
    fn boundary(&self, tick: u64) -> Option<Instant> {
        let nanos = u128::from(tick) * u128::from(self.tick_nanos);
        let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
        // The remainder is below 10^9, so it fits in u32.
        let sub = (nanos % 1_000_000_000) as u32;
        self.start.checked_add(Duration::new(secs, sub))
    }

    /// The last tick whose boundary is at or before `now`: everything filed up to this tick is
    /// due. Derived from [`tick_of`](Self::tick_of), which rounds up, so this steps back one
    /// tick unless `now` lies exactly on a boundary.
    fn due_tick(&self, now: Instant) -> u64 {
        let up = self.tick_of(now);
        match self.boundary(up) {
            Some(b) if b <= now => up,
            _ => up.saturating_sub(1),
        }
    }

    /// Number of live entries (stale ones included until they fire).
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` when no entry is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Files `item` under `deadline_tick` (from [`tick_of`](Self::tick_of)). O(1).
    ///
    /// A deadline tick that has already been processed fires on the next
    /// [`advance`](Self::advance), whatever time that call passes.
    pub fn insert(&mut self, deadline_tick: u64, item: T) {
        let entry = Entry {
            deadline: deadline_tick,
            item,
        };
        if deadline_tick < self.next {
            self.overdue.push(entry);
        } else {
            let slot = &mut self.slots[(deadline_tick & self.mask) as usize];
            slot.min_deadline = slot.min_deadline.min(deadline_tick);
            slot.entries.push(entry);
        }
        self.len += 1;
    }

    /// Convenience for `insert(self.tick_of(deadline), item)`.
    pub fn insert_at(&mut self, deadline: Instant, item: T) {
        let tick = self.tick_of(deadline);
        self.insert(tick, item);
    }

    /// Moves every entry due at `now` into `fired`, appended in deadline order (entries with the
    /// same deadline in insertion order). Entries not yet due stay.
    ///
    /// Walks each tick from the last processed one up to `now`'s. If that would visit every
    /// bucket at least once (the loop stalled for a revolution or more), it instead sweeps each
    /// bucket exactly once, so the cost is bounded by the wheel size, not by the stall length.
    /// Allocates nothing unless something fires (then only `fired` may grow, and after a stall
    /// a reused internal buffer).
    pub fn advance(&mut self, now: Instant, fired: &mut Vec<Entry<T>>) {
        let before = fired.len();
        if !self.overdue.is_empty() {
            // Stable: equal deadlines keep insertion order.
            self.overdue.sort_by_key(|e| e.deadline);
            fired.append(&mut self.overdue);
        }

        let due = self.due_tick(now);
        if due >= self.next {
            let walk = due - self.next;
            if walk >= self.mask {
                self.sweep_all(due, fired);
            } else {
                for tick in self.next..=due {
                    let slot = &mut self.slots[(tick & self.mask) as usize];
                    // `min_deadline` is exact and every deadline here is `>= tick` (invariant),
                    // so this skips buckets with nothing due without touching their entries.
                    if slot.min_deadline <= due {
                        // Within one revolution the only due deadline in this bucket is `tick`
                        // itself, so the fired ones all share it: deadline order holds.
                        filter_slot(slot, due, fired);
                    }
                }
            }
            self.next = due.saturating_add(1);
        }
        self.len -= fired.len() - before;
    }

    /// Fires everything due at `due` from every bucket once, in deadline order.
    fn sweep_all(&mut self, due: u64, fired: &mut Vec<Entry<T>>) {
        let sweep = &mut self.sweep;
        for slot in &mut self.slots {
            if slot.min_deadline > due {
                continue;
            }
            let mut min = u64::MAX;
            slot.entries.retain(|e| {
                if e.deadline <= due {
                    sweep.push(*e);
                    false
                } else {
                    min = min.min(e.deadline);
                    true
                }
            });
            slot.min_deadline = min;
        }
        // Buckets were visited in index order, not deadline order; restore it (stable).
        sweep.sort_by_key(|e| e.deadline);
        fired.append(sweep);
    }

    /// How long the caller may sleep before the next entry is due: `None` when the wheel is
    /// empty, `Some(ZERO)` when something is already due.
    ///
    /// This is exact, not "until the next tick": it is the time from `now` to the boundary of
    /// the earliest pending deadline tick, i.e. the earliest instant at which `advance` would
    /// fire something. It never oversleeps a due entry. It never undersleeps either, apart from
    /// stale entries, which count as pending until they fire. Cost: it scans bucket minima
    /// from the current tick, stopping at the first bucket whose earliest entry is due in this
    /// revolution; at most one pass over the buckets, never over the entries.
    ///
    /// If the boundary lies beyond what `Instant` can represent, returns `Some(Duration::MAX)`.
    pub fn next_expiry_hint(&self, now: Instant) -> Option<Duration> {
        if self.len == 0 {
            return None;
        }
        if !self.overdue.is_empty() {
            return Some(Duration::ZERO);
        }
        let earliest = self.earliest_deadline()?;
        Some(match self.boundary(earliest) {
            Some(b) => b.saturating_duration_since(now),
            None => Duration::MAX,
        })
    }

    /// The smallest deadline tick in the buckets, or `None` if they are empty.
    fn earliest_deadline(&self) -> Option<u64> {
        let mut best = u64::MAX;
        let n = self.slots.len() as u64;
        for offset in 0..n {
            let tick = self.next.wrapping_add(offset);
            let min = self.slots[(tick & self.mask) as usize].min_deadline;
            if min == tick {
                // Every deadline is `>= next`; none in `next..tick` was found, so this is the
                // smallest.
                return Some(tick);
            }
            best = best.min(min);
        }
        (best != u64::MAX).then_some(best)
    }
}

/// Moves entries of `slot` with `deadline <= due` into `fired` (in their stored order) and
/// recomputes the bucket minimum from the entries that stay.
fn filter_slot<T: Copy>(slot: &mut Slot<T>, due: u64, fired: &mut Vec<Entry<T>>) {
    let mut min = u64::MAX;
    slot.entries.retain(|e| {
        if e.deadline <= due {
            fired.push(*e);
            false
        } else {
            min = min.min(e.deadline);
            true
        }
    });
    slot.min_deadline = min;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const TICK: Duration = Duration::from_millis(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn wheel(slots: usize) -> (TimerWheel<u32>, Instant) {
        let start = Instant::now();
        (TimerWheel::new(TICK, slots, start), start)
    }

    fn advance(w: &mut TimerWheel<u32>, now: Instant) -> Vec<u32> {
        let mut fired = Vec::new();
        w.advance(now, &mut fired);
        fired.into_iter().map(|e| e.item).collect()
    }

    #[test]
    fn slots_round_up_to_power_of_two() {
        let start = Instant::now();
        for (asked, got) in [(0, 1), (1, 1), (2, 2), (3, 4), (1000, 1024), (1024, 1024)] {
            let w: TimerWheel<u8> = TimerWheel::new(TICK, asked, start);
            assert_eq!(w.slots.len(), got, "asked {asked}");
            assert_eq!(w.mask, got as u64 - 1);
        }
    }

    #[test]
    fn tick_of_rounds_up_and_saturates() {
        let (w, start) = wheel(8);
        let cases = [
            (Duration::ZERO, 0),
            (Duration::from_nanos(1), 1),
            (ms(10), 1),
            (ms(10) + Duration::from_nanos(1), 2),
            (ms(19), 2),
            (ms(20), 2),
            (Duration::from_secs(3600), 360_000),
        ];
        for (offset, tick) in cases {
            assert_eq!(w.tick_of(start + offset), tick, "offset {offset:?}");
        }
        if let Some(before) = start.checked_sub(ms(50)) {
            assert_eq!(w.tick_of(before), 0);
        }
        let fine: TimerWheel<u8> = TimerWheel::new(Duration::from_nanos(1), 8, start);
        assert_eq!(fine.tick_of(start + Duration::from_secs(1)), 1_000_000_000);
        // A zero tick is clamped to 1 ns rather than dividing by zero.
        let zero: TimerWheel<u8> = TimerWheel::new(Duration::ZERO, 8, start);
        assert_eq!(zero.tick_of(start + Duration::from_nanos(7)), 7);
    }

    #[test]
    fn fires_at_deadline_never_before() {
        // Deadlines on and off tick boundaries; check the nanosecond before and the deadline.
        for deadline in [ms(10), ms(15), ms(100), Duration::from_nanos(1), ms(9_999)] {
            let (mut w, start) = wheel(16);
            w.insert_at(start + deadline, 7);
            let just_before = start + deadline - Duration::from_nanos(1);
            assert_eq!(
                advance(&mut w, just_before),
                Vec::<u32>::new(),
                "{deadline:?}"
            );
            // Fires at the first tick boundary at or after the deadline, not later.
            let boundary = start + TICK * w.tick_of(start + deadline) as u32;
            assert!(boundary >= start + deadline);
            if boundary > start + deadline {
                assert!(advance(&mut w, start + deadline).is_empty());
                assert!(advance(&mut w, boundary - Duration::from_nanos(1)).is_empty());
            }
            assert_eq!(advance(&mut w, boundary), vec![7], "{deadline:?}");
            assert!(w.is_empty());
            assert!(advance(&mut w, boundary + ms(1000)).is_empty());
        }
    }

    #[test]
    fn same_slot_different_rounds() {
        let (mut w, start) = wheel(8);
        // Ticks 3, 11, 19, 27 all share bucket 3.
        for (i, tick) in [27u64, 3, 19, 11].into_iter().enumerate() {
            w.insert(tick, i as u32);
        }
        assert_eq!(w.len(), 4);
        let mut got = Vec::new();
        for t in 0..=30u32 {
            let fired = advance(&mut w, start + TICK * t);
            match t {
                3 => assert_eq!(fired, vec![1]),
                11 => assert_eq!(fired, vec![3]),
                19 => assert_eq!(fired, vec![2]),
                27 => assert_eq!(fired, vec![0]),
                _ => assert!(fired.is_empty(), "tick {t}: {fired:?}"),
            }
            got.extend(fired);
        }
        assert_eq!(got.len(), 4);
        assert!(w.is_empty());
    }

    #[test]
    fn past_deadline_fires_on_next_advance() {
        let (mut w, start) = wheel(8);
        let now = start + ms(55);
        assert!(advance(&mut w, now).is_empty());
        // Tick 2 was processed by the advance above; tick 0 too.
        w.insert(2, 1);
        w.insert(0, 2);
        w.insert_at(now, 3); // tick 6: not processed yet, due at 60ms
        assert_eq!(w.next_expiry_hint(now), Some(Duration::ZERO));
        // Same `now` again: the overdue ones fire, the future one waits.
        assert_eq!(advance(&mut w, now), vec![2, 1]);
        assert_eq!(w.len(), 1);
        assert_eq!(w.next_expiry_hint(now), Some(ms(5)));
        assert_eq!(advance(&mut w, start + ms(60)), vec![3]);
    }

    #[test]
    fn big_jump_fires_everything_once() {
        let slots = 64;
        let (mut w, start) = wheel(slots);
        let revolution = slots as u64;
        let mut n = 0u32;
        for tick in (0..revolution * 3).step_by(5) {
            w.insert(tick, n);
            n += 1;
        }
        // One entry beyond the jump stays.
        w.insert(revolution * 10 + 3, 999);
        let far = start + TICK * (revolution * 10) as u32;
        let t0 = std::time::Instant::now();
        let fired = advance(&mut w, far);
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert_eq!(
            fired,
            (0..n).collect::<Vec<_>>(),
            "deadline order after sweep"
        );
        assert_eq!(w.len(), 1);
        assert!(advance(&mut w, far).is_empty());
        assert_eq!(w.next_expiry_hint(far), Some(TICK * 3));
        assert_eq!(advance(&mut w, far + TICK * 3), vec![999]);
        assert!(w.is_empty());

        // A jump of years on a fine wheel is one sweep, not billions of ticks.
        let mut fine: TimerWheel<u32> = TimerWheel::new(Duration::from_nanos(1), 1024, start);
        fine.insert(5, 1);
        fine.insert(1 << 40, 2);
        let t0 = std::time::Instant::now();
        let mut out = Vec::new();
        fine.advance(start + Duration::from_secs(86_400 * 365), &mut out);
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert_eq!(
            out,
            vec![
                Entry {
                    deadline: 5,
                    item: 1
                },
                Entry {
                    deadline: 1 << 40,
                    item: 2
                }
            ]
        );
    }

    #[test]
    fn fired_in_deadline_then_insertion_order() {
        let (mut w, start) = wheel(16);
        w.insert(4, 40);
        w.insert(2, 20);
        w.insert(4, 41);
        w.insert(3, 30);
        w.insert(2, 21);
        w.insert(20, 200); // same bucket as 4, next round
        assert_eq!(advance(&mut w, start + TICK * 10), vec![20, 21, 30, 40, 41]);
        assert_eq!(advance(&mut w, start + TICK * 20), vec![200]);
    }

    #[test]
    fn len_bookkeeping_and_hint() {
        let (mut w, start) = wheel(8);
        assert!(w.is_empty());
        assert_eq!(w.next_expiry_hint(start), None);
        w.insert(5, 1);
        w.insert(5, 2);
        w.insert(100, 3);
        assert_eq!(w.len(), 3);
        assert_eq!(w.next_expiry_hint(start), Some(TICK * 5));
        assert_eq!(w.next_expiry_hint(start + ms(12)), Some(ms(38)));
        // Past the boundary but before advance: zero, not negative.
        assert_eq!(w.next_expiry_hint(start + ms(70)), Some(Duration::ZERO));
        assert_eq!(advance(&mut w, start + ms(50)).len(), 2);
        assert_eq!(w.len(), 1);
        assert!(!w.is_empty());
        // Only a far-round entry left: the hint points at it, not at the end of a revolution.
        assert_eq!(w.next_expiry_hint(start + ms(50)), Some(ms(950)));
        assert_eq!(advance(&mut w, start + ms(1000)), vec![3]);
        assert_eq!(w.len(), 0);
        assert_eq!(w.next_expiry_hint(start + ms(1000)), None);
    }

    #[test]
    fn no_allocation_when_nothing_fires() {
        let (mut w, start) = wheel(8);
        w.insert(1000, 1);
        let mut fired = Vec::new();
        for t in 0..100u32 {
            w.advance(start + TICK * t, &mut fired);
        }
        assert!(fired.is_empty());
        assert_eq!(fired.capacity(), 0);
    }

    /// xorshift64*: enough randomness for a model test, no dependency.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn boundary_of(start: Instant, tick: Duration, t: u64) -> Instant {
        start + Duration::from_nanos(t * tick.as_nanos() as u64)
    }

    #[test]
    fn randomized_against_btreemap_model() {
        for seed in 1..=20u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let slots = 1usize << rng.below(7); // 1..=64 buckets
            let tick = Duration::from_micros(1 + rng.below(5000));
            let start = Instant::now();
            let mut w: TimerWheel<u32> = TimerWheel::new(tick, slots, start);
            // Model: deadline instant -> items in insertion order; `fired` when the boundary
            // of tick_of(deadline) has been reached.
            let mut model: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
            let mut now_ns: u64 = 0;
            let mut next_item = 0u32;
            let mut fired = Vec::new();
            for _step in 0..3000 {
                match rng.below(10) {
                    0..=5 => {
                        // Insert: sometimes past, mostly near, sometimes many rounds away.
                        let span = tick.as_nanos() as u64 * slots as u64;
                        let offset = match rng.below(10) {
                            0 => 0,
                            1..=6 => rng.below(span * 2 + 1),
                            _ => rng.below(span * 20 + 1),
                        };
                        let at = if rng.below(8) == 0 {
                            now_ns.saturating_sub(offset)
                        } else {
                            now_ns + offset
                        };
                        let deadline_tick = w.tick_of(start + Duration::from_nanos(at));
                        w.insert(deadline_tick, next_item);
                        model.entry(at).or_default().push(next_item);
                        next_item += 1;
                    }
                    _ => {
                        // Advance by anything from nothing to several revolutions.
                        let span = tick.as_nanos() as u64 * slots as u64;
                        now_ns += match rng.below(10) {
                            0 => 0,
                            1..=7 => rng.below(tick.as_nanos() as u64 * 3),
                            _ => rng.below(span * 12),
                        };
                        let now = start + Duration::from_nanos(now_ns);
                        // Hint check before advancing: sleeping the hint must not pass a due
                        // entry, i.e. nothing becomes due strictly before `now + hint`.
                        if let Some(hint) = w.next_expiry_hint(now) {
                            if let Some((&first, _)) = model.iter().next() {
                                let t = w.tick_of(start + Duration::from_nanos(first));
                                let boundary = boundary_of(start, tick, t);
                                // Exact: neither oversleeps nor wakes before anything is due.
                                assert_eq!(now + hint, boundary.max(now), "seed {seed}");
                            }
                        }
                        fired.clear();
                        w.advance(now, &mut fired);
                        // Everything in the model whose deadline tick boundary <= now is due.
                        let mut expected: Vec<(u64, u32)> = Vec::new();
                        let due: Vec<u64> = model
                            .keys()
                            .copied()
                            .filter(|&at| {
                                let t = w.tick_of(start + Duration::from_nanos(at));
                                boundary_of(start, tick, t) <= now
                            })
                            .collect();
                        for at in due {
                            let t = w.tick_of(start + Duration::from_nanos(at));
                            for item in model.remove(&at).unwrap_or_default() {
                                expected.push((t, item));
                            }
                        }
                        // Never early, never missed, each with its own deadline tick; order is
                        // by deadline tick, so compare as sets and check the output's order.
                        let got: Vec<(u64, u32)> =
                            fired.iter().map(|e| (e.deadline, e.item)).collect();
                        let mut got_sorted = got.clone();
                        got_sorted.sort_unstable();
                        expected.sort_unstable();
                        assert_eq!(got_sorted, expected, "seed {seed}");
                        assert!(got.windows(2).all(|p| p[0].0 <= p[1].0), "seed {seed}");
                        let model_len: usize = model.values().map(Vec::len).sum();
                        assert_eq!(w.len(), model_len, "seed {seed}");
                    }
                }
            }
        }
    }
}
