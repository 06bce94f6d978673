//! `scale`: the scale run and the soak of issue 14. N connections (each its own user) spread
//! over the nodes of a cluster, each subscribed to one of `--rooms` room channels and to the
//! all-hands channel `all`; the parent publishes to `all`, to random rooms and to random users
//! through every node's API for `--duration`, while (with `--drop-rate`) connections drop
//! abruptly and come back with `since`/`epoch` on the next node. Every client checks every
//! stream it follows; the parent samples the servers' memory, CPU and descriptors and writes a
//! per-second timeline. See `loadtest/README.md`, "Scale run and soak".
//!
//! Split: [`stream`] checks one stream of one client, [`clients`] is the child-side scenario,
//! [`publisher`] the parent's API publishers, [`run`] the parent's run and report.

pub mod clients;
pub mod publisher;
pub mod run;
pub mod stream;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::stats::HistData;

/// The three kinds of stream a client follows, in the order of every per-kind array.
pub const KINDS: [&str; 3] = ["allhands", "room", "user"];
/// The all-hands channel.
pub const ALL_CHANNEL: &str = "all";

/// The scale part of a child's spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleSpec {
    /// Room channels `room-0 .. room-{rooms-1}`; connection n follows `room-{n % rooms}`.
    pub rooms: u64,
    /// Fraction of the open connections dropped each second while publishing.
    pub drop_rate: f64,
    /// After publishing, how long to wait for the deliveries to catch up (ns).
    pub settle_ns: u64,
    /// `--read-batch` (ns): after each poll's events, sleep this long and poll without
    /// waiting (0: wait in `epoll_wait` as usual).
    #[serde(default)]
    pub read_batch_ns: u64,
    /// Where the parent writes the streams' last acknowledged `(epoch, seq)` before `END`
    /// (lines `all E S`, `room I E S`, `user I E S`).
    pub tops_path: PathBuf,
}

/// One second of one child, sent as a `T {json}` line while running.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SecondLine {
    /// Seconds since the load started (`GO`): this line covers `[s, s + 1)`.
    pub s: u64,
    /// Deliveries received in that second, per kind ([`KINDS`]); replays included.
    pub deliveries: [u64; 3],
    /// Their publish → receive latency (ns, replays excluded), per kind, as raw counts.
    pub latency: [HistData; 3],
    /// Connections open (subscribed) at the end of the second.
    pub open: u64,
    /// Reconnections that resubscribed, so far.
    pub reconnects: u64,
    /// `recovered:false` answers, so far.
    pub recovered_false: u64,
    /// Connections dropped by us, so far.
    pub drops: u64,
}

/// A child's scale figures, in its `RESULT`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScaleResult {
    /// Per kind: deliveries (replays included), replays, latency (ns, raw counts), messages
    /// never received, received twice, received after a later one.
    pub deliveries: [u64; 3],
    pub replayed: [u64; 3],
    pub latency: [HistData; 3],
    pub missing: [u64; 3],
    pub duplicates: [u64; 3],
    pub out_of_order: [u64; 3],
    /// Per kind, streams whose client ended under another epoch than the last acknowledged
    /// one's (its tail could not be counted).
    pub epoch_mismatch: [u64; 3],
    /// Per kind, `recovered:false` answers: `[epoch_changed, history_gone]`.
    pub recovered_false: [[u64; 2]; 3],
    /// Deliveries on a stream before its `subscribed`, or on a channel we never asked for.
    pub unexpected: u64,
    /// Reconnections that resubscribed.
    pub reconnects: u64,
    /// Why connections went away and were reconnected: `dropped_rst`, `dropped_fin`,
    /// `going_away` (1001 from a drain), or the end's error kind.
    pub reconnect_causes: BTreeMap<String, u64>,
    /// Reconnect attempts that failed before they were open, by kind.
    pub reconnect_failures: BTreeMap<String, u64>,
    /// Connections open at the end.
    pub open_at_end: u64,
    /// Connections that never got back before the end.
    pub down_at_end: u64,
}
