//! Tests of the AudioSocket codec against the fact sheet's vectors (§11) and its
//! robust-server checklist (§10), one named test per item.

use super::*;
use bytes::{Bytes, BytesMut};
use std::time::{Duration, Instant};
use tokio_util::codec::{Decoder, Encoder};
use uuid::Uuid;

const V1_UUID: &str = "40325ec2-5efd-4bd3-805f-53576e581d13";

/// V1 (§11), 19 bytes.
const V1: [u8; 19] = [
    0x01, 0x00, 0x10, 0x40, 0x32, 0x5e, 0xc2, 0x5e, 0xfd, 0x4b, 0xd3, 0x80, 0x5f, 0x53, 0x57, 0x6e,
    0x58, 0x1d, 0x13,
];
/// V2 (§11): samples [0, 1, -1, 4660].
const V2: [u8; 11] = [
    0x10, 0x00, 0x08, 0x00, 0x00, 0x01, 0x00, 0xff, 0xff, 0x34, 0x12,
];
/// V3 (§11), A->S part: ID, 16 kHz [-2, 32767], DTMF '#'.
const V3_A2S: [u8; 30] = [
    0x01, 0x00, 0x10, 0x40, 0x32, 0x5e, 0xc2, 0x5e, 0xfd, 0x4b, 0xd3, 0x80, 0x5f, 0x53, 0x57, 0x6e,
    0x58, 0x1d, 0x13, 0x12, 0x00, 0x04, 0xfe, 0xff, 0xff, 0x7f, 0x03, 0x00, 0x01, 0x23,
];

fn v1_uuid() -> Uuid {
    Uuid::parse_str(V1_UUID).unwrap()
}

/// Decodes everything in `bytes` with the server codec, then applies `decode_eof`.
fn decode_all(bytes: &[u8]) -> (Vec<Message>, Result<(), CodecError>) {
    let mut codec = ServerCodec::default();
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(m)) => out.push(m),
            Ok(None) => break,
            Err(e) => return (out, Err(e)),
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(m)) => out.push(m),
            Ok(None) => return (out, Ok(())),
            Err(e) => return (out, Err(e)),
        }
    }
}

fn samples(payload: &[u8]) -> Vec<i16> {
    payload
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

fn audio(kind: AudioKind, samples: &[i16]) -> Message {
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    Message::Audio {
        kind,
        payload: Bytes::from(bytes),
        odd_byte_dropped: false,
    }
}

fn encode(msg: &Message) -> Vec<u8> {
    let mut out = vec![0u8; msg.encoded_len()];
    let n = msg.write_to(&mut out).unwrap();
    assert_eq!(n, out.len());
    out
}

// ---- §11 vectors --------------------------------------------------------------

#[test]
fn v1_id_message_decodes_and_encodes_byte_for_byte() {
    let (msgs, end) = decode_all(&V1);
    assert!(end.is_ok());
    assert_eq!(msgs, [Message::Id(v1_uuid())]);
    assert_eq!(encode(&Message::Id(v1_uuid())), V1);
    assert_eq!(check(&V1, &Limits::default()), Ok(Some(ID_MESSAGE_LEN)));
}

#[test]
fn v2_slin8_audio_decodes_and_encodes_byte_for_byte() {
    let (msgs, end) = decode_all(&V2);
    assert!(end.is_ok());
    let [
        Message::Audio {
            kind,
            payload,
            odd_byte_dropped,
        },
    ] = &msgs[..]
    else {
        panic!("expected one audio message, got {msgs:?}");
    };
    assert_eq!(*kind, AudioKind::Slin8);
    assert_eq!(kind.rate().hz(), 8000);
    assert!(!odd_byte_dropped);
    assert_eq!(samples(payload), [0, 1, -1, 4660]);
    assert_eq!(encode(&audio(AudioKind::Slin8, &[0, 1, -1, 4660])), V2);

    // The server-side encoder produces the same bytes.
    let mut tx = BytesMut::new();
    let payload = &V2[3..];
    ServerCodec::default()
        .encode(
            ServerMessage::audio(AudioKind::Slin8, payload).unwrap(),
            &mut tx,
        )
        .unwrap();
    assert_eq!(&tx[..], &V2);
}

#[test]
fn v2_full_20ms_frames_have_the_documented_headers() {
    // §11: "A full 20 ms 8 kHz frame is `10 01 40` ... 48 kHz `16 07 80`"; §5 table.
    let expected: [[u8; 3]; 9] = [
        [0x10, 0x01, 0x40],
        [0x11, 0x01, 0xE0],
        [0x12, 0x02, 0x80],
        [0x13, 0x03, 0xC0],
        [0x14, 0x05, 0x00],
        [0x15, 0x06, 0xE4],
        [0x16, 0x07, 0x80],
        [0x17, 0x0F, 0x00],
        [0x18, 0x1E, 0x00],
    ];
    let mut buf = vec![0u8; 8000];
    for (kind, header) in AudioKind::ALL.into_iter().zip(expected) {
        let payload = vec![0u8; kind.bytes_per_ms(20)];
        let n = ServerMessage::audio(kind, &payload)
            .unwrap()
            .write_to(&mut buf)
            .unwrap();
        assert_eq!(&buf[..3], &header, "{kind}");
        assert_eq!(n, 3 + payload.len());
        assert_eq!(check(&buf[..n], &Limits::default()), Ok(Some(n)));
    }
}

#[test]
fn v3_stream_decodes_to_id_audio_dtmf_and_hangup_reply_is_000000() {
    let (msgs, end) = decode_all(&V3_A2S);
    assert!(end.is_ok());
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[0], Message::Id(v1_uuid()));
    let Message::Audio { kind, payload, .. } = &msgs[1] else {
        panic!("{:?}", msgs[1]);
    };
    assert_eq!((*kind, kind.hz()), (AudioKind::Slin16, 16_000));
    assert_eq!(samples(payload), [-2, 32767]);
    assert_eq!(msgs[2], Message::Dtmf(DtmfDigit::new(b'#').unwrap()));

    let mut tx = BytesMut::new();
    ServerCodec::default()
        .encode(ServerMessage::Hangup, &mut tx)
        .unwrap();
    assert_eq!(&tx[..], &[0x00, 0x00, 0x00]);
}

#[test]
fn v4_things_asterisk_rejects_decode_to_their_reportable_forms() {
    // Our decoder must still read them (the fake Asterisk flags them).
    let (m, _) = decode_all(&[0x10, 0x00, 0x00]);
    assert_eq!(
        m,
        [Message::EmptyAudio {
            kind: AudioKind::Slin8
        }]
    );
    let (m, _) = decode_all(&[0x03, 0x00, 0x01, 0x35]);
    assert_eq!(m, [Message::Dtmf(DtmfDigit::new(b'5').unwrap())]);
    let (m, _) = decode_all(&[0xff, 0x00, 0x01, 0x01]);
    assert_eq!(m, [Message::Error(ErrorCode::CALLER_HANGUP)]);
    let mut silence = vec![0x02, 0x01, 0x40];
    silence.extend([0u8; 320]);
    let (m, _) = decode_all(&silence);
    assert_eq!(
        m,
        [Message::Unknown {
            kind: 0x02,
            len: 320
        }]
    );
}

#[test]
fn v4_server_message_cannot_represent_rejected_messages() {
    // Empty audio: refused.
    assert_eq!(
        ServerMessage::audio(AudioKind::Slin8, &[]),
        Err(ServerAudioError::Empty)
    );
    // Odd length: refused.
    assert_eq!(
        ServerMessage::audio(AudioKind::Slin8, &[1, 2, 3]),
        Err(ServerAudioError::OddLength { len: 3 })
    );
    // Longer than the length field allows for whole samples.
    let big = vec![0u8; 65536];
    assert_eq!(
        ServerMessage::audio(AudioKind::Slin8, &big),
        Err(ServerAudioError::TooLong { len: 65536 })
    );
    assert!(ServerMessage::audio(AudioKind::Slin8, &big[..65534]).is_ok());
    // Kinds 0x01/0x02/0x03/0xff have no constructor: the only kind bytes a
    // ServerMessage can carry are 0x00 and the audio kinds.
    let mut kinds: Vec<u8> = AudioKind::ALL
        .iter()
        .map(|k| ServerMessage::audio(*k, &[0, 0]).unwrap().kind_byte())
        .collect();
    kinds.push(ServerMessage::Hangup.kind_byte());
    for rejected in [KIND_ID, KIND_SILENCE, KIND_DTMF, KIND_ERROR] {
        assert!(!kinds.contains(&rejected));
    }
    // write_audio_frame_with has the same guarantees.
    let mut out = [0u8; 16];
    assert_eq!(
        write_audio_frame_with(AudioKind::Slin8, 0, &mut out, |_| {}),
        Err(AudioFrameError::Audio(ServerAudioError::Empty))
    );
    assert_eq!(
        write_audio_frame_with(AudioKind::Slin8, 32768, &mut out, |_| {}),
        Err(AudioFrameError::Audio(ServerAudioError::TooLong {
            len: 65536
        }))
    );
    let n = write_audio_frame_with(AudioKind::Slin8, 4, &mut out, |p| {
        for (chunk, s) in p.chunks_exact_mut(2).zip([0i16, 1, -1, 4660]) {
            chunk.copy_from_slice(&s.to_le_bytes());
        }
    })
    .unwrap();
    assert_eq!(&out[..n], &V2);
}

// ---- §10 checklist ------------------------------------------------------------

#[test]
fn s10_1_partial_reads_split_at_every_byte_boundary() {
    let (expected, _) = decode_all(&V3_A2S);
    for split in 0..=V3_A2S.len() {
        let mut codec = ServerCodec::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for part in [&V3_A2S[..split], &V3_A2S[split..]] {
            buf.extend_from_slice(part);
            while let Some(m) = codec.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, expected, "split at {split}");
        assert!(buf.is_empty());
    }
    // And one byte at a time.
    let mut codec = ServerCodec::default();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for b in V3_A2S {
        buf.extend_from_slice(&[b]);
        while let Some(m) = codec.decode(&mut buf).unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got, expected);
}

#[test]
fn s10_1_check_reports_incomplete_as_none_not_error() {
    for n in 0..V2.len() {
        assert_eq!(check(&V2[..n], &Limits::default()), Ok(None), "{n} bytes");
    }
    assert_eq!(check(&V2, &Limits::default()), Ok(Some(V2.len())));
    assert_eq!(frame_len(&V2[..2]), None);
    assert_eq!(frame_len(&V2[..3]), Some(11));
}

#[test]
fn s10_2_several_messages_in_one_buffer_keep_the_remainder() {
    let mut bytes = V3_A2S.to_vec();
    bytes.extend_from_slice(&V2[..5]); // start of a fourth message
    let mut codec = ServerCodec::default();
    let mut buf = BytesMut::from(&bytes[..]);
    let mut n = 0;
    while codec.decode(&mut buf).unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 3);
    assert_eq!(&buf[..], &V2[..5]);
    buf.extend_from_slice(&V2[5..]);
    assert_eq!(
        codec.decode(&mut buf).unwrap(),
        Some(audio(AudioKind::Slin8, &[0, 1, -1, 4660]))
    );
}

#[test]
fn s10_3_zero_length_audio_is_reported_and_skipped() {
    let mut bytes = vec![0x12, 0x00, 0x00];
    bytes.extend_from_slice(&V2);
    let (msgs, end) = decode_all(&bytes);
    assert!(end.is_ok());
    assert_eq!(
        msgs,
        [
            Message::EmptyAudio {
                kind: AudioKind::Slin16
            },
            audio(AudioKind::Slin8, &[0, 1, -1, 4660])
        ]
    );
}

#[test]
fn s10_3_id_with_wrong_length_is_fatal() {
    for len in [0u16, 15, 17, 36] {
        let [hi, lo] = len.to_be_bytes();
        let header = [0x01, hi, lo];
        // Rejected from the header alone, before the payload arrives.
        assert_eq!(
            check(&header, &Limits::default()),
            Err(FrameError::BadIdLength { len })
        );
        let (msgs, end) = decode_all(&header);
        assert!(msgs.is_empty());
        assert!(matches!(
            end,
            Err(CodecError::Frame(FrameError::BadIdLength { len: l })) if l == len
        ));
    }
}

#[test]
fn s10_4_unknown_kinds_including_0x02_are_skipped_and_the_session_kept() {
    let mut bytes = Vec::new();
    for kind in [0x02u8, 0x04, 0x0f, 0x19, 0x7f, 0xfe] {
        bytes.extend_from_slice(&[kind, 0x00, 0x03, 9, 9, 9]);
    }
    bytes.extend_from_slice(&V2);
    let (msgs, end) = decode_all(&bytes);
    assert!(end.is_ok());
    let unknown: Vec<u8> = msgs
        .iter()
        .filter_map(|m| match m {
            Message::Unknown { kind, len: 3 } => Some(*kind),
            _ => None,
        })
        .collect();
    assert_eq!(unknown, [0x02, 0x04, 0x0f, 0x19, 0x7f, 0xfe]);
    assert_eq!(
        msgs.last(),
        Some(&audio(AudioKind::Slin8, &[0, 1, -1, 4660]))
    );
}

#[test]
fn s10_5_audio_before_id_is_a_violation() {
    let t0 = Instant::now();
    let mut gate = IdGate::new(t0, Duration::from_secs(2));
    let (msgs, _) = decode_all(&V2);
    assert_eq!(
        gate.on_message(&msgs[0]),
        Err(HandshakeError::MessageBeforeId { kind: 0x10 })
    );
    let mut gate = IdGate::new(t0, Duration::from_secs(2));
    let dtmf = Message::Dtmf(DtmfDigit::new(b'1').unwrap());
    assert_eq!(
        gate.on_message(&dtmf),
        Err(HandshakeError::MessageBeforeId { kind: 0x03 })
    );
    assert_eq!(
        gate.on_message(&Message::EmptyAudio {
            kind: AudioKind::Slin8
        }),
        Err(HandshakeError::MessageBeforeId { kind: 0x10 })
    );
}

#[test]
fn s10_5_unknown_kind_before_id_is_skipped_and_id_still_accepted() {
    let mut gate = IdGate::new(Instant::now(), Duration::from_secs(2));
    assert_eq!(
        gate.on_message(&Message::Unknown { kind: 0x02, len: 0 }),
        Ok(GateOutcome::SkippedBeforeId { kind: 0x02 })
    );
    assert_eq!(
        gate.on_message(&Message::Id(v1_uuid())),
        Ok(GateOutcome::Identified(v1_uuid()))
    );
}

#[test]
fn s10_5_eof_before_id_is_unanswered_not_an_error() {
    let gate = IdGate::new(Instant::now(), Duration::from_secs(2));
    // A connection that sends nothing and closes: no message, no error at EOF.
    let (msgs, end) = decode_all(&[]);
    assert!(msgs.is_empty() && end.is_ok());
    assert_eq!(gate.on_eof(), EofOutcome::Unanswered);
    assert_eq!(gate.id(), None);
}

#[test]
fn s10_5_id_deadline_uses_the_given_clock() {
    let t0 = Instant::now();
    let timeout = Duration::from_secs(2);
    let mut gate = IdGate::new(t0, timeout);
    assert_eq!(gate.deadline(), Some(t0 + timeout));
    assert_eq!(
        gate.check_deadline(t0 + Duration::from_millis(1999)),
        Ok(())
    );
    assert_eq!(
        gate.check_deadline(t0 + timeout),
        Err(HandshakeError::IdTimeout { timeout })
    );
    gate.on_message(&Message::Id(Uuid::nil())).unwrap();
    assert_eq!(gate.deadline(), None);
    assert_eq!(gate.check_deadline(t0 + Duration::from_secs(60)), Ok(()));
    assert_eq!(gate.on_eof(), EofOutcome::Ended(Uuid::nil()));
}

#[test]
fn s10_6_second_id_is_reported_and_never_rekeys() {
    let mut gate = IdGate::new(Instant::now(), Duration::from_secs(2));
    let first = v1_uuid();
    let second = Uuid::from_u128(0x1234);
    assert_eq!(
        gate.on_message(&Message::Id(first)),
        Ok(GateOutcome::Identified(first))
    );
    assert_eq!(
        gate.on_message(&Message::Id(second)),
        Ok(GateOutcome::SecondIdIgnored(second))
    );
    assert_eq!(gate.id(), Some(first));
    assert_eq!(
        gate.on_message(&audio(AudioKind::Slin8, &[1])),
        Ok(GateOutcome::Pass)
    );
}

#[test]
fn s10_7_oversized_audio_length_is_fatal_from_the_header() {
    let limits = Limits::default(); // 1000 ms
    // 8 kHz: 1 s = 16000 bytes accepted, 16001 refused.
    assert_eq!(limits.max_audio_len(AudioKind::Slin8), 16_000);
    assert_eq!(check(&[0x10, 0x3e, 0x80], &limits), Ok(None));
    assert_eq!(
        check(&[0x10, 0x3e, 0x81], &limits),
        Err(FrameError::OversizedAudio {
            kind: AudioKind::Slin8,
            len: 16_001,
            max: 16_000
        })
    );
    // A bogus length such as 0xffff on an audio kind.
    let (msgs, end) = decode_all(&[0x10, 0xff, 0xff, 0x00]);
    assert!(msgs.is_empty());
    assert!(matches!(
        end,
        Err(CodecError::Frame(FrameError::OversizedAudio {
            len: 0xffff,
            ..
        }))
    ));
    // At 48 kHz a second is 96000 bytes, more than the field allows: the cap is 65535.
    assert_eq!(limits.max_audio_len(AudioKind::Slin48), MAX_PAYLOAD);
    // A stricter limit, 100 ms at 16 kHz = 3200 bytes.
    let strict = Limits::new(100);
    assert_eq!(check(&[0x12, 0x0c, 0x80], &strict), Ok(None));
    assert!(check(&[0x12, 0x0c, 0x82], &strict).is_err());
}

#[test]
fn s10_7_unknown_kinds_may_use_the_full_length_field() {
    let mut bytes = vec![0x42, 0xff, 0xff];
    bytes.resize(3 + 65535, 0xaa);
    let (msgs, end) = decode_all(&bytes);
    assert!(end.is_ok());
    assert_eq!(
        msgs,
        [Message::Unknown {
            kind: 0x42,
            len: 65535
        }]
    );
}

#[test]
fn s10_8_odd_length_audio_drops_the_trailing_byte_and_reports_it() {
    let bytes = [0x10, 0x00, 0x05, 0x01, 0x00, 0x02, 0x00, 0x77];
    let (msgs, end) = decode_all(&bytes);
    assert!(end.is_ok());
    let [
        Message::Audio {
            payload,
            odd_byte_dropped,
            ..
        },
    ] = &msgs[..]
    else {
        panic!("{msgs:?}");
    };
    assert!(*odd_byte_dropped);
    assert_eq!(samples(payload), [1, 2]);
    // Re-encoding restores a 5-byte payload that decodes to the same message.
    let re = encode(&msgs[0]);
    assert_eq!(&re[..3], &[0x10, 0x00, 0x05]);
    assert_eq!(decode_all(&re).0, msgs);
}

#[test]
fn s10_9_mulaw_bytes_under_0x10_are_passed_through_as_bytes() {
    // §9.2: c(ulaw) gives 160-byte payloads of μ-law tagged 0x10. The codec does not
    // interpret them: the payload is exactly the bytes received.
    let ulaw: Vec<u8> = (0..160u8).map(|i| i.wrapping_mul(37) ^ 0xff).collect();
    let mut bytes = vec![0x10, 0x00, 0xa0];
    bytes.extend_from_slice(&ulaw);
    let (msgs, _) = decode_all(&bytes);
    let [
        Message::Audio {
            kind,
            payload,
            odd_byte_dropped,
        },
    ] = &msgs[..]
    else {
        panic!("{msgs:?}");
    };
    assert_eq!(*kind, AudioKind::Slin8);
    assert!(!odd_byte_dropped);
    assert_eq!(&payload[..], &ulaw[..]);
}

#[test]
fn s10_10_rate_change_mid_stream_is_reported_per_message() {
    let mut bytes = V1.to_vec();
    for kind in [0x10u8, 0x16, 0x12, 0x10] {
        bytes.extend_from_slice(&[kind, 0x00, 0x02, 0x07, 0x00]);
    }
    let (msgs, end) = decode_all(&bytes);
    assert!(end.is_ok());
    let kinds: Vec<AudioKind> = msgs
        .iter()
        .filter_map(|m| match m {
            Message::Audio { kind, .. } => Some(*kind),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        [
            AudioKind::Slin8,
            AudioKind::Slin48,
            AudioKind::Slin16,
            AudioKind::Slin8
        ]
    );
}

#[test]
fn s10_12_eof_mid_message_is_a_clear_truncation_error() {
    // Inside the header.
    let (msgs, end) = decode_all(&V2[..2]);
    assert!(msgs.is_empty());
    assert!(matches!(
        end,
        Err(CodecError::TruncatedAtEof {
            buffered: 2,
            needed: None
        })
    ));
    // Inside the payload, after complete messages.
    let mut bytes = V1.to_vec();
    bytes.extend_from_slice(&V2[..7]);
    let (msgs, end) = decode_all(&bytes);
    assert_eq!(msgs, [Message::Id(v1_uuid())]);
    let err = end.unwrap_err();
    assert!(matches!(
        err,
        CodecError::TruncatedAtEof {
            buffered: 7,
            needed: Some(11)
        }
    ));
    assert_eq!(
        err.to_string(),
        "stream ended inside a message: 7 bytes buffered of 11"
    );
}

#[test]
fn s10_13_server_encoder_writes_each_message_contiguously() {
    // One encode call appends exactly one whole frame, so one write per message.
    let mut codec = ServerCodec::default();
    let mut tx = BytesMut::new();
    let payload = vec![0x11u8; 640];
    codec
        .encode(
            ServerMessage::audio(AudioKind::Slin16, &payload).unwrap(),
            &mut tx,
        )
        .unwrap();
    assert_eq!(tx.len(), 643);
    assert_eq!(&tx[..3], &[0x12, 0x02, 0x80]);
    assert!(tx[3..].iter().all(|b| *b == 0x11));
}

// ---- other message kinds ------------------------------------------------------

#[test]
fn dtmf_digits_decode_and_invalid_bytes_are_reported_not_fatal() {
    // §6 observed: 03 00 01 31 / 32 / 33 / 23.
    let bytes = [
        0x03, 0x00, 0x01, 0x31, 0x03, 0x00, 0x01, 0x32, 0x03, 0x00, 0x01, 0x33, 0x03, 0x00, 0x01,
        0x23,
    ];
    let (msgs, _) = decode_all(&bytes);
    let digits: String = msgs
        .iter()
        .map(|m| match m {
            Message::Dtmf(d) => d.as_char(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(digits, "123#");
    let (msgs, end) = decode_all(&[
        0x03, 0x00, 0x01, b'x', 0x03, 0x00, 0x00, 0x03, 0x00, 0x01, b'9',
    ]);
    assert!(end.is_ok());
    assert_eq!(
        msgs,
        [
            Message::InvalidDtmf {
                payload: Bytes::from_static(b"x")
            },
            Message::InvalidDtmf {
                payload: Bytes::new()
            },
            Message::Dtmf(DtmfDigit::new(b'9').unwrap()),
        ]
    );
}

#[test]
fn error_kind_decodes_codes_and_empty_means_unknown() {
    let (msgs, _) = decode_all(&[
        0xff, 0x00, 0x00, 0xff, 0x00, 0x01, 0x04, 0xff, 0x00, 0x01, 0x40,
    ]);
    assert_eq!(
        msgs,
        [
            Message::Error(ErrorCode::UNKNOWN),
            Message::Error(ErrorCode::MEMORY),
            Message::Error(ErrorCode::UNKNOWN)
        ]
    );
}

#[test]
fn hangup_with_a_payload_still_decodes_as_hangup() {
    let (msgs, end) = decode_all(&[0x00, 0x00, 0x02, 0xde, 0xad, 0x00, 0x00, 0x00]);
    assert!(end.is_ok());
    assert_eq!(msgs, [Message::Hangup, Message::Hangup]);
}

#[test]
fn audio_payload_is_a_view_of_the_read_buffer() {
    let mut buf = BytesMut::with_capacity(64);
    buf.extend_from_slice(&V2);
    let base = buf.as_ptr() as usize;
    let Some(Message::Audio { payload, .. }) = ServerCodec::default().decode(&mut buf).unwrap()
    else {
        panic!();
    };
    assert_eq!(payload.as_ptr() as usize, base + HEADER_LEN);
}

#[test]
fn every_message_round_trips_through_write_to_and_the_client_codec() {
    let msgs = [
        Message::Hangup,
        Message::Id(v1_uuid()),
        Message::Dtmf(DtmfDigit::new(b'D').unwrap()),
        Message::InvalidDtmf {
            payload: Bytes::from_static(b"ab"),
        },
        audio(AudioKind::Slin192, &[i16::MIN, i16::MAX]),
        Message::EmptyAudio {
            kind: AudioKind::Slin44_1,
        },
        Message::Error(ErrorCode::from_byte(0x05)),
        Message::Unknown {
            kind: 0x02,
            len: 320,
        },
    ];
    let mut client = ClientCodec::default();
    let mut tx = BytesMut::new();
    for m in &msgs {
        client.encode(m, &mut tx).unwrap();
    }
    let mut got = Vec::new();
    while let Some(m) = client.decode(&mut tx).unwrap() {
        got.push(m);
    }
    assert_eq!(got, msgs);
}

#[test]
fn encoders_refuse_small_buffers_and_overlong_payloads() {
    let mut small = [0u8; 18];
    assert_eq!(
        Message::Id(v1_uuid()).write_to(&mut small),
        Err(EncodeError::BufferTooSmall {
            needed: 19,
            available: 18
        })
    );
    assert_eq!(
        ServerMessage::Hangup.write_to(&mut small[..2]),
        Err(EncodeError::BufferTooSmall {
            needed: 3,
            available: 2
        })
    );
    let huge = Message::InvalidDtmf {
        payload: Bytes::from(vec![0u8; 65536]),
    };
    assert_eq!(
        huge.write_to(&mut [0u8; 4]),
        Err(EncodeError::PayloadTooLong { len: 65536 })
    );
    let mut tx = BytesMut::new();
    assert!(matches!(
        ClientCodec::default().encode(&huge, &mut tx),
        Err(CodecError::Encode(EncodeError::PayloadTooLong {
            len: 65536
        }))
    ));
    assert!(tx.is_empty());
}

#[test]
fn parse_refuses_bytes_that_are_not_one_message() {
    assert_eq!(
        parse(Bytes::from_static(&[0x10, 0x00])),
        Err(FrameError::LengthMismatch {
            expected: 3,
            actual: 2
        })
    );
    assert_eq!(
        parse(Bytes::copy_from_slice(&V2[..10])),
        Err(FrameError::LengthMismatch {
            expected: 11,
            actual: 10
        })
    );
    let mut long = V2.to_vec();
    long.push(0);
    assert_eq!(
        parse(Bytes::from(long)),
        Err(FrameError::LengthMismatch {
            expected: 11,
            actual: 12
        })
    );
}

#[test]
fn pseudo_random_streams_never_panic_and_round_trip() {
    // A deterministic stand-in for the fuzzer (fuzz/fuzz_targets/audiosocket_roundtrip.rs)
    // so plain `cargo test` also exercises odd inputs: kinds drawn mostly from the real
    // ones, lengths mostly small, sometimes huge.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let kinds = [0x00u8, 0x01, 0x02, 0x03, 0x10, 0x12, 0x16, 0x18, 0xff, 0x42];
    let mut decoded = 0;
    for _ in 0..2000 {
        let mut bytes = Vec::new();
        for _ in 0..(next() % 6) {
            let r = next();
            let kind = kinds[(r % kinds.len() as u64) as usize];
            let len: u16 = match (r >> 8) % 8 {
                0 => 16,
                1 => 0xffff,
                2 => 1,
                _ => ((r >> 16) % 64) as u16,
            };
            bytes.push(kind);
            bytes.extend_from_slice(&len.to_be_bytes());
            let body = usize::from(len)
                .min(((r >> 24) % 80) as usize + usize::from(len.is_multiple_of(3)) * 64);
            bytes.extend((0..body).map(|i| (r >> (i % 56)) as u8));
        }
        let (first, _) = decode_all(&bytes);
        let mut re = Vec::new();
        for m in &first {
            re.extend(encode(m));
        }
        let (second, end) = decode_all(&re);
        assert!(end.is_ok(), "{end:?}");
        assert_eq!(first, second);
        decoded += first.len();
    }
    // The generator must actually reach the decoder's message paths.
    assert!(decoded > 1000, "only {decoded} messages decoded");
}
