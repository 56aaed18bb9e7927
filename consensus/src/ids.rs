//! Ids and hashes every node derives the same way: FNV-1a (stable across processes and
//! releases, unlike std's `DefaultHasher`), random hex from the kernel, and fresh ids.

/// FNV-1a (64-bit) over `parts`, concatenated: stable across runs and machines, so nodes
/// that never talk agree on what it gives (Raft ids from names, affinity hashes).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// `n` random bytes as hex, from the kernel: for secrets (keys, tokens).
pub fn random_hex(n: usize) -> std::io::Result<String> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))?;
    Ok(hex::encode(bytes))
}

/// A fresh random number: unique, not secret (ids of requests, completions, spans).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // std seeds each RandomState from the OS (then per-thread counters): a cheap source of
    // distinct values without a dependency.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::clock::now_ns());
    h.finish()
}

/// `N` fresh random bytes, unique, not secret (trace and span ids).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(8) {
        chunk.copy_from_slice(&random_u64().to_be_bytes()[..chunk.len()]);
    }
    out
}

/// A fresh random id of 16 hex digits (request ids, completion ids): unique, not secret.
pub fn random_id() -> String {
    format!("{:016x}", random_u64())
}

/// A name part no other process or thread uses at the same time (pid, counter, clock):
/// for temporary files published with a rename or a hard link.
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{}-{}-{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}
