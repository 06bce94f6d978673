//! The event-loop side: sockets, buffers and timers. [`Server::start`] binds one
//! `SO_REUSEPORT` listener per worker and runs one `worker` thread per core; each worker owns
//! its connections for life and calls the sans-IO [`crate::protocol`] for every byte.

mod api_conn;
pub mod connection;
pub mod drain;
pub mod http;
mod hub_loop;
pub mod listener;
pub mod per_ip;
pub(crate) mod sys;
pub mod timer_wheel;
pub mod transport;
mod worker;

pub use sys::{open_files_limit, raise_open_files_limit};

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::cluster::broker::RedisBroker;
use crate::cluster::link::Link;
use crate::config::Config;
use crate::protocol::handshake::HandshakeConfig;
use crate::protocol::message::{DecoderConfig, Role};
use crate::push::hub::MemoryBroker;
use crate::session::SessionConfig;

pub use crate::metrics::Stats;

/// The timer wheel's resolution.
const TICK: Duration = Duration::from_millis(10);

/// File descriptors kept back from the connection ceiling for listeners, pollers and logs.
const RESERVED_FDS: usize = 64;

/// What every worker needs from the configuration, in the form it uses.
#[derive(Debug)]
pub(crate) struct Settings {
    /// The sessions' timeouts (in ticks) and parser limits.
    session: SessionConfig,
    echo_path: Option<String>,
    ws_path: String,
    /// HS256 secret; `None` is open mode.
    jwt_secret: Option<Vec<u8>>,
    /// Empty: any Origin.
    allowed_origins: Vec<String>,
    max_subscriptions: usize,
    publish_rate: u16,
    trust_proxy: Vec<per_ip::Cidr>,
    /// `None` when both per-address limits are off.
    ip_limits: Option<per_ip::IpLimits>,
    /// min(--max-connections, open-files limit − 64).
    max_connections: usize,
    max_backlog: usize,
    /// `--compression-min-size`: smaller outgoing messages go plain.
    compression_min_size: usize,
    tick: Duration,
    /// `--upstream` and its companions; `None`: binary messages get error 501.
    upstream: Option<crate::upstream::UpstreamConfig>,
}

impl Settings {
    fn new(config: &Config, max_connections: usize) -> Settings {
        let ticks = |d: Duration| ticks(d, TICK);
        Settings {
            session: SessionConfig {
                handshake: HandshakeConfig {
                    max_head_size: config.max_request_head,
                    permessage_deflate: config.compression,
                    ..HandshakeConfig::default()
                },
                decoder: DecoderConfig {
                    role: Role::Server,
                    max_message_size: config.max_message_size,
                },
                handshake_ticks: ticks(config.handshake_timeout),
                ping_ticks: ticks(config.ping_interval),
                pong_ticks: ticks(config.pong_timeout),
                close_ticks: ticks(config.close_timeout),
            },
            echo_path: config.echo_path.clone(),
            ws_path: config.ws_path.clone(),
            jwt_secret: config.jwt_secret.as_ref().map(|s| s.as_bytes().to_vec()),
            allowed_origins: config.allowed_origins.clone(),
            max_subscriptions: config.max_subscriptions,
            publish_rate: config.max_client_publish_rate,
            trust_proxy: config.trust_proxy.clone(),
            ip_limits: per_ip::IpLimits::new(
                config.max_connections_per_ip,
                config.max_handshakes_per_ip,
            ),
            max_connections,
            max_backlog: config.max_backlog,
            compression_min_size: config.compression_min_size,
            tick: TICK,
            upstream: config.upstream.clone(),
        }
    }

    fn ticks(&self, d: Duration) -> u64 {
        ticks(d, self.tick)
    }
}

/// Whole ticks in `d`, rounded up, at least one.
/// A worker's loop, to run on its own thread: each worker over plain TCP or TLS connections.
type WorkerRun = Box<dyn FnOnce() + Send>;

/// Makes the worker `id` over transport `T` for `listener` and queues its loop in `workers`;
/// returns its waker.
fn add_worker<T>(
    workers: &mut Vec<WorkerRun>,
    (id, listener, acceptor): (usize, mio::net::TcpListener, T::Acceptor),
    link: worker::HubLink,
    settings: Arc<Settings>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
) -> io::Result<Arc<mio::Waker>>
where
    T: transport::Transport + 'static,
    worker::Worker<T>: Send,
{
    let (worker, waker) =
        worker::Worker::<T>::new(id, listener, acceptor, link, settings, stats, stop)?;
    workers.push(Box::new(move || worker.run()));
    Ok(waker)
}

fn ticks(d: Duration, tick: Duration) -> u64 {
    let n = d.as_nanos().div_ceil(tick.as_nanos().max(1));
    u64::try_from(n).unwrap_or(u64::MAX).max(1)
}

/// The hub loop over the broker the configuration chose.
enum AnyHubLoop {
    /// One node: streams in process. (Both boxed: one per process, and large.)
    Memory(Box<hub_loop::HubLoop<MemoryBroker>>),
    /// Cluster mode: streams in Redis.
    Cluster(Box<hub_loop::HubLoop<RedisBroker<Link>>>),
}

impl AnyHubLoop {
    fn attach_workers(&mut self, inboxes: Vec<hub_loop::WorkerInbox>) {
        match self {
            AnyHubLoop::Memory(hub) => hub.attach_workers(inboxes),
            AnyHubLoop::Cluster(hub) => hub.attach_workers(inboxes),
        }
    }

    fn run(self) {
        match self {
            AnyHubLoop::Memory(hub) => (*hub).run(),
            AnyHubLoop::Cluster(hub) => (*hub).run(),
        }
    }
}

/// A running server: its workers and the means to stop them.
pub struct Server {
    /// The certificate pair a reload swaps (`--tls-cert`); `None` on a plain listener.
    tls: Option<Arc<crate::tls::CertStore>>,
    hub: hub_loop::HubHandle,
    local_addr: SocketAddr,
    api_addr: SocketAddr,
    max_connections: usize,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<mio::Waker>>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds the listeners and starts one worker thread per `config.threads`, plus the hub
    /// thread serving the push API. Signals are left alone (see
    /// [`Server::start_handling_signals`]); [`Server::drain`] drains on request.
    pub fn start(config: &Config) -> io::Result<Server> {
        Server::start_inner(config, false)
    }

    /// Like [`Server::start`], and SIGTERM/SIGINT start a graceful drain (a second one stops
    /// at once). For the binary: a test process keeps its default signal behaviour.
    pub fn start_handling_signals(config: &Config) -> io::Result<Server> {
        Server::start_inner(config, true)
    }

    fn start_inner(config: &Config, handle_signals: bool) -> io::Result<Server> {
        let max_connections = config
            .max_connections
            .min(open_files_limit().saturating_sub(RESERVED_FDS).max(1));
        let settings = Arc::new(Settings::new(config, max_connections));
        let stats = Arc::new(Stats::new(config.threads.max(1)));
        let stop = Arc::new(AtomicBool::new(false));
        let tls =
            match &config.tls {
                None => None,
                Some(files) => Some(crate::tls::ServerTls::new(&files.cert, &files.key).map_err(
                    |e| io::Error::new(io::ErrorKind::InvalidInput, format!("TLS: {e}")),
                )?),
            };
        let listeners = listener::bind_all(config.listen, config.threads.max(1)).map_err(|e| {
            with_context(
                e,
                format_args!("cannot listen on {} (--listen)", config.listen),
            )
        })?;
        let local_addr = listeners[0].local_addr()?;
        let api_listener = mio::net::TcpListener::bind(config.api_listen).map_err(|e| {
            with_context(
                e,
                format_args!("cannot listen on {} (--api-listen)", config.api_listen),
            )
        })?;
        let api_addr = api_listener.local_addr()?;

        let (to_hub, hub_rx) = mpsc::channel();
        let threads = config.threads.max(1);
        let (mut hub, hub_waker) = match &config.cluster {
            None => {
                let (hub, waker) = hub_loop::HubLoop::new(
                    api_listener,
                    hub_rx,
                    config,
                    Arc::clone(&stats),
                    Arc::clone(&stop),
                    handle_signals,
                    threads,
                    tls.as_ref().map(|t| Arc::clone(&t.certs)),
                    |_, now| Ok(MemoryBroker::new(config.history, now)),
                )?;
                (AnyHubLoop::Memory(Box::new(hub)), waker)
            }
            Some(cluster) => {
                let (hub, waker) = hub_loop::HubLoop::new(
                    api_listener,
                    hub_rx,
                    config,
                    Arc::clone(&stats),
                    Arc::clone(&stop),
                    handle_signals,
                    threads,
                    tls.as_ref().map(|t| Arc::clone(&t.certs)),
                    |waker, now| {
                        let link = Link::start(cluster, waker, Arc::clone(&stats.redis_latency))?;
                        Ok(RedisBroker::new(
                            link,
                            &cluster.node,
                            config.history,
                            cluster.timeout,
                            now,
                        ))
                    },
                )?;
                (AnyHubLoop::Cluster(Box::new(hub)), waker)
            }
        };
        let hub_handle = hub_loop::HubHandle {
            tx: to_hub,
            waker: Arc::clone(&hub_waker),
        };
        let drain_handle = hub_handle.clone();
        let mut wakers = vec![hub_waker];
        let mut inboxes = Vec::new();
        let mut workers: Vec<WorkerRun> = Vec::new();
        for (id, listener) in listeners.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            let load = Arc::new(AtomicUsize::new(0));
            let link = worker::HubLink {
                hub: hub_handle.clone(),
                inbox: rx,
                inbox_load: Arc::clone(&load),
            };
            let (settings, stats, stop) =
                (Arc::clone(&settings), Arc::clone(&stats), Arc::clone(&stop));
            let waker = match &tls {
                None => add_worker::<mio::net::TcpStream>(
                    &mut workers,
                    (id, listener, ()),
                    link,
                    settings,
                    stats,
                    stop,
                )?,
                Some(tls) => add_worker::<crate::tls::TlsStream>(
                    &mut workers,
                    (id, listener, Arc::clone(&tls.config)),
                    link,
                    settings,
                    stats,
                    stop,
                )?,
            };
            inboxes.push(hub_loop::WorkerInbox {
                tx,
                waker: Arc::clone(&waker),
                load,
            });
            wakers.push(waker);
        }
        hub.attach_workers(inboxes);
        let mut threads = vec![std::thread::Builder::new()
            .name("edgepush-hub".to_owned())
            .spawn(move || hub.run())?];
        for (id, worker) in workers.into_iter().enumerate() {
            threads.push(
                std::thread::Builder::new()
                    .name(format!("edgepush-worker-{id}"))
                    .spawn(worker)?,
            );
        }
        Ok(Server {
            tls: tls.map(|t| t.certs),
            hub: drain_handle,
            local_addr,
            api_addr,
            max_connections,
            stats,
            stop,
            wakers,
            threads,
        })
    }

    /// The push API's address (`--api-listen`).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The public listener's bound address (`--listen`, with the actual port when it was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Reads `--tls-cert` and `--tls-key` again, as SIGHUP does: new handshakes use the new
    /// pair, open connections keep theirs.
    ///
    /// # Errors
    /// The listener is plain, or the new pair does not load or match (the old pair stays).
    pub fn reload_tls(&self) -> Result<(), String> {
        match &self.tls {
            None => Err("no --tls-cert: nothing to reload".to_owned()),
            Some(certs) => certs.reload(),
        }
    }

    /// The effective connection ceiling: min(`--max-connections`, open-files limit − 64).
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// The counters shared by every worker and the hub: what `/api/stats`, `/metrics` and the
    /// `--stats-interval` line report.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Starts a graceful drain, as SIGTERM does: Close 1001 to every client spread over
    /// `--drain-duration`, then up to `--drain-timeout` for their close handshakes; the
    /// workers end after it (see [`Server::wait`]).
    pub fn drain(&self) {
        if self.hub.tx.send(crate::push::hub::ToHub::Drain).is_ok() {
            let _ = self.hub.waker.wake();
        }
    }

    /// Stops every worker (dropping their connections) and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for waker in &self.wakers {
            let _ = waker.wake();
        }
        self.wait();
    }

    /// Waits for the workers to end (after a drain, or [`Server::stop`]), then stops the hub.
    pub fn wait(mut self) {
        // The first thread is the hub's; the workers follow.
        let hub = if self.threads.is_empty() {
            None
        } else {
            Some(self.threads.remove(0))
        };
        for thread in self.threads {
            let _ = thread.join();
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(waker) = self.wakers.first() {
            let _ = waker.wake();
        }
        if let Some(hub) = hub {
            let _ = hub.join();
        }
    }
}

/// `e` with `what` in front of its message (same kind): which listener or file failed, for the
/// one line the binary prints when it cannot start.
fn with_context(e: io::Error, what: std::fmt::Arguments<'_>) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_up() {
        assert_eq!(ticks(Duration::from_millis(25), TICK), 3);
        assert_eq!(ticks(Duration::from_millis(30), TICK), 3);
        assert_eq!(ticks(Duration::ZERO, TICK), 1);
    }
}
