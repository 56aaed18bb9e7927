//! `f32` vector operations of attention (dot products of a query with keys, weighted sums
//! of values), on the same paths as the matrix kernels. The crate is compiled for plain
//! x86-64, so without these the compiler would use 128-bit SSE2 here.

use super::Isa;

/// `x[i] = exp(x[i] - max)` for all `i`; returns the sum.
pub fn exp_sum(isa: Isa, x: &mut [f32], max: f32) -> f32 {
    match isa {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        isa if isa.vector() => unsafe { avx2::exp_sum(x, max) },
        _ => {
            let mut sum = 0.0;
            for v in x.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            sum
        }
    }
}

/// The nonlinearity of the feed-forward gate, applied as `g[i] = act(g[i]) * u[i]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(x)` (Llama, Qwen, Phi).
    Silu,
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` (Gemma).
    GeluTanh,
}

/// `g[i] = gate(g[i]) * u[i]` for all `i` (`u` at least as long as `g`).
pub fn gate(isa: Isa, gate: Activation, g: &mut [f32], u: &[f32]) {
    assert!(u.len() >= g.len(), "gate: {} gate values, {} up values", g.len(), u.len());
    match isa {
        // SAFETY: the vector paths are only chosen where the CPU has AVX2 and FMA; the lengths
        // are checked above.
        #[cfg(target_arch = "x86_64")]
        isa if isa.vector() => unsafe { avx2::gate(gate, g, u) },
        _ => g.iter_mut().zip(u).for_each(|(g, u)| *g = gate_scalar(gate, *g) * u),
    }
}

#[inline(always)]
fn gate_scalar(gate: Activation, x: f32) -> f32 {
    match gate {
        Activation::Silu => x / (1.0 + (-x).exp()),
        // 0.5 (1 + tanh z) = sigmoid(2z): the same function without the cancellation of
        // `1 + tanh z` where tanh z is near -1.
        Activation::GeluTanh => {
            const C: f32 = 0.797_884_6; // sqrt(2 / pi)
            x / (1.0 + (-2.0 * C * (x + 0.044_715 * x * x * x)).exp())
        }
    }
}

/// How a query-key dot product becomes an attention score: scaled, then soft-capped
/// (`cap * tanh(s / cap)`, Gemma 2) where the model asks for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub scale: f32,
    pub softcap: Option<f32>,
}

impl Score {
    #[inline(always)]
    fn of(self, dot: f32) -> f32 {
        let s = dot * self.scale;
        match self.softcap {
            Some(cap) => cap * (s / cap).tanh(),
            None => s,
        }
    }
}

impl From<f32> for Score {
    fn from(scale: f32) -> Self {
        Score { scale, softcap: None }
    }
}

/// Positions of one attention piece: a longer context is attended in pieces of this many
/// positions (split across the pool's threads even for one sequence) and the pieces'
/// softmaxes merged ([`merge`]). Fixed, so a sequence's result does not depend on the
/// threads or on what it is batched with.
pub const PIECE: usize = 256;

/// The softmax of one head over one piece: its largest score and the sum of
/// `exp(score - max)`, what [`merge`] needs to combine pieces.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Piece {
    pub max: f32,
    pub sum: f32,
}

/// One query group's attention over its positions: `qs` holds `group` query heads of
/// `hd` values that share one KV head; position `i`'s key and value are
/// `keys[offs[i]..][..hd]` and `values[offs[i]..][..hd]`. Writes the softmax-weighted sum
/// of values of each head to `out` (`group * hd`, overwritten), and each head's softmax
/// to `pieces` (when it is `group` long; it may be empty). `scores` is scratch.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    isa: Isa,
    qs: &[f32],
    keys: &[f32],
    values: &[f32],
    offs: &[usize],
    hd: usize,
    score: impl Into<Score>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
    pieces: &mut [Piece],
) {
    let score = score.into();
    let group = qs.len() / hd;
    let len = offs.len();
    scores.clear();
    scores.resize(group * len, 0.0);
    out.fill(0.0);
    match isa {
        // SAFETY: the vector paths are only chosen where the CPU has AVX2 and FMA; every offset
        // plus `hd` lies inside `keys` and `values` (checked below in debug builds, and by
        // the KV store's block addressing in all builds).
        #[cfg(target_arch = "x86_64")]
        isa if isa.vector() && hd.is_multiple_of(8) => unsafe {
            debug_assert!(offs.iter().all(|&o| o + hd <= keys.len() && o + hd <= values.len()));
            avx2::attend(qs, keys, values, offs, hd, score, scores, out, pieces)
        },
        _ => {
            for (i, &off) in offs.iter().enumerate() {
                let k = &keys[off..off + hd];
                for (j, q) in qs.chunks_exact(hd).enumerate() {
                    scores[j * len + i] = score.of(scalar_dot(q, k));
                }
            }
            for (j, row) in scores.chunks_exact_mut(len).enumerate() {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum = exp_sum(Isa::Scalar, row, max);
                if let Some(p) = pieces.get_mut(j) {
                    *p = Piece { max, sum };
                }
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|s| *s *= inv);
            }
            for (i, &off) in offs.iter().enumerate() {
                let v = &values[off..off + hd];
                for (j, o) in out.chunks_exact_mut(hd).enumerate() {
                    let w = scores[j * len + i];
                    o.iter_mut().zip(v).for_each(|(o, v)| *o += w * v);
                }
            }
        }
    }
}

/// One head's attention from its pieces' outputs (`outs`, `hd` values each, in position
/// order) and softmaxes: `out = sum_p w_p outs[p] / sum_p w_p` with
/// `w_p = sum_p * exp(max_p - max)`, exactly the softmax over all positions at once.
pub fn merge(outs: &[f32], pieces: &[Piece], hd: usize, out: &mut [f32]) {
    let max = pieces.iter().map(|p| p.max).fold(f32::NEG_INFINITY, f32::max);
    out.fill(0.0);
    let mut total = 0.0f32;
    for (p, o) in pieces.iter().zip(outs.chunks_exact(hd)) {
        let w = p.sum * (p.max - max).exp();
        total += w;
        out.iter_mut().zip(o).for_each(|(a, b)| *a += w * b);
    }
    let inv = 1.0 / total;
    out.iter_mut().for_each(|a| *a *= inv);
}

fn scalar_dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorize without reassociation.
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    // Called only where AVX2 and FMA were detected; loads stay inside the slices.
    #![allow(unsafe_op_in_unsafe_fn)]
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// `exp(x)` for `x <= 0` (softmax after subtracting the maximum): `2^k e^r` with
    /// `k = round(x / ln 2)` and `r = x - k ln 2` (ln 2 in two parts, so `r` is exact to
    /// float precision), `e^r` by its Taylor polynomial of degree 6 on |r| <= ln 2 / 2
    /// (relative error about 2e-7); inputs below -87 give about 2^-126.
    #[inline(always)]
    unsafe fn exp(x: __m256) -> __m256 {
        // ln 2 = LN2_HI + LN2_LO, LN2_HI with few mantissa bits so k * LN2_HI is exact.
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let k = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
        _mm256_mul_ps(p, _mm256_castsi256_ps(e))
    }

    /// `exp(x)` for any `x`: inputs above 88 give about `e^88` (`2^127`), so a quotient
    /// by `1 + exp(x)` is a tiny number rather than a NaN.
    #[inline(always)]
    unsafe fn exp_any(x: __m256) -> __m256 {
        exp(_mm256_min_ps(x, _mm256_set1_ps(88.0)))
    }

    /// `x * sigmoid(x)`, or GELU's tanh form through `0.5 (1 + tanh z) = sigmoid(2z)`:
    /// `x / (1 + exp(-2 sqrt(2/pi) (x + 0.044715 x^3)))`.
    #[inline(always)]
    unsafe fn gate8(gate: super::Activation, x: __m256) -> __m256 {
        let t = match gate {
            super::Activation::Silu => x,
            super::Activation::GeluTanh => {
                let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
                let inner = _mm256_fmadd_ps(x3, _mm256_set1_ps(0.044_715), x);
                _mm256_mul_ps(inner, _mm256_set1_ps(2.0 * 0.797_884_6))
            }
        };
        let e = exp_any(_mm256_sub_ps(_mm256_setzero_ps(), t));
        _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gate(gate: super::Activation, g: &mut [f32], u: &[f32]) {
        let n = g.len();
        let (gp, up) = (g.as_mut_ptr(), u.as_ptr());
        let mut i = 0;
        while i + 8 <= n {
            let v = gate8(gate, _mm256_loadu_ps(gp.add(i)));
            _mm256_storeu_ps(gp.add(i), _mm256_mul_ps(v, _mm256_loadu_ps(up.add(i))));
            i += 8;
        }
        for j in i..n {
            g[j] = super::gate_scalar(gate, g[j]) * u[j];
        }
    }

    /// Values per block of positions in [`attend`]'s weighing: half of a 32 KiB L1.
    /// Measured (SmolLM2, 16 sequences, avx512): 770-812 tokens/s against 542-765 with no
    /// blocks and 724-860 with blocks of eight positions.
    const WEIGH_BYTES: usize = 16 << 10;

    /// How many positions ahead [`attend`] fetches keys: a position's scores take about a
    /// hundred cycles, a fetch from memory several hundred.
    const KEYS_AHEAD: usize = 6;

    #[inline(always)]
    unsafe fn dot_hd(a: *const f32, b: *const f32, hd: usize) -> f32 {
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= hd {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i + 8)), _mm256_loadu_ps(b.add(i + 8)), s1);
            i += 16;
        }
        if i < hd {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), s0);
        }
        hsum(_mm256_add_ps(s0, s1))
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn attend(
        qs: &[f32],
        keys: &[f32],
        values: &[f32],
        offs: &[usize],
        hd: usize,
        score: super::Score,
        scores: &mut [f32],
        out: &mut [f32],
        pieces: &mut [super::Piece],
    ) {
        let group = qs.len() / hd;
        let len = offs.len();
        let (kp, vp, qp, sp, op) = (keys.as_ptr(), values.as_ptr(), qs.as_ptr(), scores.as_mut_ptr(), out.as_mut_ptr());
        // Attention streams the keys and values from memory (a step's are tens of MB, past
        // L3), and a sequence's positions lie in blocks of the KV pool, apart, which the
        // hardware prefetcher does not follow: fetch the keys `KEYS_AHEAD` positions ahead,
        // the first block of values (below) with them, and each next block's values a line
        // per slice while the current one is weighed.
        let fetch = |p: *const f32| {
            for line in (0..hd).step_by(16) {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line) as *const i8);
            }
        };
        let block = (WEIGH_BYTES / (4 * hd)).max(8);
        for (i, &off) in offs.iter().enumerate() {
            if let Some(&ahead) = offs.get(i + KEYS_AHEAD) {
                fetch(kp.wrapping_add(ahead));
            }
            if i < block {
                fetch(vp.wrapping_add(off));
            }
            let k = kp.add(off);
            for j in 0..group {
                *sp.add(j * len + i) = score.of(dot_hd(qp.add(j * hd), k, hd));
            }
        }
        for j in 0..group {
            let row = std::slice::from_raw_parts_mut(sp.add(j * len), len);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum = exp_sum(row, max);
            if let Some(p) = pieces.get_mut(j) {
                *p = super::Piece { max, sum };
            }
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|s| *s *= inv);
        }
        // The heads' outputs, 16 values of up to four heads at a time, in registers while
        // that slice of the values streams by once for all of them (each lane sums its
        // positions in order, as one head at a time would, continuing from what `out`
        // holds). Positions go in blocks of about `WEIGH_BYTES` of values, which stay in L1
        // across the slices, the next block's fetched meanwhile.
        let mut p0 = 0;
        while p0 < len {
            let p1 = (p0 + block).min(len);
            let next = offs.get(p1..(p1 + block).min(len)).unwrap_or(&[]);
            let block = &offs[p0..p1];
            let mut c = 0;
            while c < hd {
                for &ahead in next {
                    _mm_prefetch::<_MM_HINT_T0>(vp.wrapping_add(ahead + c) as *const i8);
                }
                let two = hd - c >= 16;
                let mut j = 0;
                while j < group {
                    let (sj, oj) = (sp.add(j * len + p0), op.add(j * hd + c));
                    match ((group - j).min(4), two) {
                        (1, true) => weigh::<1, 2>(vp, block, c, sj, len, hd, oj),
                        (2, true) => weigh::<2, 2>(vp, block, c, sj, len, hd, oj),
                        (3, true) => weigh::<3, 2>(vp, block, c, sj, len, hd, oj),
                        (_, true) => weigh::<4, 2>(vp, block, c, sj, len, hd, oj),
                        (1, false) => weigh::<1, 1>(vp, block, c, sj, len, hd, oj),
                        (2, false) => weigh::<2, 1>(vp, block, c, sj, len, hd, oj),
                        (3, false) => weigh::<3, 1>(vp, block, c, sj, len, hd, oj),
                        (_, false) => weigh::<4, 1>(vp, block, c, sj, len, hd, oj),
                    }
                    j += 4;
                }
                c += if two { 16 } else { 8 };
            }
            p0 = p1;
        }
    }

    /// Values `c .. c + 8 * V` of heads `0 .. G` (scores at `s + h * len`, outputs at `o +
    /// h * hd`): the sum over positions of score times value, added to what `o` holds.
    #[inline(always)]
    unsafe fn weigh<const G: usize, const V: usize>(
        vp: *const f32,
        offs: &[usize],
        c: usize,
        s: *const f32,
        len: usize,
        hd: usize,
        o: *mut f32,
    ) {
        let mut acc = [[_mm256_setzero_ps(); V]; G];
        for (h, a) in acc.iter_mut().enumerate() {
            for (t, x) in a.iter_mut().enumerate() {
                *x = _mm256_loadu_ps(o.add(h * hd + 8 * t));
            }
        }
        for (i, &off) in offs.iter().enumerate() {
            let v: [__m256; V] = std::array::from_fn(|t| _mm256_loadu_ps(vp.add(off + c + 8 * t)));
            for (h, a) in acc.iter_mut().enumerate() {
                let w = _mm256_set1_ps(*s.add(h * len + i));
                for t in 0..V {
                    a[t] = _mm256_fmadd_ps(w, v[t], a[t]);
                }
            }
        }
        for (h, a) in acc.iter().enumerate() {
            for (t, x) in a.iter().enumerate() {
                _mm256_storeu_ps(o.add(h * hd + 8 * t), *x);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_sum(x: &mut [f32], max: f32) -> f32 {
        let n = x.len();
        let p = x.as_mut_ptr();
        let m = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let e = exp(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        let mut sum = hsum(acc);
        while i < n {
            x[i] = (x[i] - max).exp();
            sum += x[i];
            i += 1;
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_agrees_with_the_library_on_every_path() {
        for isa in Isa::available() {
            let mut x: Vec<f32> = (0..45).map(|i| -(i as f32) * 0.7).collect();
            x.push(-200.0);
            let orig = x.clone();
            let sum = exp_sum(isa, &mut x, 0.0);
            let want: Vec<f32> = orig.iter().map(|v| v.exp()).collect();
            for (g, w) in x.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-6 * w.max(1e-30) + 1e-38, "{}: exp {g} vs {w}", isa.name());
            }
            assert!((sum - want.iter().sum::<f32>()).abs() < 1e-5);
        }
    }

    #[test]
    fn gates_agree_with_the_library_on_every_path() {
        // Wide enough for the vector loop and a tail; extremes included (no NaN, no inf).
        let mut x: Vec<f32> = (0..203).map(|i| (i as f32 - 101.0) * 0.173).collect();
        x.extend([-200.0, -90.0, -40.0, 40.0, 90.0, 200.0, 0.0]);
        let u: Vec<f32> = (0..x.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        for which in [Activation::Silu, Activation::GeluTanh] {
            let want: Vec<f64> = x
                .iter()
                .zip(&u)
                .map(|(&x, &u)| {
                    let x = x as f64;
                    let a = match which {
                        Activation::Silu => x / (1.0 + (-x).exp()),
                        Activation::GeluTanh => {
                            0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
                        }
                    };
                    a * u as f64
                })
                .collect();
            for isa in Isa::available() {
                let mut g = x.clone();
                gate(isa, which, &mut g, &u);
                for (i, (got, want)) in g.iter().zip(&want).enumerate() {
                    let err = (*got as f64 - want).abs();
                    assert!(
                        got.is_finite() && err <= 2e-6 * want.abs() + 1e-9,
                        "{} {which:?}: x = {} gives {got}, want {want}",
                        isa.name(),
                        x[i]
                    );
                }
            }
        }
    }

    #[test]
    fn attention_in_pieces_equals_attention_at_once() {
        let (hd, n, group) = (64, 700, 3);
        let keys: Vec<f32> = (0..n * hd).map(|i| ((i * 31) % 17) as f32 / 5.0 - 1.7).collect();
        let values: Vec<f32> = (0..n * hd).map(|i| ((i * 13) % 29) as f32 / 14.0 - 1.0).collect();
        let qs: Vec<f32> = (0..group * hd).map(|i| ((i * 7) % 11) as f32 / 5.0 - 1.0).collect();
        let offs: Vec<usize> = (0..n).map(|p| p * hd).collect();
        let score = Score { scale: 0.125, softcap: Some(30.0) };
        for isa in Isa::available() {
            let mut scores = Vec::new();
            let mut whole = vec![0.0; group * hd];
            attend(isa, &qs, &keys, &values, &offs, hd, score, &mut scores, &mut whole, &mut []);
            let chunks: Vec<&[usize]> = offs.chunks(PIECE).collect();
            let mut outs = vec![0.0; chunks.len() * group * hd];
            let mut pieces = vec![Piece::default(); chunks.len() * group];
            for (c, offs) in chunks.iter().enumerate() {
                let o = &mut outs[c * group * hd..(c + 1) * group * hd];
                attend(
                    isa,
                    &qs,
                    &keys,
                    &values,
                    offs,
                    hd,
                    score,
                    &mut scores,
                    o,
                    &mut pieces[c * group..(c + 1) * group],
                );
            }
            for j in 0..group {
                // Head j's pieces and outputs, in position order.
                let ps: Vec<Piece> = (0..chunks.len()).map(|c| pieces[c * group + j]).collect();
                let os: Vec<f32> = (0..chunks.len())
                    .flat_map(|c| outs[(c * group + j) * hd..(c * group + j + 1) * hd].to_vec())
                    .collect();
                let mut merged = vec![0.0; hd];
                merge(&os, &ps, hd, &mut merged);
                for (a, b) in merged.iter().zip(&whole[j * hd..(j + 1) * hd]) {
                    assert!((a - b).abs() < 1e-5, "{} head {j}: {a} vs {b}", isa.name());
                }
            }
        }
    }

    #[test]
    fn attention_paths_agree() {
        // Head sizes with and without an 8-wide remainder, groups of heads below, at and
        // past the four the vector path takes at a time.
        for (hd, group) in [(64, 3), (72, 5), (256, 4), (8, 1), (24, 9)] {
            let keys: Vec<f32> = (0..40 * hd).map(|i| ((i * 31) % 17) as f32 / 9.0 - 0.9).collect();
            let values: Vec<f32> = (0..40 * hd).map(|i| ((i * 13) % 29) as f32 / 14.0 - 1.0).collect();
            let qs: Vec<f32> = (0..group * hd).map(|i| ((i * 7) % 11) as f32 / 5.0 - 1.0).collect();
            let offs: Vec<usize> = (0..37).map(|p| ((p * 7) % 40) * hd).collect();
            let mut reference = vec![0.0; group * hd];
            let mut scores = Vec::new();
            attend(Isa::Scalar, &qs, &keys, &values, &offs, hd, 0.125, &mut scores, &mut reference, &mut []);
            for isa in Isa::available() {
                let mut out = vec![1.0; group * hd];
                attend(isa, &qs, &keys, &values, &offs, hd, 0.125, &mut scores, &mut out, &mut []);
                for (a, b) in out.iter().zip(&reference) {
                    assert!((a - b).abs() < 1e-5, "{} hd {hd} group {group}: {a} vs {b}", isa.name());
                }
            }
        }
    }
}
