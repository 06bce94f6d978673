//! Push-API acknowledgement bookkeeping: an API request waits here for its broker's answer
//! (a publish or send being sequenced) and for every worker it was sent to, then becomes the
//! JSON answer (`{"seq":…,"epoch":…,"delivered":N}`, `{"closed":N}`, presence lists).

use std::collections::HashMap;

use super::broker::Epoch;
use super::messages::{AckId, Answer, RequestId, UserId};

/// What a request waits for, and what its answer will say.
#[derive(Debug)]
pub(super) enum Waiting {
    /// A publish or send the broker has not sequenced yet (it counts as one of `remaining`).
    Sequencing,
    /// `POST /api/publish`, sequenced.
    Publish { seq: u64, epoch: Epoch },
    /// `POST /api/send`, sequenced (seq 0: the user had no stream).
    Send { seq: u64 },
    /// `POST /api/broadcast`.
    Broadcast,
    /// `POST /api/disconnect`.
    Disconnect,
    /// `GET /api/presence`, with the users reported so far.
    Presence { users: Vec<UserId> },
}

/// One request in flight.
#[derive(Debug)]
pub(super) struct Pending {
    conn: RequestId,
    /// Workers (or the broker) yet to answer.
    remaining: usize,
    /// Deliveries or closes counted so far.
    count: u64,
    waiting: Waiting,
}

impl Pending {
    /// A request from `conn` that waits for `remaining` answers.
    pub(super) fn new(conn: RequestId, remaining: usize, waiting: Waiting) -> Pending {
        Pending {
            conn,
            remaining,
            count: 0,
            waiting,
        }
    }

    /// The HTTP answer; `name` gives a presence answer its users' names (ids of streams gone
    /// meanwhile are left out).
    pub(super) fn answer<'a>(self, name: impl Fn(UserId) -> Option<&'a str>) -> Answer {
        let n = self.count;
        let body = match self.waiting {
            Waiting::Publish { seq, epoch } => {
                format!("{{\"seq\":{seq},\"epoch\":\"{epoch}\",\"delivered\":{n}}}")
            }
            Waiting::Send { seq } => format!("{{\"seq\":{seq},\"delivered\":{n}}}"),
            Waiting::Broadcast => format!("{{\"delivered\":{n}}}"),
            Waiting::Disconnect => format!("{{\"closed\":{n}}}"),
            Waiting::Presence { users } => {
                let mut list: Vec<&str> = users.iter().filter_map(|&id| name(id)).collect();
                list.sort_unstable();
                list.dedup();
                format!(
                    "{{\"users\":{},\"count\":{}}}",
                    serde_json::to_string(&list).unwrap_or_else(|_| "[]".to_owned()),
                    list.len()
                )
            }
            // Never answered before the broker's answer came; if it were, say so plainly.
            Waiting::Sequencing => "{}".to_owned(),
        };
        Answer {
            conn: self.conn,
            status: 200,
            body,
        }
    }
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
        pending.remaining = pending.remaining.saturating_sub(1) + workers;
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
        if let Waiting::Presence { users: all } = &mut pending.waiting {
            all.extend(users);
        }
        pending.remaining = pending.remaining.saturating_sub(1);
        if pending.remaining > 0 {
            return None;
        }
        self.pending.remove(&ack)
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

    use super::super::testing::{c, ch, join, subscribed_seq};
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
            .wait(ack, Pending::new(5, 2, Waiting::Broadcast))
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
            .wait(ack, Pending::new(1, 1, Waiting::Sequencing))
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
            .wait(ack, Pending::new(1, 1, Waiting::Sequencing))
            .is_none());
        let done = acks.sequenced(ack, Waiting::Send { seq: 0 }, 0).unwrap();
        assert_eq!(done.answer(|_| None).body, "{\"seq\":0,\"delivered\":0}");
        assert_eq!(acks.len(), 0);
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

        hub.command(
            99,
            Command::Publish {
                channel: Arc::from("news"),
                data: "{\"a\":1}".into(),
            },
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
        assert_eq!(answers[0].body, "{\"users\":[\"a\",\"b\"],\"count\":2}");
    }
}
