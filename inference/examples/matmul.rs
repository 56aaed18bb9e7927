//! Quantized matrix products as candle runs them on this CPU: Q8_0 weights of the shapes
//! SmolLM2 uses, with the input width as it is (576) and padded to a multiple of 256
//! (which reaches candle's repacked VNNI kernels). `cargo run --release -p
//! nave-inference --example matmul`.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for (n, k) in [(576usize, 576usize), (576, 768), (1536, 576), (1536, 768), (576, 1536), (49152, 576), (49152, 768)]
    {
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let q = QMatMul::from_arc(std::sync::Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0)?))?;
        for m in [1usize, 4, 16, 64] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            let _ = q.forward(&x)?;
            let iters = (2000 / m).max(20) / if n > 10000 { 20 } else { 1 };
            let t = Instant::now();
            for _ in 0..iters {
                let _ = q.forward(&x)?;
            }
            let dt = t.elapsed().as_secs_f64() / iters as f64;
            println!("n {n:>6} k {k:>5} m {m:>3}: {:>8.1} us  {:>6.1} GMAC/s", dt * 1e6, (n * k * m) as f64 / dt / 1e9);
        }
    }
    Ok(())
}
