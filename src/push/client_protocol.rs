//! The JSON protocol a client speaks on the push endpoint (design.md, "Client protocol on the
//! push endpoint"): parsing the ops a client sends in text frames, and writing the JSON of the
//! frames the server sends back. Pure: bytes in, values out; the caller frames and queues.
//!
//! Parsing borrows from the frame: channel names, epochs and tokens are `Cow::Borrowed` unless
//! they contain JSON escapes, and a publish's `data` is the raw JSON text of the value, never
//! rebuilt. Every refusal is an [`OpError`] with code 400 and a reason naming the field; a
//! refusal of a channel op (`subscribe`, `unsubscribe`, `publish`) whose `channel` is a string
//! also names that channel, so a client with many ops in flight knows which one failed. A
//! publish whose `data` nests deeper than 64 levels is refused here too (the check is
//! [`crate::push::json_depth`]'s).
//!
//! Field rules: `op` selects the op; fields the op does not use are ignored whatever their type,
//! and so are unknown fields; `since` and `epoch` are optional and `null` counts as absent; a
//! known field given twice is refused (two readers could otherwise disagree on which counts).
//!
//! The writers append to a caller's `Vec<u8>` without building a `serde_json::Value`; strings go
//! through serde_json's escaper, numbers through a small integer formatter.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::error::Category;
use serde_json::value::RawValue;

use crate::push::json_depth::{data_too_deep, DATA_TOO_DEEP};
use crate::push::names;

/// One op from a client.
#[derive(Debug)]
pub enum ClientOp<'a> {
    /// `{"op":"subscribe","channel":…,"since":17,"epoch":"k3x9"}`: `since` is the last `seq`
    /// the client saw and `epoch` the channel incarnation it saw it in.
    Subscribe {
        /// The channel, valid per [`names::validate_channel`]; may be `$user`.
        channel: Cow<'a, str>,
        /// The last `seq` the client saw on this channel; `None` (absent or `null`): no replay,
        /// live messages only. Replay sends `since + 1` onwards.
        since: Option<u64>,
        /// The channel incarnation `since` belongs to, as the server last sent it; it must
        /// equal the current one for a replay, so `None` (absent or `null`) with a `since`
        /// gets `recovered:false`.
        epoch: Option<Cow<'a, str>>,
    },
    /// `{"op":"unsubscribe","channel":…}`
    Unsubscribe {
        /// The channel, valid per [`names::validate_channel`] (the caller refuses `$user`).
        channel: Cow<'a, str>,
    },
    /// `{"op":"publish","channel":…,"data":…}`: `data` is any JSON value, kept as its raw text.
    Publish {
        /// The channel, valid per [`names::validate_channel`]; whether the token allows
        /// publishing there is the caller's check (403).
        channel: Cow<'a, str>,
        /// The raw JSON text of the value, borrowed from the frame, forwarded unparsed.
        data: &'a RawValue,
    },
    /// `{"op":"refresh","token":…}`: a newer token for the same `sub`.
    Refresh {
        /// The compact JWS as sent; not yet verified (the caller runs
        /// [`crate::push::auth::verify_hs256`]).
        token: Cow<'a, str>,
    },
}

/// A refusal to send back as `{"op":"error","code":…,"reason":…}`. The parser only makes 400s;
/// the caller uses the other codes for its own refusals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// The HTTP-like status: one of the associated constants (400, 403, 413, 429, 501) or
    /// 502/504 for upstream failures (design.md, "Client protocol on the push endpoint").
    pub code: u16,
    /// Human-readable text for the client; at most a short, truncated echo of its input.
    pub reason: String,
    /// The channel of the op refused, when it is a channel op with a string `channel`
    /// (at most [`MAX_ECHO_CHANNEL`] bytes of it): sent back as `"channel"`.
    pub channel: Option<String>,
}

impl OpError {
    /// Bad JSON, unknown op, missing or ill-typed field, bad channel name.
    pub const BAD_REQUEST: u16 = 400;
    /// The token does not allow this subscribe or publish.
    pub const FORBIDDEN: u16 = 403;
    /// The message is too large.
    pub const TOO_LARGE: u16 = 413;
    /// Too many subscriptions or publishes.
    pub const TOO_MANY: u16 = 429;
    /// Binary frames with no upstream.
    pub const NOT_IMPLEMENTED: u16 = 501;
    /// Cluster mode: this node cannot reach Redis now; retry shortly.
    pub const UNAVAILABLE: u16 = 503;

    /// An error with any `code`; the parser itself only makes [`OpError::BAD_REQUEST`].
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        OpError {
            code,
            reason: reason.into(),
            channel: None,
        }
    }

    /// The same error, about `channel` (cut to [`MAX_ECHO_CHANNEL`] bytes).
    #[must_use]
    pub fn on_channel(mut self, channel: &str) -> Self {
        self.channel = Some(truncate(channel, MAX_ECHO_CHANNEL).to_owned());
        self
    }

    fn bad(reason: impl Into<String>) -> Self {
        OpError::new(OpError::BAD_REQUEST, reason)
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.reason)
    }
}

impl std::error::Error for OpError {}

/// Longest piece of client input (an unknown op's name) echoed back in a reason.
const MAX_ECHO: usize = 32;

/// Longest channel echoed back in an error's `"channel"`: one byte more than a valid name may
/// have, so a name refused for its length is still told apart from a valid one.
pub const MAX_ECHO_CHANNEL: usize = names::MAX_NAME_LEN + 1;

/// Parses one text frame from a client. See the module doc for the field rules.
pub fn parse_client_op(text: &[u8]) -> Result<ClientOp<'_>, OpError> {
    let fields: Fields<'_> = serde_json::from_slice(text).map_err(|e| match e.classify() {
        // The visitor below only refuses one thing, a top-level value that is not an object;
        // the values inside are taken raw or skipped and so can only fail on syntax.
        Category::Data => OpError::bad("message must be a JSON object"),
        Category::Syntax | Category::Eof | Category::Io => OpError::bad(format!("bad JSON: {e}")),
    })?;
    if let Some(name) = fields.duplicate {
        return Err(OpError::bad(format!("duplicate field `{name}`")));
    }
    let op = required_str(fields.op, "op")?;
    let channel_op = matches!(&*op, "subscribe" | "unsubscribe" | "publish");
    channel_op_of(&op, &fields).map_err(|e| {
        // A refused channel op names its channel whenever the client gave one as a string.
        match fields.channel.and_then(|raw| as_str(raw, "channel").ok()) {
            Some(name) if channel_op => e.on_channel(&name),
            _ => e,
        }
    })
}

/// The op named `op`, from its fields.
fn channel_op_of<'a>(op: &str, fields: &Fields<'a>) -> Result<ClientOp<'a>, OpError> {
    match op {
        "subscribe" => Ok(ClientOp::Subscribe {
            channel: channel(fields.channel)?,
            since: optional_u64(fields.since, "since")?,
            epoch: optional_str(fields.epoch, "epoch")?,
        }),
        "unsubscribe" => Ok(ClientOp::Unsubscribe {
            channel: channel(fields.channel)?,
        }),
        "publish" => {
            let channel = channel(fields.channel)?;
            let data = fields.data.ok_or_else(|| missing("data"))?;
            if data_too_deep(data.get()) {
                return Err(OpError::bad(DATA_TOO_DEEP));
            }
            Ok(ClientOp::Publish { channel, data })
        }
        "refresh" => Ok(ClientOp::Refresh {
            token: required_str(fields.token, "token")?,
        }),
        other => Err(OpError::bad(format!(
            "unknown op {:?}",
            truncate(other, MAX_ECHO)
        ))),
    }
}

/// Appends `{"op":"subscribed","channel":…,"epoch":…,"seq":…[,"recovered":…]}`.
pub fn write_subscribed(
    out: &mut Vec<u8>,
    channel: &str,
    epoch: &str,
    seq: u64,
    recovered: Option<bool>,
) {
    out.extend_from_slice(br#"{"op":"subscribed","channel":"#);
    push_json_str(out, channel);
    out.extend_from_slice(br#","epoch":"#);
    push_json_str(out, epoch);
    out.extend_from_slice(br#","seq":"#);
    push_u64(out, seq);
    match recovered {
        Some(true) => out.extend_from_slice(br#","recovered":true"#),
        Some(false) => out.extend_from_slice(br#","recovered":false"#),
        None => {}
    }
    out.push(b'}');
}

/// Appends `{"op":"message","channel":…[,"seq":…],"data":…}`; `seq` is `None` for broadcasts.
/// `data` must be one valid JSON value (a `RawValue`'s text): it is copied as it is.
pub fn write_message(out: &mut Vec<u8>, channel: &str, seq: Option<u64>, data: &str) {
    out.extend_from_slice(br#"{"op":"message","channel":"#);
    push_json_str(out, channel);
    if let Some(seq) = seq {
        out.extend_from_slice(br#","seq":"#);
        push_u64(out, seq);
    }
    out.extend_from_slice(br#","data":"#);
    out.extend_from_slice(data.as_bytes());
    out.push(b'}');
}

/// Appends `{"op":"error","code":…,"reason":…}`, with `,"channel":…` after the code when the
/// error is about a channel op.
pub fn write_error(out: &mut Vec<u8>, code: u16, reason: &str, channel: Option<&str>) {
    out.extend_from_slice(br#"{"op":"error","code":"#);
    push_u64(out, u64::from(code));
    if let Some(channel) = channel {
        out.extend_from_slice(br#","channel":"#);
        push_json_str(out, channel);
    }
    out.extend_from_slice(br#","reason":"#);
    push_json_str(out, reason);
    out.push(b'}');
}

/// Appends `{"op":"unsubscribed","channel":…}`.
pub fn write_unsubscribed(out: &mut Vec<u8>, channel: &str) {
    out.extend_from_slice(br#"{"op":"unsubscribed","channel":"#);
    push_json_str(out, channel);
    out.push(b'}');
}

/// The known fields of an op object, each as raw JSON text, found in one pass.
#[derive(Default)]
struct Fields<'a> {
    op: Option<&'a RawValue>,
    channel: Option<&'a RawValue>,
    since: Option<&'a RawValue>,
    epoch: Option<&'a RawValue>,
    data: Option<&'a RawValue>,
    token: Option<&'a RawValue>,
    /// The first known field seen twice.
    duplicate: Option<&'static str>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Key {
    Op,
    Channel,
    Since,
    Epoch,
    Data,
    Token,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key::<Key>()? {
            let (slot, name) = match key {
                Key::Op => (&mut fields.op, "op"),
                Key::Channel => (&mut fields.channel, "channel"),
                Key::Since => (&mut fields.since, "since"),
                Key::Epoch => (&mut fields.epoch, "epoch"),
                Key::Data => (&mut fields.data, "data"),
                Key::Token => (&mut fields.token, "token"),
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let value: &'de RawValue = map.next_value()?;
            if slot.replace(value).is_some() {
                fields.duplicate.get_or_insert(name);
            }
        }
        Ok(fields)
    }
}

/// A JSON string that borrows from the input unless it holds escapes.
#[derive(Deserialize)]
struct CowStr<'a>(#[serde(borrow)] Cow<'a, str>);

fn missing(name: &str) -> OpError {
    OpError::bad(format!("missing field `{name}`"))
}

fn as_str<'a>(raw: &'a RawValue, name: &str) -> Result<Cow<'a, str>, OpError> {
    serde_json::from_str::<CowStr<'a>>(raw.get())
        .map(|s| s.0)
        .map_err(|_| OpError::bad(format!("field `{name}` must be a string")))
}

fn required_str<'a>(raw: Option<&'a RawValue>, name: &str) -> Result<Cow<'a, str>, OpError> {
    as_str(raw.ok_or_else(|| missing(name))?, name)
}

fn optional_str<'a>(
    raw: Option<&'a RawValue>,
    name: &str,
) -> Result<Option<Cow<'a, str>>, OpError> {
    match raw {
        Some(raw) if raw.get() != "null" => as_str(raw, name).map(Some),
        _ => Ok(None),
    }
}

fn optional_u64(raw: Option<&RawValue>, name: &str) -> Result<Option<u64>, OpError> {
    match raw {
        // serde_json refuses negatives, fractions, exponents and overflow for u64.
        Some(raw) if raw.get() != "null" => serde_json::from_str::<u64>(raw.get())
            .map(Some)
            .map_err(|_| OpError::bad(format!("field `{name}` must be a non-negative integer"))),
        _ => Ok(None),
    }
}

fn channel(raw: Option<&RawValue>) -> Result<Cow<'_, str>, OpError> {
    let name = required_str(raw, "channel")?;
    names::validate_channel(&name).map_err(|e| OpError::bad(format!("bad channel: {e}")))?;
    Ok(name)
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a &str into a Vec cannot fail: serde_json errors only on I/O (a Vec never
    // refuses a write) or on non-string map keys (there are none here).
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20]; // u64::MAX has 20 digits
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A comparable rendering of an op, with whether each string was borrowed.
    fn show(op: &ClientOp<'_>) -> String {
        #[allow(clippy::ptr_arg)] // it is the Cow's variant we want to see
        fn s(c: &Cow<'_, str>) -> String {
            match c {
                Cow::Borrowed(b) => format!("{b:?}"),
                Cow::Owned(o) => format!("owned {o:?}"),
            }
        }
        match op {
            ClientOp::Subscribe {
                channel,
                since,
                epoch,
            } => format!(
                "subscribe {} since={since:?} epoch={}",
                s(channel),
                epoch.as_ref().map_or("-".to_owned(), s)
            ),
            ClientOp::Unsubscribe { channel } => format!("unsubscribe {}", s(channel)),
            ClientOp::Publish { channel, data } => {
                format!("publish {} data={}", s(channel), data.get())
            }
            ClientOp::Refresh { token } => format!("refresh {}", s(token)),
        }
    }

    #[test]
    fn ops_parse() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"op":"subscribe","channel":"news"}"#,
                r#"subscribe "news" since=None epoch=-"#,
            ),
            (
                r#"{"op":"subscribe","channel":"news","since":17,"epoch":"k3x9"}"#,
                r#"subscribe "news" since=Some(17) epoch="k3x9""#,
            ),
            (
                r#"{"op":"subscribe","channel":"news","since":17}"#,
                r#"subscribe "news" since=Some(17) epoch=-"#,
            ),
            (
                r#"{"op":"subscribe","channel":"$user","epoch":"e"}"#,
                r#"subscribe "$user" since=None epoch="e""#,
            ),
            (
                r#"{"op":"subscribe","channel":"news","since":null,"epoch":null}"#,
                r#"subscribe "news" since=None epoch=-"#,
            ),
            (
                r#"{"op":"subscribe","channel":"n","since":18446744073709551615}"#,
                r#"subscribe "n" since=Some(18446744073709551615) epoch=-"#,
            ),
            (
                r#"{"channel":"news","since":0,"op":"subscribe"}"#,
                r#"subscribe "news" since=Some(0) epoch=-"#,
            ),
            (
                " \n{ \"op\" : \"subscribe\" , \"channel\" : \"news\" } \n",
                r#"subscribe "news" since=None epoch=-"#,
            ),
            (
                r#"{"op":"subscribe","channel":"ne\u0077s"}"#,
                r#"subscribe owned "news" since=None epoch=-"#,
            ),
            (
                r#"{"op":"unsubscribe","channel":"chat:1"}"#,
                r#"unsubscribe "chat:1""#,
            ),
            (
                r#"{"op":"publish","channel":"chat:1","data":{"text":"hi","n":[1,2]}}"#,
                r#"publish "chat:1" data={"text":"hi","n":[1,2]}"#,
            ),
            (
                r#"{"op":"publish","channel":"c","data":null}"#,
                r#"publish "c" data=null"#,
            ),
            (
                r#"{"op":"publish","channel":"c","data":"a\"b"}"#,
                r#"publish "c" data="a\"b""#,
            ),
            (
                r#"{"op":"publish","channel":"c","data":-1.5e3}"#,
                r#"publish "c" data=-1.5e3"#,
            ),
            (
                r#"{"op":"refresh","token":"aaa.bbb.ccc"}"#,
                r#"refresh "aaa.bbb.ccc""#,
            ),
            // Unknown fields, and fields the op does not use, are ignored whatever their type.
            (
                r#"{"op":"unsubscribe","channel":"n","since":"x","id":{"deep":[1,{}]},"data":1}"#,
                r#"unsubscribe "n""#,
            ),
            (
                r#"{"op":"refresh","token":"t","channel":5}"#,
                r#"refresh "t""#,
            ),
        ];
        for (input, want) in cases {
            match parse_client_op(input.as_bytes()) {
                Ok(op) => assert_eq!(show(&op), *want, "{input}"),
                Err(e) => panic!("{input}: {e}"),
            }
        }
    }

    #[test]
    fn bad_ops_refused() {
        let long_op = format!(r#"{{"op":"{}"}}"#, "x".repeat(100));
        let long_channel = format!(r#"{{"op":"subscribe","channel":"{}"}}"#, "a".repeat(256));
        let cases: &[(&str, &str)] = &[
            ("", "bad JSON: EOF while parsing a value at line 1 column 0"),
            ("not json", "bad JSON: expected ident at line 1 column 2"),
            (
                "{\"op\":\"subscribe\"",
                "bad JSON: EOF while parsing an object at line 1 column 17",
            ),
            (
                r#"{"op":"subscribe"} x"#,
                "bad JSON: trailing characters at line 1 column 20",
            ),
            ("5", "message must be a JSON object"),
            (r#""subscribe""#, "message must be a JSON object"),
            (r#"[{"op":"subscribe"}]"#, "message must be a JSON object"),
            ("null", "message must be a JSON object"),
            ("{}", "missing field `op`"),
            (r#"{"channel":"news"}"#, "missing field `op`"),
            (r#"{"op":1}"#, "field `op` must be a string"),
            (r#"{"op":null}"#, "field `op` must be a string"),
            (r#"{"op":"sub"}"#, "unknown op \"sub\""),
            (
                r#"{"op":"Subscribe","channel":"n"}"#,
                "unknown op \"Subscribe\"",
            ),
            (&long_op, &format!("unknown op {:?}", "x".repeat(MAX_ECHO))),
            (r#"{"op":"subscribe"}"#, "missing field `channel`"),
            (
                r#"{"op":"subscribe","channel":5}"#,
                "field `channel` must be a string",
            ),
            (
                r#"{"op":"subscribe","channel":null}"#,
                "field `channel` must be a string",
            ),
            (
                r#"{"op":"subscribe","channel":["a"]}"#,
                "field `channel` must be a string",
            ),
            (
                r#"{"op":"subscribe","channel":""}"#,
                "bad channel: name is empty",
            ),
            (
                r#"{"op":"subscribe","channel":"news feed"}"#,
                "bad channel: bad character ' ' at index 4",
            ),
            (
                r#"{"op":"subscribe","channel":"a\u0000"}"#,
                "bad channel: bad character '\\0' at index 1",
            ),
            (
                r#"{"op":"unsubscribe","channel":"$admin"}"#,
                "bad channel: names starting with '$' are reserved",
            ),
            (
                &long_channel,
                "bad channel: name is too long (256 bytes, at most 255)",
            ),
            (
                r#"{"op":"subscribe","channel":"n","since":-1}"#,
                "field `since` must be a non-negative integer",
            ),
            (
                r#"{"op":"subscribe","channel":"n","since":1.5}"#,
                "field `since` must be a non-negative integer",
            ),
            (
                r#"{"op":"subscribe","channel":"n","since":1.0}"#,
                "field `since` must be a non-negative integer",
            ),
            (
                r#"{"op":"subscribe","channel":"n","since":"17"}"#,
                "field `since` must be a non-negative integer",
            ),
            (
                r#"{"op":"subscribe","channel":"n","since":18446744073709551616}"#,
                "field `since` must be a non-negative integer",
            ),
            (
                r#"{"op":"subscribe","channel":"n","epoch":7}"#,
                "field `epoch` must be a string",
            ),
            (r#"{"op":"publish","channel":"n"}"#, "missing field `data`"),
            (r#"{"op":"publish","data":1}"#, "missing field `channel`"),
            (r#"{"op":"refresh"}"#, "missing field `token`"),
            (
                r#"{"op":"refresh","token":{}}"#,
                "field `token` must be a string",
            ),
            (
                r#"{"op":"subscribe","channel":"a","channel":"b"}"#,
                "duplicate field `channel`",
            ),
            (
                r#"{"op":"subscribe","op":"publish","channel":"a"}"#,
                "duplicate field `op`",
            ),
        ];
        for (input, want) in cases {
            match parse_client_op(input.as_bytes()) {
                Ok(op) => panic!("{input}: accepted as {}", show(&op)),
                Err(e) => {
                    assert_eq!(e.code, 400, "{input}");
                    assert_eq!(e.reason, *want, "{input}");
                }
            }
        }
    }

    #[test]
    fn refused_channel_ops_name_their_channel() {
        let long = "a".repeat(300);
        let long_op = format!(r#"{{"op":"subscribe","channel":"{long}"}}"#);
        let cases: &[(&str, Option<&str>)] = &[
            (
                r#"{"op":"subscribe","channel":"news feed"}"#,
                Some("news feed"),
            ),
            (r#"{"op":"unsubscribe","channel":"$admin"}"#, Some("$admin")),
            (r#"{"op":"subscribe","channel":"n","since":-1}"#, Some("n")),
            (r#"{"op":"subscribe","channel":"n","epoch":7}"#, Some("n")),
            (r#"{"op":"publish","channel":"n"}"#, Some("n")),
            (r#"{"op":"publish","channel":"ne\u0077s"}"#, Some("news")),
            (&long_op, Some(&long[..MAX_ECHO_CHANNEL])),
            // No string channel to name, or not a channel op.
            (r#"{"op":"subscribe","channel":5}"#, None),
            (r#"{"op":"publish","data":1}"#, None),
            (r#"{"op":"refresh","channel":"n"}"#, None),
            (r#"{"op":"sub","channel":"n"}"#, None),
            (r#"{"op":"subscribe","channel":"a","channel":"b"}"#, None),
        ];
        for (input, want) in cases {
            let e = parse_client_op(input.as_bytes()).expect_err(input);
            assert_eq!(e.code, 400, "{input}");
            assert_eq!(e.channel.as_deref(), *want, "{input}: {}", e.reason);
        }
    }

    #[test]
    fn publish_data_nested_deeper_than_64_is_refused() {
        let publish = |data: &str| format!(r#"{{"op":"publish","channel":"c","data":{data}}}"#);
        let at = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(parse_client_op(publish(&at).as_bytes()).is_ok());
        let objects = format!("{}1{}", r#"{"a":"#.repeat(64), "}".repeat(64));
        assert!(parse_client_op(publish(&objects).as_bytes()).is_ok());
        for data in [
            format!("{}{}", "[".repeat(65), "]".repeat(65)),
            format!("{}1{}", r#"{"a":"#.repeat(65), "}".repeat(65)),
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        ] {
            let e = parse_client_op(publish(&data).as_bytes()).expect_err("too deep");
            assert_eq!(e.code, 400);
            assert_eq!(e.reason, DATA_TOO_DEEP);
            assert_eq!(e.channel.as_deref(), Some("c"));
        }
        // Brackets inside strings are text, not depth.
        let text = format!(r#""{}""#, "[".repeat(1000));
        assert!(parse_client_op(publish(&text).as_bytes()).is_ok());
        // Deep values elsewhere are skipped without recursion and never relayed.
        let ignored = format!(
            r#"{{"op":"publish","channel":"c","data":1,"x":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(parse_client_op(ignored.as_bytes()).is_ok());
        // Unbalanced, it is bad JSON (found without recursion either).
        let open = publish(&"[".repeat(100_000));
        let e = parse_client_op(open.as_bytes()).expect_err("bad JSON");
        assert!(e.reason.starts_with("bad JSON"), "{}", e.reason);
    }

    #[test]
    fn invalid_utf8_is_bad_json() {
        let e = parse_client_op(b"{\"op\":\"subscribe\",\"channel\":\"\xff\"}").unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.reason.starts_with("bad JSON: "), "{}", e.reason);
    }

    fn encoded(f: impl FnOnce(&mut Vec<u8>)) -> Value {
        let mut out = b"previous frame;".to_vec();
        f(&mut out);
        let tail = out
            .strip_prefix(b"previous frame;".as_slice())
            .expect("writers append");
        serde_json::from_slice(tail).expect("writers produce valid JSON")
    }

    #[test]
    fn writers_round_trip() {
        let nasty = "q\"b\\s/\n\t\u{1}\u{7f}\u{e9}\u{1F600}\u{2028}";
        let cases: Vec<(Value, Value)> = vec![
            (
                encoded(|o| write_subscribed(o, "news", "k3x9", 25, Some(true))),
                json!({"op":"subscribed","channel":"news","epoch":"k3x9","seq":25,"recovered":true}),
            ),
            (
                encoded(|o| write_subscribed(o, "news", "k3x9", 25, Some(false))),
                json!({"op":"subscribed","channel":"news","epoch":"k3x9","seq":25,"recovered":false}),
            ),
            (
                encoded(|o| write_subscribed(o, "$user", "e", 0, None)),
                json!({"op":"subscribed","channel":"$user","epoch":"e","seq":0}),
            ),
            (
                encoded(|o| write_subscribed(o, nasty, nasty, u64::MAX, None)),
                json!({"op":"subscribed","channel":nasty,"epoch":nasty,"seq":u64::MAX}),
            ),
            (
                encoded(|o| write_message(o, "news", Some(18), r#"{"a":[1,"x"]}"#)),
                json!({"op":"message","channel":"news","seq":18,"data":{"a":[1,"x"]}}),
            ),
            (
                encoded(|o| write_message(o, "news", None, "null")),
                json!({"op":"message","channel":"news","data":null}),
            ),
            (
                encoded(|o| write_message(o, nasty, Some(1), r#""\u00e9""#)),
                json!({"op":"message","channel":nasty,"seq":1,"data":"\u{e9}"}),
            ),
            (
                encoded(|o| write_error(o, 403, "not allowed", None)),
                json!({"op":"error","code":403,"reason":"not allowed"}),
            ),
            (
                encoded(|o| write_error(o, 400, nasty, None)),
                json!({"op":"error","code":400,"reason":nasty}),
            ),
            (
                encoded(|o| write_error(o, 429, "too many", Some(nasty))),
                json!({"op":"error","code":429,"channel":nasty,"reason":"too many"}),
            ),
            (
                encoded(|o| write_unsubscribed(o, "news")),
                json!({"op":"unsubscribed","channel":"news"}),
            ),
            (
                encoded(|o| write_unsubscribed(o, nasty)),
                json!({"op":"unsubscribed","channel":nasty}),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn writers_exact_bytes() {
        let mut out = Vec::new();
        write_subscribed(&mut out, "news", "k3x9", 25, Some(true));
        assert_eq!(
            out,
            br#"{"op":"subscribed","channel":"news","epoch":"k3x9","seq":25,"recovered":true}"#
        );
        out.clear();
        write_message(&mut out, "news", Some(18), "[1]");
        assert_eq!(
            out,
            br#"{"op":"message","channel":"news","seq":18,"data":[1]}"#
        );
        out.clear();
        write_error(&mut out, 429, "say \"when\"\\", None);
        assert_eq!(
            out,
            br#"{"op":"error","code":429,"reason":"say \"when\"\\"}"#
        );
        out.clear();
        write_error(&mut out, 400, "no", Some("news"));
        assert_eq!(
            out,
            br#"{"op":"error","code":400,"channel":"news","reason":"no"}"#
        );
    }

    #[test]
    fn integers_format_like_std() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            12_345,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn parsed_publish_rewrites_as_message() {
        let op =
            parse_client_op(br#"{"op":"publish","channel":"chat:1","data":{"t":"\u00e9\"x"}}"#)
                .expect("valid");
        let ClientOp::Publish { channel, data } = op else {
            panic!("not a publish");
        };
        let mut out = Vec::new();
        write_message(&mut out, &channel, Some(3), data.get());
        let v: Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(
            v,
            json!({"op":"message","channel":"chat:1","seq":3,"data":{"t":"\u{e9}\"x"}})
        );
    }
}
