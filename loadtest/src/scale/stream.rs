//! The check of one stream (`all`, a room, or `$user`) as one client follows it across its
//! connections: under one epoch the channel `seq`s must arrive contiguous, each once, in
//! order (design.md, "Client protocol": replay then live, no gap, no duplicate). A gap is
//! remembered as a range until the end, so a late arrival inside it is told apart (out of
//! order) from a message seen twice (duplicate). `recovered:false` resyncs: the client takes
//! the new epoch and `seq` and goes on from there, and what it skipped is not missing.

/// Why a `subscribed` answer did not recover the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRecovered {
    /// The epoch differs from the one the client had: the channel was forgotten or Redis
    /// restarted.
    EpochChanged,
    /// Same epoch, but history no longer reaches back to what the client asked for.
    HistoryGone,
}

/// What a `subscribed` answer meant for the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribed {
    /// The stream's first answer: checking starts after its `seq`.
    First,
    /// `recovered:true` (or a fresh answer with the same epoch): the replay follows.
    Recovered,
    /// `recovered:false`: resynced to the new epoch and `seq`.
    Resynced(NotRecovered),
}

/// What one delivery was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The next message, live.
    Fresh,
    /// The next message, part of a replay after a reconnect (its latency is mostly the time
    /// the client was away).
    Replayed,
    /// A `seq` already received.
    Duplicate,
    /// A `seq` that had been skipped over and came late.
    OutOfOrder,
    /// A delivery before any `subscribed` for its stream.
    Unexpected,
}

/// One client's view of one stream. About 48 bytes plus the epoch's text.
#[derive(Debug, Clone, Default)]
pub struct StreamCheck {
    /// The epoch the client follows (`None` until the first `subscribed`).
    epoch: Option<Box<str>>,
    /// The highest `seq` received (or the base of the last `subscribed`).
    last: u64,
    /// Deliveries up to this `seq` are the replay after the last reconnect.
    replay_to: u64,
    /// `seq`s skipped over and not (yet) received: `(from, to)` inclusive ranges. Empty in a
    /// healthy run.
    gaps: Vec<(u64, u64)>,
}

impl StreamCheck {
    /// The epoch and highest `seq` to resume from (`since`/`epoch`), if started.
    pub fn resume(&self) -> Option<(&str, u64)> {
        self.epoch.as_deref().map(|e| (e, self.last))
    }

    /// A `subscribed` answer with `epoch`, `seq` (the channel's top) and `recovered`.
    pub fn on_subscribed(&mut self, epoch: &str, seq: u64, recovered: Option<bool>) -> Subscribed {
        let Some(have) = self.epoch.as_deref() else {
            self.epoch = Some(epoch.into());
            self.last = seq;
            self.replay_to = seq;
            return Subscribed::First;
        };
        let same = have == epoch;
        if same && recovered != Some(false) {
            // The server replays `last + 1 ..= seq` next.
            self.replay_to = seq;
            return Subscribed::Recovered;
        }
        let why = if same {
            NotRecovered::HistoryGone
        } else {
            NotRecovered::EpochChanged
        };
        if !same {
            self.epoch = Some(epoch.into());
        }
        // What was skipped is written off; gaps already seen stay missing.
        self.last = seq;
        self.replay_to = seq;
        Subscribed::Resynced(why)
    }

    /// A delivery with channel `seq`.
    pub fn on_delivery(&mut self, seq: u64) -> Delivery {
        if self.epoch.is_none() {
            return Delivery::Unexpected;
        }
        if seq > self.last {
            if seq > self.last + 1 {
                self.gaps.push((self.last + 1, seq - 1));
            }
            self.last = seq;
            return if seq <= self.replay_to {
                Delivery::Replayed
            } else {
                Delivery::Fresh
            };
        }
        match self.gaps.iter().position(|&(a, b)| a <= seq && seq <= b) {
            Some(i) => {
                let (a, b) = self.gaps.swap_remove(i);
                if a < seq {
                    self.gaps.push((a, seq - 1));
                }
                if seq < b {
                    self.gaps.push((seq + 1, b));
                }
                Delivery::OutOfOrder
            }
            None => Delivery::Duplicate,
        }
    }

    /// At the end, given the stream's last acknowledged `(epoch, seq)`: the messages never
    /// received (gaps, and the tail up to the top under the client's epoch), and whether the
    /// client ended on another epoch than the top's (then its tail cannot be counted).
    pub fn missing(&self, top: Option<(&str, u64)>) -> (u64, bool) {
        let gaps: u64 = self.gaps.iter().map(|&(a, b)| b - a + 1).sum();
        match (top, self.epoch.as_deref()) {
            (Some((epoch, seq)), Some(mine)) if epoch == mine => {
                (gaps + seq.saturating_sub(self.last), false)
            }
            (Some(_), Some(_)) => (gaps, true),
            _ => (gaps, false),
        }
    }

    /// Has the client everything up to `top` under the same epoch (or nothing to wait for)?
    pub fn caught_up(&self, top: Option<(&str, u64)>) -> bool {
        match (top, self.epoch.as_deref()) {
            (Some((epoch, seq)), Some(mine)) => epoch != mine || self.last >= seq,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_then_gap_late_duplicate() {
        let mut s = StreamCheck::default();
        assert_eq!(s.on_delivery(1), Delivery::Unexpected);
        assert_eq!(s.on_subscribed("e1", 10, None), Subscribed::First);
        assert_eq!(s.on_delivery(11), Delivery::Fresh);
        assert_eq!(s.on_delivery(12), Delivery::Fresh);
        assert_eq!(s.on_delivery(12), Delivery::Duplicate);
        assert_eq!(s.on_delivery(15), Delivery::Fresh); // 13, 14 skipped
        assert_eq!(s.missing(Some(("e1", 15))), (2, false));
        assert_eq!(s.on_delivery(14), Delivery::OutOfOrder);
        assert_eq!(s.on_delivery(14), Delivery::Duplicate);
        assert_eq!(s.missing(Some(("e1", 17))), (1 + 2, false));
        assert!(!s.caught_up(Some(("e1", 17))));
        assert!(s.caught_up(Some(("e1", 15))));
    }

    #[test]
    fn reconnect_replay_and_resync() {
        let mut s = StreamCheck::default();
        s.on_subscribed("e1", 0, None);
        s.on_delivery(1);
        assert_eq!(s.resume(), Some(("e1", 1)));
        // Back with since=1: the replay runs to 4, then live.
        assert_eq!(s.on_subscribed("e1", 4, Some(true)), Subscribed::Recovered);
        assert_eq!(s.on_delivery(2), Delivery::Replayed);
        assert_eq!(s.on_delivery(3), Delivery::Replayed);
        assert_eq!(s.on_delivery(4), Delivery::Replayed);
        assert_eq!(s.on_delivery(5), Delivery::Fresh);
        // History gone: resync at 9 (6..=9 written off), then 10 is fresh.
        assert_eq!(
            s.on_subscribed("e1", 9, Some(false)),
            Subscribed::Resynced(NotRecovered::HistoryGone)
        );
        assert_eq!(s.on_delivery(10), Delivery::Fresh);
        assert_eq!(s.missing(Some(("e1", 10))), (0, false));
        // A new epoch starts over from its seq.
        assert_eq!(
            s.on_subscribed("e2", 0, Some(false)),
            Subscribed::Resynced(NotRecovered::EpochChanged)
        );
        assert_eq!(s.on_delivery(1), Delivery::Fresh);
        assert_eq!(s.missing(Some(("e2", 3))), (2, false));
        assert_eq!(s.missing(Some(("e3", 3))), (0, true));
        assert!(s.caught_up(None));
    }
}
