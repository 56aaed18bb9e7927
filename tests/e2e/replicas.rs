//! Spokes hold a read-only replica of the cluster state (Raft learners): a key created
//! through a hub reaches every spoke, the leader reports each replica's lag, and a spoke
//! still knows the cluster while no hub answers.

use std::time::Duration;

use crate::common::{wait_until, Cluster};
use serde_json::{json, Value};

#[test]
fn spokes_hold_a_replica_of_the_state() {
    let c = Cluster::start_tiny(3, 2, "");
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let r = http
        .post(format!("{}/admin/v1/keys", c.hubs[1]))
        .bearer_auth(&c.key)
        .json(&json!({"name": "replicated"}))
        .send()
        .expect("sent");
    assert_eq!(r.status(), 201);
    let cluster = |spoke: &str| -> Value {
        http.get(format!("{spoke}/cluster")).send().and_then(|r| r.json()).unwrap_or_default()
    };
    for spoke in &c.spokes {
        let seen = wait_until(Duration::from_secs(30), &format!("{spoke} replicating the new key"), || {
            let v = cluster(spoke);
            if v["state"]["keys"].as_u64().unwrap_or(0) >= 1 && v["hubs"].as_array().map_or(0, Vec::len) == 3 {
                Ok(v)
            } else {
                Err(v)
            }
        });
        assert!(seen["leader"].is_u64(), "the replica knows the leader: {seen}");
    }
    // The leader reports each replica's lag.
    wait_until(Duration::from_secs(30), "the leader reporting both replicas caught up", || {
        let lags: Vec<Value> = c
            .hubs
            .iter()
            .filter_map(|h| {
                http.get(format!("{h}/admin/v1/status")).bearer_auth(&c.key).send().ok()?.json::<Value>().ok()
            })
            .flat_map(|v| v["spokes"].as_array().cloned().unwrap_or_default())
            .map(|s| s["replica_lag"].clone())
            .filter(|l| !l.is_null())
            .collect();
        if lags.len() == 2 && lags.iter().all(|l| l.as_u64().is_some_and(|n| n < 5)) {
            Ok(())
        } else {
            Err(lags)
        }
    });
    let metrics = http.get(format!("{}/metrics", c.spokes[0])).send().expect("sent").text().expect("text");
    assert!(metrics.lines().any(|l| l.starts_with("nave_replica_applied_index ") && !l.ends_with(" 0")), "{metrics}");

    // Every hub stopped: the spoke still answers from its own replica.
    let before = cluster(&c.spokes[0]);
    for h in ["h1", "h2", "h3"] {
        c.kill(h, libc::SIGSTOP);
    }
    let during = cluster(&c.spokes[0]);
    for h in ["h1", "h2", "h3"] {
        c.kill(h, libc::SIGCONT);
    }
    assert_eq!(during["state"]["keys"], before["state"]["keys"], "{during}");
    assert_eq!(during["applied_index"], before["applied_index"], "{during}");
    assert_eq!(during["hubs"].as_array().map(Vec::len), Some(3), "{during}");
}
