//! Panels: eight rows of a 32-wide type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) interleaved block
//! by block (the K-quants' panels: [`k_fields`]), so that one 32-byte load holds four
//! values of each of the eight rows and a product sums each row's dot in its own vector
//! lane (no horizontal sums).
//!
//! A bit-exact rearrangement of the file's bytes, made at load: the same bytes in another
//! order, nothing re-quantized, nothing added. A panel of rows `8p .. 8p + 8` takes exactly
//! the bytes those rows take in the file, so rows past the last whole panel keep the file's
//! layout at the file's offsets.
//!
//! Block `b` of a panel, `8 * block_bytes` bytes:
//! - the eight rows' scales `d`, f16, side by side (16 bytes);
//! - Q4_1, Q5_1: the eight stored offsets `m`, f16, side by side (16 bytes);
//! - Q5_0, Q5_1: the 32 fifth bits of each row, rearranged (32 bytes): bit `g` of byte
//!   `4i + j` is the fifth bit of row `i`'s value `4g + j`;
//! - the value bytes in 32-byte chunks: chunk `k` holds bytes `4k .. 4k + 4` of each row's
//!   `qs`, row `i` in bytes `4i .. 4i + 4` (16 bytes of `qs` a row: four chunks, whose low
//!   nibbles are values `4k ..` and high nibbles values `16 + 4k ..`; Q8_0's 32: eight).

use super::formats::WeightType;

/// Rows in a panel.
pub const ROWS: usize = 8;

/// Where a 32-wide block keeps its parts, in the file and in a panel.
#[derive(Clone, Copy)]
pub struct Parts {
    /// Block bytes in the file.
    pub bytes: usize,
    /// The stored offset `m` (file: right after `d`).
    pub m: bool,
    /// The fifth bits (file: a u32 after `d` and `m`).
    pub qh: bool,
    /// Bytes of `qs` per row.
    pub qs: usize,
}

impl Parts {
    pub const fn of(ty: WeightType) -> Option<Parts> {
        let (bytes, m, qh, qs) = match ty {
            WeightType::Q4_0 => (18, false, false, 16),
            WeightType::Q4_1 => (20, true, false, 16),
            WeightType::Q5_0 => (22, false, true, 16),
            WeightType::Q5_1 => (24, true, true, 16),
            WeightType::Q8_0 => (34, false, false, 32),
            _ => return None,
        };
        Some(Parts { bytes, m, qh, qs })
    }

    /// The parts of a type that has them (for constants of the kernels).
    pub const fn must(ty: WeightType) -> Parts {
        match Parts::of(ty) {
            Some(p) => p,
            None => panic!("not a 32-wide type"),
        }
    }

    /// Offsets of `qh` and `qs` in a file block.
    const fn file_at(self) -> (usize, usize) {
        let qh = 2 + if self.m { 2 } else { 0 };
        (qh, qh + if self.qh { 4 } else { 0 })
    }

    /// Offset of the fifth bits in a panel block.
    pub const fn panel_qh(self) -> usize {
        16 + if self.m { 16 } else { 0 }
    }

    /// Offset of the value chunks in a panel block.
    pub const fn panel_qs(self) -> usize {
        self.panel_qh() + if self.qh { 32 } else { 0 }
    }
}

/// Whether a matrix of this type and size can be stored as panels.
pub fn panels(ty: WeightType, rows: usize) -> bool {
    (Parts::of(ty).is_some() || k_fields(ty).is_some()) && rows >= ROWS
}

/// The K-quants' panels, field by field: a super-block's bytes are fields of two bytes
/// (the f16 scales `d` and `dmin`) and of four (every other byte, as 32-bit words), and
/// the field at file offset `off` of size `size` takes bytes `8 * off .. 8 * (off + size)`
/// of the panel's super-block, row `i` at `8 * off + i * size`. So word `w` of the eight
/// rows is one 32-byte vector (row `i` in lane `i`), and their `d`s one 16-byte one:
/// - Q4_K (144): `d` at 0, `dmin` at 16, the scale words at 32, 64, 96, then `qs` word `k`
///   at `128 + 32k`;
/// - Q5_K (176): `d`, `dmin`, the scale words as Q4_K's, `qh` word `g` at `128 + 32g`,
///   `qs` word `k` at `384 + 32k`;
/// - Q6_K (210): `ql` word `k` at `32k`, `qh` word `k` at `1024 + 32k`, the scale words at
///   `1536 + 32w`, `d` at 1664.
///
/// Returns the file offsets where the two-byte fields sit (the rest are words).
pub fn k_fields(ty: WeightType) -> Option<&'static [usize]> {
    match ty {
        WeightType::Q4_K | WeightType::Q5_K => Some(&[0, 2]),
        WeightType::Q6_K => Some(&[208]),
        _ => None,
    }
}

/// A K-quant block's fields in file order, as (file offset, size).
fn k_spans(ty: WeightType, halves: &'static [usize]) -> impl Iterator<Item = (usize, usize)> {
    let bytes = ty.block_bytes();
    let mut off = 0;
    std::iter::from_fn(move || {
        (off < bytes).then(|| {
            let size = if halves.contains(&off) { 2 } else { 4 };
            off += size;
            (off - size, size)
        })
    })
}

/// The byte spans row `i` of a panel moves, as (offset in the file block, offset in the
/// panel block, length): `d`, `m`, and the `qs` chunks (the fifth bits move bit by bit:
/// [`fifth_bit`]).
fn spans(p: Parts, i: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let (_, fqs) = p.file_at();
    let m = p.m.then_some((2, 16 + 2 * i, 2));
    let qs = (0..p.qs / 4).map(move |k| (fqs + 4 * k, p.panel_qs() + 32 * k + 4 * i, 4));
    std::iter::once((0, 2 * i, 2)).chain(m).chain(qs)
}

/// Where the fifth bit of value `v` of row `i` lies in a panel block: (byte, bit).
fn fifth_bit(p: Parts, i: usize, v: usize) -> (usize, u32) {
    (p.panel_qh() + 4 * i + v % 4, (v / 4) as u32)
}

/// Interleaves every whole panel of `data` (`rows` x `cols` of `ty`, the file's bytes) in
/// place.
pub fn pack(ty: WeightType, rows: usize, cols: usize, data: &mut [u8]) {
    if let Some(halves) = k_fields(ty) {
        return pack_k(ty, halves, rows, cols, data);
    }
    let p = Parts::must(ty);
    let (nb, rb) = (cols / 32, ty.row_bytes(cols));
    let (fqh, _) = p.file_at();
    // One panel's rows as the file has them, while the panel is written over them.
    let mut file = vec![0u8; ROWS * rb];
    for panel in data[..rows / ROWS * ROWS * rb].chunks_exact_mut(ROWS * rb) {
        file.copy_from_slice(panel);
        panel.fill(0);
        for (b, dst) in panel.chunks_exact_mut(ROWS * p.bytes).enumerate().take(nb) {
            for i in 0..ROWS {
                let src = &file[i * rb + b * p.bytes..][..p.bytes];
                for (f, at, len) in spans(p, i) {
                    dst[at..at + len].copy_from_slice(&src[f..f + len]);
                }
                if p.qh {
                    let bits = u32::from_le_bytes(src[fqh..fqh + 4].try_into().expect("4 bytes"));
                    for v in 0..32 {
                        let (byte, bit) = fifth_bit(p, i, v);
                        dst[byte] |= (((bits >> v) & 1) as u8) << bit;
                    }
                }
            }
        }
    }
}

/// [`pack`] for the K-quants ([`k_fields`]).
fn pack_k(ty: WeightType, halves: &'static [usize], rows: usize, cols: usize, data: &mut [u8]) {
    let (bytes, rb) = (ty.block_bytes(), ty.row_bytes(cols));
    let mut file = vec![0u8; ROWS * rb];
    for panel in data[..rows / ROWS * ROWS * rb].chunks_exact_mut(ROWS * rb) {
        file.copy_from_slice(panel);
        for (b, dst) in panel.chunks_exact_mut(ROWS * bytes).enumerate() {
            for i in 0..ROWS {
                let src = &file[i * rb + b * bytes..][..bytes];
                for (off, size) in k_spans(ty, halves) {
                    let at = ROWS * off + i * size;
                    dst[at..at + size].copy_from_slice(&src[off..off + size]);
                }
            }
        }
    }
}

/// Row `r` (of a whole panel) in the file's layout, into `out`.
pub fn row_into(ty: WeightType, cols: usize, data: &[u8], r: usize, out: &mut Vec<u8>) {
    let rb = ty.row_bytes(cols);
    if let Some(halves) = k_fields(ty) {
        let (bytes, i) = (ty.block_bytes(), r % ROWS);
        let blocks = &data[r / ROWS * ROWS * rb..(r / ROWS + 1) * ROWS * rb];
        out.clear();
        out.resize(rb, 0);
        for (src, dst) in blocks.chunks_exact(ROWS * bytes).zip(out.chunks_exact_mut(bytes)) {
            for (off, size) in k_spans(ty, halves) {
                let at = ROWS * off + i * size;
                dst[off..off + size].copy_from_slice(&src[at..at + size]);
            }
        }
        return;
    }
    let p = Parts::must(ty);
    let (fqh, _) = p.file_at();
    let (panel, i) = (r / ROWS, r % ROWS);
    let blocks = &data[panel * ROWS * rb..(panel + 1) * ROWS * rb];
    out.clear();
    out.resize(rb, 0);
    for (src, dst) in blocks.chunks_exact(ROWS * p.bytes).zip(out.chunks_exact_mut(p.bytes)) {
        for (f, at, len) in spans(p, i) {
            dst[f..f + len].copy_from_slice(&src[at..at + len]);
        }
        if p.qh {
            let bits = (0..32).fold(0u32, |bits, v| {
                let (byte, bit) = fifth_bit(p, i, v);
                bits | ((((src[byte] >> bit) & 1) as u32) << v)
            });
            dst[fqh..fqh + 4].copy_from_slice(&bits.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_keeps_every_byte_and_gives_back_each_row() {
        for ty in WeightType::ALL.into_iter().filter(|&t| Parts::of(t).is_some() || k_fields(t).is_some()) {
            for rows in [1, 7, 8, 13, 24] {
                let cols = if k_fields(ty).is_some() { 512 } else { 96 };
                let rb = ty.row_bytes(cols);
                let file: Vec<u8> = (0..rows * rb).map(|i| (i * 131 + i / 7) as u8).collect();
                let mut packed = file.clone();
                if panels(ty, rows) {
                    pack(ty, rows, cols, &mut packed);
                }
                assert_eq!(packed.len(), file.len());
                let mut sorted = (packed.clone(), file.clone());
                sorted.0.sort_unstable();
                sorted.1.sort_unstable();
                if !Parts::of(ty).is_some_and(|p| p.qh) {
                    // Only the fifth bits move between bytes; everything else is the same bytes.
                    assert_eq!(sorted.0, sorted.1, "{ty:?} {rows}");
                }
                assert_eq!(packed != file, rows >= ROWS, "{ty:?} {rows}");
                if rows >= ROWS && k_fields(ty).is_some() {
                    // Row 3's second word of its first block sits in lane 3 of that word's vector.
                    let w = if ty == WeightType::Q6_K { 1 } else { 2 };
                    assert_eq!(packed[32 * w + 12..32 * w + 16], file[3 * rb + 4 * w..3 * rb + 4 * w + 4], "{ty:?}");
                }
                let mut row = Vec::new();
                for r in 0..rows / ROWS * ROWS {
                    row_into(ty, cols, &packed, r, &mut row);
                    assert_eq!(row, &file[r * rb..(r + 1) * rb], "{ty:?} {rows} row {r}");
                }
                // Rows past the last panel stay where the file has them.
                let tail = rows / ROWS * ROWS * rb;
                assert_eq!(packed[tail..], file[tail..], "{ty:?} {rows}");
            }
        }
    }
}
