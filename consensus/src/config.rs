//! `cluster.toml`: one serde tree for the whole cluster. Defaults, then the file, then
//! `NAVE_*` environment variables (`NAVE_DATA_DIR`); [`ClusterConfig::validate`] names the
//! field, the value and the reason for anything that cannot work. The repository's
//! cluster.toml is the commented sample of every field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A byte count written as `1073741824`, `"1GiB"`, `"512MiB"`, `"64KiB"` or `"2GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Default)]
#[serde(into = "u64")]
pub struct ByteSize(pub u64);

impl From<ByteSize> for u64 {
    fn from(b: ByteSize) -> u64 {
        b.0
    }
}

impl ByteSize {
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a size like \"512MiB\""))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            other => return Err(format!("unknown unit {other:?} in {s:?}")),
        };
        Ok(Self((n * mult as f64) as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0 as f64;
        if b >= (1u64 << 30) as f64 {
            write!(f, "{:.1} GiB", b / (1u64 << 30) as f64)
        } else {
            write!(f, "{:.0} MiB", b / (1u64 << 20) as f64)
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    pub name: String,
    /// Where every node keeps its data, `<data_dir>/<id>/`; relative to the working
    /// directory of `nave up`.
    pub data_dir: PathBuf,
    /// Default deadline of an inference request (overridable per request).
    pub request_timeout_ms: u64,
    /// How often spokes report their load.
    pub heartbeat_interval_ms: u64,
    /// A spoke silent for longer leaves the candidate set.
    pub heartbeat_timeout_ms: u64,
    /// Consecutive failures that open a spoke's circuit.
    pub circuit_failures: u32,
    /// How long an open circuit stays open before one probe is let through.
    pub circuit_open_ms: u64,
    /// Largest request body the HTTP API accepts.
    pub max_body_bytes: ByteSize,
    /// A hub takes at most twice this many requests in flight (the spokes' queues absorb
    /// the burst); beyond that it answers 503.
    pub max_concurrent_requests: usize,
    /// A client has this long to send a request's headers; an idle keep-alive connection
    /// is closed after it too (a slow client cannot hold a connection).
    pub header_timeout_ms: u64,
    /// A client has this long to send a request's body once its headers arrived (408).
    pub body_timeout_ms: u64,
    /// Requests one key may run at once over the whole cluster, for keys created without
    /// their own `max_concurrent` (429 beyond).
    pub key_max_concurrent: u32,
    /// Stored responses (`/v1/responses`, `store: true`) one key may keep, their bytes in
    /// all, and the size of one (429 beyond the first two, 400 beyond the last).
    pub stored_responses_per_key: u32,
    pub stored_bytes_per_key: ByteSize,
    pub max_stored_response_bytes: ByteSize,
    /// The replicated state's snapshot may grow to this; a warning is logged from 80%
    /// on, and stored responses are refused beyond it.
    pub max_snapshot_bytes: ByteSize,
    /// Node certificates the cluster CA signs are valid this many days; every node renews
    /// its own once less than a third of that is left (checked hourly).
    pub cert_lifetime_days: u32,
}

impl ClusterSection {
    /// [`ClusterSection::cert_lifetime_days`] as a duration.
    pub fn cert_lifetime(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.cert_lifetime_days) * 86_400)
    }
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            name: "nave".into(),
            data_dir: PathBuf::from(".nave"),
            request_timeout_ms: 120_000,
            heartbeat_interval_ms: 500,
            heartbeat_timeout_ms: 3_000,
            circuit_failures: 5,
            circuit_open_ms: 30_000,
            max_body_bytes: ByteSize(2 << 20),
            max_concurrent_requests: 512,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            key_max_concurrent: 64,
            stored_responses_per_key: 1_000,
            stored_bytes_per_key: ByteSize(16 << 20),
            max_stored_response_bytes: ByteSize(1 << 20),
            max_snapshot_bytes: ByteSize(128 << 20),
            cert_lifetime_days: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    pub id: String,
    pub http: SocketAddr,
    pub quic: SocketAddr,
    /// A hub added to a running cluster (`nave admin hub add`) rather than one of those
    /// that founded it: it never initializes a cluster of its own, and waits to be added.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub join: bool,
    /// HTTPS on the API: the PEM certificate chain (the hub's certificate first) and its
    /// PEM private key; both or neither. Without them the API is plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Worker threads of the hub's runtime (default: the machine's cores). A hub needs
    /// few: the default cluster runs three beside a spoke on one machine, one thread each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

impl HubConfig {
    /// `https` when the hub serves its API with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpokeConfig {
    pub id: String,
    /// Health and metrics.
    pub http: SocketAddr,
    pub quic: SocketAddr,
    pub models: Vec<String>,
    /// `cpu` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Weights plus KV pool; reserved at start and never lent out.
    #[serde(default = "default_serving_reserve")]
    pub serving_reserve: ByteSize,
    /// What training jobs may use.
    #[serde(default = "default_training_limit")]
    pub training_limit: ByteSize,
    /// While serving has requests, fine-tuning takes at most this share of wall time (it
    /// also runs at the lowest CPU priority); when serving is idle it takes everything.
    #[serde(default = "default_training_share")]
    pub training_share: f64,
    /// The KV pool inside the serving reserve.
    #[serde(default = "default_kv_pool")]
    pub kv_pool: ByteSize,
    /// Relative cost of running a token here (the cost-aware policy prefers cheap spokes).
    #[serde(default = "default_cost")]
    pub cost_weight: f64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Engine threads (default: the machine's cores shared among the config's spokes).
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(default = "default_max_running")]
    pub max_running: usize,
    #[serde(default = "default_max_batch_tokens")]
    pub max_batch_tokens: usize,
}

fn default_device() -> String {
    "cpu".into()
}
fn default_serving_reserve() -> ByteSize {
    ByteSize(1 << 30)
}
fn default_training_limit() -> ByteSize {
    ByteSize(4 << 30)
}
fn default_training_share() -> f64 {
    0.25
}
fn default_kv_pool() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_cost() -> f64 {
    1.0
}
fn default_max_running() -> usize {
    64
}
fn default_max_batch_tokens() -> usize {
    256
}

/// How requests for a model pick a spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingPolicy {
    #[default]
    LeastLoaded,
    SessionAffinity,
    CostAware,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelPolicy {
    pub routing: RoutingPolicy,
    /// The context in tokens the spokes serve the model with: at most the file's own
    /// (a smaller one bounds prompts and KV use). Default: the file's.
    pub context: Option<usize>,
    /// Completion tokens of a request that names none. Default: until the end of the turn
    /// or the context, as OpenAI does (the admission then reserves up to the context).
    pub default_max_tokens: Option<usize>,
    /// A system message put first in chats that have none (Ollama's SYSTEM): SmolLM2's
    /// own template inserts one that derails it.
    pub system_prompt: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default, rename = "hub")]
    pub hubs: Vec<HubConfig>,
    #[serde(default, rename = "spoke")]
    pub spokes: Vec<SpokeConfig>,
    #[serde(default)]
    pub models: BTreeMap<String, ModelPolicy>,
}

fn invalid(field: impl Into<String>, value: impl std::fmt::Display, reason: impl Into<String>) -> Error {
    Error::InvalidValue { field: field.into(), value: value.to_string(), reason: reason.into() }
}

impl ClusterConfig {
    /// Reads, applies `NAVE_*` overrides and validates.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::ConfigFile { path: path.display().to_string(), reason: e.to_string() })?;
        Self::from_text(&text).map_err(|e| match e {
            Error::ConfigFile { reason, .. } => Error::ConfigFile { path: path.display().to_string(), reason },
            other => other,
        })
    }

    /// Like [`ClusterConfig::load`], from the config's text.
    pub fn from_text(text: &str) -> Result<Self> {
        let mut cfg = Self::parse(text)?;
        if let Some(dir) = std::env::var_os("NAVE_DATA_DIR") {
            cfg.cluster.data_dir = PathBuf::from(dir);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::ConfigFile { path: "<text>".into(), reason: e.to_string() })
    }

    pub fn validate(&self) -> Result<()> {
        if self.hubs.iter().all(|h| h.join) {
            return Err(invalid(
                "hub",
                "[]",
                "at least one hub that founds the cluster (without `join = true`) is needed",
            ));
        }
        let mut ids = std::collections::HashSet::new();
        let mut addrs = std::collections::HashSet::new();
        let nodes = self
            .hubs
            .iter()
            .map(|h| ("hub", &h.id, [h.http, h.quic]))
            .chain(self.spokes.iter().map(|s| ("spoke", &s.id, [s.http, s.quic])));
        for (kind, id, node_addrs) in nodes {
            let valid = !id.is_empty() && id.len() <= 63 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !valid {
                return Err(invalid(
                    format!("{kind}.id"),
                    id,
                    "use 1-63 letters, digits or '-' (it names the node's certificate)",
                ));
            }
            if id == crate::tls::HUB_NAME {
                return Err(invalid(
                    format!("{kind}.id"),
                    id,
                    "this name is reserved for the hubs' common certificate name",
                ));
            }
            if !ids.insert(id.clone()) {
                return Err(invalid(format!("{kind}.id"), id, "node ids must be unique"));
            }
            for a in node_addrs {
                if !addrs.insert(a) {
                    return Err(invalid(format!("{kind}[{id}] address"), a, "used twice in this config"));
                }
            }
        }
        for h in &self.hubs {
            if h.threads == Some(0) {
                return Err(invalid(format!("hub[{}].threads", h.id), 0, "must be at least 1"));
            }
            match (&h.tls_cert, &h.tls_key) {
                (Some(_), None) => {
                    return Err(invalid(format!("hub[{}].tls_key", h.id), "", "tls_cert is set: give its key too"))
                }
                (None, Some(_)) => {
                    return Err(invalid(
                        format!("hub[{}].tls_cert", h.id),
                        "",
                        "tls_key is set: give its certificate too",
                    ))
                }
                _ => {}
            }
        }
        for s in &self.spokes {
            let f = |name: &str| format!("spoke[{}].{name}", s.id);
            if s.models.is_empty() {
                return Err(invalid(f("models"), "[]", "a spoke serves at least one model"));
            }
            if !(s.training_share > 0.0 && s.training_share <= 1.0) {
                return Err(invalid(f("training_share"), s.training_share, "a share of time in (0, 1]"));
            }
            if s.device != "cpu" && !s.device.starts_with("cuda:") {
                return Err(invalid(f("device"), &s.device, "use \"cpu\" or \"cuda:N\""));
            }
            if s.kv_pool.0 < (1 << 20) {
                return Err(invalid(f("kv_pool"), s.kv_pool, "at least 1 MiB"));
            }
            if s.kv_pool >= s.serving_reserve {
                return Err(invalid(
                    f("kv_pool"),
                    s.kv_pool,
                    format!("must be smaller than serving_reserve ({})", s.serving_reserve),
                ));
            }
            if !(s.cost_weight.is_finite() && s.cost_weight > 0.0) {
                return Err(invalid(f("cost_weight"), s.cost_weight, "must be a positive number"));
            }
            if s.max_running == 0 || s.max_batch_tokens == 0 {
                return Err(invalid(
                    f("max_running"),
                    s.max_running,
                    "max_running and max_batch_tokens must be positive",
                ));
            }
        }
        for (name, m) in &self.models {
            if m.context.is_some_and(|c| c < 16) {
                return Err(invalid(format!("models.{name}.context"), m.context.unwrap_or(0), "at least 16 tokens"));
            }
            if m.default_max_tokens == Some(0) {
                return Err(invalid(format!("models.{name}.default_max_tokens"), 0, "at least 1 (or leave it out)"));
            }
            if m.system_prompt.as_ref().is_some_and(|p| p.len() > 16 * 1024) {
                return Err(invalid(format!("models.{name}.system_prompt"), "...", "at most 16 KiB"));
            }
        }
        let c = &self.cluster;
        if c.heartbeat_interval_ms == 0 || c.heartbeat_timeout_ms <= c.heartbeat_interval_ms {
            return Err(invalid(
                "cluster.heartbeat_timeout_ms",
                c.heartbeat_timeout_ms,
                "must exceed heartbeat_interval_ms",
            ));
        }
        if c.request_timeout_ms == 0 {
            return Err(invalid("cluster.request_timeout_ms", 0, "must be positive"));
        }
        if c.header_timeout_ms == 0 || c.body_timeout_ms == 0 {
            return Err(invalid("cluster.header_timeout_ms / body_timeout_ms", 0, "must be positive"));
        }
        if c.max_snapshot_bytes.0 < (1 << 20) || c.max_snapshot_bytes.0 > (192 << 20) {
            return Err(invalid(
                "cluster.max_snapshot_bytes",
                c.max_snapshot_bytes.0,
                "must be between 1 MiB and 192 MiB (a snapshot is decoded with a 256 MiB limit)",
            ));
        }
        if !(1..=397).contains(&c.cert_lifetime_days) {
            return Err(invalid(
                "cluster.cert_lifetime_days",
                c.cert_lifetime_days,
                "from 1 to 397 days (node certificates are renewed while the nodes run)",
            ));
        }
        if c.max_concurrent_requests == 0 {
            return Err(invalid("cluster.max_concurrent_requests", 0, "must be positive"));
        }
        Ok(())
    }

    pub fn hub(&self, id: &str) -> Result<&HubConfig> {
        self.hubs.iter().find(|h| h.id == id).ok_or_else(|| invalid("--id", id, "no hub with this id in the config"))
    }

    pub fn spoke(&self, id: &str) -> Result<&SpokeConfig> {
        self.spokes
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| invalid("--id", id, "no spoke with this id in the config"))
    }

    pub fn node_dir(&self, id: &str) -> PathBuf {
        self.cluster.data_dir.join(id)
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.cluster.data_dir.join("ca")
    }

    /// The per-model settings of `[models.NAME]` (defaults where the config has none).
    pub fn model_settings(&self, model: &str) -> ModelPolicy {
        self.models.get(model).cloned().unwrap_or_default()
    }

    pub fn policy(&self, model: &str) -> RoutingPolicy {
        self.models.get(model).map(|m| m.routing).unwrap_or_default()
    }

    /// Every model some spoke serves, sorted.
    pub fn served_models(&self) -> Vec<String> {
        let mut m: Vec<String> = self.spokes.iter().flat_map(|s| s.models.iter().map(|e| model_name(e))).collect();
        m.sort();
        m.dedup();
        m
    }
}

/// The name a spoke's `models` entry is served under: a store name as it is, or the file
/// stem of a path to a `.gguf` file (`/models/my-model.gguf` serves `my-model`).
pub fn model_name(entry: &str) -> String {
    if entry.ends_with(".gguf") {
        Path::new(entry).file_stem().and_then(|s| s.to_str()).unwrap_or(entry).to_string()
    } else {
        entry.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../../cluster.toml");
    const TWO_SPOKES: &str = include_str!("../../cluster-two-spokes.toml");

    #[test]
    fn the_repository_cluster_toml_is_valid() -> Result<()> {
        let c = ClusterConfig::parse(SAMPLE)?;
        c.validate()?;
        assert_eq!(c.hubs.len(), 3);
        assert_eq!(c.spokes.len(), 1);
        let two = ClusterConfig::parse(TWO_SPOKES)?;
        two.validate()?;
        assert_eq!((two.hubs.len(), two.spokes.len()), (3, 2));
        assert_eq!(c.served_models(), vec!["smollm2-135m".to_string()]);
        assert!(c.hubs.iter().all(|h| h.threads == Some(1)), "the default cluster's hubs leave the cores to the spoke");
        Ok(())
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let err = |text: &str| {
            ClusterConfig::parse(text).and_then(|c| c.validate()).err().map(|e| e.to_string()).unwrap_or_default()
        };
        let base = "[[hub]]\nid = \"h1\"\nhttp = \"127.0.0.1:1\"\nquic = \"127.0.0.1:2\"\n";
        assert!(err("").contains("at least one hub"));
        assert!(err(&format!("{base}[[hub]]\nid = \"h1\"\nhttp = \"127.0.0.1:3\"\nquic = \"127.0.0.1:4\"\n"))
            .contains("unique"));
        assert!(err(&format!("{base}[[hub]]\nid = \"h2\"\nhttp = \"127.0.0.1:1\"\nquic = \"127.0.0.1:4\"\n"))
            .contains("used twice"));
        let spoke = "[[spoke]]\nid = \"s1\"\nhttp = \"127.0.0.1:5\"\nquic = \"127.0.0.1:6\"\nmodels = [\"m\"]\n";
        let e = err(&format!("{base}{spoke}kv_pool = \"4GiB\"\n"));
        assert!(e.contains("spoke[s1].kv_pool") && e.contains("serving_reserve"), "{e}");
        assert!(err(&format!("{base}{spoke}kv_pool = \"12 parsecs\"\n")).contains("unknown unit"));
        assert!(err(&format!("{base}bogus = 1\n")).contains("unknown field"));
        let e = err(&format!("{base}tls_cert = \"c.pem\"\n"));
        assert!(e.contains("hub[h1].tls_key") && e.contains("give its key"), "{e}");
        let e = err(&format!("{base}tls_key = \"k.pem\"\n"));
        assert!(e.contains("hub[h1].tls_cert"), "{e}");
        let e = err(&format!("{base}threads = 0\n"));
        assert!(e.contains("hub[h1].threads") && e.contains("at least 1"), "{e}");
        assert!(err("[[hub]]\nid = \"h 1\"\nhttp = \"127.0.0.1:1\"\nquic = \"127.0.0.1:2\"\n").contains("hub.id"));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("512MiB"), Ok(ByteSize(512 << 20)));
        assert_eq!(ByteSize::parse("1.5GiB"), Ok(ByteSize(3 << 29)));
        assert_eq!(ByteSize::parse("2GB"), Ok(ByteSize(2_000_000_000)));
        assert_eq!(ByteSize::parse("42"), Ok(ByteSize(42)));
        assert!(ByteSize::parse("x").is_err());
    }
}
