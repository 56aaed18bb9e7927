//! Adding and removing hubs through the admin API: a hub started with `join = true` (not
//! in the other hubs' cluster.toml) waits until an admin adds it, then votes and serves;
//! removed, it leaves the membership and the cluster goes on.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{free_port, wait_until, Cluster};
use serde_json::{json, Value};

#[test]
fn a_hub_is_added_and_removed_through_the_admin_api() {
    let c = Cluster::start_tiny(3, 1, "");
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
    let (h4_http, h4_quic) = (free_port(), free_port());
    let config = c.dir.path().join("h4.toml");
    let text = std::fs::read_to_string(&c.config).expect("config")
        + &format!(
            "[[hub]]\nid = \"h4\"\nhttp = \"127.0.0.1:{h4_http}\"\nquic = \"127.0.0.1:{h4_quic}\"\njoin = true\n"
        );
    std::fs::write(&config, text).expect("write h4 config");
    let mut h4 = Command::new(env!("CARGO_BIN_EXE_nave"))
        .args(["hub", "--config", config.to_str().expect("utf-8"), "--id", "h4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start h4");
    let h4_url = format!("http://127.0.0.1:{h4_http}");
    let hubs = |url: &str| -> Vec<String> {
        let v: Value = http
            .get(format!("{url}/admin/v1/hubs"))
            .bearer_auth(&c.key)
            .send()
            .and_then(|r| r.json())
            .unwrap_or_default();
        v["hubs"].as_array().into_iter().flatten().filter_map(|h| h["id"].as_str().map(String::from)).collect()
    };

    // Not added yet: it founds nothing and is not ready.
    wait_until(Duration::from_secs(30), "h4 answering", || {
        http.get(format!("{h4_url}/health")).send().map(|_| ()).map_err(|e| e.to_string())
    });
    assert_eq!(http.get(format!("{h4_url}/ready")).send().expect("ready").status(), 503);
    assert!(hubs(&h4_url).is_empty());

    // Bad requests are refused with the reason.
    let r = http
        .post(format!("{}/admin/v1/hubs", c.hubs[1]))
        .bearer_auth(&c.key)
        .json(&json!({"id": "h4"}))
        .send()
        .expect("sent");
    assert_eq!(r.status(), 400, "no address for a hub this hub does not know");
    let r = http.delete(format!("{}/admin/v1/hubs/h9", c.hubs[1])).bearer_auth(&c.key).send().expect("sent");
    assert_eq!(r.status(), 404);

    let r = http
        .post(format!("{}/admin/v1/hubs", c.hubs[1]))
        .bearer_auth(&c.key)
        .json(&json!({"id": "h4", "quic": format!("127.0.0.1:{h4_quic}")}))
        .send()
        .expect("sent");
    assert_eq!(r.status(), 201, "{:?}", r.text());
    assert_eq!(hubs(&c.hubs[0]), ["h1", "h2", "h3", "h4"]);
    wait_until(Duration::from_secs(30), "h4 ready", || match http.get(format!("{h4_url}/ready")).send() {
        Ok(r) if r.status() == 200 => Ok(()),
        other => Err(format!("{:?}", other.map(|r| r.status()))),
    });
    // It serves the replicated state: a key created through h1 is listed through h4.
    let r = http
        .post(format!("{}/admin/v1/keys", c.hubs[0]))
        .bearer_auth(&c.key)
        .json(&json!({"name": "seen-by-h4"}))
        .send()
        .expect("sent");
    assert_eq!(r.status(), 201);
    let keys: Value = http
        .get(format!("{h4_url}/admin/v1/keys"))
        .bearer_auth(&c.key)
        .send()
        .and_then(|r| r.json())
        .expect("keys on h4");
    assert!(keys.to_string().contains("seen-by-h4"), "{keys}");
    let status: Value = http
        .get(format!("{}/admin/v1/status", c.hubs[2]))
        .bearer_auth(&c.key)
        .send()
        .and_then(|r| r.json())
        .expect("status");
    assert_eq!(status["hubs"].as_array().map(Vec::len), Some(4), "{status}");
    let data = c.dir.path().join("data");
    assert!(raft_ping(&data, "h4", &c.hub_quic[0], "h1"), "a member hub's certificate speaks Raft");
    let config = nave_consensus::ClusterConfig::load(&c.config).expect("config");
    let s1_quic = config.spokes[0].quic.to_string();
    assert!(spoke_answers(&data, "h4", &s1_quic, "s1"), "and is served by the spoke");

    let r = http.delete(format!("{}/admin/v1/hubs/h4", c.hubs[2])).bearer_auth(&c.key).send().expect("sent");
    assert_eq!(r.status(), 200, "{:?}", r.text());
    let _ = h4.kill();
    let _ = h4.wait();
    assert_eq!(hubs(&c.hubs[0]), ["h1", "h2", "h3"]);
    // Its certificate opens nothing any more, on any hub (the revocation is replicated).
    for (i, quic) in c.hub_quic.iter().enumerate() {
        let name = format!("h{}", i + 1);
        wait_until(Duration::from_secs(10), "h4 refused", || {
            if raft_ping(&data, "h4", quic, &name) {
                Err("answered")
            } else {
                Ok(())
            }
        });
    }
    // The spoke's inference protocol refuses it too (the spoke's replica has the revocation).
    wait_until(Duration::from_secs(10), "h4 refused by s1", || {
        if spoke_answers(&data, "h4", &s1_quic, "s1") {
            Err("answered")
        } else {
            Ok(())
        }
    });
    assert!(spoke_answers(&data, "h1", &s1_quic, "s1"), "while member hubs are served");
    let r = http
        .post(format!("{}/admin/v1/keys", c.hubs[1]))
        .bearer_auth(&c.key)
        .json(&json!({"name": "after-h4"}))
        .send()
        .expect("sent");
    assert_eq!(r.status(), 201, "the cluster goes on without h4");
}

/// Raft is for hubs: a spoke's certificate (signed by the same CA) cannot open a Raft
/// exchange with a hub or with another spoke's replica; a hub's can.
#[test]
fn only_hubs_speak_raft() {
    let c = Cluster::start_tiny(1, 2, "");
    let data = c.dir.path().join("data");
    let config = nave_consensus::ClusterConfig::load(&c.config).expect("config");
    let spoke_quic = |i: usize| config.spokes[i].quic.to_string();
    let ping = |who: &str, target: String, target_name: &str| raft_ping(&data, who, &target, target_name);
    assert!(ping("h1", spoke_quic(1), "s2"), "a hub reaches a spoke's replica");
    assert!(!ping("s1", c.hub_quic[0].clone(), "h1"), "a spoke's certificate opens no Raft exchange with a hub");
    assert!(!ping("s1", spoke_quic(1), "s2"), "nor with another spoke's replica");
}

/// Node `who` (its identity in `data/<who>`) sends `request` on a new stream of protocol
/// `alpn` to the node named `target_name` at `target`: its one answer, if one came within
/// 5 s.
fn exchange<Q: serde::Serialize, A: serde::de::DeserializeOwned>(
    data: &std::path::Path,
    who: &str,
    (target, target_name): (&str, &str),
    alpn: &[u8],
    request: &Q,
    max_frame: u32,
) -> Option<A> {
    use nave_consensus::frame::{read_frame, write_frame};
    use nave_consensus::tls::{self, NodeIdentity};

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let identity = NodeIdentity::load(&data.join(who), who).expect("identity");
    runtime.block_on(async move {
        let endpoint = tls::client_endpoint().expect("endpoint");
        let exchange = async {
            let conn = endpoint
                .connect_with(identity.client_config(alpn).ok()?, target.parse().ok()?, target_name)
                .ok()?
                .await
                .ok()?;
            let (mut send, mut recv) = conn.open_bi().await.ok()?;
            write_frame(&mut send, request).await.ok()?;
            send.finish().ok()?;
            read_frame::<A, _>(&mut recv, max_frame).await.ok()?
        };
        tokio::time::timeout(Duration::from_secs(5), exchange).await.ok().flatten()
    })
}

/// Whether node `who` gets a Raft `Pong` from the node named `target_name` at `target`.
pub(crate) fn raft_ping(data: &std::path::Path, who: &str, target: &str, target_name: &str) -> bool {
    use nave_consensus::network::{RaftReply, RaftRpc, MAX_RAFT_FRAME};
    let reply =
        exchange(data, who, (target, target_name), nave_consensus::tls::ALPN_RAFT, &RaftRpc::Ping, MAX_RAFT_FRAME);
    matches!(reply, Some(RaftReply::Pong(_)))
}

/// Whether node `who` is answered on the spokes' inference protocol (`nave-spoke/1`, a
/// `Jobs` request) by the spoke named `target_name` at `target`.
pub(crate) fn spoke_answers(data: &std::path::Path, who: &str, target: &str, target_name: &str) -> bool {
    use nave_spoke::protocol::{HubToSpoke, SpokeToHub, MAX_FRAME};
    let reply =
        exchange(data, who, (target, target_name), nave_consensus::tls::ALPN_SPOKE, &HubToSpoke::Jobs, MAX_FRAME);
    matches!(reply, Some(SpokeToHub::Jobs(_)))
}
