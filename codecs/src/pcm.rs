//! Sample-format conversions between wire bytes and the `f32` samples of the patchbay.
//!
//! * s16le: AudioSocket audio payloads (audiosocket.md §3: signed 16-bit little-endian mono).
//! * G.711 μ-law and A-law: what a `c(ulaw)`/`c(alaw)` channel-driver session carries
//!   (audiosocket.md §9). Encoder and decoder follow the ITU-T G.191 software tools library
//!   reference (`g711.c`), which implements ITU-T G.711 bit-exactly.
//! * L16 / L24: AES67 RTP payloads, big-endian two's complement, interleaved frames
//!   (aes67.md §3).
//!
//! Conventions shared by every function here:
//! * `f32` full scale is 1.0: 16-bit code 32768 and 24-bit code 8388608 map to 1.0. Encoding
//!   rounds to nearest (ties to even) and saturates at the largest code; NaN encodes as 0.
//! * The caller owns both buffers. Each function converts as many samples as both buffers
//!   hold (`min` of the two lengths, counted in samples) and returns how many elements of its
//!   **output** it wrote (samples for `*_to_f32`/`read_*`, bytes for encoders). Incomplete
//!   trailing bytes of an input (an odd byte of s16le, one or two bytes of L24) are ignored.
//! * Nothing allocates and nothing panics on any input, so these run on the media path and
//!   under the fuzzer.

/// Scale between `f32` samples and 16-bit codes (16-bit full scale).
const FULL_SCALE_16: f32 = 32_768.0;
/// Scale between `f32` samples and 24-bit codes (24-bit full scale).
const FULL_SCALE_24: f64 = 8_388_608.0;

/// Rounds to nearest, ties to even, for `|v| < 2^22` without calling libm (baseline x86-64
/// has no `roundss`): adding 1.5 * 2^23 pushes the fraction out of the f32 mantissa.
#[inline(always)]
fn round_f32(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// Same trick in f64 (1.5 * 2^52), exact for the 24-bit range.
#[inline(always)]
fn round_f64(v: f64) -> f64 {
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    (v + MAGIC) - MAGIC
}

/// Converts one `f32` sample to a 16-bit code: scale, clamp, round, saturate.
#[inline(always)]
fn f32_to_i16(x: f32) -> i16 {
    // The clamp keeps the magic rounding in range; NaN passes through it and `as` maps it to 0.
    round_f32((x * FULL_SCALE_16).clamp(-32_768.0, 32_767.0)) as i16
}

/// Converts one 16-bit code to `f32`.
#[inline(always)]
fn i16_to_f32(v: i16) -> f32 {
    f32::from(v) / FULL_SCALE_16
}

/// Converts one `f32` sample to a 24-bit code in an `i32`.
#[inline(always)]
fn f32_to_i24(x: f32) -> i32 {
    round_f64((f64::from(x) * FULL_SCALE_24).clamp(-8_388_608.0, 8_388_607.0)) as i32
}

// ---------------------------------------------------------------------------------------
// s16le (AudioSocket)
// ---------------------------------------------------------------------------------------

/// Decodes signed 16-bit little-endian samples (an AudioSocket audio payload) to `f32`.
///
/// Converts `min(bytes.len() / 2, out.len())` samples (an odd trailing byte is ignored,
/// audiosocket.md §3) and returns that count.
pub fn s16le_to_f32(bytes: &[u8], out: &mut [f32]) -> usize {
    let mut n = 0;
    for (pair, o) in bytes.chunks_exact(2).zip(out.iter_mut()) {
        *o = i16_to_f32(i16::from_le_bytes([pair[0], pair[1]]));
        n += 1;
    }
    n
}

/// Encodes `f32` samples as signed 16-bit little-endian (rounding, saturating).
///
/// Converts `min(samples.len(), out.len() / 2)` samples and returns the number of **bytes**
/// written (always even).
pub fn f32_to_s16le(samples: &[f32], out: &mut [u8]) -> usize {
    let mut written = 0;
    for (&x, pair) in samples.iter().zip(out.chunks_exact_mut(2)) {
        pair.copy_from_slice(&f32_to_i16(x).to_le_bytes());
        written += 2;
    }
    written
}

// ---------------------------------------------------------------------------------------
// G.711
// ---------------------------------------------------------------------------------------

/// μ-law expansion of one code, ITU-T G.191 `ulaw_expand`.
const fn ulaw_expand(code: u8) -> i16 {
    let negative = code < 0x80;
    let inverted = !code; // the code is transmitted with all bits inverted
    let exponent = ((inverted >> 4) & 0x07) as i32;
    let mantissa = (inverted & 0x0F) as i32;
    let step = 4 << (exponent + 1);
    let magnitude = (0x80 << exponent) + step * mantissa + step / 2 - 4 * 33;
    (if negative { -magnitude } else { magnitude }) as i16
}

/// A-law expansion of one code, ITU-T G.191 `alaw_expand`.
const fn alaw_expand(code: u8) -> i16 {
    let toggled = (code ^ 0x55) & 0x7F; // even bits are inverted on the line
    let exponent = (toggled >> 4) as i32;
    let mut mantissa = (toggled & 0x0F) as i32;
    if exponent > 0 {
        mantissa += 16; // implicit leading one
    }
    // Left-justify and add half a quantisation step (reconstruct mid-interval).
    mantissa = (mantissa << 4) + 0x08;
    if exponent > 1 {
        mantissa <<= exponent - 1;
    }
    (if code > 127 { mantissa } else { -mantissa }) as i16
}

/// Builds a 256-entry decode table at compile time (`ulaw == true` for μ-law, else A-law;
/// const fns cannot call through function pointers).
const fn expand_table(ulaw: bool) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = if ulaw {
            ulaw_expand(code as u8)
        } else {
            alaw_expand(code as u8)
        };
        code += 1;
    }
    table
}

/// μ-law code -> 16-bit linear.
static ULAW_TO_LINEAR: [i16; 256] = expand_table(true);
/// A-law code -> 16-bit linear.
static ALAW_TO_LINEAR: [i16; 256] = expand_table(false);

/// Decodes one G.711 μ-law code to a 16-bit linear sample (e.g. `0xFF` -> 0, `0x00` -> -32124).
#[inline]
pub fn ulaw_decode(code: u8) -> i16 {
    ULAW_TO_LINEAR[usize::from(code)]
}

/// Decodes one G.711 A-law code to a 16-bit linear sample (e.g. `0xD5` -> 8, `0x55` -> -8).
#[inline]
pub fn alaw_decode(code: u8) -> i16 {
    ALAW_TO_LINEAR[usize::from(code)]
}

/// Encodes one 16-bit linear sample as G.711 μ-law (ITU-T G.191 `ulaw_compress`: the two
/// least significant bits are dropped, magnitudes clip at code 0x80/0x00).
#[inline]
pub fn ulaw_encode(sample: i16) -> u8 {
    // One's complement of negative values (not negation), so -1 lands on the "negative zero"
    // code 0x7F exactly as in the reference; 14-bit magnitude plus the bias of 33.
    let magnitude = if sample < 0 { !sample } else { sample };
    let biased = ((magnitude >> 2) + 33).min(0x1FFF) as u16;
    // Segment number = position of the highest set bit above bit 5 (1..=8).
    let segment = (16 - (biased >> 6).leading_zeros()) as u16 + 1;
    let high = 8 - segment;
    let low = 0x0F - ((biased >> segment) & 0x0F);
    let code = ((high << 4) | low) as u8;
    if sample >= 0 { code | 0x80 } else { code }
}

/// Encodes one 16-bit linear sample as G.711 A-law (ITU-T G.191 `alaw_compress`: the four
/// least significant bits are dropped).
#[inline]
pub fn alaw_encode(sample: i16) -> u8 {
    let magnitude = if sample < 0 { !sample } else { sample };
    let mut ix = (magnitude >> 4) as u16; // 12-bit magnitude, 0..=2047
    if ix > 15 {
        // Exponent = number of shifts that bring the value into 16..=31, plus one.
        let shifts = (16 - ix.leading_zeros()).saturating_sub(5) as u16;
        ix >>= shifts;
        ix = (ix - 16) + ((shifts + 1) << 4); // the leading one is implicit
    }
    let code = if sample >= 0 { ix | 0x80 } else { ix } as u8;
    code ^ 0x55
}

/// Decodes μ-law bytes to `f32`; converts `min(codes.len(), out.len())` samples and returns
/// that count.
pub fn ulaw_to_f32(codes: &[u8], out: &mut [f32]) -> usize {
    let n = codes.len().min(out.len());
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = i16_to_f32(ulaw_decode(c));
    }
    n
}

/// Decodes A-law bytes to `f32`; converts `min(codes.len(), out.len())` samples and returns
/// that count.
pub fn alaw_to_f32(codes: &[u8], out: &mut [f32]) -> usize {
    let n = codes.len().min(out.len());
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = i16_to_f32(alaw_decode(c));
    }
    n
}

/// Encodes `f32` samples as μ-law (via the rounded, saturated 16-bit value); converts
/// `min(samples.len(), out.len())` samples and returns the number of bytes written.
pub fn f32_to_ulaw(samples: &[f32], out: &mut [u8]) -> usize {
    let n = samples.len().min(out.len());
    for (o, &x) in out.iter_mut().zip(samples) {
        *o = ulaw_encode(f32_to_i16(x));
    }
    n
}

/// Encodes `f32` samples as A-law (via the rounded, saturated 16-bit value); converts
/// `min(samples.len(), out.len())` samples and returns the number of bytes written.
pub fn f32_to_alaw(samples: &[f32], out: &mut [u8]) -> usize {
    let n = samples.len().min(out.len());
    for (o, &x) in out.iter_mut().zip(samples) {
        *o = alaw_encode(f32_to_i16(x));
    }
    n
}

// ---------------------------------------------------------------------------------------
// AES67 L16 / L24 (big-endian, interleaved; aes67.md §3)
// ---------------------------------------------------------------------------------------

/// Encodes interleaved `f32` samples as an L16 payload (16-bit big-endian).
///
/// Channel count does not matter: frames are just consecutive samples. Converts
/// `min(samples.len(), out.len() / 2)` samples and returns the number of bytes written.
pub fn write_l16(samples: &[f32], out: &mut [u8]) -> usize {
    let mut written = 0;
    for (&x, pair) in samples.iter().zip(out.chunks_exact_mut(2)) {
        pair.copy_from_slice(&f32_to_i16(x).to_be_bytes());
        written += 2;
    }
    written
}

/// Decodes an L16 payload (16-bit big-endian, interleaved) to `f32`; converts
/// `min(payload.len() / 2, out.len())` samples and returns that count.
pub fn read_l16(payload: &[u8], out: &mut [f32]) -> usize {
    let mut n = 0;
    for (pair, o) in payload.chunks_exact(2).zip(out.iter_mut()) {
        *o = i16_to_f32(i16::from_be_bytes([pair[0], pair[1]]));
        n += 1;
    }
    n
}

/// Encodes interleaved `f32` samples as an L24 payload (24-bit big-endian, full scale
/// 8388608, e.g. 0.25 -> `20 00 00`, -1/8388608 -> `ff ff ff`).
///
/// Converts `min(samples.len(), out.len() / 3)` samples and returns the number of bytes
/// written (a multiple of 3).
pub fn write_l24(samples: &[f32], out: &mut [u8]) -> usize {
    let mut written = 0;
    for (&x, triple) in samples.iter().zip(out.chunks_exact_mut(3)) {
        let [_, hi, mid, lo] = f32_to_i24(x).to_be_bytes();
        triple.copy_from_slice(&[hi, mid, lo]);
        written += 3;
    }
    written
}

/// Decodes an L24 payload (24-bit big-endian, interleaved) to `f32`; converts
/// `min(payload.len() / 3, out.len())` samples and returns that count.
pub fn read_l24(payload: &[u8], out: &mut [f32]) -> usize {
    const SCALE: f32 = 1.0 / 2_147_483_648.0; // the code sits in the top 24 bits of an i32
    let mut n = 0;
    for (triple, o) in payload.chunks_exact(3).zip(out.iter_mut()) {
        // Left-justify in an i32 so the sign comes for free; exact in f32 (24-bit mantissa).
        let v = i32::from_be_bytes([triple[0], triple[1], triple[2], 0]);
        *o = v as f32 * SCALE;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s16le_decodes_little_endian_and_ignores_odd_byte() {
        let bytes = [0x00, 0x80, 0xFF, 0x7F, 0x01, 0x00, 0xFF, 0xFF, 0xAB];
        let mut out = [9.0f32; 5];
        assert_eq!(s16le_to_f32(&bytes, &mut out), 4);
        assert_eq!(
            out[..4],
            [-1.0, 32767.0 / 32768.0, 1.0 / 32768.0, -1.0 / 32768.0]
        );
        assert_eq!(out[4], 9.0, "untouched beyond the converted samples");
        // Output shorter than the input: limited by the output.
        let mut short = [0.0f32; 1];
        assert_eq!(s16le_to_f32(&bytes, &mut short), 1);
        assert_eq!(s16le_to_f32(&[0x12], &mut short), 0);
    }

    #[test]
    fn s16le_encodes_rounding_and_saturating() {
        let x = [
            0.0,
            1.0,
            -1.0,
            2.0,
            -2.0,
            f32::NAN,
            0.5 / 32768.0,  // tie -> even (0)
            1.5 / 32768.0,  // tie -> even (2)
            -0.6 / 32768.0, // -> -1
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        let mut out = [0u8; 22];
        assert_eq!(f32_to_s16le(&x, &mut out), 22);
        let v: Vec<i16> = out
            .chunks_exact(2)
            .map(|p| i16::from_le_bytes([p[0], p[1]]))
            .collect();
        assert_eq!(
            v,
            [0, 32767, -32768, 32767, -32768, 0, 0, 2, -1, 32767, -32768]
        );
        // An odd-length output holds only whole samples.
        let mut odd = [0u8; 3];
        assert_eq!(f32_to_s16le(&[0.25, 0.25], &mut odd), 2);
        assert_eq!(odd, [0x00, 0x20, 0x00]);
    }

    #[test]
    fn s16le_round_trips_every_code() {
        let codes: Vec<u8> = (i16::MIN..=i16::MAX).flat_map(i16::to_le_bytes).collect();
        let mut f = vec![0.0f32; 65536];
        assert_eq!(s16le_to_f32(&codes, &mut f), 65536);
        let mut back = vec![0u8; codes.len()];
        assert_eq!(f32_to_s16le(&f, &mut back), codes.len());
        assert_eq!(back, codes);
    }

    #[test]
    fn ulaw_known_code_points() {
        // ITU-T G.711 table 2a: 0xFF and 0x7F are +/-0, 0x80/0x00 the extremes.
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0xFE), 8);
        assert_eq!(ulaw_decode(0x7E), -8);
        assert_eq!(ulaw_decode(0xEF), 132); // first code of segment 1
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_encode(-1), 0x7F);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
    }

    #[test]
    fn alaw_known_code_points() {
        // ITU-T G.711 table 1a: 0xD5/0x55 are the smallest magnitudes, 0xAA/0x2A the largest.
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
    }

    /// The classic Sun Microsystems `g711.c` formulation of the decoders: an independent
    /// derivation of the same ITU-T G.711 tables.
    fn sun_ulaw2linear(code: u8) -> i16 {
        let u = !code;
        let t = ((i32::from(u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4);
        (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
    }

    fn sun_alaw2linear(code: u8) -> i16 {
        let a = code ^ 0x55;
        let mut t = i32::from(a & 0x0F) << 4;
        let seg = (a & 0x70) >> 4;
        match seg {
            0 => t += 8,
            1 => t += 0x108,
            _ => t = (t + 0x108) << (seg - 1),
        }
        (if a & 0x80 != 0 { t } else { -t }) as i16
    }

    #[test]
    fn g711_decoders_match_the_sun_reference_for_all_codes() {
        for code in 0..=255u8 {
            assert_eq!(ulaw_decode(code), sun_ulaw2linear(code), "ulaw {code:#04x}");
            assert_eq!(alaw_decode(code), sun_alaw2linear(code), "alaw {code:#04x}");
        }
    }

    #[test]
    fn g711_round_trips_all_256_codes() {
        for code in 0..=255u8 {
            let expected = if code == 0x7F { 0xFF } else { code }; // -0 re-encodes as +0
            assert_eq!(ulaw_encode(ulaw_decode(code)), expected, "ulaw {code:#04x}");
            assert_eq!(alaw_encode(alaw_decode(code)), code, "alaw {code:#04x}");
        }
    }

    #[test]
    fn g711_quantisation_is_monotonic_and_bounded() {
        let mut last = (i16::MIN, i16::MIN);
        for x in i16::MIN..=i16::MAX {
            let u = ulaw_decode(ulaw_encode(x));
            let a = alaw_decode(alaw_encode(x));
            assert!(u >= last.0 && a >= last.1, "monotonic at {x}");
            last = (u, a);
            // Logarithmic quantisation: error under ~1/32 of the value plus the finest half
            // step (4 for mu-law, 8 for A-law), except in the clipping region.
            let bound = i32::from(x).abs() / 32 + 8;
            if x.unsigned_abs() < 32_000 {
                assert!(
                    (i32::from(u) - i32::from(x)).abs() <= bound,
                    "ulaw {x} -> {u}"
                );
                assert!(
                    (i32::from(a) - i32::from(x)).abs() <= bound,
                    "alaw {x} -> {a}"
                );
            }
        }
    }

    #[test]
    fn g711_slices_convert_min_length() {
        let mut f = [0.0f32; 3];
        assert_eq!(ulaw_to_f32(&[0xFF, 0x80, 0x00, 0x12], &mut f), 3);
        assert_eq!(f, [0.0, 32124.0 / 32768.0, -32124.0 / 32768.0]);
        assert_eq!(alaw_to_f32(&[0xD5], &mut f), 1);
        assert_eq!(f[0], 8.0 / 32768.0);
        let mut codes = [0u8; 2];
        assert_eq!(f32_to_ulaw(&[0.0, -1.0, 0.5], &mut codes), 2);
        assert_eq!(codes, [0xFF, 0x00]);
        assert_eq!(f32_to_alaw(&[1.0], &mut codes), 1);
        assert_eq!(codes[0], 0xAA);
    }

    #[test]
    fn l24_matches_the_aes67_fact_sheet_vector() {
        // aes67.md §12.3: L=+0x200000 (+0.25 FS), R=-0x200000, then L=+1, R=-1 (codes).
        let lsb = 1.0 / 8_388_608.0;
        let samples = [0.25f32, -0.25, lsb, -lsb];
        let expected = [
            0x20, 0x00, 0x00, 0xe0, 0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0xff, 0xff,
        ];
        let mut payload = [0u8; 12];
        assert_eq!(write_l24(&samples, &mut payload), 12);
        assert_eq!(payload, expected);
        let mut back = [0.0f32; 4];
        assert_eq!(read_l24(&payload, &mut back), 4);
        assert_eq!(back, samples);
    }

    #[test]
    fn l24_saturates_rounds_and_ignores_partial_sample() {
        let mut payload = [0u8; 14];
        let n = write_l24(&[1.0, -1.0, 7.0, f32::NAN, 0.4 / 8_388_608.0], &mut payload);
        assert_eq!(n, 12, "only whole 3-byte samples fit");
        assert_eq!(
            payload[..12],
            [
                0x7f, 0xff, 0xff, 0x80, 0x00, 0x00, 0x7f, 0xff, 0xff, 0, 0, 0
            ]
        );
        let mut out = [0.0f32; 8];
        assert_eq!(read_l24(&payload[..13], &mut out), 4);
        assert_eq!(out[..2], [8_388_607.0 / 8_388_608.0, -1.0]);
    }

    #[test]
    fn l16_is_big_endian() {
        let mut payload = [0u8; 6];
        assert_eq!(write_l16(&[0.25, -1.0 / 32768.0, -1.5], &mut payload), 6);
        assert_eq!(payload, [0x20, 0x00, 0xff, 0xff, 0x80, 0x00]);
        let mut out = [0.0f32; 3];
        assert_eq!(read_l16(&payload[..5], &mut out), 2);
        assert_eq!(out[..2], [0.25, -1.0 / 32768.0]);
    }

    #[test]
    fn l24_round_trips_a_sweep_of_codes() {
        // Every 257th code across the full 24-bit range survives encode(decode(code)).
        let mut code = -8_388_608i32;
        while code < 8_388_608 {
            let bytes = code.to_be_bytes();
            let mut f = [0.0f32];
            assert_eq!(read_l24(&bytes[1..], &mut f), 1);
            let mut back = [0u8; 3];
            assert_eq!(write_l24(&f, &mut back), 3);
            assert_eq!(back, bytes[1..], "code {code}");
            code += 257;
        }
    }
}
