//! The replicated state and its `apply`: pure and deterministic. Time comes in the command
//! (the proposer's clock), never from the applying node's, so every replica computes the
//! same result. Commands carry a request id; a retried command with an id already applied
//! returns the first result and changes nothing.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute (reserved at admission).
    pub tpm: Option<u64>,
    /// Tokens per UTC day: never exceeded, whichever hubs the requests reach.
    pub daily_tokens: Option<u64>,
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Reservation {
    digest: String,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub id: String,
    /// Digest of the key that created it (or "admin"): only it may read or continue it.
    pub owner: String,
    pub model: String,
    pub previous: Option<String>,
    pub created_ms: u64,
    /// What this request added to the conversation (instructions are not carried over).
    pub input: Vec<Turn>,
    pub output: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The spoke that answered (session affinity for follow-ups).
    pub spoke: String,
    /// The answer was cut by `max_output_tokens` (`"status": "incomplete"`).
    #[serde(default)]
    pub incomplete: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: u64,
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
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownKey => "unknown_key",
            Refusal::Revoked => "revoked_key",
            Refusal::RequestRate => "request_rate",
            Refusal::TokenRate => "token_rate",
            Refusal::DailyBudget => "daily_budget",
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
    /// Rate-limit check plus reservation of `max_tokens` against the key's budgets.
    Admit {
        digest: String,
        max_tokens: u64,
    },
    /// Actual usage of an admitted request; releases the rest of its reservation.
    Settle {
        admitted: String,
        used_tokens: u64,
    },
    Audit {
        what: String,
    },
    StoreResponse(Box<StoredResponse>),
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
    /// A fine-tuned adapter `model:name` is served by `spoke` (recorded once per spoke).
    RegisterAdapter {
        model: String,
        name: String,
        spoke: String,
    },
    /// Proposals gathered by one hub while its previous ones were in flight, committed as
    /// one log entry; each is applied as if alone (its own id, time and result).
    Batch(Vec<Proposal>),
}

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
    response_order: VecDeque<(u64, String)>,
    join_tokens: BTreeMap<String, JoinToken>,
    /// Joined spokes by id.
    pub spokes: BTreeMap<String, SpokeRecord>,
    /// Fine-tuned adapters (`model:name`) and the spokes that serve them.
    pub adapters: BTreeMap<String, Vec<String>>,
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
                self.responses.remove(&id);
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
                self.settle(&id, None, now);
            }
            self.reservations_since_ms = self.reservations.values().map(|r| r.at_ms).min().unwrap_or(u64::MAX);
        }
    }

    fn audit(&mut self, now: u64, what: String) {
        self.audit.push_back(AuditEntry { at_ms: now, what });
        while self.audit.len() > AUDIT_KEEP {
            self.audit.pop_front();
        }
    }

    fn apply_command(&mut self, id: &str, now: u64, c: &Command) -> CommandResult {
        match c {
            Command::CreateKey { name, digest, limits } => {
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
                self.audit(now, format!("key created: {name}"));
                CommandResult::Done
            }
            Command::RevokeKey { name } => match self.names.get(name).and_then(|d| self.keys.get_mut(d)) {
                Some(k) => {
                    k.revoked = true;
                    self.audit(now, format!("key revoked: {name}"));
                    CommandResult::Done
                }
                None => CommandResult::NotFound(format!("no key named {name:?}")),
            },
            Command::Admit { digest, max_tokens } => self.admit(id, now, digest, *max_tokens),
            Command::Settle { admitted, used_tokens } => {
                self.settle(admitted, Some(*used_tokens), now);
                CommandResult::Done
            }
            Command::Audit { what } => {
                self.audit(now, what.clone());
                CommandResult::Done
            }
            Command::StoreResponse(r) => {
                if self.responses.contains_key(&r.id) {
                    return CommandResult::Invalid(format!("response {} exists", r.id));
                }
                let mut r = (**r).clone();
                r.created_ms = now;
                self.response_order.push_back((now, r.id.clone()));
                self.responses.insert(r.id.clone(), r);
                CommandResult::Done
            }
            Command::DeleteResponse { id, owner } => match self.responses.get(id) {
                Some(r) if &r.owner == owner => {
                    self.responses.remove(id);
                    self.response_order.retain(|(_, kept)| kept != id);
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
                self.audit(now, format!("join token created: {uses} use(s), {} s", ttl_ms / 1000));
                CommandResult::Done
            }
            Command::Join { token_digest, spoke } => self.join(now, token_digest, spoke),
            Command::RegisterAdapter { model, name, spoke } => {
                let spokes = self.adapters.entry(format!("{model}:{name}")).or_default();
                if !spokes.contains(spoke) {
                    spokes.push(spoke.clone());
                    self.audit(now, format!("adapter {model}:{name} served by {spoke}"));
                }
                CommandResult::Done
            }
            Command::Batch(_) => CommandResult::Invalid("a batch inside a batch".into()),
            Command::RemoveSpoke { id } => match self.spokes.remove(id) {
                Some(_) => {
                    self.audit(now, format!("spoke removed: {id}"));
                    CommandResult::Done
                }
                None => CommandResult::NotFound(format!("no joined spoke {id:?}")),
            },
        }
    }

    fn join(&mut self, now: u64, token_digest: &str, spoke: &SpokeRecord) -> CommandResult {
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
        token.uses_left -= 1;
        let mut record = spoke.clone();
        record.joined_ms = now;
        self.spokes.insert(spoke.id.clone(), record);
        self.audit(now, format!("spoke joined: {} at {}", spoke.id, spoke.quic));
        CommandResult::Done
    }

    fn admit(&mut self, id: &str, now: u64, digest: &str, max_tokens: u64) -> CommandResult {
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
        let next_minute = (minute + 1) * MINUTE_MS - now;
        if k.limits.rpm.is_some_and(|r| k.minute_requests >= r) {
            return CommandResult::Refused { reason: Refusal::RequestRate, retry_after_ms: next_minute };
        }
        if k.limits.tpm.is_some_and(|t| k.minute_tokens + max_tokens > t) {
            return CommandResult::Refused { reason: Refusal::TokenRate, retry_after_ms: next_minute };
        }
        if k.limits.daily_tokens.is_some_and(|d| k.day_used + k.reserved + max_tokens > d) {
            return CommandResult::Refused { reason: Refusal::DailyBudget, retry_after_ms: (day + 1) * DAY_MS - now };
        }
        k.minute_requests += 1;
        k.minute_tokens += max_tokens;
        k.reserved += max_tokens;
        k.total_requests += 1;
        let name = k.name.clone();
        self.reservations.insert(
            id.to_string(),
            Reservation { digest: digest.to_string(), tokens: max_tokens, minute, day, at_ms: now },
        );
        self.reservations_since_ms = self.reservations_since_ms.min(now);
        CommandResult::Admitted { key_name: name }
    }

    /// Releases a reservation; `used` tokens count against the budgets (never more than
    /// were reserved). Unknown ids (settled already, or expired) change nothing.
    fn settle(&mut self, admitted: &str, used: Option<u64>, _now: u64) {
        let Some(r) = self.reservations.remove(admitted) else { return };
        let Some(k) = self.keys.get_mut(&r.digest) else { return };
        let used = used.unwrap_or(r.tokens).min(r.tokens);
        k.reserved = k.reserved.saturating_sub(r.tokens);
        if k.day == r.day {
            k.day_used += used;
        }
        if k.minute == r.minute {
            k.minute_tokens = k.minute_tokens.saturating_sub(r.tokens - used);
        }
        k.total_tokens += used;
    }
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
            let mut open: Vec<String> = Vec::new();
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for step in 0..60 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x % 3 != 0 || open.is_empty() {
                    let id = format!("a{step}");
                    if let CommandResult::Admitted { .. } =
                        run(&mut s, &id, 1000 + step, Command::Admit { digest: digest(1), max_tokens: 1 + x % 40 })
                    {
                        open.push(id);
                    }
                } else {
                    let id = open.remove((x as usize / 3) % open.len());
                    run(
                        &mut s,
                        &format!("s{step}"),
                        1000 + step,
                        Command::Settle { admitted: id, used_tokens: x % 50 },
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
        let admit =
            |s: &mut ClusterState, id: &str, t: u64| run(s, id, t, Command::Admit { digest: digest(1), max_tokens: 1 });
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
        let a = run(&mut s, "same", 5, Command::Admit { digest: digest(1), max_tokens: 8 });
        let b = run(&mut s, "same", 6, Command::Admit { digest: digest(1), max_tokens: 8 });
        assert_eq!(a, b);
        assert_eq!(s.key_by_name("k").map(|k| k.reserved), Some(8), "reserved once");
        run(&mut s, "settle", 7, Command::Settle { admitted: "same".into(), used_tokens: 3 });
        run(&mut s, "settle-again", 8, Command::Settle { admitted: "same".into(), used_tokens: 3 });
        let k = s.key_by_name("k").cloned().unwrap_or_default();
        assert_eq!((k.reserved, k.day_used), (0, 3));
    }

    #[test]
    fn a_batch_applies_each_proposal_once_in_order() {
        let mut s = with_key(Limits { daily_tokens: Some(10), ..Default::default() });
        let admit = |id: &str, t: u64| Proposal {
            id: id.into(),
            now_ms: t,
            command: Command::Admit { digest: digest(1), max_tokens: 4 },
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
            run(&mut s, "x", 1, Command::Admit { digest: digest(9), max_tokens: 1 }),
            CommandResult::Refused { reason: Refusal::UnknownKey, .. }
        ));
        run(&mut s, "r", 2, Command::RevokeKey { name: "k".into() });
        assert!(matches!(
            run(&mut s, "y", 3, Command::Admit { digest: digest(1), max_tokens: 1 }),
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
            incomplete: false,
        };
        run(&mut s, "1", 10, Command::StoreResponse(Box::new(resp("a", None, "alice"))));
        run(&mut s, "2", 20, Command::StoreResponse(Box::new(resp("b", Some("a"), "alice"))));
        let chain: Vec<_> = s.conversation("b", "alice").unwrap_or_default().iter().map(|r| r.id.clone()).collect();
        assert_eq!(chain, vec!["a", "b"]);
        assert!(s.response("b", "mallory").is_none(), "another key cannot read it");
        assert!(s.conversation("b", "mallory").is_none());
        let del = |owner: &str| Command::DeleteResponse { id: "a".into(), owner: owner.into() };
        assert!(matches!(run(&mut s, "d1", 21, del("mallory")), CommandResult::NotFound(_)), "only the owner deletes");
        assert!(s.response("a", "alice").is_some());
        assert_eq!(run(&mut s, "d2", 22, del("alice")), CommandResult::Done);
        assert!(s.response("a", "alice").is_none());
        assert!(matches!(run(&mut s, "d3", 23, del("alice")), CommandResult::NotFound(_)));
        run(&mut s, "3", 20 + RESPONSE_TTL_MS + 11, Command::Audit { what: "later".into() });
        assert!(s.response("a", "alice").is_none() && s.response("b", "alice").is_none(), "expired");
    }

    #[test]
    fn unsettled_reservations_expire() {
        let mut s = with_key(Limits { daily_tokens: Some(10), ..Default::default() });
        run(&mut s, "a", 1_000, Command::Admit { digest: digest(1), max_tokens: 10 });
        assert!(matches!(
            run(&mut s, "b", 2_000, Command::Admit { digest: digest(1), max_tokens: 1 }),
            CommandResult::Refused { .. }
        ));
        run(&mut s, "tick", 1_000 + RESERVATION_MS + 1, Command::Audit { what: "tick".into() });
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
                r.run(&format!("s{step}"), now, Command::Settle { admitted, used_tokens: x % 4 });
            } else {
                open.push(format!("r{step}"));
                r.run(&format!("r{step}"), now, Command::Admit { digest: digest(1), max_tokens: 1 + x % 8 });
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
            r.run(&format!("end{i}"), now, Command::Settle { admitted, used_tokens: 0 });
        }
        now += RESERVATION_MS + 1;
        r.run("empty-scan", now, Command::Audit { what: "tick".into() });
        r.run("late", now, Command::Admit { digest: digest(1), max_tokens: 5 });
        assert_eq!(r.a.outstanding_reservations(), 1);
        r.run("expired", now + RESERVATION_MS + 1, Command::Audit { what: "tick".into() });
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
}
