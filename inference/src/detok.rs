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

#[cfg(test)]
mod tests {
    use super::{Detokenizer, Step};
    use crate::tiny::{write_tiny_model, TinyArch};
    use crate::tokenizer::TextTokenizer;

    /// The tiny Llama model's byte-level tokenizer: ids 0-255 are the bytes themselves,
    /// then the merges "Ġt" (256), "he" (257), "Ġthe" (258), "in" (259).
    fn tokenizer() -> TextTokenizer {
        // One file per call: the tests run in parallel.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("nave-detok-{}-{n}.gguf", std::process::id()));
        write_tiny_model(&path, TinyArch::Llama, 1).expect("tiny model");
        let tok = TextTokenizer::from_path(&path).expect("tokenizer");
        let _ = std::fs::remove_file(&path);
        tok
    }

    fn text(step: Step) -> String {
        match step {
            Step::Text(t) => t,
            Step::Stopped(t) => panic!("stopped early, after {t:?}"),
        }
    }

    /// Feeds `bytes` one token (one byte) at a time; what each step emitted.
    fn feed(d: &mut Detokenizer, tok: &TextTokenizer, bytes: &[u8]) -> Vec<String> {
        bytes.iter().map(|&b| text(d.push(tok, u32::from(b)))).collect()
    }

    #[test]
    fn half_a_character_is_never_emitted() {
        let tok = tokenizer();
        let mut d = Detokenizer::new(vec![]);
        // "é" is two bytes, "🙂" four: nothing comes out until the last byte of each.
        let steps = feed(&mut d, &tok, "aé🙂b".as_bytes());
        assert_eq!(steps, ["a", "", "é", "", "", "", "🙂", "b"]);
        assert!(steps.iter().all(|s| !s.contains('\u{FFFD}')), "{steps:?}");
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn a_stop_string_split_across_tokens_is_held_back_then_cut() {
        let tok = tokenizer();
        let mut d = Detokenizer::new(vec!["STOP".into()]);
        assert_eq!(feed(&mut d, &tok, b"abST"), ["a", "b", "", ""]);
        assert_eq!(text(d.push(&tok, u32::from(b'O'))), "");
        // The stop string completes: what came before it was already out, nothing more is.
        assert_eq!(d.push(&tok, u32::from(b'P')), Step::Stopped(String::new()));
    }

    #[test]
    fn a_false_start_of_a_stop_string_is_released() {
        let tok = tokenizer();
        let mut d = Detokenizer::new(vec!["STOP".into()]);
        assert_eq!(feed(&mut d, &tok, b"xSTO"), ["x", "", "", ""]);
        assert_eq!(text(d.push(&tok, u32::from(b'!'))), "STO!");
        // Held back at the end of generation, it is still the answer's.
        assert_eq!(feed(&mut d, &tok, b"ST"), ["", ""]);
        assert_eq!(d.finish(), "ST");
    }

    #[test]
    fn a_stop_string_inside_one_token_cuts_before_it() {
        let tok = tokenizer();
        let mut d = Detokenizer::new(vec![" th".into()]);
        assert_eq!(feed(&mut d, &tok, b"in"), ["i", "n"]);
        // Token 258 is " the": the stop string starts inside it.
        assert_eq!(d.push(&tok, 258), Step::Stopped(String::new()));
        let mut d = Detokenizer::new(vec!["he".into()]);
        assert_eq!(d.push(&tok, 258), Step::Stopped(" t".into()));
    }

    #[test]
    fn a_stop_string_across_a_partial_character_waits_for_it() {
        let tok = tokenizer();
        // The stop string starts with a two-byte character: its first byte alone is not
        // text yet, so nothing can be released or matched until the second arrives.
        let mut d = Detokenizer::new(vec!["é!".into()]);
        assert_eq!(feed(&mut d, &tok, "aé".as_bytes()), ["a", "", ""]);
        assert_eq!(d.push(&tok, u32::from(b'!')), Step::Stopped(String::new()));
        let mut d = Detokenizer::new(vec!["é!".into()]);
        assert_eq!(feed(&mut d, &tok, "éx".as_bytes()), ["", "", "éx"]);
    }
}
