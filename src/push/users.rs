//! The hub's `$user` streams: for every user connected now (or within the TTL), the stream's
//! seq and held messages and the user's connections on every worker.
//!
//! One owner for all of a user keeps an idle connection cheap, and idle connections are what
//! an edge box holds most of: a worker keeps only a [`UserId`] per connection, and the hub one
//! compact entry per user. Entries sit in a dense `Vec` (freed slots are reused through a free
//! list), and the name index is a hash table of 4-byte slot numbers, so the table's growth
//! slack costs 4 bytes a bucket instead of a whole entry. The epoch is not stored: it is a
//! keyed hash of the slot and the slot's generation, which differ for every incarnation of a
//! user's stream.
//!
//! What a stream holds beside its name and connections is the broker's: the memory broker
//! keeps the seq and the held messages ([`LocalStream`], the default), the Redis broker of
//! cluster mode its position in the stream that Redis holds. Either way one entry per user,
//! so a node never keeps two per-user records.

use std::collections::hash_map::RandomState;
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::num::NonZeroU64;

use hashbrown::HashTable;

use crate::push::history::Held;
use crate::push::hub::{ConnId, WorkerId};

/// A user stream: its slot and that slot's generation, so an id that outlives its stream
/// never reaches the next user in the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(NonZeroU64);

impl UserId {
    fn new(slot: u32, generation: u32) -> Option<UserId> {
        NonZeroU64::new(u64::from(generation) << 32 | u64::from(slot)).map(UserId)
    }

    fn slot(self) -> usize {
        self.0.get() as u32 as usize
    }

    /// The user's slot number: dense from 0 and below the most users held at once
    /// (a slot is reused after its user is gone, under a new generation), so a table of
    /// per-user state can be a `Vec` indexed by it, checked against the whole id.
    pub fn index(self) -> usize {
        self.slot()
    }

    fn generation(self) -> u32 {
        (self.0.get() >> 32) as u32
    }
}

/// One connection of a user: which worker holds it, and the worker's name for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// The worker (event-loop thread) that holds the connection for life.
    pub worker: WorkerId,
    /// The connection's id on that worker (slab key and generation).
    pub conn: ConnId,
}

/// A user's connections; one inline, since most users have one. More go in a set, so that
/// joining and leaving stay O(1) for a user with very many connections (every open-mode
/// client without `?user=` is "anonymous").
#[derive(Debug)]
enum Members {
    /// The slot is free; the next free slot (`u32::MAX`: none).
    Free(u32),
    Empty,
    One(u16, ConnId),
    #[allow(clippy::box_collection)]
    Many(Box<HashSet<(u16, ConnId)>>),
}

/// A user name: inline up to 22 bytes (most ids are short), else on the heap.
#[derive(Debug)]
enum Name {
    Inline(u8, [u8; 22]),
    Heap(Box<str>),
}

impl Name {
    fn new(name: &str) -> Name {
        let mut bytes = [0u8; 22];
        match bytes.get_mut(..name.len()) {
            Some(prefix) => {
                prefix.copy_from_slice(name.as_bytes());
                Name::Inline(name.len() as u8, bytes)
            }
            None => Name::Heap(Box::from(name)),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Inline bytes are a copy of a whole `str`, so this never falls back.
            Name::Inline(len, bytes) => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or("")
            }
            Name::Heap(name) => name,
        }
    }
}

/// The memory broker's part of a user stream: the stream itself.
#[derive(Debug, Default)]
pub struct LocalStream {
    /// The last seq given out.
    pub seq: u64,
    /// The stream's recent messages kept for replay (`--user-history-size`, `--history-ttl`).
    pub held: Held,
}

/// One user's stream; `S` is the broker's part ([`LocalStream`] for the memory broker), made
/// with `S::default()` when the entry is and dropped with it.
#[derive(Debug)]
pub struct UserStream<S = LocalStream> {
    name: Name,
    /// The broker's part.
    pub stream: S,
    members: Members,
    generation: u32,
    /// When the last connection left, on the caller's clock (seconds); only meaningful
    /// while there are no members.
    idle_since: u32,
}

impl<S> UserStream<S> {
    /// The user's name: the JWT `sub` claim, or `?user=` in open mode.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The user's connections, in no particular order.
    pub fn members(&self) -> impl Iterator<Item = Member> + '_ {
        let one = match self.members {
            Members::One(w, c) => Some(Member {
                worker: usize::from(w),
                conn: c,
            }),
            _ => None,
        };
        let many = match &self.members {
            Members::Many(set) => Some(set.iter()),
            _ => None,
        };
        one.into_iter()
            .chain(many.into_iter().flatten().map(|&(w, c)| Member {
                worker: usize::from(w),
                conn: c,
            }))
    }

    /// True while the user has at least one connection on some worker.
    pub fn has_members(&self) -> bool {
        matches!(self.members, Members::One(..) | Members::Many(_))
    }

    fn is_free(&self) -> bool {
        matches!(self.members, Members::Free(_))
    }

    /// Adds `member` unless it is there already.
    fn add(&mut self, member: (u16, ConnId)) {
        self.members = match std::mem::replace(&mut self.members, Members::Empty) {
            Members::Free(_) | Members::Empty => Members::One(member.0, member.1),
            Members::One(w, c) if (w, c) == member => Members::One(w, c),
            Members::One(w, c) => Members::Many(Box::new(HashSet::from([(w, c), member]))),
            Members::Many(mut set) => {
                set.insert(member);
                Members::Many(set)
            }
        };
    }

    /// Removes `member`; returns whether it was there and was the last.
    fn remove(&mut self, member: (u16, ConnId)) -> bool {
        let mut found = false;
        self.members = match std::mem::replace(&mut self.members, Members::Empty) {
            Members::One(w, c) if (w, c) == member => {
                found = true;
                Members::Empty
            }
            Members::Many(mut set) => {
                found = set.remove(&member);
                match (set.len(), set.iter().next()) {
                    (1, Some(&(w, c))) => Members::One(w, c),
                    (0, _) => Members::Empty,
                    _ => Members::Many(set),
                }
            }
            other => other,
        };
        found && !self.has_members()
    }
}

/// Every user stream the hub knows, each with the broker's part `S`.
#[derive(Debug)]
pub struct Users<S = LocalStream> {
    entries: Vec<UserStream<S>>,
    /// Slot numbers, hashed by the name in their entry.
    index: HashTable<u32>,
    /// Head of the free list (`u32::MAX`: empty).
    free: u32,
    live: usize,
    /// Streams that lost their last connection, oldest first: (id, when). A record is stale
    /// once the user is back (or the stream is gone); stale ones are skipped, and dropped in
    /// bulk when they outnumber the live ones.
    idle: VecDeque<(UserId, u32)>,
    /// Streams with no connection now.
    idle_count: usize,
    hasher: RandomState,
}

impl<S> Default for Users<S> {
    fn default() -> Self {
        Users {
            entries: Vec::new(),
            index: HashTable::new(),
            free: u32::MAX,
            live: 0,
            idle: VecDeque::new(),
            idle_count: 0,
            hasher: RandomState::new(),
        }
    }
}

/// `idle_since` of a stream that has never lost a connection.
const NEVER_IDLE: u32 = u32::MAX;

/// Is the idle record (`id`, `at`) still the stream's own (no one came back since)?
fn is_current<S>(entries: &[UserStream<S>], id: UserId, at: u32) -> bool {
    entries.get(id.slot()).is_some_and(|e| {
        e.generation == id.generation() && !e.is_free() && !e.has_members() && e.idle_since == at
    })
}

fn member_key(member: Member) -> (u16, ConnId) {
    (member.worker as u16, member.conn)
}

impl<S: Default> Users<S> {
    /// An empty table.
    pub fn new() -> Users<S> {
        Users::default()
    }

    /// Users with a stream: connected, or offline within `--history-ttl`.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when no user has a stream.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn hash(&self, name: &str) -> u64 {
        self.hasher.hash_one(name)
    }

    fn id_of(&self, slot: usize) -> Option<UserId> {
        let entry = self.entries.get(slot)?;
        UserId::new(slot as u32, entry.generation)
    }

    /// The id of user `name`'s stream, if it has one (one hash lookup, no allocation).
    pub fn find(&self, name: &str) -> Option<UserId> {
        let entries = &self.entries;
        let slot = *self.index.find(self.hash(name), |&s| {
            entries
                .get(s as usize)
                .is_some_and(|e| e.name.as_str() == name)
        })?;
        self.id_of(slot as usize)
    }

    /// The stream `id` names, unless it was freed since (the generation no longer matches).
    pub fn get(&self, id: UserId) -> Option<&UserStream<S>> {
        self.entries
            .get(id.slot())
            .filter(|e| e.generation == id.generation() && !e.is_free())
    }

    /// [`Users::get`], mutable.
    pub fn get_mut(&mut self, id: UserId) -> Option<&mut UserStream<S>> {
        self.entries
            .get_mut(id.slot())
            .filter(|e| e.generation == id.generation() && !e.is_free())
    }

    /// Every stream, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &UserStream<S>> + '_ {
        self.entries.iter().filter(|e| !e.is_free())
    }

    /// `name`'s stream (created if new, fresh epoch and seq 0) with `member` added, and
    /// whether the stream was idle until now.
    pub fn join(&mut self, name: &str, member: Member) -> (UserId, bool) {
        let id = match self.find(name) {
            Some(id) => id,
            None => self.insert(name),
        };
        let mut was_idle = false;
        if let Some(entry) = self.get_mut(id) {
            // Idle means it had a connection and lost it: a brand-new stream is not.
            was_idle = !entry.has_members() && entry.idle_since != NEVER_IDLE;
            entry.add(member_key(member));
        }
        if was_idle {
            self.idle_count = self.idle_count.saturating_sub(1);
        }
        (id, was_idle)
    }

    fn insert(&mut self, name: &str) -> UserId {
        let hash = self.hash(name);
        let fresh = |generation: u32| UserStream {
            name: Name::new(name),
            stream: S::default(),
            members: Members::Empty,
            generation,
            idle_since: NEVER_IDLE,
        };
        let slot = match self.entries.get_mut(self.free as usize) {
            Some(entry) => {
                // The free list only ever holds free slots.
                let next = match entry.members {
                    Members::Free(next) => next,
                    _ => u32::MAX,
                };
                let slot = self.free;
                self.free = next;
                *entry = fresh(entry.generation.wrapping_add(1).max(1));
                slot
            }
            None => {
                self.entries.push(fresh(1));
                (self.entries.len() - 1) as u32
            }
        };
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.index.insert_unique(hash, slot, |&s| {
            entries
                .get(s as usize)
                .map_or(0, |e| hasher.hash_one(e.name.as_str()))
        });
        self.live += 1;
        // The slot exists and its generation is at least 1, so this is never `None`.
        self.id_of(slot as usize).unwrap_or(UserId(NonZeroU64::MIN))
    }

    /// `member` left; the stream starts its idle time at `now` if it was the last (`now`
    /// must not go back). Returns whether the stream became idle. (A repeated leave changes
    /// nothing.)
    pub fn leave(&mut self, id: UserId, member: Member, now: u32) -> bool {
        let now = now.min(NEVER_IDLE - 1);
        let Some(entry) = self.get_mut(id) else {
            return false;
        };
        if !entry.remove(member_key(member)) {
            return false;
        }
        // (If it was idle before and came back, its earlier record went stale.)
        entry.idle_since = now;
        self.idle_count += 1;
        self.idle.push_back((id, now));
        if self.idle.len() > 2 * self.idle_count + 1024 {
            let entries = &self.entries;
            self.idle.retain(|&(id, at)| is_current(entries, id, at));
        }
        true
    }

    /// How many streams have no connection now.
    pub fn idle_count(&self) -> usize {
        self.idle_count
    }

    /// When the longest-idle stream lost its last connection.
    pub fn oldest_idle(&mut self) -> Option<u32> {
        self.skip_stale();
        self.idle.front().map(|&(_, at)| at)
    }

    fn skip_stale(&mut self) {
        while let Some(&(id, at)) = self.idle.front() {
            if is_current(&self.entries, id, at) {
                return;
            }
            self.idle.pop_front();
        }
    }

    /// Forgets the longest-idle stream; `dropped` sees the broker's part (its held messages)
    /// before it goes. Returns whether there was one.
    pub fn drop_oldest_idle(&mut self, dropped: impl FnOnce(&mut S)) -> bool {
        self.skip_stale();
        let Some((id, _)) = self.idle.pop_front() else {
            return false;
        };
        if let Some(entry) = self.get_mut(id) {
            dropped(&mut entry.stream);
        }
        self.idle_count = self.idle_count.saturating_sub(1);
        self.remove_slot(id.slot());
        true
    }

    /// Forgets every stream idle for `ttl` or longer at `now`, oldest first; `dropped` sees
    /// each one's broker part (its held messages) before it goes. Returns how many went.
    pub fn expire(&mut self, now: u32, ttl: u32, mut dropped: impl FnMut(&mut S)) -> usize {
        let mut gone = 0;
        while self
            .oldest_idle()
            .is_some_and(|at| now.saturating_sub(at) >= ttl)
        {
            self.drop_oldest_idle(&mut dropped);
            gone += 1;
        }
        gone
    }

    fn remove_slot(&mut self, slot: usize) {
        let Some(entry) = self.entries.get_mut(slot) else {
            return;
        };
        let hash = self.hasher.hash_one(entry.name.as_str());
        entry.name = Name::Inline(0, [0; 22]);
        entry.stream = S::default();
        entry.members = Members::Free(self.free);
        self.free = slot as u32;
        self.live = self.live.saturating_sub(1);
        if let Ok(found) = self.index.find_entry(hash, |&s| s as usize == slot) {
            found.remove();
        }
    }

    /// The epoch of `id`'s stream: random per process, new with every incarnation.
    pub fn epoch_bits(&self, id: UserId) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write_u8(b'u');
        hasher.write_u64(id.0.get());
        hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::SharedFrame;

    fn join(users: &mut Users, name: &str, member: Member) -> UserId {
        users.join(name, member).0
    }

    /// Connection `n` (slab key `n`, generation 0).
    fn c(n: u32) -> ConnId {
        ConnId::new(n, 0)
    }

    /// Worker `worker`'s connection `n`.
    fn m(worker: WorkerId, n: u32) -> Member {
        Member { worker, conn: c(n) }
    }

    fn members(users: &Users, id: UserId) -> Vec<(WorkerId, ConnId)> {
        let mut all: Vec<_> = users
            .get(id)
            .map(|u| u.members().map(|m| (m.worker, m.conn)).collect())
            .unwrap_or_default();
        all.sort();
        all
    }

    #[test]
    fn entries_and_ids_stay_small() {
        assert_eq!(std::mem::size_of::<UserStream>(), 64);
        assert_eq!(std::mem::size_of::<Option<UserId>>(), 8);
    }

    #[test]
    fn join_finds_or_creates_and_members_are_a_set() {
        let mut users = Users::new();
        let a = join(&mut users, "alice", m(0, 1));
        assert_eq!(join(&mut users, "alice", m(1, 7)), a);
        assert_eq!(
            join(&mut users, "alice", m(0, 1)),
            a,
            "joining twice is once"
        );
        let b = join(&mut users, "bob", m(0, 2));
        assert_ne!(a, b);
        assert_eq!(users.len(), 2);
        assert_eq!(members(&users, a), [(0, c(1)), (1, c(7))]);
        assert_eq!(users.find("bob"), Some(b));
        assert_eq!(users.find("carol"), None);
        assert_eq!(users.get(b).map(|u| u.name()), Some("bob"));

        users.leave(a, m(0, 1), 5);
        assert_eq!(members(&users, a), [(1, c(7))]);
        users.leave(a, m(0, 1), 6);
        users.leave(a, m(1, 7), 7);
        assert!(users.get(a).is_some_and(|u| !u.has_members()));
    }

    #[test]
    fn idle_streams_expire_after_the_ttl_and_their_ids_go_stale() {
        let mut users = Users::new();
        let a = join(&mut users, "alice", m(0, 1));
        let b = join(&mut users, "bob", m(0, 2));
        users
            .get_mut(a)
            .map(|u| u.stream.held.push(1, SharedFrame::from_encoded(&b"xy"[..])));
        users.leave(a, m(0, 1), 10);
        let mut released = Vec::new();
        users.expire(69, 60, |s| released.push(s.held.clear()));
        assert!(released.is_empty(), "59 s idle is within the TTL");
        users.expire(70, 60, |s| released.push(s.held.clear()));
        assert_eq!(released, [(1, 2)]);
        assert!(users.get(a).is_none() && users.find("alice").is_none());
        assert_eq!(users.len(), 1, "bob is connected");
        // The slot is reused under a new generation and a new epoch.
        let a2 = join(&mut users, "alice", m(1, 3));
        assert_ne!(a2, a);
        assert!(users.get(a).is_none());
        assert_ne!(users.epoch_bits(a2), users.epoch_bits(a));
        assert_eq!(users.find("bob"), Some(b));
    }

    #[test]
    fn one_user_with_very_many_connections() {
        let mut users = Users::new();
        let id = join(&mut users, "anonymous", m(0, 0));
        for conn in 1..20_000u32 {
            assert_eq!(
                join(&mut users, "anonymous", m(conn as usize % 2, conn)),
                id
            );
        }
        assert_eq!(
            join(&mut users, "anonymous", m(1, 7)),
            id,
            "already a member"
        );
        let count = |users: &Users| users.get(id).map_or(0, |u| u.members().count());
        assert_eq!(count(&users), 20_000);
        for conn in (0..20_000u32).step_by(2) {
            assert!(!users.leave(id, m(conn as usize % 2, conn), 1));
        }
        assert_eq!(count(&users), 10_000);
        assert!(users
            .get(id)
            .is_some_and(|u| u.members().all(|m| m.conn.key() % 2 == 1)));
        for conn in (1..19_999u32).step_by(2) {
            assert!(!users.leave(id, m(conn as usize % 2, conn), 2));
        }
        assert!(users.leave(id, m(1, 19_999), 3), "the last one leaves");
        assert_eq!((count(&users), users.idle_count()), (0, 1));
    }

    #[test]
    fn long_names_and_many_users_round_trip() {
        let mut users = Users::new();
        let long = "x".repeat(255);
        let id = join(&mut users, &long, m(0, 0));
        assert_eq!(users.get(id).map(|u| u.name()), Some(long.as_str()));
        let ids: Vec<_> = (0..5_000)
            .map(|i| join(&mut users, &format!("u{i}"), m(i % 2, i as u32)))
            .collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(users.find(&format!("u{i}")), Some(*id));
            users.leave(*id, m(i % 2, i as u32), 0);
        }
        users.expire(1, 1, |_| {});
        assert_eq!(users.len(), 1);
        assert_eq!(users.find(&long), Some(id));
    }

    #[test]
    fn randomized_against_a_model() {
        use std::collections::{BTreeSet, HashMap};
        for seed in 1..=6u64 {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let mut users = Users::new();
            // name -> (id, members, idle_since)
            type Entry = (UserId, BTreeSet<(WorkerId, ConnId)>, u32);
            let mut model: HashMap<String, Entry> = HashMap::new();
            let mut now = 0u32;
            for _ in 0..1_500 {
                let name = format!("user-{}", next(40));
                let member = m(next(2) as WorkerId, next(30) as u32);
                match next(10) {
                    0..=4 => {
                        let id = join(&mut users, &name, member);
                        let entry = model
                            .entry(name.clone())
                            .or_insert_with(|| (id, BTreeSet::new(), now));
                        assert_eq!(entry.0, id, "seed {seed}: {name} changed id");
                        entry.1.insert((member.worker, member.conn));
                    }
                    5..=7 => {
                        if let Some((id, members, idle)) = model.get_mut(&name) {
                            users.leave(*id, member, now);
                            if members.remove(&(member.worker, member.conn)) && members.is_empty() {
                                *idle = now;
                            }
                        }
                    }
                    8 => now += next(5) as u32,
                    _ => {
                        let ttl = 3;
                        users.expire(now, ttl, |_| {});
                        model.retain(|_, (_, members, idle)| {
                            !members.is_empty() || now.wrapping_sub(*idle) < ttl
                        });
                    }
                }
                assert_eq!(users.len(), model.len(), "seed {seed}");
                let idle = model.values().filter(|e| e.1.is_empty()).count();
                assert_eq!(users.idle_count(), idle, "seed {seed}");
                for (name, (id, members, _)) in &model {
                    assert_eq!(users.find(name), Some(*id), "seed {seed}: {name}");
                    let got: BTreeSet<_> = users
                        .get(*id)
                        .map(|u| u.members().map(|m| (m.worker, m.conn)).collect())
                        .unwrap_or_default();
                    assert_eq!(&got, members, "seed {seed}: {name}");
                }
                let ids: BTreeSet<_> = model.values().map(|e| e.0).collect();
                assert_eq!(ids.len(), model.len(), "seed {seed}: ids are unique");
            }
        }
    }
}
