//! FIR building blocks of the fixed-ratio resampler: Kaiser-windowed sinc design (run once
//! per coefficient table) and the dot products every output sample is made of.
//!
//! The dot products are plain Rust written for the autovectoriser: coefficients are
//! stored in rows whose length is a multiple of [`LANES`], and [`LANES`] independent
//! accumulators let LLVM keep them in SIMD registers (two SSE registers on baseline
//! x86-64, one AVX register where the target enables it) without reordering the sums.

/// Every coefficient row is padded to a multiple of this many coefficients (the most
/// accumulators a dot product uses).
pub(super) const LANES: usize = 8;

/// Zeroth-order modified Bessel function of the first kind (the Kaiser window's shape).
fn bessel_i0(x: f64) -> f64 {
    let half = x / 2.0;
    let mut term = 1.0;
    let mut sum = 1.0;
    for k in 1..200 {
        term *= (half / k as f64).powi(2);
        sum += term;
        if term < sum * 1e-18 {
            break;
        }
    }
    sum
}

/// Kaiser window with shape `beta` at offset `x` from its centre, reaching the window's
/// end at `±half`; 0 beyond.
pub(super) fn kaiser(x: f64, half: f64, beta: f64) -> f64 {
    let r = x / half;
    if r.abs() > 1.0 {
        return 0.0;
    }
    bessel_i0(beta * (1.0 - r * r).max(0.0).sqrt()) / bessel_i0(beta)
}

/// `sin(πx) / (πx)`, exactly 0 at every non-zero integer and 1 at 0.
pub(super) fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else if x == x.round() {
        0.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

/// Adds the lane accumulators in order (the same order for every caller, so a result
/// does not depend on how the output was split into calls). A pairwise tree looks
/// cheaper but makes LLVM split the accumulators into two-lane vectors.
#[inline]
fn sum_lanes<const N: usize>(acc: [f32; N]) -> f32 {
    acc.iter().sum()
}

/// `Σ coefficients[i] · samples[i]` over two slices of the same length, a multiple of
/// `N` (a shorter tail would be ignored; the tables never have one), with `N` independent
/// accumulators: 8 for long rows, where a single chain of additions would be the
/// bottleneck, 4 (one SSE register) for short ones, where the final sum dominates.
#[inline]
pub(super) fn dot<const N: usize>(coefficients: &[f32], samples: &[f32]) -> f32 {
    debug_assert_eq!(coefficients.len(), samples.len());
    debug_assert_eq!(coefficients.len() % N, 0);
    let (coefficients, _) = coefficients.as_chunks::<N>();
    let (samples, _) = samples.as_chunks::<N>();
    let mut acc = [0.0f32; N];
    for (c, s) in coefficients.iter().zip(samples) {
        for lane in 0..N {
            acc[lane] += c[lane] * s[lane];
        }
    }
    sum_lanes(acc)
}

/// `Σ (base[i] + weight · slope[i]) · samples[i]`: the dot product with a coefficient row
/// interpolated linearly between two tabulated ones (`slope` is their difference); `N`
/// as for [`dot`].
#[inline]
pub(super) fn interpolated_dot<const N: usize>(
    base: &[f32],
    slope: &[f32],
    weight: f32,
    samples: &[f32],
) -> f32 {
    debug_assert_eq!(base.len(), samples.len());
    debug_assert_eq!(slope.len(), samples.len());
    debug_assert_eq!(base.len() % N, 0);
    let (base, _) = base.as_chunks::<N>();
    let (slope, _) = slope.as_chunks::<N>();
    let (samples, _) = samples.as_chunks::<N>();
    let mut acc = [0.0f32; N];
    for ((b, d), s) in base.iter().zip(slope).zip(samples) {
        for lane in 0..N {
            acc[lane] += (b[lane] + weight * d[lane]) * s[lane];
        }
    }
    sum_lanes(acc)
}

/// Outputs computed side by side by [`sliding_dots`], one per SIMD lane.
pub(super) const SLIDING: usize = 4;

/// [`SLIDING`] dot products of `coefficients` with windows of `samples` that start one
/// sample apart (`samples` holds `coefficients.len() + SLIDING - 1` of them): output `o`
/// is `Σ coefficients[i] · samples[i + o]`. Each output lives in its own lane, so no
/// horizontal sum is needed; the additions run in coefficient order.
#[inline]
pub(super) fn sliding_dots(coefficients: &[f32], samples: &[f32]) -> [f32; SLIDING] {
    debug_assert_eq!(samples.len(), coefficients.len() + SLIDING - 1);
    let mut acc = [0.0f32; SLIDING];
    for (i, c) in coefficients.iter().enumerate() {
        let window = &samples[i..i + SLIDING];
        for o in 0..SLIDING {
            acc[o] += c * window[o];
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_products_match_a_plain_sum() {
        let a: Vec<f32> = (0..48).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
        let b: Vec<f32> = (0..48).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
        let d: Vec<f32> = (0..48).map(|i| (i as f32 - 20.0) / 50.0).collect();
        let plain: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        assert!((f64::from(dot::<8>(&a, &b)) - plain).abs() < 1e-5);
        assert!((f64::from(dot::<4>(&a, &b)) - plain).abs() < 1e-5);
        let w = 0.3f32;
        let plain: f64 = a
            .iter()
            .zip(&d)
            .zip(&b)
            .map(|((x, s), y)| (f64::from(*x) + 0.3 * f64::from(*s)) * f64::from(*y))
            .sum();
        assert!((f64::from(interpolated_dot::<8>(&a, &d, w, &b)) - plain).abs() < 1e-5);
        assert!((f64::from(interpolated_dot::<4>(&a, &d, w, &b)) - plain).abs() < 1e-5);
    }

    #[test]
    fn sliding_dots_match_single_dots() {
        let c: Vec<f32> = (0..16).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
        let x: Vec<f32> = (0..19).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
        let lanes = sliding_dots(&c, &x);
        for (o, lane) in lanes.iter().enumerate() {
            let single = dot::<4>(&c, &x[o..o + 16]);
            assert!((lane - single).abs() < 1e-5, "{o}: {lane} vs {single}");
        }
    }

    #[test]
    fn window_and_sinc_have_their_textbook_values() {
        assert_eq!(sinc(0.0), 1.0);
        assert_eq!(sinc(3.0), 0.0);
        assert!((sinc(0.5) - 2.0 / std::f64::consts::PI).abs() < 1e-15);
        assert!((kaiser(0.0, 10.0, 8.0) - 1.0).abs() < 1e-15);
        assert_eq!(kaiser(10.5, 10.0, 8.0), 0.0);
        // I0(8) = 427.564115...
        assert!((kaiser(10.0, 10.0, 8.0) - 1.0 / 427.564_115_68).abs() < 1e-9);
    }
}
