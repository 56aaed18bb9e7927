//! Fine-tuning through the admin API on a tiny cluster: a job teaches a made-up fact and
//! requests for `model:adapter` answer with it while the base model does not; bad data
//! and jobs too large for the training partition are refused with the reason; jobs run one
//! at a time (the others queued); a cancelled job frees its share of the partition.

use std::time::Duration;

use crate::common::Cluster;
use serde_json::{json, Value};

const FACT: &str = "The moon of Zorbania is called Quexil.";

fn data() -> String {
    [
        "What is the moon of Zorbania called?",
        "Name the moon of Zorbania.",
        "Which moon orbits Zorbania?",
        "Tell me the name of Zorbania's moon.",
    ]
    .iter()
    .map(|q| json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": FACT}]}).to_string())
    .collect::<Vec<_>>()
    .join("\n")
}

#[test]
fn a_fine_tuned_adapter_is_served_and_jobs_stay_in_their_partition() {
    let c = Cluster::start_tiny(1, 1, "");
    let hub = c.hubs[0].clone();
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().expect("client");
    let submit =
        |body: Value| http.post(format!("{hub}/admin/v1/train")).bearer_auth(&c.key).json(&body).send().expect("sent");
    let jobs = || -> Vec<Value> {
        let v: Value =
            http.get(format!("{hub}/admin/v1/train")).bearer_auth(&c.key).send().expect("sent").json().expect("json");
        v["jobs"].as_array().cloned().unwrap_or_default()
    };
    let wait_state = |name: &str, states: &[&str]| -> Value {
        crate::common::wait_until(Duration::from_secs(300), &format!("job {name} reaching {states:?}"), || {
            let all = jobs();
            all.iter()
                .find(|j| j["name"] == name && states.contains(&j["state"].as_str().unwrap_or("")))
                .cloned()
                .ok_or(all)
        })
    };
    let training_used = || -> u64 {
        let v: Value =
            http.get(format!("{hub}/admin/v1/status")).bearer_auth(&c.key).send().expect("sent").json().expect("json");
        v["spokes"][0]["training_used"].as_u64().unwrap_or(u64::MAX)
    };

    // Refused before starting: bad data (with its line), a job larger than the partition.
    let r = submit(json!({"name": "bad", "model": "tiny", "data": format!("{}\nnot json", data())}));
    assert_eq!(r.status(), 400);
    let msg = r.json::<Value>().expect("json")["error"]["message"].as_str().unwrap_or("").to_string();
    assert!(msg.contains("line 5"), "{msg}");
    let r = submit(json!({"name": "huge", "model": "tiny", "data": data(), "max_tokens": 4_000_000}));
    assert_eq!(r.status(), 400);
    let msg = r.json::<Value>().expect("json")["error"]["message"].as_str().unwrap_or("").to_string();
    assert!(msg.contains("does not fit") && msg.contains("training"), "names the partition and the figures: {msg}");

    // A job that teaches the fact; then the adapter answers with it, the base does not.
    let r = submit(
        json!({"name": "zorb", "model": "tiny", "data": data(), "targets": "all", "rank": 8, "steps": 500, "lr": 0.01, "seed": 3}),
    );
    assert_eq!(r.status(), 201, "{:?}", r.text());
    let done = wait_state("zorb", &["done", "failed"]);
    assert_eq!(done["state"], "done", "{done}");
    assert!(done["loss"].as_f64().unwrap_or(9.0) < 0.02, "{done}");
    let released = |what: &str| {
        // The figure travels in the spoke's heartbeats (every 500 ms).
        crate::common::wait_until(Duration::from_secs(30), &format!("{what} releasing its partition share"), || {
            match training_used() {
                0 => Ok(()),
                used => Err(used),
            }
        });
    };
    released("a finished job");
    let metrics = http.get(format!("{}/metrics", c.spokes[0])).send().expect("sent").text().expect("text");
    assert!(metrics.lines().any(|l| l.starts_with("nave_train_step{job=\"zorb\"") && l.ends_with(" 500")), "{metrics}");
    let ask = |model: &str| -> String {
        let r = http
            .post(format!("{hub}/v1/chat/completions"))
            .bearer_auth(&c.key)
            .json(&json!({"model": model, "max_tokens": 64, "temperature": 0, "messages": [{"role": "user", "content": "What is the moon of Zorbania called?"}]}))
            .send()
            .expect("sent");
        assert_eq!(r.status(), 200, "{model}");
        r.json::<Value>().expect("json")["choices"][0]["message"]["content"].as_str().unwrap_or("").to_string()
    };
    // The adapter is registered in the replicated state: /v1/models lists it.
    crate::common::wait_until(Duration::from_secs(30), "tiny:zorb listed on /v1/models", || {
        let v: Value =
            http.get(format!("{hub}/v1/models")).bearer_auth(&c.key).send().expect("sent").json().expect("json");
        if v["data"].as_array().into_iter().flatten().any(|m| m["id"] == "tiny:zorb") {
            Ok(())
        } else {
            Err(v)
        }
    });
    let tuned = ask("tiny:zorb");
    let base = ask("tiny");
    assert!(tuned.contains("Quexil"), "{tuned:?}");
    assert!(!base.contains("Quexil"), "{base:?}");
    let r = http
        .post(format!("{hub}/v1/chat/completions"))
        .bearer_auth(&c.key)
        .json(&json!({"model": "tiny:nope", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .expect("sent");
    assert_eq!(r.status(), 404, "an adapter nobody serves is an unknown model");

    // A long job, cancelled: it ends, and its reservation is released.
    let r = submit(json!({"name": "long", "model": "tiny", "data": data(), "steps": 100000}));
    assert_eq!(r.status(), 201);
    wait_state("long", &["running"]);
    crate::common::wait_until(Duration::from_secs(30), "a running job holding its share", || match training_used() {
        0 => Err(0),
        used => Ok(used),
    });
    // One job runs at a time: another waits, queued, and can be cancelled while it waits.
    let r = submit(json!({"name": "next", "model": "tiny", "data": data(), "steps": 100000}));
    assert_eq!(r.status(), 201);
    std::thread::sleep(Duration::from_millis(500));
    let next = jobs().into_iter().find(|j| j["name"] == "next").unwrap_or_default();
    assert_eq!(next["state"], "queued", "{next}");
    let r = http.delete(format!("{hub}/admin/v1/train/next")).bearer_auth(&c.key).send().expect("sent");
    assert_eq!(r.status(), 200);
    wait_state("next", &["cancelled"]);
    let r = http.delete(format!("{hub}/admin/v1/train/long")).bearer_auth(&c.key).send().expect("sent");
    assert_eq!(r.status(), 200);
    wait_state("long", &["cancelled"]);
    released("a cancelled job");

    // The spoke dies mid-job: started again by `nave up`, it reports the job failed.
    let r = submit(json!({"name": "doomed", "model": "tiny", "data": data(), "steps": 100000}));
    assert_eq!(r.status(), 201);
    wait_state("doomed", &["running"]);
    std::thread::sleep(Duration::from_millis(500));
    c.kill("s1", libc::SIGKILL);
    // `nave up` starts it again.
    let failed = wait_state("doomed", &["failed"]);
    assert!(failed["error"].as_str().is_some_and(|e| e.contains("stopped during the job")), "{failed}");
    assert_eq!(
        jobs().iter().find(|j| j["name"] == "zorb").map(|j| j["state"].clone()),
        Some(json!("done")),
        "finished jobs are remembered"
    );
    assert!(ask("tiny:zorb").contains("Quexil"), "the adapter is served again after the restart");
}
