//! The parent side of `scale`: opens the connections through the children, samples the
//! servers (RSS, CPU, descriptors from `/proc`) at start, once all are open, every second and
//! at the end, drives the publishers at the three rates for `--duration`, writes the tops file
//! and says `END`, merges the children's per-second lines into the timeline and their results
//! into the report (stderr table; one JSON line on stdout with `--json`), and draws the chart.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use super::publisher::{Counters, Job, Publishers};
use super::{ScaleResult, ScaleSpec, SecondLine, KINDS};
use crate::child::{ChildResult, ChildSpec};
use crate::cli::{parse_urls, Common, ScaleArgs};
use crate::engine::SECOND;
use crate::parent::{open_phase, spawn, Opening, Plan};
use crate::report::{svg_timeseries, table, Progress};
use crate::stats::{merge_data, new_hist, percentiles, HIST_MAX_NS};
use crate::sys::{cpu_seconds, fd_count, now_ns, rss_bytes};

/// Seconds after which the RSS slope is measured (warm-up), at most a fifth of the run.
const WARMUP_S: u64 = 60;

/// Checks the flags that clap cannot.
pub fn check_args(args: &ScaleArgs, _common: &Common) -> Result<(), String> {
    if args.conns == 0 {
        return Err("-n must be at least 1".into());
    }
    if !(0.0..=0.5).contains(&args.drop_rate) {
        return Err("--drop-rate must be between 0 and 0.5".into());
    }
    for (name, r) in [
        ("--allhands-rate", args.allhands_rate),
        ("--room-rate", args.room_rate),
        ("--user-rate", args.user_rate),
    ] {
        if !r.is_finite() || r < 0.0 {
            return Err(format!("{name} must be 0 or more"));
        }
    }
    Ok(())
}

/// The scale part of every child's spec; `start` makes the tops file's name unique.
pub fn child_spec(args: &ScaleArgs, start: u64) -> ScaleSpec {
    ScaleSpec {
        rooms: args.rooms,
        drop_rate: args.drop_rate,
        settle_ns: args.settle.as_nanos() as u64,
        read_batch_ns: args.read_batch.as_nanos() as u64,
        tops_path: std::env::temp_dir().join(format!(
            "edgepush-load-tops-{}-{start}.txt",
            std::process::id()
        )),
    }
}

/// One process's figures at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rss: Option<u64>,
    cpu: Option<f64>,
    fds: Option<u64>,
}

fn sample(pid: Option<u32>) -> Sample {
    match pid {
        Some(pid) => Sample {
            rss: rss_bytes(pid).map(|r| r.0),
            cpu: cpu_seconds(pid),
            fds: fd_count(pid),
        },
        None => Sample::default(),
    }
}

/// One second of the timeline, merged over the children.
struct Second {
    deliveries: [u64; 3],
    latency: [Histogram<u64>; 3],
    open: u64,
    reconnects: u64,
    recovered_false: u64,
    drops: u64,
    /// The parent's samples taken in this second: servers, redis, publish counters.
    servers: Vec<Sample>,
    redis: Sample,
    acked: u64,
    retries: u64,
    sampled: bool,
}

impl Second {
    fn new() -> Second {
        let h = || Histogram::new_with_bounds(1, HIST_MAX_NS, 2).unwrap_or_else(|_| new_hist());
        Second {
            deliveries: [0; 3],
            latency: [h(), h(), h()],
            open: 0,
            reconnects: 0,
            recovered_false: 0,
            drops: 0,
            servers: Vec::new(),
            redis: Sample::default(),
            acked: 0,
            retries: 0,
            sampled: false,
        }
    }
}

/// The timeline: seconds merged from the children's `T` lines and the parent's samples,
/// written out as they complete.
struct Timeline {
    seconds: BTreeMap<u64, Second>,
    out: Option<std::fs::File>,
    /// Seconds already written (and kept for the report: totals, p99, chart points).
    written: u64,
    /// Per second written: total deliveries and all-hands p99 (ms).
    points: Vec<(u64, u64, Option<f64>)>,
    /// Cumulative publish counters at the last sample (for the per-second deltas).
    last_acked: u64,
    last_retries: u64,
}

impl Timeline {
    fn add(&mut self, line: SecondLine) {
        let s = self.seconds.entry(line.s).or_insert_with(Second::new);
        for k in 0..3 {
            s.deliveries[k] += line.deliveries[k];
            merge_data(&mut s.latency[k], &line.latency[k]);
        }
        s.open += line.open;
        s.reconnects += line.reconnects;
        s.recovered_false += line.recovered_false;
        s.drops += line.drops;
    }

    fn sample(&mut self, sec: u64, servers: Vec<Sample>, redis: Sample, counters: &Counters) {
        let s = self.seconds.entry(sec).or_insert_with(Second::new);
        let acked = Counters::total(&counters.acked);
        let retries = Counters::total(&counters.retries);
        s.acked = acked.saturating_sub(self.last_acked);
        s.retries = retries.saturating_sub(self.last_retries);
        self.last_acked = acked;
        self.last_retries = retries;
        s.servers = servers;
        s.redis = redis;
        s.sampled = true;
    }

    /// Writes every second before `until`.
    fn flush(&mut self, until: u64) {
        while let Some((&sec, _)) = self.seconds.first_key_value() {
            if sec >= until {
                break;
            }
            let Some(s) = self.seconds.remove(&sec) else {
                break;
            };
            let ms = |h: &Histogram<u64>, q: f64| {
                (!h.is_empty()).then(|| (h.value_at_quantile(q) as f64 / 1e4).round() / 100.0)
            };
            let per_kind = |f: &dyn Fn(usize) -> Value| {
                let mut m = Map::new();
                for (k, name) in KINDS.iter().enumerate() {
                    m.insert((*name).into(), f(k));
                }
                Value::Object(m)
            };
            let total: u64 = s.deliveries.iter().sum();
            let line = json!({
                "t": sec,
                "deliveries": total,
                "deliveries_by_kind": per_kind(&|k| json!(s.deliveries[k])),
                "p50_ms": per_kind(&|k| json!(ms(&s.latency[k], 0.5))),
                "p99_ms": per_kind(&|k| json!(ms(&s.latency[k], 0.99))),
                "open": s.open,
                "reconnects": s.reconnects,
                "recovered_false": s.recovered_false,
                "drops": s.drops,
                "published": s.acked,
                "publish_retries": s.retries,
                "servers": s.servers.iter().map(|x| json!({"rss_bytes": x.rss, "cpu_s": x.cpu})).collect::<Vec<_>>(),
                "redis_rss_bytes": s.redis.rss,
                "redis_cpu_s": s.redis.cpu,
            });
            if let Some(f) = self.out.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            self.points.push((sec, total, ms(&s.latency[0], 0.99)));
            self.written = sec + 1;
        }
    }
}

/// Everything the run sampled from the servers and Redis.
struct Samples {
    start: Vec<Sample>,
    open: Vec<Sample>,
    go: Vec<Sample>,
    end: Vec<Sample>,
    /// Per process, `(second, rss)` of every per-second sample.
    series: Vec<Vec<(u64, u64)>>,
}

/// Runs `scale` with the children of `specs`; returns the exit code.
pub fn execute(
    cli: &crate::cli::Cli,
    args: &ScaleArgs,
    plan: &Plan,
    specs: &[ChildSpec],
    deadline: u64,
) -> Result<i32, String> {
    let c = &cli.common;
    let apis = parse_urls(&c.api, "http")?;
    let k = plan.nodes.len();
    if !args.server_pids.is_empty() && args.server_pids.len() != k {
        return Err(format!(
            "--server-pids has {} pids for {k} --url nodes (one per node, in order)",
            args.server_pids.len()
        ));
    }
    // The processes sampled: the nodes in order, then Redis.
    let pids: Vec<Option<u32>> = args
        .server_pids
        .iter()
        .map(|p| Some(*p))
        .chain([args.redis_pid])
        .collect();
    let sample_all = || pids.iter().map(|p| sample(*p)).collect::<Vec<_>>();
    let start_samples = sample_all();
    let tops_path = specs
        .first()
        .and_then(|s| s.scale.as_ref())
        .map(|s| s.tops_path.clone())
        .unwrap_or_else(|| PathBuf::from("/dev/null"));

    let mut children = spawn(specs)?;
    let mut ui = Progress::new(plan.conns as u64);
    let Opening { opened, connect_s } = open_phase(&mut children, &mut ui, plan, deadline, true)?;
    // Set if a later phase runs out of time (opening in time is checked above).
    let mut timed_out = false;
    std::thread::sleep(Duration::from_millis(500));
    let open_samples = sample_all();

    // The load.
    let user_template = user_template(&plan.nodes[0].0);
    let publishers = Publishers::start(
        apis.iter().map(|(_, t)| t.clone()).collect(),
        c.api_key.as_deref(),
        args.size,
        &user_template,
    );
    let mut timeline = Timeline {
        seconds: BTreeMap::new(),
        out: match &args.timeline {
            Some(p) => Some(
                std::fs::File::create(p).map_err(|e| format!("--timeline {}: {e}", p.display()))?,
            ),
            None => None,
        },
        written: 0,
        points: Vec::new(),
        last_acked: 0,
        last_retries: 0,
    };
    let mut series: Vec<Vec<(u64, u64)>> = vec![Vec::new(); pids.len()];
    let go_samples = sample_all();
    let go = now_ns();
    children.send_all("GO");
    let load_end = go.saturating_add(args.duration.as_nanos() as u64);
    let rates = [args.allhands_rate, args.room_rate, args.user_rate];
    let mut issued = [0u64; 3];
    let mut number = 0u64;
    let mut rng = go | 1;
    let mut next_sample = go + SECOND;
    let mut sample_tick = |timeline: &mut Timeline, counters: &Counters, now: u64| {
        let sec = (now - go) / SECOND;
        let now_samples = sample_all();
        for (i, s) in now_samples.iter().enumerate() {
            if let Some(rss) = s.rss {
                series[i].push((sec, rss));
            }
        }
        let redis = now_samples.last().copied().unwrap_or_default();
        let servers = now_samples[..now_samples.len() - 1].to_vec();
        timeline.sample(sec.saturating_sub(1), servers, redis, counters);
        timeline.flush(sec.saturating_sub(3));
    };
    loop {
        let now = now_ns();
        if now >= load_end || now >= deadline {
            break;
        }
        let elapsed = (now - go) as f64 / 1e9;
        for kind in 0..3 {
            let due = (elapsed * rates[kind]).floor() as u64 + u64::from(rates[kind] > 0.0);
            while issued[kind] < due {
                issued[kind] += 1;
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let target = match kind {
                    1 => rng % args.rooms.max(1),
                    2 => rng % plan.conns as u64,
                    _ => 0,
                };
                publishers.push(Job {
                    kind,
                    target,
                    number,
                });
                number += 1;
            }
        }
        children.pump(Duration::from_millis(5));
        for (_, line) in children.seconds.drain(..) {
            timeline.add(line);
        }
        if now >= next_sample {
            next_sample += SECOND;
            sample_tick(&mut timeline, publishers.counters(), now);
            let open: u64 = timeline.seconds.values().map(|s| s.open).max().unwrap_or(0);
            let [_, r, e] = children.totals();
            ui.update(
                "load",
                open.min(plan.conns as u64),
                plan.conns as u64,
                &format!(
                    "published {}  queued {}  deliveries {r}  errors {e}",
                    Counters::total(&publishers.counters().acked),
                    publishers.queued()
                ),
            );
        }
    }
    let publish_end = now_ns();
    let counters_view = |c: &Counters| {
        let get = |a: &[std::sync::atomic::AtomicU64; 3], k: usize| {
            a[k].load(std::sync::atomic::Ordering::Relaxed)
        };
        let mut by_kind = Map::new();
        for (k, name) in KINDS.iter().enumerate() {
            by_kind.insert(
                (*name).into(),
                json!({"acked": get(&c.acked, k), "failed": get(&c.failed, k),
                       "retries": get(&c.retries, k), "given_up": get(&c.given_up, k)}),
            );
        }
        (
            Value::Object(by_kind),
            [
                Counters::total(&c.acked),
                Counters::total(&c.failed),
                Counters::total(&c.retries),
                Counters::total(&c.given_up),
                c.node_skips.load(std::sync::atomic::Ordering::Relaxed),
            ],
        )
    };
    // Wait for the jobs in hand (their retries included), bounded.
    let finishing = std::thread::scope(|scope| {
        let h = scope.spawn(move || publishers.finish(args.settle.max(Duration::from_secs(10))));
        while !h.is_finished() {
            children.pump(Duration::from_millis(50));
        }
        h.join()
    });
    let (tops, publish_by_kind, publish_totals) = match finishing {
        Ok((tops, counters)) => {
            let (v, t) = counters_view(&counters);
            (tops, v, t)
        }
        Err(_) => return Err("the publishers panicked".into()),
    };
    if let Err(e) = std::fs::write(&tops_path, tops.to_file_text()) {
        children.kill_all();
        children.reap();
        return Err(format!("cannot write {}: {e}", tops_path.display()));
    }
    children.send_all(&format!("END {}", publish_totals[0]));
    let settle_start = now_ns();
    let settle_limit = settle_start + args.settle.as_nanos() as u64 + 10 * SECOND;
    let idle = Counters::default();
    while !children.all_done() {
        children.pump(Duration::from_millis(50));
        for (_, line) in children.seconds.drain(..) {
            timeline.add(line);
        }
        let now = now_ns();
        if now >= next_sample {
            next_sample += SECOND;
            sample_tick(&mut timeline, &idle, now);
        }
        if now >= settle_limit || now >= deadline.saturating_add(2 * SECOND) {
            timed_out = true;
            children.kill_all();
            break;
        }
    }
    let end_samples = sample_all();
    children.reap();
    ui.finish();
    for (_, line) in children.seconds.drain(..) {
        timeline.add(line);
    }
    timeline.flush(u64::MAX);
    let _ = std::fs::remove_file(&tops_path);

    let results: Vec<ChildResult> = children.results.iter().flatten().cloned().collect();
    timed_out |= results.len() < specs.len() || results.iter().any(|r| r.timed_out);
    let samples = Samples {
        start: start_samples,
        open: open_samples,
        go: go_samples,
        end: end_samples,
        series,
    };
    let report = build_report(&Inputs {
        cli,
        view: args,
        plan,
        apis: &apis.iter().map(|(u, _)| u.clone()).collect::<Vec<_>>(),
        results: &results,
        samples: &samples,
        timeline: &timeline,
        connect_s,
        opened,
        load_s: (publish_end - go) as f64 / 1e9,
        settle_s: (now_ns() - settle_start) as f64 / 1e9,
        publish_by_kind,
        publish_totals,
        timed_out,
    });
    eprint!("{}", table(&report));
    if c.json {
        println!("{report}");
    }
    if let Some(path) = &args.svg {
        let deliveries: Vec<[f64; 2]> = timeline
            .points
            .iter()
            .map(|&(s, d, _)| [s as f64, d as f64])
            .collect();
        let p99: Vec<[f64; 2]> = timeline
            .points
            .iter()
            .filter_map(|&(s, _, p)| p.map(|p| [s as f64, p]))
            .collect();
        let svg = svg_timeseries(
            &args.svg_title,
            &[
                ("deliveries/s".into(), deliveries),
                ("all-hands p99 (ms)".into(), p99),
            ],
        );
        std::fs::write(path, svg).map_err(|e| format!("--svg {}: {e}", path.display()))?;
    }
    Ok(if timed_out { 2 } else { 0 })
}

/// The user name of connection `{n}` as the first `--url` names it (`user=…` in its query),
/// with `{n}` left in; `scale-{n}` if it names none.
fn user_template(url: &str) -> String {
    url.split(['?', '&'])
        .find_map(|p| p.strip_prefix("user="))
        .filter(|u| u.contains("{n}"))
        .unwrap_or("scale-{n}")
        .to_string()
}

/// What the report is made of.
struct Inputs<'a> {
    cli: &'a crate::cli::Cli,
    view: &'a ScaleArgs,
    plan: &'a Plan,
    apis: &'a [String],
    results: &'a [ChildResult],
    samples: &'a Samples,
    timeline: &'a Timeline,
    connect_s: f64,
    opened: u64,
    load_s: f64,
    settle_s: f64,
    publish_by_kind: Value,
    /// acked, failed, retries, given up, node skips.
    publish_totals: [u64; 5],
    timed_out: bool,
}

/// Least-squares slope of `(second, rss)` after the warm-up, in bytes per minute.
fn slope_per_min(points: &[(u64, u64)]) -> Option<f64> {
    let last = points.last()?.0;
    let warm = WARMUP_S.min(last / 5);
    let pts: Vec<(f64, f64)> = points
        .iter()
        .filter(|(s, _)| *s >= warm)
        .map(|&(s, r)| (s as f64, r as f64))
        .collect();
    if pts.len() < 3 {
        return None;
    }
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| (sxy / sxx * 60.0).round())
}

fn build_report(i: &Inputs<'_>) -> Value {
    let c = &i.cli.common;
    let merged = merge_scale(i.results);
    let mut handshake = new_hist();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for r in i.results {
        merge_data(&mut handshake, &r.handshake);
        for (kind, v) in &r.errors {
            *errors.entry(kind.clone()).or_insert(0) += v;
        }
    }
    let per_kind = |f: &dyn Fn(usize) -> Value| {
        let mut m = Map::new();
        for (k, name) in KINDS.iter().enumerate() {
            m.insert((*name).into(), f(k));
        }
        Value::Object(m)
    };
    let latency: Vec<Histogram<u64>> = (0..3)
        .map(|k| {
            let mut h = new_hist();
            for r in i.results.iter().filter_map(|r| r.scale.as_ref()) {
                merge_data(&mut h, &r.latency[k]);
            }
            h
        })
        .collect();
    let deliveries: u64 = merged.deliveries.iter().sum();
    let load_points: Vec<u64> = i
        .timeline
        .points
        .iter()
        .filter(|(s, _, _)| (*s as f64) < i.load_s.floor().max(1.0))
        .map(|p| p.1)
        .collect();
    let load_sum: u64 = load_points.iter().sum();
    let peak = i.timeline.points.iter().map(|p| p.1).max().unwrap_or(0);
    let node_count = i.plan.nodes.len();
    let mut nodes = Vec::new();
    let s = i.samples;
    for n in 0..node_count {
        let conns: u64 = i
            .results
            .iter()
            .filter_map(|r| r.nodes.get(n))
            .map(|x| x.opened)
            .sum();
        let delivered: u64 = i
            .results
            .iter()
            .filter_map(|r| r.nodes.get(n))
            .map(|x| x.received)
            .sum();
        let get = |v: &[Sample]| v.get(n).copied().unwrap_or_default();
        let (st, op, go, en) = (get(&s.start), get(&s.open), get(&s.go), get(&s.end));
        let per_conn = match (st.rss, op.rss) {
            (Some(a), Some(b)) if conns > 0 => Some(b.saturating_sub(a) / conns),
            _ => None,
        };
        let series = s.series.get(n).map(Vec::as_slice).unwrap_or(&[]);
        nodes.push(json!({
            "url": i.plan.nodes[n].0,
            "api": i.apis.get(n),
            "pid": i.view.server_pids.get(n),
            "connections": conns,
            "deliveries": delivered,
            "rss_start_bytes": st.rss,
            "rss_open_bytes": op.rss,
            "rss_end_bytes": en.rss,
            "rss_peak_bytes": series.iter().map(|p| p.1).max(),
            "bytes_per_conn": per_conn,
            "rss_slope_bytes_per_min": slope_per_min(series),
            "cpu_s": match (go.cpu, en.cpu) { (Some(a), Some(b)) => Some(round3(b - a)), _ => None },
            "fd_start": st.fds,
            "fd_open": op.fds,
            "fd_end": en.fds,
        }));
    }
    let redis = {
        let get = |v: &[Sample]| v.last().copied().unwrap_or_default();
        let (st, op, go, en) = (get(&s.start), get(&s.open), get(&s.go), get(&s.end));
        let series = s.series.last().map(Vec::as_slice).unwrap_or(&[]);
        json!({
            "pid": i.view.redis_pid,
            "rss_start_bytes": st.rss,
            "rss_open_bytes": op.rss,
            "rss_end_bytes": en.rss,
            "rss_peak_bytes": series.iter().map(|p| p.1).max(),
            "cpu_s": match (go.cpu, en.cpu) { (Some(a), Some(b)) => Some(round3(b - a)), _ => None },
            "fd_start": st.fds,
            "fd_end": en.fds,
        })
    };
    // The nodes' CPU (user + system, from GO to the end) per delivery they made.
    let node_cpu: f64 = nodes
        .iter()
        .filter_map(|n| n.get("cpu_s").and_then(Value::as_f64))
        .sum();
    let cpu_us_per_delivery = (deliveries > 0).then(|| round3(node_cpu * 1e6 / deliveries as f64));
    let rf_total: u64 = merged.recovered_false.iter().map(|r| r[0] + r[1]).sum();
    let m = &merged;
    let sum3 = |a: &[u64; 3]| a.iter().sum::<u64>();
    let connect_failed: u64 = i.results.iter().map(|r| r.failed).sum();
    let mut first = json!({
        "scenario": "scale",
        "target": i.plan.url,
        "api": c.api,
        "procs": i.plan.procs,
        "source_ips": i.plan.source_ips.len(),
        "conns": i.plan.conns,
        "connected": i.opened,
        "connect_failed": connect_failed,
        "rooms": i.view.rooms,
        "connect_s": round3(i.connect_s),
        "handshakes_per_s": if i.connect_s > 0.0 { (i.opened as f64 / i.connect_s).round() } else { 0.0 },
        "handshake_us": percentiles(&handshake),
        "duration_s": round3(i.load_s),
        "settle_s": round3(i.settle_s),
        "rates": {"allhands": i.view.allhands_rate, "room": i.view.room_rate, "user": i.view.user_rate},
        "size": i.view.size,
        "drop_rate": i.view.drop_rate,
        "read_batch_ms": round3(i.view.read_batch.as_secs_f64() * 1e3),
        "published": i.publish_totals[0],
        "publish_failed": i.publish_totals[1],
        "publish_retries": i.publish_totals[2],
        "publish_errors": i.publish_totals[3],
        "publish_node_skips": i.publish_totals[4],
        "publish_by_kind": i.publish_by_kind,
    });
    let second = json!({
        "deliveries": deliveries,
        "deliveries_by_kind": per_kind(&|k| json!(m.deliveries[k])),
        "deliveries_per_s": if i.load_s > 0.0 { (load_sum as f64 / i.load_s.floor().max(1.0)).round() } else { 0.0 },
        "deliveries_per_s_peak": peak,
        "replayed": sum3(&m.replayed),
        "server_cpu_s": round3(node_cpu),
        "server_cpu_us_per_delivery": cpu_us_per_delivery,
        "latency_us": per_kind(&|k| json!(percentiles(&latency[k]))),
    });
    let third = json!({
        "missing": sum3(&m.missing),
        "duplicates": sum3(&m.duplicates),
        "out_of_order": sum3(&m.out_of_order),
        "missing_by_kind": per_kind(&|k| json!(m.missing[k])),
        "duplicates_by_kind": per_kind(&|k| json!(m.duplicates[k])),
        "out_of_order_by_kind": per_kind(&|k| json!(m.out_of_order[k])),
        "epoch_mismatch": sum3(&m.epoch_mismatch),
        "unexpected": m.unexpected,
        "recovered_false": rf_total,
        "recovered_false_by_reason": {
            "epoch_changed": m.recovered_false.iter().map(|r| r[0]).sum::<u64>(),
            "history_gone": m.recovered_false.iter().map(|r| r[1]).sum::<u64>(),
        },
        "recovered_false_by_kind": per_kind(&|k| json!({
            "epoch_changed": m.recovered_false[k][0], "history_gone": m.recovered_false[k][1]})),
    });
    let fourth = json!({
        "reconnects": m.reconnects,
        "reconnects_by_cause": m.reconnect_causes,
        "reconnect_failures": m.reconnect_failures,
        "drops_rst": m.reconnect_causes.get("dropped_rst").copied().unwrap_or(0),
        "drops_fin": m.reconnect_causes.get("dropped_fin").copied().unwrap_or(0),
        "open_at_end": m.open_at_end,
        "down_at_end": m.down_at_end,
        "nodes": nodes,
        "redis": redis,
        "errors": errors,
        "timed_out": i.timed_out,
    });
    if let Value::Object(out) = &mut first {
        for part in [second, third, fourth] {
            if let Value::Object(more) = part {
                out.extend(more);
            }
        }
    }
    first
}

/// Adds up the children's scale figures (latency apart).
fn merge_scale(results: &[ChildResult]) -> ScaleResult {
    let mut m = ScaleResult::default();
    for r in results.iter().filter_map(|r| r.scale.as_ref()) {
        for k in 0..3 {
            m.deliveries[k] += r.deliveries[k];
            m.replayed[k] += r.replayed[k];
            m.missing[k] += r.missing[k];
            m.duplicates[k] += r.duplicates[k];
            m.out_of_order[k] += r.out_of_order[k];
            m.epoch_mismatch[k] += r.epoch_mismatch[k];
            m.recovered_false[k][0] += r.recovered_false[k][0];
            m.recovered_false[k][1] += r.recovered_false[k][1];
        }
        m.unexpected += r.unexpected;
        m.reconnects += r.reconnects;
        m.open_at_end += r.open_at_end;
        m.down_at_end += r.down_at_end;
        for (kind, v) in &r.reconnect_causes {
            *m.reconnect_causes.entry(kind.clone()).or_insert(0) += v;
        }
        for (kind, v) in &r.reconnect_failures {
            *m.reconnect_failures.entry(kind.clone()).or_insert(0) += v;
        }
    }
    m
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_and_slopes() {
        assert_eq!(
            user_template("ws://127.0.0.1:1/ws?user=scale-{n}&x=1"),
            "scale-{n}"
        );
        assert_eq!(user_template("ws://127.0.0.1:1/ws"), "scale-{n}");
        // 1 MB per minute after the warm-up.
        let pts: Vec<(u64, u64)> = (0..600)
            .map(|s| (s, 1_000_000 + s * 1_000_000 / 60))
            .collect();
        let slope = slope_per_min(&pts).unwrap_or(0.0);
        assert!((slope - 1_000_000.0).abs() < 10.0, "{slope}");
        assert_eq!(slope_per_min(&[(0, 1)]), None);
    }
}
