//! `nave model add` / `list` / `rm` on the model store: a good file of a supported
//! architecture is registered (checksummed, described, then served by name); a truncated
//! file, an unknown architecture and a tensor of the wrong shape are refused with an
//! error naming what is wrong, and leave nothing behind.

use std::path::Path;

use nave_inference::store::ModelStore;
use nave_inference::tiny::{write_tiny_model, TinyArch};
use nave_inference::{LoadOptions, LoadedModel};

fn store_files(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// `bytes` with the first occurrence of `from` replaced by `to` (same length).
fn patched(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = bytes.windows(from.len()).position(|w| w == from).expect("pattern present");
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

#[test]
fn add_list_serve_and_remove_a_local_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("My-Tiny.gguf");
    write_tiny_model(&src, TinyArch::Gemma3, 3).expect("written");
    let store = ModelStore::new(dir.path().join("store"));
    let rec = store.add(&src, None).expect("a good file is added");
    assert_eq!(rec.name, "my-tiny");
    assert_eq!((rec.about.architecture.as_str(), rec.about.context), ("gemma3", 256));
    assert_eq!(rec.about.quantization, "Q4_1");
    assert!(rec.about.parameters > 10_000);
    let bytes = std::fs::read(&src).expect("read");
    assert_eq!(rec.size, bytes.len() as u64);
    use sha2::Digest;
    assert_eq!(rec.sha256, hex::encode(sha2::Sha256::digest(&bytes)));

    let listed = store.list();
    let row = listed.iter().find(|m| m.name == "my-tiny").expect("listed");
    assert!(row.present && row.sha256 == rec.sha256 && row.about.as_ref() == Some(&rec.about));
    // Served by name, as a spoke resolves it.
    let path = store.ensure("my-tiny", &mut |_| {}).expect("found by name");
    LoadedModel::load("my-tiny", &path, LoadOptions::default()).expect("loads from the store");
    let again = store.add(&src, Some("my-tiny")).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(again.contains("already"), "{again}");
    assert!(store.add(&src, Some("smollm2-135m")).is_err(), "packaged names are taken");

    store.rm("my-tiny").expect("removed");
    assert!(store_files(store.root()).is_empty(), "{:?}", store_files(store.root()));
    assert!(store.rm("my-tiny").is_err());
    assert!(store.ensure("my-tiny", &mut |_| {}).is_err());
}

#[test]
fn files_nave_cannot_serve_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("good.gguf");
    write_tiny_model(&good, TinyArch::Llama, 5).expect("written");
    let bytes = std::fs::read(&good).expect("read");
    let store = ModelStore::new(dir.path().join("store"));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", bytes[..bytes.len() * 2 / 3].to_vec(), "truncated"),
        (
            "mamba",
            patched(&bytes, b"\x05\x00\x00\x00\x00\x00\x00\x00llama", b"\x05\x00\x00\x00\x00\x00\x00\x00mamba"),
            "unsupported architecture \"mamba\"",
        ),
        // blk.0.ffn_up's rows (128) read as 64: its shape no longer fits the model.
        (
            "shape",
            {
                let name = b"blk.0.ffn_up.weight";
                let at = bytes.windows(name.len()).position(|w| w == name).expect("tensor named") + name.len();
                // name, then n_dims (u32) and dims (u64 each): [64 cols, 128 rows].
                let mut b = bytes.clone();
                let rows_at = at + 4 + 8;
                assert_eq!(u64::from_le_bytes(b[rows_at..rows_at + 8].try_into().expect("8 bytes")), 128);
                b[rows_at..rows_at + 8].copy_from_slice(&64u64.to_le_bytes());
                b
            },
            "shape",
        ),
    ];
    for (name, data, want) in cases {
        let path = dir.path().join(format!("{name}.gguf"));
        std::fs::write(&path, data).expect("write");
        let err = store.add(&path, None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(want), "{name}: {err}");
        assert!(store_files(store.root()).is_empty(), "{name} left {:?}", store_files(store.root()));
    }
}
