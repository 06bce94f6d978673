//! The hub: the one owner of every stream's `seq` and epoch (channels and `$user` streams), and
//! the bookkeeping that turns workers' acknowledgements into push-API answers. Sans IO: the hub
//! thread (`crate::server::hub_loop`) feeds it API commands and worker messages and ships what
//! it returns.
//!
//! Ordering is the point of having one hub. Every message for a worker goes through that
//! worker's FIFO inbox, and the hub answers a `subscribe` through the same inbox, after every
//! message with a `seq` up to the top it reports and before every later one. The worker adds the
//! subscriber when the answer arrives, so a subscriber sees each message exactly once, whatever
//! publishes race the subscribe.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use crate::protocol::frame::{encode_shared, OpCode};
use crate::push::client_protocol::{write_message, write_subscribed};
use crate::push::names::USER_CHANNEL;

/// Which worker (event-loop thread).
pub type WorkerId = usize;
/// A connection, as its worker names it (opaque to the hub).
pub type ConnId = u64;
/// An API request waiting for workers' acknowledgements.
pub type AckId = u64;
/// A push-API connection on the hub thread (opaque to the hub).
pub type ApiConn = u64;

/// The channel name broadcasts carry (not a stream: no seq, no history).
pub const BROADCAST_CHANNEL: &str = "$broadcast";

/// A stream a connection can be subscribed to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stream {
    Channel(Arc<str>),
    /// The user's own `$user` stream.
    User(Arc<str>),
}

/// Who a delivery is for, on a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stream(Stream),
    /// Every push-endpoint connection.
    Everyone,
}

/// Hub → worker, through the worker's FIFO inbox.
#[derive(Debug, Clone)]
pub enum ToWorker {
    /// Queue `frame` for the target's local connections (skipping any that already hold
    /// `seq` from a replay); acknowledge with the count if `ack` is set.
    Deliver {
        target: Target,
        seq: Option<u64>,
        frame: Arc<[u8]>,
        ack: Option<AckId>,
    },
    /// The answer to a subscribe: send `frame` (the `subscribed` message) and `replay`, and
    /// from now on deliver the stream's messages with `seq` above `seq`.
    Subscribed {
        conn: ConnId,
        stream: Stream,
        seq: u64,
        frame: Arc<[u8]>,
        replay: Vec<Arc<[u8]>>,
    },
    /// Close every connection of `user` with 4000; acknowledge with the count.
    Disconnect { user: Arc<str>, ack: AckId },
    /// Which users are subscribed to `channel` here?
    Presence { ack: AckId, channel: Arc<str> },
}

impl ToWorker {
    /// Bytes this message pins in an inbox (for the inbox bound).
    pub fn weight(&self) -> usize {
        64 + match self {
            ToWorker::Deliver { frame, .. } => frame.len(),
            ToWorker::Subscribed { frame, replay, .. } => {
                frame.len() + replay.iter().map(|f| f.len()).sum::<usize>()
            }
            ToWorker::Disconnect { .. } | ToWorker::Presence { .. } => 0,
        }
    }
}

/// Worker → hub.
#[derive(Debug, Clone)]
pub enum ToHub {
    Subscribe {
        worker: WorkerId,
        conn: ConnId,
        stream: Stream,
        since: Option<u64>,
        epoch: Option<String>,
    },
    /// A client's publish (already authorised and rate-limited by the worker).
    Publish {
        channel: Arc<str>,
        data: String,
    },
    /// The worker has no subscribers (and no subscribe in flight) left for `stream`.
    Idle {
        worker: WorkerId,
        stream: Stream,
    },
    /// A worker's count for an API request: deliveries, or connections closed.
    Ack {
        ack: AckId,
        count: u64,
    },
    PresenceReply {
        ack: AckId,
        users: Vec<Arc<str>>,
    },
}

/// A push-API request, validated (see `crate::push::api`).
#[derive(Debug, Clone)]
pub enum Command {
    Publish { channel: Arc<str>, data: String },
    Send { user: Arc<str>, data: String },
    Broadcast { data: String },
    Disconnect { user: Arc<str> },
    Presence { channel: Arc<str> },
}

/// An answer for an API connection: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub conn: ApiConn,
    pub status: u16,
    pub body: String,
}

#[derive(Debug)]
struct StreamState {
    seq: u64,
    epoch: Arc<str>,
    /// Workers with local subscribers (or a subscribe in flight).
    workers: Vec<bool>,
}

impl StreamState {
    fn worker_count(&self) -> usize {
        self.workers.iter().filter(|w| **w).count()
    }
}

#[derive(Debug)]
enum Waiting {
    Publish { seq: u64, epoch: Arc<str> },
    Send { seq: u64 },
    Broadcast,
    Disconnect,
    Presence { users: Vec<Arc<str>> },
}

#[derive(Debug)]
struct Pending {
    conn: ApiConn,
    remaining: usize,
    count: u64,
    waiting: Waiting,
}

/// The hub's state.
#[derive(Debug)]
pub struct Hub {
    workers: usize,
    channels: HashMap<Arc<str>, StreamState>,
    users: HashMap<Arc<str>, StreamState>,
    pending: HashMap<AckId, Pending>,
    next_ack: AckId,
    random: RandomState,
    epoch_counter: u64,
    outbox: Vec<(WorkerId, ToWorker)>,
    answers: Vec<Answer>,
    scratch: Vec<u8>,
}

impl Hub {
    pub fn new(workers: usize) -> Hub {
        Hub {
            workers,
            channels: HashMap::new(),
            users: HashMap::new(),
            pending: HashMap::new(),
            next_ack: 1,
            random: RandomState::new(),
            epoch_counter: 0,
            outbox: Vec::new(),
            answers: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Messages to put in workers' inboxes, in order.
    pub fn take_outbox(&mut self) -> std::vec::Drain<'_, (WorkerId, ToWorker)> {
        self.outbox.drain(..)
    }

    /// Answers ready for API connections.
    pub fn take_answers(&mut self) -> std::vec::Drain<'_, Answer> {
        self.answers.drain(..)
    }

    /// Channels and user streams the hub tracks.
    pub fn stream_counts(&self) -> (usize, usize) {
        (self.channels.len(), self.users.len())
    }

    /// How many workers a command will be sent to (for the inbox capacity check).
    pub fn fan_out(&self, command: &Command) -> Vec<WorkerId> {
        match command {
            Command::Publish { channel, .. } | Command::Presence { channel } => {
                workers_of(self.channels.get(channel))
            }
            Command::Send { user, .. } | Command::Disconnect { user } => {
                workers_of(self.users.get(user))
            }
            Command::Broadcast { .. } => (0..self.workers).collect(),
        }
    }

    /// Runs an API command for `conn`; the answer comes out of [`Hub::take_answers`], at once
    /// or once every worker involved has acknowledged.
    pub fn command(&mut self, conn: ApiConn, command: Command) {
        let targets = self.fan_out(&command);
        let ack = self.next_ack;
        self.next_ack += 1;
        let waiting = match command {
            Command::Publish { channel, data } => {
                let (seq, epoch, frame) = self.publish(&channel, &data);
                for &w in &targets {
                    self.outbox.push((
                        w,
                        ToWorker::Deliver {
                            target: Target::Stream(Stream::Channel(Arc::clone(&channel))),
                            seq: Some(seq),
                            frame: Arc::clone(&frame),
                            ack: Some(ack),
                        },
                    ));
                }
                Waiting::Publish { seq, epoch }
            }
            Command::Send { user, data } => {
                let (seq, frame) = match self.users.get_mut(&user) {
                    Some(state) => {
                        state.seq += 1;
                        let seq = state.seq;
                        (seq, self.encode(USER_CHANNEL, Some(seq), &data))
                    }
                    // Nobody of that user here: nothing kept, nothing sent.
                    None => (0, Arc::from(&[][..])),
                };
                for &w in &targets {
                    self.outbox.push((
                        w,
                        ToWorker::Deliver {
                            target: Target::Stream(Stream::User(Arc::clone(&user))),
                            seq: Some(seq),
                            frame: Arc::clone(&frame),
                            ack: Some(ack),
                        },
                    ));
                }
                Waiting::Send { seq }
            }
            Command::Broadcast { data } => {
                let frame = self.encode(BROADCAST_CHANNEL, None, &data);
                for &w in &targets {
                    self.outbox.push((
                        w,
                        ToWorker::Deliver {
                            target: Target::Everyone,
                            seq: None,
                            frame: Arc::clone(&frame),
                            ack: Some(ack),
                        },
                    ));
                }
                Waiting::Broadcast
            }
            Command::Disconnect { user } => {
                for &w in &targets {
                    self.outbox.push((
                        w,
                        ToWorker::Disconnect {
                            user: Arc::clone(&user),
                            ack,
                        },
                    ));
                }
                Waiting::Disconnect
            }
            Command::Presence { channel } => {
                for &w in &targets {
                    self.outbox.push((
                        w,
                        ToWorker::Presence {
                            ack,
                            channel: Arc::clone(&channel),
                        },
                    ));
                }
                Waiting::Presence { users: Vec::new() }
            }
        };
        let pending = Pending {
            conn,
            remaining: targets.len(),
            count: 0,
            waiting,
        };
        if pending.remaining == 0 {
            self.answer(pending);
        } else {
            self.pending.insert(ack, pending);
        }
    }

    /// Handles a worker's message.
    pub fn on_message(&mut self, message: ToHub) {
        match message {
            ToHub::Subscribe {
                worker,
                conn,
                stream,
                since,
                epoch,
            } => self.subscribe(worker, conn, stream, since, epoch),
            ToHub::Publish { channel, data } => {
                let (seq, _, frame) = self.publish(&channel, &data);
                for w in workers_of(self.channels.get(&channel)) {
                    self.outbox.push((
                        w,
                        ToWorker::Deliver {
                            target: Target::Stream(Stream::Channel(Arc::clone(&channel))),
                            seq: Some(seq),
                            frame: Arc::clone(&frame),
                            ack: None,
                        },
                    ));
                }
            }
            ToHub::Idle { worker, stream } => {
                let map = match &stream {
                    Stream::Channel(_) => &mut self.channels,
                    Stream::User(_) => &mut self.users,
                };
                let name = stream_name(&stream);
                if let Some(state) = map.get_mut(name) {
                    if let Some(w) = state.workers.get_mut(worker) {
                        *w = false;
                    }
                    // No history yet: a stream nobody listens to is forgotten (its next
                    // incarnation gets a new epoch, so clients know to resync).
                    if state.worker_count() == 0 {
                        map.remove(name);
                    }
                }
            }
            ToHub::Ack { ack, count } => self.acknowledge(ack, count, Vec::new()),
            ToHub::PresenceReply { ack, users } => self.acknowledge(ack, 0, users),
        }
    }

    fn acknowledge(&mut self, ack: AckId, count: u64, users: Vec<Arc<str>>) {
        let Some(pending) = self.pending.get_mut(&ack) else {
            return;
        };
        pending.count += count;
        if let Waiting::Presence { users: all } = &mut pending.waiting {
            all.extend(users);
        }
        pending.remaining -= 1;
        if pending.remaining == 0 {
            if let Some(pending) = self.pending.remove(&ack) {
                self.answer(pending);
            }
        }
    }

    fn answer(&mut self, pending: Pending) {
        let n = pending.count;
        let body = match pending.waiting {
            Waiting::Publish { seq, epoch } => {
                format!(
                    "{{\"seq\":{seq},\"epoch\":{},\"delivered\":{n}}}",
                    json_string(&epoch)
                )
            }
            Waiting::Send { seq } => format!("{{\"seq\":{seq},\"delivered\":{n}}}"),
            Waiting::Broadcast => format!("{{\"delivered\":{n}}}"),
            Waiting::Disconnect => format!("{{\"closed\":{n}}}"),
            Waiting::Presence { mut users } => {
                users.sort();
                users.dedup();
                let list: Vec<&str> = users.iter().map(|u| &**u).collect();
                format!(
                    "{{\"users\":{},\"count\":{}}}",
                    serde_json::to_string(&list).unwrap_or_else(|_| "[]".to_owned()),
                    list.len()
                )
            }
        };
        self.answers.push(Answer {
            conn: pending.conn,
            status: 200,
            body,
        });
    }

    fn subscribe(
        &mut self,
        worker: WorkerId,
        conn: ConnId,
        stream: Stream,
        since: Option<u64>,
        epoch: Option<String>,
    ) {
        let fresh = self.new_epoch();
        let workers = self.workers;
        let map = match &stream {
            Stream::Channel(_) => &mut self.channels,
            Stream::User(_) => &mut self.users,
        };
        let state = map
            .entry(Arc::from(stream_name(&stream)))
            .or_insert_with(|| StreamState {
                seq: 0,
                epoch: fresh,
                workers: vec![false; workers],
            });
        if let Some(w) = state.workers.get_mut(worker) {
            *w = true;
        }
        let (seq, state_epoch) = (state.seq, Arc::clone(&state.epoch));
        // Without history, recovery holds only if nothing was missed.
        let recovered = since.map(|since| epoch.as_deref() == Some(&*state_epoch) && since == seq);
        let channel = match &stream {
            Stream::Channel(name) => &**name,
            Stream::User(_) => USER_CHANNEL,
        };
        self.scratch.clear();
        write_subscribed(&mut self.scratch, channel, &state_epoch, seq, recovered);
        let frame = encode_shared(OpCode::Text, &self.scratch);
        self.outbox.push((
            worker,
            ToWorker::Subscribed {
                conn,
                stream,
                seq,
                frame,
                replay: Vec::new(),
            },
        ));
    }

    /// Assigns the next seq of `channel` (creating it if nobody subscribed yet) and encodes
    /// the message once.
    fn publish(&mut self, channel: &Arc<str>, data: &str) -> (u64, Arc<str>, Arc<[u8]>) {
        let fresh = self.new_epoch();
        let workers = self.workers;
        let state = self
            .channels
            .entry(Arc::clone(channel))
            .or_insert_with(|| StreamState {
                seq: 0,
                epoch: fresh,
                workers: vec![false; workers],
            });
        state.seq += 1;
        let (seq, epoch) = (state.seq, Arc::clone(&state.epoch));
        if state.worker_count() == 0 {
            // Nobody listens and nothing is kept: don't hold the channel.
            self.channels.remove(channel);
        }
        let frame = self.encode(channel, Some(seq), data);
        (seq, epoch, frame)
    }

    fn encode(&mut self, channel: &str, seq: Option<u64>, data: &str) -> Arc<[u8]> {
        self.scratch.clear();
        write_message(&mut self.scratch, channel, seq, data);
        encode_shared(OpCode::Text, &self.scratch)
    }

    /// A short random epoch: a new one for every stream incarnation and every process.
    fn new_epoch(&mut self) -> Arc<str> {
        self.epoch_counter += 1;
        let mut hasher = self.random.build_hasher();
        hasher.write_u64(self.epoch_counter);
        let mut n = hasher.finish();
        let mut s = String::with_capacity(8);
        for _ in 0..8 {
            let digit = (n % 36) as u32;
            n /= 36;
            s.push(char::from_digit(digit, 36).unwrap_or('0'));
        }
        Arc::from(s)
    }
}

fn workers_of(state: Option<&StreamState>) -> Vec<WorkerId> {
    state.map_or_else(Vec::new, |s| {
        s.workers
            .iter()
            .enumerate()
            .filter_map(|(i, on)| on.then_some(i))
            .collect()
    })
}

fn stream_name(stream: &Stream) -> &str {
    match stream {
        Stream::Channel(name) | Stream::User(name) => name,
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(name: &str) -> Stream {
        Stream::Channel(Arc::from(name))
    }

    fn subscribed_seq(msg: &ToWorker) -> u64 {
        match msg {
            ToWorker::Subscribed { seq, .. } => *seq,
            other => panic!("not subscribed: {other:?}"),
        }
    }

    #[test]
    fn publish_reaches_only_workers_with_subscribers_and_answers_after_acks() {
        let mut hub = Hub::new(2);
        hub.on_message(ToHub::Subscribe {
            worker: 1,
            conn: 7,
            stream: ch("news"),
            since: None,
            epoch: None,
        });
        let out: Vec<_> = hub.take_outbox().collect();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, 1);
        assert_eq!(subscribed_seq(&out[0].1), 0);

        hub.command(
            99,
            Command::Publish {
                channel: Arc::from("news"),
                data: "{\"a\":1}".into(),
            },
        );
        let out: Vec<_> = hub.take_outbox().collect();
        assert_eq!(out.len(), 1, "only worker 1 has subscribers");
        let (
            w,
            ToWorker::Deliver {
                seq, frame, ack, ..
            },
        ) = &out[0]
        else {
            panic!("deliver expected");
        };
        assert_eq!((*w, *seq), (1, Some(1)));
        assert!(std::str::from_utf8(&frame[2..])
            .unwrap()
            .contains("\"seq\":1"));
        assert_eq!(hub.take_answers().count(), 0, "waits for the ack");
        hub.on_message(ToHub::Ack {
            ack: ack.unwrap(),
            count: 3,
        });
        let answers: Vec<_> = hub.take_answers().collect();
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].conn, 99);
        assert!(
            answers[0].body.contains("\"delivered\":3"),
            "{}",
            answers[0].body
        );
        assert!(answers[0].body.contains("\"seq\":1"));
    }

    #[test]
    fn publish_with_no_subscribers_answers_at_once_and_keeps_nothing() {
        let mut hub = Hub::new(2);
        hub.command(
            1,
            Command::Publish {
                channel: Arc::from("empty"),
                data: "1".into(),
            },
        );
        assert_eq!(hub.take_outbox().count(), 0);
        let answers: Vec<_> = hub.take_answers().collect();
        assert!(answers[0].body.contains("\"delivered\":0"));
        assert_eq!(hub.stream_counts(), (0, 0));
    }

    #[test]
    fn idle_workers_are_dropped_and_streams_forgotten() {
        let mut hub = Hub::new(2);
        for worker in [0, 1] {
            hub.on_message(ToHub::Subscribe {
                worker,
                conn: 1,
                stream: ch("c"),
                since: None,
                epoch: None,
            });
        }
        hub.take_outbox().for_each(drop);
        hub.on_message(ToHub::Idle {
            worker: 0,
            stream: ch("c"),
        });
        let cmd = Command::Publish {
            channel: Arc::from("c"),
            data: "1".into(),
        };
        assert_eq!(hub.fan_out(&cmd), vec![1]);
        hub.on_message(ToHub::Idle {
            worker: 1,
            stream: ch("c"),
        });
        assert_eq!(hub.stream_counts(), (0, 0));
    }

    #[test]
    fn subscribe_reports_top_seq_and_recovery_without_history() {
        let mut hub = Hub::new(1);
        let sub = |since, epoch: Option<&str>| ToHub::Subscribe {
            worker: 0,
            conn: 1,
            stream: ch("n"),
            since,
            epoch: epoch.map(str::to_owned),
        };
        hub.on_message(sub(None, None));
        for _ in 0..3 {
            hub.on_message(ToHub::Publish {
                channel: Arc::from("n"),
                data: "0".into(),
            });
        }
        let out: Vec<_> = hub.take_outbox().collect();
        let ToWorker::Subscribed { frame, .. } = &out[0].1 else {
            panic!()
        };
        let text = std::str::from_utf8(&frame[2..]).unwrap();
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let epoch = v["epoch"].as_str().unwrap().to_owned();
        hub.on_message(sub(Some(3), Some(&epoch)));
        let out: Vec<_> = hub.take_outbox().collect();
        assert_eq!(subscribed_seq(&out[0].1), 3);
        let ToWorker::Subscribed { frame, .. } = &out[0].1 else {
            panic!()
        };
        assert!(std::str::from_utf8(&frame[2..])
            .unwrap()
            .contains("\"recovered\":true"));
        hub.on_message(sub(Some(1), Some(&epoch)));
        let out: Vec<_> = hub.take_outbox().collect();
        let ToWorker::Subscribed { frame, .. } = &out[0].1 else {
            panic!()
        };
        assert!(std::str::from_utf8(&frame[2..])
            .unwrap()
            .contains("\"recovered\":false"));
    }

    #[test]
    fn presence_merges_workers() {
        let mut hub = Hub::new(2);
        for worker in [0, 1] {
            hub.on_message(ToHub::Subscribe {
                worker,
                conn: 1,
                stream: ch("room"),
                since: None,
                epoch: None,
            });
        }
        hub.take_outbox().for_each(drop);
        hub.command(
            5,
            Command::Presence {
                channel: Arc::from("room"),
            },
        );
        let acks: Vec<AckId> = hub
            .take_outbox()
            .map(|(_, m)| match m {
                ToWorker::Presence { ack, .. } => ack,
                _ => panic!(),
            })
            .collect();
        hub.on_message(ToHub::PresenceReply {
            ack: acks[0],
            users: vec![Arc::from("b"), Arc::from("a")],
        });
        hub.on_message(ToHub::PresenceReply {
            ack: acks[1],
            users: vec![Arc::from("a")],
        });
        let answers: Vec<_> = hub.take_answers().collect();
        assert_eq!(answers[0].body, "{\"users\":[\"a\",\"b\"],\"count\":2}");
    }
}
