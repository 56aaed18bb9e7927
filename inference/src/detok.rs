//! Incremental detokenization with stop strings: text is emitted as soon as it is certain,
//! never half a UTF-8 character, and never the start of a stop string that may still
//! complete in the next token.

use crate::tokenizer::TextTokenizer;

#[derive(Debug, Default)]
pub struct Detokenizer {
    generated: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    pending: String,
    stops: Vec<String>,
}

/// What one new token produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Text that is safe to emit now (may be empty).
    Text(String),
    /// A stop string appeared: emit this text (what came before it) and finish.
    Stopped(String),
}

impl Detokenizer {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops, ..Default::default() }
    }

    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Step {
        self.generated.push(id);
        let prefix = tok.decode(&self.generated[self.prefix_offset..self.read_offset]);
        let full = tok.decode(&self.generated[self.prefix_offset..]);
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.is_char_boundary(prefix.len()) {
            self.pending.push_str(&full[prefix.len()..]);
            self.prefix_offset = self.read_offset;
            self.read_offset = self.generated.len();
        }
        self.take_safe()
    }

    fn take_safe(&mut self) -> Step {
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let before = self.pending[..at].to_string();
            self.pending.clear();
            return Step::Stopped(before);
        }
        let hold = self
            .stops
            .iter()
            .map(|s| {
                (1..s.len()).rev().find(|&k| s.is_char_boundary(k) && self.pending.ends_with(&s[..k])).unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        Step::Text(out)
    }

    /// Whatever is still held back, at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}
