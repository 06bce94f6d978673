//! The record layer of an established TLS connection — TLS 1.3 (RFC 8446 §5) and TLS 1.2
//! with AEAD suites (RFC 5246 §6.2.3.3, RFC 5288, RFC 7905) — run here with *ring* instead of
//! inside rustls, so that an idle connection keeps little more than its two traffic keys.
//!
//! rustls does the handshake; once it is over (and rustls has nothing left to send),
//! [`super::stream::TlsStream`] turns the connection into rustls's `KernelConnection` with
//! `dangerous_into_kernel_connection()`: the traffic keys, IVs and sequence numbers of both
//! directions ([`TrafficKey`]) plus, for TLS 1.3, the key schedule, which rustls keeps only to
//! compute the next traffic secrets at a KeyUpdate (RFC 8446 §4.6.3, §7.2). Everything else
//! rustls held for the handshake (transcript, queues, deframer, the boxed record encrypter and
//! decrypter) is freed; for TLS 1.2, which has no key update, the `KernelConnection` too.
//!
//! [`RecordLayer`] then protects and unprotects records itself with the negotiated AEAD
//! (AES-128-GCM, AES-256-GCM or ChaCha20-Poly1305):
//! - TLS 1.3 (RFC 8446 §5.2–5.4): nonce = IV ⊕ the 64-bit record sequence number, the 5-byte
//!   record header as additional data, the true content type inside, after the content and
//!   before the zero padding. After the handshake a client may send application data, alerts
//!   (close_notify ends its direction; any other, except user_canceled, is fatal) and one
//!   handshake message, KeyUpdate; requests for our own key update are answered by one
//!   KeyUpdate before our next data, however many came.
//! - TLS 1.2: the content type is the record's own; additional data = sequence number, type,
//!   version and plaintext length (RFC 5246 §6.2.3.3). AES-GCM (RFC 5288) sends an 8-byte
//!   explicit nonce before the ciphertext (the nonce is the 4-byte salt and it; ours is
//!   IV ⊕ sequence number, as rustls makes it); ChaCha20-Poly1305 (RFC 7905) uses
//!   IV ⊕ sequence number and sends none. After the handshake a client may send application
//!   data and alerts (close_notify ends its direction, other warnings are ignored, fatal ones
//!   fatal); a handshake message (renegotiation) is refused. Warnings (and TLS 1.3's
//!   user_canceled) are ignored at most [`MAX_WARNINGS`] times, as rustls does.
//!
//! Anything else is answered with a fatal alert under our current key. Nothing here touches
//! a socket: records come in as bytes and go out appended to a buffer (the worker's scratch),
//! which makes the layer testable against a rustls client in memory.

use std::fmt;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion, SupportedCipherSuite};

/// A record header: type, legacy version, length (RFC 8446 §5.1).
pub const HEADER_LEN: usize = 5;

/// The AEAD tag of every suite here (16 bytes).
pub const TAG_LEN: usize = 16;

/// The explicit nonce of a TLS 1.2 AES-GCM record (RFC 5288 §3).
const EXPLICIT_NONCE_LEN: usize = 8;

/// The largest plaintext of one record (RFC 8446 §5.1, RFC 5246 §6.2.1: 2^14 bytes).
pub const MAX_PLAINTEXT: usize = 1 << 14;

/// The largest TLS 1.3 `TLSCiphertext.length` (RFC 8446 §5.2: 2^14 + 256); longer is
/// `record_overflow`.
pub const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;

/// The largest TLS 1.2 `TLSCiphertext.length` (RFC 5246 §6.2.3: 2^14 + 2048).
pub const MAX_CIPHERTEXT_TLS12: usize = MAX_PLAINTEXT + 2048;

/// The largest `TLSInnerPlaintext` (content, type, padding: RFC 8446 §5.4, 2^14 + 1).
const MAX_INNER_PLAINTEXT: usize = MAX_PLAINTEXT + 1;

/// Bytes a TLS 1.3 record adds to its content: header, inner content type, tag.
pub const OVERHEAD: usize = HEADER_LEN + 1 + TAG_LEN;

/// `ContentType` values (RFC 8446 §5.1, appendix B.1).
pub mod content_type {
    /// change_cipher_spec (only as a compatibility record during the handshake).
    pub const CHANGE_CIPHER_SPEC: u8 = 20;
    /// alert.
    pub const ALERT: u8 = 21;
    /// handshake.
    pub const HANDSHAKE: u8 = 22;
    /// application_data, also the outer type of every protected TLS 1.3 record.
    pub const APPLICATION_DATA: u8 = 23;
}

/// `HandshakeType` key_update (RFC 8446 §4).
const KEY_UPDATE: u8 = 24;

/// A KeyUpdate message: type, 24-bit length 1, `request_update` (RFC 8446 §4.6.3).
const KEY_UPDATE_LEN: usize = 5;

/// A KeyUpdate's handshake header: type key_update, length 1 (RFC 8446 §4).
const KEY_UPDATE_HEADER: [u8; 4] = [KEY_UPDATE, 0, 0, 1];

/// KeyUpdates accepted in a row with no application data between them (rustls allows as many
/// before it closes the connection); each costs two key derivations and a record.
pub const MAX_KEY_UPDATES: u8 = 32;

/// Warning alerts accepted on a connection (rustls allows as many, then closes it): they
/// carry nothing, so a peer has no reason to send more.
pub const MAX_WARNINGS: u8 = 4;

/// The alerts this layer sends or understands (RFC 8446 §6, `AlertDescription`); always sent
/// with level fatal (2), except close_notify (level warning, 1, as rustls and most stacks
/// send it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Alert {
    /// close_notify: the sender will send no more.
    CloseNotify = 0,
    /// unexpected_message: a record or message not allowed here.
    UnexpectedMessage = 10,
    /// bad_record_mac: a record that does not decrypt.
    BadRecordMac = 20,
    /// record_overflow: a record longer than the limits of §5.2 and §5.4.
    RecordOverflow = 22,
    /// illegal_parameter: a field out of range (a KeyUpdate's `request_update`).
    IllegalParameter = 47,
    /// decode_error: a message that cannot be parsed.
    DecodeError = 50,
    /// internal_error: our own failure (a key that cannot be set up).
    InternalError = 80,
}

/// Alert level warning (RFC 5246 §7.2).
const WARNING: u8 = 1;

/// alert description user_canceled (RFC 8446 §6.1): a warning that is ignored.
const USER_CANCELED: u8 = 90;

/// Why the connection cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fatal {
    /// The peer broke the protocol: this alert goes out (under our current key) and the
    /// connection closes.
    Send(Alert),
    /// The peer sent a fatal alert (its description): the connection closes without an answer.
    Received(u8),
    /// A sequence number would wrap (RFC 8446 §5.3: the connection must close instead), or a
    /// TLS 1.2 key reached its suite's confidentiality limit: the connection closes without
    /// an alert, as no record can be protected any more.
    Exhausted,
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fatal::Send(alert) => write!(f, "TLS: sending alert {alert:?}"),
            Fatal::Received(d) => write!(f, "TLS: peer sent fatal alert {d}"),
            Fatal::Exhausted => f.write_str("TLS: record sequence number exhausted"),
        }
    }
}

impl std::error::Error for Fatal {}

/// How a key protects records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    /// TLS 1.3 (RFC 8446 §5.2): nonce = IV ⊕ sequence number, the header as additional data,
    /// the content type inside.
    Tls13,
    /// TLS 1.2 AES-GCM (RFC 5288): an explicit nonce before the ciphertext.
    Tls12Gcm,
    /// TLS 1.2 ChaCha20-Poly1305 (RFC 7905): nonce = IV ⊕ sequence number, none sent.
    Tls12Chacha,
}

/// One direction's record protection: the AEAD key, the 12-byte IV and the sequence number of
/// the next record (RFC 8446 §5.3).
pub struct TrafficKey {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    scheme: Scheme,
    seq: u64,
}

impl TrafficKey {
    /// The key for one direction of a `version` connection from rustls's extracted
    /// `secrets`, the next record being number `seq`.
    ///
    /// # Errors
    /// `internal_error` for a suite *ring* does not provide here (none of rustls's AEAD
    /// suites) or a key of the wrong length.
    pub fn new(
        secrets: &ConnectionTrafficSecrets,
        seq: u64,
        version: ProtocolVersion,
    ) -> Result<TrafficKey, Fatal> {
        let tls13 = version == ProtocolVersion::TLSv1_3;
        let (algorithm, key, iv, scheme) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                (&aead::AES_128_GCM, key, iv, Scheme::Tls12Gcm)
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                (&aead::AES_256_GCM, key, iv, Scheme::Tls12Gcm)
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv, Scheme::Tls12Chacha)
            }
            _ => return Err(Fatal::Send(Alert::InternalError)),
        };
        let key = UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| Fatal::Send(Alert::InternalError))?;
        let iv: [u8; NONCE_LEN] = iv
            .as_ref()
            .try_into()
            .map_err(|_| Fatal::Send(Alert::InternalError))?;
        Ok(TrafficKey {
            key: LessSafeKey::new(key),
            iv,
            scheme: if tls13 { Scheme::Tls13 } else { scheme },
            seq,
        })
    }

    /// The sequence number of the next record.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The sequence number of the next record, counted. The last number, 2^64 − 1, is never
    /// used: [`Fatal::Exhausted`] instead.
    fn next_seq(&mut self) -> Result<u64, Fatal> {
        if self.seq == u64::MAX {
            return Err(Fatal::Exhausted);
        }
        self.seq += 1;
        Ok(self.seq - 1)
    }

    /// The IV with `seq`, left-padded to 12 bytes, XORed in (RFC 8446 §5.3, RFC 7905 §2).
    fn nonce(&self, seq: u64) -> [u8; NONCE_LEN] {
        let mut nonce = self.iv;
        for (n, s) in nonce[NONCE_LEN - 8..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    /// Appends one protected record holding `content` (at most [`MAX_PLAINTEXT`] bytes) of
    /// content type `ty`, without padding, to `out`.
    ///
    /// # Errors
    /// [`Fatal::Exhausted`]; `internal_error` if `content` is too long.
    pub fn seal(&mut self, content: &[u8], ty: u8, out: &mut Vec<u8>) -> Result<(), Fatal> {
        if content.len() > MAX_PLAINTEXT {
            return Err(Fatal::Send(Alert::InternalError));
        }
        let seq = self.next_seq()?;
        let nonce = self.nonce(seq);
        let start = out.len();
        let body = match self.scheme {
            Scheme::Tls13 => {
                let len = content.len() + 1 + TAG_LEN;
                let [hi, lo] = (len as u16).to_be_bytes();
                let header = [content_type::APPLICATION_DATA, 3, 3, hi, lo];
                out.reserve(HEADER_LEN + len);
                out.extend_from_slice(&header);
                out.extend_from_slice(content);
                out.push(ty);
                self.key.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(header),
                    &mut out[start + HEADER_LEN..],
                )
            }
            Scheme::Tls12Gcm | Scheme::Tls12Chacha => {
                let explicit = if self.scheme == Scheme::Tls12Gcm {
                    &nonce[NONCE_LEN - EXPLICIT_NONCE_LEN..]
                } else {
                    &[][..]
                };
                let len = explicit.len() + content.len() + TAG_LEN;
                let [hi, lo] = (len as u16).to_be_bytes();
                out.reserve(HEADER_LEN + len);
                out.extend_from_slice(&[ty, 3, 3, hi, lo]);
                out.extend_from_slice(explicit);
                let at = out.len();
                out.extend_from_slice(content);
                self.key.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(tls12_aad(seq, ty, content.len())),
                    &mut out[at..],
                )
            }
        };
        match body {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(Fatal::Send(Alert::InternalError))
            }
        }
    }

    /// Decrypts one whole record (`record`: header and `length` bytes) in place; returns its
    /// content type and where its content now lies in `record` (start, length), TLS 1.3
    /// padding stripped.
    ///
    /// # Errors
    /// `record_overflow` (longer than RFC 8446 §5.2 and §5.4 or RFC 5246 §6.2 allow),
    /// `unexpected_message` (a TLS 1.3 outer type other than application_data, or no content
    /// type: all zeros; a TLS 1.2 type that is none of the four), `bad_record_mac` (does not
    /// decrypt: a wrong key, a damaged record, one shorter than a tag),
    /// [`Fatal::Exhausted`].
    pub fn open(&mut self, record: &mut [u8]) -> Result<(u8, usize, usize), Fatal> {
        let header = check_header(record, self.scheme == Scheme::Tls13)?;
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if record.len() != HEADER_LEN + len {
            return Err(Fatal::Send(Alert::DecodeError));
        }
        match self.scheme {
            Scheme::Tls13 => {
                if len < TAG_LEN + 1 {
                    return Err(Fatal::Send(Alert::BadRecordMac));
                }
                let seq = self.next_seq()?;
                let nonce = self.nonce(seq);
                let plain = self
                    .key
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(header),
                        &mut record[HEADER_LEN..],
                    )
                    .map_err(|_| Fatal::Send(Alert::BadRecordMac))?;
                if plain.len() > MAX_INNER_PLAINTEXT {
                    return Err(Fatal::Send(Alert::RecordOverflow));
                }
                // The content type is the last non-zero byte (RFC 8446 §5.4).
                match plain.iter().rposition(|&b| b != 0) {
                    Some(at) => Ok((plain[at], HEADER_LEN, at)),
                    None => Err(Fatal::Send(Alert::UnexpectedMessage)),
                }
            }
            Scheme::Tls12Gcm | Scheme::Tls12Chacha => {
                let explicit = if self.scheme == Scheme::Tls12Gcm {
                    EXPLICIT_NONCE_LEN
                } else {
                    0
                };
                let Some(n) = len.checked_sub(explicit + TAG_LEN) else {
                    return Err(Fatal::Send(Alert::BadRecordMac));
                };
                if n > MAX_PLAINTEXT {
                    return Err(Fatal::Send(Alert::RecordOverflow));
                }
                let seq = self.next_seq()?;
                let mut nonce = self.nonce(seq);
                if explicit > 0 {
                    nonce[NONCE_LEN - EXPLICIT_NONCE_LEN..]
                        .copy_from_slice(&record[HEADER_LEN..HEADER_LEN + explicit]);
                }
                let start = HEADER_LEN + explicit;
                self.key
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(tls12_aad(seq, header[0], n)),
                        &mut record[start..],
                    )
                    .map_err(|_| Fatal::Send(Alert::BadRecordMac))?;
                Ok((header[0], start, n))
            }
        }
    }
}

/// TLS 1.2's additional data (RFC 5246 §6.2.3.3): `seq_num`, type, version (1.2), length of
/// the plaintext.
fn tls12_aad(seq: u64, ty: u8, len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = ty;
    aad[9] = 3;
    aad[10] = 3;
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}

/// The header of the record at the front of `bytes`, once 5 bytes are there, checked as far as
/// it can be before the record is whole. TLS 1.3: outer type application_data (RFC 8446 §5:
/// after the handshake every record is protected; a change_cipher_spec record then is
/// `unexpected_message`), length at most 2^14 + 256 (`record_overflow`). TLS 1.2: one of the
/// four content types, length at most 2^14 + 2048.
fn check_header(bytes: &[u8], tls13: bool) -> Result<[u8; HEADER_LEN], Fatal> {
    let Some(header) = bytes.first_chunk::<HEADER_LEN>() else {
        return Err(Fatal::Send(Alert::DecodeError));
    };
    let (known, max) = if tls13 {
        (header[0] == content_type::APPLICATION_DATA, MAX_CIPHERTEXT)
    } else {
        (
            (content_type::CHANGE_CIPHER_SPEC..=content_type::APPLICATION_DATA)
                .contains(&header[0]),
            MAX_CIPHERTEXT_TLS12,
        )
    };
    if !known {
        return Err(Fatal::Send(Alert::UnexpectedMessage));
    }
    if usize::from(u16::from_be_bytes([header[3], header[4]])) > max {
        return Err(Fatal::Send(Alert::RecordOverflow));
    }
    Ok(*header)
}

/// What one [`RecordLayer::read`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadOutcome {
    /// Bytes of whole records consumed from the front of the input.
    pub discard: usize,
    /// The peer's close_notify came: its direction is over (the rest of the input is ignored).
    pub peer_closed: bool,
    /// The next record may not fit in what is left of the caller's buffer: it was left
    /// undecrypted.
    pub full: bool,
}

/// A TLS server connection after its handshake: both directions' keys and, for TLS 1.3, what
/// rustls needs to derive their successors.
pub struct RecordLayer {
    tx: TrafficKey,
    rx: TrafficKey,
    /// TLS 1.3 only: the key schedule for key updates (TLS 1.2 has none).
    kernel: Option<KernelConnection<ServerConnectionData>>,
    /// How much of a KeyUpdate message split across records came so far (RFC 8446 §5.1
    /// allows handshake messages to be fragmented): bytes of its 4-byte header, each checked
    /// as it comes, so none is kept (the fifth byte, `request_update`, ends it).
    handshake_len: u8,
    /// KeyUpdates received since the last non-empty application data record.
    key_updates: u8,
    /// The peer asked for a key update (RFC 8446 §4.6.3) and our KeyUpdate has not gone out
    /// yet: it goes before our next application data, or at the end of a read when the
    /// caller allows. Any number of requests before it are answered by that one KeyUpdate,
    /// so a client that asks again and again without reading cannot make us queue records.
    update_owed: bool,
    /// Warning alerts received (TLS 1.3: user_canceled; TLS 1.2: any warning but
    /// close_notify); more than [`MAX_WARNINGS`] close the connection, as rustls does.
    warnings: u8,
    /// Records sent under one key before we update it ourselves, or, in TLS 1.2, close (the
    /// suite's confidentiality limit, RFC 8446 §5.5: 2^24 for AES-GCM as rustls counts it).
    tx_limit: u64,
}

impl RecordLayer {
    /// The record layer from what `dangerous_into_kernel_connection()` returned.
    ///
    /// # Errors
    /// `internal_error` for keys *ring* cannot take (see [`TrafficKey::new`]).
    pub fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
    ) -> Result<RecordLayer, Fatal> {
        let version = kernel.protocol_version();
        let (tx_seq, tx) = &secrets.tx;
        let (rx_seq, rx) = &secrets.rx;
        let tx_limit = match kernel.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
        };
        Ok(RecordLayer {
            tx: TrafficKey::new(tx, *tx_seq, version)?,
            rx: TrafficKey::new(rx, *rx_seq, version)?,
            kernel: (version == ProtocolVersion::TLSv1_3).then_some(kernel),
            handshake_len: 0,
            key_updates: 0,
            update_owed: false,
            warnings: 0,
            tx_limit,
        })
    }

    /// The negotiated protocol version: TLS 1.3 or 1.2.
    pub fn protocol_version(&self) -> ProtocolVersion {
        if self.tx.scheme == Scheme::Tls13 {
            ProtocolVersion::TLSv1_3
        } else {
            ProtocolVersion::TLSv1_2
        }
    }

    /// Appends `data` to `out` as application data records of up to [`MAX_PLAINTEXT`] bytes
    /// each. In TLS 1.3 a KeyUpdate of our own goes first when the current key reached the
    /// suite's confidentiality limit; in TLS 1.2 the connection must close then.
    ///
    /// # Errors
    /// [`Fatal::Exhausted`], or a key update that fails (`internal_error`).
    pub fn seal_application_data(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), Fatal> {
        self.answer_key_update(out)?;
        for chunk in data.chunks(MAX_PLAINTEXT) {
            if self.tx.seq.saturating_add(1) >= self.tx_limit {
                if self.kernel.is_none() {
                    return Err(Fatal::Exhausted);
                }
                self.update_tx(out)?;
            }
            self.tx.seal(chunk, content_type::APPLICATION_DATA, out)?;
        }
        Ok(())
    }

    /// Appends the alert record for `alert` (level fatal; close_notify: warning) to `out`.
    ///
    /// # Errors
    /// [`Fatal::Exhausted`].
    pub fn seal_alert(&mut self, alert: Alert, out: &mut Vec<u8>) -> Result<(), Fatal> {
        let level = if alert == Alert::CloseNotify {
            WARNING
        } else {
            2
        };
        self.tx
            .seal(&[level, alert as u8], content_type::ALERT, out)
    }

    /// Appends our KeyUpdate, if the peer asked for one since the last (see `update_owed`).
    ///
    /// # Errors
    /// [`Fatal::Exhausted`], or a key update that fails (`internal_error`).
    pub fn answer_key_update(&mut self, out: &mut Vec<u8>) -> Result<(), Fatal> {
        if self.update_owed {
            self.update_owed = false;
            self.update_tx(out)?;
        }
        Ok(())
    }

    /// Sends KeyUpdate(update_not_requested) under the current key, then switches to the next
    /// one (RFC 8446 §4.6.3).
    fn update_tx(&mut self, out: &mut Vec<u8>) -> Result<(), Fatal> {
        let Some(kernel) = &mut self.kernel else {
            return Err(Fatal::Send(Alert::InternalError));
        };
        let message: [u8; KEY_UPDATE_LEN] = [KEY_UPDATE, 0, 0, 1, 0];
        self.tx.seal(&message, content_type::HANDSHAKE, out)?;
        let (seq, secrets) = kernel
            .update_tx_secret()
            .map_err(|_| Fatal::Send(Alert::InternalError))?;
        self.tx = TrafficKey::new(&secrets, seq, ProtocolVersion::TLSv1_3)?;
        Ok(())
    }

    /// Reads the whole records at the front of `incoming` (decrypting them in place):
    /// application data is appended to `buf` at `*out`; alerts and KeyUpdates are acted on.
    /// If the peer asked for a key update, our KeyUpdate (one for any number of requests) is
    /// appended to `outgoing` at the end when `may_send` (false once our close_notify went
    /// out, or while our earlier records wait for the socket: then it goes before our next
    /// application data, [`RecordLayer::seal_application_data`]). Stops at a partial record,
    /// when the next record may not fit in `buf`, or at the peer's close_notify.
    ///
    /// # Errors
    /// [`Fatal`]: the connection is over; with [`Fatal::Send`] the caller sends that alert
    /// ([`RecordLayer::seal_alert`]) after whatever is in `outgoing`.
    pub fn read(
        &mut self,
        incoming: &mut [u8],
        buf: &mut [u8],
        out: &mut usize,
        outgoing: &mut Vec<u8>,
        may_send: bool,
    ) -> Result<ReadOutcome, Fatal> {
        let done = self.read_records(incoming, buf, out)?;
        if may_send {
            self.answer_key_update(outgoing)?;
        }
        Ok(done)
    }

    /// [`RecordLayer::read`] without the answer to a KeyUpdate.
    fn read_records(
        &mut self,
        incoming: &mut [u8],
        buf: &mut [u8],
        out: &mut usize,
    ) -> Result<ReadOutcome, Fatal> {
        let tls13 = self.kernel.is_some();
        let mut done = ReadOutcome::default();
        loop {
            let rest = &mut incoming[done.discard..];
            if rest.len() < HEADER_LEN {
                return Ok(done);
            }
            let header = check_header(rest, tls13)?;
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if rest.len() < HEADER_LEN + len {
                return Ok(done);
            }
            // The content is shorter than the ciphertext by the tag at least; a first record
            // is decrypted whatever its size (the caller offers room for a whole record).
            let room = buf.len() - *out;
            if len.saturating_sub(TAG_LEN) > room && *out > 0 {
                done.full = true;
                return Ok(done);
            }
            let record = &mut rest[..HEADER_LEN + len];
            let (ty, start, n) = self.rx.open(record)?;
            done.discard += HEADER_LEN + len;
            let content = &record[start..start + n];
            if self.handshake_len > 0 && ty != content_type::HANDSHAKE {
                // A handshake message must not be interleaved with other records (§5.1).
                return Err(Fatal::Send(Alert::UnexpectedMessage));
            }
            match ty {
                content_type::APPLICATION_DATA => {
                    if n > room {
                        return Err(Fatal::Send(Alert::InternalError));
                    }
                    buf[*out..*out + n].copy_from_slice(content);
                    *out += n;
                    if n > 0 {
                        self.key_updates = 0;
                    }
                }
                content_type::ALERT => {
                    // Exactly one alert per record, never fragmented (RFC 8446 §5.1; rustls
                    // holds TLS 1.2 peers to it too).
                    let &[level, description] = content else {
                        return Err(Fatal::Send(Alert::DecodeError));
                    };
                    if description == 0 {
                        done.peer_closed = true;
                        return Ok(done);
                    }
                    // In TLS 1.3 every alert but close_notify and user_canceled is fatal
                    // whatever its level (RFC 8446 §6); in TLS 1.2 warnings are ignored and
                    // fatal ones fatal, user_canceled too (RFC 5246 §7.2, §7.2.2). Only
                    // [`MAX_WARNINGS`] are ignored.
                    let warning = if tls13 {
                        description == USER_CANCELED
                    } else {
                        level == WARNING
                    };
                    if !warning {
                        return Err(Fatal::Received(description));
                    }
                    self.warnings += 1;
                    if self.warnings > MAX_WARNINGS {
                        return Err(Fatal::Send(Alert::UnexpectedMessage));
                    }
                }
                content_type::HANDSHAKE if tls13 => {
                    let Some(request) = self.handshake_fragment(content)? else {
                        continue;
                    };
                    self.key_update(request)?;
                }
                // TLS 1.2 renegotiation is not offered; change_cipher_spec and unknown types
                // are never valid here.
                _ => return Err(Fatal::Send(Alert::UnexpectedMessage)),
            }
        }
    }

    /// Adds a handshake record's content to the message being assembled: `Some(request)`
    /// once a whole KeyUpdate is there. Anything other than a KeyUpdate (a client's
    /// NewSessionTicket, a second ClientHello…) is `unexpected_message`, as is a KeyUpdate
    /// that does not end its record (a key change must align with a record boundary, §5.1);
    /// a wrong length is `decode_error`, an empty fragment `unexpected_message`.
    fn handshake_fragment(&mut self, content: &[u8]) -> Result<Option<u8>, Fatal> {
        if content.is_empty() {
            return Err(Fatal::Send(Alert::UnexpectedMessage));
        }
        for (i, &byte) in content.iter().enumerate() {
            match KEY_UPDATE_HEADER.get(usize::from(self.handshake_len)) {
                Some(&want) if byte == want => self.handshake_len += 1,
                Some(_) if self.handshake_len == 0 => {
                    return Err(Fatal::Send(Alert::UnexpectedMessage))
                }
                Some(_) => return Err(Fatal::Send(Alert::DecodeError)),
                None => {
                    self.handshake_len = 0;
                    if i + 1 < content.len() {
                        return Err(Fatal::Send(Alert::UnexpectedMessage));
                    }
                    return Ok(Some(byte));
                }
            }
        }
        Ok(None)
    }

    /// A KeyUpdate came (RFC 8446 §4.6.3): the receive key moves on; if the peer asked, ours
    /// will too, after a KeyUpdate of ours under the old key (`update_owed`).
    fn key_update(&mut self, request: u8) -> Result<(), Fatal> {
        let requested = match request {
            0 => false,
            1 => true,
            _ => return Err(Fatal::Send(Alert::IllegalParameter)),
        };
        self.key_updates += 1;
        if self.key_updates > MAX_KEY_UPDATES {
            return Err(Fatal::Send(Alert::UnexpectedMessage));
        }
        let Some(kernel) = &mut self.kernel else {
            return Err(Fatal::Send(Alert::UnexpectedMessage));
        };
        let (seq, secrets) = kernel
            .update_rx_secret()
            .map_err(|_| Fatal::Send(Alert::InternalError))?;
        self.rx = TrafficKey::new(&secrets, seq, ProtocolVersion::TLSv1_3)?;
        self.update_owed |= requested;
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::server::UnbufferedServerConnection;
    use rustls::unbuffered::ConnectionState;
    use rustls::{ClientConfig, ClientConnection, ServerConfig};
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

    /// A server configuration with a fresh self-signed certificate for `localhost` (ECDSA
    /// P-256), secret extraction on, and a client configuration trusting it, both speaking
    /// only the protocol `version` and offering only `suites`.
    pub(in crate::tls) fn configs_for(
        suites: &[rustls::CipherSuite],
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let cert =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let der = CertificateDer::from(cert.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let mut provider = super::super::provider().as_ref().clone();
        provider
            .cipher_suites
            .retain(|s| suites.contains(&s.suite()));
        let provider = Arc::new(provider);
        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .expect("server config");
        server.enable_secret_extraction = true;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).expect("root");
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A rustls client and our record layer, handshaken in memory (rustls's unbuffered server
    /// turned into [`RecordLayer`] as the stream does it) over TLS 1.3 with `suite`; the
    /// client has read the server's session tickets.
    fn pair(suite: rustls::CipherSuite) -> (ClientConnection, RecordLayer) {
        pair_for(suite, &rustls::version::TLS13)
    }

    /// [`pair`] over the protocol `version`.
    fn pair_for(
        suite: rustls::CipherSuite,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (ClientConnection, RecordLayer) {
        let (server_config, client_config) = configs_for(&[suite], version);
        let mut client = ClientConnection::new(
            client_config,
            ServerName::try_from("localhost").expect("name"),
        )
        .expect("client");
        let mut server = UnbufferedServerConnection::new(server_config).expect("server");
        let mut to_server = Vec::new();
        let mut to_client = Vec::new();
        for _ in 0..20 {
            while client.wants_write() {
                client.write_tls(&mut to_server).expect("client write");
            }
            let mut writable = false;
            for _ in 0..20 {
                let status = server.process_tls_records(&mut to_server);
                let discard = status.discard;
                match status.state.expect("server state") {
                    ConnectionState::EncodeTlsData(mut encode) => {
                        let mut chunk = vec![0u8; 16 * 1024];
                        let n = encode.encode(&mut chunk).expect("encode");
                        to_client.extend_from_slice(&chunk[..n]);
                    }
                    ConnectionState::TransmitTlsData(t) => t.done(),
                    ConnectionState::WriteTraffic(_) => writable = true,
                    ConnectionState::BlockedHandshake => {}
                    other => panic!("server state {other:?}"),
                }
                to_server.drain(..discard);
                if writable || discard == 0 && to_server.is_empty() && !server.wants_write() {
                    break;
                }
            }
            let mut slice = &to_client[..];
            while !slice.is_empty() {
                client.read_tls(&mut slice).expect("client read");
            }
            to_client.clear();
            client.process_new_packets().expect("client process");
            if writable && !client.is_handshaking() && !server.is_handshaking() {
                assert!(to_server.is_empty());
                let (secrets, kernel) = server.dangerous_into_kernel_connection().expect("kernel");
                return (
                    client,
                    RecordLayer::new(secrets, kernel).expect("record layer"),
                );
            }
        }
        panic!("handshake did not finish");
    }

    /// What the client sends, as bytes.
    fn client_wire(client: &mut ClientConnection) -> Vec<u8> {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).expect("client write");
        }
        wire
    }

    /// Hands `wire` to the client; returns the plaintext it reads, or its error.
    fn client_reads(client: &mut ClientConnection, wire: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let mut slice = wire;
        let mut plain = Vec::new();
        for _ in 0..1000 {
            if slice.is_empty() {
                break;
            }
            client.read_tls(&mut slice).expect("client read_tls");
            client.process_new_packets()?;
            match client.reader().read_to_end(&mut plain) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("client reader: {e}"),
            }
        }
        assert!(slice.is_empty());
        Ok(plain)
    }

    /// Reads all of `wire` with a buffer of `room` bytes.
    fn server_reads(
        tls: &mut RecordLayer,
        wire: &mut [u8],
        room: usize,
    ) -> (Result<ReadOutcome, Fatal>, Vec<u8>, Vec<u8>) {
        let mut buf = vec![0u8; room];
        let mut out = 0;
        let mut outgoing = Vec::new();
        let r = tls.read(wire, &mut buf, &mut out, &mut outgoing, true);
        buf.truncate(out);
        (r, buf, outgoing)
    }

    const SUITES: [rustls::CipherSuite; 3] = [
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ];

    /// Byte for byte against rustls in both directions, for every suite: what the client
    /// encrypts we decrypt, what we encrypt the client decrypts, the session tickets rustls
    /// sent before the handover counted in our first sequence number.
    #[test]
    fn round_trips_with_rustls_in_every_suite() {
        for suite in SUITES {
            let (mut client, mut tls) = pair(suite);
            assert_eq!(
                client.negotiated_cipher_suite().map(|s| s.suite()),
                Some(suite)
            );
            assert!(tls.tx.seq() >= 1, "session tickets went out first");
            assert_eq!(tls.rx.seq(), 0);
            for size in [0usize, 1, 100, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 40_000] {
                let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
                client.writer().write_all(&data).expect("client write");
                let mut wire = client_wire(&mut client);
                let (r, got, outgoing) = server_reads(&mut tls, &mut wire, 64 * 1024);
                let r = r.expect("read");
                assert_eq!(r.discard, wire.len(), "{suite:?} {size}");
                assert!(!r.peer_closed && !r.full);
                assert_eq!(got, data, "{suite:?} {size}");
                assert!(outgoing.is_empty());

                let mut wire = Vec::new();
                tls.seal_application_data(&data, &mut wire).expect("seal");
                let records = size.div_ceil(MAX_PLAINTEXT).max(1);
                if size > 0 {
                    assert_eq!(wire.len(), size + records * OVERHEAD, "{suite:?} {size}");
                }
                assert_eq!(client_reads(&mut client, &wire).expect("client"), data);
            }
        }
    }

    /// A record from the client split at every byte across two reads is read whole once the
    /// rest comes; several records in one input are all read.
    #[test]
    fn partial_and_coalesced_records() {
        let (mut client, mut tls) = pair(SUITES[0]);
        client.writer().write_all(b"hello").expect("write");
        let wire = client_wire(&mut client);
        let mut first = wire[..7].to_vec();
        let (r, got, _) = server_reads(&mut tls, &mut first, 1024);
        assert_eq!(r.expect("partial"), ReadOutcome::default());
        assert!(got.is_empty());
        let mut whole = wire.clone();
        let (r, got, _) = server_reads(&mut tls, &mut whole, 1024);
        assert_eq!(r.expect("whole").discard, wire.len());
        assert_eq!(got, b"hello");

        for i in 0..10u8 {
            client.writer().write_all(&[b'a' + i]).expect("write");
        }
        let mut wire = client_wire(&mut client);
        let (r, got, _) = server_reads(&mut tls, &mut wire, 1024);
        assert_eq!(r.expect("ten").discard, wire.len());
        assert_eq!(got, b"abcdefghij");
    }

    /// A record that may not fit in what is left of the buffer stays undecrypted (`full`),
    /// and is read whole by the next call.
    #[test]
    fn a_record_that_may_not_fit_waits() {
        let (mut client, mut tls2) = pair(SUITES[0]);
        client.writer().write_all(&[2; 10]).expect("write");
        let mut wire = client_wire(&mut client);
        let first = wire.len();
        client.writer().write_all(&[3; 100]).expect("write");
        wire.extend(client_wire(&mut client));
        let mut buf = vec![0u8; 50];
        let mut out = 0;
        let mut outgoing = Vec::new();
        let r = tls2
            .read(&mut wire, &mut buf, &mut out, &mut outgoing, true)
            .expect("read");
        assert_eq!(r.discard, first);
        assert!(r.full);
        assert_eq!(&buf[..out], &[2; 10]);
        let mut rest = wire[first..].to_vec();
        let mut buf = vec![0u8; 200];
        let mut out = 0;
        let r = tls2
            .read(&mut rest, &mut buf, &mut out, &mut outgoing, true)
            .expect("read");
        assert_eq!(r.discard, rest.len());
        assert_eq!(&buf[..out], &[3; 100]);
    }

    /// A record sealed by `key` with inner plaintext `inner` (content, type, padding).
    fn raw_record(key: &mut TrafficKey, inner: &[u8]) -> Vec<u8> {
        let len = inner.len() + TAG_LEN;
        let [hi, lo] = (len as u16).to_be_bytes();
        let header = [content_type::APPLICATION_DATA, 3, 3, hi, lo];
        let mut record = header.to_vec();
        record.extend_from_slice(inner);
        let seq = key.next_seq().expect("seq");
        let nonce = key.nonce(seq);
        let tag = key
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(header),
                &mut record[HEADER_LEN..],
            )
            .expect("seal");
        record.extend_from_slice(tag.as_ref());
        record
    }

    /// Our sending key and a receiving key with the same secrets: records we make up are
    /// read by `rx` as a peer's would be.
    fn twin_keys() -> (TrafficKey, RecordLayer) {
        let (_, tls) = pair(SUITES[0]);
        twin_keys_with(tls, [7; 32])
    }

    /// `tls` reading under an AES-256-GCM key made from `seed`, and a sending key with the
    /// same secrets (for `tls`'s protocol version).
    fn twin_keys_with(mut tls: RecordLayer, seed: [u8; 32]) -> (TrafficKey, RecordLayer) {
        let version = tls.protocol_version();
        let secrets = ConnectionTrafficSecrets::Aes256Gcm {
            key: rustls::crypto::cipher::AeadKey::from(seed),
            iv: rustls::crypto::cipher::Iv::from([9u8; NONCE_LEN]),
        };
        tls.rx = TrafficKey::new(&secrets, 0, version).expect("rx");
        tls.handshake_len = 0;
        tls.key_updates = 0;
        tls.update_owed = false;
        tls.warnings = 0;
        (TrafficKey::new(&secrets, 0, version).expect("peer"), tls)
    }

    #[test]
    fn padding_is_stripped_and_an_all_zero_record_is_unexpected() {
        let (mut peer, mut tls) = twin_keys();
        let mut wire = raw_record(&mut peer, b"padded\x17\0\0\0\0\0\0\0\0");
        wire.extend(raw_record(&mut peer, b"\x17"));
        wire.extend(raw_record(&mut peer, b"x\x17\0"));
        let (r, got, _) = server_reads(&mut tls, &mut wire, 1024);
        assert_eq!(r.expect("read").discard, wire.len());
        assert_eq!(got, b"paddedx");

        let mut wire = raw_record(&mut peer, &[0; 40]);
        let (r, _, _) = server_reads(&mut tls, &mut wire, 1024);
        assert_eq!(r, Err(Fatal::Send(Alert::UnexpectedMessage)));
    }

    #[test]
    fn a_tampered_record_is_bad_record_mac() {
        for at in [0usize, 3, 19] {
            let (mut peer, mut tls) = twin_keys();
            let mut wire = raw_record(&mut peer, b"hello\x17");
            let last = wire.len() - 1 - at;
            wire[last] ^= 1;
            let (r, got, _) = server_reads(&mut tls, &mut wire, 1024);
            assert_eq!(r, Err(Fatal::Send(Alert::BadRecordMac)), "byte {last}");
            assert!(got.is_empty());
        }
        // Too short to hold a tag and a content type.
        let (_, mut tls) = twin_keys();
        let mut wire = vec![23, 3, 3, 0, 16];
        wire.extend([0; 16]);
        let (r, _, _) = server_reads(&mut tls, &mut wire, 1024);
        assert_eq!(r, Err(Fatal::Send(Alert::BadRecordMac)));
        // A record under a wrong key (the sequence number out of step).
        let (mut peer, mut tls) = twin_keys();
        let _skipped = raw_record(&mut peer, b"one\x17");
        let mut wire = raw_record(&mut peer, b"two\x17");
        let (r, _, _) = server_reads(&mut tls, &mut wire, 1024);
        assert_eq!(r, Err(Fatal::Send(Alert::BadRecordMac)));
    }

    #[test]
    fn oversize_records_are_record_overflow() {
        // A header announcing more than 2^14 + 256 is refused before the body comes.
        let (_, mut tls) = twin_keys();
        let mut wire = vec![23, 3, 3, 0x41, 0x01];
        let (r, _, _) = server_reads(&mut tls, &mut wire, 64 * 1024);
        assert_eq!(r, Err(Fatal::Send(Alert::RecordOverflow)));
        // A record within that length whose inner plaintext exceeds 2^14 + 1 (padding).
        let (mut peer, mut tls) = twin_keys();
        let mut inner = vec![b'a'; 10];
        inner.push(23);
        inner.resize(MAX_INNER_PLAINTEXT + 1, 0);
        let mut wire = raw_record(&mut peer, &inner);
        let (r, _, _) = server_reads(&mut tls, &mut wire, 64 * 1024);
        assert_eq!(r, Err(Fatal::Send(Alert::RecordOverflow)));
        // Exactly 2^14 + 1 is fine.
        let (mut peer, mut tls) = twin_keys();
        let mut inner = vec![b'a'; MAX_PLAINTEXT];
        inner.push(23);
        let mut wire = raw_record(&mut peer, &inner);
        let (r, got, _) = server_reads(&mut tls, &mut wire, 64 * 1024);
        assert_eq!(r.expect("max").discard, wire.len());
        assert_eq!(got.len(), MAX_PLAINTEXT);
    }

    #[test]
    fn content_types_after_the_handshake() {
        // Outer types other than application_data (a change_cipher_spec, a plaintext alert).
        for outer in [20u8, 21, 22, 24, 0] {
            let (_, mut tls) = twin_keys();
            let mut wire = vec![outer, 3, 3, 0, 1, 1];
            let (r, _, _) = server_reads(&mut tls, &mut wire, 1024);
            assert_eq!(r, Err(Fatal::Send(Alert::UnexpectedMessage)), "{outer}");
        }
        // Inner types: change_cipher_spec and unknown ones are unexpected.
        for inner in [20u8, 24, 99] {
            let (mut peer, mut tls) = twin_keys();
            let mut wire = raw_record(&mut peer, &[1, inner]);
            let (r, _, _) = server_reads(&mut tls, &mut wire, 1024);
            assert_eq!(r, Err(Fatal::Send(Alert::UnexpectedMessage)), "{inner}");
        }
        // close_notify ends the input; what follows is not read.
        let (mut peer, mut tls) = twin_keys();
        let mut wire = raw_record(&mut peer, b"bye\x17");
        wire.extend(raw_record(&mut peer, &[1, 0, 21]));
        let tail = raw_record(&mut peer, b"late\x17");
        let closed_at = wire.len();
        wire.extend(tail);
        let (r, got, _) = server_reads(&mut tls, &mut wire, 1024);
        let r = r.expect("close");
        assert!(r.peer_closed);
        assert_eq!(r.discard, closed_at);
        assert_eq!(got, b"bye");
        // user_canceled is ignored; another alert is fatal, received; a malformed one is a
        // decode error.
        let (mut peer, mut tls) = twin_keys();
        let mut wire = raw_record(&mut peer, &[1, 90, 21]);
        wire.extend(raw_record(&mut peer, &[2, 42, 21]));
        let (r, _, _) = server_reads(&mut tls, &mut wire, 1024);
        assert_eq!(r, Err(Fatal::Received(42)));
        for body in [&[21u8][..], &[2, 0, 0, 21], &[2, 0, 2, 0, 21]] {
            let (mut peer, mut tls) = twin_keys();
            let mut wire = raw_record(&mut peer, body);
            let (r, _, _) = server_reads(&mut tls, &mut wire, 1024);
            assert_eq!(r, Err(Fatal::Send(Alert::DecodeError)), "{body:?}");
        }
        // Handshake messages other than KeyUpdate (a NewSessionTicket, a ClientHello), a
        // KeyUpdate with a wrong length or request, an empty handshake record.
        let cases: [(&[u8], Alert); 6] = [
            (&[4, 0, 0, 0, 22], Alert::UnexpectedMessage),
            (&[1, 0, 0, 0, 22], Alert::UnexpectedMessage),
            (&[24, 0, 0, 2, 0, 0, 22], Alert::DecodeError),
            (&[24, 0, 0, 1, 2, 22], Alert::IllegalParameter),
            (&[22], Alert::UnexpectedMessage),
            // Two KeyUpdates in one record: the first does not end it.
            (
                &[24, 0, 0, 1, 0, 24, 0, 0, 1, 0, 22],
                Alert::UnexpectedMessage,
            ),
        ];
        for (body, alert) in cases {
            let (mut peer, mut tls) = twin_keys();
            let mut wire = raw_record(&mut peer, body);
            let (r, _, _) = server_reads(&mut tls, &mut wire, 1024);
            assert_eq!(r, Err(Fatal::Send(alert)), "{body:?}");
        }
        // A KeyUpdate fragment followed by application data (interleaved, §5.1).
        let (mut peer, mut tls) = twin_keys();
        let mut wire = raw_record(&mut peer, &[24, 0, 22]);
        wire.extend(raw_record(&mut peer, b"x\x17"));
        let (r, _, _) = server_reads(&mut tls, &mut wire, 1024);
        assert_eq!(r, Err(Fatal::Send(Alert::UnexpectedMessage)));
    }

    /// The client asks for a key update: we read on under its new key, answer with our own
    /// KeyUpdate under the old key, and the client reads what we send after it.
    #[test]
    fn a_requested_key_update_is_answered() {
        for suite in SUITES {
            let (mut client, mut tls) = pair(suite);
            let tx_before = tls.tx.seq();
            client.refresh_traffic_keys().expect("refresh");
            client.writer().write_all(b"after").expect("write");
            let mut wire = client_wire(&mut client);
            let (r, got, outgoing) = server_reads(&mut tls, &mut wire, 1024);
            assert_eq!(r.expect("read").discard, wire.len());
            assert_eq!(got, b"after");
            assert_eq!(outgoing.len(), KEY_UPDATE_LEN + OVERHEAD, "our KeyUpdate");
            assert_eq!(tls.tx.seq(), 0, "new key (was at {tx_before})");
            let mut wire = outgoing;
            tls.seal_application_data(b"echo", &mut wire).expect("seal");
            assert_eq!(client_reads(&mut client, &wire).expect("client"), b"echo");
        }
    }

    /// A KeyUpdate split over two records (and then one per byte) is assembled.
    #[test]
    fn a_fragmented_key_update_is_assembled() {
        let (mut peer, mut tls) = twin_keys();
        let mut wire = raw_record(&mut peer, &[24, 0, 22]);
        wire.extend(raw_record(&mut peer, &[0, 1, 0, 22]));
        let (r, _, outgoing) = server_reads(&mut tls, &mut wire, 1024);
        assert_eq!(r.expect("read").discard, wire.len());
        assert!(outgoing.is_empty(), "not requested");
        assert_eq!(tls.rx.seq(), 0, "receive key changed");
        assert_eq!(tls.key_updates, 1);

        let (mut peer, mut tls) = twin_keys();
        let mut wire = Vec::new();
        for b in [24u8, 0, 0, 1, 1] {
            wire.extend(raw_record(&mut peer, &[b, 22]));
        }
        let (r, _, outgoing) = server_reads(&mut tls, &mut wire, 1024);
        assert_eq!(r.expect("read").discard, wire.len());
        assert_eq!(
            outgoing.len(),
            KEY_UPDATE_LEN + OVERHEAD,
            "requested: answered"
        );
    }

    /// Requests for a key update are answered by one KeyUpdate of ours however many came
    /// (RFC 8446 §4.6.3: before our next application data); held back when the caller may
    /// not send, it goes before our next data, and the client reads that data.
    #[test]
    fn key_update_requests_are_answered_once() {
        let (mut client, mut tls) = pair(SUITES[0]);
        for _ in 0..3 {
            client.refresh_traffic_keys().expect("refresh");
            client.writer().write_all(b"x").expect("write");
        }
        let mut wire = client_wire(&mut client);
        let (r, got, outgoing) = server_reads(&mut tls, &mut wire, 1024);
        assert_eq!(r.expect("read").discard, wire.len());
        assert_eq!(got, b"xxx");
        assert_eq!(outgoing.len(), KEY_UPDATE_LEN + OVERHEAD, "one KeyUpdate");
        let mut wire = outgoing;
        tls.seal_application_data(b"one", &mut wire).expect("seal");
        assert_eq!(client_reads(&mut client, &wire).expect("client"), b"one");

        // Not allowed to send now: nothing goes out until our next data, which it precedes.
        client.refresh_traffic_keys().expect("refresh");
        client.writer().write_all(b"y").expect("write");
        let mut wire = client_wire(&mut client);
        let mut buf = [0u8; 64];
        let mut out = 0;
        let mut outgoing = Vec::new();
        tls.read(&mut wire, &mut buf, &mut out, &mut outgoing, false)
            .expect("read");
        assert!(outgoing.is_empty());
        let mut wire = Vec::new();
        tls.seal_application_data(b"two", &mut wire).expect("seal");
        assert_eq!(wire.len(), KEY_UPDATE_LEN + 3 + 2 * OVERHEAD);
        assert_eq!(tls.tx.seq(), 1, "data under the new key");
        assert_eq!(client_reads(&mut client, &wire).expect("client"), b"two");
        let mut wire = Vec::new();
        tls.seal_application_data(b"three", &mut wire)
            .expect("seal");
        assert_eq!(wire.len(), 5 + OVERHEAD, "answered once");
    }

    /// Warning alerts (TLS 1.3: user_canceled at any level; TLS 1.2: level warning) are
    /// ignored up to [`MAX_WARNINGS`], then the connection closes; a TLS 1.2 user_canceled
    /// of level fatal is fatal.
    #[test]
    fn warning_alerts_are_bounded() {
        let (mut peer, mut tls) = twin_keys();
        let mut wire = Vec::new();
        for _ in 0..MAX_WARNINGS {
            wire.extend(raw_record(&mut peer, &[1, 90, 21]));
            wire.extend(raw_record(&mut peer, b"data\x17"));
        }
        let (r, got, _) = server_reads(&mut tls, &mut wire, 1024);
        assert_eq!(r.expect("within the limit").discard, wire.len());
        assert_eq!(got.len(), 4 * usize::from(MAX_WARNINGS));
        let mut wire = raw_record(&mut peer, &[2, 90, 21]);
        let (r, _, _) = server_reads(&mut tls, &mut wire, 1024);
        assert_eq!(r, Err(Fatal::Send(Alert::UnexpectedMessage)));

        let (mut peer, mut tls) = twin_keys_tls12();
        let mut wire = Vec::new();
        for d in [90u8, 100, 90, 41] {
            wire.extend(raw_record_tls12(&mut peer, 21, &[1, d]));
        }
        let (r, _, _) = server_reads(&mut tls, &mut wire, 1024);
        assert_eq!(r.expect("within the limit").discard, wire.len());
        let mut wire = raw_record_tls12(&mut peer, 21, &[1, 90]);
        let (r, _, _) = server_reads(&mut tls, &mut wire, 1024);
        assert_eq!(r, Err(Fatal::Send(Alert::UnexpectedMessage)));

        let (mut peer, mut tls) = twin_keys_tls12();
        let mut wire = raw_record_tls12(&mut peer, 21, &[2, 90]);
        let (r, _, _) = server_reads(&mut tls, &mut wire, 1024);
        assert_eq!(r, Err(Fatal::Received(90)));
    }

    /// More than [`MAX_KEY_UPDATES`] KeyUpdates with no data between close the connection;
    /// data between them resets the count.
    #[test]
    fn a_key_update_flood_is_refused() {
        let (mut client, mut tls) = pair(SUITES[0]);
        for _ in 0..3 {
            for _ in 0..MAX_KEY_UPDATES {
                client.refresh_traffic_keys().expect("refresh");
                client.writer().write_all(b"").expect("write");
                let mut wire = client_wire(&mut client);
                let (r, _, _) = server_reads(&mut tls, &mut wire, 1024);
                r.expect("within the limit");
            }
            client.writer().write_all(b"data").expect("write");
            let mut wire = client_wire(&mut client);
            let (r, got, _) = server_reads(&mut tls, &mut wire, 1024);
            r.expect("data");
            assert_eq!(got, b"data");
        }
        let mut result = Ok(ReadOutcome::default());
        for _ in 0..=MAX_KEY_UPDATES {
            client.refresh_traffic_keys().expect("refresh");
            let mut wire = client_wire(&mut client);
            result = server_reads(&mut tls, &mut wire, 1024).0;
        }
        assert_eq!(result, Err(Fatal::Send(Alert::UnexpectedMessage)));
    }

    /// Sequence numbers never wrap: the last one is refused in both directions; sending
    /// updates the key itself at the suite's confidentiality limit, which rustls follows.
    #[test]
    fn sequence_numbers_never_wrap() {
        let (mut peer, mut tls) = twin_keys();
        peer.seq = u64::MAX - 1;
        tls.rx.seq = u64::MAX - 1;
        let mut wire = raw_record(&mut peer, b"last\x17");
        let (r, got, _) = server_reads(&mut tls, &mut wire, 1024);
        assert_eq!(r.expect("last usable").discard, wire.len());
        assert_eq!(got, b"last");
        assert_eq!(tls.rx.seq(), u64::MAX);
        let mut wire = vec![23, 3, 3, 0, 20];
        wire.extend([0; 20]);
        let (r, _, _) = server_reads(&mut tls, &mut wire, 1024);
        assert_eq!(r, Err(Fatal::Exhausted));
        assert_eq!(peer.seal(b"x", 23, &mut Vec::new()), Err(Fatal::Exhausted));

        // ChaCha20-Poly1305's limit is 2^64 − 1: the key is updated just before it.
        let (mut client, mut tls) = pair(SUITES[2]);
        assert_eq!(tls.tx_limit, u64::MAX);
        tls.tx.seq = u64::MAX - 3;
        let mut wire = Vec::new();
        tls.seal_application_data(b"a", &mut wire).expect("a");
        tls.seal_application_data(b"b", &mut wire).expect("b");
        assert_eq!(tls.tx.seq(), u64::MAX - 1);
        tls.seal_application_data(b"c", &mut wire).expect("c");
        assert_eq!(
            tls.tx.seq(),
            1,
            "a KeyUpdate went out as record 2^64 - 2, then c"
        );
        // The client's own record counter cannot be forced: only our side is checked against
        // it, the AES-GCM limit below with the client reading.
        let _ = client_reads(&mut client, &wire);

        let (mut client, mut tls) = pair(SUITES[0]);
        assert_eq!(tls.tx_limit, 1 << 24);
        let mut wire = Vec::new();
        tls.seal_application_data(b"before", &mut wire)
            .expect("before");
        assert_eq!(client_reads(&mut client, &wire).expect("client"), b"before");
    }

    /// Random bytes, random records under the right key, and mutations of valid input never
    /// panic; every outcome is a value.
    #[test]
    fn garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        // One TLS 1.3 and one TLS 1.2 layer, taking turns (a handshake each, once).
        let mut bases = [
            Some(pair(SUITES[0]).1),
            Some(pair_for(SUITES_TLS12[0], &rustls::version::TLS12).1),
        ];
        for round in 0..4000 {
            let slot = &mut bases[round % 2];
            let Some(base) = slot.take() else { break };
            let (mut peer, mut layer) = twin_keys_with(base, rng.random());
            let mut wire = match round / 2 % 4 {
                0 => (0..rng.random_range(0..300))
                    .map(|_| rng.random())
                    .collect(),
                1 => {
                    // Well-protected records of any type and content (TLS 1.3: padding and
                    // inner type are whatever the random bytes end with).
                    let mut w = Vec::new();
                    for _ in 0..rng.random_range(1..5) {
                        let inner: Vec<u8> =
                            (0..rng.random_range(0..12)).map(|_| rng.random()).collect();
                        let ty = rng.random_range(19..=25);
                        if layer.protocol_version() == ProtocolVersion::TLSv1_3 {
                            w.extend(raw_record(&mut peer, &inner));
                        } else {
                            peer.seal(&inner, ty, &mut w).expect("seal");
                        }
                    }
                    w
                }
                2 => {
                    let mut w = Vec::new();
                    peer.seal(b"ok", 23, &mut w).expect("seal");
                    let at = rng.random_range(0..w.len());
                    w[at] = rng.random();
                    w
                }
                _ => {
                    // Valid records cut anywhere.
                    let mut w = Vec::new();
                    peer.seal(&[9; 40], 23, &mut w).expect("seal");
                    peer.seal(&[8; 3], 23, &mut w).expect("seal");
                    w.truncate(rng.random_range(0..w.len()));
                    w
                }
            };
            let room = rng.random_range(1..2048);
            let mut buf = vec![0u8; room];
            let mut out = 0;
            let mut outgoing = Vec::new();
            if let Ok(r) = layer.read(&mut wire, &mut buf, &mut out, &mut outgoing, true) {
                assert!(r.discard <= wire.len());
                assert!(out <= room);
            }
            *slot = Some(layer);
        }
    }

    const SUITES_TLS12: [rustls::CipherSuite; 3] = [
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ];

    /// TLS 1.2 byte for byte against rustls in every AEAD suite (RFC 5288's explicit nonce for
    /// AES-GCM, RFC 7905's implicit one for ChaCha20-Poly1305), both ways; no key schedule is
    /// kept.
    #[test]
    fn tls12_round_trips_with_rustls_in_every_suite() {
        for suite in SUITES_TLS12 {
            let (mut client, mut tls) = pair_for(suite, &rustls::version::TLS12);
            assert_eq!(
                client.negotiated_cipher_suite().map(|s| s.suite()),
                Some(suite)
            );
            assert_eq!(tls.protocol_version(), ProtocolVersion::TLSv1_2);
            assert!(tls.kernel.is_none());
            // Our Finished and the client's were the first records under these keys.
            assert_eq!((tls.tx.seq(), tls.rx.seq()), (1, 1));
            let explicit = if suite == SUITES_TLS12[2] { 0 } else { 8 };
            for size in [0usize, 1, 100, MAX_PLAINTEXT, 40_000] {
                let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
                client.writer().write_all(&data).expect("client write");
                let mut wire = client_wire(&mut client);
                let (r, got, outgoing) = server_reads(&mut tls, &mut wire, 64 * 1024);
                assert_eq!(r.expect("read").discard, wire.len(), "{suite:?} {size}");
                assert_eq!(got, data, "{suite:?} {size}");
                assert!(outgoing.is_empty());

                let mut wire = Vec::new();
                tls.seal_application_data(&data, &mut wire).expect("seal");
                if size > 0 {
                    let records = size.div_ceil(MAX_PLAINTEXT);
                    let per_record = HEADER_LEN + explicit + TAG_LEN;
                    assert_eq!(wire.len(), size + records * per_record, "{suite:?} {size}");
                }
                assert_eq!(client_reads(&mut client, &wire).expect("client"), data);
            }
            // Our close_notify is understood.
            let mut wire = Vec::new();
            tls.seal_alert(Alert::CloseNotify, &mut wire)
                .expect("alert");
            client_reads(&mut client, &wire).expect("client");
            let mut rest = [0u8; 8];
            assert_eq!(client.reader().read(&mut rest).expect("clean close"), 0);
        }
    }

    /// A TLS 1.2 record sealed by `key` as a peer would, of type `ty`.
    fn raw_record_tls12(key: &mut TrafficKey, ty: u8, content: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        key.seal(content, ty, &mut wire).expect("seal");
        wire
    }

    /// Twin TLS 1.2 AES-256-GCM keys (see [`twin_keys`]).
    fn twin_keys_tls12() -> (TrafficKey, RecordLayer) {
        let (_, tls) = pair_for(SUITES_TLS12[0], &rustls::version::TLS12);
        twin_keys_with(tls, [5; 32])
    }

    #[test]
    fn tls12_content_types_and_limits() {
        // Warnings are ignored, close_notify ends the input.
        let (mut peer, mut tls) = twin_keys_tls12();
        let mut wire = raw_record_tls12(&mut peer, 23, b"one");
        wire.extend(raw_record_tls12(&mut peer, 21, &[1, 100]));
        wire.extend(raw_record_tls12(&mut peer, 23, b"two"));
        wire.extend(raw_record_tls12(&mut peer, 21, &[1, 0]));
        let (r, got, _) = server_reads(&mut tls, &mut wire, 1024);
        assert!(r.expect("read").peer_closed);
        assert_eq!(got, b"onetwo");
        // A fatal alert; a renegotiation; a change_cipher_spec; an unknown type.
        let cases: [(u8, &[u8], Fatal); 4] = [
            (21, &[2, 40], Fatal::Received(40)),
            (22, &[1, 0, 0, 0], Fatal::Send(Alert::UnexpectedMessage)),
            (20, &[1], Fatal::Send(Alert::UnexpectedMessage)),
            (24, &[1], Fatal::Send(Alert::UnexpectedMessage)),
        ];
        for (ty, body, fatal) in cases {
            let (mut peer, mut tls) = twin_keys_tls12();
            let mut wire = raw_record_tls12(&mut peer, ty, body);
            let (r, _, _) = server_reads(&mut tls, &mut wire, 1024);
            assert_eq!(r, Err(fatal), "{ty} {body:?}");
        }
        // A damaged record (the explicit nonce, the ciphertext, the tag).
        for at in [HEADER_LEN, HEADER_LEN + 9, HEADER_LEN + 8 + 3 + 15] {
            let (mut peer, mut tls) = twin_keys_tls12();
            let mut wire = raw_record_tls12(&mut peer, 23, b"abc");
            wire[at] ^= 0x80;
            let (r, _, _) = server_reads(&mut tls, &mut wire, 1024);
            assert_eq!(r, Err(Fatal::Send(Alert::BadRecordMac)), "byte {at}");
        }
        // Lengths: over 2^14 + 2048 announced; under a nonce and a tag.
        let (_, mut tls) = twin_keys_tls12();
        let mut wire = vec![23, 3, 3, 0x48, 0x01];
        let (r, _, _) = server_reads(&mut tls, &mut wire, 1024);
        assert_eq!(r, Err(Fatal::Send(Alert::RecordOverflow)));
        let mut wire = vec![23, 3, 3, 0, 23];
        wire.extend([0; 23]);
        let (r, _, _) = server_reads(&mut tls, &mut wire, 1024);
        assert_eq!(r, Err(Fatal::Send(Alert::BadRecordMac)));
        // The confidentiality limit closes a TLS 1.2 connection (there is no key update).
        let (_, mut tls) = twin_keys_tls12();
        tls.tx.seq = tls.tx_limit - 1;
        assert_eq!(
            tls.seal_application_data(b"x", &mut Vec::new()),
            Err(Fatal::Exhausted)
        );
    }

    /// What an idle connection's record layer costs, printed for BENCHMARKS.md.
    #[test]
    fn sizes() {
        eprintln!(
            "RecordLayer = {}, TrafficKey = {}, LessSafeKey = {}, KernelConnection = {}",
            std::mem::size_of::<RecordLayer>(),
            std::mem::size_of::<TrafficKey>(),
            std::mem::size_of::<LessSafeKey>(),
            std::mem::size_of::<KernelConnection<ServerConnectionData>>()
        );
        assert!(std::mem::size_of::<RecordLayer>() < 2048);
    }
}
