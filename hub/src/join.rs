//! The hub's side of joining (`nave-join/1`, the one protocol a client without a
//! certificate may speak on the QUIC port): check the request, sign the spoke's
//! certificate request, and consume the token while registering the spoke in one
//! consensus write. A refused join changes nothing and says why.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nave_consensus::frame::{read_frame, write_frame};
use nave_consensus::state::{Command, CommandResult};
use nave_consensus::tls::HUB_NAME;
use nave_spoke::protocol::{JoinReply, JoinRequest, JoinToken, MAX_JOIN_FRAME};

use crate::Hub;

/// Failed joins one address may make per window before its joins are refused unread.
const FAILURES_PER_WINDOW: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most (the oldest windows are dropped first).
const ADDRESSES: usize = 10_000;

/// Failed joins by source address, so a stranger guessing tokens is slowed to
/// [`FAILURES_PER_WINDOW`] tries a minute and costs the hub nothing beyond.
#[derive(Default)]
struct FailedJoins {
    by_ip: HashMap<IpAddr, (u32, Instant)>,
}

impl FailedJoins {
    /// `Some(seconds to wait)` when `ip` used up its failures in the current window.
    fn refused(&mut self, ip: IpAddr, now: Instant) -> Option<u64> {
        let (count, since) = *self.by_ip.get(&ip)?;
        let elapsed = now.saturating_duration_since(since);
        if elapsed >= WINDOW {
            self.by_ip.remove(&ip);
            return None;
        }
        (count >= FAILURES_PER_WINDOW).then(|| (WINDOW - elapsed).as_secs().max(1))
    }

    fn failed(&mut self, ip: IpAddr, now: Instant) {
        if self.by_ip.len() >= ADDRESSES {
            self.by_ip.retain(|_, (_, since)| now.saturating_duration_since(*since) < WINDOW);
            if self.by_ip.len() >= ADDRESSES {
                if let Some(oldest) = self.by_ip.iter().min_by_key(|(_, (_, since))| *since).map(|(ip, _)| *ip) {
                    self.by_ip.remove(&oldest);
                }
            }
        }
        let entry = self.by_ip.entry(ip).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= WINDOW {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
    }
}

/// Joining connections served at once (each holds a stream, a consensus read and write
/// for a moment); a connection beyond them is closed at once, and a real machine retries.
const JOINING_AT_ONCE: usize = 32;
/// A joining connection is closed after this, whatever it is doing: a stranger cannot
/// keep one open with keep-alives.
const JOIN_DEADLINE: Duration = Duration::from_secs(30);

fn joining() -> &'static tokio::sync::Semaphore {
    static JOINING: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    JOINING.get_or_init(|| tokio::sync::Semaphore::new(JOINING_AT_ONCE))
}

fn failed_joins() -> &'static Mutex<FailedJoins> {
    static FAILED: OnceLock<Mutex<FailedJoins>> = OnceLock::new();
    FAILED.get_or_init(Default::default)
}

/// Serves one joining connection: one stream, one request, one answer, within
/// [`JOIN_DEADLINE`], at most [`JOINING_AT_ONCE`] at a time.
pub async fn serve(hub: Arc<Hub>, conn: quinn::Connection) {
    let Ok(_permit) = joining().try_acquire() else {
        hub.metrics.refusal("join");
        return conn.close(6u32.into(), b"too many joins at once; retry in a few seconds");
    };
    if tokio::time::timeout(JOIN_DEADLINE, serve_join(&hub, &conn)).await.is_err() {
        conn.close(7u32.into(), b"the join took too long");
    }
}

async fn serve_join(hub: &Arc<Hub>, conn: &quinn::Connection) {
    let peer = conn.remote_address();
    let refused = nave_consensus::sync::lock(failed_joins()).refused(peer.ip(), Instant::now());
    if let Some(wait) = refused {
        hub.metrics.refusal("join");
        let why = format!("too many failed joins from {}; retry in {wait} s", peer.ip());
        return conn.close(5u32.into(), why.as_bytes());
    }
    let Ok(Ok((mut send, mut recv))) = tokio::time::timeout(std::time::Duration::from_secs(10), conn.accept_bi()).await
    else {
        return conn.close(2u32.into(), b"no join request");
    };
    let reply = match tokio::time::timeout(
        std::time::Duration::from_secs(10),
        read_frame::<JoinRequest, _>(&mut recv, MAX_JOIN_FRAME),
    )
    .await
    {
        Ok(Ok(Some(request))) => answer(hub, request).await,
        Ok(Ok(None)) => JoinReply::Refused("empty join request".into()),
        Ok(Err(e)) => JoinReply::Refused(format!("malformed join request: {e}")),
        Err(_) => JoinReply::Refused("the join request did not arrive within 10 s".into()),
    };
    match &reply {
        JoinReply::Accepted { id, .. } => tracing::info!(%peer, spoke = %id, "spoke joined"),
        JoinReply::Refused(why) => {
            nave_consensus::sync::lock(failed_joins()).failed(peer.ip(), Instant::now());
            hub.metrics.refusal("join");
            tracing::warn!(%peer, %why, "join refused");
        }
    }
    if write_frame(&mut send, &reply).await.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn.closed()).await;
    }
}

async fn answer(hub: &Hub, request: JoinRequest) -> JoinReply {
    if let Err(why) = check(&request) {
        return JoinReply::Refused(why);
    }
    // The token first, from the state (a linearizable read): a stranger's request costs
    // no signature and no log entry. The write below checks it again, atomically.
    let digest = JoinToken::digest(&request.secret);
    let now = nave_consensus::clock::now_ms();
    match hub
        .consensus
        .read(|a| a.state.join_token(&digest).is_some_and(|t| t.expires_ms > now && t.uses_left > 0))
        .await
    {
        Ok(true) => {}
        Ok(false) => return JoinReply::Refused(TOKEN_REFUSED.into()),
        Err(e) => return JoinReply::Refused(format!("the cluster state is not available ({e}); try again shortly")),
    }
    // A join racing another for the same free id loses the write and takes the next one.
    for _ in 0..ID_RACES {
        let id = match free_id(hub, &request.spoke.id, request.rename_if_taken).await {
            Ok(id) => id,
            Err(why) => return JoinReply::Refused(why),
        };
        // Signing next: a request that cannot be signed must not spend the token.
        let cert_pem = match hub.ca.sign_request(&request.csr_pem, &id, hub.config.cluster.cert_lifetime()) {
            Ok(c) => c,
            Err(e) => return JoinReply::Refused(e.to_string()),
        };
        let spoke = nave_consensus::state::SpokeRecord { id: id.clone(), ..request.spoke.clone() };
        let command = Command::Join { token_digest: digest.clone(), spoke };
        match hub.consensus.write(command).await {
            Ok(CommandResult::Done) => {
                return JoinReply::Accepted {
                    id,
                    cert_pem,
                    ca_pem: hub.ca.cert_pem().to_string(),
                    heartbeat_interval_ms: hub.config.cluster.heartbeat_interval_ms,
                    log_index: hub.consensus.figures().applied_index.unwrap_or(0),
                }
            }
            Ok(CommandResult::Invalid(why) | CommandResult::NotFound(why)) => {
                let lost_race = request.rename_if_taken
                    && hub.consensus.read(|a| a.state.spokes.contains_key(&id)).await.unwrap_or(false);
                if !lost_race {
                    return JoinReply::Refused(why);
                }
            }
            Ok(other) => return JoinReply::Refused(format!("unexpected result {other:?}")),
            Err(e) => {
                return JoinReply::Refused(format!("the cluster state is not available ({e}); try again shortly"))
            }
        }
    }
    JoinReply::Refused(format!("other spokes kept taking the ids beside {:?}; try again", request.spoke.id))
}

/// Joins racing for the same id that one join retries before it gives up.
const ID_RACES: usize = 5;

const TOKEN_REFUSED: &str = "the join token is not valid here: it expired, was used up, or was mistyped (check it \
                             was copied whole); ask an admin for a new one (nave admin token create)";

/// `wanted` if no node holds it (a hub or spoke of cluster.toml, a joined spoke, a removed
/// node whose certificates are revoked); otherwise, when `rename` allows, the first free
/// `wanted-2`, `wanted-3`..., and when not, the refusal that says what to do.
async fn free_id(hub: &Hub, wanted: &str, rename: bool) -> Result<String, String> {
    let taken = hub
        .consensus
        .read(|a| {
            let mut t: std::collections::BTreeSet<String> = a.state.spokes.keys().cloned().collect();
            t.extend(a.state.revoked.iter().cloned());
            t
        })
        .await
        .map_err(|e| format!("the cluster state is not available ({e}); try again shortly"))?;
    let config = &hub.config;
    let holds = |id: &str| {
        taken.contains(id) || config.hubs.iter().any(|h| h.id == id) || config.spokes.iter().any(|s| s.id == id)
    };
    pick_id(wanted, rename, holds)
}

/// The id choice of [`free_id`], pure.
fn pick_id(wanted: &str, rename: bool, taken: impl Fn(&str) -> bool) -> Result<String, String> {
    if !taken(wanted) {
        return Ok(wanted.to_string());
    }
    if !rename {
        return Err(format!(
            "the spoke id {wanted:?} is taken by another node (or was a removed node's, whose name stays revoked): \
             pick another --id, or leave --id out and the hub picks a free one from the host name"
        ));
    }
    for n in 2..=MAX_SUFFIX {
        let suffix = format!("-{n}");
        // Ids have at most 63 characters (ASCII, checked before): the suffix stays whole.
        let base = &wanted[..wanted.len().min(63 - suffix.len())];
        let candidate = format!("{}{suffix}", base.trim_end_matches('-'));
        if !taken(&candidate) {
            return Ok(candidate);
        }
    }
    Err(format!("the ids {wanted:?} to {wanted}-{MAX_SUFFIX} are all taken: pick another with --id"))
}

/// The highest suffix tried for a taken id.
const MAX_SUFFIX: u32 = 999;

/// What the hub checks before it reads the state.
fn check(request: &JoinRequest) -> Result<(), String> {
    let s = &request.spoke;
    let id_ok = !s.id.is_empty() && s.id.len() <= 63 && s.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !id_ok || s.id == HUB_NAME {
        return Err(format!("{:?} is not a usable spoke id: use 1-63 letters, digits or '-'", s.id));
    }
    if s.quic.parse::<std::net::SocketAddr>().is_err() || s.http.parse::<std::net::SocketAddr>().is_err() {
        return Err(format!("the addresses {:?} and {:?} must be IP:port", s.quic, s.http));
    }
    if s.models.is_empty() {
        return Err("a spoke serves at least one model".into());
    }
    if !(s.cost_weight.is_finite() && s.cost_weight > 0.0) {
        return Err(format!("cost weight {} must be a positive number", s.cost_weight));
    }
    if request.secret.len() != 32 {
        return Err("malformed join token".into());
    }
    s.check()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_ten_failed_joins_a_minute() {
        let mut f = FailedJoins::default();
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let t0 = Instant::now();
        for i in 0..FAILURES_PER_WINDOW {
            assert_eq!(f.refused(a, t0), None, "try {i}");
            f.failed(a, t0);
        }
        assert_eq!(f.refused(a, t0 + Duration::from_secs(1)), Some(59));
        assert_eq!(f.refused(b, t0), None, "other addresses are not affected");
        assert_eq!(f.refused(a, t0 + WINDOW), None, "a new window");
    }

    #[test]
    fn a_taken_host_name_gets_the_first_free_suffix() {
        let taken = ["vm", "vm-2", "h1"];
        let holds = |id: &str| taken.contains(&id);
        assert_eq!(pick_id("box", true, holds), Ok("box".into()));
        assert_eq!(pick_id("vm", true, holds), Ok("vm-3".into()));
        assert_eq!(pick_id("h1", true, holds), Ok("h1-2".into()));
        let refused = pick_id("vm", false, holds).expect_err("a chosen id is not renamed");
        assert!(refused.contains("taken") && refused.contains("--id"), "{refused}");
        // A 63-character id keeps its suffix whole and stays within 63.
        let long = "a".repeat(63);
        let renamed = pick_id(&long, true, |id: &str| id == long).expect("free");
        assert_eq!(renamed.len(), 63);
        assert!(renamed.ends_with("-2"), "{renamed}");
        assert!(pick_id("x", true, |_: &str| true).is_err(), "all taken");
    }
}
