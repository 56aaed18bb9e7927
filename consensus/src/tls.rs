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

fn tls(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
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
    /// Loads the CA from `dir` (ca.pem, ca.key), creating it on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
        if cert.exists() && key.exists() {
            return Ok(Self { cert_pem: std::fs::read_to_string(cert)?, key_pem: std::fs::read_to_string(key)? });
        }
        std::fs::create_dir_all(dir)?;
        let ca = Self::generate("nave cluster CA", Duration::from_secs(10 * 365 * 86400))?;
        write_private(&key, &ca.key_pem)?;
        write_public(&cert, &ca.cert_pem)?;
        Ok(ca)
    }

    /// A fresh CA valid for `validity` (tests make short-lived or foreign CAs with it).
    pub fn generate(name: &str, validity: Duration) -> Result<Self> {
        let key = KeyPair::generate().map_err(tls)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
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
        Ok(hex::encode(Sha256::digest(pem_certs(&self.cert_pem)?.first().ok_or_else(|| tls("empty CA"))?)))
    }

    /// A certificate for node `name`, valid from `not_before_secs` ago for `validity`.
    pub fn issue_with(&self, name: &str, start_offset: i64, validity: Duration) -> Result<(String, String)> {
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(tls)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key).map_err(tls)?;
        let key = KeyPair::generate().map_err(tls)?;
        let mut params = CertificateParams::new(vec![name.to_string()]).map_err(tls)?;
        params.distinguished_name.push(DnType::CommonName, name);
        let start = time_now() + time::Duration::seconds(start_offset);
        params.not_before = start;
        params.not_after = start + time::Duration::seconds(validity.as_secs() as i64);
        let cert = params.signed_by(&key, &issuer).map_err(tls)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Writes a node identity for `name` into `dir` unless one is there already.
    pub fn ensure_node(&self, dir: &Path, name: &str) -> Result<NodeIdentity> {
        let paths = IdentityPaths::new(dir);
        if !(paths.cert.exists() && paths.key.exists() && paths.ca.exists()) {
            std::fs::create_dir_all(dir)?;
            let (cert, key) = self.issue_with(name, -3600, Duration::from_secs(5 * 365 * 86400))?;
            write_private(&paths.key, &key)?;
            write_public(&paths.cert, &cert)?;
            write_public(&paths.ca, &self.cert_pem)?;
        }
        NodeIdentity::load(dir, name)
    }
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
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider.clone())
            .build()
            .map_err(tls)?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key())
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

/// A client-only endpoint (ephemeral port).
pub fn client_endpoint() -> Result<quinn::Endpoint> {
    let addr: std::net::SocketAddr = ([0, 0, 0, 0], 0).into();
    quinn::Endpoint::client(addr).map_err(Error::Io)
}
