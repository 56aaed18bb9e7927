//! The admin and chat client: `nave admin ...`, `nave train ...` and `nave chat` talk to a
//! hub's HTTP API and read its answers as the hub's own types (`nave_hub::api::types`).

use std::time::Duration;

use anyhow::Context;
use nave_hub::api::types::{
    AddedHub, AuditList, ChatRequest, ChatStreamEvent, ClusterStatus, Content, CreatedKey, CreatedToken, Drained,
    ErrorEnvelope, InMessage, JobAnswer, JobList, KeyList, KeyView, NewHub, NewKey, NewToken, Sampling, TrainSubmit,
    UsageList,
};
use nave_spoke::protocol::JobStatus;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cli::{AdminCmd, AdminConn, CertCmd, HubCmd, KeyCmd, SpokeCmd, TokenCmd, TrainCmd};

/// The key given, else `./.nave/admin.key` (written by `nave up`).
pub fn default_key(key: Option<String>) -> anyhow::Result<String> {
    match key {
        Some(k) => Ok(k),
        None => Ok(std::fs::read_to_string(".nave/admin.key")
            .context("no key given (--key or NAVE_API_KEY) and no ./.nave/admin.key")?
            .trim()
            .to_string()),
    }
}

/// The message of an error answer, if it is one in the API's shape.
fn error_message(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<ErrorEnvelope>(body).ok().map(|e| e.error.message)
}

/// One admin call: `body` as JSON, the answer read as `T`; a non-2xx answer is an error
/// with the hub's message.
async fn call<T: DeserializeOwned>(
    url: &str,
    key: String,
    method: Method,
    path: &str,
    body: Option<&impl Serialize>,
    timeout: Duration,
) -> anyhow::Result<T> {
    let body = body.map(serde_json::to_vec).transpose()?.map(|b| ("application/json", b));
    let bytes = call_bytes(url, key, method, path, body, timeout).await?;
    serde_json::from_slice(&bytes).with_context(|| format!("{path}: an answer this client does not understand"))
}

/// The trust for `https://` hub URLs (`--ca-cert`), set once at start.
static CA_CERT: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

/// Sets the PEM file whose certificates `https://` calls trust.
pub fn set_ca_cert(path: Option<std::path::PathBuf>) {
    let _ = CA_CERT.set(path);
}

/// An HTTP client for a hub at `url`: plain for `http://`; for `https://`, one that trusts
/// exactly the certificates of `--ca-cert` (a hub's TLS is its own: a self-signed
/// certificate, or a private CA's).
fn http_client(url: &str) -> anyhow::Result<reqwest::Client> {
    if !url.starts_with("https://") {
        return Ok(reqwest::Client::new());
    }
    let Some(path) = CA_CERT.get().cloned().flatten() else {
        anyhow::bail!("{url} is HTTPS: give --ca-cert FILE (or NAVE_CA_CERT), the hub's certificate or its CA, PEM");
    };
    let pem = std::fs::read(&path).with_context(|| format!("reading --ca-cert {}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.with_context(|| format!("{} is not a PEM certificate file", path.display()))?;
        roots.add(cert).with_context(|| format!("{}: a certificate rustls cannot use", path.display()))?;
    }
    anyhow::ensure!(!roots.is_empty(), "{} holds no PEM certificate", path.display());
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder().use_preconfigured_tls(tls).build()?)
}

/// One call with a body of `(content type, bytes)`: the answer's bytes, or its error.
async fn call_bytes(
    url: &str,
    key: String,
    method: Method,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
    timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    let mut req = http_client(url)?.request(method, format!("{url}{path}")).bearer_auth(key).timeout(timeout);
    if let Some((content_type, b)) = body {
        req = req.header("content-type", content_type).body(b);
    }
    let resp = req.send().await.with_context(|| format!("cannot reach {url}"))?;
    let code = resp.status();
    let bytes = resp.bytes().await?;
    if !code.is_success() {
        anyhow::bail!("{code}: {}", error_message(&bytes).as_deref().unwrap_or("no detail"));
    }
    Ok(bytes.into())
}

async fn admin<T: DeserializeOwned>(
    conn: AdminConn,
    method: Method,
    path: &str,
    body: Option<&impl Serialize>,
) -> anyhow::Result<T> {
    let key = default_key(conn.key)?;
    call(&conn.url, key, method, path, body, Duration::from_secs(15)).await
}

/// An answer whose body the command does not print.
#[derive(serde::Deserialize)]
struct Ignored {}

const NO_BODY: Option<&()> = None;

pub async fn admin_command(command: AdminCmd) -> anyhow::Result<()> {
    match command {
        AdminCmd::Status { url, key, json } => status(url, default_key(key)?, json).await,
        AdminCmd::Key { command } => keys(command).await,
        AdminCmd::Audit { limit, conn } => {
            let list: AuditList = admin(conn, Method::GET, &format!("/admin/v1/audit?limit={limit}"), NO_BODY).await?;
            println!("{:<20}  {:<28}  WHAT", "AT (UTC)", "ACTOR");
            for e in &list.entries {
                println!("{:<20}  {:<28}  {}", e.at, e.actor, e.what);
            }
            Ok(())
        }
        AdminCmd::Backup { file, conn } => {
            let key = default_key(conn.key)?;
            let bytes =
                call_bytes(&conn.url, key, Method::GET, "/admin/v1/backup", None, Duration::from_secs(300)).await?;
            let (header, _) = nave_consensus::backup::decode(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
            nave_consensus::files::write_private(&file, &bytes)
                .with_context(|| format!("writing {}", file.display()))?;
            println!(
                "backed up cluster {:?} at log index {}: {} keys, {} spokes, {} bytes of state, to {} (mode 0600: it holds key digests and conversations)",
                header.cluster,
                header.log_index,
                header.keys,
                header.spokes,
                header.bytes,
                file.display()
            );
            Ok(())
        }
        AdminCmd::Restore { file, conn } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let (header, _) =
                nave_consensus::backup::decode(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let key = default_key(conn.key)?;
            let body = Some(("application/octet-stream", bytes));
            call_bytes(&conn.url, key, Method::POST, "/admin/v1/restore", body, Duration::from_secs(600)).await?;
            println!(
                "restored the state of cluster {:?} (log index {}): {} keys, {} spokes",
                header.cluster, header.log_index, header.keys, header.spokes
            );
            Ok(())
        }
        AdminCmd::Cert { command: CertCmd::Rotate { node, conn } } => {
            let body = serde_json::json!({ "node": node });
            let answer: serde_json::Value = admin(conn, Method::POST, "/admin/v1/certs/rotate", Some(&body)).await?;
            let rows = |k: &str| answer[k].as_array().cloned().unwrap_or_default();
            for r in rows("rotated") {
                println!(
                    "{:<16}  renewed, valid until {}",
                    r["node"].as_str().unwrap_or("?"),
                    r["expires"].as_str().unwrap_or("?")
                );
            }
            let failed = rows("failed");
            for f in &failed {
                println!(
                    "{:<16}  NOT renewed: {}",
                    f["node"].as_str().unwrap_or("?"),
                    f["error"].as_str().unwrap_or("?")
                );
            }
            anyhow::ensure!(failed.is_empty(), "{} certificate(s) not renewed", failed.len());
            Ok(())
        }
        AdminCmd::Usage { key, days, conn } => {
            let mut path = format!("/admin/v1/usage?limit={days}");
            if let Some(k) = &key {
                path.push_str(&format!("&key={}", urlencode(k)));
            }
            let list: UsageList = admin(conn, Method::GET, &path, NO_BODY).await?;
            println!(
                "{:<10}  {:<20}  {:<20}  {:>8}  {:>10}  {:>10}  {:>10}",
                "DAY", "KEY", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL"
            );
            for u in &list.usage {
                println!(
                    "{:<10}  {:<20}  {:<20}  {:>8}  {:>10}  {:>10}  {:>10}",
                    u.day, u.key, u.model, u.requests, u.prompt_tokens, u.completion_tokens, u.total_tokens
                );
            }
            Ok(())
        }
        AdminCmd::Token { command: TokenCmd::Create { ttl, uses, conn } } => {
            let ttl_s = crate::cli::parse_duration_s(&ttl)?;
            let t: CreatedToken =
                admin(conn, Method::POST, "/admin/v1/tokens", Some(&NewToken { ttl_s, uses })).await?;
            println!("join token for {uses} spoke(s), valid {ttl}; on the new machine:");
            println!("  {}", t.join);
            println!("it is shown only now:");
            println!("{}", t.token);
            Ok(())
        }
        AdminCmd::Hub { command: HubCmd::Add { id, quic, conn } } => {
            let quic = quic.map(|q| q.parse()).transpose().context("--quic: not an IP:PORT address")?;
            let h: AddedHub =
                admin(conn, Method::POST, "/admin/v1/hubs", Some(&NewHub { id: id.clone(), quic })).await?;
            println!("{id} votes now (Raft node {}, QUIC {})", h.raft_id, h.quic);
            Ok(())
        }
        AdminCmd::Hub { command: HubCmd::Remove { id, conn } } => {
            let _: Ignored = admin(conn, Method::DELETE, &format!("/admin/v1/hubs/{id}"), NO_BODY).await?;
            println!("{id} no longer votes or receives the state: stop its process now");
            Ok(())
        }
        AdminCmd::Spoke { command: SpokeCmd::Remove { id, conn } } => {
            let _: Ignored = admin(conn, Method::DELETE, &format!("/admin/v1/spokes/{id}"), NO_BODY).await?;
            println!("{id} removed: the hubs no longer send it requests");
            Ok(())
        }
        AdminCmd::Spoke { command: SpokeCmd::Drain { id, undo, conn } } => {
            let body = nave_hub::api::types::DrainRequest { undo };
            let d: Drained = admin(conn, Method::POST, &format!("/admin/v1/spokes/{id}/drain"), Some(&body)).await?;
            if undo {
                println!("{id} takes requests again");
            } else {
                println!(
                    "{id} is draining ({} requests in flight); `nave admin status` shows it drained when they finish",
                    d.in_flight
                );
            }
            Ok(())
        }
    }
}

/// `null` for a figure the hub does not have (as the JSON shows it).
fn or_null(v: Option<u64>) -> String {
    v.map_or_else(|| "null".into(), |n| n.to_string())
}

async fn status(url: String, key: String, json: bool) -> anyhow::Result<()> {
    if json {
        // Printed as the hub sent it, fields this client does not know included.
        let v: serde_json::Value =
            call(&url, key, Method::GET, "/admin/v1/status?lag=leader", NO_BODY, Duration::from_secs(10)).await?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let s: ClusterStatus =
        call(&url, key, Method::GET, "/admin/v1/status?lag=leader", NO_BODY, Duration::from_secs(10)).await?;
    println!(
        "HUBS (leader {}, term {}, answered by {} at applied index {})",
        s.leader.as_deref().unwrap_or("none"),
        s.term,
        s.hub,
        or_null(s.applied_index)
    );
    println!("  {:<6} {:<9} {:>6} {:<22} QUIC", "ID", "ROLE", "LAG", "HTTP");
    for h in &s.hubs {
        let lag = h.lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into());
        println!("  {:<6} {:<9} {:>6} {:<22} {}", h.id, h.role, lag, h.http.as_deref().unwrap_or(""), h.quic);
    }
    println!("SPOKES");
    println!(
        "  {:<6} {:<9} {:<10} {:>5} {:>7} {:>8} {:>11} {:>19} {:>19}  MODELS",
        "ID", "STATE", "CIRCUIT", "QUEUE", "RUNNING", "TOK/S", "KV FREE", "SERVING (MiB)", "TRAINING (MiB)"
    );
    for p in &s.spokes {
        let mib = |b: u64| b / (1 << 20);
        println!(
            "  {:<6} {:<9} {:<10} {:>5} {:>7} {:>8.1} {:>5}/{:<5} {:>8}/{:<10} {:>8}/{:<10}  {}",
            p.id,
            p.state,
            p.circuit,
            p.queue,
            p.running,
            p.tokens_per_s,
            p.kv_blocks_free,
            p.kv_blocks_total,
            mib(p.serving_used),
            mib(p.serving_total),
            mib(p.training_used),
            mib(p.training_total),
            p.models.join(",")
        );
    }
    println!("MODELS");
    for m in &s.models {
        let routing = serde_json::to_value(m.routing)?;
        println!("  {:<14} routing {:<17} on {}", m.model, routing.as_str().unwrap_or("?"), m.spokes.join(", "));
    }
    Ok(())
}

async fn keys(cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::Create { name, rpm, tpm, daily_tokens, max_concurrent, conn } => {
            let body = NewKey { name: name.clone(), rpm, tpm, daily_tokens, max_concurrent };
            let k: CreatedKey = admin(conn, Method::POST, "/admin/v1/keys", Some(&body)).await?;
            println!("created key {name} (limits: {}); it is shown only now:", serde_json::to_string(&k.limits)?);
            println!("{}", k.key);
        }
        KeyCmd::List { conn } => {
            let list: KeyList = admin(conn, Method::GET, "/admin/v1/keys", NO_BODY).await?;
            println!(
                "{:<20} {:<8} {:>8} {:>10} {:>12} {:>12} {:>12}",
                "NAME", "REVOKED", "RPM", "TPM", "DAILY", "USED TODAY", "TOTAL"
            );
            let lim = |x: Option<u64>| x.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
            for k in &list.keys {
                println!(
                    "{:<20} {:<8} {:>8} {:>10} {:>12} {:>12} {:>12}",
                    k.name,
                    k.revoked,
                    lim(k.limits.rpm.map(u64::from)),
                    lim(k.limits.tpm),
                    lim(k.limits.daily_tokens),
                    k.tokens_today,
                    k.total_tokens
                );
            }
        }
        KeyCmd::Limits { name, rpm, tpm, daily_tokens, max_concurrent, conn } => {
            let body = serde_json::json!({"rpm": rpm, "tpm": tpm, "daily_tokens": daily_tokens, "max_concurrent": max_concurrent});
            let k: KeyView = admin(conn, Method::PUT, &format!("/admin/v1/keys/{name}/limits"), Some(&body)).await?;
            let show = |v: Option<u64>| v.map_or_else(|| "none".to_string(), |n| n.to_string());
            println!(
                "{name}: rpm {}, tpm {}, daily tokens {}, at once {} (used today {})",
                show(k.limits.rpm.map(u64::from)),
                show(k.limits.tpm),
                show(k.limits.daily_tokens),
                show(k.limits.max_concurrent.map(u64::from)),
                k.tokens_today
            );
        }
        KeyCmd::Revoke { name, conn } => {
            let _: Ignored = admin(conn, Method::DELETE, &format!("/admin/v1/keys/{name}"), NO_BODY).await?;
            println!("revoked {name}");
        }
    }
    Ok(())
}

fn print_jobs(jobs: &[JobStatus]) {
    println!(
        "{:<16} {:<14} {:<6} {:<10} {:>11} {:>8} {:>9} {:>9} {:>9}",
        "JOB", "MODEL", "SPOKE", "STATE", "STEP", "LOSS", "TOK/S", "RESERVED", "PEAK"
    );
    for j in jobs {
        let step = format!("{}/{}", j.step, j.steps);
        println!(
            "{:<16} {:<14} {:<6} {:<10} {:>11} {:>8.4} {:>9.0} {:>6} MB {:>6} MB",
            j.name,
            j.model,
            j.spoke,
            j.state,
            step,
            j.loss,
            j.tokens_per_s,
            j.memory_bytes / 1_000_000,
            j.peak_bytes / 1_000_000
        );
        if let Some(e) = &j.error {
            println!("  error: {e}");
        }
    }
}

pub async fn train(command: TrainCmd) -> anyhow::Result<()> {
    match command {
        TrainCmd::Submit { model, data, name, spoke, rank, steps, lr, mlp, conn } => {
            let text = std::fs::read_to_string(&data).with_context(|| format!("reading {}", data.display()))?;
            let body = TrainSubmit {
                name: name.clone(),
                model: model.clone(),
                data: text,
                spoke,
                rank: Some(rank),
                alpha: None,
                steps: Some(steps),
                lr: Some(lr),
                targets: Some(if mlp { "all" } else { "attention" }.into()),
                batch: None,
                max_tokens: None,
                seed: None,
            };
            let a: JobAnswer = admin(conn, Method::POST, "/admin/v1/train", Some(&body)).await?;
            print_jobs(a.job.as_slice());
            println!("when it is done, ask for model {model}:{name}; follow it with `nave train status`");
        }
        TrainCmd::Status { conn } => {
            let list: JobList = admin(conn, Method::GET, "/admin/v1/train", NO_BODY).await?;
            print_jobs(&list.jobs);
        }
        TrainCmd::Cancel { name, conn } => {
            let _: Ignored = admin(conn, Method::DELETE, &format!("/admin/v1/train/{name}"), NO_BODY).await?;
            println!("{name} cancelled");
        }
    }
    Ok(())
}

/// `nave chat`: streams the answer to stdout as it comes.
pub async fn chat(
    url: String,
    model: String,
    key: String,
    max_tokens: Option<usize>,
    prompt: String,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    use std::io::Write;
    let message = |role: &str, text: String| InMessage {
        role: role.into(),
        content: Some(Content::Text(text)),
        tool_calls: None,
        tool_call_id: None,
    };
    let body = ChatRequest {
        model,
        messages: vec![message("system", "You are a helpful assistant.".into()), message("user", prompt)],
        stream: true,
        stream_options: None,
        logprobs: None,
        top_logprobs: None,
        tools: None,
        tool_choice: None,
        response_format: None,
        sampling: Sampling { max_tokens, ..Default::default() },
        unsupported: Default::default(),
    };
    let resp = http_client(&url)?
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    if !resp.status().is_success() {
        let code = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        anyhow::bail!("{code}: {}", error_message(&bytes).as_deref().unwrap_or("no detail"));
    }
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(i) = buf.find("\n\n") {
            let event: String = buf.drain(..i + 2).collect();
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data: ") else { continue };
                if data == "[DONE]" {
                    println!();
                    return Ok(());
                }
                match serde_json::from_str::<ChatStreamEvent>(data)? {
                    ChatStreamEvent::Error(e) => anyhow::bail!("{}", e.error.message),
                    ChatStreamEvent::Chunk(c) => {
                        if let Some(t) = c.choices.first().and_then(|c| c.delta.content.as_deref()) {
                            print!("{t}");
                            out.flush()?;
                        }
                    }
                }
            }
        }
    }
    println!();
    Ok(())
}

/// Key names are letters, digits, '-', '_' and '.'; anything else is percent-encoded.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Says when a joined spoke serves (its HTTP port answers) and, after a join, when its
/// replica of the state has applied the log as far as the hub had when it registered the
/// spoke. Two minutes at most for each; it only watches, the spoke goes on either way.
pub async fn announce_joined(spoke: nave_consensus::SpokeConfig, dir: std::path::PathBuf, caught_up_at: Option<u64>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build();
    let Ok(http) = http else { return };
    let base = format!("http://{}", spoke.http);
    const WATCH: Duration = Duration::from_secs(120);
    let deadline = tokio::time::Instant::now() + WATCH;
    loop {
        if http.get(format!("{base}/health")).send().await.is_ok_and(|r| r.status().is_success()) {
            eprintln!(
                "join: serving as spoke {} (QUIC {}, HTTP {}; data in {})",
                spoke.id,
                spoke.quic,
                spoke.http,
                dir.display()
            );
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!("join: spoke {} does not answer on {} after 120 s; see its log", spoke.id, spoke.http);
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let Some(index) = caught_up_at else { return };
    let deadline = tokio::time::Instant::now() + WATCH;
    loop {
        let applied =
            async { http.get(format!("{base}/cluster")).send().await.ok()?.json::<serde_json::Value>().await.ok() };
        if let Some(v) = applied.await {
            if v["applied_index"].as_u64().is_some_and(|a| a >= index) {
                eprintln!("join: replica caught up: this spoke holds the cluster's state as of log index {index}");
                return;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!("join: the replica has not reached log index {index} after 120 s; it goes on catching up");
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
