//! The tokenizer, built from the GGUF's own metadata (`tokenizer.ggml.*`), so a new model of
//! a supported architecture needs no tokenizer file and no code.
//!
//! Two GGUF tokenizer models are supported:
//! - `gpt2`: byte-level BPE from `tokens` + `merges`, with the pre-tokenizer named by
//!   `tokenizer.ggml.pre`: the names and patterns llama.cpp uses (`llama-bpe`, `qwen2`,
//!   `smollm`, `deepseek-coder`, `deepseek-v3`, `gpt-2`, `starcoder`, `falcon`, `tekken`,
//!   `bloom`, `default`, and the names that share them, [`pre_tokenizer_names`]).
//! - `llama`: SentencePiece-style BPE over "▁"-for-space text with byte fallback; GGUF
//!   stores scores instead of merges, so merges are derived from the scores (a pair merges
//!   if the merged piece is in the vocabulary, higher score first), as SentencePiece does.
//!
//! Control and user-defined tokens (`<|im_start|>`, `<start_of_turn>`) are matched directly
//! in the text, as llama.cpp does for templated prompts.

use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::tokenizer::SplitDelimiterBehavior;
use tokenizers::{AddedToken, Model, TokenizerImpl};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;

const TOKEN_TYPE_CONTROL: u32 = 3;
const TOKEN_TYPE_USER_DEFINED: u32 = 4;

/// Tokens that end an assistant turn in the chat formats we know; any of them present in
/// the vocabulary as a control token stops generation, beside the GGUF's eos/eot ids.
const END_OF_TURN_TEXTS: &[&str] =
    &["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>", "<|end|>", "</s>", "<eos>"];

/// One BPE model (vocabulary and merges: tens of MB for a 262,144-token vocabulary)
/// shared by the tokenizer's two readings of control tokens' text.
#[derive(Clone)]
struct SharedBpe(std::sync::Arc<BPE>);

impl Model for SharedBpe {
    type Trainer = <BPE as Model>::Trainer;

    fn tokenize(&self, sequence: &str) -> tokenizers::Result<Vec<tokenizers::Token>> {
        self.0.tokenize(sequence)
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.0.token_to_id(token)
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.0.id_to_token(id)
    }

    fn get_vocab(&self) -> std::collections::HashMap<String, u32> {
        self.0.get_vocab()
    }

    fn get_vocab_size(&self) -> usize {
        self.0.get_vocab_size()
    }

    fn save(&self, folder: &Path, prefix: Option<&str>) -> tokenizers::Result<Vec<std::path::PathBuf>> {
        self.0.save(folder, prefix)
    }

    fn get_trainer(&self) -> Self::Trainer {
        self.0.get_trainer()
    }
}

type Tokenizer = TokenizerImpl<SharedBpe, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>;

fn tokenizer(bpe: BPE) -> Tokenizer {
    TokenizerImpl::new(SharedBpe(std::sync::Arc::new(bpe)))
}

/// A model's tokenizer plus the ids that matter to generation.
pub struct TextTokenizer {
    inner: Tokenizer,
    /// The same tokenizer reading control tokens' text as plain text (for what users wrote).
    literal: Tokenizer,
    /// Ids of the control tokens.
    control: std::collections::HashSet<u32>,
    tokens: TokenTable,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
    stop_ids: Vec<u32>,
}

impl TextTokenizer {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let path = gguf.path().to_path_buf();
        let bad = |reason: String| Error::model(&path, reason);
        let kind = gguf.string("tokenizer.ggml.model")?;
        let tokens = gguf.strings("tokenizer.ggml.tokens")?;
        let types = gguf.opt_u32s("tokenizer.ggml.token_type").unwrap_or_default();
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();

        let mut inner = match kind.as_str() {
            "gpt2" => {
                let merges = gguf
                    .strings("tokenizer.ggml.merges")?
                    .into_iter()
                    .map(|m| {
                        m.split_once(' ')
                            .map(|(a, b)| (a.to_string(), b.to_string()))
                            .ok_or_else(|| bad(format!("invalid merge entry {m:?}")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let pre = gguf.opt_string("tokenizer.ggml.pre").unwrap_or_else(|| "default".into());
                let (pre_tokenizer, ignore_merges) = gpt2_pre_tokenizer(&pre).map_err(bad)?;
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .ignore_merges(ignore_merges)
                    .build()
                    .map_err(|e| bad(format!("cannot build BPE: {e}")))?;
                let mut tok = tokenizer(bpe);
                tok.with_pre_tokenizer(Some(pre_tokenizer));
                tok.with_decoder(Some(DecoderWrapper::from(ByteLevelDecoder::default())));
                tok
            }
            "llama" => {
                let scores = gguf
                    .opt_f32s("tokenizer.ggml.scores")
                    .ok_or_else(|| bad("tokenizer.ggml.scores missing for a llama tokenizer".into()))?;
                let merges = merges_from_scores(&tokens, &scores, &types);
                let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true);
                if let Some(unk) = gguf.opt_u32("tokenizer.ggml.unknown_token_id") {
                    if let Some(t) = tokens.get(unk as usize) {
                        builder = builder.unk_token(t.clone()).fuse_unk(true);
                    }
                }
                let bpe = builder.build().map_err(|e| bad(format!("cannot build BPE: {e}")))?;
                let mut tok = tokenizer(bpe);
                let add_space_prefix = gguf.opt_bool("tokenizer.ggml.add_space_prefix").unwrap_or(false);
                let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
                if add_space_prefix {
                    normalizers.push(Prepend::new("▁".into()).into());
                }
                normalizers.push(Replace::new(" ", "▁").map_err(|e| bad(format!("normalizer: {e}")))?.into());
                tok.with_normalizer(Some(NormalizerSequence::new(normalizers)))
                    .map_err(|e| bad(format!("normalizer: {e}")))?;
                let mut decoders: Vec<DecoderWrapper> = vec![
                    Replace::new("▁", " ").map_err(|e| bad(format!("decoder: {e}")))?.into(),
                    ByteFallback::default().into(),
                    Fuse::default().into(),
                ];
                if add_space_prefix {
                    decoders.push(Strip::new(' ', 1, 0).into());
                }
                tok.with_decoder(Some(DecoderSequence::new(decoders)));
                tok
            }
            other => return Err(bad(format!("unsupported tokenizer model {other:?}"))),
        };

        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(types.iter())
            .filter(|(_, ty)| **ty == TOKEN_TYPE_CONTROL || **ty == TOKEN_TYPE_USER_DEFINED)
            .map(|(t, ty)| AddedToken::from(t.clone(), *ty == TOKEN_TYPE_CONTROL))
            .collect();
        inner.add_special_tokens(special).map_err(|e| bad(format!("cannot add special tokens: {e}")))?;
        // A clone shares the BPE model (an `Arc`): only the added tokens' tables are copied.
        let mut literal = inner.clone();
        literal.set_encode_special_tokens(true);
        let control =
            types.iter().enumerate().filter(|(_, ty)| **ty == TOKEN_TYPE_CONTROL).map(|(i, _)| i as u32).collect();

        let bos_id = gguf.opt_u32("tokenizer.ggml.bos_token_id");
        let eos_id = gguf.opt_u32("tokenizer.ggml.eos_token_id");
        let add_bos = gguf.opt_bool("tokenizer.ggml.add_bos_token").unwrap_or(false);
        let mut stop_ids: Vec<u32> = eos_id.into_iter().collect();
        if let Some(eot) = gguf.opt_u32("tokenizer.ggml.eot_token_id") {
            stop_ids.push(eot);
        }
        for (id, (text, ty)) in tokens.iter().zip(types.iter()).enumerate() {
            if *ty == TOKEN_TYPE_CONTROL && END_OF_TURN_TEXTS.contains(&text.as_str()) {
                stop_ids.push(id as u32);
            }
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let tokens = TokenTable::new(&tokens);
        Ok(Self { inner, literal, control, tokens, bos_id, eos_id, add_bos, stop_ids })
    }

    /// Token ids of `text`, control tokens matched directly, BOS added when the model asks
    /// for it and the text does not already start with it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(tokenize_error)?;
        Ok(self.with_bos(enc.get_ids().to_vec()))
    }

    /// `ids` with BOS in front when the model asks for it and they do not start with it.
    fn with_bos(&self, mut ids: Vec<u32>) -> Vec<u32> {
        if let (true, Some(bos)) = (self.add_bos, self.bos_id) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        ids
    }

    /// Token ids of a templated prompt whose `spans` are what users wrote: control tokens
    /// come only from the template's text; a control token's text inside a span
    /// (`<|im_start|>system` in a user message) is tokenized as the plain text it is. A
    /// prompt whose spans hold no control token's text is tokenized whole, exactly as
    /// [`Self::encode`] (and llama.cpp) would, in one pass.
    pub fn encode_prompt(&self, text: &str, spans: &[std::ops::Range<usize>]) -> Result<Vec<u32>> {
        let whole = self.inner.encode(text, false).map_err(tokenize_error)?;
        let injected = whole.get_ids().iter().zip(whole.get_offsets()).any(|(id, &(start, end))| {
            self.control.contains(id) && spans.iter().any(|span| start < span.end && end > span.start)
        });
        if !injected {
            return Ok(self.with_bos(whole.get_ids().to_vec()));
        }
        let mut ids = Vec::new();
        let mut pos = 0;
        for span in spans.iter().chain(std::iter::once(&(text.len()..text.len()))) {
            for (part, tok) in [(&text[pos..span.start], &self.inner), (&text[span.clone()], &self.literal)] {
                if !part.is_empty() {
                    ids.extend_from_slice(tok.encode_fast(part, false).map_err(tokenize_error)?.get_ids());
                }
            }
            pos = span.end;
        }
        Ok(self.with_bos(ids))
    }

    /// The id of the control token whose text is `text`.
    pub fn control_id(&self, text: &str) -> Option<u32> {
        self.control.iter().copied().find(|&id| self.token_text(id) == Some(text))
    }

    /// Whether `id` is a control token (only a template may produce one).
    pub fn is_control(&self, id: u32) -> bool {
        self.control.contains(&id)
    }

    /// Text of `ids`, control tokens left out.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize)
    }

    /// The bytes token `id` stands for, as text would hold them (a byte-level or byte
    /// fallback token may be part of a UTF-8 character; "▁" is a space): what the API's
    /// log-probabilities report per token. Empty for an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(text) = self.token_text(id) else { return Vec::new() };
        if let Some(hex) = text.strip_prefix("<0x").and_then(|t| t.strip_suffix('>')) {
            if let (2, Ok(b)) = (hex.len(), u8::from_str_radix(hex, 16)) {
                return vec![b];
            }
        }
        if matches!(self.inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_))) {
            let map = byte_level_chars();
            if let Some(bytes) = text.chars().map(|c| map.get(&c).copied()).collect::<Option<Vec<u8>>>() {
                return bytes;
            }
        }
        text.replace('▁', " ").into_bytes()
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_id.and_then(|id| self.token_text(id))
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_id.and_then(|id| self.token_text(id))
    }

    /// Ids that end generation: eos, eot and the end-of-turn control tokens.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The token that closes an assistant's turn (what a fine-tuned answer ends with):
    /// the chat format's end-of-turn token where it has one, else eos.
    pub fn end_of_turn(&self) -> Option<u32> {
        self.stop_ids.last().copied()
    }

    /// A tokenizer straight from a GGUF file (for tools and tests).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_gguf(&GgufFile::open(path)?)
    }
}

/// The vocabulary's texts in one buffer (a `Vec<String>` of 262,144 tokens holds 14 MB
/// for their 2.3 MB of text).
struct TokenTable {
    text: String,
    ends: Vec<usize>,
}

impl TokenTable {
    fn new(tokens: &[String]) -> Self {
        let mut text = String::with_capacity(tokens.iter().map(String::len).sum());
        let ends = tokens
            .iter()
            .map(|t| {
                text.push_str(t);
                text.len()
            })
            .collect();
        Self { text, ends }
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start..end)
    }
}

/// GPT-2's byte-level alphabet, char -> byte: printable Latin-1 bytes stand for
/// themselves, the others for the code points from U+0100 up, in order.
fn byte_level_chars() -> &'static std::collections::HashMap<char, u8> {
    static MAP: std::sync::OnceLock<std::collections::HashMap<char, u8>> = std::sync::OnceLock::new();
    MAP.get_or_init(|| {
        let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let mut next = 256u32;
        (0..=255u8)
            .map(|b| {
                let c = if printable(b) {
                    b as u32
                } else {
                    next += 1;
                    next - 1
                };
                (char::from_u32(c).expect("code points below U+0200 are chars"), b)
            })
            .collect()
    })
}

/// The split of text before BPE that `tokenizer.ggml.pre` names, as llama.cpp does it: a
/// list of patterns applied one after the other, each cutting every piece so far into its
/// matches and the text between them. (llama.cpp's names; several families share one.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreSplit {
    /// GPT-2's pattern (inside the byte-level step).
    Gpt2,
    /// Digits one by one, then GPT-2's pattern (StarCoder, SmolLM2).
    Starcoder,
    Llama3,
    /// Llama 3's with single digits (Qwen 2 and 2.5, StableLM 2).
    Qwen2,
    DeepseekCoder,
    Deepseek3,
    Falcon,
    Tekken,
    Bloom,
    /// llama.cpp's fallback for a BPE vocabulary without a named pre-tokenizer.
    Default,
}

/// The `tokenizer.ggml.pre` values and the split each names.
const PRE_TOKENIZERS: &[(&str, PreSplit)] = &[
    ("default", PreSplit::Default),
    ("gpt-2", PreSplit::Gpt2),
    ("gpt2", PreSplit::Gpt2),
    ("phi-2", PreSplit::Gpt2),
    ("mpt", PreSplit::Gpt2),
    ("olmo", PreSplit::Gpt2),
    ("jais", PreSplit::Gpt2),
    ("trillion", PreSplit::Gpt2),
    ("starcoder", PreSplit::Starcoder),
    ("refact", PreSplit::Starcoder),
    ("command-r", PreSplit::Starcoder),
    ("smollm", PreSplit::Starcoder),
    ("codeshell", PreSplit::Starcoder),
    ("exaone", PreSplit::Starcoder),
    ("minerva-7b", PreSplit::Starcoder),
    ("llama3", PreSplit::Llama3),
    ("llama-v3", PreSplit::Llama3),
    ("llama-bpe", PreSplit::Llama3),
    ("falcon3", PreSplit::Llama3),
    ("falcon-h1", PreSplit::Llama3),
    ("pixtral", PreSplit::Llama3),
    ("dbrx", PreSplit::Llama3),
    ("smaug-bpe", PreSplit::Llama3),
    ("chatglm-bpe", PreSplit::Llama3),
    ("qwen2", PreSplit::Qwen2),
    ("stablelm2", PreSplit::Qwen2),
    ("deepseek-r1-qwen", PreSplit::Qwen2),
    ("megrez", PreSplit::Qwen2),
    ("deepseek-coder", PreSplit::DeepseekCoder),
    ("deepseek-v3", PreSplit::Deepseek3),
    ("falcon", PreSplit::Falcon),
    ("tekken", PreSplit::Tekken),
    ("poro-chat", PreSplit::Bloom),
    ("bloom", PreSplit::Bloom),
    ("gpt3-finnish", PreSplit::Bloom),
];

/// The names [`TextTokenizer`] accepts in `tokenizer.ggml.pre`.
pub fn pre_tokenizer_names() -> impl Iterator<Item = &'static str> {
    PRE_TOKENIZERS.iter().map(|(n, _)| *n)
}

const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl PreSplit {
    fn patterns(self) -> Vec<&'static str> {
        match self {
            PreSplit::Gpt2 | PreSplit::Starcoder => Vec::new(),
            PreSplit::Llama3 => vec![LLAMA3_PATTERN],
            PreSplit::Qwen2 => vec![QWEN2_PATTERN],
            PreSplit::DeepseekCoder => {
                vec![r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}"]
            }
            PreSplit::Deepseek3 => vec![
                r"\p{N}{1,3}",
                "[一-龥\u{3040}-ゟ゠-ヿ]+",
                r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
            ],
            PreSplit::Falcon => vec![r"[\p{P}\$\+<=>\^~\|`]+", GPT2_PATTERN, "[0-9][0-9][0-9]"],
            PreSplit::Tekken => vec![
                r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)",
            ],
            PreSplit::Bloom => vec![r" ?[^(\s|.,!?…。，、।۔،)]+"],
            PreSplit::Default => {
                vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2_PATTERN, r"\p{N}+", "[0-9][0-9][0-9]"]
            }
        }
    }
}

fn tokenize_error(e: tokenizers::Error) -> Error {
    Error::InvalidRequest(format!("cannot tokenize: {e}"))
}

fn gpt2_pre_tokenizer(pre: &str) -> std::result::Result<(PreTokenizerWrapper, bool), String> {
    let split = PRE_TOKENIZERS.iter().find(|(n, _)| *n == pre).map(|(_, s)| *s).ok_or_else(|| {
        format!("unsupported pre-tokenizer {pre:?} for a gpt2 tokenizer (supported: {})", {
            let names: Vec<&str> = pre_tokenizer_names().collect();
            names.join(", ")
        })
    })?;
    // GPT-2's own pattern lives inside ByteLevel (use_regex); the others are splits in
    // front of a byte-level step that splits no further.
    let pre_tokenizer: PreTokenizerWrapper = match split {
        PreSplit::Gpt2 => ByteLevel::new(false, true, true).into(),
        PreSplit::Starcoder => {
            Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into()
        }
        other => {
            let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
            for pattern in other.patterns() {
                let split = Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)
                    .map_err(|e| format!("pre-tokenizer {pre}: {e}"))?;
                steps.push(split.into());
            }
            steps.push(ByteLevel::new(false, true, false).into());
            Sequence::new(steps).into()
        }
    };
    // llama.cpp takes a whole piece that is itself a token without merging it (Llama 3's
    // tokenizer.json sets ignore_merges).
    Ok((pre_tokenizer, split == PreSplit::Llama3))
}

/// Merges for a SentencePiece vocabulary: every split of a piece into two pieces that are
/// both in the vocabulary is a merge, ranked by the merged piece's score (higher first).
fn merges_from_scores(tokens: &[String], scores: &[f32], types: &[u32]) -> Vec<(String, String)> {
    let index: std::collections::HashMap<&str, usize> =
        tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut ranked: Vec<(f32, usize, usize, String, String)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        let ty = types.get(id).copied().unwrap_or(1);
        if ty != 1 {
            continue;
        }
        let score = scores.get(id).copied().unwrap_or(0.0);
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if let (Some(&l), Some(&r)) = (index.get(left), index.get(right)) {
                ranked.push((score, l, r, left.to_string(), right.to_string()));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked.into_iter().map(|(_, _, _, l, r)| (l, r)).collect()
}
