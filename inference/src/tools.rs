//! Tools (function calling): the functions a request offers go into the model's chat
//! template (its `tools` variable), the model's calls are parsed out of its output, and
//! `tool_choice` "required" or a named function constrains the output to a call whose
//! arguments match the function's parameters schema.
//!
//! The call format is the one the model's template teaches ([`ToolFormat::detect`]):
//! - Hermes (Qwen 2/2.5/3, SmolLM3, Hermes): `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`;
//! - Llama 3.1+: a bare JSON object `{"name": ..., "parameters": {...}}`;
//! - Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`;
//! - a template that knows no tools: Nave describes the tools in a system message and asks
//!   for the Hermes form, and renders earlier calls and results as text in that form.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::grammar::Constraint;
use crate::template::ChatMessage;
use crate::tokenizer::TextTokenizer;

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolDef {
    pub name: String,
    pub description: String,
    /// Its parameters' JSON schema, as JSON text (an object schema).
    pub parameters: String,
}

/// Which calls the model may or must make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToolChoice {
    /// The model chooses between answering and calling.
    Auto,
    /// The model must call one or more of the tools.
    Required,
    /// The model must call this function.
    Function(String),
}

/// The tools of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tools {
    pub defs: Vec<ToolDef>,
    pub choice: ToolChoice,
}

/// A call the model made (or, in a conversation, made earlier).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

/// The most tools one request may offer.
pub const MAX_TOOLS: usize = 128;

impl Tools {
    /// Rejects tools no template or grammar could take, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::InvalidRequest(format!("tools: {why}")));
        if self.defs.is_empty() || self.defs.len() > MAX_TOOLS {
            return bad(format!("between 1 and {MAX_TOOLS} functions"));
        }
        let mut names = std::collections::HashSet::new();
        for t in &self.defs {
            if !valid_name(&t.name) {
                return bad(format!(
                    "the function name {:?} must be 1 to 64 letters, digits, underscores or dashes",
                    t.name
                ));
            }
            if !names.insert(t.name.as_str()) {
                return bad(format!("the function {:?} is defined twice", t.name));
            }
            match serde_json::from_str::<Value>(&t.parameters) {
                Ok(Value::Object(_)) => {}
                _ => return bad(format!("the parameters of {:?} must be a JSON schema object", t.name)),
            }
        }
        if let ToolChoice::Function(f) = &self.choice {
            if !names.contains(f.as_str()) {
                return Err(Error::InvalidRequest(format!("tool_choice: no tool is named {f:?}")));
            }
        }
        Ok(())
    }

    /// The tools as chat templates expect them (OpenAI's shape, parameters as objects).
    pub fn template_value(&self) -> Value {
        Value::Array(
            self.defs
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": serde_json::from_str::<Value>(&t.parameters).unwrap_or(json!({})),
                    }})
                })
                .collect(),
        )
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// How a model writes its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToolFormat {
    Hermes,
    Llama3,
    Mistral,
    /// The template knows no tools: Nave's instructions, in the Hermes form.
    Fallback,
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const MISTRAL_OPEN: &str = "[TOOL_CALLS]";
const PYTHON_TAG: &str = "<|python_tag|>";

impl ToolFormat {
    /// The format a chat template teaches, from its source.
    pub fn detect(template: &str) -> Self {
        if template.contains(HERMES_OPEN) {
            ToolFormat::Hermes
        } else if template.contains(MISTRAL_OPEN) {
            ToolFormat::Mistral
        } else if template.contains("tools") && (template.contains("<|eot_id|>") || template.contains("ipython")) {
            ToolFormat::Llama3
        } else if template.contains("tools") {
            ToolFormat::Hermes
        } else {
            ToolFormat::Fallback
        }
    }

    /// A control token whose text is part of the call syntax: the output's text leaves
    /// control tokens out, so the engine hands these to the parser.
    pub fn marker(self, text: &str) -> bool {
        match self {
            ToolFormat::Hermes | ToolFormat::Fallback => text == HERMES_OPEN || text == HERMES_CLOSE,
            ToolFormat::Mistral => text == MISTRAL_OPEN,
            ToolFormat::Llama3 => text == PYTHON_TAG,
        }
    }

    /// A new call id in the form the template takes back (Mistral's templates insist on
    /// nine letters and digits).
    pub fn call_id(self, seed: u64, index: usize) -> String {
        let mut x = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut id = String::new();
        let n = if self == ToolFormat::Mistral { 9 } else { 24 };
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            id.push(ALPHABET[(x % ALPHABET.len() as u64) as usize] as char);
        }
        if self == ToolFormat::Mistral {
            id
        } else {
            format!("call_{id}")
        }
    }

    /// The grammar that forces a call (of any tool, or of the named one) in this format.
    pub fn grammar(self, tools: &Tools, tokenizer: &TextTokenizer) -> Option<Constraint> {
        let defs: Vec<&ToolDef> = match &tools.choice {
            ToolChoice::Auto => return None,
            ToolChoice::Required => tools.defs.iter().collect(),
            ToolChoice::Function(f) => tools.defs.iter().filter(|t| &t.name == f).collect(),
        };
        let args_key = if self == ToolFormat::Llama3 { "parameters" } else { "arguments" };
        let call = json!({
            "anyOf": defs.iter().map(|t| json!({
                "type": "object",
                "properties": {
                    "name": {"const": t.name},
                    args_key: serde_json::from_str::<Value>(&t.parameters).unwrap_or(json!({})),
                },
                "required": ["name", args_key],
                "additionalProperties": false,
            })).collect::<Vec<_>>(),
            "x-guidance": {"whitespace_flexible": false},
        });
        // A marker that is a control token is named by id: text cannot produce it.
        let lit = |text: &str| match tokenizer.control_id(text) {
            Some(id) => format!("<[{id}]>"),
            None => serde_json::to_string(text).unwrap_or_default(),
        };
        Some(Constraint::Lark(match self {
            ToolFormat::Hermes | ToolFormat::Fallback => format!(
                "start: call (\"\\n\" call)*\ncall: {} \"\\n\" %json {call} \"\\n\" {}\n",
                lit(HERMES_OPEN),
                lit(HERMES_CLOSE)
            ),
            ToolFormat::Llama3 => format!("start: %json {call}\n"),
            ToolFormat::Mistral => {
                let calls = json!({"type": "array", "items": call, "minItems": 1,
                    "x-guidance": {"whitespace_flexible": false}});
                format!("start: {} %json {calls}\n", lit(MISTRAL_OPEN))
            }
        }))
    }

    /// The conversation as a template of this format takes it: for [`ToolFormat::Fallback`],
    /// the tools described in the system message, earlier calls and results as text.
    pub fn prepare(self, messages: &[ChatMessage], tools: Option<&Tools>) -> Vec<ChatMessage> {
        if self != ToolFormat::Fallback {
            return messages.to_vec();
        }
        let mut out: Vec<ChatMessage> = messages
            .iter()
            .map(|m| {
                if m.role == "tool" {
                    ChatMessage::new("user", format!("<tool_response>\n{}\n</tool_response>", m.content))
                } else if !m.tool_calls.is_empty() {
                    let calls: Vec<String> = m
                        .tool_calls
                        .iter()
                        .map(|c| {
                            let args = serde_json::from_str::<Value>(&c.arguments).unwrap_or(Value::Null);
                            format!("{HERMES_OPEN}\n{}\n{HERMES_CLOSE}", json!({"name": c.name, "arguments": args}))
                        })
                        .collect();
                    let text = [m.content.clone(), calls.join("\n")].join(if m.content.is_empty() { "" } else { "\n" });
                    ChatMessage::new(m.role.clone(), text)
                } else {
                    m.clone()
                }
            })
            .collect();
        if let Some(tools) = tools {
            let list: Vec<String> =
                tools.template_value().as_array().into_iter().flatten().map(|t| t["function"].to_string()).collect();
            let instructions = format!(
                "You may call functions to answer. The functions, as JSON schemas:\n<tools>\n{}\n</tools>\n\
                 To call one, answer with only a JSON object with the function's name and arguments inside \
                 tags, like this:\n<tool_call>\n{{\"name\": \"function_name\", \"arguments\": {{\"arg\": \"value\"}}}}\n</tool_call>",
                list.join("\n")
            );
            match out.first_mut() {
                Some(first) if first.role == "system" => first.content = format!("{}\n\n{instructions}", first.content),
                _ => out.insert(0, ChatMessage::new("system", instructions)),
            }
        }
        out
    }
}

/// What the parser gives back as output arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Answer text (not part of a call).
    Text(String),
    /// Call `index` of the output begins: its name is known, its arguments follow.
    CallStart { index: u32, name: String },
    /// A piece of call `index`'s arguments, JSON text as the model writes it less the
    /// whitespace outside strings.
    Arguments { index: u32, piece: String },
    /// Call `index` is complete: its name and arguments (JSON text). A started call's
    /// arguments are its pieces joined. A started call that turns out malformed gets no
    /// `Call`: its text comes back as `Text` instead.
    Call { index: u32, name: String, arguments: String },
}

/// Reads a model's output as text and calls, as it arrives: text that may begin a call is
/// held until it is clearly not one; a call's head is held until its name and the
/// opening of its arguments object are read, then the arguments stream (`ArgStream`);
/// a call is given once it is complete.
pub struct ToolParser {
    format: ToolFormat,
    buf: String,
    /// Inside a call (after its opening marker), or for formats without one, inside what
    /// may be the call JSON.
    in_call: bool,
    /// Whether any text was given: a Llama 3 call must open the output.
    started: bool,
    /// The calls' text read by `stream` so far: bytes of `buf`.
    fed: usize,
    stream: ArgStream,
    /// Calls numbered so far (started or complete).
    calls: u32,
    /// A call just ended: a newline right after it is not text.
    after_call: bool,
}

impl ToolParser {
    pub fn new(format: ToolFormat) -> Self {
        Self {
            format,
            buf: String::new(),
            in_call: false,
            started: false,
            fed: 0,
            stream: ArgStream::default(),
            calls: 0,
            after_call: false,
        }
    }

    pub fn format(&self) -> ToolFormat {
        self.format
    }

    /// Takes the next piece of output.
    pub fn push(&mut self, text: &str) -> Vec<Parsed> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        loop {
            match self.format {
                ToolFormat::Hermes | ToolFormat::Fallback => {
                    if self.in_call {
                        let Some(end) = self.buf.find(HERMES_CLOSE) else {
                            // What may begin the closing marker is not the call's yet.
                            self.feed(self.buf.len() - partial_suffix(&self.buf, HERMES_CLOSE), &mut out);
                            break;
                        };
                        self.feed(end, &mut out);
                        let body: String = self.buf.drain(..end).collect();
                        self.buf.drain(..HERMES_CLOSE.len());
                        self.in_call = false;
                        out.push(self.hermes_call(body, HERMES_CLOSE));
                        self.after_call = true;
                        continue;
                    }
                    // A newline between calls is not text.
                    if self.after_call && !self.buf.is_empty() {
                        self.after_call = false;
                        if self.buf.starts_with('\n') {
                            self.buf.remove(0);
                        }
                    }
                    match self.buf.find(HERMES_OPEN) {
                        Some(start) => {
                            self.text(&mut out, start);
                            self.buf.drain(..HERMES_OPEN.len());
                            self.in_call = true;
                        }
                        None => {
                            let keep = partial_suffix(&self.buf, HERMES_OPEN);
                            self.text(&mut out, self.buf.len() - keep);
                            break;
                        }
                    }
                }
                ToolFormat::Mistral => {
                    if self.in_call {
                        // The call list runs to the end of the output.
                        self.feed(self.buf.len(), &mut out);
                        break;
                    }
                    match self.buf.find(MISTRAL_OPEN) {
                        Some(start) => {
                            self.text(&mut out, start);
                            self.buf.drain(..MISTRAL_OPEN.len());
                            self.in_call = true;
                        }
                        None => {
                            let keep = partial_suffix(&self.buf, MISTRAL_OPEN);
                            self.text(&mut out, self.buf.len() - keep);
                            break;
                        }
                    }
                }
                ToolFormat::Llama3 => {
                    if self.in_call {
                        self.feed(self.buf.len(), &mut out);
                        break;
                    }
                    let trimmed = self.buf.trim_start();
                    if !self.started && (trimmed.starts_with('{') || trimmed.starts_with(PYTHON_TAG)) {
                        self.in_call = true;
                        // The calls' text begins after the tag.
                        let lead = self.buf.len() - trimmed.len();
                        self.fed = lead + if trimmed.starts_with(PYTHON_TAG) { PYTHON_TAG.len() } else { 0 };
                        continue;
                    }
                    if !self.started && (trimmed.is_empty() || PYTHON_TAG.starts_with(trimmed)) {
                        break;
                    }
                    self.text(&mut out, self.buf.len());
                    break;
                }
            }
        }
        out
    }

    /// The end of the output: what was held, as calls where it parses as calls, else text.
    pub fn finish(&mut self) -> Vec<Parsed> {
        if !self.in_call {
            let rest = std::mem::take(&mut self.buf);
            return if rest.is_empty() { vec![] } else { vec![Parsed::Text(rest)] };
        }
        let mut out = Vec::new();
        self.feed(self.buf.len(), &mut out);
        let rest = std::mem::take(&mut self.buf);
        self.in_call = false;
        let calls = match self.format {
            ToolFormat::Hermes | ToolFormat::Fallback => {
                out.push(self.hermes_call(rest, ""));
                return out;
            }
            ToolFormat::Mistral => calls_from_array(&rest),
            ToolFormat::Llama3 => {
                let body = rest.trim_start().trim_start_matches(PYTHON_TAG);
                body.split(';').map(|c| call_from_json(c, "parameters")).collect::<Option<Vec<_>>>()
            }
        };
        let streamed = std::mem::take(&mut self.stream).calls;
        match calls {
            Some(calls) if !calls.is_empty() => {
                let mut streamed = streamed.into_iter();
                for (name, arguments) in calls {
                    let call = streamed.next().filter(|s| s.closed && s.name == name);
                    out.push(self.complete(call, name, arguments));
                }
            }
            _ => {
                let open = if self.format == ToolFormat::Mistral { MISTRAL_OPEN } else { "" };
                out.push(Parsed::Text(format!("{open}{rest}")));
            }
        }
        out
    }

    /// The call of a Hermes `<tool_call>` body, or its text if it is not one.
    fn hermes_call(&mut self, body: String, close: &str) -> Parsed {
        self.fed = 0;
        let streamed = std::mem::take(&mut self.stream).calls;
        match call_from_json(&body, "arguments") {
            Some((name, arguments)) => {
                let call = streamed.into_iter().next().filter(|s| s.closed);
                self.complete(call, name, arguments)
            }
            None => Parsed::Text(format!("{HERMES_OPEN}{body}{close}")),
        }
    }

    /// A complete call: as it streamed, or (if it did not) numbered now.
    fn complete(&mut self, streamed: Option<Streamed>, name: String, arguments: String) -> Parsed {
        match streamed {
            Some(s) => Parsed::Call { index: s.index, name: s.name, arguments: s.arguments },
            None => {
                self.calls += 1;
                Parsed::Call { index: self.calls - 1, name, arguments }
            }
        }
    }

    /// Lets the argument streamer read the calls' text up to byte `upto` of the buffer.
    fn feed(&mut self, upto: usize, out: &mut Vec<Parsed>) {
        if upto > self.fed {
            let separators = match self.format {
                ToolFormat::Hermes | ToolFormat::Fallback => "",
                ToolFormat::Mistral => "[,",
                ToolFormat::Llama3 => ";",
            };
            self.stream.read(&self.buf[self.fed..upto], separators, &mut self.calls, out);
            self.fed = upto;
        }
    }

    /// Gives the first `upto` bytes of the buffer as text.
    fn text(&mut self, out: &mut Vec<Parsed>, upto: usize) {
        if upto > 0 {
            let t: String = self.buf.drain(..upto).collect();
            self.started |= !t.trim().is_empty();
            out.push(Parsed::Text(t));
        }
    }
}

/// Streams the arguments of the call objects of one stretch of calls
/// (`{"name": ..., "arguments": {...}}`, separated by whitespace and the format's
/// separators) as their text arrives. An object's head is held until it reads as a name
/// followed by the opening of an arguments object; then the arguments go out as they
/// come, and the rest of the object is only followed to its end. Anything else (keys in
/// another order, arguments that are not an object, text between objects) stops the
/// streaming of the stretch: its calls are given whole once they are complete. Whether a
/// streamed call is well formed is decided by the parser once it is complete; this only
/// follows the nesting of brackets and strings.
#[derive(Default)]
struct ArgStream {
    scan: Scan,
    /// The current object's text while in its head.
    head: String,
    /// Nesting inside the current object: brackets open, inside a string, after a `\`.
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// The calls whose arguments streamed, in order.
    calls: Vec<Streamed>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Between objects (before the first).
    #[default]
    Between,
    /// In an object's head, before its arguments.
    Head,
    /// In the arguments object.
    Arguments,
    /// After the arguments, before the object's end.
    Rest,
    /// Not streaming any more.
    Off,
}

/// A call whose arguments streamed.
struct Streamed {
    index: u32,
    name: String,
    /// As streamed: the pieces joined.
    arguments: String,
    /// Its object ended.
    closed: bool,
}

/// The longest head read before giving up on streaming an object.
const MAX_HEAD: usize = 256;

impl ArgStream {
    /// Reads more of the stretch; a call that starts is numbered from `calls`.
    fn read(&mut self, text: &str, separators: &str, calls: &mut u32, out: &mut Vec<Parsed>) {
        let mut piece = String::new();
        for ch in text.chars() {
            match self.scan {
                Scan::Off => break,
                Scan::Between if ch == '{' => {
                    (self.scan, self.head, self.depth) = (Scan::Head, "{".into(), 1);
                }
                Scan::Between if ch.is_whitespace() || separators.contains(ch) => {}
                Scan::Between => self.scan = Scan::Off,
                Scan::Head => {
                    self.head.push(ch);
                    self.nest(ch);
                    match head(&self.head) {
                        Head::Partial if self.head.len() <= MAX_HEAD => {}
                        Head::Partial | Head::No => self.scan = Scan::Off,
                        Head::Arguments(name) => {
                            let index = *calls;
                            *calls += 1;
                            out.push(Parsed::CallStart { index, name: name.clone() });
                            self.calls.push(Streamed { index, name, arguments: String::new(), closed: false });
                            piece.push('{');
                            self.scan = Scan::Arguments;
                        }
                    }
                }
                Scan::Arguments => {
                    let blank = ch.is_whitespace() && !self.in_string;
                    self.nest(ch);
                    if !blank {
                        piece.push(ch);
                    }
                    if self.depth == 1 {
                        self.flush(&mut piece, out);
                        self.scan = Scan::Rest;
                    }
                }
                Scan::Rest => {
                    self.nest(ch);
                    if self.depth == 0 {
                        if let Some(c) = self.calls.last_mut() {
                            c.closed = true;
                        }
                        self.scan = Scan::Between;
                    }
                }
            }
        }
        self.flush(&mut piece, out);
    }

    /// Gives the arguments read since the last piece, if any.
    fn flush(&mut self, piece: &mut String, out: &mut Vec<Parsed>) {
        if let Some(c) = self.calls.last_mut().filter(|_| !piece.is_empty()) {
            c.arguments.push_str(piece);
            out.push(Parsed::Arguments { index: c.index, piece: std::mem::take(piece) });
        }
    }

    /// Follows the nesting of brackets and strings.
    fn nest(&mut self, ch: char) {
        if self.in_string {
            match ch {
                _ if self.escaped => self.escaped = false,
                '\\' => self.escaped = true,
                '"' => self.in_string = false,
                _ => {}
            }
        } else {
            match ch {
                '"' => self.in_string = true,
                '{' | '[' => self.depth += 1,
                '}' | ']' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
        }
    }
}

/// How an object's text so far reads as the head of a call.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// It may still become one.
    Partial,
    /// It will not.
    No,
    /// `{"name": "<name>", "arguments": {` (or `"parameters"`), ending at the arguments'
    /// opening brace.
    Arguments(String),
}

fn head(text: &str) -> Head {
    /// Takes `lit` (after any whitespace) off the front of `rest`.
    fn take(rest: &mut &str, lits: &[&str]) -> std::result::Result<(), Head> {
        *rest = rest.trim_start();
        match lits.iter().find_map(|l| rest.strip_prefix(l)) {
            Some(after) => {
                *rest = after;
                Ok(())
            }
            None if lits.iter().any(|l| l.starts_with(*rest)) => Err(Head::Partial),
            None => Err(Head::No),
        }
    }
    let read = || -> std::result::Result<Head, Head> {
        let mut rest = text;
        for lits in [&["{"][..], &["\"name\""], &[":"], &["\""]] {
            take(&mut rest, lits)?;
        }
        let Some(end) = rest.find('"') else {
            let may_be_name =
                rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            return Err(if may_be_name { Head::Partial } else { Head::No });
        };
        let name = &rest[..end];
        if !valid_name(name) {
            return Err(Head::No);
        }
        rest = &rest[end + 1..];
        for lits in [&[","][..], &["\"arguments\"", "\"parameters\""], &[":"], &["{"]] {
            take(&mut rest, lits)?;
        }
        Ok(if rest.is_empty() { Head::Arguments(name.to_string()) } else { Head::No })
    };
    read().unwrap_or_else(|h| h)
}

/// How many bytes at the end of `s` could begin `marker`.
fn partial_suffix(s: &str, marker: &str) -> usize {
    (1..marker.len().min(s.len() + 1))
        .rev()
        .find(|&n| s.is_char_boundary(s.len() - n) && marker.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

/// `{"name": ..., <args_key>: {...}}` as (name, arguments as compact JSON text).
fn call_from_json(text: &str, args_key: &str) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(text.trim()).ok()?;
    call_from_value(&v, args_key)
}

fn call_from_value(v: &Value, args_key: &str) -> Option<(String, String)> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = v.get(args_key).or_else(|| v.get("arguments")).or_else(|| v.get("parameters")).cloned();
    let args = match args {
        Some(Value::String(s)) => s,
        Some(a) => a.to_string(),
        None => "{}".into(),
    };
    Some((name, args))
}

fn calls_from_array(text: &str) -> Option<Vec<(String, String)>> {
    match serde_json::from_str::<Value>(text.trim()).ok()? {
        Value::Array(items) => items.iter().map(|c| call_from_value(c, "arguments")).collect(),
        one @ Value::Object(_) => call_from_value(&one, "arguments").map(|c| vec![c]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything the parser gives for `pieces`, then what a client sees: adjacent text
    /// joined, complete calls, and the pieces each started call streamed.
    fn parse(format: ToolFormat, pieces: &[&str]) -> (Vec<Parsed>, Vec<(String, Vec<String>)>) {
        let mut p = ToolParser::new(format);
        let mut out: Vec<Parsed> = pieces.iter().flat_map(|x| p.push(x)).collect();
        out.extend(p.finish());
        let mut joined: Vec<Parsed> = Vec::new();
        let mut streamed: Vec<(u32, String, Vec<String>)> = Vec::new();
        for x in out {
            match (joined.last_mut(), x) {
                (_, Parsed::CallStart { index, name }) => {
                    assert!(streamed.iter().all(|s| s.0 != index), "call {index} started twice");
                    assert!(!joined.iter().any(|j| matches!(j, Parsed::Call { index: i, .. } if *i == index)));
                    streamed.push((index, name, vec![]));
                }
                (_, Parsed::Arguments { index, piece }) => {
                    let s = streamed.iter_mut().find(|s| s.0 == index).expect("arguments of a started call");
                    assert!(!piece.is_empty());
                    s.2.push(piece);
                }
                (Some(Parsed::Text(a)), Parsed::Text(b)) => a.push_str(&b),
                (_, x) => joined.push(x),
            }
        }
        // A started call that completes has the name it started with and its pieces
        // joined as its arguments.
        for j in &joined {
            if let Parsed::Call { index, name, arguments } = j {
                if let Some((_, n, pieces)) = streamed.iter().find(|s| s.0 == *index) {
                    assert_eq!((n, &pieces.concat()), (name, arguments), "call {index} as streamed");
                }
            }
        }
        (joined, streamed.into_iter().map(|(_, n, p)| (n, p)).collect())
    }

    /// What a client sees of `pieces`; the same whatever the pieces' boundaries (as
    /// whole, and one character at a time).
    fn run(format: ToolFormat, pieces: &[&str]) -> Vec<Parsed> {
        let (joined, streamed) = parse(format, pieces);
        let whole = pieces.concat();
        let chars: Vec<String> = whole.chars().map(String::from).collect();
        let by_char = parse(format, &chars.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(by_char.0, joined, "one character at a time: {whole:?}");
        let names = |s: &[(String, Vec<String>)]| s.iter().map(|(n, p)| (n.clone(), p.concat())).collect::<Vec<_>>();
        assert_eq!(names(&by_char.1), names(&streamed), "streamed one character at a time: {whole:?}");
        joined
    }

    fn call(index: u32, name: &str, args: &str) -> Parsed {
        Parsed::Call { index, name: name.into(), arguments: args.into() }
    }

    #[test]
    fn hermes_calls_are_parsed_across_pieces_with_text_around() {
        let got = run(
            ToolFormat::Hermes,
            &[
                "Let me check.",
                "<tool",
                "_call>\n{\"name\": \"get_weather\", ",
                "\"arguments\": {\"city\": \"Paris\"}}",
                "\n</tool_call>\n<tool_call>\n{\"name\":\"f\",\"arguments\":{}}\n</tool_call>",
            ],
        );
        assert_eq!(
            got,
            vec![
                Parsed::Text("Let me check.".into()),
                call(0, "get_weather", r#"{"city":"Paris"}"#),
                call(1, "f", "{}")
            ]
        );
        // A '<' that opens no call is text; so is a call that does not parse.
        assert_eq!(
            run(ToolFormat::Hermes, &["a < b", " <tool_call>oops</tool_call>"]),
            vec![Parsed::Text("a < b <tool_call>oops</tool_call>".into())]
        );
        // Cut before its closing tag, a complete JSON call still counts.
        assert_eq!(
            run(ToolFormat::Hermes, &["<tool_call>\n{\"name\":\"f\",\"arguments\":{\"x\":1}}"]),
            vec![call(0, "f", r#"{"x":1}"#)]
        );
    }

    #[test]
    fn llama3_and_mistral_calls_are_parsed() {
        assert_eq!(
            run(ToolFormat::Llama3, &["{\"name\": \"f\", ", "\"parameters\": {\"a\": 2}}"]),
            vec![call(0, "f", r#"{"a":2}"#)]
        );
        assert_eq!(run(ToolFormat::Llama3, &["The answer is {1}."]), vec![Parsed::Text("The answer is {1}.".into())]);
        assert_eq!(
            run(ToolFormat::Llama3, &["<|python_tag|>", "{\"name\":\"f\",\"parameters\":{}}"]),
            vec![call(0, "f", "{}")]
        );
        assert_eq!(
            run(
                ToolFormat::Mistral,
                &["[TOOL_CALLS]", "[{\"name\":\"a\",\"arguments\":{}},{\"name\":\"b\",\"arguments\":{\"x\":\"y\"}}]"]
            ),
            vec![call(0, "a", "{}"), call(1, "b", r#"{"x":"y"}"#)]
        );
        assert_eq!(run(ToolFormat::Mistral, &["no calls [here]"]), vec![Parsed::Text("no calls [here]".into())]);
    }

    #[test]
    fn arguments_stream_once_the_name_and_the_opening_brace_are_read() {
        // As SmolLM2 writes a call, token by token: the call starts at the arguments'
        // brace, then each token's piece of the arguments goes out, whitespace left out.
        let tokens = [
            "<tool_call>",
            "\n{\"",
            "name",
            "\": \"",
            "get",
            "_weather",
            "\", \"",
            "arguments",
            "\": {",
            "\"city",
            "\": \"",
            "New York",
            "\", \"unit\": \"",
            "celsius\"}}",
            "\n</tool_call>",
        ];
        let mut p = ToolParser::new(ToolFormat::Fallback);
        let got: Vec<Vec<Parsed>> = tokens.iter().map(|t| p.push(t)).collect();
        assert!(got[..8].iter().all(Vec::is_empty), "{got:?}");
        let start = Parsed::CallStart { index: 0, name: "get_weather".into() };
        assert_eq!(got[8], vec![start, Parsed::Arguments { index: 0, piece: "{".into() }]);
        let piece = |s: &str| vec![Parsed::Arguments { index: 0, piece: s.into() }];
        assert_eq!(got[9], piece("\"city"));
        assert_eq!(got[11], piece("New York"));
        assert_eq!(got[12], piece("\",\"unit\":\""));
        assert_eq!(got[13], piece("celsius\"}"));
        assert_eq!(got[14], vec![call(0, "get_weather", r#"{"city":"New York","unit":"celsius"}"#)]);
        assert!(p.finish().is_empty());
        let (_, streamed) = parse(ToolFormat::Fallback, &tokens);
        assert_eq!(streamed.len(), 1);
        assert_eq!(streamed[0].1.len(), 6, "{streamed:?}");

        // Strings keep their whitespace, brackets and escapes; nesting inside strings
        // does not end the arguments.
        let args = r#"{"q": "a \"b\" {c}  ]d", "n": [1, {"m": null}]}"#;
        let body = format!("<tool_call>{{\"name\": \"f\", \"arguments\": {args}}}</tool_call>");
        assert_eq!(
            run(ToolFormat::Hermes, &[&body]),
            vec![call(0, "f", r#"{"q":"a \"b\" {c}  ]d","n":[1,{"m":null}]}"#)]
        );
    }

    #[test]
    fn a_started_call_that_turns_out_malformed_ends_as_text() {
        for (text, streamed) in [
            // Garbage after the arguments, or cut inside them: all of it is text.
            ("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1} oops\n</tool_call>", "{\"x\":1}"),
            ("<tool_call>{\"name\":\"f\",\"arguments\":{\"x\":\"ab", "{\"x\":\"ab"),
            ("<tool_call>{\"name\":\"f\",\"arguments\":{\"x\":}}</tool_call>", "{\"x\":}"),
        ] {
            let (got, pieces) = parse(ToolFormat::Hermes, &[text]);
            assert_eq!(got, vec![Parsed::Text(text.into())], "{text}");
            assert_eq!(
                pieces.iter().map(|(n, p)| (n.as_str(), p.concat())).collect::<Vec<_>>(),
                [("f", streamed.into())]
            );
            run(ToolFormat::Hermes, &[text]);
        }
        // After an abandoned call, the next one is numbered after it.
        let got = run(
            ToolFormat::Hermes,
            &[
                "<tool_call>{\"name\":\"f\",\"arguments\":{]}</tool_call>",
                "<tool_call>{\"name\":\"g\",\"arguments\":{}}</tool_call>",
            ],
        );
        assert_eq!(got[1..], [call(1, "g", "{}")], "{got:?}");
    }

    #[test]
    fn calls_whose_head_reads_otherwise_are_given_whole() {
        for (text, args) in [
            (r#"<tool_call>{"arguments": {"x": 1}, "name": "f"}</tool_call>"#, r#"{"x":1}"#),
            (r#"<tool_call>{"name": "f", "arguments": "{\"x\": 1}"}</tool_call>"#, r#"{"x": 1}"#),
            (r#"<tool_call>{"name": "f\u0031", "arguments": {}}</tool_call>"#, "{}"),
        ] {
            let (got, streamed) = parse(ToolFormat::Hermes, &[text]);
            assert!(streamed.is_empty(), "{text}: {streamed:?}");
            assert!(matches!(&got[..], [Parsed::Call { index: 0, arguments, .. }] if arguments == args), "{got:?}");
        }
    }

    #[test]
    fn llama3_and_mistral_arguments_stream_too() {
        let (got, streamed) = parse(
            ToolFormat::Llama3,
            &["<|python_tag|>", r#"{"name": "f", "parameters": {"a": 2}}; {"name": "g", "parameters": {}}"#],
        );
        assert_eq!(got, vec![call(0, "f", r#"{"a":2}"#), call(1, "g", "{}")]);
        assert_eq!(streamed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["f", "g"]);
        let text = r#"[TOOL_CALLS] [{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": "y, }"}}]"#;
        assert_eq!(run(ToolFormat::Mistral, &[text]), vec![call(0, "a", "{}"), call(1, "b", r#"{"x":"y, }"}"#)]);
        assert_eq!(parse(ToolFormat::Mistral, &[text]).1.len(), 2);
        // A list that does not parse is text, streamed or not.
        let text = r#"[TOOL_CALLS][{"name": "a", "arguments": {}}, oops]"#;
        assert_eq!(run(ToolFormat::Mistral, &[text]), vec![Parsed::Text(text.into())]);
    }

    #[test]
    fn formats_are_detected_from_templates() {
        assert_eq!(
            ToolFormat::detect("{% if tools %}<tools>{{ tools }}</tools><tool_call>{% endif %}"),
            ToolFormat::Hermes
        );
        assert_eq!(ToolFormat::detect("[AVAILABLE_TOOLS]{{ tools }}[TOOL_CALLS]"), ToolFormat::Mistral);
        assert_eq!(ToolFormat::detect("{% if tools %}ipython{% endif %}<|eot_id|>"), ToolFormat::Llama3);
        assert_eq!(ToolFormat::detect("<|im_start|>{{ message.role }}"), ToolFormat::Fallback);
        assert_eq!(ToolFormat::Mistral.call_id(7, 0).len(), 9);
        assert!(ToolFormat::Hermes.call_id(7, 0).starts_with("call_"));
        assert_ne!(ToolFormat::Hermes.call_id(7, 0), ToolFormat::Hermes.call_id(7, 1));
    }

    #[test]
    fn bad_tools_are_refused_by_field() {
        let t = |name: &str, params: &str, choice: ToolChoice| Tools {
            defs: vec![ToolDef { name: name.into(), description: String::new(), parameters: params.into() }],
            choice,
        };
        assert!(t("get_weather", "{}", ToolChoice::Required).validate().is_ok());
        for (bad, field) in [
            (t("bad name", "{}", ToolChoice::Auto), "tools"),
            (t("f", "[]", ToolChoice::Auto), "tools"),
            (t("f", "{}", ToolChoice::Function("g".into())), "tool_choice"),
        ] {
            assert!(bad.validate().err().map(|e| e.to_string()).unwrap_or_default().contains(field), "{bad:?}");
        }
    }
}
