//! The size fields of the WAV headers our recorders write, and how to make them match
//! the audio on disk (sans-IO: the caller reads the header and the file length, and
//! writes the fixes back).
//!
//! `hound` writes exactly two layouts: the canonical 44-byte PCM header (`fmt ` chunk of
//! 16 bytes; mono or stereo 16-bit) and the 68-byte `WAVE_FORMAT_EXTENSIBLE` header
//! (`fmt ` chunk of 40 bytes; 24-bit, float, more than two channels), each with the
//! `data` chunk right after `fmt `. Anything else is not ours and is never touched.

/// The most bytes of a header this module reads.
pub const MAX_HEADER_LEN: usize = 68;

/// One of our two header layouts, as read from a file's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavLayout {
    /// Bytes before the audio (44 or 68).
    pub header_len: u64,
    /// Bytes of one frame (one sample of every channel).
    pub block_align: u64,
    /// The RIFF chunk size the header states.
    pub riff_size: u32,
    /// The data chunk size the header states.
    pub data_size: u32,
}

/// What a file needs so that its header states exactly the whole frames on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeFix {
    /// Bytes of audio the header must state (whole frames only).
    pub data_size: u32,
    /// The RIFF chunk size the header must state.
    pub riff_size: u32,
    /// The file's length once a partial trailing frame is cut off.
    pub file_len: u64,
    /// Whether the file differs from that (sizes stale, or a partial frame at the end).
    pub needed: bool,
}

impl SizeFix {
    /// Whole frames of audio in the fixed file.
    pub fn frames(&self, layout: &WavLayout) -> u64 {
        u64::from(self.data_size) / layout.block_align
    }

    /// Where the two size fields sit and what they must say: the RIFF size at byte 4,
    /// the data size in the last four bytes of the header.
    pub fn writes(&self, layout: &WavLayout) -> [(u64, [u8; 4]); 2] {
        [
            (4, self.riff_size.to_le_bytes()),
            (layout.header_len - 4, self.data_size.to_le_bytes()),
        ]
    }
}

const WAVE_FORMAT_PCM: u16 = 1;
const WAVE_FORMAT_IEEE_FLOAT: u16 = 3;
const WAVE_FORMAT_EXTENSIBLE: u16 = 0xFFFE;

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Reads `bytes` (a file's first bytes, up to [`MAX_HEADER_LEN`]) as one of our
/// layouts; `None` for anything else.
pub fn parse(bytes: &[u8]) -> Option<WavLayout> {
    if bytes.get(0..4)? != b"RIFF" || bytes.get(8..12)? != b"WAVE" || bytes.get(12..16)? != b"fmt "
    {
        return None;
    }
    let fmt_size = u32_at(bytes, 16)?;
    let tag = u16_at(bytes, 20)?;
    let ours = match fmt_size {
        16 => tag == WAVE_FORMAT_PCM || tag == WAVE_FORMAT_IEEE_FLOAT,
        40 => tag == WAVE_FORMAT_EXTENSIBLE && u16_at(bytes, 36)? == 22,
        _ => false,
    };
    if !ours {
        return None;
    }
    let channels = u64::from(u16_at(bytes, 22)?);
    let block_align = u64::from(u16_at(bytes, 32)?);
    let bits = u64::from(u16_at(bytes, 34)?);
    if channels == 0 || block_align == 0 || block_align != channels * bits.div_ceil(8) {
        return None;
    }
    let data_at = 20 + fmt_size as usize;
    if bytes.get(data_at..data_at + 4)? != b"data" {
        return None;
    }
    Some(WavLayout {
        header_len: data_at as u64 + 8,
        block_align,
        riff_size: u32_at(bytes, 4)?,
        data_size: u32_at(bytes, data_at + 4)?,
    })
}

/// The header sizes and file length that state exactly the whole frames of a file of
/// `file_len` bytes with `layout`; `None` if the file is shorter than its header.
pub fn size_fix(layout: &WavLayout, file_len: u64) -> Option<SizeFix> {
    let on_disk = file_len.checked_sub(layout.header_len)?;
    // A RIFF file cannot state more than 4 GiB; audio beyond that is not addressable.
    let limit = u64::from(u32::MAX) - (layout.header_len - 8);
    let capped = on_disk.min(limit);
    let whole = capped - capped % layout.block_align;
    let data_size = u32::try_from(whole).ok()?;
    let riff_size = u32::try_from(whole + layout.header_len - 8).ok()?;
    let fixed_len = layout.header_len + whole;
    Some(SizeFix {
        data_size,
        riff_size,
        file_len: fixed_len,
        needed: data_size != layout.data_size
            || riff_size != layout.riff_size
            || fixed_len != file_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as `hound` writes it, with the sizes it states.
    fn header(spec: hound::WavSpec, frames_stated: u32) -> Vec<u8> {
        let mut cursor = std::io::Cursor::new(Vec::new());
        let mut writer = hound::WavWriter::new(&mut cursor, spec).unwrap();
        for _ in 0..frames_stated * u32::from(spec.channels) {
            match spec.sample_format {
                hound::SampleFormat::Float => writer.write_sample(0.0f32).unwrap(),
                hound::SampleFormat::Int => writer.write_sample(0i32).unwrap(),
            }
        }
        writer.finalize().unwrap();
        cursor.into_inner()
    }

    fn spec(channels: u16, bits: u16, float: bool) -> hound::WavSpec {
        hound::WavSpec {
            channels,
            sample_rate: 48_000,
            bits_per_sample: bits,
            sample_format: if float {
                hound::SampleFormat::Float
            } else {
                hound::SampleFormat::Int
            },
        }
    }

    #[test]
    fn reads_both_layouts_hound_writes() {
        for (spec, header_len, align) in [
            (spec(1, 16, false), 44, 2),
            (spec(2, 16, false), 44, 4),
            (spec(1, 24, false), 68, 3),
            (spec(2, 32, true), 68, 8),
            (spec(3, 16, false), 68, 6),
        ] {
            let bytes = header(spec, 10);
            let layout = parse(&bytes).unwrap_or_else(|| panic!("{spec:?}"));
            assert_eq!(layout.header_len, header_len, "{spec:?}");
            assert_eq!(layout.block_align, align, "{spec:?}");
            assert_eq!(u64::from(layout.data_size), 10 * align);
            assert_eq!(bytes.len() as u64, header_len + 10 * align);
            // A finished file needs nothing.
            let fix = size_fix(&layout, bytes.len() as u64).unwrap();
            assert!(!fix.needed, "{spec:?}");
            assert_eq!(fix.frames(&layout), 10);
        }
    }

    #[test]
    fn stale_sizes_are_set_to_the_whole_frames_on_disk() {
        let bytes = header(spec(2, 16, false), 100);
        let layout = parse(&bytes).unwrap();
        // The header was written at 100 frames; 250 frames and 3 bytes are on disk.
        let fix = size_fix(&layout, 44 + 250 * 4 + 3).unwrap();
        assert!(fix.needed);
        assert_eq!(fix.data_size, 1000);
        assert_eq!(fix.riff_size, 1036);
        assert_eq!(fix.file_len, 44 + 1000);
        assert_eq!(fix.frames(&layout), 250);
        assert_eq!(
            fix.writes(&layout),
            [(4, 1036u32.to_le_bytes()), (40, 1000u32.to_le_bytes())]
        );
        // A header stating more than is on disk is brought down to it.
        let fix = size_fix(&layout, 44 + 40).unwrap();
        assert_eq!((fix.data_size, fix.needed), (40, true));
        // A partial frame alone is cut.
        let fix = size_fix(&layout, 44 + 400 + 1).unwrap();
        assert_eq!((fix.data_size, fix.file_len, fix.needed), (400, 444, true));
    }

    #[test]
    fn a_header_cut_short_or_foreign_data_is_left_alone() {
        let bytes = header(spec(1, 16, false), 0);
        let layout = parse(&bytes).unwrap();
        assert_eq!(size_fix(&layout, 30), None);
        assert_eq!(parse(&bytes[..30]), None);
        assert_eq!(
            parse(b"not a wav file at all, just some text that is long enough"),
            None
        );
        // Other chunk layouts (a LIST chunk before data, an odd fmt size) are not ours.
        let mut listed = bytes.clone();
        listed[36..40].copy_from_slice(b"LIST");
        assert_eq!(parse(&listed), None);
        let mut odd = bytes.clone();
        odd[16..20].copy_from_slice(&18u32.to_le_bytes());
        assert_eq!(parse(&odd), None);
        let mut inconsistent = bytes;
        inconsistent[32..34].copy_from_slice(&7u16.to_le_bytes());
        assert_eq!(parse(&inconsistent), None);
    }
}
