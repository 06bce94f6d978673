//! An `edgepush` process (the real binary, `CARGO_BIN_EXE_edgepush`) for the cluster tests:
//! started on free loopback ports (`--listen 127.0.0.1:0 --api-listen 127.0.0.1:0`, the bound
//! addresses read back from its log), optionally in cluster mode (`--redis`, `--redis-prefix`,
//! `--node-name`, `--redis-timeout`, `--redis-durable`), ready once `/healthz` answers 200;
//! killed with `SIGKILL` or ended with `SIGTERM` by PID, in `Drop` too. Its stderr goes to
//! `$CARGO_TARGET_TMPDIR/cluster-logs/<node>.log` (kept after the run, for debugging), and
//! [`Node::redis_links`] finds its TCP connections to Redis from `/proc`, so a test can cut one
//! node's links alone (`CLIENT KILL ADDR`).

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::redis::die_with_parent;
use crate::common::{http_exchange, ApiClient, HttpResponse};

/// How long a node may take to log its addresses and then answer `/healthz` with 200.
const START_LIMIT: Duration = Duration::from_secs(15);

/// How one node is started.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// `--node-name` (also the log file's name, with the prefix).
    pub name: String,
    /// `--redis URL`; `None`: a single node, everything in process.
    pub redis: Option<String>,
    /// `--redis-prefix`.
    pub prefix: String,
    /// `--redis-timeout`.
    pub redis_timeout: String,
    /// `--redis-durable`.
    pub durable: bool,
    /// Any further flags.
    pub extra: Vec<String>,
    /// Wait for `/healthz` 200 before returning.
    pub wait_healthy: bool,
}

impl NodeOptions {
    /// A cluster node named `name` on `redis` under `prefix` (`--redis-timeout 1s`).
    pub fn cluster(name: &str, redis: &str, prefix: &str) -> NodeOptions {
        NodeOptions {
            name: name.to_owned(),
            redis: Some(redis.to_owned()),
            prefix: prefix.to_owned(),
            redis_timeout: "1s".to_owned(),
            durable: false,
            extra: Vec::new(),
            wait_healthy: true,
        }
    }

    /// A single node without Redis.
    pub fn single(name: &str) -> NodeOptions {
        NodeOptions {
            redis: None,
            ..NodeOptions::cluster(name, "", "")
        }
    }
}

/// A running `edgepush` process.
pub struct Node {
    child: Option<Child>,
    /// Its `--node-name`.
    pub name: String,
    /// The public listener (`/ws`, `/echo`, `/healthz`).
    pub addr: SocketAddr,
    /// The push API.
    pub api_addr: SocketAddr,
    log_path: PathBuf,
}

impl Node {
    /// Starts one; returns once it logged its addresses (and, if asked, `/healthz` says 200).
    pub fn start(options: &NodeOptions) -> Node {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cluster-logs");
        std::fs::create_dir_all(&dir).expect("create log dir");
        let log_path = dir.join(format!(
            "{}.log",
            sanitize(&format!("{}-{}", options.prefix, options.name))
        ));
        let log = std::fs::File::create(&log_path).expect("create node log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_edgepush"));
        command.args([
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--log",
            "info",
        ]);
        if let Some(redis) = &options.redis {
            command.args([
                "--node-name",
                &options.name,
                "--redis",
                redis,
                "--redis-prefix",
                &options.prefix,
                "--redis-timeout",
                &options.redis_timeout,
            ]);
            if options.durable {
                command.arg("--redis-durable");
            }
        }
        command
            .args(&options.extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        die_with_parent(&mut command);
        let child = command.spawn().expect("start edgepush");
        let mut node = Node {
            child: Some(child),
            name: options.name.clone(),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            api_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            log_path,
        };
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let log = node.log();
            let addr = after(&log, "listening on ");
            let api = after(&log, "push API on http://");
            if let (Some(addr), Some(api)) = (addr, api) {
                node.addr = addr;
                node.api_addr = api;
                break;
            }
            if let Some(status) = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("node {} exited at start ({status}); log:\n{log}", node.name);
            }
            assert!(
                Instant::now() < deadline,
                "node {} logged no addresses within {START_LIMIT:?}; log:\n{log}",
                node.name
            );
            thread::sleep(Duration::from_millis(20));
        }
        if options.wait_healthy {
            let healthy = wait(deadline, || node.healthz().status == 200);
            assert!(
                healthy,
                "node {} never answered /healthz 200 within {START_LIMIT:?}; log:\n{}",
                node.name,
                node.log()
            );
        }
        node
    }

    /// What the node logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Where its log is.
    pub fn log_path(&self) -> &std::path::Path {
        &self.log_path
    }

    /// `GET /healthz` on the public listener.
    pub fn healthz(&self) -> HttpResponse {
        http_exchange(self.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    }

    /// A keep-alive client of its push API.
    pub fn api(&self) -> ApiClient {
        ApiClient::connect(self.api_addr)
    }

    /// `GET path` on the push API, on a fresh connection.
    pub fn get(&self, path: &str) -> HttpResponse {
        self.api().call("GET", path, None)
    }

    /// `kill -9`, reaped.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The local (client-side) addresses of its established TCP connections to
    /// 127.0.0.1:`redis_port`, from `/proc/PID/fd` and `/proc/PID/net/tcp`: what Redis lists as
    /// `addr` in `CLIENT LIST`.
    pub fn redis_links(&self, redis_port: u16) -> Vec<SocketAddr> {
        match self.child.as_ref().map(Child::id) {
            Some(pid) => tcp_links(pid, redis_port),
            None => Vec::new(),
        }
    }
}

/// The local addresses of process `pid`'s established IPv4 TCP connections to port
/// `remote_port`, from `/proc/PID/fd` (its socket inodes) and `/proc/PID/net/tcp`.
pub fn tcp_links(pid: u32, remote_port: u16) -> Vec<SocketAddr> {
    {
        let mut inodes = HashSet::new();
        if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for entry in entries.flatten() {
                if let Ok(target) = std::fs::read_link(entry.path()) {
                    let target = target.to_string_lossy().into_owned();
                    if let Some(inode) = target
                        .strip_prefix("socket:[")
                        .and_then(|s| s.strip_suffix(']'))
                    {
                        inodes.insert(inode.to_owned());
                    }
                }
            }
        }
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (local, remote, state, inode) = (
                    fields.get(1)?,
                    fields.get(2)?,
                    fields.get(3)?,
                    fields.get(9)?,
                );
                let remote = proc_addr(remote)?;
                (*state == "01" && remote.port() == remote_port && inodes.contains(*inode))
                    .then(|| proc_addr(local))
                    .flatten()
            })
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `0100007F:1F90` (little-endian IPv4, big-endian port, as /proc/net/tcp prints them).
fn proc_addr(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddr::from((Ipv4Addr::from(ip.swap_bytes()), port)))
}

/// The socket address right after the first `marker` in `log`.
fn after(log: &str, marker: &str) -> Option<SocketAddr> {
    let rest = log.split(marker).nth(1)?;
    let word = rest.split_whitespace().next()?;
    word.trim_end_matches('/').parse().ok()
}

/// A file name made of `name`'s safe characters.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Polls `cond` every 20 ms until it holds (true) or `deadline` passes (false).
pub fn wait(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}
