//! The replicated state and its `apply`: pure and deterministic. Time comes in the command
//! (the proposer's clock), never from the applying node's, so every replica computes the
//! same result. Commands carry a request id; a retried command with an id already applied
//! returns the first result and changes nothing.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

mod stored;

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;
/// Remembered results of applied commands (for idempotent retries), and for how long.
const DEDUP_KEEP: usize = 100_000;
const DEDUP_MS: u64 = 10 * MINUTE_MS;
/// Audit entries kept (oldest dropped first).
pub const AUDIT_KEEP: usize = 10_000;
/// Stored responses kept, and for how long.
pub const RESPONSES_KEEP: usize = 100_000;
pub const RESPONSE_TTL_MS: u64 = 7 * DAY_MS;
/// A reservation never settled (its hub died) is released after this long.
const RESERVATION_MS: u64 = 30 * MINUTE_MS;
/// Days of per-key usage kept (by day and model), and models recorded per day (the rest
/// are summed under "other").
pub const USAGE_DAYS: u64 = 92;
const USAGE_MODELS_PER_DAY: usize = 32;
/// Bounds on what one command may carry, so that no entry bloats every replica's state.
pub const MAX_NAME: usize = 128;
pub const MAX_AUDIT_TEXT: usize = 1024;
pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_TEXT: usize = 128;
pub const MAX_SPOKE_MODELS: usize = 64;
/// Per-key quotas on stored responses, unless a command names its own (configurable per
/// cluster: the hub puts its configured quota in the command, so every replica applies the
/// same one).
pub const DEFAULT_RESPONSE_QUOTA: ResponseQuota =
    ResponseQuota { max_count: 1_000, max_bytes: 16 << 20, max_response_bytes: 1 << 20, max_total_bytes: 96 << 20 };

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute (reserved at admission).
    pub tpm: Option<u64>,
    /// Tokens per UTC day (prompt plus completion): never exceeded, whichever hubs the
    /// requests reach.
    pub daily_tokens: Option<u64>,
    /// Requests of this key running at once, over the whole cluster.
    pub max_concurrent: Option<u32>,
}

/// Limits on the responses one key may store (`/v1/responses` with `store: true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseQuota {
    pub max_count: u32,
    pub max_bytes: u64,
    /// One stored response (its input and output text) at most this large.
    pub max_response_bytes: u64,
    /// All keys' stored responses together at most this large (it bounds the snapshot).
    pub max_total_bytes: u64,
}

/// What a key used on one day with one model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayUsage {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub name: String,
    /// SHA-256 of the key, hex. The key itself is never stored.
    pub digest: String,
    pub limits: Limits,
    pub created_ms: u64,
    pub revoked: bool,
    /// Tokens settled today (the day of `day`).
    pub day_used: u64,
    pub day: u64,
    /// Tokens reserved by admitted requests not yet settled.
    pub reserved: u64,
    pub minute: u64,
    pub minute_requests: u32,
    pub minute_tokens: u64,
    pub total_tokens: u64,
    pub total_requests: u64,
    /// Admitted requests not yet settled (bounded by `limits.max_concurrent`).
    pub in_flight: u32,
    /// Usage by UTC day number and model, the last [`USAGE_DAYS`] days.
    pub usage: BTreeMap<u64, BTreeMap<String, DayUsage>>,
    /// Stored responses of this key: how many, and their bytes.
    pub stored_count: u32,
    pub stored_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Reservation {
    digest: String,
    model: String,
    tokens: u64,
    minute: u64,
    day: u64,
    at_ms: u64,
}

/// One message of a stored conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub role: String,
    pub content: String,
}

/// A response stored for `previous_response_id` chains (`/v1/responses`, `store: true`).
/// Encoded as its first version wrote it, with what came later in the place of its last
/// field (`incomplete`), so that logs and snapshots written before still decode
/// (`consensus/src/state/stored.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredResponse {
    pub id: String,
    /// Digest of the key that created it (or "admin"): only it may read or continue it.
    pub owner: String,
    pub model: String,
    pub previous: Option<String>,
    pub created_ms: u64,
    /// What this request added to the conversation (instructions are not carried over).
    pub input: Vec<Turn>,
    /// The answer's text.
    pub output: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The spoke that answered (session affinity for follow-ups).
    pub spoke: String,
    /// The answer was cut by `max_output_tokens` (`"status": "incomplete"`).
    pub incomplete: bool,
    /// The function calls and results of `input`'s turns, one per turn; empty when none
    /// has any.
    pub input_tools: Vec<TurnTools>,
    /// The function calls the answer made, in order.
    pub calls: Vec<FunctionCall>,
}

/// A function call of a stored conversation (the Responses API's `function_call` item):
/// one the model made, or one a client sent back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub call_id: String,
    pub name: String,
    /// JSON text.
    pub arguments: String,
}

/// What a turn of a stored conversation carries beside its text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnTools {
    /// An assistant turn's calls.
    pub calls: Vec<FunctionCall>,
    /// A tool turn (`function_call_output`): the `call_id` of the call it answers.
    pub answers: Option<String>,
}

/// The most function calls one stored response holds (in its input and its answer).
pub const MAX_STORED_CALLS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: u64,
    /// Who did it: "admin" (the admin key), "key:NAME", "spoke:ID", "join-token:DIGEST8",
    /// "hub:ID".
    pub actor: String,
    pub what: String,
}

/// A join token: a spoke that presents its secret joins the cluster (its digest is
/// stored, never the secret), while it has uses left and has not expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub digest: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub uses_left: u32,
}

/// A spoke that joined with a token (spokes listed in cluster.toml are not here): what a
/// hub needs to dial it and route to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpokeRecord {
    pub id: String,
    /// QUIC address the hubs dial (mutual TLS, the certificate names `id`).
    pub quic: String,
    /// Its /health and /metrics.
    pub http: String,
    pub models: Vec<String>,
    pub cost_weight: f64,
    pub labels: BTreeMap<String, String>,
    pub joined_ms: u64,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    UnknownKey,
    Revoked,
    RequestRate,
    TokenRate,
    DailyBudget,
    Concurrency,
    ResponseQuota,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownKey => "unknown_key",
            Refusal::Revoked => "revoked_key",
            Refusal::RequestRate => "request_rate",
            Refusal::TokenRate => "token_rate",
            Refusal::DailyBudget => "daily_budget",
            Refusal::Concurrency => "concurrency",
            Refusal::ResponseQuota => "response_quota",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    CreateKey {
        name: String,
        digest: String,
        limits: Limits,
    },
    RevokeKey {
        name: String,
    },
    /// Rate-limit check plus reservation of `tokens` (an upper bound of the request's
    /// prompt plus completion tokens) against the key's budgets.
    Admit {
        digest: String,
        model: String,
        tokens: u64,
    },
    /// Actual usage of an admitted request (recorded exactly); releases its reservation.
    Settle {
        admitted: String,
        prompt_tokens: u64,
        completion_tokens: u64,
    },
    Audit {
        actor: String,
        what: String,
    },
    /// Stores a response for its owner, within the owner's quota.
    StoreResponse {
        response: Box<StoredResponse>,
        quota: ResponseQuota,
    },
    /// Forgets a stored response (only its owner may).
    DeleteResponse {
        id: String,
        owner: String,
    },
    /// A join token with `uses` uses, valid for `ttl_ms` from the command's time.
    CreateJoinToken {
        digest: String,
        ttl_ms: u64,
        uses: u32,
    },
    /// Consumes one use of the token and registers the spoke, in one step: refused
    /// (`Invalid`, nothing changed) for an unknown, expired or used-up token or a taken id.
    Join {
        token_digest: String,
        spoke: SpokeRecord,
    },
    /// Forgets a joined spoke: hubs stop dialling it.
    RemoveSpoke {
        id: String,
    },
    /// From now on no node accepts a connection or a Raft RPC from a certificate naming
    /// `name` (a removed hub or spoke), or, with `revoked: false`, accepts it again (the
    /// admin adds a hub of that name back).
    RevokeNode {
        name: String,
        revoked: bool,
    },
    /// A fine-tuned adapter `model:name` is served by `spoke` (recorded once per spoke).
    RegisterAdapter {
        model: String,
        name: String,
        spoke: String,
    },
    /// Proposals gathered by one hub while its previous ones were in flight, committed as
    /// one log entry; each is applied as if alone (its own id, time and result).
    Batch(Vec<Proposal>),
    /// One piece of a backed-up state ([`ClusterState::backup_bytes`]), in order from
    /// offset 0 (pieces keep every log entry small); the `last` one replaces an empty state
    /// (a new cluster: no keys, spokes, tokens, responses) with the backed-up one. Refused
    /// on a state in use.
    Restore {
        offset: u64,
        chunk: Vec<u8>,
        last: bool,
    },
    /// A live key's limits become `limits` (from its next admission on; what it used
    /// stays counted).
    SetLimits {
        name: String,
        limits: Limits,
    },
}

/// The largest backed-up state a restore decodes, and the pieces it is written in.
pub const MAX_BACKUP_BYTES: u64 = 192 << 20;
pub const RESTORE_CHUNK: usize = 1 << 20;

/// A command with what every replica must agree on: who proposed it, when, and its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub id: String,
    pub now_ms: u64,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Done,
    Admitted {
        key_name: String,
    },
    Refused {
        reason: Refusal,
        retry_after_ms: u64,
    },
    NotFound(String),
    Invalid(String),
    /// The results of a [`Command::Batch`], in its order.
    Batch(Vec<CommandResult>),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterState {
    pub keys: BTreeMap<String, ApiKey>,
    names: BTreeMap<String, String>,
    reservations: BTreeMap<String, Reservation>,
    /// No outstanding reservation is older than this (a lower bound), so `expire` scans the
    /// reservations only when one may be stale, not on every command. Each scan makes it
    /// exact again. Derived, so not in snapshots: 0 after a restore makes the first
    /// `expire` scan. It changes when the scan runs, never what it finds, so replicas that
    /// disagree on it still agree on the state.
    #[serde(skip)]
    reservations_since_ms: u64,
    applied: BTreeMap<String, (u64, CommandResult)>,
    applied_order: VecDeque<String>,
    pub audit: VecDeque<AuditEntry>,
    responses: BTreeMap<String, StoredResponse>,
    /// Bytes of all stored responses (their text, as [`StoredResponse::bytes`] counts).
    responses_bytes: u64,
    response_order: VecDeque<(u64, String)>,
    join_tokens: BTreeMap<String, JoinToken>,
    /// Joined spokes by id.
    pub spokes: BTreeMap<String, SpokeRecord>,
    /// Fine-tuned adapters (`model:name`) and the spokes that serve them.
    pub adapters: BTreeMap<String, Vec<String>>,
    /// A backed-up state arriving in pieces ([`Command::Restore`]).
    restoring: Vec<u8>,
    /// Node names whose certificates no node accepts any more (removed hubs and spokes).
    pub revoked: std::collections::BTreeSet<String>,
}

impl ClusterState {
    pub fn key_by_digest(&self, digest: &str) -> Option<&ApiKey> {
        self.keys.get(digest)
    }

    pub fn key_by_name(&self, name: &str) -> Option<&ApiKey> {
        self.names.get(name).and_then(|d| self.keys.get(d))
    }

    /// A stored response, if `owner` may see it.
    pub fn response(&self, id: &str, owner: &str) -> Option<&StoredResponse> {
        self.responses.get(id).filter(|r| r.owner == owner)
    }

    /// The conversation that ends with response `id`, oldest first (bounded by the store).
    pub fn conversation(&self, id: &str, owner: &str) -> Option<Vec<&StoredResponse>> {
        let mut chain = Vec::new();
        let mut next = Some(id.to_string());
        while let Some(cur) = next {
            let r = self.response(&cur, owner)?;
            next = r.previous.clone();
            chain.push(r);
            if chain.len() > RESPONSES_KEEP {
                return None;
            }
        }
        chain.reverse();
        Some(chain)
    }

    pub fn join_token(&self, digest: &str) -> Option<&JoinToken> {
        self.join_tokens.get(digest)
    }

    pub fn outstanding_reservations(&self) -> usize {
        self.reservations.len()
    }

    /// Applies one proposal; the same proposal id applies once.
    pub fn apply(&mut self, p: &Proposal) -> CommandResult {
        if let Command::Batch(all) = &p.command {
            // Each proposal of the batch is remembered (and deduplicated) by its own id.
            return CommandResult::Batch(all.iter().map(|q| self.apply(q)).collect());
        }
        if let Some((_, r)) = self.applied.get(&p.id) {
            return r.clone();
        }
        self.expire(p.now_ms);
        let result = self.apply_command(&p.id, p.now_ms, &p.command);
        self.applied.insert(p.id.clone(), (p.now_ms, result.clone()));
        self.applied_order.push_back(p.id.clone());
        result
    }

    fn expire(&mut self, now: u64) {
        while let Some(id) = self.applied_order.front() {
            let old = self.applied.get(id).is_none_or(|(at, _)| now.saturating_sub(*at) > DEDUP_MS);
            if !old && self.applied_order.len() <= DEDUP_KEEP {
                break;
            }
            if let Some(id) = self.applied_order.pop_front() {
                self.applied.remove(&id);
            }
        }
        while let Some((at, _)) = self.response_order.front() {
            if now.saturating_sub(*at) <= RESPONSE_TTL_MS && self.response_order.len() <= RESPONSES_KEEP {
                break;
            }
            if let Some((_, id)) = self.response_order.pop_front() {
                self.forget_response(&id);
            }
        }
        self.join_tokens.retain(|_, t| t.expires_ms > now && t.uses_left > 0);
        if now.saturating_sub(self.reservations_since_ms) > RESERVATION_MS {
            let stale: Vec<String> = self
                .reservations
                .iter()
                .filter(|(_, r)| now.saturating_sub(r.at_ms) > RESERVATION_MS)
                .map(|(id, _)| id.clone())
                .collect();
            for id in stale {
                self.settle(&id, None);
            }
            self.reservations_since_ms = self.reservations.values().map(|r| r.at_ms).min().unwrap_or(u64::MAX);
        }
    }

    fn forget_response(&mut self, id: &str) -> bool {
        let Some(r) = self.responses.remove(id) else { return false };
        self.responses_bytes = self.responses_bytes.saturating_sub(r.bytes());
        if let Some(k) = self.keys.get_mut(&r.owner) {
            k.stored_count = k.stored_count.saturating_sub(1);
            k.stored_bytes = k.stored_bytes.saturating_sub(r.bytes());
        }
        true
    }

    fn audit(&mut self, now: u64, actor: &str, what: String) {
        let (actor, what) = (bounded(actor, MAX_NAME), bounded(&what, MAX_AUDIT_TEXT));
        self.audit.push_back(AuditEntry { at_ms: now, actor, what });
        while self.audit.len() > AUDIT_KEEP {
            self.audit.pop_front();
        }
    }

    fn apply_command(&mut self, id: &str, now: u64, c: &Command) -> CommandResult {
        match c {
            Command::CreateKey { name, digest, limits } => {
                if name.is_empty() || name.len() > MAX_NAME {
                    return CommandResult::Invalid(format!("a key name has 1 to {MAX_NAME} bytes"));
                }
                if self.names.contains_key(name) {
                    return CommandResult::Invalid(format!("a key named {name:?} exists"));
                }
                if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return CommandResult::Invalid("digest must be 64 hex digits".into());
                }
                let key = ApiKey {
                    name: name.clone(),
                    digest: digest.clone(),
                    limits: limits.clone(),
                    created_ms: now,
                    ..Default::default()
                };
                self.names.insert(name.clone(), digest.clone());
                self.keys.insert(digest.clone(), key);
                self.audit(now, "admin", format!("key created: {name}"));
                CommandResult::Done
            }
            Command::RevokeKey { name } => match self.names.get(name).and_then(|d| self.keys.get_mut(d)) {
                Some(k) => {
                    k.revoked = true;
                    self.audit(now, "admin", format!("key revoked: {name}"));
                    CommandResult::Done
                }
                None => CommandResult::NotFound(format!("no key named {name:?}")),
            },
            Command::SetLimits { name, limits } => match self.names.get(name).and_then(|d| self.keys.get_mut(d)) {
                Some(k) if k.revoked => CommandResult::Invalid(format!("the key {name:?} is revoked")),
                Some(k) => {
                    k.limits = limits.clone();
                    self.audit(now, "admin", format!("key limits changed: {name}"));
                    CommandResult::Done
                }
                None => CommandResult::NotFound(format!("no key named {name:?}")),
            },
            Command::Admit { digest, model, tokens } => self.admit(id, now, digest, model, *tokens),
            Command::Settle { admitted, prompt_tokens, completion_tokens } => {
                self.settle(admitted, Some((*prompt_tokens, *completion_tokens)));
                CommandResult::Done
            }
            Command::Audit { actor, what } => {
                self.audit(now, actor, what.clone());
                CommandResult::Done
            }
            Command::StoreResponse { response, quota } => self.store_response(now, response, quota),
            Command::DeleteResponse { id, owner } => match self.responses.get(id) {
                Some(r) if &r.owner == owner => {
                    self.forget_response(id);
                    CommandResult::Done
                }
                _ => CommandResult::NotFound(format!("no stored response {id:?}")),
            },
            Command::CreateJoinToken { digest, ttl_ms, uses } => {
                if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return CommandResult::Invalid("digest must be 64 hex digits".into());
                }
                let token = JoinToken {
                    digest: digest.clone(),
                    created_ms: now,
                    expires_ms: now.saturating_add(*ttl_ms),
                    uses_left: *uses,
                };
                self.join_tokens.insert(digest.clone(), token);
                self.audit(now, "admin", format!("join token created: {uses} use(s), {} s", ttl_ms / 1000));
                CommandResult::Done
            }
            Command::Join { token_digest, spoke } => self.join(now, token_digest, spoke),
            Command::RegisterAdapter { model, name, spoke } => {
                if [model, name, spoke].iter().any(|s| s.len() > MAX_NAME) {
                    return CommandResult::Invalid(format!(
                        "adapter, model and spoke names have at most {MAX_NAME} bytes"
                    ));
                }
                let spokes = self.adapters.entry(format!("{model}:{name}")).or_default();
                if !spokes.contains(spoke) {
                    spokes.push(spoke.clone());
                    self.audit(now, &format!("spoke:{spoke}"), format!("adapter {model}:{name} served by {spoke}"));
                }
                CommandResult::Done
            }
            Command::Batch(_) => CommandResult::Invalid("a batch inside a batch".into()),
            Command::RevokeNode { name, revoked } => {
                if name.is_empty() || name.len() > MAX_NAME || name == "nave-hub" {
                    return CommandResult::Invalid(format!("{name:?} is not a node name"));
                }
                let changed = if *revoked { self.revoked.insert(name.clone()) } else { self.revoked.remove(name) };
                if changed {
                    let what = if *revoked { "revoked" } else { "accepted again" };
                    self.audit(now, "admin", format!("certificates of node {name} {what}"));
                }
                CommandResult::Done
            }
            Command::Restore { offset, chunk, last } => {
                if !self.is_new() {
                    return CommandResult::Invalid(
                        "this cluster's state is in use (keys that served requests, spokes, tokens or responses): restore into a new cluster"
                            .into(),
                    );
                }
                if *offset == 0 {
                    self.restoring.clear();
                }
                if *offset != self.restoring.len() as u64 {
                    return CommandResult::Invalid(format!(
                        "a restore piece at offset {offset}; the next one starts at {}",
                        self.restoring.len()
                    ));
                }
                if self.restoring.len() as u64 + chunk.len() as u64 > MAX_BACKUP_BYTES {
                    self.restoring = Vec::new();
                    return CommandResult::Invalid(format!("a backed-up state has at most {MAX_BACKUP_BYTES} bytes"));
                }
                self.restoring.extend_from_slice(chunk);
                if !*last {
                    return CommandResult::Done;
                }
                let bytes = std::mem::take(&mut self.restoring);
                match ClusterState::from_backup_bytes(&bytes) {
                    Ok(restored) => {
                        let (keys, spokes) = (restored.keys.len(), restored.spokes.len());
                        *self = restored;
                        self.audit(now, "admin", format!("state restored from a backup: {keys} keys, {spokes} spokes"));
                        CommandResult::Done
                    }
                    Err(why) => CommandResult::Invalid(why),
                }
            }
            Command::RemoveSpoke { id } => match self.spokes.remove(id) {
                Some(_) => {
                    self.audit(now, "admin", format!("spoke removed: {id}"));
                    CommandResult::Done
                }
                None => CommandResult::NotFound(format!("no joined spoke {id:?}")),
            },
        }
    }

    fn join(&mut self, now: u64, token_digest: &str, spoke: &SpokeRecord) -> CommandResult {
        if let Err(why) = spoke.check() {
            return CommandResult::Invalid(why);
        }
        // Expired and used-up tokens were dropped by `expire` before this command.
        let Some(token) = self.join_tokens.get_mut(token_digest) else {
            return CommandResult::Invalid(
                "the join token is unknown, expired or used up; ask an admin for a new one (nave admin token create)"
                    .into(),
            );
        };
        if self.spokes.contains_key(&spoke.id) {
            return CommandResult::Invalid(format!(
                "a spoke named {:?} has joined already; pick another --id",
                spoke.id
            ));
        }
        token.uses_left = token.uses_left.saturating_sub(1);
        let mut record = spoke.clone();
        record.joined_ms = now;
        self.spokes.insert(spoke.id.clone(), record);
        let actor = format!("join-token:{}", &token_digest[..token_digest.len().min(8)]);
        self.audit(now, &actor, format!("spoke joined: {} at {}", spoke.id, spoke.quic));
        CommandResult::Done
    }

    fn admit(&mut self, id: &str, now: u64, digest: &str, model: &str, tokens: u64) -> CommandResult {
        let (minute, day) = (now / MINUTE_MS, now / DAY_MS);
        let Some(k) = self.keys.get_mut(digest) else {
            return CommandResult::Refused { reason: Refusal::UnknownKey, retry_after_ms: 0 };
        };
        if k.revoked {
            return CommandResult::Refused { reason: Refusal::Revoked, retry_after_ms: 0 };
        }
        if k.minute != minute {
            k.minute = minute;
            k.minute_requests = 0;
            k.minute_tokens = 0;
        }
        if k.day != day {
            k.day = day;
            k.day_used = 0;
        }
        let next_minute = (minute.saturating_add(1)).saturating_mul(MINUTE_MS).saturating_sub(now);
        let next_day = (day.saturating_add(1)).saturating_mul(DAY_MS).saturating_sub(now);
        // Saturating sums: a bound near 2^64 is over any limit, never a wrap past it.
        if k.limits.max_concurrent.is_some_and(|c| k.in_flight >= c) {
            return CommandResult::Refused { reason: Refusal::Concurrency, retry_after_ms: 1_000 };
        }
        if k.limits.rpm.is_some_and(|r| k.minute_requests >= r) {
            return CommandResult::Refused { reason: Refusal::RequestRate, retry_after_ms: next_minute };
        }
        if k.limits.tpm.is_some_and(|t| k.minute_tokens.saturating_add(tokens) > t) {
            return CommandResult::Refused { reason: Refusal::TokenRate, retry_after_ms: next_minute };
        }
        if k.limits.daily_tokens.is_some_and(|d| k.day_used.saturating_add(k.reserved).saturating_add(tokens) > d) {
            return CommandResult::Refused { reason: Refusal::DailyBudget, retry_after_ms: next_day };
        }
        k.minute_requests = k.minute_requests.saturating_add(1);
        k.minute_tokens = k.minute_tokens.saturating_add(tokens);
        k.reserved = k.reserved.saturating_add(tokens);
        k.total_requests = k.total_requests.saturating_add(1);
        k.in_flight = k.in_flight.saturating_add(1);
        let name = k.name.clone();
        let model = bounded(model, MAX_NAME);
        self.reservations
            .insert(id.to_string(), Reservation { digest: digest.to_string(), model, tokens, minute, day, at_ms: now });
        self.reservations_since_ms = self.reservations_since_ms.min(now);
        CommandResult::Admitted { key_name: name }
    }

    /// Releases a reservation and records the request's usage: `used` (prompt, completion)
    /// tokens exactly as served, or the whole reservation when it expired unsettled (its hub
    /// died: charged the bound, so a crash never makes tokens free). Unknown ids (settled
    /// already, or expired) change nothing.
    fn settle(&mut self, admitted: &str, used: Option<(u64, u64)>) {
        let Some(r) = self.reservations.remove(admitted) else { return };
        let Some(k) = self.keys.get_mut(&r.digest) else { return };
        let (prompt, completion) = used.unwrap_or((0, r.tokens));
        let used = prompt.saturating_add(completion);
        k.reserved = k.reserved.saturating_sub(r.tokens);
        k.in_flight = k.in_flight.saturating_sub(1);
        if k.day == r.day {
            k.day_used = k.day_used.saturating_add(used);
        }
        if k.minute == r.minute {
            k.minute_tokens = k.minute_tokens.saturating_sub(r.tokens).saturating_add(used);
        }
        k.total_tokens = k.total_tokens.saturating_add(used);
        let day = k.usage.entry(r.day).or_default();
        let model =
            if day.contains_key(&r.model) || day.len() < USAGE_MODELS_PER_DAY { r.model } else { "other".into() };
        let u = day.entry(model).or_default();
        u.requests = u.requests.saturating_add(1);
        u.prompt_tokens = u.prompt_tokens.saturating_add(prompt);
        u.completion_tokens = u.completion_tokens.saturating_add(completion);
        let oldest = r.day.saturating_sub(USAGE_DAYS - 1);
        while k.usage.first_key_value().is_some_and(|(d, _)| *d < oldest) {
            k.usage.pop_first();
        }
    }

    fn store_response(&mut self, now: u64, response: &StoredResponse, quota: &ResponseQuota) -> CommandResult {
        if self.responses.contains_key(&response.id) {
            return CommandResult::Invalid(format!("response {} exists", response.id));
        }
        if let Err(why) = response.check() {
            return CommandResult::Invalid(why);
        }
        let bytes = response.bytes();
        if bytes > quota.max_response_bytes {
            return CommandResult::Invalid(format!(
                "a stored response has at most {} bytes; this one has {bytes}",
                quota.max_response_bytes
            ));
        }
        if self.responses_bytes.saturating_add(bytes) > quota.max_total_bytes {
            return CommandResult::Refused { reason: Refusal::ResponseQuota, retry_after_ms: 60_000 };
        }
        // The admin key's responses (owner "admin") have no key record and no quota.
        if let Some(k) = self.keys.get_mut(&response.owner) {
            if k.stored_count >= quota.max_count || k.stored_bytes.saturating_add(bytes) > quota.max_bytes {
                return CommandResult::Refused { reason: Refusal::ResponseQuota, retry_after_ms: 0 };
            }
            k.stored_count += 1;
            k.stored_bytes = k.stored_bytes.saturating_add(bytes);
        }
        self.responses_bytes = self.responses_bytes.saturating_add(bytes);
        let mut r = response.clone();
        r.created_ms = now;
        self.response_order.push_back((now, r.id.clone()));
        self.responses.insert(r.id.clone(), r);
        CommandResult::Done
    }

    /// Whether nothing has been used in this state yet (a new cluster, which a backup may
    /// be restored into): keys made but never used (the app key `nave up` makes) and audit
    /// entries do not count; the restore replaces them.
    pub fn is_new(&self) -> bool {
        self.keys.values().all(|k| k.total_requests == 0)
            && self.spokes.is_empty()
            && self.join_tokens.is_empty()
            && self.responses.is_empty()
            && self.adapters.is_empty()
    }

    /// The state as a backup carries it (bincode, the snapshot's encoding).
    pub fn backup_bytes(&self) -> Vec<u8> {
        bincode::serialize(self).unwrap_or_default()
    }

    /// A backed-up state, decoded with a size limit; an error says what is wrong.
    pub fn from_backup_bytes(bytes: &[u8]) -> Result<ClusterState, String> {
        use bincode::Options;
        if bytes.len() as u64 > MAX_BACKUP_BYTES {
            return Err(format!("a backed-up state has at most {MAX_BACKUP_BYTES} bytes"));
        }
        bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .with_limit(MAX_BACKUP_BYTES)
            .deserialize(bytes)
            .map_err(|e| format!("the backed-up state does not decode (another version of Nave?): {e}"))
    }

    /// Bytes the stored responses hold (their text), for the snapshot-size metric.
    pub fn stored_response_bytes(&self) -> u64 {
        self.responses_bytes
    }
}

impl StoredResponse {
    /// Its size as quotas count it: the text it carries.
    pub fn bytes(&self) -> u64 {
        let call = |c: &FunctionCall| c.call_id.len() + c.name.len() + c.arguments.len();
        let turns: usize = self.input.iter().map(|t| t.role.len() + t.content.len()).sum();
        let tools: usize = self
            .input_tools
            .iter()
            .map(|t| t.calls.iter().map(call).sum::<usize>() + t.answers.as_ref().map_or(0, String::len))
            .sum();
        let calls: usize = self.calls.iter().map(call).sum();
        (turns + tools + calls + self.output.len() + self.id.len() + self.previous.as_ref().map_or(0, String::len))
            as u64
    }

    /// Why a replica must not store it, if it must not: names and counts out of bounds.
    fn check(&self) -> Result<(), String> {
        if self.id.len() > MAX_NAME || self.model.len() > MAX_NAME || self.spoke.len() > MAX_NAME {
            return Err(format!("ids and names have at most {MAX_NAME} bytes"));
        }
        if !self.input_tools.is_empty() && self.input_tools.len() != self.input.len() {
            return Err("the tools of the input are one per turn".into());
        }
        let calls = || self.input_tools.iter().flat_map(|t| &t.calls).chain(&self.calls);
        if calls().count() > MAX_STORED_CALLS {
            return Err(format!("a stored response holds at most {MAX_STORED_CALLS} function calls"));
        }
        let answers = self.input_tools.iter().filter_map(|t| t.answers.as_deref());
        if calls().flat_map(|c| [&c.call_id, &c.name]).map(String::as_str).chain(answers).any(|s| s.len() > MAX_NAME) {
            return Err(format!("call ids and function names have at most {MAX_NAME} bytes"));
        }
        Ok(())
    }
}

impl SpokeRecord {
    /// What a join may carry: bounded names, labels and models.
    pub fn check(&self) -> Result<(), String> {
        let name_ok = |s: &str| !s.is_empty() && s.len() <= MAX_NAME;
        if !name_ok(&self.id) || self.quic.len() > MAX_NAME || self.http.len() > MAX_NAME {
            return Err(format!("a spoke id and its addresses have 1 to {MAX_NAME} bytes"));
        }
        if self.models.len() > MAX_SPOKE_MODELS || !self.models.iter().all(|m| name_ok(m)) {
            return Err(format!("at most {MAX_SPOKE_MODELS} model names of 1 to {MAX_NAME} bytes"));
        }
        if self.labels.len() > MAX_LABELS
            || self.labels.iter().any(|(k, v)| k.is_empty() || k.len() > MAX_LABEL_TEXT || v.len() > MAX_LABEL_TEXT)
        {
            return Err(format!("at most {MAX_LABELS} labels, keys and values of at most {MAX_LABEL_TEXT} bytes"));
        }
        if !self.cost_weight.is_finite() || self.cost_weight < 0.0 {
            return Err("cost_weight must be a finite number of at least 0".into());
        }
        Ok(())
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
fn bounded(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn run(s: &mut ClusterState, id: &str, now_ms: u64, command: Command) -> CommandResult {
        s.apply(&Proposal { id: id.into(), now_ms, command })
    }

    fn with_key(limits: Limits) -> ClusterState {
        let mut s = ClusterState::default();
        assert_eq!(
            run(&mut s, "c", 0, Command::CreateKey { name: "k".into(), digest: digest(1), limits }),
            CommandResult::Done
        );
        s
    }

    #[test]
    fn budgets_hold_whatever_the_order_of_admit_and_settle() {
        // Exhaustive over small interleavings: reservations plus usage never pass the budget.
        for seed in 0..200u64 {
            let mut s = with_key(Limits { daily_tokens: Some(100), ..Default::default() });
            let mut open: Vec<(String, u64)> = Vec::new();
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for step in 0..60 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x % 3 != 0 || open.is_empty() {
                    let id = format!("a{step}");
                    let tokens = 1 + x % 40;
                    if let CommandResult::Admitted { .. } =
                        run(&mut s, &id, 1000 + step, Command::Admit { digest: digest(1), model: "m".into(), tokens })
                    {
                        open.push((id, tokens));
                    }
                } else {
                    let (id, tokens) = open.remove((x as usize / 3) % open.len());
                    run(
                        &mut s,
                        &format!("s{step}"),
                        1000 + step,
                        Command::Settle {
                            admitted: id,
                            prompt_tokens: (x % 3).min(tokens),
                            completion_tokens: (x % 50).min(tokens - (x % 3).min(tokens)),
                        },
                    );
                }
                let k = s.key_by_name("k").cloned().unwrap_or_default();
                assert!(k.day_used + k.reserved <= 100, "seed {seed} step {step}: {k:?}");
            }
        }
    }

    #[test]
    fn rate_limits_follow_the_command_time() {
        let mut s = with_key(Limits { rpm: Some(2), ..Default::default() });
        let admit = |s: &mut ClusterState, id: &str, t: u64| {
            run(s, id, t, Command::Admit { digest: digest(1), model: "m".into(), tokens: 1 })
        };
        assert!(matches!(admit(&mut s, "1", 60_000), CommandResult::Admitted { .. }));
        assert!(matches!(admit(&mut s, "2", 60_500), CommandResult::Admitted { .. }));
        match admit(&mut s, "3", 61_000) {
            CommandResult::Refused { reason: Refusal::RequestRate, retry_after_ms } => {
                assert_eq!(retry_after_ms, 59_000)
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(admit(&mut s, "4", 120_000), CommandResult::Admitted { .. }), "a new minute");
    }

    #[test]
    fn retried_commands_apply_once() {
        let mut s = with_key(Limits { daily_tokens: Some(10), ..Default::default() });
        let a = run(&mut s, "same", 5, Command::Admit { digest: digest(1), model: "m".into(), tokens: 8 });
        let b = run(&mut s, "same", 6, Command::Admit { digest: digest(1), model: "m".into(), tokens: 8 });
        assert_eq!(a, b);
        assert_eq!(s.key_by_name("k").map(|k| k.reserved), Some(8), "reserved once");
        run(&mut s, "settle", 7, Command::Settle { admitted: "same".into(), prompt_tokens: 0, completion_tokens: 3 });
        run(
            &mut s,
            "settle-again",
            8,
            Command::Settle { admitted: "same".into(), prompt_tokens: 0, completion_tokens: 3 },
        );
        let k = s.key_by_name("k").cloned().unwrap_or_default();
        assert_eq!((k.reserved, k.day_used), (0, 3));
    }

    #[test]
    fn a_batch_applies_each_proposal_once_in_order() {
        let mut s = with_key(Limits { daily_tokens: Some(10), ..Default::default() });
        let admit = |id: &str, t: u64| Proposal {
            id: id.into(),
            now_ms: t,
            command: Command::Admit { digest: digest(1), model: "m".into(), tokens: 4 },
        };
        // "x" was committed alone before; the batch carries it again (a retry) with two more.
        run(&mut s, "x", 1, admit("x", 1).command);
        let batch = Command::Batch(vec![admit("x", 1), admit("y", 2), admit("z", 3)]);
        let CommandResult::Batch(results) = run(&mut s, "batch-1", 3, batch.clone()) else {
            panic!("a batch answers with a batch")
        };
        assert!(matches!(results[0], CommandResult::Admitted { .. }), "the retry gets the first answer");
        assert!(matches!(results[1], CommandResult::Admitted { .. }));
        assert!(
            matches!(results[2], CommandResult::Refused { reason: Refusal::DailyBudget, .. }),
            "8 of 10 reserved: {:?}",
            results[2]
        );
        assert_eq!(s.key_by_name("k").map(|k| k.reserved), Some(8), "x counted once");
        // The whole batch retried (its forward timed out, say) changes nothing.
        let again = run(&mut s, "batch-2", 4, batch);
        assert_eq!(again, CommandResult::Batch(results));
        assert_eq!(s.key_by_name("k").map(|k| k.reserved), Some(8));
    }

    #[test]
    fn unknown_and_revoked_keys_are_refused() {
        let mut s = with_key(Limits::default());
        assert!(matches!(
            run(&mut s, "x", 1, Command::Admit { digest: digest(9), model: "m".into(), tokens: 1 }),
            CommandResult::Refused { reason: Refusal::UnknownKey, .. }
        ));
        run(&mut s, "r", 2, Command::RevokeKey { name: "k".into() });
        assert!(matches!(
            run(&mut s, "y", 3, Command::Admit { digest: digest(1), model: "m".into(), tokens: 1 }),
            CommandResult::Refused { reason: Refusal::Revoked, .. }
        ));
        assert!(matches!(
            run(&mut s, "z", 4, Command::CreateKey { name: "k".into(), digest: digest(2), limits: Limits::default() }),
            CommandResult::Invalid(_)
        ));
    }

    #[test]
    fn stored_responses_chain_and_stay_private() {
        let mut s = ClusterState::default();
        let resp = |id: &str, prev: Option<&str>, owner: &str| StoredResponse {
            id: id.into(),
            owner: owner.into(),
            model: "m".into(),
            previous: prev.map(String::from),
            created_ms: 0,
            input: vec![Turn { role: "user".into(), content: id.into() }],
            output: format!("re {id}"),
            input_tokens: 1,
            output_tokens: 1,
            spoke: "s1".into(),
            ..Default::default()
        };
        run(
            &mut s,
            "1",
            10,
            Command::StoreResponse { response: Box::new(resp("a", None, "alice")), quota: DEFAULT_RESPONSE_QUOTA },
        );
        run(
            &mut s,
            "2",
            20,
            Command::StoreResponse { response: Box::new(resp("b", Some("a"), "alice")), quota: DEFAULT_RESPONSE_QUOTA },
        );
        let chain: Vec<_> = s.conversation("b", "alice").unwrap_or_default().iter().map(|r| r.id.clone()).collect();
        assert_eq!(chain, vec!["a", "b"]);
        assert!(s.response("b", "mallory").is_none(), "another key cannot read it");
        assert!(s.conversation("b", "mallory").is_none());
        run(&mut s, "3", 20 + RESPONSE_TTL_MS + 11, Command::Audit { actor: "test".into(), what: "later".into() });
        assert!(s.response("a", "alice").is_none() && s.response("b", "alice").is_none(), "expired");
    }

    #[test]
    fn unsettled_reservations_expire() {
        let mut s = with_key(Limits { daily_tokens: Some(10), ..Default::default() });
        run(&mut s, "a", 1_000, Command::Admit { digest: digest(1), model: "m".into(), tokens: 10 });
        assert!(matches!(
            run(&mut s, "b", 2_000, Command::Admit { digest: digest(1), model: "m".into(), tokens: 1 }),
            CommandResult::Refused { .. }
        ));
        run(&mut s, "tick", 1_000 + RESERVATION_MS + 1, Command::Audit { actor: "test".into(), what: "tick".into() });
        assert_eq!(s.outstanding_reservations(), 0);
    }

    /// Expiry scans only when a reservation may be stale. It must expire exactly what a
    /// scan on every command would, and so must a replica restored from a snapshot
    /// (which does not carry the bound).
    #[test]
    fn reservations_expire_alike_on_a_restored_replica() {
        struct Replicas {
            a: ClusterState,
            /// The reference: its bound is reset before every command, so it always scans.
            always: ClusterState,
            restored: Option<ClusterState>,
        }
        impl Replicas {
            fn run(&mut self, id: &str, now: u64, command: Command) {
                let ra = run(&mut self.a, id, now, command.clone());
                self.always.reservations_since_ms = 0;
                let mut all = vec![&mut self.always];
                all.extend(self.restored.as_mut());
                for other in all {
                    assert_eq!(run(other, id, now, command.clone()), ra, "{id}");
                    assert_eq!(other.outstanding_reservations(), self.a.outstanding_reservations(), "{id}");
                    let (ka, ko) =
                        (self.a.key_by_digest(&digest(1)).expect("key"), other.key_by_digest(&digest(1)).expect("key"));
                    assert_eq!(
                        (ka.reserved, ka.day_used, ka.total_tokens),
                        (ko.reserved, ko.day_used, ko.total_tokens),
                        "{id}"
                    );
                }
            }
        }
        let a = with_key(Limits { daily_tokens: Some(1_000_000), ..Default::default() });
        let mut r = Replicas { always: a.clone(), a, restored: None };
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut now = 1_000;
        let mut open: Vec<String> = Vec::new();
        for step in 0..3_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly small steps, now and then one of half the reservation lifetime.
            now += if x.is_multiple_of(97) { RESERVATION_MS / 2 + x % 1_000 } else { x % 5_000 };
            if step == 1_000 {
                let bytes = bincode::serialize(&r.a).expect("snapshot");
                r.restored = Some(bincode::deserialize(&bytes).expect("restore"));
            }
            if x.is_multiple_of(3) && !open.is_empty() {
                let admitted = open.swap_remove((x as usize / 3) % open.len());
                r.run(
                    &format!("s{step}"),
                    now,
                    Command::Settle { admitted, prompt_tokens: 0, completion_tokens: x % 4 },
                );
            } else {
                open.push(format!("r{step}"));
                r.run(
                    &format!("r{step}"),
                    now,
                    Command::Admit { digest: digest(1), model: "m".into(), tokens: 1 + x % 8 },
                );
            }
        }
        let admitted = r.a.key_by_digest(&digest(1)).expect("key").total_requests as usize;
        assert!(
            r.a.outstanding_reservations() < admitted / 4,
            "{} of {admitted} outstanding",
            r.a.outstanding_reservations()
        );
        // Every reservation settled, then a scan with none left; a new one still expires.
        for (i, admitted) in open.drain(..).enumerate() {
            r.run(&format!("end{i}"), now, Command::Settle { admitted, prompt_tokens: 0, completion_tokens: 0 });
        }
        now += RESERVATION_MS + 1;
        r.run("empty-scan", now, Command::Audit { actor: "test".into(), what: "tick".into() });
        r.run("late", now, Command::Admit { digest: digest(1), model: "m".into(), tokens: 5 });
        assert_eq!(r.a.outstanding_reservations(), 1);
        r.run("expired", now + RESERVATION_MS + 1, Command::Audit { actor: "test".into(), what: "tick".into() });
        assert_eq!(r.a.outstanding_reservations(), 0);
    }

    fn spoke(id: &str) -> SpokeRecord {
        SpokeRecord {
            id: id.into(),
            quic: "127.0.0.1:7200".into(),
            http: "127.0.0.1:9200".into(),
            models: vec!["m".into()],
            cost_weight: 1.0,
            labels: BTreeMap::new(),
            joined_ms: 0,
        }
    }

    #[test]
    fn join_tokens_are_used_once_and_expire() {
        let mut s = ClusterState::default();
        run(&mut s, "t", 0, Command::CreateJoinToken { digest: digest(7), ttl_ms: 60_000, uses: 1 });
        assert_eq!(
            run(&mut s, "j1", 1_000, Command::Join { token_digest: digest(7), spoke: spoke("s3") }),
            CommandResult::Done
        );
        assert_eq!(s.spokes["s3"].joined_ms, 1_000);
        let again = run(&mut s, "j2", 2_000, Command::Join { token_digest: digest(7), spoke: spoke("s4") });
        assert!(matches!(again, CommandResult::Invalid(ref m) if m.contains("used up")), "{again:?}");
        assert!(!s.spokes.contains_key("s4"), "a refused join registers nothing");

        run(&mut s, "t2", 3_000, Command::CreateJoinToken { digest: digest(8), ttl_ms: 1_000, uses: 5 });
        let taken = run(&mut s, "j3", 3_100, Command::Join { token_digest: digest(8), spoke: spoke("s3") });
        assert!(matches!(taken, CommandResult::Invalid(ref m) if m.contains("s3")), "{taken:?}");
        assert_eq!(s.join_token(&digest(8)).map(|t| t.uses_left), Some(5), "a refused join keeps the use");
        let late = run(&mut s, "j4", 4_001, Command::Join { token_digest: digest(8), spoke: spoke("s5") });
        assert!(matches!(late, CommandResult::Invalid(_)), "expired: {late:?}");
        assert!(
            run(&mut s, "j5", 4_002, Command::Join { token_digest: digest(9), spoke: spoke("s6") })
                != CommandResult::Done
        );

        assert_eq!(run(&mut s, "r", 5_000, Command::RemoveSpoke { id: "s3".into() }), CommandResult::Done);
        assert!(s.spokes.is_empty());
    }

    #[test]
    fn changed_limits_hold_from_the_next_admission_and_keep_the_usage() {
        let mut s = with_key(Limits { daily_tokens: Some(100), ..Default::default() });
        let admit = |tokens| Command::Admit { digest: digest(1), model: "m".into(), tokens };
        assert!(matches!(run(&mut s, "a", 1_000, admit(60)), CommandResult::Admitted { .. }));
        run(&mut s, "sa", 1_001, Command::Settle { admitted: "a".into(), prompt_tokens: 30, completion_tokens: 30 });
        let lower = Limits { daily_tokens: Some(80), ..Default::default() };
        assert_eq!(
            run(&mut s, "l", 1_002, Command::SetLimits { name: "k".into(), limits: lower }),
            CommandResult::Done
        );
        // 60 used of the new 80: 21 no longer fits, 20 does.
        let refused = run(&mut s, "b", 1_003, admit(21));
        assert!(matches!(refused, CommandResult::Refused { reason: Refusal::DailyBudget, .. }), "{refused:?}");
        assert!(matches!(run(&mut s, "c2", 1_004, admit(20)), CommandResult::Admitted { .. }));
        let k = s.key_by_name("k").cloned().unwrap_or_default();
        assert_eq!((k.limits.daily_tokens, k.day_used), (Some(80), 60), "the usage stays counted");
        let unknown = run(&mut s, "u", 1_005, Command::SetLimits { name: "nope".into(), limits: Limits::default() });
        assert!(matches!(unknown, CommandResult::NotFound(_)), "{unknown:?}");
        run(&mut s, "r", 1_006, Command::RevokeKey { name: "k".into() });
        let revoked = run(&mut s, "l2", 1_007, Command::SetLimits { name: "k".into(), limits: Limits::default() });
        assert!(matches!(revoked, CommandResult::Invalid(ref m) if m.contains("revoked")), "{revoked:?}");
    }

    #[test]
    fn usage_counts_prompt_and_completion_by_day_and_model() {
        let mut s = with_key(Limits { daily_tokens: Some(100), ..Default::default() });
        let admit = |model: &str, tokens| Command::Admit { digest: digest(1), model: model.into(), tokens };
        assert!(matches!(run(&mut s, "a", 1_000, admit("m1", 60)), CommandResult::Admitted { .. }));
        run(&mut s, "sa", 1_001, Command::Settle { admitted: "a".into(), prompt_tokens: 30, completion_tokens: 20 });
        // 50 used: a bound of 51 no longer fits, 50 does.
        assert!(matches!(run(&mut s, "b", 1_002, admit("m2", 51)), CommandResult::Refused { .. }));
        let c = run(&mut s, "c2", 1_003, admit("m2", 50));
        assert!(matches!(c, CommandResult::Admitted { .. }), "{c:?} {:?}", s.key_by_name("k"));
        run(&mut s, "sc", 1_004, Command::Settle { admitted: "c2".into(), prompt_tokens: 5, completion_tokens: 0 });
        let k = s.key_by_name("k").cloned().unwrap_or_default();
        assert_eq!((k.day_used, k.total_tokens, k.reserved, k.in_flight), (55, 55, 0, 0));
        let day = &k.usage[&0];
        assert_eq!(day["m1"], DayUsage { requests: 1, prompt_tokens: 30, completion_tokens: 20 });
        assert_eq!(day["m2"], DayUsage { requests: 1, prompt_tokens: 5, completion_tokens: 0 });
        // Old days are dropped.
        for d in 1..=USAGE_DAYS + 5 {
            let id = format!("d{d}");
            run(&mut s, &id, d * DAY_MS, admit("m1", 1));
            run(
                &mut s,
                &format!("s{d}"),
                d * DAY_MS,
                Command::Settle { admitted: id, prompt_tokens: 1, completion_tokens: 0 },
            );
        }
        let k = s.key_by_name("k").cloned().unwrap_or_default();
        assert_eq!(k.usage.len() as u64, USAGE_DAYS);
        assert_eq!(k.usage.first_key_value().map(|(d, _)| *d), Some(6));
    }

    #[test]
    fn a_key_runs_at_most_max_concurrent_requests() {
        let mut s = with_key(Limits { max_concurrent: Some(2), ..Default::default() });
        let admit = |id: &str| Proposal {
            id: id.into(),
            now_ms: 10,
            command: Command::Admit { digest: digest(1), model: "m".into(), tokens: 5 },
        };
        assert!(matches!(s.apply(&admit("1")), CommandResult::Admitted { .. }));
        assert!(matches!(s.apply(&admit("2")), CommandResult::Admitted { .. }));
        assert!(matches!(s.apply(&admit("3")), CommandResult::Refused { reason: Refusal::Concurrency, .. }));
        run(&mut s, "s1", 11, Command::Settle { admitted: "1".into(), prompt_tokens: 1, completion_tokens: 1 });
        assert!(matches!(s.apply(&admit("4")), CommandResult::Admitted { .. }));
        // A reservation whose hub died expires and frees its place.
        run(&mut s, "tick", 10 + RESERVATION_MS + 1, Command::Audit { actor: "test".into(), what: "tick".into() });
        assert_eq!(s.key_by_name("k").map(|k| k.in_flight), Some(0));
    }

    #[test]
    fn stored_responses_keep_to_their_owners_quota() {
        let mut s = with_key(Limits::default());
        let resp = |id: &str, text: usize| StoredResponse {
            id: id.into(),
            owner: digest(1),
            model: "m".into(),
            previous: None,
            created_ms: 0,
            input: vec![],
            output: "x".repeat(text),
            input_tokens: 1,
            output_tokens: 1,
            spoke: "s1".into(),
            ..Default::default()
        };
        let quota = ResponseQuota { max_count: 2, max_bytes: 1_000, max_response_bytes: 600, max_total_bytes: 10_000 };
        let store = |s: &mut ClusterState, id: &str, text| {
            run(
                s,
                &format!("p{}", s.applied_order.len()),
                5,
                Command::StoreResponse { response: Box::new(resp(id, text)), quota },
            )
        };
        assert!(matches!(store(&mut s, "big", 700), CommandResult::Invalid(_)), "over the size cap");
        assert_eq!(store(&mut s, "a", 500), CommandResult::Done);
        assert!(matches!(store(&mut s, "b", 550), CommandResult::Refused { reason: Refusal::ResponseQuota, .. }));
        assert_eq!(store(&mut s, "c", 10), CommandResult::Done);
        assert!(matches!(store(&mut s, "d", 1), CommandResult::Refused { reason: Refusal::ResponseQuota, .. }));
        // Deleting frees its share; another owner cannot delete it.
        let del = |owner: String| Command::DeleteResponse { id: "a".into(), owner };
        assert!(matches!(run(&mut s, "x", 6, del(digest(2))), CommandResult::NotFound(_)));
        assert_eq!(run(&mut s, "y", 6, del(digest(1))), CommandResult::Done);
        assert_eq!(store(&mut s, "d", 1), CommandResult::Done);
        let k = s.key_by_name("k").cloned().unwrap_or_default();
        assert_eq!((k.stored_count, k.stored_bytes), (2, resp("c", 10).bytes() + resp("d", 1).bytes()));
        // Expiry gives the quota back too.
        run(&mut s, "late", 6 + RESPONSE_TTL_MS + 1, Command::Audit { actor: "test".into(), what: "tick".into() });
        let k = s.key_by_name("k").cloned().unwrap_or_default();
        assert_eq!((k.stored_count, k.stored_bytes), (0, 0));
    }

    #[test]
    fn stored_responses_keep_their_function_calls_within_bounds() {
        let mut s = with_key(Limits::default());
        let call =
            |id: &str, args: usize| FunctionCall { call_id: id.into(), name: "f".into(), arguments: "x".repeat(args) };
        let resp = StoredResponse {
            id: "r".into(),
            owner: digest(1),
            input: vec![Turn { role: "tool".into(), content: "21".into() }],
            input_tools: vec![TurnTools { calls: vec![], answers: Some("call_0".into()) }],
            calls: vec![call("call_1", 10), call("call_2", 20)],
            ..Default::default()
        };
        assert_eq!(resp.bytes(), (4 + 2) + 6 + (6 + 1 + 10) + (6 + 1 + 20) + 1);
        let store = |s: &mut ClusterState, id: &str, r: StoredResponse| {
            let command = Command::StoreResponse { response: Box::new(r), quota: DEFAULT_RESPONSE_QUOTA };
            run(s, id, 5, command)
        };
        assert_eq!(store(&mut s, "p1", resp.clone()), CommandResult::Done);
        assert_eq!(
            s.conversation("r", &digest(1)).unwrap_or_default(),
            vec![&StoredResponse { created_ms: 5, ..resp.clone() }]
        );
        let k = s.key_by_name("k").cloned().unwrap_or_default();
        assert_eq!(k.stored_bytes, resp.bytes(), "calls count against the quota");
        for (i, bad) in [
            StoredResponse { input_tools: vec![TurnTools::default(); 2], ..resp.clone() },
            StoredResponse { calls: vec![call(&"c".repeat(MAX_NAME + 1), 1)], ..resp.clone() },
            StoredResponse { calls: vec![call("c", 1); MAX_STORED_CALLS + 1], ..resp.clone() },
        ]
        .into_iter()
        .enumerate()
        {
            let r = StoredResponse { id: format!("bad{i}"), ..bad };
            assert!(matches!(store(&mut s, &format!("q{i}"), r), CommandResult::Invalid(_)), "{i}");
        }
    }

    /// No committed command can panic `apply` on any replica: arbitrary sequences of every
    /// command with extreme numbers (run in debug builds, where overflow panics), and
    /// replicas that apply the same log agree.
    #[test]
    fn apply_never_panics_and_replicas_agree() {
        let extremes = [0, 1, 2, 59_999, 60_000, DAY_MS - 1, u64::MAX / 2, u64::MAX - 1, u64::MAX];
        for seed in 0..40u64 {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let mut a = ClusterState::default();
            let mut ids: Vec<String> = Vec::new();
            let mut log = Vec::new();
            for step in 0..400 {
                let r = next();
                let num =
                    |r: u64| if r.is_multiple_of(3) { extremes[(r / 3) as usize % extremes.len()] } else { r % 1_000 };
                let small = |r: u64| (r % 4) as u32;
                let limits = Limits {
                    rpm: (r.is_multiple_of(2)).then(|| (num(r >> 3) as u32).max(small(r))),
                    tpm: (r.is_multiple_of(3)).then(|| num(r >> 5)),
                    daily_tokens: (r.is_multiple_of(5)).then(|| num(r >> 7)),
                    max_concurrent: (r.is_multiple_of(7)).then(|| small(r >> 9)),
                };
                let id = if !ids.is_empty() && r.is_multiple_of(4) {
                    ids[(r >> 11) as usize % ids.len()].clone()
                } else {
                    format!("c{step}")
                };
                let command = match next() % 14 {
                    0 => Command::CreateKey { name: format!("k{}", r % 5), digest: digest((r % 5) as u8), limits },
                    1 => Command::RevokeKey { name: format!("k{}", r % 6) },
                    2..=4 => Command::Admit { digest: digest((r % 6) as u8), model: "m".into(), tokens: num(r >> 13) },
                    5..=6 => Command::Settle {
                        admitted: ids.get((r >> 3) as usize % ids.len().max(1)).cloned().unwrap_or_default(),
                        prompt_tokens: num(r >> 17),
                        completion_tokens: num(r >> 23),
                    },
                    7 => Command::StoreResponse {
                        response: Box::new(StoredResponse {
                            id: format!("r{}", r % 9),
                            owner: digest((r % 6) as u8),
                            model: "m".into(),
                            previous: None,
                            created_ms: num(r >> 5),
                            input: vec![],
                            output: "y".repeat((r % 300) as usize),
                            input_tokens: num(r >> 7),
                            output_tokens: num(r >> 9),
                            spoke: "s".into(),
                            incomplete: r % 2 == 0,
                            // Calls sometimes; tools for turns it does not have (refused)
                            // now and then.
                            input_tools: vec![TurnTools::default(); (r % 5 == 0) as usize],
                            calls: vec![
                                FunctionCall {
                                    call_id: format!("call_{r}"),
                                    name: "f".into(),
                                    arguments: "{}".repeat((r % 50) as usize),
                                };
                                (r % 3) as usize
                            ],
                        }),
                        quota: ResponseQuota {
                            max_count: small(r >> 3),
                            max_bytes: num(r >> 11),
                            max_response_bytes: num(r >> 13),
                            max_total_bytes: num(r >> 15),
                        },
                    },
                    8 => Command::DeleteResponse { id: format!("r{}", r % 9), owner: digest((r % 6) as u8) },
                    9 => Command::CreateJoinToken { digest: digest(9), ttl_ms: num(r >> 3), uses: small(r >> 5) },
                    10 => Command::Join { token_digest: digest(9), spoke: spoke(&format!("s{}", r % 3)) },
                    11 => Command::RevokeNode { name: format!("s{}", r % 3), revoked: r.is_multiple_of(2) },
                    12 => Command::SetLimits { name: format!("k{}", r % 6), limits },
                    _ => Command::Batch(vec![Proposal {
                        id: format!("b{step}"),
                        now_ms: num(r >> 19),
                        command: Command::Admit { digest: digest(1), model: "m".into(), tokens: num(r >> 21) },
                    }]),
                };
                ids.push(id.clone());
                let p = Proposal { id, now_ms: num(next()), command };
                a.apply(&p);
                log.push(p);
            }
            let mut b = ClusterState::default();
            for p in &log {
                b.apply(p);
            }
            assert_eq!(bincode::serialize(&a).ok(), bincode::serialize(&b).ok(), "seed {seed}");
        }
    }
}
