//! Token ids equal llama.cpp's on the committed reference set (written once by
//! scripts/tokenizer_reference.py from llama.cpp's own tokenizer).

use nave_inference::store::ModelStore;
use nave_inference::tokenizer::TextTokenizer;

#[test]
fn smollm2_ids_match_llama_cpp() {
    let path = ModelStore::from_env().ensure("smollm2-135m", &mut |_| {}).expect("model available");
    let tok = TextTokenizer::from_path(path).expect("tokenizer builds from the GGUF");
    let data: serde_json::Value =
        serde_json::from_str(include_str!("data/smollm2_tokens.json")).expect("reference data parses");
    let cases = data["cases"].as_array().expect("cases");
    assert!(cases.len() >= 50);
    let mut mismatches = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want: Vec<u32> =
            case["ids"].as_array().expect("ids").iter().map(|v| v.as_u64().expect("id") as u32).collect();
        let got = tok.encode(text).expect("encodes");
        if got != want {
            mismatches.push(format!("{text:?}: got {got:?}, llama.cpp {want:?}"));
        }
        if !text.contains("<|") {
            assert_eq!(tok.decode(&got), text, "decode(encode(x)) == x");
        }
    }
    assert!(mismatches.is_empty(), "{} of {} differ:\n{}", mismatches.len(), cases.len(), mismatches.join("\n"));
}
