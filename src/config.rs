//! The server's flags, their defaults and validation: `Args` is what clap parses (each flag
//! also from an `EDGEPUSH_<NAME>` environment variable), `Config` is the checked, typed result
//! the server runs with.
//!
//! Per-value rules (syntax, non-zero) live in the value parsers, so a bad value is reported by
//! clap as a one-line error with exit code 2. Rules that relate two flags live in
//! [`Config::from_args`], which returns a [`ConfigError`].

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Command-line flags. Every flag can also be set through the environment variable named in
/// its help; the command line wins.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "edgepush",
    version,
    about = "A WebSocket push server on mio",
    long_about = "A WebSocket push server on mio.\n\n\
        Durations read like 500ms, 30s, 5m, 1h (a bare number is seconds). \
        Sizes read like 512 (bytes), 64KiB, 1MiB, 1GiB, or 64KB/1MB (powers of ten)."
)]
pub struct Args {
    /// Address of the public listener (WebSocket endpoints).
    #[arg(
        long,
        value_name = "ADDR",
        env = "EDGEPUSH_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub listen: SocketAddr,

    /// Event-loop threads, one per core, each with its own SO_REUSEPORT listener
    /// [default: number of cores].
    #[arg(long, value_name = "N", env = "EDGEPUSH_THREADS", value_parser = parse_positive_count)]
    pub threads: Option<usize>,

    /// Path of the echo endpoint (echoes every message; for conformance tests and benchmarks).
    #[arg(
        long,
        value_name = "PATH",
        env = "EDGEPUSH_ECHO_PATH",
        default_value = "/echo"
    )]
    pub echo_path: String,

    /// Remove the echo endpoint (overrides --echo-path).
    #[arg(
        long,
        env = "EDGEPUSH_NO_ECHO",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub no_echo: bool,

    /// Most connections this server holds; beyond it new upgrades get 503. The effective
    /// ceiling is also bounded by the open-files limit.
    #[arg(
        long,
        value_name = "N",
        env = "EDGEPUSH_MAX_CONNECTIONS",
        default_value = "1000000",
        value_parser = parse_positive_count
    )]
    pub max_connections: usize,

    /// Largest client message accepted; a larger one is refused from its frame header and the
    /// connection closed with 1009.
    #[arg(
        long,
        value_name = "BYTES",
        env = "EDGEPUSH_MAX_MESSAGE_SIZE",
        default_value = "1MiB",
        value_parser = parse_positive_size
    )]
    pub max_message_size: usize,

    /// A connection that has not finished its WebSocket upgrade by then is dropped.
    #[arg(
        long,
        value_name = "DUR",
        env = "EDGEPUSH_HANDSHAKE_TIMEOUT",
        default_value = "10s",
        value_parser = parse_positive_duration
    )]
    pub handshake_timeout: Duration,

    /// The server pings an otherwise silent connection this often.
    #[arg(
        long,
        value_name = "DUR",
        env = "EDGEPUSH_PING_INTERVAL",
        default_value = "30s",
        value_parser = parse_positive_duration
    )]
    pub ping_interval: Duration,

    /// If no frame at all arrives within this after a ping, the connection is closed.
    #[arg(
        long,
        value_name = "DUR",
        env = "EDGEPUSH_PONG_TIMEOUT",
        default_value = "10s",
        value_parser = parse_positive_duration
    )]
    pub pong_timeout: Duration,

    /// Unsent bytes (data and control) queued for one connection before it counts as a slow
    /// consumer and is closed with 1008. Must be at least twice --max-message-size.
    #[arg(
        long,
        value_name = "BYTES",
        env = "EDGEPUSH_MAX_BACKLOG",
        default_value = "4MiB",
        value_parser = parse_positive_size
    )]
    pub max_backlog: usize,

    /// After sending our Close frame, how long to wait for the peer's Close before dropping
    /// the TCP connection.
    #[arg(
        long,
        value_name = "DUR",
        env = "EDGEPUSH_CLOSE_TIMEOUT",
        default_value = "3s",
        value_parser = parse_positive_duration
    )]
    pub close_timeout: Duration,

    /// Path of the push endpoint (the JSON client protocol: subscribe, publish, ...).
    #[arg(
        long,
        value_name = "PATH",
        env = "EDGEPUSH_WS_PATH",
        default_value = "/ws"
    )]
    pub ws_path: String,

    /// Address of the push API and /metrics. Must be loopback unless --api-key is set.
    #[arg(
        long,
        value_name = "ADDR",
        env = "EDGEPUSH_API_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub api_listen: SocketAddr,

    /// Bearer token the push API requires (Authorization: Bearer KEY).
    #[arg(
        long,
        value_name = "KEY",
        env = "EDGEPUSH_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,

    /// HS256 secret for connection tokens on the push endpoint. Without it the server runs in
    /// open mode (user from ?user=, subscribe and publish anywhere): for development only.
    #[arg(
        long,
        value_name = "SECRET",
        env = "EDGEPUSH_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// An Origin allowed to connect (repeatable, or comma-separated in the environment). When
    /// set, upgrades with any other Origin get 403; requests without Origin are allowed.
    #[arg(
        long,
        value_name = "ORIGIN",
        env = "EDGEPUSH_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origin: Vec<String>,

    /// Channels one connection may be subscribed to at once (not counting $user).
    #[arg(
        long,
        value_name = "N",
        env = "EDGEPUSH_MAX_SUBSCRIPTIONS",
        default_value = "128",
        value_parser = parse_positive_count
    )]
    pub max_subscriptions: usize,

    /// Client publish ops per connection per second (`10` or `10/s`, at most 65535); more get
    /// error 429.
    #[arg(
        long,
        value_name = "N",
        env = "EDGEPUSH_MAX_CLIENT_PUBLISH_RATE",
        default_value = "10/s",
        value_parser = parse_rate
    )]
    pub max_client_publish_rate: u16,

    /// Cluster mode through Redis 7: `redis://[user:pass@]host:port[/db]`. Without it every
    /// stream lives in this process. Run every node with the same history flags (the
    /// publishing node's apply).
    #[arg(
        long,
        value_name = "URL",
        env = "EDGEPUSH_REDIS",
        hide_env_values = true
    )]
    pub redis: Option<String>,

    /// Prefix of every Redis key and topic (then a colon), so two clusters can share a Redis.
    #[arg(
        long,
        value_name = "NAME",
        env = "EDGEPUSH_REDIS_PREFIX",
        default_value = "edgepush"
    )]
    pub redis_prefix: String,

    /// This node's name in /api/nodes, presence and logs [default: host name + listen port].
    #[arg(long, value_name = "NAME", env = "EDGEPUSH_NODE_NAME")]
    pub node_name: Option<String>,

    /// A Redis call not answered by then fails: the API answers 503 with Retry-After.
    #[arg(
        long,
        value_name = "DUR",
        env = "EDGEPUSH_REDIS_TIMEOUT",
        default_value = "2s",
        value_parser = parse_positive_duration
    )]
    pub redis_timeout: Duration,

    /// Declare that Redis keeps everything it acknowledged across restarts (AOF with
    /// appendfsync always, no failover to an async replica): epochs survive a Redis restart.
    #[arg(
        long,
        env = "EDGEPUSH_REDIS_DURABLE",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub redis_durable: bool,

    /// Messages kept per channel for replay after a reconnect (0: no channel history).
    #[arg(
        long,
        value_name = "N",
        env = "EDGEPUSH_HISTORY_SIZE",
        default_value = "100"
    )]
    pub history_size: usize,

    /// Oldest message kept for replay; also how long a user's $user stream outlives the
    /// user's last connection.
    #[arg(
        long,
        value_name = "DUR",
        env = "EDGEPUSH_HISTORY_TTL",
        default_value = "5m",
        value_parser = parse_positive_duration
    )]
    pub history_ttl: Duration,

    /// Messages kept per $user stream (0: none).
    #[arg(
        long,
        value_name = "N",
        env = "EDGEPUSH_USER_HISTORY_SIZE",
        default_value = "20"
    )]
    pub user_history_size: usize,

    /// All history together (frames plus bookkeeping), and the `$user` streams kept for users
    /// who went offline (128 bytes each); the oldest go first.
    #[arg(
        long,
        value_name = "BYTES",
        env = "EDGEPUSH_HISTORY_MAX_BYTES",
        default_value = "64MiB",
        value_parser = parse_positive_size
    )]
    pub history_max_bytes: usize,

    /// Concurrent connections from one client address (0: off). Excess upgrades get 429.
    #[arg(
        long,
        value_name = "N",
        env = "EDGEPUSH_MAX_CONNECTIONS_PER_IP",
        default_value = "0"
    )]
    pub max_connections_per_ip: usize,

    /// Upgrades per second from one client address (0: off). Excess gets 429 + Retry-After.
    #[arg(
        long,
        value_name = "N",
        env = "EDGEPUSH_MAX_HANDSHAKES_PER_IP",
        default_value = "0"
    )]
    pub max_handshakes_per_ip: usize,

    /// A proxy (address or CIDR block, repeatable) whose X-Forwarded-For / X-Real-IP headers
    /// are believed for the client address. Headers from anyone else are ignored.
    #[arg(
        long,
        value_name = "CIDR",
        env = "EDGEPUSH_TRUST_PROXY",
        value_delimiter = ','
    )]
    pub trust_proxy: Vec<crate::server::per_ip::Cidr>,

    /// On SIGTERM/SIGINT, spread the Close 1001 frames to clients over this window, so a fleet
    /// restart does not become a reconnect storm (0s: all at once).
    #[arg(
        long,
        value_name = "DUR",
        env = "EDGEPUSH_DRAIN_DURATION",
        default_value = "0s",
        value_parser = parse_duration
    )]
    pub drain_duration: Duration,

    /// After the last Close 1001, wait at most this long for clients' close handshakes.
    #[arg(
        long,
        value_name = "DUR",
        env = "EDGEPUSH_DRAIN_TIMEOUT",
        default_value = "10s",
        value_parser = parse_duration
    )]
    pub drain_timeout: Duration,

    /// Largest request head (request line and header fields) of a WebSocket upgrade or a
    /// push API request; a larger one gets 431. Browsers send their cookies in the upgrade,
    /// so leave room for them. The buffer is freed once a connection is upgraded.
    /// Between 1KiB and 64KiB.
    #[arg(
        long,
        value_name = "BYTES",
        env = "EDGEPUSH_MAX_REQUEST_HEAD",
        default_value = "16KiB",
        value_parser = parse_request_head_size
    )]
    pub max_request_head: usize,

    /// Do not negotiate permessage-deflate (RFC 7692); by default it is accepted when a client
    /// offers it, on both endpoints.
    #[arg(
        long,
        env = "EDGEPUSH_NO_COMPRESSION",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub no_compression: bool,

    /// Outgoing messages smaller than this are sent uncompressed even to a connection that
    /// negotiated permessage-deflate (small messages barely shrink and cost CPU).
    #[arg(
        long,
        value_name = "BYTES",
        env = "EDGEPUSH_COMPRESSION_MIN_SIZE",
        default_value = "128",
        value_parser = parse_size
    )]
    pub compression_min_size: usize,

    /// The backend that answers clients' binary messages (actions): `http://host:port/path`.
    /// Without it a binary message gets error 501. The host is resolved once, at start.
    #[arg(long, value_name = "URL", env = "EDGEPUSH_UPSTREAM")]
    pub upstream: Option<String>,

    /// An action not answered by the upstream this long after its request was handed to a
    /// connection (connecting included) gets error 504.
    #[arg(
        long,
        value_name = "DUR",
        env = "EDGEPUSH_UPSTREAM_TIMEOUT",
        default_value = "5s",
        value_parser = parse_positive_duration
    )]
    pub upstream_timeout: Duration,

    /// Requests at the upstream at once, per worker thread; more wait, first come first served.
    #[arg(
        long,
        value_name = "N",
        env = "EDGEPUSH_UPSTREAM_MAX_INFLIGHT",
        default_value = "1024",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub upstream_max_inflight: u32,

    /// How often to log one info line with connections, messages per second and drops.
    #[arg(
        long,
        value_name = "DUR",
        env = "EDGEPUSH_STATS_INTERVAL",
        default_value = "60s",
        value_parser = parse_positive_duration
    )]
    pub stats_interval: Duration,

    /// PEM certificate chain (end-entity first): the public listener then speaks TLS only
    /// (https, wss). Needs --tls-key. SIGHUP reloads both files.
    #[arg(long, value_name = "FILE", env = "EDGEPUSH_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519) of --tls-cert.
    #[arg(long, value_name = "FILE", env = "EDGEPUSH_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Log level. RUST_LOG is also honoured, for finer per-module filters.
    #[arg(
        long,
        value_name = "LEVEL",
        env = "EDGEPUSH_LOG",
        default_value = "info",
        value_enum,
        ignore_case = true
    )]
    pub log: LogLevel,
}

/// The `--log` values. Their doc lines are also the `--help` text of each value (clap), so
/// they stay short and without Markdown.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Errors only
    Error,
    /// Also warnings: open mode, a low open-files limit, a failed poll, accept or register
    Warn,
    /// Also start-up, signals, drain progress and the --stats-interval line
    Info,
    /// Also one line per connection event: refusal, timeout, close, read or write failure
    Debug,
    /// Everything, the dependencies' detail included
    Trace,
}

impl From<LogLevel> for log::LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Public listener address.
    pub listen: SocketAddr,
    /// Number of event-loop threads, at least 1.
    pub threads: usize,
    /// Echo endpoint path (starts with `/`), `None` with `--no-echo`.
    pub echo_path: Option<String>,
    /// Connection limit, at least 1.
    pub max_connections: usize,
    /// Largest client message in bytes, at least 1.
    pub max_message_size: usize,
    /// `--handshake-timeout`: from accept to a finished upgrade (RFC 6455 section 4); later
    /// the connection is dropped without a response. Non-zero; rounded to ticks by the server.
    pub handshake_timeout: Duration,
    /// `--ping-interval`: silence on a connection after which the server sends a Ping
    /// (RFC 6455 section 5.5.2). Non-zero.
    pub ping_interval: Duration,
    /// `--pong-timeout`: after a Ping, how long to wait for any frame at all before closing
    /// the connection. Non-zero.
    pub pong_timeout: Duration,
    /// Per-connection unsent-bytes limit; at least `2 * max_message_size`.
    pub max_backlog: usize,
    /// Wait for the peer's Close after ours, then drop TCP.
    pub close_timeout: Duration,
    /// `--log`, converted from [`LogLevel`]; `RUST_LOG` can refine it per module.
    pub log_level: log::LevelFilter,
    /// Push endpoint path.
    pub ws_path: String,
    /// `--api-listen`: the push API and `/metrics` listener. Loopback unless `api_key` is set
    /// ([`ConfigError::ApiKeyRequired`]).
    pub api_listen: SocketAddr,
    /// `--api-key`: the bearer token (`Authorization: Bearer KEY`) the push API requires;
    /// `None`: the API is open to whoever can reach `api_listen`.
    pub api_key: Option<String>,
    /// `--jwt-secret`: the HS256 key (RFC 7519 / RFC 7518 section 3.2) that signs connection
    /// tokens on the push endpoint; `None`: open mode, the user comes from `?user=`.
    pub jwt_secret: Option<String>,
    /// Empty: any Origin.
    pub allowed_origins: Vec<String>,
    /// `--max-subscriptions`: channels one connection may hold at once, not counting its
    /// `$user` stream. At least 1.
    pub max_subscriptions: usize,
    /// Client publishes per connection per second.
    pub max_client_publish_rate: u16,
    /// `--history-size`, `--history-ttl`, `--user-history-size` and `--history-max-bytes`:
    /// what the hub keeps for replay.
    pub history: crate::push::hub::HistoryConfig,
    /// `--max-connections-per-ip`: concurrent connections from one client address; 0: no
    /// limit. Excess upgrades get 429.
    pub max_connections_per_ip: usize,
    /// `--max-handshakes-per-ip`: upgrades per second from one client address; 0: no limit.
    /// Excess gets 429 with `Retry-After`.
    pub max_handshakes_per_ip: usize,
    /// `--trust-proxy`: peers whose `X-Forwarded-For` / `X-Real-IP` name the client address;
    /// empty: the TCP peer address is always the client address.
    pub trust_proxy: Vec<crate::server::per_ip::Cidr>,
    /// `--drain-duration`: on SIGTERM/SIGINT, the window over which the Close 1001 frames are
    /// spread; zero: all at once.
    pub drain_duration: Duration,
    /// `--drain-timeout`: after the last Close 1001, the longest wait for close handshakes
    /// before the process exits.
    pub drain_timeout: Duration,
    /// `--stats-interval`: how often the info line with connections, messages per second and
    /// drops is logged. Non-zero.
    pub stats_interval: Duration,
    /// `--max-request-head`: the largest request head (request line and fields, RFC 9112
    /// §2.1) in bytes on both listeners; 431 beyond. Within [`MIN_REQUEST_HEAD`]..=
    /// [`MAX_REQUEST_HEAD`].
    pub max_request_head: usize,
    /// `--no-compression` inverted: permessage-deflate (RFC 7692) is negotiated when offered.
    pub compression: bool,
    /// `--compression-min-size`: smaller outgoing messages go uncompressed, in bytes.
    pub compression_min_size: usize,
    /// `--upstream` and its companions; `None`: binary messages get error 501.
    pub upstream: Option<crate::upstream::UpstreamConfig>,
    /// Cluster mode (`--redis` and its companions); `None`: everything in process.
    pub cluster: Option<crate::cluster::ops::ClusterConfig>,
    /// `--tls-cert` and `--tls-key`: the public listener speaks TLS; `None`: plain.
    pub tls: Option<TlsFiles>,
}

/// The certificate chain and key files of `--tls-cert` / `--tls-key` (both PEM), checked to
/// load and match when the configuration is made ([`ConfigError::Tls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--tls-cert`: the chain, end-entity certificate first.
    pub cert: std::path::PathBuf,
    /// `--tls-key`: the private key.
    pub key: std::path::PathBuf,
}

/// `--redis URL` must be a `redis://` URL the client accepts; `--redis-prefix` non-empty and
/// without spaces (it starts every key and topic).
fn check_redis(url: &str, prefix: &str) -> Result<(), ConfigError> {
    let bad = |reason: String| Err(ConfigError::InvalidRedis { reason });
    if !url.starts_with("redis://") {
        return bad(format!(
            "{} is not a redis://host:port URL (rediss://, TLS to Redis, is not supported)",
            redis_endpoint(url)
        ));
    }
    if let Err(e) = redis::Client::open(url) {
        return bad(format!("{}: {e}", redis_endpoint(url)));
    }
    if prefix.is_empty() || prefix.contains(char::is_whitespace) {
        return bad(format!(
            "--redis-prefix {prefix:?} must be non-empty, without spaces"
        ));
    }
    Ok(())
}

/// The URL without its user and password, for messages and the log: `redis://host:port/db`.
pub fn redis_endpoint(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{rest}")
        }
        None => url
            .rsplit_once('@')
            .map_or(url, |(_, host)| host)
            .to_owned(),
    }
}

impl Config {
    /// `--node-name`'s default for this configuration (also this node's name on its own).
    pub fn default_node_name(&self) -> String {
        default_node_name(self.listen)
    }
}

/// `--node-name`'s default: the host name (from `/proc/sys/kernel/hostname`, else
/// `edgepush`), a colon and the public listener's port.
fn default_node_name(listen: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "edgepush".to_owned());
    format!("{host}:{}", listen.port())
}

/// The smallest `--max-request-head`: an upgrade request with its usual fields fits in it.
pub const MIN_REQUEST_HEAD: usize = 1 << 10;

/// The largest `--max-request-head`: a worker reads into one 64 KiB buffer that holds the
/// unfinished head, so a head must end within it.
pub const MAX_REQUEST_HEAD: usize = 64 << 10;

/// A rule between flags that the individual value parsers cannot check.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `--max-backlog` must hold at least two maximal messages, or a connection sending one
    /// reply while one broadcast is queued would already count as a slow consumer.
    BacklogTooSmall {
        /// The `--max-backlog` given, in bytes.
        max_backlog: usize,
        /// The `--max-message-size` given, in bytes.
        max_message_size: usize,
    },
    /// `--echo-path` must be an absolute path that a request target can match.
    InvalidEchoPath {
        /// The `--echo-path` given.
        path: String,
        /// What is wrong with it, e.g. "it must start with '/'".
        reason: &'static str,
    },
    /// An `--allowed-origin` that no browser's `Origin` could ever equal.
    InvalidOrigin {
        /// The value given.
        origin: String,
    },
    /// `--ws-path` must be a valid path, distinct from the echo path.
    InvalidWsPath {
        /// The `--ws-path` given.
        path: String,
        /// What is wrong with it, e.g. "it is also the echo path".
        reason: &'static str,
    },
    /// A push API reachable from other hosts must require a key.
    ApiKeyRequired {
        /// The non-loopback `--api-listen` given.
        api_listen: SocketAddr,
    },
    /// `--redis` is not a `redis://` URL the client accepts (`rediss://`, TLS to Redis, is not
    /// built in), or `--redis-prefix` is empty.
    InvalidRedis {
        /// What is wrong, in a few words.
        reason: String,
    },
    /// `--redis-durable` was given without `--redis`, or `--node-name` without `--redis` or
    /// `--upstream`.
    ClusterFlagWithoutRedis {
        /// The flag.
        flag: &'static str,
    },
    /// The hub tracks workers in a 64-bit mask.
    TooManyThreads {
        /// The `--threads` given, or the number of cores when it was not given.
        threads: usize,
    },
    /// `--upstream` is not an http URL, or its host does not resolve.
    Upstream {
        /// What is wrong, in one line.
        reason: String,
    },
    /// `--tls-cert` / `--tls-key`: one without the other, a file missing or unreadable, no
    /// certificate or key in it, or a key that does not match the certificate.
    Tls {
        /// What is wrong, in one line naming the flag and the file.
        reason: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::BacklogTooSmall {
                max_backlog,
                max_message_size,
            } => write!(
                f,
                "--max-backlog ({}) must be at least twice --max-message-size ({}), i.e. >= {}",
                format_size(*max_backlog),
                format_size(*max_message_size),
                format_size(max_message_size.saturating_mul(2)),
            ),
            ConfigError::InvalidEchoPath { path, reason } => {
                write!(f, "--echo-path {path:?} is invalid: {reason}")
            }
            ConfigError::InvalidWsPath { path, reason } => {
                write!(f, "--ws-path {path:?} is invalid: {reason}")
            }
            ConfigError::InvalidOrigin { origin } => write!(
                f,
                "--allowed-origin {origin:?} is not an origin: give scheme://host[:port] as a \
                 browser sends it (no path, no trailing /), or null"
            ),
            ConfigError::InvalidRedis { reason } => write!(f, "--redis: {reason}"),
            ConfigError::ClusterFlagWithoutRedis { flag } => {
                if *flag == "--node-name" {
                    write!(
                        f,
                        "--node-name only means something with --redis or --upstream"
                    )
                } else {
                    write!(f, "{flag} only means something with --redis")
                }
            }
            ConfigError::TooManyThreads { threads } => {
                write!(f, "--threads {threads} is more than the 64 supported")
            }
            ConfigError::ApiKeyRequired { api_listen } => write!(
                f,
                "--api-listen {api_listen} is not a loopback address: set --api-key too"
            ),
            ConfigError::Upstream { reason } => f.write_str(reason),
            ConfigError::Tls { reason } => f.write_str(reason),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks the rules that span several flags and resolves defaults that depend on the
    /// machine (`--threads`).
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        if args.max_backlog / 2 < args.max_message_size {
            return Err(ConfigError::BacklogTooSmall {
                max_backlog: args.max_backlog,
                max_message_size: args.max_message_size,
            });
        }
        let echo_path = if args.no_echo {
            None
        } else {
            check_path(&args.echo_path).map_err(|reason| ConfigError::InvalidEchoPath {
                path: args.echo_path.clone(),
                reason,
            })?;
            Some(args.echo_path)
        };
        check_path(&args.ws_path).map_err(|reason| ConfigError::InvalidWsPath {
            path: args.ws_path.clone(),
            reason,
        })?;
        if echo_path.as_deref() == Some(args.ws_path.as_str()) {
            return Err(ConfigError::InvalidWsPath {
                path: args.ws_path,
                reason: "it is also the echo path",
            });
        }
        if let Some(origin) = args
            .allowed_origin
            .iter()
            .find(|o| !crate::http::origin::is_serialized_origin(o))
        {
            return Err(ConfigError::InvalidOrigin {
                origin: origin.clone(),
            });
        }
        if !args.api_listen.ip().is_loopback() && args.api_key.is_none() {
            return Err(ConfigError::ApiKeyRequired {
                api_listen: args.api_listen,
            });
        }
        let threads = args.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        if threads > 64 {
            return Err(ConfigError::TooManyThreads { threads });
        }
        match &args.redis {
            Some(url) => check_redis(url, &args.redis_prefix)?,
            None => {
                let given = [
                    ("--redis-durable", args.redis_durable),
                    // The node's name also goes to an upstream (`Edgepush-Node`).
                    (
                        "--node-name",
                        args.node_name.is_some() && args.upstream.is_none(),
                    ),
                ];
                if let Some((flag, _)) = given.into_iter().find(|(_, on)| *on) {
                    return Err(ConfigError::ClusterFlagWithoutRedis { flag });
                }
            }
        }
        let tls = match (args.tls_cert, args.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                crate::tls::load_pair(&cert, &key).map_err(|reason| ConfigError::Tls { reason })?;
                Some(TlsFiles { cert, key })
            }
            (Some(_), None) => {
                return Err(ConfigError::Tls {
                    reason: "--tls-cert needs --tls-key".to_owned(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Tls {
                    reason: "--tls-key needs --tls-cert".to_owned(),
                })
            }
        };
        let node = args
            .node_name
            .clone()
            .unwrap_or_else(|| default_node_name(args.listen));
        let upstream = match &args.upstream {
            None => None,
            Some(url) => {
                let mut upstream = crate::upstream::UpstreamConfig::new(url, node)
                    .map_err(|reason| ConfigError::Upstream { reason })?;
                upstream.timeout = args.upstream_timeout;
                upstream.max_inflight = args.upstream_max_inflight as usize;
                Some(upstream)
            }
        };
        Ok(Config {
            listen: args.listen,
            threads,
            echo_path,
            max_connections: args.max_connections,
            max_message_size: args.max_message_size,
            handshake_timeout: args.handshake_timeout,
            ping_interval: args.ping_interval,
            pong_timeout: args.pong_timeout,
            max_backlog: args.max_backlog,
            close_timeout: args.close_timeout,
            log_level: args.log.into(),
            ws_path: args.ws_path,
            api_listen: args.api_listen,
            api_key: args.api_key,
            jwt_secret: args.jwt_secret,
            allowed_origins: args.allowed_origin,
            max_subscriptions: args.max_subscriptions,
            max_client_publish_rate: args.max_client_publish_rate,
            history: crate::push::hub::HistoryConfig {
                size: args.history_size,
                ttl: args.history_ttl,
                user_size: args.user_history_size,
                max_bytes: args.history_max_bytes,
            },
            max_connections_per_ip: args.max_connections_per_ip,
            max_handshakes_per_ip: args.max_handshakes_per_ip,
            trust_proxy: args.trust_proxy,
            drain_duration: args.drain_duration,
            drain_timeout: args.drain_timeout,
            stats_interval: args.stats_interval,
            max_request_head: args.max_request_head,
            compression: !args.no_compression,
            compression_min_size: args.compression_min_size,
            cluster: args.redis.map(|url| crate::cluster::ops::ClusterConfig {
                url,
                prefix: args.redis_prefix,
                node: args
                    .node_name
                    .unwrap_or_else(|| default_node_name(args.listen)),
                timeout: args.redis_timeout,
                durable: args.redis_durable,
            }),
            upstream,
            tls,
        })
    }

    /// The defaults, except: listen on `127.0.0.1:0` (any free port) with one thread. Tests
    /// change the fields they care about.
    pub fn for_tests() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            threads: 1,
            echo_path: Some("/echo".to_owned()),
            max_connections: 1_000_000,
            max_message_size: 1 << 20,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            max_backlog: 4 << 20,
            close_timeout: Duration::from_secs(3),
            log_level: log::LevelFilter::Info,
            ws_path: "/ws".to_owned(),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_key: None,
            jwt_secret: None,
            allowed_origins: Vec::new(),
            max_subscriptions: 128,
            max_client_publish_rate: 10,
            history: crate::push::hub::HistoryConfig::default(),
            max_connections_per_ip: 0,
            max_handshakes_per_ip: 0,
            trust_proxy: Vec::new(),
            drain_duration: Duration::ZERO,
            drain_timeout: Duration::from_secs(10),
            stats_interval: Duration::from_secs(60),
            max_request_head: 16 << 10,
            compression: true,
            compression_min_size: 128,
            cluster: None,
            upstream: None,
            tls: None,
        }
    }

    /// The effective configuration as one multi-line block for the start-up log.
    pub fn render_summary(&self) -> String {
        let echo = self.echo_path.as_deref().unwrap_or("off");
        let origins = if self.allowed_origins.is_empty() {
            "any".to_owned()
        } else {
            self.allowed_origins.join(", ")
        };
        let rows = [
            ("listen", self.listen.to_string()),
            (
                "tls",
                self.tls.as_ref().map_or_else(
                    || "off".to_owned(),
                    |t| format!("{} + {}", t.cert.display(), t.key.display()),
                ),
            ),
            ("push path", self.ws_path.clone()),
            ("api listen", self.api_listen.to_string()),
            (
                "api key",
                if self.api_key.is_some() {
                    "set"
                } else {
                    "none"
                }
                .to_owned(),
            ),
            (
                "auth",
                if self.jwt_secret.is_some() {
                    "JWT HS256"
                } else {
                    "OPEN (no --jwt-secret)"
                }
                .to_owned(),
            ),
            ("allowed origins", origins),
            ("max subscriptions", self.max_subscriptions.to_string()),
            (
                "client publishes",
                format!("{}/s", self.max_client_publish_rate),
            ),
            (
                "per-ip limits",
                format!(
                    "{} connections, {} upgrades/s (0: off)",
                    self.max_connections_per_ip, self.max_handshakes_per_ip
                ),
            ),
            (
                "trusted proxies",
                if self.trust_proxy.is_empty() {
                    "none".to_owned()
                } else {
                    self.trust_proxy
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ),
            (
                "drain",
                format!(
                    "spread over {}, then wait up to {}",
                    format_duration(self.drain_duration),
                    format_duration(self.drain_timeout)
                ),
            ),
            ("stats interval", format_duration(self.stats_interval)),
            ("max request head", format_size(self.max_request_head)),
            (
                "compression",
                if self.compression {
                    format!(
                        "permessage-deflate, from {}",
                        format_size(self.compression_min_size)
                    )
                } else {
                    "off".to_owned()
                },
            ),
            (
                "history",
                format!(
                    "{} per channel, {} per user, {}, at most {}",
                    self.history.size,
                    self.history.user_size,
                    format_duration(self.history.ttl),
                    format_size(self.history.max_bytes)
                ),
            ),
            (
                "cluster",
                match &self.cluster {
                    Some(c) => format!(
                        "node {} through Redis {} (prefix {}, timeout {}, {})",
                        c.node,
                        redis_endpoint(&c.url),
                        c.prefix,
                        format_duration(c.timeout),
                        if c.durable { "durable" } else { "not durable" }
                    ),
                    None => "off (one node)".to_owned(),
                },
            ),
            (
                "upstream",
                match &self.upstream {
                    Some(u) => format!(
                        "http://{}{} ({}), timeout {}, {} in flight per thread",
                        u.target.authority,
                        u.target.path,
                        u.addr,
                        format_duration(u.timeout),
                        u.max_inflight
                    ),
                    None => "off (binary messages get error 501)".to_owned(),
                },
            ),
            ("threads", self.threads.to_string()),
            ("echo path", echo.to_owned()),
            ("max connections", self.max_connections.to_string()),
            ("max message size", format_size(self.max_message_size)),
            ("max backlog", format_size(self.max_backlog)),
            ("handshake timeout", format_duration(self.handshake_timeout)),
            ("ping interval", format_duration(self.ping_interval)),
            ("pong timeout", format_duration(self.pong_timeout)),
            ("close timeout", format_duration(self.close_timeout)),
            ("log level", self.log_level.to_string().to_lowercase()),
        ];
        let mut out = String::from("edgepush configuration:");
        for (name, value) in rows {
            out.push_str(&format!("\n  {name:<18} {value}"));
        }
        out
    }
}

/// A per-second rate: `10` or `10/s`, at least 1.
fn parse_rate(s: &str) -> Result<u16, String> {
    let number = s.trim().strip_suffix("/s").unwrap_or(s.trim());
    match number.parse::<u32>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => u16::try_from(n).map_err(|_| "must be at most 65535".to_owned()),
        Err(_) => Err(format!("{s:?} is not a rate like 10 or 10/s")),
    }
}

/// Why `path` cannot serve as an endpoint path, if it cannot.
fn check_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("it must start with '/'");
    }
    if path.contains(['?', '#']) {
        return Err("it must not contain '?' or '#'");
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it must not contain whitespace or control characters");
    }
    Ok(())
}

/// Splits `s` into its leading decimal digits and the rest (the unit), both trimmed.
fn split_number(s: &str) -> Result<(u64, &str), String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err(if s.is_empty() {
            "empty value".to_owned()
        } else {
            format!("{s:?} does not start with a whole number")
        });
    }
    let number = s[..digits]
        .parse::<u64>()
        .map_err(|_| format!("{:?} is too large", &s[..digits]))?;
    Ok((number, &s[digits..]))
}

/// Parses a duration: a whole number followed by `ms`, `s`, `m` or `h`; a bare number is
/// seconds. Examples: `500ms`, `30s`, `5m`, `1h`, `10`. Zero is allowed here; flags for which
/// zero makes no sense use a non-zero check on top.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = split_number(s)?;
    let overflow = || format!("{:?} is too large", s.trim());
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(overflow),
        "h" => n
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(overflow),
        _ => Err(format!(
            "unknown duration unit {unit:?} (use ms, s, m or h, e.g. 500ms, 30s, 5m)"
        )),
    }
}

/// Parses a byte size: a whole number, optionally followed by `B`, `KiB`, `MiB`, `GiB` (powers
/// of 1024) or `KB`, `MB`, `GB` (powers of 1000); units are case-insensitive. Examples: `512`,
/// `64KiB`, `1MiB`, `16MiB`, `1GiB`, `64KB`. Zero is allowed here (see [`parse_duration`]).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let (n, unit) = split_number(s)?;
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!(
                "unknown size unit {unit:?} (use B, KiB, MiB, GiB, KB, MB or GB, e.g. 64KiB)"
            ))
        }
    };
    n.checked_mul(multiplier)
        .and_then(|bytes| usize::try_from(bytes).ok())
        .ok_or_else(|| format!("{:?} is too large", s.trim()))
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err("must be greater than zero".to_owned()),
        d => Ok(d),
    }
}

fn parse_positive_size(s: &str) -> Result<usize, String> {
    match parse_size(s)? {
        0 => Err("must be greater than zero".to_owned()),
        n => Ok(n),
    }
}

/// `--max-request-head`: a size within [`MIN_REQUEST_HEAD`]..=[`MAX_REQUEST_HEAD`].
fn parse_request_head_size(s: &str) -> Result<usize, String> {
    match parse_size(s)? {
        n if (MIN_REQUEST_HEAD..=MAX_REQUEST_HEAD).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be between {} and {}",
            format_size(MIN_REQUEST_HEAD),
            format_size(MAX_REQUEST_HEAD)
        )),
    }
}

fn parse_positive_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be greater than zero".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{:?} is not a whole number: {e}", s.trim())),
    }
}

/// Renders a size in the largest binary unit that divides it exactly (`4MiB`, `1536KiB`,
/// `100B`), so it parses back with [`parse_size`].
fn format_size(n: usize) -> String {
    const UNITS: [(usize, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if n != 0 && n.is_multiple_of(unit) {
            return format!("{}{name}", n / unit);
        }
    }
    format!("{n}B")
}

/// Renders a duration in the largest unit that divides it exactly (`1h`, `90s`, `500ms`), so
/// it parses back with [`parse_duration`]. Sub-millisecond parts fall back to `Debug`.
fn format_duration(d: Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{d:?}");
    }
    if d.subsec_nanos() != 0 {
        return format!("{}ms", d.as_millis());
    }
    let secs = d.as_secs();
    if secs != 0 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs != 0 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn parse_duration_table() {
        let good: &[(&str, Duration)] = &[
            ("500ms", Duration::from_millis(500)),
            ("0ms", Duration::ZERO),
            ("30s", Duration::from_secs(30)),
            ("30", Duration::from_secs(30)),
            ("0", Duration::ZERO),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            (" 10s ", Duration::from_secs(10)),
            ("007s", Duration::from_secs(7)),
            ("18446744073709551615ms", Duration::from_millis(u64::MAX)),
            ("18446744073709551615", Duration::from_secs(u64::MAX)),
        ];
        for (input, want) in good {
            assert_eq!(parse_duration(input), Ok(*want), "{input:?}");
        }
        let bad = [
            "",
            "  ",
            "s",
            "ms",
            "-1s",
            "+1s",
            "1.5s",
            "1 s",
            "10sec",
            "10S",
            "1d",
            "1us",
            "5m30s",
            "18446744073709551616",     // u64::MAX + 1
            "18446744073709551615m",    // overflows when scaled
            "307445734561825861h",      // u64::MAX / 3600 + 1 hours
            "99999999999999999999999h", // too many digits
        ];
        for input in bad {
            assert!(parse_duration(input).is_err(), "{input:?} accepted");
        }
    }

    #[test]
    fn parse_size_table() {
        let good: &[(&str, usize)] = &[
            ("512", 512),
            ("0", 0),
            ("512B", 512),
            ("64KiB", 64 << 10),
            ("1MiB", 1 << 20),
            ("16MiB", 16 << 20),
            ("1GiB", 1 << 30),
            ("64KB", 64_000),
            ("1MB", 1_000_000),
            ("2GB", 2_000_000_000),
            ("1mib", 1 << 20),
            (" 4MiB ", 4 << 20),
        ];
        for (input, want) in good {
            assert_eq!(parse_size(input), Ok(*want), "{input:?}");
        }
        let bad = [
            "",
            "MiB",
            "-1",
            "1.5MiB",
            "1 MiB",
            "1M",
            "1K",
            "1TiB",
            "12x",
            "18446744073709551616",
            "18446744073709551615KiB",
            "17179869184GiB", // 2^64 bytes
        ];
        for input in bad {
            assert!(parse_size(input).is_err(), "{input:?} accepted");
        }
    }

    #[test]
    fn format_round_trips() {
        for n in [
            0,
            1,
            512,
            1000,
            1024,
            1536,
            64 << 10,
            1 << 20,
            3 << 30,
            1_000_000,
        ] {
            assert_eq!(parse_size(&format_size(n)), Ok(n), "{n}");
        }
        assert_eq!(format_size(4 << 20), "4MiB");
        assert_eq!(format_size(1536), "1536B");
        assert_eq!(format_size(1536 << 10), "1536KiB");
        for d in [
            0, 1, 500, 1000, 30_000, 90_000, 300_000, 3_600_000, 5_400_000,
        ] {
            let d = Duration::from_millis(d);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{d:?}");
        }
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_micros(1500)), "1.5ms");
    }

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn every_flag_has_its_env_var() {
        for arg in Args::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" || long == "version" {
                continue;
            }
            let want = format!("EDGEPUSH_{}", long.to_uppercase().replace('-', "_"));
            let got = arg.get_env().and_then(|e| e.to_str());
            assert_eq!(got, Some(want.as_str()), "--{long}");
            assert!(arg.get_help().is_some(), "--{long} has no help");
        }
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("edgepush").chain(args.iter().copied()))
    }

    #[test]
    fn compression_flags() {
        let c = Config::from_args(parse(&[]).unwrap()).unwrap();
        assert!(c.compression);
        assert_eq!(c.compression_min_size, 128);
        let c = Config::from_args(
            parse(&["--no-compression", "--compression-min-size", "1KiB"]).unwrap(),
        )
        .unwrap();
        assert!(!c.compression);
        assert_eq!(c.compression_min_size, 1024);
        assert!(
            c.render_summary().contains("compression        off"),
            "{}",
            c.render_summary()
        );
    }

    #[test]
    fn push_flags() {
        let c = Config::from_args(parse(&["--max-client-publish-rate", "5/s"]).unwrap()).unwrap();
        assert_eq!(c.max_client_publish_rate, 5);
        assert!(parse(&["--max-client-publish-rate", "0"]).is_err());
        assert!(parse(&["--max-client-publish-rate", "x/s"]).is_err());
        assert!(parse(&["--max-client-publish-rate", "65535"]).is_ok());
        assert!(parse(&["--max-client-publish-rate", "65536/s"]).is_err());
        let public = parse(&["--api-listen", "0.0.0.0:8081"]).unwrap();
        assert!(matches!(
            Config::from_args(public),
            Err(ConfigError::ApiKeyRequired { .. })
        ));
        let keyed = parse(&["--api-listen", "0.0.0.0:8081", "--api-key", "k"]).unwrap();
        assert!(Config::from_args(keyed).is_ok());
        let same = parse(&["--ws-path", "/echo"]).unwrap();
        assert!(matches!(
            Config::from_args(same),
            Err(ConfigError::InvalidWsPath { .. })
        ));
        let c = Config::from_args(
            parse(&[
                "--allowed-origin",
                "https://a",
                "--allowed-origin",
                "https://b",
            ])
            .unwrap(),
        )
        .unwrap();
        assert_eq!(c.allowed_origins, ["https://a", "https://b"]);
        for bad in ["*", "app.example.com", "https://a.com/path"] {
            assert!(
                matches!(
                    Config::from_args(parse(&["--allowed-origin", bad]).unwrap()),
                    Err(ConfigError::InvalidOrigin { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn defaults() {
        // Assumes no EDGEPUSH_* variables in the test environment.
        let args = parse(&[]).expect("no flags parse");
        let config = Config::from_args(args).expect("defaults are valid");
        let want = Config {
            listen: "0.0.0.0:8080".parse().expect("literal"),
            api_listen: "127.0.0.1:8081".parse().expect("literal"),
            threads: config.threads,
            ..Config::for_tests()
        };
        assert_eq!(config, want);
        assert!(config.threads >= 1);
    }

    #[test]
    fn flags_parse() {
        let args = parse(&[
            "--listen",
            "127.0.0.1:9000",
            "--threads",
            "3",
            "--echo-path",
            "/e",
            "--max-connections",
            "10",
            "--max-message-size",
            "64KiB",
            "--handshake-timeout",
            "500ms",
            "--ping-interval",
            "5m",
            "--pong-timeout",
            "20",
            "--max-backlog",
            "128KiB",
            "--close-timeout",
            "1s",
            "--log",
            "debug",
            "--max-request-head",
            "32KiB",
        ])
        .expect("valid flags");
        let c = Config::from_args(args).expect("valid config");
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 9000)));
        assert_eq!(c.threads, 3);
        assert_eq!(c.echo_path.as_deref(), Some("/e"));
        assert_eq!(c.max_connections, 10);
        assert_eq!(c.max_message_size, 64 << 10);
        assert_eq!(c.handshake_timeout, Duration::from_millis(500));
        assert_eq!(c.ping_interval, Duration::from_secs(300));
        assert_eq!(c.pong_timeout, Duration::from_secs(20));
        assert_eq!(c.max_backlog, 128 << 10);
        assert_eq!(c.close_timeout, Duration::from_secs(1));
        assert_eq!(c.log_level, log::LevelFilter::Debug);
        assert_eq!(c.max_request_head, 32 << 10);
        for (value, bytes) in [("1KiB", 1 << 10), ("64KiB", 64 << 10), ("20000", 20_000)] {
            let c = Config::from_args(parse(&["--max-request-head", value]).expect("valid"));
            assert_eq!(c.map(|c| c.max_request_head), Ok(bytes), "{value}");
        }

        let c = Config::from_args(parse(&["--no-echo"]).expect("valid")).expect("valid");
        assert_eq!(c.echo_path, None);
        // --no-echo wins, so an unusable --echo-path does not matter then.
        let c = Config::from_args(parse(&["--no-echo", "--echo-path", "x"]).expect("valid"));
        assert_eq!(c.map(|c| c.echo_path), Ok(None));
    }

    #[test]
    fn bad_values_are_rejected_by_clap() {
        let bad: &[&[&str]] = &[
            &["--listen", "nowhere"],
            &["--listen", "1.2.3.4"],
            &["--threads", "0"],
            &["--threads", "-1"],
            &["--threads", "many"],
            &["--max-connections", "0"],
            &["--max-message-size", "0"],
            &["--max-message-size", "1XB"],
            &["--max-backlog", "0"],
            &["--handshake-timeout", "0s"],
            &["--ping-interval", "0"],
            &["--ping-interval", "30 seconds"],
            &["--pong-timeout", "0ms"],
            &["--close-timeout", "0"],
            &["--close-timeout", "99999999999999999999h"],
            &["--log", "verbose"],
            &["--no-such-flag"],
            &["--no-echo=maybe"],
            &["--max-request-head", "0"],
            &["--max-request-head", "1023"],
            &["--max-request-head", "65537"],
            &["--max-request-head", "1MiB"],
            &["--max-request-head", "16 KiB please"],
        ];
        for args in bad {
            let err = parse(args).expect_err(&format!("{args:?} accepted"));
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn backlog_must_hold_two_messages() {
        let ok = parse(&["--max-message-size", "1MiB", "--max-backlog", "2MiB"]).expect("parse");
        assert!(Config::from_args(ok).is_ok());
        let small =
            parse(&["--max-message-size", "1MiB", "--max-backlog", "2097151"]).expect("parse");
        let err = Config::from_args(small).expect_err("backlog too small");
        assert_eq!(
            err,
            ConfigError::BacklogTooSmall {
                max_backlog: 2_097_151,
                max_message_size: 1 << 20
            }
        );
        let line = err.to_string();
        assert!(!line.contains('\n'));
        assert!(line.contains("--max-backlog"), "{line}");
        // Odd backlog: 2 * 3 = 6 > 5.
        let odd = parse(&["--max-message-size", "3", "--max-backlog", "5"]).expect("parse");
        assert!(Config::from_args(odd).is_err());
        // Huge message size must not overflow the check.
        let huge = parse(&["--max-message-size", "1GiB", "--max-backlog", "1GiB"]).expect("parse");
        assert!(Config::from_args(huge).is_err());
    }

    #[test]
    fn echo_path_rules() {
        for path in ["echo", "", "/e?x", "/e#x", "/e x", "/e\tx"] {
            let args = parse(&["--echo-path", path]).expect("parse");
            let err = Config::from_args(args).expect_err(path);
            assert!(
                matches!(err, ConfigError::InvalidEchoPath { .. }),
                "{path:?}"
            );
            assert!(!err.to_string().contains('\n'));
        }
        for path in ["/", "/echo", "/a/b-c_d.e"] {
            let args = parse(&["--echo-path", path]).expect("parse");
            assert!(Config::from_args(args).is_ok(), "{path:?}");
        }
    }

    #[test]
    fn redis_flags_are_checked_at_start() {
        let with = |extra: &[&str]| {
            let mut argv = vec!["edgepush"];
            argv.extend_from_slice(extra);
            Config::from_args(Args::try_parse_from(argv).unwrap())
        };
        let reason = |extra: &[&str]| match with(extra) {
            Err(e) => e.to_string(),
            Ok(_) => "accepted".to_owned(),
        };
        assert!(with(&["--redis", "redis://127.0.0.1:6379/2"]).is_ok());
        assert!(reason(&["--redis", "127.0.0.1:6379"]).contains("not a redis://host:port URL"));
        assert!(reason(&["--redis", "rediss://h:1"]).contains("TLS to Redis"));
        assert!(
            reason(&["--redis", "redis://:pw@h:1", "--redis-prefix", ""])
                .contains("--redis-prefix")
        );
        assert_eq!(
            reason(&["--redis-durable"]),
            "--redis-durable only means something with --redis"
        );
        assert_eq!(
            reason(&["--node-name", "a"]),
            "--node-name only means something with --redis or --upstream"
        );
        assert_eq!(
            redis_endpoint("redis://user:pw@h:6379/1"),
            "redis://h:6379/1"
        );
        assert_eq!(redis_endpoint("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn summary_shows_every_setting() {
        let mut c = Config::for_tests();
        let s = c.render_summary();
        for needle in [
            "127.0.0.1:0",
            "threads",
            "/echo",
            "1MiB",
            "4MiB",
            "10s",
            "30s",
            "3s",
            "info",
        ] {
            assert!(s.contains(needle), "{needle:?} missing from\n{s}");
        }
        assert_eq!(s.lines().count(), 29);
        assert!(s.contains("upstream           off"), "{s}");
        assert!(s.contains("tls                off"), "{s}");
        assert!(s.contains("max request head   16KiB"), "{s}");
        assert!(s.contains("cluster            off (one node)"), "{s}");
        let args = Args::try_parse_from([
            "edgepush",
            "--redis",
            "redis://:hunter2@127.0.0.1:6379",
            "--node-name",
            "a",
            "--redis-durable",
        ])
        .unwrap();
        let with = Config::from_args(args).unwrap();
        let s = with.render_summary();
        assert!(
            s.contains(
                "node a through Redis redis://127.0.0.1:6379 (prefix edgepush, timeout 2s, durable)"
            ),
            "{s}"
        );
        assert!(
            !s.contains("hunter2"),
            "the URL's password stays out of the log: {s}"
        );
        c.echo_path = None;
        assert!(c.render_summary().contains("echo path          off"));
    }

    #[test]
    fn upstream_flags() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["edgepush"];
            argv.extend_from_slice(extra);
            Config::from_args(Args::try_parse_from(argv).expect("flags"))
        };
        assert_eq!(parse(&[]).expect("config").upstream, None);
        let c = parse(&[
            "--upstream",
            "http://127.0.0.1:9000/act",
            "--upstream-timeout",
            "250ms",
            "--upstream-max-inflight",
            "8",
            "--node-name",
            "n1",
        ])
        .expect("config");
        let u = c.upstream.clone().expect("upstream");
        assert_eq!(u.addr.port(), 9000);
        assert_eq!(u.timeout, Duration::from_millis(250));
        assert_eq!((u.max_inflight, u.node.as_str()), (8, "n1"));
        assert!(c
            .render_summary()
            .contains("http://127.0.0.1:9000/act (127.0.0.1:9000), timeout 250ms, 8 in flight"));
        let d = parse(&["--upstream", "http://127.0.0.1:9000"]).expect("config");
        let d = d.upstream.expect("upstream");
        assert_eq!((d.timeout, d.max_inflight), (Duration::from_secs(5), 1024));
        for bad in ["https://127.0.0.1/", "http://no-such-host.invalid/"] {
            let e = parse(&["--upstream", bad]).expect_err(bad);
            assert!(matches!(e, ConfigError::Upstream { .. }), "{e}");
            assert!(!e.to_string().contains('\n'));
        }
        assert!(Args::try_parse_from(["edgepush", "--upstream-max-inflight", "0"]).is_err());
    }
}
