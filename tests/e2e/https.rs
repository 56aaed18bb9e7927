//! HTTPS on the API: a hub given `tls_cert` / `tls_key` (here a self-signed certificate
//! made by the test) serves its API over TLS, `nave up` reaches it that way (readiness,
//! the app key), a client that trusts that certificate is answered (`nave admin` with
//! `--ca-cert` too), one that trusts another is refused, and a plain HTTP
//! request to the same port gets a 400 that says to use https. A hub whose key is not its
//! certificate's refuses to start, and says so.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{free_port, launch, tiny_model, wait_until, Cluster};

/// A self-signed certificate for 127.0.0.1 and its key, written as PEM into `dir`.
fn self_signed(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("self-signed certificate");
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, c.cert.pem()).expect("write cert");
    std::fs::write(&key, c.signing_key.serialize_pem()).expect("write key");
    (cert, key, c.cert.pem())
}

/// `GET path` over TLS, trusting only `ca_pem`, checking the name 127.0.0.1: status and body.
fn https_get(addr: &str, path: &str, key: Option<&str>, ca_pem: &str) -> Result<(u16, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
    let tcp = TcpStream::connect_timeout(&sock, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::from(sock.ip());
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    match s.read_to_string(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let status = answer.get(9..12).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no HTTP answer: {answer:?}"))?;
    Ok((status, answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// A plain HTTP/1.1 `GET path`: the whole answer.
fn plain_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).expect("send");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

#[test]
fn a_hub_with_a_certificate_serves_https_and_says_so_to_plain_http() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = tiny_model(dir.path());
    let (cert, key, cert_pem) = self_signed(dir.path(), "api");
    let (h, q, sh, sq) = (free_port(), free_port(), free_port(), free_port());
    let config = dir.path().join("cluster.toml");
    let text = format!(
        "[cluster]\ndata_dir = \"{data}\"\n\
         [[hub]]\nid = \"h1\"\nhttp = \"127.0.0.1:{h}\"\nquic = \"127.0.0.1:{q}\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n\
         [[spoke]]\nid = \"s1\"\nhttp = \"127.0.0.1:{sh}\"\nquic = \"127.0.0.1:{sq}\"\nmodels = [\"{model}\"]\nkv_pool = \"64MiB\"\nthreads = 1\n",
        data = dir.path().join("data").display(),
        cert = cert.display(),
        key = key.display(),
        model = model.display(),
    );
    std::fs::write(&config, &text).expect("config");
    // `nave up` waits for readiness and makes the app key: both over TLS.
    let child = launch(&config, None);
    let admin = std::fs::read_to_string(dir.path().join("data/admin.key")).expect("admin key").trim().to_string();
    let api = format!("127.0.0.1:{h}");
    let mut cluster = Cluster {
        config: config.clone(),
        dir,
        child: Some(child),
        key: admin.clone(),
        hubs: vec![format!("https://{api}")],
        hub_quic: vec![format!("127.0.0.1:{q}")],
        spokes: vec![format!("http://127.0.0.1:{sh}")],
    };
    // It prints the app key's line just after "Nave is up".
    wait_until(Duration::from_secs(20), "nave up made the app key over HTTPS", || {
        if cluster.data().join("app.key").exists() {
            Ok(())
        } else {
            Err("no app.key")
        }
    });

    let (status, body) = https_get(&api, "/health", None, &cert_pem).expect("https answers");
    assert_eq!(status, 200, "{body}");
    let (status, body) = https_get(&api, "/admin/v1/keys", Some(&admin), &cert_pem).expect("https answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"app\""), "{body}");

    // A client that trusts another certificate refuses the hub.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("other").cert.pem();
    let refused = https_get(&api, "/health", None, &other);
    assert!(refused.is_err(), "{refused:?}");

    // The command's own client: with --ca-cert it speaks HTTPS; without, it says what to give.
    let nave =
        |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_nave")).args(args).output().expect("nave runs");
    let url = format!("https://{api}");
    let cert_arg = cert.to_str().expect("utf-8");
    let out = nave(&["--ca-cert", cert_arg, "admin", "key", "list", "--url", &url, "--key", &admin]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("app"), "{}", String::from_utf8_lossy(&out.stdout));
    let out = nave(&["admin", "key", "list", "--url", &url, "--key", &admin]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca-cert"), "{}", String::from_utf8_lossy(&out.stderr));

    // Plain HTTP on the HTTPS port: a 400 that says what to do, not a hang or garbage.
    let answer = plain_get(&api, "/health");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("this port speaks HTTPS"), "{answer}");
    // And the port keeps serving HTTPS.
    assert_eq!(https_get(&api, "/health", None, &cert_pem).map(|(s, _)| s), Ok(200));
    assert!(cluster.stop(), "clean stop");

    // A key that is not the certificate's: the hub refuses to start and names the files.
    let (_, wrong_key, _) = self_signed(cluster.dir.path(), "wrong");
    std::fs::write(&config, text.replace(&key.display().to_string(), &wrong_key.display().to_string()))
        .expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nave"))
        .args(["hub", "--config", config.to_str().expect("utf-8"), "--id", "h1"])
        .output()
        .expect("nave hub runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the key is not the certificate's key") && err.contains("wrong.key"), "{err}");
}
