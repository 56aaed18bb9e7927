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
