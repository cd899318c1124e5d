//! What the gateway may send to Asterisk (§7): a hangup or non-empty, even-length
//! slin audio of kinds `0x10..=0x18`. Anything else ends the call on Asterisk's side,
//! so [`ServerMessage`] cannot represent it.

use super::frame::{EncodeError, HEADER_LEN, MAX_PAYLOAD, write_header};
use super::kind::{AudioKind, KIND_HANGUP};

/// A message the gateway may send to Asterisk.
///
/// Only `Hangup` and audio exist: kinds `0x01`, `0x02`, `0x03`, `0xFF` and unknown
/// kinds cannot be built, and [`ServerAudio`] refuses empty and odd-length payloads,
/// so no value of this type is something Asterisk rejects (§7, V4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    /// `00 00 00`: "I'm done": the dialplan continues (§8).
    Hangup,
    /// One audio frame.
    Audio(ServerAudio<'a>),
}

/// A validated audio payload for Asterisk: `kind` plus 1..=32767 s16le samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerAudio<'a> {
    kind: AudioKind,
    payload: &'a [u8],
}

/// An audio payload Asterisk would reject or misread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerAudioError {
    /// Zero-length audio is fatal to Asterisk (§2, §7).
    #[error("empty audio payload (fatal to Asterisk)")]
    Empty,
    /// An odd trailing byte is meaningless (§3).
    #[error("audio payload of {len} bytes is not a whole number of s16 samples")]
    OddLength {
        /// The payload length.
        len: usize,
    },
    /// More than the largest even payload the length field can carry (65534).
    #[error("audio payload of {len} bytes exceeds 65534")]
    TooLong {
        /// The payload length.
        len: usize,
    },
}

/// The largest even payload length.
const MAX_AUDIO_PAYLOAD: usize = MAX_PAYLOAD - 1;

fn validate_audio_len(len: usize) -> Result<u16, ServerAudioError> {
    if len == 0 {
        return Err(ServerAudioError::Empty);
    }
    if len % 2 == 1 {
        return Err(ServerAudioError::OddLength { len });
    }
    if len > MAX_AUDIO_PAYLOAD {
        return Err(ServerAudioError::TooLong { len });
    }
    u16::try_from(len).map_err(|_| ServerAudioError::TooLong { len })
}

impl<'a> ServerAudio<'a> {
    /// Validates an s16le payload (non-empty, even length, at most 65534 bytes).
    pub fn new(kind: AudioKind, payload: &'a [u8]) -> Result<ServerAudio<'a>, ServerAudioError> {
        validate_audio_len(payload.len())?;
        Ok(ServerAudio { kind, payload })
    }

    /// The audio kind.
    pub const fn kind(&self) -> AudioKind {
        self.kind
    }

    /// The s16le payload bytes.
    pub const fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Number of samples.
    pub const fn samples(&self) -> usize {
        self.payload.len() / 2
    }
}

impl<'a> ServerMessage<'a> {
    /// An audio message; see [`ServerAudio::new`].
    pub fn audio(
        kind: AudioKind,
        payload: &'a [u8],
    ) -> Result<ServerMessage<'a>, ServerAudioError> {
        ServerAudio::new(kind, payload).map(ServerMessage::Audio)
    }

    /// The kind byte on the wire.
    pub const fn kind_byte(&self) -> u8 {
        match self {
            ServerMessage::Hangup => KIND_HANGUP,
            ServerMessage::Audio(a) => a.kind.byte(),
        }
    }

    /// Total encoded length (header + payload).
    pub const fn encoded_len(&self) -> usize {
        match self {
            ServerMessage::Hangup => HEADER_LEN,
            ServerMessage::Audio(a) => HEADER_LEN + a.payload.len(),
        }
    }

    /// Encodes the message as one contiguous frame into `out`, returning its length.
    /// Send it with a single write (§7: Asterisk drops the call if the payload comes
    /// more than ~5 ms after its header).
    pub fn write_to(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let total = self.encoded_len();
        let Some(frame) = out.get_mut(..total) else {
            return Err(EncodeError::BufferTooSmall {
                needed: total,
                available: out.len(),
            });
        };
        let (header, payload) = frame.split_at_mut(HEADER_LEN);
        match self {
            ServerMessage::Hangup => write_header(header, KIND_HANGUP, 0),
            ServerMessage::Audio(a) => {
                // Length validated by ServerAudio::new: 2..=65534.
                let len = u16::try_from(a.payload.len()).unwrap_or(0);
                write_header(header, a.kind.byte(), len);
                payload.copy_from_slice(a.payload);
            }
        }
        Ok(total)
    }
}

/// Writes one audio frame of `samples` samples straight into `out` without an
/// intermediate payload buffer: the header is written, then `fill` gets the exact
/// `2 * samples`-byte payload slice to fill with s16le samples.
///
/// Same guarantees as [`ServerAudio::new`] (refuses 0 or more than 32767 samples).
/// Returns the frame length, to be sent with a single write.
pub fn write_audio_frame_with(
    kind: AudioKind,
    samples: usize,
    out: &mut [u8],
    fill: impl FnOnce(&mut [u8]),
) -> Result<usize, AudioFrameError> {
    let payload_len = samples.saturating_mul(2);
    let len = validate_audio_len(payload_len)?;
    let total = HEADER_LEN + payload_len;
    let Some(frame) = out.get_mut(..total) else {
        return Err(AudioFrameError::Encode(EncodeError::BufferTooSmall {
            needed: total,
            available: out.len(),
        }));
    };
    let (header, payload) = frame.split_at_mut(HEADER_LEN);
    write_header(header, kind.byte(), len);
    fill(payload);
    Ok(total)
}

/// Why [`write_audio_frame_with`] wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AudioFrameError {
    /// The sample count gives a payload Asterisk would reject.
    #[error(transparent)]
    Audio(#[from] ServerAudioError),
    /// The output buffer is too small.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}
