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
    /// Q8_K: the sum of each 16 values, 16 per super-block.
    pub bsums: Vec<i16>,
}

impl Activations {
    pub fn blocks_per_row(&self) -> usize {
        match self.kind {
            Some(ActKind::Q8) => self.cols / QK,
            Some(ActKind::Q8K) => self.cols / QK_K,
            _ => self.cols,
        }
    }

    /// Quantizes `x` (`rows` rows) for products with weights of kind `kind`.
    pub fn quantize(&mut self, kind: ActKind, x: &[f32], rows: usize) {
        let cols = x.len() / rows.max(1);
        self.kind = Some(kind);
        self.rows = rows;
        self.cols = cols;
        match kind {
            ActKind::F32 => {
                self.x.clear();
                self.x.extend_from_slice(x);
            }
            ActKind::Q8 => {
                let nb = x.len() / QK;
                self.q.resize(x.len(), 0);
                for v in [&mut self.d, &mut self.s, &mut self.sx] {
                    v.resize(nb, 0.0);
                }
                for (b, xb) in x.chunks_exact(QK).enumerate() {
                    let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let d = amax / 127.0;
                    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                    let mut sum = 0i32;
                    for (q, v) in self.q[b * QK..(b + 1) * QK].iter_mut().zip(xb) {
                        *q = (v * id).round_ties_even() as i8;
                        sum += *q as i32;
                    }
                    let dr = round_f16(d);
                    self.d[b] = dr;
                    self.s[b] = round_f16(d * sum as f32);
                    self.sx[b] = dr * sum as f32;
                }
            }
            ActKind::Q8K => {
                let nb = x.len() / QK_K;
                self.q.resize(x.len(), 0);
                self.d.resize(nb, 0.0);
                self.bsums.resize(nb * 16, 0);
                for (b, xb) in x.chunks_exact(QK_K).enumerate() {
                    let (mut max, mut amax) = (0.0f32, 0.0f32);
                    for &v in xb {
                        if v.abs() > amax {
                            amax = v.abs();
                            max = v;
                        }
                    }
                    let q = &mut self.q[b * QK_K..(b + 1) * QK_K];
                    if amax == 0.0 {
                        self.d[b] = 0.0;
                        q.fill(0);
                        self.bsums[b * 16..(b + 1) * 16].fill(0);
                        continue;
                    }
                    let iscale = -127.0 / max;
                    for (q, v) in q.iter_mut().zip(xb) {
                        *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
                    }
                    for (g, s) in self.bsums[b * 16..(b + 1) * 16].iter_mut().enumerate() {
                        *s = q[g * 16..(g + 1) * 16].iter().map(|&v| v as i16).sum();
                    }
                    self.d[b] = 1.0 / iscale;
                }
            }
        }
    }
}
