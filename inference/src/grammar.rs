//! Constrained decoding: a request may carry a [`Constraint`] (a JSON schema, a Lark
//! grammar or a regular expression); each step the engine masks the tokens the grammar
//! does not allow before sampling, so the output always parses. Grammars are compiled by
//! llguidance (what llama.cpp, vLLM and SGLang use) over a token trie of the model's own
//! vocabulary: each token's bytes, control tokens marked special so a grammar names them
//! as `<|im_end|>` or `<[id]>` and plain text never produces them.
//!
//! The end of the output is the model's end-of-turn token: a grammar allows it once its
//! text is complete, and then nothing else.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tokenizer::TextTokenizer;

/// What the output must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Constraint {
    /// A JSON schema (as JSON text): the output is one JSON value that validates against
    /// it, written compactly (no whitespace beyond what strings hold).
    JsonSchema(String),
    /// A grammar in llguidance's Lark syntax (`%json {...}` embeds a schema).
    Lark(String),
    /// A regular expression the whole output matches.
    Regex(String),
}

/// The longest grammar text a request may carry.
pub const MAX_GRAMMAR_BYTES: usize = 256 << 10;

impl Constraint {
    /// Any JSON object (OpenAI's `json_object`, Ollama's `format: "json"`).
    pub fn json_object() -> Self {
        Constraint::JsonSchema(r#"{"type":"object"}"#.into())
    }

    /// Rejects what no grammar compiler should be handed, naming the field.
    pub fn validate(&self) -> Result<()> {
        let text = match self {
            Constraint::JsonSchema(s) | Constraint::Lark(s) | Constraint::Regex(s) => s,
        };
        if text.len() > MAX_GRAMMAR_BYTES {
            return Err(Error::InvalidRequest(format!(
                "the grammar or schema is {} bytes; at most {MAX_GRAMMAR_BYTES}",
                text.len()
            )));
        }
        if let Constraint::JsonSchema(s) = self {
            serde_json::from_str::<serde_json::Value>(s)
                .map_err(|e| Error::InvalidRequest(format!("the JSON schema is not JSON: {e}")))?;
        }
        Ok(())
    }

    fn to_grammar(&self) -> Result<TopLevelGrammar> {
        Ok(match self {
            Constraint::JsonSchema(s) => {
                let mut schema: serde_json::Value = serde_json::from_str(s)
                    .map_err(|e| Error::InvalidRequest(format!("the JSON schema is not JSON: {e}")))?;
                compact(&mut schema);
                TopLevelGrammar::from_json_schema(schema)
            }
            Constraint::Lark(s) => TopLevelGrammar::from_lark(s.clone()),
            Constraint::Regex(s) => TopLevelGrammar::from_regex(s),
        })
    }
}

/// Asks for compact JSON (`{"a":1}`): with flexible whitespace a sampled model can spend
/// its whole budget on spaces and newlines inside a valid prefix.
pub fn compact(schema: &mut serde_json::Value) {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(|| serde_json::json!({ "whitespace_flexible": false }));
    }
}

/// A model's grammar compiler: the token trie and llguidance's factory, built once per
/// model on the first constrained request (about a second for a 150k vocabulary).
pub struct Grammars {
    factory: ParserFactory,
    /// Ids that end a turn: allowed whenever the grammar allows its end.
    stop_ids: Vec<u32>,
    eos: u32,
}

struct Env {
    trie: TokTrie,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }
}

impl Grammars {
    pub fn new(tokenizer: &TextTokenizer) -> Result<Self> {
        let vocab = tokenizer.vocab_size();
        let eos = tokenizer.end_of_turn().ok_or_else(|| {
            Error::InvalidRequest("the model has no end-of-turn token: it cannot be constrained".into())
        })?;
        let words: Vec<Vec<u8>> = (0..vocab as u32)
            .map(|id| {
                if tokenizer.is_control(id) {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(tokenizer.token_text(id).unwrap_or("").as_bytes());
                    w
                } else {
                    tokenizer.token_bytes(id)
                }
            })
            .collect();
        let info = TokRxInfo::new(vocab as u32, eos);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(Env { trie });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| Error::Engine(format!("grammar setup: {e}")))?;
        factory.quiet();
        Ok(Self { factory, stop_ids: tokenizer.stop_ids().to_vec(), eos })
    }

    /// Compiles `constraint` once into a guide for each of `n` sequences; a grammar or
    /// schema the compiler refuses is the request's fault, with the compiler's reason.
    pub fn guides(&self, constraint: &Constraint, n: usize) -> Result<Vec<Guide>> {
        constraint.validate()?;
        let parser = self
            .factory
            .create_parser(constraint.to_grammar()?)
            .map_err(|e| Error::InvalidRequest(format!("cannot compile the grammar: {e}")))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::InvalidRequest(format!("cannot compile the grammar: {e}")));
        }
        let mut guides: Vec<Guide> =
            (1..n).map(|_| Guide::start(matcher.deep_clone(), self.stop_ids.clone(), self.eos)).collect();
        guides.insert(0, Guide::start(matcher, self.stop_ids.clone(), self.eos));
        Ok(guides)
    }
}

/// A matcher and the mask it computed for the next token.
type Computed = (Matcher, std::result::Result<SimpleVob, String>);

/// One sequence's place in its grammar. The mask of the next token is computed on a
/// background thread as soon as the last token is known, so it runs while the engine's
/// forward pass does, and sampling only waits for what is left of it.
pub struct Guide {
    pending: std::sync::mpsc::Receiver<Computed>,
    matcher: Option<Matcher>,
    stop_ids: Vec<u32>,
    eos: u32,
}

impl Guide {
    fn start(matcher: Matcher, stop_ids: Vec<u32>, eos: u32) -> Self {
        Self { pending: spawn_mask(matcher, None), matcher: None, stop_ids, eos }
    }

    /// Sets the logits of every token the grammar does not allow next to minus infinity
    /// (the end-of-turn tokens count as the grammar's end).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let (matcher, mask) = self.pending.recv().map_err(|_| Error::Engine("grammar: the mask was lost".into()))?;
        self.matcher = Some(matcher);
        let mask = mask.map_err(|e| Error::Engine(format!("grammar: {e}")))?;
        let end = mask.is_allowed(self.eos);
        for (i, l) in logits.iter_mut().enumerate() {
            let allowed = (i < mask.len() && mask.is_allowed(i as u32)) || (end && self.stop_ids.contains(&(i as u32)));
            if !allowed {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Moves past `token` (one the last mask allowed) and starts the next mask. An
    /// end-of-turn token ends the sequence: the grammar has nothing to move past.
    pub fn advance(&mut self, token: u32) -> Result<()> {
        if self.stop_ids.contains(&token) {
            return Ok(());
        }
        let matcher = self.matcher.take().ok_or_else(|| Error::Engine("grammar: advanced without a mask".into()))?;
        self.pending = spawn_mask(matcher, Some(token));
        Ok(())
    }
}

/// Consumes `token` (if any) and computes the next mask on rayon's pool.
fn spawn_mask(mut matcher: Matcher, token: Option<u32>) -> std::sync::mpsc::Receiver<Computed> {
    let (tx, rx) = std::sync::mpsc::channel();
    rayon::spawn(move || {
        let mask = match token.map(|t| matcher.consume_token(t)) {
            Some(Err(e)) => Err(e.to_string()),
            _ => matcher.compute_mask_or_eos().map_err(|e| e.to_string()),
        };
        let _ = tx.send((matcher, mask));
    });
    rx
}
