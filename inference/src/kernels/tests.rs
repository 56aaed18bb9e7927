//! Every kernel, type and path against the scalar reference on random blocks and odd
//! shapes; the scalar reference against a dequantize-then-f32 product; our dequantization
//! against candle's.

use super::*;
use crate::sampler::Rng;

/// Where a type's f16 scale fields sit in its block (they must hold finite values).
fn scale_fields(t: WeightType) -> &'static [usize] {
    match t {
        WeightType::Q4_0 | WeightType::Q5_0 | WeightType::Q8_0 => &[0],
        WeightType::Q4_1 | WeightType::Q5_1 | WeightType::Q4_K | WeightType::Q5_K => &[0, 2],
        WeightType::Q6_K => &[208],
        _ => &[],
    }
}

fn random_matrix(rng: &mut Rng, t: WeightType, rows: usize, cols: usize) -> QMatrix {
    let mut data = vec![0u8; rows * t.row_bytes(cols)];
    match t {
        WeightType::F32 => {
            for c in data.chunks_exact_mut(4) {
                c.copy_from_slice(&((rng.next_f64() as f32 - 0.5) * 2.0).to_le_bytes());
            }
        }
        WeightType::F16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&half::f16::from_f32(rng.next_f64() as f32 - 0.5).to_le_bytes());
            }
        }
        WeightType::BF16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&half::bf16::from_f32(rng.next_f64() as f32 - 0.5).to_le_bytes());
            }
        }
        _ => {
            for b in data.iter_mut() {
                *b = (rng.next_f64() * 256.0) as u8;
            }
            for block in data.chunks_exact_mut(t.block_bytes()) {
                for &at in scale_fields(t) {
                    let v = (rng.next_f64() as f32 - 0.3) * 0.02;
                    block[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
                }
            }
        }
    }
    QMatrix::new(t, rows, cols, data).expect("sizes match")
}

fn random_input(rng: &mut Rng, n: usize, cols: usize) -> Vec<f32> {
    // Mostly small values and a few large ones, like hidden states with outlier channels.
    (0..n * cols)
        .map(|i| {
            let v = (rng.next_f64() as f32 - 0.5) * 2.0;
            if i % 97 == 0 {
                v * 20.0
            } else {
                v
            }
        })
        .collect()
}

fn dequantized(w: &QMatrix) -> Vec<f32> {
    let mut out = vec![0.0; w.rows * w.cols];
    for r in 0..w.rows {
        w.dequantize_row(r, &mut out[r * w.cols..(r + 1) * w.cols]);
    }
    out
}

fn shapes(t: WeightType) -> Vec<usize> {
    match t.block_values() {
        1 => vec![8, 13, 576, 64],
        32 => vec![32, 576, 96],
        _ => vec![256, 768],
    }
}

#[test]
fn every_path_matches_the_scalar_reference() {
    let mut rng = Rng::new(7);
    let pool = Pool::new(2);
    let mut act = Activations::default();
    for t in WeightType::ALL {
        for cols in shapes(t) {
            for rows in [1, 3, 5, 17, 36] {
                let w = random_matrix(&mut rng, t, rows, cols);
                let deq = dequantized(&w);
                for n in [1, 2, 3, 4, 5, 7, 64] {
                    let x = random_input(&mut rng, n, cols);
                    let mut reference = vec![0.0f32; 0];
                    matmul(&pool, Isa::Scalar, &[&w], &x, n, &mut act, &mut [&mut reference]);
                    for isa in Isa::available() {
                        let mut got = Vec::new();
                        matmul(&pool, isa, &[&w], &x, n, &mut act, &mut [&mut got]);
                        for c in 0..n {
                            for r in 0..rows {
                                let scale: f32 = (0..cols).map(|k| (deq[r * cols + k] * x[c * cols + k]).abs()).sum();
                                let (a, b) = (got[c * rows + r], reference[c * rows + r]);
                                assert!(
                                    (a - b).abs() <= 2e-5 * scale + 1e-6,
                                    "{} {} rows {rows} cols {cols} n {n}: [{c},{r}] {a} vs {b}",
                                    isa.name(),
                                    t.name(),
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The VNNI paths (AVX-VNNI, AVX-512) sum the same integers as the AVX2 path in the same
/// float steps, so their products are the same bits (Q8_0's weights include -128 and its
/// activations +-127).
#[test]
fn the_vnni_paths_give_the_avx2_paths_bits() {
    let vnni: Vec<Isa> = Isa::available().into_iter().filter(|&i| i > Isa::Avx2).collect();
    if vnni.is_empty() {
        eprintln!("this CPU has neither AVX-VNNI nor AVX-512 VNNI: nothing to compare");
        return;
    }
    let mut rng = Rng::new(17);
    let pool = Pool::new(2);
    let mut act = Activations::default();
    for t in WeightType::ALL {
        for rows in [1, 9, 24, 45, 64] {
            let cols = if t.block_values() == QK_K { 512 } else { 576 };
            let w = random_matrix(&mut rng, t, rows, cols);
            for n in [1, 4, 5, 33] {
                let mut x = random_input(&mut rng, n, cols);
                // A block whose largest value quantizes to 127 and its negation to -127.
                x[0] = 40.0;
                x[1] = -40.0;
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                let mut avx2 = Vec::new();
                matmul(&pool, Isa::Avx2, &[&w], &x, n, &mut act, &mut [&mut avx2]);
                for &isa in &vnni {
                    let mut got = Vec::new();
                    matmul(&pool, isa, &[&w], &x, n, &mut act, &mut [&mut got]);
                    assert_eq!(bits(&avx2), bits(&got), "{} {} rows {rows} n {n}", isa.name(), t.name());
                }
            }
        }
    }
}

#[test]
fn fused_products_equal_separate_ones() {
    let mut rng = Rng::new(11);
    let pool = Pool::new(3);
    let mut act = Activations::default();
    // 60 rows: the threads' shares (whole panels of the fused rows) cut k's second panel.
    let q = random_matrix(&mut rng, WeightType::Q4_1, 60, 576);
    let k = random_matrix(&mut rng, WeightType::Q4_1, 21, 576);
    let v = random_matrix(&mut rng, WeightType::Q8_0, 22, 576);
    let x = random_input(&mut rng, 5, 576);
    for isa in Isa::available() {
        let mut fused = [Vec::new(), Vec::new(), Vec::new()];
        let [f0, f1, f2] = &mut fused;
        matmul(&pool, isa, &[&q, &k, &v], &x, 5, &mut act, &mut [f0, f1, f2]);
        for (i, w) in [&q, &k, &v].into_iter().enumerate() {
            let mut one = Vec::new();
            matmul(&pool, isa, &[w], &x, 5, &mut act, &mut [&mut one]);
            assert_eq!(fused[i], one, "{} matrix {i}", isa.name());
        }
    }
}

/// The scalar reference equals the product of the dequantized weights with the
/// dequantized activations (their quantized values times their scales).
#[test]
fn the_reference_is_the_dequantized_product() {
    let mut rng = Rng::new(3);
    let mut act = Activations::default();
    for t in WeightType::ALL {
        for cols in shapes(t) {
            let w = random_matrix(&mut rng, t, 4, cols);
            let deq = dequantized(&w);
            let x = random_input(&mut rng, 3, cols);
            act.quantize(t.act_kind(), &x, 3);
            for c in 0..3 {
                let xa: Vec<f32> = match t.act_kind() {
                    ActKind::F32 => x[c * cols..(c + 1) * cols].to_vec(),
                    ActKind::Q8 => (0..cols).map(|k| act.q[c * cols + k] as f32 * act.d[(c * cols + k) / QK]).collect(),
                    ActKind::Q8K => {
                        (0..cols).map(|k| act.q[c * cols + k] as f32 * act.d[(c * cols + k) / QK_K]).collect()
                    }
                };
                for r in 0..4 {
                    let plain: f64 = (0..cols).map(|k| deq[r * cols + k] as f64 * xa[k] as f64).sum();
                    let scale: f64 = (0..cols).map(|k| (deq[r * cols + k] as f64 * xa[k] as f64).abs()).sum();
                    let got = scalar::dot(t, &w.row(r), &act, c) as f64;
                    // Q4_1/Q5_1 pair with Q8_1's f16-rounded block sum, as llama.cpp does.
                    let tol = if matches!(t, WeightType::Q4_1 | WeightType::Q5_1) { 2e-3 } else { 2e-5 };
                    assert!((got - plain).abs() <= tol * scale + 1e-6, "{} cols {cols}: {got} vs {plain}", t.name());
                }
            }
        }
    }
}

#[test]
fn dequantization_matches_candle() {
    use candle_core::quantized::{GgmlDType, QStorage, QTensor};
    let mut rng = Rng::new(5);
    let ggml = |t: WeightType| match t {
        WeightType::F32 => GgmlDType::F32,
        WeightType::F16 => GgmlDType::F16,
        WeightType::BF16 => GgmlDType::BF16,
        WeightType::Q4_0 => GgmlDType::Q4_0,
        WeightType::Q4_1 => GgmlDType::Q4_1,
        WeightType::Q5_0 => GgmlDType::Q5_0,
        WeightType::Q5_1 => GgmlDType::Q5_1,
        WeightType::Q8_0 => GgmlDType::Q8_0,
        WeightType::Q4_K => GgmlDType::Q4K,
        WeightType::Q5_K => GgmlDType::Q5K,
        WeightType::Q6_K => GgmlDType::Q6K,
    };
    for t in WeightType::ALL {
        assert_eq!(WeightType::from_ggml(ggml(t)), Some(t));
        assert_eq!(ggml(t).type_size(), t.block_bytes(), "{}", t.name());
        assert_eq!(ggml(t).block_size(), t.block_values(), "{}", t.name());
        let cols = *shapes(t).last().expect("shapes");
        // 13 rows: a panel and rows after it, given back in the file's layout.
        let w = random_matrix(&mut rng, t, 13, cols);
        let bytes: Vec<u8> = (0..13).flat_map(|r| w.row(r).to_vec()).collect();
        let storage =
            QStorage::from_data(std::borrow::Cow::Owned(bytes), &candle_core::Device::Cpu, ggml(t)).expect("storage");
        let theirs = QTensor::new(storage, (13, cols)).expect("tensor").dequantize(&candle_core::Device::Cpu);
        let theirs = theirs.and_then(|t| t.flatten_all()?.to_vec1::<f32>()).expect("dequantize");
        assert_eq!(dequantized(&w), theirs, "{}", t.name());
    }
}

#[test]
fn nave_cpu_names_a_path() {
    // The active path is one this CPU has.
    assert!(Isa::available().contains(&Isa::active()));
}

/// Activations come out the same bit for bit on every path and split across threads.
#[test]
fn activation_quantization_is_the_same_on_every_path() {
    let mut rng = Rng::new(13);
    let pool = Pool::new(2);
    for kind in [ActKind::Q8, ActKind::Q8K] {
        for (rows, cols) in [(2, 256), (3, 512), (64, 768)] {
            let mut x = random_input(&mut rng, rows, cols);
            x[5] = 0.0;
            // An all-zero block, and a block whose largest value is negative.
            x[256..288].fill(0.0);
            x[300] = -1000.0;
            let mut reference = Activations::default();
            reference.quantize(kind, &x, rows);
            for isa in Isa::available() {
                let mut a = Activations::default();
                a.quantize_on(kind, &x, rows, Some(&pool), isa);
                assert_eq!(a.q, reference.q, "{} {kind:?}", isa.name());
                assert_eq!(a.d, reference.d);
                if kind == ActKind::Q8 {
                    assert_eq!(a.s, reference.s);
                    assert_eq!(a.sx, reference.sx);
                } else {
                    assert_eq!(a.bsums, reference.bsums);
                }
            }
        }
    }
}

/// A row's product is the same bit for bit whether it is computed alone (the decode
/// path) or in a batch (the batched path), so batching never changes a greedy answer.
#[test]
fn a_row_alone_equals_the_same_row_in_a_batch() {
    let mut rng = Rng::new(17);
    let pool = Pool::new(2);
    let mut act = Activations::default();
    for t in WeightType::ALL {
        for cols in shapes(t).into_iter().chain([2304]) {
            if !cols.is_multiple_of(t.block_values()) {
                continue;
            }
            let w = random_matrix(&mut rng, t, 37, cols);
            // 37 weight rows: four panels and five rows on the tiles. 6 and 11 activation
            // rows: whole tiles of four and a tail; 40: more than a panel takes at once.
            for n in [6, 11, 40] {
                let x = random_input(&mut rng, n, cols);
                for isa in Isa::available() {
                    let mut batched = Vec::new();
                    matmul(&pool, isa, &[&w], &x, n, &mut act, &mut [&mut batched]);
                    for c in 0..n {
                        let mut alone = Vec::new();
                        matmul(&pool, isa, &[&w], &x[c * cols..(c + 1) * cols], 1, &mut act, &mut [&mut alone]);
                        assert_eq!(
                            alone[..],
                            batched[c * 37..(c + 1) * 37],
                            "{} {} cols {cols} row {c} of {n}",
                            isa.name(),
                            t.name()
                        );
                    }
                }
            }
        }
    }
}

/// The K-quants in panels take the scalar reference's float steps per super-block, so a
/// row in a panel gives its bits exactly, on every path (rows past the panels are only
/// close: their tiles sum in vector lanes).
#[test]
fn k_quant_panels_give_the_references_bits() {
    let mut rng = Rng::new(23);
    let pool = Pool::new(2);
    let mut act = Activations::default();
    for t in [WeightType::Q4_K, WeightType::Q5_K, WeightType::Q6_K] {
        for (rows, cols) in [(8, 256), (24, 768), (21, 2048)] {
            let w = random_matrix(&mut rng, t, rows, cols);
            // The vector paths keep whole panels (the scalar path, forced, the file's layout).
            let panels = if Isa::active() == Isa::Scalar { 0 } else { rows / 8 * 8 };
            assert_eq!(w.packed_rows(), panels, "{}", t.name());
            for n in [1, 3, 33] {
                let mut x = random_input(&mut rng, n, cols);
                // A super-block whose largest magnitude is negative: it quantizes to -128.
                x[3] = -60.0;
                let mut reference = Vec::new();
                matmul(&pool, Isa::Scalar, &[&w], &x, n, &mut act, &mut [&mut reference]);
                for isa in Isa::available() {
                    let mut got = Vec::new();
                    matmul(&pool, isa, &[&w], &x, n, &mut act, &mut [&mut got]);
                    for c in 0..n {
                        for r in 0..w.packed_rows() {
                            let (a, b) = (got[c * rows + r], reference[c * rows + r]);
                            assert_eq!(a.to_bits(), b.to_bits(), "{} {} [{c},{r}]: {a} vs {b}", isa.name(), t.name());
                        }
                    }
                }
            }
        }
    }
}
