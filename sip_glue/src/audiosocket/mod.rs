//! The AudioSocket wire protocol (fact sheet: `/work/shared/protocols/audiosocket.md`,
//! sections cited as §n), sans-IO, plus thin `tokio-util` codecs.
//!
//! Every message is `kind (1) | length (2, big-endian) | payload (length)` (§2).
//! Asterisk is the TCP client: it sends the ID first (§4), then audio
//! (`0x10..=0x18`, s16le mono at the kind's rate, §5) and DTMF digits (§6), and ends
//! a call with a bare EOF (§8). The gateway may send only hangup (`0x00`) and
//! non-empty audio (§7); [`ServerMessage`] makes anything else unrepresentable.
//!
//! Layers, from the bottom:
//! - [`check`] / [`parse`] / [`Message::write_to`]: two-phase framing on byte slices,
//!   with [`Limits`] guarding against desynchronised streams (§10.7);
//! - [`ServerCodec`] / [`ClientCodec`]: `Decoder`/`Encoder` for `FramedRead`,
//!   `FramedWrite` or a hand-driven `BytesMut`;
//! - [`IdGate`]: the "ID first, exactly once" rule with a deadline (§10.5, §10.6);
//! - [`CodingDetector`]: slin or μ-law under kind 0x10, told from the audio (§9.2).
//!
//! ```
//! use bytes::BytesMut;
//! use sip_glue::audiosocket::{Message, ServerCodec, ServerMessage, AudioKind};
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! let mut codec = ServerCodec::default();
//! // V2 of the fact sheet: 4 samples of 8 kHz audio.
//! let mut rx = BytesMut::from(&[0x10, 0x00, 0x08, 0, 0, 1, 0, 0xff, 0xff, 0x34, 0x12][..]);
//! let Some(Message::Audio { kind, payload, .. }) = codec.decode(&mut rx)? else { panic!() };
//! assert_eq!((kind, payload.len()), (AudioKind::Slin8, 8));
//!
//! let mut tx = BytesMut::new();
//! codec.encode(ServerMessage::audio(AudioKind::Slin8, &payload)?, &mut tx)?;
//! codec.encode(ServerMessage::Hangup, &mut tx)?;
//! assert_eq!(&tx[..3], &[0x10, 0x00, 0x08]);
//! assert_eq!(&tx[11..], &[0x00, 0x00, 0x00]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod codec;
mod coding;
mod frame;
mod kind;
mod server;
mod session;

pub use codec::{ClientCodec, CodecError, ServerCodec};
pub use coding::{CodingDetector, DetectedCoding, FrameCoding};
pub use frame::{
    EncodeError, FrameError, HEADER_LEN, ID_LEN, ID_MESSAGE_LEN, Limits, MAX_PAYLOAD, Message,
    check, frame_len, parse,
};
pub use kind::{
    AudioKind, DtmfDigit, ErrorCode, InvalidDtmfDigit, KIND_DTMF, KIND_ERROR, KIND_HANGUP, KIND_ID,
    KIND_SILENCE,
};
pub use server::{
    AudioFrameError, ServerAudio, ServerAudioError, ServerMessage, write_audio_frame_with,
};
pub use session::{EofOutcome, GateOutcome, HandshakeError, IdGate};

#[cfg(test)]
mod tests;
