#![no_main]
//! Fuzz target for the AudioSocket decoder (audiosocket.md §2, §10): decode arbitrary
//! bytes with the server codec, re-encode every decoded message with
//! `Message::write_to`, decode the re-encoding and require the same messages, with no
//! error and nothing left over; every 0x10 payload also goes through the coding
//! detector. Never panics on any input.
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sip_glue::audiosocket::{
    AudioKind, CodecError, CodingDetector, FrameCoding, Limits, Message, ServerCodec,
};
use tokio_util::codec::Decoder;

/// Decodes `bytes` as one whole stream (then EOF); returns the messages and whether
/// decoding ended in an error.
fn decode_stream(codec: &mut ServerCodec, bytes: &[u8]) -> (Vec<Message>, Option<CodecError>) {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(m)) => out.push(m),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the audio limit so both tight and loose limits are explored.
    let Some((&limit_sel, data)) = data.split_first() else {
        return;
    };
    let limits = Limits::new(u32::from(limit_sel) * 8);
    let mut codec = ServerCodec::new(limits);
    let (first, _err) = decode_stream(&mut codec, data);

    // The kind-0x10 coding detector takes every payload a peer sends: it never panics,
    // once it has decided the decision stands and every payload is decoded that way,
    // and it mutes three payloads at most.
    let mut detector = CodingDetector::new();
    let mut muted = 0;
    for m in &first {
        if let Message::Audio { kind: AudioKind::Slin8, payload, .. } = m {
            let before = detector.decided();
            let frame = detector.observe(payload);
            if let Some(decided) = before {
                assert_eq!(frame, FrameCoding::from(decided));
                assert_eq!(detector.decided(), before);
            }
            if frame == FrameCoding::Mute {
                muted += 1;
            }
        }
    }
    assert!(muted <= 3, "{muted} payloads muted");

    let mut encoded = Vec::new();
    for m in &first {
        let start = encoded.len();
        encoded.resize(start + m.encoded_len(), 0);
        let n = m
            .write_to(&mut encoded[start..])
            .expect("a decoded message re-encodes");
        assert_eq!(n, m.encoded_len());
    }

    let (second, err) = decode_stream(&mut ServerCodec::new(limits), &encoded);
    assert!(err.is_none(), "re-encoding failed to decode: {err:?}");
    assert_eq!(first, second);

    // Split reads give the same messages as one read (§10.1).
    let mid = data.len() / 2;
    let mut buf = BytesMut::new();
    let mut split = Vec::new();
    let mut codec = ServerCodec::new(limits);
    'outer: for part in [&data[..mid], &data[mid..]] {
        buf.extend_from_slice(part);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(m)) => split.push(m),
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
    }
    assert_eq!(split[..], first[..split.len()]);
});
