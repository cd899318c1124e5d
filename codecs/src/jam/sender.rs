//! Client-side send state for one jammer: client_id, the sequence counter and the
//! server_time echo that lets the server measure round trips (rtjam.md §3, §5, §10).

use super::packet::{BufferError, JamHeader, encoded_len, write_packet};

/// Stamps and encodes one jammer's outgoing packets. One per local jammer (per caller);
/// the driver sends every packet from the same UDP socket it receives on (rtjam.md §1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JamSender {
    client_id: u32,
    next_sequence: u32,
    last_server_time: u64,
}

impl JamSender {
    /// A sender for `client_id`; its first packet has sequence 0, as rtjam's client
    /// after a join (rtjam.md §3).
    pub fn new(client_id: u32) -> JamSender {
        JamSender {
            client_id,
            next_sequence: 0,
            last_server_time: 0,
        }
    }

    /// The jammer identity written into every packet.
    pub fn client_id(&self) -> u32 {
        self.client_id
    }

    /// Sequence number the next packet will carry.
    pub fn next_sequence(&self) -> u32 {
        self.next_sequence
    }

    /// The server_time the next packet will echo (0 until one was observed).
    pub fn last_server_time(&self) -> u64 {
        self.last_server_time
    }

    /// Notes a header received from the server (any packet, including the header-only
    /// echo): its server_time is echoed in every later packet (rtjam.md §5 step 2).
    pub fn observe(&mut self, header: &JamHeader) {
        self.last_server_time = header.server_time;
    }

    /// Encodes the next packet into `out` with client_time = `now_us` (µs since the Unix
    /// epoch), the echoed server_time, the chunks byte rtjam's encoder writes, and the
    /// next sequence number; returns the datagram length. The sequence advances (with
    /// wrap-around) only when encoding succeeds.
    pub fn write_packet(
        &mut self,
        now_us: u64,
        ch1: &[f32],
        ch2: &[f32],
        out: &mut [u8],
    ) -> Result<usize, BufferError> {
        let header = JamHeader {
            channel: 0,
            sample_rate: 0,
            num_audio_chunks: JamHeader::chunks_for_len(encoded_len(ch1.len())),
            beat: 0,
            server_time: self.last_server_time,
            client_time: now_us,
            client_id: self.client_id,
            sequence: self.next_sequence,
        };
        let n = write_packet(&header, ch1, ch2, out)?;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jam::packet::{JamPacket, STANDARD_FRAMES, STANDARD_PACKET_LEN};

    #[test]
    fn stamps_like_the_stock_client() {
        let mut s = JamSender::new(5555);
        let silence = [0.0f32; STANDARD_FRAMES];
        let mut out = [0u8; 1024];
        let n = s.write_packet(10, &silence, &silence, &mut out).unwrap();
        assert_eq!(n, STANDARD_PACKET_LEN);
        let p = JamPacket::parse(&out[..n]).unwrap();
        // rtjam.md §3 [verified]: channel 0, sample_rate 0, chunks 16, id 0x15B3, seq 0.
        assert_eq!(&out[..4], &[0, 0, 16, 0]);
        assert_eq!(&out[20..24], &[0x00, 0x00, 0x15, 0xB3]);
        assert_eq!(p.header().sequence, 0);
        assert_eq!(p.header().server_time, 0);
        assert_eq!(p.header().client_time, 10);

        s.observe(&JamHeader {
            server_time: 777,
            ..JamHeader::default()
        });
        let n = s.write_packet(20, &silence, &silence, &mut out).unwrap();
        let p = JamPacket::parse(&out[..n]).unwrap();
        assert_eq!(p.header().sequence, 1);
        assert_eq!(p.header().server_time, 777);
    }

    #[test]
    fn sequence_wraps_and_failed_encode_does_not_advance() {
        let mut s = JamSender::new(1);
        s.next_sequence = u32::MAX;
        let mut out = [0u8; 64];
        s.write_packet(0, &[0.0], &[0.0], &mut out).unwrap();
        assert_eq!(s.next_sequence(), 0);
        assert!(s.write_packet(0, &[0.0; 20], &[0.0; 20], &mut out).is_err());
        assert_eq!(s.next_sequence(), 0);
    }
}
