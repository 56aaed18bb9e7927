//! Constrained decoding on the real SmolLM2 model: sampled hot, the output always parses
//! and validates against the request's schema; a grammar the compiler refuses is the
//! request's error; a forced tool call matches its function's schema, its arguments
//! streamed in pieces as they are generated.

use std::path::PathBuf;

use nave_inference::engine::collect_all;
use nave_inference::grammar::Constraint;
use nave_inference::store::ModelStore;
use nave_inference::*;
use serde_json::{json, Value};

fn engine() -> Engine {
    let path: PathBuf = ModelStore::from_env()
        .ensure("smollm2-135m", &mut |_| {})
        .expect("the smollm2-135m model is in the store or can be pulled");
    let model = LoadedModel::load("smollm2-135m", path, LoadOptions::default()).expect("model loads");
    let ledger = Ledger::new("cpu", 2 << 30, 0);
    Engine::start(model, EngineConfig { kv_pool_bytes: 128 << 20, ..Default::default() }, &ledger)
        .expect("engine starts")
}

fn chat(q: &str, params: SamplingParams) -> GenerateRequest {
    GenerateRequest { request_id: "c".into(), prompt: Prompt::Chat(vec![ChatMessage::new("user", q)]), params }
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "role": {"enum": ["admin", "user", "guest"]},
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"}
                },
                "required": ["city", "zip"],
                "additionalProperties": false
            },
            "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 3},
            "active": {"type": "boolean"}
        },
        "required": ["name", "age", "role", "address", "tags", "active"],
        "additionalProperties": false
    })
}

/// The checks of JSON Schema that [`schema`] uses, so a failure says what broke.
fn validate(v: &Value, s: &Value, at: &str) -> std::result::Result<(), String> {
    let bad = |why: String| Err(format!("{at}: {why} in {v}"));
    if let Some(options) = s.get("enum").and_then(Value::as_array) {
        if !options.contains(v) {
            return bad("not one of the enum".into());
        }
    }
    match s.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(o) = v.as_object() else { return bad("not an object".into()) };
            let props = s["properties"].as_object().cloned().unwrap_or_default();
            for r in s["required"].as_array().into_iter().flatten() {
                if !o.contains_key(r.as_str().unwrap_or("")) {
                    return bad(format!("missing {r}"));
                }
            }
            for (k, x) in o {
                match props.get(k) {
                    Some(ps) => validate(x, ps, &format!("{at}.{k}"))?,
                    None if s["additionalProperties"] == json!(false) => return bad(format!("extra key {k}")),
                    None => {}
                }
            }
        }
        Some("array") => {
            let Some(a) = v.as_array() else { return bad("not an array".into()) };
            let (lo, hi) = (s["minItems"].as_u64().unwrap_or(0), s["maxItems"].as_u64().unwrap_or(u64::MAX));
            if (a.len() as u64) < lo || a.len() as u64 > hi {
                return bad(format!("{} items", a.len()));
            }
            for (i, x) in a.iter().enumerate() {
                validate(x, &s["items"], &format!("{at}[{i}]"))?;
            }
        }
        Some("string") => {
            let Some(t) = v.as_str() else { return bad("not a string".into()) };
            if s["maxLength"].as_u64().is_some_and(|m| t.chars().count() as u64 > m) {
                return bad("too long".into());
            }
            if s.get("pattern").is_some() && !(t.len() == 5 && t.bytes().all(|b| b.is_ascii_digit())) {
                return bad("does not match ^[0-9]{5}$".into());
            }
        }
        Some("integer") => {
            let Some(n) = v.as_i64() else { return bad("not an integer".into()) };
            if n < s["minimum"].as_i64().unwrap_or(i64::MIN) || n > s["maximum"].as_i64().unwrap_or(i64::MAX) {
                return bad("out of range".into());
            }
        }
        Some("boolean") if !v.is_boolean() => return bad("not a boolean".into()),
        _ => {}
    }
    Ok(())
}

#[test]
fn sampled_outputs_always_validate_against_the_schema() {
    let e = engine();
    let constraint = Some(Constraint::JsonSchema(schema().to_string()));
    let streams: Vec<_> = (0..100u64)
        .map(|i| {
            let params = SamplingParams {
                temperature: 1.0,
                seed: Some(i),
                max_tokens: 256,
                constraint: constraint.clone(),
                ..Default::default()
            };
            e.submit(chat("Describe a person as JSON.", params)).expect("queued")
        })
        .collect();
    let mut distinct = std::collections::HashSet::new();
    for (i, s) in streams.into_iter().enumerate() {
        let (_, choices) = collect_all(s).expect("an answer");
        let c = &choices[0];
        assert_eq!(c.finish, FinishReason::Stop, "request {i} was cut: {}", c.text);
        let v: Value = serde_json::from_str(&c.text).unwrap_or_else(|e| panic!("request {i}: {e}: {}", c.text));
        validate(&v, &schema(), "$").unwrap_or_else(|e| panic!("request {i}: {e}"));
        distinct.insert(c.text.clone());
    }
    // Sampled hot, the answers differ: the mask constrains, it does not dictate.
    assert!(distinct.len() > 50, "only {} distinct answers", distinct.len());
}

#[test]
fn grammars_and_regexes_constrain_and_bad_ones_are_refused() {
    let e = engine();
    let run = |c: Constraint, temperature: f32| {
        let params =
            SamplingParams { temperature, seed: Some(5), max_tokens: 64, constraint: Some(c), ..Default::default() };
        e.submit(chat("Answer yes or no: is the sky blue?", params)).and_then(collect_all)
    };
    let (_, c) = run(Constraint::Regex("(yes|no)".into()), 1.0).expect("answer");
    assert!(c[0].text == "yes" || c[0].text == "no", "{:?}", c[0].text);
    assert_eq!(c[0].finish, FinishReason::Stop);
    let (_, c) = run(Constraint::Lark(r#"start: "answer: " ("yes" | "no")"#.into()), 0.0).expect("answer");
    assert!(c[0].text.starts_with("answer: "), "{:?}", c[0].text);
    let (_, c) = run(Constraint::json_object(), 1.0).expect("answer");
    assert!(
        serde_json::from_str::<serde_json::Map<String, Value>>(&c[0].text).is_ok()
            || c[0].finish == FinishReason::Length
    );

    for bad in [
        Constraint::Lark("start: undefined_rule".into()),
        Constraint::JsonSchema("{not json".into()),
        Constraint::JsonSchema(r#"{"type": "no-such-type"}"#.into()),
        Constraint::Regex("(unclosed".into()),
    ] {
        let err = run(bad.clone(), 0.0).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("grammar") || err.contains("schema"), "{bad:?}: {err}");
    }
}

#[test]
fn a_required_tool_call_matches_its_schema_and_its_result_goes_back() {
    use nave_inference::tools::{ToolChoice, ToolDef, Tools};
    let e = engine();
    let weather = ToolDef {
        name: "get_weather".into(),
        description: "The weather in a city now.".into(),
        parameters: json!({
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"]
        })
        .to_string(),
    };
    let time = ToolDef { name: "get_time".into(), description: "The time now.".into(), parameters: "{}".into() };
    let tools = |choice| Some(Tools { defs: vec![weather.clone(), time.clone()], choice });
    let question = ChatMessage::new("user", "What is the weather in Paris?");
    for (choice, temperature) in [(ToolChoice::Required, 0.0), (ToolChoice::Function("get_weather".into()), 1.0)] {
        let params = SamplingParams {
            temperature,
            seed: Some(3),
            max_tokens: 128,
            tools: tools(choice.clone()),
            ..Default::default()
        };
        let req = GenerateRequest { request_id: "t".into(), prompt: Prompt::Chat(vec![question.clone()]), params };
        let (_, c) = collect_all(e.submit(req).expect("queued")).expect("an answer");
        let c = &c[0];
        assert_eq!(c.finish, FinishReason::ToolCalls, "{choice:?}: {:?} {:?}", c.text, c.tool_calls);
        assert!(c.text.trim().is_empty(), "a forced call has no text: {:?}", c.text);
        let call = &c.tool_calls[0];
        assert!(call.id.starts_with("call_"));
        if matches!(choice, ToolChoice::Function(_)) {
            assert_eq!(call.name, "get_weather");
        }
        let args: Value = serde_json::from_str(&call.arguments).expect("arguments are JSON");
        if call.name == "get_weather" {
            assert!(
                args["city"].is_string() && ["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap_or(""))
            );
        }
    }
    // Its events: the call starts once its name is written, its arguments come in
    // pieces as they are generated, then the complete call of the same index and id.
    let params = SamplingParams { max_tokens: 128, tools: tools(ToolChoice::Required), ..SamplingParams::greedy(128) };
    let req = GenerateRequest { request_id: "s".into(), prompt: Prompt::Chat(vec![question.clone()]), params };
    let mut events = e.submit(req).expect("queued");
    let (mut start, mut pieces, mut complete) = (None, Vec::new(), None);
    while let Some(ev) = events.blocking_recv() {
        match ev {
            Event::ToolCallStart { index: 0, id, name, .. } => start = Some((id, name)),
            Event::ToolCallArguments { index: 0, arguments, .. } => {
                assert!(start.is_some() && complete.is_none(), "arguments between the start and the end");
                pieces.push(arguments);
            }
            Event::ToolCall { index: 0, call, .. } => complete = Some(call),
            Event::Error { message, .. } => panic!("{message}"),
            _ => {}
        }
    }
    let call = complete.expect("a complete call");
    assert_eq!(start, Some((call.id.clone(), call.name.clone())));
    assert_eq!(pieces.concat(), call.arguments);
    assert!(pieces.len() > 1, "the arguments came in {} piece(s): {pieces:?}", pieces.len());
    serde_json::from_str::<Value>(&call.arguments).expect("arguments are JSON");

    // The call and its result go back; the model answers in text.
    let call = nave_inference::tools::ToolCall {
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: r#"{"city":"Paris","unit":"celsius"}"#.into(),
    };
    let messages = vec![
        question,
        ChatMessage { tool_calls: vec![call], ..ChatMessage::new("assistant", "") },
        ChatMessage { tool_call_id: Some("call_1".into()), ..ChatMessage::new("tool", r#"{"temperature": 21}"#) },
    ];
    let params = SamplingParams { max_tokens: 48, tools: tools(ToolChoice::Auto), ..SamplingParams::greedy(48) };
    let req = GenerateRequest { request_id: "t2".into(), prompt: Prompt::Chat(messages), params };
    let (_, c) = collect_all(e.submit(req).expect("queued")).expect("an answer");
    assert!(!c[0].text.trim().is_empty(), "{:?}", c[0]);
}

#[test]
fn embeddings_are_normalized_deterministic_and_closer_for_closer_texts() {
    let e = engine();
    let embed = |text: &str| {
        let params = SamplingParams { embed: true, ..Default::default() };
        let req = GenerateRequest { request_id: "e".into(), prompt: Prompt::Text(text.into()), params };
        let (_, c) = collect_all(e.submit(req).expect("queued")).expect("an embedding");
        assert_eq!(c[0].usage.completion_tokens, 0);
        assert!(c[0].usage.prompt_tokens > 0);
        c[0].embedding.clone().expect("an embedding")
    };
    let cat = embed("The cat sat on the mat.");
    assert_eq!(cat.len(), 576, "SmolLM2-135M's hidden size");
    let norm: f32 = cat.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    assert_eq!(cat, embed("The cat sat on the mat."), "the same text, the same vector");
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let kitten = embed("A kitten was sitting on the rug.");
    let tax = embed("Quarterly tax filings are due in April.");
    assert!(dot(&cat, &kitten) > dot(&cat, &tax), "{} vs {}", dot(&cat, &kitten), dot(&cat, &tax));
    // Many at once, batched with each other: the same vectors as alone.
    let streams: Vec<_> = (0..8)
        .map(|_| {
            let params = SamplingParams { embed: true, ..Default::default() };
            e.submit(GenerateRequest {
                request_id: "b".into(),
                prompt: Prompt::Text("The cat sat on the mat.".into()),
                params,
            })
            .expect("queued")
        })
        .collect();
    for s in streams {
        let v = collect_all(s).expect("an embedding").1[0].embedding.clone().expect("a vector");
        assert!(v.iter().zip(&cat).all(|(a, b)| (a - b).abs() < 1e-4));
    }
}
