//! Two-phase framing of AudioSocket messages (§2): [`check`] says whether a whole
//! message is buffered (and rejects the fatal cases as soon as the header is in),
//! [`parse`] turns exactly those bytes into a [`Message`] whose audio payload is a
//! zero-copy [`Bytes`] view, and [`Message::write_to`] encodes any message into a
//! caller-owned buffer.

use super::kind::{AudioKind, DtmfDigit, ErrorCode, KIND_DTMF, KIND_ERROR, KIND_HANGUP, KIND_ID};
use bytes::Bytes;
use uuid::Uuid;

/// Bytes in a message header: kind (1) + big-endian payload length (2) (§2).
pub const HEADER_LEN: usize = 3;
/// The largest payload the 16-bit length field can announce (§2).
pub const MAX_PAYLOAD: usize = u16::MAX as usize;
/// Payload length of the ID message (§4).
pub const ID_LEN: usize = 16;
/// Bytes of a whole ID message: `01 00 10` + 16 UUID bytes (§4, V1).
pub const ID_MESSAGE_LEN: usize = HEADER_LEN + ID_LEN;

/// One decoded message, in either direction.
///
/// Non-fatal oddities the fact sheet says to log and skip (§10.3, §10.4, §10.8) are
/// variants or flags here, so the session can count them; fatal ones are
/// [`FrameError`]s. For every message the decoder yields, [`Message::write_to`]
/// produces bytes that decode to an equal message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// `0x00`: hangup. Any payload is ignored (Asterisk does not read it, §3).
    Hangup,
    /// `0x01`: the stream UUID, in RFC 4122 byte order (§4).
    Id(Uuid),
    /// `0x03` carrying one valid digit (§6).
    Dtmf(DtmfDigit),
    /// `0x03` whose payload is not exactly one valid digit byte: report and skip.
    InvalidDtmf {
        /// The payload as received (a view, usually 0 or 1 byte).
        payload: Bytes,
    },
    /// `0x10..=0x18` with a non-empty payload.
    Audio {
        /// The audio kind, hence the rate.
        kind: AudioKind,
        /// The s16le samples (or companded bytes, §9.2) as a view of the read
        /// buffer; always of even length.
        payload: Bytes,
        /// The payload had an odd length and its meaningless last byte was
        /// dropped (§10.8): report it.
        odd_byte_dropped: bool,
    },
    /// `0x10..=0x18` with a zero-length payload: skip and report (§10.3). Asterisk
    /// never sends one, and rejects one (§7).
    EmptyAudio {
        /// The audio kind announced.
        kind: AudioKind,
    },
    /// `0xFF` with its code (§3). No Asterisk release sends it.
    Error(ErrorCode),
    /// Any other kind, including `0x02`: payload skipped, session kept (§10.4).
    Unknown {
        /// The kind byte.
        kind: u8,
        /// The announced payload length (the bytes were skipped).
        len: u16,
    },
}

impl Message {
    /// The kind byte this message has on the wire.
    pub fn kind_byte(&self) -> u8 {
        match self {
            Message::Hangup => KIND_HANGUP,
            Message::Id(_) => KIND_ID,
            Message::Dtmf(_) | Message::InvalidDtmf { .. } => KIND_DTMF,
            Message::Audio { kind, .. } | Message::EmptyAudio { kind } => kind.byte(),
            Message::Error(_) => KIND_ERROR,
            Message::Unknown { kind, .. } => *kind,
        }
    }

    /// Payload length [`write_to`](Self::write_to) writes (may exceed
    /// [`MAX_PAYLOAD`] for a hand-built message, which `write_to` then refuses).
    pub fn payload_len(&self) -> usize {
        match self {
            Message::Hangup | Message::EmptyAudio { .. } => 0,
            Message::Id(_) => ID_LEN,
            Message::Dtmf(_) | Message::Error(_) => 1,
            Message::InvalidDtmf { payload } => payload.len(),
            Message::Audio {
                payload,
                odd_byte_dropped,
                ..
            } => payload.len() + usize::from(*odd_byte_dropped),
            Message::Unknown { len, .. } => usize::from(*len),
        }
    }

    /// Total bytes [`write_to`](Self::write_to) writes: header + payload.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    /// Encodes the message into `out` and returns the number of bytes written.
    ///
    /// This encodes every kind, including ones the gateway must never send
    /// (the fake Asterisk and the fuzzer need them); the gateway sends
    /// [`ServerMessage`](super::ServerMessage)s instead. So that decoding the output
    /// gives back an equal message, an `Audio` with `odd_byte_dropped` gets a zero
    /// byte appended and an `Unknown` gets `len` zero bytes.
    pub fn write_to(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let payload_len = self.payload_len();
        let len16 = u16::try_from(payload_len)
            .map_err(|_| EncodeError::PayloadTooLong { len: payload_len })?;
        let total = HEADER_LEN + payload_len;
        let Some(frame) = out.get_mut(..total) else {
            return Err(EncodeError::BufferTooSmall {
                needed: total,
                available: out.len(),
            });
        };
        let (header, payload) = frame.split_at_mut(HEADER_LEN);
        write_header(header, self.kind_byte(), len16);
        match self {
            Message::Hangup | Message::EmptyAudio { .. } => {}
            Message::Id(uuid) => payload.copy_from_slice(uuid.as_bytes()),
            Message::Dtmf(digit) => payload.fill(digit.byte()),
            Message::Error(code) => payload.fill(code.bits()),
            Message::InvalidDtmf { payload: p } => payload.copy_from_slice(p),
            Message::Audio { payload: p, .. } => {
                let (samples, odd) = payload.split_at_mut(p.len());
                samples.copy_from_slice(p);
                odd.fill(0);
            }
            Message::Unknown { .. } => payload.fill(0),
        }
        Ok(total)
    }
}

/// Writes the 3-byte header; `header` must be exactly [`HEADER_LEN`] long.
pub(super) fn write_header(header: &mut [u8], kind: u8, len: u16) {
    let [hi, lo] = len.to_be_bytes();
    header.copy_from_slice(&[kind, hi, lo]);
}

/// Limits a receiver enforces beyond the 16-bit length field (§10.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    max_audio_ms: u32,
}

impl Default for Limits {
    /// At most 1000 ms of audio per message, the fact sheet's example (§10.7).
    fn default() -> Limits {
        Limits::new(1000)
    }
}

impl Limits {
    /// Accepts audio messages of at most `max_audio_ms` milliseconds at their kind's
    /// rate (capped by the 65535-byte length field).
    pub const fn new(max_audio_ms: u32) -> Limits {
        Limits { max_audio_ms }
    }

    /// No limit beyond the length field: what Asterisk itself accepts. Use it for
    /// clients; a server should keep the default.
    pub const fn unlimited() -> Limits {
        Limits::new(u32::MAX)
    }

    /// The configured duration limit in milliseconds.
    pub const fn max_audio_ms(&self) -> u32 {
        self.max_audio_ms
    }

    /// The largest audio payload accepted for `kind`, in bytes.
    pub const fn max_audio_len(&self, kind: AudioKind) -> usize {
        // In u64 so that `unlimited()` cannot overflow a 32-bit usize.
        let bytes = kind.hz() as u64 * self.max_audio_ms as u64 / 1000 * 2;
        if bytes < MAX_PAYLOAD as u64 {
            bytes as usize
        } else {
            MAX_PAYLOAD
        }
    }
}

/// A fatal framing error: the stream cannot be trusted any more (§10.7) and the
/// session must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// An audio message longer than [`Limits`] allows: most likely a
    /// desynchronised or corrupted stream.
    #[error("audio message of kind {kind} announces {len} bytes, limit is {max}")]
    OversizedAudio {
        /// The audio kind.
        kind: AudioKind,
        /// The announced payload length.
        len: u16,
        /// The limit for this kind.
        max: usize,
    },
    /// An ID message whose length is not 16 (§10.3).
    #[error("ID message announces {len} bytes, expected 16")]
    BadIdLength {
        /// The announced payload length.
        len: u16,
    },
    /// [`parse`] was given bytes that are not exactly one message as [`check`]
    /// measured it.
    #[error("frame is {actual} bytes but its header announces {expected}")]
    LengthMismatch {
        /// Header plus announced payload.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
}

/// Encoding failed; nothing useful was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is shorter than the message.
    #[error("output buffer holds {available} bytes, message needs {needed}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The payload does not fit the 16-bit length field.
    #[error("payload of {len} bytes exceeds the 65535-byte maximum")]
    PayloadTooLong {
        /// The payload length.
        len: usize,
    },
}

/// Reads the header at the start of `buf`, if it is all there.
fn header(buf: &[u8]) -> Option<(u8, u16)> {
    match buf {
        [kind, hi, lo, ..] => Some((*kind, u16::from_be_bytes([*hi, *lo]))),
        _ => None,
    }
}

/// Phase one: is a whole message at the start of `buf`?
///
/// Returns `Ok(Some(n))` when the first `n` bytes are one complete message,
/// `Ok(None)` when more bytes are needed (a state, not an error), and an error as soon
/// as the header shows a fatal case (an oversized audio length or an ID that is not
/// 16 bytes), without waiting for the payload. Costs a few comparisons and never
/// allocates.
pub fn check(buf: &[u8], limits: &Limits) -> Result<Option<usize>, FrameError> {
    let Some((kind, len)) = header(buf) else {
        return Ok(None);
    };
    validate_header(kind, len, limits)?;
    let total = HEADER_LEN + usize::from(len);
    Ok((buf.len() >= total).then_some(total))
}

/// How many bytes the message starting at `buf` needs in all, if its header is in.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    header(buf).map(|(_, len)| HEADER_LEN + usize::from(len))
}

fn validate_header(kind: u8, len: u16, limits: &Limits) -> Result<(), FrameError> {
    if kind == KIND_ID && usize::from(len) != ID_LEN {
        return Err(FrameError::BadIdLength { len });
    }
    if let Some(kind) = AudioKind::from_byte(kind) {
        let max = limits.max_audio_len(kind);
        if usize::from(len) > max {
            return Err(FrameError::OversizedAudio { kind, len, max });
        }
    }
    Ok(())
}

/// Phase two: decodes one message from `frame`, which must be exactly the `n` bytes
/// [`check`] reported. Audio and invalid-DTMF payloads are slices of `frame`, not
/// copies.
///
/// Never panics: bytes that are not exactly one message give
/// [`FrameError::LengthMismatch`] (or the header errors of `check`, limits aside).
pub fn parse(frame: Bytes) -> Result<Message, FrameError> {
    let Some((kind, len)) = header(&frame) else {
        return Err(FrameError::LengthMismatch {
            expected: HEADER_LEN,
            actual: frame.len(),
        });
    };
    let expected = HEADER_LEN + usize::from(len);
    if frame.len() != expected {
        return Err(FrameError::LengthMismatch {
            expected,
            actual: frame.len(),
        });
    }
    validate_header(kind, len, &Limits::unlimited())?;
    let payload = &frame[HEADER_LEN..];
    Ok(match kind {
        KIND_HANGUP => Message::Hangup,
        KIND_ID => {
            let bytes: [u8; ID_LEN] = payload
                .try_into()
                .map_err(|_| FrameError::BadIdLength { len })?;
            Message::Id(Uuid::from_bytes(bytes))
        }
        KIND_DTMF => match payload {
            [byte] => match DtmfDigit::new(*byte) {
                Some(digit) => Message::Dtmf(digit),
                None => Message::InvalidDtmf {
                    payload: frame.slice(HEADER_LEN..),
                },
            },
            _ => Message::InvalidDtmf {
                payload: frame.slice(HEADER_LEN..),
            },
        },
        KIND_ERROR => Message::Error(match payload.first() {
            Some(code) => ErrorCode::from_byte(*code),
            None => ErrorCode::UNKNOWN,
        }),
        other => match AudioKind::from_byte(other) {
            Some(kind) if len == 0 => Message::EmptyAudio { kind },
            Some(kind) => {
                let odd_byte_dropped = len % 2 == 1;
                let end = expected - usize::from(odd_byte_dropped);
                Message::Audio {
                    kind,
                    payload: frame.slice(HEADER_LEN..end),
                    odd_byte_dropped,
                }
            }
            None => Message::Unknown { kind: other, len },
        },
    })
}
