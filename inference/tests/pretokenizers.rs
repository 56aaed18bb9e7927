//! Each pre-tokenizer that `tokenizer.ggml.pre` can name gives llama.cpp's token ids: a
//! GGUF with SmolLM2's real vocabulary (GPT-2 byte-level BPE, 49,152 tokens and its
//! merges) and the pre-tokenizer set to that family's name, tokenized by Nave and by
//! llama.cpp's `/tokenize` (add_special off, parse_special on) on the same strings: code,
//! unicode in several scripts, digit runs, whitespace runs, special tokens. The reference
//! (`data/pretokenizers_llamacpp.json`) was written by scripts/pretokenizer_reference.py.

use std::path::PathBuf;

use nave_inference::store::ModelStore;
use nave_inference::tiny::{write_family_model_with_pre, write_tokenizer_only, Family};
use nave_inference::tokenizer::TextTokenizer;

fn smollm2() -> PathBuf {
    ModelStore::from_env().ensure("smollm2-135m", &mut |_| {}).expect("the smollm2-135m model is available")
}

/// Writes one small model per pre-tokenizer into `NAVE_PRETOKENIZER_DIR` (`<pre>.gguf`),
/// for llama.cpp to load (scripts/pretokenizer_reference.py runs this first).
#[test]
#[ignore]
fn write_pretokenizer_models_for_llama_cpp() {
    let dir = PathBuf::from(std::env::var("NAVE_PRETOKENIZER_DIR").expect("NAVE_PRETOKENIZER_DIR is set"));
    std::fs::create_dir_all(&dir).expect("output folder");
    let pres: Vec<String> = std::env::var("NAVE_PRETOKENIZERS")
        .expect("NAVE_PRETOKENIZERS lists them")
        .split(',')
        .map(String::from)
        .collect();
    for pre in pres {
        let path = dir.join(format!("{pre}.gguf"));
        write_family_model_with_pre(&path, Family::Mistral, &smollm2(), 1, Some(&pre)).expect("written");
        println!("{}", path.display());
    }
}

#[test]
fn every_pre_tokenizer_matches_llama_cpp() {
    let data: serde_json::Value =
        serde_json::from_str(include_str!("data/pretokenizers_llamacpp.json")).expect("reference parses");
    let strings: Vec<&str> =
        data["strings"].as_array().expect("strings").iter().map(|s| s.as_str().expect("a string")).collect();
    assert!(strings.len() >= 50);
    let dir = tempfile::tempdir().expect("temp dir");
    let source = smollm2();
    let mut mismatches = Vec::new();
    let pres = data["pre"].as_object().expect("pre-tokenizers");
    assert!(pres.len() >= 10);
    for (pre, want) in pres {
        let path = dir.path().join(format!("{pre}.gguf"));
        write_tokenizer_only(&path, &source, pre).expect("written");
        let tok = TextTokenizer::from_path(&path).expect("the tokenizer builds");
        for (text, want) in strings.iter().zip(want.as_array().expect("ids per string")) {
            let want: Vec<u32> = want.as_array().expect("ids").iter().map(|v| v.as_u64().expect("id") as u32).collect();
            let got = tok.encode(text).expect("encodes");
            if got != want {
                mismatches.push(format!("{pre} {text:?}: got {got:?}, llama.cpp {want:?}"));
            }
        }
    }
    assert!(mismatches.is_empty(), "{} differ:\n{}", mismatches.len(), mismatches.join("\n"));
}
