//! The parent process: plans the run, starts the children, publishes (fanout, slow), watches
//! the server, merges the children's results and reports.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use serde_json::{json, Value};

use crate::child::{ChildResult, ChildSpec, ReadyInfo, ScenarioKind, SPEC_ENV};
use crate::cli::{
    parse_url, parse_urls, Cli, Cmd, Payload, PubSub, Target, DEFAULT_ECHO_URL, DEFAULT_PUSH_URL,
};
use crate::direct::{self, DirectOptions};
use crate::publish::{self, ApiPublisher, PublishReport, Publisher, Retries, WsPublisher};
use crate::report::{svg_chart, table, Progress};
use crate::scale::SecondLine;
use crate::stats::{curve, merge_data, new_hist, percentiles, Percentiles};
use crate::sys::{cpu_seconds, now_ns, raise_nofile_limit, rss_bytes, tcp_mem_bytes};

const SOCKETS_PER_PROC: usize = 15_000;
const CONNS_PER_SOURCE_IP: usize = 25_000;

/// A line from a child's stdout (or its end), tagged with the child's index.
enum FromChild {
    Progress(usize, [u64; 3]),
    /// `scale`'s per-second line.
    Second(usize, Box<SecondLine>),
    Ready(usize, ReadyInfo),
    Result(usize, Box<ChildResult>),
    Exit(usize),
}

/// The running child processes, their stdin pipes and what each last said.
pub(crate) struct Children {
    processes: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    rx: mpsc::Receiver<FromChild>,
    pub(crate) progress: Vec<[u64; 3]>,
    pub(crate) ready: Vec<Option<ReadyInfo>>,
    pub(crate) results: Vec<Option<ChildResult>>,
    pub(crate) exited: Vec<bool>,
    /// `scale`: the per-second lines received and not yet taken, with the child's index.
    pub(crate) seconds: Vec<(usize, SecondLine)>,
}

impl Children {
    pub(crate) fn send_all(&mut self, line: &str) {
        for stdin in self.stdins.iter_mut().flatten() {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }

    /// Waits up to `wait` for a line from any child, then takes in every line already there.
    pub(crate) fn pump(&mut self, wait: Duration) {
        let Ok(msg) = self.rx.recv_timeout(wait) else {
            return;
        };
        let mut next = Some(msg);
        while let Some(msg) = next {
            match msg {
                FromChild::Progress(i, p) => self.progress[i] = p,
                FromChild::Second(i, line) => self.seconds.push((i, *line)),
                FromChild::Ready(i, r) => self.ready[i] = Some(r),
                FromChild::Result(i, r) => self.results[i] = Some(*r),
                FromChild::Exit(i) => self.exited[i] = true,
            }
            next = self.rx.try_recv().ok();
        }
    }

    pub(crate) fn totals(&self) -> [u64; 3] {
        self.progress
            .iter()
            .fold([0; 3], |a, p| [a[0] + p[0], a[1] + p[1], a[2] + p[2]])
    }

    pub(crate) fn all_ready(&self) -> bool {
        (0..self.ready.len()).all(|i| self.ready[i].is_some() || self.exited[i])
    }

    pub(crate) fn all_done(&self) -> bool {
        (0..self.results.len()).all(|i| self.results[i].is_some() || self.exited[i])
    }

    pub(crate) fn kill_all(&mut self) {
        for c in &mut self.processes {
            let _ = c.kill();
        }
    }

    pub(crate) fn reap(&mut self) {
        self.stdins.iter_mut().for_each(|s| *s = None);
        for c in &mut self.processes {
            let _ = c.wait();
        }
    }
}

pub(crate) fn spawn(specs: &[ChildSpec]) -> Result<Children, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
    let (tx, rx) = mpsc::channel();
    let mut processes = Vec::new();
    let mut stdins = Vec::new();
    for spec in specs {
        let json = serde_json::to_string(spec).map_err(|e| e.to_string())?;
        let mut child = Command::new(&exe)
            .arg("--child")
            .env(SPEC_ENV, json)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start a child process: {e}"))?;
        let Some(stdout) = child.stdout.take() else {
            return Err("child has no stdout".into());
        };
        stdins.push(child.stdin.take());
        let i = spec.index;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let msg = if let Some(rest) = line.strip_prefix("P ") {
                    let mut it = rest.split(' ').map(|n| n.parse::<u64>().unwrap_or(0));
                    let p = [
                        it.next().unwrap_or(0),
                        it.next().unwrap_or(0),
                        it.next().unwrap_or(0),
                    ];
                    FromChild::Progress(i, p)
                } else if let Some(rest) = line.strip_prefix("T ") {
                    match serde_json::from_str(rest) {
                        Ok(r) => FromChild::Second(i, Box::new(r)),
                        Err(e) => {
                            eprintln!("edgepush-load: child {i}: bad T line: {e}");
                            continue;
                        }
                    }
                } else if let Some(rest) = line.strip_prefix("READY ") {
                    match serde_json::from_str(rest) {
                        Ok(r) => FromChild::Ready(i, r),
                        Err(e) => {
                            eprintln!("edgepush-load: child {i}: bad READY line: {e}");
                            continue;
                        }
                    }
                } else if let Some(rest) = line.strip_prefix("RESULT ") {
                    match serde_json::from_str(rest) {
                        Ok(r) => FromChild::Result(i, Box::new(r)),
                        Err(e) => {
                            eprintln!("edgepush-load: child {i}: bad RESULT line: {e}");
                            continue;
                        }
                    }
                } else {
                    continue;
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
            let _ = tx.send(FromChild::Exit(i));
        });
        processes.push(child);
    }
    let n = specs.len();
    Ok(Children {
        processes,
        stdins,
        rx,
        progress: vec![[0; 3]; n],
        ready: vec![None; n],
        results: vec![None; n],
        exited: vec![false; n],
        seconds: Vec::new(),
    })
}

/// Samples the server's RSS every 100 ms; keeps the peak.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some((rss, _)) = rss_bytes(pid) {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        RssSampler { peak, stop }
    }
}

/// Where the publisher publishes (fanout, slow).
enum PubTo {
    /// `--pub-ws`: one WebSocket.
    Ws(Target),
    /// `--api`: the API nodes, each as written and parsed.
    Api(Vec<(String, Target)>),
}

pub(crate) struct Plan {
    pub(crate) kind: ScenarioKind,
    /// The nodes connections go to (`--url`, or `--sub-url`), each as written and parsed;
    /// connection i goes to node i % n.
    pub(crate) nodes: Vec<(String, Target)>,
    /// The whole `--url` as given (`target` in the report).
    pub(crate) url: String,
    pub(crate) conns: usize,
    pub(crate) procs: usize,
    pub(crate) source_ips: Vec<Ipv4Addr>,
}

fn ceil_div(a: usize, b: usize) -> usize {
    a.div_ceil(b.max(1)).max(1)
}

/// Plans and runs one scenario from the command line; returns the exit code (0 done, 2 timed
/// out or a child failed) or the error that stopped it before or while starting.
pub fn run(cli: Cli) -> Result<i32, String> {
    let c = &cli.common;
    let (kind, default_url, conns) = match &cli.cmd {
        Cmd::Idle { conns, .. } => (ScenarioKind::Idle, DEFAULT_PUSH_URL, *conns),
        Cmd::Echo { conns, size, .. } => {
            if *size < 8 {
                return Err(
                    "--size must be at least 8 (a timestamp travels in each message)".into(),
                );
            }
            (ScenarioKind::Echo, DEFAULT_ECHO_URL, *conns)
        }
        Cmd::Fanout {
            pubsub,
            reconnect_every,
            ..
        } => {
            if let Some(every) = reconnect_every {
                if every.is_zero() {
                    return Err("--reconnect-every must be more than 0".into());
                }
                if pubsub.pub_ws.is_some() || pubsub.sub_url.is_some() {
                    return Err(
                        "--reconnect-every needs the push endpoint's subscribe op and \
publishing through the API: not with --pub-ws or --sub-url"
                            .into(),
                    );
                }
            }
            (ScenarioKind::Fanout, DEFAULT_PUSH_URL, pubsub.subs)
        }
        Cmd::Slow {
            pubsub,
            readers_stopped,
            ..
        } => {
            if *readers_stopped > pubsub.subs {
                return Err("--readers-stopped cannot exceed the number of subscribers".into());
            }
            (ScenarioKind::Slow, DEFAULT_PUSH_URL, pubsub.subs)
        }
        Cmd::Churn { max_concurrent, .. } => {
            (ScenarioKind::Churn, DEFAULT_PUSH_URL, *max_concurrent)
        }
        Cmd::Actions { conns, direct, .. } => {
            if let Some(url) = direct {
                parse_url(url, "http").map_err(|e| format!("--direct: {e}"))?;
            }
            (ScenarioKind::Actions, DEFAULT_PUSH_URL, *conns)
        }
        Cmd::Scale { args } => {
            crate::scale::run::check_args(args, c)?;
            (ScenarioKind::Scale, DEFAULT_PUSH_URL, args.conns)
        }
        Cmd::Floor { .. } | Cmd::Backend { .. } => {
            return Err("floor and backend need no server: run by main".into())
        }
    };
    let pubsub: Option<&PubSub> = match &cli.cmd {
        Cmd::Fanout { pubsub, .. } | Cmd::Slow { pubsub, .. } => Some(pubsub),
        _ => None,
    };
    let url = pubsub
        .and_then(|p| p.sub_url.clone())
        .or_else(|| c.url.clone())
        .unwrap_or_else(|| default_url.to_string());
    let nodes = parse_urls(&url, "ws")?;
    // Check the publisher's targets before opening anything.
    let pub_target = match pubsub {
        Some(p) => Some(match &p.pub_ws {
            Some(u) => PubTo::Ws(parse_url(u, "ws")?),
            None => PubTo::Api(parse_urls(&c.api, "http")?),
        }),
        None => None,
    };

    let limit = raise_nofile_limit() as usize;
    let usable = limit.saturating_sub(100).max(1);
    let procs = match c.procs {
        Some(0) => return Err("--procs must be at least 1".into()),
        Some(p) => p,
        None if kind == ScenarioKind::Churn => 1,
        None => ceil_div(conns, SOCKETS_PER_PROC).max(ceil_div(conns, usable)),
    };
    let per_proc = ceil_div(conns, procs);
    if per_proc + 100 > limit {
        return Err(format!(
            "the open-files limit is {limit} (already raised to the hard limit) but {per_proc} connections per process need about {}: \
use --procs {} or more, or raise the hard limit (ulimit -Hn, or LimitNOFILE= for a service)",
            per_proc + 100,
            ceil_div(conns, usable)
        ));
    }
    let ip_count = match (c.source_ips, &cli.cmd) {
        (Some(n), _) => n,
        (None, Cmd::Churn { rate, duration, .. }) => {
            // Closed connections sit in TIME_WAIT for 60 s.
            let used = (rate * duration.as_secs_f64().min(60.0)) as usize;
            ceil_div(used, CONNS_PER_SOURCE_IP)
        }
        (None, Cmd::Scale { args }) => {
            // Plain closes of ours leave TIME_WAIT for 60 s: half the drops of a minute.
            let churn = conns as f64 * args.drop_rate.max(0.0) * 30.0;
            ceil_div(conns + churn as usize, CONNS_PER_SOURCE_IP)
        }
        (None, _) => ceil_div(conns, CONNS_PER_SOURCE_IP),
    };
    if ip_count > 250 {
        return Err("--source-ips: at most 250 (127.0.0.2 to 127.0.0.251)".into());
    }
    let source_ips = if nodes.iter().any(|(_, t)| t.addr.is_ipv4()) {
        (0..ip_count)
            .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8))
            .collect()
    } else {
        Vec::new()
    };
    let plan = Plan {
        kind,
        nodes,
        url,
        conns,
        procs,
        source_ips,
    };
    execute(&cli, plan, pub_target)
}

fn execute(cli: &Cli, plan: Plan, pub_target: Option<PubTo>) -> Result<i32, String> {
    let c = &cli.common;
    let start = now_ns();
    let deadline = start.saturating_add(c.timeout.as_nanos() as u64);
    let ns = |d: Duration| d.as_nanos() as u64;
    let mut specs = Vec::new();
    let mut first = 0u64;
    for i in 0..plan.procs {
        let n = plan.conns / plan.procs + usize::from(i < plan.conns % plan.procs);
        let mut spec = ChildSpec {
            index: i,
            scenario: plan.kind,
            spin: !c.no_spin
                && matches!(
                    plan.kind,
                    ScenarioKind::Echo
                        | ScenarioKind::Fanout
                        | ScenarioKind::Slow
                        | ScenarioKind::Actions
                ),
            nodes: plan.nodes.iter().map(|(_, t)| t.clone()).collect(),
            conns: n,
            first_conn: first,
            stride: plan.procs as u64,
            source_ips: plan.source_ips.clone(),
            size: 64,
            inflight: 1,
            duration_ns: 0,
            channel: None,
            messages: 0,
            stopped: 0,
            stopped_rcvbuf: 0,
            rate: 0.0,
            max_concurrent: 1,
            connect_concurrency: c.connect_concurrency,
            handshake_timeout_ns: ns(c.handshake_timeout),
            deliver_timeout_ns: 0,
            close_wait_ns: 0,
            timeout_ns: ns(c.timeout).saturating_sub(1_000_000_000),
            reconnect_every_ns: 0,
            deflate_offer: c.deflate.clone(),
            payload: Payload::Pad,
            action_code: 0,
            scale: None,
        };
        first += n as u64;
        match &cli.cmd {
            Cmd::Idle { hold, .. } => spec.duration_ns = ns(*hold),
            Cmd::Scale { args } => {
                spec.size = args.size;
                spec.duration_ns = ns(args.duration);
                spec.deliver_timeout_ns = ns(args.settle);
                spec.scale = Some(crate::scale::run::child_spec(args, start));
            }
            Cmd::Floor { .. } | Cmd::Backend { .. } => {}
            Cmd::Actions {
                size,
                in_flight,
                code,
                duration,
                drain_timeout,
                ..
            } => {
                spec.size = *size;
                spec.inflight = *in_flight as usize;
                spec.action_code = *code;
                spec.duration_ns = ns(*duration);
                spec.deliver_timeout_ns = ns(*drain_timeout);
            }
            Cmd::Echo {
                size,
                inflight,
                duration,
                payload,
                ..
            } => {
                spec.payload = *payload;
                spec.size = *size;
                spec.inflight = *inflight;
                spec.duration_ns = ns(*duration);
            }
            Cmd::Fanout { pubsub, .. } | Cmd::Slow { pubsub, .. } => {
                spec.channel = pubsub.sub_url.is_none().then(|| pubsub.channel.clone());
                spec.messages = pubsub.messages;
                spec.deliver_timeout_ns = ns(pubsub.deliver_timeout);
                if let Cmd::Slow {
                    readers_stopped,
                    stopped_rcvbuf,
                    close_wait,
                    ..
                } = &cli.cmd
                {
                    spec.stopped = readers_stopped / plan.procs
                        + usize::from(i < readers_stopped % plan.procs);
                    spec.stopped_rcvbuf = *stopped_rcvbuf;
                    spec.close_wait_ns = ns(*close_wait);
                }
                if let Cmd::Fanout {
                    reconnect_every: Some(every),
                    ..
                } = &cli.cmd
                {
                    spec.reconnect_every_ns = ns(*every).max(1);
                }
            }
            Cmd::Churn {
                rate,
                duration,
                subscribe,
                max_concurrent,
            } => {
                spec.conns = 0;
                spec.first_conn = i as u64;
                spec.rate = rate / plan.procs as f64;
                spec.duration_ns = ns(*duration);
                spec.channel = subscribe.clone();
                spec.max_concurrent = *max_concurrent;
            }
        }
        specs.push(spec);
    }

    if let Cmd::Scale { args } = &cli.cmd {
        return crate::scale::run::execute(cli, args, &plan, &specs, deadline);
    }
    let pid = c.server_pid;
    if let Some(pid) = pid {
        if rss_bytes(pid).is_none() {
            return Err(format!(
                "--server-pid {pid}: no such process (or /proc/{pid} is unreadable)"
            ));
        }
    }
    let rss_before = pid.and_then(rss_bytes).map(|r| r.0);
    let tcp_before = tcp_mem_bytes();
    let sampler = pid.map(RssSampler::start);

    let mut children = spawn(&specs)?;
    let mut ui = Progress::new(plan.conns as u64);
    let scenario = plan.kind.name();

    // 1. Connect (and subscribe).
    let Opening { opened, connect_s } = open_phase(
        &mut children,
        &mut ui,
        &plan,
        deadline,
        plan.kind != ScenarioKind::Churn,
    )?;
    // Set if a later phase runs out of time (opening in time is checked above).
    let mut timed_out = false;

    // 2. Measured phase.
    let (rss_after, tcp_after) = if plan.kind == ScenarioKind::Idle {
        std::thread::sleep(Duration::from_millis(500));
        (pid.and_then(rss_bytes).map(|r| r.0), tcp_mem_bytes())
    } else {
        (None, None)
    };
    let cpu_start = pid.and_then(cpu_seconds);
    let go_ns = now_ns();
    children.send_all("GO");

    let mut pub_report: Option<PublishReport> = None;
    let api_urls: Vec<String> = match &pub_target {
        Some(PubTo::Api(nodes)) => nodes.iter().map(|(url, _)| url.clone()).collect(),
        _ => Vec::new(),
    };
    if let (Some(pubsub), Some(pt)) = (
        match &cli.cmd {
            Cmd::Fanout { pubsub, .. } | Cmd::Slow { pubsub, .. } => Some(pubsub.clone()),
            _ => None,
        },
        pub_target,
    ) {
        let done = Arc::new(AtomicU64::new(0));
        let done2 = done.clone();
        let api_key = c.api_key.clone();
        let handle = std::thread::spawn(move || -> Result<PublishReport, String> {
            let (mut publisher, nodes): (Box<dyn Publisher>, usize) = match pt {
                PubTo::Ws(t) => (
                    Box::new(WsPublisher::new(&t)?.with_payload(pubsub.payload)),
                    1,
                ),
                PubTo::Api(targets) => {
                    let p = ApiPublisher::new(
                        targets.into_iter().map(|(_, t)| t).collect(),
                        &pubsub.channel,
                        api_key.as_deref(),
                        pubsub.api_pipeline,
                        pubsub.wait_delivered,
                    )?
                    .with_payload(pubsub.payload)
                    .with_retries(Retries {
                        max: pubsub.publish_retries,
                        max_wait: pubsub.publish_retry_wait,
                        keyed: !pubsub.no_idempotency_key,
                    });
                    let n = p.nodes();
                    (Box::new(p), n)
                }
            };
            let report = publish::run(
                publisher.as_mut(),
                nodes,
                pubsub.messages,
                pubsub.size,
                pubsub.rate,
                deadline,
                &mut |n| done2.store(n, Ordering::Relaxed),
            );
            // Let the WebSocket publisher's frames go out before it closes.
            std::thread::sleep(Duration::from_millis(50));
            drop(publisher);
            Ok(report)
        });
        while !handle.is_finished() {
            children.pump(Duration::from_millis(100));
            let [o, r, e] = children.totals();
            let p = done.load(Ordering::Relaxed);
            ui.update(
                "publishing",
                o,
                plan.conns as u64,
                &format!("published {p}  deliveries {r}  errors {e}"),
            );
        }
        let report = match handle.join() {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                children.kill_all();
                children.reap();
                ui.finish();
                return Err(e);
            }
            Err(_) => return Err("the publisher thread panicked".into()),
        };
        children.send_all(&format!("END {}", report.published));
        pub_report = Some(report);
    }
    while !children.all_done() {
        children.pump(Duration::from_millis(100));
        let [o, r, e] = children.totals();
        let label = match plan.kind {
            ScenarioKind::Idle => "holding",
            ScenarioKind::Fanout | ScenarioKind::Slow => "delivering",
            _ => "running",
        };
        ui.update(
            label,
            o,
            plan.conns as u64,
            &format!("recv {r}  errors {e}"),
        );
        if now_ns() >= deadline.saturating_add(2_000_000_000) {
            timed_out = true;
            children.kill_all();
            break;
        }
    }
    let end_ns = now_ns();
    let cpu_end = pid.and_then(cpu_seconds);
    let rss_end = pid.and_then(rss_bytes);
    if let Some(s) = &sampler {
        s.stop.store(true, Ordering::Relaxed);
    }
    children.reap();
    ui.finish();

    // 3. Merge.
    let results: Vec<ChildResult> = children.results.iter().flatten().cloned().collect();
    let missing_children = plan.procs - results.len();
    let sum = |f: &dyn Fn(&ChildResult) -> u64| results.iter().map(f).sum::<u64>();
    let Merged {
        hs,
        lat,
        errors,
        timed_out: child_timed_out,
    } = merge(&results);
    timed_out |= child_timed_out;
    let received = sum(&|r| r.received);
    let measure_start = results
        .iter()
        .map(|r| r.measure_start_ns)
        .filter(|t| *t > 0)
        .min()
        .unwrap_or(go_ns);
    let measure_end = results
        .iter()
        .map(|r| r.measure_end_ns)
        .max()
        .unwrap_or(end_ns);
    let measured_s = (measure_end.saturating_sub(measure_start)) as f64 / 1e9;

    let mut out = serde_json::Map::new();
    out.insert("scenario".into(), json!(scenario));
    out.insert("target".into(), json!(plan.url));
    out.insert("procs".into(), json!(plan.procs));
    out.insert("source_ips".into(), json!(plan.source_ips.len()));
    let mut messages_for_cpu = 0u64;
    match &cli.cmd {
        Cmd::Floor { .. } | Cmd::Backend { .. } | Cmd::Scale { .. } => {}
        Cmd::Actions {
            size,
            in_flight,
            code,
            ..
        } => {
            let sent = sum(&|r| r.sent);
            let answered = sum(&|r| r.answered);
            let action_errors: u64 = errors
                .iter()
                .filter(|(k, _)| k.starts_with("upstream_") || k.starts_with("action_error"))
                .map(|(_, v)| v)
                .sum();
            out.insert("conns".into(), json!(plan.conns));
            out.insert("connected".into(), json!(opened));
            out.insert("size".into(), json!(size));
            out.insert("in_flight".into(), json!(in_flight));
            out.insert("code".into(), json!(code));
            out.insert("duration_s".into(), json!(round3(measured_s)));
            out.insert("sent".into(), json!(sent));
            out.insert("answered".into(), json!(answered));
            out.insert("actions".into(), json!(received));
            out.insert("actions_per_s".into(), json!(rate(received, measured_s)));
            out.insert("latency_us".into(), json!(percentiles(&lat)));
            out.insert("action_errors".into(), json!(action_errors));
            out.insert(
                "upstream_502".into(),
                json!(errors.get("upstream_502").copied().unwrap_or(0)),
            );
            out.insert(
                "upstream_504".into(),
                json!(errors.get("upstream_504").copied().unwrap_or(0)),
            );
            out.insert("missing".into(), json!(sum(&|r| r.missing)));
            out.insert("duplicates".into(), json!(sum(&|r| r.duplicates)));
            out.insert("out_of_order".into(), json!(sum(&|r| r.out_of_order)));
            out.insert("closed_during".into(), json!(sum(&|r| r.closed_during)));
            messages_for_cpu = received;
        }
        Cmd::Idle { hold, .. } => {
            out.insert("conns".into(), json!(plan.conns));
            out.insert("connected".into(), json!(opened));
            out.insert("connect_failed".into(), json!(plan.conns as u64 - opened));
            out.insert("connect_s".into(), json!(round3(connect_s)));
            out.insert("handshakes_per_s".into(), json!(rate(opened, connect_s)));
            out.insert("hold_s".into(), json!(hold.as_secs_f64()));
            out.insert(
                "closed_during_hold".into(),
                json!(sum(&|r| r.closed_during)),
            );
            // Growth per opened connection, rounded to the byte.
            let per_conn = |before: u64, after: u64| {
                if opened > 0 {
                    ((after as f64 - before as f64) / opened as f64).round()
                } else {
                    0.0
                }
            };
            if let (Some(b), Some(a)) = (rss_before, rss_after) {
                out.insert("server_rss_before_bytes".into(), json!(b));
                out.insert("server_rss_after_bytes".into(), json!(a));
                out.insert("server_bytes_per_conn".into(), json!(per_conn(b, a)));
            }
            if let (Some(b), Some(a)) = (tcp_before, tcp_after) {
                out.insert("tcp_mem_before_bytes".into(), json!(b));
                out.insert("tcp_mem_after_bytes".into(), json!(a));
                out.insert("tcp_mem_per_conn".into(), json!(per_conn(b, a)));
            }
        }
        Cmd::Echo {
            size,
            inflight,
            payload,
            ..
        } => {
            out.insert("conns".into(), json!(plan.conns));
            out.insert("connected".into(), json!(opened));
            out.insert("size".into(), json!(size));
            out.insert("payload".into(), json!(payload));
            out.insert("inflight".into(), json!(inflight));
            out.insert("duration_s".into(), json!(round3(measured_s)));
            out.insert("messages".into(), json!(received));
            out.insert("msgs_per_s".into(), json!(rate(received, measured_s)));
            out.insert("latency_us".into(), json!(percentiles(&lat)));
            out.insert("closed_during".into(), json!(sum(&|r| r.closed_during)));
            messages_for_cpu = received;
        }
        Cmd::Fanout { pubsub, .. } | Cmd::Slow { pubsub, .. } => {
            let p = pub_report.clone().unwrap_or_default();
            let subs = sum(&|r| r.subscribers);
            out.insert("subscribers".into(), json!(subs));
            out.insert("connect_failed".into(), json!(plan.conns as u64 - opened));
            out.insert(
                "channel".into(),
                json!(if pubsub.sub_url.is_some() {
                    Value::Null
                } else {
                    json!(pubsub.channel)
                }),
            );
            out.insert(
                "publish_via".into(),
                json!(if pubsub.pub_ws.is_some() { "ws" } else { "api" }),
            );
            out.insert("rate".into(), json!(pubsub.rate));
            out.insert("api_pipeline".into(), json!(pubsub.api_pipeline));
            out.insert("size".into(), json!(pubsub.size));
            out.insert("payload".into(), json!(pubsub.payload));
            out.insert("published".into(), json!(p.published));
            out.insert("publish_errors".into(), json!(p.errors));
            if let Some(e) = &p.first_error {
                out.insert("publish_first_error".into(), json!(e));
            }
            out.insert("publish_failed".into(), json!(p.failed));
            out.insert("publish_retries".into(), json!(p.retries));
            if let Some(e) = &p.first_failure {
                out.insert("publish_first_failure".into(), json!(e));
            }
            let publish_s = p.last_ns.saturating_sub(p.first_ns) as f64 / 1e9;
            out.insert("publish_s".into(), json!(round3(publish_s)));
            if pubsub.pub_ws.is_none() {
                out.insert("api_delivered".into(), json!(p.api_delivered));
            }
            let last = results.iter().map(|r| r.last_recv_ns).max().unwrap_or(0);
            let span = last.saturating_sub(p.first_ns) as f64 / 1e9;
            out.insert("expected".into(), json!(subs * p.published));
            out.insert("deliveries".into(), json!(received));
            out.insert("deliveries_per_s".into(), json!(rate(received, span)));
            out.insert("delivery_span_s".into(), json!(round3(span)));
            out.insert("latency_us".into(), json!(percentiles(&lat)));
            out.insert("missing".into(), json!(sum(&|r| r.missing)));
            out.insert("duplicates".into(), json!(sum(&|r| r.duplicates)));
            out.insert("out_of_order".into(), json!(sum(&|r| r.out_of_order)));
            out.insert("out_of_range".into(), json!(sum(&|r| r.out_of_range)));
            out.insert("closed_during".into(), json!(sum(&|r| r.closed_during)));
            if let Cmd::Fanout {
                reconnect_every: Some(every),
                ..
            } = &cli.cmd
            {
                out.insert("reconnect_every_s".into(), json!(every.as_secs_f64()));
                out.insert("drops_rst".into(), json!(sum(&|r| r.drops_rst)));
                out.insert("drops_fin".into(), json!(sum(&|r| r.drops_fin)));
                out.insert("reconnects".into(), json!(sum(&|r| r.reconnects)));
                out.insert("recovered".into(), json!(sum(&|r| r.recovered)));
                out.insert("not_recovered".into(), json!(sum(&|r| r.not_recovered)));
                out.insert("written_off".into(), json!(sum(&|r| r.written_off)));
                out.insert("replayed".into(), json!(sum(&|r| r.replayed)));
            }
            messages_for_cpu = received;
            if plan.kind == ScenarioKind::Slow {
                out.insert("stopped".into(), json!(sum(&|r| r.stopped)));
                let closed = sum(&|r| {
                    r.stopped_close_1008 + r.stopped_close_other + r.stopped_eof + r.stopped_reset
                });
                out.insert("stopped_closed".into(), json!(closed));
                out.insert(
                    "stopped_close_1008".into(),
                    json!(sum(&|r| r.stopped_close_1008)),
                );
                out.insert(
                    "stopped_close_other".into(),
                    json!(sum(&|r| r.stopped_close_other)),
                );
                out.insert("stopped_eof".into(), json!(sum(&|r| r.stopped_eof)));
                out.insert("stopped_reset".into(), json!(sum(&|r| r.stopped_reset)));
                out.insert(
                    "stopped_not_closed".into(),
                    json!(sum(&|r| r.stopped_not_closed)),
                );
                out.insert("stopped_msgs_read".into(), json!(sum(&|r| r.stopped_msgs)));
            }
            if let Cmd::Fanout {
                svg: Some(path),
                svg_title,
                ..
            } = &cli.cmd
            {
                let chart = svg_chart(
                    svg_title,
                    &[(format!("{scenario} {}", plan.url), curve(&lat))],
                );
                std::fs::write(path, chart)
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
            }
            out.insert("latency_curve".into(), json!(curve(&lat)));
        }
        Cmd::Churn { rate: r, .. } => {
            let handshakes = sum(&|r| r.handshakes);
            out.insert("target_rate".into(), json!(r));
            out.insert("duration_s".into(), json!(round3(measured_s)));
            out.insert("attempted".into(), json!(sum(&|r| r.attempted)));
            out.insert("handshakes".into(), json!(handshakes));
            out.insert(
                "handshakes_per_s".into(),
                json!(rate(handshakes, measured_s)),
            );
            out.insert("closes_ok".into(), json!(sum(&|r| r.closes_ok)));
            out.insert("failed".into(), json!(sum(&|r| r.failed)));
            messages_for_cpu = handshakes;
        }
    }
    out.insert("deflate".into(), json!(c.deflate));
    out.insert("deflate_conns".into(), json!(sum(&|r| r.deflate_conns)));
    if plan.kind != ScenarioKind::Churn {
        let wire = sum(&|r| r.wire_bytes_in);
        let msgs = if plan.kind == ScenarioKind::Idle {
            0
        } else {
            received
        };
        out.insert("wire_bytes_in".into(), json!(wire));
        out.insert("inflated_msgs".into(), json!(sum(&|r| r.inflated)));
        if msgs > 0 {
            let per = |bytes: u64| (bytes as f64 / msgs as f64 * 10.0).round() / 10.0;
            out.insert("wire_bytes_per_msg".into(), json!(per(wire)));
            out.insert(
                "payload_bytes_per_msg".into(),
                json!(per(sum(&|r| r.received_bytes))),
            );
        }
    }
    out.insert("handshake_us".into(), json!(percentiles(&hs)));
    out.insert("errors".into(), json!(errors));
    if let Some(pid) = pid {
        let mut server = serde_json::Map::new();
        server.insert("pid".into(), json!(pid));
        if let (Some(a), Some(b)) = (cpu_start, cpu_end) {
            let cpu = b - a;
            server.insert("cpu_s".into(), json!(round3(cpu)));
            server.insert(
                "measured_s".into(),
                json!(round3((end_ns - go_ns) as f64 / 1e9)),
            );
            if messages_for_cpu > 0 {
                server.insert(
                    "cpu_us_per_msg".into(),
                    json!(round3(cpu * 1e6 / messages_for_cpu as f64)),
                );
            }
        }
        if let Some((rss, hwm)) = rss_end {
            server.insert("rss_bytes".into(), json!(rss));
            server.insert("hwm_bytes".into(), json!(hwm));
        }
        if let Some(s) = &sampler {
            server.insert(
                "rss_peak_bytes".into(),
                json!(s.peak.load(Ordering::Relaxed)),
            );
        }
        out.insert("server".into(), Value::Object(server));
    }
    if let Cmd::Actions {
        conns,
        size,
        in_flight,
        code,
        duration,
        drain_timeout,
        direct: Some(url),
    } = &cli.cmd
    {
        let opts = DirectOptions {
            url: url.clone(),
            conns: *conns,
            in_flight: *in_flight as usize,
            size: *size,
            code: *code,
            duration: *duration,
            drain_timeout: *drain_timeout,
            spin: !c.no_spin,
        };
        let d = direct::run(&opts)?;
        let through = percentiles(&lat);
        out.insert("direct".into(), direct_report(&d));
        out.insert(
            "added_latency_us".into(),
            added_latency(&through, &percentiles(&d.latency)),
        );
    }
    out.insert(
        "nodes".into(),
        node_entries(
            &plan,
            &results,
            &lat,
            &api_urls,
            pub_report.as_ref().map(|p| p.nodes.as_slice()),
        ),
    );
    out.insert("timed_out".into(), json!(timed_out));
    if missing_children > 0 {
        out.insert("children_failed".into(), json!(missing_children));
    }
    let report = Value::Object(out);
    if c.json {
        eprint!("{}", table(&report));
        println!("{report}");
    } else {
        print!("{}", table(&report));
    }
    Ok(if timed_out || missing_children > 0 {
        2
    } else {
        0
    })
}

/// The per-node section of the report: one entry per node, entry i being the i-th of `--url`
/// and the i-th of `--api` (fanout and slow publishing through the API: as many entries as the
/// longer list). Connection figures for the URL nodes, the publisher's for the API nodes;
/// `latency_us` (p50, p99) where the scenario measures latency. With one node its latency is
/// the totals' (`total_latency`).
fn node_entries(
    plan: &Plan,
    results: &[ChildResult],
    total_latency: &hdrhistogram::Histogram<u64>,
    api_urls: &[String],
    published: Option<&[publish::NodePublish]>,
) -> Value {
    let with_latency = matches!(
        plan.kind,
        ScenarioKind::Echo | ScenarioKind::Fanout | ScenarioKind::Slow | ScenarioKind::Actions
    );
    let api_nodes = if published.is_some() {
        api_urls.len()
    } else {
        0
    };
    let count = plan.nodes.len().max(api_nodes);
    let entries = (0..count).map(|i| {
        let mut e = serde_json::Map::new();
        if let Some((url, _)) = plan.nodes.get(i) {
            e.insert("url".into(), json!(url));
            let of = |f: &dyn Fn(&crate::child::NodeResult) -> u64| {
                results
                    .iter()
                    .filter_map(|r| r.nodes.get(i))
                    .map(f)
                    .sum::<u64>()
            };
            if plan.kind == ScenarioKind::Churn {
                e.insert("handshakes".into(), json!(of(&|n| n.handshakes)));
            } else {
                e.insert("connections_opened".into(), json!(of(&|n| n.opened)));
            }
            e.insert("handshake_failures".into(), json!(of(&|n| n.failed)));
            match plan.kind {
                ScenarioKind::Echo => {
                    e.insert("messages".into(), json!(of(&|n| n.received)));
                }
                ScenarioKind::Actions => {
                    e.insert("actions".into(), json!(of(&|n| n.received)));
                }
                ScenarioKind::Fanout | ScenarioKind::Slow => {
                    e.insert("deliveries".into(), json!(of(&|n| n.received)));
                }
                _ => {}
            }
            if with_latency {
                let p = if plan.nodes.len() == 1 {
                    percentiles(total_latency)
                } else {
                    let mut h = new_hist();
                    for r in results {
                        if let Some(n) = r.nodes.get(i) {
                            merge_data(&mut h, &n.latency);
                        }
                    }
                    percentiles(&h)
                };
                e.insert("latency_us".into(), json!({"p50": p.p50, "p99": p.p99}));
            }
        }
        if let (Some(url), Some(nodes)) = (api_urls.get(i), published) {
            let n = nodes.get(i).cloned().unwrap_or_default();
            e.insert("api".into(), json!(url));
            e.insert("publishes_sent".into(), json!(n.sent));
            e.insert("publish_failed".into(), json!(n.failed));
            e.insert("publish_retries".into(), json!(n.retries));
            e.insert("published".into(), json!(n.published));
        }
        Value::Object(e)
    });
    Value::Array(entries.collect())
}

/// The `direct` object of an actions report: the same load straight at the backend.
fn direct_report(d: &direct::DirectReport) -> Value {
    json!({
        "connected": d.connected,
        "sent": d.sent,
        "answered": d.answered,
        "actions": d.received,
        "actions_per_s": rate(d.received, d.measured_s),
        "latency_us": percentiles(&d.latency),
        "missing": d.missing,
        "duplicates": d.duplicates,
        "out_of_order": d.out_of_order,
        "errors": d.errors,
    })
}

/// What going through edgepush adds to a direct call, from the two latency distributions
/// (µs): the differences of p50, p99 and max, and the ratios of p50 and p99.
fn added_latency(through: &Percentiles, direct: &Percentiles) -> Value {
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            (a / b * 100.0).round() / 100.0
        } else {
            0.0
        }
    };
    json!({
        "p50": round3(through.p50 - direct.p50),
        "p99": round3(through.p99 - direct.p99),
        "max": round3(through.max - direct.max),
        "p50_ratio": ratio(through.p50, direct.p50),
        "p99_ratio": ratio(through.p99, direct.p99),
    })
}

/// The children's histograms and error counts, merged.
struct Merged {
    hs: hdrhistogram::Histogram<u64>,
    lat: hdrhistogram::Histogram<u64>,
    errors: BTreeMap<String, u64>,
    timed_out: bool,
}

fn merge(results: &[ChildResult]) -> Merged {
    let mut m = Merged {
        hs: new_hist(),
        lat: new_hist(),
        errors: BTreeMap::new(),
        timed_out: false,
    };
    for r in results {
        merge_data(&mut m.hs, &r.handshake);
        merge_data(&mut m.lat, &r.latency);
        for (k, v) in &r.errors {
            *m.errors.entry(k.clone()).or_insert(0) += v;
        }
        m.timed_out |= r.timed_out;
    }
    m
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        (n as f64 / secs).round()
    } else {
        0.0
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Why nothing connected, in words.
/// What the opening phase gave: the connections opened, and seconds from the first connect to
/// the last upgrade (and subscribe).
pub(crate) struct Opening {
    pub opened: u64,
    pub connect_s: f64,
}

/// Waits until every child reported its connections ready, or `deadline` (ns, `now_ns`),
/// showing progress on `ui`. Kills the children and fails if the deadline passed, or if none
/// opened while `need_open` (with [`diagnose`]'s reason).
pub(crate) fn open_phase(
    children: &mut Children,
    ui: &mut Progress,
    plan: &Plan,
    deadline: u64,
    need_open: bool,
) -> Result<Opening, String> {
    let mut timed_out = false;
    while !children.all_ready() {
        children.pump(Duration::from_millis(100));
        let [o, r, e] = children.totals();
        ui.update(
            "connecting",
            o,
            plan.conns as u64,
            &format!("recv {r}  errors {e}"),
        );
        if now_ns() >= deadline {
            timed_out = true;
            break;
        }
    }
    let ready: Vec<ReadyInfo> = children.ready.iter().flatten().cloned().collect();
    let opened: u64 = ready.iter().map(|r| r.opened).sum();
    let mut connect_errors: BTreeMap<String, u64> = BTreeMap::new();
    for r in &ready {
        for (k, v) in &r.errors {
            *connect_errors.entry(k.clone()).or_insert(0) += v;
        }
    }
    if timed_out || (need_open && opened == 0) {
        children.kill_all();
        children.reap();
        ui.finish();
        if timed_out {
            return Err(format!(
                "--timeout reached while connecting ({opened} open)"
            ));
        }
        return Err(diagnose(plan, &connect_errors));
    }
    let first_start = ready
        .iter()
        .map(|r| r.first_start_ns)
        .filter(|t| *t > 0)
        .min();
    let last_done = ready.iter().map(|r| r.last_done_ns).max();
    let connect_s = match (first_start, last_done) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
        _ => 0.0,
    };
    Ok(Opening { opened, connect_s })
}

pub(crate) fn diagnose(plan: &Plan, errors: &BTreeMap<String, u64>) -> String {
    let top = errors
        .iter()
        .max_by_key(|(_, v)| **v)
        .map(|(k, _)| k.as_str());
    match top {
        Some("connect_refused") => format!(
            "server unreachable: connection refused at {} ({}); is the server running?",
            plan.nodes.iter().map(|(_, t)| t.addr.to_string()).collect::<Vec<_>>().join(", "),
            plan.url
        ),
        Some(k) if k.starts_with("upgrade_status_") => format!(
            "upgrade refused: the server answered HTTP {} to GET {} ({})",
            &k["upgrade_status_".len()..],
            plan.nodes.first().map_or("/", |(_, t)| t.path.as_str()),
            plan.url
        ),
        Some("too_many_open_files") => "open-files limit reached (EMFILE): use more --procs or raise the hard limit (ulimit -Hn)".into(),
        Some("no_ephemeral_port") => "out of ephemeral ports (EADDRNOTAVAIL): use more --source-ips".into(),
        Some(k) => format!("no connection could be opened to {}: {k} ({errors:?})", plan.url),
        None => format!("no connection could be opened to {}", plan.url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::hist_to_data;

    #[test]
    fn child_results_merge() {
        let mut results = Vec::new();
        for i in 0..3u64 {
            let mut lat = new_hist();
            for v in 1..=100 {
                lat.record(v * 1000 * (i + 1)).unwrap();
            }
            let mut r = ChildResult {
                index: i as usize,
                latency: hist_to_data(&lat),
                timed_out: i == 2,
                ..ChildResult::default()
            };
            r.errors.insert("reset".into(), i);
            r.errors.insert(format!("only_{i}"), 1);
            // Through the RESULT line, as from a child.
            let line = serde_json::to_string(&r).unwrap();
            results.push(serde_json::from_str::<ChildResult>(&line).unwrap());
        }
        let m = merge(&results);
        assert_eq!(m.lat.len(), 300);
        assert!(m.hs.is_empty());
        assert_eq!(m.lat.max(), m.lat.highest_equivalent(300_000));
        assert_eq!(m.lat.min(), m.lat.lowest_equivalent(1000));
        let mut direct = new_hist();
        for i in 0..3u64 {
            for v in 1..=100 {
                direct.record(v * 1000 * (i + 1)).unwrap();
            }
        }
        for q in [0.1, 1.0 / 3.0, 0.5, 0.9, 0.99] {
            assert_eq!(
                m.lat.value_at_quantile(q),
                direct.value_at_quantile(q),
                "q {q}"
            );
        }
        assert_eq!(m.errors["reset"], 3);
        assert_eq!(m.errors.len(), 4);
        assert!(m.timed_out);
        assert!(!merge(&[]).timed_out);
    }

    #[test]
    fn refuses_non_loopback_before_anything() {
        let cli = <Cli as clap::Parser>::try_parse_from([
            "edgepush-load",
            "idle",
            "--url",
            "ws://192.168.1.1:8080/ws",
        ])
        .unwrap();
        let err = run(cli).unwrap_err();
        assert!(err.contains("not a loopback"), "{err}");
        let cli = <Cli as clap::Parser>::try_parse_from([
            "edgepush-load",
            "fanout",
            "--api",
            "http://8.8.8.8:8081",
        ])
        .unwrap();
        assert!(run(cli).unwrap_err().contains("not a loopback"));
    }

    #[test]
    fn reconnect_every_needs_the_subscribe_op_and_the_api() {
        for extra in [
            &["--pub-ws", "ws://127.0.0.1:9/pub"][..],
            &["--sub-url", "ws://127.0.0.1:9/sub"][..],
        ] {
            let args = ["edgepush-load", "fanout", "--reconnect-every", "1s"];
            let cli = <Cli as clap::Parser>::try_parse_from(args.iter().chain(extra)).unwrap();
            assert!(
                run(cli).unwrap_err().contains("--reconnect-every"),
                "{extra:?}"
            );
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "edgepush-load",
            "fanout",
            "--reconnect-every",
            "0s",
        ])
        .unwrap();
        assert!(run(cli).unwrap_err().contains("more than 0"));
        let cli = <Cli as clap::Parser>::try_parse_from([
            "edgepush-load",
            "fanout",
            "--reconnect-every",
            "250ms",
        ])
        .unwrap();
        assert!(matches!(
            cli.cmd,
            Cmd::Fanout {
                reconnect_every: Some(d),
                ..
            } if d == Duration::from_millis(250)
        ));
    }
}
