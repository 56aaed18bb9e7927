//! Tools and structured output between the APIs' shapes and the engine's: `tools` and
//! `tool_choice`, `response_format` (OpenAI) and `format` (Ollama), calls in messages.

use nave_inference::grammar::Constraint;
use nave_inference::tools::{ToolCall, ToolChoice, ToolDef, Tools};
use nave_inference::ChatMessage;
use serde_json::{json, Value};

use super::types::{CallBody, ToolBody, ToolCallBody};
use crate::error::ApiError;

fn bad(field: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("{field}: {why}")).with_param(field)
}

/// OpenAI's `response_format`: text (no constraint), any JSON object, or JSON matching a
/// schema.
pub fn response_format(v: Option<&Value>) -> Result<Option<Constraint>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Constraint::json_object())),
        Some("json_schema") => {
            let schema = v
                .pointer("/json_schema/schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| bad("response_format.json_schema.schema", "a JSON schema object is required"))?;
            Ok(Some(Constraint::JsonSchema(schema.to_string())))
        }
        _ => Err(bad("response_format", "type must be \"text\", \"json_object\" or \"json_schema\"")),
    }
}

/// Ollama's `format`: `"json"` or a schema.
pub fn ollama_format(v: Option<&Value>) -> Result<Option<Constraint>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(Constraint::json_object())),
        Some(schema @ Value::Object(_)) => Ok(Some(Constraint::JsonSchema(schema.to_string()))),
        Some(_) => Err(bad("format", "must be \"json\" or a JSON schema object")),
    }
}

/// `tools` with `tool_choice` as the engine takes them; `None` when no tool may be called
/// (none offered, or `tool_choice: "none"`).
pub fn tools(tools: Option<&[ToolBody]>, choice: Option<&Value>) -> Result<Option<Tools>, ApiError> {
    let defs = tools.unwrap_or_default();
    let choice = match choice {
        None => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => return Ok(None),
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            _ => return Err(bad("tool_choice", "must be \"none\", \"auto\", \"required\" or a named function")),
        },
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) if v.get("type").and_then(Value::as_str) == Some("function") => {
                ToolChoice::Function(name.to_string())
            }
            _ => {
                return Err(bad(
                    "tool_choice",
                    "a named choice is {\"type\": \"function\", \"function\": {\"name\": ...}}",
                ))
            }
        },
    };
    if defs.is_empty() {
        return match choice {
            ToolChoice::Auto => Ok(None),
            _ => Err(bad("tool_choice", "needs tools")),
        };
    }
    let defs = defs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if t.kind != "function" {
                return Err(bad(&format!("tools[{i}].type"), "only \"function\" tools are supported"));
            }
            let parameters = match &t.function.parameters {
                None => json!({"type": "object", "properties": {}}),
                Some(p @ Value::Object(_)) => p.clone(),
                Some(_) => return Err(bad(&format!("tools[{i}].function.parameters"), "must be a JSON schema object")),
            };
            Ok(ToolDef {
                name: t.function.name.clone(),
                description: t.function.description.clone().unwrap_or_default(),
                parameters: parameters.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Names, duplicates and the named choice are checked with the other sampling
    // parameters (`SamplingParams::validate`, through `openai::checked`).
    Ok(Some(Tools { defs, choice }))
}

/// The calls of an incoming message; arguments as JSON text (OpenAI sends text, Ollama an
/// object).
pub fn calls_in(calls: Option<&[ToolCallBody]>, field: &str) -> Result<Vec<ToolCall>, ApiError> {
    calls
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let name = c.function.name.clone().ok_or_else(|| bad(&format!("{field}[{i}].function.name"), "missing"))?;
            let arguments = match &c.function.arguments {
                None => "{}".to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            };
            Ok(ToolCall { id: c.id.clone().unwrap_or_else(|| format!("call_{i}")), name, arguments })
        })
        .collect()
}

/// A message with the calls it carries and the call it answers.
pub fn message(role: String, content: String, calls: Vec<ToolCall>, answers: Option<String>) -> ChatMessage {
    ChatMessage { tool_calls: calls, tool_call_id: answers, ..ChatMessage::new(role, content) }
}

/// A call as OpenAI writes it (arguments as JSON text).
pub fn call_out(c: &ToolCall) -> ToolCallBody {
    ToolCallBody {
        index: None,
        id: Some(c.id.clone()),
        kind: Some("function".into()),
        function: CallBody { name: Some(c.name.clone()), arguments: Some(Value::String(c.arguments.clone())) },
    }
}

/// A call as Ollama writes it (arguments as an object).
pub fn ollama_call_out(c: &ToolCall) -> ToolCallBody {
    let args = serde_json::from_str(&c.arguments).unwrap_or_else(|_| Value::String(c.arguments.clone()));
    ToolCallBody { function: CallBody { name: Some(c.name.clone()), arguments: Some(args) }, ..Default::default() }
}
