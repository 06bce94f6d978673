//! Push-API idempotency keys: which `(route, idempotency_key)` pairs the hub has seen in the
//! last [`IDEMPOTENCY_TTL`], and the answer body each got, so a retry gets the first answer
//! again (byte for byte) and is not executed twice. A retry that comes while the first is
//! still waiting (for workers' acknowledgements, under `?wait=delivered`) joins it and gets
//! the same answer when it comes.
//!
//! Memory is bounded: each remembered key is charged [`ENTRY_COST`] plus its key and answer
//! bytes to a budget of its own, as large as `--history-max-bytes` (the hub's other
//! retention is charged to a separate account of the same size); when the budget is passed
//! the oldest answers go first. Requests in flight are charged too but never evicted (they
//! are bounded by the API's in-flight limits and end when their workers answer).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::messages::{AckId, Command, RequestId, IDEMPOTENCY_TTL};

/// Bytes charged per remembered key on top of its key and answer bytes: the map entry, the
/// queue entry and the shared key's header, rounded up.
pub(super) const ENTRY_COST: usize = 128;

/// The route an idempotency key is scoped to (the same key on two routes is two keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Route {
    Publish,
    Send,
    Broadcast,
    Disconnect,
}

impl Route {
    /// The route of a POST command; `None` for presence (a GET, never keyed).
    pub(super) fn of(command: &Command) -> Option<Route> {
        match command {
            Command::Publish { .. } => Some(Route::Publish),
            Command::Send { .. } => Some(Route::Send),
            Command::Broadcast { .. } => Some(Route::Broadcast),
            Command::Disconnect { .. } => Some(Route::Disconnect),
            Command::Presence { .. } | Command::Nodes => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    route: Route,
    key: Arc<str>,
}

#[derive(Debug)]
enum Entry {
    /// The first request is waiting for its answer under `ack`; `retries` wait with it.
    InFlight { ack: AckId, retries: Vec<RequestId> },
    /// The first answer's body, given at `at`.
    Answered { body: Arc<str>, at: Instant },
}

/// What [`Remembered::begin`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Begin {
    /// A key not seen within the TTL: run the request (it is now in flight under its ack).
    New,
    /// A retry of a request already answered: answer it with this body.
    Answered(Arc<str>),
    /// A retry of a request still in flight: it is answered with the first (see
    /// [`Remembered::answered`]).
    Joined,
}

/// The remembered keys and answers.
#[derive(Debug)]
pub(super) struct Remembered {
    entries: HashMap<Key, Entry>,
    /// Keyed requests in flight, by the ack they wait under.
    by_ack: HashMap<AckId, Key>,
    /// Answered keys, oldest answer first (the hub's clock only moves forward, so this is
    /// also expiry order). Every answered entry has exactly one place here.
    order: VecDeque<(Instant, Key)>,
    bytes: usize,
    max_bytes: usize,
}

impl Remembered {
    /// Nothing remembered yet; answers together may be charged `max_bytes`.
    pub(super) fn new(max_bytes: usize) -> Remembered {
        Remembered {
            entries: HashMap::new(),
            by_ack: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// A request from `conn` on `route` with `key`, to run under `ack` if it is new.
    pub(super) fn begin(
        &mut self,
        route: Route,
        key: &str,
        ack: AckId,
        conn: RequestId,
        now: Instant,
    ) -> Begin {
        self.expire(now);
        let key = Key {
            route,
            key: Arc::from(key),
        };
        match self.entries.get_mut(&key) {
            Some(Entry::Answered { body, .. }) => return Begin::Answered(Arc::clone(body)),
            Some(Entry::InFlight { retries, .. }) => {
                retries.push(conn);
                return Begin::Joined;
            }
            None => {}
        }
        self.bytes += ENTRY_COST + key.key.len();
        self.by_ack.insert(ack, key.clone());
        self.entries.insert(
            key,
            Entry::InFlight {
                ack,
                retries: Vec::new(),
            },
        );
        Begin::New
    }

    /// The request under `ack` was answered with `body` at `now`: remembers the body if the
    /// request had a key, and returns the retries that waited for it.
    pub(super) fn answered(&mut self, ack: AckId, body: &str, now: Instant) -> Vec<RequestId> {
        if self.by_ack.is_empty() {
            return Vec::new(); // the path of every request without a key
        }
        let Some(key) = self.by_ack.remove(&ack) else {
            return Vec::new();
        };
        let body: Arc<str> = Arc::from(body);
        self.bytes += body.len();
        let retries = match self
            .entries
            .insert(key.clone(), Entry::Answered { body, at: now })
        {
            Some(Entry::InFlight {
                ack: first,
                retries,
            }) if first == ack => retries,
            _ => Vec::new(),
        };
        self.order.push_back((now, key));
        self.enforce_budget();
        retries
    }

    /// The request under `ack` failed (503): its key is forgotten, so that a retry runs
    /// again, and the retries that waited for it are returned (they fail with it).
    pub(super) fn failed(&mut self, ack: AckId) -> Vec<RequestId> {
        let Some(key) = self.by_ack.remove(&ack) else {
            return Vec::new();
        };
        self.bytes = self.bytes.saturating_sub(ENTRY_COST + key.key.len());
        match self.entries.remove(&key) {
            Some(Entry::InFlight { retries, .. }) => retries,
            Some(answered) => {
                self.entries.insert(key, answered);
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    /// Is `key` on `route` in flight, or answered less than [`IDEMPOTENCY_TTL`] before `now`?
    pub(super) fn contains(&self, route: Route, key: &str, now: Instant) -> bool {
        let key = Key {
            route,
            key: Arc::from(key),
        };
        match self.entries.get(&key) {
            Some(Entry::InFlight { .. }) => true,
            Some(Entry::Answered { at, .. }) => now.duration_since(*at) < IDEMPOTENCY_TTL,
            None => false,
        }
    }

    /// Forgets the answers older than [`IDEMPOTENCY_TTL`] at `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= IDEMPOTENCY_TTL)
        {
            self.forget_oldest();
        }
    }

    /// When the oldest answer expires, if any is remembered.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.order.front().map(|(at, _)| *at + IDEMPOTENCY_TTL)
    }

    /// Keys remembered (answered or in flight), and the bytes charged for them.
    pub(super) fn size(&self) -> (usize, usize) {
        (self.entries.len(), self.bytes)
    }

    fn enforce_budget(&mut self) {
        while self.bytes > self.max_bytes && self.forget_oldest() {}
    }

    /// Forgets the oldest answer; false if there is none.
    fn forget_oldest(&mut self) -> bool {
        let Some((_, key)) = self.order.pop_front() else {
            return false;
        };
        if let Some(Entry::Answered { body, .. }) = self.entries.remove(&key) {
            self.bytes = self
                .bytes
                .saturating_sub(ENTRY_COST + key.key.len() + body.len());
        }
        true
    }
}

/// How long the hub may sleep before `expire` has work, from `now`.
pub(super) fn until(due: Option<Instant>, now: Instant) -> Option<Duration> {
    due.map(|due| due.saturating_duration_since(now))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{c, ch, counted, keyed};
    use super::super::{HistoryConfig, Hub, ToHub, ToWorker};
    use super::*;

    /// A hub whose worker 0 has one subscriber of `news`.
    fn hub(max_bytes: usize, now: Instant) -> Hub {
        let history = HistoryConfig {
            max_bytes,
            ..HistoryConfig::default()
        };
        let mut hub = Hub::new(1, history, now);
        hub.on_message(ToHub::Subscribe {
            worker: 0,
            conn: c(1),
            stream: ch("news"),
            since: None,
            epoch: None,
        });
        hub.take_outbox().for_each(drop);
        hub
    }

    fn publish() -> Command {
        Command::Publish {
            channel: std::sync::Arc::from("news"),
            data: "1".into(),
        }
    }

    /// Deliveries in the outbox (dropped).
    fn deliveries(hub: &mut Hub) -> usize {
        hub.take_outbox()
            .filter(|(_, m)| matches!(m, ToWorker::Deliver { .. }))
            .count()
    }

    #[test]
    fn a_retry_gets_the_first_answer_and_is_delivered_once() {
        let now = Instant::now();
        let mut hub = hub(1 << 20, now);
        hub.request(1, keyed(publish(), "k1"));
        let first = hub.take_answers().next().unwrap();
        assert_eq!(deliveries(&mut hub), 1);
        assert!(hub.remembers(&keyed(publish(), "k1")));
        hub.request(2, keyed(publish(), "k1"));
        let again = hub.take_answers().next().unwrap();
        assert_eq!(
            (again.conn, &again.body),
            (2, &first.body),
            "byte-identical"
        );
        assert_eq!(deliveries(&mut hub), 0, "not delivered twice");
        // Another key, or the same key on another route, is another request.
        hub.request(3, keyed(publish(), "k2"));
        assert!(hub
            .take_answers()
            .next()
            .unwrap()
            .body
            .contains("\"seq\":2"));
        hub.request(4, keyed(Command::Broadcast { data: "1".into() }, "k1"));
        assert_eq!(hub.take_answers().next().unwrap().body, "{}");
        assert_eq!(deliveries(&mut hub), 2);
        // A retry under `?wait=delivered` still gets the first answer, as it was.
        hub.request(5, counted(publish(), Some("k1")));
        assert_eq!(hub.take_answers().next().unwrap().body, first.body);
        assert_eq!(hub.idempotency_size().0, 3);
    }

    #[test]
    fn a_retry_while_the_first_waits_for_acks_gets_the_same_answer_then() {
        let now = Instant::now();
        let mut hub = hub(1 << 20, now);
        hub.request(1, counted(publish(), Some("k")));
        let ack = match hub.take_outbox().next() {
            Some((_, ToWorker::Deliver { ack: Some(ack), .. })) => ack,
            other => panic!("{other:?}"),
        };
        assert!(hub.remembers(&keyed(publish(), "k")));
        hub.request(2, keyed(publish(), "k"));
        hub.request(3, counted(publish(), Some("k")));
        assert_eq!(hub.take_answers().count(), 0, "not answered early");
        assert_eq!(deliveries(&mut hub), 0, "not delivered twice");
        hub.on_message(ToHub::Ack { ack, count: 1 });
        let mut answers: Vec<_> = hub.take_answers().map(|a| (a.conn, a.body)).collect();
        answers.sort();
        let body = answers[0].1.clone();
        assert!(body.ends_with(",\"delivered\":1}"), "{body}");
        assert_eq!(
            answers,
            [(1, body.clone()), (2, body.clone()), (3, body.clone())]
        );
        hub.request(4, keyed(publish(), "k"));
        assert_eq!(hub.take_answers().next().unwrap().body, body);
    }

    #[test]
    fn keys_expire_after_five_minutes_of_simulated_time() {
        let start = Instant::now();
        let mut hub = hub(1 << 20, start);
        hub.request(1, keyed(publish(), "k"));
        hub.take_answers().for_each(drop);
        deliveries(&mut hub);
        assert!(hub.next_tick().is_some_and(|d| d <= IDEMPOTENCY_TTL));
        hub.tick(start + IDEMPOTENCY_TTL - Duration::from_secs(1));
        hub.request(2, keyed(publish(), "k"));
        assert!(hub
            .take_answers()
            .next()
            .unwrap()
            .body
            .contains("\"seq\":1"));
        assert_eq!(deliveries(&mut hub), 0);
        hub.tick(start + IDEMPOTENCY_TTL);
        assert_eq!(hub.idempotency_size(), (0, 0));
        assert!(!hub.remembers(&keyed(publish(), "k")));
        hub.request(3, keyed(publish(), "k"));
        assert!(hub
            .take_answers()
            .next()
            .unwrap()
            .body
            .contains("\"seq\":2"));
        assert_eq!(deliveries(&mut hub), 1, "a new request after the TTL");
    }

    #[test]
    fn the_hub_keeps_keys_within_its_budget_oldest_first() {
        let now = Instant::now();
        // Room for about 3 answers of ~40 bytes with 2-byte keys.
        let budget = 3 * (ENTRY_COST + 2 + 40);
        let mut hub = hub(budget, now);
        for i in 0..10 {
            hub.request(i, keyed(publish(), &format!("k{i}")));
            hub.take_answers().for_each(drop);
            assert!(
                hub.idempotency_size().1 <= budget,
                "{:?}",
                hub.idempotency_size()
            );
        }
        deliveries(&mut hub);
        let (keys, _) = hub.idempotency_size();
        assert!((1..=3).contains(&keys), "{keys}");
        assert!(hub.remembers(&keyed(publish(), "k9")), "the newest stays");
        assert!(!hub.remembers(&keyed(publish(), "k0")), "the oldest went");
        hub.request(20, keyed(publish(), "k0"));
        hub.take_answers().for_each(drop);
        assert_eq!(deliveries(&mut hub), 1, "forgotten: runs again");
    }

    #[test]
    fn a_key_is_new_then_joined_then_answered_and_scoped_by_route() {
        let now = Instant::now();
        let mut r = Remembered::new(1 << 20);
        assert_eq!(r.begin(Route::Publish, "k", 1, 10, now), Begin::New);
        assert_eq!(r.begin(Route::Publish, "k", 2, 11, now), Begin::Joined);
        assert_eq!(
            r.begin(Route::Send, "k", 3, 12, now),
            Begin::New,
            "per route"
        );
        assert_eq!(r.answered(1, "{\"seq\":1}", now), vec![11]);
        assert_eq!(
            r.begin(Route::Publish, "k", 4, 13, now),
            Begin::Answered(Arc::from("{\"seq\":1}"))
        );
        assert_eq!(r.answered(99, "{}", now), Vec::<RequestId>::new());
        assert_eq!(r.size().0, 2);
    }

    #[test]
    fn answers_expire_after_the_ttl() {
        let start = Instant::now();
        let mut r = Remembered::new(1 << 20);
        assert_eq!(r.begin(Route::Broadcast, "k", 1, 1, start), Begin::New);
        r.answered(1, "{}", start);
        assert_eq!(r.next_expiry(), Some(start + IDEMPOTENCY_TTL));
        let almost = start + IDEMPOTENCY_TTL - Duration::from_millis(1);
        assert!(matches!(
            r.begin(Route::Broadcast, "k", 2, 2, almost),
            Begin::Answered(_)
        ));
        r.expire(start + IDEMPOTENCY_TTL);
        assert_eq!(r.size(), (0, 0));
        assert_eq!(
            r.begin(Route::Broadcast, "k", 3, 3, start + IDEMPOTENCY_TTL),
            Begin::New
        );
    }

    #[test]
    fn the_budget_evicts_the_oldest_answers_first() {
        let now = Instant::now();
        let per_key = ENTRY_COST + 2 + 2; // key "kN", body "{}"
        let mut r = Remembered::new(3 * per_key);
        for i in 0..5u64 {
            let key = format!("k{i}");
            assert_eq!(r.begin(Route::Publish, &key, i, i, now), Begin::New);
            r.answered(i, "{}", now);
            assert!(r.size().1 <= 3 * per_key, "{:?}", r.size());
        }
        assert_eq!(r.size(), (3, 3 * per_key));
        // k0 and k1 went; k2..k4 are remembered.
        assert_eq!(r.begin(Route::Publish, "k0", 10, 10, now), Begin::New);
        assert!(matches!(
            r.begin(Route::Publish, "k4", 11, 11, now),
            Begin::Answered(_)
        ));
    }
}
