//! One worker's routing table: channel → local subscribers, kept by the worker's
//! [`Router`](crate::push::router::Router), whose module doc states the rules it keeps. (Users
//! are the hub's: see `push::users`.)
//!
//! Each worker keeps its own table (a connection lives on one worker for life), so fan-out
//! takes no lock. Membership is a `Vec` per key with O(1) removal: each member remembers its
//! index, and a swap-remove tells the caller which member moved where. A key also counts the
//! subscribe requests still waiting for the hub's answer, so the router tells the hub a channel
//! went idle here only when it has neither members nor requests in flight — otherwise a
//! publish could be routed past a subscriber that is about to join.

use std::collections::HashMap;
use std::hash::Hash;

/// A member's place in a key's list, so it can be removed in O(1).
pub type Slot = u32;

#[derive(Debug)]
struct Members<M> {
    list: List<M>,
    /// Subscribe requests sent to the hub and not yet answered.
    pending: u32,
}

/// A member list that holds one member inline: many channels (a per-user or per-document
/// channel) have one subscriber, and a `Vec` each would cost an allocation.
#[derive(Debug)]
enum List<M> {
    One(Option<M>),
    /// Boxed so that the common one-member case keeps the entry small (the `Vec` header
    /// would triple it); a boxed slice can't grow, and channel lists grow one at a time.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<M>>),
}

impl<M: Copy> List<M> {
    fn as_slice(&self) -> &[M] {
        match self {
            List::One(m) => m.as_slice(),
            List::Many(v) => v,
        }
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    fn push(&mut self, member: M) {
        match self {
            List::One(slot @ None) => *slot = Some(member),
            List::One(Some(first)) => *self = List::Many(Box::new(vec![*first, member])),
            List::Many(v) => v.push(member),
        }
    }

    fn get(&self, index: usize) -> Option<&M> {
        self.as_slice().get(index)
    }

    fn swap_remove(&mut self, index: usize) {
        match self {
            List::One(slot) => *slot = None,
            List::Many(v) => {
                v.swap_remove(index);
                if v.len() <= 1 {
                    *self = List::One(v.first().copied());
                }
            }
        }
    }
}

/// Key → members with O(1) insert and remove.
#[derive(Debug)]
pub struct Table<K, M> {
    map: HashMap<K, Members<M>>,
}

impl<K, M> Default for Table<K, M> {
    fn default() -> Self {
        Table {
            map: HashMap::new(),
        }
    }
}

/// What [`Table::remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed<M> {
    /// The member now at the removed member's slot (its slot changed), if any.
    pub moved: Option<M>,
    /// The key has no members and no pending requests left here.
    pub now_idle: bool,
}

impl<K: Hash + Eq + Clone, M: Copy + PartialEq> Table<K, M> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// A subscribe request for `key` went to the hub.
    pub fn add_pending(&mut self, key: &K) {
        self.entry(key).pending += 1;
    }

    /// The hub answered a request for `key`: the member joins (`Some`) or not (`None`, e.g. the
    /// connection is gone). Returns the member's slot, and whether the key is now idle.
    pub fn resolve_pending(&mut self, key: &K, member: Option<M>) -> (Option<Slot>, bool) {
        let members = self.entry(key);
        members.pending = members.pending.saturating_sub(1);
        let slot = member.map(|m| {
            members.list.push(m);
            (members.list.len() - 1) as Slot
        });
        (slot, self.drop_if_idle(key))
    }

    /// Adds a member directly (no hub round trip) and returns its slot.
    pub fn insert(&mut self, key: &K, member: M) -> Slot {
        let members = self.entry(key);
        members.list.push(member);
        (members.list.len() - 1) as Slot
    }

    /// Removes the member at `slot` under `key`. A slot that doesn't hold `member` is left
    /// alone (the caller's bookkeeping is stale).
    pub fn remove(&mut self, key: &K, slot: Slot, member: M) -> Removed<M> {
        let Some(members) = self.map.get_mut(key) else {
            return Removed {
                moved: None,
                now_idle: false,
            };
        };
        let index = slot as usize;
        if members.list.get(index) != Some(&member) {
            return Removed {
                moved: None,
                now_idle: false,
            };
        }
        members.list.swap_remove(index);
        let moved = members.list.get(index).copied();
        Removed {
            moved,
            now_idle: self.drop_if_idle(key),
        }
    }

    /// The members under `key` (empty if none).
    pub fn members<Q>(&self, key: &Q) -> &[M]
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key).map_or(&[], |m| m.list.as_slice())
    }

    /// The table's own copy of `key`, to share rather than allocate another.
    pub fn shared_key<Q>(&self, key: &Q) -> Option<K>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get_key_value(key).map(|(k, _)| k.clone())
    }

    /// Keys with at least one member or request.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No key has members or requests.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn entry(&mut self, key: &K) -> &mut Members<M> {
        self.map.entry(key.clone()).or_insert_with(|| Members {
            list: List::One(None),
            pending: 0,
        })
    }

    fn drop_if_idle(&mut self, key: &K) -> bool {
        let idle = self
            .map
            .get(key)
            .is_some_and(|m| m.list.is_empty() && m.pending == 0);
        if idle {
            self.map.remove(key);
        }
        idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn insert_remove_reports_moves() {
        let mut t: Table<Arc<str>, u32> = Table::new();
        let k: Arc<str> = Arc::from("news");
        let a = t.insert(&k, 10);
        let b = t.insert(&k, 11);
        let c = t.insert(&k, 12);
        assert_eq!((a, b, c), (0, 1, 2));
        let r = t.remove(&k, a, 10);
        assert_eq!(
            r,
            Removed {
                moved: Some(12),
                now_idle: false
            }
        );
        assert_eq!(t.members(&k), &[12, 11]);
        // Stale slot: nothing happens.
        assert_eq!(
            t.remove(&k, 0, 11),
            Removed {
                moved: None,
                now_idle: false
            }
        );
        assert_eq!(
            t.remove(&k, 1, 11),
            Removed {
                moved: None,
                now_idle: false
            }
        );
        assert_eq!(
            t.remove(&k, 0, 12),
            Removed {
                moved: None,
                now_idle: true
            }
        );
        assert!(t.is_empty());
    }

    #[test]
    fn pending_requests_keep_a_key_alive() {
        let mut t: Table<Arc<str>, u32> = Table::new();
        let k: Arc<str> = Arc::from("c");
        let a = t.insert(&k, 1);
        t.add_pending(&k);
        // The last member leaves while a subscribe is in flight: not idle.
        assert!(!t.remove(&k, a, 1).now_idle);
        assert_eq!(t.len(), 1);
        // The hub answers, but the connection is gone: now idle.
        assert_eq!(t.resolve_pending(&k, None), (None, true));
        assert!(t.is_empty());
        t.add_pending(&k);
        assert_eq!(t.resolve_pending(&k, Some(5)), (Some(0), false));
        assert_eq!(t.members(&k), &[5]);
    }
}
