//! Who is calling: the bearer key of each request, checked against the admin key and the
//! replicated key registry; and the cluster's admin key itself.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::Hub;

/// Who sent a request (set by the auth middleware).
#[derive(Debug, Clone)]
pub enum Caller {
    Admin,
    /// An API key, by its SHA-256 digest (hex); checked by admission.
    Key(String),
}

impl Caller {
    /// Whose stored responses these are: the key's digest, or "admin".
    pub fn owner(&self) -> String {
        match self {
            Caller::Admin => "admin".into(),
            Caller::Key(d) => d.clone(),
        }
    }
}

impl Hub {
    /// Constant-time comparison of the key's digest with the admin key's.
    pub fn is_admin_key(&self, key: &str) -> bool {
        let d = Sha256::digest(key.as_bytes());
        d.iter().zip(self.admin_digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// Whether `digest` names a live key (a linearizable read).
    pub async fn key_is_live(&self, digest: &str) -> Result<bool, ApiError> {
        Ok(self.consensus.read(|a| a.state.key_by_digest(digest).is_some_and(|k| !k.revoked)).await?)
    }
}

/// The admin key of the cluster: read from `<data_dir>/admin.key`, created there (mode
/// 0600) if absent. Hubs starting together agree: the file is published with a hard link,
/// which fails if another hub published first, and then that one's key is used.
pub fn ensure_admin_key(data_dir: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("admin.key");
    let read = || std::fs::read_to_string(&path).ok().map(|k| k.trim().to_string()).filter(|k| !k.is_empty());
    if let Some(k) = read() {
        return Ok(k);
    }
    nave_consensus::files::private_dir(data_dir)?;
    let key = format!("nave-admin-{}", nave_consensus::ids::random_hex(24).context("reading /dev/urandom")?);
    let tmp = data_dir.join(format!("admin.key.{}.tmp", nave_consensus::ids::unique_suffix()));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(key.as_bytes())?;
    f.sync_all()?;
    let published = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match published {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read().context("admin.key exists but is empty"),
        Err(e) => Err(e).with_context(|| format!("writing {}", path.display())),
    }
}

/// Identifies the caller. The admin key passes everything; another key passes to the
/// inference routes, where admission (a consensus write) checks it and its limits, and to
/// the listing routes after a linearizable check that it exists.
pub(crate) async fn middleware(State(hub): State<Arc<Hub>>, mut req: Request, next: Next) -> Response {
    let key = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let caller = match key {
        Some(k) if hub.is_admin_key(k) => Caller::Admin,
        Some(k) => Caller::Key(hex::encode(Sha256::digest(k.as_bytes()))),
        None => {
            hub.metrics.refusal("bad_key");
            return ApiError::unauthorized().into_response();
        }
    };
    let path = req.uri().path();
    if let Caller::Key(digest) = &caller {
        if path.starts_with("/admin/") {
            return ApiError::new(axum::http::StatusCode::FORBIDDEN, "the admin API needs the admin key")
                .into_response();
        }
        // The local replica answers for keys it knows; a key it does not know yet (created
        // a moment ago through another hub) gets a linearizable read before a 401.
        let known = hub.consensus.state.read(|a| a.state.key_by_digest(digest).is_some_and(|k| !k.revoked));
        if !known || req.method() == axum::http::Method::GET {
            match hub.key_is_live(digest).await {
                Ok(true) => {}
                Ok(false) => {
                    hub.metrics.refusal("bad_key");
                    return ApiError::unauthorized().into_response();
                }
                Err(e) => return e.into_response(),
            }
        }
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    /// Hubs that start together on one data directory end up with one admin key.
    #[test]
    fn hubs_starting_together_agree_on_one_admin_key() {
        let dir = tempfile::tempdir().expect("dir");
        let keys: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..6).map(|_| s.spawn(|| super::ensure_admin_key(dir.path()).expect("key"))).collect();
            handles.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
        assert_eq!(super::ensure_admin_key(dir.path()).expect("key"), keys[0]);
    }
}
