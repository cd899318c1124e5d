//! `tokio-util` codecs over the sans-IO framing: [`ServerCodec`] for the gateway
//! (decodes what Asterisk sends, encodes only [`ServerMessage`]s) and [`ClientCodec`]
//! for the fake Asterisk (decodes what the gateway sends, encodes any [`Message`]).
//!
//! Decoding splits each complete message off the codec's `BytesMut` and freezes it,
//! so audio payloads are views of the read buffer: no copy and, once the consumer has
//! dropped earlier payloads, no allocation per frame.

use super::frame::{
    EncodeError, FrameError, HEADER_LEN, Limits, MAX_PAYLOAD, Message, check, frame_len, parse,
};
use super::server::ServerMessage;
use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

/// Errors of the codecs: a fatal framing error, a stream that ended inside a message,
/// or an I/O error from the transport. All of them end the session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The stream carried a fatal framing error (§10.3, §10.7).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// EOF arrived in the middle of a message (§10.12). The session ends like a
    /// plain EOF; the partial message is discarded.
    #[error("stream ended inside a message: {buffered} bytes buffered{}", needed_text(*.needed))]
    TruncatedAtEof {
        /// Bytes of the incomplete message that had arrived.
        buffered: usize,
        /// Bytes the message needed in all, if its header had arrived.
        needed: Option<usize>,
    },
    /// A message could not be encoded (a hand-built [`Message`] whose payload
    /// exceeds 65535 bytes).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The transport failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

fn needed_text(needed: Option<usize>) -> String {
    match needed {
        Some(n) => format!(" of {n}"),
        None => format!(" of a {HEADER_LEN}-byte header"),
    }
}

/// Shared decode step: check, then split off and parse one message.
fn decode_one(src: &mut BytesMut, limits: &Limits) -> Result<Option<Message>, CodecError> {
    match check(src, limits)? {
        Some(n) => Ok(Some(parse(src.split_to(n).freeze())?)),
        None => {
            // Reserve room for the rest of this message so the next read can
            // complete it; bounded by 65538 bytes by construction.
            let want = frame_len(src).unwrap_or(HEADER_LEN);
            src.reserve(want.saturating_sub(src.len()));
            Ok(None)
        }
    }
}

fn decode_eof_one(src: &mut BytesMut, limits: &Limits) -> Result<Option<Message>, CodecError> {
    if let Some(msg) = decode_one(src, limits)? {
        return Ok(Some(msg));
    }
    if src.is_empty() {
        Ok(None)
    } else {
        Err(CodecError::TruncatedAtEof {
            buffered: src.len(),
            needed: frame_len(src),
        })
    }
}

/// The gateway's codec: decodes messages from Asterisk and encodes only
/// [`ServerMessage`]s, each as one contiguous frame (so one write per message, §7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerCodec {
    limits: Limits,
}

impl ServerCodec {
    /// A codec enforcing `limits` on incoming audio.
    pub const fn new(limits: Limits) -> ServerCodec {
        ServerCodec { limits }
    }

    /// The limits in force.
    pub const fn limits(&self) -> Limits {
        self.limits
    }
}

impl Decoder for ServerCodec {
    type Item = Message;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        decode_one(src, &self.limits)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        decode_eof_one(src, &self.limits)
    }
}

impl Encoder<ServerMessage<'_>> for ServerCodec {
    type Error = CodecError;

    fn encode(&mut self, item: ServerMessage<'_>, dst: &mut BytesMut) -> Result<(), CodecError> {
        let start = dst.len();
        dst.resize(start + item.encoded_len(), 0);
        // The buffer was sized to the message, so this cannot fail; keep `dst`
        // clean if it ever did.
        if let Err(e) = item.write_to(&mut dst[start..]) {
            dst.truncate(start);
            return Err(e.into());
        }
        Ok(())
    }
}

/// The client (Asterisk-side) codec used by the fake Asterisk: decodes what the
/// gateway sends and encodes any [`Message`], including ones Asterisk would never
/// send (for negative tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCodec {
    limits: Limits,
}

impl Default for ClientCodec {
    /// Accepts any audio length the length field allows, as Asterisk does.
    fn default() -> ClientCodec {
        ClientCodec::new(Limits::unlimited())
    }
}

impl ClientCodec {
    /// A codec enforcing `limits` on incoming audio.
    pub const fn new(limits: Limits) -> ClientCodec {
        ClientCodec { limits }
    }
}

impl Decoder for ClientCodec {
    type Item = Message;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        decode_one(src, &self.limits)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        decode_eof_one(src, &self.limits)
    }
}

impl Encoder<&Message> for ClientCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        let len = item.payload_len();
        if len > MAX_PAYLOAD {
            return Err(EncodeError::PayloadTooLong { len }.into());
        }
        let start = dst.len();
        dst.resize(start + item.encoded_len(), 0);
        if let Err(e) = item.write_to(&mut dst[start..]) {
            dst.truncate(start);
            return Err(e.into());
        }
        Ok(())
    }
}

impl Encoder<Message> for ClientCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode(&item, dst)
    }
}
