//! The control thread: reads the control stream (`PREFIX:control`) from this node's own
//! position and hands each entry to the hub as [`Reply::Control`].
//!
//! At the first connect the position is the id of the stream's last entry (`XREVRANGE … COUNT
//! 1`; `0-0` if it is empty), so only entries added from then on are read — `$` semantics,
//! but with the id remembered. After a reconnect reading continues from the last id seen, so
//! a link drop loses nothing the stream still holds. Reads are `XREAD COUNT 512 BLOCK 1000`.

use std::time::Duration;

use redis::{Connection, Value};

use super::{sleep_unless_stopped, text, Backoff, Ctx, LinkState};
use crate::cluster::ops::{ControlEntry, LinkKind, Reply};

/// How long one `XREAD` blocks in Redis.
const BLOCK: Duration = Duration::from_millis(1000);

/// Most entries per `XREAD`.
const COUNT: usize = 512;

/// Runs the control thread until the link is dropped.
pub(super) fn run(ctx: &Ctx) {
    let mut state = LinkState::new(LinkKind::Control);
    let mut backoff = Backoff::new();
    let mut out = Vec::new();
    let mut last_id: Option<String> = None;
    let key = ctx.keys.control();
    while !ctx.stopped() {
        let result = connect(ctx, &key, &mut last_id).and_then(|(mut con, id)| {
            backoff.reset();
            state.set(true, &mut out);
            ctx.deliver(&mut out);
            read(ctx, &mut con, &key, id, &mut last_id, &mut out)
        });
        if ctx.stopped() {
            return;
        }
        if let Err(e) = result {
            state.failed("reading the control stream", &e, ctx.timeout());
        }
        state.set(false, &mut out);
        ctx.deliver(&mut out);
        sleep_unless_stopped(ctx, backoff.delay());
    }
}

/// Connects and settles the position: the remembered id, or the stream's last entry's.
fn connect(
    ctx: &Ctx,
    key: &str,
    last_id: &mut Option<String>,
) -> redis::RedisResult<(Connection, String)> {
    let mut con = ctx.connect(&ctx.client, BLOCK + ctx.timeout())?;
    if let Some(id) = last_id {
        return Ok((con, id.clone()));
    }
    let last: Value = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(&mut con)?;
    let id = match &last {
        Value::Array(a) => match a.first() {
            Some(Value::Array(e)) => e.first().and_then(text).unwrap_or("0-0").to_owned(),
            _ => "0-0".to_owned(),
        },
        _ => "0-0".to_owned(),
    };
    *last_id = Some(id.clone());
    Ok((con, id))
}

/// Reads entries after `id` until an error or the link is dropped.
fn read(
    ctx: &Ctx,
    con: &mut Connection,
    key: &str,
    mut id: String,
    last_id: &mut Option<String>,
    out: &mut Vec<Reply>,
) -> redis::RedisResult<()> {
    let block_ms = u64::try_from(BLOCK.as_millis()).unwrap_or(1000);
    while !ctx.stopped() {
        let v: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(COUNT)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(key)
            .arg(&id)
            .query(con)?;
        for (entry_id, entry) in entries(&v) {
            id = entry_id.to_owned();
            match entry {
                Some(e) => out.push(Reply::Control(e)),
                None => log::debug!("redis control: skipped a malformed entry {entry_id}"),
            }
        }
        *last_id = Some(id.clone());
        ctx.deliver(out);
    }
    Ok(())
}

/// The `(id, entry)` pairs of an `XREAD` answer for one stream (`nil` on timeout).
fn entries(v: &Value) -> Vec<(&str, Option<ControlEntry>)> {
    let mut found = Vec::new();
    let Value::Array(streams) = v else {
        return found;
    };
    for s in streams {
        let Value::Array(pair) = s else { continue };
        let Some(Value::Array(list)) = pair.get(1) else {
            continue;
        };
        for e in list {
            let Value::Array(e) = e else { continue };
            let Some(id) = e.first().and_then(text) else {
                continue;
            };
            let entry = match e.get(1) {
                Some(Value::Array(fields)) => parse_entry(fields),
                _ => None,
            };
            found.push((id, entry));
        }
    }
    found
}

/// Fields `type broadcast data …`, `type disconnect user …` or
/// `type presence id … channel … node …`.
fn parse_entry(fields: &[Value]) -> Option<ControlEntry> {
    let field = |name: &str| {
        fields
            .chunks_exact(2)
            .find(|kv| text(&kv[0]) == Some(name))
            .and_then(|kv| text(&kv[1]))
    };
    match field("type")? {
        "broadcast" => Some(ControlEntry::Broadcast {
            data: field("data")?.into(),
        }),
        "disconnect" => Some(ControlEntry::Disconnect {
            user: field("user")?.into(),
        }),
        "presence" => Some(ControlEntry::PresenceAsk {
            id: field("id")?.into(),
            channel: field("channel")?.into(),
            node: field("node")?.into(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn xread_answers_parse() {
        let entry = |id: &str, f: &[&str]| {
            Value::Array(vec![
                bulk(id),
                Value::Array(f.iter().map(|s| bulk(s)).collect()),
            ])
        };
        let v = Value::Array(vec![Value::Array(vec![
            bulk("ep:control"),
            Value::Array(vec![
                entry("1-0", &["type", "broadcast", "data", "{}"]),
                entry("2-0", &["type", "disconnect", "user", "u1"]),
                entry("3-0", &["type", "reboot"]),
            ]),
        ])]);
        let got = entries(&v);
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0],
            ("1-0", Some(ControlEntry::Broadcast { data: "{}".into() }))
        );
        assert_eq!(
            got[1],
            ("2-0", Some(ControlEntry::Disconnect { user: "u1".into() }))
        );
        assert_eq!(got[2], ("3-0", None));
        assert!(entries(&Value::Nil).is_empty());
    }
}
