#![no_main]
//! Fuzz target ptp_follower: sequences of PTP datagrams through the follower (aes67.md §11).
//!
//! The input is cut into records `[len u8][dt u16 LE][datagram len bytes]`: each
//! datagram reaches the follower `dt` µs after the previous one (a whole exchange of
//! Announce, Sync, Follow_Up and Delay_Resp fits in one input, so the fit, the path
//! delay and the mapping are reached, not only the decoder). Each decodable datagram
//! also goes decode -> encode -> decode. Between datagrams the follower is asked for a
//! Delay_Req and for every figure the gateway publishes; nothing may panic.

use codecs::ptp::{self, ClockIdentity, Follower, FollowerConfig, Message, PortIdentity};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let me = PortIdentity {
        clock: ClockIdentity([2, 0, 0, 0, 0, 0, 0, 1]),
        port: 1,
    };
    let mut config = FollowerConfig::new(0, me);
    // Lock and fit with few samples so short inputs reach every state.
    config.min_samples_for_lock = 2;
    config.min_delay_samples_for_lock = 1;
    config.window = 4;
    let mut follower = Follower::new(config);
    let mut now: u64 = 1_000_000_000;
    let mut out = [0u8; ptp::SYNC_LEN];
    let mut rest = data;
    while let [len, dt0, dt1, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        rest = next;
        now = now.saturating_add(u64::from(u16::from_le_bytes([*dt0, *dt1])) * 1_000);

        if let Ok(m) = Message::decode(datagram) {
            let mut buf = [0u8; ptp::ANNOUNCE_LEN];
            let n = m
                .write_to(&mut buf)
                .expect("a decoded PTP message re-encodes");
            assert_eq!(Message::decode(&buf[..n]), Ok(m));
        }
        let _ = follower.handle(datagram, now);
        if let Ok(Some(n)) = follower.poll_transmit(now, &mut out) {
            let request = Message::decode(&out[..n]).expect("our Delay_Req decodes");
            follower.delay_req_sent(request.header.sequence_id, now.saturating_add(3));
        }
        let _ = (
            follower.state(),
            follower.grandmaster(),
            follower.offset_from_master_ns(),
            follower.last_offset_ns(),
            follower.rate_ratio(),
            follower.mean_path_delay_ns(),
            follower.fit_rms_ns(),
            follower.last_sync_local_ns(),
            follower.poll_timeout(),
            follower.stats(),
        );
        if let Some(mapping) = follower.mapping() {
            let _ = mapping.ptp_at(now);
            let _ = mapping.ptp_at(now.saturating_add(10_000_000_000));
            assert_eq!(
                follower.local_to_ptp_ns(now),
                u64::try_from(mapping.ptp_at(now)).ok()
            );
        }
    }
});
