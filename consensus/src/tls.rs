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
/// A node renewing its certificate with a hub, over a connection made with the
/// certificate it has (so only a valid one can be renewed).
pub const ALPN_RENEW: &[u8] = b"nave-renew/1";
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

    /// Signs a node's certificate request for node `name` (whatever names the request
    /// asked for), valid for `lifetime`: the node keeps its private key, the hub never sees
    /// it. Joining spokes get their first certificate this way, and renew it this way.
    pub fn sign_request(&self, csr_pem: &str, name: &str, lifetime: Duration) -> Result<String> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| tls(format!("bad certificate request: {e}")))?;
        csr.params = Self::node_params(&[name], -3600, lifetime)?;
        Ok(csr.signed_by(&self.issuer()?).map_err(tls)?.pem())
    }

    /// Writes a node identity for `name`, valid for `lifetime`, into `dir` unless one is
    /// there that needs no renewal (see [`Validity::needs_renewal`]).
    pub fn ensure_node(&self, dir: &Path, name: &str, lifetime: Duration) -> Result<NodeIdentity> {
        self.ensure_node_named(dir, &[name], lifetime)
    }

    /// A hub's identity: its id, and [`HUB_NAME`] for joining spokes. A hub certificate
    /// made before hubs carried that name is issued again, as is one that expired or
    /// expires soon: a hub holds the CA, so it renews its own.
    pub fn ensure_hub(&self, dir: &Path, name: &str, lifetime: Duration) -> Result<NodeIdentity> {
        let paths = IdentityPaths::new(dir);
        paths.finish_renewal()?;
        if let Ok(pem) = std::fs::read_to_string(&paths.cert) {
            let der = pem_certs(&pem)?.into_iter().next().ok_or_else(|| tls("empty node certificate"))?;
            if !names(&der)?.iter().any(|n| n == HUB_NAME) {
                tracing::info!(hub = name, "issuing the hub a certificate that also names {HUB_NAME}");
                std::fs::remove_file(&paths.cert)?;
            }
        }
        self.ensure_node_named(dir, &[name, HUB_NAME], lifetime)
    }

    fn ensure_node_named(&self, dir: &Path, names: &[&str], lifetime: Duration) -> Result<NodeIdentity> {
        let name = names[0];
        let paths = IdentityPaths::new(dir);
        paths.finish_renewal()?;
        if paths.cert.exists() && paths.key.exists() && paths.ca.exists() {
            let identity = NodeIdentity::load(dir, name)?;
            if !identity.validity().needs_renewal(unix_now(), lifetime) {
                return Ok(identity);
            }
            tracing::info!(node = name, "the node's certificate expires soon or lasts too long: issuing a new one");
        }
        crate::files::private_dir(dir)?;
        let (cert, key) = self.issue(names, -3600, lifetime)?;
        write_identity(dir, &self.cert_pem, &cert, &key)?;
        NodeIdentity::load(dir, name)
    }

    /// Gives node `identity` (a hub, when `hub`) a fresh key and certificate valid for
    /// `lifetime`, written into `dir` and presented from the next handshake on.
    pub fn renew(&self, dir: &Path, identity: &NodeIdentity, hub: bool, lifetime: Duration) -> Result<Validity> {
        let names: &[&str] = if hub { &[&identity.name, HUB_NAME] } else { &[&identity.name] };
        let (cert, key) = self.issue(names, -3600, lifetime)?;
        write_identity(dir, &self.cert_pem, &cert, &key)?;
        identity.replace(&cert, &key)?;
        Ok(identity.validity())
    }
}

/// Writes a node's key and certificate (and the CA) into `dir` so that a crash at any
/// point leaves the old pair or the new one, never a key with another key's certificate:
/// both go to `.next` files first, then the key and the certificate are renamed over the
/// old ones, and [`IdentityPaths::finish_renewal`] completes a renaming a crash cut short.
fn write_identity(dir: &Path, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<()> {
    let paths = IdentityPaths::new(dir);
    crate::files::private_dir(dir)?;
    write_public(&paths.ca, ca_pem)?;
    // Both synced before either is renamed (the certificate is public; 0600 does no harm).
    write_private(&paths.next_key(), key_pem)?;
    write_private(&paths.next_cert(), cert_pem)?;
    paths.finish_renewal()
}

/// The DNS names a certificate carries.
fn names(der: &[u8]) -> Result<Vec<String>> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(tls)?;
    let san = cert.subject_alternative_name().map_err(tls)?;
    let names = san.iter().flat_map(|s| s.value.general_names.iter());
    Ok(names.filter_map(|n| if let GeneralName::DNSName(d) = n { Some(d.to_string()) } else { None }).collect())
}

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
    write_identity(dir, ca_pem, cert_pem, key_pem)?;
    Ok(identity)
}

/// Writes a renewed certificate (and the key it was requested with) into `dir` and
/// presents it from the next handshake on.
pub fn save_renewal(dir: &Path, identity: &NodeIdentity, cert_pem: &str, key_pem: &str) -> Result<Validity> {
    let ca_pem = std::fs::read_to_string(IdentityPaths::new(dir).ca)?;
    NodeIdentity::from_pem(&identity.name, &ca_pem, cert_pem, key_pem)?;
    write_identity(dir, &ca_pem, cert_pem, key_pem)?;
    identity.replace(cert_pem, key_pem)?;
    Ok(identity.validity())
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

    fn next_key(&self) -> PathBuf {
        self.key.with_extension("key.next")
    }

    fn next_cert(&self) -> PathBuf {
        self.cert.with_extension("pem.next")
    }

    /// Completes a renewal: the key first, then the certificate. A `.next` key without
    /// its certificate was cut short before the certificate was written: dropped.
    fn finish_renewal(&self) -> Result<()> {
        let (key, cert) = (self.next_key(), self.next_cert());
        match (key.exists(), cert.exists()) {
            (true, true) => {
                std::fs::rename(&key, &self.key)?;
                std::fs::rename(&cert, &self.cert)?;
            }
            (false, true) => std::fs::rename(&cert, &self.cert)?,
            (true, false) => std::fs::remove_file(&key)?,
            (false, false) => {}
        }
        Ok(())
    }
}

fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    rustls_pemfile::certs(&mut pem.as_bytes()).collect::<std::result::Result<Vec<_>, _>>().map_err(tls)
}

/// A node's certificate, key and the cluster CA it trusts. Clones share the certificate:
/// [`NodeIdentity::replace`] (a renewal) changes what every endpoint and client config
/// made from it presents at its next handshake; established connections are unaffected.
#[derive(Clone)]
pub struct NodeIdentity {
    pub name: String,
    ca: CertificateDer<'static>,
    current: Arc<std::sync::RwLock<Current>>,
}

/// What a node presents: as a client its certificate; as a server its certificate and the
/// CA after it (a joining node pins the CA from that chain).
struct Current {
    client: Arc<rustls::sign::CertifiedKey>,
    server: Arc<rustls::sign::CertifiedKey>,
    validity: Validity,
}

/// A certificate's validity window, in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// Whether a certificate valid in this window should be renewed at `now` for a
    /// `lifetime`: once less than a third of the lifetime is left (a node that checks
    /// hourly has many tries before it expires), or when it was issued for longer than the
    /// lifetime (a certificate from before lifetimes were bounded).
    pub fn needs_renewal(&self, now: i64, lifetime: Duration) -> bool {
        let lifetime = lifetime.as_secs() as i64;
        let left = self.not_after.saturating_sub(now);
        left < lifetime / 3 || self.not_after.saturating_sub(self.not_before) > lifetime.saturating_add(2 * 3600)
    }
}

/// The validity window of a DER certificate.
pub fn validity(der: &[u8]) -> Result<Validity> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(tls)?;
    let v = cert.validity();
    Ok(Validity { not_before: v.not_before.timestamp(), not_after: v.not_after.timestamp() })
}

/// A Unix time in seconds as UTC (`2027-01-01 0:00:00.0 +00:00:00`).
pub fn utc(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix).map(|t| t.to_string()).unwrap_or_else(|_| unix.to_string())
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    time_now().unix_timestamp()
}

impl NodeIdentity {
    pub fn load(dir: &Path, name: &str) -> Result<Self> {
        let paths = IdentityPaths::new(dir);
        paths.finish_renewal()?;
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| tls(format!("{}: {e}", p.display())));
        Self::from_pem(name, &read(&paths.ca)?, &read(&paths.cert)?, &read(&paths.key)?)
    }

    pub fn from_pem(name: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self> {
        let ca = pem_certs(ca_pem)?.into_iter().next().ok_or_else(|| tls("no CA certificate"))?;
        let current = Current::from_pem(&ca, cert_pem, key_pem)?;
        Ok(Self { name: name.into(), ca, current: Arc::new(std::sync::RwLock::new(current)) })
    }

    /// Presents `cert_pem` (with its key `key_pem`) from the next handshake on, in every
    /// endpoint and client config made from this identity or its clones. The certificate
    /// must be the same CA's and name this node.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<()> {
        let next = Current::from_pem(&self.ca, cert_pem, key_pem)?;
        let leaf = next.client.cert.first().ok_or_else(|| tls("no node certificate"))?;
        if !names(leaf)?.contains(&self.name) {
            return Err(tls(format!("the new certificate does not name {}", self.name)));
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    /// The validity window of the certificate this node presents now.
    pub fn validity(&self) -> Validity {
        self.current.read().unwrap_or_else(|e| e.into_inner()).validity
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
        let verifier = Arc::new(LoggedVerifier { inner: verifier });
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Presented { current: self.current.clone(), server: true }));
        cfg.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
        let crypto = QuicServerConfig::try_from(cfg).map_err(tls)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        // Where strangers get through the handshake, every connection starts with a
        // stranger's limits; [`accept`] gives a peer that showed a certificate the full ones.
        server.transport_config(if anonymous { anonymous_transport() } else { transport() });
        Ok(server)
    }

    /// A QUIC client that presents this node's certificate and trusts only the cluster CA.
    pub fn client_config(&self, alpn: &[u8]) -> Result<quinn::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_root_certificates(self.roots()?)
            .with_client_cert_resolver(Arc::new(Presented { current: self.current.clone(), server: false }));
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let crypto = QuicClientConfig::try_from(cfg).map_err(tls)?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(transport());
        Ok(client)
    }
}

impl Current {
    fn from_pem(ca: &CertificateDer<'static>, cert_pem: &str, key_pem: &str) -> Result<Self> {
        let chain = pem_certs(cert_pem)?;
        let leaf = chain.first().ok_or_else(|| tls("no node certificate"))?;
        let validity = validity(leaf)?;
        let key = rustls_pemfile::pkcs8_private_keys(&mut key_pem.as_bytes())
            .next()
            .ok_or_else(|| tls("no private key"))?
            .map_err(tls)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.secret_pkcs8_der().to_vec()));
        let provider = rustls::crypto::ring::default_provider();
        let client = rustls::sign::CertifiedKey::from_der(chain, key, &provider)
            .map_err(|e| tls(format!("the node's key and certificate do not belong together: {e}")))?;
        // The CA travels after the node's certificate so that a joining node can pin it.
        let mut server = client.clone();
        server.cert.push(ca.clone());
        Ok(Self { client: Arc::new(client), server: Arc::new(server), validity })
    }
}

/// The certificate a node presents now (see [`NodeIdentity::replace`]).
#[derive(Debug)]
struct Presented {
    current: Arc<std::sync::RwLock<Current>>,
    server: bool,
}

impl std::fmt::Debug for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Current").field("validity", &self.validity).finish()
    }
}

impl Presented {
    fn get(&self) -> Arc<rustls::sign::CertifiedKey> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        if self.server {
            current.server.clone()
        } else {
            current.client.clone()
        }
    }
}

impl rustls::server::ResolvesServerCert for Presented {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for Presented {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Checks client certificates as rustls does, and says in the log why one was refused:
/// whose it was and, for an expired one, since when (a refused handshake is otherwise
/// only a TLS alert on the other side).
#[derive(Debug)]
struct LoggedVerifier {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

/// Why a node's certificate `der` was refused by `err`, for the log.
pub fn refusal(der: &[u8], err: &rustls::Error) -> String {
    let name = names(der).ok().and_then(|n| n.into_iter().next()).unwrap_or_else(|| "an unnamed node".into());
    let expired = matches!(
        err,
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
        )
    );
    if expired {
        let when = validity(der).map(|v| utc(v.not_after)).unwrap_or_else(|_| "an unknown time".into());
        format!(
            "refused the certificate of {name}: it expired at {when} (a hub renews its own at start; a spoke must join again with a token)"
        )
    } else {
        format!("refused the certificate of {name}: {err}")
    }
}

impl rustls::server::danger::ClientCertVerifier for LoggedVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| tracing::warn!("{}", refusal(end_entity.as_ref(), e)))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Keep-alives every second and a 3 s idle timeout: a dead peer's connection closes
/// within the heartbeat timeout, so requests on it end instead of hanging.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(3_000))));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(NODE_BIDI_STREAMS));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(NODE_UNI_STREAMS));
    Arc::new(t)
}

/// Streams a peer may have open at once on a connection: the full figure for nodes, and
/// what a connection without a certificate (a joining machine, or a stranger) gets: a join
/// is one stream, so 4 leave room for a retry and none for hoarding; no unidirectional
/// streams at all.
const NODE_BIDI_STREAMS: u32 = 1024;
const NODE_UNI_STREAMS: u32 = 100;
pub const ANONYMOUS_BIDI_STREAMS: u32 = 4;
/// Bytes a connection without a certificate may have in flight towards this node over all
/// its streams (quinn's default is unlimited): twice the largest join request, so a join
/// needs no extra round trip, and a stranger's connection pins at most this much memory.
pub const ANONYMOUS_RECEIVE_WINDOW: u32 = 128 << 10;

/// A stranger's limits: few streams, a small receive window; the same keep-alive and 3 s
/// idle timeout (and the join path's own deadlines on top, see the hub's `join`).
fn anonymous_transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(3_000))));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(ANONYMOUS_BIDI_STREAMS));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.receive_window(quinn::VarInt::from_u32(ANONYMOUS_RECEIVE_WINDOW));
    Arc::new(t)
}

/// Completes an incoming connection's handshake. On a port that lets strangers through
/// ([`hub_endpoint`]), a peer that showed a certificate (one of the cluster CA's: rustls
/// checked it) is then given a node's limits; one without keeps a stranger's.
pub async fn accept(incoming: quinn::Incoming) -> std::result::Result<quinn::Connection, quinn::ConnectionError> {
    let conn = incoming.await?;
    if has_certificate(&conn) {
        conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(NODE_BIDI_STREAMS));
        conn.set_max_concurrent_uni_streams(quinn::VarInt::from_u32(NODE_UNI_STREAMS));
        conn.set_receive_window(quinn::VarInt::MAX);
    }
    Ok(conn)
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
    let pin = Pin::CaFingerprint(ca_fingerprint.to_ascii_lowercase());
    let verifier = Arc::new(Pinned { what: pin, provider: provider.clone() });
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

/// A server certificate check for clients that trust one thing they were given rather
/// than a root store: a join token's CA, or a hub's own HTTPS certificate.
#[derive(Debug)]
struct Pinned {
    what: Pin,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

#[derive(Debug)]
enum Pin {
    /// The one CA certificate, among those the server sent, with this sha256 (hex): the
    /// server's certificate must be signed by it.
    CaFingerprint(String),
    /// Exactly this end-entity certificate, byte for byte, whatever names it carries.
    Leaf(CertificateDer<'static>),
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match &self.what {
            Pin::Leaf(leaf) if end_entity.as_ref() == leaf.as_ref() => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            Pin::Leaf(_) => Err(rustls::Error::General("the hub serves another certificate than its tls_cert".into())),
            Pin::CaFingerprint(fingerprint) => {
                let ca =
                    intermediates.iter().find(|c| hex::encode(Sha256::digest(c.as_ref())) == *fingerprint).ok_or_else(
                        || rustls::Error::General("the server's CA is not the one the join token names".into()),
                    )?;
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.clone().into_owned())?;
                let inner =
                    rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                        .build()
                        .map_err(|e| rustls::Error::General(e.to_string()))?;
                inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
            }
        }
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

/// The rustls server configuration of a hub's HTTPS API, from a PEM certificate chain and
/// its PEM private key (PKCS#8, PKCS#1 or SEC1). Every way these can be wrong is an error
/// that names the file and what is wrong with it: unreadable, no certificate in it, no key
/// in it, or a key that is not the certificate's.
pub fn https_config(cert_path: &Path, key_path: &Path) -> Result<rustls::ServerConfig> {
    let read = |p: &Path, what: &str| {
        std::fs::read(p).map_err(|e| tls(format!("cannot read the {what} {}: {e}", p.display())))
    };
    let (cert_pem, key_pem) = (read(cert_path, "TLS certificate")?, read(key_path, "TLS private key")?);
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls(format!("{} is not a PEM certificate file: {e}", cert_path.display())))?;
    if chain.is_empty() {
        return Err(tls(format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", cert_path.display())));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| tls(format!("{} is not a PEM private key file: {e}", key_path.display())))?
        .ok_or_else(|| tls(format!("{} holds no PEM private key (-----BEGIN PRIVATE KEY-----)", key_path.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(_) => "the key is not the certificate's key".to_string(),
            other => other.to_string(),
        };
        tls(format!("{} with {}: {why}", cert_path.display(), key_path.display()))
    })?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A client of a hub's HTTPS API that trusts exactly the certificate in `cert_path` (the
/// file the hub serves), whatever names it carries: for `nave up`, which starts the hub
/// from the same config and reaches it on the configured address, whether or not the
/// certificate names that address.
pub fn pinned_https_client(cert_path: &Path) -> Result<rustls::ClientConfig> {
    let pem = std::fs::read(cert_path)
        .map_err(|e| tls(format!("cannot read the TLS certificate {}: {e}", cert_path.display())))?;
    let leaf = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .ok_or_else(|| tls(format!("{} holds no PEM certificate", cert_path.display())))?
        .map_err(tls)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pinned { what: Pin::Leaf(leaf), provider: provider.clone() });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}
