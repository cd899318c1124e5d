#![no_main]
//! Fuzz target aes67_roundtrip: every AES67-path decoder on arbitrary bytes.
//!
//! * RTP: parse -> write -> parse gives the same header, CSRCs, extension and payload
//!   (padding is dropped on write by design).
//! * SAP: decode -> encode -> decode gives the same packet.
//! * SDP: parse never panics (nor does checking the stream format).
//! * PTP: decode -> encode -> decode gives the same message.
//! * Stateful cores fed the same bytes never panic: jitter buffer push/read, PTP
//!   follower handle/poll, SAP directory handle/expire.
use codecs::aes67::{Alignment, Channels, JitterBuffer, RxConfig, StreamFormat};
use codecs::ptp::{ClockIdentity, Follower, FollowerConfig, PortIdentity};
use codecs::rtp::{PayloadType, RtpPacket};
use codecs::{ptp, sap, sdp};
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = RtpPacket::parse(data) {
        let mut buf = vec![0u8; p.encoded_len()];
        let n = p
            .write_to(&mut buf)
            .expect("a parsed RTP packet re-encodes");
        let q = RtpPacket::parse(&buf[..n]).expect("re-encoded RTP parses");
        assert_eq!(q.header, p.header);
        assert!(q.csrcs().eq(p.csrcs()));
        assert_eq!(q.extension, p.extension);
        assert_eq!(q.payload, p.payload);
    }

    if let Ok(p) = sap::SapPacket::decode(data) {
        let mut buf = vec![0u8; p.encoded_len()];
        let n = p
            .write_to(&mut buf)
            .expect("a decoded SAP packet re-encodes");
        let q = sap::SapPacket::decode(&buf[..n]).expect("re-encoded SAP decodes");
        assert_eq!(q, p);
    }

    if let Ok(info) = sdp::parse(data) {
        let _ = info.stream_format();
        let _ = info.packet_time();
    }

    if let Ok(m) = ptp::Message::decode(data) {
        let mut buf = [0u8; ptp::ANNOUNCE_LEN];
        let n = m
            .write_to(&mut buf)
            .expect("a decoded PTP message re-encodes");
        let q = ptp::Message::decode(&buf[..n]).expect("re-encoded PTP decodes");
        assert_eq!(q, m);
    }

    // Stateful cores: the first 8 bytes pick a time, the rest is the datagram.
    let (now, datagram) = match data.split_first_chunk::<8>() {
        Some((t, rest)) => (u64::from_le_bytes(*t), rest),
        None => (0, data),
    };
    let format = StreamFormat::l24_1ms(Channels::STEREO);
    if let Ok(mut jb) = JitterBuffer::new(RxConfig::new(PayloadType::AES67_DEFAULT, format)) {
        let _ = jb.push(datagram, now);
        let _ = jb.push(datagram, now.wrapping_add(48));
        let mut block = [0.0f32; 96];
        let _ = jb.read_block(now.wrapping_add(144), &mut block);
        let _ = jb.stats();
    }
    // A non-PTP sender's buffer: its own clock followed, latency raised by late packets.
    let mut cfg = RxConfig::new(PayloadType::AES67_DEFAULT, format);
    cfg.alignment = Alignment::FirstPacket;
    cfg.max_latency_frames = codecs::aes67::jitter::MAX_LATENCY_FRAMES;
    if let Ok(mut jb) = JitterBuffer::new(cfg) {
        let mut block = [0.0f32; 96];
        for step in 0..4u64 {
            let t = now.wrapping_add(step * 12_000);
            let _ = jb.push(datagram, t);
            let _ = jb.read_block(jb.playout_time(t), &mut block);
        }
        let _ = (jb.stats(), jb.sender_ppm(), jb.playout_rate_ppm());
    }
    let me = PortIdentity {
        clock: ClockIdentity([2, 0, 0, 0, 0, 0, 0, 1]),
        port: 1,
    };
    let mut f = Follower::new(FollowerConfig::new(0, me));
    let _ = f.handle(datagram, now);
    let _ = f.handle(datagram, now.wrapping_add(1));
    let mut out = [0u8; ptp::SYNC_LEN];
    let _ = f.poll_transmit(now.wrapping_add(2), &mut out);
    let _ = (f.state(), f.offset_from_master_ns(), f.local_to_ptp_ns(now));
    let mut dir = sap::SapDirectory::new(4);
    let t = Duration::from_nanos(now);
    let _ = dir.handle(datagram, t);
    let _ = dir.handle(datagram, t.saturating_add(Duration::from_secs(30)));
    let _ = dir.expire(t.saturating_add(Duration::from_secs(7200)));
    for s in dir.sessions() {
        let _ = s.info();
    }
});
