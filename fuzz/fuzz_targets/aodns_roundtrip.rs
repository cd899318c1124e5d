#![no_main]
//! Fuzz target aodns_roundtrip: the AoDNS decoders a listener runs on network input
//! (base91, the `sequence` list, `%03d'''<base91>` TXT strings; aodns.md §3-§5) must
//! never panic, and whatever they accept must survive encode -> decode unchanged. Also
//! the two other pieces fed by the network: the server's classification of query
//! names (the labels of any name a client sends, §2) and the listener's bookkeeping
//! (any list of numbers and packs a server returns, §10).

use codecs::aodns::{
    HeldPack, ListenerState, Pack, PackBuilder, PackError, PackLimits, PackReader, Pushed,
    QueryTarget, SequenceListDecoder, SequenceListEncoder, SequenceListError, ZoneRoot,
};
use codecs::base91;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    base91_roundtrip(data);
    sequence_list_roundtrip(data);
    pack_roundtrip(data);
    query_name_classification(data);
    listener_bookkeeping(data);
});

/// Query names: the bytes split on 0xff into labels (any bytes, dots included). The
/// classification never panics, a name outside the zone never classifies as inside,
/// and a `seq_<n>` classification names the label it came from (in any case).
fn query_name_classification(data: &[u8]) {
    let root = ZoneRoot::parse("music.example.com").expect("valid root");
    let mut labels: Vec<&[u8]> = data.split(|&b| b == 0xff).collect();
    let target = root.classify_labels(&labels);
    let in_zone = labels.len() >= 3
        && labels[labels.len() - 3..]
            .iter()
            .zip(["music", "example", "com"])
            .all(|(l, r)| l.eq_ignore_ascii_case(r.as_bytes()));
    assert_eq!(target != QueryTarget::OutOfZone, in_zone, "{labels:?}");
    if let QueryTarget::Seq(n) = target {
        // In any case (RFC 4343), but the number exactly as written.
        assert!(labels[0].eq_ignore_ascii_case(format!("seq_{n}").as_bytes()));
    }
    // The same first label right under the root.
    labels.truncate(1);
    labels.extend([&b"music"[..], b"example", b"com"]);
    let under = root.classify_labels(&labels);
    assert_ne!(under, QueryTarget::OutOfZone);
    assert_ne!(under, QueryTarget::Apex);
}

/// The listener's state under any sequence of lists, packs and plays: never panics,
/// never plays a number twice or out of order.
fn listener_bookkeeping(data: &[u8]) {
    let mut state = ListenerState::new();
    let mut to_fetch = Vec::new();
    let mut played: Vec<u64> = Vec::new();
    for chunk in data.chunks(9) {
        let n = chunk
            .iter()
            .skip(1)
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        match chunk[0] % 3 {
            0 => {
                let listed: Vec<u64> = (n..n.saturating_add(u64::from(chunk[0] % 8))).collect();
                state.on_sequence_list(&listed, &mut to_fetch);
                assert!(to_fetch.iter().all(|f| listed.contains(f)));
            }
            1 => {
                let _ = state.on_pack(n, HeldPack::default());
            }
            _ => {
                if let Some((next, _)) = state.next_to_play() {
                    assert!(played.last().is_none_or(|&last| next > last));
                    played.push(next);
                }
            }
        }
    }
}

/// base91: decode -> encode -> decode gives the same bytes; both decoders agree.
fn base91_roundtrip(data: &[u8]) {
    let mut bytes = Vec::new();
    if base91::decode_append(data, &mut bytes).is_err() {
        assert!(
            bytes.is_empty(),
            "failed decode leaves the output as it was"
        );
        return;
    }
    let mut sized = vec![0u8; base91::decoded_len_max(data.len())];
    let n = base91::decode_to(data, &mut sized).expect("decoded_len_max is enough");
    assert_eq!(&sized[..n], &bytes[..]);

    let mut text = String::new();
    base91::encode_append(&bytes, &mut text);
    assert!(text.len() <= base91::encoded_len_max(bytes.len()));
    assert_eq!(text.len(), base91::encoded_len(&bytes));
    let mut again = Vec::new();
    base91::decode_append(text.as_bytes(), &mut again).expect("our own text decodes");
    assert_eq!(again, bytes);
}

/// `sequence`: an accepted ascending list re-encodes (if it fits) to a string that
/// decodes to the same list.
fn sequence_list_roundtrip(data: &[u8]) {
    let mut decoder = SequenceListDecoder::new();
    let mut list = Vec::new();
    if decoder.decode(data, &mut list).is_err() {
        return;
    }
    assert!(!list.is_empty(), "an accepted list is never empty");
    if !list.windows(2).all(|w| w[0] < w[1]) {
        return;
    }
    let mut encoder = SequenceListEncoder::new();
    let text = match encoder.encode_list(&list) {
        Ok(text) => text.to_owned(),
        Err(SequenceListError::TooLong { .. }) => return,
        Err(e) => panic!("ascending non-empty list refused: {e}"),
    };
    assert!(text.len() <= 255);
    let mut again = Vec::new();
    decoder
        .decode(text.as_bytes(), &mut again)
        .expect("our own list decodes");
    assert_eq!(again, list);
}

/// TXT strings (one per line): the frames the reader accepts, packed again and read
/// back, come out identical and in order.
fn pack_roundtrip(data: &[u8]) {
    let mut reader = PackReader::new();
    for line in data.split(|&b| b == b'\n') {
        let _ = reader.push_txt(line);
    }
    let frames: Vec<Vec<u8>> = reader.sorted_frames().map(|(_, f)| f.to_vec()).collect();

    let mut builder = PackBuilder::new(PackLimits::REFERENCE);
    let mut closed = Pack::new();
    let mut packs = Vec::new();
    let mut accepted = Vec::new();
    for frame in &frames {
        match builder.push(frame, &mut closed) {
            Ok(Pushed::Appended) => {}
            Ok(Pushed::ClosedPrevious) => packs.push(closed.clone()),
            Err(PackError::EmptyFrame | PackError::FrameTooLong { .. }) => continue,
            Err(e) => panic!("unexpected pack error {e}"),
        }
        accepted.push(frame.clone());
    }
    let mut last = Pack::new();
    builder.take_open(&mut last);
    packs.push(last);

    let mut read_back = Vec::new();
    for pack in &packs {
        // Every append checked chars_before + 6 + chars <= 2000 (aodns.md §3.1).
        assert!(pack.payload_chars() <= 2000 - 6);
        reader.clear();
        for s in pack.txt_strings() {
            assert!(s.len() <= 250);
            reader
                .push_txt(s.as_bytes())
                .expect("our own string parses");
        }
        read_back.extend(reader.sorted_frames().map(|(_, f)| f.to_vec()));
    }
    assert_eq!(read_back, accepted);
}
