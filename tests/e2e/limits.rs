//! Limits that hold against what a client sends: absurd `max_tokens` (a 400, no replica
//! hurt), budgets that count prompt and completion, a stranger's body never read, usage
//! and audit records an admin and a key can read, metrics a Prometheus scrape accepts.

use std::io::{Read, Write};
use std::time::Duration;

use crate::common::Cluster;
use serde_json::{json, Value};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client")
}

#[test]
fn absurd_numbers_bodies_from_strangers_usage_and_audit() {
    let c = Cluster::start_tiny(3, 1, "");
    let http = client();
    let (h1, h2) = (c.hubs[0].clone(), c.hubs[1].clone());
    let r = http
        .post(format!("{h1}/admin/v1/keys"))
        .bearer_auth(&c.key)
        .json(&json!({"name": "app", "daily_tokens": 1_000_000}))
        .send()
        .expect("sent");
    assert_eq!(r.status(), 201);
    let created: Value = r.json().expect("json");
    let key = created["key"].as_str().expect("key").to_string();
    assert_eq!(created["limits"]["max_concurrent"], 64, "a per-key concurrency cap is on by default");
    // `max_tokens` as the client wrote it (2^64 does not fit any JSON number type here).
    let chat = |hub: &str, max_tokens: &str| {
        http.post(format!("{hub}/v1/chat/completions"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"model": "tiny", "max_tokens": {max_tokens}, "ignore_eos": true, "messages": [{{"role": "user", "content": "hello there"}}]}}"#
            ))
            .send()
            .expect("sent")
    };

    // max_tokens near and past 2^64, and past the model's context: a 400 naming the field.
    let (max, near) = (u64::MAX.to_string(), (u64::MAX - 1).to_string());
    for absurd in [max.as_str(), near.as_str(), "18446744073709551616", "1099511627776", "300", "-1", "1e30"] {
        let r = chat(&h1, absurd);
        assert_eq!(r.status(), 400, "{absurd}");
        let body: Value = r.json().expect("json");
        assert!(body["error"]["message"].as_str().unwrap_or("").contains("max_tokens"), "{absurd}: {body}");
    }
    // ...and every hub still serves (no replica's apply saw an overflow).
    let mut expected = (0u64, 0u64);
    for hub in &c.hubs {
        let r = chat(hub, "6");
        assert_eq!(r.status(), 200);
        let u: Value = r.json::<Value>().expect("json")["usage"].clone();
        expected.0 += u["prompt_tokens"].as_u64().expect("prompt");
        expected.1 += u["completion_tokens"].as_u64().expect("completion");
    }
    assert_eq!(expected.1, 18);

    // A key reads its own usage; the admin reads every key's: prompt and completion counted.
    let usage = crate::common::wait_until(Duration::from_secs(10), "usage settled", || {
        let v: Value = http.get(format!("{h2}/v1/usage")).bearer_auth(&key).send().expect("sent").json().expect("json");
        let rows = v["usage"].as_array().cloned().unwrap_or_default();
        let sum = |f: &str| rows.iter().map(|r| r[f].as_u64().unwrap_or(0)).sum::<u64>();
        if (sum("prompt_tokens"), sum("completion_tokens")) == expected {
            Ok(rows)
        } else {
            Err(v)
        }
    });
    assert_eq!(usage[0]["model"], "tiny");
    assert_eq!(usage[0]["requests"], 3, "{usage:?}");
    let v: Value = http
        .get(format!("{h1}/admin/v1/usage?key=app"))
        .bearer_auth(&c.key)
        .send()
        .expect("sent")
        .json()
        .expect("json");
    assert_eq!(v["usage"][0]["total_tokens"].as_u64(), Some(expected.0 + expected.1), "{v}");
    let k: Value =
        http.get(format!("{h1}/admin/v1/keys/app")).bearer_auth(&c.key).send().expect("sent").json().expect("json");
    assert_eq!(k["tokens_today"].as_u64(), Some(expected.0 + expected.1), "{k}");
    assert_eq!(http.get(format!("{h1}/admin/v1/usage")).bearer_auth(&key).send().expect("sent").status(), 403);

    // The audit trail names who did what.
    let v: Value =
        http.get(format!("{h2}/admin/v1/audit")).bearer_auth(&c.key).send().expect("sent").json().expect("json");
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    assert!(entries.iter().any(|e| e["actor"] == "admin" && e["what"] == "key created: app"), "{entries:?}");

    // A stranger's body is never read: headers announcing 1 MiB, a few bytes sent, and the
    // 401 comes at once (not after the body timeout).
    let addr = h1.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer nave-wrong\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{{\"model\""
    );
    s.write_all(head.as_bytes()).expect("write");
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).expect("an answer before the body arrived");
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    // Metrics: every family's TYPE line once, the in-flight gauge present.
    for url in c.hubs.iter().chain(c.spokes.iter()) {
        let text = http.get(format!("{url}/metrics")).send().expect("sent").text().expect("text");
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let mut unique = types.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(types.len(), unique.len(), "{url}: repeated TYPE lines");
    }
    let text = http.get(format!("{h1}/metrics")).send().expect("sent").text().expect("text");
    assert!(text.contains("nave_hub_requests_in_flight 0"), "{text}");
    assert!(text.contains("nave_state_stored_response_bytes"), "{text}");
}
