//! Tiny random-weight GGUF models of each supported architecture, written on demand, so
//! tests of the engine, the spoke and the hub run without any download. They have the
//! real file format, tokenizer metadata and chat template; only the weights are noise.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::sampler::Rng;

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Which architecture to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyArch {
    Llama,
    Gemma3,
}

struct Shape {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    layers: usize,
    ffn: usize,
}

/// GPT-2's byte-to-character table: printable bytes map to themselves, the rest to 256+.
fn byte_level_alphabet() -> Vec<String> {
    let printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars = Vec::with_capacity(256);
    let mut extra = 0;
    for b in 0..256u32 {
        if printable.contains(&b) {
            chars.push(char::from_u32(b).map(String::from).unwrap_or_default());
        } else {
            chars.push(char::from_u32(256 + extra).map(String::from).unwrap_or_default());
            extra += 1;
        }
    }
    chars
}

fn random(rng: &mut Rng, dims: &[usize], scale: f32) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let data: Vec<f32> = (0..n).map(|_| (rng.next_f64() as f32 * 2.0 - 1.0) * scale).collect();
    Ok(Tensor::from_vec(data, dims, &Device::Cpu)?)
}

/// Writes a tiny model of `arch` to `path`, seeded so every call writes the same file.
pub fn write_tiny_model(path: &Path, arch: TinyArch, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    let s = match arch {
        TinyArch::Llama => Shape { hidden: 64, heads: 4, kv_heads: 2, head_dim: 16, layers: 2, ffn: 128 },
        TinyArch::Gemma3 => Shape { hidden: 64, heads: 2, kv_heads: 1, head_dim: 32, layers: 6, ffn: 128 },
    };
    let (mut tokens, mut types, mut scores, merges): (Vec<String>, Vec<u32>, Vec<f32>, Vec<String>) = match arch {
        TinyArch::Llama => {
            let mut t = byte_level_alphabet();
            let merges = vec!["Ġ t".to_string(), "h e".to_string(), "Ġt he".to_string(), "i n".to_string()];
            t.extend(["Ġt", "he", "Ġthe", "in"].map(String::from));
            let n = t.len();
            (t, vec![1; n], vec![0.0; n], merges)
        }
        TinyArch::Gemma3 => {
            let mut t: Vec<String> = ["<pad>", "<eos>", "<bos>", "<unk>"].map(String::from).to_vec();
            let mut ty = vec![3, 3, 3, 2];
            let mut sc = vec![0.0; 4];
            for b in 0..256 {
                t.push(format!("<0x{b:02X}>"));
                ty.push(6);
                sc.push(0.0);
            }
            for (i, p) in ["▁", "a", "b", "c", "e", "h", "t", "▁t", "he", "▁the", "▁a"].iter().enumerate() {
                t.push(p.to_string());
                ty.push(1);
                sc.push(-(i as f32));
            }
            (t, ty, sc, Vec::new())
        }
    };
    for special in ["<|im_start|>", "<|im_end|>"] {
        tokens.push(special.into());
        types.push(3);
        scores.push(0.0);
    }
    let vocab = tokens.len();
    let im_end = (vocab - 1) as u32;

    let a = match arch {
        TinyArch::Llama => "llama",
        TinyArch::Gemma3 => "gemma3",
    };
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        (format!("{a}.embedding_length"), Value::U32(s.hidden as u32)),
        (format!("{a}.block_count"), Value::U32(s.layers as u32)),
        (format!("{a}.attention.head_count"), Value::U32(s.heads as u32)),
        (format!("{a}.attention.head_count_kv"), Value::U32(s.kv_heads as u32)),
        (format!("{a}.feed_forward_length"), Value::U32(s.ffn as u32)),
        (format!("{a}.context_length"), Value::U32(256)),
        (format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens.iter().map(|t| Value::String(t.clone())).collect())),
        ("tokenizer.ggml.token_type".into(), Value::Array(types.iter().map(|&t| Value::I32(t as i32)).collect())),
    ];
    match arch {
        TinyArch::Llama => {
            meta.push(("tokenizer.ggml.model".into(), Value::String("gpt2".into())));
            meta.push(("tokenizer.ggml.pre".into(), Value::String("smollm".into())));
            meta.push((
                "tokenizer.ggml.merges".into(),
                Value::Array(merges.iter().map(|m| Value::String(m.clone())).collect()),
            ));
            meta.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(im_end)));
            meta.push(("tokenizer.chat_template".into(), Value::String(CHATML.into())));
            meta.push(("llama.rope.dimension_count".into(), Value::U32(s.head_dim as u32)));
        }
        TinyArch::Gemma3 => {
            meta.push(("tokenizer.ggml.model".into(), Value::String("llama".into())));
            meta.push(("tokenizer.ggml.scores".into(), Value::Array(scores.iter().map(|&x| Value::F32(x)).collect())));
            meta.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(2)));
            meta.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(1)));
            meta.push(("tokenizer.ggml.unknown_token_id".into(), Value::U32(3)));
            meta.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)));
            meta.push(("gemma3.attention.key_length".into(), Value::U32(s.head_dim as u32)));
            meta.push(("gemma3.attention.sliding_window".into(), Value::U32(8)));
        }
    }

    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let ones = |n: usize| -> Result<QTensor> {
        Ok(QTensor::quantize(&Tensor::ones(n, candle_core::DType::F32, &Device::Cpu)?, GgmlDType::F32)?)
    };
    let scale = 0.5 / (s.hidden as f32).sqrt();
    // Q4_1 for the big matrices exercises the re-quantization path used for SmolLM2.
    let mat = |rng: &mut Rng, out: usize, inp: usize| -> Result<QTensor> {
        Ok(QTensor::quantize(&random(rng, &[out, inp], scale)?, GgmlDType::Q4_1)?)
    };
    tensors.push((
        "token_embd.weight".into(),
        QTensor::quantize(&random(&mut rng, &[vocab, s.hidden], 1.0)?, GgmlDType::Q8_0)?,
    ));
    let (q_out, kv_out) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    for i in 0..s.layers {
        let p = |n: &str| format!("blk.{i}.{n}.weight");
        tensors.push((p("attn_norm"), ones(s.hidden)?));
        tensors.push((p("attn_q"), mat(&mut rng, q_out, s.hidden)?));
        tensors.push((p("attn_k"), mat(&mut rng, kv_out, s.hidden)?));
        tensors.push((p("attn_v"), mat(&mut rng, kv_out, s.hidden)?));
        tensors.push((p("attn_output"), mat(&mut rng, s.hidden, q_out)?));
        tensors.push((p("ffn_norm"), ones(s.hidden)?));
        tensors.push((p("ffn_gate"), mat(&mut rng, s.ffn, s.hidden)?));
        tensors.push((p("ffn_up"), mat(&mut rng, s.ffn, s.hidden)?));
        tensors.push((p("ffn_down"), mat(&mut rng, s.hidden, s.ffn)?));
        if arch == TinyArch::Gemma3 {
            tensors.push((p("attn_q_norm"), ones(s.head_dim)?));
            tensors.push((p("attn_k_norm"), ones(s.head_dim)?));
            tensors.push((p("post_attention_norm"), ones(s.hidden)?));
            tensors.push((p("post_ffw_norm"), ones(s.hidden)?));
        }
    }
    tensors.push(("output_norm.weight".into(), ones(s.hidden)?));

    let mut file = std::fs::File::create(path)?;
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &meta_refs, &tensor_refs)?;
    file.sync_all()?;
    Ok(())
}

/// The families [`write_family_model`] writes: each with its architecture's real tensor
/// names and metadata keys, so llama.cpp loads the same file as that family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `llama` with Llama 3's `rope_freqs` tensor; Q8_0 matrices (the quantized path).
    Llama3,
    /// `llama` with `rope.scaling.type = linear`, factor 2.
    LlamaLinear,
    /// `llama` with YaRN scaling, factor 4 over an original context of 64.
    LlamaYarn,
    /// `llama` with `llama.attention.sliding_window` (Mistral).
    Mistral,
    /// `qwen2`: biases on q, k and v.
    Qwen2,
    /// `qwen3`: per-head q/k norms, a head dimension wider than hidden / heads.
    Qwen3,
    /// `phi3`: fused `attn_qkv` and gate/up in one `ffn_up`.
    Phi3,
    /// `gemma2`: soft-capping, a sliding window of 8 on every other layer, post-norms.
    Gemma2,
}

impl Family {
    pub const ALL: [Family; 8] = [
        Family::Llama3,
        Family::LlamaLinear,
        Family::LlamaYarn,
        Family::Mistral,
        Family::Qwen2,
        Family::Qwen3,
        Family::Phi3,
        Family::Gemma2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Llama3 => "llama3",
            Family::LlamaLinear => "llama-linear",
            Family::LlamaYarn => "llama-yarn",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Phi3 => "phi3",
            Family::Gemma2 => "gemma2",
        }
    }

    pub fn arch(self) -> &'static str {
        match self {
            Family::Llama3 | Family::LlamaLinear | Family::LlamaYarn | Family::Mistral => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Phi3 => "phi3",
            Family::Gemma2 => "gemma2",
        }
    }

    /// Which real model lends its vocabulary: SmolLM2's (GPT-2 BPE, 49,152 tokens) or,
    /// for Gemma 2 and Phi-3 (SentencePiece families), Gemma 3's (262,144 tokens).
    pub fn vocab_model(self) -> &'static str {
        match self {
            Family::Gemma2 | Family::Phi3 => "gemma3-270m",
            _ => "smollm2-135m",
        }
    }

    /// The weights' type: F32 everywhere but Llama 3's Q8_0 matrices.
    pub fn weight_type(self) -> GgmlDType {
        match self {
            Family::Llama3 => GgmlDType::Q8_0,
            _ => GgmlDType::F32,
        }
    }
}

/// Writes a small model of `family` to `path`: two to four layers of random weights
/// (seeded: every call writes the same bytes), the family's tensor names and metadata,
/// and the whole tokenizer (`tokenizer.*`) of the GGUF at `vocab_from`, so llama.cpp and
/// Nave read the same real vocabulary. Weights are scaled so each product keeps unit
/// variance and logits spread over several units: the top tokens are apart by more than
/// any difference of summation order.
pub fn write_family_model(path: &Path, family: Family, vocab_from: &Path, seed: u64) -> Result<()> {
    write_family_model_with_pre(path, family, vocab_from, seed, None)
}

/// The tokenizer metadata of `vocab_from` (sorted, so the bytes written never vary), with
/// `tokenizer.ggml.pre` replaced by `pre` where given, and the vocabulary's size.
fn borrowed_tokenizer(vocab_from: &Path, pre: Option<&str>) -> Result<(Vec<(String, Value)>, usize)> {
    let source = crate::gguf::GgufFile::open(vocab_from)?;
    let mut tokenizer: Vec<(String, Value)> = source
        .metadata()
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer.") && (pre.is_none() || k.as_str() != "tokenizer.ggml.pre"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(pre) = pre {
        tokenizer.push(("tokenizer.ggml.pre".into(), Value::String(pre.into())));
    }
    tokenizer.sort_by(|a, b| a.0.cmp(&b.0));
    let vocab = source.strings("tokenizer.ggml.tokens")?.len();
    Ok((tokenizer, vocab))
}

/// Writes a GGUF holding only `vocab_from`'s tokenizer with the pre-tokenizer `pre`: what
/// the tokenizer is built from, for tests of each pre-tokenizer without any weights.
pub fn write_tokenizer_only(path: &Path, vocab_from: &Path, pre: &str) -> Result<()> {
    write_tokenizer(path, vocab_from, Some(pre))
}

/// Writes a GGUF holding only `vocab_from`'s tokenizer and chat template, as they are: a
/// few megabytes that [`write_random_llama`] can take its vocabulary from on a machine the
/// model itself cannot reach.
pub fn write_tokenizer_of(path: &Path, vocab_from: &Path) -> Result<()> {
    write_tokenizer(path, vocab_from, None)
}

fn write_tokenizer(path: &Path, vocab_from: &Path, pre: Option<&str>) -> Result<()> {
    let (mut meta, _) = borrowed_tokenizer(vocab_from, pre)?;
    meta.insert(0, ("general.architecture".into(), Value::String("llama".into())));
    let mut file = std::fs::File::create(path)?;
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &meta_refs, &[])?;
    Ok(())
}

/// [`write_family_model`] with the borrowed tokenizer's pre-tokenizer replaced by `pre`
/// (llama.cpp loads a model to tokenize: this is what it tokenizes with).
pub fn write_family_model_with_pre(
    path: &Path,
    family: Family,
    vocab_from: &Path,
    seed: u64,
    pre: Option<&str>,
) -> Result<()> {
    let (tokenizer, vocab) = borrowed_tokenizer(vocab_from, pre)?;

    let mut rng = Rng::new(seed ^ family as u64);
    let (hidden, heads, kv_heads, ffn) = (64, 4, 2, 96);
    let head_dim = if family == Family::Qwen3 { 32 } else { 16 };
    let layers = if family == Family::Gemma2 { 4 } else { 2 };
    let a = family.arch();
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        // Not the family's name: llama.cpp sets token attributes by model name ("phi3"
        // wants Phi-3's own special tokens in the vocabulary).
        ("general.name".into(), Value::String(format!("nave conformance {}", family as u8))),
        (format!("{a}.embedding_length"), Value::U32(hidden as u32)),
        (format!("{a}.block_count"), Value::U32(layers as u32)),
        (format!("{a}.attention.head_count"), Value::U32(heads as u32)),
        (format!("{a}.attention.head_count_kv"), Value::U32(kv_heads as u32)),
        (format!("{a}.feed_forward_length"), Value::U32(ffn as u32)),
        (format!("{a}.context_length"), Value::U32(2048)),
        (format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        (format!("{a}.rope.dimension_count"), Value::U32(head_dim as u32)),
        (format!("{a}.attention.key_length"), Value::U32(head_dim as u32)),
        (format!("{a}.attention.value_length"), Value::U32(head_dim as u32)),
    ];
    match family {
        Family::Llama3 => meta.push(("llama.rope.freq_base".into(), Value::F32(500_000.0))),
        Family::LlamaLinear => {
            meta.push(("llama.rope.scaling.type".into(), Value::String("linear".into())));
            meta.push(("llama.rope.scaling.factor".into(), Value::F32(3.0)));
        }
        Family::LlamaYarn => {
            meta.push(("llama.rope.scaling.type".into(), Value::String("yarn".into())));
            meta.push(("llama.rope.scaling.factor".into(), Value::F32(4.0)));
            meta.push(("llama.rope.scaling.original_context_length".into(), Value::U32(64)));
        }
        Family::Mistral => meta.push(("llama.attention.sliding_window".into(), Value::U32(4096))),
        Family::Qwen2 => meta.push(("qwen2.rope.freq_base".into(), Value::F32(1_000_000.0))),
        Family::Qwen3 => meta.push(("qwen3.rope.freq_base".into(), Value::F32(1_000_000.0))),
        Family::Phi3 => {}
        Family::Gemma2 => {
            meta.push(("gemma2.attention.sliding_window".into(), Value::U32(8)));
            // Caps low enough that tanh bends these random scores and logits.
            meta.push(("gemma2.attn_logit_softcapping".into(), Value::F32(3.0)));
            meta.push(("gemma2.final_logit_softcapping".into(), Value::F32(15.0)));
        }
    }
    meta.extend(tokenizer);

    let ty = family.weight_type();
    let f32s = |t: Tensor| -> Result<QTensor> { Ok(QTensor::quantize(&t, GgmlDType::F32)?) };
    // Uniform on [-s, s] with s = sqrt(3 / inputs): unit variance out for unit variance in.
    let mat = |rng: &mut Rng, out: usize, inp: usize| -> Result<QTensor> {
        Ok(QTensor::quantize(&random(rng, &[out, inp], (3.0 / inp as f32).sqrt())?, ty)?)
    };
    let norm = |rng: &mut Rng, n: usize| -> Result<QTensor> {
        let v: Vec<f32> = (0..n).map(|_| 1.0 + (rng.next_f64() as f32 * 2.0 - 1.0) * 0.2).collect();
        f32s(Tensor::from_vec(v, n, &Device::Cpu)?)
    };
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    tensors.push(("token_embd.weight".into(), f32s(random(&mut rng, &[vocab, hidden], 1.0)?)?));
    let (q_out, kv_out) = (heads * head_dim, kv_heads * head_dim);
    for i in 0..layers {
        let p = |n: &str| format!("blk.{i}.{n}.weight");
        tensors.push((p("attn_norm"), norm(&mut rng, hidden)?));
        if family == Family::Phi3 {
            tensors.push((p("attn_qkv"), mat(&mut rng, q_out + 2 * kv_out, hidden)?));
        } else {
            tensors.push((p("attn_q"), mat(&mut rng, q_out, hidden)?));
            tensors.push((p("attn_k"), mat(&mut rng, kv_out, hidden)?));
            tensors.push((p("attn_v"), mat(&mut rng, kv_out, hidden)?));
        }
        if family == Family::Qwen2 {
            for (n, len) in [("attn_q", q_out), ("attn_k", kv_out), ("attn_v", kv_out)] {
                tensors.push((format!("blk.{i}.{n}.bias"), f32s(random(&mut rng, &[len], 0.5)?)?));
            }
        }
        if family == Family::Qwen3 {
            tensors.push((p("attn_q_norm"), norm(&mut rng, head_dim)?));
            tensors.push((p("attn_k_norm"), norm(&mut rng, head_dim)?));
        }
        tensors.push((p("attn_output"), mat(&mut rng, hidden, q_out)?));
        tensors.push((p("ffn_norm"), norm(&mut rng, hidden)?));
        if family == Family::Phi3 {
            tensors.push((p("ffn_up"), mat(&mut rng, 2 * ffn, hidden)?));
        } else {
            tensors.push((p("ffn_gate"), mat(&mut rng, ffn, hidden)?));
            tensors.push((p("ffn_up"), mat(&mut rng, ffn, hidden)?));
        }
        tensors.push((p("ffn_down"), mat(&mut rng, hidden, ffn)?));
        if family == Family::Gemma2 {
            // Gemma ties its output layer to the embeddings; post-norms of weight 5 make
            // each layer's part of the residual outweigh the (scaled) input embedding,
            // so the model does not merely repeat its last token.
            let post = |rng: &mut Rng| -> Result<QTensor> {
                let v: Vec<f32> = (0..hidden).map(|_| 5.0 + (rng.next_f64() as f32 * 2.0 - 1.0)).collect();
                f32s(Tensor::from_vec(v, hidden, &Device::Cpu)?)
            };
            tensors.push((p("post_attention_norm"), post(&mut rng)?));
            tensors.push((p("post_ffw_norm"), post(&mut rng)?));
        }
    }
    tensors.push(("output_norm.weight".into(), norm(&mut rng, hidden)?));
    if family == Family::Llama3 {
        // Llama 3.1's shape of divisors: 1 for the fast pairs, up to 8 for the slow ones.
        let pairs = head_dim / 2;
        let f: Vec<f32> = (0..pairs).map(|i| 1.0 + 7.0 * i as f32 / (pairs - 1) as f32).collect();
        tensors.push(("rope_freqs.weight".into(), f32s(Tensor::from_vec(f, pairs, &Device::Cpu)?)?));
    }
    if family != Family::Gemma2 {
        // A separate output layer: tied to the embeddings, a random model repeats its
        // last input token (tied output layers are checked on SmolLM2 and Gemma 3).
        tensors.push(("output.weight".into(), QTensor::quantize(&random(&mut rng, &[vocab, hidden], 1.0)?, ty)?));
    }

    let mut file = std::fs::File::create(path)?;
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &meta_refs, &tensor_refs)?;
    file.sync_all()?;
    Ok(())
}

/// The shape of a model [`write_random_llama`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomShape {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
}

impl RandomShape {
    /// The named shapes: `llama-1b` (Llama 3.2 1B's layers: 2048 wide, 16 layers, 32
    /// query and 8 KV heads, 8192 feed-forward; 1.2 billion parameters with SmolLM2's
    /// vocabulary), `llama-250m` and `tiny` (for tests).
    pub fn named(name: &str) -> Option<Self> {
        Some(match name {
            "llama-1b" => Self { hidden: 2048, layers: 16, heads: 32, kv_heads: 8, ffn: 8192 },
            "llama-250m" => Self { hidden: 1024, layers: 12, heads: 16, kv_heads: 4, ffn: 4096 },
            "tiny" => Self { hidden: 256, layers: 2, heads: 4, kv_heads: 2, ffn: 512 },
            _ => return None,
        })
    }

    pub const NAMES: &'static str = "llama-1b, llama-250m, tiny";
}

/// Writes a Llama-architecture model of `shape` with random weights of type `ty`
/// (embeddings and output layer in Q6_K for the K-quants, else Q8_0, as quantized files
/// of real models hold them), with the tokenizer and chat template of `vocab_from`: a
/// model of realistic size for benchmarks on machines the real files cannot reach.
/// `progress` is told each layer written (of `shape.layers`).
pub fn write_random_llama(
    path: &Path,
    shape: RandomShape,
    ty: GgmlDType,
    vocab_from: &Path,
    seed: u64,
    progress: &mut dyn FnMut(usize),
) -> Result<()> {
    let RandomShape { hidden, layers, heads, kv_heads, ffn } = shape;
    let block = ty.block_size();
    if hidden % heads != 0 || heads % kv_heads != 0 || hidden % block != 0 || ffn % block != 0 {
        return Err(crate::Error::InvalidRequest(format!(
            "shape {shape:?} does not fit {ty:?}: widths must be whole blocks of {block} and heads divide them"
        )));
    }
    let (tokenizer, vocab) = borrowed_tokenizer(vocab_from, None)?;
    let head_dim = hidden / heads;
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.name".into(), Value::String(format!("nave random {hidden}x{layers}"))),
        ("llama.embedding_length".into(), Value::U32(hidden as u32)),
        ("llama.block_count".into(), Value::U32(layers as u32)),
        ("llama.attention.head_count".into(), Value::U32(heads as u32)),
        ("llama.attention.head_count_kv".into(), Value::U32(kv_heads as u32)),
        ("llama.feed_forward_length".into(), Value::U32(ffn as u32)),
        ("llama.context_length".into(), Value::U32(4096)),
        ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(1e-5)),
        ("llama.rope.dimension_count".into(), Value::U32(head_dim as u32)),
        ("llama.rope.freq_base".into(), Value::F32(500_000.0)),
    ];
    meta.extend(tokenizer);
    let outer = match ty {
        GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K => GgmlDType::Q6K,
        _ => GgmlDType::Q8_0,
    };
    let mut rng = Rng::new(seed);
    let f32s = |t: Tensor| -> Result<QTensor> { Ok(QTensor::quantize(&t, GgmlDType::F32)?) };
    let mat = |rng: &mut Rng, out: usize, inp: usize, ty: GgmlDType| -> Result<QTensor> {
        Ok(QTensor::quantize(&random(rng, &[out, inp], (3.0 / inp as f32).sqrt())?, ty)?)
    };
    let ones = |n: usize| f32s(Tensor::ones(n, candle_core::DType::F32, &Device::Cpu)?);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    tensors.push(("token_embd.weight".into(), QTensor::quantize(&random(&mut rng, &[vocab, hidden], 1.0)?, outer)?));
    for i in 0..layers {
        let p = |n: &str| format!("blk.{i}.{n}.weight");
        tensors.push((p("attn_norm"), ones(hidden)?));
        tensors.push((p("attn_q"), mat(&mut rng, hidden, hidden, ty)?));
        tensors.push((p("attn_k"), mat(&mut rng, kv_heads * head_dim, hidden, ty)?));
        tensors.push((p("attn_v"), mat(&mut rng, kv_heads * head_dim, hidden, ty)?));
        tensors.push((p("attn_output"), mat(&mut rng, hidden, hidden, ty)?));
        tensors.push((p("ffn_norm"), ones(hidden)?));
        tensors.push((p("ffn_gate"), mat(&mut rng, ffn, hidden, ty)?));
        tensors.push((p("ffn_up"), mat(&mut rng, ffn, hidden, ty)?));
        tensors.push((p("ffn_down"), mat(&mut rng, hidden, ffn, ty)?));
        progress(i + 1);
    }
    tensors.push(("output_norm.weight".into(), ones(hidden)?));
    // Untied: tied to the embeddings, a random model repeats its last input token.
    tensors.push(("output.weight".into(), mat(&mut rng, vocab, hidden, outer)?));
    let tmp = path.with_extension("gguf.partial");
    let mut file = std::fs::File::create(&tmp)?;
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &meta_refs, &tensor_refs)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
