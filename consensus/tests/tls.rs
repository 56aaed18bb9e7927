//! Mutual TLS between nodes: what is accepted and what is refused before any frame.

use std::sync::Arc;
use std::time::Duration;

use nave_consensus::tls::{self, ClusterCa, NodeIdentity, ALPN_JOIN, ALPN_RAFT, ALPN_SPOKE, HUB_NAME};

fn identity(ca: &ClusterCa, name: &str, start_offset: i64, validity: Duration) -> NodeIdentity {
    let (cert, key) = ca.issue_with(name, start_offset, validity).expect("issue");
    NodeIdentity::from_pem(name, ca.cert_pem(), &cert, &key).expect("identity")
}

/// A server for node "h1" that answers one byte on each stream it accepts.
fn server(ca: &ClusterCa) -> (quinn::Endpoint, std::net::SocketAddr) {
    let id = identity(ca, "h1", -60, Duration::from_secs(3600));
    let ep = tls::endpoint(&id, "127.0.0.1:0".parse().expect("addr"), &[ALPN_RAFT]).expect("endpoint");
    let addr = ep.local_addr().expect("addr");
    let e = ep.clone();
    tokio::spawn(async move {
        while let Some(inc) = e.accept().await {
            tokio::spawn(async move {
                if let Ok(conn) = inc.await {
                    while let Ok((mut send, _recv)) = conn.accept_bi().await {
                        let _ = send.write_all(b"k").await;
                        let _ = send.finish();
                    }
                }
            });
        }
    });
    (ep, addr)
}

/// A client that trusts the cluster CA but presents no certificate of its own.
fn anonymous(ca: &ClusterCa, alpn: &[u8]) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pemfile::certs(&mut ca.cert_pem().as_bytes()).next().expect("ca").expect("der")).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut anon = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    anon.alpn_protocols = vec![alpn.to_vec()];
    quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(anon).expect("quic")))
}

/// Whether a client with `config` can open a stream to the server and read its byte.
async fn talks(config: quinn::ClientConfig, addr: std::net::SocketAddr, name: &str) -> bool {
    let ep = tls::client_endpoint().expect("client endpoint");
    let attempt = async {
        let conn = ep.connect_with(config, addr, name).ok()?.await.ok()?;
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        send.write_all(b"x").await.ok()?;
        let mut b = [0u8; 1];
        recv.read_exact(&mut b).await.ok()?;
        Some(b == *b"k")
    };
    tokio::time::timeout(Duration::from_secs(5), attempt).await.ok().flatten().unwrap_or(false)
}

#[tokio::test]
async fn only_cluster_certificates_for_the_right_node_and_protocol_get_through() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = ClusterCa::load_or_create(&dir.path().join("ca")).expect("ca");
    let (_server, addr) = server(&ca);
    let good = identity(&ca, "h2", -60, Duration::from_secs(3600));

    assert!(talks(good.client_config(ALPN_RAFT).expect("cfg"), addr, "h1").await, "a cluster node is accepted");

    // The server presents h1's certificate: dialling it as another node is refused.
    assert!(!talks(good.client_config(ALPN_RAFT).expect("cfg"), addr, "h3").await, "wrong node name");

    // Wrong ALPN.
    assert!(!talks(good.client_config(ALPN_SPOKE).expect("cfg"), addr, "h1").await, "wrong ALPN");

    // A client certificate from another CA (trusting our CA so only the server can refuse).
    let other = ClusterCa::generate("someone else", Duration::from_secs(3600)).expect("ca");
    let (cert, key) = other.issue_with("h2", -60, Duration::from_secs(3600)).expect("issue");
    let foreign = NodeIdentity::from_pem("h2", ca.cert_pem(), &cert, &key).expect("identity");
    assert!(!talks(foreign.client_config(ALPN_RAFT).expect("cfg"), addr, "h1").await, "another CA's certificate");

    // An expired client certificate.
    let expired = identity(&ca, "h2", -7200, Duration::from_secs(3600));
    assert!(!talks(expired.client_config(ALPN_RAFT).expect("cfg"), addr, "h1").await, "expired certificate");

    // No client certificate at all.
    assert!(!talks(anonymous(&ca, ALPN_RAFT), addr, "h1").await, "no client certificate");

    // Keys are private to their owner.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("ca/ca.key")).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// A hub's port lets clients without a certificate through the handshake, for joining
/// only: the accept loop closes every other protocol for them (as the hub's does). A
/// joining client accepts only the hub whose chain carries the pinned CA.
#[tokio::test]
async fn anonymous_clients_may_only_join_and_joiners_pin_the_ca() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = ClusterCa::load_or_create(&dir.path().join("ca")).expect("ca");
    // A hub certificate from before hubs were named for joiners is issued again.
    ca.ensure_node(&dir.path().join("h1"), "h1").expect("old identity");
    let hub = ca.ensure_hub(&dir.path().join("h1"), "h1").expect("hub identity");
    let ep = tls::hub_endpoint(&hub, "127.0.0.1:0".parse().expect("addr"), &[ALPN_RAFT, ALPN_JOIN]).expect("endpoint");
    let addr = ep.local_addr().expect("addr");
    let e = ep.clone();
    tokio::spawn(async move {
        while let Some(inc) = e.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = inc.await else { return };
                let allowed = match tls::alpn(&conn).as_deref() {
                    Some(ALPN_RAFT) => tls::has_certificate(&conn),
                    Some(ALPN_JOIN) => true,
                    _ => false,
                };
                if !allowed {
                    return conn.close(3u32.into(), b"certificate required");
                }
                while let Ok((mut send, _recv)) = conn.accept_bi().await {
                    let _ = send.write_all(b"k").await;
                    let _ = send.finish();
                }
            });
        }
    });
    let node = identity(&ca, "h2", -60, Duration::from_secs(3600));
    assert!(talks(node.client_config(ALPN_RAFT).expect("cfg"), addr, "h1").await, "a node with a certificate");

    let fingerprint = ca.fingerprint().expect("fingerprint");
    assert!(
        talks(tls::join_client_config(&fingerprint).expect("cfg"), addr, HUB_NAME).await,
        "a joiner that pins this CA"
    );
    let other = ClusterCa::generate("someone else", Duration::from_secs(3600)).expect("ca");
    let wrong = other.fingerprint().expect("fingerprint");
    assert!(
        !talks(tls::join_client_config(&wrong).expect("cfg"), addr, HUB_NAME).await,
        "a joiner that pins another CA"
    );

    // Without a certificate, Raft is closed even though the handshake went through.
    assert!(!talks(anonymous(&ca, ALPN_RAFT), addr, "h1").await, "no certificate, Raft protocol");

    // A certificate signed from a request names exactly the node the hub chose.
    let (csr, key) = tls::new_request("asked-for").expect("request");
    let cert = ca.sign_request(&csr, "s3").expect("signed");
    let joined = NodeIdentity::from_pem("s3", ca.cert_pem(), &cert, &key).expect("identity");
    assert!(
        talks(joined.client_config(ALPN_RAFT).expect("cfg"), addr, "h1").await,
        "the signed certificate is the cluster's"
    );
    assert!(ca.sign_request("garbage", "s3").is_err());
}

/// Nodes that start together on one data directory end up with one CA.
#[test]
fn nodes_starting_together_agree_on_one_ca() {
    let dir = tempfile::tempdir().expect("dir");
    let ca_dir = dir.path().join("ca");
    let prints: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| ClusterCa::load_or_create(&ca_dir).expect("ca").fingerprint().expect("fp")))
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert!(prints.iter().all(|p| *p == prints[0]), "{prints:?}");
    assert_eq!(ClusterCa::load_or_create(&ca_dir).expect("ca").fingerprint().expect("fp"), prints[0]);
}
