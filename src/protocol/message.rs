//! From bytes to messages (RFC 6455 §5.4, §5.5, §8.1): frame decoding with the rules that depend
//! on our role and limits, unmasking, reassembly of fragments with control frames interleaved,
//! and incremental UTF-8 validation.
//!
//! The decoder borrows the caller's input buffer and unmasks in place, so the common case — a
//! whole unfragmented frame in one read — is delivered as a slice of that buffer with no copy
//! and no allocation. Only a message that spans reads or fragments is copied into a buffer the
//! decoder owns, grown as bytes arrive (never reserved from the announced length), and freed
//! once the message is delivered. An idle decoder is one null pointer.
//!
//! The driver calls [`Decoder::decode`] in a loop:
//! ```text
//! let mut pos = 0;
//! loop {
//!     let step = decoder.decode(&mut buf[pos..], &config)?;   // Err: close with err.close_code()
//!     pos += step.consumed;
//!     match step.event {
//!         Some(event) => handle(event),                       // Ping: queue the pong, etc.
//!         None if step.consumed == 0 => break,                // need more input
//!         None => {}                                          // progress, keep going
//!     }
//! }
//! // buf[pos..] is an unfinished header or control frame (at most 139 bytes): keep it and
//! // put it in front of the next read.
//! ```

use crate::protocol::close::{parse_close_payload, CloseFrame};
use crate::protocol::deflate::{InflateError, Inflater, Lease};
use crate::protocol::error::ProtocolError;
use crate::protocol::frame::{FrameHeader, OpCode};
use crate::protocol::mask::apply_mask;
use crate::protocol::utf8::Utf8Validator;

/// Which end of the connection we are: servers require masked frames, clients refuse them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We accepted the connection: every incoming frame must be masked
    /// ([`ProtocolError::UnmaskedFrame`] otherwise, §5.1).
    Server,
    /// We opened the connection (the tests' client, the load generator): no incoming frame may
    /// be masked ([`ProtocolError::MaskedFrame`] otherwise, §5.1).
    Client,
}

/// What the decoder enforces; passed on every call so that it is not stored per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Our end of the connection, which decides the masking rule (§5.1).
    pub role: Role,
    /// The largest message, counted across all its fragments (§10.4). Refused from the header.
    pub max_message_size: usize,
}

/// A data message's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// UTF-8, already validated.
    Text,
    /// Arbitrary bytes (opcode 0x2), not inspected.
    Binary,
}

/// Something the peer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete data message.
    Message {
        /// Text or binary, from the opcode of the message's first frame (§5.6).
        kind: MessageKind,
        /// The unmasked payload of all fragments in order: a slice of the input for a whole
        /// unfragmented frame, else of the decoder's own buffer (valid until the next call).
        data: &'a [u8],
    },
    /// The driver owes a Pong with the same payload (§5.5.2).
    Ping(&'a [u8]),
    /// May be unsolicited; nothing is owed (§5.5.3).
    Pong(&'a [u8]),
    /// The peer's Close, already validated (§5.5.1, §7.4).
    Close(Option<CloseFrame<'a>>),
}

/// The result of one [`Decoder::decode`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Step<'a> {
    /// Bytes of the input that are done with.
    pub consumed: usize,
    /// What the consumed bytes completed, if anything; `None` with `consumed == 0` means the
    /// input holds no complete header (or control frame) yet: read more.
    pub event: Option<Event<'a>>,
    /// The message in `event` had RSV1 on its first frame (permessage-deflate, RFC 7692 §6).
    /// From [`Decoder::decode_with`] its data is still compressed and its UTF-8 unchecked
    /// (the caller inflates, then checks); from [`Decoder::decode_inflating`] it is already
    /// inflated and checked.
    pub compressed: bool,
}

/// The per-connection decoding state: empty (one pointer) between messages.
#[derive(Debug, Default)]
pub struct Decoder {
    partial: Option<Box<Partial>>,
}

#[derive(Debug, Default)]
struct Partial {
    /// A data frame whose payload is still arriving.
    frame: Option<PayloadProgress>,
    /// The message being assembled.
    message: Option<Assembly>,
    /// The assembled message was handed out; it is dropped on the next call.
    delivered: bool,
}

#[derive(Debug)]
struct PayloadProgress {
    remaining: u64,
    key: Option<[u8; 4]>,
    /// Payload bytes already unmasked: the key's phase (§5.3).
    offset: usize,
    fin: bool,
}

#[derive(Debug)]
struct Assembly {
    kind: MessageKind,
    /// RSV1 was set on the first frame: the data is deflated; UTF-8 is checked after inflating.
    compressed: bool,
    /// Payload bytes received so far (compressed ones for a compressed message): what the
    /// §10.4 limit counts, whether they are kept or not.
    received: u64,
    /// The payload so far; stays empty for a message inflated as it arrives.
    data: Vec<u8>,
    utf8: Utf8Validator,
    /// A compressed message inflated as it arrives holds the worker's streaming inflater.
    lease: Option<Lease>,
}

impl Decoder {
    /// An idle decoder, between messages; it allocates nothing until a message spans calls.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no message is in progress: the decoder holds no heap memory.
    pub fn is_idle(&self) -> bool {
        self.partial.is_none()
    }

    /// Bytes of an unfinished message held by the decoder.
    pub fn buffered(&self) -> usize {
        self.partial
            .as_ref()
            .and_then(|p| p.message.as_ref())
            .map_or(0, |m| m.data.len())
    }

    /// Decodes from the start of `input`, unmasking in place. See the module docs for the loop
    /// a driver runs. After an error the decoder's state is meaningless: fail the connection.
    /// With no extension negotiated: any RSV bit is an error (§5.2).
    pub fn decode<'a>(
        &'a mut self,
        input: &'a mut [u8],
        config: &DecoderConfig,
    ) -> Result<Step<'a>, ProtocolError> {
        self.decode_with(input, config, false)
    }

    /// [`Decoder::decode`] on a connection that may have negotiated permessage-deflate: when
    /// `permessage_deflate`, RSV1 is allowed on the first frame of a data message (RFC 7692
    /// §6.1; never on a continuation or control frame) and marks it compressed
    /// ([`Step::compressed`]). The size limit then applies to the compressed size.
    pub fn decode_with<'a>(
        &'a mut self,
        input: &'a mut [u8],
        config: &DecoderConfig,
        permessage_deflate: bool,
    ) -> Result<Step<'a>, ProtocolError> {
        self.decode_inner(input, config, permessage_deflate, None)
    }

    /// [`Decoder::decode`] on a connection that negotiated permessage-deflate, inflating
    /// compressed messages with the worker's `inflater` (lend the same one on every call) as
    /// their bytes arrive: the message is delivered inflated, its text checked as UTF-8 as it
    /// is produced. The compressed bytes are never kept, except those of a message that spans
    /// reads while another connection holds the streaming inflater (see [`Inflater`]). Errors
    /// come as soon as the bytes read show them: [`ProtocolError::InflatedTooBig`] once the
    /// output passes `max_message_size`, [`ProtocolError::BadCompressedData`],
    /// [`ProtocolError::InvalidUtf8`]. The compressed size is limited too, from the header.
    pub fn decode_inflating<'a>(
        &'a mut self,
        input: &'a mut [u8],
        config: &DecoderConfig,
        inflater: &'a mut Inflater,
    ) -> Result<Step<'a>, ProtocolError> {
        self.decode_inner(input, config, true, Some(inflater))
    }

    fn decode_inner<'a>(
        &'a mut self,
        input: &'a mut [u8],
        config: &DecoderConfig,
        permessage_deflate: bool,
        mut inflater: Option<&'a mut Inflater>,
    ) -> Result<Step<'a>, ProtocolError> {
        if let Some(inflater) = inflater.as_deref_mut() {
            // The last message's output has been used: a large one's buffer goes.
            inflater.trim();
        }
        if let Some(partial) = self.partial.as_deref_mut() {
            if partial.delivered {
                partial.message = None;
                partial.delivered = false;
            }
            if partial.frame.is_some() {
                return self.continue_payload(input, 0, config, inflater);
            }
            if partial.message.is_none() {
                self.partial = None;
            }
        }

        let Some((header, header_len)) = FrameHeader::parse(input)? else {
            return Ok(Step {
                consumed: 0,
                event: None,
                compressed: false,
            });
        };
        match (config.role, header.mask) {
            (Role::Server, None) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, Some(_)) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        let first_data_frame = matches!(header.opcode, OpCode::Text | OpCode::Binary);
        let rsv1_allowed = if permessage_deflate && first_data_frame {
            0b100
        } else {
            0
        };
        if header.rsv & !rsv1_allowed != 0 {
            return Err(ProtocolError::ReservedBits(header.rsv));
        }
        let compressed = header.rsv & 0b100 != 0;

        if header.opcode.is_control() {
            // At most 125 bytes (checked by the header parser): wait for the whole frame.
            let total = header_len + header.payload_len as usize;
            let Some(payload) = input.get_mut(header_len..total) else {
                return Ok(Step {
                    consumed: 0,
                    event: None,
                    compressed: false,
                });
            };
            if let Some(key) = header.mask {
                apply_mask(payload, key, 0);
            }
            let payload: &'a [u8] = payload;
            let event = match header.opcode {
                OpCode::Ping => Event::Ping(payload),
                OpCode::Pong => Event::Pong(payload),
                _ => Event::Close(parse_close_payload(payload)?),
            };
            return Ok(Step {
                consumed: total,
                event: Some(event),
                compressed: false,
            });
        }

        let in_message = self.buffered_message().is_some();
        let so_far = self.buffered_message().map_or(0, |m| m.received);
        let kind = match (header.opcode, in_message) {
            (OpCode::Continuation, false) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, true) => {
                return Err(ProtocolError::ExpectedContinuation)
            }
            (OpCode::Text, false) => Some(MessageKind::Text),
            (OpCode::Binary, false) => Some(MessageKind::Binary),
            _ => None,
        };
        let size = so_far.saturating_add(header.payload_len);
        if size > config.max_message_size as u64 {
            return Err(ProtocolError::MessageTooBig {
                size,
                limit: config.max_message_size,
            });
        }

        // Fast path: a whole unfragmented message in the input, delivered in place.
        let total = header_len as u64 + header.payload_len;
        if let (Some(kind), true, true) = (kind, header.fin, total <= input.len() as u64) {
            let payload = &mut input[header_len..total as usize];
            if let Some(key) = header.mask {
                apply_mask(payload, key, 0);
            }
            if kind == MessageKind::Text && !compressed && std::str::from_utf8(payload).is_err() {
                return Err(ProtocolError::InvalidUtf8);
            }
            if let (true, Some(inflater)) = (compressed, inflater) {
                let text = kind == MessageKind::Text;
                let limit = config.max_message_size;
                let data = inflater
                    .inflate_message(payload, text, limit)
                    .map_err(|e| inflate_error(e, limit))?;
                return Ok(Step {
                    consumed: total as usize,
                    event: Some(Event::Message { kind, data }),
                    compressed,
                });
            }
            return Ok(Step {
                consumed: total as usize,
                event: Some(Event::Message {
                    kind,
                    data: payload,
                }),
                compressed,
            });
        }

        let partial = self.partial.get_or_insert_with(Box::default);
        if let Some(kind) = kind {
            let lease = match inflater.as_deref_mut() {
                Some(inflater) if compressed => {
                    inflater.claim(kind == MessageKind::Text, config.max_message_size)
                }
                _ => None,
            };
            partial.message = Some(Assembly {
                kind,
                compressed,
                received: 0,
                data: Vec::new(),
                utf8: Utf8Validator::new(),
                lease,
            });
        }
        partial.frame = Some(PayloadProgress {
            remaining: header.payload_len,
            key: header.mask,
            offset: 0,
            fin: header.fin,
        });
        self.continue_payload(input, header_len, config, inflater)
    }

    fn buffered_message(&self) -> Option<&Assembly> {
        self.partial.as_ref().and_then(|p| p.message.as_ref())
    }

    /// Absorbs payload bytes of the data frame in progress from `input[start..]`: kept, or
    /// inflated at once when the message holds a lease on the `inflater`.
    fn continue_payload<'a>(
        &'a mut self,
        input: &'a mut [u8],
        start: usize,
        config: &DecoderConfig,
        mut inflater: Option<&'a mut Inflater>,
    ) -> Result<Step<'a>, ProtocolError> {
        let Some(partial) = self.partial.as_deref_mut() else {
            return Ok(Step {
                consumed: start,
                event: None,
                compressed: false,
            });
        };
        let (Some(frame), Some(message)) = (partial.frame.as_mut(), partial.message.as_mut())
        else {
            return Ok(Step {
                consumed: start,
                event: None,
                compressed: false,
            });
        };
        let available = input.len().saturating_sub(start) as u64;
        let n = frame.remaining.min(available) as usize;
        let chunk = &mut input[start..start + n];
        if let Some(key) = frame.key {
            apply_mask(chunk, key, frame.offset);
        }
        let limit = config.max_message_size;
        let check_utf8 = message.kind == MessageKind::Text && !message.compressed;
        if check_utf8 {
            message
                .utf8
                .feed(chunk)
                .map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        message.received += n as u64;
        match (&message.lease, inflater.as_deref_mut()) {
            (Some(lease), Some(inflater)) => inflater
                .feed(lease, chunk)
                .map_err(|e| inflate_error(e, limit))?,
            (Some(_), None) => return Err(ProtocolError::BadCompressedData),
            (None, _) => message.data.extend_from_slice(chunk),
        }
        frame.remaining -= n as u64;
        frame.offset += n;
        let consumed = start + n;
        if frame.remaining > 0 || !frame.fin {
            if frame.remaining == 0 {
                partial.frame = None;
            }
            return Ok(Step {
                consumed,
                event: None,
                compressed: false,
            });
        }
        partial.frame = None;
        if check_utf8 {
            message
                .utf8
                .finish()
                .map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        partial.delivered = true;
        let text = message.kind == MessageKind::Text;
        let data = match (message.lease.take(), inflater) {
            (Some(lease), Some(inflater)) => inflater
                .finish(lease)
                .map_err(|e| inflate_error(e, limit))?,
            (None, Some(inflater)) if message.compressed => inflater
                .inflate_message(&message.data, text, limit)
                .map_err(|e| inflate_error(e, limit))?,
            (Some(_), None) => return Err(ProtocolError::BadCompressedData),
            (None, _) => &message.data,
        };
        Ok(Step {
            consumed,
            event: Some(Event::Message {
                kind: message.kind,
                data,
            }),
            compressed: message.compressed,
        })
    }
}

/// The rule a compressed message broke (RFC 7692 §7.2.2, RFC 6455 §8.1 and §10.4).
fn inflate_error(error: InflateError, limit: usize) -> ProtocolError {
    match error {
        InflateError::TooBig => ProtocolError::InflatedTooBig { limit },
        InflateError::BadData => ProtocolError::BadCompressedData,
        InflateError::InvalidUtf8 => ProtocolError::InvalidUtf8,
    }
}

/// Feeds `chunks` through a fresh decoder the way a driver feeds reads (the unconsumed rest
/// of one read goes in front of the next), hands every event to `on_event`, and stops at the
/// first error. On the way it asserts the decoder's promises: it never consumes past its
/// input, carries at most a frame header plus a control frame into the next read, and holds
/// nothing once idle. For the unit tests and the fuzz target; the server drives the decoder
/// over its own buffers.
#[doc(hidden)]
pub fn drive_chunks(
    chunks: &[&[u8]],
    config: &DecoderConfig,
    on_event: impl FnMut(Event<'_>),
) -> Result<(), ProtocolError> {
    drive_chunks_with(chunks, config, None, on_event)
}

/// [`drive_chunks`], with permessage-deflate negotiated when an `inflater` is lent
/// ([`Decoder::decode_inflating`]): compressed messages come out inflated.
#[doc(hidden)]
pub fn drive_chunks_with(
    chunks: &[&[u8]],
    config: &DecoderConfig,
    mut inflater: Option<&mut Inflater>,
    mut on_event: impl FnMut(Event<'_>),
) -> Result<(), ProtocolError> {
    const MAX_LEFTOVER: usize =
        crate::protocol::frame::MAX_HEADER_LEN + crate::protocol::frame::MAX_CONTROL_PAYLOAD;
    let mut decoder = Decoder::new();
    let mut stash: Vec<u8> = Vec::new();
    for chunk in chunks {
        let mut buf = std::mem::take(&mut stash);
        buf.extend_from_slice(chunk);
        let mut pos = 0;
        loop {
            let available = buf.len() - pos;
            let step = match inflater.as_deref_mut() {
                Some(inflater) => decoder.decode_inflating(&mut buf[pos..], config, inflater)?,
                None => decoder.decode(&mut buf[pos..], config)?,
            };
            assert!(step.consumed <= available, "consumed past the input");
            pos += step.consumed;
            match step.event {
                Some(event) => on_event(event),
                None if step.consumed == 0 => break,
                None => {}
            }
        }
        stash = buf[pos..].to_vec();
        assert!(
            stash.len() <= MAX_LEFTOVER,
            "leftover of {} bytes (at most {MAX_LEFTOVER}: a header or a control frame)",
            stash.len()
        );
        if decoder.is_idle() {
            assert_eq!(decoder.buffered(), 0, "an idle decoder holds nothing");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{write_frame, write_masked_frame};

    const SERVER: DecoderConfig = DecoderConfig {
        role: Role::Server,
        max_message_size: 1 << 20,
    };

    /// An event with owned data, to compare runs.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
    }

    fn own(event: Event<'_>) -> Owned {
        match event {
            Event::Message {
                kind: MessageKind::Text,
                data,
            } => Owned::Text(String::from_utf8(data.to_vec()).unwrap()),
            Event::Message {
                kind: MessageKind::Binary,
                data,
            } => Owned::Binary(data.to_vec()),
            Event::Ping(p) => Owned::Ping(p.to_vec()),
            Event::Pong(p) => Owned::Pong(p.to_vec()),
            Event::Close(c) => Owned::Close(c.map(|c| (c.code, c.reason.to_string()))),
        }
    }

    /// Feeds `chunks` the way a driver does (leftover bytes go in front of the next read) and
    /// returns the events, stopping at the first error.
    fn run(chunks: &[&[u8]], config: &DecoderConfig) -> (Vec<Owned>, Option<ProtocolError>) {
        let mut events = Vec::new();
        let result = drive_chunks(chunks, config, |event| events.push(own(event)));
        (events, result.err())
    }

    fn masked(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_masked_frame(&mut out, fin, op, payload, [0x37, 0xfa, 0x21, 0x3d]);
        out
    }

    fn stream() -> (Vec<u8>, Vec<Owned>) {
        let mut s = Vec::new();
        s.extend(masked(true, OpCode::Text, b"Hello"));
        s.extend(masked(false, OpCode::Text, "κό".as_bytes()));
        s.extend(masked(true, OpCode::Ping, b"p1"));
        s.extend(masked(false, OpCode::Continuation, &"σμε".as_bytes()[..3]));
        s.extend(masked(true, OpCode::Continuation, &"σμε".as_bytes()[3..]));
        s.extend(masked(true, OpCode::Binary, &[0u8; 300]));
        s.extend(masked(true, OpCode::Pong, b""));
        s.extend(masked(true, OpCode::Text, b""));
        s.extend(masked(true, OpCode::Close, b"\x03\xe8bye"));
        let expected = vec![
            Owned::Text("Hello".into()),
            Owned::Ping(b"p1".to_vec()),
            Owned::Text("κόσμε".into()),
            Owned::Binary(vec![0; 300]),
            Owned::Pong(vec![]),
            Owned::Text(String::new()),
            Owned::Close(Some((1000, "bye".into()))),
        ];
        (s, expected)
    }

    #[test]
    fn whole_stream() {
        let (s, expected) = stream();
        assert_eq!(run(&[&s], &SERVER), (expected, None));
    }

    #[test]
    fn every_two_way_split_gives_the_same_events() {
        let (s, expected) = stream();
        for cut in 0..=s.len() {
            let (a, b) = s.split_at(cut);
            assert_eq!(run(&[a, b], &SERVER), (expected.clone(), None), "cut {cut}");
        }
    }

    #[test]
    fn byte_by_byte_and_random_chunks() {
        let (s, expected) = stream();
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(run(&bytes, &SERVER), (expected.clone(), None));
        let mut seed = 0x9e3779b97f4a7c15u64;
        for _ in 0..200 {
            let mut chunks = Vec::new();
            let mut rest = &s[..];
            while !rest.is_empty() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let n = (seed % 40) as usize + 1;
                let (a, b) = rest.split_at(n.min(rest.len()));
                chunks.push(a);
                rest = b;
            }
            assert_eq!(run(&chunks, &SERVER), (expected.clone(), None));
        }
    }

    #[test]
    fn rule_table() {
        let small = DecoderConfig {
            role: Role::Server,
            max_message_size: 10,
        };
        let mut rsv = masked(true, OpCode::Text, b"x");
        rsv[0] |= 0x40;
        let mut unmasked = Vec::new();
        write_frame(&mut unmasked, OpCode::Text, b"x");
        let over_in_fragments = [
            masked(false, OpCode::Binary, &[0; 6]),
            masked(true, OpCode::Continuation, &[0; 5]),
        ]
        .concat();
        let cases: Vec<(&str, Vec<u8>, DecoderConfig, ProtocolError)> = vec![
            ("rsv1", rsv, SERVER, ProtocolError::ReservedBits(4)),
            (
                "unmasked",
                unmasked.clone(),
                SERVER,
                ProtocolError::UnmaskedFrame,
            ),
            (
                "masked to client",
                masked(true, OpCode::Text, b"x"),
                DecoderConfig {
                    role: Role::Client,
                    ..SERVER
                },
                ProtocolError::MaskedFrame,
            ),
            (
                "reserved opcode",
                masked(true, OpCode::Text, b"")[..]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| if i == 0 { 0x85 } else { *b })
                    .collect(),
                SERVER,
                ProtocolError::ReservedOpcode(5),
            ),
            (
                "continuation first",
                masked(true, OpCode::Continuation, b"x"),
                SERVER,
                ProtocolError::UnexpectedContinuation,
            ),
            (
                "text inside fragments",
                [
                    masked(false, OpCode::Text, b"a"),
                    masked(true, OpCode::Text, b"b"),
                ]
                .concat(),
                SERVER,
                ProtocolError::ExpectedContinuation,
            ),
            (
                "too big",
                masked(true, OpCode::Binary, &[0; 11]),
                small,
                ProtocolError::MessageTooBig {
                    size: 11,
                    limit: 10,
                },
            ),
            (
                "too big across fragments",
                over_in_fragments,
                small,
                ProtocolError::MessageTooBig {
                    size: 11,
                    limit: 10,
                },
            ),
            (
                "bad utf8 one frame",
                masked(true, OpCode::Text, b"\xff"),
                SERVER,
                ProtocolError::InvalidUtf8,
            ),
            (
                "bad utf8 across fragments",
                [
                    masked(false, OpCode::Text, b"\xe2\x82"),
                    masked(true, OpCode::Continuation, b"a"),
                ]
                .concat(),
                SERVER,
                ProtocolError::InvalidUtf8,
            ),
            (
                "truncated utf8 at end",
                [
                    masked(false, OpCode::Text, b"a"),
                    masked(true, OpCode::Continuation, b"\xe2"),
                ]
                .concat(),
                SERVER,
                ProtocolError::InvalidUtf8,
            ),
            (
                "close one byte",
                masked(true, OpCode::Close, b"\x03"),
                SERVER,
                ProtocolError::ClosePayloadTooShort,
            ),
            (
                "close code 1005",
                masked(true, OpCode::Close, b"\x03\xed"),
                SERVER,
                ProtocolError::InvalidCloseCode(1005),
            ),
            (
                "close reason utf8",
                masked(true, OpCode::Close, b"\x03\xe8\xc3"),
                SERVER,
                ProtocolError::InvalidUtf8,
            ),
        ];
        for (name, bytes, config, expected) in cases {
            assert_eq!(run(&[&bytes], &config).1, Some(expected), "{name}");
            // The same error whatever the chunking.
            let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(run(&chunks, &config).1, Some(expected), "{name} bytewise");
        }
        assert_eq!(
            ProtocolError::MessageTooBig { size: 1, limit: 0 }.close_code(),
            1009
        );
    }

    #[test]
    fn too_big_is_decided_from_the_header_alone() {
        let config = DecoderConfig {
            role: Role::Server,
            max_message_size: 1000,
        };
        let frame = masked(true, OpCode::Binary, &[0; 5000]);
        // Only the 8-byte header (2 + 2 + 4) is given: the error comes before any payload.
        assert!(matches!(
            run(&[&frame[..8]], &config).1,
            Some(ProtocolError::MessageTooBig { size: 5000, .. })
        ));
    }

    #[test]
    fn invalid_utf8_fails_before_the_frame_ends() {
        let frame = masked(
            true,
            OpCode::Text,
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80hello",
        );
        // Header (6 bytes) plus the first 13 payload bytes: the bad byte is in, the rest is not.
        let (events, err) = run(&[&frame[..6 + 13]], &SERVER);
        assert!(events.is_empty());
        assert_eq!(err, Some(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn idle_after_messages_and_client_role() {
        let mut decoder = Decoder::new();
        let mut buf = masked(false, OpCode::Binary, b"ab");
        let step = decoder.decode(&mut buf, &SERVER).unwrap();
        assert_eq!((step.consumed, step.event), (8, None));
        assert!(!decoder.is_idle());
        assert_eq!(decoder.buffered(), 2);
        let mut buf = masked(true, OpCode::Continuation, b"c");
        let step = decoder.decode(&mut buf, &SERVER).unwrap();
        assert_eq!(
            step.event,
            Some(Event::Message {
                kind: MessageKind::Binary,
                data: b"abc"
            })
        );
        let step = decoder.decode(&mut [], &SERVER).unwrap();
        assert_eq!((step.consumed, step.event), (0, None));
        assert!(
            decoder.is_idle(),
            "the message buffer is freed after delivery"
        );

        let client = DecoderConfig {
            role: Role::Client,
            max_message_size: 100,
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, OpCode::Text, b"hi");
        let step = decoder.decode(&mut buf, &client).unwrap();
        assert_eq!(
            step.event,
            Some(Event::Message {
                kind: MessageKind::Text,
                data: b"hi"
            })
        );
    }

    // ---- permessage-deflate: inflating as the bytes arrive ---------------------------------

    use crate::protocol::deflate::{Deflater, Inflater};

    /// A masked frame with RSV1 set.
    fn rsv1(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut frame = masked(fin, op, payload);
        frame[0] |= 0x40;
        frame
    }

    /// `body` as a compressed message of frames of at most `size` payload bytes.
    fn compressed_frames(op: OpCode, body: &[u8], size: usize) -> Vec<u8> {
        let pieces: Vec<&[u8]> = body.chunks(size).collect();
        let last = pieces.len().saturating_sub(1);
        let mut out = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            match i {
                0 => out.extend(rsv1(i == last, op, piece)),
                _ => out.extend(masked(i == last, OpCode::Continuation, piece)),
            }
        }
        if pieces.is_empty() {
            out.extend(rsv1(true, op, b""));
        }
        out
    }

    fn run_inflating(
        chunks: &[&[u8]],
        config: &DecoderConfig,
        inflater: &mut Inflater,
    ) -> (Vec<Owned>, Option<ProtocolError>) {
        let mut events = Vec::new();
        let result = drive_chunks_with(chunks, config, Some(inflater), |e| events.push(own(e)));
        (events, result.err())
    }

    fn json(n: usize) -> String {
        format!(
            "[{}]",
            vec![r#"{"op":"message","channel":"κόσμε","seq":1}"#; n].join(",")
        )
    }

    #[test]
    fn compressed_fragments_inflate_whatever_the_split() {
        let text = json(60);
        let body = Deflater::new().compress(text.as_bytes()).unwrap().to_vec();
        let mut s = compressed_frames(OpCode::Text, &body, 50);
        // A control frame between fragments, then a plain message and a one-frame compressed.
        let ping_at =
            s.len() - masked(true, OpCode::Continuation, &body[body.len() / 50 * 50..]).len();
        s.splice(ping_at..ping_at, masked(true, OpCode::Ping, b"p"));
        s.extend(masked(true, OpCode::Text, b"plain"));
        s.extend(rsv1(true, OpCode::Binary, &body));
        let expected = vec![
            Owned::Ping(b"p".to_vec()),
            Owned::Text(text.clone()),
            Owned::Text("plain".into()),
            Owned::Binary(text.clone().into_bytes()),
        ];
        let mut inflater = Inflater::new();
        assert_eq!(
            run_inflating(&[&s], &SERVER, &mut inflater),
            (expected.clone(), None)
        );
        for size in [1, 2, 7, 100, 1000] {
            let chunks: Vec<&[u8]> = s.chunks(size).collect();
            assert_eq!(
                run_inflating(&chunks, &SERVER, &mut inflater),
                (expected.clone(), None),
                "reads of {size}"
            );
            assert!(!inflater.lent());
        }
        // Without an inflater the decoder hands the compressed bytes over as they are.
        let mut raw = Vec::new();
        let config = SERVER;
        let mut decoder = Decoder::new();
        let mut buf = rsv1(true, OpCode::Binary, &body);
        let step = decoder.decode_with(&mut buf, &config, true).unwrap();
        if let Some(Event::Message { data, .. }) = step.event {
            raw.extend_from_slice(data);
        }
        assert!(step.compressed);
        assert_eq!(raw, body);
    }

    #[test]
    fn the_compressed_bytes_are_not_kept() {
        let text = json(200);
        let body = Deflater::new().compress(text.as_bytes()).unwrap().to_vec();
        let wire = compressed_frames(OpCode::Text, &body, 100);
        let mut inflater = Inflater::new();
        let mut decoder = Decoder::new();
        let mut delivered = None;
        let mut stash = Vec::new();
        for chunk in wire.chunks(64) {
            let mut buf = std::mem::take(&mut stash);
            buf.extend_from_slice(chunk);
            let mut pos = 0;
            loop {
                let step = decoder
                    .decode_inflating(&mut buf[pos..], &SERVER, &mut inflater)
                    .unwrap();
                pos += step.consumed;
                match step.event {
                    Some(Event::Message { data, .. }) => delivered = Some(data.to_vec()),
                    Some(other) => panic!("{other:?}"),
                    None if step.consumed == 0 => break,
                    None => {}
                }
                assert_eq!(decoder.buffered(), 0, "nothing compressed held");
            }
            stash = buf[pos..].to_vec();
            assert!(stash.len() < 14, "a header at most");
        }
        assert_eq!(delivered.as_deref(), Some(text.as_bytes()));
    }

    #[test]
    fn interleaved_connections_share_one_inflater() {
        let a_text = json(30);
        let b_text = json(31);
        let mut deflater = Deflater::new();
        let a_body = deflater.compress(a_text.as_bytes()).unwrap().to_vec();
        let b_body = deflater.compress(b_text.as_bytes()).unwrap().to_vec();
        let half = |b: &[u8]| b.len() / 2;
        let mut inflater = Inflater::new();
        let (mut a, mut b) = (Decoder::new(), Decoder::new());

        fn feed(
            decoder: &mut Decoder,
            bytes: Vec<u8>,
            inflater: &mut Inflater,
        ) -> Result<Option<Vec<u8>>, ProtocolError> {
            let mut buf = bytes;
            let mut pos = 0;
            let mut out = None;
            for _ in 0..100 {
                let step = decoder.decode_inflating(&mut buf[pos..], &SERVER, inflater)?;
                pos += step.consumed;
                match step.event {
                    Some(Event::Message { data, .. }) => out = Some(data.to_vec()),
                    _ if step.consumed == 0 => break,
                    _ => {}
                }
            }
            assert_eq!(pos, buf.len());
            Ok(out)
        }

        // a's first fragment claims the streaming inflater; b's must keep its bytes.
        let a1 = rsv1(false, OpCode::Text, &a_body[..half(&a_body)]);
        assert_eq!(feed(&mut a, a1, &mut inflater), Ok(None));
        assert!(inflater.lent());
        assert_eq!(a.buffered(), 0);
        let b1 = rsv1(false, OpCode::Text, &b_body[..half(&b_body)]);
        assert_eq!(feed(&mut b, b1, &mut inflater), Ok(None));
        assert_eq!(b.buffered(), half(&b_body), "kept compressed");
        // b ends first: inflated whole on the second stream, a's message untouched.
        let b2 = masked(true, OpCode::Continuation, &b_body[half(&b_body)..]);
        assert_eq!(
            feed(&mut b, b2, &mut inflater),
            Ok(Some(b_text.clone().into_bytes()))
        );
        let a2 = masked(true, OpCode::Continuation, &a_body[half(&a_body)..]);
        assert_eq!(
            feed(&mut a, a2, &mut inflater),
            Ok(Some(a_text.clone().into_bytes()))
        );
        assert!(!inflater.lent());

        // A connection that goes away mid-message lets the inflater go with its decoder.
        let a1 = rsv1(false, OpCode::Text, &a_body[..half(&a_body)]);
        assert_eq!(feed(&mut a, a1, &mut inflater), Ok(None));
        drop(a);
        let b1 = rsv1(false, OpCode::Text, &b_body[..half(&b_body)]);
        assert_eq!(feed(&mut b, b1, &mut inflater), Ok(None));
        assert_eq!(b.buffered(), 0, "b streams now");
        let b2 = masked(true, OpCode::Continuation, &b_body[half(&b_body)..]);
        assert_eq!(
            feed(&mut b, b2, &mut inflater),
            Ok(Some(b_text.into_bytes()))
        );
    }

    #[test]
    fn inflating_errors_come_before_the_message_ends() {
        let limit = 100_000;
        let config = DecoderConfig {
            role: Role::Server,
            max_message_size: limit,
        };
        let mut deflater = Deflater::new();
        let bomb = deflater.compress(&vec![0u8; 8 << 20]).unwrap().to_vec();
        assert!(bomb.len() < limit);
        let mut bad_text = b"abc\xc0".to_vec();
        bad_text.extend(std::iter::repeat_n(b'y', 50_000));
        let bad_text = deflater.compress(&bad_text).unwrap().to_vec();
        // Good blocks (RFC 7692 §7.2.3.1's "Hello", each sync-flushed), then a block of the
        // reserved type 11 (RFC 1951 §3.2.3), then more bytes.
        let hello = [
            0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00, 0x00, 0xff, 0xff,
        ];
        let mut bad_data = hello.repeat(20);
        bad_data.push(0x07);
        bad_data.extend([0x55; 2000]);
        let cases: Vec<(&str, Vec<u8>, ProtocolError)> = vec![
            (
                "inflates past the limit in one frame",
                rsv1(true, OpCode::Binary, &bomb),
                ProtocolError::InflatedTooBig { limit },
            ),
            (
                "inflates past the limit in fragments",
                compressed_frames(OpCode::Binary, &bomb, 300),
                ProtocolError::InflatedTooBig { limit },
            ),
            (
                "inflated text not UTF-8",
                compressed_frames(OpCode::Text, &bad_text, 30),
                ProtocolError::InvalidUtf8,
            ),
            (
                "bad deflate data",
                compressed_frames(OpCode::Binary, &bad_data, 30),
                ProtocolError::BadCompressedData,
            ),
        ];
        for (name, wire, error) in cases {
            // Fed in reads of 64 bytes: the error must come well before the last read.
            let chunks: Vec<&[u8]> = wire.chunks(64).collect();
            let mut inflater = Inflater::new();
            let result = drive_chunks_with(&chunks, &config, Some(&mut inflater), |_| {});
            assert_eq!(result, Err(error), "{name}");
            // Find the read that failed: feed growing prefixes.
            let failed_at = (1..=chunks.len())
                .find(|&n| {
                    drive_chunks_with(&chunks[..n], &config, Some(&mut Inflater::new()), |_| {})
                        .is_err()
                })
                .unwrap_or(chunks.len());
            assert!(
                failed_at * 2 < chunks.len(),
                "{name}: read {failed_at} of {}",
                chunks.len()
            );
            assert!(!inflater.lent(), "{name}: the lease is void");
        }
    }
}
