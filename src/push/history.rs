//! One stream's held messages: what a reconnecting client can get back, and the rule that
//! decides whether it can. Shared by channels and `$user` streams; the in-memory broker's
//! global log (`hub::retention`) decides when a held message goes.

use crate::protocol::frame::SharedFrame;
use std::collections::VecDeque;

/// A held message: its seq and its encoded frame.
type Message = (u64, SharedFrame);

/// Held messages, oldest first and contiguous in seq. Behind one thin pointer, `None` when
/// empty, because most streams hold nothing.
#[derive(Debug, Default)]
#[allow(clippy::box_collection)]
pub struct Held(Option<Box<VecDeque<Message>>>);

impl Held {
    /// True when no message is held (and no memory either).
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|h| h.is_empty())
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |h| h.len())
    }

    /// The seq of the oldest held message; with [`Held::len`] it gives the range held,
    /// `oldest ..= oldest + len - 1`. `None` when empty.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.0.as_ref().and_then(|h| h.front()).map(|(s, _)| *s)
    }

    /// Keeps message `seq` (the next one) and returns how many are held now.
    pub fn push(&mut self, seq: u64, frame: SharedFrame) -> usize {
        let history = self.0.get_or_insert_with(Default::default);
        history.push_back((seq, frame));
        history.len()
    }

    /// Drops the oldest held message and returns its frame (so the caller can subtract its
    /// bytes from the history budget); frees the queue when it was the last. `None` when empty.
    pub fn pop_oldest(&mut self) -> Option<SharedFrame> {
        let history = self.0.as_mut()?;
        let popped = history.pop_front().map(|(_, frame)| frame);
        if history.is_empty() {
            self.0 = None;
        }
        popped
    }

    /// Drops everything; returns how many messages and frame bytes went.
    pub fn clear(&mut self) -> (usize, usize) {
        let held = self.0.take();
        held.map_or((0, 0), |h| (h.len(), h.iter().map(|(_, f)| f.len()).sum()))
    }

    /// Can a client that has everything up to `since` catch up to `top` from what is held?
    /// `Some(replay)` (the frames after `since`, possibly none) if so. The caller has already
    /// checked that the client's epoch is this stream's.
    pub fn recover(&self, top: u64, since: u64) -> Option<Vec<SharedFrame>> {
        if since > top {
            return None;
        }
        if since == top {
            return Some(Vec::new());
        }
        match self.oldest_seq() {
            Some(oldest) if oldest <= since + 1 => Some(
                self.0
                    .iter()
                    .flat_map(|h| h.iter())
                    .filter(|(s, _)| *s > since)
                    .map(|(_, f)| f.clone())
                    .collect(),
            ),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(seqs: std::ops::RangeInclusive<u64>) -> Held {
        let mut held = Held::default();
        for s in seqs {
            held.push(s, SharedFrame::from_encoded(&s.to_le_bytes()[..]));
        }
        held
    }

    #[test]
    fn recovers_only_a_contiguous_tail() {
        let h = held(4..=8);
        assert_eq!(h.recover(8, 8).map(|r| r.len()), Some(0));
        assert_eq!(h.recover(8, 3).map(|r| r.len()), Some(5));
        assert_eq!(h.recover(8, 6).map(|r| r.len()), Some(2));
        assert_eq!(h.recover(8, 2), None, "3 is gone");
        assert_eq!(h.recover(8, 9), None, "from the future");
        assert_eq!(Held::default().recover(5, 4), None);
        assert_eq!(Held::default().recover(0, 0).map(|r| r.len()), Some(0));
    }

    #[test]
    fn pops_and_clears_account_for_what_went() {
        let mut h = held(1..=3);
        assert_eq!(h.oldest_seq(), Some(1));
        assert!(h.pop_oldest().is_some());
        assert_eq!((h.len(), h.oldest_seq()), (2, Some(2)));
        assert_eq!(h.clear(), (2, 16));
        assert!(h.is_empty() && h.pop_oldest().is_none());
    }
}
