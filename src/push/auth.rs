//! Connection tokens: HS256 JSON Web Tokens (RFC 7519 over RFC 7515 compact JWS) checked at the
//! upgrade, and the channel permissions they carry. Also the constant-time compare the push API
//! uses for its bearer key. Pure functions: the caller supplies the secret and the clock.
//!
//! design.md, "Public listener": claims are `sub` (user id, required), `exp` (required),
//! optional `nbf`, optional `channels` (may subscribe; a trailing `*` matches a prefix; absent =
//! any) and optional `publish` (may publish; same rule; absent = none). Unknown claims are
//! ignored.
//!
//! Order of checks in [`verify_hs256`], each refusal before the next step runs:
//! 1. shape: at most [`MAX_TOKEN_LEN`] bytes, three base64url parts;
//! 2. header: `alg` exactly `HS256` (so `none` and algorithm confusion are refused), `typ` if
//!    present `JWT`, no `crit`;
//! 3. signature: HMAC-SHA256 over `header.payload`, compared in constant time;
//! 4. only then the claims are parsed: types, `sub`, then the clock.
//!
//! Clock rule: no leeway. A token is expired when `exp <= now` (RFC 7519 §4.1.4: "on or after")
//! and not yet valid when `nbf > now` (§4.1.5). The server closes a connection with 4001 at
//! `exp`, so admitting a token a little past `exp` would only open a connection to close it;
//! issuers with skewed clocks should mint `nbf` a few seconds in the past.

use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use crate::push::names::{self, USER_CHANNEL};

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted, in bytes. Real tokens are a few hundred bytes; the cap keeps a
/// hostile query string from costing more than a small decode.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// base64url (RFC 7515 §2: no padding), tolerating padding on input; trailing bits must be
/// zero so that one signature has exactly one spelling.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// base64url of `{"alg":"HS256","typ":"JWT"}`, the header [`sign_hs256`] writes.
const HS256_HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// Longest `alg` value echoed back in [`AuthError::UnsupportedAlg`].
const MAX_ALG_ECHO: usize = 32;

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user id (already checked with [`names::validate_user`]).
    pub sub: String,
    /// Expiry, seconds since the Unix epoch (fractions floored).
    pub exp: u64,
    /// Not before, seconds since the Unix epoch (fractions floored).
    pub nbf: Option<u64>,
    /// Channel patterns the connection may subscribe to; `None` = any.
    pub channels: Option<Vec<String>>,
    /// Channel patterns the connection may publish to; `None` = none.
    pub publish: Option<Vec<String>>,
}

/// What a token lets a connection do, in the form a connection keeps for its life: the
/// `channels` patterns, then the `publish` patterns, in one string, each ended by `'\n'`. One
/// allocation, and connections whose tokens grant the same can share it. (A pattern holding a
/// `'\n'` is left out: channel names can't contain one, so it could match nothing.)
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grants {
    patterns: Box<str>,
    /// How many of `patterns` come from `channels`; `None`: the claim was absent (any channel).
    channels: Option<u16>,
}

impl Grants {
    /// Keeps the `channels` and `publish` patterns of verified `claims` (a trailing `*`
    /// matches a prefix, design.md "Public listener"); `channels: None` stays "any channel",
    /// `publish: None` "no channel". At most 65535 patterns of each list are kept.
    pub fn new(claims: &Claims) -> Grants {
        let mut patterns = String::new();
        let mut push_all = |list: &[String]| {
            let mut n = 0u16;
            for p in list.iter().filter(|p| !p.contains('\n')) {
                if n == u16::MAX {
                    break; // (a token fits in 8 KiB: never reached)
                }
                patterns.push_str(p);
                patterns.push('\n');
                n += 1;
            }
            n
        };
        let channels = claims.channels.as_deref().map(&mut push_all);
        if let Some(publish) = &claims.publish {
            push_all(publish);
        }
        Grants {
            patterns: patterns.into_boxed_str(),
            channels,
        }
    }

    fn all(&self) -> std::str::SplitTerminator<'_, char> {
        self.patterns.split_terminator('\n')
    }

    /// May this connection subscribe to `channel`? Its own `$user` stream always; other `$`
    /// channels never; otherwise any channel when `channels` is absent, else a channel some
    /// pattern in it matches.
    pub fn may_subscribe(&self, channel: &str) -> bool {
        if channel == USER_CHANNEL {
            return true;
        }
        if names::is_server_channel(channel) {
            return false;
        }
        match self.channels {
            None => true,
            Some(n) => self
                .all()
                .take(usize::from(n))
                .any(|p| pattern_matches(p, channel)),
        }
    }

    /// May this connection publish to `channel`? Never to a `$` channel (the server writes
    /// those); otherwise only to a channel some pattern in `publish` matches.
    pub fn may_publish(&self, channel: &str) -> bool {
        if names::is_server_channel(channel) {
            return false;
        }
        let skip = usize::from(self.channels.unwrap_or(0));
        self.all().skip(skip).any(|p| pattern_matches(p, channel))
    }
}

/// A permission pattern: a trailing `*` matches any channel starting with what precedes it
/// (`chat:*` matches `chat:1`; `*` alone matches everything); any other pattern matches only
/// itself. A `*` elsewhere is literal, and since channel names cannot contain `*` it matches
/// nothing.
pub fn pattern_matches(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => pattern == channel,
    }
}

/// Why a token was refused. `Display` gives a short reason fit for a 401 body.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// Not a compact JWS: wrong number of parts, bad base64url, bad JSON, bad header.
    Malformed(&'static str),
    /// The header's `alg` is not `HS256` (empty when `alg` is missing); echoed truncated.
    UnsupportedAlg(String),
    /// The HMAC does not match (wrong secret or altered token).
    BadSignature,
    /// `exp <= now`.
    Expired,
    /// `nbf > now`.
    NotYetValid,
    /// No `sub`, or an empty one.
    MissingSub,
    /// No `exp`.
    MissingExp,
    /// A claim of the wrong type or value.
    BadClaim(&'static str),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Malformed(why) => write!(f, "malformed token: {why}"),
            AuthError::UnsupportedAlg(alg) if alg.is_empty() => f.write_str("token has no alg"),
            AuthError::UnsupportedAlg(alg) => write!(f, "unsupported token alg {alg:?}"),
            AuthError::BadSignature => f.write_str("bad token signature"),
            AuthError::Expired => f.write_str("token expired"),
            AuthError::NotYetValid => f.write_str("token not yet valid"),
            AuthError::MissingSub => f.write_str("token has no sub"),
            AuthError::MissingExp => f.write_str("token has no exp"),
            AuthError::BadClaim(why) => write!(f, "bad token claim: {why}"),
        }
    }
}

impl std::error::Error for AuthError {}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    typ: Option<String>,
    crit: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct RawClaims {
    sub: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    channels: Option<Value>,
    publish: Option<Value>,
}

/// Verifies an HS256 token against `secret` at `now_unix` (seconds) and returns its claims.
/// See the module doc for the order of checks and the clock rule.
pub fn verify_hs256(token: &str, secret: &[u8], now_unix: u64) -> Result<Claims, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed("token too long"));
    }
    // The signing input is the first two parts exactly as sent (RFC 7515 §5.2 step 8).
    let three_parts = token.rsplit_once('.').and_then(|(signing_input, sig_b64)| {
        let (header_b64, payload_b64) = signing_input.split_once('.')?;
        (!payload_b64.contains('.')).then_some((signing_input, header_b64, payload_b64, sig_b64))
    });
    let Some((signing_input, header_b64, payload_b64, sig_b64)) = three_parts else {
        return Err(AuthError::Malformed("token must have three parts"));
    };

    let header = decode_part(header_b64, "header is not base64url")?;
    let header: Header = serde_json::from_slice(&header)
        .map_err(|_| AuthError::Malformed("header is not a JSON object"))?;
    match header.alg.as_deref() {
        Some("HS256") => {}
        Some(other) => return Err(AuthError::UnsupportedAlg(truncate(other, MAX_ALG_ECHO))),
        None => return Err(AuthError::UnsupportedAlg(String::new())),
    }
    // RFC 7515 §4.1.9: typ is a media type, compared case-insensitively.
    if let Some(typ) = &header.typ {
        if !typ.eq_ignore_ascii_case("JWT") {
            return Err(AuthError::Malformed("header typ is not JWT"));
        }
    }
    // RFC 7515 §4.1.11: extensions listed in crit must be understood; we understand none.
    if header.crit.is_some() {
        return Err(AuthError::Malformed("header crit is not supported"));
    }

    let sig = decode_part(sig_b64, "signature is not base64url")?;
    let mut mac = hmac_for(secret);
    mac.update(signing_input.as_bytes());
    // verify_slice compares in constant time and refuses a tag of the wrong length.
    mac.verify_slice(&sig)
        .map_err(|_| AuthError::BadSignature)?;

    let payload = decode_part(payload_b64, "payload is not base64url")?;
    let raw: RawClaims = serde_json::from_slice(&payload)
        .map_err(|_| AuthError::Malformed("claims are not a JSON object"))?;
    let claims = claims_from_raw(raw)?;

    if claims.exp <= now_unix {
        return Err(AuthError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now_unix) {
        return Err(AuthError::NotYetValid);
    }
    Ok(claims)
}

/// Builds an HS256 token over `claims_json` (sent as given, not checked) with the header
/// `{"alg":"HS256","typ":"JWT"}`. For tests, the load generator and the docs.
pub fn sign_hs256(claims_json: &str, secret: &[u8]) -> String {
    let mut token = String::with_capacity(HS256_HEADER_B64.len() + claims_json.len() * 4 / 3 + 48);
    token.push_str(HS256_HEADER_B64);
    token.push('.');
    B64URL.encode_string(claims_json, &mut token);
    let mut mac = hmac_for(secret);
    mac.update(token.as_bytes());
    let sig = mac.finalize().into_bytes();
    token.push('.');
    B64URL.encode_string(sig, &mut token);
    token
}

/// Compares two byte strings in time that depends on their length only, never on where they
/// differ. Unequal lengths return false at once (the length is not the secret part).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early-exit compare.
    std::hint::black_box(diff) == 0
}

fn hmac_for(secret: &[u8]) -> HmacSha256 {
    // RFC 2104 §2: HMAC takes a key of any length (longer ones are hashed first), and the hmac
    // crate only reports InvalidLength for fixed-key MACs, so this arm cannot be reached.
    match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC-SHA256 accepts keys of any length"),
    }
}

fn decode_part(part: &str, why: &'static str) -> Result<Vec<u8>, AuthError> {
    B64URL.decode(part).map_err(|_| AuthError::Malformed(why))
}

fn claims_from_raw(raw: RawClaims) -> Result<Claims, AuthError> {
    let sub = match raw.sub {
        None => return Err(AuthError::MissingSub),
        Some(Value::String(s)) if s.is_empty() => return Err(AuthError::MissingSub),
        Some(Value::String(s)) => s,
        Some(_) => return Err(AuthError::BadClaim("sub must be a string")),
    };
    names::validate_user(&sub).map_err(|_| AuthError::BadClaim("sub is not a valid user id"))?;
    let exp = match raw.exp {
        None => return Err(AuthError::MissingExp),
        Some(v) => numeric_date(&v, "exp must be a non-negative number")?,
    };
    let nbf = raw
        .nbf
        .map(|v| numeric_date(&v, "nbf must be a non-negative number"))
        .transpose()?;
    let channels = raw
        .channels
        .map(|v| string_list(v, "channels must be an array of strings"))
        .transpose()?;
    let publish = raw
        .publish
        .map(|v| string_list(v, "publish must be an array of strings"))
        .transpose()?;
    Ok(Claims {
        sub,
        exp,
        nbf,
        channels,
        publish,
    })
}

/// RFC 7519 §2 NumericDate: seconds since the epoch, possibly fractional. Fractions are
/// floored; negative values are refused; values beyond u64 saturate.
fn numeric_date(v: &Value, why: &'static str) -> Result<u64, AuthError> {
    let Value::Number(n) = v else {
        return Err(AuthError::BadClaim(why));
    };
    if let Some(secs) = n.as_u64() {
        return Ok(secs);
    }
    match n.as_f64() {
        // `as` saturates, so 1e300 becomes u64::MAX rather than wrapping.
        Some(f) if f.is_finite() && f >= 0.0 => Ok(f.floor() as u64),
        _ => Err(AuthError::BadClaim(why)),
    }
}

fn string_list(v: Value, why: &'static str) -> Result<Vec<String>, AuthError> {
    let Value::Array(items) = v else {
        return Err(AuthError::BadClaim(why));
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::String(s) => Ok(s),
            _ => Err(AuthError::BadClaim(why)),
        })
        .collect()
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"edgepush-test-secret";
    const NOW: u64 = 1_700_000_000;

    /// Computed independently with Python:
    /// `hmac.new(b"edgepush-test-secret", (h + "." + p).encode(), hashlib.sha256)` over
    /// `{"alg":"HS256","typ":"JWT"}` and
    /// `{"sub":"603577","exp":4102444800,"channels":["news","chat:*"],"publish":["chat:*"]}`.
    const KNOWN_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
        eyJzdWIiOiI2MDM1NzciLCJleHAiOjQxMDI0NDQ4MDAsImNoYW5uZWxzIjpbIm5ld3MiLCJjaGF0OioiXSwicHVibGlzaCI6WyJjaGF0OioiXX0.\
        MW9ZQqFzM-uBA3Vg7nQDBBdqc6GkFeV_CvvBe-L5gzM";

    /// The jwt.io example (secret `your-256-bit-secret`): a valid signature without `exp`.
    const JWT_IO_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
        eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.\
        SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

    fn b64(s: &str) -> String {
        B64URL.encode(s)
    }

    /// A token with any header, signed with HS256 whatever the header says.
    fn sign_with_header(header: &str, claims: &str, secret: &[u8]) -> String {
        sign_input(&format!("{}.{}", b64(header), b64(claims)), secret)
    }

    /// `input.signature`, whatever `input` holds.
    fn sign_input(input: &str, secret: &[u8]) -> String {
        let mut mac = hmac_for(secret);
        mac.update(input.as_bytes());
        format!("{input}.{}", B64URL.encode(mac.finalize().into_bytes()))
    }

    fn claims(sub: &str, exp: u64) -> Claims {
        Claims {
            sub: sub.to_owned(),
            exp,
            nbf: None,
            channels: None,
            publish: None,
        }
    }

    #[test]
    fn known_vector() {
        let want = Claims {
            sub: "603577".into(),
            exp: 4_102_444_800,
            nbf: None,
            channels: Some(vec!["news".into(), "chat:*".into()]),
            publish: Some(vec!["chat:*".into()]),
        };
        assert_eq!(verify_hs256(KNOWN_TOKEN, SECRET, NOW), Ok(want));
        let signed = sign_hs256(
            r#"{"sub":"603577","exp":4102444800,"channels":["news","chat:*"],"publish":["chat:*"]}"#,
            SECRET,
        );
        assert_eq!(signed, KNOWN_TOKEN);
        // A correct signature from elsewhere reaches the claims checks.
        assert_eq!(
            verify_hs256(JWT_IO_TOKEN, b"your-256-bit-secret", NOW),
            Err(AuthError::MissingExp)
        );
    }

    #[test]
    fn verify_table() {
        let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
        let ok = r#"{"sub":"u1","exp":1700000100}"#;
        let valid = sign_hs256(ok, SECRET);
        let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
        // The payload (29 bytes) and the signature (32) need one `=` each; the header (27)
        // needs none. Padding is part of the signing input, so sign the padded text.
        let padded = sign_input(&format!("{}.{}=", parts[0], parts[1]), SECRET) + "=";
        // Flip one character of the signature (not the last: its low bits may be padding).
        let flipped = {
            let sig = &mut parts[2];
            let c = if sig.starts_with('A') { "B" } else { "A" };
            sig.replace_range(0..1, c);
            parts.join(".")
        };
        let none_token = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(ok));
        let long = "a".repeat(MAX_TOKEN_LEN + 1);

        type Case<'a> = (&'a str, String, Result<Claims, AuthError>);
        let cases: Vec<Case> = vec![
            ("valid", valid.clone(), Ok(claims("u1", 1_700_000_100))),
            ("padded base64", padded, Ok(claims("u1", 1_700_000_100))),
            (
                "typ any case",
                sign_with_header(r#"{"alg":"HS256","typ":"jwt"}"#, ok, SECRET),
                Ok(claims("u1", 1_700_000_100)),
            ),
            (
                "no typ, unknown claims",
                sign_with_header(
                    r#"{"alg":"HS256","kid":"k1"}"#,
                    r#"{"sub":"u1","exp":1700000100,"iat":1,"name":"x","extra":{"a":[1]}}"#,
                    SECRET,
                ),
                Ok(claims("u1", 1_700_000_100)),
            ),
            (
                "float dates floored",
                sign_hs256(
                    r#"{"sub":"u1","exp":1700000100.9,"nbf":1699999999.5}"#,
                    SECRET,
                ),
                Ok(Claims {
                    nbf: Some(1_699_999_999),
                    ..claims("u1", 1_700_000_100)
                }),
            ),
            (
                "nbf == now is valid",
                sign_hs256(r#"{"sub":"u1","exp":1700000100,"nbf":1700000000}"#, SECRET),
                Ok(Claims {
                    nbf: Some(NOW),
                    ..claims("u1", 1_700_000_100)
                }),
            ),
            (
                "expired",
                sign_hs256(r#"{"sub":"u1","exp":1699999999}"#, SECRET),
                Err(AuthError::Expired),
            ),
            (
                "exp == now is expired",
                sign_hs256(r#"{"sub":"u1","exp":1700000000}"#, SECRET),
                Err(AuthError::Expired),
            ),
            (
                "exp float just below now+1 is expired",
                sign_hs256(r#"{"sub":"u1","exp":1700000000.99}"#, SECRET),
                Err(AuthError::Expired),
            ),
            (
                "not yet valid",
                sign_hs256(r#"{"sub":"u1","exp":1700000100,"nbf":1700000001}"#, SECRET),
                Err(AuthError::NotYetValid),
            ),
            ("bad signature", flipped, Err(AuthError::BadSignature)),
            (
                "wrong secret",
                sign_hs256(ok, b"another-secret"),
                Err(AuthError::BadSignature),
            ),
            (
                "truncated signature",
                valid[..valid.len() - 3].to_owned(),
                Err(AuthError::BadSignature),
            ),
            (
                "empty signature",
                format!("{}.{}.", b64(hs), b64(ok)),
                Err(AuthError::BadSignature),
            ),
            (
                "alg none, empty signature",
                none_token,
                Err(AuthError::UnsupportedAlg("none".into())),
            ),
            (
                "alg HS512",
                sign_with_header(r#"{"alg":"HS512","typ":"JWT"}"#, ok, SECRET),
                Err(AuthError::UnsupportedAlg("HS512".into())),
            ),
            (
                "alg RS256",
                sign_with_header(r#"{"alg":"RS256"}"#, ok, SECRET),
                Err(AuthError::UnsupportedAlg("RS256".into())),
            ),
            (
                "alg lower case",
                sign_with_header(r#"{"alg":"hs256"}"#, ok, SECRET),
                Err(AuthError::UnsupportedAlg("hs256".into())),
            ),
            (
                "alg missing",
                sign_with_header(r#"{"typ":"JWT"}"#, ok, SECRET),
                Err(AuthError::UnsupportedAlg(String::new())),
            ),
            (
                "long alg is truncated",
                sign_with_header(&format!(r#"{{"alg":"{}"}}"#, "X".repeat(100)), ok, SECRET),
                Err(AuthError::UnsupportedAlg("X".repeat(MAX_ALG_ECHO))),
            ),
            (
                "alg not a string",
                sign_with_header(r#"{"alg":256}"#, ok, SECRET),
                Err(AuthError::Malformed("header is not a JSON object")),
            ),
            (
                "typ not JWT",
                sign_with_header(r#"{"alg":"HS256","typ":"JWE"}"#, ok, SECRET),
                Err(AuthError::Malformed("header typ is not JWT")),
            ),
            (
                "crit",
                sign_with_header(r#"{"alg":"HS256","crit":["exp"]}"#, ok, SECRET),
                Err(AuthError::Malformed("header crit is not supported")),
            ),
            (
                "missing sub",
                sign_hs256(r#"{"exp":1700000100}"#, SECRET),
                Err(AuthError::MissingSub),
            ),
            (
                "empty sub",
                sign_hs256(r#"{"sub":"","exp":1700000100}"#, SECRET),
                Err(AuthError::MissingSub),
            ),
            (
                "sub not a string",
                sign_hs256(r#"{"sub":603577,"exp":1700000100}"#, SECRET),
                Err(AuthError::BadClaim("sub must be a string")),
            ),
            (
                "sub with control char",
                sign_hs256(r#"{"sub":"a\nb","exp":1700000100}"#, SECRET),
                Err(AuthError::BadClaim("sub is not a valid user id")),
            ),
            (
                "missing exp",
                sign_hs256(r#"{"sub":"u1"}"#, SECRET),
                Err(AuthError::MissingExp),
            ),
            (
                "null exp",
                sign_hs256(r#"{"sub":"u1","exp":null}"#, SECRET),
                Err(AuthError::MissingExp),
            ),
            (
                "exp a string",
                sign_hs256(r#"{"sub":"u1","exp":"1700000100"}"#, SECRET),
                Err(AuthError::BadClaim("exp must be a non-negative number")),
            ),
            (
                "exp negative",
                sign_hs256(r#"{"sub":"u1","exp":-1}"#, SECRET),
                Err(AuthError::BadClaim("exp must be a non-negative number")),
            ),
            (
                "nbf a string",
                sign_hs256(r#"{"sub":"u1","exp":1700000100,"nbf":"0"}"#, SECRET),
                Err(AuthError::BadClaim("nbf must be a non-negative number")),
            ),
            (
                "channels not an array",
                sign_hs256(r#"{"sub":"u1","exp":1700000100,"channels":"news"}"#, SECRET),
                Err(AuthError::BadClaim("channels must be an array of strings")),
            ),
            (
                "channels with a number",
                sign_hs256(
                    r#"{"sub":"u1","exp":1700000100,"channels":["a",1]}"#,
                    SECRET,
                ),
                Err(AuthError::BadClaim("channels must be an array of strings")),
            ),
            (
                "publish not an array",
                sign_hs256(r#"{"sub":"u1","exp":1700000100,"publish":{}}"#, SECRET),
                Err(AuthError::BadClaim("publish must be an array of strings")),
            ),
            (
                "two parts",
                format!("{}.{}", b64(hs), b64(ok)),
                Err(AuthError::Malformed("token must have three parts")),
            ),
            (
                "four parts",
                format!("{valid}.x"),
                Err(AuthError::Malformed("token must have three parts")),
            ),
            (
                "empty",
                String::new(),
                Err(AuthError::Malformed("token must have three parts")),
            ),
            (
                "too long",
                long,
                Err(AuthError::Malformed("token too long")),
            ),
            (
                "header bad base64",
                format!("e!J.{}.AAAA", b64(ok)),
                Err(AuthError::Malformed("header is not base64url")),
            ),
            (
                "standard alphabet refused",
                valid.replacen('e', "+", 1),
                Err(AuthError::Malformed("header is not base64url")),
            ),
            (
                "header not JSON",
                format!("{}.{}.AAAA", b64("{alg:HS256}"), b64(ok)),
                Err(AuthError::Malformed("header is not a JSON object")),
            ),
            (
                "header a JSON array",
                format!("{}.{}.AAAA", b64("[]"), b64(ok)),
                Err(AuthError::Malformed("header is not a JSON object")),
            ),
            (
                "signature bad base64",
                format!("{}.{}.***", b64(hs), b64(ok)),
                Err(AuthError::Malformed("signature is not base64url")),
            ),
            (
                "payload bad base64, signed",
                sign_input(&format!("{}.%%%", b64(hs)), SECRET),
                Err(AuthError::Malformed("payload is not base64url")),
            ),
            (
                "payload bad base64, unsigned: signature first",
                format!("{}.%%%.AAAA", b64(hs)),
                Err(AuthError::BadSignature),
            ),
            (
                "claims not JSON",
                sign_hs256("sub=u1", SECRET),
                Err(AuthError::Malformed("claims are not a JSON object")),
            ),
            (
                "claims a JSON string",
                sign_hs256(r#""u1""#, SECRET),
                Err(AuthError::Malformed("claims are not a JSON object")),
            ),
        ];
        for (name, token, want) in cases {
            assert_eq!(verify_hs256(&token, SECRET, NOW), want, "{name}");
        }
    }

    #[test]
    fn pattern_table() {
        let cases = [
            ("news", "news", true),
            ("news", "news2", false),
            ("news", "new", false),
            ("chat:*", "chat:1", true),
            ("chat:*", "chat:", true),
            ("chat:*", "chat", false),
            ("chat:*", "chatter", false),
            ("*", "anything", true),
            ("*", "a", true),
            ("a*b", "a*b", true),
            ("a*b", "axb", false),
            ("", "", true),
            ("", "a", false),
        ];
        for (pattern, channel, want) in cases {
            assert_eq!(
                pattern_matches(pattern, channel),
                want,
                "{pattern} {channel}"
            );
        }
    }

    #[test]
    fn permissions_table() {
        let open = claims("u", 1);
        let limited = Claims {
            channels: Some(vec!["news".into(), "chat:*".into()]),
            publish: Some(vec!["chat:*".into()]),
            ..claims("u", 1)
        };
        let none = Claims {
            channels: Some(vec![]),
            publish: Some(vec![]),
            ..claims("u", 1)
        };
        let everything = Claims {
            channels: Some(vec!["*".into()]),
            publish: Some(vec!["*".into()]),
            ..claims("u", 1)
        };
        // (claims, channel, may_subscribe, may_publish)
        let cases = [
            (&open, "news", true, false),
            (&open, "$user", true, false),
            (&open, "$other", false, false),
            (&limited, "news", true, false),
            (&limited, "sports", false, false),
            (&limited, "chat:1", true, true),
            (&limited, "$user", true, false),
            (&none, "news", false, false),
            (&none, "$user", true, false),
            (&everything, "x", true, true),
            (&everything, "$user", true, false),
            (&everything, "$admin", false, false),
        ];
        for (c, channel, sub, publ) in cases {
            let g = Grants::new(c);
            assert_eq!(g.may_subscribe(channel), sub, "subscribe {channel} {c:?}");
            assert_eq!(g.may_publish(channel), publ, "publish {channel} {c:?}");
        }
    }

    #[test]
    fn grants_keep_the_two_lists_apart_and_drop_patterns_that_cannot_match() {
        let c = Claims {
            channels: Some(vec!["a".into(), "x\n*".into(), "b:*".into()]),
            publish: Some(vec!["p".into()]),
            ..claims("u", 1)
        };
        let g = Grants::new(&c);
        assert!(g.may_subscribe("a") && g.may_subscribe("b:1"));
        assert!(
            !g.may_subscribe("p"),
            "publish patterns don't grant subscribing"
        );
        assert!(!g.may_subscribe("x"), "a split pattern must not become '*'");
        assert!(g.may_publish("p") && !g.may_publish("a") && !g.may_publish("b:1"));
        // Only publish given: subscribing is open, publishing limited.
        let c = Claims {
            publish: Some(vec!["p".into()]),
            ..claims("u", 1)
        };
        let g = Grants::new(&c);
        assert!(g.may_subscribe("anything") && g.may_publish("p") && !g.may_publish("q"));
        // The same grants compare equal, whoever the user.
        let a = Claims {
            channels: Some(vec!["n".into()]),
            ..claims("alice", 1)
        };
        let b = Claims {
            channels: Some(vec!["n".into()]),
            ..claims("bob", 9)
        };
        assert_eq!(Grants::new(&a), Grants::new(&b));
        assert_ne!(Grants::new(&a), Grants::new(&c));
    }

    #[test]
    fn constant_time_eq_table() {
        let cases: [(&[u8], &[u8], bool); 6] = [
            (b"", b"", true),
            (b"key", b"key", true),
            (b"key", b"kez", false),
            (b"key", b"Key", false),
            (b"key", b"keys", false),
            (b"", b"k", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(constant_time_eq(a, b), want, "{a:?} {b:?}");
        }
    }

    #[test]
    fn display_is_short() {
        let cases = [
            (AuthError::Expired, "token expired"),
            (AuthError::NotYetValid, "token not yet valid"),
            (AuthError::BadSignature, "bad token signature"),
            (AuthError::MissingSub, "token has no sub"),
            (AuthError::MissingExp, "token has no exp"),
            (
                AuthError::UnsupportedAlg("none".into()),
                "unsupported token alg \"none\"",
            ),
            (AuthError::UnsupportedAlg(String::new()), "token has no alg"),
            (
                AuthError::Malformed("token must have three parts"),
                "malformed token: token must have three parts",
            ),
            (
                AuthError::BadClaim("sub must be a string"),
                "bad token claim: sub must be a string",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
    }
}
