//! Helpers shared by the hub's unit tests (driving a [`Hub`] as the hub thread would).

use std::sync::Arc;

use super::{Command, ConnId, Hub, Request, Stream, ToHub, ToWorker, UserId, Wait, WorkerId};

/// Connection `n` (slab key `n`, generation 0).
pub(super) fn c(n: u32) -> ConnId {
    ConnId::new(n, 0)
}

pub(super) fn ch(name: &str) -> Stream {
    Stream::Channel(Arc::from(name))
}

pub(super) fn subscribed_seq(msg: &ToWorker) -> u64 {
    match msg {
        ToWorker::Subscribed { seq, .. } => *seq,
        other => panic!("not subscribed: {other:?}"),
    }
}

/// Worker 0's connection 1 subscribes to channel `n`.
pub(super) fn sub(since: Option<u64>, epoch: Option<&str>) -> ToHub {
    ToHub::Subscribe {
        worker: 0,
        conn: c(1),
        stream: ch("n"),
        since,
        epoch: epoch.map(str::to_owned),
    }
}

/// (recovered, seq, replay length, epoch) of the one Subscribed in the outbox.
pub(super) fn answer(hub: &mut Hub) -> (Option<bool>, u64, usize, String) {
    let out: Vec<_> = hub.take_outbox().collect();
    let ToWorker::Subscribed {
        frame, replay, seq, ..
    } = &out[0].1
    else {
        panic!("subscribed expected")
    };
    let v: serde_json::Value = serde_json::from_slice(&frame[2..]).unwrap();
    (
        v["recovered"].as_bool(),
        *seq,
        replay.len(),
        v["epoch"].as_str().unwrap().to_owned(),
    )
}

/// `n` client publishes to channel `n`; what they send is dropped.
pub(super) fn publish_n(hub: &mut Hub, n: usize) {
    for _ in 0..n {
        hub.on_message(ToHub::Publish {
            channel: Arc::from("n"),
            data: "0".into(),
        });
    }
    hub.take_outbox().for_each(drop);
}

/// A connection of `user` joins; returns its stream, epoch and how many messages it replays.
pub(super) fn join(
    hub: &mut Hub,
    worker: WorkerId,
    conn: ConnId,
    user: &str,
    since: Option<u64>,
    epoch: Option<String>,
) -> (UserId, String, usize) {
    hub.on_message(ToHub::JoinUser {
        worker,
        conn,
        user: Arc::from(user),
        since,
        epoch,
    });
    let out: Vec<_> = hub.take_outbox().collect();
    let ToWorker::Subscribed {
        frame,
        stream: Stream::User(id),
        replay,
        ..
    } = &out[0].1
    else {
        panic!("subscribed to a user expected: {out:?}")
    };
    let v: serde_json::Value = serde_json::from_slice(&frame[2..]).unwrap();
    assert_eq!(v["channel"], "$user");
    (*id, v["epoch"].as_str().unwrap().to_owned(), replay.len())
}

/// `command` under `?wait=delivered`, with `key` as its idempotency key if given.
pub(super) fn counted(command: Command, key: Option<&str>) -> Request {
    Request {
        command,
        wait: Wait::Delivered,
        idempotency_key: key.map(Box::from),
    }
}

/// `command` answered once sequenced, with `key` as its idempotency key if given.
pub(super) fn keyed(command: Command, key: &str) -> Request {
    Request {
        command,
        wait: Wait::Sequenced,
        idempotency_key: Some(Box::from(key)),
    }
}
