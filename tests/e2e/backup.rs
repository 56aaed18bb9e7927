//! Backups that restore: `nave admin backup` under load, every hub's data destroyed, a new
//! cluster given the backup with `nave admin restore`, and every key made before the backup
//! works with its usage intact; a corrupt file and a restore over a cluster in use are
//! refused.

use std::process::Command;
use std::time::Duration;

use crate::common::{launch, Cluster};
use serde_json::{json, Value};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client")
}

fn nave_admin(args: &[&str], url: &str, key: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nave"))
        .arg("admin")
        .args(args)
        .args(["--url", url, "--key", key])
        .output()
        .expect("nave admin runs")
}

#[test]
fn a_backup_restores_into_a_new_cluster() {
    let mut c = Cluster::start_tiny(3, 1, "");
    let http = client();
    let (h1, h3) = (c.hubs[0].clone(), c.hubs[2].clone());
    let mut keys = Vec::new();
    for (name, budget) in [("alpha", 100_000u64), ("beta", 50_000)] {
        let r = http
            .post(format!("{h1}/admin/v1/keys"))
            .bearer_auth(&c.key)
            .json(&json!({"name": name, "daily_tokens": budget}))
            .send()
            .expect("sent");
        assert_eq!(r.status(), 201);
        keys.push(r.json::<Value>().expect("json")["key"].as_str().expect("key").to_string());
    }
    let chat = |hub: &str, key: &str| {
        http.post(format!("{hub}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({"model": "tiny", "max_tokens": 5, "ignore_eos": true, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .expect("sent")
    };
    for _ in 0..3 {
        assert_eq!(chat(&h1, &keys[0]).status(), 200);
    }
    let r = http
        .post(format!("{h3}/v1/responses"))
        .bearer_auth(&keys[1])
        .json(&json!({"model": "tiny", "input": "remember this", "max_output_tokens": 4}))
        .send()
        .expect("sent");
    assert_eq!(r.status(), 200);
    let response_id = r.json::<Value>().expect("json")["id"].as_str().expect("id").to_string();

    // The backup, taken while clients keep sending (their requests may or may not be in it).
    let file = c.dir.path().join("cluster.backup");
    let out = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let http = client();
            for _ in 0..10 {
                let _ = http
                    .post(format!("{h1}/v1/chat/completions"))
                    .bearer_auth(&keys[1])
                    .json(&json!({"model": "tiny", "max_tokens": 3, "messages": [{"role": "user", "content": "x"}]}))
                    .send();
            }
        });
        let out = nave_admin(&["backup", file.to_str().expect("path")], &h1, &c.key);
        load.join().expect("load");
        out
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let alpha_before: Value =
        http.get(format!("{h1}/admin/v1/keys/alpha")).bearer_auth(&c.key).send().expect("sent").json().expect("json");
    assert!(alpha_before["tokens_today"].as_u64() > Some(0), "{alpha_before}");

    // Restoring over a cluster in use is refused.
    let out = nave_admin(&["restore", file.to_str().expect("path")], &h1, &c.key);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"), "{}", String::from_utf8_lossy(&out.stderr));

    // Every hub's data is lost; a new cluster starts on the same config (new CA, new admin key).
    assert!(c.stop(), "clean stop");
    std::fs::remove_dir_all(c.data()).expect("data destroyed");
    c.child = Some(launch(&c.config, None));
    let admin = std::fs::read_to_string(c.data().join("admin.key")).expect("new admin key").trim().to_string();
    assert_ne!(admin, c.key);
    assert_eq!(chat(&h1, &keys[0]).status(), 401, "the new cluster knows no key yet");

    // A corrupt or foreign file is refused with the reason, and nothing changes.
    let mut bytes = std::fs::read(&file).expect("backup");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    let bad = c.dir.path().join("corrupt.backup");
    std::fs::write(&bad, &bytes).expect("write");
    let out = nave_admin(&["restore", bad.to_str().expect("path")], &h1, &admin);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt"), "{}", String::from_utf8_lossy(&out.stderr));
    let r = http
        .post(format!("{h1}/admin/v1/restore"))
        .bearer_auth(&admin)
        .body("not a backup at all")
        .send()
        .expect("sent");
    assert_eq!(r.status(), 400);

    let out = nave_admin(&["restore", file.to_str().expect("path")], &c.hubs[1], &admin);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Every key from before works, on every hub, with its usage intact.
    let alpha: Value =
        http.get(format!("{h3}/admin/v1/keys/alpha")).bearer_auth(&admin).send().expect("sent").json().expect("json");
    assert_eq!(alpha["tokens_today"], alpha_before["tokens_today"], "{alpha}");
    assert_eq!(alpha["total_requests"], alpha_before["total_requests"], "{alpha}");
    for (hub, key) in c.hubs.iter().zip(keys.iter().cycle()) {
        assert_eq!(chat(hub, key).status(), 200, "{hub}");
    }
    let r = http.get(format!("{h1}/v1/responses/{response_id}")).bearer_auth(&keys[1]).send().expect("sent");
    assert_eq!(r.status(), 200, "the stored conversation came back");
    let v: Value =
        http.get(format!("{h1}/admin/v1/audit")).bearer_auth(&admin).send().expect("sent").json().expect("json");
    assert!(v["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["what"].as_str().unwrap_or("").contains("restored")));
}
