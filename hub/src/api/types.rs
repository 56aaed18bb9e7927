//! The bodies of every request and response the hub's API reads or writes, as serde
//! types: the handlers parse and build them, and the `nave` command's client reads them,
//! so a renamed field is a compile error on both sides. Unknown fields are ignored when
//! reading (clients send more than Nave uses).

use nave_consensus::state::Limits;
use nave_consensus::RoutingPolicy;
use serde::{Deserialize, Serialize};

// ---- OpenAI: requests ----

/// A message's content: text, or parts (of which the text ones are used), or null.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
    Null(()),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Part {
    #[serde(default)]
    pub text: Option<String>,
}

impl Content {
    pub fn text(self) -> String {
        match self {
            Content::Text(s) => s,
            Content::Parts(p) => p.into_iter().filter_map(|p| p.text).collect::<Vec<_>>().join(""),
            Content::Null(()) => String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    /// An assistant's earlier calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallBody>>,
    /// A `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

// ---- Tools (OpenAI's shape; Ollama's differs only in its calls' arguments) ----

/// A function offered to the model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolBody {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionBody,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionBody {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON schema of the arguments (an object); absent: no arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Value>,
    /// Calls always match `parameters` when forced; Nave takes this and ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// A call, whole or (streamed) in pieces: the first piece has the id, type and name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ToolCallBody {
    /// Streamed chunks only: which call of the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub function: CallBody,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CallBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// JSON text (OpenAI) or a JSON object (Ollama).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// A token count as a client wrote it: a whole number from 1 to
/// [`nave_inference::sampler::MAX_TOKENS`], or an error that names `field` (JSON numbers
/// past 2^64, negative or fractional ones included; the parser's own message would not
/// name the field inside a flattened struct).
fn token_count<'de, D: serde::Deserializer<'de>>(d: D, field: &str) -> Result<Option<usize>, D::Error> {
    use serde::de::Error;
    let max = nave_inference::sampler::MAX_TOKENS as u64;
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => match n.as_u64() {
            Some(x) if (1..=max).contains(&x) => Ok(Some(x as usize)),
            _ => Err(D::Error::custom(format!("{field}: must be a whole number from 1 to {max}, not {n}"))),
        },
        Some(other) => Err(D::Error::custom(format!("{field}: must be a number, not {other}"))),
    }
}

fn max_tokens<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    token_count(d, "max_tokens")
}

fn max_completion_tokens<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    token_count(d, "max_completion_tokens")
}

fn max_output_tokens<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    token_count(d, "max_output_tokens")
}

/// The sampling fields shared by chat and completions.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Sampling {
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "max_tokens")]
    pub max_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "max_completion_tokens")]
    pub max_completion_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    /// llama.cpp's extension: generate past end-of-turn tokens (benchmarks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// Token id (as a string) -> bias added to its logit, -100..=100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    /// OpenAI's opaque end-user id: accepted, not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// Fields of OpenAI's API that Nave does not implement yet. Present (not null), they are
/// a 400 naming the field rather than silently ignored; the values that ask for nothing
/// (`response_format: {"type": "text"}`, `tool_choice: "none"`, an empty `tools`,
/// `modalities: ["text"]`) are accepted.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Unsupported {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_call: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modalities: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_search_options: Option<serde_json::Value>,
}

impl Unsupported {
    /// The first field present that asks for something Nave cannot do, and what it asked.
    pub fn first(&self) -> Option<(&'static str, String)> {
        use serde_json::{json, Value};
        let empty = |v: &Value| v.as_array().is_some_and(Vec::is_empty);
        let asks = [
            ("functions", self.functions.as_ref().filter(|v| !empty(v))),
            ("function_call", self.function_call.as_ref().filter(|v| *v != "none")),
            ("audio", self.audio.as_ref()),
            ("modalities", self.modalities.as_ref().filter(|v| **v != json!(["text"]))),
            ("prediction", self.prediction.as_ref()),
            ("web_search_options", self.web_search_options.as_ref()),
        ];
        asks.into_iter().find_map(|(field, v)| v.map(|v| (field, v.to_string())))
    }
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<InMessage>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Log-probabilities of the output tokens...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// ...with this many alternatives each (0..=20; needs `logprobs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<ToolBody>>,
    /// "none", "auto", "required" or `{"type": "function", "function": {"name": ...}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<serde_json::Value>,
    /// `{"type": "text" | "json_object"}` or `{"type": "json_schema", "json_schema": {"schema": ...}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<serde_json::Value>,
    #[serde(flatten)]
    pub sampling: Sampling,
    #[serde(flatten)]
    pub unsupported: Unsupported,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    One(String),
    Many(Vec<String>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptField,
    #[serde(default)]
    pub stream: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Log-probabilities of every token with this many alternatives (0..=20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<usize>,
    /// The prompt in front of the completion (with its tokens' log-probabilities when
    /// `logprobs` is set, the first token's null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    #[serde(flatten)]
    pub sampling: Sampling,
    #[serde(flatten)]
    pub unsupported: Unsupported,
}

// ---- OpenAI: responses ----

/// A completion, whole (`chat.completion`, `text_completion`) or one streamed chunk of it
/// (`chat.completion.chunk`, `text_completion`): the choices differ by kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Completion<C> {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    /// Names the serving configuration (the Nave version and the model): answers with
    /// the same fingerprint and seed were sampled alike.
    #[serde(default)]
    pub system_fingerprint: String,
    pub choices: Vec<C>,
    /// Always on a whole completion; on a stream, only the last chunk's (with
    /// `stream_options.include_usage`), whose choices are empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageBody>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: String,
}

/// A chat choice's log-probabilities (whole, or those of one chunk's tokens).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
    #[serde(default)]
    pub refusal: Option<Vec<ChatTokenLogprob>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprobBody>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopLogprobBody {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// A text completion's log-probabilities, in the legacy completions shape: per token its
/// text, log-probability (null for a prompt's first token), the most likely alternatives
/// (text -> log-probability, most likely first) and its character offset in the text.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<OrderedLogprobs>>,
    pub text_offset: Vec<usize>,
}

/// Token text -> log-probability, kept in order (a JSON object, most likely first).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrderedLogprobs(pub Vec<(String, f32)>);

impl Serialize for OrderedLogprobs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for OrderedLogprobs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OrderedLogprobs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of token -> log-probability")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = a.next_entry::<String, f32>()? {
                    out.push(e);
                }
                Ok(OrderedLogprobs(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssistantMessage {
    pub role: String,
    /// Null when the answer is only tool calls.
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallBody>>,
}

/// A text completion's choice, whole or streamed (its finish reason only on the last).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TextChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

/// What a chat chunk adds: the role (first chunk), text, or neither (the last).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallBody>>,
}

/// Tokens as OpenAI counts them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageBody {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: CachedTokens,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedTokens {
    pub cached_tokens: usize,
}

impl From<&nave_inference::Usage> for UsageBody {
    fn from(u: &nave_inference::Usage) -> Self {
        UsageBody {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            prompt_tokens_details: CachedTokens { cached_tokens: u.cached_tokens },
        }
    }
}

/// An event of a chat stream as a client reads it: a chunk, or the error that ended it.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ChatStreamEvent {
    Error(ErrorEnvelope),
    Chunk(Completion<ChatChunkChoice>),
}

/// Every error, in OpenAI's shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: String,
}

// ---- Ollama: requests ----

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct OllamaOptions {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub num_predict: Option<i64>,
    pub stop: Option<Vec<String>>,
    pub repeat_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OllamaMessage {
    pub role: String,
    #[serde(default)]
    pub content: String,
    /// Not supported (no vision models yet): present and non-empty, a 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<serde_json::Value>,
    /// An assistant's calls: `{"function": {"name": ..., "arguments": {...}}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallBody>>,
    /// A `tool` message: the function whose result it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
}

impl OllamaMessage {
    pub fn assistant(content: String) -> Self {
        Self { role: "assistant".into(), content, images: None, tool_calls: None, tool_name: None }
    }
}

/// Ollama's fields that Nave does not implement yet: present (and asking for something),
/// a 400 naming the field.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct OllamaUnsupported {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<serde_json::Value>,
    /// A Go template to use instead of the model's (Nave renders the model's own Jinja
    /// template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<serde_json::Value>,
    /// The deprecated token context of a previous /api/generate answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<serde_json::Value>,
}

impl OllamaUnsupported {
    /// The first field present that asks for something Nave cannot do, and what it asked.
    pub fn first(&self) -> Option<(&'static str, String)> {
        use serde_json::Value;
        fn asks(v: &Option<Value>) -> Option<&Value> {
            v.as_ref().filter(|v| !(v.as_str() == Some("") || v.as_array().is_some_and(Vec::is_empty)))
        }
        [("images", asks(&self.images)), ("template", asks(&self.template)), ("context", asks(&self.context))]
            .into_iter()
            .find_map(|(field, v)| v.map(|v| (field, v.to_string())))
    }
}

/// `POST /api/chat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OllamaChat {
    pub model: String,
    pub messages: Vec<OllamaMessage>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub options: Option<OllamaOptions>,
    /// `"json"` or a JSON schema: the answer is JSON (matching it).
    #[serde(default)]
    pub format: Option<serde_json::Value>,
    #[serde(default)]
    pub tools: Option<Vec<ToolBody>>,
    #[serde(flatten)]
    pub unsupported: OllamaUnsupported,
}

/// `POST /api/generate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OllamaGenerate {
    pub model: String,
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub system: Option<String>,
    /// The prompt as it is, without the model's chat template.
    #[serde(default)]
    pub raw: Option<bool>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub options: Option<OllamaOptions>,
    /// `"json"` or a JSON schema: the answer is JSON (matching it).
    #[serde(default)]
    pub format: Option<serde_json::Value>,
    #[serde(flatten)]
    pub unsupported: OllamaUnsupported,
}

/// `POST /api/show` (Ollama's clients send `model`; older ones `name`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OllamaShowRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// Also the long arrays of the metadata (the vocabulary, the merges).
    #[serde(default)]
    pub verbose: Option<bool>,
}

/// `POST /api/show`: what the model's GGUF says of itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OllamaShow {
    pub modelfile: String,
    /// The sampling defaults Nave applies to Ollama requests, one `name value` a line.
    pub parameters: String,
    /// The model's chat template (Jinja, from the GGUF; Nave renders it itself).
    pub template: String,
    pub details: OllamaDetails,
    pub model_info: serde_json::Map<String, serde_json::Value>,
    pub capabilities: Vec<String>,
    pub modified_at: String,
}

/// `GET /api/ps`: the models running, where and how large.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OllamaPs {
    pub models: Vec<OllamaRunning>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OllamaRunning {
    pub name: String,
    pub model: String,
    /// Bytes of the model's weights (its GGUF file).
    pub size: u64,
    pub digest: String,
    pub details: OllamaDetails,
    /// Models stay loaded while their spokes run: no expiry.
    pub expires_at: String,
    /// Bytes on GPUs (Nave's spokes serve from CPU memory unless a device says otherwise).
    pub size_vram: u64,
    pub context_length: Option<u64>,
    /// Nave's addition: the spokes serving it, with their load and memory.
    pub spokes: Vec<OllamaSpoke>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OllamaSpoke {
    pub id: String,
    pub state: String,
    pub running: usize,
    pub queue: usize,
    pub serving_used: u64,
    pub serving_total: u64,
    pub kv_blocks_free: usize,
    pub kv_blocks_total: usize,
}

// ---- Ollama: responses ----

/// One line of an Ollama answer (the whole answer when not streamed): text so far, or,
/// with `done`, the last one with the counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OllamaLine {
    pub model: String,
    pub created_at: String,
    pub done: bool,
    /// `/api/chat`'s text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<OllamaMessage>,
    /// `/api/generate`'s text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_reason: Option<String>,
    /// Nanoseconds from admission to the last token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_duration: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_eval_count: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_count: Option<usize>,
}

/// The line that ends an Ollama stream that failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OllamaError {
    pub error: String,
}

/// `GET /api/tags`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OllamaTags {
    pub models: Vec<OllamaModel>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OllamaModel {
    pub name: String,
    pub model: String,
    pub modified_at: String,
    pub size: u64,
    pub digest: String,
    pub details: OllamaDetails,
    pub path: std::path::PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OllamaDetails {
    #[serde(default)]
    pub parent_model: String,
    pub format: String,
    pub family: String,
    #[serde(default)]
    pub families: Vec<String>,
    /// "135M", from the GGUF's size label or its tensors.
    #[serde(default)]
    pub parameter_size: String,
    /// The file's type ("Q4_1", "Q4_K_M").
    #[serde(default)]
    pub quantization_level: String,
}

/// `GET /api/version`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OllamaVersion {
    pub version: String,
}

// ---- Responses ----

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ResponsesInput {
    Text(String),
    Items(Vec<InputItem>),
}

/// An item of a Responses `input`: a message (`type` "message", or none), a call the
/// model made earlier (`function_call`, as an answer's output gave it), or a call's result
/// (`function_call_output`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InputItem {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A message's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    /// A call's and a result's: which call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// A call's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A call's: JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<serde_json::Value>,
    /// A result's: text, or parts of which the text ones are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Content>,
}

/// A function offered on the Responses API: chat's `function`, flat beside its `type`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponsesTool {
    #[serde(rename = "type")]
    pub kind: String,
    /// Absent on the tools Nave does not have (`web_search`, `file_search`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

fn default_true() -> bool {
    true
}

/// `POST /v1/responses`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponsesRequest {
    pub model: String,
    pub input: ResponsesInput,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default = "default_true")]
    pub store: bool,
    #[serde(default)]
    pub stream: bool,
    #[serde(default, deserialize_with = "max_output_tokens")]
    pub max_output_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    /// OpenAI's opaque end-user id: accepted, not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<ResponsesTool>>,
    /// "none", "auto", "required" or `{"type": "function", "name": ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<serde_json::Value>,
    /// `{"format": ...}`: `{"type": "text" | "json_object"}` or
    /// `{"type": "json_schema", "name", "schema", "strict"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<serde_json::Value>,
}

/// One event of a streamed response (`POST /v1/responses` with `stream: true`), in
/// OpenAI's order: created, in_progress, then per output item output_item.added, its
/// content (a message's content_part.added, output_text.delta..., output_text.done,
/// content_part.done; a function call's function_call_arguments.delta...,
/// function_call_arguments.done), output_item.done; then completed (or incomplete when
/// cut by `max_output_tokens`); `error` if it fails. Every event's `sequence_number` is
/// one more than the one before.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ResponseStreamEvent {
    #[serde(rename = "response.created")]
    Created { sequence_number: u64, response: ResponseObject },
    #[serde(rename = "response.in_progress")]
    InProgress { sequence_number: u64, response: ResponseObject },
    #[serde(rename = "response.output_item.added")]
    OutputItemAdded { sequence_number: u64, output_index: u32, item: OutputItem },
    #[serde(rename = "response.content_part.added")]
    ContentPartAdded { sequence_number: u64, item_id: String, output_index: u32, content_index: u32, part: OutputText },
    #[serde(rename = "response.output_text.delta")]
    OutputTextDelta {
        sequence_number: u64,
        item_id: String,
        output_index: u32,
        content_index: u32,
        delta: String,
        logprobs: Vec<serde_json::Value>,
    },
    #[serde(rename = "response.output_text.done")]
    OutputTextDone {
        sequence_number: u64,
        item_id: String,
        output_index: u32,
        content_index: u32,
        text: String,
        logprobs: Vec<serde_json::Value>,
    },
    #[serde(rename = "response.content_part.done")]
    ContentPartDone { sequence_number: u64, item_id: String, output_index: u32, content_index: u32, part: OutputText },
    #[serde(rename = "response.function_call_arguments.delta")]
    FunctionCallArgumentsDelta { sequence_number: u64, item_id: String, output_index: u32, delta: String },
    #[serde(rename = "response.function_call_arguments.done")]
    FunctionCallArgumentsDone { sequence_number: u64, item_id: String, output_index: u32, arguments: String },
    #[serde(rename = "response.output_item.done")]
    OutputItemDone { sequence_number: u64, output_index: u32, item: OutputItem },
    #[serde(rename = "response.completed")]
    Completed { sequence_number: u64, response: ResponseObject },
    #[serde(rename = "response.incomplete")]
    Incomplete { sequence_number: u64, response: ResponseObject },
    #[serde(rename = "error")]
    Error { sequence_number: u64, code: Option<String>, message: String, param: Option<String> },
}

impl ResponseStreamEvent {
    /// The event's name, as its SSE `event:` line carries it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Created { .. } => "response.created",
            Self::InProgress { .. } => "response.in_progress",
            Self::OutputItemAdded { .. } => "response.output_item.added",
            Self::ContentPartAdded { .. } => "response.content_part.added",
            Self::OutputTextDelta { .. } => "response.output_text.delta",
            Self::OutputTextDone { .. } => "response.output_text.done",
            Self::ContentPartDone { .. } => "response.content_part.done",
            Self::FunctionCallArgumentsDelta { .. } => "response.function_call_arguments.delta",
            Self::FunctionCallArgumentsDone { .. } => "response.function_call_arguments.done",
            Self::OutputItemDone { .. } => "response.output_item.done",
            Self::Completed { .. } => "response.completed",
            Self::Incomplete { .. } => "response.incomplete",
            Self::Error { .. } => "error",
        }
    }
}

/// `DELETE /v1/responses/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletedResponse {
    pub id: String,
    pub object: String,
    pub deleted: bool,
}

/// A stored response, as `POST /v1/responses` and `GET /v1/responses/{id}` answer it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseObject {
    pub id: String,
    pub object: String,
    pub created_at: u64,
    pub status: String,
    pub model: String,
    pub previous_response_id: Option<String>,
    pub error: Option<serde_json::Value>,
    pub incomplete_details: Option<serde_json::Value>,
    pub output: Vec<OutputItem>,
    pub usage: ResponseUsage,
}

/// An item of a response's output: the answer's text, or a call of one of the request's
/// functions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum OutputItem {
    #[serde(rename = "message")]
    Message { id: String, status: String, role: String, content: Vec<OutputText> },
    #[serde(rename = "function_call")]
    FunctionCall {
        id: String,
        call_id: String,
        name: String,
        /// JSON text.
        arguments: String,
        status: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputText {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
    pub annotations: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub input_tokens_details: CachedTokens,
    pub output_tokens_details: ReasoningTokens,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReasoningTokens {
    pub reasoning_tokens: u64,
}

// ---- Admin: requests ----

/// `POST /admin/v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewKey {
    pub name: String,
    #[serde(default)]
    pub rpm: Option<u32>,
    #[serde(default)]
    pub tpm: Option<u64>,
    #[serde(default)]
    pub daily_tokens: Option<u64>,
    /// Requests the key may run at once over the cluster; absent: the cluster's
    /// `key_max_concurrent`; 0: no limit.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
}

/// `POST /admin/v1/spokes/{id}/drain` (an empty body drains).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct DrainRequest {
    #[serde(default)]
    pub undo: bool,
}

/// `POST /admin/v1/tokens` (an empty body takes the defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    #[serde(default = "NewToken::default_ttl")]
    pub ttl_s: u64,
    #[serde(default = "NewToken::default_uses")]
    pub uses: u32,
}

impl NewToken {
    fn default_ttl() -> u64 {
        3600
    }
    fn default_uses() -> u32 {
        1
    }
}

impl Default for NewToken {
    fn default() -> Self {
        NewToken { ttl_s: Self::default_ttl(), uses: Self::default_uses() }
    }
}

/// `POST /admin/v1/hubs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewHub {
    pub id: String,
    /// Its QUIC address; optional for a hub this hub's cluster.toml lists.
    #[serde(default)]
    pub quic: Option<std::net::SocketAddr>,
}

/// `POST /admin/v1/train`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSubmit {
    pub name: String,
    pub model: String,
    /// Chat examples, one JSON object per line.
    pub data: String,
    pub spoke: Option<String>,
    pub rank: Option<usize>,
    pub alpha: Option<f32>,
    pub steps: Option<usize>,
    pub lr: Option<f64>,
    /// "attention" (default) or "all" (with the MLP).
    pub targets: Option<String>,
    pub batch: Option<usize>,
    pub max_tokens: Option<usize>,
    pub seed: Option<u64>,
}

// ---- Admin: responses ----

/// `GET /admin/v1/status`: what `nave admin status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The hub that answered.
    pub hub: String,
    pub leader: Option<String>,
    pub term: u64,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub hubs: Vec<HubStatus>,
    pub spokes: Vec<SpokeStatus>,
    pub models: Vec<ModelStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HubStatus {
    pub id: String,
    pub http: Option<String>,
    pub quic: String,
    /// "leader" or "follower".
    pub role: String,
    /// Entries behind the leader's log (on the leader only).
    pub lag: Option<u64>,
    /// The Raft figures of the hub that answered, on its own row only.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub own: Option<OwnRaft>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwnRaft {
    pub term: u64,
    pub applied_index: Option<u64>,
    pub last_log_index: Option<u64>,
    pub raft_state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpokeStatus {
    pub id: String,
    pub models: Vec<String>,
    pub state: String,
    pub circuit: String,
    pub queue: usize,
    pub running: usize,
    pub tokens_per_s: f64,
    pub kv_blocks_free: usize,
    pub kv_blocks_total: usize,
    pub serving_used: u64,
    pub serving_total: u64,
    pub training_used: u64,
    pub training_total: u64,
    pub last_heard_ms: Option<u64>,
    pub joined: bool,
    /// Entries its replica is behind the leader's log (on the leader only).
    pub replica_lag: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelStatus {
    pub model: String,
    pub routing: RoutingPolicy,
    /// The active spokes serving it.
    pub spokes: Vec<String>,
}

/// An API key as the admin API lists it (never the key itself).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyView {
    pub name: String,
    pub limits: Limits,
    pub revoked: bool,
    pub created_ms: u64,
    pub tokens_today: u64,
    pub reserved: u64,
    pub total_tokens: u64,
    pub total_requests: u64,
    /// Its requests running now, over the cluster.
    pub in_flight: u32,
    pub stored_responses: u32,
    pub stored_bytes: u64,
}

impl From<&nave_consensus::state::ApiKey> for KeyView {
    fn from(k: &nave_consensus::state::ApiKey) -> Self {
        KeyView {
            name: k.name.clone(),
            limits: k.limits.clone(),
            revoked: k.revoked,
            created_ms: k.created_ms,
            tokens_today: k.day_used,
            reserved: k.reserved,
            total_tokens: k.total_tokens,
            total_requests: k.total_requests,
            in_flight: k.in_flight,
            stored_responses: k.stored_count,
            stored_bytes: k.stored_bytes,
        }
    }
}

/// `GET /admin/v1/audit`: the newest entries first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditList {
    pub entries: Vec<AuditRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRow {
    pub at_ms: u64,
    /// UTC, RFC 3339.
    pub at: String,
    pub actor: String,
    pub what: String,
}

/// `GET /admin/v1/usage` (every key, or `?key=NAME`) and `GET /v1/usage` (the caller's own):
/// tokens by UTC day, key and model, newest day first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageList {
    pub usage: Vec<UsageRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageRow {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    pub key: String,
    pub model: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl UsageRow {
    /// The rows of one key, newest day first, at most `days` days.
    pub fn of(k: &nave_consensus::state::ApiKey, days: usize) -> Vec<UsageRow> {
        k.usage
            .iter()
            .rev()
            .take(days)
            .flat_map(|(day, models)| {
                models.iter().map(move |(model, u)| UsageRow {
                    day: nave_consensus::clock::rfc3339(day.saturating_mul(86_400))[..10].to_string(),
                    key: k.name.clone(),
                    model: model.clone(),
                    requests: u.requests,
                    prompt_tokens: u.prompt_tokens,
                    completion_tokens: u.completion_tokens,
                    total_tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
                })
            })
            .collect()
    }
}

/// `GET /admin/v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

/// `POST /admin/v1/keys`: the key, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedKey {
    pub name: String,
    pub key: String,
    pub limits: Limits,
}

/// `DELETE /admin/v1/keys/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokedKey {
    pub name: String,
    pub revoked: bool,
}

/// `POST /admin/v1/tokens`: the token, shown this once, and the command that uses it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: String,
    pub ttl_s: u64,
    pub uses: u32,
    pub hub_quic: String,
    pub join: String,
}

/// `POST /admin/v1/spokes/{id}/drain`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Drained {
    pub spoke: String,
    pub draining: bool,
    /// Requests running or waiting on it.
    pub in_flight: usize,
}

/// `DELETE /admin/v1/spokes/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemovedSpoke {
    pub spoke: String,
    pub removed: bool,
}

/// `GET /admin/v1/hubs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HubList {
    pub hubs: Vec<VotingHub>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VotingHub {
    pub id: String,
    pub raft_id: u64,
    pub quic: String,
    pub leader: bool,
}

/// `POST /admin/v1/hubs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddedHub {
    pub hub: String,
    pub raft_id: u64,
    pub quic: String,
    pub voter: bool,
}

/// `DELETE /admin/v1/hubs/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemovedHub {
    pub hub: String,
    pub removed: bool,
}

/// `GET /admin/v1/train`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<nave_spoke::protocol::JobStatus>,
}

/// `POST /admin/v1/train`, `DELETE /admin/v1/train/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobAnswer {
    pub job: Option<nave_spoke::protocol::JobStatus>,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelEntry {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

/// `POST /admin/v1/restore`: what the restored state came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Restored {
    pub from_cluster: String,
    pub taken_ms: u64,
    pub log_index: u64,
    pub keys: usize,
    pub spokes: usize,
}
