//! The oracle of the cluster tests (issue 13, "Tests"): the test's publishers record every
//! acknowledged publish (stream, epoch, seq, data) in an [`Oracle`]; each [`Subscriber`] logs
//! everything it sent and saw, per stream; [`Oracle::check`] then demands that, per stream,
//! the subscriber's messages are contiguous in seq under one epoch, with no duplicate, that
//! every message matches what was acknowledged under its (epoch, seq), and that every
//! acknowledged message from where the subscriber started is delivered exactly once — except
//! across an unsolicited `subscribed … recovered:false` (or a solicited one), after which the
//! subscriber restarts from the new seq.
//!
//! Streams are named as the oracle and the subscribers agree: a channel by its name, a user's
//! `$user` stream as `$user:NAME` (see [`user_stream`]). A message's epoch is the one of the
//! latest `subscribed` for its stream (messages carry no epoch).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{try_upgrade, ApiClient, HttpResponse, RawClient, Received};
use edgepush::protocol::frame::OpCode;

/// The oracle's name of `user`'s `$user` stream.
pub fn user_stream(user: &str) -> String {
    format!("$user:{user}")
}

/// One acknowledged publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Where (oracle stream name).
    pub stream: String,
    /// The epoch the answer gave.
    pub epoch: String,
    /// The seq the answer gave.
    pub seq: u64,
    /// What was published.
    pub data: Value,
    /// When the answer came (`None` in made-up logs).
    pub at: Option<Instant>,
}

/// Every acknowledged publish, in the order the answers came.
#[derive(Debug, Default)]
pub struct Oracle {
    acks: Vec<Ack>,
    /// (stream, epoch, seq) → index in `acks`.
    by_position: HashMap<(String, String, u64), usize>,
    /// Two different data acknowledged under one (stream, epoch, seq).
    reuses: Vec<String>,
}

/// An [`Oracle`] shared by publisher threads.
pub type SharedOracle = Arc<Mutex<Oracle>>;

/// Locks `oracle`, also after a panic elsewhere (the data is append-only).
pub fn lock(oracle: &SharedOracle) -> std::sync::MutexGuard<'_, Oracle> {
    oracle.lock().unwrap_or_else(|p| p.into_inner())
}

impl Oracle {
    /// A new shared oracle.
    pub fn shared() -> SharedOracle {
        Arc::new(Mutex::new(Oracle::default()))
    }

    /// Records an acknowledged publish. The same (stream, epoch, seq) acknowledged again with
    /// the same data (an idempotent retry) is fine; with other data it is a reuse.
    pub fn record(&mut self, ack: Ack) {
        let position = (ack.stream.clone(), ack.epoch.clone(), ack.seq);
        if let Some(&i) = self.by_position.get(&position) {
            if self.acks[i].data != ack.data {
                self.reuses.push(format!(
                    "{} seq {} acknowledged twice under epoch {}: first {}, then {}",
                    ack.stream, ack.seq, ack.epoch, self.acks[i].data, ack.data
                ));
            }
            return;
        }
        self.by_position.insert(position, self.acks.len());
        self.acks.push(ack);
    }

    /// Every acknowledged publish to `stream`, in answer order.
    pub fn acks(&self, stream: &str) -> Vec<Ack> {
        self.acks
            .iter()
            .filter(|a| a.stream == stream)
            .cloned()
            .collect()
    }

    /// Panics if any (stream, epoch, seq) was acknowledged for two different messages.
    pub fn assert_no_reuse(&self) {
        assert!(
            self.reuses.is_empty(),
            "seqs reused under an old epoch:\n{}",
            self.reuses.join("\n")
        );
    }

    /// Checks `sub`'s view of `stream` against the acknowledged publishes (module doc).
    pub fn check(&self, sub: &Subscriber, stream: &str) -> Result<StreamReport, String> {
        check(&self.acks(stream), sub, stream, true).map_err(|e| {
            format!(
                "subscriber {} on {stream}: {e}\nits log:\n{}",
                sub.name,
                sub.dump(stream)
            )
        })
    }

    /// [`Oracle::check`] without its completeness part: only contiguity, no duplicate, data
    /// matching the acknowledged (epoch, seq), and no unsolicited `subscribed` without
    /// `recovered:false` (for a Redis that came back older, where which epoch the later
    /// acknowledgements carry is the implementation's choice).
    pub fn check_order(&self, sub: &Subscriber, stream: &str) -> Result<StreamReport, String> {
        check(&self.acks(stream), sub, stream, false).map_err(|e| {
            format!(
                "subscriber {} on {stream}: {e}\nits log:\n{}",
                sub.name,
                sub.dump(stream)
            )
        })
    }

    /// [`Oracle::check`], panicking with its message.
    pub fn assert_subscriber(&self, sub: &Subscriber, stream: &str) -> StreamReport {
        self.check(sub, stream).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// What [`Oracle::check`] found for one subscriber and stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// Messages received.
    pub delivered: usize,
    /// Unsolicited `subscribed … recovered:false` frames.
    pub unsolicited_resets: usize,
    /// Solicited answers with `recovered:false`.
    pub refused_recoveries: usize,
    /// Solicited answers with `recovered:true`.
    pub recoveries: usize,
    /// The (epoch, seq) of every message, in arrival order.
    pub messages: Vec<(String, u64, Value)>,
}

/// One segment of a subscriber's stream: from a `subscribed` on.
struct Segment {
    epoch: String,
    /// The next seq expected.
    next: u64,
}

fn check(
    acks: &[Ack],
    sub: &Subscriber,
    stream: &str,
    complete: bool,
) -> Result<StreamReport, String> {
    let seen = &sub.seen;
    let mut report = StreamReport::default();
    let mut errors = Vec::new();
    let mut pending: VecDeque<Option<(u64, String)>> = VecDeque::new();
    let mut segment: Option<Segment> = None;
    // The first seq of the chain of segments that ends in the current one (recovered:true
    // continues a chain under one epoch).
    let mut chain_start = 0u64;
    for event in seen {
        match event {
            Seen::Subscribe { stream: s, since } if s == stream => pending.push_back(since.clone()),
            Seen::Subscribed {
                stream: s,
                epoch,
                seq,
                recovered,
            } if s == stream => {
                let solicited = pending.pop_front();
                match (solicited, recovered) {
                    (Some(Some((since, since_epoch))), Some(true)) => {
                        report.recoveries += 1;
                        if *epoch != since_epoch {
                            errors.push(format!(
                                "recovered:true under epoch {epoch} for since {since} epoch {since_epoch}"
                            ));
                        }
                        if *seq < since {
                            errors
                                .push(format!("recovered:true with top {seq} below since {since}"));
                        }
                        let continues = segment
                            .as_ref()
                            .is_some_and(|g| g.epoch == *epoch && g.next == since + 1);
                        if !continues {
                            chain_start = since + 1;
                        }
                        segment = Some(Segment {
                            epoch: epoch.clone(),
                            next: since + 1,
                        });
                    }
                    (Some(_), recovered) => {
                        if *recovered == Some(false) {
                            report.refused_recoveries += 1;
                        }
                        chain_start = seq + 1;
                        segment = Some(Segment {
                            epoch: epoch.clone(),
                            next: seq + 1,
                        });
                    }
                    (None, recovered) => {
                        if *recovered != Some(false) {
                            errors.push(format!(
                                "unsolicited subscribed (epoch {epoch}, seq {seq}) without recovered:false"
                            ));
                        }
                        report.unsolicited_resets += 1;
                        chain_start = seq + 1;
                        segment = Some(Segment {
                            epoch: epoch.clone(),
                            next: seq + 1,
                        });
                    }
                }
            }
            Seen::Message {
                stream: s,
                seq,
                data,
            } if s == stream => {
                report.delivered += 1;
                let Some(current) = segment.as_mut() else {
                    errors.push(format!("message seq {seq} before any subscribed"));
                    continue;
                };
                report
                    .messages
                    .push((current.epoch.clone(), *seq, data.clone()));
                if *seq < current.next {
                    errors.push(format!(
                        "duplicate or rewind under epoch {}: got seq {seq}, expected {}",
                        current.epoch, current.next
                    ));
                } else if *seq > current.next {
                    errors.push(format!(
                        "silent gap under epoch {}: got seq {seq}, expected {} (missing {}..={})",
                        current.epoch,
                        current.next,
                        current.next,
                        seq - 1
                    ));
                }
                if let Some(ack) = acks
                    .iter()
                    .find(|a| a.epoch == current.epoch && a.seq == *seq)
                {
                    if ack.data != *data {
                        errors.push(format!(
                            "seq {seq} under epoch {} carried {data}, but {} was acknowledged there",
                            current.epoch, ack.data
                        ));
                    }
                }
                current.next = seq + 1;
            }
            _ => {}
        }
    }
    // Completeness: everything acknowledged under the current epoch from the chain's start.
    if !complete {
    } else if let Some(current) = &segment {
        if let Some(last) = acks.last() {
            if last.epoch != current.epoch {
                errors.push(format!(
                    "the last acknowledged publish is under epoch {} (seq {}), but the subscriber \
                     is still under epoch {} with no recovered:false",
                    last.epoch, last.seq, current.epoch
                ));
            }
        }
        // An epoch acknowledged after this subscriber was subscribed must reach it (as
        // messages, or as the epoch of a recovered:false): else it missed a whole epoch.
        if let Some(since) = sub.first_subscribed.get(stream) {
            let known: HashSet<&str> = seen
                .iter()
                .filter_map(|e| match e {
                    Seen::Subscribed {
                        stream: s, epoch, ..
                    } if s == stream => Some(epoch.as_str()),
                    _ => None,
                })
                .collect();
            let mut unseen: Vec<String> = acks
                .iter()
                .filter(|a| a.at.is_some_and(|at| at > *since) && !known.contains(a.epoch.as_str()))
                .map(|a| format!("{} (seq {})", a.epoch, a.seq))
                .collect();
            unseen.dedup_by(|a, b| a.split(' ').next() == b.split(' ').next());
            if !unseen.is_empty() {
                errors.push(format!(
                    "publishes acknowledged after it subscribed under epoch(s) it never heard of: {}",
                    unseen.join(", ")
                ));
            }
        }
        let delivered: HashSet<u64> = report
            .messages
            .iter()
            .filter(|(e, _, _)| *e == current.epoch)
            .map(|(_, s, _)| *s)
            .collect();
        let missing: Vec<u64> = acks
            .iter()
            .filter(|a| {
                a.epoch == current.epoch && a.seq >= chain_start && !delivered.contains(&a.seq)
            })
            .map(|a| a.seq)
            .collect();
        if !missing.is_empty() {
            errors.push(format!(
                "{} acknowledged message(s) under epoch {} not delivered: seqs {:?}",
                missing.len(),
                current.epoch,
                missing
            ));
        }
    } else if !acks.is_empty() {
        errors.push("never subscribed, but messages were acknowledged".to_owned());
    }
    if errors.is_empty() {
        Ok(report)
    } else {
        Err(errors.join("\n"))
    }
}

/// One thing a subscriber sent or saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// It sent `subscribe` (or connected, for `$user`), with `since`/`epoch` if given.
    Subscribe {
        /// Oracle stream name.
        stream: String,
        /// `(since, epoch)`.
        since: Option<(u64, String)>,
    },
    /// A `subscribed` frame.
    Subscribed {
        /// Oracle stream name.
        stream: String,
        /// Its epoch.
        epoch: String,
        /// Its seq (the top then).
        seq: u64,
        /// Its `recovered`, if present.
        recovered: Option<bool>,
    },
    /// A message with a seq.
    Message {
        /// Oracle stream name.
        stream: String,
        /// Its seq.
        seq: u64,
        /// Its data.
        data: Value,
    },
    /// A `$broadcast` message.
    Broadcast(Value),
    /// An `error` frame.
    Error(Value),
    /// Any other JSON frame.
    Other(Value),
    /// A Close frame (its code, if any).
    Closed(Option<u16>),
    /// The connection ended (EOF or reset) without a Close.
    Lost,
}

/// A push-endpoint client that logs everything per stream and can reconnect (to any node)
/// recovering every stream from where it was.
pub struct Subscriber {
    /// For failure messages.
    pub name: String,
    /// Its user (`?user=`).
    pub user: String,
    client: Option<RawClient>,
    /// Everything, in order.
    pub seen: Vec<Seen>,
    /// Channels it holds (to resubscribe after a reconnect).
    channels: Vec<String>,
    /// When the first `subscribed` of each stream arrived.
    first_subscribed: HashMap<String, Instant>,
}

impl Subscriber {
    /// Connects as `user` to `addr` and reads the `$user` `subscribed` first frame.
    pub fn connect(addr: SocketAddr, user: &str, name: &str) -> Subscriber {
        let mut sub = Subscriber {
            name: name.to_owned(),
            user: user.to_owned(),
            client: None,
            seen: Vec::new(),
            channels: Vec::new(),
            first_subscribed: HashMap::new(),
        };
        sub.open(addr, None)
            .unwrap_or_else(|r| panic!("{name}: upgrade refused: {r:?}"));
        sub
    }

    /// Opens a connection to `addr` with `since`/`epoch` for `$user` if given; waits for the
    /// first frame, which must be the `$user` `subscribed`. A refused upgrade is an `Err`.
    fn open(&mut self, addr: SocketAddr, since: Option<(u64, String)>) -> Result<(), HttpResponse> {
        let target = match &since {
            Some((seq, epoch)) => format!("/ws?user={}&since={seq}&epoch={epoch}", self.user),
            None => format!("/ws?user={}", self.user),
        };
        let client = try_upgrade(addr, &target, &[])?;
        client
            .stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        self.client = Some(client);
        let stream = user_stream(&self.user);
        self.seen.push(Seen::Subscribe {
            stream: stream.clone(),
            since,
        });
        let first = self.seen.len();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.seen.len() == first {
            self.pump_once();
        }
        match self.seen.get(first) {
            Some(Seen::Subscribed { stream: s, .. }) if *s == stream => Ok(()),
            other => panic!(
                "{}: first frame should be subscribed on $user within 5 s, got {other:?}",
                self.name
            ),
        }
    }

    /// Sends `subscribe` on `channel` (fresh: no `since`) without waiting.
    pub fn subscribe(&mut self, channel: &str) {
        self.channels.push(channel.to_owned());
        self.send_subscribe(channel, None);
    }

    /// Sends `subscribe` and waits (up to 5 s) for its `subscribed`; returns `(epoch, seq)`.
    pub fn subscribe_wait(&mut self, channel: &str) -> (String, u64) {
        self.subscribe(channel);
        self.await_subscribed(channel)
    }

    /// Sends `subscribe` on `channel` with `since`/`epoch` and waits for its answer; returns
    /// `(epoch, seq, recovered)`.
    pub fn subscribe_since(
        &mut self,
        channel: &str,
        since: u64,
        epoch: &str,
    ) -> (String, u64, Option<bool>) {
        if !self.channels.iter().any(|c| c == channel) {
            self.channels.push(channel.to_owned());
        }
        self.send_subscribe(channel, Some((since, epoch.to_owned())));
        let count = self.subscribed_count(channel);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.subscribed_count(channel) == count {
            self.pump_once();
        }
        self.last_subscribed(channel)
            .unwrap_or_else(|| panic!("{}: no subscribed for {channel}", self.name))
    }

    fn send_subscribe(&mut self, channel: &str, since: Option<(u64, String)>) {
        let op = match &since {
            Some((seq, epoch)) => {
                json!({"op": "subscribe", "channel": channel, "since": seq, "epoch": epoch})
            }
            None => json!({"op": "subscribe", "channel": channel}),
        };
        self.seen.push(Seen::Subscribe {
            stream: channel.to_owned(),
            since,
        });
        self.client_mut().send_json(&op);
    }

    fn subscribed_count(&self, stream: &str) -> usize {
        self.seen
            .iter()
            .filter(|e| matches!(e, Seen::Subscribed { stream: s, .. } if s == stream))
            .count()
    }

    /// The latest `subscribed` on `stream`: `(epoch, seq, recovered)`.
    pub fn last_subscribed(&self, stream: &str) -> Option<(String, u64, Option<bool>)> {
        self.seen.iter().rev().find_map(|e| match e {
            Seen::Subscribed {
                stream: s,
                epoch,
                seq,
                recovered,
            } if s == stream => Some((epoch.clone(), *seq, *recovered)),
            _ => None,
        })
    }

    fn await_subscribed(&mut self, channel: &str) -> (String, u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let answered = self.subscribed_count(channel);
            let asked = self
                .seen
                .iter()
                .filter(|e| matches!(e, Seen::Subscribe { stream: s, .. } if s == channel))
                .count();
            if answered >= asked {
                break;
            }
            self.pump_once();
        }
        let (epoch, seq, _) = self.last_subscribed(channel).unwrap_or_else(|| {
            panic!(
                "{}: no subscribed for {channel}: {:?}",
                self.name, self.seen
            )
        });
        (epoch, seq)
    }

    /// Where it is on `stream`: the epoch of its latest `subscribed` and the last seq it saw
    /// under it (that `subscribed`'s seq if no message came since, or the `since` it
    /// recovered from).
    pub fn position(&self, stream: &str) -> Option<(u64, String)> {
        let mut position: Option<(u64, String)> = None;
        let mut pending: VecDeque<Option<(u64, String)>> = VecDeque::new();
        for event in &self.seen {
            match event {
                Seen::Subscribe { stream: s, since } if s == stream => {
                    pending.push_back(since.clone())
                }
                Seen::Subscribed {
                    stream: s,
                    epoch,
                    seq,
                    recovered,
                } if s == stream => {
                    let asked = pending.pop_front();
                    position = match (asked, recovered) {
                        (Some(Some((since, _))), Some(true)) => Some((since, epoch.clone())),
                        _ => Some((*seq, epoch.clone())),
                    };
                }
                Seen::Message { stream: s, seq, .. } if s == stream => {
                    if let Some(p) = position.as_mut() {
                        p.0 = *seq;
                    }
                }
                _ => {}
            }
        }
        position
    }

    fn client_mut(&mut self) -> &mut RawClient {
        self.client
            .as_mut()
            .unwrap_or_else(|| panic!("subscriber has no connection"))
    }

    /// Reads and logs at most one frame (waits up to 50 ms). Returns false on a read timeout
    /// or with no connection.
    pub fn pump_once(&mut self) -> bool {
        let stream_user = user_stream(&self.user);
        let Some(client) = self.client.as_mut() else {
            thread::sleep(Duration::from_millis(50));
            return false;
        };
        let received = match client.try_recv() {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => Received::Reset,
        };
        let event = match received {
            Received::Text(text) => {
                let Ok(value) = serde_json::from_str::<Value>(&text) else {
                    self.seen.push(Seen::Other(Value::String(text)));
                    return true;
                };
                classify(value, &stream_user)
            }
            Received::Ping(payload) => {
                let _ = client.send_frame(true, OpCode::Pong, &payload);
                return true;
            }
            Received::Close(close) => {
                let code = close.map(|(c, _)| c);
                if let Some(c) = code {
                    let _ = client.send_frame(true, OpCode::Close, &c.to_be_bytes());
                }
                self.client = None;
                Seen::Closed(code)
            }
            Received::Eof | Received::Reset => {
                self.client = None;
                Seen::Lost
            }
            Received::Binary(b) => Seen::Other(json!({ "binary": b.len() })),
            Received::Pong(_) => return true,
        };
        self.log(event);
        true
    }

    /// Appends `event` to the log, noting when each stream's first `subscribed` came.
    fn log(&mut self, event: Seen) {
        if let Seen::Subscribed { stream, .. } = &event {
            self.first_subscribed
                .entry(stream.clone())
                .or_insert_with(Instant::now);
        }
        self.seen.push(event);
    }

    /// Reads what has arrived, for at most about `limit` (a live stream never runs dry, so
    /// "until nothing is pending" would not end).
    pub fn pump_for(&mut self, limit: Duration) {
        let until = Instant::now() + limit;
        while Instant::now() < until && self.pump_once() {}
    }

    /// Reads until `cond` holds on the log or `deadline` passes; returns whether it held.
    pub fn pump_until(
        &mut self,
        deadline: Instant,
        mut cond: impl FnMut(&Subscriber) -> bool,
    ) -> bool {
        loop {
            if cond(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            if !self.pump_once() && self.client.is_none() {
                // Nothing more can come; give up early unless the condition holds.
                return cond(self);
            }
        }
    }

    /// Reads until it holds every data in `datas` on `stream` (or `deadline`); true if so.
    pub fn pump_until_has(&mut self, stream: &str, datas: &[Value], deadline: Instant) -> bool {
        self.pump_until(deadline, |s| {
            let got: HashSet<String> = s
                .messages(stream)
                .iter()
                .map(|(_, d)| d.to_string())
                .collect();
            datas.iter().all(|d| got.contains(&d.to_string()))
        })
    }

    /// A barrier: sends text `ping` and reads until its `pong`, so that everything queued for
    /// this connection before it is in the log (a duplicate arriving late is caught).
    pub fn barrier(&mut self) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        client.send_text("ping");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let Some(client) = self.client.as_mut() else {
                return;
            };
            match client.try_recv() {
                Ok(Received::Text(t)) if t == "pong" => return,
                Ok(Received::Text(t)) => {
                    let stream_user = user_stream(&self.user);
                    let event = serde_json::from_str::<Value>(&t)
                        .map(|v| classify(v, &stream_user))
                        .unwrap_or(Seen::Other(Value::String(t)));
                    self.log(event);
                }
                Ok(Received::Ping(p)) => {
                    let _ = client.send_frame(true, OpCode::Pong, &p);
                }
                Ok(Received::Close(c)) => {
                    self.seen.push(Seen::Closed(c.map(|(code, _)| code)));
                    self.client = None;
                    return;
                }
                Ok(Received::Eof | Received::Reset) | Err(_) if Instant::now() >= deadline => {
                    panic!("{}: no pong to the barrier ping within 5 s", self.name)
                }
                Ok(Received::Eof | Received::Reset) => {
                    self.seen.push(Seen::Lost);
                    self.client = None;
                    return;
                }
                _ => {}
            }
        }
    }

    /// Its messages on `stream`: (seq, data), in order.
    pub fn messages(&self, stream: &str) -> Vec<(u64, Value)> {
        self.seen
            .iter()
            .filter_map(|e| match e {
                Seen::Message {
                    stream: s,
                    seq,
                    data,
                } if s == stream => Some((*seq, data.clone())),
                _ => None,
            })
            .collect()
    }

    /// The `$broadcast` data it received, in order.
    pub fn broadcasts(&self) -> Vec<Value> {
        self.seen
            .iter()
            .filter_map(|e| match e {
                Seen::Broadcast(d) => Some(d.clone()),
                _ => None,
            })
            .collect()
    }

    /// Drops its connection abruptly (as a dying node would look to it).
    pub fn drop_connection(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = socket2::SockRef::from(&client.stream).set_linger(Some(Duration::ZERO));
        }
        self.seen.push(Seen::Lost);
    }

    /// Reconnects to `addr` as the same user: `$user` with `since`/`epoch` in the upgrade
    /// request, then every channel it held with `subscribe` `since`/`epoch` (waiting for each
    /// answer). Retries refused upgrades (a 503 while a node has no Redis) until `deadline`.
    pub fn reconnect(&mut self, addr: SocketAddr, deadline: Instant) {
        self.client = None;
        let user_since = self.position(&user_stream(&self.user));
        loop {
            match self.open(addr, user_since.clone()) {
                Ok(()) => break,
                Err(refusal) => {
                    assert!(
                        Instant::now() < deadline,
                        "{}: reconnect to {addr} refused until the deadline: {} {}",
                        self.name,
                        refusal.status,
                        refusal.body_text()
                    );
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
        for channel in self.channels.clone() {
            match self.position(&channel) {
                Some((since, epoch)) => {
                    self.subscribe_since(&channel, since, &epoch);
                }
                None => {
                    self.send_subscribe(&channel, None);
                    self.await_subscribed(&channel);
                }
            }
        }
    }

    /// The log lines about `stream` (for failure messages), at most the last 60.
    pub fn dump(&self, stream: &str) -> String {
        let lines: Vec<String> = self
            .seen
            .iter()
            .filter(|e| match e {
                Seen::Subscribe { stream: s, .. }
                | Seen::Subscribed { stream: s, .. }
                | Seen::Message { stream: s, .. } => s == stream,
                _ => true,
            })
            .map(|e| format!("  {e:?}"))
            .collect();
        let skip = lines.len().saturating_sub(60);
        let mut out = if skip > 0 {
            format!("  … {skip} earlier\n")
        } else {
            String::new()
        };
        out.push_str(&lines[skip..].join("\n"));
        out
    }
}

/// Sorts one server JSON frame into a [`Seen`].
fn classify(value: Value, user_stream_name: &str) -> Seen {
    let stream_of = |channel: &str| {
        if channel == "$user" {
            user_stream_name.to_owned()
        } else {
            channel.to_owned()
        }
    };
    let channel = value["channel"].as_str().map(stream_of);
    match (value["op"].as_str(), channel) {
        (Some("subscribed"), Some(stream)) => {
            match (value["epoch"].as_str(), value["seq"].as_u64()) {
                (Some(epoch), Some(seq)) => Seen::Subscribed {
                    stream,
                    epoch: epoch.to_owned(),
                    seq,
                    recovered: value["recovered"].as_bool(),
                },
                _ => Seen::Other(value),
            }
        }
        (Some("message"), Some(stream)) if stream == "$broadcast" => {
            Seen::Broadcast(value["data"].clone())
        }
        (Some("message"), Some(stream)) => match value["seq"].as_u64() {
            Some(seq) => Seen::Message {
                stream,
                seq,
                data: value["data"].clone(),
            },
            None => Seen::Other(value),
        },
        (Some("error"), _) => Seen::Error(value),
        _ => Seen::Other(value),
    }
}

/// A push-API client that records its acknowledged publishes in an oracle and retries a 503
/// with the same `idempotency_key`.
pub struct Publisher {
    addr: SocketAddr,
    api: Option<ApiClient>,
    oracle: SharedOracle,
    /// 503 answers seen (each with `Retry-After`, else the call panics).
    pub unavailable: usize,
}

/// The outcome of one API call.
pub enum Outcome {
    /// 200: the ack (also recorded).
    Acked(Ack),
    /// 503 (with `Retry-After`), and how long it took to come.
    Unavailable(Duration),
}

impl Publisher {
    /// A publisher on the API at `addr`.
    pub fn new(addr: SocketAddr, oracle: &SharedOracle) -> Publisher {
        Publisher {
            addr,
            api: None,
            oracle: Arc::clone(oracle),
            unavailable: 0,
        }
    }

    /// One POST; reconnects when the server closed the previous connection.
    pub fn call(&mut self, path: &str, body: &Value) -> (HttpResponse, Duration) {
        let api = self
            .api
            .get_or_insert_with(|| ApiClient::connect(self.addr));
        let started = Instant::now();
        let response = api.call("POST", path, Some(&body.to_string()));
        let took = started.elapsed();
        if response
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            self.api = None;
        }
        (response, took)
    }

    fn once(&mut self, path: &str, stream: &str, body: &Value, data: &Value) -> Outcome {
        let (response, took) = self.call(path, body);
        match response.status {
            200 => {
                let answer = response.json();
                let (Some(seq), Some(epoch)) = (answer["seq"].as_u64(), answer["epoch"].as_str())
                else {
                    panic!("POST {path} {body}: answer without seq/epoch: {answer}");
                };
                let ack = Ack {
                    stream: stream.to_owned(),
                    epoch: epoch.to_owned(),
                    seq,
                    data: data.clone(),
                    at: Some(Instant::now()),
                };
                lock(&self.oracle).record(ack.clone());
                Outcome::Acked(ack)
            }
            503 => {
                assert!(
                    response.header("retry-after").is_some(),
                    "POST {path}: 503 without Retry-After: {response:?}"
                );
                self.unavailable += 1;
                Outcome::Unavailable(took)
            }
            status => panic!("POST {path} {body}: {status} {}", response.body_text()),
        }
    }

    /// One `POST /api/publish` (with `key` as `idempotency_key` if given).
    pub fn publish_once(&mut self, channel: &str, data: &Value, key: Option<&str>) -> Outcome {
        let mut body = json!({"channel": channel, "data": data});
        if let Some(key) = key {
            body["idempotency_key"] = json!(key);
        }
        self.once("/api/publish", channel, &body, data)
    }

    /// `POST /api/publish` with `key`, retried on 503 (every 100 ms) until acknowledged or
    /// `deadline` (then panics).
    pub fn publish(&mut self, channel: &str, data: &Value, key: &str, deadline: Instant) -> Ack {
        loop {
            match self.publish_once(channel, data, Some(key)) {
                Outcome::Acked(ack) => return ack,
                Outcome::Unavailable(_) => {
                    assert!(
                        Instant::now() < deadline,
                        "publish {data} to {channel}: still 503 at the deadline"
                    );
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// `POST /api/send` to `user` with `key`, retried on 503 like [`Publisher::publish`].
    pub fn send(&mut self, user: &str, data: &Value, key: &str, deadline: Instant) -> Ack {
        let body = json!({"user": user, "data": data, "idempotency_key": key});
        loop {
            match self.once("/api/send", &user_stream(user), &body, data) {
                Outcome::Acked(ack) => return ack,
                Outcome::Unavailable(_) => {
                    assert!(
                        Instant::now() < deadline,
                        "send {data} to {user}: still 503 at the deadline"
                    );
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// The data of message `n` of publisher `who`.
pub fn data(who: &str, n: usize) -> Value {
    json!({ "from": who, "n": n })
}

/// Groups `messages` of one stream by data, to count deliveries of each.
pub fn delivery_counts(messages: &[(u64, Value)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, d) in messages {
        *counts.entry(d.to_string()).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    //! The oracle must catch what it is for: these feed it made-up logs.
    use super::*;

    fn ack(seq: u64, epoch: &str) -> Ack {
        Ack {
            stream: "c".into(),
            epoch: epoch.into(),
            seq,
            data: json!(seq),
            at: None,
        }
    }

    fn sub(events: Vec<Seen>) -> Subscriber {
        Subscriber {
            name: "s".into(),
            user: "u".into(),
            client: None,
            seen: events,
            channels: vec![],
            first_subscribed: HashMap::new(),
        }
    }

    /// A subscriber that subscribed without `since` (answered under epoch `e` at seq 0), then
    /// saw `rest`.
    fn started(rest: Vec<Seen>) -> Subscriber {
        let mut events = vec![subscribe(None), subscribed("e", 0, None)];
        events.extend(rest);
        sub(events)
    }

    fn subscribe(since: Option<(u64, &str)>) -> Seen {
        Seen::Subscribe {
            stream: "c".into(),
            since: since.map(|(s, e)| (s, e.to_owned())),
        }
    }

    fn subscribed(epoch: &str, seq: u64, recovered: Option<bool>) -> Seen {
        Seen::Subscribed {
            stream: "c".into(),
            epoch: epoch.into(),
            seq,
            recovered,
        }
    }

    fn msg(seq: u64) -> Seen {
        Seen::Message {
            stream: "c".into(),
            seq,
            data: json!(seq),
        }
    }

    fn oracle(acks: &[Ack]) -> Oracle {
        let mut o = Oracle::default();
        for a in acks {
            o.record(a.clone());
        }
        o
    }

    #[test]
    fn the_oracle_accepts_a_clean_log_and_catches_each_fault() {
        let o = oracle(&[ack(1, "e"), ack(2, "e"), ack(3, "e")]);
        let clean = sub(vec![
            subscribe(None),
            subscribed("e", 0, Some(true)),
            msg(1),
            msg(2),
            msg(3),
        ]);
        assert_eq!(o.check(&clean, "c").map(|r| r.delivered), Ok(3));

        let gap = started(vec![msg(1), msg(3)]);
        assert!(o.check(&gap, "c").unwrap_err().contains("silent gap"));
        let dup = started(vec![msg(1), msg(2), msg(2), msg(3)]);
        assert!(o.check(&dup, "c").unwrap_err().contains("duplicate"));
        let lost = started(vec![msg(1), msg(2)]);
        assert!(o
            .check(&lost, "c")
            .unwrap_err()
            .contains("not delivered: seqs [3]"));
        let silent = sub(vec![subscribed("e", 0, Some(true)), msg(1), msg(2), msg(3)]);
        assert!(o
            .check(&silent, "c")
            .unwrap_err()
            .contains("without recovered:false"));
        let wrong = started(vec![
            msg(1),
            Seen::Message {
                stream: "c".into(),
                seq: 2,
                data: json!("x"),
            },
            msg(3),
        ]);
        assert!(o
            .check(&wrong, "c")
            .unwrap_err()
            .contains("was acknowledged there"));

        // Recovery from since continues the chain; a reset excuses what came before it.
        let recovered = started(vec![
            msg(1),
            Seen::Lost,
            subscribe(Some((1, "e"))),
            subscribed("e", 3, Some(true)),
            msg(2),
            msg(3),
        ]);
        assert_eq!(o.check(&recovered, "c").map(|r| r.recoveries), Ok(1));
        let o2 = oracle(&[ack(1, "e"), ack(2, "e"), ack(1, "f"), ack(2, "f")]);
        let reset = started(vec![
            msg(1),
            subscribed("f", 0, Some(false)),
            Seen::Message {
                stream: "c".into(),
                seq: 1,
                data: json!(1),
            },
            Seen::Message {
                stream: "c".into(),
                seq: 2,
                data: json!(2),
            },
        ]);
        assert_eq!(o2.check(&reset, "c").map(|r| r.unsolicited_resets), Ok(1));
        // Still under the old epoch while newer acks exist: caught.
        let stale = started(vec![msg(1), msg(2)]);
        assert!(o2
            .check(&stale, "c")
            .unwrap_err()
            .contains("still under epoch e"));
        // A whole epoch acknowledged after it subscribed, never heard of: caught.
        let mut blind = started(vec![msg(1), msg(2)]);
        blind.first_subscribed.insert("c".into(), Instant::now());
        let mut o4 = oracle(&[ack(1, "e"), ack(2, "e")]);
        o4.record(Ack {
            at: Some(Instant::now()),
            ..ack(7, "x")
        });
        o4.record(ack(3, "e"));
        // (ack 3 under e is delivered neither; the message names the epoch x)
        assert!(o4
            .check(&blind, "c")
            .unwrap_err()
            .contains("never heard of: x (seq 7)"));
        // A seq acknowledged twice with different data under one epoch: a reuse.
        let mut o3 = oracle(&[ack(1, "e")]);
        o3.record(Ack {
            data: json!("other"),
            ..ack(1, "e")
        });
        assert!(std::panic::catch_unwind(|| o3.assert_no_reuse()).is_err());
    }
}
