//! The engine's own quantized matrix kernels: weights in the file's own types, products
//! as llama.cpp computes them, on every x86-64 CPU at the speed of its vector units.
//!
//! # Layout
//! - [`formats`]: the GGML block formats, dequantization, and the quantized activations
//!   ([`Activations`]: Q8_0/Q8_1 blocks for the 32-wide types, Q8_K for the K-quants).
//! - [`scalar`]: the portable reference, block by block; every other path is tested
//!   against it.
//! - [`panel`]: the layout in memory of the 32-wide types and the K-quants, eight rows
//!   interleaved (bit-exact).
//! - [`kpanel`]: the K-quants' kernels on their panels (every vector path).
//! - [`avx2`]: AVX2 + FMA micro-kernels, a tile of weight rows times activation rows; on
//!   CPUs with AVX-VNNI or AVX-512 VNNI the same kernels sum their integer dots with
//!   `vpdpbusd`.
//! - [`vector`]: the `f32` vector operations of attention, on the same paths.
//! - [`pool`]: the engine's worker threads.
//!
//! A product ([`matmul`]) quantizes its input rows once (shared by every matrix of a fused
//! product: q/k/v, gate/up), splits the matrices' output rows across the pool's threads, and
//! each thread walks its rows in blocks small enough to stay in L1 while every activation
//! row passes over them.
//!
//! The path is chosen once per process ([`Isa::active`]): the best the CPU has, or a lower
//! one named by `NAVE_CPU=scalar|avx2|avxvnni|avx512` (tests and benchmarks force each path
//! this way). `avxvnni` needs AVX-VNNI (Intel Alder Lake and later client chips, Sierra
//! Forest, AMD Zen 5); `avx512` needs AVX-512 F, BW, VL and VNNI, and is the better of the
//! two where a CPU has both; a CPU with AVX-512 but no VNNI (Intel Skylake-SP) runs the
//! AVX2 kernels. The paths are not a chain: Ice Lake has AVX-512 VNNI and no AVX-VNNI.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
pub mod formats;
#[cfg(target_arch = "x86_64")]
pub mod kpanel;
pub mod panel;
pub mod pool;
pub mod scalar;
pub mod vector;

use std::sync::Arc;

pub use formats::{ActKind, Activations, WeightType, QK, QK_K};
pub use pool::Pool;

/// An instruction-set path of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    Avx2,
    /// AVX2 + FMA kernels whose integer dots are AVX-VNNI's `vpdpbusd`.
    AvxVnni,
    /// AVX2 + FMA kernels whose integer dots are AVX-512 VNNI's `vpdpbusd` (on 256-bit
    /// vectors: AVX-512VL), with its 32 vector registers.
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this is one of the AVX2 kernels' paths (every path but the scalar one).
    pub fn vector(self) -> bool {
        self != Isa::Scalar
    }

    /// Every path this CPU can run, lowest first.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
            v.push(Isa::Avx2);
            if is_x86_feature_detected!("avxvnni") {
                v.push(Isa::AvxVnni);
            }
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
            {
                v.push(Isa::Avx512);
            }
        }
        v
    }

    /// The fastest path this CPU runs.
    pub fn best() -> Isa {
        *Isa::available().last().unwrap_or(&Isa::Scalar)
    }

    /// The best path this CPU runs, or the one `NAVE_CPU` names.
    pub fn detect() -> std::result::Result<Isa, String> {
        let available = Isa::available();
        match std::env::var("NAVE_CPU").ok().as_deref().map(str::trim) {
            None | Some("") | Some("auto") => Ok(Isa::best()),
            Some(name) => available.iter().copied().find(|i| i.name() == name).ok_or_else(|| {
                format!(
                    "NAVE_CPU={name:?} is not a path this CPU can run (available: {})",
                    available.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
                )
            }),
        }
    }

    /// The path of this process, chosen once (an unusable `NAVE_CPU` is reported and the
    /// best path used).
    pub fn active() -> Isa {
        static ACTIVE: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ACTIVE.get_or_init(|| {
            Isa::detect().unwrap_or_else(|e| {
                tracing::warn!("{e}; using the best path");
                Isa::best()
            })
        })
    }
}

/// A weight matrix of `rows` rows by `cols` columns, each row in the file's own type.
/// The bytes are shared (a tied output layer is the embedding table itself). On the
/// vector paths the 32-wide types and the K-quants keep every eight rows as a [`panel`]
/// (the same bytes, interleaved); the scalar path reads the file's layout as it is.
#[derive(Clone)]
pub struct QMatrix {
    pub ty: WeightType,
    pub rows: usize,
    pub cols: usize,
    data: Arc<Vec<u8>>,
    /// Rows kept in panels (the first ones, a multiple of eight), 0 for none.
    packed: usize,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QMatrix({} x {} {})", self.rows, self.cols, self.ty.name())
    }
}

impl QMatrix {
    /// A matrix of the file's bytes, `data` (rows of whole blocks).
    pub fn new(ty: WeightType, rows: usize, cols: usize, data: Vec<u8>) -> std::result::Result<Self, String> {
        if !cols.is_multiple_of(ty.block_values()) {
            return Err(format!("{} rows of {cols} values are not whole blocks of {}", ty.name(), ty.block_values()));
        }
        let want = rows.checked_mul(ty.row_bytes(cols)).ok_or("matrix too large")?;
        if data.len() != want {
            return Err(format!("{} matrix {rows} x {cols} needs {want} bytes, has {}", ty.name(), data.len()));
        }
        let packed = match panel::panels(ty, rows) && Isa::active() != Isa::Scalar {
            true => rows / panel::ROWS * panel::ROWS,
            false => 0,
        };
        let mut data = data;
        if packed > 0 {
            panel::pack(ty, rows, cols, &mut data);
        }
        Ok(Self { ty, rows, cols, data: Arc::new(data), packed })
    }

    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Whether rows are kept in panels (the kernels' layout) rather than one after another.
    pub fn panels(&self) -> bool {
        self.packed > 0
    }

    /// Rows kept in panels: the first ones, a multiple of eight.
    pub fn packed_rows(&self) -> usize {
        self.packed
    }

    /// The matrix's bytes as the file stores them (rows of whole blocks, one after another).
    pub fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.panels() {
            false => std::borrow::Cow::Borrowed(&self.data[..]),
            true => std::borrow::Cow::Owned((0..self.rows).flat_map(|r| self.row(r).into_owned()).collect()),
        }
    }

    /// Row `r` as the file stores it.
    pub fn row(&self, r: usize) -> std::borrow::Cow<'_, [u8]> {
        match r < self.packed {
            true => {
                let mut row = Vec::new();
                panel::row_into(self.ty, self.cols, &self.data, r, &mut row);
                std::borrow::Cow::Owned(row)
            }
            false => std::borrow::Cow::Borrowed(self.unpacked_row(r)),
        }
    }

    /// Row `r` past the panels (stored as the file stores it).
    fn unpacked_row(&self, r: usize) -> &[u8] {
        let rb = self.ty.row_bytes(self.cols);
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Rows `first .. first + n` as a matrix of their own: a fused tensor (q, k and v in
    /// one) cut into the products the forward pass runs. Rows are whole blocks, so this is
    /// a copy of bytes, never a re-quantization.
    pub fn rows(&self, first: usize, n: usize) -> QMatrix {
        let data: Vec<u8> = (first..first + n).flat_map(|r| self.row(r).into_owned()).collect();
        QMatrix::new(self.ty, n, self.cols, data).expect("whole rows of a valid matrix")
    }

    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        formats::dequantize_row(self.ty, &self.row(r), out);
    }
}

/// Asks the kernel to back `v` with 2 MiB pages (transparent huge pages) where it can:
/// the whole 2 MiB-aligned stretches inside it. For the weights and the KV pool, which the
/// kernels read hundreds of megabytes of per step: with 4 KiB pages every 4 KiB costs a
/// TLB miss, and a page walk inside a virtual machine is long. Measured (docs/performance.md,
/// medians of three to five runs): Gemma 3 on avx2, batch-1 decode +12% and 16 sequences
/// +6%; SmolLM2 on avx512, 16 sequences +18%. Call it before the first write (untouched pages are mapped huge when first
/// written). Memory stays the same: only stretches wholly inside `v` are advised. Where
/// the system does not allow it (THP off), nothing changes.
pub fn huge_pages<T>(v: &mut [T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let (start, len) = (v.as_mut_ptr() as usize, std::mem::size_of_val(v));
        let (lo, hi) = (start.next_multiple_of(HUGE), (start + len) / HUGE * HUGE);
        if hi > lo {
            // SAFETY: advice on pages of this allocation only; it changes no contents.
            unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

/// A raw pointer to outputs that threads write in disjoint parts.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: each thread writes only the output columns of its own rows (see `matmul`), and
// the owner waits for the pool to finish before reading.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// `outs[i][c * ws[i].rows + r] = sum_k ws[i][r, k] * x[c, k]` for the `n` rows of `x`:
/// every matrix of `ws` applied to the same input (they must share its width), with one
/// quantization of `x` and one pass of the pool over all their rows.
pub fn matmul(
    pool: &Pool,
    isa: Isa,
    ws: &[&QMatrix],
    x: &[f32],
    n: usize,
    act: &mut Activations,
    outs: &mut [&mut Vec<f32>],
) {
    debug_assert_eq!(ws.len(), outs.len());
    let Some(first) = ws.first() else { return };
    let kind = first.ty.act_kind();
    if ws.iter().any(|w| w.ty.act_kind() != kind || w.cols != first.cols) {
        for (w, o) in ws.iter().zip(outs.iter_mut()) {
            matmul(pool, isa, &[w], x, n, act, &mut [&mut **o]);
        }
        return;
    }
    debug_assert_eq!(x.len(), n * first.cols);
    act.quantize_on(kind, x, n, Some(pool), isa);
    // The kernels write every element, so a reused buffer is only resized.
    for (w, o) in ws.iter().zip(outs.iter_mut()) {
        o.resize(n * w.rows, 0.0);
    }
    let ptrs: Vec<Out> = outs.iter_mut().map(|o| Out(o.as_mut_ptr())).collect();
    let total: usize = ws.iter().map(|w| w.rows).sum();
    let act = &*act;
    let threads = pool.threads();
    // Rows in pieces of whole panels, taken as threads finish (at least 32 rows, so that
    // the weights a piece streams outweigh its start).
    let claims = pool::Claims::new(total, threads, panel::ROWS, 32);
    pool.run(&|t| {
        while let Some(mine) = claims.take(t) {
            let mut base = 0;
            for (w, out) in ws.iter().zip(&ptrs) {
                let (lo, hi) = (mine.start.max(base), mine.end.min(base + w.rows));
                if lo < hi {
                    // SAFETY: rows lo..hi of this matrix belong to this piece alone.
                    unsafe { rows(isa, w, act, lo - base..hi - base, *out) };
                }
                base += w.rows;
            }
        }
    });
}

/// Rows `range` of `w` times every row of `a`, written to `out` (`a.rows` x `w.rows`).
///
/// # Safety
/// `out` points to `a.rows * w.rows` floats, of which no other thread writes columns
/// `range`.
unsafe fn rows(isa: Isa, w: &QMatrix, a: &Activations, range: std::ops::Range<usize>, out: Out) {
    match isa {
        // SAFETY: `Isa::Avx2` is only chosen where the CPU has AVX2, FMA and F16C,
        // `Isa::AvxVnni` where it also has AVX-VNNI, `Isa::Avx512` where it also has
        // AVX-512 F, BW, VL and VNNI.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::rows::<avx2::Madd>(w, &w.data, a, range, out.0) },
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni => unsafe { avx2::rows::<avx2::AvxVnni>(w, &w.data, a, range, out.0) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx2::rows::<avx2::Vnni>(w, &w.data, a, range, out.0) },
        _ => {
            // Rows of a panel are put back in the file's layout one at a time, in one buffer
            // (the panel stays in cache for its eight rows).
            let mut buf = Vec::new();
            for r in range {
                let row = match r < w.packed {
                    true => {
                        panel::row_into(w.ty, w.cols, &w.data, r, &mut buf);
                        &buf[..]
                    }
                    false => w.unpacked_row(r),
                };
                for c in 0..a.rows {
                    // SAFETY: inside the output (see the function's contract).
                    unsafe { *out.0.add(c * w.rows + r) = scalar::dot(w.ty, row, a, c) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
