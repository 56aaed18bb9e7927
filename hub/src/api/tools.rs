//! Tools and structured output between the APIs' shapes and the engine's: `tools` and
//! `tool_choice`, `response_format` (OpenAI) and `format` (Ollama), calls in messages.

use nave_inference::grammar::Constraint;
use nave_inference::tools::{ToolCall, ToolChoice, ToolDef, Tools};
use nave_inference::ChatMessage;
use serde_json::{json, Value};

use super::types::{CallBody, ResponsesTool, ToolBody, ToolCallBody};
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

/// Where an API writes a function's fields: chat nests them under `function`, the
/// Responses API writes them beside the tool's `type` (in `tools` and in a named
/// `tool_choice` alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Chat,
    Responses,
}

impl Shape {
    /// The path of a function's field inside a tool.
    fn field(self, name: &str) -> String {
        match self {
            Shape::Chat => format!("function.{name}"),
            Shape::Responses => name.to_string(),
        }
    }
}

/// A function as either API offers it.
struct Offered<'a> {
    kind: &'a str,
    name: Option<&'a str>,
    description: Option<&'a str>,
    parameters: Option<&'a Value>,
}

/// Chat's `tools` with `tool_choice` as the engine takes them; `None` when no tool may be
/// called (none offered, or `tool_choice: "none"`).
pub fn tools(tools: Option<&[ToolBody]>, choice: Option<&Value>) -> Result<Option<Tools>, ApiError> {
    let offered = tools.unwrap_or_default().iter().map(|t| Offered {
        kind: &t.kind,
        name: Some(&t.function.name),
        description: t.function.description.as_deref(),
        parameters: t.function.parameters.as_ref(),
    });
    engine_tools(offered.collect(), choice, Shape::Chat)
}

/// The Responses API's `tools` with `tool_choice`, as [`tools`] takes chat's.
pub fn responses_tools(tools: Option<&[ResponsesTool]>, choice: Option<&Value>) -> Result<Option<Tools>, ApiError> {
    let offered = tools.unwrap_or_default().iter().map(|t| Offered {
        kind: &t.kind,
        name: t.name.as_deref(),
        description: t.description.as_deref(),
        parameters: t.parameters.as_ref(),
    });
    engine_tools(offered.collect(), choice, Shape::Responses)
}

fn engine_tools(defs: Vec<Offered>, choice: Option<&Value>, shape: Shape) -> Result<Option<Tools>, ApiError> {
    let named = match shape {
        Shape::Chat => "/function/name",
        Shape::Responses => "/name",
    };
    let choice = match choice {
        None => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => return Ok(None),
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            _ => return Err(bad("tool_choice", "must be \"none\", \"auto\", \"required\" or a named function")),
        },
        Some(v) => match v.pointer(named).and_then(Value::as_str) {
            Some(name) if v.get("type").and_then(Value::as_str) == Some("function") => {
                ToolChoice::Function(name.to_string())
            }
            _ => {
                let example = match shape {
                    Shape::Chat => "{\"type\": \"function\", \"function\": {\"name\": ...}}",
                    Shape::Responses => "{\"type\": \"function\", \"name\": ...}",
                };
                return Err(bad("tool_choice", format!("a named choice is {example}")));
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
            let name = t.name.ok_or_else(|| bad(&format!("tools[{i}].{}", shape.field("name")), "missing"))?;
            let parameters = match t.parameters {
                None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
                Some(p @ Value::Object(_)) => p.clone(),
                Some(_) => {
                    return Err(bad(
                        &format!("tools[{i}].{}", shape.field("parameters")),
                        "must be a JSON schema object",
                    ))
                }
            };
            Ok(ToolDef {
                name: name.to_string(),
                description: t.description.unwrap_or_default().to_string(),
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
            let arguments = arguments_text(c.function.arguments.as_ref());
            Ok(ToolCall { id: c.id.clone().unwrap_or_else(|| format!("call_{i}")), name, arguments })
        })
        .collect()
}

/// A call's arguments as JSON text, however a client sent them: text, an object, or none.
pub fn arguments_text(v: Option<&Value>) -> String {
    match v {
        None => "{}".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
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
