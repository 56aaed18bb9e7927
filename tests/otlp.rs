//! Traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, hubs and spokes send their spans to
//! the collector (a small OTLP/HTTP receiver in this test), and one request's spans on the
//! hub and on the spoke share one trace, made from its `X-Request-Id`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{wait_until, Cluster};
use serde_json::{json, Value};
use sha2::Digest;

/// Spans received, each with its node (`service.instance.id`).
type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// Accepts OTLP/HTTP posts and keeps every span.
fn collector() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = spans.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(10_000) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut length = 0usize;
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0u8; length.min(64 << 20)];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let _ =
                stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}");
            let Ok(v) = serde_json::from_slice::<Value>(&body) else { continue };
            for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                let attrs = rs["resource"]["attributes"].as_array().cloned().unwrap_or_default();
                let node = attrs
                    .iter()
                    .find(|a| a["key"] == "service.instance.id")
                    .and_then(|a| a["value"]["stringValue"].as_str())
                    .unwrap_or("")
                    .to_string();
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for span in ss["spans"].as_array().into_iter().flatten() {
                        kept.lock().expect("lock").push((node.clone(), span.clone()));
                    }
                }
            }
        }
    });
    (url, spans)
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["attributes"].as_array()?.iter().find(|a| a["key"] == key)?["value"]["stringValue"].as_str()
}

#[test]
fn one_request_is_one_trace_across_hub_and_spoke() {
    let (url, spans) = collector();
    // SAFETY: set before any thread of this test binary reads the environment (this
    // file has one test); the cluster's processes inherit it.
    unsafe { std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &url) };
    let c = Cluster::start_tiny(1, 1, "");
    let http = reqwest::blocking::Client::new();
    let r = http
        .post(format!("{}/v1/chat/completions", c.hubs[0]))
        .bearer_auth(&c.key)
        .header("x-request-id", "trace-me-42")
        .json(&json!({"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .expect("sent");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some("trace-me-42"), "the id is echoed");
    let trace = hex::encode(&sha2::Sha256::digest(b"trace-me-42")[..16]);
    let found = wait_until(Duration::from_secs(30), "the request's spans at the collector", || {
        let all = spans.lock().expect("lock").clone();
        let mine: Vec<(String, Value)> = all.into_iter().filter(|(_, s)| s["traceId"] == trace.as_str()).collect();
        let has = |node: &str, name: &str| mine.iter().any(|(n, s)| n == node && s["name"] == name);
        if has("h1", "request") && has("h1", "dispatch") && has("s1", "generate") {
            Ok(mine)
        } else {
            Err(mine)
        }
    });
    let request = found.iter().find(|(_, s)| s["name"] == "request").map(|(_, s)| s.clone()).expect("request span");
    assert_eq!(attr(&request, "request_id"), Some("trace-me-42"));
    assert_eq!(attr(&request, "path"), Some("/v1/chat/completions"));
    let dispatch = found.iter().find(|(_, s)| s["name"] == "dispatch").map(|(_, s)| s.clone()).expect("dispatch span");
    assert_eq!(dispatch["parentSpanId"], request["spanId"], "dispatch runs inside the request");
    assert_eq!(attr(&dispatch, "spoke"), Some("s1"));
    let generate = found
        .iter()
        .find(|(n, s)| n == "s1" && s["name"] == "generate")
        .map(|(_, s)| s.clone())
        .expect("generate span");
    let (start, end) =
        (generate["startTimeUnixNano"].as_str().unwrap_or("0"), generate["endTimeUnixNano"].as_str().unwrap_or("0"));
    assert!(start.parse::<u64>().unwrap_or(0) <= end.parse::<u64>().unwrap_or(0) && start != "0", "{generate}");
}
