//! Record names of an AoDNS zone (aodns.md §2): `sequence.<root>` and `seq_<n>.<root>`.

use std::fmt::{self, Write as _};

use super::{SEQ_LABEL_PREFIX, SEQUENCE_LABEL};

/// Longest wire-format name (RFC 1035 §2.3.4), counting length bytes and the root.
const MAX_WIRE_NAME: usize = 255;
/// Longest label (RFC 1035 §2.3.4).
const MAX_LABEL: usize = 63;
/// Wire bytes of the longest label we put under the root: `seq_` + 20 digits of a
/// `u64`, plus its length byte.
const LONGEST_OWN_LABEL_WIRE: usize = 1 + SEQ_LABEL_PREFIX.len() + 20;

/// The zone root of a broadcast, e.g. `music.example.com.`: lower case, absolute.
///
/// Built only by [`ZoneRoot::parse`], so every name made from it is a valid DNS name,
/// even `seq_18446744073709551615.<root>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ZoneRoot {
    /// Presentation form with the trailing dot.
    fqdn: String,
}

/// Why a zone root was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ZoneRootError {
    /// Nothing but dots: the DNS root itself cannot hold an AoDNS zone.
    #[error("zone root is empty")]
    Empty,
    /// Two dots in a row, or a leading dot.
    #[error("empty label at byte {offset} of the zone root")]
    EmptyLabel {
        /// Byte offset of the empty label.
        offset: usize,
    },
    /// A label is longer than 63 bytes.
    #[error("label of {len} bytes at byte {offset} of the zone root (max 63)")]
    LabelTooLong {
        /// Byte offset of the label.
        offset: usize,
        /// Its length.
        len: usize,
    },
    /// A byte other than an ASCII letter, digit, `-` or `_`.
    #[error("byte 0x{byte:02x} at offset {offset} is not allowed in a zone root")]
    InvalidByte {
        /// The offending byte.
        byte: u8,
        /// Its offset.
        offset: usize,
    },
    /// The root leaves no room for `seq_<n>` under it within 255 wire bytes.
    #[error("zone root takes {wire_len} wire bytes; at most {max} leave room for seq_<n>")]
    TooLong {
        /// Wire length of the root.
        wire_len: usize,
        /// Largest accepted wire length.
        max: usize,
    },
}

/// What a query name designates in the zone, for the DNS server's answer logic
/// (aodns.md §9: names that exist get their TXT RRs, all others NOERROR/NODATA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueryTarget {
    /// `sequence.<root>`.
    Sequence,
    /// `seq_<n>.<root>`, `<n>` written in canonical decimal.
    Seq(u64),
    /// The root itself (it holds only the SOA).
    Apex,
    /// Any other name under the root, such as `seq_01` or `a.seq_1` (NODATA).
    OtherInZone,
    /// A name outside the zone (reference: NOERROR, empty answer and authority).
    OutOfZone,
}

impl ZoneRoot {
    /// Validates `domain` (with or without the trailing dot) and lower-cases it.
    pub fn parse(domain: &str) -> Result<ZoneRoot, ZoneRootError> {
        let bare = domain.strip_suffix('.').unwrap_or(domain);
        if bare.is_empty() {
            return Err(ZoneRootError::Empty);
        }
        let mut offset = 0;
        for label in bare.split('.') {
            if label.is_empty() {
                return Err(ZoneRootError::EmptyLabel { offset });
            }
            if label.len() > MAX_LABEL {
                return Err(ZoneRootError::LabelTooLong {
                    offset,
                    len: label.len(),
                });
            }
            if let Some(i) = label
                .bytes()
                .position(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
            {
                return Err(ZoneRootError::InvalidByte {
                    byte: label.as_bytes()[i],
                    offset: offset + i,
                });
            }
            offset += label.len() + 1;
        }
        // "a.b" is 1+1 + 1+1 + 1 (root) = len + 2 wire bytes.
        let wire_len = bare.len() + 2;
        let max = MAX_WIRE_NAME - LONGEST_OWN_LABEL_WIRE;
        if wire_len > max {
            return Err(ZoneRootError::TooLong { wire_len, max });
        }
        let mut fqdn = bare.to_ascii_lowercase();
        fqdn.push('.');
        Ok(ZoneRoot { fqdn })
    }

    /// The root with its trailing dot, e.g. `music.example.com.`.
    pub fn as_str(&self) -> &str {
        &self.fqdn
    }

    /// Appends `sequence.<root>` to `out`.
    pub fn write_sequence_name(&self, out: &mut String) {
        out.push_str(SEQUENCE_LABEL);
        out.push('.');
        out.push_str(&self.fqdn);
    }

    /// Appends `seq_<n>.<root>` to `out` (`n` in decimal, no padding).
    pub fn write_seq_name(&self, n: u64, out: &mut String) {
        // Writing into a String cannot fail.
        let _ = write!(out, "{SEQ_LABEL_PREFIX}{n}.{}", self.fqdn);
    }

    /// `sequence.<root>` as a new string.
    pub fn sequence_name(&self) -> String {
        let mut s = String::with_capacity(SEQUENCE_LABEL.len() + 1 + self.fqdn.len());
        self.write_sequence_name(&mut s);
        s
    }

    /// `seq_<n>.<root>` as a new string.
    pub fn seq_name(&self, n: u64) -> String {
        let mut s = String::with_capacity(LONGEST_OWN_LABEL_WIRE + self.fqdn.len());
        self.write_seq_name(n, &mut s);
        s
    }

    /// Classifies a query name (trailing dot optional).
    ///
    /// Every label is matched case-insensitively (RFC 4343): `SEQ_1.<root>` is
    /// [`QueryTarget::Seq`]. The reference compares names exactly (aodns.md §2), which
    /// starves listeners behind resolvers that randomise the query name's case
    /// (0x20 encoding); the number itself must still be canonical decimal.
    pub fn classify(&self, qname: &str) -> QueryTarget {
        let qname = qname.strip_suffix('.').unwrap_or(qname);
        let root = self.fqdn.strip_suffix('.').unwrap_or(&self.fqdn);
        if qname.eq_ignore_ascii_case(root) {
            return QueryTarget::Apex;
        }
        let Some(split) = qname.len().checked_sub(root.len() + 1) else {
            return QueryTarget::OutOfZone;
        };
        let (label, suffix) = qname.as_bytes().split_at(split);
        if suffix[0] != b'.' || !suffix[1..].eq_ignore_ascii_case(root.as_bytes()) {
            return QueryTarget::OutOfZone;
        }
        classify_record_label(label)
    }

    /// Labels of the root, e.g. 3 for `music.example.com.`.
    pub fn label_count(&self) -> usize {
        self.root_labels().count()
    }

    /// The root's labels, left to right, without the empty root label.
    fn root_labels(&self) -> std::str::Split<'_, char> {
        self.fqdn.strip_suffix('.').unwrap_or(&self.fqdn).split('.')
    }

    /// Classifies a query name given as its wire labels, left to right, without the
    /// empty root label (what a DNS parser yields). Same rules as
    /// [`ZoneRoot::classify`], but a label may hold any bytes, dots included: the DNS
    /// server hands names over as labels, so an escaped `\.` inside a label can never
    /// be mistaken for a label boundary.
    pub fn classify_labels<L: AsRef<[u8]>>(&self, labels: &[L]) -> QueryTarget {
        let Some(relative) = labels.len().checked_sub(self.label_count()) else {
            return QueryTarget::OutOfZone;
        };
        let suffix_matches = labels[relative..]
            .iter()
            .zip(self.root_labels())
            .all(|(label, root)| label.as_ref().eq_ignore_ascii_case(root.as_bytes()));
        if !suffix_matches {
            return QueryTarget::OutOfZone;
        }
        match &labels[..relative] {
            [] => QueryTarget::Apex,
            [label] => classify_record_label(label.as_ref()),
            _ => QueryTarget::OtherInZone,
        }
    }
}

/// What the single label under the root designates, compared case-insensitively
/// (RFC 4343).
fn classify_record_label(label: &[u8]) -> QueryTarget {
    if label.eq_ignore_ascii_case(SEQUENCE_LABEL.as_bytes()) {
        return QueryTarget::Sequence;
    }
    let prefix = SEQ_LABEL_PREFIX.as_bytes();
    match label
        .split_at_checked(prefix.len())
        .filter(|(head, _)| head.eq_ignore_ascii_case(prefix))
        .and_then(|(_, digits)| parse_canonical_u64(digits))
    {
        Some(n) => QueryTarget::Seq(n),
        None => QueryTarget::OtherInZone,
    }
}

impl fmt::Display for ZoneRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fqdn)
    }
}

impl std::str::FromStr for ZoneRoot {
    type Err = ZoneRootError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ZoneRoot::parse(s)
    }
}

/// Decimal digits exactly as `write_seq_name` writes them: no sign, no leading zero
/// (except "0" itself), no overflow.
fn parse_canonical_u64(digits: &[u8]) -> Option<u64> {
    match digits {
        [] => None,
        [b'0', _, ..] => None,
        _ => digits.iter().try_fold(0u64, |acc, &d| {
            if d.is_ascii_digit() {
                acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            } else {
                None
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_sheet_names() {
        let root = ZoneRoot::parse("music.example.com").unwrap();
        assert_eq!(root.as_str(), "music.example.com.");
        assert_eq!(root.sequence_name(), "sequence.music.example.com.");
        assert_eq!(root.seq_name(49680), "seq_49680.music.example.com.");
        assert_eq!(root.seq_name(0), "seq_0.music.example.com.");
        let mut reused = String::from("x");
        reused.clear();
        root.write_seq_name(u64::MAX, &mut reused);
        assert_eq!(reused, "seq_18446744073709551615.music.example.com.");
    }

    #[test]
    fn normalises_case_and_trailing_dot() {
        let a = ZoneRoot::parse("Music.Example.COM.").unwrap();
        assert_eq!(a, "music.example.com".parse().unwrap());
        assert_eq!(a.to_string(), "music.example.com.");
    }

    #[test]
    fn rejects_bad_roots() {
        assert_eq!(ZoneRoot::parse("."), Err(ZoneRootError::Empty));
        assert_eq!(ZoneRoot::parse(""), Err(ZoneRootError::Empty));
        assert_eq!(
            ZoneRoot::parse("a..b"),
            Err(ZoneRootError::EmptyLabel { offset: 2 })
        );
        assert_eq!(
            ZoneRoot::parse(".a"),
            Err(ZoneRootError::EmptyLabel { offset: 0 })
        );
        assert_eq!(
            ZoneRoot::parse("ok.bad label"),
            Err(ZoneRootError::InvalidByte {
                byte: b' ',
                offset: 6
            })
        );
        let long_label = "a".repeat(64);
        assert_eq!(
            ZoneRoot::parse(&long_label),
            Err(ZoneRootError::LabelTooLong { offset: 0, len: 64 })
        );
        // 230 wire bytes is the most that leaves room for a 25-byte seq_<u64> label.
        let fits = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(36),
        ]
        .join(".");
        assert_eq!(fits.len() + 2, 230);
        let root = ZoneRoot::parse(&fits).unwrap();
        let longest = root.seq_name(u64::MAX);
        let wire: usize = longest
            .trim_end_matches('.')
            .split('.')
            .map(|l| l.len() + 1)
            .sum::<usize>()
            + 1;
        assert_eq!(wire, 255);
        let too_long = format!("{fits}e");
        assert_eq!(
            ZoneRoot::parse(&too_long),
            Err(ZoneRootError::TooLong {
                wire_len: 231,
                max: 230
            })
        );
    }

    #[test]
    fn classifies_query_names_in_any_case() {
        let root = ZoneRoot::parse("music.example.com").unwrap();
        let cases = [
            ("sequence.music.example.com.", QueryTarget::Sequence),
            ("sequence.music.example.com", QueryTarget::Sequence),
            ("sequence.MUSIC.example.com.", QueryTarget::Sequence),
            ("seq_0.music.example.com.", QueryTarget::Seq(0)),
            ("seq_49680.music.example.com.", QueryTarget::Seq(49680)),
            (
                "seq_18446744073709551615.music.example.com.",
                QueryTarget::Seq(u64::MAX),
            ),
            (
                "seq_18446744073709551616.music.example.com.",
                QueryTarget::OtherInZone,
            ),
            // Any case (RFC 4343; resolvers randomise it, 0x20 encoding).
            ("SEQ_1.music.example.com.", QueryTarget::Seq(1)),
            ("Sequence.music.example.com.", QueryTarget::Sequence),
            ("SeQuEnCe.MuSiC.eXaMpLe.CoM.", QueryTarget::Sequence),
            ("sEq_42.MUSIC.EXAMPLE.COM", QueryTarget::Seq(42)),
            ("SEQ_01.music.example.com.", QueryTarget::OtherInZone),
            ("sequences.music.example.com.", QueryTarget::OtherInZone),
            ("seq_01.music.example.com.", QueryTarget::OtherInZone),
            ("seq_.music.example.com.", QueryTarget::OtherInZone),
            ("seq_+1.music.example.com.", QueryTarget::OtherInZone),
            ("seq-1.music.example.com.", QueryTarget::OtherInZone),
            ("a.seq_1.music.example.com.", QueryTarget::OtherInZone),
            ("music.example.com.", QueryTarget::Apex),
            ("MUSIC.example.com", QueryTarget::Apex),
            ("example.com.", QueryTarget::OutOfZone),
            ("seq_1.music.example.org.", QueryTarget::OutOfZone),
            ("xmusic.example.com.", QueryTarget::OutOfZone),
            ("", QueryTarget::OutOfZone),
            (".", QueryTarget::OutOfZone),
        ];
        for (name, want) in cases {
            assert_eq!(root.classify(name), want, "{name}");
        }
    }

    #[test]
    fn classifies_wire_labels_like_names() {
        let root = ZoneRoot::parse("music.example.com").unwrap();
        assert_eq!(root.label_count(), 3);
        let cases: [(&[&[u8]], QueryTarget); 10] = [
            (
                &[b"sequence", b"music", b"example", b"com"],
                QueryTarget::Sequence,
            ),
            (
                &[b"seq_7", b"MUSIC", b"Example", b"com"],
                QueryTarget::Seq(7),
            ),
            (
                &[b"SEQ_7", b"music", b"example", b"com"],
                QueryTarget::Seq(7),
            ),
            (&[b"music", b"example", b"com"], QueryTarget::Apex),
            (
                &[b"a", b"seq_1", b"music", b"example", b"com"],
                QueryTarget::OtherInZone,
            ),
            // A dot inside a label is a different name from two labels.
            (
                &[b"seq_1.music", b"example", b"com"],
                QueryTarget::OutOfZone,
            ),
            (
                &[b"x", b"seq_1.music", b"example", b"com"],
                QueryTarget::OutOfZone,
            ),
            (
                &[b"seq_1", b"music", b"example", b"org"],
                QueryTarget::OutOfZone,
            ),
            (&[b"example", b"com"], QueryTarget::OutOfZone),
            (&[], QueryTarget::OutOfZone),
        ];
        for (labels, want) in cases {
            assert_eq!(root.classify_labels(labels), want, "{labels:?}");
        }
        // Agrees with the text form for every name that has one.
        for name in ["seq_12.music.example.com.", "sequence.a.music.example.com."] {
            let labels: Vec<&str> = name.trim_end_matches('.').split('.').collect();
            assert_eq!(root.classify_labels(&labels), root.classify(name), "{name}");
        }
    }

    #[test]
    fn classify_inverts_the_name_builders() {
        let root = ZoneRoot::parse("a.b").unwrap();
        for n in [0, 1, 9, 10, 99, 12345, u64::MAX - 1, u64::MAX] {
            assert_eq!(root.classify(&root.seq_name(n)), QueryTarget::Seq(n));
        }
        assert_eq!(root.classify(&root.sequence_name()), QueryTarget::Sequence);
    }
}
