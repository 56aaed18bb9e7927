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
    /// A complete call: its name and arguments (JSON text).
    Call { name: String, arguments: String },
}

/// Reads a model's output as text and calls, as it arrives: text that may begin a call is
/// held until it is clearly not one, a call is given once it is complete.
pub struct ToolParser {
    format: ToolFormat,
    buf: String,
    /// Inside a call (after its opening marker), or for formats without one, inside what
    /// may be the call JSON.
    in_call: bool,
    /// Whether any text was given: a Llama 3 call must open the output.
    started: bool,
}

impl ToolParser {
    pub fn new(format: ToolFormat) -> Self {
        Self { format, buf: String::new(), in_call: false, started: false }
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
                        let Some(end) = self.buf.find(HERMES_CLOSE) else { break };
                        let body = self.buf[..end].to_string();
                        self.buf.drain(..end + HERMES_CLOSE.len());
                        self.in_call = false;
                        out.push(call_from_json(&body, "arguments").map_or_else(
                            || Parsed::Text(format!("{HERMES_OPEN}{body}{HERMES_CLOSE}")),
                            |(name, arguments)| Parsed::Call { name, arguments },
                        ));
                        // A newline between calls is not text.
                        if self.buf.starts_with('\n') {
                            self.buf.remove(0);
                        }
                        continue;
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
                        break; // the call list runs to the end of the output
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
                        break;
                    }
                    let trimmed = self.buf.trim_start();
                    if !self.started && (trimmed.starts_with('{') || trimmed.starts_with(PYTHON_TAG)) {
                        self.in_call = true;
                        break;
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
        let rest = std::mem::take(&mut self.buf);
        if !self.in_call {
            return if rest.is_empty() { vec![] } else { vec![Parsed::Text(rest)] };
        }
        self.in_call = false;
        let calls = match self.format {
            ToolFormat::Hermes | ToolFormat::Fallback => call_from_json(&rest, "arguments").map(|c| vec![c]),
            ToolFormat::Mistral => calls_from_array(&rest),
            ToolFormat::Llama3 => {
                let body = rest.trim_start().trim_start_matches(PYTHON_TAG);
                body.split(';').map(|c| call_from_json(c, "parameters")).collect::<Option<Vec<_>>>()
            }
        };
        match calls {
            Some(calls) if !calls.is_empty() => {
                calls.into_iter().map(|(name, arguments)| Parsed::Call { name, arguments }).collect()
            }
            _ => {
                let open = match self.format {
                    ToolFormat::Hermes | ToolFormat::Fallback => HERMES_OPEN,
                    ToolFormat::Mistral => MISTRAL_OPEN,
                    ToolFormat::Llama3 => "",
                };
                vec![Parsed::Text(format!("{open}{rest}"))]
            }
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

    fn run(format: ToolFormat, pieces: &[&str]) -> Vec<Parsed> {
        let mut p = ToolParser::new(format);
        let mut out: Vec<Parsed> = pieces.iter().flat_map(|x| p.push(x)).collect();
        out.extend(p.finish());
        // Adjacent text pieces joined, to compare what a client sees.
        let mut joined: Vec<Parsed> = Vec::new();
        for x in out {
            match (joined.last_mut(), x) {
                (Some(Parsed::Text(a)), Parsed::Text(b)) => a.push_str(&b),
                (_, x) => joined.push(x),
            }
        }
        joined
    }

    fn call(name: &str, args: &str) -> Parsed {
        Parsed::Call { name: name.into(), arguments: args.into() }
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
            vec![Parsed::Text("Let me check.".into()), call("get_weather", r#"{"city":"Paris"}"#), call("f", "{}")]
        );
        // A '<' that opens no call is text; so is a call that does not parse.
        assert_eq!(
            run(ToolFormat::Hermes, &["a < b", " <tool_call>oops</tool_call>"]),
            vec![Parsed::Text("a < b <tool_call>oops</tool_call>".into())]
        );
        // Cut before its closing tag, a complete JSON call still counts.
        assert_eq!(
            run(ToolFormat::Hermes, &["<tool_call>\n{\"name\":\"f\",\"arguments\":{\"x\":1}}"]),
            vec![call("f", r#"{"x":1}"#)]
        );
    }

    #[test]
    fn llama3_and_mistral_calls_are_parsed() {
        assert_eq!(
            run(ToolFormat::Llama3, &["{\"name\": \"f\", ", "\"parameters\": {\"a\": 2}}"]),
            vec![call("f", r#"{"a":2}"#)]
        );
        assert_eq!(run(ToolFormat::Llama3, &["The answer is {1}."]), vec![Parsed::Text("The answer is {1}.".into())]);
        assert_eq!(
            run(ToolFormat::Llama3, &["<|python_tag|>", "{\"name\":\"f\",\"parameters\":{}}"]),
            vec![call("f", "{}")]
        );
        assert_eq!(
            run(
                ToolFormat::Mistral,
                &["[TOOL_CALLS]", "[{\"name\":\"a\",\"arguments\":{}},{\"name\":\"b\",\"arguments\":{\"x\":\"y\"}}]"]
            ),
            vec![call("a", "{}"), call("b", r#"{"x":"y"}"#)]
        );
        assert_eq!(run(ToolFormat::Mistral, &["no calls [here]"]), vec![Parsed::Text("no calls [here]".into())]);
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
