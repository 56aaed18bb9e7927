//! The engine: one thread owns the model and the KV pool and runs continuous batching.
//!
//! Requests arrive through a bounded queue ([`Engine::submit`] fails with `QueueFull`
//! rather than wait); each gets an unbounded stream of [`Event`]s (a sequence produces
//! at most `max_tokens` events, so the stream is bounded by the request). Every step:
//! 1. new requests are tokenized and queued; streams whose receiver was dropped are
//!    cancelled and their blocks freed;
//! 2. the scheduler gives each running sequence its uncomputed tokens (one for a decode,
//!    a chunk for a prefill) within a per-step token budget, so long prompts are prefilled
//!    in chunks while decodes keep flowing; waiting sequences join in arrival order when
//!    their blocks fit (after taking any cached prefix);
//! 3. when a running sequence needs a block and the pool is empty, the most recently
//!    admitted sequence is preempted: its blocks are released and it re-enters the queue's
//!    front with everything it generated, to be recomputed later (never failed);
//! 4. one forward pass runs all scheduled rows; sequences that finished their chunk
//!    sample a token and stream its text.
//!
//! A request for `n` choices becomes `n` sequences. The first prefills the prompt; the
//! others wait beside it until its prompt is computed, then join the queue's front and take
//! the prompt's full blocks from the prefix cache, so the prompt is prefilled once (their
//! `cached_tokens` say how much they took). Each choice's events carry its index; the
//! request's stream ends after one `Done` per choice.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::detok::{Detokenizer, Step};
use crate::error::{Error, Result};
use crate::grammar::{Grammars, Guide};
use crate::kv::{prefix_hashes, BlockId, BlockPool, KvStore};
use crate::ledger::{Ledger, Partition, Reservation};
use crate::model::{Pooling, Row, ServingAdapter};
use crate::sampler::{logprobs, Sampler, SamplingParams, TokenLogprob};
use crate::template::ChatMessage;
use crate::tools::{Parsed, ToolCall, ToolParser};
use crate::LoadedModel;

/// Sizes of the engine's queues and pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// Bytes of the KV pool (taken from the serving partition at start).
    pub kv_pool_bytes: u64,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Tokens one forward pass may take (decodes plus prefill chunks).
    pub max_batch_tokens: usize,
    /// Sequences running at once.
    pub max_running: usize,
    /// Requests waiting for the engine thread before `submit` refuses.
    pub queue_capacity: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { kv_pool_bytes: 256 << 20, block_size: 16, max_batch_tokens: 256, max_running: 64, queue_capacity: 256 }
    }
}

/// What to generate from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Prompt {
    Text(String),
    Chat(Vec<ChatMessage>),
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// The request id (for logs; correlates with the hub's X-Request-Id).
    pub request_id: String,
    pub prompt: Prompt,
    pub params: SamplingParams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// An end-of-turn token or a stop string.
    Stop,
    /// `max_tokens` or the context length.
    Length,
    /// The output called one or more tools.
    ToolCalls,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose prefill was skipped thanks to the prefix cache.
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// New text of choice `choice` and the tokens that produced it (text may be empty
    /// while a stop string or a UTF-8 character is incomplete), with their
    /// log-probabilities when the request asked for them (one per token).
    Delta { choice: u32, text: String, tokens: Vec<u32>, logprobs: Vec<TokenLogprob> },
    /// The log-probabilities of the next prompt tokens, in order, when the request asked
    /// for them (`prompt_logprobs`): sent before the first `Delta`, one event per prefill
    /// chunk (so a frame stays bounded by the batch's token budget).
    Prompt { logprobs: Vec<TokenLogprob> },
    /// The prompt's embedding (`SamplingParams::embed`), sent before its `Done`.
    Embedding { vector: Vec<f32> },
    /// Choice `choice` called a tool: the `index`-th call of its output, complete. Text
    /// that was part of the call is not in any `Delta`. If the call started
    /// (`ToolCallStart`), its arguments are those its `ToolCallArguments` added up to.
    ToolCall { choice: u32, index: u32, call: ToolCall },
    /// Choice `choice` ended; its usage counts the prompt and that choice's tokens. The
    /// stream ends after the `Done` of every choice.
    Done { choice: u32, finish: FinishReason, usage: Usage },
    /// The request failed; `client` says whether it was the request's fault.
    Error { message: String, client: bool },
    /// Choice `choice` began its `index`-th call, as the model writes it: its id and name.
    /// Its arguments follow (`ToolCallArguments`), then the `ToolCall` of the same index
    /// that completes it. A call that turns out malformed gets no `ToolCall`: its text
    /// comes in a `Delta` instead.
    ToolCallStart { choice: u32, index: u32, id: String, name: String },
    /// The next piece of the arguments of call `index` of choice `choice` (JSON text).
    ToolCallArguments { choice: u32, index: u32, arguments: String },
}

pub type EventStream = UnboundedReceiver<Event>;

/// The most prompt tokens one `Event::Prompt` carries: with 20 alternatives of at most
/// 128 bytes each, well inside the hub-spoke protocol's 4 MiB frame whatever the batch's
/// token budget.
pub const PROMPT_LOGPROBS_PER_EVENT: usize = 256;

/// Figures the engine keeps up to date for heartbeats and metrics.
#[derive(Debug, Default)]
pub struct EngineGauges {
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    pub kv_blocks_total: AtomicUsize,
    pub kv_blocks_free: AtomicUsize,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub preemptions: AtomicU64,
    pub steps: AtomicU64,
    pub batch_rows: AtomicU64,
}

/// A snapshot of [`EngineGauges`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStats {
    pub waiting: usize,
    pub running: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_free: usize,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub cached_tokens: u64,
    pub preemptions: u64,
    pub steps: u64,
    pub batch_rows: u64,
}

enum Msg {
    Request(GenerateRequest, Option<Arc<ServingAdapter>>, UnboundedSender<Event>),
}

/// Handle to the engine thread; dropping it stops the thread after the queue drains.
pub struct Engine {
    tx: Option<SyncSender<Msg>>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    gauges: Arc<EngineGauges>,
    model_name: String,
    context: usize,
    prompt_overhead: Option<(usize, usize)>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// LoRA adapters requests may name, by name.
    adapters: std::sync::RwLock<std::collections::BTreeMap<String, Arc<ServingAdapter>>>,
    config: crate::model::ModelConfig,
}

impl Engine {
    /// Starts the engine thread. The KV pool is reserved from the ledger's serving
    /// partition (after the model's weights); too small a partition is an error here.
    pub fn start(model: LoadedModel, config: EngineConfig, ledger: &Ledger) -> Result<Self> {
        let c = model.transformer.config.clone();
        let weights = ledger.reserve(Partition::Serving, model.transformer.weight_bytes())?;
        let per_block = (KvStore::bytes_per_token(c.layers, c.kv_dim()) * config.block_size) as u64;
        let num_blocks = (config.kv_pool_bytes / per_block) as usize;
        if num_blocks < 2 {
            return Err(Error::InvalidRequest(format!(
                "kv_pool_bytes {} holds fewer than 2 blocks of {per_block} bytes",
                config.kv_pool_bytes
            )));
        }
        let pool_reservation = ledger.reserve(Partition::Serving, num_blocks as u64 * per_block)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(config.queue_capacity);
        let gauges = Arc::new(EngineGauges::default());
        gauges.kv_blocks_total.store(num_blocks, Ordering::Relaxed);
        gauges.kv_blocks_free.store(num_blocks, Ordering::Relaxed);
        let queued = Arc::new(AtomicUsize::new(0));
        let model_name = model.name.clone();
        let context = c.context;
        let prompt_overhead = model.prompt_overhead();
        let worker = Worker {
            kv: model.transformer.new_kv(num_blocks, config.block_size)?,
            pool: BlockPool::new(num_blocks, config.block_size),
            model,
            config: config.clone(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            gauges: gauges.clone(),
            queued: queued.clone(),
            next_id: 0,
            grammars: None,
            logits: Vec::new(),
            _reservations: [weights, pool_reservation],
        };
        let thread =
            std::thread::Builder::new().name("nave-engine".into()).spawn(move || worker.run(rx)).map_err(Error::Io)?;
        Ok(Self {
            tx: Some(tx),
            queued,
            capacity: config.queue_capacity,
            gauges,
            model_name,
            context,
            prompt_overhead,
            thread: Some(thread),
            adapters: Default::default(),
            config: c,
        })
    }

    /// Makes `adapter` available to requests as `name` (replacing one of that name).
    pub fn add_adapter(&self, name: &str, adapter: &crate::train::Adapter) -> Result<()> {
        let serving = ServingAdapter::new(name, adapter, &self.config)?;
        self.adapters.write().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), Arc::new(serving));
        Ok(())
    }

    /// The names of the adapters this engine serves.
    pub fn adapters(&self) -> Vec<String> {
        self.adapters.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// Queues a request; its events arrive on the returned stream. Dropping the stream
    /// cancels the request and frees its memory.
    pub fn submit(&self, req: GenerateRequest) -> Result<EventStream> {
        self.submit_with(req, None)
    }

    /// Like [`Engine::submit`], with the LoRA adapter `adapter` applied (by name).
    pub fn submit_with(&self, req: GenerateRequest, adapter: Option<&str>) -> Result<EventStream> {
        let adapter = match adapter {
            None => None,
            Some(name) => {
                Some(self.adapters.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned().ok_or_else(|| {
                    Error::InvalidRequest(format!("model {} has no adapter {name:?}", self.model_name))
                })?)
            }
        };
        req.params.validate()?;
        let (etx, erx) = unbounded_channel();
        let tx = self.tx.as_ref().ok_or(Error::EngineStopped)?;
        self.queued.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(Msg::Request(req, adapter, etx)) {
            Ok(()) => Ok(erx),
            Err(TrySendError::Full(_)) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                Err(Error::QueueFull(self.capacity))
            }
            Err(TrySendError::Disconnected(_)) => Err(Error::EngineStopped),
        }
    }

    pub fn stats(&self) -> EngineStats {
        let g = &self.gauges;
        EngineStats {
            waiting: g.waiting.load(Ordering::Relaxed) + self.queued.load(Ordering::Relaxed),
            running: g.running.load(Ordering::Relaxed),
            kv_blocks_total: g.kv_blocks_total.load(Ordering::Relaxed),
            kv_blocks_free: g.kv_blocks_free.load(Ordering::Relaxed),
            prompt_tokens: g.prompt_tokens.load(Ordering::Relaxed),
            generated_tokens: g.generated_tokens.load(Ordering::Relaxed),
            cached_tokens: g.cached_tokens.load(Ordering::Relaxed),
            preemptions: g.preemptions.load(Ordering::Relaxed),
            steps: g.steps.load(Ordering::Relaxed),
            batch_rows: g.batch_rows.load(Ordering::Relaxed),
        }
    }

    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    pub fn context_length(&self) -> usize {
        self.context
    }

    /// See [`LoadedModel::prompt_overhead`].
    pub fn prompt_overhead(&self) -> Option<(usize, usize)> {
        self.prompt_overhead
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Sequence {
    id: u64,
    request_id: String,
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens whose keys and values are in the pool.
    computed: usize,
    blocks: Vec<BlockId>,
    /// Full blocks registered in the prefix cache, and the hash of the last one.
    registered: usize,
    last_hash: u64,
    /// Where the prefix-cache hash chain starts: 0, or the adapter's (keys and values
    /// computed with an adapter are not the base model's).
    hash_seed: u64,
    adapter: Option<Arc<ServingAdapter>>,
    max_tokens: usize,
    sampler: Sampler,
    detok: Detokenizer,
    tx: UnboundedSender<Event>,
    cached_tokens: usize,
    /// Which of the request's choices this is.
    choice: u32,
    /// Prompt tokens whose log-probabilities were sent, while the request wants them
    /// (`None` otherwise, or once all are sent).
    prompt_logprobs: Option<usize>,
    /// The request's other choices, waiting until this one's prompt is computed.
    followers: Vec<Sequence>,
    /// Where the output is in its grammar, when the request constrains it.
    guide: Option<Guide>,
    /// Reads tool calls out of the output, when the request offers tools.
    tool_parser: Option<ToolParser>,
    /// Calls made so far.
    calls: u32,
    /// An embedding's pooled hidden states so far (the sum, for mean pooling).
    embedding: Option<Vec<f64>>,
}

impl Sequence {
    /// Streams new output text with the tokens behind it: as it is, or through the tool
    /// parser (text as deltas, calls as they start, their arguments as they come, then
    /// complete as `ToolCall`s, all in the output's order); `end` flushes the parser.
    fn send_text(&mut self, text: String, tokens: Vec<u32>, logprobs: Vec<TokenLogprob>, end: bool) {
        let choice = self.choice;
        let Some(parser) = &mut self.tool_parser else {
            if !text.is_empty() || !tokens.is_empty() {
                let _ = self.tx.send(Event::Delta { choice, text, tokens, logprobs });
            }
            return;
        };
        let mut parsed = parser.push(&text);
        if end {
            parsed.extend(parser.finish());
        }
        let format = parser.format();
        // The tokens go with the first delta (text or not), text before the calls it
        // precedes.
        let mut tokens = Some((tokens, logprobs));
        let mut plain = String::new();
        let tx = &self.tx;
        let delta = |plain: &mut String, tokens: &mut Option<(Vec<u32>, Vec<TokenLogprob>)>| {
            let (tokens, logprobs) = tokens.take().unwrap_or_default();
            if !plain.is_empty() || !tokens.is_empty() {
                let _ = tx.send(Event::Delta { choice, text: std::mem::take(plain), tokens, logprobs });
            }
        };
        let mut seed = None;
        let request_id = &self.request_id;
        let mut id = |index: u32| {
            let seed = *seed.get_or_insert_with(|| {
                request_id.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ choice as u64, |h, b| {
                    (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
                })
            });
            format.call_id(seed, index as usize)
        };
        for p in parsed {
            let event = match p {
                Parsed::Text(t) => {
                    plain.push_str(&t);
                    continue;
                }
                Parsed::CallStart { index, name } => Event::ToolCallStart { choice, index, id: id(index), name },
                Parsed::Arguments { index, piece } => Event::ToolCallArguments { choice, index, arguments: piece },
                Parsed::Call { index, name, arguments } => {
                    self.calls += 1;
                    Event::ToolCall { choice, index, call: ToolCall { id: id(index), name, arguments } }
                }
            };
            delta(&mut plain, &mut tokens);
            let _ = tx.send(event);
        }
        delta(&mut plain, &mut tokens);
    }

    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Whether the logits after position `p` are needed for a prompt log-probability
    /// still to send (those of the token at `p + 1`).
    fn wants_prompt_logits(&self, p: usize) -> bool {
        self.prompt_logprobs.is_some_and(|sent| p + 1 < self.prompt_len && p + 1 >= sent.max(1))
    }
}

struct Worker {
    model: LoadedModel,
    config: EngineConfig,
    kv: KvStore,
    pool: BlockPool,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    gauges: Arc<EngineGauges>,
    queued: Arc<AtomicUsize>,
    next_id: u64,
    /// The model's grammar compiler, built on the first constrained request.
    grammars: Option<Grammars>,
    /// The logits buffer, kept from step to step (its pages stay mapped).
    logits: Vec<f32>,
    _reservations: [Reservation; 2],
}

impl Worker {
    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(msg) => self.intake(msg),
                    Err(_) => return,
                }
            }
            while let Ok(msg) = rx.try_recv() {
                self.intake(msg);
            }
            self.drop_cancelled();
            if let Err(e) = self.step() {
                // A failed forward pass fails the sequences in it, not the engine.
                tracing::error!(error = %e, "engine step failed");
                for seq in std::mem::take(&mut self.running) {
                    let _ = seq.tx.send(Event::Error { message: e.to_string(), client: false });
                    self.free(seq);
                }
            }
            self.publish();
        }
    }

    fn publish(&self) {
        let g = &self.gauges;
        g.waiting.store(self.waiting.len(), Ordering::Relaxed);
        g.running.store(self.running.len(), Ordering::Relaxed);
        g.kv_blocks_free.store(self.pool.num_free(), Ordering::Relaxed);
    }

    fn intake(&mut self, Msg::Request(req, adapter, tx): Msg) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        match self.prepare(req, adapter, tx.clone()) {
            Ok(seq) => self.waiting.push_back(seq),
            Err(e) => {
                let _ = tx.send(Event::Error { message: e.to_string(), client: e.is_client_error() });
            }
        }
    }

    fn prepare(
        &mut self,
        req: GenerateRequest,
        adapter: Option<Arc<ServingAdapter>>,
        tx: UnboundedSender<Event>,
    ) -> Result<Sequence> {
        let m = &self.model;
        let tokens = match req.prompt {
            Prompt::Tokens(t) => t,
            Prompt::Text(s) => m.tokenizer.encode(&s)?,
            Prompt::Chat(msgs) => {
                let template = m.template.as_ref().ok_or_else(|| {
                    Error::InvalidRequest(format!("model {} has no chat template: use completions", m.name))
                })?;
                let (text, spans) = template.render_spans_with(&msgs, req.params.tools.as_ref())?;
                m.tokenizer.encode_prompt(&text, &spans)?
            }
        };
        let tool_format = match (&req.params.tools, &m.template) {
            (Some(_), Some(t)) => Some(t.tool_format()),
            (Some(_), None) => return Err(Error::InvalidRequest("tools: the model has no chat template".into())),
            (None, _) => None,
        };
        let mut params = req.params;
        if let (Some(tools), Some(format)) = (&params.tools, tool_format) {
            if let Some(forced) = format.grammar(tools, &m.tokenizer) {
                params.constraint = Some(forced);
            }
        }
        let context = m.transformer.config.context;
        if tokens.is_empty() {
            return Err(Error::InvalidRequest("the prompt is empty".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= m.transformer.config.vocab) {
            return Err(Error::InvalidRequest(format!("token id {bad} is outside the vocabulary")));
        }
        if tokens.len() >= context {
            return Err(Error::InvalidRequest(format!(
                "the prompt has {} tokens; the model's context is {context}",
                tokens.len()
            )));
        }
        let capacity = self.pool.num_blocks() * self.pool.block_size();
        if tokens.len() + 1 > capacity {
            return Err(Error::InvalidRequest(format!(
                "the prompt has {} tokens; the KV pool holds {capacity}",
                tokens.len()
            )));
        }
        if let Some(&(bad, _)) = params.logit_bias.iter().find(|(t, _)| *t as usize >= m.transformer.config.vocab) {
            return Err(Error::InvalidRequest(format!("logit_bias: token id {bad} is outside the vocabulary")));
        }
        let max_tokens = params.max_tokens.min(context - tokens.len()).min(capacity - tokens.len());
        let mut guides = Vec::new();
        if let Some(constraint) = &params.constraint {
            if self.grammars.is_none() {
                let started = Instant::now();
                self.grammars = Some(Grammars::new(&self.model.tokenizer)?);
                tracing::info!(model = %self.model.name, ms = elapsed_ms(started) as u64, "grammar compiler ready");
            }
            let grammars = self.grammars.as_ref().expect("set above");
            guides = grammars.guides(constraint, params.n.max(1))?;
        }
        let mut guides = guides.into_iter();
        self.gauges.prompt_tokens.fetch_add(tokens.len() as u64, Ordering::Relaxed);
        tracing::debug!(request_id = %req.request_id, prompt_tokens = tokens.len(), n = params.n, "queued");
        let stop_ids = self.model.tokenizer.stop_ids();
        let mut choices: Vec<Sequence> = (0..params.n.max(1) as u32)
            .map(|choice| {
                self.next_id += 1;
                let mut own = SamplingParams {
                    seed: params.seed.map(|s| s.wrapping_add(choice as u64)),
                    // A grammar ends with the end of the turn.
                    ignore_eos: params.ignore_eos && params.constraint.is_none(),
                    ..params.clone()
                };
                // Ignoring the end means never choosing it (as llama.cpp's `ignore_eos`
                // does): the continuation goes on as text, not past an end-of-turn token.
                if own.ignore_eos {
                    own.logit_bias.extend(stop_ids.iter().map(|&t| (t, f32::NEG_INFINITY)));
                }
                Sequence {
                    id: self.next_id,
                    request_id: req.request_id.clone(),
                    prompt_len: tokens.len(),
                    tokens: tokens.clone(),
                    computed: 0,
                    blocks: Vec::new(),
                    registered: 0,
                    hash_seed: adapter.as_ref().map_or(0, |a| a.hash_seed),
                    last_hash: adapter.as_ref().map_or(0, |a| a.hash_seed),
                    adapter: adapter.clone(),
                    max_tokens,
                    detok: Detokenizer::new(params.stop.clone()),
                    sampler: Sampler::new(own, &tokens, self.next_id),
                    tx: tx.clone(),
                    cached_tokens: 0,
                    choice,
                    // The prompt's log-probabilities are the same for every choice: the
                    // first sends them.
                    prompt_logprobs: (choice == 0 && params.prompt_logprobs).then_some(0),
                    followers: Vec::new(),
                    guide: guides.next(),
                    tool_parser: tool_format.map(ToolParser::new),
                    calls: 0,
                    embedding: params.embed.then(Vec::new),
                }
            })
            .collect();
        let mut first = choices.remove(0);
        first.followers = choices;
        Ok(first)
    }

    fn drop_cancelled(&mut self) {
        let (gone, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.running).into_iter().partition(|s| s.tx.is_closed());
        self.running = kept;
        for s in gone {
            tracing::debug!(request_id = %s.request_id, "cancelled");
            self.free(s);
        }
        self.waiting.retain(|s| !s.tx.is_closed());
    }

    fn free(&mut self, mut seq: Sequence) {
        for b in seq.blocks.drain(..) {
            self.pool.release(b);
        }
    }

    /// Gives sequence `i` blocks for `upto` tokens, preempting later sequences if the pool
    /// is empty. Returns false if `i` itself had to be preempted.
    fn ensure_blocks(&mut self, i: usize, upto: usize) -> bool {
        let bs = self.pool.block_size();
        while self.running[i].blocks.len() * bs < upto {
            match self.pool.allocate() {
                Some(b) => self.running[i].blocks.push(b),
                None => {
                    let victim = self.running.len() - 1;
                    self.preempt(victim);
                    if victim == i {
                        return false;
                    }
                }
            }
        }
        true
    }

    fn preempt(&mut self, i: usize) {
        let mut seq = self.running.remove(i);
        tracing::debug!(request_id = %seq.request_id, "preempted");
        for b in seq.blocks.drain(..) {
            self.pool.release(b);
        }
        seq.computed = 0;
        seq.registered = 0;
        seq.last_hash = seq.hash_seed;
        self.gauges.preemptions.fetch_add(1, Ordering::Relaxed);
        self.waiting.push_front(seq);
    }

    /// Moves waiting sequences to running while their blocks fit, in arrival order.
    fn admit(&mut self) {
        let bs = self.pool.block_size();
        while self.running.len() < self.config.max_running {
            let Some(mut seq) = self.waiting.pop_front() else { break };
            // Reuse cached blocks for all but the last token, whose logits are needed.
            let hashes = prefix_hashes(&seq.tokens[..seq.tokens.len() - 1], bs, seq.hash_seed);
            // A prompt whose log-probabilities are wanted is computed whole: every
            // position's logits are needed.
            let cached = if seq.prompt_logprobs.is_some() || seq.embedding.is_some() {
                Vec::new()
            } else {
                self.pool.take_prefix(&hashes)
            };
            let need = seq.tokens.len().div_ceil(bs) - cached.len();
            if self.pool.num_free() < need {
                cached.into_iter().for_each(|b| self.pool.release(b));
                self.waiting.push_front(seq);
                break;
            }
            seq.registered = cached.len();
            seq.last_hash = hashes.get(cached.len().wrapping_sub(1)).copied().unwrap_or(seq.hash_seed);
            seq.computed = cached.len() * bs;
            // The start of the next block, from a cached block that begins the same way
            // (copied into this sequence's own block: the rest of that one differs).
            let whole = cached.len();
            let partial = match seq.prompt_logprobs.is_none() && seq.embedding.is_none() && self.kv.device.is_none() {
                true => self.pool.partial(seq.last_hash, &seq.tokens[seq.computed..seq.tokens.len() - 1]),
                false => None,
            };
            // Held while it is copied; a cached block held only for that must leave room.
            let partial = partial.filter(|(b, _)| self.pool.held(*b) || self.pool.num_free() > need);
            if let Some((b, _)) = partial {
                self.pool.hold(b);
            }
            seq.blocks = cached;
            for _ in 0..need {
                if let Some(b) = self.pool.allocate() {
                    seq.blocks.push(b);
                }
            }
            if let Some((from, n)) = partial {
                if let Some(&to) = seq.blocks.get(whole) {
                    self.kv.copy_positions(from, to, n);
                    seq.computed += n;
                }
                self.pool.release(from);
            }
            if seq.generated() == 0 {
                seq.cached_tokens = seq.computed;
                self.gauges.cached_tokens.fetch_add(seq.computed as u64, Ordering::Relaxed);
            }
            self.running.push(seq);
        }
    }

    fn step(&mut self) -> Result<()> {
        // Decodes and prefill chunks of running sequences first, then new admissions.
        let mut budget = self.config.max_batch_tokens;
        let mut plan: Vec<(u64, usize)> = Vec::new();
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let s = &self.running[i];
            let take = (s.tokens.len() - s.computed).min(budget);
            let (id, upto) = (s.id, s.computed + take);
            if !self.ensure_blocks(i, upto) {
                break;
            }
            plan.push((id, take));
            budget -= take;
            i += 1;
        }
        if budget > 0 {
            let before = self.running.len();
            self.admit();
            for s in &self.running[before..] {
                if budget == 0 {
                    break;
                }
                let take = (s.tokens.len() - s.computed).min(budget);
                plan.push((s.id, take));
                budget -= take;
            }
        }
        // Preemption may have removed planned sequences; keep those still running.
        plan.retain(|(id, _)| self.running.iter().any(|s| s.id == *id));
        if plan.is_empty() {
            return Ok(());
        }

        let mut rows = Vec::new();
        let pooling = self.model.transformer.config.pooling;
        for (id, take) in &plan {
            let s = self.running.iter().find(|s| s.id == *id).expect("planned sequences are running");
            for p in s.computed..s.computed + take {
                let hidden = s.embedding.is_some() && pooled(pooling, p, s.tokens.len());
                rows.push(Row {
                    token: s.tokens[p],
                    pos: p,
                    blocks: &s.blocks,
                    logits: !hidden && s.embedding.is_none() && (p + 1 == s.tokens.len() || s.wants_prompt_logits(p)),
                    hidden,
                    adapter: s.adapter.as_deref(),
                });
            }
        }
        let buffer = std::mem::take(&mut self.logits);
        let mut outputs = self.model.transformer.forward_rows(&rows, &mut self.kv, buffer)?;
        self.gauges.steps.fetch_add(1, Ordering::Relaxed);
        self.gauges.batch_rows.fetch_add(rows.len() as u64, Ordering::Relaxed);
        drop(rows);

        let mut finished = Vec::new();
        let mut failed = Vec::new();
        for (id, take) in plan {
            let Some(idx) = self.running.iter().position(|s| s.id == id) else { continue };
            let bs = self.pool.block_size();
            let s = &mut self.running[idx];
            s.computed += take;
            while (s.registered + 1) * bs <= s.computed {
                let r = s.registered;
                s.last_hash = self.pool.register(s.blocks[r], s.last_hash, &s.tokens[r * bs..(r + 1) * bs]);
                s.registered += 1;
            }
            let start = s.computed - take;
            if let Some(sum) = &mut s.embedding {
                for p in start..s.computed {
                    if !pooled(pooling, p, s.tokens.len()) {
                        continue;
                    }
                    let Some(h) = outputs.next_row(&self.model.transformer) else { break };
                    if sum.is_empty() {
                        sum.resize(h.len(), 0.0);
                    }
                    sum.iter_mut().zip(h.iter()).for_each(|(a, &b)| *a += b as f64);
                }
                if s.computed == s.tokens.len() {
                    let norm = sum.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
                    let vector = sum.iter().map(|x| (x / norm) as f32).collect();
                    let _ = s.tx.send(Event::Embedding { vector });
                    finished.push((id, FinishReason::Stop));
                }
                continue;
            }
            if let Some(sent) = s.prompt_logprobs {
                // Row p's logits predict token p + 1; the first token has no logprob.
                let tok = &self.model.tokenizer;
                let k = s.sampler.params().logprobs.unwrap_or(0);
                let mut out = Vec::new();
                if start == 0 && sent == 0 {
                    out.push(TokenLogprob {
                        token: s.tokens[0],
                        bytes: tok.token_bytes(s.tokens[0]),
                        logprob: None,
                        top: Vec::new(),
                    });
                }
                for p in start..s.computed {
                    if !s.wants_prompt_logits(p) {
                        continue;
                    }
                    let Some(l) = outputs.next_row(&self.model.transformer) else { break };
                    if p + 1 >= sent.max(1) {
                        out.push(logprobs(l, s.tokens[p + 1], k, |t| tok.token_bytes(t)));
                    }
                }
                // Rows start..computed gave the tokens up to index `computed`.
                let sent = sent.max((s.computed + 1).min(s.prompt_len));
                s.prompt_logprobs = (sent < s.prompt_len).then_some(sent);
                for part in out.chunks(PROMPT_LOGPROBS_PER_EVENT) {
                    let _ = s.tx.send(Event::Prompt { logprobs: part.to_vec() });
                }
            }
            if s.computed < s.tokens.len() {
                continue;
            }
            let Some(l) = outputs.next_row(&self.model.transformer) else { continue };
            if !s.followers.is_empty() {
                // The prompt is computed and its full blocks cached: the other choices
                // take them next.
                for f in std::mem::take(&mut s.followers).into_iter().rev() {
                    self.waiting.push_front(f);
                }
            }
            let s = &mut self.running[idx];
            if let Some(g) = &mut s.guide {
                if let Err(e) = g.mask(l) {
                    failed.push((id, e));
                    continue;
                }
            }
            let token = s.sampler.sample(l);
            if let Some(Err(e)) = s.guide.as_mut().map(|g| g.advance(token)) {
                failed.push((id, e));
                continue;
            }
            let lp = s.sampler.params().logprobs.map(|k| {
                let tok = &self.model.tokenizer;
                logprobs(l, token, k, |t| tok.token_bytes(t))
            });
            s.sampler.observe(token);
            s.tokens.push(token);
            self.gauges.generated_tokens.fetch_add(1, Ordering::Relaxed);
            if let Some(reason) = self.emit(idx, token, lp) {
                finished.push((id, reason));
            }
        }
        self.logits = outputs.into_buffer();
        for (id, e) in failed {
            if let Some(idx) = self.running.iter().position(|s| s.id == id) {
                let s = self.running.remove(idx);
                tracing::error!(request_id = %s.request_id, error = %e, "constrained decoding failed");
                let _ = s.tx.send(Event::Error { message: e.to_string(), client: false });
                self.free(s);
            }
        }
        for (id, reason) in finished {
            if let Some(idx) = self.running.iter().position(|s| s.id == id) {
                let mut s = self.running.remove(idx);
                if reason == FinishReason::Length {
                    let tail = s.detok.finish();
                    s.send_text(tail, vec![], vec![], true);
                }
                let reason = if s.calls > 0 && reason == FinishReason::Stop { FinishReason::ToolCalls } else { reason };
                let usage = Usage {
                    prompt_tokens: s.prompt_len,
                    completion_tokens: s.generated(),
                    cached_tokens: s.cached_tokens,
                };
                let _ = s.tx.send(Event::Done { choice: s.choice, finish: reason, usage });
                self.free(s);
            }
        }
        Ok(())
    }

    /// Streams the text of a new token (with its log-probabilities, if asked for);
    /// returns why the sequence ends, if it does. An end-of-turn token is not part of the
    /// text, nor of the log-probabilities.
    fn emit(&mut self, idx: usize, token: u32, lp: Option<TokenLogprob>) -> Option<FinishReason> {
        let s = &mut self.running[idx];
        let tok = &self.model.tokenizer;
        if !s.sampler.params().ignore_eos && tok.stop_ids().contains(&token) {
            let held = s.detok.finish();
            s.send_text(held, vec![], vec![], true);
            return Some(FinishReason::Stop);
        }
        // A control token of the call syntax is not text, but the tool parser reads it.
        let marker = match (&s.tool_parser, tok.is_control(token)) {
            (Some(p), true) => tok.token_text(token).filter(|t| p.format().marker(t)).unwrap_or(""),
            _ => "",
        };
        let logprobs = lp.into_iter().collect();
        match s.detok.push(tok, token) {
            Step::Stopped(text) => {
                s.send_text(format!("{marker}{text}"), vec![token], logprobs, true);
                Some(FinishReason::Stop)
            }
            Step::Text(text) => {
                s.send_text(format!("{marker}{text}"), vec![token], logprobs, false);
                (s.generated() >= s.max_tokens).then_some(FinishReason::Length)
            }
        }
    }
}

/// Whether position `p` of a text of `len` tokens goes into its embedding.
fn pooled(pooling: Pooling, p: usize, len: usize) -> bool {
    match pooling {
        Pooling::Mean => true,
        Pooling::First => p == 0,
        Pooling::Last => p + 1 == len,
    }
}

/// Runs a request of one choice to the end and returns its text, finish reason and usage
/// (for tools, tests and the benchmark; servers stream instead).
pub fn collect(stream: EventStream) -> Result<(String, Vec<u32>, FinishReason, Usage)> {
    let (_, mut choices) = collect_all(stream)?;
    let c = choices.swap_remove(0);
    Ok((c.text, c.tokens, c.finish, c.usage))
}

/// One choice of a request, run to its end.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    pub text: String,
    pub tokens: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    /// The tools it called, in order.
    pub tool_calls: Vec<ToolCall>,
    /// The prompt's embedding, when that was asked for.
    pub embedding: Option<Vec<f32>>,
    pub finish: FinishReason,
    pub usage: Usage,
}

impl Collected {
    fn empty() -> Self {
        Self {
            text: String::new(),
            tokens: Vec::new(),
            logprobs: Vec::new(),
            tool_calls: Vec::new(),
            embedding: None,
            finish: FinishReason::Stop,
            usage: Usage::default(),
        }
    }
}

/// Runs a request to the end: the prompt's log-probabilities (if asked for) and every
/// choice, by index.
pub fn collect_all(mut stream: EventStream) -> Result<(Vec<TokenLogprob>, Vec<Collected>)> {
    let mut prompt = Vec::new();
    let mut open: std::collections::BTreeMap<u32, Collected> = Default::default();
    let mut done = Vec::new();
    // The stream closes when the engine has dropped the request's last sequence.
    while let Some(ev) = stream.blocking_recv() {
        match ev {
            Event::Delta { choice, text, tokens, logprobs } => {
                let c = open.entry(choice).or_insert_with(Collected::empty);
                c.text.push_str(&text);
                c.tokens.extend(tokens);
                c.logprobs.extend(logprobs);
            }
            Event::ToolCall { choice, call, .. } => {
                open.entry(choice).or_insert_with(Collected::empty).tool_calls.push(call)
            }
            // The complete calls are all a collector needs.
            Event::ToolCallStart { .. } | Event::ToolCallArguments { .. } => {}
            Event::Embedding { vector } => open.entry(0).or_insert_with(Collected::empty).embedding = Some(vector),
            Event::Prompt { logprobs } => prompt.extend(logprobs),
            Event::Done { choice, finish, usage } => {
                let mut c = open.remove(&choice).unwrap_or_else(Collected::empty);
                (c.finish, c.usage) = (finish, usage);
                done.push((choice, c));
            }
            Event::Error { message, client } => {
                return Err(if client {
                    Error::InvalidRequest(message.trim_start_matches("invalid request: ").to_string())
                } else {
                    Error::Engine(message)
                })
            }
        }
    }
    if done.is_empty() || !open.is_empty() {
        return Err(Error::EngineStopped);
    }
    done.sort_by_key(|(i, _)| *i);
    Ok((prompt, done.into_iter().map(|(_, c)| c).collect()))
}

/// A helper for time measurements in tools.
pub fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}
