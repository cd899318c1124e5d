#![no_main]
//! Fuzz target jam_roundtrip: RTJam datagrams (rtjam.md §2).
//!
//! Arbitrary bytes are decoded; a valid packet is re-encoded from its wire words (must
//! reproduce the input exactly) and from its decoded floats (header equal, samples
//! within the codec's round-trip error), then decoded again. The bytes also go through
//! the room core as a datagram from a fixed member, and through a client receiver and
//! jitter buffer. Nothing may panic.

use std::net::SocketAddr;

use codecs::jam::packet::{
    JamChannel, JamPacket, MAX_DATAGRAM_LEN, MAX_FRAMES, decode_sample, write_packet,
    write_packet_words,
};
use codecs::jam::{JamReceiver, ReceiverConfig, RoomConfig, RoomCore};
use libfuzzer_sys::fuzz_target;

const T0: u64 = 1_700_000_000_000_000;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = JamPacket::parse(data) {
        let frames = p.frames();
        assert!(frames <= MAX_FRAMES);

        // Wire words: exact reproduction.
        let mut w1 = [0u16; MAX_FRAMES];
        let mut w2 = [0u16; MAX_FRAMES];
        for (d, w) in w1.iter_mut().zip(p.words(JamChannel::Ch1)) {
            *d = w;
        }
        for (d, w) in w2.iter_mut().zip(p.words(JamChannel::Ch2)) {
            *d = w;
        }
        let mut out = [0u8; MAX_DATAGRAM_LEN];
        let n = write_packet_words(p.header(), &w1[..frames], &w2[..frames], &mut out)
            .expect("valid packet re-encodes");
        assert_eq!(&out[..n], data);

        // Floats: decode, encode, decode again.
        let mut f1 = [0f32; MAX_FRAMES];
        let mut f2 = [0f32; MAX_FRAMES];
        p.decode_into(&mut f1, &mut f2)
            .expect("buffers hold MAX_FRAMES");
        let n =
            write_packet(p.header(), &f1[..frames], &f2[..frames], &mut out).expect("re-encodes");
        assert_eq!(n, data.len());
        let q = JamPacket::parse(&out[..n]).expect("re-encoded packet parses");
        assert_eq!(q.header(), p.header());
        assert_eq!(q.frames(), frames);
        for ch in JamChannel::BOTH {
            for (a, b) in p.samples(ch).zip(q.samples(ch)) {
                // Encode uses 32766, decode 32768: a word n comes back as n − n/16384
                // (truncated), at most 4 steps lower, never higher.
                let steps = (a - b) * 32768.0;
                assert!((0.0..=4.0).contains(&steps), "{a} -> {b}");
            }
        }
        for i in 0..frames {
            assert_eq!(p.sample(JamChannel::Ch1, i), Some(decode_sample(w1[i])));
        }
    }

    // Room core: the datagram from a member, with two other members present.
    let mut room = RoomCore::new(RoomConfig::default());
    let a: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9991));
    let b: SocketAddr = SocketAddr::from(([127, 0, 0, 2], 9991));
    let c: SocketAddr = SocketAddr::from(([127, 0, 0, 3], 9991));
    // Two members with client_ids of their own (a client_id belongs to one member).
    for (from, client_id) in [(b, 1u32), (c, 2)] {
        let mut hello = [0u8; 28];
        hello[20..24].copy_from_slice(&client_id.to_be_bytes());
        room.handle_datagram(T0, from, &mut hello, |_, _| {});
    }
    let mut dgram = data.to_vec();
    let mut sent = 0usize;
    room.handle_datagram(T0 + 1, a, &mut dgram, |to, bytes| {
        sent += 1;
        if to == a {
            assert_eq!(bytes.len(), 28);
        } else {
            assert_eq!(bytes.len(), data.len());
        }
    });
    assert!(sent == 0 || sent == 3);
    assert_eq!(room.members().len(), if sent == 3 { 3 } else { 2 });

    // Client receive path: the datagram twice (duplicate) and a read.
    if let Ok(mut rx) = JamReceiver::new(ReceiverConfig {
        seats: 1,
        ..ReceiverConfig::default()
    }) {
        let _ = rx.receive(T0, data);
        let _ = rx.receive(T0 + 3_000, data);
        let mut l = [0f32; 48];
        let mut r = [0f32; 48];
        rx.mix_stereo(T0 + 5_000, &mut l, &mut r);
        assert!(l.iter().chain(&r).all(|v| v.is_finite()));
    }
});
