//! Node certificates are rotated on request: `POST /admin/v1/certs/rotate` (`nave admin
//! cert rotate [NODE]`) through one hub renews a spoke's certificate (the spoke asks a hub
//! on `nave-renew/1` with its current certificate), another hub's (asked over Raft's
//! connection) or every node's; the new certificates are on disk, presented at the next
//! handshake, accepted by the peers, and bounded to the configured lifetime; the cluster
//! serves throughout.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::Cluster;
use crate::hubs::{raft_ping, spoke_answers};

fn validity(path: &std::path::Path) -> nave_consensus::tls::Validity {
    let pem = std::fs::read_to_string(path).expect("certificate file");
    let der = rustls_pemfile::certs(&mut pem.as_bytes()).next().expect("a certificate").expect("der");
    nave_consensus::tls::validity(&der).expect("validity")
}

#[test]
fn certificates_rotate_on_request_and_peers_accept_the_new_ones() {
    let c = Cluster::start_tiny(2, 1, "cert_lifetime_days = 10\n");
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
    let data = c.data();
    let config = nave_consensus::ClusterConfig::load(&c.config).expect("config");
    let s1_quic = config.spokes[0].quic.to_string();
    let rotate = |body: Value| {
        let r = http
            .post(format!("{}/admin/v1/certs/rotate", c.hubs[0]))
            .bearer_auth(&c.key)
            .json(&body)
            .send()
            .expect("sent");
        let status = r.status().as_u16();
        (status, r.json::<Value>().unwrap_or_default())
    };
    let ten_days = 10 * 86_400;
    let first = validity(&data.join("s1/node.pem"));
    assert!(first.not_after - first.not_before <= ten_days + 3600, "the configured lifetime: {first:?}");
    let s1_cert = std::fs::read_to_string(data.join("s1/node.pem")).expect("s1 cert");
    let h2_cert = std::fs::read_to_string(data.join("h2/node.pem")).expect("h2 cert");

    // A spoke: it renews through a hub, and presents the new certificate to new peers.
    let (status, v) = rotate(json!({"node": "s1"}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rotated"][0]["node"], "s1", "{v}");
    assert_ne!(std::fs::read_to_string(data.join("s1/node.pem")).expect("s1 cert"), s1_cert, "a new certificate");
    let renewed = validity(&data.join("s1/node.pem"));
    assert_eq!(v["rotated"][0]["not_after"], renewed.not_after, "{v}");
    assert!(renewed.not_after - renewed.not_before <= ten_days + 3600, "{renewed:?}");
    assert!(spoke_answers(&data, "h1", &s1_quic, "s1"), "a hub accepts the spoke's new certificate");

    // Another hub, asked through h1.
    let (status, v) = rotate(json!({"node": "h2"}));
    assert_eq!(status, 200, "{v}");
    assert_ne!(std::fs::read_to_string(data.join("h2/node.pem")).expect("h2 cert"), h2_cert);
    assert!(raft_ping(&data, "h2", &c.hub_quic[0], "h1"), "h1 accepts h2's new certificate");
    assert!(raft_ping(&data, "h1", &c.hub_quic[1], "h2"), "h2 presents its new one and accepts h1's");

    // Every node at once; an unknown one is a 404.
    let (status, v) = rotate(json!({}));
    assert_eq!(status, 200, "{v}");
    let mut names: Vec<&str> =
        v["rotated"].as_array().expect("rotated").iter().filter_map(|r| r["node"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["h1", "h2", "s1"], "{v}");
    assert_eq!(v["failed"].as_array().map(Vec::len), Some(0), "{v}");
    let (status, v) = rotate(json!({"node": "nope"}));
    assert_eq!(status, 404, "{v}");

    // The cluster serves on.
    let r = http
        .post(format!("{}/v1/chat/completions", c.hubs[1]))
        .bearer_auth(&c.key)
        .json(&json!({"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "the"}]}))
        .send()
        .expect("sent");
    assert_eq!(r.status(), 200, "{:?}", r.text());
}
