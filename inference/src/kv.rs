//! KV memory in fixed-size blocks from one pool, with a prefix cache.
//!
//! [`BlockPool`] is pure bookkeeping (no tensors): reference counts, a free queue in LRU
//! order, and a map from a block's content hash to the block. A full block's hash chains
//! the hash of the block before it with its own tokens, so equal hashes mean equal
//! prefixes. When a sequence ends its blocks return to the free queue but keep their
//! hash: a later request that starts with the same tokens (a shared system prompt, the
//! earlier turns of a session) takes them back instead of recomputing them, until the
//! pool needs the space and the least recently used are reused. A request whose next
//! tokens match only the start of a cached block (the same system prompt and template,
//! then another question) copies that many positions out of it ([`BlockPool::partial`]),
//! so only what differs is computed.
//!
//! [`KvStore`] holds the keys and values themselves, `[layer][block][slot][kv_dim]`.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

pub type BlockId = u32;

/// Chained hash of one full block of tokens after the prefix hashed as `parent`.
pub fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// The hashes of every full block of `tokens`, the chain starting at `seed`.
pub fn prefix_hashes(tokens: &[u32], block_size: usize, seed: u64) -> Vec<u64> {
    let mut parent = seed;
    tokens
        .chunks_exact(block_size)
        .map(|chunk| {
            parent = block_hash(parent, chunk);
            parent
        })
        .collect()
}

/// A full block the prefix cache can find: the hash of the prefix it ends, the hash of
/// the prefix before it, and its tokens.
#[derive(Debug, Clone)]
struct Cached {
    hash: u64,
    parent: u64,
    tokens: Box<[u32]>,
}

#[derive(Debug)]
pub struct BlockPool {
    block_size: usize,
    refcount: Vec<u32>,
    /// What each full block caches, if it is the one the cache finds for its prefix.
    cached: Vec<Option<Cached>>,
    by_hash: HashMap<u64, BlockId>,
    /// The cached blocks after each prefix hash.
    children: HashMap<u64, Vec<BlockId>>,
    /// Blocks with no reference, least recently released first, by release stamp.
    free: BTreeMap<u64, BlockId>,
    stamp_of: Vec<u64>,
    next_stamp: u64,
    hits: u64,
}

impl BlockPool {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block size must be positive");
        let free = (0..num_blocks as u64).map(|i| (i, i as BlockId)).collect();
        Self {
            block_size,
            refcount: vec![0; num_blocks],
            cached: vec![None; num_blocks],
            by_hash: HashMap::new(),
            children: HashMap::new(),
            free,
            stamp_of: (0..num_blocks as u64).collect(),
            next_stamp: num_blocks as u64,
            hits: 0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.refcount.len()
    }

    /// Blocks no sequence holds (some of them still cache a prefix).
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Blocks whose tokens were found in the cache since the start.
    pub fn prefix_hits(&self) -> u64 {
        self.hits
    }

    /// Takes the cached blocks that hold the longest cached prefix of the blocks hashed
    /// as `hashes`, and returns them (a reference each).
    pub fn take_prefix(&mut self, hashes: &[u64]) -> Vec<BlockId> {
        let mut taken = Vec::new();
        for h in hashes {
            let Some(&b) = self.by_hash.get(h) else { break };
            self.hold(b);
            taken.push(b);
        }
        self.hits += taken.len() as u64;
        taken
    }

    /// The cached block after the prefix hashed as `parent` whose tokens start with the
    /// longest run of `tokens`, and that run's length (at least one).
    pub fn partial(&self, parent: u64, tokens: &[u32]) -> Option<(BlockId, usize)> {
        let same = |b: &BlockId| {
            let mine = self.cached[*b as usize].as_ref().map_or(&[][..], |c| &c.tokens);
            mine.iter().zip(tokens).take_while(|(a, b)| a == b).count()
        };
        let best = self.children.get(&parent)?.iter().map(|b| (*b, same(b))).max_by_key(|(_, k)| *k)?;
        (best.1 > 0).then_some(best)
    }

    /// Whether a sequence holds block `b`.
    pub fn held(&self, b: BlockId) -> bool {
        self.refcount[b as usize] > 0
    }

    /// Takes a reference to block `b` (cached or held).
    pub fn hold(&mut self, b: BlockId) {
        if self.refcount[b as usize] == 0 {
            self.free.remove(&self.stamp_of[b as usize]);
        }
        self.refcount[b as usize] += 1;
    }

    /// A fresh block, evicting the least recently used cached one; `None` if the pool is
    /// exhausted.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let (_, b) = self.free.pop_first()?;
        if let Some(c) = self.cached[b as usize].take() {
            self.by_hash.remove(&c.hash);
            if let Some(after) = self.children.get_mut(&c.parent) {
                after.retain(|x| *x != b);
                if after.is_empty() {
                    self.children.remove(&c.parent);
                }
            }
        }
        self.refcount[b as usize] = 1;
        Some(b)
    }

    /// Drops one reference; the block stays cached (if hashed) until it is reused.
    pub fn release(&mut self, b: BlockId) {
        let rc = &mut self.refcount[b as usize];
        debug_assert!(*rc > 0, "release of a free block {b}");
        *rc = rc.saturating_sub(1);
        if *rc == 0 {
            let stamp = self.next_stamp;
            self.next_stamp += 1;
            self.stamp_of[b as usize] = stamp;
            self.free.insert(stamp, b);
        }
    }

    /// Records that block `b` is full with `tokens` after the prefix hashed as `parent`,
    /// and returns the hash of the prefix it ends ([`block_hash`]).
    pub fn register(&mut self, b: BlockId, parent: u64, tokens: &[u32]) -> u64 {
        let hash = block_hash(parent, tokens);
        if self.cached[b as usize].is_none() && !self.by_hash.contains_key(&hash) {
            self.cached[b as usize] = Some(Cached { hash, parent, tokens: tokens.into() });
            self.by_hash.insert(hash, b);
            self.children.entry(parent).or_default().push(b);
        }
        hash
    }

    /// Whether every block is back in the free queue (for leak checks).
    pub fn all_free(&self) -> bool {
        self.free.len() == self.refcount.len() && self.refcount.iter().all(|&r| r == 0)
    }
}

/// Keys and values of every layer, block-addressed: in host memory for the CPU kernels,
/// or on the model's candle device (`device`, with `k` and `v` empty).
pub struct KvStore {
    pub block_size: usize,
    pub kv_dim: usize,
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    pub device: Option<crate::candle_path::DeviceKv>,
}

impl KvStore {
    /// The whole pool, made resident at once: the serving partition's memory is held
    /// from the start, so the process's resident size does not creep up as sequences
    /// come (and what grows later is somebody else's: a training job's).
    pub fn new(layers: usize, num_blocks: usize, block_size: usize, kv_dim: usize) -> Self {
        let len = num_blocks * block_size * kv_dim;
        let resident = || {
            let mut v = vec![0.0f32; len];
            crate::kernels::huge_pages(&mut v);
            // Zeroed allocations are mapped lazily; one write per page maps them.
            for i in (0..len).step_by(1024) {
                // SAFETY: `i < len`, inside the vector.
                unsafe { std::ptr::write_volatile(v.as_mut_ptr().add(i), 0.0) };
            }
            v
        };
        Self {
            block_size,
            kv_dim,
            k: (0..layers).map(|_| resident()).collect(),
            v: (0..layers).map(|_| resident()).collect(),
            device: None,
        }
    }

    /// A store whose keys and values live on a device.
    pub(crate) fn on_device(kv: crate::candle_path::DeviceKv, block_size: usize, kv_dim: usize) -> Self {
        Self { block_size, kv_dim, k: Vec::new(), v: Vec::new(), device: Some(kv) }
    }

    /// Bytes one token takes in every layer (keys and values).
    pub fn bytes_per_token(layers: usize, kv_dim: usize) -> usize {
        layers * kv_dim * 2 * std::mem::size_of::<f32>()
    }

    /// Copies the keys and values of the first `n` positions of block `from` to block `to`,
    /// in every layer (host memory only).
    pub fn copy_positions(&mut self, from: BlockId, to: BlockId, n: usize) {
        let (src, dst, len) = (
            from as usize * self.block_size * self.kv_dim,
            to as usize * self.block_size * self.kv_dim,
            n.min(self.block_size) * self.kv_dim,
        );
        for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
            layer.copy_within(src..src + len, dst);
        }
    }

    /// Offset of position `pos` of a sequence whose block table is `blocks`.
    #[inline]
    pub fn offset(&self, blocks: &[BlockId], pos: usize) -> usize {
        (blocks[pos / self.block_size] as usize * self.block_size + pos % self.block_size) * self.kv_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_and_release_round_trip() {
        let mut p = BlockPool::new(4, 16);
        let a: Vec<_> = (0..4).filter_map(|_| p.allocate()).collect();
        assert_eq!(a.len(), 4);
        assert!(p.allocate().is_none(), "the pool is exhausted");
        a.iter().for_each(|&b| p.release(b));
        assert!(p.all_free());
    }

    #[test]
    fn a_released_prefix_is_found_again_until_evicted() {
        let mut p = BlockPool::new(3, 2);
        let tokens = [1, 2, 3, 4];
        let hashes = prefix_hashes(&tokens, 2, 0);
        let blocks: Vec<_> = (0..2).filter_map(|_| p.allocate()).collect();
        for (i, (b, h)) in blocks.iter().zip(&hashes).enumerate() {
            let parent = if i == 0 { 0 } else { hashes[i - 1] };
            assert_eq!(p.register(*b, parent, &tokens[2 * i..2 * i + 2]), *h);
        }
        blocks.iter().for_each(|&b| p.release(b));
        assert_eq!(p.take_prefix(&hashes), blocks);
        assert_eq!(p.prefix_hits(), 2);
        blocks.iter().for_each(|&b| p.release(b));
        // A different prefix shares nothing.
        assert!(p.take_prefix(&prefix_hashes(&[9, 9, 3, 4], 2, 0)).is_empty());
        // Using the whole pool evicts the cached blocks.
        let all: Vec<_> = (0..3).filter_map(|_| p.allocate()).collect();
        assert_eq!(all.len(), 3);
        all.iter().for_each(|&b| p.release(b));
        assert!(p.take_prefix(&hashes).is_empty());
        assert!(p.all_free());
    }

    #[test]
    fn shared_blocks_stay_until_the_last_reference() {
        let mut p = BlockPool::new(2, 2);
        let h = prefix_hashes(&[5, 6], 2, 0);
        let b = p.allocate().expect("a free block");
        p.register(b, 0, &[5, 6]);
        assert_eq!(p.take_prefix(&h), vec![b]);
        p.release(b);
        assert_eq!(p.num_free(), 1, "still held once");
        p.release(b);
        assert_eq!(p.num_free(), 2);
    }

    #[test]
    fn a_block_whose_start_matches_is_found_until_evicted() {
        let mut p = BlockPool::new(3, 4);
        let tokens = [1, 2, 3, 4, 5, 6, 7, 8];
        let h = prefix_hashes(&tokens, 4, 0);
        let (a, b) = (p.allocate().expect("a"), p.allocate().expect("b"));
        p.register(a, 0, &tokens[..4]);
        p.register(b, h[0], &tokens[4..]);
        p.release(a);
        p.release(b);
        // After the first block: the second's first two tokens, then a difference.
        assert_eq!(p.partial(h[0], &[5, 6, 9]), Some((b, 2)));
        assert_eq!(p.partial(h[0], &[5]), Some((b, 1)));
        assert_eq!(p.partial(h[0], &[9, 6]), None, "no common start");
        assert_eq!(p.partial(0, &[1, 2, 3]), Some((a, 3)));
        assert_eq!(p.partial(h[1], &[1]), None, "nothing cached after both");
        // Reusing the blocks forgets them.
        let all: Vec<_> = (0..3).filter_map(|_| p.allocate()).collect();
        assert_eq!(p.partial(h[0], &[5, 6]), None);
        assert_eq!(p.partial(0, &[1]), None);
        all.iter().for_each(|&b| p.release(b));
        assert!(p.all_free());
    }

    #[test]
    fn prefix_hashes_chain() {
        let a = prefix_hashes(&[1, 2, 3, 4], 2, 0);
        let b = prefix_hashes(&[0, 2, 3, 4], 2, 0);
        assert_ne!(a[1], b[1], "the second block's hash depends on the first");
        assert_eq!(prefix_hashes(&[1, 2, 3], 2, 0).len(), 1, "partial blocks are not hashed");
    }
}
