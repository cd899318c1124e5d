//! AoDNS (audio over DNS TXT records): the wire format, sans-IO (aodns.md).
//!
//! A broadcast encodes 60 ms Opus frames, writes each packet as one TXT string
//! `%03d'''<base91>` and gathers strings into a *pack* until a byte limit is reached.
//! Each closed pack is published as `seq_<n>.<root>` (one TXT RR per frame); the
//! name `sequence.<root>` lists the published numbers (ascending, comma-joined, zlib
//! level 9, base91, one string of at most 255 bytes). Listeners poll `sequence`,
//! fetch the packs they lack and play them in order.
//!
//! This module builds and parses those strings and names and computes the TTLs; the
//! DNS server (hickory) and the broadcast node live in the gateway. Pieces:
//!
//! - [`ZoneRoot`] / [`QueryTarget`]: record names and query classification (§2);
//! - [`PackBuilder`] / [`Pack`]: frames into packs with the reference limits (§3);
//! - [`PackReader`] / [`parse_txt_string`]: the listener side of §3;
//! - [`SequenceListEncoder`] / [`SequenceListDecoder`]: the `sequence` record (§5);
//! - [`seq_ttl`] / [`TtlRule`]: the `seq_<n>` TTL (§7);
//! - [`ListenerState`]: what a listener fetches and plays next (§10).

mod listener;
mod names;
mod pack;
mod seqlist;
mod ttl;

pub use listener::{HeldPack, ListenerState, ListenerStats};
pub use names::{QueryTarget, ZoneRoot, ZoneRootError};
pub use pack::{
    FRAME_SEPARATOR, MAX_FRAMES_PER_PACK, Pack, PackBuilder, PackError, PackLimits, PackReader,
    Pushed, TXT_PREFIX_LEN, TxtFrame, TxtParseError, parse_txt_string,
};
pub use seqlist::{
    EncodedSequenceList, MAX_DECODED_LIST_BYTES, MAX_WINDOW_PROBE, SequenceListDecoder,
    SequenceListEncoder, SequenceListError,
};
pub use ttl::{MIN_SEQ_TTL_SECS, TtlRule, seq_ttl};

/// Longest DNS character-string (RFC 1035 §3.3): one length byte, 0..=255 bytes.
pub const MAX_TXT_STRING_BYTES: usize = 255;

/// Label of the record listing the published sequence numbers (aodns.md §2).
pub const SEQUENCE_LABEL: &str = "sequence";

/// Prefix of a pack's label, followed by its decimal number (`seq_49680`).
pub const SEQ_LABEL_PREFIX: &str = "seq_";

/// TTL of `sequence.<root>`, fixed by the reference (aodns.md §7).
pub const SEQUENCE_TTL_SECS: u32 = 10;

/// Packs the reference keeps published (`--max-sequences`, aodns.md §6).
pub const DEFAULT_MAX_SEQUENCES: usize = 75;

/// TTL of the zone's SOA record (aodns.md §2).
pub const SOA_TTL_SECS: u32 = 60;
/// SOA serial the reference publishes (aodns.md §2; MNAME and RNAME are the root label).
pub const SOA_SERIAL: u32 = 201_307_231;
/// SOA refresh, seconds.
pub const SOA_REFRESH_SECS: u32 = 3600;
/// SOA retry, seconds.
pub const SOA_RETRY_SECS: u32 = 10_800;
/// SOA expire, seconds.
pub const SOA_EXPIRE_SECS: u32 = 86_400;
/// SOA minimum (negative-caching TTL), seconds.
pub const SOA_MINIMUM_SECS: u32 = 3600;

#[cfg(test)]
mod tests {
    //! The sheet's worked example (aodns.md §11) end to end: the TXT rdata and TTLs
    //! our builders produce are compared with the bytes of the reference reply.
    use super::*;
    use crate::opus::OpusFormat;

    fn unhex(hex: &str) -> Vec<u8> {
        let hex: String = hex.split_whitespace().collect();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The 147-byte reply of the reference server to `TXT seq_1.music.example.com`
    /// (aodns.md §11), ID 0x1234.
    const SEQ_1_REPLY: &str = "
        1234 8580 0001 0003 0001 0000
        057365715f31 056d75736963 076578616d706c65 03636f6d 00 0010 0001
        c00c 0010 0001 00000005 000b 0a 303030272727 3a435141
        c00c 0010 0001 00000005 000b 0a 303031272727 607e6c57
        c00c 0010 0001 00000005 000e 0d 303032272727 3e4f774a683e41
        c012 0006 0001 0000003c 0016 00 00 0bffb45f 00000e10 00002a30 00015180 00000e10";

    /// Splits the reply's answer and authority RRs into (ttl, rdata); every owner
    /// name in it is a 2-byte compression pointer.
    fn records(reply: &[u8]) -> Vec<(u16, u32, Vec<u8>)> {
        let mut pos = 12 + 25 + 4; // header, question name, qtype + qclass
        let mut out = Vec::new();
        while pos < reply.len() {
            let rtype = u16::from_be_bytes([reply[pos + 2], reply[pos + 3]]);
            let ttl = u32::from_be_bytes(reply[pos + 6..pos + 10].try_into().unwrap());
            let len = usize::from(u16::from_be_bytes([reply[pos + 10], reply[pos + 11]]));
            out.push((rtype, ttl, reply[pos + 12..pos + 12 + len].to_vec()));
            pos += 12 + len;
        }
        out
    }

    #[test]
    fn reproduces_the_worked_example_reply_contents() {
        let reply = unhex(SEQ_1_REPLY);
        assert_eq!(reply.len(), 147);
        let rrs = records(&reply);
        assert_eq!(rrs.len(), 4);

        // §11 lowers the pack limit to 30 bytes so the pack closes after 3 frames.
        let limits = PackLimits::new(250, 30).unwrap();
        let mut builder = PackBuilder::new(limits);
        let mut closed = Pack::new();
        for frame in [&[0x00, 0x01, 0x02][..], &[0xf8, 0xff, 0xfe], b"Hello"] {
            assert_eq!(builder.push(frame, &mut closed).unwrap(), Pushed::Appended);
        }
        // The three hold 4 + 4 + 7 = 15 base91 chars; 15 + 6 + 10 > 30 closes the pack.
        assert_eq!(
            builder.push(&[0; 8], &mut closed).unwrap(),
            Pushed::ClosedPrevious
        );
        assert_eq!(builder.open_pack().frame_count(), 1);
        assert_eq!(closed.frame_count(), 3);

        let ttl = seq_ttl(
            TtlRule::Reference,
            closed.frame_count(),
            OpusFormat::default(),
            DEFAULT_MAX_SEQUENCES,
        );
        for ((rtype, rr_ttl, rdata), txt) in rrs.iter().zip(closed.txt_strings()) {
            assert_eq!(*rtype, 16, "TXT");
            assert_eq!(*rr_ttl, ttl);
            // rdata = one character-string: length byte, then the string.
            assert_eq!(usize::from(rdata[0]), txt.len());
            assert_eq!(&rdata[1..], txt.as_bytes());
        }

        let (rtype, soa_ttl, soa) = &rrs[3];
        assert_eq!(*rtype, 6, "SOA");
        assert_eq!(*soa_ttl, SOA_TTL_SECS);
        let timer = |i: usize| u32::from_be_bytes(soa[2 + 4 * i..6 + 4 * i].try_into().unwrap());
        assert_eq!(&soa[..2], [0, 0], "MNAME and RNAME are the root label");
        assert_eq!(
            [timer(0), timer(1), timer(2), timer(3), timer(4)],
            [
                SOA_SERIAL,
                SOA_REFRESH_SECS,
                SOA_RETRY_SECS,
                SOA_EXPIRE_SECS,
                SOA_MINIMUM_SECS
            ]
        );

        // The listener side reads the same rdata back into the three frames.
        let mut reader = PackReader::new();
        for (_, _, rdata) in rrs.iter().take(3).rev() {
            reader.push_txt(&rdata[1..]).unwrap();
        }
        let frames: Vec<(u32, Vec<u8>)> = reader
            .sorted_frames()
            .map(|(i, f)| (i, f.to_vec()))
            .collect();
        assert_eq!(
            frames,
            [
                (0, vec![0, 1, 2]),
                (1, vec![0xf8, 0xff, 0xfe]),
                (2, b"Hello".to_vec())
            ]
        );
    }

    #[test]
    fn sequence_reply_rdata_matches_the_sheet() {
        // §11: the `sequence` reply has TTL 10 and rdata 0x10 "q:yEDjaKjAlBYEtp".
        let mut encoder = SequenceListEncoder::new();
        let list = encoder.encode_window(0, 2).unwrap();
        let mut rdata = vec![u8::try_from(list.text.len()).unwrap()];
        rdata.extend_from_slice(list.text.as_bytes());
        assert_eq!(rdata, [&[0x10][..], b"q:yEDjaKjAlBYEtp"].concat());
        assert_eq!(SEQUENCE_TTL_SECS, 0x0a);
    }

    #[test]
    fn names_in_the_reply_are_the_ones_we_build() {
        let reply = unhex(SEQ_1_REPLY);
        // Question name, wire form, at offset 12.
        let mut name = String::new();
        let mut pos = 12;
        while reply[pos] != 0 {
            let len = usize::from(reply[pos]);
            name.push_str(std::str::from_utf8(&reply[pos + 1..pos + 1 + len]).unwrap());
            name.push('.');
            pos += 1 + len;
        }
        let root = ZoneRoot::parse("music.example.com").unwrap();
        assert_eq!(name, root.seq_name(1));
        assert_eq!(root.classify(&name), QueryTarget::Seq(1));
    }
}
