//! A real nginx in front of edgepush, configured with the proxy settings we ship
//! (`deploy/nginx/edgepush-proxy.conf`, included as is, and the `map` block of
//! `deploy/nginx/edgepush.conf`): the WebSocket upgrade and an echo round trip through it, a
//! push from the API to a subscriber behind it, server pings and the client's pongs crossing it
//! while the connection stays open, and the client address edgepush takes from the
//! `X-Forwarded-For` nginx sets (`--trust-proxy`). Also `nginx -t` on the shipped site file.
//!
//! nginx comes from Debian (`apt-get install nginx-light`; .ci/run does it). Without an nginx
//! binary the tests are skipped, unless `CI` is set: then they fail. `EDGEPUSH_NGINX` names
//! the binary to use.
//!
//! Each test runs its own nginx in the foreground (`daemon off; master_process off`) from a
//! temporary prefix holding its config, pid file, logs and temp paths, listening on a free
//! port of 127.0.0.1; a guard kills it and removes the directory when the test ends, also on a
//! panic.

mod common;

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    connect, guarded, http_exchange, push_client, read_response_head, upgrade_request_with,
    with_timeout, ApiClient, RawClient, Received, TestServer,
};
use edgepush::config::Config;
use edgepush::protocol::frame::OpCode;

const DEPLOY_NGINX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx");

// ---------------------------------------------------------------------------------------------
// Finding nginx, running it, stopping it.
// ---------------------------------------------------------------------------------------------

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// The nginx binary: `$EDGEPUSH_NGINX`, else `nginx` on PATH, else Debian's /usr/sbin/nginx
/// (not on a normal user's PATH). `None` means skip; under CI it panics instead.
fn nginx_binary() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("EDGEPUSH_NGINX").filter(|p| !p.is_empty()) {
        candidates.push(path.into());
    }
    candidates.push("nginx".into());
    candidates.push("/usr/sbin/nginx".into());
    for candidate in candidates {
        let works = Command::new(&candidate)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if works {
            return Some(candidate);
        }
    }
    assert!(
        !in_ci(),
        "CI is set but no nginx binary was found (.ci/run installs nginx-light)"
    );
    eprintln!("skipped: nginx is not installed (apt-get install nginx-light)");
    None
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("edgepush-nginx-{}-{tag}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create the nginx prefix");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A running nginx; killed (and its prefix removed) when dropped.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    /// Removed after `Drop::drop` has killed nginx (fields drop after it runs).
    prefix: TempDir,
}

impl Nginx {
    /// Starts nginx in front of `upstream` (edgepush's public listener). Retries on another
    /// port if the free port it picked was taken in the meantime.
    fn start(binary: &Path, upstream: SocketAddr) -> Nginx {
        let mut last_error = String::new();
        for attempt in 0..3 {
            let prefix = TempDir::new(&format!("a{attempt}"));
            let port = free_port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            fs::write(
                prefix.0.join("nginx.conf"),
                nginx_conf(&prefix.0, port, upstream),
            )
            .expect("write nginx.conf");
            let stderr = fs::File::create(prefix.0.join("stderr.log")).expect("stderr log");
            let child = Command::new(binary)
                .arg("-p")
                .arg(&prefix.0)
                .arg("-c")
                .arg(prefix.0.join("nginx.conf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
            let mut nginx = Nginx {
                child,
                addr,
                prefix,
            };
            match nginx.wait_ready(Duration::from_secs(10)) {
                Ok(()) => return nginx,
                Err(e) => last_error = e,
            }
        }
        panic!("nginx did not start: {last_error}");
    }

    /// Waits until nginx accepts on its port; `Err` with its logs if it exited or never did.
    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("nginx exited with {status}:\n{}", self.logs()));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("not listening on {} after {limit:?}", self.addr));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// nginx's stderr and error log, for failure messages.
    fn logs(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.prefix.0.join(name)).unwrap_or_default();
        format!(
            "--- stderr ---\n{}--- error.log ---\n{}",
            read("stderr.log"),
            read("error.log")
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("nginx logs:\n{}", self.logs());
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

/// The `map $http_upgrade $connection_upgrade { ... }` block of the shipped site file, verbatim.
fn shipped_upgrade_map() -> String {
    let site = fs::read_to_string(format!("{DEPLOY_NGINX}/edgepush.conf"))
        .expect("read deploy/nginx/edgepush.conf");
    let start = site
        .find("map $http_upgrade $connection_upgrade {")
        .expect("deploy/nginx/edgepush.conf has the map $http_upgrade block");
    let end = start + site[start..].find('}').expect("end of the map block") + 1;
    site[start..end].to_owned()
}

/// A complete nginx.conf for a test: everything nginx writes stays under `prefix`; the
/// WebSocket locations include the shipped proxy snippet as is.
fn nginx_conf(prefix: &Path, port: u16, upstream: SocketAddr) -> String {
    let p = prefix.display();
    let snippet = format!("{DEPLOY_NGINX}/edgepush-proxy.conf");
    let map = shipped_upgrade_map();
    format!(
        r#"# Written by tests/nginx.rs.
daemon off;
master_process off;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log info;

events {{
    worker_connections 256;
}}

http {{
    access_log {p}/access.log;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;

    {map}

    upstream edgepush {{
        server {upstream};
        keepalive 8;
    }}

    server {{
        listen 127.0.0.1:{port};

        location = /ws {{
            include {snippet};
            proxy_pass http://edgepush;
        }}

        location = /echo {{
            include {snippet};
            proxy_pass http://edgepush;
        }}

        location = /healthz {{
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://edgepush;
        }}

        location / {{
            return 404;
        }}
    }}
}}
"#
    )
}

/// An edgepush and an nginx in front of it.
struct Stack {
    // Declared first so it is dropped first: nginx goes before the server it proxies to.
    nginx: Nginx,
    server: TestServer,
}

impl Stack {
    fn start(binary: &Path, config: Config) -> Stack {
        let server = TestServer::start(config);
        let nginx = Nginx::start(binary, server.addr());
        Stack { nginx, server }
    }

    /// Where clients connect: nginx.
    fn addr(&self) -> SocketAddr {
        self.nginx.addr
    }
}

/// Starts an upgrade to `target` with extra header lines and returns the status line's code
/// (and the client on a 101). Unlike `common::try_upgrade` it reads no body after a refusal:
/// nginx keeps the client connection alive, so there is no EOF to wait for.
fn upgrade_status(addr: SocketAddr, target: &str, headers: &[&str]) -> (u16, Option<RawClient>) {
    let mut stream = connect(addr);
    stream
        .write_all(upgrade_request_with(target, headers).as_bytes())
        .expect("send upgrade");
    let (response, rest) = read_response_head(&mut stream);
    if response.status == 101 {
        assert_eq!(
            response.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "accept key through nginx"
        );
        assert!(
            response
                .header("upgrade")
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
            "Upgrade header through nginx: {response:?}"
        );
        return (101, Some(RawClient::from_parts(stream, rest)));
    }
    (response.status, None)
}

// ---------------------------------------------------------------------------------------------
// The shipped site file.
// ---------------------------------------------------------------------------------------------

/// `nginx -t` accepts deploy/nginx/edgepush.conf as shipped, with the snippet where the site
/// expects it (snippets/ beside nginx.conf, as on Debian).
#[test]
fn shipped_site_config_passes_nginx_t() {
    let Some(binary) = nginx_binary() else {
        return;
    };
    let prefix = TempDir::new("t");
    let p = prefix.0.display();
    fs::create_dir_all(prefix.0.join("snippets")).unwrap();
    fs::copy(
        format!("{DEPLOY_NGINX}/edgepush-proxy.conf"),
        prefix.0.join("snippets/edgepush-proxy.conf"),
    )
    .expect("copy the snippet");
    let conf = format!(
        "pid {p}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n    access_log off;\n    \
         client_body_temp_path {p}/client_body;\n    proxy_temp_path {p}/proxy;\n    \
         fastcgi_temp_path {p}/fastcgi;\n    uwsgi_temp_path {p}/uwsgi;\n    \
         scgi_temp_path {p}/scgi;\n    include {DEPLOY_NGINX}/edgepush.conf;\n}}\n"
    );
    fs::write(prefix.0.join("nginx.conf"), conf).unwrap();
    let output = Command::new(&binary)
        .arg("-t")
        .arg("-p")
        .arg(&prefix.0)
        .arg("-c")
        .arg(prefix.0.join("nginx.conf"))
        .output()
        .expect("run nginx -t");
    assert!(
        output.status.success(),
        "nginx -t refused deploy/nginx/edgepush.conf:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Upgrade, echo, push and pings through nginx.
// ---------------------------------------------------------------------------------------------

#[test]
fn upgrade_and_echo_through_nginx() {
    let Some(binary) = nginx_binary() else {
        return;
    };
    guarded(move || {
        let stack = Stack::start(&binary, Config::for_tests());

        // Plain requests still pass: /healthz through the keepalive upstream.
        let health = http_exchange(
            stack.addr(),
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(health.status, 200, "{health:?}");
        assert_eq!(health.body_text().trim(), "ok");

        let (status, client) = upgrade_status(stack.addr(), "/echo", &[]);
        assert_eq!(status, 101, "upgrade through nginx");
        let mut client = client.unwrap();
        client.round_trip("hello through nginx");
        client.round_trip("ping");
        // A message larger than nginx's proxy buffers, fragmented by the client.
        let big: String = (0..200_000)
            .map(|i| (b'a' + (i % 26) as u8) as char)
            .collect();
        client
            .send_frame(false, OpCode::Text, &big.as_bytes()[..100_000])
            .unwrap();
        client
            .send_frame(true, OpCode::Continuation, &big.as_bytes()[100_000..])
            .unwrap();
        match client.recv() {
            Received::Text(got) => assert!(got == big, "200 kB echo differs"),
            other => panic!("expected the 200 kB echo, got {other:?}"),
        }
        client.send_binary(&[0, 1, 2, 255]);
        assert_eq!(client.recv(), Received::Binary(vec![0, 1, 2, 255]));

        // The closing handshake crosses nginx, and nginx closes the client side after it.
        client.send_close(1000);
        client.expect_close_code(1000);
    });
}

#[test]
fn push_through_nginx() {
    let Some(binary) = nginx_binary() else {
        return;
    };
    guarded(move || {
        let stack = Stack::start(&binary, Config::for_tests());
        let mut alice = push_client(stack.addr(), "alice");
        let subscribed = alice.subscribe("news");
        assert_eq!(subscribed["seq"], 0, "{subscribed}");

        // The API is not behind nginx: publish on edgepush's API address directly.
        let mut api = ApiClient::connect(stack.server.api_addr());
        let published = api.post(
            "/api/publish?wait=delivered",
            r#"{"channel":"news","data":{"headline":"via nginx"}}"#,
        );
        assert_eq!(published["delivered"], 1, "{published}");
        let message = alice.recv_json();
        assert_eq!(message["op"], "message", "{message}");
        assert_eq!(message["channel"], "news", "{message}");
        assert_eq!(message["seq"], 1, "{message}");
        assert_eq!(message["data"]["headline"], "via nginx", "{message}");

        let sent = api.post(
            "/api/send?wait=delivered",
            r#"{"user":"alice","data":"just you"}"#,
        );
        assert_eq!(sent["delivered"], 1, "{sent}");
        let direct = alice.recv_json();
        assert_eq!(direct["channel"], "$user", "{direct}");
        assert_eq!(direct["data"], "just you", "{direct}");
    });
}

#[test]
fn server_pings_cross_nginx_and_the_connection_stays_open() {
    let Some(binary) = nginx_binary() else {
        return;
    };
    guarded(move || {
        let ping_interval = Duration::from_millis(300);
        let stack = Stack::start(
            &binary,
            Config {
                ping_interval,
                // Short, so a pong lost in nginx would close the connection within the test.
                pong_timeout: Duration::from_millis(500),
                ..Config::for_tests()
            },
        );
        let (status, client) = upgrade_status(stack.addr(), "/echo", &[]);
        assert_eq!(status, 101);
        let mut client = client.unwrap();

        // Stay silent except for answering pings, for about seven intervals.
        let watch = ping_interval * 7;
        let started = Instant::now();
        let mut pings = 0;
        while started.elapsed() < watch {
            match client.recv() {
                Received::Ping(payload) => {
                    pings += 1;
                    client.send_frame(true, OpCode::Pong, &payload).unwrap();
                }
                other => panic!("after {pings} pings, expected a ping, got {other:?}"),
            }
        }
        assert!(
            pings >= 3,
            "{pings} pings in {watch:?} with --ping-interval {ping_interval:?}"
        );

        // Still open and working after those intervals.
        client.round_trip("still here");
        client.send_close(1000);
        client.expect_close_code(1000);
    });
}

// ---------------------------------------------------------------------------------------------
// The client address behind nginx (--trust-proxy with --max-connections-per-ip).
// ---------------------------------------------------------------------------------------------

/// With nginx (127.0.0.1) trusted and one connection per client address, edgepush must count
/// the address nginx forwards, not nginx's own. nginx appends the address it saw (127.0.0.1,
/// trusted) to the client's `X-Forwarded-For`, so edgepush, walking the chain from the right,
/// lands on the value the test client sent: two different values are two clients, and a
/// second connection with the same value is refused with 429.
#[test]
fn client_address_comes_from_x_forwarded_for_behind_trusted_nginx() {
    let Some(binary) = nginx_binary() else {
        return;
    };
    with_timeout(Duration::from_secs(30), move || {
        let stack = Stack::start(
            &binary,
            Config {
                trust_proxy: vec!["127.0.0.1/32".parse().expect("CIDR")],
                max_connections_per_ip: 1,
                ..Config::for_tests()
            },
        );
        // Documentation addresses (RFC 5737): only ever header values here.
        let first = ["X-Forwarded-For: 192.0.2.10"];
        let second = ["X-Forwarded-For: 192.0.2.20"];

        let (status, a) = upgrade_status(stack.addr(), "/ws?user=a", &first);
        assert_eq!(status, 101, "first client");
        let mut a = a.unwrap();
        a.expect_user_subscribed();
        let (status, b) = upgrade_status(stack.addr(), "/ws?user=b", &second);
        assert_eq!(
            status, 101,
            "another X-Forwarded-For is another client (if 429: edgepush counted nginx's \
             address, not the forwarded one)"
        );
        let mut b = b.unwrap();
        b.expect_user_subscribed();

        let (status, _) = upgrade_status(stack.addr(), "/ws?user=c", &first);
        assert_eq!(
            status, 429,
            "a second connection from 192.0.2.10 while the first is open"
        );

        // Both admitted connections still work.
        for client in [&mut a, &mut b] {
            client.send_text("ping");
            assert_eq!(client.recv(), Received::Text("pong".into()));
        }

        // Once the first closes, its address may connect again.
        a.send_close(1000);
        a.expect_close_code(1000);
        let admitted = (0..100).any(|_| {
            let (status, _) = upgrade_status(stack.addr(), "/ws?user=c", &first);
            if status == 101 {
                return true;
            }
            assert_eq!(status, 429, "while the old connection is being released");
            thread::sleep(Duration::from_millis(20));
            false
        });
        assert!(
            admitted,
            "192.0.2.10 still refused after its connection closed"
        );
    });
}

/// The control for the test above: without `--trust-proxy` the headers are ignored and every
/// client behind nginx is nginx's 127.0.0.1, so a second connection is refused whatever
/// `X-Forwarded-For` it carries.
#[test]
fn without_trust_proxy_every_client_behind_nginx_is_nginx() {
    let Some(binary) = nginx_binary() else {
        return;
    };
    guarded(move || {
        let stack = Stack::start(
            &binary,
            Config {
                max_connections_per_ip: 1,
                ..Config::for_tests()
            },
        );
        let (status, a) =
            upgrade_status(stack.addr(), "/ws?user=a", &["X-Forwarded-For: 192.0.2.10"]);
        assert_eq!(status, 101, "first client");
        let mut a = a.unwrap();
        a.expect_user_subscribed();
        let (status, _) =
            upgrade_status(stack.addr(), "/ws?user=b", &["X-Forwarded-For: 192.0.2.20"]);
        assert_eq!(
            status, 429,
            "X-Forwarded-For believed from an untrusted peer"
        );
    });
}
