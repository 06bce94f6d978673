//! The event loops' unit of time: a [`Tick`] is a count of timer-wheel ticks (10 ms each in
//! the server) since the loop started.
//!
//! Why a type: deadlines are compared, added and stored in a 32-bit short form across the
//! session, the router and the worker; with raw `u64`/`u32` each place did its own wrapping
//! arithmetic. Exactly one function turns an `Instant` into a tick:
//! [`crate::server::timer_wheel::TimerWheel::tick_of`] (rounding up, so a deadline is never
//! processed early). Everything sans IO (the session, the router) is given a `Tick` as `now` and
//! never reads a clock, so tests drive it in simulated time.

#![forbid(unsafe_code)]

use std::fmt;
use std::ops::Add;

/// A point in time, in ticks since the event loop's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Tick(pub u64);

/// The short form of a tick kept per connection (its low 32 bits): 4 bytes instead of 8 in
/// structs there are hundreds of thousands of. Only meaningful near a full [`Tick`]: within
/// 2³¹ ticks (about 248 days at 10 ms) of the `now` it is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShortTick(u32);

impl Tick {
    /// The latest representable tick: "never".
    pub const NEVER: Tick = Tick(u64::MAX);

    /// The short form of this tick.
    pub fn short(self) -> ShortTick {
        ShortTick(self.0 as u32)
    }

    /// Whole ticks from `earlier` to `self`; 0 if `earlier` is later.
    pub fn since(self, earlier: Tick) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Ticks elapsed since the short tick `earlier`, which must lie at most 2³² − 1 ticks in
    /// the past (it is read modulo 2³²).
    pub fn since_short(self, earlier: ShortTick) -> u64 {
        u64::from((self.0 as u32).wrapping_sub(earlier.0))
    }

    /// The full tick a short tick stands for, taken as the nearest one to `self` (within
    /// 2³¹ ticks either side).
    pub fn expand(self, short: ShortTick) -> Tick {
        let delta = short.0.wrapping_sub(self.0 as u32) as i32;
        Tick(self.0.wrapping_add_signed(i64::from(delta)))
    }
}

impl Add<u64> for Tick {
    type Output = Tick;
    /// `self` plus `ticks`, saturating at [`Tick::NEVER`].
    fn add(self, ticks: u64) -> Tick {
        Tick(self.0.saturating_add(ticks))
    }
}

impl fmt::Display for Tick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tick {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ticks_survive_wrapping() {
        for base in [0u64, 1000, u64::from(u32::MAX) - 5, 1 << 40] {
            let now = Tick(base + 10);
            let earlier = Tick(base);
            assert_eq!(now.since_short(earlier.short()), 10, "{base}");
            assert_eq!(now.expand(earlier.short()), earlier, "{base}");
            let later = now + 1_000_000;
            assert_eq!(now.expand(later.short()), later, "{base}");
        }
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Tick::NEVER + 5, Tick::NEVER);
        assert_eq!(Tick(3).since(Tick(9)), 0);
        assert_eq!(Tick(9).since(Tick(3)), 6);
        assert_eq!(Tick(4).min(Tick(2)), Tick(2));
    }
}
