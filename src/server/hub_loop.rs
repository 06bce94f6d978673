//! The hub thread's driver: its own mio `Poll`, the [`Hub`](crate::push::hub::Hub) that owns
//! every stream's seq and epoch, and the plumbing to the workers — one FIFO inbox per worker
//! (bounded in bytes at admission: a full inbox makes the API answer 503) and a mio `Waker`
//! each way; signals, drain and the periodic summary. The push API's connections are
//! [`ApiConns`]' (`api_conn.rs`); this file decides what each API command does. Nothing here
//! waits on a worker: an API request that needs workers' counts is parked until their
//! acknowledgements arrive.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::config::Config;
use crate::metrics::render::{metrics_text, stats_json, HubFigures};
use crate::metrics::Stats;
use crate::push::api::{self, ApiCommand, ApiLimits, PostOptions};
use crate::push::hub::{
    Broker, Command, Hub, Request, RequestId, ToHub, ToWorker, Wait, HEARTBEAT,
};
use crate::server::api_conn::{self, ApiConnId, ApiConns, Pending};

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);

/// Counters at the last periodic summary, to print rates.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    messages_in: u64,
    messages_out: u64,
    deliveries: u64,
    slow_consumers: u64,
    handshake_failures: u64,
}

/// Bytes of frames a worker's inbox may hold before the API answers 503.
pub(crate) const MAX_INBOX_BYTES: usize = 64 << 20;

/// The sending side of a worker's inbox.
pub(crate) struct WorkerInbox {
    pub(crate) tx: Sender<ToWorker>,
    pub(crate) waker: Arc<Waker>,
    /// Bytes pinned by messages not yet taken by the worker.
    pub(crate) load: Arc<AtomicUsize>,
}

/// The workers' way to the hub.
#[derive(Clone)]
pub(crate) struct HubHandle {
    pub(crate) tx: Sender<ToHub>,
    pub(crate) waker: Arc<Waker>,
}

pub(crate) struct HubLoop<B: Broker> {
    poll: Poll,
    listener: TcpListener,
    /// SIGTERM/SIGINT (drain) and SIGHUP (TLS reload), when this hub handles them (the binary
    /// does; tests don't).
    signals: Option<Signals>,
    /// The certificate pair SIGHUP reloads (`--tls-cert`); `None` on a plain listener.
    tls: Option<Arc<crate::tls::CertStore>>,
    /// `--drain-duration` and `--drain-timeout`.
    drain: (Duration, Duration),
    draining: bool,
    stats_interval: Duration,
    next_stats: Instant,
    /// This node's name (`--node-name`, or host name and port) in `/api/nodes`.
    node_name: String,
    started: Instant,
    /// This process's id in its heartbeat entry (`instance`, see [`instance_id`]): tells
    /// two processes started with the same `--node-name` apart (see `cluster::link::commands`).
    instance: String,
    next_heartbeat: Instant,
    last_figures: Figures,
    api: ApiConns,
    hub: Hub<B>,
    /// Cluster mode: `?wait=delivered` is refused (delivery is asynchronous across nodes).
    cluster: bool,
    /// Hub request id → the API connection that asked.
    requests: HashMap<RequestId, ApiConnId>,
    rx: Receiver<ToHub>,
    workers: Vec<WorkerInbox>,
    to_wake: Vec<bool>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
}

impl<B: Broker> HubLoop<B> {
    /// Creates the hub's poll and waker, and its broker with `make_broker` (which gets the
    /// waker, for a broker that answers from other threads); the `workers` workers' inboxes
    /// are attached with [`HubLoop::attach_workers`] before it runs.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        mut listener: TcpListener,
        rx: Receiver<ToHub>,
        config: &Config,
        stats: Arc<Stats>,
        stop: Arc<AtomicBool>,
        handle_signals: bool,
        workers: usize,
        tls: Option<Arc<crate::tls::CertStore>>,
        make_broker: impl FnOnce(Arc<Waker>, Instant) -> io::Result<B>,
    ) -> io::Result<(HubLoop<B>, Arc<Waker>)> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let signals = if handle_signals {
            let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
            poll.registry()
                .register(&mut signals, SIGNALS, Interest::READABLE)?;
            Some(signals)
        } else {
            None
        };
        let now = Instant::now();
        let broker = make_broker(Arc::clone(&waker), now)?;
        stats
            .clustered
            .store(config.cluster.is_some(), Ordering::Relaxed);
        Ok((
            HubLoop {
                poll,
                listener,
                signals,
                tls,
                api: ApiConns::new(
                    config.api_key.as_deref(),
                    ApiLimits {
                        max_head: config.max_request_head,
                        max_body: config.max_message_size,
                    },
                ),
                hub: Hub::with_broker(workers, broker, config.history.max_bytes, now),
                cluster: config.cluster.is_some(),
                requests: HashMap::new(),
                rx,
                workers: Vec::new(),
                to_wake: Vec::new(),
                drain: (config.drain_duration, config.drain_timeout),
                draining: false,
                stats_interval: config.stats_interval,
                next_stats: now + config.stats_interval,
                node_name: config
                    .cluster
                    .as_ref()
                    .map_or_else(|| config.default_node_name(), |c| c.node.clone()),
                started: now,
                instance: instance_id(),
                next_heartbeat: now,
                last_figures: Figures::default(),
                stats,
                stop,
            },
            waker,
        ))
    }

    pub(crate) fn attach_workers(&mut self, workers: Vec<WorkerInbox>) {
        self.to_wake = vec![false; workers.len()];
        self.workers = workers;
    }

    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(256);
        while !self.stop.load(Ordering::Relaxed) {
            let until_stats = self
                .next_stats
                .min(self.next_heartbeat)
                .saturating_duration_since(Instant::now());
            let timeout = self
                .hub
                .next_tick()
                .map_or(until_stats, |t| t.min(until_stats));
            // Lingering API connections whose time is up are closed; the next is waited for.
            let now = Instant::now();
            let timeout = self.api.expire_lingering(now).map_or(timeout, |due| {
                timeout.min(due.saturating_duration_since(now))
            });
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("hub: poll failed: {e}");
                    break;
                }
            }
            let now = Instant::now();
            self.hub.tick(now);
            let down = !self.hub.store_reachable();
            if down != self.stats.store_down.swap(down, Ordering::Relaxed) && down {
                self.stats.store_outages.fetch_add(1, Ordering::Relaxed);
            }
            if now >= self.next_stats {
                self.next_stats = now + self.stats_interval;
                self.log_figures();
            }
            if now >= self.next_heartbeat {
                self.next_heartbeat = now + HEARTBEAT;
                let info = serde_json::json!({
                    "name": self.node_name,
                    "instance": self.instance,
                    "connections": self.stats.open(),
                    "subscriptions": self.stats.subscriptions.load(Ordering::Relaxed),
                    "uptime_s": now.duration_since(self.started).as_secs(),
                });
                self.hub.heartbeat(info.to_string());
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.api.accept_all(&self.listener, self.poll.registry()),
                    WAKER => {}
                    SIGNALS => self.on_signals(),
                    token => {
                        let id = token.0 as ApiConnId;
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.with_api(|api, registry, handler| {
                                api.on_readable(id, registry, handler)
                            });
                        }
                        if event.is_writable() {
                            self.api.write(id, self.poll.registry());
                        }
                    }
                }
            }
            self.take_worker_messages();
        }
    }

    /// Takes every message the workers sent, then ships what the hub produced.
    fn take_worker_messages(&mut self) {
        while let Ok(message) = self.rx.try_recv() {
            match message {
                ToHub::Drain => self.begin_drain(),
                message => self.hub.on_message(message),
            }
        }
        self.ship();
    }

    /// Sends the hub's outbox to the workers' inboxes, waking each once, and writes the
    /// answers that became ready.
    fn ship(&mut self) {
        // Answers free in-flight slots and let parked requests run, which may produce more to
        // ship: go on until nothing is left (each round needs new input, so this ends).
        loop {
            let more = self.ship_once();
            if !more {
                break;
            }
        }
    }

    /// Ships once; true if processing the answers produced more to ship.
    fn ship_once(&mut self) -> bool {
        for (worker, message) in self.hub.take_outbox() {
            let Some(inbox) = self.workers.get(worker) else {
                continue;
            };
            inbox.load.fetch_add(message.weight(), Ordering::Relaxed);
            if inbox.tx.send(message).is_ok() {
                self.to_wake[worker] = true;
            }
        }
        for (worker, wake) in self.to_wake.iter_mut().enumerate() {
            if std::mem::take(wake) {
                if let Err(e) = self.workers[worker].waker.wake() {
                    warn!("hub: waking worker {worker}: {e}");
                }
            }
        }
        let answers: Vec<_> = self.hub.take_answers().collect();
        let mut touched = Vec::new();
        for answer in answers {
            let Some(id) = self.requests.remove(&answer.conn) else {
                continue;
            };
            self.api
                .answer(id, answer.conn, answer.status, &answer.body);
            if !touched.contains(&id) {
                touched.push(id);
            }
        }
        for id in touched {
            self.with_api(|api, registry, handler| api.flush(id, registry, handler));
        }
        self.hub.has_output()
    }

    /// Lends the API connections the registry and a handler that runs each parsed command
    /// against the hub (the borrows are of disjoint fields).
    fn with_api<R>(
        &mut self,
        f: impl FnOnce(&mut ApiConns, &mio::Registry, &mut api_conn::Handler) -> R,
    ) -> R {
        let HubLoop {
            poll,
            api,
            hub,
            requests,
            workers,
            stats,
            cluster,
            node_name,
            started,
            ..
        } = self;
        let node = (node_name.as_str(), *started);
        let mut handler = |pending: Pending, command: ApiCommand| {
            run_command(
                hub, *cluster, node, workers, stats, requests, pending, command,
            )
        };
        f(api, poll.registry(), &mut handler)
    }

    fn on_signals(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        let received: Vec<i32> = signals.pending().collect();
        for signal in received {
            if signal == SIGHUP {
                self.reload_tls();
                continue;
            }
            if self.draining {
                warn!("second signal ({signal}): stopping now without finishing the drain");
                self.stop.store(true, Ordering::Relaxed);
                for inbox in &self.workers {
                    let _ = inbox.waker.wake();
                }
            } else {
                info!("signal {signal}: draining");
                self.begin_drain();
            }
        }
    }

    /// SIGHUP: reads the TLS pair again. A pair that does not load or match is refused and
    /// the one in force stays; either way open connections are untouched.
    fn reload_tls(&self) {
        match &self.tls {
            None => info!("SIGHUP: no --tls-cert, nothing to reload"),
            Some(certs) => match certs.reload() {
                Ok(()) => info!("SIGHUP: TLS certificate reloaded; new handshakes use it"),
                Err(e) => error!("SIGHUP: TLS certificate not reloaded, keeping the old one: {e}"),
            },
        }
    }

    /// Tells every worker to drain: Close 1001 spread over `--drain-duration`, then wait up to
    /// `--drain-timeout`. `/healthz` and new upgrades answer 503 from now on.
    fn begin_drain(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        self.stats.draining.store(true, Ordering::Relaxed);
        // Other nodes stop counting this one at once (cluster mode).
        self.hub.depart();
        let (spread, timeout) = self.drain;
        info!(
            "draining {} connections over {spread:?}, then waiting up to {timeout:?}",
            self.stats.open()
        );
        for inbox in &self.workers {
            inbox.load.fetch_add(64, Ordering::Relaxed);
            let _ = inbox.tx.send(ToWorker::Drain { spread, timeout });
            let _ = inbox.waker.wake();
        }
    }

    /// The periodic one-line summary (`--stats-interval`).
    fn log_figures(&mut self) {
        let s = &self.stats;
        let now = Figures {
            messages_in: s.messages_in.load(Ordering::Relaxed),
            messages_out: s.messages_out.load(Ordering::Relaxed),
            deliveries: s.deliveries.load(Ordering::Relaxed),
            slow_consumers: s.slow_consumers.load(Ordering::Relaxed),
            handshake_failures: s.handshake_failures.load(Ordering::Relaxed),
        };
        let last = std::mem::replace(&mut self.last_figures, now);
        let secs = self.stats_interval.as_secs_f64().max(0.001);
        let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / secs;
        info!(
            "{} connections, {:.0} msgs/s in, {:.0} msgs/s out, {:.0} deliveries/s, {} slow-consumer drops, {} failed handshakes (last {:?})",
            s.open(),
            rate(now.messages_in, last.messages_in),
            rate(now.messages_out, last.messages_out),
            rate(now.deliveries, last.deliveries),
            now.slow_consumers - last.slow_consumers,
            now.handshake_failures - last.handshake_failures,
            self.stats_interval
        );
    }
}

/// Runs one parsed API command: `/api/stats`, `/metrics` and the status page are answered at
/// once, and so is a 503 when a worker's inbox is full; anything else goes to the hub under the
/// request's number and is answered when the hub's answer comes back (`None`). `node`: this
/// node's name and the hub's start, for `/api/stats`.
#[allow(clippy::too_many_arguments)]
fn run_command<B: Broker>(
    hub: &mut Hub<B>,
    cluster: bool,
    node: (&str, Instant),
    workers: &[WorkerInbox],
    stats: &Stats,
    requests: &mut HashMap<RequestId, ApiConnId>,
    pending: Pending,
    command: ApiCommand,
) -> Option<Vec<u8>> {
    let keep_alive = pending.keep_alive;
    let figures = || {
        let (channels, user_streams) = hub.stream_counts();
        let (history_messages, history_bytes) = hub.history_size();
        HubFigures {
            channels,
            user_streams,
            history_messages,
            history_bytes,
            node: node.0.to_owned(),
            uptime_s: node.1.elapsed().as_secs(),
        }
    };
    let request = match command {
        ApiCommand::Stats => {
            let body = stats_json(stats, &figures());
            return Some(api::json_response(200, &body, keep_alive));
        }
        ApiCommand::StatusPage => return Some(api::status_page_response(keep_alive)),
        ApiCommand::Metrics => {
            let body = metrics_text(stats, &figures());
            return Some(api::text_response(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
                keep_alive,
            ));
        }
        ApiCommand::Publish {
            channel,
            data,
            options,
        } => request(
            Command::Publish {
                channel: Arc::from(channel),
                data: data.get().to_owned(),
            },
            options,
        ),
        ApiCommand::Send {
            user,
            data,
            options,
        } => request(
            Command::Send {
                user: Arc::from(user),
                data: data.get().to_owned(),
            },
            options,
        ),
        ApiCommand::Broadcast { data, options } => request(
            Command::Broadcast {
                data: data.get().to_owned(),
            },
            options,
        ),
        ApiCommand::Disconnect { user, options } => request(
            Command::Disconnect {
                user: Arc::from(user),
            },
            options,
        ),
        ApiCommand::Nodes => Request::from(Command::Nodes),
        ApiCommand::Presence { channel } => Request::from(Command::Presence {
            channel: Arc::from(channel),
        }),
    };
    if cluster && request.wait == Wait::Delivered {
        let body = api::error_body(
            "wait=delivered is not available in cluster mode: delivery is asynchronous across nodes",
            Some("wait"),
        );
        return Some(api::json_response(400, &body, keep_alive));
    }
    if hub.remembers(&request) {
        // A retry of a keyed request: it runs nothing, the hub answers it from memory (or
        // with the first when that comes), whatever the inboxes hold.
        requests.insert(pending.request, pending.conn);
        hub.request(pending.request, request);
        return None;
    }
    let command = &request.command;
    let weight = 256
        + match command {
            Command::Publish { data, .. }
            | Command::Send { data, .. }
            | Command::Broadcast { data } => data.len(),
            _ => 0,
        };
    let full = hub.fan_out(command).into_iter().any(|w| {
        workers
            .get(w)
            .is_some_and(|inbox| inbox.load.load(Ordering::Relaxed) + weight > MAX_INBOX_BYTES)
    });
    if full {
        stats.api_overloaded.fetch_add(1, Ordering::Relaxed);
        let body = api::error_body("workers' inboxes are full; retry shortly", None);
        return Some(api::json_response(503, &body, keep_alive));
    }
    requests.insert(pending.request, pending.conn);
    // Shipped to the workers once per turn (see `take_worker_messages`), so a pipelined burst
    // reaches each worker as one batch.
    hub.request(pending.request, request);
    None
}

/// A POST command with its options, for the hub.
fn request(command: Command, options: PostOptions) -> Request {
    Request {
        command,
        wait: options.wait,
        idempotency_key: options.idempotency_key.map(String::into_boxed_str),
    }
}

/// An id for this process, different from any other process's in practice: its pid and
/// its start time in nanoseconds since the Unix epoch, in hex (`"1f3a-187c4d2e9a0b1c2d"`).
fn instance_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{nanos:x}", std::process::id())
}
