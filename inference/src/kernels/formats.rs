//! The GGML block formats, as the file stores them, and the activation formats the
//! products pair them with.
//!
//! Weights are never converted: a [`WeightType`] names the bytes of a row exactly as the
//! GGUF file holds them. Activations (the `f32` inputs of a product) are quantized per block
//! the way llama.cpp does it, so that each block's integer dot product is the one llama.cpp
//! computes and results differ from its only by float summation order:
//! - the 32-wide types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) pair with Q8_0/Q8_1 blocks: 32 `i8`
//!   values, a scale `d = amax / 127` rounded to f16, and (Q8_1) `s = d * sum(q)` rounded
//!   to f16;
//! - the K-quants (Q4_K, Q5_K, Q6_K) pair with Q8_K blocks: 256 `i8` values scaled by
//!   `-127 / max` (max the signed value of largest magnitude), an `f32` scale, and the
//!   sums of each 16 values;
//! - F32, F16 and BF16 weights multiply the `f32` activations directly.

use half::{bf16, f16};

/// Values per block of the 32-wide types.
pub const QK: usize = 32;
/// Values per super-block of the K-quants.
pub const QK_K: usize = 256;

/// The type of a weight matrix's rows, as stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum WeightType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
}

/// How the activations of a product with a given weight type are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActKind {
    F32,
    /// Q8_0 / Q8_1 blocks of 32 (both are kept: the `_0` weight types use the exact sum).
    Q8,
    /// Q8_K super-blocks of 256.
    Q8K,
}

impl WeightType {
    pub const ALL: [WeightType; 11] = [
        WeightType::F32,
        WeightType::F16,
        WeightType::BF16,
        WeightType::Q4_0,
        WeightType::Q4_1,
        WeightType::Q5_0,
        WeightType::Q5_1,
        WeightType::Q8_0,
        WeightType::Q4_K,
        WeightType::Q5_K,
        WeightType::Q6_K,
    ];

    /// The type of a GGML dtype, if the kernels multiply it.
    pub fn from_ggml(t: candle_core::quantized::GgmlDType) -> Option<Self> {
        use candle_core::quantized::GgmlDType as G;
        Some(match t {
            G::F32 => Self::F32,
            G::F16 => Self::F16,
            G::BF16 => Self::BF16,
            G::Q4_0 => Self::Q4_0,
            G::Q4_1 => Self::Q4_1,
            G::Q5_0 => Self::Q5_0,
            G::Q5_1 => Self::Q5_1,
            G::Q8_0 => Self::Q8_0,
            G::Q4K => Self::Q4_K,
            G::Q5K => Self::Q5_K,
            G::Q6K => Self::Q6_K,
            _ => return None,
        })
    }

    /// The GGML dtype of the same bytes (candle's name for this type).
    pub fn ggml(self) -> candle_core::quantized::GgmlDType {
        use candle_core::quantized::GgmlDType as G;
        match self {
            Self::F32 => G::F32,
            Self::F16 => G::F16,
            Self::BF16 => G::BF16,
            Self::Q4_0 => G::Q4_0,
            Self::Q4_1 => G::Q4_1,
            Self::Q5_0 => G::Q5_0,
            Self::Q5_1 => G::Q5_1,
            Self::Q8_0 => G::Q8_0,
            Self::Q4_K => G::Q4K,
            Self::Q5_K => G::Q5K,
            Self::Q6_K => G::Q6K,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
        }
    }

    /// Values per block.
    pub fn block_values(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => QK,
            Self::Q4_K | Self::Q5_K | Self::Q6_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
        }
    }

    /// Bytes of a row of `cols` values (`cols` a multiple of [`Self::block_values`]).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_values() * self.block_bytes()
    }

    pub fn act_kind(self) -> ActKind {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => ActKind::F32,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => ActKind::Q8,
            Self::Q4_K | Self::Q5_K | Self::Q6_K => ActKind::Q8K,
        }
    }
}

#[inline]
pub fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

#[inline]
fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K super-block's 12 scale
/// bytes.
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Writes the `f32` values of one row of `t` (`row` holds whole blocks) to `out`.
pub fn dequantize_row(t: WeightType, row: &[u8], out: &mut [f32]) {
    let bb = t.block_bytes();
    let bv = t.block_values();
    for (b, y) in row.chunks_exact(bb).zip(out.chunks_exact_mut(bv)) {
        match t {
            WeightType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            WeightType::F16 => y[0] = f16_at(b, 0),
            WeightType::BF16 => y[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
            WeightType::Q4_0 => {
                let d = f16_at(b, 0);
                for j in 0..16 {
                    y[j] = d * ((b[2 + j] & 0xF) as i32 - 8) as f32;
                    y[j + 16] = d * ((b[2 + j] >> 4) as i32 - 8) as f32;
                }
            }
            WeightType::Q4_1 => {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for j in 0..16 {
                    y[j] = d * (b[4 + j] & 0xF) as f32 + m;
                    y[j + 16] = d * (b[4 + j] >> 4) as f32 + m;
                }
            }
            WeightType::Q5_0 => {
                let d = f16_at(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                for j in 0..16 {
                    let lo = (b[6 + j] & 0xF) as u32 | ((qh >> j) & 1) << 4;
                    let hi = (b[6 + j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
                    y[j] = d * (lo as i32 - 16) as f32;
                    y[j + 16] = d * (hi as i32 - 16) as f32;
                }
            }
            WeightType::Q5_1 => {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                for j in 0..16 {
                    let lo = (b[8 + j] & 0xF) as u32 | ((qh >> j) & 1) << 4;
                    let hi = (b[8 + j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
                    y[j] = d * lo as f32 + m;
                    y[j + 16] = d * hi as f32 + m;
                }
            }
            WeightType::Q8_0 => {
                let d = f16_at(b, 0);
                for j in 0..32 {
                    y[j] = d * (b[2 + j] as i8) as f32;
                }
            }
            WeightType::Q4_K => {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let (sc, qs) = (&b[4..16], &b[16..144]);
                for c in 0..4 {
                    let (s1, m1) = scale_min_k4(2 * c, sc);
                    let (s2, m2) = scale_min_k4(2 * c + 1, sc);
                    let q = &qs[32 * c..32 * c + 32];
                    for l in 0..32 {
                        y[64 * c + l] = d * s1 as f32 * (q[l] & 0xF) as f32 - dmin * m1 as f32;
                        y[64 * c + 32 + l] = d * s2 as f32 * (q[l] >> 4) as f32 - dmin * m2 as f32;
                    }
                }
            }
            WeightType::Q5_K => {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let (sc, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
                for c in 0..4 {
                    let (s1, m1) = scale_min_k4(2 * c, sc);
                    let (s2, m2) = scale_min_k4(2 * c + 1, sc);
                    let q = &qs[32 * c..32 * c + 32];
                    for l in 0..32 {
                        let lo = (q[l] & 0xF) | (((qh[l] >> (2 * c)) & 1) << 4);
                        let hi = (q[l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4);
                        y[64 * c + l] = d * s1 as f32 * lo as f32 - dmin * m1 as f32;
                        y[64 * c + 32 + l] = d * s2 as f32 * hi as f32 - dmin * m2 as f32;
                    }
                }
            }
            WeightType::Q6_K => {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = f16_at(b, 208);
                for n in 0..2 {
                    let (ql, qh, sc) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..]);
                    let y = &mut y[128 * n..];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
        }
    }
}

/// The activations of a product: `rows` rows of `cols` values, in the form the weight
/// type's kernels read (see the module docs). Reused between products to avoid allocating.
#[derive(Debug, Default)]
pub struct Activations {
    pub kind: Option<ActKind>,
    pub rows: usize,
    pub cols: usize,
    /// `ActKind::F32`: the values.
    pub x: Vec<f32>,
    /// Quantized values, `cols` per row.
    pub q: Vec<i8>,
    /// One scale per block (f16-rounded for Q8; f32 for Q8_K).
    pub d: Vec<f32>,
    /// Q8: `d * sum(q)` rounded to f16 (llama.cpp's Q8_1 `s`, paired with Q4_1/Q5_1).
    pub s: Vec<f32>,
    /// Q8: `d * sum(q)` with the rounded `d`, unrounded (the `_0` types' offset term).
    pub sx: Vec<f32>,
    /// Q8: the sum of each block's quantized values (`sum(q)`, exact).
    pub qs: Vec<i32>,
    /// Q8_K: the sum of each 16 values, 16 per super-block.
    pub bsums: Vec<i16>,
    /// Q8: `d`, `s` and `sx` by block, then row (`[b * padded_rows() + r]`, the rows padded
    /// with zeros to a multiple of 4), so a kernel loads four rows' scales of a block at once.
    pub dt: Vec<f32>,
    pub st: Vec<f32>,
    pub sxt: Vec<f32>,
}

impl Activations {
    /// Quantizes `x` (`rows` rows) for products with weights of kind `kind`.
    pub fn quantize(&mut self, kind: ActKind, x: &[f32], rows: usize) {
        self.quantize_on(kind, x, rows, None, super::Isa::Scalar);
    }

    /// [`Self::quantize`], split across `pool`'s threads where the input is large enough
    /// to pay for it, with `isa`'s vector code where there is some (the results are the
    /// same bit for bit on every path).
    pub fn quantize_on(&mut self, kind: ActKind, x: &[f32], rows: usize, pool: Option<&super::Pool>, isa: super::Isa) {
        let cols = x.len() / rows.max(1);
        self.kind = Some(kind);
        self.rows = rows;
        self.cols = cols;
        let bv = match kind {
            ActKind::F32 => {
                self.x.clear();
                self.x.extend_from_slice(x);
                return;
            }
            ActKind::Q8 => QK,
            ActKind::Q8K => QK_K,
        };
        let nb = x.len() / bv;
        self.q.resize(x.len(), 0);
        self.d.resize(nb, 0.0);
        if kind == ActKind::Q8 {
            self.s.resize(nb, 0.0);
            self.sx.resize(nb, 0.0);
            self.qs.resize(nb, 0);
        } else {
            self.bsums.resize(nb * 16, 0);
        }
        let out = Out {
            q: self.q.as_mut_ptr(),
            d: self.d.as_mut_ptr(),
            s: self.s.as_mut_ptr(),
            sx: self.sx.as_mut_ptr(),
            qs: self.qs.as_mut_ptr(),
            bsums: self.bsums.as_mut_ptr(),
        };
        let run = |blocks: std::ops::Range<usize>| {
            // SAFETY: the buffers were sized for `nb` blocks above, and each caller of
            // `run` takes a disjoint range of blocks.
            unsafe {
                match kind {
                    ActKind::Q8 => q8_blocks(isa, x, out, blocks),
                    _ => q8k_blocks(isa, x, out, blocks),
                }
            }
        };
        match pool {
            // Below this a hand-off to the other threads costs more than it saves.
            Some(pool) if pool.threads() > 1 && x.len() >= 8192 => {
                let threads = pool.threads();
                pool.run(&|t| run(super::pool::share(nb, t, threads, 1)));
            }
            _ => run(0..nb),
        }
        if kind == ActKind::Q8 {
            self.transpose_scales();
        }
    }

    /// Rows rounded up to a multiple of 4: the row stride of `dt`, `st` and `sxt`.
    pub fn padded_rows(&self) -> usize {
        self.rows.next_multiple_of(4)
    }

    fn transpose_scales(&mut self) {
        let (rows, pr) = (self.rows, self.padded_rows());
        let nb = self.cols / QK;
        for (t, src) in [(&mut self.dt, &self.d), (&mut self.st, &self.s), (&mut self.sxt, &self.sx)] {
            t.clear();
            t.resize(nb * pr, 0.0);
            for r in 0..rows {
                for b in 0..nb {
                    t[b * pr + r] = src[r * nb + b];
                }
            }
        }
    }
}

/// Where quantized activations are written, shared by the threads that fill disjoint
/// block ranges of them.
#[derive(Clone, Copy)]
struct Out {
    q: *mut i8,
    d: *mut f32,
    s: *mut f32,
    sx: *mut f32,
    qs: *mut i32,
    bsums: *mut i16,
}
// SAFETY: see `Activations::quantize_on`: threads write disjoint blocks while the owner waits.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// Q8_0/Q8_1 blocks `blocks` of `x` into `out`.
///
/// # Safety
/// `out`'s buffers hold at least `blocks.end` blocks; no other thread writes these blocks.
unsafe fn q8_blocks(isa: super::Isa, x: &[f32], out: Out, blocks: std::ops::Range<usize>) {
    for b in blocks {
        let xb = &x[b * QK..(b + 1) * QK];
        // SAFETY: block b's 32 values lie inside `q` (the caller's contract).
        let q = unsafe { std::slice::from_raw_parts_mut(out.q.add(b * QK), QK) };
        let (amax, sum) = match isa {
            // SAFETY: the vector paths are only chosen where the CPU has AVX2.
            #[cfg(target_arch = "x86_64")]
            isa if isa.vector() => unsafe { q8_block_avx2(xb, q) },
            _ => q8_block(xb, q),
        };
        let d = amax / 127.0;
        let dr = round_f16(d);
        // SAFETY: as above, block b's scale and sums.
        unsafe {
            *out.d.add(b) = dr;
            *out.s.add(b) = round_f16(d * sum as f32);
            *out.sx.add(b) = dr * sum as f32;
            *out.qs.add(b) = sum;
        }
    }
}

/// `x` rounded to the nearest integer, ties to even (`f32::round_ties_even`), for |x| <
/// 2^22: adding 1.5 * 2^23 leaves no fraction bits, so the addition rounds. Without
/// SSE4.1's `roundps` in the baseline target, `round_ties_even` is a call into libm per
/// value (3% of Gemma 3's decode at 16 sequences).
#[inline(always)]
fn round_even(x: f32) -> f32 {
    const M: f32 = 12_582_912.0;
    (x + M) - M
}

/// One block: its largest magnitude and the sum of its quantized values.
fn q8_block(xb: &[f32], q: &mut [i8]) -> (f32, i32) {
    let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, v) in q.iter_mut().zip(xb) {
        *q = round_even(v * id) as i8;
        sum += *q as i32;
    }
    (amax, sum)
}

/// [`q8_block`] with AVX2: the same products and ties-to-even rounding, so the same bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn q8_block_avx2(xb: &[f32], q: &mut [i8]) -> (f32, i32) {
    use std::arch::x86_64::*;
    let p = xb.as_ptr();
    // SAFETY: `xb` holds 32 values and `q` 32 bytes (one block).
    unsafe {
        let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_andnot_ps(sign, v[0]);
        for x in &v[1..] {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *x));
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let i: [__m256i; 4] = std::array::from_fn(|k| {
            _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
                v[k], id,
            )))
        });
        let sum = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
        let s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        let s2 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b01_00_11_10>(s4));
        let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32::<0b10_11_00_01>(s2));
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
        let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, ordered);
        (amax, _mm_cvtsi128_si32(s1))
    }
}

/// Q8_K super-blocks `blocks` of `x` into `out`.
///
/// # Safety
/// As [`q8_blocks`]: on the vector paths compiled for AVX2 (the same operations, so the
/// same values; the baseline target has neither its vectors nor SSE4.1's rounding).
unsafe fn q8k_blocks(isa: super::Isa, x: &[f32], out: Out, blocks: std::ops::Range<usize>) {
    match isa {
        // SAFETY: the vector paths are only chosen where the CPU has AVX2; the rest is the
        // caller's contract.
        #[cfg(target_arch = "x86_64")]
        isa if isa.vector() => unsafe { q8k_blocks_avx2(x, out, blocks) },
        _ => unsafe { q8k_blocks_with(x, out, blocks) },
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn q8k_blocks_avx2(x: &[f32], out: Out, blocks: std::ops::Range<usize>) {
    // SAFETY: the caller's contract.
    unsafe { q8k_blocks_with(x, out, blocks) }
}

#[inline(always)]
unsafe fn q8k_blocks_with(x: &[f32], out: Out, blocks: std::ops::Range<usize>) {
    for b in blocks {
        let xb = &x[b * QK_K..(b + 1) * QK_K];
        // SAFETY: super-block b's values, scale and sums (the caller's contract).
        let (q, d, bsums) = unsafe {
            (
                std::slice::from_raw_parts_mut(out.q.add(b * QK_K), QK_K),
                &mut *out.d.add(b),
                std::slice::from_raw_parts_mut(out.bsums.add(b * 16), 16),
            )
        };
        let (mut max, mut amax) = (0.0f32, 0.0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *d = 0.0;
            q.fill(0);
            bsums.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        for (q, v) in q.iter_mut().zip(xb) {
            *q = (round_even(iscale * v) as i32).min(127) as i8;
        }
        for (g, s) in bsums.iter_mut().enumerate() {
            *s = q[g * 16..(g + 1) * 16].iter().map(|&v| v as i16).sum();
        }
        *d = 1.0 / iscale;
    }
}

#[cfg(test)]
mod tests {
    use super::round_even;

    #[test]
    fn round_even_is_round_ties_even_over_the_quantized_range() {
        // As the quantizers use it (an integer; -0.5 gives +0 where round_ties_even gives
        // -0): every step of 1/1024 over +-160, ties among them, then random values.
        for i in -163_840..=163_840 {
            let x = i as f32 / 1024.0;
            assert_eq!(round_even(x) as i32, x.round_ties_even() as i32, "{x}");
        }
        let mut rng = crate::sampler::Rng::new(3);
        for _ in 0..100_000 {
            let x = (rng.next_f64() * 320.0 - 160.0) as f32;
            assert_eq!(round_even(x) as i32, x.round_ties_even() as i32, "{x}");
        }
    }
}
