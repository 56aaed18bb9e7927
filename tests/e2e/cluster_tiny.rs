//! A cluster of real processes on a tiny random-weight model: the API contract, bad
//! input, a spoke killed under load, and a clean stop.

use std::time::{Duration, Instant};

use crate::common::Cluster;
use serde_json::{json, Value};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client")
}

#[test]
fn tiny_cluster_serves_fails_over_and_stops_cleanly() {
    let mut c = Cluster::start_tiny(1, 2, "heartbeat_interval_ms = 200\nheartbeat_timeout_ms = 1500\n");
    let hub = c.hubs[0].clone();
    let http = client();
    let chat = |body: Value| {
        http.post(format!("{hub}/v1/chat/completions")).bearer_auth(&c.key).json(&body).send().expect("sent")
    };

    // The contract: a whole answer, a stream ending in [DONE], the request id echoed.
    let r = http
        .post(format!("{hub}/v1/chat/completions"))
        .bearer_auth(&c.key)
        .header("x-request-id", "req-42")
        .json(&json!({"model": "tiny", "max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": "the"}]}))
        .send()
        .expect("sent");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-42");
    let v: Value = r.json().expect("json");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap_or(0) >= 1, "{v}");
    let body = chat(json!({"model": "tiny", "max_tokens": 8, "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "the"}]}))
        .text()
        .expect("body");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert!(body.contains("\"usage\""), "{body}");
    let v: Value = http.get(format!("{hub}/v1/models")).bearer_auth(&c.key).send().expect("sent").json().expect("json");
    assert_eq!(v["data"][0]["id"], "tiny");

    // Through the hub and the spoke: logit_bias by token id (the tiny model's ids 0-255
    // are the bytes themselves: 120 is "x"), n choices with their indexes, logprobs.
    let v: Value =
        chat(json!({"model": "tiny", "max_tokens": 3, "temperature": 1, "seed": 5, "n": 2, "ignore_eos": true,
        "logprobs": true, "top_logprobs": 2, "logit_bias": {"120": 100},
        "messages": [{"role": "user", "content": "the"}]}))
        .json()
        .expect("json");
    assert_eq!(v["choices"].as_array().map(Vec::len), Some(2), "{v}");
    for (i, choice) in v["choices"].as_array().into_iter().flatten().enumerate() {
        assert_eq!(choice["index"], i, "{v}");
        assert_eq!(choice["message"]["content"], "xxx", "a bias of 100 all but forces the token: {v}");
        let content = choice["logprobs"]["content"].as_array().cloned().unwrap_or_default();
        assert_eq!(content.len(), 3, "{v}");
        assert!(
            content.iter().all(|t| t["token"] == "x"
                && t["bytes"] == json!([120])
                && t["top_logprobs"].as_array().map(Vec::len) == Some(2)),
            "{v}"
        );
    }
    assert_eq!(v["usage"]["completion_tokens"], 6, "{v}");

    // Bad input: the right status and an OpenAI-shaped error, never a 200.
    let bad = |req: reqwest::blocking::RequestBuilder, status: u16| {
        let r = req.send().expect("sent");
        assert_eq!(r.status().as_u16(), status);
        let v: Value = r.json().expect("error body is JSON");
        assert!(v["error"]["message"].is_string(), "{v}");
    };
    let url = format!("{hub}/v1/chat/completions");
    bad(http.post(&url).bearer_auth(&c.key).body("{not json"), 400);
    bad(http.post(&url).bearer_auth(&c.key).json(&json!({"model": 5, "messages": []})), 400);
    bad(
        http.post(&url)
            .bearer_auth(&c.key)
            .json(&json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": -3})),
        400,
    );
    bad(
        http.post(&url)
            .bearer_auth(&c.key)
            .json(&json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0})),
        400,
    );
    bad(http.post(&url).bearer_auth("wrong").json(&json!({"model": "tiny", "messages": []})), 401);
    bad(http.post(&url).json(&json!({"model": "tiny", "messages": []})), 401);
    bad(
        http.post(&url)
            .bearer_auth(&c.key)
            .json(&json!({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})),
        404,
    );
    bad(
        http.post(&url)
            .bearer_auth(&c.key)
            .json(&json!({"model": "tiny", "messages": [{"role": "user", "content": "the ".repeat(400)}]})),
        400,
    );
    // A deadline that passes before the answer: 504, never a hang.
    let r = http
        .post(&url)
        .bearer_auth(&c.key)
        .header("x-request-timeout-ms", "1")
        .json(&json!({"model": "tiny", "max_tokens": 200, "ignore_eos": true, "messages": [{"role": "user", "content": "the"}]}))
        .send()
        .expect("sent");
    assert_eq!(r.status().as_u16(), 504);
    assert!(r.json::<Value>().expect("json")["error"]["message"].as_str().is_some_and(|m| m.contains("deadline")));

    // Too large: refused from its Content-Length before the body is read; a client still
    // uploading may see the connection close instead of the 413 (as with nginx).
    // Its own client: the server closes that connection, which must not be reused.
    match client().post(&url).bearer_auth(&c.key).body(vec![b'x'; 3 << 20]).send() {
        Ok(r) => {
            assert_eq!(r.status().as_u16(), 413);
            let v: Value = r.json().expect("error body is JSON");
            assert!(v["error"]["message"].is_string(), "{v}");
        }
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }

    // Draining a spoke under load loses no request; it reports drained, then resumes.
    // (`nave up` is ready with one spoke; wait for both.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value =
            http.get(format!("{hub}/admin/v1/status")).bearer_auth(&c.key).send().expect("sent").json().expect("json");
        if v["spokes"].as_array().is_some_and(|a| a.iter().all(|s| s["state"] == "active")) {
            break;
        }
        assert!(Instant::now() < deadline, "spokes not all active: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let drained: Vec<u16> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let (hub, key) = (hub.clone(), c.key.clone());
                s.spawn(move || {
                    let http = client();
                    (0..10)
                        .map(|j| {
                            http.post(format!("{hub}/v1/chat/completions"))
                                .bearer_auth(&key)
                                .json(&json!({"model": "tiny", "max_tokens": 24, "seed": i * 10 + j, "messages": [{"role": "user", "content": "he the"}]}))
                                .send()
                                .map(|r| r.status().as_u16())
                                .unwrap_or(0)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let r = http.post(format!("{hub}/admin/v1/spokes/s2/drain")).bearer_auth(&c.key).send().expect("sent");
        assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());
        workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
    });
    assert!(drained.iter().all(|&s| s == 200), "{drained:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value =
            http.get(format!("{hub}/admin/v1/status")).bearer_auth(&c.key).send().expect("sent").json().expect("json");
        let s2 = v["spokes"].as_array().and_then(|a| a.iter().find(|s| s["id"] == "s2").cloned()).unwrap_or_default();
        if s2["state"] == "drained" {
            break;
        }
        assert!(Instant::now() < deadline, "s2 is {s2}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = http
        .post(format!("{hub}/admin/v1/spokes/s2/drain"))
        .bearer_auth(&c.key)
        .json(&json!({"undo": true}))
        .send()
        .expect("sent");
    assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());
    assert_eq!(
        http.post(format!("{hub}/admin/v1/spokes/s9/drain")).bearer_auth(&c.key).send().expect("sent").status(),
        404
    );

    // A spoke dies while 16 clients send non-streamed requests: every request succeeds.
    let started = Instant::now();
    let killed_pid = c.pid("s1");
    let results: Vec<_> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..16)
            .map(|i| {
                let (hub, key) = (hub.clone(), c.key.clone());
                s.spawn(move || {
                    let http = client();
                    (0..6)
                        .map(|j| {
                            let r = http
                                .post(format!("{hub}/v1/chat/completions"))
                                .bearer_auth(&key)
                                .json(
                                    &json!({"model": "tiny", "max_tokens": 24, "temperature": 0.5, "seed": i * 100 + j,
                                              "messages": [{"role": "user", "content": "he the in"}]}),
                                )
                                .send();
                            r.map(|r| r.status().as_u16()).unwrap_or(0)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        c.kill("s1", libc::SIGKILL);
        workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
    });
    let failed = results.iter().filter(|&&s| s != 200).count();
    assert_eq!(failed, 0, "{failed} of {} requests failed after a spoke died: {results:?}", results.len());
    assert!(started.elapsed() < Duration::from_secs(60));
    // The dead spoke leaves the candidate set within the heartbeat timeout, unless `nave
    // up` has started it again first (a new pid).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value =
            http.get(format!("{hub}/admin/v1/status")).bearer_auth(&c.key).send().expect("sent").json().expect("json");
        let s1 = v["spokes"].as_array().and_then(|a| a.iter().find(|s| s["id"] == "s1").cloned()).unwrap_or_default();
        let restarted = std::fs::read_to_string(c.data().join("s1/pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .is_some_and(|p| p != killed_pid);
        if s1["state"] == "down" || restarted {
            break;
        }
        assert!(Instant::now() < deadline, "s1 still listed as {s1}");
        std::thread::sleep(Duration::from_millis(100));
    }

    assert!(c.stop(), "nave up exits cleanly on SIGTERM");
    for node in ["h1", "s2"] {
        assert!(!c.data().join(node).join("pid").exists(), "{node} left its pid file");
    }
}

#[test]
fn keys_and_budgets_hold_across_three_hubs_and_survive_a_restart() {
    let mut c = Cluster::start_tiny(3, 1, "");
    let http = client();
    let (h1, h2, h3) = (c.hubs[0].clone(), c.hubs[1].clone(), c.hubs[2].clone());

    // A key created on one hub works on another at once (admission is a Raft write).
    let budget = 200u64;
    let r = http
        .post(format!("{h1}/admin/v1/keys"))
        .bearer_auth(&c.key)
        .json(&json!({"name": "team", "daily_tokens": budget}))
        .send()
        .expect("sent");
    assert_eq!(r.status(), 201);
    let key = r.json::<Value>().expect("json")["key"].as_str().expect("key").to_string();
    let ask = |hub: &str, key: &str| {
        http.post(format!("{hub}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({"model": "tiny", "max_tokens": 10, "temperature": 0.7, "ignore_eos": true, "messages": [{"role": "user", "content": "the"}]}))
            .send()
            .expect("sent")
    };
    let first = ask(&h2, &key);
    assert_eq!(first.status(), 200);
    // Budgets count every token: the prompt's and the completion's.
    let usage = first.json::<Value>().expect("json")["usage"].clone();
    let first_total = usage["total_tokens"].as_u64().expect("total_tokens");
    assert_eq!(first_total, usage["prompt_tokens"].as_u64().unwrap_or(0) + 10, "{usage}");
    assert!(usage["prompt_tokens"].as_u64() > Some(5), "{usage}");
    assert_eq!(http.get(format!("{h3}/v1/models")).bearer_auth(&key).send().expect("sent").status(), 200);
    assert_eq!(
        http.get(format!("{h3}/admin/v1/status")).bearer_auth(&key).send().expect("sent").status(),
        403,
        "not an admin key"
    );

    // 32 clients over three hubs spend the budget: never more than it, refusals are 429s.
    let (served, refused): (Vec<u64>, Vec<bool>) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..32)
            .map(|i| {
                let (hub, key) = (c.hubs[i % 3].clone(), key.clone());
                s.spawn(move || {
                    let http = client();
                    let mut served = 0;
                    let mut refused = false;
                    for _ in 0..10 {
                        let r = http
                            .post(format!("{hub}/v1/chat/completions"))
                            .bearer_auth(&key)
                            .json(&json!({"model": "tiny", "max_tokens": 10, "ignore_eos": true, "messages": [{"role": "user", "content": "he"}]}))
                            .send()
                            .expect("sent");
                        match r.status().as_u16() {
                            200 => served += r.json::<Value>().expect("json")["usage"]["total_tokens"].as_u64().unwrap_or(0),
                            429 => {
                                assert!(r.headers().contains_key("retry-after"));
                                refused = true;
                                break;
                            }
                            other => panic!("unexpected status {other}"),
                        }
                    }
                    (served, refused)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).unzip()
    });
    let total: u64 = served.iter().sum::<u64>() + first_total;
    assert!(total <= budget, "served {total} tokens on a budget of {budget}");
    assert!(refused.iter().any(|&r| r), "the budget ran out");

    // Settlements land: the key's usage matches what was served.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value =
            http.get(format!("{h3}/admin/v1/keys")).bearer_auth(&c.key).send().expect("sent").json().expect("json");
        let k = v["keys"].as_array().and_then(|a| a.iter().find(|k| k["name"] == "team").cloned()).unwrap_or_default();
        if k["reserved"] == 0 {
            assert_eq!(k["tokens_today"].as_u64(), Some(total), "{k}");
            break;
        }
        assert!(Instant::now() < deadline, "reservations still open: {k}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A refusal under load may come while others' reservations were still open: spend
    // what is left, one request at a time with every earlier one settled, until the
    // budget refuses one (a request whose bound no longer fits).
    let settled = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v: Value =
                http.get(format!("{h3}/admin/v1/keys")).bearer_auth(&c.key).send().expect("sent").json().expect("json");
            let k =
                v["keys"].as_array().and_then(|a| a.iter().find(|k| k["name"] == "team").cloned()).unwrap_or_default();
            if k["reserved"] == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "reservations still open: {k}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut spent = total;
    let mut exhausted = false;
    for _ in 0..40 {
        // With nothing reserved, a refusal is the spent budget's, as after the restart.
        settled();
        let r = ask(&h1, &key);
        match r.status().as_u16() {
            200 => spent += r.json::<Value>().expect("json")["usage"]["total_tokens"].as_u64().unwrap_or(0),
            429 => {
                exhausted = true;
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(exhausted && spent <= budget, "served {spent} tokens on a budget of {budget}");

    // Revoked on one hub, refused by every hub.
    let other = http
        .post(format!("{h1}/admin/v1/keys"))
        .bearer_auth(&c.key)
        .json(&json!({"name": "temp"}))
        .send()
        .expect("sent");
    let other = other.json::<Value>().expect("json")["key"].as_str().expect("key").to_string();
    assert_eq!(ask(&h1, &other).status(), 200);
    assert_eq!(http.delete(format!("{h3}/admin/v1/keys/temp")).bearer_auth(&c.key).send().expect("sent").status(), 200);
    for hub in [&h1, &h2, &h3] {
        assert_eq!(ask(hub, &other).status(), 401);
    }

    // Stored responses: written through one hub, read and continued through the others,
    // invisible to other keys.
    let conv = http
        .post(format!("{h1}/admin/v1/keys"))
        .bearer_auth(&c.key)
        .json(&json!({"name": "conv"}))
        .send()
        .expect("sent");
    let conv = conv.json::<Value>().expect("json")["key"].as_str().expect("key").to_string();
    let first: Value = http
        .post(format!("{h1}/v1/responses"))
        .bearer_auth(&conv)
        .json(&json!({"model": "tiny", "input": "the he", "max_output_tokens": 6, "temperature": 0}))
        .send()
        .expect("sent")
        .json()
        .expect("json");
    let rid = first["id"].as_str().expect("response id").to_string();
    assert_eq!(first["object"], "response");
    let again: Value =
        http.get(format!("{h2}/v1/responses/{rid}")).bearer_auth(&conv).send().expect("sent").json().expect("json");
    assert_eq!(again["output"], first["output"], "readable from another hub at once");
    assert_eq!(
        http.get(format!("{h2}/v1/responses/{rid}")).bearer_auth(&key).send().expect("sent").status(),
        404,
        "not another key's"
    );
    let follow: Value = http
        .post(format!("{h3}/v1/responses"))
        .bearer_auth(&conv)
        .json(&json!({"model": "tiny", "input": "in", "previous_response_id": rid, "max_output_tokens": 6, "temperature": 0}))
        .send()
        .expect("sent")
        .json()
        .expect("json");
    let (a, b) =
        (first["usage"]["input_tokens"].as_u64().unwrap_or(0), follow["usage"]["input_tokens"].as_u64().unwrap_or(0));
    assert!(b > a + 2, "the follow-up carried the first turn: {a} then {b}");
    let missing = http
        .post(format!("{h2}/v1/responses"))
        .bearer_auth(&conv)
        .json(&json!({"model": "tiny", "input": "x", "previous_response_id": "resp_nope"}))
        .send()
        .expect("sent");
    assert_eq!(missing.status(), 404);

    // The whole cluster restarts: keys, budgets used and stored responses are still there.
    c.restart();
    assert_eq!(http.get(format!("{h3}/v1/responses/{rid}")).bearer_auth(&conv).send().expect("sent").status(), 200);
    assert_eq!(ask(&h2, &key).status(), 429, "the spent budget survived the restart");
    assert_eq!(ask(&h1, &other).status(), 401, "the revocation survived the restart");
    let v: Value =
        http.get(format!("{h1}/admin/v1/status")).bearer_auth(&c.key).send().expect("sent").json().expect("json");
    assert!(v["leader"].is_string(), "{v}");
}

#[test]
fn killing_the_leader_hub_loses_no_request_on_the_others() {
    let c = Cluster::start_tiny(3, 2, "");
    let http = client();
    let h1 = c.hubs[0].clone();
    let r = http
        .post(format!("{h1}/admin/v1/keys"))
        .bearer_auth(&c.key)
        .json(&json!({"name": "failover-app", "rpm": 100000}))
        .send()
        .expect("sent");
    let key = r.json::<Value>().expect("json")["key"].as_str().expect("key").to_string();
    let status: Value =
        http.get(format!("{h1}/admin/v1/status")).bearer_auth(&c.key).send().expect("sent").json().expect("json");
    let leader = status["leader"].as_str().expect("a leader").to_string();
    let others: Vec<String> =
        c.hubs.iter().enumerate().filter(|(i, _)| format!("h{}", i + 1) != leader).map(|(_, h)| h.clone()).collect();

    // Every request needs an admission write, so the load crosses the failover: each
    // client sends requests for 4 s (at most 400), the leader dies at 0.5 s.
    let started = Instant::now();
    let results: Vec<(u16, Duration)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..16)
            .map(|i| {
                let (hub, key) = (others[i % 2].clone(), key.clone());
                s.spawn(move || {
                    let http = client();
                    (0..400)
                        .take_while(|_| started.elapsed() < Duration::from_secs(4))
                        .map(|_| {
                            let t = Instant::now();
                            let r = http
                                .post(format!("{hub}/v1/chat/completions"))
                                .bearer_auth(&key)
                                .json(&json!({"model": "tiny", "max_tokens": 8, "messages": [{"role": "user", "content": "the"}]}))
                                .send();
                            (r.map(|r| r.status().as_u16()).unwrap_or(0), t.elapsed())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        c.kill(&leader, libc::SIGKILL);
        workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
    });
    let failed: Vec<_> = results.iter().filter(|(s, _)| *s != 200).collect();
    let slowest = results.iter().map(|(_, d)| *d).max().unwrap_or_default();
    println!("leader {leader} killed; {} requests, slowest {slowest:?}", results.len());
    assert!(failed.is_empty(), "{} of {} failed: {failed:?}", failed.len(), results.len());
    assert!(results.len() > 100, "the load ran through the failover");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status: Value = http
            .get(format!("{}/admin/v1/status", others[0]))
            .bearer_auth(&c.key)
            .send()
            .expect("sent")
            .json()
            .expect("json");
        if status["leader"].is_string() && status["leader"].as_str() != Some(leader.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "no new leader: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Slow clients cannot hold connections: headers sent too slowly close the connection,
/// a body sent too slowly gets 408, an idle keep-alive connection is closed, and the hub
/// keeps answering others meanwhile.
#[test]
fn slow_clients_are_cut_off() {
    use std::io::{Read, Write};
    let c = Cluster::start_tiny(1, 1, "header_timeout_ms = 1000\nbody_timeout_ms = 1000\n");
    let addr = c.hubs[0].trim_start_matches("http://").to_string();
    let connect = || {
        let s = std::net::TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        s
    };
    // Reads until the hub closes the connection; returns what it sent and how long it took.
    let until_closed = |s: &mut std::net::TcpStream| {
        let t = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("the hub kept the connection open: {e}"),
            }
        }
        (String::from_utf8_lossy(&got).into_owned(), t.elapsed())
    };

    // Half the headers, then nothing: closed after the header timeout.
    let mut slow_headers = connect();
    slow_headers.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n").expect("write");
    // Meanwhile the hub serves others.
    let r = client().get(format!("{}/health", c.hubs[0])).send().expect("sent");
    assert_eq!(r.status(), 200);
    let (_, took) = until_closed(&mut slow_headers);
    assert!(took < Duration::from_secs(8), "closed after {took:?}");

    // Headers, then a body that never completes: 408 in the OpenAI shape.
    let mut slow_body = connect();
    let head = format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\"", c.key);
    slow_body.write_all(head.as_bytes()).expect("write");
    let (answer, _) = until_closed(&mut slow_body);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");

    // A keep-alive connection left idle after a request is closed.
    let mut idle = connect();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let (answer, took) = until_closed(&mut idle);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(took < Duration::from_secs(8), "idle connection closed after {took:?}");
}

/// A spoke killed while it streams: the client's stream ends with an error event in the
/// OpenAI shape within the connection's idle timeout (3 s) and never hangs; the next
/// request is served by the other spoke.
#[test]
fn a_stream_on_a_killed_spoke_ends_with_an_error_event() {
    use std::io::{BufRead, BufReader};
    let c = Cluster::start_tiny(1, 2, "heartbeat_interval_ms = 200\nheartbeat_timeout_ms = 1500\n");
    let hub = c.hubs[0].clone();
    let http = client();
    // Both spokes connected and active first (`nave up` waits for one).
    crate::common::wait_until(Duration::from_secs(60), "both spokes active", || {
        let v: Value =
            http.get(format!("{hub}/admin/v1/status")).bearer_auth(&c.key).send().expect("sent").json().expect("json");
        let active = v["spokes"].as_array().into_iter().flatten().filter(|s| s["state"] == "active").count();
        if active == 2 {
            Ok(())
        } else {
            Err(v)
        }
    });
    // Only s1 takes requests, so the stream is on it.
    let r =
        http.post(format!("{hub}/admin/v1/spokes/s2/drain")).bearer_auth(&c.key).json(&json!({})).send().expect("sent");
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{hub}/v1/chat/completions"))
        .bearer_auth(&c.key)
        .json(&json!({"model": "tiny", "stream": true, "max_tokens": 200, "ignore_eos": true, "messages": [{"role": "user", "content": "the"}]}))
        .send()
        .expect("sent");
    assert_eq!(r.status(), 200);
    let mut lines = BufReader::new(r).lines();
    // Tokens flow; then the spoke dies.
    let mut seen = 0;
    while seen < 3 {
        let line = lines.next().expect("a line").expect("read");
        seen += usize::from(line.starts_with("data: {"));
    }
    let killed = Instant::now();
    c.kill("s1", libc::SIGKILL);
    let mut error = None;
    for line in lines {
        let Ok(line) = line else { break };
        if line.contains("\"error\"") {
            error = Some(line);
        }
        assert!(killed.elapsed() < Duration::from_secs(20), "the stream kept going after the spoke died");
    }
    let error = error.expect("the stream ended with an error event");
    assert!(error.contains("\"message\""), "{error}");
    assert!(killed.elapsed() < Duration::from_secs(10), "ended after {:?}", killed.elapsed());

    // The other spoke takes the next request.
    let r = http
        .post(format!("{hub}/admin/v1/spokes/s2/drain"))
        .bearer_auth(&c.key)
        .json(&json!({"undo": true}))
        .send()
        .expect("sent");
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{hub}/v1/chat/completions"))
        .bearer_auth(&c.key)
        .json(&json!({"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "the"}]}))
        .send()
        .expect("sent");
    assert_eq!(r.status(), 200);
}
