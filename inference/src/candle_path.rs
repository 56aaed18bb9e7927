//! The forward pass on a candle device: the path a CUDA spoke runs.
//!
//! The same batched pass as [`crate::model::Transformer::forward`], written with candle's
//! tensor operations so that it runs wherever candle does: the weights are uploaded once in
//! the file's own types (candle's quantized products multiply them, quantizing the
//! activations per block as the CPU kernels do), the keys and values live in one tensor
//! per layer on the device, addressed by the same blocks as the CPU's [`KvStore`], and each
//! sequence attends over its own positions gathered from those blocks (a first version:
//! no fused paged-attention kernel). Only token ids, positions, rotary tables and masks go
//! up per step, and only the sampled rows' logits come back.
//!
//! On the CPU this path is the seam's reference: the tests run it against the engine's
//! own kernels on the same file.

use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};

use crate::error::{Error, Result};
use crate::kernels::{QMatrix, WeightType};
use crate::kv::{BlockId, KvStore};
use crate::model::{Activation, Layer, ModelConfig, RopeStyle, RopeTable, Row, Transformer};

/// Products that take the same input, as one matrix where their types agree (their rows
/// stacked, byte for byte: one launch instead of several), else one each.
enum Fused {
    One(QMatMul, Vec<usize>),
    Each(Vec<QMatMul>),
}

impl Fused {
    fn new(ms: &[&QMatrix], device: &Device) -> Result<Self> {
        let (ty, cols) = (ms[0].ty, ms[0].cols);
        if ms.iter().all(|m| m.ty == ty && m.cols == cols) {
            // The file's bytes of each, one after another, straight to the device.
            let data: Vec<u8> = ms.iter().flat_map(|m| m.data().into_owned()).collect();
            let rows = ms.iter().map(|m| m.rows).sum();
            let stacked = upload_bytes(std::borrow::Cow::Owned(data), ty, rows, cols, device)?;
            return Ok(Fused::One(stacked, ms.iter().map(|m| m.rows).collect()));
        }
        Ok(Fused::Each(ms.iter().map(|m| upload(m, device)).collect::<Result<_>>()?))
    }

    /// Each product of `x` (rows, in) in order: (rows, out_i).
    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Fused::One(m, widths) => {
                let y = m.forward(x)?;
                let mut at = 0;
                widths
                    .iter()
                    .map(|&w| {
                        at += w;
                        Ok(y.narrow(1, at - w, w)?)
                    })
                    .collect()
            }
            Fused::Each(ms) => ms.iter().map(|m| Ok(m.forward(x)?)).collect(),
        }
    }
}

/// One layer's weights on the device.
struct DeviceLayer {
    attn_norm: Tensor,
    /// q, k and v.
    qkv: Fused,
    o: QMatMul,
    qkv_bias: Option<[Tensor; 3]>,
    qk_norm: Option<(Tensor, Tensor)>,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    /// gate and up.
    gate_up: Fused,
    down: QMatMul,
    post_ffn_norm: Option<Tensor>,
}

/// A model's weights on a candle device.
pub(crate) struct DeviceModel {
    device: Device,
    layers: Vec<DeviceLayer>,
    out_norm: Tensor,
    output: QMatMul,
}

/// Keys and values of every layer on the device: `[slot][kv_dim]`, a slot being
/// `block * block_size + position in the block`, as in [`KvStore::offset`].
pub struct DeviceKv {
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
}

fn upload(m: &QMatrix, device: &Device) -> Result<QMatMul> {
    upload_bytes(m.data(), m.ty, m.rows, m.cols, device)
}

/// A matrix of `rows` x `cols` of `ty` from the file's bytes.
fn upload_bytes(
    bytes: std::borrow::Cow<'_, [u8]>,
    ty: WeightType,
    rows: usize,
    cols: usize,
    device: &Device,
) -> Result<QMatMul> {
    let storage = QStorage::from_data(bytes, device, ty.ggml())?;
    Ok(QMatMul::from_qtensor(QTensor::new(storage, (rows, cols))?)?)
}

fn vector(v: &[f32], device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(v, v.len(), device)?)
}

impl DeviceModel {
    /// Uploads the weights (byte for byte) of `layers`, the output norm and the output
    /// matrix to `device`.
    pub(crate) fn upload(layers: &[Layer], out_norm: &[f32], output: &QMatrix, device: &Device) -> Result<Self> {
        let opt = |v: &Option<Vec<f32>>| v.as_deref().map(|v| vector(v, device)).transpose();
        let layers = layers
            .iter()
            .map(|l| {
                Ok(DeviceLayer {
                    attn_norm: vector(&l.attn_norm, device)?,
                    qkv: Fused::new(&[&l.q.w, &l.k.w, &l.v.w], device)?,
                    o: upload(&l.o.w, device)?,
                    qkv_bias: match &l.qkv_bias {
                        Some([q, k, v]) => Some([vector(q, device)?, vector(k, device)?, vector(v, device)?]),
                        None => None,
                    },
                    qk_norm: match (&l.q_norm, &l.k_norm) {
                        (Some(q), Some(k)) => Some((vector(q, device)?, vector(k, device)?)),
                        _ => None,
                    },
                    post_attn_norm: opt(&l.post_attn_norm)?,
                    ffn_norm: vector(&l.ffn_norm, device)?,
                    gate_up: Fused::new(&[&l.gate.w, &l.up.w], device)?,
                    down: upload(&l.down.w, device)?,
                    post_ffn_norm: opt(&l.post_ffn_norm)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            device: device.clone(),
            layers,
            out_norm: vector(out_norm, device)?,
            output: upload(output, device)?,
        })
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// A zeroed KV store of `slots` positions per layer on the device.
    pub(crate) fn new_kv(&self, layers: usize, slots: usize, kv_dim: usize) -> Result<DeviceKv> {
        let zeros = || Tensor::zeros((slots, kv_dim), DType::F32, &self.device);
        Ok(DeviceKv {
            k: (0..layers).map(|_| zeros()).collect::<candle_core::Result<_>>()?,
            v: (0..layers).map(|_| zeros()).collect::<candle_core::Result<_>>()?,
        })
    }

    /// [`Transformer::forward`] on the device: the logits of the rows marked `logits`
    /// and the final hidden states of those marked `hidden`, in row order.
    pub(crate) fn forward(&self, m: &Transformer, rows: &[Row<'_>], kv: &mut KvStore) -> Result<Vec<Vec<f32>>> {
        let c = &m.config;
        let n = rows.len();
        if rows.iter().any(|r| r.adapter.is_some()) {
            return Err(Error::InvalidRequest(format!(
                "LoRA adapters run on the CPU path only, not on {:?}",
                self.device.location()
            )));
        }
        let Some(dkv) = kv.device.as_ref() else {
            return Err(Error::Engine("the KV store is not on the model's device".into()));
        };
        let dev = &self.device;
        let mut host = Vec::with_capacity(n * c.hidden);
        m.embed_rows(rows.iter().map(|r| r.token), &mut host)?;
        let mut x = Tensor::from_vec(host, (n, c.hidden), dev)?;

        let freqs = m.rope_freqs();
        let rope = |theta: f32| -> Result<(Tensor, Tensor)> {
            let t = RopeTable::new(rows, c, theta, freqs);
            Ok((Tensor::from_vec(t.cos, (n, 1, t.half), dev)?, Tensor::from_vec(t.sin, (n, 1, t.half), dev)?))
        };
        let rope_global = rope(c.rope_theta)?;
        let rope_local = match c.rope_theta_local != c.rope_theta {
            true => Some(rope(c.rope_theta_local)?),
            false => None,
        };
        // Where each row's key and value go, as an index per element (what scatter takes).
        let kv_dim = c.kv_dim();
        let slots: Vec<u32> = rows.iter().map(|r| slot(kv, r.blocks, r.pos)).collect::<Result<_>>()?;
        let write_at: Vec<u32> = slots.iter().flat_map(|&s| std::iter::repeat_n(s, kv_dim)).collect();
        let write_at = Tensor::from_vec(write_at, (n, kv_dim), dev)?;
        let seqs = Sequences::new(rows, kv, dev)?;

        for (li, l) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &l.attn_norm, c.eps)?;
            let Ok([mut q, mut k, mut v]) = <[Tensor; 3]>::try_from(l.qkv.forward(&h)?) else {
                return Err(Error::Engine("q, k and v came back as other than three products".into()));
            };
            if let Some([qb, kb, vb]) = &l.qkv_bias {
                q = q.broadcast_add(qb)?;
                k = k.broadcast_add(kb)?;
                v = v.broadcast_add(vb)?;
            }
            let mut q = q.reshape((n, c.heads, c.head_dim))?;
            let mut k = k.reshape((n, c.kv_heads, c.head_dim))?;
            if let Some((qn, kn)) = &l.qk_norm {
                q = rms_norm(&q, qn, c.eps)?;
                k = rms_norm(&k, kn, c.eps)?;
            }
            let local = c.is_local(li);
            let (cos, sin) = match (&rope_local, local) {
                (Some(t), true) => t,
                _ => &rope_global,
            };
            let q = rotate(&q, cos, sin, c.rope_style)?;
            let k = rotate(&k, cos, sin, c.rope_style)?.reshape((n, kv_dim))?;
            dkv.k[li].scatter_set(&write_at, &k.contiguous()?, 0)?;
            dkv.v[li].scatter_set(&write_at, &v.contiguous()?, 0)?;
            let window = if local { c.sliding_window.map(|(w, _)| w) } else { None };
            let attn = seqs.attend(&q, &dkv.k[li], &dkv.v[li], c, window)?;
            let mut o = l.o.forward(&attn)?;
            if let Some(w) = &l.post_attn_norm {
                o = rms_norm(&o, w, c.eps)?;
            }
            x = (x + o)?;

            let h = rms_norm(&x, &l.ffn_norm, c.eps)?;
            let Ok([g, u]) = <[Tensor; 2]>::try_from(l.gate_up.forward(&h)?) else {
                return Err(Error::Engine("gate and up came back as other than two products".into()));
            };
            let g = match c.activation {
                Activation::Silu => g.silu()?,
                Activation::GeluTanh => g.gelu()?,
            };
            let mut d = l.down.forward(&(g * u)?)?;
            if let Some(w) = &l.post_ffn_norm {
                d = rms_norm(&d, w, c.eps)?;
            }
            x = (x + d)?;
        }

        let picked: Vec<u32> =
            rows.iter().enumerate().filter(|(_, r)| r.logits || r.hidden).map(|(i, _)| i as u32).collect();
        if picked.is_empty() {
            return Ok(Vec::new());
        }
        let at = Tensor::from_slice(&picked, picked.len(), dev)?;
        let last = rms_norm(&x.index_select(&at, 0)?, &self.out_norm, c.eps)?;
        let hidden: Vec<Vec<f32>> = match picked.iter().any(|&i| rows[i as usize].hidden) {
            true => last.to_vec2()?,
            false => Vec::new(),
        };
        let for_logits: Vec<u32> =
            (0..picked.len() as u32).filter(|&j| !rows[picked[j as usize] as usize].hidden).collect();
        let mut logits = match for_logits.is_empty() {
            true => Vec::new(),
            false => {
                let sel = Tensor::from_slice(&for_logits, for_logits.len(), dev)?;
                let mut l = self.output.forward(&last.index_select(&sel, 0)?)?;
                if let Some(cap) = c.final_softcap {
                    l = ((l / cap as f64)?.tanh()? * cap as f64)?;
                }
                l.to_vec2::<f32>()?
            }
        }
        .into_iter();
        Ok(picked
            .iter()
            .enumerate()
            .map(|(j, &i)| match rows[i as usize].hidden {
                true => hidden[j].clone(),
                false => logits.next().unwrap_or_default(),
            })
            .collect())
    }
}

/// The KV slot of position `pos` of a sequence whose block table is `blocks`.
fn slot(kv: &KvStore, blocks: &[BlockId], pos: usize) -> Result<u32> {
    let s = kv.offset(blocks, pos) / kv.kv_dim;
    u32::try_from(s).map_err(|_| Error::Engine(format!("KV slot {s} is beyond the device store's index range")))
}

/// `x / rms(x) * w` over the last dimension.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(ms + eps as f64)?.sqrt()?)?.broadcast_mul(w)?)
}

/// Rotates every head of `x` (rows, heads, head_dim) by the rows' angles (`cos` and `sin`
/// of shape (rows, 1, head_dim / 2)).
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor, style: RopeStyle) -> Result<Tensor> {
    let (n, heads, hd) = x.dims3()?;
    let half = hd / 2;
    Ok(match style {
        RopeStyle::Halves => {
            let (a, b) = (x.narrow(2, 0, half)?, x.narrow(2, half, half)?);
            let ra = (a.broadcast_mul(cos)? - b.broadcast_mul(sin)?)?;
            let rb = (a.broadcast_mul(sin)? + b.broadcast_mul(cos)?)?;
            Tensor::cat(&[ra, rb], 2)?
        }
        RopeStyle::Interleaved => {
            let pairs = x.reshape((n, heads, half, 2))?;
            let (a, b) = (pairs.narrow(3, 0, 1)?.squeeze(3)?, pairs.narrow(3, 1, 1)?.squeeze(3)?);
            let ra = (a.broadcast_mul(cos)? - b.broadcast_mul(sin)?)?;
            let rb = (a.broadcast_mul(sin)? + b.broadcast_mul(cos)?)?;
            Tensor::stack(&[ra, rb], 3)?.reshape((n, heads, hd))?
        }
    })
}

/// The batch's rows grouped by sequence (consecutive rows sharing a block table), with
/// what attention needs per group: the KV slots of positions `0..=last` and each row's
/// causal end (the mask keeps it to its own, windowed, range).
struct Sequences {
    groups: Vec<Group>,
}

struct Group {
    first: usize,
    rows: usize,
    /// Slots of positions `0..=max pos` of the group's rows.
    slots: Tensor,
    /// Each row's end (its position + 1): it attends to positions before that.
    ends: Vec<usize>,
    positions: usize,
}

impl Sequences {
    fn new(rows: &[Row<'_>], kv: &KvStore, dev: &Device) -> Result<Self> {
        let mut groups = Vec::new();
        let mut i = 0;
        while i < rows.len() {
            let blocks = rows[i].blocks;
            let mut j = i + 1;
            while j < rows.len() && std::ptr::eq(rows[j].blocks, blocks) && rows[j].pos > rows[j - 1].pos {
                j += 1;
            }
            let positions = rows[i..j].iter().map(|r| r.pos).max().unwrap_or(0) + 1;
            let slots: Vec<u32> = (0..positions).map(|p| slot(kv, blocks, p)).collect::<Result<_>>()?;
            groups.push(Group {
                first: i,
                rows: j - i,
                slots: Tensor::from_vec(slots, positions, dev)?,
                ends: rows[i..j].iter().map(|r| r.pos + 1).collect(),
                positions,
            });
            i = j;
        }
        Ok(Self { groups })
    }

    /// Attention of every row of `q` (rows, heads, head_dim) over its own sequence's keys
    /// and values; (rows, heads * head_dim).
    fn attend(&self, q: &Tensor, kc: &Tensor, vc: &Tensor, c: &ModelConfig, window: Option<usize>) -> Result<Tensor> {
        let (hd, kvh) = (c.head_dim, c.kv_heads);
        let group = c.heads / kvh;
        let dev = q.device();
        let mut outs = Vec::with_capacity(self.groups.len());
        for g in &self.groups {
            let (r, len) = (g.rows, g.positions);
            // (kv heads, positions, head_dim)
            let k = kc.index_select(&g.slots, 0)?.reshape((len, kvh, hd))?.transpose(0, 1)?.contiguous()?;
            let v = vc.index_select(&g.slots, 0)?.reshape((len, kvh, hd))?.transpose(0, 1)?.contiguous()?;
            // (kv heads, group * rows, head_dim): the query heads that share a KV head.
            let qg = q.narrow(0, g.first, r)?.transpose(0, 1)?.contiguous()?.reshape((kvh, group * r, hd))?;
            let mut s = (qg.matmul(&k.t()?)? * c.attn_scale as f64)?;
            if let Some(cap) = c.attn_softcap {
                s = ((s / cap as f64)?.tanh()? * cap as f64)?;
            }
            let mut mask = vec![f32::NEG_INFINITY; r * len];
            for (row, &end) in g.ends.iter().enumerate() {
                let start = window.map_or(0, |w| end.saturating_sub(w));
                mask[row * len + start..row * len + end].iter_mut().for_each(|m| *m = 0.0);
            }
            let mask = Tensor::from_vec(mask, (1, 1, r, len), dev)?;
            let s = s.reshape((kvh, group, r, len))?.broadcast_add(&mask)?;
            let max = s.max_keepdim(D::Minus1)?;
            let e = s.broadcast_sub(&max)?.exp()?;
            let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?.reshape((kvh, group * r, len))?;
            // (heads, rows, head_dim) -> (rows, heads * head_dim)
            let o = p.matmul(&v)?.reshape((c.heads, r, hd))?.transpose(0, 1)?.reshape((r, c.heads * hd))?;
            outs.push(o);
        }
        Ok(Tensor::cat(&outs, 0)?)
    }
}
