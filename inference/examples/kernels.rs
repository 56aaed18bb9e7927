//! Times the kernels on the shapes of SmolLM2-135M (Q4_1 layers, the Q8_0 output layer)
//! and Gemma 3 270M's K-quants, for every path this CPU runs:
//! `cargo run --release -p nave-inference --example kernels [threads]`.
//! Prints GB/s of weights streamed and GMAC/s per shape and batch size (the fastest of
//! eight rounds, as the machines here have noisy neighbours); the matrices
//! rotate through 64 MB of copies, so weights come from memory as in a model's decode.
//! `NAVE_KERNELS_HOT=1` keeps one copy (in cache); `NAVE_KERNELS_ONLY=q5_0,262144` times
//! only the shapes whose names contain one of those; `NAVE_KERNELS_PATH=avx2` only that
//! path.

use std::time::Instant;

use nave_inference::kernels::{matmul, Activations, Isa, Pool, QMatrix, WeightType};

fn matrix(t: WeightType, rows: usize, cols: usize) -> QMatrix {
    let mut data = vec![0u8; rows * t.row_bytes(cols)];
    let mut x = 0x2545F4914F6CDD1Du64;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    // Finite f16 scales: make every f16 field a small number (0x2000-ish).
    let fields: &[usize] = match t {
        WeightType::Q4_0 | WeightType::Q5_0 | WeightType::Q8_0 => &[0],
        WeightType::Q4_1 | WeightType::Q5_1 | WeightType::Q4_K | WeightType::Q5_K => &[0, 2],
        WeightType::Q6_K => &[208],
        _ => &[],
    };
    for block in data.chunks_exact_mut(t.block_bytes()) {
        for &f in fields {
            block[f + 1] = 0x20;
        }
    }
    QMatrix::new(t, rows, cols, data).expect("sizes")
}

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|t| t.parse().ok()).unwrap_or(2);
    let pool = Pool::new(threads);
    let shapes = [
        ("q4_1 576x576", WeightType::Q4_1, 576, 576),
        ("q4_1 1536x576", WeightType::Q4_1, 1536, 576),
        ("q4_1 576x1536", WeightType::Q4_1, 576, 1536),
        ("q8_0 49152x576", WeightType::Q8_0, 49152, 576),
        ("q8_0 262144x640", WeightType::Q8_0, 262144, 640),
        ("q4_k 2048x1024", WeightType::Q4_K, 2048, 1024),
        ("q6_k 2048x1024", WeightType::Q6_K, 2048, 1024),
        ("q5_0 2048x640", WeightType::Q5_0, 2048, 640),
        ("q8_0 2048x640", WeightType::Q8_0, 2048, 640),
        ("q8_0 16384x640", WeightType::Q8_0, 16384, 640),
        ("q8_0 65536x640", WeightType::Q8_0, 65536, 640),
    ];
    // NAVE_KERNELS_ONLY=q5_0,q8_0: only the shapes whose names contain one of these.
    let only: Vec<String> =
        std::env::var("NAVE_KERNELS_ONLY").map(|s| s.split(',').map(str::to_string).collect()).unwrap_or_default();
    let path = std::env::var("NAVE_KERNELS_PATH").ok();
    for isa in Isa::available().into_iter().filter(|i| path.as_deref().is_none_or(|p| p == i.name())) {
        println!("path {} ({threads} threads)", isa.name());
        for (name, t, rows, cols) in shapes {
            if !only.is_empty() && !only.iter().any(|o| name.contains(o.as_str())) {
                continue;
            }
            // Enough copies to stream from memory, as a model's weights are in decode.
            let one = matrix(t, rows, cols);
            // NAVE_KERNELS_HOT=1: one copy, so the weights stay in cache (the kernels' own cost).
            let hot = std::env::var_os("NAVE_KERNELS_HOT").is_some();
            let copies = if hot { 1 } else { (64usize << 20).div_ceil(one.bytes()).max(1) };
            let ws: Vec<QMatrix> =
                (0..copies).map(|i| if i == 0 { one.clone() } else { matrix(t, rows, cols) }).collect();
            let mut act = Activations::default();
            for n in [1usize, 4, 16, 64, 256] {
                if isa == Isa::Scalar && n > 4 {
                    continue;
                }
                let x: Vec<f32> = (0..n * cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
                let mut out = Vec::new();
                let reps = ((4e8 / (rows * cols * n) as f64) as usize).clamp(4, 4000);
                matmul(&pool, isa, &[&ws[0]], &x, n, &mut act, &mut [&mut out]);
                // The fastest of eight rounds: a busy neighbour only ever slows a round.
                let mut s = f64::INFINITY;
                for _ in 0..8 {
                    let t0 = Instant::now();
                    for i in 0..reps.div_ceil(8) {
                        matmul(&pool, isa, &[&ws[i % copies]], &x, n, &mut act, &mut [&mut out]);
                    }
                    s = s.min(t0.elapsed().as_secs_f64() / reps.div_ceil(8) as f64);
                }
                println!(
                    "  {name:<16} n={n:<4} {:>9.1} us  {:>6.1} GB/s  {:>6.1} GMAC/s",
                    s * 1e6,
                    one.bytes() as f64 / s / 1e9,
                    (rows * cols * n) as f64 / s / 1e9
                );
            }
        }
    }
}
