//! Tool calls through a real hub, from a mock spoke that writes one as the engine does
//! (text, then the call started, its arguments in pieces, the call complete): chat
//! streams the arguments piece by piece as they come; the Responses API answers
//! `function_call` items after the `message` item, whole and streamed in OpenAI's event
//! order, stores them, and a `function_call_output` sent with `previous_response_id`
//! (or the whole exchange sent back as input items) reaches the spoke as the assistant's
//! call and a `tool` message that answers it. Malformed tools and items are 400s naming
//! the field.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use crate::common::mock_spoke::{self, Mode, CALL_ARGUMENTS, CALL_TEXT};
use crate::common::wait_until;
use nave_inference::{ChatMessage, Prompt};
use serde_json::{json, Value};

fn weather() -> Value {
    json!({"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}})
}

/// The SSE events of a streamed answer: (event name, data), `[DONE]` left out.
fn events(r: reqwest::blocking::Response) -> Vec<(String, Value)> {
    let mut name = String::new();
    let mut out = Vec::new();
    for line in BufReader::new(r).lines().map_while(Result::ok) {
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_string();
        } else if let Some(d) = line.strip_prefix("data: ").filter(|d| *d != "[DONE]") {
            out.push((std::mem::take(&mut name), serde_json::from_str(d).expect("JSON data")));
        }
    }
    out
}

#[test]
fn tool_calls_stream_and_go_round_the_responses_api() {
    let (spokes, cluster) = mock_spoke::cluster(&["s1"], Mode::Answer, "heartbeat_interval_ms = 250");
    let spoke = &spokes[0];
    let (hub, key) = (cluster.hubs[0].clone(), cluster.key.clone());
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
    let post =
        |path: &str, body: &Value| http.post(format!("{hub}{path}")).bearer_auth(&key).json(body).send().expect("sent");
    let ask = [json!({"role": "user", "content": "What is the weather in Paris?"})];
    let chat_tools =
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": weather()["parameters"]}}]);
    let chat = |stream: bool| json!({"model": "mock", "messages": ask, "tools": chat_tools, "stream": stream});
    wait_until(Duration::from_secs(30), "the hub hearing the spoke", || {
        match post("/v1/chat/completions", &chat(false)).status().as_u16() {
            200 => Ok(()),
            other => Err(other),
        }
    });
    let arguments = CALL_ARGUMENTS.concat();

    // Chat: the call whole, and streamed with its arguments in the pieces they came in.
    let whole: Value = post("/v1/chat/completions", &chat(false)).json().expect("json");
    let message = &whole["choices"][0]["message"];
    assert_eq!(message["content"], CALL_TEXT, "{whole}");
    assert_eq!(message["tool_calls"][0]["function"], json!({"name": "get_weather", "arguments": arguments}), "{whole}");
    assert_eq!(whole["choices"][0]["finish_reason"], "tool_calls");
    let chunks = events(post("/v1/chat/completions", &chat(true)));
    let calls: Vec<&Value> = chunks.iter().filter_map(|(_, c)| c["choices"][0]["delta"]["tool_calls"].get(0)).collect();
    assert_eq!(
        calls[0],
        &json!({"index": 0, "id": "call_s1", "type": "function", "function": {"name": "get_weather", "arguments": ""}})
    );
    let pieces: Vec<&str> = calls[1..].iter().map(|c| c["function"]["arguments"].as_str().unwrap_or("?")).collect();
    assert_eq!(pieces, CALL_ARGUMENTS, "{calls:?}");
    assert!(calls[1..].iter().all(|c| c.get("id").is_none() && c["index"] == 0), "{calls:?}");
    assert_eq!(chunks.last().map(|(_, c)| &c["choices"][0]["finish_reason"]), Some(&json!("tool_calls")));

    // Responses, whole: the message, then the call.
    let responses = |stream: bool, extra: Value| {
        let mut body = json!({"model": "mock", "input": "What is the weather in Paris?", "tools": [weather()],
                              "tool_choice": "auto", "stream": stream});
        body.as_object_mut().expect("object").extend(extra.as_object().cloned().unwrap_or_default());
        post("/v1/responses", &body)
    };
    let r: Value = responses(false, json!({})).json().expect("json");
    let call = json!({"type": "function_call", "id": "fc_s1", "call_id": "call_s1", "name": "get_weather",
                      "arguments": arguments, "status": "completed"});
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["output"][0]["type"], "message");
    assert_eq!(r["output"][0]["content"][0]["text"], CALL_TEXT);
    assert_eq!(r["output"][1], call, "{r}");

    // Streamed: the message item, then the call's, its arguments as they came.
    let evs = events(responses(true, json!({})));
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
    ];
    expected.extend(["response.function_call_arguments.delta"; 3]);
    expected.extend(["response.function_call_arguments.done", "response.output_item.done", "response.completed"]);
    assert_eq!(names, expected);
    assert!(evs.iter().enumerate().all(|(i, (n, e))| e["sequence_number"] == i && e["type"] == *n), "{evs:?}");
    let added = &evs[8].1;
    assert_eq!((added["output_index"].as_u64(), &added["item"]["status"]), (Some(1), &json!("in_progress")));
    assert_eq!((&added["item"]["arguments"], &added["item"]["id"]), (&json!(""), &json!("fc_s1")));
    let deltas: Vec<&Value> = evs[9..12].iter().map(|(_, e)| &e["delta"]).collect();
    assert_eq!(deltas, CALL_ARGUMENTS);
    assert_eq!(evs[12].1["arguments"], arguments);
    assert_eq!(evs[13].1["item"], call);
    let streamed = &evs[14].1["response"];
    assert_eq!(streamed["output"][1], call, "{streamed}");
    let rid = streamed["id"].as_str().expect("id").to_string();
    let got: Value =
        http.get(format!("{hub}/v1/responses/{rid}")).bearer_auth(&key).send().expect("sent").json().expect("json");
    assert_eq!(got["output"], streamed["output"], "stored as streamed");

    // The result goes back with previous_response_id: the spoke gets the question, the
    // assistant's text and call, and the tool's result naming it; and answers in text.
    let question = ChatMessage::new("user", "What is the weather in Paris?");
    let assistant = ChatMessage {
        tool_calls: vec![nave_inference::tools::ToolCall {
            id: "call_s1".into(),
            name: "get_weather".into(),
            arguments: arguments.clone(),
        }],
        ..ChatMessage::new("assistant", CALL_TEXT)
    };
    let result = ChatMessage { tool_call_id: Some("call_s1".into()), ..ChatMessage::new("tool", "21 C, sunny") };
    let output = json!([{"type": "function_call_output", "call_id": "call_s1", "output": "21 C, sunny"}]);
    let next: Value = responses(false, json!({"previous_response_id": rid, "input": output})).json().expect("json");
    assert_eq!(next["output"][0]["content"][0]["text"], "ok from s1", "{next}");
    let prompt = spoke.last_request().map(|r| r.prompt);
    assert!(
        matches!(&prompt, Some(Prompt::Chat(m)) if *m == [question.clone(), assistant.clone(), result.clone()]),
        "{prompt:?}"
    );
    // A third turn carries all of it from the stored chain.
    let third = json!({"previous_response_id": next["id"], "input": "Thanks!"});
    assert_eq!(responses(false, third).status(), 200);
    let prompt = spoke.last_request().map(|r| r.prompt);
    let thanks = [question.clone(), assistant.clone(), result.clone(), ChatMessage::new("assistant", "ok from s1")];
    assert!(matches!(&prompt, Some(Prompt::Chat(m)) if m[..4] == thanks && m[4].content == "Thanks!"), "{prompt:?}");
    // Without a stored chain: the answer's output items sent back as input, the result
    // after them.
    let mut items = vec![json!({"role": "user", "content": "What is the weather in Paris?"})];
    items.extend(r["output"].as_array().cloned().unwrap_or_default());
    items.push(json!({"type": "function_call_output", "call_id": "call_s1", "output": [{"type": "input_text", "text": "21 C, sunny"}]}));
    assert_eq!(responses(false, json!({"input": items, "store": false})).status(), 200);
    let prompt = spoke.last_request().map(|r| r.prompt);
    assert!(matches!(&prompt, Some(Prompt::Chat(m)) if *m == [question, assistant, result]), "{prompt:?}");

    // A named choice, flat; what Nave does not have is a 400 naming it.
    let named = json!({"tool_choice": {"type": "function", "name": "get_weather"}});
    assert_eq!(responses(false, named).status(), 200);
    for (extra, param) in [
        (json!({"tools": [{"type": "web_search"}]}), "tools[0].type"),
        (json!({"tools": [{"type": "function"}]}), "tools[0].name"),
        (json!({"tools": [{"type": "function", "name": "f", "parameters": []}]}), "tools[0].parameters"),
        (json!({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}), "tool_choice"),
        (json!({"tool_choice": {"type": "function", "name": "nope"}}), "tool_choice"),
        (json!({"input": [{"type": "reasoning", "summary": []}]}), "input[0].type"),
        (json!({"input": [{"type": "function_call_output", "output": "x"}]}), "input[0].call_id"),
        (json!({"input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]}), "input[0].name"),
    ] {
        let r = responses(false, extra.clone());
        assert_eq!(r.status(), 400, "{extra}");
        let e: Value = r.json().expect("json");
        assert_eq!(e["error"]["param"], param, "{extra}: {e}");
    }
}
