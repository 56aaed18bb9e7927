//! The metrics parse in a real Prometheus: the test runs Prometheus (Debian package
//! `prometheus`; scripts/test installs it) on loopback with a generated config that
//! scrapes a hub and a spoke every second, and asks its HTTP API whether both targets are
//! `up` (a scrape that does not parse is `up == 0`, with the parser's error in the
//! target's `lastError`) and whether `nave_` series of each were ingested.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{free_port, wait_until, Cluster, Process};

#[test]
fn a_real_prometheus_scrapes_every_node() {
    let which = Command::new("prometheus").arg("--version").output();
    assert!(
        which.is_ok_and(|o| o.status.success()),
        "the prometheus binary is needed (Debian package `prometheus`; scripts/test installs it)"
    );
    let c = Cluster::start_tiny(1, 1, "");
    let dir = c.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let target = |url: &str| url.trim_start_matches("http://").to_string();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
         scrape_configs:\n\
         \x20 - job_name: hubs\n    static_configs:\n      - targets: ['{}']\n\
         \x20 - job_name: spokes\n    static_configs:\n      - targets: ['{}']\n",
        target(&c.hubs[0]),
        target(&c.spokes[0]),
    );
    std::fs::write(dir.join("prometheus.yml"), config).expect("config");
    let port = free_port();
    let _prometheus = Process(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let query = |q: &str| -> Result<Vec<Value>, String> {
        let v: Value = http
            .get(format!("{api}/query"))
            .query(&[("query", q)])
            .send()
            .and_then(|r| r.json())
            .map_err(|e| e.to_string())?;
        v["data"]["result"].as_array().cloned().ok_or_else(|| v.to_string())
    };
    for job in ["hubs", "spokes"] {
        wait_until(Duration::from_secs(90), &format!("{job} scraped and up"), || {
            let up = query(&format!("up{{job=\"{job}\"}}"))?;
            match up.first().and_then(|s| s["value"][1].as_str()) {
                Some("1") => Ok(()),
                other => {
                    let targets: Value =
                        http.get(format!("{api}/targets")).send().and_then(|r| r.json()).unwrap_or_default();
                    Err(format!("up = {other:?}; targets: {targets}"))
                }
            }
        });
        let series = wait_until(Duration::from_secs(30), &format!("nave_ series of {job}"), || {
            let s = query(&format!("count({{__name__=~\"nave_.+\",job=\"{job}\"}})"))?;
            let n: u64 = s.first().and_then(|s| s["value"][1].as_str()).and_then(|v| v.parse().ok()).unwrap_or(0);
            if n > 0 {
                Ok(n)
            } else {
                Err(format!("{s:?}"))
            }
        });
        assert!(series >= 3, "{job}: {series} nave_ series");
    }
    // A named gauge of the hub's, as Prometheus stored it.
    let s = query("nave_hub_requests_in_flight{job=\"hubs\"}").expect("query");
    assert_eq!(s.len(), 1, "{s:?}");
}
