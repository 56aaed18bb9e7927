//! A spoke's certificate renewal. A spoke holds no CA key: it asks a hub on
//! `nave-renew/1`, over a connection made with the certificate it has (so only a valid,
//! unrevoked certificate can be renewed), sending a request for a fresh key it keeps.
//! [`keep_renewed`] does so once less than a third of the certificate's lifetime is
//! left; `nave admin cert rotate` makes a hub ask for it at once ([`renew`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use nave_consensus::frame::{read_frame, write_frame};
use nave_consensus::tls::{self, Validity};

use crate::protocol::{RenewReply, RenewRequest, MAX_JOIN_FRAME};
use crate::server::Spoke;

/// How often a spoke looks at its certificate's expiry.
pub const CHECK_EVERY: Duration = Duration::from_secs(3600);
/// How soon a failed renewal is tried again (at start the replica may not know the hubs
/// yet; a hub may be restarting).
pub const RETRY_EVERY: Duration = Duration::from_secs(60);

/// Renews the spoke's certificate through the first hub (of the membership its replica
/// knows) that signs it; writes it into the node's directory and presents it from the
/// next handshake on.
pub async fn renew(spoke: &Spoke) -> anyhow::Result<Validity> {
    let hubs = spoke.replica.hubs();
    if hubs.is_empty() {
        bail!("the spoke's replica knows no hub yet");
    }
    let identity = &spoke.identity;
    let (csr_pem, key_pem) = tls::new_request(&identity.name)?;
    let client = identity.client_config(tls::ALPN_RENEW)?;
    let mut errors = Vec::new();
    for (_, name, quic) in hubs {
        let ask = async {
            let addr: std::net::SocketAddr = quic.parse().with_context(|| format!("hub {name}'s address {quic:?}"))?;
            let conn = spoke.endpoint.connect_with(client.clone(), addr, &name)?.await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            write_frame(&mut send, &RenewRequest { csr_pem: csr_pem.clone() }).await?;
            send.finish()?;
            let reply = read_frame::<RenewReply, _>(&mut recv, MAX_JOIN_FRAME).await?;
            conn.close(0u32.into(), b"renewed");
            reply.context("the hub closed the stream without an answer")
        };
        match tokio::time::timeout(Duration::from_secs(10), ask).await {
            Ok(Ok(RenewReply::Renewed { cert_pem })) => {
                let validity = tls::save_renewal(&spoke.node_dir, identity, &cert_pem, &key_pem)?;
                tracing::info!(hub = %name, not_after = validity.not_after, "certificate renewed");
                return Ok(validity);
            }
            Ok(Ok(RenewReply::Refused(why))) => errors.push(format!("{name}: {why}")),
            Ok(Err(e)) => errors.push(format!("{name}: {e:#}")),
            Err(_) => errors.push(format!("{name}: no answer within 10 s")),
        }
    }
    bail!("no hub renewed the certificate: {}", errors.join("; "))
}

/// Renews the spoke's certificate whenever less than a third of its lifetime is left
/// (the lifetime the hub that signed it chose), checking every [`CHECK_EVERY`], and
/// every [`RETRY_EVERY`] while renewing fails.
pub async fn keep_renewed(spoke: Arc<Spoke>) {
    loop {
        let v = spoke.identity.validity();
        let lifetime = Duration::from_secs(v.not_after.saturating_sub(v.not_before).max(0) as u64);
        let mut next = CHECK_EVERY;
        if v.needs_renewal(tls::unix_now(), lifetime) {
            if let Err(e) = renew(&spoke).await {
                let expires = tls::utc(v.not_after);
                tracing::warn!(error = %e, %expires, "certificate renewal failed; retrying in a minute");
                next = RETRY_EVERY;
            }
        }
        tokio::time::sleep(next).await;
    }
}
