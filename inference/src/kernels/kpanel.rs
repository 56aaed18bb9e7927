//! The K-quants (Q4_K, Q5_K, Q6_K) in panels of eight rows ([`super::panel::k_fields`]):
//! each 32-bit word of a super-block is one vector holding that word of the eight rows, so
//! a 32-byte load gives four values of each row, an activation's four bytes are broadcast
//! against it, and each row sums in its own lane (no horizontal sums).
//!
//! Per sub-block (Q4_K, Q5_K: 32 values, one 6-bit scale and min; Q6_K: 16 values, one
//! signed 8-bit scale), the unsigned values' products with the activations add up in i16
//! (`maddubs` pairs, at most 2 * 15 * 128 each for Q4_K: eight groups of four values fit in
//! i16; Q5_K's 31 four groups, Q6_K's 63 two), and one `madd` with the eight rows' scales
//! (or AVX-VNNI's / AVX-512 VNNI's `vpdpwssd`, the same sum) takes them into i32, where the
//! row-major tiles spend a `madd` per 32 values and row. The integers are exact, and the
//! float steps per super-block are the scalar reference's (`d * d_y * s - dmin * d_y * m`,
//! added to the row's sum in super-block order): a row in a panel gives the reference's
//! bits on every path, alone or in a batch.

#![allow(unsafe_op_in_unsafe_fn, clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use super::avx2::{store_panel, AvxVnni, Dot, DotPath, Madd, Vnni};
use super::formats::{Activations, QK_K};
use super::panel;
use super::QMatrix;

/// Activation rows a panel's walk takes at a time (their sums stay in L1).
const ACTS: usize = 32;

/// A K-quant type in panels: what one super-block of a panel adds to each activation row.
pub trait PanelK {
    /// Bytes of a super-block in the file (a panel's super-block is eight times that).
    const BYTES: usize;
    /// Super-block `b` of the panel at `blk` times activation rows `c0 .. c0 + acc.len()`:
    /// adds each row's super-block product to `acc` (lane `i`: weight row `i`).
    unsafe fn block<D: Dot>(blk: *const u8, a: &Activations, c0: usize, b: usize, acc: &mut [__m256]);
}

pub struct Q4K;
pub struct Q5K;
pub struct Q6K;

/// Four activation bytes at `p`, in every 32-bit lane.
#[inline(always)]
unsafe fn bcast(p: *const i8) -> __m256i {
    _mm256_set1_epi32((p as *const i32).read_unaligned())
}

/// Word vector `at` of a panel's super-block (that word of each of the eight rows).
#[inline(always)]
unsafe fn word(blk: *const u8, at: usize) -> __m256i {
    _mm256_loadu_si256(blk.add(at) as *const __m256i)
}

/// `pshufb` controls, byte `b` of 32-bit lane `l` (of each 128-bit half) at `4l + b`, 0x80
/// for a zero: [`TWICE`] takes byte `t` of each lane into both its i16 halves (low byte),
/// [`SIGNED_TWICE`] into their high bytes, [`PAIR`] bytes `2k` and `2k + 1` into the high
/// bytes of its two i16 halves.
const fn controls(lo: u8, hi: u8, high_bytes: bool) -> [u8; 32] {
    let mut c = [0x80u8; 32];
    let mut i = 0;
    while i < 8 {
        let base = 4 * (i as u8 % 4);
        let at = 4 * i + if high_bytes { 1 } else { 0 };
        c[at] = base + lo;
        c[at + 2] = base + hi;
        i += 1;
    }
    c
}
static TWICE: [[u8; 32]; 4] =
    [controls(0, 0, false), controls(1, 1, false), controls(2, 2, false), controls(3, 3, false)];
static SIGNED_TWICE: [[u8; 32]; 4] =
    [controls(0, 0, true), controls(1, 1, true), controls(2, 2, true), controls(3, 3, true)];
static PAIR: [[u8; 32]; 2] = [controls(0, 1, true), controls(2, 3, true)];

#[inline(always)]
unsafe fn shuffle(v: __m256i, ctrl: &[u8; 32]) -> __m256i {
    _mm256_shuffle_epi8(v, _mm256_loadu_si256(ctrl.as_ptr() as *const __m256i))
}

/// Byte `t` (0..4) of each 32-bit lane, zero-extended into both of its i16 halves.
#[inline(always)]
unsafe fn byte_twice(v: __m256i, t: usize) -> __m256i {
    shuffle(v, &TWICE[t])
}

/// Byte `t` of each 32-bit lane, sign-extended into both of its i16 halves.
#[inline(always)]
unsafe fn signed_twice(v: __m256i, t: usize) -> __m256i {
    // Each byte lands in the high half of its i16; the arithmetic shift extends its sign.
    _mm256_srai_epi16::<8>(shuffle(v, &SIGNED_TWICE[t]))
}

/// Bytes `2k` and `2k + 1` (`k` 0 or 1) of each 32-bit lane as signed i16s, in that order.
#[inline(always)]
unsafe fn signed_pair(v: __m256i, k: usize) -> __m256i {
    _mm256_srai_epi16::<8>(shuffle(v, &PAIR[k]))
}

/// The sum, in i16, of `G` groups' products: `w[g]` (four unsigned values of each row)
/// with the four activations at `y + 4g`.
#[inline(always)]
unsafe fn groups<const G: usize>(w: &[__m256i], y: *const i8) -> __m256i {
    let mut s = _mm256_maddubs_epi16(w[0], bcast(y));
    for (g, &wg) in w.iter().enumerate().take(G).skip(1) {
        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(wg, bcast(y.add(4 * g))));
    }
    s
}

/// Eight f16s at `p` as `f32`.
#[inline(always)]
unsafe fn halves(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// Bits 6 and 7 of each byte of `w`, moved to bits 4 and 5.
#[inline(always)]
unsafe fn top_two(w: __m256i) -> __m256i {
    _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srli_epi32::<6>(w), _mm256_set1_epi32(0x03030303)))
}

/// The eight rows' 6-bit scales and mins of a Q4_K/Q5_K panel super-block (`scale_min_k4`
/// on every lane at once): bytes `j % 4` of each lane of `sc[j / 4]`, `mn[j / 4]`.
#[inline(always)]
unsafe fn scales_mins(blk: *const u8) -> ([__m256i; 2], [__m256i; 2]) {
    let (w0, w1, w2) = (word(blk, 32), word(blk, 64), word(blk, 96));
    let m1 = _mm256_set1_epi32(0x3f3f3f3f);
    let m2 = _mm256_set1_epi32(0x0f0f0f0f);
    let sc = [_mm256_and_si256(w0, m1), _mm256_or_si256(_mm256_and_si256(w2, m2), top_two(w0))];
    let mn = [_mm256_and_si256(w1, m1), _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32::<4>(w2), m2), top_two(w1))];
    (sc, mn)
}

/// A Q4_K/Q5_K super-block's end: `m = sum_j min_j * (bsums[2j] + bsums[2j + 1])` per row,
/// then `acc += d * d_y * s - dmin * d_y * m` (the reference's float steps).
#[inline(always)]
unsafe fn finish_k45(
    blk: *const u8,
    a: &Activations,
    c0: usize,
    b: usize,
    mins: &[__m256i; 8],
    isum: &[__m256i],
    acc: &mut [__m256],
) {
    let nb = a.cols / QK_K;
    let (d8, dmin8) = (halves(blk), halves(blk.add(16)));
    for (j, (e, &s)) in acc.iter_mut().zip(isum).enumerate() {
        let row = (c0 + j) * nb + b;
        let bs = a.bsums.as_ptr().add(row * 16);
        let mut m = _mm256_setzero_si256();
        for (k, &mk) in mins.iter().enumerate() {
            m = _mm256_add_epi32(m, _mm256_madd_epi16(mk, bcast(bs.add(2 * k) as *const i8)));
        }
        let dy = _mm256_set1_ps(*a.d.as_ptr().add(row));
        let t = _mm256_sub_ps(
            _mm256_mul_ps(_mm256_mul_ps(d8, dy), _mm256_cvtepi32_ps(s)),
            _mm256_mul_ps(_mm256_mul_ps(dmin8, dy), _mm256_cvtepi32_ps(m)),
        );
        *e = _mm256_add_ps(*e, t);
    }
}

/// How Q4_K and Q5_K unpack their values.
trait Values45 {
    /// Groups of four values that add up in i16 (eight: 15 * 2 * 128 * 8 < 2^15).
    const G: usize;
    /// Group `g` (values `4g .. 4g + 4`) of sub-block `j` of each row, as bytes.
    unsafe fn values(blk: *const u8, j: usize, g: usize) -> __m256i;
}

/// Nibble `j % 2` of each byte of `q`.
#[inline(always)]
unsafe fn nibble(q: __m256i, j: usize) -> __m256i {
    let q = if j % 2 == 1 { _mm256_srli_epi16::<4>(q) } else { q };
    _mm256_and_si256(q, _mm256_set1_epi8(0x0F))
}

impl Values45 for Q4K {
    const G: usize = 8;
    #[inline(always)]
    unsafe fn values(blk: *const u8, j: usize, g: usize) -> __m256i {
        // Sub-block j: the low (even j) or high (odd j) nibbles of qs words 8 (j / 2) + g.
        nibble(word(blk, 128 + 32 * (8 * (j / 2) + g)), j)
    }
}

impl Values45 for Q5K {
    const G: usize = 4;
    #[inline(always)]
    unsafe fn values(blk: *const u8, j: usize, g: usize) -> __m256i {
        // As Q4_K's (qs words from 384), with the fifth bit: bit j of qh word g's bytes.
        let q = nibble(word(blk, 384 + 32 * (8 * (j / 2) + g)), j);
        let h = word(blk, 128 + 32 * g);
        // Bit j of each byte to bit 4 (shifts of 16-bit lanes: the bits crossing into the
        // neighbouring byte are masked off).
        let h = match j {
            0 => _mm256_slli_epi16::<4>(h),
            1 => _mm256_slli_epi16::<3>(h),
            2 => _mm256_slli_epi16::<2>(h),
            3 => _mm256_slli_epi16::<1>(h),
            4 => h,
            5 => _mm256_srli_epi16::<1>(h),
            6 => _mm256_srli_epi16::<2>(h),
            _ => _mm256_srli_epi16::<3>(h),
        };
        _mm256_or_si256(q, _mm256_and_si256(h, _mm256_set1_epi8(0x10)))
    }
}

/// The shared body of Q4_K and Q5_K.
#[inline(always)]
unsafe fn block_k45<V: Values45, D: Dot>(blk: *const u8, a: &Activations, c0: usize, b: usize, acc: &mut [__m256]) {
    let (sc, mn) = scales_mins(blk);
    let mut mins = [_mm256_setzero_si256(); 8];
    for (j, m) in mins.iter_mut().enumerate() {
        *m = byte_twice(mn[j / 4], j % 4);
    }
    let mut isum = [_mm256_setzero_si256(); ACTS];
    let isum = &mut isum[..acc.len()];
    for j in 0..8 {
        let scale = byte_twice(sc[j / 4], j % 4);
        let mut w = [_mm256_setzero_si256(); 8];
        for (g, wg) in w.iter_mut().enumerate() {
            *wg = V::values(blk, j, g);
        }
        for (c, s) in isum.iter_mut().enumerate() {
            let y = a.q.as_ptr().add((c0 + c) * a.cols + b * QK_K + 32 * j);
            if V::G == 8 {
                *s = D::dot2(*s, groups::<8>(&w, y), scale);
            } else {
                *s = D::dot2(*s, groups::<4>(&w, y), scale);
                *s = D::dot2(*s, groups::<4>(&w[4..], y.add(16)), scale);
            }
        }
    }
    finish_k45(blk, a, c0, b, &mins, isum, acc);
}

impl PanelK for Q4K {
    const BYTES: usize = 144;
    #[inline(always)]
    unsafe fn block<D: Dot>(blk: *const u8, a: &Activations, c0: usize, b: usize, acc: &mut [__m256]) {
        block_k45::<Q4K, D>(blk, a, c0, b, acc)
    }
}

impl PanelK for Q5K {
    const BYTES: usize = 176;
    #[inline(always)]
    unsafe fn block<D: Dot>(blk: *const u8, a: &Activations, c0: usize, b: usize, acc: &mut [__m256]) {
        block_k45::<Q5K, D>(blk, a, c0, b, acc)
    }
}

/// Group `g` of quarter `t` of half `n` of a Q6_K panel super-block: value `128n + 32t + l`
/// (`l = 4g ..`) is nibble `t / 2` of `ql` byte `64n + 32 (t % 2) + l` with bits `2t, 2t + 1`
/// of `qh` byte `32n + l` above it (0..64, 32 above the true value).
#[inline(always)]
unsafe fn values6(blk: *const u8, n: usize, t: usize, g: usize) -> __m256i {
    let ql = nibble(word(blk, 32 * (16 * n + 8 * (t % 2) + g)), t / 2);
    let qh = word(blk, 1024 + 32 * (8 * n + g));
    // Bits 2t, 2t + 1 of each byte to bits 4, 5 (as in Q5_K's values, the bits a 16-bit
    // shift moves across bytes are masked off).
    let qh = match t {
        0 => _mm256_slli_epi16::<4>(qh),
        1 => _mm256_slli_epi16::<2>(qh),
        2 => qh,
        _ => _mm256_srli_epi16::<2>(qh),
    };
    _mm256_or_si256(ql, _mm256_and_si256(qh, _mm256_set1_epi8(0x30)))
}

impl PanelK for Q6K {
    const BYTES: usize = 210;
    #[inline(always)]
    unsafe fn block<D: Dot>(blk: *const u8, a: &Activations, c0: usize, b: usize, acc: &mut [__m256]) {
        let nb = a.cols / QK_K;
        // The 16 signed scales: scale s is byte s % 4 of scale word s / 4 (at 1536).
        let mut sw = [_mm256_setzero_si256(); 4];
        for (i, v) in sw.iter_mut().enumerate() {
            *v = word(blk, 1536 + 32 * i);
        }
        let mut isum = [_mm256_setzero_si256(); ACTS];
        let isum = &mut isum[..acc.len()];
        for n in 0..2 {
            for t in 0..4 {
                let mut w = [_mm256_setzero_si256(); 8];
                for (g, wg) in w.iter_mut().enumerate() {
                    *wg = values6(blk, n, t, g);
                }
                // Groups 0-3 take scale 8n + 2t, groups 4-7 the next (two groups add up in
                // i16: 63 * 2 * 128 * 2 < 2^15).
                let s0 = 8 * n + 2 * t;
                let (sa, sb) = (signed_twice(sw[s0 / 4], s0 % 4), signed_twice(sw[s0 / 4], s0 % 4 + 1));
                for (c, s) in isum.iter_mut().enumerate() {
                    let y = a.q.as_ptr().add((c0 + c) * a.cols + b * QK_K + 128 * n + 32 * t);
                    *s = D::dot2(*s, groups::<2>(&w, y), sa);
                    *s = D::dot2(*s, groups::<2>(&w[2..], y.add(8)), sa);
                    *s = D::dot2(*s, groups::<2>(&w[4..], y.add(16)), sb);
                    *s = D::dot2(*s, groups::<2>(&w[6..], y.add(24)), sb);
                }
            }
        }
        // The stored values are 32 above the true ones: s -= 32 * sum_s scale_s * bsums[s],
        // scales 2k and 2k + 1 side by side against bsums 2k and 2k + 1.
        let mut pairs = [_mm256_setzero_si256(); 8];
        for (k, p) in pairs.iter_mut().enumerate() {
            *p = signed_pair(sw[k / 2], k % 2);
        }
        let d8 = halves(blk.add(1664));
        for (j, (e, &s)) in acc.iter_mut().zip(isum.iter()).enumerate() {
            let row = (c0 + j) * nb + b;
            let bs = a.bsums.as_ptr().add(row * 16);
            let mut o = _mm256_setzero_si256();
            for (k, &pk) in pairs.iter().enumerate() {
                o = _mm256_add_epi32(o, _mm256_madd_epi16(pk, bcast(bs.add(2 * k) as *const i8)));
            }
            let s = _mm256_sub_epi32(s, _mm256_slli_epi32::<5>(o));
            let dy = _mm256_set1_ps(*a.d.as_ptr().add(row));
            *e = _mm256_add_ps(*e, _mm256_mul_ps(_mm256_mul_ps(d8, dy), _mm256_cvtepi32_ps(s)));
        }
    }
}

/// How far ahead of the super-block it multiplies a panel's first pass fetches (bytes).
const AHEAD: usize = 2048;

/// The rows of `range` that lie in whole panels, times every activation row, into `out`;
/// returns the first row of `range` left to the row-major tiles.
#[inline(always)]
pub unsafe fn panels<P: PanelK, D: Dot>(
    w: &QMatrix,
    data: &[u8],
    a: &Activations,
    range: std::ops::Range<usize>,
    out: *mut f32,
) -> usize {
    match D::PATH {
        DotPath::Madd => walk_avx2::<P>(w, data, a, range, out),
        DotPath::AvxVnni => walk_avxvnni::<P>(w, data, a, range, out),
        DotPath::Vnni => walk_vnni::<P>(w, data, a, range, out),
    }
}

/// [`walk`] compiled with one path's target features, summing with `$dot`.
macro_rules! walk_on_path {
    ($name:ident, $dot:ty, $features:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<P: PanelK>(
            w: &QMatrix,
            data: &[u8],
            a: &Activations,
            range: std::ops::Range<usize>,
            out: *mut f32,
        ) -> usize {
            walk::<P, $dot>(w, data, a, range, out)
        }
    };
}

walk_on_path!(walk_avx2, Madd, "avx2,fma,f16c");
walk_on_path!(walk_avxvnni, AvxVnni, "avx2,fma,f16c,avxvnni");
walk_on_path!(walk_vnni, Vnni, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");

#[inline(always)]
unsafe fn walk<P: PanelK, D: Dot>(
    w: &QMatrix,
    data: &[u8],
    a: &Activations,
    range: std::ops::Range<usize>,
    out: *mut f32,
) -> usize {
    let nb = w.cols / QK_K;
    let rb = w.ty.row_bytes(w.cols);
    let n = a.rows;
    let full = w.packed_rows();
    let (lo, hi) = (range.start.min(full), range.end.min(full));
    let mut acc = [_mm256_setzero_ps(); ACTS];
    if lo < hi {
        for p in lo / panel::ROWS..hi.div_ceil(panel::ROWS) {
            let r0 = p * panel::ROWS;
            let pan = data.as_ptr().add(r0 * rb);
            let mut c0 = 0;
            while c0 < n {
                let cn = (n - c0).min(ACTS);
                let acc = &mut acc[..cn];
                acc.fill(_mm256_setzero_ps());
                for b in 0..nb {
                    let blk = pan.add(b * panel::ROWS * P::BYTES);
                    if c0 == 0 {
                        // The first pass streams the panel from memory; later passes find it in L1.
                        for line in (0..panel::ROWS * P::BYTES).step_by(64) {
                            _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(AHEAD + line) as *const i8);
                        }
                    }
                    P::block::<D>(blk, a, c0, b, acc);
                }
                for (j, e) in acc.iter().enumerate() {
                    store_panel(*e, r0, lo..hi, out.add((c0 + j) * w.rows));
                }
                c0 += cn;
            }
        }
    }
    range.start.max(full)
}
