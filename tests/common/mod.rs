//! A cluster of real `nave` processes for end-to-end tests: a config with free loopback
//! ports in a temporary directory, `nave up` as a child, stopped with SIGTERM on drop.
#![allow(dead_code)]

pub mod browser;
pub mod mock_spoke;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port free now for TCP and UDP, never one this test process handed out
/// before: the kernel may give a just-released port again, and two nodes of one config
/// (or two tests running at once) must not get the same one.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = t.local_addr().expect("addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() && GIVEN.lock().expect("ports").insert(port) {
            return port;
        }
    }
}

pub struct Cluster {
    pub config: PathBuf,
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub key: String,
    pub hubs: Vec<String>,
    /// The hubs' QUIC addresses (IP:port), in the same order.
    pub hub_quic: Vec<String>,
    pub spokes: Vec<String>,
}

pub struct Layout<'a> {
    pub hubs: usize,
    pub spokes: usize,
    pub models: &'a [&'a str],
    pub extra: &'a str,
}

impl Cluster {
    /// Starts `nave up` on a generated config and waits until it says it is up.
    pub fn start(layout: Layout<'_>) -> Cluster {
        Self::start_in(tempfile::tempdir().expect("temp dir"), layout)
    }

    /// Every spoke serving the tiny model (`tiny`), written into the cluster's directory.
    pub fn start_tiny(hubs: usize, spokes: usize, extra: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let model = tiny_model(dir.path());
        Self::start_in(dir, Layout { hubs, spokes, models: &[model.to_str().expect("utf-8 path")], extra })
    }

    fn start_in(dir: tempfile::TempDir, layout: Layout<'_>) -> Cluster {
        let mut cfg = format!("[cluster]\ndata_dir = \"{}\"\n{}\n", dir.path().join("data").display(), layout.extra);
        let (mut hubs, mut hub_quic) = (Vec::new(), Vec::new());
        for i in 0..layout.hubs {
            let (h, q) = (free_port(), free_port());
            cfg += &format!("[[hub]]\nid = \"h{}\"\nhttp = \"127.0.0.1:{h}\"\nquic = \"127.0.0.1:{q}\"\n", i + 1);
            hubs.push(format!("http://127.0.0.1:{h}"));
            hub_quic.push(format!("127.0.0.1:{q}"));
        }
        let models = layout.models.iter().map(|m| format!("\"{m}\"")).collect::<Vec<_>>().join(", ");
        let mut spokes = Vec::new();
        for i in 0..layout.spokes {
            let (h, q) = (free_port(), free_port());
            cfg += &format!("[[spoke]]\nid = \"s{}\"\nhttp = \"127.0.0.1:{h}\"\nquic = \"127.0.0.1:{q}\"\nmodels = [{models}]\nkv_pool = \"64MiB\"\nthreads = 1\n", i + 1);
            spokes.push(format!("http://127.0.0.1:{h}"));
        }
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, cfg).expect("write config");
        let child = launch(&config, None);
        let key = std::fs::read_to_string(dir.path().join("data/admin.key")).expect("admin key").trim().to_string();
        Cluster { config, dir, child: Some(child), key, hubs, hub_quic, spokes }
    }

    /// Stops the cluster and starts it again on the same config and data.
    pub fn restart(&mut self) {
        assert!(self.stop(), "clean stop");
        self.child = Some(launch(&self.config, None));
    }
}

/// Runs `nave up` (on the nodes in `only`, or all) and waits until it says it is up.
pub fn launch(config: &Path, only: Option<&str>) -> Child {
    {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nave"))
            // Fine-tuning at normal priority: a loaded test machine must not starve it.
            .env("NAVE_TRAINING_NICE", "0")
            .arg("up")
            .args(only.map(|o| format!("--only={o}")))
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nave up starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("[nave up] {line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if line.starts_with("Nave is up") => break,
                Ok(_) => {}
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("nave up exited early: {status}");
                    }
                    assert!(Instant::now() < deadline, "nave up was not ready in time");
                }
            }
        }
        child
    }
}

impl Cluster {
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn pid(&self, node: &str) -> i32 {
        std::fs::read_to_string(self.data().join(node).join("pid")).expect("pid file").trim().parse().expect("pid")
    }

    pub fn kill(&self, node: &str, sig: i32) {
        // SAFETY: kill(2) on a pid read from the node's own pid file.
        unsafe {
            libc::kill(self.pid(node), sig);
        }
    }

    /// Stops the cluster with SIGTERM and returns whether `nave up` exited cleanly.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return true };
        // SAFETY: our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        false
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn tiny_model(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.gguf");
    nave_inference::tiny::write_tiny_model(&path, nave_inference::tiny::TinyArch::Llama, 11).expect("tiny model");
    path
}

/// A process killed (SIGKILL) and reaped when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `check` every 100 ms until it gives `Some`, for at most `within`; panics with
/// `what` and the last state otherwise.
pub fn wait_until<T, S: std::fmt::Debug>(within: Duration, what: &str, mut check: impl FnMut() -> Result<T, S>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(v) => return v,
            Err(state) if Instant::now() >= deadline => panic!("{what}: still {state:?} after {within:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
