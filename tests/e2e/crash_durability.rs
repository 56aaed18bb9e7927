//! Crash durability: every hub of a cluster SIGKILLed at once in the middle of a write load,
//! 20 times (`nave up` starts them again): every write acknowledged before a kill is
//! still there after it. A write is acknowledged only once a majority has it flushed to
//! disk, so no kill of any number of hubs can lose it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::common::{wait_until, Cluster};
use serde_json::{json, Value};

#[test]
fn acknowledged_writes_survive_killing_every_hub_twenty_times() {
    let c = Cluster::start_tiny(3, 1, "");
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let acked = Mutex::new(Vec::<String>::new());
    for round in 0..20 {
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            for w in 0..4 {
                let (http, acked, stop, hubs, key) = (&http, &acked, &stop, &c.hubs, &c.key);
                s.spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let name = format!("r{round}-w{w}-{i}");
                        i += 1;
                        let hub = &hubs[(w + i) % hubs.len()];
                        let r = http
                            .post(format!("{hub}/admin/v1/keys"))
                            .bearer_auth(key)
                            .json(&json!({"name": name}))
                            .send();
                        if r.is_ok_and(|r| r.status() == 201) {
                            acked.lock().expect("lock").push(name);
                        }
                    }
                });
            }
            // Let the writes flow, then kill every hub at once, mid-write.
            std::thread::sleep(Duration::from_millis(400));
            for h in ["h1", "h2", "h3"] {
                c.kill(h, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(200));
            stop.store(true, Ordering::Relaxed);
        });
        // `nave up` restarts them; wait for a leader.
        wait_until(Duration::from_secs(60), &format!("the hubs back after kill {round}"), || {
            let r = http.get(format!("{}/admin/v1/keys/none", c.hubs[round % 3])).bearer_auth(&c.key).send();
            match r.map(|r| r.status().as_u16()) {
                Ok(404) => Ok(()),
                other => Err(other.ok()),
            }
        });
    }
    let acked = acked.into_inner().expect("lock");
    assert!(acked.len() >= 100, "the load ran: {} writes acknowledged", acked.len());
    // h1 may still be starting (only one hub was waited for after the last kill).
    let v: Value = wait_until(Duration::from_secs(60), "h1 listing the keys", || {
        match http.get(format!("{}/admin/v1/keys", c.hubs[0])).bearer_auth(&c.key).send() {
            Ok(r) if r.status() == 200 => r.json::<Value>().map_err(|e| e.to_string()),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(e.to_string()),
        }
    });
    let present: std::collections::HashSet<&str> =
        v["keys"].as_array().into_iter().flatten().filter_map(|k| k["name"].as_str()).collect();
    let lost: Vec<&String> = acked.iter().filter(|k| !present.contains(k.as_str())).collect();
    println!("{} writes acknowledged over 20 kills of every hub; lost: {}", acked.len(), lost.len());
    if !lost.is_empty() {
        // Tell a stale read from a lost write: ask every hub for each missing key.
        for name in &lost {
            for hub in &c.hubs {
                let r = http
                    .get(format!("{hub}/admin/v1/keys/{name}"))
                    .bearer_auth(&c.key)
                    .send()
                    .map(|r| r.status().as_u16());
                println!("{name} on {hub}: {r:?}");
            }
        }
        if let Ok(keep) = std::env::var("NAVE_KEEP_FAILED") {
            let mut c = c;
            c.stop();
            let status = std::process::Command::new("cp").arg("-a").arg(c.data()).arg(&keep).status();
            println!("cluster data kept in {keep}: {status:?}");
        }
    }
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}
