//! The cluster's certificates: a private CA created at first start (rcgen), and per node a
//! certificate for its id signed by that CA. Every QUIC connection between nodes is mutual
//! TLS 1.3: the server checks the client's certificate against the cluster CA, the client
//! checks that the server's certificate is the CA's and names the node it dialled. A
//! connection without a certificate, with another CA's, an expired one, or one for another
//! node name is refused by rustls before any frame is read. Private keys are written with
//! mode 0600.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub const ALPN_RAFT: &[u8] = b"nave-raft/1";
pub const ALPN_SPOKE: &[u8] = b"nave-spoke/1";
/// A new machine joining with a token: the only protocol a client without a certificate
/// may speak, on a hub's QUIC port.
pub const ALPN_JOIN: &[u8] = b"nave-join/1";
/// Every hub's certificate also names this, so a joining spoke (which knows the CA's
/// fingerprint but not the hub's id) can check it reached a hub.
pub const HUB_NAME: &str = "nave-hub";

fn tls(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    Ok(crate::files::write_private(path, contents.as_bytes())?)
}

fn write_public(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The cluster CA: its certificate and signing key.
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
}

impl ClusterCa {
    /// Loads the CA from `dir` (ca.pem, ca.key), creating it on first start. Nodes
    /// starting together agree on one: each writes its candidate into a directory of its
    /// own and renames it to `dir`, which only the first rename achieves.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
        if cert.exists() && key.exists() {
            return Ok(Self { cert_pem: std::fs::read_to_string(cert)?, key_pem: std::fs::read_to_string(key)? });
        }
        let parent = dir.parent().unwrap_or(Path::new("."));
        crate::files::private_dir(parent)?;
        let staging = parent.join(format!(".ca.{}.tmp", crate::ids::unique_suffix()));
        crate::files::private_dir(&staging)?;
        let ca = Self::generate("nave cluster CA", Duration::from_secs(10 * 365 * 86400))?;
        write_private(&staging.join("ca.key"), &ca.key_pem)?;
        write_public(&staging.join("ca.pem"), &ca.cert_pem)?;
        // An empty `dir` (made by an older version or by hand) is replaced; a full one wins.
        let _ = std::fs::remove_dir(dir);
        match std::fs::rename(&staging, dir) {
            Ok(()) => Ok(ca),
            Err(_) if cert.exists() && key.exists() => {
                let _ = std::fs::remove_dir_all(&staging);
                Ok(Self { cert_pem: std::fs::read_to_string(cert)?, key_pem: std::fs::read_to_string(key)? })
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                Err(e.into())
            }
        }
    }

    /// Loads the CA from `dir` without ever creating one (for tools that act for an
    /// existing cluster).
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f)).map_err(|e| tls(format!("no cluster CA in {}: {e}", dir.display())))
        };
        Ok(Self { cert_pem: read("ca.pem")?, key_pem: read("ca.key")? })
    }

    /// A hub identity named `name` that lives in memory only, valid for `validity`: for
    /// a tool an admin runs beside the cluster (`nave bench --url spoke:ID`) to be
    /// treated as a hub without leaving a key on disk.
    pub fn transient_hub(&self, name: &str, validity: Duration) -> Result<NodeIdentity> {
        let (cert, key) = self.issue(&[name, HUB_NAME], -60, validity)?;
        NodeIdentity::from_pem(name, &self.cert_pem, &cert, &key)
    }

    /// A fresh CA valid for `validity` (tests make short-lived or foreign CAs with it).
    pub fn generate(name: &str, validity: Duration) -> Result<Self> {
        let key = KeyPair::generate().map_err(tls)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
        let now = time_now();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::seconds(validity.as_secs() as i64);
        let cert = params.self_signed(&key).map_err(tls)?;
        Ok(Self { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// sha256 of the CA certificate (DER), hex: what a join token pins.
    pub fn fingerprint(&self) -> Result<String> {
        fingerprint_pem(&self.cert_pem)
    }

    /// A certificate for node `name`, valid from `not_before_secs` ago for `validity`.
    pub fn issue_with(&self, name: &str, start_offset: i64, validity: Duration) -> Result<(String, String)> {
        self.issue(&[name], start_offset, validity)
    }

    fn issuer(&self) -> Result<Issuer<'_, KeyPair>> {
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(tls)?;
        Issuer::from_ca_cert_pem(&self.cert_pem, ca_key).map_err(tls)
    }

    /// Node parameters: the names, and the validity window.
    fn node_params(names: &[&str], start_offset: i64, validity: Duration) -> Result<CertificateParams> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).map_err(tls)?;
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let start = time_now() + time::Duration::seconds(start_offset);
        params.not_before = start;
        params.not_after = start + time::Duration::seconds(validity.as_secs() as i64);
        Ok(params)
    }

    fn issue(&self, names: &[&str], start_offset: i64, validity: Duration) -> Result<(String, String)> {
        let key = KeyPair::generate().map_err(tls)?;
        let cert = Self::node_params(names, start_offset, validity)?.signed_by(&key, &self.issuer()?).map_err(tls)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Signs a joining node's certificate request for node `name` (whatever names the
    /// request asked for): the node keeps its private key, the hub never sees it.
    pub fn sign_request(&self, csr_pem: &str, name: &str) -> Result<String> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| tls(format!("bad certificate request: {e}")))?;
        csr.params = Self::node_params(&[name], -3600, NODE_VALIDITY)?;
        Ok(csr.signed_by(&self.issuer()?).map_err(tls)?.pem())
    }

    /// Writes a node identity for `name` into `dir` unless one is there already.
    pub fn ensure_node(&self, dir: &Path, name: &str) -> Result<NodeIdentity> {
        self.ensure_node_named(dir, &[name])
    }

    /// A hub's identity: its id, and [`HUB_NAME`] for joining spokes. A hub certificate
    /// made before hubs carried that name is issued again.
    pub fn ensure_hub(&self, dir: &Path, name: &str) -> Result<NodeIdentity> {
        let paths = IdentityPaths::new(dir);
        if let Ok(pem) = std::fs::read_to_string(&paths.cert) {
            let der = pem_certs(&pem)?.into_iter().next().ok_or_else(|| tls("empty node certificate"))?;
            if !names(&der)?.iter().any(|n| n == HUB_NAME) {
                tracing::info!(hub = name, "issuing the hub a certificate that also names {HUB_NAME}");
                std::fs::remove_file(&paths.cert)?;
            }
        }
        self.ensure_node_named(dir, &[name, HUB_NAME])
    }

    fn ensure_node_named(&self, dir: &Path, names: &[&str]) -> Result<NodeIdentity> {
        let name = names[0];
        let paths = IdentityPaths::new(dir);
        if !(paths.cert.exists() && paths.key.exists() && paths.ca.exists()) {
            crate::files::private_dir(dir)?;
            let (cert, key) = self.issue(names, -3600, NODE_VALIDITY)?;
            write_private(&paths.key, &key)?;
            write_public(&paths.cert, &cert)?;
            write_public(&paths.ca, &self.cert_pem)?;
        }
        NodeIdentity::load(dir, name)
    }
}

/// The DNS names a certificate carries.
fn names(der: &[u8]) -> Result<Vec<String>> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(tls)?;
    let san = cert.subject_alternative_name().map_err(tls)?;
    let names = san.iter().flat_map(|s| s.value.general_names.iter());
    Ok(names.filter_map(|n| if let GeneralName::DNSName(d) = n { Some(d.to_string()) } else { None }).collect())
}

const NODE_VALIDITY: Duration = Duration::from_secs(5 * 365 * 86400);

/// A new node's key and a certificate request for `name` (PEM both).
pub fn new_request(name: &str) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(tls)?;
    let mut params = CertificateParams::new(vec![name.to_string()]).map_err(tls)?;
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params.serialize_request(&key).map_err(tls)?;
    Ok((csr.pem().map_err(tls)?, key.serialize_pem()))
}

/// Writes a joined node's identity (the key it made, the certificate a hub signed, the
/// CA) into `dir`.
pub fn save_identity(dir: &Path, name: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<NodeIdentity> {
    let identity = NodeIdentity::from_pem(name, ca_pem, cert_pem, key_pem)?;
    let paths = IdentityPaths::new(dir);
    crate::files::private_dir(dir)?;
    write_private(&paths.key, key_pem)?;
    write_public(&paths.ca, ca_pem)?;
    write_public(&paths.cert, cert_pem)?;
    Ok(identity)
}

/// sha256 of a PEM certificate's DER, hex.
pub fn fingerprint_pem(pem: &str) -> Result<String> {
    Ok(hex::encode(Sha256::digest(pem_certs(pem)?.first().ok_or_else(|| tls("no certificate"))?)))
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

struct IdentityPaths {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl IdentityPaths {
    fn new(dir: &Path) -> Self {
        Self { ca: dir.join("ca.pem"), cert: dir.join("node.pem"), key: dir.join("node.key") }
    }
}

fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    rustls_pemfile::certs(&mut pem.as_bytes()).collect::<std::result::Result<Vec<_>, _>>().map_err(tls)
}

/// A node's certificate, key and the cluster CA it trusts.
#[derive(Clone)]
pub struct NodeIdentity {
    pub name: String,
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl NodeIdentity {
    pub fn load(dir: &Path, name: &str) -> Result<Self> {
        let paths = IdentityPaths::new(dir);
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| tls(format!("{}: {e}", p.display())));
        Self::from_pem(name, &read(&paths.ca)?, &read(&paths.cert)?, &read(&paths.key)?)
    }

    pub fn from_pem(name: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self> {
        let ca = pem_certs(ca_pem)?.into_iter().next().ok_or_else(|| tls("no CA certificate"))?;
        let chain = pem_certs(cert_pem)?;
        if chain.is_empty() {
            return Err(tls("no node certificate"));
        }
        let key = rustls_pemfile::pkcs8_private_keys(&mut key_pem.as_bytes())
            .next()
            .ok_or_else(|| tls("no private key"))?
            .map_err(tls)?;
        Ok(Self { name: name.into(), ca, chain, key_der: key.secret_pkcs8_der().to_vec() })
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    fn roots(&self) -> Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(tls)?;
        Ok(roots)
    }

    /// A QUIC server that accepts only clients with a certificate of the cluster CA.
    pub fn server_config(&self, alpns: &[&[u8]]) -> Result<quinn::ServerConfig> {
        self.server_config_with(alpns, false)
    }

    /// With `anonymous`, clients without a certificate complete the handshake too (a
    /// certificate, when presented, is still checked): the server must then refuse them
    /// every protocol but [`ALPN_JOIN`] (see [`has_certificate`]).
    pub fn server_config_with(&self, alpns: &[&[u8]], anonymous: bool) -> Result<quinn::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider.clone());
        let verifier = if anonymous { builder.allow_unauthenticated() } else { builder }.build().map_err(tls)?;
        // The CA travels after the node's certificate so that a joining node can pin it.
        let mut chain = self.chain.clone();
        chain.push(self.ca.clone());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, self.key())
            .map_err(tls)?;
        cfg.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
        let crypto = QuicServerConfig::try_from(cfg).map_err(tls)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(transport());
        Ok(server)
    }

    /// A QUIC client that presents this node's certificate and trusts only the cluster CA.
    pub fn client_config(&self, alpn: &[u8]) -> Result<quinn::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key())
            .map_err(tls)?;
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let crypto = QuicClientConfig::try_from(cfg).map_err(tls)?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(transport());
        Ok(client)
    }
}

/// Keep-alives every second and a 3 s idle timeout: a dead peer's connection closes
/// within the heartbeat timeout, so requests on it end instead of hanging.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(3_000))));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1024));
    Arc::new(t)
}

/// A QUIC endpoint bound to `addr` serving `alpns`, able to dial out as this node.
pub fn endpoint(identity: &NodeIdentity, addr: std::net::SocketAddr, alpns: &[&[u8]]) -> Result<quinn::Endpoint> {
    quinn::Endpoint::server(identity.server_config(alpns)?, addr)
        .map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("cannot bind QUIC on {addr}: {e}"))))
}

/// A hub's endpoint: like [`endpoint`], and it also lets clients without a certificate
/// through the handshake, for [`ALPN_JOIN`] only.
pub fn hub_endpoint(identity: &NodeIdentity, addr: std::net::SocketAddr, alpns: &[&[u8]]) -> Result<quinn::Endpoint> {
    quinn::Endpoint::server(identity.server_config_with(alpns, true)?, addr)
        .map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("cannot bind QUIC on {addr}: {e}"))))
}

/// Whether the peer of `conn` presented a certificate (one of the cluster CA's: rustls
/// checked it during the handshake).
pub fn has_certificate(conn: &quinn::Connection) -> bool {
    conn.peer_identity()
        .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
        .is_some_and(|certs| !certs.is_empty())
}

/// Whether the peer of `conn` presented a hub's certificate (one that names
/// [`HUB_NAME`]; spokes' certificates never do). Raft is for hubs only: a spoke's
/// certificate must not let it vote, append entries, or feed another spoke's replica.
pub fn peer_is_hub(conn: &quinn::Connection) -> bool {
    conn.peer_identity()
        .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().and_then(|c| names(c).ok()))
        .is_some_and(|names| names.iter().any(|n| n == HUB_NAME))
}

/// The node names the peer's certificate carries (its id first; a hub's also
/// [`HUB_NAME`]), empty without one.
pub fn peer_names(conn: &quinn::Connection) -> Vec<String> {
    conn.peer_identity()
        .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().and_then(|c| names(c).ok()))
        .unwrap_or_default()
}

/// The negotiated ALPN protocol of `conn`.
pub fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol)
}

/// A client for joining: no certificate of its own; it accepts a server only if the
/// server's chain carries the CA whose sha256 is `ca_fingerprint` and its certificate is
/// signed by that CA and names [`HUB_NAME`].
pub fn join_client_config(ca_fingerprint: &str) -> Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCa { fingerprint: ca_fingerprint.to_ascii_lowercase(), provider: provider.clone() });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_JOIN.to_vec()];
    let crypto = QuicClientConfig::try_from(cfg).map_err(tls)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(transport());
    Ok(client)
}

/// Trusts the one CA certificate, among those the server sent, with the pinned digest.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| hex::encode(Sha256::digest(c.as_ref())) == self.fingerprint)
            .ok_or_else(|| rustls::Error::General("the server's CA is not the one the join token names".into()))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client-only endpoint (ephemeral port).
pub fn client_endpoint() -> Result<quinn::Endpoint> {
    let addr: std::net::SocketAddr = ([0, 0, 0, 0], 0).into();
    quinn::Endpoint::client(addr).map_err(Error::Io)
}
