//! [`Hub`]: what every handler of one hub shares, and its bounded request slots.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use nave_consensus::node::ConsensusNode;
use nave_consensus::tls::ClusterCa;
use nave_consensus::{ClusterConfig, RoutingPolicy};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::policy;
use crate::spokes::SpokeSet;

/// A request's place in the hub's bounded admission (released when dropped).
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

/// The hub's shared state.
pub struct Hub {
    pub id: String,
    pub config: ClusterConfig,
    pub spokes: Arc<SpokeSet>,
    pub metrics: Metrics,
    pub request_timeout: Duration,
    pub shutting_down: AtomicBool,
    pub(crate) admin_digest: [u8; 32],
    /// Requests this hub handles at once; one more is answered 503, not queued.
    pub(crate) slots: Arc<Semaphore>,
    pub consensus: Arc<ConsensusNode>,
    /// Signs the certificates of joining spokes.
    pub ca: ClusterCa,
    /// The certificate this hub presents (renewed in place, see [`crate::certs`]).
    pub identity: nave_consensus::tls::NodeIdentity,
    /// The last hour of this hub's rates, for the console's charts.
    pub history: crate::history::History,
}

impl Hub {
    /// The models some spoke of the cluster serves (config and joined spokes), sorted.
    pub fn models(&self) -> Vec<String> {
        self.spokes.models()
    }

    /// Fine-tuned adapters (`model:name`) in the replicated registry, sorted.
    pub fn adapters(&self) -> Vec<String> {
        self.consensus.state.read(|a| a.state.adapters.keys().cloned().collect())
    }

    pub fn policy(&self, model: &str) -> Box<dyn policy::Policy> {
        policy::for_config(self.config.policy(model))
    }

    pub fn routing(&self, model: &str) -> RoutingPolicy {
        self.config.policy(model)
    }

    /// The per-key quota on stored responses from the cluster's config (carried in each
    /// command, so every replica applies the same one).
    pub fn response_quota(&self) -> nave_consensus::state::ResponseQuota {
        let c = &self.config.cluster;
        nave_consensus::state::ResponseQuota {
            max_count: c.stored_responses_per_key,
            max_bytes: c.stored_bytes_per_key.0,
            max_response_bytes: c.max_stored_response_bytes.0,
            max_total_bytes: c.max_snapshot_bytes.0 / 4 * 3,
        }
    }

    /// Requests holding a slot of this hub now.
    pub fn in_flight(&self) -> usize {
        (self.config.cluster.max_concurrent_requests * 2).saturating_sub(self.slots.available_permits())
    }

    /// A slot for one more request on this hub (no Raft write), or 503 when the hub is at
    /// its cap. [`Hub::write_admission`] is the cluster-wide check that follows.
    pub fn take_slot(&self) -> Result<Slot, ApiError> {
        match self.slots.clone().try_acquire_owned() {
            Ok(p) => Ok(Slot(p)),
            Err(_) => {
                self.metrics.refusal("hub_busy");
                Err(ApiError::unavailable("this hub is at its limit of concurrent requests"))
            }
        }
    }
}

/// The founding hubs, in config order, are Raft nodes 1, 2, 3...; a hub added later
/// (`join = true`) has an id from its name.
pub fn raft_id(config: &ClusterConfig, hub: &str) -> Option<u64> {
    let h = config.hubs.iter().find(|h| h.id == hub)?;
    if h.join {
        return Some(nave_consensus::node::added_hub_id(hub));
    }
    config.hubs.iter().filter(|h| !h.join).position(|h| h.id == hub).map(|i| i as u64 + 1)
}
