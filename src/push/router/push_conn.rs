//! What one push-endpoint connection holds of the push protocol: its `$user` stream and join
//! point, its channel subscriptions, its token grant and its publish budget. The worker keeps
//! one per push connection (boxed in the connection), the [`Router`](super::Router) reads and
//! changes it; nothing here knows about sockets.
//!
//! Every idle push connection has one, so it is kept to 56 bytes (a 64-byte allocation): the
//! first subscription inline, and whatever most connections never need (a token, more
//! subscriptions, a publish budget) behind one pointer, allocated on first use.

use std::sync::Arc;

use crate::push::auth::Grants;
use crate::push::hub::UserId;
use crate::push::subscribers::Slot;
use crate::tick::{ShortTick, Tick};

/// What a push-endpoint connection is and holds (56 bytes; see the module doc).
#[derive(Debug, Default)]
pub struct PushConn {
    /// The hub's name for this connection's `$user` stream, once it answered the join.
    pub user: Option<UserId>,
    /// The `$user` top when this connection joined its stream: later messages came live.
    pub user_joined_at: JoinedAt,
    first_sub: Option<Subscription>,
    rare: Option<Box<RareState>>,
}

/// The part of a push connection's state that most connections never need.
#[derive(Debug, Default)]
struct RareState {
    grant: Option<TokenGrant>,
    more_subs: Vec<Subscription>,
    /// The current one-second publish window: its start tick (short form) and the publishes
    /// left in it. `None` until the first publish.
    budget: Option<(ShortTick, u16)>,
}

/// What a connection keeps of its verified JWT (not to be confused with a mio token): what it
/// may do (shared with the worker's other connections granted the same), a keyed fingerprint
/// of its user (a `refresh` must be for the same one), and the wheel tick at which it expires.
#[derive(Debug)]
pub struct TokenGrant {
    /// The `channels` and `publish` claims, one shared copy per distinct set on a worker.
    pub grants: Arc<Grants>,
    /// The `sub` claim hashed with the worker's key.
    pub user_fingerprint: u64,
    /// Wheel tick of the `exp` claim (rounded up).
    pub expires: Tick,
}

impl PushConn {
    fn rare(&mut self) -> &mut RareState {
        self.rare.get_or_insert_with(Default::default)
    }

    /// Wheel tick at which the connection's token expires ([`Tick::NEVER`] in open mode).
    #[must_use]
    pub fn expires(&self) -> Tick {
        self.grant().map_or(Tick::NEVER, |t| t.expires)
    }

    /// The connection's token grant; `None` in open mode.
    pub fn grant(&self) -> Option<&TokenGrant> {
        self.rare.as_ref().and_then(|r| r.grant.as_ref())
    }

    /// What the token grants; `None` in open mode (everything allowed, no expiry).
    pub fn grants(&self) -> Option<&Grants> {
        self.grant().map(|t| &*t.grants)
    }

    /// Takes the token grant out (the connection is going).
    pub fn take_grant(&mut self) -> Option<TokenGrant> {
        let grant = self.rare.as_mut().and_then(|r| r.grant.take());
        self.tidy();
        grant
    }

    /// Sets the connection's token grant; returns the one it replaces.
    pub fn set_grant(&mut self, grant: TokenGrant) -> Option<TokenGrant> {
        self.rare().grant.replace(grant)
    }

    /// Every channel subscription, joined or still waiting for the hub.
    pub fn subs(&self) -> impl Iterator<Item = &Subscription> {
        let more = self.rare.as_ref().map_or(&[][..], |r| &r.more_subs[..]);
        self.first_sub.iter().chain(more)
    }

    /// How many channel subscriptions (`$user` not counted).
    pub fn sub_count(&self) -> usize {
        usize::from(self.first_sub.is_some()) + self.rare.as_ref().map_or(0, |r| r.more_subs.len())
    }

    /// The subscription to `channel`, if any.
    pub fn sub(&self, channel: &str) -> Option<&Subscription> {
        self.subs().find(|s| &*s.channel == channel)
    }

    /// The subscription to `channel`, if any, to change.
    pub fn sub_mut(&mut self, channel: &str) -> Option<&mut Subscription> {
        let more = self
            .rare
            .as_mut()
            .map_or(&mut [][..], |r| &mut r.more_subs[..]);
        self.first_sub
            .iter_mut()
            .chain(more)
            .find(|s| &*s.channel == channel)
    }

    /// Adds a subscription (the caller checked it is not there yet).
    pub fn add_sub(&mut self, sub: Subscription) {
        match self.first_sub {
            None => self.first_sub = Some(sub),
            Some(_) => {
                let more = &mut self.rare().more_subs;
                if more.capacity() == more.len() {
                    more.reserve_exact(1);
                }
                more.push(sub);
            }
        }
    }

    /// Takes the subscription to `channel` out, if there is one.
    pub fn remove_sub(&mut self, channel: &str) -> Option<Subscription> {
        if self
            .first_sub
            .as_ref()
            .is_some_and(|s| &*s.channel == channel)
        {
            let next = self.rare.as_mut().and_then(|r| r.more_subs.pop());
            self.tidy();
            return std::mem::replace(&mut self.first_sub, next);
        }
        let more = &mut self.rare.as_mut()?.more_subs;
        let index = more.iter().position(|s| &*s.channel == channel)?;
        let sub = more.swap_remove(index);
        self.tidy();
        Some(sub)
    }

    /// Takes one client publish from the budget of `rate` per `second` (ticks in a second)
    /// that starts at the window's first publish; `false` if none is left. `now` is the wheel
    /// tick; the window's start is kept short (see [`Tick::since_short`]).
    pub fn take_publish(&mut self, now: Tick, second: u64, rate: u16) -> bool {
        let budget = self.rare().budget.get_or_insert((now.short(), rate));
        if now.since_short(budget.0) >= second {
            *budget = (now.short(), rate);
        }
        if budget.1 == 0 {
            return false;
        }
        budget.1 -= 1;
        true
    }

    /// Frees the rare part once it holds nothing.
    fn tidy(&mut self) {
        if let Some(rare) = &mut self.rare {
            if rare.more_subs.is_empty() {
                rare.more_subs = Vec::new();
                if rare.grant.is_none() && rare.budget.is_none() {
                    self.rare = None;
                }
            }
        }
    }
}

/// A stream's top seq when a connection joined it (8 bytes; `Option<u64>` takes 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinedAt(u64);

impl Default for JoinedAt {
    fn default() -> Self {
        JoinedAt::NOT_YET
    }
}

impl JoinedAt {
    /// Not joined (the hub has not answered yet).
    pub const NOT_YET: JoinedAt = JoinedAt(u64::MAX);

    /// The join point, if joined.
    pub fn get(self) -> Option<u64> {
        (self.0 != u64::MAX).then_some(self.0)
    }

    /// Records a join at `top`, keeping the earliest one (a recovery re-join doesn't move
    /// it); returns the previous value.
    pub fn join(&mut self, top: u64) -> Option<u64> {
        let previous = self.get();
        self.0 = self.0.min(top);
        previous
    }
}

/// One channel subscription of a connection.
#[derive(Debug)]
pub struct Subscription {
    /// The channel's name, shared with the router's table.
    pub channel: Arc<str>,
    /// Place in the router's channel table; `None` until the hub answers.
    pub slot: Option<Slot>,
    /// The channel's top when this connection joined: every later message came live, so a
    /// recovery replay only sends what is at or below it.
    pub joined_at: JoinedAt,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_state_stays_small() {
        assert_eq!(std::mem::size_of::<PushConn>(), 56);
        assert_eq!(std::mem::size_of::<Subscription>(), 32);
    }

    fn sub(channel: &str) -> Subscription {
        Subscription {
            channel: Arc::from(channel),
            slot: None,
            joined_at: JoinedAt::NOT_YET,
        }
    }

    fn names(push: &PushConn) -> Vec<String> {
        let mut all: Vec<String> = push.subs().map(|s| s.channel.to_string()).collect();
        all.sort();
        all
    }

    #[test]
    fn subscriptions_keep_one_inline_and_remove_any() {
        let mut push = PushConn::default();
        assert!(push.remove_sub("a").is_none());
        for c in ["a", "b", "c", "d"] {
            push.add_sub(sub(c));
        }
        assert_eq!(push.sub_count(), 4);
        assert!(push.sub("c").is_some() && push.sub("x").is_none());
        if let Some(s) = push.sub_mut("b") {
            s.slot = Some(3);
        }
        assert_eq!(push.sub("b").and_then(|s| s.slot), Some(3));
        // The inline one goes: the last of the rest takes its place.
        assert_eq!(
            push.remove_sub("a").map(|s| s.channel),
            Some(Arc::from("a"))
        );
        assert_eq!(names(&push), ["b", "c", "d"]);
        assert!(push.remove_sub("a").is_none());
        assert!(push.remove_sub("c").is_some() && push.remove_sub("d").is_some());
        assert!(
            push.rare.is_none(),
            "the rare part is freed when it holds nothing"
        );
        assert_eq!(names(&push), ["b"]);
        assert!(push.remove_sub("b").is_some() && push.sub_count() == 0);
    }

    #[test]
    fn publish_budget_refills_each_second() {
        let mut push = PushConn::default();
        let second = 100;
        assert!(push.take_publish(Tick(5), second, 2));
        assert!(push.take_publish(Tick(50), second, 2));
        assert!(!push.take_publish(Tick(104), second, 2), "two per second");
        assert!(push.take_publish(Tick(105), second, 2), "a new window");
        // Tick counters wrap at 32 bits without stalling the budget.
        let mut push = PushConn::default();
        let near = Tick(u64::from(u32::MAX) - 10);
        assert!(push.take_publish(near, second, 1));
        assert!(!push.take_publish(near + 50, second, 1));
        assert!(push.take_publish(near + 100, second, 1));
    }

    #[test]
    fn joined_at_keeps_the_earliest_join() {
        let mut j = JoinedAt::NOT_YET;
        assert_eq!(j.get(), None);
        assert_eq!(j.join(7), None);
        assert_eq!(j.join(9), Some(7));
        assert_eq!(j.join(3), Some(7));
        assert_eq!(j.get(), Some(3));
        assert_eq!(JoinedAt::NOT_YET.get(), None);
        let mut zero = JoinedAt::NOT_YET;
        zero.join(0);
        assert_eq!(zero.get(), Some(0));
    }
}
