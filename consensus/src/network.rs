//! Raft between hubs over QUIC (ALPN `nave-raft/1`, mutual TLS): one bidirectional stream
//! per RPC, one frame each way. The same protocol forwards client writes to the leader and
//! asks the leader for a read index (ReadIndex reads on followers).
//!
//! A peer that cannot be reached is reported as `Unreachable` (openraft then backs off
//! instead of stalling); after a failed dial the next one waits a growing backoff (up to
//! 2 s), answered as unreachable at once meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::{Deserialize, Serialize};

use crate::frame::{read_frame, write_frame};
use crate::state::{CommandResult, Proposal};
use crate::tls::{NodeIdentity, ALPN_RAFT};
use crate::typ::*;

/// Frames on this protocol may carry a snapshot.
pub const MAX_RAFT_FRAME: u32 = 64 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client write forwarded by a follower; the receiver does not forward it again.
    Write(Proposal),
    /// The leader's read index, for a linearizable read on a follower.
    ReadIndex,
    /// Are you there? (A hub runs for leader only while it reaches a majority.)
    Ping,
    /// A change of the voting hubs, forwarded to the leader.
    Hubs(crate::node::HubChange),
    /// Renew your node certificate now (`nave admin cert rotate`, asked of one hub by
    /// another); answered with the new certificate's expiry (Unix seconds).
    RotateCert,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Redirect {
    /// Not the leader; the leader is this node (if known).
    NotLeader(Option<NodeId>),
    Failed(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Write(Result<CommandResult, Redirect>),
    ReadIndex(Result<u64, Redirect>),
    /// This node's last log id (a hub runs for leader only if a majority's is no newer).
    Pong(Option<LogId>),
    Hubs(Result<(), Redirect>),
    Rotated(Result<i64, String>),
}

/// A node's address in the membership: `name@ip:port` (the name is what its certificate
/// says, the address is its QUIC port).
pub fn node_addr(name: &str, quic: std::net::SocketAddr) -> BasicNode {
    BasicNode::new(format!("{name}@{quic}"))
}

pub(crate) fn parse_addr(node: &BasicNode) -> Option<(String, std::net::SocketAddr)> {
    let (name, addr) = node.addr.split_once('@')?;
    Some((name.to_string(), addr.parse().ok()?))
}

struct Dialled {
    conns: HashMap<NodeId, quinn::Connection>,
    failed: HashMap<NodeId, (Instant, Duration)>,
}

/// Dials peers and carries RPCs; cheap to clone.
#[derive(Clone)]
pub struct Network {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    dialled: Arc<Mutex<Dialled>>,
}

impl Network {
    pub fn new(endpoint: quinn::Endpoint, identity: &NodeIdentity) -> crate::Result<Self> {
        Ok(Self {
            endpoint,
            client: identity.client_config(ALPN_RAFT)?,
            dialled: Arc::new(Mutex::new(Dialled { conns: HashMap::new(), failed: HashMap::new() })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Dialled> {
        crate::sync::lock(&self.dialled)
    }

    async fn connection(&self, target: NodeId, node: &BasicNode) -> Result<quinn::Connection, String> {
        {
            let d = self.lock();
            if let Some(c) = d.conns.get(&target) {
                if c.close_reason().is_none() {
                    return Ok(c.clone());
                }
            }
            if let Some((at, wait)) = d.failed.get(&target) {
                if at.elapsed() < *wait {
                    return Err(format!("node {target} unreachable (retrying in {:?})", *wait - at.elapsed()));
                }
            }
        }
        let (name, addr) = parse_addr(node).ok_or_else(|| format!("bad node address {:?}", node.addr))?;
        let dial = async {
            let connecting = self.endpoint.connect_with(self.client.clone(), addr, &name).map_err(|e| e.to_string())?;
            connecting.await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_millis(500), dial)
            .await
            .unwrap_or_else(|_| Err("dial timed out".into()))
        {
            Ok(c) => {
                let mut d = self.lock();
                d.failed.remove(&target);
                d.conns.insert(target, c.clone());
                Ok(c)
            }
            Err(e) => {
                let mut d = self.lock();
                // 50 ms doubling to 400 ms: a peer that comes back is reached again within
                // its election timeout (dialling a dead one this often costs nothing).
                let wait = d
                    .failed
                    .get(&target)
                    .map_or(Duration::from_millis(50), |(_, w)| (*w * 2).min(Duration::from_millis(400)));
                d.failed.insert(target, (Instant::now(), wait));
                Err(e)
            }
        }
    }

    /// One RPC to `target`; errors mean the peer could not be reached or the stream broke.
    pub async fn call(
        &self,
        target: NodeId,
        node: &BasicNode,
        rpc: &RaftRpc,
        timeout: Duration,
    ) -> Result<RaftReply, String> {
        let conn = self.connection(target, node).await?;
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            write_frame(&mut send, rpc).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            read_frame::<RaftReply, _>(&mut recv, MAX_RAFT_FRAME)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "no reply".to_string())
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.lock().conns.remove(&target);
                Err(e)
            }
            Err(_) => {
                // A peer that stops answering (killed without closing) keeps a half-open
                // connection until the idle timeout: stop using it now.
                self.lock().conns.remove(&target);
                Err(format!("node {target}: no reply within {timeout:?}"))
            }
        }
    }
}

/// openraft's handle on one peer.
pub struct Peer {
    net: Network,
    target: NodeId,
    node: BasicNode,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer { net: self.clone(), target, node: node.clone() }
    }
}

fn unreachable<E: std::error::Error>(e: String) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(e)))
}

fn unexpected<E: std::error::Error>(r: RaftReply) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&AnyError::error(format!("unexpected reply {r:?}"))))
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.net.call(self.target, &self.node, &RaftRpc::Append(rpc), option.hard_ttl()).await {
            Ok(RaftReply::Append(Ok(r))) => Ok(r),
            Ok(RaftReply::Append(Err(e))) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(unreachable(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        match self.net.call(self.target, &self.node, &RaftRpc::Snapshot(rpc), option.hard_ttl()).await {
            Ok(RaftReply::Snapshot(Ok(r))) => Ok(r),
            Ok(RaftReply::Snapshot(Err(e))) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(unreachable(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.net.call(self.target, &self.node, &RaftRpc::Vote(rpc), option.hard_ttl()).await {
            Ok(RaftReply::Vote(Ok(r))) => Ok(r),
            Ok(RaftReply::Vote(Err(e))) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(unreachable(e)),
        }
    }

    /// Retries to an unreachable peer after 50, 100, 200, then every 400 ms (openraft's
    /// default is a flat 500 ms). A restarted hub then hears from the leader before its
    /// own election timer runs out; otherwise it would run for leader with its stale log,
    /// be refused, and carry openraft's "seen a greater log" delay (800 ms more before
    /// its next election) into the next failover.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new((0u32..).map(|i| Duration::from_millis(50 << i.min(3))))
    }
}
