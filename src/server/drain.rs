//! Drain pacing, sans IO: on SIGTERM a worker sends Close 1001 to every open connection
//! spread evenly over `--drain-duration` (so the clients' reconnects don't arrive at the other
//! nodes all at once), then waits up to `--drain-timeout` for the close handshakes.
//!
//! (In this crate "drain" means only this. Emptying a worker's inbox is "taking the inbox";
//! writing a connection's queue is "flushing".)

#![forbid(unsafe_code)]

use std::ops::Range;
use std::time::{Duration, Instant};

/// A drain in progress on one worker: the connections to close, in order, and when.
#[derive(Debug)]
pub struct DrainSchedule<T> {
    queue: Vec<T>,
    sent: usize,
    start: Instant,
    spread: Duration,
    /// After the last Close plus `--drain-timeout`: stop waiting for close handshakes.
    give_up: Instant,
}

impl<T: Copy> DrainSchedule<T> {
    /// Closes `queue` (the connections open at `start`) over `spread`, then waits `timeout`.
    pub fn new(queue: Vec<T>, start: Instant, spread: Duration, timeout: Duration) -> Self {
        DrainSchedule {
            queue,
            sent: 0,
            start,
            spread,
            give_up: start + spread + timeout,
        }
    }

    /// The connections whose Close is due by `now` and was not handed out before: by then
    /// `ceil(total × elapsed / spread)` of them are due (all at once for a zero spread).
    pub fn due(&mut self, now: Instant) -> &[T] {
        let total = self.queue.len();
        let due = if self.spread.is_zero() {
            total
        } else {
            // Integer arithmetic: exact, so the same instant always gives the same count.
            let elapsed = now.saturating_duration_since(self.start).as_nanos();
            let due = (total as u128 * elapsed).div_ceil(self.spread.as_nanos());
            usize::try_from(due).unwrap_or(usize::MAX).min(total)
        };
        let range: Range<usize> = self.sent..due.max(self.sent);
        self.sent = range.end;
        &self.queue[range]
    }

    /// True once every Close was handed out and either no connection is left open
    /// (`open_left == 0`) or the drain timeout passed: the worker may stop.
    pub fn is_over(&self, now: Instant, open_left: usize) -> bool {
        self.sent == self.queue.len() && (open_left == 0 || now >= self.give_up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_are_spread_evenly_and_each_handed_out_once() {
        let start = Instant::now();
        let spread = Duration::from_secs(10);
        let mut drain = DrainSchedule::new((0..100).collect(), start, spread, Duration::ZERO);
        let mut seen = Vec::new();
        for ms in (0..=10_000).step_by(250) {
            let now = start + Duration::from_millis(ms);
            let due = drain.due(now).to_vec();
            // At most the share of the elapsed time (rounded up), never ahead of it.
            seen.extend(due);
            let expected = (100 * ms as usize).div_ceil(10_000);
            assert_eq!(seen.len(), expected, "at {ms} ms");
        }
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        assert!(drain.due(start + spread * 2).is_empty());
    }

    #[test]
    fn zero_spread_closes_everyone_at_once() {
        let start = Instant::now();
        let mut drain = DrainSchedule::new(vec![1, 2, 3], start, Duration::ZERO, Duration::ZERO);
        assert_eq!(drain.due(start), &[1, 2, 3]);
        assert!(drain.due(start).is_empty());
    }

    #[test]
    fn over_when_all_closed_or_at_the_timeout() {
        let start = Instant::now();
        let (spread, timeout) = (Duration::from_secs(2), Duration::from_secs(3));
        let mut drain = DrainSchedule::new(vec![7, 8], start, spread, timeout);
        assert!(!drain.is_over(start, 0), "Closes still to send");
        let _ = drain.due(start + spread);
        assert!(drain.is_over(start + spread, 0), "nobody left");
        assert!(!drain.is_over(start + spread, 2), "waiting for handshakes");
        assert!(!drain.is_over(start + spread + timeout / 2, 1));
        assert!(drain.is_over(start + spread + timeout, 1), "gave up");
    }

    #[test]
    fn time_going_backwards_hands_out_nothing_twice() {
        let start = Instant::now();
        let mut drain = DrainSchedule::new(
            (0..10).collect(),
            start,
            Duration::from_secs(1),
            Duration::ZERO,
        );
        assert_eq!(drain.due(start + Duration::from_millis(500)).len(), 5);
        assert!(drain.due(start).is_empty());
    }
}
