//! Push-API acknowledgement bookkeeping: an API request waits here for its broker's answer
//! (a publish or send being sequenced) and, under `?wait=delivered` (or for presence), for
//! every worker it was sent to, then becomes the JSON answer (`{"seq":…,"epoch":…}`, `{}`;
//! with the counts `{"seq":…,"epoch":…,"delivered":N}`, `{"closed":N}`; presence lists).
//! A request answered once sequenced waits for nothing from the workers: its entry lives only
//! from the command to the broker's answer (at once for the in-memory broker).

use std::collections::HashMap;
use std::sync::Arc;

use super::broker::Epoch;
use super::messages::{AckId, Answer, RequestId, UserId};

/// What a request waits for, and what its answer will say.
#[derive(Debug)]
pub(super) enum Waiting {
    /// A publish or send the broker has not sequenced yet (it counts as one of `remaining`).
    Sequencing,
    /// `POST /api/publish`, sequenced.
    Publish { seq: u64, epoch: Epoch },
    /// `POST /api/send`, sequenced (seq 0: the user had no stream, and `epoch` means
    /// nothing: the answer says `null`).
    Send { seq: u64, epoch: Epoch },
    /// `POST /api/broadcast`.
    Broadcast,
    /// `POST /api/disconnect`.
    Disconnect,
    /// `GET /api/presence`: the channel asked about and the users reported so far (boxed:
    /// rare, and the other requests in flight stay small).
    Presence(Box<PresenceWait>),
}

/// A presence query in flight.
#[derive(Debug)]
pub(super) struct PresenceWait {
    /// The channel asked about (the answer names it).
    pub(super) channel: Arc<str>,
    /// The users the workers reported so far (ids; duplicates across workers are removed
    /// when the answer is written).
    pub(super) users: Vec<UserId>,
    /// The users other nodes reported (cluster mode), by name.
    pub(super) names: Vec<Arc<str>>,
    /// Some live node did not answer in time.
    pub(super) partial: bool,
}

impl PresenceWait {
    /// The distinct user names, sorted: this node's (named by `name`) and other nodes'.
    pub(super) fn list<'a>(&self, name: impl Fn(UserId) -> Option<&'a str>) -> Vec<String> {
        let mut list: Vec<String> = self
            .users
            .iter()
            .filter_map(|&id| name(id))
            .map(str::to_owned)
            .collect();
        list.extend(self.names.iter().map(|n| n.to_string()));
        list.sort_unstable();
        list.dedup();
        list
    }
}

/// One request in flight.
#[derive(Debug)]
pub(super) struct Pending {
    conn: RequestId,
    /// Workers (or the broker) yet to answer.
    remaining: u32,
    /// `?wait=delivered`: the workers count for this request, and the answer says the count.
    counted: bool,
    /// Deliveries or closes counted so far.
    count: u64,
    waiting: Waiting,
}

impl Pending {
    /// A request from `conn` that waits for `remaining` answers; `counted`: its answer
    /// carries the workers' count (`?wait=delivered`).
    pub(super) fn new(
        conn: RequestId,
        remaining: usize,
        counted: bool,
        waiting: Waiting,
    ) -> Pending {
        Pending {
            conn,
            remaining: to_u32(remaining),
            counted,
            count: 0,
            waiting,
        }
    }

    /// Does the answer wait for the workers' counts?
    /// The API connection's request it answers.
    pub(super) fn conn(&self) -> RequestId {
        self.conn
    }

    pub(super) fn counted(&self) -> bool {
        self.counted
    }

    /// The HTTP answer; `name` gives a presence answer its users' names (ids of streams gone
    /// meanwhile are left out).
    pub(super) fn answer<'a>(self, name: impl Fn(UserId) -> Option<&'a str>) -> Answer {
        let n = self.count;
        let body = match (self.waiting, self.counted) {
            (Waiting::Publish { seq, epoch }, false) => {
                format!("{{\"seq\":{seq},\"epoch\":\"{epoch}\"}}")
            }
            (Waiting::Publish { seq, epoch }, true) => {
                format!("{{\"seq\":{seq},\"epoch\":\"{epoch}\",\"delivered\":{n}}}")
            }
            (Waiting::Send { seq: 0, .. }, false) => "{\"seq\":0,\"epoch\":null}".to_owned(),
            (Waiting::Send { seq: 0, .. }, true) => {
                format!("{{\"seq\":0,\"epoch\":null,\"delivered\":{n}}}")
            }
            (Waiting::Send { seq, epoch }, false) => {
                format!("{{\"seq\":{seq},\"epoch\":\"{epoch}\"}}")
            }
            (Waiting::Send { seq, epoch }, true) => {
                format!("{{\"seq\":{seq},\"epoch\":\"{epoch}\",\"delivered\":{n}}}")
            }
            (Waiting::Broadcast | Waiting::Disconnect, false) => "{}".to_owned(),
            (Waiting::Broadcast, true) => format!("{{\"delivered\":{n}}}"),
            (Waiting::Disconnect, true) => format!("{{\"closed\":{n}}}"),
            (Waiting::Presence(presence), _) => {
                let list = presence.list(name);
                let partial = if presence.partial {
                    ",\"partial\":true"
                } else {
                    ""
                };
                format!(
                    "{{\"channel\":{},\"users\":{},\"count\":{}{partial}}}",
                    serde_json::to_string(&*presence.channel).unwrap_or_else(|_| "\"\"".to_owned()),
                    serde_json::to_string(&list).unwrap_or_else(|_| "[]".to_owned()),
                    list.len()
                )
            }
            // Never answered before the broker's answer came; if it were, say so plainly.
            (Waiting::Sequencing, _) => "{}".to_owned(),
        };
        Answer {
            conn: self.conn,
            status: 200,
            body,
        }
    }
}

/// Worker counts fit: there are at most 64 workers.
fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Every API request in flight, by the id its workers acknowledge.
#[derive(Debug)]
pub(super) struct Acks {
    pending: HashMap<AckId, Pending>,
    next: AckId,
}

impl Acks {
    pub(super) fn new() -> Acks {
        Acks {
            pending: HashMap::new(),
            next: 1,
        }
    }

    /// A fresh id for the next request.
    pub(super) fn next_id(&mut self) -> AckId {
        let ack = self.next;
        self.next += 1;
        ack
    }

    /// Starts waiting for `pending` under `ack`; returns it at once if it waits for nothing.
    #[must_use]
    pub(super) fn wait(&mut self, ack: AckId, pending: Pending) -> Option<Pending> {
        if pending.remaining == 0 {
            return Some(pending);
        }
        self.pending.insert(ack, pending);
        None
    }

    /// The broker sequenced `ack`'s message, which went to `workers` workers; returns the
    /// request if that was all it waited for.
    #[must_use]
    pub(super) fn sequenced(
        &mut self,
        ack: AckId,
        waiting: Waiting,
        workers: usize,
    ) -> Option<Pending> {
        let pending = self.pending.get_mut(&ack)?;
        pending.waiting = waiting;
        // The broker's answer was one of `remaining`; the workers take its place.
        pending.remaining = pending.remaining.saturating_sub(1) + to_u32(workers);
        if pending.remaining > 0 {
            return None;
        }
        self.pending.remove(&ack)
    }

    /// A worker's answer for `ack`: `count` more deliveries or closes, `users` more present;
    /// returns the request once every worker has answered. Unknown ids are ignored.
    #[must_use]
    pub(super) fn acknowledge(
        &mut self,
        ack: AckId,
        count: u64,
        users: Vec<UserId>,
    ) -> Option<Pending> {
        let pending = self.pending.get_mut(&ack)?;
        pending.count += count;
        if let Waiting::Presence(presence) = &mut pending.waiting {
            presence.users.extend(users);
        }
        pending.remaining = pending.remaining.saturating_sub(1);
        if pending.remaining > 0 {
            return None;
        }
        self.pending.remove(&ack)
    }

    /// Gives up on the request under `ack` (its store failed it); `None` if unknown.
    #[must_use]
    pub(super) fn cancel(&mut self, ack: AckId) -> Option<Pending> {
        self.pending.remove(&ack)
    }

    /// Other nodes' users for the presence request under `ack` (the broker's part of it);
    /// returns the request once everything it waited for came.
    #[must_use]
    pub(super) fn remote_presence(
        &mut self,
        ack: AckId,
        names: Vec<Arc<str>>,
        partial: bool,
    ) -> Option<Pending> {
        let pending = self.pending.get_mut(&ack)?;
        if let Waiting::Presence(presence) = &mut pending.waiting {
            presence.names.extend(names);
            presence.partial |= partial;
        }
        pending.remaining = pending.remaining.saturating_sub(1);
        if pending.remaining > 0 {
            return None;
        }
        self.pending.remove(&ack)
    }

    /// The presence request under `ack`, taken out once complete (for an answer that goes to
    /// another node instead of an API connection).
    pub(super) fn peek_presence(pending: &Pending) -> Option<&PresenceWait> {
        match &pending.waiting {
            Waiting::Presence(p) => Some(p),
            _ => None,
        }
    }

    /// Does the request in flight under `ack` wait for its workers' counts (false if there
    /// is none)?
    pub(super) fn counted(&self, ack: AckId) -> bool {
        self.pending.get(&ack).is_some_and(Pending::counted)
    }

    /// Requests in flight.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::super::testing::{c, ch, counted, join, subscribed_seq};
    use super::super::{Command, HistoryConfig, Hub, ToHub, ToWorker};
    use super::*;

    #[test]
    fn a_request_in_flight_stays_small() {
        // One per API request waiting for workers: it must not grow.
        assert_eq!(std::mem::size_of::<Pending>(), 48);
    }

    #[test]
    fn counts_add_up_and_the_last_worker_finishes() {
        let mut acks = Acks::new();
        let ack = acks.next_id();
        assert!(acks
            .wait(ack, Pending::new(5, 2, true, Waiting::Broadcast))
            .is_none());
        assert!(acks.acknowledge(ack, 3, Vec::new()).is_none());
        assert!(
            acks.acknowledge(ack + 1, 100, Vec::new()).is_none(),
            "unknown"
        );
        let done = acks.acknowledge(ack, 4, Vec::new()).unwrap();
        assert_eq!(done.answer(|_| None).body, "{\"delivered\":7}");
        assert_eq!(acks.len(), 0);
        assert!(
            acks.acknowledge(ack, 1, Vec::new()).is_none(),
            "answered once"
        );
    }

    #[test]
    fn a_sequenced_request_then_waits_for_its_workers() {
        let mut acks = Acks::new();
        let ack = acks.next_id();
        assert!(acks
            .wait(ack, Pending::new(1, 1, true, Waiting::Sequencing))
            .is_none());
        let epoch = Epoch::from_bits(0);
        assert!(acks
            .sequenced(ack, Waiting::Publish { seq: 3, epoch }, 1)
            .is_none());
        let done = acks.acknowledge(ack, 2, Vec::new()).unwrap();
        assert_eq!(
            done.answer(|_| None).body,
            "{\"seq\":3,\"epoch\":\"00000000\",\"delivered\":2}"
        );
        // Sequenced with no worker to wait for: done at once.
        let ack = acks.next_id();
        assert!(acks
            .wait(ack, Pending::new(1, 1, true, Waiting::Sequencing))
            .is_none());
        let waiting = Waiting::Send { seq: 0, epoch };
        let done = acks.sequenced(ack, waiting, 0).unwrap();
        assert_eq!(
            done.answer(|_| None).body,
            "{\"seq\":0,\"epoch\":null,\"delivered\":0}"
        );
        assert_eq!(acks.len(), 0);
    }

    #[test]
    fn answers_without_counts_say_what_was_sequenced() {
        let epoch = Epoch::from_bits(0);
        let body = |waiting| Pending::new(1, 0, false, waiting).answer(|_| None).body;
        assert_eq!(
            body(Waiting::Publish { seq: 3, epoch }),
            "{\"seq\":3,\"epoch\":\"00000000\"}"
        );
        assert_eq!(
            body(Waiting::Send { seq: 4, epoch }),
            "{\"seq\":4,\"epoch\":\"00000000\"}"
        );
        assert_eq!(
            body(Waiting::Send { seq: 0, epoch }),
            "{\"seq\":0,\"epoch\":null}"
        );
        assert_eq!(body(Waiting::Broadcast), "{}");
        assert_eq!(body(Waiting::Disconnect), "{}");
        let closed = Pending::new(1, 0, true, Waiting::Disconnect);
        assert_eq!(closed.answer(|_| None).body, "{\"closed\":0}");
    }

    #[test]
    fn publish_reaches_only_workers_with_subscribers_and_answers_after_acks() {
        let mut hub = Hub::new(2, HistoryConfig::default(), Instant::now());
        hub.on_message(ToHub::Subscribe {
            worker: 1,
            conn: c(7),
            stream: ch("news"),
            since: None,
            epoch: None,
        });
        let out: Vec<_> = hub.take_outbox().collect();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, 1);
        assert_eq!(subscribed_seq(&out[0].1), 0);

        hub.request(
            99,
            counted(
                Command::Publish {
                    channel: Arc::from("news"),
                    data: "{\"a\":1}".into(),
                },
                None,
            ),
        );
        let out: Vec<_> = hub.take_outbox().collect();
        assert_eq!(out.len(), 1, "only worker 1 has subscribers");
        let (w, ToWorker::Deliver { frame, ack, .. }) = &out[0] else {
            panic!("deliver expected");
        };
        assert_eq!(*w, 1);
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

    /// A hub with worker 0 holding 2 subscribers of `news` and worker 1 holding 1 (as the
    /// workers would count them), the outbox emptied.
    fn hub_with_subscribers() -> Hub {
        let mut hub = Hub::new(2, HistoryConfig::default(), Instant::now());
        for (worker, conn) in [(0, 1), (0, 2), (1, 3)] {
            hub.on_message(ToHub::Subscribe {
                worker,
                conn: c(conn),
                stream: ch("news"),
                since: None,
                epoch: None,
            });
        }
        hub.take_outbox().for_each(drop);
        hub
    }

    fn publish_news() -> Command {
        Command::Publish {
            channel: Arc::from("news"),
            data: "1".into(),
        }
    }

    #[test]
    fn the_answer_comes_once_sequenced_and_no_worker_acknowledges() {
        let mut hub = hub_with_subscribers();
        hub.command(7, publish_news());
        let answers: Vec<_> = hub.take_answers().collect();
        assert_eq!(answers.len(), 1, "answered before any worker saw it");
        let body: serde_json::Value = serde_json::from_str(&answers[0].body).unwrap();
        assert_eq!(body["seq"], 1);
        assert!(body["epoch"].is_string());
        assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
        let out: Vec<_> = hub.take_outbox().collect();
        assert_eq!(out.len(), 2, "queued to both workers");
        assert!(
            out.iter()
                .all(|(_, m)| matches!(m, ToWorker::Deliver { ack: None, .. })),
            "nobody waits: no acknowledgement asked for"
        );
        assert_eq!(hub.acks.len(), 0, "nothing left in flight");
        // Broadcast and disconnect likewise.
        join(&mut hub, 1, c(9), "ann", None, None);
        hub.command(8, Command::Broadcast { data: "1".into() });
        hub.command(
            9,
            Command::Disconnect {
                user: Arc::from("ann"),
            },
        );
        let bodies: Vec<_> = hub.take_answers().map(|a| (a.conn, a.body)).collect();
        assert_eq!(bodies, [(8, "{}".to_owned()), (9, "{}".to_owned())]);
        assert!(hub.take_outbox().all(|(_, m)| matches!(
            m,
            ToWorker::Deliver { ack: None, .. } | ToWorker::Disconnect { ack: None, .. }
        )));
        assert_eq!(hub.acks.len(), 0);
    }

    #[test]
    fn wait_delivered_answers_after_every_worker_with_the_counts() {
        let mut hub = hub_with_subscribers();
        hub.request(7, counted(publish_news(), None));
        hub.request(8, counted(Command::Broadcast { data: "1".into() }, None));
        let acks: Vec<AckId> = hub
            .take_outbox()
            .map(|(_, m)| match m {
                ToWorker::Deliver { ack: Some(ack), .. } => ack,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(acks.len(), 4, "2 workers each");
        assert_eq!(hub.take_answers().count(), 0, "waits for the acks");
        for (ack, count) in acks.into_iter().zip([2, 1, 2, 1]) {
            hub.on_message(ToHub::Ack { ack, count });
        }
        let bodies: Vec<_> = hub.take_answers().map(|a| a.body).collect();
        let publish: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
        assert_eq!(publish["seq"], 1);
        assert_eq!(publish["delivered"], 3);
        assert_eq!(bodies[1], "{\"delivered\":3}");
        // A send and a disconnect count too.
        join(&mut hub, 0, c(20), "ann", None, None);
        let send = Command::Send {
            user: Arc::from("ann"),
            data: "1".into(),
        };
        hub.request(9, counted(send, None));
        let disconnect = Command::Disconnect {
            user: Arc::from("ann"),
        };
        hub.request(10, counted(disconnect, None));
        let acks: Vec<AckId> = hub
            .take_outbox()
            .map(|(_, m)| match m {
                ToWorker::Deliver { ack: Some(ack), .. }
                | ToWorker::Disconnect { ack: Some(ack), .. } => ack,
                other => panic!("{other:?}"),
            })
            .collect();
        for ack in acks {
            hub.on_message(ToHub::Ack { ack, count: 1 });
        }
        let bodies: Vec<_> = hub.take_answers().map(|a| a.body).collect();
        assert!(bodies[0].ends_with(",\"delivered\":1}"), "{}", bodies[0]);
        assert_eq!(bodies[1], "{\"closed\":1}");
    }

    #[test]
    fn presence_merges_workers() {
        let mut hub = Hub::new(2, HistoryConfig::default(), Instant::now());
        let (a, _, _) = join(&mut hub, 0, c(1), "a", None, None);
        let (b, _, _) = join(&mut hub, 0, c(2), "b", None, None);
        for worker in [0, 1] {
            hub.on_message(ToHub::Subscribe {
                worker,
                conn: c(1),
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
            users: vec![b, a],
        });
        hub.on_message(ToHub::PresenceReply {
            ack: acks[1],
            users: vec![a],
        });
        let answers: Vec<_> = hub.take_answers().collect();
        assert_eq!(
            answers[0].body,
            "{\"channel\":\"room\",\"users\":[\"a\",\"b\"],\"count\":2}"
        );
    }
}
