//! A child process: one mio `Poll` driving up to ~15,000 client connections for one scenario.
//!
//! Talks to the parent over pipes. stdout: `P opened received errors` progress lines, one
//! `READY {json}` once every connection is open (and subscribed) or failed, and one
//! `RESULT {json}` at the end; `scale` also sends one `T {json}` line per second. stdin: `GO`
//! starts the measured phase, `END <published>` says the publisher is done (fanout, slow,
//! scale). EOF on stdin (the parent died) ends the child.
//!
//! This file holds that protocol and the loop; the connections are in [`crate::engine`] and
//! [`crate::client`], what is done on them in [`crate::scenarios`].

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};
use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::time::Duration;

use mio::{Events, Poll, Token, Waker};
use serde::{Deserialize, Serialize};

use crate::cli::{Payload, Target};
use crate::engine::{Engine, Phase, SECOND};
use crate::scenarios::{self, Scenario};
use crate::stats::HistData;
use crate::sys::now_ns;

/// Environment variable that carries a child's [`ChildSpec`] as JSON.
pub const SPEC_ENV: &str = "EDGEPUSH_LOAD_CHILD_SPEC";
/// The token of the waker the stdin thread rings.
const WAKER: Token = Token(usize::MAX);

/// Which scenario a child runs (one file each under `scenarios/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScenarioKind {
    Idle,
    Echo,
    Fanout,
    Churn,
    Slow,
    Actions,
    Scale,
}

impl ScenarioKind {
    /// The scenario's command name (`scenario` in the report).
    pub fn name(self) -> &'static str {
        match self {
            ScenarioKind::Idle => "idle",
            ScenarioKind::Echo => "echo",
            ScenarioKind::Fanout => "fanout",
            ScenarioKind::Churn => "churn",
            ScenarioKind::Slow => "slow",
            ScenarioKind::Actions => "actions",
            ScenarioKind::Scale => "scale",
        }
    }
}

/// What one child does; built by the parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildSpec {
    /// This child's number, `0..procs`.
    pub index: usize,
    #[serde(rename = "mode")]
    pub scenario: ScenarioKind,
    /// Busy-poll (zero poll timeout) while the measured phase runs, so the server's writes
    /// never pay for waking this process and no message waits on a wakeup.
    pub spin: bool,
    /// The nodes (the `--url` list, in order); connection `n` goes to
    /// `nodes[n % nodes.len()]` ([`crate::cli::node_for`]). Their paths may contain `{n}`,
    /// which becomes the connection's number.
    pub nodes: Vec<Target>,
    /// Connections this child opens (idle, echo, fanout, slow).
    pub conns: usize,
    /// Number of this child's first connection; the others follow.
    pub first_conn: u64,
    /// Stride between this child's connection numbers in churn (the number of children).
    pub stride: u64,
    /// Source addresses; connection `n` binds `source_ips[n % len]`. Empty: no bind.
    pub source_ips: Vec<Ipv4Addr>,
    pub size: usize,
    pub inflight: usize,
    pub duration_ns: u64,
    /// Channel for the `subscribe` op; `None` subscribes by URL (every text frame is a delivery).
    pub channel: Option<String>,
    pub messages: u64,
    /// Of this child's subscribers, how many stop reading (slow).
    pub stopped: usize,
    pub stopped_rcvbuf: usize,
    /// Churn: new connections per second for this child.
    pub rate: f64,
    pub max_concurrent: usize,
    pub connect_concurrency: usize,
    pub handshake_timeout_ns: u64,
    pub deliver_timeout_ns: u64,
    pub close_wait_ns: u64,
    pub timeout_ns: u64,
    /// Fanout: while publishing, each subscriber drops its connection at random times, on
    /// average once per this (0 = never), reconnects and resubscribes with `since`/`epoch`.
    #[serde(default)]
    pub reconnect_every_ns: u64,
    /// `--deflate`: the permessage-deflate offer every connection sends (`None`: no offer).
    #[serde(default)]
    pub deflate_offer: Option<String>,
    /// Echo: what follows the timestamp in each message (`--payload`).
    #[serde(default)]
    pub payload: Payload,
    /// Actions: the action code (`--code`), the first 4 bytes of every action.
    #[serde(default)]
    pub action_code: u32,
    /// Scale: rooms, drops, settle, where the tops come from.
    #[serde(default)]
    pub scale: Option<crate::scale::ScaleSpec>,
}

/// Sent with `READY`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReadyInfo {
    pub opened: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub first_start_ns: u64,
    pub last_done_ns: u64,
}

/// One node's figures in a child's `RESULT` (the same counts as the totals, for the
/// connections that went to that node).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeResult {
    /// Connections open (and subscribed where the scenario subscribes).
    pub opened: u64,
    /// Connection attempts that failed before they were open (connect, upgrade, subscribe).
    pub failed: u64,
    /// Churn: upgrades completed during the measured phase.
    pub handshakes: u64,
    /// Deliveries (fanout, slow) or echoed messages (echo) received.
    pub received: u64,
    /// Their latency (ns), as raw histogram counts; empty with one node (the totals' histogram
    /// is that node's).
    pub latency: HistData,
}

/// Sent with `RESULT`; the parent merges one per child.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChildResult {
    pub index: usize,
    pub attempted: u64,
    pub opened: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub handshake: HistData,
    pub latency: HistData,
    pub sent: u64,
    pub received: u64,
    pub received_bytes: u64,
    /// Bytes read from the sockets while measuring (phases `Running` and `Delivering`).
    #[serde(default)]
    pub wire_bytes_in: u64,
    /// Connections whose 101 agreed to permessage-deflate.
    #[serde(default)]
    pub deflate_conns: u64,
    /// Messages that arrived compressed and were inflated.
    #[serde(default)]
    pub inflated: u64,
    pub first_recv_ns: u64,
    pub last_recv_ns: u64,
    pub measure_start_ns: u64,
    pub measure_end_ns: u64,
    /// Connections that were open and ended without us asking.
    pub closed_during: u64,
    pub subscribers: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub out_of_range: u64,
    pub handshakes: u64,
    pub closes_ok: u64,
    pub stopped: u64,
    pub stopped_close_1008: u64,
    pub stopped_close_other: u64,
    pub stopped_eof: u64,
    pub stopped_reset: u64,
    pub stopped_not_closed: u64,
    pub stopped_msgs: u64,
    /// `--reconnect-every`: connections we dropped (RST / plain close), reconnections that
    /// resubscribed, and their answers.
    pub drops_rst: u64,
    pub drops_fin: u64,
    pub reconnects: u64,
    pub recovered: u64,
    pub not_recovered: u64,
    /// Our `seq`s written off after `recovered:false` (see `stats::Recovery`).
    pub written_off: u64,
    /// Deliveries that were replays (not in the latency histogram).
    pub replayed: u64,
    /// Actions: answers matched to an action (echoes and error ops), measured phase and
    /// drain alike (`received` counts only the echoes of the measured phase).
    #[serde(default)]
    pub answered: u64,
    pub timed_out: bool,
    /// Per node, in the order of [`ChildSpec::nodes`].
    #[serde(default)]
    pub nodes: Vec<NodeResult>,
    /// Scale: per-kind figures.
    #[serde(default)]
    pub scale: Option<crate::scale::ScaleResult>,
}

/// A line from the parent on stdin.
enum ParentLine {
    /// `GO`: start the measured phase.
    Go,
    /// `END n`: the publisher is done after `n` messages.
    End(u64),
    /// stdin closed: the parent is gone.
    Eof,
}

/// Writes one `TAG {json}` line to the parent.
pub fn emit<T: Serialize>(tag: &str, value: &T) {
    let line = serde_json::to_string(value).unwrap_or_else(|_| "{}".into());
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{tag} {line}");
    let _ = out.flush();
}

/// Runs a child from its spec; never returns.
pub fn run(spec: ChildSpec) -> ! {
    let result = match run_inner(spec) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("edgepush-load child: {e}");
            std::process::exit(2);
        }
    };
    emit("RESULT", &result);
    std::process::exit(0);
}

/// Reads the parent's lines on a thread; each one rings `waker`.
fn read_parent_lines(waker: Waker) -> mpsc::Receiver<ParentLine> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let stdin = io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let ctl = match line.trim() {
                "GO" => ParentLine::Go,
                l => match l.strip_prefix("END ").and_then(|n| n.trim().parse().ok()) {
                    Some(n) => ParentLine::End(n),
                    None => continue,
                },
            };
            if tx.send(ctl).is_err() {
                return;
            }
            let _ = waker.wake();
        }
        let _ = tx.send(ParentLine::Eof);
        let _ = waker.wake();
    });
    rx
}

/// A line from the parent.
fn on_parent_line(line: ParentLine, engine: &mut Engine, scenario: &mut dyn Scenario, now: u64) {
    match line {
        ParentLine::Eof => std::process::exit(3),
        ParentLine::Go => {
            engine.run.phase = Phase::Running;
            engine.run.result.measure_start_ns = now;
            engine.run.measure_end = now.saturating_add(engine.spec.duration_ns);
            scenario.on_go(engine, now);
        }
        ParentLine::End(published) => scenario.on_published(engine, published, now),
    }
}

/// One turn's work for the phase the child is in.
fn tick(engine: &mut Engine, scenario: &mut dyn Scenario, now: u64) {
    match engine.run.phase {
        Phase::Connecting => engine.connect_tick(scenario),
        Phase::WaitGo | Phase::Done => {}
        Phase::Running | Phase::Delivering | Phase::StoppedDrain => scenario.on_tick(engine, now),
    }
}

fn run_inner(spec: ChildSpec) -> io::Result<ChildResult> {
    crate::sys::raise_nofile_limit();
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    let parent = read_parent_lines(waker);

    let mut scenario = scenarios::for_spec(&spec)?;
    let scenario = scenario.as_mut();
    let first_phase = if scenario.connects_before_go() {
        Phase::Connecting
    } else {
        Phase::WaitGo
    };
    let mut engine = Engine::new(spec, poll, first_phase, now_ns());
    if first_phase == Phase::WaitGo {
        emit("READY", &ReadyInfo::default());
    }
    let mut events = Events::with_capacity(4096);
    let mut next_progress = 0u64;
    let mut next_sweep = 0u64;
    loop {
        let timeout = if engine.run.phase == Phase::Running && engine.spec.spin {
            Duration::ZERO
        } else if engine.run.phase == Phase::Running {
            scenario.running_poll_timeout()
        } else {
            Duration::from_millis(10)
        };
        if let Err(e) = engine.poll_mut().poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        for ev in events.iter() {
            if ev.token() == WAKER {
                continue;
            }
            let closing = ev.is_read_closed() || ev.is_error();
            let readable = ev.is_readable() || closing;
            engine.on_io(ev.token().0, readable, closing, scenario);
        }
        let now = now_ns();
        while let Ok(line) = parent.try_recv() {
            on_parent_line(line, &mut engine, scenario, now);
        }
        tick(&mut engine, scenario, now);
        if now >= next_sweep {
            next_sweep = now + SECOND / 4;
            engine.sweep_timeouts(now, scenario);
        }
        if now >= next_progress {
            next_progress = now + SECOND / 4;
            let r = &engine.run.result;
            let errors: u64 = r.errors.values().sum();
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "P {} {} {}", r.opened, r.received, errors);
            let _ = out.flush();
        }
        if now >= engine.deadline && engine.run.phase != Phase::Done {
            engine.run.result.timed_out = true;
            if engine.run.result.measure_end_ns == 0 {
                engine.run.result.measure_end_ns = now;
            }
            engine.run.phase = Phase::Done;
        }
        if engine.run.phase == Phase::Done {
            break;
        }
    }
    scenario.report(&mut engine);
    Ok(engine.into_result())
}
