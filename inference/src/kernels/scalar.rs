//! The portable reference: one weight row times one activation row, in plain Rust, block by
//! block as llama.cpp's generic code computes it. Every SIMD path is tested against these,
//! and they against a dequantize-then-`f32` product. They are also the path of CPUs without
//! AVX2 (and of `NAVE_CPU=scalar`).

use super::formats::{f16_at, scale_min_k4, Activations, WeightType, QK, QK_K};

/// `w` (one row of type `t`) dotted with activation row `r` of `a`.
pub fn dot(t: WeightType, w: &[u8], a: &Activations, r: usize) -> f32 {
    let cols = a.cols;
    match t {
        WeightType::F32 | WeightType::F16 | WeightType::BF16 => {
            let x = &a.x[r * cols..(r + 1) * cols];
            let bytes = t.block_bytes();
            let mut v = [0.0f32];
            w.chunks_exact(bytes)
                .zip(x)
                .map(|(b, x)| {
                    super::formats::dequantize_row(t, b, &mut v);
                    v[0] * x
                })
                .sum()
        }
        WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q5_0 | WeightType::Q5_1 | WeightType::Q8_0 => {
            let nb = cols / QK;
            let q = &a.q[r * cols..(r + 1) * cols];
            let mut sum = 0.0f32;
            for (b, wb) in w.chunks_exact(t.block_bytes()).enumerate().take(nb) {
                let y = &q[b * QK..(b + 1) * QK];
                let (dy, sy) = (a.d[r * nb + b], a.s[r * nb + b]);
                sum += match t {
                    WeightType::Q4_0 => {
                        let mut s = 0i32;
                        for j in 0..16 {
                            s += ((wb[2 + j] & 0xF) as i32 - 8) * y[j] as i32;
                            s += ((wb[2 + j] >> 4) as i32 - 8) * y[j + 16] as i32;
                        }
                        f16_at(wb, 0) * dy * s as f32
                    }
                    WeightType::Q4_1 => {
                        let mut s = 0i32;
                        for j in 0..16 {
                            s += (wb[4 + j] & 0xF) as i32 * y[j] as i32;
                            s += (wb[4 + j] >> 4) as i32 * y[j + 16] as i32;
                        }
                        f16_at(wb, 0) * dy * s as f32 + f16_at(wb, 2) * sy
                    }
                    WeightType::Q5_0 => {
                        let qh = u32::from_le_bytes([wb[2], wb[3], wb[4], wb[5]]);
                        let mut s = 0i32;
                        for j in 0..16 {
                            let lo = ((wb[6 + j] & 0xF) as u32 | ((qh >> j) & 1) << 4) as i32 - 16;
                            let hi = ((wb[6 + j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4) as i32 - 16;
                            s += lo * y[j] as i32 + hi * y[j + 16] as i32;
                        }
                        f16_at(wb, 0) * dy * s as f32
                    }
                    WeightType::Q5_1 => {
                        let qh = u32::from_le_bytes([wb[4], wb[5], wb[6], wb[7]]);
                        let mut s = 0i32;
                        for j in 0..16 {
                            let lo = ((wb[8 + j] & 0xF) as u32 | ((qh >> j) & 1) << 4) as i32;
                            let hi = ((wb[8 + j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4) as i32;
                            s += lo * y[j] as i32 + hi * y[j + 16] as i32;
                        }
                        f16_at(wb, 0) * dy * s as f32 + f16_at(wb, 2) * sy
                    }
                    _ => {
                        let s: i32 = (0..32).map(|j| (wb[2 + j] as i8) as i32 * y[j] as i32).sum();
                        f16_at(wb, 0) * dy * s as f32
                    }
                };
            }
            sum
        }
        WeightType::Q4_K | WeightType::Q5_K | WeightType::Q6_K => {
            let nb = cols / QK_K;
            let q = &a.q[r * cols..(r + 1) * cols];
            let mut sum = 0.0f32;
            for (b, wb) in w.chunks_exact(t.block_bytes()).enumerate().take(nb) {
                let y = &q[b * QK_K..(b + 1) * QK_K];
                let bs = &a.bsums[(r * nb + b) * 16..(r * nb + b + 1) * 16];
                let dy = a.d[r * nb + b];
                sum += match t {
                    WeightType::Q6_K => {
                        let (ql, qh, sc) = (&wb[0..128], &wb[128..192], &wb[192..208]);
                        // Values in storage order: chunk n (128), then position l in 0..32 of
                        // the four 32-value quarters.
                        let mut vals = [0i32; QK_K];
                        for n in 0..2 {
                            for l in 0..32 {
                                let (ql, qh) = (&ql[64 * n..], &qh[32 * n..]);
                                vals[128 * n + l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                                vals[128 * n + l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                                vals[128 * n + l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                                vals[128 * n + l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                            }
                        }
                        let mut s = 0i32;
                        for g in 0..16 {
                            let p: i32 = (0..16).map(|i| vals[16 * g + i] * y[16 * g + i] as i32).sum();
                            s += (sc[g] as i8) as i32 * p;
                        }
                        f16_at(wb, 208) * dy * s as f32
                    }
                    _ => {
                        let (d, dmin) = (f16_at(wb, 0), f16_at(wb, 2));
                        let sc = &wb[4..16];
                        let (qh, qs) =
                            if t == WeightType::Q5_K { (&wb[16..48], &wb[48..176]) } else { (&[][..], &wb[16..144]) };
                        let (mut s, mut m) = (0i32, 0i32);
                        for j in 0..8 {
                            let (scale, min) = scale_min_k4(j, sc);
                            let (c, hi) = (j / 2, j % 2 == 1);
                            let mut p = 0i32;
                            for l in 0..32 {
                                let byte = qs[32 * c + l];
                                let mut v = if hi { byte >> 4 } else { byte & 0xF } as i32;
                                if !qh.is_empty() {
                                    v |= (((qh[l] >> j) & 1) << 4) as i32;
                                }
                                p += v * y[32 * j + l] as i32;
                            }
                            s += scale as i32 * p;
                            m += min as i32 * (bs[2 * j] as i32 + bs[2 * j + 1] as i32);
                        }
                        d * dy * s as f32 - dmin * dy * m as f32
                    }
                };
            }
            sum
        }
    }
}
