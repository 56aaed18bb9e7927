//! The chaos suite: the real `nave` binaries (3 hubs, 2 spokes on a tiny model, started
//! by `nave up`, which restarts what dies) under a mixed load while faults drawn from a
//! seeded schedule hit them: SIGKILL of the leader hub, SIGKILL of a follower, SIGSTOP of
//! a hub for 5 s, SIGKILL of a spoke. It records every acknowledged write and every read
//! and checks, at the end:
//! - no acknowledged write lost (every key whose creation or revocation was acknowledged
//!   reads so on every hub);
//! - reads linearizable per key (each API key is a register Absent -> Active -> Revoked;
//!   histories checked with todc-utils' WGL checker);
//! - no budget exceeded (keys with a daily budget, spent by concurrent clients on all hubs);
//! - every non-streamed request sent to a hub that was not faulted meanwhile succeeded;
//! - no stream left hanging (each ends with `[DONE]`, an error event included).
//!
//! With partitions (a hub's QUIC port cut off for 5 s, the leader's or any) and packet
//! loss (5% for 10 s) as well when run inside a network namespace of its own.
//!
//! It prints a summary with the seed and failover times. Run it with `scripts/chaos
//! [SECONDS] [SEED] [FAULT_EVERY]`; `cargo test` runs a short one (`short_chaos_run`).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{wait_until, Cluster};
use nave_consensus::rng::XorShift;
use serde_json::{json, Value};
use todc_utils::linearizability::history::{Action, History};
use todc_utils::linearizability::WGLChecker;
use todc_utils::specifications::Specification;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum KeyState {
    Absent,
    Active,
    Revoked,
}

#[derive(Clone, Debug)]
enum KeyOp {
    Create,
    Revoke,
    Read(Option<KeyState>),
}

/// An API key as a register: created once, revoked once, read any time.
struct KeySpec;

impl Specification for KeySpec {
    type State = KeyState;
    type Operation = KeyOp;

    fn init() -> KeyState {
        KeyState::Absent
    }

    fn apply(op: &KeyOp, s: &KeyState) -> (bool, KeyState) {
        match op {
            KeyOp::Create => (*s == KeyState::Absent, KeyState::Active),
            KeyOp::Revoke => (*s == KeyState::Active, KeyState::Revoked),
            KeyOp::Read(Some(v)) => (v == s, *s),
            KeyOp::Read(None) => (false, *s),
        }
    }
}

/// Which hubs clients may use now, and when each hub was faulted (killed or stopped,
/// until it answered `/ready` again).
struct Hubs {
    urls: Vec<String>,
    up: Mutex<Vec<bool>>,
    faults: Mutex<Vec<(usize, Instant, Option<Instant>)>>,
}

impl Hubs {
    fn pick(&self, rng: &mut XorShift) -> usize {
        let up = self.up.lock().expect("lock").clone();
        let live: Vec<usize> = (0..up.len()).filter(|&i| up[i]).collect();
        if live.is_empty() {
            rng.index(up.len())
        } else {
            live[rng.index(live.len())]
        }
    }

    fn down(&self, hub: usize) {
        self.up.lock().expect("lock")[hub] = false;
        self.faults.lock().expect("lock").push((hub, Instant::now(), None));
    }

    fn back(&self, hub: usize) {
        for f in self.faults.lock().expect("lock").iter_mut().filter(|f| f.0 == hub && f.2.is_none()) {
            f.2 = Some(Instant::now());
        }
        self.up.lock().expect("lock")[hub] = true;
    }

    /// Whether `hub` was faulted at any moment of [from, to].
    fn faulted(&self, hub: usize, from: Instant, to: Instant) -> bool {
        self.faults
            .lock()
            .expect("lock")
            .iter()
            .any(|&(h, start, end)| h == hub && start <= to && end.is_none_or(|e| e >= from))
    }
}

/// One register operation as it happened: its key, process, and which side.
struct Event {
    key: String,
    process: usize,
    action: Action<KeyOp>,
}

/// A non-streamed prompt: (hub, start, end, succeeded, what went wrong).
type Prompt = (usize, Instant, Instant, bool, String);

struct Shared {
    hubs: Hubs,
    admin: String,
    stop: AtomicBool,
    events: Mutex<Vec<Event>>,
    /// Keys being created, revoked or read now (reads pick among them).
    in_play: Mutex<Vec<String>>,
    /// Keys whose outcome stayed unknown (gave up retrying): left out of the checks.
    unknown: Mutex<Vec<String>>,
    /// Acknowledged creations and revocations, by key.
    acked: Mutex<BTreeMap<String, KeyState>>,
    acked_writes: AtomicU64,
    reads: AtomicU64,
    prompts: Mutex<Vec<Prompt>>,
    streams_ok: AtomicU64,
    streams_errored: AtomicU64,
    streams_hanging: AtomicU64,
    budget_violations: Mutex<Vec<String>>,
    budget_keys: AtomicU64,
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(8)).build().expect("client")
}

fn record(s: &Shared, key: &str, process: usize, action: Action<KeyOp>) {
    s.events.lock().expect("lock").push(Event { key: key.to_string(), process, action });
}

/// Retries an admin write on live hubs until a definite answer (one of `done`), for at
/// most 30 s; `None` if it stayed unknown.
fn definite(
    s: &Shared,
    rng: &mut XorShift,
    http: &reqwest::blocking::Client,
    send: impl Fn(&reqwest::blocking::Client, &str) -> reqwest::Result<reqwest::blocking::Response>,
    done: &[u16],
) -> Option<u16> {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let hub = s.hubs.pick(rng);
        if let Ok(r) = send(http, &s.hubs.urls[hub]) {
            if done.contains(&r.status().as_u16()) {
                return Some(r.status().as_u16());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Creates keys and revokes them, one at a time, recording each as a register write.
fn writer(s: &Shared, w: usize, seed: u64) {
    let (mut rng, http) = (XorShift::new(seed), client());
    let mut i = 0;
    while !s.stop.load(Ordering::Relaxed) {
        let name = format!("chaos-{w}-{i}");
        i += 1;
        s.in_play.lock().expect("lock").push(name.clone());
        record(s, &name, 0, Action::Call(KeyOp::Create));
        let created = definite(
            s,
            &mut rng,
            &http,
            |h, hub| h.post(format!("{hub}/admin/v1/keys")).bearer_auth(&s.admin).json(&json!({"name": name})).send(),
            &[201, 409],
        );
        if created.is_none() {
            s.unknown.lock().expect("lock").push(name.clone());
            s.in_play.lock().expect("lock").retain(|k| *k != name);
            continue;
        }
        record(s, &name, 0, Action::Response(KeyOp::Create));
        s.acked.lock().expect("lock").insert(name.clone(), KeyState::Active);
        s.acked_writes.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(rng.below(200)));
        record(s, &name, 0, Action::Call(KeyOp::Revoke));
        let revoked = definite(
            s,
            &mut rng,
            &http,
            |h, hub| h.delete(format!("{hub}/admin/v1/keys/{name}")).bearer_auth(&s.admin).send(),
            &[200, 404],
        );
        match revoked {
            Some(200) => {
                record(s, &name, 0, Action::Response(KeyOp::Revoke));
                s.acked.lock().expect("lock").insert(name.clone(), KeyState::Revoked);
                s.acked_writes.fetch_add(1, Ordering::Relaxed);
            }
            Some(_) => {
                // "No such key" after its creation was acknowledged: a lost write. Recorded
                // as a read of Absent, which the checker will refuse.
                record(s, &name, 0, Action::Response(KeyOp::Read(Some(KeyState::Absent))));
            }
            None => s.unknown.lock().expect("lock").push(name.clone()),
        }
        std::thread::sleep(Duration::from_millis(rng.below(100)));
        s.in_play.lock().expect("lock").retain(|k| *k != name);
    }
}

/// Reads keys in play from any live hub, recording each read.
fn reader(s: &Shared, r: usize, seed: u64) {
    let (mut rng, http) = (XorShift::new(seed), client());
    while !s.stop.load(Ordering::Relaxed) {
        let name = {
            let in_play = s.in_play.lock().expect("lock");
            if in_play.is_empty() {
                None
            } else {
                Some(in_play[rng.index(in_play.len())].clone())
            }
        };
        let Some(name) = name else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let hub = s.hubs.pick(&mut rng);
        record(s, &name, r, Action::Call(KeyOp::Read(None)));
        let got = http.get(format!("{}/admin/v1/keys/{name}", s.hubs.urls[hub])).bearer_auth(&s.admin).send();
        let state = match got {
            Ok(resp) if resp.status() == 404 => Some(KeyState::Absent),
            Ok(resp) if resp.status() == 200 => {
                resp.json::<Value>()
                    .ok()
                    .map(|v| if v["revoked"] == true { KeyState::Revoked } else { KeyState::Active })
            }
            _ => None,
        };
        // No answer: the call stays open and is left out of the history (a read changes
        // nothing).
        if let Some(st) = state {
            record(s, &name, r, Action::Response(KeyOp::Read(Some(st))));
            s.reads.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A chat completion for the tiny model with `key` on hub `url`.
fn chat(
    http: &reqwest::blocking::Client,
    url: &str,
    key: &str,
    max_tokens: u32,
    stream: bool,
) -> reqwest::Result<reqwest::blocking::Response> {
    let body = json!({"model": "tiny", "max_tokens": max_tokens, "stream": stream, "messages": [{"role": "user", "content": "the"}]});
    http.post(format!("{url}/v1/chat/completions")).bearer_auth(key).json(&body).send()
}

/// Non-streamed prompts with a key without limits, on any live hub.
fn prompter(s: &Shared, key: &str, seed: u64) {
    let mut rng = XorShift::new(seed);
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(40)).build().expect("client");
    while !s.stop.load(Ordering::Relaxed) {
        let hub = s.hubs.pick(&mut rng);
        let start = Instant::now();
        let (ok, what) = match chat(&http, &s.hubs.urls[hub], key, 8, false) {
            Ok(resp) if resp.status() == 200 => (true, String::new()),
            Ok(resp) => (false, format!("{} {}", resp.status(), resp.text().unwrap_or_default())),
            Err(e) => (false, e.to_string()),
        };
        s.prompts.lock().expect("lock").push((hub, start, Instant::now(), ok, what));
    }
}

/// Streamed prompts: each stream must end with `[DONE]` (after tokens or an error event).
fn streamer(s: &Shared, key: &str, seed: u64) {
    let mut rng = XorShift::new(seed);
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
    while !s.stop.load(Ordering::Relaxed) {
        let hub = s.hubs.pick(&mut rng);
        let start = Instant::now();
        let Ok(resp) = chat(&http, &s.hubs.urls[hub], key, 16, true) else { continue };
        if resp.status() != 200 {
            continue;
        }
        let mut done = false;
        let mut errored = false;
        let mut broken = false;
        for line in BufReader::new(resp).lines() {
            match line {
                Ok(l) if l == "data: [DONE]" => done = true,
                Ok(l) => errored |= l.contains("\"error\""),
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        let faulted = s.hubs.faulted(hub, start, Instant::now());
        if done {
            let counter = if errored { &s.streams_errored } else { &s.streams_ok };
            counter.fetch_add(1, Ordering::Relaxed);
        } else if broken && !faulted {
            // Cut off without an end, by a hub that stayed up: a hanging or broken stream.
            s.streams_hanging.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Every 20 s, a key with a budget of 120 tokens spent by 4 clients on all hubs at once:
/// the tokens they get never pass it.
fn budgets(s: &Shared, seed: u64) {
    let mut rng = XorShift::new(seed);
    let http = client();
    let mut n = 0;
    while !s.stop.load(Ordering::Relaxed) {
        n += 1;
        let name = format!("budget-{n}");
        let mut secret = None;
        let until = Instant::now() + Duration::from_secs(30);
        while secret.is_none() && Instant::now() < until && !s.stop.load(Ordering::Relaxed) {
            let hub = s.hubs.pick(&mut rng);
            if let Ok(r) = http
                .post(format!("{}/admin/v1/keys", s.hubs.urls[hub]))
                .bearer_auth(&s.admin)
                .json(&json!({"name": name, "daily_tokens": 120}))
                .send()
            {
                match r.status().as_u16() {
                    201 => secret = r.json::<Value>().ok().and_then(|v| v["key"].as_str().map(str::to_string)),
                    409 => break, // made by an attempt whose answer was lost: its secret too
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        let Some(secret) = secret else { continue };
        let served = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for c in 0..4u64 {
                let (secret, served) = (&secret, &served);
                let mut rng = XorShift::new(seed ^ (n * 7 + c));
                scope.spawn(move || {
                    let http =
                        reqwest::blocking::Client::builder().timeout(Duration::from_secs(40)).build().expect("client");
                    let until = Instant::now() + Duration::from_secs(15);
                    while Instant::now() < until {
                        let hub = s.hubs.pick(&mut rng);
                        match chat(&http, &s.hubs.urls[hub], secret, 8, false) {
                            Ok(resp) if resp.status() == 200 => {
                                let v: Value = resp.json().unwrap_or_default();
                                served.fetch_add(v["usage"]["total_tokens"].as_u64().unwrap_or(0), Ordering::Relaxed);
                            }
                            Ok(resp) if resp.status() == 429 => return,
                            _ => std::thread::sleep(Duration::from_millis(20)),
                        }
                    }
                });
            }
        });
        let served = served.load(Ordering::Relaxed);
        s.budget_keys.fetch_add(1, Ordering::Relaxed);
        if served > 120 {
            s.budget_violations
                .lock()
                .expect("lock")
                .push(format!("{name}: {served} tokens served on a budget of 120"));
        }
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until && !s.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillLeader,
    KillFollower,
    StopHub,
    KillSpoke,
    /// The leader, then any hub, cut off from every peer and spoke for 5 s.
    PartitionLeader,
    PartitionHub,
    /// 5% of all QUIC packets dropped for 10 s.
    PacketLoss,
}

/// Runs iptables (only inside the network namespace `scripts/chaos` makes).
fn iptables(args: &[&str]) {
    let status = std::process::Command::new("iptables").args(args).status().expect("iptables runs");
    assert!(status.success(), "iptables {args:?}");
}

/// Drops every UDP packet to or from `port` on loopback while `f` runs.
fn cut_off<T>(port: &str, f: impl FnOnce() -> T) -> T {
    let rules = [
        ["-i", "lo", "-p", "udp", "--dport", port, "-j", "DROP"],
        ["-i", "lo", "-p", "udp", "--sport", port, "-j", "DROP"],
    ];
    for r in &rules {
        iptables(&[&["-I", "INPUT"], &r[..]].concat());
    }
    let out = f();
    for r in &rules {
        iptables(&[&["-D", "INPUT"], &r[..]].concat());
    }
    out
}

fn pid(c: &Cluster, node: &str) -> Option<i32> {
    std::fs::read_to_string(c.data().join(node).join("pid")).ok()?.trim().parse().ok()
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a pid read from one of the cluster's pid files.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn leader(s: &Shared, http: &reqwest::blocking::Client) -> Option<usize> {
    for url in &s.hubs.urls {
        if let Ok(r) =
            http.get(format!("{url}/admin/v1/status")).bearer_auth(&s.admin).timeout(Duration::from_secs(2)).send()
        {
            if let Some(id) = r.json::<Value>().ok().and_then(|v| v["leader"].as_str().map(str::to_string)) {
                return id.strip_prefix('h').and_then(|n| n.parse::<usize>().ok()).map(|n| n - 1);
            }
        }
    }
    None
}

/// Waits until hub `hub` runs again (a new pid when `killed`) and answers `/ready`.
fn wait_back(c: &Cluster, s: &Shared, hub: usize, old_pid: i32, killed: bool) {
    let http = client();
    let id = format!("h{}", hub + 1);
    wait_until(Duration::from_secs(60), &format!("{id} back"), || {
        let new = pid(c, &id).unwrap_or(old_pid);
        let ready = http
            .get(format!("{}/ready", s.hubs.urls[hub]))
            .timeout(Duration::from_secs(1))
            .send()
            .is_ok_and(|r| r.status() == 200);
        if (!killed || new != old_pid) && ready {
            Ok(())
        } else {
            Err(new)
        }
    });
    s.hubs.back(hub);
}

/// Time from the leader's death (or cut-off) to the first write acknowledged through a
/// survivor.
fn failover(s: &Shared, dead: usize, n: usize) -> Duration {
    let killed = Instant::now();
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
    let mut i = 0usize;
    loop {
        let hub = (dead + 1 + i % 2) % 3;
        i += 1;
        let r = http
            .post(format!("{}/admin/v1/keys", s.hubs.urls[hub]))
            .bearer_auth(&s.admin)
            .json(&json!({"name": format!("failover-{n}-{i}")}))
            .send();
        if r.is_ok_and(|r| r.status() == 201) {
            return killed.elapsed();
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "no write acknowledged 30 s after the leader died");
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Report {
    seed: u64,
    seconds: u64,
    faults: Vec<(u64, Fault, String)>,
    /// (when, what) of each leader fault, and the time to the next acknowledged write.
    failovers: Vec<(u64, Fault, Duration)>,
}

fn run_chaos(seconds: u64, seed: u64, every: u64, network_faults: bool) {
    let extra = "request_timeout_ms = 30000\ncircuit_open_ms = 5000\n";
    let c = Cluster::start_tiny(3, 2, extra);
    let http = client();
    let key = http
        .post(format!("{}/admin/v1/keys", c.hubs[0]))
        .bearer_auth(&c.key)
        .json(&json!({"name": "chaos-prompts"}))
        .send()
        .expect("sent")
        .json::<Value>()
        .expect("json")["key"]
        .as_str()
        .expect("a key")
        .to_string();
    let shared = Arc::new(Shared {
        hubs: Hubs { urls: c.hubs.clone(), up: Mutex::new(vec![true; 3]), faults: Mutex::new(Vec::new()) },
        admin: c.key.clone(),
        stop: AtomicBool::new(false),
        events: Mutex::new(Vec::new()),
        in_play: Mutex::new(Vec::new()),
        unknown: Mutex::new(Vec::new()),
        acked: Mutex::new(BTreeMap::new()),
        acked_writes: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        prompts: Mutex::new(Vec::new()),
        streams_ok: AtomicU64::new(0),
        streams_errored: AtomicU64::new(0),
        streams_hanging: AtomicU64::new(0),
        budget_violations: Mutex::new(Vec::new()),
        budget_keys: AtomicU64::new(0),
    });
    let mut report = Report { seed, seconds, faults: Vec::new(), failovers: Vec::new() };
    let started = Instant::now();
    std::thread::scope(|scope| {
        let s = &*shared;
        for w in 0..3 {
            scope.spawn(move || writer(s, w, seed ^ (100 + w as u64)));
        }
        for r in 1..=3 {
            scope.spawn(move || reader(s, r, seed ^ (200 + r as u64)));
        }
        for p in 0..2 {
            let key = key.clone();
            scope.spawn(move || prompter(s, &key, seed ^ (300 + p)));
        }
        {
            let key = key.clone();
            scope.spawn(move || streamer(s, &key, seed ^ 400));
        }
        scope.spawn(move || budgets(s, seed ^ 500));

        // The faults, one every `every` seconds from a seeded schedule.
        let mut rng = XorShift::new(seed);
        let mut n = 0;
        while started.elapsed() + Duration::from_secs(every) < Duration::from_secs(seconds) {
            std::thread::sleep(Duration::from_secs(every));
            n += 1;
            let kinds: &[Fault] = if network_faults {
                &[
                    Fault::KillLeader,
                    Fault::KillFollower,
                    Fault::StopHub,
                    Fault::KillSpoke,
                    Fault::PartitionLeader,
                    Fault::PartitionHub,
                    Fault::PacketLoss,
                ]
            } else {
                &[Fault::KillLeader, Fault::KillFollower, Fault::StopHub, Fault::KillSpoke]
            };
            let fault = kinds[rng.index(kinds.len())];
            let at = started.elapsed().as_secs();
            let leader = leader(s, &http);
            match fault {
                Fault::KillLeader | Fault::KillFollower => {
                    let Some(l) = leader else { continue };
                    let hub = if matches!(fault, Fault::KillLeader) { l } else { (l + 1 + rng.index(2)) % 3 };
                    let id = format!("h{}", hub + 1);
                    let Some(p) = pid(&c, &id) else { continue };
                    s.hubs.down(hub);
                    signal(p, libc::SIGKILL);
                    report.faults.push((at, fault, id));
                    if matches!(fault, Fault::KillLeader) {
                        report.failovers.push((at, fault, failover(s, hub, n)));
                    }
                    wait_back(&c, s, hub, p, true);
                }
                Fault::StopHub => {
                    let hub = rng.index(3);
                    let id = format!("h{}", hub + 1);
                    let Some(p) = pid(&c, &id) else { continue };
                    s.hubs.down(hub);
                    signal(p, libc::SIGSTOP);
                    report.faults.push((at, fault, id));
                    std::thread::sleep(Duration::from_secs(5));
                    signal(p, libc::SIGCONT);
                    wait_back(&c, s, hub, p, false);
                }
                Fault::KillSpoke => {
                    let id = format!("s{}", 1 + rng.index(2));
                    let Some(p) = pid(&c, &id) else { continue };
                    signal(p, libc::SIGKILL);
                    report.faults.push((at, fault, id));
                }
                Fault::PartitionLeader | Fault::PartitionHub => {
                    let hub = match (fault, leader) {
                        (Fault::PartitionLeader, Some(l)) => l,
                        _ => rng.index(3),
                    };
                    let port = c.hub_quic[hub].rsplit(':').next().expect("port").to_string();
                    let p = pid(&c, &format!("h{}", hub + 1)).unwrap_or(0);
                    s.hubs.down(hub);
                    report.faults.push((at, fault, format!("h{}", hub + 1)));
                    let cut = Instant::now();
                    cut_off(&port, || {
                        if leader == Some(hub) {
                            report.failovers.push((at, fault, failover(s, hub, n)));
                        }
                        std::thread::sleep(Duration::from_secs(5).saturating_sub(cut.elapsed()));
                    });
                    wait_back(&c, s, hub, p, false);
                }
                Fault::PacketLoss => {
                    let rule = [
                        "-i",
                        "lo",
                        "-p",
                        "udp",
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        "0.05",
                        "-j",
                        "DROP",
                    ];
                    iptables(&[&["-I", "INPUT"], &rule[..]].concat());
                    report.faults.push((at, fault, "all QUIC".into()));
                    std::thread::sleep(Duration::from_secs(10));
                    iptables(&[&["-D", "INPUT"], &rule[..]].concat());
                }
            }
        }
        while started.elapsed() < Duration::from_secs(seconds) {
            std::thread::sleep(Duration::from_millis(100));
        }
        s.stop.store(true, Ordering::Relaxed);
    });
    check(&shared, &report);
}

fn check(s: &Shared, report: &Report) {
    // No acknowledged write lost: every hub reads every acknowledged key as acknowledged
    // (one linearizable read of all keys per hub).
    let acked = s.acked.lock().expect("lock").clone();
    let mut lost = Vec::new();
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
    for url in &s.hubs.urls {
        let keys: Value = wait_until(Duration::from_secs(60), &format!("{url} listing the keys"), || {
            match http.get(format!("{url}/admin/v1/keys")).bearer_auth(&s.admin).send() {
                Ok(r) if r.status() == 200 => r.json::<Value>().map_err(|e| e.to_string()),
                other => Err(format!("{:?}", other.map(|r| r.status()))),
            }
        });
        let state: HashMap<&str, KeyState> = keys["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| {
                Some((k["name"].as_str()?, if k["revoked"] == true { KeyState::Revoked } else { KeyState::Active }))
            })
            .collect();
        for (name, want) in &acked {
            let got = state.get(name.as_str()).copied().unwrap_or(KeyState::Absent);
            // A key acknowledged as created may have been revoked since (its revocation's
            // answer lost); nothing acknowledged may be missing or undone.
            let fine = match want {
                KeyState::Active => got != KeyState::Absent,
                other => got == *other,
            };
            if !fine {
                lost.push(format!("{name} on {url}: acknowledged {want:?}, reads {got:?}"));
            }
        }
    }

    // Reads linearizable, key by key.
    let unknown = s.unknown.lock().expect("lock").clone();
    let mut per_key: HashMap<String, Vec<(usize, Action<KeyOp>)>> = HashMap::new();
    for e in s.events.lock().expect("lock").iter() {
        per_key.entry(e.key.clone()).or_default().push((e.process, e.action.clone()));
    }
    let mut violations = Vec::new();
    let mut checked_ops = 0;
    for (key, actions) in per_key {
        if unknown.contains(&key) {
            continue;
        }
        // Drop calls still open at the end (the run stopped mid-operation).
        let mut open: HashMap<usize, usize> = HashMap::new();
        let mut complete = Vec::new();
        for (i, (p, a)) in actions.iter().enumerate() {
            match a {
                Action::Call(_) => {
                    open.insert(*p, i);
                }
                Action::Response(_) => {
                    if let Some(c) = open.remove(p) {
                        complete.push(c);
                        complete.push(i);
                    }
                }
            }
        }
        complete.sort_unstable();
        let history: Vec<(usize, Action<KeyOp>)> = complete.iter().map(|&i| actions[i].clone()).collect();
        if history.is_empty() {
            continue;
        }
        checked_ops += history.len() / 2;
        if !WGLChecker::<KeySpec>::is_linearizable(History::from_actions(history.clone())) {
            violations.push(format!("{key}: {history:?}"));
        }
    }

    let prompts = s.prompts.lock().expect("lock").clone();
    let to_survivors: Vec<_> = prompts.iter().filter(|p| !s.hubs.faulted(p.0, p.1, p.2)).collect();
    let t0 = prompts.iter().map(|p| p.1).min();
    let failed: Vec<String> = to_survivors
        .iter()
        .filter(|p| !p.3)
        .map(|p| {
            format!(
                "h{} at {:.1}-{:.1} s: {}",
                p.0 + 1,
                t0.map_or(0.0, |t| (p.1 - t).as_secs_f64()),
                t0.map_or(0.0, |t| (p.2 - t).as_secs_f64()),
                p.4
            )
        })
        .collect();
    let budget = s.budget_violations.lock().expect("lock").clone();
    let mut failovers: Vec<Duration> = report.failovers.iter().map(|f| f.2).collect();
    failovers.sort();
    let p99 = failovers.get(((failovers.len() as f64 - 1.0) * 0.99).round().max(0.0) as usize).copied();

    println!("== chaos: seed {}, {} s, {} faults", report.seed, report.seconds, report.faults.len());
    for (at, f, node) in &report.faults {
        println!("   {at:>4} s  {f:?} {node}");
    }
    println!("acknowledged writes: {}, lost: {}", s.acked_writes.load(Ordering::Relaxed), lost.len());
    println!("reads: {}; register operations checked: {checked_ops}; linearizability violations: {}; keys left out (outcome unknown): {}", s.reads.load(Ordering::Relaxed), violations.len(), unknown.len());
    println!("budget keys: {}, exceeded: {}", s.budget_keys.load(Ordering::Relaxed), budget.len());
    println!(
        "non-streamed prompts: {} ({} to hubs not faulted meanwhile), failed there: {}",
        prompts.len(),
        to_survivors.len(),
        failed.len()
    );
    println!(
        "streams: {} completed, {} ended with an error event, {} hanging or cut off by a live hub",
        s.streams_ok.load(Ordering::Relaxed),
        s.streams_errored.load(Ordering::Relaxed),
        s.streams_hanging.load(Ordering::Relaxed)
    );
    for (at, f, took) in &report.failovers {
        println!("   failover after {f:?} at {at} s: {} ms", took.as_millis());
    }
    println!(
        "leader failovers (fault -> first acknowledged write), ms: {:?}, p99 {:?}",
        failovers.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
        p99
    );
    assert!(lost.is_empty(), "lost writes (seed {}): {lost:?}", report.seed);
    assert!(violations.is_empty(), "linearizability violations (seed {}): {violations:?}", report.seed);
    assert!(budget.is_empty(), "budgets exceeded (seed {}): {budget:?}", report.seed);
    assert!(failed.is_empty(), "requests to surviving hubs failed (seed {}): {failed:?}", report.seed);
    assert_eq!(s.streams_hanging.load(Ordering::Relaxed), 0, "streams left hanging (seed {})", report.seed);
    assert!(s.acked_writes.load(Ordering::Relaxed) > 0 && checked_ops > 0, "the load ran");
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The long run: `CHAOS_SECONDS` (600), `CHAOS_SEED` (1), a fault every
/// `CHAOS_FAULT_EVERY` seconds (10); partitions and packet loss too with `CHAOS_NET=1`
/// (only inside a network namespace of its own, with iptables: `scripts/chaos` does that).
#[test]
#[ignore]
fn chaos() {
    let net = std::env::var("CHAOS_NET").is_ok_and(|v| v == "1");
    run_chaos(env("CHAOS_SECONDS", 600), env("CHAOS_SEED", 1), env("CHAOS_FAULT_EVERY", 10), net);
}

/// The short run `cargo test` does: 75 s, a kill or a stop every 7 s (seed 7).
#[test]
fn short_chaos_run() {
    run_chaos(75, 7, 7, false);
}
