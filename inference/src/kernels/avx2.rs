//! AVX2 + FMA (+ F16C) micro-kernels: a tile of `R` weight rows times `C` activation rows.
//! The 32-wide types' kernels are compiled three times: with `maddubs` + `madd` for their
//! integer dots ([`Madd`], AVX2), with AVX-VNNI's `vpdpbusd` ([`AvxVnni`]: one instruction
//! instead of two or three, no i16 step; the `avxvnni` path of Intel's client chips since
//! Alder Lake and its E-core Xeons, which have no AVX-512), and with AVX-512 VNNI's on
//! 256-bit vectors ([`Vnni`]: the same, with 32 vector registers and 512-bit panel pairs),
//! the `avx512` path. All sum the same integers in the same float steps: the same bits.
//!
//! Each weight block is loaded and unpacked to bytes once per tile and multiplied with all
//! `C` activation rows (the batched path reuses every loaded weight byte `C` times); the
//! decode path (`C = 1`) takes `R = 4` rows at a time, four (row, activation) pairs to a
//! vector. Integer work is exact; only the float accumulation order differs from the
//! scalar reference, and it is the same on every tile shape (see `tile32`).
//!
//! The 32-wide types are kept in panels of eight rows ([`super::panel`]): one 32-byte load
//! holds four values of each of the eight rows, an activation's four bytes are broadcast
//! against it, and each row's dot sums in its own lane, so a block costs no horizontal
//! sums; every activation row passes over a block once it is unpacked (`panel32`). The
//! K-quants' panels are [`super::kpanel`]'s. Rows past the last panel, and the floats, take
//! the tiles below.
//!
//! The integer dot of 32 unsigned weight values with 32 signed activations is
//! `maddubs` (u8 x i8 pairs into i16, no overflow: 31 * 127 * 2 < 2^15) then `madd` with
//! ones (i16 pairs into i32). Q8_0 weights are signed: `maddubs(|w|, sign(y, w))`.
//! The offsets of the unsigned formats (Q4_1's min, Q4_0's -8) are one more product per
//! block, `m_w * s_y` with `s_y = d_y * sum(y)`, summed after the loop.

// Every function here is called only after `is_x86_feature_detected!` confirmed AVX2, FMA
// and F16C (see `Isa::detect`); their bodies are intrinsics and raw loads within the row
// slices the callers checked, so per-operation `unsafe` blocks would add only noise.
#![allow(unsafe_op_in_unsafe_fn, clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use super::formats::{ActKind, Activations, WeightType, QK, QK_K};
use super::panel::{self, Parts};
use super::{kpanel, QMatrix};

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline(always)]
unsafe fn f16(p: *const u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((p as *const u16).read_unaligned() as i32)))
}

/// 32 nibbles of 16 bytes: low nibbles first (values 0..16), then high (16..32).
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let x = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(0x0F);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(x, 4), m), _mm_and_si128(x, m))
}

/// The 32 bits at `p` as bytes, 0x10 where the bit is set (the fifth bit of Q5 values).
#[inline(always)]
unsafe fn high_bits(p: *const u8) -> __m256i {
    let bits = _mm256_set1_epi32((p as *const i32).read_unaligned());
    let spread = _mm256_shuffle_epi8(
        bits,
        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0x0000000000000000),
    );
    let mask = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, mask), mask);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Where a 32-value block's offset coefficient `m` comes from (its value is `d * q + m`).
#[derive(Clone, Copy, PartialEq)]
pub enum Offset {
    /// No offset (Q8_0's values are signed).
    None,
    /// A fixed multiple of the scale: `m = k * d` (Q4_0: -8, Q5_0: -16).
    Scaled(f32),
    /// Stored as an f16 right after `d` (Q4_1, Q5_1).
    Stored,
}

/// A 32-value block format: its size, how to unpack its values to bytes, and where its
/// offset coefficient comes from; its scale `d` is the f16 it starts with.
pub trait Block32 {
    /// Where its parts lie, in the file and in a [`super::panel`].
    const PARTS: Parts;
    const BYTES: usize = Self::PARTS.bytes;
    const OFFSET: Offset;
    /// Signed values (Q8_0) instead of unsigned ones.
    const SIGNED: bool = false;
    /// The format has an offset term at all (all but Q8_0).
    const HAS_M: bool = !matches!(Self::OFFSET, Offset::None);
    /// The offset term pairs with Q8_1's f16 `s` (Q4_1, Q5_1, whose `m` is stored) rather
    /// than the exact sum.
    const ROUNDED_S: bool = matches!(Self::OFFSET, Offset::Stored);
    unsafe fn values(p: *const u8) -> __m256i;
    #[inline(always)]
    unsafe fn d(p: *const u8) -> f32 {
        f16(p)
    }
    #[inline(always)]
    unsafe fn m(p: *const u8) -> f32 {
        match Self::OFFSET {
            Offset::None => 0.0,
            Offset::Scaled(k) => k * f16(p),
            Offset::Stored => f16(p.add(2)),
        }
    }
    /// `d` and `m` of four blocks, one per pointer, each computed as [`Self::d`] and
    /// [`Self::m`] compute it.
    #[inline(always)]
    unsafe fn dm4(p: [*const u8; 4]) -> (__m128, __m128) {
        match Self::OFFSET {
            Offset::None => (halves4(p, 0), _mm_setzero_ps()),
            Offset::Scaled(k) => {
                let d = halves4(p, 0);
                (d, _mm_mul_ps(_mm_set1_ps(k), d))
            }
            // Side by side: one conversion of the four pairs.
            Offset::Stored => {
                let w = |i: usize| (p[i] as *const i32).read_unaligned();
                let pairs = _mm256_cvtph_ps(_mm_setr_epi32(w(0), w(1), w(2), w(3)));
                let split = _mm256_permutevar8x32_ps(pairs, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
                (_mm256_castps256_ps128(split), _mm256_extractf128_ps(split, 1))
            }
        }
    }
}

pub struct Q4_0;
pub struct Q4_1;
pub struct Q5_0;
pub struct Q5_1;
pub struct Q8_0;

impl Block32 for Q4_0 {
    const PARTS: Parts = Parts::must(WeightType::Q4_0);
    const OFFSET: Offset = Offset::Scaled(-8.0);
    #[inline(always)]
    unsafe fn values(p: *const u8) -> __m256i {
        nibbles(p.add(2))
    }
}

impl Block32 for Q4_1 {
    const PARTS: Parts = Parts::must(WeightType::Q4_1);
    const OFFSET: Offset = Offset::Stored;
    #[inline(always)]
    unsafe fn values(p: *const u8) -> __m256i {
        nibbles(p.add(4))
    }
}

impl Block32 for Q5_0 {
    const PARTS: Parts = Parts::must(WeightType::Q5_0);
    const OFFSET: Offset = Offset::Scaled(-16.0);
    #[inline(always)]
    unsafe fn values(p: *const u8) -> __m256i {
        _mm256_or_si256(nibbles(p.add(6)), high_bits(p.add(2)))
    }
}

impl Block32 for Q5_1 {
    const PARTS: Parts = Parts::must(WeightType::Q5_1);
    const OFFSET: Offset = Offset::Stored;
    #[inline(always)]
    unsafe fn values(p: *const u8) -> __m256i {
        _mm256_or_si256(nibbles(p.add(8)), high_bits(p.add(4)))
    }
}

impl Block32 for Q8_0 {
    const PARTS: Parts = Parts::must(WeightType::Q8_0);
    const OFFSET: Offset = Offset::None;
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn values(p: *const u8) -> __m256i {
        _mm256_loadu_si256(p.add(2) as *const __m256i)
    }
}

/// The output tile of `R` weight rows by `C` activation rows: `out[r][c]`.
pub type Tile<const R: usize, const C: usize> = [[f32; C]; R];

/// How a kernel sums products of unsigned weight bytes with signed activation bytes, four
/// to an i32 lane. Both ways are exact for the values here (weights below 256, activations
/// within +-127, and `maddubs`'s i16 pairs cannot saturate where it is used: unsigned
/// weights below 32 or magnitudes up to 128), so both paths give the same bits.
pub trait Dot {
    /// Which compilation of the kernels runs this dot (their target features).
    const PATH: DotPath;
    /// `vpdpbusd` (no i16 step): unsigned operands may be full bytes.
    const VNNI: bool = !matches!(Self::PATH, DotPath::Madd);
    /// `acc` plus, per i32 lane, the four products of `w`'s bytes with `y`'s.
    unsafe fn dot4(acc: __m256i, w: __m256i, y: __m256i) -> __m256i;
    /// `acc` plus, per i32 lane, the two products of `p`'s i16 lanes with `s`'s (`madd`
    /// then `add`, or VNNI's `vpdpwssd` in one: the same sum, no saturation either way).
    unsafe fn dot2(acc: __m256i, p: __m256i, s: __m256i) -> __m256i;
}

/// The compilations of the 32-wide kernels, one per [`Dot`].
#[derive(PartialEq, Eq)]
pub enum DotPath {
    Madd,
    AvxVnni,
    Vnni,
}

/// AVX2: `maddubs` (u8 x i8 pairs into i16), then `madd` with ones (pairs into i32).
pub struct Madd;

/// AVX-VNNI (the VEX encoding, 16 vector registers): one `vpdpbusd`.
pub struct AvxVnni;

/// AVX-512 VNNI on 256-bit vectors (AVX-512VL): one `vpdpbusd`.
pub struct Vnni;

impl Dot for Madd {
    const PATH: DotPath = DotPath::Madd;
    #[inline(always)]
    unsafe fn dot4(acc: __m256i, w: __m256i, y: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, y), _mm256_set1_epi16(1)))
    }
    #[inline(always)]
    unsafe fn dot2(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, s))
    }
}

impl Dot for AvxVnni {
    const PATH: DotPath = DotPath::AvxVnni;
    #[inline(always)]
    unsafe fn dot4(acc: __m256i, w: __m256i, y: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, w, y)
    }
    #[inline(always)]
    unsafe fn dot2(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
        _mm256_dpwssd_avx_epi32(acc, p, s)
    }
}

impl Dot for Vnni {
    const PATH: DotPath = DotPath::Vnni;
    #[inline(always)]
    unsafe fn dot4(acc: __m256i, w: __m256i, y: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, w, y)
    }
    #[inline(always)]
    unsafe fn dot2(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, p, s)
    }
}

/// The sums of the eight i32 lanes of each of four vectors, in that order.
#[inline(always)]
unsafe fn reduce4(v: [__m256i; 4]) -> __m128i {
    // Interleave and add (single-operation shuffles; `hadd` costs twice as much on Zen).
    let s01 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[0], v[1]), _mm256_unpackhi_epi32(v[0], v[1]));
    let s23 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2], v[3]), _mm256_unpackhi_epi32(v[2], v[3]));
    let w = _mm256_add_epi32(_mm256_unpacklo_epi64(s01, s23), _mm256_unpackhi_epi64(s01, s23));
    _mm_add_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1))
}

/// The f16 at `p[i] + off` for each of four pointers, as `f32`.
#[inline(always)]
unsafe fn halves4(p: [*const u8; 4], off: usize) -> __m128 {
    let h = |i: usize| (p[i].add(off) as *const u16).read_unaligned() as i16;
    _mm_cvtph_ps(_mm_setr_epi16(h(0), h(1), h(2), h(3), 0, 0, 0, 0))
}

/// The integer dot of one weight block's values `wv` (`wa`: their magnitudes, for the
/// signed Q8_0) with 32 activations `y`, as eight i32 partial sums (exact).
#[inline(always)]
unsafe fn idot<B: Block32, D: Dot>(wv: __m256i, wa: __m256i, y: __m256i) -> __m256i {
    let zero = _mm256_setzero_si256();
    if B::SIGNED {
        D::dot4(zero, wa, _mm256_sign_epi8(y, wv))
    } else {
        D::dot4(zero, wv, y)
    }
}

// How the 32-wide kernels sum, the same on every tile shape (so a row's result does not
// depend on which rows it was batched with): per (weight row, activation row), the exact
// integer dot of each block is reduced to one number, then `acc = fma(float(dot) * d_w,
// d_y, acc)` and `off = fma(m_w, s_y, off)` block after block, and the result is
// `acc + off`. Four (row, activation) pairs share a 128-bit vector.

/// A tile kernel compiled with one path's target features: `$name` is `$with` summing its
/// integer dots with `$dot`.
macro_rules! tile_on_path {
    ($(#[$doc:meta])* $name:ident: $bound:ident, $with:ident, $dot:ty, $features:literal) => {
        $(#[$doc])*
        #[target_feature(enable = $features)]
        pub unsafe fn $name<B: $bound, const R: usize, const C: usize>(
            w: [*const u8; R],
            a: &Activations,
            arows: [usize; C],
            nb: usize,
            ahead: usize,
        ) -> Tile<R, C> {
            $with::<B, $dot, R, C>(w, a, arows, nb, ahead)
        }
    };
}

tile_on_path!(
    /// `R` rows of a 32-wide type (at `w[r]`, `nb` blocks each) times activation rows
    /// `arows` of `a` (consecutive).
    tile32: Block32, tile32_with, Madd, "avx2,fma,f16c"
);
tile_on_path!(
    /// [`tile32`] on the AVX-VNNI path.
    tile32_avxvnni: Block32, tile32_with, AvxVnni, "avx2,fma,f16c,avxvnni"
);
tile_on_path!(
    /// [`tile32`] on the AVX-512 path.
    tile32_vnni: Block32, tile32_with, Vnni, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"
);

#[inline(always)]
unsafe fn tile32_with<B: Block32, D: Dot, const R: usize, const C: usize>(
    w: [*const u8; R],
    a: &Activations,
    arows: [usize; C],
    nb: usize,
    ahead: usize,
) -> Tile<R, C> {
    debug_assert!(R <= 4 && C <= 4 && arows.iter().enumerate().all(|(i, &r)| r == arows[0] + i));
    let c0 = arows[0];
    let mut out = [[0.0; C]; R];
    if C == 1 {
        // One activation row: the lanes are the (up to four) weight rows.
        let q = a.q.as_ptr().add(c0 * a.cols);
        let d = a.d.as_ptr().add(c0 * nb);
        let s = if B::ROUNDED_S { &a.s } else { &a.sx }.as_ptr().add(c0 * nb);
        let mut p4 = [w[0]; 4];
        p4[..R].copy_from_slice(&w);
        let (mut acc, mut off) = (_mm_setzero_ps(), _mm_setzero_ps());
        for b in 0..nb {
            let y = _mm256_loadu_si256(q.add(b * QK) as *const __m256i);
            let mut pb = [std::ptr::null::<u8>(); 4];
            let mut v = [_mm256_setzero_si256(); 4];
            for r in 0..4 {
                pb[r] = p4[r].add(b * B::BYTES);
            }
            for r in 0..R {
                if ahead > 0 {
                    _mm_prefetch::<_MM_HINT_T0>(pb[r].add(ahead) as *const i8);
                }
                let wv = B::values(pb[r]);
                let wa = if B::SIGNED { _mm256_sign_epi8(wv, wv) } else { wv };
                v[r] = idot::<B, D>(wv, wa, y);
            }
            let (dw, mw) = B::dm4(pb);
            let f = _mm_cvtepi32_ps(reduce4(v));
            acc = _mm_fmadd_ps(_mm_mul_ps(f, dw), _mm_set1_ps(*d.add(b)), acc);
            if B::HAS_M {
                off = _mm_fmadd_ps(mw, _mm_set1_ps(*s.add(b)), off);
            }
        }
        let mut lanes = [0.0f32; 4];
        _mm_storeu_ps(lanes.as_mut_ptr(), _mm_add_ps(acc, off));
        for r in 0..R {
            out[r][0] = lanes[r];
        }
        return out;
    }
    // Several activation rows: per weight row, the lanes are the activation rows.
    let pr = a.padded_rows();
    let dt = a.dt.as_ptr().add(c0);
    let st = if B::ROUNDED_S { &a.st } else { &a.sxt }.as_ptr().add(c0);
    let mut q = [std::ptr::null::<i8>(); C];
    for (c, q) in q.iter_mut().enumerate() {
        *q = a.q.as_ptr().add((c0 + c) * a.cols);
    }
    let (mut acc, mut off) = ([_mm_setzero_ps(); R], [_mm_setzero_ps(); R]);
    for b in 0..nb {
        let dy = _mm_loadu_ps(dt.add(b * pr));
        let sy = _mm_loadu_ps(st.add(b * pr));
        let mut y = [_mm256_setzero_si256(); C];
        for c in 0..C {
            y[c] = _mm256_loadu_si256(q[c].add(b * QK) as *const __m256i);
        }
        for r in 0..R {
            let p = w[r].add(b * B::BYTES);
            if ahead > 0 {
                _mm_prefetch::<_MM_HINT_T0>(p.add(ahead) as *const i8);
            }
            let wv = B::values(p);
            let wa = if B::SIGNED { _mm256_sign_epi8(wv, wv) } else { wv };
            let mut v = [_mm256_setzero_si256(); 4];
            for c in 0..C {
                v[c] = idot::<B, D>(wv, wa, y[c]);
            }
            let f = _mm_cvtepi32_ps(reduce4(v));
            acc[r] = _mm_fmadd_ps(_mm_mul_ps(f, _mm_set1_ps(B::d(p))), dy, acc[r]);
            if B::HAS_M {
                off[r] = _mm_fmadd_ps(_mm_set1_ps(B::m(p)), sy, off[r]);
            }
        }
    }
    for r in 0..R {
        let mut lanes = [0.0f32; 4];
        _mm_storeu_ps(lanes.as_mut_ptr(), _mm_add_ps(acc[r], off[r]));
        out[r].copy_from_slice(&lanes[..C]);
    }
    out
}

/// The three K-quant formats: per 32-value sub-block `j`, its values as bytes and its
/// scales as i16 lanes (one per pair of values, as `madd` takes them).
pub trait BlockK {
    const BYTES: usize;
    /// Per super-block: scales, mins and the value bytes' sources, unpacked once.
    type Unpacked: Copy;
    fn zero() -> Self::Unpacked;
    unsafe fn unpack(p: *const u8) -> Self::Unpacked;
    unsafe fn values(u: &Self::Unpacked, p: *const u8, j: usize) -> __m256i;
    unsafe fn scales(u: &Self::Unpacked, j: usize) -> __m256i;
    /// The super-block's scale `d`.
    unsafe fn d(p: *const u8) -> f32;
    /// The offset term, as i32 lanes to sum, and its coefficient: the super-block's
    /// product is `d * d_y * isum - coef * d_y * sum(offset)`.
    unsafe fn offset(u: &Self::Unpacked, p: *const u8, bsums: *const i16) -> (__m256i, f32);
}

pub struct Q4K;
pub struct Q5K;
pub struct Q6K;

#[derive(Clone, Copy)]
pub struct UnpackedK45 {
    /// The eight 6-bit scales as i16, in both 128-bit lanes.
    scales: __m256i,
    /// The eight mins as i16, each twice (one per 16-value block sum).
    mins: __m256i,
    qh: __m256i,
}

#[inline(always)]
unsafe fn zero_k45() -> UnpackedK45 {
    UnpackedK45 { scales: _mm256_setzero_si256(), mins: _mm256_setzero_si256(), qh: _mm256_setzero_si256() }
}

/// The 12 scale bytes of a Q4_K/Q5_K super-block as 8 scales then 8 mins (bytes), with
/// word operations instead of eight calls of `scale_min_k4`.
#[inline(always)]
unsafe fn unpack_k45(p: *const u8, qh: bool) -> UnpackedK45 {
    const M1: u32 = 0x3f3f3f3f;
    const M2: u32 = 0x0f0f0f0f;
    const M3: u32 = 0x03030303;
    let sc = p.add(4) as *const u32;
    let (u0, u1, u2) = (sc.read_unaligned(), sc.add(1).read_unaligned(), sc.add(2).read_unaligned());
    let scales_lo = u0 & M1;
    let scales_hi = (u2 & M2) | (((u0 >> 6) & M3) << 4);
    let mins_lo = u1 & M1;
    let mins_hi = ((u2 >> 4) & M2) | (((u1 >> 6) & M3) << 4);
    let s8 = _mm_set_epi32(0, 0, scales_hi as i32, scales_lo as i32);
    let m8 = _mm_set_epi32(0, 0, mins_hi as i32, mins_lo as i32);
    let s16 = _mm_cvtepu8_epi16(s8);
    UnpackedK45 {
        scales: _mm256_set_m128i(s16, s16),
        mins: _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8)),
        qh: if qh { _mm256_loadu_si256(p.add(16) as *const __m256i) } else { _mm256_setzero_si256() },
    }
}

/// Broadcasts i16 lane `j` of each 128-bit half to the whole half.
#[inline(always)]
unsafe fn lane16(v: __m256i, j: usize) -> __m256i {
    let ctrl = (2 * j as i16) | ((2 * j as i16 + 1) << 8);
    _mm256_shuffle_epi8(v, _mm256_set1_epi16(ctrl))
}

impl BlockK for Q4K {
    const BYTES: usize = 144;
    type Unpacked = UnpackedK45;
    fn zero() -> UnpackedK45 {
        // SAFETY: only called by kernels that already run with AVX enabled.
        unsafe { zero_k45() }
    }
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> UnpackedK45 {
        unpack_k45(p, false)
    }
    #[inline(always)]
    unsafe fn values(_: &UnpackedK45, p: *const u8, j: usize) -> __m256i {
        let x = _mm256_loadu_si256(p.add(16 + 32 * (j / 2)) as *const __m256i);
        let x = if j % 2 == 1 { _mm256_srli_epi16(x, 4) } else { x };
        _mm256_and_si256(x, _mm256_set1_epi8(0x0F))
    }
    #[inline(always)]
    unsafe fn scales(u: &UnpackedK45, j: usize) -> __m256i {
        lane16(u.scales, j)
    }
    #[inline(always)]
    unsafe fn d(p: *const u8) -> f32 {
        f16(p)
    }
    #[inline(always)]
    unsafe fn offset(u: &UnpackedK45, p: *const u8, bsums: *const i16) -> (__m256i, f32) {
        (_mm256_madd_epi16(u.mins, _mm256_loadu_si256(bsums as *const __m256i)), f16(p.add(2)))
    }
}

impl BlockK for Q5K {
    const BYTES: usize = 176;
    type Unpacked = UnpackedK45;
    fn zero() -> UnpackedK45 {
        // SAFETY: only called by kernels that already run with AVX enabled.
        unsafe { zero_k45() }
    }
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> UnpackedK45 {
        unpack_k45(p, true)
    }
    #[inline(always)]
    unsafe fn values(u: &UnpackedK45, p: *const u8, j: usize) -> __m256i {
        let x = _mm256_loadu_si256(p.add(48 + 32 * (j / 2)) as *const __m256i);
        let x = if j % 2 == 1 { _mm256_srli_epi16(x, 4) } else { x };
        let lo = _mm256_and_si256(x, _mm256_set1_epi8(0x0F));
        let h = _mm256_srl_epi16(u.qh, _mm_cvtsi32_si128(j as i32));
        let h = _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(1)), 4);
        _mm256_or_si256(lo, h)
    }
    #[inline(always)]
    unsafe fn scales(u: &UnpackedK45, j: usize) -> __m256i {
        lane16(u.scales, j)
    }
    #[inline(always)]
    unsafe fn d(p: *const u8) -> f32 {
        f16(p)
    }
    #[inline(always)]
    unsafe fn offset(u: &UnpackedK45, p: *const u8, bsums: *const i16) -> (__m256i, f32) {
        (_mm256_madd_epi16(u.mins, _mm256_loadu_si256(bsums as *const __m256i)), f16(p.add(2)))
    }
}

#[derive(Clone, Copy)]
pub struct UnpackedK6 {
    /// The sixteen i8 scales.
    scales8: __m128i,
}

impl BlockK for Q6K {
    const BYTES: usize = 210;
    type Unpacked = UnpackedK6;
    fn zero() -> UnpackedK6 {
        // SAFETY: only called by kernels that already run with AVX enabled.
        UnpackedK6 { scales8: unsafe { _mm_setzero_si128() } }
    }
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> UnpackedK6 {
        UnpackedK6 { scales8: _mm_loadu_si128(p.add(192) as *const __m128i) }
    }
    #[inline(always)]
    unsafe fn values(_: &UnpackedK6, p: *const u8, j: usize) -> __m256i {
        // Sub-block j = 4n + k: quarter k of the 128-value half n.
        let (n, k) = (j / 4, j % 4);
        let ql = _mm256_loadu_si256(p.add(64 * n + 32 * (k % 2)) as *const __m256i);
        let ql = if k >= 2 { _mm256_srli_epi16(ql, 4) } else { ql };
        let ql = _mm256_and_si256(ql, _mm256_set1_epi8(0x0F));
        let qh = _mm256_loadu_si256(p.add(128 + 32 * n) as *const __m256i);
        let qh = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k as i32));
        let qh = _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(3)), 4);
        _mm256_or_si256(ql, qh)
    }
    #[inline(always)]
    unsafe fn scales(u: &UnpackedK6, j: usize) -> __m256i {
        // Lanes 0-7 (values 0-15 of the sub-block) take scale 2j, lanes 8-15 scale 2j + 1.
        let (a, b) = (2 * j as i8, 2 * j as i8 + 1);
        let ctrl = _mm_set_epi8(b, b, b, b, b, b, b, b, a, a, a, a, a, a, a, a);
        _mm256_cvtepi8_epi16(_mm_shuffle_epi8(u.scales8, ctrl))
    }
    #[inline(always)]
    unsafe fn d(p: *const u8) -> f32 {
        f16(p.add(208))
    }
    #[inline(always)]
    unsafe fn offset(u: &UnpackedK6, p: *const u8, bsums: *const i16) -> (__m256i, f32) {
        let s16 = _mm256_cvtepi8_epi16(u.scales8);
        (_mm256_madd_epi16(s16, _mm256_loadu_si256(bsums as *const __m256i)), 32.0 * f16(p.add(208)))
    }
}

tile_on_path!(
    /// `R` rows of a K-quant type (`nb` super-blocks each) times activation rows `arows`.
    tile_k: BlockK, tile_k_with, Madd, "avx2,fma,f16c"
);
tile_on_path!(
    /// [`tile_k`] on the AVX-VNNI path (each scaled pair of products is one `vpdpwssd`).
    tile_k_avxvnni: BlockK, tile_k_with, AvxVnni, "avx2,fma,f16c,avxvnni"
);
tile_on_path!(
    /// [`tile_k`] on the AVX-512 path.
    tile_k_vnni: BlockK, tile_k_with, Vnni, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"
);

#[inline(always)]
unsafe fn tile_k_with<B: BlockK, D: Dot, const R: usize, const C: usize>(
    w: [*const u8; R],
    a: &Activations,
    arows: [usize; C],
    nb: usize,
    ahead: usize,
) -> Tile<R, C> {
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut off = [[_mm256_setzero_ps(); C]; R];
    let mut q = [std::ptr::null::<i8>(); C];
    for c in 0..C {
        q[c] = a.q.as_ptr().add(arows[c] * a.cols);
    }
    for b in 0..nb {
        let mut p = [std::ptr::null::<u8>(); R];
        let mut u = [B::zero(); R];
        for r in 0..R {
            p[r] = w[r].add(b * B::BYTES);
            if ahead > 0 {
                for line in (0..B::BYTES).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(p[r].add(ahead + line) as *const i8);
                }
            }
            u[r] = B::unpack(p[r]);
        }
        let mut isum = [[_mm256_setzero_si256(); C]; R];
        for j in 0..8 {
            let (mut wv, mut sc) = ([_mm256_setzero_si256(); R], [_mm256_setzero_si256(); R]);
            for r in 0..R {
                wv[r] = B::values(&u[r], p[r], j);
                sc[r] = B::scales(&u[r], j);
            }
            for c in 0..C {
                let y = _mm256_loadu_si256(q[c].add(b * QK_K + 32 * j) as *const __m256i);
                for r in 0..R {
                    isum[r][c] = D::dot2(isum[r][c], _mm256_maddubs_epi16(wv[r], y), sc[r]);
                }
            }
        }
        for c in 0..C {
            let row = arows[c] * nb + b;
            let dy = *a.d.get_unchecked(row);
            let bsums = a.bsums.as_ptr().add(row * 16);
            for r in 0..R {
                let d = B::d(p[r]);
                acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r][c]), _mm256_set1_ps(d * dy), acc[r][c]);
                let (o, coef) = B::offset(&u[r], p[r], bsums);
                off[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(o), _mm256_set1_ps(coef * dy), off[r][c]);
            }
        }
    }
    let mut out = [[0.0; C]; R];
    for r in 0..R {
        for c in 0..C {
            out[r][c] = hsum(acc[r][c]) - hsum(off[r][c]);
        }
    }
    out
}

/// How float rows load eight values as `f32`.
pub trait FloatRow {
    const BYTES: usize;
    const TYPE: WeightType;
    unsafe fn load8(p: *const u8) -> __m256;
}

pub struct F32;
pub struct F16;
pub struct BF16;

impl FloatRow for F32 {
    const TYPE: WeightType = WeightType::F32;
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_loadu_ps(p as *const f32)
    }
}

impl FloatRow for F16 {
    const TYPE: WeightType = WeightType::F16;
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

impl FloatRow for BF16 {
    const TYPE: WeightType = WeightType::BF16;
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        let x = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
        _mm256_castsi256_ps(_mm256_slli_epi32(x, 16))
    }
}

/// `R` float rows of `cols` values times activation rows `arows` (plain `f32`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile_float<T: FloatRow, const R: usize, const C: usize>(
    w: [*const u8; R],
    a: &Activations,
    arows: [usize; C],
    cols: usize,
    ahead: usize,
) -> Tile<R, C> {
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut x = [std::ptr::null::<f32>(); C];
    for c in 0..C {
        x[c] = a.x.as_ptr().add(arows[c] * cols);
    }
    let whole = cols / 8 * 8;
    let mut i = 0;
    while i < whole {
        let mut wv = [_mm256_setzero_ps(); R];
        for r in 0..R {
            if ahead > 0 && i % 16 == 0 {
                _mm_prefetch::<_MM_HINT_T0>(w[r].add(i * T::BYTES + ahead) as *const i8);
            }
            wv[r] = T::load8(w[r].add(i * T::BYTES));
        }
        for c in 0..C {
            let xv = _mm256_loadu_ps(x[c].add(i));
            for r in 0..R {
                acc[r][c] = _mm256_fmadd_ps(wv[r], xv, acc[r][c]);
            }
        }
        i += 8;
    }
    let mut out = [[0.0; C]; R];
    let mut tail = [0.0f32; 1];
    for r in 0..R {
        for c in 0..C {
            let mut s = hsum(acc[r][c]);
            for k in whole..cols {
                let wr = std::slice::from_raw_parts(w[r].add(k * T::BYTES), T::BYTES);
                super::formats::dequantize_row(T::TYPE, wr, &mut tail);
                s += tail[0] * *x[c].add(k);
            }
            out[r][c] = s;
        }
    }
    out
}

/// The AVX2 kernel family of one weight type: a tile of `R` rows by `C` activations.
trait Kernel {
    /// Whether the batched walk takes tiles of one row by eight activation rows.
    const WIDE: bool = false;
    unsafe fn tile<const R: usize, const C: usize>(
        w: [*const u8; R],
        a: &Activations,
        arows: [usize; C],
        nb: usize,
        ahead: usize,
    ) -> Tile<R, C>;
}

struct K32<B, D>(std::marker::PhantomData<(B, D)>);
struct KK<B, D>(std::marker::PhantomData<(B, D)>);
struct KF<B>(std::marker::PhantomData<B>);

impl<B: Block32, D: Dot> Kernel for K32<B, D> {
    #[inline(always)]
    unsafe fn tile<const R: usize, const C: usize>(
        w: [*const u8; R],
        a: &Activations,
        arows: [usize; C],
        nb: usize,
        ahead: usize,
    ) -> Tile<R, C> {
        match D::PATH {
            DotPath::Vnni => tile32_vnni::<B, R, C>(w, a, arows, nb, ahead),
            DotPath::AvxVnni => tile32_avxvnni::<B, R, C>(w, a, arows, nb, ahead),
            DotPath::Madd => tile32::<B, R, C>(w, a, arows, nb, ahead),
        }
    }
}

impl<B: BlockK, D: Dot> Kernel for KK<B, D> {
    const WIDE: bool = true;
    #[inline(always)]
    unsafe fn tile<const R: usize, const C: usize>(
        w: [*const u8; R],
        a: &Activations,
        arows: [usize; C],
        nb: usize,
        ahead: usize,
    ) -> Tile<R, C> {
        match D::PATH {
            DotPath::Vnni => tile_k_vnni::<B, R, C>(w, a, arows, nb, ahead),
            DotPath::AvxVnni => tile_k_avxvnni::<B, R, C>(w, a, arows, nb, ahead),
            DotPath::Madd => tile_k::<B, R, C>(w, a, arows, nb, ahead),
        }
    }
}

impl<B: FloatRow> Kernel for KF<B> {
    #[inline(always)]
    unsafe fn tile<const R: usize, const C: usize>(
        w: [*const u8; R],
        a: &Activations,
        arows: [usize; C],
        nb: usize,
        ahead: usize,
    ) -> Tile<R, C> {
        tile_float::<B, R, C>(w, a, arows, nb, ahead)
    }
}

/// Rows `range` of `w` (whose bytes are `data`) times every row of `a`, into `out`
/// (`a.rows` x `w.rows`, columns `range` written by this call alone).
///
/// `D` is the path's integer dot: [`Madd`] needs AVX2, FMA and F16C, [`AvxVnni`] also
/// AVX-VNNI, [`Vnni`] AVX-512 F, BW, VL and VNNI (the floats run the AVX2 kernels on all
/// three).
pub unsafe fn rows<D: Dot>(w: &QMatrix, data: &[u8], a: &Activations, range: std::ops::Range<usize>, out: *mut f32) {
    match w.ty {
        // The 32-wide types in panels (eight rows interleaved), rows past the last panel
        // as below.
        WeightType::Q4_0 if w.panels() => panels::<Q4_0, D>(w, data, a, range, out),
        WeightType::Q4_1 if w.panels() => panels::<Q4_1, D>(w, data, a, range, out),
        WeightType::Q5_0 if w.panels() => panels::<Q5_0, D>(w, data, a, range, out),
        WeightType::Q5_1 if w.panels() => panels::<Q5_1, D>(w, data, a, range, out),
        WeightType::Q8_0 if w.panels() => panels::<Q8_0, D>(w, data, a, range, out),
        WeightType::Q4_0 => walk::<K32<Q4_0, D>>(w, data, a, range, out),
        WeightType::Q4_1 => walk::<K32<Q4_1, D>>(w, data, a, range, out),
        WeightType::Q5_0 => walk::<K32<Q5_0, D>>(w, data, a, range, out),
        WeightType::Q5_1 => walk::<K32<Q5_1, D>>(w, data, a, range, out),
        WeightType::Q8_0 => walk::<K32<Q8_0, D>>(w, data, a, range, out),
        // The K-quants in panels, rows past the last panel on the tiles.
        WeightType::Q4_K => {
            let rest = kpanel::panels::<kpanel::Q4K, D>(w, data, a, range.clone(), out);
            walk::<KK<Q4K, D>>(w, data, a, rest..range.end, out)
        }
        WeightType::Q5_K => {
            let rest = kpanel::panels::<kpanel::Q5K, D>(w, data, a, range.clone(), out);
            walk::<KK<Q5K, D>>(w, data, a, rest..range.end, out)
        }
        WeightType::Q6_K => {
            let rest = kpanel::panels::<kpanel::Q6K, D>(w, data, a, range.clone(), out);
            walk::<KK<Q6K, D>>(w, data, a, rest..range.end, out)
        }
        WeightType::F32 => walk::<KF<F32>>(w, data, a, range, out),
        WeightType::F16 => walk::<KF<F16>>(w, data, a, range, out),
        WeightType::BF16 => walk::<KF<BF16>>(w, data, a, range, out),
    }
}

/// Weight rows per cache block: 16 rows of a 576-wide Q4_1 matrix are 5.8 KB, which stay in
/// L1 while every tile of four activation rows passes over them.
const ROW_BLOCK: usize = 16;

unsafe fn walk<K: Kernel>(w: &QMatrix, data: &[u8], a: &Activations, range: std::ops::Range<usize>, out: *mut f32) {
    let nb = match w.ty.act_kind() {
        ActKind::F32 => w.cols,
        _ => w.cols / w.ty.block_values(),
    };
    let rb = w.ty.row_bytes(w.cols);
    let base = data.as_ptr();
    let n = a.rows;
    macro_rules! tile {
        ($r:literal, $c:literal, $r0:expr, $c0:expr) => {{
            let (r0, c0) = ($r0, $c0);
            let mut ws = [base; $r];
            for (i, p) in ws.iter_mut().enumerate() {
                *p = base.add((r0 + i) * rb);
            }
            let mut cs = [0usize; $c];
            for (j, c) in cs.iter_mut().enumerate() {
                *c = c0 + j;
            }
            // Weights stream from memory: the single-row (decode) path fetches the next
            // tile's rows while this one computes; the batched path fetches the next row
            // block while its first activation tile passes over this one.
            let ahead = if n == 1 {
                $r * rb
            } else if c0 == 0 {
                ROW_BLOCK * rb
            } else {
                0
            };
            let t = K::tile::<$r, $c>(ws, a, cs, nb, ahead);
            for (i, row) in t.iter().enumerate() {
                for (j, v) in row.iter().enumerate() {
                    *out.add((c0 + j) * w.rows + r0 + i) = *v;
                }
            }
        }};
    }
    let mut r = range.start;
    if n == 1 {
        while r + 4 <= range.end {
            tile!(4, 1, r, 0);
            r += 4;
        }
        while r < range.end {
            tile!(1, 1, r, 0);
            r += 1;
        }
        return;
    }
    while r < range.end {
        let end = (r + ROW_BLOCK).min(range.end);
        let mut c = 0;
        if K::WIDE {
            // The K-quants unpack each sub-block's values and scales once per tile: one
            // row by eight activations spreads that over twice the products of two by
            // four (2048x1024, batch 16, one thread, Xeon avx2: Q4_K 48.2 -> 49.9, Q6_K
            // 38.0 -> 38.7 GMAC/s).
            while c + 8 <= n {
                for rr in r..end {
                    tile!(1, 8, rr, c);
                }
                c += 8;
            }
        }
        while c < n {
            let mut rr = r;
            while rr + 2 <= end {
                match n - c {
                    1 => tile!(2, 1, rr, c),
                    2 => tile!(2, 2, rr, c),
                    3 => tile!(2, 3, rr, c),
                    _ => tile!(2, 4, rr, c),
                }
                rr += 2;
            }
            if rr < end {
                match n - c {
                    1 => tile!(1, 1, rr, c),
                    2 => tile!(1, 2, rr, c),
                    3 => tile!(1, 3, rr, c),
                    _ => tile!(1, 4, rr, c),
                }
            }
            c += 4;
        }
        r = end;
    }
}

/// The eight groups of four values of one block of a panel, as bytes: group `g` holds
/// values `4g .. 4g + 4` of each of the eight rows (row `i` in bytes `4i .. 4i + 4`).
#[inline(always)]
unsafe fn panel_groups<B: Block32>(blk: *const u8) -> [__m256i; 8] {
    let qs = blk.add(B::PARTS.panel_qs());
    let chunk = |k: usize| _mm256_loadu_si256(qs.add(32 * k) as *const __m256i);
    if B::SIGNED {
        return std::array::from_fn(chunk);
    }
    let low = _mm256_set1_epi8(0x0F);
    let c = [chunk(0), chunk(1), chunk(2), chunk(3)];
    let mut g = [_mm256_setzero_si256(); 8];
    for k in 0..4 {
        g[k] = _mm256_and_si256(c[k], low);
        g[k + 4] = _mm256_and_si256(_mm256_srli_epi16(c[k], 4), low);
    }
    if B::PARTS.qh {
        // Bit `g` of each byte is group g's fifth bit: move it to bit 4.
        let h = _mm256_loadu_si256(blk.add(B::PARTS.panel_qh()) as *const __m256i);
        let five = _mm256_set1_epi8(0x10);
        let bits = [
            _mm256_slli_epi16(h, 4),
            _mm256_slli_epi16(h, 3),
            _mm256_slli_epi16(h, 2),
            _mm256_slli_epi16(h, 1),
            h,
            _mm256_srli_epi16(h, 1),
            _mm256_srli_epi16(h, 2),
            _mm256_srli_epi16(h, 3),
        ];
        for k in 0..8 {
            g[k] = _mm256_or_si256(g[k], _mm256_and_si256(bits[k], five));
        }
    }
    g
}

/// How far ahead of the block it multiplies a panel's walk fetches weights (bytes).
const PANEL_AHEAD: usize = 1024;

/// Activation rows a panel's walk takes at a time (their sums stay in L1).
const PANEL_ACTS: usize = 32;

/// One panel (`nb` blocks at `pan`) times activation rows `c0 .. c0 + acc.len()`: per
/// activation row, the eight rows' `acc` and `off` (summed as [`tile32`] sums them, so a
/// row gives the same result in a panel as on its own).
///
/// With VNNI, Q8_0's signed weights are made unsigned (`w + 128`, flipping the top bit) and
/// `128 * sum(y)` is taken off each block's dot: the same integers as `|w| * sign(y, w)`,
/// without a `sign` per group and activation row.
#[inline(always)]
unsafe fn panel32<B: Block32, D: Dot>(
    pan: *const u8,
    nb: usize,
    a: &Activations,
    c0: usize,
    acc: &mut [[__m256; 2]],
    fetch: bool,
) {
    let dy = a.d.as_ptr();
    let ysum = a.qs.as_ptr();
    let sy = if B::ROUNDED_S { &a.s } else { &a.sx }.as_ptr();
    for e in acc.iter_mut() {
        *e = [_mm256_setzero_ps(); 2];
    }
    let ones = _mm256_set1_epi16(1);
    for b in 0..nb {
        let blk = pan.add(b * panel::ROWS * B::BYTES);
        if fetch {
            // The first pass over a panel: its weights stream from memory; fetch a few
            // blocks ahead (the passes for further activation rows find them in L1).
            for line in (0..panel::ROWS * B::BYTES).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PANEL_AHEAD + line) as *const i8);
            }
        }
        let d8 = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
        let m8 = match B::OFFSET {
            Offset::None => _mm256_setzero_ps(),
            Offset::Scaled(k) => _mm256_mul_ps(_mm256_set1_ps(k), d8),
            Offset::Stored => _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i)),
        };
        let g = panel_groups::<B>(blk);
        let wa: [__m256i; 8] = match (B::SIGNED, D::VNNI) {
            (false, _) => g,
            (true, false) => std::array::from_fn(|k| _mm256_sign_epi8(g[k], g[k])),
            (true, true) => std::array::from_fn(|k| _mm256_xor_si256(g[k], _mm256_set1_epi8(-128))),
        };
        for (j, e) in acc.iter_mut().enumerate() {
            let c = c0 + j;
            let q = a.q.as_ptr().add(c * a.cols + b * QK);
            let y = |k: usize| _mm256_set1_epi32((q.add(4 * k) as *const i32).read_unaligned());
            let isum = if D::VNNI {
                // Two chains, so consecutive `vpdpbusd`s do not wait on each other.
                let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for k in (0..8).step_by(2) {
                    s0 = D::dot4(s0, wa[k], y(k));
                    s1 = D::dot4(s1, wa[k + 1], y(k + 1));
                }
                let s = _mm256_add_epi32(s0, s1);
                match B::SIGNED {
                    true => _mm256_sub_epi32(s, _mm256_set1_epi32(*ysum.add(c * nb + b) << 7)),
                    false => s,
                }
            } else if B::SIGNED {
                let mut s = _mm256_setzero_si256();
                for k in 0..8 {
                    let p = _mm256_maddubs_epi16(wa[k], _mm256_sign_epi8(y(k), g[k]));
                    s = _mm256_add_epi32(s, _mm256_madd_epi16(p, ones));
                }
                s
            } else {
                // Four groups add up in i16 without overflow: 4 * 2 * 31 * 127 < 2^15.
                let half = |k: usize| {
                    let p01 =
                        _mm256_add_epi16(_mm256_maddubs_epi16(g[k], y(k)), _mm256_maddubs_epi16(g[k + 1], y(k + 1)));
                    let p23 = _mm256_add_epi16(
                        _mm256_maddubs_epi16(g[k + 2], y(k + 2)),
                        _mm256_maddubs_epi16(g[k + 3], y(k + 3)),
                    );
                    _mm256_madd_epi16(_mm256_add_epi16(p01, p23), ones)
                };
                _mm256_add_epi32(half(0), half(4))
            };
            let f = _mm256_cvtepi32_ps(isum);
            e[0] = _mm256_fmadd_ps(_mm256_mul_ps(f, d8), _mm256_set1_ps(*dy.add(c * nb + b)), e[0]);
            if B::HAS_M {
                e[1] = _mm256_fmadd_ps(m8, _mm256_set1_ps(*sy.add(c * nb + b)), e[1]);
            }
        }
    }
}

/// Rows `range` of a matrix of a 32-wide type in panels: whole panels (a panel that
/// `range` cuts is computed whole and written in part), then the rows past the last panel
/// in the file's layout.
#[inline(always)]
unsafe fn panels<B: Block32, D: Dot>(
    w: &QMatrix,
    data: &[u8],
    a: &Activations,
    range: std::ops::Range<usize>,
    out: *mut f32,
) {
    match D::PATH {
        DotPath::Vnni => walk_panels_vnni::<B>(w, data, a, range, out),
        DotPath::AvxVnni => walk_panels_avxvnni::<B>(w, data, a, range, out),
        DotPath::Madd => walk_panels::<B>(w, data, a, range, out),
    }
}

/// [`walk_panels`] on the AVX-VNNI path (one panel at a time, on 256-bit vectors).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn walk_panels_avxvnni<B: Block32>(
    w: &QMatrix,
    data: &[u8],
    a: &Activations,
    range: std::ops::Range<usize>,
    out: *mut f32,
) {
    walk_panels_with::<B, AvxVnni>(w, data, a, range, out)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn walk_panels<B: Block32>(
    w: &QMatrix,
    data: &[u8],
    a: &Activations,
    range: std::ops::Range<usize>,
    out: *mut f32,
) {
    walk_panels_with::<B, Madd>(w, data, a, range, out)
}

/// [`walk_panels`] on the AVX-512 path. Batches of more than four activation rows take
/// pairs of panels on 512-bit vectors (16 rows to a vector, half the instructions of two
/// panels one at a time), then the panel left over and the rows past the panels as on
/// 256-bit ones. Smaller batches are bound by memory, where two streams a panel apart
/// measured slower (Q8_0 262144x640, one row: 15-21 GB/s against 30-38): one panel at a time.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn walk_panels_vnni<B: Block32>(
    w: &QMatrix,
    data: &[u8],
    a: &Activations,
    range: std::ops::Range<usize>,
    out: *mut f32,
) {
    let nb = w.cols / QK;
    let rb = w.ty.row_bytes(w.cols);
    let n = a.rows;
    let full = w.packed_rows();
    let (lo, hi) = (range.start.min(full), range.end.min(full));
    let mut rest = range.start;
    if lo < hi && n > 4 {
        let first = lo / panel::ROWS;
        let pairs = (hi.div_ceil(panel::ROWS) - first) / 2;
        let mut acc = [[_mm512_setzero_ps(); 2]; PANEL_ACTS];
        for i in 0..pairs {
            let r0 = (first + 2 * i) * panel::ROWS;
            let pan = data.as_ptr().add(r0 * rb);
            let mut c0 = 0;
            while c0 < n {
                let cn = (n - c0).min(PANEL_ACTS);
                panel32x2::<B>(pan, panel::ROWS * rb, nb, a, c0, &mut acc[..cn], c0 == 0);
                for (j, e) in acc[..cn].iter().enumerate() {
                    let mut lanes = [0.0f32; 2 * panel::ROWS];
                    _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_add_ps(e[0], e[1]));
                    for (k, v) in lanes.iter().enumerate() {
                        if (lo..hi).contains(&(r0 + k)) {
                            *out.add((c0 + j) * w.rows + r0 + k) = *v;
                        }
                    }
                }
                c0 += cn;
            }
        }
        rest = rest.max((first + 2 * pairs) * panel::ROWS);
    }
    if rest < range.end {
        walk_panels_with::<B, Vnni>(w, data, a, rest..range.end, out)
    }
}

/// Two panels side by side (the second `next` bytes after the first), 16 rows to a 512-bit
/// vector: [`panel32`]'s steps with VNNI on twice the lanes (the same integer and float
/// operations per lane, so the same bits).
#[inline(always)]
unsafe fn panel32x2<B: Block32>(
    pan: *const u8,
    next: usize,
    nb: usize,
    a: &Activations,
    c0: usize,
    acc: &mut [[__m512; 2]],
    fetch: bool,
) {
    let dy = a.d.as_ptr();
    let ysum = a.qs.as_ptr();
    let sy = if B::ROUNDED_S { &a.s } else { &a.sx }.as_ptr();
    for e in acc.iter_mut() {
        *e = [_mm512_setzero_ps(); 2];
    }
    for b in 0..nb {
        let blk = pan.add(b * panel::ROWS * B::BYTES);
        let blk2 = blk.add(next);
        if fetch {
            for line in (0..panel::ROWS * B::BYTES).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PANEL_AHEAD + line) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(blk2.wrapping_add(PANEL_AHEAD + line) as *const i8);
            }
        }
        // Eight f16s of each panel at `off`, the first panel's in the low half.
        let halves = |off: usize| {
            let lo = _mm_loadu_si128(blk.add(off) as *const __m128i);
            _mm512_cvtph_ps(_mm256_set_m128i(_mm_loadu_si128(blk2.add(off) as *const __m128i), lo))
        };
        let d16 = halves(0);
        let m16 = match B::OFFSET {
            Offset::None => _mm512_setzero_ps(),
            Offset::Scaled(k) => _mm512_mul_ps(_mm512_set1_ps(k), d16),
            Offset::Stored => halves(16),
        };
        let (g, g2) = (panel_groups::<B>(blk), panel_groups::<B>(blk2));
        let wv: [__m512i; 8] = std::array::from_fn(|k| {
            let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(g[k]), g2[k]);
            match B::SIGNED {
                true => _mm512_xor_si512(v, _mm512_set1_epi8(-128)),
                false => v,
            }
        });
        for (j, e) in acc.iter_mut().enumerate() {
            let c = c0 + j;
            let q = a.q.as_ptr().add(c * a.cols + b * QK);
            let y = |k: usize| _mm512_set1_epi32((q.add(4 * k) as *const i32).read_unaligned());
            let (mut s0, mut s1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            for k in (0..8).step_by(2) {
                s0 = _mm512_dpbusd_epi32(s0, wv[k], y(k));
                s1 = _mm512_dpbusd_epi32(s1, wv[k + 1], y(k + 1));
            }
            let s = _mm512_add_epi32(s0, s1);
            let s = match B::SIGNED {
                true => _mm512_sub_epi32(s, _mm512_set1_epi32(*ysum.add(c * nb + b) << 7)),
                false => s,
            };
            let f = _mm512_cvtepi32_ps(s);
            e[0] = _mm512_fmadd_ps(_mm512_mul_ps(f, d16), _mm512_set1_ps(*dy.add(c * nb + b)), e[0]);
            if B::HAS_M {
                e[1] = _mm512_fmadd_ps(m16, _mm512_set1_ps(*sy.add(c * nb + b)), e[1]);
            }
        }
    }
}

/// A panel's eight sums for one activation row (`v`, lane `i`: weight row `r0 + i`) into
/// that row's outputs `out`, those of the rows in `rows` only (a panel the thread's range
/// cuts is computed whole and written in part).
#[inline(always)]
pub(super) unsafe fn store_panel(v: __m256, r0: usize, rows: std::ops::Range<usize>, out: *mut f32) {
    let mut lanes = [0.0f32; panel::ROWS];
    _mm256_storeu_ps(lanes.as_mut_ptr(), v);
    for (i, v) in lanes.iter().enumerate() {
        if rows.contains(&(r0 + i)) {
            *out.add(r0 + i) = *v;
        }
    }
}

#[inline(always)]
unsafe fn walk_panels_with<B: Block32, D: Dot>(
    w: &QMatrix,
    data: &[u8],
    a: &Activations,
    range: std::ops::Range<usize>,
    out: *mut f32,
) {
    let nb = w.cols / QK;
    let rb = w.ty.row_bytes(w.cols);
    let n = a.rows;
    let full = w.packed_rows();
    let mut acc = [[_mm256_setzero_ps(); 2]; PANEL_ACTS];
    let (lo, hi) = (range.start.min(full), range.end.min(full));
    if lo < hi {
        for p in lo / panel::ROWS..hi.div_ceil(panel::ROWS) {
            let r0 = p * panel::ROWS;
            let pan = data.as_ptr().add(r0 * rb);
            let mut c0 = 0;
            while c0 < n {
                let cn = (n - c0).min(PANEL_ACTS);
                panel32::<B, D>(pan, nb, a, c0, &mut acc[..cn], c0 == 0);
                for (j, e) in acc[..cn].iter().enumerate() {
                    store_panel(_mm256_add_ps(e[0], e[1]), r0, lo..hi, out.add((c0 + j) * w.rows));
                }
                c0 += cn;
            }
        }
    }
    if range.end > full {
        walk::<K32<B, D>>(w, data, a, range.start.max(full)..range.end, out);
    }
}
