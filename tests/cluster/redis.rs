//! A `redis-server` process of the test's own, on a free loopback port with a temporary
//! `--dir`: started, probed with PING, killed (`SIGKILL`), stopped and continued
//! (`SIGSTOP`/`SIGCONT`), restarted on the same port and directory, and talked to with raw
//! RESP (RESP2) over a `TcpStream` — no client library, so the tests see exactly what Redis
//! answers. Processes are stopped by PID only, in `Drop` too (also on a panic), and die with the
//! test thread that started them (`PR_SET_PDEATHSIG`) if the test harness itself goes away.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long a started or restarted Redis may take to answer PING.
const START_LIMIT: Duration = Duration::from_secs(10);

/// Whether a Redis is available: `redis-server` runs (`--version`). Without one the caller
/// skips, unless `CI` is set: then this panics (`.ci/run` installs Debian's `redis-server`).
pub fn available() -> bool {
    let works = Command::new(binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return true;
    }
    let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    assert!(
        !in_ci,
        "CI is set but `{} --version` fails (.ci/run installs Debian's redis-server)",
        binary()
    );
    eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
    false
}

/// `EDGEPUSH_REDIS_SERVER`, else `redis-server` on PATH.
fn binary() -> String {
    std::env::var("EDGEPUSH_REDIS_SERVER")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "redis-server".to_owned())
}

/// A port of 127.0.0.1 that was free a moment ago (bound with port 0, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Makes `command`'s process receive `SIGKILL` when the thread that spawned it ends, so that a
/// test which timed out (its body thread left running until the harness exits) leaves no
/// process behind.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2),
    // which is async-signal-safe, with constant arguments; it allocates nothing.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `signal` to `child` (ours, not yet reaped).
pub fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) with the PID of a child we started and have not waited for (so the PID
    // cannot have been reused), and a valid signal number.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh empty directory whose name contains `tag`.
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("edgepush-cluster-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How a Redis keeps data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// `--save "" --appendonly no`: nothing survives a restart, unless a `SAVE` left a
    /// `dump.rdb` in the directory (then a restart loads that snapshot).
    None,
    /// `--appendonly yes --appendfsync always`: everything acknowledged survives.
    Aof,
}

/// A running (or killed, or stopped) `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    persistence: Persistence,
    stopped: bool,
}

impl RedisServer {
    /// Starts one on a free port; returns once it answers PING.
    pub fn start(persistence: Persistence) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: TempDir::new("redis"),
            persistence,
            stopped: false,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let port = self.port.to_string();
        let mut args: Vec<&str> = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "no",
            "--save",
            "",
            "--protected-mode",
            "no",
            "--loglevel",
            "notice",
            "--logfile",
            "",
        ];
        match self.persistence {
            Persistence::None => args.extend(["--appendonly", "no"]),
            Persistence::Aof => args.extend(["--appendonly", "yes", "--appendfsync", "always"]),
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("redis.log"))
            .expect("open redis log");
        let mut command = Command::new(binary());
        command
            .args(&args)
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        die_with_parent(&mut command);
        self.child = Some(command.spawn().expect("start redis-server"));
        self.stopped = false;
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Ok(Resp::Simple(pong)) = self.try_command(&["PING"]) {
                if pong == "PONG" {
                    return;
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "redis-server exited at start ({status}); log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within {START_LIMIT:?}; log:\n{}",
                self.port,
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What it wrote to its log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// `kill -9`, and reaps it: every client link drops, nothing is flushed.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stopped = false;
    }

    /// Starts it again on the same port and directory (it loads whatever the directory holds:
    /// the AOF, or a `dump.rdb` a `SAVE` left).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// `kill -STOP`: the process freezes; connections stay open but nothing is answered.
    pub fn pause(&mut self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGSTOP);
            self.stopped = true;
        }
    }

    /// `kill -CONT` after [`RedisServer::pause`].
    pub fn resume(&mut self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGCONT);
            self.stopped = false;
        }
    }

    /// `SAVE`: a snapshot (`dump.rdb`) of everything now, synchronously.
    pub fn save(&self) {
        let answer = self.command(&["SAVE"]);
        assert_eq!(answer, Resp::Simple("OK".into()), "SAVE");
    }

    /// `CLIENT KILL TYPE pubsub`: drops every pub/sub link (the test's own link is not one).
    /// Returns how many were killed.
    pub fn kill_pubsub_clients(&self) -> i64 {
        match self.command(&["CLIENT", "KILL", "TYPE", "pubsub"]) {
            Resp::Integer(n) => n,
            other => panic!("CLIENT KILL TYPE pubsub answered {other:?}"),
        }
    }

    /// `CLIENT KILL TYPE normal` (our own link is skipped): drops every command link, pub/sub
    /// links excepted. Returns how many were killed.
    pub fn kill_normal_clients(&self) -> i64 {
        match self.command(&["CLIENT", "KILL", "TYPE", "normal"]) {
            Resp::Integer(n) => n,
            other => panic!("CLIENT KILL TYPE normal answered {other:?}"),
        }
    }

    /// `CLIENT KILL ADDR addr` for each of `addrs` (the client side of a link, as Redis sees
    /// it); returns how many were found and killed.
    pub fn kill_clients_at(&self, addrs: &[SocketAddr]) -> usize {
        let mut killed = 0;
        for addr in addrs {
            let addr = addr.to_string();
            if let Ok(Resp::Integer(n)) =
                self.try_command(&["CLIENT", "KILL", "ADDR", &addr, "SKIPME", "yes"])
            {
                killed += usize::try_from(n).unwrap_or(0);
            }
        }
        killed
    }

    /// One command on a fresh connection; panics on a connection failure or an error reply.
    pub fn command(&self, args: &[&str]) -> Resp {
        match self.try_command(args) {
            Ok(Resp::Error(e)) => panic!("redis {args:?}: error {e}"),
            Ok(answer) => answer,
            Err(e) => panic!("redis {args:?}: {e}"),
        }
    }

    /// One command on a fresh connection (2 s timeouts).
    pub fn try_command(&self, args: &[&str]) -> std::io::Result<Resp> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.set_write_timeout(Some(Duration::from_secs(2)))?;
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        stream.write_all(&request)?;
        read_resp(&mut BufReader::new(stream))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.stopped {
            self.resume();
        }
        self.kill9();
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR …`
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$…` (`None`: the null bulk string `$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*…` (`None`: the null array `*-1`).
    Array(Option<Vec<Resp>>),
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Reads one RESP2 reply.
pub fn read_resp(reader: &mut impl BufRead) -> std::io::Result<Resp> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(line.len().min(1));
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| invalid(format!("bad RESP number line {line:?}")))
    };
    match kind {
        "+" => Ok(Resp::Simple(rest.to_owned())),
        "-" => Ok(Resp::Error(rest.to_owned())),
        ":" => Ok(Resp::Integer(number()?)),
        "$" => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(Resp::Bulk(None));
            };
            let mut data = vec![0u8; len + 2];
            reader.read_exact(&mut data)?;
            data.truncate(len);
            Ok(Resp::Bulk(Some(data)))
        }
        "*" => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(Resp::Array(None));
            };
            let items = (0..len)
                .map(|_| read_resp(reader))
                .collect::<std::io::Result<Vec<_>>>()?;
            Ok(Resp::Array(Some(items)))
        }
        _ => Err(invalid(format!("bad RESP line {line:?}"))),
    }
}
