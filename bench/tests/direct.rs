//! `nave bench --url spoke:ID`: the load generator calls a spoke directly, as a hub does,
//! and only with the cluster's own CA.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nave_bench::load::{run, LoadArgs, Report};

/// Kills the spoke when the test ends, however it ends.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn write_config(dir: &Path, data: &Path, spoke_quic: u16) -> std::path::PathBuf {
    let path = dir.join("cluster.toml");
    let toml = format!(
        "[cluster]\ndata_dir = {data:?}\n[[hub]]\nid = \"h1\"\nhttp = \"127.0.0.1:{}\"\nquic = \"127.0.0.1:{}\"\n\
         [[spoke]]\nid = \"s1\"\nhttp = \"127.0.0.1:{}\"\nquic = \"127.0.0.1:{spoke_quic}\"\nmodels = [\"smollm2-135m\"]\n",
        free_port(),
        free_port(),
        free_port()
    );
    std::fs::write(&path, toml).expect("write config");
    path
}

fn args(config: &Path, requests: usize) -> LoadArgs {
    LoadArgs {
        url: "spoke:s1".into(),
        model: "smollm2-135m".into(),
        key: None,
        concurrency: Some(4),
        rate: None,
        requests,
        prompt_len: 8,
        max_tokens: 1,
        seed: 7,
        prompts: None,
        timeout: Duration::from_secs(10),
        config: config.to_path_buf(),
    }
}

#[tokio::test]
async fn a_spoke_is_called_directly_with_the_cluster_ca_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = write_config(dir.path(), &dir.path().join("data"), port);
    let _spoke = Spawned(
        Command::new(env!("CARGO_BIN_EXE_instant-spoke"))
            .args(["--config", config.to_str().expect("utf-8 path"), "--id", "s1"])
            .spawn()
            .expect("start instant-spoke"),
    );

    // The spoke makes the cluster CA as it starts; retry until it answers (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    let report: Report = loop {
        match run(args(&config, 40), None).await {
            Ok(mut r) => break r.remove(0),
            Err(e) if Instant::now() < deadline => {
                eprintln!("spoke not up yet: {e:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the spoke never answered: {e:#}"),
        }
    };
    assert_eq!(report.requests, 40);
    assert_eq!(report.succeeded, 40, "errors: {:?}", report.errors);
    assert!(report.errors.is_empty());
    assert!(report.output_tokens_per_s > 0.0);
    assert!(report.ttft.p50_ms > 0.0);

    // Another cluster's CA: the spoke refuses the connection, and the bench says so.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).expect("mkdir");
    let foreign = write_config(&other, &other.join("data"), port);
    let cfg = nave_consensus::ClusterConfig::load(&foreign).expect("config");
    nave_consensus::tls::ClusterCa::load_or_create(&cfg.ca_dir()).expect("foreign CA");
    let err = run(args(&foreign, 4), None).await.expect_err("a foreign CA is refused");
    assert!(format!("{err:#}").contains("connecting to spoke s1"), "{err:#}");

    // No CA at all: a clear error, nothing created.
    let bare = dir.path().join("bare");
    std::fs::create_dir_all(&bare).expect("mkdir");
    let bare_config = write_config(&bare, &bare.join("data"), port);
    let err = run(args(&bare_config, 1), None).await.expect_err("no CA");
    assert!(format!("{err:#}").contains("cluster CA"), "{err:#}");
    assert!(!bare.join("data").exists(), "calling a spoke must not create a CA");
}
