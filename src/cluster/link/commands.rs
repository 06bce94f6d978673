//! The command thread: runs [`Op`]s in pipelined batches on one connection and answers each.
//!
//! At every (re)connect it learns Redis's `run_id` (`INFO server`; the scripts compare it
//! with the one stored beside each epoch) and loads the three scripts (`SCRIPT LOAD`). A batch
//! is every op queued, up to [`BATCH`], written as one pipeline and read back in one go; a
//! script answered `NOSCRIPT` (a `SCRIPT FLUSH` or a failover) is run again by `EVAL` in a
//! second pipeline. An I/O error or a timeout fails every op of the batch and drops the
//! connection; a server error fails only its op. While the connection is down, ops fail at
//! once. When no op came for [`IDLE_PING`], a `PING` checks the connection so that a dead
//! link is reported without waiting for traffic.
//!
//! Node entries: `PREFIX:node:NAME` holds `TTL_MS INFO` and expires after `TTL_MS`; a node's
//! age is `TTL_MS - PTTL`, both on Redis's clock, so node clocks never skew it.
//!
//! Node names must be unique: a heartbeat `GET`s the entry it replaces, and an entry written
//! by another process (its INFO's `instance` differs) between two of ours means a second
//! node runs with this `--node-name` (their presence answers and `/api/nodes` entries would
//! mix). That is logged as an error, at most once per [`CONFLICT_LOG_EVERY`]. The first
//! heartbeat of a connection does not count: the entry it replaces may be this node's
//! previous process, restarted within the entry's TTL.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{Cmd, Connection, Value};

use super::{int, text, Backoff, Ctx, LinkState, BATCH};
use crate::cluster::ops::{parse_epoch, ControlEntry, LinkKind, NodeEntry, Op, Reply};

/// Every script starts with a Redis 7 shebang without flags: a script that may write is then
/// refused as a whole while Redis is over `maxmemory` (an OOM error, the API's 503), before
/// any of it runs. Without one, Redis checks memory only at a script's first denied write,
/// and a publish to a new channel (whose first write is a `DEL`) got through.
macro_rules! script {
    ($($part:expr),+) => {
        concat!("#!lua\n", $(include_str!($part)),+)
    };
}

/// The publish script (see `publish.lua`).
const PUBLISH_LUA: &str = script!("publish.lua");
/// The read script: `epoch.lua` (the stream's epoch and top, a new epoch when due) then `read.lua`.
const READ_LUA: &str = script!("epoch.lua", "read.lua");
/// The renew script: `epoch.lua` then `renew.lua`.
const RENEW_LUA: &str = script!("epoch.lua", "renew.lua");

/// An idle connection is checked with `PING` this often.
const IDLE_PING: Duration = Duration::from_secs(1);

/// A node-name conflict is logged at most this often.
const CONFLICT_LOG_EVERY: Duration = Duration::from_secs(60);

/// Control-stream entries kept (about: `MAXLEN ~`).
const CONTROL_MAXLEN: usize = 10_000;

/// One of the scripts.
#[derive(Debug, Clone, Copy)]
enum Script {
    /// `publish.lua`.
    Publish,
    /// `epoch.lua` + `read.lua`.
    Read,
    /// `epoch.lua` + `renew.lua`.
    Renew,
}

impl Script {
    /// The Lua source.
    fn body(self) -> &'static str {
        match self {
            Script::Publish => PUBLISH_LUA,
            Script::Read => READ_LUA,
            Script::Renew => RENEW_LUA,
        }
    }
}

/// A live command connection and what was learned when it opened.
struct Session {
    /// The connection.
    con: Connection,
    /// Redis's `run_id` (changes when Redis restarts).
    run_id: String,
    /// `SCRIPT LOAD`'s answers: publish, read, renew.
    shas: [String; 3],
    /// A heartbeat went out on this connection (so the entry it replaces should be ours).
    heartbeat_written: bool,
    /// When a node-name conflict was last logged.
    conflict_logged: Option<Instant>,
}

/// Runs the command thread until the link is dropped (the op queue closes).
pub(super) fn run(ctx: &Ctx, ops: &Receiver<Box<Op>>) {
    let mut state = LinkState::new(LinkKind::Commands);
    let mut backoff = Backoff::new();
    let mut out = Vec::new();
    let mut session: Option<Session> = None;
    loop {
        if ctx.stopped() {
            return;
        }
        let Some(s) = session.as_mut() else {
            match open(ctx) {
                Ok(s) => {
                    out.push(Reply::Connected {
                        run_id: s.run_id.clone(),
                    });
                    session = Some(s);
                    backoff.reset();
                    state.set(true, &mut out);
                    ctx.deliver(&mut out);
                }
                Err(e) => {
                    state.failed("connecting", &e, ctx.timeout());
                    state.set(false, &mut out);
                    ctx.deliver(&mut out);
                    if !fail_until(ctx, ops, Instant::now() + backoff.delay()) {
                        return;
                    }
                }
            }
            continue;
        };
        let first = match ops.recv_timeout(IDLE_PING) {
            Ok(op) => op,
            Err(RecvTimeoutError::Timeout) => {
                let sent = Instant::now();
                let pong = redis::cmd("PING").query::<Value>(&mut s.con);
                ctx.round_trips.observe(sent.elapsed());
                if let Err(e) = pong {
                    state.failed("link lost", &e, ctx.timeout());
                    session = None;
                    state.set(false, &mut out);
                    ctx.deliver(&mut out);
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = Vec::with_capacity(BATCH.min(64));
        batch.push(*first);
        while batch.len() < BATCH {
            match ops.try_recv() {
                Ok(op) => batch.push(*op),
                Err(_) => break,
            }
        }
        if let Err(e) = run_batch(ctx, s, &batch, &mut out) {
            state.failed("link lost", &e, ctx.timeout());
            out.clear();
            fail_all(&batch, &format!("redis: {e}"), &mut out);
            session = None;
            state.set(false, &mut out);
        }
        ctx.deliver(&mut out);
    }
}

/// Answers every op arriving before `deadline` with [`Reply::Failed`] (the link is down).
/// `false` if the queue closed (the link was dropped).
fn fail_until(ctx: &Ctx, ops: &Receiver<Box<Op>>, deadline: Instant) -> bool {
    let mut out = Vec::new();
    loop {
        let now = Instant::now();
        if ctx.stopped() {
            return false;
        }
        if now >= deadline {
            return true;
        }
        match ops.recv_timeout((deadline - now).min(Duration::from_millis(50))) {
            Ok(op) => {
                fail_all(std::slice::from_ref(&*op), "redis: link down", &mut out);
                while let Ok(op) = ops.try_recv() {
                    fail_all(std::slice::from_ref(&*op), "redis: link down", &mut out);
                }
                ctx.deliver(&mut out);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return false,
        }
    }
}

/// Queues [`Reply::Failed`] for every op of `batch` that expects a reply.
fn fail_all(batch: &[Op], reason: &str, out: &mut Vec<Reply>) {
    for op in batch {
        if let Some(id) = op.id() {
            out.push(Reply::Failed {
                id,
                reason: reason.to_owned(),
            });
        }
    }
}

/// Connects, learns the run id and loads the scripts.
fn open(ctx: &Ctx) -> redis::RedisResult<Session> {
    let mut con = ctx.connect(&ctx.client, ctx.timeout())?;
    let info: String = redis::cmd("INFO").arg("server").query(&mut con)?;
    let run_id = info
        .lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|s| s.trim().to_owned())
        .ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Client, "INFO server has no run_id"))
        })?;
    let mut p = redis::pipe();
    for s in [Script::Publish, Script::Read, Script::Renew] {
        p.cmd("SCRIPT").arg("LOAD").arg(s.body());
    }
    let (a, b, c): (String, String, String) = p.query(&mut con)?;
    Ok(Session {
        con,
        run_id,
        shas: [a, b, c],
        heartbeat_written: false,
        conflict_logged: None,
    })
}

/// `EVALSHA sha` (or `EVAL body` when `eval`) with `keys`, arguments to be added.
fn script(s: &Session, which: Script, eval: bool, keys: &[&str]) -> Cmd {
    let mut c = if eval {
        let mut c = redis::cmd("EVAL");
        c.arg(which.body());
        c
    } else {
        let mut c = redis::cmd("EVALSHA");
        c.arg(&s.shas[which as usize]);
        c
    };
    c.arg(keys.len()).arg(keys);
    c
}

/// A TTL in milliseconds, at least 1 (`PEXPIRE 0` would delete).
fn ttl_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// "1" or "0".
fn flag(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

/// The commands that carry out `op` (with scripts by `EVAL` when `eval`).
fn commands(ctx: &Ctx, s: &Session, op: &Op, eval: bool) -> Vec<Cmd> {
    let keys = &ctx.keys;
    match op {
        Op::Publish {
            stream,
            data,
            idempotency_key,
            epoch_candidate,
            existing_only,
            history_size,
            ttl,
            ..
        } => {
            let meta = keys.meta(stream);
            let log = keys.log(stream);
            let idem = idempotency_key
                .as_deref()
                .map(|k| keys.idempotency(stream, k));
            let mut ks = vec![meta.as_str(), log.as_str()];
            if let Some(i) = &idem {
                ks.push(i);
            }
            let mut c = script(s, Script::Publish, eval, &ks);
            c.arg(&**data)
                .arg(epoch_candidate)
                .arg(flag(*existing_only))
                .arg(history_size)
                .arg(ttl_ms(*ttl))
                .arg(&s.run_id)
                .arg(flag(ctx.config.durable))
                .arg(keys.topic(stream));
            vec![c]
        }
        Op::Read {
            stream,
            after,
            epoch_candidate,
            ttl,
            ..
        } => {
            let (meta, log) = (keys.meta(stream), keys.log(stream));
            let mut c = script(s, Script::Read, eval, &[&meta, &log]);
            c.arg(after.map(|a| a.to_string()).unwrap_or_default())
                .arg(epoch_candidate)
                .arg(ttl_ms(*ttl))
                .arg(&s.run_id)
                .arg(flag(ctx.config.durable));
            vec![c]
        }
        Op::Renew {
            stream,
            old,
            epoch_candidate,
            ttl,
            ..
        } => {
            let (meta, log) = (keys.meta(stream), keys.log(stream));
            let mut c = script(s, Script::Renew, eval, &[&meta, &log]);
            c.arg(old)
                .arg(epoch_candidate)
                .arg(ttl_ms(*ttl))
                .arg(&s.run_id)
                .arg(flag(ctx.config.durable));
            vec![c]
        }
        Op::Control { entry, .. } => {
            // `XADD P:control MAXLEN ~ 10000 * type broadcast data …` (or `disconnect user …`).
            let mut c = redis::cmd("XADD");
            c.arg(keys.control())
                .arg("MAXLEN")
                .arg("~")
                .arg(CONTROL_MAXLEN)
                .arg("*")
                .arg("type");
            match entry {
                ControlEntry::Broadcast { data } => c.arg("broadcast").arg("data").arg(&**data),
                ControlEntry::Disconnect { user } => c.arg("disconnect").arg("user").arg(&**user),
                ControlEntry::PresenceAsk { id, channel, node } => c
                    .arg("presence")
                    .arg("id")
                    .arg(&**id)
                    .arg("channel")
                    .arg(&**channel)
                    .arg("node")
                    .arg(&**node),
            };
            vec![c]
        }
        Op::Tell { node, payload } => {
            let mut c = redis::cmd("PUBLISH");
            c.arg(keys.inbox(node)).arg(payload);
            vec![c]
        }
        Op::Touch { streams, ttl } => {
            let ms = ttl_ms(*ttl);
            let mut v = Vec::with_capacity(streams.len() * 2);
            for st in streams {
                v.push(redis::cmd("PEXPIRE").arg(keys.meta(st)).arg(ms).clone());
                v.push(redis::cmd("PEXPIRE").arg(keys.log(st)).arg(ms).clone());
            }
            v
        }
        Op::Depart => {
            let node = &ctx.config.node;
            vec![
                redis::cmd("DEL").arg(keys.node(node)).clone(),
                redis::cmd("SREM").arg(keys.nodes()).arg(node).clone(),
            ]
        }
        Op::Heartbeat { info, ttl } => {
            let ms = ttl_ms(*ttl);
            let node = &ctx.config.node;
            vec![
                redis::cmd("GET").arg(keys.node(node)).clone(),
                redis::cmd("SET")
                    .arg(keys.node(node))
                    .arg(format!("{ms} {info}"))
                    .arg("PX")
                    .arg(ms)
                    .clone(),
                redis::cmd("SADD").arg(keys.nodes()).arg(node).clone(),
            ]
        }
        Op::Nodes { .. } => vec![redis::cmd("SMEMBERS").arg(keys.nodes()).clone()],
    }
}

/// `NOSCRIPT`: the script cache lost the script.
fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

/// Runs `batch` as one pipeline and queues each op's reply into `out`. `Err` (an I/O error,
/// a timeout) means the connection is unusable and the batch's effect unknown.
fn run_batch(
    ctx: &Ctx,
    s: &mut Session,
    batch: &[Op],
    out: &mut Vec<Reply>,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut spans = Vec::with_capacity(batch.len());
    for op in batch {
        let cmds = commands(ctx, s, op, false);
        spans.push(cmds.len());
        for c in cmds {
            pipe.add_command(c);
        }
    }
    let sent = Instant::now();
    let answered = pipe.query(&mut s.con);
    ctx.round_trips.observe(sent.elapsed());
    let mut values: Vec<Value> = answered?;
    if values.len() != pipe.len() {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "pipeline answered the wrong number of replies",
        )));
    }
    // Ops whose script was not cached run again by EVAL (a NOSCRIPT script did not run).
    let mut first = 0;
    let mut retry = Vec::new();
    for (i, n) in spans.iter().enumerate() {
        if values[first..first + n].iter().any(is_noscript) {
            retry.push((i, first));
        }
        first += n;
    }
    if !retry.is_empty() {
        let mut again = redis::pipe();
        again.ignore_errors();
        for &(i, _) in &retry {
            for c in commands(ctx, s, &batch[i], true) {
                again.add_command(c);
            }
        }
        let fresh: Vec<Value> = again.query(&mut s.con)?;
        // Script ops are one command each, so replies map one to one.
        for (&(_, at), v) in retry.iter().zip(fresh) {
            values[at] = v;
        }
    }
    let mut first = 0;
    for (op, n) in batch.iter().zip(spans) {
        let vals = &values[first..first + n];
        first += n;
        answer(ctx, s, op, vals, out)?;
    }
    Ok(())
}

/// Turns an op's replies into its [`Reply`] (or logs a failure of an op without one).
fn answer(
    ctx: &Ctx,
    s: &mut Session,
    op: &Op,
    vals: &[Value],
    out: &mut Vec<Reply>,
) -> redis::RedisResult<()> {
    if let Some(Value::ServerError(e)) = vals.iter().find(|v| matches!(v, Value::ServerError(_))) {
        let reason = format!("redis: {} {}", e.code(), e.details().unwrap_or(""));
        match op.id() {
            Some(id) => out.push(Reply::Failed { id, reason }),
            None => log::warn!("redis commands: {reason}"),
        }
        return Ok(());
    }
    let reply = match op {
        Op::Publish { id, .. } => Some(parse_publish(*id, vals.first())),
        Op::Read { id, .. } | Op::Renew { id, .. } => Some(parse_read(*id, vals.first())),
        Op::Control { id, .. } => Some(Reply::Appended { id: *id }),
        Op::Heartbeat { info, .. } => {
            let replaced = vals.first().and_then(text);
            if let Some(other) = replaced.and_then(|old| other_instance(old, info)) {
                let now = Instant::now();
                let due = s
                    .conflict_logged
                    .is_none_or(|at| now.duration_since(at) >= CONFLICT_LOG_EVERY);
                if s.heartbeat_written && due {
                    s.conflict_logged = Some(now);
                    log::error!(
                        "another process heartbeats as node {:?} (its instance {other}): \
                         every node needs its own --node-name; presence and /api/nodes \
                         mix the two until one is renamed",
                        ctx.config.node
                    );
                }
            }
            s.heartbeat_written = true;
            None
        }
        Op::Touch { .. } | Op::Tell { .. } | Op::Depart => None,
        Op::Nodes { id } => Some(nodes(ctx, s, *id, vals.first())?),
    };
    out.extend(reply);
    Ok(())
}

/// The `instance` of the node entry `replaced` (`TTL_MS INFO`) when it differs from the one
/// in `ours` (the INFO being written); `None` when they match, or when either has none (an
/// entry from a version without it).
fn other_instance(replaced: &str, ours: &str) -> Option<String> {
    fn instance(info: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(info).ok()?;
        v.get("instance")?.as_str().map(str::to_owned)
    }
    let (_, old_info) = replaced.split_once(' ')?;
    let theirs = instance(old_info)?;
    (theirs != instance(ours)?).then_some(theirs)
}

/// The malformed-reply failure.
fn unexpected(id: u64) -> Reply {
    Reply::Failed {
        id,
        reason: "redis: unexpected reply".to_owned(),
    }
}

/// An epoch as the scripts return it (a decimal string below [`EPOCH_LIMIT`]).
fn epoch(v: &Value) -> Option<u64> {
    parse_epoch(text(v)?)
}

/// `publish.lua`'s `{1, seq, epoch}` or `{0}`.
fn parse_publish(id: u64, v: Option<&Value>) -> Reply {
    let parsed = match v {
        Some(Value::Array(a)) => match a.as_slice() {
            [k, seq, e] if int(k) == Some(1) => int(seq)
                .and_then(|s| u64::try_from(s).ok())
                .zip(epoch(e))
                .map(|(seq, epoch)| Reply::Published { id, seq, epoch }),
            [k] if int(k) == Some(0) => Some(Reply::NoStream { id }),
            _ => None,
        },
        _ => None,
    };
    parsed.unwrap_or_else(|| unexpected(id))
}

/// `read.lua`'s `{epoch, top, entries}` or `renew.lua`'s `{epoch, top}`.
fn parse_read(id: u64, v: Option<&Value>) -> Reply {
    let parsed = (|| {
        let Some(Value::Array(a)) = v else {
            return None;
        };
        let epoch = epoch(a.first()?)?;
        let top = u64::try_from(int(a.get(1)?)?).ok()?;
        let mut entries = Vec::new();
        if let Some(Value::Array(list)) = a.get(2) {
            entries.reserve(list.len());
            for e in list {
                entries.push(parse_entry(e)?);
            }
        }
        Some(Reply::Read {
            id,
            epoch,
            top,
            entries,
        })
    })();
    parsed.unwrap_or_else(|| unexpected(id))
}

/// One `XRANGE` entry `{"SEQ-0", {"d", data}}` as `(seq, data)`.
fn parse_entry(v: &Value) -> Option<(u64, Arc<str>)> {
    let Value::Array(e) = v else { return None };
    let [id, Value::Array(fields)] = e.as_slice() else {
        return None;
    };
    let seq = text(id)?.strip_suffix("-0")?.parse().ok()?;
    let data = fields
        .chunks_exact(2)
        .find(|kv| text(&kv[0]) == Some("d"))
        .and_then(|kv| text(&kv[1]))?;
    Some((seq, Arc::from(data)))
}

/// Second step of [`Op::Nodes`]: `GET` and `PTTL` of every listed node (one pipeline), then
/// `SREM` of the ones whose entry expired.
fn nodes(
    ctx: &Ctx,
    s: &mut Session,
    id: u64,
    members: Option<&Value>,
) -> redis::RedisResult<Reply> {
    let names: Vec<&str> = match members {
        Some(Value::Array(m) | Value::Set(m)) => m.iter().filter_map(text).collect(),
        _ => return Ok(unexpected(id)),
    };
    if names.is_empty() {
        return Ok(Reply::Nodes {
            id,
            nodes: Vec::new(),
        });
    }
    let mut p = redis::pipe();
    for n in &names {
        let key = ctx.keys.node(n);
        p.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
    }
    let vals: Vec<Value> = p.query(&mut s.con)?;
    let mut live = Vec::with_capacity(names.len());
    let mut gone = Vec::new();
    for (name, pair) in names.iter().zip(vals.chunks_exact(2)) {
        let entry = text(&pair[0])
            .and_then(|v| v.split_once(' '))
            .and_then(|(ttl, info)| Some((ttl.parse::<i64>().ok()?, info)));
        match (entry, int(&pair[1])) {
            (Some((ttl, info)), Some(left)) if left >= 0 => live.push(NodeEntry {
                info: info.to_owned(),
                age_ms: u64::try_from(ttl.saturating_sub(left)).unwrap_or(0),
            }),
            (None, _) => gone.push(*name),
            _ => {}
        }
    }
    if !gone.is_empty() {
        redis::cmd("SREM")
            .arg(ctx.keys.nodes())
            .arg(&gone)
            .query::<Value>(&mut s.con)?;
    }
    Ok(Reply::Nodes { id, nodes: live })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_node_entry_written_by_another_process_is_told_apart() {
        let ours = r#"{"name":"n1","instance":"00000000000000aa","connections":3}"#;
        let cases = [
            // Our own entry, or one from a version without instances: no conflict.
            (format!("15000 {ours}"), None),
            (r#"15000 {"name":"n1","connections":3}"#.to_owned(), None),
            // Another process's: its instance.
            (
                r#"15000 {"name":"n1","instance":"00000000000000bb"}"#.to_owned(),
                Some("00000000000000bb".to_owned()),
            ),
            // Not an entry at all.
            ("garbage".to_owned(), None),
            ("15000 {not json".to_owned(), None),
            (r#"15000 {"instance":7}"#.to_owned(), None),
        ];
        for (replaced, expected) in cases {
            assert_eq!(other_instance(&replaced, ours), expected, "{replaced}");
        }
        // Without our own instance there is nothing to compare.
        let theirs = r#"15000 {"instance":"00000000000000bb"}"#;
        assert_eq!(other_instance(theirs, r#"{"name":"n1"}"#), None);
    }

    #[test]
    fn publish_replies_parse() {
        let ok = Value::Array(vec![Value::Int(1), Value::Int(7), bulk("123456")]);
        assert!(matches!(
            parse_publish(3, Some(&ok)),
            Reply::Published {
                id: 3,
                seq: 7,
                epoch: 123_456
            }
        ));
        let none = Value::Array(vec![Value::Int(0)]);
        assert!(matches!(
            parse_publish(3, Some(&none)),
            Reply::NoStream { id: 3 }
        ));
        let bad = Value::Array(vec![Value::Int(1), Value::Int(-1), bulk("x")]);
        assert!(matches!(
            parse_publish(3, Some(&bad)),
            Reply::Failed { id: 3, .. }
        ));
        assert!(matches!(
            parse_publish(3, None),
            Reply::Failed { id: 3, .. }
        ));
    }

    #[test]
    fn read_replies_parse() {
        let entry = |seq: &str, d: &str| {
            Value::Array(vec![bulk(seq), Value::Array(vec![bulk("d"), bulk(d)])])
        };
        let v = Value::Array(vec![
            bulk("42"),
            Value::Int(5),
            Value::Array(vec![entry("4-0", "{}"), entry("5-0", "[1]")]),
        ]);
        match parse_read(1, Some(&v)) {
            Reply::Read {
                id: 1,
                epoch: 42,
                top: 5,
                entries,
            } => {
                assert_eq!(entries.len(), 2);
                assert_eq!((entries[1].0, &*entries[1].1), (5, "[1]"));
            }
            other => panic!("{other:?}"),
        }
        let renew = Value::Array(vec![bulk("9"), Value::Int(3)]);
        assert!(matches!(
            parse_read(2, Some(&renew)),
            Reply::Read {
                epoch: 9,
                top: 3,
                ..
            }
        ));
        let bad = Value::Array(vec![
            bulk("9"),
            Value::Int(3),
            Value::Array(vec![entry("x", "")]),
        ]);
        assert!(matches!(parse_read(2, Some(&bad)), Reply::Failed { .. }));
        use crate::cluster::ops::EPOCH_LIMIT;
        let last = (EPOCH_LIMIT - 1).to_string();
        let top = Value::Array(vec![bulk(&last), Value::Int(3)]);
        assert!(
            matches!(parse_read(2, Some(&top)), Reply::Read { epoch, .. } if epoch == EPOCH_LIMIT - 1)
        );
        let big = Value::Array(vec![bulk(&EPOCH_LIMIT.to_string()), Value::Int(3)]);
        assert!(
            matches!(parse_read(2, Some(&big)), Reply::Failed { .. }),
            "an epoch the scripts never make"
        );
    }
}
