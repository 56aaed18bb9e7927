//! A spoke joins a running cluster with a token while requests flow: it serves, the token
//! cannot be used twice, bad tokens are refused with a clear message and register
//! nothing, the joined spoke starts again from its saved identity, its certificate is
//! rotated on request (renewed through a hub with the one it has), a stranger's QUIC
//! connection gets 4 streams, and removal forgets it (its certificate renews nothing).
//! Two spokes joining from one machine with nothing but the hub, a token and a data
//! directory each get distinct ids (the hub renames the second) and say which.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{free_port, tiny_model, Cluster, Layout, Process};
use serde_json::{json, Value};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client")
}

struct Joiner<'a> {
    hub_quic: &'a str,
    model: &'a str,
    data_dir: &'a std::path::Path,
}

impl Joiner<'_> {
    fn command(&self, id: &str, token: Option<&str>, quic: u16, http: u16) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nave"));
        cmd.args(["spoke", "--id", id, "--models", self.model, "--kv-pool", "64MiB", "--threads", "1"])
            .arg("--data-dir")
            .arg(self.data_dir)
            .args(["--quic", &format!("127.0.0.1:{quic}"), "--http", &format!("127.0.0.1:{http}")])
            .env("NAVE_LOG", "info");
        if let Some(t) = token {
            cmd.args(["--join", self.hub_quic, "--token", t]);
        }
        cmd
    }

    /// Runs a join that must fail; returns its stderr.
    fn refused(&self, id: &str, token: &str) -> String {
        let out = self.command(id, Some(token), free_port(), free_port()).stdout(Stdio::null()).output().expect("runs");
        assert!(!out.status.success(), "the join must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

fn spoke_state(http: &reqwest::blocking::Client, hub: &str, key: &str, id: &str) -> Option<String> {
    let v: Value = http.get(format!("{hub}/admin/v1/status")).bearer_auth(key).send().ok()?.json().ok()?;
    v["spokes"].as_array()?.iter().find(|s| s["id"] == id).and_then(|s| s["state"].as_str().map(String::from))
}

fn wait_state(http: &reqwest::blocking::Client, hub: &str, key: &str, id: &str, want: Option<&str>) {
    crate::common::wait_until(Duration::from_secs(90), &format!("spoke {id} reaching {want:?}"), || {
        let state = spoke_state(http, hub, key, id);
        if state.as_deref() == want {
            Ok(())
        } else {
            Err(state)
        }
    });
}

#[test]
fn a_spoke_joins_with_a_token_while_requests_flow() {
    let models = tempfile::tempdir().expect("dir");
    let model = tiny_model(models.path());
    let model = model.to_str().expect("utf-8 path");
    let c = Cluster::start(Layout {
        hubs: 1,
        spokes: 1,
        models: &[model],
        extra: "heartbeat_interval_ms = 200\nheartbeat_timeout_ms = 1500\n",
    });
    let (hub, key) = (c.hubs[0].clone(), c.key.clone());
    let http = client();
    let joined_dir = c.dir.path().join("joined");
    let joiner = Joiner { hub_quic: &c.hub_quic[0], model, data_dir: &joined_dir };

    // Requests flow the whole time; none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed, hub, key) = (stop.clone(), ok.clone(), failed.clone(), hub.clone(), key.clone());
        std::thread::spawn(move || {
            let http = client();
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r = http
                    .post(format!("{hub}/v1/chat/completions"))
                    .bearer_auth(&key)
                    .json(&json!({"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "the"}]}))
                    .send();
                match r {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => {
                        eprintln!("request failed: {} {}", r.status(), r.text().unwrap_or_default());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("request failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };

    // A one-use token; the spoke joins with it and becomes a candidate.
    let r = http
        .post(format!("{hub}/admin/v1/tokens"))
        .bearer_auth(&key)
        .json(&json!({"ttl_s": 600, "uses": 1}))
        .send()
        .expect("sent");
    assert_eq!(r.status(), 201);
    let token = r.json::<Value>().expect("json")["token"].as_str().expect("token").to_string();
    let (quic, port) = (free_port(), free_port());
    let spoke = Process(joiner.command("s9", Some(&token), quic, port).stdout(Stdio::null()).spawn().expect("spawn"));
    wait_state(&http, &hub, &key, "s9", Some("active"));

    // With the config spoke drained, the joined one answers alone.
    let drain = |undo: bool| {
        let r = http
            .post(format!("{hub}/admin/v1/spokes/s1/drain"))
            .bearer_auth(&key)
            .json(&json!({"undo": undo}))
            .send()
            .expect("sent");
        assert_eq!(r.status(), 200);
    };
    drain(false);
    for _ in 0..3 {
        let r = http
            .post(format!("{hub}/v1/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": "tiny", "max_tokens": 4, "prompt": "the"}))
            .send()
            .expect("sent");
        assert_eq!(r.status(), 200, "served by the joined spoke");
    }
    let metrics =
        http.get(format!("http://127.0.0.1:{port}/metrics")).send().expect("spoke metrics").text().expect("text");
    let generated: f64 = metrics
        .lines()
        .find(|l| l.starts_with("nave_engine_generated_tokens_total"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0);
    assert!(generated >= 3.0, "the joined spoke generated tokens: {metrics}");
    drain(true);

    // The same token again, a garbled one, one for another CA: refused, nothing registered.
    let again = joiner.refused("s10", &token);
    assert!(again.contains("used up"), "{again}");
    assert!(joiner.refused("s11", "nave-join.1234").contains("looks like"));
    let foreign = format!("nave-join.{}.{}", "ab".repeat(16), "cd".repeat(32));
    let err = joiner.refused("s12", &foreign);
    assert!(err.contains("is not a hub of the token's cluster") && err.contains("mistyped"), "{err}");
    for id in ["s10", "s11", "s12"] {
        assert_eq!(spoke_state(&http, &hub, &key, id), None, "{id} must not be registered");
    }

    // The joined spoke starts again from its saved identity, without a token. Its
    // certificate is made to expire soon first (5 of its 25 days left): the spoke renews
    // it by itself, through a hub, as it starts.
    drop(spoke);
    wait_state(&http, &hub, &key, "s9", Some("down"));
    let ca = nave_consensus::tls::ClusterCa::load(&c.data().join("ca")).expect("the cluster CA");
    let (old_cert, old_key) = ca.issue_with("s9", -20 * 86_400, Duration::from_secs(25 * 86_400)).expect("issue");
    std::fs::write(joined_dir.join("s9/node.pem"), &old_cert).expect("write cert");
    std::fs::write(joined_dir.join("s9/node.key"), &old_key).expect("write key");
    let _spoke = Process(joiner.command("s9", None, quic, port).stdout(Stdio::null()).spawn().expect("spawn"));
    wait_state(&http, &hub, &key, "s9", Some("active"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    crate::common::wait_until(Duration::from_secs(90), "s9 renewed its certificate", || {
        let pem = std::fs::read_to_string(joined_dir.join("s9/node.pem")).map_err(|e| e.to_string())?;
        let der = rustls_pemfile::certs(&mut pem.as_bytes()).next().ok_or("no cert")?.map_err(|e| e.to_string())?;
        let v = nave_consensus::tls::validity(&der).map_err(|e| e.to_string())?;
        if v.not_after > now + 20 * 86_400 {
            Ok(())
        } else {
            Err(format!("{v:?}"))
        }
    });

    stop.store(true, Ordering::Relaxed);
    load.join().expect("load thread");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed while the spoke joined ({} succeeded)",
        ok.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) > 0);

    // A joined spoke's certificate is rotated on request: it renews through a hub with the
    // certificate it has, and serves on with the new one.
    let s9_cert = std::fs::read_to_string(joined_dir.join("s9/node.pem")).expect("s9 cert");
    let r = http
        .post(format!("{hub}/admin/v1/certs/rotate"))
        .bearer_auth(&key)
        .json(&json!({"node": "s9"}))
        .send()
        .expect("sent");
    assert_eq!(r.status(), 200, "{:?}", r.text());
    assert_ne!(std::fs::read_to_string(joined_dir.join("s9/node.pem")).expect("s9 cert"), s9_cert);
    assert!(renew_as(&joined_dir.join("s9"), "s9", &c.hub_quic[0]).is_ok(), "a member renews");

    // A stranger's connection to the hub's QUIC port gets no more than 4 streams.
    assert_eq!(stranger_streams(&c.hub_quic[0], &joined_dir.join("s9")), 4);

    // Removal: the hubs forget it.
    let r = http.delete(format!("{hub}/admin/v1/spokes/s9")).bearer_auth(&key).send().expect("sent");
    assert_eq!(r.status(), 200);
    wait_state(&http, &hub, &key, "s9", None);
    // Its certificate renews nothing any more: the name is revoked.
    let refused = renew_as(&joined_dir.join("s9"), "s9", &c.hub_quic[0]);
    assert!(refused.as_ref().is_err_and(|e| e.contains("revoked")), "{refused:?}");
    let r = http.delete(format!("{hub}/admin/v1/spokes/s1")).bearer_auth(&key).send().expect("sent");
    assert_eq!(r.status(), 409, "a config spoke is removed in cluster.toml");

    // A join with nothing but the hub, the token and a data directory: the id is the host
    // name, the listeners free ports on the address that reaches the hub; it restarts with
    // only its data directory.
    let r =
        http.post(format!("{hub}/admin/v1/tokens")).bearer_auth(&key).json(&json!({"uses": 1})).send().expect("sent");
    let token = r.json::<Value>().expect("json")["token"].as_str().expect("token").to_string();
    let bare_dir = c.dir.path().join("bare");
    let bare = |join: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nave"));
        cmd.args(["spoke", "--models", model, "--kv-pool", "64MiB", "--threads", "1", "--data-dir"]).arg(&bare_dir);
        if join {
            cmd.args(["--join", &c.hub_quic[0], "--token", &token]);
        }
        Process(cmd.stdout(Stdio::null()).spawn().expect("spawn"))
    };
    let spoke = bare(true);
    let id = crate::common::wait_until(Duration::from_secs(90), "the bare join", || {
        let v: Value =
            http.get(format!("{hub}/admin/v1/status")).bearer_auth(&key).send().expect("sent").json().expect("json");
        let found = v["spokes"].as_array().into_iter().flatten().find(|s| s["id"] != "s1" && s["state"] == "active");
        found.and_then(|s| s["id"].as_str().map(String::from)).ok_or(v)
    });
    assert!(id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{id}");
    assert!(bare_dir.join(&id).join("joined.json").exists(), "kept under <data-dir>/<id>");
    drop(spoke);
    wait_state(&http, &hub, &key, &id, Some("down"));
    let _spoke = bare(false);
    wait_state(&http, &hub, &key, &id, Some("active"));
}

/// Asks the hub at `hub_quic` on `nave-renew/1`, as node `name` (its identity in `dir`),
/// for a new certificate: the certificate, or the hub's refusal.
fn renew_as(dir: &std::path::Path, name: &str, hub_quic: &str) -> Result<String, String> {
    use nave_consensus::frame::{read_frame, write_frame};
    use nave_consensus::tls::{self, NodeIdentity};
    use nave_spoke::protocol::{RenewReply, RenewRequest, MAX_JOIN_FRAME};

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let identity = NodeIdentity::load(dir, name).expect("identity");
    runtime.block_on(async move {
        let endpoint = tls::client_endpoint().map_err(|e| e.to_string())?;
        let (csr_pem, _key) = tls::new_request(name).map_err(|e| e.to_string())?;
        let exchange = async {
            let cfg = identity.client_config(tls::ALPN_RENEW).map_err(|e| e.to_string())?;
            let addr = hub_quic.parse().map_err(|e| format!("{e}"))?;
            let conn = endpoint.connect_with(cfg, addr, tls::HUB_NAME).map_err(|e| e.to_string())?;
            let conn = conn.await.map_err(|e| e.to_string())?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            write_frame(&mut send, &RenewRequest { csr_pem }).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            match read_frame::<RenewReply, _>(&mut recv, MAX_JOIN_FRAME).await.map_err(|e| e.to_string())? {
                Some(RenewReply::Renewed { cert_pem }) => Ok(cert_pem),
                Some(RenewReply::Refused(why)) => Err(why),
                None => Err("no answer".into()),
            }
        };
        tokio::time::timeout(Duration::from_secs(10), exchange).await.map_err(|_| "timed out".to_string())?
    })
}

/// How many streams a client without a certificate gets open on the hub at `hub_quic`
/// (up to 10; each open given 1 s). `dir` holds a node identity whose CA it pins.
fn stranger_streams(hub_quic: &str, dir: &std::path::Path) -> usize {
    use nave_consensus::tls;

    let ca = std::fs::read_to_string(dir.join("ca.pem")).expect("ca");
    let fingerprint = tls::fingerprint_pem(&ca).expect("fingerprint");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let endpoint = tls::client_endpoint().expect("endpoint");
        let cfg = tls::join_client_config(&fingerprint).expect("config");
        let conn = endpoint
            .connect_with(cfg, hub_quic.parse().expect("addr"), tls::HUB_NAME)
            .expect("connect")
            .await
            .expect("a stranger completes the handshake");
        let mut open = Vec::new();
        for _ in 0..10 {
            match tokio::time::timeout(Duration::from_secs(1), conn.open_bi()).await {
                Ok(Ok((mut send, recv))) => {
                    if send.write_all(b"x").await.is_err() {
                        break;
                    }
                    open.push((send, recv));
                }
                _ => break,
            }
        }
        open.len()
    })
}

/// A `nave spoke` whose stderr lines are kept (and echoed) as they come.
struct Watched {
    _process: Process,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Watched {
    fn spawn(mut cmd: Command, name: &'static str) -> Watched {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{name}] {line}");
                kept.lock().expect("lines").push(line);
            }
        });
        Watched { _process: Process(child), lines }
    }

    /// The first line starting with `prefix`, waited for.
    fn line(&self, prefix: &str) -> String {
        crate::common::wait_until(Duration::from_secs(120), &format!("a line {prefix:?}"), || {
            let lines = self.lines.lock().expect("lines");
            lines.iter().find(|l| l.starts_with(prefix)).cloned().ok_or(lines.len())
        })
    }
}

#[test]
fn two_spokes_joining_from_one_machine_get_distinct_ids() {
    let c = Cluster::start_tiny(1, 1, "heartbeat_interval_ms = 200\nheartbeat_timeout_ms = 1500\n");
    let (hub, key) = (c.hubs[0].clone(), c.key.clone());
    let http = client();
    let r =
        http.post(format!("{hub}/admin/v1/tokens")).bearer_auth(&key).json(&json!({"uses": 2})).send().expect("sent");
    assert_eq!(r.status(), 201);
    let created: Value = r.json().expect("json");
    // The command the admin pastes, as the hub prints it: nothing else is needed.
    let command = created["join"].as_str().expect("join command").to_string();
    let token = created["token"].as_str().expect("token").to_string();
    assert_eq!(command, format!("nave spoke --join {} --token {token}", c.hub_quic[0]));
    let spoke = |dir: &std::path::Path, join: bool, name: &'static str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nave"));
        cmd.arg("spoke").arg("--data-dir").arg(dir);
        if join {
            cmd.args(["--join", &c.hub_quic[0], "--token", &token]);
        }
        Watched::spawn(cmd, name)
    };
    let (dir_a, dir_b) = (c.dir.path().join("machine-a"), c.dir.path().join("machine-b"));

    // An id chosen with --id is not renamed: a taken one is refused, the token kept.
    let taken = Command::new(env!("CARGO_BIN_EXE_nave"))
        .args(["spoke", "--id", "s1", "--join", &c.hub_quic[0], "--token", &token, "--data-dir"])
        .arg(c.dir.path().join("machine-x"))
        .output()
        .expect("runs");
    let taken = String::from_utf8_lossy(&taken.stderr);
    assert!(
        taken.contains("the spoke id \"s1\" is taken by another node") && taken.contains("pick another --id"),
        "{taken}"
    );

    let a = spoke(&dir_a, true, "spoke a");
    let signed_a = a.line("join: certificate signed for spoke ");
    let id_a = signed_a["join: certificate signed for spoke ".len()..].split(' ').next().expect("id").to_string();
    assert!(!signed_a.contains("held by another node"), "the first takes the host name: {signed_a}");
    a.line("join: CA pinned");
    a.line("join: serving as spoke");
    a.line("join: replica caught up");
    wait_state(&http, &hub, &key, &id_a, Some("active"));

    let b = spoke(&dir_b, true, "spoke b");
    let signed_b = b.line("join: certificate signed for spoke ");
    let id_b = format!("{id_a}-2");
    assert_eq!(
        signed_b,
        format!("join: certificate signed for spoke {id_b} ({id_a} is held by another node)"),
        "the second is renamed and says so"
    );
    wait_state(&http, &hub, &key, &id_b, Some("active"));
    assert!(dir_a.join(&id_a).join("joined.json").exists());
    assert!(dir_b.join(&id_b).join("joined.json").exists(), "kept under the id the hub chose");
    assert!(!dir_b.join(&id_a).join("joined.json").exists());

    // The renamed spoke starts again with only its data directory, under its new id.
    drop(b);
    wait_state(&http, &hub, &key, &id_b, Some("down"));
    let _b = spoke(&dir_b, false, "spoke b again");
    wait_state(&http, &hub, &key, &id_b, Some("active"));
    assert_eq!(spoke_state(&http, &hub, &key, &id_a).as_deref(), Some("active"));

    // Tokens guessed from one address: after ten failures a minute, the hub closes the
    // address's joins unread, and the join says so. (Last: loopback stays closed a minute.)
    let mut guessed = token.clone();
    guessed.replace_range(10..14, if &token[10..14] == "0000" { "1111" } else { "0000" });
    let guess = || {
        let out = Command::new(env!("CARGO_BIN_EXE_nave"))
            .args(["spoke", "--join", &c.hub_quic[0], "--token", &guessed, "--data-dir"])
            .arg(c.dir.path().join("guesser"))
            .output()
            .expect("runs");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // The refused --id above was the first failure from this address.
    for i in 1..10 {
        let refused = guess();
        assert!(refused.contains("the join token is not valid here"), "guess {i}: {refused}");
    }
    let closed = guess();
    assert!(closed.contains("closed the join: too many failed joins from 127.0.0.1; retry in"), "{closed}");
}
