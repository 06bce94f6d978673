//! Command line: scenarios, common flags, and the parsers for durations and target URLs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::deflate::DEFAULT_OFFER;

/// The push endpoint, with `{n}` replaced by the connection's number.
pub const DEFAULT_PUSH_URL: &str = "ws://127.0.0.1:8080/ws?user=load-{n}";
pub const DEFAULT_ECHO_URL: &str = "ws://127.0.0.1:8080/echo";

#[derive(Parser, Debug)]
#[command(
    name = "edgepush-load",
    version,
    about = "Load generator for edgepush (and the baseline peers): idle, echo, fanout, churn, slow, actions (and a backend for them)",
    long_about = "Load generator for edgepush. Targets must be loopback addresses. \
Connections are spread over child processes (at most ~15,000 sockets each) and over source \
addresses 127.0.0.2, 127.0.0.3, ... In URLs, `{n}` is replaced by the connection's number."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// WebSocket URL to connect to (default: the push endpoint, or /echo for `echo`); several
    /// nodes comma-separated: connection i goes to node i % n
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// Push API base URL (fanout, slow); several nodes comma-separated: publish j goes to
    /// API j % n
    #[arg(long, global = true, default_value = "http://127.0.0.1:8081")]
    pub api: String,
    /// Bearer token for the push API
    #[arg(long, global = true)]
    pub api_key: Option<String>,
    /// Report this server process's CPU time and memory
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Child processes (default: ceil(connections / 15000))
    #[arg(long, global = true)]
    pub procs: Option<usize>,
    /// How many source addresses 127.0.0.2.. to use (default: ceil(connections / 25000))
    #[arg(long, global = true)]
    pub source_ips: Option<usize>,
    /// Print one JSON line on stdout (the summary table goes to stderr)
    #[arg(long, global = true)]
    pub json: bool,
    /// Hard limit for the whole run
    #[arg(long, global = true, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Connection attempts in progress at once, per child process
    #[arg(long, global = true, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Sleep in poll during the measured phase instead of busy-polling (echo, fanout, slow
    /// busy-poll by default: the client has its own core, and a sleeping client makes every
    /// delivery pay for a wakeup on both sides)
    #[arg(long, global = true)]
    pub no_spin: bool,
    /// Give up on a connection that has not finished its upgrade by then
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Offer permessage-deflate (RFC 7692) on every connection: `--deflate` offers
    /// `permessage-deflate; client_no_context_takeover; server_no_context_takeover`,
    /// `--deflate=OFFER` sends OFFER as the `Sec-WebSocket-Extensions` value (e.g.
    /// `--deflate=permessage-deflate`). The server must accept it (else `deflate_declined`);
    /// compressed messages are inflated before they are counted, and data messages we send are
    /// compressed
    #[arg(long, global = true, value_name = "OFFER", num_args = 0..=1, require_equals = true,
          default_missing_value = DEFAULT_OFFER)]
    pub deflate: Option<String>,
}

/// What the messages we send hold besides their `seq` and timestamp.
#[derive(
    ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    /// `"pad":"xxx…"`: one byte repeated (compresses to almost nothing).
    #[default]
    Pad,
    /// `"items":[{…},…]`: records with varied ids, names, prices and tags, as a JSON push
    /// would carry (deflate shrinks 1 KiB of it about 2.4×).
    Json,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Cmd {
    /// This machine's kernel cost of one small loopback TCP send, with no server involved: the
    /// floor under any server's fan-out latency (N sends take at least N × this on one core)
    Floor {
        /// Socket pairs (each pass writes once to each)
        #[arg(short = 'n', long, default_value_t = 5000)]
        sockets: usize,
        /// Passes; the median is reported
        #[arg(long, default_value_t = 20)]
        passes: usize,
        /// Bytes per send (a 64-byte push message is about 70 on the wire)
        #[arg(long, default_value_t = 70)]
        size: usize,
    },
    /// Open N connections, report the handshake rate, hold them idle (memory per connection)
    Idle {
        /// Connections
        #[arg(short = 'n', long, default_value_t = 1000)]
        conns: usize,
        /// How long to hold them once all are open
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        hold: Duration,
    },
    /// Echo round trips: messages/s and latency percentiles
    Echo {
        /// Connections
        #[arg(short = 'c', long, default_value_t = 100)]
        conns: usize,
        /// Message size in bytes (at least 8: a timestamp travels in it)
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Messages in flight per connection
        #[arg(long, default_value_t = 8)]
        inflight: usize,
        /// What follows the 8-byte timestamp in each message
        #[arg(long, value_enum, default_value_t = Payload::Pad)]
        payload: Payload,
        /// Measured phase
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
    },
    /// Publish to N subscribers: deliveries/s, publish→receive latency, missing/dup/out-of-order
    Fanout {
        #[command(flatten)]
        pubsub: PubSub,
        /// Write an SVG chart of the latency distribution to this file
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Title of the SVG chart
        #[arg(long, default_value = "fan-out latency")]
        svg_title: String,
        /// While publishing, each subscriber drops its connection (no close handshake: RST
        /// or plain close, alternately) at random times, on average once per DUR, reconnects
        /// and resubscribes with `since`/`epoch`; the server's replay must fill the gap.
        /// Push endpoint with the subscribe op only (not --pub-ws or --sub-url)
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        reconnect_every: Option<Duration>,
    },
    /// Connect, upgrade, (subscribe), close, over and over: handshakes/s and errors by kind
    Churn {
        /// New connections per second (all processes together)
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Measured phase
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Subscribe to this channel (and wait for `subscribed`) before closing
        #[arg(long)]
        subscribe: Option<String>,
        /// Connections in progress at once, per process
        #[arg(long, default_value_t = 1000)]
        max_concurrent: usize,
    },
    /// A trivial upstream for `edgepush --upstream`: HTTP/1.1 keep-alive, every request
    /// answered 200 with its own body (the action echoed); prints `listening on ADDR`, stops
    /// by itself after --duration and prints its requests and CPU per request
    Backend {
        /// Address to listen on (port 0: any free port)
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Event-loop threads (each with its own SO_REUSEPORT listener)
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Serve this long, then stop
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
    },
    /// Binary actions (4-byte action code + payload) answered by edgepush's --upstream:
    /// actions/s, latency, answers in order and exactly once per connection, errors by code;
    /// with --direct also the same load straight at the backend over HTTP
    Actions {
        /// Connections
        #[arg(short = 'c', long, default_value_t = 100)]
        conns: usize,
        /// Payload bytes after the 4-byte action code (at least 8: a per-connection counter
        /// travels in them)
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Actions in flight per connection
        #[arg(long = "in-flight", alias = "inflight", default_value_t = 1,
              value_parser = clap::value_parser!(u64).range(1..=1024))]
        in_flight: u64,
        /// The action code (the first 4 bytes, big-endian)
        #[arg(long, default_value_t = 110)]
        code: u32,
        /// Measured phase
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// After the measured phase, how long to wait for the answers still due
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        drain_timeout: Duration,
        /// Also run the same load (connections, in flight, sizes, duration) straight at this
        /// backend URL over HTTP/1.1 (requests pipelined per connection), after the run
        /// through edgepush; the report compares the two (`added_latency_us`)
        #[arg(long)]
        direct: Option<String>,
    },
    /// The scale run and soak (issue 14): N users on a cluster, each in one room and in
    /// `all`; all-hands, room and user publishes through every node's API; per-kind latency,
    /// missing/duplicate/out-of-order per stream, server memory per connection, a timeline;
    /// with --drop-rate connections drop and come back on the next node with since/epoch
    Scale {
        #[command(flatten)]
        args: ScaleArgs,
    },
    /// N subscribers, K of which stop reading: the server must drop the K, not the others
    Slow {
        #[command(flatten)]
        pubsub: PubSub,
        /// Subscribers that stop reading after subscribing
        #[arg(short = 'k', long, default_value_t = 5)]
        readers_stopped: usize,
        /// SO_RCVBUF of the stopped readers (small, so the server's backlog fills sooner; 0 = default)
        #[arg(long, default_value_t = 4096)]
        stopped_rcvbuf: usize,
        /// After publishing, how long to wait for the stopped readers to be closed
        #[arg(long, default_value = "15s", value_parser = parse_duration)]
        close_wait: Duration,
    },
}

/// `scale`'s flags (issue 14: the scale run and the soak).
#[derive(Args, Debug, Clone)]
pub struct ScaleArgs {
    /// Connections, each its own user (`{n}` in `--url`), spread round robin over the nodes
    #[arg(short = 'n', long = "conns", default_value_t = 100_000)]
    pub conns: usize,
    /// Room channels `room-0..`; connection n subscribes to `room-{n % rooms}` (and to `all`)
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub rooms: u64,
    /// Publishes to `all` per second
    #[arg(long, default_value_t = 1.0)]
    pub allhands_rate: f64,
    /// Publishes to a random room per second (all rooms together)
    #[arg(long, default_value_t = 100.0)]
    pub room_rate: f64,
    /// `POST /api/send` to a random user per second
    #[arg(long, default_value_t = 200.0)]
    pub user_rate: f64,
    /// Approximate size of each message's data object, in bytes
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// How long the load runs once every connection is open and subscribed
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Fraction of the open connections dropped abruptly each second (half RST, half plain
    /// close) and reconnected to the next node with `since`/`epoch` (0 = none)
    #[arg(long, default_value_t = 0.0)]
    pub drop_rate: f64,
    /// After the load, how long to wait for the deliveries to catch up
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub settle: Duration,
    /// While the load runs, each client process reads in batches: after handling what one
    /// poll returned it sleeps this long and polls again without waiting, so a burst finds
    /// no process asleep in `epoll_wait` and the sending node pays no wakeup per segment (a
    /// cost a server sending to remote clients does not have). Adds up to this much to every
    /// measured latency, which is reported as it is (0 = sleep in `epoll_wait` as usual)
    #[arg(long, default_value = "0ms", value_parser = parse_duration, value_name = "DURATION")]
    pub read_batch: Duration,
    /// The nodes' process ids, in `--url` order (RSS, CPU, descriptors)
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// The redis-server's process id (RSS, CPU, descriptors)
    #[arg(long)]
    pub redis_pid: Option<u32>,
    /// Write one JSON line per second here
    #[arg(long)]
    pub timeline: Option<PathBuf>,
    /// Write an SVG chart of deliveries/s and all-hands p99 over the run here
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Title of the SVG chart
    #[arg(long, default_value = "scale run: deliveries and all-hands p99")]
    pub svg_title: String,
}

#[derive(Args, Debug, Clone)]
pub struct PubSub {
    /// Subscribers
    #[arg(
        short = 'n',
        long = "subs",
        alias = "subscribers",
        default_value_t = 1000
    )]
    pub subs: usize,
    /// Channel to subscribe to and publish on
    #[arg(long, default_value = "load")]
    pub channel: String,
    /// Publishes per second (0 = a burst, as fast as possible)
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Messages to publish
    #[arg(long, default_value_t = 200)]
    pub messages: u64,
    /// Approximate size of each message's data object, in bytes
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// What the data object holds besides `seq` and `t`
    #[arg(long, value_enum, default_value_t = Payload::Pad)]
    pub payload: Payload,
    /// With `--rate 0`: API publishes kept in flight on the keep-alive connection (HTTP/1.1
    /// pipelining); 1 = one at a time, each waiting for its answer (a backend publishing
    /// request by request)
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub api_pipeline: u64,
    /// Publish with `?wait=delivered`: edgepush answers after every worker acknowledged and
    /// says how many connections took the message (`api_delivered` in the report)
    #[arg(long)]
    pub wait_delivered: bool,
    /// Publish over this WebSocket instead of the API (each message one text frame)
    #[arg(long)]
    pub pub_ws: Option<String>,
    /// Subscribe by connecting here (no subscribe op; every text frame is a delivery)
    #[arg(long)]
    pub sub_url: Option<String>,
    /// An API publish answered 503 (or whose answer was lost) is sent again with the same
    /// `idempotency_key`, at most this many times
    #[arg(long, default_value_t = 30)]
    pub publish_retries: u32,
    /// The wait before such a retry: the 503's `Retry-After`, at most this (and this when the
    /// answer has none)
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub publish_retry_wait: Duration,
    /// Publish without an `idempotency_key` (for a server that refuses the field); a 503 is
    /// then not retried, and a lost answer only once
    #[arg(long)]
    pub no_idempotency_key: bool,
    /// After the last publish, how long to wait for deliveries
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub deliver_timeout: Duration,
}

/// `500ms`, `30s`, `5m`, `1h`, `250us`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: expected e.g. 500ms, 30s, 5m"))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("bad duration unit {other:?} in {s:?}")),
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A parsed `ws://` or `http://` target on this machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header.
    pub host: String,
    /// Path and query, `/` if empty; may contain `{n}`.
    pub path: String,
}

/// The node (index into the `--url` or `--api` list) that connection or publish `number` goes
/// to: round robin, `number % nodes` (0 when there are none).
pub fn node_for(number: u64, nodes: usize) -> usize {
    if nodes == 0 {
        return 0;
    }
    (number % nodes as u64) as usize
}

/// Parses a comma-separated list of URLs (one node each; spaces around a comma are allowed)
/// with [`parse_url`]; returns each URL as written with its target, in order. An empty entry or
/// an empty list is an error.
pub fn parse_urls(list: &str, scheme: &str) -> Result<Vec<(String, Target)>, String> {
    list.split(',')
        .map(str::trim)
        .map(|url| {
            if url.is_empty() {
                return Err(format!("{list:?}: empty URL in the comma-separated list"));
            }
            Ok((url.to_string(), parse_url(url, scheme)?))
        })
        .collect()
}

/// Parses `scheme://host[:port][/path][?query]` for `scheme` (`ws` or `http`), refusing any
/// address that is not loopback.
pub fn parse_url(url: &str, scheme: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| {
            if url.starts_with("wss://") || url.starts_with("https://") {
                format!("{url}: TLS is not supported; use {scheme}://")
            } else {
                format!("{url}: expected a {scheme}:// URL")
            }
        })?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') {
        return Err(format!("{url}: user info in URLs is not supported"));
    }
    let default_port = 80;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url}: unclosed [ in host"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("{url}: bad port {p:?}"))?,
            None if after.is_empty() => default_port,
            None => return Err(format!("{url}: bad host")),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| format!("{url}: bad port {p:?}"))?),
            None => (authority, default_port),
        }
    };
    if host.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().map_err(|_| {
            format!("{url}: host {host:?} is not a loopback address (only 127.0.0.0/8, ::1 and localhost may be targeted)")
        })?
    };
    if !ip.is_loopback() {
        return Err(format!(
            "{url}: {ip} is not a loopback address; this tool only targets this machine (127.0.0.0/8, ::1)"
        ));
    }
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        host: authority.to_string(),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn urls() {
        let t = parse_url("ws://127.0.0.1:8080/ws?user=load-{n}", "ws").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:8080");
        assert_eq!(t.path, "/ws?user=load-{n}");
        let t = parse_url("ws://localhost:9001", "ws").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (9001, "/"));
        let t = parse_url("ws://localhost?x=1", "ws").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/?x=1"));
        let t = parse_url("ws://[::1]:7000/echo", "ws").unwrap();
        assert_eq!(t.addr, "[::1]:7000".parse().unwrap());
        let t = parse_url("http://127.0.0.1:8081", "http").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (8081, "/"));
        assert!(parse_url("ws://127.9.9.9:1/", "ws").is_ok());

        for bad in [
            "ws://10.0.0.1:8080/ws",
            "ws://192.168.1.2/",
            "ws://8.8.8.8/",
            "ws://example.com/",
            "ws://[2001:db8::1]:80/",
            "wss://127.0.0.1/",
            "http://127.0.0.1/",
            "ws://127.0.0.1:notaport/",
            "ws://:80/",
            "ws://u@127.0.0.1/",
        ] {
            assert!(parse_url(bad, "ws").is_err(), "{bad}");
        }
        let err = parse_url("ws://10.1.2.3/", "ws").unwrap_err();
        assert!(err.contains("not a loopback"), "{err}");
    }

    #[test]
    fn url_lists() {
        let one = parse_urls("ws://127.0.0.1:8080/ws?user=u-{n}", "ws").unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].0, "ws://127.0.0.1:8080/ws?user=u-{n}");
        assert_eq!(one[0].1.path, "/ws?user=u-{n}");
        let two = parse_urls("http://127.0.0.1:8081, http://localhost:9081/", "http").unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[0].1.addr, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(two[1].0, "http://localhost:9081/");
        assert_eq!(two[1].1.addr, "127.0.0.1:9081".parse().unwrap());
        for bad in [
            "",
            ",",
            "ws://127.0.0.1:1,",
            "ws://127.0.0.1:1,,ws://127.0.0.1:2",
        ] {
            let err = parse_urls(bad, "ws").unwrap_err();
            assert!(err.contains("empty URL"), "{bad}: {err}");
        }
        // One bad node refuses the whole list, with that node's reason.
        let err = parse_urls("ws://127.0.0.1:1,ws://10.0.0.1:2", "ws").unwrap_err();
        assert!(
            err.contains("10.0.0.1") && err.contains("not a loopback"),
            "{err}"
        );
    }

    #[test]
    fn round_robin_over_nodes() {
        let spread = |count: u64, nodes: usize| {
            let mut per = vec![0u64; nodes];
            for i in 0..count {
                per[node_for(i, nodes)] += 1;
            }
            per
        };
        assert_eq!(spread(10, 1), [10]);
        assert_eq!(spread(10, 2), [5, 5]);
        assert_eq!(spread(10, 3), [4, 3, 3]);
        assert_eq!(
            (0..6).map(|i| node_for(i, 3)).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1, 2]
        );
        assert_eq!(node_for(7, 0), 0);
    }
}
