//! Mutual TLS between nodes: what is accepted and what is refused before any frame.

use std::sync::Arc;
use std::time::Duration;

use nave_consensus::tls::{self, ClusterCa, NodeIdentity, ALPN_JOIN, ALPN_RAFT, ALPN_SPOKE, HUB_NAME};

const MONTH: Duration = Duration::from_secs(30 * 86400);

fn identity(ca: &ClusterCa, name: &str, start_offset: i64, validity: Duration) -> NodeIdentity {
    let (cert, key) = ca.issue_with(name, start_offset, validity).expect("issue");
    NodeIdentity::from_pem(name, ca.cert_pem(), &cert, &key).expect("identity")
}

/// A server for node "h1" that answers one byte on each stream it accepts.
fn server(ca: &ClusterCa) -> (quinn::Endpoint, std::net::SocketAddr) {
    serve_as(&identity(ca, "h1", -60, Duration::from_secs(3600)), ALPN_RAFT)
}

/// A server presenting `id` on protocol `alpn` that answers one byte on each stream.
fn serve_as(id: &NodeIdentity, alpn: &[u8]) -> (quinn::Endpoint, std::net::SocketAddr) {
    let ep = tls::endpoint(id, "127.0.0.1:0".parse().expect("addr"), &[alpn]).expect("endpoint");
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
    ca.ensure_node(&dir.path().join("h1"), "h1", MONTH).expect("old identity");
    let hub = ca.ensure_hub(&dir.path().join("h1"), "h1", MONTH).expect("hub identity");
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
    let cert = ca.sign_request(&csr, "s3", MONTH).expect("signed");
    let joined = NodeIdentity::from_pem("s3", ca.cert_pem(), &cert, &key).expect("identity");
    assert!(
        talks(joined.client_config(ALPN_RAFT).expect("cfg"), addr, "h1").await,
        "the signed certificate is the cluster's"
    );
    assert!(ca.sign_request("garbage", "s3", MONTH).is_err());
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

/// On a hub's port, a connection without a certificate keeps a stranger's limits (4
/// streams at once, no unidirectional ones, a small receive window); one with a cluster
/// certificate is given a node's (1,024 streams) once its handshake completes.
#[tokio::test]
async fn strangers_get_few_streams_and_nodes_many() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = ClusterCa::load_or_create(&dir.path().join("ca")).expect("ca");
    let hub = ca.ensure_hub(&dir.path().join("h1"), "h1", MONTH).expect("hub identity");
    let ep = tls::hub_endpoint(&hub, "127.0.0.1:0".parse().expect("addr"), &[ALPN_RAFT, ALPN_JOIN]).expect("endpoint");
    let addr = ep.local_addr().expect("addr");
    let e = ep.clone();
    // Accepts connections and never their streams: every stream a client opens stays open.
    tokio::spawn(async move {
        while let Some(inc) = e.accept().await {
            tokio::spawn(async move {
                if let Ok(conn) = tls::accept(inc).await {
                    conn.closed().await;
                }
            });
        }
    });
    /// How many streams a client gets open (each with a byte sent), up to `want`, giving
    /// each open 1 s.
    async fn open_streams(config: quinn::ClientConfig, addr: std::net::SocketAddr, name: &str, want: u32) -> u32 {
        let ep = tls::client_endpoint().expect("client endpoint");
        let conn = ep.connect_with(config, addr, name).expect("connect").await.expect("handshake");
        let mut streams = Vec::new();
        for _ in 0..want {
            match tokio::time::timeout(Duration::from_secs(1), conn.open_bi()).await {
                Ok(Ok((mut send, recv))) => {
                    send.write_all(b"x").await.expect("write");
                    streams.push((send, recv));
                }
                _ => break,
            }
        }
        let uni = tokio::time::timeout(Duration::from_millis(300), conn.open_uni()).await;
        assert!(uni.is_err(), "a stranger gets no unidirectional stream");
        streams.len() as u32
    }
    let fingerprint = ca.fingerprint().expect("fingerprint");
    let stranger = open_streams(tls::join_client_config(&fingerprint).expect("cfg"), addr, HUB_NAME, 10).await;
    assert_eq!(stranger, tls::ANONYMOUS_BIDI_STREAMS, "a connection without a certificate");

    let node = identity(&ca, "h2", -60, Duration::from_secs(3600));
    let ep2 = tls::client_endpoint().expect("client endpoint");
    let conn = ep2
        .connect_with(node.client_config(ALPN_RAFT).expect("cfg"), addr, "h1")
        .expect("connect")
        .await
        .expect("handshake");
    let mut streams = Vec::new();
    for i in 0..100 {
        let opened = tokio::time::timeout(Duration::from_secs(5), conn.open_bi()).await;
        let (mut send, recv) = opened.unwrap_or_else(|_| panic!("stream {i} of a node")).expect("stream");
        send.write_all(b"x").await.expect("write");
        streams.push((send, recv));
    }
    assert_eq!(streams.len(), 100, "a node's connection is not held to a stranger's limits");
}

/// The certificate a server presented on `conn` (DER).
fn presented(conn: &quinn::Connection) -> Vec<u8> {
    conn.peer_identity()
        .and_then(|i| i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
        .and_then(|c| c.first().map(|c| c.to_vec()))
        .expect("a certificate")
}

/// A renewed certificate is presented from the next handshake on, by the server and by
/// the client made from the same identity, and peers accept it; the files hold it too.
#[tokio::test]
async fn a_renewed_certificate_is_presented_and_accepted() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = ClusterCa::load_or_create(&dir.path().join("ca")).expect("ca");
    let node_dir = dir.path().join("s1");
    let s1 = ca.ensure_node(&node_dir, "s1", MONTH).expect("identity");
    let before = s1.validity();
    assert!(before.not_after - before.not_before <= MONTH.as_secs() as i64 + 3600, "{before:?}");
    let (_ep, addr) = serve_as(&s1, ALPN_SPOKE);
    let hub = ca.ensure_hub(&dir.path().join("h1"), "h1", MONTH).expect("hub");
    let client = tls::client_endpoint().expect("client");
    let dial = |cfg: quinn::ClientConfig| {
        let client = client.clone();
        async move { client.connect_with(cfg, addr, "s1").expect("connect").await.expect("handshake") }
    };
    let old_conn = dial(hub.client_config(ALPN_SPOKE).expect("cfg")).await;
    let old_cert = presented(&old_conn);

    tokio::time::sleep(Duration::from_millis(1100)).await; // a later not_before
    let after = ca.renew(&node_dir, &s1, false, MONTH).expect("renew");
    assert!(after.not_before > before.not_before, "{before:?} -> {after:?}");
    let new_conn = dial(hub.client_config(ALPN_SPOKE).expect("cfg")).await;
    let new_cert = presented(&new_conn);
    assert_ne!(old_cert, new_cert, "the server presents the renewed certificate");
    assert_eq!(tls::validity(&new_cert).expect("validity"), after);
    assert!(talks(hub.client_config(ALPN_SPOKE).expect("cfg"), addr, "s1").await, "peers accept it");
    // The connection made before the renewal goes on.
    let (mut send, mut recv) = old_conn.open_bi().await.expect("old connection still open");
    send.write_all(b"x").await.expect("write");
    let mut b = [0u8; 1];
    recv.read_exact(&mut b).await.expect("old connection answers");
    // On disk too: the node starts again with it.
    let reloaded = NodeIdentity::load(&node_dir, "s1").expect("reload");
    assert_eq!(reloaded.validity(), after);

    // As a client: the renewed identity's client config presents the new certificate to a
    // hub, which accepts it.
    let (_server, hub_addr) = server(&ca);
    assert!(talks(s1.client_config(ALPN_RAFT).expect("cfg"), hub_addr, "h1").await);

    // A certificate for another node is never taken as this node's.
    let (other, other_key) = ca.issue_with("s2", -60, MONTH).expect("issue");
    assert!(s1.replace(&other, &other_key).is_err());
}

/// A renewal cut short by a crash leaves the old pair or the new one, never a key with
/// another key's certificate.
#[test]
fn a_renewal_cut_short_leaves_a_matching_pair() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = ClusterCa::load_or_create(&dir.path().join("ca")).expect("ca");
    let node_dir = dir.path().join("s1");
    let s1 = ca.ensure_node(&node_dir, "s1", MONTH).expect("identity");
    let old = s1.validity();
    let (cert, key) = ca.issue_with("s1", -60, MONTH).expect("issue");
    let new = tls::validity(&rustls_pemfile::certs(&mut cert.as_bytes()).next().expect("cert").expect("der"))
        .expect("validity");
    // The key renamed into place, the certificate still waiting: loading finishes it.
    std::fs::write(node_dir.join("node.key"), &key).expect("key");
    std::fs::write(node_dir.join("node.pem.next"), &cert).expect("next cert");
    assert_eq!(NodeIdentity::load(&node_dir, "s1").expect("loads").validity(), new);
    // A new key written, its certificate not yet: the old pair stays.
    let (_, key2) = ca.issue_with("s1", -60, MONTH).expect("issue");
    std::fs::write(node_dir.join("node.key.next"), &key2).expect("next key");
    assert_eq!(NodeIdentity::load(&node_dir, "s1").expect("loads").validity(), new);
    assert!(!node_dir.join("node.key.next").exists());
    assert_ne!(old, new);
}

#[test]
fn certificates_are_renewed_when_a_third_of_their_lifetime_is_left() {
    let day = 86_400;
    let v = tls::Validity { not_before: 0, not_after: 30 * day };
    assert!(!v.needs_renewal(day, MONTH), "fresh");
    assert!(!v.needs_renewal(19 * day, MONTH), "11 days left");
    assert!(v.needs_renewal(21 * day, MONTH), "9 days left");
    assert!(v.needs_renewal(31 * day, MONTH), "expired");
    let old = tls::Validity { not_before: 0, not_after: 5 * 365 * day };
    assert!(old.needs_renewal(day, MONTH), "issued for longer than the lifetime");
}

/// A node whose certificate expired is refused at the handshake, and the refusing node's
/// log says whose certificate it was and that it expired.
#[test]
fn an_expired_certificate_is_refused_with_a_clear_log_line() {
    #[derive(Clone, Default)]
    struct Log(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Log {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // One thread: the handshake's tasks log into this thread's subscriber.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = ClusterCa::load_or_create(&dir.path().join("ca")).expect("ca");
        let (_server, addr) = server(&ca);
        let expired = identity(&ca, "s7", -7200, Duration::from_secs(3600));
        assert!(!talks(expired.client_config(ALPN_RAFT).expect("cfg"), addr, "h1").await, "expired certificate");
    });
    let text = String::from_utf8_lossy(&log.0.lock().expect("log")).to_string();
    assert!(text.contains("refused the certificate of s7: it expired at"), "{text}");
}

/// A hub that starts with an expired certificate (or one about to expire) issues itself a
/// new one from the CA it holds.
#[test]
fn a_hub_renews_an_expired_certificate_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = ClusterCa::load_or_create(&dir.path().join("ca")).expect("ca");
    let h1 = dir.path().join("h1");
    // Issued an hour ago for one second: expired.
    let expired = ca.ensure_hub(&h1, "h1", Duration::from_secs(1)).expect("expired identity");
    assert!(expired.validity().not_after < tls::unix_now());
    let again = ca.ensure_hub(&h1, "h1", MONTH).expect("renewed at start");
    let v = again.validity();
    assert!(v.not_after > tls::unix_now() + 29 * 86_400, "{v:?}");
    assert_eq!(NodeIdentity::load(&h1, "h1").expect("on disk").validity(), v);
    // One with most of its lifetime left is kept.
    assert_eq!(ca.ensure_hub(&h1, "h1", MONTH).expect("kept").validity(), v);
}
