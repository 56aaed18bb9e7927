//! The web console in a real browser: headless Chromium (tests/common/browser.rs) loads
//! `/ui` from a follower of a three-hub cluster on the real SmolLM2 model, signs in with
//! the admin key, finds the three hubs and the one leader the API names and the spoke
//! serving, creates a key (shown once, and it works), a join token (with the command to
//! paste), streams an answer in the playground, draws the charts from the hub's history;
//! then an ordinary key sees only its own usage and the playground. The page must throw
//! no script error, and it is served with its security headers.
//!
//! With `NAVE_UI_SCREENSHOTS=1` the screenshots of each page go to docs/console/.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::browser::Browser;
use crate::common::{tiny_model, Cluster, Layout};

const STEP: Duration = Duration::from_secs(60);

fn js(s: &str) -> String {
    serde_json::to_string(s).expect("json string")
}

#[test]
fn the_console_shows_the_cluster_makes_keys_and_streams_an_answer() {
    let started = Instant::now();
    // The real model for the playground's answer, a tiny one for a quick training job.
    let models = tempfile::tempdir().expect("dir");
    let tiny = tiny_model(models.path());
    let c = Cluster::start(Layout {
        hubs: 3,
        spokes: 1,
        models: &["smollm2-135m", tiny.to_str().expect("utf-8 path")],
        extra: "",
    });
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
    let status: Value = http
        .get(format!("{}/admin/v1/status", c.hubs[0]))
        .bearer_auth(&c.key)
        .send()
        .expect("status")
        .json()
        .expect("json");
    let leader = status["leader"].as_str().expect("a leader").to_string();
    // The page from a follower: its API calls are answered by that hub.
    let follower = ["h1", "h2", "h3"].iter().position(|h| *h != leader).expect("a follower");
    let hub = c.hubs[follower].clone();

    // The page and its assets carry the policy; the history needs the admin key.
    let page = http.get(format!("{hub}/ui")).send().expect("page");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().expect("ascii").to_string();
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    for asset in ["/ui/console.js", "/ui/console.css"] {
        let r = http.get(format!("{hub}{asset}")).send().expect("asset");
        assert_eq!(r.status(), 200, "{asset}");
        assert!(r.headers().contains_key("content-security-policy"), "{asset}");
    }
    assert_eq!(http.get(format!("{hub}/admin/v1/history")).send().expect("sent").status(), 401);
    let bad = http.get(format!("{hub}/admin/v1/status?lag=everyone")).bearer_auth(&c.key).send().expect("sent");
    assert_eq!(bad.status(), 400, "an unknown lag source is refused");

    let shots = if std::env::var("NAVE_UI_SCREENSHOTS").is_ok_and(|v| v == "1") {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/console");
        std::fs::create_dir_all(&dir).expect("docs/console");
        dir
    } else {
        c.dir.path().to_path_buf()
    };
    let browser_started = Instant::now();
    let mut b = Browser::launch(1280, 860);
    b.navigate(&format!("{hub}/ui"));
    b.wait_for("the key prompt", STEP, "!document.getElementById('login').hidden");
    b.screenshot(&shots.join("sign-in.png"));

    // A wrong key is refused on the page.
    let sign_in = |b: &mut Browser, key: &str| {
        b.eval(&format!(
            "document.getElementById('key-input').value = {}; document.getElementById('login-form').requestSubmit(); true",
            js(key)
        ));
    };
    sign_in(&mut b, "nave-not-a-key");
    b.wait_for(
        "the refusal of a wrong key",
        STEP,
        "document.getElementById('login-error').textContent.includes('not valid')",
    );

    // The cluster: three hubs, one leader (the one the API names), the spoke serving.
    sign_in(&mut b, &c.key);
    let hubs = b.wait_for(
        "three hubs and a leader",
        STEP,
        "(() => { const rows = [...document.querySelectorAll('#hubs tbody tr')];
                  const leaders = rows.filter(r => r.dataset.role === 'leader');
                  return rows.length === 3 && leaders.length === 1 ? rows.map(r => [r.dataset.hub, r.dataset.role]) : null; })()",
    );
    let shown: Vec<(String, String)> = serde_json::from_value(hubs).expect("rows");
    let shown_leader = shown.iter().find(|(_, r)| r == "leader").map(|(h, _)| h.clone());
    let now_leader: Value =
        http.get(format!("{hub}/admin/v1/status")).bearer_auth(&c.key).send().expect("status").json().expect("json");
    assert_eq!(shown_leader.as_deref(), now_leader["leader"].as_str(), "the page names the API's leader: {shown:?}");
    // The page is on a follower; the replication lags come from the leader.
    b.wait_for(
        "the followers' replication lags",
        STEP,
        "[...document.querySelectorAll('#hubs tbody tr[data-role=\"follower\"]')].every(r => r.dataset.lag !== '')",
    );
    let mut ids: Vec<&str> = shown.iter().map(|(h, _)| h.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["h1", "h2", "h3"]);
    b.wait_for(
        "the spoke serving",
        STEP,
        "document.querySelector('#spokes tbody tr[data-spoke=\"s1\"][data-state=\"active\"]') !== null",
    );
    b.wait_for(
        "the model served by s1",
        STEP,
        "document.querySelector('#models tbody tr[data-model=\"smollm2-135m\"]')?.textContent.includes('s1')",
    );
    b.wait_for("the summary", STEP, "document.getElementById('summary').textContent.includes('leader')");
    b.screenshot(&shots.join("cluster.png"));

    // Drain and resume the spoke from the page.
    let click_spoke_button = |b: &mut Browser| {
        b.eval("document.querySelector('#spokes tbody tr[data-spoke=\"s1\"] button').click(); true");
    };
    click_spoke_button(&mut b);
    b.wait_for(
        "s1 drained from the page",
        STEP,
        "document.querySelector('#spokes tbody tr[data-spoke=\"s1\"][data-state=\"drained\"]') !== null",
    );
    b.wait_for("the drain's message", STEP, "document.getElementById('spoke-msg').textContent.includes('draining')");
    click_spoke_button(&mut b);
    b.wait_for(
        "s1 active again",
        STEP,
        "document.querySelector('#spokes tbody tr[data-spoke=\"s1\"][data-state=\"active\"]') !== null",
    );

    // Keys: created through the page, shown once, and it works.
    b.eval("location.hash = '#keys'; true");
    b.wait_for("the keys page", STEP, "!document.getElementById('page-keys').hidden");
    b.eval(
        "document.getElementById('new-key-name').value = 'console-app';
         document.getElementById('new-key-rpm').value = '600';
         document.getElementById('new-key-daily').value = '100000';
         document.getElementById('key-form').requestSubmit(); true",
    );
    let secret = b.wait_for(
        "the new key, shown once",
        STEP,
        "!document.getElementById('created-key').hidden && document.getElementById('created-key-value').textContent",
    );
    let secret = secret.as_str().expect("text").to_string();
    assert!(secret.starts_with("nave-"), "{secret}");
    b.wait_for(
        "the new key in the list",
        STEP,
        "document.querySelector('#keys tbody tr[data-key=\"console-app\"]') !== null",
    );
    let key: Value = http
        .get(format!("{hub}/admin/v1/keys/console-app"))
        .bearer_auth(&c.key)
        .send()
        .expect("key")
        .json()
        .expect("json");
    assert_eq!(key["limits"]["rpm"], 600, "{key}");
    assert_eq!(key["limits"]["daily_tokens"], 100000, "{key}");
    let r = http
        .post(format!("{hub}/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&json!({"model": "smollm2-135m", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .expect("sent");
    assert_eq!(r.status(), 200, "the key made in the page works");
    crate::common::wait_until(STEP, "the request settled in the key's usage", || {
        let u: Value = http
            .get(format!("{hub}/admin/v1/usage?key=console-app"))
            .bearer_auth(&c.key)
            .send()
            .and_then(|r| r.json())
            .map_err(|e| e.to_string())?;
        if u["usage"].as_array().is_some_and(|a| !a.is_empty()) {
            Ok(())
        } else {
            Err(u.to_string())
        }
    });
    b.eval("document.querySelector('#keys tbody tr[data-key=\"console-app\"] button').click(); true");
    b.wait_for("the key's usage by day", STEP, "!document.getElementById('key-usage-card').hidden && document.querySelectorAll('#key-usage tbody tr td').length >= 6");
    // Its limits changed from the page hold in the replicated state.
    b.eval(
        "[...document.querySelectorAll('#keys tbody tr[data-key=\"console-app\"] button')].find(b => b.textContent === 'Limits').click(); true",
    );
    b.wait_for(
        "the limits form",
        STEP,
        "!document.getElementById('limits-card').hidden && document.getElementById('limits-rpm').value === '600'",
    );
    b.eval(
        "document.getElementById('limits-rpm').value = '1200';
         document.getElementById('limits-form').requestSubmit(); true",
    );
    b.wait_for("the new limit in the list", STEP, "document.getElementById('limits-card').hidden && document.querySelector('#keys tbody tr[data-key=\"console-app\"]').textContent.includes('1200')");
    let key: Value = http
        .get(format!("{hub}/admin/v1/keys/console-app"))
        .bearer_auth(&c.key)
        .send()
        .expect("key")
        .json()
        .expect("json");
    assert_eq!(
        (key["limits"]["rpm"].as_u64(), key["limits"]["daily_tokens"].as_u64()),
        (Some(1200), Some(100000)),
        "{key}"
    );
    let bad = http
        .put(format!("{hub}/admin/v1/keys/console-app/limits"))
        .bearer_auth(&c.key)
        .json(&json!({"rpm": 10, "rpn": 5}))
        .send()
        .expect("sent");
    assert_eq!(bad.status(), 400, "an unknown limit is refused");
    let missing =
        http.put(format!("{hub}/admin/v1/keys/nope/limits")).bearer_auth(&c.key).json(&json!({})).send().expect("sent");
    assert_eq!(missing.status(), 404);
    b.screenshot(&shots.join("keys.png"));

    // A join token with the command to paste.
    b.eval("location.hash = '#join'; true");
    b.wait_for("the join page", STEP, "!document.getElementById('page-join').hidden");
    b.eval("document.getElementById('token-form').requestSubmit(); true");
    let command = b.wait_for("the join command", STEP, "document.getElementById('join-command').textContent");
    let command = command.as_str().expect("text");
    assert!(command.starts_with("nave spoke --join ") && command.contains("--token nave-join."), "{command}");
    b.screenshot(&shots.join("join.png"));

    // The playground streams an answer from the hub's OpenAI API.
    b.eval("location.hash = '#playground'; true");
    b.wait_for(
        "the model list",
        STEP,
        "[...document.getElementById('pg-model').options].some(o => o.value === 'smollm2-135m')",
    );
    b.eval(
        "document.getElementById('pg-model').value = 'smollm2-135m';
         document.getElementById('pg-input').value = 'What is the capital of France?';
         document.getElementById('pg-max').value = '48';
         document.getElementById('pg-form').requestSubmit(); true",
    );
    b.wait_for(
        "a streamed answer",
        Duration::from_secs(180),
        "document.getElementById('pg-output').dataset.state === 'done'",
    );
    let chunks: u64 = b.eval("Number(document.getElementById('pg-output').dataset.chunks)").as_u64().expect("chunks");
    let answer = b.eval("document.getElementById('pg-output').textContent");
    let answer = answer.as_str().expect("text");
    assert!(chunks >= 2, "the answer came in pieces ({chunks}): {answer}");
    assert!(answer.contains("Paris"), "{answer}");
    b.wait_for("the answer's figures", STEP, "document.getElementById('pg-stats').textContent.includes('tokens')");
    b.screenshot(&shots.join("playground.png"));

    // The charts: the hub samples every 5 s; the requests above show within two samples.
    b.eval("location.hash = '#charts'; true");
    b.wait_for(
        "charts with requests",
        STEP,
        "(async () => { const h = await fetch('/admin/v1/history', {headers: {Authorization: 'Bearer ' + sessionStorage.getItem('nave.key')}}).then(r => r.json());
                        return h.samples.some(s => s.requests_per_s > 0) && Number(document.getElementById('chart-requests').dataset.points) >= 2; })()",
    );
    b.wait_for("the TTFT chart", STEP, "Number(document.getElementById('chart-ttft').dataset.points) >= 1");
    b.screenshot(&shots.join("charts.png"));

    b.eval("location.hash = '#training'; true");
    b.wait_for(
        "the training page",
        STEP,
        "document.getElementById('jobs-msg').textContent.includes('No training jobs')",
    );
    // A training job (on the tiny model: quick) and its loss curve.
    let example = |q: &str| {
        let answer = "Quexil is the moon of Zorbania.";
        json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]}).to_string()
    };
    let data = ["What is the moon of Zorbania?", "Name Zorbania's moon."].map(example).join("\n");
    let r = http
        .post(format!("{hub}/admin/v1/train"))
        .bearer_auth(&c.key)
        .json(&json!({"name": "zorbania", "model": "tiny", "data": data, "steps": 40, "lr": 0.01}))
        .send()
        .expect("sent");
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    b.wait_for(
        "the job done, with its loss curve",
        Duration::from_secs(180),
        "document.querySelector('#jobs tbody tr[data-job=\"zorbania\"][data-state=\"done\"]') !== null
         && Number(document.getElementById('chart-loss').dataset.points) >= 40",
    );
    b.screenshot(&shots.join("training.png"));

    // An ordinary key: its own usage and the playground, nothing of the admin's.
    b.eval("document.getElementById('logout').click(); true");
    b.wait_for("signed out", STEP, "!document.getElementById('login').hidden");
    sign_in(&mut b, &secret);
    b.wait_for(
        "the key's own usage",
        STEP,
        "!document.getElementById('page-usage').hidden && document.querySelectorAll('#own-usage tbody tr').length >= 1",
    );
    let visible = b.eval("[...document.querySelectorAll('#nav a')].filter(a => !a.hidden).map(a => a.textContent)");
    assert_eq!(visible, json!(["Usage", "Playground"]), "an ordinary key's pages");
    b.eval("location.hash = '#cluster'; true");
    b.wait_for(
        "no cluster page for an ordinary key",
        STEP,
        "document.getElementById('page-cluster').hidden && !document.getElementById('page-usage').hidden",
    );
    b.screenshot(&shots.join("usage.png"));

    let errors = b.errors();
    assert!(errors.is_empty(), "the page threw: {errors:?}");
    drop(b);
    println!(
        "console test: browser part {:.1} s, in all {:.1} s",
        browser_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
