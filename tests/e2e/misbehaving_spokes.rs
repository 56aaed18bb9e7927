//! Spokes that misbehave on command (a mock spoke in the test process, with real
//! certificates and heartbeats) behind a real hub: one that fails every request and one
//! that hangs get their circuits opened while every request succeeds on the healthy one;
//! a stream whose spoke dies or stalls mid-answer ends with an error event, and nothing
//! outlives its deadline.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use crate::common::mock_spoke::{self, Mode};
use crate::common::wait_until;
use serde_json::{json, Value};

fn body(stream: bool) -> Value {
    json!({"model": "mock", "stream": stream, "messages": [{"role": "user", "content": "hello"}]})
}

#[test]
fn misbehaving_spokes_are_cut_off_and_nothing_hangs() {
    let extra =
        "heartbeat_interval_ms = 250\nheartbeat_timeout_ms = 1500\ncircuit_failures = 3\ncircuit_open_ms = 600000";
    let (spokes, cluster) = mock_spoke::cluster(&["s1", "s2", "s3"], Mode::Answer, extra);
    let [failing, hanging, healthy] = &spokes[..] else { panic!("three spokes") };
    let (hub, key) = (cluster.hubs[0].clone(), cluster.key.clone());

    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
    let ask = |stream: bool, timeout_ms: u64| {
        http.post(format!("{hub}/v1/chat/completions"))
            .bearer_auth(&key)
            .header("x-request-timeout-ms", timeout_ms.to_string())
            .json(&body(stream))
            .send()
            .expect("sent")
    };
    let circuits = || -> Vec<(String, String)> {
        let v: Value =
            http.get(format!("{hub}/admin/v1/status")).bearer_auth(&key).send().expect("sent").json().expect("json");
        v["spokes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| (s["id"].as_str().unwrap_or("").to_string(), s["circuit"].as_str().unwrap_or("").to_string()))
            .collect()
    };
    wait_until(Duration::from_secs(30), "the hub hearing all three spokes", || {
        let served = (0..6).filter(|_| ask(false, 5000).status() == 200).count();
        let all = [failing, hanging, healthy].iter().all(|s| s.requests() > 0);
        if served == 6 && all {
            Ok(())
        } else {
            Err((served, failing.requests(), hanging.requests(), healthy.requests()))
        }
    });

    // One spoke fails every request, one hangs (heartbeats still flowing): 8 clients get
    // every answer from the third, each well within its deadline.
    failing.set(Mode::Fail);
    hanging.set(Mode::Hang);
    let (fail_before, hang_before) = (failing.requests(), hanging.requests());
    let deadline_ms = 15_000;
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..4 {
                    let started = Instant::now();
                    let r = ask(false, deadline_ms);
                    assert_eq!(r.status(), 200, "a request with a healthy spoke left succeeds");
                    let v: Value = r.json().expect("json");
                    assert_eq!(v["choices"][0]["message"]["content"], "ok from s3", "{v}");
                    assert!(started.elapsed() < Duration::from_millis(deadline_ms), "within its deadline");
                }
            });
        }
    });
    let c = circuits();
    for (id, state) in [("s1", "open"), ("s2", "open"), ("s3", "closed")] {
        assert!(c.contains(&(id.to_string(), state.to_string())), "{id} {state}: {c:?}");
    }
    // 3 consecutive failures open a circuit; requests already under way when it opened
    // (8 clients) may add a few.
    assert!(
        failing.requests() - fail_before <= 3 + 8,
        "the failing spoke was cut off: {}",
        failing.requests() - fail_before
    );
    assert!(
        hanging.requests() - hang_before <= 3 + 8,
        "the hung spoke was cut off: {}",
        hanging.requests() - hang_before
    );
    let (f, h) = (failing.requests(), hanging.requests());
    for _ in 0..5 {
        assert_eq!(ask(false, deadline_ms).status(), 200);
    }
    assert_eq!((failing.requests(), hanging.requests()), (f, h), "open circuits get no requests");
    let metrics = http.get(format!("{hub}/metrics")).send().expect("sent").text().expect("text");
    assert!(metrics.contains("nave_hub_spoke_circuit_open{spoke=\"s2\"} 1"), "{metrics}");

    // A stream whose spoke dies after the first token ends with an error event.
    let stream_lines = |timeout_ms: u64| -> (Vec<String>, Duration) {
        let started = Instant::now();
        let r = ask(true, timeout_ms);
        assert_eq!(r.status(), 200);
        let lines: Vec<String> =
            BufReader::new(r).lines().map_while(Result::ok).filter(|l| l.starts_with("data: ")).collect();
        (lines, started.elapsed())
    };
    healthy.set(Mode::DieMidStream);
    let (lines, _) = stream_lines(deadline_ms);
    assert!(lines.iter().any(|l| l.contains("partial")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("\"error\"")), "the stream ends with an error event: {lines:?}");
    assert_eq!(lines.last().map(String::as_str), Some("data: [DONE]"), "{lines:?}");

    // The spoke comes back (the hub redials it); a success closes its failure count again.
    healthy.set(Mode::Answer);
    wait_until(Duration::from_secs(30), "s3 serving again", || match ask(false, 5000).status().as_u16() {
        200 => Ok(()),
        other => Err(other),
    });

    // A spoke that stalls mid-answer: the stream ends with an error event at its deadline,
    // and a non-streamed request with a 504, neither hanging past it.
    healthy.set(Mode::StallMidStream);
    let (lines, took) = stream_lines(2000);
    assert!(lines.iter().any(|l| l.contains("\"error\"") && l.contains("deadline")), "{lines:?}");
    assert!(took < Duration::from_secs(6), "ended at its deadline, took {took:?}");
    let started = Instant::now();
    let r = ask(false, 2000);
    assert_eq!(r.status(), 504, "{:?}", r.text());
    assert!(started.elapsed() < Duration::from_secs(6), "504 at its deadline, took {:?}", started.elapsed());
}
