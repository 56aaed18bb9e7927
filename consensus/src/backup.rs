//! The backup file: one line of JSON saying what it is, then the replicated state as its
//! snapshot encodes it. The header carries a format name and version, the payload's
//! length and SHA-256, so a truncated, corrupted or foreign file is refused with the
//! reason before anything is restored.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const FORMAT: &str = "nave-backup";
pub const VERSION: u32 = 1;
/// A header line longer than this is not ours.
const MAX_HEADER: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// The cluster it was taken from (`[cluster] name`).
    pub cluster: String,
    /// When, in milliseconds since the Unix epoch, and at which applied log index: the
    /// linearizable point the state was read at.
    pub taken_ms: u64,
    pub log_index: u64,
    pub keys: usize,
    pub spokes: usize,
    pub bytes: u64,
    pub sha256: String,
}

/// A backup file of `state` (bytes of [`crate::state::ClusterState::backup_bytes`]).
pub fn encode(state: &[u8], cluster: &str, taken_ms: u64, log_index: u64, keys: usize, spokes: usize) -> Vec<u8> {
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        cluster: cluster.into(),
        taken_ms,
        log_index,
        keys,
        spokes,
        bytes: state.len() as u64,
        sha256: hex::encode(Sha256::digest(state)),
    };
    let mut out = serde_json::to_vec(&header).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(state);
    out
}

/// The header and the state of a backup file, or why it is not a good one.
pub fn decode(file: &[u8]) -> Result<(Header, &[u8]), String> {
    let end = file.iter().take(MAX_HEADER).position(|&b| b == b'\n').ok_or("not a Nave backup (no header line)")?;
    let header: Header =
        serde_json::from_slice(&file[..end]).map_err(|_| "not a Nave backup (the header is not one)".to_string())?;
    if header.format != FORMAT {
        return Err(format!("not a Nave backup (format {:?})", header.format));
    }
    if header.version != VERSION {
        return Err(format!("a backup of format version {}; this Nave reads version {VERSION}", header.version));
    }
    let state = &file[end + 1..];
    if state.len() as u64 != header.bytes {
        return Err(format!(
            "the backup is truncated or padded: {} bytes of state, the header says {}",
            state.len(),
            header.bytes
        ));
    }
    if hex::encode(Sha256::digest(state)) != header.sha256 {
        return Err("the backup is corrupt: its checksum does not match".into());
    }
    Ok((header, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(file: &[u8]) -> String {
        decode(file).err().unwrap_or_default()
    }

    #[test]
    fn good_files_decode_and_bad_ones_say_why() {
        let file = encode(b"state bytes", "nave", 5, 9, 1, 0);
        let (h, state) = decode(&file).expect("decodes");
        assert_eq!((state, h.log_index, h.cluster.as_str()), (&b"state bytes"[..], 9, "nave"));
        let cut = &file[..file.len() - 2];
        assert!(why(cut).contains("truncated"));
        let mut flipped = file.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(why(&flipped).contains("corrupt"));
        assert!(why(b"PK\x03\x04 a zip file").contains("not a Nave backup"));
        let other = String::from_utf8_lossy(&file).replace("\"version\":1", "\"version\":7");
        assert!(why(other.as_bytes()).contains("version 7"));
    }
}
